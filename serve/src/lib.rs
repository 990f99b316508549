//! Operations plumbing shared by the vision server, the language server and the gateway:
//!
//! - [`Histogram`], [`Outcomes`] and [`Exposition`]: metrics in the Prometheus text format;
//! - [`ops`]: the HTTP endpoint orchestrators probe and scrape (`/metrics`, `/health/live`,
//!   `/health/ready`);
//! - [`drain`]: waiting for requests in flight after a server stopped taking new ones.

pub mod drain;
mod exposition;
mod histogram;
pub mod ops;
mod outcome;

pub use exposition::Exposition;
pub use histogram::{BUCKETS, Histogram};
pub use outcome::{Outcome, Outcomes};
