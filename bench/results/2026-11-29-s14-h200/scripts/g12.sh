#!/bin/bash
export NCCL_NVLS_ENABLE=0
NVFLAGS="-O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xcompiler -fPIC"
mkdir -p /tmp/v
for v in base NOPV NOS NOPV_NOS; do
  D=""; [ $v = base ] || D=$(echo $v | sed 's/_/ /; s/\([A-Z]*\)/-DM9_ABL_\1/g')
  (nvcc $NVFLAGS $D -c kernels/mla.cu -o /tmp/v/mla_$v.o 2>/dev/null || echo "build $v failed") &
done; wait
ls build/gpu/obj | grep -v '^mla.o$' | sed 's|^|build/gpu/obj/|' > /tmp/v/objs
for v in base NOPV NOS NOPV_NOS; do cc -o /tmp/v/kc_$v $(cat /tmp/v/objs) /tmp/v/mla_$v.o -L/usr/local/cuda/lib64 -lcublasLt -lcudart_static -lstdc++ -lm -lpthread -ldl -lrt; done
for r in 1 2; do for v in base NOPV NOS NOPV_NOS; do
  timeout 100 /tmp/v/kc_$v bench /tmp/v/tab mla > /tmp/v/b_$v.txt 2>&1
  echo "== $v: $(grep -E '^mla decode fp8' /tmp/v/b_$v.txt | grep -E 'B=(16|64) ctx=8192:' | sed -E 's/mla decode fp8 +//; s/: ([0-9.]+) us.*/=\1/' | tr '\n' ' ')"
done; done
KBENCH_FP8=1 timeout 200 ncu --clock-control none --set full --import-source yes -k regex:mla_decode_fp8_3wg -c 1 -o /tmp/p3 build/gpu/kcheck bench /tmp/tab mlaone > /tmp/ncu.log 2>&1; echo ncu rc=$?
ncu -i /tmp/p3.ncu-rep --page details > $OUT/ncu_v3.txt 2>&1
grep -E "Duration|DRAM Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Active Warps Per" $OUT/ncu_v3.txt | head -12
ncu -i /tmp/p3.ncu-rep --page source --csv --print-source sass > /tmp/src.csv 2>/tmp/src.err; echo src rc=$? $(wc -c < /tmp/src.csv); head -c 300 /tmp/src.err
python3 .scratch/top.py /tmp/src.csv > $OUT/v3_top.txt 2>&1; head -50 $OUT/v3_top.txt | cut -c1-170
