//! A running gateway: the pools' health checks, the OpenAI-compatible HTTP listener and the
//! public gRPC listener, stopped together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use dvd_proto::limits::{inference_server, tuned_incoming, tuned_server};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::backend::ChatBackend;
use crate::config::GatewayConfig;
use crate::gateway::Gateway;
use crate::grpc::InferenceApi;
use crate::http::{HttpLimits, router_with_auth};

/// A running gateway.
#[derive(Debug)]
pub struct RunningGateway {
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The gateway itself.
    pub gateway: Arc<Gateway>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningGateway {
    /// Stops the listeners and health checks and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.gateway.close().await;
    }

    /// Drains, then stops: reports `DRAINING` (`/health/ready` 503) while still serving for
    /// `delay`, so load balancers take the gateway out of rotation, then closes the listeners
    /// and lets the responses in flight finish for at most `timeout`.
    pub async fn drain_and_shutdown(mut self, delay: Duration, timeout: Duration) {
        self.gateway.drain();
        tokio::time::sleep(delay).await;
        self.stop.cancel();
        dvd_telemetry::drain::join_within(&mut self.tasks, timeout).await;
        self.gateway.close().await;
    }
}

/// Binds both listeners, runs a first round of checks and starts serving.
pub async fn start(config: GatewayConfig) -> std::io::Result<RunningGateway> {
    let http = TcpListener::bind(config.server.http).await?;
    let grpc = TcpListener::bind(config.server.grpc).await?;
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let limits = HttpLimits {
        max_body_bytes: config.limits.max_body_mib << 20,
        ..HttpLimits::default()
    };
    let gateway = Arc::new(Gateway::new(config).map_err(std::io::Error::other)?);
    let auth = gateway.auth();
    if let Some(keys) = &auth {
        tracing::info!(
            keys = keys.len(),
            "API keys required on /v1 and the gRPC API"
        );
    }
    gateway.refresh().await;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(gateway.clone().run_checks(stop.clone()));
    let backend: Arc<dyn ChatBackend> = gateway.clone();
    let app = router_with_auth(backend.clone(), limits, auth.clone());
    let token = stop.clone();
    tasks.spawn(async move {
        let served = axum::serve(nodelay(http), app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    let token = stop.clone();
    let api = InferenceApi::new(backend);
    tasks.spawn(async move {
        let served = tuned_server()
            .add_service(InterceptedService::new(
                inference_server(api),
                crate::grpc::require_key(auth),
            ))
            .serve_with_incoming_shutdown(tuned_incoming(grpc), async move {
                token.cancelled().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    tracing::info!(%http_addr, %grpc_addr, "gateway ready");
    Ok(RunningGateway {
        http_addr,
        grpc_addr,
        gateway,
        stop,
        tasks,
    })
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
