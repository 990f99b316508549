//! The grouped GEMM on the CPU: `out[r] = x[r] W[e(r)]^T` where consecutive row ranges use
//! different experts' weights, run in parallel over (expert, row chunk) with the tile kernel of
//! [`super::tile`] over the experts' [`Matrices`] panels. Experts without rows are never read.

use candle_core::{DType, Device, Result, Tensor, bail};
use half::{bf16, f16};
use rayon::prelude::*;

use super::element::Element;
use super::matrices::{Matrices, PANEL};
use super::tile::{TILE_ROWS, Tile, accumulate};
use crate::host::with_values;

/// Rows per work item: an expert's weights stream past a chunk of rows once.
const ROW_CHUNK: usize = 8 * TILE_ROWS;
/// Values of `k` per pass when a chunk has more than one tile of rows: one pass's panel (16 KiB
/// in f32) stays in L1 while every tile of the chunk uses it.
const K_BLOCK: usize = 256;

/// Permuted rows `start..end` multiply by expert `expert`'s matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Group {
    /// First row.
    pub start: usize,
    /// One past the last row.
    pub end: usize,
    /// Which matrix.
    pub expert: usize,
}

impl Group {
    /// The groups of the non-empty ranges `offsets[e]..offsets[e + 1]`.
    pub fn from_offsets(offsets: &[u32]) -> Vec<Self> {
        offsets
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[1] > w[0])
            .map(|(expert, w)| Self {
                start: w[0] as usize,
                end: w[1] as usize,
                expert,
            })
            .collect()
    }
}

/// `x [rows, k]` times the transposed matrices of `weights`, each group of rows by its own;
/// `[rows, n]` in the dtype of `x`. The groups must cover the rows in order without gaps.
pub(super) fn grouped_matmul_cpu(
    x: &Tensor,
    weights: &Matrices,
    groups: &[Group],
) -> Result<Tensor> {
    weights.check_input(x)?;
    let rows = x.dim(0)?;
    let mut next = 0;
    for g in groups {
        if g.start != next || g.end <= g.start || g.expert >= weights.count() {
            bail!(
                "grouped matmul: group {g:?} after row {next} of {rows} ({} experts)",
                weights.count()
            );
        }
        next = g.end;
    }
    if next != rows {
        bail!("grouped matmul: groups cover {next} of {rows} rows");
    }
    match x.dtype() {
        DType::F32 => typed::<f32>(x, weights, groups),
        DType::BF16 => typed::<bf16>(x, weights, groups),
        DType::F16 => typed::<f16>(x, weights, groups),
        other => bail!("grouped matmul: dtype {other:?} (f32, bf16 or f16 on the CPU)"),
    }
}

fn typed<T: Element>(x: &Tensor, weights: &Matrices, groups: &[Group]) -> Result<Tensor> {
    let (rows, n, k) = (x.dim(0)?, weights.n(), weights.k());
    let per_matrix = n.div_ceil(PANEL) * PANEL * k;
    let mut out = vec![T::narrow(0.0); rows * n];
    with_values::<T, _>(x, |x| {
        with_values::<T, _>(weights.data(), |w| {
            // Work items own consecutive, disjoint slices of the output.
            let mut items = Vec::new();
            let mut rest: &mut [T] = &mut out;
            for g in groups {
                for start in (g.start..g.end).step_by(ROW_CHUNK) {
                    let end = (start + ROW_CHUNK).min(g.end);
                    let (mine, tail) = rest.split_at_mut((end - start) * n);
                    rest = tail;
                    items.push((start..end, g.expert, mine));
                }
            }
            items.into_par_iter().for_each(|(range, expert, out)| {
                let panels = &w[expert * per_matrix..(expert + 1) * per_matrix];
                rows_times(&x[range.start * k..range.end * k], panels, (n, k), out);
            });
            Ok(())
        })
    })?;
    Tensor::from_vec(out, (rows, n), &Device::Cpu)
}

/// `out [rows, n] = x [rows, k]` times one matrix's panels: panel by panel (each one contiguous
/// stream), range of `k` by range, past every tile of rows (a single tile of rows takes all of
/// `k` in one range).
fn rows_times<T: Element>(x: &[T], panels: &[T], (n, k): (usize, usize), out: &mut [T]) {
    let rows = x.len() / k.max(1);
    let count = n.div_ceil(PANEL);
    let width = count * PANEL;
    let block = if rows <= TILE_ROWS { k } else { K_BLOCK }.max(1);
    let mut sums = vec![0f32; rows * width];
    for p in 0..count {
        for k0 in (0..k).step_by(block) {
            let len = block.min(k - k0);
            let panel = &panels[(p * k + k0) * PANEL..(p * k + k0 + len) * PANEL];
            for r0 in (0..rows).step_by(TILE_ROWS) {
                let tile = Tile {
                    x: &x[r0 * k + k0..],
                    x_stride: k,
                    panel,
                    len,
                };
                let tile_rows = TILE_ROWS.min(rows - r0);
                accumulate(&tile, tile_rows, &mut sums[r0 * width + p * PANEL..], width);
            }
        }
    }
    for (out_row, sum_row) in out.chunks_exact_mut(n.max(1)).zip(sums.chunks_exact(width)) {
        for (o, &s) in out_row.iter_mut().zip(sum_row) {
            *o = T::narrow(s);
        }
    }
}

/// `x [rows, k]` times the transpose of the one matrix of `w` on the CPU, with the same kernel
/// (the router of a MoE block, so its logits are batch invariant too).
pub(super) fn matmul_cpu(x: &Tensor, w: &Matrices) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let group = [Group {
        start: 0,
        end: rows,
        expert: 0,
    }];
    grouped_matmul_cpu(x, w, if rows == 0 { &[] } else { &group })
}
