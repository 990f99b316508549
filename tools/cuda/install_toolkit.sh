#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit from NVIDIA's PyPI wheels into a local folder, so dvd's `cuda`
# feature builds on a machine without a GPU or a system CUDA. Idempotent.
#
#   tools/cuda/install_toolkit.sh [PREFIX]      (default: target/cuda-toolkit)
#
# Afterwards PREFIX/cuda holds bin/nvcc, include/, lib/ (with the unversioned .so links the
# linker needs, NCCL's libnccl.so.2 and nccl.h linked in from its own wheel) and
# lib/stubs/libcuda.so, a driver stub to link against. The stub is for linking only: at run
# time the real driver's libcuda.so.1 must be found instead (never put lib/stubs on
# LD_LIBRARY_PATH on a GPU machine). Every stub entry point answers CUDA_ERROR_NO_DEVICE, so a
# binary run against it behaves as on a machine without a GPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prefix="${1:-$root/target/cuda-toolkit}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

if [ ! -x "$prefix/venv/bin/python" ]; then
    python3 -m venv "$prefix/venv"
fi
"$prefix/venv/bin/pip" install -q --no-deps -r "$here/requirements-toolkit.txt"

site="$("$prefix/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cu="$site/nvidia/cu13"
if [ ! -x "$cu/bin/nvcc" ]; then
    echo "nvcc not found under $cu after installing the wheels" >&2
    exit 1
fi
ln -sfn "$cu" "$prefix/cuda"

# The wheels ship only versioned sonames; the linker wants the plain names.
cd "$cu/lib"
for lib in libcudart libcublas libcublasLt libnvrtc libcurand; do
    versioned="$(ls "$lib".so.* 2>/dev/null | sort | head -n1 || true)"
    if [ -n "$versioned" ]; then
        ln -sf "$versioned" "$lib.so"
    fi
done

# NCCL's wheel installs beside the toolkit (nvidia/nccl); link its library and headers into the
# toolkit's lib/ and include/, so one -L and one -I find it, and libnccl.so for the linker.
nccl="$site/nvidia/nccl"
if [ ! -f "$nccl/lib/libnccl.so.2" ]; then
    echo "libnccl.so.2 not found under $nccl after installing the wheels" >&2
    exit 1
fi
ln -sf "../../nccl/lib/libnccl.so.2" "$cu/lib/libnccl.so.2"
ln -sf libnccl.so.2 "$cu/lib/libnccl.so"
for header in nccl.h nccl_device.h nccl_device; do
    ln -sfn "../../nccl/include/$header" "$cu/include/$header"
done

# A driver stub: every cu* entry point cudarc knows, each returning CUDA_ERROR_NO_DEVICE.
mkdir -p "$cu/lib/stubs"
python3 "$here/make_driver_stub.py" "$cu/lib/stubs/libcuda_stub.c"
cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$cu/lib/stubs/libcuda_stub.c"
ln -sf libcuda.so "$cu/lib/stubs/libcuda.so.1"

"$cu/bin/nvcc" --version | tail -n2
echo "CUDA toolkit ready: $prefix/cuda"
