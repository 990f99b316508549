//! Reading CPU tensors in place: the CPU kernels (the MoE steps, fused epilogues) borrow a
//! tensor's storage instead of copying it out.

use candle_core::{Result, Storage, Tensor, WithDType, bail};

/// Calls `f` with the values of the CPU tensor `t` (made contiguous first if it is not).
pub(crate) fn with_values<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!(
            "dvd-nn moe: expected a CPU tensor, found one on {:?}",
            t.device()
        );
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("dvd-nn: tensor is not contiguous after contiguous()");
    };
    f(&cpu.as_slice::<T>()?[start..end])
}
