/*
 * Several rows sampled at once (sample_pool.h): the rows split over the
 * workers of a kimi_pool (engine/common/pool.c), each with its own
 * sampler; each worker keeps its first error, the lowest worker's wins.
 */

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/pool.h"
#include "sample_pool.h"


struct kimi_sample_pool {
    kimi_pool_t              *pool;
    uint32_t                  n_threads;
    kimi_sampler_t          **smp;           /* one a worker */
    int                      *rc;            /* one a worker */
    kimi_err_t               *err;

    /* the job */
    const float              *logits;
    size_t                    ld;
    const kimi_sample_req_t  *reqs;
    kimi_sample_out_t        *outs;
    const uint8_t            *skip;
};


static void
kimi_sample_pool_rows(void *ctx, uint32_t worker, uint32_t i0, uint32_t i1)
{
    kimi_sample_pool_t  *p = ctx;
    int                  rc;

    for (uint32_t i = i0; i < i1; i++) {
        if (p->skip != NULL && p->skip[i]) {
            continue;
        }
        rc = kimi_sampler_sample(p->smp[worker], p->logits + (size_t) i * p->ld,
                                 &p->reqs[i], &p->outs[i],
                                 p->rc[worker] == 0 ? &p->err[worker] : NULL);
        if (rc != 0 && p->rc[worker] == 0) {
            p->rc[worker] = rc;
        }
    }
}


int
kimi_sample_pool_init(kimi_sample_pool_t **out, uint32_t vocab,
    uint32_t n_threads, kimi_err_t *err)
{
    kimi_sample_pool_t  *p;
    const char          *env;
    long                 cpus;
    int                  rc;

    if (n_threads == 0) {
        env = getenv("KIMI_SAMPLE_THREADS");
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = env != NULL ? (uint32_t) atoi(env)
                                : (uint32_t) (cpus > 1 ? cpus / 2 : 1);
        n_threads = n_threads < 1 ? 1 : (n_threads > 8 ? 8 : n_threads);
    }

    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "sample pool: calloc");
    }
    p->n_threads = n_threads;
    p->smp = calloc(n_threads, sizeof(*p->smp));
    p->rc = calloc(n_threads, sizeof(*p->rc));
    p->err = calloc(n_threads, sizeof(*p->err));
    if (p->smp == NULL || p->rc == NULL || p->err == NULL) {
        kimi_sample_pool_free(p);
        return kimi_err_set(err, KIMI_ENOMEM, "sample pool: calloc");
    }

    for (uint32_t k = 0; k < n_threads; k++) {
        if ((rc = kimi_sampler_init(&p->smp[k], vocab, err)) != 0) {
            kimi_sample_pool_free(p);
            return rc;
        }
    }

    if (n_threads > 1 && (rc = kimi_pool_init(&p->pool, n_threads, err)) != 0) {
        kimi_sample_pool_free(p);
        return rc;
    }

    *out = p;
    return KIMI_OK;
}


void
kimi_sample_pool_free(kimi_sample_pool_t *p)
{
    if (p == NULL) {
        return;
    }
    kimi_pool_free(p->pool);
    for (uint32_t k = 0; p->smp != NULL && k < p->n_threads; k++) {
        kimi_sampler_free(p->smp[k]);
    }
    free(p->smp);
    free(p->rc);
    free(p->err);
    free(p);
}


uint32_t
kimi_sample_pool_threads(const kimi_sample_pool_t *p)
{
    return p->n_threads;
}


int
kimi_sample_pool_run(kimi_sample_pool_t *p, const float *logits, size_t ld,
    const kimi_sample_req_t *reqs, uint32_t n, const uint8_t *skip,
    kimi_sample_out_t *outs, kimi_err_t *err)
{
    uint32_t  todo = 0;

    p->logits = logits;
    p->ld = ld;
    p->reqs = reqs;
    p->outs = outs;
    p->skip = skip;
    memset(p->rc, 0, p->n_threads * sizeof(*p->rc));

    for (uint32_t i = 0; i < n && todo < 2; i++) {
        todo += skip == NULL || !skip[i];
    }

    if (p->pool == NULL || todo < 2) {         /* not worth a wake-up */
        kimi_sample_pool_rows(p, 0, 0, n);
    } else {
        kimi_pool_run(p->pool, n, kimi_sample_pool_rows, p);
    }

    for (uint32_t k = 0; k < p->n_threads; k++) {
        if (p->rc[k] != 0) {
            *err = p->err[k];
            return p->rc[k];
        }
    }
    return KIMI_OK;
}
