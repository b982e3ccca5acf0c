/*
 * JSON mode and structured output: a byte-level recogniser of one JSON
 * object, or of a value a schema program describes (json_mode.c).
 */

#ifndef KIMI_JSON_MODE_H
#define KIMI_JSON_MODE_H

#include <stddef.h>
#include <stdint.h>

#include "../text/json_schema.h"

#define KIMI_JSON_MAX_DEPTH  32
/* whitespace bytes in a row outside strings: a model may otherwise emit
 * whitespace forever (as OpenAI's JSON mode warns) */
#define KIMI_JSON_MAX_WS     16

/* frame.prop of a key no property names (additionalProperties) */
#define KIMI_JSON_FREE_PROP  0xffff

/* A container under a schema: which node, and how far it got */
typedef struct {
    uint16_t       node;       /* its program node; 0: any content */
    uint16_t       prop;       /* object: the property being read */
    uint32_t       count;      /* array: items so far; object: keys */
    uint64_t       seen;       /* object: properties written (a dict counted
                                  by minProperties >= 2: its keys' hashes, two
                                  bits a key, so none is written twice) */
    uint32_t       alts;       /* a UOBJECT: its alternatives still open */
} kimi_json_frame_t;

typedef struct {
    unsigned char  state;
    unsigned char  num;        /* number sub-state */
    unsigned char  lit;        /* literal bytes matched / \u digits seen */
    unsigned char  which;      /* literal: 0 true, 1 false, 2 null */
    unsigned char  key;        /* the string is an object key */
    unsigned char  depth;
    unsigned char  ws;         /* whitespace bytes in a row */
    unsigned char  max_ws;     /* and at most (KIMI_JSON_MAX_WS, or 0) */
    unsigned char  intonly;    /* the number is a schema integer */
    unsigned char  ucont;      /* UTF-8 continuation bytes still due */
    unsigned char  ulo, uhi;   /* the range of the next one */
    unsigned char  stack[KIMI_JSON_MAX_DEPTH];   /* '{' or '[' */

    /* structured output (kimi_json_init_schema): the program, the node
     * the next value must match, a key or enum value being matched (the
     * candidates still possible and the bytes read) */
    const int32_t *prog;
    uint16_t       expect;
    uint16_t       pos;
    uint16_t       enode;
    uint16_t       snode;      /* the string value's node (lengths), or 0 */
    uint32_t       slen;       /* its code points so far */
    int32_t        pstate;     /* its pattern's DFA state (KIMI_SF_PATTERN) */
    unsigned char  fphase;     /* a formatted string: the part being read */
    unsigned char  fpos;       /* and the position in its fixed text */
    unsigned char  fprev;      /* the byte before (a two-digit field) */
    unsigned char  fmonth;     /* a date's month and year so far */
    uint16_t       fyear;
    uint16_t       inode;      /* a bounded integer's node, or 0 */
    unsigned char  nneg;       /* and its sign, digits and value so far */
    unsigned char  ndig;
    uint64_t       nval;
    uint16_t       dnode;      /* a bounded number's node (DECIMAL), or 0 */
    unsigned char  fdig;       /* and its fraction digits (at most 255) */
    unsigned char  ftail;      /* a nonzero one past its scale */
    uint64_t       fval;       /* its first S fraction digits */
    uint64_t       cand;
    unsigned char  kfree;      /* the key may be one no property names (an
                                  object's additionalProperties schema) */
    uint32_t       khash;      /* and its bytes' hash (FNV-1a) so far */
    /* the uniqueItems array of strings or integers open (at most one: its
     * items hold no containers): how many items it holds (their hashes in
     * hset, after the frames: a copy takes only those), and the hash of
     * the one being read */
    unsigned char  hn;
    unsigned char  hitem;      /* the value being read is one of its items */
    uint32_t       hhash;
    kimi_json_frame_t  frame[KIMI_SCHEMA_MAX_DEPTH];
    uint32_t       hset[KIMI_SCHEMA_MAX_SET];
} kimi_json_state_t;

void kimi_json_init(kimi_json_state_t *s);

/* The output must match the schema program prog (checked with
 * kimi_json_schema_check): an object or array at the top. */
void kimi_json_init_schema(kimi_json_state_t *s, const int32_t *prog);

/* No whitespace outside strings (vLLM's disable_any_whitespace); after an
 * init. */
void kimi_json_no_ws(kimi_json_state_t *s);

/* Copies what a feed can change (the frames in use only). */
void kimi_json_copy(kimi_json_state_t *dst, const kimi_json_state_t *src);

/* Feeds bytes: 0 while the text so far is a prefix of a JSON object
 * (with surrounding whitespace), -1 (and s is then undefined) otherwise. */
int  kimi_json_feed(kimi_json_state_t *s, const char *p, size_t n);

/* 1 once the object is complete (only whitespace may follow). */
int  kimi_json_done(const kimi_json_state_t *s);

/* 1 inside a string with no escape or UTF-8 sequence pending and no length
 * limit: any complete, valid UTF-8 text without control bytes, '"' and
 * '\\' is accepted as is (the sampler's fast path). */
int  kimi_json_in_string(const kimi_json_state_t *s);

/* 1 if bytes p[0..n) may follow as they are where kimi_json_in_string
 * holds: complete, valid UTF-8 with no control byte, '"' or '\\'. */
int  kimi_json_plain_text(const char *p, size_t n);

#endif
