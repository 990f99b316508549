#!/usr/bin/env python3
"""Prints the dvd-vs-PyTorch tables of one GPU run (Markdown), from the files
tools/gpu/run_gpu_checks.sh writes: dvd_bench.json (`dvd bench gpu`), torch_baseline.json
(tools/gpu/torch_baseline.py), checks.jsonl (`dvd bench gpu-check`), and moe_bench.jsonl /
moe_torch.jsonl (`dvd bench moe`, tools/bench_moe_torch.py). Each table needs only its files.

The decode bound is the bytes a batch-1 step reads (dvd's decode_weight_bytes) over the copy
bandwidth PyTorch measured in the same run (bytes read + written per second).

Usage: summarize.py OUT_DIR
"""

import json
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    if (out / "dvd_bench.json").exists() and (out / "torch_baseline.json").exists():
        models(out)
    checks(out)
    moe(out)


def models(out: Path) -> None:
    """dvd bench gpu against torch_baseline.py: vision, prefill, decode, kernels."""
    dvd = json.loads((out / "dvd_bench.json").read_text())
    torch = json.loads((out / "torch_baseline.json").read_text())
    rows = ["| workload | dvd | PyTorch | dvd / PyTorch |", "|---|---|---|---|"]
    for point in dvd.get("vision", []):
        b = str(point["batch"])
        theirs = torch.get("vision_tiles_per_s", {}).get(b)
        if theirs:
            rows.append(f"| vision tiles/s, batch {b} | {point['tiles_per_s']:.0f} | {theirs:.0f} | "
                        f"{point['tiles_per_s'] / theirs:.2f}x |")
    prefill = dvd.get("prefill")
    if prefill and "prefill_ms" in torch:
        rows.append(f"| prefill ms, {prefill['tokens']} tokens | {prefill['ms']:.1f} | {torch['prefill_ms']:.1f} | "
                    f"{torch['prefill_ms'] / prefill['ms']:.2f}x |")
    for point in dvd.get("decode", []):
        b = str(point["batch"])
        theirs = torch.get("decode_ms", {}).get(b, {})
        best = theirs.get("graph") or theirs.get("eager")
        if best:
            rows.append(f"| decode ms/step, batch {b}, context {point['context']} | {point['ms_per_step']:.2f} | "
                        f"{best:.2f} ({'CUDA graph' if theirs.get('graph') else 'eager'}) | "
                        f"{best / point['ms_per_step']:.2f}x |")
    print("\n".join(rows))
    copy = torch.get("copy_bandwidth_gbps")
    weights = dvd.get("decode_weight_bytes")
    batch1 = next((p for p in dvd.get("decode", []) if p["batch"] == 1), None)
    if copy and weights and batch1:
        bound = weights / (copy * 1e9) * 1e3
        print(f"\nDecode bound at batch 1: {weights / 1e9:.2f} GB / {copy:.0f} GB/s = {bound:.2f} ms; "
              f"dvd {batch1['ms_per_step']:.2f} ms = {batch1['ms_per_step'] / bound:.2f}x of it.")
    for point in dvd.get("decode", []):
        if "enqueue_ms" in point:
            print(f"\nDecode batch {point['batch']}: the host enqueues a step in {point['enqueue_ms']:.2f} ms "
                  f"of {point['ms_per_step']:.2f} ms.", end="")
    if dvd.get("kernels"):
        print("\n\n| kernel | ms | rate |\n|---|---|---|")
        for k in dvd["kernels"]:
            print(f"| {k['what']} | {k['ms']:.4f} | {k['rate']:.0f} {k['unit']} |")


def checks(out: Path) -> None:
    """One row per gpu-check report."""
    checks = out / "checks.jsonl"
    if checks.exists():
        print("\n| gpu-check | lowest cosine | argmax agree | pass |\n|---|---|---|---|")
        for line in checks.read_text().splitlines():
            report = json.loads(line)
            cosine = min(a["cosine"] for a in report["agreements"])
            agree = [a["argmax_agree"] for a in report["agreements"] if a.get("argmax_agree")]
            same = sum(a[0] for a in agree)
            total = sum(a[1] for a in agree)
            print(f"| {report['name']} | {cosine:.5f} | {same}/{total} | {report['pass']} |")


def moe(out: Path) -> None:
    """One MoE block: dvd against its read bound and against PyTorch's fastest implementation."""
    ours, theirs = out / "moe_bench.jsonl", out / "moe_torch.jsonl"
    if not ours.exists():
        return
    fastest = {}
    if theirs.exists():
        for line in theirs.read_text().splitlines():
            r = json.loads(line)
            if r["tokens"] not in fastest or r["ms_per_call"] < fastest[r["tokens"]]["ms_per_call"]:
                fastest[r["tokens"]] = r
    print("\n| MoE block, tokens | dvd ms | bound ms (GB/s) | dvd / bound | PyTorch fastest ms | "
          "PyTorch / dvd |\n|---|---|---|---|---|---|")
    for line in ours.read_text().splitlines():
        r = json.loads(line)
        peer = fastest.get(r["tokens"])
        peer_cells = (f"{peer['ms_per_call']:.3f} ({peer['impl']}) | {peer['ms_per_call'] / r['ms_per_call']:.2f}x"
                      if peer else "- | -")
        print(f"| {r['tokens']} ({r['dtype']}) | {r['ms_per_call']:.3f} | {r['bound_ms']:.3f} "
              f"({r['read_gbps']:.0f}) | {r['ratio_to_bound']:.2f}x | {peer_cells} |")


if __name__ == "__main__":
    main()
