#!/bin/bash
# session 24 call 9: the committed L2-promotion change: kcheck mla + bench mla, twice
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
t/gpu/run nothing > /tmp/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
KCHECK_ONLY=mla timeout 120 build/gpu/kcheck test > /tmp/k.tap 2>&1; echo "kcheck mla rc=$? $(grep -c '^ok' /tmp/k.tap) ok $(grep -c '^not ok' /tmp/k.tap) not ok t=$(( $(date +%s) - t0 ))"
for r in 1 2; do timeout 50 build/gpu/kcheck bench /tmp/t mla > /tmp/b.log 2>&1; grep -E "^floor|^mla +(bf16|fp8) +B=(1|16|64) +ctx=(1024|8192) " /tmp/t | cut -c1-130; done
echo "t=$(( $(date +%s) - t0 ))"
