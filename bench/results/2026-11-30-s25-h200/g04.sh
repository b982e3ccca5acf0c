#!/bin/bash
# session 25 call 4: ncu's per-kernel durations of one graph-replayed
# decode step in the attention table's rows B=1/16/64 x ctx 1024 (after
# the tensor-core absorptions)
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
for row in 1,1024 16,1024 64,1024 64,8192; do
  EC_PROFILE_ATTN=$row timeout 200 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
    $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" --attn-table > $OUT/ncu-step-$row.csv 2> $OUT/ncu-step-$row.err
  echo "== B,ctx $row: ncu rc=$? t=$(( $(date +%s) - t0 ))"
  python3 - $OUT/ncu-step-$row.csv <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value"); ui = hdr.index("Metric Unit")
tot = 0; out = []
for r in rows[1:]:
    v = float(r[vi].replace(",", "")); v = v / 1000 if r[ui] in ("nsecond", "ns") else v
    tot += v; out.append((v, r[ki][:90]))
# first layer's attention (up to the first moe/dense ffn kernel after o_proj) is what we want; print all of layer 0..1
for v, k in out[:40]:
    print("%8.2f us  %s" % (v, k))
print("%d kernels, %.1f us" % (len(out), tot))
PY
done
