/*
 * Grammars for structured output (vLLM's guided_grammar, structured_outputs
 * {"grammar": ...}): an EBNF grammar in the GBNF notation xgrammar and
 * llama.cpp read, translated into a pattern of regex_dfa.h's dialect,
 * which the gateway then compiles and the sampler enforces like any
 * guided_regex (a DFA: the fast way).  A grammar whose rules refer back to
 * themselves, directly or through others, describes more than a regular
 * language: it is compiled instead into one NFA a rule with calls between
 * them (kimi_ebnf_to_grammar), which the sampler runs as a pushdown
 * automaton (gram.h); only left recursion is refused.
 *
 * Owns:   the EBNF parser and the translations; nothing of the automata.
 * Never:  guesses: anything outside the notation below is an error naming
 *         the place (line and column).
 *
 * Notation: rules `name ::= alternatives`, the start rule `root`; rule
 * names [A-Za-z0-9_-]; alternatives `a | b`; sequences of elements:
 * "string" (escapes \n \r \t \\ \" \' \[ \] \xHH \uHHHH \UHHHHHHHH),
 * [class] and [^class] with ranges and the same escapes, `.` (any
 * character), a rule name, ( group ); postfix * + ? {m} {m,} {m,n};
 * comments from # to the end of the line.
 */

#ifndef KIMI_EBNF_H
#define KIMI_EBNF_H

#include <stddef.h>
#include <stdint.h>

/* grammar[0..len) -> *pattern (malloc'd, NUL-terminated, *plen bytes).
 * 0, or with a message in msg -1, or -2 when a rule refers back to
 * itself (then kimi_ebnf_to_grammar takes it). */
int kimi_ebnf_to_regex(const char *grammar, size_t len, char **pattern,
    size_t *plen, char *msg, size_t msg_len);

/* The same grammar with recursion allowed: *prog (malloc'd, *n words) is
 * a grammar program (regex_dfa.h, run by gram.h).  Left recursion (a rule
 * that can refer to itself before any text) is refused, naming the rule.
 * 0, or -1 with a message in msg. */
int kimi_ebnf_to_grammar(const char *grammar, size_t len, int32_t **prog,
    size_t *n, char *msg, size_t msg_len);

/* One grammar program for the union of alternatives, each a grammar (the
 * notation above, rules that refer back to themselves too) or a pattern
 * (regex_dfa.h's syntax): a root rule takes exactly one of them, whole;
 * each grammar's rules are renamed apart.  Structural tags' or of texts
 * with such a grammar among them.  0, or -1 with a message in msg. */
typedef struct {
    const char  *text;
    size_t       len;
    int          grammar;           /* 1: EBNF, 0: a pattern */
} kimi_ebnf_alt_t;

int kimi_ebnf_union_to_grammar(const kimi_ebnf_alt_t *alts, int n_alts,
    int32_t **prog, size_t *n, char *msg, size_t msg_len);

#endif /* KIMI_EBNF_H */
