//! Feed-forward blocks: Qwen3's SwiGLU MLP, or Qwen3-MoE's routed experts ([`Moe`]).

use candle_core::{Result, Tensor};
use dvd_nn::moe::Moe;
use dvd_nn::{Linear, fused};

/// `down(silu(gate(x)) * up(x))` with gate and up fused into one matmul.
#[derive(Debug)]
pub struct SwiGlu {
    /// gate | up.
    pub gate_up: Linear,
    /// Down projection.
    pub down: Linear,
}

impl SwiGlu {
    /// Applies the MLP to `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down
            .forward(&fused::silu_mul(&self.gate_up.forward(x)?)?)
    }
}

/// A layer's feed-forward block.
#[derive(Debug)]
pub enum FeedForward {
    /// Dense SwiGLU.
    Dense(SwiGlu),
    /// Routed experts.
    Moe(Box<Moe>),
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
