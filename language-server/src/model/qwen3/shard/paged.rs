//! The decoder's forward pass on GPUs over a paged KV pool (bf16 on CUDA): every layer takes
//! the whole packed batch at once. New keys and values go straight into their pool slots; rows
//! of long prefill chunks attend with the flash-attention kernel (over the chunk's keys and any
//! cached ones, gathered from the pool), single rows and short chunks with the paged
//! decode kernel that reads the pool through the block tables. One kernel per layer does the
//! q/k RMSNorm, RoPE (angles from one table on the device) and the pool writes.

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor};
use dvd_nn::Norm;
use dvd_nn::kernels::{
    AttentionDims, DevicePagedTables, DeviceRowSlots, HeadView, PagedBounds, PagedRow, PagedTables,
    QkNormRope, RowSlot, RowSlotBounds, RowSlots, add_rms_norm, flash_attention, paged_attention,
    qk_norm_rope_cache, uninit_bf16,
};

use super::ModelShard;
use crate::model::ModelError;
use crate::model::attention::{Attention, Span};
use crate::model::kv_cache::{PagedCache, SequenceCache};
use crate::model::rope::Rope;

/// Chunks of at least this many rows use flash attention; shorter ones the paged kernel.
const FLASH_MIN_ROWS: usize = 16;

/// Per-forward bookkeeping shared by every layer.
struct PagedBatch {
    /// RoPE tables of every position, `[max_positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// Every row's position and pool slot, checked against the RoPE tables and the pool.
    rows: DeviceRowSlots,
    /// Spans attended with flash attention.
    flash: Vec<FlashSpan>,
    /// Rows attended with the paged kernel, and the block tables they read.
    paged: Option<DevicePagedTables>,
}

/// A prefill chunk long enough for flash attention.
struct FlashSpan {
    span: Span,
    /// Positions cached before the chunk.
    past: usize,
    /// Pool slots of every position up to the chunk's end, u32.
    gather: Tensor,
}

/// cos/sin for every position up to the model's maximum, on the device.
#[derive(Debug, Default)]
pub(in crate::model) struct RopeTable(OnceLock<(Tensor, Tensor)>);

impl RopeTable {
    fn get(
        &self,
        rope: &Rope,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<&(Tensor, Tensor)> {
        if let Some(t) = self.0.get() {
            return Ok(t);
        }
        let table = rope.tables(0, len, dtype, device)?;
        Ok(self.0.get_or_init(|| table))
    }
}

impl ModelShard {
    /// Whether the batch can take the paged GPU path: bf16 on CUDA, every cache paged, head
    /// widths and grouping (of this rank's heads) the kernels support.
    pub(super) fn paged_ok(&self, x: &Tensor, caches: &mut [&mut dyn SequenceCache]) -> bool {
        let (heads, kv_heads) = (self.shard.heads.len(), self.shard.kv_heads.len().max(1));
        let group = heads / kv_heads;
        dvd_nn::kernels::fused_ok(x)
            && matches!(self.config.head_dim, 64 | 128)
            && matches!(group, 1 | 2 | 4 | 8)
            && heads.is_multiple_of(kv_heads)
            && caches.iter_mut().all(|cache| cache.as_paged().is_some())
    }

    /// Runs every layer over the packed batch `x` (`[tokens, hidden]`, rows of `spans`) and
    /// advances the caches. Returns the final hidden states of all rows.
    pub(super) fn forward_paged(
        &self,
        mut x: Tensor,
        spans: &[Span],
        caches: &mut [&mut dyn SequenceCache],
    ) -> std::result::Result<Tensor, ModelError> {
        let mut paged: Vec<&mut dyn PagedCache> =
            caches.iter_mut().filter_map(|c| c.as_paged()).collect();
        if paged.len() != spans.len() {
            return Err(ModelError::InvalidInput("every cache must be paged".into()));
        }
        let batch = self.plan(&x, spans, &paged)?;
        // Each residual add is fused with the norm after it; `pending` is the branch output
        // not yet added to `x`.
        let mut pending: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (pool_k, pool_v) = paged[0]
                .pool_layer(i)
                .ok_or_else(|| ModelError::InvalidInput(format!("KV pool has no layer {i}")))?;
            let normed;
            (x, normed) = add_norm(&x, pending.take(), &layer.input_norm)?;
            let attended =
                self.all_reduce(attend(&layer.attention, &normed, &batch, pool_k, pool_v)?)?;
            let normed;
            (x, normed) = add_norm(&x, Some(attended), &layer.post_attention_norm)?;
            pending = Some(self.all_reduce(layer.feed_forward.forward(&normed)?)?);
        }
        if let Some(branch) = pending {
            x = (x + branch)?;
        }
        for (cache, span) in paged.iter_mut().zip(spans) {
            cache.advance(span.len);
        }
        Ok(x)
    }

    /// Positions, slots, RoPE angles and the split between flash and paged rows.
    fn plan(
        &self,
        x: &Tensor,
        spans: &[Span],
        caches: &[&mut dyn PagedCache],
    ) -> std::result::Result<PagedBatch, ModelError> {
        let device = x.device();
        let tokens = x.dim(0)?;
        let mut new_rows = Vec::with_capacity(tokens);
        let mut flash = Vec::new();
        let mut queries = Vec::new();
        let block_size = caches[0].block_size();
        let (pool_k, _) = caches[0]
            .pool_layer(0)
            .ok_or_else(|| ModelError::InvalidInput("KV pool has no layer 0".into()))?;
        let pool_slots = pool_k.dim(1)?;
        let mut next_row = 0;
        for (s, (span, cache)) in spans.iter().zip(caches).enumerate() {
            let past = cache.cached();
            let blocks = cache.block_ids();
            if cache.block_size() != block_size {
                return Err(ModelError::InvalidInput(
                    "caches from different pools".into(),
                ));
            }
            // The output is written span by span, so the spans must cover its rows.
            if span.start != next_row {
                return Err(ModelError::InvalidInput(
                    "spans must cover the batch's rows back to back".into(),
                ));
            }
            next_row += span.len;
            if past + span.len > blocks.len() * block_size {
                return Err(ModelError::InvalidInput(format!(
                    "KV cache: {} positions but only {} reserved",
                    past + span.len,
                    blocks.len() * block_size
                )));
            }
            let slot =
                |p: usize| blocks[p / block_size] * block_size as u32 + (p % block_size) as u32;
            for p in past..past + span.len {
                new_rows.push(RowSlot {
                    position: p as u32,
                    slot: slot(p),
                });
            }
            if span.len >= FLASH_MIN_ROWS {
                let index: Vec<u32> = (0..past + span.len).map(slot).collect();
                let gather = Tensor::from_vec(index, past + span.len, device)?;
                flash.push(FlashSpan {
                    span: *span,
                    past,
                    gather,
                });
            } else {
                queries.extend((0..span.len).map(|j| PagedRow {
                    row: (span.start + j) as u32,
                    sequence: s as u32,
                    position: (past + j) as u32,
                }));
            }
        }
        if next_row != tokens {
            return Err(ModelError::InvalidInput(
                "spans must cover the batch's rows back to back".into(),
            ));
        }
        let (cos_table, sin_table) = self.rope_table.get(
            &self.rope,
            self.config.max_position_embeddings,
            x.dtype(),
            device,
        )?;
        let row_bounds = RowSlotBounds {
            rope_positions: cos_table.dim(0)?,
            pool_slots,
        };
        let rows = RowSlots::new(&new_rows, row_bounds)?;
        // Checked even without paged rows: every block id in the pool keeps the flash spans'
        // gathers inside it too.
        let blocks: Vec<&[u32]> = caches.iter().map(|c| c.block_ids()).collect();
        let bounds = PagedBounds {
            rows: tokens,
            pool_slots,
        };
        let tables = PagedTables::new(&blocks, block_size, &queries, bounds)?;
        let paged = if tables.is_empty() {
            None
        } else {
            Some(tables.upload(device)?)
        };
        Ok(PagedBatch {
            cos: cos_table.clone(),
            sin: sin_table.clone(),
            rows: rows.upload(device)?,
            flash,
            paged,
        })
    }
}

/// `x + branch` (when there is a branch) and its RMSNorm, fused.
fn add_norm(x: &Tensor, branch: Option<Tensor>, norm: &Norm) -> Result<(Tensor, Tensor)> {
    match (branch, norm) {
        (Some(branch), Norm::Rms { weight, eps }) => add_rms_norm(x, &branch, weight, *eps),
        (Some(branch), _) => {
            let sum = (x + branch)?;
            let normed = norm.forward(&sum)?;
            Ok((sum, normed))
        }
        (None, _) => Ok((x.clone(), norm.forward(x)?)),
    }
}

/// One layer's attention over the packed batch; returns `[tokens, hidden]`.
fn attend(
    a: &Attention,
    x: &Tensor,
    batch: &PagedBatch,
    pool_k: &Tensor,
    pool_v: &Tensor,
) -> Result<Tensor> {
    let (h, kv, d) = (a.heads, a.kv_heads, a.head_dim);
    let tokens = x.dim(0)?;
    let qkv = a.qkv.forward(x)?.contiguous()?;
    let (
        Norm::Rms {
            weight: q_weight,
            eps,
        },
        Norm::Rms {
            weight: k_weight, ..
        },
    ) = (&a.q_norm, &a.k_norm)
    else {
        candle_core::bail!("Qwen3 q/k norms are RMSNorms");
    };
    let q = qk_norm_rope_cache(
        QkNormRope {
            qkv: &qkv,
            heads: h,
            kv_heads: kv,
            head_dim: d,
            q_weight,
            k_weight,
            eps: *eps,
            cos: &batch.cos,
            sin: &batch.sin,
            rows: &batch.rows,
        },
        pool_k,
        pool_v,
    )?;
    // SAFETY: every row of `out` is written below, every head: `plan` checked that the spans
    // cover the rows back to back, and each span's rows go either to flash attention (the
    // whole span) or to the paged kernel (one query row each).
    #[allow(unsafe_code)]
    let out = unsafe { uninit_bf16(x.device(), (tokens, h * d)) }?;
    let scale = (d as f32).powf(-0.5);
    for FlashSpan { span, past, gather } in &batch.flash {
        let dims = AttentionDims {
            batch: 1,
            q_len: span.len,
            kv_len: past + span.len,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        };
        let q_view = rows_view(&q, span.start, h, d);
        let o_view = rows_view(&out, span.start, h, d);
        // Keys and values up to the chunk's end, gathered from the pool: [kv, positions, d].
        let keys = pool_k.index_select(gather, 1)?;
        let values = pool_v.index_select(gather, 1)?;
        let n = gather.dim(0)?;
        let cached = |t| HeadView {
            tensor: t,
            offset: 0,
            batch_stride: 0,
            row_stride: d,
            head_stride: n * d,
        };
        flash_attention(
            q_view,
            cached(&keys),
            cached(&values),
            o_view,
            dims,
            scale,
            true,
        )?;
    }
    if let Some(tables) = &batch.paged {
        paged_attention(&q, pool_k, pool_v, tables, &out, h, scale)?;
    }
    a.o.forward(&out)
}

/// Rows `start..` of a packed `[tokens, heads * d]` tensor as one attention operand.
fn rows_view(t: &Tensor, start: usize, heads: usize, d: usize) -> HeadView<'_> {
    HeadView {
        tensor: t,
        offset: start * heads * d,
        batch_stride: 0,
        row_stride: heads * d,
        head_stride: d,
    }
}
