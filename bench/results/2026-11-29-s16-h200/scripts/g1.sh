#!/bin/bash
# session 16 call 1: MLA split merge in the decode kernel (mf_fold) A/B + checks;
# grouped GEMM down without the proxy fence A/B; engine_check bf16/fp8
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
OUT=$O/ab t/gpu/kernel-ab -r 2 -g '^mla decode' "" "-DMF_FOLD=1" "-DMF_FOLD=16" > $O/ab_mla.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_mla.txt
grep -h "^not ok" $O/ab/v*/kcheck.tap | head
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16 fp8" OUT=$O/run timeout 240 t/gpu/run engine > $O/engine.txt 2>&1
grep -E "^(not ok)|engine_check|decode step|summary" $O/engine.txt | tail -12
echo "== t=$(( $(date +%s) - t0 ))"
left=$(( 560 - ($(date +%s) - t0) )); echo "moe budget $left s"
KCHECK_ONLY=moe OUT=$O/abm timeout $left t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g '^moe layer decode B=(2048|4096)' "" "-DKG_FENCE_ALWAYS=1" > $O/ab_moe.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
grep -H "grouped" $O/abm/v*/table.txt
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/ab/v*/*.o $O/ab/v*/kcheck $O/abm/v*/*.o $O/abm/v*/kcheck
