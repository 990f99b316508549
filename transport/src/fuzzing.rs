//! Entry points for fuzzers and their corpus-replay tests (`fuzz/`, `cli/tests/fuzz_corpus.rs`):
//! the receive path exactly as a listener runs it, on bytes instead of a socket.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::frame::{FrameHeader, HEADER_LEN};
use crate::session::{Receiving, Session};
use crate::{InboxConfig, InboxRegistry, ListenerConfig, RequestId};

/// The request a fuzzed stream may feed: registered, expecting two images, so frames that name
/// it reach an inbox (a seed corpus of valid frames for it guides the fuzzer there).
pub const FUZZ_REQUEST: RequestId = RequestId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);

/// Feeds `bytes` as one TCP feature stream to a session over a registry holding
/// [`FUZZ_REQUEST`], then drains that request's inbox; every tile that comes out must match
/// the frame that carried it. Panics only on a bug.
pub fn receive_stream(bytes: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let config = ListenerConfig {
            // Small, so the fuzzer reaches the size limit too.
            max_frame_payload: 1 << 20,
            ..ListenerConfig::default()
        };
        let registry = InboxRegistry::new(InboxConfig::default());
        let Ok(mut inbox) = registry.register(FUZZ_REQUEST, Some(2)) else {
            return;
        };
        let receiving = Receiving::new(registry.clone(), config);
        let (replies, mut rx) = mpsc::channel(1024);
        let mut session = Session::new(registry, replies, "fuzz".into(), false);
        let mut reader = bytes;
        receiving
            .pump(&mut reader, &mut session, &CancellationToken::new())
            .await;
        drop(session);
        while rx.try_recv().is_ok() {}
        // A stream whose first header names the request has told the inbox something (tiles,
        // the end, or a failure), so once the stream is over the inbox yields what arrived and
        // then ends or fails: it never hangs. (A stream broken before any readable header
        // cannot name a request; its inbox waits for its own timeout, as it should.)
        let names_request = bytes
            .first_chunk::<HEADER_LEN>()
            .and_then(|h| FrameHeader::decode(h).ok())
            .is_some_and(|h| h.request_id == FUZZ_REQUEST);
        if !names_request {
            return;
        }
        let drained = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while let Ok(Some(tile)) = inbox.next_tile().await {
                let expected = crate::Tile::expected_len(tile.tokens, tile.hidden);
                assert_eq!(tile.data.len() as u64, expected, "a tile of the wrong size");
            }
        })
        .await;
        assert!(drained.is_ok(), "the inbox hung after its stream ended");
    });
}

/// Decodes and checks one header the way the receive path does.
pub fn decode_header(bytes: &[u8]) {
    let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
        return;
    };
    if let Ok(header) = FrameHeader::decode(h) {
        let _ = header.check_size(1 << 20);
        let _ = header.check_fields();
        // What decodes re-encodes to the same bytes.
        assert_eq!(FrameHeader::decode(&header.encode()).ok(), Some(header));
    }
}

/// Valid streams for [`FUZZ_REQUEST`]: two one-tile images then `End`; the same split after
/// its first frame; and one image's tile with an `Abort`. Seeds of the fuzz corpus.
pub fn seed_streams() -> Vec<Vec<u8>> {
    let tile = |image_index: u16| crate::Tile {
        image_index,
        image_count: 2,
        tile_index: 0,
        tile_count: 1,
        tokens: 2,
        hidden: 4,
        data: bytes::Bytes::from((0..16u8).collect::<Vec<_>>()),
    };
    let frame = |header: FrameHeader, payload: &[u8]| {
        let mut out = header.encode().to_vec();
        out.extend_from_slice(payload);
        out
    };
    let (a, b) = (tile(0), tile(1));
    let whole = [
        frame(FrameHeader::tile(FUZZ_REQUEST, 0, &a), &a.data),
        frame(FrameHeader::tile(FUZZ_REQUEST, 1, &b), &b.data),
        frame(FrameHeader::end(FUZZ_REQUEST, 2, 2), &[]),
    ]
    .concat();
    let first = frame(FrameHeader::tile(FUZZ_REQUEST, 0, &a), &a.data);
    let aborted = [
        first.clone(),
        frame(
            FrameHeader::abort(FUZZ_REQUEST, 1, b"encoder failed"),
            b"encoder failed",
        ),
    ]
    .concat();
    vec![whole, first, aborted]
}
