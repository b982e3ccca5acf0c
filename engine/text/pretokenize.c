/*
 * Kimi's pre-tokenizer: the pat_str of tokenization_kimi.py run by PCRE2.
 *
 * Owns:   the rewrite of pat_str for PCRE2, the JIT compile, and the
 *         chunking the reference encode() applies before tiktoken sees
 *         the text (400,000 code points; runs of 25,000 space/non-space).
 * Never:  does BPE or knows token ids.
 * Holds:  the compiled pattern is read-only after init; every split call
 *         brings its own match data and JIT stack, so threads may share it.
 *
 * The reference pattern is written for Rust's regex crate (via tiktoken's
 * fancy-regex).  Three differences with PCRE2 are rewritten here:
 *   - "[X&&[^\p{Han}]]" is class intersection, which PCRE2 lacks: it
 *     becomes "(?:(?!\p{sc=Han})[X])".
 *   - a bare "\p{Han}" is Script=Han in Rust but Script_Extensions=Han in
 *     PCRE2 >= 10.40 (which would make "、。" Han): we say \p{sc=Han}.
 *   - Rust's "\s" is the White_Space property; PCRE2's UCP "\s" leaves out
 *     U+0085, so the space class is spelled out.
 */

#include <string.h>

#include "text_internal.h"

#define KIMI_WS  "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}" \
                 "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define KIMI_UPPERISH  "(?:(?!\\p{sc=Han})[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}])"
#define KIMI_LOWERISH  "(?:(?!\\p{sc=Han})[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}])"
#define KIMI_CONTR     "(?i:'s|'t|'re|'ve|'m|'ll|'d)"

static const char  kimi_pat[] =
    "\\p{sc=Han}+"
    "|[^\\r\\n\\p{L}\\p{N}]?" KIMI_UPPERISH "*" KIMI_LOWERISH "+" KIMI_CONTR "?"
    "|[^\\r\\n\\p{L}\\p{N}]?" KIMI_UPPERISH "+" KIMI_LOWERISH "*" KIMI_CONTR "?"
    "|\\p{N}{1,3}"
    "| ?[^" KIMI_WS "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" KIMI_WS "]*[\\r\\n]+"
    "|[" KIMI_WS "]+(?![^" KIMI_WS "])"
    "|[" KIMI_WS "]+";

/* Limits of the reference encode() (tokenization_kimi.py); they change
 * ids only for inputs that reach them, but vLLM goes through them. */
#define KIMI_CHUNK_CHARS      400000
#define KIMI_RUN_CHARS        25000

/* A 25,000-letter run needs one backtracking frame per letter. */
#define KIMI_JIT_STACK_MIN    (32 * 1024)
#define KIMI_JIT_STACK_MAX    (8 * 1024 * 1024)


int
kimi_pretok_init(kimi_pretok_t *pt, kimi_err_t *err)
{
    int          rc;
    size_t       off;
    PCRE2_UCHAR  msg[256];

    memset(pt, 0, sizeof(*pt));

    pt->re = pcre2_compile((PCRE2_SPTR) kimi_pat, PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP, &rc, &off, NULL);
    if (pt->re == NULL) {
        pcre2_get_error_message(rc, msg, sizeof(msg));
        return kimi_err_set(err, KIMI_EUNSUPPORTED,
                            "pre-tokenizer pattern: PCRE2 error at %zu: %s",
                            off, (char *) msg);
    }

    /* JIT is an optimisation: the interpreter gives the same matches. */
    pt->has_jit = pcre2_jit_compile(pt->re, PCRE2_JIT_COMPLETE) == 0;

    return KIMI_OK;
}


void
kimi_pretok_free(kimi_pretok_t *pt)
{
    if (pt->re != NULL) {
        pcre2_code_free(pt->re);
        pt->re = NULL;
    }
}


/* Python's str.isspace() (bidi WS/B/S or category Zs), which the
 * reference chunking uses; not the same set as the regex's \s. */
static int
kimi_py_isspace(uint32_t c)
{
    if (c < 0x80) {
        return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
    }

    return c == 0x85 || c == 0xa0 || c == 0x1680
           || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029
           || c == 0x202f || c == 0x205f || c == 0x3000;
}


/* Next code point of valid UTF-8 at *i. */
static uint32_t
kimi_utf8_next(const uint8_t *s, size_t *i)
{
    uint32_t  c = s[*i];

    if (c < 0x80) {
        *i += 1;
        return c;
    }

    if (c < 0xe0) {
        c = ((c & 0x1f) << 6) | (s[*i + 1] & 0x3f);
        *i += 2;
        return c;
    }

    if (c < 0xf0) {
        c = ((c & 0x0f) << 12) | ((s[*i + 1] & 0x3f) << 6) | (s[*i + 2] & 0x3f);
        *i += 3;
        return c;
    }

    c = ((c & 0x07) << 18) | ((s[*i + 1] & 0x3f) << 12)
        | ((s[*i + 2] & 0x3f) << 6) | (s[*i + 3] & 0x3f);
    *i += 4;
    return c;
}


/*
 * ASCII fast path.  Matching the pattern by hand is exact for ASCII text:
 * every alternative reduces to runs of simple classes.  Whenever the
 * matcher would have to look at a non-ASCII byte to decide (a letter run
 * that might continue with "é", a space run that might continue with
 * U+3000, "'" followed by U+017F which (?i) folds to 's'), it gives up and
 * PCRE2 matches at that position instead, so results never differ.
 */

enum {
    KIMI_CL_END = 0,   /* end of the chunk */
    KIMI_CL_LOWER,     /* a-z: \p{Ll} */
    KIMI_CL_UPPER,     /* A-Z: \p{Lu} */
    KIMI_CL_DIGIT,     /* 0-9: \p{N} */
    KIMI_CL_NL,        /* \r \n */
    KIMI_CL_WS,        /* \t \v \f space: \s but not [\r\n] */
    KIMI_CL_OTHER,     /* the rest of ASCII: [^\s\p{L}\p{N}] */
    KIMI_CL_UNKNOWN,   /* a byte >= 0x80: ask PCRE2 */
};

#define KIMI_FAST_GIVE_UP  ((size_t) -1)


static inline int
kimi_cl(const uint8_t *s, size_t n, size_t i)
{
    uint8_t  c;

    if (i >= n) {
        return KIMI_CL_END;
    }

    c = s[i];
    if (c >= 0x80) {
        return KIMI_CL_UNKNOWN;
    }
    if (c >= 'a' && c <= 'z') {
        return KIMI_CL_LOWER;
    }
    if (c >= 'A' && c <= 'Z') {
        return KIMI_CL_UPPER;
    }
    if (c >= '0' && c <= '9') {
        return KIMI_CL_DIGIT;
    }
    if (c == '\r' || c == '\n') {
        return KIMI_CL_NL;
    }
    if (c == ' ' || (c >= '\t' && c <= '\f')) {
        return KIMI_CL_WS;
    }
    return KIMI_CL_OTHER;
}


/* (?i:'s|'t|'re|'ve|'m|'ll|'d)? at k */
static size_t
kimi_fast_contraction(const uint8_t *s, size_t n, size_t k)
{
    int  c1, c2;

    if (kimi_cl(s, n, k) != KIMI_CL_OTHER || s[k] != '\'') {
        return k;
    }

    c1 = kimi_cl(s, n, k + 1);
    if (c1 == KIMI_CL_UNKNOWN) {
        return KIMI_FAST_GIVE_UP;
    }
    if (c1 != KIMI_CL_LOWER && c1 != KIMI_CL_UPPER) {
        return k;
    }

    switch (s[k + 1] | 0x20) {
    case 's': case 't': case 'm': case 'd':
        return k + 2;
    case 'r': case 'v': case 'l':
        break;
    default:
        return k;
    }

    c2 = kimi_cl(s, n, k + 2);
    if (c2 == KIMI_CL_UNKNOWN) {
        return KIMI_FAST_GIVE_UP;
    }

    if (c2 == KIMI_CL_LOWER || c2 == KIMI_CL_UPPER) {
        c1 = s[k + 1] | 0x20;
        c2 = s[k + 2] | 0x20;
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e')
            || (c1 == 'l' && c2 == 'l'))
        {
            return k + 3;
        }
    }

    return k;
}


/* End of the match starting at i, or KIMI_FAST_GIVE_UP. */
static size_t
kimi_fast_match(const uint8_t *s, size_t n, size_t i)
{
    int     c, c1;
    size_t  j, k, last_nl;

    c = kimi_cl(s, n, i);
    if (c == KIMI_CL_UNKNOWN) {
        return KIMI_FAST_GIVE_UP;
    }

    /* alternatives 2 and 3: [^\r\n\p{L}\p{N}]? then letters */
    j = i;
    if (c == KIMI_CL_WS || c == KIMI_CL_OTHER) {
        c1 = kimi_cl(s, n, i + 1);
        if (c1 == KIMI_CL_UNKNOWN) {
            return KIMI_FAST_GIVE_UP;
        }
        if (c1 == KIMI_CL_UPPER || c1 == KIMI_CL_LOWER) {
            j = i + 1;
            c = c1;
        }
    }

    if (c == KIMI_CL_UPPER || c == KIMI_CL_LOWER) {
        k = j;
        while ((c = kimi_cl(s, n, k)) == KIMI_CL_UPPER) {
            k++;
        }
        /* [upper]*[lower]+ (alt 2), else [upper]+ (alt 3) */
        while (c == KIMI_CL_LOWER) {
            c = kimi_cl(s, n, ++k);
        }
        if (c == KIMI_CL_UNKNOWN) {
            return KIMI_FAST_GIVE_UP;
        }
        return kimi_fast_contraction(s, n, k);
    }

    /* alternative 4: \p{N}{1,3} */
    if (c == KIMI_CL_DIGIT) {
        for (k = i + 1; k < i + 3; k++) {
            c = kimi_cl(s, n, k);
            if (c == KIMI_CL_UNKNOWN) {
                return KIMI_FAST_GIVE_UP;
            }
            if (c != KIMI_CL_DIGIT) {
                break;
            }
        }
        return k;
    }

    /* alternative 5: " ?[^\s\p{L}\p{N}]+[\r\n]*" */
    k = (s[i] == ' ') ? i + 1 : i;
    c = kimi_cl(s, n, k);
    if (c == KIMI_CL_UNKNOWN) {
        return KIMI_FAST_GIVE_UP;
    }
    if (c == KIMI_CL_OTHER) {
        while ((c = kimi_cl(s, n, k)) == KIMI_CL_OTHER) {
            k++;
        }
        if (c == KIMI_CL_UNKNOWN) {
            return KIMI_FAST_GIVE_UP;
        }
        while (kimi_cl(s, n, k) == KIMI_CL_NL) {
            k++;
        }
        return k;
    }

    /* alternatives 6-8 on a run of spaces */
    last_nl = KIMI_FAST_GIVE_UP;
    for (k = i; ; k++) {
        c = kimi_cl(s, n, k);
        if (c == KIMI_CL_NL) {
            last_nl = k;
        } else if (c != KIMI_CL_WS) {
            break;
        }
    }

    if (c == KIMI_CL_UNKNOWN) {
        return KIMI_FAST_GIVE_UP;
    }

    if (last_nl != KIMI_FAST_GIVE_UP) {
        return last_nl + 1;                  /* \s*[\r\n]+ */
    }

    if (c != KIMI_CL_END && k - i >= 2) {
        return k - 1;                        /* \s+(?!\S) */
    }

    return k;                                /* \s+ */
}


typedef struct {
    const kimi_pretok_t    *pt;
    kimi_pretok_scratch_t  *scr;
    kimi_piece_pt           cb;
    void                   *ctx;
    kimi_err_t             *err;
} kimi_split_t;


static int kimi_pretok_scratch(kimi_split_t *sp);


/* All pattern matches in one chunk, gaps dropped as find_iter does. */
static int
kimi_pretok_chunk(kimi_split_t *sp, const uint8_t *s, size_t n)
{
    int          rc;
    size_t       at, end;
    PCRE2_SIZE  *ov;
    PCRE2_UCHAR  msg[256];

    at = 0;

    while (at < n) {
        end = sp->pt->no_fast ? KIMI_FAST_GIVE_UP : kimi_fast_match(s, n, at);
        if (end != KIMI_FAST_GIVE_UP) {
            rc = sp->cb(sp->ctx, s + at, end - at);
            if (rc != KIMI_OK) {
                return rc;
            }
            at = end;
            continue;
        }

        rc = kimi_pretok_scratch(sp);
        if (rc != KIMI_OK) {
            return rc;
        }
        ov = pcre2_get_ovector_pointer(sp->scr->md);

        if (sp->pt->has_jit) {
            rc = pcre2_jit_match(sp->pt->re, s, n, at, PCRE2_NO_UTF_CHECK,
                                 sp->scr->md, sp->scr->mc);

        } else {
            rc = pcre2_match(sp->pt->re, s, n, at, PCRE2_NO_UTF_CHECK,
                             sp->scr->md, sp->scr->mc);
        }

        if (rc == PCRE2_ERROR_NOMATCH) {
            return KIMI_OK;
        }

        if (rc < 0) {
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return kimi_err_set(sp->err, KIMI_EFULL,
                                "pre-tokenizer: PCRE2 match failed at byte "
                                "%zu: %s", at, (char *) msg);
        }

        if (ov[1] <= ov[0]) {
            /* no alternative matches empty; guard against a loop anyway */
            return kimi_err_set(sp->err, KIMI_EINVAL,
                                "pre-tokenizer: empty match at byte %zu", at);
        }

        rc = sp->cb(sp->ctx, s + ov[0], ov[1] - ov[0]);
        if (rc != KIMI_OK) {
            return rc;
        }

        at = ov[1];
    }

    return KIMI_OK;
}


/* _split_whitespaces_or_nonwhitespaces() of the reference, on one chunk. */
static int
kimi_pretok_runs(kimi_split_t *sp, const uint8_t *s, size_t n)
{
    int       rc, is_space, run_is_space;
    size_t    i, prev, start, run;
    uint32_t  c;

    if (n == 0) {
        return KIMI_OK;
    }

    i = 0;
    start = 0;
    run = 0;
    run_is_space = -1;

    while (i < n) {
        prev = i;
        c = kimi_utf8_next(s, &i);
        is_space = kimi_py_isspace(c);

        if (is_space != run_is_space) {
            run = 1;
            run_is_space = is_space;
            continue;
        }

        if (++run > KIMI_RUN_CHARS) {
            rc = kimi_pretok_chunk(sp, s + start, prev - start);
            if (rc != KIMI_OK) {
                return rc;
            }

            start = prev;
            run = 1;
        }
    }

    return kimi_pretok_chunk(sp, s + start, n - start);
}


/* PCRE2's match data and JIT stack, made on first need: ASCII text never
 * needs them, and one encode call reuses them for all its segments. */
static int
kimi_pretok_scratch(kimi_split_t *sp)
{
    kimi_pretok_scratch_t  *scr = sp->scr;

    if (scr->md != NULL) {
        return KIMI_OK;
    }

    scr->md = pcre2_match_data_create_from_pattern(sp->pt->re, NULL);
    scr->mc = pcre2_match_context_create(NULL);
    if (scr->md == NULL || scr->mc == NULL) {
        kimi_pretok_scratch_free(scr);
        return kimi_err_set(sp->err, KIMI_ENOMEM,
                            "pre-tokenizer: out of memory");
    }

    if (sp->pt->has_jit) {
        scr->js = pcre2_jit_stack_create(KIMI_JIT_STACK_MIN,
                                         KIMI_JIT_STACK_MAX, NULL);
        if (scr->js == NULL) {
            kimi_pretok_scratch_free(scr);
            return kimi_err_set(sp->err, KIMI_ENOMEM,
                                "pre-tokenizer: no memory for the JIT stack");
        }
        pcre2_jit_stack_assign(scr->mc, NULL, scr->js);
    }

    return KIMI_OK;
}


void
kimi_pretok_scratch_free(kimi_pretok_scratch_t *scr)
{
    if (scr->js != NULL) {
        pcre2_jit_stack_free(scr->js);
    }
    if (scr->mc != NULL) {
        pcre2_match_context_free(scr->mc);
    }
    if (scr->md != NULL) {
        pcre2_match_data_free(scr->md);
    }
    scr->js = NULL;
    scr->mc = NULL;
    scr->md = NULL;
}


int
kimi_pretok_split(const kimi_pretok_t *pt, kimi_pretok_scratch_t *scr,
    const uint8_t *text, size_t len, kimi_piece_pt cb, void *ctx,
    kimi_err_t *err)
{
    int           rc;
    size_t        i, start, n_chars;
    kimi_split_t  sp;

    if (len == 0) {
        return KIMI_OK;
    }

    sp.pt = pt;
    sp.scr = scr;
    sp.cb = cb;
    sp.ctx = ctx;
    sp.err = err;

    /* chunks of KIMI_CHUNK_CHARS code points, as the reference slices */
    i = 0;
    start = 0;
    n_chars = 0;

    while (i < len) {
        i += (text[i] < 0x80) ? 1 : (text[i] < 0xe0) ? 2
             : (text[i] < 0xf0) ? 3 : 4;

        if (++n_chars == KIMI_CHUNK_CHARS) {
            rc = kimi_pretok_runs(&sp, text + start, i - start);
            if (rc != KIMI_OK) {
                return rc;
            }

            start = i;
            n_chars = 0;
        }
    }

    return kimi_pretok_runs(&sp, text + start, len - start);
}
