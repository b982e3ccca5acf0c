#!/usr/bin/env python3
"""Writes a multi-GB synthetic checkpoint in Kimi-K2's exact layout.

For timing the safetensors loader against `cat` on the same bytes (see
bench/RESULTS.md).  Shapes, names, dtypes and the index follow the real
checkpoint (kimi-k2-facts.md §2) for the config given, reduced with
overrides so it fits on a laptop disk; the bytes are random (FP8 codes
without NaN, F32 scales 1.0) and mean nothing.

  python3 t/gen/synth_checkpoint.py --config ../shared/kimi-k2/config.json \
      --out /tmp/kimi-synth --set num_hidden_layers=2 --set n_routed_experts=32 \
      --set vocab_size=65536 --shards 4
  python3 t/gen/synth_checkpoint.py --evict /tmp/kimi-synth   # drop page cache
"""

import argparse
import json
import math
import os
import struct
import sys

CHUNK = os.urandom(1 << 26)                  # reused: content is irrelevant
CHUNK_FP8 = bytes(b & 0xbf for b in CHUNK[: 1 << 20]) * 64


def tensors(c):
    D, H = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    R, P = c["kv_lora_rank"], c["qk_rope_head_dim"]

    def fp8(name, rows, cols):
        yield name, "F8_E4M3", [rows, cols]
        yield name + "_scale_inv", "F32", [math.ceil(rows / 128),
                                           math.ceil(cols / 128)]

    def mlp(p, inter):
        yield from fp8(p + ".gate_proj.weight", inter, D)
        yield from fp8(p + ".up_proj.weight", inter, D)
        yield from fp8(p + ".down_proj.weight", D, inter)

    yield "model.embed_tokens.weight", "BF16", [c["vocab_size"], D]
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d" % l
        yield p + ".input_layernorm.weight", "BF16", [D]
        yield p + ".post_attention_layernorm.weight", "BF16", [D]
        yield from fp8(p + ".self_attn.q_a_proj.weight", c["q_lora_rank"], D)
        yield p + ".self_attn.q_a_layernorm.weight", "BF16", [c["q_lora_rank"]]
        yield from fp8(p + ".self_attn.q_b_proj.weight", H * qk, c["q_lora_rank"])
        yield from fp8(p + ".self_attn.kv_a_proj_with_mqa.weight", R + P, D)
        yield p + ".self_attn.kv_a_layernorm.weight", "BF16", [R]
        yield from fp8(p + ".self_attn.kv_b_proj.weight",
                       H * (c["qk_nope_head_dim"] + c["v_head_dim"]), R)
        yield from fp8(p + ".self_attn.o_proj.weight", D, H * c["v_head_dim"])
        if l < c["first_k_dense_replace"]:
            yield from mlp(p + ".mlp", c["intermediate_size"])
            continue
        E = c["n_routed_experts"]
        yield p + ".mlp.gate.weight", "BF16", [E, D]
        yield p + ".mlp.gate.e_score_correction_bias", "F32", [E]
        yield from mlp(p + ".mlp.shared_experts",
                       c["moe_intermediate_size"] * c["n_shared_experts"])
        for e in range(E):
            yield from mlp("%s.mlp.experts.%d" % (p, e), c["moe_intermediate_size"])
    yield "model.norm.weight", "BF16", [D]
    yield "lm_head.weight", "BF16", [c["vocab_size"], D]


SIZE = {"F8_E4M3": 1, "BF16": 2, "F32": 4}


def write_bytes(f, n, dtype):
    src = CHUNK_FP8 if dtype == "F8_E4M3" else (
        struct.pack("<f", 1.0) * (1 << 20) if dtype == "F32" else CHUNK)
    while n > 0:
        k = min(n, len(src))
        f.write(src[:k])
        n -= k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    ap.add_argument("--out")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--evict", help="drop DIR's files from the page cache")
    a = ap.parse_args()

    if a.evict:
        for fn in os.listdir(a.evict):
            fd = os.open(os.path.join(a.evict, fn), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return

    c = json.load(open(a.config))
    for kv in a.set:
        k, v = kv.split("=", 1)
        c[k] = json.loads(v)
    ts = list(tensors(c))
    total = sum(SIZE[d] * math.prod(s) for _, d, s in ts)
    per = total / a.shards
    os.makedirs(a.out, exist_ok=True)
    json.dump(c, open(os.path.join(a.out, "config.json"), "w"), indent=1)

    groups, cur, acc = [], [], 0
    for t in ts:
        cur.append(t)
        acc += SIZE[t[1]] * math.prod(t[2])
        if acc >= per * (len(groups) + 1) and len(groups) < a.shards - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)

    wm = {}
    for i, g in enumerate(groups):
        name = "model-%05d-of-%06d.safetensors" % (i + 1, len(groups))
        hdr, off = {"__metadata__": {"format": "pt"}}, 0
        for n, d, s in g:
            nb = SIZE[d] * math.prod(s)
            hdr[n] = {"dtype": d, "shape": s, "data_offsets": [off, off + nb]}
            off += nb
            wm[n] = name
        hj = json.dumps(hdr).encode()
        hj += b" " * (-len(hj) % 8)
        with open(os.path.join(a.out, name), "wb") as f:
            f.write(struct.pack("<Q", len(hj)))
            f.write(hj)
            for n, d, s in g:
                write_bytes(f, SIZE[d] * math.prod(s), d)
    json.dump({"metadata": {"total_size": total}, "weight_map": wm},
              open(os.path.join(a.out, "model.safetensors.index.json"), "w"))
    print("wrote %.2f GB in %d shards, %d tensors" % (total / 1e9, len(groups),
                                                      len(ts)))


if __name__ == "__main__":
    main()
