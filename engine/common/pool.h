/*
 * A fixed pool of worker threads for parallel loops (the CPU backend's
 * kernels, the host sampler's rows).
 *
 * Owns:   n - 1 worker threads (the caller is worker 0) and one job at a
 *         time: [0, n_items) split into contiguous chunks, one per worker.
 * Never:  queues more than one job, or is called from two threads.
 * Holds:  kimi_pool_run() returns after every chunk has finished (the
 *         mutex + condvar give the happens-before for the job's writes).
 */

#ifndef KIMI_POOL_H
#define KIMI_POOL_H

#include <stdint.h>

#include "kimi_err.h"

typedef struct kimi_pool  kimi_pool_t;

/* fn(ctx, worker, i0, i1) handles items [i0, i1) on worker `worker`. */
typedef void (*kimi_pool_fn_pt)(void *ctx, uint32_t worker, uint32_t i0,
    uint32_t i1);

int      kimi_pool_init(kimi_pool_t **out, uint32_t n_threads,
    kimi_err_t *err);
void     kimi_pool_free(kimi_pool_t *pool);          /* NULL is a no-op */
uint32_t kimi_pool_size(const kimi_pool_t *pool);

void     kimi_pool_run(kimi_pool_t *pool, uint32_t n_items,
    kimi_pool_fn_pt fn, void *ctx);

#endif
