#!/usr/bin/env bash
# The prepared GPU run: on a machine with an NVIDIA GPU, its driver, and PyTorch (cu130), but no
# Rust toolchain. Build the binary beforehand (tools/cuda/build.sh) and ship it compressed:
#
#   xz -T2 -6 -c target/cuda/release/dvd > .gpu/dvd.xz        (on the build machine)
#   tools/gpu/run_gpu_checks.sh [.gpu/dvd.xz] [OUT_DIR]        (on the GPU machine)
#
# In one run it:
#   1. checks GPU-bf16 against CPU-f32 on two small checkpoints of real head widths (the fused
#      kernels) and, last, on the committed fixtures (`dvd bench gpu-check`: vision features,
#      prefill/chunk/decode logits);
#   2. writes a random-weight InternVL3.5-8B checkpoint (tools/gpu/make_random_checkpoint.py);
#   3. measures dvd (`dvd bench gpu`) and PyTorch (tools/gpu/torch_baseline.py) on it: vision
#      tiles/s at batches 1/8/32, prefill of 1900 rows, decode ms/step at batch 1 and 32 over
#      2048 cached positions;
#   4. runs one request end to end through `dvd up --device cuda:0` (gateway, vision server,
#      language server, features over TCP) on the 8B checkpoint;
#   5. (moe) checks the MoE kernels: GPU-bf16 and GPU-f32 against CPU-f32 on a 2-layer random
#      InternVL3.5-30B-A3B checkpoint in transformers 5's fused expert layout (`dvd bench
#      gpu-check`: the long prefill takes the tensor-core grouped GEMM in bf16 and the FMA tiles
#      in f32, the short chunks and decode steps the weight-streaming one), then times one MoE
#      block of Qwen3-30B-A3B's layer (2048 wide, 128 experts, top-8, 768) in bf16 at 1, 32 and
#      512 tokens with `dvd bench moe` and with PyTorch's Qwen3MoeSparseMoeBlock
#      (tools/bench_moe_torch.py, every experts implementation that runs here).
# Everything lands in OUT_DIR (default $OUT, else /tmp/dvd-gpu): checks.jsonl (one gpu-check report
# per line), dvd_bench.json, torch_baseline.json, up_request.json, up.log, moe_bench.jsonl and
# moe_torch.jsonl (one JSON line per measurement), log.txt and summary.md
# (tools/gpu/summarize.py: the dvd-vs-PyTorch table).
# Set STEPS to a subset of "check ckpt bench torch up moe" to run fewer ("check-real" checks only
# the small checkpoints of real widths).
set -uo pipefail
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}" PYTHONUNBUFFERED=1
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
packed="${1:-$root/.gpu/dvd.xz}"
out="${2:-${OUT:-/tmp/dvd-gpu}}"
steps="${STEPS:-check ckpt bench torch up moe}"
mkdir -p "$out"
work="${DVD_GPU_WORK:-/tmp/dvd-gpu-work}"
mkdir -p "$work"
log() { echo "== $(date +%T) $*" | tee -a "$out/log.txt"; }
has() { [[ " $steps " == *" $1 "* ]]; }
# Appends one gpu-check report to checks.jsonl (one line, named) and prints its cosines.
summarise() {
    python3 - "$1" "$2" "$out/checks.jsonl" <<'PY' 2>/dev/null
import json, sys
report = json.load(open(sys.argv[1]))
report["name"] = sys.argv[2]
open(sys.argv[3], "a").write(json.dumps(report) + "\n")
print(" ".join("%s=%.5f" % (a["what"].split(" (")[0].replace(" ", "_"), a["cosine"]) for a in report["agreements"]))
PY
}
# Prints the headline of one `dvd bench moe --json` line read from stdin.
moe_headline() {
    python3 -c 'import json, sys
r = json.loads(sys.stdin.read())
print("%.3f ms (bound %.3f ms at %.0f GB/s, %d experts touched)" % (r["ms_per_call"], r["bound_ms"], r["read_gbps"], r.get("active_experts", -1)))' 2>/dev/null
}

bin="$work/dvd"
if [ ! -x "$bin" ]; then
    case "$packed" in
        *.xz) xz -dc "$packed" > "$bin" ;;
        *.zst) zstd -dc "$packed" > "$bin" ;;
        *) cp "$packed" "$bin" ;;
    esac
    chmod +x "$bin"
fi

# The CUDA 13 runtime libraries PyTorch's wheels ship (cudart, cublas, cublasLt, curand, nvrtc)
# and NCCL (nvidia-nccl-cu13, under nvidia/nccl/lib; tools/cuda/requirements-toolkit.txt pins the
# version PyTorch does).
libdirs="$(python3 - <<'PY'
import glob, os, site, sys
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for name in ("libcublas.so.13", "libcudart.so.13", "libcurand.so.10", "libcublasLt.so.13", "libnvrtc.so.13",
                 "libnccl.so.2"):
        for path in glob.glob(os.path.join(base, "nvidia", "**", name), recursive=True):
            dirs.add(os.path.dirname(path))
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
if ldd "$bin" | grep -q "not found"; then
    log "missing libraries:"; ldd "$bin" | grep "not found" | tee -a "$out/log.txt"
    exit 1
fi

small_1b="$work/ivl1b-2layers"
small_8b="$work/ivl8b-2layers"
full_8b="$work/ivl8b"
if has check || has check-real; then
    log "GPU-bf16 vs CPU-f32 on small checkpoints of real widths (fused kernels)"
    python3 "$here/make_random_checkpoint.py" --preset internvl3_5-1b --layers 2 --vision-layers 2 --out "$small_1b" >> "$out/log.txt" 2>&1
    python3 "$here/make_random_checkpoint.py" --preset internvl3_5-8b --layers 2 --vision-layers 1 --out "$small_8b" >> "$out/log.txt" 2>&1
    for m in "$small_1b" "$small_8b"; do
        name="$(basename "$m")"
        timeout 180 "$bin" bench gpu-check --model "$m" --device cuda:0 --tiles 3 --first-chunk 300 > "$work/check-$name.json" 2>> "$out/log.txt"
        log "  $name: exit $? $(summarise "$work/check-$name.json" "$name")"
    done
fi
if has ckpt || has bench || has up; then
    if [ ! -f "$full_8b/model.safetensors.index.json" ]; then
        log "writing the random InternVL3.5-8B checkpoint"
        python3 "$here/make_random_checkpoint.py" --preset internvl3_5-8b --out "$full_8b" >> "$out/log.txt" 2>&1 || log "checkpoint failed"
    fi
fi
if has bench; then
    log "dvd bench gpu (8B shapes)"
    timeout 300 "$bin" bench gpu --model "$full_8b" --device cuda:0 --kernels > "$out/dvd_bench.json" 2>> "$out/log.txt"
    log "  exit $?"
fi
if has torch; then
    log "PyTorch baseline (8B shapes)"
    timeout 240 python3 "$here/torch_baseline.py" --checkpoint "$full_8b" --out "$out/torch_baseline.json" >> "$out/log.txt" 2>&1
    log "  exit $?"
fi
if has moe; then
    moe_ckpt="$work/ivl30b-a3b-2layers"
    log "MoE: GPU vs CPU-f32 on a 2-layer random InternVL3.5-30B-A3B checkpoint (fused experts)"
    if [ ! -f "$moe_ckpt/config.json" ]; then
        python3 "$here/make_random_checkpoint.py" --preset internvl3_5-30b-a3b --layers 2 --vision-layers 1 --out "$moe_ckpt" >> "$out/log.txt" 2>&1 || log "  checkpoint failed"
    fi
    for dtype in bf16 f32; do
        name="$(basename "$moe_ckpt")-$dtype"
        timeout 300 "$bin" bench gpu-check --model "$moe_ckpt" --device cuda:0 --dtype "$dtype" --tiles 1 --first-chunk 300 > "$work/check-$name.json" 2>> "$out/log.txt"
        log "  $name: exit $? $(summarise "$work/check-$name.json" "$name")"
    done
    log "dvd bench moe (Qwen3-30B-A3B layer, bf16)"
    for t in 1 32 512; do
        line="$(timeout 120 "$bin" bench moe --device cuda:0 --dtype bf16 --json --tokens "$t" 2>> "$out/log.txt")"
        rc=$?
        [ -n "$line" ] && echo "$line" >> "$out/moe_bench.jsonl"
        log "  $t tokens: exit $rc $(moe_headline <<< "$line")"
    done
    log "PyTorch Qwen3MoeSparseMoeBlock (same shapes, bf16)"
    timeout 300 python3 "$root/tools/bench_moe_torch.py" --device cuda --dtype bf16 --json --tokens 1 32 512 >> "$out/moe_torch.jsonl" 2>> "$out/log.txt"
    log "  exit $?"
fi
if has up; then
    log "dvd up on cuda:0, one request end to end"
    port=18080
    "$bin" up --model "$full_8b" --device cuda:0 --port "$port" --kv-cache-mib 2048 > "$out/up.log" 2>&1 &
    up_pid=$!
    timeout 200 python3 - "$port" <<'PY'
import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
        break
    except Exception:
        time.sleep(1)
PY
    timeout 150 python3 - "$port" "$root/vision-server/tests/fixtures/model/image.png" > "$out/up_request.json" 2>> "$out/log.txt" <<'PY'
import base64, json, sys, time, urllib.request
port, image = sys.argv[1], sys.argv[2]
url = "data:image/png;base64," + base64.b64encode(open(image, "rb").read()).decode()
model = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10))["data"][0]["id"]
body = {"model": model, "max_tokens": 16, "temperature": 0, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe the image."}]}]}
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
started = time.time()
reply = json.load(urllib.request.urlopen(req, timeout=120))
reply["client_seconds"] = time.time() - started
print(json.dumps(reply, indent=1))
PY
    log "  request exit $? $(head -c 600 "$out/up_request.json" | tr '\n' ' ')"
    kill -TERM "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null
fi
if has check; then
    log "GPU-bf16 vs CPU-f32 on the committed fixtures"
    for m in "$root"/language-server/tests/fixtures/model/* "$root"/vision-server/tests/fixtures/model/vit300m-hf; do
        [ -f "$m/config.json" ] || continue
        name="$(basename "$m")"
        timeout 120 "$bin" bench gpu-check --model "$m" --device cuda:0 > "$work/check-$name.json" 2>> "$out/log.txt"
        log "  $name: exit $? $(summarise "$work/check-$name.json" "$name")"
    done
fi
python3 "$here/summarize.py" "$out" > "$out/summary.md" 2>> "$out/log.txt" && cat "$out/summary.md" | tee -a "$out/log.txt"
log "done"
