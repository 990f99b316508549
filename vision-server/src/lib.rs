//! Vision server of dvd: decodes and tiles images (InternVL dynamic high resolution), runs
//! InternViT, pixel shuffle, the MLP projector and the Visual Resolution Router, and streams the
//! BF16 features tile by tile to the language server named in each request through
//! [`dvd-transport`](../dvd_transport/index.html).
//!
//! - [`preprocess`]: decoding, reference-exact tiling and resizing, normalisation;
//! - [`video`]: the model card's frame sampling, frames decoded by FFmpeg in child processes;
//! - [`model`]: the encoder (InternViT, pixel shuffle, `mlp1`, the Flash models' router and
//!   `mlp2`), also behind `dvd encode`;
//! - [`engine`]: the encoder thread that batches tiles across requests, and the embedding cache;
//! - [`service`]: `VisionService` over gRPC (admission, preprocessing pool, tile-by-tile transfer);
//! - [`server`]: all of it wired together for `dvd vision serve`.

pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod preprocess;
pub mod server;
pub mod service;
pub mod video;

pub use error::ImageError;
