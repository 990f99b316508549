//! The sending side of the QUIC transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::{ClientTls, QuicTuning};
use crate::api::{
    Delivery, Destination, FeatureSender, FeatureStream, SenderConfig, TransportKind,
};
use crate::error::{Result, TransportError};
use crate::frame::{FrameHeader, MAX_ABORT_REASON, Tile};
use crate::reply::{Reply, ReplyAwaiter, cut_utf8};
use crate::request_id::RequestId;

/// How long a refused stream waits for the receiver's explanation after its writes were stopped.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// A stream open this long without a single datagram from the receiver, and ended without its
/// reply, shows a dead path: its connection is closed (see [`Liveness`]).
const SILENT_FOR: Duration = Duration::from_secs(1);

/// Sends features over QUIC: one verified TLS connection per destination, one stream per request.
#[derive(Debug)]
pub struct QuicFeatureSender {
    config: SenderConfig,
    tuning: QuicTuning,
    client: quinn::ClientConfig,
    /// Client endpoints, one per address family, made on first use.
    endpoints: Mutex<HashMap<bool, quinn::Endpoint>>,
    connections: tokio::sync::Mutex<HashMap<(String, String), quinn::Connection>>,
    tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QuicFeatureSender {
    /// A sender that trusts `tls`'s anchors, with the default [`QuicTuning`].
    pub fn new(config: SenderConfig, tls: ClientTls) -> Result<Self> {
        Self::new_tuned(config, tls, QuicTuning::default())
    }

    /// A sender with explicit flow-control and packet settings.
    pub fn new_tuned(config: SenderConfig, tls: ClientTls, tuning: QuicTuning) -> Result<Self> {
        let client = tls.quinn_config(&tuning)?;
        Ok(Self {
            config,
            tuning,
            client,
            endpoints: Mutex::new(HashMap::new()),
            connections: tokio::sync::Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        })
    }

    fn endpoint_for(&self, target: SocketAddr) -> Result<quinn::Endpoint> {
        let mut endpoints = lock(&self.endpoints);
        if let Some(e) = endpoints.get(&target.is_ipv6()) {
            return Ok(e.clone());
        }
        let local: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = self.tuning.bind_socket(local)?;
        let endpoint = quinn::Endpoint::new(
            self.tuning.endpoint_config()?,
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| TransportError::Config(format!("cannot start a QUIC client: {e}")))?;
        endpoints.insert(target.is_ipv6(), endpoint.clone());
        Ok(endpoint)
    }

    async fn connection(&self, destination: &Destination) -> Result<quinn::Connection> {
        let name = destination.tls_name();
        let key = (destination.address.clone(), name.clone());
        let mut connections = self.connections.lock().await;
        if let Some(c) = connections.get(&key)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connect_error = |detail: String| TransportError::Connect {
            destination: destination.address.clone(),
            detail,
        };
        let target = tokio::net::lookup_host(&destination.address)
            .await
            .map_err(|e| connect_error(e.to_string()))?
            .next()
            .ok_or_else(|| connect_error("address resolves to nothing".into()))?;
        let connecting = self
            .endpoint_for(target)?
            .connect_with(self.client.clone(), target, &name)
            .map_err(|e| connect_error(e.to_string()))?;
        let connection = tokio::time::timeout(self.config.connect_timeout, connecting)
            .await
            .map_err(|_| {
                connect_error(format!("timed out after {:?}", self.config.connect_timeout))
            })?
            .map_err(|e| match e {
                quinn::ConnectionError::TransportError(t) => TransportError::Tls(format!(
                    "handshake with {} failed: {t}",
                    destination.address
                )),
                other => connect_error(other.to_string()),
            })?;
        connections.insert(key, connection.clone());
        Ok(connection)
    }
}

#[async_trait]
impl FeatureSender for QuicFeatureSender {
    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    async fn open(
        &self,
        destination: &Destination,
        request: RequestId,
    ) -> Result<Box<dyn FeatureStream>> {
        let connection = self.connection(destination).await?;
        let (send, mut recv) =
            connection
                .open_bi()
                .await
                .map_err(|e| TransportError::ConnectionLost {
                    destination: destination.address.clone(),
                    detail: e.to_string(),
                })?;
        let liveness = Liveness::watch(&connection, destination);
        let (tx, reply) = oneshot::channel();
        self.tasks.spawn(async move {
            if let Ok(Some(r)) = Reply::read(&mut recv).await {
                let _ = tx.send(r);
            }
        });
        Ok(Box::new(QuicFeatureStream {
            destination: destination.address.clone(),
            send,
            id: request,
            sequence: 0,
            tiles: 0,
            bytes: 0,
            awaiter: ReplyAwaiter::new(destination.address.clone(), request, reply),
            reply_timeout: self.config.reply_timeout,
            liveness,
        }))
    }
}

/// Whether a request's connection heard from the receiver while the request's stream was open.
///
/// A QUIC connection does not notice a partition until its idle timeout (30 s): streams open
/// and writes are buffered as if nothing were wrong, and after the path heals retransmissions
/// may wait out a long backoff. So when a stream ends without its reply (cancelled because the
/// features never arrived, or failed) after [`SILENT_FOR`] in which not one datagram came back
/// (a live receiver acknowledges every flight), the connection is closed: the next request to
/// that destination connects afresh instead of queueing behind a dead connection.
#[derive(Debug)]
struct Liveness {
    connection: quinn::Connection,
    destination: String,
    received_at_open: u64,
    opened: Instant,
    answered: bool,
}

impl Liveness {
    fn watch(connection: &quinn::Connection, destination: &Destination) -> Self {
        Self {
            received_at_open: connection.stats().udp_rx.datagrams,
            connection: connection.clone(),
            destination: destination.address.clone(),
            opened: Instant::now(),
            answered: false,
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        if self.answered || self.opened.elapsed() < SILENT_FOR {
            return;
        }
        if self.connection.stats().udp_rx.datagrams == self.received_at_open {
            tracing::warn!(
                destination = %self.destination,
                silent_ms = self.opened.elapsed().as_millis() as u64,
                "no datagram from the receiver while a request was open; closing the connection"
            );
            self.connection
                .close(quinn::VarInt::from_u32(2), b"receiver silent");
        }
    }
}

/// One request's frames on its own QUIC stream.
#[derive(Debug)]
struct QuicFeatureStream {
    destination: String,
    send: quinn::SendStream,
    id: RequestId,
    sequence: u32,
    tiles: u32,
    bytes: u64,
    awaiter: ReplyAwaiter,
    reply_timeout: Duration,
    liveness: Liveness,
}

impl QuicFeatureStream {
    fn lost(&self, detail: String) -> TransportError {
        TransportError::ConnectionLost {
            destination: self.destination.clone(),
            detail,
        }
    }

    /// Waits up to `limit` for the receiver's reply.
    async fn await_reply(&mut self, limit: Duration) -> Result<Reply> {
        let reply = self
            .awaiter
            .wait(limit)
            .await?
            .ok_or_else(|| self.lost("stream closed without a reply".into()))?;
        self.liveness.answered = true;
        Ok(reply)
    }

    async fn write(&mut self, header: FrameHeader, payload: Bytes) -> Result<()> {
        let mut chunks = [Bytes::copy_from_slice(&header.encode()), payload];
        match self.send.write_all_chunks(&mut chunks).await {
            Ok(()) => {
                self.sequence += 1;
                Ok(())
            }
            Err(quinn::WriteError::Stopped(_)) => {
                // The receiver refused the request; its reply says why.
                let reply = self.await_reply(REFUSAL_GRACE).await?;
                Err(self.awaiter.refuse(reply))
            }
            Err(e) => Err(self.lost(e.to_string())),
        }
    }
}

#[async_trait]
impl FeatureStream for QuicFeatureStream {
    fn request_id(&self) -> RequestId {
        self.id
    }

    async fn send(&mut self, tile: Tile) -> Result<()> {
        // A closed reply channel needs no check here: the next write says why.
        self.awaiter.check()?;
        let header = FrameHeader::tile(self.id, self.sequence, &tile);
        header.check_fields()?;
        let len = tile.data.len() as u64;
        self.write(header, tile.data).await?;
        self.tiles += 1;
        self.bytes += len;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Delivery> {
        self.awaiter.check()?;
        let header = FrameHeader::end(self.id, self.sequence, self.tiles);
        self.write(header, Bytes::new()).await?;
        let _ = self.send.finish();
        let reply = self.await_reply(self.reply_timeout).await?;
        self.awaiter.conclude(reply, self.bytes)
    }

    async fn abort(mut self: Box<Self>, reason: &str) -> Result<()> {
        let reason = cut_utf8(reason, MAX_ABORT_REASON);
        let header = FrameHeader::abort(self.id, self.sequence, reason.as_bytes());
        let result = self
            .write(header, Bytes::copy_from_slice(reason.as_bytes()))
            .await;
        let _ = self.send.finish();
        result
    }
}
