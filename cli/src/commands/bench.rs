//! `dvd bench ...`: benchmarks.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dvd_bench::engine::EngineBench;
use dvd_bench::language::LanguageBench;
use dvd_bench::pipeline::PipelineBench;
use dvd_bench::transport::TransportBench;
use dvd_bench::vision::VisionBench;
use dvd_transport::quic::QuicTuning;

use super::device::ComputeArgs;
use super::encode::Precision;

/// Benchmarks (see docs/performance.md for recorded results).
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Feature-frame throughput on loopback: raw TCP, our TCP, raw quinn, our QUIC.
    Transport(TransportArgs),
    /// Image preprocessing time and encoder tiles/s of a checkpoint on the CPU.
    Vision(VisionArgs),
    /// Prefill and decode tokens/s of a checkpoint's language model on the CPU.
    Language(LanguageArgs),
    /// The continuous-batching engine: decode tokens/s against batch size, prefill tokens/s,
    /// and continuous batching against one request at a time.
    Engine(EngineArgs),
    /// The vision serving pipeline: tiles/s with and without cross-request batching, and how
    /// much encoding and transfer overlap within a multi-tile request.
    Pipeline(PipelineArgs),
    /// Load against a running deployment's OpenAI API: arrivals, concurrency, image or JSONL
    /// requests, text-only probes; TTFT/TPOT/ITL/E2EL, throughput and goodput (vLLM's names).
    Serve(Box<ServeArgs>),
    /// InternVL3.5 shapes on one GPU: vision tiles/s, prefill and decode through the serving
    /// code paths, and the copy bandwidth that bounds decode (prints JSON).
    Gpu(GpuArgs),
    /// A checkpoint on a device (bf16 on GPUs) against the CPU in f32, on the same inputs:
    /// vision features and language logits through every GPU attention path (prints JSON;
    /// exits non-zero when they disagree).
    GpuCheck(GpuCheckArgs),
    /// Coupled serving (one process, shared cores) against DvD (servers pinned to their own
    /// cores) on the same image workload: throughput, probe TTFT inflation under image load,
    /// and DvD's pipeline efficiency against its slowest stage measured alone.
    Compare(Box<super::compare::CompareArgs>),
    /// Capacity model: predicted throughput of V vision + L language servers and the best
    /// V:L split of a GPU budget, from measured stage capacities (a compare report or GPU
    /// rates).
    Plan(super::plan::PlanArgs),
}

/// Options of `dvd bench gpu-check`.
#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Checkpoint directory or hub id.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Tiles encoded.
    #[arg(long, default_value_t = 3)]
    tiles: usize,
    /// Rows of the first prefill chunk.
    #[arg(long, default_value_t = 70)]
    first_chunk: usize,
    /// Lowest cosine similarity accepted.
    #[arg(long, default_value_t = 0.99)]
    min_cosine: f64,
}

/// Options of `dvd bench serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The deployment's base URL (its gateway; with --api grpc, its gRPC listener).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// `openai` (HTTP, server-sent events) or `grpc` (dvd.api.v1.InferenceService).
    #[arg(long, default_value = "openai")]
    api: String,
    /// Model id (default: the first the server lists).
    #[arg(long)]
    model: Option<String>,
    /// Load requests to send.
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Requests per second, or `inf` to send them all at once; a comma-separated list runs a
    /// sweep, one run per rate (each with fresh synthetic images).
    #[arg(long, default_value = "inf")]
    request_rate: String,
    /// Gamma shape of the arrival gaps: 1 = Poisson, < 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Ramp the rate linearly from this many requests/s (with --ramp-up-end-rps).
    #[arg(long, requires = "ramp_up_end_rps")]
    ramp_up_start_rps: Option<f64>,
    /// ... to this many at the last request.
    #[arg(long, requires = "ramp_up_start_rps")]
    ramp_up_end_rps: Option<f64>,
    /// Most load requests in flight at once.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Seed of the arrivals and synthetic images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `synthetic` (fresh images of --image-sizes) or `jsonl` (--dataset-path).
    #[arg(long, default_value = "synthetic")]
    dataset: String,
    /// JSONL file: {"prompt": ..., "images": [paths], "max_tokens": n} per line.
    #[arg(long)]
    dataset_path: Option<std::path::PathBuf>,
    /// Square image sides, used in turn (e.g. 448,896,1344).
    #[arg(long, default_value = "448")]
    image_sizes: SizeList,
    /// Images per synthetic request.
    #[arg(long, default_value_t = 1)]
    images_per_request: usize,
    /// The question of synthetic requests.
    #[arg(long, default_value = "Describe the image.")]
    prompt: String,
    /// Tokens each load request generates (EOS ignored).
    #[arg(long, default_value_t = 64)]
    output_len: u32,
    /// Text-only probes per second beside the load.
    #[arg(long)]
    probe_request_rate: Option<f64>,
    /// Stop the probes after this many (needed with --num-prompts 0).
    #[arg(long)]
    probe_max_requests: Option<usize>,
    /// The probes' question.
    #[arg(long, default_value = "Say hello.")]
    probe_prompt: String,
    /// Tokens each probe generates.
    #[arg(long, default_value_t = 16)]
    probe_output_len: u32,
    /// Limit of one request, seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout_s: f64,
    /// SLOs for goodput, e.g. `--goodput ttft:500 --goodput tpot:50` (milliseconds).
    #[arg(long)]
    goodput: Vec<dvd_bench::serve::report::Slo>,
    /// Percentiles reported.
    #[arg(long, default_value = "50,90,99")]
    percentiles: String,
    /// Print the JSON summary instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON summary here.
    #[arg(long)]
    result_file: Option<std::path::PathBuf>,
    /// Also write one CSV row per request here (in a sweep, with the run's rate first).
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Write SVG plots here: TTFT and end-to-end latency CDFs, and for a sweep, throughput and
    /// latency against the offered rate.
    #[arg(long)]
    plot_dir: Option<std::path::PathBuf>,
}

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
    #[arg(long, default_value_t = 16)]
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

/// Options of `dvd bench pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Model directory, or a hub id in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Image whose tiles feed the encoder (default: `bench.jpg` in the model directory).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Timed rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Throughput: requests submitted together.
    #[arg(long, default_value_t = 8)]
    requests: usize,
    /// Throughput: tiles per request.
    #[arg(long, default_value_t = 2)]
    tiles_per_request: usize,
    /// Throughput: the batching encoder's `max_batch_tiles` (the other one uses 1).
    #[arg(long, default_value_t = 8)]
    batch_tiles: usize,
    /// How long a batch that is not full waits for more tiles, milliseconds.
    #[arg(long, default_value_t = 2.0)]
    batch_wait_ms: f64,
    /// Overlap: tiles of the one multi-tile request.
    #[arg(long, default_value_t = 7)]
    image_tiles: usize,
    /// Overlap: `max_batch_tiles` of the pipelined run.
    #[arg(long, default_value_t = 2)]
    chunk_tiles: usize,
    /// Worker threads of the runtime that runs senders, listener and receivers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Print the JSON report on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Options of `dvd bench engine`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Model directory, or a hub id in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Directory with the `tokenizer.json` (default: the model's; `tools/bench_tokenizer.py`
    /// writes one for the benchmark checkpoint).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Compute precision (also the KV cache's).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Batch sizes of the decode sweep, comma-separated ("" skips it).
    #[arg(long, default_value = "1,2,4,8,16,32")]
    batches: SizeList,
    /// Prompt tokens per request in the sweep and the comparison.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens each request generates in the sweep and the comparison.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Prompt tokens of the prefill measurement (0 skips it).
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// Requests of the continuous vs one-at-a-time comparison (0 skips it).
    #[arg(long, default_value_t = 16)]
    requests: usize,
    /// Milliseconds between arrivals in the comparison (0: all queued at once).
    #[arg(long, default_value_t = 0.0)]
    arrival_interval_ms: f64,
    /// The engine's per-step token budget.
    #[arg(long, default_value_t = 512)]
    max_step_tokens: usize,
    /// Positions per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Batch sizes to also run through the model's forward pass alone, as a baseline.
    #[arg(long, default_value = "")]
    baseline_batches: SizeList,
    /// Timed rounds of each measurement (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print the JSON report on stdout (the tables go to stderr).
    #[arg(long)]
    json: bool,
}

/// Options of `dvd bench language`.
#[derive(Debug, Args)]
pub struct LanguageArgs {
    /// Model directory, or a hub id in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Prompt length of the prefill.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Greedy decode steps after the prefill.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Sequences decoding together in one batched step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed rounds after one warm-up; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `dvd bench vision`.
#[derive(Debug, Args)]
pub struct VisionArgs {
    /// Model directory, or a hub id in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Image whose preprocessing is timed (its tiles also feed the encoder).
    #[arg(long)]
    image: PathBuf,
    /// Tiles per encoder batch.
    #[arg(long, default_value_t = 4)]
    tiles: usize,
    /// Timed rounds after one warm-up; medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `dvd bench transport`.
#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Tile frames per TCP run.
    #[arg(long, default_value_t = 512)]
    tcp_frames: u32,
    /// Tile frames per QUIC run.
    #[arg(long, default_value_t = 256)]
    quic_frames: u32,
    /// Feature rows per tile (256, or 64 after ViR).
    #[arg(long, default_value_t = 256)]
    tokens: u32,
    /// Feature columns per tile (the LLM hidden size).
    #[arg(long, default_value_t = 4096)]
    hidden: u32,
    /// Rounds; every mode runs once per round and the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// QUIC: largest UDP payload MTU discovery may reach.
    #[arg(long)]
    quic_max_udp_payload: Option<u16>,
    /// QUIC: per-stream flow-control window in bytes.
    #[arg(long)]
    quic_stream_window: Option<u64>,
    /// QUIC: per-connection flow-control window in bytes.
    #[arg(long)]
    quic_connection_window: Option<u64>,
    /// QUIC: ask the peer to acknowledge every N packets (ACK frequency extension).
    #[arg(long)]
    quic_ack_every: Option<u32>,
    /// QUIC: UDP socket buffer size in bytes.
    #[arg(long)]
    quic_socket_buffer: Option<usize>,
    /// Modes to run, comma-separated (raw_tcp, tcp, raw_quic, quic); all by default.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

impl BenchCommand {
    /// Runs the benchmark on a two-worker tokio runtime.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Transport(args) => transport(args),
            Self::Vision(args) => vision(args),
            Self::Language(args) => language(args),
            Self::Engine(args) => engine(args),
            Self::Pipeline(args) => pipeline(args),
            Self::Serve(args) => serve(*args),
            Self::Gpu(args) => gpu(args),
            Self::GpuCheck(args) => gpu_check(args),
            Self::Compare(args) => super::compare::run(*args),
            Self::Plan(args) => super::plan::run(args),
        }
    }
}

fn transport(args: TransportArgs) -> Result<()> {
    let mut quic = QuicTuning::default();
    if let Some(v) = args.quic_max_udp_payload {
        quic.max_udp_payload = v;
    }
    if let Some(v) = args.quic_stream_window {
        quic.stream_window = v;
    }
    if let Some(v) = args.quic_connection_window {
        quic.connection_window = v;
    }
    if let Some(v) = args.quic_ack_every {
        quic.ack_every = Some(v);
    }
    if let Some(v) = args.quic_socket_buffer {
        quic.socket_buffer = v;
    }
    let bench = TransportBench {
        tcp_frames: args.tcp_frames,
        quic_frames: args.quic_frames,
        tokens: args.tokens,
        hidden: args.hidden,
        rounds: args.rounds,
        quic,
        modes: args.modes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let json = args.json;
    let report = runtime.block_on(bench.run(|line| {
        if !json {
            eprintln!("{line}");
        }
    }))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn vision(args: VisionArgs) -> Result<()> {
    let bench = VisionBench {
        model: args.model,
        image: args.image,
        tiles: args.tiles,
        rounds: args.rounds,
        dtype: args.dtype.dtype(),
    };
    let report = bench.run()?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "preprocess {}x{} -> {} tiles: {:.2} ms (median; {:.2}..{:.2})",
            report.image_size.0,
            report.image_size.1,
            report.image_tiles,
            report.preprocess_ms,
            report.preprocess_range_ms.0,
            report.preprocess_range_ms.1
        );
        println!(
            "encode {} tiles ({}): {:.1} ms (median; {:.1}..{:.1}) = {:.2} tiles/s",
            report.batch_tiles,
            report.dtype,
            report.encode_ms,
            report.encode_range_ms.0,
            report.encode_range_ms.1,
            report.tiles_per_s
        );
    }
    Ok(())
}

fn language(args: LanguageArgs) -> Result<()> {
    let bench = LanguageBench {
        model: args.model,
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        batch: args.batch,
        rounds: args.rounds,
        dtype: args.dtype.dtype(),
    };
    let r = bench.run()?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "prefill {} tokens ({}): {:.1} ms (median; {:.1}..{:.1}) = {:.1} tokens/s",
            r.prompt_tokens,
            r.dtype,
            r.prefill_ms,
            r.prefill_range_ms.0,
            r.prefill_range_ms.1,
            r.prefill_tokens_per_s
        );
        println!(
            "decode {} steps x {} sequences: {:.2} ms/step (median; {:.2}..{:.2}) = {:.1} tokens/s",
            r.decode_tokens,
            r.batch,
            r.decode_ms_per_step,
            r.decode_range_ms.0,
            r.decode_range_ms.1,
            r.decode_tokens_per_s
        );
    }
    Ok(())
}

fn engine(args: EngineArgs) -> Result<()> {
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
        ..EngineBench::new(args.model)
    };
    let report = dvd_bench::engine::run(&bench)?;
    if args.json {
        eprintln!("{report}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    use dvd_bench::serve::{plot, report};
    let rates = args
        .request_rate
        .split(',')
        .map(|r| parse_request_rate(r.trim()))
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut runs = Vec::with_capacity(rates.len());
    for (i, &rate) in rates.iter().enumerate() {
        // Each run of a sweep gets fresh pictures, so the embedding cache never hides the encoder.
        let bench = serve_bench(&args, rate, args.seed + i as u64)?;
        runs.push(runtime.block_on(bench.run())?);
    }
    let reports: Vec<&report::ServeReport> = runs.iter().map(|(r, _)| r).collect();
    let json = match reports.as_slice() {
        [one] => serde_json::to_string_pretty(one)?,
        all => serde_json::to_string_pretty(all)?,
    };
    if let Some(path) = &args.result_file {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        let text = match runs.as_slice() {
            [(_, outcomes)] => report::csv(outcomes),
            all => report::sweep_csv(all),
        };
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plot_dir {
        let plotted: Vec<plot::Run> = runs
            .iter()
            .map(|(report, outcomes)| plot::Run { report, outcomes })
            .collect();
        for path in plot::write_all(dir, &plotted)? {
            eprintln!("wrote {}", path.display());
        }
    }
    match args.json {
        true => println!("{json}"),
        false => {
            for report in reports {
                println!("{report}");
            }
        }
    }
    Ok(())
}

/// The benchmark of one run of `dvd bench serve` at `rate`, its synthetic images from `seed`.
fn serve_bench(
    args: &ServeArgs,
    rate: Option<f64>,
    seed: u64,
) -> Result<dvd_bench::serve::ServeBench> {
    use dvd_bench::serve::{
        Api, Probes, ServeBench, arrivals::Arrivals, client::Endpoint, dataset,
    };
    let requests = match args.dataset.as_str() {
        "synthetic" => dataset::Synthetic {
            sizes: args.image_sizes.0.iter().map(|&s| s as u32).collect(),
            images_per_request: args.images_per_request,
            prompt: args.prompt.clone(),
            max_tokens: args.output_len,
            seed,
        }
        .requests(args.num_prompts)?,
        "jsonl" => {
            let Some(path) = &args.dataset_path else {
                bail!("--dataset jsonl needs --dataset-path");
            };
            dataset::from_jsonl(path, args.num_prompts, args.output_len)?
        }
        other => bail!("unknown --dataset {other:?}: synthetic or jsonl"),
    };
    let percentiles = args
        .percentiles
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| (0.0..=100.0).contains(v))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            anyhow::anyhow!("--percentiles: numbers between 0 and 100, comma-separated")
        })?;
    let api = match args.api.as_str() {
        "openai" => Api::OpenAi,
        "grpc" => Api::Grpc,
        other => bail!("unknown --api {other:?}: openai or grpc"),
    };
    Ok(ServeBench {
        endpoint: Endpoint::parse(&args.url)?,
        api,
        model: args.model.clone(),
        requests,
        arrivals: Arrivals {
            rate,
            burstiness: args.burstiness,
            ramp: args.ramp_up_start_rps.zip(args.ramp_up_end_rps),
            seed: args.seed,
        },
        max_concurrency: args.max_concurrency,
        probes: args.probe_request_rate.map(|rate| Probes {
            rate,
            max_requests: args.probe_max_requests,
            prompt: args.probe_prompt.clone(),
            max_tokens: args.probe_output_len,
        }),
        timeout: std::time::Duration::from_secs_f64(args.timeout_s.max(0.001)),
        slos: args.goodput.clone(),
        percentiles,
        progress: !args.json,
    })
}

fn gpu(args: GpuArgs) -> Result<()> {
    let bench = dvd_bench::gpu::GpuBench {
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

fn gpu_check(args: GpuCheckArgs) -> Result<()> {
    let check = dvd_bench::gpu_check::GpuCheck {
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

/// `--request-rate`: requests per second, or `inf` (`None`: everything at once).
pub fn parse_request_rate(rate: &str) -> Result<Option<f64>> {
    match rate {
        "inf" => Ok(None),
        r => Ok(Some(r.parse::<f64>().map_err(|_| {
            anyhow::anyhow!("--request-rate: {r:?} is not a number or inf")
        })?)),
    }
}

/// A comma-separated list of sizes; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(pub Vec<usize>);

impl std::str::FromStr for SizeList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self(Vec::new()));
        }
        s.split(',')
            .map(|v| v.trim().parse().map_err(|_| format!("{v:?} is not a size")))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

fn pipeline(args: PipelineArgs) -> Result<()> {
    let image = args
        .image
        .unwrap_or_else(|| std::path::Path::new(&args.model).join("bench.jpg"));
    let bench = PipelineBench {
        dtype: args.dtype.dtype(),
        rounds: args.rounds,
        requests: args.requests,
        tiles_per_request: args.tiles_per_request,
        batch_tiles: args.batch_tiles,
        batch_wait: std::time::Duration::try_from_secs_f64(args.batch_wait_ms / 1e3)?,
        image_tiles: args.image_tiles,
        chunk_tiles: args.chunk_tiles,
        worker_threads: args.workers,
        ..PipelineBench::new(args.model, image)
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
