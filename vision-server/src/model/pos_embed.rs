//! Resizing the ViT position embedding to another patch grid, the way PyTorch's
//! `F.interpolate(mode="bicubic", align_corners=False)` does (cubic convolution with a = -0.75,
//! borders clamped), as the reference does when tiles differ from the trained image size.

/// PyTorch's bicubic coefficient `a`.
const A: f32 = -0.75;

fn cubic_near(x: f32) -> f32 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn cubic_far(x: f32) -> f32 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// The 4 source positions one output position reads, and their weights.
struct Taps {
    /// Source indices, clamped to the input.
    index: [usize; 4],
    weight: [f32; 4],
}

/// The taps of each output position.
fn taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let floor = real.floor();
            let t = real - floor;
            let clamp = |k: i64| k.clamp(0, input as i64 - 1) as usize;
            let base = floor as i64;
            Taps {
                index: [
                    clamp(base - 1),
                    clamp(base),
                    clamp(base + 1),
                    clamp(base + 2),
                ],
                weight: [
                    cubic_far(t + 1.0),
                    cubic_near(t),
                    cubic_near(1.0 - t),
                    cubic_far(2.0 - t),
                ],
            }
        })
        .collect()
}

/// Resizes a row-major `[from * from, dim]` grid of embeddings to `[to * to, dim]`.
pub fn resize_grid(values: &[f32], dim: usize, from: usize, to: usize) -> Vec<f32> {
    if from == to {
        return values.to_vec();
    }
    let taps = taps(from, to);
    let mut out = vec![0.0f32; to * to * dim];
    for (oy, ty) in taps.iter().enumerate() {
        for (ox, tx) in taps.iter().enumerate() {
            let (ys, wy, xs, wx) = (&ty.index, &ty.weight, &tx.index, &tx.weight);
            let dst = &mut out[(oy * to + ox) * dim..(oy * to + ox + 1) * dim];
            for c in 0..dim {
                // Horizontal pass over 4 rows, then vertical, as PyTorch's kernel does.
                let mut acc = 0.0f32;
                for (ky, &y) in ys.iter().enumerate() {
                    let row = |x: usize| values[(y * from + x) * dim + c];
                    let h = row(xs[0]) * wx[0]
                        + row(xs[1]) * wx[1]
                        + row(xs[2]) * wx[2]
                        + row(xs[3]) * wx[3];
                    acc += h * wy[ky];
                }
                dst[c] = acc;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let v: Vec<f32> = (0..2 * 2 * 3).map(|i| i as f32).collect();
        assert_eq!(resize_grid(&v, 3, 2, 2), v);
    }

    #[test]
    fn constant_grid_stays_constant() {
        let v = vec![1.5f32; 3 * 3 * 2];
        let out = resize_grid(&v, 2, 3, 7);
        assert!(out.iter().all(|x| (x - 1.5).abs() < 1e-6));
    }

    #[test]
    fn weights_sum_to_one() {
        for t in taps(2, 5).into_iter().chain(taps(32, 40)) {
            assert!((t.weight.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
