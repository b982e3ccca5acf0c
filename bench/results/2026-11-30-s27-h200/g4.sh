#!/bin/bash
# session 27 call 4: the decode-size dense GEMM with the token bytes read
# before the stage wait, its one-group kernel bounded to 64 registers
# (GV_MINB 6, the default), 72 (5) or not (0: 78), against HEAD's three
# files; kcheck gemm each, three bench rounds; every kernel check;
# engine_check bf16
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
R=bench/results/2026-11-30-s27-h200
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
RX='^gemm .* T= *(1|4|16): own'
KCHECK_ONLY=gemm OUT=$OUT/ab t/gpu/kernel-ab -k gemm_fp8.cu -b gemm -r 3 -g "$RX" -- "" "-DGV_MINB=(NG==1?5:0)" "-DGV_MINB=0" > $OUT/ab.txt 2>&1
echo "ab rc=$? t=$(( $(date +%s) - t0 ))"; sed -n '/==== kernel variants/,$p' $OUT/ab.txt
mkdir -p /tmp/new && cp kernels/gemm_fp8.cu kernels/fp8_ring.cuh kernels/fp8_tile.cuh /tmp/new/ && for f in gemm_fp8.cu fp8_ring.cuh fp8_tile.cuh; do git show 05a7ba6:kernels/$f > kernels/$f; done   # (carried as $R/head/)
KCHECK_ONLY=gemm OUT=$OUT/abhead t/gpu/kernel-ab -k gemm_fp8.cu -b gemm -r 3 -g "$RX" -- "" > $OUT/abhead.txt 2>&1
echo "ab head rc=$? t=$(( $(date +%s) - t0 ))"; sed -n '/==== kernel variants/,$p' $OUT/abhead.txt
cp /tmp/new/* kernels/
timeout 200 build/gpu/kcheck test > $OUT/kcheck.tap 2>&1; echo "kcheck rc=$? $(grep -c "^ok" $OUT/kcheck.tap) ok $(grep -c "^not ok" $OUT/kcheck.tap) not ok t=$(( $(date +%s) - t0 ))"
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
timeout 150 build/engine_check --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/engine-bf16.tap 2>&1
echo "engine bf16 rc=$? $(grep -c '^ok' $OUT/engine-bf16.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|median (1 - cos) vs\|^# decode step" $OUT/engine-bf16.tap | head -6
