//! `--cpu-quota CORES`: caps a server process at a share of CPU time (0.25: a quarter of one
//! core's time, however many cores it runs on) with the kernel's CFS bandwidth control. Before
//! it starts any thread, the process moves itself into a cgroup of its own, `dvd/<role>-<pid>`
//! under its cgroup in the cpu controller: cgroup v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`,
//! or cgroup v2's `cpu.max`. `dvd up --vision-cpu-quota/--language-cpu-quota` gives every
//! server of a pool an equal share, so `dvd bench compare --validate-splits` can run 2V:1L or
//! 2V:2L of fractional units on a 2-core machine.
//!
//! A cgroup outlives its process: `dvd up` removes its servers' after stopping them, and each
//! new one removes the empty ones beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

/// The CFS period the quota is a share of, microseconds (the kernel's default).
const PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes, microseconds.
const MIN_QUOTA_US: u64 = 1_000;

/// Which cgroup interface holds the cpu controller, and where this process's cgroup is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CpuController {
    /// cgroup v1: the `cpu` hierarchy's directory of this process's cgroup.
    V1(PathBuf),
    /// cgroup v2: the unified hierarchy's directory of this process's cgroup.
    V2(PathBuf),
}

/// Moves this process into a new cgroup capped at `cores` cores' worth of CPU time, named
/// after `role`; then sizes the compute pool to it (see [`super::affinity`]).
pub fn cap_process(role: &str, cores: f64) -> Result<()> {
    let quota = quota_us(cores)?;
    let controller = CpuController::find()?;
    let (parent, v2) = match &controller {
        CpuController::V1(dir) => (dir.join("dvd"), false),
        CpuController::V2(dir) => (dir.join("dvd"), true),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("creating {} (is this process root?)", parent.display()))?;
    if v2 {
        // Children of `dvd` may use the cpu controller.
        for dir in [parent.parent().unwrap_or(&parent), &parent] {
            write(&dir.join("cgroup.subtree_control"), "+cpu")?;
        }
    }
    remove_empty_groups(&parent);
    let group = parent.join(format!("{role}-{}", std::process::id()));
    std::fs::create_dir_all(&group).with_context(|| format!("creating {}", group.display()))?;
    match v2 {
        false => {
            write(&group.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&group.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        true => write(&group.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?,
    }
    write(&group.join("cgroup.procs"), &std::process::id().to_string())?;
    tracing::info!(cores, cgroup = %group.display(), "capped CPU time");
    super::affinity::size_compute_pool();
    Ok(())
}

/// Removes the cgroups of exited processes (as `dvd up` does after stopping its servers); does
/// nothing where no cpu controller is found.
pub fn remove_exited_groups() {
    let Ok(controller) = CpuController::find() else {
        return;
    };
    let (CpuController::V1(dir) | CpuController::V2(dir)) = controller;
    remove_empty_groups(&dir.join("dvd"));
}

/// The quota of `cores` per [`PERIOD_US`].
fn quota_us(cores: f64) -> Result<u64> {
    ensure!(
        cores > 0.0 && cores.is_finite(),
        "--cpu-quota must be a positive number of cores, got {cores}"
    );
    let quota = (cores * PERIOD_US as f64).round() as u64;
    ensure!(
        quota >= MIN_QUOTA_US,
        "--cpu-quota {cores} is below the kernel's smallest quota ({} cores)",
        MIN_QUOTA_US as f64 / PERIOD_US as f64
    );
    Ok(quota)
}

impl CpuController {
    /// From `/proc/self/mountinfo` and `/proc/self/cgroup`: a v1 `cpu` hierarchy when one is
    /// mounted, else the unified hierarchy when its root offers the cpu controller.
    fn find() -> Result<Self> {
        let mounts = read("/proc/self/mountinfo")?;
        let groups = read("/proc/self/cgroup")?;
        Self::from_tables(&mounts, &groups, |root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// [`Self::find`] on the tables' text; `controllers` reads a v2 root's `cgroup.controllers`.
    fn from_tables(
        mountinfo: &str,
        cgroups: &str,
        controllers: impl Fn(&Path) -> String,
    ) -> Result<Self> {
        let own = |matches: &dyn Fn(&str) -> bool| {
            cgroups.lines().find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, names, path) = (fields.next()?, fields.next()?, fields.next()?);
                matches(names).then(|| path.trim_start_matches('/').to_string())
            })
        };
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((before, after)) = line.split_once(" - ") else {
                continue;
            };
            let mut fields = before.split(' ').skip(3);
            let (Some(mount_root), Some(mount_point)) = (fields.next(), fields.next()) else {
                continue;
            };
            // The cgroup path as seen from the mount (a container's mount starts at its own).
            let below_root = |path: String| {
                let root = mount_root.trim_start_matches('/');
                path.strip_prefix(root)
                    .map(|p| p.trim_start_matches('/').to_string())
                    .unwrap_or(path)
            };
            let mut after = after.split(' ');
            let (fs_type, options) = (after.next(), after.nth(1).unwrap_or(""));
            match fs_type {
                Some("cgroup") if options.split(',').any(|o| o == "cpu") => {
                    let path = own(&|names| names.split(',').any(|n| n == "cpu"))
                        .context("/proc/self/cgroup names no cpu cgroup")?;
                    return Ok(Self::V1(Path::new(mount_point).join(below_root(path))));
                }
                Some("cgroup2") => {
                    unified = Some((PathBuf::from(mount_point), mount_root.to_string()))
                }
                _ => {}
            }
        }
        let Some((root, mount_root)) = unified else {
            bail!("no cgroup hierarchy with the cpu controller is mounted");
        };
        if !controllers(&root).split_whitespace().any(|c| c == "cpu") {
            bail!(
                "the cgroup v2 hierarchy at {} does not offer the cpu controller",
                root.display()
            );
        }
        let path = own(&|names| names.is_empty()).context("/proc/self/cgroup has no v2 entry")?;
        let path = path
            .strip_prefix(mount_root.trim_start_matches('/'))
            .map_or(path.as_str(), |p| p.trim_start_matches('/'));
        Ok(Self::V2(root.join(path)))
    }
}

/// Removes the cgroups under `parent` whose process has exited: named `<role>-<pid>` for a pid
/// that no longer runs, and empty (a busy group refuses anyway). A group whose process still
/// runs stays even while empty: it may be between creating its group and joining it.
fn remove_empty_groups(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let exited = entry
            .file_name()
            .to_str()
            .and_then(|name| name.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let empty = std::fs::read_to_string(path.join("cgroup.procs"))
            .is_ok_and(|procs| procs.trim().is_empty());
        if exited && empty {
            let _ = std::fs::remove_dir(&path);
        }
    }
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {text:?} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const V1_MOUNTS: &str = "\
35 27 0:30 / /sys/fs/cgroup/cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct
34 27 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
44 27 0:39 / /sys/fs/cgroup/unified rw,relatime shared:19 - cgroup2 cgroup2 rw
";

    #[test]
    fn a_v1_cpu_hierarchy_wins_and_the_own_cgroup_is_joined() {
        let groups = "2:cpuacct:/\n1:cpu:/jobs/one\n0::/\n";
        let found = CpuController::from_tables(V1_MOUNTS, groups, |_| String::new()).unwrap();
        assert_eq!(
            found,
            CpuController::V1(PathBuf::from("/sys/fs/cgroup/cpu/jobs/one"))
        );
        // A container's mount starts at its own cgroup.
        let container = "34 27 0:29 /jobs /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let found = CpuController::from_tables(container, groups, |_| String::new()).unwrap();
        assert_eq!(
            found,
            CpuController::V1(PathBuf::from("/sys/fs/cgroup/cpu/one"))
        );
        // cpu and cpuacct mounted together.
        let joint = "34 27 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let found =
            CpuController::from_tables(joint, "1:cpu,cpuacct:/\n", |_| String::new()).unwrap();
        assert_eq!(
            found,
            CpuController::V1(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
    }

    #[test]
    fn the_unified_hierarchy_serves_when_it_offers_cpu() {
        let mounts = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let groups = "0::/user.slice/session-1.scope\n";
        let found =
            CpuController::from_tables(mounts, groups, |_| "cpuset cpu io memory".into()).unwrap();
        assert_eq!(
            found,
            CpuController::V2(PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope"))
        );
        let refused = CpuController::from_tables(mounts, groups, |_| "memory pids".into());
        assert!(refused.unwrap_err().to_string().contains("cpu controller"));
        assert!(CpuController::from_tables("", groups, |_| String::new()).is_err());
    }

    #[test]
    fn quotas_are_shares_of_the_period_and_refuse_nonsense() {
        assert_eq!(quota_us(0.25).unwrap(), 25_000);
        assert_eq!(quota_us(1.5).unwrap(), 150_000);
        assert!(quota_us(0.0).is_err());
        assert!(quota_us(f64::NAN).is_err());
        assert!(quota_us(0.001).is_err());
    }
}
