//! The error of loading and running a model, shared by the vision encoder and the language
//! model.

use std::path::PathBuf;

use dvd_checkpoint::CheckpointError;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The checkpoint could not be found or read, or a tensor is missing or misshapen.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A configuration file (`config.json`, `preprocessor_config.json`) is unusable.
    #[error("{}: {message}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint asks for something dvd does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The caller's input does not fit the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A device index table (block ids, cache slots, positions) would send a kernel outside a
    /// buffer; found on the host, before upload.
    #[error("index out of range: {0}")]
    Index(#[from] dvd_kernels::IndexError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
