//! Language server of dvd: runs only the LLM (Qwen3 dense and Qwen3-MoE) with continuous batching
//! and a paged KV cache, and starts prefill on the features that arrive in its
//! [`dvd-transport`](../dvd_transport/index.html) inbox before the last tile has landed.
//!
//! - [`model`]: Qwen3 dense and MoE on candle, a batched forward pass over sequences of different
//!   lengths with a KV cache each, image features merged into the `<IMG_CONTEXT>` positions;
//! - [`text`]: tokenizer, streaming detokenisation, the InternVL3.5 prompt format, HF chat
//!   templates;
//! - [`sampling`] and [`generate`]: one sequence from prompt to answer (the coupled
//!   `dvd generate`), and the per-token step the engine shares;
//! - [`engine`]: paged KV cache, prefix cache, the continuous-batching scheduler fed tile by tile,
//!   and the engine thread;
//! - [`service`]: `LanguageService` over gRPC, fed by the feature inbox;
//! - [`server`]: all of it wired together for `dvd language serve`.

pub mod engine;
pub mod generate;
pub mod model;
pub mod sampling;
pub mod server;
pub mod service;
pub mod text;
