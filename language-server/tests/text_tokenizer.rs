#![allow(clippy::unwrap_used)]
//! The tokenizer against transformers on the tiny Qwen-style fixture tokenizer
//! (tools/make_text_fixtures.py): encode without special tokens, decode with and without
//! special tokens, partial-character decodes, special ids, and loading with and without the
//! optional config files.

use dvd_language_server::text::{TextError, Tokenizer, TokenizerConfig, TokenizerConfigError};
use serde_json::Value;

use crate::common::{
    json_ids as ids, scratch_tokenizer_dir, text_cases, text_fixture, text_tokenizer,
    write_and_load,
};

fn cases() -> Value {
    text_cases("tokenizer_cases.json")
}

#[test]
fn encode_and_decode_match_transformers() {
    let tok = text_tokenizer();
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
    let tok = text_tokenizer();
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
    let tok = text_tokenizer();
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
    let dir = scratch_tokenizer_dir();
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
    let dir = scratch_tokenizer_dir();
    let tok = write_and_load(
        dir.path(),
        "tokenizer_config.json",
        r#"{"eos_token": "<|im_end|>",
            "added_tokens_decoder": {"500": {"content": "<|im_end|>", "special": true},
                                     "512": {"content": "<video>", "special": true}}}"#,
    )
    .unwrap();
    assert_eq!(tok.token_id("<video>"), Some(512));
    assert_eq!(tok.encode("a<video>").unwrap()[1], 512);
    assert_eq!(tok.decode(&[512, 64], true).unwrap(), "a");

    // A token that cannot land on its declared id is a config error.
    assert!(matches!(
        write_and_load(
            dir.path(),
            "tokenizer_config.json",
            r#"{"added_tokens_decoder": {"600": {"content": "<far>", "special": true}}}"#
        ),
        Err(TextError::Config {
            source: TokenizerConfigError::AddedTokenMoved { id: 600, .. },
            ..
        })
    ));
}

#[test]
fn unreadable_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Tokenizer::from_dir(dir.path()),
        Err(TextError::Io { .. })
    ));
    assert!(matches!(
        write_and_load(dir.path(), "tokenizer.json", "{not json"),
        Err(TextError::TokenizerLoad { .. })
    ));
    std::fs::copy(
        text_fixture("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    assert!(matches!(
        write_and_load(dir.path(), "tokenizer_config.json", "[1, 2]"),
        Err(TextError::Config { .. })
    ));
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    assert!(matches!(
        write_and_load(dir.path(), "chat_template.json", "{\"chat_template\": 5}"),
        Err(TextError::Config {
            source: TokenizerConfigError::TemplateNotText,
            ..
        })
    ));
    // Like the Python tokenizers, ids outside the vocabulary are dropped, not errors.
    let tok = text_tokenizer();
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
