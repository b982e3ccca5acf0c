/*
 * JSON Schema subset -> the sampler's program (json_schema.h), and the
 * engine's check of a program it receives.
 *
 * Owns:   which schemas are accepted and what each compiles to; the
 *         program's bounds check.
 * Never:  runs a program (engine/sample/json_mode.c does); accepts a
 *         keyword it would not enforce: the output always satisfies the
 *         schema, so anything outside the subset is an error, never
 *         skipped.
 *
 * The subset: type (one or a list), properties, required,
 * additionalProperties (true/false, or a schema other keys' values follow:
 * such a key is written without escapes), minProperties/maxProperties
 * (keys counted; a dict counted by a minimum writes no key twice; a
 * maximum beside required is refused), propertyNames as an enum or const
 * of names (those names as optional properties) or as a string's
 * minLength, maxLength and pattern (a dict's keys, which are written
 * without escapes), patternProperties of one pattern (its keys only: as
 * additionalProperties with the pattern in propertyNames), items, prefixItems (tuples;
 * draft 7's items list too), minItems, maxItems, uniqueItems over enum
 * values (a set of Literals or of an Enum), over strings without a
 * maximum length or shape and over integers (a Set[str] or Set[int]: up
 * to KIMI_SCHEMA_MAX_SET items, remembered by hash; such strings are
 * written without escapes; bounded integers as the enum of their values,
 * at most 64),
 * minLength/maxLength (in code points; an escape is one, a \u surrogate
 * pair two), format date/time/date-time/uuid (the shape: digits and
 * separators where RFC 3339 and RFC 4122 put them), email/hostname/
 * ipv4/ipv6/uri/duration (a pattern of their shape) and password/binary
 * (no syntax: any string), pattern (a regex_dfa.h
 * DFA over the raw text, which then holds no escapes), integer bounds
 * (minimum, maximum, exclusive ones; within +-10^18) and multipleOf (a
 * whole number up to 2^31 - 1; a number with one is an integer), number
 * bounds and a fractional multipleOf (at
 * most 9 decimals; the number then written without an exponent), enum,
 * const, allOf (the members' keywords merged into one schema: types
 * intersect, bounds tighten, enums intersect, required adds up, a name's
 * schemas meet; a $ref with keywords beside it the same), anyOf/oneOf
 * whose alternatives start with different bytes (an
 * anyOf's alternatives that another takes whole dropped first; their
 * objects merged into one node that keys and const/enum values narrow,
 * a oneOf's only when a discriminator tells them apart), local
 * $ref into $defs/definitions (recursion allowed), and annotations (title,
 * description, default, examples, $schema, $id, $comment, deprecated,
 * readOnly, writeOnly, and the content vocabulary's contentMediaType and
 * contentEncoding, which JSON Schema never asserts).  Objects carry
 * only their listed properties, in any order, each at most once; a schema
 * without properties takes any object (or, with additionalProperties a
 * schema, keys of any name).  Strings, numbers and enum values
 * are written in one canonical form (integers as plain digits).
 */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regex_dfa.h"

#include "json_schema.h"


typedef struct {
    int32_t       *w;
    size_t         n, cap;
    const json_t  *root;
    const json_t  *memo_schema[256];
    int32_t        memo_node[256];
    size_t         n_memo;
    int            depth;
    char           path[256];
    char          *err;
    size_t         errlen;
    json_t        *owned;          /* allOf's merged schemas, alive until
                                      the program is built */
} kimi_sc_t;


static int
kimi_sc_fail(kimi_sc_t *c, const char *fmt, ...)
{
    va_list  ap;
    size_t   at;

    at = (size_t) snprintf(c->err, c->errlen, "at \"%s\": ",
                           c->path[0] ? c->path : "/");
    if (at < c->errlen) {
        va_start(ap, fmt);
        vsnprintf(c->err + at, c->errlen - at, fmt, ap);
        va_end(ap);
    }
    return -1;
}


/* room for k more words; the index of the first */
static int32_t
kimi_sc_alloc(kimi_sc_t *c, size_t k)
{
    int32_t  *w;
    size_t    cap;

    if (c->n + k > KIMI_SCHEMA_MAX_WORDS) {
        return kimi_sc_fail(c, "the schema is too large (over %d words"
                            " compiled)", KIMI_SCHEMA_MAX_WORDS);
    }
    if (c->n + k > c->cap) {
        cap = c->cap ? c->cap * 2 : 256;
        while (cap < c->n + k) {
            cap *= 2;
        }
        w = realloc(c->w, cap * sizeof(int32_t));
        if (w == NULL) {
            return kimi_sc_fail(c, "out of memory");
        }
        c->w = w;
        c->cap = cap;
    }
    memset(c->w + c->n, 0, k * sizeof(int32_t));
    c->n += k;
    return (int32_t) (c->n - k);
}


/* bytes into the blob area: their byte offset */
static int32_t
kimi_sc_bytes(kimi_sc_t *c, const char *b, size_t len)
{
    int32_t  at;

    at = kimi_sc_alloc(c, (len + 3) / 4);
    if (at < 0) {
        return -1;
    }
    memcpy(c->w + at, b, len);
    return at * 4;
}


/* the canonical JSON text of v into the blob: *at, *len */
static int
kimi_sc_text(kimi_sc_t *c, const json_t *v, int key, int32_t *at,
    int32_t *len)
{
    char    *t;
    size_t   n;

    t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (t == NULL) {
        return kimi_sc_fail(c, "a value cannot be encoded");
    }
    n = strlen(t);
    if (key) {                         /* a name: without its quotes */
        memmove(t, t + 1, n - 2);
        n -= 2;
    }
    if (n > KIMI_SCHEMA_MAX_TEXT) {
        free(t);
        return kimi_sc_fail(c, "a name or value longer than %d bytes",
                            KIMI_SCHEMA_MAX_TEXT);
    }
    *len = (int32_t) n;
    *at = kimi_sc_bytes(c, t, n);
    free(t);
    return *at < 0 ? -1 : 0;
}


static size_t
kimi_sc_push(kimi_sc_t *c, const char *seg)
{
    size_t  was = strlen(c->path);

    snprintf(c->path + was, sizeof(c->path) - was, "/%s", seg);
    return was;
}


static int kimi_sc_node(kimi_sc_t *c, const json_t *s, int32_t *node);


/* formats held to a shape by a pattern: email as HTML's "valid e-mail
 * address" (what pydantic's EmailStr takes, without quoted local parts),
 * hostname by RFC 1123's labels, ipv4 dotted decimal, uri an absolute
 * URI of RFC 3986's characters (a scheme, ':', then no space), ipv6 in
 * RFC 4291's hexadecimal forms (every "::" form; no IPv4 tail, whose
 * DFA would be 27K words against 1.5K: the output only needs to be one
 * valid address; no zone), duration by RFC 3339's ISO 8601 rule (whole numbers, as it has them) */
static const char *const  kimi_sc_format_shapes[][2] = {
    { "email", "^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*"
               "[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$" },
    { "hostname", "^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\\.[A-Za-z0-9]"
                  "(?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$" },
    { "ipv4", "^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}"
              "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$" },
    { "uri", "^[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9._~:/?#@!$&'()*+,;=%\\[\\]-]+$" },
    { "ipv6", "^(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}"
              ":){1,7}:|(?:[0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa"
              "-f]{1,4}:){1,5}(?::[0-9A-Fa-f]{1,4}){1,2}|(?:[0-9A-Fa-f]{1,4}:){"
              "1,4}(?::[0-9A-Fa-f]{1,4}){1,3}|(?:[0-9A-Fa-f]{1,4}:){1,3}(?::[0-"
              "9A-Fa-f]{1,4}){1,4}|(?:[0-9A-Fa-f]{1,4}:){1,2}(?::[0-9A-Fa-f]{1,"
              "4}){1,5}|[0-9A-Fa-f]{1,4}:(?::[0-9A-Fa-f]{1,4}){1,6}|:(?:(?::[0-"
              "9A-Fa-f]{1,4}){1,7}|:))$" },
    { "duration", "^P(?:(?:[0-9]+D|[0-9]+M(?:[0-9]+D)?|[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)"
                  "?)(?:T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]"
                  "+S))?|T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9"
                  "]+S)|[0-9]+W)$" },
    { NULL, NULL }
};

/* formats that name no syntax (OpenAPI's display hints: pydantic's
 * SecretStr is "password", bytes "binary"): any string */
static const char *const  kimi_sc_format_hints[] = { "password", "binary",
    NULL };

/*
 * A string's "pattern" (ECMA-262 semantics: found anywhere in the string
 * unless anchored with ^ / $) as a DFA over the string's raw text: no
 * quote, backslash or control byte, so the text never needs an escape and
 * is its own value.
 */
static int
kimi_sc_pattern(kimi_sc_t *c, const char *pat, size_t len, int32_t **dfa,
    size_t *n)
{
    static const char  any[] = "(?:.|\n)*";
    uint8_t             forbid[256] = { 0 };
    size_t              a0 = len > 0 && pat[0] == '^', a1 = 0, k, bs = 0;
    char               *w, msg[160];
    int                 rc;

    if (len > a0 && pat[len - 1] == '$') {
        for (k = len - 1; k > a0 && pat[k - 1] == '\\'; k--) {
            bs++;
        }
        a1 = bs % 2 == 0;                 /* not an escaped $ */
    }
    if (len > KIMI_REGEX_MAX_PATTERN) {
        return kimi_sc_fail(c, "\"pattern\" is longer than %d bytes",
                            KIMI_REGEX_MAX_PATTERN);
    }
    /* the pattern as written first, so a syntax error names its own byte */
    if (kimi_regex_compile(pat, len, dfa, n, msg, sizeof(msg)) != 0) {
        return kimi_sc_fail(c, "\"pattern\" cannot be enforced: %s", msg);
    }
    free(*dfa);
    *dfa = NULL;
    w = malloc(len + 2 * sizeof(any) + 8);
    if (w == NULL) {
        return kimi_sc_fail(c, "out of memory");
    }
    k = 0;
    if (!a0) {
        memcpy(w, any, sizeof(any) - 1);
        k = sizeof(any) - 1;
    }
    memcpy(w + k, "(?:", 3);
    memcpy(w + k + 3, pat + a0, len - a0 - a1);
    k += 3 + len - a0 - a1;
    w[k++] = ')';
    if (!a1) {
        memcpy(w + k, any, sizeof(any) - 1);
        k += sizeof(any) - 1;
    }
    for (int b = 0; b < 0x20; b++) {
        forbid[b] = 1;
    }
    forbid['"'] = 1;
    forbid['\\'] = 1;
    rc = kimi_regex_compile_forbid(w, k, forbid, dfa, n, msg, sizeof(msg));
    free(w);
    if (rc != 0) {
        return kimi_sc_fail(c, "\"pattern\" cannot be enforced: %s", msg);
    }
    return 0;
}


static const char *const  kimi_sc_known[] = {
    "type", "properties", "required", "additionalProperties", "items",
    "minItems", "maxItems", "prefixItems", "uniqueItems", "minLength",
    "maxLength", "minProperties", "maxProperties", "propertyNames",
    "patternProperties",
    "format", "pattern",
    "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum",
    "const",
    "anyOf", "oneOf", "allOf", "$ref",
    "$defs", "definitions", "title", "description", "default", "examples",
    "$schema", "$id", "$comment", "discriminator", "deprecated", "readOnly",
    "writeOnly", "contentMediaType", "contentEncoding", NULL
};

/* keywords that only describe: allowed beside $ref and anyOf */
static int
kimi_sc_annotation(const char *k)
{
    /* "discriminator" (OpenAPI's, beside a oneOf as pydantic writes it)
     * names what the alternatives' const values already hold apart */
    static const char *const  a[] = { "title", "description", "default",
        "examples", "$schema", "$id", "$comment", "$defs", "definitions",
        "discriminator", "deprecated", "readOnly", "writeOnly",
        "contentMediaType", "contentEncoding", NULL };

    for (size_t i = 0; a[i] != NULL; i++) {
        if (strcmp(k, a[i]) == 0) {
            return 1;
        }
    }
    return 0;
}


/* remembers the node compiled from s (a $ref target may recur) */
static void
kimi_sc_memo(kimi_sc_t *c, const json_t *s, int32_t node)
{
    if (c->n_memo < 256) {
        c->memo_schema[c->n_memo] = s;
        c->memo_node[c->n_memo++] = node;
    }
}


/* first bytes a node's values can start with */
static void
kimi_sc_first(const kimi_sc_t *c, int32_t node, unsigned char set[256])
{
    const int32_t  *p = c->w;
    const char     *b;

    if (node == 0) {
        memset(set, 1, 256);
        return;
    }
    switch (p[node]) {
    case KIMI_SN_OBJECT:
    case KIMI_SN_UOBJECT: set['{'] = 1; break;
    case KIMI_SN_ARRAY:
    case KIMI_SN_TUPLE: set['['] = 1; break;
    case KIMI_SN_STRING: set['"'] = 1; break;
    case KIMI_SN_NUMBER:
    case KIMI_SN_INTEGER:
    case KIMI_SN_DECIMAL:
        set['-'] = 1;
        memset(&set['0'], 1, 10);
        break;
    case KIMI_SN_BOOLEAN: set['t'] = set['f'] = 1; break;
    case KIMI_SN_NULL: set['n'] = 1; break;
    case KIMI_SN_ENUM:
        for (int32_t i = 0; i < p[node + 1]; i++) {
            b = (const char *) kimi_json_schema_bytes(p, p[node + 2 + 2 * i]);
            set[(unsigned char) b[0]] = 1;
        }
        break;
    case KIMI_SN_UNION:
        for (int32_t i = 0; i < p[node + 1]; i++) {
            kimi_sc_first(c, p[node + 2 + i], set);
        }
        break;
    default:
        memset(set, 1, 256);
    }
}


/* 1 if every value of an enum node starts with one of the bytes in s */
static int
kimi_sc_enum_starts(const int32_t *p, int32_t e, const char *s)
{
    for (int32_t i = 0; i < p[e + 1]; i++) {
        const char  *b = (const char *) kimi_json_schema_bytes(p,
                                                           p[e + 2 + 2 * i]);

        if (strchr(s, b[0]) == NULL) {
            return 0;
        }
    }
    return 1;
}


/* 1 if node a takes every value node b takes (an anyOf may then drop b):
 * the same node, a number beside an integer, a bounded number or numeric
 * enum values, a string without constraints beside any string or string
 * enum values,
 * a boolean or null beside enum values of its own. */
static int
kimi_sc_covers(const int32_t *p, int32_t a, int32_t b)
{
    if (a == b) {
        return 1;
    }
    switch (p[a]) {
    case KIMI_SN_NUMBER:
        return p[b] == KIMI_SN_NUMBER || p[b] == KIMI_SN_INTEGER
               || p[b] == KIMI_SN_DECIMAL
               || (p[b] == KIMI_SN_ENUM
                   && kimi_sc_enum_starts(p, b, "-0123456789"));
    case KIMI_SN_STRING:
        if (p[a + 1] != 0 || p[a + 2] != -1 || p[a + 3] != 0) {
            return 0;                   /* constrained: not every string */
        }
        return p[b] == KIMI_SN_STRING
               || (p[b] == KIMI_SN_ENUM && kimi_sc_enum_starts(p, b, "\""));
    case KIMI_SN_BOOLEAN:
        return p[b] == KIMI_SN_BOOLEAN
               || (p[b] == KIMI_SN_ENUM && kimi_sc_enum_starts(p, b, "tf"));
    case KIMI_SN_NULL:
        return p[b] == KIMI_SN_NULL
               || (p[b] == KIMI_SN_ENUM && kimi_sc_enum_starts(p, b, "n"));
    default:
        return 0;
    }
}


/* 1 if the texts at a and b of the program's bytes are the same */
static int
kimi_sc_text_eq(const int32_t *p, int32_t a, int32_t alen, int32_t b,
    int32_t blen)
{
    return alen == blen
           && memcmp(kimi_json_schema_bytes(p, a), kimi_json_schema_bytes(p, b),
                     (size_t) alen) == 0;
}


/* 1 if nodes a and b take the same values: the same node, or the same
 * words and texts down to depth 8 (two models of a union that both list
 * {"name": {"type": "string"}} compile it twice) */
static int
kimi_sc_same(const int32_t *p, int32_t a, int32_t b, int depth)
{
    if (a == b) {
        return 1;
    }
    if (a == 0 || b == 0 || depth > 8 || p[a] != p[b]) {
        return 0;
    }
    switch (p[a]) {
    case KIMI_SN_ANY:
    case KIMI_SN_NUMBER:
    case KIMI_SN_BOOLEAN:
    case KIMI_SN_NULL:
        return 1;
    case KIMI_SN_STRING:                /* a pattern: only the same node */
        return p[a + 1] == p[b + 1] && p[a + 2] == p[b + 2]
               && p[a + 3] == p[b + 3] && p[a + 3] != KIMI_SF_PATTERN;
    case KIMI_SN_INTEGER:
        return memcmp(p + a + 1, p + b + 1, 7 * sizeof(int32_t)) == 0;
    case KIMI_SN_ARRAY:
        return p[a + 2] == p[b + 2] && p[a + 3] == p[b + 3]
               && p[a + 4] == p[b + 4]
               && kimi_sc_same(p, p[a + 1], p[b + 1], depth + 1);
    case KIMI_SN_ENUM:
        if (p[a + 1] != p[b + 1]) {
            return 0;
        }
        for (int32_t i = 0; i < p[a + 1]; i++) {
            if (!kimi_sc_text_eq(p, p[a + 2 + 2 * i], p[a + 3 + 2 * i],
                                 p[b + 2 + 2 * i], p[b + 3 + 2 * i]))
            {
                return 0;
            }
        }
        return 1;
    case KIMI_SN_UNION:
        if (p[a + 1] != p[b + 1]) {
            return 0;
        }
        for (int32_t i = 0; i < p[a + 1]; i++) {
            if (!kimi_sc_same(p, p[a + 2 + i], p[b + 2 + i], depth + 1)) {
                return 0;
            }
        }
        return 1;
    case KIMI_SN_OBJECT:
        if (memcmp(p + a + 1, p + b + 1, 4 * sizeof(int32_t)) != 0
            || memcmp(p + a + 5 + 3 * p[a + 1], p + b + 5 + 3 * p[b + 1],
                      3 * sizeof(int32_t)) != 0)
        {
            return 0;
        }
        for (int32_t i = 0; i < p[a + 1]; i++) {
            if (!kimi_sc_text_eq(p, p[a + 5 + 3 * i], p[a + 6 + 3 * i],
                                 p[b + 5 + 3 * i], p[b + 6 + 3 * i])
                || !kimi_sc_same(p, p[a + 7 + 3 * i], p[b + 7 + 3 * i],
                                 depth + 1))
            {
                return 0;
            }
        }
        return 1;
    default:
        return 0;
    }
}


/* A shared property's schemas in the alternatives of mask palts (kid[a]
 * alternative a's) as one UNION: their parts (a union's alternatives, or
 * the schema itself), the same ones kept once, must start with different
 * bytes; after it the alternatives each part belongs to (one mask a part),
 * so the value's first byte narrows them.  -1 when two parts overlap,
 * -2 when out of room (c->err set). */
static int
kimi_sc_merge_parts(kimi_sc_t *c, const int32_t *kid, uint32_t palts, int m,
    int32_t *out, int32_t *table)
{
    int32_t        part[64], u, x, np = 0, q;
    uint32_t       mask[64];
    unsigned char  seen[256], one[256];

    for (int a = 0; a < m; a++) {
        if (!(palts >> a & 1)) {
            continue;
        }
        if (kid[a] == 0) {
            return -1;                  /* any value overlaps every part */
        }
        q = c->w[kid[a]] == KIMI_SN_UNION ? c->w[kid[a] + 1] : 1;
        for (int32_t i = 0; i < q; i++) {
            x = c->w[kid[a]] == KIMI_SN_UNION ? c->w[kid[a] + 2 + i] : kid[a];
            int32_t  k;

            for (k = 0; k < np; k++) {
                if (kimi_sc_same(c->w, part[k], x, 0)) {
                    break;
                }
            }
            if (k == np) {
                if (np == 64) {
                    return -1;
                }
                part[np] = x;
                mask[np++] = 0;
            }
            mask[k] |= (uint32_t) 1 << a;
        }
    }
    memset(seen, 0, sizeof(seen));
    for (int32_t k = 0; k < np; k++) {
        memset(one, 0, sizeof(one));
        kimi_sc_first(c, part[k], one);
        for (int b = 0; b < 256; b++) {
            if (one[b] && seen[b]) {
                return -1;
            }
            seen[b] |= one[b];
        }
    }
    u = kimi_sc_alloc(c, 2 + 2 * (size_t) np);
    if (u < 0) {
        return -2;                      /* c->err says why */
    }
    c->w[u] = KIMI_SN_UNION;
    c->w[u + 1] = np;
    for (int32_t k = 0; k < np; k++) {
        c->w[u + 2 + k] = part[k];
        c->w[u + 2 + np + k] = (int32_t) mask[k];
    }
    *out = u;
    *table = u + 2 + np;
    return 0;
}


/* The m objects of an anyOf (disc: of a oneOf) merged into one UOBJECT
 * node (json_schema.h) in *out: the union of their properties; where
 * alternatives share one they must give it the same schema, or enum
 * values, which become one ENUM with the alternatives each value belongs
 * to, so that a value tells them apart as a key does.  A oneOf's objects
 * must be told apart so, by a property all of them require whose values
 * belong to one alternative each (a discriminator): a value valid for two
 * of them would break its "exactly one". */
static int
kimi_sc_merge_objects(kimi_sc_t *c, const int32_t *objs, int m, int disc,
    int32_t *out)
{
    int32_t   at[KIMI_SCHEMA_MAX_PROPS], len[KIMI_SCHEMA_MAX_PROPS];
    int32_t   kid[KIMI_SCHEMA_MAX_PROPS][KIMI_SCHEMA_MAX_UALTS];
    int32_t   child[KIMI_SCHEMA_MAX_PROPS], vm[KIMI_SCHEMA_MAX_PROPS];
    uint32_t  palts[KIMI_SCHEMA_MAX_PROPS];
    uint64_t  req[KIMI_SCHEMA_MAX_UALTS];
    int32_t   n = 0, o, u, base, j;
    int       told_apart = 0;

    memset(palts, 0, sizeof(palts));
    memset(req, 0, sizeof(req));

    for (int a = 0; a < m; a++) {
        o = objs[a];
        if (c->w[o + 5 + 3 * c->w[o + 1]] != 0 || c->w[o + 6 + 3 * c->w[o + 1]] != -1
            || c->w[o + 7 + 3 * c->w[o + 1]] != 0)
        {
            return kimi_sc_fail(c, "\"minProperties\", \"maxProperties\" or"
                                " \"propertyNames\" on an object among several"
                                " of a union");
        }
        for (int32_t i = 0; i < c->w[o + 1]; i++) {
            int32_t  na = c->w[o + 5 + 3 * i], nl = c->w[o + 6 + 3 * i];

            for (j = 0; j < n; j++) {
                if (kimi_sc_text_eq(c->w, at[j], len[j], na, nl)) {
                    break;
                }
            }
            if (j == n) {
                if (n == KIMI_SCHEMA_MAX_PROPS) {
                    return kimi_sc_fail(c, "the objects of the alternatives"
                                        " have more than %d properties in"
                                        " all", KIMI_SCHEMA_MAX_PROPS);
                }
                at[n] = na;
                len[n++] = nl;
            }
            palts[j] |= (uint32_t) 1 << a;
            kid[j][a] = c->w[o + 7 + 3 * i];
            if ((((uint64_t) (uint32_t) c->w[o + 3] << 32)
                 | (uint32_t) c->w[o + 2]) >> i & 1)
            {
                req[a] |= (uint64_t) 1 << j;
            }
        }
    }

    for (j = 0; j < n; j++) {
        int       first = __builtin_ctz(palts[j]), same = 1, enums = 1;
        int32_t   e, nv = 0, vat[KIMI_SCHEMA_MAX_ENUM], vlen[KIMI_SCHEMA_MAX_ENUM];
        uint32_t  vmask[KIMI_SCHEMA_MAX_ENUM];

        child[j] = kid[j][first];
        vm[j] = 0;
        for (int a = first; a < m; a++) {
            if (palts[j] >> a & 1) {
                same &= kimi_sc_same(c->w, child[j], kid[j][a], 0);
                enums &= kid[j][a] != 0 && c->w[kid[j][a]] == KIMI_SN_ENUM;
            }
        }
        if (same && !(disc && enums)) {
            continue;
        }
        if (!enums) {
            int  mp = kimi_sc_merge_parts(c, kid[j], palts[j], m, &child[j],
                                          &vm[j]);

            if (mp == -2) {
                return -1;
            }
            if (mp != 0) {
                return kimi_sc_fail(c, "the objects of the alternatives give"
                                    " property \"%.*s\" different schemas"
                                    " (shared properties must agree, hold"
                                    " const or enum values, or take values"
                                    " that start differently)", (int) len[j],
                                    (const char *) kimi_json_schema_bytes(c->w,
                                                                          at[j]));
            }
            continue;
        }
        for (int a = first; a < m; a++) {
            if (!(palts[j] >> a & 1)) {
                continue;
            }
            e = kid[j][a];
            for (int32_t i = 0; i < c->w[e + 1]; i++) {
                int32_t  t = c->w[e + 2 + 2 * i], tl = c->w[e + 3 + 2 * i], v;

                for (v = 0; v < nv; v++) {
                    if (kimi_sc_text_eq(c->w, vat[v], vlen[v], t, tl)) {
                        break;
                    }
                }
                if (v == nv) {
                    if (nv == KIMI_SCHEMA_MAX_ENUM) {
                        return kimi_sc_fail(c, "the alternatives' values of"
                                            " \"%.*s\" are more than %d",
                                            (int) len[j],
                                            (const char *) kimi_json_schema_bytes(c->w, at[j]),
                                            KIMI_SCHEMA_MAX_ENUM);
                    }
                    vat[nv] = t;
                    vlen[nv] = tl;
                    vmask[nv++] = 0;
                }
                vmask[v] |= (uint32_t) 1 << a;
            }
        }
        e = kimi_sc_alloc(c, 2 + 2 * (size_t) nv + (size_t) nv);
        if (e < 0) {
            return -1;
        }
        c->w[e] = KIMI_SN_ENUM;
        c->w[e + 1] = nv;
        for (int32_t v = 0; v < nv; v++) {
            c->w[e + 2 + 2 * v] = vat[v];
            c->w[e + 3 + 2 * v] = vlen[v];
            c->w[e + 2 + 2 * nv + v] = (int32_t) vmask[v];
        }
        child[j] = e;
        vm[j] = e + 2 + 2 * nv;

        /* a discriminator: required by all, each value one alternative's */
        if (palts[j] == (m == 32 ? ~0u : (1u << m) - 1)) {
            int  all = 1;

            for (int a = 0; a < m; a++) {
                all &= (int) (req[a] >> j & 1);
            }
            for (int32_t v = 0; v < nv; v++) {
                all &= __builtin_popcount(vmask[v]) == 1;
            }
            told_apart |= all;
        }
    }
    if (disc && !told_apart) {
        return kimi_sc_fail(c, "the objects of a oneOf must be told apart by"
                            " a property all of them require whose const or"
                            " enum values belong to one of them each (a"
                            " discriminator); use anyOf if a value may"
                            " satisfy several");
    }

    u = kimi_sc_alloc(c, 5 + 3 * (size_t) n + 1 + 2 * (size_t) m
                         + 2 * (size_t) n);
    if (u < 0) {
        return -1;
    }
    c->w[u] = KIMI_SN_UOBJECT;
    c->w[u + 1] = n;
    c->w[u + 2] = c->w[u + 3] = c->w[u + 4] = 0;
    for (j = 0; j < n; j++) {
        c->w[u + 5 + 3 * j] = at[j];
        c->w[u + 6 + 3 * j] = len[j];
        c->w[u + 7 + 3 * j] = child[j];
    }
    base = u + 5 + 3 * n;
    c->w[base] = m;
    for (int a = 0; a < m; a++) {
        c->w[base + 1 + 2 * a] = (int32_t) (uint32_t) req[a];
        c->w[base + 2 + 2 * a] = (int32_t) (uint32_t) (req[a] >> 32);
    }
    for (j = 0; j < n; j++) {
        c->w[base + 1 + 2 * m + j] = (int32_t) palts[j];
        c->w[base + 1 + 2 * m + n + j] = vm[j];
    }
    *out = u;
    return 0;
}


/* Fills the UNION node u (allocated with room for 64 alternatives and
 * remembered for its schema before the alternatives were compiled, so a
 * $ref inside one of them may name it) from alts, nested unions
 * flattened; the alternatives' first bytes must be disjoint.  any (an
 * anyOf or a list of types, not a oneOf): an alternative another takes
 * whole is dropped first (integer beside number, a constrained string
 * beside any string, a repeated schema), since the union is the same. */
static int
kimi_sc_union(kimi_sc_t *c, int32_t u, const int32_t *alts, size_t n,
    int any)
{
    int32_t        flat[64];
    size_t         k = 0;
    unsigned char  seen[256], one[256];

    for (size_t i = 0; i < n; i++) {
        if (alts[i] == u) {
            return kimi_sc_fail(c, "an alternative is the schema itself");
        }
        if (alts[i] == 0) {
            return kimi_sc_fail(c, "an alternative takes any value, so it"
                                " overlaps every other");
        }
        if (c->w[alts[i]] == KIMI_SN_UNION) {
            for (int32_t j = 0; j < c->w[alts[i] + 1] && k < 64; j++) {
                flat[k++] = c->w[alts[i] + 2 + j];
            }
        } else if (k < 64) {
            flat[k++] = alts[i];
        }
    }
    for (size_t i = 0; any && i < k; i++) {
        for (size_t j = 0; j < k; j++) {
            /* of two that take the same values the later goes */
            if (j != i && kimi_sc_covers(c->w, flat[j], flat[i])
                && (j < i || !kimi_sc_covers(c->w, flat[i], flat[j])))
            {
                memmove(flat + i, flat + i + 1, (k - i - 1) * sizeof(flat[0]));
                k--;
                i--;
                break;
            }
        }
    }
    /* objects all start with '{': an anyOf's merge into one node (any
     * object, if one of them is that), a oneOf's when a discriminator
     * tells them apart */
    {
        int32_t  objs[64], merged = -1, free_obj = 0;
        int      m = 0;

        int      open = 0;

        for (size_t i = 0; i < k; i++) {
            if (c->w[flat[i]] == KIMI_SN_OBJECT) {
                objs[m++] = flat[i];
                free_obj = c->w[flat[i] + 4] == 1 ? flat[i] : free_obj;
                open |= c->w[flat[i] + 4] >= 2;
            }
        }
        if (m >= 2 && free_obj == 0 && open) {
            return kimi_sc_fail(c, "an object with \"additionalProperties\" as"
                                " a schema among several objects of a union"
                                " (their keys cannot tell them apart)");
        }
        if (m >= 2 && free_obj != 0 && any) {
            merged = free_obj;
        } else if (m >= 2 && free_obj == 0) {
            if (m > KIMI_SCHEMA_MAX_UALTS) {
                return kimi_sc_fail(c, "more than %d objects among the"
                                    " alternatives", KIMI_SCHEMA_MAX_UALTS);
            }
            if (kimi_sc_merge_objects(c, objs, m, !any, &merged) != 0) {
                return -1;
            }
        }
        if (merged >= 0) {
            size_t  w = 0;
            int     put = 0;

            for (size_t i = 0; i < k; i++) {
                if (c->w[flat[i]] != KIMI_SN_OBJECT) {
                    flat[w++] = flat[i];
                } else if (!put) {
                    flat[w++] = merged;
                    put = 1;
                }
            }
            k = w;
        }
    }
    memset(seen, 0, sizeof(seen));
    for (size_t i = 0; i < k; i++) {
        memset(one, 0, sizeof(one));
        kimi_sc_first(c, flat[i], one);
        for (int b = 0; b < 256; b++) {
            if (one[b] && seen[b]) {
                return kimi_sc_fail(c, "the alternatives (anyOf, oneOf or a"
                                    " list of types) must each start with a"
                                    " different character (an object, an"
                                    " array, a string, a number, a boolean,"
                                    " null): two of them can start with"
                                    " '%c'", b);
            }
            seen[b] |= one[b];
        }
    }
    c->w[u + 1] = (int32_t) k;
    memcpy(c->w + u + 2, flat, k * sizeof(int32_t));
    return 0;
}


static int32_t
kimi_sc_union_node(kimi_sc_t *c, const json_t *s)
{
    int32_t  u = kimi_sc_alloc(c, 2 + 64);

    if (u >= 0) {
        c->w[u] = KIMI_SN_UNION;
        kimi_sc_memo(c, s, u);
    }
    return u;
}


/* the schema a local $ref names, or NULL (an error set) */
static const json_t *
kimi_sc_ref_target(kimi_sc_t *c, const char *ref)
{
    const json_t  *t = NULL;

    if (strcmp(ref, "#") == 0) {
        t = c->root;
    } else if (strncmp(ref, "#/$defs/", 8) == 0) {
        t = json_object_get(json_object_get(c->root, "$defs"), ref + 8);
    } else if (strncmp(ref, "#/definitions/", 14) == 0) {
        t = json_object_get(json_object_get(c->root, "definitions"),
                            ref + 14);
    }
    if (t == NULL) {
        kimi_sc_fail(c, "\"$ref\" \"%.128s\": only references into this"
                     " schema's \"$defs\" or \"definitions\" are supported,"
                     " and that one is not there", ref);
    }
    return t;
}


static int
kimi_sc_ref(kimi_sc_t *c, const char *ref, int32_t *node)
{
    const json_t  *t = kimi_sc_ref_target(c, ref);
    size_t         i;

    if (t == NULL) {
        return -1;
    }
    for (i = 0; i < c->n_memo; i++) {
        if (c->memo_schema[i] == t) {
            *node = c->memo_node[i];
            return 0;
        }
    }
    return kimi_sc_node(c, t, node);
}


/* ---- allOf: its members merged into one schema ---------------------------- */

/* a member as a schema of keywords: $refs followed (beside annotations),
 * nested allOfs and the keywords beside them flattened into out */
static int
kimi_sc_allof_members(kimi_sc_t *c, const json_t *s, json_t *out, int depth)
{
    const json_t  *v, *all;
    const char    *k;
    json_t        *rest;
    size_t         i;

    if (depth > 16) {
        return kimi_sc_fail(c, "\"allOf\" nested or referenced deeper than"
                            " 16");
    }
    if (json_is_true(s)) {
        return 0;
    }
    if (!json_is_object(s)) {
        return kimi_sc_fail(c, "an \"allOf\" member must be a schema");
    }
    v = json_object_get(s, "$ref");
    if (v != NULL) {
        const json_t  *t = NULL;
        const char    *ref = json_is_string(v) ? json_string_value(v) : "";

        /* keywords beside a $ref apply too (draft 2019-09 on) */
        rest = json_object();
        if (rest == NULL) {
            return kimi_sc_fail(c, "out of memory");
        }
        json_object_foreach((json_t *) s, k, v) {
            if (strcmp(k, "$ref") != 0) {
                json_object_set(rest, k, (json_t *) v);
            }
        }
        if (json_object_size(rest) > 0
            && kimi_sc_allof_members(c, rest, out, depth + 1) != 0)
        {
            json_decref(rest);
            return -1;
        }
        json_decref(rest);
        t = kimi_sc_ref_target(c, ref);
        return t != NULL ? kimi_sc_allof_members(c, t, out, depth + 1) : -1;
    }
    all = json_object_get(s, "allOf");
    rest = json_object();
    if (rest == NULL) {
        return kimi_sc_fail(c, "out of memory");
    }
    json_object_foreach((json_t *) s, k, v) {
        if (strcmp(k, "allOf") != 0 && !kimi_sc_annotation(k)) {
            json_object_set(rest, k, (json_t *) v);
        }
    }
    if (json_object_size(rest) > 0) {
        json_array_append(out, rest);
    }
    json_decref(rest);
    if (all != NULL) {
        if (!json_is_array(all) || json_array_size(all) == 0
            || json_array_size(all) > 16)
        {
            return kimi_sc_fail(c, "\"allOf\" must list 1 to 16 schemas");
        }
        json_array_foreach(all, i, v) {
            if (kimi_sc_allof_members(c, v, out, depth + 1) != 0) {
                return -1;
            }
        }
    }
    return 0;
}


/* the schemas of list (json values), one if they are equal, else an allOf
 * of them (merged in its turn when compiled); NULL: none */
static json_t *
kimi_sc_allof_of(json_t *list)
{
    size_t   i;
    json_t  *v;

    if (json_array_size(list) == 0) {
        return NULL;
    }
    json_array_foreach(list, i, v) {
        if (!json_equal(v, json_array_get(list, 0))) {
            return json_pack("{sO}", "allOf", list);
        }
    }
    return json_incref(json_array_get(list, 0));
}


/* the types a member allows, as bits (1 object, 2 array, 4 string,
 * 8 integer, 16 number = both numbers, 32 boolean, 64 null); all without
 * "type" */
static int
kimi_sc_type_bits(kimi_sc_t *c, const json_t *t, unsigned *bits)
{
    static const char *const  names[] = { "object", "array", "string",
        "integer", "number", "boolean", "null" };
    const json_t             *v;
    size_t                    i, j, n;

    if (t == NULL) {
        *bits = 127;
        return 0;
    }
    *bits = 0;
    n = json_is_array(t) ? json_array_size(t) : 1;
    for (i = 0; i < n; i++) {
        v = json_is_array(t) ? json_array_get(t, i) : t;
        for (j = 0; j < 7; j++) {
            if (json_is_string(v) && strcmp(json_string_value(v), names[j])
                == 0)
            {
                break;
            }
        }
        if (j == 7) {
            return kimi_sc_fail(c, "\"type\" must be a type name or a list"
                                " of them");
        }
        *bits |= j == 4 ? 8 | 16 : 1u << j;
    }
    return 0;
}


/* 1 if value v is of a type in bits (kimi_sc_type_bits) */
static int
kimi_sc_type_allows(unsigned bits, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:  return (bits & 1) != 0;
    case JSON_ARRAY:   return (bits & 2) != 0;
    case JSON_STRING:  return (bits & 4) != 0;
    case JSON_INTEGER: return (bits & 8) != 0;
    case JSON_REAL:    return (bits & 16) != 0
                              || ((bits & 8) != 0
                                  && json_real_value(v)
                                     == floor(json_real_value(v)));
    case JSON_TRUE:
    case JSON_FALSE:   return (bits & 32) != 0;
    default:           return (bits & 64) != 0;
    }
}


/*
 * allOf: every member must hold, so the members' keywords are merged into
 * one schema.  Each keyword of a schema already applies on its own, so a
 * keyword only one member has is taken as it is; shared ones merge by what
 * they mean: types intersect, required adds up, lower bounds take the
 * highest and upper ones the lowest, enum values intersect, equal values
 * stay, and a property's schemas (or those additionalProperties give a
 * name) meet in an allOf of their own.  A name one member's
 * additionalProperties false leaves out is left out (an error if another
 * requires it); the merged object writes only its listed names.  What
 * cannot merge (two patterns, formats or anyOfs, prefixItems beside
 * another member's items) is an error that names it.
 */
static int
kimi_sc_allof(kimi_sc_t *c, const json_t *s, int32_t *node)
{
    static const char *const  lower[] = { "minimum", "exclusiveMinimum",
        "minLength", "minItems", "minProperties", NULL };
    static const char *const  upper[] = { "maximum", "exclusiveMaximum",
        "maxLength", "maxItems", "maxProperties", NULL };
    static const char *const  types[] = { "object", "array", "string",
        "integer", "number", "boolean", "null" };
    json_t        *mem = json_array(), *m = json_object(), *names = NULL;
    json_t        *req = json_array(), *v, *w, *x;
    const char    *k;
    size_t         i, j, n;
    unsigned       tb = 127, b;
    int            any_props = 0, rc = -1;

    if (mem == NULL || m == NULL || req == NULL) {
        kimi_sc_fail(c, "out of memory");
        goto done;
    }
    if (kimi_sc_allof_members(c, s, mem, 0) != 0) {
        goto done;
    }
    n = json_array_size(mem);

    /* keywords one at a time across the members */
    json_array_foreach(mem, i, v) {
        json_object_foreach(v, k, w) {
            if (strcmp(k, "type") == 0) {
                if (kimi_sc_type_bits(c, w, &b) != 0) {
                    goto done;
                }
                tb &= b;
                continue;
            }
            if (strcmp(k, "required") == 0) {
                if (!json_is_array(w)) {
                    kimi_sc_fail(c, "\"required\" must be a list of names");
                    goto done;
                }
                json_array_foreach(w, j, x) {
                    size_t  q;
                    json_t *y;
                    int     seen = 0;

                    json_array_foreach(req, q, y) {
                        seen |= json_equal(x, y);
                    }
                    if (!seen) {
                        json_array_append(req, x);
                    }
                }
                continue;
            }
            if (strcmp(k, "properties") == 0
                || strcmp(k, "additionalProperties") == 0)
            {
                any_props = 1;
                continue;
            }
            x = json_object_get(m, k);
            if (x == NULL) {
                json_object_set(m, k, w);
                continue;
            }
            if (json_equal(x, w)) {
                continue;
            }
            for (j = 0; lower[j] != NULL; j++) {
                if (strcmp(k, lower[j]) == 0 || strcmp(k, upper[j]) == 0) {
                    break;
                }
            }
            if (lower[j] != NULL && json_is_number(x) && json_is_number(w)) {
                int  hi = json_number_value(w) > json_number_value(x);

                if (strcmp(k, lower[j]) == 0 ? hi : !hi) {
                    json_object_set(m, k, w);
                }
                continue;
            }
            if (strcmp(k, "enum") == 0 && json_is_array(x)
                && json_is_array(w))
            {
                json_t  *both = json_array(), *y;
                size_t   q;

                json_array_foreach(x, j, y) {
                    json_t  *z;

                    json_array_foreach(w, q, z) {
                        if (json_equal(y, z)) {
                            json_array_append(both, y);
                            break;
                        }
                    }
                }
                json_object_set_new(m, k, both);
                continue;
            }
            if (strcmp(k, "multipleOf") == 0 && json_is_integer(x)
                && json_is_integer(w) && json_integer_value(x) > 0
                && json_integer_value(w) > 0)
            {
                /* multiples of both: of their least common multiple */
                json_int_t  a = json_integer_value(x), b = json_integer_value(w);
                json_int_t  g = a, h = b, t;

                while (h != 0) {
                    t = g % h;
                    g = h;
                    h = t;
                }
                json_object_set_new(m, k, json_integer(a / g * b <= INT32_MAX
                                                       ? a / g * b : 0));
                continue;
            }
            if (strcmp(k, "items") == 0) {
                json_t  *two = json_pack("[OO]", x, w);
                json_t  *one = two != NULL ? kimi_sc_allof_of(two) : NULL;

                json_decref(two);
                if (one == NULL) {
                    kimi_sc_fail(c, "out of memory");
                    goto done;
                }
                json_object_set_new(m, k, one);
                continue;
            }
            kimi_sc_fail(c, "\"allOf\" members give \"%.64s\" different"
                         " values: only equal ones, bounds, types, enum,"
                         " required, whole multipleOf, items and"
                         " properties merge", k);
            goto done;
        }
    }
    if (json_object_get(m, "prefixItems") != NULL
        && json_object_get(m, "items") != NULL)
    {
        json_array_foreach(mem, i, v) {
            if (json_object_get(v, "items") != NULL
                && json_object_get(v, "prefixItems") == NULL)
            {
                kimi_sc_fail(c, "\"allOf\": one member's \"prefixItems\""
                             " beside another's \"items\" is not"
                             " supported");
                goto done;
            }
        }
    }
    if (json_object_get(m, "const") != NULL
        && json_object_get(m, "enum") != NULL)
    {
        int  in = 0;

        json_array_foreach(json_object_get(m, "enum"), j, x) {
            in |= json_equal(x, json_object_get(m, "const"));
        }
        if (!in) {
            kimi_sc_fail(c, "\"allOf\": the \"const\" of one member is not"
                         " among another's \"enum\" values");
            goto done;
        }
        json_object_del(m, "enum");
    }
    if (json_is_array(json_object_get(m, "enum"))
        && json_array_size(json_object_get(m, "enum")) == 0)
    {
        kimi_sc_fail(c, "\"allOf\": the members' \"enum\" values have none"
                     " in common");
        goto done;
    }
    if (tb == 0) {
        kimi_sc_fail(c, "\"allOf\": the members allow no common \"type\"");
        goto done;
    }
    if (tb != 127) {
        json_t  *t = json_array(), *e = json_object_get(m, "enum"), *kept;

        /* enum and const values of the types every member allows */
        x = json_object_get(m, "const");
        if (x != NULL && !kimi_sc_type_allows(tb, x)) {
            json_decref(t);
            kimi_sc_fail(c, "\"allOf\": one member's \"const\" is not of a"
                         " \"type\" another allows");
            goto done;
        }
        if (json_is_array(e)) {
            kept = json_array();
            json_array_foreach(e, j, x) {
                if (kimi_sc_type_allows(tb, x)) {
                    json_array_append(kept, x);
                }
            }
            if (json_array_size(kept) == 0) {
                json_decref(kept);
                json_decref(t);
                kimi_sc_fail(c, "\"allOf\": no \"enum\" value is of a"
                             " \"type\" every member allows");
                goto done;
            }
            json_object_set_new(m, "enum", kept);
        }

        for (j = 0; j < 7; j++) {
            if (j == 3 ? (tb & 24) == 8 : j == 4 ? (tb & 16) != 0
                : (tb & (1u << j)) != 0)
            {
                json_array_append_new(t, json_string(types[j]));
            }
        }
        json_object_set_new(m, "type", json_array_size(t) == 1
                            ? json_incref(json_array_get(t, 0)) : t);
        if (json_array_size(t) == 1) {
            json_decref(t);
        }
    }

    /* properties: every name any member lists, held to each member's
     * schema for it (its property, or its additionalProperties) */
    if (any_props) {
        json_t  *props = json_object(), *adds = json_array();

        names = json_array();
        json_array_foreach(mem, i, v) {
            json_object_foreach(json_object_get(v, "properties"), k, w) {
                if (json_object_get(props, k) == NULL) {
                    json_object_set_new(props, k, json_array());
                    json_array_append_new(names, json_string(k));
                }
            }
        }
        json_array_foreach(names, j, x) {
            const char  *name = json_string_value(x);
            json_t      *cons = json_object_get(props, name), *one;
            int          allowed = 1;

            json_array_foreach(mem, i, v) {
                const json_t  *p = json_object_get(v, "properties");
                const json_t  *a = json_object_get(v, "additionalProperties");

                if (json_object_get(p, name) != NULL) {
                    json_array_append(cons, json_object_get(p, name));
                } else if (json_is_false(a)) {
                    allowed = 0;
                } else if (json_is_object(a)) {
                    json_array_append(cons, (json_t *) a);
                }
            }
            if (!allowed) {
                json_t  *y;
                size_t   q;

                json_array_foreach(req, q, y) {
                    if (strcmp(json_string_value(y), name) == 0) {
                        json_decref(props);
                        json_decref(adds);
                        kimi_sc_fail(c, "\"allOf\": \"%.64s\" is required"
                                     " by one member and not allowed by"
                                     " another's additionalProperties",
                                     name);
                        goto done;
                    }
                }
                json_object_del(props, name);
                continue;
            }
            one = kimi_sc_allof_of(cons);
            json_object_set_new(props, name, one != NULL ? one
                                                         : json_object());
        }
        if (json_object_size(props) > 0) {
            json_object_set(m, "properties", props);
            json_object_set_new(m, "additionalProperties", json_false());
        } else {
            /* no names: the members' additionalProperties meet */
            int  none = 0;

            json_array_foreach(mem, i, v) {
                const json_t  *a = json_object_get(v, "additionalProperties");

                none |= json_is_false(a);
                if (json_is_object(a)) {
                    json_array_append(adds, (json_t *) a);
                }
            }
            x = none ? json_false() : kimi_sc_allof_of(adds);
            if (x != NULL) {
                json_object_set_new(m, "additionalProperties", x);
            }
        }
        json_decref(props);
        json_decref(adds);
    }
    json_array_foreach(req, j, x) {
        if (json_object_get(json_object_get(m, "properties"),
                            json_string_value(x)) == NULL)
        {
            kimi_sc_fail(c, "\"allOf\": \"required\" names \"%.64s\", which"
                         " no member lists in its \"properties\"",
                         json_string_value(x));
            goto done;
        }
    }
    if (json_array_size(req) > 0) {
        json_object_set(m, "required", req);
    }
    if (json_array_append(c->owned, m) != 0) {
        kimi_sc_fail(c, "out of memory");
        goto done;
    }
    (void) n;
    rc = kimi_sc_node(c, m, node);

done:
    json_decref(mem);
    json_decref(m);
    json_decref(req);
    json_decref(names);
    return rc;
}


static int
kimi_sc_count(kimi_sc_t *c, const json_t *v, const char *k, int32_t *out)
{
    if (v == NULL) {
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0
        || json_integer_value(v) > INT32_MAX)
    {
        return kimi_sc_fail(c, "\"%s\" must be a non-negative integer", k);
    }
    *out = (int32_t) json_integer_value(v);
    return 0;
}


/* propertyNames as an enum or a const of names (pydantic's
 * Dict[Literal[...], V], or a dict keyed by an Enum): *out (owned by c)
 * becomes s with those names as optional properties, each held to its own
 * schema where s lists it or else to additionalProperties', and no other
 * keys; NULL where propertyNames asks nothing (true, or only "type":
 * "string" and annotations). */
static int
kimi_sc_property_names(kimi_sc_t *c, const json_t *s, const json_t **out,
                       json_t **keys)
{
    const json_t  *pn = json_object_get(s, "propertyNames");
    const json_t  *props = json_object_get(s, "properties");
    const json_t  *add = json_object_get(s, "additionalProperties");
    const json_t  *req = json_object_get(s, "required");
    const json_t  *v, *names = NULL, *one = NULL;
    const char    *k;
    json_t        *m = NULL, *np = NULL, *nr = NULL;
    size_t         i, j, was;
    int            depth, rc = -1;

    *out = NULL;
    *keys = NULL;
    was = kimi_sc_push(c, "propertyNames");
    for (depth = 0; json_is_object(pn) && json_object_get(pn, "$ref") != NULL; depth++) {
        v = json_object_get(pn, "$ref");
        if (depth == 16 || !json_is_string(v)) {
            return kimi_sc_fail(c, "\"$ref\" must be a string (and not"
                                " nested deeper than 16)");
        }
        json_object_foreach((json_t *) pn, k, v) {
            if (strcmp(k, "$ref") != 0 && !kimi_sc_annotation(k)) {
                return kimi_sc_fail(c, "\"%.64s\" beside the \"$ref\" of"
                                    " \"propertyNames\"", k);
            }
        }
        pn = kimi_sc_ref_target(c, json_string_value(json_object_get(pn, "$ref")));
        if (pn == NULL) {
            return -1;
        }
    }
    if (json_is_true(pn)) {
        c->path[was] = '\0';
        return 0;
    }
    if (json_is_object(pn)) {
        json_t  *str = NULL;

        json_object_foreach((json_t *) pn, k, v) {
            if (strcmp(k, "enum") == 0 && json_is_array(v)) {
                names = v;
            } else if (strcmp(k, "const") == 0) {
                one = v;
            } else if (strcmp(k, "minLength") == 0 || strcmp(k, "maxLength") == 0
                       || strcmp(k, "pattern") == 0)
            {
                /* the keys' text, held as a string of the same keywords */
                if (str == NULL && (str = json_pack("{ss}", "type", "string")) == NULL) {
                    return kimi_sc_fail(c, "out of memory");
                }
                json_object_set(str, k, (json_t *) v);
            } else if (!kimi_sc_annotation(k)
                       && !(strcmp(k, "type") == 0 && json_is_string(v)
                            && strcmp(json_string_value(v), "string") == 0))
            {
                json_decref(str);
                return kimi_sc_fail(c, "\"propertyNames\" is supported as an"
                                    " \"enum\" or \"const\" of names, or as"
                                    " minLength, maxLength and pattern (not"
                                    " \"%.64s\")", k);
            }
        }
        if (str != NULL && (names != NULL || one != NULL)) {
            json_decref(str);
            return kimi_sc_fail(c, "\"propertyNames\": an \"enum\" or"
                                " \"const\" beside minLength, maxLength or"
                                " pattern is not supported");
        }
        if (names == NULL && one == NULL) {
            c->path[was] = '\0';
            *keys = str;                /* NULL: any string names a key */
            return 0;
        }
    } else if (!json_is_false(pn)) {
        return kimi_sc_fail(c, "\"propertyNames\" must be a schema");
    }
    c->path[was] = '\0';

    m = json_object();
    np = json_object();
    nr = json_array();
    if (m == NULL || np == NULL || nr == NULL) {
        kimi_sc_fail(c, "out of memory");
        goto done;
    }
    json_object_foreach((json_t *) s, k, v) {
        if (strcmp(k, "propertyNames") != 0 && strcmp(k, "properties") != 0
            && strcmp(k, "required") != 0
            && strcmp(k, "additionalProperties") != 0)
        {
            json_object_set(m, k, (json_t *) v);
        }
    }
    /* names: the enum's strings (others can name no key), in its order */
    for (i = 0; i < (names != NULL ? json_array_size(names) : one != NULL); i++) {
        const json_t  *nv = names != NULL ? json_array_get(names, i) : one;
        const json_t  *ps;

        if (!json_is_string(nv) || json_object_get(np, json_string_value(nv)) != NULL) {
            continue;
        }
        ps = props != NULL ? json_object_get(props, json_string_value(nv)) : NULL;
        if (ps == NULL) {
            ps = json_is_object(add) ? add : NULL;
        }
        if (json_object_set_new(np, json_string_value(nv), ps != NULL ? json_incref((json_t *) ps)
                                                                      : json_object()) != 0)
        {
            kimi_sc_fail(c, "out of memory");
            goto done;
        }
    }
    if (json_is_array(req)) {
        json_array_foreach(req, j, v) {
            if (!json_is_string(v) || json_object_get(np, json_string_value(v)) == NULL) {
                kimi_sc_fail(c, "\"required\"[%zu] names a key"
                             " \"propertyNames\" does not allow", j);
                goto done;
            }
            json_array_append(nr, (json_t *) v);
        }
    } else if (req != NULL) {
        kimi_sc_fail(c, "\"required\" must be a list of names");
        goto done;
    }
    json_object_set(m, "properties", np);
    if (json_array_size(nr) > 0) {
        json_object_set(m, "required", nr);
    }
    json_object_set_new(m, "additionalProperties", json_false());
    if (json_array_append(c->owned, m) != 0) {
        kimi_sc_fail(c, "out of memory");
        goto done;
    }
    *out = m;
    rc = 0;

done:
    json_decref(m);
    json_decref(np);
    json_decref(nr);
    return rc;
}


static int kimi_sc_object_as(kimi_sc_t *c, const json_t *s, const json_t *key,
                             const json_t *keys, int32_t *node);

/* patternProperties of one pattern and no other keys (pydantic's Dict
 * keyed by a constr with a pattern): as additionalProperties its schema
 * and the pattern added to propertyNames; *out owned by c */
static int
kimi_sc_pattern_properties(kimi_sc_t *c, const json_t *s, const json_t **out)
{
    const json_t  *pp = json_object_get(s, "patternProperties");
    const json_t  *add = json_object_get(s, "additionalProperties");
    const json_t  *pn = json_object_get(s, "propertyNames");
    const char    *k;
    json_t        *m, *npn, *v;

    if (!json_is_object(pp) || json_object_size(pp) != 1) {
        return kimi_sc_fail(c, "\"patternProperties\" is supported with one"
                            " pattern");
    }
    if (json_object_get(s, "properties") != NULL || (add != NULL && !json_is_false(add))) {
        return kimi_sc_fail(c, "\"patternProperties\" beside \"properties\" or"
                            " \"additionalProperties\" is not supported (only"
                            " keys its pattern takes)");
    }
    if (pn != NULL && !json_is_object(pn)) {
        return kimi_sc_fail(c, "\"propertyNames\" beside \"patternProperties\""
                            " must be a schema");
    }
    if (pn != NULL && (json_object_get(pn, "pattern") != NULL || json_object_get(pn, "$ref") != NULL)) {
        return kimi_sc_fail(c, "\"propertyNames\" with a pattern or \"$ref\" beside"
                            " \"patternProperties\" is not supported");
    }
    m = json_copy((json_t *) s);
    npn = pn != NULL ? json_copy((json_t *) pn) : json_object();
    if (m == NULL || npn == NULL) {
        json_decref(m);
        json_decref(npn);
        return kimi_sc_fail(c, "out of memory");
    }
    json_object_foreach((json_t *) pp, k, v) {
        json_object_set_new(npn, "pattern", json_string(k));
        json_object_set(m, "additionalProperties", v);
    }
    json_object_del(m, "patternProperties");
    json_object_set_new(m, "propertyNames", npn);
    if (json_array_append_new(c->owned, m) != 0) {
        return kimi_sc_fail(c, "out of memory");
    }
    *out = m;
    return 0;
}


static int
kimi_sc_object(kimi_sc_t *c, const json_t *s, int32_t *node)
{
    const json_t  *key = s, *named;
    json_t        *keys = NULL;
    int            rc;

    if (json_object_get(s, "patternProperties") != NULL
        && kimi_sc_pattern_properties(c, s, &s) != 0)
    {
        return -1;
    }
    if (json_object_get(s, "propertyNames") != NULL) {
        if (kimi_sc_property_names(c, s, &named, &keys) != 0) {
            return -1;
        }
        if (named != NULL) {
            return kimi_sc_object_as(c, named, key, NULL, node);
        }
    }
    /* alive until the program is built (the memo holds its address) */
    if (keys != NULL && json_array_append_new(c->owned, keys) != 0) {
        return kimi_sc_fail(c, "out of memory");
    }
    rc = kimi_sc_object_as(c, s, key, keys, node);
    return rc;
}


/* the object s, remembered as the node of key (a $ref may recur to it);
 * keys: a string schema its free keys follow (propertyNames), or NULL */
static int
kimi_sc_object_as(kimi_sc_t *c, const json_t *s, const json_t *key, const json_t *keys,
                  int32_t *node)
{
    const json_t  *props = json_object_get(s, "properties");
    const json_t  *req = json_object_get(s, "required");
    const json_t  *add = json_object_get(s, "additionalProperties");
    const json_t  *v;
    const char    *k;
    size_t         n, i, was;
    int32_t        o, at, len, child, min_props = 0, max_props = -1;
    uint64_t       bits = 0;

    if (props != NULL && !json_is_object(props)) {
        return kimi_sc_fail(c, "\"properties\" must be an object");
    }
    if (add != NULL && !json_is_boolean(add) && !json_is_object(add)) {
        return kimi_sc_fail(c, "\"additionalProperties\" must be true, false"
                            " or a schema");
    }
    n = props ? json_object_size(props) : 0;
    if (n > KIMI_SCHEMA_MAX_PROPS) {
        return kimi_sc_fail(c, "more than %d properties",
                            KIMI_SCHEMA_MAX_PROPS);
    }
    if (req != NULL) {
        if (!json_is_array(req)) {
            return kimi_sc_fail(c, "\"required\" must be a list of names");
        }
        json_array_foreach(req, i, v) {
            if (!json_is_string(v) || props == NULL
                || json_object_get(props, json_string_value(v)) == NULL)
            {
                return kimi_sc_fail(c, "\"required\"[%zu] names no property"
                                    " of \"properties\"", i);
            }
        }
    }

    if (kimi_sc_count(c, json_object_get(s, "minProperties"), "minProperties", &min_props) != 0
        || kimi_sc_count(c, json_object_get(s, "maxProperties"), "maxProperties", &max_props) != 0)
    {
        return -1;
    }
    if (json_object_get(s, "maxProperties") == NULL) {
        max_props = -1;
    }
    if (max_props >= 0 && max_props < min_props) {
        return kimi_sc_fail(c, "\"maxProperties\" is below \"minProperties\"");
    }

    o = kimi_sc_alloc(c, 8 + 3 * n);
    if (o < 0) {
        return -1;
    }
    c->w[o] = KIMI_SN_OBJECT;
    c->w[o + 1] = (int32_t) n;
    /* no properties listed: any object, unless none may be added */
    c->w[o + 4] = n == 0 && !json_is_false(add) && !json_is_object(add);
    kimi_sc_memo(c, key, o);
    *node = o;
    if (keys != NULL && n > 0) {
        return kimi_sc_fail(c, "\"propertyNames\" with a length or pattern beside"
                            " \"properties\" is not supported");
    }
    if (keys != NULL && json_is_false(add)) {
        c->w[o + 4] = 0;                /* no keys at all: nothing to hold */
        keys = NULL;
    }
    if (c->w[o + 4] == 1 && (min_props > 0 || max_props >= 0 || keys != NULL)) {
        /* counted keys: as additionalProperties {} (keys of any name,
         * written without escapes, values of any kind) */
        int32_t  a = kimi_sc_alloc(c, 1);

        if (a < 0) {
            return -1;
        }
        c->w[a] = KIMI_SN_ANY;
        c->w[o + 4] = a;
    }

    /* additionalProperties as a schema (a dict's values): other keys'
     * values held to it, word 4 its node (an ANY node for {}) */
    if (json_is_object(add)) {
        int32_t  a;

        was = kimi_sc_push(c, "additionalProperties");
        if (kimi_sc_node(c, add, &a) != 0) {
            return -1;
        }
        c->path[was] = '\0';
        if (a == 0) {
            a = kimi_sc_alloc(c, 1);
            if (a < 0) {
                return -1;
            }
            c->w[a] = KIMI_SN_ANY;
        }
        c->w[o + 4] = a;
    }

    i = 0;
    json_object_foreach((json_t *) props, k, v) {
        json_t  *name = json_string(k);
        int      trc = name != NULL ? kimi_sc_text(c, name, 1, &at, &len)
                                    : kimi_sc_fail(c, "a property name is not"
                                                   " UTF-8");

        json_decref(name);
        if (trc != 0) {
            return -1;
        }
        was = kimi_sc_push(c, "properties");
        kimi_sc_push(c, k);
        if (kimi_sc_node(c, v, &child) != 0) {
            return -1;
        }
        c->path[was] = '\0';
        c->w[o + 5 + 3 * i] = at;
        c->w[o + 5 + 3 * i + 1] = len;
        c->w[o + 5 + 3 * i + 2] = child;
        if (req != NULL) {
            const json_t  *r;
            size_t         j;

            json_array_foreach(req, j, r) {
                if (strcmp(json_string_value(r), k) == 0) {
                    bits |= (uint64_t) 1 << i;
                }
            }
        }
        i++;
    }
    c->w[o + 2] = (int32_t) (uint32_t) bits;
    c->w[o + 3] = (int32_t) (uint32_t) (bits >> 32);

    /* keys counted: at least min_props before '}', at most max_props;
     * neither may leave the object nowhere to go */
    if (c->w[o + 4] == 0 && (size_t) min_props > n) {
        return kimi_sc_fail(c, "\"minProperties\" %d above the %zu properties"
                            " the object may have", min_props, n);
    }
    if (max_props >= 0 && max_props < __builtin_popcountll(bits)) {
        return kimi_sc_fail(c, "\"maxProperties\" %d below the %d required"
                            " properties", max_props, __builtin_popcountll(bits));
    }
    if (max_props >= 0 && c->w[o + 4] == 0 && (size_t) max_props >= n) {
        max_props = -1;                 /* never reached */
    }
    if (max_props >= 0 && bits != 0) {
        return kimi_sc_fail(c, "\"maxProperties\" beside \"required\" is not"
                            " supported (other keys could leave no room for"
                            " the required ones)");
    }
    c->w[o + 5 + 3 * n] = min_props;
    c->w[o + 6 + 3 * n] = max_props;

    /* the free keys' text (propertyNames' lengths and pattern) */
    if (keys != NULL) {
        int32_t  kn;

        if (min_props >= 2 && json_object_get(keys, "pattern") != NULL) {
            return kimi_sc_fail(c, "\"minProperties\" above 1 beside a key"
                                " pattern is not supported (the pattern could"
                                " run out of distinct keys)");
        }
        was = kimi_sc_push(c, "propertyNames");
        if (kimi_sc_node(c, keys, &kn) != 0) {
            return -1;
        }
        c->path[was] = '\0';
        if (kn < 2 || c->w[kn] != KIMI_SN_STRING
            || (c->w[kn + 3] != KIMI_SF_NONE && c->w[kn + 3] != KIMI_SF_PATTERN))
        {
            return kimi_sc_fail(c, "\"propertyNames\" must hold the keys to a"
                                " string's lengths or pattern");
        }
        c->w[o + 7 + 3 * n] = kn;
    }
    return 0;
}


static int kimi_sc_enum(kimi_sc_t *c, const json_t *vals, int32_t *node);

/* The values INTEGER node e (bounded on both sides) holds, as an ENUM node
 * *out: a uniqueItems array's items; more than an enum takes is an error */
static int
kimi_sc_int_values(kimi_sc_t *c, int32_t e, int32_t *out)
{
    const int32_t  *w = c->w;
    int64_t         lo, hi, m, first, n;
    json_t         *vals;
    int             rc;

    if (!w[e + 1] || !w[e + 4]) {
        return kimi_sc_fail(c, "\"uniqueItems\" over integers bounded on one side"
                            " only is not supported (a minimum and a maximum, or"
                            " neither)");
    }
    lo = (int64_t) ((uint64_t) (uint32_t) w[e + 3] << 32 | (uint32_t) w[e + 2]);
    hi = (int64_t) ((uint64_t) (uint32_t) w[e + 6] << 32 | (uint32_t) w[e + 5]);
    m = w[e + 7] > 1 ? w[e + 7] : 1;
    /* the first multiple of m at or above lo (|bounds| <= 10^18) */
    first = lo % m == 0 ? lo : lo > 0 ? lo + (m - lo % m) : lo - lo % m;
    n = first > hi ? 0 : (hi - first) / m + 1;
    if (n == 0 || n > KIMI_SCHEMA_MAX_ENUM) {
        return kimi_sc_fail(c, "\"uniqueItems\" over integers whose bounds hold"
                            " %lld values (1 to %d are supported)", (long long) n,
                            KIMI_SCHEMA_MAX_ENUM);
    }
    vals = json_array();
    for (int64_t i = 0; vals != NULL && i < n; i++) {
        json_array_append_new(vals, json_integer(first + i * m));
    }
    if (vals == NULL || json_array_size(vals) != (size_t) n) {
        json_decref(vals);
        return kimi_sc_fail(c, "out of memory");
    }
    rc = kimi_sc_enum(c, vals, out);
    json_decref(vals);
    return rc;
}


static int
kimi_sc_array(kimi_sc_t *c, const json_t *s, int32_t *node)
{
    const json_t  *items = json_object_get(s, "items");
    const json_t  *prefix = json_object_get(s, "prefixItems");
    const json_t  *v;
    int32_t        a, child = 0, mn = 0, mx = -1, np = 0;
    size_t         was, i;
    char           seg[48];

    if (kimi_sc_count(c, json_object_get(s, "minItems"), "minItems", &mn) != 0
        || kimi_sc_count(c, json_object_get(s, "maxItems"), "maxItems", &mx)
           != 0)
    {
        return -1;
    }
    if (mx >= 0 && mx < mn) {
        return kimi_sc_fail(c, "\"maxItems\" is below \"minItems\"");
    }
    /* a tuple: prefixItems, or draft 7's items as a list */
    if (prefix == NULL && json_is_array(items)) {
        prefix = items;
        items = NULL;
    }
    if (prefix != NULL) {
        if (!json_is_array(prefix) || json_array_size(prefix) == 0
            || json_array_size(prefix) > 64)
        {
            return kimi_sc_fail(c, "\"prefixItems\" must list 1 to 64"
                                " schemas");
        }
        np = (int32_t) json_array_size(prefix);
    }
    if (items != NULL && !json_is_false(items) && !json_is_object(items)
        && !json_is_true(items))
    {
        return kimi_sc_fail(c, "\"items\" must be a schema, true or false");
    }
    if (np == 0 && json_is_false(items)) {
        mx = 0;                         /* no items at all */
        if (mn > 0) {
            return kimi_sc_fail(c, "\"items\" false below \"minItems\"");
        }
    }

    a = kimi_sc_alloc(c, np > 0 ? 5 + (size_t) np : 5);
    if (a < 0) {
        return -1;
    }
    c->w[a] = np > 0 ? KIMI_SN_TUPLE : KIMI_SN_ARRAY;
    kimi_sc_memo(c, s, a);
    *node = a;
    if (items != NULL && json_is_false(items)) {
        child = -1;                     /* none past the prefix */
    } else if (items != NULL && !json_is_true(items)) {
        was = kimi_sc_push(c, "items");
        if (kimi_sc_node(c, items, &child) != 0) {
            return -1;
        }
        c->path[was] = '\0';
    }
    if (np > 0 && child == -1) {
        if (mx < 0 || mx > np) {
            mx = np;
        }
        if (mn > np) {
            return kimi_sc_fail(c, "\"minItems\" above the tuple's %d items"
                                " and nothing after them", (int) np);
        }
    }
    if (np == 0 && child == -1) {
        child = 0;
    }
    json_array_foreach(prefix, i, v) {
        int32_t  e;

        snprintf(seg, sizeof(seg), "prefixItems/%zu", i);
        was = kimi_sc_push(c, seg);
        if (kimi_sc_node(c, v, &e) != 0) {
            return -1;
        }
        c->path[was] = '\0';
        c->w[a + 5 + i] = e;
    }
    /* uniqueItems over enum values (pydantic's Set[Literal[...]] or
     * Set[SomeEnum]): each value at most once, so no more items than
     * values; other items would need every earlier one remembered */
    if (json_is_true(json_object_get(s, "uniqueItems")) && np == 0 && child > 0
        && c->w[child] == KIMI_SN_INTEGER && (c->w[child + 1] || c->w[child + 4]))
    {
        /* a set of bounded integers: as the enum of the values the bounds
         * hold (an enum's prefixes tell which values are still free, so
         * no digit leads where only written values go on) */
        if (kimi_sc_int_values(c, child, &child) != 0) {
            return -1;
        }
    }
    if (json_is_true(json_object_get(s, "uniqueItems")) && np == 0 && child > 0
        && (c->w[child] == KIMI_SN_INTEGER
            || (c->w[child] == KIMI_SN_STRING && c->w[child + 2] < 0
                && c->w[child + 3] == KIMI_SF_NONE)))
    {
        /* strings without a maximum length or shape, or integers without
         * bounds (pydantic's Set[str], Set[int]): the items written so far
         * remembered by hash, at most KIMI_SCHEMA_MAX_SET of them (strings
         * then written without escapes); such an item can always go on to
         * a value not written yet, but for 0 (json_mode.c refuses it
         * once written) */
        if (mn > KIMI_SCHEMA_MAX_SET) {
            return kimi_sc_fail(c, "\"minItems\" above the %d distinct items"
                                " \"uniqueItems\" can hold here", KIMI_SCHEMA_MAX_SET);
        }
        if (mx < 0 || mx > KIMI_SCHEMA_MAX_SET) {
            mx = KIMI_SCHEMA_MAX_SET;
        }
        c->w[a + 4] = 2;
    } else if (json_is_true(json_object_get(s, "uniqueItems"))) {
        if (np > 0 || child <= 0 || c->w[child] != KIMI_SN_ENUM) {
            return kimi_sc_fail(c, "\"uniqueItems\" is supported on arrays"
                                " of enum or const values (a set of"
                                " Literals or of an Enum), of strings"
                                " without maxLength, pattern or format, and"
                                " of integers only");
        }
        if (mn > c->w[child + 1]) {
            return kimi_sc_fail(c, "\"minItems\" above the %d distinct"
                                " values \"uniqueItems\" leaves",
                                (int) c->w[child + 1]);
        }
        if (mx < 0 || mx > c->w[child + 1]) {
            mx = c->w[child + 1];
        }
        c->w[a + 4] = 1;
    } else if (json_object_get(s, "uniqueItems") != NULL
               && !json_is_false(json_object_get(s, "uniqueItems")))
    {
        return kimi_sc_fail(c, "\"uniqueItems\" must be true or false");
    }
    c->w[a + 1] = child;
    c->w[a + 2] = mn;
    c->w[a + 3] = mx;
    if (np > 0) {
        c->w[a + 4] = np;
    }
    return 0;
}


static int
kimi_sc_enum(kimi_sc_t *c, const json_t *vals, int32_t *node)
{
    const json_t  *v;
    size_t         i, n = json_array_size(vals);
    int32_t        e, at, len;

    if (n == 0 || n > KIMI_SCHEMA_MAX_ENUM) {
        return kimi_sc_fail(c, "\"enum\" must list 1 to %d values",
                            KIMI_SCHEMA_MAX_ENUM);
    }
    e = kimi_sc_alloc(c, 2 + 2 * n);
    if (e < 0) {
        return -1;
    }
    c->w[e] = KIMI_SN_ENUM;
    c->w[e + 1] = (int32_t) n;
    json_array_foreach(vals, i, v) {
        if (json_is_object(v) || json_is_array(v)) {
            return kimi_sc_fail(c, "\"enum\"/\"const\" values must be"
                                " strings, numbers, booleans or null");
        }
        if (kimi_sc_text(c, v, 0, &at, &len) != 0) {
            return -1;
        }
        c->w[e + 2 + 2 * i] = at;
        c->w[e + 3 + 2 * i] = len;
    }
    *node = e;
    return 0;
}


/* bound k of s as the inclusive integer bound *out (lower: the least
 * integer allowed, else the greatest); 0 if absent, 1 if set, -1 */
static int
kimi_sc_bound(kimi_sc_t *c, const json_t *s, const char *k, int lower,
    int exclusive, int64_t *out)
{
    const json_t  *v = json_object_get(s, k);
    double         d, r;

    if (v == NULL) {
        return 0;
    }
    if (!json_is_number(v)) {
        return kimi_sc_fail(c, "\"%s\" must be a number", k);
    }
    d = json_number_value(v);
    if (d < -1e18 || d > 1e18) {
        return kimi_sc_fail(c, "\"%s\" beyond +-10^18 is not supported", k);
    }
    r = lower ? ceil(d) : floor(d);
    if (exclusive && r == d) {
        r += lower ? 1 : -1;
    }
    *out = (int64_t) r;
    return 1;
}


/* A number's bound k as m / 10^scale: the shortest decimal spelling that
 * reads back as the same double, at most 9 decimals; 0 when absent. */
static int
kimi_sc_decimal(kimi_sc_t *c, const json_t *s, const char *k, int64_t *m,
    int *scale)
{
    const json_t  *v = json_object_get(s, k);
    char           buf[64], *q;
    double         d;
    int64_t        digits = 0;
    int            nd = 0, e, neg, prec;

    if (v == NULL) {
        return 0;
    }
    if (!json_is_number(v)) {
        return kimi_sc_fail(c, "\"%s\" must be a number", k);
    }
    d = json_number_value(v);
    if (!isfinite(d) || d < -1e18 || d > 1e18) {
        return kimi_sc_fail(c, "\"%s\" beyond +-10^18 is not supported", k);
    }
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d) {
            break;
        }
    }
    neg = buf[0] == '-';
    for (q = buf + neg; *q != 'e'; q++) {
        if (*q != '.') {
            digits = digits * 10 + (*q - '0');
            nd++;
        }
    }
    e = atoi(q + 1) - (nd - 1);         /* value = digits * 10^e */
    for (; e > 0; e--) {
        digits *= 10;
    }
    for (; e < 0 && digits % 10 == 0; e++) {
        digits /= 10;
    }
    if (-e > 9) {
        return kimi_sc_fail(c, "\"%s\" has more than 9 decimals", k);
    }
    *m = neg ? -digits : digits;
    *scale = -e;
    return 1;
}


/* a number with bounds: the bounds at one scale (json_schema.h DECIMAL) */
static int
kimi_sc_decimal_node(kimi_sc_t *c, const json_t *s, int32_t *node)
{
    static const char *const  keys[4] = { "minimum", "exclusiveMinimum",
                                          "maximum", "exclusiveMaximum" };
    int64_t   m[4], pow10[10] = { 1 }, mm = 0;
    int       sc[4], has[4], scale = 0, r, flags = 0, msc = 0;
    __int128  v[4], lo = 0, hi = 0, mult = 0;
    int32_t   k;

    for (int i = 1; i < 10; i++) {
        pow10[i] = pow10[i - 1] * 10;
    }
    for (int i = 0; i < 4; i++) {
        if ((r = kimi_sc_decimal(c, s, keys[i], &m[i], &sc[i])) < 0) {
            return -1;
        }
        has[i] = r;
        scale = r && sc[i] > scale ? sc[i] : scale;
    }
    /* a multipleOf of up to 9 decimals: the number is written with at
     * most as many, so its value is a whole multiple at that scale */
    if ((r = kimi_sc_decimal(c, s, "multipleOf", &mm, &msc)) < 0) {
        return -1;
    }
    if (r) {
        scale = msc > scale ? msc : scale;
        mult = (__int128) mm * pow10[scale - msc];
        if (mm <= 0 || mult > 2147483647) {
            return kimi_sc_fail(c, "\"multipleOf\" must be positive, and at"
                                " most 2^31 - 1 times 10^%d", scale);
        }
    }
    for (int i = 0; i < 4; i++) {
        v[i] = has[i] ? (__int128) m[i] * pow10[scale - sc[i]] : 0;
        if (has[i] && (v[i] >= ((__int128) 1 << 62) || v[i] <= -((__int128) 1 << 62))) {
            return kimi_sc_fail(c, "\"%s\" is too large at %d decimals",
                                keys[i], scale);
        }
    }
    /* of an inclusive and an exclusive bound the stricter one */
    if (has[0]) {
        lo = v[0];
        flags |= KIMI_SD_LO;
    }
    if (has[1] && (!has[0] || v[1] >= lo)) {
        lo = v[1];
        flags |= KIMI_SD_LO | KIMI_SD_LO_EX;
    }
    if (has[2]) {
        hi = v[2];
        flags |= KIMI_SD_HI;
    }
    if (has[3] && (!has[2] || v[3] <= hi)) {
        hi = v[3];
        flags |= KIMI_SD_HI | KIMI_SD_HI_EX;
    }
    if ((flags & KIMI_SD_LO) && (flags & KIMI_SD_HI)
        && (hi < lo || (hi == lo && (flags & (KIMI_SD_LO_EX | KIMI_SD_HI_EX)))))
    {
        return kimi_sc_fail(c, "no number lies within the bounds");
    }
    if (mult > 0 && (flags & KIMI_SD_LO) && (flags & KIMI_SD_HI)) {
        __int128  a = lo + ((flags & KIMI_SD_LO_EX) != 0);
        __int128  b = hi - ((flags & KIMI_SD_HI_EX) != 0);

        a = a % mult > 0 ? a + mult - a % mult : a - a % mult;
        if (a > b) {
            return kimi_sc_fail(c, "no multiple of \"multipleOf\" lies within"
                                " the bounds");
        }
    }
    k = kimi_sc_alloc(c, 8);
    if (k < 0) {
        return -1;
    }
    c->w[k] = KIMI_SN_DECIMAL;
    c->w[k + 1] = flags;
    c->w[k + 2] = scale;
    c->w[k + 3] = (int32_t) (uint32_t) (uint64_t) (int64_t) lo;
    c->w[k + 4] = (int32_t) (uint32_t) ((uint64_t) (int64_t) lo >> 32);
    c->w[k + 5] = (int32_t) (uint32_t) (uint64_t) (int64_t) hi;
    c->w[k + 6] = (int32_t) (uint32_t) ((uint64_t) (int64_t) hi >> 32);
    c->w[k + 7] = (int32_t) mult;
    *node = k;
    return 0;
}


/* an integer, with its bounds if any */
static int
kimi_sc_integer(kimi_sc_t *c, const json_t *s, int32_t *node)
{
    const json_t  *mv;
    int64_t        lo = 0, hi = 0, v, m = 1;
    int            has_lo = 0, has_hi = 0, r;
    int32_t        k;

    if ((r = kimi_sc_bound(c, s, "minimum", 1, 0, &v)) < 0) {
        return -1;
    }
    if (r) {
        lo = v;
        has_lo = 1;
    }
    if ((r = kimi_sc_bound(c, s, "exclusiveMinimum", 1, 1, &v)) < 0) {
        return -1;
    }
    if (r && (!has_lo || v > lo)) {
        lo = v;
        has_lo = 1;
    }
    if ((r = kimi_sc_bound(c, s, "maximum", 0, 0, &v)) < 0) {
        return -1;
    }
    if (r) {
        hi = v;
        has_hi = 1;
    }
    if ((r = kimi_sc_bound(c, s, "exclusiveMaximum", 0, 1, &v)) < 0) {
        return -1;
    }
    if (r && (!has_hi || v < hi)) {
        hi = v;
        has_hi = 1;
    }
    if (has_lo && has_hi && hi < lo) {
        return kimi_sc_fail(c, "no integer lies within the bounds");
    }
    mv = json_object_get(s, "multipleOf");
    if (mv != NULL) {
        double  d = json_is_number(mv) ? json_number_value(mv) : 0;

        if (!(d >= 1 && d <= 2147483647.0 && d == floor(d))) {
            return kimi_sc_fail(c, "\"multipleOf\" is supported as a whole"
                                " number from 1 to 2^31 - 1");
        }
        m = (int64_t) d;
        /* the least multiple of m at or above lo (% keeps lo's sign) */
        if (has_lo && has_hi
            && (lo % m > 0 ? lo + m - lo % m : lo - lo % m) > hi)
        {
            return kimi_sc_fail(c, "no multiple of %lld lies within the"
                                " bounds", (long long) m);
        }
    }

    k = kimi_sc_alloc(c, 8);
    if (k < 0) {
        return -1;
    }
    c->w[k] = KIMI_SN_INTEGER;
    c->w[k + 1] = has_lo;
    c->w[k + 2] = (int32_t) (uint32_t) (uint64_t) lo;
    c->w[k + 3] = (int32_t) (uint32_t) ((uint64_t) lo >> 32);
    c->w[k + 4] = has_hi;
    c->w[k + 5] = (int32_t) (uint32_t) (uint64_t) hi;
    c->w[k + 6] = (int32_t) (uint32_t) ((uint64_t) hi >> 32);
    c->w[k + 7] = (int32_t) m;
    *node = k;
    return 0;
}


/* one "type" name, with the rest of s applying */
static int
kimi_sc_typed(kimi_sc_t *c, const json_t *s, const char *type, int32_t *node)
{
    static const struct { const char *name; int kind; }  scalars[] = {
        { "string", KIMI_SN_STRING }, { "number", KIMI_SN_NUMBER },
        { "boolean", KIMI_SN_BOOLEAN },
        { "null", KIMI_SN_NULL }, { NULL, 0 }
    };
    int32_t        k, mn = 0, mx = -1, f = KIMI_SF_NONE, *dfa = NULL, d;
    size_t         n_dfa = 0;
    const json_t  *fmt, *pat, *mo;

    if (strcmp(type, "object") == 0) {
        return kimi_sc_object(c, s, node);
    }
    if (strcmp(type, "array") == 0) {
        return kimi_sc_array(c, s, node);
    }
    if (strcmp(type, "string") == 0) {
        if (kimi_sc_count(c, json_object_get(s, "minLength"), "minLength", &mn)
            != 0
            || kimi_sc_count(c, json_object_get(s, "maxLength"), "maxLength",
                             &mx) != 0)
        {
            return -1;
        }
        if (mx >= 0 && mx < mn) {
            return kimi_sc_fail(c, "\"maxLength\" is below \"minLength\"");
        }
        fmt = json_object_get(s, "format");
        pat = json_object_get(s, "pattern");
        if (pat != NULL && !json_is_string(pat)) {
            return kimi_sc_fail(c, "\"pattern\" must be a string");
        }
        if (pat != NULL && fmt != NULL) {
            return kimi_sc_fail(c, "\"pattern\" beside \"format\" is not"
                                " supported");
        }
        if (fmt != NULL) {
            static const char *const  formats[] = { "", "date", "time",
                                                    "date-time", "uuid" };
            const char               *shape = NULL;

            for (f = KIMI_SF_DATE; f <= KIMI_SF_UUID; f++) {
                if (json_is_string(fmt)
                    && strcmp(json_string_value(fmt), formats[f]) == 0)
                {
                    break;
                }
            }
            for (size_t j = 0; f > KIMI_SF_UUID && json_is_string(fmt)
                               && kimi_sc_format_shapes[j][0] != NULL; j++)
            {
                if (strcmp(json_string_value(fmt), kimi_sc_format_shapes[j][0])
                    == 0)
                {
                    shape = kimi_sc_format_shapes[j][1];
                }
            }
            for (size_t j = 0; f > KIMI_SF_UUID && json_is_string(fmt)
                               && kimi_sc_format_hints[j] != NULL; j++)
            {
                if (strcmp(json_string_value(fmt), kimi_sc_format_hints[j])
                    == 0)
                {
                    f = KIMI_SF_NONE;
                }
            }
            if (shape != NULL) {        /* held to its shape as a pattern */
                if (kimi_sc_pattern(c, shape, strlen(shape), &dfa, &n_dfa)
                    != 0)
                {
                    return -1;
                }
                f = KIMI_SF_PATTERN;
            } else if (f > KIMI_SF_UUID) {
                return kimi_sc_fail(c, "\"format\" \"%.64s\" is not"
                                    " supported (date, time, date-time, uuid,"
                                    " email, hostname, ipv4, ipv6, uri,"
                                    " duration, password and binary are)",
                                    json_is_string(fmt)
                                    ? json_string_value(fmt) : "?");
            }
        }
        if (pat != NULL) {
            if (kimi_sc_pattern(c, json_string_value(pat),
                                json_string_length(pat), &dfa, &n_dfa) != 0)
            {
                return -1;
            }
            f = KIMI_SF_PATTERN;
        }
        k = kimi_sc_alloc(c, dfa != NULL ? 5 : 4);
        d = k >= 0 && dfa != NULL ? kimi_sc_alloc(c, n_dfa) : 0;
        if (k < 0 || d < 0) {
            free(dfa);
            return -1;
        }
        c->w[k] = KIMI_SN_STRING;
        c->w[k + 1] = mn;
        c->w[k + 2] = mx;
        c->w[k + 3] = f;
        if (dfa != NULL) {
            c->w[k + 4] = d;
            memcpy(c->w + d, dfa, n_dfa * sizeof(int32_t));
            free(dfa);
        }
        *node = k;
        return 0;
    }
    /* a number that is a multiple of a whole number is an integer */
    mo = json_object_get(s, "multipleOf");
    if (strcmp(type, "integer") == 0
        || (strcmp(type, "number") == 0 && json_is_number(mo)
            && json_number_value(mo) >= 1
            && json_number_value(mo) == floor(json_number_value(mo))))
    {
        return kimi_sc_integer(c, s, node);
    }
    if (strcmp(type, "number") == 0
        && (json_object_get(s, "minimum") || json_object_get(s, "maximum")
            || json_object_get(s, "exclusiveMinimum")
            || json_object_get(s, "exclusiveMaximum") || mo != NULL))
    {
        return kimi_sc_decimal_node(c, s, node);
    }
    for (size_t i = 0; scalars[i].name != NULL; i++) {
        if (strcmp(type, scalars[i].name) == 0) {
            k = kimi_sc_alloc(c, 1);
            if (k < 0) {
                return -1;
            }
            c->w[k] = scalars[i].kind;
            *node = k;
            return 0;
        }
    }
    return kimi_sc_fail(c, "unknown \"type\" \"%.64s\"", type);
}


static int
kimi_sc_node(kimi_sc_t *c, const json_t *s, int32_t *node)
{
    const json_t  *v, *type, *any;
    const char    *k;
    const char    *any_key;
    int32_t        alts[64], u;
    size_t         i, n, was;
    int            rc, only_annotations = 1;

    if (json_is_true(s)) {
        *node = 0;
        return 0;
    }
    if (!json_is_object(s)) {
        return kimi_sc_fail(c, "a schema must be an object or true");
    }
    if (++c->depth > 64) {
        return kimi_sc_fail(c, "schemas nested deeper than 64 (or a $ref"
                            " loop that never reaches a type)");
    }

    json_object_foreach((json_t *) s, k, v) {
        for (i = 0; kimi_sc_known[i] != NULL; i++) {
            if (strcmp(k, kimi_sc_known[i]) == 0) {
                break;
            }
        }
        if (kimi_sc_known[i] == NULL) {
            return kimi_sc_fail(c, "keyword \"%.64s\" is not supported:"
                                " structured output here enforces type,"
                                " properties, required, additionalProperties,"
                                " minProperties, maxProperties, propertyNames"
                                " (an enum or const of names, or lengths and"
                                " a pattern), patternProperties (one pattern),"
                                " items, prefixItems, minItems, maxItems,"
                                " uniqueItems (of enum values, strings or"
                                " integers),"
                                " minLength, maxLength, format (date, time,"
                                " date-time, uuid, email, hostname, ipv4,"
                                " ipv6, uri, duration, password, binary),"
                                " pattern, minimum/maximum (and their"
                                " exclusive forms), multipleOf,"
                                " enum, const, allOf,"
                                " anyOf/oneOf and $ref", k);
        }
        if (!kimi_sc_annotation(k) && strcmp(k, "$ref") != 0
            && strcmp(k, "anyOf") != 0 && strcmp(k, "oneOf") != 0)
        {
            only_annotations = 0;
        }
    }

    /* allOf, and a $ref with keywords beside it (draft 2019-09 on: both
     * apply), merge into one schema */
    if (json_object_get(s, "allOf") != NULL
        || (json_object_get(s, "$ref") != NULL && !only_annotations
            && json_object_get(s, "anyOf") == NULL
            && json_object_get(s, "oneOf") == NULL))
    {
        rc = kimi_sc_allof(c, s, node);
        c->depth--;
        return rc;
    }

    v = json_object_get(s, "$ref");
    any = json_object_get(s, "anyOf");
    any_key = "anyOf";
    if (any == NULL) {
        any = json_object_get(s, "oneOf");
        any_key = "oneOf";
    }

    if (v != NULL || any != NULL) {
        if (!only_annotations || (v != NULL && any != NULL)) {
            return kimi_sc_fail(c, "\"$ref\", \"anyOf\" and \"oneOf\" must"
                                " stand alone (beside annotations) in a"
                                " schema");
        }
        if (v != NULL) {
            if (!json_is_string(v)) {
                return kimi_sc_fail(c, "\"$ref\" must be a string");
            }
            rc = kimi_sc_ref(c, json_string_value(v), node);
            c->depth--;
            return rc;
        }
        n = json_is_array(any) ? json_array_size(any) : 0;
        if (n == 0 || n > 16) {
            return kimi_sc_fail(c, "\"%s\" must list 1 to 16 schemas",
                                any_key);
        }
        if (n == 1) {
            rc = kimi_sc_node(c, json_array_get(any, 0), node);
            c->depth--;
            return rc;
        }
        u = kimi_sc_union_node(c, s);
        if (u < 0) {
            return -1;
        }
        json_array_foreach(any, i, v) {
            char  seg[32];

            snprintf(seg, sizeof(seg), "%s/%zu", any_key, i);
            was = kimi_sc_push(c, seg);
            if (kimi_sc_node(c, v, &alts[i]) != 0) {
                return -1;
            }
            c->path[was] = '\0';
        }
        rc = kimi_sc_union(c, u, alts, n, any_key[0] == 'a');
        *node = u;
        c->depth--;
        return rc;
    }

    v = json_object_get(s, "const");
    if (v != NULL) {
        json_t  *one = json_pack("[O]", v);

        rc = one != NULL ? kimi_sc_enum(c, one, node) : -1;
        json_decref(one);
        c->depth--;
        return rc;
    }
    v = json_object_get(s, "enum");
    if (v != NULL) {
        if (!json_is_array(v)) {
            return kimi_sc_fail(c, "\"enum\" must be a list");
        }
        rc = kimi_sc_enum(c, v, node);
        c->depth--;
        return rc;
    }

    type = json_object_get(s, "type");
    if (type == NULL) {
        static const char *const  typed[] = { "minimum", "maximum",
            "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
            "minLength", "maxLength", "format", "pattern", NULL };

        /* they bind one type and let any other value through: say which */
        for (i = 0; typed[i] != NULL; i++) {
            if (json_object_get(s, typed[i]) != NULL) {
                return kimi_sc_fail(c, "\"%s\" is supported beside a"
                                    " \"type\" (integer or string) only",
                                    typed[i]);
            }
        }
        if (json_object_get(s, "properties") != NULL
            || json_object_get(s, "required") != NULL
            || json_object_get(s, "additionalProperties") != NULL
            || json_object_get(s, "minProperties") != NULL
            || json_object_get(s, "maxProperties") != NULL
            || json_object_get(s, "propertyNames") != NULL
            || json_object_get(s, "patternProperties") != NULL)
        {
            rc = kimi_sc_object(c, s, node);
        } else if (json_object_get(s, "items") != NULL
                   || json_object_get(s, "minItems") != NULL
                   || json_object_get(s, "maxItems") != NULL)
        {
            rc = kimi_sc_array(c, s, node);
        } else {
            *node = 0;                 /* only annotations: any value */
            rc = 0;
        }
        c->depth--;
        return rc;
    }

    if (json_is_string(type)) {
        rc = kimi_sc_typed(c, s, json_string_value(type), node);
        c->depth--;
        return rc;
    }
    n = json_is_array(type) ? json_array_size(type) : 0;
    if (n == 0 || n > 7) {
        return kimi_sc_fail(c, "\"type\" must be a type name or a list of"
                            " them");
    }
    {
        const char  *names[8];
        int          has_number = 0;
        size_t       k2 = 0;

        json_array_foreach(type, i, v) {
            if (!json_is_string(v)) {
                return kimi_sc_fail(c, "\"type\"[%zu] must be a type name",
                                    i);
            }
            has_number |= strcmp(json_string_value(v), "number") == 0;
        }
        json_array_foreach(type, i, v) {
            /* number covers integer */
            if (!(has_number && strcmp(json_string_value(v), "integer") == 0)) {
                names[k2++] = json_string_value(v);
            }
        }
        if (k2 == 1) {
            rc = kimi_sc_typed(c, s, names[0], node);
            c->depth--;
            return rc;
        }
        u = kimi_sc_union_node(c, s);
        if (u < 0) {
            return -1;
        }
        for (i = 0; i < k2; i++) {
            if (kimi_sc_typed(c, s, names[i], &alts[i]) != 0) {
                return -1;
            }
        }
        rc = kimi_sc_union(c, u, alts, k2, 1);
        *node = u;
    }
    c->depth--;
    return rc;
}


/* 1 if every value of node e (in range) is an object or an array: what
 * may stand at the top */
static int
kimi_sc_container(const int32_t *p, int32_t e)
{
    if (p[e] == KIMI_SN_UNION) {
        for (int32_t i = 0; i < p[e + 1]; i++) {
            int32_t  a = p[e + 2 + i];

            if (a < 2 || (p[a] != KIMI_SN_OBJECT && p[a] != KIMI_SN_ARRAY
                          && p[a] != KIMI_SN_UOBJECT && p[a] != KIMI_SN_TUPLE))
            {
                return 0;
            }
        }
        return 1;
    }
    return p[e] == KIMI_SN_OBJECT || p[e] == KIMI_SN_ARRAY
           || p[e] == KIMI_SN_UOBJECT || p[e] == KIMI_SN_TUPLE;
}


int
kimi_json_schema_compile(const json_t *schema, int32_t **prog, size_t *n,
    char *err, size_t errlen)
{
    kimi_sc_t  c;
    int32_t    root;

    memset(&c, 0, sizeof(c));
    c.root = schema;
    c.err = err;
    c.errlen = errlen;
    c.owned = json_array();

    if (c.owned == NULL || kimi_sc_alloc(&c, 2) < 0
        || kimi_sc_node(&c, schema, &root) != 0)
    {
        json_decref(c.owned);
        free(c.w);
        return -1;
    }
    json_decref(c.owned);               /* the program holds no pointers */
    if (root == 0) {                   /* any value at the top: an object */
        root = kimi_sc_alloc(&c, 8);
        if (root < 0) {
            free(c.w);
            return -1;
        }
        c.w[root] = KIMI_SN_OBJECT;
        c.w[root + 4] = 1;
        c.w[root + 6] = -1;            /* no maximum of keys */
    }
    if (c.w[root] == KIMI_SN_UNION && c.w[root + 1] == 1) {
        root = c.w[root + 2];          /* an anyOf of objects, merged */
    }
    if (!kimi_sc_container(c.w, root)) {
        c.path[0] = '\0';
        kimi_sc_fail(&c, "the schema's top level must be an object or an"
                     " array (or a choice of them)");
        free(c.w);
        return -1;
    }
    c.w[0] = (int32_t) c.n;
    c.w[1] = root;
    *prog = c.w;
    *n = c.n;
    return 0;
}


/* ---- the engine's check --------------------------------------------------- */

static int
kimi_sc_check_fail(char *err, size_t errlen, int32_t node, const char *what)
{
    snprintf(err, errlen, "structured output program: node %d: %s", node,
             what);
    return -1;
}


int
kimi_json_schema_check(const int32_t *p, size_t n, char *err, size_t errlen)
{
    uint8_t   *seen;
    int32_t   *todo;
    size_t     nt = 0;
    int32_t    at, kind, cnt, child;
    size_t     bytes = n * 4;
    int        rc = 0;

    if (n < 3 || n > KIMI_SCHEMA_MAX_WORDS || (size_t) p[0] != n
        || p[1] < 2 || (size_t) p[1] >= n)
    {
        snprintf(err, errlen, "structured output program: bad header");
        return -1;
    }
    if (p[p[1]] == KIMI_SN_UNION) {     /* its alternatives in range first */
        if ((size_t) p[1] + 2 > n || p[p[1] + 1] < 1 || p[p[1] + 1] > 64
            || (size_t) p[1] + 2 + (size_t) p[p[1] + 1] > n)
        {
            snprintf(err, errlen, "structured output program: bad header");
            return -1;
        }
        for (int32_t i = 0; i < p[p[1] + 1]; i++) {
            if (p[p[1] + 2 + i] < 2 || (size_t) p[p[1] + 2 + i] >= n) {
                snprintf(err, errlen, "structured output program: bad header");
                return -1;
            }
        }
    }
    if (!kimi_sc_container(p, p[1])) {
        snprintf(err, errlen, "structured output program: bad header");
        return -1;
    }

    seen = calloc(n, 1);
    todo = malloc(n * sizeof(int32_t));
    if (seen == NULL || todo == NULL) {
        free(seen);
        free(todo);
        snprintf(err, errlen, "structured output program: out of memory");
        return -1;
    }

    todo[nt++] = p[1];
    seen[p[1]] = 1;

#define KIMI_SC_NEED(k) if ((size_t) at + (k) > n) { \
        rc = kimi_sc_check_fail(err, errlen, at, "runs past the end"); break; }
#define KIMI_SC_CHILD(x) do {                                                 \
        child = (x);                                                          \
        if (child != 0 && (child < 2 || (size_t) child >= n)) {               \
            rc = kimi_sc_check_fail(err, errlen, at, "child out of range");   \
        } else if (child != 0 && !seen[child]) {                              \
            seen[child] = 1;                                                  \
            todo[nt++] = child;                                               \
        }                                                                     \
    } while (0)
#define KIMI_SC_TEXT(o, l, min) do {                                          \
        if ((o) < 0 || (l) < (min) || (l) > KIMI_SCHEMA_MAX_TEXT              \
            || (size_t) (o) + (size_t) (l) > bytes) {                         \
            rc = kimi_sc_check_fail(err, errlen, at, "text out of range");    \
        }                                                                     \
    } while (0)

    while (nt > 0 && rc == 0) {
        at = todo[--nt];
        kind = p[at];

        switch (kind) {
        case KIMI_SN_OBJECT:
            KIMI_SC_NEED(5);
            cnt = p[at + 1];
            if (cnt < 0 || cnt > KIMI_SCHEMA_MAX_PROPS) {
                rc = kimi_sc_check_fail(err, errlen, at, "property count");
                break;
            }
            KIMI_SC_NEED(8 + 3 * (size_t) cnt);
            if (cnt < 64 && ((((uint64_t) (uint32_t) p[at + 3] << 32)
                              | (uint32_t) p[at + 2]) >> cnt) != 0)
            {
                rc = kimi_sc_check_fail(err, errlen, at, "required bits");
                break;
            }
            /* the key counts: 0 <= min, max -1 (none) or >= min, and
             * min within the keys the object can take */
            if (p[at + 5 + 3 * cnt] < 0 || p[at + 6 + 3 * cnt] < -1
                || (p[at + 6 + 3 * cnt] >= 0 && p[at + 6 + 3 * cnt] < p[at + 5 + 3 * cnt])
                || (p[at + 4] == 0 && p[at + 5 + 3 * cnt] > cnt)
                || (p[at + 4] == 1 && (p[at + 5 + 3 * cnt] != 0 || p[at + 6 + 3 * cnt] != -1)))
            {
                rc = kimi_sc_check_fail(err, errlen, at, "key counts");
                break;
            }
            /* the free keys' string: only with free keys, no format */
            if (p[at + 7 + 3 * cnt] != 0) {
                int32_t  kn = p[at + 7 + 3 * cnt];

                if (p[at + 4] < 2 || kn < 2 || (size_t) kn + 4 > n || p[kn] != KIMI_SN_STRING
                    || (p[kn + 3] != KIMI_SF_NONE && p[kn + 3] != KIMI_SF_PATTERN))
                {
                    rc = kimi_sc_check_fail(err, errlen, at, "key string");
                    break;
                }
                KIMI_SC_CHILD(kn);
            }
            for (int32_t i = 0; i < cnt && rc == 0; i++) {
                KIMI_SC_TEXT(p[at + 5 + 3 * i], p[at + 6 + 3 * i], 0);
                if (rc == 0) {
                    KIMI_SC_CHILD(p[at + 7 + 3 * i]);
                }
            }
            /* word 4: 0 only these keys, 1 any object, else the node
             * other keys' values follow */
            if (rc == 0 && p[at + 4] < 0) {
                rc = kimi_sc_check_fail(err, errlen, at, "additional keys");
            } else if (rc == 0 && p[at + 4] >= 2) {
                KIMI_SC_CHILD(p[at + 4]);
            }
            break;
        case KIMI_SN_UOBJECT: {
            int32_t   m, base, v, nv;
            uint32_t  all;

            KIMI_SC_NEED(6);
            cnt = p[at + 1];
            if (cnt < 1 || cnt > KIMI_SCHEMA_MAX_PROPS || p[at + 2] != 0
                || p[at + 3] != 0 || p[at + 4] != 0)
            {
                rc = kimi_sc_check_fail(err, errlen, at, "property count");
                break;
            }
            KIMI_SC_NEED(6 + 3 * (size_t) cnt);
            base = at + 5 + 3 * cnt;
            m = p[base];
            if (m < 2 || m > KIMI_SCHEMA_MAX_UALTS) {
                rc = kimi_sc_check_fail(err, errlen, at, "alternative count");
                break;
            }
            KIMI_SC_NEED(6 + 3 * (size_t) cnt + 2 * (size_t) m
                         + 2 * (size_t) cnt);
            all = m == 32 ? ~0u : (1u << m) - 1;
            for (int32_t a = 0; a < m && rc == 0; a++) {
                if (cnt < 64 && ((((uint64_t) (uint32_t) p[base + 2 + 2 * a]
                                   << 32) | (uint32_t) p[base + 1 + 2 * a])
                                 >> cnt) != 0)
                {
                    rc = kimi_sc_check_fail(err, errlen, at, "required bits");
                }
            }
            for (int32_t i = 0; i < cnt && rc == 0; i++) {
                uint32_t  pa = (uint32_t) p[base + 1 + 2 * m + i];

                v = p[base + 1 + 2 * m + cnt + i];
                KIMI_SC_TEXT(p[at + 5 + 3 * i], p[at + 6 + 3 * i], 0);
                if (rc == 0 && (pa == 0 || (pa & ~all) != 0)) {
                    rc = kimi_sc_check_fail(err, errlen, at, "alternatives");
                }
                if (rc == 0) {
                    KIMI_SC_CHILD(p[at + 7 + 3 * i]);
                }
                if (rc == 0 && v != 0) {    /* the child's values' or parts' table */
                    child = p[at + 7 + 3 * i];
                    nv = child >= 2 && (size_t) child + 2 <= n
                         && (p[child] == KIMI_SN_ENUM || p[child] == KIMI_SN_UNION)
                         ? p[child + 1] : 0;
                    if (nv < 1 || nv > KIMI_SCHEMA_MAX_ENUM || v < 2
                        || (size_t) v + (size_t) nv > n)
                    {
                        rc = kimi_sc_check_fail(err, errlen, at,
                                                "value table");
                        break;
                    }
                    for (int32_t k = 0; k < nv; k++) {
                        if (((uint32_t) p[v + k] & ~all) != 0) {
                            rc = kimi_sc_check_fail(err, errlen, at,
                                                    "value table");
                            break;
                        }
                    }
                }
            }
            break;
        }
        case KIMI_SN_ARRAY:
            KIMI_SC_NEED(5);
            if (p[at + 2] < 0 || p[at + 3] < -1
                || (p[at + 3] >= 0 && p[at + 3] < p[at + 2])
                || p[at + 4] < 0 || p[at + 4] > 2)
            {
                rc = kimi_sc_check_fail(err, errlen, at, "item counts");
                break;
            }
            KIMI_SC_CHILD(p[at + 1]);
            /* unique items: enum values, no more than there are */
            if (p[at + 4] == 1
                && (p[at + 1] < 2 || (size_t) p[at + 1] + 2 > n
                    || p[p[at + 1]] != KIMI_SN_ENUM || p[at + 3] < 0
                    || p[at + 3] > p[p[at + 1] + 1]))
            {
                rc = kimi_sc_check_fail(err, errlen, at, "unique items");
            }
            /* unique items remembered by hash: strings without a maximum
             * or shape, or integers without bounds; no more than the set
             * holds */
            if (rc == 0 && p[at + 4] == 2
                && (p[at + 1] < 2 || (size_t) p[at + 1] + 4 > n || p[at + 3] < 0
                    || p[at + 3] > KIMI_SCHEMA_MAX_SET
                    || !((p[p[at + 1]] == KIMI_SN_INTEGER && (size_t) p[at + 1] + 5 <= n
                          && !p[p[at + 1] + 1] && !p[p[at + 1] + 4])
                         || (p[p[at + 1]] == KIMI_SN_STRING && p[p[at + 1] + 2] < 0
                             && p[p[at + 1] + 3] == KIMI_SF_NONE))))
            {
                rc = kimi_sc_check_fail(err, errlen, at, "unique items");
            }
            break;
        case KIMI_SN_TUPLE:
            KIMI_SC_NEED(6);
            cnt = p[at + 4];
            if (p[at + 2] < 0 || p[at + 3] < -1
                || (p[at + 3] >= 0 && p[at + 3] < p[at + 2])
                || cnt < 1 || cnt > 64 || p[at + 1] < -1
                || (p[at + 1] == -1 && (p[at + 3] < 0 || p[at + 3] > cnt)))
            {
                rc = kimi_sc_check_fail(err, errlen, at, "tuple items");
                break;
            }
            KIMI_SC_NEED(5 + (size_t) cnt);
            if (p[at + 1] > 0) {
                KIMI_SC_CHILD(p[at + 1]);
            }
            for (int32_t i = 0; i < cnt && rc == 0; i++) {
                KIMI_SC_CHILD(p[at + 5 + i]);
            }
            break;
        case KIMI_SN_ENUM:
            KIMI_SC_NEED(2);
            cnt = p[at + 1];
            if (cnt < 1 || cnt > KIMI_SCHEMA_MAX_ENUM) {
                rc = kimi_sc_check_fail(err, errlen, at, "value count");
                break;
            }
            KIMI_SC_NEED(2 + 2 * (size_t) cnt);
            for (int32_t i = 0; i < cnt && rc == 0; i++) {
                KIMI_SC_TEXT(p[at + 2 + 2 * i], p[at + 3 + 2 * i], 1);
            }
            break;
        case KIMI_SN_UNION:
            KIMI_SC_NEED(2);
            cnt = p[at + 1];
            if (cnt < 1 || cnt > 64) {
                rc = kimi_sc_check_fail(err, errlen, at, "alternative count");
                break;
            }
            KIMI_SC_NEED(2 + (size_t) cnt);
            for (int32_t i = 0; i < cnt && rc == 0; i++) {
                if (p[at + 2 + i] == 0) {
                    rc = kimi_sc_check_fail(err, errlen, at,
                                            "an alternative is any value");
                    break;
                }
                KIMI_SC_CHILD(p[at + 2 + i]);
            }
            break;
        case KIMI_SN_STRING:
            KIMI_SC_NEED(4);
            if (p[at + 1] < 0 || p[at + 2] < -1
                || (p[at + 2] >= 0 && p[at + 2] < p[at + 1])
                || p[at + 3] < KIMI_SF_NONE || p[at + 3] > KIMI_SF_PATTERN)
            {
                rc = kimi_sc_check_fail(err, errlen, at, "string lengths");
                break;
            }
            if (p[at + 3] == KIMI_SF_PATTERN) {
                int32_t  d;

                KIMI_SC_NEED(5);
                d = p[at + 4];
                if (d < 2 || (size_t) d >= n || p[d] < 1
                    || (size_t) p[d] > n - (size_t) d
                    || kimi_regex_check(p + d, (size_t) p[d], err, errlen) != 0)
                {
                    rc = kimi_sc_check_fail(err, errlen, at, "string pattern");
                }
            }
            break;
        case KIMI_SN_INTEGER:
            KIMI_SC_NEED(8);
            if ((p[at + 1] != 0 && p[at + 1] != 1)
                || (p[at + 4] != 0 && p[at + 4] != 1) || p[at + 7] < 1)
            {
                rc = kimi_sc_check_fail(err, errlen, at, "integer bounds");
            }
            break;
        case KIMI_SN_DECIMAL:
            KIMI_SC_NEED(8);
            if (p[at + 1] < 0 || p[at + 1] > 15 || p[at + 2] < 0
                || p[at + 2] > 9 || p[at + 7] < 0)
            {
                rc = kimi_sc_check_fail(err, errlen, at, "number bounds");
            }
            break;
        case KIMI_SN_ANY:
        case KIMI_SN_NUMBER:
        case KIMI_SN_BOOLEAN:
        case KIMI_SN_NULL:
            break;
        default:
            rc = kimi_sc_check_fail(err, errlen, at, "unknown kind");
        }
    }

#undef KIMI_SC_NEED
#undef KIMI_SC_CHILD
#undef KIMI_SC_TEXT

    free(seen);
    free(todo);
    return rc;
}
