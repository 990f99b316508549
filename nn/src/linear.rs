//! [`Linear`]: a dense layer over the last axis of any-rank input, with fusing, splitting and
//! scale folding for the models' load-time rewrites.

use candle_core::{DType, Result as CandleResult, Tensor};

use crate::fused;

/// A dense layer `y = x W^T + b` over the last dimension of any-rank input.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    weight: Tensor,
    bias: Option<Tensor>,
    /// Whether few-row inputs may take [`matmul_wt`]'s faster path.
    skinny: bool,
}

impl Linear {
    /// A layer from its `[out, in]` weight and optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            skinny: true,
        }
    }

    /// The same layer computing every row the same way whatever the number of rows, so a row's
    /// result does not depend on what it is batched with (the few-row fast path is off).
    pub fn batch_invariant(mut self) -> Self {
        self.skinny = false;
        self
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x W^T` over the last axis of `x`, without the bias (for callers that fuse the bias into
    /// the next operation).
    pub fn forward_no_bias(&self, x: &Tensor) -> CandleResult<Tensor> {
        let dims = x.dims();
        let input = dims[dims.len() - 1];
        let rows = x.elem_count() / input.max(1);
        let x = x.reshape((rows, input))?;
        let y = if self.skinny {
            matmul_wt(&x, &self.weight)?
        } else {
            x.matmul(&self.weight.t()?)?
        };
        let mut shape = dims.to_vec();
        let last = shape.len() - 1;
        shape[last] = self.weight.dim(0)?;
        y.reshape(shape)
    }

    /// Applies the layer to the last axis of `x` (on GPUs the bias add is the GEMM's epilogue).
    pub fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(bias) = self.epilogue_bias(x) {
            return dvd_kernels::linear_epilogue(
                &x.contiguous()?,
                &self.weight,
                bias,
                dvd_kernels::Epilogue::Bias,
                None,
            );
        }
        let y = self.forward_no_bias(x)?;
        match &self.bias {
            Some(bias) => fused::bias_add(&y, bias),
            None => Ok(y),
        }
    }
}

/// Row counts up to which [`matmul_wt`] computes `(W x^T)^T` on the CPU.
const SKINNY_ROWS: usize = 64;

/// `x W^T` for `x` `[rows, in]` and `W` `[out, in]`. For few rows on the CPU (decode steps)
/// it computes `(W x^T)^T`, which gemm runs as row-major dot products: 1.2-2x faster for 1-64 rows
/// on the benchmark machine (docs/performance.md).
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> CandleResult<Tensor> {
    if x.device().is_cpu() && x.dim(0)? <= SKINNY_ROWS {
        w.matmul(&x.t()?)?.t()?.contiguous()
    } else {
        x.matmul(&w.t()?)
    }
}

impl Linear {
    /// The bias, when `x` can take a GEMM with a fused epilogue: bf16 on CUDA (input and
    /// weight), a bias, widths a multiple of 8 (rows stay 16-byte aligned).
    #[cfg(feature = "cuda")]
    pub(crate) fn epilogue_bias(&self, x: &Tensor) -> Option<&Tensor> {
        let (out, inner) = self.weight.dims2().ok()?;
        let fits = dvd_kernels::fused_ok(x)
            && dvd_kernels::fused_ok(&self.weight)
            && self.weight.is_contiguous()
            && out.is_multiple_of(8)
            && inner.is_multiple_of(8);
        self.bias.as_ref().filter(|b| fits && b.is_contiguous())
    }

    /// The layer followed by a per-output scale, `(x W^T + b) * scale`, as one layer: the rows
    /// of `W` and `b` scaled in f32 and rounded once to the weight's dtype. Layer scales fold
    /// into the projection before them this way, so a GPU epilogue can add the residual.
    pub fn scale_outputs(&self, scale: &Tensor) -> CandleResult<Linear> {
        let dtype = self.weight.dtype();
        let scale = scale.to_dtype(DType::F32)?.flatten_all()?;
        let weight = self
            .weight
            .to_dtype(DType::F32)?
            .broadcast_mul(&scale.unsqueeze(1)?)?
            .to_dtype(dtype)?;
        let bias = match &self.bias {
            Some(b) => Some((b.to_dtype(DType::F32)? * &scale)?.to_dtype(b.dtype())?),
            None => None,
        };
        Ok(Linear {
            weight,
            bias,
            skinny: self.skinny,
        })
    }

    /// Stacks layers with the same input width into one whose output is their concatenation.
    pub fn fuse(parts: &[&Linear]) -> CandleResult<Linear> {
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let bias = if parts.iter().all(|l| l.bias.is_some()) {
            let biases: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        let fused = Linear::new(Tensor::cat(&weights, 0)?, bias);
        Ok(match parts.iter().all(|l| l.skinny) {
            true => fused,
            false => fused.batch_invariant(),
        })
    }

    /// Splits the output rows into `n` equal layers (the inverse of [`Linear::fuse`]).
    pub fn split(&self, n: usize) -> CandleResult<Vec<Linear>> {
        let rows = self.weight.dim(0)? / n;
        (0..n)
            .map(|i| {
                Ok(Linear {
                    weight: self.weight.narrow(0, i * rows, rows)?,
                    bias: match &self.bias {
                        Some(b) => Some(b.narrow(0, i * rows, rows)?),
                        None => None,
                    },
                    skinny: self.skinny,
                })
            })
            .collect()
    }
}
