#!/bin/bash
# session 26 call 1: the expanded MLA prefill in the engine (kimi_mla_prefill
# on kv_b's output, kimi_mla_kv_gather): kernel checks (prefill, gather),
# engine_check with prefill chunks expanded (p240) and with every token
# expanded (expand1) against the cpu oracle and transformers, long prefills
# expanded vs absorbed
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
KCHECK_ONLY=prefill timeout 100 build/gpu/kcheck test > $OUT/kcheck-prefill.tap 2>&1; echo "kcheck prefill rc=$? t=$(( $(date +%s) - t0 ))"
cat $OUT/kcheck-prefill.tap | grep -v "^#" | head -30
timeout 200 $EC --model t/gpu/kimi-k2 --kv bf16 --prefill-table --hf-overrides "$SHAPE" > $OUT/prefill-bf16.tap 2>&1
echo "prefill table rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# prefill\|ok" $OUT/prefill-bf16.tap | tail -8
for v in "bf16 --prefill 240" "fp8 --prefill 240"; do
  set -- $v
  timeout 150 $EC --model t/gpu/kimi-k2 --kv $v --hf-overrides "$SHAPE" > $OUT/engine-$1-p240.tap 2>&1
  echo "engine $v rc=$? $(grep -c '^ok' $OUT/engine-$1-p240.tap) ok, $(grep -c '^not ok' $OUT/engine-$1-p240.tap) not ok t=$(( $(date +%s) - t0 ))"
  grep "^not ok\|median\|prefill 960" $OUT/engine-$1-p240.tap | head -8
done
KIMI_MLA_EXPAND_MIN=1 timeout 150 $EC --model t/gpu/kimi-k2 --kv bf16 --hf-overrides "$SHAPE" > $OUT/engine-bf16-expand1.tap 2>&1
echo "engine bf16 expand1 rc=$? $(grep -c '^ok' $OUT/engine-bf16-expand1.tap) ok, $(grep -c '^not ok' $OUT/engine-bf16-expand1.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|median" $OUT/engine-bf16-expand1.tap | head -8
KIMI_MLA_EXPAND_MIN=1 timeout 150 $EC --hf t/fixtures/model-k2width > $OUT/engine-hf-expand1.tap 2>&1
echo "engine hf expand1 rc=$? $(grep -c '^ok' $OUT/engine-hf-expand1.tap) ok, $(grep -c '^not ok' $OUT/engine-hf-expand1.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|^# vs HF" $OUT/engine-hf-expand1.tap | head -8
