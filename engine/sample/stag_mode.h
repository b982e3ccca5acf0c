/*
 * Structural tags: a byte-level recogniser of free text whose triggers
 * open tagged JSON structures (stag_mode.c; the words: text/struct_tag.h).
 */

#ifndef KIMI_STAG_MODE_H
#define KIMI_STAG_MODE_H

#include <stddef.h>
#include <stdint.h>

#include "json_mode.h"
#include "../text/struct_tag.h"

typedef struct {
    const kimi_stag_t  *t;
    unsigned char       mode;       /* KIMI_STAG_FREE .. KIMI_STAG_END */
    unsigned char       no_ws;      /* JSON without whitespace */
    uint16_t            tail;       /* free text / any text: bytes in recent */
    uint32_t            pos;        /* begin / end: bytes matched */
    uint32_t            which;      /* JSON / end: the structure */
    uint64_t            cand;       /* begin: structures still possible */
    uint32_t            n_done;     /* structures completed */
    int32_t             rx;         /* pattern: its DFA state (-1: no more) */
    uint64_t            ends[4];    /* pattern: bit p = its end's first p
                                       bytes just written, after a match */
    /* free text: its last bytes (as many as the longest trigger); a
     * structure's any text: as many as its end */
    unsigned char       recent[KIMI_STAG_MAX_TEXT];
    kimi_json_state_t   json;
} kimi_stag_state_t;

enum {
    KIMI_STAG_FREE = 0,     /* free text, watching for a trigger */
    KIMI_STAG_BEGIN,        /* inside a begin text, after its trigger */
    KIMI_STAG_JSON,         /* the structure's JSON value */
    KIMI_STAG_TEXT,         /* its any text, which its end text closes */
    KIMI_STAG_CONST,        /* its fixed text */
    KIMI_STAG_REGEX,        /* text its pattern matches, closed by the end */
    KIMI_STAG_END,          /* its end text */
    KIMI_STAG_SEP,          /* forced: the separator before the next */
    KIMI_STAG_DONE          /* stop_after_first, after the first: nothing */
};

void kimi_stag_init(kimi_stag_state_t *s, const kimi_stag_t *t, int no_ws);

/* Copies what a feed can change. */
void kimi_stag_copy(kimi_stag_state_t *dst, const kimi_stag_state_t *src);

/* Feeds bytes: 0 while the text so far can still be completed, -1 (and s
 * is then undefined) otherwise. */
int  kimi_stag_feed(kimi_stag_state_t *s, const char *p, size_t n);

/* A special token (no text of its own) in free text: it breaks a trigger
 * being matched.  -1 inside a structure, where none may come. */
int  kimi_stag_special(kimi_stag_state_t *s);

/* 1 in free text, where special tokens may come. */
int  kimi_stag_is_free(const kimi_stag_state_t *s);

/* 1 where the output may end: free text (after a structure, with
 * at_least_one), or after the first structure with stop_after_first. */
int  kimi_stag_may_end(const kimi_stag_state_t *s);

/* In free text or a structure's any text: 0 if bytes p[0..n) cannot
 * complete a trigger or the end text (none of them ends one), so they are
 * accepted as they are; 1 if they must be fed (always elsewhere). */
int  kimi_stag_must_feed(const kimi_stag_state_t *s, const char *p,
                         size_t n);

#endif
