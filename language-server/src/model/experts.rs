//! Reading a Qwen3-MoE layer's experts into [`Experts`]' stacked form, from either checkpoint
//! layout: one tensor per expert and projection (`mlp.experts.{e}.gate_proj.weight`, ... as
//! published checkpoints have them) or the fused tensors transformers 5 saves by default
//! (`mlp.experts.gate_up_proj [experts, 2 * width, hidden]`, `mlp.experts.down_proj
//! [experts, hidden, width]`). Every tensor is checked against the config when the model loads.

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

/// The experts under `prefix` (`...layers.{i}.mlp.experts`), fused or per expert.
pub fn load_experts(loader: &Loader, prefix: &str, s: ExpertShape) -> Result<Experts, ModelError> {
    let fused = format!("{prefix}.gate_up_proj");
    let (gate_up, down) = if loader.checkpoint.contains(&fused) {
        (
            loader.tensor(&fused, &[s.count, 2 * s.width, s.hidden])?,
            loader.tensor(
                &format!("{prefix}.down_proj"),
                &[s.count, s.hidden, s.width],
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
        let mut gate_ups = Vec::with_capacity(s.count);
        let mut downs = Vec::with_capacity(s.count);
        for e in 0..s.count {
            let tensor = |name: &str, shape: &[usize]| {
                loader.tensor(&format!("{prefix}.{e}.{name}.weight"), shape)
            };
            let gate = tensor("gate_proj", &[s.width, s.hidden])?;
            let up = tensor("up_proj", &[s.width, s.hidden])?;
            gate_ups.push(Tensor::cat(&[gate, up], 0)?);
            downs.push(tensor("down_proj", &[s.hidden, s.width])?);
        }
        (Tensor::stack(&gate_ups, 0)?, Tensor::stack(&downs, 0)?)
    };
    Ok(Experts::new(&gate_up, &down)?)
}
