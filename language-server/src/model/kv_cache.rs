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
}

impl KvCache {
    /// An empty cache for a model with `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| None).collect(),
            len: 0,
        }
    }
}

impl SequenceCache for KvCache {
    fn len(&self) -> usize {
        self.len
    }

    fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = keys.dim(1)?;
        let needed = self.len + n;
        let slot = &mut self.layers[layer];
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
        let Some(cache) = slot.as_ref() else {
            candle_core::bail!("kv cache layer {layer} missing");
        };
        cache.keys.slice_set(&keys.contiguous()?, 1, self.len)?;
        cache.values.slice_set(&values.contiguous()?, 1, self.len)?;
        let out = (
            cache.keys.narrow(1, 0, needed)?,
            cache.values.narrow(1, 0, needed)?,
        );
        if layer + 1 == self.layers.len() {
            self.len = needed;
        }
        Ok(out)
    }
}
