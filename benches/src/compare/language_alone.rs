//! The language stage alone: text-only requests as long (in prompt tokens) as the workload's
//! image requests, through the gateway, so the language server prefills and decodes the same
//! amount while no vision server works. Every prompt starts differently, so the prefix cache
//! cannot serve one from another.

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::serve::dataset::{Kind, RequestSpec};
use crate::serve::token_prompts::TokenPrompts;

/// `n` text prompts of `tokens` tokens each as `prompts` counts them, every one opening with its
/// own index and a seeded number.
pub fn texts(prompts: &TokenPrompts, n: usize, tokens: usize, seed: u64) -> Result<Vec<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let opening = format!("Passage {i} ({}):", rng.random::<u32>());
            let body = tokens.saturating_sub(prompts.count(&opening)?).max(1);
            prompts.text_after(&opening, body, &mut rng)
        })
        .collect()
}

/// The chat template's tokens around a prompt: what a request of `text` was counted at
/// (`prompt_tokens`, from the server) beyond the text's own tokens.
pub fn overhead(prompts: &TokenPrompts, text: &str, prompt_tokens: u64) -> Result<u64> {
    let own = prompts.count(text)? as u64;
    ensure!(
        prompt_tokens >= own,
        "a prompt of {own} tokens was counted at {prompt_tokens} by the server: another tokenizer?"
    );
    Ok(prompt_tokens - own)
}

/// Load requests carrying `prompts`.
pub fn requests(prompts: Vec<String>, max_tokens: u32) -> Vec<RequestSpec> {
    prompts
        .into_iter()
        .map(|p| RequestSpec {
            kind: Kind::Load,
            content: Value::String(p),
            max_tokens,
            images: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::serve::token_prompts::tests::demo;

    #[test]
    fn texts_have_the_tokens_asked_distinct_openings_and_a_seed() {
        let prompts = demo();
        let a = texts(&prompts, 5, 60, 7).unwrap();
        assert_eq!(a, texts(&prompts, 5, 60, 7).unwrap());
        for (i, text) in a.iter().enumerate() {
            assert!(text.starts_with(&format!("Passage {i} (")), "{text}");
            assert_eq!(prompts.count(text).unwrap(), 60, "{text}");
        }
    }

    #[test]
    fn the_overhead_is_what_the_server_adds() {
        let prompts = demo();
        let text = texts(&prompts, 1, 30, 1).unwrap().remove(0);
        assert_eq!(prompts.count(&text).unwrap(), 30);
        assert_eq!(overhead(&prompts, &text, 41).unwrap(), 11);
        assert!(overhead(&prompts, &text, 20).is_err());
    }
}
