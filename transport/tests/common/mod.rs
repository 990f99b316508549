//! Shared helpers for the transport's integration tests: deterministic tiles and listeners on
//! 127.0.0.1 ports chosen at run time.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dvd_transport::quic::{ClientTls, QuicFeatureListener, QuicFeatureSender, ServerTls};
use dvd_transport::tcp::{TcpFeatureListener, TcpFeatureSender};
use dvd_transport::{
    Destination, FeatureListener, FeatureSender, InboxConfig, InboxRegistry, ListenerConfig,
    ListenerStats, SenderConfig, Tile, TilePosition, TransportKind,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A running listener; dropping it stops the listener.
pub struct Receiver {
    pub stats: Arc<ListenerStats>,
    pub registry: InboxRegistry,
    pub destination: Destination,
    pub client_tls: Option<ClientTls>,
    shutdown: CancellationToken,
    task: JoinSet<()>,
}

impl Receiver {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task.join_next())
            .await
            .expect("listener stops")
            .expect("listener task")
            .expect("listener task ends cleanly");
    }

    /// A sender that can reach this receiver.
    pub fn sender(&self, kind: TransportKind) -> Arc<dyn FeatureSender> {
        match kind {
            TransportKind::Tcp => Arc::new(TcpFeatureSender::new(SenderConfig::default())),
            TransportKind::Quic => Arc::new(
                QuicFeatureSender::new(SenderConfig::default(), self.client_tls.clone().unwrap())
                    .unwrap(),
            ),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn quick_inbox() -> InboxConfig {
    InboxConfig {
        claim_timeout: Duration::from_millis(300),
        ..InboxConfig::default()
    }
}

pub async fn start(kind: TransportKind, inbox: InboxConfig, config: ListenerConfig) -> Receiver {
    let registry = InboxRegistry::new(inbox);
    let addr = "127.0.0.1:0".parse().unwrap();
    let (listener, client_tls): (Box<dyn FeatureListener>, _) = match kind {
        TransportKind::Tcp => (
            Box::new(
                TcpFeatureListener::bind(addr, registry.clone(), config)
                    .await
                    .unwrap(),
            ),
            None,
        ),
        TransportKind::Quic => {
            let (server, client) = ServerTls::self_signed(&["localhost".into()]).unwrap();
            (
                Box::new(
                    QuicFeatureListener::bind(addr, registry.clone(), config, server).unwrap(),
                ),
                Some(client),
            )
        }
    };
    let mut destination = Destination::new(listener.local_addr().to_string());
    destination.server_name = Some("localhost".into());
    let stats = listener.stats();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut task = JoinSet::new();
    task.spawn(async move {
        listener.serve(stop).await.unwrap();
    });
    Receiver {
        stats,
        registry,
        destination,
        client_tls,
        shutdown,
        task,
    }
}

pub async fn start_default(kind: TransportKind) -> Receiver {
    start(kind, quick_inbox(), ListenerConfig::default()).await
}

/// Tile `tile` of image `image` with a byte pattern unique to (`salt`, image, tile).
pub fn tile(
    salt: u8,
    image: u16,
    images: u16,
    tile: u16,
    tiles: u16,
    tokens: u32,
    hidden: u32,
) -> Tile {
    let len = Tile::expected_len(tokens, hidden) as usize;
    let data: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(u32::from(salt) * 7 + u32::from(image) * 31 + u32::from(tile) * 131)
                as u8
        })
        .collect();
    let pos = TilePosition {
        image_index: image,
        image_count: images,
        tile_index: tile,
        tile_count: tiles,
    };
    Tile::new(pos, tokens, hidden, Bytes::from(data)).unwrap()
}

/// Every tile of a request with `tiles_per_image[i]` tiles in image `i`, in order.
pub fn request_tiles(salt: u8, tiles_per_image: &[u16], tokens: u32, hidden: u32) -> Vec<Tile> {
    let images = tiles_per_image.len() as u16;
    let mut out = Vec::new();
    for (i, &n) in tiles_per_image.iter().enumerate() {
        for t in 0..n {
            out.push(tile(salt, i as u16, images, t, n, tokens, hidden));
        }
    }
    out
}

pub const KINDS: [TransportKind; 2] = [TransportKind::Tcp, TransportKind::Quic];
