#!/bin/bash
# session 19 call 6: the staged epilogue as committed: every kernel check, engine_check (grouped path), moeg bench
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
OUT=$O/run timeout 200 t/gpu/run test > $O/test.txt 2>&1
echo "test rc=$?"; grep -cE "^ok" $O/test.txt; grep -E "^not ok" $O/test.txt | head; tail -4 $O/test.txt
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16-p240 fp8" OUT=$O/eng timeout 150 t/gpu/run engine > $O/engine.txt 2>&1
echo "engine rc=$?"; grep -E "^(ok|not ok)|engine_check|summary" $O/engine.txt | tail -12
echo "== t=$(( $(date +%s) - t0 ))"
BENCH=moeg OUT=$O/b timeout 110 t/gpu/run bench > $O/bench.txt 2>&1
echo "bench rc=$?"; grep -hE "grouped E=32|parts B=|^floor" $O/bench.txt $O/b/*table* 2>/dev/null | sort -u
echo "== t=$(( $(date +%s) - t0 ))"
