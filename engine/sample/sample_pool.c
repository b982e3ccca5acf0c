/*
 * Several rows sampled at once (sample_pool.h): workers wait on a
 * generation counter, take rows from a shared counter until none is left,
 * and the caller samples beside them and waits for the last.
 */

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sample_pool.h"


struct kimi_sample_pool {
    uint32_t                  n_threads;     /* samplers, the caller's too */
    kimi_sampler_t          **smp;
    pthread_t                *th;            /* n_threads - 1 workers */
    uint32_t                  n_started;
    pthread_mutex_t           mu;
    pthread_cond_t            go, done;
    uint64_t                  gen;
    uint32_t                  running;
    int                       quit;

    /* the job */
    const float              *logits;
    size_t                    ld;
    const kimi_sample_req_t  *reqs;
    kimi_sample_out_t        *outs;
    uint32_t                  n;
    int                       skip_greedy;
    atomic_uint               next;
    int                       rc;
    kimi_err_t                err;
};

typedef struct {
    kimi_sample_pool_t  *p;
    uint32_t             k;
} kimi_sample_worker_t;


static void
kimi_sample_pool_work(kimi_sample_pool_t *p, kimi_sampler_t *smp)
{
    kimi_err_t  e;
    uint32_t    i;
    int         rc;

    for (;;) {
        i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n) {
            return;
        }
        if (p->skip_greedy && kimi_sample_is_plain_greedy(&p->reqs[i])) {
            continue;
        }
        rc = kimi_sampler_sample(smp, p->logits + (size_t) i * p->ld,
                                 &p->reqs[i], &p->outs[i], &e);
        if (rc != 0) {
            pthread_mutex_lock(&p->mu);
            if (p->rc == 0) {
                p->rc = rc;
                p->err = e;
            }
            pthread_mutex_unlock(&p->mu);
        }
    }
}


static void *
kimi_sample_pool_main(void *arg)
{
    kimi_sample_worker_t  *w = arg;
    kimi_sample_pool_t    *p = w->p;
    uint64_t               seen = 0;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->quit) {
            pthread_cond_wait(&p->go, &p->mu);
        }
        if (p->quit) {
            break;
        }
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);

        kimi_sample_pool_work(p, p->smp[w->k]);

        pthread_mutex_lock(&p->mu);
        if (--p->running == 0) {
            pthread_cond_signal(&p->done);
        }
    }
    pthread_mutex_unlock(&p->mu);
    free(w);
    return NULL;
}


int
kimi_sample_pool_init(kimi_sample_pool_t **out, uint32_t vocab,
    uint32_t n_threads, kimi_err_t *err)
{
    kimi_sample_pool_t    *p;
    kimi_sample_worker_t  *w;
    const char            *env;
    long                   cpus;
    int                    rc;

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
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->smp = calloc(n_threads, sizeof(*p->smp));
    p->th = calloc(n_threads, sizeof(*p->th));
    if (p->smp == NULL || p->th == NULL) {
        kimi_sample_pool_free(p);
        return kimi_err_set(err, KIMI_ENOMEM, "sample pool: calloc");
    }

    for (uint32_t k = 0; k < n_threads; k++) {
        if ((rc = kimi_sampler_init(&p->smp[k], vocab, err)) != 0) {
            kimi_sample_pool_free(p);
            return rc;
        }
    }

    for (uint32_t k = 1; k < n_threads; k++) {
        w = malloc(sizeof(*w));
        if (w == NULL) {
            kimi_sample_pool_free(p);
            return kimi_err_set(err, KIMI_ENOMEM, "sample pool: malloc");
        }
        w->p = p;
        w->k = k;
        if (pthread_create(&p->th[k - 1], NULL, kimi_sample_pool_main, w)
            != 0)
        {
            free(w);
            kimi_sample_pool_free(p);
            return kimi_err_set(err, KIMI_EFULL, "sample pool: pthread_create");
        }
        p->n_started++;
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
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (uint32_t k = 0; k < p->n_started; k++) {
        pthread_join(p->th[k], NULL);
    }
    for (uint32_t k = 0; p->smp != NULL && k < p->n_threads; k++) {
        kimi_sampler_free(p->smp[k]);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->smp);
    free(p->th);
    free(p);
}


uint32_t
kimi_sample_pool_threads(const kimi_sample_pool_t *p)
{
    return p->n_threads;
}


int
kimi_sample_pool_run(kimi_sample_pool_t *p, const float *logits, size_t ld,
    const kimi_sample_req_t *reqs, uint32_t n, int skip_plain_greedy,
    kimi_sample_out_t *outs, kimi_err_t *err)
{
    uint32_t  todo = 0;

    p->logits = logits;
    p->ld = ld;
    p->reqs = reqs;
    p->outs = outs;
    p->n = n;
    p->skip_greedy = skip_plain_greedy;
    p->rc = 0;
    atomic_store(&p->next, 0);

    for (uint32_t i = 0; i < n && todo < 2; i++) {
        todo += !(skip_plain_greedy && kimi_sample_is_plain_greedy(&reqs[i]));
    }

    if (p->n_started == 0 || todo < 2) {       /* not worth a wake-up */
        kimi_sample_pool_work(p, p->smp[0]);

    } else {
        pthread_mutex_lock(&p->mu);
        p->running = p->n_started;
        p->gen++;
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->mu);

        kimi_sample_pool_work(p, p->smp[0]);

        pthread_mutex_lock(&p->mu);
        while (p->running > 0) {
            pthread_cond_wait(&p->done, &p->mu);
        }
        pthread_mutex_unlock(&p->mu);
    }

    if (p->rc != 0) {
        *err = p->err;
    }
    return p->rc;
}
