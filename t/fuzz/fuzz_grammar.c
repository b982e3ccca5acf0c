/*
 * Fuzz target: guided_grammar with recursion.  The input is a GBNF
 * grammar, a NUL, then a text to feed.  A grammar that compiles must pass
 * the engine's check of its own program; the text fed in one piece and
 * byte by byte (through copies, each trial rewound as the sampler does)
 * must get the same verdict and agree on whether it is a whole sentence.
 * The raw input read as words must never make the check read out of
 * bounds, and a program the check takes must never make the recogniser
 * do so, whatever it is fed.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/ebnf.h"
#include "text/gram.h"


static kimi_gram_arena_t  *arena;


/* -1, or 2 * more + accepts after feeding text in pieces of step bytes
 * (0: one piece) */
static int
feed(const int32_t *prog, const char *text, size_t n, size_t step)
{
    static kimi_gram_state_t  s, c;

    if (kimi_gram_init(&s, prog, arena) != 0) {
        return -1;
    }
    for (size_t i = 0; i < n; ) {
        size_t    k = step == 0 || step > n - i ? n - i : step;
        uint32_t  mark = kimi_gram_mark(arena);

        kimi_gram_copy(&c, &s);             /* a trial, rewound */
        (void) kimi_gram_feed(&c, text + i, k);
        kimi_gram_rewind(arena, mark);
        if (kimi_gram_feed(&s, text + i, k) != 0) {
            return -1;
        }
        i += k;
    }
    return 2 * kimi_gram_more(&s) + kimi_gram_accepts(&s);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t  *nul = memchr(data, 0, size);
    int32_t        *prog, *raw;
    size_t          n, nraw = size / 4;
    char            msg[256];

    if (arena == NULL && (arena = kimi_gram_arena_new()) == NULL) {
        abort();
    }

    raw = malloc((nraw ? nraw : 1) * sizeof(int32_t));
    memcpy(raw, data, nraw * sizeof(int32_t));
    if (kimi_gram_check(raw, nraw, msg, sizeof(msg)) == 0) {
        (void) feed(raw, (const char *) data, size, 1);
    }
    free(raw);

    if (nul == NULL) {
        return 0;
    }

    if (kimi_ebnf_to_grammar((const char *) data, (size_t) (nul - data),
                             &prog, &n, msg, sizeof(msg)) != 0)
    {
        return 0;
    }

    if (kimi_gram_check(prog, n, msg, sizeof(msg)) != 0) {
        abort();                            /* its own program refused */
    }

    {
        const char  *text = (const char *) nul + 1;
        size_t       tn = size - (size_t) (nul - data) - 1;

        if (feed(prog, text, tn, 0) != feed(prog, text, tn, 1)) {
            abort();                        /* pieces change the verdict */
        }
    }

    free(prog);
    return 0;
}
