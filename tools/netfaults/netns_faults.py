#!/usr/bin/env python3
"""Network faults between real dvd processes in separate network namespaces (Linux, root).

Topology: namespaces dvd-gw (gateway), dvd-vis1, dvd-vis2 (vision servers) and dvd-lang
(language server). The control network, bridge br-dvd (10.77.0.0/24, with 10.77.0.254 in the
caller's namespace, from where this script sends requests), carries HTTP and gRPC. The feature
network, bridge br-feat (10.78.0.0/24), joins only the vision servers and the language server's
feature listener, so faults there touch the feature path and nothing else.

This kernel has no `netem` (nor `prio`, nor iptables), so latency and random loss are left to
the loopback proxy of `cli/tests/faults.rs`. What namespaces add here: the kernel's own TCP and
UDP between separate network stacks, a token-bucket limit (`tbf`) to slow the feature path, and
partitions as links going down.

Cases, per feature transport (tcp, quic), with the demo model:
- baseline: image requests (a new image each, so every one is encoded and sent);
- the feature path limited to 2 Mbit/s;
- a partition of the feature path of the vision server serving a request, mid-request (path
  limited to 200 kbit/s, link down 0.3 s after its encoder ran): the request must be re-encoded
  on the other vision server within the feature timeout, with nothing left held; then requests
  while the partition lasts;
- the vision server serving a request killed (SIGKILL) mid-request: retried on the other one.

    python3 tools/netfaults/netns_faults.py --dvd target/debug/dvd --out netfaults.json

It removes the namespaces and bridges when it ends (also after a failure).
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
HOSTS = {"gw": 1, "vis1": 2, "lang": 3, "vis2": 4}
FEATURE_TIMEOUT_MS = 5000


def sh(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def ip(host):
    return f"10.77.0.{HOSTS[host]}"


def in_ns(host, *cmd):
    return ["ip", "netns", "exec", f"dvd-{host}", *cmd]


def fip(host):
    return f"10.78.0.{HOSTS[host]}"


def setup():
    teardown()
    for bridge, net in (("br-dvd", "10.77.0.254/24"), ("br-feat", "10.78.0.254/24")):
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "addr", "add", net, "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
    for host in HOSTS:
        ns = f"dvd-{host}"
        sh("ip", "netns", "add", ns)
        links = [("v", "e", "br-dvd", ip(host))]
        if host != "gw":
            links.append(("w", "f", "br-feat", fip(host)))
        for outer, inner, bridge, addr in links:
            sh("ip", "link", "add", f"{outer}-{host}", "type", "veth", "peer", "name", f"{inner}-{host}")
            sh("ip", "link", "set", f"{inner}-{host}", "netns", ns)
            sh("ip", "link", "set", f"{outer}-{host}", "master", bridge)
            sh("ip", "link", "set", f"{outer}-{host}", "up")
            sh(*in_ns(host, "ip", "addr", "add", f"{addr}/24", "dev", f"{inner}-{host}"))
            sh(*in_ns(host, "ip", "link", "set", f"{inner}-{host}", "up"))
        sh(*in_ns(host, "ip", "link", "set", "lo", "up"))


def limit(vision, rate):
    """Limits `vision`'s feature link to `rate` (e.g. "2mbit") both ways; None lifts it."""
    for cmd in (in_ns(vision, "tc", "qdisc", "del", "dev", f"f-{vision}", "root"),
                ["tc", "qdisc", "del", "dev", f"w-{vision}", "root"]):
        sh(*cmd, check=False)
    if rate:
        sh(*in_ns(vision, "tc", "qdisc", "add", "dev", f"f-{vision}", "root", "tbf", "rate", rate,
                  "burst", "4kb", "latency", "2s"))
        sh("tc", "qdisc", "add", "dev", f"w-{vision}", "root", "tbf", "rate", rate,
           "burst", "4kb", "latency", "2s")


def partition(vision, cut):
    """Takes `vision`'s feature link down (or up again)."""
    sh("ip", "link", "set", f"w-{vision}", "down" if cut else "up")


def teardown():
    for host in HOSTS:
        sh("ip", "netns", "del", f"dvd-{host}", check=False)
    for bridge in ("br-dvd", "br-feat"):
        sh("ip", "link", "del", bridge, check=False)


def start(host, dvd, args):
    proc = subprocess.Popen(in_ns(host, dvd, *args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    try:
        return proc, json.loads(line)
    except json.JSONDecodeError:
        proc.kill()
        raise RuntimeError(f"{host}: {args[0]} did not start: {line!r}")


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def metric(page, name):
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Deployment:
    def __init__(self, dvd, transport, tmp):
        self.procs = {}
        tls = os.path.join(tmp, "tls")
        sh(dvd, "tls", "self-signed", "--name", "dvd-language", "--out", tls)
        lang_args = ["language", "serve", "--model", "dvd-demo", "--listen", f"{ip('lang')}:50061",
                     "--feature-listen", f"{fip('lang')}:50062", "--ops-listen", f"{ip('lang')}:9090",
                     "--kv-cache-mib", "16", "--transport", transport]
        if transport == "quic":
            lang_args += ["--tls-cert", f"{tls}/cert.pem", "--tls-key", f"{tls}/key.pem"]
        self.procs["lang"], _ = start("lang", dvd, lang_args)
        for v in ("vis1", "vis2"):
            args = ["vision", "serve", "--model", "dvd-demo", "--listen", f"{ip(v)}:50051",
                    "--ops-listen", f"{ip(v)}:9090"]
            if transport == "quic":
                args += ["--tls-ca", f"{tls}/cert.pem"]
            self.procs[v], _ = start(v, dvd, args)
        config = os.path.join(tmp, f"gateway-{transport}.toml")
        with open(config, "w") as f:
            f.write(
                f'[server]\nhttp = "{ip("gw")}:8000"\ngrpc = "{ip("gw")}:8001"\nmodel = "dvd-demo"\n'
                f'[vision]\naddresses = ["{ip("vis1")}:50051", "{ip("vis2")}:50051"]\n'
                f'[language]\naddresses = ["{ip("lang")}:50061"]\nfeature_tls_name = "dvd-language"\n'
                f"[health]\ninterval_ms = 500\n"
                f"[limits]\nattempts = 3\nfeature_timeout_ms = {FEATURE_TIMEOUT_MS}\nrequest_timeout_s = 60\n"
            )
        self.procs["gw"], _ = start("gw", dvd, ["gateway", "serve", "--config", config])
        self.url = f"http://{ip('gw')}:8000"
        deadline = time.time() + 60
        while True:
            try:
                status, body = get(self.url + "/health")
                if status == 200 and json.loads(body).get("vision_servers_ready") == 2:
                    break
            except Exception:
                pass
            if time.time() > deadline:
                raise RuntimeError("the gateway never saw both vision servers")
            time.sleep(0.2)
        self.png = open(IMAGE, "rb").read()

    def ask(self, salt):
        """An image request for a new image (salted); (status, seconds, answer)."""
        png = self.png + salt
        body = json.dumps({
            "model": "dvd-demo",
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                {"type": "text", "text": "What shape is in the image?"},
            ]}],
            "max_tokens": 8, "temperature": 0,
        }).encode()
        req = urllib.request.Request(self.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        started = time.time()
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                answer = json.loads(r.read())["choices"][0]["message"]["content"]
                return r.status, time.time() - started, answer
        except urllib.error.HTTPError as e:
            return e.code, time.time() - started, e.read().decode()[:200]

    def encoded(self, vision):
        return metric(get(f"http://{ip(vision)}:9090/metrics")[1], "dvd_vision_tiles_encoded_total")

    def salt_for(self, vision, rng):
        """A salt whose image the gateway routes to `vision` (rendezvous hashing of the image)."""
        for _ in range(40):
            salt = rng.randbytes(8)
            before = self.encoded(vision)
            status, _, _ = self.ask(salt)
            if status == 200 and self.encoded(vision) > before:
                return salt
        raise RuntimeError(f"no image routed to {vision}")

    def held(self):
        page = get(f"http://{ip('lang')}:9090/metrics")[1]
        out = {m: metric(page, m) for m in ("dvd_language_running_sequences", "dvd_language_waiting_sequences",
                                            "dvd_language_waiting_for_features", "dvd_language_kv_blocks_in_use")}
        for v in ("vis1", "vis2"):
            if self.procs[v].poll() is None:
                page = get(f"http://{ip(v)}:9090/metrics")[1]
                for m in ("dvd_vision_queued_tiles", "dvd_vision_running_tiles", "dvd_vision_queued_requests"):
                    out[f"{v}:{m}"] = metric(page, m)
        return out

    def wait_released(self, limit=15):
        deadline = time.time() + limit
        while time.time() < deadline:
            held = self.held()
            if not any(held.values()):
                return True, held
            time.sleep(0.2)
        return False, self.held()

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()


def burst(d, rng, n):
    results = [d.ask(rng.randbytes(8)) for _ in range(n)]
    ok = [r for r in results if r[0] == 200 and r[2] == "circle"]
    return {"requests": n, "ok": len(ok), "median_s": round(statistics.median(r[1] for r in results), 3),
            "max_s": round(max(r[1] for r in results), 3),
            "not_ok": [f"{r[0]} {r[2]}" for r in results if r not in ok][:5]}


def mid_request(d, rng, fault):
    """A new image request with both vision servers' feature links at 200 kbit/s; once it is
    known which vision server encodes it, `fault(vision)` strikes 0.3 s later."""
    for v in ("vis1", "vis2"):
        limit(v, "200kbit")
    before = {v: d.encoded(v) for v in ("vis1", "vis2")}
    result = {}
    t = threading.Thread(target=lambda: result.update(r=d.ask(rng.randbytes(8))))
    t.start()
    began = time.time()
    target = None
    while target is None and time.time() - began < 5:
        for v in ("vis1", "vis2"):
            if d.procs[v].poll() is None and d.encoded(v) > before[v]:
                target = v
        time.sleep(0.01)
    if target:
        time.sleep(0.3)
        fault(target)
    t.join(120)
    status, seconds, answer = result.get("r", (None, None, "no answer"))
    released, held = d.wait_released()
    return {"struck": target, "status": status, "answer": answer,
            "seconds": round(seconds, 3) if seconds else None,
            "released": released, "held_after": {k: v for k, v in held.items() if v}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dvd", default=os.path.join(ROOT, "target", "debug", "dvd"))
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (ip netns, tc)")
    dvd = os.path.abspath(args.dvd)
    report = {}
    rng = random.Random(5)
    try:
        setup()
        for transport in ("tcp", "quic"):
            tmp = tempfile.mkdtemp(prefix=f"dvd-netns-{transport}-")
            d = Deployment(dvd, transport, tmp)
            try:
                r = {}
                r["baseline"] = burst(d, rng, args.requests)
                for v in ("vis1", "vis2"):
                    limit(v, "2mbit")
                r["feature_path_2mbit"] = burst(d, rng, args.requests)
                r["partition_mid_request"] = mid_request(d, rng, lambda v: partition(v, True))
                # The partition lasts: requests routed to the cut-off server wait out the
                # feature timeout, then are re-encoded on the other.
                for v in ("vis1", "vis2"):
                    limit(v, None)
                r["while_partitioned"] = burst(d, rng, 4)
                for v in ("vis1", "vis2"):
                    partition(v, False)
                r["vision_killed_mid_request"] = mid_request(d, rng, lambda v: d.procs[v].kill())
                for v in ("vis1", "vis2"):
                    limit(v, None)
                r["after_kill"] = burst(d, rng, 4)
                report[transport] = r
                print(transport, json.dumps(r, indent=1), flush=True)
            finally:
                d.stop()
    finally:
        teardown()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
