//! `LanguageService` over gRPC: `Generate` turns a request into a prompt, claims the request's
//! feature inbox, queues it on the engine thread and streams its tokens back; `Cancel`, `Health`
//! and `Stats` report on and steer the engine.
//!
//! A `Generate` stream dropped by its client cancels the request at once: its KV blocks go back
//! to the pool and its feature inbox is released (a vision server still streaming to it is told).

mod events;
mod features;
mod request;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use dvd_proto::common::v1::ServingStatus;
use dvd_proto::feature::v1::Transport;
use dvd_proto::language::v1::language_service_server::LanguageService;
use dvd_proto::language::v1::{
    CancelRequest, CancelResponse, GenerateEvent, GenerateRequest, HealthRequest, HealthResponse,
    StatsRequest, StatsResponse,
};
use dvd_serve::ops::{OpsSource, Readiness};
use dvd_serve::telemetry::propagation::follow_metadata;
use dvd_serve::{Exposition, Histogram, Lifecycle, Outcome, Outcomes, Service, StopTaking};
use dvd_transport::{InboxRegistry, RequestId, TransportKind};
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, field, info_span};

pub use request::RequestDefaults;

use crate::engine::{AddError, EngineHandle, EventStream, FeatureStreamRequest, Submission};
use crate::text::{PromptFormat, Tokenizer};
use request::RequestConverter;

/// What `Health` reports about this server.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// Model id (the `--model` argument or the served name).
    pub model_id: String,
    /// `host:port` vision servers send features to.
    pub feature_address: String,
    /// Protocol of the feature listener.
    pub feature_transport: TransportKind,
    /// Hidden size of the model.
    pub hidden_size: usize,
}

/// The `LanguageService` implementation.
#[derive(Debug, Clone)]
pub struct LanguageServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: EngineHandle,
    inboxes: InboxRegistry,
    converter: RequestConverter,
    identity: ServerIdentity,
    /// Requests with a live `Generate` stream.
    active: Mutex<HashMap<RequestId, ActiveRequest>>,
    next_id: AtomicU64,
    /// The drain flag and the feature forwarding tasks.
    lifecycle: Lifecycle,
    /// `Generate` arrival to its first token, as this server saw it.
    ttft: Histogram,
    outcomes: Outcomes,
}

/// A request with a live `Generate` stream.
#[derive(Debug, Clone)]
struct ActiveRequest {
    /// Its id in the engine.
    engine_id: u64,
    /// Stops its feature forwarding.
    stop_features: CancellationToken,
}

impl LanguageServer {
    /// A service over a running engine and the inbox registry its feature listener fills.
    pub fn new(
        engine: EngineHandle,
        inboxes: InboxRegistry,
        tokenizer: Tokenizer,
        format: PromptFormat,
        defaults: RequestDefaults,
        identity: ServerIdentity,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                inboxes,
                converter: RequestConverter {
                    tokenizer,
                    format,
                    defaults,
                },
                identity,
                active: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                lifecycle: Lifecycle::new(),
                ttft: Histogram::default(),
                outcomes: Outcomes::default(),
            }),
        }
    }
}

impl Service for LanguageServer {
    const STOP_TAKING: StopTaking = StopTaking::ByRefusing;

    /// Refuses new requests from now on (in-flight ones finish); `Health` reports `DRAINING`.
    fn drain(&self) {
        self.inner.lifecycle.drain();
    }

    /// Requests with a live `Generate` stream.
    fn in_flight(&self) -> usize {
        self.inner.active().len()
    }

    /// Refuses new requests and waits until every feature forwarding task has ended.
    async fn close(&self) {
        self.inner.lifecycle.close().await;
    }
}

impl OpsSource for LanguageServer {
    /// Whether the engine thread runs.
    fn live(&self) -> bool {
        self.inner.engine.is_running()
    }

    fn readiness(&self) -> Readiness {
        self.inner.lifecycle.readiness(self.live())
    }

    /// The engine's gauges (the signals a language pool scales on) and the service's request
    /// counters.
    fn metrics(&self) -> String {
        let s = self.inner.engine.stats();
        let mut e = Exposition::new();
        e.gauge(
            "dvd_language_running_sequences",
            "Sequences in the running batch.",
            s.running as f64,
        )
        .gauge(
            "dvd_language_waiting_sequences",
            "Admitted requests waiting for KV cache space or a batch slot.",
            s.waiting as f64,
        )
        .gauge(
            "dvd_language_waiting_for_features",
            "Requests whose image features have not all arrived.",
            s.waiting_for_features as f64,
        )
        .gauge(
            "dvd_language_kv_blocks_used",
            "KV blocks held (running sequences and the reusable prefix cache).",
            s.blocks_used as f64,
        )
        .gauge(
            "dvd_language_kv_blocks_total",
            "KV blocks in the pool.",
            s.blocks_total as f64,
        )
        .gauge(
            "dvd_language_kv_blocks_in_use",
            "KV blocks held by requests (the prefix cache's reusable blocks left out).",
            s.blocks_in_use as f64,
        )
        .gauge(
            "dvd_language_kv_cache_usage_ratio",
            "KV blocks held by requests over blocks in the pool (reusable prefix-cache blocks \
             count as free).",
            s.blocks_in_use as f64 / s.blocks_total.max(1) as f64,
        )
        .gauge(
            "dvd_language_outstanding_tokens",
            "Prompt positions still to prefill plus tokens still to generate.",
            s.outstanding_tokens as f64,
        )
        .gauge(
            "dvd_language_prefix_cache_hit_ratio",
            "Prompt tokens served from the prefix cache over prompt tokens.",
            s.prefix_hit_rate,
        )
        .gauge(
            "dvd_language_prompt_tokens_per_second",
            "Recent prefill throughput.",
            s.prompt_tokens_per_s,
        )
        .gauge(
            "dvd_language_generation_tokens_per_second",
            "Recent decode throughput.",
            s.generation_tokens_per_s,
        )
        .gauge(
            "dvd_language_active_requests",
            "Generate streams open.",
            self.in_flight() as f64,
        )
        .gauge(
            "dvd_language_draining",
            "1 while the server finishes its requests before stopping.",
            f64::from(u8::from(self.inner.lifecycle.is_draining())),
        );
        e.histogram(
            "dvd_language_ttft_seconds",
            "Generate arrival to first token, on this server (feature wait and prefill included).",
            &self.inner.ttft,
        );
        self.inner.outcomes.render(
            &mut e,
            "dvd_language_requests_total",
            "Generate requests by how they ended.",
        );
        dvd_serve::telemetry::expose(&mut e);
        e.finish()
    }
}

impl Inner {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, ActiveRequest>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a request's bookkeeping when its stream goes away; cancels it in the engine if it had
/// not finished (the client disconnected).
struct StreamGuard {
    inner: Arc<Inner>,
    request_id: RequestId,
    id: u64,
    finished: bool,
    /// When `Generate` arrived, until its first token is counted.
    arrived: Option<Instant>,
    /// Whether the engine took the request (only those count as finished, failed or cancelled).
    admitted: bool,
    failed: bool,
    /// The request's span, ended with its stream.
    _span: Span,
}

impl StreamGuard {
    /// Counts the time to the first event, once.
    fn first_event(&mut self) {
        if let Some(arrived) = self.arrived.take() {
            self.inner.ttft.observe(arrived.elapsed());
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let entry = self.inner.active().remove(&self.request_id);
        if let Some(active) = entry {
            active.stop_features.cancel();
        }
        if !self.finished {
            tracing::debug!(request = %self.request_id, "Generate stream dropped; cancelling");
            self.inner.engine.cancel_later(self.id);
        }
        let outcome = if !self.admitted {
            Outcome::Refused
        } else if self.failed {
            Outcome::Failed
        } else if self.finished {
            Outcome::Finished
        } else {
            Outcome::Cancelled
        };
        self.inner.outcomes.count(outcome);
    }
}

/// The `Generate` response stream.
pub type GenerateStream = Pin<Box<dyn Stream<Item = Result<GenerateEvent, Status>> + Send>>;

fn response_stream(events: EventStream, guard: StreamGuard, return_ids: bool) -> GenerateStream {
    use std::collections::VecDeque;
    let state = (events, guard, VecDeque::new());
    Box::pin(futures::stream::unfold(
        state,
        move |(mut events, mut guard, mut queued)| async move {
            loop {
                if let Some(item) = queued.pop_front() {
                    return Some((item, (events, guard, queued)));
                }
                if guard.finished {
                    return None;
                }
                let Some(event) = events.recv().await else {
                    guard.finished = true;
                    guard.failed = true;
                    let status = Status::internal("the engine stopped before the request ended");
                    return Some((Err(status), (events, guard, queued)));
                };
                guard.first_event();
                let (items, last) = events::stream_items(event, return_ids);
                guard.finished = last;
                guard.failed |= items.iter().any(Result::is_err);
                queued.extend(items);
            }
        },
    ))
}

impl LanguageServer {
    /// Checks and queues one `Generate` request under `span` (its stream holds the span).
    async fn start_generate(
        &self,
        request: Request<GenerateRequest>,
        span: Span,
    ) -> Result<Response<GenerateStream>, Status> {
        let arrived = Instant::now();
        let inner = &self.inner;
        let refuse = |status: Status| {
            inner.outcomes.count(Outcome::Refused);
            status
        };
        if inner.lifecycle.is_draining() {
            return Err(refuse(Status::unavailable("the server is draining")));
        }
        let prepared = inner.converter.prepare(request.get_ref()).map_err(refuse)?;
        span.record("request", prepared.request_id.to_string());
        span.record("images", prepared.images);
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        {
            let mut active = inner.active();
            if active.contains_key(&prepared.request_id) {
                return Err(refuse(Status::already_exists(format!(
                    "request {} is already running",
                    prepared.request_id
                ))));
            }
            active.insert(
                prepared.request_id,
                ActiveRequest {
                    engine_id: id,
                    stop_features: stop.clone(),
                },
            );
        }
        // From here on the guard undoes the registration (and counts the outcome) on every exit.
        let mut guard = StreamGuard {
            inner: inner.clone(),
            request_id: prepared.request_id,
            id,
            finished: true,
            arrived: Some(arrived),
            admitted: false,
            failed: false,
            _span: span.clone(),
        };
        let inbox = if prepared.images > 0 {
            let images = u16::try_from(prepared.images)
                .map_err(|_| Status::invalid_argument("too many images"))?;
            Some(
                inner
                    .inboxes
                    .register(prepared.request_id, Some(images))
                    .map_err(|e| Status::already_exists(e.to_string()))?,
            )
        } else {
            None
        };
        let events = inner
            .engine
            .add(Submission::FeatureStream(FeatureStreamRequest {
                id,
                pieces: prepared.pieces,
                params: prepared.params,
                span: span.clone(),
            }))
            .await
            .map_err(|e| match e {
                AddError::Rejected(e) => Status::invalid_argument(e.to_string()),
                AddError::Stopped(e) => Status::unavailable(e.to_string()),
            })?;
        guard.finished = false;
        guard.admitted = true;
        if let Some(inbox) = inbox {
            let forwarding = features::forward_features(
                inbox,
                id,
                inner.engine.clone(),
                prepared.feature_timeout,
                stop,
            );
            inner.lifecycle.tasks().spawn(forwarding.instrument(span));
        }
        Ok(Response::new(response_stream(
            events,
            guard,
            prepared.return_token_ids,
        )))
    }
}

#[tonic::async_trait]
impl LanguageService for LanguageServer {
    type GenerateStream = GenerateStream;

    /// Runs in a `generate_request` span (the caller's `traceparent` its parent), which lives
    /// as long as the response stream.
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let span = info_span!(
            "generate_request",
            otel.kind = "server",
            request = field::Empty,
            images = field::Empty,
        );
        follow_metadata(&span, request.metadata());
        self.start_generate(request, span.clone())
            .instrument(span)
            .await
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let request_id: RequestId = request
            .get_ref()
            .request_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("request_id: {e}")))?;
        let entry = self.inner.active().get(&request_id).cloned();
        let Some(active) = entry else {
            return Ok(Response::new(CancelResponse { found: false }));
        };
        active.stop_features.cancel();
        let found = self
            .inner
            .engine
            .cancel(active.engine_id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(CancelResponse { found }))
    }

    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        let inner = &self.inner;
        // The same answer as the ops endpoint's /health/ready.
        let status = match self.readiness() {
            Readiness::Ready => ServingStatus::Serving,
            Readiness::Draining => ServingStatus::Draining,
            Readiness::NotServing => ServingStatus::NotServing,
        };
        let identity = &inner.identity;
        Ok(Response::new(HealthResponse {
            status: status as i32,
            model_id: identity.model_id.clone(),
            feature_address: identity.feature_address.clone(),
            feature_transport: match identity.feature_transport {
                TransportKind::Tcp => Transport::Tcp,
                TransportKind::Quic => Transport::Quic,
            } as i32,
            hidden_size: identity.hidden_size as u32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let s = self.inner.engine.stats();
        Ok(Response::new(StatsResponse {
            running_sequences: s.running as u32,
            waiting_sequences: s.waiting as u32,
            waiting_for_features: s.waiting_for_features as u32,
            kv_blocks_used: s.blocks_used as u32,
            kv_blocks_total: s.blocks_total as u32,
            kv_block_size: s.block_size as u32,
            prefix_cache_hit_rate: s.prefix_hit_rate,
            prompt_tokens_per_second: s.prompt_tokens_per_s,
            generation_tokens_per_second: s.generation_tokens_per_s,
            outstanding_tokens: s.outstanding_tokens,
        }))
    }
}
