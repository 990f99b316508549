#!/usr/bin/env python3
"""Per-request cost breakdown of a `dvd up` deployment of the demo model, in CPU-milliseconds per
request, with the Python standard library only (Linux: it reads /proc).

Why: with a 1.3 M-parameter model (`dvd-demo`) nearly all of a request's cost is serving overhead
(image decode, tiling, HTTP/JSON, gRPC hops, scheduling, copies), not model compute. This script
says how much of each there is.

Method
------
1. Whole processes. `dvd up --port P --ready-json` starts the demo deployment: one vision server,
   one language server (TCP feature transport) and the gateway, each its own process, children of
   `dvd up` (found through /proc/*/stat's ppid and classified by their command lines). After a
   warm-up (`--warmup` requests on each API, other pictures), the script reads utime + stime of
   every process from /proc/<pid>/stat (a process's figure includes all its threads, live and
   exited), runs `dvd bench serve --url ... --num-prompts N --max-concurrency C --output-len L
   --ignore-eos --json` (the synthetic dataset: one fresh 448-px JPEG per request, never the same
   picture twice, so the embedding cache cannot help; "Describe the image."), and reads them
   again. CPU-ms per request of a process = its delta / N. /proc counts in clock ticks
   (SC_CLK_TCK, 100/s here: 10 ms); with N = 500 that resolution is 0.02 ms per request. The sum
   of the live threads' /proc/<pid>/task/*/schedstat (nanoseconds) is recorded beside it as a
   cross-check, with the threads' context switches. The idle CPU rate of each process (over
   `--idle-s` seconds with no load: health checks, timers) is measured first and reported as the
   background share of the run's wall time; it is NOT subtracted. The benchmark client's own CPU
   (resource.getrusage(RUSAGE_CHILDREN) around it) is reported separately and excluded from the
   total.
   The same is done a second time, on the same deployment, through the gateway's gRPC API
   (`--api grpc`, images still as `data:` URLs there), with seed + 1 (warm-ups: seed + 1000 + i)
   so that no picture repeats across runs: a repeated picture would hit the vision server's
   embedding cache and the language server's prefix cache. gateway(OpenAI) - gateway(gRPC) is
   what the HTTP/1.1 + JSON + SSE front end costs over the gRPC one (one new TCP connection per
   request included: `dvd bench serve`'s HTTP client sends `Connection: close`). `--skip-grpc`
   leaves that run out. `--pin V,L` starts the deployment with `--vision-cpus V --language-cpus L
   --gateway-cpus L` (dvd then sizes each server's compute pool to its one core);
   `--compute-threads N` sets RAYON_NUM_THREADS=N for it (unpinned, N compute threads each).
2. Components, each timed by dvd's own benchmarks in a process pinned to one core
   (sched_setaffinity before exec; `--core`; dvd sizes its compute pool to that one core):
   - image decode + tiling: `dvd bench vision --image X --tiles 1`'s `preprocess_ms` (decode,
     resize to the demo's one 224-px tile, normalise). X is a request image of the serve run's
     own kind: the script points `dvd bench serve --num-prompts 1` (same seed and sizes) at a
     stub OpenAI server of its own, captures the request body and saves the JPEG from its data
     URL, so it is byte for byte the first picture of the measured run. The default `bench.jpg`
     (1920x1080, the "~23 ms" figure) is timed too, for reference only.
   - ViT per tile: the same command's `encode_ms` (one tile per encoder batch, the ViT + pixel
     shuffle + mlp1), times the tiles per request (image tokens / --tile-tokens).
   - prefill: `dvd bench language --prompt-tokens T --decode-tokens L-1 --batch 1`'s
     `prefill_ms`, T = the serve run's total_input_tokens / completed (the request's real prompt
     length); decode: `decode_ms_per_step` x (L - 1) (the prefill yields the first token).
     The same at `--batch C` is recorded as a reference (the engine batches concurrent decodes,
     so batch 1 is an upper bound on the decode compute per request).
   - feature transfer: `dvd bench transport --modes tcp --tokens 64 --hidden 128` (the demo's
     tile frame: 64 tokens x the text hidden size 128, BF16 = 16 KiB), sender and receiver in one
     process pinned to one core, so 1 / tiles_per_s is both ends' CPU per frame; half is charged
     to the vision server, half to the language server. Back-to-back frames on one warm
     connection: a lower bound on what one frame per request costs.
   CPU, not wall: on a busy machine a pinned process's wall time includes the time other
   processes held its core. So each vision and language command runs twice, with `--rounds R`
   and `--rounds R + --extra-rounds`, and the transport with 1/8 and all of `--transport-frames`;
   the difference in the child's CPU time (getrusage, user + sys) over the difference in work is
   the CPU per round (per frame), loading and start-up cancelled out. Within a round it is split
   in the ratio of the benchmark's own fastest rounds (preprocess : encode, prefill : decode
   step x steps), the rounds least stretched by preemption.
   `--timing wall` uses the wall medians (or `--estimator min`: the fastest round) instead; all
   three are printed and kept in the JSON. CPU time is still not immune to a busy host: caches
   and memory bandwidth are shared, so compute costs more CPU-ms while another job runs.
3. Remainder per process = its CPU-ms per request - its measured components: that process's
   serving overhead (gRPC server work, protobuf, scheduling, batching, copies, wakeups,
   tokenisation and chat template, detokenisation and streaming). The gateway runs no model, so
   all of it is serving overhead (HTTP parsing, JSON, base64 and SHA-256 of the image, two gRPC
   calls out, SSE out). `dvd up` itself (the supervisor) is its own row.
4. Prints a Markdown table (component, CPU-ms per request, share of the total) and writes every
   figure to `--out` (JSON).

Caveats: components come from separate microbenchmarks on one core, not from inside the serving
processes (different cache state, batch shapes and thread counts: the servers' compute pools use
every core unless `--pin`), so a remainder is "this process's CPU beyond what the same compute
costs in a pinned single-threaded benchmark": it includes any extra CPU the serving process's
compute itself burns (pool wake-ups, spinning), not only RPC and scheduling. Decode is charged at
batch 1, an upper bound at concurrency > 1 (the batch-C figure is recorded), so the language
remainder is if anything understated. The demo's images are one tile each (max_patches 1), so
per-tile and per-image costs coincide, and one feature frame goes out per request. The gateway's
idle CPU (health checks) is shown, not subtracted.

Usage:
    DVD_CACHE_DIR=$(mktemp -d) python3 tools/peer/cost_breakdown.py --dvd target/release/dvd \
        --num-prompts 500 --max-concurrency 4 --out /tmp/cost.json
"""

import argparse
import base64
import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROLES = ("gateway", "vision", "language")


# ---------------------------------------------------------------------------------------------
# /proc


def proc_stat(pid):
    """(ppid, utime ticks, stime ticks) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]), int(rest[12])


def threads_sample(pid):
    """Sum over the live threads: on-CPU ns (schedstat), voluntary and involuntary switches."""
    ns = vol = invol = n = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {"threads": 0, "schedstat_ns": 0, "voluntary_ctxt": 0, "nonvoluntary_ctxt": 0}
    for tid in tids:
        try:
            ns += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol += int(line.split()[1])
            n += 1
        except (OSError, ValueError, IndexError):
            continue
    return {"threads": n, "schedstat_ns": ns, "voluntary_ctxt": vol, "nonvoluntary_ctxt": invol}


def sample(pids):
    """CPU counters of every process in `pids` (role -> pid), with a timestamp."""
    out = {"t": time.monotonic()}
    for role, pid in pids.items():
        st = proc_stat(pid)
        if st is None:
            raise RuntimeError(f"the {role} process ({pid}) is gone")
        out[role] = {"utime": st[1], "stime": st[2], **threads_sample(pid)}
    return out


def delta(a, b, role):
    keys = ("utime", "stime", "schedstat_ns", "voluntary_ctxt", "nonvoluntary_ctxt")
    d = {k: b[role][k] - a[role][k] for k in keys}
    d["cpu_ms"] = (d["utime"] + d["stime"]) * 1000.0 / CLK_TCK
    d["threads"] = b[role]["threads"]
    return d


def children(ppid):
    """role -> pid of the dvd server processes whose parent is `ppid`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(entry)
        if st is None or st[0] != ppid:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        for role in ROLES:
            if role in args[1:3] and "serve" in args[1:3]:
                found[role] = int(entry)
    return found


# ---------------------------------------------------------------------------------------------
# processes


def pin_to(core):
    return None if core is None else (lambda: os.sched_setaffinity(0, {core}))


def run_json(cmd, core=None, timeout=600):
    """Runs a command that prints one JSON object; returns it with the command's CPU s
    (getrusage of the reaped child) and wall s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=pin_to(core), timeout=timeout, check=False,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    text = proc.stdout.strip()
    value = json.loads(text[text.index("{") :])
    cpu = {
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "wall_s": wall,
    }
    return value, cpu


def stop(proc, extra_pids=()):
    """SIGTERM, then SIGKILL after 10 s; then the same for any leftover child."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for pid in extra_pids:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            if proc_stat(pid) is None:
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and proc_stat(pid) is not None:
                time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# the request image, captured from dvd bench serve itself


class _Stub(http.server.BaseHTTPRequestHandler):
    captured = []

    def log_message(self, *args):
        pass

    def _send(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "dvd-demo", "object": "model"}]})
        self._send(200, "application/json", body.encode())

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        _Stub.captured.append(self.rfile.read(n))
        chunk = {"id": "c", "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
        usage = {"id": "c", "object": "chat.completion.chunk", "choices": [],
                 "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1}}
        body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n"
        self._send(200, "text/event-stream", body.encode())


def capture_request_image(args, workdir):
    """The first request `dvd bench serve` sends with this run's seed and sizes: its body size
    and its JPEG, saved to workdir."""
    _Stub.captured = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cmd = [args.dvd, "bench", "serve", "--url", f"http://127.0.0.1:{server.server_port}",
               "--model", "dvd-demo", "--num-prompts", "1", "--output-len", str(args.output_len),
               "--image-sizes", str(args.image_size), "--seed", str(args.seed), "--json"]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
                       check=False)
    finally:
        server.shutdown()
        server.server_close()
    if not _Stub.captured:
        raise RuntimeError("dvd bench serve sent no request to the stub server")
    body = _Stub.captured[0]
    request = json.loads(body)
    url = next(part["image_url"]["url"] for msg in request["messages"]
               for part in (msg["content"] if isinstance(msg["content"], list) else [])
               if part.get("type") == "image_url")
    header, payload = url.split(",", 1)
    jpeg = base64.b64decode(payload)
    path = Path(workdir) / f"request-{args.image_size}px.jpg"
    path.write_bytes(jpeg)
    return {"path": str(path), "jpeg_bytes": len(jpeg), "request_body_bytes": len(body),
            "mime": header, "image_size_px": args.image_size}


# ---------------------------------------------------------------------------------------------
# components


def pick(report, key, range_key, estimator):
    if estimator == "min" and report.get(range_key):
        return report[range_key][0]
    return report[key]


def cpu_s(cpu):
    return cpu["user_s"] + cpu["sys_s"]


def components(args, image, prompt_tokens, tiles, frames):
    """Every component twice: the benchmark's own wall-clock figure (pinned to one core) and its
    CPU time, from two runs of the same command that differ only in rounds (or frames): the
    difference in the child's CPU (getrusage) over the difference in work is CPU per round with
    model loading and start-up cancelled out, and it does not count time the process waited for
    the core while other processes ran. Within a round the CPU is split in the ratio of the wall
    times of the fastest rounds (preprocess : encode, prefill : decode)."""
    core = args.core
    r, hi = args.rounds, args.rounds + args.extra_rounds
    out = {"core": core, "rounds": r, "extra_rounds": args.extra_rounds,
           "estimator": args.estimator, "timing": args.timing}
    decode_steps = max(args.output_len - 1, 0)

    def vision_cmd(rounds, extra=()):
        return [args.dvd, "bench", "vision", "--tiles", "1", "--rounds", str(rounds), "--json",
                *extra]

    def language_cmd(rounds, batch=1):
        return [args.dvd, "bench", "language", "--prompt-tokens", str(prompt_tokens),
                "--decode-tokens", str(max(decode_steps, 1)), "--batch", str(batch),
                "--rounds", str(rounds), "--json"]

    def transport_cmd(frames, rounds):
        return [args.dvd, "bench", "transport", "--modes", "tcp", "--tcp-frames", str(frames),
                "--tokens", str(args.tile_tokens), "--hidden", str(args.hidden), "--rounds",
                str(rounds), "--json"]

    img = ("--image", image["path"])
    vis, vis_cpu = run_json(vision_cmd(r, img), core)
    _, vis_cpu_hi = run_json(vision_cmd(hi, img), core)
    ref, _ = run_json(vision_cmd(r), core)
    lang, lang_cpu = run_json(language_cmd(r), core)
    _, lang_cpu_hi = run_json(language_cmd(hi), core)
    lang_c = None
    if args.max_concurrency > 1:
        lang_c, _ = run_json(language_cmd(r, args.max_concurrency), core)
    t_rounds = 3
    tr, tr_cpu = run_json(transport_cmd(args.transport_frames, t_rounds), core)
    _, tr_cpu_lo = run_json(transport_cmd(args.transport_frames // 8, t_rounds), core)
    tcp = dict(tr["modes"])["tcp"]
    tiles_per_s = tcp["tiles_per_s"]
    if args.estimator == "min":
        tiles_per_s = max(tcp["gbps_range"]) * 1e9 / tr["frame_bytes"]

    wall = {
        "preprocess_ms": pick(vis, "preprocess_ms", "preprocess_range_ms", args.estimator),
        "encode_ms": pick(vis, "encode_ms", "encode_range_ms", args.estimator),
        "prefill_ms": pick(lang, "prefill_ms", "prefill_range_ms", args.estimator),
        "decode_ms_per_step": pick(lang, "decode_ms_per_step", "decode_range_ms", args.estimator),
        "transfer_ms_per_frame": 1000.0 / tiles_per_s,
    }
    # The split within a round uses the fastest rounds: the ones least stretched by preemption.
    fast = {
        "preprocess_ms": vis["preprocess_range_ms"][0],
        "encode_ms": vis["encode_range_ms"][0],
        "prefill_ms": lang["prefill_range_ms"][0],
        "decode_ms_per_step": lang["decode_range_ms"][0],
    }
    vis_round = (cpu_s(vis_cpu_hi) - cpu_s(vis_cpu)) * 1000 / (hi - r)
    vis_fast = fast["preprocess_ms"] + fast["encode_ms"]
    lang_round = (cpu_s(lang_cpu_hi) - cpu_s(lang_cpu)) * 1000 / (hi - r)
    steps = max(decode_steps, 1)
    lang_fast = fast["prefill_ms"] + fast["decode_ms_per_step"] * steps
    tr_frames = t_rounds * (args.transport_frames - args.transport_frames // 8)
    cpu = {
        "vision_round_ms": vis_round,
        "language_round_ms": lang_round,
        "preprocess_ms": vis_round * fast["preprocess_ms"] / vis_fast,
        "encode_ms": vis_round * fast["encode_ms"] / vis_fast,
        "prefill_ms": lang_round * fast["prefill_ms"] / lang_fast,
        "decode_ms_per_step": lang_round * fast["decode_ms_per_step"] / lang_fast,
        "transfer_ms_per_frame": (cpu_s(tr_cpu) - cpu_s(tr_cpu_lo)) * 1000 / tr_frames,
    }
    chosen = cpu if args.timing == "cpu" else wall
    out["wall"] = wall
    out["cpu"] = cpu
    out["raw"] = {"vision": vis, "vision_bench_jpg_reference": ref, "language_batch1": lang,
                  "language_batch_c": lang_c, "transport": tr}
    out["command_cpu"] = {"vision": [vis_cpu, vis_cpu_hi], "language": [lang_cpu, lang_cpu_hi],
                          "transport": [tr_cpu_lo, tr_cpu]}
    out["preprocess_ms_per_image"] = chosen["preprocess_ms"]
    out["encode_ms_per_tile"] = chosen["encode_ms"]
    out["prefill_ms"] = chosen["prefill_ms"]
    out["decode_ms_per_step_batch1"] = chosen["decode_ms_per_step"]
    out["decode_steps"] = decode_steps
    if lang_c:
        out["decode_ms_per_sequence_step_batch_c_wall"] = (lang_c["decode_ms_per_step"]
                                                           / lang_c["batch"])
    out["transfer_ms_per_frame"] = chosen["transfer_ms_per_frame"]
    out["per_request"] = {
        "image decode + tiling": out["preprocess_ms_per_image"],
        "ViT encode": out["encode_ms_per_tile"] * tiles,
        "feature transfer (TCP, both ends)": out["transfer_ms_per_frame"] * frames,
        "prefill": out["prefill_ms"],
        "decode": out["decode_ms_per_step_batch1"] * decode_steps,
    }
    out["reference_bench_jpg"] = {"image_size": ref["image_size"],
                                  "preprocess_ms": ref["preprocess_ms"],
                                  "encode_ms": ref["encode_ms"]}
    return out


# ---------------------------------------------------------------------------------------------
# the serve runs


def start_up(args):
    cmd = [args.dvd, "up", "--port", str(args.port), "--ready-json"]
    if args.pin:
        a, b = args.pin
        cmd += ["--vision-cpus", str(a), "--language-cpus", str(b), "--gateway-cpus", str(b)]
    env = dict(os.environ)
    if args.compute_threads:
        env["RAYON_NUM_THREADS"] = str(args.compute_threads)
        env.pop("DVD_SIZED_COMPUTE_POOL", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        return _wait_ready(proc)
    except BaseException:
        stop(proc, children(proc.pid).values())
        raise


def _wait_ready(proc):
    line = []

    def read():
        line.append(proc.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=120)
    if not line or not line[0].strip():
        err = "" if proc.poll() is None else proc.stderr.read()[-2000:]
        raise RuntimeError(f"dvd up did not get ready: {err}")
    ready = json.loads(line[0])
    # Drain both pipes so the deployment never blocks on a full one.
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=lambda s=stream: [None for _ in s], daemon=True).start()
    deadline = time.monotonic() + 30
    pids = {}
    while time.monotonic() < deadline:
        pids = children(proc.pid)
        if len(pids) == len(ROLES):
            break
        time.sleep(0.1)
    if len(pids) != len(ROLES):
        raise RuntimeError(f"found only {sorted(pids)} under dvd up ({proc.pid})")
    pids["up"] = proc.pid
    return proc, ready, pids


def serve_cmd(args, api, url, n, seed):
    cmd = [args.dvd, "bench", "serve", "--url", url, "--api", api, "--model", "dvd-demo",
           "--num-prompts", str(n), "--max-concurrency", str(args.max_concurrency),
           "--output-len", str(args.output_len), "--ignore-eos", "--image-sizes",
           str(args.image_size), "--seed", str(seed), "--json"]
    return cmd


def measured_run(args, api, url, pids, index):
    """Warm-up, then the measured run: per-process CPU deltas and the client's CPU. Run `index`
    uses seed + index (warm-up: seed + 1000 + index), so no picture repeats across runs and
    neither the vision server's embedding cache nor the language server's prefix cache hits."""
    run_json(serve_cmd(args, api, url, args.warmup, args.seed + 1000 + index),
             timeout=args.timeout_s)
    time.sleep(0.5)
    before = sample(pids)
    report, client = run_json(serve_cmd(args, api, url, args.num_prompts, args.seed + index),
                              timeout=args.timeout_s)
    after = sample(pids)
    n = report["completed"]
    if n == 0 or report.get("failed"):
        raise RuntimeError(f"{api} run: {report.get('failed')} failed, {n} completed")
    wall = after["t"] - before["t"]
    procs = {}
    for role in pids:
        d = delta(before, after, role)
        d["cpu_ms_per_request"] = d["cpu_ms"] / n
        d["user_ms_per_request"] = d["utime"] * 1000.0 / CLK_TCK / n
        d["sys_ms_per_request"] = d["stime"] * 1000.0 / CLK_TCK / n
        d["schedstat_ms_per_request"] = d["schedstat_ns"] / 1e6 / n
        d["ctxt_switches_per_request"] = (d["voluntary_ctxt"] + d["nonvoluntary_ctxt"]) / n
        d["cpu_cores_busy"] = d["cpu_ms"] / 1000.0 / wall
        procs[role] = d
    keep = {k: v for k, v in report.items() if not isinstance(v, (list, dict)) or k == "probes"}
    return {
        "api": api,
        "seed": args.seed + index,
        "completed": n,
        "wall_s": wall,
        "processes": procs,
        "client": {**client, "cpu_ms_per_request": (client["user_s"] + client["sys_s"]) * 1000 / n},
        "serve_report": keep,
    }


def idle_rates(pids, seconds):
    a = sample(pids)
    time.sleep(seconds)
    b = sample(pids)
    wall = b["t"] - a["t"]
    # CPU-ms per wall-s, from the threads' schedstat (ns): a few seconds of idle CPU is below
    # one clock tick.
    return {role: delta(a, b, role)["schedstat_ns"] / 1e6 / wall for role in pids}


# ---------------------------------------------------------------------------------------------
# the breakdown


def breakdown(run, comp, idle):
    n = run["completed"]
    p = {role: run["processes"][role]["cpu_ms_per_request"] for role in run["processes"]}
    c = comp["per_request"]
    half = c["feature transfer (TCP, both ends)"] / 2
    vision_comp = c["image decode + tiling"] + c["ViT encode"] + half
    language_comp = c["prefill"] + c["decode"] + half
    rows = [
        ("image decode + tiling (vision server)", c["image decode + tiling"], "compute"),
        ("ViT encode, 1 tile (vision server)", c["ViT encode"], "compute"),
        ("feature transfer, TCP, both ends", c["feature transfer (TCP, both ends)"], "transfer"),
        ("prefill (language server)", c["prefill"], "compute"),
        (f"decode, {comp['decode_steps']} steps at batch 1 (language server)", c["decode"],
         "compute"),
        ("vision server: remainder (gRPC Encode, scheduling, copies)",
         p["vision"] - vision_comp, "overhead"),
        ("language server: remainder (gRPC Generate, tokenizer, scheduling, streaming)",
         p["language"] - language_comp, "overhead"),
        (f"gateway: all ({run['api']} front end, base64 + SHA-256, 2 gRPC calls out)",
         p["gateway"], "overhead"),
        ("dvd up supervisor", p["up"], "overhead"),
    ]
    total = sum(p.values())
    table = [{"component": name, "cpu_ms": value, "share": value / total, "kind": kind}
             for name, value, kind in rows]
    background = {role: idle[role] * run["wall_s"] / n for role in idle}
    return {
        "rows": table,
        "total_cpu_ms": total,
        "compute_cpu_ms": sum(r["cpu_ms"] for r in table if r["kind"] != "overhead"),
        "overhead_cpu_ms": sum(r["cpu_ms"] for r in table if r["kind"] == "overhead"),
        "process_cpu_ms": p,
        "idle_background_cpu_ms_per_request": background,
    }


def markdown(title, bd, run):
    lines = [f"### {title}", "", "| component | CPU-ms per request | share |", "|---|---|---|"]
    for r in bd["rows"]:
        lines.append(f"| {r['component']} | {r['cpu_ms']:.3f} | {100 * r['share']:.1f}% |")
    lines.append(f"| **total (4 processes)** | **{bd['total_cpu_ms']:.3f}** | 100% |")
    lines.append(f"| model compute + transfer (rows 1-5) | {bd['compute_cpu_ms']:.3f} | "
                 f"{100 * bd['compute_cpu_ms'] / bd['total_cpu_ms']:.1f}% |")
    lines.append(f"| serving overhead (rows 6-9) | {bd['overhead_cpu_ms']:.3f} | "
                 f"{100 * bd['overhead_cpu_ms'] / bd['total_cpu_ms']:.1f}% |")
    client = run["client"]["cpu_ms_per_request"]
    lines.append(f"| *benchmark client (excluded)* | *{client:.3f}* | |")
    lines += ["", "| process | CPU-ms/req | user | sys | schedstat (live threads) "
              "| ctx switches/req | threads | cores busy | idle background ms/req |",
              "|---|---|---|---|---|---|---|---|---|"]
    for role in ("gateway", "vision", "language", "up"):
        d = run["processes"][role]
        lines.append(
            f"| {role} | {d['cpu_ms_per_request']:.3f} | {d['user_ms_per_request']:.3f} | "
            f"{d['sys_ms_per_request']:.3f} | {d['schedstat_ms_per_request']:.3f} | "
            f"{d['ctxt_switches_per_request']:.1f} | {d['threads']} | {d['cpu_cores_busy']:.2f} | "
            f"{bd['idle_background_cpu_ms_per_request'][role]:.3f} |")
    rep = run["serve_report"]
    lines += ["", f"{run['completed']} requests in {run['wall_s']:.1f} s "
              f"({rep.get('request_throughput', 0):.1f} req/s, median TTFT "
              f"{rep.get('median_ttft_ms', 0):.1f} ms, median E2EL "
              f"{rep.get('median_e2el_ms', 0):.1f} ms)"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    default_dvd = REPO / "target" / "release" / "dvd"
    ap.add_argument("--dvd",
                    default=str(default_dvd) if default_dvd.exists() else shutil.which("dvd"),
                    help="the dvd binary (default: target/release/dvd, else dvd on PATH)")
    ap.add_argument("--num-prompts", type=int, default=500, help="measured requests per API")
    ap.add_argument("--max-concurrency", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=448, help="side of the square JPEGs")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up requests before each run")
    ap.add_argument("--port", type=int, default=18960, help="gateway HTTP port (gRPC: the next)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--core", type=int, default=0, help="core the component benchmarks run on")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds of each component")
    ap.add_argument("--estimator", choices=("median", "min"), default="median",
                    help="wall figure of a component: median or fastest round")
    ap.add_argument("--timing", choices=("cpu", "wall"), default="cpu",
                    help="component figures from CPU-time differencing (default) or wall time")
    ap.add_argument("--extra-rounds", type=int, default=50,
                    help="rounds the second (CPU-differencing) run of each component adds")
    ap.add_argument("--tile-tokens", type=int, default=64, help="feature rows per tile frame")
    ap.add_argument("--hidden", type=int, default=128, help="text hidden size (frame columns)")
    ap.add_argument("--transport-frames", type=int, default=4000)
    ap.add_argument("--idle-s", type=float, default=5.0, help="idle CPU measurement, seconds")
    ap.add_argument("--pin", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                    metavar="V,L", help="run dvd up with --vision-cpus V --language-cpus L "
                    "--gateway-cpus L (each server's compute pool sized to its core)")
    ap.add_argument("--compute-threads", type=int, default=None, metavar="N",
                    help="set RAYON_NUM_THREADS=N for the deployment (every server's CPU compute "
                    "pool; default: dvd sizes it to the cores each process may use)")
    ap.add_argument("--skip-grpc", action="store_true", help="no run through the gRPC API")
    ap.add_argument("--timeout-s", type=int, default=1200)
    ap.add_argument("--out", type=Path, help="write every figure here (JSON)")
    args = ap.parse_args()
    if not args.dvd:
        sys.exit("no dvd binary: pass --dvd")
    if "DVD_CACHE_DIR" not in os.environ:
        print("note: DVD_CACHE_DIR is not set; dvd uses its default cache", file=sys.stderr)

    result = {"clk_tck": CLK_TCK, "tick_ms": 1000.0 / CLK_TCK, "cpus": os.cpu_count(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="dvd-cost-") as workdir:
        image = capture_request_image(args, workdir)
        result["request_image"] = image
        print(f"captured request: {image['request_body_bytes']} B body, "
              f"{image['jpeg_bytes']} B JPEG ({args.image_size} px)", file=sys.stderr)
        up = None
        pids = {}
        runs = []
        try:
            up, ready, pids = start_up(args)
            result["deployment"] = {"ready": ready, "pids": pids}
            result["idle_cpu_ms_per_s"] = idle_rates(pids, args.idle_s)
            apis = [("openai", f"http://{ready['http']}")]
            if not args.skip_grpc:
                apis.append(("grpc", f"http://{ready['grpc']}"))
            for index, (api, url) in enumerate(apis):
                print(f"{api}: {args.warmup} warm-up + {args.num_prompts} measured requests, "
                      f"concurrency {args.max_concurrency}", file=sys.stderr)
                runs.append(measured_run(args, api, url, pids, index))
        finally:
            stop(up, [pid for role, pid in pids.items() if role != "up"])
        first = runs[0]
        n = first["completed"]
        rep = first["serve_report"]
        prompt_tokens = round(rep["total_input_tokens"] / n)
        image_tokens = rep.get("total_image_tokens", 0) / n
        tiles = max(1, round(image_tokens / args.tile_tokens))
        print(f"components on core {args.core}: prompt {prompt_tokens} tokens, {tiles} tile(s)",
              file=sys.stderr)
        comp = components(args, image, prompt_tokens, tiles, frames=tiles)
    comp["prompt_tokens"] = prompt_tokens
    comp["image_tokens_per_request"] = image_tokens
    comp["tiles_per_request"] = tiles
    result["components"] = comp
    result["runs"] = runs
    result["breakdowns"] = {}
    text = []
    for run in runs:
        bd = breakdown(run, comp, result["idle_cpu_ms_per_s"])
        result["breakdowns"][run["api"]] = bd
        text.append(markdown(f"{run['api']} API: {n} requests, concurrency "
                             f"{args.max_concurrency}, {args.output_len} output tokens, "
                             f"{args.image_size}-px JPEG", bd, run))
    if len(runs) == 2:
        g = {r["api"]: r["processes"]["gateway"]["cpu_ms_per_request"] for r in runs}
        result["http_json_sse_over_grpc_gateway_ms"] = g["openai"] - g["grpc"]
        text.append(f"Gateway CPU per request: OpenAI HTTP {g['openai']:.3f} ms, gRPC "
                    f"{g['grpc']:.3f} ms: HTTP/1.1 + JSON + SSE cost "
                    f"{g['openai'] - g['grpc']:.3f} ms over the gRPC front end.")
    ref = comp["reference_bench_jpg"]
    w, c = comp["wall"], comp["cpu"]
    text.append(
        f"| component (core {args.core}) | CPU-time differencing | wall, {args.estimator} of "
        f"{args.rounds} rounds | fastest round |\n|---|---|---|---|\n"
        f"| preprocess, {args.image_size}-px request JPEG ({image['jpeg_bytes']} B) | "
        f"{c['preprocess_ms']:.3f} | {w['preprocess_ms']:.3f} | "
        f"{comp['raw']['vision']['preprocess_range_ms'][0]:.3f} |\n"
        f"| ViT, 1 tile | {c['encode_ms']:.3f} | {w['encode_ms']:.3f} | "
        f"{comp['raw']['vision']['encode_range_ms'][0]:.3f} |\n"
        f"| prefill, {prompt_tokens} tokens | {c['prefill_ms']:.3f} | {w['prefill_ms']:.3f} | "
        f"{comp['raw']['language_batch1']['prefill_range_ms'][0]:.3f} |\n"
        f"| decode step, batch 1 | {c['decode_ms_per_step']:.3f} | {w['decode_ms_per_step']:.3f} | "
        f"{comp['raw']['language_batch1']['decode_range_ms'][0]:.3f} |\n"
        f"| feature frame, {args.tile_tokens}x{args.hidden} BF16 | "
        f"{c['transfer_ms_per_frame']:.4f} | {w['transfer_ms_per_frame']:.4f} | |\n\n"
        f"The table above uses the {args.timing} column. Reference: bench.jpg "
        f"{ref['image_size'][0]}x{ref['image_size'][1]} preprocess {ref['preprocess_ms']:.3f} ms "
        f"wall (the issue's ~23 ms figure)"
        + (f"; decode at batch {args.max_concurrency}: "
           f"{comp['decode_ms_per_sequence_step_batch_c_wall']:.3f} ms wall per sequence-step"
           if "decode_ms_per_sequence_step_batch_c_wall" in comp else "")
        + f". Clock tick {1000 / CLK_TCK:.0f} ms = {1000 / CLK_TCK / n:.3f} ms per request.")
    result["loadavg_end"] = os.getloadavg()
    text.append(f"Load average at start {result['loadavg_start'][0]:.2f}, at end "
                f"{result['loadavg_end'][0]:.2f} ({os.cpu_count()} CPUs).")
    print("\n\n".join(text))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
