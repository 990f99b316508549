//! Launches of the mixture-of-experts kernels in `src/cuda/moe.cu`: routing, grouping of the
//! (token, expert) pairs by expert, the row permutation, the grouped expert GEMM and the
//! weighted un-permute, for bf16, f16 and f32. Nothing here reads device memory on the host:
//! every data-dependent size (each expert's rows) stays on the device, and grids are sized from
//! upper bounds known on the host, so a whole MoE block is enqueued without a sync.

use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::{DType, Result, Tensor, bail};
use half::{bf16, f16};

use crate::launch::{Operand, check_u32, cuda_device, uninit};

const MOE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/moe.ptx"));
const MOE_MODULE: &str = "dvd_moe";

// Mirrors of moe.cu's launch shapes (its "Entry points" comment).
const GROUP_THREADS: u32 = 1024; // GROUP_THREADS: the one moe_group CTA
const GEMV_ROWS: usize = 8; // GEMV_ROWS: rows of one expert per grouped_gemv CTA
const GEMV_COLS: usize = 16; // GEMV_WARPS * GEMV_NR: weight rows per grouped_gemv CTA
const GEMV_THREADS: u32 = 128; // GEMV_WARPS * 32
const TILE: usize = 64; // TC_BM = TC_BN = SIMT_BM = SIMT_BN
const TC_THREADS: u32 = 128; // TC_THREADS
const SIMT_THREADS: u32 = 256; // SIMT_THREADS
const COMBINE_MAX_K: usize = 64; // COMBINE_MAX_K
/// Dynamic shared memory a launch may use without opting in.
const SHARED_BYTES: usize = 48 * 1024;

/// The grouped GEMM streams weights through the decode kernel while the rows average at most
/// this many per expert, or number at most [`GEMV_MAX_ROWS`]: it reads an expert's weights once
/// per [`GEMV_ROWS`] of its rows, bandwidth-bound; beyond, the tiled kernels' 64-row tiles reuse
/// each weight load more.
const GEMV_ROWS_PER_EXPERT: usize = 4;
const GEMV_MAX_ROWS: usize = 64;

/// Routes each token to `top_k` experts: softmax in f32 over `logits [tokens, experts]`
/// (bf16, f16 or f32, contiguous), the `top_k` most probable experts in transformers' order
/// (higher probability first, lower expert index first on ties), their probabilities divided
/// by their f32 sum when `renormalise`. Returns `(weights [tokens, top_k] f32, experts
/// [tokens, top_k] u32)`.
pub fn moe_route(logits: &Tensor, top_k: usize, renormalise: bool) -> Result<(Tensor, Tensor)> {
    let dtype = check_float(logits, "router logits")?;
    let (tokens, experts) = logits.dims2()?;
    if top_k == 0 || top_k > experts {
        bail!("dvd-kernels: moe_route of top-{top_k} among {experts} experts");
    }
    if experts * 4 > SHARED_BYTES {
        bail!(
            "dvd-kernels: moe_route takes at most {} experts, got {experts}",
            SHARED_BYTES / 4
        );
    }
    int(tokens * top_k, "routed pairs")?;
    let dev = cuda_device(logits)?;
    // SAFETY: moe_route writes all top_k weights and experts of every token (one CTA per
    // token); with no tokens there is nothing to read.
    #[allow(unsafe_code)]
    let (weights, chosen) = unsafe {
        (
            uninit(&dev, DType::F32, (tokens, top_k))?,
            uninit(&dev, DType::U32, (tokens, top_k))?,
        )
    };
    if tokens == 0 {
        return Ok((weights, chosen));
    }
    let func =
        dev.get_or_load_custom_func(&format!("moe_route_{}", suffix(dtype)), MOE_MODULE, MOE_PTX)?;
    let cfg = LaunchConfig {
        grid_dim: (tokens as u32, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: (experts * 4) as u32,
    };
    let (e, k, renormalise) = (experts as i32, top_k as i32, renormalise as i32);
    let held = [logits, &weights, &chosen].map(|t| Operand::new(t, 0));
    let input = FloatView::of(&held[0], dtype)?;
    let (w, c) = (held[1].view::<f32>()?, held[2].view::<u32>()?);
    let mut b = func.builder();
    input.push(&mut b);
    b.arg(&w).arg(&c).arg(&e).arg(&k).arg(&renormalise);
    // SAFETY: arguments match moe_route_{dtype}(logits, weights, experts, E, K, renormalise);
    // logits hold tokens x experts values and both outputs tokens x top_k; the kernel reads E
    // values of shared memory, which the launch provides.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop(held);
    Ok((weights, chosen))
}

/// Sorts the pairs `p = token * top_k + k` of `experts [tokens, top_k]` (u32, each below
/// `num_experts`) by expert, stably (within an expert, increasing `p`), deterministically.
/// Returns `(offsets [num_experts + 1], sources [tokens * top_k], slots [tokens * top_k])`, all
/// u32: expert `e`'s rows are `offsets[e]..offsets[e + 1]`, `sources[r]` is the token of sorted
/// row `r`, `slots[p]` the sorted row of pair `p`. An id at or above `num_experts` counts as
/// the last expert (so nothing is written out of bounds).
pub fn moe_group(experts: &Tensor, num_experts: usize) -> Result<(Tensor, Tensor, Tensor)> {
    check_u32(experts, "routed experts")?;
    let (tokens, top_k) = experts.dims2()?;
    let pairs = tokens * top_k;
    if num_experts == 0 {
        bail!("dvd-kernels: moe_group needs at least one expert");
    }
    // Shared memory: a counter per expert beside the kernel's GROUP_THREADS staged ids.
    let most = (SHARED_BYTES - GROUP_THREADS as usize * 4) / 4;
    if num_experts > most {
        bail!("dvd-kernels: moe_group takes at most {most} experts, got {num_experts}");
    }
    int(pairs, "routed pairs")?;
    let dev = cuda_device(experts)?;
    if pairs == 0 {
        let offsets = Tensor::zeros(num_experts + 1, DType::U32, experts.device())?;
        // SAFETY: both are empty.
        #[allow(unsafe_code)]
        let (sources, slots) =
            unsafe { (uninit(&dev, DType::U32, 0)?, uninit(&dev, DType::U32, 0)?) };
        return Ok((offsets, sources, slots));
    }
    // SAFETY: moe_group writes offsets[0..=E] (warp 0's scan and offsets[E]) and, for every
    // pair, one slot and the source of its row; the pairs' rows are a permutation of 0..pairs
    // (each expert's running start begins at its offset and advances once per pair).
    #[allow(unsafe_code)]
    let (offsets, sources, slots) = unsafe {
        (
            uninit(&dev, DType::U32, num_experts + 1)?,
            uninit(&dev, DType::U32, pairs)?,
            uninit(&dev, DType::U32, pairs)?,
        )
    };
    let func = dev.get_or_load_custom_func("moe_group", MOE_MODULE, MOE_PTX)?;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (GROUP_THREADS, 1, 1),
        shared_mem_bytes: (num_experts * 4) as u32,
    };
    let (n, k, e) = (pairs as i32, top_k as i32, num_experts as i32);
    let held = [experts, &offsets, &sources, &slots].map(|t| Operand::new(t, 0));
    let v = held
        .iter()
        .map(|o| o.view::<u32>())
        .collect::<Result<Vec<_>>>()?;
    let mut b = func.builder();
    b.arg(&v[0]).arg(&n).arg(&k).arg(&e);
    b.arg(&v[1]).arg(&v[2]).arg(&v[3]);
    // SAFETY: arguments match moe_group(experts, n, K, E, offsets, sources, slots); experts
    // and both pair outputs hold n values, offsets E + 1; ids are clamped below E in the
    // kernel, which uses E values of the shared memory the launch provides.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop(v);
    drop(held);
    Ok((offsets, sources, slots))
}

/// The rows of `x [tokens, hidden]` in sorted order: `out[r] = x[sources[r]]` for `sources
/// [rows]` u32; `[rows, hidden]` in the dtype of `x` (bf16, f16 or f32, contiguous). A source
/// at or above `tokens` reads the last token.
pub fn moe_permute(x: &Tensor, sources: &Tensor) -> Result<Tensor> {
    let dtype = check_float(x, "x")?;
    check_u32(sources, "sources")?;
    let (tokens, hidden) = x.dims2()?;
    let rows = sources.dims1()?;
    int(rows, "permuted rows")?;
    int(tokens * hidden, "x values")?;
    let dev = cuda_device(x)?;
    if rows > 0 && tokens == 0 {
        bail!("dvd-kernels: moe_permute of {rows} rows from no tokens");
    }
    // SAFETY: moe_permute writes every value of every row (one CTA per row); with no rows or
    // no columns there is nothing to read.
    #[allow(unsafe_code)]
    let out = unsafe { uninit(&dev, dtype, (rows, hidden)) }?;
    if rows == 0 || hidden == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(
        &format!("moe_permute_{}", suffix(dtype)),
        MOE_MODULE,
        MOE_PTX,
    )?;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let (t, h) = (tokens as i32, hidden as i32);
    let floats = [x, &out].map(|t| Operand::new(t, 0));
    let index = Operand::new(sources, 0);
    let (xv, ov) = (
        FloatView::of(&floats[0], dtype)?,
        FloatView::of(&floats[1], dtype)?,
    );
    let sv = index.view::<u32>()?;
    let mut b = func.builder();
    xv.push(&mut b);
    b.arg(&sv);
    ov.push(&mut b);
    b.arg(&t).arg(&h);
    // SAFETY: arguments match moe_permute_{dtype}(x, sources, out, T, H); x holds T x H
    // values, out rows x H, sources rows; sources are clamped below T in the kernel.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop((floats, index));
    Ok(out)
}

/// The experts' GEMMs over their rows: `out[r, n] = sum_k x[r, k] * weights[e, n, k]` for
/// `x [rows, k]`, `weights [experts, n, k]` (same dtype: bf16, f16 or f32; contiguous) and
/// `offsets [experts + 1]` u32 on the device, expert `e` taking rows `offsets[e]..offsets[e +
/// 1]`; `[rows, n]` in the dtype of `x`, accumulated in f32. The offsets must partition
/// `0..rows` in order (as [`moe_group`]'s do): rows outside every expert's range are left
/// unwritten. Experts without rows are not read.
///
/// Which kernel runs: with `k` and `n` multiples of 8 and both operands starting on a 16-byte
/// boundary, the weight-streaming decode kernel while `rows <= max(64, 4 * experts)`, else 64 x
/// 64 tiles on tensor cores (bf16, f16) or f32 FMAs (f32); other shapes take the FMA tiles.
pub fn grouped_gemm(x: &Tensor, weights: &Tensor, offsets: &Tensor) -> Result<Tensor> {
    let dtype = check_float(x, "x")?;
    if check_float(weights, "expert weights")? != dtype {
        bail!(
            "dvd-kernels: grouped_gemm of {dtype:?} rows with {:?} weights",
            weights.dtype()
        );
    }
    check_u32(offsets, "expert offsets")?;
    let (rows, inner) = x.dims2()?;
    let (experts, n, w_inner) = weights.dims3()?;
    if w_inner != inner {
        bail!(
            "dvd-kernels: grouped_gemm of [{rows}, {inner}] rows with [{experts}, {n}, {w_inner}] weights"
        );
    }
    if offsets.dims1()? != experts + 1 {
        bail!(
            "dvd-kernels: grouped_gemm needs {} offsets for {experts} experts, got {}",
            experts + 1,
            offsets.elem_count()
        );
    }
    for (v, what) in [
        (rows * inner, "x values"),
        (rows * n, "output values"),
        (experts * n * inner, "expert weight values"),
    ] {
        int(v, what)?;
    }
    let dev = cuda_device(x)?;
    if rows == 0 || n == 0 {
        // SAFETY: empty.
        #[allow(unsafe_code)]
        return unsafe { uninit(&dev, dtype, (rows, n)) };
    }
    if experts == 0 {
        bail!("dvd-kernels: grouped_gemm of {rows} rows with no experts");
    }
    if inner == 0 {
        return Tensor::zeros((rows, n), dtype, x.device());
    }
    let aligned = inner.is_multiple_of(8)
        && n.is_multiple_of(8)
        && x.layout().start_offset().is_multiple_of(8)
        && weights.layout().start_offset().is_multiple_of(8);
    let (name, unit_rows, cols, threads) =
        if aligned && rows <= GEMV_MAX_ROWS.max(GEMV_ROWS_PER_EXPERT * experts) {
            ("grouped_gemv", GEMV_ROWS, GEMV_COLS, GEMV_THREADS)
        } else if aligned && dtype != DType::F32 {
            ("grouped_gemm_tc", TILE, TILE, TC_THREADS)
        } else {
            ("grouped_gemm_simt", TILE, TILE, SIMT_THREADS)
        };
    // Units of `unit_rows` rows of one expert: at most ceil(rows / unit_rows) + the experts
    // that have rows (moe.cu, "Work split").
    let units = rows.div_ceil(unit_rows) + experts.min(rows);
    let slices = n.div_ceil(cols);
    int(units, "grouped GEMM units")?;
    if slices > 65535 {
        bail!("dvd-kernels: grouped_gemm output width {n} is too wide for one launch");
    }
    // SAFETY: the kernel writes every column of every row in an expert's range, which with
    // offsets partitioning 0..rows (this function's documented contract) is every row; the
    // grid covers every unit of those rows (bounded above) and every column slice.
    #[allow(unsafe_code)]
    let out = unsafe { uninit(&dev, dtype, (rows, n)) }?;
    let func =
        dev.get_or_load_custom_func(&format!("{name}_{}", suffix(dtype)), MOE_MODULE, MOE_PTX)?;
    let cfg = LaunchConfig {
        grid_dim: (units as u32, slices as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let ints = [rows, n, inner, experts].map(|v| v as i32);
    let floats = [x, weights, &out].map(|t| Operand::new(t, 0));
    let index = Operand::new(offsets, 0);
    let (xv, wv, ov) = (
        FloatView::of(&floats[0], dtype)?,
        FloatView::of(&floats[1], dtype)?,
        FloatView::of(&floats[2], dtype)?,
    );
    let offv = index.view::<u32>()?;
    let mut b = func.builder();
    xv.push(&mut b);
    wv.push(&mut b);
    b.arg(&offv);
    ov.push(&mut b);
    for i in &ints {
        b.arg(i);
    }
    // SAFETY: arguments match {name}_{dtype}(x, w, offsets, out, R, N, Kd, E); x holds R x Kd
    // values, w E x N x Kd, out R x N, offsets E + 1. The kernels clamp every offset to 0..=R
    // and read only rows, weight rows and k below those bounds; the vectorised kernels were
    // chosen only with Kd and N multiples of 8 and 16-byte aligned operand starts.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop((floats, index));
    Ok(out)
}

/// The weighted un-permute: `out[t] = sum_k weights[t, k] * y[slots[t * top_k + k]]` for `y
/// [rows, hidden]` (bf16, f16 or f32, contiguous), `slots [tokens * top_k]` u32 and `weights
/// [tokens, top_k]` f32; as transformers' default (grouped_mm) experts do it: each weight and
/// each product rounded to the dtype of `y`, summed in choice order in f32 and rounded once.
/// `[tokens, hidden]`; one token's output depends on no other token. A slot at or above `rows`
/// reads the last row.
pub fn moe_combine(y: &Tensor, slots: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let dtype = check_float(y, "expert outputs")?;
    check_u32(slots, "slots")?;
    if weights.dtype() != DType::F32 || !weights.is_contiguous() {
        bail!("dvd-kernels: routing weights must be a contiguous f32 tensor");
    }
    let (rows, hidden) = y.dims2()?;
    let (tokens, top_k) = weights.dims2()?;
    if slots.dims1()? != tokens * top_k {
        bail!(
            "dvd-kernels: moe_combine needs slots [{}] for weights [{tokens}, {top_k}]",
            tokens * top_k
        );
    }
    if top_k > COMBINE_MAX_K {
        bail!(
            "dvd-kernels: moe_combine takes at most {COMBINE_MAX_K} experts per token, got {top_k}"
        );
    }
    for (v, what) in [
        (rows * hidden, "expert output values"),
        (tokens * hidden, "output values"),
    ] {
        int(v, what)?;
    }
    int(tokens * top_k, "routed pairs")?;
    let dev = cuda_device(y)?;
    if tokens > 0 && top_k > 0 && rows == 0 {
        bail!("dvd-kernels: moe_combine of {tokens} tokens from no expert rows");
    }
    // SAFETY: moe_combine writes every value of every token (one CTA per token); with no
    // tokens or no columns there is nothing to read.
    #[allow(unsafe_code)]
    let out = unsafe { uninit(&dev, dtype, (tokens, hidden)) }?;
    if tokens == 0 || hidden == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(
        &format!("moe_combine_{}", suffix(dtype)),
        MOE_MODULE,
        MOE_PTX,
    )?;
    let cfg = LaunchConfig {
        grid_dim: (tokens as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let ints = [rows, top_k, hidden].map(|v| v as i32);
    let floats = [y, &out].map(|t| Operand::new(t, 0));
    let index = Operand::new(slots, 0);
    let routing = Operand::new(weights, 0);
    let (yv, ov) = (
        FloatView::of(&floats[0], dtype)?,
        FloatView::of(&floats[1], dtype)?,
    );
    let sv = index.view::<u32>()?;
    let wv = routing.view::<f32>()?;
    let mut b = func.builder();
    yv.push(&mut b);
    b.arg(&sv).arg(&wv);
    ov.push(&mut b);
    for i in &ints {
        b.arg(i);
    }
    // SAFETY: arguments match moe_combine_{dtype}(y, slots, weights, out, R, K, H); y holds
    // R x H values, out tokens x H, slots and weights tokens x K; the 256
    // threads cover K <= 64 choices; slots are clamped below R in the kernel.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop((floats, index, routing));
    Ok(out)
}

/// A bf16, f16 or f32 operand's device view, pushed as the kernel's `T*`.
enum FloatView<'a> {
    Bf16(CudaView<'a, bf16>),
    F16(CudaView<'a, f16>),
    F32(CudaView<'a, f32>),
}

impl<'a> FloatView<'a> {
    fn of(operand: &'a Operand<'_>, dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::BF16 => Self::Bf16(operand.view()?),
            DType::F16 => Self::F16(operand.view()?),
            DType::F32 => Self::F32(operand.view()?),
            other => bail!("dvd-kernels: MoE kernels take bf16, f16 or f32, not {other:?}"),
        })
    }

    fn push<'l, 's: 'l>(&'s self, b: &mut LaunchArgs<'l>) {
        match self {
            Self::Bf16(v) => b.arg(v),
            Self::F16(v) => b.arg(v),
            Self::F32(v) => b.arg(v),
        };
    }
}

/// `t`'s dtype when it is bf16, f16 or f32 and `t` is contiguous.
fn check_float(t: &Tensor, what: &str) -> Result<DType> {
    let dtype = t.dtype();
    if !matches!(dtype, DType::BF16 | DType::F16 | DType::F32) {
        bail!("dvd-kernels: {what} must be bf16, f16 or f32, got {dtype:?}");
    }
    if !t.is_contiguous() {
        bail!("dvd-kernels: {what} must be contiguous");
    }
    Ok(dtype)
}

/// The kernel-name suffix of a dtype [`check_float`] accepted.
fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// `v` when the kernels' 32-bit indices can hold it.
fn int(v: usize, what: &str) -> Result<i32> {
    match i32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("dvd-kernels: {v} {what} do not fit the MoE kernels' 32-bit indices"),
    }
}
