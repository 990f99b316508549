//! What the front doors (OpenAI-compatible HTTP, public gRPC) ask of the gateway: run a chat
//! request and stream its events, list models, report health and metrics. [`crate::Gateway`]
//! implements it over the vision and language pools; tests implement it with fakes.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use dvd_proto::api::v1::{ChatEvent, ChatRequest, HealthResponse, Model};
use futures::Stream;

use crate::cluster::ClusterView;

/// The events of one chat request: deltas, then one `Done`; an error ends the stream early.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, GatewayError>> + Send>>;

/// Why a chat request failed, with what each front door tells its client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (bad JSON field, image, base64, limit...): HTTP 400,
    /// gRPC `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidRequest(String),
    /// No API key, or one the gateway does not know: HTTP 401, gRPC `UNAUTHENTICATED`.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request names a model this gateway does not serve: HTTP 404, gRPC `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// Too many requests in flight: HTTP 429 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`.
    #[error("{message}")]
    Overloaded {
        /// What is full.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// No healthy server can take the request: HTTP 503, gRPC `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// A server failed while serving it: HTTP 502, gRPC `UNAVAILABLE`.
    #[error("{0}")]
    Upstream(String),
    /// It took longer than allowed: HTTP 504, gRPC `DEADLINE_EXCEEDED`.
    #[error("{0}")]
    Timeout(String),
}

impl GatewayError {
    /// The HTTP status code.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_) => 400,
            Self::Unauthenticated(_) => 401,
            Self::NotFound(_) => 404,
            Self::Overloaded { .. } => 429,
            Self::Unavailable(_) => 503,
            Self::Upstream(_) => 502,
            Self::Timeout(_) => 504,
        }
    }

    /// The OpenAI error `type` string.
    pub fn openai_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::Unauthenticated(_) => "invalid_request_error",
            Self::NotFound(_) => "not_found_error",
            Self::Overloaded { .. } => "rate_limit_error",
            Self::Unavailable(_) | Self::Upstream(_) | Self::Timeout(_) => "server_error",
        }
    }

    /// The OpenAI error `code` string, where OpenAI has one for the case.
    pub fn openai_code(&self) -> Option<&'static str> {
        match self {
            Self::Overloaded { .. } => Some("rate_limit_exceeded"),
            Self::Unauthenticated(_) => Some("invalid_api_key"),
            _ => None,
        }
    }

    /// When the client may try again (HTTP `Retry-After`), for an overload.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::InvalidRequest(_) => tonic::Status::invalid_argument(message),
            Self::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Self::NotFound(_) => tonic::Status::not_found(message),
            Self::Overloaded { .. } => tonic::Status::resource_exhausted(message),
            Self::Unavailable(_) | Self::Upstream(_) => tonic::Status::unavailable(message),
            Self::Timeout(_) => tonic::Status::deadline_exceeded(message),
        }
    }
}

/// The gateway as the front doors see it.
#[async_trait]
pub trait ChatBackend: Send + Sync + 'static {
    /// Starts a chat request. Errors found before anything is streamed (validation, admission,
    /// no servers) come back here; later ones end the stream. Dropping the stream cancels the
    /// request everywhere.
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, GatewayError>;

    /// The models served.
    fn models(&self) -> Vec<Model>;

    /// Whether the gateway can serve.
    async fn health(&self) -> HealthResponse;

    /// Every pool member's health, load and recent answers.
    fn cluster(&self) -> ClusterView;

    /// Metrics in the Prometheus text exposition format.
    fn metrics_text(&self) -> String;
}
