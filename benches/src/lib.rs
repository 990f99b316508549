//! Benchmarks of dvd, fronted by `dvd bench`.
//!
//! - [`transport`]: feature-frame throughput of our TCP and QUIC transports against raw tokio TCP
//!   and raw quinn measured in the same run (`dvd bench transport`).

pub mod stats;
pub mod transport;
