#!/bin/bash
# session 20 call 3: transformers' DeepseekV2ForCausalLM references (cpu torch) for the v2-groups / v2-lite variants;
# gate_up's token rows permuted into plan order and loaded by TMA (KG_PERMUTE) vs committed; engine_check bf16-v2 at scale 1
export NCCL_NVLS_ENABLE=0
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
{
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1 | tail -1
for v in v2-groups v2-lite; do
    CUDA_VISIBLE_DEVICES= timeout 150 python3 t/gen/hf_reference.py --model build/variants/$v --out $O/$v --prompt-lens 7,40,300 --greedy 8 > /tmp/hf_$v.log 2>&1
    echo "$v rc=$? t=$(( $(date +%s) - t0 ))"; grep -v Warning /tmp/hf_$v.log | tail -6
done
KCHECK_ONLY=moe AB_TIMEOUT=140 OUT=/tmp/abm timeout 330 t/gpu/kernel-ab -k moe_grouped.cu -b moeg -r 2 -g 'moe layer decode B=(2048|4096)' "" "-DKG_PERMUTE=1" > /tmp/ab_moe.txt 2>&1
echo "ab rc=$? t=$(( $(date +%s) - t0 ))"
sed -n '/==== kernel variants/,$p' /tmp/ab_moe.txt
for v in 0 1; do echo "== v$v"; grep -h "grouped E=\|parts B=" /tmp/abm/v$v/table.txt 2>/dev/null; grep -h "^not ok" /tmp/abm/v$v/kcheck.tap 2>/dev/null | head -5; done
ENGINE_CHECK=build/engine_check ENGINE_KV="bf16-v2" OUT=/tmp/eng timeout $(( 580 - ($(date +%s) - t0) )) t/gpu/run engine > /tmp/engine.txt 2>&1
echo "engine rc=$?"; grep -E "^(not ok)|^# (median|decode step)|cuda vs cpu engine|^== " /tmp/engine.txt | head -20
echo "== t=$(( $(date +%s) - t0 ))"
} 2>&1 | tee $O/log.txt
cp /tmp/eng/engine_bf16-v2.tap $O/ 2>/dev/null
(cd /tmp && tar czf $O/ab.tgz ab_moe.txt abm/v*/table.txt abm/v*/kcheck.tap abm/v*/bench*.log 2>/dev/null)
