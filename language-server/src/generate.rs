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

/// Image features for the prompt's `<IMG_CONTEXT>` positions.
#[derive(Debug, Clone, Copy)]
pub struct ImageInput<'a> {
    /// Id of `<IMG_CONTEXT>`.
    pub token_id: u32,
    /// `[tokens, hidden]`, in prompt order.
    pub features: &'a Tensor,
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
    let mut sampler = Sampler::new(params.clone())?;
    let mut stop = StopChecker::new(params, eos_token_ids);
    let mut decoder = IncrementalDecoder::new(tokenizer.clone(), true);
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
    let mut generated = Vec::new();
    let mut text = String::new();
    let mut row = prefill_logits.to_vec1::<f32>()?;
    let finish = loop {
        let token = sampler.sample(&row, prompt_ids, &generated)?;
        generated.push(token);
        let delta = decoder.push(token)?;
        let update = stop.push(token, &delta);
        if !update.text.is_empty() {
            on_text(&update.text);
            text.push_str(&update.text);
        }
        if let Some(reason) = update.stop {
            break reason;
        }
        let embeds = model.embed(&[token], None, None)?;
        let logits = model.forward(&mut [SequenceStep {
            embeds,
            cache: &mut cache,
        }])?;
        row = logits.squeeze(0)?.to_vec1::<f32>()?;
    };
    let tail = stop.finish(&decoder.finish()?);
    if !tail.is_empty() {
        on_text(&tail);
        text.push_str(&tail);
    }
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
