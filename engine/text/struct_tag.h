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
 * or xgrammar's newer form of the same, with its two options:
 *
 *   {"type": "structural_tag", "format": {"type": "triggered_tags",
 *    "triggers": [...], "tags": [{"begin": ..., "content": {"type":
 *    "json_schema", "json_schema": {...}}, "end": ...}, ...],
 *    "at_least_one": false, "stop_after_first": false}}
 *
 * whose tags may also hold {"type": "any_text"} (text up to the end text,
 * which must not be empty), {"type": "const_string", "value": "..."},
 * {"type": "regex", "pattern": "..."} (text the pattern matches, then the
 * end text, not empty: the first place it can close the text, it does) or
 * {"type": "grammar", "grammar": "..."} (GBNF without recursion, as a
 * pattern: ebnf.h);
 * at_least_one: the output may not end before a structure is complete;
 * stop_after_first: it ends with the first structure's end.  Two formats
 * have no free text, only structures: {"type": "tag", "begin", "content",
 * "end"} (the whole output is that one) and {"type": "tags_with_separator",
 * "tags": [...], "separator": "...", "at_least_one", "stop_after_first"}
 * (tags, the separator between two).
 *
 * The gateway compiles the object into int32 words carried after the
 * prompt (the slot's guided words, tagged KIMI_STAG_TAG); the engine
 * checks them and its sampler enforces them (engine/sample/stag_mode.c).
 *
 * Words (w[0..n)):
 *   n_triggers (0 when forced), n_structures, flags (KIMI_STAG_*), the
 *   separator's length and bytes (forced only), then each trigger:
 *   length, its bytes one a word; then each structure: begin length and
 *   bytes, end length and bytes, its content's kind (KIMI_STAG_C_*) and
 *   for JSON its schema program's length and words (json_schema.h), for a
 *   pattern its DFA program's (regex_dfa.h), for a constant its length
 *   and bytes.
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

#define KIMI_STAG_AT_LEAST_ONE  1       /* flags */
#define KIMI_STAG_STOP_AFTER    2
#define KIMI_STAG_FORCED        4       /* structures only, no free text */

enum {                                  /* a structure's content */
    KIMI_STAG_C_JSON = 0,               /* a JSON value by its schema */
    KIMI_STAG_C_TEXT,                   /* any text, up to the end text */
    KIMI_STAG_C_CONST,                  /* one fixed text */
    KIMI_STAG_C_REGEX                   /* text a pattern matches */
};

/* A checked program, pointing into its words */
typedef struct {
    uint32_t        n_trig, n_struct;
    uint32_t        max_trig;                  /* the longest trigger */
    uint32_t        flags;                     /* KIMI_STAG_AT_LEAST_ONE ... */
    const int32_t  *sep;                       /* forced: between two structures */
    uint32_t        sep_len;
    const int32_t  *trig[KIMI_STAG_MAX_TRIGGERS];
    uint32_t        trig_len[KIMI_STAG_MAX_TRIGGERS];
    const int32_t  *begin[KIMI_STAG_MAX_STRUCTS], *end[KIMI_STAG_MAX_STRUCTS];
    uint32_t        begin_len[KIMI_STAG_MAX_STRUCTS];
    uint32_t        end_len[KIMI_STAG_MAX_STRUCTS];
    uint32_t        kind[KIMI_STAG_MAX_STRUCTS];       /* KIMI_STAG_C_* */
    const int32_t  *prog[KIMI_STAG_MAX_STRUCTS];       /* JSON, regex: the program */
    uint32_t        prog_len[KIMI_STAG_MAX_STRUCTS];   /* constant: its bytes */
} kimi_stag_t;

/* Compiles the structural_tag object (its "structures" and "triggers", or
 * its "format"; "type" is the caller's) into *w (malloc'd, *n words).  -1
 * with err saying what is wrong: a structure whose begin starts with no
 * trigger, a begin that is a prefix of another, a schema outside the
 * subset, a format or content other than triggered_tags of json_schema. */
int kimi_stag_compile(const json_t *obj, int32_t **w, size_t *n, char *err,
                      size_t errlen);

/* Checks words from an untrusted place (shared memory) and fills *t.
 * 0 or -1 with err. */
int kimi_stag_view(const int32_t *w, size_t n, kimi_stag_t *t, char *err,
                   size_t errlen);

#endif
