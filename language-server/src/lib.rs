//! Language server of dvd: runs only the LLM (Qwen3 dense and Qwen3-MoE) with continuous batching
//! and a paged KV cache, and starts prefill on the features that arrive in its
//! [`dvd-transport`](../dvd_transport/index.html) inbox before the last tile has landed.
//!
//! What is here so far: [`model`] (Qwen3 dense and MoE on candle, a batched forward pass over
//! sequences of different lengths with a KV cache each, image features merged into the
//! `<IMG_CONTEXT>` positions), [`text`] (tokenizer, streaming detokenisation, the InternVL3.5
//! prompt format and HF chat templates), [`sampling`], and [`generate`] (one sequence from
//! prompt to answer, as the coupled `dvd generate` runs it), and the serving [`engine`] (paged
//! KV cache, prefix cache, continuous-batching scheduler; the gRPC service and the feature inbox
//! are still to come). The serving engine lands with the
//! `[language-server]` issue.

pub mod engine;
pub mod generate;
pub mod model;
pub mod sampling;
pub mod server;
pub mod service;
pub mod text;
