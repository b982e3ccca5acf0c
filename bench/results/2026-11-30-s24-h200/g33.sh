#!/bin/bash
# session 24 call 4: grouped GEMM: no-loads ablation, tile orders; ncu dram/L2/tensor per variant
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O build
t0=$(date +%s)
V=("" "-DKG_ABL=4" "-DKG_ORDER=8" "-DKG_ORDER=4")
KCHECK_ONLY=moe AB_TIMEOUT=170 OUT=build/ab timeout 480 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g 'grouped E' "${V[@]}" > $O/ab.txt 2>&1
echo "ab rc=$? t=$(( $(date +%s) - t0 ))"
sed -n '/==== kernel variants/,$p' $O/ab.txt
for v in 0 1 2 3; do
  echo "== ncu v$v [${V[$v]}]"
  timeout 60 ncu --clock-control none -k regex:moe_grouped -c 2 --metrics gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,gpc__cycles_elapsed.avg.per_second build/ab/v$v/kcheck bench /tmp/tab moeg 2>&1 | grep -E "moe_grouped_kernel|gpu__time|dram__|lts__|tensor|gpc__" | sed 's/(CUtensorMap.*//'
  echo "t=$(( $(date +%s) - t0 ))"
done
echo "== t=$(( $(date +%s) - t0 ))"
