//! Per-request inboxes: where a language server receives each request's tiles, in order, as they
//! arrive.
//!
//! The language server [registers](InboxRegistry::register) a request id and reads tiles from the
//! returned [`Inbox`]. Listeners attach each incoming request's frames to the same registry. Either
//! side may come first: tiles that arrive before registration wait, bounded in bytes and time
//! ([`InboxConfig`]), for the inbox to be claimed. Tiles may arrive in any order; the inbox hands
//! them out image by image, tile by tile, as soon as the next one in order is there.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::error::InboxError;
use crate::frame::Tile;
use crate::reply::{Reply, ReplyStatus};
use crate::request_id::RequestId;

/// Limits of an [`InboxRegistry`].
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// How long tiles for an unregistered request id are held before the sender is told
    /// [`ReplyStatus::UnknownRequest`].
    pub claim_timeout: Duration,
    /// Most feature bytes one request may carry.
    pub max_request_bytes: u64,
    /// Most feature bytes held, over all requests, for ids nobody has registered yet.
    pub max_unclaimed_bytes: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            claim_timeout: Duration::from_secs(30),
            max_request_bytes: 1 << 30,
            max_unclaimed_bytes: 1 << 30,
        }
    }
}

/// Why an attached request stopped accepting frames: the status for the sender and a message.
pub(crate) type Refusal = (ReplyStatus, String);

/// Where a request's tiles are announced to their consumer.
type TileTx = mpsc::UnboundedSender<Result<Tile, InboxError>>;
type TileRx = mpsc::UnboundedReceiver<Result<Tile, InboxError>>;

/// Channel back to the sender of a request's frames.
pub(crate) type ReplyTx = mpsc::Sender<Reply>;

/// The shared table of request inboxes of one language server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct InboxRegistry {
    inner: Arc<RegistryInner>,
}

#[derive(Debug)]
struct RegistryInner {
    config: InboxConfig,
    entries: Mutex<HashMap<RequestId, Arc<Entry>>>,
    unclaimed_bytes: AtomicU64,
    timers: TaskTracker,
}

#[derive(Debug)]
struct Entry {
    id: RequestId,
    state: Mutex<EntryState>,
}

#[derive(Debug)]
struct EntryState {
    id: RequestId,
    tx: Option<TileTx>,
    rx: Option<TileRx>,
    claimed: bool,
    expected_images: Option<u16>,
    image_count: u16,
    hidden: u32,
    tile_counts: Vec<u16>,
    cursor: (u16, u16),
    pending: BTreeMap<(u16, u16), Tile>,
    received: u32,
    bytes: u64,
    complete: bool,
    /// The sender's `End` came while nobody had claimed the request: its `Ok` waits for the claim.
    end_deferred: bool,
    closed: Option<Refusal>,
    producer: Option<ReplyTx>,
}

/// Counts describing a registry at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Requests with an entry: registered, or with frames waiting to be claimed.
    pub requests: usize,
    /// Feature bytes held for ids nobody has registered yet.
    pub unclaimed_bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl InboxRegistry {
    /// An empty registry.
    pub fn new(config: InboxConfig) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                config,
                entries: Mutex::new(HashMap::new()),
                unclaimed_bytes: AtomicU64::new(0),
                timers: TaskTracker::new(),
            }),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &InboxConfig {
        &self.inner.config
    }

    /// Claims the inbox of `id`. With `expected_images`, tiles that announce another image count
    /// fail the request. Tiles that arrived before this call are handed out first.
    pub fn register(
        &self,
        id: RequestId,
        expected_images: Option<u16>,
    ) -> Result<Inbox, InboxError> {
        let mut entries = lock(&self.inner.entries);
        let entry = entries
            .entry(id)
            .or_insert_with(|| Arc::new(Entry::new(id)))
            .clone();
        drop(entries);
        let mut st = lock(&entry.state);
        if st.claimed {
            return Err(InboxError::Duplicate(id));
        }
        st.claimed = true;
        self.inner
            .unclaimed_bytes
            .fetch_sub(st.bytes, Ordering::Relaxed);
        st.expected_images = expected_images;
        let rx = st.rx.take();
        if st.end_deferred
            && let Some(producer) = st.producer.take()
        {
            let _ = producer.try_send(Reply::new(ReplyStatus::Ok, id, st.received, ""));
        }
        if let Some(n) = expected_images
            && st.image_count != 0
            && st.image_count != n
        {
            let detail = format!("frames announce {} images, {n} expected", st.image_count);
            st.fail(
                InboxError::Protocol {
                    peer: String::from("registration"),
                    detail: detail.clone(),
                },
                (ReplyStatus::Protocol, detail),
            );
        }
        drop(st);
        Ok(Inbox {
            entry,
            rx,
            registry: Arc::downgrade(&self.inner),
        })
    }

    /// Counts at this moment.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            requests: lock(&self.inner.entries).len(),
            unclaimed_bytes: self.inner.unclaimed_bytes.load(Ordering::Relaxed),
        }
    }

    /// Binds the sender of `id`'s frames (one per request) to its entry, creating an unclaimed
    /// entry if the consumer has not registered yet.
    pub(crate) fn attach(
        &self,
        id: RequestId,
        producer: ReplyTx,
        peer: &str,
    ) -> Result<Attachment, Refusal> {
        let mut entries = lock(&self.inner.entries);
        let (entry, created) = match entries.get(&id) {
            Some(e) => (e.clone(), false),
            None => {
                let e = Arc::new(Entry::new(id));
                entries.insert(id, e.clone());
                (e, true)
            }
        };
        drop(entries);
        {
            let mut st = lock(&entry.state);
            if let Some(refusal) = &st.closed {
                return Err(refusal.clone());
            }
            if st.producer.is_some() {
                return Err((
                    ReplyStatus::Protocol,
                    format!("request {id} already has a feature sender"),
                ));
            }
            st.producer = Some(producer);
        }
        if created {
            self.start_claim_timer(&entry);
        }
        Ok(Attachment {
            entry,
            registry: Arc::downgrade(&self.inner),
            peer: peer.to_owned(),
            finished: false,
        })
    }

    fn start_claim_timer(&self, entry: &Arc<Entry>) {
        let entry = entry.clone();
        let registry = Arc::downgrade(&self.inner);
        let timeout = self.inner.config.claim_timeout;
        self.inner.timers.spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let mut st = lock(&entry.state);
            if st.claimed || st.closed.is_some() {
                return;
            }
            let msg = format!(
                "no inbox registered for request {} within {} ms",
                entry.id,
                timeout.as_millis()
            );
            st.close((ReplyStatus::UnknownRequest, msg));
            registry
                .unclaimed_bytes
                .fetch_sub(st.bytes, Ordering::Relaxed);
            drop(st);
            registry.remove(&entry);
        });
    }
}

impl RegistryInner {
    fn remove(&self, entry: &Arc<Entry>) {
        let mut entries = lock(&self.entries);
        if entries
            .get(&entry.id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            entries.remove(&entry.id);
        }
    }
}

impl Entry {
    fn new(id: RequestId) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            id,
            state: Mutex::new(EntryState {
                id,
                tx: Some(tx),
                rx: Some(rx),
                claimed: false,
                expected_images: None,
                image_count: 0,
                hidden: 0,
                tile_counts: Vec::new(),
                cursor: (0, 0),
                pending: BTreeMap::new(),
                received: 0,
                bytes: 0,
                complete: false,
                end_deferred: false,
                closed: None,
                producer: None,
            }),
        }
    }
}

impl EntryState {
    /// Stops accepting frames and tells the sender why.
    fn close(&mut self, refusal: Refusal) {
        if self.closed.is_some() {
            return;
        }
        if let Some(producer) = self.producer.take() {
            let reply = Reply::new(refusal.0, self.id, self.received, refusal.1.clone());
            let _ = producer.try_send(reply);
        }
        self.closed = Some(refusal);
        self.tx = None;
        self.pending.clear();
    }

    /// Tells the consumer the request failed, then closes.
    fn fail(&mut self, error: InboxError, refusal: Refusal) {
        if self.closed.is_some() {
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Err(error));
        }
        self.close(refusal);
    }

    /// Checks a tile against what earlier tiles established.
    fn check(&mut self, tile: &Tile) -> Result<(), String> {
        if self.image_count == 0 {
            if let Some(n) = self.expected_images
                && n != tile.image_count
            {
                return Err(format!(
                    "frames announce {} images, {n} expected",
                    tile.image_count
                ));
            }
            self.image_count = tile.image_count;
            self.tile_counts = vec![0; usize::from(tile.image_count)];
            self.hidden = tile.hidden;
        }
        if tile.image_count != self.image_count {
            return Err(format!(
                "tile announces {} images, earlier tiles {}",
                tile.image_count, self.image_count
            ));
        }
        if tile.hidden != self.hidden {
            return Err(format!(
                "tile hidden size {} differs from earlier tiles' {}",
                tile.hidden, self.hidden
            ));
        }
        let slot = &mut self.tile_counts[usize::from(tile.image_index)];
        if *slot == 0 {
            *slot = tile.tile_count;
        } else if *slot != tile.tile_count {
            return Err(format!(
                "image {} announced with {} and {} tiles",
                tile.image_index, slot, tile.tile_count
            ));
        }
        let key = (tile.image_index, tile.tile_index);
        if key < self.cursor || self.pending.contains_key(&key) {
            return Err(format!(
                "duplicate tile {} of image {}",
                tile.tile_index, tile.image_index
            ));
        }
        Ok(())
    }

    /// Hands out every tile that is next in order.
    fn flush_in_order(&mut self) {
        while let Some(tile) = self.pending.remove(&self.cursor) {
            let (image, index) = self.cursor;
            self.cursor = if index + 1 == self.tile_counts[usize::from(image)] {
                (image + 1, 0)
            } else {
                (image, index + 1)
            };
            if let Some(tx) = &self.tx {
                let _ = tx.send(Ok(tile));
            }
        }
        if self.cursor.0 == self.image_count {
            self.complete = true;
            self.tx = None;
        }
    }
}

/// A sender's hold on one request's entry, owned by the listener session reading its frames.
/// Dropping it before [`end`](Self::end) or [`abort`](Self::abort) fails the request as
/// disconnected, so a consumer never waits on a sender that is gone.
#[derive(Debug)]
pub(crate) struct Attachment {
    entry: Arc<Entry>,
    registry: Weak<RegistryInner>,
    peer: String,
    finished: bool,
}

impl Attachment {
    /// Accepts one tile. Returns whether the request is now complete.
    pub(crate) fn deliver(&mut self, tile: Tile) -> Result<bool, Refusal> {
        let Some(registry) = self.registry.upgrade() else {
            return Err((ReplyStatus::Cancelled, "receiver is shutting down".into()));
        };
        let mut st = lock(&self.entry.state);
        if let Some(refusal) = &st.closed {
            return Err(refusal.clone());
        }
        // From here on the session answers the sender itself.
        if let Err(detail) = st.check(&tile) {
            st.producer = None;
            let refusal = (ReplyStatus::Protocol, detail.clone());
            let error = InboxError::Protocol {
                peer: self.peer.clone(),
                detail,
            };
            st.fail(error, refusal.clone());
            drop(st);
            registry.remove(&self.entry);
            return Err(refusal);
        }
        let len = tile.data.len() as u64;
        let limit = registry.config.max_request_bytes;
        if st.bytes + len > limit {
            let refusal = (
                ReplyStatus::TooLarge,
                format!("request features exceed {limit} bytes"),
            );
            st.producer = None;
            st.fail(InboxError::TooLarge { limit }, refusal.clone());
            return self.fail_unclaimed(st, &registry, refusal);
        }
        if !st.claimed {
            let held = registry.unclaimed_bytes.fetch_add(len, Ordering::Relaxed) + len;
            if held > registry.config.max_unclaimed_bytes {
                registry.unclaimed_bytes.fetch_sub(len, Ordering::Relaxed);
                let refusal = (
                    ReplyStatus::Overloaded,
                    format!(
                        "receiver holds {} unclaimed feature bytes (limit {})",
                        held - len,
                        registry.config.max_unclaimed_bytes
                    ),
                );
                st.producer = None;
                st.close(refusal.clone());
                return self.fail_unclaimed(st, &registry, refusal);
            }
        }
        st.bytes += len;
        st.received += 1;
        st.pending.insert((tile.image_index, tile.tile_index), tile);
        st.flush_in_order();
        Ok(st.complete)
    }

    fn fail_unclaimed(
        &self,
        st: MutexGuard<'_, EntryState>,
        registry: &RegistryInner,
        refusal: Refusal,
    ) -> Result<bool, Refusal> {
        if !st.claimed {
            registry
                .unclaimed_bytes
                .fetch_sub(st.bytes, Ordering::Relaxed);
        }
        drop(st);
        registry.remove(&self.entry);
        Err(refusal)
    }

    /// The sender's `End` frame: succeeds when every tile arrived and the sender counted the same.
    /// Returns the tiles accepted, or `None` when nobody has claimed the request yet: the `Ok`
    /// then goes to the sender when it is claimed (or `UnknownRequest` when it never is).
    pub(crate) fn end(mut self, tiles_sent: u32) -> Result<Option<u32>, Refusal> {
        self.finished = true;
        let mut st = lock(&self.entry.state);
        if st.complete && st.received == tiles_sent {
            if !st.claimed {
                st.end_deferred = true;
                return Ok(None);
            }
            st.producer = None;
            return Ok(Some(st.received));
        }
        if let Some(refusal) = &st.closed {
            return Err(refusal.clone());
        }
        let received = st.received;
        let refusal = (
            ReplyStatus::Incomplete,
            format!("End after {received} tiles; sender counted {tiles_sent}"),
        );
        st.producer = None;
        st.fail(InboxError::Incomplete { received }, refusal.clone());
        drop(st);
        self.remove();
        Err(refusal)
    }

    /// The sender's `Abort` frame.
    pub(crate) fn abort(mut self, reason: String) {
        self.finished = true;
        let error = InboxError::Aborted {
            peer: self.peer.clone(),
            reason: reason.clone(),
        };
        self.fail_with(error, (ReplyStatus::Aborted, reason));
    }

    /// Fails the request because of what happened on its stream.
    pub(crate) fn fail(mut self, error: InboxError, refusal: Refusal) {
        self.finished = true;
        self.fail_with(error, refusal);
    }

    fn fail_with(&self, error: InboxError, refusal: Refusal) {
        let mut st = lock(&self.entry.state);
        if st.complete {
            st.producer = None;
            return;
        }
        // The sender learns of this from its own stream; no reply through the registry.
        st.producer = None;
        st.fail(error, refusal);
        drop(st);
        self.remove();
    }

    fn remove(&self) {
        if let Some(registry) = self.registry.upgrade() {
            let st = lock(&self.entry.state);
            if !st.claimed {
                registry
                    .unclaimed_bytes
                    .fetch_sub(st.bytes, Ordering::Relaxed);
            }
            drop(st);
            registry.remove(&self.entry);
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.finished {
            let error = InboxError::Disconnected {
                peer: self.peer.clone(),
                detail: "stream closed before the request's End frame".into(),
            };
            self.fail_with(error, (ReplyStatus::Truncated, "stream closed".into()));
        }
    }
}

/// The consumer's end of one request's features.
#[derive(Debug)]
pub struct Inbox {
    entry: Arc<Entry>,
    rx: Option<TileRx>,
    registry: Weak<RegistryInner>,
}

impl Inbox {
    /// The request this inbox belongs to.
    pub fn request_id(&self) -> RequestId {
        self.entry.id
    }

    /// The next tile in order; `Ok(None)` once every tile of every image has been handed out.
    /// Cancel-safe. Wrap it in a timeout to bound the wait for features that never come.
    pub async fn next_tile(&mut self) -> Result<Option<Tile>, InboxError> {
        let next = match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => None,
        };
        match next {
            Some(Ok(tile)) => Ok(Some(tile)),
            Some(Err(e)) => {
                self.rx = None;
                Err(e)
            }
            None if lock(&self.entry.state).complete => Ok(None),
            None => Err(InboxError::Disconnected {
                peer: String::from("unknown"),
                detail: "inbox closed before the request was complete".into(),
            }),
        }
    }

    /// Tiles accepted so far (handed out or waiting for an earlier tile).
    pub fn received(&self) -> u32 {
        lock(&self.entry.state).received
    }
}

impl Drop for Inbox {
    /// Releases the request: buffered tiles are freed and a sender still streaming is told
    /// [`ReplyStatus::Cancelled`].
    fn drop(&mut self) {
        let mut st = lock(&self.entry.state);
        if !st.complete {
            let refusal = (
                ReplyStatus::Cancelled,
                format!("request {} no longer wants features", self.entry.id),
            );
            st.close(refusal);
        }
        drop(st);
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(&self.entry);
        }
    }
}
