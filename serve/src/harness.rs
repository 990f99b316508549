//! [`Harness`]: how every server starts. It binds the gRPC listener (mutual TLS when configured,
//! `TCP_NODELAY` on every connection), starts the ops endpoint, owns the stop token and the task
//! set, and hands them to [`Running`], whose `shutdown` drains.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use dvd_proto::limits::{tuned_incoming, tuned_server};
use dvd_proto::tls::{GrpcTls, RequirePeer, secure_server};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::error::StartError;
use crate::ops::{OpsListener, OpsSource};
use crate::running::{Drain, Running, ServerSettings, Service};

/// The listeners and tasks of a server being started.
#[derive(Debug, Default)]
pub struct Harness {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Harness {
    /// A harness with no tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token cancelled when the server's listeners are to close.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` until it ends (a listener's task ends when the stop token is cancelled); an
    /// error is logged as `what` failing.
    pub fn spawn<E: Display>(
        &mut self,
        what: &'static str,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.tasks.spawn(async move {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "{what} failed");
            }
        });
    }

    /// Binds `addr` for `what` (say, "gRPC"); the listener and its bound address.
    pub async fn bind(
        addr: SocketAddr,
        what: &str,
    ) -> Result<(TcpListener, SocketAddr), StartError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(StartError::io(format!("binding {what} on {addr}")))?;
        let bound = listener
            .local_addr()
            .map_err(StartError::io(format!("reading the {what} address")))?;
        Ok((listener, bound))
    }

    /// Binds `addr` and serves gRPC on it until the stop token is cancelled: the routes
    /// `routes` builds around the peer check (with `tls`, only the gateway's certificate is
    /// admitted; without, anyone), over tuned HTTP/2 settings; the bound address.
    pub async fn serve_grpc(
        &mut self,
        addr: SocketAddr,
        tls: Option<&GrpcTls>,
        routes: impl FnOnce(RequirePeer) -> Routes,
    ) -> Result<SocketAddr, StartError> {
        let (listener, bound) = Self::bind(addr, "gRPC").await?;
        let (mut server, peer) = secure_server(tuned_server(), tls)?;
        let stop = self.stop.clone();
        let served = server
            .add_routes(routes(peer))
            .serve_with_incoming_shutdown(tuned_incoming(listener), async move {
                stop.cancelled().await;
            });
        self.spawn("gRPC server", served);
        Ok(bound)
    }

    /// Serves `service` as a vision or language server does, as `settings` say: the ops
    /// endpoint over it and the gRPC routes `routes` builds around the peer check; the running
    /// server.
    pub async fn serve<S: Service + OpsSource, D>(
        mut self,
        settings: &ServerSettings,
        service: Arc<S>,
        routes: impl FnOnce(RequirePeer) -> Routes,
        details: D,
    ) -> Result<Running<S, D>, StartError> {
        let ops_addr = self.serve_ops(settings.ops_listen, service.clone()).await?;
        let grpc_addr = self
            .serve_grpc(settings.listen, settings.grpc_tls.as_ref(), routes)
            .await?;
        Ok(self.running(service, grpc_addr, ops_addr, details, settings.drain))
    }

    /// Binds `addr` (when given) and serves the ops endpoint (`/metrics`, `/health/live`,
    /// `/health/ready`) over `source` until the stop token is cancelled; the bound address.
    async fn serve_ops(
        &mut self,
        addr: Option<SocketAddr>,
        source: Arc<dyn OpsSource>,
    ) -> Result<Option<SocketAddr>, StartError> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let listener = OpsListener::bind(addr)
            .await
            .map_err(StartError::io(format!(
                "binding the ops endpoint on {addr}"
            )))?;
        let bound = listener.local_addr();
        self.tasks.spawn(listener.serve(source, self.stop.clone()));
        Ok(Some(bound))
    }

    /// The started server, which [`Running::shutdown`] stops as `drain` says.
    pub fn running<S, D>(
        self,
        service: Arc<S>,
        grpc_addr: SocketAddr,
        ops_addr: Option<SocketAddr>,
        details: D,
        drain: Drain,
    ) -> Running<S, D> {
        Running {
            grpc_addr,
            ops_addr,
            details,
            service,
            drain,
            stop: self.stop,
            tasks: self.tasks,
        }
    }
}

/// Runs `load` (a model load) on the blocking pool; a panic is [`StartError::Join`].
pub async fn load_blocking<T, E>(
    what: &'static str,
    load: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StartError> + Send + 'static,
{
    tokio::task::spawn_blocking(load).await.map_err(|e| {
        E::from(StartError::Join {
            what,
            message: e.to_string(),
        })
    })?
}
