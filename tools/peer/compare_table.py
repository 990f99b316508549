#!/usr/bin/env python3
"""Prints the side-by-side Markdown table of tools/peer/compare_transformers.sh from the
`dvd bench serve --result-file` JSONs it wrote (standard library only).

Each file is OUT/<model>--<server>--<workload>.json; a row per (model, workload), a column pair
per server. A p99 is printed only where at least 100 values stand behind it (the report's
`samples`); with fewer the cell says "max of N" and gives their maximum (`max_*_ms`), as
`dvd bench serve`'s own table does. p50 needs 2 values.

Where the per-request CSVs are beside the JSONs, a last row gives dvd's request throughput over
each other server's with a 95% bootstrap interval: each run is cut into 10 equal spans, the
spans' completions per second are resampled (2000 times, seeded) and the ratio of the means taken.

Usage: python3 tools/peer/compare_table.py OUT_DIR
"""

import csv
import json
import random
import sys
from pathlib import Path

SERVER_ORDER = ["dvd", "transformers", "transformers-cb-lm"]
SERVER_NAMES = {
    "dvd": "dvd up",
    "transformers": "transformers serve",
    "transformers-cb-lm": "transformers serve --continuous-batching (language model only)",
}
WORKLOAD_NAMES = {"image": "image chat", "text": "text-only chat"}
METRICS = ("ttft", "tpot", "itl", "e2el")
# Fewest values that resolve a percentile: 1 / (1 - p), as dvd bench serve decides.
NEEDS = {50: 2, 99: 100}


def fmt(x, unit=""):
    if x is None:
        return "-"
    return f"{x:,.1f}{unit}" if abs(x) >= 10 else f"{x:.3g}{unit}"


def percentile_cell(report, metric, p):
    n = (report.get("samples") or {}).get(metric, 0)
    value = report.get(f"p{p}_{metric}_ms")
    if value is None and p == 50:
        value = report.get(f"median_{metric}_ms")
    if n >= NEEDS[p] and value is not None:
        return fmt(value)
    most = report.get(f"max_{metric}_ms")
    return f"max of {n}: {fmt(most)}" if n else "-"


def run_info(report):
    """The run's parameters: flattened into the report (dvd bench serve's JSON), or under "run"."""
    return report.get("run") or report


def rows(report):
    run = run_info(report)
    out = [
        ("completed / failed", f"{report.get('completed', 0)} / {report.get('failed', 0)}"),
        ("duration (s)", fmt(run.get("duration"))),
        ("request throughput (req/s)", fmt(report.get("request_throughput"))),
        ("output throughput (tok/s)", fmt(report.get("output_throughput"))),
        ("input / output tokens", f"{report.get('total_input_tokens', 0)} / {report.get('total_output_tokens', 0)}"),
    ]
    for metric in METRICS:
        for p in (50, 99):
            out.append((f"{metric.upper()} p{p} (ms)", percentile_cell(report, metric, p)))
    samples = report.get("samples") or {}
    out.append(("samples (ttft / tpot / itl / e2el)", " / ".join(str(samples.get(m, 0)) for m in METRICS)))
    return out


WINDOWS = 10
RESAMPLES = 2000


def throughput_windows(csv_path, duration):
    """Completions per second in each of WINDOWS equal spans of a run, from its per-request CSV
    (sent_at_s + e2el_ms of the answered load requests); None without the file."""
    if not csv_path.exists() or not duration:
        return None
    span = duration / WINDOWS
    counts = [0] * WINDOWS
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            if row["kind"] == "load" and row["ok"] == "true":
                done = float(row["sent_at_s"]) + float(row["e2el_ms"]) / 1e3
                counts[min(int(done / span), WINDOWS - 1)] += 1
    return [c / span for c in counts]


def ratio_ci(a, b, seed=0):
    """95% percentile-bootstrap interval of mean(a) / mean(b), each resampled on its own (batch
    means over the runs' spans, as `dvd bench compare` does)."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(RESAMPLES):
        ra = [rng.choice(a) for _ in a]
        rb = [rng.choice(b) for _ in b]
        if sum(rb) > 0:
            ratios.append(sum(ra) / len(ra) / (sum(rb) / len(rb)))
    ratios.sort()
    return ratios[int(0.025 * (len(ratios) - 1))], ratios[int(0.975 * (len(ratios) - 1))]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    found = {}
    for path in sorted(out.glob("*--*--*.json")):
        model, server, workload = path.stem.split("--")
        report = json.loads(path.read_text())
        if isinstance(report, list):  # a sweep: the script runs one rate, take the first
            report = report[0]
        found.setdefault((model, workload), {})[server] = report
    if not found:
        sys.exit(f"no <model>--<server>--<workload>.json in {out}")
    for (model, workload), by_server in sorted(found.items()):
        servers = [s for s in SERVER_ORDER if s in by_server] + sorted(set(by_server) - set(SERVER_ORDER))
        any_run = run_info(by_server[servers[0]])
        rate = any_run.get("request_rate")
        conc = any_run.get("max_concurrency")
        print(f"### {model}: {WORKLOAD_NAMES.get(workload, workload)} "
              f"({any_run.get('num_prompts', '?')} requests, rate {rate if rate is not None else 'inf'}"
              f"{f', max concurrency {conc}' if conc else ''})\n")
        print("| | " + " | ".join(SERVER_NAMES.get(s, s) for s in servers) + " |")
        print("|---|" + "---:|" * len(servers))
        table = [rows(by_server[s]) for s in servers]
        for i, (label, _) in enumerate(table[0]):
            print(f"| {label} | " + " | ".join(t[i][1] for t in table) + " |")
        windows = {sv: throughput_windows(out / f"{model}--{sv}--{workload}.csv",
                                          run_info(by_server[sv]).get("duration")) for sv in servers}
        if "dvd" in servers and windows["dvd"]:
            cells = []
            for sv in servers:
                if sv == "dvd" or not windows[sv]:
                    cells.append("")
                    continue
                ratio = by_server["dvd"]["request_throughput"] / by_server[sv]["request_throughput"]
                lo, hi = ratio_ci(windows["dvd"], windows[sv])
                cells.append(f"{ratio:.2f}x (95% CI {lo:.2f}-{hi:.2f})")
            print("| dvd's request throughput over this | " + " | ".join(cells) + " |")
        print()
    print("p99 needs 100+ values: with fewer a cell gives 'max of N' and the maximum instead. "
          "TTFT, TPOT, ITL and E2EL in milliseconds; ITL is the gap between streamed chunks "
          "(a server may put several tokens in one chunk), TPOT is (E2EL - TTFT) / (output tokens - 1). "
          "TTFT is timed at the first chunk with text (a role chunk's empty content does not count); "
          "both servers leave special tokens out of the stream, so a request that generates only "
          "special tokens (the random-weight bench model can) has no TTFT or TPOT: compare "
          "`samples` with `completed`.")


if __name__ == "__main__":
    main()
