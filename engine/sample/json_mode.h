/*
 * JSON mode: a byte-level recogniser of one JSON object (json_mode.c).
 */

#ifndef KIMI_JSON_MODE_H
#define KIMI_JSON_MODE_H

#include <stddef.h>

#define KIMI_JSON_MAX_DEPTH  32
/* whitespace bytes in a row outside strings: a model may otherwise emit
 * whitespace forever (as OpenAI's JSON mode warns) */
#define KIMI_JSON_MAX_WS     16

typedef struct {
    unsigned char  state;
    unsigned char  num;        /* number sub-state */
    unsigned char  lit;        /* literal bytes matched / \u digits seen */
    unsigned char  which;      /* literal: 0 true, 1 false, 2 null */
    unsigned char  key;        /* the string is an object key */
    unsigned char  depth;
    unsigned char  ws;         /* whitespace bytes in a row */
    unsigned char  stack[KIMI_JSON_MAX_DEPTH];   /* '{' or '[' */
} kimi_json_state_t;

void kimi_json_init(kimi_json_state_t *s);

/* Feeds bytes: 0 while the text so far is a prefix of a JSON object
 * (with surrounding whitespace), -1 (and s is then undefined) otherwise. */
int  kimi_json_feed(kimi_json_state_t *s, const char *p, size_t n);

/* 1 once the object is complete (only whitespace may follow). */
int  kimi_json_done(const kimi_json_state_t *s);

/* 1 inside a string with no escape pending: any byte >= 0x20 but '"' and
 * '\\' is accepted as is (the sampler's fast path). */
int  kimi_json_in_string(const kimi_json_state_t *s);

#endif
