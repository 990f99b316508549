//! Bytes per rank, from the config alone: what the weights take, what a cached token takes, and
//! how many KV blocks fit in what a device has left.

use super::super::config::LanguageConfig;
use super::partition::{Partition, RankShard};

/// Weight and KV cache bytes of one model over one partition, in one dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Weight bytes of the rank holding the most (rank 0: it adds the row-parallel biases, and
    /// uneven expert shares put the extra experts first).
    pub weight_bytes_per_rank: u64,
    /// KV cache bytes one token position takes on each rank (its KV heads, every layer).
    pub kv_bytes_per_token_per_rank: u64,
}

impl MemoryPlan {
    /// The plan of `config` split as `partition`, `dtype_bytes` per element.
    pub fn new(config: &LanguageConfig, partition: &Partition, dtype_bytes: usize) -> Self {
        let weights = partition
            .shards()
            .iter()
            .map(|s| rank_weight_elements(config, s))
            .max()
            .unwrap_or(0);
        let kv = config.num_layers * 2 * partition.kv_heads_per_rank() * config.head_dim;
        Self {
            weight_bytes_per_rank: (weights * dtype_bytes) as u64,
            kv_bytes_per_token_per_rank: (kv * dtype_bytes) as u64,
        }
    }

    /// KV cache bytes of one block of `block_size` positions on each rank.
    pub fn kv_bytes_per_block(&self, block_size: usize) -> u64 {
        self.kv_bytes_per_token_per_rank * block_size as u64
    }
}

/// How a KV pool fits on a device: what the weights (and anything else already allocated) leave
/// of the share of device memory the server may use (vLLM's `--gpu-memory-utilization`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvFit {
    /// Device memory, bytes.
    pub device_bytes: u64,
    /// Fraction of it the server may use.
    pub utilization: f64,
    /// Bytes in use before the KV pool (weights, at least).
    pub used_bytes: u64,
}

impl KvFit {
    /// The bytes the server may use.
    pub fn usable_bytes(&self) -> u64 {
        (self.device_bytes as f64 * self.utilization) as u64
    }

    /// Bytes left for the KV pool; `None` when what is used already exceeds the usable share.
    pub fn kv_budget_bytes(&self) -> Option<u64> {
        self.usable_bytes().checked_sub(self.used_bytes)
    }

    /// KV blocks of `block_bytes` that fit in the budget (0 when none does).
    pub fn blocks(&self, block_bytes: u64) -> u64 {
        self.kv_budget_bytes()
            .map_or(0, |budget| budget / block_bytes.max(1))
    }
}

/// Elements of every tensor rank `s` loads (what `LanguageModel` reads for that rank; the
/// tensor-parallel tests check the two agree).
fn rank_weight_elements(config: &LanguageConfig, s: &RankShard) -> usize {
    let c = config;
    let h = c.hidden_size;
    let d = c.head_dim;
    let vocab_rows = s.vocab.len();
    // Embedding, lm_head (a tied lm_head is the embedding itself), final norm.
    let mut total = vocab_rows * h * if c.tie_word_embeddings { 1 } else { 2 } + h;
    let (q, kv) = (s.heads.len() * d, s.kv_heads.len() * d);
    for layer in 0..c.num_layers {
        total += 2 * h + 2 * d; // input / post-attention norms, q / k norms
        total += (q + 2 * kv) * h + h * q; // q, k, v, o
        if c.attention_bias {
            total += q + 2 * kv + if s.adds_row_bias() { h } else { 0 };
        }
        total += match &c.moe {
            Some(m) if c.is_moe_layer(layer) => {
                m.num_experts * h + s.experts.len() * 3 * s.expert_width.len() * h
            }
            _ => 3 * s.intermediate.len() * h,
        };
    }
    total
}
