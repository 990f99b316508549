#!/usr/bin/env bash
# Builds `dvd` with the `cuda` feature on a machine without a GPU, using the PyPI toolkit that
# tools/cuda/install_toolkit.sh installs (run first, or let this script run it).
#
#   tools/cuda/build.sh [--clippy] [extra cargo args]
#
# CUDA_COMPUTE_CAP picks the GPU generation (default 90: H100/H200; 80: A100; 89: L4/L40S).
# The binary goes to target/cuda/release/dvd (its own target folder, so CPU builds elsewhere
# keep their artefacts). `--clippy` only type-checks and lints the workspace with the feature on
# warnings denied (what CI runs: it compiles the PTX kernels, candle's and ours, with nvcc, but
# links nothing, so candle's statically linked GGUF/MoE kernels are left out).
#
# At run time the binary needs the NVIDIA driver (libcuda.so.1), the CUDA 13 runtime libraries
# (libcudart, libcublas, libcublasLt, libcurand) and NCCL (libnccl.so.2): a CUDA 13 toolkit and
# NCCL, or the nvidia-* wheels that PyTorch cu130 installs (tools/gpu/run_gpu_checks.sh finds
# those).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
toolkit="${DVD_CUDA_TOOLKIT:-$root/target/cuda-toolkit}"
if [ ! -x "$toolkit/cuda/bin/nvcc" ]; then
    "$root/tools/cuda/install_toolkit.sh" "$toolkit"
fi
cuda="$toolkit/cuda"
export PATH="$cuda/bin:$PATH"
export CUDA_HOME="$cuda"
export CUDA_ROOT="$cuda"
export CUDA_PATH="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
cd "$root"
if [ "${1:-}" = "--clippy" ]; then
    # Nothing is linked, so the default target folder's checked dependencies are reused (only
    # candle and our crates change with the feature). For the same reason candle's statically
    # linked GGUF/MoE kernels are built from an empty source (tools/cuda/nvcc-lint): every PTX
    # kernel, candle's and ours, still goes through the real nvcc.
    shift
    mkdir -p "$root/target/cuda-lint"
    : >"$root/target/cuda-lint/empty.cu"
    export DVD_REAL_NVCC="$cuda/bin/nvcc"
    export DVD_NVCC_LINT_EMPTY="$root/target/cuda-lint/empty.cu"
    export NVCC="$root/tools/cuda/nvcc-lint"
    exec cargo clippy -j"${JOBS:-2}" --workspace --features dvd/cuda --locked "$@" -- -D warnings
fi
# Link against the toolkit's libraries and the driver stub; nothing here is needed at run time.
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$cuda/lib -L native=$cuda/lib/stubs"
export LIBRARY_PATH="$cuda/lib:$cuda/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda}"
exec cargo build -j"${JOBS:-2}" --release -p dvd --features cuda --locked "$@"
