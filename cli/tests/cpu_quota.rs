//! `dvd up --vision-cpu-quota/--language-cpu-quota`: each server capped in a cgroup of its own
//! (the cpu controller, as this machine's root can write it), serving as usual, and the groups
//! gone once the deployment stops.

use std::path::PathBuf;

use crate::common::{Up, ask_red_circle};

/// The directory of the cgroup v1 `cpu` hierarchy, from this process's mount table.
fn cpu_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut after = after.split(' ');
            let (fs, options) = (after.next()?, after.nth(1)?);
            (fs == "cgroup" && options.split(',').any(|o| o == "cpu"))
                .then(|| PathBuf::from(before.split(' ').nth(4).unwrap()))
        })
        .expect("a cgroup v1 cpu hierarchy (this machine's kind has one)")
}

/// The children of process `parent`, with their command lines.
fn children(parent: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The parent is the second field after the command's closing parenthesis.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            (ppid == parent).then(|| (pid, cmdline.replace('\0', " ")))
        })
        .collect()
}

/// The cpu cgroup of process `pid`, relative to the hierarchy's root.
fn cpu_group(pid: u32) -> String {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, names, path) = (fields.next()?, fields.next()?, fields.next()?);
            names
                .split(',')
                .any(|n| n == "cpu")
                .then(|| path.to_string())
        })
        .unwrap()
}

#[test]
fn every_server_runs_in_a_capped_cgroup_of_its_own_and_the_groups_go_with_them() {
    let root = cpu_mount();
    let up = Up::start(&["--vision-cpu-quota", "0.25", "--language-cpu-quota", "0.5"]);
    let answer = ask_red_circle(&up.http);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut groups = Vec::new();
    for (pid, cmdline) in children(up.pid()) {
        let group = cpu_group(pid);
        let dir = root.join(group.trim_start_matches('/'));
        let quota = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
        let (role, cores) = if cmdline.contains("vision serve") {
            ("vision", "25000")
        } else if cmdline.contains("language serve") {
            ("language", "50000")
        } else {
            // The gateway is not capped.
            assert!(cmdline.contains("gateway serve"), "{cmdline}");
            assert!(!group.contains("/dvd/"), "{group}");
            continue;
        };
        assert_eq!(group, format!("/dvd/{role}-{pid}"), "{cmdline}");
        assert_eq!(quota("cpu.cfs_quota_us").trim(), cores, "{role}");
        assert_eq!(quota("cpu.cfs_period_us").trim(), "100000", "{role}");
        assert!(
            quota("cgroup.procs").lines().any(|l| l == pid.to_string()),
            "{role}"
        );
        groups.push(dir);
    }
    assert_eq!(groups.len(), 2, "one vision and one language group");
    drop(up);
    for dir in groups {
        assert!(!dir.exists(), "{} outlived its server", dir.display());
    }
}

#[test]
fn a_quota_the_kernel_cannot_take_is_refused_before_serving() {
    let out = crate::common::dvd()
        .args([
            "vision",
            "serve",
            "--model",
            "dvd-demo",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--cpu-quota", "0.001"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smallest quota"), "{err}");
}
