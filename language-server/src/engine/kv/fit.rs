//! How much memory the KV pool gets on each rank: an explicit budget (`--kv-cache-mib`) wins;
//! on the CPU the default budget; on GPUs what the weights leave of the share of device memory
//! the server may use (`--gpu-memory-utilization`, vLLM's name). A model whose weights alone do
//! not fit is refused with the numbers, before any weight is read.

use candle_core::{DType, Device};

use super::pool::KvPoolConfig;
use crate::model::{KvFit, LanguageConfig, MemoryPlan, ModelError, Partition};

/// What bounds the KV pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvBudget {
    /// This many bytes on every rank.
    Bytes(usize),
    /// What is left of this fraction of each GPU's memory once the weights are loaded (the
    /// CPU default budget on the CPU).
    Utilization(f64),
}

/// A model or KV pool that does not fit its devices.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// The weights alone exceed the usable memory of a rank's device.
    #[error(
        "the model does not fit: {weights} bytes of weights per rank over {ranks} rank(s), but \
         {device} may use only {usable} of its {total} bytes (--gpu-memory-utilization \
         {utilization}); add ranks (--tensor-parallel-size) or use larger GPUs"
    )]
    Weights {
        /// Weight bytes of the most loaded rank.
        weights: u64,
        /// Ranks.
        ranks: usize,
        /// The device.
        device: String,
        /// Bytes the server may use on it.
        usable: u64,
        /// Its memory.
        total: u64,
        /// The fraction asked for.
        utilization: f64,
    },
    /// Nothing is left for the KV pool after the weights.
    #[error(
        "no room for the KV cache on {device}: {used} of its {total} bytes are in use after \
         loading, over the {usable} bytes --gpu-memory-utilization {utilization} allows"
    )]
    NoKvRoom {
        /// The device.
        device: String,
        /// Bytes in use.
        used: u64,
        /// Its memory.
        total: u64,
        /// Bytes the server may use on it.
        usable: u64,
        /// The fraction asked for.
        utilization: f64,
    },
    /// The device's memory could not be read.
    #[error("cannot read the memory of {device}: {reason}")]
    Unreadable {
        /// The device.
        device: String,
        /// Why.
        reason: String,
    },
}

impl From<FitError> for ModelError {
    fn from(e: FitError) -> Self {
        ModelError::Unsupported(e.to_string())
    }
}

/// `(free, total)` bytes of a GPU; `None` on the CPU.
fn device_memory(device: &Device) -> Result<Option<(u64, u64)>, FitError> {
    match device {
        Device::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            dvd_kernels::device_memory(device)
                .map(Some)
                .map_err(|e| FitError::Unreadable {
                    device: format!("{device:?}"),
                    reason: e.to_string(),
                })
        }
        #[allow(unreachable_patterns)]
        other => Err(FitError::Unreadable {
            device: format!("{other:?}"),
            reason: "only CPUs and CUDA GPUs are supported".into(),
        }),
    }
}

/// Refuses a model whose weights per rank (from the config, in `dtype`) exceed what `budget`
/// lets the server use of any rank's GPU. Call before loading.
pub fn check_weights_fit(
    config: &LanguageConfig,
    partition: &Partition,
    dtype: DType,
    devices: &[Device],
    budget: KvBudget,
) -> Result<(), FitError> {
    let KvBudget::Utilization(utilization) = budget else {
        return Ok(());
    };
    let weights = MemoryPlan::new(config, partition, dtype.size_in_bytes()).weight_bytes_per_rank;
    for device in devices {
        let Some((_, total)) = device_memory(device)? else {
            continue;
        };
        let fit = KvFit {
            device_bytes: total,
            utilization,
            used_bytes: weights,
        };
        if fit.kv_budget_bytes().is_none() {
            return Err(FitError::Weights {
                weights,
                ranks: partition.ranks(),
                device: format!("{device:?}"),
                usable: fit.usable_bytes(),
                total,
                utilization,
            });
        }
    }
    Ok(())
}

/// The KV bytes each rank gets under `budget` once the weights are on `devices`.
pub fn kv_bytes_per_rank(budget: KvBudget, devices: &[Device]) -> Result<usize, FitError> {
    let utilization = match budget {
        KvBudget::Bytes(bytes) => return Ok(bytes),
        KvBudget::Utilization(u) => u,
    };
    let mut smallest: Option<u64> = None;
    for device in devices {
        let Some((free, total)) = device_memory(device)? else {
            continue;
        };
        let fit = KvFit {
            device_bytes: total,
            utilization,
            used_bytes: total.saturating_sub(free),
        };
        let Some(bytes) = fit.kv_budget_bytes() else {
            return Err(FitError::NoKvRoom {
                device: format!("{device:?}"),
                used: fit.used_bytes,
                total,
                usable: fit.usable_bytes(),
                utilization,
            });
        };
        smallest = Some(smallest.map_or(bytes, |s| s.min(bytes)));
    }
    Ok(smallest.map_or(KvPoolConfig::DEFAULT_BUDGET_BYTES, |b| b as usize))
}
