#!/bin/bash
# build kcheck into $1 (default build/gpu) here; EXTRA=-D... for variants
set -e
B=${1:-build/gpu}
mkdir -p $B/obj
NVFLAGS="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xcompiler -fPIC,-Wall,-Wextra ${EXTRA:-}"
CFLAGS="-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Wno-unused-parameter -I/usr/local/cuda/include"
ls kernels/*.cu | xargs -P 16 -I{} sh -c 'f={}; b=$(basename $f .cu); nvcc '"$NVFLAGS"' -c $f -o '"$B"'/obj/$b.o'
for f in t/gpu/kcheck.c t/gpu/kbench.c engine/backend/cpu/ops.c engine/common/kimi_err.c; do
    cc $CFLAGS -c "$f" -o "$B/obj/$(basename "$f" .c).o"
done
cc -o "$B/kcheck" "$B"/obj/*.o -L/usr/local/cuda/lib64 -lcublasLt -lcudart_static -lstdc++ -lm -lpthread -ldl -lrt
