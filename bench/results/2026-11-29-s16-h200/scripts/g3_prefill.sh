#!/bin/bash
# session 16 call 3: MLA prefill v2 (128-query blocks, 64-key tiles, two
# cp.async stages) checks + bench, 64-query variant; engine_check with the
# 240-token prefill (cuda vs cpu)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
OUT=$O/ab timeout 400 t/gpu/kernel-ab -k mla_prefill.cu -b mla -r 2 -g '^mla prefill' "" "-DPF_QT=64" > $O/ab_prefill.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_prefill.txt
grep -h "mla_prefill\|^not ok" $O/ab/v0/kcheck.tap | head -12
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16 bf16-p240" OUT=$O/run timeout $(( 570 - ($(date +%s) - t0) )) t/gpu/run engine > $O/engine.txt 2>&1
grep -E "^(not ok)|prefill|engine_check:|summary" $O/engine.txt | tail -12
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/ab/v*/*.o $O/ab/v*/kcheck
