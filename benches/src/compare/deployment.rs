//! One deployment under test: `dvd up` started as a child process (decoupled with pinned
//! cores, or `--coupled`), its addresses from the `--ready-json` line, stopped with SIGTERM
//! (so `dvd up` stops its own children) when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::process;

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
    /// Its standard error, shown when it fails to start.
    log: tempfile::NamedTempFile,
}

/// Attempts at starting a deployment: the free ports it is given are found by binding and
/// releasing them, so another process may take them first.
const START_ATTEMPTS: usize = 3;

impl Deployment {
    /// Starts `dvd up --ready-json` with `args` on a free port pair and waits for its ready line;
    /// tries again (on fresh ports) if it exits without one.
    pub fn start(exe: &Path, model: &str, args: &[String]) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(exe, model, args) {
                Ok(deployment) => return Ok(deployment),
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!("{e:#}\ntrying again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(exe: &Path, model: &str, args: &[String]) -> Result<Self> {
        let port = process::free_port_pair()?;
        let log = tempfile::NamedTempFile::new().context("creating a file for dvd up's log")?;
        let mut child = Command::new(exe)
            .args(["up", "--ready-json", "--model", model, "--port"])
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log.reopen().context("opening dvd up's log")?)
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
            log,
        };
        read.context("reading dvd up's ready line")?;
        deployment.addresses = match serde_json::from_str(line.trim()) {
            Ok(addresses) => addresses,
            Err(e) => bail!(
                "dvd up {args:?} did not start (printed {line:?}: {e}); its log ends:\n{}",
                deployment.log_tail()
            ),
        };
        Ok(deployment)
    }

    /// The last lines of the deployment's standard error.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The OpenAI API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addresses.http)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        process::stop(&mut self.child, Duration::from_secs(15));
    }
}
