/*
 * Structural tags (vLLM's response_format {"type": "structural_tag"} and
 * structured_outputs.structural_tag, xgrammar's format): free text in
 * which every trigger starts a tagged structure, the rest of one of the
 * begin texts that start with it, a JSON value its schema describes, then
 * its end text, after which free text goes on.
 *
 *   {"type": "structural_tag",
 *    "structures": [{"begin": "<function=get_weather>",
 *                    "schema": {...}, "end": "</function>"}, ...],
 *    "triggers": ["<function="]}
 *
 * The gateway compiles the object into int32 words carried after the
 * prompt (the slot's guided words, tagged KIMI_STAG_TAG); the engine
 * checks them and its sampler enforces them (engine/sample/stag_mode.c).
 *
 * Words (w[0..n)):
 *   n_triggers, n_structures, then each trigger: length, its bytes one a
 *   word; then each structure: begin length and bytes, end length and
 *   bytes, its schema program's length and words (json_schema.h).
 */

#ifndef KIMI_STRUCT_TAG_H
#define KIMI_STRUCT_TAG_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define KIMI_STAG_TAG           (-4)    /* first guided word: structural tags */
#define KIMI_STAG_MAX_TRIGGERS  16
#define KIMI_STAG_MAX_STRUCTS   64
#define KIMI_STAG_MAX_TEXT      256     /* bytes of a trigger, begin or end */

/* A checked program, pointing into its words */
typedef struct {
    uint32_t        n_trig, n_struct;
    uint32_t        max_trig;                  /* the longest trigger */
    const int32_t  *trig[KIMI_STAG_MAX_TRIGGERS];
    uint32_t        trig_len[KIMI_STAG_MAX_TRIGGERS];
    const int32_t  *begin[KIMI_STAG_MAX_STRUCTS], *end[KIMI_STAG_MAX_STRUCTS];
    uint32_t        begin_len[KIMI_STAG_MAX_STRUCTS];
    uint32_t        end_len[KIMI_STAG_MAX_STRUCTS];
    const int32_t  *prog[KIMI_STAG_MAX_STRUCTS];
    uint32_t        prog_len[KIMI_STAG_MAX_STRUCTS];
} kimi_stag_t;

/* Compiles the structural_tag object (its "structures" and "triggers";
 * "type" is the caller's) into *w (malloc'd, *n words).  -1 with err
 * saying what is wrong: a structure whose begin starts with no trigger, a
 * begin that is a prefix of another, a schema outside the subset. */
int kimi_stag_compile(const json_t *obj, int32_t **w, size_t *n, char *err,
                      size_t errlen);

/* Checks words from an untrusted place (shared memory) and fills *t.
 * 0 or -1 with err. */
int kimi_stag_view(const int32_t *w, size_t n, kimi_stag_t *t, char *err,
                   size_t errlen);

#endif
