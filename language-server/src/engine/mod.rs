//! The serving engine: [`kv`] (paged KV cache with a prefix cache), [`scheduler`] (continuous
//! batching with chunked prefill under a per-step token budget, fed prompts whose image features
//! are still arriving) and [`runner`] (the engine thread the gRPC service talks to).

pub mod kv;
mod meter;
mod prompt;
pub mod runner;
pub mod scheduler;

pub use prompt::{FeatureLimits, FeatureTile, ImageSlot, PromptPiece};
pub use runner::{AddError, EngineHandle, EngineStopped, EventStream, Submission};
pub use scheduler::{
    CompleteRequest, EngineError, EngineEvent, EngineStats, FailureKind, FeatureStreamRequest,
    Scheduler, SchedulerConfig, SequenceTimings,
};
