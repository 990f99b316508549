//! The memory mode of `dvd bench plan`: what one language server of a model takes on each of its
//! GPUs, from the model's `config.json` alone (no weights) — weights per rank, KV cache bytes per
//! token, the KV blocks that fit in what the weights leave, and so the tokens it can hold in
//! flight. The arithmetic is the language server's own (`dvd_language_server::model::MemoryPlan`
//! over a `Partition`, fitted with `KvFit`), so a layout it refuses is refused here too.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dvd_language_server::model::{KvFit, LanguageConfig, MemoryPlan, Parallelism, Partition};
use serde::Serialize;

/// Bytes in a GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// What to size: a model over `parallelism` on GPUs of `gpu_memory_gib`.
#[derive(Debug, Clone)]
pub struct MemoryQuery {
    /// A checkpoint directory (its `config.json` is read) or a `config.json`.
    pub model: PathBuf,
    /// Ranks (GPUs) and expert placement.
    pub parallelism: Parallelism,
    /// Memory of one GPU, GiB.
    pub gpu_memory_gib: f64,
    /// Share of it the server may use (vLLM's `--gpu-memory-utilization`).
    pub gpu_memory_utilization: f64,
    /// Positions per KV block.
    pub block_size: usize,
    /// The dtype's name, as `--dtype` spells it.
    pub dtype: String,
    /// Bytes per element of that dtype.
    pub dtype_bytes: usize,
}

/// The answer, per rank (every rank of the group holds as much as rank 0 or less).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryReport {
    /// The checkpoint's directory name.
    pub model: String,
    /// The `config.json` read.
    pub config: PathBuf,
    /// Ranks the model spans.
    pub tensor_parallel_size: usize,
    /// Whole experts per rank.
    pub expert_parallel: bool,
    /// Memory of one GPU, GiB.
    pub gpu_memory_gib: f64,
    /// Share of it the server may use.
    pub gpu_memory_utilization: f64,
    /// Positions per KV block.
    pub block_size: usize,
    /// Weight and KV dtype.
    pub dtype: String,
    /// Query heads on each rank.
    pub heads_per_rank: usize,
    /// KV heads each rank stores (replicated when the model has fewer than ranks).
    pub kv_heads_per_rank: usize,
    /// Experts on the fullest rank (every expert, each a slice of its width, without expert
    /// parallelism); `None` for a dense model.
    pub experts_per_rank: Option<usize>,
    /// GPU bytes the server may use: memory x utilization.
    pub usable_bytes_per_rank: u64,
    /// Weight bytes of the fullest rank.
    pub weight_bytes_per_rank: u64,
    /// KV cache bytes one token position takes on each rank.
    pub kv_bytes_per_token_per_rank: u64,
    /// Usable bytes the weights leave for the KV pool (0 when they do not fit).
    pub kv_budget_bytes_per_rank: u64,
    /// KV blocks of `block_size` positions that fit in the budget.
    pub kv_blocks: u64,
    /// Token positions the pool holds across all sequences: `kv_blocks x block_size`.
    pub max_tokens_in_flight: u64,
    /// Whether the weights and at least one KV block fit.
    pub fits: bool,
    /// Bytes each rank lacks for its weights plus one KV block (0 when it fits).
    pub shortfall_bytes_per_rank: u64,
}

impl MemoryQuery {
    /// The `config.json` this query reads: `model` itself, or `model/config.json` for a
    /// directory.
    pub fn config_path(&self) -> PathBuf {
        match self.model.is_dir() {
            true => self.model.join("config.json"),
            false => self.model.clone(),
        }
    }

    /// Sizes the model; an unusable query or a layout the shapes do not allow is an error
    /// whose message has the numbers.
    pub fn plan(&self) -> Result<MemoryReport> {
        anyhow::ensure!(
            self.gpu_memory_gib.is_finite() && self.gpu_memory_gib > 0.0,
            "--gpu-memory-gib must be positive, got {}",
            self.gpu_memory_gib
        );
        anyhow::ensure!(
            self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0,
            "--gpu-memory-utilization must be in (0, 1], got {}",
            self.gpu_memory_utilization
        );
        anyhow::ensure!(self.block_size > 0, "--block-size must be at least 1");
        let path = self.config_path();
        let json = dvd_checkpoint::read_json(&path)?;
        let config = LanguageConfig::from_json(&json, &path)?;
        let model = model_name(&path);
        let p = self.parallelism;
        let partition = Partition::new(&config, p).with_context(|| {
            format!(
                "{model} cannot run at --tensor-parallel-size {}{}",
                p.tensor_parallel_size,
                if p.expert_parallel {
                    " --expert-parallel"
                } else {
                    ""
                }
            )
        })?;
        let memory = MemoryPlan::new(&config, &partition, self.dtype_bytes);
        let fit = KvFit {
            device_bytes: (self.gpu_memory_gib * GIB) as u64,
            utilization: self.gpu_memory_utilization,
            used_bytes: memory.weight_bytes_per_rank,
        };
        let block_bytes = memory.kv_bytes_per_block(self.block_size);
        let kv_blocks = fit.blocks(block_bytes);
        let usable = fit.usable_bytes();
        Ok(MemoryReport {
            model,
            config: path,
            tensor_parallel_size: p.tensor_parallel_size,
            expert_parallel: p.expert_parallel,
            gpu_memory_gib: self.gpu_memory_gib,
            gpu_memory_utilization: self.gpu_memory_utilization,
            block_size: self.block_size,
            dtype: self.dtype.clone(),
            heads_per_rank: partition.heads_per_rank(),
            kv_heads_per_rank: partition.kv_heads_per_rank(),
            experts_per_rank: config
                .moe
                .as_ref()
                .map(|_| partition.shard(0).experts.len()),
            usable_bytes_per_rank: usable,
            weight_bytes_per_rank: memory.weight_bytes_per_rank,
            kv_bytes_per_token_per_rank: memory.kv_bytes_per_token_per_rank,
            kv_budget_bytes_per_rank: fit.kv_budget_bytes().unwrap_or(0),
            kv_blocks,
            max_tokens_in_flight: kv_blocks * self.block_size as u64,
            fits: kv_blocks > 0,
            shortfall_bytes_per_rank: (memory.weight_bytes_per_rank + block_bytes)
                .saturating_sub(usable),
        })
    }
}

/// The checkpoint's name: the directory holding `config.json`.
fn model_name(config: &Path) -> String {
    config.parent().and_then(Path::file_name).map_or_else(
        || config.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}
