//! A whole vision server: loads the vision half of a checkpoint, starts the encoder thread, the
//! gRPC `VisionService` and the ops endpoint, and stops them together, draining the requests in
//! flight first.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use dvd_proto::limits::vision_server;
use dvd_serve::{Harness, Running, ServerSettings, StartError, load_blocking};
use dvd_transport::{SenderConfig, TlsOptions, TransportError, TransportKind};
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use crate::engine::{EncoderConfig, EncoderHandle, FeatureCache};
use crate::model::{LoadOptions, ModelError, VisionModel};
use crate::service::{Admission, RequestLimits, Senders, VisionServer};

/// How to run a vision server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model directory, or a hub id in the local Hugging Face cache.
    pub model: String,
    /// The gRPC listener, ops endpoint and drain every server has.
    pub server: ServerSettings,
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
}

/// What can stop a vision server from starting.
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
    /// A feature sender could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What a vision server adds to the addresses every server has.
#[derive(Debug, Clone)]
pub struct VisionDetails {
    /// The model directory that was loaded.
    pub model_dir: PathBuf,
}

/// A running vision server.
pub type RunningServer = Running<VisionServer, VisionDetails>;

/// Loads the model and starts serving.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    let dir = dvd_checkpoint::resolve_model_dir(&config.model)?;
    let load_dir = dir.clone();
    let dtype = config.dtype;
    let device = config.device.clone();
    let model = load_blocking("loading the vision model", move || {
        VisionModel::load(&load_dir, &LoadOptions { dtype, device }).map_err(ServeError::from)
    })
    .await?;
    let model = Arc::new(model);
    let encoder = EncoderHandle::start(model.clone(), config.encoder)
        .map_err(StartError::io("starting the encoder thread"))?;
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
    let service = Arc::new(VisionServer::new(
        model,
        config.model.clone(),
        encoder,
        FeatureCache::new(config.cache_bytes),
        senders,
        config.limits,
        config.admission,
    ));
    let running = Harness::new()
        .serve(
            &config.server,
            service.clone(),
            |peer| {
                Routes::new(InterceptedService::new(
                    vision_server(VisionServer::clone(&service)),
                    peer,
                ))
            },
            VisionDetails { model_dir: dir },
        )
        .await?;
    tracing::info!(grpc_addr = %running.grpc_addr, "vision server ready");
    Ok(running)
}
