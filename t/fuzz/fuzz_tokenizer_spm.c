/*
 * Fuzz target: encode and decode with a SentencePiece-style tokenizer.json
 * (t/fixtures/text/hf-spm: Llama-2's Prepend + Replace normalizer, BPE over
 * characters with byte_fallback, the Strip decoder).  Checks, beyond "no
 * crash": valid UTF-8 always encodes; the stream equals the whole decode
 * but for the one space a whole decode drops first; and with added-token
 * names as text, text without U+2581 comes back from decode(encode(x))
 * (the normalizer puts one space first, the decoder takes one away).
 */

#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "text/text_internal.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                        allow;
    char                      *text, *acc;
    size_t                     n, len, acc_len;
    int32_t                   *ids;
    kimi_err_t                 err;
    static kimi_tokenizer_t   *tok;

    if (tok == NULL
        && kimi_tokenizer_load(&tok, "t/fixtures/text/hf-spm", &err) != 0)
    {
        fprintf(stderr, "fuzz: %s\n", err.msg);
        abort();
    }

    if (!fuzz_encode(tok, &data, &size, &allow, &ids, &n)) {
        return 0;
    }

    if (kimi_detokenize(tok, ids, n, 0, &text, &len, &err) != 0) {
        abort();
    }
    if (!allow && size > 0 && memmem(data, size, "\xe2\x96\x81", 3) == NULL
        && (len != size || memcmp(text, data, size) != 0))
    {
        abort();
    }
    free(text);

    acc = fuzz_stream(tok, ids, n, 1, &acc_len);

    if (kimi_detokenize(tok, ids, n, 1, &text, &len, &err) != 0
        || !((len == acc_len && memcmp(text, acc, len) == 0)
             || (acc_len == len + 1 && acc[0] == ' '
                 && memcmp(text, acc + 1, len) == 0)))
    {
        abort();
    }

    free(text);
    free(acc);
    free(ids);
    return 0;
}
