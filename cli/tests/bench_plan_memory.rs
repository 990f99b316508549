//! `dvd bench plan --model`: the memory mode on the committed InternVL3.5 configs
//! (deploy/models), at the tensor-parallel sizes operators use, against arithmetic written here
//! from the published shapes; and the layouts and flag combinations it refuses.

use std::path::{Path, PathBuf};

use dvd_language_server::model::LanguageConfig;
use dvd_vision_server::model::VisionConfig;
use serde_json::Value;

use crate::common::{dvd, json_output};

/// A committed model config directory.
fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/models")
        .join(name)
}

/// The published shape of a Qwen3 LLM: untied embeddings, head_dim 128, vocab 151,936.
struct Shape {
    layers: u64,
    hidden: u64,
    heads: u64,
    kv_heads: u64,
    /// Dense MLP width.
    intermediate: u64,
    /// `(experts, moe_intermediate_size)` of a MoE.
    experts: Option<(u64, u64)>,
}

const HEAD_DIM: u64 = 128;
const VOCAB: u64 = 151_936;
/// bf16.
const DTYPE_BYTES: u64 = 2;
const BLOCK: u64 = 16;

/// Qwen3-8B.
const QWEN3_8B: Shape = Shape {
    layers: 36,
    hidden: 4096,
    heads: 32,
    kv_heads: 8,
    intermediate: 12_288,
    experts: None,
};
/// Qwen3-32B.
const QWEN3_32B: Shape = Shape {
    layers: 64,
    hidden: 5120,
    heads: 64,
    kv_heads: 8,
    intermediate: 25_600,
    experts: None,
};
/// Qwen3-235B-A22B.
const QWEN3_235B: Shape = Shape {
    layers: 94,
    hidden: 4096,
    heads: 64,
    kv_heads: 4,
    intermediate: 12_288,
    experts: Some((128, 1536)),
};

impl Shape {
    /// KV heads one of `tp` ranks stores (one replicated head when there are fewer than ranks).
    fn kv_heads_per_rank(&self, tp: u64) -> u64 {
        (self.kv_heads / tp).max(1)
    }

    /// bf16 weight bytes of one of `tp` ranks (every published shape splits evenly, the
    /// vocabulary included: 151,936 = 1187 x 128).
    fn weight_bytes(&self, tp: u64, expert_parallel: bool) -> u64 {
        assert_eq!(VOCAB % tp, 0);
        let h = self.hidden;
        let q = self.heads / tp * HEAD_DIM;
        let kv = self.kv_heads_per_rank(tp) * HEAD_DIM;
        let mlp = match self.experts {
            // Router replicated; 1/tp of the experts whole, or 1/tp of every expert's width.
            Some((experts, width)) if expert_parallel => experts * h + experts / tp * 3 * width * h,
            Some((experts, width)) => experts * h + experts * 3 * (width / tp) * h,
            None => 3 * (self.intermediate / tp) * h,
        };
        // Two norms, q/k norms, q/k/v/o, MLP.
        let layer = 2 * h + 2 * HEAD_DIM + (q + 2 * kv) * h + h * q + mlp;
        // Embedding and lm_head slices, final norm.
        let elements = 2 * (VOCAB / tp) * h + h + self.layers * layer;
        elements * DTYPE_BYTES
    }

    /// bf16 KV bytes per token position on each of `tp` ranks.
    fn kv_bytes_per_token(&self, tp: u64) -> u64 {
        self.layers * 2 * self.kv_heads_per_rank(tp) * HEAD_DIM * DTYPE_BYTES
    }
}

/// What `--gpu-memory-gib gib` at the default utilization 0.9 leaves usable.
fn usable(gib: u64) -> u64 {
    ((gib << 30) as f64 * 0.9) as u64
}

/// `dvd bench plan --json --model NAME --tensor-parallel-size TP --gpu-memory-gib GIB [extra]`.
fn plan(name: &str, tp: u64, gib: u64, extra: &[&str]) -> Value {
    json_output(
        dvd()
            .args(["bench", "plan", "--json", "--model"])
            .arg(model(name))
            .args(["--tensor-parallel-size", &tp.to_string()])
            .args(["--gpu-memory-gib", &gib.to_string()])
            .args(extra),
    )
}

/// Checks a report against the arithmetic for `shape` over `tp` ranks of `gib` GiB.
fn check(report: &Value, shape: &Shape, tp: u64, gib: u64, expert_parallel: bool) {
    let weights = shape.weight_bytes(tp, expert_parallel);
    let kv = shape.kv_bytes_per_token(tp);
    let usable = usable(gib);
    let blocks = usable.saturating_sub(weights) / (kv * BLOCK);
    assert_eq!(report["tensor_parallel_size"], tp, "{report}");
    assert_eq!(report["expert_parallel"], expert_parallel);
    assert_eq!(report["gpu_memory_gib"], gib as f64);
    assert_eq!(report["gpu_memory_utilization"], 0.9);
    assert_eq!(report["block_size"], BLOCK);
    assert_eq!(report["dtype"], "bf16");
    assert_eq!(report["heads_per_rank"], shape.heads / tp);
    assert_eq!(report["kv_heads_per_rank"], shape.kv_heads_per_rank(tp));
    assert_eq!(report["usable_bytes_per_rank"], usable);
    assert_eq!(report["weight_bytes_per_rank"], weights, "{report}");
    assert_eq!(report["kv_bytes_per_token_per_rank"], kv);
    assert_eq!(report["kv_blocks"], blocks, "{report}");
    assert_eq!(report["max_tokens_in_flight"], blocks * BLOCK);
    assert_eq!(report["fits"], blocks > 0);
    let shortfall = (weights + kv * BLOCK).saturating_sub(usable);
    assert_eq!(report["shortfall_bytes_per_rank"], shortfall);
}

#[test]
fn the_committed_configs_have_the_published_shapes() {
    let cases = [
        ("InternVL3_5-8B", &QWEN3_8B, 1024, 24),
        ("InternVL3_5-38B", &QWEN3_32B, 3200, 45),
        ("InternVL3_5-241B-A28B", &QWEN3_235B, 3200, 45),
    ];
    for (name, shape, vit_hidden, vit_layers) in cases {
        let dir = model(name);
        let c = LanguageConfig::from_dir(&dir).unwrap();
        let got = [
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size,
        ]
        .map(|n| n as u64);
        let expect = [
            shape.layers,
            shape.hidden,
            shape.heads,
            shape.kv_heads,
            HEAD_DIM,
            shape.intermediate,
            VOCAB,
        ];
        assert_eq!(got, expect, "{name}");
        assert!(!c.tie_word_embeddings, "{name}");
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.max_position_embeddings, 40_960);
        assert_eq!(c.eos_token_ids, [151_645]);
        match shape.experts {
            Some((experts, width)) => {
                let m = c.moe.as_ref().unwrap();
                assert_eq!(
                    (m.num_experts as u64, m.moe_intermediate_size as u64),
                    (experts, width)
                );
                assert_eq!(m.experts_per_token, 8);
                assert!(m.norm_topk_prob);
                assert_eq!(m.decoder_sparse_step, 1);
                assert!(m.mlp_only_layers.is_empty());
                assert!((0..c.num_layers).all(|i| c.is_moe_layer(i)));
            }
            None => assert!(c.moe.is_none(), "{name}"),
        }
        // The vision half parses too: InternViT-300M or -6B, 256 tokens per 448 px tile.
        let v = VisionConfig::from_dir(&dir).unwrap();
        assert_eq!(
            (v.vit.hidden_size, v.vit.num_layers),
            (vit_hidden, vit_layers),
            "{name}"
        );
        assert_eq!(v.tokens_per_tile(), 256);
        assert_eq!(v.llm_hidden_size as u64, shape.hidden);
    }
}

#[test]
fn dense_models_at_the_sizes_operators_use() {
    let report = plan("InternVL3_5-8B", 1, 80, &[]);
    check(&report, &QWEN3_8B, 1, 80, false);
    assert_eq!(report["model"], "InternVL3_5-8B");
    assert_eq!(report["experts_per_rank"], Value::Null);
    // 36 x 2 x 8 x 128 x 2 B = 144 KiB per token.
    assert_eq!(report["kv_bytes_per_token_per_rank"], 147_456);
    for tp in [2, 4] {
        check(
            &plan("InternVL3_5-38B", tp, 80, &[]),
            &QWEN3_32B,
            tp,
            80,
            false,
        );
    }
    // The 38B alone on one 80 GiB GPU: 61 GiB of weights leave a small pool.
    let alone = plan("InternVL3_5-38B", 1, 80, &[]);
    check(&alone, &QWEN3_32B, 1, 80, false);
    assert_eq!(alone["fits"], true);
}

#[test]
fn the_moe_flagship_at_tp_8_with_and_without_expert_parallelism_and_at_tp_4() {
    let ep = plan("InternVL3_5-241B-A28B", 8, 80, &["--expert-parallel"]);
    check(&ep, &QWEN3_235B, 8, 80, true);
    assert_eq!(ep["experts_per_rank"], 16);
    let tp = plan("InternVL3_5-241B-A28B", 8, 80, &[]);
    check(&tp, &QWEN3_235B, 8, 80, false);
    assert_eq!(tp["experts_per_rank"], 128);
    // Whole experts or slices of every expert: the same bytes per rank.
    assert_eq!(ep["weight_bytes_per_rank"], tp["weight_bytes_per_rank"]);
    // 94 x 2 x 1 (4 KV heads, replicated past 4 ranks) x 128 x 2 B.
    for report in [&ep, &tp] {
        assert_eq!(report["kv_bytes_per_token_per_rank"], 94 * 2 * 128 * 2);
        assert_eq!(report["kv_bytes_per_token_per_rank"], 48_128);
        assert_eq!(report["fits"], true);
    }
    // TP 4 needs 110 GiB per GPU in bf16: not on 80 GiB, yes on 140 GiB.
    let small = plan("InternVL3_5-241B-A28B", 4, 80, &[]);
    check(&small, &QWEN3_235B, 4, 80, false);
    assert_eq!(small["kv_bytes_per_token_per_rank"], 48_128);
    assert_eq!(small["fits"], false);
    assert_eq!(small["kv_blocks"], 0);
    check(
        &plan("InternVL3_5-241B-A28B", 4, 140, &[]),
        &QWEN3_235B,
        4,
        140,
        false,
    );
}

#[test]
fn the_flagship_on_one_gpu_does_not_fit_and_says_by_how_much() {
    let report = plan("InternVL3_5-241B-A28B", 1, 80, &[]);
    check(&report, &QWEN3_235B, 1, 80, false);
    assert_eq!(report["fits"], false);
    assert_eq!(report["max_tokens_in_flight"], 0);
    assert_eq!(report["kv_budget_bytes_per_rank"], 0);
    let weights = QWEN3_235B.weight_bytes(1, false);
    let shortfall = weights + QWEN3_235B.kv_bytes_per_token(1) * BLOCK - usable(80);
    assert_eq!(report["shortfall_bytes_per_rank"], shortfall);
    // The table says so too (exit 0: a planner answers).
    let out = dvd()
        .args(["bench", "plan", "--model"])
        .arg(model("InternVL3_5-241B-A28B"))
        .args(["--gpu-memory-gib", "80"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("NO: each rank lacks"), "{text}");
    assert!(text.contains(&format!("({shortfall} B)")), "{text}");
    assert!(text.contains(&format!("({weights} B)")), "{text}");
}

#[test]
fn a_directory_and_its_config_json_give_one_answer_and_the_table_has_the_numbers() {
    let args = ["--tensor-parallel-size", "2", "--gpu-memory-gib", "80"];
    let by_dir = plan("InternVL3_5-38B", 2, 80, &[]);
    let by_file = json_output(
        dvd()
            .args(["bench", "plan", "--json", "--model"])
            .arg(model("InternVL3_5-38B").join("config.json"))
            .args(args),
    );
    assert_eq!(
        by_dir["weight_bytes_per_rank"],
        by_file["weight_bytes_per_rank"]
    );
    assert_eq!(by_dir["kv_blocks"], by_file["kv_blocks"]);
    assert_eq!(by_file["model"], "InternVL3_5-38B");
    let out = dvd()
        .args(["bench", "plan", "--model"])
        .arg(model("InternVL3_5-38B"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for field in [
        "weight_bytes_per_rank",
        "kv_bytes_per_token_per_rank",
        "max_tokens_in_flight",
    ] {
        let n = by_dir[field].as_u64().unwrap();
        assert!(text.contains(&n.to_string()), "{field} {n} not in\n{text}");
    }
    assert!(text.contains("fits                   yes"), "{text}");
}

/// Runs `dvd bench plan ARGS`, expects a failure and returns its standard error.
fn refused(args: &[&str]) -> String {
    let out = dvd().args(["bench", "plan"]).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn layouts_the_shapes_do_not_allow_are_refused_with_the_numbers() {
    let m38 = model("InternVL3_5-38B");
    let m38 = m38.to_str().unwrap();
    let err = refused(&[
        "--model",
        m38,
        "--tensor-parallel-size",
        "3",
        "--gpu-memory-gib",
        "80",
    ]);
    assert!(
        err.contains("64 query heads do not split over 3 ranks"),
        "{err}"
    );
    assert!(err.contains("InternVL3_5-38B"), "{err}");

    let m8 = model("InternVL3_5-8B");
    let m8 = m8.to_str().unwrap();
    let err = refused(&["--model", m8, "--expert-parallel", "--gpu-memory-gib", "80"]);
    assert!(err.contains("needs a mixture-of-experts model"), "{err}");

    // (No rank count that divides the query heads of these three models breaks their KV heads,
    // widths or expert counts: the query heads are what operators trip on.)
    let m241 = model("InternVL3_5-241B-A28B");
    let m241 = m241.to_str().unwrap();
    let err = refused(&[
        "--model",
        m241,
        "--tensor-parallel-size",
        "6",
        "--gpu-memory-gib",
        "80",
    ]);
    assert!(
        err.contains("64 query heads do not split over 6 ranks"),
        "{err}"
    );
    let err = refused(&[
        "--model",
        m241,
        "--tensor-parallel-size",
        "0",
        "--gpu-memory-gib",
        "80",
    ]);
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn the_memory_mode_and_the_throughput_mode_do_not_mix() {
    let m8 = model("InternVL3_5-8B");
    let m8 = m8.to_str().unwrap();
    let err = refused(&[
        "--model",
        m8,
        "--gpu-memory-gib",
        "80",
        "--profile",
        "p.json",
    ]);
    assert!(
        err.contains("--profile") && err.contains("--model"),
        "{err}"
    );
    let err = refused(&["--model", m8, "--gpu-memory-gib", "80", "--gpus", "8"]);
    assert!(err.contains("--gpus"), "{err}");
    // Memory-mode options need --model; --model needs a GPU size.
    let err = refused(&["--profile", "p.json", "--tensor-parallel-size", "2"]);
    assert!(err.contains("--model"), "{err}");
    let err = refused(&["--model", m8]);
    assert!(err.contains("--gpu-memory-gib"), "{err}");
    // Neither mode.
    let err = refused(&[]);
    assert!(err.contains("--profile"), "{err}");
    // A utilization outside (0, 1] and a zero block size are refused by value.
    let err = refused(&[
        "--model",
        m8,
        "--gpu-memory-gib",
        "80",
        "--gpu-memory-utilization",
        "1.5",
    ]);
    assert!(err.contains("--gpu-memory-utilization"), "{err}");
    let err = refused(&["--model", m8, "--gpu-memory-gib", "80", "--block-size", "0"]);
    assert!(err.contains("--block-size"), "{err}");
}
