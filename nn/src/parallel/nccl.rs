//! The GPU collective backend: one NCCL communicator per CUDA device of this process
//! (`ncclCommInitAll`), each enqueuing its collectives on its candle device's stream, so a
//! collective is ordered with the rank's kernels on the GPU and the host never waits for it.
//!
//! Failure. NCCL can wake a rank that waits for a failed peer only by `ncclCommAbort`, which
//! destroys the communicator. So [`Communicator::abort`] aborts every rank's communicator (the
//! caller's first; a rank's collective under way on the host is let finish first): NCCL kernels
//! still waiting for the failed rank exit, leaving garbage in their outputs, so the outputs of a
//! step in which any rank failed must be discarded (as [`super::RankGroup::run`] reports). Every
//! later collective fails, and one that was under way when the abort came returns an error too.
//! [`Communicator::recover`] rebuilds all the communicators on the same devices and streams;
//! while that fails, collectives fail with its error. A rank stuck inside an NCCL call on the
//! host (NCCL waits on the GPU, except while it connects peers on the first use of a transport)
//! is not woken: aborting its communicator under the running call would free what it uses.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::cudarc::nccl::result::NcclError;
use candle_core::cuda_backend::cudarc::nccl::{Comm, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, DeviceLocation, Error, Result, Shape, Storage, Tensor, bail};
use half::{bf16, f16};

use super::communicator::Communicator;

/// One communicator per device of `devices` (distinct CUDA devices, in rank order), all of one
/// NCCL group. Rank `r`'s collectives take tensors on `devices[r]` itself and are called from
/// the thread that launches the rank's kernels (as [`super::RankGroup`] does): candle's stream
/// for a device from `Device::new_cuda` is each calling thread's default stream.
pub fn nccl_group(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>> {
    let mut gpus = Vec::with_capacity(devices.len());
    for device in devices {
        let DeviceLocation::Cuda { gpu_id } = device.location() else {
            bail!("NCCL needs CUDA devices, got {device:?}");
        };
        if gpus.contains(&gpu_id) {
            bail!("NCCL: cuda:{gpu_id} is given twice; each rank needs its own GPU");
        }
        gpus.push(gpu_id);
    }
    if devices.is_empty() {
        bail!("NCCL: a group needs at least one device");
    }
    let group = Arc::new(Group {
        slots: init_all(devices)?
            .into_iter()
            .map(|comm| Mutex::new(Slot(Some(comm))))
            .collect(),
        devices: devices.to_vec(),
        aborted: AtomicBool::new(false),
        rebuild_error: Mutex::new(None),
    });
    Ok((0..devices.len())
        .map(|rank| {
            Arc::new(NcclRank {
                rank,
                group: group.clone(),
            }) as Arc<dyn Communicator>
        })
        .collect())
}

/// A communicator per device, on each candle device's stream.
fn init_all(devices: &[Device]) -> Result<Vec<Comm>> {
    let streams = devices
        .iter()
        .map(|d| Ok(d.as_cuda_device()?.cuda_stream()))
        .collect::<Result<Vec<_>>>()?;
    Comm::from_devices(streams).map_err(|e| nccl_error("ncclCommInitAll", e))
}

fn nccl_error(call: &str, e: NcclError) -> Error {
    Error::Msg(format!("NCCL {call}: {:?}", e.0))
}

/// One rank's communicator; `None` once aborted.
struct Slot(Option<Comm>);

// SAFETY: cudarc's `Comm` is not `Send` only because it holds the raw `ncclComm_t`. NCCL lets
// any host thread use a communicator provided one thread at a time does (NCCL user guide,
// "Thread Safety"); a `Slot` is only reached through its `Mutex`, which gives exactly that (and
// makes `Group` `Sync`).
#[allow(unsafe_code)]
unsafe impl Send for Slot {}

impl Slot {
    /// `ncclCommAbort` (cudarc's `Drop` of `Comm`): ends the communicator's kernels still running.
    fn abort(&mut self) {
        if let Some(comm) = self.0.take() {
            // cudarc panics when ncclCommAbort fails; the communicator is gone either way.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(comm)));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.abort();
    }
}

/// What the ranks of one NCCL group share. Locks are taken in the order slots (by rank), then
/// `rebuild_error`.
struct Group {
    devices: Vec<Device>,
    slots: Vec<Mutex<Slot>>,
    /// Set by an abort, cleared by a successful rebuild.
    aborted: AtomicBool,
    /// Why the last rebuild failed.
    rebuild_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Group {
    fn unusable(&self) -> Error {
        match &*lock(&self.rebuild_error) {
            Some(e) => Error::Msg(format!("NCCL group aborted and not rebuilt: {e}")),
            None => Error::Msg("NCCL group aborted: a rank failed (recover rebuilds it)".into()),
        }
    }
}

/// Which collective [`NcclRank::enqueue`] runs.
#[derive(Debug, Clone, Copy)]
enum Op {
    Sum,
    Gather,
}

/// One rank of an NCCL group.
struct NcclRank {
    rank: usize,
    group: Arc<Group>,
}

impl std::fmt::Debug for NcclRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclRank")
            .field("rank", &self.rank)
            .field("size", &self.size())
            .field("device", &self.group.devices[self.rank])
            .finish()
    }
}

impl NcclRank {
    /// `op` of contiguous `x` into a new tensor of `shape` (every rank passes the same shapes).
    fn collective(&self, x: &Tensor, shape: Shape, op: Op) -> Result<Tensor> {
        let device = &self.group.devices[self.rank];
        if !x.device().same_device(device) {
            bail!(
                "NCCL rank {}: tensor on {:?}, the rank is on {device:?}",
                self.rank,
                x.device()
            );
        }
        if x.elem_count() == 0 {
            return Tensor::zeros(shape, x.dtype(), device);
        }
        match (x.dtype(), op) {
            (DType::F32, _) => self.enqueue::<f32>(x, shape, op),
            (DType::BF16, _) => self.enqueue::<bf16>(x, shape, op),
            (DType::F16, _) => self.enqueue::<f16>(x, shape, op),
            (DType::F64, _) => self.enqueue::<f64>(x, shape, op),
            (DType::U8, Op::Gather) => self.enqueue::<u8>(x, shape, op),
            (DType::U32, Op::Gather) => self.enqueue::<u32>(x, shape, op),
            (DType::I64, Op::Gather) => self.enqueue::<i64>(x, shape, op),
            (dtype, op) => bail!("NCCL {op:?} of {dtype:?} is not supported"),
        }
    }

    fn enqueue<T: CudaDType + NcclType + DeviceRepr>(
        &self,
        x: &Tensor,
        shape: Shape,
        op: Op,
    ) -> Result<Tensor> {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            bail!("NCCL: tensor is not on a CUDA device");
        };
        let start = layout.start_offset();
        let Some(input) = cuda
            .as_cuda_slice::<T>()?
            .try_slice(start..start + x.elem_count())
        else {
            bail!("NCCL: tensor layout outside its storage");
        };
        // SAFETY: the collective enqueued below writes every element before anything later on
        // the stream reads it; when it is not enqueued, the buffer is dropped unread.
        #[allow(unsafe_code)]
        let mut out = unsafe { cuda.device.alloc::<T>(shape.elem_count()) }?;
        self.with_comm(|comm| enqueue_on(comm, &input, &mut out, op))?;
        let out = CudaStorage::wrap_cuda_slice(out, cuda.device.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(out),
            shape,
            BackpropOp::none(),
            false,
        ))
    }

    /// Runs `f` on this rank's communicator; fails when the group was aborted before or while
    /// `f` ran (then `f`'s collective may never have completed, and its communicator is
    /// aborted here).
    fn with_comm(&self, f: impl FnOnce(&Comm) -> Result<()>) -> Result<()> {
        let mut slot = lock(&self.group.slots[self.rank]);
        let result = match &slot.0 {
            Some(comm) if !self.group.aborted.load(Ordering::SeqCst) => f(comm),
            _ => return Err(self.group.unusable()),
        };
        // An abort that came while `f` ran waits for this lock: abort here instead.
        if self.group.aborted.load(Ordering::SeqCst) {
            slot.abort();
            return Err(self.group.unusable());
        }
        result
    }
}

fn enqueue_on<T: NcclType>(
    comm: &Comm,
    input: &CudaView<'_, T>,
    out: &mut CudaSlice<T>,
    op: Op,
) -> Result<()> {
    comm.context().bind_to_thread().w()?;
    let done = match op {
        Op::Sum => comm.all_reduce(input, out, &ReduceOp::Sum),
        Op::Gather => comm.all_gather(input, out),
    };
    done.map_err(|e| match op {
        Op::Sum => nccl_error("ncclAllReduce", e),
        Op::Gather => nccl_error("ncclAllGather", e),
    })?;
    Ok(())
}

impl Communicator for NcclRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.devices.len()
    }

    /// Summed by NCCL (f32, bf16, f16, f64), in its own order and with its own rounding of
    /// partial sums; every rank gets the same result.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        if !matches!(
            x.dtype(),
            DType::F32 | DType::BF16 | DType::F16 | DType::F64
        ) {
            bail!("NCCL all-reduce of {:?} is not supported", x.dtype());
        }
        self.collective(&x.contiguous()?, x.shape().clone(), Op::Sum)
    }

    /// NCCL gathers whole buffers rank after rank: that is the concatenation along `dim` when
    /// every axis before `dim` has size 1; otherwise `dim` is moved to the front and back.
    fn all_gather(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let dims = x.dims();
        if dim >= dims.len() {
            bail!(
                "NCCL all-gather along axis {dim} of a {}-d tensor",
                dims.len()
            );
        }
        let ranks = self.size();
        if dims[..dim].iter().product::<usize>() == 1 {
            let mut out = dims.to_vec();
            out[dim] *= ranks;
            return self.collective(&x.contiguous()?, out.into(), Op::Gather);
        }
        let front = x.transpose(0, dim)?.contiguous()?;
        let mut out = front.dims().to_vec();
        out[0] *= ranks;
        self.collective(&front, out.into(), Op::Gather)?
            .transpose(0, dim)?
            .contiguous()
    }

    fn abort(&self) {
        self.group.aborted.store(true, Ordering::SeqCst);
        let others = (0..self.size()).filter(|&r| r != self.rank);
        for rank in std::iter::once(self.rank).chain(others) {
            lock(&self.group.slots[rank]).abort();
        }
    }

    /// Rebuilds every rank's communicator (`ncclCommInitAll`) when the group was aborted; a
    /// no-op on a healthy group, so the ranks after the first find it rebuilt.
    fn recover(&self) {
        let group = &self.group;
        let mut slots: Vec<_> = group.slots.iter().map(lock).collect();
        if !group.aborted.load(Ordering::SeqCst) && slots.iter().all(|s| s.0.is_some()) {
            return;
        }
        slots.iter_mut().for_each(|s| s.abort());
        match init_all(&group.devices) {
            Ok(comms) => {
                for (slot, comm) in slots.iter_mut().zip(comms) {
                    slot.0 = Some(comm);
                }
                *lock(&group.rebuild_error) = None;
                group.aborted.store(false, Ordering::SeqCst);
            }
            Err(e) => *lock(&group.rebuild_error) = Some(e.to_string()),
        }
    }
}
