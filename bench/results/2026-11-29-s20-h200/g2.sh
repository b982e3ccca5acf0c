#!/bin/bash
# session 20 call 2: every kernel check (new: V2 routers, down's whole-tile epilogue), engine_check on the V2 routers and the grouped path
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
OUT=$O/run timeout 220 t/gpu/run test > $O/test.txt 2>&1
echo "test rc=$?"; grep -cE "^ok" $O/test.txt; grep -E "^not ok" $O/test.txt | head; grep -E "router_select|route_fused" $O/test.txt; tail -3 $O/test.txt
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16-v2 bf16-v2lite bf16-p240" OUT=$O/eng timeout $(( 570 - ($(date +%s) - t0) )) t/gpu/run engine > $O/engine.txt 2>&1
echo "engine rc=$?"; grep -E "^(not ok)|^# (median|decode|cos|greedy)|cuda vs cpu engine|^== " $O/engine.txt | head -40
echo "== t=$(( $(date +%s) - t0 ))"
