/*
 * The cpu backend's internals, shared by its files: backend_cpu.c (the
 * forward pass, cache, vtable), moe_ep.c (expert-parallel MoE layers) and
 * lead.c (a tensor- or pipeline-parallel leader and its followers).
 *
 * Owns:   the backend struct and the tags its parallel groups sync on.
 * Never:  is included outside engine/backend/cpu/.
 */

#ifndef KIMI_CPU_IMPL_H
#define KIMI_CPU_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "../../model/model.h"
#include "../../parallel/group.h"
#include "../../parallel/step.h"
#include "backend_cpu.h"
#include "ops.h"
#include "../../common/pool.h"


typedef struct {
    kimi_backend_t             base;
    kimi_model_t              *model;
    const kimi_model_config_t *cfg;
    kimi_pool_t               *pool;
    int                        act_fp32;
    int                        all_logits;

    float                     *inv_freq;       /* [rope/2] */
    float                      attn_factor;
    float                      softmax_scale;
    float                    **kv_b;           /* [L] -> [H*(nope+v)][R] */

    kimi_cpu_kv_view_t        *kv;             /* [L] */
    void                      *kv_mem;
    float                     *kv_scales;
    uint32_t                   n_blocks;

    float                     *logits;         /* [n_logits][vocab] */
    uint32_t                   n_logits;
    size_t                     cap_logits;

    /* step scratch, sized for cap_tokens tokens */
    uint32_t                   cap_tokens;
    float                     *h, *a, *qa, *q, *ckv, *qpe, *qlat, *olat;
    float                     *attn, *o, *g, *u, *y, *rl, *xe, *ye;
    uint8_t                   *xq;
    float                     *xs;
    int32_t                   *tok_id;         /* [T] token ids */
    uint32_t                  *tok_pos;        /* [T] positions */
    uint32_t                  *tok_seq;        /* [T] batch seq index */
    int32_t                   *route_ids;      /* [T][top_k] */
    float                     *route_w;        /* [T][top_k] */
    uint32_t                  *gather;         /* [rows] */
    float                     *gather_w;       /* [rows] ep: router weight */
    uint32_t                   cap_rows;

    /* tensor parallelism: this rank's heads and MLP widths; pipeline
     * parallelism: its layers.  The group's rank 0 leads (lead = tp or pp) */
    kimi_group_t              *tp;
    kimi_group_t              *pp;
    kimi_group_t              *lead;
    kimi_step_buf_t            lead_buf;         /* follower: the leader's
                                                    sequence headers */

    float                     *wscratch;       /* per worker attention */
    size_t                     wscratch_per;
    uint32_t                   max_inter;
    uint32_t                   max_k;

    /* expert parallelism: this rank's experts, the peers' rows */
    kimi_group_t              *ep;
    uint32_t                   ep_cap;         /* tokens per exchange */
    int32_t                   *ep_pos;         /* [T][world] row at peer */
} kimi_cpu_t;


/* what a rank syncs for (group.h tags): ranks at different ones fail */
#define KIMI_CPU_TAG_LEAD_STEP ((uint64_t) 3 << 56)
#define KIMI_CPU_TAG_TP_SUM    ((uint64_t) 4 << 56)
#define KIMI_CPU_TAG_READY     ((uint64_t) 5 << 56)
#define KIMI_CPU_TAG_PP_HOP    ((uint64_t) 6 << 56)
#define KIMI_CPU_TAG_PP_LOGITS ((uint64_t) 7 << 56)

/* messages of the leader's step channel (parallel/step.h) */
#define KIMI_CPU_LEAD_STEP     KIMI_STEP_RUN
#define KIMI_CPU_LEAD_STOP     KIMI_STEP_STOP


/* backend_cpu.c */
void kimi_cpu_linear(kimi_cpu_t *b, const float *X, uint32_t T,
    const kimi_weight_t *w, float *Y);
void kimi_cpu_mlp(kimi_cpu_t *b, const kimi_mlp_weights_t *w, const float *x,
    uint32_t T, float *y);
int  kimi_cpu_route_shared(kimi_cpu_t *b, const kimi_layer_weights_t *L,
    uint32_t T, kimi_err_t *err);
int  kimi_cpu_reserve_rows(kimi_cpu_t *b, uint32_t rows, kimi_err_t *err);
int  kimi_cpu_layers(kimi_cpu_t *b, const kimi_batch_t *batch, uint32_t T,
    uint32_t l0, uint32_t l1, kimi_err_t *err);
int  kimi_cpu_forward_local(kimi_cpu_t *b, const kimi_batch_t *batch,
    kimi_err_t *err);

/* moe_ep.c */
int  kimi_cpu_moe_ep(kimi_cpu_t *b, uint32_t l, const kimi_layer_weights_t *L,
    uint32_t T, kimi_err_t *err);
int  kimi_cpu_ep_idle(kimi_cpu_t *b, int rc, kimi_err_t *err);

/* lead.c */
int  kimi_cpu_lead_send(kimi_cpu_t *b, uint32_t kind,
    const kimi_batch_t *batch, kimi_err_t *err);
int  kimi_cpu_pipeline(kimi_cpu_t *b, const kimi_batch_t *batch, uint32_t T,
    kimi_err_t *err);
int  kimi_cpu_pipeline_logits(kimi_cpu_t *b, uint32_t n_rows,
    kimi_err_t *err);

#endif
