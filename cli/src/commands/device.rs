//! `--device` and `--dtype`, shared by every command that runs a model.

use std::str::FromStr;

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use clap::Args;

use super::encode::Precision;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device `n` (needs a binary built with `--features cuda`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| format!("bad CUDA ordinal in {s:?}")),
                None => Err(format!("unknown device {s:?}: expected cpu or cuda:N")),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `--device` and `--dtype`.
#[derive(Debug, Clone, Args)]
pub struct ComputeArgs {
    /// Where the model runs: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute precision (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
}

impl ComputeArgs {
    /// Opens the device, with a clear error when it cannot be used.
    pub fn open(&self) -> Result<Device> {
        open_device(self.device)
    }

    /// The compute dtype: `--dtype`, else f32 on the CPU and bf16 on a GPU.
    pub fn dtype(&self) -> DType {
        self.dtype_for(self.device)
    }

    /// The compute dtype on `device`: `--dtype`, else f32 on the CPU and bf16 on a GPU.
    pub fn dtype_for(&self, device: DeviceSpec) -> DType {
        match (self.dtype, device) {
            (Some(p), _) => p.dtype(),
            (None, DeviceSpec::Cpu) => DType::F32,
            (None, DeviceSpec::Cuda(_)) => DType::BF16,
        }
    }

    /// The flags that give a child process the same device and dtype.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--device".to_string(), self.device.to_string()];
        if let Some(p) = self.dtype {
            let name = match p {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16",
            };
            args.extend(["--dtype".to_string(), name.to_string()]);
        }
        args
    }
}

/// Opens `spec`. A binary built without the `cuda` feature, a machine without a driver or GPU,
/// or a missing ordinal give an error that says which.
pub fn open_device(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => open_cuda(n),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    bail!(
        "--device cuda:{n}: this dvd was built without GPU support; build it with \
         `--features cuda` (tools/cuda/build.sh)"
    )
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    // cudarc panics rather than erring on some driver failures; keep those quiet and typed.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(n));
    std::panic::set_hook(hook);
    match opened {
        Ok(Ok(device)) => Ok(device),
        // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
        Ok(Err(e)) => bail!(
            "--device cuda:{n}: no usable CUDA device ({})",
            e.to_string().lines().next().unwrap_or_default()
        ),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA driver failed".to_string());
            bail!("--device cuda:{n}: no usable CUDA device ({why})")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn gpu_defaults_to_bf16() {
        let args = ComputeArgs {
            device: DeviceSpec::Cuda(0),
            dtype: None,
        };
        assert_eq!(args.dtype(), DType::BF16);
        let args = ComputeArgs {
            device: DeviceSpec::Cpu,
            dtype: None,
        };
        assert_eq!(args.dtype(), DType::F32);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cpu_build_refuses_cuda_clearly() {
        let err = open_device(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("built without GPU support"), "{err}");
    }
}
