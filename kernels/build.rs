//! Compiles the CUDA kernels to PTX when the `cuda` feature is on (nvcc from `NVCC`, `CUDA_HOME`
//! or `PATH`; `CUDA_COMPUTE_CAP`, e.g. 90, picks the virtual architecture, default 80, whose PTX
//! the driver compiles for any newer GPU). Without the feature nothing is built.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 3] = ["attention", "elementwise", "moe"];

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    for name in KERNELS {
        println!("cargo:rerun-if-changed=src/cuda/{name}.cu");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|c| c.trim().replace('.', ""))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "80".to_string());
    for name in KERNELS {
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", "--use_fast_math"])
            .arg(format!("-arch=compute_{cap}"))
            .arg(format!("src/cuda/{name}.cu"))
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on src/cuda/{name}.cu");
    }
}

fn nvcc() -> PathBuf {
    if let Some(path) = std::env::var_os("NVCC") {
        return PathBuf::from(path);
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let candidate = PathBuf::from(home).join("bin/nvcc");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("nvcc")
}
