//! Gateway of dvd: the OpenAI-compatible HTTP API and the public gRPC API (`dvd.api.v1`), routing
//! each request to a vision server and a language server chosen from independently scaled pools.
//!
//! - [`auth`]: API keys and per-key rate limits on the public endpoints;
//! - [`backend`]: what the front doors need from the gateway ([`ChatBackend`]) and its errors;
//! - [`cluster`]: the cluster view (`GET /v1/cluster`): every member's health, load and recent
//!   answers, with [`activity`] counting each member's last minute;
//! - [`config`]: the TOML configuration;
//! - [`fetch`]: `https` image URLs fetched under a policy (public addresses, redirects re-checked,
//!   size and time limits);
//! - [`pool`]: pool members from static addresses and re-resolved DNS names, health and load
//!   checks;
//! - [`routing`]: interchangeable routing policies;
//! - [`gateway`]: the [`Gateway`] (admission, metrics, pools) and, in `chat`, one request's
//!   way through the pipeline with retries before the first token;
//! - [`grpc`]: the public gRPC API;
//! - [`metrics`]: Prometheus text metrics;
//! - [`reflection`]: gRPC server reflection on the public API (`grpcurl`, Postman);
//! - [`server`]: both listeners and the health checks, for `dvd gateway serve`.

pub mod activity;
pub mod auth;
pub mod backend;
mod chat;
pub mod cluster;
pub mod config;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod grpc;
pub mod http;
mod images;
pub mod metrics;
pub mod pool;
pub mod reflection;
pub mod routing;
pub mod server;

pub use backend::{ChatBackend, ChatStream, GatewayError};
pub use config::GatewayConfig;
pub use gateway::Gateway;
