/*
 * The CUDA backend: Kimi-K2's forward pass on one GPU through kernels/.
 *
 * Owns:   the public entry points of engine/backend/cuda/ (the factory in
 *         engine/backend/backend.c calls kimi_backend_cuda_init).
 * Never:  exposes device pointers or CUDA types to the rest of the engine.
 */

#ifndef KIMI_BACKEND_CUDA_H
#define KIMI_BACKEND_CUDA_H

#include <stdint.h>

#include "../backend.h"
#include "../../model/model.h"

struct kimi_group;

/* Tokens of one MoE plan: a step's tokens (x ranks under expert
 * parallelism).  The step workspaces grow with it (~0.35 MB a token at
 * Kimi-K2's widths); kimi-engine serve caps --max-num-batched-tokens here. */
#define KIMI_CUDA_PLAN_TOKENS  16384

typedef struct {
    int                 device;              /* CUDA device ordinal */
    uint32_t            max_batched_tokens;  /* tokens of one step: sizes
                                                workspaces */
    uint32_t            max_model_len;       /* 0 = max_position_embeddings */
    uint32_t            max_logit_rows;      /* sequences wanting logits per
                                                step */
    struct kimi_group  *ep;                  /* expert-parallel group of the
                                                node (rank r holds routed
                                                experts [r E/W, (r+1) E/W)),
                                                NULL: all experts here */
    struct kimi_group  *tp;                  /* tensor-parallel group of the
                                                rank (the model is this
                                                member's shard; rank 0
                                                leads), NULL: none */
    uint32_t            dcp;                 /* decode context parallel size
                                                (= the tensor-parallel
                                                size; 0, 1: off) */
    struct kimi_group  *pp;                  /* pipeline-parallel group of
                                                the rank (the model holds
                                                this stage's layers, as
                                                kimi_model_pp_layers splits
                                                them; stage 0 leads), NULL:
                                                none */
    struct kimi_group  *lead;                /* tp and pp together: all of
                                                the rank's members (rank 0
                                                leads; tp is the stage's
                                                group, pp the stages of
                                                one tp rank), NULL: the
                                                one of tp, pp that is set */
} kimi_backend_cuda_params_t;

kimi_backend_cuda_params_t kimi_backend_cuda_default_params(void);

/* 0 when the kernels take this model's shapes (whole weights, one rank),
 * else KIMI_EUNSUPPORTED naming the dimension: lets `--backend auto` pick
 * the cpu for a model the cuda backend would refuse. */
int kimi_backend_cuda_check_config(const kimi_model_config_t *c,
    kimi_err_t *err);

/* Uploads the model's weights (FP8 block-scaled, bf16 embeddings/lm_head)
 * and sizes every step workspace; with p->ep, joins the group's NCCL
 * communicator (every rank of the group calls this).  A model whose widths the kernels cannot
 * take (hidden_size % 1024, kv_lora_rank != 512, heads % 16, ...) fails with
 * KIMI_EUNSUPPORTED naming the field; nothing is computed for it. */
int kimi_backend_cuda_init(kimi_backend_t **out, struct kimi_model *model,
    int device, kimi_err_t *err);
int kimi_backend_cuda_init_params(kimi_backend_t **out,
    struct kimi_model *model, const kimi_backend_cuda_params_t *p,
    kimi_err_t *err);

/* Tensor or pipeline parallel: every member calls _followers_ready() once its
 * backend is up (a barrier); a follower then calls _follow(), which runs
 * the leader's steps until the leader's backend is freed (0) or the group
 * fails (< 0). */
int kimi_backend_cuda_followers_ready(kimi_backend_t *b, kimi_err_t *err);
int kimi_backend_cuda_follow(kimi_backend_t *b, kimi_err_t *err);

/* Greedy ids of the last forward's logits rows, argmax on the device
 * (ties to the lower id); ids[n_rows]. */
int kimi_backend_cuda_greedy(kimi_backend_t *b, int32_t *ids, uint32_t *n_rows,
    kimi_err_t *err);

/* Device time of the last forward's GPU work, in microseconds (events around
 * the step's stream work). */
double kimi_backend_cuda_last_step_us(kimi_backend_t *b);

/* Per-phase device times of the following steps (events between phases;
 * costs a little, off by default): summed over layers, microseconds, of
 * the last forward. */
typedef struct {
    double  embed_us, attn_us, ffn_dense_us, ffn_moe_us, head_us;
    /* attn_us split: norm + q/kv projections + rope + cache write, W_UK
     * absorption, MLA decode, W_UV absorption, quant + o_proj + norm */
    double  attn_proj_us, absorb_q_us, mla_us, absorb_o_us, attn_out_us;
} kimi_cuda_profile_t;

void kimi_backend_cuda_set_profile(kimi_backend_t *b, int on);
int  kimi_backend_cuda_profile(kimi_backend_t *b, kimi_cuda_profile_t *p,
    kimi_err_t *err);

/* Steps of up to 256 tokens replay a CUDA graph captured once per token
 * count (on by default; KIMI_CUDA_GRAPHS=0 in the environment turns it off
 * at init).  set_graphs switches it for the following steps (profiled steps
 * always run eagerly); graph_stats counts captures and graph launches. */
void kimi_backend_cuda_set_graphs(kimi_backend_t *b, int on);

/* Dense FP8 GEMMs of prefill size (>= 64 tokens) on cuBLASLt (on at init)
 * or on the own kernel (off): for checks and A/B timings. */
void kimi_backend_cuda_set_cublaslt(kimi_backend_t *b, int on);
void kimi_backend_cuda_graph_stats(kimi_backend_t *b, uint64_t *captures,
    uint64_t *launches);

/* A sequence's prefill chunk of at least min_tokens after a cached prefix
 * of at most max_prefix_x times its length (0: any) attends in the
 * expanded form (min_tokens 0: every token through the absorbed decode),
 * for checks and A/B timings.  KIMI_MLA_EXPAND_MIN and
 * KIMI_MLA_EXPAND_PREFIX in the environment set them at init (64 and 12 by
 * default where the head widths are Kimi-K2's and no decode context
 * parallelism splits the cache). */
void kimi_backend_cuda_set_mla_expand(kimi_backend_t *b, uint32_t min_tokens,
    uint32_t max_prefix_x);

#endif
