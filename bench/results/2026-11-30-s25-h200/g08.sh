#!/bin/bash
# session 25 call 8: one quantisation pass writing both scale layouts (the
# fused norm + quant at cuBLASLt sizes too): every kernel check, the
# attention table, engine_check bf16
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
timeout 150 build/gpu/kcheck test > $OUT/kcheck.tap 2>&1; echo "kcheck rc=$? $(grep -c '^ok' $OUT/kcheck.tap) ok $(grep -c '^not ok' $OUT/kcheck.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "quant\|^not ok" $OUT/kcheck.tap | head -12
timeout 60 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" --attn-table > $OUT/attn-bf16.tap 2>&1
echo "attn bf16 rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# attn\|not ok" $OUT/attn-bf16.tap
timeout 150 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/engine-bf16.tap 2>&1
echo "engine bf16 rc=$? $(grep -c '^ok' $OUT/engine-bf16.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|# decode step B=1 graph\|median\|ok 19\|prefill 960\|48 rows" $OUT/engine-bf16.tap
