//! `dvd gateway serve`: the front door of a decoupled deployment: OpenAI-compatible HTTP and the
//! public gRPC API, routing each request over the vision and language pools in its config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use dvd_gateway::GatewayConfig;
use dvd_gateway::config::ServerSection;
use dvd_gateway::server::start;
use dvd_serve::Drain;
use serde_json::json;

use super::{ServeCommand, ServeRole};

/// Gateway commands.
pub type GatewayCommand = ServeCommand<ServeArgs>;

/// The gateway's OpenAI API unless a config file moves it (`server.http`): where `dvd chat`,
/// `dvd demo eval` and `dvd bench serve` send requests unless told otherwise.
pub fn default_url() -> String {
    format!("http://{}", ServerSection::default().http)
}

/// Options of `dvd gateway serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration (pools, limits; see `gateway/src/config.rs`).
    #[arg(long)]
    config: PathBuf,
    /// HTTP listen address (overrides `server.http`).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// gRPC listen address (overrides `server.grpc`).
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// On SIGTERM: how long to keep serving while reporting not-ready (`/health/ready` 503), so
    /// load balancers stop sending new clients, seconds.
    #[arg(long, default_value_t = Drain::default().delay.as_secs())]
    drain_delay_s: u64,
    /// On SIGTERM, after the delay: the longest wait for responses in flight, seconds.
    #[arg(long, default_value_t = Drain::default().timeout.as_secs())]
    drain_timeout_s: u64,
}

impl ServeRole for ServeArgs {
    const SERVE_ABOUT: &'static str = "Serves HTTP and gRPC until SIGINT or SIGTERM";
    const ROLE: &'static str = "gateway";

    /// Serves until SIGINT or SIGTERM; on SIGHUP, re-reads the config file's pools.
    fn serve(self) -> Result<()> {
        let config = self.gateway_config()?;
        let drain = self.drain();
        super::serve_until_signal_reloading(
            async move { start(config, drain).await.context("starting the gateway") },
            |server| {
                json!({
                    "http": server.details.http_addr.to_string(),
                    "grpc": server.grpc_addr.to_string(),
                })
            },
            |gateway| {
                let fresh = self.gateway_config();
                async move {
                    match fresh {
                        Ok(fresh) => gateway.reload_pools(fresh).await,
                        Err(e) => tracing::error!(
                            error = %e,
                            "SIGHUP: cannot re-read the configuration; the pools stay as they were"
                        ),
                    }
                }
            },
        )
    }
}

impl ServeArgs {
    /// How the gateway drains on SIGTERM.
    pub fn drain(&self) -> Drain {
        Drain {
            delay: Duration::from_secs(self.drain_delay_s),
            timeout: Duration::from_secs(self.drain_timeout_s),
        }
    }

    /// The configuration file with the listen overrides applied.
    pub fn gateway_config(&self) -> Result<GatewayConfig> {
        let mut config = GatewayConfig::from_file(&self.config)?;
        if let Some(http) = self.http {
            config.server.http = http;
        }
        if let Some(grpc) = self.grpc {
            config.server.grpc = grpc;
        }
        Ok(config)
    }
}
