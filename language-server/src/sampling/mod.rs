//! Token sampling for the language server: [`SamplingParams`] (validated request settings),
//! [`Sampler`] (penalties, temperature, top-k, top-p and min-p with transformers' semantics,
//! greedy or seeded ChaCha20 sampling) and [`StopChecker`] (EOS, stop tokens, stop strings
//! across token boundaries, `max_new_tokens`, and how much text is safe to stream).
//!
//! Per generated token the engine does:
//!
//! ```text
//! id    = sampler.sample(&logits, &prompt_ids, &generated_ids)?;
//! delta = decoder.push(id)?;                 // text::IncrementalDecoder
//! upd   = stop.push(id, &delta);             // send upd.text; stop if upd.stop is Some
//! ...at the end: stop.finish(&decoder.finish()?)
//! ```

mod error;
mod logits;
mod params;
mod sampler;
mod stop;

pub use error::{Result, SamplingError};
pub use logits::{
    apply_min_p, apply_penalties, apply_temperature, apply_top_k, apply_top_p, argmax,
    process_logits, softmax,
};
pub use params::{DEFAULT_MAX_NEW_TOKENS, GREEDY_TEMPERATURE, SamplingParams};
pub use sampler::Sampler;
pub use stop::{StopChecker, StopReason, StopUpdate};
