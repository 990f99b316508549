#!/usr/bin/env python3
"""PyTorch baseline for `dvd bench moe`: times transformers' own `Qwen3MoeSparseMoeBlock` (router
and experts) on random weights, once per experts implementation transformers offers.

Defaults are Qwen3-30B-A3B's layer (hidden 2048, 128 experts, top-8, moe_intermediate 768,
norm_topk_prob true). Weights are drawn from a seeded generator (router and expert matrices
N(0, 1/fan_in)), the input is N(0, 1) of shape [1, tokens, hidden]. For each implementation and
each --tokens value: --warmup calls, then the median of --calls calls under torch.inference_mode
(CUDA: synchronised around every call), each after reading a 256 MiB buffer so the weights come
from memory, not the caches (as `dvd bench moe` does).

Experts implementations (transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS plus "eager"):
eager (a loop over the experts hit, index_add_), batched_mm (torch.bmm over gathered per-pair
weights), grouped_mm (torch.nn.functional.grouped_mm over expert-sorted rows; the default of a
PreTrainedModel), deepgemm and sonicmoe (CUDA hub kernels). The block is built standalone, so
the implementation is picked by setting `config._experts_implementation`; one that raises on
this device / dtype is reported as skipped on stderr. batched_mm gathers every (token, expert)
pair's weights (tokens * top_k * 3 * moe_intermediate * hidden elements: 77 GB in f32 at 512
tokens of the default layer), so a size whose gather exceeds --max-gather-gb is skipped too.

Output: a table, or with --json one JSON line per (impl, tokens):
{"impl", "tokens", "hidden", "experts", "top_k", "moe_intermediate", "dtype", "device",
 "threads", "ms_per_call", "calls", "torch", "transformers"}.

Measure on an otherwise idle machine: torch's OpenMP threads spin at barriers, and with other
processes on the cores a 2-thread run here was 3-6x slower than with OMP_WAIT_POLICY=PASSIVE
(say so when setting it).

Pinned (tools/requirements-vision.txt): torch 2.15.0, transformers 5.24.0.
Usage:  .venv/bin/python tools/bench_moe_torch.py [--tokens 1 32 512] [--threads 2] [--json]
        [--device cpu|cuda] [--dtype f32|bf16] [--impl eager grouped_mm ...]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import transformers
from transformers import Qwen3MoeConfig
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def implementations():
    return ["eager"] + sorted(ALL_EXPERTS_FUNCTIONS.keys())


def build_block(args, dtype, device):
    config = Qwen3MoeConfig(hidden_size=args.hidden, moe_intermediate_size=args.moe_intermediate,
                            num_experts=args.experts, num_experts_per_tok=args.top_k,
                            norm_topk_prob=args.norm_topk_prob, hidden_act="silu")
    block = Qwen3MoeSparseMoeBlock(config).eval()
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return block.to(device=device, dtype=dtype), config


def time_calls(block, x, warmup, calls, sync, evict):
    with torch.inference_mode():
        for _ in range(warmup):
            block(x)
        sync()
        times = []
        for _ in range(calls):
            evict()
            t0 = time.perf_counter()
            block(x)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 32, 512])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--moe-intermediate", type=int, default=768)
    ap.add_argument("--no-norm-topk-prob", dest="norm_topk_prob", action="store_false",
                    help="do not renormalise the top-k weights (Qwen3-30B-A3B does)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--impl", nargs="+", choices=implementations(),
                    help="experts implementations to time (default: every one that runs here)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-gather-gb", type=float, default=8.0,
                    help="skip batched_mm where its per-pair weight gather would exceed this")
    ap.add_argument("--json", action="store_true", help="one JSON line per (impl, tokens)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # As `dvd bench moe`: 256 MiB read before each timed call, so weights come from memory.
    flush = torch.ones(64 << 20, device=device)

    def evict():
        with torch.inference_mode():
            flush.sum()
        sync()

    block, config = build_block(args, dtype, device)
    block_bytes = torch.tensor([], dtype=dtype).element_size()
    g = torch.Generator().manual_seed(args.seed + 1)
    inputs = {t: torch.randn(1, t, args.hidden, generator=g).to(device=device, dtype=dtype) for t in args.tokens}
    rows = []
    for impl in args.impl or implementations():
        config._experts_implementation = impl  # read by the experts module at every call
        try:
            with torch.inference_mode():
                block(inputs[min(args.tokens)])
            sync()
        except Exception as e:  # noqa: BLE001 - an implementation this device/dtype lacks
            print(f"skipped {impl}: {type(e).__name__}: {str(e).splitlines()[0][:160]}", file=sys.stderr)
            continue
        for t in args.tokens:
            gather = t * args.top_k * 3 * args.moe_intermediate * args.hidden * block_bytes
            if impl == "batched_mm" and gather > args.max_gather_gb * 1e9:
                print(f"skipped {impl} at {t} tokens: its weight gather is {gather / 1e9:.1f} GB "
                      f"(> --max-gather-gb {args.max_gather_gb})", file=sys.stderr)
                continue
            ms = time_calls(block, inputs[t], args.warmup, args.calls, sync, evict)
            row = {"impl": impl, "tokens": t, "hidden": args.hidden, "experts": args.experts, "top_k": args.top_k,
                   "moe_intermediate": args.moe_intermediate, "dtype": args.dtype, "device": args.device,
                   "threads": torch.get_num_threads(), "ms_per_call": round(ms, 4), "calls": args.calls,
                   "torch": torch.__version__, "transformers": transformers.__version__}
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(f"Qwen3MoeSparseMoeBlock hidden {args.hidden}, {args.experts} experts, top-{args.top_k}, "
              f"moe_intermediate {args.moe_intermediate}, {args.dtype} on {args.device}, "
              f"{torch.get_num_threads()} threads, median of {args.calls} calls "
              f"(torch {torch.__version__}, transformers {transformers.__version__})")
        print(f"{'impl':<12}{'tokens':>8}{'ms/call':>12}{'us/token':>12}")
        for r in rows:
            print(f"{r['impl']:<12}{r['tokens']:>8}{r['ms_per_call']:>12.3f}{1e3 * r['ms_per_call'] / r['tokens']:>12.1f}")


if __name__ == "__main__":
    main()
