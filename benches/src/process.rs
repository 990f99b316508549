//! Serving child processes (`dvd up`, `dvd <role> serve`) and how they stop: SIGTERM first, so a
//! server drains and stops its own children, then SIGKILL once a grace period has passed. Used by
//! [`compare::deployment`](crate::compare::deployment), `dvd up` and the `dvd` tests.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Sends SIGTERM to `child`; whether the signal was delivered.
pub fn terminate(child: &Child) -> bool {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// Waits until `child` exits or `deadline` passes, kills it if it is still running and reaps it;
/// whether it had to be killed.
pub fn reap_by(child: &mut Child, deadline: Instant) -> bool {
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = matches!(child.try_wait(), Ok(None));
    if running {
        let _ = child.kill();
    }
    let _ = child.wait();
    running
}

/// Stops `child`: SIGTERM, then SIGKILL if it is still running `grace` later; whether it had to
/// be killed.
pub fn stop(child: &mut Child, grace: Duration) -> bool {
    terminate(child);
    reap_by(child, Instant::now() + grace)
}

/// A port `p` with `p` and `p + 1` free on 127.0.0.1 (a gateway's HTTP and gRPC listeners),
/// found by binding port 0. Another process may take them before they are used.
pub fn free_port_pair() -> Result<u16> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of adjacent ports on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    use super::*;

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut obeys = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(
            !stop(&mut obeys, Duration::from_secs(10)),
            "sleep obeys SIGTERM"
        );
        let mut ignores = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(ignores.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        let started = Instant::now();
        assert!(stop(&mut ignores, Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
