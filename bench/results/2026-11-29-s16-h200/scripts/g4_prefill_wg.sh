#!/bin/bash
# session 16 call 4: MLA prefill on wgmma (2 or 3 warpgroups a block) against
# the mma.sync v2, checks + bench; engine_check's 240-token prefill
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
OUT=$O/ab timeout 420 t/gpu/kernel-ab -k mla_prefill.cu -b mla -r 1 -g '^mla prefill' "" "-DPW_WG=3" "-DPF_MMA_SYNC" > $O/ab_prefill.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_prefill.txt
grep -h "mla_prefill" $O/ab/v0/kcheck.tap $O/ab/v1/kcheck.tap | head -12
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16-p240" OUT=$O/run timeout $(( 575 - ($(date +%s) - t0) )) t/gpu/run engine > $O/engine.txt 2>&1
echo "engine ok $(grep -c '^ok' $O/engine.txt) not ok $(grep -c '^not ok' $O/engine.txt)"
grep -E "^not ok|prefill pos 0" $O/engine.txt | head
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/ab/v*/*.o $O/ab/v*/kcheck
