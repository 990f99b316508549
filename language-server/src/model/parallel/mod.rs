//! Tensor and expert parallelism: one model over N ranks (devices of one host, or CPU threads).
//!
//! [`Partition`] decides what each rank holds (Megatron/vLLM sharding: heads, MLP columns,
//! vocabulary slices, expert slices or whole experts) and refuses combinations that cannot work
//! before any weight is read; [`MemoryPlan`] turns a partition into bytes per rank, from the
//! config alone.

mod memory;
mod partition;
mod placement;

pub use memory::{KvFit, MemoryPlan};
pub use partition::{ParallelError, Parallelism, Partition, RankShard};
pub use placement::{communicators, rank_devices};
