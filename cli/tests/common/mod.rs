//! What the real-process tests share: fixture paths, `dvd ... serve` processes that are killed
//! when dropped, the fixture image's features as `dvd encode` computes them, and a
//! fault-injecting proxy.
#![allow(dead_code, clippy::unwrap_used)]

pub mod fault_proxy;
pub mod otlp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dvd_bench::process;

/// How close `dvd encode`'s f32 features come to transformers' on the vision fixtures: 1.55e-6
/// measured (the crate's own reference tests bound it the same way), with a margin.
pub const REFERENCE_FEATURES_TOLERANCE: f32 = 5e-6;

/// How close `dvd generate`'s f32 prefill logits come to transformers' on the language
/// fixtures: 1.83e-6 to 2.73e-6 measured (as in the crate's own reference tests), with a margin.
pub const REFERENCE_LOGITS_TOLERANCE: f32 = 8e-6;

/// A checkpoint under `language-server/tests/fixtures/model` (both halves of InternVL).
pub fn language_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../language-server/tests/fixtures/model")
        .join(name)
}

/// A checkpoint (or file) under `vision-server/tests/fixtures/model`.
pub fn vision_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vision-server/tests/fixtures/model")
        .join(name)
}

/// A file under `vision-server/tests/fixtures/video` (the committed clip and its transformers
/// references, tools/make_video_fixtures.py).
pub fn video_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vision-server/tests/fixtures/video")
        .join(name)
}

/// The fixture image (7 tiles with thumbnail under the fixtures' tiling).
pub fn image() -> PathBuf {
    vision_fixture("image.png")
}

/// The `dvd` binary.
pub fn dvd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dvd"))
}

/// Asserts a finished command succeeded, showing its standard error if not.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `dvd <role> serve` process, killed on drop.
pub struct ServerProcess {
    child: Child,
    /// The JSON line it printed when ready.
    pub ready: serde_json::Value,
}

impl ServerProcess {
    /// Starts `dvd <args...>` and waits for its ready line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = dvd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Ok(ready) = serde_json::from_str::<serde_json::Value>(&line) else {
            let status = child.wait().unwrap();
            panic!("server did not start ({status}): {line:?}");
        };
        Self { child, ready }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A string field of the ready line.
    pub fn field(&self, name: &str) -> String {
        self.ready[name].as_str().unwrap().to_owned()
    }

    /// Sends SIGTERM (a graceful drain).
    pub fn terminate(&self) {
        assert!(process::terminate(&self.child));
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it is still up.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `dvd encode` of the fixture image with `model` (`extra` arguments appended): each tile's
/// features rounded to BF16 as they travel, and the tokens of each tile.
pub fn encoded_tiles(model: &Path, extra: &[&str]) -> (Vec<Vec<half::bf16>>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("features.safetensors");
    let status = dvd()
        .args(["encode", "--model"])
        .arg(model)
        .arg("--image")
        .arg(image())
        .args(extra)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let features = st.tensor("features").unwrap();
    let hidden = features.shape()[1];
    let values: Vec<half::bf16> = features
        .data()
        .chunks_exact(4)
        .map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();
    let per_tile: Vec<usize> = st
        .tensor("tokens_per_tile")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let mut start = 0;
    let tiles = per_tile
        .iter()
        .map(|&n| {
            let rows = values[start * hidden..(start + n) * hidden].to_vec();
            start += n;
            rows
        })
        .collect();
    (tiles, hidden)
}

/// A free TCP port on 127.0.0.1, found by binding port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port on 127.0.0.1 (and, for `dvd up`, the next one), found by binding port 0.
pub fn free_port_pair() -> u16 {
    process::free_port_pair().unwrap()
}

/// A sample's value on a Prometheus text page: the first line of `series`, a metric name (its
/// first sample, labelled or not) or a name with its labels.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{page}"))
}

/// An HTTP/1.1 response: status, lower-cased headers, de-chunked body.
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `name: value` lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    http_with_headers(addr, method, path, &[], body)
}

/// [`http`] with more request headers (`name`, `value`).
pub fn http_with_headers(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http(addr, method, path, headers, body).unwrap()
}

/// [`http_with_headers`], a failed connection or a broken answer an error instead of a panic.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use std::io::{Error, ErrorKind, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let broken = || {
        Error::new(
            ErrorKind::InvalidData,
            format!("not an HTTP answer: {text:?}"),
        )
    };
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(broken)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(broken)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A greedy `Generate` request: one user message with image 0 then `prompt`, `max_tokens` new
/// tokens, token ids returned; `content_hash` as the gateway would send it (empty: none).
pub fn image_generate_request(
    id: &dvd_transport::RequestId,
    prompt: &str,
    content_hash: bytes::Bytes,
    max_tokens: u32,
) -> dvd_proto::language::v1::GenerateRequest {
    use dvd_proto::language::v1::{
        ChatMessage, ChatPrompt, ContentPart, GenerateRequest, ImageSlot, content_part,
        generate_request,
    };
    GenerateRequest {
        request_id: id.to_string(),
        prompt: Some(generate_request::Prompt::Chat(ChatPrompt {
            messages: vec![ChatMessage {
                role: "user".into(),
                parts: vec![
                    ContentPart {
                        part: Some(content_part::Part::ImageIndex(0)),
                    },
                    ContentPart {
                        part: Some(content_part::Part::Text(prompt.into())),
                    },
                ],
            }],
        })),
        images: vec![ImageSlot {
            content_hash,
            expected_tiles: 0,
        }],
        sampling: Some(dvd_proto::common::v1::SamplingParams {
            max_tokens,
            ..Default::default()
        }),
        feature_timeout_ms: 0,
        return_token_ids: true,
    }
}

/// `dvd generate --json` of `model` on `prompt` (with the fixture image, its features rounded to
/// BF16 as they travel, when `with_image`): the report the servers' answers are compared with.
pub fn coupled_generate(
    model: &Path,
    prompt: &str,
    with_image: bool,
    max_new_tokens: u32,
) -> serde_json::Value {
    let mut cmd = dvd();
    cmd.args(["generate", "--model"]).arg(model);
    if with_image {
        cmd.arg("--image").arg(image()).arg("--wire-features");
    }
    cmd.args(["--prompt", prompt, "--max-new-tokens"])
        .arg(max_new_tokens.to_string())
        .arg("--json");
    json_output(&mut cmd)
}

/// Runs `cmd`, asserts it succeeded (showing its stderr if not) and parses its stdout as JSON.
pub fn json_output(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An f32 tensor of a safetensors file: its shape and values.
pub fn read_f32(file: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// An i64 tensor of a safetensors file, flattened.
pub fn read_i64(file: &Path, name: &str) -> Vec<i64> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The largest absolute difference between `a` and `b` (of equal length).
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `dvd generate --json` with `args` and returns the report and the prefill logits.
pub fn generate_json(args: &[&str], model: &Path) -> (serde_json::Value, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let logits = dir.path().join("logits.safetensors");
    let report = json_output(
        dvd()
            .arg("generate")
            .arg("--model")
            .arg(model)
            .args(args)
            .args(["--json", "--logits-out"])
            .arg(&logits),
    );
    (report, read_f32(&logits, "logits").1)
}

/// A language server's arguments for QUIC features with this certificate and key.
pub fn quic_tls_args<'a>(cert: &'a str, key: &'a str) -> [&'a str; 6] {
    ["--transport", "quic", "--tls-cert", cert, "--tls-key", key]
}

/// `dvd language serve` of `model` on ports chosen at run time, with `kv_cache_mib` of KV cache
/// and `extra` arguments.
pub fn start_language(model: impl AsRef<Path>, kv_cache_mib: u32, extra: &[&str]) -> ServerProcess {
    let kv = kv_cache_mib.to_string();
    let mut args = language_args(model.as_ref().to_str().unwrap());
    args.extend(["--kv-cache-mib", &kv]);
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// `dvd language serve` arguments for `model` with its gRPC and feature listeners on ports
/// chosen at run time.
pub fn language_args(model: &str) -> Vec<&str> {
    vec![
        "language",
        "serve",
        "--model",
        model,
        "--listen",
        "127.0.0.1:0",
        "--feature-listen",
        "127.0.0.1:0",
    ]
}

/// `dvd vision serve` of `model` listening on `listen`, with `extra` arguments.
pub fn start_vision(model: impl AsRef<Path>, listen: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "vision",
        "serve",
        "--model",
        model.as_ref().to_str().unwrap(),
        "--listen",
        listen,
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// `dvd up` on ports chosen at run time, stopped with SIGTERM (which stops its children) when
/// dropped.
pub struct Up {
    child: Child,
    /// The gateway's HTTP address (`host:port`); gRPC listens on the next port.
    pub http: String,
}

impl Up {
    /// Starts `dvd up <args...>` and waits until the gateway reports healthy.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Up::start`] with these environment variables (its servers inherit them). The ports are
    /// free when chosen but another process may bind them before `dvd up` does; if it exits
    /// before it is healthy, it is started again on other ports.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        for _ in 0..5 {
            let port = free_port_pair();
            let mut child = dvd()
                .args(["up", "--port", &port.to_string()])
                .args(args)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let http = format!("127.0.0.1:{port}");
            match wait_healthy_while_running(&http, &mut child) {
                Ok(()) => return Self { child, http },
                Err(status) => eprintln!("dvd up on {http} exited ({status}); other ports"),
            }
        }
        panic!("dvd up exited before it was healthy five times");
    }
}

/// Waits (up to 60 s) until the gateway at `addr` answers `/health` with 200, or `child` exits
/// (its status).
fn wait_healthy_while_running(
    addr: &str,
    child: &mut Child,
) -> Result<(), std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if healthy(addr) {
            return Ok(());
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(status);
        }
        assert!(
            Instant::now() < deadline,
            "gateway at {addr} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the gateway at `addr` answers `/health` with 200 now. A listener that is starting
/// (or restarting) may reset a connection: not healthy yet.
fn healthy(addr: &str) -> bool {
    matches!(try_http(addr, "GET", "/health", &[], b""), Ok(r) if r.status == 200)
}

impl Up {
    /// The `dvd up` process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        process::stop(&mut self.child, Duration::from_secs(15));
    }
}

/// Asks the gateway at `addr` what shape is in `examples/red-circle.png` (the demo model
/// answers `circle`), greedy, 8 tokens at most.
pub fn ask_red_circle(addr: &str) -> HttpResponse {
    http(
        addr,
        "POST",
        "/v1/chat/completions",
        red_circle_request().as_bytes(),
    )
}

/// `bytes` as a base64 `data:` URL of media type `mime`.
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The body of [`ask_red_circle`]'s chat completion request.
pub fn red_circle_request() -> String {
    let png =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/red-circle.png"))
            .unwrap();
    let url = data_url("image/png", &png);
    let body = serde_json::json!({
        "model": "dvd-demo",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "What shape is in the image?"},
        ]}],
        "max_tokens": 8,
        "temperature": 0,
    });
    body.to_string()
}

/// Waits (up to 60 s) until the gateway at `addr` answers `/health` with 200.
pub fn wait_healthy(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if healthy(addr) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gateway at {addr} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
