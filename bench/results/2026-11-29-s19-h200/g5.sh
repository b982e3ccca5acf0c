#!/bin/bash
# session 19 call 5: L2 hints: y stores evict_first (KG_EVICT=1 default), + weights evict_last (2), none (0)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
KCHECK_ONLY=moe AB_TIMEOUT=150 OUT=$O/abm timeout 560 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g 'moe layer decode B=(2048|4096)' "" "-DKG_EVICT=0" "-DKG_EVICT=2" > $O/ab_moe.txt 2>&1
echo "ab rc=$?"
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
for v in 0 1 2; do echo "== v$v"; grep -h "grouped E=32\|parts B=" $O/abm/v$v/table.txt 2>/dev/null; done
grep "^not ok" $O/abm/v*/kcheck.tap | head
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/abm/v*/*.o $O/abm/v*/kcheck
