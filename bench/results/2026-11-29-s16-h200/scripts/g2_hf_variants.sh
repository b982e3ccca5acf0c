#!/bin/bash
# session 16 call 2: Hugging Face reference logits for DeepSeek-V3-family
# config variants of the tiny model (t/gen/variants.json; the model dirs
# written here by `kimi-engine gen-tiny-model --hf-overrides`, carried)
O=${OUT:-/tmp/o}; mkdir -p $O
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
for d in build/variants/*/; do
  v=$(basename $d)
  echo "== $v"
  timeout 150 python3 t/gen/hf_reference.py --model $d --out $O/$v --prompt-lens 7,40,300 --greedy 8 2>&1 | grep -v Warning | tail -8
done
