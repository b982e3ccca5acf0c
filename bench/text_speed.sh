#!/usr/bin/env bash
# Tokenizer speed against tiktoken, same corpus, same machine, same run.
#
#   BUILD=build MODEL=../shared/kimi-k2 MB=10 bench/text_speed.sh
#
# Builds bench/text/text_speed.c with engine/text, makes the ~10 MB mixed
# corpus (bench/text/corpus.py, fixed seed), times tiktoken's
# encode_ordinary and ours (single thread, best of 3 each), checks that the
# ids are identical to tokenization_kimi.py's encode(), and times the
# streaming detokenizer per token.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
MODEL=${MODEL:-../shared/kimi-k2}
MB=${MB:-10}
OUT=$BUILD/text-bench
mkdir -p "$OUT"

${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -Iengine -o "$OUT/text_speed" \
    bench/text/text_speed.c engine/text/*.c engine/common/kimi_err.c \
    -ljansson -lpcre2-8 -lpthread

python3 bench/text/corpus.py "$OUT/corpus.txt" "$MB"
tk=$(python3 bench/text/tiktoken_speed.py "$MODEL" "$OUT/corpus.txt" \
     "$OUT/reference_ids.bin")
echo "$tk"
ours=$("$OUT/text_speed" "$MODEL" "$OUT/corpus.txt" "$OUT/reference_ids.bin")
echo "$ours"

tk_mbs=$(echo "$tk" | grep -o '[0-9.]* MB/s' | head -1 | cut -d' ' -f1)
our_mbs=$(echo "$ours" | grep -o '[0-9.]* MB/s' | head -1 | cut -d' ' -f1)
python3 -c "print('encode speed ratio (kimi / tiktoken): %.2fx' % ($our_mbs / $tk_mbs))"
