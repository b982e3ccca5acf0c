#!/bin/bash
# session 14: v2 routing check, v3 (three warpgroups) check + bench
export NCCL_NVLS_ENABLE=0
nvidia-smi -L
cuobjdump -sass build/gpu/obj/mla.o 2>/dev/null | awk '/Function :/{f=($0 ~ /3wg/)} f' > $OUT/sass3wg.txt
echo "3wg sass lines $(wc -l < $OUT/sass3wg.txt), spill ops:"; grep -n -B4 -A1 'STL\|LDL' $OUT/sass3wg.txt | head -60
echo "== kcheck mla v2"
KIMI_MLA_FP8_V2=1 KCHECK_ONLY=mla timeout 120 build/gpu/kcheck > $OUT/kc_v2.txt 2>&1; echo "rc=$? $(grep -c '^ok' $OUT/kc_v2.txt) ok $(grep -c '^not ok' $OUT/kc_v2.txt) not ok"
grep -E "^not ok" $OUT/kc_v2.txt | cut -c1-200
echo "== kcheck mla v3"
KCHECK_ONLY=mla timeout 90 build/gpu/kcheck > $OUT/kc_v3.txt 2>&1; echo "rc=$? $(grep -c '^ok' $OUT/kc_v3.txt) ok $(grep -c '^not ok' $OUT/kc_v3.txt) not ok"
grep -E "^not ok|bulk" $OUT/kc_v3.txt | cut -c1-200
echo "== bench mla v2"
KIMI_MLA_FP8_V2=1 timeout 100 build/gpu/kcheck bench /tmp/tab mla > $OUT/bench_v2.txt 2>&1; grep -E '^mla decode fp8' $OUT/bench_v2.txt
echo "== bench mla v3"
timeout 100 build/gpu/kcheck bench /tmp/tab mla > $OUT/bench_v3.txt 2>&1; grep -E '^mla decode' $OUT/bench_v3.txt; grep -i 'copy\|floor' $OUT/bench_v3.txt | head -3
for kv in fp8 bf16; do
timeout 150 build/engine_check --model t/gpu/kimi-k2 --kv $kv --hf-overrides '{"num_hidden_layers": 3, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1}' > $OUT/ec_$kv.txt 2>&1; echo "ec $kv rc=$? $(grep -c '^ok' $OUT/ec_$kv.txt) ok $(grep -c '^not ok' $OUT/ec_$kv.txt) not ok"
grep -E "^not ok|^# decode step B=1 graph \(" $OUT/ec_$kv.txt | cut -c1-200
done
