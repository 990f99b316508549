//! The gateway's front doors over a scripted backend, and its image fetcher over real sockets.
//!
//! One test binary per crate (each file here is a module of it): one link instead of one per
//! file. Run a group with `cargo test -p dvd-gateway --test integration <module>::`.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

mod common;
mod http_api;
mod image_fetch;
