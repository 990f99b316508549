//! The receiving side of the QUIC transport.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{QuicTuning, ServerTls};
use crate::accept::accept_until;
use crate::api::{FeatureListener, ListenerConfig, TransportKind};
use crate::error::{Result, TransportError};
use crate::inbox::InboxRegistry;
use crate::reply::write_replies;
use crate::session::{Receiving, Session};
use crate::stats::ListenerStats;

/// QUIC application error code sent with STOP_SENDING when a stream's request failed.
pub(crate) const STREAM_REFUSED: u32 = 1;

/// Accepts QUIC connections from vision servers; each bidirectional stream carries one request.
#[derive(Debug)]
pub struct QuicFeatureListener {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    receiving: Receiving,
}

impl QuicFeatureListener {
    /// Binds `addr` with the default [`QuicTuning`], presenting `tls` to senders.
    pub fn bind(
        addr: SocketAddr,
        registry: InboxRegistry,
        config: ListenerConfig,
        tls: ServerTls,
    ) -> Result<Self> {
        Self::bind_tuned(addr, registry, config, tls, &QuicTuning::default())
    }

    /// Binds `addr` with explicit flow-control and packet settings.
    pub fn bind_tuned(
        addr: SocketAddr,
        registry: InboxRegistry,
        config: ListenerConfig,
        tls: ServerTls,
        tuning: &QuicTuning,
    ) -> Result<Self> {
        let server = tls.quinn_config(tuning)?;
        let socket = tuning.bind_socket(addr)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let endpoint =
            quinn::Endpoint::new(tuning.endpoint_config()?, Some(server), socket, runtime)
                .map_err(|e| TransportError::Config(format!("cannot start QUIC on {addr}: {e}")))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| TransportError::Config(e.to_string()))?;
        Ok(Self {
            endpoint,
            local_addr,
            receiving: Receiving::new(registry, config),
        })
    }
}

#[async_trait]
impl FeatureListener for QuicFeatureListener {
    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn stats(&self) -> Arc<ListenerStats> {
        self.receiving.stats.clone()
    }

    async fn serve(self: Box<Self>, shutdown: CancellationToken) -> Result<()> {
        accept_until(
            &shutdown,
            || self.endpoint.accept(),
            |incoming, stop| serve_connection(incoming, self.receiving.clone(), stop),
            || self.endpoint.close(0u32.into(), b"shutting down"),
        )
        .await;
        Ok(())
    }
}

/// Completes the handshake, then serves each stream the sender opens.
async fn serve_connection(
    incoming: quinn::Incoming,
    receiving: Receiving,
    shutdown: CancellationToken,
) {
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            return;
        }
    };
    receiving.stats.connection();
    let peer = connection.remote_address().to_string();
    let streams = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    receiving.stats.stream();
                    let fut = serve_stream(send, recv, receiving.clone(), peer.clone(), shutdown.clone());
                    streams.spawn(fut);
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "QUIC feature connection ended");
                    break;
                }
            },
        }
    }
    streams.close();
    streams.wait().await;
}

/// Reads one request's frames from a stream and answers on the same stream.
async fn serve_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    receiving: Receiving,
    peer: String,
    shutdown: CancellationToken,
) {
    let (replies, rx) = mpsc::channel(receiving.config.reply_queue.min(8));
    // The writer outlives the reader: a request that ended before anyone claimed it is answered
    // through the registry later, so it runs until every reply sender is gone.
    let write = write_replies(send, rx, shutdown.clone());
    let read = async {
        let registry = receiving.registry.clone();
        let mut session = Session::new(registry, replies, peer, true);
        receiving.pump(&mut recv, &mut session, &shutdown).await;
        // Whatever the sender still writes is refused at once; a finished stream ignores this.
        let _ = recv.stop(STREAM_REFUSED.into());
        drop(session);
    };
    tokio::join!(read, write);
}
