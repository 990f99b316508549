//! The collectives a rank of a tensor-parallel group calls.

use candle_core::{Result, Tensor};

/// One rank's view of its group's collectives. Every rank calls the same collectives in the same
/// order with tensors of the same shape and dtype; each call returns once every rank has made it.
pub trait Communicator: Send + Sync + std::fmt::Debug {
    /// This rank, `0..size`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn size(&self) -> usize;

    /// The element-wise sum of every rank's `x`, on every rank (`x`'s shape, dtype and device).
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;

    /// Every rank's `x` concatenated along `dim` in rank order, on every rank.
    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor>;

    /// This rank failed and will not make its next collective: ranks waiting in one (or entering
    /// one later) fail instead of waiting for it, until [`Communicator::recover`].
    fn abort(&self);

    /// Makes the group usable again after [`Communicator::abort`]; called on every rank once
    /// none is inside a collective.
    fn recover(&self);
}
