//! One deployment under test: `dvd up` started as a child process (decoupled with pinned
//! cores, or `--coupled`), its addresses from the `--ready-json` line, stopped with SIGTERM
//! (so `dvd up` stops its own children) when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Where a started deployment listens.
#[derive(Debug, Clone, Deserialize)]
pub struct Addresses {
    /// Gateway HTTP (OpenAI API).
    pub http: String,
    /// Gateway gRPC.
    pub grpc: String,
    /// Vision servers' gRPC.
    pub vision: Vec<String>,
    /// Language servers' gRPC.
    pub language: Vec<String>,
}

/// A running `dvd up`.
pub struct Deployment {
    child: Child,
    /// Its addresses.
    pub addresses: Addresses,
}

impl Deployment {
    /// Starts `dvd up --ready-json` with `args` on a free port pair and waits for its ready line.
    pub fn start(exe: &Path, model: &str, args: &[String]) -> Result<Self> {
        let port = free_port_pair()?;
        let mut child = Command::new(exe)
            .args(["up", "--ready-json", "--model", model, "--port"])
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} up", exe.display()))?;
        let stdout = child.stdout.take().context("dvd up's stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let mut deployment = Self {
            child,
            addresses: Addresses {
                http: String::new(),
                grpc: String::new(),
                vision: Vec::new(),
                language: Vec::new(),
            },
        };
        read.context("reading dvd up's ready line")?;
        deployment.addresses = serde_json::from_str(line.trim())
            .with_context(|| format!("dvd up {args:?} did not start (printed {line:?})"))?;
        Ok(deployment)
    }

    /// The OpenAI API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addresses.http)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A port `p` with `p` and `p + 1` free (the gateway's HTTP and gRPC listeners).
fn free_port_pair() -> Result<u16> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of adjacent ports on 127.0.0.1")
}
