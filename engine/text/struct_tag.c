/*
 * Structural tags: the gateway's compiler from the request's object to the
 * slot's words, and the engine's check of those words (struct_tag.h).
 *
 * Owns:   the words' layout, both ways.
 * Never:  enforces anything (engine/sample/stag_mode.c does); takes a
 *         structure it could not enforce: a begin no trigger starts, two
 *         begins one a prefix of the other (which structure follows would
 *         not be known at the begin's end), a schema outside the subset.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ebnf.h"
#include "json_schema.h"
#include "regex_dfa.h"
#include "struct_tag.h"


/* growable word buffer */
typedef struct {
    int32_t  *w;
    size_t    n, cap;
} kimi_stag_buf_t;

static int
kimi_stag_put(kimi_stag_buf_t *b, const int32_t *w, size_t n)
{
    if (b->n + n > b->cap) {
        size_t    cap = (b->n + n) * 2 + 64;
        int32_t  *nw = realloc(b->w, cap * sizeof(int32_t));

        if (nw == NULL) {
            return -1;
        }
        b->w = nw;
        b->cap = cap;
    }
    memcpy(b->w + b->n, w, n * sizeof(int32_t));
    b->n += n;
    return 0;
}

/* a text as its length and one word a byte */
static int
kimi_stag_put_text(kimi_stag_buf_t *b, const char *s, size_t len)
{
    int32_t  v = (int32_t) len;

    if (kimi_stag_put(b, &v, 1) != 0) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        v = (unsigned char) s[i];
        if (kimi_stag_put(b, &v, 1) != 0) {
            return -1;
        }
    }
    return 0;
}

/* a string member of a structure or the trigger list: its text, or NULL
 * with err */
static const char *
kimi_stag_text(const json_t *v, const char *what, size_t i, int may_be_empty,
    size_t *len, char *err, size_t errlen)
{
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s %zu must be a string", what, i);
        return NULL;
    }
    *len = json_string_length(v);
    if ((*len == 0 && !may_be_empty) || *len > KIMI_STAG_MAX_TEXT) {
        snprintf(err, errlen, "%s %zu must be 1 to %d bytes", what, i,
                 KIMI_STAG_MAX_TEXT);
        return NULL;
    }
    return json_string_value(v);
}


/* The words of triggers and structures (each {"begin", "schema", "end"}) */
static int
kimi_stag_build(const json_t *trigs, const json_t *structs, int32_t flags,
    const json_t *sep, int32_t **w, size_t *n, char *err, size_t errlen)
{
    const json_t     *s, *v;
    const char       *text, *ctype, *begins[KIMI_STAG_MAX_STRUCTS];
    size_t            len, blens[KIMI_STAG_MAX_STRUCTS], i, j, k, np;
    int32_t          *prog, hdr[3];
    int               rc;
    kimi_stag_buf_t   b = { NULL, 0, 0 };
    char              msg[160];

    if (flags & KIMI_STAG_FORCED) {
        trigs = NULL;                   /* structures from the first byte */
    } else if (!json_is_array(trigs) || json_array_size(trigs) == 0
               || json_array_size(trigs) > KIMI_STAG_MAX_TRIGGERS)
    {
        snprintf(err, errlen, "\"triggers\" must be an array of 1 to %d"
                 " strings", KIMI_STAG_MAX_TRIGGERS);
        return -1;
    }
    if (!json_is_array(structs) || json_array_size(structs) == 0
        || json_array_size(structs) > KIMI_STAG_MAX_STRUCTS)
    {
        snprintf(err, errlen, "\"structures\" must be an array of 1 to %d"
                 " objects with \"begin\", \"schema\" and \"end\"",
                 KIMI_STAG_MAX_STRUCTS);
        return -1;
    }

    hdr[0] = trigs != NULL ? (int32_t) json_array_size(trigs) : 0;
    hdr[1] = (int32_t) json_array_size(structs);
    hdr[2] = flags;
    if (kimi_stag_put(&b, hdr, 3) != 0) {
        goto nomem;
    }
    text = "";
    len = 0;
    if (sep != NULL && !json_is_null(sep)
        && (text = kimi_stag_text(sep, "separator", 0, 1, &len, err, errlen))
           == NULL)
    {
        goto failed;
    }
    if (kimi_stag_put_text(&b, text, len) != 0) {
        goto nomem;
    }

    json_array_foreach(trigs, i, v) {
        if ((text = kimi_stag_text(v, "trigger", i, 0, &len, err, errlen))
            == NULL)
        {
            goto failed;
        }
        if (kimi_stag_put_text(&b, text, len) != 0) {
            goto nomem;
        }
    }

    json_array_foreach(structs, i, s) {
        if (!json_is_object(s)) {
            snprintf(err, errlen, "structure %zu must be an object with"
                     " \"begin\", \"schema\" and \"end\"", i);
            goto failed;
        }
        text = kimi_stag_text(json_object_get(s, "begin"), "the begin of"
                              " structure", i, 0, &len, err, errlen);
        if (text == NULL) {
            goto failed;
        }

        json_array_foreach(trigs, j, v) {
            if (json_string_length(v) <= len
                && memcmp(json_string_value(v), text, json_string_length(v))
                   == 0)
            {
                break;
            }
        }
        if (trigs != NULL && j == json_array_size(trigs)) {
            snprintf(err, errlen, "the begin of structure %zu starts with"
                     " no trigger: it could never be written", i);
            goto failed;
        }
        for (k = 0; k < i; k++) {
            size_t  m = blens[k] < len ? blens[k] : len;

            if (memcmp(begins[k], text, m) == 0) {
                snprintf(err, errlen, "the begins of structures %zu and %zu"
                         " %s: which one follows would be unknown", k, i,
                         blens[k] == len ? "are equal"
                                         : "are one a prefix of the other");
                goto failed;
            }
        }
        begins[i] = text;
        blens[i] = len;
        if (kimi_stag_put_text(&b, text, len) != 0) {
            goto nomem;
        }

        text = kimi_stag_text(json_object_get(s, "end"), "the end of"
                              " structure", i, 1, &len, err, errlen);
        if (text == NULL || kimi_stag_put_text(&b, text, len) != 0) {
            if (text != NULL) {
                goto nomem;
            }
            goto failed;
        }

        /* the format form's content, or the structures form's schema */
        v = json_object_get(s, "content");
        ctype = v != NULL ? json_string_value(json_object_get(v, "type")) : NULL;
        if (v != NULL && ctype == NULL) {
            snprintf(err, errlen, "tag %zu: the content must be an object"
                     " with a \"type\"", i);
            goto failed;
        }

        if (ctype != NULL && strcmp(ctype, "any_text") == 0) {
            if (len == 0) {
                snprintf(err, errlen, "tag %zu: any_text needs an end text"
                         " (it ends the text)", i);
                goto failed;
            }
            hdr[0] = KIMI_STAG_C_TEXT;
            if (kimi_stag_put(&b, hdr, 1) != 0) {
                goto nomem;
            }
            continue;
        }

        if (ctype != NULL && strcmp(ctype, "const_string") == 0) {
            text = kimi_stag_text(json_object_get(v, "value"), "the value of"
                                  " tag", i, 0, &len, err, errlen);
            if (text == NULL) {
                goto failed;
            }
            hdr[0] = KIMI_STAG_C_CONST;
            if (kimi_stag_put(&b, hdr, 1) != 0
                || kimi_stag_put_text(&b, text, len) != 0)
            {
                goto nomem;
            }
            continue;
        }

        /* a pattern, or a grammar without recursion as one (ebnf.h) */
        if (ctype != NULL && (strcmp(ctype, "regex") == 0
                              || strcmp(ctype, "grammar") == 0))
        {
            int     gr = ctype[0] == 'g';
            size_t  elen = len, plen;
            char   *pattern;

            v = json_object_get(v, gr ? "grammar" : "pattern");
            if (!json_is_string(v)) {
                snprintf(err, errlen, "tag %zu: a %s content needs a"
                         " \"%s\" string", i, ctype, gr ? "grammar" : "pattern");
                goto failed;
            }
            if (elen == 0) {
                snprintf(err, errlen, "tag %zu: a %s content needs an end"
                         " text (it closes the match)", i, ctype);
                goto failed;
            }
            if (gr) {
                if (kimi_ebnf_to_regex(json_string_value(v),
                                       json_string_length(v), &pattern, &plen,
                                       msg, sizeof(msg)) != 0)
                {
                    snprintf(err, errlen, "the grammar of tag %zu: %s", i,
                             msg);
                    goto failed;
                }
                if (plen > KIMI_REGEX_MAX_PATTERN) {
                    snprintf(err, errlen, "the grammar of tag %zu expands to"
                             " a %zu-byte pattern (at most %d)", i, plen,
                             KIMI_REGEX_MAX_PATTERN);
                    free(pattern);
                    goto failed;
                }
            } else {
                pattern = (char *) json_string_value(v);
                plen = json_string_length(v);
            }
            rc = kimi_regex_compile(pattern, plen, &prog, &np, msg,
                                    sizeof(msg));
            if (gr) {
                free(pattern);
            }
            if (rc != 0) {
                snprintf(err, errlen, "the %s of tag %zu: %s",
                         gr ? "grammar" : "pattern", i, msg);
                goto failed;
            }
            hdr[0] = KIMI_STAG_C_REGEX;
            hdr[1] = (int32_t) np;
            if (kimi_stag_put(&b, hdr, 2) != 0
                || kimi_stag_put(&b, prog, np) != 0)
            {
                free(prog);
                goto nomem;
            }
            free(prog);
            continue;
        }

        if (ctype != NULL && strcmp(ctype, "json_schema") != 0) {
            snprintf(err, errlen, "tag %zu: a content of type \"%.32s\" is"
                     " not supported (json_schema, regex, grammar, any_text"
                     " and const_string are)", i, ctype);
            goto failed;
        }

        /* no schema (null): any JSON object */
        v = ctype != NULL ? json_object_get(v, "json_schema")
                          : json_object_get(s, "schema");
        if (v == NULL || json_is_null(v)) {
            v = json_true();
        }
        if (kimi_json_schema_compile(v, &prog, &np, msg, sizeof(msg)) != 0) {
            snprintf(err, errlen, "the schema of structure %zu: %s", i, msg);
            goto failed;
        }
        hdr[0] = KIMI_STAG_C_JSON;
        hdr[1] = (int32_t) np;
        if (kimi_stag_put(&b, hdr, 2) != 0 || kimi_stag_put(&b, prog, np) != 0)
        {
            free(prog);
            goto nomem;
        }
        free(prog);
    }

    *w = b.w;
    *n = b.n;
    return 0;

nomem:
    snprintf(err, errlen, "out of memory");
failed:
    free(b.w);
    return -1;
}


static int kimi_stag_tags(const json_t *trigs, const json_t *tags,
    int32_t flags, const json_t *sep, int32_t **w, size_t *n, char *err,
    size_t errlen);

/* xgrammar's "format": {"type": "triggered_tags", "triggers", "tags":
 * [{"begin", "content": {"type": ...}, "end"}], "at_least_one",
 * "stop_after_first"}, "tags_with_separator" (tags and a "separator", no
 * triggers) or one "tag", as structures whose content kimi_stag_build
 * reads */
static int
kimi_stag_format(const json_t *fmt, int32_t **w, size_t *n, char *err,
    size_t errlen)
{
    const json_t  *type, *v;
    json_t        *one;
    int32_t        flags = 0;
    int            rc;

    type = json_object_get(fmt, "type");
    if (!json_is_object(fmt) || !json_is_string(type)) {
        snprintf(err, errlen, "\"format\" must be an object with a"
                 " \"type\"");
        return -1;
    }
    if (strcmp(json_string_value(type), "tag") == 0) {
        /* the whole output is this one structure */
        one = json_pack("[O]", fmt);
        if (one == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        rc = kimi_stag_tags(NULL, one, KIMI_STAG_FORCED | KIMI_STAG_AT_LEAST_ONE
                            | KIMI_STAG_STOP_AFTER, NULL, w, n, err, errlen);
        json_decref(one);
        return rc;
    }
    if (strcmp(json_string_value(type), "triggered_tags") != 0
        && strcmp(json_string_value(type), "tags_with_separator") != 0)
    {
        snprintf(err, errlen, "a \"format\" of type \"%.32s\" is not"
                 " supported (triggered_tags, tags_with_separator and tag"
                 " are)", json_string_value(type));
        return -1;
    }
    if (strcmp(json_string_value(type), "tags_with_separator") == 0) {
        flags |= KIMI_STAG_FORCED;
        if (!json_is_string(json_object_get(fmt, "separator"))) {
            snprintf(err, errlen, "\"separator\" must be a string");
            return -1;
        }
    }

    v = json_object_get(fmt, "at_least_one");
    if (v != NULL && !json_is_boolean(v)) {
        snprintf(err, errlen, "\"at_least_one\" must be a boolean");
        return -1;
    }
    flags |= json_is_true(v) ? KIMI_STAG_AT_LEAST_ONE : 0;
    v = json_object_get(fmt, "stop_after_first");
    if (v != NULL && !json_is_boolean(v)) {
        snprintf(err, errlen, "\"stop_after_first\" must be a boolean");
        return -1;
    }
    flags |= json_is_true(v) ? KIMI_STAG_STOP_AFTER : 0;

    return kimi_stag_tags(json_object_get(fmt, "triggers"),
                          json_object_get(fmt, "tags"), flags,
                          json_object_get(fmt, "separator"), w, n, err, errlen);
}


/* xgrammar's tags ({"begin", "content", "end"}) as structures */
static int
kimi_stag_tags(const json_t *trigs, const json_t *tags, int32_t flags,
    const json_t *sep, int32_t **w, size_t *n, char *err, size_t errlen)
{
    const json_t  *tag, *content;
    json_t        *structs;
    size_t         i;
    int            rc;

    if (!json_is_array(tags)) {
        snprintf(err, errlen, "\"tags\" must be an array of {\"begin\","
                 " \"content\", \"end\"}");
        return -1;
    }

    structs = json_array();
    if (structs == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    json_array_foreach(tags, i, tag) {
        content = json_object_get(tag, "content");
        if (!json_is_object(tag) || !json_is_object(content)) {
            snprintf(err, errlen, "tag %zu must be {\"begin\", \"content\":"
                     " {\"type\": ...}, \"end\"}", i);
            json_decref(structs);
            return -1;
        }
        if (json_array_append_new(structs, json_pack("{s:O?,s:O?,s:O}",
                "begin", json_object_get(tag, "begin"),
                "end", json_object_get(tag, "end"),
                "content", content)) != 0)
        {
            snprintf(err, errlen, "out of memory");
            json_decref(structs);
            return -1;
        }
    }

    rc = kimi_stag_build(trigs, structs, flags, sep, w, n, err, errlen);
    json_decref(structs);
    return rc;
}


int
kimi_stag_compile(const json_t *obj, int32_t **w, size_t *n, char *err,
    size_t errlen)
{
    const json_t  *fmt = json_object_get(obj, "format");

    if (fmt != NULL) {
        if (json_object_get(obj, "structures") != NULL
            || json_object_get(obj, "triggers") != NULL)
        {
            snprintf(err, errlen, "give either \"format\" or \"structures\""
                     " and \"triggers\"");
            return -1;
        }
        return kimi_stag_format(fmt, w, n, err, errlen);
    }

    return kimi_stag_build(json_object_get(obj, "triggers"),
                           json_object_get(obj, "structures"), 0, NULL, w, n,
                           err, errlen);
}


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


int
kimi_stag_view(const int32_t *w, size_t n, kimi_stag_t *t, char *err,
    size_t errlen)
{
    size_t  at = 3;
    char    msg[160];

    memset(t, 0, sizeof(*t));

    if (n < 4 || w[0] < 0 || w[0] > KIMI_STAG_MAX_TRIGGERS || w[1] < 1
        || w[1] > KIMI_STAG_MAX_STRUCTS
        || (w[2] & ~(KIMI_STAG_AT_LEAST_ONE | KIMI_STAG_STOP_AFTER
                     | KIMI_STAG_FORCED)) != 0
        || (w[0] == 0) != ((w[2] & KIMI_STAG_FORCED) != 0)
        || kimi_stag_view_text(w, n, &at, 1, &t->sep, &t->sep_len) != 0)
    {
        snprintf(err, errlen, "structural tag words: bad header");
        return -1;
    }
    t->n_trig = (uint32_t) w[0];
    t->n_struct = (uint32_t) w[1];
    t->flags = (uint32_t) w[2];

    for (uint32_t i = 0; i < t->n_trig; i++) {
        if (kimi_stag_view_text(w, n, &at, 0, &t->trig[i], &t->trig_len[i])
            != 0)
        {
            snprintf(err, errlen, "structural tag words: trigger %u", i);
            return -1;
        }
        if (t->trig_len[i] > t->max_trig) {
            t->max_trig = t->trig_len[i];
        }
    }

    for (uint32_t i = 0; i < t->n_struct; i++) {
        if (kimi_stag_view_text(w, n, &at, 0, &t->begin[i], &t->begin_len[i])
            != 0
            || kimi_stag_view_text(w, n, &at, 1, &t->end[i], &t->end_len[i])
               != 0
            || at >= n || w[at] < KIMI_STAG_C_JSON || w[at] > KIMI_STAG_C_REGEX)
        {
            snprintf(err, errlen, "structural tag words: structure %u", i);
            return -1;
        }
        t->kind[i] = (uint32_t) w[at++];

        if (t->kind[i] == KIMI_STAG_C_TEXT) {
            if (t->end_len[i] == 0) {
                snprintf(err, errlen, "structural tag words: structure %u:"
                         " text without an end", i);
                return -1;
            }
            continue;
        }

        if (t->kind[i] == KIMI_STAG_C_CONST) {
            if (kimi_stag_view_text(w, n, &at, 0, &t->prog[i],
                                    &t->prog_len[i]) != 0)
            {
                snprintf(err, errlen, "structural tag words: structure %u:"
                         " its constant", i);
                return -1;
            }
            continue;
        }

        if (at >= n || w[at] < 2 || (size_t) w[at] > n - at - 1) {
            snprintf(err, errlen, "structural tag words: structure %u", i);
            return -1;
        }
        t->prog_len[i] = (uint32_t) w[at];
        t->prog[i] = w + at + 1;
        at += 1 + t->prog_len[i];
        if (t->kind[i] == KIMI_STAG_C_REGEX && t->end_len[i] == 0) {
            snprintf(err, errlen, "structural tag words: structure %u:"
                     " a pattern without an end", i);
            return -1;
        }
        if (t->kind[i] == KIMI_STAG_C_REGEX
            ? kimi_regex_check(t->prog[i], t->prog_len[i], msg, sizeof(msg))
              != 0
            : kimi_json_schema_check(t->prog[i], t->prog_len[i], msg,
                                     sizeof(msg)) != 0)
        {
            snprintf(err, errlen, "structural tag words: structure %u: %s",
                     i, msg);
            return -1;
        }
    }

    if (at != n) {
        snprintf(err, errlen, "structural tag words: %zu words left over",
                 n - at);
        return -1;
    }
    return 0;
}
