//! A backend event stream as OpenAI `chat.completion.chunk` server-sent events: a role chunk,
//! content chunks, a final chunk with `finish_reason`, a usage chunk when asked, `[DONE]`.
//! An error ends the stream with one `{"error": {...}}` event and no `[DONE]`.
//!
//! The backend stream is owned by the response body, so a client that disconnects drops it
//! and so cancels the request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dvd_proto::api::v1::{ChatEvent, chat_event};
use futures::StreamExt;
use serde::Serialize;

use super::error::ApiError;
use super::openai::{
    ChatCompletionChunk, ChunkChoice, ChunkDelta, TimingsBody, UsageBody, finish_reason,
};
use crate::{ChatStream, GatewayError};

/// The SSE response for `events`.
pub(crate) fn response(
    events: ChatStream,
    include_usage: bool,
    keep_alive: Option<Duration>,
) -> Response {
    let encoder = Encoder {
        events,
        include_usage,
        started: false,
        finished: false,
        pending: VecDeque::new(),
    };
    let stream = futures::stream::unfold(encoder, |mut encoder| async move {
        let event = encoder.next_event().await?;
        Some((Ok::<_, Infallible>(event), encoder))
    });
    let sse = Sse::new(stream);
    let mut response = match keep_alive {
        Some(interval) => sse
            .keep_alive(KeepAlive::new().interval(interval))
            .into_response(),
        None => sse.into_response(),
    };
    // Reverse proxies (nginx) must not buffer the stream.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// Turns backend events into SSE events, one backend event at a time.
struct Encoder {
    events: ChatStream,
    include_usage: bool,
    /// The role chunk went out.
    started: bool,
    /// Nothing more comes after `pending`.
    finished: bool,
    pending: VecDeque<Event>,
}

impl Encoder {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            match self.events.next().await {
                Some(Ok(event)) => self.on_event(event),
                Some(Err(e)) => self.fail(e),
                None => self.fail(GatewayError::Upstream(
                    "the response ended before generation finished".into(),
                )),
            }
        }
    }

    fn fail(&mut self, e: GatewayError) {
        self.finished = true;
        self.pending
            .push_back(json_event(&ApiError::from(e).body()));
    }

    fn chunk<'a>(
        &self,
        event: &'a ChatEvent,
        delta: ChunkDelta,
        finish_reason: Option<&'static str>,
    ) -> ChatCompletionChunk<'a> {
        ChatCompletionChunk {
            id: &event.id,
            object: "chat.completion.chunk",
            created: event.created,
            model: &event.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: self.include_usage.then_some(None),
            timings: None,
        }
    }

    fn on_event(&mut self, event: ChatEvent) {
        if !self.started {
            self.started = true;
            let role = ChunkDelta {
                role: Some("assistant"),
                content: Some(String::new()),
            };
            self.pending
                .push_back(json_event(&self.chunk(&event, role, None)));
        }
        match &event.event {
            Some(chat_event::Event::Delta(delta)) if !delta.content.is_empty() => {
                let content = ChunkDelta {
                    role: None,
                    content: Some(delta.content.clone()),
                };
                self.pending
                    .push_back(json_event(&self.chunk(&event, content, None)));
            }
            // Deltas without text (held back for a stop string) add nothing.
            Some(chat_event::Event::Delta(_)) => {}
            Some(chat_event::Event::Done(done)) => {
                let reason = match finish_reason(done.finish_reason()) {
                    Ok(reason) => reason,
                    Err(e) => return self.fail(e),
                };
                let mut last = self.chunk(&event, ChunkDelta::default(), Some(reason));
                last.timings = done.timings.map(TimingsBody::from);
                self.pending.push_back(json_event(&last));
                if self.include_usage {
                    let usage = ChatCompletionChunk {
                        choices: Vec::new(),
                        usage: Some(Some(UsageBody::from(done.usage.unwrap_or_default()))),
                        ..self.chunk(&event, ChunkDelta::default(), None)
                    };
                    self.pending.push_back(json_event(&usage));
                }
                self.pending.push_back(Event::default().data("[DONE]"));
                self.finished = true;
            }
            // An event without a payload carries nothing to forward.
            None => {}
        }
    }
}

/// One `data: <json>` event.
fn json_event<T: Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(json) => Event::default().data(json),
        Err(e) => {
            tracing::error!(error = %e, "could not serialise a chat completion chunk");
            Event::default().data(
                r#"{"error":{"message":"could not serialise a response chunk","type":"server_error","param":null,"code":null}}"#,
            )
        }
    }
}
