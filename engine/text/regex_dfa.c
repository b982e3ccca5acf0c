/*
 * Regex -> byte-level DFA for guided_regex (see regex_dfa.h).
 *
 * Owns:   the parser (recursive descent straight into a Thompson NFA over
 *         byte ranges; a quantified atom is parsed again for each copy it
 *         needs), the subset construction over byte classes, the pruning
 *         of states that can no longer reach a match, and the program's
 *         layout and check.
 * Never:  backtracks at run time, or keeps a state from which no match is
 *         reachable (so the sampler never steers into a dead end).
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regex_dfa.h"
#include "text_internal.h"

#define NFA_MAX     200000         /* NFA states: bounds {m,n} blow-ups */

/* the grammar program's kinds (regex_dfa.h) are the NFA's own */
enum { N_EPS = KIMI_GRAM_EPS, N_RANGE = KIMI_GRAM_RANGE,
       N_MATCH = KIMI_GRAM_END, N_CALL = KIMI_GRAM_CALL };

typedef struct {
    uint8_t   kind, lo, hi;
    int32_t   out, out2;           /* -1: none */
} nfa_state_t;

typedef struct {
    int32_t   s, e;                /* start, and an EPS end to link on */
} frag_t;

typedef struct {
    const unsigned char  *p;
    size_t                len, at;
    nfa_state_t          *st;
    size_t                n, cap;
    char                 *msg;
    size_t                msg_len;
    int                   failed;
    /* grammars (kimi_regex_rtn_compile): a rule reference in the text,
     * \x01 name \x02, is a call of the rule names[i] */
    const char *const    *names;
    int                   n_names;
} rx_t;


static int
rx_fail(rx_t *rx, const char *fmt, ...)
{
    va_list  ap;
    int      k;

    if (!rx->failed) {
        va_start(ap, fmt);
        k = vsnprintf(rx->msg, rx->msg_len, fmt, ap);
        va_end(ap);
        if (k >= 0 && (size_t) k < rx->msg_len) {
            snprintf(rx->msg + k, rx->msg_len - (size_t) k, " (at byte %zu)",
                     rx->at);
        }
        rx->failed = 1;
    }
    return -1;
}


static int32_t
rx_state(rx_t *rx, int kind, int lo, int hi)
{
    nfa_state_t  *st;

    if (rx->n == rx->cap) {
        if (rx->cap >= NFA_MAX) {
            rx_fail(rx, "the pattern is too large (repeats expand past %d"
                    " states)", NFA_MAX);
            return -1;
        }
        rx->cap = rx->cap ? rx->cap * 2 : 256;
        st = realloc(rx->st, rx->cap * sizeof(*st));
        if (st == NULL) {
            rx_fail(rx, "out of memory");
            return -1;
        }
        rx->st = st;
    }
    rx->st[rx->n] = (nfa_state_t) { (uint8_t) kind, (uint8_t) lo,
                                    (uint8_t) hi, -1, -1 };
    return (int32_t) rx->n++;
}


static int
rx_eps(rx_t *rx, frag_t *f)
{
    f->s = f->e = rx_state(rx, N_EPS, 0, 0);
    return f->s < 0 ? -1 : 0;
}


/* links the EPS end e to t (a second link goes to out2) */
static void
rx_link(rx_t *rx, int32_t e, int32_t t)
{
    if (rx->st[e].out < 0) {
        rx->st[e].out = t;
    } else {
        rx->st[e].out2 = t;
    }
}


static int
rx_range(rx_t *rx, frag_t *f, int lo, int hi)
{
    int32_t  s = rx_state(rx, N_RANGE, lo, hi), e = rx_state(rx, N_EPS, 0, 0);

    if (s < 0 || e < 0) {
        return -1;
    }
    rx->st[s].out = e;
    f->s = s;
    f->e = e;
    return 0;
}


static void
rx_cat(rx_t *rx, frag_t *a, const frag_t *b)
{
    rx_link(rx, a->e, b->s);
    a->e = b->e;
}


static int
rx_alt(rx_t *rx, frag_t *a, const frag_t *b)
{
    int32_t  s = rx_state(rx, N_EPS, 0, 0), e = rx_state(rx, N_EPS, 0, 0);

    if (s < 0 || e < 0) {
        return -1;
    }
    rx->st[s].out = a->s;
    rx->st[s].out2 = b->s;
    rx_link(rx, a->e, e);
    rx_link(rx, b->e, e);
    a->s = s;
    a->e = e;
    return 0;
}


/* f* */
static int
rx_star(rx_t *rx, frag_t *f)
{
    int32_t  s = rx_state(rx, N_EPS, 0, 0), e = rx_state(rx, N_EPS, 0, 0);

    if (s < 0 || e < 0) {
        return -1;
    }
    rx->st[s].out = f->s;
    rx->st[s].out2 = e;
    rx_link(rx, f->e, f->s);
    rx_link(rx, f->e, e);
    f->s = s;
    f->e = e;
    return 0;
}


/* f? */
static int
rx_opt(rx_t *rx, frag_t *f)
{
    frag_t  h;

    return rx_eps(rx, &h) != 0 ? -1 : rx_alt(rx, f, &h);
}


/* a byte sequence as a fragment */
static int
rx_bytes(rx_t *rx, frag_t *f, const unsigned char *b, size_t n)
{
    frag_t  g;

    if (rx_eps(rx, f) != 0) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (rx_range(rx, &g, b[i], b[i]) != 0) {
            return -1;
        }
        rx_cat(rx, f, &g);
    }
    return 0;
}


/* the fragment of one range sequence: r[0..n) pairs of lo, hi */
static int
rx_seq(rx_t *rx, frag_t *f, const int *r, int n)
{
    frag_t  g;

    if (rx_eps(rx, f) != 0) {
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (rx_range(rx, &g, r[2 * i], r[2 * i + 1]) != 0) {
            return -1;
        }
        rx_cat(rx, f, &g);
    }
    return 0;
}


/* f = f | g (or g, when f holds nothing yet: *have 0) */
static int
rx_add_alt(rx_t *rx, frag_t *f, const frag_t *g, int *have)
{
    if (*have) {
        return rx_alt(rx, f, g);
    }
    *f = *g;
    *have = 1;
    return 0;
}


/* f |= each run of the ASCII set[0..128) as one byte range */
static int
rx_ascii_alts(rx_t *rx, frag_t *f, const uint8_t *set, int *have)
{
    frag_t  g;
    int     c, d;

    for (c = 0; c < 128; c = d) {
        if (!set[c]) {
            d = c + 1;
            continue;
        }
        for (d = c; d < 128 && set[d]; d++) { /* void */ }
        if (rx_range(rx, &g, c, d - 1) != 0 || rx_add_alt(rx, f, &g, have) != 0) {
            return -1;
        }
    }
    return 0;
}


static void rx_put_utf8(uint32_t c, unsigned char *b, size_t *n);


/* f |= every character of the code points [lo, hi] (surrogates skipped),
 * as byte-range sequences: split so each piece has one UTF-8 length and
 * varies only in whole trailing-byte spans (Thompson's / RE2's method) */
static int
rx_cp_range(rx_t *rx, frag_t *f, uint32_t lo, uint32_t hi, int *have)
{
    static const uint32_t  lim[] = { 0x7f, 0x7ff, 0xffff };
    unsigned char          a[4], z[4];
    int                    r[8];
    size_t                 n, nz;
    frag_t                 g;

    if (lo > hi) {
        return 0;
    }
    if (lo <= 0xdfff && hi >= 0xd800) {
        return rx_cp_range(rx, f, lo, 0xd7ff < hi ? 0xd7ff : hi, have) != 0
               || (hi > 0xdfff
                   && rx_cp_range(rx, f, 0xe000 > lo ? 0xe000 : lo, hi, have) != 0)
               ? -1 : 0;
    }
    for (int i = 0; i < 3; i++) {
        if (lo <= lim[i] && hi > lim[i]) {
            return rx_cp_range(rx, f, lo, lim[i], have) != 0
                   || rx_cp_range(rx, f, lim[i] + 1, hi, have) != 0 ? -1 : 0;
        }
    }
    rx_put_utf8(lo, a, &n);
    for (size_t i = 1; i < n; i++) {
        uint32_t  m = (1u << (6 * i)) - 1;

        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                return rx_cp_range(rx, f, lo, lo | m, have) != 0
                       || rx_cp_range(rx, f, (lo | m) + 1, hi, have) != 0 ? -1 : 0;
            }
            if ((hi & m) != m) {
                return rx_cp_range(rx, f, lo, (hi & ~m) - 1, have) != 0
                       || rx_cp_range(rx, f, hi & ~m, hi, have) != 0 ? -1 : 0;
            }
        }
    }
    rx_put_utf8(hi, z, &nz);
    for (size_t i = 0; i < n; i++) {
        r[2 * i] = a[i];
        r[2 * i + 1] = z[i];
    }
    if (rx_seq(rx, &g, r, (int) n) != 0 || rx_add_alt(rx, f, &g, have) != 0) {
        return -1;
    }
    return 0;
}


/* Any one character (valid UTF-8, RFC 3629) whose ASCII part is the set
 * ascii[0..128) (1: allowed); non-ASCII characters always. */
static int
rx_any(rx_t *rx, frag_t *f, const uint8_t *ascii)
{
    int  have = 0;

    if (rx_ascii_alts(rx, f, ascii, &have) != 0
        || rx_cp_range(rx, f, 0x80, 0x10ffff, &have) != 0)
    {
        return -1;
    }
    return 0;
}


static void
rx_put_utf8(uint32_t c, unsigned char *b, size_t *n)
{
    if (c < 0x80) {
        b[0] = (unsigned char) c;
        *n = 1;
    } else if (c < 0x800) {
        b[0] = (unsigned char) (0xc0 | (c >> 6));
        b[1] = (unsigned char) (0x80 | (c & 0x3f));
        *n = 2;
    } else if (c < 0x10000) {
        b[0] = (unsigned char) (0xe0 | (c >> 12));
        b[1] = (unsigned char) (0x80 | ((c >> 6) & 0x3f));
        b[2] = (unsigned char) (0x80 | (c & 0x3f));
        *n = 3;
    } else {
        b[0] = (unsigned char) (0xf0 | (c >> 18));
        b[1] = (unsigned char) (0x80 | ((c >> 12) & 0x3f));
        b[2] = (unsigned char) (0x80 | ((c >> 6) & 0x3f));
        b[3] = (unsigned char) (0x80 | (c & 0x3f));
        *n = 4;
    }
}


/* One UTF-8 character of the pattern at rx->at: its code point. */
static int
rx_utf8(rx_t *rx, uint32_t *cp)
{
    size_t  n = kimi_utf8_decode(rx->p + rx->at, rx->len - rx->at, cp);

    if (n == 0) {
        return rx_fail(rx, "the pattern is not valid UTF-8");
    }
    rx->at += n;
    return 0;
}


static int
rx_hex(rx_t *rx, int digits, uint32_t *cp)
{
    uint32_t  c = 0;

    for (int i = 0; i < digits; i++, rx->at++) {
        int  h = kimi_hex_digit(rx->at < rx->len ? rx->p[rx->at] : -1);

        if (h < 0) {
            return rx_fail(rx, "\\%c needs %d hex digits", digits == 2 ? 'x'
                           : 'u', digits);
        }
        c = c * 16 + (uint32_t) h;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
        return rx_fail(rx, "\\u%04X is a surrogate, not a character", c);
    }
    *cp = c;
    return 0;
}


static void
rx_set_class(uint8_t *set, int which)
{
    for (int c = 0; c < 128; c++) {
        int  in = which == 'd' ? (c >= '0' && c <= '9')
                  : which == 's' ? (c == ' ' || (c >= '\t' && c <= '\r'))
                  : ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
                     || (c >= 'A' && c <= 'Z') || c == '_');
        set[c] |= (uint8_t) in;
    }
}


/*
 * An escape after '\\' (rx->at past it).  Sets *cp for a character, or
 * *cls to 'd' 'w' 's' (or upper case: negated) for a class escape.
 */
static int
rx_escape(rx_t *rx, uint32_t *cp, int *cls)
{
    int  ch;

    *cls = 0;
    if (rx->at >= rx->len) {
        return rx_fail(rx, "the pattern ends in a lone \\");
    }
    ch = rx->p[rx->at++];
    switch (ch) {
    case 'd': case 'w': case 's': case 'D': case 'W': case 'S':
        *cls = ch;
        return 0;
    case 'n': *cp = '\n'; return 0;
    case 't': *cp = '\t'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    case '0': *cp = 0; return 0;
    case 'x': return rx_hex(rx, 2, cp);
    case 'u': return rx_hex(rx, 4, cp);
    case 'b': case 'B': case 'A': case 'Z': case 'z': case 'G':
        return rx_fail(rx, "\\%c (an anchor or word boundary) is not"
                       " supported", ch);
    default:
        break;
    }
    if (ch >= '1' && ch <= '9') {
        return rx_fail(rx, "backreferences (\\%c) are not supported", ch);
    }
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
        return rx_fail(rx, "unknown escape \\%c", ch);
    }
    rx->at--;
    return rx_utf8(rx, cp);                   /* escaped punctuation, or any */
}


/* [...] at rx->at (past '[') */
static int
cmp_range(const void *a, const void *b)
{
    uint32_t  x = ((const uint32_t *) a)[0], y = ((const uint32_t *) b)[0];

    return (x > y) - (x < y);
}


static int
rx_class(rx_t *rx, frag_t *f)
{
    uint8_t        set[128] = { 0 };
    uint32_t       wide[64][2], cp, hi;   /* non-ASCII members: ranges */
    size_t         n_wide = 0;
    int            neg = 0, first = 1, cls, have = 0;

    if (rx->at < rx->len && rx->p[rx->at] == '^') {
        neg = 1;
        rx->at++;
    }
    for (;;) {
        if (rx->at >= rx->len) {
            return rx_fail(rx, "unterminated character set");
        }
        if (rx->p[rx->at] == ']' && !first) {
            rx->at++;
            break;
        }
        first = 0;
        cls = 0;
        if (rx->p[rx->at] == '\\') {
            rx->at++;
            if (rx_escape(rx, &cp, &cls) != 0) {
                return -1;
            }
        } else if (rx->p[rx->at] == '[' && rx->at + 1 < rx->len
                   && rx->p[rx->at + 1] == ':')
        {
            return rx_fail(rx, "POSIX classes ([:name:]) are not supported");
        } else if (rx_utf8(rx, &cp) != 0) {
            return -1;
        }
        if (cls != 0) {
            if (cls < 'a') {
                return rx_fail(rx, "\\%c inside a character set is not"
                               " supported", cls);
            }
            rx_set_class(set, cls);
            continue;
        }
        /* a range? */
        if (rx->at + 1 < rx->len && rx->p[rx->at] == '-'
            && rx->p[rx->at + 1] != ']')
        {
            rx->at++;
            if (rx->p[rx->at] == '\\') {
                rx->at++;
                if (rx_escape(rx, &hi, &cls) != 0) {
                    return -1;
                }
                if (cls != 0) {
                    return rx_fail(rx, "a range cannot end in \\%c", cls);
                }
            } else if (rx_utf8(rx, &hi) != 0) {
                return -1;
            }
            if (hi < cp) {
                return rx_fail(rx, "bad character range (end before"
                               " start)");
            }
        } else {
            hi = cp;
        }
        for (uint32_t c = cp; c <= hi && c < 0x80; c++) {
            set[c] = 1;
        }
        if (hi >= 0x80) {
            if (n_wide == sizeof(wide) / sizeof(wide[0])) {
                return rx_fail(rx, "too many non-ASCII members in a set");
            }
            wide[n_wide][0] = cp < 0x80 ? 0x80 : cp;
            wide[n_wide++][1] = hi;
        }
    }

    /* the non-ASCII members sorted and merged; negated: their complement
     * over U+0080..U+10FFFF (surrogates never match either way) */
    qsort(wide, n_wide, sizeof(wide[0]), cmp_range);
    {
        size_t  k = 0;

        for (size_t i = 0; i < n_wide; i++) {
            if (k > 0 && wide[i][0] <= wide[k - 1][1] + 1) {
                if (wide[i][1] > wide[k - 1][1]) {
                    wide[k - 1][1] = wide[i][1];
                }
            } else {
                wide[k][0] = wide[i][0];
                wide[k++][1] = wide[i][1];
            }
        }
        n_wide = k;
    }
    if (neg) {
        uint32_t  next = 0x80;

        for (int c = 0; c < 128; c++) {
            set[c] = !set[c];
        }
        if (rx_ascii_alts(rx, f, set, &have) != 0) {
            return -1;
        }
        for (size_t i = 0; i < n_wide; i++) {
            if (wide[i][0] > next
                && rx_cp_range(rx, f, next, wide[i][0] - 1, &have) != 0)
            {
                return -1;
            }
            next = wide[i][1] + 1;
        }
        if (next <= 0x10ffff && rx_cp_range(rx, f, next, 0x10ffff, &have) != 0) {
            return -1;
        }
    } else {
        if (rx_ascii_alts(rx, f, set, &have) != 0) {
            return -1;
        }
        for (size_t i = 0; i < n_wide; i++) {
            if (rx_cp_range(rx, f, wide[i][0], wide[i][1], &have) != 0) {
                return -1;
            }
        }
    }
    if (!have) {
        return rx_fail(rx, "the character set matches nothing");
    }
    return 0;
}


static int rx_alternation(rx_t *rx, frag_t *f, int depth);


/* one atom at rx->at */
static int
rx_atom(rx_t *rx, frag_t *f, int depth)
{
    unsigned char  b[4];
    uint8_t        set[128];
    uint32_t       cp;
    size_t         n;
    int            ch = rx->p[rx->at], cls;

    if (ch == 0x01 && rx->names != NULL) {
        const unsigned char  *e = memchr(rx->p + rx->at, 0x02, rx->len - rx->at);
        size_t                k = e != NULL ? (size_t) (e - rx->p) - rx->at - 1 : 0;

        for (int i = 0; e != NULL && i < rx->n_names; i++) {
            if (strlen(rx->names[i]) == k
                && memcmp(rx->names[i], rx->p + rx->at + 1, k) == 0)
            {
                int32_t  c = rx_state(rx, N_CALL, i & 0xff, i >> 8);
                int32_t  t = rx_state(rx, N_EPS, 0, 0);

                if (c < 0 || t < 0) {
                    return -1;
                }
                rx->st[c].out = t;
                f->s = c;
                f->e = t;
                rx->at += k + 2;
                return 0;
            }
        }
        return rx_fail(rx, "a reference to an unknown rule");
    }

    switch (ch) {
    case '(':
        rx->at++;
        if (rx->at < rx->len && rx->p[rx->at] == '?') {
            const char  *q = (const char *) rx->p + rx->at + 1;
            size_t       left = rx->len - rx->at - 1;

            if (left >= 1 && q[0] == ':') {
                rx->at += 2;
            } else if (left >= 2 && (q[0] == 'P' || q[0] == '<')
                       && (q[0] == '<' ? q[1] != '=' && q[1] != '!'
                                       : q[1] == '<'))
            {
                const char  *gt = memchr(q, '>', left);

                if (gt == NULL) {
                    return rx_fail(rx, "unterminated group name");
                }
                rx->at += (size_t) (gt - q) + 2;
            } else if (left >= 1 && (q[0] == '=' || q[0] == '!'
                                     || q[0] == '<'))
            {
                return rx_fail(rx, "lookaround assertions are not"
                               " supported");
            } else {
                return rx_fail(rx, "this group kind ((?%c...) is not"
                               " supported", left ? q[0] : ' ');
            }
        }
        if (depth > 64) {
            return rx_fail(rx, "groups nest too deep");
        }
        if (rx_alternation(rx, f, depth + 1) != 0) {
            return -1;
        }
        if (rx->at >= rx->len || rx->p[rx->at] != ')') {
            return rx_fail(rx, "missing ) to close a group");
        }
        rx->at++;
        return 0;
    case ')':
        return rx_fail(rx, "unbalanced )");
    case '[':
        rx->at++;
        return rx_class(rx, f);
    case '.':
        rx->at++;
        memset(set, 1, sizeof(set));
        set['\n'] = 0;
        return rx_any(rx, f, set);
    case '*': case '+': case '?': case '{':
        return rx_fail(rx, "nothing to repeat before %c", ch);
    case '^':
        if (rx->at != 0) {
            return rx_fail(rx, "^ is only supported at the start");
        }
        rx->at++;
        return rx_eps(rx, f);
    case '$':
        if (rx->at + 1 != rx->len) {
            return rx_fail(rx, "$ is only supported at the end");
        }
        rx->at++;
        return rx_eps(rx, f);
    case '\\':
        rx->at++;
        if (rx_escape(rx, &cp, &cls) != 0) {
            return -1;
        }
        if (cls != 0) {
            memset(set, 0, sizeof(set));
            rx_set_class(set, cls | 0x20);
            if (cls < 'a') {
                for (int c = 0; c < 128; c++) {
                    set[c] = !set[c];
                }
                return rx_any(rx, f, set);
            }
            {
                int  have = 0;

                return rx_ascii_alts(rx, f, set, &have);
            }
        }
        break;
    default:
        if (rx_utf8(rx, &cp) != 0) {
            return -1;
        }
        break;
    }
    rx_put_utf8(cp, b, &n);
    return rx_bytes(rx, f, b, n);
}


static int
rx_int(rx_t *rx, int *v)
{
    int  n = 0, any = 0;

    while (rx->at < rx->len && rx->p[rx->at] >= '0' && rx->p[rx->at] <= '9') {
        n = n * 10 + (rx->p[rx->at++] - '0');
        any = 1;
        if (n > 100000) {
            n = 100000;
        }
    }
    *v = n;
    return any;
}


/* an atom and its quantifier: copies by parsing the atom again */
static int
rx_repeat(rx_t *rx, frag_t *f, int depth)
{
    size_t  atom_at = rx->at, end_at;
    int     lo, hi, ch;
    frag_t  g;

    if (rx_atom(rx, f, depth) != 0) {
        return -1;
    }
    if (rx->at >= rx->len) {
        return 0;
    }
    ch = rx->p[rx->at];
    if (ch == '*' || ch == '+' || ch == '?') {
        lo = ch == '+';
        hi = ch == '?' ? 1 : -1;
        rx->at++;
    } else if (ch == '{') {
        rx->at++;
        if (!rx_int(rx, &lo)) {
            return rx_fail(rx, "a { must start a {m}, {m,} or {m,n}"
                           " repeat");
        }
        hi = lo;
        if (rx->at < rx->len && rx->p[rx->at] == ',') {
            rx->at++;
            if (!rx_int(rx, &hi)) {
                hi = -1;
            }
        }
        if (rx->at >= rx->len || rx->p[rx->at] != '}') {
            return rx_fail(rx, "unterminated {m,n} repeat");
        }
        rx->at++;
        if (hi >= 0 && hi < lo) {
            return rx_fail(rx, "bad repeat {%d,%d} (max below min)", lo, hi);
        }
        if (lo > KIMI_REGEX_MAX_REPEAT || hi > KIMI_REGEX_MAX_REPEAT) {
            return rx_fail(rx, "repeat counts above %d are not supported",
                           KIMI_REGEX_MAX_REPEAT);
        }
    } else {
        return 0;
    }
    if (rx->at < rx->len && rx->p[rx->at] == '?') {
        rx->at++;                             /* lazy: the same language */
    } else if (rx->at < rx->len && rx->p[rx->at] == '+') {
        return rx_fail(rx, "possessive repeats are not supported");
    }
    if (rx->at < rx->len && (rx->p[rx->at] == '*' || rx->p[rx->at] == '+'
                             || rx->p[rx->at] == '?' || rx->p[rx->at] == '{'))
    {
        return rx_fail(rx, "multiple repeat");
    }
    end_at = rx->at;
    if (hi == 0) {
        return rx_eps(rx, f);                 /* {0}: the empty string */
    }

    /* lo copies, then a looping one or hi - lo optional ones; the first
     * copy is f, each other parses the atom again */
    {
        frag_t  r;
        int     used = 0, n_copies = hi < 0 ? lo + 1 : hi;

        if (rx_eps(rx, &r) != 0) {
            return -1;
        }
        for (int i = 0; i < n_copies; i++) {
            if (!used) {
                g = *f;
                used = 1;
            } else {
                rx->at = atom_at;
                if (rx_atom(rx, &g, depth) != 0) {
                    return -1;
                }
            }
            if (i >= lo && (hi < 0 ? rx_star(rx, &g) : rx_opt(rx, &g)) != 0) {
                return -1;
            }
            rx_cat(rx, &r, &g);
        }
        *f = r;
    }
    rx->at = end_at;
    return 0;
}


static int
rx_concat(rx_t *rx, frag_t *f, int depth)
{
    frag_t  g;

    if (rx_eps(rx, f) != 0) {
        return -1;
    }
    while (rx->at < rx->len && rx->p[rx->at] != '|' && rx->p[rx->at] != ')') {
        if (rx_repeat(rx, &g, depth) != 0) {
            return -1;
        }
        rx_cat(rx, f, &g);
    }
    return 0;
}


static int
rx_alternation(rx_t *rx, frag_t *f, int depth)
{
    frag_t  g;

    if (rx_concat(rx, f, depth) != 0) {
        return -1;
    }
    while (rx->at < rx->len && rx->p[rx->at] == '|') {
        rx->at++;
        if (rx_concat(rx, &g, depth) != 0 || rx_alt(rx, f, &g) != 0) {
            return -1;
        }
    }
    return 0;
}


/* The whole text from rx->at as f, ending in a MATCH state. */
static int
rx_whole(rx_t *rx, frag_t *f)
{
    int32_t  match;

    if (rx_alternation(rx, f, 0) != 0) {
        return -1;
    }
    if (rx->at < rx->len) {
        return rx_fail(rx, "unbalanced )");
    }
    match = rx_state(rx, N_MATCH, 0, 0);
    if (match < 0) {
        return -1;
    }
    rx_link(rx, f->e, match);
    return 0;
}


/* ---- subset construction ------------------------------------------------ */

typedef struct {
    int32_t   *items;              /* every set's NFA states, back to back */
    size_t     n_items, cap_items;
    size_t    *off;                /* [n_sets + 1] */
    size_t     n_sets, cap_sets;
    int32_t   *hash;               /* open addressing: set index or -1 */
    size_t     hcap;
} sets_t;


static uint64_t
set_hash(const int32_t *s, size_t n)
{
    uint64_t  h = 1469598103934665603ull;

    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint32_t) s[i]) * 1099511628211ull;
    }
    return h ^ n;
}


static int
cmp_i32(const void *a, const void *b)
{
    int32_t  x = *(const int32_t *) a, y = *(const int32_t *) b;

    return (x > y) - (x < y);
}


/* index of set s[0..n) (sorted), added if new; -1: out of memory */
static int32_t
sets_find(sets_t *ss, const int32_t *s, size_t n, int *added)
{
    size_t  i, k;

    *added = 0;
    for (i = set_hash(s, n) & (ss->hcap - 1); ss->hash[i] >= 0;
         i = (i + 1) & (ss->hcap - 1))
    {
        k = (size_t) ss->hash[i];
        if (ss->off[k + 1] - ss->off[k] == n
            && memcmp(ss->items + ss->off[k], s, n * sizeof(int32_t)) == 0)
        {
            return (int32_t) k;
        }
    }
    if (ss->n_items + n > ss->cap_items) {
        size_t   cap = (ss->n_items + n) * 2;
        int32_t *p = realloc(ss->items, cap * sizeof(int32_t));

        if (p == NULL) {
            return -1;
        }
        ss->items = p;
        ss->cap_items = cap;
    }
    if (ss->n_sets + 2 > ss->cap_sets) {
        size_t   cap = ss->cap_sets * 2 + 16;
        size_t  *p = realloc(ss->off, cap * sizeof(size_t));

        if (p == NULL) {
            return -1;
        }
        ss->off = p;
        ss->cap_sets = cap;
    }
    memcpy(ss->items + ss->n_items, s, n * sizeof(int32_t));
    ss->n_items += n;
    ss->off[ss->n_sets + 1] = ss->n_items;
    ss->hash[i] = (int32_t) ss->n_sets;
    *added = 1;
    return (int32_t) ss->n_sets++;
}


/* the epsilon closure of seed[0..n) into out (its RANGE and MATCH states,
 * sorted); mark[] is all zero on entry and exit */
static size_t
closure(const nfa_state_t *st, const int32_t *seed, size_t n, int32_t *stack,
    uint8_t *mark, int32_t *out, int32_t *touched)
{
    size_t  sp = 0, k = 0, nt = 0;

    for (size_t i = 0; i < n; i++) {
        if (!mark[seed[i]]) {
            mark[seed[i]] = 1;
            touched[nt++] = seed[i];
            stack[sp++] = seed[i];
        }
    }
    while (sp > 0) {
        int32_t  s = stack[--sp];

        if (st[s].kind != N_EPS) {
            out[k++] = s;
            continue;
        }
        for (int j = 0; j < 2; j++) {
            int32_t  t = j ? st[s].out2 : st[s].out;

            if (t >= 0 && !mark[t]) {
                mark[t] = 1;
                touched[nt++] = t;
                stack[sp++] = t;
            }
        }
    }
    for (size_t i = 0; i < nt; i++) {
        mark[touched[i]] = 0;
    }
    qsort(out, k, sizeof(int32_t), cmp_i32);
    return k;
}


int
kimi_regex_compile(const char *pattern, size_t len, int32_t **prog,
    size_t *n_out, char *msg, size_t msg_len)
{
    return kimi_regex_compile_forbid(pattern, len, NULL, prog, n_out, msg,
                                     msg_len);
}


int
kimi_regex_compile_forbid(const char *pattern, size_t len,
    const uint8_t *forbid, int32_t **prog, size_t *n_out, char *msg,
    size_t msg_len)
{
    rx_t       rx = { (const unsigned char *) pattern, len, 0, NULL, 0, 0,
                      msg, msg_len, 0, NULL, 0 };
    frag_t     f;
    sets_t     ss = { 0 };
    int32_t   *stack = NULL, *buf = NULL, *seed = NULL, *touched = NULL;
    int32_t   *trans = NULL, *live = NULL, *renum = NULL, *p = NULL;
    uint8_t   *mark = NULL, cls_of[256];
    int        n_cls = 0, rc = -1, added;
    size_t     n_dfa = 0, cap_trans = 0, words;
    int32_t    rep[256];

    *prog = NULL;
    *n_out = 0;

    if (len > KIMI_REGEX_MAX_PATTERN) {
        snprintf(msg, msg_len, "the pattern is longer than %d bytes",
                 KIMI_REGEX_MAX_PATTERN);
        return -1;
    }

    if (rx_whole(&rx, &f) != 0) {
        goto done;
    }

    /* byte classes: boundaries of every range */
    {
        uint8_t  cut[257] = { 0 };

        for (size_t i = 0; i < rx.n; i++) {
            if (rx.st[i].kind == N_RANGE) {
                cut[rx.st[i].lo] = 1;
                cut[rx.st[i].hi + 1] = 1;
            }
        }
        /* a run of forbidden bytes is a class apart from its allowed
         * neighbours (one class, not one a byte: the control bytes alone
         * would add 32 columns to every state) */
        for (int b = 1; forbid != NULL && b <= 256; b++) {
            if ((b < 256 && forbid[b]) != (forbid[b - 1] != 0)) {
                cut[b] = 1;
            }
        }
        for (int b = 0; b < 256; b++) {
            if (b > 0 && cut[b]) {
                n_cls++;
            }
            cls_of[b] = (uint8_t) n_cls;
            if (b == 0 || cut[b]) {
                rep[n_cls] = b;
            }
        }
        n_cls++;
    }

    stack = malloc(rx.n * sizeof(int32_t));
    buf = malloc(rx.n * sizeof(int32_t));
    seed = malloc(rx.n * sizeof(int32_t));
    touched = malloc(rx.n * sizeof(int32_t));
    mark = calloc(rx.n, 1);
    ss.hcap = 8192;
    ss.hash = malloc(ss.hcap * sizeof(int32_t));
    ss.off = malloc(16 * sizeof(size_t));
    ss.cap_sets = 16;
    if (stack == NULL || buf == NULL || seed == NULL || touched == NULL
        || mark == NULL || ss.hash == NULL || ss.off == NULL)
    {
        snprintf(msg, msg_len, "out of memory");
        goto done;
    }
    memset(ss.hash, 0xff, ss.hcap * sizeof(int32_t));
    ss.off[0] = 0;

    {
        size_t  k = closure(rx.st, &f.s, 1, stack, mark, buf, touched);

        if (sets_find(&ss, buf, k, &added) < 0) {
            snprintf(msg, msg_len, "out of memory");
            goto done;
        }
    }

    for (n_dfa = 0; n_dfa < ss.n_sets; n_dfa++) {
        if (ss.n_sets > KIMI_REGEX_MAX_STATES) {
            snprintf(msg, msg_len, "the pattern needs more than %d automaton"
                     " states: simplify it", KIMI_REGEX_MAX_STATES);
            goto done;
        }
        if ((n_dfa + 1) * (size_t) n_cls > cap_trans) {
            int32_t  *t;

            cap_trans = (n_dfa + 1) * (size_t) n_cls * 2;
            t = realloc(trans, cap_trans * sizeof(int32_t));
            if (t == NULL) {
                snprintf(msg, msg_len, "out of memory");
                goto done;
            }
            trans = t;
        }
        for (int c = 0; c < n_cls; c++) {
            size_t  ns = 0, k;
            int32_t d;

            for (size_t i = ss.off[n_dfa]; i < ss.off[n_dfa + 1]; i++) {
                const nfa_state_t  *s = &rx.st[ss.items[i]];

                if (s->kind == N_RANGE && rep[c] >= s->lo && rep[c] <= s->hi) {
                    seed[ns++] = s->out;
                }
            }
            if (ns == 0 || (forbid != NULL && forbid[rep[c]])) {
                trans[n_dfa * (size_t) n_cls + (size_t) c] = -1;
                continue;
            }
            k = closure(rx.st, seed, ns, stack, mark, buf, touched);
            if (ss.n_sets * 2 >= ss.hcap) {
                /* grow the table: rehash every set */
                size_t   hcap = ss.hcap * 2;
                int32_t *h = malloc(hcap * sizeof(int32_t));

                if (h == NULL) {
                    snprintf(msg, msg_len, "out of memory");
                    goto done;
                }
                memset(h, 0xff, hcap * sizeof(int32_t));
                for (size_t q = 0; q < ss.n_sets; q++) {
                    size_t  i = set_hash(ss.items + ss.off[q],
                                         ss.off[q + 1] - ss.off[q]) & (hcap - 1);

                    while (h[i] >= 0) {
                        i = (i + 1) & (hcap - 1);
                    }
                    h[i] = (int32_t) q;
                }
                free(ss.hash);
                ss.hash = h;
                ss.hcap = hcap;
            }
            d = sets_find(&ss, buf, k, &added);
            if (d < 0) {
                snprintf(msg, msg_len, "out of memory");
                goto done;
            }
            trans[n_dfa * (size_t) n_cls + (size_t) c] = d;
        }
    }

    /* states that can reach a match: backwards from the accepting ones */
    live = calloc(n_dfa, sizeof(int32_t));
    renum = malloc(n_dfa * sizeof(int32_t));
    if (live == NULL || renum == NULL) {
        snprintf(msg, msg_len, "out of memory");
        goto done;
    }
    for (size_t s = 0; s < n_dfa; s++) {
        for (size_t i = ss.off[s]; i < ss.off[s + 1]; i++) {
            live[s] |= rx.st[ss.items[i]].kind == N_MATCH;
        }
    }
    for (int changed = 1; changed; ) {
        changed = 0;
        for (size_t s = 0; s < n_dfa; s++) {
            if (live[s]) {
                continue;
            }
            for (int c = 0; c < n_cls; c++) {
                int32_t  d = trans[s * (size_t) n_cls + (size_t) c];

                if (d >= 0 && live[d]) {
                    live[s] = 1;
                    changed = 1;
                    break;
                }
            }
        }
    }
    if (!live[0]) {
        snprintf(msg, msg_len, "the pattern matches nothing");
        goto done;
    }
    {
        int32_t  k = 0;

        for (size_t s = 0; s < n_dfa; s++) {
            renum[s] = live[s] ? k++ : -1;
        }
        words = 3 + 64 + ((size_t) k + 31) / 32 + (size_t) k * (size_t) n_cls;
        p = calloc(words, sizeof(int32_t));
        if (p == NULL) {
            snprintf(msg, msg_len, "out of memory");
            goto done;
        }
        p[0] = (int32_t) words;
        p[1] = k;
        p[2] = n_cls;
        for (int b = 0; b < 256; b++) {
            p[3 + b / 4] |= (int32_t) ((uint32_t) cls_of[b] << (8 * (b % 4)));
        }
        for (size_t s = 0; s < n_dfa; s++) {
            int32_t  r = renum[s], *row;
            int      acc = 0;

            if (r < 0) {
                continue;
            }
            for (size_t i = ss.off[s]; i < ss.off[s + 1]; i++) {
                acc |= rx.st[ss.items[i]].kind == N_MATCH;
            }
            if (acc) {
                p[3 + 64 + r / 32] |= (int32_t) (1u << (r % 32));
            }
            row = p + 3 + 64 + (k + 31) / 32 + (size_t) r * (size_t) n_cls;
            for (int c = 0; c < n_cls; c++) {
                int32_t  d = trans[s * (size_t) n_cls + (size_t) c];

                row[c] = d >= 0 ? renum[d] : -1;
            }
        }
    }

    *prog = p;
    *n_out = words;
    p = NULL;
    rc = 0;

done:
    free(rx.st);
    free(ss.items);
    free(ss.off);
    free(ss.hash);
    free(stack);
    free(buf);
    free(seed);
    free(touched);
    free(mark);
    free(trans);
    free(live);
    free(renum);
    free(p);
    return rc;
}


/* ---- the program at run time ------------------------------------------- */

int
kimi_regex_check(const int32_t *p, size_t n, char *msg, size_t msg_len)
{
    size_t  need, ns, nc;

    if (p == NULL || n < 3 + 64 || (size_t) p[0] != n || p[1] < 1
        || p[1] > KIMI_REGEX_MAX_STATES || p[2] < 1 || p[2] > 256)
    {
        snprintf(msg, msg_len, "regex program: bad header");
        return -1;
    }
    ns = (size_t) p[1];
    nc = (size_t) p[2];
    need = 3 + 64 + (ns + 31) / 32 + ns * nc;
    if (need != n) {
        snprintf(msg, msg_len, "regex program: %zu words, its header says"
                 " %zu", n, need);
        return -1;
    }
    for (int b = 0; b < 256; b++) {
        if ((((uint32_t) p[3 + b / 4] >> (8 * (b % 4))) & 0xff) >= nc) {
            snprintf(msg, msg_len, "regex program: byte %d in class %u of"
                     " %zu", b, ((uint32_t) p[3 + b / 4] >> (8 * (b % 4)))
                     & 0xff, nc);
            return -1;
        }
    }
    for (size_t i = 3 + 64 + (ns + 31) / 32; i < n; i++) {
        if (p[i] < -1 || p[i] >= (int32_t) ns) {
            snprintf(msg, msg_len, "regex program: a transition to %d of %zu"
                     " states", p[i], ns);
            return -1;
        }
    }
    return 0;
}


int32_t
kimi_regex_step(const int32_t *p, int32_t s, const char *b, size_t len)
{
    const int32_t  *t = p + 3 + 64 + (p[1] + 31) / 32;
    int32_t         nc = p[2];

    for (size_t i = 0; i < len && s >= 0; i++) {
        unsigned  c = (unsigned char) b[i];

        s = t[s * nc + (int32_t) (((uint32_t) p[3 + c / 4] >> (8 * (c % 4)))
                                  & 0xff)];
    }
    return s;
}


int
kimi_regex_accepts(const int32_t *p, int32_t s)
{
    return s >= 0 && s < p[1]
           && (((uint32_t) p[3 + 64 + s / 32] >> (s % 32)) & 1);
}


/* ---- grammars: one NFA per rule, calls between them --------------------- */

int
kimi_regex_rtn_compile(const char *const *bodies, const size_t *lens,
    const char *const *names, int n_rules, int root, int32_t **prog,
    size_t *n_out, char *msg, size_t msg_len)
{
    rx_t      rx = { NULL, 0, 0, NULL, 0, 0, msg, msg_len, 0, names, n_rules };
    int32_t  *start = NULL, *p = NULL;
    frag_t    f;
    size_t    words;
    int       rc = -1;

    *prog = NULL;
    *n_out = 0;

    if (n_rules < 1 || n_rules > KIMI_GRAMMAR_MAX_RULES || root < 0
        || root >= n_rules)
    {
        snprintf(msg, msg_len, "a grammar of 1 to %d rules",
                 KIMI_GRAMMAR_MAX_RULES);
        return -1;
    }

    start = malloc(n_rules * sizeof(*start));
    if (start == NULL) {
        snprintf(msg, msg_len, "out of memory");
        return -1;
    }

    for (int r = 0; r < n_rules; r++) {
        rx.p = (const unsigned char *) bodies[r];
        rx.len = lens[r];
        rx.at = 0;
        if (rx_whole(&rx, &f) != 0) {
            goto done;
        }
        start[r] = f.s;
        if (rx.n > KIMI_GRAMMAR_MAX_STATES) {
            snprintf(msg, msg_len, "the grammar needs more than %d automaton"
                     " states", KIMI_GRAMMAR_MAX_STATES);
            goto done;
        }
    }

    words = 4 + (size_t) n_rules + 3 * rx.n;
    p = malloc(words * sizeof(*p));
    if (p == NULL) {
        snprintf(msg, msg_len, "out of memory");
        goto done;
    }

    p[0] = (int32_t) words;
    p[1] = (int32_t) rx.n;
    p[2] = n_rules;
    p[3] = root;
    memcpy(p + 4, start, n_rules * sizeof(*start));
    for (size_t i = 0; i < rx.n; i++) {
        int32_t  *w = p + 4 + n_rules + 3 * i;

        w[0] = rx.st[i].kind | rx.st[i].lo << 8 | rx.st[i].hi << 16;
        w[1] = rx.st[i].out;
        w[2] = rx.st[i].out2;
    }

    *prog = p;
    *n_out = words;
    p = NULL;
    rc = 0;

done:

    free(p);
    free(start);
    free(rx.st);
    return rc;
}
