#!/usr/bin/env python3
"""Reference logits for the tiny Kimi-K2 model from Hugging Face transformers.

The oracle for engine/backend/cpu: loads the model directory written by
`kimi-engine gen-tiny-model` into transformers' own DeepseekV3ForCausalLM
(DeepseekV2ForCausalLM for a config with model_type deepseek_v2, whose
softmax routers the engine runs on the cpu backend; that path has not been
run yet) (fp32, eager attention, on the CPU so no TF32), with every FP8 weight
dequantised exactly as the engine does (fp32 fp8 value * fp32 block scale,
one fp32 multiply), and writes:

  OUT/hf_reference.json  prompts, top-8 ids per position, greedy tokens,
                         what HF derived from the config (inv_freq, scales),
                         versions
  OUT/hf_logits.bin      float32 LE: per prompt [T][8] top-8 values and
                         [T][64] logits at fixed vocab ids, then one full
                         row (last position of the longest prompt)

Run on the GPU machine (it has torch + transformers):
  python3 t/gen/hf_reference.py --model /tmp/tiny --out "$OUT"
Real widths (Kimi-K2's config cut to 2 layers, 12 experts, vocab 8192):
  kimi-engine gen-tiny-model --out /tmp/k2w --no-tokenizer \
      --config ../shared/kimi-k2/config.json \
      --hf-overrides '{"num_hidden_layers":2,"n_routed_experts":12,"vocab_size":8192}'
  python3 t/gen/hf_reference.py --model /tmp/k2w --out DIR --prompt-lens 6,33 --greedy 8
"""

import argparse
import json
import os
import random
import sys
import tempfile

import torch
import safetensors
import transformers
from safetensors.torch import load_file, save_file

PROMPT_LENS = [1, 7, 23, 64, 100, 129, 200, 300]   # 300 > original 256
N_GREEDY = 32
N_SUBSET = 64
TOPK = 8
SEED = 4242


def dequantised_state(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    raw = {}
    for f in files:
        raw.update(load_file(os.path.join(model_dir, f)))
    out = {}
    for name, t in raw.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = raw[name + "_scale_inv"].float()
            rows, cols = t.shape
            s = s.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
            out[name] = t.float() * s          # one fp32 multiply, as the engine
        else:
            out[name] = t.float()
    return out


def load_hf(model_dir, tmp):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    cfg.pop("quantization_config", None)
    cfg.pop("auto_map", None)
    # DeepSeek-V2's configs (softmax routers) run as transformers'
    # DeepseekV2ForCausalLM, everything else as DeepseekV3ForCausalLM
    v2 = cfg.get("model_type") == "deepseek_v2"
    cls = transformers.DeepseekV2ForCausalLM if v2 else \
        transformers.DeepseekV3ForCausalLM
    cfg["model_type"] = "deepseek_v2" if v2 else "deepseek_v3"
    cfg["torch_dtype"] = "float32"
    json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), indent=1)
    save_file(dequantised_state(model_dir), os.path.join(tmp, "model.safetensors"))
    kw = dict(attn_implementation="eager", output_loading_info=True)
    try:
        model, info = cls.from_pretrained(tmp, dtype=torch.float32, **kw)
    except TypeError:
        model, info = cls.from_pretrained(tmp, torch_dtype=torch.float32, **kw)
    missing = list(info.get("missing_keys", []))
    if missing:
        sys.exit("HF did not load: missing %s" % missing[:10])
    print("loading info:", {k: list(v)[:5] for k, v in info.items()})
    return model.eval().float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt-lens", default=",".join(map(str, PROMPT_LENS)))
    ap.add_argument("--greedy", type=int, default=N_GREEDY)
    args = ap.parse_args()
    lens = [int(x) for x in args.prompt_lens.split(",")]
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.set_num_threads(min(16, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        model = load_hf(args.model, tmp)

    cfg = model.config
    rng = random.Random(SEED)
    V = cfg.vocab_size
    prompts = [[rng.randrange(V) for _ in range(n)] for n in lens]
    if V > 163586 and len(prompts) > 1 and len(prompts[1]) > 3:
        prompts[1][3] = 163586                   # a special id inside
    subset = sorted(rng.sample(range(V), N_SUBSET))

    rot = getattr(model.model, "rotary_emb", None) or \
        model.model.layers[0].self_attn.rotary_emb
    attn0 = model.model.layers[0].self_attn
    derived = {
        "inv_freq": [float(x) for x in rot.inv_freq.tolist()],
        "attention_scaling": float(getattr(rot, "attention_scaling", 1.0)),
        "softmax_scale": float(getattr(attn0, "scaling", None)
                               or getattr(attn0, "softmax_scale")),
        "rope_config": str(getattr(cfg, "rope_parameters", None)
                           or getattr(cfg, "rope_scaling", None)),
    }
    print("HF derived:", json.dumps(derived)[:400])

    blob = bytearray()
    out_prompts = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            logits = model(input_ids=ids).logits[0].float()     # [T][V]
            top = torch.topk(logits, TOPK, dim=-1)
            off_top = len(blob) // 4
            blob += top.values.contiguous().numpy().astype("<f4").tobytes()
            off_sub = len(blob) // 4
            blob += logits[:, subset].contiguous().numpy().astype("<f4").tobytes()
            seq = list(p)
            greedy, gaps = [], []
            for _ in range(args.greedy):
                lg = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
                t2 = torch.topk(lg, 2)
                greedy.append(int(t2.indices[0]))
                gaps.append(float(t2.values[0] - t2.values[1]))
                seq.append(greedy[-1])
            out_prompts.append({
                "tokens": p, "top_ids": top.indices.tolist(),
                "top_vals_offset": off_top, "subset_offset": off_sub,
                "greedy": greedy, "greedy_gap": gaps,
            })
            print("prompt len %d: greedy %s min gap %.4g" %
                  (len(p), greedy[:8], min(gaps)), flush=True)
        last = out_prompts[-1]
        full = model(input_ids=torch.tensor([last["tokens"]])).logits[0, -1]
        off_full = len(blob) // 4
        blob += full.float().contiguous().numpy().astype("<f4").tobytes()

    ref = {
        "generator": "t/gen/hf_reference.py",
        "versions": {"torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__,
                     "python": sys.version.split()[0]},
        "model": open(os.path.join(args.model, "config.json")).read(),
        "dtype": "float32, eager attention, CPU",
        "vocab_size": V, "topk": TOPK, "subset_ids": subset,
        "derived": derived, "prompts": out_prompts,
        "full_row": {"prompt": len(prompts) - 1,
                     "pos": len(prompts[-1]) - 1, "offset": off_full},
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hf_logits.bin"), "wb") as f:
        f.write(blob)
    with open(os.path.join(args.out, "hf_reference.json"), "w") as f:
        json.dump(ref, f)
    print("wrote %d bytes of logits" % len(blob))


if __name__ == "__main__":
    main()
