#!/bin/bash
# session 26 call 2: the expansion in bf16 (kv_b dequantised once a layer,
# the latent rows as cached, cuBLASLt bf16 x bf16 -> bf16): kernel checks,
# long prefills (bf16, fp8, context chunks of 1024 merged), every token
# expanded against the cpu oracle and transformers
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
KCHECK_ONLY=prefill timeout 100 build/gpu/kcheck test > $OUT/kcheck-prefill.tap 2>&1; echo "kcheck prefill rc=$? t=$(( $(date +%s) - t0 ))"
grep -v "^#" $OUT/kcheck-prefill.tap | cut -c1-150
for v in "bf16" "fp8" "bf16 rows1024"; do
  set -- $v; envs=; [ "${2:-}" = rows1024 ] && envs=KIMI_MLA_EXPAND_ROWS=1024
  timeout 200 env $envs $EC --model t/gpu/kimi-k2 --kv $1 --prefill-table --hf-overrides "$SHAPE" > $OUT/prefill-$1${2:+-$2}.tap 2>&1
  echo "prefill table $v rc=$? t=$(( $(date +%s) - t0 ))"; grep "^# prefill\|^not ok" $OUT/prefill-$1${2:+-$2}.tap
done
for kv in bf16 fp8; do
  KIMI_MLA_EXPAND_MIN=1 timeout 150 $EC --model t/gpu/kimi-k2 --kv $kv --hf-overrides "$SHAPE" > $OUT/engine-$kv-expand1.tap 2>&1
  echo "engine $kv expand1 rc=$? $(grep -c '^ok' $OUT/engine-$kv-expand1.tap) ok, $(grep -c '^not ok' $OUT/engine-$kv-expand1.tap) not ok t=$(( $(date +%s) - t0 ))"
  grep "^not ok\|median\|ok 19" $OUT/engine-$kv-expand1.tap | cut -c1-250 | head -8
done
KIMI_MLA_EXPAND_MIN=1 timeout 150 $EC --hf t/fixtures/model-k2width > $OUT/engine-hf-expand1.tap 2>&1
echo "engine hf expand1 rc=$? $(grep -c '^ok' $OUT/engine-hf-expand1.tap) ok, $(grep -c '^not ok' $OUT/engine-hf-expand1.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|^# vs HF" $OUT/engine-hf-expand1.tap | head -8
