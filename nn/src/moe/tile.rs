//! The CPU inner kernel of the MoE GEMMs: a tile of up to [`TILE_ROWS`] activation rows times
//! one [`PANEL`]-column weight panel, accumulated into f32 sums over a range of `k`.
//!
//! Every output is one running sum over `k` in increasing order, `sum = x[k] * w[k] + sum`
//! (fused on AVX2), whatever tile it sits in and however many rows share the call, and sums
//! stored between `k` ranges are reloaded exactly: that is what makes the MoE block batch
//! invariant on the CPU. AVX2, FMA and F16C are detected at run time; elsewhere the same order
//! runs as plain multiply-adds.

use super::element::Element;
use super::matrices::PANEL;

/// Activation rows per tile (6 x 2 accumulators, two weight registers and one broadcast fit the
/// 16 AVX2 registers).
pub(super) const TILE_ROWS: usize = 6;

/// One tile's operands over a range of `k`.
pub(super) struct Tile<'a, T> {
    /// The tile's rows of activations; row `i` starts at `i * x_stride`, and `k` runs over
    /// `0..len` from there.
    pub x: &'a [T],
    /// Elements between activation rows.
    pub x_stride: usize,
    /// The panel's `len` rows of [`PANEL`] weights.
    pub panel: &'a [T],
    /// Values of `k` in the range.
    pub len: usize,
}

/// Adds the tile's products to `sums` (row `i` at `i * sums_stride`, [`PANEL`] values each) for
/// `rows` rows, at most [`TILE_ROWS`].
pub(super) fn accumulate<T: Element>(
    t: &Tile<'_, T>,
    rows: usize,
    sums: &mut [f32],
    sums_stride: usize,
) {
    assert!(
        rows <= TILE_ROWS
            && t.panel.len() >= t.len * PANEL
            && (rows == 0 || t.x.len() >= (rows - 1) * t.x_stride + t.len)
            && (rows == 0 || sums.len() >= (rows - 1) * sums_stride + PANEL),
        "tile operands"
    );
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                0 => {}
                $($r => accumulate_rows::<T, $r>(t, sums, sums_stride),)*
                _ => unreachable!("tiles have at most {TILE_ROWS} rows"),
            }
        };
    }
    rows!(1 2 3 4 5 6);
}

fn accumulate_rows<T: Element, const R: usize>(t: &Tile<'_, T>, sums: &mut [f32], stride: usize) {
    if has_avx2() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2, FMA and F16C were detected; `accumulate` checked the operand lengths.
        #[allow(unsafe_code)]
        unsafe {
            accumulate_avx2::<T, R>(t, sums, stride)
        }
    } else {
        accumulate_portable::<T, R>(t, sums, stride)
    }
}

/// Whether this CPU runs the AVX2 kernel (decided once).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The tile in plain arithmetic, in the AVX2 kernel's order.
fn accumulate_portable<T: Element, const R: usize>(
    t: &Tile<'_, T>,
    sums: &mut [f32],
    stride: usize,
) {
    for i in 0..R {
        let row = &t.x[i * t.x_stride..i * t.x_stride + t.len];
        let out = &mut sums[i * stride..i * stride + PANEL];
        for (kk, &x) in row.iter().enumerate() {
            let x = x.widen();
            for (o, &w) in out.iter_mut().zip(&t.panel[kk * PANEL..(kk + 1) * PANEL]) {
                *o += x * w.widen();
            }
        }
    }
}

/// The tile on AVX2: two accumulators per row, a broadcast of the row's value times the
/// panel's two registers per `k`.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C, and the operands must be as `accumulate` checks.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_avx2<T: Element, const R: usize>(
    t: &Tile<'_, T>,
    sums: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let (xp, wp, sp) = (t.x.as_ptr(), t.panel.as_ptr(), sums.as_mut_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for (i, a) in acc.iter_mut().enumerate() {
        // SAFETY: row i < R of sums holds PANEL values from i * stride.
        unsafe {
            a[0] = _mm256_loadu_ps(sp.add(i * stride));
            a[1] = _mm256_loadu_ps(sp.add(i * stride + 8));
        }
    }
    for kk in 0..t.len {
        // SAFETY: the panel holds len * PANEL values.
        let (w0, w1) = unsafe {
            (
                T::load8(wp.add(kk * PANEL)),
                T::load8(wp.add(kk * PANEL + 8)),
            )
        };
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: row i < R of x holds len values from i * x_stride.
            let x = _mm256_set1_ps(unsafe { *xp.add(i * t.x_stride + kk) }.widen());
            a[0] = _mm256_fmadd_ps(x, w0, a[0]);
            a[1] = _mm256_fmadd_ps(x, w1, a[1]);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        // SAFETY: as for the loads above.
        unsafe {
            _mm256_storeu_ps(sp.add(i * stride), a[0]);
            _mm256_storeu_ps(sp.add(i * stride + 8), a[1]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    /// `rows` rows of `x [rows, k]` times the panel, in one range or in ranges of `split`.
    fn run<T: Element>(x: &[T], panel: &[T], k: usize, rows: usize, split: usize) -> Vec<f32> {
        let mut sums = vec![0f32; rows * PANEL];
        for k0 in (0..k).step_by(split) {
            let len = split.min(k - k0);
            let tile = Tile {
                x: &x[k0..],
                x_stride: k,
                panel: &panel[k0 * PANEL..],
                len,
            };
            accumulate(&tile, rows, &mut sums, PANEL);
        }
        sums
    }

    #[test]
    fn each_output_is_the_same_sum_in_any_tile_or_k_range() {
        let k = 37;
        let x = values(6 * k, 1);
        let panel = values(k * PANEL, 2);
        let full = run(&x, &panel, k, 6, k);
        for rows in 1..=6 {
            for split in [1, 5, 16, k] {
                let part = run(&x, &panel, k, rows, split);
                for (a, b) in part.iter().zip(&full) {
                    assert_eq!(a.to_bits(), b.to_bits(), "rows {rows} split {split}");
                }
            }
        }
        // A lone last row gives the same bits as in the full tile.
        let alone = run(&x[5 * k..], &panel, k, 1, k);
        assert_eq!(alone, full[5 * PANEL..]);
        for (i, row) in full.chunks(PANEL).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let plain: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * panel[t * PANEL + j] as f64)
                    .sum();
                assert!((plain - v as f64).abs() < 1e-5, "({i},{j})");
            }
        }
    }

    #[test]
    fn half_types_widen_exactly() {
        let k = 9;
        let (xf, wf) = (values(2 * k, 5), values(k * PANEL, 6));
        let want = |x: Vec<f32>, w: Vec<f32>| run(&x, &w, k, 2, k);
        let xb: Vec<bf16> = xf.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
        let widened = want(
            xb.iter().map(|v| v.to_f32()).collect(),
            wb.iter().map(|v| v.to_f32()).collect(),
        );
        assert_eq!(run(&xb, &wb, k, 2, k), widened);
        let xh: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
        let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
        let widened = want(
            xh.iter().map(|v| v.to_f32()).collect(),
            wh.iter().map(|v| v.to_f32()).collect(),
        );
        assert_eq!(run(&xh, &wh, k, 2, k), widened);
    }

    #[test]
    fn portable_and_detected_kernels_agree_within_rounding() {
        let k = 131;
        let x = values(3 * k, 3);
        let panel = values(k * PANEL, 4);
        let tile = Tile {
            x: &x,
            x_stride: k,
            panel: &panel,
            len: k,
        };
        let mut portable = vec![0f32; 3 * PANEL];
        accumulate_portable::<f32, 3>(&tile, &mut portable, PANEL);
        let detected = run(&x, &panel, k, 3, k);
        for (a, b) in portable.iter().zip(&detected) {
            assert!((a - b).abs() <= 1e-5);
        }
    }
}
