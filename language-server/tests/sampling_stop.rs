#![allow(clippy::unwrap_used)]
//! Stop conditions: EOS and stop tokens, stop strings within and across tokens (never
//! streamed, text cut before them), hold-back of possible stop-string prefixes, max_new_tokens,
//! and the flow with the incremental decoder.

use dvd_language_server::sampling::{SamplingParams, StopChecker, StopReason, StopUpdate};
use dvd_language_server::text::{IncrementalDecoder, Tokenizer};

use crate::common::text_tokenizer;

const EOS: u32 = 500;

fn checker(stop_strings: &[&str], max_new_tokens: usize) -> StopChecker {
    let params = SamplingParams {
        stop_strings: stop_strings.iter().map(|s| (*s).to_owned()).collect(),
        stop_token_ids: vec![7],
        max_new_tokens,
        ..SamplingParams::default()
    };
    StopChecker::new(&params, &[EOS])
}

fn update(text: &str, stop: Option<StopReason>) -> StopUpdate {
    StopUpdate {
        text: text.to_owned(),
        stop,
    }
}

#[test]
fn stop_string_across_tokens_is_held_back_and_dropped() {
    let mut c = checker(&["###"], 100);
    assert_eq!(c.push(1, "Hello #"), update("Hello ", None));
    assert_eq!(c.push(2, "#"), update("", None));
    assert_eq!(
        c.push(3, "# world"),
        update("", Some(StopReason::StopString("###".into())))
    );
    assert_eq!(c.stopped(), Some(&StopReason::StopString("###".into())));
    // Once stopped, nothing more comes out.
    assert_eq!(
        c.push(4, "more"),
        update("", Some(StopReason::StopString("###".into())))
    );
    assert_eq!(c.finish("tail"), "");
}

#[test]
fn a_prefix_that_stops_matching_is_released() {
    let mut c = checker(&["</s>"], 100);
    assert_eq!(c.push(1, "a<"), update("a", None));
    assert_eq!(c.push(2, "/"), update("", None));
    assert_eq!(c.push(3, "x>"), update("</x>", None));
    // "<" could start a stop string again: held.
    assert_eq!(c.push(4, " <"), update(" ", None));
    assert_eq!(c.finish(""), "<");
}

#[test]
fn text_after_a_stop_string_in_the_same_token_is_dropped() {
    let mut c = checker(&["STOP"], 100);
    assert_eq!(
        c.push(1, "abc STOP def"),
        update("abc ", Some(StopReason::StopString("STOP".into())))
    );
}

#[test]
fn the_earliest_stop_string_wins() {
    let mut c = checker(&["world", "lo w"], 100);
    assert_eq!(
        c.push(1, "hello world"),
        update("hel", Some(StopReason::StopString("lo w".into())))
    );
}

#[test]
fn multibyte_stop_strings_hold_back_on_character_boundaries() {
    let mut c = checker(&["答案：", "。"], 100);
    assert_eq!(c.push(1, "思考完毕答"), update("思考完毕", None));
    assert_eq!(c.push(2, "案"), update("", None));
    assert_eq!(
        c.push(3, "：42"),
        update("", Some(StopReason::StopString("答案：".into())))
    );
    let mut c = checker(&["答案："], 100);
    assert_eq!(c.push(1, "答"), update("", None));
    assert_eq!(c.push(2, "复"), update("答复", None));
}

#[test]
fn eos_and_stop_tokens_end_generation_without_their_text() {
    let mut c = checker(&["##"], 100);
    assert_eq!(c.push(1, "a#"), update("a", None));
    assert_eq!(
        c.push(EOS, "<|im_end|>"),
        update("#", Some(StopReason::Eos(EOS)))
    );
    assert_eq!(c.generated(), 2);

    let mut c = checker(&[], 100);
    assert_eq!(c.push(1, "x"), update("x", None));
    assert_eq!(
        c.push(7, "seven"),
        update("", Some(StopReason::StopToken(7)))
    );
    assert_eq!(c.push(8, "y"), update("", Some(StopReason::StopToken(7))));
    assert_eq!(c.generated(), 2);
}

#[test]
fn max_new_tokens_stops_and_flushes() {
    let mut c = checker(&["###"], 3);
    assert_eq!(c.push(1, "a"), update("a", None));
    assert_eq!(c.push(2, "b#"), update("b", None));
    assert_eq!(c.push(3, "c"), update("#c", Some(StopReason::MaxTokens)));
    // A stop string completed by the last allowed token still wins.
    let mut c = checker(&["##"], 2);
    assert_eq!(c.push(1, "a#"), update("a", None));
    assert_eq!(
        c.push(2, "#"),
        update("", Some(StopReason::StopString("##".into())))
    );
    // max_new_tokens 1: the first token already ends it.
    let mut c = checker(&[], 1);
    assert_eq!(c.push(1, "z"), update("z", Some(StopReason::MaxTokens)));
}

#[test]
fn finish_checks_the_decoders_tail() {
    let mut c = checker(&["END"], 100);
    assert_eq!(c.push(1, "ok E"), update("ok ", None));
    assert_eq!(c.finish("ND!"), "");
    assert_eq!(c.stopped(), Some(&StopReason::StopString("END".into())));
    let mut c = checker(&["END"], 100);
    assert_eq!(c.push(1, "ok E"), update("ok ", None));
    assert_eq!(c.finish("\u{FFFD}"), "E\u{FFFD}");
}

/// Streams `text`'s tokens through the decoder and the checker; returns what was sent.
fn stream(tok: &Tokenizer, text: &str, stop: &str) -> (String, Option<StopReason>) {
    let ids = tok.encode(text).unwrap();
    let mut decoder = IncrementalDecoder::new(tok.clone(), true);
    let mut c = checker(&[stop], 1000);
    let mut sent = String::new();
    for &id in &ids {
        let delta = decoder.push(id).unwrap();
        let upd = c.push(id, &delta);
        assert!(
            !upd.text.contains(stop),
            "{stop:?} streamed in {:?}",
            upd.text
        );
        sent.push_str(&upd.text);
        if let Some(reason) = upd.stop {
            return (sent, Some(reason));
        }
    }
    let tail = decoder.finish().unwrap();
    sent.push_str(&c.finish(&tail));
    (sent, c.stopped().cloned())
}

#[test]
fn with_the_incremental_decoder_stop_strings_spanning_tokens_are_caught() {
    let tok = text_tokenizer();
    let text = "The quick brown fox 😀 jumps over the lazy dog. 你好，世界";
    for stop in ["quick brown", "fox 😀 j", "😀", "lazy", "世界", "dog. 你"] {
        let (sent, reason) = stream(&tok, text, stop);
        let cut = text.find(stop).unwrap();
        assert_eq!(sent, &text[..cut], "{stop:?}");
        assert_eq!(reason, Some(StopReason::StopString(stop.to_owned())));
    }
    let (sent, reason) = stream(&tok, text, "absent");
    assert_eq!(sent, text);
    assert_eq!(reason, None);
}
