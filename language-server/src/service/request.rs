//! From a `GenerateRequest` to what the engine takes: the request id, the prompt as text pieces
//! around image slots, and sampling parameters. Everything a client can get wrong is caught
//! here, before anything is queued, with an `INVALID_ARGUMENT` naming the field.

use std::time::Duration;

use dvd_proto::common::v1 as common;
use dvd_proto::language::v1::{GenerateRequest, content_part, generate_request};
use dvd_transport::RequestId;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::engine::{ImageSlot, PromptPiece};
use crate::sampling::SamplingParams;
use crate::text::{
    ChatMessage, ContentPart, IMAGE_PLACEHOLDER, PromptFormat, Tokenizer, encode_segments,
};

/// Server-side settings the request conversion needs.
#[derive(Debug, Clone, Copy)]
pub struct RequestDefaults {
    /// Tile limit of an image whose `expected_tiles` is 0 (the thumbnail included).
    pub max_tiles_per_image: usize,
    /// How long to wait for features when the request does not say.
    pub feature_timeout: Duration,
    /// Most images one request may carry.
    pub max_images: usize,
}

impl Default for RequestDefaults {
    fn default() -> Self {
        Self {
            max_tiles_per_image: 13,
            feature_timeout: Duration::from_secs(30),
            max_images: 64,
        }
    }
}

/// A `GenerateRequest` checked and turned into prompt pieces, ready to be queued as a
/// [`FeatureStreamRequest`](crate::engine::FeatureStreamRequest).
#[derive(Debug)]
pub(crate) struct PreparedRequest {
    pub(crate) request_id: RequestId,
    pub(crate) pieces: Vec<PromptPiece>,
    pub(crate) params: SamplingParams,
    pub(crate) images: usize,
    pub(crate) feature_timeout: Duration,
    pub(crate) return_token_ids: bool,
}

/// Turns requests into prompts with the checkpoint's tokenizer and prompt format.
#[derive(Debug)]
pub(crate) struct RequestConverter {
    pub(crate) tokenizer: Tokenizer,
    pub(crate) format: PromptFormat,
    pub(crate) defaults: RequestDefaults,
}

impl RequestConverter {
    pub(crate) fn prepare(&self, request: &GenerateRequest) -> Result<PreparedRequest, Status> {
        let request_id: RequestId = request.request_id.parse().map_err(|e| {
            Status::invalid_argument(format!(
                "request_id {:?}: {e} (32 lowercase hex characters)",
                request.request_id
            ))
        })?;
        let images = request.images.len();
        if images > self.defaults.max_images {
            return Err(Status::invalid_argument(format!(
                "{images} images; at most {} per request",
                self.defaults.max_images
            )));
        }
        let (text, placeholder) = match &request.prompt {
            None => return Err(Status::invalid_argument("prompt is missing")),
            Some(generate_request::Prompt::Raw(raw)) => (raw.clone(), IMAGE_PLACEHOLDER),
            Some(generate_request::Prompt::Chat(chat)) => {
                let messages = chat_messages(chat, images)?;
                let text = self
                    .format
                    .render(&messages, false)
                    .map_err(|e| Status::invalid_argument(format!("chat prompt: {e}")))?;
                (text, self.format.placeholder())
            }
        };
        let segments = encode_segments(&self.tokenizer, &text, placeholder, images)
            .map_err(|e| Status::invalid_argument(format!("prompt: {e}")))?;
        let mut pieces = Vec::with_capacity(2 * images + 1);
        for (k, segment) in segments.into_iter().enumerate() {
            pieces.push(PromptPiece::Text(segment));
            if let Some(slot) = request.images.get(k) {
                pieces.push(PromptPiece::Image(ImageSlot {
                    content_hash: (!slot.content_hash.is_empty())
                        .then(|| Sha256::digest(&slot.content_hash).into()),
                    max_tiles: match slot.expected_tiles {
                        0 => self.defaults.max_tiles_per_image,
                        n => n as usize,
                    },
                }));
            }
        }
        let params = sampling(request.sampling.as_ref())?;
        Ok(PreparedRequest {
            request_id,
            pieces,
            params,
            images,
            feature_timeout: match request.feature_timeout_ms {
                0 => self.defaults.feature_timeout,
                ms => Duration::from_millis(u64::from(ms)),
            },
            return_token_ids: request.return_token_ids,
        })
    }
}

/// The chat prompt's messages; image and video parts must name every image once, in order (a
/// video's frames are consecutive images).
fn chat_messages(
    chat: &dvd_proto::language::v1::ChatPrompt,
    images: usize,
) -> Result<Vec<ChatMessage>, Status> {
    if chat.messages.is_empty() {
        return Err(Status::invalid_argument("chat prompt has no messages"));
    }
    let mut next_image = 0u32;
    let mut messages = Vec::with_capacity(chat.messages.len());
    for (m, message) in chat.messages.iter().enumerate() {
        if message.role.is_empty() {
            return Err(Status::invalid_argument(format!("message {m} has no role")));
        }
        let mut parts = Vec::with_capacity(message.parts.len());
        for part in &message.parts {
            match &part.part {
                Some(content_part::Part::Text(text)) => parts.push(ContentPart::Text(text.clone())),
                Some(content_part::Part::ImageIndex(index)) => {
                    if *index as usize >= images {
                        return Err(Status::invalid_argument(format!(
                            "message {m} refers to image {index}; the request has {images} \
                             image(s)"
                        )));
                    }
                    if *index != next_image {
                        return Err(Status::invalid_argument(format!(
                            "message {m} refers to image {index} where image {next_image} comes \
                             next; each image must be referred to once, in order"
                        )));
                    }
                    next_image += 1;
                    parts.push(ContentPart::Image);
                }
                Some(content_part::Part::Video(video)) => {
                    let first = video.first_image_index;
                    let end = u64::from(first) + u64::from(video.frames);
                    if video.frames == 0 || end > images as u64 {
                        return Err(Status::invalid_argument(format!(
                            "message {m} has a video of {} frame(s) from image {first}; the \
                             request has {images} image(s)",
                            video.frames
                        )));
                    }
                    if first != next_image {
                        return Err(Status::invalid_argument(format!(
                            "message {m} has a video from image {first} where image {next_image} \
                             comes next; each image must be referred to once, in order"
                        )));
                    }
                    next_image += video.frames;
                    parts.push(ContentPart::Video {
                        frames: video.frames as usize,
                    });
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "message {m} has an empty part"
                    )));
                }
            }
        }
        messages.push(match &parts[..] {
            [ContentPart::Text(text)] => ChatMessage::text(&message.role, text.clone()),
            _ => ChatMessage::parts(&message.role, parts),
        });
    }
    if next_image as usize != images {
        return Err(Status::invalid_argument(format!(
            "the messages refer to {next_image} of the request's {images} image(s)"
        )));
    }
    Ok(messages)
}

/// Sampling parameters from the wire form (zero means "server default" where the proto says).
pub(crate) fn sampling(p: Option<&common::SamplingParams>) -> Result<SamplingParams, Status> {
    let default = common::SamplingParams::default();
    let p = p.unwrap_or(&default);
    let params = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: if p.top_p == 0.0 || p.top_p == 1.0 {
            1.0
        } else {
            p.top_p
        },
        min_p: 0.0,
        repetition_penalty: if p.repetition_penalty == 0.0 {
            1.0
        } else {
            p.repetition_penalty
        },
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed: p.seed,
        // 0: up to the context; the engine caps it once the prompt length is known.
        max_new_tokens: match p.max_tokens {
            0 => usize::MAX,
            n => n as usize,
        },
        stop_token_ids: p.stop_token_ids.clone(),
        stop_strings: p.stop.clone(),
        ignore_eos: p.ignore_eos,
    };
    params
        .validate()
        .map_err(|e| Status::invalid_argument(format!("sampling: {e}")))?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_default() {
        let p = sampling(None).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.is_greedy());
        assert_eq!((p.top_p, p.repetition_penalty), (1.0, 1.0));
        assert_eq!(p.max_new_tokens, usize::MAX);
        let bad = common::SamplingParams {
            temperature: -1.0,
            ..Default::default()
        };
        let err = sampling(Some(&bad)).err().map(|s| s.message().to_owned());
        assert!(err.is_some_and(|m| m.contains("temperature")));
    }

    #[test]
    fn a_video_names_its_frames_as_consecutive_images() {
        use dvd_proto::language::v1::{ChatMessage as Message, ChatPrompt, VideoFrames};
        let part = |p: content_part::Part| dvd_proto::language::v1::ContentPart { part: Some(p) };
        let video = |first_image_index, frames| {
            part(content_part::Part::Video(VideoFrames {
                first_image_index,
                frames,
            }))
        };
        let chat = |parts| ChatPrompt {
            messages: vec![Message {
                role: "user".into(),
                parts,
            }],
        };
        let ok = chat(vec![
            part(content_part::Part::ImageIndex(0)),
            video(1, 3),
            part(content_part::Part::Text("what happens?".into())),
        ]);
        let messages = chat_messages(&ok, 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            messages[0].content,
            crate::text::MessageContent::Parts(vec![
                ContentPart::Image,
                ContentPart::Video { frames: 3 },
                ContentPart::Text("what happens?".into()),
            ])
        );
        let refused = |prompt: ChatPrompt, images| {
            chat_messages(&prompt, images)
                .err()
                .map(|s| s.message().to_owned())
                .unwrap_or_default()
        };
        assert!(refused(chat(vec![video(0, 3)]), 2).contains("request has 2 image(s)"));
        assert!(refused(chat(vec![video(1, 2)]), 3).contains("image 0 comes next"));
        assert!(refused(chat(vec![video(0, 0)]), 0).contains("0 frame(s)"));
        assert!(refused(chat(vec![video(0, 2)]), 3).contains("refer to 2 of the request's 3"));
    }
}
