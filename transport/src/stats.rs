//! Counters a listener keeps, for metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one listener; share it through `Arc` and read it with [`snapshot`].
///
/// [`snapshot`]: ListenerStats::snapshot
#[derive(Debug, Default)]
pub struct ListenerStats {
    connections: AtomicU64,
    streams: AtomicU64,
    frames: AtomicU64,
    payload_bytes: AtomicU64,
    broken_streams: AtomicU64,
}

/// The counters of a [`ListenerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    /// Connections accepted (QUIC: handshakes completed).
    pub connections: u64,
    /// QUIC streams accepted (TCP: equal to connections).
    pub streams: u64,
    /// Frames read whole.
    pub frames: u64,
    /// Payload bytes of those frames.
    pub payload_bytes: u64,
    /// Connections or streams closed because of a frame error that broke them.
    pub broken_streams: u64,
}

impl ListenerStats {
    pub(crate) fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn frame(&self, payload: usize) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.payload_bytes
            .fetch_add(payload as u64, Ordering::Relaxed);
    }

    pub(crate) fn broken(&self) {
        self.broken_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ListenerCounts {
        ListenerCounts {
            connections: self.connections.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            payload_bytes: self.payload_bytes.load(Ordering::Relaxed),
            broken_streams: self.broken_streams.load(Ordering::Relaxed),
        }
    }
}
