//! The serving engine's building blocks. So far: [`kv`], the paged KV cache.

pub mod kv;
