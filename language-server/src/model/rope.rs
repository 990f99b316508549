//! Rotary position embedding (rotate-half form), computed like transformers' Qwen3 in f32.

use candle_core::{DType, Device, Result, Tensor};

/// Inverse frequencies of a RoPE with base `theta` over `head_dim`.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `inv_freq[i] = 1 / theta^(2i / head_dim)`, in f32 as the reference.
    pub fn new(theta: f64, head_dim: usize) -> Self {
        let base = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// `(cos, sin)` tables `[len, head_dim / 2]` for positions `start..start + len`.
    pub fn tables(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Rotates `x` `[len, heads, head_dim]` for positions `start..start + len`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (len, heads, dim) = x.dims3()?;
        let (cos, sin) = self.tables(start, len, x.dtype(), x.device())?;
        candle_nn::rotary_emb::rope_thd(
            &x.reshape((1, len, heads, dim))?.contiguous()?,
            &cos,
            &sin,
        )?
        .reshape((len, heads, dim))
    }
}
