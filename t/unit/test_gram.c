/*
 * GBNF grammars with recursion (guided_grammar): each grammar below is
 * compiled by kimi_ebnf_to_grammar and run by the pushdown recogniser of
 * gram.h; strings of its language must be accepted whole, their prefixes
 * kept alive, strings outside it refused; left recursion is refused at
 * compile time naming the rule, and so is a root that never ends, while
 * a branch that cannot end is never offered; nesting past KIMI_GRAM_MAX_DEPTH is
 * refused while a right-recursive list of any length is not; a trial feed
 * rewound leaves the arena as it was; a damaged program fails the check,
 * and random ones are taken or refused without harm.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/ebnf.h"
#include "text/gram.h"
#include "text/regex_dfa.h"

#include "tap.h"


typedef struct {
    const char  *grammar;
    const char  *in[4];                   /* in the language */
    const char  *prefix[3];               /* prefixes only */
    const char  *out[4];                  /* neither */
} case_t;


/* 1: a whole sentence, 0: a prefix only, -1: neither */
static int
run(const int32_t *prog, kimi_gram_arena_t *a, const char *s, size_t n)
{
    kimi_gram_state_t  st;

    if (kimi_gram_init(&st, prog, a) != 0 || kimi_gram_feed(&st, s, n) != 0) {
        return -1;
    }
    return kimi_gram_accepts(&st);
}


static int32_t *
compile(const char *g, size_t *n, char *msg, size_t msg_len)
{
    int32_t  *prog;

    if (kimi_ebnf_to_grammar(g, strlen(g), &prog, n, msg, msg_len) != 0) {
        return NULL;
    }
    return prog;
}


int
main(void)
{
    static const case_t  cases[] = {
        { "root ::= \"(\" inner \")\"\ninner ::= root*",
          { "()", "(())", "(()(()))" }, { "(", "(()", "((()" },
          { ")", "())", "(x)", "()(" } },
        { "root ::= expr\n"
          "expr ::= term ((\"+\" | \"-\") term)*\n"
          "term ::= factor ((\"*\" | \"/\") factor)*\n"
          "factor ::= [0-9]+ | \"(\" expr \")\"",
          { "1+2*(3-4)", "((7))", "12/(3+(4*5))-6" }, { "1+", "(1", "((7)" },
          { "1)", "+1", "1++2", "()" } },
        { "root ::= value\n"
          "value ::= object | array | str | num\n"
          "object ::= \"{\" (pair (\",\" pair)*)? \"}\"\n"
          "pair ::= str \":\" value\n"
          "array ::= \"[\" (value (\",\" value)*)? \"]\"\n"
          "str ::= \"\\\"\" [a-z]* \"\\\"\"\n"
          "num ::= [0-9]+",
          { "{\"a\":[1,{\"b\":\"c\"}],\"d\":{}}", "[[],[[]]]", "7" },
          { "{\"a\":", "[[", "{\"a\":[1," },
          { "{\"a\":}", "[1,]", "{\"A\":1}", "{1:2}" } },
        /* recursion through an optional tail, UTF-8 atoms */
        { "root ::= \"\\u00e9\" root?",
          { "\xc3\xa9", "\xc3\xa9\xc3\xa9\xc3\xa9" }, { "\xc3", "\xc3\xa9\xc3" },
          { "e", "\xc3\xa9" "e", "\xc3\xa8" } },
        /* a branch that can never end is never offered */
        { "root ::= \"a\" | \"b\" loop\nloop ::= \"c\" loop",
          { "a" }, { "" }, { "b", "bc", "c" } },
        /* ambiguous: two parses of the same text */
        { "root ::= a | b\na ::= \"x\" a | \"x\"\nb ::= \"x\" b \"y\" | \"x\" \"y\"?",
          { "x", "xxx", "xxyy", "xxy" }, { "xxxy", "" }, { "y", "xyy", "xxyyy" } },
    };
    static const struct {
        const char  *grammar;
        const char  *says;
    } bad[] = {
        { "root ::= root \"a\" | \"a\"", "\"root\" is left-recursive" },
        { "root ::= a\na ::= b \"x\"\nb ::= a | \"y\"", "left-recursive" },
        { "root ::= e root \"x\" | \"y\"\ne ::= \"\" | \"z\"", "\"root\" is left-recursive" },
        { "root ::= \"(\" item \")\"", "\"item\", which is not defined" },
        { "rule ::= \"a\" rule?", "no \"root\" rule" },
        { "root ::= \"x\" root", "no finite sentence" },
    };
    kimi_gram_arena_t  *a = kimi_gram_arena_new();
    char                msg[512], *pat, buf[512];
    size_t              n, plen;
    int32_t            *prog;

    ok(a != NULL, "an arena");

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const case_t  *c = &cases[i];
        int            good = 1;

        prog = compile(c->grammar, &n, msg, sizeof(msg));
        if (prog == NULL) {
            ok(0, "grammar %zu compiles: %s", i, msg);
            continue;
        }

        for (int k = 0; k < 4 && c->in[k] != NULL; k++) {
            if (run(prog, a, c->in[k], strlen(c->in[k])) != 1) {
                good = 0;
                printf("# grammar %zu: \"%s\" not accepted\n", i, c->in[k]);
            }
        }
        for (int k = 0; k < 3 && c->prefix[k] != NULL; k++) {
            if (run(prog, a, c->prefix[k], strlen(c->prefix[k])) != 0) {
                good = 0;
                printf("# grammar %zu: \"%s\" not a prefix only\n", i,
                       c->prefix[k]);
            }
        }
        for (int k = 0; k < 4 && c->out[k] != NULL; k++) {
            if (run(prog, a, c->out[k], strlen(c->out[k])) != -1) {
                good = 0;
                printf("# grammar %zu: \"%s\" not refused\n", i, c->out[k]);
            }
        }

        ok(good, "grammar %zu: its language, its prefixes, nothing else", i);
        ok(kimi_gram_check(prog, n, msg, sizeof(msg)) == 0,
           "grammar %zu: the program passes the engine's check", i);
        free(prog);
    }

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int  rc = kimi_ebnf_to_grammar(bad[i].grammar, strlen(bad[i].grammar),
                                       &prog, &n, msg, sizeof(msg));

        ok(rc != 0 && prog == NULL && strstr(msg, bad[i].says) != NULL,
           "refused: %s", rc != 0 ? msg : "(compiled)");
    }

    /* the regex path still takes what it can, and says -2 for recursion */
    ok(kimi_ebnf_to_regex("root ::= \"a\" root?", 17, &pat, &plen, msg,
                          sizeof(msg)) == -2,
       "kimi_ebnf_to_regex: recursion is -2 (%s)", msg);

    /* nesting: KIMI_GRAM_MAX_DEPTH levels of calls; a right-recursive tail
     * does not nest */
    prog = compile("root ::= \"(\" root? \")\"", &n, msg, sizeof(msg));
    ok(prog != NULL, "parens compile: %s", prog ? "" : msg);
    if (prog != NULL) {
        int  d_ok = KIMI_GRAM_MAX_DEPTH - 4, d_bad = KIMI_GRAM_MAX_DEPTH + 4;

        memset(buf, '(', (size_t) d_ok);
        memset(buf + d_ok, ')', (size_t) d_ok);
        ok(run(prog, a, buf, 2 * (size_t) d_ok) == 1, "%d levels: accepted", d_ok);
        memset(buf, '(', (size_t) d_bad);
        ok(run(prog, a, buf, (size_t) d_bad) == -1, "%d levels: refused (the depth"
           " bound)", d_bad);
        free(prog);
    }

    prog = compile("root ::= \"a\" root | \"b\"", &n, msg, sizeof(msg));
    if (prog != NULL) {
        memset(buf, 'a', 400);
        buf[400] = 'b';
        ok(run(prog, a, buf, 401) == 1, "a right-recursive list of 400: accepted");

        /* a trial feed rewound: the arena as it was, the same answers */
        {
            kimi_gram_state_t  st, t;
            uint32_t           mark;

            kimi_gram_init(&st, prog, a);
            kimi_gram_feed(&st, "aa", 2);
            mark = kimi_gram_mark(a);
            kimi_gram_copy(&t, &st);
            ok(kimi_gram_feed(&t, "ab", 2) == 0 && kimi_gram_accepts(&t),
               "trial feed accepted");
            kimi_gram_rewind(a, mark);
            ok(kimi_gram_mark(a) == mark, "rewound to the mark");
            kimi_gram_copy(&t, &st);
            ok(kimi_gram_feed(&t, "x", 1) == -1, "a wrong byte refused");
            kimi_gram_copy(&t, &st);
            ok(kimi_gram_feed(&t, "b", 1) == 0 && kimi_gram_accepts(&t)
               && !kimi_gram_more(&t), "the end: nothing may follow");
        }

        /* damaged programs fail the check */
        {
            int32_t  save = prog[4 + prog[2] + 1];

            prog[4 + prog[2] + 1] = prog[1] + 7;        /* state 0's out */
            ok(kimi_gram_check(prog, n, msg, sizeof(msg)) != 0,
               "check: a target past the states (%s)", msg);
            prog[4 + prog[2] + 1] = save;
            prog[3] = prog[2];                          /* the start rule */
            ok(kimi_gram_check(prog, n, msg, sizeof(msg)) != 0,
               "check: a start rule past the rules (%s)", msg);
            ok(kimi_gram_check(prog, n - 1, msg, sizeof(msg)) != 0,
               "check: a length that does not add up");
        }
        free(prog);
    }

    /* random programs: the check takes or refuses each, and whatever it
     * takes runs on random bytes within its bounds */
    {
        uint64_t  x = 88172645463325252ull;
        int       taken = 0, ran = 1;

        for (int iter = 0; iter < 3000; iter++) {
            int32_t  ns, nr, *q;
            size_t   nw;

#define RND() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
            ns = 1 + (int32_t) (RND() % 24);
            nr = 1 + (int32_t) (RND() % 4);
            nw = 4 + (size_t) nr + 3 * (size_t) ns;
            q = malloc(nw * sizeof(*q));
            q[0] = (int32_t) nw;
            q[1] = ns;
            q[2] = nr;
            q[3] = (int32_t) (RND() % (uint64_t) nr);
            for (int32_t r = 0; r < nr; r++) {
                q[4 + r] = (int32_t) (RND() % (uint64_t) ns);
            }
            for (int32_t st = 0; st < ns; st++) {
                int32_t  *w = q + 4 + nr + 3 * st, k = (int32_t) (RND() % 4);
                int32_t   lo = (int32_t) (RND() % 256), hi = lo + (int32_t) (RND() % (256 - lo));

                w[0] = k == KIMI_GRAM_CALL ? k | (int32_t) (RND() % (uint64_t) nr) << 8
                                           : k | lo << 8 | hi << 16;
                w[1] = k == KIMI_GRAM_END ? -1 : (int32_t) (RND() % (uint64_t) ns);
                w[2] = k == KIMI_GRAM_EPS && RND() % 2 ? (int32_t) (RND() % (uint64_t) ns) : -1;
            }
            if (kimi_gram_check(q, nw, msg, sizeof(msg)) == 0) {
                kimi_gram_state_t  st;
                char               bytes[32];

                taken++;
                for (int i = 0; i < 32; i++) {
                    bytes[i] = (char) RND();
                }
                if (kimi_gram_init(&st, q, a) == 0) {
                    for (int i = 0; i < 32 && kimi_gram_feed(&st, bytes + i, 1) == 0; i++) {
                        ran &= st.n <= KIMI_GRAM_MAX_CONFIGS;
                    }
                }
            }
            free(q);
#undef RND
        }
        ok(taken > 100 && ran, "3000 random programs: %d taken, each ran within its"
           " bounds", taken);
    }

    kimi_gram_arena_free(a);
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
