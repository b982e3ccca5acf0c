#!/bin/bash
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
for spec in "a|The capital of France is a" "b|The capital of France is a city that" "c|The capital of France is a city that many people love" "d|The capital of France is a city that many people love to visit in"; do
  IFS='|' read name prompt <<< "$spec"
  PL_PROMPT="$prompt" CARRY=build/serve-carry BACKEND=cuda MAX_TOKENS=8 OUT=$O/$name timeout 150 t/gpu/serve-check --load-format dummy --seed 7 --hf-overrides '{"num_hidden_layers": 4}' > $O/serve_$name.txt 2>&1
  echo "$name rc=$?"; grep -E "^== prompt_logprobs" $O/serve_$name.txt
done
