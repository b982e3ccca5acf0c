#!/bin/bash
# session 25 call 7: rmsnorm over a cluster of up to 8 blocks a row:
# every kernel check, the attention table, engine_check bf16, ncu of one
# B=1 x 1K step
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
timeout 200 build/gpu/kcheck test > $OUT/kcheck.tap 2>&1; echo "kcheck rc=$? $(grep -c '^ok' $OUT/kcheck.tap) ok $(grep -c '^not ok' $OUT/kcheck.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "rmsnorm\|^not ok" $OUT/kcheck.tap
timeout 150 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" --attn-table > $OUT/attn-bf16.tap 2>&1
echo "attn bf16 rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# attn\|not ok" $OUT/attn-bf16.tap
timeout 200 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/engine-bf16.tap 2>&1
echo "engine bf16 rc=$? $(grep -c '^ok' $OUT/engine-bf16.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|# decode step\|# phase attention\|# attention split\|median\|ok 19" $OUT/engine-bf16.tap
f=$OUT/ncu-step-b1-1k.csv
EC_PROFILE_ATTN=1,1024 timeout 100 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
  $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" --attn-table > $f 2> $f.err
echo "ncu rc=$? t=$(( $(date +%s) - t0 ))"
python3 - $f <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value"); ui = hdr.index("Metric Unit")
tot = 0; out = []
for r in rows[1:]:
    v = float(r[vi].replace(",", "")); v = v / 1000 if r[ui] in ("nsecond", "ns") else v
    tot += v; out.append((v, r[ki][:80]))
for v, k in out[:16]:
    print("%8.2f us  %s" % (v, k))
print("%d kernels, %.1f us" % (len(out), tot))
PY
