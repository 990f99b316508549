//! `POST /v1/chat/completions`: parse, convert, start the request on the backend, then answer
//! with one `chat.completion` or with server-sent chunks.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use dvd_proto::api::v1::chat_event;
use dvd_serve::telemetry::propagation::follow_headers;
use futures::StreamExt;
use tracing::Instrument;

use super::AppState;
use super::convert::chat_call;
use super::error::ApiError;
use super::openai::{
    AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, TimingsBody, UsageBody,
    finish_reason,
};
use super::sse;
use crate::{ChatStream, GatewayError};

/// The handler: the request's span (a client's `traceparent` header its parent) covers the
/// whole answer.
pub(super) async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::from_rejection(rejection, state.limits.max_body_bytes)
                .into_response();
        }
    };
    let call = match chat_call(body) {
        Ok(call) => call,
        Err(e) => return e.into_response(),
    };
    let span = tracing::info_span!(
        "chat",
        otel.kind = "server",
        api = "openai",
        request_id = tracing::field::Empty
    );
    follow_headers(&span, &headers);
    let events = match state.backend.chat(call.request).instrument(span).await {
        Ok(events) => events,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if call.stream {
        sse::response(events, call.include_usage, state.limits.sse_keep_alive)
    } else {
        match collect(events).await {
            Ok(completion) => Json(completion).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// Gathers a whole stream into one `chat.completion`; dropping this future (the client went
/// away) drops the stream and so cancels the request.
async fn collect(mut events: ChatStream) -> Result<ChatCompletion, ApiError> {
    let mut content = String::new();
    while let Some(event) = events.next().await {
        let event = event?;
        match event.event {
            Some(chat_event::Event::Delta(delta)) => content.push_str(&delta.content),
            Some(chat_event::Event::Done(done)) => {
                let finish_reason = finish_reason(done.finish_reason())?;
                return Ok(ChatCompletion {
                    id: event.id,
                    object: "chat.completion",
                    created: event.created,
                    model: event.model,
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content,
                        },
                        logprobs: None,
                        finish_reason,
                    }],
                    usage: UsageBody::from(done.usage.unwrap_or_default()),
                    timings: done.timings.map(TimingsBody::from),
                });
            }
            // An event without a payload carries nothing.
            None => {}
        }
    }
    Err(GatewayError::Upstream("the response ended before generation finished".into()).into())
}
