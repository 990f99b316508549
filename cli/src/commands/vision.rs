//! `dvd vision serve`: the vision half of a decoupled deployment. Loads only the vision weights
//! (InternViT, projector, ViR), encodes images with batching across requests and streams the
//! features to the language servers named in each request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use dvd_proto::tls::GrpcTls;
use dvd_transport::quic::ClientTls;
use dvd_transport::{SenderConfig, TlsOptions};
use dvd_vision_server::engine::{EncoderConfig, FeatureCache};
use dvd_vision_server::server::{ServeConfig, start};
use dvd_vision_server::service::{Admission, RequestLimits};
use dvd_vision_server::video::VideoLimits;

use super::device::ComputeArgs;
use super::ops::OpsArgs;
use super::{ServeCommand, ServeRole};

/// Vision server commands.
pub type VisionCommand = ServeCommand<ServeArgs>;

/// Most tiles per encoder batch on the CPU unless told otherwise (`--max-batch-tiles`): one
/// 448-px tile already fills the cores.
const CPU_MAX_BATCH_TILES: usize = 1;

/// Options of `dvd vision serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model directory, a hub id (`owner/name[@revision]`) in the local Hugging Face cache, or
    /// `dvd-demo` (the demo model built into this binary).
    #[arg(long)]
    model: String,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// PEM CA certificate(s) to verify QUIC language servers with (without it only TCP
    /// destinations are accepted).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// PEM certificate chain this server presents: to language servers that require client
    /// certificates (QUIC), and on its gRPC listener with `--tls-client-ca`.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS on the gRPC listener with this CA (PEM): callers must present the gateway's
    /// certificate (`dvd-gateway`) issued by it. Needs `--tls-cert` and `--tls-key`.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Most tiles in one encoder batch (across requests). Default: 1 on the CPU, where one
    /// 448-px tile already fills the cores and a batch only makes each request wait for the
    /// others' tiles (so the language server receives features in bursts); 8 on a GPU, where
    /// one tile does not fill the device.
    #[arg(long)]
    max_batch_tiles: Option<usize>,
    /// How long a batch that is not full waits for more tiles, in milliseconds.
    #[arg(long, default_value_t = EncoderConfig::default().batch_wait.as_millis() as u64)]
    batch_wait_ms: u64,
    /// Embedding cache size in MiB (0 disables it).
    #[arg(long, default_value_t = FeatureCache::DEFAULT_CAPACITY >> 20)]
    cache_mib: u64,
    /// Most images per request.
    #[arg(long, default_value_t = RequestLimits::default().max_images)]
    max_images: usize,
    /// Largest encoded image accepted, in MiB.
    #[arg(long, default_value_t = RequestLimits::default().max_image_bytes >> 20)]
    max_image_mib: usize,
    /// Most frames sampled from one video.
    #[arg(long, default_value_t = RequestLimits::default().max_video_frames)]
    max_video_frames: u32,
    /// Largest video file accepted, in MiB.
    #[arg(long, default_value_t = VideoLimits::default().max_bytes >> 20)]
    max_video_mib: usize,
    /// Longest video accepted, in seconds.
    #[arg(long, default_value_t = VideoLimits::default().max_duration_s)]
    max_video_seconds: f64,
    /// How long probing, and then decoding, one video may take, in seconds.
    #[arg(long, default_value_t = VideoLimits::default().timeout.as_secs())]
    video_timeout_s: u64,
    /// Requests that may wait for preprocessing before new ones are refused.
    #[arg(long, default_value_t = Admission::default().max_pending_requests)]
    max_pending_requests: usize,
    /// Images decoded and tiled at the same time (CPU workers).
    #[arg(long, default_value_t = Admission::default().preprocess_workers)]
    preprocess_workers: usize,
    /// Tiles that may wait for the encoder before new requests are refused.
    #[arg(long, default_value_t = Admission::default().max_queued_tiles)]
    max_queued_tiles: usize,
    #[command(flatten)]
    ops: OpsArgs,
}

impl ServeRole for ServeArgs {
    const SERVE_ABOUT: &'static str = "Serves `VisionService` until SIGINT or SIGTERM";
    const ROLE: &'static str = "vision";

    fn serve(self) -> Result<()> {
        let config = self.config()?;
        super::serve_until_signal(async move { Ok(start(config).await?) }, |server| {
            super::server_ready(server.grpc_addr, server.ops_addr, &server.details.model_dir)
        })
    }
}

impl ServeArgs {
    /// The server configuration these options describe (opens the device).
    pub fn config(&self) -> Result<ServeConfig> {
        if self.max_batch_tiles == Some(0) || self.preprocess_workers == 0 {
            bail!("--max-batch-tiles and --preprocess-workers must be at least 1");
        }
        let tls = TlsOptions {
            server: None,
            client: match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
                (Some(ca), Some(cert), Some(key)) => {
                    Some(ClientTls::from_ca_file(ca)?.with_identity_files(cert, key)?)
                }
                (Some(ca), _, _) => Some(ClientTls::from_ca_file(ca)?),
                _ => None,
            },
        };
        let grpc_tls = match (&self.tls_client_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(GrpcTls::from_files(ca, cert, key)?),
            _ => None,
        };
        let device = self.compute.open()?;
        let config = ServeConfig {
            model: super::demo_model::resolve_name(&self.model)?,
            server: self.ops.server(self.listen, grpc_tls),
            tls,
            dtype: self.compute.dtype(),
            device: device.clone(),
            encoder: EncoderConfig {
                max_batch_tiles: self.max_batch_tiles.unwrap_or(match device.is_cpu() {
                    true => CPU_MAX_BATCH_TILES,
                    false => EncoderConfig::default().max_batch_tiles,
                }),
                batch_wait: Duration::from_millis(self.batch_wait_ms),
            },
            cache_bytes: self.cache_mib << 20,
            limits: RequestLimits {
                max_images: self.max_images,
                max_image_bytes: self.max_image_mib << 20,
                max_video_frames: self.max_video_frames,
                video: VideoLimits {
                    max_bytes: self.max_video_mib << 20,
                    max_duration_s: self.max_video_seconds,
                    timeout: Duration::from_secs(self.video_timeout_s.max(1)),
                    ..VideoLimits::default()
                },
            },
            admission: Admission {
                max_pending_requests: self.max_pending_requests,
                preprocess_workers: self.preprocess_workers,
                max_queued_tiles: self.max_queued_tiles,
            },
            sender: SenderConfig::default(),
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(extra: &[&str]) -> Result<ServeConfig> {
        let args: Vec<String> = ["--model", "dvd-demo"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        super::super::parse_args::<ServeArgs>(&args)?.config()
    }

    #[test]
    fn the_cpu_encodes_one_tile_per_batch_unless_told_otherwise() {
        assert_eq!(config(&[]).unwrap().encoder.max_batch_tiles, 1);
        let told = config(&["--max-batch-tiles", "4"]).unwrap();
        assert_eq!(told.encoder.max_batch_tiles, 4);
        let err = config(&["--max-batch-tiles", "0"]).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}
