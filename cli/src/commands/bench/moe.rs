//! `dvd bench moe`: one mixture-of-experts block on random weights against the read bound of
//! the weights it touches (see `dvd_bench::moe`).

use anyhow::Result;
use clap::Args;
use dvd_bench::moe::MoeBench;

use super::{median_line, print_report};
use crate::commands::device::ComputeArgs;

/// Options of `dvd bench moe`.
#[derive(Debug, Args)]
pub struct MoeArgs {
    /// Width of the tokens.
    #[arg(long, default_value_t = MoeBench::default().hidden)]
    hidden: usize,
    /// Experts in the block.
    #[arg(long, default_value_t = MoeBench::default().experts)]
    experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = MoeBench::default().top_k)]
    top_k: usize,
    /// Width of one expert's gate and up projections.
    #[arg(long, default_value_t = MoeBench::default().moe_intermediate)]
    moe_intermediate: usize,
    /// Tokens per call.
    #[arg(long, default_value_t = MoeBench::default().tokens)]
    tokens: usize,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = MoeBench::default().seed)]
    seed: u64,
    /// Timed calls after two warm-up calls (the median is reported).
    #[arg(long, default_value_t = MoeBench::default().calls)]
    calls: usize,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its report.
pub fn run(args: MoeArgs) -> Result<()> {
    let bench = MoeBench {
        hidden: args.hidden,
        experts: args.experts,
        top_k: args.top_k,
        moe_intermediate: args.moe_intermediate,
        tokens: args.tokens,
        seed: args.seed,
        calls: args.calls,
        device: args.compute.open()?,
        dtype: args.compute.dtype(),
    };
    print_report(args.json, &bench.run()?, |r| {
        format!(
            "moe block {}x{} experts (top-{}, width {}), {} tokens, {} on {}, {} threads: {}\n\
             touched {} experts = {:.1} MB; read bandwidth {:.1} GB/s; bound {:.2} ms \
             ({:.2}x of it)\n",
            r.hidden,
            r.experts,
            r.top_k,
            r.moe_intermediate,
            r.tokens,
            r.dtype,
            r.device,
            r.threads,
            median_line(r.ms_per_call, r.range_ms, "ms/call", 2),
            r.active_experts,
            r.active_weight_bytes as f64 / 1e6,
            r.read_gbps,
            r.bound_ms,
            r.ratio_to_bound
        )
    })
}
