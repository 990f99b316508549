//! Continuous batching: requests join and leave the running batch between steps; each step runs
//! every decoding sequence's next token plus prefill chunks of admitted prompts under a per-step
//! token budget, all in one batched forward pass. Shorter prompts prefill first; an optional
//! cap on the tokens long prompts take of a step keeps steps short while image prompts prefill,
//! so a short request that arrives waits little for the step in flight.
//!
//! Prompts may still be waiting for image features ([`FeatureStreamRequest`]): a sequence prefills
//! every position known so far (the text before the first image, then each tile as it arrives)
//! and stalls, without holding up the batch, while the next tile is on the wire.
//!
//! Memory policy (no preemption): a request is admitted only when the pool can hold its whole
//! prompt plus its new tokens, and those blocks are reserved at admission, so a running sequence
//! never runs out of cache. A prompt whose images have not arrived reserves its upper bound
//! (each image at its tile limit) and hands the surplus back once its features are complete.
//! Requests that do not fit yet wait in arrival order, except that small ones (short text
//! requests) may pass a large one that is waiting for blocks; a request that could never fit
//! (longer than the pool or the model's context) is refused at once.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kv::{KvError, KvPool, PagedSequence, PoolState};
use super::meter::ThroughputMeter;
use super::prompt::{FeatureLimits, FeatureTile, PromptPiece, StreamingPrompt};
use crate::generate::{Continuation, ImageFeatures};
use crate::model::{LanguageModel, ModelError, SequenceCache};
use crate::sampling::{SamplingParams, StopReason};
use crate::text::{ImageTokenIds, Tokenizer};

pub use super::kv::ImageSpan;
pub use step::StepInFlight;
use trace::SequenceSpans;

mod step;
mod trace;

/// A request reserving at most `1 / BACKFILL_FRACTION` of the pool may be admitted past a
/// larger one that does not fit yet.
const BACKFILL_FRACTION: usize = 16;

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most new tokens (decode tokens + prefill chunk tokens) per step.
    pub max_step_tokens: usize,
    /// A prompt with more than this many tokens left to prefill is long, and all long prompts
    /// together get at most this many tokens of a step; shorter prompts go in whole (within
    /// `max_step_tokens`). Small values keep every step short while image prompts prefill, so a
    /// short request that arrives waits little for the step in flight. `None`: long prompts
    /// share `max_step_tokens` with everything else.
    pub long_prefill_tokens: Option<usize>,
    /// A prompt of at most this many tokens is short: it prefills whole in a first-token step
    /// of its own, ahead of the batched step (which pauses between two layers for it). `None`:
    /// `long_prefill_tokens`, if set; `Some(0)`: no first-token steps.
    pub short_prompt_tokens: Option<usize>,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Bounds on incoming image features (size reservations of prompts still streaming).
    pub feature_limits: FeatureLimits,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_step_tokens: 512,
            long_prefill_tokens: None,
            short_prompt_tokens: None,
            max_running: 64,
            feature_limits: FeatureLimits::default(),
        }
    }
}

/// A request whose prompt is complete: ids with image placeholders already expanded and the
/// features at hand ([`Scheduler::add`]). Compare [`FeatureStreamRequest`], whose features are
/// still arriving.
#[derive(Debug, Clone)]
pub struct CompleteRequest {
    /// Caller's id, echoed in events.
    pub id: u64,
    /// Prompt token ids (image placeholders already expanded).
    pub prompt_ids: Vec<u32>,
    /// Image features for the prompt's `<IMG_CONTEXT>` positions.
    pub images: Option<ImageFeatures>,
    /// Where images sit in the prompt, with their content hashes (for the prefix cache).
    pub image_spans: Vec<ImageSpan>,
    /// Sampling and stopping.
    pub params: SamplingParams,
}

/// A request whose prompt is text and image slots, the slots' features arriving later, tile by
/// tile, through [`Scheduler::push_features`] ([`Scheduler::add_feature_stream`]). Compare
/// [`CompleteRequest`].
#[derive(Debug, Clone)]
pub struct FeatureStreamRequest {
    /// Caller's id, echoed in events.
    pub id: u64,
    /// Text and images, in prompt order.
    pub pieces: Vec<PromptPiece>,
    /// Sampling and stopping. `max_new_tokens` beyond the context stops at the context.
    pub params: SamplingParams,
    /// The request's span: its time in the engine is traced under it (`Span::none()`: not
    /// traced).
    pub span: tracing::Span,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Its input does not fit the model (feature shape, tile counts, prompt length...).
    InvalidInput,
    /// Its image features did not arrive in time.
    FeaturesTimedOut,
    /// Its feature stream broke (the sender aborted or disconnected).
    FeaturesFailed,
    /// The engine failed while running it.
    Internal,
}

/// Wall time of each stage of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceTimings {
    /// From arrival to admission into the running batch.
    pub queue: Duration,
    /// Admitted but stalled: nothing to prefill until the next tile arrived.
    pub feature_wait: Duration,
    /// From admission to the first token, stalls excluded.
    pub prefill: Duration,
    /// From the first token to the end.
    pub decode: Duration,
    /// From arrival to the first token.
    pub time_to_first_token: Duration,
    /// From arrival to the end.
    pub total: Duration,
}

/// What a step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A generated token and the text that became safe to stream with it.
    Token {
        /// Request id.
        id: u64,
        /// The token.
        token: u32,
        /// Text delta (may be empty).
        text: String,
    },
    /// The request finished; its blocks are back in the pool.
    Finished {
        /// Request id.
        id: u64,
        /// Why.
        reason: StopReason,
        /// Text held back until the end (may be empty).
        text: String,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Prompt tokens that are image features.
        image_tokens: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
        /// Stage timings.
        timings: SequenceTimings,
    },
    /// The request failed after it was queued; it holds nothing any more.
    Failed {
        /// Request id.
        id: u64,
        /// What kind of failure.
        kind: FailureKind,
        /// Why.
        message: String,
    },
    /// The request was cancelled; it holds nothing any more.
    Cancelled {
        /// Request id.
        id: u64,
    },
}

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request can never be served (too long, bad features...).
    #[error("request {id}: {message}")]
    Rejected {
        /// Request id.
        id: u64,
        /// Why.
        message: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The engine broke its own bookkeeping (a bug).
    #[error("engine bookkeeping: {0}")]
    Internal(String),
}

/// When a request reached each stage.
#[derive(Debug, Clone, Copy)]
struct Clock {
    arrived: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    stalled: Duration,
    stalled_since: Option<Instant>,
}

impl Clock {
    fn stall(&mut self, now: Instant) {
        self.stalled_since.get_or_insert(now);
    }

    fn resume(&mut self, now: Instant) {
        if let Some(since) = self.stalled_since.take() {
            self.stalled += now.saturating_duration_since(since);
        }
    }

    fn timings(&self, now: Instant) -> SequenceTimings {
        let first = self.first_token.unwrap_or(now);
        SequenceTimings {
            queue: self.admitted.saturating_duration_since(self.arrived),
            feature_wait: self.stalled,
            prefill: first
                .saturating_duration_since(self.admitted)
                .saturating_sub(self.stalled),
            decode: now.saturating_duration_since(first),
            time_to_first_token: first.saturating_duration_since(self.arrived),
            total: now.saturating_duration_since(self.arrived),
        }
    }
}

/// A request waiting for cache space.
struct Pending {
    id: u64,
    prompt: StreamingPrompt,
    params: SamplingParams,
    arrived: Instant,
    spans: SequenceSpans,
}

struct Sequence {
    id: u64,
    prompt: StreamingPrompt,
    cache: PagedSequence,
    cached_tokens: usize,
    continuation: Continuation,
    /// `params.max_new_tokens` capped at the context once the prompt length is known.
    max_new_tokens: usize,
    clock: Clock,
    spans: SequenceSpans,
}

impl Sequence {
    fn prefilled(&self) -> bool {
        self.prompt.is_complete() && self.cache.len() >= self.prompt.len()
    }
}

/// Counters for health and stats.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub running: usize,
    /// Requests waiting for cache space.
    pub waiting: usize,
    /// Requests (running or waiting) whose image features have not all arrived.
    pub waiting_for_features: usize,
    /// KV blocks held (running sequences and the prefix cache).
    pub blocks_used: usize,
    /// KV blocks held by requests: `blocks_used` less the cached blocks only the prefix cache
    /// holds (those are given up whenever a request needs room). It walks the whole pool, so it
    /// is recounted only when the batch or the free blocks change, or after [`IN_USE_RECOUNT`].
    pub blocks_in_use: usize,
    /// KV blocks in the pool.
    pub blocks_total: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Fraction of prefilled prompt tokens served from the prefix cache.
    pub prefix_hit_rate: f64,
    /// Prompt positions still to prefill plus tokens still to generate, over all requests.
    pub outstanding_tokens: u64,
    /// Prompt positions prefilled per second, recently.
    pub prompt_tokens_per_s: f64,
    /// Tokens generated per second, recently.
    pub generation_tokens_per_s: f64,
}

/// How far back [`EngineStats`]' throughput looks.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

/// The continuous-batching engine over one model and one KV pool.
pub struct Scheduler {
    model: Arc<LanguageModel>,
    tokenizer: Tokenizer,
    image_ids: Option<ImageTokenIds>,
    pool: Arc<KvPool>,
    eos: Vec<u32>,
    config: SchedulerConfig,
    waiting: VecDeque<Pending>,
    running: Vec<Sequence>,
    meter: ThroughputMeter,
    last_step_tokens: usize,
    /// Prompt tokens of every prefilled prompt, and how many of them came from the cache.
    prompt_totals: PromptTotals,
    /// The last count of blocks held by requests, if one was taken.
    in_use: Cell<Option<InUseCount>>,
}

/// Prompt tokens the engine prefilled over its life, for the prefix hit rate.
#[derive(Debug, Clone, Copy, Default)]
struct PromptTotals {
    /// Positions of every prompt that finished prefilling.
    prompt: u64,
    /// Of those, positions served from the prefix cache.
    cached: u64,
}

impl PromptTotals {
    /// Fraction of prompt positions served from the prefix cache (0 before any prompt).
    fn hit_rate(self) -> f64 {
        if self.prompt == 0 {
            0.0
        } else {
            self.cached as f64 / self.prompt as f64
        }
    }
}

/// What the blocks held by requests depend on: while none of it changes, a recent count stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InUseKey {
    free_blocks: usize,
    running: usize,
    waiting: usize,
}

/// A count of the blocks held by requests ([`EngineStats::blocks_in_use`]).
#[derive(Debug, Clone, Copy)]
struct InUseCount {
    /// When it was taken.
    at: Instant,
    /// What it was taken at.
    key: InUseKey,
    /// The count.
    blocks: usize,
}

/// How stale [`EngineStats::blocks_in_use`] may be while the free blocks and the numbers of
/// running and waiting requests stay the same (it is recounted at once when they change).
pub const IN_USE_RECOUNT: Duration = Duration::from_millis(250);

impl Scheduler {
    /// An engine for `model` with cache `pool`; `eos` ends every request.
    pub fn new(
        model: Arc<LanguageModel>,
        tokenizer: Tokenizer,
        pool: Arc<KvPool>,
        eos: Vec<u32>,
        config: SchedulerConfig,
    ) -> Self {
        Self {
            image_ids: ImageTokenIds::from_tokenizer(&tokenizer).ok(),
            model,
            tokenizer,
            pool,
            eos,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            meter: ThroughputMeter::new(THROUGHPUT_WINDOW),
            last_step_tokens: 0,
            prompt_totals: PromptTotals::default(),
            in_use: Cell::new(None),
        }
    }

    /// The model the engine runs.
    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.model
    }

    /// Queues a request whose prompt is complete; refuses at once one that could never be
    /// served or whose features do not fit its prompt.
    pub fn add(&mut self, request: CompleteRequest) -> Result<(), EngineError> {
        let id = request.id;
        let reject = |message: String| EngineError::Rejected { id, message };
        if request.prompt_ids.is_empty() {
            return Err(reject("empty prompt".into()));
        }
        let images = request.images.as_ref();
        let embeds = self
            .model
            .embed(
                &request.prompt_ids,
                images.map(|i| i.token_id),
                images.map(|i| &i.features),
            )
            .map_err(|e| reject(e.to_string()))?;
        let prompt = StreamingPrompt::complete(request.prompt_ids, embeds, request.image_spans);
        self.enqueue(id, prompt, request.params, tracing::Span::none())
    }

    /// Queues a request whose image features will arrive through [`push_features`]
    /// (Self::push_features); text up to its first image can be prefilled at once.
    pub fn add_feature_stream(&mut self, request: FeatureStreamRequest) -> Result<(), EngineError> {
        let id = request.id;
        let prompt = StreamingPrompt::streaming(
            &self.model,
            request.pieces,
            self.image_ids,
            self.config.feature_limits,
        )
        .map_err(|e| EngineError::Rejected {
            id,
            message: e.to_string(),
        })?;
        if prompt.is_complete() && prompt.len() == 0 {
            return Err(EngineError::Rejected {
                id,
                message: "empty prompt".into(),
            });
        }
        self.enqueue(id, prompt, request.params, request.span)
    }

    fn enqueue(
        &mut self,
        id: u64,
        prompt: StreamingPrompt,
        params: SamplingParams,
        span: tracing::Span,
    ) -> Result<(), EngineError> {
        let reject = |message: String| EngineError::Rejected { id, message };
        params.validate().map_err(|e| reject(e.to_string()))?;
        let context = self.model.config().max_position_embeddings;
        let least = if prompt.is_complete() {
            prompt.len()
        } else {
            prompt.len() + 1 // at least `</img>` follows
        };
        if least >= context {
            return Err(reject(format!(
                "prompt of {least} tokens leaves no room to generate within the context of \
                 {context}"
            )));
        }
        let positions = self.reservation(&prompt, &params);
        let blocks = positions.div_ceil(self.pool.config().block_size);
        if blocks > self.pool.total_blocks() {
            return Err(reject(format!(
                "needs {blocks} KV blocks for {positions} positions; the pool has {}",
                self.pool.total_blocks()
            )));
        }
        if self.waiting.iter().any(|r| r.id == id) || self.running.iter().any(|s| s.id == id) {
            return Err(reject("duplicate request id".into()));
        }
        self.waiting.push_back(Pending {
            id,
            prompt,
            params,
            arrived: Instant::now(),
            spans: SequenceSpans::queued(span),
        });
        Ok(())
    }

    /// Positions to reserve for a prompt: exact once complete, its upper bound before.
    fn reservation(&self, prompt: &StreamingPrompt, params: &SamplingParams) -> usize {
        let context = self.model.config().max_position_embeddings;
        if prompt.is_complete() {
            prompt.len() + params.max_new_tokens.min(context - prompt.len())
        } else {
            prompt
                .upper_bound()
                .saturating_add(params.max_new_tokens)
                .min(context)
        }
    }

    /// Hands one tile to request `id` (waiting or running). Returns `None` when no such request
    /// is queued (it finished, failed or was cancelled), else the events it caused: a
    /// [`Failed`](EngineEvent::Failed) if the tile does not fit the prompt.
    pub fn push_features(&mut self, id: u64, tile: FeatureTile) -> Option<Vec<EngineEvent>> {
        let now = Instant::now();
        let limits = self.config.feature_limits;
        let result = if let Some(p) = self.waiting.iter_mut().find(|p| p.id == id) {
            p.prompt.push_tile(&self.model, tile, limits)
        } else if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
            s.clock.resume(now);
            s.spans.resume();
            s.prompt
                .push_tile(&self.model, tile, limits)
                .map(|()| finish_prompt(s, &self.model))
        } else {
            return None;
        };
        Some(match result {
            Ok(()) => Vec::new(),
            Err(e) => self
                .fail(id, FailureKind::InvalidInput, e.to_string())
                .into_iter()
                .collect(),
        })
    }

    /// Fails request `id` wherever it is (its features timed out or broke...); its blocks
    /// return to the pool at once. `None` when no such request is queued.
    pub fn fail(&mut self, id: u64, kind: FailureKind, message: String) -> Option<EngineEvent> {
        self.remove(id)
            .then_some(EngineEvent::Failed { id, kind, message })
    }

    /// Drops a request wherever it is; its blocks return to the pool at once.
    pub fn cancel(&mut self, id: u64) -> bool {
        self.remove(id)
    }

    fn remove(&mut self, id: u64) -> bool {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|r| r.id != id);
        self.running.retain(|s| s.id != id);
        before != self.waiting.len() + self.running.len()
    }

    /// Fails every running sequence (after a step failed halfway, their caches cannot be
    /// trusted); waiting requests stay queued.
    pub fn fail_running(&mut self, message: &str) -> Vec<EngineEvent> {
        self.running
            .drain(..)
            .map(|s| EngineEvent::Failed {
                id: s.id,
                kind: FailureKind::Internal,
                message: message.to_owned(),
            })
            .collect()
    }

    /// Whether nothing is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Positions the last [`step`](Self::step) computed; 0 means the engine can do nothing until
    /// features arrive or a request ends.
    pub fn last_step_tokens(&self) -> usize {
        self.last_step_tokens
    }

    /// Current counters.
    pub fn stats(&self) -> EngineStats {
        let state = self.pool.state();
        let (prompt_rate, generation_rate) = self.meter.rates(Instant::now());
        let waiting_for_features = self
            .waiting
            .iter()
            .filter(|p| !p.prompt.is_complete())
            .count()
            + self
                .running
                .iter()
                .filter(|s| !s.prompt.is_complete())
                .count();
        let outstanding: usize = self
            .waiting
            .iter()
            .map(|p| p.prompt.len() + p.params.max_new_tokens.min(1 << 20))
            .chain(self.running.iter().map(|s| {
                s.prompt.len().saturating_sub(s.cache.len())
                    + s.max_new_tokens
                        .min(1 << 20)
                        .saturating_sub(s.continuation.generated().len())
            }))
            .sum();
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            waiting_for_features,
            blocks_used: state.allocator.total() - state.allocator.free(),
            blocks_in_use: self.blocks_in_use(&state),
            blocks_total: state.allocator.total(),
            block_size: self.pool.config().block_size,
            prefix_hit_rate: self.prompt_totals.hit_rate(),
            outstanding_tokens: outstanding as u64,
            prompt_tokens_per_s: prompt_rate,
            generation_tokens_per_s: generation_rate,
        }
    }

    /// Blocks held by requests: the last count while it is recent and the free blocks and the
    /// numbers of running and waiting requests are unchanged, else a fresh one (it walks the
    /// whole pool).
    fn blocks_in_use(&self, state: &PoolState) -> usize {
        let key = InUseKey {
            free_blocks: state.allocator.free(),
            running: self.running.len(),
            waiting: self.waiting.len(),
        };
        match self.in_use.get() {
            Some(c) if c.key == key && c.at.elapsed() < IN_USE_RECOUNT => c.blocks,
            _ => {
                let blocks = state.allocator.total() - state.available();
                self.in_use.set(Some(InUseCount {
                    at: Instant::now(),
                    key,
                    blocks,
                }));
                blocks
            }
        }
    }

    /// Admits waiting requests in arrival order while their whole reservation fits. Once one
    /// does not fit, only small requests (at most 1/16 of the pool) behind it may still be
    /// admitted: a short text request does not wait behind image prompts that need blocks
    /// the running batch holds, and it frees its few blocks soon, so the large request at the
    /// head is not starved.
    ///
    /// Only requests `only` accepts are considered (the first-token step admits short prompts).
    fn admit(&mut self, now: Instant, only: impl Fn(&Pending) -> bool) -> Vec<EngineEvent> {
        let mut events = Vec::new();
        let block_size = self.pool.config().block_size;
        let small = self.pool.total_blocks() * block_size / BACKFILL_FRACTION;
        let mut blocked = false;
        let mut next = 0;
        while self.running.len() < self.config.max_running {
            let Some(request) = self.waiting.get(next) else {
                break;
            };
            if !only(request) {
                next += 1;
                continue;
            }
            let positions = self.reservation(&request.prompt, &request.params);
            if blocked && positions > small {
                next += 1;
                continue;
            }
            let keys = request.prompt.block_keys(block_size);
            let mut cache = PagedSequence::from_prefix(self.pool.clone(), &keys);
            let cached = cache.len();
            match cache.reserve(positions.saturating_sub(cached)) {
                Ok(()) => {}
                Err(KvError::OutOfBlocks { .. }) => {
                    // Wait for running sequences to end; only small requests pass it.
                    blocked = true;
                    next += 1;
                    continue;
                }
                Err(e) => {
                    events.push(EngineEvent::Failed {
                        id: request.id,
                        kind: FailureKind::InvalidInput,
                        message: e.to_string(),
                    });
                    self.waiting.remove(next);
                    continue;
                }
            }
            let Some(mut request) = self.waiting.remove(next) else {
                break;
            };
            request.spans.admitted();
            let continuation = match Continuation::new(&request.params, &self.tokenizer, &self.eos)
            {
                Ok(c) => c,
                Err(e) => {
                    events.push(EngineEvent::Failed {
                        id: request.id,
                        kind: FailureKind::InvalidInput,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let mut seq = Sequence {
                id: request.id,
                continuation,
                max_new_tokens: request.params.max_new_tokens,
                prompt: request.prompt,
                cache,
                cached_tokens: cached,
                clock: Clock {
                    arrived: request.arrived,
                    admitted: now,
                    first_token: None,
                    stalled: Duration::ZERO,
                    stalled_since: None,
                },
                spans: request.spans,
            };
            if seq.prompt.is_complete() {
                finish_prompt(&mut seq, &self.model);
            }
            self.running.push(seq);
        }
        events
    }
}

/// Settles a sequence whose prompt just became complete: caps its new tokens at the context and
/// returns the reservation it no longer needs.
fn finish_prompt(seq: &mut Sequence, model: &LanguageModel) {
    if !seq.prompt.is_complete() {
        return;
    }
    let context = model.config().max_position_embeddings;
    seq.max_new_tokens = seq
        .max_new_tokens
        .min(context.saturating_sub(seq.prompt.len()));
    seq.cache
        .release_unused(seq.prompt.len() + seq.max_new_tokens);
}
