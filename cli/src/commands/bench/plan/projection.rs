//! `dvd bench plan --gpu-report`: coupled against DvD on `--gpus` GPUs, projected from one
//! GPU's stage measurements for requests of several tile counts (see
//! `dvd_bench::plan::projection`, which states the model's assumptions).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dvd_bench::plan::projection::{GpuRates, Projection, RequestShape};

use crate::commands::bench::SizeList;

/// Options of the projection mode.
#[derive(Debug, Args)]
pub struct ProjectionArgs {
    /// A `dvd bench gpu` report (docs/results/gpu-*/dvd_bench.json): project coupled and DvD
    /// throughput on --gpus GPUs from its stage rates.
    #[arg(
        long,
        requires = "gpus",
        conflicts_with_all = [
            "profile", "model", "vision_servers", "language_servers", "request_rate",
            "measured", "efficiency",
        ]
    )]
    pub gpu_report: Option<PathBuf>,
    /// Tiles per request, one projection each.
    #[arg(long, default_value = "1,6,12", requires = "gpu_report")]
    tiles_per_request: SizeList,
    /// Image tokens of one tile (256 without ViR).
    #[arg(long, default_value_t = 256.0, requires = "gpu_report")]
    tokens_per_tile: f64,
    /// Text tokens of each prompt.
    #[arg(long, default_value_t = 64.0, requires = "gpu_report")]
    text_tokens: f64,
    /// Tokens each request generates.
    #[arg(long, default_value_t = 256.0, requires = "gpu_report")]
    output_tokens: f64,
}

/// Prints the projection for every tile count.
pub fn run(args: ProjectionArgs, gpus: Option<usize>, json: bool) -> Result<()> {
    let path = args.gpu_report.context("--gpu-report is required")?;
    let gpus = gpus.context("--gpus is required with --gpu-report")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let rates = GpuRates::from_report(&report)?;
    let shape = RequestShape {
        tokens_per_tile: args.tokens_per_tile,
        text_tokens: args.text_tokens,
        output_tokens: args.output_tokens,
    };
    let projections = args
        .tiles_per_request
        .0
        .iter()
        .map(|&tiles| rates.project(tiles, shape, gpus))
        .collect::<Result<Vec<Projection>>>()?;
    if json {
        let value = serde_json::json!({
            "rates": rates,
            "shape": shape,
            "gpus": gpus,
            "projections": projections,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{} ({}): vision {:.0}-{:.0} tiles/s (batch {}-{}), prefill {:.0} tokens/s, decode {:.2} \
         ms/step at batch {}; requests of {} text tokens and tiles of {}, {} generated; {gpus} \
         GPUs",
        path.display(),
        rates.source,
        rates.vision[0].1,
        rates.vision_best(),
        rates.vision[0].0,
        rates.vision[rates.vision.len() - 1].0,
        rates.prefill_tokens_per_s,
        1e3 / rates.decode_steps_per_s,
        rates.decode_batch,
        shape.text_tokens,
        shape.tokens_per_tile,
        shape.output_tokens,
    );
    println!(
        "\n| tiles | prompt tokens | coupled req/s | DvD req/s (best split) | DvD / coupled |\n\
         |---|---|---|---|---|"
    );
    for p in &projections {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} ({}V:{}L, {}-bound) | {:.2}x |",
            p.tiles,
            p.prompt_tokens,
            p.coupled_request_throughput,
            p.dvd_request_throughput,
            p.vision_gpus,
            p.language_gpus,
            p.bottleneck,
            p.dvd_over_coupled
        );
    }
    println!(
        "\nThe model card (Table 18: InternVL3.5-38B and 241B-A28B, InternViT-6B, the language \
         model on 8 A100s): DvD 1.19-2.01x the coupled baseline, DvD with ViR up to 4.05x."
    );
    Ok(())
}
