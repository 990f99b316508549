//! Gateway of dvd: the OpenAI-compatible HTTP API and the public gRPC API (`dvd.api.v1`), routing
//! each request to a vision server and a language server chosen from independently scaled pools.
//!
//! This crate is the library behind `dvd gateway serve`. It lands with the `[gateway]` issue; until
//! then it holds nothing, and `dvd` offers no gateway subcommand.
