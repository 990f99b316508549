//! Reading frames off any byte stream (a TCP socket or a QUIC stream).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::checksum::Crc32c;
use crate::error::FrameError;
use crate::frame::{FrameHeader, HEADER_LEN};
use crate::pool::BufferPool;
use crate::request_id::RequestId;

/// A frame as read: the header, the payload and the CRC computed while reading it. Field and CRC
/// checks are left to the caller, which decides whose request a failure concerns.
#[derive(Debug)]
pub(crate) struct RawFrame {
    pub header: FrameHeader,
    pub payload: Bytes,
    pub payload_crc: u32,
}

/// Fills `buf`. Returns `Ok(false)` if the stream ended before its first byte, and
/// [`FrameError::Truncated`] if it ended part way.
pub(crate) async fn read_exact_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r
            .read(&mut buf[filled..])
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(FrameError::Truncated {
                expected: buf.len() as u64,
                received: filled as u64,
            });
        }
        filled += n;
    }
    Ok(true)
}

/// A read failure that leaves the stream unusable, with the request whose frame broke it when the
/// header could be read.
pub(crate) type Broken = (FrameError, Option<RequestId>);

/// Reads the next frame. `Ok(None)` is a clean end of stream at a frame boundary. Errors returned
/// here all break the stream: bad magic, version or header CRC, a payload over `max_payload`,
/// truncation or an I/O failure.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_payload: u64,
    pool: &Arc<BufferPool>,
) -> Result<Option<RawFrame>, Broken> {
    let mut h = [0u8; HEADER_LEN];
    if !read_exact_or_eof(r, &mut h).await.map_err(|e| (e, None))? {
        return Ok(None);
    }
    let header = FrameHeader::decode(&h).map_err(|e| (e, None))?;
    let named = |e| (e, Some(header.request_id));
    header.check_size(max_payload).map_err(named)?;
    let (payload, payload_crc) = read_payload(r, header.payload_len, pool)
        .await
        .map_err(named)?;
    Ok(Some(RawFrame {
        header,
        payload,
        payload_crc,
    }))
}

/// Reads `len` bytes into one (recycled) buffer, computing their CRC-32C piece by piece while
/// the bytes are still in cache.
async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    pool: &Arc<BufferPool>,
) -> Result<(Bytes, u32), FrameError> {
    let total = usize::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        limit: usize::MAX as u64,
    })?;
    let mut buf = pool.take(total);
    let mut crc = Crc32c::new();
    while buf.len() < total {
        let before = buf.len();
        let remaining = (total - before) as u64;
        let n = AsyncReadExt::take(&mut *r, remaining)
            .read_buf(&mut buf)
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        if n == 0 {
            return Err(FrameError::Truncated {
                expected: len,
                received: before as u64,
            });
        }
        crc.update(&buf[before..]);
    }
    Ok((BufferPool::freeze(pool, buf), crc.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Tile, TilePosition};

    fn frame_bytes() -> (Vec<u8>, Tile) {
        let pos = TilePosition {
            image_index: 0,
            image_count: 1,
            tile_index: 0,
            tile_count: 1,
        };
        let tile = Tile::new(pos, 2, 3, Bytes::from((0u8..12).collect::<Vec<_>>())).unwrap();
        let mut b = FrameHeader::tile(RequestId(5), 0, &tile).encode().to_vec();
        b.extend_from_slice(&tile.data);
        (b, tile)
    }

    #[tokio::test]
    async fn reads_a_frame_then_clean_eof() {
        let (bytes, tile) = frame_bytes();
        let mut r = std::io::Cursor::new(bytes);
        let f = read_frame(&mut r, 1 << 20, &BufferPool::new(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.payload, tile.data);
        f.header.check_payload_crc(f.payload_crc).unwrap();
        assert!(
            read_frame(&mut r, 1 << 20, &BufferPool::new(1))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn truncation_inside_header_and_payload() {
        let (bytes, _) = frame_bytes();
        let cut = |len: usize| {
            let mut r = std::io::Cursor::new(bytes[..len].to_vec());
            async move {
                read_frame(&mut r, 1 << 20, &BufferPool::new(1))
                    .await
                    .unwrap_err()
                    .0
            }
        };
        let truncated = |expected, received| FrameError::Truncated { expected, received };
        assert_eq!(cut(30).await, truncated(64, 30));
        assert_eq!(cut(70).await, truncated(12, 6));
    }

    #[tokio::test]
    async fn over_limit_is_refused_before_reading_the_payload() {
        let (bytes, _) = frame_bytes();
        let mut r = std::io::Cursor::new(bytes);
        assert!(matches!(
            read_frame(&mut r, 8, &BufferPool::new(1)).await,
            Err((
                FrameError::TooLarge { len: 12, limit: 8 },
                Some(RequestId(5))
            ))
        ));
    }
}
