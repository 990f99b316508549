#![allow(clippy::unwrap_used)]
//! HF chat templates rendered by minijinja against transformers' `apply_chat_template(..,
//! tokenize=False)` (Jinja2) on the fixture templates: the InternVL conversion template, a
//! Qwen3-style template and one using raise_exception, loop controls, tojson and filters; and
//! where the templates come from in a checkpoint directory.

use dvd_language_server::text::{
    ChatMessage, ChatTemplate, ContentPart, MessageContent, TextError,
};
use serde_json::Value;

use crate::common::{
    scratch_tokenizer_dir, text_cases, text_fixture, text_tokenizer, write_and_load,
};

fn template_source(name: &str) -> String {
    std::fs::read_to_string(text_fixture(&format!("templates/{name}.jinja"))).unwrap()
}

/// A fixture message (transformers' dict form) as a [`ChatMessage`].
fn message(v: &Value) -> ChatMessage {
    let role = v["role"].as_str().unwrap().to_owned();
    let content = match &v["content"] {
        Value::String(s) => MessageContent::Text(s.clone()),
        Value::Array(parts) => MessageContent::Parts(
            parts
                .iter()
                .map(|p| match p["type"].as_str().unwrap() {
                    "text" => ContentPart::Text(p["text"].as_str().unwrap().to_owned()),
                    "image" => ContentPart::Image,
                    "video" => ContentPart::Video { frames: 1 },
                    other => panic!("part type {other}"),
                })
                .collect(),
        ),
        other => panic!("content {other}"),
    };
    ChatMessage { role, content }
}

#[test]
fn renders_like_transformers() {
    let tok = text_tokenizer();
    let fixture = text_cases("chat_cases.json");
    let special = tok.config().special_tokens_map();
    let mut checked = 0;
    let mut raised = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let template = ChatTemplate::new(&template_source(name), special.clone()).unwrap();
        let messages: Vec<ChatMessage> = fixture["messages"][case["messages"].as_str().unwrap()]
            .as_array()
            .unwrap()
            .iter()
            .map(message)
            .collect();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let extra: Vec<(&str, Value)> = case["kwargs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let label = format!("{name} / {} / agp={agp} / {extra:?}", case["messages"]);
        let got = template.render_with(&messages, agp, &extra);
        if let Some(exception) = case.get("exception") {
            match got {
                Err(TextError::TemplateRaised(m)) => assert_eq!(m, exception.as_str().unwrap()),
                other => panic!("{label}: expected raise_exception, got {other:?}"),
            }
            raised += 1;
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(got, case["text"].as_str().unwrap(), "{label}");
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
            .collect();
        assert_eq!(tok.encode(&got).unwrap(), ids, "{label}");
        checked += 1;
    }
    assert!(checked >= 50, "{checked}");
    assert_eq!(raised, 4);
}

#[test]
fn checkpoint_chat_template_jinja_is_the_default() {
    let tok = text_tokenizer();
    let template = tok.chat_template(None).unwrap().unwrap();
    let messages = [ChatMessage::parts(
        "user",
        vec![ContentPart::Image, ContentPart::Text("Hi".into())],
    )];
    assert_eq!(
        template.render(&messages, true).unwrap(),
        "<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(matches!(
        tok.chat_template(Some("tool_use")),
        Err(TextError::NoSuchTemplate { name, available }) if name == "tool_use" && available == ["default"]
    ));
}

#[test]
fn templates_from_tokenizer_config_string_and_named_list() {
    let dir = scratch_tokenizer_dir();
    let tok = write_and_load(dir.path(), "tokenizer_config.json", r#"{"eos_token": "<|im_end|>", "chat_template": "{{ messages[0].content }}{{ eos_token }}"}"#).unwrap();
    let t = tok.chat_template(None).unwrap().unwrap();
    assert_eq!(
        t.render(&[ChatMessage::user("x")], false).unwrap(),
        "x<|im_end|>"
    );

    let tok = write_and_load(
        dir.path(),
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "default", "template": "D{{ messages|length }}"},
                              {"name": "tool_use", "template": "T"}]}"#,
    )
    .unwrap();
    let msgs = [ChatMessage::user("a"), ChatMessage::assistant("b")];
    let default = tok.chat_template(None).unwrap().unwrap();
    assert_eq!(default.render(&msgs, true).unwrap(), "D2");
    let tool = tok.chat_template(Some("tool_use")).unwrap().unwrap();
    assert_eq!(tool.render(&msgs, true).unwrap(), "T");

    // A list without `default` has no default template.
    let tok = write_and_load(
        dir.path(),
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        tok.chat_template(None),
        Err(TextError::NoSuchTemplate { .. })
    ));
}

#[test]
fn chat_template_files_override_tokenizer_config() {
    let dir = scratch_tokenizer_dir();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "config"}"#,
    )
    .unwrap();
    let json = r#"{"chat_template": "processor"}"#;
    let tok = write_and_load(dir.path(), "chat_template.json", json).unwrap();
    let t = tok.chat_template(None).unwrap().unwrap();
    assert_eq!(
        t.render(&[ChatMessage::user("x")], true).unwrap(),
        "processor"
    );
    let tok = write_and_load(dir.path(), "chat_template.jinja", "jinja\n").unwrap();
    let t = tok.chat_template(None).unwrap().unwrap();
    // Jinja2 drops a single trailing newline of the template source, and so do we.
    assert_eq!(t.render(&[ChatMessage::user("x")], true).unwrap(), "jinja");
}

#[test]
fn whitespace_control_matches_jinja2_settings() {
    // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it.
    let t = ChatTemplate::new(
        "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}\nend",
        vec![],
    )
    .unwrap();
    let out = t
        .render(&[ChatMessage::user("a"), ChatMessage::assistant("b")], true)
        .unwrap();
    assert_eq!(out, "U:a\nend");
}

#[test]
fn generation_blocks_render_their_content() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}",
        vec![],
    )
    .unwrap();
    assert_eq!(
        t.render(
            &[ChatMessage::user("q"), ChatMessage::assistant("a")],
            false
        )
        .unwrap(),
        "q|a|"
    );
}
