#!/bin/bash
# session 24 call 7: same call: our grouped GEMMs (kbench moeg, GEMM alone and with gather/combine) vs DeepGEMM gate_up
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
BENCH=moeg OUT=$O/r timeout 300 t/gpu/run bench > $O/run.log 2>&1; echo "run rc=$? t=$(( $(date +%s) - t0 ))"
grep -E "floor|grouped" $O/r/bench_table.txt
for c in dg_gu_bn128_nomc dg_gu_bn192_mcB; do
  timeout 100 .scratch/anchors/deepgemm/dg_bench --shape gate_up --cfg $c > $O/$c.txt 2>&1; echo "dg $c rc=$? t=$(( $(date +%s) - t0 ))"
  grep -E "T2048|T4096" $O/$c.txt
done
BENCH=moeg OUT=$O/r2 timeout 200 t/gpu/run bench > $O/run2.log 2>&1; echo "run2 rc=$?"
grep -E "grouped" $O/r2/bench_table.txt
echo "== t=$(( $(date +%s) - t0 ))"
