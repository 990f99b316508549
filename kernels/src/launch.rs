//! Launches of the kernels in `src/cuda/`: argument checks, grid shapes, output allocation.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Result, Shape, Storage, StorageRef, Tensor, bail};
use half::{bf16, f16};

use crate::tables::{DevicePagedTables, DeviceRowSlots};

const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const ELEMENTWISE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/elementwise.ptx"));
const ATTENTION_MODULE: &str = "dvd_attention";
const ELEMENTWISE_MODULE: &str = "dvd_elementwise";

/// Threads per CTA of the paged decode kernels (4 warps; the kernels assume it).
const ATTENTION_THREADS: u32 = 128;

/// Query rows per flash-attention CTA for a head width (`FLASH_ENTRY` in attention.cu); a warp
/// takes 16 rows, so the CTA has `rows * 2` threads.
fn flash_rows(head_dim: usize) -> usize {
    if head_dim == 64 { 128 } else { 64 }
}

pub(crate) fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        other => bail!("dvd-kernels: tensor on {other:?}, a CUDA device is needed"),
    }
}

pub(crate) fn check_bf16(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::BF16 {
        bail!("dvd-kernels: {what} must be bf16, got {:?}", t.dtype());
    }
    if !t.is_contiguous() {
        bail!("dvd-kernels: {what} must be contiguous");
    }
    Ok(())
}

pub(crate) fn check_u32(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::U32 || !t.is_contiguous() {
        bail!("dvd-kernels: {what} must be a contiguous u32 tensor");
    }
    Ok(())
}

/// A contiguous bf16 tensor of `shape` on a CUDA device, its contents left uninitialised.
///
/// # Safety
///
/// Every element must be written (by the kernels the tensor is handed to) before anything reads
/// it: reading an element first returns whatever the allocation held, which no host check can
/// catch.
#[allow(unsafe_code)]
pub unsafe fn uninit_bf16(device: &Device, shape: impl Into<Shape>) -> Result<Tensor> {
    let Device::Cuda(dev) = device else {
        bail!("dvd-kernels: uninit_bf16 needs a CUDA device");
    };
    // SAFETY: the caller writes every element before any read (this function's contract).
    unsafe { uninit(dev, DType::BF16, shape) }
}

/// A contiguous tensor of `dtype` (bf16, f16, f32 or u32) and `shape` on `dev`, its contents
/// left uninitialised.
///
/// # Safety
///
/// As for [`uninit_bf16`]: every element must be written before anything reads it.
#[allow(unsafe_code)]
pub(crate) unsafe fn uninit(
    dev: &CudaDevice,
    dtype: DType,
    shape: impl Into<Shape>,
) -> Result<Tensor> {
    let shape = shape.into();
    let len = shape.elem_count().max(1);
    // SAFETY: the caller writes every element before any read (this function's contract).
    let storage = unsafe {
        match dtype {
            DType::BF16 => wrap(dev.alloc::<bf16>(len)?, dev),
            DType::F16 => wrap(dev.alloc::<f16>(len)?, dev),
            DType::F32 => wrap(dev.alloc::<f32>(len)?, dev),
            DType::U32 => wrap(dev.alloc::<u32>(len)?, dev),
            other => bail!("dvd-kernels: no uninitialised buffers of {other:?}"),
        }
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        BackpropOp::none(),
        false,
    ))
}

fn wrap<T: CudaDType + DeviceRepr>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// A tensor's storage, held (read-locked) while a kernel is launched on it, and where the
/// operand starts in it.
pub(crate) struct Operand<'a> {
    storage: StorageRef<'a>,
    start: usize,
}

impl<'a> Operand<'a> {
    /// `t` from its layout's start plus `offset` elements.
    pub(crate) fn new(t: &'a Tensor, offset: usize) -> Self {
        let (storage, layout) = t.storage_and_layout();
        Self {
            start: layout.start_offset() + offset,
            storage,
        }
    }

    /// The device view a kernel argument takes.
    pub(crate) fn view<T: CudaDType>(&self) -> Result<CudaView<'_, T>> {
        let Storage::Cuda(cuda) = &*self.storage else {
            bail!("dvd-kernels: tensor is not on a CUDA device");
        };
        Ok(cuda.as_cuda_slice::<T>()?.slice(self.start..))
    }
}

/// The bf16 device views of `held`, in order.
fn bf16_views<'a>(held: &'a [Operand<'_>]) -> Result<Vec<CudaView<'a, bf16>>> {
    held.iter().map(|o| o.view::<bf16>()).collect()
}

/// One attention operand: `[batch, rows, heads, head_dim]` laid out inside a contiguous
/// tensor's storage with the given element strides; `head_dim` values of a head are adjacent.
#[derive(Debug, Clone, Copy)]
pub struct HeadView<'a> {
    /// The tensor holding the values (contiguous; bf16).
    pub tensor: &'a Tensor,
    /// Elements from the tensor's first element to `[0, 0, 0, 0]`.
    pub offset: usize,
    /// Elements between batches.
    pub batch_stride: usize,
    /// Elements between rows (tokens).
    pub row_stride: usize,
    /// Elements between heads.
    pub head_stride: usize,
}

impl<'a> HeadView<'a> {
    /// A contiguous `[batch, rows, heads, head_dim]` tensor (any shape with that many elements).
    pub fn packed(tensor: &'a Tensor, rows: usize, heads: usize, head_dim: usize) -> Self {
        Self {
            tensor,
            offset: 0,
            batch_stride: rows * heads * head_dim,
            row_stride: heads * head_dim,
            head_stride: head_dim,
        }
    }

    /// `[batch, rows, heads, head_dim]` starting `column` values into rows of width `width`
    /// (for q, k or v inside a fused qkv projection output `[batch, rows, width]`).
    pub fn columns(
        tensor: &'a Tensor,
        rows: usize,
        width: usize,
        column: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            tensor,
            offset: column,
            batch_stride: rows * width,
            row_stride: width,
            head_stride: head_dim,
        }
    }

    fn check(&self, what: &str, batch: usize, rows: usize, heads: usize, d: usize) -> Result<()> {
        check_bf16(self.tensor, what)?;
        if [
            self.offset,
            self.batch_stride,
            self.row_stride,
            self.head_stride,
        ]
        .iter()
        .any(|s| !s.is_multiple_of(8))
        {
            bail!("dvd-kernels: {what} offsets and strides must be multiples of 8 elements");
        }
        if rows == 0 || batch == 0 {
            return Ok(());
        }
        let last = self.offset
            + (batch - 1) * self.batch_stride
            + (rows - 1) * self.row_stride
            + (heads - 1) * self.head_stride
            + d;
        if last > self.tensor.elem_count() {
            bail!(
                "dvd-kernels: {what} view reaches element {last} of {}",
                self.tensor.elem_count()
            );
        }
        Ok(())
    }
}

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    /// Independent problems (tiles, or 1).
    pub batch: usize,
    /// Query rows per problem.
    pub q_len: usize,
    /// Key rows per problem.
    pub kv_len: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of a head: 64 or 128.
    pub head_dim: usize,
}

/// Softmax attention `out = softmax(q k^T * scale [+ causal mask]) v` per batch and head, with
/// grouped-query heads (query head `h` reads kv head `h / (heads / kv_heads)`). Causal: query
/// row `i` sees key rows `0..=i + kv_len - q_len` (the queries are the last `q_len` positions).
/// Writes `out` in place.
pub fn flash_attention(
    q: HeadView<'_>,
    k: HeadView<'_>,
    v: HeadView<'_>,
    out: HeadView<'_>,
    dims: AttentionDims,
    scale: f32,
    causal: bool,
) -> Result<()> {
    let d = dims.head_dim;
    if d != 64 && d != 128 {
        bail!("dvd-kernels: flash attention supports head_dim 64 and 128, not {d}");
    }
    if dims.kv_heads == 0 || !dims.heads.is_multiple_of(dims.kv_heads) {
        bail!(
            "dvd-kernels: {} heads cannot share {} kv heads",
            dims.heads,
            dims.kv_heads
        );
    }
    if causal && dims.kv_len < dims.q_len {
        bail!("dvd-kernels: causal attention needs at least as many keys as queries");
    }
    q.check("q", dims.batch, dims.q_len, dims.heads, d)?;
    k.check("k", dims.batch, dims.kv_len, dims.kv_heads, d)?;
    v.check("v", dims.batch, dims.kv_len, dims.kv_heads, d)?;
    out.check("out", dims.batch, dims.q_len, dims.heads, d)?;
    if dims.batch == 0 || dims.q_len == 0 {
        return Ok(());
    }
    let dev = cuda_device(q.tensor)?;
    let func = dev.get_or_load_custom_func(
        &format!("flash_attention_d{d}"),
        ATTENTION_MODULE,
        ATTENTION_PTX,
    )?;
    let cfg = LaunchConfig {
        grid_dim: (
            dims.q_len.div_ceil(flash_rows(d)) as u32,
            dims.heads as u32,
            dims.batch as u32,
        ),
        block_dim: (flash_rows(d) as u32 * 2, 1, 1),
        shared_mem_bytes: 0,
    };
    let ints = [
        dims.q_len as i32,
        dims.kv_len as i32,
        dims.heads as i32,
        dims.kv_heads as i32,
    ];
    let strides: Vec<i64> = [q, k, v, out]
        .iter()
        .flat_map(|x| [x.batch_stride, x.row_stride, x.head_stride])
        .map(|s| s as i64)
        .collect();
    let causal = causal as i32;
    let held = [
        Operand::new(q.tensor, q.offset),
        Operand::new(k.tensor, k.offset),
        Operand::new(v.tensor, v.offset),
        Operand::new(out.tensor, out.offset),
    ];
    let views = bf16_views(&held)?;
    let mut b = func.builder();
    for view in &views {
        b.arg(view);
    }
    for i in &ints {
        b.arg(i);
    }
    for s in &strides {
        b.arg(s);
    }
    b.arg(&scale).arg(&causal);
    // SAFETY: argument order and types match flash_attention_d{64,128}; the views were
    // bounds-checked above for every row and head the grid touches.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Attention of single query rows over a paged KV pool (decode): `q` and `out` are
/// `[tokens, heads * head_dim]`, `pool_k`/`pool_v` are `[kv_heads, slots, head_dim]`, and
/// `tables` (checked on the host against at most this many rows and slots) says which rows
/// attend over which cached positions. Long contexts of few rows are split over several CTAs
/// and merged. Writes the selected rows of `out`.
pub fn paged_attention(
    q: &Tensor,
    pool_k: &Tensor,
    pool_v: &Tensor,
    tables: &DevicePagedTables,
    out: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<()> {
    check_bf16(q, "q")?;
    check_bf16(out, "out")?;
    check_bf16(pool_k, "pool keys")?;
    check_bf16(pool_v, "pool values")?;
    for (t, what) in [
        (&tables.rows, "rows"),
        (&tables.sequences, "sequences"),
        (&tables.positions, "positions"),
        (&tables.tables, "block tables"),
    ] {
        check_u32(t, what)?;
    }
    let (kv_heads, slots, d) = pool_k.dims3()?;
    if pool_v.dims3()? != (kv_heads, slots, d) {
        bail!("dvd-kernels: key and value pools differ in shape");
    }
    if d != 64 && d != 128 {
        bail!("dvd-kernels: paged attention supports head_dim 64 and 128, not {d}");
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("dvd-kernels: {heads} heads cannot share {kv_heads} kv heads");
    }
    let group = heads / kv_heads;
    if ![1, 2, 4, 8].contains(&group) {
        bail!("dvd-kernels: paged attention supports 1, 2, 4 or 8 query heads per kv head");
    }
    let (tokens, width) = q.dims2()?;
    if width != heads * d || out.dims2()? != (tokens, width) {
        bail!("dvd-kernels: q and out must be [tokens, {}]", heads * d);
    }
    if tokens < tables.bounds.rows || slots < tables.bounds.pool_slots {
        bail!(
            "dvd-kernels: paged tables checked for {} rows and {} pool slots, given {tokens} and {slots}",
            tables.bounds.rows,
            tables.bounds.pool_slots
        );
    }
    let n = tables.len();
    if n == 0 {
        return Ok(());
    }
    let (_, max_blocks) = tables.tables.dims2()?;
    let dev = cuda_device(q)?;
    let func = dev.get_or_load_custom_func(
        &format!("paged_decode_d{d}_g{group}"),
        ATTENTION_MODULE,
        ATTENTION_PTX,
    )?;
    // Split long contexts of few rows so that ~2 CTAs per SM (of 132) run; a split keeps at
    // least 64 keys, so the merge stays cheap.
    let max_keys = max_blocks * tables.block_size;
    let ctas = n * kv_heads;
    let wanted = 264usize.div_ceil(ctas.max(1));
    let splits = wanted.min(max_keys.div_ceil(64)).max(1);
    let per_split = max_keys.div_ceil(splits).max(1);
    let heads_total = n * heads;
    // SAFETY: with several splits, paged_decode writes every value of the workspace (each CTA
    // its accumulator and max/sum for each of its heads) before paged_combine reads it; with one
    // split the workspace is never touched.
    #[allow(unsafe_code)]
    let (ws_acc, ws_ml) = unsafe {
        if splits > 1 {
            (
                uninit(&dev, DType::F32, heads_total * splits * d)?,
                uninit(&dev, DType::F32, heads_total * splits * 2)?,
            )
        } else {
            (uninit(&dev, DType::F32, 1)?, uninit(&dev, DType::F32, 1)?)
        }
    };
    let cfg = LaunchConfig {
        grid_dim: (n as u32, kv_heads as u32, splits as u32),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let row = width as i64;
    let pool_slots = slots as i64;
    let (max_blocks, block_size) = (max_blocks as i32, tables.block_size as i32);
    let (splits_i, per_split) = (splits as i32, per_split as i32);
    let bf = [q, pool_k, pool_v, out].map(|t| Operand::new(t, 0));
    let (qv, kv, vv, ov) = (
        bf[0].view::<bf16>()?,
        bf[1].view::<bf16>()?,
        bf[2].view::<bf16>()?,
        bf[3].view::<bf16>()?,
    );
    let index = [
        &tables.tables,
        &tables.rows,
        &tables.sequences,
        &tables.positions,
    ]
    .map(|t| Operand::new(t, 0));
    let (table_view, rows, seqs, pos) = (
        index[0].view::<u32>()?,
        index[1].view::<u32>()?,
        index[2].view::<u32>()?,
        index[3].view::<u32>()?,
    );
    let ws = [&ws_acc, &ws_ml].map(|t| Operand::new(t, 0));
    let (wa, wm) = (ws[0].view::<f32>()?, ws[1].view::<f32>()?);
    let mut b = func.builder();
    b.arg(&qv).arg(&row).arg(&kv).arg(&vv).arg(&pool_slots);
    b.arg(&table_view).arg(&max_blocks).arg(&block_size);
    b.arg(&rows).arg(&seqs).arg(&pos).arg(&ov).arg(&row);
    b.arg(&wa)
        .arg(&wm)
        .arg(&splits_i)
        .arg(&per_split)
        .arg(&scale);
    // SAFETY: arguments match paged_decode_d{D}_g{G}. `tables` was built by PagedTables::new,
    // which checked every row against `bounds.rows`, every sequence against the tables, every
    // position against its sequence's blocks and every block id against `bounds.pool_slots`;
    // q, out and the pools were checked above to be at least that large.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    if splits > 1 {
        let combine =
            dev.get_or_load_custom_func("paged_combine", ATTENTION_MODULE, ATTENTION_PTX)?;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, heads as u32, 1),
            block_dim: (d as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = combine.builder();
        let d = d as i32;
        b.arg(&wa).arg(&wm).arg(&rows).arg(&ov).arg(&row);
        b.arg(&d).arg(&splits_i);
        // SAFETY: matches paged_combine; the workspace was sized above and the rows checked
        // as for paged_decode.
        #[allow(unsafe_code)]
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(())
}

fn elementwise(name: &str, inputs: &[&Tensor], cols: usize) -> Result<Tensor> {
    let y = inputs[0];
    for (i, t) in inputs.iter().enumerate() {
        check_bf16(t, name)?;
        let expected = if i == 0 { y.elem_count() } else { cols };
        if t.elem_count() != expected {
            bail!(
                "dvd-kernels: {name} operand {i} has {} elements, expected {expected}",
                t.elem_count()
            );
        }
    }
    if !cols.is_multiple_of(8) || !y.elem_count().is_multiple_of(cols) {
        bail!("dvd-kernels: {name} needs a width that is a multiple of 8 and divides the input");
    }
    // SAFETY: the kernel below writes every element (one CTA per row, every column); with no
    // rows there is nothing to read.
    #[allow(unsafe_code)]
    let out = unsafe { uninit_bf16(y.device(), y.shape().clone()) }?;
    let dev = cuda_device(y)?;
    let func = dev.get_or_load_custom_func(name, ELEMENTWISE_MODULE, ELEMENTWISE_PTX)?;
    let rows = y.elem_count() / cols;
    if rows == 0 {
        return Ok(out);
    }
    let cols_i = cols as i32;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (((cols / 8).min(256)) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let out_ref: &Tensor = &out;
    let held: Vec<Operand<'_>> = inputs
        .iter()
        .copied()
        .chain(std::iter::once(out_ref))
        .map(|t| Operand::new(t, 0))
        .collect();
    let views = bf16_views(&held)?;
    let mut b = func.builder();
    for view in &views {
        b.arg(view);
    }
    b.arg(&cols_i);
    // SAFETY: the operands (inputs, then the output) and their sizes were checked against the
    // kernel's signature above.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop(views);
    drop(held);
    Ok(out)
}

/// `y + bias` over the last axis, one pass.
pub fn bias_add(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    elementwise("bias_add", &[y, bias], bias.elem_count())
}

/// `gelu_erf(y + bias)`, one pass (the sum is rounded to bf16 first, as the unfused ops do).
pub fn bias_gelu(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    elementwise("bias_gelu", &[y, bias], bias.elem_count())
}

/// Inputs of [`qk_norm_rope_cache`]: a packed batch's fused projection output and what the
/// per-head norm and rotation need.
#[derive(Debug, Clone, Copy)]
pub struct QkNormRope<'a> {
    /// `[tokens, (heads + 2 * kv_heads) * head_dim]`: q heads, k heads, v heads per row.
    pub qkv: &'a Tensor,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head (64 or 128).
    pub head_dim: usize,
    /// Query RMSNorm weight `[head_dim]`.
    pub q_weight: &'a Tensor,
    /// Key RMSNorm weight `[head_dim]`.
    pub k_weight: &'a Tensor,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE cosines per position, `[positions, head_dim / 2]`.
    pub cos: &'a Tensor,
    /// RoPE sines per position.
    pub sin: &'a Tensor,
    /// Position and pool slot of each row (checked on the host against at most this many
    /// RoPE positions and pool slots).
    pub rows: &'a DeviceRowSlots,
}

/// Qwen3's per-head q/k RMSNorm and RoPE, and the write of the keys and values into their
/// pool slots, in one kernel. Returns the rotated queries `[tokens, heads * head_dim]`.
pub fn qk_norm_rope_cache(p: QkNormRope<'_>, pool_k: &Tensor, pool_v: &Tensor) -> Result<Tensor> {
    let (h, kv, d) = (p.heads, p.kv_heads, p.head_dim);
    for (t, what) in [
        (p.qkv, "qkv"),
        (p.q_weight, "q norm weight"),
        (p.k_weight, "k norm weight"),
        (p.cos, "cos"),
        (p.sin, "sin"),
        (pool_k, "pool keys"),
        (pool_v, "pool values"),
    ] {
        check_bf16(t, what)?;
    }
    check_u32(&p.rows.positions, "positions")?;
    check_u32(&p.rows.slots, "slots")?;
    if d != 64 && d != 128 {
        bail!("dvd-kernels: qk_norm_rope_cache supports head_dim 64 and 128, not {d}");
    }
    let (tokens, width) = p.qkv.dims2()?;
    if width != (h + 2 * kv) * d {
        bail!(
            "dvd-kernels: qkv rows are {width} wide, expected {}",
            (h + 2 * kv) * d
        );
    }
    let (max_positions, half) = p.cos.dims2()?;
    if half != d / 2 || p.sin.dims2()? != (max_positions, half) {
        bail!("dvd-kernels: RoPE tables must be [positions, {}]", d / 2);
    }
    if p.q_weight.elem_count() != d || p.k_weight.elem_count() != d {
        bail!("dvd-kernels: norm weights must have {d} values");
    }
    if p.rows.len() != tokens {
        bail!("dvd-kernels: one position and one slot per row");
    }
    let (pool_heads, pool_slots, pool_d) = pool_k.dims3()?;
    if (pool_heads, pool_d) != (kv, d) || pool_v.dims3()? != (kv, pool_slots, d) {
        bail!("dvd-kernels: pools must be [{kv}, slots, {d}]");
    }
    let bounds = p.rows.bounds;
    if max_positions < bounds.rope_positions || pool_slots < bounds.pool_slots {
        bail!(
            "dvd-kernels: row slots checked for {} RoPE positions and {} pool slots, given {max_positions} and {pool_slots}",
            bounds.rope_positions,
            bounds.pool_slots
        );
    }
    // SAFETY: the kernel below writes both halves of every query head of every row; with no
    // rows there is nothing to read.
    #[allow(unsafe_code)]
    let q = unsafe { uninit_bf16(p.qkv.device(), (tokens, h * d)) }?;
    if tokens == 0 {
        return Ok(q);
    }
    let dev = cuda_device(p.qkv)?;
    let func =
        dev.get_or_load_custom_func("qk_norm_rope_cache", ELEMENTWISE_MODULE, ELEMENTWISE_PTX)?;
    let cfg = LaunchConfig {
        grid_dim: (tokens as u32, (h + kv) as u32, 1),
        block_dim: ((d / 2) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (row, pool_slots) = (width as i64, pool_slots as i64);
    let (hi, kvi, di) = (h as i32, kv as i32, d as i32);
    let bf = [
        p.qkv, p.q_weight, p.k_weight, p.cos, p.sin, &q, pool_k, pool_v,
    ]
    .map(|t| Operand::new(t, 0));
    let v = bf16_views(&bf)?;
    let index = [&p.rows.positions, &p.rows.slots].map(|t| Operand::new(t, 0));
    let (pos, slots) = (index[0].view::<u32>()?, index[1].view::<u32>()?);
    let mut b = func.builder();
    b.arg(&v[0]).arg(&row).arg(&hi).arg(&kvi).arg(&di);
    b.arg(&v[1]).arg(&v[2]).arg(&p.eps).arg(&v[3]).arg(&v[4]);
    b.arg(&pos)
        .arg(&slots)
        .arg(&v[5])
        .arg(&v[6])
        .arg(&v[7])
        .arg(&pool_slots);
    // SAFETY: matches qk_norm_rope_cache. `p.rows` was built by RowSlots::new, which checked
    // every position against `bounds.rope_positions` and every slot against
    // `bounds.pool_slots`; the RoPE tables and pools were checked above to be at least that
    // large, and there is one position and slot per qkv row.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop((v, pos, slots));
    drop((bf, index));
    Ok(q)
}

/// SwiGLU's gate on a fused `[rows, 2 * width]` gate|up projection: `silu(gate) * up`,
/// `[rows, width]`, one pass.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    check_bf16(gate_up, "gate_up")?;
    let (rows, double) = gate_up.dims2()?;
    let width = double / 2;
    if !double.is_multiple_of(4) {
        bail!("dvd-kernels: silu_mul needs an even width, got {double} / 2");
    }
    // SAFETY: the kernel below writes every element; with no rows there is nothing to read.
    #[allow(unsafe_code)]
    let out = unsafe { uninit_bf16(gate_up.device(), (rows, width)) }?;
    if rows == 0 {
        return Ok(out);
    }
    let dev = cuda_device(gate_up)?;
    let func = dev.get_or_load_custom_func("silu_mul", ELEMENTWISE_MODULE, ELEMENTWISE_PTX)?;
    let cfg = LaunchConfig::for_num_elems(((rows * width / 2) as u32).min(1 << 30));
    let (rows_i, width_i) = (rows as i64, width as i32);
    let held = [gate_up, &out].map(|t| Operand::new(t, 0));
    let (g, o) = (held[0].view::<bf16>()?, held[1].view::<bf16>()?);
    let mut b = func.builder();
    b.arg(&g).arg(&o).arg(&rows_i).arg(&width_i);
    // SAFETY: matches silu_mul; both tensors were sized above.
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop(held);
    Ok(out)
}

/// `sum = x + y` and `rms_norm(sum) * weight` over rows of `[rows, cols]`, one pass; returns
/// `(sum, normed)`.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    check_bf16(x, "x")?;
    check_bf16(y, "y")?;
    check_bf16(weight, "weight")?;
    let (rows, cols) = x.dims2()?;
    if y.dims2()? != (rows, cols) || weight.elem_count() != cols || !cols.is_multiple_of(2) {
        bail!("dvd-kernels: add_rms_norm needs x and y [rows, cols] (cols even) and weight [cols]");
    }
    // SAFETY: the kernel below writes every element of both (one CTA per row, every column);
    // with no rows there is nothing to read.
    #[allow(unsafe_code)]
    let (sum, normed) = unsafe {
        (
            uninit_bf16(x.device(), (rows, cols))?,
            uninit_bf16(x.device(), (rows, cols))?,
        )
    };
    if rows == 0 {
        return Ok((sum, normed));
    }
    let dev = cuda_device(x)?;
    let func = dev.get_or_load_custom_func("add_rms_norm", ELEMENTWISE_MODULE, ELEMENTWISE_PTX)?;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let cols_i = cols as i32;
    let held = [x, y, weight, &sum, &normed].map(|t| Operand::new(t, 0));
    let v = bf16_views(&held)?;
    let mut b = func.builder();
    b.arg(&v[0]).arg(&v[1]).arg(&v[2]).arg(&v[3]).arg(&v[4]);
    b.arg(&cols_i).arg(&eps);
    // SAFETY: matches add_rms_norm; every operand was checked against [rows, cols].
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.w()?;
    drop(b);
    drop(v);
    drop(held);
    Ok((sum, normed))
}

/// Device-to-device copy bandwidth of `device` (`cuMemcpyDtoDAsync`, as `cudaMemcpy` does):
/// GB/s counting bytes read and written, median of `reps` copies of `bytes` after warm-ups.
pub fn copy_bandwidth_gbps(device: &Device, bytes: usize, reps: usize) -> Result<f64> {
    let Device::Cuda(dev) = device else {
        bail!("dvd-kernels: copy bandwidth needs a CUDA device");
    };
    let src = dev.alloc_zeros::<u8>(bytes.max(1))?;
    let mut dst = dev.alloc_zeros::<u8>(bytes.max(1))?;
    let mut samples = Vec::with_capacity(reps);
    for i in 0..reps.max(1) + 3 {
        device.synchronize()?;
        let started = std::time::Instant::now();
        dev.memcpy_dtod(&src, &mut dst)?;
        device.synchronize()?;
        if i >= 3 {
            samples.push(2.0 * bytes as f64 / started.elapsed().as_secs_f64() / 1e9);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}
