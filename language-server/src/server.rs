//! A whole language server: loads the LLM, starts the engine thread, the feature listener (TCP or
//! QUIC), the gRPC `LanguageService` and the ops endpoint, and stops them together, draining
//! the requests in flight first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use dvd_proto::limits::language_server;
use dvd_serve::{Harness, Running, ServerSettings, StartError, load_blocking};
use dvd_transport::{
    InboxConfig, InboxRegistry, ListenerConfig, TlsOptions, TransportError, TransportKind,
};
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use crate::engine::kv::{
    FitError, KvBudget, KvPool, KvPoolConfig, check_weights_fit, kv_bytes_per_rank,
};
use crate::engine::{EngineHandle, Scheduler, SchedulerConfig};
use crate::model::{
    LanguageConfig, LanguageModel, LoadOptions, MemoryPlan, ModelError, Parallelism, Partition,
    rank_devices,
};
use crate::service::{LanguageServer, RequestDefaults, ServerIdentity};
use crate::text::{PromptFormat, TextError, Tokenizer};

/// How to run a language server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model directory, or a hub id in the local Hugging Face cache.
    pub model: String,
    /// The gRPC listener, ops endpoint and drain every server has.
    pub server: ServerSettings,
    /// Feature listen address.
    pub feature_listen: SocketAddr,
    /// Address vision servers should use to reach the feature listener (what `Health`
    /// reports); the bound address when `None`.
    pub feature_advertise: Option<String>,
    /// Feature transport protocol.
    pub transport: TransportKind,
    /// TLS identity of a QUIC feature listener (a self-signed `localhost` one when unset).
    pub tls: TlsOptions,
    /// Compute dtype.
    pub dtype: DType,
    /// Device the model runs on (its first rank, when `devices` is empty).
    pub device: Device,
    /// Each rank's device, when given explicitly (see [`LanguageModel::load_parallel`]).
    pub devices: Vec<Device>,
    /// How the model is split over ranks.
    pub parallelism: Parallelism,
    /// What bounds the KV cache of each rank.
    pub kv_budget: KvBudget,
    /// Positions per KV block.
    pub block_size: usize,
    /// Batching settings.
    pub scheduler: SchedulerConfig,
    /// Request defaults and limits.
    pub requests: RequestDefaults,
    /// Limits of the feature inbox.
    pub inbox: InboxConfig,
}

/// What can stop a language server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listeners or tasks could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The checkpoint could not be resolved or read.
    #[error(transparent)]
    Checkpoint(#[from] dvd_checkpoint::CheckpointError),
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer or chat template could not be loaded.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The feature listener could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The KV cache budget holds not one block.
    #[error("a KV cache of {bytes} bytes per rank holds no block of {block_size} positions")]
    KvCacheTooSmall {
        /// The budget.
        bytes: usize,
        /// Positions per block.
        block_size: usize,
    },
    /// The model or its KV cache does not fit the devices.
    #[error(transparent)]
    Fit(#[from] FitError),
}

/// What a language server adds to the addresses every server has.
#[derive(Debug, Clone)]
pub struct LanguageDetails {
    /// Bound feature listener address.
    pub feature_addr: SocketAddr,
    /// The model directory that was loaded.
    pub model_dir: PathBuf,
    /// Where the model's memory went.
    pub memory: MemoryReport,
}

/// The model's ranks, and what their weights and KV pool take (the ready line reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// Ranks the model is split over.
    pub tensor_parallel_size: usize,
    /// Whether experts are placed whole.
    pub expert_parallel: bool,
    /// Weight bytes of the most loaded rank.
    pub weight_bytes_per_rank: u64,
    /// KV pool bytes on each rank.
    pub kv_bytes_per_rank: u64,
    /// KV blocks (shared by the ranks' block tables).
    pub kv_blocks: usize,
    /// Token positions the KV pool holds.
    pub kv_tokens: usize,
}

/// A running language server.
pub type RunningServer = Running<LanguageServer, LanguageDetails>;

/// Loads the model and starts serving.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    let dir = dvd_checkpoint::resolve_model_dir(&config.model)?;
    let load_dir = dir.clone();
    let load = config.clone();
    let (model, tokenizer, format, pool) = load_blocking("loading the language model", move || {
        let options = LoadOptions {
            dtype: load.dtype,
            device: load.device.clone(),
        };
        let language = LanguageConfig::from_dir(&load_dir)?;
        let partition = Partition::new(&language, load.parallelism)
            .map_err(|e| ModelError::Unsupported(e.to_string()))?;
        let devices = rank_devices(&load.device, &load.devices, partition.ranks())?;
        check_weights_fit(&language, &partition, load.dtype, &devices, load.kv_budget)?;
        let model = LanguageModel::load_parallel(&load_dir, &options, load.parallelism, &devices)?;
        let tokenizer = Tokenizer::from_dir(&load_dir)?;
        let json = dvd_checkpoint::read_json(&load_dir.join("config.json"))?;
        let format = PromptFormat::for_checkpoint(&json, &tokenizer)?;
        let bytes = kv_bytes_per_rank(load.kv_budget, &model.rank_devices())?;
        let pool_config = KvPoolConfig::for_model(&model, load.block_size, bytes);
        if pool_config.blocks == 0 {
            return Err(ServeError::KvCacheTooSmall {
                bytes,
                block_size: load.block_size,
            });
        }
        let pool = KvPool::for_ranks(pool_config, load.dtype, &model.rank_devices())
            .map_err(ModelError::from)?;
        Ok::<_, ServeError>((model, tokenizer, format, pool))
    })
    .await?;
    let memory = MemoryReport {
        tensor_parallel_size: model.partition().ranks(),
        expert_parallel: model.partition().expert_parallel(),
        weight_bytes_per_rank: model.weight_bytes_per_rank(),
        kv_bytes_per_rank: MemoryPlan::new(
            model.config(),
            model.partition(),
            config.dtype.size_in_bytes(),
        )
        .kv_bytes_per_block(config.block_size)
            * pool.total_blocks() as u64,
        kv_blocks: pool.total_blocks(),
        kv_tokens: pool.total_blocks() * config.block_size,
    };
    let model = Arc::new(model);
    let pool = Arc::new(pool);
    let mut eos = model.config().eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id());
    eos.extend(tokenizer.token_id("<|im_end|>"));
    eos.sort_unstable();
    eos.dedup();
    let hidden_size = model.config().hidden_size;
    let scheduler = Scheduler::new(model, tokenizer.clone(), pool, eos, config.scheduler);
    let engine =
        EngineHandle::start(scheduler).map_err(StartError::io("starting the engine thread"))?;

    let mut harness = Harness::new();
    let inboxes = InboxRegistry::new(config.inbox.clone());
    let listener = dvd_transport::listen(
        config.transport,
        config.feature_listen,
        inboxes.clone(),
        ListenerConfig::default(),
        &config.tls,
    )
    .await?;
    let feature_addr = listener.local_addr();
    harness.spawn("feature listener", listener.serve(harness.stop_token()));

    let identity = ServerIdentity {
        model_id: config.model.clone(),
        feature_address: config
            .feature_advertise
            .clone()
            .unwrap_or_else(|| feature_addr.to_string()),
        feature_transport: config.transport,
        hidden_size,
    };
    let service = Arc::new(LanguageServer::new(
        engine,
        inboxes,
        tokenizer,
        format,
        config.requests,
        identity,
    ));
    let running = harness
        .serve(
            &config.server,
            service.clone(),
            |peer| {
                Routes::new(InterceptedService::new(
                    language_server(LanguageServer::clone(&service)),
                    peer,
                ))
            },
            LanguageDetails {
                feature_addr,
                model_dir: dir,
                memory,
            },
        )
        .await?;
    tracing::info!(
        grpc_addr = %running.grpc_addr,
        %feature_addr,
        transport = %config.transport,
        tensor_parallel_size = memory.tensor_parallel_size,
        weight_bytes_per_rank = memory.weight_bytes_per_rank,
        kv_tokens = memory.kv_tokens,
        "language server ready"
    );
    Ok(running)
}
