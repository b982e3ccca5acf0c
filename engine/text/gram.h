/*
 * Grammars with recursion for structured output (guided_grammar whose
 * rules refer back to themselves: ebnf.h): the program of
 * kimi_regex_rtn_compile (regex_dfa.h), one NFA a rule with calls between
 * them, run as a pushdown automaton over the output's bytes.
 *
 * A configuration is an NFA state that reads a byte (a RANGE) and the
 * stack of states to return to; the recogniser holds every configuration
 * the text so far can be in (the grammar may be ambiguous), each stack a
 * node of an arena shared by equal tails (hash-consed, so equal
 * configurations are one and copies are cheap).
 *
 * Owns:   the program's check (bounds, every call's rule, no left
 *         recursion: a rule that can call itself before reading a byte),
 *         its pruning after a compile (what can never end is never
 *         offered), the recogniser and its arena.
 * Never:  grows without bound: at most KIMI_GRAM_MAX_CONFIGS
 *         configurations, KIMI_GRAM_MAX_DEPTH nested calls and
 *         KIMI_GRAM_MAX_NODES stack nodes; text that would need more is
 *         refused, so the output stays in the grammar's language and only
 *         nesting deeper than that is out of reach.
 */

#ifndef KIMI_GRAM_H
#define KIMI_GRAM_H

#include <stddef.h>
#include <stdint.h>

#define KIMI_GRAM_MAX_CONFIGS  128
#define KIMI_GRAM_MAX_DEPTH    64
#define KIMI_GRAM_MAX_NODES    (1u << 20)

typedef struct kimi_gram_arena  kimi_gram_arena_t;

typedef struct {
    int32_t  state;                /* a RANGE state */
    int32_t  stack;                /* arena node; 0: the root's own level */
} kimi_gram_cfg_t;

typedef struct {
    const int32_t      *prog;      /* after the tag word: p[0] = length */
    kimi_gram_arena_t  *arena;
    uint32_t            n;
    int                 accept;    /* the root rule may end here */
    kimi_gram_cfg_t     cfg[KIMI_GRAM_MAX_CONFIGS];
} kimi_gram_state_t;

/* 0 if p[0..n) is a well-formed grammar program without left recursion,
 * else -1 with a message (the gateway's compile and the engine's check). */
int  kimi_gram_check(const int32_t *p, size_t n, char *msg, size_t msg_len);

/* After a compile: every state from which its rule can no longer end
 * (calls into rules that never end, loops without a way out) becomes a
 * dead end, so the recogniser never offers text that cannot complete;
 * -1 with a message when the root rule itself never ends. */
int  kimi_gram_prune(int32_t *p, size_t n, char *msg, size_t msg_len);

/* An arena for one sampler (reused; NULL on out of memory). */
kimi_gram_arena_t *kimi_gram_arena_new(void);
void kimi_gram_arena_free(kimi_gram_arena_t *a);

/* The state before any text (the arena emptied first): 0, or -1 when it
 * ran out of arena.  kimi_gram_start: the same without emptying the
 * arena, for a grammar that starts after others in one output (structural
 * tags: the stacks of states made before stay valid); kimi_gram_clear
 * empties it. */
int  kimi_gram_init(kimi_gram_state_t *s, const int32_t *prog,
    kimi_gram_arena_t *a);
int  kimi_gram_start(kimi_gram_state_t *s, const int32_t *prog,
    kimi_gram_arena_t *a);
void kimi_gram_clear(kimi_gram_arena_t *a);

/* 1 if the root rule matches the empty text (a checked program). */
int  kimi_gram_nullable(const int32_t *prog);

/* Feeds bytes: 0 while the text so far is a prefix of a sentence (or a
 * whole one), -1 otherwise (s is then undefined). */
int  kimi_gram_feed(kimi_gram_state_t *s, const char *p, size_t n);

/* Copies what a feed changes (the configurations in use). */
void kimi_gram_copy(kimi_gram_state_t *dst, const kimi_gram_state_t *src);

/* 1 when the text so far is a whole sentence; 1 from kimi_gram_more when
 * some byte may still follow. */
int  kimi_gram_accepts(const kimi_gram_state_t *s);
int  kimi_gram_more(const kimi_gram_state_t *s);

/* The arena's size now, and back to it: nodes a trial feed made are
 * dropped (feeds from states made before the mark stay valid). */
uint32_t kimi_gram_mark(const kimi_gram_arena_t *a);
void kimi_gram_rewind(kimi_gram_arena_t *a, uint32_t mark);

#endif /* KIMI_GRAM_H */
