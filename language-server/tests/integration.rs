//! The language server's engine, model, sampling and text handling against the reference fixtures.
//!
//! One test binary per crate (each file here is a module of it): one link instead of one per
//! file. Run a group with `cargo test -p <crate> --test integration <module>::`.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

mod common;
mod model_reference;
mod moe_layouts;
mod paged_kv;
mod sampling_logits;
mod sampling_sampler;
mod sampling_stop;
mod scheduler;
mod streaming_features;
mod tensor_parallel;
mod text_chat_template;
mod text_incremental;
mod text_placeholder;
mod text_prompt;
mod text_tokenizer;
