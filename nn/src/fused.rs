//! Epilogues that run as one kernel on GPUs (bf16 on CUDA, widths a multiple of 8, through
//! `dvd-kernels`) and as the equivalent candle ops everywhere else, rounding the same way.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::Linear;
use crate::host::with_values;

/// `gelu(x W^T + b)`. On GPUs one GEMM with the bias and GELU in its epilogue (cuBLASLt's
/// tanh-form GELU, within bf16 rounding of the erf form); elsewhere the erf form.
pub fn linear_gelu(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(bias) = linear.epilogue_bias(x) {
        return dvd_kernels::linear_epilogue(
            &x.contiguous()?,
            linear.weight(),
            bias,
            dvd_kernels::Epilogue::BiasGelu,
            None,
        );
    }
    match linear.bias() {
        Some(bias) => bias_gelu(&linear.forward_no_bias(x)?, bias),
        None => linear.forward_no_bias(x)?.gelu_erf(),
    }
}

/// `residual + x W^T + b`. On GPUs one GEMM that adds the bias and the residual in its
/// epilogue (rounded to the output dtype once).
pub fn linear_residual(linear: &Linear, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(bias) = linear.epilogue_bias(x)
        && dvd_kernels::fused_ok(residual)
    {
        return dvd_kernels::linear_epilogue(
            &x.contiguous()?,
            linear.weight(),
            bias,
            dvd_kernels::Epilogue::Bias,
            Some(&residual.contiguous()?),
        );
    }
    residual + linear.forward(x)?
}

/// SwiGLU's gate on a fused `[rows, 2 * width]` gate|up projection: `silu(gate) * up`,
/// `[rows, width]`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if dvd_kernels::fused_ok(gate_up) {
        return dvd_kernels::silu_mul(&gate_up.contiguous()?);
    }
    let (rows, double) = gate_up.dims2()?;
    let width = double / 2;
    if gate_up.device().is_cpu() && gate_up.dtype() == DType::F32 {
        // One parallel pass, in the same arithmetic as candle's silu and mul.
        let mut out = vec![0f32; rows * width];
        with_values::<f32, _>(gate_up, |values| {
            out.par_chunks_mut(width.max(1))
                .zip(values.par_chunks(double.max(1)))
                .for_each(|(out, row)| {
                    let (gate, up) = row.split_at(width);
                    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                        *o = g / (1.0 + (-g).exp()) * u;
                    }
                });
            Ok(())
        })?;
        return Tensor::from_vec(out, (rows, width), &Device::Cpu);
    }
    let gate = gate_up.narrow(1, 0, width)?;
    let up = gate_up.narrow(1, width, width)?;
    candle_nn::ops::silu(&gate)? * up
}

/// `y + bias` over the last axis.
pub fn bias_add(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fits(y, bias) {
        return dvd_kernels::bias_add(&y.contiguous()?, bias);
    }
    y.broadcast_add(bias)
}

/// `gelu_erf(y + bias)` over the last axis.
pub fn bias_gelu(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fits(y, bias) {
        return dvd_kernels::bias_gelu(&y.contiguous()?, bias);
    }
    y.broadcast_add(bias)?.gelu_erf()
}

/// Whether the fused kernels take `y` with this bias: bf16 on CUDA, width a multiple of 8.
pub fn fits(y: &Tensor, bias: &Tensor) -> bool {
    dvd_kernels::fused_ok(y) && bias.elem_count().is_multiple_of(8)
}
