#!/bin/bash
# session 17 call 1: L2 -> SM bandwidth (loadprobe), the grouped GEMM's loads
# alone / half its weight boxes (is it bound by L2?), then engine_check and
# serve-check on HEAD (MLA prefill v4's first end-to-end checks)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm --format=csv,noheader
OUT=$O/probe timeout 90 t/gpu/run probe > $O/probe.txt 2>&1
grep -E "floor|L2 set|^path" $O/probe.txt
echo "== t=$(( $(date +%s) - t0 ))"
KCHECK_ONLY=moe OUT=$O/abm timeout 220 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g '^moe layer decode B=(2048|4096)' "" "-DKG_ABL=1" "-DKG_ABL=2" > $O/ab_moe.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
grep -H "grouped" $O/abm/v*/table.txt
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16 bf16-p240 fp8" OUT=$O/run timeout 200 t/gpu/run engine > $O/engine.txt 2>&1
echo "engine ok $(grep -c '^ok' $O/engine.txt) not ok $(grep -c '^not ok' $O/engine.txt)"
grep -E "^not ok|prefill pos 0|decode step B=1 graph" $O/engine.txt | head -8
echo "== t=$(( $(date +%s) - t0 ))"
left=$(( 570 - ($(date +%s) - t0) )); echo "serve budget $left s"
CARRY=build/serve-carry BACKEND=cuda MAX_TOKENS=64 OUT=$O/serve timeout $left t/gpu/serve-check --load-format dummy --seed 7 --hf-overrides '{"num_hidden_layers": 4}' > $O/serve.txt 2>&1
echo "serve rc=$?"; tail -15 $O/serve.txt
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/abm/v*/*.o $O/abm/v*/kcheck
