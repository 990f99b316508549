//! `dvd chat`: one request to a gateway's OpenAI-compatible API, the answer streamed to stdout.
//! Speaks plain HTTP/1.1 (`http://` URLs) with server-sent events, through the streaming client
//! `dvd bench serve` uses.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dvd_bench::serve::client::{Endpoint, stream_chat};
use dvd_bench::serve::dataset::{image_file_part, video_file_part};
use serde_json::json;

use super::video::VideoArgs;

/// Options of `dvd chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The question.
    question: String,
    /// The gateway's base URL.
    #[arg(long, default_value_t = super::gateway::default_url())]
    url: String,
    /// Image to ask about; repeat for several.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// A video to ask about, after the images.
    #[command(flatten)]
    video: VideoArgs,
    /// Model id (default: whatever the gateway serves).
    #[arg(long, default_value = "")]
    model: String,
    /// Most tokens to generate.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (default: the server's, greedy).
    #[arg(long)]
    temperature: Option<f32>,
}

impl ChatArgs {
    /// Sends the request and prints the answer as it streams.
    pub fn run(self) -> Result<()> {
        let mut content = Vec::new();
        for path in &self.images {
            content.push(image_file_part(path)?);
        }
        if let Some(path) = &self.video.video {
            let (frames, tiles) = (self.video.num_frames, self.video.video_max_tiles);
            content.push(video_file_part(path, Some(frames), Some(tiles))?);
        }
        content.push(json!({"type": "text", "text": self.question}));
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "stream": true,
        });
        if let Some(n) = self.max_tokens {
            body["max_tokens"] = json!(n);
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        let endpoint = Endpoint::parse(&self.url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut out = std::io::stdout();
        runtime
            .block_on(stream_chat(&endpoint, &body, |text| {
                out.write_all(text.as_bytes())?;
                Ok(out.flush()?)
            }))
            .with_context(|| format!("asking {}", self.url))?;
        println!();
        Ok(())
    }
}
