//! One sequence from prompt to answer: prefill (text and image features), then sampling,
//! stop conditions and streaming detokenisation token by token. The coupled `dvd generate` runs
//! on it; the serving engine batches the same steps across requests.

use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::model::{LanguageModel, ModelError, SequenceStep};
use crate::sampling::{Sampler, SamplingError, SamplingParams, StopChecker, StopReason};
use crate::text::{IncrementalDecoder, TextError, Tokenizer};

/// What can go wrong generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model failed or the inputs do not fit it.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The sampling settings are invalid.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// Detokenisation failed.
    #[error(transparent)]
    Text(#[from] TextError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The per-token work after the model: pick the next token, detokenise it, check the stop
/// conditions. [`generate`] and the serving engine share it.
#[derive(Debug)]
pub struct Continuation {
    sampler: Sampler,
    stop: StopChecker,
    decoder: IncrementalDecoder,
    generated: Vec<u32>,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextToken {
    /// The token.
    pub token: u32,
    /// Text that became safe to stream with it (may be empty).
    pub text: String,
    /// Why generation stops here, if it does (`max_new_tokens` included).
    pub stop: Option<StopReason>,
}

impl Continuation {
    /// A continuation sampling with `params` that stops at `eos_token_ids` (unless
    /// `params.ignore_eos`).
    pub fn new(
        params: &SamplingParams,
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
    ) -> Result<Self, GenerateError> {
        Ok(Self {
            sampler: Sampler::new(params.clone())?,
            stop: StopChecker::new(params, eos_token_ids),
            decoder: IncrementalDecoder::new(tokenizer.clone(), true),
            generated: Vec::new(),
        })
    }

    /// Picks the token after `prompt_ids` and the tokens so far from the last position's
    /// `logits`.
    pub fn next(&mut self, logits: &[f32], prompt_ids: &[u32]) -> Result<NextToken, GenerateError> {
        let token = self.sampler.sample(logits, prompt_ids, &self.generated)?;
        self.generated.push(token);
        let delta = self.decoder.push(token)?;
        let update = self.stop.push(token, &delta);
        Ok(NextToken {
            token,
            text: update.text,
            stop: update.stop,
        })
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// The text held back until the end (incomplete characters, a partial stop string that
    /// never completed).
    pub fn finish(&mut self) -> Result<String, GenerateError> {
        Ok(self.stop.finish(&self.decoder.finish()?))
    }
}

/// Image features for the prompt's `<IMG_CONTEXT>` positions, borrowed ([`ImageFeatures`] owns
/// them).
#[derive(Debug, Clone, Copy)]
pub struct ImageInput<'a> {
    /// Id of `<IMG_CONTEXT>`.
    pub token_id: u32,
    /// `[tokens, hidden]`, in prompt order.
    pub features: &'a Tensor,
}

/// Image features for the prompt's `<IMG_CONTEXT>` positions, owned (a request queued on the
/// engine carries them).
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// Id of `<IMG_CONTEXT>`.
    pub token_id: u32,
    /// `[tokens, hidden]`, in prompt order.
    pub features: Tensor,
}

impl ImageFeatures {
    /// The features, borrowed.
    pub fn as_input(&self) -> ImageInput<'_> {
        ImageInput {
            token_id: self.token_id,
            features: &self.features,
        }
    }
}

/// Wall time of the two phases.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationTimings {
    /// Embedding the prompt and the prefill forward pass.
    pub prefill: Duration,
    /// Every decode step after the first token.
    pub decode: Duration,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, the stopping token included.
    pub token_ids: Vec<u32>,
    /// Generated text (stop strings and EOS text excluded).
    pub text: String,
    /// Why generation ended.
    pub finish: StopReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Logits of the last prompt position after prefill, f32 `[vocab]`.
    pub prefill_logits: Tensor,
    /// Phase timings.
    pub timings: GenerationTimings,
}

/// Generates from `prompt_ids` until EOS (`eos_token_ids`), a stop token or string, or
/// `max_new_tokens`, calling `on_text` with each piece of text that is safe to stream.
pub fn generate(
    model: &LanguageModel,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    image: Option<ImageInput<'_>>,
    params: &SamplingParams,
    eos_token_ids: &[u32],
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, GenerateError> {
    let mut continuation = Continuation::new(params, tokenizer, eos_token_ids)?;
    let started = Instant::now();
    let embeds = model.embed(
        prompt_ids,
        image.map(|i| i.token_id),
        image.map(|i| i.features),
    )?;
    let mut cache = model.new_cache();
    let logits = model.forward(&mut [SequenceStep {
        embeds,
        cache: &mut cache,
    }])?;
    let prefill_logits = logits.squeeze(0)?;
    let prefill = started.elapsed();
    let started = Instant::now();
    let mut text = String::new();
    let mut row = prefill_logits.to_vec1::<f32>()?;
    let finish = loop {
        let next = continuation.next(&row, prompt_ids)?;
        if !next.text.is_empty() {
            on_text(&next.text);
            text.push_str(&next.text);
        }
        if let Some(reason) = next.stop {
            break reason;
        }
        let embeds = model.embed(&[next.token], None, None)?;
        let logits = model.forward(&mut [SequenceStep {
            embeds,
            cache: &mut cache,
        }])?;
        row = logits.squeeze(0)?.to_vec1::<f32>()?;
    };
    let tail = continuation.finish()?;
    if !tail.is_empty() {
        on_text(&tail);
        text.push_str(&tail);
    }
    let generated = continuation.generated().to_vec();
    Ok(Generation {
        token_ids: generated,
        text,
        finish,
        prompt_tokens: prompt_ids.len(),
        prefill_logits,
        timings: GenerationTimings {
            prefill,
            decode: started.elapsed(),
        },
    })
}
