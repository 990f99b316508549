//! A started server and the one way it stops: [`Running::shutdown`] drains it first.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dvd_proto::tls::GrpcTls;
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

/// What every server's gRPC listener, ops endpoint and drain are, whatever its role.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Mutual TLS on the gRPC listener: present this identity, admit only the gateway's
    /// certificate from the CA. Plaintext when `None`.
    pub grpc_tls: Option<GrpcTls>,
    /// Ops endpoint (`/metrics`, `/health/live`, `/health/ready`); none when `None`.
    pub ops_listen: Option<SocketAddr>,
    /// How [`Running::shutdown`] drains.
    pub drain: Drain,
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::time::{Instant, sleep};

    use super::*;
    use crate::Harness;

    /// A service whose in-flight count the test sets, recording what the harness did to it.
    #[derive(Debug, Default)]
    struct Fake<const CLOSING: bool> {
        in_flight: AtomicUsize,
        drained: AtomicBool,
        closed: AtomicBool,
    }

    impl<const CLOSING: bool> Service for Fake<CLOSING> {
        const STOP_TAKING: StopTaking = match CLOSING {
            true => StopTaking::ByClosingListeners,
            false => StopTaking::ByRefusing,
        };
        fn drain(&self) {
            self.drained.store(true, Ordering::Release);
        }
        fn in_flight(&self) -> usize {
            self.in_flight.load(Ordering::Acquire)
        }
        async fn close(&self) {
            self.closed.store(true, Ordering::Release);
        }
    }

    /// A server over `service` with one "listener" task that notes when it was told to stop.
    struct Started<S> {
        running: Running<S>,
        stopped_at: Arc<Mutex<Option<Instant>>>,
    }

    fn start<S: Service>(service: Arc<S>, delay_ms: u64, timeout_ms: u64) -> Started<S> {
        let mut harness = Harness::new();
        let stopped_at = Arc::new(Mutex::new(None));
        let (token, noted) = (harness.stop_token(), stopped_at.clone());
        harness.spawn("listener", async move {
            token.cancelled().await;
            *noted.lock().map_err(|_| "poisoned")? = Some(Instant::now());
            Ok::<(), &str>(())
        });
        let drain = Drain {
            delay: Duration::from_millis(delay_ms),
            timeout: Duration::from_millis(timeout_ms),
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        Started {
            running: harness.running(service, addr, None, (), drain),
            stopped_at,
        }
    }

    fn stopped(at: &Mutex<Option<Instant>>) -> Option<Instant> {
        *at.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[tokio::test]
    async fn a_refusing_service_keeps_its_listeners_until_its_requests_end() {
        let service = Arc::new(Fake::<false>::default());
        service.in_flight.store(2, Ordering::Release);
        let server = start(service.clone(), 0, 30_000);
        let ended = async {
            sleep(Duration::from_millis(300)).await;
            assert!(service.drained.load(Ordering::Acquire));
            assert_eq!(
                stopped(&server.stopped_at),
                None,
                "closed with requests in flight"
            );
            service.in_flight.store(0, Ordering::Release);
            Instant::now()
        };
        let ((), ended) = tokio::join!(server.running.shutdown(), ended);
        let closed = stopped(&server.stopped_at).expect("the listener was stopped");
        assert!(closed >= ended);
        assert!(service.closed.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_closing_service_closes_its_listeners_after_the_delay_then_waits() {
        let service = Arc::new(Fake::<true>::default());
        service.in_flight.store(1, Ordering::Release);
        let began = Instant::now();
        let server = start(service.clone(), 200, 30_000);
        let ended = async {
            sleep(Duration::from_millis(600)).await;
            service.in_flight.store(0, Ordering::Release);
            Instant::now()
        };
        let ((), ended) = tokio::join!(server.running.shutdown(), ended);
        let closed = stopped(&server.stopped_at).expect("the listener was stopped");
        assert!(
            closed - began >= Duration::from_millis(200),
            "closed before the delay"
        );
        assert!(closed < ended, "kept listening while its request ran");
        assert!(Instant::now() >= ended, "did not wait for the request");
        assert!(service.closed.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn the_drain_timeout_bounds_the_wait() {
        let service = Arc::new(Fake::<false>::default());
        service.in_flight.store(1, Ordering::Release);
        let began = Instant::now();
        let server = start(service.clone(), 0, 200);
        server.running.shutdown().await;
        let closed = stopped(&server.stopped_at).expect("the listener was stopped");
        assert!(closed - began >= Duration::from_millis(200));
        assert!(service.closed.load(Ordering::Acquire));
    }
}
