#!/bin/bash
# session 25 call 1: the attention layer at decode against weights + KV
# (engine_check --attn-table, bf16 and fp8 cache), then ncu's per-kernel
# durations of one graph-replayed batch-1 decode step
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
for kv in bf16 fp8; do
  timeout 150 $EC --model t/gpu/kimi-k2 --kv $kv --hf-overrides "$SHAPE" --attn-table > $OUT/attn-$kv.tap 2>&1
  echo "attn $kv rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# attn\|not ok" $OUT/attn-$kv.tap
done
EC_PROFILE_STEP=1 timeout 240 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
  $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/ncu-step-b1.csv 2> $OUT/ncu-step-b1.err
echo "ncu rc=$? t=$(( $(date +%s) - t0 ))"
python3 - $OUT/ncu-step-b1.csv <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value"); ui = hdr.index("Metric Unit")
tot = 0
for r in rows[1:]:
    v = float(r[vi].replace(",", "")); v = v / 1000 if r[ui] == "nsecond" else v
    tot += v
    print("%8.2f us  %s" % (v, r[ki][:110]))
print("%d kernels, %.1f us" % (len(rows) - 1, tot))
PY
