//! The feature data plane of dvd: BF16 visual features travel from vision servers to language
//! servers as frames, one per tile, over TCP or QUIC.
//!
//! - [`frame`]: the 64-byte frame header and the [`Tile`] it describes.
//! - [`FeatureSender`] / [`FeatureStream`]: how a vision server sends a request's tiles.
//! - [`FeatureListener`] + [`InboxRegistry`] / [`Inbox`]: how a language server receives them,
//!   tile by tile and in order, while later tiles are still on the wire.
//! - [`reply`]: the receiver's one reply per request: its wire format, the listener side that
//!   writes replies and the sending side that awaits them.
//! - [`tcp`] and [`quic`]: the two implementations; [`connect`] and [`listen`] pick one.
//!
//! Bad input on the wire yields a typed error ([`FrameError`], [`InboxError`], a [`Reply`] status
//! for the sender) for the request or connection concerned; nothing panics and other requests
//! keep going.

mod accept;
pub mod api;
pub mod checksum;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbox;
mod io;
mod pool;
pub mod quic;
pub mod reply;
pub mod request_id;
mod session;
pub mod stats;
pub mod tcp;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

pub use api::{
    Delivery, Destination, FeatureListener, FeatureSender, FeatureStream, ListenerConfig,
    SenderConfig, TransportKind,
};
pub use error::{FrameError, InboxError, Result, TransportError};
pub use frame::{Tile, TilePosition};
pub use inbox::{Inbox, InboxConfig, InboxRegistry, RegistryStats};
pub use reply::{Reply, ReplyStatus};
pub use request_id::RequestId;
pub use stats::{ListenerCounts, ListenerStats};

/// TLS settings a QUIC listener or sender needs; ignored by TCP.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Server identity for a QUIC listener; a self-signed one for `localhost` when `None`.
    pub server: Option<quic::ServerTls>,
    /// Trust anchors for a QUIC sender. Required for QUIC senders.
    pub client: Option<quic::ClientTls>,
}

/// A sender of the given kind.
pub fn connect(
    kind: TransportKind,
    config: SenderConfig,
    tls: &TlsOptions,
) -> Result<Arc<dyn FeatureSender>> {
    Ok(match kind {
        TransportKind::Tcp => Arc::new(tcp::TcpFeatureSender::new(config)),
        TransportKind::Quic => {
            let client = tls.client.clone().ok_or_else(|| {
                TransportError::Config("a QUIC sender needs trust anchors (a CA file)".into())
            })?;
            Arc::new(quic::QuicFeatureSender::new(config, client)?)
        }
    })
}

/// A listener of the given kind bound to `addr`.
pub async fn listen(
    kind: TransportKind,
    addr: SocketAddr,
    registry: InboxRegistry,
    config: ListenerConfig,
    tls: &TlsOptions,
) -> Result<Box<dyn FeatureListener>> {
    Ok(match kind {
        TransportKind::Tcp => {
            Box::new(tcp::TcpFeatureListener::bind(addr, registry, config).await?)
        }
        TransportKind::Quic => {
            let server = match &tls.server {
                Some(server) => server.clone(),
                None => quic::ServerTls::self_signed(&["localhost".into()])?.0,
            };
            Box::new(quic::QuicFeatureListener::bind(
                addr, registry, config, server,
            )?)
        }
    })
}
