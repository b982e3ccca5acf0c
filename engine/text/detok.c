/*
 * Decoding ids back to text, whole and incremental.
 *
 * Owns:   kimi_detokenize() and the streaming detokenizer.
 * Never:  allocates per token (the streaming state is fixed-size).
 * Holds:  the text a stream emits, flushed, equals kimi_detokenize() of
 *         the same ids (but for the leading space a SentencePiece-style
 *         decoder drops from a whole text: a stream continues one): invalid bytes become U+FFFD by maximal subparts at
 *         once (later bytes cannot make them valid), and only a valid but
 *         unfinished character at the end (at most 3 bytes) is held back.
 *         skip_special drops the ids Hugging Face's all_special_ids holds;
 *         tool-call markers and reserved tokens decode to their names.
 */

#include <stdlib.h>
#include <string.h>

#include "text_internal.h"

struct kimi_detok {
    const kimi_tokenizer_t  *tok;
    int                      skip_special;
    size_t                   n_held;
    uint8_t                  in[KIMI_TOK_MAX_TOKEN + 4];
    uint8_t                  out[3 * (KIMI_TOK_MAX_TOKEN + 4)];
};


static int
kimi_detok_id_ok(const kimi_tokenizer_t *tok, int32_t id)
{
    return id >= 0 && (uint32_t) id < kimi_tokenizer_n_vocab(tok);
}


/* SentencePiece-style with the ByteFallback decoder: each run of <0xXX>
 * tokens is its bytes when they are valid UTF-8, else one U+FFFD a byte,
 * as tokenizers decodes them; the other tokens are text as they are.  raw
 * is scratch of the kept tokens' bytes, out holds 3 bytes a byte. */
static size_t
kimi_detok_byte_runs(const kimi_tokenizer_t *tok, const int32_t *ids,
    size_t n_ids, int skip_special, uint8_t *raw, uint8_t *out)
{
    size_t       i, k, n, run, o;
    const char  *b;

    o = 0;
    run = 0;
    for (i = 0; i <= n_ids; i++) {
        int  byte = i < n_ids && kimi_hf_is_byte_token(tok->hf, ids[i]);

        if (i < n_ids && skip_special && kimi_tokenizer_is_special(tok, ids[i])) {
            continue;
        }
        if (byte) {
            b = kimi_token_bytes(tok, ids[i], &n);
            raw[run++] = (uint8_t) b[0];
            continue;
        }
        if (run > 0) {
            if (kimi_utf8_valid_prefix(raw, run) == run) {
                memcpy(out + o, raw, run);
                o += run;
            } else {
                for (k = 0; k < run; k++) {
                    memcpy(out + o, "\xef\xbf\xbd", 3);
                    o += 3;
                }
            }
            run = 0;
        }
        if (i < n_ids) {
            b = kimi_token_bytes(tok, ids[i], &n);
            memcpy(out + o, b, n);
            o += n;
        }
    }

    return o;
}


int
kimi_detokenize(const kimi_tokenizer_t *tok, const int32_t *ids,
    size_t n_ids, int skip_special, char **text, size_t *len,
    kimi_err_t *err)
{
    size_t       i, n, total, skip;
    uint8_t     *raw, *out;
    const char  *b;

    *text = NULL;
    *len = 0;

    total = 0;
    for (i = 0; i < n_ids; i++) {
        if (!kimi_detok_id_ok(tok, ids[i])) {
            return kimi_err_set(err, KIMI_EINVAL, "token id %ld at position "
                                "%zu is outside 0..%u", (long) ids[i], i,
                                kimi_tokenizer_n_vocab(tok) - 1);
        }

        if (skip_special && kimi_tokenizer_is_special(tok, ids[i])) {
            continue;
        }

        kimi_token_bytes(tok, ids[i], &n);
        total += n;
    }

    raw = malloc(total + 1);
    out = malloc(3 * total + 1);
    if (raw == NULL || out == NULL) {
        free(raw);
        free(out);
        return kimi_err_set(err, KIMI_ENOMEM, "detokenize: out of memory");
    }

    total = 0;
    for (i = 0; i < n_ids; i++) {
        if (skip_special && kimi_tokenizer_is_special(tok, ids[i])) {
            continue;
        }

        b = kimi_token_bytes(tok, ids[i], &n);
        memcpy(raw + total, b, n);
        total += n;
    }

    /* SentencePiece-style decoders drop the space the encoder put first:
     * Strip the text's, Metaspace the first token's (a U+2581, not a
     * <0x20> byte or an added token) */
    skip = 0;
    if (tok->decode_strip == 1 && total > 0 && raw[0] == ' ') {
        skip = 1;
    }
    for (i = 0; tok->decode_strip == 2 && i < n_ids; i++) {
        if (skip_special && kimi_tokenizer_is_special(tok, ids[i])) {
            continue;
        }
        skip = total > 0 && raw[0] == ' '
               && kimi_specials_entry(&tok->sp, ids[i]) < 0
               && !kimi_hf_is_byte_token(tok->hf, ids[i]);
        break;
    }

    if (kimi_hf_byte_runs(tok)) {
        n = kimi_detok_byte_runs(tok, ids, n_ids, skip_special, raw, out);
        if (skip && n > 0 && out[0] == ' ') {
            memmove(out, out + 1, --n);
        }
    } else {
        n = kimi_utf8_repair(raw + skip, total - skip, out, 0, NULL);
    }
    out[n] = '\0';
    free(raw);

    *text = (char *) out;
    *len = n;
    return KIMI_OK;
}


kimi_detok_t *
kimi_detok_new(const kimi_tokenizer_t *tok, int skip_special)
{
    kimi_detok_t  *d;

    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return NULL;
    }

    d->tok = tok;
    d->skip_special = skip_special;
    return d;
}


void
kimi_detok_free(kimi_detok_t *d)
{
    free(d);
}


int
kimi_detok_push(kimi_detok_t *d, int32_t id, const char **out,
    size_t *out_len)
{
    size_t       n, held, o;
    const char  *b;

    *out = (const char *) d->out;
    *out_len = 0;

    if (!kimi_detok_id_ok(d->tok, id)) {
        return KIMI_EINVAL;
    }

    if (d->skip_special && kimi_tokenizer_is_special(d->tok, id)) {
        return KIMI_OK;
    }

    b = kimi_token_bytes(d->tok, id, &n);

    /* the held bytes (still at the front of in[]) then this token */
    memcpy(d->in + d->n_held, b, n);
    n += d->n_held;

    o = kimi_utf8_repair(d->in, n, d->out, 1, &held);

    memmove(d->in, d->in + n - held, held);
    d->n_held = held;
    *out_len = o;
    return KIMI_OK;
}


int
kimi_detok_flush(kimi_detok_t *d, const char **out, size_t *out_len)
{
    size_t  o;

    o = kimi_utf8_repair(d->in, d->n_held, d->out, 0, NULL);
    d->n_held = 0;

    *out = (const char *) d->out;
    *out_len = o;
    return KIMI_OK;
}
