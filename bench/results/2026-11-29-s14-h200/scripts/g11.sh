#!/bin/bash
export NCCL_NVLS_ENABLE=0
echo "== kcheck mla v3"
KCHECK_ONLY=mla timeout 60 build/gpu/kcheck > $OUT/kc_v3.txt 2>&1; rc=$?; echo "rc=$rc $(grep -c '^ok' $OUT/kc_v3.txt) ok $(grep -c '^not ok' $OUT/kc_v3.txt) not ok"
grep -E "^not ok|bulk" $OUT/kc_v3.txt | cut -c1-200
[ $rc = 0 ] || exit 1
echo "== bench mla v3"
timeout 100 build/gpu/kcheck bench /tmp/tab mla > $OUT/bench_v3.txt 2>&1; grep -E '^mla decode' $OUT/bench_v3.txt
timeout 150 build/engine_check --model t/gpu/kimi-k2 --kv fp8 --hf-overrides '{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}' > $OUT/ec_fp8.txt 2>&1; echo "ec fp8 rc=$? $(grep -c '^ok' $OUT/ec_fp8.txt) ok $(grep -c '^not ok' $OUT/ec_fp8.txt) not ok"
grep -E "^not ok|^# decode step B=1 graph \(" $OUT/ec_fp8.txt | cut -c1-200
