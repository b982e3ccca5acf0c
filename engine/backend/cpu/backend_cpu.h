/*
 * The CPU backend: the reference forward pass of Kimi-K2.
 *
 * Owns:   the paged latent KV cache storage in host memory, the thread
 *         pool, and the forward pass (embedding -> MLA -> MoE -> logits).
 * Never:  chooses which blocks a sequence uses (the scheduler's block
 *         tables say), samples, or reads files (the model is loaded).
 *
 * Activations entering FP8 GEMMs are quantised to FP8 1x128 groups as the
 * GPU does; KIMI_CPU_ACT=fp32 in the environment (or act_fp32 = 1) keeps
 * them fp32 for comparison with the fp32 oracle.
 */

#ifndef KIMI_BACKEND_CPU_H
#define KIMI_BACKEND_CPU_H

#include <stdint.h>

#include "../backend.h"

struct kimi_model;

typedef struct {
    uint32_t  n_threads;               /* 0 = online CPUs */
    int       act_fp32;                /* -1 = from KIMI_CPU_ACT, 0/1 */
    struct kimi_group *ep;             /* expert parallel: the node's group
                                          (borrowed); the model holds this
                                          rank's E / world experts */
    struct kimi_group *tp;             /* tensor parallel: the group of this
                                          rank's shards (borrowed); rank 0
                                          leads, the model is shard rank */
    struct kimi_group *pp;             /* pipeline parallel: the group of
                                          this rank's stages (borrowed);
                                          stage 0 leads, the model holds
                                          the stage's layers */
    struct kimi_group *lead;           /* tp and pp together: all of the
                                          rank's members (rank 0 leads);
                                          tp is the stage's, pp the
                                          stages of one tp rank */
} kimi_backend_cpu_params_t;

/* Borrows model, which must outlive the backend. */
int kimi_backend_cpu_init(kimi_backend_t **out, struct kimi_model *model,
    uint32_t n_threads, kimi_err_t *err);

int kimi_backend_cpu_init_params(kimi_backend_t **out,
    struct kimi_model *model, const kimi_backend_cpu_params_t *p,
    kimi_err_t *err);

/* CPU only (scoring, oracle tests): when on, forward() keeps the logits of
 * EVERY new token of each want_logits seq (rows in batch, then token
 * order), not just the last one. */
void kimi_backend_cpu_set_all_logits(kimi_backend_t *b, int on);

/*
 * Tensor or pipeline parallel: a leader (group rank 0) and its followers.
 * Every member calls _followers_ready() once its backend and KV cache
 * exist (a barrier: the leader serves only once all shares are up).  The
 * leader then runs forward() as usual: each step's batch goes to the
 * followers first; tensor shards all-reduce their partial sums, pipeline
 * stages hand their hidden rows on.  A follower calls _follow(), which
 * runs the leader's steps until the leader's backend is freed (0) or the
 * group breaks (< 0).
 */
int kimi_backend_cpu_followers_ready(kimi_backend_t *b, kimi_err_t *err);
int kimi_backend_cpu_follow(kimi_backend_t *b, kimi_err_t *err);

#endif
