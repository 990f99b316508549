//! HF chat templates (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`)
//! rendered with minijinja the way transformers' `apply_chat_template(messages,
//! add_generation_prompt=.., tokenize=False)` renders them with Jinja2: `trim_blocks` and
//! `lstrip_blocks`, loop controls, `raise_exception`, `strftime_now`, a `tojson` that writes
//! Python's `json.dumps(.., ensure_ascii=False)`, Python string and dict methods, Python's
//! printing of `True`/`None`/floats, the special
//! tokens (`bos_token`, `eos_token`, ...) as variables, and `tools`/`documents` set to none.

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, escape_formatter};

use super::error::{Result, TextError};
use super::message::{ChatMessage, ContentPart, MessageContent};
use super::pycompat::unknown_method;
use super::pyjson::{py_float_repr, tojson_filter};
use super::strftime::DateTime;

const NAME: &str = "chat_template";

/// A compiled chat template plus the special-token variables it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Vec<(&'static str, String)>,
}

impl ChatTemplate {
    /// Compiles `source`; `special_tokens` are the `(name, token)` variables transformers passes
    /// (its `special_tokens_map`: `bos_token`, `eos_token`, ...), see
    /// [`TokenizerConfig::special_tokens_map`](super::TokenizerConfig::special_tokens_map).
    pub fn new(source: &str, special_tokens: Vec<(&'static str, String)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(unknown_method);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: &str| {
            DateTime::now().format(format)
        });
        env.add_template_owned(NAME, rewrite_generation_tags(source))
            .map_err(|e| TextError::Template(describe(&e)))?;
        Ok(Self {
            env,
            special_tokens,
        })
    }

    /// Renders `messages` (transformers' `apply_chat_template(messages, add_generation_prompt,
    /// tokenize=False)`).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &[])
    }

    /// Like [`render`](Self::render) with extra template variables (transformers'
    /// `**kwargs`, e.g. `enable_thinking`); they override the special tokens of the same name.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TextError::Template(describe(&e)))?;
        let mut vars: Vec<(String, Value)> = self
            .special_tokens
            .iter()
            .map(|(name, token)| ((*name).to_owned(), Value::from(token.as_str())))
            .collect();
        for (name, value) in extra {
            vars.retain(|(n, _)| n != name);
            vars.push(((*name).to_owned(), Value::from_serialize(value)));
        }
        vars.push((
            "messages".to_owned(),
            Value::from(messages.iter().map(message_value).collect::<Vec<_>>()),
        ));
        vars.push(("tools".to_owned(), Value::from(())));
        vars.push(("documents".to_owned(), Value::from(())));
        vars.push((
            "add_generation_prompt".to_owned(),
            Value::from(add_generation_prompt),
        ));
        let ctx: Value = vars.into_iter().collect();
        template.render(ctx).map_err(|e| match raised_message(&e) {
            Some(message) => TextError::TemplateRaised(message),
            None => TextError::Template(describe(&e)),
        })
    }
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

/// Prints values as Jinja2 does (Python's `str`): `True`, `False`, `None`, Python float repr.
fn python_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> std::result::Result<(), Error> {
    let text = match value.kind() {
        ValueKind::Bool => Some(if value.is_true() { "True" } else { "False" }.to_owned()),
        ValueKind::None => Some("None".to_owned()),
        ValueKind::Number if !value.is_integer() => {
            f64::try_from(value.clone()).ok().map(py_float_repr)
        }
        _ => None,
    };
    match text {
        Some(text) => out
            .write_str(&text)
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write template output")),
        None => escape_formatter(out, state, value),
    }
}

/// The error `raise_exception(message)` returns; found again in the render error's sources.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

fn raised_message(err: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        source = e.source();
    }
    None
}

/// minijinja's message with the template line, when known.
fn describe(err: &Error) -> String {
    match err.line() {
        Some(line) => format!("{err} (line {line})"),
        None => err.to_string(),
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` (assistant-mask tracking) has no
/// meaning for rendering: it becomes `{% if true %}...{% endif %}`, whitespace modifiers kept.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..close];
        let (left, body, right) = split_modifiers(inner);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{left} {r} {right}%}}")),
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits `- body +` into its whitespace-control modifiers and the body.
fn split_modifiers(inner: &str) -> (&str, &str, &str) {
    let (left, body) = match inner.chars().next() {
        Some(c @ ('-' | '+')) => (&inner[..c.len_utf8()], &inner[c.len_utf8()..]),
        _ => ("", inner),
    };
    let (body, right) = match body.chars().last() {
        Some(c @ ('-' | '+')) => (
            &body[..body.len() - c.len_utf8()],
            &body[body.len() - c.len_utf8()..],
        ),
        _ => (body, ""),
    };
    (left, body, right)
}

/// A message as the template sees it: `{"role": .., "content": ..}` in that key order.
fn message_value(message: &ChatMessage) -> Value {
    let content = match &message.content {
        MessageContent::Text(text) => Value::from(text.as_str()),
        MessageContent::Parts(parts) => {
            Value::from(parts.iter().map(part_value).collect::<Vec<_>>())
        }
    };
    OrderedMap::value(vec![
        ("role", Value::from(message.role.as_str())),
        ("content", content),
    ])
}

fn part_value(part: &ContentPart) -> Value {
    match part {
        ContentPart::Text(text) => OrderedMap::value(vec![
            ("type", Value::from("text")),
            ("text", Value::from(text.as_str())),
        ]),
        ContentPart::Image => OrderedMap::value(vec![("type", Value::from("image"))]),
        ContentPart::Video { .. } => OrderedMap::value(vec![("type", Value::from("video"))]),
    }
}

/// A map that iterates in insertion order (a Python dict), unlike minijinja's sorted maps; so
/// `tojson` and `.items()` list keys as transformers does.
#[derive(Debug)]
struct OrderedMap(Vec<(&'static str, Value)>);

impl OrderedMap {
    fn value(entries: Vec<(&'static str, Value)>) -> Value {
        Value::from_object(Self(entries))
    }
}

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| Value::from(*k)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_if_blocks() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation %}b{% endgeneration -%}c{{ x }}{% if y %}"),
            "a{%- if true %}b{% endif -%}c{{ x }}{% if y %}"
        );
        assert_eq!(
            rewrite_generation_tags("{% unterminated"),
            "{% unterminated"
        );
    }

    #[test]
    fn python_methods_and_helpers() {
        let t = ChatTemplate::new(
            "{{ '  x y  '.strip() }}|{{ 'a,b'.split(',')[1] }}|{{ messages[0].get('nope', 'd') }}|\
             {% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}|\
             {{ strftime_now('%Y') | length }}|{{ bos_token }}|{{ {'b': 1.5, 'a': [true, none]} | tojson }}",
            vec![("bos_token", "<s>".into())],
        )
        .unwrap();
        let out = t.render(&[ChatMessage::user("hi")], false).unwrap();
        assert_eq!(
            out,
            "x y|b|d|role=user;content=hi;|4|<s>|{\"a\": [true, null], \"b\": 1.5}"
        );
    }

    #[test]
    fn errors_are_typed() {
        let bad = ChatTemplate::new("{% if %}", vec![]);
        assert!(matches!(bad, Err(TextError::Template(_))));
        let t =
            ChatTemplate::new("{{ raise_exception('no ' + messages[0].role) }}", vec![]).unwrap();
        match t.render(&[ChatMessage::user("x")], true) {
            Err(TextError::TemplateRaised(m)) => assert_eq!(m, "no user"),
            other => panic!("{other:?}"),
        }
        let t = ChatTemplate::new("{{ messages[0].content.nosuchmethod() }}", vec![]).unwrap();
        assert!(matches!(
            t.render(&[ChatMessage::user("x")], true),
            Err(TextError::Template(_))
        ));
    }

    #[test]
    fn extra_variables_override_special_tokens() {
        let t = ChatTemplate::new(
            "{{ eos_token }}{% if enable_thinking is false %}off{% endif %}",
            vec![("eos_token", "E".into())],
        )
        .unwrap();
        let out = t
            .render_with(
                &[ChatMessage::user("x")],
                true,
                &[
                    ("enable_thinking", serde_json::json!(false)),
                    ("eos_token", serde_json::json!("F")),
                ],
            )
            .unwrap();
        assert_eq!(out, "Foff");
    }
}
