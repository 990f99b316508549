//! The checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` crate, plus what
//! `tokenizer_config.json` adds (special tokens, added tokens, chat templates).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tokenizers::{AddedToken, ModelWrapper};

use super::chat_template::ChatTemplate;
use super::config::TokenizerConfig;
use super::error::{Result, TextError, TokenizerConfigError};

/// A loaded tokenizer. Cheap to clone (shared).
///
/// Encoding adds no special tokens (Qwen adds no BOS) and maps special tokens written in the text
/// (`<|im_start|>`, `<IMG_CONTEXT>`, ...) to their ids, as transformers'
/// `tokenizer(text, add_special_tokens=False)` does.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tokenizer: tokenizers::Tokenizer,
    config: TokenizerConfig,
    /// `clean_up_tokenization_spaces`, which transformers skips for BPE models.
    clean_up: bool,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and the optional `tokenizer_config.json`,
    /// `chat_template.json` and `chat_template.jinja` beside it.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = TokenizerConfig::from_dir(dir)?;
        Self::from_file(&dir.join("tokenizer.json"), config)
    }

    /// Loads a `tokenizer.json` with the given config. Tokens of the config's
    /// `added_tokens_decoder` missing from the tokenizer are added (they must land on their ids).
    pub fn from_file(path: &Path, config: TokenizerConfig) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| TextError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TextError::TokenizerLoad {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        for entry in &config.added_tokens {
            if tokenizer.token_to_id(&entry.content).is_some() {
                continue;
            }
            let token = AddedToken::from(entry.content.clone(), entry.special);
            let added = if entry.special {
                tokenizer.add_special_tokens([token])
            } else {
                tokenizer.add_tokens([token])
            };
            added.map_err(|e| TextError::TokenizerLoad {
                path: path.to_owned(),
                message: format!("cannot add token {:?}: {e}", entry.content),
            })?;
            let got = tokenizer.token_to_id(&entry.content);
            if got != Some(entry.id) {
                return Err(TextError::Config {
                    path: path.with_file_name("tokenizer_config.json"),
                    source: TokenizerConfigError::AddedTokenMoved {
                        content: entry.content.clone(),
                        id: entry.id,
                        got,
                    },
                });
            }
        }
        let clean_up = config.clean_up_tokenization_spaces
            && !matches!(tokenizer.get_model(), ModelWrapper::BPE(_));
        Ok(Self {
            inner: Arc::new(Inner {
                tokenizer,
                config,
                clean_up,
            }),
        })
    }

    /// Token ids of `text`, without added BOS/EOS; special tokens in the text become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| TextError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; with `skip_special`, special tokens are left out.
    ///
    /// Bytes of a character that is cut off decode to U+FFFD (use
    /// [`IncrementalDecoder`](super::IncrementalDecoder) for streaming).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let text = self
            .inner
            .tokenizer
            .decode(ids, skip_special)
            .map_err(|e| TextError::Decode(e.to_string()))?;
        Ok(if self.inner.clean_up {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// The id of a token (regular or added), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.tokenizer.token_to_id(token)
    }

    /// Like [`token_id`](Self::token_id), but a missing token is an error.
    pub fn require_token_id(&self, token: &str) -> Result<u32> {
        self.token_id(token)
            .ok_or_else(|| TextError::UnknownToken(token.to_owned()))
    }

    /// The token with id `id`, if any.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.tokenizer.id_to_token(id)
    }

    /// Whether `id` is a special added token (skipped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .tokenizer
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// Number of tokens including added tokens (transformers' `len(tokenizer)`). The model's
    /// embedding table may be larger.
    pub fn vocab_size(&self) -> usize {
        self.inner.tokenizer.get_vocab_size(true)
    }

    /// The id of the config's `eos_token` (`<|im_end|>` for InternVL3.5), if both exist.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.inner
            .config
            .eos_token
            .as_deref()
            .and_then(|t| self.token_id(t))
    }

    /// What `tokenizer_config.json` and the chat template files said.
    pub fn config(&self) -> &TokenizerConfig {
        &self.inner.config
    }

    /// The checkpoint's chat template named `name` (`None`: `default`), compiled with this
    /// tokenizer's special tokens; `Ok(None)` when the checkpoint has no chat template at all.
    pub fn chat_template(&self, name: Option<&str>) -> Result<Option<ChatTemplate>> {
        let templates = &self.inner.config.chat_templates;
        if templates.is_empty() {
            return Ok(None);
        }
        let name = name.unwrap_or("default");
        let source = templates
            .get(name)
            .ok_or_else(|| TextError::NoSuchTemplate {
                name: name.to_owned(),
                available: templates.keys().cloned().collect(),
            })?;
        ChatTemplate::new(source, self.inner.config.special_tokens_map()).map(Some)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner.tokenizer
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_token", &self.inner.config.eos_token)
            .finish_non_exhaustive()
    }
}

/// transformers' `clean_up_tokenization` (WordPiece-era space removal before punctuation).
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
