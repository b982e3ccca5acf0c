#!/bin/bash
# session 17 call 5: grouped GEMM 128-row tiles as cluster pairs with the
# weight boxes multicast (each CTA loads half) vs every CTA loading its own
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
KCHECK_ONLY=moe AB_TIMEOUT=70 OUT=$O/abm timeout 250 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 1 -g '^moe layer decode B=(2048|4096)' "" "-DKG_CLUSTER=0" > $O/ab_moe.txt 2>&1
echo "ab rc $? at t=$(( $(date +%s) - t0 ))"
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
grep -h "^not ok" $O/abm/v*/kcheck.tap | head -5
tail -3 $O/abm/v0/kcheck.tap
grep -H "grouped" $O/abm/v*/table.txt
rm -f $O/abm/v*/*.o $O/abm/v*/kcheck
