//! Conversions between the transport's types and their gRPC mirrors in `dvd.feature.v1`.

use dvd_proto::feature::v1 as pb;

use crate::api::{Destination, TransportKind};
use crate::error::TransportError;
use crate::frame::{FrameHeader, FrameKind, VERSION};

impl From<TransportKind> for pb::Transport {
    fn from(kind: TransportKind) -> Self {
        match kind {
            TransportKind::Tcp => Self::Tcp,
            TransportKind::Quic => Self::Quic,
        }
    }
}

impl TryFrom<pb::Transport> for TransportKind {
    type Error = TransportError;

    fn try_from(t: pb::Transport) -> Result<Self, Self::Error> {
        match t {
            pb::Transport::Tcp => Ok(Self::Tcp),
            pb::Transport::Quic => Ok(Self::Quic),
            pb::Transport::Unspecified => Err(TransportError::Config(
                "feature destination names no transport".into(),
            )),
        }
    }
}

impl Destination {
    /// Reads a request's feature destination: where to send and over which transport.
    pub fn from_proto(d: &pb::FeatureDestination) -> Result<(Self, TransportKind), TransportError> {
        if d.address.is_empty() {
            return Err(TransportError::Config(
                "feature destination has no address".into(),
            ));
        }
        let transport = pb::Transport::try_from(d.transport).map_err(|_| {
            TransportError::Config(format!("unknown feature transport {}", d.transport))
        })?;
        let destination = Self {
            address: d.address.clone(),
            server_name: (!d.server_name.is_empty()).then(|| d.server_name.clone()),
        };
        Ok((destination, transport.try_into()?))
    }

    /// The gRPC form of this destination.
    pub fn to_proto(&self, kind: TransportKind) -> pb::FeatureDestination {
        pb::FeatureDestination {
            address: self.address.clone(),
            transport: pb::Transport::from(kind) as i32,
            server_name: self.server_name.clone().unwrap_or_default(),
        }
    }
}

impl From<&FrameHeader> for pb::FrameHeader {
    fn from(h: &FrameHeader) -> Self {
        let kind = match h.kind {
            FrameKind::Tile => pb::FrameKind::Tile,
            FrameKind::End => pb::FrameKind::End,
            FrameKind::Abort => pb::FrameKind::Abort,
        };
        let dtype = match h.dtype {
            1 => pb::Dtype::Bf16,
            _ => pb::Dtype::Unspecified,
        };
        Self {
            version: u32::from(VERSION),
            kind: kind as i32,
            dtype: dtype as i32,
            request_id: h.request_id.to_string(),
            image_index: u32::from(h.position.image_index),
            image_count: u32::from(h.position.image_count),
            tile_index: u32::from(h.position.tile_index),
            tile_count: u32::from(h.position.tile_count),
            tokens: h.tokens,
            hidden_size: h.hidden,
            sequence: h.sequence,
            payload_len: h.payload_len,
            payload_crc32c: h.payload_crc,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::frame::{Tile, TilePosition};
    use crate::request_id::RequestId;

    #[test]
    fn destination_round_trips_and_refuses_gaps() {
        let mut d = Destination::new("ls-0:7001");
        d.server_name = Some("language".into());
        let (back, kind) = Destination::from_proto(&d.to_proto(TransportKind::Quic)).unwrap();
        assert_eq!((back, kind), (d.clone(), TransportKind::Quic));
        let mut unspecified = d.to_proto(TransportKind::Tcp);
        unspecified.transport = 0;
        assert!(Destination::from_proto(&unspecified).is_err());
        unspecified.transport = 3;
        assert!(Destination::from_proto(&unspecified).is_err());
        let mut empty = d.to_proto(TransportKind::Tcp);
        empty.address.clear();
        assert!(Destination::from_proto(&empty).is_err());
    }

    #[test]
    fn header_mirror_carries_every_field() {
        let pos = TilePosition {
            image_index: 1,
            image_count: 3,
            tile_index: 4,
            tile_count: 7,
        };
        let tile = Tile::new(pos, 2, 4, Bytes::from(vec![9u8; 16])).unwrap();
        let h = FrameHeader::tile(RequestId(0xabc), 5, &tile);
        let m = pb::FrameHeader::from(&h);
        assert_eq!(m.request_id, "00000000000000000000000000000abc");
        assert_eq!(m.kind(), pb::FrameKind::Tile);
        assert_eq!(m.dtype(), pb::Dtype::Bf16);
        assert_eq!(
            (m.image_index, m.image_count, m.tile_index, m.tile_count),
            (1, 3, 4, 7)
        );
        assert_eq!(
            (m.tokens, m.hidden_size, m.sequence, m.payload_len),
            (2, 4, 5, 16)
        );
        assert_eq!(m.payload_crc32c, h.payload_crc);
    }
}
