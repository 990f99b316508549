//! Vision server of dvd: decodes and tiles images (InternVL dynamic high resolution), runs
//! InternViT, pixel shuffle, the MLP projector and the Visual Resolution Router, and streams the
//! BF16 features tile by tile to the language server named in each request through
//! [`dvd-transport`](../dvd_transport/index.html).
//!
//! What is here so far: [`preprocess`], the image half (decoding, reference-exact tiling and
//! resizing, normalisation). The encoder and the server land with the `[vision-model]` and
//! `[vision-server]` issues; until then `dvd` offers no vision subcommand.

pub mod error;
pub mod model;
pub mod preprocess;

pub use error::ImageError;
