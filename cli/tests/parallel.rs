//! Tensor and expert parallelism as operators meet it: a language server over two CPU ranks
//! reports each rank's weight bytes and its KV capacity when ready; splits the model cannot take
//! make every command that loads it exit non-zero with the numbers; `dvd bench language`
//! measures two ranks against one in the same run.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common;

use common::{ServerProcess, dvd, json_output, language_args, language_fixture};

#[test]
fn a_split_language_server_reports_its_memory_per_rank() {
    let model = language_fixture("qwen3-moe-fused-f32");
    let model = model.to_str().unwrap();
    let ready = |extra: &[&str]| {
        let mut args = language_args(model);
        args.extend(["--kv-cache-mib", "1"]);
        args.extend_from_slice(extra);
        let server = ServerProcess::start(&args);
        server.ready.clone()
    };
    let one = ready(&[]);
    let two = ready(&["--tensor-parallel-size", "2"]);
    let experts = ready(&["--tensor-parallel-size", "2", "--expert-parallel"]);
    assert_eq!(one["tensor_parallel_size"], 1);
    assert_eq!(two["tensor_parallel_size"], 2);
    assert_eq!(experts["expert_parallel"], true);
    let weights = |r: &serde_json::Value| r["weight_bytes_per_rank"].as_u64().unwrap();
    // Two ranks hold about half each (norms and routers are replicated).
    assert!(weights(&two) < weights(&one) * 55 / 100, "{two} vs {one}");
    assert!(weights(&experts) < weights(&one) * 55 / 100, "{experts}");
    // 1 MiB per rank of KV: at 2 ranks each holds one of the two KV heads, so twice the blocks.
    let blocks = |r: &serde_json::Value| r["kv_blocks"].as_u64().unwrap();
    assert_eq!(blocks(&two), 2 * blocks(&one), "{two} vs {one}");
    assert_eq!(two["kv_tokens"].as_u64().unwrap(), blocks(&two) * 16);
    assert!(two["kv_bytes_per_rank"].as_u64().unwrap() <= 1 << 20);
}

/// Runs `dvd <args>`, expecting failure; its stderr.
fn refused(args: &[&str]) -> String {
    let out = dvd().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn splits_that_cannot_work_are_refused_with_the_numbers() {
    let model = language_fixture("internvl-dense-hf");
    let model = model.to_str().unwrap();
    let generate = |split: &[&str]| {
        let mut args = vec!["generate", "--model", model, "--prompt", "hi"];
        args.extend_from_slice(split);
        refused(&args)
    };
    let mut serve = language_args(model);
    serve.extend(["--tensor-parallel-size", "3"]);
    let cases = [
        (refused(&serve), "4 query heads do not split over 3 ranks"),
        (
            generate(&["--tensor-parallel-size", "8"]),
            "4 query heads do not split over 8 ranks",
        ),
        (
            generate(&["--tensor-parallel-size", "2", "--expert-parallel"]),
            "--expert-parallel needs a mixture-of-experts",
        ),
        (
            generate(&["--tensor-parallel-size", "2", "--devices", "cpu"]),
            "--devices lists 1 devices for --tensor-parallel-size 2",
        ),
        (
            refused(&["up", "--model", model, "--tensor-parallel-size", "3"]),
            "4 query heads do not split over 3 ranks",
        ),
    ];
    for (message, want) in cases {
        assert!(message.contains(want), "{message}");
    }
}

#[test]
fn bench_language_measures_two_ranks_against_one_in_one_run() {
    let model = language_fixture("qwen3-moe-fused-f32");
    let report = json_output(dvd().args([
        "bench",
        "language",
        "--model",
        model.to_str().unwrap(),
        "--prompt-tokens",
        "16",
        "--decode-tokens",
        "4",
        "--rounds",
        "1",
        "--tensor-parallel-size",
        "2",
        "--json",
    ]));
    assert_eq!(report["tensor_parallel_size"], 2);
    let one = &report["single_rank"];
    assert!(
        one["decode_ms_per_step"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(one["collectives_per_step"], 2 * 2 + 2);
    assert!(one["all_reduce_us"].as_f64().unwrap() > 0.0);
}
