#!/bin/bash
# session 20 call 5: router kernels with the router as a template parameter (the noaux_tc instantiations = the old code): router checks + the decode MoE bench
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
KCHECK_ONLY=all AB_TIMEOUT=100 OUT=/tmp/ab timeout 250 t/gpu/kernel-ab -k router.cu -b moed -r 2 -g 'moe layer decode B=(1|2|16|64) ' "" > /tmp/ab.txt 2>&1
echo "ab rc=$?"
sed -n '/==== kernel variants/,$p' /tmp/ab.txt
grep -E "router_select|route_fused|^not ok" /tmp/ab/v0/kcheck.tap | cut -c1-160
grep -hE "glue B=1 |layer decode B=1 |parts B=1 " /tmp/ab/v0/table.txt
echo "== t=$(( $(date +%s) - t0 ))"
cp /tmp/ab/v0/kcheck.tap /tmp/ab/v0/table.txt $O/ 2>/dev/null
