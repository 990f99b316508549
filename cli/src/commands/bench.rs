//! `dvd bench ...`: benchmarks.

use std::path::PathBuf;

use anyhow::{Result, bail};
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
    /// InternVL3.5 shapes on one GPU: vision tiles/s, prefill and decode through the serving
    /// code paths, and the copy bandwidth that bounds decode (prints JSON).
    Gpu(GpuArgs),
    /// A checkpoint on a device (bf16 on GPUs) against the CPU in f32, on the same inputs:
    /// vision features and language logits through every GPU attention path (prints JSON;
    /// exits non-zero when they disagree).
    GpuCheck(GpuCheckArgs),
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
            Self::Gpu(args) => gpu(args),
            Self::GpuCheck(args) => gpu_check(args),
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

/// A comma-separated list of sizes; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(Vec<usize>);

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
