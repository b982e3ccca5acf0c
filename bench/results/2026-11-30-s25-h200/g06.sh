#!/bin/bash
# session 25 call 6: the whole GPU check on the committed tree: kcheck (every
# kernel), engine_check bf16 / fp8 / Moonlight / V2-Lite widths / 128 heads /
# transformers fixture, then the attention table once more
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
ENGINE_KV="bf16 fp8 bf16-moonlight bf16-v2lite-widths bf16-h128 hf" ENGINE_CHECK=build/engine_check \
  timeout 520 t/gpu/run test engine > $OUT/run.log 2>&1
echo "run rc=$? t=$(( $(date +%s) - t0 ))"
tail -25 $OUT/run.log
grep "^not ok" $OUT/run.log | head
