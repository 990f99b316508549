//! Qwen3 self-attention over a packed batch of sequences: projections on all tokens at once,
//! then per sequence q/k RMSNorm (per head), RoPE at the sequence's positions, the KV cache,
//! and causal grouped-query attention.

use candle_core::{D, DType, Result, Tensor};
use dvd_nn::{Linear, Norm, softmax};

use super::kv_cache::SequenceCache;
use super::rope::Rope;

/// Bytes of attention scores materialised at once on the CPU (query rows are chunked).
const CPU_SCORE_BUDGET: usize = 16 * 1024 * 1024;
/// The same bound elsewhere.
const DEVICE_SCORE_BUDGET: usize = 512 * 1024 * 1024;

/// Where one sequence's tokens sit in the packed batch.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// First row in the packed batch.
    pub start: usize,
    /// Rows (new tokens) of this sequence.
    pub len: usize,
}

/// One layer's attention weights.
#[derive(Debug)]
pub struct Attention {
    /// q | k | v fused into one projection.
    pub qkv: Linear,
    /// Output projection.
    pub o: Linear,
    /// Per-head RMSNorm of queries.
    pub q_norm: Norm,
    /// Per-head RMSNorm of keys.
    pub k_norm: Norm,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl Attention {
    /// `x`: `[tokens, hidden]` packed; `spans` and `caches` say which rows belong to which
    /// sequence. Returns `[tokens, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        spans: &[Span],
        caches: &mut [&mut dyn SequenceCache],
        layer: usize,
        rope: &Rope,
    ) -> Result<Tensor> {
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.qkv.forward(x)?;
        let mut outputs = Vec::with_capacity(spans.len());
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            let rows = qkv.narrow(0, span.start, span.len)?;
            let q = rows.narrow(1, 0, h * d)?.reshape((span.len, h, d))?;
            let k = rows.narrow(1, h * d, kv * d)?.reshape((span.len, kv, d))?;
            let v = rows
                .narrow(1, (h + kv) * d, kv * d)?
                .reshape((span.len, kv, d))?;
            let past = cache.len();
            let q = rope.apply(&self.q_norm.forward(&q)?, past)?;
            let k = rope.apply(&self.k_norm.forward(&k)?, past)?;
            let (keys, values) = cache.append(
                layer,
                &k.transpose(0, 1)?.contiguous()?,
                &v.transpose(0, 1)?.contiguous()?,
            )?;
            outputs.push(self.attend(&q, &keys, &values, past)?);
        }
        let out = Tensor::cat(&outputs, 0)?;
        self.o.forward(&out)
    }

    /// Causal GQA of `q` `[len, heads, d]` (positions `past..past + len`) over cached
    /// `keys`/`values` `[kv_heads, past + len, d]`; returns `[len, heads * d]`.
    fn attend(&self, q: &Tensor, keys: &Tensor, values: &Tensor, past: usize) -> Result<Tensor> {
        let (len, h, d) = q.dims3()?;
        let kv = self.kv_heads;
        let group = h / kv;
        let total = past + len;
        // Heads of one kv group are adjacent: [kv, group, len, d].
        let q = (q.transpose(0, 1)?.contiguous()? * (d as f64).powf(-0.5))?
            .reshape((kv, group, len, d))?;
        let keys_t = keys.t()?;
        let budget = if q.device().is_cpu() {
            CPU_SCORE_BUDGET
        } else {
            DEVICE_SCORE_BUDGET
        };
        let rows = (budget / (h * total * 4).max(1)).clamp(1, len);
        let mut chunks = Vec::with_capacity(len.div_ceil(rows));
        for start in (0..len).step_by(rows) {
            let n = rows.min(len - start);
            let q = q
                .narrow(2, start, n)?
                .contiguous()?
                .reshape((kv, group * n, d))?;
            let mut scores = q.matmul(&keys_t)?.to_dtype(DType::F32)?;
            if n > 1 || past + start + n < total {
                // Query i (position past + start + i) sees keys 0..=past + start + i.
                let mask: Vec<f32> = (0..n)
                    .flat_map(|i| {
                        (0..total).map(move |j| {
                            if j <= past + start + i {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (1, 1, n, total), q.device())?;
                scores = scores
                    .reshape((kv, group, n, total))?
                    .broadcast_add(&mask)?
                    .reshape((kv, group * n, total))?;
            }
            let probs = softmax(&scores)?.to_dtype(values.dtype())?;
            let out = probs.matmul(values)?.reshape((kv, group, n, d))?;
            chunks.push(out);
        }
        // [kv, group, len, d] -> [len, heads * d]
        Tensor::cat(&chunks, 2)?
            .reshape((h, len, d))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((len, h * d))
    }
}

/// Index of the largest value in each row of `[rows, cols]` logits (lowest index on ties).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}
