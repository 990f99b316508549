//! `dvd generate`: vision and language in one process (the coupled baseline DvD is measured
//! against): images -> tiles -> features, prompt -> ids, prefill, sampled decode, streamed text.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use clap::Args;
use dvd_language_server::generate::{ImageInput, generate};
use dvd_language_server::model::LanguageModel;
use dvd_language_server::sampling::{SamplingParams, StopReason};
use dvd_language_server::text::{
    ChatMessage, ContentPart, IMAGE_PLACEHOLDER, ImageTokenIds, PromptFormat, R1_SYSTEM_PROMPT,
    Tokenizer, encode_with_images, split_thinking,
};
use dvd_vision_server::model::{LoadOptions, VisionModel};
use image::RgbImage;
use serde_json::json;

use super::device::ComputeArgs;
use super::encode::{Switch, tile_images, tile_media};
use super::parallel::ParallelArgs;
use super::video::VideoArgs;

/// Options of `dvd generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model directory, or a hub id (`owner/name[@revision]`) in the local Hugging Face cache
    /// (default: the embedded demo model).
    #[arg(long)]
    model: Option<String>,
    /// Image file (JPEG, PNG or WebP); repeat for several images.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// A video (its frames follow the images; the prompt names them `Frame1: <image>` ...).
    #[command(flatten)]
    video: VideoArgs,
    /// Most tiles per image, thumbnail excluded (default: the checkpoint's setting).
    #[arg(long)]
    max_tiles: Option<u32>,
    /// Visual Resolution Router (Flash checkpoints); default: the config's `flash_mode`.
    #[arg(long, value_enum)]
    vir: Option<Switch>,
    /// The user's message (or, with --raw, the whole prompt).
    #[arg(long)]
    prompt: String,
    /// Use --prompt verbatim, only expanding each `<image>` to the image's tokens.
    #[arg(long)]
    raw: bool,
    /// System message (default: the checkpoint family's).
    #[arg(long)]
    system: Option<String>,
    /// Thinking mode: the R1 system prompt; the answer is split from `<think>...</think>`.
    #[arg(long)]
    thinking: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens reaching this probability.
    #[arg(long, default_value_t = SamplingParams::default().top_p)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = SamplingParams::default().top_k)]
    top_k: usize,
    /// Keep tokens at least this fraction as likely as the most likely one.
    #[arg(long, default_value_t = SamplingParams::default().min_p)]
    min_p: f32,
    /// transformers' repetition penalty (1 = off).
    #[arg(long, default_value_t = SamplingParams::default().repetition_penalty)]
    repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    #[command(flatten)]
    compute: ComputeArgs,
    #[command(flatten)]
    parallel: ParallelArgs,
    /// Round image features to BF16, as vision servers send them, so the output equals a
    /// decoupled deployment's token for token.
    #[arg(long)]
    wire_features: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the last prompt position's logits after prefill (f32 [vocab], tensor `logits`).
    #[arg(long)]
    logits_out: Option<PathBuf>,
}

impl GenerateArgs {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        let total = Instant::now();
        let dir = super::demo_model::or_default(self.model.as_deref())?;
        let devices = self.parallel.open_devices(&self.compute)?;
        let options = LoadOptions {
            dtype: self.parallel.dtype(&self.compute),
            device: match devices.first() {
                Some(first) => first.clone(),
                None => self.compute.open()?,
            },
        };
        let params = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
            stop_strings: self.stop.clone(),
            ..SamplingParams::default()
        };
        params.validate()?;
        let started = Instant::now();
        let tokenizer = Tokenizer::from_dir(&dir)?;
        let model =
            LanguageModel::load_parallel(&dir, &options, self.parallel.parallelism(), &devices)
                .with_context(|| format!("loading the language model from {}", dir.display()))?;
        let load_ms = ms(started);

        let started = Instant::now();
        let mut frame_indices = None;
        let (features, image_tokens) = if self.images.is_empty() && self.video.video.is_none() {
            (None, Vec::new())
        } else {
            let vision = VisionModel::load(&dir, &options)
                .with_context(|| format!("loading the vision model from {}", dir.display()))?;
            let media = tile_media(&vision, &self.images, self.max_tiles, false, &self.video)?;
            let encoded = encode_tiles(&vision, &media.tiles, &media.tiles_per_image, self.vir)?;
            frame_indices = media.frame_indices;
            let features = match self.wire_features {
                true => round_to_wire(&encoded.0)?,
                false => encoded.0,
            };
            (Some(features), encoded.1)
        };
        let vision_ms = ms(started);

        let config = dvd_checkpoint::read_json(&dir.join("config.json"))?;
        let format = PromptFormat::for_checkpoint(&config, &tokenizer)?;
        let frames = frame_indices.as_ref().map(Vec::len);
        let (prompt, placeholder) = self.prompt_text(&format, frames)?;
        let (ids, image) = prompt_ids(
            &tokenizer,
            &prompt,
            placeholder,
            features.as_ref(),
            &image_tokens,
        )?;
        let eos = stop_ids(&model, &tokenizer);
        let stream = !self.json;
        let mut stdout = std::io::stdout();
        let mut on_text = |text: &str| {
            if stream {
                // A closed stdout only loses the stream; the run itself goes on.
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        };
        let out = generate(&model, &tokenizer, &ids, image, &params, &eos, &mut on_text)?;
        if let Some(path) = &self.logits_out {
            let tensors = HashMap::from([("logits".to_string(), out.prefill_logits.clone())]);
            candle_core::safetensors::save(&tensors, path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let decode_steps = out.token_ids.len().saturating_sub(1);
        let decode_s = out.timings.decode.as_secs_f64();
        let timings = json!({
            "load_ms": load_ms,
            "vision_ms": vision_ms,
            "prefill_ms": round(out.timings.prefill.as_secs_f64() * 1e3),
            "decode_ms": round(decode_s * 1e3),
            "prefill_tokens_per_s": round(out.prompt_tokens as f64 / out.timings.prefill.as_secs_f64()),
            "decode_tokens_per_s": if decode_steps > 0 { round(decode_steps as f64 / decode_s) } else { 0.0 },
            "total_ms": ms(total),
        });
        let finish = match &out.finish {
            StopReason::Eos(_) | StopReason::StopToken(_) | StopReason::StopString(_) => "stop",
            StopReason::MaxTokens => "length",
        };
        if self.json {
            let mut report = json!({
                "token_ids": out.token_ids,
                "text": out.text,
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.token_ids.len(),
                "finish_reason": finish,
                "image_tokens": image_tokens,
                "frame_indices": frame_indices,
                "timings": timings,
            });
            if self.thinking {
                let split = split_thinking(&out.text);
                report["thinking"] = json!(split.thinking);
                report["answer"] = json!(split.answer);
            }
            println!("{report}");
        } else {
            println!();
            eprintln!(
                "{}",
                json!({"finish_reason": finish, "prompt_tokens": out.prompt_tokens, "completion_tokens": out.token_ids.len(), "timings": timings})
            );
        }
        Ok(())
    }

    /// The prompt text and the image placeholder it uses; `frames`: the video's sampled frames.
    fn prompt_text(
        &self,
        format: &PromptFormat,
        frames: Option<usize>,
    ) -> Result<(String, &'static str)> {
        if self.raw {
            return Ok((self.prompt.clone(), IMAGE_PLACEHOLDER));
        }
        let system = match (&self.system, self.thinking) {
            (Some(s), _) => Some(s.clone()),
            (None, true) => Some(R1_SYSTEM_PROMPT.to_string()),
            (None, false) => None,
        };
        user_prompt(
            format,
            &self.prompt,
            self.images.len(),
            frames,
            system,
            self.thinking,
        )
    }
}

/// Tiles and encodes `images` as one request; returns the features and each image's token
/// count.
pub fn encode_images(
    vision: &VisionModel,
    images: &[PathBuf],
    max_tiles: Option<u32>,
    vir: Option<Switch>,
) -> Result<(Tensor, Vec<usize>)> {
    let (tiles, tiles_per_image) = tile_images(vision, images, max_tiles, false)?;
    encode_tiles(vision, &tiles, &tiles_per_image, vir)
}

/// Encodes `tiles` as one request; returns the features and the token count of each image (or
/// video frame), whose tiles `tiles_per_image` counts.
pub fn encode_tiles(
    vision: &VisionModel,
    tiles: &[RgbImage],
    tiles_per_image: &[usize],
    vir: Option<Switch>,
) -> Result<(Tensor, Vec<usize>)> {
    let encoded = vision.encode(&vision.pixel_values(tiles)?, Switch::routing(vir))?;
    let mut image_tokens = Vec::with_capacity(tiles_per_image.len());
    let mut next = 0;
    for &n in tiles_per_image {
        image_tokens.push(encoded.tokens_per_tile[next..next + n].iter().sum());
        next += n;
    }
    Ok((encoded.features, image_tokens))
}

/// `features` rounded to BF16 as vision servers send them (same dtype back), so coupled output
/// equals a decoupled deployment's token for token.
pub fn round_to_wire(features: &Tensor) -> Result<Tensor> {
    Ok(features
        .to_dtype(candle_core::DType::BF16)?
        .to_dtype(features.dtype())?)
}

/// A conversation of one user turn (`images` images, a video of `frames` frames if given, then
/// `text`), after an optional system message, rendered in the checkpoint's format; returns it
/// and the image placeholder used.
pub fn user_prompt(
    format: &PromptFormat,
    text: &str,
    images: usize,
    frames: Option<usize>,
    system: Option<String>,
    thinking: bool,
) -> Result<(String, &'static str)> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(ChatMessage::system(system));
    }
    // An InternVL-format prompt may place its images itself with `<image>`.
    let inline = matches!(format, PromptFormat::InternVl) && text.contains(IMAGE_PLACEHOLDER);
    let parts = if inline {
        vec![ContentPart::Text(text.to_string())]
    } else {
        let mut parts = vec![ContentPart::Image; images];
        parts.extend(frames.map(|frames| ContentPart::Video { frames }));
        parts.push(ContentPart::Text(text.to_string()));
        parts
    };
    messages.push(ChatMessage::parts("user", parts));
    Ok((format.render(&messages, thinking)?, format.placeholder()))
}

/// Token ids of `prompt`, each image placeholder expanded to its features' tokens.
pub fn prompt_ids<'a>(
    tokenizer: &Tokenizer,
    prompt: &str,
    placeholder: &str,
    features: Option<&'a Tensor>,
    image_tokens: &[usize],
) -> Result<(Vec<u32>, Option<ImageInput<'a>>)> {
    Ok(match features {
        None => (tokenizer.encode(prompt)?, None),
        Some(features) => {
            let image_ids = ImageTokenIds::from_tokenizer(tokenizer)?;
            let ids = encode_with_images(tokenizer, image_ids, prompt, placeholder, image_tokens)?;
            let image = ImageInput {
                token_id: image_ids.context,
                features,
            };
            (ids, Some(image))
        }
    })
}

/// The ids that end generation: the model's EOS ids, the tokenizer's and `<|im_end|>`.
pub fn stop_ids(model: &LanguageModel, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut eos = model.config().eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id());
    eos.extend(tokenizer.token_id("<|im_end|>"));
    eos
}

fn ms(since: Instant) -> f64 {
    round(since.elapsed().as_secs_f64() * 1e3)
}

fn round(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}
