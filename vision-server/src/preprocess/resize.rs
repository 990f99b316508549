//! Bicubic resize that reproduces Pillow's `Image.resize(size)` (default `BICUBIC`) bit for bit.
//!
//! Pillow (`libImaging/Resample.c`) resamples separably: a horizontal pass into an 8-bit
//! intermediate image, then a vertical pass. Each output sample is a weighted sum of input samples
//! under the Keys cubic kernel with a = -0.5, widened by the scale factor when shrinking
//! (antialiasing). Weights are normalised to sum to one, converted to fixed point with 22
//! fractional bits (rounded half away from zero), and each sum starts at one half and is shifted
//! down and clamped to 0..=255. Only the rows the vertical pass needs go through the horizontal
//! pass, which changes nothing but the work done.

use image::RgbImage;

/// Fractional bits of Pillow's fixed-point weights (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (a = -0.5); support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output position: the first input index and the fixed-point weights.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the full input range.
fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let inv = 1.0 / filter_scale;
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // Pillow truncates with a C cast after adding 0.5.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (xmin..xmax)
            .map(|x| bicubic((x as f64 - center + 0.5) * inv))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            })
            .collect();
        starts.push(xmin);
        weights.push(fixed);
    }
    Coefficients { starts, weights }
}

/// Pillow's `clip8`: drop the fraction bits and clamp to a byte.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Resizes `src` to `width` x `height` exactly as Pillow's bicubic `Image.resize` does.
/// A same-size resize returns a copy, as Pillow does.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return src.clone();
    }
    let mut data = src.as_raw().clone();
    let (mut cur_w, mut cur_h) = (in_w, in_h);
    let vertical = (out_h != in_h).then(|| coefficients(in_h, out_h));
    if out_w != in_w {
        // Only rows the vertical pass reads need resampling horizontally.
        let (first, last) = match &vertical {
            Some(v) => {
                let last_start = v.starts[out_h - 1];
                (v.starts[0], last_start + v.weights[out_h - 1].len())
            }
            None => (0, in_h),
        };
        data = horizontal(&data, cur_w, first, last, out_w);
        cur_w = out_w;
        cur_h = last - first;
        if let Some(v) = &vertical {
            let shifted = Coefficients {
                starts: v.starts.iter().map(|s| s - first).collect(),
                weights: v.weights.clone(),
            };
            data = vertical_pass(&data, cur_w, &shifted, out_h);
            cur_h = out_h;
        }
    } else if let Some(v) = &vertical {
        data = vertical_pass(&data, cur_w, v, out_h);
        cur_h = out_h;
    }
    debug_assert_eq!((cur_w, cur_h), (out_w, out_h));
    RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Horizontal pass over rows `first..last` of an RGB buffer `in_w` pixels wide.
fn horizontal(src: &[u8], in_w: usize, first: usize, last: usize, out_w: usize) -> Vec<u8> {
    let c = coefficients(in_w, out_w);
    let mut out = vec![0u8; (last - first) * out_w * 3];
    for (row_out, y) in (first..last).enumerate() {
        let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        let dst = &mut out[row_out * out_w * 3..(row_out + 1) * out_w * 3];
        for xx in 0..out_w {
            let start = c.starts[xx];
            let mut sums = [HALF; 3];
            for (k, &w) in c.weights[xx].iter().enumerate() {
                let px = &row[(start + k) * 3..(start + k) * 3 + 3];
                for ch in 0..3 {
                    sums[ch] += i64::from(px[ch]) * i64::from(w);
                }
            }
            for ch in 0..3 {
                dst[xx * 3 + ch] = clip8(sums[ch]);
            }
        }
    }
    out
}

/// Vertical pass producing `out_h` rows from an RGB buffer `width` pixels wide.
fn vertical_pass(src: &[u8], width: usize, c: &Coefficients, out_h: usize) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut sums = vec![0i64; stride];
    for yy in 0..out_h {
        sums.fill(HALF);
        let start = c.starts[yy];
        for (k, &w) in c.weights[yy].iter().enumerate() {
            let row = &src[(start + k) * stride..(start + k + 1) * stride];
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += i64::from(v) * i64::from(w);
            }
        }
        for (d, &s) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&sums) {
            *d = clip8(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_keys_cubic() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(1.5) + 0.0625).abs() < 1e-12);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(517, 200), (100, 448), (448, 448 * 3), (3, 448)] {
            let c = coefficients(i, o);
            for w in &c.weights {
                let sum: i64 = w.iter().map(|&x| i64::from(x)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{i}->{o}: {sum}"
                );
            }
        }
    }

    #[test]
    fn uniform_images_stay_uniform() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 255]));
        let out = resize_bicubic(&src, 448, 101);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 255]));
    }
}
