//! The `dvd` binary as users run it: real processes, real sockets.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use crate::common::{
    REFERENCE_FEATURES_TOLERANCE, REFERENCE_LOGITS_TOLERANCE, assert_success, dvd, generate_json,
    json_output, language_fixture, max_diff, read_f32, read_i64, vision_fixture,
};

#[test]
fn bench_transport_prints_the_documented_json() {
    let report = json_output(dvd().args([
        "bench",
        "transport",
        "--json",
        "--rounds",
        "1",
        "--tcp-frames",
        "8",
        "--quic-frames",
        "8",
        "--tokens",
        "64",
        "--hidden",
        "256",
    ]));
    for key in ["raw_tcp_gbps", "tcp_gbps", "raw_quic_gbps", "quic_gbps"] {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["frame_bytes"], 64 * 256 * 2);
}

#[test]
fn bench_transport_refuses_unknown_modes() {
    let out = dvd()
        .args(["bench", "transport", "--modes", "tcp,carrier-pigeon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("carrier-pigeon"));
}

#[test]
fn tls_self_signed_writes_usable_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dvd()
        .args(["tls", "self-signed", "--out"])
        .arg(dir.path())
        .args(["--name", "language-0.dvd"])
        .output()
        .unwrap();
    assert_success(&out);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    dvd_transport::quic::ServerTls::from_pem_files(&cert, &key).unwrap();
    dvd_transport::quic::ClientTls::from_ca_file(&cert).unwrap();
}

#[test]
fn encode_writes_reference_features_from_a_hub_cache_id() {
    // A hub id resolves through the local Hugging Face cache (HF_HUB_CACHE), offline.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny--flash");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(
            vision_fixture("flash-custom").join(file),
            snapshot.join(file),
        )
        .unwrap();
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("features.safetensors");
    let run = |vir: &str| {
        dvd()
            .env("HF_HUB_CACHE", cache.path())
            .args(["encode", "--model", "tiny/flash", "--vir", vir, "--out"])
            .arg(&out)
            .arg("--image")
            .arg(vision_fixture("image.png"))
            .output()
            .unwrap()
    };
    let result = run("on");
    assert_success(&result);
    let summary: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(summary["tiles"], 7);
    assert_eq!(summary["tiles_per_image"], serde_json::json!([7]));
    assert!(summary["timings_ms"]["vit"].as_f64().unwrap() > 0.0);

    let (shape, features) = read_f32(&out, "features");
    let (ref_shape, reference) = read_f32(
        &vision_fixture("flash-custom/reference.safetensors"),
        "features",
    );
    assert_eq!(shape, ref_shape);
    assert_eq!(summary["tokens"], shape[0]);
    let diff = max_diff(&features, &reference);
    assert!(
        diff <= REFERENCE_FEATURES_TOLERANCE,
        "features differ by {diff}"
    );
    let (pv_shape, _) = read_f32(&out, "pixel_values");
    assert_eq!(pv_shape, vec![7, 3, 56, 56]);

    // With the router off every tile takes the 4-token (256 at 448 px) path.
    assert_success(&run("off"));
    let (shape, _) = read_f32(&out, "features");
    assert_eq!(shape, vec![28, 48]);

    // Tiling overrides: at most 2 tiles (a 2x1 grid for 150x100), no thumbnail.
    let summary = json_output(
        dvd()
            .args([
                "encode",
                "--max-tiles",
                "2",
                "--no-thumbnail",
                "--vir",
                "off",
                "--model",
            ])
            .arg(vision_fixture("vit300m-hf"))
            .arg("--image")
            .arg(vision_fixture("image.png"))
            .arg("--out")
            .arg(&out),
    );
    assert_eq!(
        (summary["tiles"].as_u64(), summary["tokens"].as_u64()),
        (Some(2), Some(8))
    );
    let (pv_shape, _) = read_f32(&out, "pixel_values");
    assert_eq!(pv_shape, vec![2, 3, 56, 56]);
}

#[test]
fn encode_reports_bad_images_and_models_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("truncated.png");
    let png = std::fs::read(vision_fixture("image.png")).unwrap();
    std::fs::write(&bad, &png[..png.len() / 3]).unwrap();
    let out = dir.path().join("out.safetensors");
    let result = dvd()
        .args(["encode", "--model"])
        .arg(vision_fixture("vit300m-hf"))
        .arg("--image")
        .arg(&bad)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("truncated.png") && stderr.contains("decode"),
        "{stderr}"
    );
    assert!(!out.exists());

    let result = dvd()
        .env("HF_HUB_CACHE", dir.path())
        .args(["encode", "--model", "nobody/nothing", "--image"])
        .arg(vision_fixture("image.png"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("not found"));
}

#[test]
fn generate_coupled_matches_transformers_with_an_image() {
    // GitHub-format MoE checkpoint: the InternVL conversation template with its default system
    // message, `<image>` expanded from the vision side's tokens per tile.
    let model = language_fixture("internvl-moe-custom-bf16");
    let image = vision_fixture("image.png");
    let (report, logits) = generate_json(
        &[
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            "What is shown in the picture?",
            "--max-new-tokens",
            "16",
        ],
        &model,
    );
    let reference = model.join("reference.safetensors");
    let tokens: Vec<i64> = serde_json::from_value(report["token_ids"].clone()).unwrap();
    assert_eq!(tokens, read_i64(&reference, "image_greedy"));
    assert_eq!(
        report["prompt_tokens"],
        read_i64(&reference, "image_ids").len()
    );
    assert_eq!(report["image_tokens"], serde_json::json!([28]));
    assert_eq!(report["finish_reason"], "length");
    let diff = max_diff(&logits, &read_f32(&reference, "image_logits").1);
    assert!(
        diff <= REFERENCE_LOGITS_TOLERANCE,
        "prefill logits differ by {diff}"
    );
}

#[test]
fn generate_renders_the_hf_chat_template_like_transformers() {
    let model = language_fixture("internvl-dense-hf");
    let image = vision_fixture("image.png");
    let (report, logits) = generate_json(
        &[
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            "What is shown in the picture?",
            "--max-new-tokens",
            "2",
        ],
        &model,
    );
    let reference = model.join("reference.safetensors");
    assert_eq!(
        report["prompt_tokens"],
        read_i64(&reference, "chat_ids").len()
    );
    let diff = max_diff(&logits, &read_f32(&reference, "chat_logits").1);
    assert!(
        diff <= REFERENCE_LOGITS_TOLERANCE,
        "prefill logits differ by {diff}"
    );
}

#[test]
fn generate_text_only_and_raw_prompts() {
    let model = language_fixture("qwen3-tied-f16");
    let reference = model.join("reference.safetensors");
    let (report, logits) = generate_json(
        &[
            "--prompt",
            "Describe this image in detail.",
            "--max-new-tokens",
            "16",
        ],
        &model,
    );
    let tokens: Vec<i64> = serde_json::from_value(report["token_ids"].clone()).unwrap();
    assert_eq!(tokens, read_i64(&reference, "text_greedy"));
    let diff = max_diff(&logits, &read_f32(&reference, "text_logits").1);
    assert!(
        diff <= REFERENCE_LOGITS_TOLERANCE,
        "logits differ by {diff}"
    );

    // --raw: the prompt is used verbatim.
    let (report, _) = generate_json(
        &["--raw", "--prompt", "Hello world!", "--max-new-tokens", "3"],
        &model,
    );
    assert!(report["prompt_tokens"].as_u64().unwrap() < 10);
    assert_eq!(report["completion_tokens"], 3);

    // Thinking mode: the R1 system prompt replaces the default one; the answer is split.
    let (thinking, _) = generate_json(
        &["--prompt", "Hi", "--thinking", "--max-new-tokens", "2"],
        &model,
    );
    let (plain, _) = generate_json(&["--prompt", "Hi", "--max-new-tokens", "2"], &model);
    assert_ne!(thinking["prompt_tokens"], plain["prompt_tokens"]);
    assert!(thinking.get("answer").is_some() && plain.get("answer").is_none());

    // Seeded sampling is reproducible.
    let sampled = |seed: &str| {
        generate_json(
            &[
                "--prompt",
                "Hi",
                "--temperature",
                "0.9",
                "--top-p",
                "0.9",
                "--seed",
                seed,
                "--max-new-tokens",
                "8",
            ],
            &model,
        )
        .0["token_ids"]
            .clone()
    };
    assert_eq!(sampled("7"), sampled("7"));
}

#[test]
fn generate_reports_bad_requests_clearly() {
    let model = language_fixture("qwen3-tied-f16");
    let run = |args: &[&str]| {
        let out = dvd()
            .arg("generate")
            .arg("--model")
            .arg(&model)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let image = vision_fixture("image.png");
    // A text-only checkpoint has no vision tower.
    let err = run(&["--prompt", "x", "--image", image.to_str().unwrap()]);
    assert!(err.contains("InternViT") || err.contains("vision"), "{err}");
    let err = run(&["--prompt", "x", "--temperature=-1"]);
    assert!(err.contains("temperature"), "{err}");
    // Two <image> placeholders for one image.
    let err = run(&[
        "--raw",
        "--prompt",
        "<image><image>",
        "--image",
        image.to_str().unwrap(),
    ]);
    assert!(!err.is_empty());
    // A device this build cannot use: a clear refusal, not a panic.
    let err = run(&["--prompt", "x", "--device", "cuda:0"]);
    assert!(err.contains("cuda:0") && !err.contains("panicked"), "{err}");
    let err = run(&["--prompt", "x", "--device", "tpu"]);
    assert!(err.contains("unknown device"), "{err}");
}

#[test]
fn gpu_check_compares_a_device_with_the_cpu() {
    // On the CPU build the "device" is the CPU in bf16: the command must run every stage and
    // report agreement (the GPU run uses the same code with --device cuda:0).
    let report = json_output(
        dvd()
            .args(["bench", "gpu-check", "--model"])
            .arg(language_fixture("internvl-dense-hf"))
            .args(["--dtype", "bf16", "--first-chunk", "20"]),
    );
    assert_eq!(report["pass"], true, "{report}");
    let stages: Vec<&str> = report["agreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["what"].as_str().unwrap())
        .collect();
    assert_eq!(stages.len(), 4, "{stages:?}");
    assert!(stages[0].contains("vision"));
    // A threshold nothing meets fails the command.
    let out = dvd()
        .args(["bench", "gpu-check", "--model"])
        .arg(language_fixture("internvl-dense-hf"))
        .args([
            "--dtype",
            "bf16",
            "--first-chunk",
            "20",
            "--min-cosine",
            "1.5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn benches_run_on_small_checkpoints() {
    let report = json_output(
        dvd()
            .args([
                "bench",
                "language",
                "--prompt-tokens",
                "16",
                "--decode-tokens",
                "4",
                "--rounds",
                "1",
            ])
            .args(["--batch", "2", "--json", "--model"])
            .arg(language_fixture("qwen3-tied-f16")),
    );
    assert!(report["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["batch"], 2);

    let report = json_output(
        dvd()
            .args([
                "bench", "vision", "--tiles", "3", "--rounds", "1", "--json", "--model",
            ])
            .arg(vision_fixture("vit300m-hf"))
            .arg("--image")
            .arg(vision_fixture("image.png")),
    );
    assert_eq!(report["image_tiles"], 7);
    assert!(report["tiles_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_engine_prints_the_documented_json() {
    let model = language_fixture("qwen3-tied-f16");
    let report = json_output(
        dvd()
            .args(["bench", "engine", "--model"])
            .arg(&model)
            .args([
                "--batches",
                "1,2",
                "--prompt-tokens",
                "8",
                "--decode-tokens",
                "4",
            ])
            .args([
                "--prefill-tokens",
                "16",
                "--requests",
                "3",
                "--rounds",
                "1",
                "--json",
            ]),
    );
    let decode = report["decode"].as_array().unwrap();
    assert_eq!(decode.len(), 2);
    for point in decode {
        assert!(
            point["decode_tokens_per_s"].as_f64().unwrap() > 0.0,
            "{point}"
        );
    }
    assert!(
        report["prefill"]["prefill_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["load"].is_object(), "{report}");
    // A bad list is refused by name.
    let bad = dvd()
        .args(["bench", "engine", "--model", "x", "--batches", "1,two"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("two"));
}

#[test]
fn bench_pipeline_prints_the_documented_json() {
    let report = json_output(
        dvd()
            .args(["bench", "pipeline", "--model"])
            .arg(vision_fixture("vit300m-hf"))
            .arg("--image")
            .arg(vision_fixture("image.png"))
            .args([
                "--rounds",
                "1",
                "--requests",
                "2",
                "--tiles-per-request",
                "1",
            ])
            .args([
                "--batch-tiles",
                "2",
                "--image-tiles",
                "7",
                "--chunk-tiles",
                "5",
                "--json",
            ]),
    );
    let throughput = &report["throughput"];
    for mode in ["unbatched", "batched"] {
        assert!(
            throughput[mode]["tiles_per_s"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    assert!(
        report["overlap"]["pipelined"]["wall_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
