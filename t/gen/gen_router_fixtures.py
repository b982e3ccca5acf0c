#!/usr/bin/env python3
"""Oracle cases for DeepSeek-V2's MoE routers (engine/backend/cpu/ops.c
kimi_moe_route with KIMI_ROUTER_GREEDY / KIMI_ROUTER_GROUP_GREEDY).

    python3 t/gen/gen_router_fixtures.py [--out t/fixtures/model/router-v2.json]

Needs numpy.  The gate is transcribed from DeepSeek-V2's modeling code (the
DeepseekV2MoEGate of its checkpoints and of transformers), in float32 as it
runs there:

    scores = softmax(logits)
    greedy:               topk(scores, top_k)
    group_limited_greedy: group_scores = scores.view(n_group, -1).max(-1)
                          keep topk(group_scores, topk_group) groups,
                          scores of the others masked to 0, topk(top_k)
    weights = topk scores (/ their sum if norm_topk_prob, as vLLM's
              FusedMoE renormalize) * routed_scaling_factor

Each case: the router's arguments, the logits, and the (id, weight) pairs
sorted by id (topk's order is not part of the result).  Logits are drawn
from a fixed seed; cases whose k-th and (k+1)-th score (or group score) are
within 1e-6 are redrawn, so no tie decides a case.
"""

import argparse
import json
import os

import numpy as np

SEED = 20261129


def softmax(x):
    x = x.astype(np.float32)
    e = np.exp(x - x.max(), dtype=np.float32)
    return (e / e.sum(dtype=np.float32)).astype(np.float32)


def gate(logits, method, n_group, topk_group, top_k, norm, scale):
    s = softmax(logits)
    masked = s
    if method == "group_limited_greedy":
        gs = s.reshape(n_group, -1).max(axis=1)
        order = np.argsort(-gs, kind="stable")
        if topk_group < n_group and gs[order[topk_group - 1]] - gs[order[topk_group]] < 1e-6:
            return None
        keep = np.zeros(n_group, bool)
        keep[order[:topk_group]] = True
        masked = np.where(np.repeat(keep, s.size // n_group), s, np.float32(0))
    order = np.argsort(-masked, kind="stable")
    if masked[order[top_k - 1]] - masked[order[top_k]] < 1e-6:
        return None
    ids = order[:top_k]
    w = s[ids].astype(np.float32)
    if norm:
        w = (w / (w.sum(dtype=np.float32) + np.float32(1e-20))).astype(np.float32)
    w = (w * np.float32(scale)).astype(np.float32)
    pairs = sorted(zip(ids.tolist(), w.tolist()))
    return pairs


CONFIGS = [
    # method, n_experts, n_group, topk_group, top_k, norm, scale
    ("greedy", 64, 1, 1, 6, False, 1.0),                   # DeepSeek-V2-Lite
    ("group_limited_greedy", 160, 8, 3, 6, False, 16.0),   # DeepSeek-V2
    ("group_limited_greedy", 32, 4, 2, 6, False, 16.0),
    ("greedy", 24, 1, 1, 6, True, 2.5),
    ("group_limited_greedy", 16, 4, 1, 4, True, 1.0),      # all from one group
    ("greedy", 8, 1, 1, 1, False, 1.0),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.normpath(os.path.join(
        here, "..", "fixtures", "model", "router-v2.json")))
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    cases = []
    for method, e, g, tg, k, norm, scale in CONFIGS:
        n = 0
        while n < 8:
            # logits ~ N(0, 2): softmax scores from near-uniform to peaked
            logits = (rng.standard_normal(e) * rng.choice([0.3, 1.0, 2.0, 4.0])).astype(np.float32)
            pairs = gate(logits, method, g, tg, k, norm, scale)
            if pairs is None:
                continue
            cases.append({"method": method, "n_experts": e, "n_group": g,
                          "topk_group": tg, "top_k": k, "norm": norm,
                          "scale": scale,
                          "logits": [float(x) for x in logits],
                          "ids": [p[0] for p in pairs],
                          "weights": [p[1] for p in pairs]})
            n += 1
    with open(args.out, "w") as f:
        json.dump({"generator": "t/gen/gen_router_fixtures.py",
                   "numpy": np.__version__, "seed": SEED, "cases": cases}, f,
                  separators=(",", ":"))
        f.write("\n")
    print("wrote %s: %d cases" % (args.out, len(cases)))


if __name__ == "__main__":
    main()
