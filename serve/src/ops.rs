//! The operations endpoint of a server: plain HTTP beside its gRPC port, for orchestrators and
//! monitoring.
//!
//! - `GET /health/live`: 200 while the server's engine runs, else 503 (restart me);
//! - `GET /health/ready`: 200 while it takes new work, 503 while draining or not serving (send
//!   me nothing new);
//! - `GET /metrics`: Prometheus text.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether a server takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Taking new work.
    Ready,
    /// Finishing what it has, refusing anything new.
    Draining,
    /// Not able to serve (its engine stopped).
    NotServing,
}

impl Readiness {
    /// The readiness of a server whose engine is `live` and which is `draining` or not.
    pub fn of(live: bool, draining: bool) -> Self {
        match (live, draining) {
            (false, _) => Self::NotServing,
            (true, true) => Self::Draining,
            (true, false) => Self::Ready,
        }
    }

    /// The word `/health/ready` answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::NotServing => "not_serving",
        }
    }
}

/// What a server tells its ops endpoint.
pub trait OpsSource: Send + Sync + 'static {
    /// Whether the process is worth keeping (its engine thread runs).
    fn live(&self) -> bool;
    /// Whether it takes new work.
    fn readiness(&self) -> Readiness;
    /// Its metrics, Prometheus text.
    fn metrics(&self) -> String;
}

/// The ops routes over `source`.
pub fn router(source: Arc<dyn OpsSource>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(source)
}

async fn live(State(source): State<Arc<dyn OpsSource>>) -> (StatusCode, &'static str) {
    if source.live() {
        (StatusCode::OK, "live")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "engine stopped")
    }
}

async fn ready(State(source): State<Arc<dyn OpsSource>>) -> (StatusCode, &'static str) {
    let readiness = source.readiness();
    let code = match readiness {
        Readiness::Ready => StatusCode::OK,
        Readiness::Draining | Readiness::NotServing => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, readiness.as_str())
}

async fn metrics(State(source): State<Arc<dyn OpsSource>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        source.metrics(),
    )
}

/// A bound ops listener, not yet serving.
#[derive(Debug)]
pub struct OpsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl OpsListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `source` until `stop` is cancelled (the caller runs the future on its task set).
    pub async fn serve(self, source: Arc<dyn OpsSource>, stop: CancellationToken) {
        let served = axum::serve(self.listener, router(source))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops endpoint failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    struct Fixed(Mutex<Readiness>);

    impl OpsSource for Fixed {
        fn live(&self) -> bool {
            *self.0.lock().unwrap() != Readiness::NotServing
        }
        fn readiness(&self) -> Readiness {
            *self.0.lock().unwrap()
        }
        fn metrics(&self) -> String {
            "x_total 1\n".into()
        }
    }

    async fn get_status(app: &Router, path: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn probes_follow_the_server_state() {
        let source = Arc::new(Fixed(Mutex::new(Readiness::Ready)));
        let app = router(source.clone());
        assert_eq!(get_status(&app, "/health/ready").await.0, StatusCode::OK);
        assert_eq!(get_status(&app, "/health/live").await.0, StatusCode::OK);
        assert_eq!(get_status(&app, "/metrics").await.1, "x_total 1\n");

        *source.0.lock().unwrap() = Readiness::Draining;
        let (code, body) = get_status(&app, "/health/ready").await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        );
        assert_eq!(get_status(&app, "/health/live").await.0, StatusCode::OK);

        *source.0.lock().unwrap() = Readiness::NotServing;
        assert_eq!(
            get_status(&app, "/health/live").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
