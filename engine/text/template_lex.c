/*
 * Chat-template lexer: jinja2's, with transformers' settings.
 *
 * Owns:   splitting a template into text and tag tokens with the exact
 *         whitespace rules HF renders with: newlines normalised to "\n",
 *         one trailing newline dropped (keep_trailing_newline=False),
 *         "-" strips all whitespace on its side, "+" keeps it, trim_blocks
 *         drops the first newline after a block or comment tag, and
 *         lstrip_blocks drops spaces and tabs before a block or comment tag
 *         that starts its line.  Then the tokens inside tags.
 * Never:  knows what a statement means (template_parse.c).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template_internal.h"
#include "text_internal.h"

#define KIMI_TAG_MAX_TOKENS  1000

typedef enum {
    KIMI_TAG_VAR = 0,
    KIMI_TAG_BLOCK,
    KIMI_TAG_COMMENT,
} kimi_tag_e;


static int
kimi_lex_push(kimi_ttoks_t *t, kimi_tok_e type, int line, const char *s,
    size_t n)
{
    kimi_ttok_t  *v;

    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        v = realloc(t->v, t->cap * sizeof(*v));
        if (v == NULL) {
            return KIMI_ENOMEM;
        }
        t->v = v;
    }

    v = &t->v[t->n];
    v->type = type;
    v->line = line;
    v->len = n;
    v->text = malloc(n + 1);
    if (v->text == NULL) {
        return KIMI_ENOMEM;
    }
    if (n > 0) {
        memcpy(v->text, s, n);
    }
    v->text[n] = '\0';
    t->n++;
    return KIMI_OK;
}


void
kimi_tmpl_toks_free(kimi_ttoks_t *t)
{
    size_t  i;

    for (i = 0; i < t->n; i++) {
        free(t->v[i].text);
    }
    free(t->v);
    t->v = NULL;
    t->n = t->cap = 0;
}


static int
kimi_lex_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v'
           || c == '\f';
}


static int
kimi_lex_count_lines(const char *s, size_t n)
{
    int  k = 0;

    while (n--) {
        k += *s++ == '\n';
    }
    return k;
}


/* Appends the UTF-8 encoding of code point c. */
static size_t
kimi_lex_utf8(char *o, uint32_t c)
{
    if (c < 0x80) {
        o[0] = (char) c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char) (0xc0 | (c >> 6));
        o[1] = (char) (0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char) (0xe0 | (c >> 12));
        o[1] = (char) (0x80 | ((c >> 6) & 0x3f));
        o[2] = (char) (0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (char) (0xf0 | (c >> 18));
    o[1] = (char) (0x80 | ((c >> 12) & 0x3f));
    o[2] = (char) (0x80 | ((c >> 6) & 0x3f));
    o[3] = (char) (0x80 | (c & 0x3f));
    return 4;
}


static int
kimi_lex_hex(const char *s, size_t n, uint32_t *out)
{
    size_t    i;
    uint32_t  v = 0;

    for (i = 0; i < n; i++) {
        int  d = kimi_hex_digit(s[i]);

        if (d < 0) {
            return -1;
        }
        v = v << 4 | (uint32_t) d;
    }

    *out = v;
    return 0;
}


/* A quoted string at s[0] (the quote); Python escapes, as jinja2 decodes
 * them with "unicode-escape".  Returns the length consumed or -1. */
static long
kimi_lex_string(const char *s, size_t n, kimi_ttoks_t *t, int line)
{
    char      q = s[0], *o, *buf;
    size_t    i, w;
    uint32_t  c;
    int       rc;

    buf = malloc(n + 1);
    if (buf == NULL) {
        return -1;
    }
    o = buf;

    for (i = 1; i < n && s[i] != q; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            *o++ = s[i];
            continue;
        }

        i++;
        switch (s[i]) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'a': *o++ = '\a'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'v': *o++ = '\v'; break;
        case '0': *o++ = '\0'; break;
        case '\\': *o++ = '\\'; break;
        case '\'': *o++ = '\''; break;
        case '"': *o++ = '"'; break;
        case '\n': break;
        case 'x': case 'u': case 'U':
            w = s[i] == 'x' ? 2 : s[i] == 'u' ? 4 : 8;
            if (i + w >= n || kimi_lex_hex(s + i + 1, w, &c) != 0
                || c > 0x10ffff || (c >= 0xd800 && c < 0xe000))
            {
                free(buf);
                return -1;
            }
            o += kimi_lex_utf8(o, c);
            i += w;
            break;
        default:
            /* Python keeps an unknown escape as written */
            *o++ = '\\';
            *o++ = s[i];
        }
    }

    if (i >= n) {
        free(buf);
        return -1;
    }

    rc = kimi_lex_push(t, KIMI_T_STRING, line, buf, (size_t) (o - buf));
    free(buf);
    return rc == KIMI_OK ? (long) (i + 1) : -1;
}


static const char  *kimi_lex_ops[] = {
    "//", "**", "==", "!=", "<=", ">=",
    "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}",
    ".", ",", ":", "|", NULL
};


/* Tokens of one tag body from s[*i]; stops at its end marker.  Sets
 * *strip_right to '-' or '+' or 0.  Returns KIMI_OK or an error. */
static int
kimi_lex_tag(const char *s, size_t n, size_t *pos, kimi_tag_e kind,
    int *line, kimi_ttoks_t *t, int *strip_right, kimi_err_t *err)
{
    int          depth = 0, rc;
    long         k;
    size_t       n_toks = 0;
    char         close = (kind == KIMI_TAG_VAR) ? '}' : '%';
    size_t       i = *pos, j, m;
    const char  *op;

    for ( ;; ) {
        while (i < n && kimi_lex_is_space(s[i])) {
            *line += s[i] == '\n';
            i++;
        }

        if (i >= n) {
            return kimi_err_set(err, KIMI_EFORMAT, "chat template line %d: "
                                "unclosed tag", *line);
        }

        /* bounds the depth of one expression's tree, which the parser,
         * the evaluator and the destructor walk recursively */
        if (++n_toks > KIMI_TAG_MAX_TOKENS) {
            return kimi_err_set(err, KIMI_EUNSUPPORTED, "chat template line "
                                "%d: more than %d tokens in one tag", *line,
                                KIMI_TAG_MAX_TOKENS);
        }

        /* the end marker, "-" or "+" before it, when no bracket is open */
        if (depth == 0) {
            if ((s[i] == '-' || s[i] == '+') && i + 2 < n
                && s[i + 1] == close && s[i + 2] == '}')
            {
                *strip_right = s[i];
                *pos = i + 3;
                return KIMI_OK;
            }
            if (s[i] == close && i + 1 < n && s[i + 1] == '}') {
                *strip_right = 0;
                *pos = i + 2;
                return KIMI_OK;
            }
        }

        if (s[i] == '\'' || s[i] == '"') {
            k = kimi_lex_string(s + i, n - i, t, *line);
            if (k < 0) {
                return kimi_err_set(err, KIMI_EFORMAT, "chat template line "
                                    "%d: bad string literal", *line);
            }
            *line += kimi_lex_count_lines(s + i, (size_t) k);
            i += (size_t) k;
            continue;
        }

        if ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')
            || s[i] == '_')
        {
            for (j = i + 1; j < n && ((s[j] >= 'a' && s[j] <= 'z')
                 || (s[j] >= 'A' && s[j] <= 'Z') || (s[j] >= '0' && s[j] <= '9')
                 || s[j] == '_'); j++)
            {
                /* name characters */
            }
            rc = kimi_lex_push(t, KIMI_T_NAME, *line, s + i, j - i);
            if (rc != KIMI_OK) {
                return kimi_err_set(err, rc, "chat template: out of memory");
            }
            i = j;
            continue;
        }

        if (s[i] >= '0' && s[i] <= '9') {
            int  is_float = 0;

            for (j = i; j < n && s[j] >= '0' && s[j] <= '9'; j++) { }
            if (j + 1 < n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
                is_float = 1;
                for (j++; j < n && s[j] >= '0' && s[j] <= '9'; j++) { }
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                m = j + 1;
                if (m < n && (s[m] == '+' || s[m] == '-')) {
                    m++;
                }
                if (m < n && s[m] >= '0' && s[m] <= '9') {
                    is_float = 1;
                    for (j = m; j < n && s[j] >= '0' && s[j] <= '9'; j++) { }
                }
            }
            rc = kimi_lex_push(t, is_float ? KIMI_T_FLOAT : KIMI_T_INT, *line,
                               s + i, j - i);
            if (rc != KIMI_OK) {
                return kimi_err_set(err, rc, "chat template: out of memory");
            }
            i = j;
            continue;
        }

        for (k = 0; (op = kimi_lex_ops[k]) != NULL; k++) {
            m = strlen(op);
            if (i + m <= n && memcmp(s + i, op, m) == 0) {
                break;
            }
        }

        if (op == NULL) {
            return kimi_err_set(err, KIMI_EUNSUPPORTED, "chat template line "
                                "%d: unexpected character '%c'", *line, s[i]);
        }

        if (op[0] == '(' || op[0] == '[' || op[0] == '{') {
            depth++;
        } else if ((op[0] == ')' || op[0] == ']' || op[0] == '}') && depth > 0) {
            depth--;
        }

        rc = kimi_lex_push(t, KIMI_T_OP, *line, op, m);
        if (rc != KIMI_OK) {
            return kimi_err_set(err, rc, "chat template: out of memory");
        }
        i += m;
    }
}


int
kimi_tmpl_lex(const char *src, size_t len, kimi_ttoks_t *out,
    kimi_err_t *err)
{
    int         rc, line, line_starting, after, strip_left, strip_right;
    char       *s;
    size_t      n, i, tstart, tend, p, l, k;
    kimi_tag_e  kind;

    memset(out, 0, sizeof(*out));

    /* jinja2 normalises newlines and drops one trailing newline */
    s = malloc(len + 1);
    if (s == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "chat template: out of memory");
    }

    for (i = 0, n = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') {
                i++;
            }
        } else {
            s[n++] = src[i];
        }
    }
    if (n > 0 && s[n - 1] == '\n') {
        n--;
    }

    line = 1;
    line_starting = 1;
    after = 0;           /* what the previous tag does to the next text:
                            0 nothing, '-' strip all, 't' trim a newline */
    i = 0;
    rc = KIMI_OK;

    for ( ;; ) {
        /* the next tag opening */
        for (p = i; p + 1 < n; p++) {
            if (s[p] == '{' && (s[p + 1] == '{' || s[p + 1] == '%'
                                || s[p + 1] == '#'))
            {
                break;
            }
        }
        if (p + 1 >= n) {
            p = n;
        }

        tstart = i;
        tend = p;

        /* what the previous tag consumes of this text */
        if (after == '-') {
            while (tstart < tend && kimi_lex_is_space(s[tstart])) {
                line_starting = s[tstart] == '\n';
                tstart++;
            }
        } else if (after == 't' && tstart < tend && s[tstart] == '\n') {
            tstart++;
            line_starting = 1;
        }

        kind = KIMI_TAG_VAR;
        strip_left = 0;
        if (p < n) {
            kind = s[p + 1] == '{' ? KIMI_TAG_VAR
                   : s[p + 1] == '%' ? KIMI_TAG_BLOCK : KIMI_TAG_COMMENT;
            if (p + 2 < n && (s[p + 2] == '-' || s[p + 2] == '+')) {
                strip_left = s[p + 2];
            }

            if (strip_left == '-') {
                while (tend > tstart && kimi_lex_is_space(s[tend - 1])) {
                    tend--;
                }

            } else if (strip_left != '+' && kind != KIMI_TAG_VAR) {
                /* lstrip_blocks: only spaces between line start and tag */
                for (l = tend; l > tstart && s[l - 1] != '\n'; l--) { }
                if (l > tstart || line_starting) {
                    for (k = l; k < tend && kimi_lex_is_space(s[k]); k++) { }
                    if (k == tend) {
                        tend = l;
                    }
                }
            }
        }

        if (tend > tstart) {
            rc = kimi_lex_push(out, KIMI_T_TEXT, line, s + tstart,
                               tend - tstart);
            if (rc != KIMI_OK) {
                rc = kimi_err_set(err, rc, "chat template: out of memory");
                goto failed;
            }
        }
        line += kimi_lex_count_lines(s + i, p - i);

        if (p >= n) {
            break;
        }

        i = p + 2 + (strip_left != 0);
        strip_right = 0;

        if (kind == KIMI_TAG_COMMENT) {
            for (k = i; k + 1 < n && !(s[k] == '#' && s[k + 1] == '}'); k++) { }
            if (k + 1 >= n) {
                rc = kimi_err_set(err, KIMI_EFORMAT, "chat template line %d: "
                                  "unclosed comment", line);
                goto failed;
            }
            if (k > i && (s[k - 1] == '-' || s[k - 1] == '+')) {
                strip_right = s[k - 1];
            }
            line += kimi_lex_count_lines(s + i, k - i);
            i = k + 2;

        } else {
            rc = kimi_lex_push(out, kind == KIMI_TAG_VAR ? KIMI_T_VAR_BEGIN
                               : KIMI_T_BLOCK_BEGIN, line, "", 0);
            if (rc == KIMI_OK) {
                rc = kimi_lex_tag(s, n, &i, kind, &line, out, &strip_right,
                                  err);
            } else {
                rc = kimi_err_set(err, rc, "chat template: out of memory");
            }
            if (rc == KIMI_OK) {
                rc = kimi_lex_push(out, kind == KIMI_TAG_VAR ? KIMI_T_VAR_END
                                   : KIMI_T_BLOCK_END, line, "", 0);
                if (rc != KIMI_OK) {
                    rc = kimi_err_set(err, rc, "chat template: out of memory");
                }
            }
            if (rc != KIMI_OK) {
                goto failed;
            }
        }

        line_starting = 0;
        if (strip_right == '-') {
            after = '-';
        } else if (strip_right != '+' && kind != KIMI_TAG_VAR) {
            after = 't';
        } else {
            after = 0;
        }
    }

    rc = kimi_lex_push(out, KIMI_T_EOF, line, "", 0);
    if (rc != KIMI_OK) {
        rc = kimi_err_set(err, rc, "chat template: out of memory");
        goto failed;
    }

    free(s);
    return KIMI_OK;

failed:

    free(s);
    kimi_tmpl_toks_free(out);
    return rc;
}
