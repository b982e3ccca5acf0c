/*
 * Kimi's tokenizer: tiktoken.model loading and byte-level BPE.
 *
 * Owns:   the rank table (bytes -> rank, rank -> bytes), the BPE merge of
 *         one pre-tokenized piece, and kimi_tokenize().
 * Never:  decodes (detok.c), matches the pattern (pretokenize.c) or parses
 *         special-token names (special.c).
 * Holds:  ranks are 0..n_ranks-1 without gaps and every single byte has a
 *         rank (checked at load), so any piece can be encoded; specials are
 *         n_ranks..n_ranks+255.  Merging follows tiktoken: repeatedly join
 *         the adjacent pair whose bytes have the lowest rank, leftmost on
 *         ties, until no adjacent pair has a rank.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "text_internal.h"

/* Pieces up to this many bytes use tiktoken's quadratic scan, which wins
 * on the short pieces of real text; longer ones use a heap (O(n log n)),
 * so a 25,000-letter run costs milliseconds, not seconds. */
#define KIMI_BPE_LINEAR_MAX   128

#define KIMI_RANK_NONE        UINT32_MAX


/* ---- the rank table ------------------------------------------------------- */

static inline uint64_t
kimi_tok_hash(const uint8_t *p, size_t n)
{
    uint64_t  h, w;

    h = (uint64_t) n * 0x9e3779b97f4a7c15ull;

    while (n >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }

    if (n > 0) {
        w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    }

    return h ^ (h >> 29);
}


/* Slots hold (hash tag << 32) | (rank + 1): the tag rejects most misses
 * without touching the token bytes. */
static inline uint32_t
kimi_tok_lookup(const kimi_tokenizer_t *tok, const uint8_t *p, size_t n)
{
    uint64_t  h, v;
    uint32_t  slot, tag, r;
    uint64_t *slots = tok->slots;

    h = kimi_tok_hash(p, n);
    tag = (uint32_t) (h >> 32);

    for (slot = (uint32_t) h & tok->mask; ; slot = (slot + 1) & tok->mask) {
        v = slots[slot];
        if (v == 0) {
            return KIMI_RANK_NONE;
        }

        if ((uint32_t) (v >> 32) == tag) {
            r = (uint32_t) v - 1;
            if (tok->off[r + 1] - tok->off[r] == n
                && memcmp(tok->blob + tok->off[r], p, n) == 0)
            {
                return r;
            }
        }
    }
}


int32_t
kimi_tok_rank(const kimi_tokenizer_t *tok, const uint8_t *p, size_t n)
{
    uint32_t  r = kimi_tok_lookup(tok, p, n);

    return r == KIMI_RANK_NONE ? -1 : (int32_t) r;
}


int
kimi_tok_insert(kimi_tokenizer_t *tok, uint32_t r)
{
    uint64_t  h;
    uint32_t  slot;
    uint64_t *slots = tok->slots;
    size_t    n = tok->off[r + 1] - tok->off[r];

    if (kimi_tok_lookup(tok, tok->blob + tok->off[r], n) != KIMI_RANK_NONE) {
        return KIMI_EFORMAT;
    }

    h = kimi_tok_hash(tok->blob + tok->off[r], n);

    for (slot = (uint32_t) h & tok->mask; slots[slot] != 0;
         slot = (slot + 1) & tok->mask)
    {
        /* linear probing */
    }

    slots[slot] = ((h >> 32) << 32) | (uint64_t) (r + 1);
    return KIMI_OK;
}


static int
kimi_b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}


/* Standard base64 with padding; returns decoded length or -1. */
static long
kimi_b64_decode(const uint8_t *s, size_t n, uint8_t *out, size_t cap)
{
    int       v, bits;
    size_t    i, o;
    uint32_t  acc;

    while (n > 0 && s[n - 1] == '=') {
        n--;
    }

    acc = 0;
    bits = 0;
    o = 0;

    for (i = 0; i < n; i++) {
        v = kimi_b64_value(s[i]);
        if (v < 0) {
            return -1;
        }

        acc = (acc << 6) | (uint32_t) v;
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            if (o == cap) {
                return -1;
            }
            out[o++] = (uint8_t) (acc >> bits);
        }
    }

    return (long) o;
}


static int
kimi_tok_read_file(const char *path, uint8_t **data, size_t *len,
    kimi_err_t *err)
{
    FILE    *f;
    long     size;
    uint8_t *buf;

    f = fopen(path, "rb");
    if (f == NULL) {
        return kimi_err_set(err, KIMI_EIO, "%s: %s", path, strerror(errno));
    }

    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) != 0)
    {
        fclose(f);
        return kimi_err_set(err, KIMI_EIO, "%s: cannot size: %s", path,
                            strerror(errno));
    }

    buf = malloc((size_t) size + 1);
    if (buf == NULL) {
        fclose(f);
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    if (fread(buf, 1, (size_t) size, f) != (size_t) size) {
        free(buf);
        fclose(f);
        return kimi_err_set(err, KIMI_EIO, "%s: short read", path);
    }

    fclose(f);
    buf[size] = '\0';
    *data = buf;
    *len = (size_t) size;
    return KIMI_OK;
}


/* tiktoken.model: one "<base64 bytes> <rank>" per line, ranks 0..N-1. */
static int
kimi_tok_load_ranks(kimi_tokenizer_t *tok, const char *path, kimi_err_t *err)
{
    int       rc;
    long      k;
    char     *end;
    size_t    len = 0, i, line, n_lines, cap_blob, used, b64_len;
    uint8_t  *data = NULL, *p, *eol, *sp;
    uint32_t  r;
    unsigned long  rank;

    rc = kimi_tok_read_file(path, &data, &len, err);
    if (rc != KIMI_OK) {
        return rc;
    }

    n_lines = 0;
    for (i = 0; i < len; i++) {
        n_lines += data[i] == '\n';
    }
    if (len > 0 && data[len - 1] != '\n') {
        n_lines++;
    }

    if (n_lines < 256 || n_lines > (1u << 24)) {
        rc = kimi_err_set(err, KIMI_EFORMAT, "%s: %zu ranks, expected "
                          "256..16777216", path, n_lines);
        goto failed;
    }

    /* base64 is 4/3 of the bytes, so the blob never exceeds the file */
    cap_blob = len + 1;
    tok->blob = malloc(cap_blob);
    tok->off = malloc((n_lines + 1) * sizeof(uint32_t));
    if (tok->blob == NULL || tok->off == NULL) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
        goto failed;
    }

    p = data;
    used = 0;
    line = 0;

    while (p < data + len) {
        eol = memchr(p, '\n', (size_t) (data + len - p));
        if (eol == NULL) {
            eol = data + len;
        }

        if (eol == p) {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s:%zu: empty line", path,
                              line + 1);
            goto failed;
        }

        sp = memchr(p, ' ', (size_t) (eol - p));
        if (sp == NULL) {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s:%zu: expected "
                              "\"<base64> <rank>\"", path, line + 1);
            goto failed;
        }

        errno = 0;
        rank = strtoul((char *) sp + 1, &end, 10);
        if (errno != 0 || (uint8_t *) end != eol || rank != line) {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s:%zu: rank must be %zu "
                              "(ranks are 0..N-1 in order)", path, line + 1,
                              line);
            goto failed;
        }

        b64_len = (size_t) (sp - p);
        tok->off[line] = (uint32_t) used;
        k = kimi_b64_decode(p, b64_len, tok->blob + used, cap_blob - used);
        if (k <= 0 || k > KIMI_TOK_MAX_TOKEN) {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s:%zu: bad base64 or a "
                              "token of 0 or more than %d bytes", path,
                              line + 1, KIMI_TOK_MAX_TOKEN);
            goto failed;
        }

        used += (size_t) k;
        line++;
        p = eol + 1;
    }

    tok->n_ranks = (uint32_t) line;
    tok->off[line] = (uint32_t) used;

    /* a power of two at least 3x the entries keeps probe chains short */
    tok->mask = 1;
    while (tok->mask < 3 * tok->n_ranks) {
        tok->mask <<= 1;
    }

    tok->slots = calloc(tok->mask, sizeof(uint64_t));
    tok->mask -= 1;
    if (tok->slots == NULL) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
        goto failed;
    }

    for (r = 0; r < tok->n_ranks; r++) {
        if (kimi_tok_insert(tok, r) != KIMI_OK) {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s:%u: token bytes "
                              "repeat an earlier rank", path, r + 1);
            goto failed;
        }
    }

    for (i = 0; i < 256; i++) {
        uint8_t  b = (uint8_t) i;

        r = kimi_tok_lookup(tok, &b, 1);
        if (r == KIMI_RANK_NONE) {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s: byte 0x%02zx has no "
                              "rank, so some text cannot be encoded", path,
                              i);
            goto failed;
        }
        tok->byte_rank[i] = r;
    }

    free(data);
    return KIMI_OK;

failed:

    free(data);
    return rc;
}


int
kimi_tokenizer_load(kimi_tokenizer_t **out, const char *model_dir,
    kimi_err_t *err)
{
    int                rc;
    char               path[4096];
    kimi_tokenizer_t  *tok;

    *out = NULL;

    tok = calloc(1, sizeof(*tok));
    if (tok == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "tokenizer: out of memory");
    }

    snprintf(path, sizeof(path), "%s/tiktoken.model", model_dir);
    if (access(path, F_OK) != 0) {
        /* a Hugging Face tokenizer.json (DeepSeek-V3's kind) */
        snprintf(path, sizeof(path), "%s/tokenizer.json", model_dir);
        if (access(path, F_OK) == 0) {
            char  cfg[4096];

            snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", model_dir);
            rc = kimi_hf_load(tok, path, cfg, err);
            if (rc != KIMI_OK) {
                goto failed;
            }
            *out = tok;
            return KIMI_OK;
        }
        snprintf(path, sizeof(path), "%s/tiktoken.model", model_dir);
    }
    rc = kimi_tok_load_ranks(tok, path, err);
    if (rc != KIMI_OK) {
        goto failed;
    }
    tok->n_ids = tok->n_ranks + KIMI_TOK_N_SPECIAL;

    snprintf(path, sizeof(path), "%s/tokenizer_config.json", model_dir);
    rc = kimi_specials_load(&tok->sp, tok->n_ranks, path, err);
    if (rc != KIMI_OK) {
        goto failed;
    }

    rc = kimi_pretok_init(&tok->pt, err);
    if (rc != KIMI_OK) {
        goto failed;
    }

    *out = tok;
    return KIMI_OK;

failed:

    kimi_tokenizer_free(tok);
    return rc;
}


void
kimi_tokenizer_free(kimi_tokenizer_t *tok)
{
    if (tok == NULL) {
        return;
    }

    kimi_pretok_free(&tok->pt);
    kimi_hf_free(tok->hf);
    kimi_specials_free(&tok->sp);
    free(tok->slots);
    free(tok->off);
    free(tok->blob);
    free(tok);
}


uint32_t
kimi_tokenizer_n_vocab(const kimi_tokenizer_t *tok)
{
    return tok->n_ids;
}


int32_t
kimi_tokenizer_bos(const kimi_tokenizer_t *tok)
{
    return tok->sp.bos;
}


int32_t
kimi_tokenizer_eos(const kimi_tokenizer_t *tok)
{
    return tok->sp.eos;
}


int32_t
kimi_tokenizer_prompt_prefix(const kimi_tokenizer_t *tok)
{
    return tok->add_bos ? tok->sp.bos : -1;
}


int32_t
kimi_tokenizer_special_id(const kimi_tokenizer_t *tok, const char *text)
{
    return kimi_specials_find(&tok->sp, text, strlen(text));
}


int
kimi_tokenizer_is_special(const kimi_tokenizer_t *tok, int32_t id)
{
    int32_t  e = kimi_specials_entry(&tok->sp, id);

    return e >= 0 && tok->sp.is_special[e];
}


int
kimi_tokenizer_is_added(const kimi_tokenizer_t *tok, int32_t id)
{
    return kimi_specials_entry(&tok->sp, id) >= 0;
}


const char *
kimi_token_bytes(const kimi_tokenizer_t *tok, int32_t id, size_t *len)
{
    int32_t  e;

    if (id < 0 || (uint32_t) id >= tok->n_ids) {
        return NULL;
    }

    /* tiktoken: ranks, then the names of the specials after them;
     * tokenizer.json: every id's bytes in blob (none: empty) */
    if ((uint32_t) id < tok->n_ranks) {
        *len = tok->off[id + 1] - tok->off[id];
        return (const char *) tok->blob + tok->off[id];
    }

    e = kimi_specials_entry(&tok->sp, id);
    if (e < 0) {
        return NULL;
    }

    *len = tok->sp.name_len[e];
    return tok->sp.name[e];
}


/* ---- BPE -------------------------------------------------------------------- */

typedef struct {
    int32_t   *ids;
    size_t     n;
    size_t     cap;
    const kimi_tokenizer_t  *tok;
    kimi_err_t *err;
    /* scratch for long pieces, grown on demand */
    void      *scratch;
    size_t     scratch_cap;       /* bytes */
} kimi_enc_t;


static int
kimi_enc_reserve(kimi_enc_t *e, size_t more)
{
    size_t    cap;
    int32_t  *ids;

    if (e->n + more <= e->cap) {
        return KIMI_OK;
    }

    cap = e->cap ? e->cap : 64;
    while (cap < e->n + more) {
        cap *= 2;
    }

    ids = realloc(e->ids, cap * sizeof(int32_t));
    if (ids == NULL) {
        return kimi_err_set(e->err, KIMI_ENOMEM, "tokenize: out of memory");
    }

    e->ids = ids;
    e->cap = cap;
    return KIMI_OK;
}


/* tiktoken's _byte_pair_merge: parts[i] starts a token; rank[i] is the
 * rank of parts[i]..parts[i+2], the pair that merging i would make. */
static void
kimi_bpe_linear(kimi_enc_t *e, const uint8_t *p, size_t n)
{
    const kimi_tokenizer_t  *tok = e->tok;
    uint32_t  start[KIMI_BPE_LINEAR_MAX + 2];
    uint32_t  rank[KIMI_BPE_LINEAR_MAX + 2];
    uint32_t  best, m, i, k;

    m = (uint32_t) n + 1;           /* parts incl. the end sentinel */
    for (i = 0; i < m; i++) {
        start[i] = i;
    }

    for (i = 0; i + 2 < m; i++) {
        rank[i] = kimi_tok_lookup(tok, p + i, 2);
    }
    rank[m - 2] = KIMI_RANK_NONE;
    rank[m - 1] = KIMI_RANK_NONE;

    for ( ;; ) {
        best = KIMI_RANK_NONE;
        k = 0;
        for (i = 0; i + 1 < m; i++) {
            if (rank[i] < best) {
                best = rank[i];
                k = i;
            }
        }

        if (best == KIMI_RANK_NONE) {
            break;
        }

        /* merge parts k and k+1, then refresh the two affected pairs */
        memmove(start + k + 1, start + k + 2, (m - k - 2) * sizeof(uint32_t));
        memmove(rank + k + 1, rank + k + 2, (m - k - 2) * sizeof(uint32_t));
        m--;

        rank[k] = (k + 2 < m)
                  ? kimi_tok_lookup(tok, p + start[k], start[k + 2] - start[k])
                  : KIMI_RANK_NONE;
        if (k > 0) {
            rank[k - 1] = kimi_tok_lookup(tok, p + start[k - 1],
                                          start[k + 1] - start[k - 1]);
        }
    }

    for (i = 0; i + 1 < m; i++) {
        e->ids[e->n++] = (int32_t) kimi_tok_lookup(tok, p + start[i],
                                                   start[i + 1] - start[i]);
    }
}


/* Min-heap of (rank << 32 | start): the lowest rank, leftmost on ties. */
void
kimi_heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t  i = (*n)++;

    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}


uint64_t
kimi_heap_pop(uint64_t *h, size_t *n)
{
    uint64_t  top = h[0], v;
    size_t    i, c;

    v = h[--(*n)];
    i = 0;

    for ( ;; ) {
        c = 2 * i + 1;
        if (c >= *n) {
            break;
        }
        if (c + 1 < *n && h[c + 1] < h[c]) {
            c++;
        }
        if (h[c] >= v) {
            break;
        }
        h[i] = h[c];
        i = c;
    }

    if (*n > 0) {
        h[i] = v;
    }

    return top;
}


/* The same merge order as kimi_bpe_linear() in O(n log n): a linked list
 * of parts and a heap of candidate pairs, stale entries skipped. */
static int
kimi_bpe_heap(kimi_enc_t *e, const uint8_t *p, size_t n)
{
    const kimi_tokenizer_t  *tok = e->tok;
    uint32_t  *next, *prev, *pair, i, j, r;
    uint64_t  *heap, top;
    size_t     nh, need;

    /* next, prev, pair: n words each; heap: at most 3n pushes */
    need = 3 * n * sizeof(uint32_t) + 3 * n * sizeof(uint64_t);
    if (need > e->scratch_cap) {
        void  *s = realloc(e->scratch, need);

        if (s == NULL) {
            return kimi_err_set(e->err, KIMI_ENOMEM,
                                "tokenize: out of memory");
        }
        e->scratch = s;
        e->scratch_cap = need;
    }

    heap = e->scratch;              /* first, so it is 8-byte aligned */
    next = (uint32_t *) (heap + 3 * n);
    prev = next + n;
    pair = prev + n;
    nh = 0;

    for (i = 0; i < n; i++) {
        next[i] = i + 1;            /* n = end */
        prev[i] = i - 1;            /* UINT32_MAX for the first */
        pair[i] = (i + 1 < n) ? kimi_tok_lookup(tok, p + i, 2)
                              : KIMI_RANK_NONE;
        if (pair[i] != KIMI_RANK_NONE) {
            kimi_heap_push(heap, &nh, ((uint64_t) pair[i] << 32) | i);
        }
    }

    while (nh > 0) {
        top = kimi_heap_pop(heap, &nh);
        r = (uint32_t) (top >> 32);
        i = (uint32_t) top;

        /* stale: i was absorbed (pair reset) or its pair changed */
        if (pair[i] != r) {
            continue;
        }

        j = next[i];                /* absorbed into i */
        next[i] = next[j];
        if (next[j] < n) {
            prev[next[j]] = i;
        }
        pair[j] = KIMI_RANK_NONE;

        j = next[i];
        pair[i] = (j < n) ? kimi_tok_lookup(tok, p + i, next[j] - i)
                          : KIMI_RANK_NONE;
        if (pair[i] != KIMI_RANK_NONE) {
            kimi_heap_push(heap, &nh, ((uint64_t) pair[i] << 32) | i);
        }

        if (prev[i] != UINT32_MAX) {
            j = prev[i];
            pair[j] = kimi_tok_lookup(tok, p + j, next[i] - j);
            if (pair[j] != KIMI_RANK_NONE) {
                kimi_heap_push(heap, &nh, ((uint64_t) pair[j] << 32) | j);
            }
        }
    }

    for (i = 0; i < n; i = next[i]) {
        e->ids[e->n++] = (int32_t) kimi_tok_lookup(tok, p + i, next[i] - i);
    }

    return KIMI_OK;
}


static int
kimi_enc_piece(void *ctx, const uint8_t *p, size_t n)
{
    int          rc;
    uint32_t     r;
    kimi_enc_t  *e = ctx;

    rc = kimi_enc_reserve(e, n);
    if (rc != KIMI_OK) {
        return rc;
    }

    if (n == 1) {
        e->ids[e->n++] = (int32_t) e->tok->byte_rank[p[0]];
        return KIMI_OK;
    }

    if (n <= KIMI_TOK_MAX_TOKEN) {
        r = kimi_tok_lookup(e->tok, p, n);
        if (r != KIMI_RANK_NONE) {
            e->ids[e->n++] = (int32_t) r;
            return KIMI_OK;
        }
    }

    if (n <= KIMI_BPE_LINEAR_MAX) {
        kimi_bpe_linear(e, p, n);
        return KIMI_OK;
    }

    return kimi_bpe_heap(e, p, n);
}


static int
kimi_enc_ids(void *ctx, const int32_t *ids, size_t n)
{
    int          rc;
    kimi_enc_t  *e = ctx;

    rc = kimi_enc_reserve(e, n);
    if (rc != KIMI_OK) {
        return rc;
    }

    memcpy(e->ids + e->n, ids, n * sizeof(*ids));
    e->n += n;
    return KIMI_OK;
}


/* Rust's char::is_whitespace (Unicode White_Space): what an added token's
 * lstrip / rstrip take. */
static int
kimi_is_white(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0
           || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028
           || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}


/* The start of the whitespace run that ends at end (>= from). */
static size_t
kimi_white_before(const uint8_t *s, size_t from, size_t end)
{
    size_t    i, k;
    uint32_t  c;

    while (end > from) {
        for (i = end - 1; i > from && (s[i] & 0xc0) == 0x80; i--) {
            /* back to the character's first byte */
        }
        k = kimi_utf8_decode(s + i, end - i, &c);
        if (k == 0 || !kimi_is_white(c)) {
            break;
        }
        end = i;
    }

    return end;
}


/* The end of the whitespace run that starts at at. */
static size_t
kimi_white_after(const uint8_t *s, size_t at, size_t len)
{
    size_t    k;
    uint32_t  c;

    while (at < len) {
        k = kimi_utf8_decode(s + at, len - at, &c);
        if (k == 0 || !kimi_is_white(c)) {
            break;
        }
        at += k;
    }

    return at;
}


int
kimi_tokenize(const kimi_tokenizer_t *tok, const char *text, size_t len,
    int allow_special, int32_t **ids, size_t *n_ids, kimi_err_t *err)
{
    return kimi_tokenize_ex(tok, text, len, allow_special, NULL, 0, ids,
                            n_ids, err);
}


int
kimi_tokenize_ex(const kimi_tokenizer_t *tok, const char *text, size_t len,
    int allow_special, const kimi_span_t *plain, size_t n_plain,
    int32_t **ids, size_t *n_ids, kimi_err_t *err)
{
    int                    rc;
    size_t                 at, pos, n, valid, k, seg_end, next;
    int32_t                id, entry;
    kimi_enc_t             e;
    kimi_hf_scratch_t      hscr;
    kimi_pretok_scratch_t  scr;
    const uint8_t  *s = (const uint8_t *) text;

    *ids = NULL;
    *n_ids = 0;

    valid = kimi_utf8_valid_prefix(s, len);
    if (valid != len) {
        return kimi_err_set(err, KIMI_EINVAL, "text is not valid UTF-8 at "
                            "byte %zu", valid);
    }

    memset(&e, 0, sizeof(e));
    memset(&scr, 0, sizeof(scr));
    memset(&hscr, 0, sizeof(hscr));
    e.tok = tok;
    e.err = err;

    rc = kimi_enc_reserve(&e, len / 3 + 16);
    if (rc != KIMI_OK) {
        goto failed;
    }

    at = 0;
    k = 0;

    while (at < len) {
        pos = len;

        if (allow_special) {
            size_t  from = at;

            for ( ;; ) {
                pos = from + kimi_specials_next(&tok->sp, s + from,
                                                len - from, &id, &n);
                if (pos == len) {
                    break;
                }

                /* a name inside a plain span (user data) is text */
                while (k < n_plain && plain[k].off + plain[k].len <= pos) {
                    k++;
                }
                if (k < n_plain && plain[k].off < pos + n) {
                    from = pos + 1;
                    continue;
                }

                break;
            }
        }

        /* an added token with lstrip / rstrip takes the whitespace
         * beside it (tokenizer.json's; Kimi's have neither) */
        seg_end = pos;
        next = pos + n;
        if (pos < len) {
            entry = kimi_specials_entry(&tok->sp, id);
            if (entry >= 0 && (tok->sp.strip[entry] & KIMI_SPECIAL_LSTRIP)) {
                seg_end = kimi_white_before(s, at, pos);
            }
            if (entry >= 0 && (tok->sp.strip[entry] & KIMI_SPECIAL_RSTRIP)) {
                next = kimi_white_after(s, next, len);
            }
        }

        rc = tok->hf != NULL
             ? kimi_hf_encode(tok, &hscr, s + at, seg_end - at, at == 0,
                              kimi_enc_ids, &e, err)
             : kimi_pretok_split(&tok->pt, &scr, s + at, seg_end - at,
                                 kimi_enc_piece, &e, err);
        if (rc != KIMI_OK) {
            goto failed;
        }

        if (pos == len) {
            break;
        }

        rc = kimi_enc_reserve(&e, 1);
        if (rc != KIMI_OK) {
            goto failed;
        }

        e.ids[e.n++] = id;
        at = next;
    }

    kimi_pretok_scratch_free(&scr);
    kimi_hf_scratch_free(&hscr);
    free(e.scratch);
    *ids = e.ids;
    *n_ids = e.n;
    return KIMI_OK;

failed:

    kimi_pretok_scratch_free(&scr);
    kimi_hf_scratch_free(&hscr);
    free(e.scratch);
    free(e.ids);
    return rc;
}
