//! `dvd bench vision`: image preprocessing time and encoder tiles/s of a checkpoint on the CPU
//! (see `dvd_bench::vision`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dvd_bench::vision::VisionBench;

use super::{CPU_PRECISION, median_line, print_report};
use crate::commands::encode::Precision;

/// Options of `dvd bench vision`.
#[derive(Debug, Args)]
pub struct VisionArgs {
    /// Model directory, or a hub id in the local Hugging Face cache (default: the embedded
    /// demo model `dvd up` serves).
    #[arg(long)]
    model: Option<String>,
    /// Image whose preprocessing is timed (its tiles also feed the encoder; default:
    /// `bench.jpg` in the model directory, which the demo model gets as a synthetic 1920x1080
    /// picture).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Tiles per encoder batch.
    #[arg(long, default_value_t = VisionBench::default().tiles)]
    tiles: usize,
    /// Timed rounds after one warm-up; medians are reported.
    #[arg(long, default_value_t = VisionBench::default().rounds)]
    rounds: usize,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = CPU_PRECISION)]
    dtype: Precision,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its two lines (or JSON).
pub fn run(args: VisionArgs) -> Result<()> {
    let model = super::bench_model(args.model.as_deref())?;
    let bench = VisionBench {
        image: super::bench_image(&model, args.image)?,
        model,
        tiles: args.tiles,
        rounds: args.rounds,
        dtype: args.dtype.dtype(),
    };
    print_report(args.json, &bench.run()?, |r| {
        format!(
            "preprocess {}x{} -> {} tiles: {}\n\
             encode {} tiles ({}): {} = {:.2} tiles/s\n",
            r.image_size.0,
            r.image_size.1,
            r.image_tiles,
            median_line(r.preprocess_ms, r.preprocess_range_ms, "ms", 2),
            r.batch_tiles,
            r.dtype,
            median_line(r.encode_ms, r.encode_range_ms, "ms", 1),
            r.tiles_per_s
        )
    })
}
