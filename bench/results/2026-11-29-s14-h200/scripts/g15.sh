#!/bin/bash
export NCCL_NVLS_ENABLE=0
NVFLAGS="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xcompiler -fPIC"
mkdir -p /tmp/v
declare -A D=( [base]="" [skel]="-DM9_ABL_NOPV -DM9_ABL_NOS" [nosmx]="-DM9_ABL_NOPV -DM9_ABL_NOS -DM9_ABL_NOSMX" [loadonly]="-DM9_ABL_NOPV -DM9_ABL_NOS -DM9_ABL_LOADONLY" )
VS="base skel nosmx loadonly"
for v in $VS; do (nvcc $NVFLAGS ${D[$v]} -c kernels/mla.cu -o /tmp/v/mla_$v.o 2>/dev/null || echo "build $v failed") & done; wait
ls build/gpu/obj | grep -v '^mla.o$' | sed 's|^|build/gpu/obj/|' > /tmp/v/objs
for v in $VS; do cc -o /tmp/v/kc_$v $(cat /tmp/v/objs) /tmp/v/mla_$v.o -L/usr/local/cuda/lib64 -lcublasLt -lcudart_static -lstdc++ -lm -lpthread -ldl -lrt; done
sel() { grep -E '^mla decode fp8' $1 | grep -E 'B=(16|64) ctx=8192:|B=64 ctx=1024:' | sed -E 's/mla decode //; s/ctx=//; s/  +/ /g; s/B= /B=/; s/ B=/:B=/; s/ ([0-9]+):/x\1:/; s/: ([0-9.]+) us.*= ([0-9]+)% of copy.*/=\1(\2%)/' | tr '\n' ' '; }
for r in 1 2; do for v in $VS; do
  timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/b_$v.txt 2>&1
  echo "== $v: $(sel /tmp/v/b_$v.txt)"
done; done
