#!/bin/bash
OUT=${OUT:-/tmp}
OUT=$OUT t/gpu/kernel-ab -r 1 "" > $OUT/ab.txt 2>&1
K=$OUT/v0/kcheck
NCU=/usr/local/cuda/bin/ncu
for f in 0 1; do
  KBENCH_FP8=$f timeout 200 $NCU --clock-control none --set full -k regex:'mla_' $K bench $OUT/t.txt mlaone > $OUT/ncu_one_fp8$f.txt 2>&1
  echo "fp8=$f rc=$?"
  grep -E "mla_|Duration|DRAM Throughput|Memory Throughput|Elapsed Cycles|SM Frequency|Registers|Achieved Occupancy|Compute \(SM\) Throughput" $OUT/ncu_one_fp8$f.txt | head -40
done
rm -f $OUT/v0/*.o $OUT/v0/kcheck
