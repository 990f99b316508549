//! One streamed chat completion over plain HTTP/1.1 (the gateway's OpenAI API), timed chunk by
//! chunk: the moment each content delta arrives, and the usage the last chunk reports. `dvd
//! chat` uses the same client, printing the deltas as they come.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Where the API lives: `host:port` and the path prefix before `/v1`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// Path before `/v1` (usually empty).
    pub prefix: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/prefix][/v1]`.
    pub fn parse(url: &str) -> Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("the URL must start with http:// (got {url:?})");
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            bail!("no host in {url:?}");
        }
        let authority = match host.contains(':') {
            true => host.to_string(),
            false => format!("{host}:80"),
        };
        let path = path.trim_end_matches('/');
        let path = path
            .strip_suffix("v1")
            .unwrap_or(path)
            .trim_end_matches('/');
        let prefix = match path.is_empty() {
            true => String::new(),
            false => format!("/{path}"),
        };
        Ok(Self { authority, prefix })
    }
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// Seconds from sending to the first content chunk.
    pub ttft: Option<f64>,
    /// Seconds between successive content chunks.
    pub itl: Vec<f64>,
    /// Seconds from sending to the end of the stream.
    pub e2el: f64,
    /// Prompt tokens (usage).
    pub prompt_tokens: u64,
    /// Image tokens among them (usage.prompt_tokens_details.image_tokens).
    pub image_tokens: u64,
    /// Generated tokens (usage).
    pub output_tokens: u64,
    /// The generated text.
    pub text: String,
}

/// One chat request as the load generator sends it, whichever the API.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Model id.
    pub model: &'a str,
    /// The user message's `content`.
    pub content: &'a Value,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Ask the server to ignore end-of-sequence (vLLM's `ignore_eos` extension).
    pub ignore_eos: bool,
    /// Limit of the whole exchange.
    pub timeout: Duration,
}

impl Ask<'_> {
    /// The chat completion request: streamed, greedy, usage reported; `ignore_eos` only when
    /// asked (an extension other servers refuse).
    pub fn body(&self) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": self.content}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        body
    }
}

/// A non-200 answer to a chat request, before any token: the status and the error's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {message}")]
pub struct HttpStatus {
    /// The HTTP status code.
    pub status: u16,
    /// The OpenAI error's `message` (or the body as text).
    pub message: String,
}

/// Sends one streamed, greedy chat completion (usage reported; `ignore_eos` only when asked)
/// and times it.
pub async fn chat(endpoint: &Endpoint, ask: &Ask<'_>) -> Result<Timing> {
    tokio::time::timeout(ask.timeout, stream_chat(endpoint, &ask.body(), |_| Ok(())))
        .await
        .map_err(|_| anyhow::anyhow!("no complete answer within {} s", ask.timeout.as_secs_f64()))?
}

/// Posts `body` (a chat completion request with `"stream": true`) and reads the event stream,
/// handing each content delta to `on_delta` as it arrives; returns the timings and usage.
pub async fn stream_chat(
    endpoint: &Endpoint,
    body: &Value,
    mut on_delta: impl FnMut(&str) -> Result<()>,
) -> Result<Timing> {
    let body = body.to_string();
    let started = Instant::now();
    let mut stream = TcpStream::connect(&endpoint.authority)
        .await
        .with_context(|| format!("connecting to {}", endpoint.authority))?;
    stream.set_nodelay(true)?;
    let head = format!(
        "POST {}/v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.prefix,
        endpoint.authority,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let (status, chunked) = read_head(&mut reader).await?;
    let mut body = Body {
        reader,
        chunked,
        done: false,
    };
    if status != 200 {
        let text = body.rest().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        return Err(HttpStatus {
            status,
            message: message.trim().to_string(),
        }
        .into());
    }
    let mut timing = Timing::default();
    let mut last: Option<Instant> = None;
    let mut pending = String::new();
    let mut finish_reason: Option<String> = None;
    while let Some(bytes) = body.next().await? {
        pending.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    timing.e2el = started.elapsed().as_secs_f64();
                    return Ok(timing);
                }
                let chunk: Value = serde_json::from_str(data)
                    .with_context(|| format!("a stream chunk is not JSON: {data}"))?;
                if let Some(error) = chunk.get("error") {
                    let message = error["message"]
                        .as_str()
                        .map_or(error.to_string(), String::from);
                    bail!("the request failed: {message}");
                }
                if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
                    finish_reason = Some(reason.to_string());
                }
                // The first token is the first text: a role chunk's empty content is not one.
                if let Some(delta) = chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                {
                    let now = Instant::now();
                    match last {
                        None => timing.ttft = Some((now - started).as_secs_f64()),
                        Some(prev) => timing.itl.push((now - prev).as_secs_f64()),
                    }
                    last = Some(now);
                    on_delta(delta)?;
                    timing.text.push_str(delta);
                }
                if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                    timing.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
                    timing.output_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
                    timing.image_tokens = usage["prompt_tokens_details"]["image_tokens"]
                        .as_u64()
                        .unwrap_or(0);
                }
            }
        }
    }
    // Servers that close the stream after the final chunk without `[DONE]` (transformers
    // serve) have answered, if that chunk said why generation finished.
    match finish_reason {
        Some(_) => {
            timing.e2el = started.elapsed().as_secs_f64();
            Ok(timing)
        }
        None => bail!("the stream ended before a finish_reason or [DONE]"),
    }
}

/// The status code and whether the body is chunked.
async fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, chunked))
}

/// A response body read piece by piece, de-chunked when needed.
struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    done: bool,
}

impl Body {
    /// The next piece of the body, `None` at its end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if !self.chunked {
            let mut buf = vec![0u8; 16 * 1024];
            let n = self.reader.read(&mut buf).await?;
            self.done = n == 0;
            buf.truncate(n);
            return Ok((n > 0).then_some(buf));
        }
        let mut size = String::new();
        while size.trim().is_empty() {
            size.clear();
            if self.reader.read_line(&mut size).await? == 0 {
                self.done = true;
                return Ok(None);
            }
        }
        let len = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if len == 0 {
            self.done = true;
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        self.reader.read_exact(&mut buf).await?;
        Ok(Some(buf))
    }

    /// The rest of the body as text.
    async fn rest(&mut self) -> Result<String> {
        let mut all = Vec::new();
        while let Some(piece) = self.next().await? {
            all.extend(piece);
        }
        Ok(String::from_utf8_lossy(&all).into_owned())
    }
}

/// The first model id `GET /v1/models` lists.
pub async fn first_model(endpoint: &Endpoint) -> Result<String> {
    let models = get_json(endpoint, "/v1/models", None).await?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .context("GET /v1/models lists no model")
}

/// `GET {prefix}{path}` (with `api_key` as a bearer token when given), its JSON body; any
/// status but 200 is an error carrying the body.
pub async fn get_json(endpoint: &Endpoint, path: &str, api_key: Option<&str>) -> Result<Value> {
    let mut stream = TcpStream::connect(&endpoint.authority)
        .await
        .with_context(|| format!("connecting to {}", endpoint.authority))?;
    let auth = api_key.map_or_else(String::new, |key| {
        format!("Authorization: Bearer {key}\r\n")
    });
    let head = format!(
        "GET {}{path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        endpoint.prefix, endpoint.authority
    );
    stream.write_all(head.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let (status, chunked) = read_head(&mut reader).await?;
    let text = Body {
        reader,
        chunked,
        done: false,
    }
    .rest()
    .await?;
    if status != 200 {
        bail!("GET {path}: HTTP {status}: {}", text.trim());
    }
    serde_json::from_str(&text).with_context(|| format!("GET {path}: not JSON"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8000/v1").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("127.0.0.1:8000", "")
        );
        let e = Endpoint::parse("http://gw/api/v1/").unwrap();
        assert_eq!((e.authority.as_str(), e.prefix.as_str()), ("gw:80", "/api"));
        assert!(Endpoint::parse("https://x").is_err());
    }

    #[test]
    fn vendor_extensions_are_sent_only_when_asked() {
        let content = json!("hi");
        let mut ask = Ask {
            model: "m",
            content: &content,
            max_tokens: 4,
            ignore_eos: false,
            timeout: Duration::from_secs(1),
        };
        let plain = ask.body();
        assert!(plain.get("ignore_eos").is_none(), "{plain}");
        assert_eq!(plain["max_tokens"], 4);
        ask.ignore_eos = true;
        assert_eq!(ask.body()["ignore_eos"], true);
    }

    /// Asks `ask` of a one-connection server on loopback that answers `response` (status line,
    /// headers and body) and closes the connection.
    async fn against(response: String, ask: &Ask<'_>) -> Result<Timing> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint =
            Endpoint::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let serve = async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut request).await;
            socket.write_all(response.as_bytes()).await.unwrap();
        };
        let (timing, ()) = tokio::join!(chat(&endpoint, ask), serve);
        timing
    }

    fn sse(events: &[&str]) -> String {
        let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n{body}")
    }

    fn ask(content: &Value) -> Ask<'_> {
        Ask {
            model: "m",
            content,
            max_tokens: 2,
            ignore_eos: false,
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn a_stream_closed_after_its_finish_reason_is_an_answer_and_empty_content_no_token() {
        let content = json!("hi");
        // transformers serve: no [DONE]; dvd: a role chunk with empty content first.
        let stream = sse(&[
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}}]}"#,
            r#"{"choices":[{"delta":{"content":"b"}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
        ]);
        let timing = against(stream, &ask(&content)).await.unwrap();
        assert_eq!(timing.text, "ab");
        assert_eq!((timing.prompt_tokens, timing.output_tokens), (5, 2));
        // One gap: between "a" and "b" (the empty chunk is not the first token).
        assert_eq!(timing.itl.len(), 1);
        assert!(timing.ttft.is_some());
        // Cut off before saying why it finished: a failure.
        let cut = sse(&[r#"{"choices":[{"delta":{"content":"a"}}]}"#]);
        let error = against(cut, &ask(&content)).await.unwrap_err();
        assert!(error.to_string().contains("finish_reason"), "{error}");
    }

    #[tokio::test]
    async fn an_http_error_keeps_its_status() {
        let content = json!("hi");
        let body = r#"{"error":{"message":"too many requests in flight"}}"#;
        let response = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let error = against(response, &ask(&content)).await.unwrap_err();
        let status = error.downcast_ref::<HttpStatus>().unwrap();
        assert_eq!(status.status, 429);
        assert_eq!(status.message, "too many requests in flight");
    }
}
