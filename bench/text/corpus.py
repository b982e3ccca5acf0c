#!/usr/bin/env python3
"""Deterministic ~10 MB mixed corpus for the tokenizer benchmark.

    python3 bench/text/corpus.py OUT [MB]

English prose (the licenses in /usr/share/common-licenses), C code
(/usr/include/linux), synthetic Chinese/Japanese text, emoji with ZWJ
sequences and digit runs, interleaved in 4 KiB blocks with a fixed seed.
Its sha256 is printed so runs on other machines can be compared.
"""
import glob
import hashlib
import random
import sys

out = sys.argv[1]
target = int(float(sys.argv[2]) * 1e6) if len(sys.argv) > 2 else 10_000_000
rng = random.Random(7)


def read_all(pattern, limit):
    buf = []
    total = 0
    for p in sorted(glob.glob(pattern)):
        try:
            s = open(p, encoding="utf-8").read()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        buf.append(s)
        total += len(s)
        if total > limit:
            break
    return "".join(buf)


english = read_all("/usr/share/common-licenses/*", 3_000_000)
code = read_all("/usr/include/linux/*.h", 4_000_000)
han = [chr(c) for c in range(0x4e00, 0x4e00 + 3000)]
kana = [chr(c) for c in range(0x3041, 0x3097)]
punct = ["，", "。", "、", "！", "？", "「", "」", "：", "；", "\n"]
emoji = ["😀", "👍", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏽‍💻", "🇨🇳", "❤️", "🎉"]


def cjk_block(n):
    s = []
    while len(s) < n:
        w = rng.choice([han, han, han, kana])
        s.extend(rng.choice(w) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.3:
            s.append(rng.choice(punct))
        if rng.random() < 0.05:
            s.append(" %d " % rng.randint(0, 10**rng.randint(1, 9)))
    return "".join(s)


def mixed_block(n):
    s = []
    while sum(map(len, s)) < n:
        r = rng.random()
        if r < 0.3:
            s.append(rng.choice(emoji))
        elif r < 0.6:
            s.append(" " + str(rng.randint(0, 10**rng.randint(1, 15))))
        else:
            s.append(" " + rng.choice(["Don't", "it's", "WE'LL", "café",
                                       "naïve", "Straße", "  ", "\t", "\n"]))
    return "".join(s)


parts = []
size = 0
while size < target:
    r = rng.random()
    if r < 0.4:
        i = rng.randrange(max(1, len(english) - 4096))
        b = english[i:i + 4096]
    elif r < 0.7:
        i = rng.randrange(max(1, len(code) - 4096))
        b = code[i:i + 4096]
    elif r < 0.9:
        b = cjk_block(1400)
    else:
        b = mixed_block(2000)
    parts.append(b)
    size += len(b.encode())

data = "".join(parts).encode()[:target]
data = data.decode("utf-8", "ignore").encode()
open(out, "wb").write(data)
print("%s %d bytes sha256 %s" % (out, len(data),
                                 hashlib.sha256(data).hexdigest()))
