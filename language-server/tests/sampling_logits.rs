#![allow(clippy::unwrap_used)]
//! The logits pipeline against transformers' TemperatureLogitsWarper, TopKLogitsWarper,
//! TopPLogitsWarper, MinPLogitsWarper and RepetitionPenaltyLogitsProcessor, alone and chained
//! in generate()'s order (fixtures from tools/make_text_fixtures.py).

use dvd_language_server::sampling::{
    SamplingParams, apply_min_p, apply_penalties, apply_temperature, apply_top_k, apply_top_p,
    process_logits,
};
use serde_json::Value;

use crate::common::{json_ids, text_cases};

fn cases() -> Vec<Value> {
    text_cases("logits_cases.json")["cases"]
        .as_array()
        .unwrap()
        .clone()
}

/// f32 values; `null` is -inf.
fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |f| f as f32))
        .collect()
}

fn param(v: &Value) -> f32 {
    v["value"].as_f64().unwrap() as f32
}

/// Same kept set (finite entries) and the same values, exactly.
fn assert_same(got: &[f32], want: &[f32], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "{label}: token {i}: got {g}, transformers {w}\n got {got:?}\nwant {want:?}"
        );
    }
}

/// Each warper, applied with a fixture entry's `value`.
type Warper = fn(&mut [f32], &Value);

#[test]
fn single_warpers_match_transformers() {
    let warpers: [(&str, Warper); 4] = [
        ("temperature", |s, w| apply_temperature(s, param(w))),
        ("top_k", |s, w| {
            apply_top_k(s, usize::try_from(w["value"].as_u64().unwrap()).unwrap());
        }),
        ("top_p", |s, w| apply_top_p(s, param(w))),
        ("min_p", |s, w| apply_min_p(s, param(w))),
    ];
    let mut checked = 0;
    for (n, case) in cases().iter().enumerate() {
        let logits = floats(&case["logits"]);
        for (name, apply) in warpers {
            for w in case[name].as_array().unwrap() {
                let mut s = logits.clone();
                apply(&mut s, w);
                let label = format!("case {n} {name} {}", w["value"]);
                assert_same(&s, &floats(&w["out"]), &label);
                checked += 1;
            }
        }
    }
    assert!(checked >= 50);
}

#[test]
fn repetition_penalty_matches_transformers() {
    for (n, case) in cases().iter().enumerate() {
        let logits = floats(&case["logits"]);
        let input = json_ids(&case["input_ids"]);
        for r in case["repetition_penalty"].as_array().unwrap() {
            let params = SamplingParams {
                repetition_penalty: param(r),
                ..SamplingParams::default()
            };
            // The penalty covers prompt and generated tokens alike: any split gives the same.
            for split in [0, 2, input.len()] {
                let mut s = logits.clone();
                apply_penalties(&params, &mut s, &input[..split], &input[split..]).unwrap();
                assert_same(
                    &s,
                    &floats(&r["out"]),
                    &format!("case {n} penalty {}", r["value"]),
                );
            }
        }
    }
}

#[test]
fn chained_pipeline_matches_transformers() {
    for (n, case) in cases().iter().enumerate() {
        let logits = floats(&case["logits"]);
        let input = json_ids(&case["input_ids"]);
        for c in case["chain"].as_array().unwrap() {
            let params = SamplingParams {
                repetition_penalty: c["repetition_penalty"].as_f64().unwrap() as f32,
                temperature: c["temperature"].as_f64().unwrap() as f32,
                top_k: usize::try_from(c["top_k"].as_u64().unwrap()).unwrap(),
                top_p: c["top_p"].as_f64().unwrap() as f32,
                min_p: c["min_p"].as_f64().unwrap() as f32,
                ..SamplingParams::default()
            };
            let got = process_logits(&params, &logits, &input, &[]).unwrap();
            assert_same(&got, &floats(&c["out"]), &format!("case {n} chain {c}"));
        }
    }
}
