//! Paged KV cache: one pool of fixed-size blocks shared by every sequence ([`KvPool`], sized
//! from a memory budget), a block allocator with reference counts ([`BlockAllocator`]), and
//! per-sequence block tables ([`PagedSequence`]) that the model writes through
//! [`SequenceCache`](crate::model::SequenceCache).
//!
//! Full blocks of finished prompts stay in a [`PrefixCache`] keyed by their contents (image
//! content hashes included) until the pool needs them back.
//!
//! Blocks are reserved before a step ([`PagedSequence::reserve`], all or nothing) so a step never
//! runs out of memory halfway; a sequence's blocks return to the pool when it is dropped.

mod allocator;
mod fit;
mod pool;
mod prefix;
mod sequence;

pub use allocator::BlockAllocator;
pub use fit::{FitError, KvBudget, check_weights_fit, kv_bytes_per_rank};
pub use pool::{KvPool, KvPoolConfig, PoolState};
pub use prefix::{BlockKey, ImageSpan, PrefixCache, block_keys};
pub use sequence::{KvError, PagedSequence};
