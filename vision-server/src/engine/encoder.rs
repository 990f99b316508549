//! The encoder thread: takes requests' tiles in arrival order, batches tiles of different
//! requests together up to a maximum batch size (waiting briefly for more when a batch is not
//! full), runs InternViT on each batch, and hands every request its projected features as soon
//! as its part of a batch is done.
//!
//! Requests that route with the ViR collect their ViT tokens until all their tiles are through,
//! because the router's decision is a quantile over all of a request's tiles; the others are
//! projected batch by batch, so their first tiles leave while later ones are still encoding.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::mpsc as async_mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{ModelError, RouterThresholds, VisionModel, decide};

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Most tiles in one ViT batch.
    pub max_batch_tiles: usize,
    /// How long a batch that is not full waits for more tiles.
    pub batch_wait: Duration,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            max_batch_tiles: 8,
            batch_wait: Duration::from_millis(2),
        }
    }
}

/// Features of consecutive tiles of one job.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    /// Index (within the job) of the first tile.
    pub first_tile: usize,
    /// `[tokens, hidden]` per tile.
    pub tiles: Vec<Tensor>,
    /// Wall time of the batch (ViT) plus this chunk's projection.
    pub encode: Duration,
    /// Tiles in the ViT batch these came from (over all requests).
    pub batch_tiles: usize,
}

/// What a job's output channel carries: features, or why the job failed.
pub type EncoderOutput = Result<EncodedChunk, EncodeError>;

/// Why the encoder produced no more features for a job (the job's last message).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// InternViT failed on the batch that held the job's tiles; every job in that batch gets
    /// the same error.
    #[error("encoding failed: {0}")]
    Vit(Arc<ModelError>),
    /// Taking the job's ViT tokens from the batch, routing or projecting them failed.
    #[error(transparent)]
    Projection(ModelError),
}

/// Tiles of one request (or one image) to encode.
#[derive(Debug)]
pub struct EncodeJob {
    /// Pixel values `[tiles, 3, size, size]`.
    pub pixel_values: Tensor,
    /// Router thresholds, or `None` to project every tile through `mlp1`.
    pub thresholds: Option<RouterThresholds>,
    /// Where the features go, in tile order.
    pub output: async_mpsc::UnboundedSender<EncoderOutput>,
    /// Cancelled when nobody wants the features any more; its queued tiles are dropped.
    pub cancelled: CancellationToken,
    /// Label for logs (the request id).
    pub label: String,
    /// The request's span: the job's `encoder_queue` and `encode_batch` spans are its
    /// children (`Span::none()` for none).
    pub span: tracing::Span,
}

/// Live counters of the encoder.
#[derive(Debug, Default)]
pub struct EncoderCounters {
    queued_tiles: AtomicU64,
    running_tiles: AtomicU64,
    encoded_tiles: AtomicU64,
    batches: AtomicU64,
    /// Recent per-batch latencies, milliseconds.
    latencies: Mutex<VecDeque<f64>>,
}

/// How many recent batch latencies the percentiles look at.
const LATENCY_WINDOW: usize = 1024;

/// A snapshot of [`EncoderCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EncoderStats {
    /// Tiles queued and not yet in a batch.
    pub queued_tiles: u64,
    /// Tiles in the batch being encoded.
    pub running_tiles: u64,
    /// Tiles encoded since start.
    pub encoded_tiles: u64,
    /// Batches run since start.
    pub batches: u64,
    /// Median batch latency, milliseconds (0 before any batch).
    pub latency_p50_ms: f64,
    /// 99th percentile batch latency, milliseconds.
    pub latency_p99_ms: f64,
}

impl EncoderCounters {
    fn snapshot(&self) -> EncoderStats {
        let mut recent: Vec<f64> = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        recent.sort_by(f64::total_cmp);
        let pick = |q: f64| match recent.len() {
            0 => 0.0,
            n => recent[((n - 1) as f64 * q).round() as usize],
        };
        EncoderStats {
            queued_tiles: self.queued_tiles.load(Ordering::Relaxed),
            running_tiles: self.running_tiles.load(Ordering::Relaxed),
            encoded_tiles: self.encoded_tiles.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            latency_p50_ms: pick(0.5),
            latency_p99_ms: pick(0.99),
        }
    }

    fn record_batch(&self, tiles: usize, took: Duration) {
        self.encoded_tiles
            .fetch_add(tiles as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut recent = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if recent.len() == LATENCY_WINDOW {
            recent.pop_front();
        }
        recent.push_back(took.as_secs_f64() * 1e3);
    }
}

/// The encoder thread stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the encoder has stopped")]
pub struct EncoderStopped;

/// Handle on the encoder thread; cheap to clone. The thread ends when every handle is gone.
#[derive(Debug, Clone)]
pub struct EncoderHandle {
    jobs: Sender<EncodeJob>,
    counters: Arc<EncoderCounters>,
    alive: Arc<AtomicBool>,
    config: EncoderConfig,
}

impl EncoderHandle {
    /// Starts the encoder thread over `model`.
    pub fn start(model: Arc<VisionModel>, config: EncoderConfig) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let counters = Arc::new(EncoderCounters::default());
        let alive = Arc::new(AtomicBool::new(true));
        let encoder = Encoder {
            model,
            config: EncoderConfig {
                max_batch_tiles: config.max_batch_tiles.max(1),
                ..config
            },
            jobs: rx,
            queue: VecDeque::new(),
            counters: counters.clone(),
        };
        let flag = alive.clone();
        thread::Builder::new()
            .name("dvd-encoder".into())
            .spawn(move || {
                encoder.run();
                flag.store(false, Ordering::Release);
            })?;
        Ok(Self {
            jobs,
            counters,
            alive,
            config,
        })
    }

    /// Queues a job.
    pub fn submit(&self, job: EncodeJob) -> Result<(), EncoderStopped> {
        let tiles = job.pixel_values.dim(0).unwrap_or(0) as u64;
        self.counters
            .queued_tiles
            .fetch_add(tiles, Ordering::Relaxed);
        self.jobs.send(job).map_err(|_| {
            self.counters
                .queued_tiles
                .fetch_sub(tiles, Ordering::Relaxed);
            EncoderStopped
        })
    }

    /// Counters at this moment.
    pub fn stats(&self) -> EncoderStats {
        self.counters.snapshot()
    }

    /// The batching settings.
    pub fn config(&self) -> EncoderConfig {
        self.config
    }

    /// Whether the encoder thread is running.
    pub fn is_running(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// A job in the encoder's queue.
struct Active {
    job: EncodeJob,
    tiles: usize,
    /// Tiles handed to ViT so far.
    next: usize,
    /// ViT tokens gathered so far (routed jobs only).
    tokens: Vec<Tensor>,
    /// Batch time spent on this job so far (routed jobs only).
    spent: Duration,
    /// The job's wait for its first batch, ended when that batch starts.
    queued: Option<tracing::Span>,
}

/// One job's tiles in a ViT batch.
struct BatchPart {
    /// Index of the job in the encoder's queue.
    job: usize,
    /// Index (within the job) of its first tile in the batch.
    first_tile: usize,
    /// How many of its tiles the batch holds.
    tiles: usize,
}

struct Encoder {
    model: Arc<VisionModel>,
    config: EncoderConfig,
    jobs: Receiver<EncodeJob>,
    queue: VecDeque<Active>,
    counters: Arc<EncoderCounters>,
}

impl Encoder {
    fn run(mut self) {
        loop {
            if self.queue.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            self.fill_batch();
            self.drop_cancelled();
            if !self.queue.is_empty() {
                self.run_batch();
            }
        }
    }

    fn enqueue(&mut self, job: EncodeJob) {
        let tiles = job.pixel_values.dim(0).unwrap_or(0);
        let queued = tracing::info_span!(parent: &job.span, "encoder_queue", tiles);
        self.queue.push_back(Active {
            job,
            tiles,
            next: 0,
            tokens: Vec::new(),
            spent: Duration::ZERO,
            queued: Some(queued),
        });
    }

    fn pending_tiles(&self) -> usize {
        self.queue.iter().map(|a| a.tiles - a.next).sum()
    }

    /// Takes queued jobs, waiting up to `batch_wait` for more while the batch is not full.
    fn fill_batch(&mut self) {
        let deadline = Instant::now() + self.config.batch_wait;
        loop {
            while let Ok(job) = self.jobs.try_recv() {
                self.enqueue(job);
            }
            if self.pending_tiles() >= self.config.max_batch_tiles {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.jobs.recv_timeout(deadline - now) {
                Ok(job) => self.enqueue(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let counters = &self.counters;
        self.queue.retain(|a| {
            let keep = !a.job.cancelled.is_cancelled() && !a.job.output.is_closed();
            if !keep {
                counters
                    .queued_tiles
                    .fetch_sub((a.tiles - a.next) as u64, Ordering::Relaxed);
            }
            keep
        });
    }

    /// Runs ViT on the next tiles of the queue (oldest jobs first) and delivers what is done.
    fn run_batch(&mut self) {
        let parts = self.plan_batch();
        let batch_tiles: usize = parts.iter().map(|p| p.tiles).sum();
        self.counters
            .queued_tiles
            .fetch_sub(batch_tiles as u64, Ordering::Relaxed);
        self.counters
            .running_tiles
            .store(batch_tiles as u64, Ordering::Relaxed);
        for part in &parts {
            self.queue[part.job].queued = None; // its wait for the encoder ends here
        }
        let labels: Vec<&str> = parts
            .iter()
            .map(|p| self.queue[p.job].job.label.as_str())
            .collect();
        // One span per job in the batch, each in its own request's trace.
        let spans: Vec<tracing::Span> = parts
            .iter()
            .map(|part| {
                let active = &self.queue[part.job];
                tracing::info_span!(
                    parent: &active.job.span,
                    "encode_batch",
                    tiles = part.tiles,
                    batch_tiles,
                    requests = ?labels,
                )
            })
            .collect();
        let started = Instant::now();
        let tokens = self.vit(&parts).map_err(Arc::new);
        let vit_time = started.elapsed();
        self.counters.running_tiles.store(0, Ordering::Relaxed);
        self.counters.record_batch(batch_tiles, vit_time);
        tracing::debug!(ms = vit_time.as_secs_f64() * 1e3, "ViT batch done");
        let mut offset = 0;
        for part in &parts {
            let active = &mut self.queue[part.job];
            active.next += part.tiles;
            let delivered = match &tokens {
                Ok(t) => t
                    .narrow(0, offset, part.tiles)
                    .map_err(ModelError::from)
                    .and_then(|tokens| {
                        deliver(
                            &self.model,
                            active,
                            tokens,
                            part.first_tile,
                            vit_time,
                            batch_tiles,
                        )
                    })
                    .map_err(EncodeError::Projection),
                Err(e) => Err(EncodeError::Vit(e.clone())),
            };
            offset += part.tiles;
            if let Err(e) = delivered {
                tracing::warn!(request = %active.job.label, error = %e, "encoding failed");
                let _ = active.job.output.send(Err(e));
                self.counters
                    .queued_tiles
                    .fetch_sub((active.tiles - active.next) as u64, Ordering::Relaxed);
                active.next = active.tiles;
                active.tokens.clear();
            }
        }
        drop(spans);
        // Jobs whose every tile went through are done (their output channel closes).
        self.queue.retain(|a| a.next < a.tiles);
    }

    /// Each queued job's share of the next batch, oldest jobs first, up to `max_batch_tiles`.
    fn plan_batch(&self) -> Vec<BatchPart> {
        let mut parts = Vec::new();
        let mut room = self.config.max_batch_tiles;
        for (job, active) in self.queue.iter().enumerate() {
            if room == 0 {
                break;
            }
            let tiles = (active.tiles - active.next).min(room);
            if tiles > 0 {
                parts.push(BatchPart {
                    job,
                    first_tile: active.next,
                    tiles,
                });
                room -= tiles;
            }
        }
        parts
    }

    fn vit(&self, parts: &[BatchPart]) -> Result<Tensor, ModelError> {
        let pieces = parts
            .iter()
            .map(|p| {
                self.queue[p.job]
                    .job
                    .pixel_values
                    .narrow(0, p.first_tile, p.tiles)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pixels = match pieces.len() {
            1 => pieces[0].clone(),
            _ => Tensor::cat(&pieces, 0)?,
        };
        self.model.vit_tokens(&pixels)
    }
}

/// Projects and sends what `active` can send after its `tokens` (tiles `first..`) went through
/// ViT.
fn deliver(
    model: &VisionModel,
    active: &mut Active,
    tokens: Tensor,
    first: usize,
    vit_time: Duration,
    batch_tiles: usize,
) -> Result<(), ModelError> {
    let started = Instant::now();
    let Some(thresholds) = active.job.thresholds else {
        let n = tokens.dim(0)?;
        let tiles = model.project(&tokens, &vec![false; n])?.into_tiles()?;
        let chunk = EncodedChunk {
            first_tile: first,
            tiles,
            encode: vit_time + started.elapsed(),
            batch_tiles,
        };
        let _ = active.job.output.send(Ok(chunk));
        return Ok(());
    };
    active.tokens.push(tokens);
    active.spent += vit_time;
    if active.next < active.tiles {
        return Ok(()); // the router needs every tile of the job
    }
    let all = Tensor::cat(&active.tokens, 0)?;
    active.tokens.clear();
    let decision = decide(model.router_probs(&all)?, thresholds);
    let chunk = EncodedChunk {
        first_tile: 0,
        tiles: model.project(&all, &decision.compress)?.into_tiles()?,
        encode: active.spent + started.elapsed(),
        batch_tiles,
    };
    let _ = active.job.output.send(Ok(chunk));
    Ok(())
}
