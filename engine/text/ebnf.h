/*
 * Grammars for structured output (vLLM's guided_grammar, structured_outputs
 * {"grammar": ...}): an EBNF grammar in the GBNF notation xgrammar and
 * llama.cpp read, translated into a pattern of regex_dfa.h's dialect,
 * which the gateway then compiles and the sampler enforces like any
 * guided_regex.  So only grammars that describe a regular language are
 * taken: a rule that refers back to itself, directly or through others, is
 * refused with a message naming the cycle (a context-free grammar needs a
 * pushdown automaton this server does not have).
 *
 * Owns:   the EBNF parser and the translation; nothing of the DFA.
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

/* grammar[0..len) -> *pattern (malloc'd, NUL-terminated, *plen bytes).
 * 0, or -1 with a message in msg. */
int kimi_ebnf_to_regex(const char *grammar, size_t len, char **pattern,
    size_t *plen, char *msg, size_t msg_len);

#endif /* KIMI_EBNF_H */
