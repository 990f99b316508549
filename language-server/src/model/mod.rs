//! The language model: Qwen3 dense and Qwen3-MoE on candle (CPU, or CUDA with the `cuda` feature),
//! loaded from the HF, GitHub/legacy InternVL or plain Qwen3 layouts, with a batched forward pass
//! over sequences of different lengths that each keep their own KV cache.

mod attention;
mod config;
mod experts;
mod kv_cache;
mod mlp;
mod names;
mod parallel;
mod qwen3;
mod rope;

pub use attention::argmax_rows;
pub use config::{LanguageConfig, MoeConfig};
pub use dvd_nn::{LoadOptions, ModelError};
pub use kv_cache::{KvCache, PagedCache, SequenceCache};
pub use names::CheckpointLayout;
pub use parallel::{
    KvFit, MemoryPlan, ParallelError, Parallelism, Partition, RankShard, communicators,
    rank_devices,
};
pub use qwen3::{LanguageModel, PartialForward, SequenceStep};
pub use rope::Rope;
