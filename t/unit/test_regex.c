/*
 * The guided_regex compiler (engine/text/regex_dfa.c) against PCRE2 as the
 * oracle: for listed and for random patterns of the supported subset, the
 * DFA accepts a string whole exactly when PCRE2 matches it anchored at both
 * ends, and a prefix is alive exactly when PCRE2 calls it a partial (or
 * complete) match: random strings, every string of up to 4 characters over
 * each listed pattern's own characters (plus a newline and multi-byte ones
 * it does not name), and every character-boundary prefix of random strings
 * over them, walked byte by byte (the same state as one step over the
 * prefix; a dead state stays dead).  Then the refusals (each with its
 * message), the engine's check of corrupted programs (never a crash, never
 * a state out of range; damaged sizes, classes and targets refused), and
 * the empty pattern.
 */

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "../../engine/text/regex_dfa.h"


static uint64_t  rs = 88172645463325252ull;

static uint32_t
rnext(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t) (rs >> 11);
}


/* s[0..len) for a TAP line: control bytes, quote, backslash and bytes
 * never in UTF-8 as escapes */
static const char *
esc(const char *s, size_t len, char *buf, size_t cap)
{
    size_t  o = 0;

    for (size_t i = 0; i < len && o + 5 < cap; i++) {
        unsigned char  c = (unsigned char) s[i];

        if (c < 0x20 || c == 0x7f || c >= 0xf5 || c == '"' || c == '\\') {
            o += (size_t) snprintf(buf + o, cap - o, c == '"' ? "\\\""
                                   : c == '\\' ? "\\\\" : "\\x%02x", c);
        } else {
            buf[o++] = (char) c;
        }
    }
    buf[o] = '\0';
    return buf;
}


static size_t
utf8_put(uint32_t cp, char *b)
{
    if (cp < 0x80) {
        b[0] = (char) cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (char) (0xc0 | cp >> 6);
        b[1] = (char) (0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (char) (0xe0 | cp >> 12);
        b[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char) (0x80 | (cp & 0x3f));
        return 3;
    }
    b[0] = (char) (0xf0 | cp >> 18);
    b[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
    b[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
    b[3] = (char) (0x80 | (cp & 0x3f));
    return 4;
}


typedef struct {
    pcre2_code        *whole, *prefix;    /* pattern, (?:pattern)\z */
    pcre2_match_data  *md;
} oracle_t;


static int
oracle_init(oracle_t *o, const char *pat, size_t n)
{
    char        wrapped[600];
    int         ec, wl;
    PCRE2_SIZE  eo;

    wl = snprintf(wrapped, sizeof(wrapped), "(?:%.*s)\\z", (int) n, pat);
    /* ALT_BSUX: \uHHHH and \xHH as Python and JavaScript spell them;
     * DOLLAR_ENDONLY: else a partial match of "abc\n" under /^abc$/ (PCRE2's
     * $ before a final newline), which no text extends to a whole match */
    o->whole = pcre2_compile((PCRE2_SPTR) pat, n, PCRE2_UTF | PCRE2_ALT_BSUX
                             | PCRE2_DOLLAR_ENDONLY, &ec, &eo, NULL);
    o->prefix = pcre2_compile((PCRE2_SPTR) wrapped, (size_t) wl, PCRE2_UTF
                              | PCRE2_ALT_BSUX | PCRE2_DOLLAR_ENDONLY, &ec,
                              &eo, NULL);
    o->md = pcre2_match_data_create(8, NULL);
    return o->whole != NULL && o->prefix != NULL && o->md != NULL ? 0 : -1;
}


static void
oracle_free(oracle_t *o)
{
    pcre2_code_free(o->whole);
    pcre2_code_free(o->prefix);
    pcre2_match_data_free(o->md);
}


/* differences between the DFA and PCRE2 on s[0..len) (valid UTF-8):
 * whole match, and liveness of the prefix (PCRE2 reports no partial
 * match of an empty subject, so that one is skipped) */
static int
differs(const int32_t *p, oracle_t *o, const char *s, size_t len)
{
    int32_t  st = kimi_regex_step(p, 0, s, len);
    int      whole, rc;

    whole = pcre2_match(o->whole, (PCRE2_SPTR) s, len, 0,
                        PCRE2_ANCHORED | PCRE2_ENDANCHORED, o->md, NULL) >= 0;
    if (whole != (st >= 0 && kimi_regex_accepts(p, st))) {
        return 1;
    }
    if (len == 0) {
        return 0;
    }
    rc = pcre2_match(o->prefix, (PCRE2_SPTR) s, len, 0,
                     PCRE2_ANCHORED | PCRE2_PARTIAL_HARD, o->md, NULL);
    return (rc >= 0 || rc == PCRE2_ERROR_PARTIAL) != (st >= 0);
}


/* strings over pieces (each a whole UTF-8 character or more) */
static size_t
random_string(char *out, size_t cap, const char *const *pieces, size_t n_pieces,
    int max_pieces)
{
    size_t  len = 0;
    int     k = (int) (rnext() % (uint32_t) (max_pieces + 1));

    for (int i = 0; i < k; i++) {
        const char  *c = pieces[rnext() % n_pieces];
        size_t       l = strlen(c);

        if (len + l >= cap) {
            break;
        }
        memcpy(out + len, c, l);
        len += l;
    }
    return len;
}


#define ALPHA_OWN  6                     /* the pattern's own characters */
#define ALPHA_MAX  (ALPHA_OWN + 4)

static void
alpha_add(char al[][5], size_t *n, const char *c, size_t l)
{
    for (size_t i = 0; i < *n; i++) {
        if (strlen(al[i]) == l && memcmp(al[i], c, l) == 0) {
            return;
        }
    }
    if (l > 0 && l < 5 && *n < ALPHA_MAX) {
        memcpy(al[*n], c, l);
        al[(*n)++][l] = '\0';
    }
}


/* characters the pattern names (literals, range ends, \xHH and \uHHHH
 * decoded, one member of each class escape; not repeat counts or group
 * names), then a newline, é, € and 😀 */
static size_t
alphabet(const char *pat, char al[][5])
{
    static const char  *extra[] = {
        "\n", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
    };
    size_t  n = 0, set = 0;             /* in a set: where it opened + 1 */
    char    c[5];

    for (size_t i = 0; pat[i] != '\0' && n < ALPHA_OWN; ) {
        unsigned char  b = (unsigned char) pat[i];
        size_t         l = 1;

        if (set == 0 && b == '[') {
            set = i + 1 + (pat[i + 1] == '^');
            i = set;
            set += pat[set] == ']';     /* a leading ] is a member */
            continue;
        }
        if (set != 0 && b == ']' && i >= set) {
            set = 0;
            i++;
            continue;
        }
        if (b == '\\' && pat[i + 1] != '\0') {
            const char  *cls = strchr("dDwWsSntrfv", pat[i + 1]);
            char         hex[5] = "";

            if (cls != NULL) {
                c[0] = "5x_- !\n\t\r\f\v"[cls - "dDwWsSntrfv"];
            } else if (pat[i + 1] == 'x' || pat[i + 1] == 'u') {
                l = pat[i + 1] == 'x' ? 2 : 4;
                memcpy(hex, pat + i + 2, l);
                i += l;
                l = utf8_put((uint32_t) strtoul(hex, NULL, 16), c);
            } else {
                c[0] = pat[i + 1];
            }
            i += 2;
        } else if (set != 0) {
            l = b < 0xc0 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
            memcpy(c, pat + i, l);
            i += l;
        } else if (b == '{') {
            i += strcspn(pat + i, "}") + (strchr(pat + i, '}') != NULL);
            continue;
        } else if (b == '(' && pat[i + 1] == '?') {
            i += strcspn(pat + i, ":>") + 1;
            continue;
        } else if (strchr("()]|*+?^$.", b) != NULL) {
            i++;
            continue;
        } else {
            l = b < 0xc0 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
            memcpy(c, pat + i, l);
            i += l;
        }
        if (c[0] != '\0') {
            alpha_add(al, &n, c, l);
        }
    }
    for (size_t k = 0; k < sizeof(extra) / sizeof(extra[0]); k++) {
        alpha_add(al, &n, extra[k], strlen(extra[k]));
    }
    return n;
}


/* s[0..len) walked byte by byte from state 0: at each character boundary
 * the state is the one of a single step over the prefix and the prefix
 * agrees with PCRE2; once dead, every byte keeps it dead.  1: differs */
static int
walk_differs(const int32_t *p, oracle_t *o, const char *s, size_t len)
{
    int32_t  st = 0, nx;

    if (differs(p, o, s, 0)) {
        return 1;
    }
    for (size_t i = 0; i < len; i++) {
        nx = kimi_regex_step(p, st, s + i, 1);
        if (nx < -1 || nx >= p[1] || (st < 0 && nx != -1)) {
            return 1;
        }
        st = nx;
        if (i + 1 < len && ((unsigned char) s[i + 1] & 0xc0) == 0x80) {
            continue;                   /* inside a character: no oracle */
        }
        if (st != kimi_regex_step(p, 0, s, i + 1) || differs(p, o, s, i + 1)) {
            return 1;
        }
    }
    return 0;
}


/* every string of up to 4 characters over the pattern's alphabet (whole
 * match and liveness), then every prefix of 400 random ones of up to 12;
 * the number tried, and the first that differs into first */
static size_t
test_alphabet(const int32_t *p, oracle_t *o, const char *pat, size_t *bad,
    char *first, size_t first_cap)
{
    char    al[ALPHA_MAX][5], s[64];
    size_t  na = alphabet(pat, al), tried = 0, len;
    int     idx[12];

    *bad = 0;
    for (int k = 0; k <= 4; k++) {
        size_t  total = 1;

        for (int j = 0; j < k; j++) {
            total *= na;
        }
        for (size_t v = 0; v < total; v++) {
            size_t  x = v;

            len = 0;
            for (int j = 0; j < k; j++, x /= na) {
                size_t  l = strlen(al[x % na]);

                memcpy(s + len, al[x % na], l);
                len += l;
            }
            tried++;
            if (differs(p, o, s, len) && (*bad)++ == 0) {
                esc(s, len, first, first_cap);
            }
        }
    }
    for (int r = 0; r < 400; r++) {
        int  k = (int) (rnext() % 13);

        len = 0;
        for (int j = 0; j < k; j++) {
            size_t  l;

            idx[j] = (int) (rnext() % na);
            l = strlen(al[idx[j]]);
            memcpy(s + len, al[idx[j]], l);
            len += l;
        }
        tried++;
        if (walk_differs(p, o, s, len) && (*bad)++ == 0) {
            esc(s, len, first, first_cap);
        }
    }
    return tried;
}


static void
test_listed(void)
{
    static const char  *pats[] = {
        "[0-9]{3}-[0-9]{4}", "(ab|cd)*e?", "[A-Za-z_][A-Za-z0-9_]{0,15}",
        "\\d+(\\.\\d+)?", "(?:yes|no|maybe)", "a{2,4}b+", "[^,\\n]*,[^,\\n]*",
        ".{0,5}x", "\\w+@\\w+\\.(com|org)", "(\\s*\\w+\\s*=\\s*\\d+;)+",
        "\xc3\xa9+\xc3\xbc?", "[\xce\xb1\xce\xb2\xce\xb3]x", "\\u00e9\\x41",
        "(?P<y>\\d{4})-(?<m>\\d{2})", "^abc$", "a*?b", "(a|b|c|d|e|f){3,6}",
        "[.*+?()|]", "\\.\\*\\+", "[-a-c]", "[a\\-c]", "[\\d\\s]+", "\\D\\W\\S",
        "(((a)))", "x|", "(|y)z", "", "a{0}b", "[]a]+", "[^]a]", "\\t\\n",
        "(a+)+b", "[a-c]{2}|[b-d]{3}", "[\xc3\xa9-\xc3\xbc]+", "[^\xc3\xa9]x",
        "[\\u4e00-\\u9fa5]+", "[^\\u0100-\\uffff]*", "[a\xce\xb1-\xcf\x89]{2,3}",
    };
    static const char  *pieces[] = {
        "a", "b", "c", "d", "e", "x", "y", "z", "0", "1", "9", "-", ".", "@",
        ",", " ", "\n", "\t", "_", "=", ";", "A", "Z", "o", "m", "r", "g",
        "\xc3\xa9", "\xc3\xbc", "\xce\xb1", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
        "]", "*", "(", "|", "+", "\xe4\xb8\xad", "\xe6\x96\x87", "\xc4\x80",
        "\xc3\xa0", "\xc3\xbf", "\xcf\x89",
    };
    char  s[64], msg[200];

    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
        int32_t   *p;
        size_t     n, bad = 0, tried = 0, first_len = 0;
        oracle_t   o;
        char       first[64], e[200];

        if (kimi_regex_compile(pats[i], strlen(pats[i]), &p, &n, msg,
                               sizeof(msg)) != 0)
        {
            ok(0, "/%s/ compiles: %s", pats[i], msg);
            continue;
        }
        if (kimi_regex_check(p, n, msg, sizeof(msg)) != 0
            || oracle_init(&o, pats[i], strlen(pats[i])) != 0)
        {
            ok(0, "/%s/: program checked, PCRE2 compiles it (%s)", pats[i], msg);
            free(p);
            continue;
        }
        for (int k = 0; k < 3000; k++) {
            size_t  len = random_string(s, sizeof(s), pieces,
                                        sizeof(pieces) / sizeof(pieces[0]), 10);

            tried++;
            if (differs(p, &o, s, len)) {
                if (bad++ == 0) {
                    memcpy(first, s, len);
                    first_len = len;
                }
            }
        }
        ok(bad == 0, "/%s/: whole matches and live prefixes as PCRE2's over %zu"
           " strings (%zu differ%s%s%s)", pats[i], tried, bad,
           bad ? ", first \"" : "", esc(first, first_len, e, sizeof(e)),
           bad ? "\"" : "");
        tried = test_alphabet(p, &o, pats[i], &bad, e, sizeof(e));
        ok(bad == 0, "/%s/: every string of <= 4 of its characters and every"
           " prefix of 400 random ones as PCRE2's, walked byte by byte (%zu"
           " strings, %zu differ%s%s%s)", pats[i], tried, bad,
           bad ? ", first \"" : "", bad ? e : "", bad ? "\"" : "");
        oracle_free(&o);
        free(p);
    }
}


/* random patterns of the subset against PCRE2 */
static void
test_random(void)
{
    static const char  *atoms[] = {
        "a", "b", "c", "(", ")", "|", "*", "+", "?", "{1,2}", "{2}", "{0,3}",
        "[ab]", "[^a]", ".", "\\d", "\\w", "\\s", "\\D", "\xc3\xa9", "(?:",
        "[a-c]", "1", " ", "*?", "[\xc3\xa0-\xc3\xbf]", "[^\xc3\xa9" "a]",
        "[\\u4e00-\\u9fa5]", "[^\\u0100-\\uffff]",
    };
    static const char  *pieces[] = {
        "a", "b", "c", "1", " ", "\xc3\xa9", "\n", "x", "\xe2\x82\xac",
        "\xc3\xa0", "\xe4\xb8\xad", "\xc4\x80",
    };
    size_t  pats = 0, strings = 0, bad = 0;
    char    pat[96], s[64], msg[200], first[400] = "", e1[200], e2[200];

    for (int it = 0; it < 6000; it++) {
        int32_t   *p;
        size_t     n = 0, np;
        oracle_t   o;
        int        k = 1 + (int) (rnext() % 8);

        for (int j = 0; j < k; j++) {
            const char  *a = atoms[rnext() % (sizeof(atoms) / sizeof(atoms[0]))];
            size_t       l = strlen(a);

            if (n + l >= sizeof(pat)) {
                break;
            }
            memcpy(pat + n, a, l);
            n += l;
        }
        if (kimi_regex_compile(pat, n, &p, &np, msg, sizeof(msg)) != 0) {
            continue;                         /* refusals: test_refused */
        }
        if (oracle_init(&o, pat, n) != 0) {
            free(p);
            continue;
        }
        pats++;
        for (int j = 0; j < 40; j++) {
            size_t  len = random_string(s, sizeof(s), pieces,
                                        sizeof(pieces) / sizeof(pieces[0]), 6);

            strings++;
            if (differs(p, &o, s, len) && bad++ == 0) {
                snprintf(first, sizeof(first), "/%s/ on \"%s\"",
                         esc(pat, n, e1, sizeof(e1)), esc(s, len, e2, sizeof(e2)));
            }
        }
        oracle_free(&o);
        free(p);
    }
    ok(pats > 1000 && bad == 0, "%zu random patterns x 40 strings (%zu): the"
       " DFA agrees with PCRE2 on whole matches and live prefixes (%zu"
       " differ%s%s)", pats, strings, bad, bad ? ": " : "", first);
}


static void
test_refused(void)
{
    static const char  *pats[] = {
        "(a", "a)", "[abc", "a{2,1}", "*a", "a**", "\\1", "(?=a)", "(?!a)",
        "(?<=a)b", "(?<!a)b", "\\b", "\\B", "\\A", "\\Z", "a++", "(?i)a",
        "[\xc3\xbc-\xc3\xa9]", "a{300}", "[]", "[z-a]", "a^b",
        "a$b", "a\\", "(a|b)*a(a|b){15}", "\\q", "[[:alpha:]]", "\xff",
        "[^\\x00-\\uffff\\u0000-\\uffff\xf0\x90\x80\x80-\xf4\x8f\xbf\xbf]",
        "[\\D]", "(?P=n)",
    };
    char  msg[200], e[200];

    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
        int32_t  *p = NULL;
        size_t    n = 0;
        int       rc;

        msg[0] = '\0';
        rc = kimi_regex_compile(pats[i], strlen(pats[i]), &p, &n, msg,
                                sizeof(msg));
        ok(rc == -1 && p == NULL && msg[0] != '\0', "/%s/ refused: %s",
           esc(pats[i], strlen(pats[i]), e, sizeof(e)), msg);
        free(p);
    }
}


/* The engine's check over damaged programs: a program it takes never walks
 * outside its states. */
static void
test_check(void)
{
    int32_t  *p, *q;
    size_t    n;
    char      msg[200];
    int       took = 0, escaped = 0;
    const char  *pat = "(ab|c[0-9]+)*\\.x{1,3}";

    if (kimi_regex_compile(pat, strlen(pat), &p, &n, msg, sizeof(msg)) != 0) {
        ok(0, "compiles: %s", msg);
        return;
    }
    ok(kimi_regex_check(p, n, msg, sizeof(msg)) == 0, "a compiled program"
       " passes the check");
    ok(kimi_regex_check(p, 0, msg, sizeof(msg)) != 0
       && kimi_regex_check(p, n - 1, msg, sizeof(msg)) != 0
       && kimi_regex_check(NULL, n, msg, sizeof(msg)) != 0,
       "no words, one word short, NULL: refused");

    q = malloc(n * sizeof(int32_t));
    {
        size_t  ns = (size_t) p[1], nc = (size_t) p[2];
        size_t  tr = 3 + 64 + (ns + 31) / 32;
        int     bad = 0, c = 0;
        /* word, value: each a program the check must refuse */
        const int64_t  dmg[][2] = {
            { 0, (int64_t) n + 1 }, { 0, (int64_t) n - 1 }, { 0, 0 },
            { 1, 0 }, { 1, -1 }, { 1, (int64_t) ns + 1 }, { 1, INT32_MAX },
            { 2, 0 }, { 2, (int64_t) nc + 1 }, { 2, 257 }, { 2, INT32_MIN },
            { 3, (int64_t) nc }, { 3 + 63, (int64_t) nc << 24 },
            { 3 + 20, -1 }, { (int64_t) tr, (int64_t) ns },
            { (int64_t) tr, -2 }, { (int64_t) n - 1, INT32_MAX },
            { (int64_t) n - 1, INT32_MIN },
        };

        for (size_t k = 0; k < sizeof(dmg) / sizeof(dmg[0]); k++) {
            memcpy(q, p, n * sizeof(int32_t));
            q[dmg[k][0]] = (int32_t) dmg[k][1];
            if (kimi_regex_check(q, n, msg, sizeof(msg)) == 0) {
                bad++;
                c = c == 0 ? (int) k + 1 : c;
            }
        }
        ok(bad == 0, "p[0] != n, n_states or n_classes out of range or off"
           " the size, a byte's class >= n_classes, a target >= n_states or"
           " < -1: refused (%d taken, first damage #%d)", bad, c);
    }
    for (int it = 0; it < 2000; it++) {
        memcpy(q, p, n * sizeof(int32_t));
        for (int k = 1 + (int) (rnext() % 3); k > 0; k--) {
            size_t   at = rnext() % n;
            int32_t  v;

            switch (rnext() % 4) {
            case 0: v = (int32_t) rnext(); break;
            case 1: v = -2 - (int32_t) (rnext() % 3); break;
            case 2: v = q[1] + (int32_t) (rnext() % 3); break;
            default: v = (int32_t) (rnext() % 300); break;
            }
            q[at] = v;
        }
        if (kimi_regex_check(q, n, msg, sizeof(msg)) != 0) {
            continue;
        }
        took++;
        for (int s = 0; s < 50; s++) {
            char     str[16];
            size_t   len = rnext() % sizeof(str);
            int32_t  st;

            for (size_t j = 0; j < len; j++) {
                str[j] = (char) rnext();
            }
            st = kimi_regex_step(q, 0, str, len);
            escaped += st < -1 || st >= q[1];
            if (st >= 0 && st < q[1]) {
                (void) kimi_regex_accepts(q, st);
            }
        }
    }
    ok(escaped == 0, "2000 damaged programs: the check refused or every walk"
       " stayed in range (%d taken, %d escaped)", took, escaped);
    free(q);
    free(p);
}


static void
test_empty(void)
{
    int32_t  *p;
    size_t    n;
    char      msg[200];

    if (kimi_regex_compile("", 0, &p, &n, msg, sizeof(msg)) != 0) {
        ok(0, "the empty pattern compiles: %s", msg);
        return;
    }
    ok(kimi_regex_check(p, n, msg, sizeof(msg)) == 0 && kimi_regex_accepts(p, 0)
       && kimi_regex_step(p, 0, "a", 1) < 0 && kimi_regex_step(p, 0, "\n", 1) < 0
       && kimi_regex_step(p, 0, "\xc3", 1) < 0 && kimi_regex_step(p, 0, "", 1) < 0
       && kimi_regex_step(p, 0, "\xff", 1) < 0 && kimi_regex_step(p, 0, " ", 1) < 0,
       "the empty pattern accepts the empty string only");
    free(p);
}


int
main(void)
{
    test_listed();
    test_random();
    test_refused();
    test_check();
    test_empty();
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
