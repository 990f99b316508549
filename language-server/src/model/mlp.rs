//! Feed-forward blocks: Qwen3's SwiGLU MLP and Qwen3-MoE's routed experts.

use candle_core::{DType, Result, Tensor};
use dvd_nn::Linear;

/// `down(silu(gate(x)) * up(x))` with gate and up fused into one matmul.
#[derive(Debug)]
pub struct SwiGlu {
    /// gate | up.
    pub gate_up: Linear,
    /// Down projection.
    pub down: Linear,
    /// Width of gate (and of up).
    pub width: usize,
}

impl SwiGlu {
    /// Applies the MLP to `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        let gate = gate_up.narrow(1, 0, self.width)?;
        let up = gate_up.narrow(1, self.width, self.width)?;
        self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

/// Softmax router over experts, top-k, optional renormalisation, weighted sum of experts.
#[derive(Debug)]
pub struct Moe {
    /// `[experts, hidden]` router.
    pub router: Linear,
    /// The experts.
    pub experts: Vec<SwiGlu>,
    /// Experts per token.
    pub top_k: usize,
    /// Renormalise the chosen weights to sum to one.
    pub norm_topk_prob: bool,
}

impl Moe {
    /// Applies the block to `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&self.router.forward(x)?.to_dtype(DType::F32)?)?
                .to_vec2::<f32>()?;
        // Per expert: the tokens routed to it and their weights.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (token, row) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..row.len()).collect();
            // Descending probability, lower expert first on ties (torch.topk's order).
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let chosen = &order[..self.top_k];
            let sum: f32 = chosen.iter().map(|&e| row[e]).sum();
            for &e in chosen {
                let w = if self.norm_topk_prob {
                    row[e] / sum
                } else {
                    row[e]
                };
                routed[e].0.push(token as u32);
                routed[e].1.push(w);
            }
        }
        let mut out = x.zeros_like()?;
        for (expert, (ids, weights)) in self.experts.iter().zip(routed) {
            if ids.is_empty() {
                continue;
            }
            let n = ids.len();
            let index = Tensor::from_vec(ids, n, x.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), x.device())?.to_dtype(x.dtype())?;
            let y = expert
                .forward(&x.index_select(&index, 0)?)?
                .broadcast_mul(&weights)?;
            out = out.index_add(&index, &y, 0)?;
        }
        debug_assert_eq!(out.dim(0).ok(), Some(tokens));
        Ok(out)
    }
}

/// A layer's feed-forward block.
#[derive(Debug)]
pub enum FeedForward {
    /// Dense SwiGLU.
    Dense(SwiGlu),
    /// Routed experts.
    Moe(Moe),
}

impl FeedForward {
    /// Applies the block to `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(m) => m.forward(x),
            Self::Moe(m) => m.forward(x),
        }
    }
}
