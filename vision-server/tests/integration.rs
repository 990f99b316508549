//! The vision server's preprocessing, model and batching against the reference fixtures, and its bad input.
//!
//! One test binary per crate (each file here is a module of it): one link instead of one per
//! file. Run a group with `cargo test -p <crate> --test integration <module>::`.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

mod common;

mod bad_checkpoints;
mod bad_images;
mod encoder_batching;
mod model_reference;
mod preprocess_reference;
mod video;
mod video_reference;
