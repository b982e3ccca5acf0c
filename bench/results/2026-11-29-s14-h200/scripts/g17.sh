#!/bin/bash
# final: full regression of HEAD (+ stage A/B of the fp8 bulk-copy kernel)
export NCCL_NVLS_ENABLE=0
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16 fp8 bf16-p240 bf16-moonlight" OUT=$OUT/run timeout 420 t/gpu/run test engine 2>&1 | tail -30
NVFLAGS="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xcompiler -fPIC"
mkdir -p /tmp/v
nvcc $NVFLAGS -DM8_STAGES=3 -c kernels/mla.cu -o /tmp/v/mla_3.o
ls build/gpu/obj | grep -v '^mla.o$' | sed 's|^|build/gpu/obj/|' > /tmp/v/objs
cc -o /tmp/v/kc_3 $(cat /tmp/v/objs) /tmp/v/mla_3.o -L/usr/local/cuda/lib64 -lcublasLt -lcudart -lstdc++ -lm -lpthread -ldl -lrt
for r in 1 2; do
  timeout 60 build/gpu/kcheck bench /tmp/v/tab mla > /tmp/v/b4.txt 2>&1; echo "stages 4: $(grep -E '^mla decode fp8' /tmp/v/b4.txt | grep -E 'B=(16|64) ctx=8192:' | sed -E 's/: ([0-9.]+) us.*/=\1/' | tr '\n' ' ')"
  timeout 60 /tmp/v/kc_3 bench /tmp/v/tab mla > /tmp/v/b3.txt 2>&1; echo "stages 3: $(grep -E '^mla decode fp8' /tmp/v/b3.txt | grep -E 'B=(16|64) ctx=8192:' | sed -E 's/: ([0-9.]+) us.*/=\1/' | tr '\n' ' ')"
done
