/*
 * Fuzz target: encode and decode.  Checks, beyond "no crash": the ASCII
 * fast path of the pre-tokenizer agrees with PCRE2 alone, decode(encode(x))
 * is x, and the streaming decoder equals the whole decode.
 */

#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "text/text_internal.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                rc2, allow;
    char              *text;
    size_t             n, n2, len, acc_len;
    int32_t           *ids, *ids2;
    kimi_err_t         err;
    char              *acc;
    kimi_tokenizer_t  *tok = fuzz_tokenizer();

    if (!fuzz_encode(tok, &data, &size, &allow, &ids, &n)) {
        return 0;
    }

    /* the same text with the fast path off */
    tok->pt.no_fast = 1;
    rc2 = kimi_tokenize(tok, (const char *) data, size, allow, &ids2, &n2,
                        &err);
    tok->pt.no_fast = 0;
    if (rc2 != 0 || n2 != n || memcmp(ids, ids2, n * sizeof(int32_t)) != 0) {
        abort();
    }
    free(ids2);

    if (kimi_detokenize(tok, ids, n, 0, &text, &len, &err) != 0
        || len != size || memcmp(text, data, size) != 0)
    {
        abort();
    }

    acc = fuzz_stream(tok, ids, n, 1, &acc_len);
    free(text);

    if (kimi_detokenize(tok, ids, n, 1, &text, &len, &err) != 0
        || len != acc_len || memcmp(text, acc, len) != 0)
    {
        abort();
    }

    free(text);
    free(acc);
    free(ids);
    return 0;
}
