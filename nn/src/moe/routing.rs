//! Routing: each token's experts and their weights, from the router's logits, on the device the
//! logits live on (nothing is copied to the host on GPUs).

use candle_core::{DType, Device, Result, Tensor, bail};

use crate::host::with_values;

/// Each token's chosen experts and their weights.
#[derive(Debug, Clone)]
pub struct Routing {
    /// `[tokens, top_k]` f32: the chosen experts' probabilities (renormalised if asked).
    pub weights: Tensor,
    /// `[tokens, top_k]` u32: the chosen experts, most probable first, lower index first on ties.
    pub experts: Tensor,
}

impl Routing {
    /// The routing as a rank holding experts `first..first + count` sees it (expert
    /// parallelism): those experts renumbered `0..count`, every other choice sent to expert
    /// `count` (held elsewhere) with weight zero. Read on the host: a few values per token.
    pub fn held_by(&self, first: usize, count: usize) -> Result<Routing> {
        let (tokens, top_k) = self.experts.dims2()?;
        let device = self.experts.device();
        let experts = self.experts.flatten_all()?.to_vec1::<u32>()?;
        let weights = self
            .weights
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let held = |e: u32| (first..first + count).contains(&(e as usize));
        let local: Vec<u32> = experts
            .iter()
            .map(|&e| {
                if held(e) {
                    e - first as u32
                } else {
                    count as u32
                }
            })
            .collect();
        let weights: Vec<f32> = experts
            .iter()
            .zip(weights)
            .map(|(&e, w)| if held(e) { w } else { 0.0 })
            .collect();
        Ok(Routing {
            weights: Tensor::from_vec(weights, (tokens, top_k), device)?,
            experts: Tensor::from_vec(local, (tokens, top_k), device)?,
        })
    }
}

/// Softmax in f32 over `logits [tokens, experts]`, the `top_k` most probable experts in
/// transformers' order (higher probability first, lower expert index first on ties), their
/// probabilities divided by their sum when `renormalise`.
pub fn route(logits: &Tensor, top_k: usize, renormalise: bool) -> Result<Routing> {
    let (tokens, experts) = logits.dims2()?;
    if top_k == 0 || top_k > experts {
        bail!("routing: top_k {top_k} with {experts} experts");
    }
    match logits.device() {
        Device::Cpu => {
            let logits = logits.to_dtype(DType::F32)?;
            let (weights, chosen) =
                with_values::<f32, _>(&logits, |l| Ok(route_rows(l, experts, top_k, renormalise)))?;
            Ok(Routing {
                weights: Tensor::from_vec(weights, (tokens, top_k), &Device::Cpu)?,
                experts: Tensor::from_vec(chosen, (tokens, top_k), &Device::Cpu)?,
            })
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let (weights, experts) =
                dvd_kernels::moe_route(&logits.contiguous()?, top_k, renormalise)?;
            Ok(Routing { weights, experts })
        }
        #[allow(unreachable_patterns)]
        other => bail!("routing: no MoE kernels for {other:?}"),
    }
}

/// [`route`] over rows of `experts` f32 logits: (weights, experts), row-major.
fn route_rows(
    logits: &[f32],
    experts: usize,
    top_k: usize,
    renormalise: bool,
) -> (Vec<f32>, Vec<u32>) {
    let tokens = logits.len() / experts;
    let mut weights = Vec::with_capacity(tokens * top_k);
    let mut chosen = Vec::with_capacity(tokens * top_k);
    let mut probs = vec![0f32; experts];
    let mut taken = vec![false; experts];
    for row in logits.chunks_exact(experts) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (p, &l) in probs.iter_mut().zip(row) {
            *p = (l - max).exp();
            sum += *p;
        }
        for p in probs.iter_mut() {
            *p /= sum;
        }
        taken.fill(false);
        let first = weights.len();
        for _ in 0..top_k {
            // The first (lowest) index among the most probable of those not yet taken.
            let mut best: Option<usize> = None;
            for (e, &p) in probs.iter().enumerate() {
                if !taken[e] && best.is_none_or(|b| p > probs[b]) {
                    best = Some(e);
                }
            }
            let best = best.unwrap_or(0);
            taken[best] = true;
            weights.push(probs[best]);
            chosen.push(best as u32);
        }
        if renormalise {
            let total: f32 = weights[first..].iter().sum();
            for w in &mut weights[first..] {
                *w /= total;
            }
        }
    }
    (weights, chosen)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_expert_and_order_is_by_probability() {
        // Experts 1 and 3 tie for first, 0 and 2 tie below them.
        let logits = [0.5f32, 2.0, 0.5, 2.0, -1.0];
        let (w, e) = route_rows(&logits, 5, 3, false);
        assert_eq!(e, [1, 3, 0]);
        assert_eq!(w[0].to_bits(), w[1].to_bits());
        assert!(w[0] > w[2]);
        // All equal: the lowest indices, in order.
        let (w, e) = route_rows(&[0.25; 6], 6, 4, true);
        assert_eq!(e, [0, 1, 2, 3]);
        assert!(w.iter().all(|&x| x == 0.25));
    }

    #[test]
    fn renormalised_weights_sum_to_one() {
        let logits = [0.1f32, -0.3, 1.2, 0.7, 0.0, 2.2, -1.0, 0.4];
        let (raw, e) = route_rows(&logits, 8, 2, false);
        let (norm, e2) = route_rows(&logits, 8, 2, true);
        assert_eq!(e, [5, 2]);
        assert_eq!(e, e2);
        assert!(raw.iter().sum::<f32>() < 1.0);
        assert!((norm.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((norm[0] / norm[1] - raw[0] / raw[1]).abs() < 1e-6);
    }

    #[test]
    fn route_checks_top_k() {
        let logits = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(route(&logits, 0, false).is_err());
        assert!(route(&logits, 5, false).is_err());
        let r = route(&logits, 4, false).unwrap();
        assert_eq!(
            r.experts.to_vec2::<u32>().unwrap(),
            [[0, 1, 2, 3], [0, 1, 2, 3]]
        );
    }
}
