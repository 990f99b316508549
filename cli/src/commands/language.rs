//! `dvd language serve`: the language half of a decoupled deployment. Loads only the LLM,
//! receives image features from vision servers on the feature listener and serves
//! `LanguageService` over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use dvd_language_server::engine::{FeatureLimits, SchedulerConfig};
use dvd_language_server::server::{ServeConfig, start};
use dvd_language_server::service::RequestDefaults;
use dvd_proto::tls::GrpcTls;
use dvd_proto::tls::VISION_ROLE;
use dvd_transport::quic::ServerTls;
use dvd_transport::{InboxConfig, TlsOptions, TransportKind};
use serde_json::json;

use super::device::ComputeArgs;
use super::ops::OpsArgs;

/// Language server commands.
#[derive(Debug, Subcommand)]
pub enum LanguageCommand {
    /// Serves `LanguageService` until SIGINT or SIGTERM.
    Serve(ServeArgs),
}

impl LanguageCommand {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Serve(args) => args.run(),
        }
    }
}

/// Options of `dvd language serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model directory, a hub id (`owner/name[@revision]`) in the local Hugging Face cache, or
    /// `dvd-demo` (the demo model built into this binary).
    #[arg(long)]
    model: String,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// Feature listen address (vision servers send tiles here).
    #[arg(long, default_value = "127.0.0.1:50062")]
    feature_listen: SocketAddr,
    /// Feature address to advertise in `Health` (default: the bound address).
    #[arg(long)]
    feature_advertise: Option<String>,
    /// Feature transport: tcp or quic.
    #[arg(long, default_value = "tcp")]
    transport: TransportKind,
    /// PEM certificate chain of the QUIC listener (default: a self-signed `localhost` one), and
    /// of the gRPC listener with `--tls-client-ca`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS with this CA (PEM): gRPC callers must present the gateway's certificate
    /// (`dvd-gateway`) and QUIC feature senders a vision server's (`dvd-vision`), both issued by
    /// it (`dvd tls mutual`). Needs `--tls-cert`, `--tls-key` and `--transport quic`.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    compute: ComputeArgs,
    /// KV cache size in MiB.
    #[arg(long, default_value_t = 1024)]
    kv_cache_mib: usize,
    /// Token positions per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Most sequences in the running batch.
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// Most tokens (decode + prefill chunks) per engine step.
    #[arg(long, default_value_t = 512)]
    max_step_tokens: usize,
    /// Cap on the tokens long prompts (more than this left to prefill) take of one step,
    /// together. Keeps steps short while image prompts prefill (default: no cap beyond
    /// --max-step-tokens).
    #[arg(long)]
    long_prefill_tokens: Option<usize>,
    /// Prompts of at most this many tokens are short: they prefill whole in a step of their
    /// own, ahead of the batch, and one arriving mid-step pauses the step between two layers for
    /// it, so short requests wait little behind image prompts. 0 turns this off (default:
    /// --long-prefill-tokens, and off without it).
    #[arg(long)]
    short_prompt_tokens: Option<usize>,
    /// Most feature tokens per tile (256 for InternVL3.5's 448-pixel tiles).
    #[arg(long, default_value_t = 256)]
    max_tokens_per_tile: usize,
    /// Tiles per image when a request does not say (12 + thumbnail for InternVL3.5).
    #[arg(long, default_value_t = 13)]
    max_tiles_per_image: usize,
    /// Most images per request.
    #[arg(long, default_value_t = 64)]
    max_images: usize,
    /// How long a request waits for its features when it does not say, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    feature_timeout_ms: u64,
    #[command(flatten)]
    ops: OpsArgs,
    /// Cores to pin the process to (`0`, `0-3`, `0,2`; default: all).
    #[arg(long)]
    cpus: Option<String>,
}

impl ServeArgs {
    /// Runs the server until SIGINT or SIGTERM.
    pub fn run(self) -> Result<()> {
        if let Some(cpus) = &self.cpus {
            super::affinity::pin_process(cpus)?;
        }
        let config = self.config()?;
        super::serve_until_signal(
            async move { Ok(start(config).await?) },
            |server| {
                json!({
                    "grpc": server.grpc_addr.to_string(),
                    "features": server.details.feature_addr.to_string(),
                    "transport": self.transport.to_string(),
                    "ops": server.ops_addr.map(|a| a.to_string()),
                    "model_dir": server.details.model_dir.display().to_string(),
                    "compute_threads": candle_core::utils::get_num_threads(),
                })
            },
            |server| server.shutdown(),
        )
    }

    /// The server configuration these options describe (opens the device).
    pub fn config(&self) -> Result<ServeConfig> {
        if self.block_size == 0 || self.max_running == 0 || self.max_step_tokens == 0 {
            bail!("--block-size, --max-running and --max-step-tokens must be at least 1");
        }
        if self.long_prefill_tokens == Some(0) {
            bail!("--long-prefill-tokens must be at least 1");
        }
        let mut tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsOptions {
                server: Some(ServerTls::from_pem_files(cert, key)?),
                client: None,
            },
            _ => TlsOptions::default(),
        };
        let mut grpc_tls = None;
        if let (Some(ca), Some(cert), Some(key)) =
            (&self.tls_client_ca, &self.tls_cert, &self.tls_key)
        {
            if self.transport != TransportKind::Quic {
                bail!(
                    "--tls-client-ca needs --transport quic: the TCP feature path has no TLS, so \
                     it could not tell vision servers from anyone else"
                );
            }
            tls.server = tls
                .server
                .take()
                .map(|server| server.require_clients(ca, Some(VISION_ROLE)))
                .transpose()?;
            grpc_tls = Some(GrpcTls::from_files(ca, cert, key)?);
        }
        let config = ServeConfig {
            model: super::demo_model::resolve_name(&self.model)?,
            listen: self.listen,
            feature_listen: self.feature_listen,
            feature_advertise: self.feature_advertise.clone(),
            transport: self.transport,
            tls,
            grpc_tls,
            dtype: self.compute.dtype(),
            device: self.compute.open()?,
            kv_cache_bytes: self.kv_cache_mib << 20,
            block_size: self.block_size,
            scheduler: SchedulerConfig {
                max_step_tokens: self.max_step_tokens,
                long_prefill_tokens: self.long_prefill_tokens,
                short_prompt_tokens: self.short_prompt_tokens,
                max_running: self.max_running,
                feature_limits: FeatureLimits {
                    max_tokens_per_tile: self.max_tokens_per_tile,
                },
            },
            requests: RequestDefaults {
                max_tiles_per_image: self.max_tiles_per_image,
                feature_timeout: Duration::from_millis(self.feature_timeout_ms),
                max_images: self.max_images,
            },
            inbox: InboxConfig::default(),
            ops_listen: self.ops.ops_listen,
            drain: self.ops.drain(),
        };
        Ok(config)
    }
}
