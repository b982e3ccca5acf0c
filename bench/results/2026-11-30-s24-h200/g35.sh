#!/bin/bash
# session 24 call 6: the committed candidate: every kernel check, bench moe (384 and 32 experts), engine check bf16 + bf16-p240
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
BENCH=moe ENGINE_KV="bf16 bf16-p240" ENGINE_CHECK=build/engine_check OUT=$O/r timeout 560 t/gpu/run test bench engine > $O/run.log 2>&1
echo "run rc=$? t=$(( $(date +%s) - t0 ))"
tail -40 $O/run.log
ls $O/r
