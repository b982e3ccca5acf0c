#!/usr/bin/env python3
"""tiktoken's single-thread encode throughput on a corpus, the reference
for bench/text_speed.sh, with Kimi's ranks, pat_str and special tokens.

    python3 bench/text/tiktoken_speed.py MODEL_DIR CORPUS [IDS_OUT]

IDS_OUT gets the ids of tokenization_kimi.py's encode() (tiktoken plus its
400,000-character chunking, what vLLM runs; untimed) for the C side to
compare against.
"""
import array
import os
import sys
import time

sys.dont_write_bytecode = True              # no __pycache__ in t/gen
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "t", "gen"))
from gen_text_fixtures import KimiTok  # noqa: E402
import tiktoken  # noqa: E402

tok = KimiTok(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
n_bytes = len(text.encode())
best = None
for _ in range(3):
    t0 = time.perf_counter()
    ids = tok.enc.encode_ordinary(text)      # tiktoken's fastest path
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
print("tiktoken %s encode_ordinary: %d bytes -> %d tokens, %.3f s, "
      "%.2f MB/s (single thread, best of 3)"
      % (tiktoken.__version__, n_bytes, len(ids), best, n_bytes / 1e6 / best))
if len(sys.argv) > 3:
    ref = tok.encode(text, False)
    array.array("i", ref).tofile(open(sys.argv[3], "wb"))
