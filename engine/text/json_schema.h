/*
 * JSON Schema for structured output (response_format json_schema, vLLM's
 * guided_json): a subset compiled by the gateway into a flat program of
 * int32 words, carried to the engine after the prompt (the slot's guided
 * words, tagged KIMI_SCHEMA_TAG), checked there and run by the sampler's
 * JSON recogniser (engine/sample/json_mode.c).
 *
 * Program (p[0..n)):
 *   p[0] = n, p[1] = the root node; a node is the index of its first word:
 *   OBJECT  kind, n_props, required bits 0-31, bits 32-63, other keys
 *           (0: none, 1: any object, else the node their values follow:
 *           additionalProperties as a schema), then per property: name_at,
 *           name_len, child (the name JSON-escaped, without quotes: byte
 *           name_at of the program's bytes), then min_keys, max_keys (-1:
 *           no maximum; minProperties / maxProperties: at most n_props
 *           without other keys, 0 and -1 with other keys 1), key_node (0,
 *           or with other keys >= 2 and no properties a STRING node, no
 *           format but a pattern, whose lengths and pattern the other
 *           keys' text follows: propertyNames)
 *   ARRAY   kind, items, min_items, max_items (-1: no maximum), unique
 *           (1: uniqueItems, items an ENUM node, max_items at most its
 *           count of values; 2: uniqueItems, items a STRING node without
 *           max_length or format or an INTEGER node without bounds,
 *           max_items at most KIMI_SCHEMA_MAX_SET)
 *   TUPLE   kind, items after the prefix (-1: none, then max_items is at
 *           most n_prefix), min_items, max_items, n_prefix (1..64), then
 *           the prefix's nodes (prefixItems: item i's schema)
 *   ENUM    kind, n_values, then per value: text_at, text_len (its JSON text)
 *   UNION   kind, n_alts, then the alternatives (first bytes never shared)
 *   UOBJECT an anyOf of objects (or a oneOf of objects told apart by a
 *           discriminator): the OBJECT layout over the union of their
 *           properties (required words 0, not free; no key counts or
 *           key node), then
 *           n_alts (2..32),
 *           per alternative its required bits (two words, over the merged
 *           properties), per property the alternatives having it (a bit
 *           mask), per property 0 or where a table of the alternatives
 *           each value of its ENUM child belongs to starts (one mask a
 *           value or part).  Where alternatives share a property they
 *           give it the same schema, enum values (merged into one ENUM
 *           child), or values that start differently (their parts merged
 *           into one UNION child, the table one mask a part)
 *   STRING  kind, min_length, max_length (-1: no maximum), in code points,
 *           format (KIMI_SF_*: the text's shape, no escapes); with
 *           KIMI_SF_PATTERN a fifth word: where its DFA program starts
 *   INTEGER kind, has_min, min (low word, high word), has_max, max (ditto),
 *           multipleOf (1: any integer; at most 2^31 - 1): inclusive
 *           bounds, |bound| <= 10^18
 *   DECIMAL a number with bounds or a fractional multipleOf: kind, flags
 *           (KIMI_SD_*), scale S (0..9), lo (low word, high word), hi
 *           (ditto): the bounds times 10^S, |bound| * 10^S < 2^62, then
 *           the multipleOf times 10^S (0: none; then at most S decimals
 *           are written); written without an exponent
 *   ANY, NUMBER, BOOLEAN, NULL: kind alone
 *   Node 0 (the header word) stands for "any value" inside containers.
 */

#ifndef KIMI_JSON_SCHEMA_H
#define KIMI_JSON_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define KIMI_SCHEMA_TAG        (-1)     /* first guided word: a program */
/* first guided word: forced tool calls (tool_choice named: one call;
 * required: one to max_calls), then n_pre and the ids before the first
 * call's id (the last of them opens each further call), n_post and the ids
 * after a call's arguments (with more than one call at least two: the
 * last is the section's end, the one before it the call's closer, after
 * which the next call's opener may come instead of the last; DeepSeek's
 * v3 format has the text "\n```" before them), n_never and ids never
 * allowed inside the arguments, max_calls, n_alts, and per function:
 * n_prog and its arguments' program, then for each call index
 * 0..max_calls-1 n_name and its id tokens for that call (Kimi's:
 * "functions.NAME:IDX" and the argument marker) */
#define KIMI_TOOL_CALL_TAG     (-2)
#define KIMI_TOOL_MAX_CALLS    8
#define KIMI_SCHEMA_MAX_PROPS  64
#define KIMI_SCHEMA_MAX_ENUM   64
#define KIMI_SCHEMA_MAX_WORDS  65535    /* nodes fit 16 bits */
#define KIMI_SCHEMA_MAX_DEPTH  16       /* nested containers in the output */
#define KIMI_SCHEMA_MAX_TEXT   1024     /* bytes of a name or enum text */
#define KIMI_SCHEMA_MAX_SET    32       /* items of a uniqueItems array of
                                           strings or integers */

enum {
    KIMI_SN_ANY = 1,
    KIMI_SN_OBJECT,
    KIMI_SN_ARRAY,
    KIMI_SN_STRING,
    KIMI_SN_NUMBER,
    KIMI_SN_INTEGER,
    KIMI_SN_BOOLEAN,
    KIMI_SN_NULL,
    KIMI_SN_ENUM,
    KIMI_SN_UNION,
    KIMI_SN_UOBJECT,
    KIMI_SN_TUPLE,
    KIMI_SN_DECIMAL,
};

#define KIMI_SCHEMA_MAX_UALTS  32       /* objects merged into a UOBJECT */

/* a DECIMAL's bounds: which it has, and which exclude their value */
enum {
    KIMI_SD_LO = 1,
    KIMI_SD_LO_EX = 2,
    KIMI_SD_HI = 4,
    KIMI_SD_HI_EX = 8,
};

/* string formats whose shape is enforced (RFC 3339 date, full-time,
 * date-time; RFC 4122 uuid text) */
enum {
    KIMI_SF_NONE = 0,
    KIMI_SF_DATE,
    KIMI_SF_TIME,
    KIMI_SF_DATE_TIME,
    KIMI_SF_UUID,
    KIMI_SF_PATTERN,           /* "pattern": word 4 of the node is the first
                                  word of its DFA (regex_dfa.h), which runs
                                  over the string's raw text (no escapes) */
};

/* Compiles schema (an object, or true) into *prog (malloc'd, *n words).
 * -1 with err naming the keyword and where (a JSON pointer) when the
 * schema is malformed or uses what the subset lacks. */
int kimi_json_schema_compile(const json_t *schema, int32_t **prog, size_t *n,
                             char *err, size_t errlen);

/* Checks a program from an untrusted place (shared memory): every node
 * reachable from the root in bounds and well formed.  0 or -1 with err. */
int kimi_json_schema_check(const int32_t *p, size_t n, char *err,
                           size_t errlen);

/* Byte b of the program's blob area */
static inline const unsigned char *
kimi_json_schema_bytes(const int32_t *p, int32_t at)
{
    return (const unsigned char *) p + at;
}

#endif
