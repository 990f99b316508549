//! Image placeholder expansion: the k-th placeholder becomes
//! `<img>` + `<IMG_CONTEXT>` × n_k + `</img>`, where n_k is image k's number of feature tokens
//! (the sum of its tiles' `tokens_per_tile`: 256 per tile, 64 for tiles the ViR router
//! compressed).

use super::error::{Result, TextError};
use super::tokenizer::Tokenizer;

/// The placeholder of the InternVL prompt format (and the converted HF template).
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// Opens an image's feature tokens.
pub const IMG_START: &str = "<img>";
/// Closes an image's feature tokens.
pub const IMG_END: &str = "</img>";
/// One image feature token; the model overwrites its embedding with a vision feature. HF-format
/// chat templates also use it as their in-text image placeholder.
pub const IMG_CONTEXT: &str = "<IMG_CONTEXT>";

/// The ids of `<img>`, `<IMG_CONTEXT>` and `</img>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokenIds {
    /// `<img>`.
    pub start: u32,
    /// `<IMG_CONTEXT>`.
    pub context: u32,
    /// `</img>`.
    pub end: u32,
}

impl ImageTokenIds {
    /// Looks the three tokens up (an error names the missing one).
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self> {
        Ok(Self {
            start: tokenizer.require_token_id(IMG_START)?,
            context: tokenizer.require_token_id(IMG_CONTEXT)?,
            end: tokenizer.require_token_id(IMG_END)?,
        })
    }
}

/// Number of feature tokens of an image: the sum of its tiles' token counts.
pub fn image_token_count(tokens_per_tile: &[usize]) -> usize {
    tokens_per_tile.iter().sum()
}

/// Number of non-overlapping occurrences of `placeholder` in `prompt`.
pub fn count_placeholders(prompt: &str, placeholder: &str) -> usize {
    if placeholder.is_empty() {
        return 0;
    }
    prompt.matches(placeholder).count()
}

/// Replaces the k-th `placeholder` (left to right) with `<img>` + `<IMG_CONTEXT>` ×
/// `image_tokens[k]` + `</img>`; the rest of the prompt is kept verbatim (this is also the whole
/// of "raw" prompt mode). Fails if the counts differ.
pub fn expand_image_placeholders(
    prompt: &str,
    placeholder: &str,
    image_tokens: &[usize],
) -> Result<String> {
    let segments = split_at_placeholders(prompt, placeholder, image_tokens.len())?;
    let extra: usize = image_tokens
        .iter()
        .map(|n| n * IMG_CONTEXT.len() + IMG_START.len() + IMG_END.len())
        .sum();
    let mut out = String::with_capacity(prompt.len() + extra);
    for (k, segment) in segments.iter().enumerate() {
        out.push_str(segment);
        if let Some(&n) = image_tokens.get(k) {
            out.push_str(IMG_START);
            for _ in 0..n {
                out.push_str(IMG_CONTEXT);
            }
            out.push_str(IMG_END);
        }
    }
    Ok(out)
}

/// Token ids of `prompt` with its placeholders expanded, built without materialising the
/// expanded text: the text between placeholders is encoded piece by piece and the image tokens
/// are inserted as ids. Equals `tokenizer.encode(&expand_image_placeholders(..)?)`, because `<img>`
/// and `</img>` are special tokens and so split the text the same way.
pub fn encode_with_images(
    tokenizer: &Tokenizer,
    ids: ImageTokenIds,
    prompt: &str,
    placeholder: &str,
    image_tokens: &[usize],
) -> Result<Vec<u32>> {
    let segments = encode_segments(tokenizer, prompt, placeholder, image_tokens.len())?;
    let mut out = Vec::with_capacity(prompt.len() / 3 + image_tokens.iter().sum::<usize>());
    for (k, segment) in segments.into_iter().enumerate() {
        out.extend(segment);
        if let Some(&n) = image_tokens.get(k) {
            out.push(ids.start);
            out.extend(std::iter::repeat_n(ids.context, n));
            out.push(ids.end);
        }
    }
    Ok(out)
}

/// Token ids of the text before, between and after the `images` placeholders of `prompt` (one
/// more piece than placeholders; a piece may be empty). Fails if the counts differ.
pub fn encode_segments(
    tokenizer: &Tokenizer,
    prompt: &str,
    placeholder: &str,
    images: usize,
) -> Result<Vec<Vec<u32>>> {
    split_at_placeholders(prompt, placeholder, images)?
        .into_iter()
        .map(|segment| {
            if segment.is_empty() {
                Ok(Vec::new())
            } else {
                tokenizer.encode(segment)
            }
        })
        .collect()
}

/// The text around the placeholders (one more piece than placeholders), checking the count.
fn split_at_placeholders<'a>(
    prompt: &'a str,
    placeholder: &str,
    images: usize,
) -> Result<Vec<&'a str>> {
    let placeholders = count_placeholders(prompt, placeholder);
    if placeholders != images {
        return Err(TextError::PlaceholderMismatch {
            placeholder: placeholder.to_owned(),
            placeholders,
            images,
        });
    }
    if placeholders == 0 {
        return Ok(vec![prompt]);
    }
    Ok(prompt.split(placeholder).collect())
}
