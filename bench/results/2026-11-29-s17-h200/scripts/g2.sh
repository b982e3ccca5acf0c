#!/bin/bash
# session 17 call 2: bf16 split partials in MLA decode (A/B against fp32);
# bf16 expert outputs y (grouped + masked down, combine); regression
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
OUT=$O/ab timeout 260 t/gpu/kernel-ab -r 2 -g '^mla decode (bf16|fp8) +B=(1|16|64) ctx=(1024|8192):' "" "-DMLA_PART_F32=1" > $O/ab_mla.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_mla.txt
grep -h "^not ok" $O/ab/v*/kcheck.tap | head -5
grep -h "mla decode" $O/ab/v0/table.txt | head -20
echo "== t=$(( $(date +%s) - t0 ))"
KCHECK_ONLY=moe OUT=$O/abm timeout 150 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g '^moe layer decode B=(2048|4096)' "" > $O/ab_moe.txt 2>&1
sed -n '/==== kernel variants/,$p' $O/ab_moe.txt
grep -h "^not ok" $O/abm/v*/kcheck.tap | head -5
grep -h "grouped\|parts" $O/abm/v0/table.txt
timeout 60 $O/abm/v0/kcheck bench $O/moed_table.txt moed > $O/moed.log 2>&1; grep -h "moe " $O/moed_table.txt | head -14
echo "== t=$(( $(date +%s) - t0 ))"
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16 fp8 bf16-p240" OUT=$O/run timeout $(( 575 - ($(date +%s) - t0) )) t/gpu/run engine > $O/engine.txt 2>&1
echo "engine ok $(grep -c '^ok' $O/engine.txt) not ok $(grep -c '^not ok' $O/engine.txt)"
grep -E "^not ok|decode step B=1 graph \(" $O/engine.txt | head -8
echo "== t=$(( $(date +%s) - t0 ))"
rm -f $O/ab/v*/*.o $O/ab/v*/kcheck $O/abm/v*/*.o $O/abm/v*/kcheck
