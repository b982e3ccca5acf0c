#!/usr/bin/env python3
"""Oracle fixtures for engine/text/: tokenizer, chat templates, tool calls.

    python3 t/gen/gen_text_fixtures.py [--model ../shared/kimi-k2] [--out t/fixtures/text]

References (nothing here is our C code):
  - tokenizer: PyPI tiktoken with Kimi's tiktoken.model, pat_str and 256
    special tokens, wrapped in the chunking of tokenization_kimi.py's
    encode() (what vLLM ends up calling);
  - templates: PyPI jinja2 configured as transformers' apply_chat_template
    (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
    HF's tojson, raise_exception, strftime_now), after vLLM's message
    preprocessing (chat_utils.py: "openai" content format, tool message
    text parts joined with newlines, tool-call arguments json.loads-ed,
    tools passed through pydantic model_dump());
  - tool calls: the regex of vLLM's kimi_k2 tool parser.

Writes tokenizer.json, template.json, toolcalls.json and SOURCES.json (the
sidecar: versions, seed, command).  Deterministic: same seed, same bytes.
"""

import argparse
import base64
import json
import os
import random
import re
import sys

import jinja2
import jinja2.ext
import jinja2.sandbox
import tiktoken

SEED = 20250711

PAT_STR = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


# ---- tokenizer -------------------------------------------------------------

def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


class KimiTok:
    """tiktoken + the encode() wrapper of tokenization_kimi.py."""

    def __init__(self, model_dir):
        ranks = load_ranks(os.path.join(model_dir, "tiktoken.model"))
        cfg = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
        named = {int(k): v["content"]
                 for k, v in cfg["added_tokens_decoder"].items()}
        n = len(ranks)
        self.special = {named.get(i, "<|reserved_token_%d|>" % i): i
                        for i in range(n, n + 256)}
        self.enc = tiktoken.Encoding(name="kimi", pat_str=PAT_STR,
                                     mergeable_ranks=ranks,
                                     special_tokens=self.special)
        skip = set()
        for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if cfg.get(k):
                skip.add(self.special[cfg[k]])
        for t in cfg.get("additional_special_tokens", []):
            skip.add(self.special[t])
        for k, v in cfg["added_tokens_decoder"].items():
            if v.get("special"):
                skip.add(int(k))
        self.skip = skip

    @staticmethod
    def _split_runs(s, limit):
        run, is_space, start = 0, (s[0].isspace() if s else False), 0
        for i in range(len(s)):
            now = s[i].isspace()
            if is_space ^ now:
                run, is_space = 1, now
            else:
                run += 1
                if run > limit:
                    yield s[start:i]
                    start, run = i, 1
        yield s[start:]

    def _chunks(self, text):
        for i in range(0, len(text), 400_000):
            yield from self._split_runs(text[i:i + 400_000], 25_000)

    def encode(self, text, allow_special):
        out = []
        if allow_special:
            # vLLM path: HF splits out added tokens, then encode() with
            # allowed_special="all" on each piece (which also catches the
            # reserved names); chunking therefore restarts at each special.
            names = sorted(self.special, key=len, reverse=True)
            rx = re.compile("|".join(re.escape(n) for n in names))
            pos = 0
            for m in rx.finditer(text):
                for c in self._chunks(text[pos:m.start()]):
                    out += self.enc.encode(c, allowed_special="all")
                out.append(self.special[m.group(0)])
                pos = m.end()
            for c in self._chunks(text[pos:]):
                out += self.enc.encode(c, allowed_special="all")
        else:
            for c in self._chunks(text):
                out += self.enc.encode(c, disallowed_special=())
        return out

    def decode(self, ids, skip_special):
        if skip_special:
            ids = [i for i in ids if i not in self.skip]
        return self.enc.decode_bytes(ids).decode("utf-8", "replace")


def tokenizer_texts(rng):
    """>= 500 texts over the categories issue 3 lists."""
    cases = []

    def add(kind, text, allow=True):
        cases.append({"kind": kind, "text": text, "allow_special": allow})

    fixed = [
        "Hello world", "The quick brown fox.", "你好,世界!机器学习",
        "def foo(x): return x+1", "  spaces   and\ttabs\n", "<|open|>",
        "1234567890", "Mix 汉字 and ASCII", "functions.get_weather:0",
        "中文，标点。", "、。〈《》」", "", " ", "\n", "a", "ſ'ſ", "x'S y'ſ",
    ]
    for t in fixed:
        add("fixed", t)

    cjk = ["机器学习是人工智能的一个分支。", "今天天气很好，我们去公园散步吧！",
           "東京は日本の首都です。ひらがなとカタカナ、漢字。", "한국어 문장입니다. 안녕하세요!",
           "《红楼梦》是中国古典小说。「引号」『双引号』", "数字123和English混合mixed文本",
           "〇一二三四五六七八九十百千万亿", "々〆〻ヶ㐀䶵𠀀𪛖", "全角ＡＢＣ１２３！？",
           "中文\n换行\r\n回车\t制表", "【重要】请注意：截止日期为2025年7月11日。"]
    for t in cjk:
        add("cjk", t)
    code = [
        "int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
        "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
        "const f = (a, b) => a ?? b; // nullish\n",
        "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
        "SELECT * FROM users WHERE id = 42 AND name LIKE '%o''neil%';",
        "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n",
        "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
        "    \n\n    def __init__(self):\n        self.x = {}\n",
        "$ grep -rn 'foo' ./src | wc -l && echo \"done\"",
        "<div class=\"a\"><span>x&amp;y</span></div>",
        "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=6;g>>=7;h&=8;i|=9;j^=10;",
        "0x1F 0b1010 0o777 1_000_000 3.14159e-10",
    ]
    for t in code:
        add("code", t)
    emoji = ["👍", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "👩🏽‍💻 coder", "🇺🇸🇨🇳🇯🇵",
             "❤️‍🔥", "🧑‍🤝‍🧑", "text😀more😃text", "✋🏿✋🏻", "1️⃣2️⃣#️⃣",
             "🫠🫶🪿", "😀" * 20]
    for t in emoji:
        add("emoji", t)
    for n in range(1, 25):
        s = "".join(rng.choice("0123456789") for _ in range(n))
        add("digits", s)
        add("digits", "x" + s + " " + s[::-1] + ".")
    add("digits", "1,234,567.89 and 0.000001 and ٣٤٥ and ５６７ and Ⅻ ½")
    ws_atoms = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000",
                "\u0085", "\u2028", "\u2029", "\u200b", "\x0b", "\x0c",
                "\u1680", "\u2003", "\x1c", "\u202f"]
    for _ in range(70):
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(ws_atoms) * rng.randint(1, 4))
            if rng.random() < 0.5:
                parts.append(rng.choice(["a", "B", "中", "1", ".", "é", "!?"]))
        add("whitespace", "".join(parts))
    contr = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE",
             "'Ve", "'M", "'lL", "'D", "'ſ", "'x", "'"]
    words = ["I", "you", "HE", "She", "it", "WE", "They", "don", "CAN", "Kimi",
             "été", "ÉTÉ", "naïve", "Straße"]
    for _ in range(60):
        s = " ".join(rng.choice(words) + rng.choice(contr)
                     for _ in range(rng.randint(1, 5)))
        add("contractions", s)
    marks = ["e\u0301", "a\u0308\u0323", "n\u0303", "\u0915\u094d\u0937",
             "\u0e01\u0e34\u0e4a", "\u0627\u064e\u0644\u0652",
             "Z\u0351\u036b\u0343\u036a", "\u05e9\u05c1\u05b8", "o\u0338",
             "\u1100\u1161\u11a8", "\u0301leading", "A\u030a\u0301B"]
    for m in marks:
        add("marks", m)
        add("marks", "word" + m + " " + m.upper() + "x")
    sp = ["<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>",
          "<|im_middle|>", "[BOS]", "[EOS]", "[EOT]", "[UNK]", "[PAD]",
          "<|tool_calls_section_begin|>", "<|tool_call_begin|>",
          "<|tool_call_argument_begin|>", "<|tool_call_end|>",
          "<|tool_calls_section_end|>", "<|start_header_id|>",
          "<|reserved_token_163589|>", "<|reserved_token_163700|>",
          "<|reserved_token_163837|>", "<|reserved_token_5|>", "<|im_end",
          "im_end|>", "<|IM_END|>", "[eos]", "<|<|im_end|>|>", "<think>",
          "<|media_start|>"]
    for _ in range(60):
        s = "".join(rng.choice(sp + ["hello", " ", "\n", "中文", "x", "{}"])
                    for _ in range(rng.randint(1, 6)))
        add("special", s, True)
        add("special", s, False)
    pool = fixed + cjk + code + emoji + marks + sp + ["don't", "I'M", "1234"]
    for _ in range(120):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(2, 6)))
        add("mixed", s, rng.random() < 0.7)
    # a sweep of code points: every 97th one up to U+2FFFF plus ranges
    # whose properties are easy to get wrong (Han vs punctuation, marks)
    sweep = [c for c in range(0x20, 0x30000, 97)
             if not 0xd800 <= c < 0xe000]
    sweep += list(range(0x3000, 0x3040)) + list(range(0x2e80, 0x2ea0))
    sweep += list(range(0x0300, 0x0370, 3)) + list(range(0x1f3fb, 0x1f400))
    for i in range(0, len(sweep), 24):
        add("sweep", "".join(chr(c) for c in sweep[i:i + 24]))
        add("sweep", " ".join(chr(c) + "a" for c in sweep[i:i + 24:3]))
    # the reference chunking (runs > 25,000) and long-piece BPE
    add("long", "a" * 25_010)
    add("long", " " * 25_003 + "x")
    add("long", "ab" * 200 + " " + "中" * 300 + "1" * 50)
    add("long", "".join(rng.choice("abcdefgh") for _ in range(3000)))
    return cases


def gen_tokenizer(tok, rng):
    cases = tokenizer_texts(rng)
    for c in cases:
        c["ids"] = tok.encode(c["text"], c["allow_special"])
    dec = []
    n_vocab = 163840
    for i in range(80):
        n = rng.randint(1, 12)
        if i % 4 == 0:
            ids = [rng.randrange(n_vocab) for _ in range(n)]
        else:
            # byte tokens and fragments of multi-byte characters
            ids = [rng.choice([rng.randrange(256), rng.randrange(n_vocab),
                               rng.choice(sorted(tok.skip)),
                               rng.randrange(163595, 163600)])
                   for _ in range(n)]
        for skip in (False, True):
            dec.append({"ids": ids, "skip_special": skip,
                        "text": tok.decode(ids, skip)})
    return {"encode": cases, "decode": dec}


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "..", ".."))
    ap.add_argument("--model", default=os.path.join(root, "..", "shared",
                                                    "kimi-k2"))
    ap.add_argument("--out", default=os.path.join(root, "t", "fixtures",
                                                  "text"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    tok = KimiTok(args.model)
    outputs = {"tokenizer.json": gen_tokenizer(tok, random.Random(SEED))}

    import template_oracle
    outputs["template.json"] = template_oracle.gen_templates(
        args.model, random.Random(SEED + 1))
    outputs["toolcalls.json"] = template_oracle.gen_toolcalls(
        random.Random(SEED + 2))

    for name, data in outputs.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=0)
            f.write("\n")

    side = {
        "command": "python3 t/gen/gen_text_fixtures.py",
        "seed": SEED,
        "python": sys.version.split()[0],
        "tiktoken": tiktoken.__version__,
        "jinja2": jinja2.__version__,
        "model_files": "../shared/kimi-k2 (tiktoken.model, "
                       "tokenizer_config.json, chat_template.jinja, alt/)",
        "tokenizer_oracle": "tiktoken.Encoding(pat_str, ranks, 256 specials) "
                            "wrapped in tokenization_kimi.py's encode() "
                            "chunking (reimplemented in KimiTok)",
        "template_oracle": "jinja2 ImmutableSandboxedEnvironment(trim_blocks, "
                           "lstrip_blocks, loopcontrols) with transformers' "
                           "tojson/raise_exception/strftime_now, after vLLM "
                           "chat_utils.py preprocessing reimplemented in "
                           "template_oracle.py (vLLM itself is not installed)",
        "toolcall_oracle": "the regex and name rule of vLLM's kimi_k2 tool "
                           "parser",
        "note": "generated; never edit by hand",
    }
    with open(os.path.join(args.out, "SOURCES.json"), "w") as f:
        json.dump(side, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    sys.dont_write_bytecode = True          # no __pycache__ in the tree
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
