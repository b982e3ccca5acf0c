#!/bin/bash
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
for spec in "kimi|build/serve-carry/model|The capital of France is a city that many people love to visit in the spring and the summer" "ds|build/ds-model|Hi" "kimi2|build/serve-carry/model|The capital of France is a city"; do
  IFS='|' read name model prompt <<< "$spec"
  PL_PROMPT="$prompt" CARRY=build/serve-carry MODEL=$PWD/$model BACKEND=cuda MAX_TOKENS=8 OUT=$O/$name timeout 200 t/gpu/serve-check --load-format dummy --seed 7 --hf-overrides '{"num_hidden_layers": 4}' > $O/serve_$name.txt 2>&1
  echo "$name rc=$?"; grep -E "^== prompt_logprobs|serve-check:" $O/serve_$name.txt
done
