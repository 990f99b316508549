//! The serving engine: [`kv`] (paged KV cache with a prefix cache) and [`scheduler`]
//! (continuous batching with chunked prefill under a per-step token budget).

pub mod kv;
pub mod scheduler;

pub use scheduler::{
    EngineError, EngineEvent, EngineRequest, EngineStats, Scheduler, SchedulerConfig,
};
