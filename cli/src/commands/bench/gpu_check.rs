//! `dvd bench gpu-check`: a checkpoint on a device against the CPU in f32, on the same inputs
//! (see `dvd_bench::gpu_check`); exits non-zero when they disagree.

use anyhow::{Result, bail};
use clap::Args;
use dvd_bench::gpu_check::GpuCheck;

use crate::commands::device::ComputeArgs;

/// Options of `dvd bench gpu-check`.
#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Checkpoint directory or hub id.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Tiles encoded.
    #[arg(long, default_value_t = GpuCheck::default().tiles)]
    tiles: usize,
    /// Rows of the first prefill chunk.
    #[arg(long, default_value_t = GpuCheck::default().first_chunk)]
    first_chunk: usize,
    /// Lowest cosine similarity accepted.
    #[arg(long, default_value_t = GpuCheck::default().min_cosine)]
    min_cosine: f64,
}

/// Runs the check, prints its JSON report and fails when the device disagrees.
pub fn run(args: GpuCheckArgs) -> Result<()> {
    let check = GpuCheck {
        model: dvd_checkpoint::resolve_model_dir(&args.model)?,
        device: args.compute.open()?,
        dtype: args.compute.dtype(),
        tiles: args.tiles,
        first_chunk: args.first_chunk,
        min_cosine: args.min_cosine,
    };
    let report = check.run()?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.pass {
        bail!(
            "the device disagrees with the CPU (cosine below {})",
            args.min_cosine
        );
    }
    Ok(())
}
