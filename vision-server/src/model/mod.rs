//! The vision model: InternViT (300M and 6B styles), pixel shuffle + `mlp1`, and the
//! InternVL3.5-Flash Visual Resolution Router with `mlp2`, on candle (CPU now, any candle
//! device later), loaded from either published checkpoint layout.

mod config;
mod names;
mod pos_embed;
mod projector;
mod router;
mod vision_model;
mod vit;

pub use config::{
    ConfigStyle, NormKind, PixelShuffleVersion, RouterConfig, VisionConfig, VitConfig,
};
pub use dvd_nn::{LoadOptions, ModelError};
pub use names::CheckpointLayout;
pub use projector::pixel_shuffle;
pub use router::{POOLING_HEADS, RouterDecision, RouterThresholds, decide};
pub use vision_model::{EncodeTimings, EncodedTiles, ProjectedFeatures, Routing, VisionModel};
