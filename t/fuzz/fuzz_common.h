/*
 * Shared set-up of the libFuzzer targets in t/fuzz/ (see t/fuzz/run).
 *
 * Owns:   loading Kimi's tokenizer and v3 template once per fuzz process
 *         ($KIMI_MODEL_DIR, else ../shared/kimi-k2 from the repo root).
 * Never:  used outside t/fuzz/.
 */

#ifndef KIMI_FUZZ_COMMON_H
#define KIMI_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/kimi_text.h"
#include "text/text_internal.h"

static inline const char *
fuzz_model_dir(void)
{
    const char  *d = getenv("KIMI_MODEL_DIR");

    return d != NULL ? d : "../shared/kimi-k2";
}

/* A fuzz process is one short-lived program: failing to load the model
 * files is fatal here, which is what a fuzzer harness should do. */
static inline kimi_tokenizer_t *
fuzz_tokenizer(void)
{
    static kimi_tokenizer_t  *tok;
    kimi_err_t                err;

    if (tok == NULL && kimi_tokenizer_load(&tok, fuzz_model_dir(), &err)) {
        fprintf(stderr, "fuzz: %s\n", err.msg);
        abort();
    }
    return tok;
}

/* The input as a tokenizer target reads it: bit 0 of the first byte is
 * allow_special, the rest the text.  1 with its ids, or 0 when there is
 * nothing to check (no text, or invalid UTF-8 refused: the only refusal
 * allowed, anything else aborts). */
static inline int
fuzz_encode(const kimi_tokenizer_t *tok, const uint8_t **data, size_t *size,
    int *allow, int32_t **ids, size_t *n)
{
    kimi_err_t  err;

    if (*size == 0) {
        return 0;
    }
    *allow = (*data)[0] & 1;
    (*data)++;
    (*size)--;

    if (kimi_tokenize(tok, (const char *) *data, *size, *allow, ids, n, &err)
        != 0)
    {
        if (kimi_utf8_valid_prefix(*data, *size) == *size) {
            abort();
        }
        return 0;
    }
    return 1;
}


/* ids through the streaming detokenizer, every piece it emits and its
 * flush joined: malloc'ed, *len its length; aborts on an error. */
static inline char *
fuzz_stream(const kimi_tokenizer_t *tok, const int32_t *ids, size_t n,
    int skip_special, size_t *len)
{
    size_t         i, out_len;
    char          *acc;
    const char    *out;
    kimi_detok_t  *d = kimi_detok_new(tok, skip_special);

    acc = malloc(3 * 512 * (n + 8) + 64);   /* tokens <= 512 bytes, 3 out a byte */
    if (d == NULL || acc == NULL) {
        abort();
    }
    *len = 0;
    for (i = 0; i < n; i++) {
        if (kimi_detok_push(d, ids[i], &out, &out_len) != 0) {
            abort();
        }
        memcpy(acc + *len, out, out_len);
        *len += out_len;
    }
    kimi_detok_flush(d, &out, &out_len);
    memcpy(acc + *len, out, out_len);
    *len += out_len;
    kimi_detok_free(d);
    return acc;
}


static inline kimi_template_t *
fuzz_template(void)
{
    static kimi_template_t  *t;
    kimi_err_t               err;

    if (t == NULL && kimi_template_load(&t, fuzz_model_dir(), NULL, &err)) {
        fprintf(stderr, "fuzz: %s\n", err.msg);
        abort();
    }
    return t;
}

#endif
