#!/usr/bin/env bash
# What tracing costs a deployment: `dvd up` on the demo model, image chat from `dvd bench serve`
# (300 requests, 8 in flight, fresh 448x448 JPEGs, 16 tokens each), three ways in turn, ROUNDS
# times (default 4):
#   off   - no --otlp-endpoint
#   live  - --otlp-endpoint to tools/otlp/sink.py (a counting OTLP/gRPC receiver), every trace sampled
#   dead  - --otlp-endpoint to a closed port (every export fails; spans are counted as dropped)
# Writes one JSON per run and summary.tsv to OUT.
# Usage: tools/otlp/tracing_overhead.sh DVD_BINARY SINK_PYTHON OUT
set -euo pipefail
dvd=$1 python=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
printf 'round\tmode\trequest_throughput\tp50_ttft_ms\tp99_ttft_ms\tp99_e2el_ms\tfailed\tspans_received\tgateway_dropped\n' >"$out/summary.tsv"
for round in $(seq 1 "${ROUNDS:-4}"); do
    for mode in off live dead; do
        port=$(free_port)
        sink_port=$(free_port)
        args=()
        sink_pid=
        case $mode in
            live)
                "$python" "$here/sink.py" --port "$sink_port" >"$out/sink-$mode-$round.json" &
                sink_pid=$!
                sleep 2
                args=(--otlp-endpoint "http://127.0.0.1:$sink_port") ;;
            dead) args=(--otlp-endpoint "http://127.0.0.1:$sink_port") ;;
        esac
        "$dvd" up --port "$port" --ready-json "${args[@]}" >"$out/up-$mode-$round.json" 2>/dev/null &
        up_pid=$!
        for _ in $(seq 1 120); do grep -q http "$out/up-$mode-$round.json" 2>/dev/null && break; sleep 0.5; done
        "$dvd" bench serve --url "http://127.0.0.1:$port" --num-prompts 300 --max-concurrency 8 \
            --request-rate inf --image-sizes 448 --output-len 16 --ignore-eos --seed "$round" \
            --json >"$out/bench-$mode-$round.json"
        # Let the last batch of spans go out (the batch delay is 5 s).
        sleep 6
        dropped=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^dvd_trace_spans_dropped_total/ {print $2}')
        kill -TERM "$up_pid"; wait "$up_pid" || true
        spans=-
        if [ -n "$sink_pid" ]; then
            kill -TERM "$sink_pid"; wait "$sink_pid" || true
            spans=$("$python" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["spans"])' "$out/sink-$mode-$round.json")
        fi
        "$python" - "$out/bench-$mode-$round.json" "$round" "$mode" "$spans" "${dropped:-0}" >>"$out/summary.tsv" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print("\t".join([sys.argv[2], sys.argv[3], f"{b['request_throughput']:.2f}", f"{b['p50_ttft_ms']:.1f}",
                 f"{b['p99_ttft_ms']:.1f}", f"{b['p99_e2el_ms']:.1f}", str(b['failed']), sys.argv[4], sys.argv[5]]))
PY
    done
done
cat "$out/summary.tsv"
