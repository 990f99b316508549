//! Real `dvd` processes on loopback: every subcommand, the servers, the gateway, deployment and security.
//!
//! One test binary per crate (each file here is a module of it): one link instead of one per
//! file. Run a group with `cargo test -p <crate> --test integration <module>::`.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

mod admission;
mod bench_defaults;
mod bench_plan_memory;
mod cli;
mod common;
mod compare;
mod cpu_quota;
mod demo;
mod deploy;
mod faults;
mod fuzz_corpus;
mod gateway;
mod language_serve;
mod mutual_tls;
mod parallel;
mod security;
mod supervision;
mod tracing;
mod video;
mod vision_serve;
