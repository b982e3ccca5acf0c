/*
 * Python's text forms of JSON values, as the reference renderer prints
 * them: json.dumps(ensure_ascii=False) for tojson, str() for {{ x }},
 * repr() for strings inside printed lists and dicts, float.__repr__.
 *
 * Owns:   the output buffer (with its untrusted spans) and the formatting.
 * Never:  evaluates template expressions.
 * Holds:  the one process-wide object here is a compiled, read-only PCRE2
 *         pattern for str.isprintable(), made once by pthread_once because
 *         the Unicode tables it needs are PCRE2's.
 */

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "template_internal.h"


void
kimi_buf_add(kimi_buf_t *b, const char *s, size_t n, int trusted)
{
    char         *p;
    size_t        cap;
    kimi_span_t  *sp;

    if (b->failed || n == 0) {
        return;
    }

    if (b->len + n + 1 > b->cap) {
        cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }

    if (!trusted) {
        if (b->n_spans > 0
            && b->spans[b->n_spans - 1].off + b->spans[b->n_spans - 1].len
               == b->len)
        {
            b->spans[b->n_spans - 1].len += n;

        } else {
            if (b->n_spans == b->cap_spans) {
                cap = b->cap_spans ? 2 * b->cap_spans : 16;
                sp = realloc(b->spans, cap * sizeof(*sp));
                if (sp == NULL) {
                    b->failed = 1;
                    return;
                }
                b->spans = sp;
                b->cap_spans = cap;
            }
            b->spans[b->n_spans].off = b->len;
            b->spans[b->n_spans].len = n;
            b->n_spans++;
        }
    }

    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}


void
kimi_buf_free(kimi_buf_t *b)
{
    free(b->p);
    free(b->spans);
    memset(b, 0, sizeof(*b));
}


/* float.__repr__: the shortest digits that round-trip, fixed notation
 * for decimal exponents -4..15, else d.ddde+XX. */
void
kimi_py_float(kimi_buf_t *b, double d, int trusted)
{
    int     prec, exp10, n_dig, i;
    char    tmp[64], dig[32], out[64], *e, *o;

    if (isnan(d)) {
        kimi_buf_add(b, "NaN", 3, trusted);
        return;
    }
    if (isinf(d)) {
        kimi_buf_add(b, d < 0 ? "-Infinity" : "Infinity", d < 0 ? 9 : 8,
                     trusted);
        return;
    }

    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d) {
            break;
        }
    }

    /* tmp = [-]d[.ddd]e[+-]XX */
    o = out;
    i = 0;
    if (tmp[0] == '-') {
        *o++ = '-';
        i = 1;
    }
    n_dig = 0;
    for ( ; tmp[i] != 'e'; i++) {
        if (tmp[i] != '.') {
            dig[n_dig++] = tmp[i];
        }
    }
    exp10 = (int) strtol(tmp + i + 1, &e, 10);
    while (n_dig > 1 && dig[n_dig - 1] == '0') {
        n_dig--;
    }

    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 < 0) {
            *o++ = '0';
            *o++ = '.';
            for (i = 0; i < -exp10 - 1; i++) {
                *o++ = '0';
            }
            memcpy(o, dig, (size_t) n_dig);
            o += n_dig;

        } else {
            for (i = 0; i <= exp10; i++) {
                *o++ = i < n_dig ? dig[i] : '0';
            }
            *o++ = '.';
            if (n_dig > exp10 + 1) {
                memcpy(o, dig + exp10 + 1, (size_t) (n_dig - exp10 - 1));
                o += n_dig - exp10 - 1;
            } else {
                *o++ = '0';
            }
        }

    } else {
        *o++ = dig[0];
        if (n_dig > 1) {
            *o++ = '.';
            memcpy(o, dig + 1, (size_t) (n_dig - 1));
            o += n_dig - 1;
        }
        o += sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+',
                     exp10 < 0 ? -exp10 : exp10);
    }

    kimi_buf_add(b, out, (size_t) (o - out), trusted);
}


static void
kimi_py_int(kimi_buf_t *b, json_int_t v, int trusted)
{
    char  tmp[32];
    int   n;

    n = snprintf(tmp, sizeof(tmp), "%" JSON_INTEGER_FORMAT, v);
    kimi_buf_add(b, tmp, (size_t) n, trusted);
}


static void
kimi_py_json_string(kimi_buf_t *b, const char *s, size_t n, int trusted)
{
    char    esc[8];
    size_t  i, start;

    kimi_buf_add(b, "\"", 1, trusted);

    for (i = start = 0; i < n; i++) {
        unsigned char  c = (unsigned char) s[i];
        const char    *r = NULL;

        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }

        switch (c) {
        case '"': r = "\\\""; break;
        case '\\': r = "\\\\"; break;
        case '\n': r = "\\n"; break;
        case '\r': r = "\\r"; break;
        case '\t': r = "\\t"; break;
        case '\b': r = "\\b"; break;
        case '\f': r = "\\f"; break;
        default:
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            r = esc;
        }

        kimi_buf_add(b, s + start, i - start, trusted);
        kimi_buf_add(b, r, strlen(r), trusted);
        start = i + 1;
    }

    kimi_buf_add(b, s + start, n - start, trusted);
    kimi_buf_add(b, "\"", 1, trusted);
}


typedef void (*kimi_py_key_pt)(kimi_buf_t *b, const char *s, size_t n,
    int trusted);
typedef void (*kimi_py_item_pt)(kimi_buf_t *b, const json_t *v, int trusted);

/* A list as "[a, b]" or a dict as "{k: v}", the separators Python's repr()
 * and json.dumps() share; key writes a key, item writes each value. */
static void
kimi_py_container(kimi_buf_t *b, const json_t *v, int trusted,
    kimi_py_key_pt key_fn, kimi_py_item_pt item)
{
    size_t       i;
    const char  *key;
    json_t      *x;
    int          first = 1;

    if (json_is_array(v)) {
        kimi_buf_add(b, "[", 1, trusted);
        json_array_foreach(v, i, x) {
            if (i > 0) {
                kimi_buf_add(b, ", ", 2, trusted);
            }
            item(b, x, trusted);
        }
        kimi_buf_add(b, "]", 1, trusted);
        return;
    }

    kimi_buf_add(b, "{", 1, trusted);
    json_object_foreach((json_t *) v, key, x) {
        if (!first) {
            kimi_buf_add(b, ", ", 2, trusted);
        }
        first = 0;
        key_fn(b, key, strlen(key), trusted);
        kimi_buf_add(b, ": ", 2, trusted);
        item(b, x, trusted);
    }
    kimi_buf_add(b, "}", 1, trusted);
}


void
kimi_py_json(kimi_buf_t *b, const json_t *v, int trusted)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        kimi_buf_add(b, "null", 4, trusted);
        break;
    case JSON_TRUE:
        kimi_buf_add(b, "true", 4, trusted);
        break;
    case JSON_FALSE:
        kimi_buf_add(b, "false", 5, trusted);
        break;
    case JSON_INTEGER:
        kimi_py_int(b, json_integer_value(v), trusted);
        break;
    case JSON_REAL:
        kimi_py_float(b, json_real_value(v), trusted);
        break;
    case JSON_STRING:
        kimi_py_json_string(b, json_string_value(v), json_string_length(v),
                            trusted);
        break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        kimi_py_container(b, v, trusted, kimi_py_json_string, kimi_py_json);
        break;
    }
}


/* ---- repr() of str ------------------------------------------------------------ */

static pthread_once_t   kimi_py_once = PTHREAD_ONCE_INIT;
static pcre2_code      *kimi_py_unprintable;    /* read-only once made */


static void
kimi_py_init(void)
{
    int         rc;
    PCRE2_SIZE  off;

    kimi_py_unprintable = pcre2_compile((PCRE2_SPTR) "[\\p{C}\\p{Z}]",
                                        PCRE2_ZERO_TERMINATED,
                                        PCRE2_UTF | PCRE2_ANCHORED, &rc,
                                        &off, NULL);
}


/* str.isprintable() of the character at s (n bytes, valid UTF-8). */
static int
kimi_py_printable(const char *s, size_t n)
{
    int                rc;
    pcre2_match_data  *md;

    if (kimi_py_unprintable == NULL) {
        return 1;
    }

    md = pcre2_match_data_create(1, NULL);
    if (md == NULL) {
        return 1;
    }
    rc = pcre2_match(kimi_py_unprintable, (PCRE2_SPTR) s, n, 0,
                     PCRE2_NO_UTF_CHECK, md, NULL);
    pcre2_match_data_free(md);
    return rc < 0;
}


static void
kimi_py_repr_string(kimi_buf_t *b, const char *s, size_t n, int trusted)
{
    char      q, esc[16];
    size_t    i, k;
    uint32_t  c;

    q = (memchr(s, '\'', n) != NULL && memchr(s, '"', n) == NULL) ? '"'
                                                                   : '\'';
    kimi_buf_add(b, &q, 1, trusted);

    for (i = 0; i < n; i += k) {
        unsigned char  u = (unsigned char) s[i];

        k = u < 0x80 ? 1 : u < 0xe0 ? 2 : u < 0xf0 ? 3 : 4;
        if (i + k > n) {
            k = n - i;
        }

        if (u < 0x80) {
            if (u == (unsigned char) q || u == '\\') {
                esc[0] = '\\';
                esc[1] = (char) u;
                kimi_buf_add(b, esc, 2, trusted);
            } else if (u == '\n') {
                kimi_buf_add(b, "\\n", 2, trusted);
            } else if (u == '\r') {
                kimi_buf_add(b, "\\r", 2, trusted);
            } else if (u == '\t') {
                kimi_buf_add(b, "\\t", 2, trusted);
            } else if (u < 0x20 || u == 0x7f) {
                snprintf(esc, sizeof(esc), "\\x%02x", u);
                kimi_buf_add(b, esc, 4, trusted);
            } else {
                kimi_buf_add(b, s + i, 1, trusted);
            }
            continue;
        }

        if (kimi_py_printable(s + i, k)) {
            kimi_buf_add(b, s + i, k, trusted);
            continue;
        }

        c = k == 2 ? ((u & 0x1fu) << 6) | (s[i + 1] & 0x3f)
            : k == 3 ? ((u & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6)
                       | (s[i + 2] & 0x3f)
            : ((u & 0x07u) << 18) | ((s[i + 1] & 0x3fu) << 12)
              | ((s[i + 2] & 0x3fu) << 6) | (s[i + 3] & 0x3f);

        if (c <= 0xff) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
        } else if (c <= 0xffff) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
        } else {
            snprintf(esc, sizeof(esc), "\\U%08x", c);
        }
        kimi_buf_add(b, esc, strlen(esc), trusted);
    }

    kimi_buf_add(b, &q, 1, trusted);
}


void
kimi_py_repr(kimi_buf_t *b, const json_t *v, int trusted)
{
    pthread_once(&kimi_py_once, kimi_py_init);

    switch (json_typeof(v)) {
    case JSON_STRING:
        kimi_py_repr_string(b, json_string_value(v), json_string_length(v),
                            trusted);
        break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        kimi_py_container(b, v, trusted, kimi_py_repr_string, kimi_py_repr);
        break;
    default:
        kimi_py_str(b, v, trusted);
    }
}


void
kimi_py_str(kimi_buf_t *b, const json_t *v, int trusted)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        kimi_buf_add(b, "None", 4, trusted);
        break;
    case JSON_TRUE:
        kimi_buf_add(b, "True", 4, trusted);
        break;
    case JSON_FALSE:
        kimi_buf_add(b, "False", 5, trusted);
        break;
    case JSON_INTEGER:
        kimi_py_int(b, json_integer_value(v), trusted);
        break;
    case JSON_REAL:
        kimi_py_float(b, json_real_value(v), trusted);
        break;
    case JSON_STRING:
        kimi_buf_add(b, json_string_value(v), json_string_length(v), trusted);
        break;
    default:
        kimi_py_repr(b, v, trusted);
    }
}
