//! Errors of checkpoint reading.

use std::path::PathBuf;

/// What can go wrong finding or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A configuration file has a field of the wrong type or value.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A safetensors file is malformed.
    #[error("{}: invalid safetensors file: {message}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model could not be found.
    #[error("model {spec:?} not found: {reason}")]
    NotFound {
        /// The directory or hub id asked for.
        spec: String,
        /// Where it was looked for.
        reason: String,
    },
    /// The checkpoint lacks a tensor the model needs.
    #[error("checkpoint has no tensor {name:?}")]
    MissingTensor {
        /// The tensor's name in the checkpoint.
        name: String,
    },
    /// A tensor's shape differs from what the configuration implies.
    #[error("tensor {name:?} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The tensor's name in the checkpoint.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape stored in the checkpoint.
        found: Vec<usize>,
    },
    /// A block asked of a tensor lies outside it.
    #[error("block {block:?} of tensor {name:?} lies outside its shape {shape:?}")]
    BadBlock {
        /// The tensor's name in the checkpoint.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The block, `(start, end)` per dimension.
        block: Vec<(usize, usize)>,
    },
    /// A tensor is stored in a dtype dvd does not read.
    #[error("tensor {name:?} is stored as {dtype}, which is not supported")]
    UnsupportedDtype {
        /// The tensor's name in the checkpoint.
        name: String,
        /// The stored dtype.
        dtype: String,
    },
    /// Building the tensor failed.
    #[error("tensor {name:?}: {source}")]
    Tensor {
        /// The tensor's name in the checkpoint.
        name: String,
        /// The underlying error.
        source: candle_core::Error,
    },
}
