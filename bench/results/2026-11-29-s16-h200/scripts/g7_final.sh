#!/bin/bash
# session 16 call 7: the pipelined MLA prefill as the kernel: prefill checks
# and bench, then engine_check's 240-token prefill (cuda vs cpu) if time is left
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
KCHECK_ONLY=prefill OUT=$O/ab timeout 100 t/gpu/kernel-ab -k mla_prefill.cu -b prefill -r 1 -g '^mla prefill' "" > $O/ab_final.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_final.txt
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16-p240" OUT=$O/run timeout $(( 140 - ($(date +%s) - t0) )) t/gpu/run engine > $O/engine.txt 2>&1
echo "engine ok $(grep -c '^ok' $O/engine.txt) not ok $(grep -c '^not ok' $O/engine.txt)"
grep -E "^not ok|prefill pos 0" $O/engine.txt | head -4
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/ab/v*/*.o $O/ab/v*/kcheck
