//! Picks the next token from the last position's logits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::error::{Result, SamplingError};
use super::logits::{argmax, process_logits, unnormalised_probs};
use super::params::SamplingParams;

/// Samples tokens for one sequence with fixed [`SamplingParams`].
///
/// Greedy parameters pick the argmax (lowest id on ties) and draw no random numbers. Otherwise a
/// token is drawn from [`process_logits`]'s distribution with a ChaCha20 generator seeded from
/// `seed` (the same seed, parameters and logits give the same tokens on every platform) or from
/// OS entropy.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha20Rng,
    draws: u64,
}

impl Sampler {
    /// Validates `params` and seeds the generator.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => ChaCha20Rng::seed_from_u64(seed),
            None => ChaCha20Rng::from_rng(&mut rand::rng()),
        };
        Ok(Self {
            params,
            rng,
            draws: 0,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// How many random numbers have been drawn (greedy sampling draws none).
    pub fn random_draws(&self) -> u64 {
        self.draws
    }

    /// The next token given the last position's `logits` (one per vocabulary entry), the
    /// `prompt` ids (repetition penalty) and the ids `generated` so far (all penalties).
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> Result<u32> {
        let scores = process_logits(&self.params, logits, prompt, generated)?;
        let token = if self.params.is_greedy() {
            argmax(&scores).ok_or(SamplingError::NoCandidates)?
        } else {
            let u: f64 = self.rng.random();
            self.draws += 1;
            draw(&unnormalised_probs(&scores), u).ok_or(SamplingError::NoCandidates)?
        };
        // Logit vectors are far shorter than u32::MAX.
        u32::try_from(token).map_err(|_| SamplingError::TokenOutOfRange {
            token: u32::MAX,
            vocab: scores.len(),
        })
    }
}

/// The first token (in id order) at which the cumulative weight exceeds `u` ∈ [0, 1) of the
/// total weight; `None` if all weights are 0.
pub(crate) fn draw(probs: &[f64], u: f64) -> Option<usize> {
    let total: f64 = probs.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        if p <= 0.0 {
            continue;
        }
        cumulative += p;
        last = Some(i);
        if cumulative > target {
            return Some(i);
        }
    }
    // Rounding left `target` at or above the sum: the last candidate.
    last
}

#[cfg(test)]
mod tests {
    use super::draw;

    #[test]
    fn draw_walks_the_cumulative_distribution() {
        let probs = [0.0, 0.25, 0.0, 0.75];
        assert_eq!(draw(&probs, 0.0), Some(1));
        assert_eq!(draw(&probs, 0.2499), Some(1));
        assert_eq!(draw(&probs, 0.25), Some(3));
        assert_eq!(draw(&probs, 0.999_999), Some(3));
        assert_eq!(draw(&[0.0, 0.0], 0.5), None);
    }
}
