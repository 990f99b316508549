#![allow(clippy::unwrap_used)]
//! Streaming detokenisation: deltas concatenate to the one-shot decode and never carry a
//! broken character, for byte-split emoji and CJK.

use dvd_language_server::text::{IncrementalDecoder, Tokenizer};

use crate::common::text_tokenizer as tokenizer;

const TEXTS: &[&str] = &[
    "日本語のテキストです",
    "emoji: 😀👍🏽 🇯🇵 👨\u{200d}👩\u{200d}👧",
    "naïve café — 你好，世界 🙂",
    "<think>\n思考 🤔\n</think>\n\n答え: 42<|im_end|>",
    "Describe this image in detail.",
    "  leading and trailing spaces  \n\n",
    "",
];

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut decoder = IncrementalDecoder::new(tok.clone(), skip_special);
    let mut deltas: Vec<String> = ids.iter().map(|&id| decoder.push(id).unwrap()).collect();
    deltas.push(decoder.finish().unwrap());
    assert!(!decoder.has_pending());
    assert_eq!(decoder.ids(), ids);
    deltas
}

#[test]
fn deltas_concatenate_to_the_full_decode() {
    let tok = tokenizer();
    for &text in TEXTS {
        let ids = tok.encode(text).unwrap();
        for skip in [false, true] {
            let deltas = stream(&tok, &ids, skip);
            let full = tok.decode(&ids, skip).unwrap();
            assert_eq!(deltas.concat(), full, "{text:?} skip={skip}");
            for delta in &deltas {
                assert!(!delta.contains('\u{FFFD}'), "{text:?}: delta {delta:?}");
            }
        }
    }
}

#[test]
fn split_characters_are_held_back_until_complete() {
    let tok = tokenizer();
    // "😀" (4 UTF-8 bytes) is several byte-level tokens in the fixture vocabulary.
    let ids = tok.encode("😀").unwrap();
    assert!(ids.len() >= 2);
    let (last, head) = ids.split_last().unwrap();
    let mut decoder = IncrementalDecoder::new(tok.clone(), false);
    for &id in head {
        assert_eq!(decoder.push(id).unwrap(), "");
        assert!(decoder.has_pending());
    }
    assert_eq!(decoder.push(*last).unwrap(), "😀");
    assert!(!decoder.has_pending());
    assert_eq!(decoder.finish().unwrap(), "");
}

#[test]
fn finish_flushes_an_incomplete_character_as_the_decode_does() {
    let tok = tokenizer();
    let ids = tok.encode("ok 😀").unwrap();
    let cut = &ids[..ids.len() - 1];
    let mut decoder = IncrementalDecoder::new(tok.clone(), false);
    let streamed = decoder.push_all(cut).unwrap();
    assert!(!streamed.contains('\u{FFFD}'));
    let rest = decoder.finish().unwrap();
    assert_eq!(format!("{streamed}{rest}"), tok.decode(cut, false).unwrap());
    assert!(rest.ends_with('\u{FFFD}'));
}

#[test]
fn special_tokens_can_be_skipped_while_streaming() {
    let tok = tokenizer();
    let ids = tok.encode("<think>\nA\n</think>\n\nB<|im_end|>").unwrap();
    assert_eq!(stream(&tok, &ids, true).concat(), "\nA\n\n\nB");
    assert_eq!(
        stream(&tok, &ids, false).concat(),
        "<think>\nA\n</think>\n\nB<|im_end|>"
    );
}

#[test]
fn unknown_ids_decode_to_nothing_as_in_tokenizers() {
    let mut decoder = IncrementalDecoder::new(tokenizer(), false);
    assert_eq!(decoder.push(99_999).unwrap(), "");
    assert_eq!(decoder.push(64).unwrap(), "a");
}
