//! Stacks of same-shape weight matrices (one per expert) laid out for the device's grouped
//! GEMM: as checkpoints store them (`[count, n, k]`) on GPUs, and on the CPU in panels of
//! [`PANEL`] output columns with `k` outermost (`[count, ceil(n / PANEL), k, PANEL]`, the last
//! panel zero-padded), so the CPU kernel reads each panel as one contiguous stream.

use candle_core::{DType, Result, Tensor, bail};

/// Output columns per CPU panel (two AVX2 registers of f32).
pub(crate) const PANEL: usize = 16;

/// `count` matrices `[n, k]` in the layout the device's grouped GEMM reads.
#[derive(Debug, Clone)]
pub struct Matrices {
    data: Tensor,
    count: usize,
    n: usize,
    k: usize,
}

impl Matrices {
    /// The matrices of `stacked [count, n, k]`, repacked into panels on the CPU.
    pub fn new(stacked: &Tensor) -> Result<Self> {
        let (count, n, k) = stacked.dims3()?;
        let data = if stacked.device().is_cpu() {
            let padded = n.div_ceil(PANEL) * PANEL;
            let stacked = match padded - n {
                0 => stacked.clone(),
                pad => Tensor::cat(
                    &[
                        stacked,
                        &Tensor::zeros((count, pad, k), stacked.dtype(), stacked.device())?,
                    ],
                    1,
                )?,
            };
            stacked
                .reshape((count, padded / PANEL, PANEL, k))?
                .transpose(2, 3)?
                .contiguous()?
        } else {
            stacked.contiguous()?
        };
        Ok(Self { data, count, n, k })
    }

    /// Number of matrices.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Rows of each matrix (the GEMM's output columns).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns of each matrix (the reduced axis).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The matrices as `[count, n, k]` (a copy on the CPU).
    pub fn stacked(&self) -> Result<Tensor> {
        if !self.data.device().is_cpu() {
            return Ok(self.data.clone());
        }
        self.data
            .transpose(2, 3)?
            .reshape((self.count, self.n.div_ceil(PANEL) * PANEL, self.k))?
            .narrow(1, 0, self.n)?
            .contiguous()
    }

    /// The stored tensor: `[count, n, k]` on GPUs, panels on the CPU.
    pub(crate) fn data(&self) -> &Tensor {
        &self.data
    }

    /// Checks that `x [rows, k]` can multiply these matrices.
    pub(crate) fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, k) = x.dims2()?;
        if k != self.k || x.dtype() != self.dtype() || !x.device().same_device(self.data.device()) {
            bail!(
                "grouped matmul: x {:?} {:?} does not fit {} matrices [{}, {}] {:?}",
                x.dims(),
                x.dtype(),
                self.count,
                self.n,
                self.k,
                self.dtype()
            );
        }
        Ok(())
    }
}
