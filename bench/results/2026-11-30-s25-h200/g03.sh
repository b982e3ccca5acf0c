#!/bin/bash
# session 25 call 3: the absorptions v2 (absorb_o splits K over its warps,
# every load of a chunk issued before the first use): kcheck absorb, the
# attention table (bf16, fp8), engine_check bf16 end to end
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
KCHECK_ONLY=absorb timeout 120 build/gpu/kcheck test > $OUT/kcheck-absorb.tap 2>&1; echo "kcheck absorb rc=$?"; cat $OUT/kcheck-absorb.tap
for kv in bf16 fp8; do
  timeout 150 $EC --model t/gpu/kimi-k2 --kv $kv --hf-overrides "$SHAPE" --attn-table > $OUT/attn-$kv.tap 2>&1
  echo "attn $kv rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# attn\|not ok" $OUT/attn-$kv.tap
done
timeout 300 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/engine-bf16.tap 2>&1
echo "engine bf16 rc=$? $(grep -c '^ok' $OUT/engine-bf16.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|# decode step\|# phase attention\|# attention split\|median" $OUT/engine-bf16.tap
