//! `dvd bench plan`: predicted throughput of a decoupled deployment, and the best V:L split
//! of a GPU budget, from measured stage capacities (see `dvd_bench::plan`); with `--model`
//! instead of `--profile`, what one language server takes per GPU (`plan/memory.rs`); with
//! `--gpu-report`, coupled against DvD projected from one GPU's stage rates
//! (`plan/projection.rs`).

mod memory;
mod projection;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dvd_bench::plan::{Plan, Profile};

/// Options of `dvd bench plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Profile: a `dvd bench compare --result-file` report, or {"rates": {...}, "workload":
    /// {...}, "efficiency": ...} with GPU rates (docs/performance.md, "Capacity planning").
    #[arg(long, required_unless_present_any = ["model", "gpu_report"])]
    profile: Option<PathBuf>,
    /// Vision servers of the deployment to predict.
    #[arg(long, default_value_t = 1)]
    vision_servers: usize,
    /// Language servers of the deployment to predict.
    #[arg(long, default_value_t = 1)]
    language_servers: usize,
    /// Offered requests/s (default: saturated).
    #[arg(long)]
    request_rate: Option<f64>,
    /// Also rank every V:L split of this many GPUs (one server per GPU).
    #[arg(long)]
    gpus: Option<usize>,
    /// A `dvd bench compare` report of the deployment to check the prediction against
    /// (its measured DvD throughput).
    #[arg(long)]
    measured: Option<PathBuf>,
    /// Pipeline efficiency to assume instead of the profile's (1 = the bare slowest-stage
    /// bound).
    #[arg(long)]
    efficiency: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    memory: memory::MemoryArgs,
    #[command(flatten)]
    projection: projection::ProjectionArgs,
}

/// Runs the capacity model and prints its predictions, or with `--model` the memory mode.
pub fn run(args: PlanArgs) -> Result<()> {
    if args.projection.gpu_report.is_some() {
        return projection::run(args.projection, args.gpus, args.json);
    }
    let Some(profile) = &args.profile else {
        return memory::run(args.memory, args.json);
    };
    let read = |path: &PathBuf| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let mut profile = Profile::from_json(&read(profile)?)?;
    if let Some(e) = args.efficiency {
        anyhow::ensure!(e > 0.0 && e <= 1.0, "--efficiency must be in (0, 1]");
        profile.efficiency = e;
    }
    let plan = profile.predict(
        args.vision_servers,
        args.language_servers,
        args.request_rate,
    )?;
    let splits = match args.gpus {
        Some(gpus) => profile.splits(gpus)?,
        None => Vec::new(),
    };
    let units = args.vision_servers + args.language_servers;
    let coupled = profile.predict_coupled(units);
    // Measured (DvD, coupled) throughput and the predictions' relative errors.
    let check = match &args.measured {
        Some(path) => {
            let report = read(path)?;
            let field = |name: &str| {
                report[name]
                    .as_f64()
                    .with_context(|| format!("the measured report has no {name}"))
            };
            let (dvd, both) = (
                field("dvd_request_throughput")?,
                field("coupled_request_throughput")?,
            );
            Some(Check {
                dvd,
                dvd_error: plan.predicted_request_throughput / dvd - 1.0,
                coupled: both,
                coupled_error: coupled / both - 1.0,
            })
        }
        None => None,
    };
    if args.json {
        let value = serde_json::json!({
            "vision_capacity_per_server": profile.vision_capacity,
            "language_capacity_per_server": profile.language_capacity,
            "efficiency": profile.efficiency,
            "coupled_efficiency": profile.coupled_efficiency,
            "source": profile.source,
            "plan": plan,
            "coupled_units": units,
            "coupled_predicted_request_throughput": coupled,
            "splits": splits,
            "measured": check,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "per server ({}): vision {:.3} req/s, language {:.3} req/s; pipeline efficiency {:.2}, \
         coupled efficiency {:.2}",
        profile.source,
        profile.vision_capacity,
        profile.language_capacity,
        profile.efficiency,
        profile.coupled_efficiency
    );
    println!("{}", describe(&plan));
    println!("coupled on {units} units (each runs both stages) -> {coupled:.3} req/s");
    if let Some(c) = check {
        println!(
            "measured: DvD {:.3} req/s (prediction {:+.1}%), coupled {:.3} req/s (prediction {:+.1}%)",
            c.dvd,
            c.dvd_error * 100.0,
            c.coupled,
            c.coupled_error * 100.0
        );
    }
    if !splits.is_empty() {
        println!("\nsplits of {} GPUs, best first:", args.gpus.unwrap_or(0));
        for p in &splits {
            println!("  {}", describe(p));
        }
    }
    Ok(())
}

/// Measured throughputs of a compare report and how far the predictions are from them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Check {
    dvd: f64,
    dvd_error: f64,
    coupled: f64,
    coupled_error: f64,
}

fn describe(p: &Plan) -> String {
    format!(
        "{}V:{}L -> {:.3} req/s ({}-bound; vision {:.0}% busy, language {:.0}% busy)",
        p.vision_servers,
        p.language_servers,
        p.predicted_request_throughput,
        p.bottleneck,
        p.vision_utilisation * 100.0,
        p.language_utilisation * 100.0
    )
}
