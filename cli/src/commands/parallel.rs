//! `--tensor-parallel-size`, `--expert-parallel` and `--devices`: one language model over the
//! devices of one host (or over CPU threads), shared by every command that loads one.

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use clap::Args;
use dvd_language_server::model::Parallelism;

use super::device::{ComputeArgs, DeviceSpec, open_device};

/// How the language model is split over ranks (the CPU benchmarks take only this).
#[derive(Debug, Clone, Args)]
pub struct SplitArgs {
    /// Ranks the language model is split over (Megatron-style tensor parallelism, one thread
    /// per rank): consecutive GPUs from --device cuda:K, the list in --devices, or N ranks on
    /// the CPU with --device cpu.
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel_size: usize,
    /// Put whole experts on each rank (E/N each) instead of a slice of every expert's width
    /// (mixture-of-experts models).
    #[arg(long)]
    pub expert_parallel: bool,
}

impl SplitArgs {
    /// The split.
    pub fn parallelism(&self) -> Parallelism {
        Parallelism {
            tensor_parallel_size: self.tensor_parallel_size,
            expert_parallel: self.expert_parallel,
        }
    }
}

/// How the language model is split over ranks, and on which devices.
#[derive(Debug, Clone, Args)]
pub struct ParallelArgs {
    #[command(flatten)]
    pub split: SplitArgs,
    /// The ranks' GPUs, e.g. cuda:2,cuda:3 (one per rank; default: consecutive from --device).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<DeviceSpec>,
}

impl ParallelArgs {
    /// The split.
    pub fn parallelism(&self) -> Parallelism {
        self.split.parallelism()
    }

    /// The ranks' devices when --devices lists them (opened), else none: the model places its
    /// ranks from `compute`'s --device.
    pub fn open_devices(&self, compute: &ComputeArgs) -> Result<Vec<Device>> {
        if self.devices.is_empty() {
            return Ok(Vec::new());
        }
        if self.devices.len() != self.split.tensor_parallel_size {
            bail!(
                "--devices lists {} devices for --tensor-parallel-size {}",
                self.devices.len(),
                self.split.tensor_parallel_size
            );
        }
        if compute.device != DeviceSpec::Cpu && compute.device != self.devices[0] {
            bail!(
                "--device {} and --devices {} disagree: give --devices alone",
                compute.device,
                self.devices[0]
            );
        }
        self.devices.iter().map(|&d| open_device(d)).collect()
    }

    /// The compute dtype: --dtype, else the default of the first rank's device.
    pub fn dtype(&self, compute: &ComputeArgs) -> DType {
        compute.dtype_for(self.devices.first().copied().unwrap_or(compute.device))
    }

    /// The flags that give a child process the same split.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--tensor-parallel-size".to_string(),
            self.split.tensor_parallel_size.to_string(),
        ];
        if self.split.expert_parallel {
            args.push("--expert-parallel".to_string());
        }
        if !self.devices.is_empty() {
            let list: Vec<String> = self.devices.iter().map(ToString::to_string).collect();
            args.extend(["--devices".to_string(), list.join(",")]);
        }
        args
    }
}
