//! The public gRPC API (`dvd.api.v1.InferenceService`) over any [`ChatBackend`].

use std::pin::Pin;
use std::sync::Arc;

use dvd_proto::api::v1::inference_service_server::InferenceService;
use dvd_proto::api::v1::{
    ChatEvent, ChatRequest, HealthRequest, HealthResponse, ListModelsRequest, ListModelsResponse,
};
use dvd_serve::telemetry::propagation::follow_metadata;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{ApiKeys, bearer};
use crate::backend::ChatBackend;

/// `InferenceService` for a backend.
#[derive(Clone)]
pub struct InferenceApi {
    backend: Arc<dyn ChatBackend>,
}

impl std::fmt::Debug for InferenceApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceApi").finish_non_exhaustive()
    }
}

impl InferenceApi {
    /// The service over `backend`.
    pub fn new(backend: Arc<dyn ChatBackend>) -> Self {
        Self { backend }
    }
}

/// The `Chat` response stream.
pub type ChatEventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, Status>> + Send>>;

#[tonic::async_trait]
impl InferenceService for InferenceApi {
    type ChatStream = ChatEventStream;

    /// Runs in the request's span (a caller's `traceparent` metadata its parent).
    async fn chat(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let span = tracing::info_span!(
            "chat",
            otel.kind = "server",
            api = "grpc",
            request_id = tracing::field::Empty
        );
        follow_metadata(&span, request.metadata());
        let stream = self
            .backend
            .chat(request.into_inner())
            .instrument(span)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(Box::pin(
            stream.map(|item| item.map_err(|e| e.to_status())),
        )))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: self.backend.models(),
        }))
    }

    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(self.backend.health().await))
    }
}

/// The interceptor that checks a call's API key (`authorization: Bearer <key>` or `x-api-key`
/// metadata) when `keys` is set, and lets every call through when it is not.
pub fn require_key(
    keys: Option<Arc<ApiKeys>>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        if let Some(keys) = &keys {
            let metadata = request.metadata();
            let presented = metadata
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(bearer)
                .or_else(|| metadata.get("x-api-key").and_then(|v| v.to_str().ok()));
            keys.authorize(presented).map_err(|e| e.to_status())?;
        }
        Ok(request)
    }
}
