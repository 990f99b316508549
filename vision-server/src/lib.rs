//! Vision server of dvd: decodes and tiles images (InternVL dynamic high resolution), runs
//! InternViT, pixel shuffle, the MLP projector and the Visual Resolution Router, and streams the
//! BF16 features tile by tile to the language server named in each request through
//! [`dvd-transport`](../dvd_transport/index.html).
//!
//! What is here so far: [`preprocess`], the image half (decoding, reference-exact tiling and
//! resizing, normalisation), and [`model`], the encoder (InternViT, pixel shuffle, `mlp1`, the
//! Flash models' router and `mlp2`) behind `dvd encode`. The server lands with the
//! `[vision-server]` issue.

pub mod engine;
pub mod error;
pub mod model;
pub mod preprocess;
pub mod server;
pub mod service;

pub use error::ImageError;
