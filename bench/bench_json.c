/*
 * A single-pass scanner for the JSON of one OpenAI stream chunk.
 *
 * Owns:   reading, without allocating, the fields a benchmark needs from
 *         a chunk: "id", whether "choices" is empty, the text of
 *         choices[0] ("text", or "delta"."content" for chat) and "usage"'s
 *         token counts; JSON string unescaping into UTF-8.
 * Never:  guesses: anything it does not fully understand (an "error" key,
 *         escaped keys, malformed input, deep nesting) returns -1 and the
 *         caller parses the chunk with jansson instead.
 *
 * Why: jansson builds a tree per chunk, ~4 us on this project's VM; at
 * 10^5 tokens/s that alone is a core, and the client would compete with
 * the server it measures.  This scan costs a fraction of that.
 */

#include <string.h>

#include "bench_json.h"

#define BENCH_JSON_MAX_DEPTH  64

typedef struct {
    const char  *p;
    const char  *end;
} bench_json_t;


static void
bench_json_ws(bench_json_t *j)
{
    while (j->p < j->end
           && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n'
               || *j->p == '\r'))
    {
        j->p++;
    }
}


/* A string at j->p ('"'): *s, *n the raw bytes between the quotes. */
static int
bench_json_string(bench_json_t *j, const char **s, size_t *n, int *escaped)
{
    const char  *q;

    if (j->p >= j->end || *j->p != '"') {
        return -1;
    }

    *escaped = 0;
    for (q = j->p + 1; q < j->end; q++) {
        if (*q == '\\') {
            *escaped = 1;
            q++;
            continue;
        }
        if (*q == '"') {
            *s = j->p + 1;
            *n = (size_t) (q - j->p - 1);
            j->p = q + 1;
            return 0;
        }
        if ((unsigned char) *q < 0x20) {
            return -1;                /* control characters must be escaped */
        }
    }

    return -1;
}


/* A key and its ':' (white space around both). */
static int
bench_json_key(bench_json_t *j, const char **s, size_t *n, int *esc)
{
    bench_json_ws(j);
    if (bench_json_string(j, s, n, esc) != 0) {
        return -1;
    }
    bench_json_ws(j);
    if (j->p >= j->end || *j->p != ':') {
        return -1;
    }
    j->p++;
    return 0;
}


/* After a member: 1 past a ',' (another follows), 0 past close, else -1. */
static int
bench_json_next(bench_json_t *j, char close)
{
    bench_json_ws(j);
    if (j->p >= j->end) {
        return -1;
    }
    if (*j->p == ',') {
        j->p++;
        return 1;
    }
    if (*j->p == close) {
        j->p++;
        return 0;
    }
    return -1;
}


static int
bench_json_skip(bench_json_t *j, int depth)
{
    const char  *s;
    size_t       n;
    int          esc, rc;

    if (depth > BENCH_JSON_MAX_DEPTH) {
        return -1;
    }

    bench_json_ws(j);
    if (j->p >= j->end) {
        return -1;
    }

    switch (*j->p) {

    case '"':
        return bench_json_string(j, &s, &n, &esc);

    case '{':
    case '[':
        {
            char  close = *j->p == '{' ? '}' : ']';
            int   is_obj = close == '}';

            j->p++;
            bench_json_ws(j);
            if (j->p < j->end && *j->p == close) {
                j->p++;
                return 0;
            }
            for ( ;; ) {
                if (is_obj) {
                    if (bench_json_key(j, &s, &n, &esc) != 0) {
                        return -1;
                    }
                }
                if (bench_json_skip(j, depth + 1) != 0) {
                    return -1;
                }
                rc = bench_json_next(j, close);
                if (rc <= 0) {
                    return rc;
                }
            }
        }

    default:
        /* number, true, false, null: a run of these characters */
        s = j->p;
        while (j->p < j->end && *j->p != '\0'
               && (strchr("+-.0123456789eE", *j->p) != NULL
                   || (*j->p >= 'a' && *j->p <= 'z')))
        {
            j->p++;
        }
        if (j->p == s) {
            return -1;
        }
        n = (size_t) (j->p - s);
        if ((*s >= 'a' && *s <= 'z')
            && !(n == 4 && memcmp(s, "null", 4) == 0)
            && !(n == 4 && memcmp(s, "true", 4) == 0)
            && !(n == 5 && memcmp(s, "false", 5) == 0))
        {
            return -1;
        }
        return 0;
    }
}


static int
bench_json_is(const char *s, size_t n, const char *key)
{
    return strlen(key) == n && memcmp(s, key, n) == 0;
}


/* A non-negative integer value (usage counts); null leaves *v alone. */
static int
bench_json_uint(bench_json_t *j, long *v)
{
    long  x = 0;
    int   digits = 0;

    bench_json_ws(j);
    if (j->end - j->p >= 4 && memcmp(j->p, "null", 4) == 0) {
        j->p += 4;
        return 0;
    }
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9' && digits < 12) {
        x = x * 10 + (*j->p++ - '0');
        digits++;
    }
    if (digits == 0 || (j->p < j->end && strchr(".eE", *j->p) != NULL)) {
        return -1;
    }
    *v = x;

    return 0;
}


/*
 * An object whose keys we look at: for each key, want(key) says which of
 * the wanted names it is (0: skip the value).  Used for choices[0], its
 * delta and usage; calls back into the caller's handler.
 */
typedef int (*bench_json_field_pt)(bench_json_t *j, const char *key,
    size_t key_len, void *ctx);

static int
bench_json_object(bench_json_t *j, bench_json_field_pt field, void *ctx)
{
    const char  *k;
    size_t       kn;
    int          esc, rc;

    bench_json_ws(j);
    if (j->p >= j->end || *j->p != '{') {
        return -1;
    }
    j->p++;
    bench_json_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return 0;
    }

    for ( ;; ) {
        if (bench_json_key(j, &k, &kn, &esc) != 0 || esc) {
            return -1;                /* an escaped key: let jansson do it */
        }
        bench_json_ws(j);

        if (field(j, k, kn, ctx) != 0) {
            return -1;
        }

        rc = bench_json_next(j, '}');
        if (rc <= 0) {
            return rc;
        }
    }
}


typedef struct {
    bench_chunk_t  *out;
    int             is_chat;
} bench_scan_ctx_t;


/* a text value: a string (kept raw) or null */
static int
bench_json_text(bench_json_t *j, bench_chunk_t *out)
{
    if (j->end - j->p >= 4 && memcmp(j->p, "null", 4) == 0) {
        j->p += 4;
        return 0;
    }

    out->has_text = 1;
    return bench_json_string(j, &out->text, &out->text_len,
                             &out->text_escaped);
}


static int
bench_scan_delta(bench_json_t *j, const char *k, size_t kn, void *ctx)
{
    bench_scan_ctx_t  *sc = ctx;

    if (bench_json_is(k, kn, "content")) {
        return bench_json_text(j, sc->out);
    }

    return bench_json_skip(j, 2);
}


static int
bench_scan_choice(bench_json_t *j, const char *k, size_t kn, void *ctx)
{
    bench_scan_ctx_t  *sc = ctx;

    if (!sc->is_chat && bench_json_is(k, kn, "text")) {
        return bench_json_text(j, sc->out);
    }
    if (sc->is_chat && bench_json_is(k, kn, "delta")) {
        return bench_json_object(j, bench_scan_delta, ctx);
    }

    return bench_json_skip(j, 2);
}


static int
bench_scan_usage(bench_json_t *j, const char *k, size_t kn, void *ctx)
{
    bench_scan_ctx_t  *sc = ctx;

    if (bench_json_is(k, kn, "completion_tokens")) {
        return bench_json_uint(j, &sc->out->completion_tokens);
    }
    if (bench_json_is(k, kn, "prompt_tokens")) {
        return bench_json_uint(j, &sc->out->prompt_tokens);
    }

    return bench_json_skip(j, 2);
}


static int
bench_scan_top(bench_json_t *j, const char *k, size_t kn, void *ctx)
{
    bench_scan_ctx_t  *sc = ctx;
    bench_chunk_t     *out = sc->out;
    int                esc;

    if (bench_json_is(k, kn, "error")) {
        return -1;                    /* jansson reads the message */
    }

    if (bench_json_is(k, kn, "id")) {
        if (bench_json_string(j, &out->id, &out->id_len, &esc) != 0 || esc) {
            return -1;
        }
        return 0;
    }

    if (bench_json_is(k, kn, "choices")) {
        if (j->p >= j->end || *j->p != '[') {
            return -1;
        }
        j->p++;
        bench_json_ws(j);
        out->n_choices = 0;
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return 0;
        }
        for ( ;; ) {
            if (out->n_choices == 0) {
                if (bench_json_object(j, bench_scan_choice, ctx) != 0) {
                    return -1;
                }
            } else if (bench_json_skip(j, 2) != 0) {
                return -1;
            }
            out->n_choices++;
            bench_json_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == ']') {
                j->p++;
                return 0;
            }
            return -1;
        }
    }

    if (bench_json_is(k, kn, "usage")) {
        if (j->end - j->p >= 4 && memcmp(j->p, "null", 4) == 0) {
            j->p += 4;
            return 0;
        }
        out->has_usage = 1;
        return bench_json_object(j, bench_scan_usage, ctx);
    }

    return bench_json_skip(j, 1);
}


int
bench_chunk_scan(const char *p, size_t n, int is_chat, bench_chunk_t *out)
{
    bench_json_t      j = { p, p + n };
    bench_scan_ctx_t  sc = { out, is_chat };

    memset(out, 0, sizeof(*out));
    out->n_choices = -1;

    if (bench_json_object(&j, bench_scan_top, &sc) != 0) {
        return -1;
    }

    bench_json_ws(&j);

    return j.p == j.end ? 0 : -1;
}


static int
bench_hex4(const char *s, unsigned *v)
{
    int  i;

    *v = 0;
    for (i = 0; i < 4; i++) {
        char  c = s[i];

        *v <<= 4;
        if (c >= '0' && c <= '9') {
            *v |= (unsigned) (c - '0');
        } else if (c >= 'a' && c <= 'f') {
            *v |= (unsigned) (c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            *v |= (unsigned) (c - 'A' + 10);
        } else {
            return -1;
        }
    }

    return 0;
}


int
bench_json_unescape(const char *s, size_t n, char *dst, size_t *dst_len)
{
    const char  *end = s + n;
    char        *d = dst;
    unsigned     cp, lo;

    while (s < end) {
        if (*s != '\\') {
            *d++ = *s++;
            continue;
        }
        if (end - s < 2) {
            return -1;
        }
        s++;
        switch (*s++) {
        case '"':  *d++ = '"'; break;
        case '\\': *d++ = '\\'; break;
        case '/':  *d++ = '/'; break;
        case 'b':  *d++ = '\b'; break;
        case 'f':  *d++ = '\f'; break;
        case 'n':  *d++ = '\n'; break;
        case 'r':  *d++ = '\r'; break;
        case 't':  *d++ = '\t'; break;
        case 'u':
            if (end - s < 4 || bench_hex4(s, &cp) != 0) {
                return -1;
            }
            s += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                /* a high surrogate needs its low half */
                if (end - s < 6 || s[0] != '\\' || s[1] != 'u'
                    || bench_hex4(s + 2, &lo) != 0
                    || lo < 0xdc00 || lo > 0xdfff)
                {
                    return -1;
                }
                s += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);

            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return -1;
            }

            if (cp < 0x80) {
                *d++ = (char) cp;
            } else if (cp < 0x800) {
                *d++ = (char) (0xc0 | (cp >> 6));
                *d++ = (char) (0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                *d++ = (char) (0xe0 | (cp >> 12));
                *d++ = (char) (0x80 | ((cp >> 6) & 0x3f));
                *d++ = (char) (0x80 | (cp & 0x3f));
            } else {
                *d++ = (char) (0xf0 | (cp >> 18));
                *d++ = (char) (0x80 | ((cp >> 12) & 0x3f));
                *d++ = (char) (0x80 | ((cp >> 6) & 0x3f));
                *d++ = (char) (0x80 | (cp & 0x3f));
            }
            break;
        default:
            return -1;
        }
    }

    *dst_len = (size_t) (d - dst);

    return 0;
}
