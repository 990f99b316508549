//! The `dvd` binary as users run it: real processes, real sockets.
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing

use std::process::{Command, Output};

fn dvd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dvd"))
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_transport_prints_the_documented_json() {
    let out = dvd()
        .args([
            "bench",
            "transport",
            "--json",
            "--rounds",
            "1",
            "--tcp-frames",
            "8",
            "--quic-frames",
            "8",
            "--tokens",
            "64",
            "--hidden",
            "256",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["raw_tcp_gbps", "tcp_gbps", "raw_quic_gbps", "quic_gbps"] {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["frame_bytes"], 64 * 256 * 2);
}

#[test]
fn bench_transport_refuses_unknown_modes() {
    let out = dvd()
        .args(["bench", "transport", "--modes", "tcp,carrier-pigeon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("carrier-pigeon"));
}

#[test]
fn tls_self_signed_writes_usable_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dvd()
        .args(["tls", "self-signed", "--out"])
        .arg(dir.path())
        .args(["--name", "language-0.dvd"])
        .output()
        .unwrap();
    assert_success(&out);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    dvd_transport::quic::ServerTls::from_pem_files(&cert, &key).unwrap();
    dvd_transport::quic::ClientTls::from_ca_file(&cert).unwrap();
}
