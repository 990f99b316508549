//! [`SequenceSpans`]: a request's time in the engine, as spans in its request's trace: waiting
//! for admission (`engine_queue`), stalled for its next feature tile (`feature_wait`), each
//! prefill chunk (`prefill_chunk`, and `first_token` for the chunk that ends the prompt and
//! samples), then `decode` until it ends (a `finished` event says why).

use tracing::{Span, info_span};

use crate::sampling::StopReason;

/// The open spans of one request in the engine; none when its request span is disabled.
#[derive(Debug)]
pub(super) struct SequenceSpans {
    request: Span,
    queued: Option<Span>,
    stalled: Option<Span>,
    decode: Option<Span>,
}

impl SequenceSpans {
    /// A request just queued under `request` (its gRPC call's span).
    pub(super) fn queued(request: Span) -> Self {
        let queued = (!request.is_disabled()).then(|| info_span!(parent: &request, "engine_queue"));
        Self {
            request,
            queued,
            stalled: None,
            decode: None,
        }
    }

    fn enabled(&self) -> bool {
        !self.request.is_disabled()
    }

    /// Admitted into the running batch.
    pub(super) fn admitted(&mut self) {
        self.queued = None;
    }

    /// Nothing to prefill until the next tile arrives (kept open across steps).
    pub(super) fn stall(&mut self) {
        if self.enabled() && self.stalled.is_none() {
            self.stalled = Some(info_span!(parent: &self.request, "feature_wait"));
        }
    }

    /// The next tile arrived.
    pub(super) fn resume(&mut self) {
        self.stalled = None;
    }

    /// The span of this request's part of a step that prefills `tokens` prompt positions
    /// (`samples`: it ends the prompt and samples the first token); none for a decode step.
    pub(super) fn step(&self, tokens: usize, prefilling: bool, samples: bool) -> Span {
        match (self.enabled() && prefilling, samples) {
            (false, _) => Span::none(),
            (true, false) => info_span!(parent: &self.request, "prefill_chunk", tokens),
            (true, true) => info_span!(parent: &self.request, "first_token", tokens),
        }
    }

    /// The first token was sampled: decoding starts.
    pub(super) fn first_token(&mut self) {
        if self.enabled() {
            self.decode = Some(info_span!(parent: &self.request, "decode"));
        }
    }

    /// The request ended as `reason` says after `completion_tokens` tokens.
    pub(super) fn finished(&self, reason: &StopReason, completion_tokens: usize) {
        if self.enabled() {
            tracing::info!(
                parent: &self.request,
                reason = ?reason,
                completion_tokens,
                "finished"
            );
        }
    }
}
