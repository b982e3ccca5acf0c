#!/bin/bash
# session 15 regression: mla checks + bench (3 stages), engine_check bf16/fp8, serve on cuda with bad_words
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}
mkdir -p $O
t0=$(date +%s)
OUT=$O/ab t/gpu/kernel-ab -r 1 -g '^mla decode' "" > $O/ab.txt 2>&1
tail -20 $O/ab.txt
rm -f $O/ab/v0/*.o $O/ab/v0/kcheck
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16 fp8" OUT=$O/run timeout 260 t/gpu/run engine > $O/engine.txt 2>&1
grep -E "^(ok|not ok)|engine_check|decode step|summary|floor" $O/engine.txt | tail -20
echo "== t=$(( $(date +%s) - t0 ))"
CARRY=build/serve-carry BACKEND=cuda MAX_TOKENS=64 OUT=$O/serve timeout 250 t/gpu/serve-check --load-format dummy --seed 7 --hf-overrides '{"num_hidden_layers": 4}' > $O/serve.txt 2>&1
echo "serve rc=$?"
grep -E "^==" $O/serve.txt | tail -20
echo "== t=$(( $(date +%s) - t0 ))"
