//! Paged KV cache: one pool of fixed-size blocks shared by every sequence ([`KvPool`], sized
//! from a memory budget), a block allocator with reference counts ([`BlockAllocator`]), and
//! per-sequence block tables ([`PagedSequence`]) that the model writes through
//! [`SequenceCache`](crate::model::SequenceCache).
//!
//! Blocks are reserved before a step ([`PagedSequence::reserve`], all or nothing) so a step never
//! runs out of memory halfway; a sequence's blocks return to the pool when it is dropped.

mod allocator;
mod pool;
mod sequence;

pub use allocator::BlockAllocator;
pub use pool::{KvPool, KvPoolConfig};
pub use sequence::{KvError, PagedSequence};
