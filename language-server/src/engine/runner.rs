//! The engine thread: owns the [`Scheduler`] and steps it while there is work, taking requests,
//! feature tiles, failures and cancellations from the async side through a channel, and sending
//! each request's events to its own stream.
//!
//! The model runs on this thread, never on the async runtime. The thread blocks on the channel
//! when nothing can run (idle, or every sequence waiting for its next tile); a request whose
//! event stream was dropped (the client went away) is cancelled before the next step.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::prompt::FeatureTile;
use super::scheduler::{
    CompleteRequest, EngineError, EngineEvent, EngineStats, FailureKind, FeatureStreamRequest,
    Scheduler,
};

/// What [`EngineHandle::add`] hands the engine thread: either kind of request.
#[derive(Debug)]
pub enum Submission {
    /// Prompt and features complete.
    Complete(CompleteRequest),
    /// Features arrive later through [`EngineHandle::push_features`].
    FeatureStream(FeatureStreamRequest),
}

impl Submission {
    fn id(&self) -> u64 {
        match self {
            Self::Complete(r) => r.id,
            Self::FeatureStream(r) => r.id,
        }
    }
}

/// The engine thread has stopped (shut down or crashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineStopped;

/// Why [`EngineHandle::add`] did not queue a request.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The engine refused it.
    #[error(transparent)]
    Rejected(#[from] EngineError),
    /// The engine thread is gone.
    #[error(transparent)]
    Stopped(#[from] EngineStopped),
}

/// Events of one request, ending with `Finished`, `Failed` or `Cancelled`.
pub type EventStream = async_mpsc::UnboundedReceiver<EngineEvent>;

enum Command {
    Add {
        request: Submission,
        events: async_mpsc::UnboundedSender<EngineEvent>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Features {
        id: u64,
        tile: FeatureTile,
    },
    Fail {
        id: u64,
        kind: FailureKind,
        message: String,
    },
    Cancel {
        id: u64,
        reply: Option<oneshot::Sender<bool>>,
    },
}

/// The async side's handle on the engine thread. Cheap to clone; the thread stops once every
/// handle is dropped and its last request has ended.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    commands: Sender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    alive: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Starts the engine thread over `scheduler`.
    pub fn start(scheduler: Scheduler) -> std::io::Result<Self> {
        let (commands, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(scheduler.stats()));
        let alive = Arc::new(AtomicBool::new(true));
        let runner = Runner {
            scheduler,
            commands: rx,
            deferred: VecDeque::new(),
            disconnected: false,
            streams: HashMap::new(),
            stats: stats.clone(),
        };
        let flag = alive.clone();
        thread::Builder::new()
            .name("dvd-engine".into())
            .spawn(move || {
                runner.run();
                flag.store(false, Ordering::Release);
            })?;
        Ok(Self {
            commands,
            stats,
            alive,
        })
    }

    /// Queues a request; its events arrive on the returned stream.
    pub async fn add(&self, request: Submission) -> Result<EventStream, AddError> {
        let (events, stream) = async_mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.send(Command::Add {
            request,
            events,
            reply,
        })?;
        answer.await.map_err(|_| EngineStopped)??;
        Ok(stream)
    }

    /// Hands one tile of request `id` to the engine.
    pub fn push_features(&self, id: u64, tile: FeatureTile) -> Result<(), EngineStopped> {
        self.send(Command::Features { id, tile })
    }

    /// Fails request `id` (its features timed out or broke); it frees everything it held.
    pub fn fail(&self, id: u64, kind: FailureKind, message: String) -> Result<(), EngineStopped> {
        self.send(Command::Fail { id, kind, message })
    }

    /// Cancels request `id`; returns whether it was still queued or running.
    pub async fn cancel(&self, id: u64) -> Result<bool, EngineStopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Cancel {
            id,
            reply: Some(reply),
        })?;
        answer.await.map_err(|_| EngineStopped)
    }

    /// Cancels request `id` without waiting for the answer.
    pub fn cancel_later(&self, id: u64) {
        let _ = self.send(Command::Cancel { id, reply: None });
    }

    /// The counters after the engine's latest step.
    pub fn stats(&self) -> EngineStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the engine thread is still running.
    pub fn is_running(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn send(&self, command: Command) -> Result<(), EngineStopped> {
        self.commands.send(command).map_err(|_| EngineStopped)
    }
}

struct Runner {
    scheduler: Scheduler,
    commands: Receiver<Command>,
    /// Commands taken while a step was paused, to handle once it ends (only new requests are
    /// handled mid-step).
    deferred: VecDeque<Command>,
    /// Every handle is gone.
    disconnected: bool,
    streams: HashMap<u64, async_mpsc::UnboundedSender<EngineEvent>>,
    stats: Arc<Mutex<EngineStats>>,
}

impl Runner {
    fn run(mut self) {
        let mut can_run = false;
        loop {
            if !can_run && self.deferred.is_empty() {
                // Nothing can run until a command arrives.
                match self.commands.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => self.disconnected = true,
                }
            }
            while let Some(command) = self.deferred.pop_front() {
                self.handle(command);
            }
            while let Some(command) = self.next_command() {
                self.handle(command);
            }
            self.cancel_abandoned();
            let produced = match catch_unwind(AssertUnwindSafe(|| self.cycle())) {
                Ok(Ok(produced)) => produced,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "engine step failed; failing the running batch");
                    let events = self
                        .scheduler
                        .fail_running(&format!("engine step failed: {e}"));
                    self.route(events);
                    true
                }
                Err(_) => {
                    tracing::error!("engine step panicked; failing the running batch");
                    let events = self.scheduler.fail_running("engine step panicked");
                    self.route(events);
                    true
                }
            };
            can_run = self.scheduler.last_step_tokens() > 0 || produced;
            self.publish();
            if self.disconnected && (self.scheduler.is_idle() || !can_run) {
                break;
            }
        }
        // Whatever is left can never finish now.
        let left: Vec<u64> = self.streams.keys().copied().collect();
        for id in left {
            if let Some(event) = self.scheduler.fail(
                id,
                FailureKind::Internal,
                "the engine is shutting down".into(),
            ) {
                self.route(vec![event]);
            }
        }
        self.publish();
    }

    /// The next command waiting on the channel, if any.
    fn next_command(&mut self) -> Option<Command> {
        match self.commands.try_recv() {
            Ok(command) => Some(command),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.disconnected = true;
                None
            }
        }
    }

    /// One engine cycle: a first-token step for short prompts already queued, then the batched
    /// step, layer by layer. Between two layers it takes in new requests, and if a short prompt
    /// arrived (and no first-token step ran this cycle yet) it pauses the batched step to run
    /// one, so a short request waits at most a layer, not a whole step. At most one first-token
    /// step per cycle keeps the batch moving under a stream of short requests. Events go out as
    /// they happen; returns whether there were any.
    fn cycle(&mut self) -> Result<bool, EngineError> {
        let mut produced = false;
        let mut first_token_step_ran = false;
        if self.scheduler.wants_first_token_step(None) {
            let events = self.scheduler.first_token_step(None)?;
            produced |= self.deliver(events);
            first_token_step_ran = true;
        }
        let (admitted, step) = self.scheduler.begin_step()?;
        produced |= self.deliver(admitted);
        let Some(mut step) = step else {
            return Ok(produced);
        };
        while !step.is_done() {
            self.scheduler.advance_step(&mut step)?;
            if first_token_step_ran || step.is_done() {
                continue;
            }
            self.take_new_requests();
            if self.scheduler.wants_first_token_step(Some(&step)) {
                let events = self.scheduler.first_token_step(Some(&step))?;
                produced |= self.deliver(events);
                first_token_step_ran = true;
            }
        }
        let events = self.scheduler.finish_step(step)?;
        produced |= self.deliver(events);
        Ok(produced)
    }

    /// Handles the new requests on the channel (they only join the waiting queue); any other
    /// command waits for the step in flight to end.
    fn take_new_requests(&mut self) {
        while let Some(command) = self.next_command() {
            match command {
                Command::Add { .. } => self.handle(command),
                other => self.deferred.push_back(other),
            }
        }
    }

    /// Routes `events` and publishes the counters; whether there were any.
    fn deliver(&mut self, events: Vec<EngineEvent>) -> bool {
        if events.is_empty() {
            return false;
        }
        self.route(events);
        self.publish();
        true
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Add {
                request,
                events,
                reply,
            } => {
                let id = request.id();
                let added = match request {
                    Submission::Complete(r) => self.scheduler.add(r),
                    Submission::FeatureStream(r) => self.scheduler.add_feature_stream(r),
                };
                if added.is_ok() {
                    self.streams.insert(id, events);
                }
                if reply.send(added).is_err() {
                    // The caller went away before hearing back.
                    self.scheduler.cancel(id);
                    self.streams.remove(&id);
                }
            }
            Command::Features { id, tile } => {
                if let Some(events) = self.scheduler.push_features(id, tile) {
                    self.route(events);
                }
            }
            Command::Fail { id, kind, message } => {
                if let Some(event) = self.scheduler.fail(id, kind, message) {
                    self.route(vec![event]);
                }
            }
            Command::Cancel { id, reply } => {
                let found = self.scheduler.cancel(id);
                if found {
                    self.route(vec![EngineEvent::Cancelled { id }]);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(found);
                }
            }
        }
        self.publish();
    }

    /// Cancels requests whose event stream nobody reads any more.
    fn cancel_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            tracing::debug!(id, "event stream closed; cancelling");
            self.scheduler.cancel(id);
            self.streams.remove(&id);
        }
    }

    /// Sends each event to its request's stream, after publishing the counters: a client that
    /// hears its request ended finds it gone from the stats.
    fn route(&mut self, events: Vec<EngineEvent>) {
        if events.is_empty() {
            return;
        }
        self.publish();
        for event in events {
            let (id, last) = match &event {
                EngineEvent::Token { id, .. } => (*id, false),
                EngineEvent::Finished { id, .. }
                | EngineEvent::Failed { id, .. }
                | EngineEvent::Cancelled { id } => (*id, true),
            };
            let delivered = self
                .streams
                .get(&id)
                .is_some_and(|tx| tx.send(event).is_ok());
            if !delivered && !last {
                self.scheduler.cancel(id);
            }
            if last || !delivered {
                self.streams.remove(&id);
            }
        }
    }

    fn publish(&self) {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = self.scheduler.stats();
    }
}
