//! The pool: per layer, one key and one value tensor holding every block's slots.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Result, Tensor};

use super::allocator::BlockAllocator;
use super::prefix::PrefixCache;
use crate::model::LanguageConfig;

/// Shape and size of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolConfig {
    /// Decoder layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Token positions per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub blocks: usize,
}

impl KvPoolConfig {
    /// The KV cache a language server gets unless told otherwise (`--kv-cache-mib`).
    pub const DEFAULT_BUDGET_BYTES: usize = 1024 << 20;
    /// Token positions per block unless told otherwise (`--block-size`).
    pub const DEFAULT_BLOCK_SIZE: usize = 16;

    /// Bytes one block takes over all layers, keys and values, in `dtype`.
    pub fn bytes_per_block(model: &LanguageConfig, block_size: usize, dtype: DType) -> usize {
        2 * model.num_layers
            * model.num_kv_heads
            * block_size
            * model.head_dim
            * dtype.size_in_bytes()
    }

    /// As many blocks of `block_size` positions as fit in `budget_bytes`.
    pub fn from_budget(
        model: &LanguageConfig,
        block_size: usize,
        budget_bytes: usize,
        dtype: DType,
    ) -> Self {
        let per_block = Self::bytes_per_block(model, block_size, dtype).max(1);
        Self {
            layers: model.num_layers,
            kv_heads: model.num_kv_heads,
            head_dim: model.head_dim,
            block_size,
            blocks: budget_bytes / per_block,
        }
    }
}

/// Key/value storage for every block, `[kv_heads, blocks * block_size, head_dim]` per layer,
/// and the allocator that hands the blocks out.
#[derive(Debug)]
pub struct KvPool {
    config: KvPoolConfig,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    state: Mutex<PoolState>,
}

/// The pool's bookkeeping, behind one lock.
#[derive(Debug)]
pub struct PoolState {
    /// Block ids and reference counts.
    pub allocator: BlockAllocator,
    /// Cached prompt blocks.
    pub prefix: PrefixCache,
}

impl PoolState {
    /// `n` fresh blocks, evicting cached prefix blocks nobody uses when too few are free; `None`
    /// (and nothing taken) if even that is not enough.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        let short = n.saturating_sub(self.allocator.free());
        if short > 0 {
            self.prefix.evict(short, &mut self.allocator);
        }
        self.allocator.allocate(n)
    }

    /// Blocks free now or freeable by evicting unused cached blocks.
    pub fn available(&self) -> usize {
        let evictable = (0..self.allocator.total() as u32)
            .filter(|&b| self.allocator.refcount(b) == 1 && self.prefix.contains_block(b))
            .count();
        self.allocator.free() + evictable
    }
}

impl KvPool {
    /// Allocates the whole pool up front (memory never grows afterwards).
    pub fn new(config: KvPoolConfig, dtype: DType, device: &Device) -> Result<Self> {
        if config.block_size == 0 || config.blocks == 0 {
            candle_core::bail!("a KV pool needs at least one block of at least one position");
        }
        let shape = (
            config.kv_heads,
            config.blocks * config.block_size,
            config.head_dim,
        );
        let mut keys = Vec::with_capacity(config.layers);
        let mut values = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self {
            config,
            keys,
            values,
            state: Mutex::new(PoolState {
                allocator: BlockAllocator::new(config.blocks),
                prefix: PrefixCache::default(),
            }),
        })
    }

    /// The pool's shape.
    pub fn config(&self) -> &KvPoolConfig {
        &self.config
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.config.blocks
    }

    /// Blocks nobody holds (cached prefix blocks count as held).
    pub fn free_blocks(&self) -> usize {
        self.state().allocator.free()
    }

    /// The bookkeeping (a poisoned lock is recovered: every method completes its update before
    /// returning, so the state stays consistent).
    pub fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn layer(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        Some((self.keys.get(layer)?, self.values.get(layer)?))
    }
}
