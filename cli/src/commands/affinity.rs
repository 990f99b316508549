//! `--cpus`: pins a server process to a set of CPU cores before it starts any thread, so its
//! async runtime, its compute thread pool (rayon, sized from the cores it may use) and every
//! thread after them stay on those cores. `dvd up` uses it to give the vision and language
//! servers cores of their own, the CPU stand-in for separate GPUs.

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
    Ok(())
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
