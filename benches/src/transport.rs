//! `dvd bench transport`: streams tile frames over loopback and reports GB/s and tiles/s for raw
//! tokio TCP, our TCP transport, a raw quinn stream and our QUIC transport, all in one run.
//!
//! Every mode moves the same `Bytes` payloads. Both raw baselines send a 4-byte length and the
//! payload and receive each payload into one reused buffer (`read_exact`), the least any consumer
//! of contiguous tiles needs; ours add the frame header, checksums on both ends, the inbox and
//! buffer recycling. Timing starts before the sender connects and stops when the receiver holds
//! the last byte (ours: when the consumer took the last tile from its inbox). Modes run interleaved, round after round, so drift in machine load hits all
//! of them alike; the report gives each mode's median and range over the rounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use dvd_transport::quic::{QuicFeatureListener, QuicFeatureSender, QuicTuning, ServerTls};
use dvd_transport::tcp::{TcpFeatureListener, TcpFeatureSender};
use dvd_transport::{
    Destination, FeatureListener, FeatureSender, InboxConfig, InboxRegistry, ListenerConfig,
    RequestId, SenderConfig, Tile, TilePosition,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stats::{median, range};

/// What to measure.
#[derive(Debug, Clone)]
pub struct TransportBench {
    /// Tile frames per TCP run.
    pub tcp_frames: u32,
    /// Tile frames per QUIC run (QUIC is slower, so fewer keep runs short).
    pub quic_frames: u32,
    /// Feature rows per tile.
    pub tokens: u32,
    /// Feature columns per tile.
    pub hidden: u32,
    /// Rounds; each runs every mode once.
    pub rounds: u32,
    /// QUIC settings for both raw quinn and our QUIC transport.
    pub quic: QuicTuning,
    /// Modes to run (a subset of [`MODES`]); all when empty.
    pub modes: Vec<String>,
}

impl Default for TransportBench {
    fn default() -> Self {
        Self {
            tcp_frames: 512,
            quic_frames: 256,
            tokens: 256,
            hidden: 4096,
            rounds: 5,
            quic: QuicTuning::default(),
            modes: Vec::new(),
        }
    }
}

/// One mode's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// Median GB/s (1e9 bytes per second) over the rounds.
    pub gbps: f64,
    /// Median tiles per second.
    pub tiles_per_s: f64,
    /// Slowest and fastest round, GB/s.
    pub gbps_range: (f64, f64),
    /// Every round, GB/s.
    pub runs_gbps: Vec<f64>,
}

/// The report `dvd bench transport --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct TransportReport {
    /// Bytes per tile frame payload.
    pub frame_bytes: u64,
    /// Frames per TCP run.
    pub tcp_frames: u32,
    /// Frames per QUIC run.
    pub quic_frames: u32,
    /// Rounds measured.
    pub rounds: u32,
    /// Raw tokio TCP median GB/s.
    pub raw_tcp_gbps: f64,
    /// Our TCP transport median GB/s.
    pub tcp_gbps: f64,
    /// Raw quinn median GB/s.
    pub raw_quic_gbps: f64,
    /// Our QUIC transport median GB/s.
    pub quic_gbps: f64,
    /// `tcp_gbps / raw_tcp_gbps`.
    pub tcp_vs_raw: f64,
    /// `quic_gbps / raw_quic_gbps`.
    pub quic_vs_raw: f64,
    /// Per-mode details.
    pub modes: Vec<(String, ModeResult)>,
}

/// Every mode, in the order each round runs them.
pub const MODES: [&str; 4] = ["raw_tcp", "tcp", "raw_quic", "quic"];

impl TransportBench {
    fn frame_bytes(&self) -> u64 {
        Tile::expected_len(self.tokens, self.hidden)
    }

    /// Runs every round and summarises.
    pub async fn run(&self, mut progress: impl FnMut(&str)) -> Result<TransportReport> {
        if self.rounds == 0 || self.tcp_frames == 0 || self.quic_frames == 0 {
            bail!("rounds and frame counts must be positive");
        }
        if let Some(unknown) = self.modes.iter().find(|m| !MODES.contains(&m.as_str())) {
            bail!("unknown mode {unknown:?}; modes are {}", MODES.join(", "));
        }
        let payload = payload(self.frame_bytes());
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
        for round in 1..=self.rounds {
            for (i, mode) in MODES.iter().enumerate() {
                if !self.modes.is_empty() && !self.modes.iter().any(|m| m == mode) {
                    continue;
                }
                let (frames, secs) = match *mode {
                    "raw_tcp" => (self.tcp_frames, raw_tcp(&payload, self.tcp_frames).await?),
                    "tcp" => (self.tcp_frames, self.ours_tcp(&payload).await?),
                    "raw_quic" => (self.quic_frames, self.raw_quic(&payload).await?),
                    _ => (self.quic_frames, self.ours_quic(&payload).await?),
                };
                let gbps = frames as f64 * payload.len() as f64 / secs / 1e9;
                progress(&format!(
                    "round {round}/{}: {mode:<8} {gbps:6.2} GB/s",
                    self.rounds
                ));
                runs[i].push(gbps);
            }
        }
        let frame_bytes = self.frame_bytes();
        let summary: Vec<(String, ModeResult)> = MODES
            .iter()
            .zip(runs)
            .filter(|(_, r)| !r.is_empty())
            .map(|(mode, r)| {
                let gbps = median(&r);
                let result = ModeResult {
                    gbps,
                    tiles_per_s: gbps * 1e9 / frame_bytes as f64,
                    gbps_range: range(&r),
                    runs_gbps: r,
                };
                (mode.to_string(), result)
            })
            .collect();
        let g = |name: &str| {
            summary
                .iter()
                .find(|(m, _)| m == name)
                .map_or(f64::NAN, |(_, r)| r.gbps)
        };
        Ok(TransportReport {
            frame_bytes,
            tcp_frames: self.tcp_frames,
            quic_frames: self.quic_frames,
            rounds: self.rounds,
            raw_tcp_gbps: g("raw_tcp"),
            tcp_gbps: g("tcp"),
            raw_quic_gbps: g("raw_quic"),
            quic_gbps: g("quic"),
            tcp_vs_raw: g("tcp") / g("raw_tcp"),
            quic_vs_raw: g("quic") / g("raw_quic"),
            modes: summary,
        })
    }

    fn tiles(&self, payload: &Bytes, frames: u32) -> Result<Vec<Tile>> {
        let tile_count = u16::try_from(frames).context("at most 65535 frames per run")?;
        (0..tile_count)
            .map(|i| {
                let pos = TilePosition {
                    image_index: 0,
                    image_count: 1,
                    tile_index: i,
                    tile_count,
                };
                Tile::new(pos, self.tokens, self.hidden, payload.clone()).map_err(Into::into)
            })
            .collect()
    }

    async fn ours_tcp(&self, payload: &Bytes) -> Result<f64> {
        let registry = InboxRegistry::new(bench_inbox());
        let listener =
            TcpFeatureListener::bind(loopback(), registry.clone(), ListenerConfig::default())
                .await?;
        let destination = Destination::new(listener.local_addr().to_string());
        let sender = TcpFeatureSender::new(SenderConfig::default());
        let tiles = self.tiles(payload, self.tcp_frames)?;
        ours(Box::new(listener), registry, &sender, destination, tiles).await
    }

    async fn ours_quic(&self, payload: &Bytes) -> Result<f64> {
        let registry = InboxRegistry::new(bench_inbox());
        let (server, client) = ServerTls::self_signed(&["localhost".into()])?;
        let listener = QuicFeatureListener::bind_tuned(
            loopback(),
            registry.clone(),
            ListenerConfig::default(),
            server,
            &self.quic,
        )?;
        let mut destination = Destination::new(listener.local_addr().to_string());
        destination.server_name = Some("localhost".into());
        let sender =
            QuicFeatureSender::new_tuned(SenderConfig::default(), client, self.quic.clone())?;
        let tiles = self.tiles(payload, self.quic_frames)?;
        ours(Box::new(listener), registry, &sender, destination, tiles).await
    }

    async fn raw_quic(&self, payload: &Bytes) -> Result<f64> {
        let (server, client) = ServerTls::self_signed(&["localhost".into()])?;
        let socket = self.quic.bind_socket(loopback())?;
        let server_endpoint = quinn::Endpoint::new(
            self.quic.endpoint_config()?,
            Some(server.quinn_config(&self.quic)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let addr = server_endpoint.local_addr()?;
        let frames = self.quic_frames;
        let expected = u64::from(frames) * payload.len() as u64;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let incoming = server_endpoint.accept().await.context("no connection")?;
            let connection = incoming.await?;
            let (_send, mut recv) = connection.accept_bi().await?;
            // Like raw TCP: a 4-byte length, then the payload into one reused buffer.
            let mut buf = Vec::new();
            let mut received = 0u64;
            for _ in 0..frames {
                let len = recv.read_u32_le().await? as usize;
                buf.resize(len, 0);
                recv.read_exact(&mut buf).await?;
                received += len as u64;
            }
            anyhow::ensure!(
                received == expected,
                "raw quinn received {received} of {expected} bytes"
            );
            let done = Instant::now();
            connection.close(0u32.into(), b"done");
            server_endpoint.wait_idle().await;
            Ok(done)
        });
        let client_socket = self.quic.bind_socket(loopback())?;
        let client_endpoint = quinn::Endpoint::new(
            self.quic.endpoint_config()?,
            None,
            client_socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let start = Instant::now();
        let connection = client_endpoint
            .connect_with(client.quinn_config(&self.quic)?, addr, "localhost")?
            .await?;
        // Bidirectional like ours: the feature transport allows no unidirectional streams.
        let (mut send, _recv) = connection.open_bi().await?;
        let len = Bytes::copy_from_slice(&(payload.len() as u32).to_le_bytes());
        for _ in 0..self.quic_frames {
            send.write_all_chunks(&mut [len.clone(), payload.clone()])
                .await?;
        }
        send.finish()?;
        let done = joined(&mut tasks).await?;
        connection.close(0u32.into(), b"done");
        Ok((done - start).as_secs_f64())
    }
}

/// Raw tokio TCP: a 4-byte length then the payload with `write_all`; the receiver `read_exact`s
/// into one reused buffer.
async fn raw_tcp(payload: &Bytes, frames: u32) -> Result<f64> {
    let listener = TcpListener::bind(loopback()).await?;
    let addr = listener.local_addr()?;
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let (mut conn, _) = listener.accept().await?;
        conn.set_nodelay(true)?;
        let mut buf = Vec::new();
        for _ in 0..frames {
            let len = conn.read_u32_le().await? as usize;
            buf.resize(len, 0);
            conn.read_exact(&mut buf).await?;
        }
        Ok(Instant::now())
    });
    let start = Instant::now();
    let mut conn = TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    for _ in 0..frames {
        conn.write_all(&(payload.len() as u32).to_le_bytes())
            .await?;
        conn.write_all(payload).await?;
    }
    let done = joined(&mut tasks).await?;
    Ok((done - start).as_secs_f64())
}

/// Our transport: a registered inbox drained by a consumer task, tiles sent on one stream.
async fn ours(
    listener: Box<dyn FeatureListener>,
    registry: InboxRegistry,
    sender: &dyn FeatureSender,
    destination: Destination,
    tiles: Vec<Tile>,
) -> Result<f64> {
    let shutdown = CancellationToken::new();
    let mut serving = JoinSet::new();
    serving.spawn(listener.serve(shutdown.clone()));
    let id = RequestId::random();
    let mut inbox = registry.register(id, Some(1))?;
    let expected = tiles.len();
    let mut consumer = JoinSet::new();
    consumer.spawn(async move {
        let mut got = 0usize;
        while let Some(tile) = inbox.next_tile().await? {
            std::hint::black_box(&tile.data);
            got += 1;
        }
        anyhow::ensure!(
            got == expected,
            "consumer received {got} of {expected} tiles"
        );
        Ok(Instant::now())
    });
    let start = Instant::now();
    let mut stream = sender.open(&destination, id).await?;
    for tile in tiles {
        stream.send(tile).await?;
    }
    stream.finish().await?;
    let done = joined(&mut consumer).await?;
    shutdown.cancel();
    while let Some(r) = serving.join_next().await {
        r??;
    }
    Ok((done - start).as_secs_f64())
}

async fn joined<T: 'static>(tasks: &mut JoinSet<Result<T>>) -> Result<T> {
    let outcome = tokio::time::timeout(Duration::from_secs(300), tasks.join_next())
        .await
        .context("benchmark run did not finish within 300 s")?
        .context("receiver task missing")?;
    outcome?
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn bench_inbox() -> InboxConfig {
    InboxConfig {
        max_request_bytes: u64::MAX,
        ..InboxConfig::default()
    }
}

/// Incompressible-looking payload bytes (a fixed xorshift sequence).
fn payload(len: u64) -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    Bytes::from(data)
}

impl TransportReport {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} rounds, {} B frames ({} TCP / {} QUIC frames per run), loopback\n",
            self.rounds, self.frame_bytes, self.tcp_frames, self.quic_frames
        );
        out.push_str("mode       median GB/s   tiles/s   range GB/s\n");
        for (mode, r) in &self.modes {
            out.push_str(&format!(
                "{mode:<10} {:>11.2} {:>9.0}   {:.2}-{:.2}\n",
                r.gbps, r.tiles_per_s, r.gbps_range.0, r.gbps_range.1
            ));
        }
        let ratio = |r: f64| {
            if r.is_finite() {
                format!("{r:.2}x")
            } else {
                "n/a".to_string()
            }
        };
        out.push_str(&format!(
            "ours/raw: TCP {}, QUIC {}\n",
            ratio(self.tcp_vs_raw),
            ratio(self.quic_vs_raw)
        ));
        out
    }
}
