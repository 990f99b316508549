//! OpenAI chat completions request -> `dvd.api.v1.ChatRequest`, with the checks only this
//! front door can name fields for (`n`, roles, empty image URLs, sampling ranges). Image URLs
//! pass through unchanged: the gateway core decodes `data:` URLs and fetches or refuses others.

use dvd_proto::api::v1::{
    ChatRequest, ContentPart, Image, Message, Video, content_part, image, video,
};
use dvd_proto::common::v1::SamplingParams;

use super::error::ApiError;
use super::openai::{ChatCompletionRequest, MessageContent, RequestMessage, RequestPart};

/// OpenAI's default temperature, used when a request sets none (0 would mean greedy).
const DEFAULT_TEMPERATURE: f32 = 1.0;

/// A converted request and how to answer it.
#[derive(Debug)]
pub(crate) struct ChatCall {
    /// What goes to the backend.
    pub request: ChatRequest,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Streamed: end with a usage chunk.
    pub include_usage: bool,
}

/// Converts and checks a request.
pub(crate) fn chat_call(body: ChatCompletionRequest) -> Result<ChatCall, ApiError> {
    if let Some(n) = body.n
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            format!("n = {n} is not supported: this server returns exactly 1 choice"),
        ));
    }
    if body.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let sampling = sampling(&body)?;
    let messages = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let stream = body.stream.unwrap_or(false);
    let include_usage = stream
        && body
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    Ok(ChatCall {
        request: ChatRequest {
            model: body.model,
            messages,
            sampling: Some(sampling),
            user: body.user.unwrap_or_default(),
            request_id: None,
            return_token_ids: false,
        },
        stream,
        include_usage,
    })
}

fn message(i: usize, m: RequestMessage) -> Result<Message, ApiError> {
    let role = match m.role.as_str() {
        // OpenAI's newer name for system instructions.
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role {other:?} is not supported: use system, user or assistant"
                ),
            ));
        }
    };
    let content = match m.content {
        None => Vec::new(),
        Some(MessageContent::Text(text)) => vec![text_part(text)],
        Some(MessageContent::Parts(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, p)| part(i, j, p))
            .collect::<Result<_, _>>()?,
    };
    Ok(Message {
        role: role.to_owned(),
        content,
    })
}

fn text_part(text: String) -> ContentPart {
    ContentPart {
        part: Some(content_part::Part::Text(text)),
    }
}

fn part(i: usize, j: usize, p: RequestPart) -> Result<ContentPart, ApiError> {
    match p {
        RequestPart::Text { text } => Ok(text_part(text)),
        RequestPart::ImageUrl { image_url } => {
            let param = format!("messages[{i}].content[{j}].image_url");
            media_fields(
                &param,
                &image_url.url,
                &[("max_tiles", image_url.max_tiles)],
            )?;
            Ok(ContentPart {
                part: Some(content_part::Part::Image(Image {
                    source: Some(image::Source::Url(image_url.url)),
                    max_tiles: image_url.max_tiles,
                })),
            })
        }
        RequestPart::VideoUrl { video_url } => {
            let param = format!("messages[{i}].content[{j}].video_url");
            let counts = [
                ("num_frames", video_url.num_frames),
                ("max_tiles", video_url.max_tiles),
            ];
            media_fields(&param, &video_url.url, &counts)?;
            Ok(ContentPart {
                part: Some(content_part::Part::Video(Video {
                    source: Some(video::Source::Url(video_url.url)),
                    num_frames: video_url.num_frames,
                    max_tiles: video_url.max_tiles,
                })),
            })
        }
    }
}

/// A media part's `url` is not blank and each of its `counts` given is at least 1.
fn media_fields(param: &str, url: &str, counts: &[(&str, Option<u32>)]) -> Result<(), ApiError> {
    if url.trim().is_empty() {
        return Err(ApiError::invalid(
            format!("{param}.url"),
            format!("{param}.url is empty"),
        ));
    }
    for (field, value) in counts {
        if *value == Some(0) {
            return Err(ApiError::invalid(
                format!("{param}.{field}"),
                format!("{param}.{field} must be at least 1"),
            ));
        }
    }
    Ok(())
}

fn check(
    ok: bool,
    name: &str,
    value: impl std::fmt::Display,
    expected: &str,
) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            name,
            format!("{name} = {value} is out of range: expected {expected}"),
        ))
    }
}

/// An OpenAI presence or frequency penalty: in [-2, 2], 0 when not given.
fn penalty(name: &str, value: Option<f32>) -> Result<f32, ApiError> {
    let value = value.unwrap_or(0.0);
    check((-2.0..=2.0).contains(&value), name, value, "in [-2, 2]")?;
    Ok(value)
}

fn sampling(body: &ChatCompletionRequest) -> Result<SamplingParams, ApiError> {
    // `max_completion_tokens` replaced `max_tokens` in OpenAI's API; it wins when both are set.
    let max_tokens = match (body.max_completion_tokens, body.max_tokens) {
        (Some(n), _) => {
            check(n >= 1, "max_completion_tokens", n, "at least 1")?;
            n
        }
        (None, Some(n)) => {
            check(n >= 1, "max_tokens", n, "at least 1")?;
            n
        }
        // 0: up to the context length.
        (None, None) => 0,
    };
    let temperature = body.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    check(
        temperature.is_finite() && temperature >= 0.0,
        "temperature",
        temperature,
        "a finite number >= 0",
    )?;
    // 0 disables it on the wire, so only (0, 1] is taken from clients.
    let top_p = body.top_p.unwrap_or(0.0);
    if let Some(p) = body.top_p {
        check(p > 0.0 && p <= 1.0, "top_p", p, "in (0, 1]")?;
    }
    let top_k = match body.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) => u32::try_from(k).ok().filter(|_| k > 0).ok_or_else(|| {
            ApiError::invalid(
                "top_k",
                format!(
                    "top_k = {k} is out of range: expected -1, 0 (disabled) or a positive count"
                ),
            )
        })?,
    };
    let presence_penalty = penalty("presence_penalty", body.presence_penalty)?;
    let frequency_penalty = penalty("frequency_penalty", body.frequency_penalty)?;
    // 0 disables it on the wire.
    let repetition_penalty = body.repetition_penalty.unwrap_or(0.0);
    if let Some(r) = body.repetition_penalty {
        check(
            r.is_finite() && r > 0.0,
            "repetition_penalty",
            r,
            "a finite number > 0",
        )?;
    }
    let stop = body.stop.as_ref().map(|s| s.0.clone()).unwrap_or_default();
    if let Some(i) = stop.iter().position(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            format!("stop[{i}] is empty: stop sequences must not be empty"),
        ));
    }
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k,
        seed: body.seed,
        max_tokens,
        stop,
        stop_token_ids: body.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: body.ignore_eos.unwrap_or(false),
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
    })
}
