/*
 * Structural tags: the gateway's compiler from the request's object to the
 * slot's words, and the engine's check of those words, which also works
 * out every choice the recogniser meets (struct_tag.h).
 *
 * Owns:   the words' layout, both ways; the rules that keep the
 *         recogniser deterministic (a choice is decided by fixed texts
 *         none a prefix of another's; a text without its own end is ended
 *         by the fixed text after it, or by the output's end).
 * Never:  enforces anything (engine/sample/stag_mode.c does); takes a tree
 *         it could not enforce: kimi_stag_compile runs kimi_stag_view on
 *         its own words, so the gateway refuses what the engine would.
 *
 * The choices (kimi_stag_set_t) are FIRST and FOLLOW sets over fixed
 * texts: FIRST(f) the texts f may start with, FOLLOW(f) those that may
 * come after it (up the tree: the next element, the enclosing end, the
 * separator, or the output's end).  A format without a fixed text at its
 * start (a JSON value, a pattern, any text, free text) cannot be told
 * from another by its first bytes and is refused where that is needed.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ebnf.h"
#include "gram.h"
#include "json_schema.h"
#include "regex_dfa.h"
#include "struct_tag.h"


#define KIMI_STAG_PATH  160             /* bytes of a format's path */


/* growable word buffer */
typedef struct {
    int32_t  *w;
    size_t    n, cap;
} kimi_stag_buf_t;

/* the compiler's state */
typedef struct {
    kimi_stag_buf_t   b;
    uint32_t          n_node;
    int               nomem;
    char             *err;
    size_t            errlen;
} kimi_stag_cc_t;

static int
kimi_stag_put(kimi_stag_cc_t *cc, const int32_t *w, size_t n)
{
    kimi_stag_buf_t  *b = &cc->b;

    if (b->n + n > b->cap) {
        size_t    cap = (b->n + n) * 2 + 64;
        int32_t  *nw = realloc(b->w, cap * sizeof(int32_t));

        if (nw == NULL) {
            cc->nomem = 1;
            snprintf(cc->err, cc->errlen, "out of memory");
            return -1;
        }
        b->w = nw;
        b->cap = cap;
    }
    memcpy(b->w + b->n, w, n * sizeof(int32_t));
    b->n += n;
    return 0;
}

static int
kimi_stag_put1(kimi_stag_cc_t *cc, int32_t v)
{
    return kimi_stag_put(cc, &v, 1);
}

/* a compiled program (schema.h, regex.h) as its length and its words;
 * prog is freed */
static int
kimi_stag_put_prog(kimi_stag_cc_t *cc, int32_t *prog, size_t np)
{
    int  rc;

    rc = kimi_stag_put1(cc, (int32_t) np) != 0
         || kimi_stag_put(cc, prog, np) != 0 ? -1 : 0;
    free(prog);
    return rc;
}

/* a text as its length and one word a byte */
static int
kimi_stag_put_text(kimi_stag_cc_t *cc, const char *s, size_t len)
{
    if (kimi_stag_put1(cc, (int32_t) len) != 0) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (kimi_stag_put1(cc, (unsigned char) s[i]) != 0) {
            return -1;
        }
    }
    return 0;
}

/* a string member: its text, or NULL with err naming what */
static const char *
kimi_stag_text(kimi_stag_cc_t *cc, const json_t *v, const char *what,
    int may_be_empty, size_t *len)
{
    if (!json_is_string(v)) {
        snprintf(cc->err, cc->errlen, "%s must be a string", what);
        return NULL;
    }
    *len = json_string_length(v);
    if ((*len == 0 && !may_be_empty) || *len > KIMI_STAG_MAX_TEXT) {
        snprintf(cc->err, cc->errlen, "%s must be %d to %d bytes", what,
                 may_be_empty ? 0 : 1, KIMI_STAG_MAX_TEXT);
        return NULL;
    }
    return json_string_value(v);
}

/* a new format's type word; -1 past the limits */
static int
kimi_stag_node(kimi_stag_cc_t *cc, int32_t type, const char *path,
    int depth)
{
    if (depth >= KIMI_STAG_MAX_DEPTH) {
        snprintf(cc->err, cc->errlen, "%s: formats nested more than %d"
                 " deep", path, KIMI_STAG_MAX_DEPTH);
        return -1;
    }
    if (cc->n_node >= KIMI_STAG_MAX_NODES) {
        snprintf(cc->err, cc->errlen, "%s: more than %d formats in all",
                 path, KIMI_STAG_MAX_NODES);
        return -1;
    }
    cc->n_node++;
    return kimi_stag_put1(cc, type);
}

/* an optional boolean member as a flag */
static int
kimi_stag_flag(kimi_stag_cc_t *cc, const json_t *f, const char *key,
    int32_t flag, const char *path, int32_t *flags)
{
    const json_t  *v = json_object_get(f, key);

    if (v != NULL && !json_is_boolean(v)) {
        snprintf(cc->err, cc->errlen, "%s: \"%s\" must be a boolean", path,
                 key);
        return -1;
    }
    *flags |= json_is_true(v) ? flag : 0;
    return 0;
}

/* a member xgrammar has and we do not enforce: refused when it would
 * change the output (not null, not false, not an empty list) */
static int
kimi_stag_unsupported(kimi_stag_cc_t *cc, const json_t *f, const char *key,
    const char *path)
{
    const json_t  *v = json_object_get(f, key);

    if (v == NULL || json_is_null(v) || json_is_false(v)
        || (json_is_array(v) && json_array_size(v) == 0))
    {
        return 0;
    }
    snprintf(cc->err, cc->errlen, "%s: \"%s\" is not supported", path, key);
    return -1;
}


static int kimi_stag_emit(kimi_stag_cc_t *cc, const json_t *f,
    const char *path, int depth);

/* a JSON value by its schema (null or absent: any object) */
static int
kimi_stag_emit_json(kimi_stag_cc_t *cc, const json_t *schema,
    const char *path, int depth)
{
    int32_t  *prog;
    size_t    np;
    char      msg[160];

    if (kimi_stag_node(cc, KIMI_STAG_N_JSON, path, depth) != 0) {
        return -1;
    }
    if (schema == NULL || json_is_null(schema)) {
        schema = json_true();
    }
    if (kimi_json_schema_compile(schema, &prog, &np, msg, sizeof(msg)) != 0) {
        snprintf(cc->err, cc->errlen, "the schema of %s: %s", path, msg);
        return -1;
    }
    return kimi_stag_put_prog(cc, prog, np);
}

/* a json_schema format's options: "style" json only, no "any_order" */
static int
kimi_stag_json_options(kimi_stag_cc_t *cc, const json_t *f, const char *path)
{
    const json_t  *v = json_object_get(f, "style");

    if (v != NULL && !json_is_null(v)
        && (!json_is_string(v) || strcmp(json_string_value(v), "json") != 0))
    {
        snprintf(cc->err, cc->errlen, "%s: a \"style\" other than \"json\""
                 " is not supported", path);
        return -1;
    }
    return kimi_stag_unsupported(cc, f, "any_order", path);
}

/* an or of json_schema formats as one value, its schema their anyOf (an
 * element without a schema: any object, as alone) */
static int
kimi_stag_emit_or_json(kimi_stag_cc_t *cc, const json_t *elements,
    const char *path, int depth)
{
    json_t        *alts = json_array(), *any = NULL, *sch;
    const json_t  *e;
    size_t         i;
    char           sub[KIMI_STAG_PATH];
    int            rc = -1;

    if (alts == NULL) {
        snprintf(cc->err, cc->errlen, "%s: out of memory", path);
        return -1;
    }
    json_array_foreach(elements, i, e) {
        snprintf(sub, sizeof(sub), "%s.elements[%zu]", path, i);
        if (kimi_stag_json_options(cc, e, sub) != 0) {
            goto done;
        }
        sch = json_object_get(e, "json_schema");
        if (sch == NULL || json_is_null(sch) || json_is_true(sch)) {
            sch = json_pack("{s:s}", "type", "object");
        } else {
            json_incref(sch);
        }
        if (sch == NULL || json_array_append_new(alts, sch) != 0) {
            snprintf(cc->err, cc->errlen, "%s: out of memory", path);
            goto done;
        }
    }
    any = json_pack("{s:O}", "anyOf", alts);
    if (any == NULL) {
        snprintf(cc->err, cc->errlen, "%s: out of memory", path);
        goto done;
    }
    rc = kimi_stag_emit_json(cc, any, path, depth);

done:

    json_decref(any);
    json_decref(alts);
    return rc;
}

/* a pattern, or a grammar: without recursion as a pattern (ebnf.h), with
 * it as a grammar program (gram.h) */
static int
kimi_stag_emit_regex(kimi_stag_cc_t *cc, const json_t *f, int gr,
    const char *path, int depth)
{
    const json_t  *v = json_object_get(f, gr ? "grammar" : "pattern");
    const char    *what = gr ? "grammar" : "pattern";
    int32_t       *prog;
    size_t         np, plen;
    char          *pattern, msg[160];
    int            rc;

    if (!json_is_string(v)) {
        snprintf(cc->err, cc->errlen, "%s: a %s needs a \"%s\" string", path,
                 gr ? "grammar" : "regex", what);
        return -1;
    }
    if (gr) {
        rc = kimi_ebnf_to_regex(json_string_value(v), json_string_length(v),
                                &pattern, &plen, msg, sizeof(msg));
        if (rc == -2) {                 /* rules that refer back to themselves */
            if (kimi_ebnf_to_grammar(json_string_value(v),
                                     json_string_length(v), &prog, &np, msg,
                                     sizeof(msg)) != 0)
            {
                snprintf(cc->err, cc->errlen, "the grammar of %s: %s", path,
                         msg);
                return -1;
            }
            if (kimi_stag_node(cc, KIMI_STAG_N_GRAM, path, depth) != 0) {
                free(prog);
                return -1;
            }
            return kimi_stag_put_prog(cc, prog, np);
        }
        if (rc != 0) {
            snprintf(cc->err, cc->errlen, "the grammar of %s: %s", path, msg);
            return -1;
        }
        if (plen > KIMI_REGEX_MAX_PATTERN) {
            snprintf(cc->err, cc->errlen, "the grammar of %s expands to a"
                     " %zu-byte pattern (at most %d)", path, plen,
                     KIMI_REGEX_MAX_PATTERN);
            free(pattern);
            return -1;
        }
    } else {
        pattern = (char *) json_string_value(v);
        plen = json_string_length(v);
    }
    if (kimi_stag_node(cc, KIMI_STAG_N_REGEX, path, depth) != 0) {
        if (gr) {
            free(pattern);
        }
        return -1;
    }
    rc = kimi_regex_compile(pattern, plen, &prog, &np, msg, sizeof(msg));
    if (gr) {
        free(pattern);
    }
    if (rc != 0) {
        snprintf(cc->err, cc->errlen, "the %s of %s: %s", what, path, msg);
        return -1;
    }
    return kimi_stag_put_prog(cc, prog, np);
}

/* An or of texts (const_string, regex, grammar), one of them without a
 * fixed start: no fixed text decides it, so it becomes one pattern, the
 * alternatives' union (one grammar program where a grammar refers back to
 * itself), ended as a pattern is.  0 if f's elements are not all such
 * texts with a pattern or grammar among them (the or stays a choice
 * between fixed texts). */
static int
kimi_stag_or_of_texts(const json_t *elements)
{
    const json_t  *e;
    const char    *type;
    size_t         i;
    int            pattern = 0;

    json_array_foreach(elements, i, e) {
        type = json_string_value(json_object_get(e, "type"));
        if (type == NULL) {
            return 0;
        }
        if (strcmp(type, "regex") == 0 || strcmp(type, "grammar") == 0) {
            pattern = 1;
        } else if (strcmp(type, "const_string") != 0) {
            return 0;
        }
    }
    return pattern;
}

/* 1 if an or's elements are all JSON values (json_schema formats): one
 * value whose schema is the anyOf of theirs, which the JSON recogniser
 * tells apart by its first byte, or as objects by their keys and const
 * values (the or's own choice needs a fixed text to start each) */
static int
kimi_stag_or_of_json(const json_t *elements)
{
    const json_t  *e;
    const char    *type;
    size_t         i;

    json_array_foreach(elements, i, e) {
        type = json_string_value(json_object_get(e, "type"));
        if (type == NULL || strcmp(type, "json_schema") != 0) {
            return 0;
        }
    }
    return json_array_size(elements) > 1;
}

static int
kimi_stag_cat(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t  c = (*len + n + 1) * 2;
        char   *nb = realloc(*buf, c);

        if (nb == NULL) {
            return -1;
        }
        *buf = nb;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

/* each element's text as a pattern (a constant escaped, a regex without
 * its anchors); a grammar's stays its own text, *recursive set when one
 * refers back to itself.  The pieces are malloc'd; -1 with cc->err. */
static int
kimi_stag_or_pieces(kimi_stag_cc_t *cc, const json_t *elements,
    const char *path, kimi_ebnf_alt_t *alt, int *recursive)
{
    const json_t  *e, *v;
    size_t         i, len, np;
    char           sub[KIMI_STAG_PATH], what[KIMI_STAG_PATH + 16], msg[160];
    char           esc[8], *pat, *piece;
    const char    *text, *type;
    int32_t       *prog;
    int            rc;

    *recursive = 0;
    pat = NULL;
    json_array_foreach(elements, i, e) {
        size_t  plen = 0, pcap = 0;

        snprintf(sub, sizeof(sub), "%s.elements[%zu]", path, i);
        type = json_string_value(json_object_get(e, "type"));
        pat = NULL;

        if (type[0] == 'c') {                   /* const_string: escaped */
            snprintf(what, sizeof(what), "the value of %s", sub);
            text = kimi_stag_text(cc, json_object_get(e, "value"), what, 0,
                                  &len);
            if (text == NULL) {
                return -1;
            }
            for (size_t k = 0; k < len; k++) {
                unsigned char  c = (unsigned char) text[k];
                size_t         n = 1;

                if (c < 0x20 || c == 0x7f) {
                    n = (size_t) snprintf(esc, sizeof(esc), "\\x%02X", c);
                } else if (c < 0x80 && strchr(".^$|?*+()[]{}\\", c) != NULL) {
                    esc[0] = '\\';
                    esc[1] = (char) c;
                    n = 2;
                } else {
                    esc[0] = (char) c;          /* UTF-8 bytes as they are */
                }
                if (kimi_stag_cat(&pat, &plen, &pcap, esc, n) != 0) {
                    goto nomem;
                }
            }

        } else if (type[0] == 'r') {            /* regex: as written */
            size_t  bs = 0;

            v = json_object_get(e, "pattern");
            if (!json_is_string(v)) {
                snprintf(cc->err, cc->errlen, "%s: a regex needs a"
                         " \"pattern\" string", sub);
                return -1;
            }
            text = json_string_value(v);
            len = json_string_length(v);
            if (kimi_regex_compile(text, len, &prog, &np, msg, sizeof(msg))
                != 0)
            {
                snprintf(cc->err, cc->errlen, "the pattern of %s: %s", sub,
                         msg);
                return -1;
            }
            free(prog);
            /* its anchors, allowed only at its ends, go: the match is
             * whole anyway */
            if (len > 0 && text[0] == '^') {
                text++;
                len--;
            }
            while (bs + 1 < len && text[len - 2 - bs] == '\\') {
                bs++;
            }
            if (len > 0 && text[len - 1] == '$' && bs % 2 == 0) {
                len--;
            }
            if (kimi_stag_cat(&pat, &plen, &pcap, text, len) != 0) {
                goto nomem;
            }

        } else {                                /* grammar */
            v = json_object_get(e, "grammar");
            if (!json_is_string(v)) {
                snprintf(cc->err, cc->errlen, "%s: a grammar needs a"
                         " \"grammar\" string", sub);
                return -1;
            }
            rc = kimi_ebnf_to_regex(json_string_value(v),
                                    json_string_length(v), &piece, &len, msg,
                                    sizeof(msg));
            if (rc == -2) {             /* its rules refer back to themselves */
                *recursive = 1;
                alt[i].grammar = 1;
                alt[i].text = json_string_value(v);
                alt[i].len = json_string_length(v);
                continue;
            }
            if (rc != 0) {
                snprintf(cc->err, cc->errlen, "the grammar of %s: %s", sub,
                         msg);
                return -1;
            }
            pat = piece;
            plen = len;
        }

        if (pat == NULL && kimi_stag_cat(&pat, &plen, &pcap, "", 0) != 0) {
            goto nomem;
        }
        alt[i].grammar = 0;
        alt[i].text = pat;
        alt[i].len = plen;
    }

    return 0;

nomem:

    free(pat);
    snprintf(cc->err, cc->errlen, "%s: out of memory", path);
    return -1;
}

static int
kimi_stag_emit_or_pattern(kimi_stag_cc_t *cc, const json_t *elements,
    const char *path, int depth)
{
    size_t            n_el = json_array_size(elements), np, plen = 0, pcap = 0;
    kimi_ebnf_alt_t  *alt = calloc(n_el, sizeof(*alt));
    char             *pat = NULL, msg[200];
    int32_t          *prog;
    int               rc = -1, recursive;

    if (alt == NULL) {
        snprintf(cc->err, cc->errlen, "%s: out of memory", path);
        return -1;
    }
    if (kimi_stag_or_pieces(cc, elements, path, alt, &recursive) != 0) {
        goto done;
    }

    if (recursive) {
        /* a grammar refers back to itself: all of them as one grammar
         * program, run by the pushdown recogniser */
        if (kimi_ebnf_union_to_grammar(alt, (int) n_el, &prog, &np, msg,
                                       sizeof(msg)) != 0)
        {
            snprintf(cc->err, cc->errlen, "%s, its texts as one grammar: %s",
                     path, msg);
            goto done;
        }
        if (kimi_stag_node(cc, KIMI_STAG_N_GRAM, path, depth) != 0) {
            free(prog);
            goto done;
        }
        rc = kimi_stag_put_prog(cc, prog, np);
        goto done;
    }

    for (size_t i = 0; i < n_el; i++) {
        if (kimi_stag_cat(&pat, &plen, &pcap, i ? "|(?:" : "(?:", i ? 4 : 3)
            != 0
            || kimi_stag_cat(&pat, &plen, &pcap, alt[i].text, alt[i].len) != 0
            || kimi_stag_cat(&pat, &plen, &pcap, ")", 1) != 0)
        {
            snprintf(cc->err, cc->errlen, "%s: out of memory", path);
            goto done;
        }
    }
    if (plen > KIMI_REGEX_MAX_PATTERN) {
        snprintf(cc->err, cc->errlen, "%s: its texts make a %zu-byte pattern"
                 " (at most %d)", path, plen, KIMI_REGEX_MAX_PATTERN);
        goto done;
    }
    if (kimi_stag_node(cc, KIMI_STAG_N_REGEX, path, depth) != 0) {
        goto done;
    }
    if (kimi_regex_compile(pat, plen, &prog, &np, msg, sizeof(msg)) != 0) {
        snprintf(cc->err, cc->errlen, "%s, its texts as one pattern: %s",
                 path, msg);
        goto done;
    }
    rc = kimi_stag_put_prog(cc, prog, np);

done:

    for (size_t i = 0; i < n_el; i++) {
        if (!alt[i].grammar) {
            free((char *) alt[i].text);
        }
    }
    free(alt);
    free(pat);
    return rc;
}

/* {"begin", "content", "end"} (legacy: {"begin", "schema", "end"}) */
static int
kimi_stag_emit_tag(kimi_stag_cc_t *cc, const json_t *tag, int legacy,
    const char *path, int depth)
{
    const json_t  *type = json_object_get(tag, "type");
    const char    *text;
    size_t         len;
    char           what[KIMI_STAG_PATH + 16], sub[KIMI_STAG_PATH];

    if (!json_is_object(tag)) {
        snprintf(cc->err, cc->errlen, legacy ? "%s must be an object with"
                 " \"begin\", \"schema\" and \"end\"" : "%s must be a tag:"
                 " {\"begin\", \"content\": {\"type\": ...}, \"end\"}", path);
        return -1;
    }
    if (type != NULL && (!json_is_string(type)
                         || strcmp(json_string_value(type), "tag") != 0))
    {
        snprintf(cc->err, cc->errlen, "%s must be of type \"tag\"", path);
        return -1;
    }
    if (json_is_array(json_object_get(tag, "end"))) {
        snprintf(cc->err, cc->errlen, "%s: a list of end texts is not"
                 " supported (one string is)", path);
        return -1;
    }
    if (kimi_stag_node(cc, KIMI_STAG_N_TAG, path, depth) != 0) {
        return -1;
    }
    snprintf(what, sizeof(what), "the begin of %s", path);
    text = kimi_stag_text(cc, json_object_get(tag, "begin"), what, 0, &len);
    if (text == NULL || kimi_stag_put_text(cc, text, len) != 0) {
        return -1;
    }
    snprintf(what, sizeof(what), "the end of %s", path);
    text = kimi_stag_text(cc, json_object_get(tag, "end"), what, 1, &len);
    if (text == NULL || kimi_stag_put_text(cc, text, len) != 0) {
        return -1;
    }
    if (legacy) {
        return kimi_stag_emit_json(cc, json_object_get(tag, "schema"), path,
                                   depth + 1);
    }
    snprintf(sub, sizeof(sub), "%s.content", path);
    return kimi_stag_emit(cc, json_object_get(tag, "content"), sub,
                          depth + 1);
}

/* the tags of triggered_tags or tags_with_separator; trigs: every begin
 * must start with one of them */
static int
kimi_stag_emit_tags(kimi_stag_cc_t *cc, const json_t *tags,
    const json_t *trigs, int legacy, const char *path, int depth)
{
    const json_t  *tag, *v, *begin;
    size_t         i, j;
    char           sub[KIMI_STAG_PATH];

    if (!json_is_array(tags) || json_array_size(tags) == 0
        || json_array_size(tags) > KIMI_STAG_MAX_STRUCTS)
    {
        if (legacy) {
            snprintf(cc->err, cc->errlen, "\"structures\" must be an array"
                     " of 1 to %d objects with \"begin\", \"schema\" and"
                     " \"end\"", KIMI_STAG_MAX_STRUCTS);
        } else {
            snprintf(cc->err, cc->errlen, "%s: \"tags\" must be an array of"
                     " 1 to %d tags", path, KIMI_STAG_MAX_STRUCTS);
        }
        return -1;
    }
    if (kimi_stag_put1(cc, (int32_t) json_array_size(tags)) != 0) {
        return -1;
    }

    json_array_foreach(tags, i, tag) {
        if (legacy) {
            snprintf(sub, sizeof(sub), "structure %zu", i);
        } else {
            snprintf(sub, sizeof(sub), "%s.tags[%zu]", path, i);
        }
        begin = json_object_get(tag, "begin");
        if (trigs != NULL && json_is_string(begin)) {
            json_array_foreach(trigs, j, v) {
                if (json_string_length(v) <= json_string_length(begin)
                    && memcmp(json_string_value(v), json_string_value(begin),
                              json_string_length(v)) == 0)
                {
                    break;
                }
            }
            if (j == json_array_size(trigs)) {
                snprintf(cc->err, cc->errlen, "the begin of %s starts with"
                         " no trigger: it could never be written", sub);
                return -1;
            }
        }
        if (kimi_stag_emit_tag(cc, tag, legacy, sub, depth + 1) != 0) {
            return -1;
        }
    }
    return 0;
}

/* triggered_tags, from the format form or the legacy structures */
static int
kimi_stag_emit_trig(kimi_stag_cc_t *cc, const json_t *trigs,
    const json_t *tags, int32_t flags, int legacy, const char *path,
    int depth)
{
    const json_t  *v;
    const char    *text;
    size_t         i, len;
    char           what[KIMI_STAG_PATH + 16];

    if (!json_is_array(trigs) || json_array_size(trigs) == 0
        || json_array_size(trigs) > KIMI_STAG_MAX_TRIGGERS)
    {
        snprintf(cc->err, cc->errlen, "%s%s\"triggers\" must be an array of 1"
                 " to %d strings", legacy ? "" : path, legacy ? "" : ": ",
                 KIMI_STAG_MAX_TRIGGERS);
        return -1;
    }
    if (kimi_stag_node(cc, KIMI_STAG_N_TRIG, path, depth) != 0
        || kimi_stag_put1(cc, flags) != 0
        || kimi_stag_put1(cc, (int32_t) json_array_size(trigs)) != 0)
    {
        return -1;
    }
    json_array_foreach(trigs, i, v) {
        if (legacy) {
            snprintf(what, sizeof(what), "trigger %zu", i);
        } else {
            snprintf(what, sizeof(what), "%s: trigger %zu", path, i);
        }
        text = kimi_stag_text(cc, v, what, 0, &len);
        if (text == NULL || kimi_stag_put_text(cc, text, len) != 0) {
            return -1;
        }
    }
    return kimi_stag_emit_tags(cc, tags, trigs, legacy, path, depth);
}

/* one format and, in pre-order, its elements */
static int
kimi_stag_emit(kimi_stag_cc_t *cc, const json_t *f, const char *path,
    int depth)
{
    const json_t  *v, *e;
    const char    *type, *text;
    size_t         i, len;
    int32_t        flags = 0;
    char           sub[KIMI_STAG_PATH], what[KIMI_STAG_PATH + 16];

    type = json_string_value(json_object_get(f, "type"));
    if (!json_is_object(f) || type == NULL) {
        snprintf(cc->err, cc->errlen, "%s must be an object with a"
                 " \"type\"", path);
        return -1;
    }

    if (strcmp(type, "const_string") == 0) {
        snprintf(what, sizeof(what), "the value of %s", path);
        text = kimi_stag_text(cc, json_object_get(f, "value"), what, 0, &len);
        if (text == NULL || kimi_stag_node(cc, KIMI_STAG_N_CONST, path, depth)
                            != 0)
        {
            return -1;
        }
        return kimi_stag_put_text(cc, text, len);
    }

    if (strcmp(type, "json_schema") == 0) {
        if (kimi_stag_json_options(cc, f, path) != 0) {
            return -1;
        }
        return kimi_stag_emit_json(cc, json_object_get(f, "json_schema"),
                                   path, depth);
    }

    if (strcmp(type, "regex") == 0 || strcmp(type, "grammar") == 0) {
        return kimi_stag_emit_regex(cc, f, type[0] == 'g', path, depth);
    }

    if (strcmp(type, "any_text") == 0) {
        if (kimi_stag_unsupported(cc, f, "excludes", path) != 0
            || kimi_stag_unsupported(cc, f, "max_tokens", path) != 0
            || kimi_stag_unsupported(cc, f, "max_chars", path) != 0)
        {
            return -1;
        }
        return kimi_stag_node(cc, KIMI_STAG_N_TEXT, path, depth);
    }

    if (strcmp(type, "sequence") == 0 || strcmp(type, "or") == 0) {
        v = json_object_get(f, "elements");
        if (!json_is_array(v) || json_array_size(v) == 0
            || json_array_size(v) > KIMI_STAG_MAX_STRUCTS)
        {
            snprintf(cc->err, cc->errlen, "%s: \"elements\" must be an array"
                     " of 1 to %d formats", path, KIMI_STAG_MAX_STRUCTS);
            return -1;
        }
        if (type[0] == 'o' && kimi_stag_or_of_texts(v)) {
            return kimi_stag_emit_or_pattern(cc, v, path, depth);
        }
        if (type[0] == 'o' && kimi_stag_or_of_json(v)) {
            return kimi_stag_emit_or_json(cc, v, path, depth);
        }
        if (kimi_stag_node(cc, type[0] == 's' ? KIMI_STAG_N_SEQ
                                              : KIMI_STAG_N_OR, path, depth)
            != 0
            || kimi_stag_put1(cc, (int32_t) json_array_size(v)) != 0)
        {
            return -1;
        }
        json_array_foreach(v, i, e) {
            snprintf(sub, sizeof(sub), "%s.elements[%zu]", path, i);
            if (kimi_stag_emit(cc, e, sub, depth + 1) != 0) {
                return -1;
            }
        }
        return 0;
    }

    if (strcmp(type, "tag") == 0) {
        return kimi_stag_emit_tag(cc, f, 0, path, depth);
    }

    if (strcmp(type, "triggered_tags") == 0
        || strcmp(type, "tags_with_separator") == 0)
    {
        if (kimi_stag_flag(cc, f, "at_least_one", KIMI_STAG_AT_LEAST_ONE,
                           path, &flags) != 0
            || kimi_stag_flag(cc, f, "stop_after_first", KIMI_STAG_STOP_AFTER,
                              path, &flags) != 0
            || kimi_stag_unsupported(cc, f, "excludes", path) != 0)
        {
            return -1;
        }
        if (type[0] == 't' && type[1] == 'r') {
            return kimi_stag_emit_trig(cc, json_object_get(f, "triggers"),
                                       json_object_get(f, "tags"), flags, 0,
                                       path, depth);
        }
        snprintf(what, sizeof(what), "the separator of %s", path);
        text = kimi_stag_text(cc, json_object_get(f, "separator"), what, 1,
                              &len);
        if (text == NULL
            || kimi_stag_node(cc, KIMI_STAG_N_SEPTAGS, path, depth) != 0
            || kimi_stag_put1(cc, flags) != 0
            || kimi_stag_put_text(cc, text, len) != 0)
        {
            return -1;
        }
        return kimi_stag_emit_tags(cc, json_object_get(f, "tags"), NULL, 0,
                                   path, depth);
    }

    snprintf(cc->err, cc->errlen, "%s: a format of type \"%.32s\" is not"
             " supported (const_string, json_schema, regex, grammar,"
             " any_text, sequence, or, tag, triggered_tags and"
             " tags_with_separator are)", path, type);
    return -1;
}


int
kimi_stag_compile(const json_t *obj, int32_t **w, size_t *n, char *err,
    size_t errlen)
{
    const json_t    *fmt = json_object_get(obj, "format");
    kimi_stag_cc_t   cc;
    kimi_stag_t     *t;
    int              rc;

    memset(&cc, 0, sizeof(cc));
    cc.err = err;
    cc.errlen = errlen;

    /* the header: flags, then the number of formats, set at the end */
    if (kimi_stag_put1(&cc, fmt != NULL ? 0 : KIMI_STAG_W_LEGACY) != 0
        || kimi_stag_put1(&cc, 0) != 0)
    {
        goto failed;
    }

    if (fmt != NULL) {
        if (json_object_get(obj, "structures") != NULL
            || json_object_get(obj, "triggers") != NULL)
        {
            snprintf(err, errlen, "give either \"format\" or \"structures\""
                     " and \"triggers\"");
            goto failed;
        }
        rc = kimi_stag_emit(&cc, fmt, "format", 0);
    } else {
        rc = kimi_stag_emit_trig(&cc, json_object_get(obj, "triggers"),
                                 json_object_get(obj, "structures"), 0, 1,
                                 "structures", 0);
    }
    if (rc != 0) {
        goto failed;
    }
    cc.b.w[1] = (int32_t) cc.n_node;

    /* the engine's own check and analysis: what it would refuse, the
     * gateway refuses (with the same message) */
    t = malloc(sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        goto failed;
    }
    rc = kimi_stag_view(cc.b.w, cc.b.n, t, err, errlen);
    free(t);
    if (rc != 0) {
        goto failed;
    }

    *w = cc.b.w;
    *n = cc.b.n;
    return 0;

failed:
    free(cc.b.w);
    return -1;
}


/* ---- the engine's side: checking the words, working out the choices ---- */

/* a text at w[*at]: its length (<= KIMI_STAG_MAX_TEXT) and bytes */
static int
kimi_stag_view_text(const int32_t *w, size_t n, size_t *at, int may_be_empty,
    const int32_t **text, uint32_t *len)
{
    if (*at >= n || w[*at] < (may_be_empty ? 0 : 1)
        || w[*at] > KIMI_STAG_MAX_TEXT || (size_t) w[*at] > n - *at - 1)
    {
        return -1;
    }
    *len = (uint32_t) w[*at];
    *text = w + *at + 1;
    for (uint32_t i = 0; i < *len; i++) {
        if ((*text)[i] < 0 || (*text)[i] > 255) {
            return -1;
        }
    }
    *at += 1 + *len;
    return 0;
}

/* a program at w[*at]: its length and words */
static int
kimi_stag_view_prog(const int32_t *w, size_t n, size_t *at,
    kimi_stag_node_t *nd)
{
    if (*at >= n || w[*at] < 2 || (size_t) w[*at] > n - *at - 1) {
        return -1;
    }
    nd->prog_len = (uint32_t) w[*at];
    nd->prog = w + *at + 1;
    *at += 1 + nd->prog_len;
    return 0;
}


void
kimi_stag_path(const kimi_stag_t *t, uint32_t node, char *buf, size_t len)
{
    uint32_t  chain[KIMI_STAG_MAX_DEPTH + 1], k = 0;
    size_t    at;
    int       legacy = (t->flags & KIMI_STAG_W_LEGACY) != 0;

    while (node < t->n_node && k <= KIMI_STAG_MAX_DEPTH) {
        chain[k++] = node;
        node = t->node[node].parent;
    }
    at = (size_t) snprintf(buf, len, "%s", legacy ? "structures" : "format");
    for (uint32_t i = k - 1; i > 0 && at < len; i--) {
        const kimi_stag_node_t  *p = &t->node[chain[i]];
        const kimi_stag_node_t  *c = &t->node[chain[i - 1]];

        if (legacy && i == k - 1) {
            at = (size_t) snprintf(buf, len, "structure %u", c->index);
        } else if (p->type == KIMI_STAG_N_TAG) {
            at += (size_t) snprintf(buf + at, len - at, legacy ? ".schema"
                                                               : ".content");
        } else {
            at += (size_t) snprintf(buf + at, len - at, p->type
                                    == KIMI_STAG_N_SEQ
                                    || p->type == KIMI_STAG_N_OR
                                    ? ".elements[%u]" : ".tags[%u]", c->index);
        }
    }
}


/* the analysis' state: the set being filled, and the first format that
 * has no fixed text where one is needed */
typedef struct {
    kimi_stag_t  *t;
    uint32_t      set;
    uint32_t      nolit;                /* KIMI_STAG_MAX_NODES: none */
    char         *err;
    size_t        errlen;
} kimi_stag_an_t;

static int
kimi_stag_alt(kimi_stag_an_t *an, const int32_t *text, uint32_t len,
    uint32_t node, int kind)
{
    kimi_stag_t      *t = an->t;
    kimi_stag_set_t  *s = &t->set[an->set];

    for (uint32_t i = s->first; i < s->first + s->n; i++) {
        if (t->alt[i].node == node && t->alt[i].kind == kind
            && kind != KIMI_STAG_A_TRIGGER)
        {
            return 0;                   /* the same place, reached twice */
        }
    }
    if (t->n_alt >= KIMI_STAG_MAX_ALTS || s->n >= KIMI_STAG_MAX_STRUCTS) {
        snprintf(an->err, an->errlen, "structural tag: more than %d fixed"
                 " texts in one choice or %d in all",
                 KIMI_STAG_MAX_STRUCTS, KIMI_STAG_MAX_ALTS);
        return -1;
    }
    t->alt[t->n_alt].text = text;
    t->alt[t->n_alt].len = len;
    t->alt[t->n_alt].node = (uint16_t) node;
    t->alt[t->n_alt].kind = (uint8_t) kind;
    t->n_alt++;
    s->n++;
    if (len > s->max_len) {
        s->max_len = (uint16_t) len;
    }
    return 0;
}

static int
kimi_stag_begins(kimi_stag_an_t *an, uint32_t n)
{
    const kimi_stag_t  *t = an->t;

    for (uint32_t i = 0; i < t->node[n].n_child; i++) {
        uint32_t  c = t->children[t->node[n].child + i];

        if (kimi_stag_alt(an, t->node[c].text, t->node[c].len, c,
                          KIMI_STAG_A_BEGIN) != 0)
        {
            return -1;
        }
    }
    return 0;
}

/* FIRST(n): the fixed texts n may start with */
static int
kimi_stag_first(kimi_stag_an_t *an, uint32_t n)
{
    const kimi_stag_t       *t = an->t;
    const kimi_stag_node_t  *nd = &t->node[n];

    switch (nd->type) {
    case KIMI_STAG_N_CONST:
        return kimi_stag_alt(an, nd->text, nd->len, n, KIMI_STAG_A_CONST);
    case KIMI_STAG_N_TAG:
        return kimi_stag_alt(an, nd->text, nd->len, n, KIMI_STAG_A_BEGIN);
    case KIMI_STAG_N_SEQ:
    case KIMI_STAG_N_OR:
        for (uint32_t i = 0; i < nd->n_child; i++) {
            uint32_t  c = t->children[nd->child + i];

            if (kimi_stag_first(an, c) != 0) {
                return -1;
            }
            if (nd->type == KIMI_STAG_N_SEQ && !t->node[c].nullable) {
                break;
            }
        }
        return 0;
    case KIMI_STAG_N_SEPTAGS:
        return kimi_stag_begins(an, n);
    case KIMI_STAG_N_TRIG:
        if (nd->flags & KIMI_STAG_AT_LEAST_ONE) {
            return kimi_stag_begins(an, n);
        }
        break;                          /* free text first */
    default:
        break;
    }

    /* a JSON value, a pattern, any text, free text: no fixed text */
    if (an->nolit == KIMI_STAG_MAX_NODES) {
        an->nolit = n;
    }
    return 0;
}

/* FOLLOW(n): the fixed texts that may come right after n, up the tree;
 * eof where nothing more may come */
static int
kimi_stag_follow(kimi_stag_an_t *an, uint32_t n)
{
    kimi_stag_t  *t = an->t;

    for ( ;; ) {
        uint32_t                 p = t->node[n].parent, c;
        const kimi_stag_node_t  *pd;

        if (p >= t->n_node) {
            t->set[an->set].eof = 1;
            return 0;
        }
        pd = &t->node[p];

        switch (pd->type) {
        case KIMI_STAG_N_SEQ:
            if (t->node[n].index + 1u < pd->n_child) {
                c = t->children[pd->child + t->node[n].index + 1];
                if (kimi_stag_first(an, c) != 0) {
                    return -1;
                }
                if (!t->node[c].nullable) {
                    return 0;
                }
                n = c;
                continue;
            }
            break;
        case KIMI_STAG_N_TAG:
            if (pd->end_len > 0) {
                return kimi_stag_alt(an, pd->end, pd->end_len, p,
                                     KIMI_STAG_A_END);
            }
            break;
        case KIMI_STAG_N_TRIG:
            if (!(pd->flags & KIMI_STAG_STOP_AFTER)) {
                if (an->nolit == KIMI_STAG_MAX_NODES) {
                    an->nolit = p;      /* free text again */
                }
                return 0;
            }
            break;
        case KIMI_STAG_N_SEPTAGS:
            if (!(pd->flags & KIMI_STAG_STOP_AFTER)) {
                if (pd->len > 0 ? kimi_stag_alt(an, pd->text, pd->len, p,
                                                KIMI_STAG_A_SEP)
                                : kimi_stag_begins(an, p))
                {
                    return -1;
                }
            }
            break;
        default:                        /* OR */
            break;
        }
        n = p;
    }
}

static int
kimi_stag_set_open(kimi_stag_an_t *an, uint32_t n, int which)
{
    kimi_stag_t  *t = an->t;

    if (t->n_set >= KIMI_STAG_MAX_SETS) {
        snprintf(an->err, an->errlen, "structural tag: too many choices");
        return -1;
    }
    an->set = t->n_set++;
    memset(&t->set[an->set], 0, sizeof(kimi_stag_set_t));
    t->set[an->set].first = t->n_alt;
    t->node[n].set[which] = (uint16_t) an->set;
    an->nolit = KIMI_STAG_MAX_NODES;
    return 0;
}

/* the text (0-terminated, quoted, cut) of an alternative for messages */
static const char *
kimi_stag_quote(const kimi_stag_alt_t *a, char *buf, size_t len)
{
    size_t  k = 0;

    for (uint32_t i = 0; i < a->len && k + 5 < len; i++) {
        int  c = a->text[i];

        buf[k++] = c >= 0x20 && c < 0x7f && c != '"' ? (char) c : '?';
    }
    if (k + 5 >= len) {
        buf[k++] = '.';
        buf[k++] = '.';
    }
    buf[k] = '\0';
    return buf;
}

/* a choice: none of its texts a prefix of another (the text decides) */
static int
kimi_stag_check_choice(kimi_stag_an_t *an, uint32_t n, uint32_t set)
{
    const kimi_stag_t      *t = an->t;
    const kimi_stag_set_t  *s = &t->set[set];
    char                    path[KIMI_STAG_PATH], qa[48], qb[48];

    for (uint32_t i = s->first; i < s->first + s->n; i++) {
        const kimi_stag_alt_t  *a = &t->alt[i];

        if (a->kind == KIMI_STAG_A_TRIGGER || a->kind == KIMI_STAG_A_FORBID) {
            continue;
        }
        for (uint32_t j = s->first; j < i; j++) {
            const kimi_stag_alt_t  *b = &t->alt[j];
            uint32_t                m = a->len < b->len ? a->len : b->len;

            if (b->kind == KIMI_STAG_A_TRIGGER
                || b->kind == KIMI_STAG_A_FORBID
                || memcmp(a->text, b->text, m * sizeof(int32_t)) != 0)
            {
                continue;
            }
            kimi_stag_path(t, n, path, sizeof(path));
            snprintf(an->err, an->errlen, "%s: \"%s\" and \"%s\" %s: which"
                     " format follows would be unknown", path,
                     kimi_stag_quote(b, qb, sizeof(qb)),
                     kimi_stag_quote(a, qa, sizeof(qa)),
                     a->len == b->len ? "are equal"
                                      : "are one a prefix of the other");
            return -1;
        }
    }
    return 0;
}

/* free text's stops: no fixed text that ends it may hold another stop
 * before its own last byte (that one would fire first: the text could
 * never end) */
static int
kimi_stag_check_stops(kimi_stag_an_t *an, uint32_t n, uint32_t set)
{
    const kimi_stag_t      *t = an->t;
    const kimi_stag_set_t  *s = &t->set[set];
    char                    path[KIMI_STAG_PATH], qa[48], qb[48];

    if (kimi_stag_check_choice(an, n, set) != 0) {
        return -1;
    }
    for (uint32_t i = s->first; i < s->first + s->n; i++) {
        const kimi_stag_alt_t  *a = &t->alt[i];

        if (a->kind == KIMI_STAG_A_TRIGGER || a->kind == KIMI_STAG_A_FORBID) {
            continue;
        }
        for (uint32_t j = s->first; j < s->first + s->n; j++) {
            const kimi_stag_alt_t  *b = &t->alt[j];

            if (j == i || b->len > a->len) {
                continue;
            }
            for (uint32_t k = 0; k + b->len <= a->len; k++) {
                if ((k + b->len == a->len && b->len < a->len)
                    || memcmp(a->text + k, b->text, b->len * sizeof(int32_t))
                       != 0)
                {
                    continue;           /* a shorter suffix: a wins */
                }
                kimi_stag_path(t, n, path, sizeof(path));
                snprintf(an->err, an->errlen, "%s: the %s \"%s\" is inside"
                         " \"%s\", the text that ends it: it could never be"
                         " written", path,
                         b->kind == KIMI_STAG_A_TRIGGER ? "trigger"
                         : b->kind == KIMI_STAG_A_FORBID ? "enclosing end"
                         : "text", kimi_stag_quote(b, qb, sizeof(qb)),
                         kimi_stag_quote(a, qa, sizeof(qa)));
                return -1;
            }
        }
    }
    return 0;
}

/* the end of the nearest enclosing tag may not be written in free text
 * that something else ends (xgrammar's excludes) */
static int
kimi_stag_forbid(kimi_stag_an_t *an, uint32_t n)
{
    const kimi_stag_t      *t = an->t;
    const kimi_stag_set_t  *s = &t->set[an->set];
    uint32_t                p = t->node[n].parent;

    while (p < t->n_node && t->node[p].type != KIMI_STAG_N_TAG) {
        p = t->node[p].parent;
    }
    if (p >= t->n_node || t->node[p].end_len == 0) {
        return 0;
    }
    for (uint32_t i = s->first; i < s->first + s->n; i++) {
        if (t->alt[i].node == p && t->alt[i].kind == KIMI_STAG_A_END) {
            return 0;                   /* that end is what ends it */
        }
    }
    return kimi_stag_alt(an, t->node[p].end, t->node[p].end_len, p,
                         KIMI_STAG_A_FORBID);
}


/* a nolit found while filling a set: the message for format n */
static int
kimi_stag_nolit(kimi_stag_an_t *an, uint32_t n, const char *what)
{
    static const char  *names[] = { "const_string", "json_schema",
                                    "regex or grammar", "any_text",
                                    "sequence", "or", "tag",
                                    "triggered_tags", "tags_with_separator" };
    const kimi_stag_t  *t = an->t;
    uint32_t            c = an->nolit;
    char                path[KIMI_STAG_PATH], culprit[KIMI_STAG_PATH];

    kimi_stag_path(t, n, path, sizeof(path));
    kimi_stag_path(t, c, culprit, sizeof(culprit));
    snprintf(an->err, an->errlen, "%s: %s; the %s%s at %s does not start"
             " with fixed text (a const_string or a tag's begin)", path, what,
             names[t->node[c].type], t->node[c].type == KIMI_STAG_N_TRIG
             ? "' free text" : "", culprit);
    return -1;
}


/* free or any text (what) at n: the texts that end it (its set, opened,
 * may hold triggers already), the end it may not hold, and no such text
 * that another would pre-empt */
static int
kimi_stag_free_text(kimi_stag_an_t *an, uint32_t n, const char *what)
{
    char  msg[96];

    if (kimi_stag_follow(an, n) != 0) {
        return -1;
    }
    if (an->nolit != KIMI_STAG_MAX_NODES) {
        snprintf(msg, sizeof(msg), "%s needs an end text or fixed text after"
                 " it (what ends it)", what);
        return kimi_stag_nolit(an, n, msg);
    }
    if (kimi_stag_forbid(an, n) != 0) {
        return -1;
    }
    return kimi_stag_check_stops(an, n, an->set);
}


/* every choice of the tree, and the rules that keep it deterministic */
static int
kimi_stag_analyse(kimi_stag_an_t *an)
{
    kimi_stag_t  *t = an->t;
    char          path[KIMI_STAG_PATH];

    for (uint32_t n = 0; n < t->n_node; n++) {
        kimi_stag_node_t  *nd = &t->node[n];
        kimi_stag_set_t   *s;

        switch (nd->type) {

        case KIMI_STAG_N_CONST:
        case KIMI_STAG_N_TAG:
            if (kimi_stag_set_open(an, n, 0) != 0
                || kimi_stag_first(an, n) != 0)
            {
                return -1;
            }
            if (nd->type == KIMI_STAG_N_TAG && nd->end_len > 0
                && (kimi_stag_set_open(an, n, 1) != 0
                    || kimi_stag_alt(an, nd->end, nd->end_len, n,
                                     KIMI_STAG_A_END) != 0))
            {
                return -1;
            }
            break;

        case KIMI_STAG_N_OR:
            if (kimi_stag_set_open(an, n, 0) != 0
                || kimi_stag_first(an, n) != 0
                || (nd->nullable && an->nolit == KIMI_STAG_MAX_NODES
                    && kimi_stag_follow(an, n) != 0))
            {
                return -1;
            }
            if (an->nolit != KIMI_STAG_MAX_NODES) {
                return kimi_stag_nolit(an, n, "an or is decided by the fixed"
                                       " text each element starts with");
            }
            if (kimi_stag_check_choice(an, n, an->set) != 0) {
                return -1;
            }
            break;

        case KIMI_STAG_N_TRIG:
            if (kimi_stag_set_open(an, n, 0) != 0
                || kimi_stag_begins(an, n) != 0
                || kimi_stag_check_choice(an, n, an->set) != 0)
            {
                return -1;
            }
            if ((nd->flags & KIMI_STAG_AT_LEAST_ONE)
                && (nd->flags & KIMI_STAG_STOP_AFTER))
            {
                break;                  /* one tag and nothing else */
            }
            {
                /* the triggers: nd->text points at the first, each its
                 * length then its bytes; nd->len counts them */
                const int32_t  *p = nd->text;

                if (kimi_stag_set_open(an, n, 1) != 0) {
                    return -1;
                }
                for (uint32_t i = 0; i < nd->len; i++) {
                    if (kimi_stag_alt(an, p + 1, (uint32_t) p[0], n,
                                      KIMI_STAG_A_TRIGGER) != 0)
                    {
                        return -1;
                    }
                    p += 1 + p[0];
                }
            }
            if (kimi_stag_free_text(an, n, "triggered_tags' free text") != 0)
            {
                return -1;
            }
            break;

        case KIMI_STAG_N_TEXT:
            if (kimi_stag_set_open(an, n, 1) != 0
                || kimi_stag_free_text(an, n, "any_text") != 0)
            {
                return -1;
            }
            break;

        case KIMI_STAG_N_REGEX:
        case KIMI_STAG_N_GRAM:
            if (kimi_stag_set_open(an, n, 1) != 0
                || kimi_stag_follow(an, n) != 0)
            {
                return -1;
            }
            s = &t->set[an->set];
            if (an->nolit != KIMI_STAG_MAX_NODES
                || !((s->n == 1 && !s->eof) || (s->n == 0 && s->eof)))
            {
                kimi_stag_path(t, n, path, sizeof(path));
                snprintf(an->err, an->errlen, "%s: a regex or grammar content"
                         " needs an end text: one fixed text after it (which"
                         " closes the match), or the end of the output", path);
                return -1;
            }
            break;

        case KIMI_STAG_N_SEPTAGS:
            if (kimi_stag_set_open(an, n, 0) != 0
                || kimi_stag_begins(an, n) != 0
                || (!(nd->flags & KIMI_STAG_AT_LEAST_ONE)
                    && kimi_stag_follow(an, n) != 0))
            {
                return -1;
            }
            if (an->nolit != KIMI_STAG_MAX_NODES) {
                return kimi_stag_nolit(an, n, "tags_with_separator that may"
                                       " be empty needs fixed text after it");
            }
            if (kimi_stag_check_choice(an, n, an->set) != 0) {
                return -1;
            }
            if (nd->flags & KIMI_STAG_STOP_AFTER) {
                break;
            }
            if (kimi_stag_set_open(an, n, 1) != 0
                || (nd->len > 0 ? kimi_stag_alt(an, nd->text, nd->len, n,
                                                KIMI_STAG_A_SEP)
                                : kimi_stag_begins(an, n)) != 0
                || kimi_stag_follow(an, n) != 0)
            {
                return -1;
            }
            if (an->nolit != KIMI_STAG_MAX_NODES) {
                return kimi_stag_nolit(an, n, "tags_with_separator needs"
                                       " fixed text after it");
            }
            if (kimi_stag_check_choice(an, n, an->set) != 0) {
                return -1;
            }
            if (nd->len > 0
                && (kimi_stag_set_open(an, n, 2) != 0
                    || kimi_stag_begins(an, n) != 0))
            {
                return -1;
            }
            break;

        default:                        /* SEQ, JSON: no choice */
            break;
        }
    }
    return 0;
}


int
kimi_stag_view(const int32_t *w, size_t n, kimi_stag_t *t, char *err,
    size_t errlen)
{
    struct { uint32_t node, left; }  open[KIMI_STAG_MAX_DEPTH + 1];
    uint32_t                         n_open = 0, n_children = 0;
    size_t                           at = 2;
    kimi_stag_an_t                   an;
    char                             msg[160];

    t->n_node = t->n_alt = t->n_set = 0;
    if (n < 3 || (w[0] & ~KIMI_STAG_W_LEGACY) != 0 || w[1] < 1
        || w[1] > KIMI_STAG_MAX_NODES)
    {
        snprintf(err, errlen, "structural tag words: bad header");
        return -1;
    }
    t->flags = (uint32_t) w[0];
    t->n_node = (uint32_t) w[1];

    for (uint32_t i = 0; i < t->n_node; i++) {
        kimi_stag_node_t  *nd = &t->node[i];
        int32_t            k;
        int                bad = 0;

        memset(nd, 0, sizeof(*nd));
        nd->set[0] = nd->set[1] = nd->set[2] = KIMI_STAG_NO_SET;

        /* its place: under the innermost format still owed elements */
        while (n_open > 0 && open[n_open - 1].left == 0) {
            n_open--;
        }
        if ((i > 0) != (n_open > 0) || at >= n) {
            snprintf(err, errlen, "structural tag words: format %u: out of"
                     " place", i);
            return -1;
        }
        if (n_open > 0) {
            kimi_stag_node_t  *p = &t->node[open[n_open - 1].node];

            nd->parent = (uint16_t) open[n_open - 1].node;
            nd->index = (uint16_t) (p->n_child - open[n_open - 1].left);
            nd->depth = (uint8_t) n_open;
            t->children[p->child + nd->index] = (uint16_t) i;
            open[n_open - 1].left--;
        } else {
            nd->parent = KIMI_STAG_MAX_NODES;
        }

        k = w[at++];
        nd->type = (uint8_t) k;
        switch (k) {
        case KIMI_STAG_N_CONST:
            bad = kimi_stag_view_text(w, n, &at, 0, &nd->text, &nd->len);
            break;
        case KIMI_STAG_N_JSON:
        case KIMI_STAG_N_REGEX:
        case KIMI_STAG_N_GRAM:
            bad = kimi_stag_view_prog(w, n, &at, nd) != 0
                  || (k == KIMI_STAG_N_REGEX
                      ? kimi_regex_check(nd->prog, nd->prog_len, msg,
                                         sizeof(msg))
                      : k == KIMI_STAG_N_GRAM
                      ? kimi_gram_check(nd->prog, nd->prog_len, msg,
                                        sizeof(msg))
                      : kimi_json_schema_check(nd->prog, nd->prog_len, msg,
                                               sizeof(msg))) != 0;
            break;
        case KIMI_STAG_N_TEXT:
            break;
        case KIMI_STAG_N_SEQ:
        case KIMI_STAG_N_OR:
            bad = at >= n || w[at] < 1 || w[at] > KIMI_STAG_MAX_STRUCTS;
            nd->n_child = bad ? 0 : (uint16_t) w[at++];
            break;
        case KIMI_STAG_N_TAG:
            bad = kimi_stag_view_text(w, n, &at, 0, &nd->text, &nd->len) != 0
                  || kimi_stag_view_text(w, n, &at, 1, &nd->end,
                                         &nd->end_len) != 0;
            nd->n_child = 1;
            break;
        case KIMI_STAG_N_TRIG:
        case KIMI_STAG_N_SEPTAGS:
            if (at + 1 >= n || (w[at] & ~(KIMI_STAG_AT_LEAST_ONE
                                          | KIMI_STAG_STOP_AFTER)) != 0)
            {
                bad = 1;
                break;
            }
            nd->flags = (uint8_t) w[at++];
            if (k == KIMI_STAG_N_SEPTAGS) {
                bad = kimi_stag_view_text(w, n, &at, 1, &nd->text, &nd->len);
            } else if (w[at] < 1 || w[at] > KIMI_STAG_MAX_TRIGGERS) {
                bad = 1;
            } else {
                /* the triggers: len counts them, text points at the first */
                const int32_t  *tt;
                uint32_t        tl;

                nd->len = (uint32_t) w[at++];
                nd->text = w + at;
                for (uint32_t j = 0; j < nd->len && !bad; j++) {
                    bad = kimi_stag_view_text(w, n, &at, 0, &tt, &tl);
                }
            }
            bad = bad || at >= n || w[at] < 1
                  || w[at] > KIMI_STAG_MAX_STRUCTS;
            nd->n_child = bad ? 0 : (uint16_t) w[at++];
            break;
        default:
            bad = 1;
        }
        if (bad || (n_open > 0 && (t->node[nd->parent].type
                                   == KIMI_STAG_N_TRIG
                                   || t->node[nd->parent].type
                                      == KIMI_STAG_N_SEPTAGS)
                    && k != KIMI_STAG_N_TAG))
        {
            int  prog = k == KIMI_STAG_N_JSON || k == KIMI_STAG_N_REGEX
                        || k == KIMI_STAG_N_GRAM;

            snprintf(err, errlen, "structural tag words: format %u%s%s", i,
                     bad && prog ? ": " : "", bad && prog ? msg : "");
            return -1;
        }

        if (nd->n_child > 0) {
            if (n_open >= KIMI_STAG_MAX_DEPTH - 1
                || n_children + nd->n_child > KIMI_STAG_MAX_NODES)
            {
                snprintf(err, errlen, "structural tag words: format %u:"
                         " nested too deep", i);
                return -1;
            }
            nd->child = (uint16_t) n_children;
            n_children += nd->n_child;
            open[n_open].node = i;
            open[n_open].left = nd->n_child;
            n_open++;
        }
    }
    while (n_open > 0 && open[n_open - 1].left == 0) {
        n_open--;
    }
    if (n_open > 0 || at != n) {
        snprintf(err, errlen, "structural tag words: %s", n_open > 0
                 ? "formats missing" : "words left over");
        return -1;
    }

    /* what may match no text: elements come after their parent */
    for (uint32_t i = t->n_node; i-- > 0; ) {
        kimi_stag_node_t  *nd = &t->node[i];
        int                all = 1, any = 0;

        for (uint32_t j = 0; j < nd->n_child; j++) {
            int  e = t->node[t->children[nd->child + j]].nullable;

            all &= e;
            any |= e;
        }
        switch (nd->type) {
        case KIMI_STAG_N_TEXT:
            nd->nullable = 1;
            break;
        case KIMI_STAG_N_REGEX:
            nd->nullable = (uint8_t) kimi_regex_accepts(nd->prog, 0);
            break;
        case KIMI_STAG_N_GRAM:
            nd->nullable = (uint8_t) kimi_gram_nullable(nd->prog);
            break;
        case KIMI_STAG_N_SEQ:
            nd->nullable = (uint8_t) all;
            break;
        case KIMI_STAG_N_OR:
            nd->nullable = (uint8_t) any;
            break;
        case KIMI_STAG_N_TRIG:
        case KIMI_STAG_N_SEPTAGS:
            nd->nullable = !(nd->flags & KIMI_STAG_AT_LEAST_ONE);
            break;
        default:
            nd->nullable = 0;
        }
    }

    an.t = t;
    an.err = err;
    an.errlen = errlen;
    return kimi_stag_analyse(&an);
}
