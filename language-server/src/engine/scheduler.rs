//! Continuous batching: requests join and leave the running batch between steps; each step runs
//! every decoding sequence's next token plus prefill chunks of admitted prompts under a per-step
//! token budget, all in one batched forward pass.
//!
//! Memory policy (no preemption): a request is admitted only when the pool can hold its whole
//! prompt plus `max_new_tokens`, and those blocks are reserved at admission, so a running
//! sequence never runs out of cache. Requests that do not fit yet wait in arrival order; a
//! request that could never fit (longer than the pool or the model's context) is refused at once.

use std::collections::VecDeque;
use std::sync::Arc;

use candle_core::Tensor;

use super::kv::{ImageSpan, KvError, KvPool, PagedSequence, block_keys};
use crate::model::{LanguageModel, ModelError, SequenceCache, SequenceStep};
use crate::sampling::{Sampler, SamplingError, SamplingParams, StopChecker, StopReason};
use crate::text::{IncrementalDecoder, TextError, Tokenizer};

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most new tokens (decode tokens + prefill chunk tokens) per step.
    pub max_step_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_step_tokens: 512,
            max_running: 64,
        }
    }
}

/// A request as the engine takes it.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// Caller's id, echoed in events.
    pub id: u64,
    /// Prompt token ids (image placeholders already expanded).
    pub prompt_ids: Vec<u32>,
    /// Image features for the prompt's `<IMG_CONTEXT>` positions: the token id and `[n, hidden]`.
    pub images: Option<(u32, Tensor)>,
    /// Where images sit in the prompt, with their content hashes (for the prefix cache).
    pub image_spans: Vec<ImageSpan>,
    /// Sampling and stopping.
    pub params: SamplingParams,
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
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// The request failed after it was queued (its features do not fit the prompt...); it
    /// holds nothing any more.
    Failed {
        /// Request id.
        id: u64,
        /// Why.
        message: String,
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
    /// Sampling failed.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// Detokenisation failed.
    #[error(transparent)]
    Text(#[from] TextError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

struct Sequence {
    id: u64,
    prompt: Vec<u32>,
    /// Prompt embeddings `[prompt_len, hidden]` (images merged).
    embeds: Tensor,
    keys: Vec<super::kv::BlockKey>,
    cache: PagedSequence,
    cached_tokens: usize,
    generated: Vec<u32>,
    sampler: Sampler,
    stop: StopChecker,
    decoder: IncrementalDecoder,
    max_new_tokens: usize,
}

impl Sequence {
    fn prefilled(&self) -> bool {
        self.cache.len() >= self.prompt.len()
    }
}

/// Counters for health and stats.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub running: usize,
    /// Requests waiting for cache space.
    pub waiting: usize,
    /// KV blocks held (running sequences and the prefix cache).
    pub blocks_used: usize,
    /// KV blocks in the pool.
    pub blocks_total: usize,
    /// Prefix-cache block hit rate.
    pub prefix_hit_rate: f64,
}

/// The continuous-batching engine over one model and one KV pool.
pub struct Scheduler {
    model: Arc<LanguageModel>,
    tokenizer: Tokenizer,
    pool: Arc<KvPool>,
    eos: Vec<u32>,
    config: SchedulerConfig,
    waiting: VecDeque<EngineRequest>,
    running: Vec<Sequence>,
}

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
            model,
            tokenizer,
            pool,
            eos,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Queues a request; refuses at once one that could never be served.
    pub fn add(&mut self, request: EngineRequest) -> Result<(), EngineError> {
        let reject = |message: String| EngineError::Rejected {
            id: request.id,
            message,
        };
        request
            .params
            .validate()
            .map_err(|e| reject(e.to_string()))?;
        if request.prompt_ids.is_empty() {
            return Err(reject("empty prompt".into()));
        }
        let positions = request.prompt_ids.len() + request.params.max_new_tokens;
        let context = self.model.config().max_position_embeddings;
        if positions > context {
            return Err(reject(format!(
                "prompt of {} tokens + {} new tokens exceeds the context of {context}",
                request.prompt_ids.len(),
                request.params.max_new_tokens
            )));
        }
        let blocks = positions.div_ceil(self.pool.config().block_size);
        if blocks > self.pool.total_blocks() {
            return Err(reject(format!(
                "needs {blocks} KV blocks; the pool has {}",
                self.pool.total_blocks()
            )));
        }
        if self.waiting.iter().any(|r| r.id == request.id)
            || self.running.iter().any(|s| s.id == request.id)
        {
            return Err(reject("duplicate request id".into()));
        }
        self.waiting.push_back(request);
        Ok(())
    }

    /// Drops a request wherever it is; its blocks return to the pool at once.
    pub fn cancel(&mut self, id: u64) -> bool {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|r| r.id != id);
        self.running.retain(|s| s.id != id);
        before != self.waiting.len() + self.running.len()
    }

    /// Whether nothing is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Current counters.
    pub fn stats(&self) -> EngineStats {
        let state = self.pool.state();
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            blocks_used: state.allocator.total() - state.allocator.free(),
            blocks_total: state.allocator.total(),
            prefix_hit_rate: state.prefix.hit_rate(),
        }
    }

    /// Admits waiting requests in arrival order while their whole reservation fits.
    fn admit(&mut self) -> Result<Vec<EngineEvent>, EngineError> {
        let mut events = Vec::new();
        let block_size = self.pool.config().block_size;
        while self.running.len() < self.config.max_running {
            let Some(request) = self.waiting.front() else {
                break;
            };
            let prompt_len = request.prompt_ids.len();
            // Full blocks strictly before the last prompt token may come from the cache.
            let keys = block_keys(
                &request.prompt_ids[..prompt_len - 1],
                &request.image_spans,
                block_size,
            );
            let mut cache = PagedSequence::from_prefix(self.pool.clone(), &keys);
            let cached = cache.len();
            match cache.reserve(prompt_len - cached + request.params.max_new_tokens) {
                Ok(()) => {}
                Err(KvError::OutOfBlocks { .. }) => break, // wait for running sequences to finish
                Err(e) => {
                    events.push(EngineEvent::Failed {
                        id: request.id,
                        message: e.to_string(),
                    });
                    self.waiting.pop_front();
                    continue;
                }
            }
            let Some(request) = self.waiting.pop_front() else {
                break;
            };
            let embeds = self.model.embed(
                &request.prompt_ids,
                request.images.as_ref().map(|(t, _)| *t),
                request.images.as_ref().map(|(_, f)| f),
            );
            let embeds = match embeds {
                Ok(e) => e,
                Err(e) => {
                    // `cache` drops here and returns its blocks.
                    events.push(EngineEvent::Failed {
                        id: request.id,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            self.running.push(Sequence {
                id: request.id,
                sampler: Sampler::new(request.params.clone())?,
                stop: StopChecker::new(&request.params, &self.eos),
                decoder: IncrementalDecoder::new(self.tokenizer.clone(), true),
                max_new_tokens: request.params.max_new_tokens,
                prompt: request.prompt_ids,
                embeds,
                keys,
                cache,
                cached_tokens: cached,
                generated: Vec::new(),
            });
        }
        Ok(events)
    }

    /// Runs one batched step: admits what fits, then decodes one token for every sequence past
    /// its prompt and prefills the next chunk of the others, within the step's token budget.
    pub fn step(&mut self) -> Result<Vec<EngineEvent>, EngineError> {
        let mut events = self.admit()?;
        if self.running.is_empty() {
            return Ok(events);
        }
        let mut budget = self.config.max_step_tokens.max(1);
        // (index into running, embeds for this step, completes the prompt / is a decode)
        let mut plan: Vec<(usize, Tensor, bool)> = Vec::new();
        for (i, seq) in self.running.iter().enumerate() {
            if seq.prefilled() && budget > 0 {
                let last = seq.generated.last().copied().unwrap_or(0);
                plan.push((i, self.model.embed(&[last], None, None)?, true));
                budget -= 1;
            }
        }
        for (i, seq) in self.running.iter().enumerate() {
            if !seq.prefilled() && budget > 0 {
                let done = seq.cache.len();
                let n = (seq.prompt.len() - done).min(budget);
                let completes = done + n == seq.prompt.len();
                plan.push((i, seq.embeds.narrow(0, done, n)?, completes));
                budget -= n;
            }
        }
        if plan.is_empty() {
            return Ok(events);
        }
        let order: Vec<(usize, bool)> = plan.iter().map(|(i, _, c)| (*i, *c)).collect();
        let logits = {
            let mut by_index: Vec<Option<Tensor>> = vec![None; self.running.len()];
            for (i, embeds, _) in plan {
                by_index[i] = Some(embeds);
            }
            let mut steps = Vec::with_capacity(order.len());
            let mut index_of_step = Vec::with_capacity(order.len());
            for (i, seq) in self.running.iter_mut().enumerate() {
                if let Some(embeds) = by_index[i].take() {
                    steps.push(SequenceStep {
                        embeds,
                        cache: &mut seq.cache,
                    });
                    index_of_step.push(i);
                }
            }
            let logits = self.model.forward(&mut steps)?;
            (logits, index_of_step)
        };
        let (logits, index_of_step) = logits;
        let rows = logits.to_vec2::<f32>()?;
        let mut finished = Vec::new();
        for (row, &i) in rows.iter().zip(&index_of_step) {
            let samples = order.iter().any(|&(j, completes)| j == i && completes);
            let seq = &mut self.running[i];
            if !samples {
                continue; // a prefill chunk that does not reach the prompt's end
            }
            if seq.generated.is_empty() {
                // Prompt done: offer its full blocks to the prefix cache.
                seq.cache.register_prefix(&seq.keys);
            }
            let token = seq.sampler.sample(row, &seq.prompt, &seq.generated)?;
            seq.generated.push(token);
            let delta = seq.decoder.push(token)?;
            let update = seq.stop.push(token, &delta);
            events.push(EngineEvent::Token {
                id: seq.id,
                token,
                text: update.text,
            });
            if let Some(reason) = update.stop {
                finished.push((i, reason));
            } else if seq.generated.len() >= seq.max_new_tokens {
                finished.push((i, StopReason::MaxTokens));
            }
        }
        // Remove finished sequences (highest index first keeps the others' indices valid).
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let mut seq = self.running.remove(i);
            let tail = seq.stop.finish(&seq.decoder.finish()?);
            events.push(EngineEvent::Finished {
                id: seq.id,
                reason,
                text: tail,
                prompt_tokens: seq.prompt.len(),
                cached_tokens: seq.cached_tokens,
                completion_tokens: seq.generated.len(),
            });
        }
        Ok(events)
    }
}
