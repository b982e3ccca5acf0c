/*
 * Regular expressions for structured output (vLLM's guided_regex): the
 * gateway compiles the pattern into a byte-level DFA, carried to the engine
 * as a flat program of int32 words after the prompt (the slot's guided
 * words, tagged KIMI_REGEX_TAG), checked there and walked by the sampler,
 * which masks every token whose bytes would leave the language and allows
 * eos only in an accepting state.  The whole output must match (as vLLM's
 * guided_regex: the pattern is anchored at both ends).
 *
 * Syntax (a Python re / PCRE subset, over UTF-8 text):
 *   literals (a multi-byte character is one atom), . (any character but
 *   \n), [...] and [^...] with characters and ranges (any code points, as
 *   UTF-8 byte sequences) and \d \w \s inside,
 *   \d \w \s \D \W \S, escapes \n \t \r \f \v \0 \xHH \uHHHH and escaped
 *   punctuation, groups (...) (?:...) (?P<name>...) (?<name>...),
 *   alternation |, quantifiers * + ? {m} {m,} {m,n} (m, n <= 256; a lazy
 *   ? after one is accepted: the language is the same), ^ at the very start
 *   and $ at the very end (the match is whole anyway).
 *   Refused with a message naming it: backreferences, lookaround, \b \B \A
 *   \Z, possessive quantifiers, inline flags, POSIX classes, \D \W \S
 *   inside a set, a pattern matching nothing, more than
 *   KIMI_REGEX_MAX_STATES DFA states.
 *
 * Program (p[0..n)):
 *   p[0] = n, p[1] = n_states (state 0 starts), p[2] = n_classes,
 *   p[3 .. 3+64): the class of each byte, four bytes a word (byte b in
 *   bits 8*(b%4) of word b/4), then ceil(n_states/32) words of accepting
 *   bits, then the transitions [n_states][n_classes]: the next state, or
 *   -1 where no match can follow (every state kept can still reach an
 *   accepting one).
 */

#ifndef KIMI_REGEX_DFA_H
#define KIMI_REGEX_DFA_H

#include <stddef.h>
#include <stdint.h>

#define KIMI_REGEX_TAG          (-3)    /* first guided word: a DFA program */
#define KIMI_REGEX_MAX_STATES   2048
#define KIMI_REGEX_MAX_PATTERN  4096    /* bytes */
#define KIMI_REGEX_MAX_REPEAT   256

/* Compiles pattern[0..len) into *prog (malloc'd, *n words).  0, or -1
 * with a message in msg (what and where). */
int kimi_regex_compile(const char *pattern, size_t len, int32_t **prog,
    size_t *n, char *msg, size_t msg_len);

/* The same, with the bytes forbid[b] != 0 never allowed in a match (a
 * JSON string's pattern: no quote, backslash or control byte, so the text
 * needs no escapes); paths through them are dropped before the pruning. */
int kimi_regex_compile_forbid(const char *pattern, size_t len,
    const uint8_t *forbid, int32_t **prog, size_t *n, char *msg,
    size_t msg_len);

/* 0 if p[0..n) is a well-formed program (sizes, classes, targets), else -1
 * with a message: the engine's check of what the gateway sent. */
int kimi_regex_check(const int32_t *p, size_t n, char *msg, size_t msg_len);

/* The state after bytes b[0..len) from state s (-1: dead).  s may be -1. */
int32_t kimi_regex_step(const int32_t *p, int32_t s, const char *b,
    size_t len);

/* 1 if state s (>= 0) accepts. */
int kimi_regex_accepts(const int32_t *p, int32_t s);

/*
 * Grammars with recursion (guided_grammar and structural tags' grammar
 * format, ebnf.h): each rule's body is compiled as a pattern into an NFA
 * of its own over bytes, in which a reference to a rule (\x01 name \x02
 * in the body's text) is a call; the sampler runs the rules as a pushdown
 * automaton (engine/text/gram.c).  Program (p[0..n)), after the
 * KIMI_GRAMMAR_TAG word (a structural tag's GRAM format: without it):
 *   p[0] = n, p[1] = n_states, p[2] = n_rules, p[3] = the start rule,
 *   p[4 .. 4 + n_rules): each rule's first state, then three words a
 *   state: kind | lo << 8 | hi << 16 (KIMI_GRAM_RANGE: bytes lo..hi;
 *   KIMI_GRAM_CALL: rule lo | hi << 8; KIMI_GRAM_EPS; KIMI_GRAM_END: the
 *   rule is complete), out, out2 (-1: none; only EPS has two).
 */
#define KIMI_GRAMMAR_TAG         (-5)
#define KIMI_GRAMMAR_MAX_RULES   256
#define KIMI_GRAMMAR_MAX_STATES  16384

enum { KIMI_GRAM_EPS, KIMI_GRAM_RANGE, KIMI_GRAM_END, KIMI_GRAM_CALL };

int kimi_regex_rtn_compile(const char *const *bodies, const size_t *lens,
    const char *const *names, int n_rules, int root, int32_t **prog,
    size_t *n, char *msg, size_t msg_len);

#endif /* KIMI_REGEX_DFA_H */
