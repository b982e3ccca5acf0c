#!/bin/bash
# session 19 call 1: consumer groups taking turns at the tensor cores (KG_TURN 1: hand over after the chain completes; 2: after issue)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv > $O/smi.txt 2>&1
KCHECK_ONLY=moe AB_TIMEOUT=150 OUT=$O/abm timeout 500 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g '^moe +grouped' "" "-DKG_TURN=1" "-DKG_TURN=2" > $O/ab_moe.txt 2>&1
echo "ab rc=$?"
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
grep -E "^not ok" $O/abm/v*/kcheck.tap | head
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/abm/v*/*.o $O/abm/v*/kcheck
