//! `dvd bench pipeline`: the vision serving pipeline's tiles/s with and without cross-request
//! batching, and encode/transfer overlap (see `dvd_bench::pipeline`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use dvd_bench::pipeline::PipelineBench;

use super::CPU_PRECISION;
use crate::commands::encode::Precision;

/// Options of `dvd bench pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Model directory, or a hub id in the local Hugging Face cache (default: the embedded
    /// demo model `dvd up` serves).
    #[arg(long)]
    model: Option<String>,
    /// Image whose tiles feed the encoder (default: `bench.jpg` in the model directory; the
    /// demo model gets a synthetic 1920x1080 picture there).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = CPU_PRECISION)]
    dtype: Precision,
    /// Timed rounds (medians are reported).
    #[arg(long, default_value_t = PipelineBench::default().rounds)]
    rounds: usize,
    /// Throughput: requests submitted together.
    #[arg(long, default_value_t = PipelineBench::default().requests)]
    requests: usize,
    /// Throughput: tiles per request.
    #[arg(long, default_value_t = PipelineBench::default().tiles_per_request)]
    tiles_per_request: usize,
    /// Throughput: the batching encoder's `max_batch_tiles` (the other one uses 1).
    #[arg(long, default_value_t = PipelineBench::default().batch_tiles)]
    batch_tiles: usize,
    /// How long a batch that is not full waits for more tiles, milliseconds.
    #[arg(long, default_value_t = PipelineBench::default().batch_wait.as_secs_f64() * 1e3)]
    batch_wait_ms: f64,
    /// Overlap: tiles of the one multi-tile request.
    #[arg(long, default_value_t = PipelineBench::default().image_tiles)]
    image_tiles: usize,
    /// Overlap: `max_batch_tiles` of the pipelined run.
    #[arg(long, default_value_t = PipelineBench::default().chunk_tiles)]
    chunk_tiles: usize,
    /// Worker threads of the runtime that runs senders, listener and receivers.
    #[arg(long, default_value_t = PipelineBench::default().worker_threads)]
    workers: usize,
    /// Print the JSON report on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its table (or JSON).
pub fn run(args: PipelineArgs) -> Result<()> {
    let model = super::bench_model(args.model.as_deref())?;
    let image = super::bench_image(&model, args.image)?;
    let bench = PipelineBench {
        dtype: args.dtype.dtype(),
        rounds: args.rounds,
        requests: args.requests,
        tiles_per_request: args.tiles_per_request,
        batch_tiles: args.batch_tiles,
        batch_wait: Duration::try_from_secs_f64(args.batch_wait_ms / 1e3)?,
        image_tiles: args.image_tiles,
        chunk_tiles: args.chunk_tiles,
        worker_threads: args.workers,
        ..PipelineBench::new(model, image)
    };
    let report = bench.run(|line| eprintln!("{line}"))?;
    if args.json {
        eprint!("{}", report.table());
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
