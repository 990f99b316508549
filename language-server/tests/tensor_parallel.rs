//! Tensor and expert parallelism on the CPU: every split the fixtures' head counts allow (1, 2
//! and 4 ranks, with and without `--expert-parallel`) gives one rank's greedy tokens and logits
//! within 1e-5 relative (max abs difference over max abs logit), through the model and through
//! the engine (mixed prefill/decode batches, features tile by tile, a prefix-cache hit, a
//! cancelled request); splits that cannot work are refused before any weight is read.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use dvd_language_server::engine::{
    CompleteRequest, EngineEvent, FeatureLimits, FeatureStreamRequest, FeatureTile, ImageSlot,
    PromptPiece, SchedulerConfig,
};
use dvd_language_server::generate::ImageFeatures;
use dvd_language_server::model::{LanguageModel, LoadOptions, MemoryPlan, Parallelism};
use dvd_language_server::text::Tokenizer;

use crate::common::{
    IMG_CONTEXT, collect_events, engine, fixture, greedy, greedy_tokens, ids, load_parallel,
    max_abs, max_abs_diff,
};

/// The bound on `max |logits_N - logits_1| / max |logits_1|` (the issue's). Measured on an
/// x86-64 CPU over every fixture prompt and split: 1.1e-6 at most (InternVL dense, image prompt,
/// 4 ranks): the f32 sums of the ranks' partial outputs differ only in order.
const REL: f32 = 1e-5;

/// Every fixture: InternVL dense (HF layout), InternVL MoE (GitHub layout, per-expert tensors,
/// bf16 on disk), plain Qwen3 with tied embeddings, Qwen3-MoE with fused experts, an odd
/// vocabulary (509: padded at 2 and 4 ranks), and one KV head with 6 experts (the KV head
/// replicated at 2 and 4 ranks, uneven expert shares at 4).
const FIXTURES: [&str; 6] = [
    "internvl-dense-hf",
    "internvl-moe-custom-bf16",
    "qwen3-tied-f16",
    "qwen3-moe-fused-f32",
    "qwen3-odd-vocab-f32",
    "qwen3-moe-kv1-f32",
];

/// The splits of `model`'s shapes to check: 2 and 4 ranks, and with whole experts per rank for
/// a MoE model.
fn splits(model: &LanguageModel) -> Vec<(usize, bool)> {
    let moe = model.config().moe.is_some();
    [(2, false), (4, false), (2, true), (4, true)]
        .into_iter()
        .filter(|&(_, ep)| moe || !ep)
        .collect()
}

fn relative(got: &Tensor, want: &Tensor) -> f32 {
    max_abs_diff(got, want) / max_abs(want)
}

/// Prefill logits and 8 greedy tokens of the fixture's text prompt (and of its image prompt,
/// for InternVL checkpoints) on `model`, through its contiguous cache.
fn outputs(name: &str, model: &LanguageModel) -> Vec<(Tensor, Vec<u32>)> {
    let mut prompts = vec![(ids(name, "text_ids"), None)];
    if name.starts_with("internvl") {
        let (features, _) = crate::common::image_features(name);
        prompts.push((ids(name, "image_ids"), Some(features)));
    }
    prompts
        .into_iter()
        .map(|(prompt, features)| {
            let embeds = model
                .embed(&prompt, Some(IMG_CONTEXT), features.as_ref())
                .unwrap();
            greedy_tokens(model, embeds, &mut model.new_cache(), 8)
        })
        .collect()
}

/// What the planner says from the config alone (`dvd bench plan --model`) is what the ranks
/// of `model` hold (f32: 4 bytes an element).
fn planned_is_held(name: &str, model: &LanguageModel) {
    let plan = MemoryPlan::new(model.config(), model.partition(), 4);
    assert_eq!(
        plan.weight_bytes_per_rank,
        model.weight_bytes_per_rank(),
        "{name} over {:?}",
        model.partition()
    );
}

#[test]
fn every_split_gives_one_ranks_tokens_and_logits() {
    for name in FIXTURES {
        let one = load_parallel(name, 1, false);
        planned_is_held(name, &one);
        let want = outputs(name, &one);
        for (ranks, expert_parallel) in splits(&one) {
            let model = load_parallel(name, ranks, expert_parallel);
            assert_eq!(model.partition().ranks(), ranks);
            planned_is_held(name, &model);
            for (i, ((logits, tokens), (want_logits, want_tokens))) in
                outputs(name, &model).iter().zip(&want).enumerate()
            {
                let split = format!(
                    "{name} prompt {i} at {ranks} ranks (expert parallel: {expert_parallel})"
                );
                assert_eq!(tokens, want_tokens, "{split}");
                let rel = relative(logits, want_logits);
                assert!(rel <= REL, "{split}: relative difference {rel:e}");
            }
        }
    }
}

#[test]
fn ranks_hold_only_their_share_of_the_weights() {
    let one = load_parallel("qwen3-odd-vocab-f32", 1, false);
    let four = load_parallel("qwen3-odd-vocab-f32", 4, false);
    // Norms are replicated; each rank holds one of the two KV heads (half of k and v); the
    // rest splits four ways, the vocabulary of 509 padded to 512.
    let c = one.config();
    let norms = (c.num_layers * (2 * c.hidden_size + 2 * c.head_dim) + c.hidden_size) * 4;
    let kv = c.num_layers * 2 * (2 * c.head_dim) * c.hidden_size * 4;
    let total = one.weight_bytes_per_rank() as usize;
    let padding = 2 * (512 - 509) * c.hidden_size * 4;
    assert_eq!(
        four.weight_bytes_per_rank() as usize,
        (total - norms - kv + padding) / 4 + norms + kv / 2
    );
    let moe_one = load_parallel("qwen3-moe-kv1-f32", 1, false);
    let moe_ep = load_parallel("qwen3-moe-kv1-f32", 4, true);
    assert!(moe_ep.weight_bytes_per_rank() < moe_one.weight_bytes_per_rank() / 2);
}

#[test]
fn splits_that_cannot_work_are_refused_with_the_numbers() {
    let refuse = |name: &str, ranks: usize, expert_parallel: bool| {
        let parallelism = Parallelism {
            tensor_parallel_size: ranks,
            expert_parallel,
        };
        LanguageModel::load_parallel(&fixture(name), &LoadOptions::default(), parallelism, &[])
            .unwrap_err()
            .to_string()
    };
    let message = refuse("internvl-dense-hf", 3, false);
    assert!(
        message.contains("4 query heads") && message.contains("3 ranks"),
        "{message}"
    );
    let message = refuse("internvl-dense-hf", 8, false);
    assert!(
        message.contains("4 query heads") && message.contains("8 ranks"),
        "{message}"
    );
    let message = refuse("internvl-dense-hf", 2, true);
    assert!(message.contains("--expert-parallel"), "{message}");
    let message = refuse("qwen3-moe-kv1-f32", 0, false);
    assert!(message.contains("at least 1"), "{message}");
    // Two ranks given one device list of three.
    let parallelism = Parallelism {
        tensor_parallel_size: 2,
        expert_parallel: false,
    };
    let message = LanguageModel::load_parallel(
        &fixture("internvl-dense-hf"),
        &LoadOptions::default(),
        parallelism,
        &[Device::Cpu, Device::Cpu, Device::Cpu],
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("3 devices") && message.contains("2"),
        "{message}"
    );
}

/// Deterministic stand-in features `[tokens, hidden]` (the engine does not care where they come
/// from).
fn features(tokens: usize, hidden: usize) -> Tensor {
    let values: Vec<f32> = (0..tokens * hidden)
        .map(|i| ((i as f32) * 0.37).sin() * 0.5)
        .collect();
    Tensor::from_vec(values, (tokens, hidden), &Device::Cpu).unwrap()
}

/// What the engine made of the scenario: each request's tokens and the second run's cached
/// prompt tokens.
#[derive(Debug, PartialEq)]
struct Served {
    tokens: HashMap<u64, Vec<u32>>,
    cached_on_repeat: usize,
}

/// A busy engine over `model`: two text prompts and an image prompt given whole, a prompt whose
/// three tiles arrive one by one while the others run, a request cancelled after its first
/// token, 24 tokens a step (prefill chunks beside decodes); then the first prompt again, which
/// must hit the prefix cache.
fn serve(model: LanguageModel, tokenizer: &Tokenizer, text: &[u32]) -> Served {
    const TILE: usize = 4;
    let model = std::sync::Arc::new(model);
    let hidden = model.config().hidden_size;
    let config = SchedulerConfig {
        max_step_tokens: 24,
        feature_limits: FeatureLimits {
            max_tokens_per_tile: TILE,
        },
        ..SchedulerConfig::default()
    };
    let (mut scheduler, pool) = engine(&model, tokenizer, 128, config);
    let mut image_prompt = text[..10].to_vec();
    image_prompt.extend(std::iter::repeat_n(IMG_CONTEXT, 2 * TILE));
    image_prompt.extend_from_slice(&text[10..20]);
    let complete = [
        (0, text.to_vec(), None),
        (1, text[..20].to_vec(), None),
        (
            2,
            image_prompt,
            Some(ImageFeatures {
                token_id: IMG_CONTEXT,
                features: features(2 * TILE, hidden),
            }),
        ),
        (3, text[5..30].to_vec(), None),
    ];
    for (id, prompt_ids, images) in complete {
        scheduler
            .add(CompleteRequest {
                id,
                prompt_ids,
                images,
                image_spans: Vec::new(),
                params: greedy(6),
            })
            .unwrap();
    }
    scheduler
        .add_feature_stream(FeatureStreamRequest {
            id: 4,
            pieces: vec![
                PromptPiece::Text(text[..12].to_vec()),
                PromptPiece::Image(ImageSlot {
                    content_hash: None,
                    max_tiles: 3,
                }),
                PromptPiece::Text(text[12..16].to_vec()),
            ],
            params: greedy(6),
            span: tracing::Span::none(),
        })
        .unwrap();
    let tile_features = features(3 * TILE, hidden);
    let mut tiles: Vec<FeatureTile> = (0..3)
        .map(|i| FeatureTile {
            image_index: 0,
            tile_index: i,
            tile_count: 3,
            features: tile_features.narrow(0, i * TILE, TILE).unwrap(),
            image_digest: None,
        })
        .collect();
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut ended = Vec::new();
    let mut steps = 0;
    while !scheduler.is_idle() {
        collect_events(scheduler.step().unwrap(), &mut tokens, &mut ended);
        steps += 1;
        if steps % 2 == 0 && !tiles.is_empty() {
            ended.extend(
                scheduler
                    .push_features(4, tiles.remove(0))
                    .unwrap_or_default(),
            );
        }
        if tokens.get(&3).is_some_and(|t| !t.is_empty()) && scheduler.cancel(3) {
            ended.push(EngineEvent::Cancelled { id: 3 });
        }
        assert!(steps < 1_000, "the engine does not make progress");
    }
    assert!(
        ended
            .iter()
            .any(|e| matches!(e, EngineEvent::Cancelled { id: 3 }))
    );
    assert_eq!(
        tokens[&3].len(),
        1,
        "request 3 was cancelled after its first token"
    );
    scheduler
        .add(CompleteRequest {
            id: 9,
            prompt_ids: text.to_vec(),
            images: None,
            image_spans: Vec::new(),
            params: greedy(6),
        })
        .unwrap();
    let mut finished = Vec::new();
    while !scheduler.is_idle() {
        collect_events(scheduler.step().unwrap(), &mut tokens, &mut finished);
    }
    let cached_on_repeat = finished
        .iter()
        .find_map(|e| match e {
            EngineEvent::Finished {
                id: 9,
                cached_tokens,
                ..
            } => Some(*cached_tokens),
            _ => None,
        })
        .unwrap();
    assert!(pool.state().prefix.hit_rate() > 0.0);
    Served {
        tokens,
        cached_on_repeat,
    }
}

#[test]
fn every_split_serves_one_ranks_tokens_through_the_engine() {
    for name in ["internvl-dense-hf", "qwen3-moe-kv1-f32"] {
        let tokenizer = Tokenizer::from_dir(&fixture(name)).unwrap();
        let text = ids(name, "text_ids");
        let one = load_parallel(name, 1, false);
        let cases = splits(&one);
        let want = serve(one, &tokenizer, &text);
        assert!(want.cached_on_repeat >= 16, "{want:?}");
        assert_eq!(want.tokens[&9], want.tokens[&0]);
        for (ranks, expert_parallel) in cases {
            let got = serve(
                load_parallel(name, ranks, expert_parallel),
                &tokenizer,
                &text,
            );
            assert_eq!(
                got, want,
                "{name} at {ranks} ranks (expert parallel: {expert_parallel})"
            );
        }
    }
}
