//! The experts of one MoE layer, stacked: gate|up as `[experts, 2 * width, hidden]` and down as
//! `[experts, hidden, width]` ([`Matrices`], in the device's GEMM layout), so a grouped GEMM can
//! index them by expert.

use candle_core::{Result, Tensor, bail};

use super::matrices::Matrices;

/// SwiGLU experts `down(silu(gate(x)) * up(x))`, stacked.
#[derive(Debug, Clone)]
pub struct Experts {
    gate_up: Matrices,
    down: Matrices,
}

impl Experts {
    /// Experts from `gate_up [experts, 2 * width, hidden]` (gate rows first) and
    /// `down [experts, hidden, width]`.
    pub fn new(gate_up: &Tensor, down: &Tensor) -> Result<Self> {
        let (experts, double, hidden) = gate_up.dims3()?;
        let expected = (experts, hidden, double / 2);
        if !double.is_multiple_of(2) || down.dims3()? != expected || gate_up.dtype() != down.dtype()
        {
            bail!(
                "experts: gate_up {:?} {:?} and down {:?} {:?} do not fit (down should be {expected:?})",
                gate_up.dims(),
                gate_up.dtype(),
                down.dims(),
                down.dtype()
            );
        }
        Ok(Self {
            gate_up: Matrices::new(gate_up)?,
            down: Matrices::new(down)?,
        })
    }

    /// Number of experts.
    pub fn count(&self) -> usize {
        self.gate_up.count()
    }

    /// Width of one expert's gate (and up) projection.
    pub fn width(&self) -> usize {
        self.down.k()
    }

    /// Width of the tokens.
    pub fn hidden(&self) -> usize {
        self.down.n()
    }

    /// gate|up, `[experts, 2 * width, hidden]`, gate rows first.
    pub fn gate_up(&self) -> &Matrices {
        &self.gate_up
    }

    /// down, `[experts, hidden, width]`.
    pub fn down(&self) -> &Matrices {
        &self.down
    }

    /// Bytes of one expert's three matrices.
    pub fn bytes_per_expert(&self) -> usize {
        3 * self.width() * self.hidden() * self.gate_up.dtype().size_in_bytes()
    }
}
