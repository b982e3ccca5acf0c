/*
 * Several rows sampled at once: one host sampler per thread.
 *
 * Owns:   a pool of worker threads (engine/common/pool.h) and a sampler for
 *         each.
 * Never:  changes what a row samples: rows are independent (each request
 *         carries its own RNG), so a row's token and logprobs are the same
 *         on any thread and in any order as with one sampler.
 *
 * Why: a row that is not plain greedy costs ~0.1-1 ms of host time at
 * Kimi's vocabulary (temperature + top_p ~0.8 ms, a JSON schema ~0.7 ms),
 * so a step of 64 sampled rows on one thread costs far more than the GPU
 * step that made them.
 */

#ifndef KIMI_SAMPLE_POOL_H
#define KIMI_SAMPLE_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "sample.h"

typedef struct kimi_sample_pool  kimi_sample_pool_t;

/* n_threads samplers in all (the caller's thread is one of them); 0 picks
 * KIMI_SAMPLE_THREADS from the environment, else half the online CPUs,
 * 1..8. */
int  kimi_sample_pool_init(kimi_sample_pool_t **out, uint32_t vocab,
                           uint32_t n_threads, kimi_err_t *err);
void kimi_sample_pool_free(kimi_sample_pool_t *p);     /* NULL: no-op */
uint32_t kimi_sample_pool_threads(const kimi_sample_pool_t *p);

/* outs[i] = the sample of row i (logits + i * ld) for i < n, skipping the
 * rows with skip[i] set (the caller sampled them; skip may be NULL); the
 * first error of any row is returned (the others still ran). */
int  kimi_sample_pool_run(kimi_sample_pool_t *p, const float *logits,
                          size_t ld, const kimi_sample_req_t *reqs,
                          uint32_t n, const uint8_t *skip,
                          kimi_sample_out_t *outs, kimi_err_t *err);

#endif
