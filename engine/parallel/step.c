/*
 * The step channel of a tensor- or pipeline-parallel rank (contract and
 * message layout in step.h).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "step.h"


int
kimi_step_send(kimi_group_t *g, uint64_t tag, uint32_t kind,
    const kimi_batch_t *batch, kimi_err_t *err)
{
    uint32_t   W = kimi_group_world(g);
    size_t     bytes[KIMI_GROUP_MAX_RANKS], cap, n = 0;
    uint32_t  *out;

    cap = kimi_group_seg_bytes(g) / 4;
    out = kimi_group_sendbuf(g, 1 % W);

#define KIMI_PUT(v)  do { if (n < cap) out[n] = (uint32_t) (v); n++; } while (0)

    KIMI_PUT(kind);
    KIMI_PUT(batch ? batch->n_seqs : 0);

    for (uint32_t i = 0; batch && i < batch->n_seqs; i++) {
        const kimi_batch_seq_t  *s = &batch->seqs[i];

        KIMI_PUT(s->seq_id);
        KIMI_PUT(s->seq_id >> 32);
        KIMI_PUT(s->n_tokens);
        KIMI_PUT(s->pos);
        KIMI_PUT(s->n_blocks);
        KIMI_PUT(s->want_logits);
        for (uint32_t k = 0; k < s->n_tokens; k++) {
            KIMI_PUT(s->tokens[k]);
        }
        for (uint32_t k = 0; k < s->n_blocks; k++) {
            KIMI_PUT(s->block_table[k]);
        }
    }
#undef KIMI_PUT

    /* one message, the same for every follower */
    for (uint32_t p = 0; p < W; p++) {
        bytes[p] = 0;
        if (p != 0 && n <= cap) {
            if (p != 1) {
                memcpy(kimi_group_sendbuf(g, p), out, n * 4);
            }
            bytes[p] = n * 4;
        }
    }

    if (n > cap) {
        char  why[160];

        snprintf(why, sizeof(why), "a step of %u sequences needs %zu bytes,"
                 " more than the %zu of the exchange", batch->n_seqs, n * 4,
                 cap * 4);
        kimi_group_abort(g, why);
    }

    return kimi_group_exchange(g, tag, bytes, err);
}


int
kimi_step_recv(kimi_group_t *g, uint64_t tag, kimi_step_buf_t *buf,
    kimi_batch_t *batch, int *stop, kimi_err_t *err)
{
    size_t           bytes[KIMI_GROUP_MAX_RANKS] = { 0 }, len, n, at = 2;
    const uint32_t  *in;
    int              rc;

    if ((rc = kimi_group_exchange(g, tag, bytes, err))
        != 0)
    {
        return rc;
    }

    in = kimi_group_recvbuf(g, 0, &len);
    n = len / 4;

    if (n < 2) {
        return kimi_err_set(err, KIMI_EFORMAT, "tensor parallel: a step"
                            " message of %zu bytes", len);
    }

    *stop = in[0] == KIMI_STEP_STOP;
    batch->n_seqs = in[1];
    batch->seqs = NULL;

    if (*stop) {
        return 0;
    }

    if (in[1] > buf->cap) {
        kimi_batch_seq_t  *ns = realloc(buf->seqs, in[1] * sizeof(*ns));

        if (ns == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "tensor parallel: seqs");
        }
        buf->seqs = ns;
        buf->cap = in[1];
    }

    for (uint32_t i = 0; i < in[1]; i++) {
        kimi_batch_seq_t  *s = &buf->seqs[i];

        if (at + 6 > n) {
            return kimi_err_set(err, KIMI_EFORMAT, "tensor parallel: a"
                                " truncated step message");
        }

        memset(s, 0, sizeof(*s));
        s->seq_id = (uint64_t) in[at] | ((uint64_t) in[at + 1] << 32);
        s->n_tokens = in[at + 2];
        s->pos = in[at + 3];
        s->n_blocks = in[at + 4];
        s->want_logits = (uint8_t) in[at + 5];
        at += 6;

        if (at + (size_t) s->n_tokens + s->n_blocks > n) {
            return kimi_err_set(err, KIMI_EFORMAT, "tensor parallel: a"
                                " truncated step message");
        }

        /* the message stays put until the sync after next: the forward's
         * first all-reduce is the next one */
        s->tokens = (const int32_t *) in + at;
        at += s->n_tokens;
        s->block_table = in + at;
        at += s->n_blocks;
    }

    batch->seqs = buf->seqs;
    return 0;
}


void
kimi_step_buf_free(kimi_step_buf_t *buf)
{
    free(buf->seqs);
    buf->seqs = NULL;
    buf->cap = 0;
}
