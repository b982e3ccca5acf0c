/*
 * Added tokens: names matched in text before BPE, each with its id.
 *
 * Owns:   the table of added tokens (name, id, special flag), finding
 *         names in text, the skip_special_tokens set, reading Kimi's
 *         added_tokens_decoder (naming every other of its 256 slots
 *         "<|reserved_token_ID|>", absolute id, as tokenization_kimi.py
 *         does) and the special-token attributes of tokenizer_config.json.
 * Never:  does BPE or reads tokenizer.json (hf_tokenizer.c adds its
 *         added_tokens here).
 * Holds:  the skip set is what Hugging Face's all_special_ids holds: tokens
 *         flagged "special" plus bos/eos/unk/pad/additional_special_tokens.
 *         Kimi's five tool-call tokens are added but not special, so they
 *         stay in decoded text for the tool parser.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text_internal.h"

#define KIMI_SPECIAL_NAME_MAX  KIMI_TOK_MAX_TOKEN   /* fits the detokenizer */


static uint32_t
kimi_specials_hash(const uint8_t *s, size_t n)
{
    uint32_t  h = 2166136261u;

    while (n--) {
        h = (h ^ *s++) * 16777619u;
    }

    return h;
}


static int32_t
kimi_specials_lookup(const kimi_specials_t *sp, const char *s, size_t n)
{
    uint32_t  h, slot, v;

    if (sp->table == NULL) {
        return -1;
    }

    h = kimi_specials_hash((const uint8_t *) s, n);

    for (slot = h & sp->mask; ; slot = (slot + 1) & sp->mask) {
        v = sp->table[slot];
        if (v == 0) {
            return -1;
        }

        if (sp->name_len[v - 1] == n && memcmp(sp->name[v - 1], s, n) == 0) {
            return (int32_t) v - 1;
        }
    }
}


int32_t
kimi_specials_find(const kimi_specials_t *sp, const char *s, size_t n)
{
    int32_t  e = kimi_specials_lookup(sp, s, n);

    return e < 0 ? -1 : sp->id[e];
}


int32_t
kimi_specials_entry(const kimi_specials_t *sp, int32_t id)
{
    if (sp->entry_of == NULL || id < sp->id_lo || id >= sp->id_hi) {
        return -1;
    }

    return sp->entry_of[id - sp->id_lo];
}


size_t
kimi_specials_next(const kimi_specials_t *sp, const uint8_t *text,
    size_t len, int32_t *id, size_t *n)
{
    size_t    i;
    uint32_t  k;
    int32_t   found;

    for (i = 0; i < len; i++) {
        if (!sp->first_byte[text[i]]) {
            continue;
        }

        /* longest first, so a name that prefixes another never wins */
        for (k = 0; k < sp->n_lens; k++) {
            if (sp->lens[k] > len - i) {
                continue;
            }

            found = kimi_specials_find(sp, (const char *) text + i,
                                       sp->lens[k]);
            if (found >= 0) {
                *id = found;
                *n = sp->lens[k];
                return i;
            }
        }
    }

    return len;
}


int
kimi_specials_add(kimi_specials_t *sp, const char *name, size_t len,
    int32_t id, int special, int strip, const char *path, kimi_err_t *err)
{
    uint32_t   cap;
    void      *p;

    if (len == 0 || len > KIMI_SPECIAL_NAME_MAX || id < 0) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: added token %ld has no "
                            "usable content (1..%d bytes)", path, (long) id,
                            KIMI_SPECIAL_NAME_MAX);
    }

    if (sp->n == sp->cap) {
        cap = sp->cap ? 2 * sp->cap : 256;

#define KIMI_GROW(f)                                                         \
        p = realloc(sp->f, cap * sizeof(*sp->f));                            \
        if (p == NULL) {                                                     \
            return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);\
        }                                                                    \
        sp->f = p;

        KIMI_GROW(name)
        KIMI_GROW(name_len)
        KIMI_GROW(id)
        KIMI_GROW(is_special)
        KIMI_GROW(strip)
#undef KIMI_GROW

        sp->cap = cap;
    }

    sp->name[sp->n] = malloc(len + 1);
    if (sp->name[sp->n] == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    memcpy(sp->name[sp->n], name, len);
    sp->name[sp->n][len] = '\0';
    sp->name_len[sp->n] = (uint16_t) len;
    sp->id[sp->n] = id;
    sp->is_special[sp->n] = special != 0;
    sp->strip[sp->n] = (uint8_t) strip;
    sp->n++;

    return KIMI_OK;
}


int
kimi_specials_index(kimi_specials_t *sp, const char *path, kimi_err_t *err)
{
    size_t    i, k, n;
    uint32_t  h, slot, t, size;

    for (size = 64; size < 4 * sp->n; size *= 2) {
        /* a load factor of at most 1/4 */
    }

    sp->mask = size - 1;
    sp->table = calloc(size, sizeof(*sp->table));
    sp->lens = calloc(sp->n + 1, sizeof(*sp->lens));
    if (sp->table == NULL || sp->lens == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    sp->id_lo = INT32_MAX;
    sp->id_hi = 0;

    for (i = 0; i < sp->n; i++) {
        n = sp->name_len[i];

        if (kimi_specials_lookup(sp, sp->name[i], n) >= 0) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: added token \"%s\" "
                                "appears twice", path, sp->name[i]);
        }

        h = kimi_specials_hash((const uint8_t *) sp->name[i], n);
        for (slot = h & sp->mask; sp->table[slot] != 0;
             slot = (slot + 1) & sp->mask)
        {
            /* find the free slot */
        }
        sp->table[slot] = (uint32_t) i + 1;
        sp->first_byte[(uint8_t) sp->name[i][0]] = 1;

        for (k = 0; k < sp->n_lens && sp->lens[k] != n; k++) {
            /* is this length known */
        }

        if (k == sp->n_lens) {
            sp->lens[sp->n_lens++] = (uint16_t) n;
        }

        sp->id_lo = sp->id[i] < sp->id_lo ? sp->id[i] : sp->id_lo;
        sp->id_hi = sp->id[i] + 1 > sp->id_hi ? sp->id[i] + 1 : sp->id_hi;
    }

    /* lengths longest first (insertion sort: at most 256 distinct) */
    for (i = 1; i < sp->n_lens; i++) {
        t = sp->lens[i];
        for (k = i; k > 0 && sp->lens[k - 1] < t; k--) {
            sp->lens[k] = sp->lens[k - 1];
        }
        sp->lens[k] = (uint16_t) t;
    }

    if (sp->n == 0) {
        return KIMI_OK;
    }

    sp->entry_of = malloc((size_t) (sp->id_hi - sp->id_lo)
                          * sizeof(*sp->entry_of));
    if (sp->entry_of == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    memset(sp->entry_of, 0xff,
           (size_t) (sp->id_hi - sp->id_lo) * sizeof(*sp->entry_of));

    for (i = 0; i < sp->n; i++) {
        if (sp->entry_of[sp->id[i] - sp->id_lo] >= 0) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: two added tokens "
                                "have id %ld", path, (long) sp->id[i]);
        }
        sp->entry_of[sp->id[i] - sp->id_lo] = (int32_t) i;
    }

    return KIMI_OK;
}


/* "content" of an AddedToken, which HF writes as a string or an object. */
static const char *
kimi_specials_content(json_t *v)
{
    if (json_is_object(v)) {
        v = json_object_get(v, "content");
    }

    return json_is_string(v) ? json_string_value(v) : NULL;
}


static int
kimi_specials_mark(kimi_specials_t *sp, json_t *v, int32_t *out,
    const char *path, const char *field, kimi_err_t *err)
{
    const char  *name;
    int32_t      e;

    if (v == NULL || json_is_null(v)) {
        return KIMI_OK;
    }

    name = kimi_specials_content(v);
    if (name == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: \"%s\" is not a string",
                            path, field);
    }

    e = kimi_specials_lookup(sp, name, strlen(name));
    if (e < 0) {
        return kimi_err_set(err, KIMI_EFORMAT,
                            "%s: %s \"%s\" is not a special token", path,
                            field, name);
    }

    sp->is_special[e] = 1;
    if (out != NULL) {
        *out = sp->id[e];
    }

    return KIMI_OK;
}


int
kimi_specials_config(kimi_specials_t *sp, json_t *root, const char *path,
    kimi_err_t *err)
{
    int      rc;
    size_t   i;
    json_t  *add, *v;

    rc = kimi_specials_mark(sp, json_object_get(root, "bos_token"), &sp->bos,
                            path, "bos_token", err);
    if (rc == KIMI_OK) {
        rc = kimi_specials_mark(sp, json_object_get(root, "eos_token"),
                                &sp->eos, path, "eos_token", err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_specials_mark(sp, json_object_get(root, "unk_token"),
                                &sp->unk, path, "unk_token", err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_specials_mark(sp, json_object_get(root, "pad_token"),
                                &sp->pad, path, "pad_token", err);
    }
    if (rc != KIMI_OK) {
        return rc;
    }

    add = json_object_get(root, "additional_special_tokens");
    if (add != NULL && !json_is_array(add)) {
        return kimi_err_set(err, KIMI_EFORMAT,
                            "%s: \"additional_special_tokens\" is not a list",
                            path);
    }

    json_array_foreach(add, i, v) {
        rc = kimi_specials_mark(sp, v, NULL, path,
                                "additional_special_tokens", err);
        if (rc != KIMI_OK) {
            return rc;
        }
    }

    return KIMI_OK;
}


int
kimi_specials_load(kimi_specials_t *sp, uint32_t first_id,
    const char *config_path, kimi_err_t *err)
{
    int           rc;
    char          buf[64];
    long          id;
    char         *end;
    size_t        i;
    json_t       *root, *dec, *v, *flag;
    const char   *key, *name;
    const char   *names[KIMI_TOK_N_SPECIAL];
    uint8_t       special[KIMI_TOK_N_SPECIAL];
    json_error_t  jerr;

    memset(sp, 0, sizeof(*sp));
    sp->bos = sp->eos = sp->unk = sp->pad = -1;
    memset(names, 0, sizeof(names));
    memset(special, 0, sizeof(special));

    /* model_max_length is 1e30 in HF files: too big for json_int_t */
    root = json_load_file(config_path, JSON_DECODE_INT_AS_REAL, &jerr);
    if (root == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s:%d: %s", config_path,
                            jerr.line, jerr.text);
    }

    dec = json_object_get(root, "added_tokens_decoder");
    if (dec != NULL && !json_is_object(dec)) {
        rc = kimi_err_set(err, KIMI_EFORMAT,
                          "%s: \"added_tokens_decoder\" is not an object",
                          config_path);
        goto failed;
    }

    json_object_foreach(dec, key, v) {
        id = strtol(key, &end, 10);
        if (*key == '\0' || *end != '\0' || id < (long) first_id
            || id >= (long) first_id + KIMI_TOK_N_SPECIAL)
        {
            rc = kimi_err_set(err, KIMI_EFORMAT,
                              "%s: added token id \"%s\" is outside "
                              "%u..%u", config_path, key, first_id,
                              first_id + KIMI_TOK_N_SPECIAL - 1);
            goto failed;
        }

        name = kimi_specials_content(v);
        if (name == NULL) {
            rc = kimi_err_set(err, KIMI_EFORMAT,
                              "%s: added token %ld has no usable content",
                              config_path, id);
            goto failed;
        }

        names[id - first_id] = name;
        flag = json_is_object(v) ? json_object_get(v, "special") : NULL;
        special[id - first_id] = json_is_true(flag);
    }

    for (i = 0; i < KIMI_TOK_N_SPECIAL; i++) {
        name = names[i];
        if (name == NULL) {
            snprintf(buf, sizeof(buf), "<|reserved_token_%zu|>",
                     (size_t) first_id + i);
            name = buf;
        }

        rc = kimi_specials_add(sp, name, strlen(name),
                               (int32_t) (first_id + i), special[i], 0,
                               config_path, err);
        if (rc != KIMI_OK) {
            goto failed;
        }
    }

    rc = kimi_specials_index(sp, config_path, err);
    if (rc == KIMI_OK) {
        rc = kimi_specials_config(sp, root, config_path, err);
    }
    if (rc != KIMI_OK) {
        goto failed;
    }

    json_decref(root);
    return KIMI_OK;

failed:

    json_decref(root);
    kimi_specials_free(sp);
    return rc;
}


void
kimi_specials_free(kimi_specials_t *sp)
{
    uint32_t  i;

    for (i = 0; i < sp->n; i++) {
        free(sp->name[i]);
    }

    free(sp->name);
    free(sp->name_len);
    free(sp->id);
    free(sp->is_special);
    free(sp->strip);
    free(sp->entry_of);
    free(sp->table);
    free(sp->lens);
    memset(sp, 0, sizeof(*sp));
    sp->bos = sp->eos = sp->unk = sp->pad = -1;
}
