//! One module per `dvd` subcommand.

pub mod affinity;
pub mod bench;
pub mod chat;
pub mod cpu_quota;
pub mod demo;
pub mod demo_model;
pub mod device;
pub mod encode;
pub mod gateway;
pub mod generate;
pub mod language;
pub mod ops;
pub mod parallel;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod up;
pub mod video;
pub mod vision;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use dvd_serve::telemetry::TelemetryConfig;
use dvd_serve::{Running, Service};

/// The one subcommand of each server role: `dvd vision serve`, `dvd language serve`, `dvd
/// gateway serve`.
#[derive(Debug, Subcommand)]
pub enum ServeCommand<A: ServeRole> {
    // Its help is the role's (a doc comment here would be the same for every role).
    #[command(about = A::SERVE_ABOUT)]
    Serve(Pinned<A>),
}

/// A server role's `serve` options.
pub trait ServeRole: clap::Args {
    /// What `serve` does, as `--help` says it.
    const SERVE_ABOUT: &'static str;
    /// The role's name (`vision`, `language`, `gateway`), as its cgroup is named.
    const ROLE: &'static str;

    /// Serves until SIGINT or SIGTERM.
    fn serve(self) -> Result<()>;
}

/// A role's `serve` options, `--cpus`, `--cpu-quota` and `--otlp-endpoint`.
#[derive(Debug, Args)]
pub struct Pinned<A: ServeRole> {
    #[command(flatten)]
    serve: A,
    #[command(flatten)]
    telemetry: telemetry::TelemetryArgs,
    /// Cores to pin the process to (`0`, `0-3`, `0,2`; default: all).
    #[arg(long)]
    cpus: Option<String>,
    /// Cap the process at this many cores' worth of CPU time (0.25: a quarter of a core), in a
    /// cgroup of its own (needs write access to the cpu controller, as root has).
    #[arg(long)]
    cpu_quota: Option<f64>,
}

impl<A: ServeRole> ServeCommand<A> {
    /// The traces this server exports (`service.name` `dvd-<role>`); `None` when off.
    pub fn traces(&self) -> Result<Option<TelemetryConfig>> {
        match self {
            Self::Serve(pinned) => pinned.telemetry.config(&format!("dvd-{}", A::ROLE)),
        }
    }

    /// Pins the process to `--cpus` and caps it at `--cpu-quota` (before it starts any thread),
    /// then serves.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Serve(Pinned {
                serve,
                cpus,
                cpu_quota,
                telemetry: _,
            }) => {
                if let Some(cpus) = &cpus {
                    affinity::pin_process(cpus)?;
                }
                if let Some(cores) = cpu_quota {
                    cpu_quota::cap_process(A::ROLE, cores)?;
                }
                serve.serve()
            }
        }
    }
}

/// The ready line every model server prints (more fields may be added to it): its gRPC and ops
/// addresses, its model directory and the compute threads it runs on.
pub fn server_ready(
    grpc: SocketAddr,
    ops: Option<SocketAddr>,
    model_dir: &Path,
) -> serde_json::Value {
    serde_json::json!({
        "grpc": grpc.to_string(),
        "ops": ops.map(|a| a.to_string()),
        "model_dir": model_dir.display().to_string(),
        "compute_threads": candle_core::utils::get_num_threads(),
    })
}

/// Parses a server subcommand's options (`args` without the command words), for a server
/// started inside another process (`dvd up --coupled`) from the arguments a spawned one
/// would get.
pub fn parse_args<A: clap::Args>(args: &[String]) -> Result<A> {
    #[derive(clap::Parser)]
    struct Wrapped<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    let argv = std::iter::once("dvd".to_string()).chain(args.iter().cloned());
    Ok(<Wrapped<A> as clap::Parser>::try_parse_from(argv)?.args)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// Runs a server for its whole life: starts it on a multi-threaded runtime, prints its ready line
/// (one JSON object on stdout, for scripts and tests), serves until SIGINT or SIGTERM, then shuts
/// it down (draining first).
pub fn serve_until_signal<S: Service, D>(
    start: impl Future<Output = Result<Running<S, D>>>,
    ready: impl FnOnce(&Running<S, D>) -> serde_json::Value,
) -> Result<()> {
    serve_until_signal_reloading(start, ready, |_| async {
        tracing::info!("SIGHUP: nothing to reload");
    })
}

/// [`serve_until_signal`], running `reload` on the service at every SIGHUP meanwhile.
pub fn serve_until_signal_reloading<S: Service, D, R: Future<Output = ()>>(
    start: impl Future<Output = Result<Running<S, D>>>,
    ready: impl FnOnce(&Running<S, D>) -> serde_json::Value,
    reload: impl Fn(std::sync::Arc<S>) -> R,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = start.await?;
        // Whoever started this server reads the ready line; if it has gone (stdout closed),
        // stop cleanly instead of serving unannounced.
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{}", ready(&server))
            .and_then(|()| stdout.flush())
            .context("writing the ready line to stdout")?;
        let stop = wait_for_signal();
        tokio::pin!(stop);
        let mut hangups = Hangups::new()?;
        loop {
            tokio::select! {
                r = &mut stop => { r?; break; }
                () = hangups.next() => reload(server.service().clone()).await,
            }
        }
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

/// SIGHUPs as they arrive.
struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    fn new() -> Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing a SIGHUP handler")?,
        })
    }

    /// The next SIGHUP (never, where there are no such signals).
    async fn next(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending().await
    }
}
