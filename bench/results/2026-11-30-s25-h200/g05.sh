#!/bin/bash
# session 25 call 5: the attention table with a B=64 row on the own GEMM
# kernel (cuBLASLt off), and ncu's per-kernel list of one B=1 x 1K step
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
timeout 200 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" --attn-table > $OUT/attn-bf16.tap 2>&1
echo "attn bf16 rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# attn\|not ok" $OUT/attn-bf16.tap
for row in 1,1024 64,1024,own; do
  f=$OUT/ncu-step-$(echo $row | tr , _).csv
  EC_PROFILE_ATTN=$row timeout 200 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
    $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" --attn-table > $f 2> $f.err
  echo "== B,ctx $row: ncu rc=$? t=$(( $(date +%s) - t0 ))"
  python3 - $f <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value"); ui = hdr.index("Metric Unit")
tot = 0; out = []
for r in rows[1:]:
    v = float(r[vi].replace(",", "")); v = v / 1000 if r[ui] in ("nsecond", "ns") else v
    tot += v; out.append((v, r[ki][:90]))
for v, k in out[:22]:
    print("%8.2f us  %s" % (v, k))
print("%d kernels, %.1f us" % (len(out), tot))
PY
done
