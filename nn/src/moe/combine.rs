//! The weighted un-permute: each token's output is the sum of its experts' rows, each scaled by
//! its routing weight.

use candle_core::{DType, Device, Result, Tensor, bail};
use half::{bf16, f16};
use rayon::prelude::*;

use super::element::Element;
use super::grouping::Grouping;
use super::routing::Routing;
use crate::host::with_values;

/// `out[t] = sum_k weights[t, k] * y[slots[t * top_k + k]]` over `y [tokens * top_k, hidden]`,
/// as transformers' default (grouped_mm) experts compute it: each weight and each product
/// rounded to the dtype of `y` (it multiplies in the model dtype), the products summed in choice
/// order in f32 and rounded once; `[tokens, hidden]`.
pub fn combine(y: &Tensor, grouping: &Grouping, routing: &Routing) -> Result<Tensor> {
    let (tokens, top_k) = routing.weights.dims2()?;
    let (rows, hidden) = y.dims2()?;
    if rows != tokens * top_k {
        bail!("combine: {rows} expert rows for {tokens} tokens x {top_k} choices");
    }
    #[cfg(feature = "cuda")]
    if y.device().is_cuda() {
        return dvd_kernels::moe_combine(&y.contiguous()?, &grouping.slots, &routing.weights);
    }
    if !y.device().is_cpu() {
        bail!("combine: no MoE kernels for {:?}", y.device());
    }
    let shape = Shape { top_k, hidden };
    match y.dtype() {
        DType::F32 => typed::<f32>(y, grouping, routing, shape),
        DType::BF16 => typed::<bf16>(y, grouping, routing, shape),
        DType::F16 => typed::<f16>(y, grouping, routing, shape),
        other => bail!("combine: dtype {other:?} (f32, bf16 or f16 on the CPU)"),
    }
}

#[derive(Clone, Copy)]
struct Shape {
    top_k: usize,
    hidden: usize,
}

fn typed<T: Element>(
    y: &Tensor,
    grouping: &Grouping,
    routing: &Routing,
    s: Shape,
) -> Result<Tensor> {
    let tokens = routing.weights.dim(0)?;
    let mut out = vec![T::narrow(0.0); tokens * s.hidden];
    with_values::<T, _>(y, |y| {
        with_values::<u32, _>(&grouping.slots, |slots| {
            with_values::<f32, _>(&routing.weights, |weights| {
                let rows = y.len() / s.hidden.max(1);
                if slots.len() != tokens * s.top_k
                    || weights.len() != slots.len()
                    || slots.iter().any(|&r| r as usize >= rows)
                {
                    bail!("combine: slots or weights do not fit {rows} expert rows");
                }
                out.par_chunks_mut(s.hidden.max(1))
                    .enumerate()
                    .for_each(|(t, out)| {
                        let mut acc = vec![0f32; s.hidden];
                        for p in t * s.top_k..(t + 1) * s.top_k {
                            let row = &y[slots[p] as usize * s.hidden..][..s.hidden];
                            let weight = T::narrow(weights[p]).widen();
                            for (a, &v) in acc.iter_mut().zip(row) {
                                *a += T::narrow(weight * v.widen()).widen();
                            }
                        }
                        for (o, a) in out.iter_mut().zip(acc) {
                            *o = T::narrow(a);
                        }
                    });
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(out, (tokens, s.hidden), &Device::Cpu)
}
