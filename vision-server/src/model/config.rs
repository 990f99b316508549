//! The vision half of an InternVL3.5 `config.json`, in either published layout, with missing
//! fields filled from the reference classes' defaults.
//!
//! - GitHub/custom layout (`InternVLChatModel`): `vision_config` in `InternVisionConfig` names
//!   (whose defaults are the **6B** values), `llm_config`, and top-level `force_image_size`,
//!   `select_layer`, `ps_version`, `min/max_dynamic_patch`, `use_thumbnail`, `flash_*`.
//! - HF layout (`InternVLForConditionalGeneration`): `vision_config` in `InternVLVisionConfig`
//!   names (300M defaults), `text_config`, `vision_feature_layer`, and tiling from
//!   `preprocessor_config.json` when present.

use std::path::Path;

use dvd_checkpoint::ConfigFields as Fields;
use serde_json::Value;

use crate::preprocess::TilingOptions;
use dvd_nn::ModelError;

/// Which of the two published configuration layouts a `config.json` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStyle {
    /// `InternVLChatModel` (`llm_config`, `InternVisionConfig` names).
    Custom,
    /// `InternVLForConditionalGeneration` (`text_config`, `InternVLVisionConfig` names).
    Hf,
}

/// Normalisation used inside the ViT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm with weight and bias (InternViT-300M).
    LayerNorm,
    /// RMSNorm with weight only (InternViT-6B).
    RmsNorm,
}

/// Token order produced by the pixel shuffle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelShuffleVersion {
    /// Column-major output (the transposed original behaviour).
    V1,
    /// Row-major output; every InternVL3.5 checkpoint.
    V2,
}

/// InternViT hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    /// Width D of the tokens.
    pub hidden_size: usize,
    /// Encoder layers in the checkpoint.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Image side the position embedding was trained for (its grid is `image_size / patch_size`).
    pub image_size: usize,
    /// LayerNorm or RMSNorm.
    pub norm: NormKind,
    /// Epsilon of the ViT norms (and of the 6B's q/k norms).
    pub norm_eps: f64,
    /// Whether the fused qkv projection has a bias.
    pub qkv_bias: bool,
    /// Whether q and k are RMS-normalised over the full width (InternViT-6B).
    pub qk_norm: bool,
    /// A LayerNorm after the last layer (HF `use_mean_pooling: false`; never in InternVL3.5).
    pub final_norm: bool,
}

impl VitConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// Visual Resolution Router settings (InternVL3.5-Flash).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    /// `flash_mode`: route by default.
    pub enabled: bool,
    /// `flash_relative_threshold`: the quantile of the request's router scores a tile must exceed.
    pub relative_threshold: Option<f64>,
    /// `flash_absolute_threshold`: the score a tile must reach.
    pub absolute_threshold: Option<f64>,
}

/// Everything the vision server needs to know about a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// The layout of `config.json`.
    pub style: ConfigStyle,
    /// The ViT.
    pub vit: VitConfig,
    /// Output of which hidden state feeds the projector: 0 = embeddings, k = after layer k.
    pub feature_layer: usize,
    /// Pixel-shuffle ratio of `mlp1` (0.5: 2x2 tokens merge into one).
    pub downsample_ratio: f64,
    /// Pixel-shuffle token order.
    pub ps_version: PixelShuffleVersion,
    /// Width of the language model the features are for (`mlp1` output).
    pub llm_hidden_size: usize,
    /// Router settings, read whether or not the checkpoint has router weights.
    pub router: RouterConfig,
    /// How images become tiles for this checkpoint.
    pub tiling: TilingOptions,
}

impl VisionConfig {
    /// Reads `config.json` (and, for the HF layout, `preprocessor_config.json`) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let json = dvd_checkpoint::read_json(&path)?;
        let preprocessor = dir.join("preprocessor_config.json");
        let preprocessor = if preprocessor.is_file() {
            Some((dvd_checkpoint::read_json(&preprocessor)?, preprocessor))
        } else {
            None
        };
        Self::from_json(
            &json,
            &path,
            preprocessor.as_ref().map(|(j, p)| (j, p.as_path())),
        )
    }

    /// Parses an already read `config.json`; `path` names it in errors.
    pub fn from_json(
        json: &Value,
        path: &Path,
        preprocessor: Option<(&Value, &Path)>,
    ) -> Result<Self, ModelError> {
        let top = Fields::new(json, path, "")?;
        let style = detect_style(json, path)?;
        let config = match style {
            ConfigStyle::Custom => parse_custom(&top)?,
            ConfigStyle::Hf => parse_hf(&top, preprocessor)?,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Side of the pixel-shuffle block: 2 for ratio 0.5, 4 for 0.25.
    pub fn shuffle_factor(&self) -> usize {
        (1.0 / self.downsample_ratio).round() as usize
    }

    /// Tokens per tile after the projector.
    pub fn tokens_per_tile(&self) -> usize {
        let grid = self.tiling.tile_size as usize / self.vit.patch_size;
        (grid / self.shuffle_factor()).pow(2)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let err = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let vit = &self.vit;
        if vit.hidden_size == 0
            || vit.num_heads == 0
            || !vit.hidden_size.is_multiple_of(vit.num_heads)
        {
            return Err(err(format!(
                "vision hidden_size {} is not divisible by {} heads",
                vit.hidden_size, vit.num_heads
            )));
        }
        if vit.patch_size == 0 || !vit.image_size.is_multiple_of(vit.patch_size) {
            return Err(err(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                vit.image_size, vit.patch_size
            )));
        }
        if self.feature_layer > vit.num_layers {
            return Err(err(format!(
                "feature layer {} but the ViT has {} layers",
                self.feature_layer, vit.num_layers
            )));
        }
        let factor = 1.0 / self.downsample_ratio;
        if !(factor >= 1.0 && (factor - factor.round()).abs() < 1e-9) {
            return Err(err(format!(
                "downsample_ratio {} is not 1/n",
                self.downsample_ratio
            )));
        }
        let tile = self.tiling.tile_size as usize;
        let grid = tile / vit.patch_size;
        if !tile.is_multiple_of(vit.patch_size) || !grid.is_multiple_of(self.shuffle_factor()) {
            return Err(err(format!(
                "tile size {tile} gives a {grid}x{grid} patch grid that pixel shuffle by {} cannot split",
                self.shuffle_factor()
            )));
        }
        if self.tiling.max_tiles == 0 || self.tiling.min_tiles > self.tiling.max_tiles {
            return Err(err(format!(
                "tile limits {}..{} are empty",
                self.tiling.min_tiles, self.tiling.max_tiles
            )));
        }
        Ok(())
    }
}

fn detect_style(json: &Value, path: &Path) -> Result<ConfigStyle, ModelError> {
    let model_type = json.get("model_type").and_then(Value::as_str);
    if json.get("llm_config").is_some() || model_type == Some("internvl_chat") {
        Ok(ConfigStyle::Custom)
    } else if json.get("text_config").is_some() || model_type == Some("internvl") {
        Ok(ConfigStyle::Hf)
    } else {
        Err(ModelError::Config {
            path: path.to_path_buf(),
            message: "not an InternVL config: no llm_config or text_config, model_type is neither \
                      internvl_chat nor internvl"
                .into(),
        })
    }
}

fn parse_custom(top: &Fields) -> Result<VisionConfig, ModelError> {
    // InternVisionConfig defaults are the InternViT-6B values.
    let v = top.object("vision_config")?;
    let norm = norm_kind(&v, "rms_norm")?;
    require_gelu(&v, "hidden_act")?;
    let vit = read_vit(&v, norm, &VitSpelling::INTERN_VISION)?;
    let llm_hidden_size = top.object("llm_config")?.usize_or("hidden_size", 4096)?;
    let tile_size = match top.get("force_image_size") {
        Some(Value::Null) | None => vit.image_size,
        Some(_) => top.side_or("force_image_size", 0)?,
    };
    let dynamic = top.bool_or("dynamic_image_size", false)?;
    let (min_tiles, max_tiles) = if dynamic {
        (
            top.usize_or("min_dynamic_patch", 1)?,
            top.usize_or("max_dynamic_patch", 6)?,
        )
    } else {
        (1, 1)
    };
    let ps_version = match top.str_or("ps_version", "v1")?.as_str() {
        "v1" => PixelShuffleVersion::V1,
        "v2" => PixelShuffleVersion::V2,
        other => return Err(top.error(format!("unknown ps_version {other:?}")).into()),
    };
    let feature_layer = resolve_layer(top, "select_layer", vit.num_layers)?;
    Ok(VisionConfig {
        style: ConfigStyle::Custom,
        vit,
        feature_layer,
        router: read_router(top)?,
        downsample_ratio: top.f64_or("downsample_ratio", 0.5)?,
        ps_version,
        llm_hidden_size,
        tiling: TilingOptions {
            tile_size: to_u32(top, tile_size)?,
            min_tiles: to_u32(top, min_tiles)?,
            max_tiles: to_u32(top, max_tiles)?,
            thumbnail: top.bool_or("use_thumbnail", false)?,
            ..TilingOptions::default()
        },
    })
}

fn parse_hf(
    top: &Fields,
    preprocessor: Option<(&Value, &Path)>,
) -> Result<VisionConfig, ModelError> {
    // InternVLVisionConfig defaults are the InternViT-300M values.
    let v = top.object("vision_config")?;
    let norm = norm_kind(&v, "layer_norm")?;
    require_gelu(&v, "hidden_act")?;
    require_gelu(top, "projector_hidden_act")?;
    if !v.bool_or("use_absolute_position_embeddings", true)? {
        return Err(ModelError::Unsupported(
            "vision_config.use_absolute_position_embeddings = false".into(),
        ));
    }
    let mut vit = read_vit(&v, norm, &VitSpelling::INTERN_VL_VISION)?;
    vit.final_norm = !v.bool_or("use_mean_pooling", true)?;
    let strategy = top.str_or("vision_feature_select_strategy", "default")?;
    if strategy != "default" {
        return Err(ModelError::Unsupported(format!(
            "vision_feature_select_strategy {strategy:?} (only \"default\", which drops CLS)"
        )));
    }
    // Qwen2Config's default width when text_config is absent.
    let llm_hidden_size = match top.get("text_config") {
        Some(_) => top.object("text_config")?.usize_or("hidden_size", 4096)?,
        None => 4096,
    };
    let feature_layer = resolve_layer(top, "vision_feature_layer", vit.num_layers)?;
    let mut tiling = TilingOptions {
        tile_size: to_u32(top, vit.image_size)?,
        min_tiles: 1,
        max_tiles: 12,
        thumbnail: true,
        ..TilingOptions::default()
    };
    if let Some((json, path)) = preprocessor {
        let p = Fields::new(json, path, "")?;
        // InternVLProcessor turns crop_to_patches on; a processor saved without it tiles.
        if p.bool_or("crop_to_patches", true)? {
            tiling.min_tiles = to_u32(&p, p.usize_or("min_patches", 1)?)?;
            tiling.max_tiles = to_u32(&p, p.usize_or("max_patches", 12)?)?;
        } else {
            tiling.max_tiles = 1;
        }
        if p.get("size").is_some() {
            let size = p.object("size")?;
            let height = size.usize_or("height", vit.image_size)?;
            let width = size.usize_or("width", vit.image_size)?;
            if height != width {
                return Err(p
                    .error(format!("non-square tile size {width}x{height}"))
                    .into());
            }
            tiling.tile_size = to_u32(&p, height)?;
        }
    }
    Ok(VisionConfig {
        style: ConfigStyle::Hf,
        vit,
        feature_layer,
        router: read_router(top)?,
        downsample_ratio: top.f64_or("downsample_ratio", 0.5)?,
        ps_version: PixelShuffleVersion::V2,
        llm_hidden_size,
        tiling,
    })
}

/// How one reference config class spells a `vision_config` and what it fills in for missing
/// fields.
struct VitSpelling {
    // The sizes' defaults.
    hidden_size: usize,
    num_layers: usize,
    num_heads: usize,
    intermediate_size: usize,
    image_size: usize,
    /// Key of the qkv-bias switch.
    qkv_bias: &'static str,
    /// Key of the q/k-norm switch.
    qk_norm: &'static str,
    /// Whether q/k are normalised when the key is missing.
    qk_norm_default: bool,
}

impl VitSpelling {
    /// `InternVisionConfig` (custom layout): InternViT-6B defaults.
    const INTERN_VISION: Self = Self {
        hidden_size: 3200,
        num_layers: 48,
        num_heads: 25,
        intermediate_size: 12800,
        image_size: 224,
        qkv_bias: "qkv_bias",
        qk_norm: "qk_normalization",
        qk_norm_default: true,
    };
    /// `InternVLVisionConfig` (HF layout): InternViT-300M defaults.
    const INTERN_VL_VISION: Self = Self {
        hidden_size: 1024,
        num_layers: 24,
        num_heads: 16,
        intermediate_size: 4096,
        image_size: 448,
        qkv_bias: "attention_bias",
        qk_norm: "use_qk_norm",
        qk_norm_default: false,
    };
}

/// The ViT of `vision_config` `v` as `spelling` names it (without a final norm).
fn read_vit(v: &Fields, norm: NormKind, spelling: &VitSpelling) -> Result<VitConfig, ModelError> {
    Ok(VitConfig {
        hidden_size: v.usize_or("hidden_size", spelling.hidden_size)?,
        num_layers: v.usize_or("num_hidden_layers", spelling.num_layers)?,
        num_heads: v.usize_or("num_attention_heads", spelling.num_heads)?,
        intermediate_size: v.usize_or("intermediate_size", spelling.intermediate_size)?,
        patch_size: v.side_or("patch_size", 14)?,
        image_size: v.side_or("image_size", spelling.image_size)?,
        norm,
        norm_eps: v.f64_or("layer_norm_eps", 1e-6)?,
        qkv_bias: v.bool_or(spelling.qkv_bias, false)?,
        qk_norm: v.bool_or(spelling.qk_norm, spelling.qk_norm_default)?,
        final_norm: false,
    })
}

/// The Flash router settings, spelled alike in both layouts.
fn read_router(top: &Fields) -> Result<RouterConfig, ModelError> {
    Ok(RouterConfig {
        enabled: truthy(top.get("flash_mode")),
        relative_threshold: top.opt_f64("flash_relative_threshold")?,
        absolute_threshold: top.opt_f64("flash_absolute_threshold")?,
    })
}

/// `select_layer` / `vision_feature_layer` (-1 = last) as a count of layers to run.
fn resolve_layer(top: &Fields, key: &str, layers: usize) -> Result<usize, ModelError> {
    let value = match top.get(key) {
        None | Some(Value::Null) => -1,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or(-1),
        Some(other) => {
            return Err(top
                .error(format!(
                    "{key} must be one integer layer index, found {other}"
                ))
                .into());
        }
    };
    let resolved = if value < 0 {
        layers as i64 + 1 + value
    } else {
        value
    };
    if resolved < 0 || resolved > layers as i64 {
        return Err(top
            .error(format!("{key} = {value} is outside the {layers}-layer ViT"))
            .into());
    }
    Ok(resolved as usize)
}

fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|v| v != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

fn to_u32(fields: &Fields, v: usize) -> Result<u32, ModelError> {
    u32::try_from(v).map_err(|_| fields.error(format!("{v} is too large")).into())
}

/// `norm_type`, `default` when absent.
fn norm_kind(fields: &Fields, default: &str) -> Result<NormKind, ModelError> {
    match fields.str_or("norm_type", default)?.as_str() {
        "rms_norm" => Ok(NormKind::RmsNorm),
        "layer_norm" => Ok(NormKind::LayerNorm),
        other => Err(fields.error(format!("unknown norm_type {other:?}")).into()),
    }
}

fn require_gelu(fields: &Fields, key: &str) -> Result<(), ModelError> {
    let act = fields.str_or(key, "gelu")?;
    if act != "gelu" {
        return Err(ModelError::Unsupported(format!(
            "{} = {act:?} (only exact \"gelu\")",
            fields.key(key)
        )));
    }
    Ok(())
}
