#!/bin/bash
# session 26 call 4: the default rule (chunks of 64+ tokens after a prefix
# of at most 12x their length) against both forms at prefixes 0 / 1K / 4K /
# 12K, bf16 and fp8 cache; engine_check on the rule and with every token
# expanded
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
for kv in bf16 fp8; do
  timeout 150 $EC --model t/gpu/kimi-k2 --kv $kv --prefill-table --hf-overrides "$SHAPE" > $OUT/prefill-$kv.tap 2>&1
  echo "prefill table $kv rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# prefill\|^not ok" $OUT/prefill-$kv.tap
done
timeout 120 $EC --model t/gpu/kimi-k2 --kv bf16 --prefill 240 --hf-overrides "$SHAPE" > $OUT/engine-bf16-p240.tap 2>&1
echo "engine bf16 p240 rc=$? $(grep -c '^ok' $OUT/engine-bf16-p240.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16-p240.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|median (1 - cos) vs" $OUT/engine-bf16-p240.tap | head -4
KIMI_MLA_EXPAND_MIN=1 KIMI_MLA_EXPAND_PREFIX=0 timeout 120 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/engine-bf16-expand1.tap 2>&1
echo "engine bf16 expand1 rc=$? $(grep -c '^ok' $OUT/engine-bf16-expand1.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16-expand1.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|median (1 - cos) vs\|ok 19" $OUT/engine-bf16-expand1.tap | head -4
