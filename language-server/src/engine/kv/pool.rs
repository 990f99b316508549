//! The pool: per layer, one key and one value tensor holding every block's slots.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Result, Tensor};

use super::allocator::BlockAllocator;
use super::prefix::PrefixCache;
use crate::model::{LanguageConfig, LanguageModel, MemoryPlan};

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
        let per_block = Self::bytes_per_block(model, block_size, dtype);
        Self::with_heads(
            model,
            model.num_kv_heads,
            block_size,
            budget_bytes,
            per_block,
        )
    }

    /// The pool of `model` over its ranks: each rank's KV heads, as many blocks as fit in
    /// `budget_bytes_per_rank` on every rank.
    pub fn for_model(
        model: &LanguageModel,
        block_size: usize,
        budget_bytes_per_rank: usize,
    ) -> Self {
        let plan = MemoryPlan::new(
            model.config(),
            model.partition(),
            model.options().dtype.size_in_bytes(),
        );
        Self::with_heads(
            model.config(),
            model.partition().kv_heads_per_rank(),
            block_size,
            budget_bytes_per_rank,
            plan.kv_bytes_per_block(block_size) as usize,
        )
    }

    fn with_heads(
        model: &LanguageConfig,
        kv_heads: usize,
        block_size: usize,
        budget_bytes: usize,
        bytes_per_block: usize,
    ) -> Self {
        Self {
            layers: model.num_layers,
            kv_heads,
            head_dim: model.head_dim,
            block_size,
            blocks: budget_bytes / bytes_per_block.max(1),
        }
    }
}

/// Key/value storage for every block, `[kv_heads, blocks * block_size, head_dim]` per layer on
/// each rank of the model (its KV heads, on its device), and the allocator that hands the blocks
/// out: block tables are shared by the ranks.
#[derive(Debug)]
pub struct KvPool {
    config: KvPoolConfig,
    ranks: Vec<RankStorage>,
    state: Mutex<PoolState>,
}

/// One rank's tensors, per layer.
#[derive(Debug)]
struct RankStorage {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
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
        Self::for_ranks(config, dtype, std::slice::from_ref(device))
    }

    /// The pool of a model over ranks on `devices` (one per rank), each holding `config`'s
    /// heads; allocated up front.
    pub fn for_ranks(config: KvPoolConfig, dtype: DType, devices: &[Device]) -> Result<Self> {
        if config.block_size == 0 || config.blocks == 0 || devices.is_empty() {
            candle_core::bail!("a KV pool needs at least one block of at least one position");
        }
        let shape = (
            config.kv_heads,
            config.blocks * config.block_size,
            config.head_dim,
        );
        let mut ranks = Vec::with_capacity(devices.len());
        for device in devices {
            let mut keys = Vec::with_capacity(config.layers);
            let mut values = Vec::with_capacity(config.layers);
            for _ in 0..config.layers {
                keys.push(Tensor::zeros(shape, dtype, device)?);
                values.push(Tensor::zeros(shape, dtype, device)?);
            }
            ranks.push(RankStorage { keys, values });
        }
        Ok(Self {
            config,
            ranks,
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

    /// Ranks the pool holds heads for.
    pub fn ranks(&self) -> usize {
        self.ranks.len()
    }

    /// Rank `rank`'s key and value tensors of `layer`.
    pub(super) fn layer(&self, rank: usize, layer: usize) -> Option<(&Tensor, &Tensor)> {
        let storage = self.ranks.get(rank)?;
        Some((storage.keys.get(layer)?, storage.values.get(layer)?))
    }
}
