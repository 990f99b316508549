//! The transport-independent interface: what a vision server sends through and what a language
//! server listens with. TCP and QUIC implement it; an RDMA implementation would too (see
//! `docs/transport.md`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::frame::{DEFAULT_MAX_FRAME_PAYLOAD, Tile};
use crate::request_id::RequestId;
use crate::stats::ListenerStats;

/// The wire protocol that carries features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Plain TCP: one connection per destination, frames of many requests interleaved on it.
    Tcp,
    /// QUIC over UDP with TLS 1.3: one connection per destination, one stream per request.
    Quic,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
        })
    }
}

impl FromStr for TransportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "quic" => Ok(Self::Quic),
            other => Err(format!(
                "unknown transport {other:?} (expected tcp or quic)"
            )),
        }
    }
}

/// Where a request's features go: a language server's feature listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// `host:port` of the listener.
    pub address: String,
    /// Name the QUIC client verifies in the server certificate; the host part of `address` when
    /// `None`.
    pub server_name: Option<String>,
}

impl Destination {
    /// A destination verified under the host name of its address.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            server_name: None,
        }
    }

    /// The TLS name to verify: `server_name`, else the host part of the address.
    pub fn tls_name(&self) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        let host = match self.address.rsplit_once(':') {
            Some((host, _port)) => host,
            None => &self.address,
        };
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// What the receiver confirmed for a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Tiles the receiver accepted.
    pub tiles: u32,
    /// Payload bytes sent.
    pub bytes: u64,
}

/// Opens per-request feature streams to language servers, pooling connections per destination.
#[async_trait]
pub trait FeatureSender: Send + Sync + fmt::Debug {
    /// The protocol this sender speaks.
    fn kind(&self) -> TransportKind;

    /// Starts streaming request `request`'s tiles to `destination`.
    async fn open(
        &self,
        destination: &Destination,
        request: RequestId,
    ) -> Result<Box<dyn FeatureStream>>;
}

/// One request's tiles on their way to a receiver.
#[async_trait]
pub trait FeatureStream: Send + fmt::Debug {
    /// The request this stream carries.
    fn request_id(&self) -> RequestId;

    /// Sends one tile without copying its payload. Fails fast if the receiver already refused
    /// the request.
    async fn send(&mut self, tile: Tile) -> Result<()>;

    /// Marks the end of the request and waits until the receiver confirms every tile.
    async fn finish(self: Box<Self>) -> Result<Delivery>;

    /// Tells the receiver this request's features will not come, so its consumer fails at once.
    async fn abort(self: Box<Self>, reason: &str) -> Result<()>;
}

/// Accepts feature connections and hands frames to an [`InboxRegistry`](crate::InboxRegistry).
#[async_trait]
pub trait FeatureListener: Send + fmt::Debug {
    /// The protocol this listener speaks.
    fn kind(&self) -> TransportKind;

    /// The bound address (useful after binding port 0).
    fn local_addr(&self) -> SocketAddr;

    /// Live counters; take the handle before [`serve`](Self::serve) consumes the listener.
    fn stats(&self) -> Arc<ListenerStats>;

    /// Serves until `shutdown` is cancelled; open connections are closed then.
    async fn serve(self: Box<Self>, shutdown: CancellationToken) -> Result<()>;
}

/// Settings of a sender.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Limit on establishing a connection (TCP connect, or QUIC handshake).
    pub connect_timeout: Duration,
    /// Limit on waiting for the receiver's verdict after the `End` frame.
    pub reply_timeout: Duration,
    /// SO_SNDBUF / SO_RCVBUF for TCP sockets, or the UDP socket buffers for QUIC; `None` keeps the
    /// kernel's default (TCP autotuning).
    pub socket_buffer: Option<usize>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(30),
            socket_buffer: None,
        }
    }
}

/// Settings of a listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Largest payload one frame may declare; larger frames close their connection or stream.
    pub max_frame_payload: u64,
    /// Socket buffer size, as for [`SenderConfig::socket_buffer`].
    pub socket_buffer: Option<usize>,
    /// Replies queued per connection; a sender that does not read them loses the excess.
    pub reply_queue: usize,
    /// Idle payload buffers kept for reuse across frames (each as large as the frames it held).
    pub pooled_buffers: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_frame_payload: DEFAULT_MAX_FRAME_PAYLOAD,
            socket_buffer: None,
            reply_queue: 256,
            pooled_buffers: 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_name_from_address() {
        assert_eq!(Destination::new("ls-0.lang:7001").tls_name(), "ls-0.lang");
        assert_eq!(Destination::new("[::1]:7001").tls_name(), "::1");
        let mut d = Destination::new("10.0.0.1:7001");
        d.server_name = Some("language".into());
        assert_eq!(d.tls_name(), "language");
        assert_eq!("QUIC".parse::<TransportKind>(), Ok(TransportKind::Quic));
        assert!("rdma".parse::<TransportKind>().is_err());
    }
}
