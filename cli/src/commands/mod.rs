//! One module per `dvd` subcommand.

pub mod bench;
pub mod chat;
pub mod encode;
pub mod gateway;
pub mod generate;
pub mod language;
pub mod tls;
pub mod up;
pub mod vision;

use anyhow::{Context, Result};

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
