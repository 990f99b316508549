//! Where the language model's tensors sit in each published checkpoint layout.

use dvd_checkpoint::Checkpoint;

use dvd_nn::ModelError;

/// How a checkpoint names its language tensors (the vision model's `CheckpointLayout` names its
/// vision tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// HF InternVL (`model.language_model.*`, `lm_head.weight`).
    Hf,
    /// GitHub InternVL and legacy HF (`language_model.model.*`, `language_model.lm_head.weight`).
    Nested,
    /// A plain Qwen3 checkpoint (`model.*`, `lm_head.weight`).
    Plain,
}

impl CheckpointLayout {
    /// Detects the layout from the embedding's name.
    pub fn detect(checkpoint: &Checkpoint) -> Result<Self, ModelError> {
        [Self::Hf, Self::Nested, Self::Plain]
            .into_iter()
            .find(|l| checkpoint.contains(&l.embed_tokens()))
            .ok_or_else(|| {
                ModelError::Unsupported(format!(
                    "{} holds no language model (looked for model.language_model.embed_tokens, \
                     language_model.model.embed_tokens and model.embed_tokens)",
                    checkpoint.dir().display()
                ))
            })
    }

    fn base(self) -> &'static str {
        match self {
            Self::Hf => "model.language_model.",
            Self::Nested => "language_model.model.",
            Self::Plain => "model.",
        }
    }

    /// `[vocab, hidden]` token embedding.
    pub fn embed_tokens(self) -> String {
        format!("{}embed_tokens.weight", self.base())
    }

    /// `[vocab, hidden]` output projection.
    pub fn lm_head(self) -> String {
        match self {
            Self::Nested => "language_model.lm_head.weight".into(),
            _ => "lm_head.weight".into(),
        }
    }

    /// Final RMSNorm prefix.
    pub fn final_norm(self) -> String {
        format!("{}norm", self.base())
    }

    /// Prefix of decoder layer `i` (`...layers.{i}`).
    pub fn layer(self, i: usize) -> String {
        format!("{}layers.{i}", self.base())
    }
}
