#!/bin/bash
# session 24 call 2: raw metrics + SASS stall samples, our gate_up vs DeepGEMM bn128 nomc
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
t/gpu/run nothing > /tmp/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
N="ncu --clock-control none --set full --import-source yes"
timeout 150 $N -k regex:moe_grouped -c 1 -o /tmp/ours build/gpu/kcheck bench /tmp/tab moeg > /tmp/n1.log 2>&1; echo "ncu ours rc=$? t=$(( $(date +%s) - t0 ))"
timeout 120 $N -k regex:sm90_fp8 -c 1 -o /tmp/dg .scratch/anchors/deepgemm/dg_bench --shape gate_up --cfg dg_gu_bn128_nomc --iters 20 --rounds 1 --warm-ms 0 > /tmp/n2.log 2>&1; echo "ncu dg rc=$? t=$(( $(date +%s) - t0 ))"
for r in ours dg; do
  ncu -i /tmp/$r.ncu-rep --page raw --csv > /tmp/$r.raw.csv 2>&1
  python3 - /tmp/$r.raw.csv > $O/$r.raw.txt <<'PY'
import csv,sys
rows=list(csv.reader(open(sys.argv[1])))
h,u=rows[0],rows[1]
for r in rows[2:]:
    for k,unit,v in zip(h,u,r):
        print(k,unit,v,sep='\t')
PY
  ncu -i /tmp/$r.ncu-rep --page source --csv --print-source sass > /tmp/$r.src.csv 2>/dev/null
  gzip -c /tmp/$r.src.csv > $O/$r.src.csv.gz
done
cuobjdump -sass -fun '_Z18moe_grouped_kernelILb1ELi128EEv14CUtensorMap_stPKfiii14kimi_experts_t13kimi_moe_ws_t' build/gpu/kcheck | gzip > $O/ours.sass.gz
ls -la $O
echo "== t=$(( $(date +%s) - t0 ))"
