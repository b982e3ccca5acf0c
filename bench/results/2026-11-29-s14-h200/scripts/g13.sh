#!/bin/bash
export NCCL_NVLS_ENABLE=0
NVFLAGS="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xcompiler -fPIC"
mkdir -p /tmp/v
VS="0 2 4 8"
for v in $VS; do (nvcc $NVFLAGS -DMF_PF=$v -c kernels/mla.cu -o /tmp/v/mla_$v.o 2>/dev/null || echo "build $v failed") & done; wait
ls build/gpu/obj | grep -v '^mla.o$' | sed 's|^|build/gpu/obj/|' > /tmp/v/objs
for v in $VS; do cc -o /tmp/v/kc_$v $(cat /tmp/v/objs) /tmp/v/mla_$v.o -L/usr/local/cuda/lib64 -lcublasLt -lcudart_static -lstdc++ -lm -lpthread -ldl -lrt; done
for x in v3 v2; do
  E=""; [ $x = v2 ] && E="KIMI_MLA_FP8_V2=1"
  env $E KCHECK_ONLY=mla timeout 60 build/gpu/kcheck > $OUT/kc_$x.txt 2>&1; echo "kcheck pf4 $x rc=$? $(grep -c '^ok' $OUT/kc_$x.txt) ok $(grep -c '^not ok' $OUT/kc_$x.txt) not ok"
  grep '^not ok' $OUT/kc_$x.txt | cut -c1-150
done
sel() { grep -E '^mla decode' $1 | grep -E 'B=(16|64) ctx=8192:|B=64 ctx=1024:|B= 1 ctx=8192:' | sed -E 's/mla decode //; s/ctx=//; s/  +/ /g; s/B= /B=/; s/ B=/:B=/; s/ ([0-9]+):/x\1:/; s/: ([0-9.]+) us.*= ([0-9]+)% of copy.*/=\1(\2%)/' | tr '\n' ' '; }
for r in 1 2; do for v in $VS; do
  timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/b3_$v.txt 2>&1
  echo "== PF=$v v3+bf16: $(sel /tmp/v/b3_$v.txt)"
  KIMI_MLA_FP8_V2=1 timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/b2_$v.txt 2>&1
  echo "== PF=$v v2: $(sel /tmp/v/b2_$v.txt | tr ' ' '\n' | grep fp8 | tr '\n' ' ')"
done; done
cp /tmp/v/b3_4.txt $OUT/bench_pf4_v3.txt; cp /tmp/v/b2_4.txt $OUT/bench_pf4_v2.txt
