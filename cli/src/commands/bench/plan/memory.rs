//! `dvd bench plan --model`: what one language server of a model takes on each GPU, from the
//! config alone (see `dvd_bench::plan::memory`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use dvd_bench::plan::memory::{MemoryQuery, MemoryReport};
use dvd_language_server::model::Parallelism;

use crate::commands::encode::Precision;

/// Options of the memory mode (none of them goes with `--profile`).
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Size a language server of this checkpoint directory (its config.json) or config.json,
    /// from the config alone, instead of predicting throughput from a --profile.
    #[arg(
        long,
        requires = "gpu_memory_gib",
        conflicts_with_all = [
            "profile", "vision_servers", "language_servers", "request_rate", "gpus",
            "measured", "efficiency",
        ]
    )]
    model: Option<PathBuf>,
    /// Ranks (GPUs of one host) the model spans.
    #[arg(long, default_value_t = 1, requires = "model")]
    tensor_parallel_size: usize,
    /// Whole experts per rank instead of a slice of every expert's width (MoE models).
    #[arg(long, requires = "model")]
    expert_parallel: bool,
    /// Memory of one GPU, GiB: nvidia-smi's total MiB / 1024 (about 80 for an H100, 140 for an
    /// H200).
    #[arg(long, requires = "model")]
    gpu_memory_gib: Option<f64>,
    /// Share of each GPU's memory the server may use for weights and KV cache.
    #[arg(long, default_value_t = 0.9, requires = "model")]
    gpu_memory_utilization: f64,
    /// Positions per KV block.
    #[arg(long, default_value_t = 16, requires = "model")]
    block_size: usize,
    /// Weight and KV cache dtype.
    #[arg(long, value_enum, default_value_t = Precision::Bf16, requires = "model")]
    dtype: Precision,
}

/// Sizes the model and prints the answer (JSON with `json`).
pub fn run(args: MemoryArgs, json: bool) -> Result<()> {
    let model = args.model.context("--profile or --model is required")?;
    let gpu_memory_gib = args
        .gpu_memory_gib
        .context("--model needs --gpu-memory-gib")?;
    let dtype = args.dtype.dtype();
    let report = MemoryQuery {
        model,
        parallelism: Parallelism {
            tensor_parallel_size: args.tensor_parallel_size,
            expert_parallel: args.expert_parallel,
        },
        gpu_memory_gib,
        gpu_memory_utilization: args.gpu_memory_utilization,
        block_size: args.block_size,
        dtype: dtype_name(args.dtype),
        dtype_bytes: dtype.size_in_bytes(),
    }
    .plan()?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print!("{}", table(&report)),
    }
    Ok(())
}

/// `--dtype`'s spelling of `precision`.
fn dtype_name(precision: Precision) -> String {
    precision
        .to_possible_value()
        .map_or_else(|| format!("{precision:?}"), |v| v.get_name().to_string())
}

/// The report as people read it.
fn table(r: &MemoryReport) -> String {
    let layout = match (r.expert_parallel, r.experts_per_rank) {
        (true, Some(experts)) => format!("expert parallel, {experts} experts per rank"),
        (false, Some(experts)) if r.tensor_parallel_size > 1 => format!(
            "all {experts} experts, 1/{} of each one's width",
            r.tensor_parallel_size
        ),
        (false, Some(experts)) => format!("{experts} experts"),
        (_, None) => "dense".to_string(),
    };
    let verdict = match r.fits {
        true => "yes".to_string(),
        false => format!(
            "NO: each rank lacks {} for its weights and one KV block",
            bytes(r.shortfall_bytes_per_rank)
        ),
    };
    let rows = [
        ("usable per rank", bytes(r.usable_bytes_per_rank)),
        ("weights per rank", bytes(r.weight_bytes_per_rank)),
        (
            "KV per token per rank",
            format!(
                "{:.1} KiB ({} B)",
                r.kv_bytes_per_token_per_rank as f64 / 1024.0,
                r.kv_bytes_per_token_per_rank
            ),
        ),
        ("KV budget per rank", bytes(r.kv_budget_bytes_per_rank)),
        ("KV blocks", r.kv_blocks.to_string()),
        ("max tokens in flight", r.max_tokens_in_flight.to_string()),
        ("fits", verdict),
    ];
    let mut out = format!(
        "{} ({}): tensor parallel {} ({} query / {} KV heads per rank; {layout}), {}, \
         {} GiB x {} per GPU, block {}\n",
        r.model,
        r.config.display(),
        r.tensor_parallel_size,
        r.heads_per_rank,
        r.kv_heads_per_rank,
        r.dtype,
        r.gpu_memory_gib,
        r.gpu_memory_utilization,
        r.block_size,
    );
    for (name, value) in rows {
        out += &format!("  {name:<22} {value}\n");
    }
    out
}

/// `n` bytes in GiB, and exactly.
fn bytes(n: u64) -> String {
    format!("{:.2} GiB ({n} B)", n as f64 / (1u64 << 30) as f64)
}
