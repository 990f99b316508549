//! The receiving side of replies: writing a session's replies back to the sender.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Reply;

/// Writes replies from `rx` until every sender is gone or `stop` is cancelled, then writes what is
/// still queued and shuts the writer down (for QUIC this finishes the stream).
pub(crate) async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Reply>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            reply = rx.recv() => match reply {
                Some(reply) => {
                    if writer.write_all(&reply.encode()).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            () = stop.cancelled() => {
                while let Ok(reply) = rx.try_recv() {
                    if writer.write_all(&reply.encode()).await.is_err() {
                        return;
                    }
                }
                break;
            }
        }
    }
    let _ = writer.shutdown().await;
}
