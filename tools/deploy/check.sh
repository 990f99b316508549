#!/usr/bin/env bash
# Offline checks of the deployment assets in deploy/ (nothing is built or applied):
#   - yamllint (deploy/.yamllint) over deploy/;
#   - each kustomization (base and overlays/*) rendered with `kubectl kustomize` or `kustomize
#     build` into target/deploy-rendered/NAME.yaml, every document validated with
#     `kubernetes-validate --strict` against Kubernetes $K8S_VERSION (default 1.33.0);
#   - tools/deploy/consistency.py: what schemas miss (grace periods vs drain timeouts, $(VAR)s,
#     ConfigMap keys, ports, selectors, quantities, gateway.toml keys), the Dockerfile (parses,
#     stages, RUN scripts), .dockerignore, the systemd units;
#   - `systemd-analyze verify` of the units, where systemd-analyze exists.
# Without kubectl or kustomize the base's manifests are validated one by one instead (overlays
# are patches and cannot be validated alone). Python tools come from tools/deploy/requirements.txt
# in target/deploy-venv (created on first use; PyPI needed then only).
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

render=()
if command -v kubectl >/dev/null 2>&1; then
    render=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
    render=(kustomize build)
fi

rm -rf "$out"
mkdir -p "$out"
rendered=()
scope="base and overlays rendered"
if [ ${#render[@]} -gt 0 ]; then
    for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
        dir="${dir%/}"
        name="$(basename "$dir")"
        echo "== ${render[*]} $dir -> target/deploy-rendered/$name.yaml"
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
else
    echo "== neither kubectl nor kustomize found: overlays NOT rendered; validating the base's" \
        "manifests one by one (install kubectl or kustomize for the full check)"
    scope="base files only: no kubectl or kustomize"
    for f in deploy/k8s/base/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] && continue
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$f" || fail "kubernetes-validate $f"
    done
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
    echo "== systemd-analyze not found: units not verified"
fi

if [ "$failed" -ne 0 ]; then
    echo "deploy check: FAILED" >&2
    exit 1
fi
echo "deploy check: OK (Kubernetes $k8s_version; $scope)"
