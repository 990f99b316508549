//! Linear layers on cuBLASLt with fused epilogues: `x W^T + bias`, optionally followed by GELU
//! or added to a residual, written in the GEMM's epilogue instead of a second pass over the
//! output (the vision encoder's bias, GELU and residual passes were a quarter of its time on
//! an H100; docs/performance.md, "GPU").

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::cublaslt::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{Result, Tensor, bail};
use half::bf16;

use crate::launch::{Operand, check_bf16, cuda_device, uninit_bf16};

/// What the GEMM's epilogue does after adding the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// `x W^T + bias`.
    Bias,
    /// `gelu(x W^T + bias)`, cuBLASLt's GELU (the tanh form; within bf16 rounding of the erf
    /// form for the activations a ViT sees).
    BiasGelu,
}

/// Bytes of cuBLASLt workspace (NVIDIA's recommendation for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// A GEMM's shape and epilogue: what the algorithm choice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    rows: usize,
    out: usize,
    inner: usize,
    epilogue: Epilogue,
    residual: bool,
    /// Largest power of two (up to 256) dividing every operand's address.
    align: u32,
}

/// One device's cuBLASLt handle, workspace and the algorithms chosen so far.
struct LtContext {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    algos: Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: a cuBLASLt handle may be used from any thread; every GEMM on it is enqueued on the
// device's one stream, which also orders the uses of the shared workspace.
#[allow(unsafe_code)]
unsafe impl Send for LtContext {}
// SAFETY: as above; the algorithm map is behind a mutex.
#[allow(unsafe_code)]
unsafe impl Sync for LtContext {}

impl Drop for LtContext {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed once.
        #[allow(unsafe_code)]
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// The context of `dev`, created on first use.
fn context(dev: &CudaDevice) -> Result<Arc<LtContext>> {
    static CONTEXTS: Mutex<Vec<(DeviceId, Arc<LtContext>)>> = Mutex::new(Vec::new());
    let mut contexts = CONTEXTS
        .lock()
        .map_err(|_| candle_core::Error::Msg("dvd-kernels: cuBLASLt context lock".into()))?;
    if let Some((_, ctx)) = contexts.iter().find(|(id, _)| *id == dev.id()) {
        return Ok(ctx.clone());
    }
    let handle = result::create_handle().map_err(lt_error)?;
    // SAFETY: cuBLASLt writes the workspace before reading it.
    #[allow(unsafe_code)]
    let workspace = unsafe { dev.alloc::<u8>(WORKSPACE_BYTES) }?;
    let ctx = Arc::new(LtContext {
        handle,
        workspace,
        algos: Mutex::new(HashMap::new()),
    });
    contexts.push((dev.id(), ctx.clone()));
    Ok(ctx)
}

fn lt_error(e: result::CublasError) -> candle_core::Error {
    candle_core::Error::Msg(format!("dvd-kernels: cuBLASLt: {e:?}"))
}

/// Descriptors destroyed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);
struct Desc(sys::cublasLtMatmulDesc_t);
struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once.
        #[allow(unsafe_code)]
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once.
        #[allow(unsafe_code)]
        let _ = unsafe { result::destroy_matmul_desc(self.0) };
    }
}
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        #[allow(unsafe_code)]
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}

/// A column-major bf16 matrix layout.
fn layout(rows: usize, cols: usize, ld: usize) -> Result<Layout> {
    result::create_matrix_layout(
        sys::cudaDataType_t::CUDA_R_16BF,
        rows as u64,
        cols as u64,
        ld as i64,
    )
    .map(Layout)
    .map_err(lt_error)
}

/// Sets one attribute of a matmul descriptor from a plain value.
fn set_desc<T>(desc: &Desc, attr: sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
    // SAFETY: `value` is a live `T` and cuBLASLt copies `size_of::<T>()` bytes from it.
    #[allow(unsafe_code)]
    let set = unsafe {
        result::set_matmul_desc_attribute(
            desc.0,
            attr,
            (value as *const T).cast::<c_void>(),
            size_of::<T>(),
        )
    };
    set.map_err(lt_error)
}

/// `x W^T + bias` with `epilogue`, plus `residual` when given (the sum is rounded to bf16
/// once). `x` is `[.., in]`, `weight` `[out, in]`, `bias` `[out]`, `residual` the output's shape;
/// all bf16, contiguous, on one CUDA device. GELU with a residual is not an epilogue cuBLASLt
/// has (it would apply GELU to the sum), so that pairing is refused.
pub fn linear_epilogue(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    epilogue: Epilogue,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    check_bf16(x, "x")?;
    check_bf16(weight, "weight")?;
    check_bf16(bias, "bias")?;
    let (out, inner) = weight.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&inner) || bias.elem_count() != out {
        bail!(
            "dvd-kernels: linear of x {:?} with weight [{out}, {inner}] and bias {:?}",
            dims,
            bias.dims()
        );
    }
    let rows = x.elem_count() / inner.max(1);
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = out;
    }
    if let Some(r) = residual {
        check_bf16(r, "residual")?;
        if r.dims() != shape.as_slice() {
            bail!("dvd-kernels: residual {:?} for output {shape:?}", r.dims());
        }
        if epilogue == Epilogue::BiasGelu {
            bail!("dvd-kernels: GELU and a residual cannot share one epilogue");
        }
    }
    // SAFETY: the GEMM below writes every element of `y` (`rows x out`); when either is zero
    // there are no elements.
    #[allow(unsafe_code)]
    let y = unsafe { uninit_bf16(x.device(), shape) }?;
    if rows > 0 && out > 0 {
        let gemm = Gemm {
            rows,
            out,
            inner,
            epilogue,
        };
        enqueue(gemm, x, weight, bias, residual, &y)?;
    }
    Ok(y)
}

/// A GEMM's sizes and epilogue.
#[derive(Debug, Clone, Copy)]
struct Gemm {
    rows: usize,
    out: usize,
    inner: usize,
    epilogue: Epilogue,
}

/// Enqueues `y = x W^T + bias (+ residual)` on the device's stream (operands checked by the
/// caller).
fn enqueue(
    gemm: Gemm,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    let Gemm {
        rows,
        out,
        inner,
        epilogue,
    } = gemm;
    let dev = cuda_device(x)?;
    let ctx = context(&dev)?;
    // Column-major view: D [out, rows] = W [in, out]^T · X [in, rows] (+ C [out, rows]).
    let a = layout(inner, out, inner)?;
    let b = layout(inner, rows, inner)?;
    let d = layout(out, rows, out)?;
    let desc = result::create_matmul_desc(
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cudaDataType_t::CUDA_R_32F,
    )
    .map(Desc)
    .map_err(lt_error)?;
    // cublasOperation_t values: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
    let (transpose, keep) = (1i32, 0i32);
    set_desc(
        &desc,
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
        &transpose,
    )?;
    set_desc(
        &desc,
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
        &keep,
    )?;
    let lt_epilogue = match epilogue {
        Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
        Epilogue::BiasGelu => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
    };
    set_desc(
        &desc,
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
        &lt_epilogue,
    )?;

    let stream = dev.cuda_stream();
    let held_x = Operand::new(x, 0);
    let held_w = Operand::new(weight, 0);
    let held_b = Operand::new(bias, 0);
    let held_y = Operand::new(y, 0);
    let held_r = residual.map(|r| Operand::new(r, 0));
    let (xv, wv, bv, yv) = (
        held_x.view::<bf16>()?,
        held_w.view::<bf16>()?,
        held_b.view::<bf16>()?,
        held_y.view::<bf16>()?,
    );
    let rv = held_r.as_ref().map(|r| r.view::<bf16>()).transpose()?;
    let (x_ptr, _x_sync) = xv.device_ptr(&stream);
    let (w_ptr, _w_sync) = wv.device_ptr(&stream);
    let (b_ptr, _b_sync) = bv.device_ptr(&stream);
    // The kernel writes `y` through this pointer; `y` is fresh and held by nobody else.
    let (y_ptr, _y_sync) = yv.device_ptr(&stream);
    let r_ptr = rv.as_ref().map(|r| r.device_ptr(&stream));
    let (ws_ptr, _ws_sync) = ctx.workspace.device_ptr(&stream);
    set_desc(
        &desc,
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
        &b_ptr,
    )?;

    let align = [
        x_ptr,
        w_ptr,
        y_ptr,
        r_ptr.as_ref().map_or(y_ptr, |(p, _)| *p),
    ]
    .into_iter()
    .map(|p| 1u32 << p.trailing_zeros().min(8))
    .min()
    .unwrap_or(256);
    if b_ptr % 16 != 0 || align < 16 {
        bail!("dvd-kernels: cuBLASLt operands must be 16-byte aligned");
    }
    let key = Key {
        rows,
        out,
        inner,
        epilogue,
        residual: residual.is_some(),
        align,
    };
    let cached = ctx
        .algos
        .lock()
        .map_err(|_| candle_core::Error::Msg("dvd-kernels: cuBLASLt algorithm lock".into()))?
        .get(&key)
        .copied();
    let algo = match cached {
        Some(algo) => algo,
        None => {
            let pref = result::create_matmul_pref().map(Pref).map_err(lt_error)?;
            let bytes = WORKSPACE_BYTES;
            // SAFETY: `bytes` is a live usize; cuBLASLt copies it.
            #[allow(unsafe_code)]
            unsafe {
                result::set_matmul_pref_attribute(
                    pref.0,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&bytes as *const usize).cast::<c_void>(),
                    size_of::<usize>(),
                )
            }
            .map_err(lt_error)?;
            for attr in [
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                // SAFETY: `align` is a live u32; cuBLASLt copies it.
                #[allow(unsafe_code)]
                unsafe {
                    result::set_matmul_pref_attribute(
                        pref.0,
                        attr,
                        (&align as *const u32).cast::<c_void>(),
                        size_of::<u32>(),
                    )
                }
                .map_err(lt_error)?;
            }
            // SAFETY: every descriptor is live and describes the operands above.
            #[allow(unsafe_code)]
            let found = unsafe {
                result::get_matmul_algo_heuristic(ctx.handle, desc.0, a.0, b.0, d.0, d.0, pref.0)
            }
            .map_err(lt_error)?;
            if let Ok(mut algos) = ctx.algos.lock() {
                algos.insert(key, found.algo);
            }
            found.algo
        }
    };
    let (alpha, beta) = (1.0f32, if residual.is_some() { 1.0f32 } else { 0.0 });
    let c_ptr = match &r_ptr {
        Some((p, _)) => *p,
        None => y_ptr,
    };
    // SAFETY: the layouts match the operands' checked shapes; every pointer is held for the
    // call (the guards above) and the workspace is the context's, sized WORKSPACE_BYTES.
    #[allow(unsafe_code)]
    unsafe {
        result::matmul(
            ctx.handle,
            desc.0,
            (&alpha as *const f32).cast::<c_void>(),
            (&beta as *const f32).cast::<c_void>(),
            w_ptr as *const c_void,
            a.0,
            x_ptr as *const c_void,
            b.0,
            c_ptr as *const c_void,
            d.0,
            y_ptr as *mut c_void,
            d.0,
            &algo,
            ws_ptr as *mut c_void,
            WORKSPACE_BYTES,
            stream.cu_stream() as sys::cudaStream_t,
        )
    }
    .map_err(lt_error)?;
    drop(r_ptr);
    Ok(())
}
