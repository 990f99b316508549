//! The feature data plane over real TCP and QUIC sockets on loopback.
//!
//! One test binary per crate (each file here is a module of it): one link instead of one per
//! file. Run a group with `cargo test -p <crate> --test integration <module>::`.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

mod bad_input_quic;
mod bad_input_tcp;
mod common;
mod lifecycle;
mod quic_partition;
mod quic_tls;
mod round_trip;
