/*
 * Structural tags (vLLM's response_format {"type": "structural_tag"} and
 * structured_outputs.structural_tag, xgrammar's format): a tree of formats
 * the output must follow.
 *
 *   {"type": "structural_tag",
 *    "structures": [{"begin": "<function=get_weather>",
 *                    "schema": {...}, "end": "</function>"}, ...],
 *    "triggers": ["<function="]}
 *
 * (the legacy form: triggered_tags of JSON contents) or xgrammar's newer
 * form, {"type": "structural_tag", "format": F}, where F is one of
 *
 *   {"type": "const_string", "value": "..."}       that text
 *   {"type": "json_schema", "json_schema": {...}}  a JSON value by it
 *   {"type": "regex", "pattern": "..."}            text the pattern matches
 *   {"type": "grammar", "grammar": "..."}          text the GBNF grammar
 *       derives (rules that refer back to themselves too: then run by the
 *       pushdown recogniser of gram.h, not a DFA)
 *   {"type": "any_text"}                           any text
 *   {"type": "sequence", "elements": [F, ...]}     each, one after another
 *   {"type": "or", "elements": [F, ...]}           exactly one of them
 *   {"type": "tag", "begin", "content": F, "end"}  begin, F, end
 *   {"type": "triggered_tags", "triggers", "tags": [tag, ...],
 *    "at_least_one", "stop_after_first"}           free text in which a
 *       trigger opens one of the tags whose begin it starts; at_least_one:
 *       the first tag comes at once (xgrammar); stop_after_first: the
 *       format ends with the first tag
 *   {"type": "tags_with_separator", "tags", "separator", "at_least_one",
 *    "stop_after_first"}                           tags, the separator
 *       between two, nothing else
 *
 * How the recogniser (engine/sample/stag_mode.c) stays deterministic: a
 * text without its own end (any_text, a pattern, triggered_tags' free
 * text) ends where the fixed text after it is first written - the next
 * element's const_string or begin, the enclosing tag's end - or runs to
 * the end of the output when nothing follows; inside a tag, the tag's end
 * may not be written in it (xgrammar's excludes).  Where one of several
 * formats may come next (or, tags_with_separator, an element that may be
 * empty), each must start with a fixed text, none a prefix of another's,
 * and that text decides; but an or of texts alone (const_string, regex,
 * grammar) with a pattern or grammar among them is compiled into one
 * pattern, their union (a REGEX format; a GRAM one when a grammar refers
 * back to itself: kimi_ebnf_union_to_grammar).  What breaks these rules is refused, naming the
 * format: an any_text followed by a JSON value, an or of two JSON schemas,
 * two begins one a prefix of the other, a trigger inside the end text.
 *
 * The gateway compiles the object into int32 words carried after the
 * prompt (the slot's guided words, tagged KIMI_STAG_TAG); the engine
 * checks them (kimi_stag_view: bounds, and the same rules again) and its
 * sampler enforces them.
 *
 * Words (w[0..n)): flags (KIMI_STAG_W_*), the number of formats, then
 * each format in pre-order (a format, then its elements):
 *   its type (KIMI_STAG_N_*), then
 *   CONST:    the text (length, one word a byte)
 *   JSON:     the schema program's length and words (json_schema.h)
 *   REGEX:    the DFA program's length and words (regex_dfa.h)
 *   GRAM:     a grammar with recursion: its program's length and words
 *             (kimi_ebnf_to_grammar; checked by kimi_gram_check)
 *   TEXT:     nothing
 *   SEQ, OR:  the number of elements
 *   TAG:      begin text, end text (its one element: the content)
 *   TRIG:     flags (KIMI_STAG_AT_LEAST_ONE ...), the number of triggers
 *             and each trigger's text, the number of tags (its elements)
 *   SEPTAGS:  flags, the separator's text, the number of tags
 */

#ifndef KIMI_STRUCT_TAG_H
#define KIMI_STRUCT_TAG_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define KIMI_STAG_TAG           (-4)    /* first guided word: structural tags */
#define KIMI_STAG_MAX_TRIGGERS  16
#define KIMI_STAG_MAX_STRUCTS   64      /* tags of one format, elements too */
#define KIMI_STAG_MAX_TEXT      256     /* bytes of any fixed text */
#define KIMI_STAG_MAX_NODES     256     /* formats in one tree */
#define KIMI_STAG_MAX_DEPTH     16      /* formats nested */
#define KIMI_STAG_MAX_ALTS      1024    /* fixed texts in all the choices */
#define KIMI_STAG_MAX_SETS      (3 * KIMI_STAG_MAX_NODES)

#define KIMI_STAG_AT_LEAST_ONE  1       /* TRIG, SEPTAGS flags */
#define KIMI_STAG_STOP_AFTER    2

#define KIMI_STAG_W_LEGACY      1       /* words flags: the structures form */

enum {                                  /* a format's type */
    KIMI_STAG_N_CONST = 0,
    KIMI_STAG_N_JSON,
    KIMI_STAG_N_REGEX,                  /* regex and grammar */
    KIMI_STAG_N_TEXT,                   /* any_text */
    KIMI_STAG_N_SEQ,
    KIMI_STAG_N_OR,
    KIMI_STAG_N_TAG,
    KIMI_STAG_N_TRIG,                   /* triggered_tags */
    KIMI_STAG_N_SEPTAGS,                /* tags_with_separator */
    KIMI_STAG_N_GRAM                    /* a grammar with recursion */
};

enum {                                  /* what writing a fixed text does */
    KIMI_STAG_A_CONST = 0,              /* completes a const_string */
    KIMI_STAG_A_BEGIN,                  /* a tag's begin: its content next */
    KIMI_STAG_A_END,                    /* a tag's end: the tag is complete */
    KIMI_STAG_A_SEP,                    /* a separator: another tag next */
    KIMI_STAG_A_TRIGGER,                /* free text: opens begins */
    KIMI_STAG_A_FORBID                  /* free text: may not be written */
};

/* One fixed text of a choice and where writing it leads: node is the
 * format it belongs to (the const_string, the tag, the tags_with_separator
 * or triggered_tags) */
typedef struct {
    const int32_t  *text;
    uint32_t        len;
    uint16_t        node;
    uint8_t         kind;               /* KIMI_STAG_A_* */
} kimi_stag_alt_t;

/* A choice: alts[first .. first + n); eof: the output may end instead */
typedef struct {
    uint32_t        first;
    uint16_t        n;
    uint8_t         eof;
    uint16_t        max_len;            /* the longest text */
} kimi_stag_set_t;

#define KIMI_STAG_NO_SET  0xffff

typedef struct {
    uint8_t         type;               /* KIMI_STAG_N_* */
    uint8_t         flags;              /* TRIG, SEPTAGS */
    uint8_t         depth;              /* root: 0 */
    uint8_t         nullable;           /* may match no text */
    uint16_t        parent;             /* root: KIMI_STAG_MAX_NODES */
    uint16_t        index;              /* among its parent's elements */
    uint16_t        n_child;
    uint16_t        child;              /* its first in t->children */
    const int32_t  *text;               /* CONST value, TAG begin, separator;
                                           TRIG: its first trigger (each a
                                           length, then bytes) */
    uint32_t        len;                /* TRIG: the number of triggers */
    const int32_t  *end;                /* TAG end */
    uint32_t        end_len;
    const int32_t  *prog;               /* JSON, REGEX, GRAM: the program */
    uint32_t        prog_len;
    /* the choices (sets) it owns, or KIMI_STAG_NO_SET:
     *   CONST:   [0] its text
     *   TAG:     [0] begin, [1] end
     *   OR:      [0] the first texts of its elements
     *   TRIG:    [0] the begins, [1] its free text's triggers, the texts
     *            that end it and the end it may not hold
     *   SEPTAGS: [0] at its start, [1] after a tag, [2] after a separator
     *   TEXT:    [1] the texts that end it, and what it may not hold
     *   REGEX, GRAM: [1] the one text that ends it, or eof */
    uint16_t        set[3];
} kimi_stag_node_t;

/* A checked program, pointing into its words */
typedef struct {
    uint32_t          flags;            /* KIMI_STAG_W_* */
    uint32_t          n_node, n_alt, n_set;
    kimi_stag_node_t  node[KIMI_STAG_MAX_NODES];
    uint16_t          children[KIMI_STAG_MAX_NODES];
    kimi_stag_set_t   set[KIMI_STAG_MAX_SETS];
    kimi_stag_alt_t   alt[KIMI_STAG_MAX_ALTS];
} kimi_stag_t;

/* Compiles the structural_tag object (its "structures" and "triggers", or
 * its "format"; "type" is the caller's) into *w (malloc'd, *n words).  -1
 * with err saying what is wrong and where (format.elements[1].content):
 * a type or option not supported, a schema, pattern or grammar outside
 * the subsets, a combination the recogniser could not follow (above). */
int kimi_stag_compile(const json_t *obj, int32_t **w, size_t *n, char *err,
                      size_t errlen);

/* Checks words from an untrusted place (shared memory) and fills *t (the
 * choices computed from the tree).  0 or -1 with err. */
int kimi_stag_view(const int32_t *w, size_t n, kimi_stag_t *t, char *err,
                   size_t errlen);

/* The format's place in the request, as "format.elements[1].content" */
void kimi_stag_path(const kimi_stag_t *t, uint32_t node, char *buf,
                    size_t len);

#endif
