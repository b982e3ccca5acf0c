#!/bin/bash
# session 24 call 3: grouped GEMM issue path: uniform descriptors + stage counters; one producer warp
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O build
t0=$(date +%s)
KCHECK_ONLY=moe AB_TIMEOUT=170 OUT=build/ab timeout 580 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g 'grouped E' "" "-DKG_UDESC=1" "-DKG_UDESC=1 -DKG_PROD1=1" > $O/ab.txt 2>&1
echo "ab rc=$? t=$(( $(date +%s) - t0 ))"
sed -n '/==== kernel variants/,$p' $O/ab.txt
for v in 0 1 2; do cp build/ab/v$v/bench1.log $O/v$v-bench1.log 2>/dev/null; done
echo "== t=$(( $(date +%s) - t0 ))"
