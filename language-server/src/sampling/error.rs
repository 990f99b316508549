//! Errors of the sampling module.

/// What can go wrong validating sampling parameters or sampling a token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A sampling parameter is out of range.
    #[error("invalid sampling parameter {name} = {value}: must be {expected}")]
    InvalidParameter {
        /// The parameter's name (as in [`SamplingParams`](super::SamplingParams)).
        name: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        expected: &'static str,
    },
    /// The logits are empty.
    #[error("empty logits")]
    EmptyLogits,
    /// A logit is NaN (the model's forward pass went wrong).
    #[error("logit of token {token} is NaN")]
    NanLogit {
        /// The token whose logit is NaN.
        token: usize,
    },
    /// Every token has logit -inf, so there is nothing to sample.
    #[error("every token has logit -inf")]
    NoCandidates,
    /// A token of the history is outside the logits.
    #[error("token {token} of the history is outside the {vocab} logits")]
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// Number of logits.
        vocab: usize,
    },
}

/// Result of the sampling module.
pub type Result<T> = std::result::Result<T, SamplingError>;
