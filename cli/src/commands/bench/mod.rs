//! `dvd bench ...`: benchmarks, one file per subcommand; the measuring code is in `dvd_bench`
//! under the same names (`dvd bench plan` is `plan.rs` here and `benches/src/plan.rs` there).

mod compare;
mod engine;
mod gpu;
mod gpu_check;
mod language;
mod moe;
mod pipeline;
mod plan;
mod serve;
mod transport;
mod vision;

use anyhow::Result;
use clap::Subcommand;

use super::encode::Precision;

/// Benchmarks (see docs/performance.md for recorded results).
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Feature-frame throughput on loopback: raw TCP, our TCP, raw quinn, our QUIC.
    Transport(transport::TransportArgs),
    /// Image preprocessing time and encoder tiles/s of a checkpoint on the CPU.
    Vision(vision::VisionArgs),
    /// Prefill and decode tokens/s of a checkpoint's language model on the CPU.
    Language(language::LanguageArgs),
    /// One mixture-of-experts block (router and experts) on random weights: time per call
    /// against the memory-read bound of the weights it touches.
    Moe(moe::MoeArgs),
    /// The continuous-batching engine: decode tokens/s against batch size, prefill tokens/s,
    /// and continuous batching against one request at a time.
    Engine(engine::EngineArgs),
    /// The vision serving pipeline: tiles/s with and without cross-request batching, and how
    /// much encoding and transfer overlap within a multi-tile request.
    Pipeline(pipeline::PipelineArgs),
    /// Load against a running deployment's OpenAI API: arrivals, concurrency, image or JSONL
    /// requests, text-only probes; TTFT/TPOT/ITL/E2EL, throughput and goodput (vLLM's names).
    Serve(Box<serve::ServeArgs>),
    /// InternVL3.5 shapes on one GPU: vision tiles/s, prefill and decode through the serving
    /// code paths, and the copy bandwidth that bounds decode (prints JSON).
    Gpu(gpu::GpuArgs),
    /// A checkpoint on a device (bf16 on GPUs) against the CPU in f32, on the same inputs:
    /// vision features and language logits through every GPU attention path (prints JSON;
    /// exits non-zero when they disagree).
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Coupled serving (one process, shared cores) against DvD (servers pinned to their own
    /// cores) on the same image workload: throughput, probe TTFT inflation under image load,
    /// and DvD's pipeline efficiency against its slowest stage measured alone.
    Compare(Box<compare::CompareArgs>),
    /// Capacity model: predicted throughput of V vision + L language servers and the best
    /// V:L split of a GPU budget, from measured stage capacities (a compare report or GPU
    /// rates); or, with --model, what one language server of a checkpoint takes on each GPU
    /// (weights and KV cache per rank, from its config alone).
    Plan(plan::PlanArgs),
}

impl BenchCommand {
    /// Runs the benchmark (those with network clients on a two-worker tokio runtime).
    pub fn run(self) -> Result<()> {
        match self {
            Self::Transport(args) => transport::run(args),
            Self::Vision(args) => vision::run(args),
            Self::Language(args) => language::run(args),
            Self::Moe(args) => moe::run(args),
            Self::Engine(args) => engine::run(args),
            Self::Pipeline(args) => pipeline::run(args),
            Self::Serve(args) => serve::run(*args),
            Self::Gpu(args) => gpu::run(args),
            Self::GpuCheck(args) => gpu_check::run(args),
            Self::Compare(args) => compare::run(*args),
            Self::Plan(args) => plan::run(args),
        }
    }
}

/// The `--dtype` of the CPU benchmarks (`vision`, `language`, `engine`, `pipeline`) unless told
/// otherwise: the `dtype` of their `dvd_bench` configurations' `Default`s (a test keeps the two
/// equal; clap shows a [`Precision`], which a `DType` does not convert to).
const CPU_PRECISION: Precision = Precision::F32;

/// The runtime of the benchmarks that drive network clients and servers: two workers.
fn two_worker_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Prints `report` as one JSON line with `--json`, else `text` (the report as people read it).
fn print_report<R: serde::Serialize>(
    json: bool,
    report: &R,
    text: impl FnOnce(&R) -> String,
) -> Result<()> {
    match json {
        true => println!("{}", serde_json::to_string(report)?),
        false => print!("{}", text(report)),
    }
    Ok(())
}

/// `{ms} {unit} (median; {lo}..{hi})` with `decimals` digits: how the CPU benchmarks print a
/// timed figure.
fn median_line(ms: f64, (lo, hi): (f64, f64), unit: &str, decimals: usize) -> String {
    format!("{ms:.decimals$} {unit} (median; {lo:.decimals$}..{hi:.decimals$})")
}

/// What `--request-rate` means by "everything at once".
const ALL_AT_ONCE: &str = "inf";

/// `--request-rate`: requests per second, or `inf` (`None`: everything at once).
fn parse_request_rate(rate: &str) -> Result<Option<f64>> {
    match rate {
        ALL_AT_ONCE => Ok(None),
        r => Ok(Some(r.parse::<f64>().map_err(|_| {
            anyhow::anyhow!("--request-rate: {r:?} is not a number or inf")
        })?)),
    }
}

/// `rate` as `--request-rate` writes it: the inverse of [`parse_request_rate`].
fn request_rate_flag(rate: Option<f64>) -> String {
    rate.map_or_else(|| ALL_AT_ONCE.to_string(), |r| r.to_string())
}

/// A comma-separated list of sizes; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(pub Vec<usize>);

impl SizeList {
    /// The list of image sides `sides`.
    fn of_sides(sides: &[u32]) -> Self {
        Self(sides.iter().map(|&s| s as usize).collect())
    }
}

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

/// The comma-separated form `FromStr` reads (how clap shows a default).
impl std::fmt::Display for SizeList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&sizes.join(","))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn size_lists_and_rates_read_what_they_write() {
        for text in ["", "448", "1,2,4,8,16,32"] {
            assert_eq!(text.parse::<SizeList>().unwrap().to_string(), text);
        }
        assert!("1,x".parse::<SizeList>().is_err());
        for rate in [None, Some(2.5), Some(10.0)] {
            assert_eq!(parse_request_rate(&request_rate_flag(rate)).unwrap(), rate);
        }
        assert!(parse_request_rate("fast").is_err());
    }

    #[test]
    fn cpu_benchmarks_default_to_their_libraries_dtype() {
        let dtype = CPU_PRECISION.dtype();
        assert_eq!(dtype, dvd_bench::vision::VisionBench::default().dtype);
        assert_eq!(dtype, dvd_bench::language::LanguageBench::default().dtype);
        assert_eq!(dtype, dvd_bench::engine::EngineBench::default().dtype);
        assert_eq!(dtype, dvd_bench::pipeline::PipelineBench::default().dtype);
    }
}

/// The model a CPU benchmark measures: `--model` resolved (a directory, or a hub id in the
/// local Hugging Face cache), or the embedded demo model.
fn bench_model(model: Option<&str>) -> Result<String> {
    Ok(crate::commands::demo_model::or_default(model)?
        .display()
        .to_string())
}

/// The image a vision benchmark preprocesses and encodes: `--image`, or `bench.jpg` in the
/// model directory. The demo model's directory gets one the first time, a synthetic 1920x1080
/// picture (the size `tools/bench_vision_torch.py` writes); another model must have its own.
fn bench_image(model_dir: &str, image: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    if let Some(image) = image {
        return Ok(image);
    }
    let path = std::path::Path::new(model_dir).join("bench.jpg");
    if path.exists() {
        return Ok(path);
    }
    let demo = crate::commands::demo_model::path()?;
    anyhow::ensure!(
        std::path::Path::new(model_dir) == demo,
        "no --image, and no bench.jpg in {model_dir}"
    );
    let picture = dvd_bench::serve::dataset::picture(1920, 1080, 0)?;
    // Written whole under another name, then renamed: a concurrent run never reads half.
    let partial = demo.join(format!("bench.jpg.{}", std::process::id()));
    std::fs::write(&partial, picture)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// A count or a range of counts: `N`, or `MIN:MAX` (`--images-per-request`,
/// `--probe-input-len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CountRange(pub(super) usize, pub(super) usize);

impl std::str::FromStr for CountRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let count = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?}: expected N or MIN:MAX (whole numbers)"))
        };
        match s.split_once(':') {
            Some((lo, hi)) => Ok(Self(count(lo)?, count(hi)?)),
            None => count(s).map(|n| Self(n, n)),
        }
    }
}

impl std::fmt::Display for CountRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self(lo, hi) if lo == hi => write!(f, "{lo}"),
            Self(lo, hi) => write!(f, "{lo}:{hi}"),
        }
    }
}
