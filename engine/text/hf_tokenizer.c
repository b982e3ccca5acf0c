/*
 * Hugging Face tokenizer.json: byte-level BPE (DeepSeek-V3's kind) and
 * SentencePiece-style BPE over characters (Llama-2's and Mistral's kind).
 *
 * Owns:   reading tokenizer.json (model BPE with vocab and merges,
 *         added_tokens, normalizer, pre_tokenizer, decoder), the
 *         pre-tokenizer pipeline (Split / Digits / ByteLevel steps on
 *         PCRE2) and the merge-rank BPE of one piece.
 * Never:  matches added tokens in text (special.c, kimi_tokenize_ex) or
 *         decodes (detok.c: the ByteLevel decoder is the bytes of each
 *         token, which this file stores).
 * Holds:  what tokenizers' encode(add_special_tokens=False) gives: a piece
 *         merges the adjacent pair of lowest merge rank, leftmost first
 *         (not tiktoken's rank of the joined bytes: the two differ where a
 *         token can be joined two ways); ByteLevel's character map is only
 *         a spelling, so pieces are kept as bytes.  SentencePiece-style
 *         files (the Prepend + Replace(" ", "\u2581") normalizer or a
 *         Metaspace pre-tokenizer, BPE over characters with byte_fallback
 *         and unk) are held with U+2581 read as a space, in the vocabulary
 *         and in the text alike (the normalizer makes them one), so a
 *         token's bytes are its decoded text and <0xXX> tokens are their
 *         byte.  Anything else in a tokenizer.json (other normalizers,
 *         WordPiece, Unigram) is refused at load, naming it.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text_internal.h"

typedef enum {
    KIMI_HF_ISOLATED,
    KIMI_HF_REMOVED,
    KIMI_HF_MERGED_PREV,
    KIMI_HF_MERGED_NEXT,
    KIMI_HF_CONTIGUOUS
} kimi_hf_behavior_e;

typedef struct {
    pcre2_code          *re;
    int                  jit;
    kimi_hf_behavior_e   behavior;
    int                  invert;
    int                  prefix_space;   /* ByteLevel's add_prefix_space */
} kimi_hf_step_t;

struct kimi_hf {
    kimi_hf_step_t   *steps;
    size_t            n_steps;
    uint64_t         *pair_key;          /* (left << 32 | right) + 1, 0 empty */
    uint64_t         *pair_val;          /* rank << 32 | merged id */
    uint64_t          pair_mask;
    int               ignore_merges;
    int               byte_level;        /* a ByteLevel pre-tokenizer step */

    /* SentencePiece-style (chars): BPE starts from characters, U+2581 is a
     * space; prepend: a space before each piece of text between added
     * tokens (PREPEND_ALL: always, the Prepend normalizer; _UNLESS_SPACE:
     * unless it starts with one, Metaspace "always"; _FIRST: that, and only
     * for the text's first piece, Metaspace "first") */
    int               chars;
    int               norm_space;        /* normalizer Replace(" ", U+2581) */
    int               meta;              /* Metaspace pre-tokenizer */
    int               meta_split;        /* its split: pieces at each space */
    enum { KIMI_HF_PREPEND_NONE, KIMI_HF_PREPEND_ALL,
           KIMI_HF_PREPEND_UNLESS_SPACE, KIMI_HF_PREPEND_FIRST } prepend;
    int               byte_fallback;
    int               fuse_unk;
    int32_t           unk;               /* model's unk_token id, or -1 */
    int32_t           space_id;          /* the U+2581 token, or -1 */
    int32_t           fallback[256];     /* <0xXX>'s id, or -1 */
    int               decode_bytes;      /* ByteFallback decodes them (else
                                            their names are their text) */
};

/* GPT-2's pattern: ByteLevel's use_regex */
static const char  kimi_hf_gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";


/* ---- ByteLevel's character map ----------------------------------------------- */

/* bytes_to_unicode: printable Latin-1 as itself, every other byte as
 * U+0100 + its rank among those. */
static void
kimi_hf_byte_map(uint16_t map[256])
{
    int  i, j;

    for (i = 0, j = 0; i < 256; i++) {
        map[i] = ((i >= '!' && i <= '~') || (i >= 0xa1 && i <= 0xac)
                  || i >= 0xae) ? (uint16_t) i : (uint16_t) (256 + j++);
    }
}


/* s with each U+2581 as a space (SentencePiece's spaces, as they are held
 * here) into out, which n bytes fit: its length. */
static size_t
kimi_hf_spaces(const uint8_t *s, size_t n, uint8_t *out)
{
    size_t  i, k;

    for (i = 0, k = 0; i < n; i++) {
        if (i + 2 < n && s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
            out[k++] = ' ';
            i += 2;
        } else {
            out[k++] = s[i];
        }
    }

    return k;
}


/* A token's bytes as ByteLevel's decoder gives them: each character
 * through the inverse map when all of them are in it, else the string's
 * own UTF-8 (added tokens such as "<｜end▁of▁sentence｜>").  Returns the
 * length (<= n) and sets *mapped.  inv NULL (SentencePiece-style): the
 * string with each U+2581 as a space, mapped. */
static size_t
kimi_hf_token_bytes(const int16_t inv[0x144], const uint8_t *s, size_t n,
    uint8_t *out, int *mapped)
{
    size_t    i, k, len;
    uint32_t  cp;

    if (inv == NULL) {
        *mapped = 1;
        return kimi_hf_spaces(s, n, out);
    }

    for (i = 0, k = 0; i < n; i += len) {
        len = kimi_utf8_decode(s + i, n - i, &cp);
        if (len == 0 || cp >= 0x144 || inv[cp] < 0) {
            memcpy(out, s, n);
            *mapped = 0;
            return n;
        }
        out[k++] = (uint8_t) inv[cp];
    }

    *mapped = 1;
    return k;
}


/* ---- the merge table ------------------------------------------------------------ */

static uint64_t
kimi_hf_pair_hash(uint64_t key)
{
    key ^= key >> 31;
    key *= 0x9e3779b97f4a7c15ull;
    return key ^ (key >> 29);
}


static int
kimi_hf_pair_get(const kimi_hf_t *hf, uint32_t a, uint32_t b, uint32_t *rank,
    uint32_t *merged)
{
    uint64_t  key = ((uint64_t) a << 32 | b) + 1, slot;

    for (slot = kimi_hf_pair_hash(key) & hf->pair_mask;
         hf->pair_key[slot] != 0; slot = (slot + 1) & hf->pair_mask)
    {
        if (hf->pair_key[slot] == key) {
            *rank = (uint32_t) (hf->pair_val[slot] >> 32);
            *merged = (uint32_t) hf->pair_val[slot];
            return 1;
        }
    }

    return 0;
}


/* Every merge "left right" (or ["left", "right"]) whose sides and join are
 * byte-level tokens of the vocabulary; rank = its place in the list.  A
 * pair listed twice keeps its first rank, as tokenizers does. */
static int
kimi_hf_load_merges(kimi_tokenizer_t *tok, json_t *merges,
    const int16_t *inv, const char *path, kimi_err_t *err)
{
    size_t       i, n, la, lb;
    json_t      *m;
    uint8_t      buf[2 * KIMI_TOK_MAX_TOKEN];
    uint64_t     key, slot, size;
    int32_t      a, b, c;
    int          ok_a, ok_b;
    const char  *s, *sp;
    kimi_hf_t   *hf = tok->hf;

    n = json_array_size(merges);
    for (size = 1024; size < 2 * n; size *= 2) {
        /* a load factor of at most 1/2 */
    }

    hf->pair_mask = size - 1;
    hf->pair_key = calloc(size, sizeof(uint64_t));
    hf->pair_val = malloc(size * sizeof(uint64_t));
    if (hf->pair_key == NULL || hf->pair_val == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    json_array_foreach(merges, i, m) {
        const char  *left, *right;
        size_t       left_n, right_n;

        if (json_is_string(m)) {
            s = json_string_value(m);
            sp = strchr(s, ' ');
            if (sp == NULL || sp == s || sp[1] == '\0') {
                return kimi_err_set(err, KIMI_EFORMAT, "%s: merge %zu \"%s\" "
                                    "is not \"left right\"", path, i, s);
            }
            left = s;
            left_n = (size_t) (sp - s);
            right = sp + 1;
            right_n = strlen(right);

        } else if (json_is_array(m) && json_array_size(m) == 2
                   && json_is_string(json_array_get(m, 0))
                   && json_is_string(json_array_get(m, 1)))
        {
            left = json_string_value(json_array_get(m, 0));
            left_n = json_string_length(json_array_get(m, 0));
            right = json_string_value(json_array_get(m, 1));
            right_n = json_string_length(json_array_get(m, 1));

        } else {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: merge %zu is neither "
                                "\"left right\" nor [left, right]", path, i);
        }

        if (left_n > KIMI_TOK_MAX_TOKEN || right_n > KIMI_TOK_MAX_TOKEN) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: merge %zu is longer "
                                "than %d bytes a side", path, i,
                                KIMI_TOK_MAX_TOKEN);
        }

        la = kimi_hf_token_bytes(inv, (const uint8_t *) left, left_n, buf,
                                 &ok_a);
        lb = kimi_hf_token_bytes(inv, (const uint8_t *) right, right_n,
                                 buf + la, &ok_b);
        a = kimi_tok_rank(tok, buf, la);
        b = kimi_tok_rank(tok, buf + la, lb);
        c = la + lb <= KIMI_TOK_MAX_TOKEN ? kimi_tok_rank(tok, buf, la + lb)
                                          : -1;
        if (!ok_a || !ok_b || a < 0 || b < 0 || c < 0) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: merge %zu (\"%.*s\" "
                                "+ \"%.*s\") names a token the vocabulary "
                                "does not have", path, i, (int) left_n, left,
                                (int) right_n, right);
        }

        key = ((uint64_t) a << 32 | (uint32_t) b) + 1;
        for (slot = kimi_hf_pair_hash(key) & hf->pair_mask;
             hf->pair_key[slot] != 0 && hf->pair_key[slot] != key;
             slot = (slot + 1) & hf->pair_mask)
        {
            /* linear probing */
        }

        if (hf->pair_key[slot] == 0) {
            hf->pair_key[slot] = key;
            hf->pair_val[slot] = (uint64_t) i << 32 | (uint32_t) c;
        }
    }

    return KIMI_OK;
}


/* ---- loading -------------------------------------------------------------------- */

/* A pattern as Oniguruma (tokenizers' regex engine) reads it, for PCRE2:
 * \p{Han} is the Script there but the Script_Extensions here (PCRE2 >=
 * 10.40; the pretokenizer of tiktoken.model files wants those, as Rust's
 * regex), so a script name becomes \p{sc:Han} (\p{^Han}: \P{sc:Han});
 * general categories (one or two letters, L&, Any, X..) stay.  out holds
 * 2 * len + 1. */
static size_t
kimi_hf_onig(const char *p, size_t len, char *out)
{
    size_t       i, k = 0, n;
    const char  *name, *close;
    int          neg;

    for (i = 0; i < len; i++) {
        if (p[i] != '\\' || i + 1 >= len) {
            out[k++] = p[i];
            continue;
        }

        if ((p[i + 1] == 'p' || p[i + 1] == 'P') && i + 2 < len
            && p[i + 2] == '{'
            && (close = memchr(p + i + 3, '}', len - i - 3)) != NULL)
        {
            name = p + i + 3;
            neg = (p[i + 1] == 'P') ^ (*name == '^');
            name += *name == '^';
            n = (size_t) (close - name);

            if (n > 2 && memchr(name, ':', n) == NULL
                && memchr(name, '=', n) == NULL
                && !(n == 3 && (memcmp(name, "Any", 3) == 0 || name[0] == 'X')))
            {
                k += (size_t) sprintf(out + k, "\\%c{sc:", neg ? 'P' : 'p');
                memcpy(out + k, name, n);
                k += n;
                out[k++] = '}';
                i = (size_t) (close - p);
                continue;
            }
        }

        out[k++] = p[i++];                 /* an escape: both characters */
        out[k++] = p[i];
    }

    out[k] = '\0';
    return k;
}


static int
kimi_hf_compile(kimi_hf_step_t *st, const char *pattern, size_t len,
    int literal, const char *path, kimi_err_t *err)
{
    int         ec;
    char       *onig;
    size_t      n;
    PCRE2_SIZE  eo;
    char        msg[160];

    if (literal) {
        /* (PCRE2 takes no UCP with a literal) */
        st->re = pcre2_compile((PCRE2_SPTR) pattern, len,
                               PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_LITERAL,
                               &ec, &eo, NULL);
    } else {
        onig = malloc(2 * len + 1);
        if (onig == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
        }
        n = kimi_hf_onig(pattern, len, onig);
        st->re = pcre2_compile((PCRE2_SPTR) onig, n,
                               PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK,
                               &ec, &eo, NULL);
        free(onig);
    }
    if (st->re == NULL) {
        pcre2_get_error_message(ec, (PCRE2_UCHAR *) msg, sizeof(msg));
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: pre_tokenizer "
                            "pattern \"%.*s\" at offset %zu: %s", path,
                            (int) len, pattern, (size_t) eo, msg);
    }

    st->jit = pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE) == 0;
    return KIMI_OK;
}


static int
kimi_hf_add_step(kimi_hf_t *hf, kimi_hf_step_t **out, const char *path,
    kimi_err_t *err)
{
    kimi_hf_step_t  *p;

    p = realloc(hf->steps, (hf->n_steps + 1) * sizeof(*p));
    if (p == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    hf->steps = p;
    *out = &p[hf->n_steps++];
    memset(*out, 0, sizeof(**out));
    return KIMI_OK;
}


static int
kimi_hf_load_pretok(kimi_hf_t *hf, json_t *pt, const char *path,
    kimi_err_t *err)
{
    int              rc;
    size_t           i;
    json_t          *v, *pat;
    const char      *type, *b;
    kimi_hf_step_t  *st = NULL;

    if (pt == NULL || json_is_null(pt)) {
        return KIMI_OK;
    }

    type = json_string_value(json_object_get(pt, "type"));
    if (type == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: a pre_tokenizer has no "
                            "\"type\"", path);
    }

    if (strcmp(type, "Sequence") == 0) {
        json_array_foreach(json_object_get(pt, "pretokenizers"), i, v) {
            rc = kimi_hf_load_pretok(hf, v, path, err);
            if (rc != KIMI_OK) {
                return rc;
            }
        }
        return KIMI_OK;
    }

    if (strcmp(type, "Metaspace") == 0) {
        /* spaces as U+2581 (held as spaces here), one before the text;
         * older files say add_prefix_space instead of prepend_scheme, and
         * split defaults to true */
        const char  *ps = json_string_value(json_object_get(pt,
                                                            "prepend_scheme"));
        const char  *rp = json_string_value(json_object_get(pt,
                                                            "replacement"));

        if (rp == NULL || strcmp(rp, "\xe2\x96\x81") != 0) {
            return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: Metaspace with "
                                "replacement \"%s\" is not implemented (only "
                                "U+2581)", path, rp ? rp : "(none)");
        }
        hf->meta = 1;
        v = json_object_get(pt, "split");
        hf->meta_split = v == NULL || json_is_true(v);
        if (ps == NULL) {
            ps = json_is_false(json_object_get(pt, "add_prefix_space"))
                 ? "never" : "always";
        }
        if (strcmp(ps, "always") == 0) {
            hf->prepend = KIMI_HF_PREPEND_UNLESS_SPACE;
        } else if (strcmp(ps, "first") == 0) {
            hf->prepend = KIMI_HF_PREPEND_FIRST;
        } else if (strcmp(ps, "never") == 0) {
            hf->prepend = KIMI_HF_PREPEND_NONE;
        } else {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: Metaspace "
                                "prepend_scheme \"%s\" is not always, first "
                                "or never", path, ps);
        }
        return KIMI_OK;
    }

    rc = kimi_hf_add_step(hf, &st, path, err);
    if (rc != KIMI_OK) {
        return rc;
    }

    if (strcmp(type, "Split") == 0) {
        pat = json_object_get(pt, "pattern");
        b = json_string_value(json_object_get(pt, "behavior"));
        st->invert = json_is_true(json_object_get(pt, "invert"));
        st->behavior = b == NULL ? (kimi_hf_behavior_e) -1
                       : strcmp(b, "Isolated") == 0 ? KIMI_HF_ISOLATED
                       : strcmp(b, "Removed") == 0 ? KIMI_HF_REMOVED
                       : strcmp(b, "MergedWithPrevious") == 0
                         ? KIMI_HF_MERGED_PREV
                       : strcmp(b, "MergedWithNext") == 0 ? KIMI_HF_MERGED_NEXT
                       : strcmp(b, "Contiguous") == 0 ? KIMI_HF_CONTIGUOUS
                       : (kimi_hf_behavior_e) -1;
        if ((int) st->behavior < 0) {
            return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: Split behavior "
                                "\"%s\" is not one of tokenizers'", path,
                                b ? b : "(none)");
        }

        if (json_is_string(json_object_get(pat, "Regex"))) {
            v = json_object_get(pat, "Regex");
            return kimi_hf_compile(st, json_string_value(v),
                                   json_string_length(v), 0, path, err);
        }

        if (json_is_string(json_object_get(pat, "String"))) {
            v = json_object_get(pat, "String");
            return kimi_hf_compile(st, json_string_value(v),
                                   json_string_length(v), 1, path, err);
        }

        return kimi_err_set(err, KIMI_EFORMAT, "%s: a Split pattern is "
                            "neither {\"Regex\"} nor {\"String\"}", path);
    }

    if (strcmp(type, "Digits") == 0) {
        /* char::is_numeric runs: one each (individual_digits) or whole */
        st->behavior = KIMI_HF_ISOLATED;
        return json_is_true(json_object_get(pt, "individual_digits"))
               ? kimi_hf_compile(st, "\\p{N}", 5, 0, path, err)
               : kimi_hf_compile(st, "\\p{N}+", 6, 0, path, err);
    }

    if (strcmp(type, "ByteLevel") == 0) {
        hf->byte_level = 1;
        st->behavior = KIMI_HF_ISOLATED;
        st->prefix_space = json_is_true(json_object_get(pt,
                                                        "add_prefix_space"));
        if (json_is_false(json_object_get(pt, "use_regex"))) {
            return KIMI_OK;                 /* the map only: pieces as they are */
        }
        if (st->prefix_space) {
            /* the space would be text the regex sees: not done here */
            return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: ByteLevel with "
                                "add_prefix_space and use_regex is not "
                                "implemented", path);
        }
        return kimi_hf_compile(st, kimi_hf_gpt2_re,
                               sizeof(kimi_hf_gpt2_re) - 1, 0, path, err);
    }

    return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: pre_tokenizer \"%s\" is "
                        "not implemented (Sequence, Split, Digits, ByteLevel "
                        "and Metaspace are)", path, type);
}


/* The normalizer: nothing (null, an empty Sequence), or SentencePiece's
 * spaces: Replace(" ", U+2581), with or without Prepend(U+2581), in a
 * Sequence or alone. */
static int
kimi_hf_load_normalizer(kimi_hf_t *hf, json_t *nz, const char *path,
    kimi_err_t *err)
{
    int          rc;
    size_t       i;
    json_t      *v;
    const char  *type, *a, *b;

    if (nz == NULL || json_is_null(nz)) {
        return KIMI_OK;
    }

    type = json_string_value(json_object_get(nz, "type"));
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        json_array_foreach(json_object_get(nz, "normalizers"), i, v) {
            rc = kimi_hf_load_normalizer(hf, v, path, err);
            if (rc != KIMI_OK) {
                return rc;
            }
        }
        return KIMI_OK;
    }

    if (type != NULL && strcmp(type, "Prepend") == 0) {
        a = json_string_value(json_object_get(nz, "prepend"));
        if (a != NULL && strcmp(a, "\xe2\x96\x81") == 0) {
            hf->prepend = KIMI_HF_PREPEND_ALL;
            return KIMI_OK;
        }
    }

    if (type != NULL && strcmp(type, "Replace") == 0) {
        a = json_string_value(json_object_get(json_object_get(nz, "pattern"),
                                              "String"));
        b = json_string_value(json_object_get(nz, "content"));
        if (a != NULL && b != NULL && strcmp(a, " ") == 0
            && strcmp(b, "\xe2\x96\x81") == 0)
        {
            hf->norm_space = 1;
            return KIMI_OK;
        }
    }

    return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: normalizer \"%s\" is not "
                        "implemented (only none, or SentencePiece's Prepend "
                        "and Replace of \" \" by U+2581)", path,
                        type ? type : "(no type)");
}


static int
kimi_hf_check_model(json_t *model, const char *path, kimi_err_t *err)
{
    const char  *type, *why = NULL;
    json_t      *v;

    type = json_string_value(json_object_get(model, "type"));
    if (type == NULL || strcmp(type, "BPE") != 0) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: model type \"%s\" is "
                            "not implemented (only BPE)", path,
                            type ? type : "(none)");
    }

    v = json_object_get(model, "dropout");
    if (v != NULL && !json_is_null(v) && json_number_value(v) != 0) {
        why = "dropout";
    }
    v = json_object_get(model, "continuing_subword_prefix");
    if (json_string_length(v) > 0) {
        why = "continuing_subword_prefix";
    }
    v = json_object_get(model, "end_of_word_suffix");
    if (json_string_length(v) > 0) {
        why = "end_of_word_suffix";
    }

    if (why != NULL) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: BPE with %s is not "
                            "implemented", path, why);
    }

    if (!json_is_object(json_object_get(model, "vocab"))
        || !json_is_array(json_object_get(model, "merges")))
    {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: model has no \"vocab\" "
                            "object or \"merges\" list", path);
    }

    return KIMI_OK;
}


/* Byte-level (a ByteLevel step, nothing else of SentencePiece's) or
 * SentencePiece-style (no pre-tokenizer steps, spaces as U+2581 by the
 * normalizer or Metaspace): which one, into hf->chars. */
static int
kimi_hf_check_layout(kimi_hf_t *hf, json_t *model, const char *path,
    kimi_err_t *err)
{
    hf->chars = !hf->byte_level;
    hf->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    hf->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));

    if (!hf->chars && (hf->norm_space || hf->meta
                       || hf->prepend != KIMI_HF_PREPEND_NONE
                       || hf->byte_fallback))
    {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: a ByteLevel "
                            "pre-tokenizer with %s is not implemented", path,
                            hf->byte_fallback ? "byte_fallback"
                            : "SentencePiece's U+2581 spaces");
    }

    if (hf->chars && (hf->n_steps > 0 || !(hf->norm_space || hf->meta))) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: BPE without a "
                            "ByteLevel pre-tokenizer is implemented only in "
                            "SentencePiece's layout (spaces as U+2581 by the "
                            "normalizer or a Metaspace pre-tokenizer, no "
                            "other pre-tokenizer)", path);
    }

    return KIMI_OK;
}


/* ByteLevel files: the ByteLevel decoder.  SentencePiece-style: what gives
 * each token's bytes as held (Replace(U+2581, " "), ByteFallback, Fuse) and
 * the space a whole decode drops at its start: Strip(" ", 1, 0) after Fuse
 * (the text's first character, if a space) or Metaspace (the first token's
 * U+2581, unless prepend_scheme is never): *strip 1 or 2. */
static int
kimi_hf_check_decoder(kimi_hf_t *hf, json_t *dec, int *strip,
    const char *path, kimi_err_t *err)
{
    size_t       i;
    json_t      *v;
    const char  *type, *a, *b;
    int          chars = hf->chars;

    type = json_string_value(json_object_get(dec, "type"));
    if (!chars && type != NULL && strcmp(type, "ByteLevel") == 0) {
        return KIMI_OK;
    }

    if (type != NULL && strcmp(type, "Sequence") == 0) {
        json_array_foreach(json_object_get(dec, "decoders"), i, v) {
            if (kimi_hf_check_decoder(hf, v, strip, path, err) != KIMI_OK) {
                return KIMI_EUNSUPPORTED;
            }
        }
        return KIMI_OK;
    }

    if (chars && type != NULL) {
        if (strcmp(type, "ByteFallback") == 0) {
            hf->decode_bytes = 1;
            return KIMI_OK;
        }
        if (strcmp(type, "Fuse") == 0) {
            return KIMI_OK;
        }
        if (strcmp(type, "Replace") == 0) {
            a = json_string_value(json_object_get(json_object_get(dec,
                                                                  "pattern"),
                                                  "String"));
            b = json_string_value(json_object_get(dec, "content"));
            if (a != NULL && b != NULL && strcmp(a, "\xe2\x96\x81") == 0
                && strcmp(b, " ") == 0)
            {
                return KIMI_OK;
            }
        }
        if (strcmp(type, "Strip") == 0
            && json_integer_value(json_object_get(dec, "stop")) == 0
            && json_integer_value(json_object_get(dec, "start")) <= 1
            && json_is_string(json_object_get(dec, "content"))
            && strcmp(json_string_value(json_object_get(dec, "content")),
                      " ") == 0)
        {
            *strip = json_integer_value(json_object_get(dec, "start")) == 1;
            return KIMI_OK;
        }
        if (strcmp(type, "Metaspace") == 0) {
            a = json_string_value(json_object_get(dec, "prepend_scheme"));
            if (a == NULL) {
                a = json_is_false(json_object_get(dec, "add_prefix_space"))
                    ? "never" : "always";
            }
            *strip = strcmp(a, "never") != 0 ? 2 : 0;
            return KIMI_OK;
        }
    }

    return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: decoder \"%s\" is not "
                        "implemented (%s)", path, type ? type : "(none)",
                        chars ? "SentencePiece-style files: Replace of U+2581 "
                                "by \" \", ByteFallback, Fuse, Strip of one "
                                "leading space, Metaspace"
                              : "only ByteLevel");
}


/* A SentencePiece byte token's byte ("<0x0A>": 10), or -1. */
static int
kimi_hf_fallback_byte(const char *s, size_t n)
{
    int  i, v, d;

    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') {
        return -1;
    }
    for (i = 3, v = 0; i < 5; i++) {
        d = s[i] >= '0' && s[i] <= '9' ? s[i] - '0'
            : s[i] >= 'A' && s[i] <= 'F' ? s[i] - 'A' + 10 : -1;
        if (d < 0) {
            return -1;
        }
        v = v * 16 + d;
    }
    return v;
}


/* Every id's bytes into tok->blob/off (vocab strings and added tokens'
 * contents through ByteLevel's decoder, or as SentencePiece-style text with
 * <0xXX> as its byte; no token: empty), and the vocabulary BPE can build
 * into the lookup the merges and BPE use (inv NULL: SentencePiece-style). */
static int
kimi_hf_load_tokens(kimi_tokenizer_t *tok, json_t *vocab,
    const int16_t *inv, const uint16_t *map, const char *path,
    kimi_err_t *err)
{
    int          mapped, fb;
    size_t       n, blob_n, len;
    json_t      *v;
    int32_t      id, e, max_id;
    uint32_t     i, *src_len;
    uint8_t     *is_bl;
    const char  *key, **src;
    uint8_t      one[2];

    max_id = -1;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0
            || json_integer_value(v) >= (1 << 24))
        {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: vocab entry \"%s\" "
                                "has no id in 0..16777215", path, key);
        }
        id = (int32_t) json_integer_value(v);
        max_id = id > max_id ? id : max_id;
    }

    for (i = 0; i < tok->sp.n; i++) {
        max_id = tok->sp.id[i] > max_id ? tok->sp.id[i] : max_id;
    }

    tok->n_ids = (uint32_t) max_id + 1;
    tok->n_ranks = tok->n_ids;

    src = calloc(tok->n_ids, sizeof(*src));
    src_len = calloc(tok->n_ids, sizeof(*src_len));
    is_bl = calloc(tok->n_ids, 1);
    tok->off = malloc((tok->n_ids + 1) * sizeof(*tok->off));
    if (src == NULL || src_len == NULL || is_bl == NULL || tok->off == NULL) {
        free(src);
        free(src_len);
        free(is_bl);
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    blob_n = 0;
    json_object_foreach(vocab, key, v) {
        id = (int32_t) json_integer_value(v);
        if (src[id] != NULL) {
            free(src);
            free(src_len);
            free(is_bl);
            return kimi_err_set(err, KIMI_EFORMAT, "%s: vocab id %ld is "
                                "given twice", path, (long) id);
        }
        src[id] = key;
        src_len[id] = (uint32_t) strlen(key);
    }

    /* an added token's content wins over a vocab string of its id */
    for (i = 0; i < tok->sp.n; i++) {
        src[tok->sp.id[i]] = tok->sp.name[i];
        src_len[tok->sp.id[i]] = tok->sp.name_len[i];
    }

    for (i = 0; i < tok->n_ids; i++) {
        blob_n += src_len[i];
    }

    tok->blob = malloc(blob_n + 1);
    if (tok->blob == NULL) {
        free(src);
        free(src_len);
        free(is_bl);
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    tok->off[0] = 0;
    for (i = 0; i < tok->n_ids; i++) {
        len = 0;
        if (src[i] != NULL) {
            e = kimi_specials_entry(&tok->sp, (int32_t) i);
            fb = inv == NULL ? kimi_hf_fallback_byte(src[i], src_len[i]) : -1;

            if (fb >= 0) {
                /* a byte the BPE falls back to, never built by merges */
                tok->hf->fallback[fb] = (int32_t) i;
                len = tok->hf->decode_bytes ? 1 : src_len[i];
                if (tok->hf->decode_bytes) {
                    tok->blob[tok->off[i]] = (uint8_t) fb;
                } else {
                    memcpy(tok->blob + tok->off[i], src[i], len);
                }
                mapped = 0;
            } else {
                len = kimi_hf_token_bytes(inv, (const uint8_t *) src[i],
                                          src_len[i], tok->blob + tok->off[i],
                                          &mapped);
            }
            /* SentencePiece-style: a spelling with a plain space cannot
             * come out of the BPE (the text's spaces are U+2581 by then),
             * and would take the bytes of its U+2581 twin */
            is_bl[i] = mapped && e < 0
                       && !(inv == NULL && memchr(src[i], ' ', src_len[i]));
            if (len > KIMI_TOK_MAX_TOKEN) {
                free(src);
                free(src_len);
                free(is_bl);
                return kimi_err_set(err, KIMI_EFORMAT, "%s: token %u is "
                                    "longer than %d bytes", path, i,
                                    KIMI_TOK_MAX_TOKEN);
            }
        }
        tok->off[i + 1] = tok->off[i] + (uint32_t) len;
    }

    free(src);
    free(src_len);

    /* the lookup: byte-level vocabulary tokens only (what BPE can build) */
    for (n = 1024; n < 2 * (size_t) tok->n_ids; n *= 2) {
        /* a load factor of at most 1/2 */
    }
    tok->mask = (uint32_t) n - 1;
    tok->slots = calloc(n, sizeof(uint64_t));
    if (tok->slots == NULL) {
        free(is_bl);
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    for (i = 0; i < tok->n_ids; i++) {
        if (is_bl[i] && tok->off[i + 1] > tok->off[i]
            && kimi_tok_insert(tok, i) != KIMI_OK)
        {
            free(is_bl);
            return kimi_err_set(err, KIMI_EFORMAT, "%s: vocab tokens %ld and "
                                "%u have the same bytes", path,
                                (long) kimi_tok_rank(tok, tok->blob
                                                     + tok->off[i],
                                                     tok->off[i + 1]
                                                     - tok->off[i]), i);
        }
    }

    free(is_bl);

    if (inv == NULL) {
        return KIMI_OK;             /* characters, not bytes, start the BPE */
    }

    for (i = 0; i < 256; i++) {
        /* the byte's one-character token: map[i] in UTF-8 */
        one[0] = (uint8_t) i;
        id = kimi_tok_rank(tok, one, 1);
        if (id < 0) {
            return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: byte 0x%02x "
                                "(\"\\u%04x\") has no token: not a byte-level "
                                "BPE vocabulary", path, i, map[i]);
        }
        tok->byte_rank[i] = (uint32_t) id;
    }

    return KIMI_OK;
}


int
kimi_hf_load(kimi_tokenizer_t *tok, const char *path, const char *config_path,
    kimi_err_t *err)
{
    int           rc, lstrip, rstrip;
    size_t        i;
    json_t       *root, *cfg = NULL, *model, *added, *v, *c;
    uint16_t      map[256];
    int16_t       inv[0x144];
    json_error_t  jerr;

    kimi_hf_byte_map(map);
    memset(inv, 0xff, sizeof(inv));
    for (i = 0; i < 256; i++) {
        inv[map[i]] = (int16_t) i;
    }

    tok->hf = calloc(1, sizeof(*tok->hf));
    if (tok->hf == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }
    tok->hf->unk = tok->hf->space_id = -1;
    for (i = 0; i < 256; i++) {
        tok->hf->fallback[i] = -1;
    }

    memset(&tok->sp, 0, sizeof(tok->sp));
    tok->sp.bos = tok->sp.eos = tok->sp.unk = tok->sp.pad = -1;

    root = json_load_file(path, 0, &jerr);
    if (root == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s:%d: %s", path, jerr.line,
                            jerr.text);
    }

    model = json_object_get(root, "model");
    rc = kimi_hf_check_model(model, path, err);
    if (rc == KIMI_OK) {
        rc = kimi_hf_load_normalizer(tok->hf,
                                     json_object_get(root, "normalizer"),
                                     path, err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_hf_load_pretok(tok->hf,
                                 json_object_get(root, "pre_tokenizer"), path,
                                 err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_hf_check_layout(tok->hf, model, path, err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_hf_check_decoder(tok->hf, json_object_get(root, "decoder"),
                                   &tok->decode_strip, path, err);
    }
    for (i = 0; rc == KIMI_OK && i + 1 < tok->hf->n_steps; i++) {
        if (tok->hf->steps[i].prefix_space) {
            rc = kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: a ByteLevel "
                              "pre_tokenizer with add_prefix_space before "
                              "another step is not implemented", path);
        }
    }
    if (rc != KIMI_OK) {
        goto done;
    }

    tok->hf->ignore_merges = json_is_true(json_object_get(model,
                                                          "ignore_merges"));

    added = json_object_get(root, "added_tokens");
    json_array_foreach(added, i, v) {
        c = json_object_get(v, "content");
        if (!json_is_string(c) || !json_is_integer(json_object_get(v, "id"))
            || json_integer_value(json_object_get(v, "id")) < 0
            || json_integer_value(json_object_get(v, "id")) >= (1 << 24))
        {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s: added_tokens[%zu] has "
                              "no content or id", path, i);
            goto done;
        }
        if (json_is_true(json_object_get(v, "single_word"))) {
            rc = kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: added token \"%s\""
                              " is single_word, which is not implemented",
                              path, json_string_value(c));
            goto done;
        }
        lstrip = json_is_true(json_object_get(v, "lstrip"));
        rstrip = json_is_true(json_object_get(v, "rstrip"));
        rc = kimi_specials_add(&tok->sp, json_string_value(c),
                               json_string_length(c),
                               (int32_t) json_integer_value(
                                   json_object_get(v, "id")),
                               json_is_true(json_object_get(v, "special")),
                               (lstrip ? KIMI_SPECIAL_LSTRIP : 0)
                               | (rstrip ? KIMI_SPECIAL_RSTRIP : 0),
                               path, err);
        if (rc != KIMI_OK) {
            goto done;
        }
    }

    rc = kimi_specials_index(&tok->sp, path, err);
    if (rc == KIMI_OK) {
        rc = kimi_hf_load_tokens(tok, json_object_get(model, "vocab"),
                                 tok->hf->chars ? NULL : inv, map, path, err);
    }
    if (rc == KIMI_OK) {
        rc = kimi_hf_load_merges(tok, json_object_get(model, "merges"),
                                 tok->hf->chars ? NULL : inv, path, err);
    }
    if (rc == KIMI_OK && tok->hf->chars) {
        v = json_object_get(json_object_get(model, "vocab"),
                            json_string_value(json_object_get(model,
                                                              "unk_token"))
                            ? json_string_value(json_object_get(model,
                                                                "unk_token"))
                            : "");
        tok->hf->unk = json_is_integer(v) ? (int32_t) json_integer_value(v)
                                          : -1;
        tok->hf->space_id = kimi_tok_rank(tok, (const uint8_t *) " ", 1);
    }
    if (rc != KIMI_OK) {
        goto done;
    }

    /* tokenizer_config.json: bos/eos and the skip set, add_bos_token */
    cfg = json_load_file(config_path, JSON_DECODE_INT_AS_REAL, &jerr);
    if (cfg != NULL) {
        rc = kimi_specials_config(&tok->sp, cfg, config_path, err);
        tok->add_bos = json_is_true(json_object_get(cfg, "add_bos_token"));
    }

done:

    json_decref(cfg);
    json_decref(root);
    return rc;
}


size_t
kimi_token_str(const kimi_tokenizer_t *tok, int32_t id, char *out)
{
    size_t       i, len, k;
    uint16_t     map[256], cp;
    const char  *b;

    b = kimi_token_bytes(tok, id, &len);
    if (b == NULL) {
        return 0;
    }

    if (kimi_tokenizer_is_added(tok, id)) {
        memcpy(out, b, len);
        return len;
    }

    k = 0;
    if (tok->hf != NULL && tok->hf->chars) {
        if (kimi_hf_is_byte_token(tok->hf, id)) {
            return (size_t) sprintf(out, "<0x%02X>", (unsigned) (uint8_t) b[0]);
        }
        for (i = 0; i < len; i++) {
            if (b[i] == ' ') {
                memcpy(out + k, "\xe2\x96\x81", 3);
                k += 3;
            } else {
                out[k++] = b[i];
            }
        }
        return k;
    }

    kimi_hf_byte_map(map);
    for (i = 0; i < len; i++) {             /* every map value < 0x800 */
        cp = map[(uint8_t) b[i]];
        if (cp < 0x80) {
            out[k++] = (char) cp;
        } else {
            out[k++] = (char) (0xc0 | (cp >> 6));
            out[k++] = (char) (0x80 | (cp & 0x3f));
        }
    }
    return k;
}


int
kimi_hf_byte_runs(const kimi_tokenizer_t *tok)
{
    return tok->hf != NULL && tok->hf->chars && tok->hf->decode_bytes;
}


int
kimi_hf_is_byte_token(const kimi_hf_t *hf, int32_t id)
{
    int  i;

    for (i = 0; hf != NULL && hf->chars && i < 256; i++) {
        if (hf->fallback[i] == id) {
            return 1;
        }
    }

    return 0;
}


void
kimi_hf_free(kimi_hf_t *hf)
{
    size_t  i;

    if (hf == NULL) {
        return;
    }

    for (i = 0; i < hf->n_steps; i++) {
        pcre2_code_free(hf->steps[i].re);
    }

    free(hf->steps);
    free(hf->pair_key);
    free(hf->pair_val);
    free(hf);
}


/* ---- encoding ------------------------------------------------------------------- */

static int
kimi_hf_push(kimi_hf_pieces_t *p, uint32_t off, uint32_t len, int space,
    kimi_err_t *err)
{
    void  *q;

    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        q = realloc(p->v, p->cap * sizeof(*p->v));
        if (q == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "tokenizer: out of memory");
        }
        p->v = q;
    }

    p->v[p->n].off = off;
    p->v[p->n].len = len;
    p->v[p->n].space = (uint8_t) space;
    p->n++;
    return KIMI_OK;
}


/* The next character boundary after i (i < end). */
static size_t
kimi_hf_next_char(const uint8_t *p, size_t i, size_t end)
{
    for (i++; i < end && (p[i] & 0xc0) == 0x80; i++) {
        /* continuation bytes */
    }

    return i;
}


/* One piece through a Split: its matches and the gaps between them as
 * tokenizers' find_matches lists them (an empty match is a zero-length
 * match; the empty string is one gap), each item's space field holding
 * is_match (flipped by invert). */
static int
kimi_hf_find(const kimi_hf_step_t *st, pcre2_match_data *md,
    const uint8_t *s, const kimi_hf_piece_t *in, kimi_hf_pieces_t *items,
    kimi_err_t *err)
{
    int           rc;
    size_t        at, from, end;
    PCRE2_SIZE   *ov;
    const uint8_t *p = s + in->off;

    items->n = 0;
    at = from = 0;
    end = in->len;
    ov = pcre2_get_ovector_pointer(md);

    while (from <= end && end > 0) {
        rc = st->jit ? pcre2_jit_match(st->re, p, end, from,
                                       PCRE2_NO_UTF_CHECK, md, NULL)
                     : pcre2_match(st->re, p, end, from, PCRE2_NO_UTF_CHECK,
                                   md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) {
            break;
        }
        if (rc < 0) {
            return kimi_err_set(err, KIMI_EINVAL, "tokenizer: pre_tokenizer "
                                "match failed (PCRE2 %d)", rc);
        }

        if (ov[0] > at
            && kimi_hf_push(items, in->off + (uint32_t) at,
                            (uint32_t) (ov[0] - at), st->invert, err)
               != KIMI_OK)
        {
            return KIMI_ENOMEM;
        }

        if (kimi_hf_push(items, in->off + (uint32_t) ov[0],
                         (uint32_t) (ov[1] - ov[0]), !st->invert, err)
            != KIMI_OK)
        {
            return KIMI_ENOMEM;
        }

        at = ov[1];
        if (ov[1] > ov[0]) {
            from = ov[1];
        } else if (ov[1] < end) {
            from = kimi_hf_next_char(p, ov[1], end);
        } else {
            break;
        }
    }

    if ((at < end || items->n == 0)
        && kimi_hf_push(items, in->off + (uint32_t) at,
                        (uint32_t) (end - at), st->invert, err) != KIMI_OK)
    {
        return KIMI_ENOMEM;
    }

    return KIMI_OK;
}


/* The items of one piece joined by the Split's behavior (tokenizers'
 * SplitDelimiterBehavior), appended to out without the empty ones; the
 * piece's prefix-space flag goes to its first. */
static int
kimi_hf_behave(kimi_hf_behavior_e b, const kimi_hf_piece_t *in,
    kimi_hf_pieces_t *items, kimi_hf_pieces_t *out, kimi_err_t *err)
{
    int               m, prev;
    size_t            i, n0 = out->n, w;
    kimi_hf_piece_t  *it = items->v, *last;

    if (b == KIMI_HF_MERGED_NEXT) {
        /* folded from the end: a match joins the item after it unless that
         * one is a match too (items are only grown leftwards here) */
        prev = 0;
        w = items->n;
        for (i = items->n; i-- > 0; ) {
            m = it[i].space;
            if (m && !prev && w < items->n) {
                it[w].len += it[w].off - it[i].off;
                it[w].off = it[i].off;
            } else {
                it[--w] = it[i];
                it[w].space = (uint8_t) m;
            }
            prev = m;
        }
        for (i = w; i < items->n; i++) {
            if (it[i].len > 0 && kimi_hf_push(out, it[i].off, it[i].len, 0,
                                              err) != KIMI_OK)
            {
                return KIMI_ENOMEM;
            }
        }

    } else {
        prev = 0;
        for (i = 0; i < items->n; i++) {
            m = it[i].space;
            last = out->n > n0 ? &out->v[out->n - 1] : NULL;

            if (b == KIMI_HF_REMOVED && m) {
                prev = m;
                continue;
            }

            if (last != NULL
                && ((b == KIMI_HF_MERGED_PREV && m && !prev)
                    || (b == KIMI_HF_CONTIGUOUS && m == prev)))
            {
                last->len = it[i].off + it[i].len - last->off;

            } else if (kimi_hf_push(out, it[i].off, it[i].len, 0, err)
                       != KIMI_OK)
            {
                return KIMI_ENOMEM;
            }
            prev = m;
        }

        /* empty ones out (a joined run may start with one) */
        for (i = w = n0; i < out->n; i++) {
            if (out->v[i].len > 0) {
                out->v[w++] = out->v[i];
            }
        }
        out->n = w;
    }

    if (in->space && out->n > n0) {
        out->v[n0].space = 1;
    }

    return KIMI_OK;
}


/* ---- BPE of one piece -------------------------------------------------------------- */

/* SentencePiece-style: one character's symbols at sym[k..], returning the
 * new count: its token, else its bytes' <0xXX> tokens (byte_fallback, when
 * every byte has one), else unk (a run of them one unk with fuse_unk; no
 * unk: nothing), as tokenizers' merge_word starts a word. */
static size_t
kimi_hf_char(const kimi_tokenizer_t *tok, const uint8_t *c, size_t l,
    int32_t *sym, size_t k, int *unk_run)
{
    size_t            b;
    int32_t           id;
    const kimi_hf_t  *hf = tok->hf;

    id = c[0] == ' ' && l == 1 ? hf->space_id : kimi_tok_rank(tok, c, l);
    if (id >= 0) {
        sym[k++] = id;
        *unk_run = 0;
        return k;
    }

    if (hf->byte_fallback) {
        for (b = 0; b < l && hf->fallback[c[b]] >= 0; b++) {
            /* every byte has its token */
        }
        if (b == l) {
            for (b = 0; b < l; b++) {
                sym[k++] = hf->fallback[c[b]];
            }
            *unk_run = 0;
            return k;
        }
    }

    if (hf->unk >= 0 && !(hf->fuse_unk && *unk_run)) {
        sym[k++] = hf->unk;
    }
    *unk_run = hf->unk >= 0;
    return k;
}


/* The piece's bytes (after an optional prefix space) as ids: one symbol a
 * byte (SentencePiece-style: a character, kimi_hf_char), then the pair of
 * lowest merge rank joined, leftmost first, until none is left
 * (tokenizers' merge_word; a heap of rank << 32 | position with stale
 * entries skipped).  ids must hold n + 1. */
static size_t
kimi_hf_bpe(const kimi_tokenizer_t *tok, kimi_hf_scratch_t *scr,
    const uint8_t *p, size_t n, int space, int32_t *ids)
{
    size_t     i, k, len, n_heap;
    int32_t   *sym, *next, *prev;
    uint32_t   rank, merged, pos, r2, m2;
    uint64_t  *heap, top;
    const kimi_hf_t  *hf = tok->hf;

    len = n + (space ? 1 : 0);

    if (hf->ignore_merges && len <= KIMI_TOK_MAX_TOKEN && !space) {
        int32_t  id = kimi_tok_rank(tok, p, n);

        if (id >= 0) {
            ids[0] = id;
            return 1;
        }
    }

    sym = scr->sym;
    next = scr->next;
    prev = scr->prev;
    heap = scr->heap;

    if (hf->chars) {
        int  unk_run = 0;

        len = space ? kimi_hf_char(tok, (const uint8_t *) " ", 1, sym, 0,
                                   &unk_run)
                    : 0;
        for (i = 0; i < n; i += k) {
            uint32_t  cp;

            k = kimi_utf8_decode(p + i, n - i, &cp);
            k = k > 0 ? k : 1;
            len = kimi_hf_char(tok, p + i, k, sym, len, &unk_run);
        }

    } else {
        for (i = 0; i < len; i++) {
            sym[i] = (int32_t) tok->byte_rank[space ? (i == 0 ? ' '
                                                              : p[i - 1])
                                                    : p[i]];
        }
    }

    for (i = 0; i < len; i++) {
        next[i] = i + 1 < len ? (int32_t) i + 1 : -1;
        prev[i] = (int32_t) i - 1;
    }

    n_heap = 0;
    for (i = 0; i + 1 < len; i++) {
        if (kimi_hf_pair_get(hf, (uint32_t) sym[i], (uint32_t) sym[i + 1],
                             &rank, &merged))
        {
            kimi_heap_push(heap, &n_heap, (uint64_t) rank << 32 | i);
        }
    }

    while (n_heap > 0) {
        top = kimi_heap_pop(heap, &n_heap);
        pos = (uint32_t) top;
        rank = (uint32_t) (top >> 32);

        /* stale: the left symbol is gone, or its pair is another now */
        if (sym[pos] < 0 || next[pos] < 0
            || !kimi_hf_pair_get(hf, (uint32_t) sym[pos],
                                 (uint32_t) sym[next[pos]], &r2, &merged)
            || r2 != rank)
        {
            continue;
        }

        k = (size_t) next[pos];
        sym[pos] = (int32_t) merged;
        sym[k] = -1;
        next[pos] = next[k];
        if (next[k] >= 0) {
            prev[next[k]] = (int32_t) pos;
        }

        if (prev[pos] >= 0
            && kimi_hf_pair_get(hf, (uint32_t) sym[prev[pos]],
                                (uint32_t) sym[pos], &r2, &m2))
        {
            kimi_heap_push(heap, &n_heap,
                              (uint64_t) r2 << 32 | (uint32_t) prev[pos]);
        }
        if (next[pos] >= 0
            && kimi_hf_pair_get(hf, (uint32_t) sym[pos],
                                (uint32_t) sym[next[pos]], &r2, &m2))
        {
            kimi_heap_push(heap, &n_heap, (uint64_t) r2 << 32 | pos);
        }
    }

    for (i = 0, k = 0; i < len; i = next[i] >= 0 ? (size_t) next[i] : len) {
        ids[k++] = sym[i];
    }

    return k;
}


static int
kimi_hf_reserve(kimi_hf_scratch_t *scr, size_t n, kimi_err_t *err)
{
    void  *p[4];

    if (n <= scr->cap) {
        return KIMI_OK;
    }

    n = n < 256 ? 256 : 2 * n;
    p[0] = realloc(scr->sym, n * sizeof(int32_t));
    if (p[0] != NULL) {
        scr->sym = p[0];
    }
    p[1] = realloc(scr->next, n * sizeof(int32_t));
    if (p[1] != NULL) {
        scr->next = p[1];
    }
    p[2] = realloc(scr->prev, n * sizeof(int32_t));
    if (p[2] != NULL) {
        scr->prev = p[2];
    }
    /* a pair pushed per merge on either side plus the first round: 3n */
    p[3] = realloc(scr->heap, 3 * n * sizeof(uint64_t));
    if (p[3] != NULL) {
        scr->heap = p[3];
    }

    if (p[0] == NULL || p[1] == NULL || p[2] == NULL || p[3] == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "tokenizer: out of memory");
    }

    scr->cap = n;
    return KIMI_OK;
}


void
kimi_hf_scratch_free(kimi_hf_scratch_t *scr)
{
    free(scr->sym);
    free(scr->next);
    free(scr->prev);
    free(scr->heap);
    free(scr->norm);
    free(scr->a.v);
    free(scr->b.v);
    free(scr->items.v);
    if (scr->md != NULL) {
        pcre2_match_data_free(scr->md);
    }
    memset(scr, 0, sizeof(*scr));
}


/* ---- the pipeline ------------------------------------------------------------------ */

/* SentencePiece-style text: U+2581 read as a space (the normalizer makes
 * spaces and U+2581 one), a space before it as prepend says, Metaspace's
 * split cutting before each space; each piece through the BPE. */
static int
kimi_hf_encode_chars(const kimi_tokenizer_t *tok, kimi_hf_scratch_t *scr,
    const uint8_t *s, size_t len, int first, kimi_hf_emit_pt emit,
    void *ctx, kimi_err_t *err)
{
    int               rc, space;
    size_t            i, n, at, k;
    uint8_t          *t;
    const kimi_hf_t  *hf = tok->hf;

    if (len > scr->norm_cap) {
        t = realloc(scr->norm, len);
        if (t == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "tokenizer: out of memory");
        }
        scr->norm = t;
        scr->norm_cap = len;
    }

    t = scr->norm;
    n = kimi_hf_spaces(s, len, t);

    space = hf->prepend == KIMI_HF_PREPEND_ALL
            || (hf->prepend == KIMI_HF_PREPEND_UNLESS_SPACE && t[0] != ' ')
            || (hf->prepend == KIMI_HF_PREPEND_FIRST && first && t[0] != ' ');

    rc = kimi_hf_reserve(scr, n + 2, err);
    if (rc != KIMI_OK) {
        return rc;
    }

    for (at = 0; at < n; at = i) {
        for (i = at + 1; hf->meta_split && i < n && t[i] != ' '; i++) {
            /* a piece runs to the next space */
        }
        i = hf->meta_split ? i : n;

        k = kimi_hf_bpe(tok, scr, t + at, i - at, at == 0 && space,
                        scr->prev);
        rc = emit(ctx, scr->prev, k);
        if (rc != KIMI_OK) {
            return rc;
        }
    }

    return KIMI_OK;
}


int
kimi_hf_encode(const kimi_tokenizer_t *tok, kimi_hf_scratch_t *scr,
    const uint8_t *s, size_t len, int first, kimi_hf_emit_pt emit, void *ctx,
    kimi_err_t *err)
{
    int                rc;
    size_t             i, k, n;
    kimi_hf_pieces_t  *cur, *nxt, *tmp;
    const kimi_hf_t   *hf = tok->hf;
    const kimi_hf_step_t  *st;

    if (len == 0) {
        return KIMI_OK;
    }

    if (len > UINT32_MAX / 2) {
        return kimi_err_set(err, KIMI_EINVAL, "tokenizer: text of %zu bytes "
                            "is too long", len);
    }

    if (hf->chars) {
        return kimi_hf_encode_chars(tok, scr, s, len, first, emit, ctx, err);
    }

    if (scr->md == NULL) {
        scr->md = pcre2_match_data_create(1, NULL);
        if (scr->md == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "tokenizer: out of memory");
        }
    }

    cur = &scr->a;
    nxt = &scr->b;
    cur->n = 0;
    rc = kimi_hf_push(cur, 0, (uint32_t) len, 0, err);
    if (rc != KIMI_OK) {
        return rc;
    }

    for (k = 0; k < hf->n_steps; k++) {
        st = &hf->steps[k];

        if (st->prefix_space) {
            /* ByteLevel's add_prefix_space: every piece so far */
            for (i = 0; i < cur->n; i++) {
                if (cur->v[i].space == 0 && s[cur->v[i].off] != ' ') {
                    cur->v[i].space = 1;
                }
            }
        }

        if (st->re == NULL) {
            continue;
        }

        nxt->n = 0;
        for (i = 0; i < cur->n; i++) {
            /* (a prefix space comes only from the last step, at load) */
            rc = kimi_hf_find(st, scr->md, s, &cur->v[i], &scr->items, err);
            if (rc == KIMI_OK) {
                rc = kimi_hf_behave(st->behavior, &cur->v[i], &scr->items,
                                    nxt, err);
            }
            if (rc != KIMI_OK) {
                return rc;
            }
        }

        tmp = cur;
        cur = nxt;
        nxt = tmp;
    }

    for (i = 0; i < cur->n; i++) {
        rc = kimi_hf_reserve(scr, (size_t) cur->v[i].len + 2, err);
        if (rc != KIMI_OK) {
            return rc;
        }

        n = kimi_hf_bpe(tok, scr, s + cur->v[i].off, cur->v[i].len,
                        cur->v[i].space, scr->prev + 0);
        /* prev is free once the merges are done: the ids go out from it */
        rc = emit(ctx, scr->prev, n);
        if (rc != KIMI_OK) {
            return rc;
        }
    }

    return KIMI_OK;
}
