//! Where the ranks run and how they talk: a device per rank, and the collective backend that
//! fits those devices.

use std::sync::Arc;

use candle_core::Device;
use dvd_nn::ModelError;
use dvd_nn::parallel::{Communicator, LocalGroup};

/// Rank `r`'s device for a group of `ranks`: `explicit[r]` when a list is given (it must have
/// one device per rank, all CPU or all CUDA, no device twice), else every rank on the CPU when
/// `device` is the CPU, else CUDA devices `K..K + ranks` from `device` = `cuda:K`.
pub fn rank_devices(
    device: &Device,
    explicit: &[Device],
    ranks: usize,
) -> Result<Vec<Device>, ModelError> {
    if !explicit.is_empty() {
        if explicit.len() != ranks {
            return Err(ModelError::InvalidInput(format!(
                "{} devices given for --tensor-parallel-size {ranks}",
                explicit.len()
            )));
        }
        let cpus = explicit.iter().filter(|d| d.is_cpu()).count();
        if cpus != 0 && cpus != ranks {
            return Err(ModelError::InvalidInput(
                "the ranks' devices must be all CPUs or all GPUs".into(),
            ));
        }
        for (i, d) in explicit.iter().enumerate() {
            if !d.is_cpu() && explicit[..i].iter().any(|e| e.same_device(d)) {
                return Err(ModelError::InvalidInput(format!(
                    "device {d:?} is given twice: each rank needs its own GPU"
                )));
            }
        }
        return Ok(explicit.to_vec());
    }
    match device {
        Device::Cpu => Ok(vec![Device::Cpu; ranks]),
        #[cfg(feature = "cuda")]
        Device::Cuda(first) => {
            use candle_core::backend::BackendDevice;
            let first = first.location();
            let candle_core::DeviceLocation::Cuda { gpu_id } = first else {
                return Err(ModelError::InvalidInput(format!(
                    "{first:?} is not a CUDA device"
                )));
            };
            if ranks == 1 {
                return Ok(vec![device.clone()]);
            }
            (gpu_id..gpu_id + ranks)
                .map(|id| Device::new_cuda(id).map_err(ModelError::from))
                .collect()
        }
        other if ranks == 1 => Ok(vec![other.clone()]),
        other => Err(ModelError::Unsupported(format!(
            "tensor parallelism on {other:?} (CPU or CUDA only)"
        ))),
    }
}

/// One communicator per rank for ranks on `devices`: the in-process backend on the CPU, NCCL
/// on CUDA devices.
pub fn communicators(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>, ModelError> {
    if devices.len() <= 1 || devices.iter().all(Device::is_cpu) {
        return Ok(LocalGroup::communicators(devices.len().max(1)));
    }
    #[cfg(feature = "cuda")]
    if devices.iter().all(Device::is_cuda) {
        return Ok(dvd_nn::parallel::nccl_group(devices)?);
    }
    Err(ModelError::Unsupported(format!(
        "collectives between {devices:?}: the ranks must be all CPUs or all CUDA devices"
    )))
}
