//! Key/value caches: the [`SequenceCache`] interface the forward pass writes through, and
//! [`KvCache`], one growing buffer per layer for a single sequence (the coupled path; the serving
//! engine uses paged blocks, `crate::engine::kv`).

use candle_core::{Result, Tensor};

/// Where one sequence's keys and values live.
pub trait SequenceCache {
    /// Positions cached (the next token's position).
    fn len(&self) -> usize;

    /// Whether nothing is cached.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `keys`/`values` `[kv_heads, n, head_dim]` to layer `layer` and returns every
    /// cached position of that layer, `[kv_heads, len + n, head_dim]`. Layers are appended in
    /// order; the sequence length advances after the last one.
    fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)>;

    /// The cache as blocks of a shared pool, when it is one (GPU kernels then read and write
    /// it in place instead of going through [`SequenceCache::append`]).
    fn as_paged(&mut self) -> Option<&mut dyn PagedCache> {
        None
    }

    /// For a model over `ranks` tensor-parallel ranks: one cache per rank over the same
    /// positions, each holding its rank's KV heads, for one call of the model; `None` when this
    /// cache holds a single rank's. The parts' lengths are not this cache's: once a step's last
    /// layer has run, the model calls [`SequenceCache::advance_ranks`].
    fn rank_caches(&mut self, ranks: usize) -> Option<Vec<&mut (dyn SequenceCache + Send)>> {
        let _ = ranks;
        None
    }

    /// Records `n` positions written through [`SequenceCache::rank_caches`] into every layer.
    fn advance_ranks(&mut self, n: usize) {
        let _ = n;
    }
}

/// A sequence cache kept in blocks of a pool (`[kv_heads, blocks * block_size, head_dim]` per
/// layer): position `p` lives in slot `blocks[p / block_size] * block_size + p % block_size`.
pub trait PagedCache {
    /// Positions cached.
    fn cached(&self) -> usize;
    /// Positions per block.
    fn block_size(&self) -> usize;
    /// The sequence's blocks in position order (reserved, possibly not yet filled).
    fn block_ids(&self) -> &[u32];
    /// Key and value pool tensors of `layer`.
    fn pool_layer(&self, layer: usize) -> Option<(&Tensor, &Tensor)>;
    /// Records `n` more positions, written by the caller into every layer's slots.
    fn advance(&mut self, n: usize);
}

/// Initial capacity in positions.
const INITIAL_CAPACITY: usize = 256;

/// Keys and values of one layer: `[kv_heads, capacity, head_dim]`, the first `len` positions
/// filled.
#[derive(Debug)]
struct LayerCache {
    keys: Tensor,
    values: Tensor,
}

/// The cached keys and values of one sequence, every layer. Not `Clone`: appends write into
/// the buffers in place.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    /// Each rank's cache, for a model over several ranks (`layers` then stays empty).
    ranks: Vec<KvCache>,
}

impl KvCache {
    /// An empty cache for a model with `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self::for_ranks(layers, 1)
    }

    /// An empty cache for a model with `layers` layers over `ranks` tensor-parallel ranks.
    pub fn for_ranks(layers: usize, ranks: usize) -> Self {
        let (own, parts) = match ranks {
            0 | 1 => (layers, Vec::new()),
            n => (0, (0..n).map(|_| Self::new(layers)).collect()),
        };
        Self {
            layers: (0..own).map(|_| None).collect(),
            len: 0,
            ranks: parts,
        }
    }
}

impl SequenceCache for KvCache {
    fn len(&self) -> usize {
        self.len
    }

    fn rank_caches(&mut self, ranks: usize) -> Option<Vec<&mut (dyn SequenceCache + Send)>> {
        if self.ranks.len() != ranks || ranks < 2 {
            return None;
        }
        Some(
            self.ranks
                .iter_mut()
                .map(|c| c as &mut (dyn SequenceCache + Send))
                .collect(),
        )
    }

    fn advance_ranks(&mut self, n: usize) {
        self.len += n;
    }

    fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = keys.dim(1)?;
        let needed = self.len + n;
        let layers = self.layers.len();
        let Some(slot) = self.layers.get_mut(layer) else {
            candle_core::bail!(
                "kv cache: layer {layer} of {layers} (a cache split over ranks is written through its parts)"
            );
        };
        let grow = match slot {
            Some(c) => c.keys.dim(1)? < needed,
            None => true,
        };
        if grow {
            let (heads, _, dim) = keys.dims3()?;
            let capacity = needed.max(INITIAL_CAPACITY).next_power_of_two();
            let fresh = LayerCache {
                keys: Tensor::zeros((heads, capacity, dim), keys.dtype(), keys.device())?,
                values: Tensor::zeros((heads, capacity, dim), values.dtype(), values.device())?,
            };
            if let Some(old) = slot.as_ref().filter(|_| self.len > 0) {
                fresh
                    .keys
                    .slice_set(&old.keys.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                fresh
                    .values
                    .slice_set(&old.values.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
            *slot = Some(fresh);
        }
        let Some(cache) = self.layers[layer].as_ref() else {
            candle_core::bail!("kv cache layer {layer} missing");
        };
        cache.keys.slice_set(&keys.contiguous()?, 1, self.len)?;
        cache.values.slice_set(&values.contiguous()?, 1, self.len)?;
        let out = (
            cache.keys.narrow(1, 0, needed)?,
            cache.values.narrow(1, 0, needed)?,
        );
        if layer + 1 == layers {
            self.len = needed;
        }
        Ok(out)
    }
}
