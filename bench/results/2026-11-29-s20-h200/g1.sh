#!/bin/bash
# session 20 call 1: grouped GEMM variants: group 1 lagging group 0 by d k-blocks at each tile start (KG_LAG); down's whole tile staged (KG_WHOLE, 3 stages)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv,noheader
KCHECK_ONLY=moe AB_TIMEOUT=140 OUT=$O/abm timeout 570 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g 'moe layer decode B=(2048|4096)' "" "-DKG_LAG=1" "-DKG_LAG=2" "-DKG_WHOLE=1" "-DKG_WHOLE=1 -DKG_LAG=2" > $O/ab_moe.txt 2>&1
echo "ab rc=$?"
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
for v in 0 1 2 3 4; do echo "== v$v"; grep -h "grouped E=32\|parts B=" $O/abm/v$v/table.txt 2>/dev/null; grep -h "^not ok" $O/abm/v$v/*.tap 2>/dev/null | head -3; done
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/abm/v*/*.o $O/abm/v*/kcheck
