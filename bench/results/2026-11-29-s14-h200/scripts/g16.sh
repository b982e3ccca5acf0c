#!/bin/bash
export NCCL_NVLS_ENABLE=0
NVFLAGS="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xcompiler -fPIC"
mkdir -p /tmp/v
declare -A D=( [nl5]="" [nl4]="-DM8_STAGES=4" [nl3]="-DM8_STAGES=3" )
VS="nl5 nl4 nl3"
for v in $VS; do (nvcc $NVFLAGS ${D[$v]} -c kernels/mla.cu -o /tmp/v/mla_$v.o 2>/dev/null || echo "build $v failed") & done; wait
ls build/gpu/obj | grep -v '^mla.o$' | sed 's|^|build/gpu/obj/|' > /tmp/v/objs
for v in $VS; do cc -o /tmp/v/kc_$v $(cat /tmp/v/objs) /tmp/v/mla_$v.o -L/usr/local/cuda/lib64 -lcublasLt -lcudart_static -lstdc++ -lm -lpthread -ldl -lrt; done
KCHECK_ONLY=mla timeout 60 build/gpu/kcheck > $OUT/kc.txt 2>&1; rc=$?; echo "kcheck nl5 rc=$rc $(grep -c '^ok' $OUT/kc.txt) ok $(grep -c '^not ok' $OUT/kc.txt) not ok"
grep -E '^not ok|bulk' $OUT/kc.txt | cut -c1-150
sel() { grep -E '^mla decode fp8' $1 | grep -E 'B=(16|64) ctx=(1024|8192):|B= 1 ctx=8192:' | sed -E 's/mla decode //; s/ctx=//; s/  +/ /g; s/B= /B=/; s/ B=/:B=/; s/ ([0-9]+):/x\1:/; s/: ([0-9.]+) us.*= ([0-9]+)% of copy.*/=\1(\2%)/' | tr '\n' ' '; }
for r in 1 2; do for v in $VS; do
  timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/b_$v.txt 2>&1
  echo "== $v: $(sel /tmp/v/b_$v.txt)"
done; done
cp /tmp/v/b_nl5.txt $OUT/bench_nl5.txt
[ $rc = 0 ] || exit 1
timeout 150 build/engine_check --model t/gpu/kimi-k2 --kv fp8 --hf-overrides '{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}' > $OUT/ec_fp8.txt 2>&1; echo "ec fp8 rc=$? $(grep -c '^ok' $OUT/ec_fp8.txt) ok $(grep -c '^not ok' $OUT/ec_fp8.txt) not ok"
grep -E "^not ok|^# decode step B=1 graph \(" $OUT/ec_fp8.txt | cut -c1-200
