//! The receiving side's per-stream logic, shared by every transport: validates each frame,
//! attaches requests to the inbox registry, and decides what to answer the sender.
//!
//! A TCP connection carries frames of many requests; a QUIC stream carries one request. Either
//! way, frames reach a [`Session`], and replies leave through the session's reply channel.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use crate::api::ListenerConfig;
use crate::error::{FrameError, InboxError};
use crate::frame::{FrameKind, Tile};
use crate::inbox::{Attachment, InboxRegistry, Refusal, ReplyTx};
use crate::io::{RawFrame, read_frame};
use crate::pool::BufferPool;
use crate::reply::{Reply, ReplyStatus};
use crate::request_id::RequestId;
use crate::stats::ListenerStats;

/// What every connection and stream of one listener shares.
#[derive(Debug, Clone)]
pub(crate) struct Receiving {
    pub registry: InboxRegistry,
    pub config: ListenerConfig,
    pub stats: Arc<ListenerStats>,
    pub pool: Arc<BufferPool>,
}

impl Receiving {
    pub(crate) fn new(registry: InboxRegistry, config: ListenerConfig) -> Self {
        Self {
            pool: BufferPool::new(config.pooled_buffers),
            registry,
            config,
            stats: Arc::default(),
        }
    }

    /// Feeds frames from `reader` to `session` until the stream ends, breaks, `shutdown` fires
    /// or, on a single-request stream, the request is done.
    pub(crate) async fn pump<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                frame = read_frame(reader, self.config.max_frame_payload, &self.pool) => match frame {
                    Ok(Some(frame)) => {
                        self.stats.frame(frame.payload.len());
                        session.on_frame(frame);
                        if session.done() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err((error, request)) => {
                        tracing::warn!(peer = %session.peer, %error, "closing feature stream");
                        self.stats.broken();
                        session.on_broken(error, request);
                        break;
                    }
                },
            }
        }
    }
}

/// How many failed request ids a session remembers so their remaining frames are skipped quietly.
const REMEMBERED_FAILURES: usize = 1024;

/// State of one request seen on this stream.
#[derive(Debug)]
struct Active {
    attachment: Attachment,
    next_seq: u32,
    tiles: u32,
}

/// Frame handling for one TCP connection or QUIC stream.
#[derive(Debug)]
pub(crate) struct Session {
    registry: InboxRegistry,
    replies: ReplyTx,
    peer: String,
    /// QUIC: the stream belongs to the first request seen on it.
    single_request: bool,
    bound: Option<RequestId>,
    active: HashMap<RequestId, Active>,
    failed: VecDeque<RequestId>,
}

impl Session {
    /// A session whose replies go to `replies`.
    pub(crate) fn new(
        registry: InboxRegistry,
        replies: ReplyTx,
        peer: String,
        single_request: bool,
    ) -> Self {
        Self {
            registry,
            replies,
            peer,
            single_request,
            bound: None,
            active: HashMap::new(),
            failed: VecDeque::new(),
        }
    }

    /// Whether this stream has seen a request and finished with it (QUIC streams then end).
    pub(crate) fn done(&self) -> bool {
        self.single_request && self.bound.is_some() && self.active.is_empty()
    }

    /// Handles one frame whose header and payload were read whole.
    pub(crate) fn on_frame(&mut self, frame: RawFrame) {
        let h = frame.header;
        let id = h.request_id;
        if self.failed.contains(&id) {
            return;
        }
        if self.single_request {
            match self.bound {
                Some(bound) if bound != id => {
                    let msg = format!("stream of request {bound} carried a frame of request {id}");
                    return self.reject(bound, ReplyStatus::Protocol, msg);
                }
                _ => self.bound = Some(id),
            }
        }
        if let Err(e) = h
            .check_fields()
            .and_then(|()| h.check_payload_crc(frame.payload_crc))
        {
            return self.reject_frame(id, e);
        }
        if !self.active.contains_key(&id) {
            match self.registry.attach(id, self.replies.clone(), &self.peer) {
                Ok(attachment) => {
                    self.active.insert(
                        id,
                        Active {
                            attachment,
                            next_seq: 0,
                            tiles: 0,
                        },
                    );
                }
                Err(Refusal {
                    status,
                    message: msg,
                }) => return self.reject(id, status, msg),
            }
        }
        let Some(req) = self.active.get_mut(&id) else {
            return;
        };
        if h.sequence != req.next_seq {
            let msg = format!(
                "frame {} arrived where {} was due",
                h.sequence, req.next_seq
            );
            return self.reject(id, ReplyStatus::Protocol, msg);
        }
        req.next_seq += 1;
        match h.kind {
            FrameKind::Tile => {
                // check_fields passed above.
                let tile = Tile::unchecked(h.position, h.tokens, h.hidden, frame.payload);
                match req.attachment.deliver(tile) {
                    Ok(_complete) => req.tiles += 1,
                    Err(Refusal {
                        status,
                        message: msg,
                    }) => {
                        self.forget(id);
                        self.reply(Reply::new(status, id, 0, msg));
                    }
                }
            }
            FrameKind::End => {
                let Some(req) = self.active.remove(&id) else {
                    return;
                };
                match req.attachment.end(h.tokens) {
                    Ok(Some(frames)) => self.reply(Reply::new(ReplyStatus::Ok, id, frames, "")),
                    // The registry answers once the request is claimed or given up on.
                    Ok(None) => {}
                    Err(Refusal {
                        status,
                        message: msg,
                    }) => {
                        self.remember_failure(id);
                        self.reply(Reply::new(status, id, req.tiles, msg));
                    }
                }
            }
            FrameKind::Abort => {
                let Some(req) = self.active.remove(&id) else {
                    return;
                };
                let reason = String::from_utf8_lossy(&frame.payload).into_owned();
                req.attachment.abort(reason.clone());
                self.remember_failure(id);
                self.reply(Reply::new(ReplyStatus::Aborted, id, req.tiles, reason));
            }
        }
    }

    /// The stream broke: every request on it fails with `error`, and the sender is told (naming
    /// `request` when the broken frame's header could be read).
    pub(crate) fn on_broken(&mut self, error: FrameError, request: Option<RequestId>) {
        let status = ReplyStatus::for_frame_error(&error);
        let named = request.or(self.bound).unwrap_or(RequestId(0));
        self.reply(Reply::new(status, named, 0, error.to_string()));
        if let Some(id) = request
            && !self.active.contains_key(&id)
        {
            let inbox_error = InboxError::Frame {
                peer: self.peer.clone(),
                error: error.clone(),
            };
            self.fail_unattached(id, inbox_error, Refusal::new(status, error.to_string()));
        }
        for (_, req) in self.active.drain() {
            let inbox_error = InboxError::Frame {
                peer: self.peer.clone(),
                error: error.clone(),
            };
            req.attachment
                .fail(inbox_error, Refusal::new(status, error.to_string()));
        }
    }

    /// Fails a request because of a malformed frame that left the stream aligned.
    fn reject_frame(&mut self, id: RequestId, error: FrameError) {
        let status = ReplyStatus::for_frame_error(&error);
        let msg = error.to_string();
        let inbox_error = InboxError::Frame {
            peer: self.peer.clone(),
            error,
        };
        self.fail_request(id, inbox_error, status, msg);
    }

    /// Fails a request for a protocol reason.
    fn reject(&mut self, id: RequestId, status: ReplyStatus, msg: String) {
        let inbox_error = InboxError::Protocol {
            peer: self.peer.clone(),
            detail: msg.clone(),
        };
        self.fail_request(id, inbox_error, status, msg);
    }

    fn fail_request(&mut self, id: RequestId, error: InboxError, status: ReplyStatus, msg: String) {
        let tiles = match self.active.remove(&id) {
            Some(req) => {
                let tiles = req.tiles;
                req.attachment
                    .fail(error, Refusal::new(status, msg.clone()));
                tiles
            }
            None => {
                self.fail_unattached(id, error, Refusal::new(status, msg.clone()));
                0
            }
        };
        self.remember_failure(id);
        self.reply(Reply::new(status, id, tiles, msg));
    }

    /// Fails a request whose first frame was already bad, so a registered consumer learns of it
    /// at once instead of waiting for its timeout.
    fn fail_unattached(&self, id: RequestId, error: InboxError, refusal: Refusal) {
        if let Ok(attachment) = self.registry.attach(id, self.replies.clone(), &self.peer) {
            attachment.fail(error, refusal);
        }
    }

    fn forget(&mut self, id: RequestId) {
        if let Some(req) = self.active.remove(&id) {
            // The registry already closed the entry; finish the attachment quietly.
            let refusal = Refusal::new(ReplyStatus::Cancelled, "");
            req.attachment.fail(
                InboxError::Protocol {
                    peer: self.peer.clone(),
                    detail: String::new(),
                },
                refusal,
            );
        }
        self.remember_failure(id);
    }

    fn remember_failure(&mut self, id: RequestId) {
        if self.failed.len() == REMEMBERED_FAILURES {
            self.failed.pop_front();
        }
        self.failed.push_back(id);
    }

    fn reply(&self, reply: Reply) {
        if let Err(e) = self.replies.try_send(reply) {
            tracing::warn!(peer = %self.peer, error = %e, "feature reply dropped: sender not reading replies");
        }
    }
}
