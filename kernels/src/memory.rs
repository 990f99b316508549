//! How much memory a GPU has, for sizing what is allocated on it.

use candle_core::cuda_backend::WrapErr;
use candle_core::{Device, Result, bail};

/// `(free, total)` bytes of `device`'s memory (`cuMemGetInfo` with the device's context bound).
pub fn device_memory(device: &Device) -> Result<(u64, u64)> {
    let Device::Cuda(dev) = device else {
        bail!("dvd-kernels: memory of {device:?}: a CUDA device is needed");
    };
    let (free, total) = dev.cuda_stream().context().mem_get_info().w()?;
    Ok((free as u64, total as u64))
}
