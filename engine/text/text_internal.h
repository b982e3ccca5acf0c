/*
 * Private layout of the tokenizer, shared by the files of engine/text/.
 *
 * Owns:   struct kimi_tokenizer and the helpers its files call each other
 *         through (pre-tokenizer, special-token table, UTF-8 checks).
 * Never:  included outside engine/text/ (kimi_text.h is the public API).
 * Holds:  a loaded tokenizer is never written after kimi_tokenizer_load()
 *         returns, so any number of threads may encode with it at once.
 */

#ifndef KIMI_TEXT_INTERNAL_H
#define KIMI_TEXT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <jansson.h>

#include "kimi_text.h"

#define KIMI_TOK_N_SPECIAL      256       /* slots after the last rank */
#define KIMI_TOK_MAX_TOKEN      256       /* longest token in bytes */

/* ---- pre-tokenizer (pretokenize.c) ---------------------------------------- */

typedef struct {
    pcre2_code  *re;
    int          has_jit;
    int          no_fast;     /* tests only: PCRE2 for every piece */
} kimi_pretok_t;

/* One piece of text; returns 0 or a KIMI_E* code that stops the split. */
typedef int (*kimi_piece_pt)(void *ctx, const uint8_t *p, size_t n);

int  kimi_pretok_init(kimi_pretok_t *pt, kimi_err_t *err);
void kimi_pretok_free(kimi_pretok_t *pt);

/* Splits valid UTF-8 text into pieces with Kimi's pat_str, after the
 * same chunking as the reference encode() (chunks of at most 400,000
 * code points, runs of at most 25,000 space/non-space code points). */
/* Per-call PCRE2 state, made on first need; zero it before the first
 * split and free it after the last. */
typedef struct {
    pcre2_match_data     *md;
    pcre2_match_context  *mc;
    pcre2_jit_stack      *js;
} kimi_pretok_scratch_t;

int  kimi_pretok_split(const kimi_pretok_t *pt, kimi_pretok_scratch_t *scr,
    const uint8_t *text, size_t len, kimi_piece_pt cb, void *ctx,
    kimi_err_t *err);
void kimi_pretok_scratch_free(kimi_pretok_scratch_t *scr);

/* ---- special tokens (special.c) -------------------------------------------- */

/* Added tokens: names found in text before BPE (kimi_tokenize's
 * allow_special), each with its id.  Kimi's are the 256 ids after the last
 * rank; a tokenizer.json's lie anywhere (DeepSeek's: 0..2 and 128000..). */
typedef struct {
    char      **name;            /* [n] malloc'ed, NUL-terminated */
    uint16_t   *name_len;
    int32_t    *id;
    uint8_t    *is_special;      /* skipped by skip_special */
    uint8_t    *strip;           /* 1: lstrip, 2: rstrip (tokenizer.json) */
    uint32_t    n, cap;
    int32_t     id_lo, id_hi;    /* every entry's id is in [id_lo, id_hi) */
    int32_t    *entry_of;        /* [id_hi - id_lo]: entry or -1 */
    uint32_t   *table;           /* name hash: entry + 1 */
    uint32_t    mask;
    int32_t     bos, eos, unk, pad;
    uint8_t     first_byte[256]; /* a name starts with this byte */
    uint16_t   *lens;            /* distinct name lengths, longest first */
    uint32_t    n_lens;
} kimi_specials_t;

#define KIMI_SPECIAL_LSTRIP  1
#define KIMI_SPECIAL_RSTRIP  2

/* Kimi's: added_tokens_decoder of tokenizer_config.json over the 256 ids
 * from first_id, the others named <|reserved_token_ID|>. */
int  kimi_specials_load(kimi_specials_t *sp, uint32_t first_id,
    const char *config_path, kimi_err_t *err);
/* One more entry (a copy of name); kimi_specials_index() once after the
 * last. */
int  kimi_specials_add(kimi_specials_t *sp, const char *name, size_t len,
    int32_t id, int special, int strip, const char *path, kimi_err_t *err);
int  kimi_specials_index(kimi_specials_t *sp, const char *path,
    kimi_err_t *err);
/* bos/eos/unk/pad_token and additional_special_tokens of a loaded
 * tokenizer_config.json: their ids, and each joins the skip set. */
int  kimi_specials_config(kimi_specials_t *sp, json_t *root,
    const char *path, kimi_err_t *err);
void kimi_specials_free(kimi_specials_t *sp);
int32_t kimi_specials_find(const kimi_specials_t *sp, const char *s,
    size_t n);
/* The entry of an id, or -1. */
int32_t kimi_specials_entry(const kimi_specials_t *sp, int32_t id);

/* Leftmost special-token name in text[0..len) at or after 0: returns its
 * offset and sets *id and *n, or returns len when there is none. */
size_t kimi_specials_next(const kimi_specials_t *sp, const uint8_t *text,
    size_t len, int32_t *id, size_t *n);

/* ---- the tokenizer ---------------------------------------------------------- */

/* ---- tokenizer.json (hf_tokenizer.c) ------------------------------------------ */

typedef struct kimi_hf kimi_hf_t;

typedef struct {
    uint32_t  off, len;
    uint8_t   space;        /* ByteLevel's prefix space goes before it */
} kimi_hf_piece_t;

typedef struct {
    kimi_hf_piece_t  *v;
    size_t            n, cap;
} kimi_hf_pieces_t;

/* Per-call state of kimi_hf_encode, grown on demand; zero it before the
 * first call and free it after the last. */
typedef struct {
    int32_t            *sym, *next, *prev;
    uint64_t           *heap;
    size_t              cap;
    kimi_hf_pieces_t    a, b, items;
    pcre2_match_data   *md;
    uint8_t            *norm;       /* SentencePiece-style: the text, U+2581 */
    size_t              norm_cap;   /* as spaces */
} kimi_hf_scratch_t;

typedef int (*kimi_hf_emit_pt)(void *ctx, const int32_t *ids, size_t n);

/* tokenizer.json at path (and tokenizer_config.json at config_path, if
 * there) into tok: blob/off for every id, the byte-level lookup, added
 * tokens in tok->sp, tok->hf. */
int  kimi_hf_load(kimi_tokenizer_t *tok, const char *path,
    const char *config_path, kimi_err_t *err);
void kimi_hf_free(kimi_hf_t *hf);
/* Text with no added token in it: pre-tokenized and merged, the ids of
 * each piece to emit; first: the text starts the input (Metaspace's
 * prepend_scheme "first"). */
int  kimi_hf_encode(const kimi_tokenizer_t *tok, kimi_hf_scratch_t *scr,
    const uint8_t *s, size_t len, int first, kimi_hf_emit_pt emit,
    void *ctx, kimi_err_t *err);
/* SentencePiece-style: id is a <0xXX> byte token; _byte_runs: the
 * decoder has ByteFallback (runs of them decode as tokenizers does). */
int  kimi_hf_is_byte_token(const kimi_hf_t *hf, int32_t id);
int  kimi_hf_byte_runs(const kimi_tokenizer_t *tok);
void kimi_hf_scratch_free(kimi_hf_scratch_t *scr);

/* ---- the tokenizer ---------------------------------------------------------- */

struct kimi_tokenizer {
    uint8_t         *blob;        /* token bytes of every rank, packed */
    uint32_t        *off;         /* rank r is blob[off[r] .. off[r+1]) */
    uint32_t         n_ranks;     /* mergeable ranks (163584); tokenizer.json:
                                     every id, blob holding each one's bytes */
    uint32_t         n_ids;       /* ids are 0 .. n_ids - 1 */
    uint64_t        *slots;       /* open addressing: tag << 32 | rank + 1 */
    uint32_t         mask;        /* slots has mask + 1 entries */
    uint32_t         byte_rank[256];
    kimi_specials_t  sp;
    kimi_pretok_t    pt;          /* tiktoken's pattern (hf == NULL) */
    kimi_hf_t       *hf;          /* tokenizer.json's pipeline, or NULL */
    int              add_bos;     /* tokenizer_config.json's add_bos_token */
    int              decode_strip; /* a whole decode drops a leading space:
                                     1 the text's (Strip), 2 the first
                                     token's U+2581 (Metaspace) */
};

/* Rank of a byte string, or -1. */
int32_t kimi_tok_rank(const kimi_tokenizer_t *tok, const uint8_t *p,
    size_t n);
/* A min-heap of uint64 keys (rank << 32 | position: the lowest rank,
 * leftmost on ties), for the BPE of long pieces; h holds the entries. */
void kimi_heap_push(uint64_t *h, size_t *n, uint64_t v);
uint64_t kimi_heap_pop(uint64_t *h, size_t *n);

/* Rank r's bytes (blob/off) into the lookup; KIMI_EFORMAT when another
 * rank has the same bytes. */
int kimi_tok_insert(kimi_tokenizer_t *tok, uint32_t r);

/* The value of hex digit c, or -1. */
static inline int
kimi_hex_digit(int c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* ---- UTF-8 ---------------------------------------------------------------- */

/* The character starting s[0..n) into *cp: its length (1..4), or 0 when s
 * does not start with a whole valid one (overlong, surrogate, past
 * U+10FFFF or truncated). */
size_t kimi_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);

/* Length of the valid UTF-8 prefix of s (== n when all of it is valid). */
size_t kimi_utf8_valid_prefix(const uint8_t *s, size_t n);

/* Decodes s with U+FFFD for every maximal invalid subpart (what Python's
 * bytes.decode("utf-8", "replace") does) into out, which must hold 3 * n
 * bytes.  When hold is set, a valid but incomplete sequence at the very
 * end is not decoded: *held gets its length.  Returns bytes written. */
size_t kimi_utf8_repair(const uint8_t *s, size_t n, uint8_t *out, int hold,
    size_t *held);

#endif
