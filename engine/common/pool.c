/*
 * Worker threads for parallel loops (see pool.h).
 *
 * Owns:   the threads, one mutex and two condvars.
 * Never:  lets a worker touch a job after kimi_pool_run() returned.
 * Holds:  `mu` protects job, generation, pending and stop; workers block
 *         all signals so only the main thread handles them.
 */

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"


typedef struct {
    kimi_pool_t  *pool;
    uint32_t      id;
} kimi_pool_worker_t;

struct kimi_pool {
    uint32_t             n;               /* threads incl. the caller */
    pthread_t           *threads;         /* [n - 1] */
    kimi_pool_worker_t  *workers;         /* [n - 1] */
    pthread_mutex_t      mu;
    pthread_cond_t       go;
    pthread_cond_t       done;
    uint64_t             generation;      /* bumped per job */
    uint32_t             pending;         /* workers still in the job */
    int                  stop;
    kimi_pool_fn_pt      fn;
    void                *ctx;
    uint32_t             n_items;
};


static void
kimi_pool_chunk(kimi_pool_t *p, uint32_t id, kimi_pool_fn_pt fn, void *ctx,
    uint32_t n_items)
{
    uint32_t  i0 = (uint32_t) ((uint64_t) n_items * id / p->n);
    uint32_t  i1 = (uint32_t) ((uint64_t) n_items * (id + 1) / p->n);

    if (i0 < i1) {
        fn(ctx, id, i0, i1);
    }
}


static void *
kimi_pool_main(void *arg)
{
    kimi_pool_worker_t  *w = arg;
    kimi_pool_t         *p = w->pool;
    uint64_t             seen = 0;
    sigset_t             all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    for ( ;; ) {
        kimi_pool_fn_pt  fn;
        void            *ctx;
        uint32_t         n_items;

        pthread_mutex_lock(&p->mu);

        while (!p->stop && p->generation == seen) {
            pthread_cond_wait(&p->go, &p->mu);
        }

        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }

        seen = p->generation;
        fn = p->fn;
        ctx = p->ctx;
        n_items = p->n_items;
        pthread_mutex_unlock(&p->mu);

        kimi_pool_chunk(p, w->id, fn, ctx, n_items);

        pthread_mutex_lock(&p->mu);

        if (--p->pending == 0) {
            pthread_cond_signal(&p->done);
        }

        pthread_mutex_unlock(&p->mu);
    }
}


int
kimi_pool_init(kimi_pool_t **out, uint32_t n_threads, kimi_err_t *err)
{
    kimi_pool_t  *p;

    if (n_threads == 0) {
        long  n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (uint32_t) n : 1;
    }

    if (n_threads > 256) {
        n_threads = 256;
    }

    p = calloc(1, sizeof(*p));

    if (p == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "thread pool: out of memory");
    }

    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc(n_threads, sizeof(pthread_t));
    p->workers = calloc(n_threads, sizeof(kimi_pool_worker_t));

    if (p->threads == NULL || p->workers == NULL) {
        kimi_pool_free(p);
        return kimi_err_set(err, KIMI_ENOMEM, "thread pool: out of memory");
    }

    for (uint32_t i = 1; i < n_threads; i++) {
        p->workers[i - 1].pool = p;
        p->workers[i - 1].id = i;

        if (pthread_create(&p->threads[i - 1], NULL, kimi_pool_main,
                           &p->workers[i - 1]) != 0)
        {
            kimi_pool_free(p);
            return kimi_err_set(err, KIMI_ESTATE, "thread pool: "
                                "pthread_create failed after %u threads", i);
        }

        p->n = i + 1;
    }

    *out = p;
    return 0;
}


void
kimi_pool_free(kimi_pool_t *p)
{
    if (p == NULL) {
        return;
    }

    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);

    for (uint32_t i = 0; i + 1 < p->n; i++) {
        pthread_join(p->threads[i], NULL);
    }

    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p->workers);
    free(p);
}


uint32_t
kimi_pool_size(const kimi_pool_t *p)
{
    return p->n;
}


void
kimi_pool_run(kimi_pool_t *p, uint32_t n_items, kimi_pool_fn_pt fn,
    void *ctx)
{
    if (p->n == 1 || n_items <= 1) {
        if (n_items > 0) {
            fn(ctx, 0, 0, n_items);
        }

        return;
    }

    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n_items;
    p->pending = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);

    kimi_pool_chunk(p, 0, fn, ctx, n_items);

    pthread_mutex_lock(&p->mu);

    while (p->pending > 0) {
        pthread_cond_wait(&p->done, &p->mu);
    }

    pthread_mutex_unlock(&p->mu);
}
