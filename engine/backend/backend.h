/*
 * The backend interface: what the scheduler asks of a compute device.
 *
 * Owns:   the batch description and the vtable every backend implements
 *         (cpu: the reference; cuda: the fast one; replay: scripted
 *         tokens for transport tests).
 * Never:  decides scheduling, allocates KV blocks (the scheduler owns the
 *         block tables; the backend owns the storage they index), or
 *         knows about requests, slots or text.
 *
 * Paged latent KV cache: per layer, n_blocks blocks of block_size tokens,
 * each token kv_lora_rank + qk_rope_head_dim values (512 + 64 = 576 for
 * Kimi-K2), bf16 or fp8 e4m3 (with one fp32 scale per token per layer).
 * Token at position p of a sequence lives in block block_table[p / bs],
 * row p % bs.
 */

#ifndef KIMI_BACKEND_H
#define KIMI_BACKEND_H

#include <stdint.h>

#include "../common/kimi_err.h"

typedef struct kimi_backend  kimi_backend_t;
struct kimi_model;                       /* engine/model/model.h */

typedef enum {
    KIMI_KV_DTYPE_AUTO = 0,              /* bf16 */
    KIMI_KV_DTYPE_FP8 = 1,               /* e4m3, per-token scale */
    KIMI_KV_DTYPE_F32 = 2,               /* cpu only: oracle comparison */
} kimi_kv_dtype_e;

typedef struct {
    uint32_t         block_size;         /* tokens per block (64) */
    kimi_kv_dtype_e  dtype;
    uint64_t         budget_bytes;       /* cpu: bytes for the cache */
    float            gpu_memory_utilization; /* cuda: fraction of HBM */
    uint32_t         max_blocks;         /* 0 = as many as fit */
} kimi_kv_params_t;

/* One sequence's share of a step. */
typedef struct {
    uint64_t         seq_id;             /* stable for the sequence's life */
    const int32_t   *tokens;             /* [n_tokens] new tokens */
    uint32_t         n_tokens;           /* prefill chunk, or 1 for decode */
    uint32_t         pos;                /* position of tokens[0] */
    const uint32_t  *block_table;        /* covers pos + n_tokens tokens */
    uint32_t         n_blocks;
    uint8_t          want_logits;        /* logits of the last new token */
    uint8_t          greedy_hint;        /* the engine will take this row's
                                            token plain greedy: a backend may
                                            find its argmax and logprob
                                            within the forward (cuda: no
                                            second round trip to sample) */
    uint8_t          pad0[2];
} kimi_batch_seq_t;

typedef struct {
    uint32_t                 n_seqs;
    const kimi_batch_seq_t  *seqs;
} kimi_batch_t;

/* Per-sequence sampling request for backends that sample themselves. */
struct kimi_sample_req;                  /* engine/sample/sample.h */
struct kimi_sample_out;

typedef struct {
    const char *name;

    /* Sizes and allocates the cache; *n_blocks_out is what fit. */
    int  (*kv_init)(kimi_backend_t *b, const kimi_kv_params_t *p,
                    uint32_t *n_blocks_out, kimi_err_t *err);

    /* Runs the batch: writes new tokens' KV into their blocks and keeps the
     * logits of every seq with want_logits, in batch order. */
    int  (*forward)(kimi_backend_t *b, const kimi_batch_t *batch,
                    kimi_err_t *err);

    /* Host view of the last forward's logits [n_want][vocab]; valid until
     * the next forward.  NULL-able for backends that only sample. */
    const float *(*logits)(kimi_backend_t *b, uint32_t *n_rows,
                           uint32_t *vocab);

    /* Optional: sample on the device.  NULL means the engine samples on
     * the host from logits(). reqs/out are in want_logits order. */
    int  (*sample)(kimi_backend_t *b, const struct kimi_sample_req *reqs,
                   uint32_t n, struct kimi_sample_out *out, kimi_err_t *err);

    /* Optional: the sequence ended (finished, cancelled or preempted). */
    void (*seq_free)(kimi_backend_t *b, uint64_t seq_id);

    void (*free)(kimi_backend_t *b);
} kimi_backend_ops_t;

/* Every backend struct starts with this. */
struct kimi_backend {
    const kimi_backend_ops_t  *ops;
    uint32_t                   vocab_size;
    uint32_t                   max_model_len;
};


/* ---- factory (backend.c) ------------------------------------------------- */

typedef struct {
    const char         *name;            /* "cpu" | "cuda" | "replay" */
    struct kimi_model  *model;           /* cpu, cuda: borrowed, loaded */
    uint32_t            n_threads;       /* cpu: 0 = online CPUs */
    int                 device;          /* cuda: device ordinal */
    uint32_t            max_batched_tokens; /* cuda: one step's tokens
                                            (sizes workspaces), 0 = 2048 */
    uint32_t            max_model_len;   /* cuda: 0 = the model's */
    uint32_t            max_num_seqs;    /* cuda: logit rows per step,
                                            0 = 256 */
    const void         *replay;          /* replay: kimi_replay_params_t */
    struct kimi_group  *ep;              /* cpu, cuda: expert-parallel group
                                            of the node (parallel/group.h) */
    struct kimi_group  *tp;              /* cpu, cuda: tensor-parallel
                                            group */
    uint32_t            dcp;             /* cuda: decode context parallel
                                            size (= tp's world; 0, 1:
                                            off) */
    struct kimi_group  *pp;              /* cpu, cuda: pipeline-parallel
                                            group */
    struct kimi_group  *lead;            /* cpu, cuda: every member of the
                                            rank (the step channel) when
                                            tp and pp are both set, each
                                            linked to it; NULL: tp or pp */
} kimi_backend_params_t;

/* Creates the named backend; *out is the caller's (ops->free).  A backend
 * this binary was built without is KIMI_EUNSUPPORTED with a message that
 * says so ("built without CUDA"). */
int kimi_backend_create(kimi_backend_t **out, const kimi_backend_params_t *p,
    kimi_err_t *err);

/* Tensor or pipeline parallel (cpu; cuda: tensor only): every member of
 * a rank's group calls _followers_ready() once its backend is up; a
 * follower then calls _follow(), which runs the leader's steps until the
 * leader's backend is freed (0) or the group fails. */
int kimi_backend_followers_ready(kimi_backend_t *b, kimi_err_t *err);
int kimi_backend_follow(kimi_backend_t *b, kimi_err_t *err);

#endif
