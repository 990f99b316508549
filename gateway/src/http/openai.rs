//! Wire types of the OpenAI chat completions API: the request as clients send it (unknown
//! fields ignored) and the responses, models list and health bodies this server sends.

use std::fmt;

use dvd_proto::api::v1::ChatTimings;
use dvd_proto::common::v1::{FinishReason, Usage};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::GatewayError;

// ---------------------------------------------------------------------------------------------
// Request.

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub user: Option<String>,
    // Extensions in vLLM's spelling.
    /// `-1` or `0` disables it.
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// One message of `messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct RequestMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

/// `content`: a string or an array of parts.
#[derive(Debug)]
pub(crate) enum MessageContent {
    Text(String),
    Parts(Vec<RequestPart>),
}

/// One element of an array `content`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum RequestPart {
    Text {
        text: String,
    },
    ImageUrl {
        #[serde(deserialize_with = "url_or_object")]
        image_url: ImageUrl,
    },
    VideoUrl {
        #[serde(deserialize_with = "url_or_object")]
        video_url: VideoUrl,
    },
}

/// `image_url`: `{"url": ..}` (`detail` ignored; `max_tiles` is an extension) or the URL itself.
#[derive(Debug, Deserialize)]
pub(crate) struct ImageUrl {
    pub url: String,
    pub max_tiles: Option<u32>,
}

/// `video_url` (vLLM's form): `{"url": ..}` with the extensions `num_frames` and `max_tiles`
/// (per frame), or the URL itself.
#[derive(Debug, Deserialize)]
pub(crate) struct VideoUrl {
    pub url: String,
    pub num_frames: Option<u32>,
    pub max_tiles: Option<u32>,
}

impl From<String> for ImageUrl {
    fn from(url: String) -> Self {
        Self {
            url,
            max_tiles: None,
        }
    }
}

impl From<String> for VideoUrl {
    fn from(url: String) -> Self {
        Self {
            url,
            num_frames: None,
            max_tiles: None,
        }
    }
}

/// `stop`: a string or an array of strings.
#[derive(Debug)]
pub(crate) struct Stop(pub Vec<String>);

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrSeq {
            expecting: "a string or an array of content parts",
            one: MessageContent::Text,
            many: MessageContent::Parts,
        })
    }
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrSeq {
            expecting: "a string or an array of strings",
            one: |s| Stop(vec![s]),
            many: Stop,
        })
    }
}

/// Visits a field OpenAI lets be a string or an array (`content`, `stop`): `one` makes the
/// value of a string, `many` of an array of `T`.
struct StringOrSeq<T, V> {
    expecting: &'static str,
    one: fn(String) -> V,
    many: fn(Vec<T>) -> V,
}

impl<'de, T: Deserialize<'de>, V> Visitor<'de> for StringOrSeq<T, V> {
    type Value = V;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<V, E> {
        Ok((self.one)(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<V, E> {
        Ok((self.one)(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V, A::Error> {
        Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(self.many)
    }
}

/// A media part's URL field: the URL string itself, or an object with a `url` (`T`).
fn url_or_object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + From<String>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de> + From<String>> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object with a `url` or a URL string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Ok(T::from(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, url: String) -> Result<T, E> {
            Ok(T::from(url))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

// ---------------------------------------------------------------------------------------------
// Responses.

/// A non-streamed `chat.completion`.
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: UsageBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<TimingsBody>,
}

/// The one choice of a `chat.completion`.
#[derive(Debug, Serialize)]
pub(crate) struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

/// The generated message.
#[derive(Debug, Serialize)]
pub(crate) struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

/// A streamed `chat.completion.chunk`.
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice>,
    /// Absent unless `stream_options.include_usage`; then `null` except on the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<TimingsBody>,
}

/// The one choice of a chunk.
#[derive(Debug, Serialize)]
pub(crate) struct ChunkChoice {
    pub index: u32,
    pub delta: ChunkDelta,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds to the message.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ChunkDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `usage`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UsageBody {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`: `cached_tokens` as OpenAI, `image_tokens` ours.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: u32,
    pub image_tokens: u32,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_prompt_tokens,
                image_tokens: u.image_tokens,
            },
        }
    }
}

/// Non-standard `timings`: the server's latency breakdown in microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TimingsBody {
    pub vision_us: u64,
    pub feature_wait_us: u64,
    pub prefill_us: u64,
    pub decode_us: u64,
    pub time_to_first_token_us: u64,
    pub total_us: u64,
}

impl From<ChatTimings> for TimingsBody {
    fn from(t: ChatTimings) -> Self {
        Self {
            vision_us: t.vision_us,
            feature_wait_us: t.feature_wait_us,
            prefill_us: t.prefill_us,
            decode_us: t.decode_us,
            time_to_first_token_us: t.time_to_first_token_us,
            total_us: t.total_us,
        }
    }
}

/// OpenAI's `finish_reason` for a finished generation; a cancelled or failed one is an error.
pub(crate) fn finish_reason(reason: FinishReason) -> Result<&'static str, GatewayError> {
    match reason {
        FinishReason::Stop => Ok("stop"),
        FinishReason::Length => Ok("length"),
        FinishReason::Cancelled => Err(GatewayError::Unavailable(
            "the request was cancelled before it finished".into(),
        )),
        FinishReason::Error => Err(GatewayError::Upstream(
            "generation failed on the server".into(),
        )),
        FinishReason::Unspecified => Err(GatewayError::Upstream(
            "the server ended generation without a finish reason".into(),
        )),
    }
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// One model, also the body of `GET /v1/models/{id}`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    pub max_model_len: u32,
}

impl From<dvd_proto::api::v1::Model> for ModelCard {
    fn from(m: dvd_proto::api::v1::Model) -> Self {
        Self {
            id: m.id,
            object: "model",
            created: m.created,
            owned_by: m.owned_by,
            max_model_len: m.max_model_len,
        }
    }
}

/// `GET /health`.
#[derive(Debug, Serialize)]
pub(crate) struct HealthBody {
    /// `ok`, `not_serving`, `draining` or `unknown`.
    pub status: &'static str,
    pub vision_servers_ready: u32,
    pub language_servers_ready: u32,
    pub version: String,
}
