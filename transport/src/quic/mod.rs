//! Feature transport over QUIC (quinn, TLS 1.3 through rustls).
//!
//! A sender keeps one connection per destination and opens one bidirectional stream per request:
//! the request's frames go out on it and the receiver's single [`Reply`](crate::Reply) comes back
//! on it. Any frame error fails only its own stream; the connection and its other streams keep
//! going. The sender verifies the receiver's certificate against its configured trust anchors;
//! a receiver may also require the sender's certificate (mutual TLS), from its CA and naming
//! the vision role.

mod client_auth;
mod listener;
mod pki;
mod sender;
mod tls;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

pub use listener::QuicFeatureListener;
pub use pki::InternalPki;
pub use sender::QuicFeatureSender;
pub use tls::{ALPN, ClientTls, SelfSigned, ServerTls};

use crate::error::{Result, TransportError};

/// Flow-control and packet settings shared by both ends. The defaults were chosen with
/// `dvd bench transport` on loopback (see `docs/performance.md`).
#[derive(Debug, Clone)]
pub struct QuicTuning {
    /// Bytes a peer may have in flight on one stream.
    pub stream_window: u64,
    /// Bytes a peer may have in flight on the whole connection.
    pub connection_window: u64,
    /// Largest UDP payload MTU discovery may reach. Paths with Ethernet's 1500-byte MTU stop at
    /// about 1452 whatever this says; loopback and jumbo-frame networks go up to it. 4096 doubled
    /// loopback throughput against 1452 (quinn's cost is per packet); past about 7 KB datagrams
    /// overflowed 4 MiB socket buffers and throughput collapsed (`docs/performance.md`).
    pub max_udp_payload: u16,
    /// UDP socket send and receive buffer sizes.
    pub socket_buffer: usize,
    /// Concurrent requests (streams) one connection may carry.
    pub max_streams: u32,
    /// Ask the peer to acknowledge only every this many ack-eliciting packets (QUIC ACK
    /// frequency extension); `None` keeps the default of every other packet.
    pub ack_every: Option<u32>,
}

impl Default for QuicTuning {
    fn default() -> Self {
        Self {
            stream_window: 32 << 20,
            connection_window: 128 << 20,
            max_udp_payload: 4096,
            socket_buffer: 8 << 20,
            max_streams: 1024,
            ack_every: None,
        }
    }
}

impl QuicTuning {
    /// The flow-control settings both ends use.
    pub fn transport_config(&self) -> Result<Arc<quinn::TransportConfig>> {
        let varint = |v: u64| {
            quinn::VarInt::from_u64(v)
                .map_err(|e| TransportError::Config(format!("QUIC window {v}: {e}")))
        };
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(varint(self.stream_window)?)
            .receive_window(varint(self.connection_window)?)
            .send_window(self.connection_window)
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_streams))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .keep_alive_interval(Some(Duration::from_secs(5)))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_secs(30))
                    .map_err(|e| TransportError::Config(e.to_string()))?,
            ));
        if let Some(n) = self.ack_every {
            let mut ack = quinn::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(quinn::VarInt::from_u32(n.saturating_sub(1)));
            t.ack_frequency_config(Some(ack));
        }
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_udp_payload);
        t.mtu_discovery_config(Some(mtu));
        Ok(Arc::new(t))
    }

    /// The endpoint settings (largest UDP payload) both ends use.
    pub fn endpoint_config(&self) -> Result<quinn::EndpointConfig> {
        let mut c = quinn::EndpointConfig::default();
        c.max_udp_payload_size(self.max_udp_payload.max(1200))
            .map_err(|e| TransportError::Config(format!("QUIC max UDP payload: {e}")))?;
        Ok(c)
    }

    /// A UDP socket bound to `addr` with the configured buffer sizes.
    pub fn bind_socket(&self, addr: SocketAddr) -> Result<UdpSocket> {
        let domain = socket2::Domain::for_address(addr);
        let bind_error =
            |e: std::io::Error| TransportError::Config(format!("cannot bind UDP {addr}: {e}"));
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
                .map_err(bind_error)?;
        // Best effort: the kernel caps these at net.core.{w,r}mem_max.
        let _ = socket.set_send_buffer_size(self.socket_buffer);
        let _ = socket.set_recv_buffer_size(self.socket_buffer);
        socket.bind(&addr.into()).map_err(bind_error)?;
        Ok(socket.into())
    }
}
