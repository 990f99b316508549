//! `dvd up`'s child processes and their supervision: a server that exits is started again with
//! the same arguments after a growing delay ([`RestartPolicy`]) while the others keep serving;
//! when it is back, the gateway's configuration file names its new address and a SIGHUP makes
//! the gateway take it. A server that keeps exiting stops the deployment.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use dvd_bench::process;

use super::restart::{ExitLog, RestartPolicy, Verdict};

/// What a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A vision server.
    Vision,
    /// A language server.
    Language,
    /// The gateway.
    Gateway,
}

/// Where a child is in its life.
enum Phase {
    /// Started and ready.
    Serving,
    /// Exited; starts again at this instant.
    RestartAt(Instant),
    /// Restarted; its ready line comes through here.
    Starting(mpsc::Receiver<Result<serde_json::Value>>),
}

/// One supervised server.
struct Slot {
    name: String,
    role: Role,
    args: Vec<String>,
    child: Child,
    /// Its last ready line.
    ready: serde_json::Value,
    phase: Phase,
    restarts: u32,
    exits: ExitLog,
}

/// The gateway's configuration file, rewritten whenever a server comes back on a new address.
pub struct GatewayFile {
    /// Where it is.
    pub path: PathBuf,
    /// Everything but the pools (`[server]`, `[health]`).
    pub fixed: String,
}

impl GatewayFile {
    /// Writes `fixed` and both pools, each member as `(address, restarts)`; whole or not at
    /// all, since the gateway may read it at any time.
    pub fn write(&self, vision: &[(String, u32)], language: &[(String, u32)]) -> Result<()> {
        let pool = |members: &[(String, u32)]| {
            let addresses: Vec<&String> = members.iter().map(|(a, _)| a).collect();
            let restarts: Vec<String> = members
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(a, n)| format!("{a:?} = {n}"))
                .collect();
            format!(
                "addresses = {addresses:?}\nrestarts = {{ {} }}\n",
                restarts.join(", ")
            )
        };
        let text = format!(
            "{}\n[vision]\n{}\n[language]\n{}",
            self.fixed,
            pool(vision),
            pool(language)
        );
        let partial = self.path.with_extension("toml.partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Child processes, supervised by [`Processes::supervise`]; stopped (SIGTERM, then SIGKILL
/// after a grace period) when dropped.
pub struct Processes {
    slots: Vec<Slot>,
    /// The directory of the deployment's files, removed when dropped.
    dir: PathBuf,
    /// The gateway's configuration, once written.
    pub gateway_file: Option<GatewayFile>,
    /// Options every child gets (`--otlp-endpoint`).
    common_args: Vec<String>,
    policy: RestartPolicy,
}

impl Processes {
    /// No children yet; files go to `dir`; every child gets `common_args` after its own.
    pub fn new(dir: PathBuf, common_args: Vec<String>) -> Self {
        Self {
            slots: Vec::new(),
            dir,
            gateway_file: None,
            common_args,
            policy: RestartPolicy::default(),
        }
    }

    /// Starts `dvd <args>` and returns the JSON line it prints when ready.
    pub fn spawn(
        &mut self,
        role: Role,
        name: String,
        args: &[String],
    ) -> Result<serde_json::Value> {
        let args: Vec<String> = args.iter().chain(&self.common_args).cloned().collect();
        let (child, stdout) = start(&name, &args)?;
        self.slots.push(Slot {
            name: name.clone(),
            role,
            args,
            child,
            ready: serde_json::Value::Null,
            phase: Phase::Serving,
            restarts: 0,
            exits: ExitLog::default(),
        });
        let ready = read_ready(&name, stdout)?;
        if let Some(slot) = self.slots.last_mut() {
            slot.ready = ready.clone();
        }
        Ok(ready)
    }

    /// Writes the gateway's configuration with the servers' current addresses.
    pub fn write_gateway_file(&self) -> Result<()> {
        let Some(file) = &self.gateway_file else {
            return Ok(());
        };
        let pool = |role: Role| -> Vec<(String, u32)> {
            self.slots
                .iter()
                .filter(|s| s.role == role)
                .map(|s| (grpc(&s.ready), s.restarts))
                .collect()
        };
        file.write(&pool(Role::Vision), &pool(Role::Language))
    }

    /// Looks after every child once: notes exits, restarts those whose delay has passed and
    /// takes the ready lines of restarted ones; tells the gateway when a server came back.
    /// Fails when a server has exited too often to go on.
    pub fn supervise(&mut self) -> Result<()> {
        let mut moved = false;
        let now = Instant::now();
        for slot in &mut self.slots {
            match &slot.phase {
                Phase::Serving => {
                    if let Ok(Some(status)) = slot.child.try_wait() {
                        slot.exited(&status.to_string(), now, &self.policy)?;
                    }
                }
                Phase::RestartAt(at) if now >= *at => slot.restart()?,
                Phase::RestartAt(_) => {}
                Phase::Starting(ready) => match ready.try_recv() {
                    Ok(Ok(line)) => {
                        slot.restarts += 1;
                        slot.ready = line;
                        slot.phase = Phase::Serving;
                        moved |= slot.role != Role::Gateway;
                        eprintln!(
                            "{} is back at {} (restart {})",
                            slot.name,
                            grpc(&slot.ready),
                            slot.restarts
                        );
                    }
                    Ok(Err(e)) => {
                        let _ = slot.child.kill();
                        let _ = slot.child.wait();
                        slot.exited(&format!("{e:#}"), now, &self.policy)?;
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => {
                        slot.exited("its start stopped", now, &self.policy)?;
                    }
                },
            }
        }
        if moved {
            super::super::cpu_quota::remove_exited_groups();
            self.write_gateway_file()?;
            self.reload_gateway();
        }
        Ok(())
    }

    /// SIGHUP to the gateway: it re-reads its configuration's pools.
    fn reload_gateway(&self) {
        let gateway = self
            .slots
            .iter()
            .find(|s| s.role == Role::Gateway && matches!(s.phase, Phase::Serving));
        if let Some(gateway) = gateway {
            let pid = nix::unistd::Pid::from_raw(gateway.child.id() as i32);
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP) {
                tracing::warn!(error = %e, "could not signal the gateway to reload");
            }
        }
        // A gateway that is restarting reads the new file when it starts.
    }
}

impl Slot {
    /// Judges an exit (or failed start) described by `how`: schedules a restart, or fails
    /// when the server has exited too often.
    fn exited(&mut self, how: &str, now: Instant, policy: &RestartPolicy) -> Result<()> {
        match self.exits.exited(now, policy) {
            Verdict::RestartIn(delay) => {
                eprintln!(
                    "{} exited ({how}); restarting it in {:.1} s",
                    self.name,
                    delay.as_secs_f64()
                );
                self.phase = Phase::RestartAt(now + delay);
                Ok(())
            }
            Verdict::GiveUp(times) => bail!(
                "{} exited {times} times within {} s (last: {how}); stopping everything",
                self.name,
                policy.window.as_secs()
            ),
        }
    }

    /// Starts the server again with its arguments; its ready line is read on a thread of its
    /// own, so supervision (and the signals) go on meanwhile.
    fn restart(&mut self) -> Result<()> {
        let (child, stdout) = start(&self.name, &self.args)?;
        self.child = child;
        let (tx, rx) = mpsc::channel();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_ready(&name, stdout));
        });
        self.phase = Phase::Starting(rx);
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // SIGTERM to all first: servers drain and close their listeners, together.
        for slot in &self.slots {
            process::terminate(&slot.child);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for slot in &mut self.slots {
            if process::reap_by(&mut slot.child, deadline) {
                eprintln!("{} did not stop in time; killed it", slot.name);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The cgroups of servers started with a CPU quota.
        super::super::cpu_quota::remove_exited_groups();
    }
}

/// Starts `dvd <args>` with its stdout piped.
fn start(name: &str, args: &[String]) -> Result<(Child, ChildStdout)> {
    let exe = std::env::current_exe().context("locating the dvd binary")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    Ok((child, stdout))
}

/// The JSON line a server prints when ready.
fn read_ready(name: &str, stdout: ChildStdout) -> Result<serde_json::Value> {
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .with_context(|| format!("reading {name}'s ready line"))?;
    serde_json::from_str(&line).map_err(|_| anyhow!("{name} failed to start"))
}

/// A ready line's gRPC address.
pub fn grpc(ready: &serde_json::Value) -> String {
    super::json_str(ready, "grpc")
}
