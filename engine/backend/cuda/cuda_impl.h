/*
 * Inside the CUDA backend: the device state shared by its files.
 *
 * Owns:   kimi_cuda_t (weights on the device, KV cache, step workspaces,
 *         host staging) and the CUDA-call check macro of the C files.
 * Never:  seen outside engine/backend/cuda/.
 * Holds:  every buffer a step touches is allocated by init or kv_init;
 *         forward only carves and launches (so a step can be captured:
 *         graphs.c keeps one graph per step size).
 */

#ifndef KIMI_CUDA_IMPL_H
#define KIMI_CUDA_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "../../../kernels/kimi_kernels.h"
#include "../../model/model.h"
#include "../../parallel/ep.h"
#include "../../parallel/group.h"
#include "../../parallel/nccl_comm.h"
#include "../../parallel/step.h"
#include "../../sample/sample.h"
#include "cuda_backend.h"

#define KIMI_CU(call, err)                                                    \
    do {                                                                      \
        cudaError_t  e_ = (call);                                             \
        if (e_ != cudaSuccess) {                                              \
            return kimi_err_set(err, KIMI_ECUDA, "cuda: %s:%d: %s: %s",       \
                                __FILE__, __LINE__, #call,                    \
                                cudaGetErrorString(e_));                      \
        }                                                                     \
    } while (0)

/* a kernels/ launcher: pass its error on */
#define KIMI_K(call)                                                          \
    do {                                                                      \
        int  rc_ = (call);                                                    \
        if (rc_ != 0) return rc_;                                             \
    } while (0)


typedef struct {
    uint8_t        *w;                    /* e4m3 [rows][cols] */
    float          *s;                    /* [ceil(rows/128)][cols/128] */
    uint32_t        rows, cols;
} kimi_cuda_fp8_t;

typedef struct {
    kimi_bf16_t      *in_ln, *post_ln, *q_a_ln, *kv_a_ln;
    kimi_cuda_fp8_t   q_a, q_b, kv_a, o;
    kimi_cuda_fp8_t   kv_b;               /* [H][nope + v][R]: W_UK, W_UV */
    int               is_moe;
    kimi_cuda_fp8_t   gate, up, down;     /* dense FFN */
    kimi_bf16_t      *router;             /* [E][D] */
    float            *bias;               /* [E] or NULL */
    kimi_experts_t    ex;                 /* device tables [E_local + shared] */
    kimi_cuda_fp8_t   sh_gate, sh_up, sh_down;  /* the shared expert: run
                                                   as a dense MLP under EP */
} kimi_cuda_layer_t;

/* A captured step: valid for any batch of the same T, logit rows and MLA
 * splits (everything else a step reads is in device memory). */
typedef struct {
    cudaGraphExec_t             exec;
    uint32_t                    rows, splits, t_cap;
    /* a key is captured the second time it is seen: the first run is
     * eager (one-off prefill sizes never pay for a capture) */
    int                         seen;
    uint32_t                    seen_rows, seen_splits, seen_t_cap;
} kimi_cuda_graph_t;

#define KIMI_CUDA_GRAPH_MAX_T  256

/* lm_head: up to this many rows the GEMV (one pass over the head per 8
 * rows, no per-call floor); above, cuBLASLt bf16 on the tensor cores */
#define KIMI_CUDA_LM_HEAD_GEMV_ROWS  8
#define KIMI_CUDA_LT_WS              ((size_t) 32 << 20)

/* dense FP8 GEMMs of at least this many tokens go to cuBLASLt (~1 PFLOP/s
 * at prefill sizes; at decode sizes its ~10 us per call floor loses to the
 * own kernel's one pass over the weights, bench/RESULTS.md) */
#define KIMI_CUDA_LT_MIN_T           64

/* A sequence's prefill chunk of at least expand_min tokens attends in the
 * expanded form (kimi_mla_prefill: kv_b applied to its context's latent
 * rows, then attention with 192-wide keys and 128-wide values) instead of
 * the absorbed decode one query at a time: 3.4x fewer FLOPs a query-key
 * pair, paid for by one kv_b GEMM over the context per chunk, in bf16 (the
 * latent rows as cached, kv_b dequantised once a layer) so the keys and
 * values carry no more rounding than the absorbed form's. */
typedef struct {
    uint32_t                    tok0, n;      /* its tokens in the step */
    uint32_t                    pos0;         /* the first one's position */
} kimi_cuda_run_t;

#define KIMI_CUDA_MAX_RUNS           16
#define KIMI_CUDA_EXPAND_MIN_T       64
/* ... and whose cached prefix is at most this many times its length: the
 * expansion costs every key of the context once a chunk, the form saves on
 * every query-key pair (H200, 3 K2-wide layers: a chunk of 1024 after 12K
 * cached gains 9 %, one of 512 loses 13 %, one of 256 after 4K loses 5 %;
 * bench/RESULTS.md 2026-11-30) */
#define KIMI_CUDA_EXPAND_PREFIX_X    12
/* the context is expanded in chunks of at most this many bytes of kv_b
 * output (bf16 [keys][H][256]): 4096 keys at 64 heads */
#define KIMI_CUDA_EXPAND_BYTES       ((size_t) 128 << 20)

/* Profiled steps record events: [0] start, [1] after the embedding, then
 * per layer l six marks KIMI_CUDA_MARK(l, k): k = 0 after the q/kv
 * projections, rope and the cache write, 1 after the W_UK absorption, 2
 * after the MLA decode, 3 after the W_UV absorption, 4 after o_proj and
 * the post-attention norm, 5 after the FFN; [6L + 2] after lm_head. */
#define KIMI_CUDA_MARKS(L)      (6 * (L) + 3)
#define KIMI_CUDA_MARK(l, k)    (2 + 6 * (l) + (k))

typedef struct {
    kimi_backend_t              base;
    kimi_model_t               *model;
    const kimi_model_config_t  *cfg;
    int                         device;
    int                         n_sm;
    cudaStream_t                stream;
    cudaEvent_t                 ev0, ev1;
    float                       last_ms;
    int                         prof;
    cudaEvent_t                *pev;          /* [KIMI_CUDA_MARKS(L)] */

    /* weights: one device arena */
    void                       *warena;
    size_t                      wbytes;
    kimi_cuda_layer_t          *layers;
    kimi_bf16_t                *embed, *lm_head, *norm;
    kimi_rope_t                 rope;
    float                       softmax_scale;
    uint32_t                    I_dense, I_moe, I_shared, top_k, E;
    int                         shared;         /* n_shared_experts > 0 */
    int                         shared_in_moe;  /* exactly one, of the
                                                   routed width: expert E
                                                   of the MoE kernels (no
                                                   EP); else a dense MLP */

    /* expert parallelism (DP attention + EP MoE): this rank holds routed
     * experts [expert_first, expert_first + E_local) (all of them, E,
     * without EP); the node's group carries the step's token-count vote,
     * NCCL the token rows; t_cap = this step's rows per peer */
    kimi_group_t               *ep;
    kimi_nccl_t                *nccl;
    uint32_t                    ep_world, ep_rank, E_local, expert_first;
    int                         tp_ep;        /* the tensor-parallel ranks
                                                 split the routed experts
                                                 whole: ids localised before
                                                 the plan, no exchange */
    uint32_t                    t_cap;
    void                       *ep_ws;        /* kimi_ep_ws_t for cap */
    void                       *ep_moe_ws;    /* MoE plan of W * cap rows */

    /* EP over peer memory (ep.h, kimi_ep_p2p_t) when every rank mapped
     * every inbox through CUDA IPC; else (p2p_on 0) the all-to-all */
    int                         p2p_on;
    kimi_ep_p2p_t               p2p;
    void                       *ep_inbox;     /* own, IPC-exported */
    void                       *p2p_peer[KIMI_GROUP_MAX_RANKS];
    void                      **p2p_peer_d;   /* device copy of p2p_peer */
    uint64_t                   *p2p_epoch;
    int                        *p2p_abort_h;  /* host, mapped */

    /* tensor parallelism: this rank's H heads (all of them without TP)
     * and 1/tp of every MLP width; the leader (tp rank 0) sends each step
     * to its followers through the group, partial sums (after o_proj and
     * after the FFN) are all-reduced over NCCL */
    uint32_t                    H;
    kimi_group_t               *tp;
    kimi_nccl_t                *tp_nccl;

    /* decode context parallelism over runs of dcp consecutive tensor-
     * parallel ranks (dcp divides the group's size, 1: off): the run's
     * rank r holds the latent rows of positions p with p % dcp == r, block b of the scheduler's (vbs = dcp * bs tokens)
     * being rows of its physical block b of bs; attention gathers every
     * rank's q, decodes each rank's heads over the rows held here, and
     * sends each partial (o, lse) to the rank owning those heads, which
     * merges them (all within the run) */
    uint32_t                    dcp, dcp_rank, vbs;
    kimi_nccl_t                *dcp_nccl;     /* tp_nccl, or with dcp <
                                                 tp the run's own: */
    kimi_nccl_t                *dcp_own;      /* (owned) */
    kimi_bf16_t                *dcp_q;        /* [dcp][cap][H][576] */
    uint8_t                    *dcp_send, *dcp_recv;  /* [dcp][part] */

    /* pipeline parallelism: this stage runs layers [l_first, l_last) and
     * holds their KV cache; stage 0 embeds, runs lm_head and samples, the
     * residual stream (h and the pending FFN output y) goes to the next
     * stage and the last stage's normed logit rows come back to stage 0,
     * over NCCL send / receive inside the step */
    kimi_group_t               *pp;
    kimi_nccl_t                *pp_nccl;
    uint32_t                    pp_stage, pp_world;
    uint32_t                    l_first, l_last;

    /* the group whose rank 0 leads (tensor or pipeline parallel): it
     * hands each step to the others, which only follow */
    kimi_group_t               *lead;
    kimi_step_buf_t             lead_buf;

    /* KV cache */
    void                       *kv;           /* [L][n_blocks][bs][576]; fp8: [L][n_blocks][36][bs][16] (L: this stage's layers) */
    float                      *kv_scale;     /* fp8: [L][n_blocks][bs] */
    int                         kv_fp8;
    uint32_t                    bs, n_blocks, max_bt;  /* max_bt = blocks/seq */

    /* step workspaces, for cap tokens */
    uint32_t                    cap;
    uint32_t                    max_rows;     /* logits rows */
    void                       *sarena;
    /* fp32 as on the CPU oracle (residual stream, GEMM outputs, norms);
     * bf16 only where the MLA kernel takes it (q_lat, o_lat) */
    float                      *h, *a, *qa, *qn, *q, *ckv;
    float                      *attn, *o, *g, *u, *y, *fin;
    kimi_bf16_t                *qlat, *olat;
    uint8_t                    *xq;
    float                      *xs, *rl, *tw, *logits;
    int32_t                    *tidx, *argmax;
    void                       *moe_ws, *mla_ws;
    /* lm_head over more than KIMI_CUDA_LM_HEAD_GEMV_ROWS rows: bf16 input
     * to cuBLASLt's tensor cores (the GEMV re-reads the head per 8 rows) */
    kimi_bf16_t                *fin_bf;
    kimi_cublaslt_t            *lt;
    void                       *lt_ws;
    float                      *lp;           /* device greedy: [max_rows] */
    /* prefill sizes: dense FP8 GEMMs on cuBLASLt (block scales, which
     * want the activation scales MN-major [K/128][T padded to 4]);
     * lt_fp8 0 when this cuBLASLt has no algorithm (the own kernel then) */
    float                      *xs_mn;
    int                         lt_fp8;

    /* expanded prefill attention (kimi_cuda_run_t): expand_min 0 = off,
     * expand_prefix 0 = any cached prefix;
     * the context expanded expand_rows keys at a time through ex_* */
    uint32_t                    expand_min, expand_prefix, expand_rows;
    kimi_cuda_run_t             runs[KIMI_CUDA_MAX_RUNS];
    uint32_t                    n_runs;
    kimi_bf16_t                *ex_c, *ex_pe; /* [rows][512], [rows][64] */
    kimi_bf16_t                *ex_w;         /* the layer's kv_b in bf16 */
    kimi_bf16_t                *ex_kv;        /* [rows][H][256] kv_b out */
    float                      *ex_lse;       /* [cap][H] */

    /* per-step metadata: host pinned staging mirrored on the device */
    int32_t                    *meta_h, *meta_d;
    size_t                      meta_words;
    float                      *logits_h;
    uint32_t                    n_rows, n_tokens;
    int                         logits_on_host;
    int                         greedy_on_host;   /* ids_h/lp_h hold the
                                                     step's argmax (rows
                                                     with greedy_hint) */
    int32_t                    *ids_h;        /* pinned [max_rows] */
    float                      *lp_h;         /* pinned [max_rows] */
    /* rows drawn by temperature on the device (kimi_sample_is_plain_random):
     * the draw's parameters up, the tokens down */
    kimi_draw_row_t            *draw, *draw_h;    /* [max_rows] device / pinned */
    int32_t                    *drawn, *drawn_h;  /* [max_rows] device / pinned */
    kimi_rng_t                 *rng_save;     /* [max_rows] before the draw */
    /* rows with logit_bias, penalties or min_tokens drawn on the device
     * too: their logits edited (kimi_logit_edit) and restored after */
    kimi_logit_edit_t          *edits_h, *edits_d;    /* pinned / device */
    uint32_t                    edit_cap;
    int32_t                    *edit_at;      /* [vocab] a row's edit, -1 */
    uint32_t                   *edit_count;   /* [vocab] output count */
    int                         edits_on;     /* KIMI_DEVICE_EDITS != 0 */
    uint8_t                    *skip;         /* [max_rows] rows not for the host */
    struct kimi_sample_pool    *sampler;      /* rows the device can't take */

    /* graphs.c: one captured step per token count T <= graph_max_t */
    kimi_cuda_graph_t          *graphs;       /* [graph_max_t + 1] */
    uint32_t                    graph_max_t;
    int                         graphs_on;
    uint64_t                    graph_captures, graph_launches;
} kimi_cuda_t;

/* weights.c */
int  kimi_cuda_weights_upload(kimi_cuda_t *b, kimi_err_t *err);

/* forward.c */
int  kimi_cuda_workspaces(kimi_cuda_t *b, kimi_err_t *err);
int  kimi_cuda_forward(kimi_backend_t *base, const kimi_batch_t *batch,
    kimi_err_t *err);
int  kimi_cuda_forward_local(kimi_cuda_t *b, const kimi_batch_t *batch,
    kimi_err_t *err);
int  kimi_cuda_step(kimi_cuda_t *b, uint32_t T, uint32_t rows,
    uint32_t splits, kimi_err_t *err);
/* Waits for the step's end event (ev1); under EP gives up, aborting NCCL,
 * when the group fails or NCCL reports a peer's failure. */
int  kimi_cuda_wait(kimi_cuda_t *b, kimi_err_t *err);

/* what the parallel ranks sync for in the group (group.h tags;
 * the server's step vote is 1, the cpu backend's 2..7) */
#define KIMI_CUDA_TAG_EP_TOKENS   ((uint64_t) 8 << 56)
#define KIMI_CUDA_TAG_NCCL_ID     ((uint64_t) 9 << 56)
#define KIMI_CUDA_TAG_LEAD_STEP   ((uint64_t) 10 << 56)
#define KIMI_CUDA_TAG_LEAD_READY  ((uint64_t) 11 << 56)
#define KIMI_CUDA_TAG_P2P_HANDLE  ((uint64_t) 12 << 56)
#define KIMI_CUDA_TAG_P2P_VOTE    ((uint64_t) 13 << 56)
#define KIMI_CUDA_TAG_LEAD_BLOCKS ((uint64_t) 14 << 56)

/* backend.c: waiting kernels of the peer-memory exchange return (a peer
 * died); no-op without it */
void kimi_cuda_p2p_abort(kimi_cuda_t *b);

/* graphs.c */
int  kimi_cuda_graphs_init(kimi_cuda_t *b, kimi_err_t *err);
int  kimi_cuda_graph_step(kimi_cuda_t *b, uint32_t T, uint32_t rows,
    uint32_t splits, kimi_err_t *err);
void kimi_cuda_graphs_drop(kimi_cuda_t *b);
void kimi_cuda_graphs_free(kimi_cuda_t *b);

#endif
