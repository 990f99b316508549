//! One module per `dvd` subcommand.

pub mod affinity;
pub mod bench;
pub mod chat;
pub mod compare;
pub mod demo;
pub mod demo_model;
pub mod device;
pub mod encode;
pub mod gateway;
pub mod generate;
pub mod language;
pub mod ops;
pub mod plan;
pub mod tls;
pub mod up;
pub mod vision;

use std::future::Future;

use anyhow::{Context, Result};
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
/// it down.
pub fn serve_until_signal<S, Stopped>(
    start: impl Future<Output = Result<S>>,
    ready: impl FnOnce(&S) -> serde_json::Value,
    stop: impl FnOnce(S) -> Stopped,
) -> Result<()>
where
    Stopped: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = start.await?;
        println!("{}", ready(&server));
        wait_for_signal().await?;
        tracing::info!("shutting down");
        stop(server).await;
        Ok(())
    })
}
