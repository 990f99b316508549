//! The same timed streamed chat request over the public gRPC API (`dvd.api.v1`
//! `InferenceService.Chat`): images travel as their `data:` URLs, usage comes from the `Done`
//! event.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use dvd_proto::api::v1::inference_service_client::InferenceServiceClient;
use dvd_proto::api::v1::{
    ChatRequest, ContentPart, Image, ListModelsRequest, Message, chat_event, content_part, image,
};
use dvd_proto::common::v1::SamplingParams;
use dvd_proto::limits::{inference_client, tuned_endpoint};
use serde_json::Value;
use tonic::transport::Channel;

use super::client::{Ask, Timing};

/// A client of the gateway's gRPC API (`host:port` of its gRPC listener).
pub async fn connect(authority: &str) -> Result<InferenceServiceClient<Channel>> {
    let channel = tuned_endpoint(authority)?
        .connect()
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    Ok(inference_client(channel))
}

/// The first model `ListModels` returns.
pub async fn first_model(client: &mut InferenceServiceClient<Channel>) -> Result<String> {
    let models = client.list_models(ListModelsRequest {}).await?.into_inner();
    models
        .models
        .first()
        .map(|m| m.id.clone())
        .context("ListModels returned no model")
}

/// The user message's OpenAI-style `content` (a string, or text and `image_url` parts) as
/// gRPC content parts.
fn parts(content: &Value) -> Result<Vec<ContentPart>> {
    let text = |t: &str| ContentPart {
        part: Some(content_part::Part::Text(t.to_string())),
    };
    match content {
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item["type"].as_str() {
                Some("text") => Ok(text(item["text"].as_str().unwrap_or_default())),
                Some("image_url") => Ok(ContentPart {
                    part: Some(content_part::Part::Image(Image {
                        source: Some(image::Source::Url(
                            item["image_url"]["url"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        )),
                        max_tiles: None,
                    })),
                }),
                other => bail!("unknown content part type {other:?}"),
            })
            .collect(),
        _ => bail!("content must be a string or a list of parts"),
    }
}

/// Sends one streamed, greedy `Chat` (EOS ignored only when asked) and times it.
pub async fn chat(client: &InferenceServiceClient<Channel>, ask: &Ask<'_>) -> Result<Timing> {
    let timeout = ask.timeout;
    let request = ChatRequest {
        model: ask.model.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: parts(ask.content)?,
        }],
        sampling: Some(SamplingParams {
            max_tokens: ask.max_tokens,
            ignore_eos: ask.ignore_eos,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut client = client.clone();
    let exchange = async move {
        let started = Instant::now();
        let mut stream = client.chat(request).await?.into_inner();
        let mut timing = Timing::default();
        let mut last: Option<Instant> = None;
        while let Some(event) = stream.message().await? {
            match event.event {
                Some(chat_event::Event::Delta(delta)) if !delta.content.is_empty() => {
                    let now = Instant::now();
                    match last {
                        None => timing.ttft = Some((now - started).as_secs_f64()),
                        Some(prev) => timing.itl.push((now - prev).as_secs_f64()),
                    }
                    last = Some(now);
                    timing.text.push_str(&delta.content);
                }
                Some(chat_event::Event::Done(done)) => {
                    if let Some(usage) = done.usage {
                        timing.prompt_tokens = usage.prompt_tokens.into();
                        timing.output_tokens = usage.completion_tokens.into();
                        timing.image_tokens = usage.image_tokens.into();
                    }
                    timing.e2el = started.elapsed().as_secs_f64();
                    return Ok(timing);
                }
                _ => {}
            }
        }
        bail!("the stream ended without a Done event")
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no complete answer within {} s", timeout.as_secs_f64()))?
}
