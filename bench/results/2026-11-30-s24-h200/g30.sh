#!/bin/bash
# session 24 call 1: ncu side by side: our grouped gate_up/down vs DeepGEMM bn128 nomc; our MLA bf16 vs FlashMLA (B=64 x 8K)
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
t/gpu/run nothing > $O/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
N="ncu --clock-control none --set full"
timeout 150 $N -k regex:moe_grouped -c 2 -o /tmp/ours_moe build/gpu/kcheck bench /tmp/tab moeg > /tmp/n1.log 2>&1; echo "ncu ours moe rc=$? t=$(( $(date +%s) - t0 ))"; tail -3 /tmp/n1.log
timeout 120 $N -k regex:sm90_fp8 -c 1 -o /tmp/dg_gu .scratch/anchors/deepgemm/dg_bench --shape gate_up --cfg dg_gu_bn128_nomc --iters 20 --rounds 1 --warm-ms 0 > /tmp/n2.log 2>&1; echo "ncu dg gu rc=$? t=$(( $(date +%s) - t0 ))"; tail -3 /tmp/n2.log
timeout 120 $N -k regex:sm90_fp8 -c 1 -o /tmp/dg_dn .scratch/anchors/deepgemm/dg_bench --shape down --cfg dg_dn_bn128_nomc --iters 20 --rounds 1 --warm-ms 0 > /tmp/n3.log 2>&1; echo "ncu dg dn rc=$? t=$(( $(date +%s) - t0 ))"
timeout 100 $N -k regex:mla_decode -c 1 -o /tmp/ours_mla build/gpu/kcheck bench /tmp/tab mlaone > /tmp/n4.log 2>&1; echo "ncu ours mla rc=$? t=$(( $(date +%s) - t0 ))"
FM_B=64 FM_CTX=8192 timeout 100 $N -k regex:'flash|splitkv' -c 1 -o /tmp/fm .scratch/anchors/flashmla/fm_bench > /tmp/n5.log 2>&1; echo "ncu fm rc=$? t=$(( $(date +%s) - t0 ))"; tail -3 /tmp/n5.log
for r in ours_moe dg_gu dg_dn ours_mla fm; do
  [ -f /tmp/$r.ncu-rep ] && ncu -i /tmp/$r.ncu-rep --page details > $O/$r.txt 2>&1
done
cat /tmp/n1.log /tmp/n2.log /tmp/n3.log /tmp/n4.log /tmp/n5.log | grep -v "^==PROF==\|ptxas" > $O/runs.log
echo "== t=$(( $(date +%s) - t0 ))"
