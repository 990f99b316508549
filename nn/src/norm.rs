//! Normalisations over the last axis: LayerNorm / RMSNorm ([`Norm`]) and [`softmax`].

use candle_core::{Result as CandleResult, Tensor};

/// LayerNorm (weight and bias) or RMSNorm (weight only) over the last dimension.
#[derive(Debug, Clone)]
pub enum Norm {
    /// `(x - mean) / sqrt(var + eps) * weight + bias`.
    Layer {
        /// Scale.
        weight: Tensor,
        /// Shift.
        bias: Tensor,
        /// Variance epsilon.
        eps: f32,
    },
    /// `x / sqrt(mean(x^2) + eps) * weight`.
    Rms {
        /// Scale.
        weight: Tensor,
        /// Epsilon.
        eps: f32,
    },
}

impl Norm {
    /// Normalises the last axis of `x`.
    pub fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let x = x.contiguous()?;
        match self {
            Norm::Layer { weight, bias, eps } => candle_nn::ops::layer_norm(&x, weight, bias, *eps),
            Norm::Rms { weight, eps } => candle_nn::ops::rms_norm(&x, weight, *eps),
        }
    }
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> CandleResult<Tensor> {
    candle_nn::ops::softmax_last_dim(&x.contiguous()?)
}
