#![allow(clippy::unwrap_used)]
//! The OpenAI-compatible HTTP API over a scripted fake backend: request conversion, answers
//! whole and streamed, error bodies, models, health, metrics, and (over a real socket) SSE
//! framing and cancellation on disconnect.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use dvd_gateway::cluster::{ClusterView, MemberView};
use dvd_gateway::http::{HttpLimits, router};
use dvd_gateway::{ChatBackend, ChatStream, GatewayError};
use dvd_proto::api::v1::{
    ChatDelta, ChatDone, ChatEvent, ChatRequest, ChatTimings, ContentPart, HealthResponse, Image,
    Message, Model, Video, chat_event, content_part, image, video,
};
use dvd_proto::common::v1::{FinishReason, SamplingParams, ServingStatus, Usage};
use futures::Stream;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::common::serve_on;

// ---------------------------------------------------------------------------------------------
// The fake backend.

/// What the fake's chat streams yield.
#[derive(Clone)]
enum Script {
    /// These items, then the end.
    Items(Vec<Result<ChatEvent, GatewayError>>),
    /// A delta every 5 ms, forever.
    Endless,
}

struct Fake {
    script: Mutex<Script>,
    /// Wait before the first item.
    first_delay: Mutex<Duration>,
    /// `chat` fails with this.
    fail: Mutex<Option<GatewayError>>,
    health: Mutex<HealthResponse>,
    /// Every request `chat` got.
    requests: Mutex<Vec<ChatRequest>>,
    /// Chat streams dropped so far, and a signal per drop.
    drops: Arc<AtomicUsize>,
    dropped: Arc<Notify>,
}

impl Fake {
    fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script),
            first_delay: Mutex::new(Duration::ZERO),
            fail: Mutex::new(None),
            health: Mutex::new(HealthResponse {
                status: ServingStatus::Serving as i32,
                vision_servers_ready: 2,
                language_servers_ready: 1,
                version: "0.1.0".into(),
            }),
            requests: Mutex::new(Vec::new()),
            drops: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(Notify::new()),
        })
    }

    fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().unwrap().clone()
    }

    fn app(self: &Arc<Self>) -> Router {
        router(self.clone(), HttpLimits::default())
    }
}

/// Counts and signals the drop of the stream that owns it.
struct DropGuard {
    drops: Arc<AtomicUsize>,
    dropped: Arc<Notify>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        self.dropped.notify_one();
    }
}

struct Guarded {
    inner: ChatStream,
    _guard: DropGuard,
}

impl Stream for Guarded {
    type Item = Result<ChatEvent, GatewayError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[async_trait]
impl ChatBackend for Fake {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, GatewayError> {
        self.requests.lock().unwrap().push(request);
        if let Some(e) = self.fail.lock().unwrap().clone() {
            return Err(e);
        }
        let delay = *self.first_delay.lock().unwrap();
        let items: ChatStream = match self.script.lock().unwrap().clone() {
            Script::Items(items) => Box::pin(futures::stream::iter(items)),
            Script::Endless => Box::pin(futures::stream::unfold(0u32, |i| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let role = if i == 0 { "assistant" } else { "" };
                Some((Ok(delta(role, "tok ")), i + 1))
            })),
        };
        let delayed = futures::StreamExt::flatten(futures::stream::once(async move {
            tokio::time::sleep(delay).await;
            items
        }));
        Ok(Box::pin(Guarded {
            inner: Box::pin(delayed),
            _guard: DropGuard {
                drops: self.drops.clone(),
                dropped: self.dropped.clone(),
            },
        }))
    }

    fn models(&self) -> Vec<Model> {
        vec![
            Model {
                id: "OpenGVLab/InternVL3_5-1B".into(),
                owned_by: "dvd".into(),
                created: 1_700_000_000,
                max_model_len: 40_960,
            },
            Model {
                id: "internvl-small".into(),
                owned_by: "dvd".into(),
                created: 1_700_000_001,
                max_model_len: 8_192,
            },
        ]
    }

    async fn health(&self) -> HealthResponse {
        self.health.lock().unwrap().clone()
    }

    fn cluster(&self) -> ClusterView {
        ClusterView {
            vision: vec![MemberView {
                address: "10.0.0.5:50051".into(),
                healthy: true,
                load: 12,
                queue: 3,
                cache_hit_rate: 0.25,
                throughput: 1.5,
                errors_last_minute: 2,
                restarts: 1,
            }],
            language: Vec::new(),
        }
    }

    fn metrics_text(&self) -> String {
        "# TYPE dvd_requests_total counter\ndvd_requests_total 3\n".into()
    }
}

// ---------------------------------------------------------------------------------------------
// Events and requests.

fn event(event: chat_event::Event) -> ChatEvent {
    ChatEvent {
        id: "chatcmpl-42".into(),
        created: 1_700_000_123,
        model: "internvl".into(),
        event: Some(event),
    }
}

fn delta(role: &str, content: &str) -> ChatEvent {
    event(chat_event::Event::Delta(ChatDelta {
        role: role.into(),
        content: content.into(),
        token_ids: Vec::new(),
    }))
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: 300,
        completion_tokens: 2,
        total_tokens: 302,
        image_tokens: 256,
        cached_prompt_tokens: 16,
    }
}

fn done(reason: FinishReason) -> ChatEvent {
    event(chat_event::Event::Done(ChatDone {
        finish_reason: reason as i32,
        usage: Some(usage()),
        timings: Some(ChatTimings {
            vision_us: 10,
            feature_wait_us: 20,
            prefill_us: 30,
            decode_us: 40,
            time_to_first_token_us: 50,
            total_us: 60,
        }),
    }))
}

/// "Hello" in two deltas, then `reason`.
fn hello(reason: FinishReason) -> Script {
    Script::Items(vec![
        Ok(delta("assistant", "Hel")),
        Ok(delta("", "lo")),
        Ok(done(reason)),
    ])
}

fn minimal(extra: Value) -> String {
    let mut body = json!({
        "model": "internvl",
        "messages": [{"role": "user", "content": "Hi"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body.to_string()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Checks the OpenAI error shape and returns `error`.
    fn error(&self) -> Value {
        let body = self.json();
        let error = body["error"].clone();
        let keys: Vec<&str> = error
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 4, "{body}");
        for key in ["message", "type", "param", "code"] {
            assert!(keys.contains(&key), "no {key} in {body}");
        }
        assert!(
            error["message"].is_string() && error["type"].is_string(),
            "{body}"
        );
        error
    }

    /// The payloads of the `data:` lines.
    fn data(&self) -> Vec<String> {
        sse_data(&self.body)
    }
}

fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

async fn send(app: Router, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn post(app: Router, body: impl Into<Body>) -> Reply {
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    send(app, request).await
}

async fn get(app: Router, path: &str) -> Reply {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

fn text(t: &str) -> ContentPart {
    ContentPart {
        part: Some(content_part::Part::Text(t.into())),
    }
}

fn image_url(url: &str, max_tiles: Option<u32>) -> ContentPart {
    ContentPart {
        part: Some(content_part::Part::Image(Image {
            source: Some(image::Source::Url(url.into())),
            max_tiles,
        })),
    }
}

fn video_url(url: &str, num_frames: Option<u32>, max_tiles: Option<u32>) -> ContentPart {
    ContentPart {
        part: Some(content_part::Part::Video(Video {
            source: Some(video::Source::Url(url.into())),
            num_frames,
            max_tiles,
        })),
    }
}

fn message(role: &str, content: Vec<ContentPart>) -> Message {
    Message {
        role: role.into(),
        content,
    }
}

/// The one request the fake got.
fn only_request(fake: &Fake) -> ChatRequest {
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    requests.into_iter().next().unwrap()
}

fn sampling(fake: &Fake) -> SamplingParams {
    only_request(fake).sampling.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Request conversion.

#[tokio::test]
async fn text_and_image_parts_are_converted() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let body = json!({
        "model": "internvl",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "high"}},
                {"type": "image_url", "image_url": "https://example.com/cat.jpg"},
                {"type": "image_url", "image_url": {"url": "https://example.com/dog.jpg", "max_tiles": 4}},
                {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA", "num_frames": 16}},
                {"type": "video_url", "video_url": "https://example.com/clip.webm"},
                {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4", "max_tiles": 2}},
                {"type": "text", "text": "?"}
            ]},
            {"role": "assistant", "content": "A cat."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]}
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "user": "alice",
        "logit_bias": {"42": 1},
        "some_future_field": [1, 2, 3]
    });
    let reply = post(fake.app(), body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let expected = ChatRequest {
        model: "internvl".into(),
        messages: vec![
            message("system", vec![text("Be brief.")]),
            message(
                "user",
                vec![
                    text("What is in"),
                    image_url("data:image/png;base64,iVBORw0K", None),
                    image_url("https://example.com/cat.jpg", None),
                    image_url("https://example.com/dog.jpg", Some(4)),
                    video_url("data:video/mp4;base64,AAAA", Some(16), None),
                    video_url("https://example.com/clip.webm", None, None),
                    video_url("https://example.com/clip.mp4", None, Some(2)),
                    text("?"),
                ],
            ),
            message("assistant", vec![text("A cat.")]),
            message("system", vec![text("Answer in French.")]),
        ],
        sampling: Some(SamplingParams {
            temperature: 0.5,
            top_p: 0.9,
            seed: Some(7),
            presence_penalty: 0.5,
            frequency_penalty: -0.25,
            ..SamplingParams::default()
        }),
        user: "alice".into(),
        request_id: None,
        return_token_ids: false,
    };
    assert_eq!(only_request(&fake), expected);
}

#[tokio::test]
async fn string_content_and_defaults() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = post(fake.app(), minimal(json!({}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let request = only_request(&fake);
    assert_eq!(request.messages, vec![message("user", vec![text("Hi")])]);
    assert_eq!(request.user, "");
    // OpenAI's default temperature is 1 (0 on the wire would mean greedy); the rest is unset.
    assert_eq!(
        request.sampling.unwrap(),
        SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        }
    );
}

#[tokio::test]
async fn stop_as_string_or_array() {
    let fake = Fake::new(hello(FinishReason::Stop));
    post(fake.app(), minimal(json!({"stop": "###"}))).await;
    assert_eq!(sampling(&fake).stop, vec!["###"]);

    let fake = Fake::new(hello(FinishReason::Stop));
    post(fake.app(), minimal(json!({"stop": ["\n\n", "END"]}))).await;
    assert_eq!(sampling(&fake).stop, vec!["\n\n", "END"]);

    let fake = Fake::new(hello(FinishReason::Stop));
    post(fake.app(), minimal(json!({"stop": null}))).await;
    assert!(sampling(&fake).stop.is_empty());

    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = post(fake.app(), minimal(json!({"stop": ["a", ""]}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["param"], "stop");
    assert!(fake.requests().is_empty());

    let reply = post(fake.app(), minimal(json!({"stop": 5}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.error()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("stop"), "{message}");
}

#[tokio::test]
async fn max_completion_tokens_wins_over_max_tokens() {
    let fake = Fake::new(hello(FinishReason::Stop));
    post(
        fake.app(),
        minimal(json!({"max_tokens": 100, "max_completion_tokens": 7})),
    )
    .await;
    assert_eq!(sampling(&fake).max_tokens, 7);

    let fake = Fake::new(hello(FinishReason::Stop));
    post(fake.app(), minimal(json!({"max_tokens": 100}))).await;
    assert_eq!(sampling(&fake).max_tokens, 100);

    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = post(fake.app(), minimal(json!({"max_completion_tokens": 0}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["param"], "max_completion_tokens");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn vllm_style_extensions_are_converted() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let extra = json!({
        "top_k": 20,
        "repetition_penalty": 1.1,
        "stop_token_ids": [151645],
        "ignore_eos": true
    });
    post(fake.app(), minimal(extra)).await;
    let s = sampling(&fake);
    assert_eq!(
        (
            s.top_k,
            s.repetition_penalty,
            s.stop_token_ids,
            s.ignore_eos
        ),
        (20, 1.1, vec![151645], true)
    );

    let fake = Fake::new(hello(FinishReason::Stop));
    post(fake.app(), minimal(json!({"top_k": -1}))).await;
    assert_eq!(sampling(&fake).top_k, 0);
}

#[tokio::test]
async fn n_other_than_one_is_refused() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = post(fake.app(), minimal(json!({"n": 2}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.error();
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "n");
    assert!(fake.requests().is_empty(), "the backend must not be asked");

    let reply = post(fake.app(), minimal(json!({"n": 1}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn bad_field_values_are_refused_with_their_name() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let cases = [
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url", "image_url": "  "}]}]),
            "messages[1].content[0].image_url.url",
        ),
        (
            json!([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA", "num_frames": 0}}]}]),
            "messages[0].content[0].video_url.num_frames",
        ),
        (
            json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video_url", "video_url": {"url": ""}}]}]),
            "messages[0].content[1].video_url.url",
        ),
        (
            json!([{"role": "tool", "content": "42"}]),
            "messages[0].role",
        ),
        (json!([]), "messages"),
    ];
    for (messages, param) in cases {
        let body = json!({"model": "internvl", "messages": messages}).to_string();
        let reply = post(fake.app(), body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{param}");
        assert_eq!(reply.error()["param"], param);
    }
    for (field, value) in [
        ("temperature", json!(-1.0)),
        ("top_p", json!(0.0)),
        ("presence_penalty", json!(3.0)),
    ] {
        let reply = post(fake.app(), minimal(json!({field: value}))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(reply.error()["param"], field);
    }
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Body errors.

#[tokio::test]
async fn invalid_json_is_a_400_with_an_openai_body() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = post(fake.app(), r#"{"model": "internvl", "messages": ["#).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/json",
        "{:?}",
        reply.headers
    );
    let error = reply.error();
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["param"].is_null() && error["code"].is_null(),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("JSON"),
        "{error}"
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn wrong_types_and_missing_fields_name_the_field() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let cases = [
        (minimal(json!({"temperature": "hot"})), "temperature"),
        (json!({"model": "internvl"}).to_string(), "messages"),
        (
            json!({"model": "internvl", "messages": [{"role": "user", "content": 5}]}).to_string(),
            "messages[0].content",
        ),
        (
            json!({"model": "internvl", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})
                .to_string(),
            "messages[0].content[0]",
        ),
        (minimal(json!({"seed": -3})), "seed"),
    ];
    for (body, field) in cases {
        let reply = post(fake.app(), body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{field}");
        let message = reply.error()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(field), "{field}: {message}");
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn missing_content_type_is_a_415() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let request = Request::post("/v1/chat/completions")
        .body(Body::from(minimal(json!({}))))
        .unwrap();
    let reply = send(fake.app(), request).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.error()["type"], "invalid_request_error");
}

#[tokio::test]
async fn body_over_the_limit_is_a_413() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let limits = HttpLimits {
        max_body_bytes: 1024,
        ..HttpLimits::default()
    };
    let big = "x".repeat(4096);
    let body = json!({"model": "internvl", "messages": [{"role": "user", "content": big}]});
    let reply = post(router(fake.clone(), limits.clone()), body.to_string()).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = reply.error();
    assert_eq!(error["code"], "request_too_large");
    assert!(
        error["message"].as_str().unwrap().contains("1024"),
        "{error}"
    );
    assert!(fake.requests().is_empty());

    // A body under the limit passes.
    let reply = post(router(fake.clone(), limits), minimal(json!({}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// Backend errors.

#[tokio::test]
async fn overloaded_is_a_429_with_retry_after() {
    let fake = Fake::new(hello(FinishReason::Stop));
    *fake.fail.lock().unwrap() = Some(GatewayError::Overloaded {
        message: "256 requests in flight".into(),
        retry_after: Duration::from_millis(1500),
    });
    for stream in [false, true] {
        let reply = post(fake.app(), minimal(json!({"stream": stream}))).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers[header::RETRY_AFTER], "2");
        let error = reply.error();
        assert_eq!(error["type"], "rate_limit_error");
        assert_eq!(error["message"], "256 requests in flight");
    }
}

#[tokio::test]
async fn backend_errors_keep_their_status_and_type() {
    let cases = [
        (
            GatewayError::NotFound("no model x".into()),
            404,
            "not_found_error",
        ),
        (
            GatewayError::InvalidRequest("bad image".into()),
            400,
            "invalid_request_error",
        ),
        (
            GatewayError::Unavailable("no vision server".into()),
            503,
            "server_error",
        ),
        (
            GatewayError::Timeout("too slow".into()),
            504,
            "server_error",
        ),
    ];
    for (e, status, kind) in cases {
        let fake = Fake::new(hello(FinishReason::Stop));
        *fake.fail.lock().unwrap() = Some(e.clone());
        let reply = post(fake.app(), minimal(json!({}))).await;
        assert_eq!(reply.status.as_u16(), status, "{e}");
        assert!(reply.headers.get(header::RETRY_AFTER).is_none());
        let error = reply.error();
        assert_eq!(error["type"], kind);
        assert_eq!(error["message"], e.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// Whole answers.

#[tokio::test]
async fn non_stream_answer_is_aggregated() {
    let fake = Fake::new(hello(FinishReason::Length));
    let reply = post(fake.app(), minimal(json!({"stream": false}))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["id"], "chatcmpl-42");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["created"], 1_700_000_123);
    assert_eq!(body["model"], "internvl");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(
        choices[0]["message"],
        json!({"role": "assistant", "content": "Hello"})
    );
    assert_eq!(choices[0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": 300,
            "completion_tokens": 2,
            "total_tokens": 302,
            "prompt_tokens_details": {"cached_tokens": 16, "image_tokens": 256}
        })
    );
    assert_eq!(body["timings"]["total_us"], 60);
    assert_eq!(fake.drops.load(Ordering::SeqCst), 1);

    let fake = Fake::new(hello(FinishReason::Stop));
    let body = post(fake.app(), minimal(json!({}))).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn non_stream_failures_are_errors() {
    let cases = [
        (
            Script::Items(vec![
                Ok(delta("assistant", "Hel")),
                Err(GatewayError::Timeout("deadline".into())),
            ]),
            504,
        ),
        (hello(FinishReason::Error), 502),
        (hello(FinishReason::Cancelled), 503),
        // No `Done`.
        (Script::Items(vec![Ok(delta("assistant", "Hel"))]), 502),
    ];
    for (script, status) in cases {
        let fake = Fake::new(script);
        let reply = post(fake.app(), minimal(json!({}))).await;
        assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
        assert_eq!(reply.error()["type"], "server_error");
    }
}

// ---------------------------------------------------------------------------------------------
// Streamed answers.

fn chunk(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data:?}"))
}

#[tokio::test]
async fn stream_has_openai_chunks_with_usage() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let body = minimal(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let reply = post(fake.app(), body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        reply.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = reply.data();
    assert_eq!(data.len(), 6, "{data:#?}");
    let chunks: Vec<Value> = data[..5].iter().map(|d| chunk(d)).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-42");
        assert_eq!(c["created"], 1_700_000_123);
        assert_eq!(c["model"], "internvl");
    }
    // Role first, then content, then the finish reason with an empty delta.
    let choice = |i: usize| chunks[i]["choices"][0].clone();
    assert_eq!(
        choice(0)["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(choice(1)["delta"], json!({"content": "Hel"}));
    assert_eq!(choice(2)["delta"], json!({"content": "lo"}));
    assert_eq!(choice(3)["delta"], json!({}));
    for c in &chunks[..3] {
        assert!(c["choices"][0]["finish_reason"].is_null(), "{c}");
    }
    // With include_usage every other chunk has `"usage": null`.
    for c in &chunks[..4] {
        assert!(c.as_object().unwrap().contains_key("usage"), "{c}");
        assert!(c["usage"].is_null(), "{c}");
    }
    assert_eq!(choice(3)["finish_reason"], "stop");
    // Then usage alone.
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["prompt_tokens"], 300);
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
    assert_eq!(chunks[4]["usage"]["total_tokens"], 302);
    assert_eq!(data[5], "[DONE]");
    assert_eq!(fake.drops.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stream_without_usage_has_no_usage_chunk() {
    let fake = Fake::new(hello(FinishReason::Length));
    let reply = post(fake.app(), minimal(json!({"stream": true}))).await;
    let data = reply.data();
    assert_eq!(data.len(), 5, "{data:#?}");
    for d in &data[..4] {
        assert!(!chunk(d).as_object().unwrap().contains_key("usage"), "{d}");
    }
    let last = chunk(&data[3]);
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(data[4], "[DONE]");
}

#[tokio::test]
async fn error_mid_stream_ends_with_an_error_event() {
    let cases = [
        (
            Script::Items(vec![
                Ok(delta("assistant", "Hel")),
                Err(GatewayError::Upstream("language server went away".into())),
            ]),
            "language server went away",
        ),
        (
            hello(FinishReason::Error),
            "generation failed on the server",
        ),
        (
            Script::Items(vec![Ok(delta("assistant", "Hel"))]),
            "the response ended before generation finished",
        ),
    ];
    for (script, message) in cases {
        let fake = Fake::new(script);
        let reply = post(fake.app(), minimal(json!({"stream": true}))).await;
        assert_eq!(reply.status, StatusCode::OK);
        let data = reply.data();
        assert!(!data.iter().any(|d| d == "[DONE]"), "{data:#?}");
        assert_eq!(chunk(&data[0])["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunk(&data[1])["choices"][0]["delta"]["content"], "Hel");
        let last = chunk(data.last().unwrap());
        assert_eq!(last["error"]["message"], message, "{data:#?}");
        assert_eq!(last["error"]["type"], "server_error");
        assert!(last["error"].as_object().unwrap().contains_key("code"));
    }
}

#[tokio::test]
async fn stream_sends_keep_alive_comments_while_waiting() {
    let fake = Fake::new(hello(FinishReason::Stop));
    *fake.first_delay.lock().unwrap() = Duration::from_millis(300);
    let limits = HttpLimits {
        sse_keep_alive: Some(Duration::from_millis(20)),
        ..HttpLimits::default()
    };
    let reply = post(
        router(fake.clone(), limits),
        minimal(json!({"stream": true})),
    )
    .await;
    let before_first = reply.body.split("data: ").next().unwrap();
    assert!(
        before_first.lines().filter(|l| l.starts_with(':')).count() >= 2,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.data().last().unwrap(), "[DONE]");

    // Without keep-alive, nothing but data.
    let fake = Fake::new(hello(FinishReason::Stop));
    *fake.first_delay.lock().unwrap() = Duration::from_millis(100);
    let limits = HttpLimits {
        sse_keep_alive: None,
        ..HttpLimits::default()
    };
    let reply = post(
        router(fake.clone(), limits),
        minimal(json!({"stream": true})),
    )
    .await;
    assert!(
        !reply.body.lines().any(|l| l.starts_with(':')),
        "{:?}",
        reply.body
    );
}

// ---------------------------------------------------------------------------------------------
// Models, health, metrics, routes.

#[tokio::test]
async fn the_cluster_view_names_every_field_operators_read() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = get(fake.app(), "/v1/cluster").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"vision": [{"address": "10.0.0.5:50051", "healthy": true, "load": 12, "queue": 3,
                           "cache_hit_rate": 0.25, "throughput": 1.5, "errors_last_minute": 2,
                           "restarts": 1}],
               "language": []})
    );
}

#[tokio::test]
async fn models_are_listed() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = get(fake.app(), "/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"object": "list", "data": [
            {"id": "OpenGVLab/InternVL3_5-1B", "object": "model", "created": 1_700_000_000,
             "owned_by": "dvd", "max_model_len": 40_960},
            {"id": "internvl-small", "object": "model", "created": 1_700_000_001,
             "owned_by": "dvd", "max_model_len": 8_192},
        ]})
    );

    let reply = get(fake.app(), "/v1/models/OpenGVLab/InternVL3_5-1B").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["max_model_len"], 40_960);
    let reply = get(fake.app(), "/v1/models/other").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error()["type"], "not_found_error");
}

#[tokio::test]
async fn health_is_200_when_serving_and_503_otherwise() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = get(fake.app(), "/health").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "vision_servers_ready": 2, "language_servers_ready": 1,
               "version": "0.1.0"})
    );
    for (status, name) in [
        (ServingStatus::NotServing, "not_serving"),
        (ServingStatus::Draining, "draining"),
        (ServingStatus::Unspecified, "unknown"),
    ] {
        *fake.health.lock().unwrap() = HealthResponse {
            status: status as i32,
            vision_servers_ready: 0,
            language_servers_ready: 1,
            version: "0.1.0".into(),
        };
        let reply = get(fake.app(), "/health").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reply.json(),
            json!({"status": name, "vision_servers_ready": 0, "language_servers_ready": 1,
                   "version": "0.1.0"})
        );
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = get(fake.app(), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert_eq!(reply.body, fake.metrics_text());
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let reply = get(fake.app(), "/v1/completions/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let error = reply.error();
    assert_eq!(error["type"], "not_found_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("/v1/completions/nope"),
        "{error}"
    );

    let reply = get(fake.app(), "/v1/chat/completions").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error()["type"], "invalid_request_error");
}

// ---------------------------------------------------------------------------------------------
// Over a real socket.

/// Serves `app` on 127.0.0.1; the server stops when the returned set is dropped.
async fn serve(app: Router) -> (std::net::SocketAddr, JoinSet<()>) {
    serve_on([127, 0, 0, 1], |listener, _| async move {
        axum::serve(listener, app).await.unwrap();
    })
    .await
}

async fn send_raw(addr: std::net::SocketAddr, body: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = find(body, b"\r\n").unwrap();
        let size = std::str::from_utf8(&body[..end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        body = &body[end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        assert_eq!(&body[size..size + 2], b"\r\n");
        body = &body[size + 2..];
    }
}

#[tokio::test]
async fn sse_over_a_real_socket() {
    let fake = Fake::new(hello(FinishReason::Stop));
    let (addr, _server) = serve(fake.app()).await;
    let body = minimal(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let mut socket = send_raw(addr, &body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let split = find(&raw, b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..split])
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let payload = String::from_utf8(dechunk(&raw[split + 4..])).unwrap();
    // Events are separated by blank lines.
    assert!(payload.ends_with("data: [DONE]\n\n"), "{payload:?}");
    let data = sse_data(&payload);
    assert_eq!(data.len(), 6, "{payload:?}");
    assert_eq!(chunk(&data[0])["choices"][0]["delta"]["role"], "assistant");
    let text: String = data[1..3]
        .iter()
        .map(|d| {
            chunk(d)["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(chunk(&data[3])["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunk(&data[4])["usage"]["total_tokens"], 302);
    assert_eq!(fake.drops.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn disconnect_mid_stream_drops_the_backend_stream() {
    let fake = Fake::new(Script::Endless);
    let (addr, _server) = serve(fake.app()).await;
    let mut socket = send_raw(addr, &minimal(json!({"stream": true}))).await;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while raw.windows(6).filter(|w| w == b"data: ").count() < 4 {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server ended the endless stream");
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(find(&raw, br#""content":"tok ""#).is_some());
    assert_eq!(fake.drops.load(Ordering::SeqCst), 0, "still streaming");

    drop(socket);
    tokio::time::timeout(Duration::from_secs(10), fake.dropped.notified())
        .await
        .expect("the backend stream was not dropped after the client left");
    assert_eq!(fake.drops.load(Ordering::SeqCst), 1);
}

/// Sends `request` with `headers` added.
async fn send_with(app: Router, mut request: Request<Body>, headers: &[(&str, &str)]) -> Reply {
    for (name, value) in headers {
        request.headers_mut().insert(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    send(app, request).await
}

fn chat_request() -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(minimal(json!({}))))
        .unwrap()
}

#[tokio::test]
async fn api_keys_guard_v1_and_leave_probes_open() {
    use dvd_gateway::auth::ApiKeys;
    use dvd_gateway::config::AuthSection;
    use dvd_gateway::http::router_with_auth;

    let fake = Fake::new(hello(FinishReason::Stop));
    let keys = ApiKeys::load(&AuthSection {
        api_keys: vec!["team-a 9f2c6d1e5b8a4f70aa11".into()],
        requests_per_minute: 60,
        burst: 2,
        ..AuthSection::default()
    })
    .unwrap()
    .map(Arc::new);
    let app = router_with_auth(fake.clone(), HttpLimits::default(), keys);

    let missing = send_with(app.clone(), chat_request(), &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    let wrong = send_with(
        app.clone(),
        chat_request(),
        &[("authorization", "Bearer 9f2c6d1e5b8a4f70aa12")],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        !wrong.body.contains("9f2c6d1e5b8a4f70aa1"),
        "the key is echoed: {}",
        wrong.body
    );
    let models = send_with(
        app.clone(),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
        &[],
    )
    .await;
    assert_eq!(models.status, StatusCode::UNAUTHORIZED);
    assert!(
        fake.requests().is_empty(),
        "a refused request reached the backend"
    );

    // The right key, as a bearer token or as x-api-key; its burst of 2, then 429.
    for header in [
        ("authorization", "Bearer 9f2c6d1e5b8a4f70aa11"),
        ("x-api-key", "9f2c6d1e5b8a4f70aa11"),
    ] {
        let ok = send_with(app.clone(), chat_request(), &[header]).await;
        assert_eq!(ok.status, StatusCode::OK, "{header:?}: {}", ok.body);
    }
    let limited = send_with(
        app.clone(),
        chat_request(),
        &[("authorization", "bearer 9f2c6d1e5b8a4f70aa11")],
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(limited.headers[header::RETRY_AFTER], "1");
    assert!(limited.body.contains("team-a"), "{}", limited.body);
    assert_eq!(fake.requests().len(), 2);

    // Probes and scrapes need no key.
    for path in ["/health", "/health/ready", "/health/live", "/metrics"] {
        assert_eq!(
            get(app.clone(), path).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}
