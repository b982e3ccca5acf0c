/*
 * A tensor- or pipeline-parallel rank of the cpu backend: a leader (group
 * rank 0, which the scheduler drives) and followers that run its steps.
 *
 * Owns:   the step channel (each forward's batch from the leader to every
 *         follower, or the stop message), the pipeline's hops of hidden
 *         rows and the return of the last stage's logits, the ready
 *         barrier and the followers' loop.
 * Never:  decides what a step holds (the leader's scheduler does) or
 *         computes layers (kimi_cpu_layers in backend_cpu.c).
 *
 * The step channel's messages: engine/parallel/step.h.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../parallel/step.h"
#include "cpu_impl.h"


int
kimi_cpu_lead_send(kimi_cpu_t *b, uint32_t kind, const kimi_batch_t *batch,
    kimi_err_t *err)
{
    return kimi_step_send(b->lead, KIMI_CPU_TAG_LEAD_STEP, kind, batch, err);
}


/*
 * The pipeline: stage 0 runs its layers on the embeddings, then for each
 * hop k (0 .. P-2) stage k hands its hidden rows to stage k + 1, which
 * runs its layers.  Every stage takes part in every hop (the group's
 * syncs are collective), sending nothing where it is not the sender.
 */
int
kimi_cpu_pipeline(kimi_cpu_t *b, const kimi_batch_t *batch, uint32_t T,
    kimi_err_t *err)
{
    const kimi_model_t  *m = b->model;
    uint32_t             stage = kimi_group_rank(b->pp);
    uint32_t             P = kimi_group_world(b->pp);
    size_t               bytes[KIMI_GROUP_MAX_RANKS], rows, got;
    int                  rc;

    rows = (size_t) T * b->cfg->hidden_size * sizeof(float);

    if (stage == 0
        && (rc = kimi_cpu_layers(b, batch, T, m->layer_first, m->layer_last,
                                 err)) != 0)
    {
        return rc;
    }

    for (uint32_t hop = 0; hop + 1 < P; hop++) {
        memset(bytes, 0, sizeof(bytes));

        if (hop == stage) {
            memcpy(kimi_group_sendbuf(b->pp, stage + 1), b->h, rows);
            bytes[stage + 1] = rows;
        }

        if ((rc = kimi_group_exchange(b->pp, KIMI_CPU_TAG_PP_HOP | hop, bytes,
                                      err)) != 0)
        {
            return rc;
        }

        if (hop + 1 == stage) {
            const void  *in = kimi_group_recvbuf(b->pp, stage - 1, &got);

            if (got != rows) {
                return kimi_err_set(err, KIMI_ESTATE, "pipeline: %zu bytes"
                                    " from stage %u, expected %zu", got,
                                    stage - 1, rows);
            }

            memcpy(b->h, in, rows);

            if ((rc = kimi_cpu_layers(b, batch, T, m->layer_first,
                                      m->layer_last, err)) != 0)
            {
                return rc;
            }
        }
    }

    return 0;
}


/* The last stage's logits rows to stage 0, a segment at a time. */
int
kimi_cpu_pipeline_logits(kimi_cpu_t *b, uint32_t n_rows, kimi_err_t *err)
{
    uint32_t  stage = kimi_group_rank(b->pp);
    uint32_t  last = kimi_group_world(b->pp) - 1;
    size_t    V = b->cfg->vocab_size, row = V * sizeof(float), got;
    size_t    per = kimi_group_seg_bytes(b->pp) / row;
    size_t    bytes[KIMI_GROUP_MAX_RANKS];
    int       rc;

    if (per == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "pipeline: a segment holds no"
                            " row of %zu logits", V);
    }

    for (uint32_t r0 = 0, chunk = 0; r0 < n_rows; r0 += per, chunk++) {
        uint32_t  n = n_rows - r0 < per ? n_rows - r0 : (uint32_t) per;

        memset(bytes, 0, sizeof(bytes));

        if (stage == last) {
            memcpy(kimi_group_sendbuf(b->pp, 0), b->logits + (size_t) r0 * V,
                   n * row);
            bytes[0] = n * row;
        }

        if ((rc = kimi_group_exchange(b->pp, KIMI_CPU_TAG_PP_LOGITS | chunk,
                                      bytes, err)) != 0)
        {
            return rc;
        }

        if (stage == 0) {
            const void  *in = kimi_group_recvbuf(b->pp, last, &got);

            if (got != n * row) {
                return kimi_err_set(err, KIMI_ESTATE, "pipeline: %zu logit"
                                    " bytes, expected %zu", got, n * row);
            }
            memcpy(b->logits + (size_t) r0 * V, in, got);
        }
    }

    return 0;
}


int
kimi_backend_cpu_followers_ready(kimi_backend_t *base, kimi_err_t *err)
{
    kimi_cpu_t  *b = (kimi_cpu_t *) base;
    int          any, all;

    if (b->lead == NULL) {
        return 0;
    }

    return kimi_group_vote(b->lead, KIMI_CPU_TAG_READY, 1, 1, &any, &all,
                           err);
}


int
kimi_backend_cpu_follow(kimi_backend_t *base, kimi_err_t *err)
{
    kimi_cpu_t    *b = (kimi_cpu_t *) base;
    kimi_batch_t   batch;
    kimi_err_t     ferr;
    int            stop = 0, rc;

    if (b->lead == NULL || kimi_group_rank(b->lead) == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "cpu: not a tensor-parallel"
                            " follower");
    }

    for ( ;; ) {
        if ((rc = kimi_step_recv(b->lead, KIMI_CPU_TAG_LEAD_STEP,
                                 &b->lead_buf, &batch, &stop, err)) != 0)
        {
            return rc;
        }

        if (stop) {
            return 0;
        }

        /* the leader hits the same batch error and reports it; only a
         * broken group ends the follower */
        rc = kimi_cpu_forward_local(b, &batch, &ferr);
        if (rc != 0 && kimi_group_failed(b->lead)) {
            *err = ferr;
            return rc;
        }
    }
}
