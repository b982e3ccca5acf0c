/*
 * The step channel of a tensor- or pipeline-parallel rank: each forward's
 * batch from the leader (group rank 0, which the scheduler drives) to its
 * followers, or the stop message, through the rank's group (group.h).
 *
 * Owns:   the message layout: kind, n_seqs, then per sequence seq_id (two
 *         words), n_tokens, pos, n_blocks, want_logits, then its tokens
 *         and block ids, all 32-bit words.
 * Never:  decides what a step holds (the leader's scheduler does) or runs
 *         it (the backends: cpu/lead.c, cuda/backend.c).
 */

#ifndef KIMI_STEP_H
#define KIMI_STEP_H

#include <stdint.h>

#include "../backend/backend.h"
#include "../common/kimi_err.h"
#include "group.h"

#define KIMI_STEP_RUN   1u
#define KIMI_STEP_STOP  2u

/* A follower's sequence headers, grown as needed. */
typedef struct {
    kimi_batch_seq_t  *seqs;
    uint32_t           cap;
} kimi_step_buf_t;

/* Leader: one message, the same for every follower; a step too big for
 * the exchange fails the group with why. */
int  kimi_step_send(kimi_group_t *g, uint64_t tag, uint32_t kind,
    const kimi_batch_t *batch, kimi_err_t *err);

/* Follower: the leader's step (*stop set by a stop message).  batch
 * points into the group's buffer and buf: valid until the sync after
 * next. */
int  kimi_step_recv(kimi_group_t *g, uint64_t tag, kimi_step_buf_t *buf,
    kimi_batch_t *batch, int *stop, kimi_err_t *err);

void kimi_step_buf_free(kimi_step_buf_t *buf);

#endif
