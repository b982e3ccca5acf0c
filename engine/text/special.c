/*
 * Special tokens: the 256 ids after the last BPE rank.
 *
 * Owns:   reading added_tokens_decoder and the special-token attributes of
 *         tokenizer_config.json, naming every other slot
 *         "<|reserved_token_ID|>" (absolute id, as tokenization_kimi.py
 *         does), finding names in text, and the skip_special_tokens set.
 * Never:  does BPE.
 * Holds:  the skip set is what Hugging Face's all_special_ids holds: tokens
 *         flagged "special" plus bos/eos/unk/pad/additional_special_tokens.
 *         The five tool-call tokens are added but not special, so they stay
 *         in decoded text for the tool parser.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text_internal.h"

#define KIMI_SPECIAL_NAME_MAX  KIMI_TOK_MAX_TOKEN   /* fits the detokenizer */
#define KIMI_SPECIAL_TABLE     (4 * KIMI_TOK_N_SPECIAL)


static uint32_t
kimi_specials_hash(const uint8_t *s, size_t n)
{
    uint32_t  h = 2166136261u;

    while (n--) {
        h = (h ^ *s++) * 16777619u;
    }

    return h;
}


int32_t
kimi_specials_find(const kimi_specials_t *sp, const char *s, size_t n)
{
    uint32_t  h, slot;
    uint16_t  v;

    h = kimi_specials_hash((const uint8_t *) s, n);

    for (slot = h & (KIMI_SPECIAL_TABLE - 1); ;
         slot = (slot + 1) & (KIMI_SPECIAL_TABLE - 1))
    {
        v = sp->table[slot];
        if (v == 0) {
            return -1;
        }

        if (sp->name_len[v - 1] == n && memcmp(sp->name[v - 1], s, n) == 0) {
            return (int32_t) (sp->first_id + v - 1);
        }
    }
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
    int32_t      id;

    if (v == NULL || json_is_null(v)) {
        return KIMI_OK;
    }

    name = kimi_specials_content(v);
    if (name == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: \"%s\" is not a string",
                            path, field);
    }

    id = kimi_specials_find(sp, name, strlen(name));
    if (id < 0) {
        return kimi_err_set(err, KIMI_EFORMAT,
                            "%s: %s \"%s\" is not a special token", path,
                            field, name);
    }

    sp->is_special[id - sp->first_id] = 1;
    if (out != NULL) {
        *out = id;
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
    size_t        i, k, n, idx;
    json_t       *root, *dec, *v, *flag, *add;
    uint32_t      h, slot, t;
    const char   *key, *name;
    json_error_t  jerr;

    memset(sp, 0, sizeof(*sp));
    sp->first_id = first_id;
    sp->bos = sp->eos = sp->unk = sp->pad = -1;

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
        if (name == NULL || *name == '\0'
            || strlen(name) > KIMI_SPECIAL_NAME_MAX)
        {
            rc = kimi_err_set(err, KIMI_EFORMAT,
                              "%s: added token %ld has no usable content",
                              config_path, id);
            goto failed;
        }

        idx = (size_t) (id - first_id);
        free(sp->name[idx]);
        sp->name[idx] = strdup(name);
        if (sp->name[idx] == NULL) {
            rc = kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory",
                              config_path);
            goto failed;
        }

        flag = json_is_object(v) ? json_object_get(v, "special") : NULL;
        sp->is_special[idx] = json_is_true(flag);
    }

    for (i = 0; i < KIMI_TOK_N_SPECIAL; i++) {
        if (sp->name[i] == NULL) {
            snprintf(buf, sizeof(buf), "<|reserved_token_%zu|>",
                     (size_t) first_id + i);
            sp->name[i] = strdup(buf);
            if (sp->name[i] == NULL) {
                rc = kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory",
                                  config_path);
                goto failed;
            }
        }

        n = strlen(sp->name[i]);
        sp->name_len[i] = (uint16_t) n;
        sp->first_byte[(uint8_t) sp->name[i][0]] = 1;

        if (kimi_specials_find(sp, sp->name[i], n) >= 0) {
            rc = kimi_err_set(err, KIMI_EFORMAT,
                              "%s: special token \"%s\" appears twice",
                              config_path, sp->name[i]);
            goto failed;
        }

        h = kimi_specials_hash((const uint8_t *) sp->name[i], n);
        for (slot = h & (KIMI_SPECIAL_TABLE - 1); sp->table[slot] != 0;
             slot = (slot + 1) & (KIMI_SPECIAL_TABLE - 1))
        {
            /* find the free slot */
        }
        sp->table[slot] = (uint16_t) (i + 1);

        for (k = 0; k < sp->n_lens && sp->lens[k] != n; k++) {
            /* is this length known */
        }

        if (k == sp->n_lens) {
            sp->lens[sp->n_lens++] = (uint16_t) n;
        }
    }

    /* lengths longest first (insertion sort: at most 256 of them) */
    for (i = 1; i < sp->n_lens; i++) {
        t = sp->lens[i];
        for (k = i; k > 0 && sp->lens[k - 1] < t; k--) {
            sp->lens[k] = sp->lens[k - 1];
        }
        sp->lens[k] = (uint16_t) t;
    }

    rc = kimi_specials_mark(sp, json_object_get(root, "bos_token"), &sp->bos,
                            config_path, "bos_token", err);
    if (rc == KIMI_OK) {
        rc = kimi_specials_mark(sp, json_object_get(root, "eos_token"),
                                &sp->eos, config_path, "eos_token", err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_specials_mark(sp, json_object_get(root, "unk_token"),
                                &sp->unk, config_path, "unk_token", err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_specials_mark(sp, json_object_get(root, "pad_token"),
                                &sp->pad, config_path, "pad_token", err);
    }
    if (rc != KIMI_OK) {
        goto failed;
    }

    add = json_object_get(root, "additional_special_tokens");
    if (add != NULL && !json_is_array(add)) {
        rc = kimi_err_set(err, KIMI_EFORMAT,
                          "%s: \"additional_special_tokens\" is not a list",
                          config_path);
        goto failed;
    }

    json_array_foreach(add, i, v) {
        rc = kimi_specials_mark(sp, v, NULL, config_path,
                                "additional_special_tokens", err);
        if (rc != KIMI_OK) {
            goto failed;
        }
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
    size_t  i;

    for (i = 0; i < KIMI_TOK_N_SPECIAL; i++) {
        free(sp->name[i]);
        sp->name[i] = NULL;
    }
}
