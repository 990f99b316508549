//! What every dvd server (the vision server, the language server, the gateway) shares to run:
//!
//! - [`Harness`], [`Running`], [`StartError`], [`ServerSettings`]: starting a server's
//!   listeners and tasks, and the one [`Running::shutdown`] that drains;
//! - [`Lifecycle`]: a service's drain flag and the tasks beside its requests;
//! - [`Histogram`], [`Outcomes`] and [`Exposition`]: metrics in the Prometheus text format;
//! - [`ops`]: the HTTP endpoint orchestrators probe and scrape (`/metrics`, `/health/live`,
//!   `/health/ready`);
//! - waiting for requests in flight after a server stopped taking new ones (`drain.rs`);
//! - [`telemetry`]: logs, and traces exported over OTLP with the trace context carried across
//!   processes.

mod drain;
mod error;
mod exposition;
mod harness;
mod histogram;
mod lifecycle;
pub mod ops;
mod outcome;
mod running;
pub mod telemetry;

pub use error::StartError;
pub use exposition::Exposition;
pub use harness::{Harness, load_blocking};
pub use histogram::{BUCKETS, Histogram};
pub use lifecycle::Lifecycle;
pub use outcome::{Outcome, Outcomes};
pub use running::{Drain, Running, ServerSettings, Service, StopTaking};
