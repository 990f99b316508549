//! The optional files beside `tokenizer.json`: `tokenizer_config.json` (special tokens, added
//! tokens, chat template), `chat_template.jinja` and `chat_template.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::error::{Result, TextError, TokenizerConfigError};

/// An entry of `added_tokens_decoder`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTokenEntry {
    /// The token's id.
    pub id: u32,
    /// The token's text.
    pub content: String,
    /// Whether it is a special token (skipped by `decode(.., skip_special = true)`).
    pub special: bool,
}

/// What dvd uses from `tokenizer_config.json` and the chat template files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// `bos_token` (Qwen has none).
    pub bos_token: Option<String>,
    /// `eos_token` (`<|im_end|>` for InternVL3.5).
    pub eos_token: Option<String>,
    /// `pad_token`.
    pub pad_token: Option<String>,
    /// `unk_token`.
    pub unk_token: Option<String>,
    /// `clean_up_tokenization_spaces` (transformers ignores it for BPE models; so does dvd).
    pub clean_up_tokenization_spaces: bool,
    /// `added_tokens_decoder`, in id order.
    pub added_tokens: Vec<AddedTokenEntry>,
    /// Chat templates by name; a single unnamed template is stored as `default`.
    pub chat_templates: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    bos_token: Value,
    #[serde(default)]
    eos_token: Value,
    #[serde(default)]
    pad_token: Value,
    #[serde(default)]
    unk_token: Value,
    #[serde(default)]
    clean_up_tokenization_spaces: Option<bool>,
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, RawAddedToken>,
    #[serde(default)]
    chat_template: Value,
}

#[derive(Deserialize)]
struct RawAddedToken {
    content: String,
    #[serde(default)]
    special: bool,
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json`, then `chat_template.json` and `chat_template.jinja` from
    /// `dir`; each is optional. A template in a later file replaces the `default` one of an
    /// earlier file (transformers prefers `chat_template.jinja`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut config = Self::default();
        let path = dir.join("tokenizer_config.json");
        if let Some(text) = read_optional(&path)? {
            config = Self::from_json(&text).map_err(|source| TextError::Config {
                path: path.clone(),
                source,
            })?;
        }
        let path = dir.join("chat_template.json");
        if let Some(text) = read_optional(&path)? {
            let templates = chat_template_json(&text).map_err(|source| TextError::Config {
                path: path.clone(),
                source,
            })?;
            config.chat_templates.extend(templates);
        }
        let path = dir.join("chat_template.jinja");
        if let Some(text) = read_optional(&path)? {
            config.chat_templates.insert("default".to_owned(), text);
        }
        Ok(config)
    }

    /// Parses the text of a `tokenizer_config.json`.
    pub fn from_json(text: &str) -> std::result::Result<Self, TokenizerConfigError> {
        let raw: RawConfig = serde_json::from_str(text)?;
        let mut added_tokens = raw
            .added_tokens_decoder
            .into_iter()
            .map(|(id, token)| {
                let id = id
                    .parse::<u32>()
                    .map_err(|_| TokenizerConfigError::AddedTokenKey(id))?;
                Ok(AddedTokenEntry {
                    id,
                    content: token.content,
                    special: token.special,
                })
            })
            .collect::<std::result::Result<Vec<_>, TokenizerConfigError>>()?;
        added_tokens.sort_by_key(|t| t.id);
        Ok(Self {
            bos_token: token_text(&raw.bos_token, "bos_token")?,
            eos_token: token_text(&raw.eos_token, "eos_token")?,
            pad_token: token_text(&raw.pad_token, "pad_token")?,
            unk_token: token_text(&raw.unk_token, "unk_token")?,
            clean_up_tokenization_spaces: raw.clean_up_tokenization_spaces.unwrap_or(false),
            added_tokens,
            chat_templates: parse_templates(&raw.chat_template)?,
        })
    }

    /// The special tokens a chat template sees as variables (`bos_token`, `eos_token`, ...), as
    /// transformers passes its `special_tokens_map`.
    pub fn special_tokens_map(&self) -> Vec<(&'static str, String)> {
        [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("pad_token", &self.pad_token),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TextError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A special token is written as a string or as an `AddedToken` object with `content`.
fn token_text(
    value: &Value,
    field: &'static str,
) -> std::result::Result<Option<String>, TokenizerConfigError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(map) => match map.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TokenizerConfigError::TokenWithoutContent { field }),
        },
        _ => Err(TokenizerConfigError::TokenNotText { field }),
    }
}

/// The templates of a `chat_template.json` (its `chat_template` field).
fn chat_template_json(
    text: &str,
) -> std::result::Result<BTreeMap<String, String>, TokenizerConfigError> {
    let value: Value = serde_json::from_str(text)?;
    parse_templates(value.get("chat_template").unwrap_or(&Value::Null))
}

/// `chat_template` is a string, or a list of `{"name": .., "template": ..}`.
fn parse_templates(
    value: &Value,
) -> std::result::Result<BTreeMap<String, String>, TokenizerConfigError> {
    let mut templates = BTreeMap::new();
    match value {
        Value::Null => {}
        Value::String(s) => {
            templates.insert("default".to_owned(), s.clone());
        }
        Value::Array(items) => {
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(name), Some(template)) => {
                        templates.insert(name.to_owned(), template.to_owned());
                    }
                    _ => return Err(TokenizerConfigError::UnnamedTemplate),
                }
            }
        }
        _ => return Err(TokenizerConfigError::TemplateNotText),
    }
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_objects_and_named_templates() {
        let config = TokenizerConfig::from_json(
            r#"{"eos_token": {"content": "<|im_end|>", "special": true}, "bos_token": null,
                "added_tokens_decoder": {"7": {"content": "<b>", "special": false},
                                         "3": {"content": "<a>", "special": true}},
                "chat_template": [{"name": "default", "template": "D"},
                                  {"name": "tool_use", "template": "T"}]}"#,
        )
        .unwrap();
        assert_eq!(config.eos_token.as_deref(), Some("<|im_end|>"));
        assert_eq!(config.bos_token, None);
        assert_eq!(config.added_tokens[0].id, 3);
        assert!(config.added_tokens[0].special);
        assert!(!config.added_tokens[1].special);
        assert_eq!(config.chat_templates["default"], "D");
        assert_eq!(config.chat_templates["tool_use"], "T");
        assert_eq!(
            config.special_tokens_map(),
            vec![("eos_token", "<|im_end|>".to_owned())]
        );
    }

    #[test]
    fn bad_fields_are_errors() {
        use TokenizerConfigError as E;
        let parse = TokenizerConfig::from_json;
        assert!(matches!(
            parse(r#"{"eos_token": 3}"#),
            Err(E::TokenNotText { field: "eos_token" })
        ));
        assert!(matches!(
            parse(r#"{"pad_token": {"special": true}}"#),
            Err(E::TokenWithoutContent { field: "pad_token" })
        ));
        assert!(matches!(
            parse(r#"{"chat_template": 3}"#),
            Err(E::TemplateNotText)
        ));
        assert!(matches!(
            parse(r#"{"chat_template": [{"name": "x"}]}"#),
            Err(E::UnnamedTemplate)
        ));
        assert!(matches!(
            parse(r#"{"added_tokens_decoder": {"x": {"content": "a"}}}"#),
            Err(E::AddedTokenKey(key)) if key == "x"
        ));
        assert!(matches!(parse("{"), Err(E::Json(_))));
    }
}
