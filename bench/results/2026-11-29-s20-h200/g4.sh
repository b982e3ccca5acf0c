#!/bin/bash
# session 20 call 4: the kept kernels (down's whole-tile epilogue, gate_up's rows in plan order by TMA, V2 routers):
# every kernel check, engine_check on the grouped path, the MoE bench (K2 widths and the grouped sizes)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
{
OUT=/tmp/run timeout 150 t/gpu/run test > /tmp/test.txt 2>&1
echo "test rc=$?"; grep -cE "^ok" /tmp/test.txt; grep -E "^not ok" /tmp/test.txt | head; grep -E "kernel checks" /tmp/test.txt
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16-p240" OUT=/tmp/eng timeout 140 t/gpu/run engine > /tmp/engine.txt 2>&1
echo "engine rc=$?"; grep -E "^(not ok)|^# (median|decode step)|cuda vs cpu engine" /tmp/engine.txt | head -12
echo "== t=$(( $(date +%s) - t0 ))"
BENCH=moe OUT=/tmp/b timeout $(( 460 - ($(date +%s) - t0) )) t/gpu/run bench > /tmp/bench.txt 2>&1
echo "bench rc=$?"; grep -hE "^moe|^floor" /tmp/b/*table* 2>/dev/null | sort -u | head -40
echo "== t=$(( $(date +%s) - t0 ))"
} 2>&1 | tee $O/log.txt
cp /tmp/run/kcheck.tap /tmp/eng/engine_bf16-p240.tap $O/ 2>/dev/null; cp /tmp/b/*table* $O/ 2>/dev/null
