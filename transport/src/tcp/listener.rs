//! The receiving side of the TCP transport.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::accept::accept_until;
use crate::api::{FeatureListener, ListenerConfig, TransportKind};
use crate::error::{Result, TransportError};
use crate::inbox::InboxRegistry;
use crate::reply::write_replies;
use crate::session::{Receiving, Session};
use crate::stats::ListenerStats;

/// Accepts TCP connections from vision servers and feeds their frames to an inbox registry.
#[derive(Debug)]
pub struct TcpFeatureListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    receiving: Receiving,
}

impl TcpFeatureListener {
    /// Binds `addr` (port 0 picks a free port; see [`FeatureListener::local_addr`]).
    pub async fn bind(
        addr: SocketAddr,
        registry: InboxRegistry,
        config: ListenerConfig,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            TransportError::Config(format!("cannot bind TCP feature listener on {addr}: {e}"))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| TransportError::Config(e.to_string()))?;
        Ok(Self {
            listener,
            local_addr,
            receiving: Receiving::new(registry, config),
        })
    }

    /// The next connection; a failed accept is retried after a pause.
    async fn accept(&self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "feature listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[async_trait]
impl FeatureListener for TcpFeatureListener {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn stats(&self) -> Arc<ListenerStats> {
        self.receiving.stats.clone()
    }

    async fn serve(self: Box<Self>, shutdown: CancellationToken) -> Result<()> {
        let serve = |(stream, peer), stop| {
            self.receiving.stats.connection();
            self.receiving.stats.stream();
            serve_connection(stream, peer, self.receiving.clone(), stop)
        };
        accept_until(&shutdown, || self.accept(), serve, || {}).await;
        Ok(())
    }
}

/// Reads frames from one connection until it ends, breaks or `shutdown` fires.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    receiving: Receiving,
    shutdown: CancellationToken,
) {
    super::tune_socket(&stream, receiving.config.socket_buffer);
    let (mut reader, writer) = stream.into_split();
    let (replies, rx) = mpsc::channel(receiving.config.reply_queue);
    let reader_done = CancellationToken::new();
    let write = write_replies(writer, rx, reader_done.clone());
    let read = async {
        let registry = receiving.registry.clone();
        let mut session = Session::new(registry, replies, peer.to_string(), false);
        receiving.pump(&mut reader, &mut session, &shutdown).await;
        // Dropping the session fails any request whose End frame never came.
        drop(session);
        reader_done.cancel();
    };
    tokio::join!(read, write);
}
