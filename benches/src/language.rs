//! Language-model benchmark: prefill and decode tokens/s of a checkpoint on the CPU, with an
//! optional batch of sequences decoding together.
//!
//! `tools/bench_language_torch.py` measures the same on the same checkpoint with transformers.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use dvd_language_server::model::{LanguageModel, Parallelism, SequenceStep, argmax_rows};
use dvd_nn::parallel::{LocalGroup, RankGroup};
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
    /// Ranks the model is split over (on the CPU). Above one, the same bench also runs on one
    /// rank in the same rounds, as the baseline.
    pub parallelism: Parallelism,
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
            parallelism: Parallelism::default(),
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
    /// Ranks the model was split over.
    pub tensor_parallel_size: usize,
    /// Whether whole experts were placed per rank.
    pub expert_parallel: bool,
    /// With several ranks: the same measurements on one rank, in the same rounds.
    pub single_rank: Option<SingleRank>,
}

/// One rank's medians, measured beside a split model's.
#[derive(Debug, Clone, Serialize)]
pub struct SingleRank {
    /// Prefill time, milliseconds (median).
    pub prefill_ms: f64,
    /// One decode step, milliseconds (median).
    pub decode_ms_per_step: f64,
    /// The split model's decode step minus this one, milliseconds: what the ranks' threads
    /// and collectives cost (or save) per step.
    pub split_overhead_ms_per_step: f64,
    /// The split model's collectives per decode step (two all-reduces per layer, one for the
    /// embedding, one all-gather of the logits).
    pub collectives_per_step: usize,
    /// One all-reduce of a decode step's `[batch, hidden]` activations over the ranks alone,
    /// microseconds (median of 1000).
    pub all_reduce_us: f64,
}

/// The benchmark's prompt: `(i * 7919 + 13) mod vocab`, the same ids as the PyTorch script.
pub fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Prefill times and mean decode steps of the timed rounds, milliseconds.
#[derive(Default)]
struct Samples {
    prefill_ms: Vec<f64>,
    step_ms: Vec<f64>,
}

impl LanguageBench {
    /// Runs one warm-up round and `rounds` timed rounds (of the split model and of one rank
    /// alternately, when split).
    pub fn run(&self) -> Result<LanguageReport> {
        if self.rounds == 0 || self.batch == 0 || self.prompt_tokens == 0 {
            bail!("rounds, batch and prompt tokens must be at least 1");
        }
        let parallelism = self.parallelism;
        let (_, model) = load_on_cpu(&self.model, self.dtype, |dir, options| {
            LanguageModel::load_parallel(dir, options, parallelism, &[])
        })?;
        let single = if parallelism.tensor_parallel_size > 1 {
            Some(load_on_cpu(&self.model, self.dtype, LanguageModel::load)?.1)
        } else {
            None
        };
        let ids = prompt_ids(self.prompt_tokens, model.config().vocab_size);
        let mut split = Samples::default();
        let mut one = Samples::default();
        for round in 0..=self.rounds {
            self.round(&model, &ids, round > 0, &mut split)?;
            if let Some(single) = &single {
                self.round(single, &ids, round > 0, &mut one)?;
            }
        }
        let (prefill, step) = (median(&split.prefill_ms), median_or_zero(&split.step_ms));
        let single_rank = match single {
            Some(single) => Some(SingleRank {
                prefill_ms: median(&one.prefill_ms),
                decode_ms_per_step: median_or_zero(&one.step_ms),
                split_overhead_ms_per_step: step - median_or_zero(&one.step_ms),
                collectives_per_step: 2 * single.config().num_layers + 2,
                all_reduce_us: all_reduce_us(
                    parallelism.tensor_parallel_size,
                    self.batch,
                    single.config().hidden_size,
                    self.dtype,
                )?,
            }),
            None => None,
        };
        Ok(LanguageReport {
            prompt_tokens: self.prompt_tokens,
            prefill_tokens_per_s: self.prompt_tokens as f64 / (prefill / 1e3),
            prefill_ms: prefill,
            prefill_range_ms: range(&split.prefill_ms),
            batch: self.batch,
            decode_tokens: self.decode_tokens,
            decode_tokens_per_s: if step > 0.0 {
                self.batch as f64 / (step / 1e3)
            } else {
                0.0
            },
            decode_ms_per_step: step,
            decode_range_ms: if split.step_ms.is_empty() {
                (0.0, 0.0)
            } else {
                range(&split.step_ms)
            },
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            tensor_parallel_size: parallelism.tensor_parallel_size,
            expert_parallel: parallelism.expert_parallel,
            single_rank,
        })
    }

    /// One round on `model`: every sequence's prefill (the first one's time kept), then the
    /// batched decode steps; recorded in `samples` when `timed`.
    fn round(
        &self,
        model: &LanguageModel,
        ids: &[u32],
        timed: bool,
        samples: &mut Samples,
    ) -> Result<()> {
        let mut caches: Vec<_> = (0..self.batch).map(|_| model.new_cache()).collect();
        let mut next = Vec::with_capacity(self.batch);
        for (i, cache) in caches.iter_mut().enumerate() {
            let embeds = model.embed(ids, None, None)?;
            let started = Instant::now();
            let logits = model.forward(&mut [SequenceStep { embeds, cache }])?;
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            if timed && i == 0 {
                samples.prefill_ms.push(elapsed);
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
        if timed && self.decode_tokens > 0 {
            samples
                .step_ms
                .push(started.elapsed().as_secs_f64() * 1e3 / self.decode_tokens as f64);
        }
        Ok(())
    }
}

fn median_or_zero(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        median(values)
    }
}

/// Median microseconds of one all-reduce of `[rows, hidden]` in `dtype` over `ranks` CPU ranks
/// (1000 calls after 100 untimed).
fn all_reduce_us(ranks: usize, rows: usize, hidden: usize, dtype: DType) -> Result<f64> {
    let group = RankGroup::new(LocalGroup::communicators(ranks))?;
    let x = Tensor::ones((rows, hidden), dtype, &Device::Cpu)?;
    let mut us = Vec::with_capacity(1000);
    for call in 0..1100 {
        let started = Instant::now();
        for result in group.run(|rank| group.communicator(rank).all_reduce_sum(&x)) {
            result?;
        }
        if call >= 100 {
            us.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(median(&us))
}
