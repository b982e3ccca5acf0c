#!/bin/bash
# session 27 call 1: the MLA decode's buffer release order (MT_REL 0: after
# S of the next tile is issued, as committed; 1: after its first chunk; 2:
# before it) and the one-warp-a-head combine (MC_SLOTS 2 / 4) against
# HEAD's kernels, kcheck mla each, two bench rounds; then engine_check bf16
# on the default build (MT_REL 2)
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
R=bench/results/2026-11-30-s27-h200
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
RX="^mla decode (bf16|fp8) +B= ?(1|16|64) ctx="
KCHECK_ONLY=mla OUT=$OUT/ab t/gpu/kernel-ab -r 2 -g "$RX" -- "-DMT_REL=0" "-DMT_REL=1" "-DMT_REL=2" "-DMT_REL=2 -DMC_SLOTS=4" > $OUT/ab.txt 2>&1
echo "ab rc=$? t=$(( $(date +%s) - t0 ))"; sed -n '/==== kernel variants/,$p' $OUT/ab.txt
cp kernels/mla.cu /tmp/mla_new.cu && git show 8e84b17:kernels/mla.cu > kernels/mla.cu   # (the call carried the file as $R/mla_head.cu)
KCHECK_ONLY=mla OUT=$OUT/abhead t/gpu/kernel-ab -r 2 -g "$RX" -- "" > $OUT/abhead.txt 2>&1
echo "ab head rc=$? t=$(( $(date +%s) - t0 ))"; sed -n '/==== kernel variants/,$p' $OUT/abhead.txt
cp /tmp/mla_new.cu kernels/mla.cu
ENGINE_KV="bf16-h128-expand1 bf16-h8-expand1 bf16-moonlight-expand1 bf16-v2lite-widths-expand1 fp8-expand1" ENGINE_CHECK=build/engine_check OUT=$OUT/run timeout 420 t/gpu/run engine > $OUT/engine.log 2>&1
echo "engine rc=$? t=$(( $(date +%s) - t0 ))"; sed -n '/== summary/,$p' $OUT/engine.log | grep -v "^$"
grep -h "^not ok" $OUT/run/engine_*.tap | head
