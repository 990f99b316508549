//! `VisionService` over gRPC: `Encode` decodes and tiles a request's images (and samples its
//! videos' frames, each then an image) on the CPU worker pool, serves what it can from the embedding cache, queues the rest on the batching encoder
//! thread and streams every tile's features to the language server the request names;
//! `Health` and `Stats` report on the server.
//!
//! Backpressure: a bounded number of requests may wait for preprocessing and a bounded number of
//! tiles for the encoder; beyond either, `Encode` fails at once with `RESOURCE_EXHAUSTED` so the
//! gateway can go elsewhere.

mod pipeline;
mod request;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use dvd_proto::common::v1::ServingStatus;
use dvd_proto::vision::v1::vision_service_server::VisionService;
use dvd_proto::vision::v1::{
    EncodeEvent, EncodeRequest, HealthRequest, HealthResponse, StatsRequest, StatsResponse,
};
use dvd_serve::ops::{OpsSource, Readiness};
use dvd_serve::telemetry::propagation::follow_metadata;
use dvd_serve::{Exposition, Histogram, Lifecycle, Outcome, Outcomes, Service, StopTaking};
use dvd_transport::{FeatureSender, TransportKind};
use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, field, info_span};

pub use request::RequestLimits;

use crate::engine::{CacheStats, EncoderHandle, FeatureCache};
use crate::model::VisionModel;
use crate::video::VideoDecoder;
use pipeline::{Preprocessing, RequestClock, Transfer, preprocess_images};

/// Admission limits of a vision server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Requests that may wait for, or be in, preprocessing at once.
    pub max_pending_requests: usize,
    /// Requests preprocessed at the same time (CPU workers).
    pub preprocess_workers: usize,
    /// Tiles that may wait for the encoder.
    pub max_queued_tiles: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_pending_requests: 64,
            preprocess_workers: 2,
            max_queued_tiles: 256,
        }
    }
}

/// Senders of the feature transport, one per protocol this server speaks.
#[derive(Debug, Clone)]
pub struct Senders {
    /// TCP sender.
    pub tcp: Arc<dyn FeatureSender>,
    /// QUIC sender; `None` when the server has no trust anchors for QUIC.
    pub quic: Option<Arc<dyn FeatureSender>>,
}

/// The `VisionService` implementation.
#[derive(Debug, Clone)]
pub struct VisionServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    model: Arc<VisionModel>,
    model_id: String,
    /// Model identity folded into cache keys: the id and the compute dtype.
    cache_identity: String,
    encoder: EncoderHandle,
    cache: Arc<Mutex<FeatureCache>>,
    video: VideoDecoder,
    senders: Senders,
    limits: RequestLimits,
    admission: Admission,
    pending: AtomicUsize,
    preprocess_slots: Semaphore,
    queued_requests: AtomicUsize,
    /// The drain flag and the tasks sending requests' features.
    lifecycle: Lifecycle,
    /// `Encode` arrival to its last feature handed to the transport.
    encode_latency: Histogram,
    outcomes: Outcomes,
}

impl Inner {
    fn cache_stats(&self) -> CacheStats {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats()
    }
}

impl VisionServer {
    /// A service over a loaded model and a running encoder thread; it decodes videos with the
    /// FFmpeg [`VideoDecoder::find`] finds (without one, videos are refused and images served).
    pub fn new(
        model: Arc<VisionModel>,
        model_id: String,
        encoder: EncoderHandle,
        cache: FeatureCache,
        senders: Senders,
        limits: RequestLimits,
        admission: Admission,
    ) -> Self {
        let video = VideoDecoder::find(limits.video.clone());
        if let Some(why) = video.unavailable() {
            tracing::warn!(reason = %why, "videos will be refused; images are served as ever");
        }
        Self {
            inner: Arc::new(Inner {
                cache_identity: format!("{model_id}|{:?}", model.options().dtype),
                model,
                model_id,
                encoder,
                cache: Arc::new(Mutex::new(cache)),
                video,
                senders,
                limits,
                preprocess_slots: Semaphore::new(admission.preprocess_workers.max(1)),
                admission,
                pending: AtomicUsize::new(0),
                queued_requests: AtomicUsize::new(0),
                lifecycle: Lifecycle::new(),
                encode_latency: Histogram::default(),
                outcomes: Outcomes::default(),
            }),
        }
    }
}

impl Service for VisionServer {
    const STOP_TAKING: StopTaking = StopTaking::ByRefusing;

    /// Refuses new requests from now on; `Health` reports `DRAINING`.
    fn drain(&self) {
        self.inner.lifecycle.drain();
    }

    /// Requests admitted and not yet done: waiting for or in preprocessing, or encoding and
    /// sending their features.
    fn in_flight(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
            + self.inner.queued_requests.load(Ordering::Acquire)
    }

    /// Refuses new requests and waits for every request in flight to end.
    async fn close(&self) {
        self.inner.lifecycle.close().await;
    }
}

impl OpsSource for VisionServer {
    /// Whether the encoder thread runs.
    fn live(&self) -> bool {
        self.inner.encoder.is_running()
    }

    fn readiness(&self) -> Readiness {
        self.inner.lifecycle.readiness(self.live())
    }

    /// The encoder's queue (the signal a vision pool scales on), the embedding cache and the
    /// service's request counters.
    fn metrics(&self) -> String {
        let inner = &self.inner;
        let s = inner.encoder.stats();
        let c = inner.cache_stats();
        let mut e = Exposition::new();
        e.gauge(
            "dvd_vision_queued_tiles",
            "Tiles waiting for the encoder.",
            s.queued_tiles as f64,
        )
        .gauge(
            "dvd_vision_running_tiles",
            "Tiles in the batch being encoded.",
            s.running_tiles as f64,
        )
        .gauge(
            "dvd_vision_queued_requests",
            "Encode requests admitted and not yet done.",
            self.in_flight() as f64,
        )
        .counter(
            "dvd_vision_tiles_encoded_total",
            "Tiles encoded since start.",
            s.encoded_tiles,
        )
        .counter(
            "dvd_vision_batches_total",
            "Encoder batches run since start.",
            s.batches,
        )
        .gauge(
            "dvd_vision_batch_latency_p50_seconds",
            "Median latency of recent encoder batches.",
            s.latency_p50_ms / 1e3,
        )
        .gauge(
            "dvd_vision_batch_latency_p99_seconds",
            "99th percentile latency of recent encoder batches.",
            s.latency_p99_ms / 1e3,
        )
        .gauge(
            "dvd_vision_cache_entries",
            "Images in the embedding cache.",
            c.entries as f64,
        )
        .gauge(
            "dvd_vision_cache_bytes",
            "Feature bytes in the embedding cache.",
            c.bytes as f64,
        )
        .counter(
            "dvd_vision_cache_hits_total",
            "Embedding-cache lookups that found the image.",
            c.hits,
        )
        .counter(
            "dvd_vision_cache_misses_total",
            "Embedding-cache lookups that did not.",
            c.misses,
        )
        .gauge(
            "dvd_vision_draining",
            "1 while the server finishes its requests before stopping.",
            f64::from(u8::from(inner.lifecycle.is_draining())),
        );
        e.histogram(
            "dvd_vision_encode_latency_seconds",
            "Encode arrival to its last feature sent (queueing, preprocessing, encoder, transfer).",
            &inner.encode_latency,
        );
        inner.outcomes.render(
            &mut e,
            "dvd_vision_requests_total",
            "Encode requests by how they ended.",
        );
        dvd_serve::telemetry::expose(&mut e);
        e.finish()
    }
}

/// Counts a request as pending preprocessing while it lives.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `Encode` response stream.
pub type EncodeStream = Pin<Box<dyn Stream<Item = Result<EncodeEvent, Status>> + Send>>;

impl VisionServer {
    /// Checks, preprocesses and queues one `Encode` request; its features stream on in the
    /// background. Runs in the request's span, which the background transfer keeps until it
    /// ends.
    async fn admit(
        &self,
        request: Request<EncodeRequest>,
    ) -> Result<Response<EncodeStream>, Status> {
        let arrived = Instant::now();
        let inner = &self.inner;
        if inner.lifecycle.is_draining() {
            return Err(Status::unavailable("the server is draining"));
        }
        let prepared = request::prepare(
            request.get_ref(),
            &inner.model.config().tiling,
            &inner.limits,
        )?;
        let span = Span::current();
        span.record("request", prepared.request_id.to_string());
        span.record("destination", prepared.destination.to_string());
        let sender = match prepared.transport {
            TransportKind::Tcp => inner.senders.tcp.clone(),
            TransportKind::Quic => inner.senders.quic.clone().ok_or_else(|| {
                Status::failed_precondition(
                    "this vision server has no QUIC trust anchors (start it with --tls-ca)",
                )
            })?,
        };
        let thresholds = inner
            .model
            .thresholds(prepared.routing)
            .map_err(|e| Status::invalid_argument(format!("options.vir: {e}")))?;
        // Fail fast when full, before any work.
        if inner.pending.fetch_add(1, Ordering::AcqRel) >= inner.admission.max_pending_requests {
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "{} requests are already waiting for preprocessing",
                inner.admission.max_pending_requests
            )));
        }
        let pending = Pending(&inner.pending);
        let queued = inner.encoder.stats().queued_tiles as usize;
        if queued >= inner.admission.max_queued_tiles {
            return Err(Status::resource_exhausted(format!(
                "{queued} tiles are waiting for the encoder (limit {})",
                inner.admission.max_queued_tiles
            )));
        }
        let permit = inner
            .preprocess_slots
            .acquire()
            .instrument(info_span!("queue_wait"))
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        let queue = arrived.elapsed();
        let started = Instant::now();
        // With the router on, a multi-image request is decided over all its tiles at once, so
        // its images are neither served from nor stored in the per-image cache.
        let cache_usable = thresholds.is_none() || prepared.image_count() == 1;
        let images = {
            let inner = inner.clone();
            let prepared = prepared.clone();
            let span = span.clone();
            tokio::task::spawn_blocking(move || {
                let ctx = Preprocessing {
                    model: &inner.model,
                    cache: &inner.cache,
                    model_identity: &inner.cache_identity,
                    video: &inner.video,
                    cache_usable,
                };
                span.in_scope(|| preprocess_images(&ctx, &prepared))
            })
            .await
            .map_err(|e| Status::internal(format!("preprocessing panicked: {e}")))??
        };
        let preprocess = started.elapsed();
        drop(permit);
        let new_tiles: usize = images
            .iter()
            .filter(|i| i.pixels.is_some())
            .map(|i| i.planned.tile_count as usize)
            .sum();
        let queued = inner.encoder.stats().queued_tiles as usize;
        // A request larger than the whole queue (a long video of many tiles per frame) is
        // admitted when the queue is empty, else it could never run.
        if new_tiles > 0 && queued > 0 && queued + new_tiles > inner.admission.max_queued_tiles {
            return Err(Status::resource_exhausted(format!(
                "{new_tiles} more tiles would exceed the encoder queue ({queued} of {} waiting)",
                inner.admission.max_queued_tiles
            )));
        }
        let stream = sender
            .open(&prepared.destination, prepared.request_id)
            .instrument(info_span!("open_feature_stream"))
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot stream features to {}: {e}",
                    prepared.destination
                ))
            })?;
        let (events, rx) = mpsc::unbounded_channel();
        let transfer = Transfer {
            prepared,
            images,
            thresholds,
            stream,
            encoder: inner.encoder.clone(),
            cache: inner.cache.clone(),
            cache_usable,
            hidden: inner.model.config().llm_hidden_size as u32,
            clock: RequestClock {
                arrived,
                queue,
                preprocess,
            },
            span: span.clone(),
        };
        inner.queued_requests.fetch_add(1, Ordering::AcqRel);
        // Counted as queued now, so the request is in flight without a gap (drain waits on it).
        drop(pending);
        let this = self.inner.clone();
        let transferring = async move {
            let outcome = pipeline::run(transfer, events).await;
            this.encode_latency.observe(arrived.elapsed());
            this.outcomes.count(outcome);
            this.queued_requests.fetch_sub(1, Ordering::AcqRel);
        };
        inner.lifecycle.tasks().spawn(transferring.instrument(span));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl VisionService for VisionServer {
    type EncodeStream = EncodeStream;

    /// Runs in an `encode_request` span, the caller's `traceparent` its parent.
    async fn encode(
        &self,
        request: Request<EncodeRequest>,
    ) -> Result<Response<Self::EncodeStream>, Status> {
        let span = info_span!(
            "encode_request",
            otel.kind = "server",
            images = request.get_ref().images.len(),
            request = field::Empty,
            destination = field::Empty,
        );
        follow_metadata(&span, request.metadata());
        let admitted = self.admit(request).instrument(span).await;
        if admitted.is_err() {
            self.inner.outcomes.count(Outcome::Refused);
        }
        admitted
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
        Ok(Response::new(HealthResponse {
            status: status as i32,
            model_id: inner.model_id.clone(),
            hidden_size: inner.model.config().llm_hidden_size as u32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let inner = &self.inner;
        let e = inner.encoder.stats();
        let c = inner.cache_stats();
        Ok(Response::new(StatsResponse {
            queued_requests: self.in_flight() as u32,
            queued_tiles: e.queued_tiles as u32,
            running_tiles: e.running_tiles as u32,
            encoded_tiles_total: e.encoded_tiles,
            encode_latency_p50_ms: e.latency_p50_ms,
            encode_latency_p99_ms: e.latency_p99_ms,
            cache_entries: c.entries,
            cache_bytes: c.bytes,
            cache_hits: c.hits,
            cache_misses: c.misses,
            max_batch_tiles: inner.encoder.config().max_batch_tiles as u32,
        }))
    }
}
