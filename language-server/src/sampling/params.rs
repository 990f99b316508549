//! Sampling parameters and their validation.

use super::error::{Result, SamplingError};

/// Temperatures below this sample greedily (as vLLM does), which also keeps `logit / t` finite.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// `max_new_tokens` when a request does not say (InternVL's chat examples use 1024).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 1024;

/// How to pick tokens and when to stop. The defaults sample from the unchanged distribution
/// (temperature 1, no filters, no penalties).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 (anything below [`GREEDY_TEMPERATURE`]) picks the argmax.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (ties with the k-th kept too); 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in (0, 1];
    /// 1 = off.
    pub top_p: f32,
    /// Keep tokens with probability >= `min_p` × the top probability, in [0, 1]; 0 = off.
    pub min_p: f32,
    /// transformers' repetition penalty over prompt and generated tokens (> 0; 1 = off).
    pub repetition_penalty: f32,
    /// OpenAI presence penalty over generated tokens, in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty over generated tokens, in [-2, 2].
    pub frequency_penalty: f32,
    /// Seed of the sampler's ChaCha20 generator; `None` seeds from OS entropy.
    pub seed: Option<u64>,
    /// Stop after this many generated tokens (at least 1).
    pub max_new_tokens: usize,
    /// Token ids that end generation (besides the model's EOS); their text is not output.
    pub stop_token_ids: Vec<u32>,
    /// Texts that end generation; the output is cut before the first one.
    pub stop_strings: Vec<String>,
    /// Keep generating past the model's EOS tokens (benchmarks); stop ids and strings still
    /// apply.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0), other settings default.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether tokens are picked by argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    /// Checks every field's range; the error names the first bad field.
    pub fn validate(&self) -> Result<()> {
        check(
            "temperature",
            self.temperature,
            self.temperature.is_finite() && self.temperature >= 0.0,
            "a finite number >= 0",
        )?;
        check(
            "top_p",
            self.top_p,
            self.top_p > 0.0 && self.top_p <= 1.0,
            "in (0, 1]",
        )?;
        check(
            "min_p",
            self.min_p,
            (0.0..=1.0).contains(&self.min_p),
            "in [0, 1]",
        )?;
        check(
            "repetition_penalty",
            self.repetition_penalty,
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            "a finite number > 0",
        )?;
        check(
            "presence_penalty",
            self.presence_penalty,
            (-2.0..=2.0).contains(&self.presence_penalty),
            "in [-2, 2]",
        )?;
        check(
            "frequency_penalty",
            self.frequency_penalty,
            (-2.0..=2.0).contains(&self.frequency_penalty),
            "in [-2, 2]",
        )?;
        check(
            "max_new_tokens",
            self.max_new_tokens,
            self.max_new_tokens >= 1,
            "at least 1",
        )?;
        if let Some(i) = self.stop_strings.iter().position(String::is_empty) {
            return Err(SamplingError::InvalidParameter {
                name: "stop_strings",
                value: format!("{:?} (entry {i})", self.stop_strings),
                expected: "non-empty strings",
            });
        }
        Ok(())
    }
}

fn check(
    name: &'static str,
    value: impl std::fmt::Debug,
    ok: bool,
    expected: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(SamplingError::InvalidParameter {
            name,
            value: format!("{value:?}"),
            expected,
        })
    }
}
