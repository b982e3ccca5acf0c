/*
 * GBNF grammars (guided_grammar) translated into regex_dfa.h patterns: each
 * grammar below is translated and compiled, then strings of its language
 * must reach an accepting state and strings outside it must not; grammars
 * outside the supported notation are refused with a message saying why
 * and where, and so are those with recursion here (-2: test_gram.c runs
 * them through the pushdown automaton).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/ebnf.h"
#include "text/regex_dfa.h"

#include "tap.h"


typedef struct {
    const char  *grammar;
    const char  *in[4];                   /* in the language */
    const char  *out[4];                  /* not */
} case_t;


static int
accepts(const int32_t *prog, const char *s)
{
    int32_t  st = kimi_regex_step(prog, 0, s, strlen(s));

    return st >= 0 && kimi_regex_accepts(prog, st);
}


int
main(void)
{
    static const case_t  cases[] = {
        { "root ::= select\n"
          "select ::= \"SELECT \" column \" from \" table\n"
          "column ::= \"a\" | \"b\"   # two columns\n"
          "table ::= \"t\" [0-9]\n",
          { "SELECT a from t1", "SELECT b from t9" },
          { "SELECT c from t1", "SELECT a from t", "select a from t1" } },
        { "root ::= [a-z]+ (\",\" [a-z]+)*",
          { "a", "ab,cd,e" }, { "", "ab,", ",a", "aB" } },
        { "root ::= \"\" | \"x\"{2,3}",
          { "", "xx", "xxx" }, { "x", "xxxx" } },
        { "root ::= [^\\n\"]{2} \".\" .",
          { "ab.\n", "x .z" }, { "a\n.z", "ab.", "a\".z" } },
        { "root ::= \"\\u00e9\"+ [\\x41-\\x43] '\\'' \"\\\\\"",
          { "\xc3\xa9" "A'\\", "\xc3\xa9\xc3\xa9" "C'\\" },
          { "eA'\\", "\xc3\xa9" "D'\\" } },
        { "root ::= (a | b)? c\na ::= \"1\"\nb ::= \"2\" a\nc ::= [*+?(){}|]",
          { "*", "1+", "21{" }, { "12*", "2*" } },
        { "root ::= \"\xe6\x97\xa5\" [\xe4\xb8\x80-\xe9\xbe\xa5]{1,2}",
          { "\xe6\x97\xa5\xe6\x9c\xac", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e" },
          { "\xe6\x97\xa5", "\xe6\x97\xa5" "a" } },
    };
    static const struct {
        const char  *grammar;
        const char  *says;
    } bad[] = {
        { "root ::= \"(\" root \")\" | \"x\"", "refers back to itself (root -> root)" },
        { "root ::= a\na ::= b\nb ::= \"x\" a?", "(root -> a -> b -> a)" },
        { "root ::= item", "\"item\", which is not defined" },
        { "rule ::= \"a\"", "no \"root\" rule" },
        { "root ::= \"a\"\nroot ::= \"b\"", "defined twice" },
        { "root ::= \"a\"\n  \"b\" )", "line 2 column 7: unexpected ')'" },
        { "start: \"a\"", "expected ::=" },
        { "root ::= \"abc", "unterminated" },
        { "root ::= [z-a]", "out of order" },
        { "root ::= []", "empty character class" },
        { "root ::= \"\\q\"", "unknown escape" },
        { "root ::= \"a\"{3,1}", "out of order" },
        { "root ::= \"a\"{300}", "up to 256" },
        { "root ::= (\"a\"", "closing )" },
        { "root ::= \"\xc0\xaf\"", "invalid UTF-8" },       /* overlong */
        { "root ::= \"\xed\xa0\x80\"", "invalid UTF-8" },   /* surrogate */
        { "root ::= \"\xf4\x90\x80\x80\"", "invalid UTF-8" }, /* > U+10FFFF */
        { "root ::= [\xe6\x97]", "invalid UTF-8" },           /* truncated */
    };
    char      msg[512], *pat;
    size_t    plen, n;
    int32_t  *prog;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const case_t  *c = &cases[i];
        int            good = 1;

        if (kimi_ebnf_to_regex(c->grammar, strlen(c->grammar), &pat, &plen,
                               msg, sizeof(msg)) != 0)
        {
            ok(0, "grammar %zu translates: %s", i, msg);
            continue;
        }

        if (kimi_regex_compile(pat, plen, &prog, &n, msg, sizeof(msg)) != 0) {
            ok(0, "grammar %zu's pattern compiles: %s (%s)", i, msg, pat);
            free(pat);
            continue;
        }

        for (int k = 0; k < 4 && c->in[k] != NULL; k++) {
            if (!accepts(prog, c->in[k])) {
                good = 0;
                printf("# grammar %zu rejects \"%s\" (pattern %s)\n", i, c->in[k],
                     pat);
            }
        }

        for (int k = 0; k < 4 && c->out[k] != NULL; k++) {
            if (accepts(prog, c->out[k])) {
                good = 0;
                printf("# grammar %zu accepts \"%s\" (pattern %s)\n", i,
                     c->out[k], pat);
            }
        }

        ok(good, "grammar %zu: its language and nothing else", i);
        free(pat);
        free(prog);
    }

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int  rc = kimi_ebnf_to_regex(bad[i].grammar, strlen(bad[i].grammar),
                                     &pat, &plen, msg, sizeof(msg));

        ok(rc != 0 && pat == NULL && strstr(msg, bad[i].says) != NULL,
           "refused: %s", rc != 0 ? msg : "(translated)");
    }

    printf("1..%d\n", test_n);
    return test_failed != 0;
}
