//! Running steps. The batched step (every decode plus prefill chunks within the token budget)
//! runs one decoder layer at a time, so the engine thread can pause it between two layers; the
//! first-token step prefills short prompts in a step of their own, ahead of the batch, so a
//! short request waits neither for the step in flight nor behind image prompts' chunks.

use std::time::Instant;

use candle_core::Tensor;

use super::{EngineError, EngineEvent, FailureKind, Pending, Scheduler, Sequence};
use crate::engine::prompt::StreamingPrompt;
use crate::generate::GenerateError;
use crate::model::{PartialForward, SequenceCache, SequenceStep};
use crate::sampling::StopReason;

/// A batched step under way: [`Scheduler::begin_step`], then [`Scheduler::advance_step`] (one
/// decoder layer each) until [`is_done`](Self::is_done), then [`Scheduler::finish_step`].
/// Between two layers the engine may run a [`Scheduler::first_token_step`].
#[derive(Debug)]
pub struct StepInFlight {
    forward: PartialForward,
    /// The step's sequences, in batch order.
    stepped: Vec<Stepped>,
    /// Prompt positions the step prefills.
    prompt_tokens: usize,
}

impl StepInFlight {
    /// Whether every layer has run ([`Scheduler::finish_step`] is next).
    pub fn is_done(&self) -> bool {
        self.forward.is_done()
    }

    fn contains(&self, id: u64) -> bool {
        self.stepped.iter().any(|s| s.id == id)
    }
}

/// A sequence in a step under way.
#[derive(Debug)]
struct Stepped {
    /// Request id.
    id: u64,
    /// Whether the step samples its next token (false for a prefill chunk short of the
    /// prompt's end).
    samples: bool,
    /// Its prefill chunk's span, ended with the step (none for a decode step).
    _span: tracing::Span,
}

/// A sequence's part of a step being planned.
struct Planned {
    /// Index into the running sequences.
    index: usize,
    /// Input embeddings of the positions the step computes.
    embeds: Tensor,
    /// Whether the step samples its next token.
    samples: bool,
}

/// The cap on long prompts' share of one step ([`SchedulerConfig::long_prefill_tokens`]).
///
/// [`SchedulerConfig::long_prefill_tokens`]: super::SchedulerConfig::long_prefill_tokens
#[derive(Debug, Clone, Copy)]
struct LongPrefill {
    /// A prompt with more than this many tokens left to prefill is long.
    threshold: usize,
    /// Tokens long prompts may still take this step.
    left: usize,
}

/// A sequence the step ended, and how.
struct Ended {
    /// Index into the running sequences.
    index: usize,
    /// Why it stopped, or what failed.
    outcome: Result<StopReason, GenerateError>,
}

/// Whether `prompt` is short: complete and at most `threshold` tokens.
fn is_short(prompt: &StreamingPrompt, threshold: usize) -> bool {
    prompt.is_complete() && prompt.len() <= threshold
}

/// Whether `seq` is a short prompt that has not started prefilling.
fn short_and_unstarted(seq: &Sequence, threshold: usize) -> bool {
    is_short(&seq.prompt, threshold)
        && seq.continuation.generated().is_empty()
        && seq.cache.len() == seq.cached_tokens
        && !seq.prefilled()
}

impl Scheduler {
    /// Runs one whole cycle: a [`first_token_step`](Self::first_token_step) if short prompts
    /// wait, then the batched step: admits what fits, decodes one token for every sequence past
    /// its prompt and prefills the next known chunk of the others, within the step's token
    /// budget. Sequences with nothing known to prefill stall until their next tile.
    pub fn step(&mut self) -> Result<Vec<EngineEvent>, EngineError> {
        let mut events = self.first_token_step(None)?;
        let (admitted, step) = self.begin_step()?;
        events.extend(admitted);
        if let Some(step) = step {
            events.extend(self.run_to_end(step)?);
        }
        Ok(events)
    }

    /// Admits what fits and plans the batched step; returns the admission failures and the
    /// step, or `None` when nothing can run (idle, or every sequence waiting for a tile).
    pub fn begin_step(&mut self) -> Result<(Vec<EngineEvent>, Option<StepInFlight>), EngineError> {
        let now = Instant::now();
        let events = self.admit(now, |_| true);
        self.last_step_tokens = 0;
        if self.running.is_empty() {
            return Ok((events, None));
        }
        let mut budget = self.config.max_step_tokens.max(1);
        let mut plan = Vec::new();
        let mut decodes = 0;
        for (i, seq) in self.running.iter().enumerate() {
            if seq.prefilled() && budget > 0 {
                let last = seq.continuation.generated().last().copied().unwrap_or(0);
                plan.push(Planned {
                    index: i,
                    embeds: self.model.embed(&[last], None, None)?,
                    samples: true,
                });
                budget -= 1;
                decodes += 1;
            }
        }
        let mut prompt_tokens = 0;
        let block_size = self.pool.config().block_size;
        // Shortest remaining prompt first (ties in arrival order): a short request admitted
        // behind long image prompts prefills in the next step instead of after all of them,
        // which bounds its time to first token under image load; long prompts still get
        // whatever budget the short ones leave, up to `long_prefill_tokens` among them.
        let mut long = self.config.long_prefill_tokens.map(|n| LongPrefill {
            threshold: n.max(1),
            left: n.max(1),
        });
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| {
            let seq = &self.running[i];
            seq.prompt.len().saturating_sub(seq.cache.len())
        });
        for i in order {
            let seq = &mut self.running[i];
            if seq.prefilled() || budget == 0 {
                continue;
            }
            // Blocks another request already computed for the same content are taken over.
            if seq.cache.len().is_multiple_of(block_size) {
                seq.cached_tokens += seq.cache.adopt_prefix(&seq.prompt.block_keys(block_size));
                if seq.prefilled() {
                    continue;
                }
            }
            let done = seq.cache.len();
            // Until the prompt is complete, prefill whole blocks only, so a later tile can
            // still meet a cached block at a block boundary.
            let known = if seq.prompt.is_complete() {
                seq.prompt.len()
            } else {
                seq.prompt.len() / block_size * block_size
            };
            if known <= done {
                seq.clock.stall(now); // the next tile is still on the wire
                seq.spans.stall();
                continue;
            }
            let mut n = (known - done).min(budget);
            if let Some(long) = long.as_mut()
                && seq.prompt.len().saturating_sub(done) > long.threshold
            {
                n = n.min(long.left);
                long.left -= n;
                if n == 0 {
                    continue;
                }
            }
            plan.push(Planned {
                index: i,
                embeds: seq.prompt.embeds(done, n)?,
                samples: seq.prompt.is_complete() && done + n == seq.prompt.len(),
            });
            budget -= n;
            prompt_tokens += n;
        }
        if plan.is_empty() {
            return Ok((events, None));
        }
        self.last_step_tokens = decodes + prompt_tokens;
        let step = self.start(plan, prompt_tokens)?;
        Ok((events, Some(step)))
    }

    /// Runs the next decoder layer of `step`.
    pub fn advance_step(&mut self, step: &mut StepInFlight) -> Result<(), EngineError> {
        let mut caches = caches_in_order(&mut self.running, &step.stepped)?;
        self.model.forward_layer(&mut step.forward, &mut caches)?;
        Ok(())
    }

    /// Samples the tokens of a step whose layers have all run; returns its events (tokens, and
    /// the requests it finished).
    pub fn finish_step(&mut self, step: StepInFlight) -> Result<Vec<EngineEvent>, EngineError> {
        let logits = self.model.finish_forward(step.forward)?;
        let rows = logits.to_vec2::<f32>()?;
        Ok(self.settle(&step.stepped, &rows, step.prompt_tokens))
    }

    /// Runs every remaining layer of `step` without pausing, then finishes it.
    fn run_to_end(&mut self, mut step: StepInFlight) -> Result<Vec<EngineEvent>, EngineError> {
        while !step.is_done() {
            self.advance_step(&mut step)?;
        }
        self.finish_step(step)
    }

    /// Whether a [`first_token_step`](Self::first_token_step) has something to do: a short
    /// prompt waits, or was admitted but has not started (and is not in `in_flight`).
    pub fn wants_first_token_step(&self, in_flight: Option<&StepInFlight>) -> bool {
        let Some(threshold) = self.short_prompt_tokens() else {
            return false;
        };
        self.waiting.iter().any(|p| is_short(&p.prompt, threshold))
            || self.running.iter().any(|s| {
                short_and_unstarted(s, threshold) && !in_flight.is_some_and(|f| f.contains(s.id))
            })
    }

    /// Prefills short prompts (complete, at most `short_prompt_tokens` tokens, none computed
    /// yet) whole, in a step of their own, and samples their first tokens: admits the waiting
    /// ones that fit, then runs every such sequence not in `in_flight` (a batched step paused
    /// between two layers; its sequences are untouched). Does nothing when no prompt counts as
    /// short (see [`SchedulerConfig::short_prompt_tokens`](super::SchedulerConfig)).
    pub fn first_token_step(
        &mut self,
        in_flight: Option<&StepInFlight>,
    ) -> Result<Vec<EngineEvent>, EngineError> {
        let Some(threshold) = self.short_prompt_tokens() else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        let mut events = self.admit(now, |p: &Pending| is_short(&p.prompt, threshold));
        let block_size = self.pool.config().block_size;
        let mut budget = self.config.max_step_tokens.max(1);
        let mut plan = Vec::new();
        let mut prompt_tokens = 0;
        for (i, seq) in self.running.iter_mut().enumerate() {
            if !short_and_unstarted(seq, threshold) || in_flight.is_some_and(|f| f.contains(seq.id))
            {
                continue;
            }
            // Blocks another request already computed for the same content are taken over.
            seq.cached_tokens += seq.cache.adopt_prefix(&seq.prompt.block_keys(block_size));
            let done = seq.cache.len();
            let n = seq.prompt.len().saturating_sub(done);
            if n == 0 || n > budget {
                continue; // the batched step takes it
            }
            plan.push(Planned {
                index: i,
                embeds: seq.prompt.embeds(done, n)?,
                samples: true,
            });
            budget -= n;
            prompt_tokens += n;
        }
        if plan.is_empty() {
            return Ok(events);
        }
        let step = self.start(plan, prompt_tokens)?;
        events.extend(self.run_to_end(step)?);
        Ok(events)
    }

    /// What makes a prompt short enough for a first-token step, if anything does.
    fn short_prompt_tokens(&self) -> Option<usize> {
        self.config
            .short_prompt_tokens
            .or(self.config.long_prefill_tokens)
            .filter(|&n| n > 0)
    }

    /// Starts the forward pass of `plan`, its sequences in running order.
    fn start(
        &mut self,
        plan: Vec<Planned>,
        prompt_tokens: usize,
    ) -> Result<StepInFlight, EngineError> {
        let mut by_index: Vec<Option<Planned>> = Vec::new();
        by_index.resize_with(self.running.len(), || None);
        for planned in plan {
            let index = planned.index;
            by_index[index] = Some(planned);
        }
        let mut steps = Vec::with_capacity(by_index.len());
        let mut stepped = Vec::with_capacity(by_index.len());
        for (seq, planned) in self.running.iter_mut().zip(by_index) {
            if let Some(Planned {
                embeds, samples, ..
            }) = planned
            {
                let prefilling = seq.continuation.generated().is_empty();
                let tokens = embeds.dim(0)?;
                stepped.push(Stepped {
                    id: seq.id,
                    samples,
                    _span: seq.spans.step(tokens, prefilling, samples),
                });
                steps.push(SequenceStep {
                    embeds,
                    cache: &mut seq.cache,
                });
            }
        }
        let forward = self.model.start_forward(&mut steps)?;
        Ok(StepInFlight {
            forward,
            stepped,
            prompt_tokens,
        })
    }

    /// Samples each stepped sequence's next token from its logits row, ends the sequences that
    /// are done and returns the events.
    fn settle(
        &mut self,
        stepped: &[Stepped],
        rows: &[Vec<f32>],
        prompt_tokens: usize,
    ) -> Vec<EngineEvent> {
        let end = Instant::now();
        let block_size = self.pool.config().block_size;
        let mut events = Vec::new();
        let mut generated = 0;
        let mut ended: Vec<Ended> = Vec::new();
        for (row, &Stepped { id, samples, .. }) in rows.iter().zip(stepped) {
            let Some(i) = self.running.iter().position(|s| s.id == id) else {
                continue;
            };
            let seq = &mut self.running[i];
            seq.prompt.release_before(seq.cache.len());
            if !samples {
                continue; // a prefill chunk that does not reach the prompt's end
            }
            if seq.continuation.generated().is_empty() {
                // Prompt done: offer its full blocks to the prefix cache.
                seq.cache
                    .register_prefix(&seq.prompt.block_keys(block_size));
                seq.clock.first_token = Some(end);
                seq.spans.first_token();
                self.prompt_totals.prompt += seq.prompt.len() as u64;
                self.prompt_totals.cached += seq.cached_tokens as u64;
            }
            match seq.continuation.next(row, seq.prompt.ids()) {
                Ok(next) => {
                    generated += 1;
                    events.push(EngineEvent::Token {
                        id: seq.id,
                        token: next.token,
                        text: next.text,
                    });
                    let reached_max = seq.continuation.generated().len() >= seq.max_new_tokens;
                    if let Some(reason) = next.stop.or(reached_max.then_some(StopReason::MaxTokens))
                    {
                        ended.push(Ended {
                            index: i,
                            outcome: Ok(reason),
                        });
                    }
                }
                Err(e) => ended.push(Ended {
                    index: i,
                    outcome: Err(e),
                }),
            }
        }
        self.meter.record(end, prompt_tokens, generated);
        // Remove ended sequences (highest index first keeps the others' indices valid).
        ended.sort_by_key(|e| std::cmp::Reverse(e.index));
        for Ended { index, outcome } in ended {
            let mut seq = self.running.remove(index);
            let event = match outcome.and_then(|reason| {
                let tail = seq.continuation.finish()?;
                Ok((reason, tail))
            }) {
                Ok((reason, text)) => {
                    seq.spans
                        .finished(&reason, seq.continuation.generated().len());
                    EngineEvent::Finished {
                        id: seq.id,
                        reason,
                        text,
                        prompt_tokens: seq.prompt.len(),
                        image_tokens: seq.prompt.image_tokens(),
                        cached_tokens: seq.cached_tokens,
                        completion_tokens: seq.continuation.generated().len(),
                        timings: seq.clock.timings(end),
                    }
                }
                Err(e) => EngineEvent::Failed {
                    id: seq.id,
                    kind: FailureKind::Internal,
                    message: e.to_string(),
                },
            };
            events.push(event);
        }
        events
    }
}

/// The caches of the sequences `stepped` names, in its order.
fn caches_in_order<'a>(
    running: &'a mut [Sequence],
    stepped: &[Stepped],
) -> Result<Vec<&'a mut dyn SequenceCache>, EngineError> {
    let mut slots: Vec<Option<&'a mut dyn SequenceCache>> = Vec::new();
    slots.resize_with(stepped.len(), || None);
    for seq in running.iter_mut() {
        if let Some(k) = stepped.iter().position(|s| s.id == seq.id) {
            slots[k] = Some(&mut seq.cache);
        }
    }
    slots
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            EngineError::Internal("a sequence left the batch in the middle of a step".into())
        })
}
