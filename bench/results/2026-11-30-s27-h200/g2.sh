#!/bin/bash
# session 27 call 2: the committed tree (05a7ba6): every kernel check,
# engine_check fp8 and against transformers, the #6 table (kbench all),
# and ncu of the decode-size dense GEMM (where its time goes at T = 1)
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
EC=build/engine_check
SHAPE='{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}'
t/gpu/run nothing > $OUT/build.log 2>&1; echo "build rc=$? t=$(( $(date +%s) - t0 ))"
timeout 200 build/gpu/kcheck test > $OUT/kcheck.tap 2>&1; echo "kcheck rc=$? $(grep -c '^ok' $OUT/kcheck.tap) ok $(grep -c '^not ok' $OUT/kcheck.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok" $OUT/kcheck.tap | head
timeout 150 $EC --model t/gpu/kimi-k2 --kv fp8 --hf-overrides "$SHAPE" > $OUT/engine-fp8.tap 2>&1
echo "engine fp8 rc=$? $(grep -c '^ok' $OUT/engine-fp8.tap) ok, $(grep -c '^not ok' $OUT/engine-fp8.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|median (1 - cos) vs\|^# decode step B=1 graph (" $OUT/engine-fp8.tap | head -4
timeout 150 $EC --hf t/fixtures/model-k2width > $OUT/engine-hf.tap 2>&1
echo "engine hf rc=$? $(grep -c '^ok' $OUT/engine-hf.tap) ok, $(grep -c '^not ok' $OUT/engine-hf.tap) not ok t=$(( $(date +%s) - t0 ))"
grep "^not ok\|^# vs HF" $OUT/engine-hf.tap | head -4
timeout 200 build/gpu/kcheck bench $OUT/bench_table.txt all > $OUT/bench.log 2>&1
echo "bench rc=$? t=$(( $(date +%s) - t0 ))"; cat $OUT/bench_table.txt
timeout 90 ncu --clock-control none --set full -k regex:gemv_kernel -c 6 build/gpu/kcheck bench $OUT/t2.txt gemm > $OUT/ncu-gemv.txt 2>&1
echo "ncu rc=$? t=$(( $(date +%s) - t0 ))"
grep -E "gemv_kernel|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Block Limit|Grid Size|Cluster Size|Waves Per SM|Theoretical Occ|One or More Eligible|Issued Warp" $OUT/ncu-gemv.txt | head -80
