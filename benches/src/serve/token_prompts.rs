//! Random prompts of a length counted in the served model's tokens, as `vllm bench serve`'s
//! random datasets count them: seeded words drawn until the model's tokenizer counts the
//! length asked (the prompt text only; the chat template adds its own tokens around it).

use std::path::Path;

use anyhow::{Context, Result, bail};
use dvd_language_server::text::Tokenizer;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The words prompts are made of.
const WORDS: [&str; 32] = [
    "the", "image", "shows", "a", "red", "blue", "green", "circle", "square", "on", "left",
    "right", "of", "what", "is", "how", "many", "shapes", "describe", "colour", "small", "large",
    "above", "below", "next", "to", "count", "every", "one", "and", "where", "picture",
];

/// Re-encodings allowed to correct a prompt whose tokenizer merges tokens across words.
const CORRECTIONS: usize = 64;

/// Makes prompts of an exact token count with one model's tokenizer.
#[derive(Debug, Clone)]
pub struct TokenPrompts {
    tokenizer: Tokenizer,
    /// Tokens of each word of [`WORDS`] opening a prompt, and after a space.
    first: Vec<usize>,
    later: Vec<usize>,
}

impl TokenPrompts {
    /// Prompts counted by `tokenizer`.
    pub fn new(tokenizer: Tokenizer) -> Result<Self> {
        let count = |text: &str| -> Result<usize> { Ok(tokenizer.encode(text)?.len()) };
        let first = WORDS.iter().map(|w| count(w)).collect::<Result<Vec<_>>>()?;
        let later = WORDS
            .iter()
            .map(|w| count(&format!(" {w}")))
            .collect::<Result<Vec<_>>>()?;
        if !later.contains(&1) || !first.contains(&1) {
            bail!(
                "the tokenizer has no one-token word among the prompt words, so it cannot make prompts of every length"
            );
        }
        Ok(Self {
            tokenizer,
            first,
            later,
        })
    }

    /// Prompts counted by the tokenizer of the checkpoint in `dir`.
    pub fn from_model(dir: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_dir(dir)
            .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
        Self::new(tokenizer)
    }

    /// Random words that come to exactly `tokens` tokens (at least 1).
    pub fn text(&self, tokens: usize, rng: &mut ChaCha8Rng) -> Result<String> {
        self.text_after("", tokens, rng)
    }

    /// `opening`, a space and random words: exactly `tokens` tokens more than `opening` alone
    /// (at least 1). With an empty `opening`, the words alone.
    pub fn text_after(&self, opening: &str, tokens: usize, rng: &mut ChaCha8Rng) -> Result<String> {
        if tokens == 0 {
            bail!("a prompt needs at least one token");
        }
        let base = if opening.is_empty() {
            0
        } else {
            self.count(opening)?
        };
        let mut words: Vec<&str> = Vec::new();
        let mut left = tokens;
        while left > 0 {
            let costs = if words.is_empty() && opening.is_empty() {
                &self.first
            } else {
                &self.later
            };
            let fitting: Vec<usize> = (0..WORDS.len()).filter(|&w| costs[w] <= left).collect();
            let word = fitting[rng.random_range(0..fitting.len())];
            words.push(WORDS[word]);
            left -= costs[word];
        }
        // Tokenizers that split at spaces count the sum of the words; others are corrected.
        for _ in 0..CORRECTIONS {
            let text = match opening {
                "" => words.join(" "),
                _ => format!("{opening} {}", words.join(" ")),
            };
            let count = self.count(&text)?.saturating_sub(base);
            match count.cmp(&tokens) {
                std::cmp::Ordering::Equal => return Ok(text),
                std::cmp::Ordering::Greater if words.len() > 1 => {
                    words.pop();
                }
                _ => words.push("a"),
            }
        }
        bail!("no prompt of {tokens} tokens found from the prompt words with this tokenizer")
    }

    /// Tokens of `text`.
    pub fn count(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text)?.len())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use rand::SeedableRng;

    use super::*;

    /// Prompts counted by the demo model's tokenizer (`models/dvd-demo`).
    pub(crate) fn demo() -> TokenPrompts {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dvd-demo");
        TokenPrompts::from_model(&dir).unwrap()
    }

    #[test]
    fn prompts_have_exactly_the_tokens_asked() {
        let prompts = demo();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for tokens in [1, 2, 3, 20, 57, 200, 513] {
            let text = prompts.text(tokens, &mut rng).unwrap();
            assert_eq!(prompts.count(&text).unwrap(), tokens, "{text:?}");
        }
        assert!(prompts.text(0, &mut rng).is_err());
        for opening in ["Passage 7 (123):", "Question"] {
            let text = prompts.text_after(opening, 25, &mut rng).unwrap();
            assert!(text.starts_with(&format!("{opening} ")), "{text:?}");
            let more = prompts.count(&text).unwrap() - prompts.count(opening).unwrap();
            assert_eq!(more, 25, "{text:?}");
        }
    }

    #[test]
    fn prompts_are_reproducible_from_their_seed_and_differ_between_seeds() {
        let prompts = demo();
        let make = |seed| {
            prompts
                .text(40, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap()
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1), make(2));
    }
}
