//! Tensor parallelism's plumbing: the collectives ranks use ([`Communicator`]: an in-process
//! [`LocalGroup`] on the CPU, NCCL on GPUs) and the threads that drive the ranks in lockstep
//! ([`RankGroup`]).

mod communicator;
mod group;
mod local;
#[cfg(feature = "cuda")]
mod nccl;

pub use communicator::Communicator;
pub use group::{RankFailure, RankGroup};
pub use local::LocalGroup;
#[cfg(feature = "cuda")]
pub use nccl::nccl_group;
