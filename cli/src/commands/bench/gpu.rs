//! `dvd bench gpu`: InternVL3.5 shapes on one GPU through the serving code paths (see
//! `dvd_bench::gpu`).

use anyhow::Result;
use clap::Args;
use dvd_bench::gpu::GpuBench;
use dvd_language_server::engine::kv::KvPoolConfig;

use super::SizeList;
use crate::commands::device::ComputeArgs;

/// Options of `dvd bench gpu`.
#[derive(Debug, Args)]
pub struct GpuArgs {
    /// Checkpoint directory or hub id (e.g. one written by tools/gpu/make_random_checkpoint.py).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Tiles per vision batch.
    #[arg(long, default_value = "1,8,32")]
    vision_batches: SizeList,
    /// Prompt rows of the prefill (7 tiles x 256 + 108 text).
    #[arg(long, default_value_t = 1900)]
    prefill_tokens: usize,
    /// Sequences per decode step.
    #[arg(long, default_value = "1,32")]
    decode_batches: SizeList,
    /// Cached positions before the timed decode steps.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Timed repetitions (medians reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// KV block size.
    #[arg(long, default_value_t = KvPoolConfig::DEFAULT_BLOCK_SIZE)]
    block_size: usize,
    /// Skip the vision encoder.
    #[arg(long)]
    skip_vision: bool,
    /// Skip the language model.
    #[arg(long)]
    skip_language: bool,
    /// Also time each GPU kernel alone at the same shapes.
    #[arg(long)]
    kernels: bool,
}

/// Runs the benchmark and prints its JSON report.
pub fn run(args: GpuArgs) -> Result<()> {
    let bench = GpuBench {
        model: dvd_checkpoint::resolve_model_dir(&args.model)?,
        device: args.compute.open()?,
        dtype: args.compute.dtype(),
        vision_batches: args.vision_batches.0,
        prefill_tokens: args.prefill_tokens,
        decode_batches: args.decode_batches.0,
        context: args.context,
        iters: args.iters,
        block_size: args.block_size,
        skip_vision: args.skip_vision,
        skip_language: args.skip_language,
        kernels: args.kernels,
    };
    let report = bench.run()?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
