#!/usr/bin/env bash
# Serving throughput of the cpu backend's parallel layouts, same model and
# load for each: one process, DP 2, DP 2 + EP, TP 2, PP 2 (and whatever
# LAYOUTS names).  Each layout runs behind nginx (t/lib/serve) with
# kimi-bench as the client; the table at the end is what bench/RESULTS.md
# records.  The model is the tiny Kimi-K2 with shapes every layout can
# split (4 heads of 128 + 16, MLP widths multiples of 256), dummy weights.
#
#   bench/parallel_cpu.sh              PROMPTS=32 CONC=16 IN=64 OUT=32
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
PORT=${PORT:-18431}
PROMPTS=${PROMPTS:-32}
CONC=${CONC:-16}
IN=${IN:-64}
OUT=${OUT:-32}
SHAPE='{"num_attention_heads": 4, "num_key_value_heads": 4, "qk_nope_head_dim": 112, "qk_rope_head_dim": 16, "v_head_dim": 128, "intermediate_size": 512, "moe_intermediate_size": 256}'
LAYOUTS=${LAYOUTS:-"one|dp2:--data-parallel-size 2|dp2-ep:--data-parallel-size 2 --enable-expert-parallel|tp2:--tensor-parallel-size 2|pp2:--pipeline-parallel-size 2"}

make -s all tiny-model >/dev/null
model=$BUILD/tiny-kimi-k2
run=$(mktemp -d /tmp/kimi-parbench-XXXXXX)
trap 'kill $serve_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run"' EXIT
rows=()

IFS='|' read -ra layouts <<< "$LAYOUTS"
for l in "${layouts[@]}"; do
    name=${l%%:*}
    args=""
    [[ $l == *:* ]] && args=${l#*:}

    MODEL=$model PORT=$PORT RUN_DIR=$run/$name BUILD=$BUILD \
        ENGINE_ARGS="--served-model-name kimi-k2-tiny --load-format dummy --hf-overrides '$SHAPE' --cpu-kv-cache-bytes 256M --max-num-batched-tokens 512 $args" \
        t/lib/serve >"$run/$name.serve.log" 2>&1 &
    serve_pid=$!

    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
        sleep 0.5
    done

    out=$("$BUILD/kimi-bench" --port "$PORT" --model "$model" \
          --served-model-name kimi-k2-tiny --num-prompts "$PROMPTS" \
          --max-concurrency "$CONC" --random-input-len "$IN" \
          --random-output-len "$OUT" 2>&1) || { echo "$out"; exit 1; }
    tput=$(awk -F: '/Output token throughput/ {gsub(/ /,"",$2); print $2}' <<< "$out")
    ttft=$(awk -F: '/P99 TTFT/ {gsub(/ /,"",$2); print $2}' <<< "$out")
    tpot=$(awk -F: '/Median TPOT/ {gsub(/ /,"",$2); print $2}' <<< "$out")
    ok=$(awk -F: '/Successful requests/ {gsub(/ /,"",$2); print $2}' <<< "$out")
    rows+=("$(printf '%-8s %-52s %4s/%-4s %10s %10s %10s' "$name" "${args:--}" \
              "$ok" "$PROMPTS" "$tput" "$tpot" "$ttft")")

    kill -TERM $serve_pid 2>/dev/null || true
    wait $serve_pid 2>/dev/null || true
done

printf '%-8s %-52s %9s %10s %10s %10s\n' layout flags ok "out tok/s" \
    "TPOT p50" "TTFT p99"
printf '%s\n' "${rows[@]}"
