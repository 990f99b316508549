#![allow(clippy::unwrap_used)]
//! The tokenizer against transformers on the tiny Qwen-style fixture tokenizer
//! (tools/make_text_fixtures.py): encode without special tokens, decode with and without
//! special tokens, partial-character decodes, special ids, and loading with and without the
//! optional config files.

use std::path::{Path, PathBuf};

use dvd_language_server::text::{TextError, Tokenizer, TokenizerConfig};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

#[test]
fn encode_and_decode_match_transformers() {
    let tok = Tokenizer::from_dir(&fixture_dir()).unwrap();
    let cases = cases();
    let all = cases["cases"].as_array().unwrap();
    assert!(all.len() >= 10);
    for case in all {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "encode {text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decode"].as_str().unwrap(),
            "decode {text:?}"
        );
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            case["decode_skip_special"].as_str().unwrap(),
            "decode (skip special) {text:?}"
        );
    }
}

#[test]
fn partial_characters_decode_like_transformers() {
    let tok = Tokenizer::from_dir(&fixture_dir()).unwrap();
    for case in cases()["prefix_decodes"].as_array().unwrap() {
        let ids = ids(&case["ids"]);
        for (n, want) in case["decodes"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                tok.decode(&ids[..=n], false).unwrap(),
                want.as_str().unwrap()
            );
        }
    }
}

#[test]
fn special_ids_vocab_and_eos() {
    let tok = Tokenizer::from_dir(&fixture_dir()).unwrap();
    let cases = cases();
    for (token, id) in cases["special_ids"].as_object().unwrap() {
        let id = u32::try_from(id.as_u64().unwrap()).unwrap();
        assert_eq!(tok.token_id(token), Some(id), "{token}");
        assert_eq!(tok.token(id).as_deref(), Some(token.as_str()));
        assert!(tok.is_special(id), "{token}");
    }
    assert_eq!(
        tok.vocab_size(),
        usize::try_from(cases["vocab_size"].as_u64().unwrap()).unwrap()
    );
    assert_eq!(tok.eos_token_id(), tok.token_id("<|im_end|>"));
    assert_eq!(tok.config().pad_token.as_deref(), Some("<|endoftext|>"));
    assert_eq!(tok.token_id("<image>"), None);
    assert!(!tok.is_special(tok.encode("Hello").unwrap()[0]));
    assert!(matches!(
        tok.require_token_id("<nope>"),
        Err(TextError::UnknownToken(t)) if t == "<nope>"
    ));
    assert!(format!("{tok:?}").contains("vocab_size: 512"));
}

#[test]
fn optional_files_may_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.config(), &TokenizerConfig::default());
    assert_eq!(tok.eos_token_id(), None);
    assert!(tok.chat_template(None).unwrap().is_none());
    assert_eq!(
        tok.encode("<|im_start|>user").unwrap(),
        vec![tok.token_id("<|im_start|>").unwrap(), 344]
    );
}

#[test]
fn added_tokens_decoder_adds_missing_tokens_at_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>",
            "added_tokens_decoder": {"500": {"content": "<|im_end|>", "special": true},
                                     "512": {"content": "<video>", "special": true}}}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.token_id("<video>"), Some(512));
    assert_eq!(tok.encode("a<video>").unwrap()[1], 512);
    assert_eq!(tok.decode(&[512, 64], true).unwrap(), "a");

    // A token that cannot land on its declared id is a config error.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"added_tokens_decoder": {"600": {"content": "<far>", "special": true}}}"#,
    )
    .unwrap();
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(TextError::Config { .. })
    ));
}

#[test]
fn unreadable_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(TextError::Io { .. })
    ));
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(TextError::TokenizerLoad { .. })
    ));
    std::fs::copy(
        fixture_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "[1, 2]").unwrap();
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(TextError::Config { .. })
    ));
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    std::fs::write(
        dir.path().join("chat_template.json"),
        "{\"chat_template\": 5}",
    )
    .unwrap();
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(TextError::Config { .. })
    ));
    // Like the Python tokenizers, ids outside the vocabulary are dropped, not errors.
    let tok = Tokenizer::from_dir(&fixture_dir()).unwrap();
    assert_eq!(tok.decode(&[100_000, 64], false).unwrap(), "a");
}

#[test]
fn text_types_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<dvd_language_server::text::ChatTemplate>();
    assert_send_sync::<dvd_language_server::text::IncrementalDecoder>();
    assert_send_sync::<TextError>();
}
