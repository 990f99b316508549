//! [`QueuedExport`]: the span processor that sends finished spans to the collector without ever
//! making a request wait. Finished spans go into a bounded queue (`try_send`: a full queue drops
//! the span); a thread of its own batches them and runs the exporter. Every span that does not
//! reach the collector (queue full, export failed or timed out) is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc as sync_mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::BatchSettings;
use super::error::TelemetryError;

/// What the processor asks of its thread besides exporting.
enum Control {
    /// Export everything queued, then answer.
    Flush(sync_mpsc::Sender<()>),
    /// Export everything queued, answer and stop.
    Shutdown(sync_mpsc::Sender<()>),
}

/// A span processor exporting through a bounded queue and a thread of its own.
#[derive(Debug)]
pub struct QueuedExport {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    dropped: &'static AtomicU64,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flush(_) => "Flush",
            Self::Shutdown(_) => "Shutdown",
        })
    }
}

impl QueuedExport {
    /// Starts the export thread with the exporter `make` builds on it (inside its Tokio
    /// runtime, which gRPC channels need), batching as `batch` says and counting lost spans in
    /// `dropped`.
    pub fn start<E, F>(
        make: F,
        batch: BatchSettings,
        dropped: &'static AtomicU64,
    ) -> Result<Self, TelemetryError>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let (spans, span_rx) = mpsc::channel(batch.max_queue_size);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (built_tx, built_rx) = sync_mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = built_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let exporter = {
                    let _entered = runtime.enter();
                    make()
                };
                match exporter {
                    Ok(exporter) => {
                        let _ = built_tx.send(Ok(()));
                        let worker = Worker {
                            exporter,
                            batch,
                            dropped,
                        };
                        runtime.block_on(worker.run(span_rx, control_rx));
                    }
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        match built_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                spans,
                control,
                dropped,
                worker: Mutex::new(Some(worker)),
            }),
            Ok(Err(e)) => Err(TelemetryError::Exporter(e)),
            Err(_) => Err(TelemetryError::Exporter(
                "the export thread stopped while starting".into(),
            )),
        }
    }

    /// Sends `control` and waits for the answer at most `timeout`.
    fn ask(
        &self,
        control: fn(sync_mpsc::Sender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = sync_mpsc::channel();
        self.control
            .send(control(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        rx.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueuedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let answered = self.ask(Control::Shutdown, timeout);
        if answered.is_ok()
            && let Some(worker) = self.worker.lock().ok().and_then(|mut w| w.take())
        {
            let _ = worker.join();
        }
        answered
    }
}

/// The export thread's state.
struct Worker<E> {
    exporter: E,
    batch: BatchSettings,
    dropped: &'static AtomicU64,
}

impl<E: SpanExporter> Worker<E> {
    /// Batches and exports until shut down (or the processor is gone).
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanData>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut pending = Vec::with_capacity(self.batch.max_export_batch_size);
        let mut due = Instant::now() + self.batch.schedule_delay;
        loop {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => {
                        pending.push(span);
                        if pending.len() >= self.batch.max_export_batch_size {
                            self.export(&mut pending).await;
                            due = Instant::now() + self.batch.schedule_delay;
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(due) => {
                    self.export(&mut pending).await;
                    due = Instant::now() + self.batch.schedule_delay;
                }
                asked = control.recv() => {
                    while let Ok(span) = spans.try_recv() {
                        pending.push(span);
                        if pending.len() >= self.batch.max_export_batch_size {
                            self.export(&mut pending).await;
                        }
                    }
                    self.export(&mut pending).await;
                    match asked {
                        Some(Control::Flush(answer)) => {
                            let _ = answer.send(());
                        }
                        Some(Control::Shutdown(answer)) => {
                            let _ = self.exporter.shutdown();
                            let _ = answer.send(());
                            return;
                        }
                        None => break,
                    }
                }
            }
        }
        self.export(&mut pending).await;
        let _ = self.exporter.shutdown();
    }

    /// Exports `pending` (emptying it); spans that do not make it are counted as dropped.
    async fn export(&mut self, pending: &mut Vec<SpanData>) {
        if pending.is_empty() {
            return;
        }
        let batch = std::mem::take(pending);
        let n = batch.len() as u64;
        let exported =
            tokio::time::timeout(self.batch.export_timeout, self.exporter.export(batch)).await;
        if !matches!(exported, Ok(Ok(()))) {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// An exporter that records what it was given, or fails every export.
    #[derive(Debug, Clone)]
    struct Recording {
        spans: Arc<Mutex<Vec<String>>>,
        fail: bool,
        delay: Duration,
    }

    impl SpanExporter for Recording {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(OTelSdkError::InternalFailure("collector down".into()));
            }
            let mut spans = self.spans.lock().unwrap();
            spans.extend(batch.into_iter().map(|s| s.name.into_owned()));
            Ok(())
        }
    }

    fn provider(
        exporter: Recording,
        batch: BatchSettings,
        dropped: &'static AtomicU64,
    ) -> SdkTracerProvider {
        let processor = QueuedExport::start(move || Ok(exporter), batch, dropped).unwrap();
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build()
    }

    fn spans(provider: &SdkTracerProvider, n: usize) {
        let tracer = provider.tracer("test");
        for i in 0..n {
            tracer.in_span(format!("span {i}"), |_| {});
        }
    }

    #[test]
    fn finished_spans_reach_the_exporter_in_batches() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let exporter = Recording {
            spans: Arc::default(),
            fail: false,
            delay: Duration::ZERO,
        };
        let batch = BatchSettings {
            schedule_delay: Duration::from_millis(10),
            max_export_batch_size: 3,
            ..BatchSettings::default()
        };
        let provider = provider(exporter.clone(), batch, &DROPPED);
        spans(&provider, 7);
        provider.force_flush().unwrap();
        assert_eq!(exporter.spans.lock().unwrap().len(), 7);
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0);
        provider.shutdown().unwrap();
    }

    #[test]
    fn failed_exports_count_their_spans_as_dropped() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let exporter = Recording {
            spans: Arc::default(),
            fail: true,
            delay: Duration::ZERO,
        };
        let provider = provider(exporter, BatchSettings::default(), &DROPPED);
        spans(&provider, 5);
        provider.force_flush().unwrap();
        assert_eq!(DROPPED.load(Ordering::Relaxed), 5);
        provider.shutdown().unwrap();
    }

    #[test]
    fn a_full_queue_drops_spans_instead_of_waiting() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        // The exporter takes its time; the queue holds 4 spans, batches take 1.
        let exporter = Recording {
            spans: Arc::default(),
            fail: false,
            delay: Duration::from_millis(300),
        };
        let batch = BatchSettings {
            schedule_delay: Duration::from_millis(1),
            max_queue_size: 4,
            max_export_batch_size: 1,
            ..BatchSettings::default()
        };
        let provider = provider(exporter.clone(), batch, &DROPPED);
        let started = std::time::Instant::now();
        spans(&provider, 50);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "ending spans waited"
        );
        let dropped = DROPPED.load(Ordering::Relaxed);
        assert!(dropped >= 40, "{dropped} dropped");
        provider
            .shutdown_with_timeout(Duration::from_secs(10))
            .unwrap();
        let exported = exporter.spans.lock().unwrap().len() as u64;
        assert_eq!(exported + dropped, 50);
    }
}
