//! Which prompt format a checkpoint speaks: the InternVL conversation template (GitHub-format
//! checkpoints, and any without a chat template) or the checkpoint's own HF chat template.

use serde_json::Value;

use super::chat_template::ChatTemplate;
use super::error::Result;
use super::message::ChatMessage;
use super::placeholder::{IMAGE_PLACEHOLDER, IMG_CONTEXT};
use super::prompt::{InternVlPromptOptions, frame_lines, render_internvl};
use super::tokenizer::Tokenizer;

/// How a conversation becomes prompt text.
#[derive(Debug)]
pub enum PromptFormat {
    /// InternVL's `internvl2_5` conversation template; images are `<image>`.
    InternVl,
    /// The checkpoint's Jinja chat template; images are `<IMG_CONTEXT>`.
    Template(Box<ChatTemplate>),
}

impl PromptFormat {
    /// The format for a checkpoint with `config` (its `config.json`). GitHub-format checkpoints
    /// (`llm_config`) are prompted through the InternVL template, as the reference `chat()`
    /// does, even when they also ship a Jinja file.
    pub fn for_checkpoint(config: &Value, tokenizer: &Tokenizer) -> Result<Self> {
        if config.get("llm_config").is_some() {
            return Ok(Self::InternVl);
        }
        Ok(match tokenizer.chat_template(None)? {
            Some(template) => Self::Template(Box::new(template)),
            None => Self::InternVl,
        })
    }

    /// Renders `messages` with the assistant's turn opened; `thinking` selects InternVL's
    /// thinking layout (the caller supplies the thinking system prompt).
    pub fn render(&self, messages: &[ChatMessage], thinking: bool) -> Result<String> {
        match self {
            Self::InternVl => render_internvl(
                messages,
                &InternVlPromptOptions {
                    thinking,
                    add_generation_prompt: true,
                },
            ),
            Self::Template(template) => {
                Ok(expand_videos(&template.render(messages, true)?, messages))
            }
        }
    }

    /// The text that marks an image in rendered prompts.
    pub fn placeholder(&self) -> &'static str {
        match self {
            Self::InternVl => IMAGE_PLACEHOLDER,
            Self::Template(_) => IMG_CONTEXT,
        }
    }
}

/// What HF chat templates write for a video part.
const VIDEO_TOKEN: &str = "<video>";

/// `text` with each `<video>` a template wrote replaced by its video's frame lines, as
/// transformers' InternVL processor does (`Frame1: <IMG_CONTEXT>\n...`), in the messages' order.
fn expand_videos(text: &str, messages: &[ChatMessage]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    for frames in messages.iter().flat_map(ChatMessage::video_frames) {
        let Some(at) = rest.find(VIDEO_TOKEN) else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str(&frame_lines(frames, IMG_CONTEXT));
        rest = &rest[at + VIDEO_TOKEN.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::ContentPart;

    #[test]
    fn template_videos_become_the_processors_frame_lines() {
        let messages = [ChatMessage::parts(
            "user",
            vec![
                ContentPart::Video { frames: 2 },
                ContentPart::Text("what?".into()),
                ContentPart::Video { frames: 1 },
            ],
        )];
        assert_eq!(
            expand_videos("u\n<video>\nwhat?<video>\n", &messages),
            "u\nFrame1: <IMG_CONTEXT>\nFrame2: <IMG_CONTEXT>\nwhat?Frame1: <IMG_CONTEXT>\n"
        );
        assert_eq!(expand_videos("no videos", &[]), "no videos");
    }
}
