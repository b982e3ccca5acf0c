#!/bin/bash
# session 24 call 8: TMA L2 promotion 256 (default) vs 128 vs none: MLA decode bf16 and the grouped GEMMs
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
t/gpu/run nothing > /tmp/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
for p in 256 128 0 256 128; do
  KIMI_TMAP_L2_PROMOTION=$p timeout 50 build/gpu/kcheck bench /tmp/t_$p mla > /tmp/b.log 2>&1
  echo "promo $p t=$(( $(date +%s) - t0 ))"; grep -E "^mla +bf16 +B=(16|64) +ctx=8192" /tmp/t_$p | cut -c1-120
done
for p in 256 128; do
  KIMI_TMAP_L2_PROMOTION=$p timeout 40 build/gpu/kcheck bench /tmp/g_$p moeg > /tmp/b.log 2>&1
  echo "promo $p moeg t=$(( $(date +%s) - t0 ))"; grep grouped /tmp/g_$p | cut -c1-200
done
