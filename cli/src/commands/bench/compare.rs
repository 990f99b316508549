//! `dvd bench compare`: coupled serving against DvD on this machine (see
//! `dvd_bench::compare`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use dvd_bench::compare::{CompareBench, validation};
use dvd_bench::serve::RunLength;

use super::{CountRange, SizeList, parse_request_rate, request_rate_flag};

/// Options of `dvd bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Model directory or hub id (default: the embedded demo model `dvd up` serves).
    #[arg(long)]
    model: Option<String>,
    /// Seconds each loaded run sends image requests (default 60: a steady-state run; requests
    /// in flight at the end finish and count).
    #[arg(long, conflicts_with = "num_prompts")]
    duration_s: Option<f64>,
    /// Image requests in each loaded run, instead of a timed run.
    #[arg(long)]
    num_prompts: Option<usize>,
    /// Most image requests in flight: with an infinite --request-rate, a closed loop (default:
    /// 16 in a timed run, unbounded with --num-prompts).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Image requests per second, or `inf` to send them all at once (saturating).
    #[arg(long, default_value_t = request_rate_flag(CompareBench::default().request_rate))]
    request_rate: String,
    /// Square image sides, used in turn (e.g. 448,896).
    #[arg(long, default_value_t = SizeList::of_sides(&CompareBench::default().sizes))]
    image_sizes: SizeList,
    /// Images per request.
    #[arg(long, default_value_t = CompareBench::default().images_per_request)]
    images_per_request: usize,
    /// A video workload: each request carries a fresh H.264 clip sampled at N frames (one tile
    /// each, sides from --image-sizes) instead of pictures.
    #[arg(long, default_value_t = CompareBench::default().video_frames)]
    video_frames: u32,
    /// The question asked with the images.
    #[arg(long, default_value_t = CompareBench::default().prompt)]
    prompt: String,
    /// Tokens each image request generates.
    #[arg(long, default_value_t = CompareBench::default().max_tokens)]
    output_len: u32,
    /// Text-only probes per second beside the image load.
    #[arg(long, default_value_t = CompareBench::default().probe_rate)]
    probe_request_rate: f64,
    /// Probes in each unloaded run, sent back to back (each alone on the deployment).
    #[arg(long, default_value_t = CompareBench::default().probe_requests)]
    probe_requests: usize,
    /// Prompt tokens of each probe's random prompt, MIN:MAX (drawn uniformly, both included;
    /// the model's tokenizer counts them, the chat template's own tokens apart).
    #[arg(long, default_value_t = CountRange(CompareBench::default().probe_tokens.0, CompareBench::default().probe_tokens.1))]
    probe_input_len: CountRange,
    /// One fixed question for every probe instead of the random mix.
    #[arg(long)]
    probe_prompt: Option<String>,
    /// Tokens each probe generates.
    #[arg(long, default_value_t = CompareBench::default().probe_max_tokens)]
    probe_output_len: u32,
    /// Cores of DvD's vision server.
    #[arg(long, default_value_t = CompareBench::default().vision_cpus)]
    vision_cpus: String,
    /// Cores of DvD's language server.
    #[arg(long, default_value_t = CompareBench::default().language_cpus)]
    language_cpus: String,
    /// Cores of DvD's gateway (default: the language server's, which waits on vision most of
    /// the time).
    #[arg(long, default_value_t = CompareBench::default().gateway_cpus)]
    gateway_cpus: String,
    /// The language engine's step budget, in both deployments.
    #[arg(long, default_value_t = CompareBench::default().max_step_tokens)]
    max_step_tokens: usize,
    /// Cap on the step tokens of long prompts, in both deployments (`dvd up
    /// --long-prefill-tokens`; default: none).
    #[arg(long)]
    long_prefill_tokens: Option<usize>,
    /// Cores of this benchmark's own threads: the load generator, and the feature listener of
    /// the vision-alone run (standing in for the language server). Default: the gateway's cores,
    /// so the client takes no time from the vision server; `all` for no pinning.
    #[arg(long)]
    client_cpus: Option<String>,
    /// Seed of the images and arrivals (round r uses seed + r).
    #[arg(long, default_value_t = CompareBench::default().seed)]
    seed: u64,
    /// Times each measurement runs (loaded runs, probes, stages alone), each round with fresh
    /// pictures; every figure is the median over rounds, which steadies it on a noisy machine.
    #[arg(
        long,
        default_value_t = CompareBench::default().rounds as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    rounds: u64,
    /// Test the planner on splits it was not fitted on: fit on 1 vision : 1 language server,
    /// then predict and measure these (e.g. `2V:1L,1V:2L,2V:2L`), every server capped at
    /// --split-unit-cores of CPU time in a cgroup of its own (needs root); the report's
    /// `plan_validation`.
    #[arg(long)]
    validate_splits: Option<String>,
    /// CPU time of each server in the --validate-splits runs, in cores.
    #[arg(long, default_value_t = CompareBench::default().split_unit_cores)]
    split_unit_cores: f64,
    /// Limit of one request, seconds.
    #[arg(long, default_value_t = CompareBench::default().timeout.as_secs_f64())]
    timeout_s: f64,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    result_file: Option<PathBuf>,
}

/// Runs the comparison and prints the report.
pub fn run(args: CompareArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the dvd binary")?;
    let model = match args.model {
        Some(model) => model,
        None => crate::commands::demo_model::path()?.display().to_string(),
    };
    let request_rate = parse_request_rate(&args.request_rate)?;
    let sizes = args
        .image_sizes
        .0
        .iter()
        .map(|&s| u32::try_from(s))
        .collect::<Result<Vec<_>, _>>()?;
    let client_cpus = match args.client_cpus.as_deref().unwrap_or(&args.gateway_cpus) {
        "all" => None,
        list => Some(crate::commands::affinity::parse_cpus(list)?),
    };
    let defaults = CompareBench::default();
    let (length, max_concurrency) = match (args.num_prompts, args.duration_s) {
        (Some(n), _) => (RunLength::Requests(n), args.max_concurrency),
        (None, Some(seconds)) => (
            RunLength::Seconds(seconds),
            args.max_concurrency.or(defaults.max_concurrency),
        ),
        (None, None) => (
            defaults.length,
            args.max_concurrency.or(defaults.max_concurrency),
        ),
    };
    let bench = CompareBench {
        exe,
        model,
        length,
        max_concurrency,
        sizes,
        images_per_request: args.images_per_request,
        video_frames: args.video_frames,
        prompt: args.prompt,
        max_tokens: args.output_len,
        request_rate,
        probe_rate: args.probe_request_rate,
        probe_requests: args.probe_requests,
        probe_tokens: (args.probe_input_len.0, args.probe_input_len.1),
        probe_prompt: args.probe_prompt,
        probe_max_tokens: args.probe_output_len,
        vision_cpus: args.vision_cpus,
        language_cpus: args.language_cpus,
        gateway_cpus: args.gateway_cpus,
        max_step_tokens: args.max_step_tokens,
        long_prefill_tokens: args.long_prefill_tokens,
        client_cpus,
        seed: args.seed,
        rounds: usize::try_from(args.rounds)?,
        validate_splits: match &args.validate_splits {
            Some(text) => validation::parse_splits(text)?,
            None => Vec::new(),
        },
        split_unit_cores: args.split_unit_cores,
        timeout: Duration::try_from_secs_f64(args.timeout_s)?,
    };
    let report = bench.run(|line| eprintln!("{line}"))?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.result_file {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    match args.json {
        true => println!("{json}"),
        false => print!("{}", report.table()),
    }
    Ok(())
}
