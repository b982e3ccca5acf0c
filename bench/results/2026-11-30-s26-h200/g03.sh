#!/bin/bash
# session 26 call 3: every kernel check and the engine checks on the
# committed expanded prefill (default threshold: chunks of 64+ tokens),
# and where a chunk after a long prefix stops gaining from the expansion
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
timeout 200 build/gpu/kcheck test > $OUT/kcheck.tap 2>&1; echo "kcheck rc=$? $(grep -c '^ok' $OUT/kcheck.tap) ok $(grep -c '^not ok' $OUT/kcheck.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok" $OUT/kcheck.tap | head
timeout 200 $EC --model t/gpu/kimi-k2 --kv bf16 --prefill-table --hf-overrides "$SHAPE" > $OUT/prefill-bf16.tap 2>&1
echo "prefill table rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# prefill\|^not ok" $OUT/prefill-bf16.tap
ENGINE_KV="bf16 fp8 bf16-moonlight bf16-v2lite-widths bf16-h128 bf16-h8 hf" ENGINE_CHECK=$EC OUT=$OUT/run timeout 420 t/gpu/run engine > $OUT/engine.log 2>&1
echo "engine rc=$? t=$(( $(date +%s) - t0 ))"; sed -n '/== summary/,$p' $OUT/engine.log | grep -v "^$"
