#!/bin/bash
# session 17 call 4: cuda against transformers' logits (engine_check --hf
# t/fixtures/model-k2width: bf16 and fp8 cache), then the whole #6
# benchmark table on HEAD, then the naive transformers baseline with what
# time is left
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O/run
t0=$(date +%s)
timeout 240 build/engine_check --hf t/fixtures/model-k2width > $O/hf.tap 2>&1
echo "hf rc $? at t=$(( $(date +%s) - t0 ))"; grep -E "^(ok|not ok)|^# " $O/hf.tap | cut -c1-330
left=$(( 530 - ($(date +%s) - t0) )); echo "bench budget $left s"
OUT=$O/run timeout $left t/gpu/run bench > $O/bench_run.txt 2>&1
echo "bench rc $? at t=$(( $(date +%s) - t0 ))"
sed -n '/==== summary/,$p' $O/bench_run.txt
left=$(( 565 - ($(date +%s) - t0) ))
[ $left -gt 30 ] && PYTHONUNBUFFERED=1 timeout $left python3 t/gpu/torch_baseline.py $O/run > $O/run/torch.log 2>&1
echo "torch at t=$(( $(date +%s) - t0 ))"; grep -E "^\[" $O/run/torch.log | tail -6
