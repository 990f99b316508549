//! A prompt whose image features may still be on the wire: text is known up front, each image's
//! `<IMG_CONTEXT>` run grows tile by tile as features arrive, and prefill can run on every
//! position known so far.

use candle_core::Tensor;

use super::kv::{BlockKey, ImageSpan, block_keys};
use crate::model::{LanguageModel, ModelError};
use crate::text::ImageTokenIds;

/// One piece of a prompt plan: token ids, or an image whose features come later.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptPiece {
    /// Text token ids.
    Text(Vec<u32>),
    /// An image: `<img>`, one `<IMG_CONTEXT>` per feature row of each tile, `</img>`.
    Image(ImageSlot),
}

/// What the engine knows of an image before its features arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSlot {
    /// Content hash for the prefix cache; `None` hashes the features as they arrive.
    pub content_hash: Option<[u8; 32]>,
    /// Most tiles the image may have (sizes the KV reservation); more is an error.
    pub max_tiles: usize,
}

/// One tile's features, in arrival order.
#[derive(Debug, Clone)]
pub struct FeatureTile {
    /// Image the tile belongs to.
    pub image_index: usize,
    /// Position of the tile in its image.
    pub tile_index: usize,
    /// Tiles of the image.
    pub tile_count: usize,
    /// `[tokens, hidden]`, any float dtype.
    pub features: Tensor,
    /// On an image's last tile: a digest of all its features, used as the prefix-cache key
    /// when the request gave no content hash.
    pub image_digest: Option<[u8; 32]>,
}

/// Bounds on image features that size KV reservations before the features arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureLimits {
    /// Most feature tokens one tile may carry (256 for InternVL3.5's 448-pixel tiles).
    pub max_tokens_per_tile: usize,
}

impl Default for FeatureLimits {
    fn default() -> Self {
        Self {
            max_tokens_per_tile: 256,
        }
    }
}

/// The image being filled in.
#[derive(Debug)]
struct ImageProgress {
    index: usize,
    slot: ImageSlot,
    start: usize,
    tiles: usize,
    tile_count: Option<usize>,
}

/// Embeddings of a run of prompt positions.
#[derive(Debug)]
struct EmbedChunk {
    /// The run's first position.
    first: usize,
    /// `[n, hidden]`.
    embeds: Tensor,
}

impl EmbedChunk {
    fn new(first: usize, embeds: Tensor) -> Self {
        Self { first, embeds }
    }

    /// One past the run's last position.
    fn end(&self) -> usize {
        self.first + self.embeds.dim(0).unwrap_or(0)
    }
}

/// A prompt that grows as features arrive; positions `0..len()` are known.
#[derive(Debug)]
pub(crate) struct StreamingPrompt {
    pieces: std::vec::IntoIter<PromptPiece>,
    ids: Vec<u32>,
    /// Embeddings of known positions, in order.
    chunks: Vec<EmbedChunk>,
    spans: Vec<ImageSpan>,
    current: Option<ImageProgress>,
    images_done: usize,
    image_tokens: usize,
    image_ids: Option<ImageTokenIds>,
    upper_bound: usize,
    complete: bool,
}

impl StreamingPrompt {
    /// A prompt whose ids and embeddings are all known (images already merged).
    pub(crate) fn complete(ids: Vec<u32>, embeds: Tensor, spans: Vec<ImageSpan>) -> Self {
        let image_tokens = spans.iter().map(|s| s.len).sum();
        Self {
            pieces: Vec::new().into_iter(),
            upper_bound: ids.len(),
            ids,
            chunks: vec![EmbedChunk::new(0, embeds)],
            spans,
            current: None,
            images_done: 0,
            image_tokens,
            image_ids: None,
            complete: true,
        }
    }

    /// A prompt from `pieces`; text up to the first image is embedded at once.
    pub(crate) fn streaming(
        model: &LanguageModel,
        pieces: Vec<PromptPiece>,
        image_ids: Option<ImageTokenIds>,
        limits: FeatureLimits,
    ) -> Result<Self, ModelError> {
        let mut upper_bound = 0usize;
        for piece in &pieces {
            upper_bound = upper_bound.saturating_add(match piece {
                PromptPiece::Text(ids) => ids.len(),
                PromptPiece::Image(slot) => slot
                    .max_tiles
                    .saturating_mul(limits.max_tokens_per_tile)
                    .saturating_add(2),
            });
        }
        let has_images = pieces.iter().any(|p| matches!(p, PromptPiece::Image(_)));
        if has_images && image_ids.is_none() {
            return Err(ModelError::InvalidInput(
                "the prompt has images but the tokenizer has no <img>/<IMG_CONTEXT>/</img> tokens"
                    .into(),
            ));
        }
        let mut prompt = Self {
            pieces: pieces.into_iter(),
            ids: Vec::new(),
            chunks: Vec::new(),
            spans: Vec::new(),
            current: None,
            images_done: 0,
            image_tokens: 0,
            image_ids,
            upper_bound,
            complete: false,
        };
        prompt.advance(model)?;
        Ok(prompt)
    }

    /// Known positions.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether every position is known.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// The known token ids (`<IMG_CONTEXT>` at feature positions).
    pub(crate) fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Most positions the finished prompt can have.
    pub(crate) fn upper_bound(&self) -> usize {
        self.upper_bound
    }

    /// Feature tokens received so far.
    pub(crate) fn image_tokens(&self) -> usize {
        self.image_tokens
    }

    /// Keys of the full blocks whose content is settled and hashable: all known positions
    /// (but the last, once complete, so at least one token is computed), stopping before an
    /// image that has neither a content hash nor all its features yet.
    pub(crate) fn block_keys(&self, block_size: usize) -> Vec<BlockKey> {
        let mut spans = self.spans.clone();
        let mut limit = if self.complete {
            self.ids.len().saturating_sub(1)
        } else {
            self.ids.len()
        };
        if let Some(current) = &self.current {
            match current.slot.content_hash {
                Some(hash) => spans.push(ImageSpan {
                    start: current.start,
                    len: self.ids.len() - current.start,
                    content_hash: hash,
                }),
                None => limit = limit.min(current.start),
            }
        }
        block_keys(&self.ids[..limit], &spans, block_size)
    }

    /// Embeddings of positions `start..start + n` (all known).
    pub(crate) fn embeds(&self, start: usize, n: usize) -> Result<Tensor, ModelError> {
        let end = start + n;
        let mut parts = Vec::new();
        for chunk in &self.chunks {
            let (lo, hi) = (start.max(chunk.first), end.min(chunk.end()));
            if lo < hi {
                parts.push(chunk.embeds.narrow(0, lo - chunk.first, hi - lo)?);
            }
        }
        let covered: usize = parts.iter().map(|p| p.dim(0).unwrap_or(0)).sum();
        if covered != n {
            return Err(ModelError::InvalidInput(format!(
                "prompt positions {start}..{end} are not all known ({covered} of {n})"
            )));
        }
        Ok(match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 0)?,
        })
    }

    /// Frees the embeddings of positions before `position` (already prefilled).
    pub(crate) fn release_before(&mut self, position: usize) {
        self.chunks.retain(|chunk| chunk.end() > position);
    }

    /// Appends one tile's features; the error says why the request must fail.
    pub(crate) fn push_tile(
        &mut self,
        model: &LanguageModel,
        tile: FeatureTile,
        limits: FeatureLimits,
    ) -> Result<(), ModelError> {
        let invalid = |m: String| Err(ModelError::InvalidInput(m));
        let (Some(current), Some(image_ids)) = (self.current.as_mut(), self.image_ids) else {
            return invalid(format!(
                "a tile of image {} arrived but the prompt expects no more images",
                tile.image_index
            ));
        };
        if tile.image_index != current.index || tile.tile_index != current.tiles {
            return invalid(format!(
                "tile {} of image {} arrived where tile {} of image {} was expected",
                tile.tile_index, tile.image_index, current.tiles, current.index
            ));
        }
        let tile_count = *current.tile_count.get_or_insert(tile.tile_count);
        if tile_count == 0 || tile_count > current.slot.max_tiles || tile.tile_count != tile_count {
            return invalid(format!(
                "image {} announces {} tiles; at most {} were expected",
                current.index, tile.tile_count, current.slot.max_tiles
            ));
        }
        let (tokens, width) = tile.features.dims2()?;
        let hidden = model.config().hidden_size;
        if width != hidden {
            return invalid(format!(
                "features of image {} are {width} wide; the model's hidden size is {hidden}",
                current.index
            ));
        }
        if tokens == 0 || tokens > limits.max_tokens_per_tile {
            return invalid(format!(
                "tile {} of image {} has {tokens} feature tokens; 1 to {} allowed",
                tile.tile_index, current.index, limits.max_tokens_per_tile
            ));
        }
        let context = model.config().max_position_embeddings;
        if self.ids.len() + tokens + 1 >= context {
            return invalid(format!(
                "the prompt grows past the model's context of {context} tokens with image {}",
                current.index
            ));
        }
        let dtype = self
            .chunks
            .last()
            .map(|c| c.embeds.dtype())
            .unwrap_or(model.options().dtype);
        let features = tile
            .features
            .to_dtype(dtype)?
            .to_device(&model.options().device)?;
        self.chunks.push(EmbedChunk::new(self.ids.len(), features));
        self.ids
            .extend(std::iter::repeat_n(image_ids.context, tokens));
        self.image_tokens += tokens;
        current.tiles += 1;
        if current.tiles < tile_count {
            return Ok(());
        }
        // The image is complete: close it and go on to the text after it.
        let hash = match (current.slot.content_hash, tile.image_digest) {
            (Some(hash), _) | (None, Some(hash)) => hash,
            (None, None) => {
                return invalid(format!("image {} has no content hash", current.index));
            }
        };
        self.spans.push(ImageSpan {
            start: current.start,
            len: self.ids.len() - current.start,
            content_hash: hash,
        });
        self.current = None;
        self.images_done += 1;
        self.push_text(model, &[image_ids.end])?;
        self.advance(model)
    }

    /// Appends text pieces up to the next image (whose `<img>` is appended too) or the end.
    fn advance(&mut self, model: &LanguageModel) -> Result<(), ModelError> {
        while let Some(piece) = self.pieces.next() {
            match piece {
                PromptPiece::Text(ids) => {
                    if !ids.is_empty() {
                        self.push_text(model, &ids)?;
                    }
                }
                PromptPiece::Image(slot) => {
                    let Some(image_ids) = self.image_ids else {
                        return Err(ModelError::InvalidInput("no image tokens".into()));
                    };
                    self.push_text(model, &[image_ids.start])?;
                    self.current = Some(ImageProgress {
                        index: self.images_done,
                        slot,
                        start: self.ids.len(),
                        tiles: 0,
                        tile_count: None,
                    });
                    return Ok(());
                }
            }
        }
        self.complete = true;
        Ok(())
    }

    fn push_text(&mut self, model: &LanguageModel, ids: &[u32]) -> Result<(), ModelError> {
        let embeds = model.embed(ids, None, None)?;
        self.chunks.push(EmbedChunk::new(self.ids.len(), embeds));
        self.ids.extend_from_slice(ids);
        Ok(())
    }
}
