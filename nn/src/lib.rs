//! Building blocks shared by dvd's models (the vision encoder and the language model): a
//! last-axis [`Linear`], LayerNorm/RMSNorm ([`Norm`]), [`softmax`], a [`Loader`] that reads
//! weights from a checkpoint with the shapes the config implies, [`LoadOptions`], and the one
//! [`ModelError`] both models report; [`fused`] holds the epilogues that take one kernel on GPUs,
//! and [`moe`] the mixture-of-experts block with its CPU kernels and CUDA dispatch.

mod error;
pub mod fused;
mod host;
mod linear;
mod loader;
pub mod moe;
mod norm;
pub mod parallel;

/// dvd's CUDA kernels (`dvd-kernels`), for models' GPU paths.
pub use dvd_kernels as kernels;
pub use error::ModelError;
pub use linear::{Linear, matmul_wt};
pub use loader::{LoadOptions, Loader};
pub use norm::{Norm, softmax};
