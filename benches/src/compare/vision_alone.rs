//! The vision stage alone: the workload's images and videos sent straight to a vision server's `Encode`
//! (a bounded number in flight, as the load had), with this process's own feature listener as
//! the destination, so no language server is involved. Requests per second = requests / time
//! until the last tile arrived.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use dvd_proto::feature::v1::{FeatureDestination, Transport};
use dvd_proto::limits::{tuned_endpoint, vision_client};
use dvd_proto::vision::v1::{EncodeRequest, ImageInput, encode_event};
use dvd_transport::{
    InboxConfig, InboxRegistry, ListenerConfig, RequestId, TlsOptions, TransportKind,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Encodes every request's images and videos (`images[i]`: request `i`'s inputs) on the vision
/// server at `vision`, at most `concurrency` requests at a time, and returns requests per
/// second.
pub async fn throughput(
    vision: &str,
    images: &[Vec<ImageInput>],
    concurrency: usize,
) -> Result<f64> {
    ensure!(!images.is_empty(), "no requests to encode");
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let registry = InboxRegistry::new(InboxConfig::default());
    let listener = dvd_transport::listen(
        TransportKind::Tcp,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        registry.clone(),
        ListenerConfig::default(),
        &TlsOptions::default(),
    )
    .await?;
    let address = listener.local_addr().to_string();
    let shutdown = CancellationToken::new();
    let mut serving = JoinSet::new();
    serving.spawn(listener.serve(shutdown.clone()));
    let channel = tuned_endpoint(vision)?
        .connect()
        .await
        .with_context(|| format!("connecting to the vision server at {vision}"))?;
    let client = vision_client(channel);
    let started = Instant::now();
    let mut requests = JoinSet::new();
    for files in images {
        let permit = slots.clone().acquire_owned().await?;
        let id = RequestId::random();
        // A video arrives as one image per sampled frame.
        let arriving: u32 = files
            .iter()
            .map(|f| f.video.map_or(1, |v| v.num_frames.max(1)))
            .sum();
        let mut inbox = registry.register(id, Some(u16::try_from(arriving)?))?;
        let request = EncodeRequest {
            request_id: id.to_string(),
            images: files.clone(),
            options: None,
            destination: Some(FeatureDestination {
                address: address.clone(),
                transport: Transport::Tcp as i32,
                server_name: String::new(),
            }),
        };
        let mut client = client.clone();
        requests.spawn(async move {
            let mut events = client.encode(request).await?.into_inner();
            let mut done = false;
            while let Some(event) = events.message().await? {
                done |= matches!(event.event, Some(encode_event::Event::Done(_)));
            }
            ensure!(done, "the encode stream ended without EncodeDone");
            let mut tiles = 0usize;
            while inbox.next_tile().await?.is_some() {
                tiles += 1;
            }
            ensure!(tiles > 0, "no tiles arrived");
            drop(permit);
            anyhow::Ok(())
        });
    }
    let mut failed = Vec::new();
    while let Some(result) = requests.join_next().await {
        if let Err(e) = result.map_err(anyhow::Error::from).and_then(|r| r) {
            failed.push(format!("{e:#}"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    while serving.join_next().await.is_some() {}
    if !failed.is_empty() {
        bail!(
            "{} of {} encodes failed: {}",
            failed.len(),
            images.len(),
            failed[0]
        );
    }
    Ok(images.len() as f64 / seconds)
}
