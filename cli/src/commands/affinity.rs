//! `--cpus`: pins a server process to a set of CPU cores before it starts any thread, so its
//! async runtime, its compute thread pool (rayon, sized from the cores it may use, see
//! [`size_compute_pool`]) and every thread after them stay on those cores. `dvd up` uses it to
//! give the vision and language servers cores of their own, the CPU stand-in for separate GPUs.

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Parses a core list such as `0`, `0,2` or `0-3,6` into core ids (sorted, deduplicated).
pub fn parse_cpus(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: usize = first
            .parse()
            .with_context(|| format!("bad core id {first:?} in --cpus {list:?}"))?;
        let last: usize = last
            .parse()
            .with_context(|| format!("bad core id {last:?} in --cpus {list:?}"))?;
        if last < first {
            bail!("core range {part:?} in --cpus {list:?} runs backwards");
        }
        cpus.extend(first..=last);
    }
    if cpus.is_empty() {
        bail!("--cpus {list:?} names no core");
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Restricts this process (its calling thread and every thread it starts later) to `list`.
pub fn pin_process(list: &str) -> Result<()> {
    let cpus = parse_cpus(list)?;
    let mut set = CpuSet::new();
    for &cpu in &cpus {
        set.set(cpu)
            .with_context(|| format!("core {cpu} is beyond what this system supports"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to cores {list} (does this machine have them?)"))?;
    tracing::info!(cores = list, "pinned to cores");
    size_compute_pool();
    Ok(())
}

/// The variable candle (and rayon) size the CPU compute pool from.
const POOL_SIZE_VAR: &str = "RAYON_NUM_THREADS";
/// Set beside [`POOL_SIZE_VAR`] when dvd chose the size, so a dvd process started by another
/// (`dvd up`, `dvd bench compare`) sizes its own pool instead of taking the parent's as the
/// user's choice.
const SIZED_BY_DVD_VAR: &str = "DVD_SIZED_COMPUTE_POOL";

/// Sizes the CPU compute pool to the cores this process may use (its affinity and CPU quota),
/// unless the user set [`POOL_SIZE_VAR`] themselves. Call it while the process has one thread:
/// at start-up and right after pinning. With more threads it does nothing (changing the
/// environment then is unsound).
///
/// Why: candle looks the pool size up on every CPU matmul, and with the variable unset each
/// lookup counts physical cores by reading `/proc/cpuinfo` (about 0.1-0.2 ms on a VM: half of a
/// small model's decode step), and the count ignores pinning, so a server pinned to one core
/// ran two compute threads on it.
pub fn size_compute_pool() {
    static SET_BY_USER: OnceLock<bool> = OnceLock::new();
    let set_by_user = SET_BY_USER.get_or_init(|| {
        std::env::var_os(POOL_SIZE_VAR).is_some() && std::env::var_os(SIZED_BY_DVD_VAR).is_none()
    });
    if *set_by_user {
        return;
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    if threads != 1 {
        tracing::debug!(
            threads,
            "not sizing the compute pool: more than one thread runs"
        );
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: this process has a single thread (checked just above), so nothing can read the
    // environment while it changes.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(POOL_SIZE_VAR, cores.to_string());
        std::env::set_var(SIZED_BY_DVD_VAR, "1");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn core_lists_parse_ranges_and_singles() {
        assert_eq!(parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(parse_cpus("3,1-2, 1").unwrap(), vec![1, 2, 3]);
        assert!(parse_cpus("2-1").is_err());
        assert!(parse_cpus("a").is_err());
        assert!(parse_cpus(" , ").is_err());
    }

    #[test]
    fn pinning_to_a_core_that_does_not_exist_is_an_error() {
        assert!(pin_process("100000").is_err());
    }
}
