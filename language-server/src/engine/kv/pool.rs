//! The pool: per layer, one key and one value tensor holding every block's slots.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Result, Tensor};

use super::allocator::BlockAllocator;
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
    allocator: Mutex<BlockAllocator>,
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
            allocator: Mutex::new(BlockAllocator::new(config.blocks)),
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

    /// Blocks nobody holds.
    pub fn free_blocks(&self) -> usize {
        self.allocator().free()
    }

    /// The allocator (a poisoned lock is recovered: the allocator's state stays consistent
    /// because every method completes its update before returning).
    pub fn allocator(&self) -> MutexGuard<'_, BlockAllocator> {
        self.allocator.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn layer(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        Some((self.keys.get(layer)?, self.values.get(layer)?))
    }
}
