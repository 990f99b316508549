//! Every CPU benchmark runs to a report as a newcomer runs it: no options but `--json` (and
//! `compare`'s `--duration-s`, to keep the test short), on the embedded demo model, in a cache
//! directory of its own.

use std::path::Path;

use serde_json::Value;

use crate::common::{dvd, json_output};

/// `dvd bench ARGS --json` with the demo model cached under `cache`.
fn bench(cache: &Path, args: &[&str]) -> Value {
    json_output(
        dvd()
            .env("DVD_CACHE_DIR", cache)
            .arg("bench")
            .args(args)
            .arg("--json"),
    )
}

/// The number at `key` (a path of object keys) is finite and positive.
fn positive(report: &Value, key: &[&str]) {
    let v = key
        .iter()
        .fold(report, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(f64::NAN);
    assert!(v.is_finite() && v > 0.0, "{key:?} = {v} in {report}");
}

#[test]
fn the_model_benchmarks_run_with_their_defaults_on_the_demo_model() {
    let cache = tempfile::tempdir().unwrap();
    let vision = bench(cache.path(), &["vision"]);
    positive(&vision, &["tiles_per_s"]);
    // The demo model got a picture to measure, 1920x1080 like tools/bench_vision_torch.py's.
    assert_eq!(vision["image_size"], serde_json::json!([1920, 1080]));
    let language = bench(cache.path(), &["language"]);
    positive(&language, &["decode_tokens_per_s"]);
    let engine = bench(cache.path(), &["engine"]);
    assert!(engine.is_object(), "{engine}");
    let pipeline = bench(cache.path(), &["pipeline"]);
    assert!(pipeline.is_object(), "{pipeline}");
}

#[test]
fn the_synthetic_benchmarks_run_with_their_defaults() {
    let cache = tempfile::tempdir().unwrap();
    let transport = bench(cache.path(), &["transport"]);
    assert!(transport.is_array() || transport.is_object(), "{transport}");
    let moe = bench(cache.path(), &["moe"]);
    positive(&moe, &["ms_per_call"]);
}

#[test]
fn compare_runs_with_its_defaults_in_a_timed_closed_loop() {
    let cache = tempfile::tempdir().unwrap();
    let report = bench(cache.path(), &["compare", "--duration-s", "3"]);
    for key in [
        "dvd_request_throughput",
        "coupled_request_throughput",
        "dvd_speedup",
        "vision_alone_request_throughput",
        "language_alone_request_throughput",
    ] {
        positive(&report, &[key]);
    }
    // Timed runs with 16 in flight, counted apart from overload answers.
    for side in ["dvd", "coupled"] {
        assert_eq!(report[side]["max_concurrency"], 16, "{side}");
        assert_eq!(report[side]["duration_asked_s"], 3.0, "{side}");
        assert!(report[side]["duration"].as_f64().unwrap() >= 3.0, "{side}");
        assert_eq!(report[side]["failed"], 0, "{side}");
    }
    assert!(report["rejected_429"].is_u64() && report["rejected_overload"].is_u64());
    // 100 probes alone (back to back) and a mix of prompt lengths.
    for side in ["probes_dvd", "probes_coupled"] {
        assert_eq!(report[side]["unloaded_samples"], 100, "{side}");
    }
    let lengths = &report["dvd"]["probes"]["prompt_tokens"];
    assert!(
        lengths[2].as_u64().unwrap() > 2 * lengths[0].as_u64().unwrap(),
        "{lengths}"
    );
    // An interval around the speedup.
    let ci = report["ci95"]["dvd_speedup"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(lo <= hi, "{ci:?}");
}
