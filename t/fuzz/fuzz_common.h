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

#include "text/kimi_text.h"

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
