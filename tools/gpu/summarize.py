#!/usr/bin/env python3
"""Prints the dvd-vs-PyTorch table of one GPU run (Markdown), from the files
tools/gpu/run_gpu_checks.sh writes: dvd_bench.json (`dvd bench gpu`), torch_baseline.json
(tools/gpu/torch_baseline.py) and checks.jsonl (`dvd bench gpu-check`).

The decode bound is the bytes a batch-1 step reads (dvd's decode_weight_bytes) over the copy
bandwidth PyTorch measured in the same run (bytes read + written per second).

Usage: summarize.py OUT_DIR
"""

import json
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
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


if __name__ == "__main__":
    main()
