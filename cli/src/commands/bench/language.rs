//! `dvd bench language`: prefill and decode tokens/s of a checkpoint's language model on the
//! CPU (see `dvd_bench::language`).

use anyhow::Result;
use clap::Args;
use dvd_bench::language::LanguageBench;

use super::{CPU_PRECISION, median_line, print_report};
use crate::commands::encode::Precision;
use crate::commands::parallel::SplitArgs;

/// Options of `dvd bench language`.
#[derive(Debug, Args)]
pub struct LanguageArgs {
    /// Model directory, or a hub id in the local Hugging Face cache (default: the embedded
    /// demo model `dvd up` serves).
    #[arg(long)]
    model: Option<String>,
    /// Prompt length of the prefill.
    #[arg(long, default_value_t = LanguageBench::default().prompt_tokens)]
    prompt_tokens: usize,
    /// Greedy decode steps after the prefill.
    #[arg(long, default_value_t = LanguageBench::default().decode_tokens)]
    decode_tokens: usize,
    /// Sequences decoding together in one batched step.
    #[arg(long, default_value_t = LanguageBench::default().batch)]
    batch: usize,
    /// Timed rounds after one warm-up; medians are reported.
    #[arg(long, default_value_t = LanguageBench::default().rounds)]
    rounds: usize,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = CPU_PRECISION)]
    dtype: Precision,
    #[command(flatten)]
    split: SplitArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its two lines (or JSON).
pub fn run(args: LanguageArgs) -> Result<()> {
    let bench = LanguageBench {
        model: super::bench_model(args.model.as_deref())?,
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        batch: args.batch,
        rounds: args.rounds,
        dtype: args.dtype.dtype(),
        parallelism: args.split.parallelism(),
    };
    print_report(args.json, &bench.run()?, |r| {
        format!(
            "prefill {} tokens ({}): {} = {:.1} tokens/s\n\
             decode {} steps x {} sequences: {} = {:.1} tokens/s\n{}",
            r.prompt_tokens,
            r.dtype,
            median_line(r.prefill_ms, r.prefill_range_ms, "ms", 1),
            r.prefill_tokens_per_s,
            r.decode_tokens,
            r.batch,
            median_line(r.decode_ms_per_step, r.decode_range_ms, "ms/step", 2),
            r.decode_tokens_per_s,
            match &r.single_rank {
                Some(one) => format!(
                    "one rank, same rounds: prefill {:.1} ms, decode {:.2} ms/step; {} ranks cost \
                     {:+.2} ms/step ({} collectives/step, one all-reduce {:.1} us)\n",
                    one.prefill_ms,
                    one.decode_ms_per_step,
                    r.tensor_parallel_size,
                    one.split_overhead_ms_per_step,
                    one.collectives_per_step,
                    one.all_reduce_us
                ),
                None => String::new(),
            }
        )
    })
}
