//! `dvd language serve`: the language half of a decoupled deployment. Loads only the LLM,
//! receives image features from vision servers on the feature listener and serves
//! `LanguageService` over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use dvd_language_server::engine::kv::{KvBudget, KvPoolConfig};
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
use super::parallel::ParallelArgs;
use super::{ServeCommand, ServeRole};

/// Language server commands.
pub type LanguageCommand = ServeCommand<ServeArgs>;

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
    #[command(flatten)]
    parallel: ParallelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Token positions per KV block.
    #[arg(long, default_value_t = KvPoolConfig::DEFAULT_BLOCK_SIZE)]
    block_size: usize,
    /// Most sequences in the running batch.
    #[arg(long, default_value_t = SchedulerConfig::default().max_running)]
    max_running: usize,
    /// Most feature tokens per tile (256 for InternVL3.5's 448-pixel tiles).
    #[arg(long, default_value_t = FeatureLimits::default().max_tokens_per_tile)]
    max_tokens_per_tile: usize,
    /// Tiles per image when a request does not say (12 + thumbnail for InternVL3.5).
    #[arg(long, default_value_t = RequestDefaults::default().max_tiles_per_image)]
    max_tiles_per_image: usize,
    /// Most images per request.
    #[arg(long, default_value_t = RequestDefaults::default().max_images)]
    max_images: usize,
    /// How long a request waits for its features when it does not say, in milliseconds.
    #[arg(long, default_value_t = RequestDefaults::default().feature_timeout.as_millis() as u64)]
    feature_timeout_ms: u64,
    #[command(flatten)]
    ops: OpsArgs,
}

/// The engine's KV cache and step budget: the `dvd language serve` options `dvd up` passes on to
/// every language server it starts.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// KV cache size in MiB (of each rank of each language server). Default: on GPUs, what the
    /// weights leave of --gpu-memory-utilization; on the CPU, 1024.
    #[arg(long)]
    pub kv_cache_mib: Option<usize>,
    /// Fraction of each GPU's memory a language server may use for weights, activations and
    /// the KV cache together (vLLM's name); the KV cache gets what is left. An explicit
    /// --kv-cache-mib wins.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Most tokens (decode + prefill chunks) per engine step: smaller steps bound how long a new
    /// request waits behind long prefills.
    #[arg(long, default_value_t = SchedulerConfig::default().max_step_tokens)]
    pub max_step_tokens: usize,
    /// Cap on the tokens long prompts (more than this left to prefill) take of one step,
    /// together. Keeps steps short while image prompts prefill (default: no cap beyond
    /// --max-step-tokens).
    #[arg(long)]
    pub long_prefill_tokens: Option<usize>,
    /// Prompts of at most this many tokens are short: they prefill whole in a step of their
    /// own, ahead of the batch, and one arriving mid-step pauses the step between two layers for
    /// it, so short requests wait little behind image prompts. 0 turns this off (default:
    /// --long-prefill-tokens, and off without it).
    #[arg(long)]
    pub short_prompt_tokens: Option<usize>,
}

impl EngineArgs {
    /// What bounds each rank's KV cache.
    pub fn kv_budget(&self) -> Result<KvBudget> {
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!(
                "--gpu-memory-utilization must be in (0, 1], got {}",
                self.gpu_memory_utilization
            );
        }
        Ok(match self.kv_cache_mib {
            Some(mib) => KvBudget::Bytes(mib << 20),
            None => KvBudget::Utilization(self.gpu_memory_utilization),
        })
    }

    /// The flags that give a `dvd language serve` child process these settings.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--gpu-memory-utilization".to_string(),
            self.gpu_memory_utilization.to_string(),
            "--max-step-tokens".to_string(),
            self.max_step_tokens.to_string(),
        ];
        if let Some(mib) = self.kv_cache_mib {
            args.extend(["--kv-cache-mib".into(), mib.to_string()]);
        }
        if let Some(n) = self.long_prefill_tokens {
            args.extend(["--long-prefill-tokens".into(), n.to_string()]);
        }
        if let Some(n) = self.short_prompt_tokens {
            args.extend(["--short-prompt-tokens".into(), n.to_string()]);
        }
        args
    }
}

impl ServeRole for ServeArgs {
    const SERVE_ABOUT: &'static str = "Serves `LanguageService` until SIGINT or SIGTERM";
    const ROLE: &'static str = "language";

    fn serve(self) -> Result<()> {
        let config = self.config()?;
        super::serve_until_signal(async move { Ok(start(config).await?) }, |server| {
            let mut ready =
                super::server_ready(server.grpc_addr, server.ops_addr, &server.details.model_dir);
            ready["features"] = json!(server.details.feature_addr.to_string());
            ready["transport"] = json!(self.transport.to_string());
            let memory = server.details.memory;
            ready["tensor_parallel_size"] = json!(memory.tensor_parallel_size);
            ready["expert_parallel"] = json!(memory.expert_parallel);
            ready["weight_bytes_per_rank"] = json!(memory.weight_bytes_per_rank);
            ready["kv_bytes_per_rank"] = json!(memory.kv_bytes_per_rank);
            ready["kv_blocks"] = json!(memory.kv_blocks);
            ready["kv_tokens"] = json!(memory.kv_tokens);
            ready
        })
    }
}

impl ServeArgs {
    /// The server configuration these options describe (opens the device).
    pub fn config(&self) -> Result<ServeConfig> {
        let engine = &self.engine;
        if self.block_size == 0 || self.max_running == 0 || engine.max_step_tokens == 0 {
            bail!("--block-size, --max-running and --max-step-tokens must be at least 1");
        }
        if engine.long_prefill_tokens == Some(0) {
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
        let devices = self.parallel.open_devices(&self.compute)?;
        let config = ServeConfig {
            model: super::demo_model::resolve_name(&self.model)?,
            server: self.ops.server(self.listen, grpc_tls),
            feature_listen: self.feature_listen,
            feature_advertise: self.feature_advertise.clone(),
            transport: self.transport,
            tls,
            dtype: self.parallel.dtype(&self.compute),
            device: match devices.first() {
                Some(first) => first.clone(),
                None => self.compute.open()?,
            },
            devices,
            parallelism: self.parallel.parallelism(),
            kv_budget: engine.kv_budget()?,
            block_size: self.block_size,
            scheduler: SchedulerConfig {
                max_step_tokens: engine.max_step_tokens,
                long_prefill_tokens: engine.long_prefill_tokens,
                short_prompt_tokens: engine.short_prompt_tokens,
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
        };
        Ok(config)
    }
}
