//! The logits pipeline, in transformers' `generate()` order: repetition penalty, presence and
//! frequency penalties, temperature, top-k, top-p, min-p. Removed tokens get `-inf`.

use std::collections::{HashMap, HashSet};

use super::error::{Result, SamplingError};
use super::params::SamplingParams;

/// The distribution a token is drawn from: `logits` after penalties, temperature and filters
/// (removed tokens are `-inf`). With greedy parameters only the penalties apply (greedy picks
/// the argmax, which the temperature and the filters never change).
pub fn process_logits(
    params: &SamplingParams,
    logits: &[f32],
    prompt: &[u32],
    generated: &[u32],
) -> Result<Vec<f32>> {
    check_logits(logits)?;
    let mut scores = logits.to_vec();
    apply_penalties(params, &mut scores, prompt, generated)?;
    if params.is_greedy() {
        return Ok(scores);
    }
    apply_temperature(&mut scores, params.temperature);
    apply_top_k(&mut scores, params.top_k);
    apply_top_p(&mut scores, params.top_p);
    apply_min_p(&mut scores, params.min_p);
    Ok(scores)
}

/// Errors for empty logits or a NaN.
pub(crate) fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    match logits.iter().position(|x| x.is_nan()) {
        Some(token) => Err(SamplingError::NanLogit { token }),
        None => Ok(()),
    }
}

/// Repetition penalty over `prompt` ∪ `generated`, then presence/frequency penalties over
/// `generated`.
pub fn apply_penalties(
    params: &SamplingParams,
    scores: &mut [f32],
    prompt: &[u32],
    generated: &[u32],
) -> Result<()> {
    let vocab = scores.len();
    let index = |token: u32| -> Result<usize> {
        usize::try_from(token)
            .ok()
            .filter(|&i| i < vocab)
            .ok_or(SamplingError::TokenOutOfRange { token, vocab })
    };
    if params.repetition_penalty != 1.0 {
        let seen: HashSet<u32> = prompt.iter().chain(generated).copied().collect();
        for token in seen {
            let i = index(token)?;
            scores[i] = repetition_penalised(scores[i], params.repetition_penalty);
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &token in generated {
            *counts.entry(token).or_insert(0) += 1;
        }
        for (token, count) in counts {
            let i = index(token)?;
            scores[i] -= params.frequency_penalty * count as f32;
            scores[i] -= params.presence_penalty;
        }
    }
    Ok(())
}

/// transformers' `RepetitionPenaltyLogitsProcessor` on one logit.
fn repetition_penalised(logit: f32, penalty: f32) -> f32 {
    if logit < 0.0 {
        logit * penalty
    } else {
        logit / penalty
    }
}

/// `TemperatureLogitsWarper`: divides by `temperature` (1 leaves the scores alone).
pub fn apply_temperature(scores: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        for s in scores.iter_mut() {
            *s /= temperature;
        }
    }
}

/// `TopKLogitsWarper`: removes tokens scoring below the k-th highest score (ties with it stay);
/// `k = 0` or `k >= len` keeps all.
pub fn apply_top_k(scores: &mut [f32], k: usize) {
    if k == 0 || k >= scores.len() {
        return;
    }
    let mut sorted = scores.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    for s in scores.iter_mut() {
        if *s < threshold {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `TopPLogitsWarper`: keeps the smallest set of highest-scoring tokens whose probability
/// reaches `top_p` (a token is kept while the mass ranked above it is below `top_p`), at least
/// one; `top_p = 1` keeps all. Ties are ranked as transformers ranks them (higher id first).
///
/// Expected linear time (a weighted quickselect), not a sort of the vocabulary.
pub fn apply_top_p(scores: &mut [f32], top_p: f32) {
    if top_p >= 1.0 {
        return;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut candidates: Vec<Candidate> = scores
        .iter()
        .zip(0u32..)
        .filter(|(s, _)| **s > f32::NEG_INFINITY)
        .map(|(&score, id)| Candidate {
            score,
            id,
            weight: (f64::from(score) - f64::from(max)).exp(),
        })
        .filter(|c| c.weight > 0.0)
        .collect();
    let total: f64 = candidates.iter().map(|c| c.weight).sum();
    let kept = nucleus_size(&mut candidates, f64::from(top_p) * total);
    let mut keep = vec![false; scores.len()];
    for c in &candidates[..kept] {
        keep[c.id as usize] = true;
    }
    for (s, kept) in scores.iter_mut().zip(keep) {
        if !kept {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// A token in [`apply_top_p`]: score, id and unnormalised probability.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    id: u32,
    weight: f64,
}

/// Highest score first; among equal scores the higher id first, which is where transformers'
/// ascending sort (stable on CPU) puts them.
fn by_rank(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(b.id.cmp(&a.id))
}

/// Reorders `candidates` so its first K entries are the K best ranked, and returns K: the
/// smallest count >= 1 whose weight ranked above the K-th reaches `target` (all if none).
fn nucleus_size(candidates: &mut [Candidate], target: f64) -> usize {
    const SORT_BELOW: usize = 64;
    let (mut lo, mut hi) = (0, candidates.len());
    // Weight of the ranks before `lo`; below `target` throughout. K lies in (lo, hi].
    let mut above = 0.0;
    while hi - lo > SORT_BELOW {
        let mid = lo + (hi - lo) / 2;
        candidates[lo..hi].select_nth_unstable_by(mid - lo, by_rank);
        let left: f64 = candidates[lo..mid].iter().map(|c| c.weight).sum();
        if mid > 0 && above + left >= target {
            hi = mid;
        } else {
            above += left + candidates[mid].weight;
            if above >= target {
                return mid + 1;
            }
            lo = mid + 1;
        }
    }
    candidates[lo..hi].sort_unstable_by(by_rank);
    for (n, candidate) in candidates.iter().enumerate().take(hi).skip(lo) {
        if n > 0 && above >= target {
            return n;
        }
        above += candidate.weight;
    }
    hi
}

/// `MinPLogitsWarper`: removes tokens whose probability is below `min_p` × the top probability
/// (the top token always stays); `min_p = 0` keeps all.
pub fn apply_min_p(scores: &mut [f32], min_p: f32) {
    if min_p <= 0.0 {
        return;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let min_p = f64::from(min_p);
    for s in scores.iter_mut() {
        // p / p_max = exp(s - max).
        if (f64::from(*s) - f64::from(max)).exp() < min_p {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f64 (`-inf` gives 0). All `-inf` gives all zeros.
pub fn softmax(scores: &[f32]) -> Vec<f64> {
    let mut probs = unnormalised_probs(scores);
    let sum: f64 = probs.iter().sum();
    if sum > 0.0 {
        for p in &mut probs {
            *p /= sum;
        }
    }
    probs
}

/// `exp(score - max)` in f64, 0 for `-inf` (all zeros if every score is `-inf`).
pub(crate) fn unnormalised_probs(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let max = f64::from(max);
    scores
        .iter()
        .map(|&s| {
            if s == f32::NEG_INFINITY {
                0.0
            } else {
                (f64::from(s) - max).exp()
            }
        })
        .collect()
}

/// The lowest id among the highest scores.
pub fn argmax(scores: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.filter(|(_, s)| *s > f32::NEG_INFINITY).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' algorithm: ascending stable sort, cumulative softmax, drop `<= 1 - p`.
    fn top_p_by_sorting(scores: &[f32], top_p: f32) -> Vec<bool> {
        let probs = softmax(scores);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut keep = vec![true; scores.len()];
        let mut cumulative = 0.0;
        for (rank, &i) in order.iter().enumerate() {
            cumulative += probs[i];
            if cumulative <= 1.0 - f64::from(top_p) && rank + 1 < order.len() {
                keep[i] = false;
            }
        }
        keep
    }

    #[test]
    fn quickselect_top_p_equals_sorting() {
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as u32
        };
        for round in 0..200 {
            let n = [1, 2, 5, 63, 64, 65, 300, 2000][round % 8];
            // Coarse values give many ties; some -inf.
            let scores: Vec<f32> = (0..n)
                .map(|_| match next() % 10 {
                    0 => f32::NEG_INFINITY,
                    _ => (next() % 40) as f32 / 4.0 - 5.0,
                })
                .collect();
            for top_p in [0.01, 0.3, 0.5, 0.9, 0.999] {
                let mut got = scores.clone();
                apply_top_p(&mut got, top_p);
                let want = top_p_by_sorting(&scores, top_p);
                if scores.iter().all(|s| *s == f32::NEG_INFINITY) {
                    assert!(got.iter().all(|s| *s == f32::NEG_INFINITY));
                    continue;
                }
                for (i, ((g, w), s)) in got.iter().zip(&want).zip(&scores).enumerate() {
                    let kept = *g > f32::NEG_INFINITY;
                    assert_eq!(
                        kept,
                        *w && *s > f32::NEG_INFINITY,
                        "n={n} p={top_p} i={i} {scores:?}"
                    );
                }
            }
        }
    }
}
