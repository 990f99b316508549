//! Tensor names of the vision half in the three layouts found in published checkpoints.

use dvd_checkpoint::Checkpoint;

use dvd_nn::ModelError;

/// How the checkpoint names its vision tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// GitHub/custom (`vision_model.*`, fused `attn.qkv`, `mlp1.*`).
    Custom,
    /// HF (`model.vision_tower.*`, `model.multi_modal_projector.*`).
    Hf,
    /// HF as saved by transformers before 4.52 (`vision_tower.*`, `multi_modal_projector.*`).
    HfLegacy,
}

impl CheckpointLayout {
    /// Detects the layout from the class-embedding tensor's name.
    pub fn detect(checkpoint: &Checkpoint) -> Result<Self, ModelError> {
        [Self::Custom, Self::Hf, Self::HfLegacy]
            .into_iter()
            .find(|layout| checkpoint.contains(&layout.class_embedding()))
            .ok_or_else(|| {
                ModelError::Unsupported(format!(
                    "{} holds no InternViT (looked for vision_model.embeddings.class_embedding, \
                     model.vision_tower.embeddings.cls_token and vision_tower.embeddings.cls_token)",
                    checkpoint.dir().display()
                ))
            })
    }

    fn tower(self) -> &'static str {
        match self {
            Self::Custom => "vision_model.",
            Self::Hf => "model.vision_tower.",
            Self::HfLegacy => "vision_tower.",
        }
    }

    /// The custom layout's name or the HF layouts' name, whichever is this layout's.
    fn pick(self, custom: &'static str, hf: &'static str) -> &'static str {
        match self {
            Self::Custom => custom,
            Self::Hf | Self::HfLegacy => hf,
        }
    }

    fn embedding(self, custom: &'static str, hf: &'static str) -> String {
        format!("{}embeddings.{}", self.tower(), self.pick(custom, hf))
    }

    /// `[1, 1, D]` class token.
    pub fn class_embedding(self) -> String {
        self.embedding("class_embedding", "cls_token")
    }

    /// `[1, 1 + g*g, D]` position embedding.
    pub fn position_embedding(self) -> String {
        self.embedding("position_embedding", "position_embeddings")
    }

    /// Prefix of the patch-embedding convolution (`.weight` `[D, 3, p, p]`, `.bias`).
    pub fn patch_embedding(self) -> String {
        self.embedding("patch_embedding", "patch_embeddings.projection")
    }

    /// Prefix of layer `i`'s `part`.
    pub fn layer(self, i: usize, part: LayerPart) -> String {
        // The fused qkv exists only in the custom layout, q/k/v only in the HF ones.
        let suffix = match part {
            LayerPart::Norm1 => self.pick("norm1", "layernorm_before"),
            LayerPart::Norm2 => self.pick("norm2", "layernorm_after"),
            LayerPart::Scale1 => self.pick("ls1", "lambda_1"),
            LayerPart::Scale2 => self.pick("ls2", "lambda_2"),
            LayerPart::Qkv => "attn.qkv",
            LayerPart::Q => "attention.q_proj",
            LayerPart::K => "attention.k_proj",
            LayerPart::V => "attention.v_proj",
            LayerPart::QNorm => self.pick("attn.q_norm", "attention.q_norm"),
            LayerPart::KNorm => self.pick("attn.k_norm", "attention.k_norm"),
            LayerPart::Proj => self.pick("attn.proj", "attention.projection_layer"),
            LayerPart::Fc1 => "mlp.fc1",
            LayerPart::Fc2 => "mlp.fc2",
        };
        let layers = self.pick("layers", "layer");
        format!("{}encoder.{layers}.{i}.{suffix}", self.tower())
    }

    /// Prefix of the HF final LayerNorm (`use_mean_pooling: false`).
    pub fn final_norm(self) -> String {
        format!("{}layernorm", self.tower())
    }

    /// Prefix of the `mlp1` projector's `part`.
    pub fn mlp1(self, part: Mlp1Part) -> String {
        let (custom, hf) = match part {
            Mlp1Part::Norm => ("mlp1.0", "layer_norm"),
            Mlp1Part::Linear1 => ("mlp1.1", "linear_1"),
            Mlp1Part::Linear2 => ("mlp1.3", "linear_2"),
        };
        match self {
            Self::Custom => custom.into(),
            Self::Hf => format!("model.multi_modal_projector.{hf}"),
            Self::HfLegacy => format!("multi_modal_projector.{hf}"),
        }
    }
}

/// Tensors of one encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPart {
    /// Norm before attention.
    Norm1,
    /// Norm before the MLP.
    Norm2,
    /// Layer scale of the attention branch.
    Scale1,
    /// Layer scale of the MLP branch.
    Scale2,
    /// Fused q|k|v projection (custom layout).
    Qkv,
    /// Query projection (HF layouts).
    Q,
    /// Key projection (HF layouts).
    K,
    /// Value projection (HF layouts).
    V,
    /// Query RMSNorm (6B).
    QNorm,
    /// Key RMSNorm (6B).
    KNorm,
    /// Attention output projection.
    Proj,
    /// MLP up projection.
    Fc1,
    /// MLP down projection.
    Fc2,
}

/// Tensors of the `mlp1` projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp1Part {
    /// LayerNorm over 4D (eps 1e-5).
    Norm,
    /// 4D -> LLM width.
    Linear1,
    /// LLM width -> LLM width.
    Linear2,
}
