/*
 * The guided_regex compiler (engine/text/regex_dfa.c) against PCRE2 as the
 * oracle: for listed and for random patterns of the supported subset, the
 * DFA accepts a string whole exactly when PCRE2 matches it anchored at both
 * ends, and a prefix is alive exactly when PCRE2 calls it a partial (or
 * complete) match.  Then the refusals (each with its message), and the
 * engine's check of corrupted programs (never a crash, never a state out
 * of range).
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
    /* ALT_BSUX: \uHHHH and \xHH as Python and JavaScript spell them */
    o->whole = pcre2_compile((PCRE2_SPTR) pat, n, PCRE2_UTF | PCRE2_ALT_BSUX,
                             &ec, &eo, NULL);
    o->prefix = pcre2_compile((PCRE2_SPTR) wrapped, (size_t) wl,
                              PCRE2_UTF | PCRE2_ALT_BSUX, &ec, &eo, NULL);
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
    if (whole != kimi_regex_accepts(p, st)) {
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
        char       first[64];

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
           " strings (%zu differ%s%.*s%s)", pats[i], tried, bad,
           bad ? ", first \"" : "", (int) first_len, first, bad ? "\"" : "");
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
    char    pat[96], s[64], msg[200], first[160] = "";

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
                snprintf(first, sizeof(first), "/%.*s/ on \"%.*s\"", (int) n,
                         pat, (int) len, s);
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
    char  msg[200];

    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
        int32_t  *p = NULL;
        size_t    n = 0;
        int       rc;

        msg[0] = '\0';
        rc = kimi_regex_compile(pats[i], strlen(pats[i]), &p, &n, msg,
                                sizeof(msg));
        ok(rc == -1 && p == NULL && msg[0] != '\0', "/%s/ refused: %s",
           pats[i], msg);
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
            (void) kimi_regex_accepts(q, st);
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
    ok(kimi_regex_accepts(p, 0) && kimi_regex_step(p, 0, "a", 1) < 0,
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
