//! `dvd chat`: one request to a gateway's OpenAI-compatible API, the answer streamed to stdout.
//! Speaks plain HTTP/1.1 (`http://` URLs) with server-sent events, nothing more.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};

/// Options of `dvd chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The question.
    question: String,
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Image to ask about; repeat for several.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
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
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mime = match path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default()
            {
                "png" => "image/png",
                "webp" => "image/webp",
                _ => "image/jpeg",
            };
            let data = base64::engine::general_purpose::STANDARD.encode(bytes);
            content.push(json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{data}")}}));
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
        let (host, prefix) = split_url(&self.url)?;
        let body = serde_json::to_vec(&body)?;
        let mut stream =
            TcpStream::connect(&host).with_context(|| format!("connecting to {host}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(600)))?;
        write!(
            stream,
            "POST {prefix}/v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n\
             Content-Type: application/json\r\nAccept: text/event-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(&body)?;
        let mut reader = BufReader::new(stream);
        let (status, chunked) = read_head(&mut reader)?;
        let mut body = Body {
            reader,
            chunked,
            left: 0,
        };
        if status != 200 {
            let mut text = String::new();
            body.read_to_string(&mut text)?;
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(String::from))
                .unwrap_or(text);
            bail!("the gateway answered {status}: {message}");
        }
        let mut out = std::io::stdout();
        let mut lines = BufReader::new(body).lines();
        while let Some(line) = lines.next().transpose()? {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data).context("bad event from the gateway")?;
            if let Some(message) = event["error"]["message"].as_str() {
                bail!("the request failed: {message}");
            }
            if let Some(text) = event["choices"][0]["delta"]["content"].as_str() {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
        }
        println!();
        Ok(())
    }
}

/// `host:port` and path prefix of an `http://` URL.
fn split_url(url: &str) -> Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must be an http:// URL (got {url:?})");
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() || path == "v1" {
        String::new()
    } else {
        format!("/{}", path.trim_end_matches("/v1"))
    };
    Ok((host, prefix))
}

/// The status code and whether the body is chunked.
fn read_head(reader: &mut impl BufRead) -> Result<(u16, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, chunked))
}

/// A response body, de-chunked when needed.
struct Body<R> {
    reader: R,
    chunked: bool,
    left: usize,
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.reader.read(buf);
        }
        if self.left == 0 {
            let mut size = String::new();
            if self.reader.read_line(&mut size)? == 0 {
                return Ok(0);
            }
            if size.trim().is_empty() {
                size.clear();
                self.reader.read_line(&mut size)?;
            }
            self.left = usize::from_str_radix(size.trim(), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if self.left == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let read = self.reader.read(&mut buf[..n])?;
        self.left -= read;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_chunked_bodies() {
        assert_eq!(
            split_url("http://127.0.0.1:8000").ok(),
            Some(("127.0.0.1:8000".into(), String::new()))
        );
        assert_eq!(
            split_url("http://gw/v1").ok(),
            Some(("gw:80".into(), String::new()))
        );
        assert!(split_url("https://gw").is_err());
        let raw = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut body = Body {
            reader: &raw[..],
            chunked: true,
            left: 0,
        };
        let mut text = String::new();
        body.read_to_string(&mut text).ok();
        assert_eq!(text, "hello world");
    }
}
