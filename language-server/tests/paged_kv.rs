#![allow(clippy::unwrap_used)]
//! The paged KV cache gives the same results as the contiguous one, shares a fixed pool, and
//! refuses (without taking anything) when the pool is full.

use candle_core::{DType, Tensor};
use dvd_language_server::engine::kv::{KvError, KvPoolConfig, PagedSequence};
use dvd_language_server::model::{LanguageModel, SequenceCache, SequenceStep, argmax_rows};

use crate::common::{greedy_tokens, ids, load, max_abs_diff, pool};

/// Bound on the logits' largest difference between a paged cache and the contiguous one, or a
/// recomputed prompt (the same arithmetic on the same values, gathered or chunked differently).
/// Measured on an x86-64 CPU: 0 for the paged cache (both fixtures), 4.8e-7 after a prefix cache
/// hit; the bound is three times the largest.
const PAGED_LOGITS_TOLERANCE: f32 = 1.5e-6;

/// Prefill + `steps` greedy tokens for each prompt, all sequences stepping together.
fn run_batch(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    caches: &mut [Box<dyn SequenceCache>],
    steps: usize,
) -> (Tensor, Vec<Vec<u32>>) {
    let mut batch: Vec<SequenceStep> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, p)| SequenceStep {
            embeds: model.embed(p, None, None).unwrap(),
            cache: cache.as_mut(),
        })
        .collect();
    let first = model.forward(&mut batch).unwrap();
    drop(batch);
    let mut tokens: Vec<Vec<u32>> = argmax_rows(&first)
        .unwrap()
        .into_iter()
        .map(|t| vec![t])
        .collect();
    for _ in 1..steps {
        let mut batch: Vec<SequenceStep> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, t)| SequenceStep {
                embeds: model.embed(&t[t.len() - 1..], None, None).unwrap(),
                cache: cache.as_mut(),
            })
            .collect();
        let next = argmax_rows(&model.forward(&mut batch).unwrap()).unwrap();
        for (t, n) in tokens.iter_mut().zip(next) {
            t.push(n);
        }
    }
    (first, tokens)
}

#[test]
fn paged_cache_equals_contiguous_cache() {
    for name in ["internvl-moe-custom-bf16", "internvl-dense-hf"] {
        let model = load(name);
        let text = ids(name, "text_ids");
        // Lengths that end mid-block and exactly on a block boundary (block size 16).
        let prompts = vec![text.clone(), text[..32].to_vec(), text[..21].to_vec()];
        let mut contiguous: Vec<Box<dyn SequenceCache>> = (0..3)
            .map(|_| Box::new(model.new_cache()) as Box<dyn SequenceCache>)
            .collect();
        let (want_logits, want) = run_batch(&model, &prompts, &mut contiguous, 12);

        let pool = pool(&model, 16, 64);
        let mut paged: Vec<Box<dyn SequenceCache>> = Vec::new();
        for p in &prompts {
            // Room for the prompt and 12 tokens, reserved up front as the scheduler will.
            let mut s = PagedSequence::new(pool.clone());
            s.reserve(p.len() + 12).unwrap();
            paged.push(Box::new(s));
        }
        let (got_logits, got) = run_batch(&model, &prompts, &mut paged, 12);
        assert_eq!(got, want, "{name}");
        let diff = max_abs_diff(&got_logits, &want_logits);
        assert!(
            diff <= PAGED_LOGITS_TOLERANCE,
            "{name}: logits differ by {diff}"
        );
        let used = pool.total_blocks() - pool.free_blocks();
        assert!(used > 0);
        drop(paged);
        assert_eq!(
            pool.free_blocks(),
            pool.total_blocks(),
            "{name}: blocks returned on drop"
        );
    }
}

#[test]
fn a_full_pool_refuses_without_taking_blocks_and_frees_on_drop() {
    let model = load("qwen3-tied-f16");
    let pool = pool(&model, 8, 5);
    let mut a = PagedSequence::new(pool.clone());
    a.reserve(30).unwrap(); // 4 blocks
    assert_eq!(pool.free_blocks(), 1);
    let mut b = PagedSequence::new(pool.clone());
    assert_eq!(
        b.reserve(9),
        Err(KvError::OutOfBlocks { needed: 2, free: 1 })
    );
    assert_eq!(pool.free_blocks(), 1, "a refused reservation takes nothing");
    assert!(matches!(
        b.reserve(41),
        Err(KvError::TooLong {
            needed: 6,
            total: 5,
            ..
        })
    ));
    drop(a);
    b.reserve(9).unwrap();
    assert_eq!(b.blocks().len(), 2);
    // 9 positions took 2 blocks of 8: up to 16 fit, the 17th needs a third block.
    assert_eq!(b.blocks_needed(16), 0);
    assert_eq!(b.blocks_needed(17), 1);
}

#[test]
fn writing_past_the_reservation_is_an_error() {
    let model = load("qwen3-tied-f16");
    let pool = pool(&model, 4, 8);
    let mut seq = PagedSequence::new(pool);
    seq.reserve(4).unwrap();
    let prompt = ids("qwen3-tied-f16", "text_ids");
    let err = model
        .forward(&mut [SequenceStep {
            embeds: model.embed(&prompt[..6], None, None).unwrap(),
            cache: &mut seq,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[test]
fn pool_size_follows_the_memory_budget() {
    let model = load("internvl-dense-hf");
    // 2 (k, v) x 3 layers x 2 kv heads x 16 positions x 32 dims x 4 bytes.
    assert_eq!(
        KvPoolConfig::bytes_per_block(model.config(), 16, DType::F32),
        24_576
    );
    let config = KvPoolConfig::from_budget(model.config(), 16, 1 << 20, DType::F32);
    assert_eq!(config.blocks, (1 << 20) / 24_576);
    assert_eq!(
        KvPoolConfig::from_budget(model.config(), 16, 1 << 20, DType::BF16).blocks,
        (1 << 20) / 12_288
    );
}

/// Greedy tokens and prefill logits of `prompt[seq.len()..]` on `seq`.
fn continue_on(
    model: &LanguageModel,
    seq: &mut PagedSequence,
    prompt: &[u32],
    steps: usize,
) -> (Tensor, Vec<u32>) {
    let done = seq.len();
    seq.reserve(prompt.len() - done + steps).unwrap();
    let embeds = model.embed(&prompt[done..], None, None).unwrap();
    greedy_tokens(model, embeds, seq, steps)
}

#[test]
fn a_prefix_cache_hit_gives_identical_output() {
    use dvd_language_server::engine::kv::{ImageSpan, block_keys};
    let name = "internvl-moe-custom-bf16";
    let model = load(name);
    let prompt = ids(name, "text_ids");
    let pool = pool(&model, 16, 40);
    // Keys of the full blocks before the last prompt token.
    let keys = block_keys(&prompt[..prompt.len() - 1], &[], 16);
    assert!(keys.len() >= 2);

    let mut first = PagedSequence::new(pool.clone());
    let (want_logits, want) = continue_on(&model, &mut first, &prompt, 8);
    first.register_prefix(&keys);
    drop(first);
    assert_eq!(pool.state().prefix.len(), keys.len());

    let mut second = PagedSequence::from_prefix(pool.clone(), &keys);
    assert_eq!(second.len(), keys.len() * 16, "whole cached prefix reused");
    let (got_logits, got) = continue_on(&model, &mut second, &prompt, 8);
    assert_eq!(got, want);
    let diff = max_abs_diff(&got_logits, &want_logits);
    assert!(diff <= PAGED_LOGITS_TOLERANCE, "logits differ by {diff}");
    assert!(pool.state().prefix.hit_rate() > 0.0);

    // The same ids with an image of different content in the first block share nothing.
    let other = block_keys(
        &prompt[..prompt.len() - 1],
        &[ImageSpan {
            start: 2,
            len: 4,
            content_hash: [7; 32],
        }],
        16,
    );
    assert_eq!(PagedSequence::from_prefix(pool.clone(), &other).len(), 0);
    drop(second);

    // Under memory pressure cached blocks nobody uses are evicted rather than failing.
    let mut big = PagedSequence::new(pool.clone());
    big.reserve(40 * 16).unwrap();
    assert_eq!(pool.state().prefix.len(), 0);
    assert_eq!(pool.free_blocks(), 0);
}
