#!/bin/bash
# session 27 call 5: the token reads ahead of the stage wait only where the
# cluster split is at most GV_PF_CS (2, the default; 0: never; 8: always),
# against HEAD's three files; kcheck gemm each, three bench rounds;
# engine_check bf16 on the default
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
R=bench/results/2026-11-30-s27-h200
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
RX='^gemm .* T= *(1|4|16): own'
KCHECK_ONLY=gemm OUT=$OUT/ab t/gpu/kernel-ab -k gemm_fp8.cu -b gemm -r 3 -g "$RX" -- "" "-DGV_PF_CS=0" "-DGV_PF_CS=8" > $OUT/ab.txt 2>&1
echo "ab rc=$? t=$(( $(date +%s) - t0 ))"; sed -n '/==== kernel variants/,$p' $OUT/ab.txt | grep -v "^  gemm"
mkdir -p /tmp/new && cp kernels/gemm_fp8.cu kernels/fp8_ring.cuh kernels/fp8_tile.cuh /tmp/new/ && for f in gemm_fp8.cu fp8_ring.cuh fp8_tile.cuh; do git show 05a7ba6:kernels/$f > kernels/$f; done   # (carried as $R/head/)
KCHECK_ONLY=gemm OUT=$OUT/abhead t/gpu/kernel-ab -k gemm_fp8.cu -b gemm -r 3 -g "$RX" -- "" > $OUT/abhead.txt 2>&1
echo "ab head rc=$? t=$(( $(date +%s) - t0 ))"
cp /tmp/new/* kernels/
for f in $OUT/ab/v*/bench*.log $OUT/abhead/v0/bench*.log; do
  echo "$f: $(grep -E '^gemm .* T= *(1|16): own' $f | sed -E 's/.*gemm ([a-z_+ ]+) N=.* T= *([0-9]+): own ([0-9.]+) us.*/\1 T\2 \3/; s/  +/ /g' | tr '\n' ' ')"
done
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
timeout 150 build/engine_check --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/engine-bf16.tap 2>&1
echo "engine bf16 rc=$? $(grep -c '^ok' $OUT/engine-bf16.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|median (1 - cos) vs\|^# decode step" $OUT/engine-bf16.tap | head -6
