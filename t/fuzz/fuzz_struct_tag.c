/*
 * Fuzz target: structural tags.  The input is a structural_tag object's
 * JSON text (any nesting of formats), a NUL, then a text to feed.  A tag
 * that compiles must pass the engine's check of its own words; the text
 * fed in one piece, byte by byte and split at a point the last byte picks
 * must get the same verdict, end in the same mode and agree on whether
 * the output may end.  The raw input read as words must never make the
 * check read out of bounds, and words the check takes must never make the
 * recogniser do so, whatever it is fed.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sample/stag_mode.h"
#include "text/struct_tag.h"


/* 0, or (the mode + 1) * 2 + may_end after feeding text in pieces of at
 * most step bytes (step 0: one piece) */
static int
feed(const kimi_stag_t *t, const char *text, size_t n, size_t step)
{
    static kimi_gram_arena_t  *arena;      /* grammars with recursion */
    kimi_stag_state_t          s, c;

    if (arena == NULL && (arena = kimi_gram_arena_new()) == NULL) {
        abort();
    }
    kimi_stag_init(&s, t, 0, arena);
    for (size_t i = 0; i < n; ) {
        size_t  k = step == 0 || step > n - i ? n - i : step;

        kimi_stag_copy(&c, &s);             /* feeds go through copies too */
        if (kimi_stag_feed(&c, text + i, k) != 0) {
            return 0;
        }
        s = c;
        i += k;
        (void) kimi_stag_must_feed(&s, text, n);
    }
    return (s.mode + 1) * 2 + kimi_stag_may_end(&s);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t  *nul = memchr(data, 0, size);
    json_t         *obj;
    json_error_t    je;
    int32_t        *w = NULL, *raw;
    size_t          n, nraw = size / 4;
    static kimi_stag_t  t;              /* 48 KiB: off the stack */
    char            err[256];

    /* the input as words: checked, never trusted; taken, they drive the
     * recogniser through the input's bytes */
    raw = malloc((nraw ? nraw : 1) * sizeof(int32_t));
    memcpy(raw, data, nraw * sizeof(int32_t));
    if (kimi_stag_view(raw, nraw, &t, err, sizeof(err)) == 0) {
        (void) feed(&t, (const char *) data, size, 1);
    }
    free(raw);

    if (nul == NULL) {
        return 0;
    }

    obj = json_loadb((const char *) data, (size_t) (nul - data), 0, &je);
    if (obj == NULL) {
        return 0;
    }
    if (kimi_stag_compile(obj, &w, &n, err, sizeof(err)) != 0) {
        json_decref(obj);
        return 0;
    }
    json_decref(obj);

    if (kimi_stag_view(w, n, &t, err, sizeof(err)) != 0) {
        abort();                            /* its own words refused */
    }

    {
        const char  *text = (const char *) nul + 1;
        size_t       len = size - (size_t) (nul - data) - 1;
        size_t       split = len > 0 ? (unsigned char) text[len - 1] % len + 1 : 1;
        int          whole = feed(&t, text, len, 0);

        if (feed(&t, text, len, 1) != whole || feed(&t, text, len, split) != whole) {
            abort();
        }
    }

    free(w);
    return 0;
}
