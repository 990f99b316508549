//! The Visual Resolution Router (ViR) of InternVL3.5-Flash: scores each tile's ViT tokens and
//! decides, per request, which tiles are compressed to 64 tokens (`mlp2`) instead of 256 (`mlp1`).
//!
//! Scoring: a learned query attends to the tile's tokens four times (`attn1`/`norm1`, then
//! `attn2`/`norm2` three times: the reference reuses them and never runs `attn3`/`attn4`), four
//! residual gating blocks, then a softmax gate whose channel 0 is the "compress" probability.

use candle_core::{Result as CandleResult, Tensor};

use super::projector::PROJECTOR_NORM_EPS;
use dvd_nn::ModelError;
use dvd_nn::{Linear, Loader, Norm, softmax};

/// Heads of the pooling attention (`CrossAttentionPooling(dim, num_heads=16)` in the reference).
pub const POOLING_HEADS: usize = 16;
/// Gating blocks in the reference.
const GATING_BLOCKS: usize = 4;

/// Thresholds of the routing decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterThresholds {
    /// Quantile (0..=1) of the request's scores that a tile's score must exceed.
    pub relative: f64,
    /// Score a tile must reach.
    pub absolute: f64,
}

/// What the router decided for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterDecision {
    /// Per tile, the router's probability of "compress".
    pub compress_probs: Vec<f32>,
    /// The request's quantile threshold.
    pub threshold: f32,
    /// Per tile, whether it was compressed to the `mlp2` path.
    pub compress: Vec<bool>,
}

/// Which tiles to compress: `p > quantile(p, relative) && p >= absolute`, with the quantile
/// interpolated linearly over all of the request's tiles as `torch.quantile` does. A request of
/// one tile is never compressed.
pub fn decide(compress_probs: Vec<f32>, thresholds: RouterThresholds) -> RouterDecision {
    let threshold = quantile(&compress_probs, thresholds.relative as f32);
    let absolute = thresholds.absolute as f32;
    let compress = compress_probs
        .iter()
        .map(|&p| p > threshold && p >= absolute)
        .collect();
    RouterDecision {
        compress_probs,
        threshold,
        compress,
    }
}

/// `torch.quantile(values, q)` with linear interpolation, computed in f32 like the reference.
fn quantile(values: &[f32], q: f32) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f32;
    let below = rank.floor();
    let weight = rank - below;
    let low = sorted[below as usize];
    let high = sorted[(rank.ceil() as usize).min(sorted.len() - 1)];
    // torch.lerp's two-sided formula.
    if weight < 0.5 {
        low + weight * (high - low)
    } else {
        high - (high - low) * (1.0 - weight)
    }
}

/// `nn.MultiheadAttention` with one query per tile.
#[derive(Debug)]
struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl CrossAttention {
    fn load(loader: &Loader, prefix: &str, d: usize) -> Result<Self, ModelError> {
        let in_proj = loader.layer(
            loader.tensor(&format!("{prefix}.in_proj_weight"), &[3 * d, d])?,
            Some(loader.tensor(&format!("{prefix}.in_proj_bias"), &[3 * d])?),
        );
        // in_proj rows are q | k | v.
        let [q, k, v]: [Linear; 3] = in_proj
            .split(3)?
            .try_into()
            .map_err(|_| ModelError::Unsupported(format!("{prefix}.in_proj_weight split")))?;
        Ok(Self {
            q,
            k,
            v,
            out: loader.linear(&format!("{prefix}.out_proj"), d, d, true)?,
        })
    }

    /// `query`: `[T, 1, D]`, `tokens`: `[T, N, D]` -> `[T, 1, D]`.
    fn forward(&self, query: &Tensor, tokens: &Tensor) -> CandleResult<Tensor> {
        let (t, n, d) = tokens.dims3()?;
        let hd = d / POOLING_HEADS;
        let heads = |x: Tensor, len: usize| -> CandleResult<Tensor> {
            x.reshape((t, len, POOLING_HEADS, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (hd as f64).powf(-0.5);
        let q = heads((self.q.forward(query)? * scale)?, 1)?;
        let k = heads(self.k.forward(tokens)?, n)?;
        let v = heads(self.v.forward(tokens)?, n)?;
        let attended = softmax(&q.matmul(&k.t()?)?)?.matmul(&v)?;
        self.out
            .forward(&attended.transpose(1, 2)?.reshape((t, 1, d))?)
    }
}

#[derive(Debug)]
struct GatingBlock {
    fc1: Linear,
    fc2: Linear,
    norm: Norm,
}

/// The router's weights (`pooling_before_gating.*`, `gating.*`).
#[derive(Debug)]
pub(crate) struct Router {
    query: Tensor,
    attn1: CrossAttention,
    norm1: Norm,
    attn2: CrossAttention,
    norm2: Norm,
    blocks: Vec<GatingBlock>,
    gate_norm: Norm,
    gate: Linear,
}

impl Router {
    /// Whether the checkpoint carries router weights.
    pub fn present(loader: &Loader) -> bool {
        loader
            .checkpoint
            .contains("pooling_before_gating.query_token")
    }

    pub fn load(loader: &Loader, d: usize) -> Result<Self, ModelError> {
        if !d.is_multiple_of(POOLING_HEADS) {
            return Err(ModelError::Unsupported(format!(
                "router pooling needs the ViT width {d} to split into {POOLING_HEADS} heads"
            )));
        }
        let pooling = "pooling_before_gating";
        let ln = |name: String| loader.layer_norm(&name, d, PROJECTOR_NORM_EPS);
        let info = loader
            .checkpoint
            .info("gating.block1.0.weight")
            .ok_or_else(|| dvd_checkpoint::CheckpointError::MissingTensor {
                name: "gating.block1.0.weight".into(),
            })?;
        let expanded = info.shape.first().copied().unwrap_or(0);
        let mut blocks = Vec::with_capacity(GATING_BLOCKS);
        for k in 1..=GATING_BLOCKS {
            let prefix = format!("gating.block{k}");
            blocks.push(GatingBlock {
                fc1: loader.linear(&format!("{prefix}.0"), expanded, d, true)?,
                fc2: loader.linear(&format!("{prefix}.3"), d, expanded, true)?,
                norm: ln(format!("{prefix}.5"))?,
            });
        }
        Ok(Self {
            query: loader.tensor_squeezed(&format!("{pooling}.query_token"), &[1, 1, d])?,
            attn1: CrossAttention::load(loader, &format!("{pooling}.attn1"), d)?,
            norm1: ln(format!("{pooling}.norm1"))?,
            attn2: CrossAttention::load(loader, &format!("{pooling}.attn2"), d)?,
            norm2: ln(format!("{pooling}.norm2"))?,
            blocks,
            gate_norm: ln("gating.gate.0".into())?,
            gate: loader.linear("gating.gate.1", 2, d, true)?,
        })
    }

    /// Softmax gate `[T, 2]` for ViT tokens `[T, N, D]`; channel 0 is "compress".
    pub fn probabilities(&self, tokens: &Tensor) -> CandleResult<Tensor> {
        let (t, _, d) = tokens.dims3()?;
        let query = self.query.broadcast_as((t, 1, d))?.contiguous()?;
        let mut pooled = self.norm1.forward(&self.attn1.forward(&query, tokens)?)?;
        for _ in 0..3 {
            pooled = self.norm2.forward(&self.attn2.forward(&pooled, tokens)?)?;
        }
        let mut x = pooled.reshape((t, d))?;
        for block in &self.blocks {
            let y = block
                .norm
                .forward(&block.fc2.forward(&block.fc1.forward(&x)?.gelu_erf()?)?)?;
            x = (x + y)?;
        }
        softmax(&self.gate.forward(&self.gate_norm.forward(&x)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(relative: f64, absolute: f64) -> RouterThresholds {
        RouterThresholds { relative, absolute }
    }

    #[test]
    fn quantile_interpolates_linearly() {
        let v = [0.4, 0.1, 0.3, 0.2];
        assert_eq!(quantile(&v, 0.0), 0.1);
        assert_eq!(quantile(&v, 1.0), 0.4);
        assert!((quantile(&v, 0.5) - 0.25).abs() < 1e-7);
        assert!((quantile(&v, 0.9) - 0.37).abs() < 1e-6);
    }

    #[test]
    fn single_tile_is_never_compressed() {
        for rel in [0.0, 0.5, 1.0] {
            assert_eq!(decide(vec![0.99], t(rel, 0.0)).compress, vec![false]);
        }
    }

    #[test]
    fn both_thresholds_must_pass() {
        let p = [0.9, 0.2, 0.6, 0.4];
        // Quantile 0.25 = 0.35: 0.9, 0.6, 0.4 are above it; absolute 0.5 keeps 0.4.
        assert_eq!(
            decide(p.to_vec(), t(0.25, 0.5)).compress,
            vec![true, false, true, false]
        );
        assert_eq!(
            decide(p.to_vec(), t(0.25, 0.0)).compress,
            vec![true, false, true, true]
        );
        assert_eq!(decide(p.to_vec(), t(1.0, 0.0)).compress, vec![false; 4]);
    }
}
