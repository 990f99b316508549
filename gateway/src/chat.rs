//! One chat request through the decoupled pipeline: validate and resolve images and videos, pick
//! a language server (and, with images or videos, a vision server), send `Generate` and `Encode`
//! at the same time with the language server's feature address in the encode request, and stream
//! the tokens back. A video is one input to the vision server, which samples its frames; to the
//! language server its frames are consecutive images of a video part.
//!
//! Failures before the first token (a vision server that is down, full or dies mid-stream; a
//! language server that cannot be reached) are retried on other servers, with a new request id,
//! up to `limits.attempts` times; nothing has reached the client yet, so a retry is invisible to
//! it. After the first token, a failure ends the stream with an error. Dropping the returned
//! stream (the client went away) drops the `Generate` call, which cancels the request on the
//! language server, and cancels the `Encode` call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dvd_proto::api::v1::{
    ChatDelta, ChatDone, ChatEvent, ChatRequest, ChatTimings, chat_event, content_part,
};
use dvd_proto::feature::v1::FeatureDestination;
use dvd_proto::language::v1 as lang;
use dvd_proto::limits::{language_client, vision_client};
use dvd_proto::vision::v1::{
    EncodeRequest, ImageInput, PreprocessOptions, VideoOptions, encode_event, image_input,
};
use dvd_serve::telemetry::propagation::traced_request;
use dvd_transport::RequestId;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Code, Status, Streaming};
use tracing::{Instrument, Span, field, info_span};

use crate::backend::{ChatStream, GatewayError};
use crate::config::GatewayConfig;
use crate::fetch::FetchPolicy;
use crate::gateway::Gateway;
use crate::images::{ByteLimits, ImageBytes, PendingImage, fetch_all, resolve, resolve_video};
use crate::metrics::{Metrics, Stage};
use crate::pool::{InflightGuard, Language, Member, Pool, ServerKind, Vision};
use crate::routing::{Candidate, Policy, key_of};

/// A request checked and converted, ready to try on servers once its images are bytes
/// (`Prepared<PendingImage>` may still have URLs to fetch).
struct Prepared<I = ImageBytes> {
    messages: Vec<lang::ChatMessage>,
    images: Vec<I>,
    sampling: dvd_proto::common::v1::SamplingParams,
    return_token_ids: bool,
    /// Routing key for prefix-cache affinity (the conversation's first message).
    affinity: u64,
    model: String,
    id: String,
}

/// What the vision stage reported.
#[derive(Debug, Clone, Copy, Default)]
struct VisionReport {
    total: Duration,
}

/// Starts `request`; returns once its first token is known, or with the error that stopped it.
/// Runs in the request's span (the front door's), which lives as long as the answer's stream.
pub(crate) async fn start(gw: &Gateway, request: ChatRequest) -> Result<ChatStream, GatewayError> {
    let arrived = Instant::now();
    let permit = info_span!("admission", admitted = field::Empty).in_scope(|| {
        let permit = gw.admission.clone().try_acquire_owned();
        Span::current().record("admitted", permit.is_ok());
        permit.map_err(|_| GatewayError::Overloaded {
            message: format!(
                "{} requests are in flight; try again shortly",
                gw.config.limits.max_inflight
            ),
            retry_after: Duration::from_secs(1),
        })
    })?;
    let deadline = Duration::from_secs(gw.config.limits.request_timeout_s.max(1));
    let checked =
        info_span!("prepare").in_scope(|| prepare(&gw.config, gw.fetcher.policy(), request))?;
    Span::current().record("request_id", checked.id.as_str());
    let fetching = info_span!("fetch_images", images = checked.images.len());
    let prepared = tokio::time::timeout(deadline, checked.fetched(gw).instrument(fetching))
        .await
        .map_err(|_| {
            GatewayError::Timeout(format!(
                "images not fetched within {} s",
                deadline.as_secs()
            ))
        })??;
    let attempts = gw.config.limits.attempts.max(1);
    let mut tried_vision: Vec<std::net::SocketAddr> = Vec::new();
    let mut failed = 0;
    let mut busy = BusyBackoff::default();
    let timed_out =
        || GatewayError::Timeout(format!("no first token within {} s", deadline.as_secs()));
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = deadline.saturating_sub(arrived.elapsed());
        let attempt_span = info_span!("attempt", attempt);
        let outcome = tokio::time::timeout(
            left,
            try_once(gw, &prepared, attempt == 1, &mut tried_vision).instrument(attempt_span),
        )
        .await
        .map_err(|_| timed_out())?;
        match outcome {
            Ok(started) => return Ok(stream(gw, prepared, started, permit, arrived)),
            Err(Attempt::Fatal(e)) => return Err(e),
            // A full server is no failure: an admitted request waits for a slot (on any server
            // of the pool, that one included) until its deadline.
            Err(Attempt::Busy { error, vision }) => {
                if let Some(server) = vision {
                    tried_vision.retain(|a| *a != server);
                }
                gw.metrics.busy_wait();
                let wait = busy.next();
                if wait >= deadline.saturating_sub(arrived.elapsed()) {
                    tracing::warn!(error = %error, "still full at the request's deadline");
                    return Err(timed_out());
                }
                tokio::time::sleep(wait)
                    .instrument(info_span!("busy_wait", wait_ms = wait.as_millis() as u64))
                    .await;
            }
            Err(Attempt::Retry(e)) => {
                failed += 1;
                if failed >= attempts {
                    return Err(e);
                }
                gw.metrics.retry();
                tracing::warn!(attempt = failed, error = %e, "attempt failed; retrying");
            }
        }
    }
}

/// Waits of an admitted request between tries on a full pool: 10 ms doubling to 320 ms, each
/// spread by up to a half so that requests refused together do not come back together.
#[derive(Debug)]
struct BusyBackoff {
    next: Duration,
    jitter: u64,
}

impl Default for BusyBackoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(10),
            jitter: u64::from(std::process::id())
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos().into()),
        }
    }
}

impl BusyBackoff {
    const LONGEST: Duration = Duration::from_millis(320);

    /// The next wait.
    fn next(&mut self) -> Duration {
        // xorshift: a cheap spread, not randomness anyone relies on.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Self::LONGEST);
        base + base.mul_f64((self.jitter % 1000) as f64 / 2000.0)
    }
}

/// How one attempt ended before its first token.
enum Attempt {
    /// Worth trying again elsewhere.
    Retry(GatewayError),
    /// A server was full and said so (`RESOURCE_EXHAUSTED`): wait, then try again.
    Busy {
        /// What the server said, for the log.
        error: GatewayError,
        /// The full vision server, which may be tried again.
        vision: Option<std::net::SocketAddr>,
    },
    /// The request itself is at fault, or the error is final.
    Fatal(GatewayError),
}

/// An attempt that produced its first event.
struct Started {
    first: lang::GenerateEvent,
    events: Streaming<lang::GenerateEvent>,
    vision: VisionStage,
    /// Cancels the Encode call when dropped.
    cancel_encode: Option<DropGuard>,
    language: InflightGuard<Language>,
}

impl Prepared<PendingImage> {
    /// This request with every image as bytes (remote ones fetched concurrently).
    async fn fetched(self, gw: &Gateway) -> Result<Prepared, GatewayError> {
        let bytes = ByteLimits::new(&gw.config.limits, &gw.config.video);
        let images = fetch_all(self.images, &gw.fetcher, bytes).await?;
        Ok(Prepared {
            messages: self.messages,
            images,
            sampling: self.sampling,
            return_token_ids: self.return_token_ids,
            affinity: self.affinity,
            model: self.model,
            id: self.id,
        })
    }
}

fn prepare(
    config: &GatewayConfig,
    fetch: &FetchPolicy,
    request: ChatRequest,
) -> Result<Prepared<PendingImage>, GatewayError> {
    let invalid = |m: String| GatewayError::InvalidRequest(m);
    let served = &config.server.model;
    if !request.model.is_empty() && &request.model != served {
        return Err(GatewayError::NotFound(format!(
            "model {:?} is not served here (this gateway serves {served:?})",
            request.model
        )));
    }
    if request.messages.is_empty() {
        return Err(invalid("messages must not be empty".into()));
    }
    let mut images = Vec::new();
    // Images the language server receives: one per image, one per sampled video frame.
    let mut slots = 0u32;
    let (mut image_count, mut video_count) = (0, 0);
    let mut messages = Vec::with_capacity(request.messages.len());
    for (m, message) in request.messages.iter().enumerate() {
        if !matches!(message.role.as_str(), "system" | "user" | "assistant") {
            return Err(invalid(format!(
                "messages[{m}].role {:?} is not system, user or assistant",
                message.role
            )));
        }
        let mut parts = Vec::with_capacity(message.content.len());
        for part in &message.content {
            let part = match &part.part {
                Some(content_part::Part::Text(text)) => {
                    lang::content_part::Part::Text(text.clone())
                }
                Some(content_part::Part::Image(image)) => {
                    if image_count == config.limits.max_images {
                        return Err(invalid(format!(
                            "more than {} images in one request",
                            config.limits.max_images
                        )));
                    }
                    images.push(resolve(
                        image,
                        image_count,
                        &config.images,
                        fetch,
                        &config.limits,
                    )?);
                    image_count += 1;
                    slots += 1;
                    lang::content_part::Part::ImageIndex(slots - 1)
                }
                Some(content_part::Part::Video(video)) => {
                    if video_count == config.video.max_videos {
                        return Err(invalid(format!(
                            "more than {} videos in one request ([video] max_videos)",
                            config.video.max_videos
                        )));
                    }
                    let pending = resolve_video(
                        video,
                        video_count,
                        &config.images,
                        fetch,
                        &config.limits,
                        &config.video,
                    )?;
                    let frames = pending.video().map_or(0, |v| v.frames);
                    images.push(pending);
                    video_count += 1;
                    let first_image_index = slots;
                    slots += frames;
                    lang::content_part::Part::Video(lang::VideoFrames {
                        first_image_index,
                        frames,
                    })
                }
                None => return Err(invalid(format!("messages[{m}] has an empty part"))),
            };
            parts.push(lang::ContentPart { part: Some(part) });
        }
        messages.push(lang::ChatMessage {
            role: message.role.clone(),
            parts,
        });
    }
    let mut sampling = request.sampling.unwrap_or_default();
    if sampling.max_tokens == 0 {
        sampling.max_tokens = config.limits.default_max_tokens;
    }
    let first_text: String = request.messages[0]
        .content
        .iter()
        .filter_map(|p| match &p.part {
            Some(content_part::Part::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let id = match &request.request_id {
        Some(id) => {
            id.parse::<RequestId>()
                .map_err(|e| invalid(format!("request_id: {e}")))?;
            id.clone()
        }
        None => RequestId::random().to_string(),
    };
    Ok(Prepared {
        messages,
        images,
        sampling,
        return_token_ids: request.return_token_ids,
        affinity: key_of(first_text.as_bytes()),
        model: served.clone(),
        id,
    })
}

/// The TLS name vision servers verify language servers' QUIC feature listeners by: the
/// configured one, else with mutual TLS the language servers' certificate name, else empty
/// (the feature address's host).
fn feature_tls_name(config: &GatewayConfig) -> String {
    if !config.language.feature_tls_name.is_empty() || config.tls.ca_file.is_none() {
        config.language.feature_tls_name.clone()
    } else {
        config.tls.language_server_name.clone()
    }
}

/// The healthy member `policy` picks, skipping `avoid` and members cooling down while others
/// are left.
fn pick<K: ServerKind>(
    pool: &Pool<K>,
    policy: &dyn Policy<K::Load>,
    affinity: Option<u64>,
    avoid: &[std::net::SocketAddr],
) -> Option<Arc<Member<K>>> {
    let healthy = pool.healthy();
    let untried: Vec<Arc<Member<K>>> = healthy
        .iter()
        .filter(|m| !avoid.contains(&m.addr))
        .cloned()
        .collect();
    let warm: Vec<Arc<Member<K>>> = untried
        .iter()
        .filter(|m| !m.cooling_down())
        .cloned()
        .collect();
    // Members cooling down or already tried serve only when nothing else is healthy.
    let members = [warm, untried]
        .into_iter()
        .find(|m| !m.is_empty())
        .unwrap_or(healthy);
    let candidates: Vec<Candidate<K::Load>> = members
        .iter()
        .enumerate()
        .map(|(index, m)| Candidate {
            index,
            load: m.state().load,
            inflight: m.inflight.load(std::sync::atomic::Ordering::Acquire),
            identity: key_of(m.addr.to_string().as_bytes()),
        })
        .collect();
    let chosen = policy.choose(&candidates, affinity)?;
    members.get(chosen).cloned()
}

/// [`pick`] in a `route` span that records the pool and the member chosen.
fn route<K: ServerKind>(
    pool_name: &'static str,
    pool: &Pool<K>,
    policy: &dyn Policy<K::Load>,
    affinity: Option<u64>,
    avoid: &[std::net::SocketAddr],
) -> Option<Arc<Member<K>>> {
    let span = info_span!("route", pool = pool_name, server = field::Empty);
    let chosen = span.in_scope(|| pick(pool, policy, affinity, avoid));
    if let Some(member) = &chosen {
        span.record("server", member.addr.to_string());
    }
    chosen
}

/// Whether a gRPC failure is the server's (worth another server) rather than the request's.
fn server_side(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::FailedPrecondition
    )
}

/// One try of a prepared request: `Generate` on a language server and, with images, `Encode`
/// on a vision server beside it, until the first token.
async fn try_once(
    gw: &Gateway,
    p: &Prepared,
    first_try: bool,
    tried_vision: &mut Vec<std::net::SocketAddr>,
) -> Result<Started, Attempt> {
    let language = route(
        "language",
        &gw.language,
        gw.language_policy.as_ref(),
        Some(p.affinity),
        &[],
    )
    .ok_or_else(|| {
        Attempt::Fatal(GatewayError::Unavailable(
            "no healthy language server".into(),
        ))
    })?;
    let language_guard = InflightGuard::new(language.clone());
    // Every later try (a retry, or another try after a full server) runs under a new id: the
    // servers may still hold the earlier try's.
    let request_id = if first_try {
        p.id.clone()
    } else {
        RequestId::random().to_string()
    };
    let generate = generate_request(gw, p, request_id.clone());
    let mut events = start_generate(&language, generate).await?;
    let (vision_server, mut vision, cancel_encode) = if p.images.is_empty() {
        (None, VisionStage::None, None)
    } else {
        let encoding = start_encode(gw, p, &language, request_id, tried_vision)?;
        (
            Some(encoding.server),
            VisionStage::Pending(encoding.result),
            Some(encoding.cancel),
        )
    };
    let first = first_token(
        gw,
        &language,
        vision_server.as_deref(),
        &mut events,
        &mut vision,
    )
    .instrument(info_span!("wait_first_token"))
    .await?;
    Ok(Started {
        first,
        events,
        vision,
        cancel_encode,
        language: language_guard,
    })
}

/// The `Generate` call of an attempt.
fn generate_request(gw: &Gateway, p: &Prepared, request_id: String) -> lang::GenerateRequest {
    lang::GenerateRequest {
        request_id,
        prompt: Some(lang::generate_request::Prompt::Chat(lang::ChatPrompt {
            messages: p.messages.clone(),
        })),
        images: p.images.iter().flat_map(ImageBytes::slots).collect(),
        sampling: Some(p.sampling.clone()),
        feature_timeout_ms: gw.config.limits.feature_timeout_ms,
        return_token_ids: p.return_token_ids,
    }
}

/// Sends `Generate` to `language`; a server-side refusal is worth another try.
async fn start_generate(
    language: &Member<Language>,
    request: lang::GenerateRequest,
) -> Result<Streaming<lang::GenerateEvent>, Attempt> {
    let mut client = language_client(language.channel.clone());
    match client.generate(traced_request(request)).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == Code::ResourceExhausted => Err(Attempt::Busy {
            error: GatewayError::Unavailable(format!(
                "language server {}: {}",
                language.addr,
                s.message()
            )),
            vision: None,
        }),
        Err(s) if server_side(s.code()) => {
            language.mark_failed();
            Err(Attempt::Retry(GatewayError::Upstream(format!(
                "language server {}: {}",
                language.addr,
                s.message()
            ))))
        }
        Err(s) => Err(Attempt::Fatal(GatewayError::InvalidRequest(
            s.message().into(),
        ))),
    }
}

/// An `Encode` call running beside an attempt's `Generate` call.
struct Encoding {
    /// The vision server encoding.
    server: Arc<Member<Vision>>,
    /// The call's outcome once it ends.
    result: oneshot::Receiver<Result<VisionReport, Status>>,
    /// Cancels the call when dropped.
    cancel: DropGuard,
}

/// Picks a vision server not tried yet (the first image's hash as affinity) and starts
/// `Encode` on it, sending the features to `language`.
fn start_encode(
    gw: &Gateway,
    p: &Prepared,
    language: &Member<Language>,
    request_id: String,
    tried_vision: &mut Vec<std::net::SocketAddr>,
) -> Result<Encoding, Attempt> {
    let image_key = key_of(&p.images[0].hash);
    let server = route(
        "vision",
        &gw.vision,
        gw.vision_policy.as_ref(),
        Some(image_key),
        tried_vision,
    )
    .ok_or_else(|| Attempt::Fatal(GatewayError::Unavailable("no healthy vision server".into())))?;
    tried_vision.push(server.addr);
    let request = encode_request(&gw.config, p, language, request_id);
    Ok(spawn_encode(gw, server, request))
}

/// The `Encode` call of an attempt: every image, with `language`'s feature listener as the
/// destination.
fn encode_request(
    config: &GatewayConfig,
    p: &Prepared,
    language: &Member<Language>,
    request_id: String,
) -> EncodeRequest {
    let features = language.state().load.features;
    EncodeRequest {
        request_id,
        images: p
            .images
            .iter()
            .map(|i| ImageInput {
                source: Some(image_input::Source::Data(i.data.clone())),
                // A video's frames are keyed by their decoded content on the vision side.
                content_hash: i
                    .video
                    .is_none()
                    .then(|| bytes::Bytes::copy_from_slice(&i.hash)),
                video: i.video.map(|v| VideoOptions {
                    num_frames: v.frames,
                    max_tiles: v.max_tiles,
                }),
            })
            .collect(),
        options: Some(PreprocessOptions {
            max_tiles: p
                .images
                .iter()
                .filter(|i| i.video.is_none())
                .map(|i| i.max_tiles)
                .max()
                .unwrap_or(0),
            ..Default::default()
        }),
        destination: Some(FeatureDestination {
            address: reachable(&features.address, language),
            transport: features.transport,
            server_name: feature_tls_name(config),
        }),
    }
}

/// Runs `request` on `server` in the gateway's task set; a server that turns out unreachable
/// is marked failed.
fn spawn_encode(gw: &Gateway, server: Arc<Member<Vision>>, request: EncodeRequest) -> Encoding {
    let (tx, rx) = oneshot::channel();
    let token = CancellationToken::new();
    let cancel = token.clone().drop_guard();
    let metrics = gw.metrics.clone();
    let encoding_server = server.clone();
    let call = info_span!("encode_call", server = %server.addr, images = request.images.len());
    let task = async move {
        let guard = InflightGuard::new(server.clone());
        let result = tokio::select! {
            () = token.cancelled() => Err(Status::cancelled("request ended")),
            r = run_encode(&server, request, &metrics) => r,
        };
        match &result {
            Ok(_) => server.record_answer(),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown) => server.mark_failed(),
            Err(_) => {}
        }
        drop(guard);
        let _ = tx.send(result);
    };
    gw.lifecycle.tasks().spawn(task.instrument(call));
    Encoding {
        server: encoding_server,
        result: rx,
        cancel,
    }
}

/// Waits for the first token of `events`; a vision failure before it means another try.
async fn first_token(
    gw: &Gateway,
    language: &Member<Language>,
    vision_server: Option<&Member<Vision>>,
    events: &mut Streaming<lang::GenerateEvent>,
    vision: &mut VisionStage,
) -> Result<lang::GenerateEvent, Attempt> {
    loop {
        tokio::select! {
            first = events.message() => {
                return match first {
                    Ok(Some(first)) => Ok(first),
                    Ok(None) => Err(Attempt::Retry(GatewayError::Upstream(format!(
                        "language server {} ended the stream without an answer",
                        language.addr
                    )))),
                    Err(s) => Err(language_failure(gw, language, vision_server, &s)),
                };
            }
            result = vision.wait(), if vision.is_pending() => {
                match result {
                    Ok(report) => *vision = VisionStage::Done(report),
                    Err(s) => return Err(vision_failure(&s, vision_server.map(|v| v.addr))),
                }
            }
        }
    }
}

/// What a `Generate` stream that failed before its first token means for the attempt.
fn language_failure(
    gw: &Gateway,
    language: &Member<Language>,
    vision_server: Option<&Member<Vision>>,
    s: &Status,
) -> Attempt {
    if s.code() == Code::InvalidArgument {
        return Attempt::Fatal(GatewayError::InvalidRequest(s.message().into()));
    }
    if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal) {
        language.mark_failed();
    }
    // The features never arrived: the vision server may be cut off from the language servers
    // while its health check still passes.
    if s.code() == Code::DeadlineExceeded
        && let Some(server) = vision_server
    {
        server.cool_down(gw.config.health.cooldown());
    }
    let message = format!("language server {}: {}", language.addr, s.message());
    match s.code() {
        // A full server answered correctly: nothing broke, the request waits for room.
        Code::ResourceExhausted => Attempt::Busy {
            error: GatewayError::Unavailable(message),
            vision: None,
        },
        _ => Attempt::Retry(GatewayError::Upstream(message)),
    }
}

/// What a failed `Encode` call on `server` means for the attempt.
fn vision_failure(s: &Status, server: Option<std::net::SocketAddr>) -> Attempt {
    if s.code() == Code::InvalidArgument {
        Attempt::Fatal(GatewayError::InvalidRequest(s.message().into()))
    } else if s.code() == Code::ResourceExhausted {
        // A full vision server answered correctly: the request waits for a slot.
        Attempt::Busy {
            error: GatewayError::Unavailable(format!("vision stage is full: {}", s.message())),
            vision: server,
        }
    } else {
        Attempt::Retry(GatewayError::Upstream(format!(
            "vision stage failed: {}",
            s.message()
        )))
    }
}

/// The vision stage of an attempt.
enum VisionStage {
    /// No images.
    None,
    /// The Encode call is running.
    Pending(oneshot::Receiver<Result<VisionReport, Status>>),
    /// It finished.
    Done(VisionReport),
}

impl VisionStage {
    fn is_pending(&self) -> bool {
        matches!(self, Self::Pending(_))
    }

    /// The Encode call's outcome (only while pending).
    async fn wait(&mut self) -> Result<VisionReport, Status> {
        match self {
            Self::Pending(rx) => match rx.await {
                Ok(result) => result,
                Err(_) => Err(Status::internal("the encode call ended without a result")),
            },
            _ => std::future::pending().await,
        }
    }

    /// The report, waiting briefly for a call that is still finishing.
    async fn report(self) -> Option<VisionReport> {
        match self {
            Self::None => None,
            Self::Done(report) => Some(report),
            Self::Pending(rx) => tokio::time::timeout(Duration::from_secs(1), rx)
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(Result::ok),
        }
    }
}

/// Runs one Encode call to its end, recording its stages.
async fn run_encode(
    server: &Member<Vision>,
    request: EncodeRequest,
    metrics: &Metrics,
) -> Result<VisionReport, Status> {
    let hidden = u64::from(server.state().hidden_size);
    let mut client = vision_client(server.channel.clone());
    let mut stream = client.encode(traced_request(request)).await?.into_inner();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(encode_event::Event::Planned(planned)) => metrics.image(planned.cache_hit),
            Some(encode_event::Event::Done(done)) => {
                let t = done.timings.unwrap_or_default();
                let us = Duration::from_micros;
                metrics.stage(Stage::VisionQueue, us(t.queue_us));
                metrics.stage(Stage::Preprocess, us(t.preprocess_us));
                metrics.stage(Stage::Encode, us(t.encode_us));
                metrics.stage(Stage::Transfer, us(t.transfer_us));
                metrics.feature_bytes(u64::from(done.total_tokens) * hidden * 2);
                return Ok(VisionReport {
                    total: us(t.total_us),
                });
            }
            Some(encode_event::Event::Tile(_)) | None => {}
        }
    }
    Err(Status::internal(format!(
        "vision server {} ended the stream without EncodeDone",
        server.addr
    )))
}

/// The feature address to give a vision server: a wildcard host is replaced by the address the
/// gateway reaches the language server at.
fn reachable(address: &str, language: &Member<Language>) -> String {
    match address.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::", port)) => {
            format!("{}:{port}", language.addr.ip())
        }
        _ => address.to_owned(),
    }
}

/// What a running request holds until its stream ends: dropping it cancels the `Encode` call
/// and frees the language server's in-flight count and the admission permit.
struct Held {
    _cancel_encode: Option<DropGuard>,
    language: InflightGuard<Language>,
    _permit: OwnedSemaphorePermit,
}

/// Everything a running request's stream holds until it ends.
struct Flow {
    /// The attempt's first event, not converted yet.
    first: Option<lang::GenerateEvent>,
    events: Streaming<lang::GenerateEvent>,
    pending: VecDeque<Result<ChatEvent, GatewayError>>,
    vision: Option<VisionStage>,
    metrics: Arc<Metrics>,
    arrived: Instant,
    first_token: Duration,
    last_delta: Instant,
    sent_role: bool,
    finished: bool,
    id: String,
    model: String,
    created: u64,
    held: Held,
    /// The request's span, ended with the stream.
    _span: Span,
}

impl Flow {
    /// The client's next item; `None` once the stream has ended.
    async fn next_item(&mut self) -> Option<Result<ChatEvent, GatewayError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let next = match self.first.take() {
                Some(event) => Ok(Some(event)),
                None => self.events.message().await,
            };
            match next {
                Ok(Some(event)) => self.convert(event).await,
                Ok(None) => {
                    self.finished = true;
                    self.held.language.member().record_failure();
                    return Some(Err(GatewayError::Upstream(
                        "the language server ended the stream early".into(),
                    )));
                }
                Err(status) => {
                    self.finished = true;
                    self.held.language.member().record_failure();
                    return Some(Err(GatewayError::Upstream(format!(
                        "the language server failed: {}",
                        status.message()
                    ))));
                }
            }
        }
    }

    fn event(&self, event: chat_event::Event) -> ChatEvent {
        ChatEvent {
            id: self.id.clone(),
            created: self.created,
            model: self.model.clone(),
            event: Some(event),
        }
    }

    /// Converts one language-server event.
    async fn convert(&mut self, event: lang::GenerateEvent) {
        match event.event {
            Some(lang::generate_event::Event::Delta(d)) => {
                let now = Instant::now();
                if self.sent_role {
                    self.metrics.inter_token.observe(now - self.last_delta);
                }
                self.last_delta = now;
                let role = if self.sent_role { "" } else { "assistant" };
                self.sent_role = true;
                let delta = self.event(chat_event::Event::Delta(ChatDelta {
                    role: role.into(),
                    content: d.text,
                    token_ids: d.token_ids,
                }));
                self.pending.push_back(Ok(delta));
            }
            Some(lang::generate_event::Event::Done(done)) => {
                self.finished = true;
                self.held.language.member().record_answer();
                let t = done.timings.unwrap_or_default();
                let us = Duration::from_micros;
                self.metrics
                    .stage(Stage::FeatureWait, us(t.feature_wait_us));
                self.metrics.stage(Stage::Prefill, us(t.prefill_us));
                self.metrics.stage(Stage::Decode, us(t.decode_us));
                let vision = match self.vision.take() {
                    Some(stage) => stage.report().await,
                    None => None,
                };
                let total = self.arrived.elapsed();
                self.metrics.end_to_end.observe(total);
                let done = self.event(chat_event::Event::Done(ChatDone {
                    finish_reason: done.finish_reason,
                    usage: done.usage,
                    timings: Some(ChatTimings {
                        vision_us: vision.map_or(0, |v| v.total.as_micros() as u64),
                        feature_wait_us: t.feature_wait_us,
                        prefill_us: t.prefill_us,
                        decode_us: t.decode_us,
                        time_to_first_token_us: self.first_token.as_micros() as u64,
                        total_us: total.as_micros() as u64,
                    }),
                }));
                self.pending.push_back(Ok(done));
            }
            None => {}
        }
    }
}

/// The client's stream of a started request.
fn stream(
    gw: &Gateway,
    p: Prepared,
    started: Started,
    permit: OwnedSemaphorePermit,
    arrived: Instant,
) -> ChatStream {
    let first_token = arrived.elapsed();
    gw.metrics.ttft.observe(first_token);
    let Started {
        first,
        events,
        vision,
        cancel_encode,
        language,
    } = started;
    let flow = Flow {
        first: Some(first),
        events,
        pending: VecDeque::new(),
        vision: Some(vision),
        metrics: gw.metrics.clone(),
        arrived,
        first_token,
        last_delta: Instant::now(),
        sent_role: false,
        finished: false,
        id: format!("chatcmpl-{}", p.id),
        model: p.model,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        held: Held {
            _cancel_encode: cancel_encode,
            language,
            _permit: permit,
        },
        _span: Span::current(),
    };
    Box::pin(futures::stream::unfold(flow, |mut flow| async move {
        let item = flow.next_item().await?;
        Some((item, flow))
    }))
}

/// Checks and converts `request` as the gateway does before routing it (model, roles, images
/// checked and limited, sampling defaults), without sending it anywhere or fetching image URLs.
pub fn check_request(config: &GatewayConfig, request: ChatRequest) -> Result<(), GatewayError> {
    let fetch = FetchPolicy::new(&config.images, &config.limits)
        .map_err(|e| GatewayError::InvalidRequest(format!("configuration: {e}")))?;
    prepare(config, &fetch, request).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits double from 10 ms to the 320 ms cap, each spread by at most a half.
    #[test]
    fn busy_waits_grow_to_their_cap_with_a_bounded_spread() {
        let mut backoff = BusyBackoff::default();
        let mut base = Duration::from_millis(10);
        let mut spread = false;
        for _ in 0..12 {
            let wait = backoff.next();
            assert!(
                wait >= base && wait <= base.mul_f64(1.5),
                "{wait:?} from {base:?}"
            );
            spread |= wait > base;
            base = (base * 2).min(BusyBackoff::LONGEST);
        }
        assert_eq!(base, BusyBackoff::LONGEST);
        assert!(spread);
    }

    /// An image, a video of 8 frames and another image: the language prompt names images 0,
    /// 1-8 (the frames) and 9, and the vision request carries three inputs.
    #[test]
    fn frames_take_consecutive_image_slots_between_the_images() {
        use dvd_proto::api::v1::{Image, Message, Video, image, video};
        let config: GatewayConfig =
            toml::from_str("[language]\naddresses = [\"127.0.0.1:1\"]\n").unwrap();
        let fetch = FetchPolicy::new(&config.images, &config.limits).unwrap();
        let image = || dvd_proto::api::v1::ContentPart {
            part: Some(content_part::Part::Image(Image {
                source: Some(image::Source::Data(bytes::Bytes::from_static(b"png"))),
                max_tiles: None,
            })),
        };
        let video = || dvd_proto::api::v1::ContentPart {
            part: Some(content_part::Part::Video(Video {
                source: Some(video::Source::Data(bytes::Bytes::from_static(b"mp4"))),
                num_frames: None,
                max_tiles: None,
            })),
        };
        let request = |content| ChatRequest {
            messages: vec![Message {
                role: "user".into(),
                content,
            }],
            ..Default::default()
        };
        let prepared = prepare(&config, &fetch, request(vec![image(), video(), image()]))
            .unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<_> = prepared.messages[0]
            .parts
            .iter()
            .map(|p| p.part.clone().unwrap())
            .collect();
        assert_eq!(
            parts,
            [
                lang::content_part::Part::ImageIndex(0),
                lang::content_part::Part::Video(lang::VideoFrames {
                    first_image_index: 1,
                    frames: 8
                }),
                lang::content_part::Part::ImageIndex(9),
            ]
        );
        assert_eq!(prepared.images.len(), 3);
        let too_many = prepare(&config, &fetch, request(vec![video(), video(), video()]));
        assert!(
            too_many
                .err()
                .is_some_and(|e| e.to_string().contains("more than 2 videos")),
        );
    }
}
