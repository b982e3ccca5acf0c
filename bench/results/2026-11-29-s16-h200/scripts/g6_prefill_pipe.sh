#!/bin/bash
# session 16 call 6: MLA prefill with S of the next tile and P V of this one
# in flight together (PW_PIPE=1, 3 stages) against the committed kernel;
# prefill checks only, prefill bench only (short call: little device time left)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
KCHECK_ONLY=prefill OUT=$O/ab timeout 230 t/gpu/kernel-ab -k mla_prefill.cu -b prefill -r 2 -g '^mla prefill' "" "-DPW_PIPE=1" > $O/ab_pipe.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_pipe.txt
grep -h "mla_prefill" $O/ab/v1/kcheck.tap | head -8
tail -3 $O/ab/v1/nvcc.log 2>/dev/null
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/ab/v*/*.o $O/ab/v*/kcheck
