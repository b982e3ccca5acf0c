#!/bin/bash
# session 20 call 6: MLA decode with more heads than one call serves (groups of 64): the MLA checks, engine_check at 128 heads
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
{
KCHECK_ONLY=mla OUT=/tmp/run timeout 120 t/gpu/run test > /tmp/test.txt 2>&1
echo "test rc=$?"; grep -E "^(not )?ok .*mla_decode" /tmp/test.txt | grep -E "H=(128|80)|^not ok" | cut -c1-200; grep -E "kernel checks" /tmp/test.txt
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16-h128" OUT=/tmp/eng timeout 150 t/gpu/run engine > /tmp/engine.txt 2>&1
echo "engine rc=$?"; grep -E "^(not ok)|^# (median|decode step)|cuda vs cpu engine|^ok" /tmp/engine.txt | cut -c1-220 | head -30
echo "== t=$(( $(date +%s) - t0 ))"
} 2>&1 | tee $O/log.txt
cp /tmp/eng/engine_bf16-h128.tap $O/ 2>/dev/null
