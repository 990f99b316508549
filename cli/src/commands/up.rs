//! `dvd up`: a whole decoupled deployment on this machine: N vision servers, M language servers
//! and the gateway as separate OS processes on loopback, all from this binary. Waits until the
//! gateway reports healthy, prints the endpoint and a ready-to-paste request, supervises the
//! processes (restarting one that exits, see [`processes`]) and stops every one on Ctrl-C or
//! SIGTERM.

mod processes;
mod restart;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use dvd_gateway::config::ServerSection;
use dvd_proto::common::v1::ServingStatus;
use dvd_proto::limits::{inference_client, tuned_endpoint};
use dvd_transport::TransportKind;
use dvd_transport::quic::SelfSigned;
use tokio::runtime::Runtime;

use self::processes::{GatewayFile, Processes, Role, grpc};
use super::device::{ComputeArgs, DeviceSpec};
use super::language::EngineArgs;
use super::parallel::ParallelArgs;
use super::telemetry::TelemetryArgs;

/// Options of `dvd up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Model directory or hub id (default: the embedded demo model, `dvd-demo`).
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
    #[arg(long, default_value_t = ServerSection::default().http.port())]
    port: u16,
    /// Address the gateway listens on.
    #[arg(long, default_value_t = ServerSection::default().http.ip())]
    host: IpAddr,
    /// The language servers' KV cache and step budget.
    #[command(flatten)]
    engine: EngineArgs,
    /// Device and precision of every server (all on one GPU with `--device cuda:0`).
    #[command(flatten)]
    compute: ComputeArgs,
    /// How each language server splits its model over ranks.
    #[command(flatten)]
    parallel: ParallelArgs,
    /// The coupled baseline: the vision servers, language servers and gateway in this one
    /// process, sharing its cores and its compute thread pool (instead of separate processes).
    #[arg(long, conflicts_with_all = ["vision_cpus", "language_cpus", "gateway_cpus", "vision_cpu_quota", "language_cpu_quota"])]
    coupled: bool,
    /// Cores for the vision servers (`0`, `0-3`, `0,2`): each pinned there, standing in for
    /// GPUs of their own.
    #[arg(long)]
    vision_cpus: Option<String>,
    /// Cores for the language servers.
    #[arg(long)]
    language_cpus: Option<String>,
    /// Cores for the gateway.
    #[arg(long)]
    gateway_cpus: Option<String>,
    /// CPU time of each vision server, in cores (0.5: half a core's time), capped in a cgroup
    /// of its own: equal fractional units for servers sharing cores (needs root).
    #[arg(long)]
    vision_cpu_quota: Option<f64>,
    /// CPU time of each language server, in cores.
    #[arg(long)]
    language_cpu_quota: Option<f64>,
    /// Print one JSON line (`http`, `grpc`, `vision`, `language` addresses) when ready instead
    /// of the banner, for scripts and benchmarks.
    #[arg(long)]
    ready_json: bool,
    /// Passed to every server started (each exports its own spans).
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// How the servers run: as child processes, or inside this process (`--coupled`).
enum Launch {
    Spawned(Processes),
    InProcess(InProcess),
}

/// Servers started inside this process; stopped (gateway first) by [`InProcess::shutdown`].
#[derive(Default)]
struct InProcess {
    vision: Vec<dvd_vision_server::server::RunningServer>,
    language: Vec<dvd_language_server::server::RunningServer>,
    gateway: Option<dvd_gateway::server::RunningGateway>,
}

impl InProcess {
    async fn shutdown(self) {
        if let Some(gateway) = self.gateway {
            gateway.shutdown().await;
        }
        for server in self.vision {
            server.shutdown().await;
        }
        for server in self.language {
            server.shutdown().await;
        }
    }
}

impl Launch {
    /// Starts a language server with `dvd language serve` arguments; returns its gRPC address.
    fn language(&mut self, rt: &Runtime, name: String, args: &[String]) -> Result<String> {
        match self {
            Self::Spawned(procs) => Ok(grpc(&procs.spawn(Role::Language, name, args)?)),
            Self::InProcess(servers) => {
                let config =
                    super::parse_args::<super::language::ServeArgs>(&args[2..])?.config()?;
                let server = rt
                    .block_on(dvd_language_server::server::start(config))
                    .with_context(|| format!("starting {name}"))?;
                let addr = server.grpc_addr.to_string();
                servers.language.push(server);
                Ok(addr)
            }
        }
    }

    /// Starts a vision server with `dvd vision serve` arguments; returns its gRPC address.
    fn vision(&mut self, rt: &Runtime, name: String, args: &[String]) -> Result<String> {
        match self {
            Self::Spawned(procs) => Ok(grpc(&procs.spawn(Role::Vision, name, args)?)),
            Self::InProcess(servers) => {
                let config = super::parse_args::<super::vision::ServeArgs>(&args[2..])?.config()?;
                let server = rt
                    .block_on(dvd_vision_server::server::start(config))
                    .with_context(|| format!("starting {name}"))?;
                let addr = server.grpc_addr.to_string();
                servers.vision.push(server);
                Ok(addr)
            }
        }
    }

    /// Starts the gateway with `dvd gateway serve` arguments; returns its HTTP and gRPC
    /// addresses.
    fn gateway(&mut self, rt: &Runtime, args: &[String]) -> Result<(String, String)> {
        match self {
            Self::Spawned(procs) => {
                let ready = procs.spawn(Role::Gateway, "gateway".into(), args)?;
                Ok((json_str(&ready, "http"), grpc(&ready)))
            }
            Self::InProcess(servers) => {
                let serve = super::parse_args::<super::gateway::ServeArgs>(&args[2..])?;
                let gateway = rt
                    .block_on(dvd_gateway::server::start(
                        serve.gateway_config()?,
                        serve.drain(),
                    ))
                    .context("starting the gateway")?;
                let addrs = (
                    gateway.details.http_addr.to_string(),
                    gateway.grpc_addr.to_string(),
                );
                servers.gateway = Some(gateway);
                Ok(addrs)
            }
        }
    }

    /// Looks after the child processes once (servers in this process need nothing).
    fn supervise(&mut self) -> Result<()> {
        match self {
            Self::Spawned(procs) => procs.supervise(),
            Self::InProcess(_) => Ok(()),
        }
    }

    /// Writes the gateway's configuration file: its fixed part and the pools' addresses (kept
    /// by the supervisor of spawned servers, which rewrites it when one comes back).
    fn gateway_file(
        &mut self,
        file: GatewayFile,
        vision: &[String],
        language: &[String],
    ) -> Result<()> {
        match self {
            Self::Spawned(procs) => {
                procs.gateway_file = Some(file);
                procs.write_gateway_file()
            }
            Self::InProcess(_) => {
                let never_restarted = |pool: &[String]| -> Vec<(String, u32)> {
                    pool.iter().map(|a| (a.clone(), 0)).collect()
                };
                file.write(&never_restarted(vision), &never_restarted(language))
            }
        }
    }
}

fn json_str(value: &serde_json::Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_owned()
}

/// `--cpus LIST` when a core list was given.
fn cpus_args(cpus: &Option<String>) -> Vec<String> {
    cpus.iter()
        .flat_map(|c| ["--cpus".to_string(), c.clone()])
        .collect()
}

/// `--cpu-quota CORES` when a quota was given.
fn quota_args(cores: Option<f64>) -> Vec<String> {
    cores
        .iter()
        .flat_map(|c| ["--cpu-quota".to_string(), c.to_string()])
        .collect()
}

impl UpArgs {
    /// The traces this process exports: with `--coupled` the servers run in it (`service.name`
    /// `dvd-coupled`); otherwise each server exports its own and this process none.
    pub fn traces(&self) -> Result<Option<dvd_serve::telemetry::TelemetryConfig>> {
        let config = self.telemetry.config("dvd-coupled")?;
        Ok(config.filter(|_| self.coupled))
    }

    /// Runs the deployment until Ctrl-C or SIGTERM.
    pub fn run(self) -> Result<()> {
        if self.language == 0 {
            bail!("--language must be at least 1");
        }
        let model = match &self.model {
            Some(m) => m.clone(),
            None => super::demo_model::path()?.display().to_string(),
        };
        let dir = std::env::temp_dir().join(format!("dvd-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let mut launch = match self.coupled {
            true => Launch::InProcess(InProcess::default()),
            false => Launch::Spawned(Processes::new(dir.clone(), self.telemetry.to_args())),
        };
        let started = self.start_all(&runtime, &mut launch, &model, &dir);
        let result = match started {
            Ok(()) => runtime.block_on(self.serve(&mut launch)),
            Err(e) => Err(e),
        };
        eprintln!("stopping...");
        match launch {
            Launch::Spawned(procs) => drop(procs),
            Launch::InProcess(servers) => runtime.block_on(servers.shutdown()),
        }
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// Device and precision of language server `i`: with several GPU ranks each and no
    /// --devices, server `i` takes the `i`-th run of --tensor-parallel-size GPUs from --device.
    fn language_compute(&self, i: usize) -> ComputeArgs {
        let mut compute = self.compute.clone();
        let ranks = self.parallel.split.tensor_parallel_size;
        if let DeviceSpec::Cuda(first) = compute.device
            && ranks > 1
            && self.parallel.devices.is_empty()
        {
            compute.device = DeviceSpec::Cuda(first + i * ranks);
        }
        compute
    }

    /// Starts the language servers, the vision servers and the gateway (configured with their
    /// addresses), waits until the gateway is healthy and prints where it listens.
    fn start_all(&self, rt: &Runtime, launch: &mut Launch, model: &str, dir: &Path) -> Result<()> {
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
                model,
                "--listen",
                "127.0.0.1:0",
                "--feature-listen",
                "127.0.0.1:0",
                "--transport",
                &self.transport.to_string(),
            ]
            .map(String::from)
            .to_vec();
            args.extend(self.engine.to_args());
            args.extend(self.parallel.to_args());
            args.extend(tls_language.iter().cloned());
            args.extend(self.language_compute(i).to_args());
            args.extend(cpus_args(&self.language_cpus));
            args.extend(quota_args(self.language_cpu_quota));
            language.push(launch.language(rt, format!("language server {i}"), &args)?);
        }
        let mut vision = Vec::new();
        for i in 0..self.vision {
            let mut args: Vec<String> = [
                "vision",
                "serve",
                "--model",
                model,
                "--listen",
                "127.0.0.1:0",
            ]
            .map(String::from)
            .to_vec();
            args.extend(tls_vision.iter().cloned());
            args.extend(self.compute.to_args());
            args.extend(cpus_args(&self.vision_cpus));
            args.extend(quota_args(self.vision_cpu_quota));
            vision.push(launch.vision(rt, format!("vision server {i}"), &args)?);
        }
        let http = SocketAddr::new(self.host, self.port);
        let grpc = SocketAddr::new(self.host, self.port.wrapping_add(1));
        let name = Path::new(model)
            .file_name()
            .map_or_else(|| model.to_owned(), |n| n.to_string_lossy().into_owned());
        let fixed = format!(
            "[server]\nhttp = \"{http}\"\ngrpc = \"{grpc}\"\nmodel = \"{name}\"\n\n\
             [health]\ninterval_ms = 500\n"
        );
        let config_path = dir.join("gateway.toml");
        let file = GatewayFile {
            path: config_path.clone(),
            fixed,
        };
        launch.gateway_file(file, &vision, &language)?;
        let mut args = vec![
            "gateway".into(),
            "serve".into(),
            "--config".into(),
            config_path.display().to_string(),
        ];
        args.extend(cpus_args(&self.gateway_cpus));
        let (http_addr, grpc_addr) = launch.gateway(rt, &args)?;
        rt.block_on(wait_healthy(&grpc_addr))?;
        if self.ready_json {
            let ready = serde_json::json!({
                "http": http_addr,
                "grpc": grpc_addr,
                "vision": vision,
                "language": language,
                "coupled": self.coupled,
            });
            println!("{ready}");
        } else {
            let mode = match self.coupled {
                true => "in one process (coupled)",
                false => "as separate processes",
            };
            println!(
                "dvd is up: {} vision + {} language servers {mode} ({} features), model {name}",
                self.vision, self.language, self.transport
            );
            println!("  OpenAI-compatible API: http://{http_addr}/v1   gRPC: {grpc_addr}");
            println!(
                "  curl http://{http_addr}/v1/chat/completions -H 'Content-Type: application/json' \\\n    \
                 -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'"
            );
            println!(
                "  dvd chat --url http://{http_addr} --image cat.jpg \"What is in the picture?\""
            );
            println!("  Cluster view: dvd status --url http://{http_addr} --watch");
            println!("Ctrl-C stops everything.");
        }
        Ok(())
    }

    /// Serves until a signal arrives or a server keeps exiting.
    async fn serve(&self, launch: &mut Launch) -> Result<()> {
        let stop = super::wait_for_signal();
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                r = &mut stop => return r,
                _ = tick.tick() => launch.supervise()?,
            }
        }
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
