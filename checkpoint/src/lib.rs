//! Model checkpoints for dvd: where a model lives ([`resolve_model_dir`]: a directory or a hub id
//! in the local Hugging Face cache) and how its tensors are read ([`Checkpoint`]: one
//! `model.safetensors`, or shards listed in `model.safetensors.index.json`).
//!
//! Only safetensors headers are read when a checkpoint opens; each tensor's bytes are read when
//! it is asked for, so a vision server never touches the language weights and vice versa.

mod checkpoint;
mod config_fields;
mod error;
mod header;
mod resolve;

pub use checkpoint::{Checkpoint, TensorInfo};
pub use config_fields::ConfigFields;
pub use error::CheckpointError;
pub use resolve::{hf_hub_cache_dir, resolve_model_dir, resolve_model_dir_in};

use std::path::Path;

/// Reads and parses a JSON file of a model directory (`config.json`, `preprocessor_config.json`...).
pub fn read_json(path: &Path) -> Result<serde_json::Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
