//! The vision half of InternVL3.5: InternViT, the `mlp1` projector and, for Flash checkpoints,
//! the router and `mlp2`. Loads only vision tensors from any published checkpoint layout.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, IndexOp, Tensor};
use dvd_checkpoint::Checkpoint;
use image::RgbImage;

use super::config::{PixelShuffleVersion, VisionConfig};
use super::names::{CheckpointLayout, Mlp1Part};
use super::projector::{MlpProjector, pixel_shuffle};
use super::router::{Router, RouterDecision, RouterThresholds, decide};
use super::vit::InternVit;
use crate::preprocess::pixel_values;
use dvd_nn::ModelError;
use dvd_nn::{LoadOptions, Loader};

/// Shuffle factor of the Flash `mlp2` path (ratio 0.25: 4x4 tokens merge into one).
const COMPRESSED_SHUFFLE: usize = 4;

/// Whether tiles go through the Visual Resolution Router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Routing {
    /// Route when the config enables it (`flash_mode`) and the checkpoint has router weights.
    Default,
    /// Every tile takes the 256-token `mlp1` path.
    Off,
    /// Route with the config's thresholds (fails without router weights or thresholds).
    On,
    /// Route with these thresholds.
    With(RouterThresholds),
}

/// Features of a request's tiles, ready for the language model.
#[derive(Debug, Clone)]
pub struct EncodedTiles {
    /// `[tokens, llm_hidden]`, tiles concatenated in order.
    pub features: Tensor,
    /// Tokens of each tile (e.g. 256, or 64 when the router compressed it).
    pub tokens_per_tile: Vec<usize>,
    /// The router's decision, when routing ran.
    pub router: Option<RouterDecision>,
    /// Time spent in each stage.
    pub timings: EncodeTimings,
}

/// Wall time of each encoding stage (the device is synchronised at the end of each).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EncodeTimings {
    /// InternViT.
    pub vit: Duration,
    /// Router scoring and decision (zero when routing is off).
    pub router: Duration,
    /// Pixel shuffle and projectors.
    pub project: Duration,
}

impl EncodedTiles {
    /// Features of tile `index`: `[tokens_per_tile[index], llm_hidden]`.
    pub fn tile(&self, index: usize) -> Result<Tensor, ModelError> {
        tile_of(&self.features, &self.tokens_per_tile, index)
    }
}

/// Projected features of a batch of tiles, in tile order.
#[derive(Debug, Clone)]
pub struct ProjectedFeatures {
    /// `[tokens, llm_hidden]`, tiles concatenated in order.
    pub features: Tensor,
    /// Tokens of each tile.
    pub tokens_per_tile: Vec<usize>,
}

impl ProjectedFeatures {
    /// One `[tokens, llm_hidden]` tensor per tile.
    pub fn into_tiles(self) -> Result<Vec<Tensor>, ModelError> {
        (0..self.tokens_per_tile.len())
            .map(|index| tile_of(&self.features, &self.tokens_per_tile, index))
            .collect()
    }
}

/// Rows of tile `index` of `features`, whose tiles have `tokens_per_tile` rows each.
fn tile_of(
    features: &Tensor,
    tokens_per_tile: &[usize],
    index: usize,
) -> Result<Tensor, ModelError> {
    let count = *tokens_per_tile.get(index).ok_or_else(|| {
        ModelError::InvalidInput(format!("tile {index} of {}", tokens_per_tile.len()))
    })?;
    let start: usize = tokens_per_tile[..index].iter().sum();
    Ok(features.narrow(0, start, count)?)
}

/// InternViT + projector (+ ViR), ready to encode tiles.
#[derive(Debug)]
pub struct VisionModel {
    config: VisionConfig,
    layout: CheckpointLayout,
    options: LoadOptions,
    vit: InternVit,
    mlp1: MlpProjector,
    flash: Option<FlashHead>,
}

/// What a Flash checkpoint adds: the router and the compressing `mlp2` projector.
#[derive(Debug)]
struct FlashHead {
    router: Router,
    mlp2: MlpProjector,
}

impl VisionModel {
    /// Loads the vision tensors of the checkpoint in `dir` (see [`dvd_checkpoint::resolve_model_dir`]
    /// for hub ids).
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, ModelError> {
        let config = VisionConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(config, &checkpoint, options)
    }

    /// Loads the vision tensors of an opened checkpoint described by `config`.
    pub fn from_checkpoint(
        config: VisionConfig,
        checkpoint: &Checkpoint,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let layout = CheckpointLayout::detect(checkpoint)?;
        // Batch invariant: a tile's features must not depend on which tiles share its batch.
        let loader = Loader::new(checkpoint, options).batch_invariant();
        let vit = InternVit::load(&config, layout, &loader)?;
        let shuffled = config.vit.hidden_size * config.shuffle_factor().pow(2);
        let h = config.llm_hidden_size;
        let mlp1 = MlpProjector::load(
            &loader,
            &layout.mlp1(Mlp1Part::Norm),
            &[
                layout.mlp1(Mlp1Part::Linear1),
                layout.mlp1(Mlp1Part::Linear2),
            ],
            shuffled,
            &[h, h],
        )?;
        let flash = if Router::present(&loader) {
            let d = config.vit.hidden_size;
            let router = Router::load(&loader, d)?;
            let names = ["mlp2.1", "mlp2.4", "mlp2.7"].map(String::from);
            let mlp2 = MlpProjector::load(
                &loader,
                "mlp2.0",
                &names,
                d * COMPRESSED_SHUFFLE.pow(2),
                &[2 * h, 2 * h, h],
            )?;
            Some(FlashHead { router, mlp2 })
        } else {
            None
        };
        Ok(Self {
            config,
            layout,
            options: options.clone(),
            vit,
            mlp1,
            flash,
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// The tensor-naming layout the checkpoint uses.
    pub fn layout(&self) -> CheckpointLayout {
        self.layout
    }

    /// Whether the checkpoint has a Visual Resolution Router.
    pub fn has_router(&self) -> bool {
        self.flash.is_some()
    }

    /// Compute dtype and device.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// `pixel_values` `[tiles, 3, S, S]` (f32) of tiles on the model's device.
    pub fn pixel_values(&self, tiles: &[RgbImage]) -> Result<Tensor, ModelError> {
        let side = tiles.first().map_or(0, |t| t.width() as usize);
        if tiles.is_empty()
            || tiles
                .iter()
                .any(|t| t.dimensions() != (side as u32, side as u32))
        {
            return Err(ModelError::InvalidInput(
                "tiles must be a non-empty list of equal squares".into(),
            ));
        }
        Ok(Tensor::from_vec(
            pixel_values(tiles),
            (tiles.len(), 3, side, side),
            &self.options.device,
        )?)
    }

    /// ViT patch tokens of the feature layer, CLS dropped: `[T, g*g, D]`.
    pub fn vit_tokens(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        self.vit.forward(pixel_values)
    }

    /// The router's "compress" probability of each tile (`[T, g*g, D]` ViT tokens in).
    pub fn router_probs(&self, tokens: &Tensor) -> Result<Vec<f32>, ModelError> {
        let FlashHead { router, .. } = self.flash.as_ref().ok_or_else(|| {
            ModelError::Unsupported("this checkpoint has no Visual Resolution Router".into())
        })?;
        let probs = router.probabilities(tokens)?;
        Ok(probs.i((.., 0))?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Projects ViT tokens to LLM features: compressed tiles through `mlp2`, others through
    /// `mlp1`.
    pub fn project(
        &self,
        tokens: &Tensor,
        compress: &[bool],
    ) -> Result<ProjectedFeatures, ModelError> {
        let t = tokens.dim(0)?;
        if compress.len() != t {
            return Err(ModelError::InvalidInput(format!(
                "{} routing decisions for {t} tiles",
                compress.len()
            )));
        }
        let full = self.project_group(tokens, compress, false)?;
        let small = self.project_group(tokens, compress, true)?;
        let mut pieces = Vec::with_capacity(t);
        let mut counts = Vec::with_capacity(t);
        let (mut next_full, mut next_small) = (0, 0);
        for &c in compress {
            let (group, next) = if c {
                (&small, &mut next_small)
            } else {
                (&full, &mut next_full)
            };
            let features = group.as_ref().map(|g| g.get(*next)).transpose()?;
            let features = features.ok_or_else(|| {
                ModelError::InvalidInput("projector group is missing a tile".into())
            })?;
            *next += 1;
            counts.push(features.dim(0)?);
            pieces.push(features);
        }
        Ok(ProjectedFeatures {
            features: Tensor::cat(&pieces, 0)?,
            tokens_per_tile: counts,
        })
    }

    /// Features `[tiles_in_group, tokens, H]` of the tiles whose decision equals `compressed`.
    fn project_group(
        &self,
        tokens: &Tensor,
        compress: &[bool],
        compressed: bool,
    ) -> Result<Option<Tensor>, ModelError> {
        let indices: Vec<u32> = (0..compress.len() as u32)
            .filter(|&i| compress[i as usize] == compressed)
            .collect();
        if indices.is_empty() {
            return Ok(None);
        }
        let group = if indices.len() == compress.len() {
            tokens.clone()
        } else {
            let index = Tensor::new(indices.as_slice(), tokens.device())?;
            tokens.index_select(&index, 0)?
        };
        let features = if compressed {
            let FlashHead { mlp2, .. } = self.flash.as_ref().ok_or_else(|| {
                ModelError::Unsupported("this checkpoint has no mlp2 projector".into())
            })?;
            mlp2.forward(&pixel_shuffle(
                &group,
                COMPRESSED_SHUFFLE,
                PixelShuffleVersion::V2,
            )?)?
        } else {
            let shuffled =
                pixel_shuffle(&group, self.config.shuffle_factor(), self.config.ps_version)?;
            self.mlp1.forward(&shuffled)?
        };
        Ok(Some(features))
    }

    /// The thresholds `routing` asks for, or `None` when routing is off.
    pub fn thresholds(&self, routing: Routing) -> Result<Option<RouterThresholds>, ModelError> {
        let configured = || {
            let r = &self.config.router;
            match (r.relative_threshold, r.absolute_threshold) {
                (Some(relative), Some(absolute)) => Ok(RouterThresholds { relative, absolute }),
                _ => Err(ModelError::Unsupported(
                    "config.json lacks flash_relative_threshold / flash_absolute_threshold".into(),
                )),
            }
        };
        match routing {
            Routing::Off => return Ok(None),
            Routing::Default if !(self.config.router.enabled && self.has_router()) => {
                return Ok(None);
            }
            _ if !self.has_router() => {
                return Err(ModelError::Unsupported(
                    "this checkpoint has no Visual Resolution Router (not a Flash model)".into(),
                ));
            }
            _ => {}
        }
        let wanted = match routing {
            Routing::With(t) => t,
            _ => configured()?,
        };
        if !(0.0..=1.0).contains(&wanted.relative) {
            return Err(ModelError::InvalidInput(format!(
                "relative threshold {} is not a quantile in [0, 1]",
                wanted.relative
            )));
        }
        Ok(Some(wanted))
    }

    /// Encodes one request's tiles (`[T, 3, S, S]`), routing them as `routing` says.
    pub fn encode(
        &self,
        pixel_values: &Tensor,
        routing: Routing,
    ) -> Result<EncodedTiles, ModelError> {
        let thresholds = self.thresholds(routing)?;
        let started = Instant::now();
        let tokens = self.vit_tokens(pixel_values)?;
        self.options.device.synchronize()?;
        let vit = started.elapsed();
        let started = Instant::now();
        let router = match thresholds {
            Some(thresholds) => Some(decide(self.router_probs(&tokens)?, thresholds)),
            None => None,
        };
        let router_time = started.elapsed();
        let started = Instant::now();
        let t = tokens.dim(0)?;
        let compress = router
            .as_ref()
            .map_or_else(|| vec![false; t], |r| r.compress.clone());
        let ProjectedFeatures {
            features,
            tokens_per_tile,
        } = self.project(&tokens, &compress)?;
        self.options.device.synchronize()?;
        let timings = EncodeTimings {
            vit,
            router: router_time,
            project: started.elapsed(),
        };
        Ok(EncodedTiles {
            features,
            tokens_per_tile,
            router,
            timings,
        })
    }
}
