//! `dvd up`: a whole decoupled deployment on this machine: N vision servers, M language servers
//! and the gateway as separate OS processes on loopback, all from this binary. Waits until the
//! gateway reports healthy, prints the endpoint and a ready-to-paste request, and stops every
//! process on Ctrl-C or SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::device::ComputeArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use dvd_proto::common::v1::ServingStatus;
use dvd_proto::limits::{inference_client, tuned_endpoint};
use dvd_transport::TransportKind;
use dvd_transport::quic::SelfSigned;

/// Options of `dvd up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Model directory or hub id (default: the small model committed with the project).
    #[arg(long)]
    model: Option<String>,
    /// Vision servers to start.
    #[arg(long, default_value_t = 1)]
    vision: usize,
    /// Language servers to start.
    #[arg(long, default_value_t = 1)]
    language: usize,
    /// Feature transport between them.
    #[arg(long, default_value = "tcp")]
    transport: TransportKind,
    /// HTTP port of the gateway (its gRPC API listens on the next port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address the gateway listens on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// KV cache per language server, MiB.
    #[arg(long, default_value_t = 1024)]
    kv_cache_mib: usize,
    /// Device and precision of every server (all on one GPU with `--device cuda:0`).
    #[command(flatten)]
    compute: ComputeArgs,
}

/// The model `dvd up` serves without `--model`: the small committed checkpoint (both halves of
/// an InternVL3.5-style model with random weights; it answers gibberish, quickly).
fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../language-server/tests/fixtures/model/internvl-moe-custom-bf16")
}

/// Child processes, stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
struct Processes {
    children: Vec<(String, Child)>,
    dir: PathBuf,
}

impl Processes {
    /// Starts `dvd <args>` and returns the JSON line it prints when ready.
    fn spawn(&mut self, name: String, args: &[String]) -> Result<serde_json::Value> {
        let exe = std::env::current_exe().context("locating the dvd binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        self.children.push((name.clone(), child));
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("reading {name}'s ready line"))?;
        serde_json::from_str(&line).with_context(|| format!("{name} failed to start"))
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, child)| matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone()))
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &self.children {
            // SIGTERM first: servers drain and close their listeners.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (name, child) in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("{name} did not stop in time; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl UpArgs {
    /// Runs the deployment until Ctrl-C or SIGTERM.
    pub fn run(self) -> Result<()> {
        if self.language == 0 {
            bail!("--language must be at least 1");
        }
        let model = match &self.model {
            Some(m) => m.clone(),
            None => default_model().display().to_string(),
        };
        let dir = std::env::temp_dir().join(format!("dvd-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut procs = Processes {
            children: Vec::new(),
            dir: dir.clone(),
        };
        let mut tls_language = Vec::new();
        let mut tls_vision = Vec::new();
        if self.transport == TransportKind::Quic {
            let tls = dir.join("tls");
            SelfSigned::generate(&["localhost".into(), "127.0.0.1".into()])?.write_to(&tls)?;
            let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
            tls_language = vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
            ];
            tls_vision = vec!["--tls-ca".into(), cert.display().to_string()];
        }
        let mut language = Vec::new();
        for i in 0..self.language {
            let mut args: Vec<String> = [
                "language",
                "serve",
                "--model",
                &model,
                "--listen",
                "127.0.0.1:0",
                "--feature-listen",
                "127.0.0.1:0",
                "--transport",
                &self.transport.to_string(),
                "--kv-cache-mib",
                &self.kv_cache_mib.to_string(),
            ]
            .map(String::from)
            .to_vec();
            args.extend(tls_language.iter().cloned());
            args.extend(self.compute.to_args());
            let ready = procs.spawn(format!("language server {i}"), &args)?;
            language.push(ready["grpc"].as_str().unwrap_or_default().to_owned());
        }
        let mut vision = Vec::new();
        for i in 0..self.vision {
            let mut args: Vec<String> = [
                "vision",
                "serve",
                "--model",
                &model,
                "--listen",
                "127.0.0.1:0",
            ]
            .map(String::from)
            .to_vec();
            args.extend(tls_vision.iter().cloned());
            args.extend(self.compute.to_args());
            let ready = procs.spawn(format!("vision server {i}"), &args)?;
            vision.push(ready["grpc"].as_str().unwrap_or_default().to_owned());
        }
        let http = SocketAddr::new(self.host, self.port);
        let grpc = SocketAddr::new(self.host, self.port.wrapping_add(1));
        let name = Path::new(&model)
            .file_name()
            .map_or_else(|| model.clone(), |n| n.to_string_lossy().into_owned());
        let config = format!(
            "[server]\nhttp = \"{http}\"\ngrpc = \"{grpc}\"\nmodel = \"{name}\"\n\n\
             [vision]\naddresses = {vision:?}\n\n[language]\naddresses = {language:?}\n\n\
             [health]\ninterval_ms = 500\n"
        );
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config)?;
        let ready = procs.spawn(
            "gateway".into(),
            &[
                "gateway".into(),
                "serve".into(),
                "--config".into(),
                config_path.display().to_string(),
            ],
        )?;
        let grpc_addr = ready["grpc"].as_str().unwrap_or_default().to_owned();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(wait_healthy(&grpc_addr))?;
        let http_addr = ready["http"].as_str().unwrap_or_default();
        println!(
            "dvd is up: {} vision + {} language servers ({} features), model {name}",
            self.vision, self.language, self.transport
        );
        println!("  OpenAI-compatible API: http://{http_addr}/v1   gRPC: {grpc_addr}");
        println!(
            "  curl http://{http_addr}/v1/chat/completions -H 'Content-Type: application/json' \\\n    \
             -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'"
        );
        println!("  dvd chat --url http://{http_addr} --image cat.jpg \"What is in the picture?\"");
        println!("Ctrl-C stops everything.");
        runtime.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    r = super::wait_for_signal() => return r,
                    _ = tick.tick() => {
                        if let Some(name) = procs.exited() {
                            bail!("{name} exited; stopping everything");
                        }
                    }
                }
            }
        })?;
        eprintln!("stopping...");
        drop(procs);
        Ok(())
    }
}

/// Polls the gateway's gRPC health until it serves (at most 60 s).
async fn wait_healthy(grpc: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tuned_endpoint(grpc)?.connect().await {
            let mut client = inference_client(channel);
            if let Ok(health) = client.health(dvd_proto::api::v1::HealthRequest {}).await
                && health.get_ref().status == ServingStatus::Serving as i32
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the gateway did not become healthy within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
