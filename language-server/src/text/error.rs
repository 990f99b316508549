//! Errors of the text module.

use std::path::PathBuf;

/// What can go wrong loading a tokenizer, encoding, decoding or building a prompt.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file of the checkpoint could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `tokenizer.json` is not a tokenizer the `tokenizers` crate can load.
    #[error("cannot load tokenizer {path}: {message}")]
    TokenizerLoad {
        /// The file.
        path: PathBuf,
        /// What the tokenizers crate said.
        message: String,
    },
    /// `tokenizer_config.json` (or `chat_template.json`) is not the JSON it should be.
    #[error("bad tokenizer config {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: TokenizerConfigError,
    },
    /// The tokenizer failed to encode a text.
    #[error("cannot encode text: {0}")]
    Encode(String),
    /// The tokenizer failed to decode token ids (for example an id outside the vocabulary).
    #[error("cannot decode token ids: {0}")]
    Decode(String),
    /// A token the prompt format needs is not in the vocabulary.
    #[error("token {0:?} is not in the tokenizer's vocabulary")]
    UnknownToken(String),
    /// The prompt has a different number of image placeholders than there are images.
    #[error(
        "the prompt has {placeholders} image placeholder(s) {placeholder:?} but {images} image(s) were given"
    )]
    PlaceholderMismatch {
        /// The placeholder text searched for (`<image>` or `<IMG_CONTEXT>`).
        placeholder: String,
        /// How many placeholders the prompt has.
        placeholders: usize,
        /// How many images (token counts) were given.
        images: usize,
    },
    /// A message has a role the InternVL prompt format has no place for.
    #[error(
        "message {index} has role {role:?}; the InternVL format knows system, user and assistant"
    )]
    UnknownRole {
        /// Position of the message in the conversation.
        index: usize,
        /// Its role.
        role: String,
    },
    /// A system message that is not the first message.
    #[error("message {index} is a system message; only the first message may be one")]
    MisplacedSystem {
        /// Position of the message in the conversation.
        index: usize,
    },
    /// A system message with image or video parts.
    #[error("the system message has image or video parts")]
    SystemWithMedia,
    /// The conversation has no messages.
    #[error("the conversation is empty")]
    EmptyConversation,
    /// A chat template failed to compile or render.
    #[error("chat template error: {0}")]
    Template(String),
    /// A chat template rejected the conversation through `raise_exception(message)`.
    #[error("chat template rejected the conversation: {0}")]
    TemplateRaised(String),
    /// A checkpoint has several named chat templates and none is called `default`.
    #[error("no chat template named {name:?} (have: {available:?})")]
    NoSuchTemplate {
        /// The name asked for.
        name: String,
        /// The names there are.
        available: Vec<String>,
    },
}

/// What is wrong with a `tokenizer_config.json` or `chat_template.json`.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerConfigError {
    /// Not JSON, or a field of the wrong JSON type.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A key of `added_tokens_decoder` that is not a token id.
    #[error("added_tokens_decoder key {0:?} is not a token id")]
    AddedTokenKey(String),
    /// A special token written as an object without a string `content`.
    #[error("{field} object has no string `content`")]
    TokenWithoutContent {
        /// The field (`eos_token`...).
        field: &'static str,
    },
    /// A special token that is neither a string nor a token object.
    #[error("{field} is neither a string nor a token object")]
    TokenNotText {
        /// The field (`eos_token`...).
        field: &'static str,
    },
    /// An entry of a `chat_template` list without a `name` or a `template` string.
    #[error("chat_template list entries need `name` and `template`")]
    UnnamedTemplate,
    /// A `chat_template` that is neither a string nor a list.
    #[error("chat_template is neither a string nor a list of named templates")]
    TemplateNotText,
    /// An `added_tokens_decoder` entry the tokenizer gave another id.
    #[error("added token {content:?} should have id {id} but landed on {got:?}")]
    AddedTokenMoved {
        /// The token's text.
        content: String,
        /// The id the config gives it.
        id: u32,
        /// The id the tokenizer gave it.
        got: Option<u32>,
    },
}

/// Result of the text module.
pub type Result<T> = std::result::Result<T, TextError>;
