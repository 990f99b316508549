//! One request's entry in the registry: the tiles held for it, the order they are handed out in,
//! and the checks every tile must pass against the tiles before it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::{Refusal, ReplyTx, TileRx, TileTx};
use crate::error::InboxError;
use crate::frame::Tile;
use crate::reply::Reply;
use crate::request_id::RequestId;

/// How a tile disagrees with its request's registration or earlier tiles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TileMismatch {
    /// The tiles announce another image count than the consumer registered.
    #[error("frames announce {announced} images, {expected} expected")]
    ImageCount {
        /// Images the tiles announce.
        announced: u16,
        /// Images the consumer expects.
        expected: u16,
    },
    /// The tile announces another image count than earlier tiles.
    #[error("tile announces {announced} images, earlier tiles {earlier}")]
    ImageCountChanged {
        /// Images this tile announces.
        announced: u16,
        /// Images earlier tiles announced.
        earlier: u16,
    },
    /// The tile's hidden size differs from earlier tiles'.
    #[error("tile hidden size {hidden} differs from earlier tiles' {earlier}")]
    HiddenChanged {
        /// This tile's hidden size.
        hidden: u32,
        /// Earlier tiles' hidden size.
        earlier: u32,
    },
    /// Tiles of one image announce different tile counts.
    #[error("image {image} announced with {earlier} and {tiles} tiles")]
    TileCountChanged {
        /// The image.
        image: u16,
        /// Tiles earlier tiles announced for it.
        earlier: u16,
        /// Tiles this tile announces.
        tiles: u16,
    },
    /// The tile arrived before, or was already handed out.
    #[error("duplicate tile {tile} of image {image}")]
    Duplicate {
        /// The image.
        image: u16,
        /// The tile of it.
        tile: u16,
    },
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: RequestId,
    pub(super) state: Mutex<EntryState>,
}

#[derive(Debug)]
pub(super) struct EntryState {
    id: RequestId,
    tx: Option<TileTx>,
    pub(super) rx: Option<TileRx>,
    pub(super) claimed: bool,
    pub(super) expected_images: Option<u16>,
    pub(super) image_count: u16,
    hidden: u32,
    tile_counts: Vec<u16>,
    cursor: (u16, u16),
    pending: BTreeMap<(u16, u16), Tile>,
    pub(super) received: u32,
    pub(super) bytes: u64,
    /// Of `bytes`, those counted in the registry's unclaimed total; taken out of it once, when
    /// the request is claimed or released.
    pub(super) unclaimed: u64,
    pub(super) complete: bool,
    /// The sender's `End` came while nobody had claimed the request: its `Ok` waits for the claim.
    pub(super) end_deferred: bool,
    pub(super) closed: Option<Refusal>,
    pub(super) producer: Option<ReplyTx>,
}

impl Entry {
    pub(super) fn new(id: RequestId) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            id,
            state: Mutex::new(EntryState {
                id,
                tx: Some(tx),
                rx: Some(rx),
                claimed: false,
                expected_images: None,
                image_count: 0,
                hidden: 0,
                tile_counts: Vec::new(),
                cursor: (0, 0),
                pending: BTreeMap::new(),
                received: 0,
                bytes: 0,
                unclaimed: 0,
                complete: false,
                end_deferred: false,
                closed: None,
                producer: None,
            }),
        }
    }
}

impl EntryState {
    /// Stops accepting frames and tells the sender why.
    pub(super) fn close(&mut self, refusal: Refusal) {
        if self.closed.is_some() {
            return;
        }
        if let Some(producer) = self.producer.take() {
            let reply = Reply::new(
                refusal.status,
                self.id,
                self.received,
                refusal.message.clone(),
            );
            let _ = producer.try_send(reply);
        }
        self.closed = Some(refusal);
        self.tx = None;
        self.pending.clear();
    }

    /// Tells the consumer the request failed, then closes.
    pub(super) fn fail(&mut self, error: InboxError, refusal: Refusal) {
        if self.closed.is_some() {
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Err(error));
        }
        self.close(refusal);
    }

    /// Checks a tile against what the registration and earlier tiles established.
    pub(super) fn check(&mut self, tile: &Tile) -> Result<(), TileMismatch> {
        if self.image_count == 0 {
            if let Some(expected) = self.expected_images
                && expected != tile.image_count
            {
                return Err(TileMismatch::ImageCount {
                    announced: tile.image_count,
                    expected,
                });
            }
            self.image_count = tile.image_count;
            self.tile_counts = vec![0; usize::from(tile.image_count)];
            self.hidden = tile.hidden;
        }
        if tile.image_count != self.image_count {
            return Err(TileMismatch::ImageCountChanged {
                announced: tile.image_count,
                earlier: self.image_count,
            });
        }
        if tile.hidden != self.hidden {
            return Err(TileMismatch::HiddenChanged {
                hidden: tile.hidden,
                earlier: self.hidden,
            });
        }
        let slot = &mut self.tile_counts[usize::from(tile.image_index)];
        if *slot == 0 {
            *slot = tile.tile_count;
        } else if *slot != tile.tile_count {
            return Err(TileMismatch::TileCountChanged {
                image: tile.image_index,
                earlier: *slot,
                tiles: tile.tile_count,
            });
        }
        let key = (tile.image_index, tile.tile_index);
        if key < self.cursor || self.pending.contains_key(&key) {
            return Err(TileMismatch::Duplicate {
                image: tile.image_index,
                tile: tile.tile_index,
            });
        }
        Ok(())
    }

    /// Holds a checked tile, then hands out every tile that is next in order.
    pub(super) fn accept(&mut self, tile: Tile) {
        self.bytes += tile.data.len() as u64;
        self.received += 1;
        self.pending
            .insert((tile.image_index, tile.tile_index), tile);
        while let Some(tile) = self.pending.remove(&self.cursor) {
            let (image, index) = self.cursor;
            self.cursor = if index + 1 == self.tile_counts[usize::from(image)] {
                (image + 1, 0)
            } else {
                (image, index + 1)
            };
            if let Some(tx) = &self.tx {
                let _ = tx.send(Ok(tile));
            }
        }
        if self.cursor.0 == self.image_count {
            self.complete = true;
            self.tx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::frame::TilePosition;

    fn tile(image: u16, images: u16, index: u16, tiles: u16, hidden: u32) -> Tile {
        let position = TilePosition {
            image_index: image,
            image_count: images,
            tile_index: index,
            tile_count: tiles,
        };
        Tile::new(
            position,
            1,
            hidden,
            Bytes::from(vec![0u8; hidden as usize * 2]),
        )
        .unwrap()
    }

    fn state(expected_images: Option<u16>) -> EntryState {
        let entry = Entry::new(RequestId(1));
        let mut st = entry.state.into_inner().unwrap();
        st.expected_images = expected_images;
        st
    }

    #[test]
    fn each_mismatch_is_named() {
        assert_eq!(
            state(Some(2)).check(&tile(0, 1, 0, 1, 8)),
            Err(TileMismatch::ImageCount {
                announced: 1,
                expected: 2
            })
        );
        let mut st = state(None);
        st.check(&tile(0, 2, 0, 2, 8)).unwrap();
        st.accept(tile(0, 2, 0, 2, 8));
        assert_eq!(
            st.check(&tile(0, 3, 1, 2, 8)),
            Err(TileMismatch::ImageCountChanged {
                announced: 3,
                earlier: 2
            })
        );
        assert_eq!(
            st.check(&tile(0, 2, 1, 2, 16)),
            Err(TileMismatch::HiddenChanged {
                hidden: 16,
                earlier: 8
            })
        );
        assert_eq!(
            st.check(&tile(0, 2, 1, 3, 8)),
            Err(TileMismatch::TileCountChanged {
                image: 0,
                earlier: 2,
                tiles: 3
            })
        );
        assert_eq!(
            st.check(&tile(0, 2, 0, 2, 8)),
            Err(TileMismatch::Duplicate { image: 0, tile: 0 })
        );
        assert_eq!(
            TileMismatch::Duplicate { image: 0, tile: 1 }.to_string(),
            "duplicate tile 1 of image 0"
        );
        st.check(&tile(0, 2, 1, 2, 8)).unwrap();
    }
}
