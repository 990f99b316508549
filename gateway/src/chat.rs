//! One chat request through the decoupled pipeline: validate and resolve images, pick a language
//! server (and, with images, a vision server), send `Generate` and `Encode` at the same time
//! with the language server's feature address in the encode request, and stream the tokens back.
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
    EncodeRequest, ImageInput, PreprocessOptions, encode_event, image_input,
};
use dvd_transport::RequestId;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Code, Status, Streaming};

use crate::backend::{ChatStream, GatewayError};
use crate::config::GatewayConfig;
use crate::fetch::FetchPolicy;
use crate::gateway::Gateway;
use crate::images::{ImageBytes, PendingImage, fetch_all, resolve};
use crate::metrics::{Metrics, Stage};
use crate::pool::{InflightGuard, Member, Pool};
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
pub(crate) async fn start(gw: &Gateway, request: ChatRequest) -> Result<ChatStream, GatewayError> {
    let arrived = Instant::now();
    let permit =
        gw.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded {
                message: format!(
                    "{} requests are in flight; try again shortly",
                    gw.config.limits.max_inflight
                ),
                retry_after: Duration::from_secs(1),
            })?;
    let deadline = Duration::from_secs(gw.config.limits.request_timeout_s.max(1));
    let checked = prepare(&gw.config, gw.fetcher.policy(), request)?;
    let prepared = tokio::time::timeout(deadline, checked.fetched(gw))
        .await
        .map_err(|_| {
            GatewayError::Timeout(format!(
                "images not fetched within {} s",
                deadline.as_secs()
            ))
        })??;
    let attempts = gw.config.limits.attempts.max(1);
    let mut tried_vision: Vec<std::net::SocketAddr> = Vec::new();
    let mut last_error = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            gw.metrics.retry();
        }
        let outcome = tokio::time::timeout(
            deadline.saturating_sub(arrived.elapsed()),
            try_once(gw, &prepared, &mut tried_vision),
        )
        .await
        .map_err(|_| {
            GatewayError::Timeout(format!("no first token within {} s", deadline.as_secs()))
        })?;
        match outcome {
            Ok(started) => return Ok(stream(gw, prepared, started, permit, arrived)),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                tracing::warn!(attempt, error = %e, "attempt failed; retrying");
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| GatewayError::Unavailable("no attempt was made".into())))
}

/// How one attempt ended before its first token.
enum Attempt {
    /// Worth trying again elsewhere.
    Retry(GatewayError),
    /// The request itself is at fault, or the error is final.
    Fatal(GatewayError),
}

/// An attempt that produced its first event.
struct Started {
    first: lang::GenerateEvent,
    events: Streaming<lang::GenerateEvent>,
    vision: VisionStage,
    _cancel_encode: Option<DropGuard>,
    _language: InflightGuard,
}

impl Prepared<PendingImage> {
    /// This request with every image as bytes (remote ones fetched concurrently).
    async fn fetched(self, gw: &Gateway) -> Result<Prepared, GatewayError> {
        let images = fetch_all(self.images, &gw.fetcher, &gw.config.limits).await?;
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
                    if images.len() == config.limits.max_images {
                        return Err(invalid(format!(
                            "more than {} images in one request",
                            config.limits.max_images
                        )));
                    }
                    let index = images.len();
                    images.push(resolve(
                        image,
                        index,
                        &config.images,
                        fetch,
                        &config.limits,
                    )?);
                    lang::content_part::Part::ImageIndex(index as u32)
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
fn pick(
    pool: &Pool,
    policy: &dyn Policy,
    affinity: Option<u64>,
    avoid: &[std::net::SocketAddr],
) -> Option<Arc<Member>> {
    let healthy = pool.healthy();
    let untried: Vec<Arc<Member>> = healthy
        .iter()
        .filter(|m| !avoid.contains(&m.addr))
        .cloned()
        .collect();
    let warm: Vec<Arc<Member>> = untried
        .iter()
        .filter(|m| !m.cooling_down())
        .cloned()
        .collect();
    // Members cooling down or already tried serve only when nothing else is healthy.
    let members = [warm, untried]
        .into_iter()
        .find(|m| !m.is_empty())
        .unwrap_or(healthy);
    let candidates: Vec<Candidate> = members
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

async fn try_once(
    gw: &Gateway,
    p: &Prepared,
    tried_vision: &mut Vec<std::net::SocketAddr>,
) -> Result<Started, Attempt> {
    let language = pick(
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
    let request_id = if tried_vision.is_empty() {
        p.id.clone()
    } else {
        RequestId::random().to_string()
    };
    let generate = lang::GenerateRequest {
        request_id: request_id.clone(),
        prompt: Some(lang::generate_request::Prompt::Chat(lang::ChatPrompt {
            messages: p.messages.clone(),
        })),
        images: p
            .images
            .iter()
            .map(|i| lang::ImageSlot {
                content_hash: bytes::Bytes::copy_from_slice(&i.hash),
                expected_tiles: 0,
            })
            .collect(),
        sampling: Some(p.sampling.clone()),
        feature_timeout_ms: gw.config.limits.feature_timeout_ms,
        return_token_ids: p.return_token_ids,
    };
    let mut client = language_client(language.channel.clone());
    let mut events = match client.generate(generate).await {
        Ok(r) => r.into_inner(),
        Err(s) if server_side(s.code()) => {
            language.mark_failed();
            return Err(Attempt::Retry(GatewayError::Upstream(format!(
                "language server {}: {}",
                language.addr,
                s.message()
            ))));
        }
        Err(s) => {
            return Err(Attempt::Fatal(GatewayError::InvalidRequest(
                s.message().into(),
            )));
        }
    };
    let mut vision = VisionStage::None;
    let mut vision_server = None;
    let mut cancel_encode = None;
    if !p.images.is_empty() {
        let image_key = key_of(&p.images[0].hash);
        let server = pick(
            &gw.vision,
            gw.vision_policy.as_ref(),
            Some(image_key),
            tried_vision,
        )
        .ok_or_else(|| {
            Attempt::Fatal(GatewayError::Unavailable("no healthy vision server".into()))
        })?;
        tried_vision.push(server.addr);
        vision_server = Some(server.clone());
        let Some((address, transport)) = language.state().feature_address else {
            return Err(Attempt::Retry(GatewayError::Unavailable(format!(
                "language server {} has not reported its feature address yet",
                language.addr
            ))));
        };
        let encode = EncodeRequest {
            request_id,
            images: p
                .images
                .iter()
                .map(|i| ImageInput {
                    source: Some(image_input::Source::Data(i.data.clone())),
                    content_hash: Some(bytes::Bytes::copy_from_slice(&i.hash)),
                })
                .collect(),
            options: Some(PreprocessOptions {
                max_tiles: p.images.iter().map(|i| i.max_tiles).max().unwrap_or(0),
                ..Default::default()
            }),
            destination: Some(FeatureDestination {
                address: reachable(&address, &language),
                transport,
                server_name: feature_tls_name(&gw.config),
            }),
        };
        let (tx, rx) = oneshot::channel();
        let token = CancellationToken::new();
        cancel_encode = Some(token.clone().drop_guard());
        let metrics = gw.metrics.clone();
        gw.tasks.spawn(async move {
            let guard = InflightGuard::new(server.clone());
            let result = tokio::select! {
                () = token.cancelled() => Err(Status::cancelled("request ended")),
                r = run_encode(&server, encode, &metrics) => r,
            };
            if let Err(s) = &result
                && matches!(s.code(), Code::Unavailable | Code::Unknown)
            {
                server.mark_failed();
            }
            drop(guard);
            let _ = tx.send(result);
        });
        vision = VisionStage::Pending(rx);
    }
    // Wait for the first token; a vision failure before it means another try.
    loop {
        tokio::select! {
            first = events.message() => {
                let first = match first {
                    Ok(Some(first)) => first,
                    Ok(None) => {
                        return Err(Attempt::Retry(GatewayError::Upstream(format!(
                            "language server {} ended the stream without an answer",
                            language.addr
                        ))));
                    }
                    Err(s) if s.code() == Code::InvalidArgument => {
                        return Err(Attempt::Fatal(GatewayError::InvalidRequest(
                            s.message().into(),
                        )));
                    }
                    Err(s) => {
                        if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal) {
                            language.mark_failed();
                        }
                        // The features never arrived: the vision server may be cut off from
                        // the language servers while its health check still passes.
                        if s.code() == Code::DeadlineExceeded
                            && let Some(server) = &vision_server
                        {
                            server.cool_down(gw.config.health.cooldown());
                        }
                        return Err(Attempt::Retry(GatewayError::Upstream(format!(
                            "language server {}: {}",
                            language.addr,
                            s.message()
                        ))));
                    }
                };
                return Ok(Started {
                    first,
                    events,
                    vision,
                    _cancel_encode: cancel_encode,
                    _language: language_guard,
                });
            }
            result = vision.wait(), if vision.is_pending() => {
                match result {
                    Ok(report) => vision = VisionStage::Done(report),
                    Err(s) if s.code() == Code::InvalidArgument => {
                        return Err(Attempt::Fatal(GatewayError::InvalidRequest(s.message().into())));
                    }
                    Err(s) => {
                        return Err(Attempt::Retry(GatewayError::Upstream(format!(
                            "vision stage failed: {}",
                            s.message()
                        ))));
                    }
                }
            }
        }
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
    server: &Member,
    request: EncodeRequest,
    metrics: &Metrics,
) -> Result<VisionReport, Status> {
    let hidden = u64::from(server.state().hidden_size);
    let mut client = vision_client(server.channel.clone());
    let mut stream = client.encode(request).await?.into_inner();
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
fn reachable(address: &str, language: &Member) -> String {
    match address.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::", port)) => {
            format!("{}:{port}", language.addr.ip())
        }
        _ => address.to_owned(),
    }
}

/// Everything a running request's stream holds until it ends.
struct Flow {
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
    _started: (Option<DropGuard>, InflightGuard, OwnedSemaphorePermit),
}

impl Flow {
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
        _cancel_encode,
        _language,
    } = started;
    let flow = Flow {
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
        _started: (_cancel_encode, _language, permit),
    };
    Box::pin(futures::stream::unfold(
        (flow, Some(first)),
        |(mut flow, mut first)| async move {
            loop {
                if let Some(item) = flow.pending.pop_front() {
                    return Some((item, (flow, first)));
                }
                if flow.finished {
                    return None;
                }
                let next = match first.take() {
                    Some(event) => Ok(Some(event)),
                    None => flow.events.message().await,
                };
                match next {
                    Ok(Some(event)) => flow.convert(event).await,
                    Ok(None) => {
                        flow.finished = true;
                        let e = GatewayError::Upstream(
                            "the language server ended the stream early".into(),
                        );
                        return Some((Err(e), (flow, first)));
                    }
                    Err(status) => {
                        flow.finished = true;
                        let e = GatewayError::Upstream(format!(
                            "the language server failed: {}",
                            status.message()
                        ));
                        return Some((Err(e), (flow, first)));
                    }
                }
            }
        },
    ))
}

/// Checks and converts `request` as the gateway does before routing it (model, roles, images
/// checked and limited, sampling defaults), without sending it anywhere or fetching image URLs.
pub fn check_request(config: &GatewayConfig, request: ChatRequest) -> Result<(), GatewayError> {
    let fetch = FetchPolicy::new(&config.images, &config.limits)
        .map_err(|e| GatewayError::InvalidRequest(format!("configuration: {e}")))?;
    prepare(config, &fetch, request).map(|_| ())
}
