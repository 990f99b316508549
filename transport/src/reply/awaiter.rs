//! The sending side of a reply: a stream awaiting the receiver's single reply to its request,
//! a refusal that may come early (fail the next `send` fast) or the verdict that ends `finish`.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{Reply, ReplyStatus};
use crate::api::Delivery;
use crate::error::{Result, TransportError};
use crate::request_id::RequestId;

/// Where a stream's reply arrives, and what it has said so far.
#[derive(Debug)]
pub(crate) struct ReplyAwaiter {
    destination: String,
    request: RequestId,
    rx: oneshot::Receiver<Reply>,
    refused: Option<Reply>,
}

/// What [`ReplyAwaiter::check`] found when no refusal had arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    /// The reply channel is open: nothing said yet.
    Listening,
    /// The reply channel closed without a reply (connection or stream gone).
    Closed,
}

impl ReplyAwaiter {
    pub(crate) fn new(
        destination: String,
        request: RequestId,
        rx: oneshot::Receiver<Reply>,
    ) -> Self {
        Self {
            destination,
            request,
            rx,
            refused: None,
        }
    }

    /// The error for a reply other than `Ok`.
    fn rejected(&self, reply: &Reply) -> TransportError {
        TransportError::Rejected {
            destination: self.destination.clone(),
            request: self.request,
            status: reply.status,
            message: reply.message.clone(),
        }
    }

    /// Whether the receiver refused the request already (any reply before `End` is a refusal).
    pub(crate) fn refused(&self) -> bool {
        self.refused.is_some()
    }

    /// Fails with the receiver's refusal if one has arrived; never waits.
    pub(crate) fn check(&mut self) -> Result<Pending> {
        if let Some(reply) = &self.refused {
            return Err(self.rejected(reply));
        }
        match self.rx.try_recv() {
            Ok(reply) => Err(self.refuse(reply)),
            Err(oneshot::error::TryRecvError::Empty) => Ok(Pending::Listening),
            Err(oneshot::error::TryRecvError::Closed) => Ok(Pending::Closed),
        }
    }

    /// Records `reply` as the receiver's refusal and returns the error for it.
    pub(crate) fn refuse(&mut self, reply: Reply) -> TransportError {
        let err = self.rejected(&reply);
        self.refused = Some(reply);
        err
    }

    /// Waits up to `limit` for the reply; `Ok(None)` when the channel closed without one.
    pub(crate) async fn wait(&mut self, limit: Duration) -> Result<Option<Reply>> {
        match tokio::time::timeout(limit, &mut self.rx).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(TransportError::Timeout {
                destination: self.destination.clone(),
                millis: limit.as_millis(),
            }),
        }
    }

    /// Turns the final reply into the stream's result.
    pub(crate) fn conclude(&mut self, reply: Reply, bytes: u64) -> Result<Delivery> {
        if reply.status == ReplyStatus::Ok {
            Ok(Delivery {
                tiles: reply.frames,
                bytes,
            })
        } else {
            Err(self.refuse(reply))
        }
    }
}
