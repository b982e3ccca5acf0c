/*
 * Structural tags: a byte-level recogniser of a tree of formats - fixed
 * texts, JSON values, patterns, any text, free text whose triggers open
 * tags - (stag_mode.c; the words and the rules: text/struct_tag.h).
 */

#ifndef KIMI_STAG_MODE_H
#define KIMI_STAG_MODE_H

#include <stddef.h>
#include <stdint.h>

#include "json_mode.h"
#include "../text/gram.h"
#include "../text/struct_tag.h"

typedef struct {
    const kimi_stag_t  *t;
    unsigned char       mode;       /* KIMI_STAG_FREE .. KIMI_STAG_DONE */
    unsigned char       no_ws;      /* JSON without whitespace */
    uint16_t            tail;       /* free / any text: bytes in recent */
    uint16_t            depth;      /* formats open: stack[0 .. depth) */
    uint16_t            set;        /* fixed text: the choice */
    uint32_t            pos;        /* and its bytes matched */
    uint64_t            cand;       /* and its texts still possible */
    int32_t             rx;         /* pattern: its DFA state (-1: no more);
                                       grammar: -1 once it refused a byte */
    uint64_t            ends[4];    /* pattern: bit p = the text after it
                                       has its first p bytes just written,
                                       after a match */
    /* the open formats, stack[d] the one at depth d; the top one is the
     * format being read (a JSON value, a pattern, any text, free text) or
     * the parent of the fixed text being read */
    uint16_t            stack[KIMI_STAG_MAX_DEPTH];
    /* free text / any text: its last bytes (as many as the longest text
     * that may end it) */
    unsigned char       recent[KIMI_STAG_MAX_TEXT];
    kimi_json_state_t   json;
    kimi_gram_arena_t  *arena;      /* grammars with recursion: their stacks */
    kimi_gram_state_t   gram;
} kimi_stag_state_t;

enum {
    KIMI_STAG_FREE = 0,     /* triggered_tags' free text */
    KIMI_STAG_LIT,          /* a fixed text, one of a choice's */
    KIMI_STAG_JSON,         /* a JSON value */
    KIMI_STAG_TEXT,         /* any text, which the text after it ends */
    KIMI_STAG_REGEX,        /* text a pattern matches, ended likewise */
    KIMI_STAG_DONE,         /* the whole format is complete: nothing */
    KIMI_STAG_GRAM          /* text a grammar with recursion derives,
                               ended as a pattern's */
};

/* arena: for the grammars with recursion (kimi_stag_has_gram), emptied
 * here; NULL where there are none (such a grammar then accepts nothing). */
void kimi_stag_init(kimi_stag_state_t *s, const kimi_stag_t *t, int no_ws,
    kimi_gram_arena_t *arena);

/* 1 if some format is a grammar with recursion (needs an arena). */
int  kimi_stag_has_gram(const kimi_stag_t *t);

/* Copies what a feed can change.  A trial feed of the copy may add stack
 * nodes to the arena: kimi_gram_mark / kimi_gram_rewind around it. */
void kimi_stag_copy(kimi_stag_state_t *dst, const kimi_stag_state_t *src);

/* Feeds bytes: 0 while the text so far can still be completed, -1 (and s
 * is then undefined) otherwise. */
int  kimi_stag_feed(kimi_stag_state_t *s, const char *p, size_t n);

/* A special token (no text of its own) in free text: it breaks a trigger
 * being matched.  -1 anywhere else, where none may come. */
int  kimi_stag_special(kimi_stag_state_t *s);

/* 1 in triggered_tags' free text, where special tokens may come. */
int  kimi_stag_is_free(const kimi_stag_state_t *s);

/* 1 where the output may end: the format is complete, or what is left of
 * it may be empty. */
int  kimi_stag_may_end(const kimi_stag_state_t *s);

/* In free text or any text: 0 if bytes p[0..n) cannot complete a text
 * that ends it, a trigger or an end it may not hold (none of them ends
 * one), so they are accepted as they are; 1 if they must be fed (always
 * elsewhere). */
int  kimi_stag_must_feed(const kimi_stag_state_t *s, const char *p,
                         size_t n);

#endif
