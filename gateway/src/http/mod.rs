//! The OpenAI-compatible HTTP API over a [`ChatBackend`](crate::ChatBackend):
//!
//! - `POST /v1/chat/completions`: chat completions, whole or streamed as server-sent events;
//!   with `[auth]` keys, every `/v1` route needs `Authorization: Bearer <key>` (401 without,
//!   429 over the key's rate);
//! - `GET /v1/models`, `GET /v1/models/{id}`: the served models;
//! - `GET /health` (also `/health/ready`): 200 when serving, 503 otherwise (no healthy server in
//!   a pool, or draining);
//! - `GET /health/live`: 200 while the process runs;
//! - `GET /v1/cluster`: every pool member's health, load, cache hit rate and last minute
//!   ([`ClusterView`]), for `dvd status`;
//! - `GET /metrics`: Prometheus text.
//!
//! Errors are OpenAI-style bodies, `{"error": {"message", "type", "param", "code"}}`.
//!
//! Files: `openai.rs` (wire types), `convert.rs` (request -> `dvd.api.v1.ChatRequest`),
//! `chat.rs` (the chat handler, non-streamed answers), `sse.rs` (streamed answers),
//! `error.rs` (error bodies).

mod chat;
pub(crate) mod convert;
mod error;
pub(crate) mod openai;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dvd_proto::common::v1::ServingStatus;

use crate::auth::{ApiKeys, bearer};
use crate::cluster::ClusterView;
use crate::{ChatBackend, GatewayError};
use error::ApiError;
use openai::{HealthBody, ModelCard, ModelList};

/// Limits and settings of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body accepted, in bytes; a larger one gets 413. Images travel inside
    /// the body as `data:` URLs, so this bounds them too. Default 32 MiB.
    pub max_body_bytes: usize,
    /// How often a streamed response sends an SSE comment while it waits for tokens (long
    /// prefills), so proxies and clients do not time the connection out; `None` sends none.
    /// Default 15 s.
    pub sse_keep_alive: Option<Duration>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            sse_keep_alive: Some(Duration::from_secs(15)),
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
struct AppState {
    backend: Arc<dyn ChatBackend>,
    limits: HttpLimits,
}

/// The OpenAI-compatible API over `backend`, open to all; serve it with `axum::serve`.
pub fn router(backend: Arc<dyn ChatBackend>, limits: HttpLimits) -> Router {
    router_with_auth(backend, limits, None)
}

/// The API with `/v1/*` behind `keys` (`Authorization: Bearer <key>` or `x-api-key`) when
/// given; health, readiness and metrics stay open.
pub fn router_with_auth(
    backend: Arc<dyn ChatBackend>,
    limits: HttpLimits,
    keys: Option<Arc<ApiKeys>>,
) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(list_models))
        .route("/v1/cluster", get(cluster))
        // Model ids hold slashes (`OpenGVLab/InternVL3_5-1B`).
        .route("/v1/models/{*id}", get(get_model));
    let api = match keys {
        Some(keys) => api.route_layer(middleware::from_fn_with_state(keys, require_key)),
        None => api,
    };
    api.route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(|| async { "live" }))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(AppState { backend, limits })
}

/// Lets a request through only with a valid key with room in its rate limit.
async fn require_key(
    State(keys): State<Arc<ApiKeys>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match keys.authorize(presented) {
        Ok(_) => next.run(request).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state
            .backend
            .models()
            .into_iter()
            .map(ModelCard::from)
            .collect(),
    })
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    state
        .backend
        .models()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| Json(ModelCard::from(m)))
        .ok_or_else(|| GatewayError::NotFound(format!("model {id:?} is not served here")).into())
}

async fn cluster(State(state): State<AppState>) -> Json<ClusterView> {
    Json(state.backend.cluster())
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthBody>) {
    let health = state.backend.health().await;
    let (code, status) = match health.status() {
        ServingStatus::Serving => (StatusCode::OK, "ok"),
        ServingStatus::NotServing => (StatusCode::SERVICE_UNAVAILABLE, "not_serving"),
        ServingStatus::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        ServingStatus::Unspecified => (StatusCode::SERVICE_UNAVAILABLE, "unknown"),
    };
    let body = HealthBody {
        status,
        vision_servers_ready: health.vision_servers_ready,
        language_servers_ready: health.language_servers_ready,
        version: health.version,
    };
    (code, Json(body))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.backend.metrics_text(),
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(&method, &uri)
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(&method, &uri)
}
