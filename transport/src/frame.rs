//! The feature frame: a fixed 64-byte header followed by a raw payload.
//!
//! Layout of the header (all integers little-endian):
//!
//! | bytes  | field         | notes                                                       |
//! |--------|---------------|-------------------------------------------------------------|
//! | 0..4   | magic         | `DVDF`                                                      |
//! | 4..6   | version       | [`VERSION`]                                                 |
//! | 6      | kind          | [`FrameKind`]                                               |
//! | 7      | dtype         | [`Dtype`]; 0 for frames that carry no features              |
//! | 8..24  | request id    | [`RequestId`]                                               |
//! | 24..26 | image index   | position of the image in the request                        |
//! | 26..28 | image count   | images in the request                                       |
//! | 28..30 | tile index    | position of the tile in its image (thumbnail last)          |
//! | 30..32 | tile count    | tiles of the image                                          |
//! | 32..36 | tokens        | feature rows in the tile (256, or 64 after ViR)             |
//! | 36..40 | hidden size   | feature columns (the LLM's hidden size)                     |
//! | 40..44 | sequence      | frame number within the request's stream, from 0            |
//! | 44..48 | reserved      | zero                                                        |
//! | 48..56 | payload bytes | `tokens * hidden * 2` for a tile                            |
//! | 56..60 | payload CRC   | CRC-32C of the payload                                      |
//! | 60..64 | header CRC    | CRC-32C of bytes 0..60                                      |
//!
//! A request's stream is its tiles (any order; the inbox restores it), then one `End` frame whose
//! `tokens` field counts the tiles sent, or one `Abort` frame whose payload is a UTF-8 reason.

use bytes::Bytes;

use crate::error::FrameError;
use crate::request_id::RequestId;

/// First four bytes of every frame header.
pub const MAGIC: [u8; 4] = *b"DVDF";
/// Wire version written by this crate; frames of any other version are refused.
pub const VERSION: u16 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 64;
/// Longest reason an `Abort` frame may carry.
pub const MAX_ABORT_REASON: usize = 4096;
/// Default limit on one frame's payload: 64 MiB (a 448 px tile at hidden 8192 is 4 MiB).
pub const DEFAULT_MAX_FRAME_PAYLOAD: u64 = 64 * 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// One tile of features.
    Tile = 1,
    /// The sender has sent every tile of the request.
    End = 2,
    /// The sender gave up on the request; the payload says why.
    Abort = 3,
}

impl FrameKind {
    fn from_u8(v: u8) -> Result<Self, FrameError> {
        match v {
            1 => Ok(Self::Tile),
            2 => Ok(Self::End),
            3 => Ok(Self::Abort),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// Element type of a tile payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Dtype {
    /// bfloat16, little-endian, two bytes per element.
    Bf16 = 1,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::Bf16 => 2,
        }
    }
}

/// A decoded frame header; see the module docs for the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Raw dtype byte (checked against [`Dtype`] for tile frames).
    pub dtype: u8,
    /// The request the frame belongs to.
    pub request_id: RequestId,
    /// Where the tile sits in the request (zero for frames that carry no tile).
    pub position: TilePosition,
    /// Feature rows in the tile; for `End`, the number of tiles sent.
    pub tokens: u32,
    /// Feature columns.
    pub hidden: u32,
    /// Frame number within the request's stream.
    pub sequence: u32,
    /// Bytes that follow the header.
    pub payload_len: u64,
    /// CRC-32C of those bytes.
    pub payload_crc: u32,
}

impl FrameHeader {
    /// Header of a tile frame; the payload CRC is computed here.
    pub fn tile(request_id: RequestId, sequence: u32, tile: &Tile) -> Self {
        Self {
            payload_crc: crate::checksum::crc32c(&tile.data),
            ..Self::tile_unsummed(request_id, sequence, tile)
        }
    }

    /// Header of a tile frame with the payload CRC left at zero (for shape checks).
    fn tile_unsummed(request_id: RequestId, sequence: u32, tile: &Tile) -> Self {
        Self {
            kind: FrameKind::Tile,
            dtype: Dtype::Bf16 as u8,
            request_id,
            position: tile.position(),
            tokens: tile.tokens,
            hidden: tile.hidden,
            sequence,
            payload_len: tile.data.len() as u64,
            payload_crc: 0,
        }
    }

    /// Header of the `End` frame closing a request after `tiles` tile frames.
    pub fn end(request_id: RequestId, sequence: u32, tiles: u32) -> Self {
        Self::control(FrameKind::End, request_id, sequence, tiles, &[])
    }

    /// Header of an `Abort` frame whose payload is `reason`.
    pub fn abort(request_id: RequestId, sequence: u32, reason: &[u8]) -> Self {
        Self::control(FrameKind::Abort, request_id, sequence, 0, reason)
    }

    fn control(
        kind: FrameKind,
        request_id: RequestId,
        sequence: u32,
        tokens: u32,
        payload: &[u8],
    ) -> Self {
        Self {
            kind,
            dtype: 0,
            request_id,
            position: TilePosition::default(),
            tokens,
            hidden: 0,
            sequence,
            payload_len: payload.len() as u64,
            payload_crc: crate::checksum::crc32c(payload),
        }
    }

    /// Writes the 64-byte wire form, header CRC included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = self.kind as u8;
        b[7] = self.dtype;
        b[8..24].copy_from_slice(&self.request_id.to_le_bytes());
        let p = &self.position;
        b[24..26].copy_from_slice(&p.image_index.to_le_bytes());
        b[26..28].copy_from_slice(&p.image_count.to_le_bytes());
        b[28..30].copy_from_slice(&p.tile_index.to_le_bytes());
        b[30..32].copy_from_slice(&p.tile_count.to_le_bytes());
        b[32..36].copy_from_slice(&self.tokens.to_le_bytes());
        b[36..40].copy_from_slice(&self.hidden.to_le_bytes());
        b[40..44].copy_from_slice(&self.sequence.to_le_bytes());
        b[48..56].copy_from_slice(&self.payload_len.to_le_bytes());
        b[56..60].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crate::checksum::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a wire header. Checks, in order: magic, version, header CRC, kind. These errors
    /// mean the byte stream can no longer be trusted to be aligned on frames.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = u16_at(b, 4);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let expected = u32_at(b, 60);
        let actual = crate::checksum::crc32c(&b[..60]);
        if expected != actual {
            return Err(FrameError::HeaderChecksum { expected, actual });
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[8..24]);
        Ok(Self {
            kind: FrameKind::from_u8(b[6])?,
            dtype: b[7],
            request_id: RequestId::from_le_bytes(id),
            position: TilePosition {
                image_index: u16_at(b, 24),
                image_count: u16_at(b, 26),
                tile_index: u16_at(b, 28),
                tile_count: u16_at(b, 30),
            },
            tokens: u32_at(b, 32),
            hidden: u32_at(b, 36),
            sequence: u32_at(b, 40),
            payload_len: u64::from_le_bytes([
                b[48], b[49], b[50], b[51], b[52], b[53], b[54], b[55],
            ]),
            payload_crc: u32_at(b, 56),
        })
    }

    /// Refuses a payload over `limit` bytes. Past this point the reader would have to trust a
    /// length it will not read, so the error ends the connection or stream.
    pub fn check_size(&self, limit: u64) -> Result<(), FrameError> {
        if self.payload_len > limit {
            return Err(FrameError::TooLarge {
                len: self.payload_len,
                limit,
            });
        }
        Ok(())
    }

    /// Checks that the fields agree with each other and with the payload length. A failure here
    /// concerns only this frame's request: the payload can still be skipped.
    pub fn check_fields(&self) -> Result<(), FrameError> {
        match self.kind {
            FrameKind::Tile => {
                if self.dtype != Dtype::Bf16 as u8 {
                    return Err(FrameError::UnsupportedDtype(self.dtype));
                }
                let p = &self.position;
                if p.image_count == 0
                    || p.image_index >= p.image_count
                    || p.tile_count == 0
                    || p.tile_index >= p.tile_count
                    || self.tokens == 0
                    || self.hidden == 0
                {
                    return Err(FrameError::InvalidTile(format!(
                        "image {}/{} tile {}/{} tokens {} hidden {}",
                        p.image_index,
                        p.image_count,
                        p.tile_index,
                        p.tile_count,
                        self.tokens,
                        self.hidden
                    )));
                }
                let expected = u64::from(self.tokens) * u64::from(self.hidden) * Dtype::Bf16.size();
                if self.payload_len != expected {
                    return Err(FrameError::PayloadLength {
                        declared: self.payload_len,
                        expected,
                    });
                }
            }
            FrameKind::End if self.payload_len != 0 => {
                return Err(FrameError::PayloadLength {
                    declared: self.payload_len,
                    expected: 0,
                });
            }
            FrameKind::Abort if self.payload_len > MAX_ABORT_REASON as u64 => {
                return Err(FrameError::PayloadLength {
                    declared: self.payload_len,
                    expected: MAX_ABORT_REASON as u64,
                });
            }
            FrameKind::End | FrameKind::Abort => {}
        }
        Ok(())
    }

    /// Compares the payload's CRC (computed while it was read) with the header's.
    pub fn check_payload_crc(&self, actual: u32) -> Result<(), FrameError> {
        if actual != self.payload_crc {
            return Err(FrameError::PayloadChecksum {
                expected: self.payload_crc,
                actual,
            });
        }
        Ok(())
    }
}

fn u16_at(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One tile of visual features: `tokens × hidden` BF16 values, row-major, little-endian.
#[derive(Clone, PartialEq, Eq)]
pub struct Tile {
    /// Position of the image in the request.
    pub image_index: u16,
    /// Images in the request.
    pub image_count: u16,
    /// Position of the tile in its image.
    pub tile_index: u16,
    /// Tiles of the image.
    pub tile_count: u16,
    /// Feature rows (the tile's `tokens_per_tile`).
    pub tokens: u32,
    /// Feature columns.
    pub hidden: u32,
    /// The raw little-endian BF16 values; shared, never copied by the transport on send.
    pub data: Bytes,
}

impl Tile {
    /// Bytes a tile of this shape must have.
    pub fn expected_len(tokens: u32, hidden: u32) -> u64 {
        u64::from(tokens) * u64::from(hidden) * Dtype::Bf16.size()
    }

    /// Builds a tile from BF16 values, copying them into little-endian bytes.
    pub fn from_bf16(
        position: TilePosition,
        tokens: u32,
        hidden: u32,
        values: &[half::bf16],
    ) -> Result<Self, FrameError> {
        let mut data = Vec::with_capacity(values.len() * 2);
        for v in values {
            data.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        Self::new(position, tokens, hidden, Bytes::from(data))
    }

    /// Wraps bytes that already hold the little-endian BF16 values, checking shape and indices.
    pub fn new(
        position: TilePosition,
        tokens: u32,
        hidden: u32,
        data: Bytes,
    ) -> Result<Self, FrameError> {
        let tile = Self::unchecked(position, tokens, hidden, data);
        FrameHeader::tile_unsummed(RequestId(0), 0, &tile).check_fields()?;
        Ok(tile)
    }

    /// A tile from parts whose shape and indices the caller has checked.
    pub(crate) fn unchecked(position: TilePosition, tokens: u32, hidden: u32, data: Bytes) -> Self {
        Self {
            image_index: position.image_index,
            image_count: position.image_count,
            tile_index: position.tile_index,
            tile_count: position.tile_count,
            tokens,
            hidden,
            data,
        }
    }

    /// The values as BF16 (a copy; the payload may not be 2-byte aligned).
    pub fn to_bf16(&self) -> Vec<half::bf16> {
        self.data
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    }

    /// Where this tile sits in the request.
    pub fn position(&self) -> TilePosition {
        TilePosition {
            image_index: self.image_index,
            image_count: self.image_count,
            tile_index: self.tile_index,
            tile_count: self.tile_count,
        }
    }
}

impl std::fmt::Debug for Tile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tile")
            .field("image", &(self.image_index, self.image_count))
            .field("tile", &(self.tile_index, self.tile_count))
            .field("tokens", &self.tokens)
            .field("hidden", &self.hidden)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Where a tile sits in its request: which image, which tile of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TilePosition {
    /// Position of the image in the request.
    pub image_index: u16,
    /// Images in the request.
    pub image_count: u16,
    /// Position of the tile in its image.
    pub tile_index: u16,
    /// Tiles of the image.
    pub tile_count: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile() -> Tile {
        let pos = TilePosition {
            image_index: 1,
            image_count: 2,
            tile_index: 3,
            tile_count: 7,
        };
        let values: Vec<half::bf16> = (0..4 * 8).map(|i| half::bf16::from_f32(i as f32)).collect();
        Tile::from_bf16(pos, 4, 8, &values).unwrap()
    }

    #[test]
    fn header_round_trips() {
        let t = tile();
        let h = FrameHeader::tile(RequestId(42), 9, &t);
        let decoded = FrameHeader::decode(&h.encode()).unwrap();
        assert_eq!(decoded, h);
        decoded.check_fields().unwrap();
        decoded
            .check_payload_crc(crate::checksum::crc32c(&t.data))
            .unwrap();
        assert_eq!(t.to_bf16()[5], half::bf16::from_f32(5.0));
    }

    #[test]
    fn decode_reports_the_first_broken_field() {
        let good = FrameHeader::tile(RequestId(1), 0, &tile()).encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(FrameError::BadMagic { .. })
        ));
        let mut b = good;
        b[4] = 9;
        assert_eq!(
            FrameHeader::decode(&b),
            Err(FrameError::UnsupportedVersion { found: 9 })
        );
        let mut b = good;
        b[33] ^= 1;
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(FrameError::HeaderChecksum { .. })
        ));
    }

    #[test]
    fn field_checks() {
        let t = tile();
        let mut h = FrameHeader::tile(RequestId(1), 0, &t);
        h.payload_len += 2;
        assert!(matches!(
            h.check_fields(),
            Err(FrameError::PayloadLength { .. })
        ));
        assert!(matches!(h.check_size(10), Err(FrameError::TooLarge { .. })));
        let mut h = FrameHeader::tile(RequestId(1), 0, &t);
        h.position.tile_index = 7;
        assert!(matches!(h.check_fields(), Err(FrameError::InvalidTile(_))));
        let mut h = FrameHeader::tile(RequestId(1), 0, &t);
        h.dtype = 7;
        assert_eq!(h.check_fields(), Err(FrameError::UnsupportedDtype(7)));
        assert!(h.check_payload_crc(0).is_err());
    }

    #[test]
    fn tile_new_checks_length() {
        let pos = tile().position();
        assert!(Tile::new(pos, 4, 8, Bytes::from(vec![0u8; 63])).is_err());
        assert!(Tile::new(pos, 4, 8, Bytes::from(vec![0u8; 64])).is_ok());
    }
}
