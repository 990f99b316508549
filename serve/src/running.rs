//! A started server and the one way it stops: [`Running::shutdown`] drains it first.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::drain::drain_then_stop;

/// How a server stops on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// After turning not-ready, how long it keeps serving as before, so load balancers stop
    /// sending it new clients (a gateway's `--drain-delay-s`).
    pub delay: Duration,
    /// The longest wait for the requests in flight before stopping anyway.
    pub timeout: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            timeout: Duration::from_secs(30),
        }
    }
}

/// How a service stops taking new work once its drain delay is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopTaking {
    /// It refuses new calls itself (`UNAVAILABLE`, so the gateway retries elsewhere) and keeps
    /// its listeners open until its requests end: their tiles still arrive on the feature
    /// listener (vision and language servers).
    ByRefusing,
    /// Its listeners close; the requests in flight finish on the connections they have (the
    /// gateway, which holds nothing a request needs later).
    ByClosingListeners,
}

/// What the harness asks of the service a server runs.
pub trait Service: Send + Sync + 'static {
    /// How it stops taking new work.
    const STOP_TAKING: StopTaking;

    /// Turns not-ready (`/health/ready` 503, `Health` `DRAINING`); a [`StopTaking::ByRefusing`]
    /// service refuses new calls from now on.
    fn drain(&self);

    /// Requests in flight: the drain waits for them.
    fn in_flight(&self) -> usize;

    /// Releases what the service holds (engine threads, calls running beside requests) once
    /// its listeners have closed.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// A started server: its bound addresses, its service, and the tasks serving it.
#[derive(Debug)]
pub struct Running<S, D = ()> {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound ops endpoint address, when one was asked for.
    pub ops_addr: Option<SocketAddr>,
    /// What this kind of server adds (a language server's feature address, a gateway's HTTP
    /// address, the model directory it loaded).
    pub details: D,
    pub(crate) service: Arc<S>,
    pub(crate) drain: Drain,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: JoinSet<()>,
}

impl<S: Service, D> Running<S, D> {
    /// The service (for its counters and state).
    pub fn service(&self) -> &Arc<S> {
        &self.service
    }

    /// Drains, then stops: turns not-ready, keeps serving for the drain delay, stops taking new
    /// work ([`Service::STOP_TAKING`]), waits up to the drain timeout for the requests in
    /// flight, closes the listeners, joins every task and closes the service.
    pub async fn shutdown(mut self) {
        self.service.drain();
        if !self.drain.delay.is_zero() {
            tokio::time::sleep(self.drain.delay).await;
        }
        if S::STOP_TAKING == StopTaking::ByClosingListeners {
            self.stop.cancel();
        }
        let service = self.service.clone();
        drain_then_stop(
            || service.in_flight(),
            self.drain.timeout,
            &self.stop,
            &mut self.tasks,
        )
        .await;
        self.service.close().await;
    }
}
