//! Replies from a feature receiver to a sender: one per request, `Ok` after its `End` frame or an
//! error the first time something goes wrong with it.
//!
//! This file is the wire format. Layout (little-endian): magic `DVDR` (4), version (2), status
//! (2), request id (16), frames accepted (4), message length (4), then the UTF-8 message (at most
//! [`MAX_MESSAGE`] bytes). The receiver writes a session's replies with `writer`; a sending
//! stream awaits its request's reply with `awaiter`.

mod awaiter;
mod writer;

pub(crate) use awaiter::{Pending, ReplyAwaiter};
pub(crate) use writer::write_replies;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::FrameError;
use crate::frame::VERSION;
use crate::request_id::RequestId;

/// First four bytes of every reply.
pub const REPLY_MAGIC: [u8; 4] = *b"DVDR";
/// Fixed part of a reply.
pub const REPLY_HEADER_LEN: usize = 32;
/// Longest message a reply carries; longer ones are cut.
pub const MAX_MESSAGE: usize = 1024;

/// The receiver's verdict on a request's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ReplyStatus {
    /// Every tile arrived and was handed to the inbox.
    Ok = 0,
    /// No inbox claimed the request id in time.
    UnknownRequest = 1,
    /// A frame did not start with the magic.
    BadMagic = 2,
    /// A frame's version is not spoken here.
    UnsupportedVersion = 3,
    /// A frame header's CRC did not match.
    HeaderChecksum = 4,
    /// Unknown frame kind, unsupported dtype or out-of-range tile fields.
    Malformed = 5,
    /// The payload length does not match the tile shape.
    PayloadLength = 6,
    /// The payload's CRC did not match.
    PayloadChecksum = 7,
    /// A frame or the request is over the receiver's size limit.
    TooLarge = 8,
    /// The stream ended inside a frame.
    Truncated = 9,
    /// Frames out of sequence, duplicate or inconsistent tiles, or a second request on a stream.
    Protocol = 10,
    /// The `End` frame came before every tile.
    Incomplete = 11,
    /// The consumer no longer wants the features (request cancelled or finished).
    Cancelled = 12,
    /// The receiver is holding too many unclaimed features; try later or elsewhere.
    Overloaded = 13,
    /// The receiver acknowledges an `Abort`.
    Aborted = 14,
    /// A status this build does not know (from a newer peer).
    Unknown = u16::MAX,
}

impl ReplyStatus {
    fn from_u16(v: u16) -> Self {
        use ReplyStatus::*;
        [
            Ok,
            UnknownRequest,
            BadMagic,
            UnsupportedVersion,
            HeaderChecksum,
            Malformed,
            PayloadLength,
            PayloadChecksum,
            TooLarge,
            Truncated,
            Protocol,
            Incomplete,
            Cancelled,
            Overloaded,
            Aborted,
        ]
        .into_iter()
        .find(|s| *s as u16 == v)
        .unwrap_or(Unknown)
    }

    /// The status that reports a frame error.
    pub fn for_frame_error(e: &FrameError) -> Self {
        match e {
            FrameError::Truncated { .. } | FrameError::Io(_) => Self::Truncated,
            FrameError::BadMagic { .. } => Self::BadMagic,
            FrameError::UnsupportedVersion { .. } => Self::UnsupportedVersion,
            FrameError::HeaderChecksum { .. } => Self::HeaderChecksum,
            FrameError::UnknownKind(_)
            | FrameError::UnsupportedDtype(_)
            | FrameError::InvalidTile(_) => Self::Malformed,
            FrameError::TooLarge { .. } => Self::TooLarge,
            FrameError::PayloadLength { .. } => Self::PayloadLength,
            FrameError::PayloadChecksum { .. } => Self::PayloadChecksum,
        }
    }
}

/// One reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The verdict.
    pub status: ReplyStatus,
    /// The request it concerns (zero when a frame was too broken to name one).
    pub request_id: RequestId,
    /// Tile frames of the request the receiver accepted.
    pub frames: u32,
    /// Human-readable detail.
    pub message: String,
}

impl Reply {
    /// A reply; the message is cut to [`MAX_MESSAGE`] bytes on a character boundary.
    pub fn new(
        status: ReplyStatus,
        request_id: RequestId,
        frames: u32,
        message: impl Into<String>,
    ) -> Self {
        let mut message = message.into();
        let keep = cut_utf8(&message, MAX_MESSAGE).len();
        message.truncate(keep);
        Self {
            status,
            request_id,
            frames,
            message,
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(REPLY_HEADER_LEN + self.message.len());
        b.extend_from_slice(&REPLY_MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.status as u16).to_le_bytes());
        b.extend_from_slice(&self.request_id.to_le_bytes());
        b.extend_from_slice(&self.frames.to_le_bytes());
        b.extend_from_slice(&(self.message.len() as u32).to_le_bytes());
        b.extend_from_slice(self.message.as_bytes());
        b
    }

    /// Reads one reply; `Ok(None)` at a clean end of stream.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Self>, FrameError> {
        let mut h = [0u8; REPLY_HEADER_LEN];
        if !crate::io::read_exact_or_eof(r, &mut h).await? {
            return Ok(None);
        }
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != REPLY_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let status = ReplyStatus::from_u16(u16::from_le_bytes([h[6], h[7]]));
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[8..24]);
        let frames = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
        let len = u32::from_le_bytes([h[28], h[29], h[30], h[31]]) as usize;
        if len > MAX_MESSAGE {
            return Err(FrameError::TooLarge {
                len: len as u64,
                limit: MAX_MESSAGE as u64,
            });
        }
        let mut msg = vec![0u8; len];
        r.read_exact(&mut msg).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated {
                expected: len as u64,
                received: 0,
            },
            _ => FrameError::Io(e.to_string()),
        })?;
        Ok(Some(Self {
            status,
            request_id: RequestId::from_le_bytes(id),
            frames,
            message: String::from_utf8_lossy(&msg).into_owned(),
        }))
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn cut_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reply_round_trips_and_cuts_long_messages() {
        let r = Reply::new(ReplyStatus::Incomplete, RequestId(7), 3, "é".repeat(600));
        assert!(r.message.len() <= MAX_MESSAGE);
        let bytes = r.encode();
        let mut cursor = std::io::Cursor::new(bytes);
        let back = Reply::read(&mut cursor).await.unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(Reply::read(&mut cursor).await.unwrap(), None);
        assert_eq!(ReplyStatus::from_u16(14), ReplyStatus::Aborted);
        assert_eq!(ReplyStatus::from_u16(999), ReplyStatus::Unknown);
    }
}
