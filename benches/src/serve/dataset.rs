//! What each request asks: synthetic image requests (fresh pictures at the chosen resolutions,
//! so the vision server's embedding cache never hides the encoder), text-only probes, or a
//! JSONL file of prompts with image paths.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use dvd_vision_server::video::clips::h264_from_frames;

use super::token_prompts::TokenPrompts;

/// Whether a request belongs to the measured load or is an interference probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The main workload.
    Load,
    /// A text-only probe sent at its own rate.
    Probe,
}

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Load or probe.
    pub kind: Kind,
    /// The user message's `content` (text, or parts with `image_url` data URLs).
    pub content: Value,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Images in the request (a video's sampled frames counted as images).
    pub images: usize,
}

/// Synthetic image requests.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// Square image sides in pixels, used in turn (448 / 896 / 1344 as in the InternVL3.5 DvD
    /// ablation).
    pub sizes: Vec<u32>,
    /// Images per request.
    pub images_per_request: usize,
    /// The question asked with them.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Seed of the pictures.
    pub seed: u64,
    /// With N > 0, each request carries a fresh clip sampled at N frames (one tile each) in
    /// place of its pictures.
    pub video_frames: u32,
}

/// `dvd bench serve`'s synthetic requests unless told otherwise: one 448-px picture (one tile)
/// with "Describe the image.", 64 tokens, seed 0.
impl Default for Synthetic {
    fn default() -> Self {
        Self {
            sizes: vec![448],
            images_per_request: 1,
            prompt: "Describe the image.".into(),
            max_tokens: 64,
            seed: 0,
            video_frames: 0,
        }
    }
}

/// Where a run's load requests come from: request `i` on demand, so a timed run (`dvd bench
/// serve --duration-s`) makes as many as it sends, each as fresh as the first.
pub trait RequestSource: std::fmt::Debug + Send + Sync {
    /// Request `i` (from 0) of the run.
    fn request(&self, i: usize) -> Result<RequestSpec>;

    /// Requests `0..n`.
    fn requests(&self, n: usize) -> Result<Vec<RequestSpec>> {
        (0..n).map(|i| self.request(i)).collect()
    }
}

/// A list, used in order and from the start again when a run sends more.
impl RequestSource for Vec<RequestSpec> {
    fn request(&self, i: usize) -> Result<RequestSpec> {
        match self.len() {
            0 => bail!("no requests to send"),
            n => Ok(self[i % n].clone()),
        }
    }
}

/// The random numbers of request `i` of a dataset seeded with `seed`: a stream of its own.
fn request_rng(seed: u64, i: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(i as u64);
    rng
}

fn check_sizes(sizes: &[u32]) -> Result<()> {
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("image sizes must be a non-empty list of positive sides");
    }
    Ok(())
}

/// Request `i` uses size `sizes[i % len]` and pictures no other request has.
impl RequestSource for Synthetic {
    fn request(&self, i: usize) -> Result<RequestSpec> {
        check_sizes(&self.sizes)?;
        let mut rng = request_rng(self.seed, i);
        let side = self.sizes[i % self.sizes.len()];
        let mut parts = Vec::with_capacity(self.images_per_request + 1);
        let images = if self.video_frames > 0 {
            parts.push(random_clip_part(side, self.video_frames, &mut rng)?);
            self.video_frames as usize
        } else {
            for _ in 0..self.images_per_request {
                parts.push(image_part(
                    &random_picture(side, side, &mut rng)?,
                    "image/jpeg",
                ));
            }
            self.images_per_request
        };
        parts.push(json!({"type": "text", "text": self.prompt}));
        Ok(RequestSpec {
            kind: Kind::Load,
            content: Value::Array(parts),
            max_tokens: self.max_tokens,
            images,
        })
    }
}

/// vLLM's `random-mm` workload: a random text prompt of `input_tokens` tokens and a random number
/// of images (`images.0..=images.1`) per request, each picture's side drawn from the buckets in
/// `sizes`; every picture is fresh, so no cache hides the encoder.
#[derive(Debug, Clone)]
pub struct RandomMm {
    /// Square image sides to draw from, uniformly (the size buckets).
    pub sizes: Vec<u32>,
    /// Fewest and most images per request (inclusive).
    pub images: (usize, usize),
    /// Tokens of the random prompt (at least 1).
    pub input_tokens: usize,
    /// What counts them: the served model's tokenizer.
    pub prompts: TokenPrompts,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Seed of the prompts, counts, sizes and pictures.
    pub seed: u64,
}

impl RequestSource for RandomMm {
    fn request(&self, i: usize) -> Result<RequestSpec> {
        check_sizes(&self.sizes)?;
        let (fewest, most) = self.images;
        if fewest > most {
            bail!("images per request {fewest}:{most}: the first must not exceed the second");
        }
        let mut rng = request_rng(self.seed, i);
        let count = rng.random_range(fewest..=most);
        let mut parts = Vec::with_capacity(count + 1);
        for _ in 0..count {
            let side = self.sizes[rng.random_range(0..self.sizes.len())];
            parts.push(image_part(
                &random_picture(side, side, &mut rng)?,
                "image/jpeg",
            ));
        }
        // At least one token: a request without images still asks something.
        let text = self.prompts.text(self.input_tokens.max(1), &mut rng)?;
        parts.push(json!({"type": "text", "text": text}));
        Ok(RequestSpec {
            kind: Kind::Load,
            content: Value::Array(parts),
            max_tokens: self.max_tokens,
            images: count,
        })
    }
}

/// A text-only probe request.
pub fn probe(prompt: &str, max_tokens: u32) -> RequestSpec {
    RequestSpec {
        kind: Kind::Probe,
        content: Value::String(prompt.to_string()),
        max_tokens,
        images: 0,
    }
}

/// A run's probes: `fixed`, one question every probe asks, else the random `mix` (made only
/// then: it needs the model's tokenizer).
pub fn probes(
    fixed: Option<&str>,
    max_tokens: u32,
    mix: impl FnOnce() -> Result<ProbeMix>,
) -> Result<std::sync::Arc<dyn RequestSource>> {
    Ok(match fixed {
        Some(prompt) => std::sync::Arc::new(vec![probe(prompt, max_tokens)]),
        None => std::sync::Arc::new(mix()?),
    })
}

/// Text-only probes of random words, their length in tokens drawn uniformly from
/// `tokens.0..=tokens.1` (a realistic mix of short prompts rather than one length), probe `i`
/// from its own stream.
#[derive(Debug, Clone)]
pub struct ProbeMix {
    /// Fewest and most prompt tokens (inclusive).
    pub tokens: (usize, usize),
    /// What counts them: the served model's tokenizer.
    pub prompts: TokenPrompts,
    /// Tokens each generates.
    pub max_tokens: u32,
    /// Seed of the prompts.
    pub seed: u64,
}

impl RequestSource for ProbeMix {
    fn request(&self, i: usize) -> Result<RequestSpec> {
        let (fewest, most) = self.tokens;
        if fewest == 0 || fewest > most {
            bail!(
                "probe lengths {fewest}:{most}: at least one token, the first not above the second"
            );
        }
        let mut rng = request_rng(self.seed, i);
        let n = rng.random_range(fewest..=most);
        Ok(probe(&self.prompts.text(n, &mut rng)?, self.max_tokens))
    }
}

/// Requests from a JSONL file: one object per line with `prompt`, or VisionArena's
/// `conversation` (a list of `{"role", "content"}` turns, or of such lists; the first user
/// turn's text is the prompt, as `vllm bench serve` takes it), optional `images` (paths,
/// relative to the file) and optional `max_tokens`. A run uses the lines in order, from the
/// first again when it sends more.
pub fn from_jsonl(path: &Path, default_max_tokens: u32) -> Result<Vec<RequestSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut entries = Vec::new();
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), line_no + 1))?;
        let prompt = value["prompt"]
            .as_str()
            .or_else(|| first_user_turn(&value["conversation"]))
            .with_context(|| {
                format!(
                    "{}:{}: no \"prompt\" string, nor a \"conversation\" with a user turn",
                    path.display(),
                    line_no + 1
                )
            })?;
        let images: Vec<PathBuf> = match &value["images"] {
            Value::Null => Vec::new(),
            Value::Array(list) => list
                .iter()
                .map(|p| p.as_str().map(|p| base.join(p)))
                .collect::<Option<_>>()
                .with_context(|| {
                    format!(
                        "{}:{}: \"images\" must be paths",
                        path.display(),
                        line_no + 1
                    )
                })?,
            _ => bail!(
                "{}:{}: \"images\" must be a list of paths",
                path.display(),
                line_no + 1
            ),
        };
        let mut parts = Vec::with_capacity(images.len() + 1);
        for image in &images {
            parts.push(image_file_part(image)?);
        }
        parts.push(json!({"type": "text", "text": prompt}));
        let max_tokens = value["max_tokens"]
            .as_u64()
            .map_or(default_max_tokens, |m| m as u32);
        entries.push(RequestSpec {
            kind: Kind::Load,
            content: Value::Array(parts),
            max_tokens,
            images: images.len(),
        });
    }
    if entries.is_empty() {
        bail!("{} holds no requests", path.display());
    }
    Ok(entries)
}

/// The text of the first user turn of a VisionArena `conversation`: a list of turns, or a list
/// of lists of turns.
fn first_user_turn(conversation: &Value) -> Option<&str> {
    let turns = conversation.as_array()?;
    let turns = match turns.first()? {
        Value::Array(inner) => inner,
        _ => turns,
    };
    turns
        .iter()
        .find(|t| t["role"] == "user")?
        .get("content")?
        .as_str()
}

/// A message part carrying the image file at `path` as a `data:` URL (PNG, WebP, else JPEG by
/// extension).
pub fn image_file_part(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    };
    Ok(image_part(&bytes, mime))
}

fn image_part(bytes: &[u8], mime: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": data_url(bytes, mime)}})
}

/// `bytes` as a base64 `data:` URL of media type `mime`.
fn data_url(bytes: &[u8], mime: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!("data:{mime};base64,{data}")
}

/// A `width` x `height` JPEG of [`random_picture`]'s kind, the same for the same `seed`.
pub fn picture(width: u32, height: u32, seed: u64) -> Result<Vec<u8>> {
    random_picture(width, height, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// A JPEG of [`random_frame`]'s kind.
fn random_picture(width: u32, height: u32, rng: &mut ChaCha8Rng) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    random_frame(width, height, rng).write_to(&mut out, ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

/// A random background with random rectangles: cheap to make, compresses like a photo, and
/// different for every draw.
fn random_frame(width: u32, height: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let mut color = || Rgb([rng.random::<u8>(), rng.random::<u8>(), rng.random::<u8>()]);
    let mut img = RgbImage::from_pixel(width, height, color());
    let boxes: Vec<(u32, u32, u32, u32, Rgb<u8>)> = (0..12)
        .map(|_| {
            let (x, y) = (rng.random_range(0..width), rng.random_range(0..height));
            let (w, h) = (
                rng.random_range(1..=width / 3 + 1),
                rng.random_range(1..=height / 3 + 1),
            );
            (x, y, w, h, Rgb([rng.random(), rng.random(), rng.random()]))
        })
        .collect();
    for (x, y, w, h, c) in boxes {
        for yy in y..(y + h).min(height) {
            for xx in x..(x + w).min(width) {
                img.put_pixel(xx, yy, c);
            }
        }
    }
    img
}

/// An H.264 clip of `2 * frames` fresh [`random_frame`]s at 8 fps, as a `video_url` part asking
/// for `frames` of them (so the model card's sampling picks distinct ones).
fn random_clip_part(side: u32, frames: u32, rng: &mut ChaCha8Rng) -> Result<Value> {
    let pictures: Vec<RgbImage> = (0..2 * frames)
        .map(|_| random_frame(side, side, rng))
        .collect();
    let clip = h264_from_frames(&pictures, 8).map_err(anyhow::Error::msg)?;
    Ok(video_part(&clip, "video/mp4", Some(frames), None))
}

fn video_part(bytes: &[u8], mime: &str, num_frames: Option<u32>, max_tiles: Option<u32>) -> Value {
    let mut video_url = json!({"url": data_url(bytes, mime)});
    if let Some(n) = num_frames {
        video_url["num_frames"] = json!(n);
    }
    if let Some(n) = max_tiles {
        video_url["max_tiles"] = json!(n);
    }
    json!({"type": "video_url", "video_url": video_url})
}

/// A message part carrying the video file at `path` as a `data:` URL (media type by extension),
/// asking for `num_frames` frames of at most `max_tiles` tiles each (the server's defaults when
/// unset).
pub fn video_file_part(
    path: &Path,
    num_frames: Option<u32>,
    max_tiles: Option<u32>,
) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("webm") => "video/webm",
        Some("mkv") => "video/x-matroska",
        Some("mov") => "video/quicktime",
        _ => "video/mp4",
    };
    Ok(video_part(&bytes, mime, num_frames, max_tiles))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_requests_cycle_sizes_and_never_repeat_a_picture() {
        let synthetic = Synthetic {
            sizes: vec![448, 896],
            images_per_request: 2,
            prompt: "Describe the image.".into(),
            max_tokens: 8,
            seed: 1,
            video_frames: 0,
        };
        let requests = synthetic.requests(3).unwrap();
        let urls: Vec<&str> = requests
            .iter()
            .flat_map(|r| r.content.as_array().unwrap().iter())
            .filter_map(|p| p["image_url"]["url"].as_str())
            .collect();
        assert_eq!(urls.len(), 6);
        let unique: std::collections::HashSet<_> = urls.iter().collect();
        assert_eq!(unique.len(), 6);
        let side = |url: &str| {
            let b64 = url.split_once(",").unwrap().1;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            image::load_from_memory(&bytes).unwrap().width()
        };
        assert_eq!(side(urls[0]), 448);
        assert_eq!(side(urls[2]), 896);
        assert_eq!(side(urls[4]), 448);
    }

    #[test]
    fn synthetic_video_requests_carry_a_fresh_clip_of_the_asked_frames() {
        let synthetic = Synthetic {
            sizes: vec![64],
            video_frames: 4,
            ..Synthetic::default()
        };
        let requests = synthetic.requests(2).unwrap();
        let clips: Vec<&Value> = requests
            .iter()
            .map(|r| &r.content.as_array().unwrap()[0]["video_url"])
            .collect();
        assert!(clips.iter().all(|c| c["num_frames"] == 4));
        assert!(requests.iter().all(|r| r.images == 4));
        assert_ne!(clips[0]["url"], clips[1]["url"], "every clip is fresh");
        let url = clips[0]["url"].as_str().unwrap();
        let mp4 = base64::engine::general_purpose::STANDARD
            .decode(url.strip_prefix("data:video/mp4;base64,").unwrap())
            .unwrap();
        let video = dvd_vision_server::video::Ffmpeg::find()
            .unwrap()
            .open(&mp4, &dvd_vision_server::video::VideoLimits::default())
            .unwrap();
        assert_eq!((video.info.frames, video.info.width), (8, 64));
    }

    #[test]
    fn probes_span_their_token_range_and_never_repeat() {
        let mix = ProbeMix {
            tokens: (20, 200),
            prompts: super::super::token_prompts::tests::demo(),
            max_tokens: 4,
            seed: 5,
        };
        let probes = mix.requests(60).unwrap();
        let lengths: Vec<usize> = probes
            .iter()
            .map(|p| mix.prompts.count(p.content.as_str().unwrap()).unwrap())
            .collect();
        assert!(
            lengths.iter().all(|n| (20..=200).contains(n)),
            "{lengths:?}"
        );
        // Spread over the range, not bunched at one length.
        assert!(lengths.iter().any(|&n| n < 65), "{lengths:?}");
        assert!(lengths.iter().any(|&n| n > 155), "{lengths:?}");
        let unique: std::collections::HashSet<_> =
            probes.iter().map(|p| p.content.to_string()).collect();
        assert_eq!(unique.len(), probes.len());
        for bad in [(0, 5), (9, 8)] {
            let mix = ProbeMix {
                tokens: bad,
                ..mix.clone()
            };
            assert!(mix.request(0).is_err());
        }
    }

    #[test]
    fn random_mm_draws_counts_and_sizes_in_their_ranges_and_never_repeats_a_picture() {
        let random = RandomMm {
            sizes: vec![64, 128],
            images: (0, 3),
            input_tokens: 5,
            prompts: super::super::token_prompts::tests::demo(),
            max_tokens: 8,
            seed: 2,
        };
        let requests = random.requests(40).unwrap();
        let counts: Vec<usize> = requests.iter().map(|r| r.images).collect();
        assert!(counts.iter().all(|&c| c <= 3));
        for c in 0..=3 {
            assert!(counts.contains(&c), "{counts:?}");
        }
        let urls: Vec<&str> = requests
            .iter()
            .flat_map(|r| r.content.as_array().unwrap().iter())
            .filter_map(|p| p["image_url"]["url"].as_str())
            .collect();
        assert_eq!(urls.len(), counts.iter().sum::<usize>());
        let unique: std::collections::HashSet<_> = urls.iter().collect();
        assert_eq!(unique.len(), urls.len());
        let sides: std::collections::HashSet<u32> = urls
            .iter()
            .map(|url| {
                let b64 = url.split_once(",").unwrap().1;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                image::load_from_memory(&bytes).unwrap().width()
            })
            .collect();
        assert_eq!(sides, [64, 128].into());
        for r in &requests {
            let text = r.content.as_array().unwrap().last().unwrap()["text"]
                .as_str()
                .unwrap();
            assert_eq!(random.prompts.count(text).unwrap(), 5, "{text}");
        }
        // The same seed gives the same requests.
        assert_eq!(random.requests(3).unwrap()[2].content, requests[2].content);
        let backwards = RandomMm {
            images: (2, 1),
            ..random
        };
        assert!(backwards.requests(1).is_err());
    }

    #[test]
    fn jsonl_prompts_with_images_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut png = Cursor::new(Vec::new());
        RgbImage::from_pixel(8, 8, Rgb([1, 2, 3]))
            .write_to(&mut png, ImageFormat::Png)
            .unwrap();
        std::fs::write(dir.path().join("a.png"), png.into_inner()).unwrap();
        let file = dir.path().join("prompts.jsonl");
        std::fs::write(
            &file,
            "{\"prompt\": \"hi\"}\n\n{\"prompt\": \"look\", \"images\": [\"a.png\"], \"max_tokens\": 3}\n",
        )
        .unwrap();
        let requests = from_jsonl(&file, 16).unwrap().requests(3).unwrap();
        assert_eq!(
            requests.iter().map(|r| r.images).collect::<Vec<_>>(),
            [0, 1, 0]
        );
        assert_eq!(requests[1].max_tokens, 3);
        assert_eq!(requests[0].max_tokens, 16);
        // VisionArena rows: the first user turn, nested or not.
        std::fs::write(
            &file,
            "{\"conversation\": [[{\"role\": \"user\", \"content\": \"what is it\"}, {\"role\": \"assistant\", \"content\": \"a\"}]], \"images\": [\"a.png\"]}\n\
             {\"conversation\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"count\"}]}\n",
        )
        .unwrap();
        let arena = from_jsonl(&file, 16).unwrap();
        let text = |r: &RequestSpec| {
            r.content.as_array().unwrap().last().unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!((text(&arena[0]), arena[0].images), ("what is it".into(), 1));
        assert_eq!((text(&arena[1]), arena[1].images), ("count".into(), 0));
        std::fs::write(&file, "{\"images\": []}\n").unwrap();
        assert!(
            from_jsonl(&file, 16)
                .unwrap_err()
                .to_string()
                .contains("prompt")
        );
        std::fs::write(
            &file,
            "{\"prompt\": \"x\", \"images\": [\"missing.png\"]}\n",
        )
        .unwrap();
        assert!(
            from_jsonl(&file, 16)
                .unwrap_err()
                .to_string()
                .contains("missing.png")
        );
    }
}
