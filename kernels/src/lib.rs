//! dvd's own CUDA kernels, for the places where candle's generic CUDA ops are slow for this
//! workload (docs/performance.md, "GPU"): fused flash attention over strided q/k/v (vision
//! tiles, prefill), attention of single query rows over a paged KV pool (decode), Qwen3's q/k norm +
//! RoPE + KV-cache write in one pass, fused bias and bias+GELU epilogues, and linear layers on
//! cuBLASLt with the bias, GELU or residual add in the GEMM epilogue; and the steps of a
//! mixture-of-experts block (routing, grouping by expert, permutation, a grouped expert GEMM
//! reading each expert's rows from device memory, the weighted un-permute), with no host sync.
//!
//! Built only with the `cuda` feature (nvcc compiles `src/cuda/*.cu` to PTX; the driver
//! compiles that for the GPU at first use). Every entry point but the MoE ones (bf16, f16 or
//! f32) takes bf16 tensors on a CUDA device; callers check [`fused_ok`] first and keep their
//! generic path otherwise, so the CPU build and non-bf16 runs are unchanged.
//!
//! The index tables the paged kernels follow (block tables, pool slots, positions, rows) are
//! checked on the host before upload ([`RowSlots`], [`PagedTables`]); the kernels take only
//! their checked, uploaded forms. That part is built (and tested) without `cuda` too. Unsafe
//! code is allowed only on the items and statements that need it, each with its reason.

mod tables;
pub use tables::{
    DevicePagedTables, DeviceRowSlots, IndexError, PagedBounds, PagedRow, PagedTables, RowSlot,
    RowSlotBounds, RowSlots,
};

#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
pub use launch::*;
#[cfg(feature = "cuda")]
mod lt;
#[cfg(feature = "cuda")]
pub use lt::{Epilogue, linear_epilogue};
#[cfg(feature = "cuda")]
mod memory;
#[cfg(feature = "cuda")]
pub use memory::device_memory;
#[cfg(feature = "cuda")]
mod moe;
#[cfg(feature = "cuda")]
pub use moe::{grouped_gemm, moe_combine, moe_group, moe_permute, moe_route};

use candle_core::{DType, Tensor};

/// Whether the fused kernels can take `t`: built with `cuda`, on a CUDA device, bf16.
pub fn fused_ok(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && t.dtype() == DType::BF16
}
