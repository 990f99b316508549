//! Loading weights: [`Loader`] reads a checkpoint's tensors with the shapes a config implies;
//! [`LoadOptions`] says where and in which precision a model runs.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use dvd_checkpoint::{Checkpoint, CheckpointError};

use crate::{Linear, Norm};

/// Reads tensors of one checkpoint in one dtype onto one device, checking shapes.
pub struct Loader<'a> {
    /// Where the weights come from.
    pub checkpoint: &'a Checkpoint,
    /// The dtype every weight is converted to.
    pub dtype: DType,
    /// The device every weight is placed on.
    pub device: &'a Device,
    /// Build [`Linear::batch_invariant`] layers.
    pub batch_invariant: bool,
}

impl<'a> Loader<'a> {
    /// Reads `checkpoint` in `options`' dtype onto its device.
    pub fn new(checkpoint: &'a Checkpoint, options: &'a LoadOptions) -> Self {
        Self {
            checkpoint,
            dtype: options.dtype,
            device: &options.device,
            batch_invariant: false,
        }
    }

    /// The same loader building [`Linear::batch_invariant`] layers.
    pub fn batch_invariant(self) -> Self {
        Self {
            batch_invariant: true,
            ..self
        }
    }
}

impl Loader<'_> {
    /// The tensor `name`, which must have shape `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, CheckpointError> {
        self.checkpoint
            .load_shaped(name, shape, self.dtype, self.device)
    }

    /// The tensor `name` reshaped to `shape`; the stored shape may differ only by leading ones
    /// (`[1, 1, D]` and `[D]` are both accepted for a `[D]` vector).
    pub fn tensor_squeezed(&self, name: &str, shape: &[usize]) -> Result<Tensor, CheckpointError> {
        let info = self
            .checkpoint
            .info(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
            })?;
        let significant: Vec<usize> = info.shape.iter().copied().skip_while(|&d| d == 1).collect();
        let wanted: Vec<usize> = shape.iter().copied().skip_while(|&d| d == 1).collect();
        if significant != wanted {
            return Err(CheckpointError::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape,
            });
        }
        self.checkpoint
            .load(name, self.dtype, self.device)?
            .reshape(shape)
            .map_err(|source| CheckpointError::Tensor {
                name: name.to_string(),
                source,
            })
    }

    /// Block `ranges` (one range per dimension) of the tensor `name`, which must have shape
    /// `shape`; only the block's bytes are read.
    pub fn block(
        &self,
        name: &str,
        shape: &[usize],
        ranges: &[Range<usize>],
    ) -> Result<Tensor, CheckpointError> {
        self.checkpoint
            .load_block(name, shape, ranges, self.dtype, self.device)
    }

    /// `prefix.weight` `[out, in]` and, when `bias`, `prefix.bias` `[out]`.
    pub fn linear(
        &self,
        prefix: &str,
        out: usize,
        input: usize,
        bias: bool,
    ) -> Result<Linear, CheckpointError> {
        self.linear_rows(prefix, out, input, 0..out, bias)
    }

    /// A column-parallel slice of `prefix` (`weight [out, in]`, `bias [out]` when `bias`): its
    /// output rows `rows`.
    pub fn linear_rows(
        &self,
        prefix: &str,
        out: usize,
        input: usize,
        rows: Range<usize>,
        bias: bool,
    ) -> Result<Linear, CheckpointError> {
        let weight = self.block(
            &format!("{prefix}.weight"),
            &[out, input],
            &[rows.clone(), 0..input],
        )?;
        let bias = if bias {
            Some(self.block(&format!("{prefix}.bias"), &[out], &[rows])?)
        } else {
            None
        };
        Ok(self.layer(weight, bias))
    }

    /// A row-parallel slice of `prefix` (`weight [out, in]`): its input columns `columns`, and
    /// the whole `bias [out]` when `bias` (one rank of a group adds it).
    pub fn linear_columns(
        &self,
        prefix: &str,
        out: usize,
        input: usize,
        columns: Range<usize>,
        bias: bool,
    ) -> Result<Linear, CheckpointError> {
        let weight = self.block(
            &format!("{prefix}.weight"),
            &[out, input],
            &[0..out, columns],
        )?;
        let bias = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(self.layer(weight, bias))
    }

    /// A layer from loaded tensors, batch invariant when the loader says so.
    pub fn layer(&self, weight: Tensor, bias: Option<Tensor>) -> Linear {
        let layer = Linear::new(weight, bias);
        match self.batch_invariant {
            true => layer.batch_invariant(),
            false => layer,
        }
    }

    /// LayerNorm `prefix.{weight,bias}` over `dim`.
    pub fn layer_norm(&self, prefix: &str, dim: usize, eps: f64) -> Result<Norm, CheckpointError> {
        Ok(Norm::Layer {
            weight: self.tensor(&format!("{prefix}.weight"), &[dim])?,
            bias: self.tensor(&format!("{prefix}.bias"), &[dim])?,
            eps: eps as f32,
        })
    }

    /// RMSNorm `prefix.weight` over `dim`.
    pub fn rms_norm(&self, prefix: &str, dim: usize, eps: f64) -> Result<Norm, CheckpointError> {
        Ok(Norm::Rms {
            weight: self.tensor(&format!("{prefix}.weight"), &[dim])?,
            eps: eps as f32,
        })
    }
}

/// Where and in which precision a model runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype; weights are converted to it whatever they are stored as.
    pub dtype: DType,
    /// Device the weights live on.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}
