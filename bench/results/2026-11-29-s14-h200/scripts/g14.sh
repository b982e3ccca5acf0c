#!/bin/bash
export NCCL_NVLS_ENABLE=0
NVFLAGS="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xcompiler -fPIC"
mkdir -p /tmp/v
VS="36 9 4 1"
for v in $VS; do (nvcc $NVFLAGS -DM8_PPC=$v -c kernels/mla.cu -o /tmp/v/mla_$v.o 2>/dev/null || echo "build $v failed") & done; wait
ls build/gpu/obj | grep -v '^mla.o$' | sed 's|^|build/gpu/obj/|' > /tmp/v/objs
for v in $VS; do cc -o /tmp/v/kc_$v $(cat /tmp/v/objs) /tmp/v/mla_$v.o -L/usr/local/cuda/lib64 -lcublasLt -lcudart_static -lstdc++ -lm -lpthread -ldl -lrt; done
KCHECK_ONLY=mla timeout 60 /tmp/v/kc_1 > $OUT/kc_ppc1.txt 2>&1; echo "kcheck ppc1 v3 rc=$? $(grep -c '^ok' $OUT/kc_ppc1.txt) ok $(grep -c '^not ok' $OUT/kc_ppc1.txt) not ok"
sel() { grep -E '^mla decode' $1 | grep -E 'B=(16|64) ctx=8192:|B=64 ctx=1024:' | sed -E 's/mla decode //; s/ctx=//; s/  +/ /g; s/B= /B=/; s/ B=/:B=/; s/ ([0-9]+):/x\1:/; s/: ([0-9.]+) us.*= ([0-9]+)% of copy.*/=\1(\2%)/' | tr '\n' ' '; }
for r in 1 2; do for v in $VS; do
  timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/b3_$v.txt 2>&1
  KIMI_MLA_FP8_V2=1 timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/b2_$v.txt 2>&1
  echo "== PPC=$v v3: $(sel /tmp/v/b3_$v.txt | tr ' ' '\n' | grep fp8 | tr '\n' ' ') v2: $(sel /tmp/v/b2_$v.txt | tr ' ' '\n' | grep fp8 | tr '\n' ' ')"
  [ $r = 1 ] && [ $v = 36 ] && echo "   bf16: $(sel /tmp/v/b3_$v.txt | tr ' ' '\n' | grep bf16 | tr '\n' ' ')"
done; done
for v in 36 1; do
  KBENCH_MLA_SEQ=1 timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/s3_$v.txt 2>&1
  KBENCH_MLA_SEQ=1 KIMI_MLA_FP8_V2=1 timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/s2_$v.txt 2>&1
  echo "== SEQ PPC=$v v3+bf16: $(sel /tmp/v/s3_$v.txt) v2: $(sel /tmp/v/s2_$v.txt | tr ' ' '\n' | grep fp8 | tr '\n' ' ')"
done
