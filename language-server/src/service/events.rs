//! Engine events as `Generate` stream items.

use dvd_proto::common::v1::{FinishReason, Usage};
use dvd_proto::language::v1::{
    GenerateDone, GenerateEvent, GenerateTimings, TokenDelta, generate_event,
};
use tonic::Status;

use crate::engine::{EngineEvent, FailureKind, SequenceTimings};
use crate::sampling::StopReason;

/// The stream items for one engine event, and whether it was the request's last.
pub(crate) fn stream_items(
    event: EngineEvent,
    return_token_ids: bool,
) -> (Vec<Result<GenerateEvent, Status>>, bool) {
    match event {
        EngineEvent::Token { token, text, .. } => {
            let ids = if return_token_ids {
                vec![token]
            } else {
                Vec::new()
            };
            if text.is_empty() && ids.is_empty() {
                return (Vec::new(), false);
            }
            (vec![Ok(delta(text, ids))], false)
        }
        EngineEvent::Finished {
            reason,
            text,
            prompt_tokens,
            image_tokens,
            cached_tokens,
            completion_tokens,
            timings,
            ..
        } => {
            let mut items = Vec::new();
            if !text.is_empty() {
                items.push(Ok(delta(text, Vec::new())));
            }
            let (finish, stop_reason) = match reason {
                StopReason::MaxTokens => (FinishReason::Length, String::new()),
                StopReason::StopString(s) => (FinishReason::Stop, s),
                StopReason::Eos(_) | StopReason::StopToken(_) => {
                    (FinishReason::Stop, String::new())
                }
            };
            let usage = Usage {
                prompt_tokens: prompt_tokens as u32,
                completion_tokens: completion_tokens as u32,
                total_tokens: (prompt_tokens + completion_tokens) as u32,
                image_tokens: image_tokens as u32,
                cached_prompt_tokens: cached_tokens as u32,
            };
            items.push(Ok(done(finish, stop_reason, Some(usage), timings)));
            (items, true)
        }
        EngineEvent::Cancelled { .. } => (
            vec![Ok(done(
                FinishReason::Cancelled,
                String::new(),
                None,
                SequenceTimings::default(),
            ))],
            true,
        ),
        EngineEvent::Failed { kind, message, .. } => {
            let status = match kind {
                FailureKind::InvalidInput => Status::invalid_argument(message),
                FailureKind::FeaturesTimedOut => Status::deadline_exceeded(message),
                FailureKind::FeaturesFailed => Status::aborted(message),
                FailureKind::Internal => Status::internal(message),
            };
            (vec![Err(status)], true)
        }
    }
}

fn delta(text: String, token_ids: Vec<u32>) -> GenerateEvent {
    GenerateEvent {
        event: Some(generate_event::Event::Delta(TokenDelta { text, token_ids })),
    }
}

fn done(
    finish: FinishReason,
    stop_reason: String,
    usage: Option<Usage>,
    t: SequenceTimings,
) -> GenerateEvent {
    let us = |d: std::time::Duration| d.as_micros() as u64;
    GenerateEvent {
        event: Some(generate_event::Event::Done(GenerateDone {
            finish_reason: finish as i32,
            stop_reason,
            usage,
            timings: Some(GenerateTimings {
                queue_us: us(t.queue),
                feature_wait_us: us(t.feature_wait),
                prefill_us: us(t.prefill),
                decode_us: us(t.decode),
                time_to_first_token_us: us(t.time_to_first_token),
                total_us: us(t.total),
            }),
        })),
    }
}
