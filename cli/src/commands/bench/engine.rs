//! `dvd bench engine`: the continuous-batching engine's decode and prefill tokens/s, and
//! continuous batching against one request at a time (see `dvd_bench::engine`).

use anyhow::Result;
use clap::Args;
use dvd_bench::engine::EngineBench;

use super::{CPU_PRECISION, SizeList};
use crate::commands::encode::Precision;
use crate::commands::parallel::SplitArgs;

/// Options of `dvd bench engine`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Model directory, or a hub id in the local Hugging Face cache (default: the embedded
    /// demo model `dvd up` serves).
    #[arg(long)]
    model: Option<String>,
    /// Directory with the `tokenizer.json` (default: the model's; `tools/bench_tokenizer.py`
    /// writes one for the benchmark checkpoint).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Compute precision (also the KV cache's).
    #[arg(long, value_enum, default_value_t = CPU_PRECISION)]
    dtype: Precision,
    /// Batch sizes of the decode sweep, comma-separated ("" skips it).
    #[arg(long, default_value_t = SizeList(EngineBench::default().batches))]
    batches: SizeList,
    /// Prompt tokens per request in the sweep and the comparison.
    #[arg(long, default_value_t = EngineBench::default().prompt_tokens)]
    prompt_tokens: usize,
    /// Tokens each request generates in the sweep and the comparison.
    #[arg(long, default_value_t = EngineBench::default().decode_tokens)]
    decode_tokens: usize,
    /// Prompt tokens of the prefill measurement (0 skips it).
    #[arg(long, default_value_t = EngineBench::default().prefill_tokens)]
    prefill_tokens: usize,
    /// Requests of the continuous vs one-at-a-time comparison (0 skips it).
    #[arg(long, default_value_t = EngineBench::default().requests)]
    requests: usize,
    /// Milliseconds between arrivals in the comparison (0: all queued at once).
    #[arg(long, default_value_t = EngineBench::default().arrival_interval_ms)]
    arrival_interval_ms: f64,
    /// The engine's per-step token budget.
    #[arg(long, default_value_t = EngineBench::default().max_step_tokens)]
    max_step_tokens: usize,
    /// Positions per KV block.
    #[arg(long, default_value_t = EngineBench::default().block_size)]
    block_size: usize,
    /// Batch sizes to also run through the model's forward pass alone, as a baseline.
    #[arg(long, default_value_t = SizeList(EngineBench::default().baseline_batches))]
    baseline_batches: SizeList,
    /// Timed rounds of each measurement (after one warm-up); medians are reported.
    #[arg(long, default_value_t = EngineBench::default().rounds)]
    rounds: usize,
    #[command(flatten)]
    split: SplitArgs,
    /// Print the JSON report on stdout (the tables go to stderr).
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its tables (or JSON).
pub fn run(args: EngineArgs) -> Result<()> {
    let bench = EngineBench {
        tokenizer: args.tokenizer,
        dtype: args.dtype.dtype(),
        batches: args.batches.0,
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        prefill_tokens: args.prefill_tokens,
        requests: args.requests,
        arrival_interval_ms: args.arrival_interval_ms,
        max_step_tokens: args.max_step_tokens,
        block_size: args.block_size,
        baseline_batches: args.baseline_batches.0,
        rounds: args.rounds,
        parallelism: args.split.parallelism(),
        ..EngineBench::new(super::bench_model(args.model.as_deref())?)
    };
    let report = bench.run()?;
    if args.json {
        eprintln!("{report}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
