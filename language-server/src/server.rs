//! A whole language server: loads the LLM, starts the engine thread, the feature listener (TCP or
//! QUIC), the gRPC `LanguageService` and the ops endpoint, and stops them together, draining
//! the requests in flight first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use dvd_proto::limits::{language_server, tuned_incoming, tuned_server};
use dvd_proto::tls::{GrpcTls, secure_server};
use dvd_transport::{
    InboxConfig, InboxRegistry, ListenerConfig, TlsOptions, TransportError, TransportKind,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::engine::kv::{KvPool, KvPoolConfig};
use crate::engine::{EngineHandle, Scheduler, SchedulerConfig};
use crate::model::{LanguageModel, LoadOptions, ModelError};
use crate::service::{LanguageServer, RequestDefaults, ServerIdentity};
use crate::text::{PromptFormat, TextError, Tokenizer};

/// How to run a language server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model directory, or a hub id in the local Hugging Face cache.
    pub model: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
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
    /// Device the model runs on.
    pub device: Device,
    /// Bytes of KV cache.
    pub kv_cache_bytes: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Batching settings.
    pub scheduler: SchedulerConfig,
    /// Request defaults and limits.
    pub requests: RequestDefaults,
    /// Limits of the feature inbox.
    pub inbox: InboxConfig,
    /// Mutual TLS on the gRPC listener: present this identity, admit only the gateway's
    /// certificate from the CA. Plaintext when `None`.
    pub grpc_tls: Option<GrpcTls>,
    /// Ops endpoint (`/metrics`, `/health/live`, `/health/ready`); none when `None`.
    pub ops_listen: Option<SocketAddr>,
    /// How long [`RunningServer::shutdown`] waits for requests in flight.
    pub drain_timeout: Duration,
}

/// What can stop a server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC listener's TLS settings are unusable.
    #[error("{0}")]
    Tls(String),
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
    /// The settings do not work together.
    #[error("{0}")]
    Config(String),
    /// A socket or thread could not be set up.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A running language server.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound feature listener address.
    pub feature_addr: SocketAddr,
    /// Bound ops endpoint address, when one was asked for.
    pub ops_addr: Option<SocketAddr>,
    /// The model directory that was loaded.
    pub model_dir: PathBuf,
    service: LanguageServer,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    /// The gRPC server, the feature listener and the ops endpoint.
    tasks: JoinSet<()>,
}

impl RunningServer {
    /// The gRPC service (for drain and counters).
    pub fn service(&self) -> &LanguageServer {
        &self.service
    }

    /// Drains, then stops: turns not-ready and refuses new requests (gateways route elsewhere),
    /// waits up to the drain timeout for the requests in flight to finish, then closes the
    /// listeners and waits for them.
    pub async fn shutdown(mut self) {
        self.service.drain();
        let service = self.service.clone();
        dvd_telemetry::drain::drain_then_stop(
            || service.active_requests(),
            self.drain_timeout,
            &self.shutdown,
            &mut self.tasks,
        )
        .await;
        self.service.close().await;
    }
}

/// Loads the model and starts serving.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    let dir = dvd_checkpoint::resolve_model_dir(&config.model)?;
    let load_dir = dir.clone();
    let dtype = config.dtype;
    let device = config.device.clone();
    let (model, tokenizer, format) = tokio::task::spawn_blocking(move || {
        let options = LoadOptions { dtype, device };
        let model = LanguageModel::load(&load_dir, &options)?;
        let tokenizer = Tokenizer::from_dir(&load_dir)?;
        let json = dvd_checkpoint::read_json(&load_dir.join("config.json"))?;
        let format = PromptFormat::for_checkpoint(&json, &tokenizer)?;
        Ok::<_, ServeError>((model, tokenizer, format))
    })
    .await
    .map_err(|e| ServeError::Config(format!("model loading panicked: {e}")))??;
    let model = Arc::new(model);

    let pool_config = KvPoolConfig::from_budget(
        model.config(),
        config.block_size,
        config.kv_cache_bytes,
        dtype,
    );
    if pool_config.blocks == 0 {
        return Err(ServeError::Config(format!(
            "a KV cache of {} bytes holds no block of {} positions",
            config.kv_cache_bytes, config.block_size
        )));
    }
    let pool = Arc::new(KvPool::new(pool_config, dtype, &config.device).map_err(ModelError::from)?);
    let mut eos = model.config().eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id());
    eos.extend(tokenizer.token_id("<|im_end|>"));
    eos.sort_unstable();
    eos.dedup();
    let hidden_size = model.config().hidden_size;
    let scheduler = Scheduler::new(model, tokenizer.clone(), pool, eos, config.scheduler);
    let engine = EngineHandle::start(scheduler).map_err(|source| ServeError::Io {
        context: "starting the engine thread".into(),
        source,
    })?;

    let shutdown = CancellationToken::new();
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
    let mut tasks = JoinSet::new();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = listener.serve(stop).await {
            tracing::error!(error = %e, "feature listener failed");
        }
    });

    let grpc_listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Io {
                context: format!("binding gRPC on {}", config.listen),
                source,
            })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServeError::Io {
            context: "reading the gRPC address".into(),
            source,
        })?;
    let identity = ServerIdentity {
        model_id: config.model.clone(),
        feature_address: config
            .feature_advertise
            .clone()
            .unwrap_or_else(|| feature_addr.to_string()),
        feature_transport: config.transport,
        hidden_size,
    };
    let service = LanguageServer::new(
        engine,
        inboxes,
        tokenizer,
        format,
        config.requests,
        identity,
    );
    let ops_addr = dvd_telemetry::ops::start(
        config.ops_listen,
        Arc::new(service.clone()),
        shutdown.clone(),
        &mut tasks,
    )
    .await
    .map_err(|source| ServeError::Io {
        context: "binding the ops endpoint".into(),
        source,
    })?;
    let stop = shutdown.clone();
    let (mut server, peer) =
        secure_server(tuned_server(), config.grpc_tls.as_ref()).map_err(ServeError::Tls)?;
    let grpc = server
        .add_service(InterceptedService::new(
            language_server(service.clone()),
            peer,
        ))
        .serve_with_incoming_shutdown(tuned_incoming(grpc_listener), async move {
            stop.cancelled().await;
        });
    tasks.spawn(async move {
        if let Err(e) = grpc.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    tracing::info!(%grpc_addr, %feature_addr, transport = %config.transport, "language server ready");
    Ok(RunningServer {
        grpc_addr,
        feature_addr,
        ops_addr,
        model_dir: dir,
        service,
        shutdown,
        drain_timeout: config.drain_timeout,
        tasks,
    })
}
