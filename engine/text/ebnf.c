/*
 * EBNF (GBNF) grammars to regular expressions: see ebnf.h.
 *
 * Each rule body is translated as it is parsed into regex text in which a
 * reference to a rule is a marker (0x01 name 0x02: bytes the translation
 * never emits otherwise, control characters being written as \xHH); then
 * root is expanded, every marker replaced by its rule's expansion in a
 * non-capturing group, a rule met again while its own expansion is under
 * way being a cycle.
 */

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ebnf.h"
#include "gram.h"
#include "regex_dfa.h"
#include "text_internal.h"

#define EBNF_MAX_RULES    256
#define EBNF_MAX_NAME     64
#define EBNF_MAX_OUT      (1 << 20)     /* bytes of any pattern built */
#define EBNF_MAX_DEPTH    64            /* nested groups while parsing */
#define EBNF_REF_OPEN     '\x01'
#define EBNF_REF_CLOSE    '\x02'


typedef struct {
    char    *p;
    size_t   len;
    size_t   cap;
    int      failed;                      /* out of memory or too long */
} ebnf_buf_t;

typedef struct {
    char         name[EBNF_MAX_NAME];
    ebnf_buf_t   body;                    /* with reference markers */
    char        *expanded;                /* NULL until expanded */
    size_t       expanded_len;
    int          visiting;
} ebnf_rule_t;

typedef struct {
    const char   *s;
    size_t        len;
    size_t        pos;
    int           depth;
    ebnf_rule_t  *rules;
    int           n_rules;
    char         *msg;
    size_t        msg_len;
    int           failed;
    int           cycle;                  /* what failed is a recursion */
} ebnf_t;


static void
ebnf_put(ebnf_buf_t *b, const char *s, size_t n)
{
    if (b->failed) {
        return;
    }

    if (b->len + n + 1 > b->cap) {
        size_t  cap = b->cap ? b->cap * 2 : 64;
        char   *p;

        while (cap < b->len + n + 1) {
            cap *= 2;
        }

        if (cap > EBNF_MAX_OUT || (p = realloc(b->p, cap)) == NULL) {
            b->failed = 1;
            return;
        }

        b->p = p;
        b->cap = cap;
    }

    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}


static void
ebnf_puts(ebnf_buf_t *b, const char *s)
{
    ebnf_put(b, s, strlen(s));
}


/* line:column of byte offset at, 1-based */
static void
ebnf_where(const ebnf_t *g, size_t at, int *line, int *col)
{
    *line = 1;
    *col = 1;

    for (size_t i = 0; i < at && i < g->len; i++) {
        if (g->s[i] == '\n') {
            (*line)++;
            *col = 1;

        } else {
            (*col)++;
        }
    }
}


static int
ebnf_fail(ebnf_t *g, const char *fmt, ...)
{
    va_list  ap;
    int      line, col, n;

    if (g->failed) {
        return -1;
    }

    g->failed = 1;
    ebnf_where(g, g->pos, &line, &col);
    n = snprintf(g->msg, g->msg_len, "grammar line %d column %d: ", line, col);

    if (n > 0 && (size_t) n < g->msg_len) {
        va_start(ap, fmt);
        vsnprintf(g->msg + n, g->msg_len - n, fmt, ap);
        va_end(ap);
    }

    return -1;
}


static int
ebnf_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '_' || c == '-';
}


/* whitespace (newlines too) and # comments */
static void
ebnf_skip(ebnf_t *g)
{
    while (g->pos < g->len) {
        char  c = g->s[g->pos];

        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            g->pos++;

        } else if (c == '#') {
            while (g->pos < g->len && g->s[g->pos] != '\n') {
                g->pos++;
            }

        } else {
            break;
        }
    }
}


/* at a name followed by ::= (the start of the next rule)? */
static int
ebnf_at_rule_start(ebnf_t *g)
{
    size_t  save = g->pos, i = g->pos;
    int     yes;

    while (i < g->len && ebnf_name_char(g->s[i])) {
        i++;
    }

    if (i == g->pos) {
        return 0;
    }

    g->pos = i;
    ebnf_skip(g);
    yes = g->len - g->pos >= 3 && memcmp(g->s + g->pos, "::=", 3) == 0;
    g->pos = save;
    return yes;
}


/* One UTF-8 character at g->pos into *cp (the grammar text is UTF-8). */
static int
ebnf_utf8(ebnf_t *g, uint32_t *cp)
{
    size_t  n = kimi_utf8_decode((const uint8_t *) g->s + g->pos,
                                 g->len - g->pos, cp);

    if (n == 0) {
        return ebnf_fail(g, "invalid UTF-8");
    }

    g->pos += n;
    return 0;
}


static int
ebnf_hex(ebnf_t *g, int digits, uint32_t *cp)
{
    uint32_t  v = 0;

    for (int i = 0; i < digits; i++) {
        int  d = kimi_hex_digit(g->pos < g->len ? g->s[g->pos] : -1);

        if (d < 0) {
            return ebnf_fail(g, "an escape needs %d hex digits", digits);
        }

        v = v << 4 | (uint32_t) d;
        g->pos++;
    }

    if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) {
        return ebnf_fail(g, "escape U+%X is not a character", v);
    }

    *cp = v;
    return 0;
}


/* a character of a string or class, escapes decoded */
static int
ebnf_char(ebnf_t *g, uint32_t *cp)
{
    char  c;

    if (g->pos >= g->len) {
        return ebnf_fail(g, "unterminated string or class");
    }

    if (g->s[g->pos] != '\\') {
        return ebnf_utf8(g, cp);
    }

    g->pos++;
    c = g->pos < g->len ? g->s[g->pos++] : '\0';

    switch (c) {
    case 'n': *cp = '\n'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 't': *cp = '\t'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    case '0': *cp = 0; return 0;
    case 'x': return ebnf_hex(g, 2, cp);
    case 'u': return ebnf_hex(g, 4, cp);
    case 'U': return ebnf_hex(g, 8, cp);
    case '\\': case '"': case '\'': case '[': case ']': case '-': case '^':
        *cp = (uint32_t) c;
        return 0;
    default:
        g->pos--;
        return ebnf_fail(g, "unknown escape \\%c", c ? c : '?');
    }
}


/* cp as regex text; in_class: inside [...] */
static void
ebnf_emit_cp(ebnf_buf_t *b, uint32_t cp, int in_class)
{
    static const char  *meta = ".^$|?*+()[]{}\\";
    static const char  *cmeta = "\\]-^[";
    char                t[8];

    if (cp < 0x20 || cp == 0x7f) {
        snprintf(t, sizeof(t), "\\x%02X", cp);
        ebnf_puts(b, t);
        return;
    }

    if (cp < 0x80) {
        if (strchr(in_class ? cmeta : meta, (int) cp) != NULL) {
            ebnf_put(b, "\\", 1);
        }
        t[0] = (char) cp;
        ebnf_put(b, t, 1);
        return;
    }

    if (cp < 0x800) {
        t[0] = (char) (0xc0 | cp >> 6);
        t[1] = (char) (0x80 | (cp & 0x3f));
        ebnf_put(b, t, 2);

    } else if (cp < 0x10000) {
        t[0] = (char) (0xe0 | cp >> 12);
        t[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
        t[2] = (char) (0x80 | (cp & 0x3f));
        ebnf_put(b, t, 3);

    } else {
        t[0] = (char) (0xf0 | cp >> 18);
        t[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
        t[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
        t[3] = (char) (0x80 | (cp & 0x3f));
        ebnf_put(b, t, 4);
    }
}


static int ebnf_alternatives(ebnf_t *g, ebnf_buf_t *out);


/* "string" or 'string' */
static int
ebnf_string(ebnf_t *g, ebnf_buf_t *out)
{
    char      q = g->s[g->pos++];
    uint32_t  cp;
    size_t    start = out->len;

    ebnf_puts(out, "(?:");

    while (g->pos < g->len && g->s[g->pos] != q) {
        if (ebnf_char(g, &cp) != 0) {
            return -1;
        }
        ebnf_emit_cp(out, cp, 0);
    }

    if (g->pos >= g->len) {
        return ebnf_fail(g, "unterminated string");
    }

    g->pos++;

    if (out->len == start + 3) {
        /* "": the empty string */
        ebnf_puts(out, "a{0}");
    }

    ebnf_puts(out, ")");
    return 0;
}


/* [class] or [^class] */
static int
ebnf_class(ebnf_t *g, ebnf_buf_t *out)
{
    uint32_t  lo, hi;
    int       n = 0;

    g->pos++;
    ebnf_puts(out, "[");

    if (g->pos < g->len && g->s[g->pos] == '^') {
        g->pos++;
        ebnf_puts(out, "^");
    }

    while (g->pos < g->len && g->s[g->pos] != ']') {
        if (ebnf_char(g, &lo) != 0) {
            return -1;
        }

        hi = lo;

        if (g->pos + 1 < g->len && g->s[g->pos] == '-'
            && g->s[g->pos + 1] != ']')
        {
            g->pos++;
            if (ebnf_char(g, &hi) != 0) {
                return -1;
            }
            if (hi < lo) {
                return ebnf_fail(g, "class range out of order");
            }
        }

        ebnf_emit_cp(out, lo, 1);
        if (hi != lo) {
            ebnf_puts(out, "-");
            ebnf_emit_cp(out, hi, 1);
        }
        n++;
    }

    if (g->pos >= g->len) {
        return ebnf_fail(g, "unterminated character class");
    }

    if (n == 0) {
        return ebnf_fail(g, "empty character class");
    }

    g->pos++;
    ebnf_puts(out, "]");
    return 0;
}


static int
ebnf_number(ebnf_t *g, int *v)
{
    size_t  start = g->pos;
    long    n = 0;

    while (g->pos < g->len && g->s[g->pos] >= '0' && g->s[g->pos] <= '9') {
        n = n * 10 + (g->s[g->pos++] - '0');
        if (n > 256) {
            return ebnf_fail(g, "repetition counts go up to 256");
        }
    }

    if (g->pos == start) {
        return ebnf_fail(g, "a repetition {m,n} needs numbers");
    }

    *v = (int) n;
    return 0;
}


/* postfix * + ? {m} {m,} {m,n} on the element text elem[0..) of out */
static int
ebnf_postfix(ebnf_t *g, ebnf_buf_t *out, size_t elem)
{
    for ( ;; ) {
        char  q[32];
        int   m, n = -1;

        ebnf_skip(g);
        if (g->pos >= g->len) {
            return 0;
        }

        switch (g->s[g->pos]) {
        case '*': case '+': case '?':
            q[0] = g->s[g->pos++];
            q[1] = '\0';
            break;

        case '{':
            g->pos++;
            ebnf_skip(g);
            if (ebnf_number(g, &m) != 0) {
                return -1;
            }
            ebnf_skip(g);
            if (g->pos < g->len && g->s[g->pos] == ',') {
                g->pos++;
                ebnf_skip(g);
                if (g->pos < g->len && g->s[g->pos] != '}'
                    && ebnf_number(g, &n) != 0)
                {
                    return -1;
                }
                ebnf_skip(g);
                if (n >= 0 && n < m) {
                    return ebnf_fail(g, "repetition {%d,%d} out of order", m,
                                     n);
                }
                if (n < 0) {
                    snprintf(q, sizeof(q), "{%d,}", m);
                } else {
                    snprintf(q, sizeof(q), "{%d,%d}", m, n);
                }
            } else {
                snprintf(q, sizeof(q), "{%d}", m);
            }
            if (g->pos >= g->len || g->s[g->pos] != '}') {
                return ebnf_fail(g, "a repetition needs its closing }");
            }
            g->pos++;
            break;

        default:
            return 0;
        }

        /* wrap the element so the quantifier applies to all of it */
        {
            ebnf_buf_t  tmp = { 0 };

            ebnf_puts(&tmp, "(?:");
            ebnf_put(&tmp, out->p + elem, out->len - elem);
            ebnf_puts(&tmp, ")");
            ebnf_puts(&tmp, q);

            out->len = elem;
            if (!tmp.failed) {
                ebnf_put(out, tmp.p, tmp.len);
            } else {
                out->failed = 1;
            }
            free(tmp.p);
        }
    }
}


/* elements until | ) end or the next rule */
static int
ebnf_sequence(ebnf_t *g, ebnf_buf_t *out)
{
    int  n = 0;

    for ( ;; ) {
        size_t  elem;
        char    c;

        ebnf_skip(g);
        if (g->pos >= g->len) {
            break;
        }

        c = g->s[g->pos];
        if (c == '|' || c == ')' || ebnf_at_rule_start(g)) {
            break;
        }

        elem = out->len;

        if (c == '"' || c == '\'') {
            if (ebnf_string(g, out) != 0) {
                return -1;
            }

        } else if (c == '[') {
            if (ebnf_class(g, out) != 0) {
                return -1;
            }

        } else if (c == '.') {
            g->pos++;
            ebnf_puts(out, "(?:.|\\n)");

        } else if (c == '(') {
            g->pos++;
            if (++g->depth > EBNF_MAX_DEPTH) {
                return ebnf_fail(g, "groups nested deeper than %d",
                                 EBNF_MAX_DEPTH);
            }
            ebnf_puts(out, "(?:");
            if (ebnf_alternatives(g, out) != 0) {
                return -1;
            }
            ebnf_skip(g);
            if (g->pos >= g->len || g->s[g->pos] != ')') {
                return ebnf_fail(g, "a group needs its closing )");
            }
            g->pos++;
            g->depth--;
            ebnf_puts(out, ")");

        } else if (ebnf_name_char(c)) {
            size_t  start = g->pos;

            while (g->pos < g->len && ebnf_name_char(g->s[g->pos])) {
                g->pos++;
            }
            if (g->pos - start >= EBNF_MAX_NAME) {
                return ebnf_fail(g, "a rule name longer than %d bytes",
                                 EBNF_MAX_NAME - 1);
            }
            ebnf_put(out, "\x01", 1);
            ebnf_put(out, g->s + start, g->pos - start);
            ebnf_put(out, "\x02", 1);

        } else {
            return ebnf_fail(g, "unexpected '%c'", c);
        }

        if (ebnf_postfix(g, out, elem) != 0) {
            return -1;
        }
        n++;
    }

    if (n == 0) {
        /* an empty alternative matches the empty string */
        ebnf_puts(out, "(?:a{0})");
    }

    return 0;
}


static int
ebnf_alternatives(ebnf_t *g, ebnf_buf_t *out)
{
    for ( ;; ) {
        if (ebnf_sequence(g, out) != 0) {
            return -1;
        }

        ebnf_skip(g);
        if (g->pos < g->len && g->s[g->pos] == '|') {
            g->pos++;
            ebnf_puts(out, "|");
            continue;
        }

        return 0;
    }
}


static ebnf_rule_t *
ebnf_find(ebnf_t *g, const char *name, size_t n)
{
    for (int i = 0; i < g->n_rules; i++) {
        if (strlen(g->rules[i].name) == n
            && memcmp(g->rules[i].name, name, n) == 0)
        {
            return &g->rules[i];
        }
    }

    return NULL;
}


static int
ebnf_rules(ebnf_t *g)
{
    for ( ;; ) {
        ebnf_rule_t  *r;
        size_t        start;

        ebnf_skip(g);
        if (g->pos >= g->len) {
            return 0;
        }

        start = g->pos;
        while (g->pos < g->len && ebnf_name_char(g->s[g->pos])) {
            g->pos++;
        }

        if (g->pos == start) {
            return ebnf_fail(g, "expected a rule name");
        }

        if (g->pos - start >= EBNF_MAX_NAME) {
            return ebnf_fail(g, "a rule name longer than %d bytes",
                             EBNF_MAX_NAME - 1);
        }

        if (ebnf_find(g, g->s + start, g->pos - start) != NULL) {
            return ebnf_fail(g, "rule \"%.*s\" is defined twice",
                             (int) (g->pos - start), g->s + start);
        }

        if (g->n_rules == EBNF_MAX_RULES) {
            return ebnf_fail(g, "more than %d rules", EBNF_MAX_RULES);
        }

        r = &g->rules[g->n_rules++];
        memcpy(r->name, g->s + start, g->pos - start);
        r->name[g->pos - start] = '\0';

        ebnf_skip(g);
        if (g->len - g->pos < 3 || memcmp(g->s + g->pos, "::=", 3) != 0) {
            return ebnf_fail(g, "expected ::= after the rule name \"%s\""
                             " (GBNF: name ::= alternatives)", r->name);
        }

        g->pos += 3;
        if (ebnf_alternatives(g, &r->body) != 0) {
            return -1;
        }

        ebnf_skip(g);
        if (g->pos < g->len && !ebnf_at_rule_start(g)) {
            return ebnf_fail(g, "unexpected '%c'", g->s[g->pos]);
        }

        if (r->body.failed) {
            return ebnf_fail(g, "the grammar is too large");
        }
    }
}


/* r's body with every reference expanded; path: the rules under way */
static int
ebnf_expand(ebnf_t *g, ebnf_rule_t *r, char *path, size_t path_len)
{
    ebnf_buf_t  out = { 0 };
    size_t      n = strlen(path);

    if (r->expanded != NULL) {
        return 0;
    }

    if (r->visiting) {
        snprintf(g->msg, g->msg_len, "grammar rule \"%s\" refers back to "
                 "itself (%s -> %s): only grammars without recursion (a "
                 "regular language) can be enforced", r->name, path,
                 r->name);
        g->failed = 1;
        g->cycle = 1;
        return -1;
    }

    r->visiting = 1;
    snprintf(path + n, path_len - n, "%s%s", n ? " -> " : "", r->name);

    for (size_t i = 0; i < r->body.len; i++) {
        char          c = r->body.p[i];
        size_t        j;
        ebnf_rule_t  *ref;

        if (c != EBNF_REF_OPEN) {
            ebnf_put(&out, &c, 1);
            continue;
        }

        for (j = i + 1; j < r->body.len && r->body.p[j] != EBNF_REF_CLOSE; j++) {
            /* the name */
        }

        ref = ebnf_find(g, r->body.p + i + 1, j - i - 1);
        if (ref == NULL) {
            snprintf(g->msg, g->msg_len, "grammar rule \"%s\" refers to "
                     "\"%.*s\", which is not defined", r->name,
                     (int) (j - i - 1), r->body.p + i + 1);
            g->failed = 1;
            free(out.p);
            return -1;
        }

        if (ebnf_expand(g, ref, path, path_len) != 0) {
            free(out.p);
            return -1;
        }

        ebnf_puts(&out, "(?:");
        ebnf_put(&out, ref->expanded, ref->expanded_len);
        ebnf_puts(&out, ")");
        i = j;
    }

    path[n] = '\0';
    r->visiting = 0;

    if (out.failed) {
        free(out.p);
        snprintf(g->msg, g->msg_len, "the grammar expands to more than %d "
                 "bytes of pattern", EBNF_MAX_OUT);
        g->failed = 1;
        return -1;
    }

    r->expanded = out.p != NULL ? out.p : calloc(1, 1);
    r->expanded_len = out.len;
    return r->expanded != NULL ? 0 : -1;
}


/* g over grammar[0..len), its rules parsed: 0, or -1 with a message
 * (ebnf_release in both cases) */
static int
ebnf_parse(ebnf_t *g, const char *grammar, size_t len, char *msg,
    size_t msg_len)
{
    memset(g, 0, sizeof(*g));
    g->s = grammar;
    g->len = len;
    g->msg = msg;
    g->msg_len = msg_len;
    g->rules = calloc(EBNF_MAX_RULES, sizeof(ebnf_rule_t));

    if (g->rules == NULL) {
        snprintf(msg, msg_len, "out of memory");
        return -1;
    }

    if (memchr(grammar, '\0', len) != NULL) {
        snprintf(msg, msg_len, "the grammar contains a NUL byte");
        return -1;
    }

    return ebnf_rules(g);
}


static void
ebnf_release(ebnf_t *g)
{
    for (int i = 0; g->rules != NULL && i < g->n_rules; i++) {
        free(g->rules[i].body.p);
        free(g->rules[i].expanded);
    }
    free(g->rules);
}


int
kimi_ebnf_to_regex(const char *grammar, size_t len, char **pattern,
    size_t *plen, char *msg, size_t msg_len)
{
    ebnf_t        g;
    ebnf_rule_t  *root;
    char          path[1024] = "";
    int           rc = -1;

    *pattern = NULL;
    *plen = 0;

    if (ebnf_parse(&g, grammar, len, msg, msg_len) != 0) {
        goto done;
    }

    root = ebnf_find(&g, "root", 4);
    if (root == NULL) {
        snprintf(msg, msg_len, "the grammar has no \"root\" rule");
        goto done;
    }

    if (ebnf_expand(&g, root, path, sizeof(path)) != 0) {
        rc = g.cycle ? -2 : -1;
        goto done;
    }

    *pattern = root->expanded;
    *plen = root->expanded_len;
    root->expanded = NULL;
    rc = 0;

done:

    ebnf_release(&g);
    return rc;
}


/* 0 if every reference in g's rules names one of its rules, else -1 with
 * the message the regex path gives */
static int
ebnf_check_refs(ebnf_t *g, char *msg, size_t msg_len)
{
    for (int i = 0; i < g->n_rules; i++) {
        ebnf_rule_t  *r = &g->rules[i];

        for (size_t k = 0; k < r->body.len; k++) {
            size_t  j;

            if (r->body.p[k] != EBNF_REF_OPEN) {
                continue;
            }
            for (j = k + 1; j < r->body.len && r->body.p[j] != EBNF_REF_CLOSE; j++) {
                /* the name */
            }
            if (ebnf_find(g, r->body.p + k + 1, j - k - 1) == NULL) {
                snprintf(msg, msg_len, "grammar rule \"%s\" refers to \"%.*s\","
                         " which is not defined", r->name, (int) (j - k - 1),
                         r->body.p + k + 1);
                return -1;
            }
            k = j;
        }
    }

    return 0;
}


/* Rule bodies (patterns with call markers) -> a pruned grammar program;
 * shown[i]: rule i as a message names it (a left recursion) */
static int
ebnf_program(const char *const *bodies, const size_t *lens,
    const char *const *names, const char *const *shown, int n_rules, int root,
    int32_t **prog, size_t *n, char *msg, size_t msg_len)
{
    int  bad = -1;

    if (kimi_regex_rtn_compile(bodies, lens, names, n_rules, root, prog, n,
                               msg, msg_len) != 0)
    {
        return -1;
    }

    if (kimi_gram_prune(*prog, *n, msg, msg_len) == 0) {
        return 0;
    }

    /* name the rule of a left recursion */
    if (sscanf(msg, "rule %d is left-recursive", &bad) == 1
        && bad >= 0 && bad < n_rules)
    {
        snprintf(msg, msg_len, "grammar rule \"%s\" is left-recursive (it"
                 " can refer to itself before any text): write it as a"
                 " repetition, e.g. a ::= b (\"+\" b)*", shown[bad]);
    }
    free(*prog);
    *prog = NULL;
    *n = 0;
    return -1;
}


int
kimi_ebnf_to_grammar(const char *grammar, size_t len, int32_t **prog,
    size_t *n, char *msg, size_t msg_len)
{
    ebnf_t        g;
    const char  **bodies = NULL, **names = NULL;
    size_t       *lens = NULL;
    int           rc = -1, root = -1;

    *prog = NULL;
    *n = 0;

    if (ebnf_parse(&g, grammar, len, msg, msg_len) != 0) {
        goto done;
    }

    bodies = calloc(g.n_rules, sizeof(*bodies));
    names = calloc(g.n_rules, sizeof(*names));
    lens = calloc(g.n_rules, sizeof(*lens));
    if (g.n_rules == 0 || bodies == NULL || names == NULL || lens == NULL) {
        snprintf(msg, msg_len, g.n_rules ? "out of memory"
                                         : "the grammar has no rules");
        goto done;
    }
    if (ebnf_check_refs(&g, msg, msg_len) != 0) {
        goto done;
    }

    for (int i = 0; i < g.n_rules; i++) {
        ebnf_rule_t  *r = &g.rules[i];

        bodies[i] = r->body.p != NULL ? r->body.p : "";
        lens[i] = r->body.len;
        names[i] = r->name;
        if (strcmp(r->name, "root") == 0) {
            root = i;
        }
    }

    if (root < 0) {
        snprintf(msg, msg_len, "the grammar has no \"root\" rule");
        goto done;
    }

    rc = ebnf_program(bodies, lens, names, names, g.n_rules, root, prog, n,
                      msg, msg_len);

done:

    ebnf_release(&g);
    free(bodies);
    free(names);
    free(lens);
    return rc;
}


int
kimi_ebnf_union_to_grammar(const kimi_ebnf_alt_t *alts, int n_alts,
    int32_t **prog, size_t *n, char *msg, size_t msg_len)
{
    ebnf_t       *g = calloc(n_alts > 0 ? n_alts : 1, sizeof(ebnf_t));
    const char  **bodies = NULL, **names = NULL, **shown = NULL;
    char        **own = NULL;
    size_t       *lens = NULL;
    ebnf_buf_t    rb = { 0 };
    int           rc = -1, n_rules = 1, parsed = 0, k;
    char          name[EBNF_MAX_NAME + 16];

    *prog = NULL;
    *n = 0;

    if (g == NULL || n_alts < 1) {
        snprintf(msg, msg_len, n_alts < 1 ? "no alternatives" : "out of memory");
        goto done;
    }

    /* every grammar parsed and checked; its rules are renamed apart ("1:e"
     * for rule e of alternative 1: no rule name holds a colon) */
    for (parsed = 0; parsed < n_alts; parsed++) {
        char  m[160];

        if (!alts[parsed].grammar) {
            continue;
        }
        if (ebnf_parse(&g[parsed], alts[parsed].text, alts[parsed].len, m,
                       sizeof(m)) != 0
            || ebnf_check_refs(&g[parsed], m, sizeof(m)) != 0)
        {
            snprintf(msg, msg_len, "alternative %d: %s", parsed, m);
            parsed++;
            goto done;
        }
        if (ebnf_find(&g[parsed], "root", 4) == NULL) {
            snprintf(msg, msg_len, "alternative %d: the grammar has no"
                     " \"root\" rule", parsed);
            parsed++;
            goto done;
        }
        n_rules += g[parsed].n_rules;
    }

    bodies = calloc(n_rules, sizeof(*bodies));
    names = calloc(n_rules, sizeof(*names));
    shown = calloc(n_rules, sizeof(*shown));
    own = calloc(n_rules, sizeof(*own));
    lens = calloc(n_rules, sizeof(*lens));
    if (bodies == NULL || names == NULL || shown == NULL || own == NULL
        || lens == NULL)
    {
        snprintf(msg, msg_len, "out of memory");
        goto done;
    }

    /* rule 0, the root: (?:alternative 0)|(?:alternative 1)|... */
    k = 1;
    for (int j = 0; j < n_alts; j++) {
        ebnf_puts(&rb, j ? "|(?:" : "(?:");
        if (!alts[j].grammar) {
            if (memchr(alts[j].text, EBNF_REF_OPEN, alts[j].len) != NULL
                || memchr(alts[j].text, EBNF_REF_CLOSE, alts[j].len) != NULL)
            {
                snprintf(msg, msg_len, "alternative %d: the bytes \\x01 and"
                         " \\x02 cannot be in a pattern beside a grammar", j);
                goto done;
            }
            ebnf_put(&rb, alts[j].text, alts[j].len);
            ebnf_puts(&rb, ")");
            continue;
        }
        snprintf(name, sizeof(name), "%c%d:root%c", EBNF_REF_OPEN, j,
                 EBNF_REF_CLOSE);
        ebnf_puts(&rb, name);
        ebnf_puts(&rb, ")");

        /* its rules, each reference renamed as its rule is */
        for (int i = 0; i < g[j].n_rules; i++, k++) {
            ebnf_rule_t  *r = &g[j].rules[i];
            ebnf_buf_t    body = { 0 };

            for (size_t c = 0; c < r->body.len; c++) {
                ebnf_put(&body, r->body.p + c, 1);
                if (r->body.p[c] == EBNF_REF_OPEN) {
                    snprintf(name, sizeof(name), "%d:", j);
                    ebnf_puts(&body, name);
                }
            }
            snprintf(name, sizeof(name), "%d:%s", j, r->name);
            own[k] = body.p;
            bodies[k] = body.p != NULL ? body.p : "";
            lens[k] = body.len;
            names[k] = strdup(name);
            shown[k] = r->name;
            if (body.failed || names[k] == NULL) {
                snprintf(msg, msg_len, "out of memory");
                goto done;
            }
        }
    }
    if (rb.failed) {
        snprintf(msg, msg_len, "out of memory");
        goto done;
    }
    bodies[0] = rb.p;
    lens[0] = rb.len;
    names[0] = "root";
    shown[0] = "root";

    rc = ebnf_program(bodies, lens, names, shown, n_rules, 0, prog, n, msg,
                      msg_len);

done:

    for (int j = 0; j < parsed && g != NULL; j++) {
        if (alts[j].grammar) {
            ebnf_release(&g[j]);
        }
    }
    for (int i = 1; own != NULL && names != NULL && i < n_rules; i++) {
        free(own[i]);
        free((char *) names[i]);
    }
    free(rb.p);
    free(g);
    free(bodies);
    free(names);
    free(shown);
    free(own);
    free(lens);
    return rc;
}
