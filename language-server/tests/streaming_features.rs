#![allow(clippy::unwrap_used)]
//! Prompts whose image features arrive tile by tile: prefill starts on the text before the image
//! and on each tile as it lands, and the tokens equal those of the whole prompt at once; features
//! that never come, or do not fit, fail only their request and free its blocks; the prefix cache
//! shares image blocks only between identical images.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dvd_language_server::engine::{
    CompleteRequest, EngineEvent, FailureKind, FeatureLimits, FeatureStreamRequest, FeatureTile,
    ImageSlot, PromptPiece, Scheduler, SchedulerConfig,
};
use dvd_language_server::generate::ImageFeatures;
use dvd_language_server::model::LanguageModel;
use dvd_language_server::text::{ImageTokenIds, Tokenizer};

use crate::common::{
    IMG_CONTEXT, collect_events, engine, greedy, ids, image_features, model_and_tokenizer,
};

const MODEL: &str = "internvl-dense-hf";

struct Setup {
    model: Arc<LanguageModel>,
    tokenizer: Tokenizer,
    /// The reference image prompt with its features expanded.
    image_ids: Vec<u32>,
    features: Tensor,
    tokens_per_tile: Vec<usize>,
    /// Text before `<img>` and after `</img>`.
    before: Vec<u32>,
    after: Vec<u32>,
}

fn setup() -> Setup {
    let (model, tokenizer) = model_and_tokenizer(MODEL);
    let image_ids = ids(MODEL, "image_ids");
    let (features, tokens_per_tile) = image_features(MODEL);
    let marks = ImageTokenIds::from_tokenizer(&tokenizer).unwrap();
    assert_eq!(marks.context, IMG_CONTEXT);
    let start = image_ids.iter().position(|&t| t == marks.start).unwrap();
    let end = image_ids.iter().position(|&t| t == marks.end).unwrap();
    Setup {
        before: image_ids[..start].to_vec(),
        after: image_ids[end + 1..].to_vec(),
        model,
        tokenizer,
        image_ids,
        features,
        tokens_per_tile,
    }
}

fn scheduler(s: &Setup, blocks: usize, max_step_tokens: usize) -> Scheduler {
    let config = SchedulerConfig {
        max_step_tokens,
        feature_limits: FeatureLimits {
            max_tokens_per_tile: s.tokens_per_tile[0],
        },
        ..SchedulerConfig::default()
    };
    engine(&s.model, &s.tokenizer, blocks, config).0
}

fn streaming(s: &Setup, id: u64, hash: Option<[u8; 32]>, max_new: usize) -> FeatureStreamRequest {
    FeatureStreamRequest {
        id,
        pieces: vec![
            PromptPiece::Text(s.before.clone()),
            PromptPiece::Image(ImageSlot {
                content_hash: hash,
                max_tiles: s.tokens_per_tile.len(),
            }),
            PromptPiece::Text(s.after.clone()),
        ],
        params: greedy(max_new),
        span: tracing::Span::none(),
    }
}

/// The reference image's tiles, in order; the last carries a digest of the features.
fn tiles(s: &Setup) -> Vec<FeatureTile> {
    let count = s.tokens_per_tile.len();
    let mut start = 0;
    s.tokens_per_tile
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let features = s.features.narrow(0, start, n).unwrap();
            start += n;
            FeatureTile {
                image_index: 0,
                tile_index: i,
                tile_count: count,
                features,
                image_digest: (i + 1 == count).then_some([7; 32]),
            }
        })
        .collect()
}

/// Steps until idle, pushing the next tile of `feeds[id]` whenever a step computed nothing for
/// want of features (or every `every` steps); returns tokens and terminal events.
fn run(
    scheduler: &mut Scheduler,
    mut feeds: HashMap<u64, Vec<FeatureTile>>,
) -> (HashMap<u64, Vec<u32>>, Vec<EngineEvent>) {
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut ended = Vec::new();
    for _ in 0..10_000 {
        if scheduler.is_idle() {
            return (tokens, ended);
        }
        let events = scheduler.step().unwrap();
        if scheduler.last_step_tokens() == 0 {
            // Stalled: deliver one more tile to each request still waiting.
            for (&id, feed) in feeds.iter_mut() {
                if !feed.is_empty() {
                    let tile = feed.remove(0);
                    ended.extend(scheduler.push_features(id, tile).unwrap_or_default());
                }
            }
        }
        collect_events(events, &mut tokens, &mut ended);
    }
    panic!("engine does not make progress");
}

#[test]
fn tiles_arriving_one_by_one_give_the_tokens_of_the_whole_prompt() {
    let s = setup();
    assert!(
        s.tokens_per_tile.len() >= 2,
        "the fixture image has several tiles"
    );
    // Reference: the complete prompt at once.
    let mut whole = scheduler(&s, 128, 512);
    whole
        .add(CompleteRequest {
            id: 1,
            prompt_ids: s.image_ids.clone(),
            images: Some(ImageFeatures {
                token_id: IMG_CONTEXT,
                features: s.features.clone(),
            }),
            image_spans: Vec::new(),
            params: greedy(8),
        })
        .unwrap();
    let (want, _) = run(&mut whole, HashMap::new());

    let mut engine = scheduler(&s, 128, 512);
    engine
        .add_feature_stream(streaming(&s, 1, None, 8))
        .unwrap();
    // The text before the image is prefilled (whole blocks of it) before any feature exists.
    engine.step().unwrap();
    assert_eq!(engine.last_step_tokens(), (s.before.len() + 1) / 16 * 16);
    assert!(engine.last_step_tokens() > 0);
    // Then the sequence stalls, without failing, until a tile comes.
    engine.step().unwrap();
    assert_eq!(engine.last_step_tokens(), 0);
    let stats = engine.stats();
    assert_eq!((stats.running, stats.waiting_for_features), (1, 1));
    // Each tile is prefilled as soon as it arrives.
    let mut feed = tiles(&s);
    let first = feed.remove(0);
    assert!(engine.push_features(1, first).unwrap().is_empty());
    engine.step().unwrap();
    let known = s.before.len() + 1 + s.tokens_per_tile[0];
    assert_eq!(
        engine.last_step_tokens(),
        known / 16 * 16 - (s.before.len() + 1) / 16 * 16
    );
    let (got, ended) = run(&mut engine, HashMap::from([(1, feed)]));
    assert_eq!(got, want);
    let EngineEvent::Finished {
        prompt_tokens,
        image_tokens,
        timings,
        ..
    } = &ended[0]
    else {
        panic!("{ended:?}");
    };
    assert_eq!(*prompt_tokens, s.image_ids.len());
    assert_eq!(*image_tokens, s.features.dim(0).unwrap());
    assert!(timings.feature_wait > std::time::Duration::ZERO);
    assert_eq!(engine.stats().waiting_for_features, 0);
}

#[test]
fn chunked_prefill_across_tiles_interleaves_with_other_requests() {
    let s = setup();
    let mut whole = scheduler(&s, 128, 512);
    whole.add_feature_stream(streaming(&s, 1, None, 6)).unwrap();
    whole
        .add_feature_stream(streaming(&s, 2, Some([1; 32]), 6))
        .unwrap();
    let all = HashMap::from([(1, tiles(&s)), (2, tiles(&s))]);
    let (want, _) = run(&mut whole, all.clone());
    // A 5-token budget cuts every tile into many chunks shared with the other request.
    let mut chunked = scheduler(&s, 128, 5);
    chunked
        .add_feature_stream(streaming(&s, 1, None, 6))
        .unwrap();
    chunked
        .add_feature_stream(streaming(&s, 2, Some([1; 32]), 6))
        .unwrap();
    let (got, _) = run(&mut chunked, all);
    assert_eq!(got, want);
    assert_eq!(got[&1], got[&2]);
}

#[test]
fn features_that_never_arrive_fail_the_request_and_free_its_blocks() {
    let s = setup();
    let mut engine = scheduler(&s, 64, 512);
    engine
        .add_feature_stream(streaming(&s, 1, None, 4))
        .unwrap();
    engine.step().unwrap();
    assert!(engine.stats().blocks_used > 0);
    let event = engine
        .fail(
            1,
            FailureKind::FeaturesTimedOut,
            "no features in 5 ms".into(),
        )
        .unwrap();
    assert!(matches!(
        event,
        EngineEvent::Failed {
            id: 1,
            kind: FailureKind::FeaturesTimedOut,
            ..
        }
    ));
    assert_eq!(engine.stats().blocks_used, 0);
    assert!(engine.is_idle());
    // Late tiles for it are ignored.
    assert!(engine.push_features(1, tiles(&s).remove(0)).is_none());
    assert!(
        engine
            .fail(1, FailureKind::Internal, String::new())
            .is_none()
    );
}

#[test]
fn tiles_that_do_not_fit_fail_only_their_request() {
    let s = setup();
    let mut engine = scheduler(&s, 128, 512);
    for id in 1..=4 {
        engine
            .add_feature_stream(streaming(&s, id, None, 4))
            .unwrap();
    }
    let hidden = s.model.config().hidden_size;
    let mut bad = tiles(&s).remove(0);
    // Wrong width.
    bad.features = Tensor::zeros((4, hidden + 1), DType::F32, &Device::Cpu).unwrap();
    let failed = engine.push_features(1, bad.clone()).unwrap();
    // More tiles than the slot allows.
    bad.features = Tensor::zeros((4, hidden), DType::F32, &Device::Cpu).unwrap();
    bad.tile_count = s.tokens_per_tile.len() + 1;
    let too_many = engine.push_features(2, bad.clone()).unwrap();
    // More tokens per tile than any tile has.
    bad.tile_count = s.tokens_per_tile.len();
    bad.features =
        Tensor::zeros((s.tokens_per_tile[0] + 1, hidden), DType::F32, &Device::Cpu).unwrap();
    let too_long = engine.push_features(3, bad).unwrap();
    for (events, id, needle) in [
        (failed, 1, "hidden size"),
        (too_many, 2, "tiles"),
        (too_long, 3, "feature tokens"),
    ] {
        match &events[..] {
            [
                EngineEvent::Failed {
                    id: got,
                    kind: FailureKind::InvalidInput,
                    message,
                },
            ] => {
                assert_eq!(*got, id);
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The fourth request is untouched and completes.
    let (got, ended) = run(&mut engine, HashMap::from([(4, tiles(&s))]));
    assert_eq!(got[&4].len(), 4);
    assert_eq!(ended.len(), 1);
}

#[test]
fn image_blocks_are_shared_only_between_identical_images() {
    let s = setup();
    let mut engine = scheduler(&s, 128, 512);
    engine
        .add_feature_stream(streaming(&s, 1, Some([9; 32]), 4))
        .unwrap();
    let (first, _) = run(&mut engine, HashMap::from([(1, tiles(&s))]));
    let cached = |ended: &[EngineEvent]| match ended {
        [EngineEvent::Finished { cached_tokens, .. }] => *cached_tokens,
        other => panic!("{other:?}"),
    };
    // The same image (same hash): its blocks are served from the cache as its features arrive.
    engine
        .add_feature_stream(streaming(&s, 2, Some([9; 32]), 4))
        .unwrap();
    let (same, ended) = run(&mut engine, HashMap::from([(2, tiles(&s))]));
    assert_eq!(same[&2], first[&1]);
    let full_blocks = (s.image_ids.len() - 1) / 16 * 16;
    assert!(
        cached(&ended) >= s.before.len() / 16 * 16 + 16,
        "{}",
        cached(&ended)
    );
    assert!(cached(&ended) <= full_blocks);
    // Another image with the same placeholder ids: only the text before it is shared.
    engine
        .add_feature_stream(streaming(&s, 3, Some([8; 32]), 4))
        .unwrap();
    let (_, ended) = run(&mut engine, HashMap::from([(3, tiles(&s))]));
    assert_eq!(cached(&ended), (s.before.len() + 1) / 16 * 16);
}
