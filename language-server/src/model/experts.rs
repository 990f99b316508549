//! Reading a Qwen3-MoE layer's experts into [`Experts`]' stacked form, from either checkpoint
//! layout: one tensor per expert and projection (`mlp.experts.{e}.gate_proj.weight`, ... as
//! published checkpoints have them) or the fused tensors transformers 5 saves by default
//! (`mlp.experts.gate_up_proj [experts, 2 * width, hidden]`, `mlp.experts.down_proj
//! [experts, hidden, width]`). Every tensor is checked against the config when the model loads,
//! and a rank of a sharded model reads only its experts and its slice of their width.

use std::ops::Range;

use candle_core::Tensor;
use dvd_nn::moe::Experts;
use dvd_nn::{Loader, ModelError};

/// The shape the config gives a layer's experts.
#[derive(Debug, Clone, Copy)]
pub struct ExpertShape {
    /// Number of experts (`num_experts` / `num_local_experts`).
    pub count: usize,
    /// Width of one expert's gate and up projections (`moe_intermediate_size`).
    pub width: usize,
    /// Width of the tokens (`hidden_size`).
    pub hidden: usize,
}

/// The part of a layer's experts one rank holds.
#[derive(Debug, Clone)]
pub struct ExpertSlice {
    /// Experts held.
    pub experts: Range<usize>,
    /// Columns of each held expert's gate and up projections (rows of its down projection's
    /// input).
    pub width: Range<usize>,
}

/// The experts under `prefix` (`...layers.{i}.mlp.experts`), fused or per expert, `slice` of
/// them.
pub fn load_experts(
    loader: &Loader,
    prefix: &str,
    s: ExpertShape,
    slice: &ExpertSlice,
) -> Result<Experts, ModelError> {
    let fused = format!("{prefix}.gate_up_proj");
    let (e, w) = (slice.experts.clone(), slice.width.clone());
    let (gate_up, down) = if loader.checkpoint.contains(&fused) {
        let shape = [s.count, 2 * s.width, s.hidden];
        let gate = loader.block(&fused, &shape, &[e.clone(), w.clone(), 0..s.hidden])?;
        let up_rows = s.width + w.start..s.width + w.end;
        let up = loader.block(&fused, &shape, &[e.clone(), up_rows, 0..s.hidden])?;
        (
            Tensor::cat(&[gate, up], 1)?,
            loader.block(
                &format!("{prefix}.down_proj"),
                &[s.count, s.hidden, s.width],
                &[e, 0..s.hidden, w],
            )?,
        )
    } else {
        let extra = format!("{prefix}.{}.gate_proj.weight", s.count);
        if loader.checkpoint.contains(&extra) {
            return Err(ModelError::Config {
                path: loader.checkpoint.dir().join("config.json"),
                message: format!(
                    "the config has {} experts (num_experts) but the checkpoint holds {extra}",
                    s.count
                ),
            });
        }
        let mut gate_ups = Vec::with_capacity(e.len());
        let mut downs = Vec::with_capacity(e.len());
        for expert in e {
            let block = |name: &str, shape: &[usize], ranges: &[Range<usize>]| {
                loader.block(&format!("{prefix}.{expert}.{name}.weight"), shape, ranges)
            };
            let rows = [w.clone(), 0..s.hidden];
            let gate = block("gate_proj", &[s.width, s.hidden], &rows)?;
            let up = block("up_proj", &[s.width, s.hidden], &rows)?;
            gate_ups.push(Tensor::cat(&[gate, up], 0)?);
            downs.push(block(
                "down_proj",
                &[s.hidden, s.width],
                &[0..s.hidden, w.clone()],
            )?);
        }
        (Tensor::stack(&gate_ups, 0)?, Tensor::stack(&downs, 0)?)
    };
    Ok(Experts::new(&gate_up, &down)?)
}
