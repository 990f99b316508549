//! The language stage alone: text-only requests as long (in prompt tokens) as the workload's
//! image requests, through the gateway, so the language server prefills and decodes the same
//! amount while no vision server works. Every prompt starts differently, so the prefix cache
//! cannot serve one from another.

use anyhow::{Result, ensure};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::serve::dataset::{Kind, RequestSpec};

const WORDS: &[&str] = &[
    "amber", "basin", "cedar", "delta", "ember", "fjord", "grove", "harbor", "island", "jasper",
    "kernel", "lagoon", "meadow", "nectar", "orchid", "prairie", "quartz", "ridge", "summit",
    "tundra", "upland", "valley", "willow", "yonder", "zenith", "canyon", "glacier", "mesa",
];

/// `n` text prompts of `words` seeded random words each, every one opening with its own index.
pub fn prompts(n: usize, words: usize, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut text = format!("Passage {i} ({}):", rng.random::<u32>());
            for _ in 0..words {
                text.push(' ');
                text.push_str(WORDS.choose(&mut rng).copied().unwrap_or("word"));
            }
            text
        })
        .collect()
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

/// Words per prompt for `target` prompt tokens, from a calibration prompt of `words` words
/// that came to `tokens` prompt tokens (`overhead` of them the chat template's).
pub fn words_for(target: u64, words: usize, tokens: u64, overhead: u64) -> Result<usize> {
    ensure!(
        tokens > overhead && words > 0,
        "calibration prompt of {words} words gave {tokens} tokens"
    );
    let per_word = (tokens - overhead) as f64 / words as f64;
    Ok(((target.saturating_sub(overhead)) as f64 / per_word)
        .round()
        .max(1.0) as usize)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prompts_are_distinct_from_their_first_words_and_reproducible() {
        let a = prompts(5, 20, 7);
        assert_eq!(a, prompts(5, 20, 7));
        for (i, p) in a.iter().enumerate() {
            assert!(p.starts_with(&format!("Passage {i} (")));
            assert_eq!(p.split(' ').count(), 23);
        }
    }

    #[test]
    fn word_counts_scale_to_the_target() {
        // 100 words -> 230 tokens with 30 of template: 2 tokens per word.
        assert_eq!(words_for(430, 100, 230, 30).unwrap(), 200);
        assert!(words_for(430, 100, 20, 30).is_err());
    }
}
