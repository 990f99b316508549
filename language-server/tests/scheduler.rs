#![allow(clippy::unwrap_used)]
//! Continuous batching: concurrent requests give the tokens each gives alone, chunked prefill
//! equals whole prefill, a full cache queues instead of failing, cancel frees blocks at once,
//! and impossible requests are refused clearly.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dvd_language_server::engine::kv::KvPool;
use dvd_language_server::engine::{
    CompleteRequest, EngineError, EngineEvent, Scheduler, SchedulerConfig,
};
use dvd_language_server::generate::{ImageFeatures, generate};
use dvd_language_server::model::LanguageModel;
use dvd_language_server::sampling::StopReason;
use dvd_language_server::text::Tokenizer;

use crate::common::{
    IMG_CONTEXT, collect_events, greedy, ids, image_features, model_and_tokenizer,
};

struct Setup {
    model: Arc<LanguageModel>,
    tokenizer: Tokenizer,
    requests: Vec<CompleteRequest>,
}

fn setup(name: &str, max_new_tokens: usize) -> Setup {
    let (model, tokenizer) = model_and_tokenizer(name);
    let text = ids(name, "text_ids");
    let requests = vec![
        (text.clone(), None),
        (
            ids(name, "image_ids"),
            Some(ImageFeatures {
                token_id: IMG_CONTEXT,
                features: image_features(name).0,
            }),
        ),
        (text[..20].to_vec(), None),
        (text[..33].to_vec(), None),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (prompt_ids, images))| CompleteRequest {
        id: i as u64,
        prompt_ids,
        images,
        image_spans: Vec::new(),
        params: greedy(max_new_tokens),
    })
    .collect();
    Setup {
        model,
        tokenizer,
        requests,
    }
}

/// Tokens of each request run alone through the single-sequence path.
fn alone(s: &Setup) -> HashMap<u64, Vec<u32>> {
    s.requests
        .iter()
        .map(|r| {
            let out = generate(
                &s.model,
                &s.tokenizer,
                &r.prompt_ids,
                r.images.as_ref().map(ImageFeatures::as_input),
                &r.params,
                &[],
                &mut |_| {},
            )
            .unwrap();
            (r.id, out.token_ids)
        })
        .collect()
}

/// Steps until idle; returns each request's tokens, finish events and the most requests ever
/// waiting at once.
fn run(scheduler: &mut Scheduler) -> (HashMap<u64, Vec<u32>>, Vec<EngineEvent>, usize) {
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut finished = Vec::new();
    let mut max_waiting = 0;
    let mut steps = 0;
    while !scheduler.is_idle() {
        max_waiting = max_waiting.max(scheduler.stats().waiting);
        collect_events(scheduler.step().unwrap(), &mut tokens, &mut finished);
        steps += 1;
        assert!(steps < 10_000, "engine does not make progress");
    }
    (tokens, finished, max_waiting)
}

fn engine(s: &Setup, blocks: usize, config: SchedulerConfig) -> (Scheduler, Arc<KvPool>) {
    crate::common::engine(&s.model, &s.tokenizer, blocks, config)
}

/// The default settings with at most `max_step_tokens` tokens a step.
fn step_budget(max_step_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_step_tokens,
        ..SchedulerConfig::default()
    }
}

fn add_all(scheduler: &mut Scheduler, requests: &[CompleteRequest]) {
    for r in requests {
        scheduler.add(r.clone()).unwrap();
    }
}

#[test]
fn concurrent_requests_give_the_tokens_each_gives_alone() {
    for name in ["internvl-dense-hf", "internvl-moe-custom-bf16"] {
        let s = setup(name, 10);
        let want = alone(&s);
        let (mut scheduler, pool) = engine(&s, 128, SchedulerConfig::default());
        add_all(&mut scheduler, &s.requests);
        let (got, finished, _) = run(&mut scheduler);
        assert_eq!(got, want, "{name}");
        assert_eq!(finished.len(), 4);
        assert!(finished.iter().all(|e| matches!(
            e,
            EngineEvent::Finished {
                reason: StopReason::MaxTokens,
                completion_tokens: 10,
                ..
            }
        )));
        // Only the prefix cache still holds blocks.
        let stats = scheduler.stats();
        assert_eq!(stats.blocks_used, pool.state().prefix.len(), "{name}");
    }
}

#[test]
fn chunked_prefill_gives_the_same_tokens() {
    let s = setup("internvl-moe-custom-bf16", 6);
    let want = alone(&s);
    // 7 tokens per step: every prompt is prefilled in many chunks, interleaved with decodes.
    let (mut scheduler, _) = engine(&s, 128, step_budget(7));
    add_all(&mut scheduler, &s.requests);
    let (got, _, _) = run(&mut scheduler);
    assert_eq!(got, want);
}

#[test]
fn a_full_cache_queues_requests_instead_of_failing() {
    let s = setup("internvl-dense-hf", 8);
    let want = alone(&s);
    // The longest request needs ceil((201 + 8) / 16) = 14 blocks: room for one big request at
    // a time.
    let (mut scheduler, _) = engine(&s, 15, SchedulerConfig::default());
    add_all(&mut scheduler, &s.requests);
    let (got, finished, max_waiting) = run(&mut scheduler);
    assert!(
        max_waiting >= 2,
        "requests should have waited ({max_waiting})"
    );
    assert_eq!(finished.len(), 4);
    assert_eq!(got, want);
}

#[test]
fn cancel_frees_blocks_at_once() {
    let s = setup("internvl-dense-hf", 50);
    let (mut scheduler, pool) = engine(&s, 64, step_budget(16));
    scheduler.add(s.requests[0].clone()).unwrap();
    scheduler.step().unwrap();
    let held = scheduler.stats().blocks_used;
    assert!(held > 0);
    assert!(scheduler.cancel(0));
    assert_eq!(scheduler.stats().blocks_used, pool.state().prefix.len());
    assert_eq!(
        pool.state().prefix.len(),
        0,
        "its prompt never finished, so nothing is cached"
    );
    assert!(scheduler.is_idle());
    assert!(!scheduler.cancel(0));
}

#[test]
fn a_prefix_cache_hit_serves_the_same_tokens() {
    let s = setup("internvl-dense-hf", 6);
    let want = alone(&s);
    let (mut scheduler, pool) = engine(&s, 128, SchedulerConfig::default());
    scheduler.add(s.requests[0].clone()).unwrap();
    run(&mut scheduler);
    let mut again = s.requests[0].clone();
    again.id = 9;
    scheduler.add(again).unwrap();
    let (got, finished, _) = run(&mut scheduler);
    assert_eq!(got[&9], want[&0]);
    let EngineEvent::Finished {
        cached_tokens,
        prompt_tokens,
        ..
    } = &finished[0]
    else {
        panic!("{finished:?}");
    };
    assert_eq!(*cached_tokens, (prompt_tokens - 1) / 16 * 16);
    assert!(pool.state().prefix.hit_rate() > 0.0);
}

#[test]
fn impossible_requests_are_refused_clearly() {
    let s = setup("internvl-dense-hf", 8);
    let (mut scheduler, _) = engine(&s, 8, SchedulerConfig::default());
    let mut long = s.requests[0].clone();
    long.prompt_ids = vec![5; 5000];
    let err = scheduler.add(long).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    // Longer than the whole pool (8 blocks of 16).
    let err = scheduler.add(s.requests[0].clone()).unwrap_err();
    assert!(
        matches!(&err, EngineError::Rejected { message, .. } if message.contains("KV blocks")),
        "{err}"
    );
    let mut bad = s.requests[2].clone();
    bad.params.temperature = -1.0;
    assert!(scheduler.add(bad).is_err());
    // Features that do not match the prompt are refused with that request only.
    let mut wrong = s.requests[2].clone();
    wrong.images = Some(ImageFeatures {
        token_id: IMG_CONTEXT,
        features: Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap(),
    });
    wrong.id = 7;
    let err = scheduler.add(wrong).unwrap_err();
    assert!(err.to_string().contains("image features"), "{err}");
    scheduler.add(s.requests[3].clone()).unwrap();
    let (got, finished, _) = run(&mut scheduler);
    assert_eq!(finished.len(), 1);
    assert_eq!(got[&3].len(), 8);
    assert_eq!(scheduler.stats().running, 0);
}

#[test]
fn a_short_prompt_behind_long_ones_prefills_first() {
    let s = setup("internvl-moe-custom-bf16", 4);
    let want = alone(&s);
    // A 16-token budget: the long prompts (requests 0 and 1) take several steps each; the
    // short one added last (request 2, 20 tokens) must not wait for them.
    let (mut scheduler, _) = engine(&s, 128, step_budget(16));
    for i in [0usize, 1, 2] {
        scheduler.add(s.requests[i].clone()).unwrap();
    }
    let (first_token_step, tokens) = first_token_steps(&mut scheduler);
    assert!(
        first_token_step[&2] < first_token_step[&0] && first_token_step[&2] < first_token_step[&1],
        "first tokens at steps {first_token_step:?}"
    );
    for id in 0..3u64 {
        assert_eq!(tokens[&id], want[&id], "request {id}");
    }
}

#[test]
fn a_short_request_passes_a_large_one_waiting_for_blocks() {
    let mut s = setup("internvl-dense-hf", 4);
    // A short request (8 prompt + 4 new tokens: one block) behind the two long ones.
    let mut short = s.requests[2].clone();
    short.id = 9;
    short.prompt_ids.truncate(8);
    s.requests = vec![s.requests[0].clone(), s.requests[1].clone(), short];
    let want = alone(&s);
    // 20 blocks: one long request at a time; 20 * 16 / 16 = 20 positions count as small.
    let (mut scheduler, _) = engine(&s, 20, SchedulerConfig::default());
    add_all(&mut scheduler, &s.requests);
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut first = Vec::new();
    let mut steps = 0;
    while !scheduler.is_idle() {
        steps += 1;
        for event in scheduler.step().unwrap() {
            if let EngineEvent::Token { id, token, .. } = event {
                if !tokens.contains_key(&id) {
                    first.push(id);
                }
                tokens.entry(id).or_default().push(token);
            }
        }
        if steps == 1 {
            // The second long request waits; the short one behind it runs.
            assert_eq!(scheduler.stats().waiting, 1);
        }
        assert!(steps < 10_000, "engine does not make progress");
    }
    // The short request answers before the long one it passed.
    let pos = |id: u64| first.iter().position(|&i| i == id).unwrap();
    assert!(pos(9) < pos(1), "first tokens in order {first:?}");
    assert_eq!(tokens, want);
}

/// Steps until idle; returns the step (from 1) of each request's first token and its tokens.
fn first_token_steps(scheduler: &mut Scheduler) -> (HashMap<u64, usize>, HashMap<u64, Vec<u32>>) {
    let mut first = HashMap::new();
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut steps = 0;
    while !scheduler.is_idle() {
        steps += 1;
        for event in scheduler.step().unwrap() {
            if let EngineEvent::Token { id, token, .. } = event {
                first.entry(id).or_insert(steps);
                tokens.entry(id).or_default().push(token);
            }
        }
        assert!(steps < 10_000, "engine does not make progress");
    }
    (first, tokens)
}

#[test]
fn long_prompts_share_a_capped_budget_and_short_ones_go_whole() {
    let s = setup("internvl-moe-custom-bf16", 4);
    let want = alone(&s);
    let long_tokens: usize = [0, 1].map(|i| s.requests[i].prompt_ids.len()).iter().sum();
    let total: usize = s.requests.iter().map(|r| r.prompt_ids.len()).sum();
    assert!(
        total <= 512 && long_tokens > 8 * 24,
        "fixture shapes changed"
    );
    let start = |long_prefill_tokens| {
        let (mut scheduler, _) = engine(
            &s,
            128,
            SchedulerConfig {
                max_step_tokens: 512,
                long_prefill_tokens,
                ..SchedulerConfig::default()
            },
        );
        add_all(&mut scheduler, &s.requests);
        first_token_steps(&mut scheduler)
    };
    // Without a cap every prompt fits the 512-token budget of the first step.
    let (first, _) = start(None);
    assert!(first.values().all(|&step| step == 1), "{first:?}");
    // With 24: the 20-token prompt goes whole in the first step; the long ones (requests 0, 1
    // and, until its last 24 tokens, 3) share 24 tokens a step, so they take many steps.
    let (first, tokens) = start(Some(24));
    assert_eq!(first[&2], 1, "{first:?}");
    let last_long = first[&0].max(first[&1]);
    // (Half the bound: the prefix cache serves request 0 the blocks requests 2 and 3 computed,
    // and each long prompt's last 24 tokens go as a short one.)
    assert!(last_long >= long_tokens / 24 / 2, "{first:?}");
    for id in 0..4u64 {
        assert_eq!(tokens[&id], want[&id], "request {id}");
    }
}

#[test]
fn a_short_prompt_runs_between_two_layers_of_a_step_in_flight() {
    for name in ["internvl-dense-hf", "internvl-moe-custom-bf16"] {
        let s = setup(name, 4);
        let want = alone(&s);
        let (mut scheduler, _) = engine(
            &s,
            128,
            SchedulerConfig {
                long_prefill_tokens: Some(24),
                ..SchedulerConfig::default()
            },
        );
        let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut collect = |events: Vec<EngineEvent>| {
            for event in events {
                if let EngineEvent::Token { id, token, .. } = event {
                    tokens.entry(id).or_default().push(token);
                }
            }
        };
        // The two long prompts start a step; it pauses after its first layer.
        scheduler.add(s.requests[0].clone()).unwrap();
        scheduler.add(s.requests[1].clone()).unwrap();
        let (admitted, step) = scheduler.begin_step().unwrap();
        assert!(admitted.is_empty());
        let mut step = step.unwrap();
        scheduler.advance_step(&mut step).unwrap();
        assert!(!step.is_done(), "{name}: the fixture needs two layers");
        assert!(!scheduler.wants_first_token_step(Some(&step)));
        // A short prompt (20 tokens) arrives: it runs whole and answers while the step waits.
        scheduler.add(s.requests[2].clone()).unwrap();
        assert!(scheduler.wants_first_token_step(Some(&step)));
        let first = scheduler.first_token_step(Some(&step)).unwrap();
        assert!(
            matches!(first.as_slice(), [EngineEvent::Token { id: 2, .. }]),
            "{name}: {first:?}"
        );
        collect(first);
        assert!(!scheduler.wants_first_token_step(Some(&step)));
        // The paused step resumes where it stopped; then the engine runs to the end.
        while !step.is_done() {
            scheduler.advance_step(&mut step).unwrap();
        }
        collect(scheduler.finish_step(step).unwrap());
        scheduler.add(s.requests[3].clone()).unwrap();
        while !scheduler.is_idle() {
            collect(scheduler.step().unwrap());
        }
        assert_eq!(tokens, want, "{name}");
    }
}

#[test]
fn what_counts_as_a_short_prompt_follows_the_thresholds() {
    let s = setup("internvl-dense-hf", 4);
    // (long_prefill_tokens, short_prompt_tokens) -> whether the 20-token prompt is short
    let cases = [
        ((None, None), false),
        ((Some(24), None), true),
        ((Some(16), None), false),
        ((Some(16), Some(24)), true),
        ((None, Some(24)), true),
        ((Some(24), Some(0)), false),
        ((None, Some(19)), false),
    ];
    for ((long_prefill_tokens, short_prompt_tokens), short) in cases {
        let (mut scheduler, _) = engine(
            &s,
            128,
            SchedulerConfig {
                long_prefill_tokens,
                short_prompt_tokens,
                ..SchedulerConfig::default()
            },
        );
        scheduler.add(s.requests[2].clone()).unwrap();
        let case = format!("{long_prefill_tokens:?} {short_prompt_tokens:?}");
        assert_eq!(scheduler.wants_first_token_step(None), short, "{case}");
        let events = scheduler.first_token_step(None).unwrap();
        if short {
            assert!(
                matches!(events.as_slice(), [EngineEvent::Token { id: 2, .. }]),
                "{case}: {events:?}"
            );
        } else {
            assert!(events.is_empty(), "{case}: {events:?}");
            assert_eq!(scheduler.stats().waiting, 1, "{case}");
        }
    }
}
