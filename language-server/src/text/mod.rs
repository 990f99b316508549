//! Text handling for the language server: the checkpoint's tokenizer, streaming
//! detokenisation, the InternVL3.5 prompt format, HF chat templates and image placeholder
//! expansion.
//!
//! The usual path for a request:
//!
//! 1. render the conversation: [`render_internvl`] (custom-format checkpoints, the
//!    `internvl2_5` template with its default or thinking system prompt) or
//!    [`ChatTemplate::render`] (the checkpoint's HF template, from
//!    [`Tokenizer::chat_template`]); a raw prompt skips this step;
//! 2. expand the image placeholders with each image's feature-token count and encode:
//!    [`encode_with_images`] (or [`expand_image_placeholders`] then [`Tokenizer::encode`]);
//! 3. stream the generated ids back as text with an [`IncrementalDecoder`];
//! 4. in thinking mode, [`split_thinking`] separates the reasoning from the answer.

mod chat_template;
mod config;
mod error;
mod format;
mod incremental;
mod message;
mod placeholder;
mod prompt;
mod pycompat;
mod pyjson;
mod strftime;
mod tokenizer;

pub use chat_template::ChatTemplate;
pub use config::{AddedTokenEntry, TokenizerConfig};
pub use error::{Result, TextError, TokenizerConfigError};
pub use format::PromptFormat;
pub use incremental::IncrementalDecoder;
pub use message::{ChatMessage, ContentPart, MessageContent};
pub use placeholder::{
    IMAGE_PLACEHOLDER, IMG_CONTEXT, IMG_END, IMG_START, ImageTokenIds, count_placeholders,
    encode_segments, encode_with_images, expand_image_placeholders, image_token_count,
};
pub use prompt::{
    DEFAULT_SYSTEM_MESSAGE, IM_END, IM_START, InternVlPromptOptions, R1_SYSTEM_PROMPT, THINK_END,
    THINK_START, ThinkingSplit, media_prefix, render_internvl, split_thinking,
};
pub use tokenizer::Tokenizer;
