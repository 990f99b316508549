//! Grouping routed tokens by expert: a stable counting sort of the (token, choice) pairs, so each
//! expert's rows are contiguous, and the permutation of the activations that follows it.

use candle_core::{DType, Device, Result, Tensor, WithDType, bail};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::host::with_values;

/// Where each (token, choice) pair sits once the pairs are sorted by expert.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// `[experts + 1]` u32: expert `e`'s rows are `offsets[e]..offsets[e + 1]`.
    pub offsets: Tensor,
    /// `[tokens * top_k]` u32: the token each sorted row comes from.
    pub sources: Tensor,
    /// `[tokens * top_k]` u32: the sorted row of pair `token * top_k + choice`.
    pub slots: Tensor,
}

/// Sorts the pairs of `experts [tokens, top_k]` (u32) by expert, keeping pair order within an
/// expert.
pub fn group(experts: &Tensor, num_experts: usize) -> Result<Grouping> {
    let (_, top_k) = experts.dims2()?;
    match experts.device() {
        Device::Cpu => {
            let (offsets, sources, slots) =
                with_values::<u32, _>(experts, |chosen| counting_sort(chosen, top_k, num_experts))?;
            let pairs = sources.len();
            Ok(Grouping {
                offsets: Tensor::from_vec(offsets, num_experts + 1, &Device::Cpu)?,
                sources: Tensor::from_vec(sources, pairs, &Device::Cpu)?,
                slots: Tensor::from_vec(slots, pairs, &Device::Cpu)?,
            })
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let (offsets, sources, slots) =
                dvd_kernels::moe_group(&experts.contiguous()?, num_experts)?;
            Ok(Grouping {
                offsets,
                sources,
                slots,
            })
        }
        #[allow(unreachable_patterns)]
        other => bail!("grouping: no MoE kernels for {other:?}"),
    }
}

/// (offsets, sources, slots) of [`Grouping`] for row-major `chosen`.
fn counting_sort(
    chosen: &[u32],
    top_k: usize,
    num_experts: usize,
) -> Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let mut offsets = vec![0u32; num_experts + 1];
    for &e in chosen {
        if e as usize >= num_experts {
            bail!("grouping: expert {e} of {num_experts}");
        }
        offsets[e as usize + 1] += 1;
    }
    for e in 0..num_experts {
        offsets[e + 1] += offsets[e];
    }
    let mut next = offsets.clone();
    let mut sources = vec![0u32; chosen.len()];
    let mut slots = vec![0u32; chosen.len()];
    for (pair, &e) in chosen.iter().enumerate() {
        let row = next[e as usize];
        next[e as usize] += 1;
        sources[row as usize] = (pair / top_k) as u32;
        slots[pair] = row;
    }
    Ok((offsets, sources, slots))
}

/// The rows of `x [tokens, hidden]` in sorted order: `[tokens * top_k, hidden]`.
pub fn permute(x: &Tensor, grouping: &Grouping) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return dvd_kernels::moe_permute(&x.contiguous()?, &grouping.sources);
    }
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32) => gather::<f32>(x, &grouping.sources),
        (Device::Cpu, DType::BF16) => gather::<bf16>(x, &grouping.sources),
        (Device::Cpu, DType::F16) => gather::<f16>(x, &grouping.sources),
        _ => x.index_select(&grouping.sources, 0),
    }
}

/// `x[sources[r]]` for every `r`, rows copied in parallel.
fn gather<T: WithDType>(x: &Tensor, sources: &Tensor) -> Result<Tensor> {
    let (tokens, hidden) = x.dims2()?;
    let rows = sources.dim(0)?;
    let mut out = vec![T::zero(); rows * hidden];
    with_values::<T, _>(x, |x| {
        with_values::<u32, _>(sources, |sources| {
            if let Some(bad) = sources.iter().find(|&&s| s as usize >= tokens) {
                bail!("permute: source row {bad} of {tokens}");
            }
            out.par_chunks_mut(hidden.max(1))
                .zip(sources)
                .for_each(|(row, &s)| {
                    let s = s as usize;
                    row.copy_from_slice(&x[s * hidden..(s + 1) * hidden]);
                });
            Ok(())
        })
    })?;
    Tensor::from_vec(out, (rows, hidden), &Device::Cpu)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pairs_sort_stably_by_expert() {
        // Tokens 0..3, two choices each.
        let chosen = [2u32, 0, 0, 2, 2, 1];
        let (offsets, sources, slots) = counting_sort(&chosen, 2, 4).unwrap();
        assert_eq!(offsets, [0, 2, 3, 6, 6]);
        // Expert 0: pairs 1 (token 0), 2 (token 1); expert 1: pair 5; expert 2: pairs 0, 3, 4.
        assert_eq!(sources, [0, 1, 2, 0, 1, 2]);
        assert_eq!(slots, [3, 0, 1, 4, 5, 2]);
    }

    #[test]
    fn one_expert_taking_every_token_leaves_the_others_empty() {
        let chosen = vec![5u32; 7];
        let (offsets, sources, slots) = counting_sort(&chosen, 1, 8).unwrap();
        assert_eq!(offsets, [0, 0, 0, 0, 0, 0, 7, 7, 7]);
        assert_eq!(sources, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(slots, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn experts_out_of_range_are_refused() {
        assert!(counting_sort(&[0, 4], 1, 4).is_err());
    }
}
