//! Pixel shuffle and the MLP projectors that turn ViT tokens into LLM-width features:
//! `mlp1` (ratio 0.5, 256 tokens per 448 px tile) and the Flash models' `mlp2` (ratio 0.25,
//! 64 tokens per tile).

use candle_core::{Result as CandleResult, Tensor};

use super::config::PixelShuffleVersion;
use dvd_nn::ModelError;
use dvd_nn::{Linear, Loader, Norm};

/// Epsilon of every projector LayerNorm (PyTorch's default, not the ViT's 1e-6).
pub(crate) const PROJECTOR_NORM_EPS: f64 = 1e-5;

/// Merges each `factor x factor` block of a `[T, g*g, D]` token grid into one token of width
/// `factor^2 * D`: output token `(i, j)` concatenates inputs `(f*i + dr, f*j + dc)` for `dr`,
/// `dc` in row-major order; tokens come out row-major (v2) or column-major (v1).
pub fn pixel_shuffle(
    tokens: &Tensor,
    factor: usize,
    version: PixelShuffleVersion,
) -> CandleResult<Tensor> {
    let (t, n, d) = tokens.dims3()?;
    let g = (n as f64).sqrt().round() as usize;
    if g * g != n || factor == 0 || !g.is_multiple_of(factor) {
        candle_core::bail!(
            "pixel shuffle by {factor} needs a square grid divisible by it, got {n} tokens"
        );
    }
    let m = g / factor;
    // Axes: (tile, i, dr, j, dc, channel).
    let grid = tokens.reshape((t, m, factor, m, factor, d))?;
    let ordered = match version {
        PixelShuffleVersion::V2 => grid.permute((0, 1, 3, 2, 4, 5))?,
        PixelShuffleVersion::V1 => grid.permute((0, 3, 1, 2, 4, 5))?,
    };
    ordered
        .contiguous()?
        .reshape((t, m * m, factor * factor * d))
}

/// A projector: LayerNorm, then Linear and exact GELU pairs, the last Linear without GELU.
#[derive(Debug)]
pub(crate) struct MlpProjector {
    norm: Norm,
    linears: Vec<Linear>,
}

impl MlpProjector {
    /// Loads `norm` (over `input`) and the linears named by `linears`, with the widths `widths`
    /// (`widths[0]` is the first linear's output).
    pub fn load(
        loader: &Loader,
        norm: &str,
        linears: &[String],
        input: usize,
        widths: &[usize],
    ) -> Result<Self, ModelError> {
        let norm = loader.layer_norm(norm, input, PROJECTOR_NORM_EPS)?;
        let mut layers = Vec::with_capacity(linears.len());
        let mut width = input;
        for (name, &out) in linears.iter().zip(widths) {
            layers.push(loader.linear(name, out, width, true)?);
            width = out;
        }
        Ok(Self {
            norm,
            linears: layers,
        })
    }

    pub fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let mut x = self.norm.forward(x)?;
        let last = self.linears.len().saturating_sub(1);
        for (i, linear) in self.linears.iter().enumerate() {
            x = linear.forward(&x)?;
            if i < last {
                x = x.gelu_erf()?;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    /// Token (r, c) of a g x g grid carries the value `r * g + c` in channel 0 and `-(...)` in
    /// channel 1, so every output channel can be traced back to its source token.
    fn grid(g: usize) -> Tensor {
        let v: Vec<f32> = (0..g * g).flat_map(|i| [i as f32, -(i as f32)]).collect();
        Tensor::from_vec(v, (1, g * g, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn v2_concatenates_blocks_row_major() {
        let g = 8;
        for factor in [2, 4] {
            let out = pixel_shuffle(&grid(g), factor, PixelShuffleVersion::V2).unwrap();
            let m = g / factor;
            let out = out.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(out.len(), m * m);
            for i in 0..m {
                for j in 0..m {
                    let token = &out[i * m + j];
                    for dr in 0..factor {
                        for dc in 0..factor {
                            let src = ((factor * i + dr) * g + factor * j + dc) as f32;
                            let ch = (dr * factor + dc) * 2;
                            assert_eq!(token[ch], src);
                            assert_eq!(token[ch + 1], -src);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn v1_is_v2_transposed() {
        let v1 = pixel_shuffle(&grid(4), 2, PixelShuffleVersion::V1).unwrap();
        let v2 = pixel_shuffle(&grid(4), 2, PixelShuffleVersion::V2).unwrap();
        let v1 = v1.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let v2 = v2.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for i in 0..2 {
            for j in 0..2 {
                assert_eq!(v1[j * 2 + i], v2[i * 2 + j]);
            }
        }
    }

    #[test]
    fn rejects_grids_it_cannot_split() {
        assert!(pixel_shuffle(&grid(3), 2, PixelShuffleVersion::V2).is_err());
    }
}
