#![allow(clippy::unwrap_used)]
//! The paged KV cache gives the same results as the contiguous one, shares a fixed pool, and
//! refuses (without taking anything) when the pool is full.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_language_server::engine::kv::{KvError, KvPool, KvPoolConfig, PagedSequence};
use dvd_language_server::model::{
    LanguageModel, LoadOptions, SequenceCache, SequenceStep, argmax_rows,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(name)
}

fn text_ids(name: &str) -> Vec<u32> {
    let t = Checkpoint::open_file(&fixture(name).join("reference.safetensors"))
        .unwrap()
        .load("text_ids", DType::I64, &Device::Cpu)
        .unwrap();
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn pool(model: &LanguageModel, block_size: usize, blocks: usize) -> Arc<KvPool> {
    let c = model.config();
    let config = KvPoolConfig {
        layers: c.num_layers,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        block_size,
        blocks,
    };
    Arc::new(KvPool::new(config, DType::F32, &Device::Cpu).unwrap())
}

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
        let model = LanguageModel::load(&fixture(name), &LoadOptions::default()).unwrap();
        let text = text_ids(name);
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
        let diff = (got_logits - want_logits)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() <= 1e-5, "{name}");
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
    let model = LanguageModel::load(&fixture("qwen3-tied-f16"), &LoadOptions::default()).unwrap();
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
    let model = LanguageModel::load(&fixture("qwen3-tied-f16"), &LoadOptions::default()).unwrap();
    let pool = pool(&model, 4, 8);
    let mut seq = PagedSequence::new(pool);
    seq.reserve(4).unwrap();
    let ids = text_ids("qwen3-tied-f16");
    let err = model
        .forward(&mut [SequenceStep {
            embeds: model.embed(&ids[..6], None, None).unwrap(),
            cache: &mut seq,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[test]
fn pool_size_follows_the_memory_budget() {
    let model =
        LanguageModel::load(&fixture("internvl-dense-hf"), &LoadOptions::default()).unwrap();
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
    let logits = model
        .forward(&mut [SequenceStep {
            embeds: model.embed(&prompt[done..], None, None).unwrap(),
            cache: seq,
        }])
        .unwrap();
    let mut tokens = vec![argmax_rows(&logits).unwrap()[0]];
    while tokens.len() < steps {
        let next = model
            .forward(&mut [SequenceStep {
                embeds: model
                    .embed(&tokens[tokens.len() - 1..], None, None)
                    .unwrap(),
                cache: seq,
            }])
            .unwrap();
        tokens.push(argmax_rows(&next).unwrap()[0]);
    }
    (logits, tokens)
}

#[test]
fn a_prefix_cache_hit_gives_identical_output() {
    use dvd_language_server::engine::kv::{ImageSpan, block_keys};
    let name = "internvl-moe-custom-bf16";
    let model = LanguageModel::load(&fixture(name), &LoadOptions::default()).unwrap();
    let prompt = text_ids(name);
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
    let diff = (got_logits - want_logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() <= 1e-5);
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
