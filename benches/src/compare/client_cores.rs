//! Where the load generator runs. The client stands for users on other machines, and in the
//! vision-alone run its feature listener stands for the language server; on a CPU stand-in
//! for separate GPUs both belong on the language side's cores, not on the vision server's,
//! where they would take time from the stage being measured.

use std::future::Future;

use anyhow::{Context, Result};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Pins the benchmark's own threads to a set of cores while it generates load, and lets the
/// deployments it starts keep every core (they pin their servers themselves).
#[derive(Debug, Clone)]
pub struct ClientCores {
    client: CpuSet,
    all: CpuSet,
}

impl ClientCores {
    /// The cores `cpus` for the client; the calling thread's present set for everything else.
    pub fn new(cpus: &[usize]) -> Result<Self> {
        let mut client = CpuSet::new();
        for &cpu in cpus {
            client
                .set(cpu)
                .with_context(|| format!("core {cpu} is beyond what this system supports"))?;
        }
        let all = sched_getaffinity(Pid::from_raw(0)).context("reading this thread's cores")?;
        Ok(Self { client, all })
    }

    /// Pins the calling thread to the client's cores (for the runtime's worker threads).
    pub fn pin_this_thread(&self) -> Result<()> {
        sched_setaffinity(Pid::from_raw(0), &self.client).context("pinning the client's threads")
    }

    /// Runs `f` on the calling thread pinned to the client's cores, then gives it every core
    /// back, so processes it starts later are not confined.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.pin_this_thread()?;
        let out = f();
        sched_setaffinity(Pid::from_raw(0), &self.all).context("unpinning the client thread")?;
        Ok(out)
    }
}

/// The benchmark's async runtime, its threads on the client's cores when there are any.
#[derive(Debug)]
pub struct ClientRuntime {
    runtime: tokio::runtime::Runtime,
    cores: Option<ClientCores>,
}

impl ClientRuntime {
    /// A multi-threaded runtime whose threads pin themselves to `cpus` as they start.
    pub fn new(cpus: Option<&[usize]>) -> Result<Self> {
        let cores = cpus.map(ClientCores::new).transpose()?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if let Some(cores) = cores.clone() {
            builder.on_thread_start(move || {
                if let Err(e) = cores.pin_this_thread() {
                    tracing::warn!("{e:#}");
                }
            });
        }
        Ok(Self {
            runtime: builder.build()?,
            cores,
        })
    }

    /// Runs `future` to completion, the calling thread on the client's cores meanwhile.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output> {
        match &self.cores {
            Some(cores) => cores.run(|| self.runtime.block_on(future)),
            None => Ok(self.runtime.block_on(future)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cores() -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    }

    #[test]
    fn the_client_runs_on_its_cores_and_gives_the_rest_back() {
        let before = cores();
        let first = before[0];
        let client = ClientCores::new(&[first]).unwrap();
        assert_eq!(client.run(cores).unwrap(), vec![first]);
        assert_eq!(cores(), before);
        let runtime = ClientRuntime::new(Some(&[first])).unwrap();
        let on_worker = runtime
            .block_on(async { tokio::task::spawn_blocking(cores).await.unwrap() })
            .unwrap();
        assert_eq!(on_worker, vec![first]);
        assert_eq!(cores(), before);
    }

    #[test]
    fn a_core_beyond_the_system_is_refused() {
        assert!(ClientCores::new(&[CpuSet::count() + 1]).is_err());
    }
}
