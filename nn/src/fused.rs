//! Epilogues that run as one kernel on GPUs (bf16 on CUDA, widths a multiple of 8, through
//! `dvd-kernels`) and as the equivalent candle ops everywhere else, rounding the same way.

use candle_core::{Result, Tensor};

use crate::Linear;

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
