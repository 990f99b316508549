//! A whole vision server: loads the vision half of a checkpoint, starts the encoder thread, the
//! gRPC `VisionService` and the ops endpoint, and stops them together, draining the requests in
//! flight first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use dvd_proto::limits::{tuned_incoming, tuned_server, vision_server};
use dvd_proto::tls::{GrpcTls, secure_server};
use dvd_transport::{SenderConfig, TlsOptions, TransportError, TransportKind};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::engine::{EncoderConfig, EncoderHandle, FeatureCache};
use crate::model::{LoadOptions, ModelError, VisionModel};
use crate::service::{Admission, RequestLimits, Senders, VisionServer};

/// How to run a vision server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model directory, or a hub id in the local Hugging Face cache.
    pub model: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Trust anchors for QUIC destinations (`client`); without them only TCP is offered.
    pub tls: TlsOptions,
    /// Compute dtype.
    pub dtype: DType,
    /// Device the model runs on.
    pub device: Device,
    /// Batching of the encoder.
    pub encoder: EncoderConfig,
    /// Embedding cache size in bytes (0 disables it).
    pub cache_bytes: u64,
    /// Request limits.
    pub limits: RequestLimits,
    /// Admission limits.
    pub admission: Admission,
    /// Feature sender settings.
    pub sender: SenderConfig,
    /// Mutual TLS on the gRPC listener: present this identity, admit only the gateway's
    /// certificate from the CA. Plaintext when `None`.
    pub grpc_tls: Option<GrpcTls>,
    /// Ops endpoint (`/metrics`, `/health/live`, `/health/ready`); none when `None`.
    pub ops_listen: Option<SocketAddr>,
    /// How long [`RunningServer::shutdown`] waits for requests in flight.
    pub drain_timeout: Duration,
}

/// What can stop a vision server from starting.
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
    /// A feature sender could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A socket or thread could not be set up.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Loading panicked.
    #[error("model loading failed: {0}")]
    Join(String),
}

/// A running vision server.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound ops endpoint address, when one was asked for.
    pub ops_addr: Option<SocketAddr>,
    /// The model directory that was loaded.
    pub model_dir: PathBuf,
    service: VisionServer,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    /// The gRPC server and the ops endpoint.
    tasks: JoinSet<()>,
}

impl RunningServer {
    /// The gRPC service.
    pub fn service(&self) -> &VisionServer {
        &self.service
    }

    /// Drains, then stops: turns not-ready and refuses new requests (gateways route elsewhere),
    /// waits up to the drain timeout for the requests in flight to send their features, then
    /// closes the listeners and waits for them.
    pub async fn shutdown(mut self) {
        self.service.drain();
        let service = self.service.clone();
        dvd_telemetry::drain::drain_then_stop(
            || service.in_flight(),
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
    let model = tokio::task::spawn_blocking(move || {
        VisionModel::load(&load_dir, &LoadOptions { dtype, device })
    })
    .await
    .map_err(|e| ServeError::Join(e.to_string()))??;
    let model = Arc::new(model);
    let encoder =
        EncoderHandle::start(model.clone(), config.encoder).map_err(|source| ServeError::Io {
            context: "starting the encoder thread".into(),
            source,
        })?;
    let senders = Senders {
        tcp: dvd_transport::connect(TransportKind::Tcp, config.sender.clone(), &config.tls)?,
        quic: match &config.tls.client {
            Some(_) => Some(dvd_transport::connect(
                TransportKind::Quic,
                config.sender.clone(),
                &config.tls,
            )?),
            None => None,
        },
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Io {
            context: format!("binding gRPC on {}", config.listen),
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| ServeError::Io {
        context: "reading the gRPC address".into(),
        source,
    })?;
    let service = VisionServer::new(
        model,
        config.model.clone(),
        encoder,
        FeatureCache::new(config.cache_bytes),
        senders,
        config.limits,
        config.admission,
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let (mut server, peer) =
        secure_server(tuned_server(), config.grpc_tls.as_ref()).map_err(ServeError::Tls)?;
    let grpc = server
        .add_service(InterceptedService::new(
            vision_server(service.clone()),
            peer,
        ))
        .serve_with_incoming_shutdown(tuned_incoming(listener), async move {
            stop.cancelled().await;
        });
    let mut tasks = JoinSet::new();
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
    tasks.spawn(async move {
        if let Err(e) = grpc.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    tracing::info!(%grpc_addr, "vision server ready");
    Ok(RunningServer {
        grpc_addr,
        ops_addr,
        model_dir: dir,
        service,
        shutdown,
        drain_timeout: config.drain_timeout,
        tasks,
    })
}
