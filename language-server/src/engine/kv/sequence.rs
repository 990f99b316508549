//! One sequence's block table over a shared [`KvPool`].

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::pool::{KvPool, PoolState};
use super::prefix::BlockKey;
use crate::model::{PagedCache, SequenceCache};

/// What can go wrong reserving cache space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free blocks now; the request should wait (nothing was taken).
    #[error("KV cache full: {needed} blocks needed, {free} free")]
    OutOfBlocks {
        /// Blocks the reservation needed.
        needed: usize,
        /// Blocks free at the time.
        free: usize,
    },
    /// The sequence could never fit, even in an empty pool.
    #[error("sequence of {positions} positions needs {needed} blocks; the pool has {total}")]
    TooLong {
        /// Positions asked for.
        positions: usize,
        /// Blocks they need.
        needed: usize,
        /// Blocks in the pool.
        total: usize,
    },
}

/// The pool slots of positions `0..positions`, as an index tensor.
#[derive(Debug)]
struct SlotIndex {
    positions: usize,
    index: Tensor,
}

/// A sequence's cached positions: a table of pool blocks, filled in order.
#[derive(Debug)]
pub struct PagedSequence {
    /// The table, over rank 0's pool tensors.
    table: BlockTable,
    /// The table over each rank's pool tensors, for the latest call of a model over several
    /// ranks.
    views: Vec<BlockTable>,
}

/// A block table over one rank's pool tensors: what the model writes through.
#[derive(Debug)]
struct BlockTable {
    pool: Arc<KvPool>,
    rank: usize,
    blocks: Vec<u32>,
    len: usize,
    /// Pool slots of the cached positions as an index tensor, built by the first layer of a
    /// step and reused by the others.
    slots: Option<SlotIndex>,
}

impl PagedSequence {
    /// An empty sequence on `pool`.
    pub fn new(pool: Arc<KvPool>) -> Self {
        Self {
            table: BlockTable {
                pool,
                rank: 0,
                blocks: Vec::new(),
                len: 0,
                slots: None,
            },
            views: Vec::new(),
        }
    }

    /// The sequence's block table.
    pub fn blocks(&self) -> &[u32] {
        &self.table.blocks
    }

    /// Blocks still to allocate before `tokens` more positions fit.
    pub fn blocks_needed(&self, tokens: usize) -> usize {
        let size = self.table.pool.config().block_size;
        (self.table.len + tokens)
            .div_ceil(size)
            .saturating_sub(self.table.blocks.len())
    }

    /// Makes room for `tokens` more positions: all the blocks or none.
    pub fn reserve(&mut self, tokens: usize) -> std::result::Result<(), KvError> {
        let needed = self.blocks_needed(tokens);
        if needed == 0 {
            return Ok(());
        }
        let total_needed = self.table.blocks.len() + needed;
        if total_needed > self.table.pool.total_blocks() {
            return Err(KvError::TooLong {
                positions: self.table.len + tokens,
                needed: total_needed,
                total: self.table.pool.total_blocks(),
            });
        }
        let mut state = self.table.pool.state();
        match state.allocate(needed) {
            Some(blocks) => {
                self.table.blocks.extend(blocks);
                Ok(())
            }
            None => Err(KvError::OutOfBlocks {
                needed,
                free: state.available(),
            }),
        }
    }

    /// Returns reserved blocks beyond what `positions` positions need (never blocks holding
    /// computed positions) to the pool.
    pub fn release_unused(&mut self, positions: usize) {
        let keep = positions
            .max(self.table.len)
            .div_ceil(self.table.pool.config().block_size);
        if keep < self.table.blocks.len() {
            let surplus = self.table.blocks.split_off(keep);
            self.table.pool.state().allocator.release(&surplus);
        }
    }

    /// A sequence that starts on the cached blocks of the longest known prefix of `keys` (see
    /// [`block_keys`](super::block_keys)); its length is the matched blocks' positions. Pass keys
    /// of blocks strictly before the prompt's last token, so at least one token is computed.
    pub fn from_prefix(pool: Arc<KvPool>, keys: &[BlockKey]) -> Self {
        let blocks = {
            let mut state = pool.state();
            let PoolState { allocator, prefix } = &mut *state;
            prefix.lookup(keys, allocator)
        };
        let len = blocks.len() * pool.config().block_size;
        Self {
            table: BlockTable {
                pool,
                rank: 0,
                blocks,
                len,
                slots: None,
            },
            views: Vec::new(),
        }
    }

    /// At a block boundary, takes over cached blocks for the next positions: where `keys` (the
    /// keys of the prompt's settled full blocks, from block 0) continue past the computed
    /// positions with blocks the prefix cache holds, those replace the sequence's own reserved,
    /// unwritten blocks. Returns the positions gained.
    pub fn adopt_prefix(&mut self, keys: &[BlockKey]) -> usize {
        let size = self.table.pool.config().block_size;
        let first = self.table.len / size;
        if !self.table.len.is_multiple_of(size) || keys.len() <= first {
            return 0;
        }
        let last = keys.len().min(self.table.blocks.len());
        if last <= first {
            return 0;
        }
        let mut state = self.table.pool.state();
        let PoolState { allocator, prefix } = &mut *state;
        let found = prefix.lookup(&keys[first..last], allocator);
        for (i, &block) in found.iter().enumerate() {
            let own = std::mem::replace(&mut self.table.blocks[first + i], block);
            allocator.release(&[own]);
        }
        drop(state);
        let gained = found.len() * size;
        self.table.len += gained;
        self.table.slots = None;
        gained
    }

    /// Offers this sequence's first `keys.len()` blocks to the prefix cache (call once they
    /// hold the computed positions `keys` describe).
    pub fn register_prefix(&self, keys: &[BlockKey]) {
        let full = (self.table.len / self.table.pool.config().block_size).min(keys.len());
        let mut state = self.table.pool.state();
        let PoolState { allocator, prefix } = &mut *state;
        prefix.insert(&keys[..full], &self.table.blocks[..full], allocator);
    }
}

impl BlockTable {
    /// Pool slot of position `p`.
    fn slot(&self, p: usize) -> usize {
        let size = self.pool.config().block_size;
        self.blocks[p / size] as usize * size + p % size
    }

    /// The same table over rank `rank`'s pool tensors.
    fn on_rank(&self, rank: usize) -> Self {
        Self {
            pool: self.pool.clone(),
            rank,
            blocks: self.blocks.clone(),
            len: self.len,
            slots: None,
        }
    }
}

impl SequenceCache for BlockTable {
    fn len(&self) -> usize {
        self.len
    }

    fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = keys.dim(1)?;
        let end = self.len + n;
        let size = self.pool.config().block_size;
        if end > self.blocks.len() * size {
            candle_core::bail!(
                "KV cache: {end} positions but only {} reserved",
                self.blocks.len() * size
            );
        }
        let Some((pool_keys, pool_values)) = self.pool.layer(self.rank, layer) else {
            candle_core::bail!("KV cache has no layer {layer} on rank {}", self.rank);
        };
        // Write each run of new positions that falls in one block.
        let mut p = self.len;
        while p < end {
            let run = (size - p % size).min(end - p);
            let slot = self.slot(p);
            let from = p - self.len;
            pool_keys.slice_set(&keys.narrow(1, from, run)?.contiguous()?, 1, slot)?;
            pool_values.slice_set(&values.narrow(1, from, run)?.contiguous()?, 1, slot)?;
            p += run;
        }
        let index = match &self.slots {
            Some(slots) if slots.positions == end => slots.index.clone(),
            _ => {
                let slots: Vec<u32> = (0..end).map(|p| self.slot(p) as u32).collect();
                let index = Tensor::from_vec(slots, end, keys.device())?;
                self.slots = Some(SlotIndex {
                    positions: end,
                    index: index.clone(),
                });
                index
            }
        };
        let out = (
            pool_keys.index_select(&index, 1)?,
            pool_values.index_select(&index, 1)?,
        );
        if layer + 1 == self.pool.config().layers {
            self.len = end;
        }
        Ok(out)
    }

    fn as_paged(&mut self) -> Option<&mut dyn PagedCache> {
        Some(self)
    }
}

impl PagedCache for BlockTable {
    fn cached(&self) -> usize {
        self.len
    }

    fn block_size(&self) -> usize {
        self.pool.config().block_size
    }

    fn block_ids(&self) -> &[u32] {
        &self.blocks
    }

    fn pool_layer(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        self.pool.layer(self.rank, layer)
    }

    fn advance(&mut self, n: usize) {
        self.len += n;
        self.slots = None;
    }
}

impl SequenceCache for PagedSequence {
    fn len(&self) -> usize {
        self.table.len
    }

    fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        self.table.append(layer, keys, values)
    }

    fn as_paged(&mut self) -> Option<&mut dyn PagedCache> {
        Some(&mut self.table)
    }

    fn rank_caches(&mut self, ranks: usize) -> Option<Vec<&mut (dyn SequenceCache + Send)>> {
        if ranks < 2 || self.table.pool.ranks() != ranks {
            return None;
        }
        // Views built for an earlier layer of the same step keep their slot indices.
        let current = self.views.len() == ranks
            && self
                .views
                .iter()
                .all(|v| v.len == self.table.len && v.blocks == self.table.blocks);
        if !current {
            self.views = (0..ranks).map(|rank| self.table.on_rank(rank)).collect();
        }
        Some(
            self.views
                .iter_mut()
                .map(|v| v as &mut (dyn SequenceCache + Send))
                .collect(),
        )
    }

    fn advance_ranks(&mut self, n: usize) {
        self.table.advance(n);
        self.views.clear();
    }
}

impl Drop for PagedSequence {
    fn drop(&mut self) {
        self.table
            .pool
            .state()
            .allocator
            .release(&self.table.blocks);
    }
}
