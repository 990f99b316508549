//! Language server of dvd: runs only the LLM (Qwen3 dense and Qwen3-MoE) with continuous batching
//! and a paged KV cache, and starts prefill on the features that arrive in its
//! [`dvd-transport`](../dvd_transport/index.html) inbox before the last tile has landed.
//!
//! This crate is the library behind `dvd language serve`. The model and the engine land with the
//! `[language-model]` and `[language-server]` issues; until then it holds nothing, and `dvd` offers
//! no language subcommand.
