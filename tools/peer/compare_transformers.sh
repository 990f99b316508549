#!/usr/bin/env bash
# dvd against transformers' own OpenAI-compatible server (`transformers serve`, pinned in
# tools/peer/requirements.txt) on this machine, same checkpoint, same load: `dvd bench serve`
# drives each server with the same requests (same seed: the same prompts and pictures) on the same
# arrival schedule, one server at a time, and the script prints a side-by-side Markdown table
# (tools/peer/compare_table.py) of request and output-token throughput and TTFT / TPOT / ITL /
# E2EL p50 and p99.
#
# Models: the bench model (tools/make_bench_checkpoint.py, random weights, 448 px tiles) and the
# demo model (models/dvd-demo, 224 px tiles). Workloads:
#   image  one fresh 448-px JPEG per request (`--dataset synthetic`: no picture is sent twice, so
#          no cache hits on either side) with "Describe the image."
#   text   text-only chat: `--dataset random-mm --images-per-request 0:0`, random prompts of
#          INPUT_LEN tokens (counted by the model's tokenizer, the chat template apart).
# Servers:
#   dvd                 `dvd up --model DIR` (vision, language and gateway processes, all cores)
#   transformers        `transformers serve DIR` (InternVLForConditionalGeneration). transformers
#                       serves vision-language models sequentially, one `generate` at a time, for
#                       text-only requests too: continuous batching is chosen by the model's class
#                       (cli/serving/utils.py use_continuous_batching: only `Modality.LLM`), so
#                       --continuous-batching changes nothing for InternVL.
#   transformers-cb-lm  text workload only: `transformers serve --continuous-batching` on the
#                       language half of the same checkpoint as a plain Qwen3ForCausalLM
#                       (tools/peer/language_only.py, the same tensors), which is how a
#                       transformers user gets batched text chat. Its step budget is dvd's
#                       (--cb-max-batch-tokens MAX_STEP_TOKENS) and its paged KV cache holds
#                       CB_CACHE_TOKENS tokens (--cb-num-blocks, pages of 256 tokens): left alone,
#                       transformers sizes it from host memory (60-90 %: 14 GB of this machine's 24),
#                       and on the CPU every step costs more the bigger the cache (its attention
#                       masks span all of it), so the default is a cache the workload just fits in
#                       (4096 tokens: 32 requests of 128), not dvd's 1 GiB.
# Both sides compute in f32 on the CPU (dvd's CPU default; transformers' `--dtype auto` would run
# the bf16 weights in bf16), with every core: transformers with torch's intra-op threads = THREADS.
# Streams: transformers 5.24 ends an event stream after its finish_reason chunk without
# `data: [DONE]`; `dvd bench serve` takes that as the end of the answer. `ignore_eos` is not sent
# (transformers refuses unknown fields): both sides stop at EOS or OUTPUT_LEN, greedy, so they
# generate the same lengths for the same model; the table shows the token counts.
# Load: by default a closed loop of MAX_CONCURRENCY requests in flight (rate inf), which
# saturates both servers, so request throughput is each one's capacity and TTFT includes the
# queueing that capacity causes; an open-loop rate (IMAGE_RATE / TEXT_RATE) measures latency at
# a load both sustain.
#
# Results: OUT/<model>--<server>--<workload>.json (and .csv, one row per request), server logs in
# OUT/logs, the table in OUT/table.md.
# Each (server, workload) first gets WARMUP requests of another seed (not measured: first-call
# work, transformers' continuous-batching cache allocation), then the measured run.
#
# Usage: tools/peer/compare_transformers.sh            (parameters below, from the environment)
#   e.g. NUM_PROMPTS=20 MAX_CONCURRENCY=4 MODELS=bench tools/peer/compare_transformers.sh
# Needs: a release dvd (DVD=, default target/release/dvd), python3 with venv, PyPI access the
# first time (the venv); no network at run time (HF_HUB_OFFLINE=1).
set -euo pipefail

# ---- parameters ------------------------------------------------------------------------------
NUM_PROMPTS=${NUM_PROMPTS:-120}        # measured requests per (server, workload); a p99 needs 100+ with text
IMAGE_RATE=${IMAGE_RATE:-inf}          # image requests per second (Poisson), or inf
TEXT_RATE=${TEXT_RATE:-inf}            # text requests per second, or inf
BURSTINESS=${BURSTINESS:-1}            # gamma shape of the gaps, 1 = Poisson
MAX_CONCURRENCY=${MAX_CONCURRENCY:-8}  # most requests in flight (empty: unbounded)
OUTPUT_LEN=${OUTPUT_LEN:-64}           # tokens per request at most (EOS may stop it sooner)
INPUT_LEN=${INPUT_LEN:-32}             # tokens of a text request's prompt
IMAGE_SIZE=${IMAGE_SIZE:-448}          # side of each picture (one per image request)
SEED=${SEED:-0}                        # seed of the pictures, prompts and arrivals
WARMUP=${WARMUP:-2}                    # unmeasured requests before each measured run
TIMEOUT_S=${TIMEOUT_S:-1800}           # limit of one request, seconds
MODELS=${MODELS:-"bench demo"}         # bench: tools/make_bench_checkpoint.py; demo: models/dvd-demo
SERVERS=${SERVERS:-"dvd transformers transformers-cb-lm"}
WORKLOADS=${WORKLOADS:-"image text"}
DTYPE=${DTYPE:-float32}                # transformers' --dtype (dvd: --dtype f32 on the CPU)
THREADS=${THREADS:-$(nproc)}           # torch intra-op threads of transformers serve
KV_CACHE_MIB=${KV_CACHE_MIB:-1024}     # dvd's KV cache (its CPU default)
MAX_STEP_TOKENS=${MAX_STEP_TOKENS:-512} # tokens per engine step: dvd's default, and transformers' CB
CB_CACHE_TOKENS=${CB_CACHE_TOKENS:-4096} # transformers' CB KV cache, in tokens (pages of 256)
PORT=${PORT:-8300}                     # port of the server under test
# ----------------------------------------------------------------------------------------------

REPO=$(cd "$(dirname "$0")/../.." && pwd)
DVD=${DVD:-$REPO/target/release/dvd}
VENV=${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dvd-peer-venv}
OUT=${OUT:-$REPO/bench-out/transformers-peer}
BENCH_MODEL=${BENCH_MODEL:-$OUT/models/dvd-bench-ivl}
DEMO_MODEL=${DEMO_MODEL:-$REPO/models/dvd-demo}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_UPDATE_CHECK=1 HF_HUB_DISABLE_TELEMETRY=1

[ -x "$DVD" ] || { echo "no dvd binary at $DVD (cargo build --release, or DVD=...)" >&2; exit 1; }
mkdir -p "$OUT/logs" "$OUT/models"
rm -f "$OUT"/*--*--*.json "$OUT"/*--*--*.csv "$OUT/table.md"   # the table shows this run only

# The venv, from the pins (reinstalled when requirements.txt changes).
REQS=$REPO/tools/peer/requirements.txt
if ! cmp -s "$REQS" "$VENV/.requirements.txt" 2>/dev/null; then
  echo "== venv $VENV from $REQS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
  cp "$REQS" "$VENV/.requirements.txt"
fi


SERVER_PID=
BENCH_PID=
stop_server() {
  if [ -n "$BENCH_PID" ]; then kill -TERM "$BENCH_PID" 2>/dev/null || true; wait "$BENCH_PID" 2>/dev/null || true; BENCH_PID=; fi
  [ -n "$SERVER_PID" ] || return 0
  # dvd up stops its children on SIGTERM; transformers serve with continuous batching does not
  # exit on SIGINT (uvicorn stops, the process stays), but does on SIGTERM.
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 75); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null || true        # whatever is left of its process group
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# Waits until the server at PORT lists a model (or its process ends).
wait_ready() {
  local log=$1
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited; its log:" >&2; tail -30 "$log" >&2; return 1; }
    sleep 0.5
  done
  echo "server not ready in 300 s; its log:" >&2; tail -30 "$log" >&2; return 1
}

# start_server SERVER MODEL_DIR LOG
start_server() {
  local server=$1 dir=$2 log=$3
  if curl -s "http://127.0.0.1:$PORT/" >/dev/null 2>&1; then echo "port $PORT is taken" >&2; return 1; fi
  case $server in
    dvd)
      setsid "$DVD" up --model "$dir" --host 127.0.0.1 --port "$PORT" --dtype f32 \
        --kv-cache-mib "$KV_CACHE_MIB" --max-step-tokens "$MAX_STEP_TOKENS" >"$log" 2>&1 &
      ;;
    transformers|transformers-cb-lm)
      local args=("$dir" --device cpu --dtype "$DTYPE" --host 127.0.0.1 --port "$PORT" --log-level info)
      if [ "$server" = transformers-cb-lm ]; then
        # --cb-num-blocks counts pages of 256 tokens (transformers' default page size) of every layer.
        args+=(--continuous-batching --cb-num-blocks $(((CB_CACHE_TOKENS + 255) / 256))
               --cb-max-batch-tokens "$MAX_STEP_TOKENS")
      fi
      OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS setsid "$VENV/bin/transformers" serve \
        "${args[@]}" >"$log" 2>&1 &
      ;;
    *) echo "unknown server $server" >&2; return 1 ;;
  esac
  SERVER_PID=$!
  wait_ready "$log"
}

# bench SERVER_MODEL_ID WORKLOAD RATE SEED N RESULT|- TOKENIZER_DIR
bench() {
  local model=$1 workload=$2 rate=$3 seed=$4 n=$5 result=$6 tokenizer=$7
  local args=(bench serve --url "http://127.0.0.1:$PORT" --num-prompts "$n" --request-rate "$rate"
              --burstiness "$BURSTINESS" --seed "$seed" --output-len "$OUTPUT_LEN" --timeout-s "$TIMEOUT_S")
  if [ -n "$model" ]; then args+=(--model "$model"); fi
  if [ -n "$MAX_CONCURRENCY" ]; then args+=(--max-concurrency "$MAX_CONCURRENCY"); fi
  case $workload in
    image) args+=(--dataset synthetic --image-sizes "$IMAGE_SIZE" --images-per-request 1) ;;
    text) args+=(--dataset random-mm --images-per-request 0:0 --random-input-len "$INPUT_LEN"
                 --tokenizer "$tokenizer") ;;
  esac
  # In the background and waited for, so that a signal stops the script (and its trap stops the
  # server) at once rather than after the run.
  if [ "$result" = - ]; then
    "$DVD" "${args[@]}" --json >/dev/null &
  else
    "$DVD" "${args[@]}" --result-file "$result" --csv "${result%.json}.csv" &
  fi
  BENCH_PID=$!
  wait "$BENCH_PID"
  BENCH_PID=
}

for model in $MODELS; do
  case $model in
    bench)
      [ -f "$BENCH_MODEL/processor_config.json" ] || python3 "$REPO/tools/make_bench_checkpoint.py" --out "$BENCH_MODEL"
      dir=$BENCH_MODEL ;;
    demo) dir=$DEMO_MODEL ;;
    *) echo "unknown model $model (bench, demo)" >&2; exit 1 ;;
  esac
  for server in $SERVERS; do
    serve_dir=$dir
    workloads=$WORKLOADS
    if [ "$server" = transformers-cb-lm ]; then
      case " $WORKLOADS " in *" text "*) workloads=text ;; *) continue ;; esac
      serve_dir=$OUT/models/$model-language-only
      if [ ! "$serve_dir/model.safetensors" -nt "$dir/model.safetensors" ]; then
        python3 "$REPO/tools/peer/language_only.py" --model "$dir" --out "$serve_dir"
      fi
    fi
    # transformers answers only to the model it was started with, named as it was given.
    model_id=
    if [ "$server" != dvd ]; then model_id=$serve_dir; fi
    log=$OUT/logs/$model--$server.log
    echo "== $model: $server ($serve_dir)"
    start_server "$server" "$serve_dir" "$log"
    for workload in $workloads; do
      case $workload in image) rate=$IMAGE_RATE ;; text) rate=$TEXT_RATE ;; *) echo "unknown workload $workload" >&2; exit 1 ;; esac
      if [ "$WARMUP" -gt 0 ]; then
        echo "-- $workload: $WARMUP warm-up requests"
        bench "$model_id" "$workload" inf $((SEED + 1000)) "$WARMUP" - "$dir"
      fi
      result=$OUT/$model--$server--$workload.json
      echo "-- $workload: $NUM_PROMPTS requests at $rate req/s -> $result"
      bench "$model_id" "$workload" "$rate" "$SEED" "$NUM_PROMPTS" "$result" "$dir"
    done
    stop_server
  done
done

echo
echo "## dvd up against transformers serve ($(nproc) cores, $(date -u +%Y-%m-%d))"
echo
python3 "$REPO/tools/peer/compare_table.py" "$OUT" | tee "$OUT/table.md"
