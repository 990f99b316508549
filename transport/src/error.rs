//! Error types of the feature transport.

use crate::reply::ReplyStatus;
use crate::request_id::RequestId;

/// What is wrong with bytes read off the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, the stream ended after {received}")]
    Truncated {
        /// Bytes the frame part needed.
        expected: u64,
        /// Bytes that arrived.
        received: u64,
    },
    /// The header does not start with `DVDF`.
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The header's version is not one this build speaks.
    #[error(
        "unsupported frame version {found} (this build speaks {})",
        crate::frame::VERSION
    )]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// The header's own CRC does not match its bytes.
    #[error("header checksum mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    HeaderChecksum {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the header.
        actual: u32,
    },
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A tile frame with a dtype other than BF16.
    #[error("unsupported dtype {0} (only bf16 = 1)")]
    UnsupportedDtype(u8),
    /// The payload is over the receiver's configured limit.
    #[error("frame payload of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// Declared payload length.
        len: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The declared payload length does not match the tile's shape.
    #[error("payload length {declared} does not match the header's shape ({expected} bytes)")]
    PayloadLength {
        /// Length declared in the header.
        declared: u64,
        /// Length the header's other fields imply.
        expected: u64,
    },
    /// The payload's CRC does not match the header.
    #[error(
        "payload checksum mismatch: header says {expected:#010x}, payload gives {actual:#010x}"
    )]
    PayloadChecksum {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the payload.
        actual: u32,
    },
    /// Tile indices or sizes are out of range.
    #[error("invalid tile fields: {0}")]
    InvalidTile(String),
    /// The socket or stream failed while reading.
    #[error("read failed: {0}")]
    Io(String),
}

impl FrameError {
    /// Whether the byte stream is no longer aligned on frames after this error, so the connection
    /// (TCP) or stream (QUIC) that carried it must be closed. Other errors fail only the frame's
    /// request.
    pub fn breaks_stream(&self) -> bool {
        matches!(
            self,
            Self::Truncated { .. }
                | Self::BadMagic { .. }
                | Self::UnsupportedVersion { .. }
                | Self::HeaderChecksum { .. }
                | Self::UnknownKind(_)
                | Self::TooLarge { .. }
                | Self::Io(_)
        )
    }
}

/// What the consumer of a request's features is told when they will not all arrive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// A frame of this request, or the stream carrying it, was malformed.
    #[error("malformed feature frame from {peer}: {error}")]
    Frame {
        /// The sender's address.
        peer: String,
        /// What was wrong.
        error: FrameError,
    },
    /// Frames broke the stream's rules: out of sequence, duplicate or inconsistent tiles.
    #[error("feature stream protocol violation from {peer}: {detail}")]
    Protocol {
        /// The sender's address.
        peer: String,
        /// What was wrong.
        detail: String,
    },
    /// The connection or stream ended before the request's `End` frame.
    #[error("feature sender {peer} disconnected before the request was complete: {detail}")]
    Disconnected {
        /// The sender's address.
        peer: String,
        /// How it ended.
        detail: String,
    },
    /// The sender gave up on the request.
    #[error("feature sender {peer} aborted the request: {reason}")]
    Aborted {
        /// The sender's address.
        peer: String,
        /// The reason it sent.
        reason: String,
    },
    /// The sender's `End` frame came before every tile had arrived.
    #[error("feature stream ended after {received} of the request's tiles")]
    Incomplete {
        /// Tiles that arrived.
        received: u32,
    },
    /// The request's features are over the configured per-request limit.
    #[error("request features exceed {limit} bytes")]
    TooLarge {
        /// Configured limit.
        limit: u64,
    },
    /// An inbox for this request id is already registered.
    #[error("an inbox for request {0} is already registered")]
    Duplicate(RequestId),
}

/// What a user of a sender or listener is told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The destination address could not be resolved or connected to.
    #[error("cannot connect to feature receiver {destination}: {detail}")]
    Connect {
        /// The destination as given.
        destination: String,
        /// Why.
        detail: String,
    },
    /// Certificates or keys could not be loaded or generated, or a TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection to the destination broke.
    #[error("connection to feature receiver {destination} lost: {detail}")]
    ConnectionLost {
        /// The destination.
        destination: String,
        /// Why.
        detail: String,
    },
    /// The receiver refused the request's frames.
    #[error("feature receiver {destination} rejected request {request}: {status:?}: {message}")]
    Rejected {
        /// The destination.
        destination: String,
        /// The request.
        request: RequestId,
        /// The receiver's status code.
        status: ReplyStatus,
        /// The receiver's explanation.
        message: String,
    },
    /// The receiver did not answer in time.
    #[error("feature receiver {destination} did not answer within {millis} ms")]
    Timeout {
        /// The destination.
        destination: String,
        /// The limit that passed.
        millis: u128,
    },
    /// A tile handed to a sender is malformed.
    #[error("invalid tile: {0}")]
    InvalidTile(#[from] FrameError),
    /// A listener could not bind or a configuration value is unusable.
    #[error("{0}")]
    Config(String),
}

/// Result alias for sender and listener operations.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;
