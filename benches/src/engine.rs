//! Continuous-batching engine benchmark: decode tokens/s against batch size, prefill tokens/s,
//! and continuous batching against one-at-a-time serving of the same requests, all through the
//! language server's [`Scheduler`] on the CPU (paged KV cache, chunked prefill, sampling and
//! detokenisation included, as a server runs them).
//!
//! Every request gets its own prompt (a window of [`prompt_ids`](crate::language::prompt_ids)
//! starting at a fresh offset), so the prefix cache never serves a prompt; the report's
//! `cached_tokens` checks that. The engine runs without end-of-sequence ids, so every request
//! generates exactly its `max_new_tokens` (the benchmark checkpoint has random weights). The engine detokenises every token, so the
//! model directory (or [`EngineBench::tokenizer`]) needs a `tokenizer.json` covering the model's
//! whole vocabulary: `tools/bench_tokenizer.py` writes one for the checkpoint of
//! `tools/bench_language_torch.py`.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::DType;
use dvd_language_server::engine::kv::{KvPool, KvPoolConfig};
use dvd_language_server::engine::{CompleteRequest, EngineEvent, Scheduler, SchedulerConfig};
use dvd_language_server::model::{LanguageModel, Parallelism, SequenceStep, argmax_rows};
use dvd_language_server::sampling::SamplingParams;
use dvd_language_server::text::Tokenizer;
use serde::Serialize;

use crate::model::load_on_cpu;
use crate::stats::{median, range};

/// What to measure.
#[derive(Debug, Clone)]
pub struct EngineBench {
    /// Model directory or hub id.
    pub model: String,
    /// Directory holding the `tokenizer.json` (`None`: the model's directory).
    pub tokenizer: Option<String>,
    /// Compute dtype (also the KV pool's).
    pub dtype: DType,
    /// Batch sizes of the decode sweep: that many requests queued at once (empty skips it).
    pub batches: Vec<usize>,
    /// Prompt tokens of each request in the decode sweep and in the load comparison.
    pub prompt_tokens: usize,
    /// Tokens each request generates in the decode sweep and in the load comparison.
    pub decode_tokens: usize,
    /// Prompt tokens of the prefill measurement, one request alone (0 skips it).
    pub prefill_tokens: usize,
    /// Requests of the continuous vs one-at-a-time comparison (0 skips it).
    pub requests: usize,
    /// Milliseconds between arrivals in the comparison (0: all queued at once).
    pub arrival_interval_ms: f64,
    /// The engine's per-step token budget (decode tokens + prefill chunks).
    pub max_step_tokens: usize,
    /// Token positions per KV block.
    pub block_size: usize,
    /// Batch sizes of the sweep to also run through `LanguageModel::forward` directly (the
    /// `dvd bench language` path: contiguous KV caches, no scheduler, greedy argmax, no
    /// detokenisation) right after the engine in every round, as its baseline; with any, the
    /// prefill gets the same baseline (empty skips both).
    pub baseline_batches: Vec<usize>,
    /// Timed rounds of each measurement; medians are reported. One untimed warm-up runs first.
    pub rounds: usize,
    /// Ranks the model is split over (on the CPU).
    pub parallelism: Parallelism,
}

impl EngineBench {
    /// The defaults for `model`.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            ..Self::default()
        }
    }

    /// Runs the benchmark; see [`run`].
    pub fn run(&self) -> Result<EngineReport> {
        run(self)
    }
}

/// `dvd bench engine`'s defaults: decode sweep over 1, 2, 4, 8, 16, 32 requests of 32 prompt and
/// 32 new tokens, a 512-token prefill, 16 requests queued at once for the comparison, the
/// engine's default step budget and block size, f32, 3 rounds, no baseline; `model` is empty
/// (set it, or use [`EngineBench::new`]).
impl Default for EngineBench {
    fn default() -> Self {
        Self {
            model: String::new(),
            tokenizer: None,
            dtype: DType::F32,
            batches: vec![1, 2, 4, 8, 16, 32],
            prompt_tokens: 32,
            decode_tokens: 32,
            prefill_tokens: 512,
            requests: 16,
            arrival_interval_ms: 0.0,
            max_step_tokens: SchedulerConfig::default().max_step_tokens,
            block_size: KvPoolConfig::DEFAULT_BLOCK_SIZE,
            baseline_batches: Vec::new(),
            rounds: 3,
            parallelism: Parallelism::default(),
        }
    }
}

/// Everything one run measured (medians over rounds, with ranges).
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    /// Compute dtype.
    pub dtype: String,
    /// Ranks the model was split over.
    pub tensor_parallel_size: usize,
    /// Whether whole experts were placed per rank.
    pub expert_parallel: bool,
    /// The engine's per-step token budget.
    pub max_step_tokens: usize,
    /// Token positions per KV block.
    pub block_size: usize,
    /// Timed rounds per measurement.
    pub rounds: usize,
    /// Decode throughput per batch size, in the order of [`EngineBench::batches`].
    pub decode: Vec<DecodePoint>,
    /// The prefill measurement (`None` when skipped).
    pub prefill: Option<PrefillReport>,
    /// Continuous batching against one-at-a-time (`None` when skipped).
    pub load: Option<LoadComparison>,
    /// Prompt tokens the prefix cache served over the whole run (0: every prefill was computed).
    pub cached_tokens: usize,
}

/// Steady-state decode of one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct DecodePoint {
    /// Requests queued at once (and decoding together).
    pub batch: usize,
    /// Prompt tokens per request.
    pub prompt_tokens: usize,
    /// Tokens generated per request.
    pub decode_tokens: usize,
    /// Generated tokens per second over the whole batch in the steps after every prompt was
    /// prefilled (median over rounds).
    pub decode_tokens_per_s: f64,
    /// One such step (the whole batch), milliseconds (median over rounds).
    pub decode_ms_per_step: f64,
    /// Slowest and fastest round's tokens/s.
    pub decode_tokens_per_s_range: (f64, f64),
    /// `decode_tokens_per_s` over that of the sweep's smallest batch size.
    pub speedup: f64,
    /// The same batch decoding through `LanguageModel::forward` directly, tokens/s (median over
    /// rounds; `None` when the batch size is not among the baseline batches).
    pub baseline_tokens_per_s: Option<f64>,
}

/// One long prompt prefilled alone.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillReport {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Engine steps the prefill took (more than one when the prompt exceeds the step budget).
    pub steps: usize,
    /// From adding the request to its first token, milliseconds (median over rounds).
    pub prefill_ms: f64,
    /// Fastest and slowest round.
    pub prefill_range_ms: (f64, f64),
    /// Prompt tokens per second, from the median.
    pub prefill_tokens_per_s: f64,
    /// The same prompt length through `LanguageModel::forward` directly, tokens/s (from the
    /// median; `None` without baseline).
    pub baseline_tokens_per_s: Option<f64>,
}

/// The same requests served continuously batched and one at a time.
#[derive(Debug, Clone, Serialize)]
pub struct LoadComparison {
    /// Requests.
    pub requests: usize,
    /// Prompt tokens per request.
    pub prompt_tokens: usize,
    /// Tokens generated per request.
    pub decode_tokens: usize,
    /// Milliseconds between arrivals (0: all queued at once).
    pub arrival_interval_ms: f64,
    /// Every request may run at once.
    pub continuous: LoadRun,
    /// `max_running = 1`: the same engine serving one request at a time.
    pub one_at_a_time: LoadRun,
    /// Continuous over one-at-a-time generated tokens/s.
    pub throughput_ratio: f64,
    /// One-at-a-time over continuous mean time to first token.
    pub ttft_ratio: f64,
    /// One-at-a-time over continuous mean end-to-end latency.
    pub latency_ratio: f64,
}

/// One serving mode of the comparison (each value the median over rounds).
#[derive(Debug, Clone, Serialize)]
pub struct LoadRun {
    /// The engine's `max_running`.
    pub max_running: usize,
    /// From the first arrival to the last request's end, milliseconds.
    pub wall_ms: f64,
    /// Fastest and slowest round's wall time.
    pub wall_range_ms: (f64, f64),
    /// Generated tokens of all requests over the wall time.
    pub tokens_per_s: f64,
    /// Mean time from arrival to first token, milliseconds.
    pub ttft_mean_ms: f64,
    /// Median time from arrival to first token, milliseconds.
    pub ttft_median_ms: f64,
    /// Mean time from arrival to the last token, milliseconds.
    pub latency_mean_ms: f64,
    /// Median time from arrival to the last token, milliseconds.
    pub latency_median_ms: f64,
    /// Engine steps.
    pub steps: usize,
}

/// A window of [`prompt_ids`](crate::language::prompt_ids)' sequence starting at `offset`:
/// `((offset + i) * 7919 + 13) mod vocab`. Windows at different offsets (below `vocab`) differ
/// in every position, so their KV blocks never share a prefix-cache key.
pub fn request_prompt(n: usize, vocab: usize, offset: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (((offset + i) * 7919 + 13) % vocab.max(1)) as u32)
        .collect()
}

/// Loads the model and tokenizer, runs one untimed warm-up (the largest batch for a few tokens),
/// then the decode sweep, the prefill and the load comparison, `rounds` timed rounds each; the
/// forward-only baselines run right after the engine's measurement of the same round.
pub fn run(bench: &EngineBench) -> Result<EngineReport> {
    if bench.rounds == 0 || bench.block_size == 0 || bench.max_step_tokens == 0 {
        bail!("rounds, block size and step budget must be at least 1");
    }
    if (!bench.batches.is_empty() || bench.requests > 0)
        && (bench.prompt_tokens == 0 || bench.decode_tokens == 0)
    {
        bail!("prompt and decode tokens must be at least 1");
    }
    if !bench.batches.is_empty() && bench.decode_tokens < 2 {
        bail!("the decode sweep needs at least 2 decode tokens (the first comes with the prefill)");
    }
    if bench.batches.contains(&0) {
        bail!("batch sizes must be at least 1");
    }
    let parallelism = bench.parallelism;
    let (dir, model) = load_on_cpu(&bench.model, bench.dtype, |dir, options| {
        LanguageModel::load_parallel(dir, options, parallelism, &[])
    })?;
    let model = Arc::new(model);
    let tokenizer_dir = bench
        .tokenizer
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.clone());
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir).with_context(|| {
        format!(
            "loading the tokenizer of {} (for the benchmark checkpoint: \
             python tools/bench_tokenizer.py --out {})",
            tokenizer_dir.display(),
            tokenizer_dir.display()
        )
    })?;
    let vocab = model.config().vocab_size;
    if tokenizer.vocab_size() < vocab {
        bail!(
            "the tokenizer in {} has {} tokens but the model can generate {vocab}: generated ids \
             would not detokenise (tools/bench_tokenizer.py writes one that covers them)",
            tokenizer_dir.display(),
            tokenizer.vocab_size()
        );
    }
    let mut engine = Engine {
        model,
        tokenizer,
        bench,
        next_offset: 0,
        cached_tokens: 0,
    };

    // Warm-up: the largest batch of the run for a few tokens, through both paths.
    let warm_batch = bench
        .batches
        .iter()
        .copied()
        .chain([bench.requests])
        .max()
        .unwrap_or(0)
        .max(1);
    let requests = engine.requests(warm_batch, bench.prompt_tokens.max(1), 4, 0.0);
    engine.drive(requests, warm_batch)?;
    if let Some(&batch) = bench.baseline_batches.iter().max() {
        engine.forward_only(batch, bench.prompt_tokens.max(1), 4)?;
    }

    // Per batch size: engine (tokens/s, ms/step) and forward-only tokens/s per round.
    let mut rounds: Vec<Vec<(f64, f64)>> = vec![Vec::new(); bench.batches.len()];
    let mut baseline_rounds: Vec<Vec<f64>> = vec![Vec::new(); bench.batches.len()];
    for _ in 0..bench.rounds {
        for (i, &batch) in bench.batches.iter().enumerate() {
            let requests = engine.requests(batch, bench.prompt_tokens, bench.decode_tokens, 0.0);
            let trace = engine.drive(requests, batch)?;
            let (secs, tokens, steps) = trace.decode_only();
            if steps == 0 || secs <= 0.0 {
                bail!("batch {batch}: no step decoded without prefilling");
            }
            rounds[i].push((tokens as f64 / secs, secs * 1e3 / steps as f64));
            if bench.baseline_batches.contains(&batch) {
                let (_, decode_secs) =
                    engine.forward_only(batch, bench.prompt_tokens, bench.decode_tokens)?;
                baseline_rounds[i]
                    .push((batch * (bench.decode_tokens - 1)) as f64 / decode_secs.max(1e-9));
            }
        }
    }
    let smallest = bench
        .batches
        .iter()
        .zip(&rounds)
        .min_by_key(|(b, _)| **b)
        .map(|(_, r)| median(&r.iter().map(|x| x.0).collect::<Vec<_>>()));
    let decode = bench
        .batches
        .iter()
        .zip(rounds.iter().zip(&baseline_rounds))
        .map(|(&batch, (r, base))| {
            let tps: Vec<f64> = r.iter().map(|x| x.0).collect();
            let ms: Vec<f64> = r.iter().map(|x| x.1).collect();
            let tokens_per_s = median(&tps);
            DecodePoint {
                batch,
                prompt_tokens: bench.prompt_tokens,
                decode_tokens: bench.decode_tokens,
                decode_tokens_per_s: tokens_per_s,
                decode_ms_per_step: median(&ms),
                decode_tokens_per_s_range: range(&tps),
                speedup: smallest.map_or(f64::NAN, |s| tokens_per_s / s),
                baseline_tokens_per_s: (!base.is_empty()).then(|| median(base)),
            }
        })
        .collect();

    let prefill = if bench.prefill_tokens > 0 {
        let mut ms = Vec::new();
        let mut baseline_ms = Vec::new();
        let mut steps = 0;
        for _ in 0..bench.rounds {
            let requests = engine.requests(1, bench.prefill_tokens, 1, 0.0);
            let trace = engine.drive(requests, 1)?;
            let first = trace.requests[0]
                .first_token
                .context("the prefill produced no token")?;
            ms.push(first * 1e3);
            steps = trace.steps.len();
            if !bench.baseline_batches.is_empty() {
                let (prefill_secs, _) = engine.forward_only(1, bench.prefill_tokens, 1)?;
                baseline_ms.push(prefill_secs * 1e3);
            }
        }
        let prefill_ms = median(&ms);
        Some(PrefillReport {
            prompt_tokens: bench.prefill_tokens,
            steps,
            prefill_ms,
            prefill_range_ms: range(&ms),
            prefill_tokens_per_s: bench.prefill_tokens as f64 / (prefill_ms / 1e3),
            baseline_tokens_per_s: (!baseline_ms.is_empty())
                .then(|| bench.prefill_tokens as f64 / (median(&baseline_ms) / 1e3)),
        })
    } else {
        None
    };

    let load = if bench.requests > 0 {
        let n = bench.requests;
        let continuous_running = n.max(SchedulerConfig::default().max_running);
        let mut continuous = Vec::new();
        let mut sequential = Vec::new();
        for round in 0..bench.rounds {
            // Alternate which mode goes first so a drift of the machine hits both alike.
            for mode in 0..2 {
                let one_at_a_time = (round + mode) % 2 == 1;
                let requests = engine.requests(
                    n,
                    bench.prompt_tokens,
                    bench.decode_tokens,
                    bench.arrival_interval_ms,
                );
                let max_running = if one_at_a_time { 1 } else { continuous_running };
                let trace = engine.drive_with(requests, n, max_running)?;
                if one_at_a_time {
                    sequential.push(trace.summary()?);
                } else {
                    continuous.push(trace.summary()?);
                }
            }
        }
        let continuous = LoadRun::from_rounds(continuous_running, &continuous);
        let one_at_a_time = LoadRun::from_rounds(1, &sequential);
        Some(LoadComparison {
            requests: n,
            prompt_tokens: bench.prompt_tokens,
            decode_tokens: bench.decode_tokens,
            arrival_interval_ms: bench.arrival_interval_ms,
            throughput_ratio: continuous.tokens_per_s / one_at_a_time.tokens_per_s,
            ttft_ratio: one_at_a_time.ttft_mean_ms / continuous.ttft_mean_ms,
            latency_ratio: one_at_a_time.latency_mean_ms / continuous.latency_mean_ms,
            continuous,
            one_at_a_time,
        })
    } else {
        None
    };

    Ok(EngineReport {
        dtype: format!("{:?}", bench.dtype).to_lowercase(),
        tensor_parallel_size: parallelism.tensor_parallel_size,
        expert_parallel: parallelism.expert_parallel,
        max_step_tokens: bench.max_step_tokens,
        block_size: bench.block_size,
        rounds: bench.rounds,
        decode,
        prefill,
        load,
        cached_tokens: engine.cached_tokens,
    })
}

/// The model and tokenizer shared by every measurement; a fresh scheduler and pool per run.
struct Engine<'a> {
    model: Arc<LanguageModel>,
    tokenizer: Tokenizer,
    bench: &'a EngineBench,
    /// Offset of the next request's prompt window.
    next_offset: usize,
    /// Prompt tokens the prefix cache served so far.
    cached_tokens: usize,
}

/// One step: how long it took, how many tokens it produced, whether it only decoded.
struct StepRecord {
    secs: f64,
    tokens: usize,
    decode_only: bool,
}

/// One request: seconds after the run's start.
struct RequestRecord {
    arrival: f64,
    first_token: Option<f64>,
    finished: Option<f64>,
    generated: usize,
}

/// What one run of the engine did.
struct Trace {
    steps: Vec<StepRecord>,
    requests: Vec<RequestRecord>,
}

/// One round of a load run: wall ms, tokens/s, TTFT mean/median, latency mean/median, steps.
struct RoundSummary {
    wall_ms: f64,
    tokens_per_s: f64,
    ttft_mean_ms: f64,
    ttft_median_ms: f64,
    latency_mean_ms: f64,
    latency_median_ms: f64,
    steps: usize,
}

impl Engine<'_> {
    /// `n` requests of `prompt_tokens` fresh prompt tokens and `new_tokens` greedy tokens,
    /// arriving `interval_ms` apart from 0.
    fn requests(
        &mut self,
        n: usize,
        prompt_tokens: usize,
        new_tokens: usize,
        interval_ms: f64,
    ) -> Vec<(f64, CompleteRequest)> {
        let vocab = self.model.config().vocab_size;
        (0..n)
            .map(|i| {
                let offset = self.next_offset;
                self.next_offset = (self.next_offset + 1) % vocab.max(1);
                let request = CompleteRequest {
                    id: i as u64,
                    prompt_ids: request_prompt(prompt_tokens, vocab, offset),
                    images: None,
                    image_spans: Vec::new(),
                    params: SamplingParams {
                        max_new_tokens: new_tokens,
                        ..SamplingParams::greedy()
                    },
                };
                (i as f64 * interval_ms / 1e3, request)
            })
            .collect()
    }

    /// The `dvd bench language` path on the same model: `batch` fresh prompts prefilled one by
    /// one through `LanguageModel::forward` with contiguous caches, then `new_tokens - 1` greedy
    /// steps of the whole batch together (the first token comes from the prefill, as in the
    /// engine). Returns the first prefill's and the decode steps' seconds.
    fn forward_only(
        &mut self,
        batch: usize,
        prompt_tokens: usize,
        new_tokens: usize,
    ) -> Result<(f64, f64)> {
        let model = &self.model;
        let vocab = model.config().vocab_size;
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
        let mut next = Vec::with_capacity(batch);
        let mut prefill_secs = 0.0;
        for (i, cache) in caches.iter_mut().enumerate() {
            let ids = request_prompt(prompt_tokens, vocab, self.next_offset);
            self.next_offset = (self.next_offset + 1) % vocab.max(1);
            let started = Instant::now();
            let embeds = model.embed(&ids, None, None)?;
            let logits = model.forward(&mut [SequenceStep { embeds, cache }])?;
            next.push(argmax_rows(&logits)?[0]);
            if i == 0 {
                prefill_secs = started.elapsed().as_secs_f64();
            }
        }
        let started = Instant::now();
        for _ in 1..new_tokens {
            let mut steps = Vec::with_capacity(batch);
            for (cache, &token) in caches.iter_mut().zip(&next) {
                steps.push(SequenceStep {
                    embeds: model.embed(&[token], None, None)?,
                    cache,
                });
            }
            next = argmax_rows(&model.forward(&mut steps)?)?;
        }
        Ok((prefill_secs, started.elapsed().as_secs_f64()))
    }

    /// [`drive_with`](Self::drive_with) with every request allowed to run at once.
    fn drive(&mut self, requests: Vec<(f64, CompleteRequest)>, concurrent: usize) -> Result<Trace> {
        self.drive_with(requests, concurrent, concurrent)
    }

    /// Serves `requests` (ids 0.., arrival seconds ascending) on a fresh engine whose pool holds
    /// `concurrent` of them at once, stepping until all are done.
    fn drive_with(
        &mut self,
        requests: Vec<(f64, CompleteRequest)>,
        concurrent: usize,
        max_running: usize,
    ) -> Result<Trace> {
        let longest = requests
            .iter()
            .map(|(_, r)| r.prompt_ids.len() + r.params.max_new_tokens)
            .max()
            .unwrap_or(1);
        let c = self.model.config();
        let pool = KvPool::for_ranks(
            KvPoolConfig {
                layers: c.num_layers,
                kv_heads: self.model.partition().kv_heads_per_rank(),
                head_dim: c.head_dim,
                block_size: self.bench.block_size,
                blocks: concurrent.max(1) * longest.div_ceil(self.bench.block_size),
            },
            self.bench.dtype,
            &self.model.rank_devices(),
        )?;
        let mut scheduler = Scheduler::new(
            self.model.clone(),
            self.tokenizer.clone(),
            Arc::new(pool),
            Vec::new(),
            SchedulerConfig {
                max_step_tokens: self.bench.max_step_tokens,
                max_running,
                ..SchedulerConfig::default()
            },
        );
        let mut records: Vec<RequestRecord> = requests
            .iter()
            .map(|(at, _)| RequestRecord {
                arrival: *at,
                first_token: None,
                finished: None,
                generated: 0,
            })
            .collect();
        let expected: Vec<usize> = requests
            .iter()
            .map(|(_, r)| r.params.max_new_tokens)
            .collect();
        let mut pending = requests.into_iter().peekable();
        // Requests added and still without their first token.
        let mut prefilling: HashSet<u64> = HashSet::new();
        let mut steps = Vec::new();
        let mut idle_steps = 0;
        let start = Instant::now();
        loop {
            let now = start.elapsed().as_secs_f64();
            while pending.peek().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, request)) = pending.next() {
                    prefilling.insert(request.id);
                    scheduler.add(request)?;
                }
            }
            if scheduler.is_idle() {
                match pending.peek() {
                    Some((at, _)) => {
                        std::thread::sleep(Duration::from_secs_f64((at - now).max(0.0)));
                        continue;
                    }
                    None => break,
                }
            }
            let decode_only = prefilling.is_empty();
            let began = Instant::now();
            let events = scheduler.step()?;
            let ended = start.elapsed().as_secs_f64();
            let secs = began.elapsed().as_secs_f64();
            let mut tokens = 0;
            for event in events {
                match event {
                    EngineEvent::Token { id, .. } => {
                        tokens += 1;
                        let r = record(&mut records, id)?;
                        r.generated += 1;
                        if r.first_token.is_none() {
                            r.first_token = Some(ended);
                            prefilling.remove(&id);
                        }
                    }
                    EngineEvent::Finished {
                        id, cached_tokens, ..
                    } => {
                        self.cached_tokens += cached_tokens;
                        record(&mut records, id)?.finished = Some(ended);
                    }
                    EngineEvent::Failed { id, message, .. } => {
                        bail!("request {id} failed: {message}")
                    }
                    _ => {}
                }
            }
            idle_steps = if tokens == 0 { idle_steps + 1 } else { 0 };
            if idle_steps > 10_000 {
                bail!("the engine makes no progress");
            }
            steps.push(StepRecord {
                secs,
                tokens,
                decode_only,
            });
        }
        for (i, (r, want)) in records.iter().zip(&expected).enumerate() {
            if r.finished.is_none() || r.generated != *want {
                bail!(
                    "request {i} generated {} of {want} tokens (finished: {})",
                    r.generated,
                    r.finished.is_some()
                );
            }
        }
        Ok(Trace {
            steps,
            requests: records,
        })
    }
}

fn record(records: &mut [RequestRecord], id: u64) -> Result<&mut RequestRecord> {
    records
        .get_mut(id as usize)
        .with_context(|| format!("event for unknown request {id}"))
}

impl Trace {
    /// Seconds, tokens and count of the steps that ran after every prompt was prefilled.
    fn decode_only(&self) -> (f64, usize, usize) {
        self.steps
            .iter()
            .filter(|s| s.decode_only)
            .fold((0.0, 0, 0), |(secs, tokens, n), s| {
                (secs + s.secs, tokens + s.tokens, n + 1)
            })
    }

    fn summary(&self) -> Result<RoundSummary> {
        let mut ttft = Vec::new();
        let mut latency = Vec::new();
        let mut wall: f64 = 0.0;
        let mut generated = 0;
        for r in &self.requests {
            let (Some(first), Some(done)) = (r.first_token, r.finished) else {
                bail!("a request did not finish");
            };
            ttft.push((first - r.arrival) * 1e3);
            latency.push((done - r.arrival) * 1e3);
            wall = wall.max(done);
            generated += r.generated;
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        Ok(RoundSummary {
            wall_ms: wall * 1e3,
            tokens_per_s: generated as f64 / wall,
            ttft_mean_ms: mean(&ttft),
            ttft_median_ms: median(&ttft),
            latency_mean_ms: mean(&latency),
            latency_median_ms: median(&latency),
            steps: self.steps.len(),
        })
    }
}

impl LoadRun {
    fn from_rounds(max_running: usize, rounds: &[RoundSummary]) -> Self {
        let m = |f: fn(&RoundSummary) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        let walls: Vec<f64> = rounds.iter().map(|r| r.wall_ms).collect();
        Self {
            max_running,
            wall_ms: median(&walls),
            wall_range_ms: range(&walls),
            tokens_per_s: m(|r| r.tokens_per_s),
            ttft_mean_ms: m(|r| r.ttft_mean_ms),
            ttft_median_ms: m(|r| r.ttft_median_ms),
            latency_mean_ms: m(|r| r.latency_mean_ms),
            latency_median_ms: m(|r| r.latency_median_ms),
            steps: m(|r| r.steps as f64) as usize,
        }
    }
}

/// Plain-text tables of the report (what `dvd bench engine` prints without `--json`).
impl fmt::Display for EngineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "engine ({}, {} rank(s){}, step budget {} tokens, {}-position blocks; medians of {} \
             rounds)",
            self.dtype,
            self.tensor_parallel_size,
            if self.expert_parallel {
                " with whole experts"
            } else {
                ""
            },
            self.max_step_tokens,
            self.block_size,
            self.rounds
        )?;
        if let Some(first) = self.decode.first() {
            writeln!(
                f,
                "decode ({} prompt + {} new tokens per request, steps after every prefill):",
                first.prompt_tokens, first.decode_tokens
            )?;
            writeln!(
                f,
                "  batch  tokens/s  (range)          ms/step  vs smallest  forward-only tokens/s"
            )?;
            for p in &self.decode {
                let baseline = p
                    .baseline_tokens_per_s
                    .map_or_else(|| "-".to_owned(), |b| format!("{b:.1}"));
                writeln!(
                    f,
                    "  {:>5}  {:>8.1}  ({:>6.1}..{:>6.1})  {:>7.1}  {:>10.2}x  {baseline}",
                    p.batch,
                    p.decode_tokens_per_s,
                    p.decode_tokens_per_s_range.0,
                    p.decode_tokens_per_s_range.1,
                    p.decode_ms_per_step,
                    p.speedup
                )?;
            }
        }
        if let Some(p) = &self.prefill {
            let baseline = p
                .baseline_tokens_per_s
                .map_or_else(String::new, |b| format!("; forward only {b:.1} tokens/s"));
            writeln!(
                f,
                "prefill {} tokens in {} step(s): {:.1} ms ({:.1}..{:.1}) = {:.1} tokens/s{baseline}",
                p.prompt_tokens,
                p.steps,
                p.prefill_ms,
                p.prefill_range_ms.0,
                p.prefill_range_ms.1,
                p.prefill_tokens_per_s
            )?;
        }
        if let Some(l) = &self.load {
            writeln!(
                f,
                "{} requests of {} prompt + {} new tokens, {}:",
                l.requests,
                l.prompt_tokens,
                l.decode_tokens,
                if l.arrival_interval_ms > 0.0 {
                    format!("arriving every {} ms", l.arrival_interval_ms)
                } else {
                    "all queued at once".to_owned()
                }
            )?;
            writeln!(
                f,
                "  mode                 wall ms  (range)              tokens/s  TTFT mean/median ms  latency mean/median ms  steps"
            )?;
            for (name, r) in [
                ("continuous", &l.continuous),
                ("one at a time", &l.one_at_a_time),
            ] {
                writeln!(
                    f,
                    "  {name:<13} ({:>2})  {:>8.0}  ({:>8.0}..{:>8.0})  {:>8.1}  {:>8.0} / {:>8.0}    {:>8.0} / {:>8.0}      {:>5}",
                    r.max_running,
                    r.wall_ms,
                    r.wall_range_ms.0,
                    r.wall_range_ms.1,
                    r.tokens_per_s,
                    r.ttft_mean_ms,
                    r.ttft_median_ms,
                    r.latency_mean_ms,
                    r.latency_median_ms,
                    r.steps
                )?;
            }
            writeln!(
                f,
                "  continuous / one at a time: {:.2}x tokens/s, {:.2}x lower mean TTFT, {:.2}x lower mean latency",
                l.throughput_ratio, l.ttft_ratio, l.latency_ratio
            )?;
        }
        write!(
            f,
            "prompt tokens served from the prefix cache: {}",
            self.cached_tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_prompts_differ_at_every_position() {
        let a = request_prompt(64, 32000, 0);
        let b = request_prompt(64, 32000, 1);
        assert_eq!(a, crate::language::prompt_ids(64, 32000));
        assert_eq!(&a[1..], &b[..63]);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
    }
}
