#!/bin/bash
# session 17 call 3: grouped GEMM at 128-row tiles as four 64-column units
# with two temporaries (promotion of unit u-1 under unit u's MMAs) vs the
# halves; serve-check on cuda with this session's kernels
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
KCHECK_ONLY=moe OUT=$O/abm timeout 300 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g '^moe layer decode B=(2048|4096)' "" "-DKG_PIPE=0" > $O/ab_moe.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
grep -h "^not ok" $O/abm/v*/kcheck.tap | head -5
grep -H "grouped" $O/abm/v*/table.txt
echo "== t=$(( $(date +%s) - t0 ))"
left=$(( 570 - ($(date +%s) - t0) )); echo "serve budget $left s"
CARRY=build/serve-carry BACKEND=cuda MAX_TOKENS=64 OUT=$O/serve timeout $left t/gpu/serve-check --load-format dummy --seed 7 --hf-overrides '{"num_hidden_layers": 4}' > $O/serve.txt 2>&1
echo "serve rc=$?"; grep -E "^== |serve-check" $O/serve.txt | cut -c1-200
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/abm/v*/*.o $O/abm/v*/kcheck
