//! A sender's hold on one request's entry: the listener session delivers the request's tiles,
//! its `End` or `Abort` through it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{Entry, Refusal, RegistryInner, lock};
use crate::error::InboxError;
use crate::frame::Tile;
use crate::reply::ReplyStatus;

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
    pub(super) fn new(entry: Arc<Entry>, registry: Weak<RegistryInner>, peer: &str) -> Self {
        Self {
            entry,
            registry,
            peer: peer.to_owned(),
            finished: false,
        }
    }

    /// Accepts one tile. Returns whether the request is now complete.
    pub(crate) fn deliver(&mut self, tile: Tile) -> Result<bool, Refusal> {
        let Some(registry) = self.registry.upgrade() else {
            return Err(Refusal::new(
                ReplyStatus::Cancelled,
                "receiver is shutting down",
            ));
        };
        let mut st = lock(&self.entry.state);
        if let Some(refusal) = &st.closed {
            return Err(refusal.clone());
        }
        // From here on the session answers the sender itself.
        if let Err(mismatch) = st.check(&tile) {
            st.producer = None;
            let detail = mismatch.to_string();
            let refusal = Refusal::new(ReplyStatus::Protocol, detail.clone());
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
            let refusal = Refusal::new(
                ReplyStatus::TooLarge,
                format!("request features exceed {limit} bytes"),
            );
            st.producer = None;
            st.fail(InboxError::TooLarge { limit }, refusal.clone());
            registry.release(&self.entry, st);
            return Err(refusal);
        }
        if !st.claimed {
            let held = registry.unclaimed_bytes.fetch_add(len, Ordering::Relaxed) + len;
            if held > registry.config.max_unclaimed_bytes {
                registry.unclaimed_bytes.fetch_sub(len, Ordering::Relaxed);
                let refusal = Refusal::new(
                    ReplyStatus::Overloaded,
                    format!(
                        "receiver holds {} unclaimed feature bytes (limit {})",
                        held - len,
                        registry.config.max_unclaimed_bytes
                    ),
                );
                st.producer = None;
                st.close(refusal.clone());
                registry.release(&self.entry, st);
                return Err(refusal);
            }
            st.unclaimed += len;
        }
        st.accept(tile);
        Ok(st.complete)
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
        let refusal = Refusal::new(
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
        self.fail_with(error, Refusal::new(ReplyStatus::Aborted, reason));
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
            registry.release(&self.entry, lock(&self.entry.state));
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
            self.fail_with(error, Refusal::new(ReplyStatus::Truncated, "stream closed"));
        }
    }
}
