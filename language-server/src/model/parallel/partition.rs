//! Which slice of every tensor each rank holds.

use std::ops::Range;

use super::super::config::LanguageConfig;

/// How a model is spread over ranks (`--tensor-parallel-size`, `--expert-parallel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Ranks the model spans.
    pub tensor_parallel_size: usize,
    /// Whole experts per rank instead of a slice of every expert's width.
    pub expert_parallel: bool,
}

impl Default for Parallelism {
    fn default() -> Self {
        Self {
            tensor_parallel_size: 1,
            expert_parallel: false,
        }
    }
}

/// A parallel layout the model's shapes do not allow; the numbers say why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParallelError {
    /// `--tensor-parallel-size 0`.
    #[error("--tensor-parallel-size must be at least 1")]
    NoRanks,
    /// Query heads do not split evenly.
    #[error(
        "{heads} query heads do not split over {ranks} ranks (a multiple of {ranks} is needed)"
    )]
    QueryHeads {
        /// Query heads of the model.
        heads: usize,
        /// Ranks asked for.
        ranks: usize,
    },
    /// KV heads neither split evenly nor replicate evenly.
    #[error(
        "{kv_heads} KV heads over {ranks} ranks: with at least as many KV heads as ranks they must \
         split evenly, with fewer the ranks must be a multiple of them"
    )]
    KvHeads {
        /// KV heads of the model.
        kv_heads: usize,
        /// Ranks asked for.
        ranks: usize,
    },
    /// A column-parallel width does not split evenly.
    #[error("{what} of {width} does not split over {ranks} ranks")]
    Width {
        /// Which width (`intermediate_size`, `moe_intermediate_size`).
        what: &'static str,
        /// Its size.
        width: usize,
        /// Ranks asked for.
        ranks: usize,
    },
    /// Expert parallelism with fewer experts than ranks.
    #[error(
        "--expert-parallel puts at least one expert on each rank: {experts} experts, {ranks} ranks"
    )]
    Experts {
        /// Experts per MoE layer.
        experts: usize,
        /// Ranks asked for.
        ranks: usize,
    },
    /// Expert parallelism for a dense model.
    #[error("--expert-parallel needs a mixture-of-experts model; this one is dense")]
    DenseModel,
}

/// What every rank of a model holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    ranks: usize,
    expert_parallel: bool,
    heads: usize,
    kv_heads: usize,
    /// Ranks sharing one KV head (1 unless there are fewer KV heads than ranks).
    kv_replicas: usize,
    intermediate: usize,
    /// `(experts, moe_intermediate_size)` of a MoE model.
    experts: Option<(usize, usize)>,
    vocab: usize,
}

/// One rank's slices. Ranges index the full (unsharded) tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankShard {
    /// This rank.
    pub rank: usize,
    /// Ranks in the group.
    pub ranks: usize,
    /// Query heads held.
    pub heads: Range<usize>,
    /// KV heads held (one replicated head when there are fewer KV heads than ranks).
    pub kv_heads: Range<usize>,
    /// Columns of the dense MLP (`intermediate_size`) held.
    pub intermediate: Range<usize>,
    /// Experts held (every expert unless expert parallel).
    pub experts: Range<usize>,
    /// Columns of each held expert's MLP (its whole width when expert parallel).
    pub expert_width: Range<usize>,
    /// Rows of the padded vocabulary held; rows at or past the vocabulary size are padding.
    pub vocab: Range<usize>,
    /// The real vocabulary size.
    pub vocab_size: usize,
}

impl RankShard {
    /// Whether this rank adds the biases of row-parallel layers (one rank must, once).
    pub fn adds_row_bias(&self) -> bool {
        self.rank == 0
    }

    /// Real (not padding) vocabulary rows held.
    pub fn real_vocab(&self) -> Range<usize> {
        self.vocab.start.min(self.vocab_size)..self.vocab.end.min(self.vocab_size)
    }
}

impl Partition {
    /// The partition of `config` over `parallelism`, or why there is none.
    pub fn new(config: &LanguageConfig, parallelism: Parallelism) -> Result<Self, ParallelError> {
        let n = parallelism.tensor_parallel_size;
        if n == 0 {
            return Err(ParallelError::NoRanks);
        }
        let (heads, kv) = (config.num_heads, config.num_kv_heads);
        if !heads.is_multiple_of(n) {
            return Err(ParallelError::QueryHeads { heads, ranks: n });
        }
        let kv_ok = if kv >= n {
            kv.is_multiple_of(n)
        } else {
            kv > 0 && n.is_multiple_of(kv)
        };
        if !kv_ok {
            return Err(ParallelError::KvHeads {
                kv_heads: kv,
                ranks: n,
            });
        }
        let dense_layers = (0..config.num_layers).any(|i| !config.is_moe_layer(i));
        if dense_layers && !config.intermediate_size.is_multiple_of(n) {
            return Err(ParallelError::Width {
                what: "intermediate_size",
                width: config.intermediate_size,
                ranks: n,
            });
        }
        let experts = config
            .moe
            .as_ref()
            .filter(|m| m.num_experts > 0)
            .map(|m| (m.num_experts, m.moe_intermediate_size));
        match (experts, parallelism.expert_parallel) {
            (None, true) => return Err(ParallelError::DenseModel),
            (Some((count, _)), true) if count < n => {
                return Err(ParallelError::Experts {
                    experts: count,
                    ranks: n,
                });
            }
            (Some((_, width)), false) if !width.is_multiple_of(n) => {
                return Err(ParallelError::Width {
                    what: "moe_intermediate_size",
                    width,
                    ranks: n,
                });
            }
            _ => {}
        }
        Ok(Self {
            ranks: n,
            expert_parallel: parallelism.expert_parallel,
            heads,
            kv_heads: kv,
            kv_replicas: (n / kv).max(1),
            intermediate: config.intermediate_size,
            experts,
            vocab: config.vocab_size,
        })
    }

    /// Ranks in the group.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// Whether experts are placed whole.
    pub fn expert_parallel(&self) -> bool {
        self.expert_parallel
    }

    /// The vocabulary padded to a multiple of the ranks.
    pub fn padded_vocab(&self) -> usize {
        self.vocab.div_ceil(self.ranks) * self.ranks
    }

    /// Query heads per rank.
    pub fn heads_per_rank(&self) -> usize {
        self.heads / self.ranks
    }

    /// KV heads each rank stores.
    pub fn kv_heads_per_rank(&self) -> usize {
        (self.kv_heads / self.ranks).max(1)
    }

    /// Every rank's slices, in rank order.
    pub fn shards(&self) -> Vec<RankShard> {
        (0..self.ranks).map(|r| self.shard(r)).collect()
    }

    /// Rank `rank`'s slices.
    pub fn shard(&self, rank: usize) -> RankShard {
        let n = self.ranks;
        let even = |total: usize| total / n * rank..total / n * (rank + 1);
        let kv_per_rank = self.kv_heads_per_rank();
        let first_kv = rank / self.kv_replicas * kv_per_rank;
        let (experts, expert_width) = match self.experts {
            Some((count, width)) if self.expert_parallel => (uneven(count, n, rank), 0..width),
            Some((count, width)) => (0..count, even(width)),
            None => (0..0, 0..0),
        };
        RankShard {
            rank,
            ranks: n,
            heads: even(self.heads),
            kv_heads: first_kv..first_kv + kv_per_rank,
            intermediate: even(self.intermediate),
            experts,
            expert_width,
            vocab: even(self.padded_vocab()),
            vocab_size: self.vocab,
        }
    }
}

/// Rank `rank`'s share of `total` items over `n` ranks, the first `total % n` ranks taking one
/// more.
fn uneven(total: usize, n: usize, rank: usize) -> Range<usize> {
    let (base, extra) = (total / n, total % n);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uneven_shares_cover_every_item_once() {
        let shares: Vec<_> = (0..4).map(|r| uneven(6, 4, r)).collect();
        assert_eq!(shares, [0..2, 2..4, 4..5, 5..6]);
        assert_eq!(uneven(128, 8, 7), 112..128);
    }
}
