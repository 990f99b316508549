//! Feature transport over plain TCP.
//!
//! A sender keeps one connection per destination and interleaves the frames of all its requests
//! on it, whole frame by whole frame; the receiver answers each request with a [`Reply`]
//! on the same connection. A frame error that leaves the byte stream aligned (bad payload CRC,
//! wrong payload length, unknown request) fails only that request; one that does not (bad magic,
//! version or header CRC, an oversized or truncated frame) closes the connection, failing the
//! requests on it and no others.
//!
//! [`Reply`]: crate::reply::Reply

mod listener;
mod sender;

pub use listener::TcpFeatureListener;
pub use sender::TcpFeatureSender;

/// Applies the buffer size, if any, and disables Nagle's algorithm.
pub(crate) fn tune_socket(stream: &tokio::net::TcpStream, buffer: Option<usize>) {
    let _ = stream.set_nodelay(true);
    if let Some(size) = buffer {
        let sock = socket2::SockRef::from(stream);
        let _ = sock.set_send_buffer_size(size);
        let _ = sock.set_recv_buffer_size(size);
    }
}
