//! `dvd up` supervises its servers: one killed with SIGKILL under load is restarted (on new
//! ports, which the gateway learns without a restart) while the rest keep serving, `GET
//! /v1/cluster` and `dvd status` show it back with its restart counted, and a server that keeps
//! failing stops the deployment with the reason. Under it: the gateway re-reads its pools on
//! SIGHUP, and keeps them when the file is broken.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dvd_bench::process;
use serde_json::Value;

use crate::common::{
    ServerProcess, Up, ask_red_circle, dvd, free_port_pair, http, json_output, language_fixture,
    start_language,
};

/// The ids of `parent`'s children running `dvd <role> serve`.
fn servers_of(parent: u32, role: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the command name may hold spaces, so split after it.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if ppid == parent
            && args.get(1) == Some(&role.as_bytes())
            && args.get(2) == Some(&&b"serve"[..])
        {
            found.push(pid);
        }
    }
    found
}

/// Sends `signal` (`KILL`, `HUP`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The gateway's cluster view.
fn cluster(addr: &str) -> Value {
    let reply = http(addr, "GET", "/v1/cluster", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Whether `pool` has `members` members, all healthy, exactly one of them restarted once.
fn back(view: &Value, pool: &str, members: usize) -> bool {
    let list = view[pool].as_array().unwrap();
    list.len() == members
        && list.iter().all(|m| m["healthy"] == true)
        && list.iter().filter(|m| m["restarts"] == 1).count() == 1
        && list.iter().filter(|m| m["restarts"] == 0).count() == members - 1
}

#[test]
fn killed_servers_come_back_and_every_later_request_answers() {
    let up = Up::start(&["--vision", "2", "--language", "2"]);
    let before = cluster(&up.http);
    let addresses = |view: &Value, pool: &str| -> Vec<String> {
        view[pool]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["address"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(addresses(&before, "vision").len(), 2, "{before}");
    assert_eq!(addresses(&before, "language").len(), 2, "{before}");

    // Load from two clients for the whole test: (when sent, status) of every request.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<(Instant, u16)>::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent, addr) = (stop.clone(), sent.clone(), up.http.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let status = ask_red_circle(&addr).status;
                    sent.lock().unwrap().push((at, status));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    let vision = servers_of(up.pid(), "vision");
    let language = servers_of(up.pid(), "language");
    assert_eq!((vision.len(), language.len()), (2, 2));
    signal(vision[0], "KILL");
    signal(language[1], "KILL");
    let killed = Instant::now();

    // Requests sent after the kill, one at a time beside the load, all answer.
    for _ in 0..10 {
        let reply = ask_red_circle(&up.http);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            reply.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .contains("circle")
        );
    }

    // Both come back (new processes on new ports), counted as restarted once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let view = cluster(&up.http);
        if back(&view, "vision", 2) && back(&view, "language", 2) {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the killed servers did not come back: {view}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let came_back = killed.elapsed();
    let new_vision = servers_of(up.pid(), "vision");
    let new_language = servers_of(up.pid(), "language");
    assert!(!new_vision.contains(&vision[0]) && new_vision.contains(&vision[1]));
    assert!(!new_language.contains(&language[1]) && new_language.contains(&language[0]));
    for pool in ["vision", "language"] {
        let restarted = after[pool]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["restarts"] == 1)
            .unwrap();
        let address = restarted["address"].as_str().unwrap();
        assert!(
            !addresses(&before, pool).contains(&address.to_owned()),
            "{pool}: the restarted server has a new address: {after}"
        );
    }
    // A few more requests with everything back.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let sent = sent.lock().unwrap();
    let later: Vec<u16> = sent
        .iter()
        .filter(|(at, _)| *at > killed)
        .map(|(_, status)| *status)
        .collect();
    assert!(later.len() >= 4, "{} requests after the kill", later.len());
    assert!(later.iter().all(|s| *s == 200), "after the kill: {later:?}");
    eprintln!(
        "back in the pools {:.2} s after the kill; {} requests sent after it (beside 10 \
         one at a time), all 200",
        came_back.as_secs_f64(),
        later.len()
    );
    // What the gateway saw over the last minute is in the view: answers on the survivors.
    let survivors = cluster(&up.http);
    let answered: f64 = ["vision", "language"]
        .iter()
        .flat_map(|pool| survivors[pool].as_array().unwrap().clone())
        .map(|m| m["throughput"].as_f64().unwrap())
        .sum();
    assert!(answered > 0.0, "{survivors}");

    // `dvd status`, as JSON and as a table.
    let url = format!("http://{}", up.http);
    let status = json_output(dvd().args(["status", "--url", &url, "--json"]));
    assert_eq!(status["vision"].as_array().unwrap().len(), 2, "{status}");
    assert!(back(&status, "language", 2), "{status}");
    let table = dvd().args(["status", "--url", &url]).output().unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.starts_with("pool "), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("vision ")).count(),
        2,
        "{table}"
    );
}

#[test]
fn a_server_that_keeps_failing_stops_the_deployment_with_the_reason() {
    // A copy of the model that is removed once everything runs: every restart fails to load.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for file in std::fs::read_dir(language_fixture("internvl-moe-custom-bf16")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, model.join(file.file_name().unwrap())).unwrap();
    }
    let port = free_port_pair();
    let mut child = dvd()
        .args(["up", "--port", &port.to_string(), "--kv-cache-mib", "64"])
        .args(["--model", model.to_str().unwrap(), "--ready-json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert!(ready.contains("\"http\""), "{ready}");
    std::fs::remove_dir_all(&model).unwrap();
    signal(servers_of(child.id(), "vision")[0], "KILL");
    // Four restarts fail (0.5 + 1 + 2 + 4 s apart); the fifth exit in a minute stops it all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            process::stop(&mut child, Duration::from_secs(10));
            panic!("dvd up kept going");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("vision server 0 exited 5 times within 60 s"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("restarting it in").count(), 4, "{stderr}");
}

/// Polls the cluster view until `pool`'s addresses are `want` (10 s at most).
fn wait_for_members(addr: &str, pool: &str, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = cluster(addr);
        let now: Vec<String> = view[pool]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["address"].as_str().unwrap().to_owned())
            .collect();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pool} never became {want:?}: {view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_the_pools_and_a_broken_file_changes_nothing() {
    let model = language_fixture("internvl-moe-custom-bf16");
    let first = start_language(&model, 64, &[]);
    let second = start_language(&model, 64, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let port = free_port_pair();
    let config = |language: &[String], restarts: &str| {
        format!(
            "[server]\nhttp = \"127.0.0.1:{port}\"\ngrpc = \"127.0.0.1:{}\"\n\
             [language]\naddresses = {language:?}\nrestarts = {{ {restarts} }}\n",
            port + 1
        )
    };
    let one = vec![first.field("grpc")];
    std::fs::write(&path, config(&one, "")).unwrap();
    let gateway = ServerProcess::start(&["gateway", "serve", "--config", path.to_str().unwrap()]);
    let http_addr = gateway.field("http");
    wait_for_members(&http_addr, "language", &one);

    // A second member joins, with a restart count from its supervisor.
    let mut both = vec![first.field("grpc"), second.field("grpc")];
    both.sort();
    let restarted = format!("{:?} = 3", second.field("grpc"));
    std::fs::write(&path, config(&both, &restarted)).unwrap();
    signal(gateway.pid(), "HUP");
    wait_for_members(&http_addr, "language", &both);
    let view = cluster(&http_addr);
    let second_view = view["language"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == second.field("grpc").as_str())
        .unwrap()
        .clone();
    assert_eq!(second_view["restarts"], 3, "{view}");

    // A broken file leaves the pools as they were, and the gateway serving.
    std::fs::write(&path, "[language\naddresses = ").unwrap();
    signal(gateway.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(500));
    wait_for_members(&http_addr, "language", &both);
    assert_eq!(http(&http_addr, "GET", "/health", b"").status, 200);

    // A member left out leaves the pool.
    let only_second = vec![second.field("grpc")];
    std::fs::write(&path, config(&only_second, "")).unwrap();
    signal(gateway.pid(), "HUP");
    wait_for_members(&http_addr, "language", &only_second);
}

#[test]
fn a_killed_gateway_comes_back_on_its_ports_with_the_current_pools() {
    let up = Up::start(&[]);
    let gateway = servers_of(up.pid(), "gateway");
    assert_eq!(gateway.len(), 1);
    let before = cluster(&up.http);
    signal(gateway[0], "KILL");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let back = servers_of(up.pid(), "gateway");
        if back.len() == 1
            && back[0] != gateway[0]
            && std::net::TcpStream::connect(&up.http).is_ok()
            && http(&up.http, "GET", "/health", b"").status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cluster(&up.http), before);
    assert_eq!(ask_red_circle(&up.http).status, 200);
}
