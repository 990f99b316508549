//! The InternVL3.5 prompt format (the custom checkpoints' `internvl2_5` conversation template)
//! and the thinking-mode helpers.
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! A system block is always written: the conversation's own system message, else
//! [`R1_SYSTEM_PROMPT`] in thinking mode, else [`DEFAULT_SYSTEM_MESSAGE`]. A message with images
//! or video frames whose text has no `<image>` gets them as a prefix: `<image>\n` for one image,
//! `Image-1: <image>\nImage-2: <image>\n...` for several, `Frame1: <image>\n...` for the frames of
//! a video. The placeholders are expanded afterwards by
//! [`expand_image_placeholders`](super::expand_image_placeholders).

use super::error::{Result, TextError};
use super::message::ChatMessage;
use super::placeholder::IMAGE_PLACEHOLDER;

/// InternVL's default system message (custom `conversation.py`), exact bytes.
pub const DEFAULT_SYSTEM_MESSAGE: &str = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。";

/// The system prompt that switches InternVL3.5 into thinking mode (`R1_SYSTEM_PROMPT` of the
/// model card; paragraphs separated by blank lines). The model then answers
/// `<think>...</think>` followed by the answer; sample with temperature 0.6.
pub const R1_SYSTEM_PROMPT: &str = concat!(
    "You are an AI assistant that rigorously follows this response protocol:\n",
    "\n",
    "1. First, conduct a detailed analysis of the question. Consider different angles, potential ",
    "solutions, and reason through the problem step-by-step. Enclose this entire thinking process ",
    "within <think> and </think> tags.\n",
    "\n",
    "2. After the thinking section, provide a clear, concise, and direct answer to the user's ",
    "question. Separate the answer from the think section with a newline.\n",
    "\n",
    "Ensure that the thinking process is thorough but remains focused on the query. The final ",
    "answer should be standalone and not reference the thinking section."
);

/// Start of a turn.
pub const IM_START: &str = "<|im_start|>";
/// End of a turn; also the stop token of chat generation.
pub const IM_END: &str = "<|im_end|>";
/// Opening tag of the thinking section.
pub const THINK_START: &str = "<think>";
/// Closing tag of the thinking section.
pub const THINK_END: &str = "</think>";

/// How to render a conversation in the InternVL format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternVlPromptOptions {
    /// Use [`R1_SYSTEM_PROMPT`] when the conversation has no system message.
    pub thinking: bool,
    /// End with the open assistant turn `<|im_start|>assistant\n` (what generation needs).
    pub add_generation_prompt: bool,
}

impl Default for InternVlPromptOptions {
    fn default() -> Self {
        Self {
            thinking: false,
            add_generation_prompt: true,
        }
    }
}

/// Renders `messages` in the InternVL3.5 format:
/// `<|im_start|>system\n{system}<|im_end|>\n` then `<|im_start|>{role}\n{text}<|im_end|>\n` per
/// message, then `<|im_start|>assistant\n` when `add_generation_prompt`.
///
/// The first message may be a `system` message (else [`R1_SYSTEM_PROMPT`] in thinking mode, else
/// [`DEFAULT_SYSTEM_MESSAGE`]); the others must be `user` or `assistant` messages. A message's
/// text is its text parts concatenated; if the text has no `<image>`, the message's images and
/// video frames are prefixed as [`media_prefix`] writes them.
pub fn render_internvl(
    messages: &[ChatMessage],
    options: &InternVlPromptOptions,
) -> Result<String> {
    if messages.is_empty() {
        return Err(TextError::EmptyConversation);
    }
    let (system, rest) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => {
            if first.image_count() > 0 || !first.video_frames().is_empty() {
                return Err(TextError::SystemWithMedia);
            }
            (first.text_content(), rest)
        }
        _ if options.thinking => (R1_SYSTEM_PROMPT.to_owned(), messages),
        _ => (DEFAULT_SYSTEM_MESSAGE.to_owned(), messages),
    };
    let offset = messages.len() - rest.len();
    let mut out = format!("{IM_START}system\n{system}{IM_END}\n");
    for (i, message) in rest.iter().enumerate() {
        match message.role.as_str() {
            "user" | "assistant" => {}
            "system" => return Err(TextError::MisplacedSystem { index: i + offset }),
            role => {
                return Err(TextError::UnknownRole {
                    index: i + offset,
                    role: role.to_owned(),
                });
            }
        }
        let text = message.text_content();
        out.push_str(IM_START);
        out.push_str(&message.role);
        out.push('\n');
        if !text.contains(IMAGE_PLACEHOLDER) {
            out.push_str(&media_prefix(
                message.image_count(),
                &message.video_frames(),
            ));
        }
        out.push_str(&text);
        out.push_str(IM_END);
        out.push('\n');
    }
    if options.add_generation_prompt {
        out.push_str(IM_START);
        out.push_str("assistant\n");
    }
    Ok(out)
}

/// The placeholder lines for `images` images followed by videos of `video_frames` frames:
/// `<image>\n` for a single image, `Image-1: <image>\n...` for several, `Frame1: <image>\n...`
/// per video.
pub fn media_prefix(images: usize, video_frames: &[usize]) -> String {
    let mut out = String::new();
    match images {
        0 => {}
        1 => {
            out.push_str(IMAGE_PLACEHOLDER);
            out.push('\n');
        }
        n => {
            for i in 1..=n {
                out.push_str(&format!("Image-{i}: {IMAGE_PLACEHOLDER}\n"));
            }
        }
    }
    for &frames in video_frames {
        out.push_str(&frame_lines(frames, IMAGE_PLACEHOLDER));
        out.push('\n');
    }
    out
}

/// A video's `frames` frames as the model card writes them, `Frame1: {placeholder}\n...`
/// without a newline after the last.
pub fn frame_lines(frames: usize, placeholder: &str) -> String {
    (1..=frames)
        .map(|i| format!("Frame{i}: {placeholder}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A generated answer split into its thinking section and the answer proper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinkingSplit<'a> {
    /// The text inside `<think>...</think>` (trimmed), if the answer has a thinking section. An
    /// unterminated section (generation stopped while thinking) is all thinking.
    pub thinking: Option<&'a str>,
    /// The text after `</think>` with leading whitespace removed (the whole text if there is no
    /// thinking section).
    pub answer: &'a str,
}

/// Splits a generated text at `</think>`. The opening `<think>` is optional (a prompt may already
/// end with it).
pub fn split_thinking(text: &str) -> ThinkingSplit<'_> {
    if let Some(end) = text.find(THINK_END) {
        let inner = &text[..end];
        let inner = match inner.find(THINK_START) {
            Some(start) if inner[..start].trim().is_empty() => &inner[start + THINK_START.len()..],
            _ => inner,
        };
        return ThinkingSplit {
            thinking: Some(inner.trim()),
            answer: text[end + THINK_END.len()..].trim_start(),
        };
    }
    let trimmed = text.trim_start();
    if let Some(rest) = trimmed.strip_prefix(THINK_START) {
        return ThinkingSplit {
            thinking: Some(rest.trim()),
            answer: "",
        };
    }
    ThinkingSplit {
        thinking: None,
        answer: text,
    }
}
