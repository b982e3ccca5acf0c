#!/bin/bash
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
CARRY=build/serve-carry BACKEND=cuda MAX_TOKENS=64 OUT=$O/kimi timeout 260 t/gpu/serve-check --load-format dummy --seed 7 --hf-overrides '{"num_hidden_layers": 4}' > $O/serve_kimi.txt 2>&1
echo "kimi rc=$?"; grep -E "^==|serve-check:" $O/serve_kimi.txt | grep -v "engine log" | tail -14
echo "== t=$(( $(date +%s) - t0 ))"
CARRY=build/serve-carry MODEL=$PWD/build/ds-model BACKEND=cuda MAX_TOKENS=64 OUT=$O/ds timeout 260 t/gpu/serve-check --load-format dummy --seed 7 --hf-overrides '{"num_hidden_layers": 4}' > $O/serve_ds.txt 2>&1
echo "ds rc=$?"; grep -E "^==|serve-check:" $O/serve_ds.txt | grep -v "engine log" | tail -14
echo "== t=$(( $(date +%s) - t0 ))"
