#!/bin/bash
# session 19 call 2: 2-CTA clusters pairing tiles 2p, 2p+1 of the list, weights multicast when one expert's (no padding)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
KCHECK_ONLY=moe AB_TIMEOUT=150 OUT=$O/abm timeout 540 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g 'moe layer decode B=(2048|4096)' "" "-DKG_CLUSTER=1" > $O/ab_moe.txt 2>&1
echo "ab rc=$?"
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
for v in 0 1; do echo "== v$v"; grep -h "grouped E=32\|parts B=" $O/abm/v$v/bench*.log $O/abm/v$v/table.txt 2>/dev/null; grep -h TMPDEBUG $O/abm/v$v/*.log | sort | uniq -c; grep -c "^ok" $O/abm/v$v/kcheck.tap; grep "^not ok" $O/abm/v$v/kcheck.tap | head -5; done
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/abm/v*/*.o $O/abm/v*/kcheck
