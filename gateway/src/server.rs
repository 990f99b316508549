//! A running gateway: the pools' health checks, the OpenAI-compatible HTTP listener and the
//! public gRPC listener, started and stopped by the server harness (`dvd-serve`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::{Listener, ListenerExt};
use dvd_proto::limits::inference_server;
use dvd_serve::{Drain, Harness, Running, StartError};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use crate::backend::ChatBackend;
use crate::config::GatewayConfig;
use crate::gateway::{Gateway, SetupError};
use crate::grpc::InferenceApi;
use crate::http::{HttpLimits, router_with_auth};

/// What can stop a gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listeners or tasks could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The configuration's files (API keys, CA certificates) could not be loaded.
    #[error(transparent)]
    Config(#[from] SetupError),
    /// gRPC reflection could not be built from the compiled-in descriptors.
    #[error(transparent)]
    Reflection(#[from] crate::reflection::ReflectionError),
}

/// What a gateway adds to the addresses every server has.
#[derive(Debug, Clone, Copy)]
pub struct GatewayDetails {
    /// Bound HTTP address (the OpenAI-compatible API, health and metrics).
    pub http_addr: SocketAddr,
}

/// A running gateway.
pub type RunningGateway = Running<Gateway, GatewayDetails>;

/// Binds both listeners, runs a first round of checks and starts serving; `drain` says how
/// [`Running::shutdown`] stops.
pub async fn start(config: GatewayConfig, drain: Drain) -> Result<RunningGateway, ServeError> {
    let (http, http_addr) = Harness::bind(config.server.http, "HTTP").await?;
    let grpc_listen = config.server.grpc;
    let limits = HttpLimits {
        max_body_bytes: config.limits.max_body_mib << 20,
        ..HttpLimits::default()
    };
    let gateway = Arc::new(Gateway::new(config)?);
    let auth = gateway.auth();
    if let Some(keys) = &auth {
        tracing::info!(
            keys = keys.len(),
            "API keys required on /v1 and the gRPC API"
        );
    }
    gateway.refresh().await;
    let mut harness = Harness::new();
    let checks = gateway.clone().run_checks(harness.stop_token());
    harness.spawn("health checks", async move {
        checks.await;
        Ok::<(), std::convert::Infallible>(())
    });
    let backend: Arc<dyn ChatBackend> = gateway.clone();
    let app = router_with_auth(backend.clone(), limits, auth.clone());
    let stop = harness.stop_token();
    let http_served = axum::serve(nodelay(http), app)
        .with_graceful_shutdown(async move { stop.cancelled().await });
    harness.spawn("HTTP server", async move { http_served.await });
    let api = InferenceApi::new(backend);
    // Reflection describes the public API to anyone (grpcurl, Postman); calls still need a key.
    let routes = crate::reflection::with_reflection(Routes::new(InterceptedService::new(
        inference_server(api),
        crate::grpc::require_key(auth),
    )))?;
    let grpc_addr = harness
        .serve_grpc(grpc_listen, None, |_anyone| routes)
        .await?;
    tracing::info!(%http_addr, %grpc_addr, "gateway ready");
    Ok(harness.running(
        gateway,
        grpc_addr,
        None,
        GatewayDetails { http_addr },
        drain,
    ))
}

/// `listener` with `TCP_NODELAY` on every connection, so a streamed answer's first chunk
/// (written soon after the response headers) does not wait out the client's delayed ACK.
fn nodelay(listener: TcpListener) -> impl Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY on an HTTP connection");
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn http_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = nodelay(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }
}
