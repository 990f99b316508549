"""Checks on deploy/ that schemas cannot make (tools/deploy/check.sh runs it in its venv).

    consistency.py ROOT [RENDERED.yaml ...]

Rendered manifests (kustomize output): drain timeouts below grace periods, $(VAR)s defined,
ConfigMap keys, volumes and Secret items behind the TLS flags, probe and Service ports,
selectors, quantities, CUDA images only with a GPU, the gateway config's keys and pool names.
Always: every deploy/**/gateway.toml's keys, the Dockerfile (parses, stages exist, RUN scripts
pass `sh -n`), .dockerignore (keeps what the build reads) and the systemd units (stop timeouts
above drains). Prints one line per problem and exits 1 if there is any.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

PROBLEMS: list[str] = []

# Every key the gateway accepts (gateway/src/config.rs: deny_unknown_fields).
GATEWAY_KEYS = {
    "server": {"http", "grpc", "model", "max_model_len"},
    "vision": {"addresses", "dns"},
    "language": {"addresses", "dns", "feature_tls_name"},
    "health": {"interval_ms", "timeout_ms", "resolve_interval_ms", "cooldown_ms"},
    "limits": {
        "max_inflight",
        "max_body_mib",
        "max_images",
        "max_image_mib",
        "max_tiles_per_image",
        "default_max_tokens",
        "feature_timeout_ms",
        "request_timeout_s",
        "attempts",
    },
    "tls": {"ca_file", "cert_file", "key_file", "vision_server_name", "language_server_name"},
    "images": {
        "allow_local_files",
        "fetch",
        "fetch_allow_http",
        "fetch_allowed_hosts",
        "fetch_allowed_networks",
        "fetch_timeout_s",
        "fetch_max_redirects",
        "fetch_ca_file",
    },
    "video": {"max_videos", "max_frames", "default_frames", "max_video_mib"},
}
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
INT_OR_PERCENT = re.compile(r"^\d+%$")


def problem(where: str, message: str) -> None:
    PROBLEMS.append(f"{where}: {message}")


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=V` or `--name V` in args."""
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def quantity(where: str, value) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if not isinstance(value, str) or not QUANTITY.match(value):
        problem(where, f"not a quantity: {value!r}")


def int_or_percent(where: str, value) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, str) or not INT_OR_PERCENT.match(value):
        problem(where, f"not an integer or a percentage: {value!r}")


def expand(arg: str, values: dict[str, str]) -> str:
    """`$(VAR)` references replaced as the kubelet does (unknown ones stay as they are)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m[1], m[0]), arg)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_gateway_toml(where: str, text: str, services: dict | None) -> None:
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(where, f"gateway.toml: {e}")
        return
    for section, table in config.items():
        if section not in GATEWAY_KEYS:
            problem(where, f"gateway.toml: unknown section [{section}]")
            continue
        for key in table:
            if key not in GATEWAY_KEYS[section]:
                problem(where, f"gateway.toml: unknown key {section}.{key}")
    for pool in ("vision", "language"):
        for target in config.get(pool, {}).get("dns", []) if services is not None else []:
            host, _, port = target.rpartition(":")
            svc = services.get(host.split(".")[0])
            if svc is None:
                problem(where, f"gateway.toml: [{pool}] dns {target}: no Service {host}")
                continue
            if svc["spec"].get("clusterIP") != "None":
                problem(where, f"gateway.toml: [{pool}] dns {target}: Service is not headless")
            if int(port) not in {p["port"] for p in svc["spec"].get("ports", [])}:
                problem(where, f"gateway.toml: [{pool}] dns {target}: Service has no port {port}")


def check_rendered(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config_maps = by_kind.get("ConfigMap", {})
    claims = by_kind.get("PersistentVolumeClaim", {})
    services = by_kind.get("Service", {})
    deployments = by_kind.get("Deployment", {})
    name = path.name

    quic = False
    vision_tls = True
    for dname, dep in deployments.items():
        where = f"{name} Deployment/{dname}"
        strategy = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
        for key in ("maxSurge", "maxUnavailable"):
            if key in strategy:
                int_or_percent(where, strategy[key])
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if not selects(dep["spec"]["selector"]["matchLabels"], labels):
            problem(where, "selector does not match the template's labels")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problem(where, "pod securityContext.runAsNonRoot is not true")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for vname, vol in volumes.items():
            if "persistentVolumeClaim" in vol and vol["persistentVolumeClaim"]["claimName"] not in claims:
                problem(where, f"volume {vname}: no PersistentVolumeClaim in the render")
            if "configMap" in vol and vol["configMap"]["name"] not in config_maps:
                problem(where, f"volume {vname}: no ConfigMap {vol['configMap']['name']}")
            if "emptyDir" in vol and "sizeLimit" in vol["emptyDir"]:
                quantity(f"{where} volume {vname}", vol["emptyDir"]["sizeLimit"])
        for c in pod["containers"]:
            cwhere = f"{where} container {c['name']}"
            args = c.get("args", [])
            env = {e["name"]: e for e in c.get("env", [])}
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref and not ref.get("optional") and ref["name"] not in config_maps:
                    problem(cwhere, f"envFrom: no ConfigMap {ref['name']}")
            for arg in args:
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    if var not in env:
                        problem(cwhere, f"{arg}: ${var} is not in env")
            for e in env.values():
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and not ref.get("optional"):
                    cm = config_maps.get(ref["name"])
                    if cm is None or ref["key"] not in cm.get("data", {}):
                        problem(cwhere, f"env {e['name']}: no key {ref['key']} in ConfigMap {ref['name']}")
            # Args as the kubelet expands them.
            values = {}
            for e in env.values():
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if "value" in e:
                    values[e["name"]] = e["value"]
                elif ref and ref["name"] in config_maps:
                    values[e["name"]] = config_maps[ref["name"]].get("data", {}).get(ref["key"], "")
            args = [expand(a, values) for a in args]
            mounts = c.get("volumeMounts", [])
            for arg in args:
                file = arg.split("=", 1)[1] if arg.startswith("--tls-") and "=" in arg else None
                if file is None:
                    continue
                mount = next((m for m in mounts if file.startswith(m["mountPath"].rstrip("/") + "/")), None)
                if mount is None:
                    problem(cwhere, f"{arg}: no volume mounted there")
                    continue
                secret = volumes.get(mount["name"], {}).get("secret")
                if secret is not None:
                    rel = file[len(mount["mountPath"].rstrip("/")) + 1 :]
                    if "items" in secret and rel not in {i["path"] for i in secret["items"]}:
                        problem(cwhere, f"{arg}: Secret volume {mount['name']} has no item {rel}")
                    if secret.get("optional"):
                        problem(cwhere, f"{arg}: Secret volume {mount['name']} is optional but the args need it")
            role = args[0] if args else ""
            if role == "language" and flag(args, "transport") == "quic":
                for need in ("tls-cert", "tls-key"):
                    if flag(args, need) is None:
                        problem(cwhere, f"QUIC transport without --{need}")
                quic = True
            if role == "vision":
                vision_tls = flag(args, "tls-ca") is not None
            drain = flag(args, "drain-timeout-s")
            if drain is None:
                problem(cwhere, "no --drain-timeout-s")
            else:
                stop = c.get("lifecycle", {}).get("preStop", {})
                sleep = 0
                if "sleep" in stop:
                    sleep = int(stop["sleep"]["seconds"])
                elif "exec" in stop and Path(stop["exec"]["command"][0]).name == "sleep":
                    sleep = int(stop["exec"]["command"][1])
                sleep += int(flag(args, "drain-delay-s") or 0)  # the gateway's own not-ready delay
                if grace <= int(drain) + sleep:
                    problem(cwhere, f"terminationGracePeriodSeconds {grace} <= delay {sleep} + drain {drain}")
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
                problem(cwhere, "needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problem(cwhere, "capabilities are not dropped (drop: [ALL])")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problem(cwhere, f"volumeMount {m['name']}: no such volume")
            ports = {p["name"]: p for p in c.get("ports", []) if "name" in p}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is None:
                    problem(cwhere, f"no httpGet {probe}")
                elif isinstance(port, str) and port not in ports:
                    problem(cwhere, f"{probe}: no container port named {port}")
            for kind in ("requests", "limits"):
                for res, value in c.get("resources", {}).get(kind, {}).items():
                    quantity(f"{cwhere} {kind}.{res}", value)
            resources = c.get("resources", {})
            # The CUDA binary links libcuda.so.1: without a GPU mounted it does not start.
            if "cuda" in c.get("image", "").rsplit(":", 1)[-1] and "nvidia.com/gpu" not in resources.get("limits", {}):
                problem(cwhere, f"CUDA image {c['image']} without an nvidia.com/gpu limit")
            gpus = resources.get("requests", {}).get("nvidia.com/gpu")
            if gpus is not None and gpus != resources.get("limits", {}).get("nvidia.com/gpu"):
                problem(cwhere, "nvidia.com/gpu requests and limits differ")
            annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
            scrape_port = annotations.get("prometheus.io/port")
            if scrape_port and int(scrape_port) not in {p["containerPort"] for p in c.get("ports", [])}:
                problem(cwhere, f"prometheus.io/port {scrape_port} is not a container port")

    if quic and not vision_tls:
        problem(name, "language servers use QUIC but vision servers have no --tls-ca")

    for sname, svc in services.items():
        where = f"{name} Service/{sname}"
        pods = [
            d
            for d in deployments.values()
            if selects(svc["spec"].get("selector", {}), d["spec"]["template"]["metadata"].get("labels", {}))
        ]
        if not pods:
            problem(where, "selects no Deployment's pods")
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            for d in pods:
                ports = [cp for c in d["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])]
                ok = any(
                    (cp.get("name") == target or cp["containerPort"] == target)
                    and cp.get("protocol", "TCP") == p.get("protocol", "TCP")
                    for cp in ports
                )
                if not ok:
                    problem(where, f"port {p.get('name')}: no {p.get('protocol', 'TCP')} container port {target}")

    for pname, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        where = f"{name} PodDisruptionBudget/{pname}"
        for key in ("maxUnavailable", "minAvailable"):
            if key in pdb["spec"]:
                int_or_percent(where, pdb["spec"][key])
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(selects(sel, d["spec"]["template"]["metadata"].get("labels", {})) for d in deployments.values()):
            problem(where, "selects no Deployment's pods")

    for hname, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        where = f"{name} HorizontalPodAutoscaler/{hname}"
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in deployments:
            problem(where, f"scaleTargetRef {ref['kind']}/{ref['name']} is not in the render")
        elif "replicas" in deployments[ref["name"]]["spec"]:
            problem(where, "the Deployment sets replicas: every apply would fight the autoscaler")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problem(where, "minReplicas > maxReplicas")
        for m in hpa["spec"].get("metrics", []):
            target = m.get(m["type"][0].lower() + m["type"][1:], {}).get("target", {})
            for key in ("averageValue", "value"):
                if key in target:
                    quantity(where, target[key])

    for cname, cm in config_maps.items():
        if "gateway.toml" in cm.get("data", {}):
            check_gateway_toml(f"{name} ConfigMap/{cname}", cm["data"]["gateway.toml"], services)
    for cname, claim in claims.items():
        quantity(f"{name} PersistentVolumeClaim/{cname}", claim["spec"]["resources"]["requests"]["storage"])


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rules: patterns from the context root, `**` any depth, a match on a parent
    directory excludes what is under it, `!` re-includes, the last match wins."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex += "/?"
                    i += 1
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def check_docker(root: Path) -> None:
    import dockerfile

    path = root / "deploy/docker/Dockerfile"
    try:
        commands = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        problem(str(path), f"does not parse: {e}")
        return
    stages: set[str] = set()
    args: dict[str, str] = {}
    for c in commands:
        if c.cmd == "ARG" and not stages and "=" in c.value[0]:
            k, v = c.value[0].split("=", 1)
            args[k] = v
        if c.cmd == "FROM":
            image = c.value[0]
            if image.startswith("runtime-") and "${CUDA}" in image:
                for cuda in ("0", "1"):
                    if image.replace("${CUDA}", cuda) not in stages:
                        problem(str(path), f"FROM {image}: no stage {image.replace('${CUDA}', cuda)}")
            elif not image.startswith("$") and ":" not in image and image not in stages:
                problem(str(path), f"FROM {image}: no such stage or tagged image")
            if len(c.value) == 3:
                stages.add(c.value[2])
        if c.cmd == "COPY":
            for f in c.flags:
                if f.startswith("--from=") and f.split("=", 1)[1] not in stages:
                    problem(str(path), f"COPY {f}: no such stage")
        if c.cmd == "RUN":
            script = c.value[0]
            check = subprocess.run(["sh", "-n", "-c", script], check=False, capture_output=True, text=True)
            if check.returncode != 0:
                problem(str(path), f"RUN script does not parse: {check.stderr.strip()}")
        if c.cmd == "USER" and c.value[0].split(":")[0] in {"0", "root"}:
            problem(str(path), "runs as root")
    if args.get("CUDA") != "0":
        problem(str(path), "the CUDA build argument must default to 0 (CPU)")
    build_sh = (root / "tools/cuda/build.sh").read_text()
    if "target/cuda}" not in build_sh or "target/cuda/release/dvd" not in path.read_text():
        problem(str(path), "tools/cuda/build.sh no longer puts the binary where the Dockerfile copies it from")

    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    needed = [
        "Cargo.toml",
        "Cargo.lock",
        "tools/cuda/build.sh",
        "tools/cuda/install_toolkit.sh",
        "tools/cuda/requirements-toolkit.txt",
        "tools/cuda/make_driver_stub.py",
    ]
    workspace = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["members"]
    needed += [f"{m}/Cargo.toml" for m in workspace] + [f"{m}/src" for m in workspace]
    needed += [str(p.relative_to(root)) for m in workspace for p in (root / m).glob("build.rs")]
    needed += [str(p.relative_to(root)) for m in workspace for p in (root / m).glob("proto/**/*.proto")]
    # Files the binary compiles in.
    for rs in root.glob("*/src/**/*.rs"):
        for rel in re.findall(r'include_(?:bytes|str)!\("([^"]+)"\)', rs.read_text()):
            needed.append(str((rs.parent / rel).resolve().relative_to(root.resolve())))
    for n in needed:
        if dockerignore_excludes(patterns, n):
            problem(".dockerignore", f"excludes {n}, which the build needs")
    for n in ["target", ".git", "docs/results"]:
        if not dockerignore_excludes(patterns, n):
            problem(".dockerignore", f"does not exclude {n}")


def check_systemd(root: Path) -> None:
    for unit in sorted((root / "deploy/systemd").glob("*.service")):
        text = unit.read_text().replace("\\\n", " ")
        exec_start = re.search(r"^ExecStart=(.*)$", text, re.MULTILINE)
        stop = re.search(r"^TimeoutStopSec=(\d+)s?$", text, re.MULTILINE)
        if not exec_start or not stop:
            problem(str(unit), "needs ExecStart= and TimeoutStopSec= (seconds)")
            continue
        drain = flag(exec_start.group(1).split(), "drain-timeout-s")
        if drain is None or not drain.isdigit():
            problem(str(unit), "ExecStart needs a literal --drain-timeout-s (TimeoutStopSec is compared to it)")
        elif int(stop.group(1)) <= int(drain):
            problem(str(unit), f"TimeoutStopSec {stop.group(1)} <= --drain-timeout-s {drain}")
        for key in ("KillSignal=SIGTERM", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict"):
            if not re.search(rf"^{re.escape(key)}$", text, re.MULTILINE):
                problem(str(unit), f"missing {key}")


def main() -> int:
    root = Path(sys.argv[1])
    for rendered in sys.argv[2:]:
        check_rendered(Path(rendered))
    for toml in sorted((root / "deploy").rglob("gateway.toml")):
        check_gateway_toml(str(toml.relative_to(root)), toml.read_text(), None)
    check_docker(root)
    check_systemd(root)
    for p in PROBLEMS:
        print(f"ERROR {p}")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
