#!/usr/bin/env python3
"""Soak test: a real deployment (language server, vision server, gateway, each its own `dvd`
process) under sustained mixed load for a long time, with overload bursts.

Checks, and exits non-zero when one fails:
- no admitted request fails: every answer is 200, or 429 (refused at admission) during a burst;
- overload is refused, not queued: bursts beyond the gateway's max_inflight get 429s, and the
  admitted requests' p99 latency during bursts stays within `--max-burst-p99-ratio` of the
  steady p99;
- resident memory of every process stays within 10% of its value at the end of the warm-up,
  and its open file descriptors within a few of theirs (no leak in KV blocks, feature inboxes,
  caches or connections).

Only the Python standard library is used. Example (what docs/reliability.md records):

    cargo build -p dvd
    python3 tools/soak/soak.py --dvd target/debug/dvd --duration-s 1800 --out soak.json
"""

import argparse
import base64
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = os.path.join(ROOT, "examples", "red-circle.png")
WORDS = (
    "the a red blue green circle square picture shape small large what is shown describe "
    "tell me about colour count how many where left right top bottom image please briefly"
).split()


def start(dvd, args):
    """Starts `dvd args...`; returns (process, its ready JSON line)."""
    proc = subprocess.Popen([dvd] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    try:
        return proc, json.loads(line)
    except json.JSONDecodeError:
        proc.kill()
        sys.exit(f"{args[0]} did not start: {line!r}")


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def metric(page, name):
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class Load:
    """Client threads and what they saw."""

    def __init__(self, http, seed):
        self.url = f"http://{http}/v1/chat/completions"
        self.png = open(IMAGE, "rb").read()
        self.lock = threading.Lock()
        self.results = []  # (start, latency, status, kind, burst)
        self.stop = threading.Event()
        self.seed = seed

    def body(self, rng):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
        content = []
        kind = "text"
        if rng.random() < 0.5:
            kind = "image"
            png = self.png
            if rng.random() < 0.5:
                # A new image (trailing bytes change its hash): an embedding-cache miss.
                kind = "image-new"
                png = png + rng.randbytes(rng.randint(1, 64))
            url = "data:image/png;base64," + base64.b64encode(png).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": words})
        body = {
            "model": "dvd-demo",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": rng.randint(4, 48),
            "temperature": rng.choice([0, 0.7]),
            "stream": rng.random() < 0.5,
        }
        return kind, json.dumps(body).encode()

    def client(self, index, burst, until):
        rng = random.Random(self.seed * 1000 + index)
        while not self.stop.is_set() and (until is None or time.time() < until):
            kind, body = self.body(rng)
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            started = time.time()
            try:
                with urllib.request.urlopen(req, timeout=180) as r:
                    r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                e.read()
                status = e.code
            except Exception as e:  # connection refused, reset, timeout
                status = f"error: {e}"
            latency = time.time() - started
            with self.lock:
                self.results.append((started, latency, status, kind, burst))
            if status == 429:
                time.sleep(0.05)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dvd", default=os.path.join(ROOT, "target", "debug", "dvd"))
    ap.add_argument("--duration-s", type=float, default=1800)
    ap.add_argument("--warmup-s", type=float, default=300)
    ap.add_argument("--clients", type=int, default=4, help="steady clients")
    ap.add_argument("--max-inflight", type=int, default=8, help="the gateway's limits.max_inflight")
    ap.add_argument("--burst-clients", type=int, default=24, help="extra clients during a burst")
    ap.add_argument("--burst-every-s", type=float, default=300)
    ap.add_argument("--burst-s", type=float, default=45)
    ap.add_argument("--sample-every-s", type=float, default=10)
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--max-fd-growth", type=int, default=8)
    ap.add_argument("--max-burst-p99-ratio", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write samples and results as JSON here")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="dvd-soak-")
    procs = {}
    language, lready = start(args.dvd, [
        "language", "serve", "--model", "dvd-demo", "--listen", "127.0.0.1:0",
        "--feature-listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--kv-cache-mib", "32",
    ])
    procs["language"] = (language, lready["ops"])
    vision, vready = start(args.dvd, [
        "vision", "serve", "--model", "dvd-demo", "--listen", "127.0.0.1:0",
        "--ops-listen", "127.0.0.1:0", "--cache-mib", "8",
    ])
    procs["vision"] = (vision, vready["ops"])
    config = os.path.join(tmp, "gateway.toml")
    with open(config, "w") as f:
        f.write(
            '[server]\nhttp = "127.0.0.1:0"\ngrpc = "127.0.0.1:0"\nmodel = "dvd-demo"\n'
            f'[vision]\naddresses = ["{vready["grpc"]}"]\n'
            f'[language]\naddresses = ["{lready["grpc"]}"]\n'
            f"[limits]\nmax_inflight = {args.max_inflight}\nrequest_timeout_s = 120\n"
        )
    gateway, gready = start(args.dvd, ["gateway", "serve", "--config", config])
    procs["gateway"] = (gateway, None)
    http = gready["http"]
    deadline = time.time() + 60
    while True:
        try:
            if get(f"http://{http}/health")[0] == 200:
                break
        except Exception:
            pass
        if time.time() > deadline:
            sys.exit("the gateway never became healthy")
        time.sleep(0.2)

    load = Load(http, args.seed)
    began = time.time()
    end = began + args.duration_s
    threads = [threading.Thread(target=load.client, args=(i, False, end), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    bursts = []
    samples = []
    next_burst = began + args.burst_every_s / 2
    next_sample = began
    try:
        while time.time() < end:
            now = time.time()
            if now >= next_sample:
                sample = {"t": round(now - began, 1)}
                for name, (proc, ops) in procs.items():
                    sample[name] = {"rss_kib": rss_kib(proc.pid), "fds": fds(proc.pid)}
                    if ops:
                        page = get(f"http://{ops}/metrics")[1]
                        for m in ("dvd_language_kv_blocks_in_use", "dvd_language_running_sequences",
                                  "dvd_vision_cache_bytes", "dvd_vision_queued_tiles"):
                            v = metric(page, m)
                            if v is not None:
                                sample[name][m] = v
                samples.append(sample)
                with load.lock:
                    done = len(load.results)
                print(f"[{sample['t']:7.1f}s] requests {done:6d}  " + "  ".join(
                    f"{n}: {sample[n]['rss_kib'] / 1024:.1f} MiB {sample[n]['fds']} fds" for n in procs),
                    flush=True)
                next_sample += args.sample_every_s
            if now >= next_burst and now + args.burst_s < end:
                until = now + args.burst_s
                bursts.append((now, until))
                for i in range(args.burst_clients):
                    t = threading.Thread(target=load.client, args=(1000 + len(bursts) * 100 + i, True, until), daemon=True)
                    t.start()
                next_burst += args.burst_every_s
            time.sleep(0.2)
    finally:
        load.stop.set()
        time.sleep(3)
        final = {"t": round(time.time() - began, 1)}
        for name, (proc, _) in procs.items():
            final[name] = {"rss_kib": rss_kib(proc.pid), "fds": fds(proc.pid)}
        for name, (proc, _) in procs.items():
            proc.send_signal(signal.SIGTERM)
        for name, (proc, _) in procs.items():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()

    # Verdicts.
    results = load.results
    failed = [r for r in results if r[2] != 200 and not (r[2] == 429)]
    refused = [r for r in results if r[2] == 429]
    in_burst = lambda t: any(a <= t <= b for a, b in bursts)
    # A request sent within a few seconds after a burst may still meet its backlog.
    near_burst = lambda t: any(a <= t <= b + 5 for a, b in bursts)
    refused_outside_bursts = [r for r in refused if not near_burst(r[0])]
    ok = [r for r in results if r[2] == 200]
    steady = [r[1] for r in ok if not in_burst(r[0]) and r[0] - began > args.warmup_s]
    during = [r[1] for r in ok if in_burst(r[0])]
    report = {
        "duration_s": round(time.time() - began, 1),
        "requests": len(results),
        "ok": len(ok),
        "refused_429": len(refused),
        "refused_429_outside_bursts": len(refused_outside_bursts),
        "failed": len(failed),
        "failures": [str(r[2]) for r in failed[:20]],
        "kinds": {k: sum(1 for r in ok if r[3] == k) for k in ("text", "image", "image-new")},
        "bursts": len(bursts),
        "latency_s": {
            "steady_p50": percentile(steady, 0.5), "steady_p99": percentile(steady, 0.99),
            "burst_p50": percentile(during, 0.5), "burst_p99": percentile(during, 0.99),
        },
        "processes": {},
    }
    verdicts = []
    warm = [s for s in samples if s["t"] >= args.warmup_s]
    for name in procs:
        if not warm:
            break
        base = warm[0][name]
        rss = [s[name]["rss_kib"] for s in warm] + [final[name]["rss_kib"]]
        fd = [s[name]["fds"] for s in warm] + [final[name]["fds"]]
        growth = max(rss) / base["rss_kib"] - 1
        report["processes"][name] = {
            "rss_mib_at_warmup": round(base["rss_kib"] / 1024, 1),
            "rss_mib_min": round(min(rss) / 1024, 1), "rss_mib_max": round(max(rss) / 1024, 1),
            "rss_mib_final": round(final[name]["rss_kib"] / 1024, 1),
            "rss_growth": round(growth, 4),
            "fds_at_warmup": base["fds"], "fds_min": min(fd), "fds_max": max(fd), "fds_final": final[name]["fds"],
        }
        verdicts.append((f"{name}: resident memory within {args.max_growth:.0%} of warm-up ({growth:+.1%})",
                         growth <= args.max_growth))
        verdicts.append((f"{name}: fds within {args.max_fd_growth} of warm-up ({base['fds']} -> max {max(fd)})",
                         max(fd) - base["fds"] <= args.max_fd_growth))
    verdicts.append((f"no admitted request failed ({len(failed)} failed of {len(results)})", not failed))
    verdicts.append((f"overload refused with 429 ({len(refused)} during {len(bursts)} bursts)",
                     len(refused) > 0 or not bursts))
    verdicts.append((f"no 429 without overload ({len(refused_outside_bursts)})", not refused_outside_bursts))
    lat = report["latency_s"]
    if lat["steady_p99"] and lat["burst_p99"]:
        ratio = lat["burst_p99"] / lat["steady_p99"]
        report["latency_s"]["burst_over_steady_p99"] = round(ratio, 2)
        verdicts.append((f"admitted p99 during bursts {ratio:.2f}x steady (at most {args.max_burst_p99_ratio}x)",
                         ratio <= args.max_burst_p99_ratio))
    report["verdicts"] = [{"check": c, "ok": v} for c, v in verdicts]
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"report": report, "samples": samples + [final]}, f, indent=1)
    for check, good in verdicts:
        print(("PASS " if good else "FAIL ") + check)
    sys.exit(0 if all(v for _, v in verdicts) else 1)


if __name__ == "__main__":
    main()
