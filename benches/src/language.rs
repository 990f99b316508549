//! Language-model benchmark: prefill and decode tokens/s of a checkpoint on the CPU, with an
//! optional batch of sequences decoding together.
//!
//! `tools/bench_language_torch.py` measures the same on the same checkpoint with transformers.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::DType;
use dvd_language_server::model::{LanguageModel, SequenceStep, argmax_rows};
use serde::Serialize;

use crate::model::load_on_cpu;
use crate::stats::{median, range};

/// What to measure.
#[derive(Debug, Clone)]
pub struct LanguageBench {
    /// Model directory or hub id.
    pub model: String,
    /// Prompt length of the prefill.
    pub prompt_tokens: usize,
    /// Greedy decode steps after the prefill.
    pub decode_tokens: usize,
    /// Sequences decoding together (each prefilled alone first).
    pub batch: usize,
    /// Timed rounds after one warm-up; medians are reported.
    pub rounds: usize,
    /// Compute dtype.
    pub dtype: DType,
}

/// `dvd bench language`'s defaults: a 512-token prefill, 32 decode steps of one sequence, 3
/// rounds, f32; `model` is empty (set it).
impl Default for LanguageBench {
    fn default() -> Self {
        Self {
            model: String::new(),
            prompt_tokens: 512,
            decode_tokens: 32,
            batch: 1,
            rounds: 3,
            dtype: DType::F32,
        }
    }
}

/// Medians (and ranges) of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageReport {
    /// Prompt tokens per prefill.
    pub prompt_tokens: usize,
    /// Prefill throughput from the median.
    pub prefill_tokens_per_s: f64,
    /// Prefill time, milliseconds (median).
    pub prefill_ms: f64,
    /// Fastest and slowest prefill.
    pub prefill_range_ms: (f64, f64),
    /// Sequences decoding together.
    pub batch: usize,
    /// Decode steps per round.
    pub decode_tokens: usize,
    /// Generated tokens per second over the whole batch, from the median.
    pub decode_tokens_per_s: f64,
    /// One decode step (all sequences), milliseconds (median).
    pub decode_ms_per_step: f64,
    /// Fastest and slowest round's mean step.
    pub decode_range_ms: (f64, f64),
    /// Compute dtype.
    pub dtype: String,
}

/// The benchmark's prompt: `(i * 7919 + 13) mod vocab`, the same ids as the PyTorch script.
pub fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

impl LanguageBench {
    /// Runs one warm-up round and `rounds` timed rounds.
    pub fn run(&self) -> Result<LanguageReport> {
        if self.rounds == 0 || self.batch == 0 || self.prompt_tokens == 0 {
            bail!("rounds, batch and prompt tokens must be at least 1");
        }
        let (_, model) = load_on_cpu(&self.model, self.dtype, LanguageModel::load)?;
        let ids = prompt_ids(self.prompt_tokens, model.config().vocab_size);
        let mut prefill_ms = Vec::new();
        let mut step_ms = Vec::new();
        for round in 0..=self.rounds {
            let mut caches: Vec<_> = (0..self.batch).map(|_| model.new_cache()).collect();
            let mut next = Vec::with_capacity(self.batch);
            for (i, cache) in caches.iter_mut().enumerate() {
                let embeds = model.embed(&ids, None, None)?;
                let started = Instant::now();
                let logits = model.forward(&mut [SequenceStep { embeds, cache }])?;
                let elapsed = started.elapsed().as_secs_f64() * 1e3;
                if round > 0 && i == 0 {
                    prefill_ms.push(elapsed);
                }
                next.push(argmax_rows(&logits)?[0]);
            }
            let started = Instant::now();
            for _ in 0..self.decode_tokens {
                let mut steps = Vec::with_capacity(self.batch);
                for (cache, &token) in caches.iter_mut().zip(&next) {
                    steps.push(SequenceStep {
                        embeds: model.embed(&[token], None, None)?,
                        cache,
                    });
                }
                next = argmax_rows(&model.forward(&mut steps)?)?;
            }
            if round > 0 && self.decode_tokens > 0 {
                step_ms.push(started.elapsed().as_secs_f64() * 1e3 / self.decode_tokens as f64);
            }
        }
        let prefill = median(&prefill_ms);
        let step = if step_ms.is_empty() {
            0.0
        } else {
            median(&step_ms)
        };
        Ok(LanguageReport {
            prompt_tokens: self.prompt_tokens,
            prefill_tokens_per_s: self.prompt_tokens as f64 / (prefill / 1e3),
            prefill_ms: prefill,
            prefill_range_ms: range(&prefill_ms),
            batch: self.batch,
            decode_tokens: self.decode_tokens,
            decode_tokens_per_s: if step > 0.0 {
                self.batch as f64 / (step / 1e3)
            } else {
                0.0
            },
            decode_ms_per_step: step,
            decode_range_ms: if step_ms.is_empty() {
                (0.0, 0.0)
            } else {
                range(&step_ms)
            },
            dtype: format!("{:?}", self.dtype).to_lowercase(),
        })
    }
}
