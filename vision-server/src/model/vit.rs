//! InternViT: patch embedding, CLS token and position embedding, then pre-norm encoder layers
//! with layer scale. Both variants: 300M (LayerNorm, qkv bias) and 6B (RMSNorm, q/k RMSNorm over
//! the full width, no qkv bias).

use candle_core::{DType, Result as CandleResult, Tensor};

use super::config::{NormKind, VisionConfig, VitConfig};
use super::names::{CheckpointLayout, LayerPart};
use super::pos_embed::resize_grid;
use dvd_nn::ModelError;
use dvd_nn::{Linear, Loader, Norm, softmax};

/// Bytes of attention scores materialised at once on the CPU: a few (tile, head) pairs, so the
/// scores stay in cache between the two matmuls and the softmax (about 2x faster than one big
/// batch on the 2-core benchmark machine; see docs/performance.md).
const CPU_SCORE_BUDGET: usize = 16 * 1024 * 1024;
/// The same bound on accelerators, where large batches keep the device busy.
const DEVICE_SCORE_BUDGET: usize = 512 * 1024 * 1024;

/// The ViT up to the configured feature layer.
#[derive(Debug)]
pub(crate) struct InternVit {
    config: VitConfig,
    patch_weight: Tensor,
    patch_bias: Tensor,
    class_embedding: Tensor,
    /// `[g0*g0, D]` patch position embeddings in f32, for resizing to other grids.
    position_grid: Vec<f32>,
    position_cls: Tensor,
    /// Position embedding for the configured tile size.
    position_tile: GridPositions,
    layers: Vec<EncoderLayer>,
    final_norm: Option<Norm>,
}

/// The position embedding of one patch grid.
#[derive(Debug)]
struct GridPositions {
    /// Patches per side.
    grid: usize,
    /// `[1, 1 + grid*grid, D]`.
    embedding: Tensor,
}

#[derive(Debug)]
struct EncoderLayer {
    norm1: Norm,
    norm2: Norm,
    /// The layer scales (ls1, ls2); `None` when they are folded into `proj` and `fc2`, which
    /// the GPU path does so the residual adds become GEMM epilogues.
    scales: Option<(Tensor, Tensor)>,
    attention: Attention,
    fc1: Linear,
    fc2: Linear,
}

#[derive(Debug)]
struct Attention {
    qkv: Linear,
    qk_norm: Option<(Norm, Norm)>,
    proj: Linear,
    heads: usize,
}

impl InternVit {
    pub fn load(
        config: &VisionConfig,
        layout: CheckpointLayout,
        loader: &Loader,
    ) -> Result<Self, ModelError> {
        let vit = config.vit.clone();
        let d = vit.hidden_size;
        let p = vit.patch_size;
        let patch_weight = loader
            .tensor(
                &format!("{}.weight", layout.patch_embedding()),
                &[d, 3, p, p],
            )?
            .reshape((d, 3 * p * p))?;
        let patch_bias = loader.tensor(&format!("{}.bias", layout.patch_embedding()), &[d])?;
        let class_embedding = loader.tensor_squeezed(&layout.class_embedding(), &[1, 1, d])?;
        let g0 = vit.image_size / p;
        let position = loader.tensor(&layout.position_embedding(), &[1, 1 + g0 * g0, d])?;
        let position_cls = position.narrow(1, 0, 1)?;
        let position_grid = position
            .narrow(1, 1, g0 * g0)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut layers = Vec::with_capacity(config.feature_layer);
        for i in 0..config.feature_layer {
            layers.push(EncoderLayer::load(&vit, layout, loader, i)?);
        }
        let final_norm = if vit.final_norm && config.feature_layer == vit.num_layers {
            Some(loader.layer_norm(&layout.final_norm(), d, vit.norm_eps)?)
        } else {
            None
        };
        let mut model = Self {
            config: vit,
            patch_weight,
            patch_bias,
            class_embedding,
            position_grid,
            position_cls,
            position_tile: GridPositions {
                grid: g0,
                embedding: position,
            },
            layers,
            final_norm,
        };
        let tile_grid = config.tiling.tile_size as usize / p;
        model.position_tile = GridPositions {
            grid: tile_grid,
            embedding: model.position_embedding(tile_grid)?,
        };
        Ok(model)
    }

    /// `[1, 1 + g*g, D]` position embedding for a `g x g` patch grid.
    fn position_embedding(&self, grid: usize) -> CandleResult<Tensor> {
        if grid == self.position_tile.grid {
            return Ok(self.position_tile.embedding.clone());
        }
        let d = self.config.hidden_size;
        let g0 = self.config.image_size / self.config.patch_size;
        let resized = resize_grid(&self.position_grid, d, g0, grid);
        let device = self.position_cls.device();
        let patches = Tensor::from_vec(resized, (1, grid * grid, d), device)?
            .to_dtype(self.position_cls.dtype())?;
        Tensor::cat(&[&self.position_cls, &patches], 1)
    }

    /// Runs the ViT on `[T, 3, S, S]` pixel values and returns the patch tokens of the feature
    /// layer without CLS: `[T, g*g, D]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let (t, c, h, w) = pixel_values.dims4()?;
        let p = self.config.patch_size;
        if c != 3 || h != w || h % p != 0 || h == 0 {
            return Err(ModelError::InvalidInput(format!(
                "pixel values must be [tiles, 3, S, S] with S a multiple of {p}, got [{t}, {c}, {h}, {w}]"
            )));
        }
        let g = h / p;
        let d = self.config.hidden_size;
        let x = pixel_values.to_dtype(self.patch_weight.dtype())?;
        // The stride-p convolution is a matmul over non-overlapping patches.
        let patches = x
            .reshape((t, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((t * g * g, 3 * p * p))?;
        let embedded = patches
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((t, g * g, d))?;
        let cls = self.class_embedding.broadcast_as((t, 1, d))?;
        let mut hidden =
            Tensor::cat(&[&cls, &embedded], 1)?.broadcast_add(&self.position_embedding(g)?)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden)?;
        }
        if let Some(norm) = &self.final_norm {
            hidden = norm.forward(&hidden)?;
        }
        Ok(hidden.narrow(1, 1, g * g)?.contiguous()?)
    }
}

impl EncoderLayer {
    fn load(
        vit: &VitConfig,
        layout: CheckpointLayout,
        loader: &Loader,
        i: usize,
    ) -> Result<Self, ModelError> {
        let d = vit.hidden_size;
        let name = |part| layout.layer(i, part);
        let norm = |part| match vit.norm {
            NormKind::LayerNorm => loader.layer_norm(&name(part), d, vit.norm_eps),
            NormKind::RmsNorm => loader.rms_norm(&name(part), d, vit.norm_eps),
        };
        let qkv = match layout {
            CheckpointLayout::Custom => {
                loader.linear(&name(LayerPart::Qkv), 3 * d, d, vit.qkv_bias)?
            }
            CheckpointLayout::Hf | CheckpointLayout::HfLegacy => {
                // One fused matmul instead of three.
                let parts = [LayerPart::Q, LayerPart::K, LayerPart::V]
                    .map(|part| loader.linear(&name(part), d, d, vit.qkv_bias));
                let [q, k, v] = parts;
                let (q, k, v) = (q?, k?, v?);
                Linear::fuse(&[&q, &k, &v])?
            }
        };
        let qk_norm = if vit.qk_norm {
            Some((
                loader.rms_norm(&name(LayerPart::QNorm), d, vit.norm_eps)?,
                loader.rms_norm(&name(LayerPart::KNorm), d, vit.norm_eps)?,
            ))
        } else {
            None
        };
        let scale1 = loader.tensor(&name(LayerPart::Scale1), &[d])?;
        let scale2 = loader.tensor(&name(LayerPart::Scale2), &[d])?;
        let mut layer = Self {
            norm1: norm(LayerPart::Norm1)?,
            norm2: norm(LayerPart::Norm2)?,
            scales: None,
            attention: Attention {
                qkv,
                qk_norm,
                proj: loader.linear(&name(LayerPart::Proj), d, d, true)?,
                heads: vit.num_heads,
            },
            fc1: loader.linear(&name(LayerPart::Fc1), vit.intermediate_size, d, true)?,
            fc2: loader.linear(&name(LayerPart::Fc2), d, vit.intermediate_size, true)?,
        };
        let fused = cfg!(feature = "cuda")
            && dvd_nn::kernels::fused_ok(&scale1)
            && layer.attention.flash_ok();
        if fused {
            layer.attention.proj = layer.attention.proj.scale_outputs(&scale1)?;
            layer.fc2 = layer.fc2.scale_outputs(&scale2)?;
        } else {
            layer.scales = Some((scale1, scale2));
        }
        Ok(layer)
    }

    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let Some((scale1, scale2)) = &self.scales else {
            #[cfg(feature = "cuda")]
            return self.forward_fused(x);
            #[cfg(not(feature = "cuda"))]
            candle_core::bail!("InternViT layer scales are folded only in CUDA builds");
        };
        let attended = self.attention.forward(&self.norm1.forward(x)?)?;
        let x = (x + attended.broadcast_mul(scale1)?)?;
        let mlp = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        x + mlp.broadcast_mul(scale2)?
    }
}

#[cfg(feature = "cuda")]
impl EncoderLayer {
    /// The layer on GPUs (bf16 on CUDA, layer scales folded into `proj` and `fc2`): flash
    /// attention on the qkv output in place, and every bias, the GELU and both residual adds in
    /// the epilogues of the GEMMs before them.
    fn forward_fused(&self, x: &Tensor) -> CandleResult<Tensor> {
        use dvd_nn::fused::{linear_gelu, linear_residual};
        let attended = self.attention.forward_fused(&self.norm1.forward(x)?)?;
        let x = linear_residual(&self.attention.proj, &attended, x)?;
        let hidden = linear_gelu(&self.fc1, &self.norm2.forward(&x)?)?;
        linear_residual(&self.fc2, &hidden, &x)
    }
}

impl Attention {
    /// Whether the heads fit the flash-attention kernel (widths 64 and 128).
    fn flash_ok(&self) -> bool {
        let hd = self.proj.weight().dim(0).unwrap_or(0) / self.heads.max(1);
        hd == 64 || hd == 128
    }
}

#[cfg(feature = "cuda")]
impl Attention {
    /// Attention on GPU: flash attention reads q, k and v from the qkv projection in place.
    /// Returns the attention output before the output projection (the caller fuses it with
    /// the residual add).
    fn forward_fused(&self, x: &Tensor) -> CandleResult<Tensor> {
        use dvd_nn::kernels::{AttentionDims, HeadView, flash_attention, uninit_bf16};
        let (t, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self.qkv.forward(x)?.contiguous()?;
        let normed = match &self.qk_norm {
            Some((q_norm, k_norm)) => Some((
                q_norm.forward(&qkv.narrow(2, 0, d)?)?.contiguous()?,
                k_norm.forward(&qkv.narrow(2, d, d)?)?.contiguous()?,
            )),
            None => None,
        };
        let (q, k) = match &normed {
            Some((q, k)) => (
                HeadView::packed(q, n, self.heads, hd),
                HeadView::packed(k, n, self.heads, hd),
            ),
            None => (
                HeadView::columns(&qkv, n, 3 * d, 0, hd),
                HeadView::columns(&qkv, n, 3 * d, d, hd),
            ),
        };
        let v = HeadView::columns(&qkv, n, 3 * d, 2 * d, hd);
        // SAFETY: flash attention below writes every row of every head of every tile (q_len
        // = n rows, `heads` heads of `hd`: all `d` columns) before the caller reads `out`.
        #[allow(unsafe_code)]
        let out = unsafe { uninit_bf16(x.device(), (t, n, d)) }?;
        let dims = AttentionDims {
            batch: t,
            q_len: n,
            kv_len: n,
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: hd,
        };
        let scale = (hd as f32).powf(-0.5);
        flash_attention(
            q,
            k,
            v,
            HeadView::packed(&out, n, self.heads, hd),
            dims,
            scale,
            false,
        )?;
        Ok(out)
    }
}

impl Attention {
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let (t, n, d) = x.dims3()?;
        let qkv = self.qkv.forward(x)?;
        let mut q = qkv.narrow(2, 0, d)?;
        let mut k = qkv.narrow(2, d, d)?;
        let v = qkv.narrow(2, 2 * d, d)?;
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        let hd = d / self.heads;
        // Heads become the batch axis: [T * heads, N, hd].
        let split = |x: Tensor| -> CandleResult<Tensor> {
            x.reshape((t, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((t * self.heads, n, hd))
        };
        // Scaling q is cheaper than scaling the N x N scores.
        let q = (split(q)? * (hd as f64).powf(-0.5))?;
        let (k, v) = (split(k)?, split(v)?);
        let pairs = t * self.heads;
        let budget = if x.device().is_cpu() {
            CPU_SCORE_BUDGET
        } else {
            DEVICE_SCORE_BUDGET
        };
        let chunk = (budget / (n * n * x.dtype().size_in_bytes()).max(1)).clamp(1, pairs);
        let mut outputs = Vec::with_capacity(pairs.div_ceil(chunk));
        for start in (0..pairs).step_by(chunk) {
            let len = chunk.min(pairs - start);
            let scores = q
                .narrow(0, start, len)?
                .matmul(&k.narrow(0, start, len)?.t()?)?;
            outputs.push(softmax(&scores)?.matmul(&v.narrow(0, start, len)?)?);
        }
        let out = Tensor::cat(&outputs, 0)?
            .reshape((t, self.heads, n, hd))?
            .transpose(1, 2)?
            .reshape((t, n, d))?;
        self.proj.forward(&out)
    }
}
