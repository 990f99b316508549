//! Per-request inboxes: where a language server receives each request's tiles, in order, as they
//! arrive.
//!
//! The language server [registers](InboxRegistry::register) a request id and reads tiles from the
//! returned [`Inbox`]. Listeners attach each incoming request's frames to the same registry. Either
//! side may come first: tiles that arrive before registration wait, bounded in bytes and time
//! ([`InboxConfig`]), for the inbox to be claimed. Tiles may arrive in any order; the inbox hands
//! them out image by image, tile by tile, as soon as the next one in order is there.

mod attachment;
mod entry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

pub(crate) use attachment::Attachment;
use entry::{Entry, EntryState, TileMismatch};

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

/// Why an attached request stopped accepting frames, as its sender is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The reply's status.
    pub(crate) status: ReplyStatus,
    /// The reply's message.
    pub(crate) message: String,
}

impl Refusal {
    /// A refusal with `status` and `message`.
    pub(crate) fn new(status: ReplyStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

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
            .fetch_sub(std::mem::take(&mut st.unclaimed), Ordering::Relaxed);
        st.expected_images = expected_images;
        let rx = st.rx.take();
        if st.end_deferred
            && let Some(producer) = st.producer.take()
        {
            let _ = producer.try_send(Reply::new(ReplyStatus::Ok, id, st.received, ""));
        }
        if let Some(expected) = expected_images
            && st.image_count != 0
            && st.image_count != expected
        {
            let mismatch = TileMismatch::ImageCount {
                announced: st.image_count,
                expected,
            };
            let detail = mismatch.to_string();
            st.fail(
                InboxError::Protocol {
                    peer: String::from("registration"),
                    detail: detail.clone(),
                },
                Refusal::new(ReplyStatus::Protocol, detail),
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
                return Err(Refusal::new(
                    ReplyStatus::Protocol,
                    format!("request {id} already has a feature sender"),
                ));
            }
            st.producer = Some(producer);
        }
        if created {
            self.start_claim_timer(&entry);
        }
        Ok(Attachment::new(entry, Arc::downgrade(&self.inner), peer))
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
            st.close(Refusal::new(ReplyStatus::UnknownRequest, msg));
            registry.release(&entry, st);
        });
    }
}

impl RegistryInner {
    /// Drops `entry` from the table, and its bytes from the unclaimed count if they are still in
    /// it.
    fn release(&self, entry: &Arc<Entry>, mut st: MutexGuard<'_, EntryState>) {
        self.unclaimed_bytes
            .fetch_sub(std::mem::take(&mut st.unclaimed), Ordering::Relaxed);
        drop(st);
        self.remove(entry);
    }

    /// Drops `entry` from the table (if it is still the entry of its id).
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
            let refusal = Refusal::new(
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::frame::TilePosition;

    fn tile(index: u16) -> Tile {
        let position = TilePosition {
            image_index: 0,
            image_count: 1,
            tile_index: index,
            tile_count: 4,
        };
        Tile::new(position, 1, 8, Bytes::from(vec![0u8; 16])).unwrap()
    }

    #[tokio::test]
    async fn a_refused_unclaimed_request_gives_its_bytes_back_once() {
        let registry = InboxRegistry::new(InboxConfig {
            max_request_bytes: 40,
            ..InboxConfig::default()
        });
        let (replies, _rx) = mpsc::channel(8);
        let mut attachment = registry.attach(RequestId(1), replies, "peer").unwrap();
        attachment.deliver(tile(0)).unwrap();
        attachment.deliver(tile(1)).unwrap();
        assert_eq!(registry.stats().unclaimed_bytes, 32);
        let status = attachment.deliver(tile(2)).unwrap_err().status;
        assert_eq!(status, ReplyStatus::TooLarge);
        // What the session does with a refused request's attachment.
        attachment.fail(
            InboxError::TooLarge { limit: 40 },
            Refusal::new(ReplyStatus::Cancelled, ""),
        );
        assert_eq!(registry.stats().unclaimed_bytes, 0);
        assert_eq!(registry.stats().requests, 0);
    }
}
