//! Loading the model a CPU benchmark measures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use dvd_language_server::model::LoadOptions;

/// Resolves `model` (a directory, or a hub id in the local Hugging Face cache) and loads it
/// with `load` (`VisionModel::load`, `LanguageModel::load`) on the CPU in `dtype`; returns the
/// directory and the model.
pub fn load_on_cpu<M, E>(
    model: &str,
    dtype: DType,
    load: impl FnOnce(&Path, &LoadOptions) -> Result<M, E>,
) -> Result<(PathBuf, M)>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let dir = dvd_checkpoint::resolve_model_dir(model)?;
    let options = LoadOptions {
        dtype,
        device: Device::Cpu,
    };
    let loaded = load(&dir, &options).with_context(|| format!("loading {}", dir.display()))?;
    Ok((dir, loaded))
}
