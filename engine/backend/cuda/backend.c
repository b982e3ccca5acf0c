/*
 * The CUDA backend's vtable: init (shape checks, weight upload, workspaces),
 * the paged latent KV cache, logits and device greedy argmax.
 *
 * Owns:   the device and stream choice, the KV cache allocation (sized by
 *         gpu_memory_utilization; a tensor- or pipeline-parallel rank's
 *         members agree on the smallest), the pinned host buffers of a step, and joining a
 *         parallel group's NCCL communicator (expert, tensor or pipeline
 *         parallel) and a follower's loop.
 * Never:  computes layers (forward.c), converts weights (weights.c), or
 *         samples anything but plain greedy on the device: other rows go
 *         to the host sampler (engine/sample), their logits copied alone.
 * Holds:  a model the kernels cannot take is refused at init with the name
 *         of the dimension; no step ever runs on one.
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/kimi_log.h"
#include "../../sample/sample.h"
#include "../../sample/sample_pool.h"
#include "cuda_impl.h"


#define KIMI_CUDA_DEFAULT_TOKENS  2048
#define KIMI_CUDA_DEFAULT_ROWS    256
#define KIMI_CUDA_EDITS           65536   /* logit edits a step, at most */


/* The shapes the kernels take; H heads per rank, tp ranks, the shard's
 * first head (a whole model: all heads, 1, 0). */
static int
kimi_cuda_check_shapes(const kimi_model_config_t *c, uint32_t H, uint32_t tp,
    uint32_t head_first, kimi_err_t *err)
{
#define KIMI_NEED(cond, ...)                                                  \
    if (!(cond)) return kimi_err_set(err, KIMI_EUNSUPPORTED,                 \
                                     "cuda backend: " __VA_ARGS__)

    KIMI_NEED(c->hidden_size % 1024 == 0, "hidden_size %u is not a multiple "
              "of 1024 (router and lm_head kernels)", c->hidden_size);
    KIMI_NEED(c->kv_lora_rank == 512 && c->qk_rope_head_dim == 64,
              "kv_lora_rank %u + qk_rope_head_dim %u: the MLA kernels take "
              "512 + 64 only", c->kv_lora_rank, c->qk_rope_head_dim);
    KIMI_NEED(H <= 256, "num_attention_heads %u (per tensor-parallel "
              "rank): the MLA kernels take at most 256", H);
    KIMI_NEED(tp == 1 || (c->qk_nope_head_dim + c->v_head_dim) * head_first
              % 128 == 0, "a tensor-parallel shard's kv_b_proj rows do not "
              "start on a 128-row FP8 block (heads from %u)", head_first);
    /* one rank's dense MLP of any width is padded to 128 columns at
     * upload (DeepSeek-V2-Lite's 10944); a shard must fall on blocks */
    KIMI_NEED((tp == 1 || c->intermediate_size % (128 * tp) == 0)
              && c->moe_intermediate_size % (128 * tp) == 0,
              "intermediate_size %u / moe_intermediate_size %u do not split"
              " over %u tensor-parallel ranks on 128 columns",
              c->intermediate_size, c->moe_intermediate_size, tp);
    KIMI_NEED(c->q_lora_rank % 128 == 0,
              "q_lora_rank %u is not a multiple of 128 (or null)",
              c->q_lora_rank);
    KIMI_NEED((H * c->v_head_dim) % 128 == 0 && c->v_head_dim <= 512,
              "num_attention_heads * v_head_dim %u is not a multiple of 128",
              H * c->v_head_dim);
    KIMI_NEED((H * kimi_model_qk_head_dim(c)) % 32 == 0 && c->qk_nope_head_dim
              <= 1536, "qk_nope_head_dim %u", c->qk_nope_head_dim);
    KIMI_NEED(c->quant_fp8 && c->weight_block_size[0] == 128
              && c->weight_block_size[1] == 128, "the model is not FP8 with "
              "128x128 block scales (no quantization_config): serve it with"
              " --quantization fp8 to quantise its weights at load");

    if (c->n_routed_experts > 0) {
        KIMI_NEED(c->moe_intermediate_size % 128 == 0, "moe_intermediate_size "
                  "%u is not a multiple of 128", c->moe_intermediate_size);
        KIMI_NEED(c->n_routed_experts <= 1024, "n_routed_experts %u > 1024",
                  c->n_routed_experts);
        KIMI_NEED(c->num_experts_per_tok >= 1 && c->num_experts_per_tok <= 16,
                  "num_experts_per_tok %u not in 1..16",
                  c->num_experts_per_tok);
    }

    return 0;
}


int
kimi_backend_cuda_check_config(const kimi_model_config_t *c, kimi_err_t *err)
{
    return kimi_cuda_check_shapes(c, c->num_attention_heads, 1, 0, err);
}


static int
kimi_cuda_check_model(const kimi_model_t *m, kimi_err_t *err)
{
    const kimi_model_config_t  *c = &m->cfg;
    int                         rc;

    rc = kimi_cuda_check_shapes(c, m->n_heads,
                                m->tp_size > 1 ? m->tp_size : 1,
                                m->head_first, err);
    if (rc != 0) {
        return rc;
    }

#undef KIMI_NEED

    return 0;
}


/* Expert parallelism: the experts this rank must hold and has loaded. */
static int
kimi_cuda_check_ep(kimi_cuda_t *b, const kimi_group_t *g, kimi_err_t *err)
{
    const kimi_model_t  *m = b->model;
    uint32_t             W = g ? kimi_group_world(g) : 1;
    uint32_t             r = g ? kimi_group_rank(g) : 0;

    if (b->E > 0 && b->E % W != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda backend: %u routed "
                            "experts do not split over %u expert-parallel "
                            "ranks", b->E, W);
    }

    /* one MoE plan covers the rows of every rank: its workspace grows with
     * W * cap (~0.35 MB a token at Kimi-K2's widths) */
    if (b->E > 0 && W > 1 && (uint64_t) W * b->cap > KIMI_CUDA_PLAN_TOKENS) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda backend: %u expert-"
                            "parallel ranks x --max-num-batched-tokens %u "
                            "exceeds %u rows per MoE plan: lower "
                            "--max-num-batched-tokens to %u", W, b->cap,
                            KIMI_CUDA_PLAN_TOKENS, KIMI_CUDA_PLAN_TOKENS / W);
    }

    b->ep_world = W;
    b->ep_rank = r;
    b->E_local = b->E / W;
    b->expert_first = r * b->E_local;

    /* tensor parallel with expert parallelism: the tensor-parallel ranks
     * split the experts whole (no exchange: every rank routes every token
     * and the FFN's all-reduce sums the ranks' experts) */
    if (g == NULL && m->tp_experts_whole) {
        uint32_t  T = b->tp != NULL ? kimi_group_world(b->tp) : 1;

        if (b->tp == NULL || b->E == 0 || b->E % T != 0) {
            return kimi_err_set(err, KIMI_EINVAL, "cuda backend: routed "
                                "experts split over tensor-parallel ranks "
                                "need the group and E %% %u == 0", T);
        }

        b->tp_ep = 1;
        b->E_local = b->E / T;
        b->expert_first = kimi_group_rank(b->tp) * b->E_local;
        r = kimi_group_rank(b->tp);
        W = T;
    }

    /* expert_last 0: every expert was loaded, ours among them */
    if (b->E > 0 && m->expert_last != 0
        && (m->expert_first > b->expert_first
            || m->expert_last < b->expert_first + b->E_local))
    {
        return kimi_err_set(err, KIMI_EINVAL, "cuda backend: rank %u of %u "
                            "needs experts [%u, %u), the model holds [%u, %u)",
                            r, W, b->expert_first,
                            b->expert_first + b->E_local, m->expert_first,
                            m->expert_last);
    }

    return 0;
}


/* Asked between looks while NCCL settles a call (connection setup on a
 * first send or collective): the group's state, and the processes the
 * leader watches, so a follower that died during it is seen here too. */
static int
kimi_cuda_ep_stop(void *group)
{
    return kimi_group_poll(group);
}


/*
 * Joins the NCCL communicator of a group's ranks (expert or tensor
 * parallel), or with sub < the group's size one communicator per run of
 * sub consecutive ranks (decode context parallelism inside tensor
 * parallelism): the first rank of each makes the ncclUniqueId and hands
 * it over through the node's group (every rank is here, in the same order
 * of group syncs), then a first collective sets up the connections
 * outside any graph capture.  Every wait gives up when the group fails (a
 * rank died): no rank waits for a dead peer.
 */
static int
kimi_cuda_join(kimi_cuda_t *b, kimi_group_t *g, uint32_t sub,
    kimi_nccl_t **comm, kimi_err_t *err)
{
    uint8_t      blob[256];              /* an ncclUniqueId: 128 */
    uint32_t     len = 0, W = kimi_group_world(g), me = kimi_group_rank(g);
    uint32_t     first = me - me % sub;
    size_t       bytes[KIMI_GROUP_MAX_RANKS];
    const void  *in;
    size_t       n;
    int          rc;

    if (me == first) {
        rc = kimi_nccl_unique_id(blob, sizeof(blob), &len, err);
        if (rc != 0) {
            kimi_group_abort(g, err->msg);
            return rc;
        }
    }

    for (uint32_t p = 0; p < W; p++) {
        bytes[p] = me == first && p / sub == me / sub ? 4 + len : 0;

        if (bytes[p] != 0) {
            memcpy(kimi_group_sendbuf(g, p), &len, 4);
            memcpy((uint8_t *) kimi_group_sendbuf(g, p) + 4, blob, len);
        }
    }

    if ((rc = kimi_group_exchange(g, KIMI_CUDA_TAG_NCCL_ID, bytes, err)) != 0) {
        return rc;
    }

    in = kimi_group_recvbuf(g, first, &n);
    if (n < 4) {
        return kimi_err_set(err, KIMI_EIO, "parallel group: no NCCL id from"
                            " rank %u", first);
    }
    memcpy(&len, in, 4);
    if (len > sizeof(blob) || n < 4 + (size_t) len) {
        return kimi_err_set(err, KIMI_EIO, "parallel group: a bad NCCL id"
                            " from rank %u", first);
    }
    memcpy(blob, (const uint8_t *) in + 4, len);

    kimi_log(KIMI_LOG_INFO, "rank %u of %u joins NCCL", me % sub, sub);
    rc = kimi_nccl_init(comm, blob, len, me % sub, sub, kimi_cuda_ep_stop, g,
                        err);
    if (rc != 0) {
        kimi_group_abort(g, err->msg);
        return rc;
    }

    /* the first collective connects the peers (a float sum over y) */
    rc = kimi_nccl_all_reduce_f32(*comm, b->y, 64, b->stream, err);

    if (rc == 0) {
        KIMI_CU(cudaEventRecord(b->ev1, b->stream), err);
        rc = kimi_cuda_wait(b, err);
    }

    return rc;
}


void
kimi_cuda_p2p_abort(kimi_cuda_t *b)
{
    if (b->p2p_abort_h != NULL) {
        *(volatile int *) b->p2p_abort_h = 1;
    }
}


/* This rank's part of mapping every inbox into every GPU: exports its own
 * (cudaMalloc'd, so CUDA IPC can share it), sends the handle to each
 * peer through the group and opens theirs.  0 when this rank can use
 * peer memory; a refusal (no P2P path, IPC unsupported) is a reason in
 * why, not an error: the ranks then vote for the all-to-all. */
static int
kimi_cuda_p2p_map(kimi_cuda_t *b, kimi_group_t *g, const char **why,
    kimi_err_t *err)
{
    kimi_ep_shape_t      sh = { (int) b->ep_world, (int) b->cap,
                                (int) b->top_k, (int) b->E,
                                (int) b->cfg->hidden_size };
    size_t               bytes = kimi_ep_inbox_bytes(&sh), n;
    size_t               sizes[KIMI_GROUP_MAX_RANKS];
    cudaIpcMemHandle_t   h;
    const char          *env = getenv("KIMI_EP_TRANSPORT");
    uint32_t             me = b->ep_rank, q;
    int                  rc;

    *why = NULL;
    memset(&h, 0, sizeof(h));

    if (env != NULL && strcmp(env, "nccl") == 0) {
        *why = "KIMI_EP_TRANSPORT=nccl";

    } else if (kimi_group_spans_nodes(g)) {
        *why = "the ranks span nodes";

    } else if (b->cfg->hidden_size % 1024 != 0) {
        *why = "hidden_size is not a multiple of 1024";

    } else if (cudaMalloc(&b->ep_inbox, bytes) != cudaSuccess
               || cudaMemset(b->ep_inbox, 0, bytes) != cudaSuccess
               || cudaDeviceSynchronize() != cudaSuccess    /* flags 0 */
               || cudaIpcGetMemHandle(&h, b->ep_inbox) != cudaSuccess)
    {
        (void) cudaGetLastError();
        *why = "the inbox could not be allocated or exported";
    }

    /* the exchange happens whatever this rank's answer (peers wait in
     * it); an empty message says "not me" */
    for (q = 0; q < b->ep_world; q++) {
        sizes[q] = *why == NULL ? sizeof(h) : 0;
        memcpy(kimi_group_sendbuf(g, q), &h, sizeof(h));
    }

    if ((rc = kimi_group_exchange(g, KIMI_CUDA_TAG_P2P_HANDLE, sizes, err))
        != 0)
    {
        return rc;
    }

    b->p2p_peer[me] = b->ep_inbox;

    for (q = 0; q < b->ep_world && *why == NULL; q++) {
        const void  *in = kimi_group_recvbuf(g, q, &n);

        if (q == me) {
            continue;
        }

        if (n == 0) {
            *why = "a peer cannot use peer memory";
            break;
        }

        if (n != sizeof(h)) {
            return kimi_err_set(err, KIMI_EIO, "parallel group: a bad IPC "
                                "handle from rank %u", q);
        }

        memcpy(&h, in, sizeof(h));

        if (cudaIpcOpenMemHandle(&b->p2p_peer[q], h,
                                 cudaIpcMemLazyEnablePeerAccess)
            != cudaSuccess)
        {
            (void) cudaGetLastError();
            b->p2p_peer[q] = NULL;
            *why = "a peer's inbox could not be mapped (no P2P path?)";
        }
    }

    if (*why == NULL
        && (cudaMalloc((void **) &b->p2p_peer_d, b->ep_world * sizeof(void *))
            != cudaSuccess
            || cudaMemcpy(b->p2p_peer_d, b->p2p_peer,
                          b->ep_world * sizeof(void *),
                          cudaMemcpyHostToDevice) != cudaSuccess
            || cudaMalloc((void **) &b->p2p_epoch, sizeof(uint64_t))
               != cudaSuccess
            || cudaMemset(b->p2p_epoch, 0, sizeof(uint64_t)) != cudaSuccess
            || cudaHostAlloc((void **) &b->p2p_abort_h, sizeof(int),
                             cudaHostAllocMapped) != cudaSuccess))
    {
        (void) cudaGetLastError();
        *why = "device memory for the barrier";
    }

    return 0;
}


/* Peer memory for the EP exchange when every rank mapped every inbox
 * (all ranks agree through the group); else the NCCL all-to-all. */
static int
kimi_cuda_p2p_join(kimi_cuda_t *b, kimi_group_t *g, kimi_err_t *err)
{
    const char  *why;
    float        vote[KIMI_GROUP_MAX_RANKS];
    uint32_t     q;
    int          all = 1, rc;
    void        *abort_d = NULL;

    if ((rc = kimi_cuda_p2p_map(b, g, &why, err)) != 0) {
        return rc;
    }

    memset(vote, 0, sizeof(vote));
    vote[b->ep_rank] = why == NULL ? 1.0f : 0.0f;

    if ((rc = kimi_group_allreduce_f32(g, KIMI_CUDA_TAG_P2P_VOTE, vote,
                                       b->ep_world, err)) != 0)
    {
        return rc;
    }

    for (q = 0; q < b->ep_world; q++) {
        all &= vote[q] > 0.5f;
    }

    if (!all || cudaHostGetDevicePointer(&abort_d, b->p2p_abort_h, 0)
                != cudaSuccess)
    {
        (void) cudaGetLastError();
        kimi_log(KIMI_LOG_NOTICE, "expert parallel: NCCL all-to-all (peer "
                 "memory: %s)", why ? why : all ? "no device view of the "
                 "abort flag" : "not every rank can use it");
        return 0;
    }

    b->p2p.rank = (int) b->ep_rank;
    b->p2p.peer_inbox = (void *const *) b->p2p_peer_d;
    b->p2p.inbox = b->ep_inbox;
    b->p2p.epoch = b->p2p_epoch;
    b->p2p.abort = (const volatile int *) abort_d;
    b->p2p_on = 1;

    /* the all-to-all's workspace is not needed any more */
    cudaFree(b->ep_ws);
    b->ep_ws = NULL;

    kimi_log(KIMI_LOG_NOTICE, "expert parallel: tokens move over peer "
             "memory (%u inboxes mapped)", b->ep_world);
    return 0;
}


static int
kimi_cuda_ep_join(kimi_cuda_t *b, kimi_group_t *g, kimi_err_t *err)
{
    int  rc;

    b->ep = g;
    if ((rc = kimi_cuda_join(b, g, kimi_group_world(g), &b->nccl, err))
        != 0
        || (rc = kimi_cuda_p2p_join(b, g, err)) != 0)
    {
        return rc;
    }

    kimi_log(KIMI_LOG_NOTICE, "expert parallel: rank %u of %u holds experts"
             " [%u, %u) on device %d, NCCL up", b->ep_rank, b->ep_world,
             b->expert_first, b->expert_first + b->E_local, b->device);
    return 0;
}


static int
kimi_cuda_tp_join(kimi_cuda_t *b, kimi_group_t *g, kimi_err_t *err)
{
    int  rc;

    b->tp = g;
    if ((rc = kimi_cuda_join(b, g, kimi_group_world(g), &b->tp_nccl, err))
        != 0)
    {
        return rc;
    }

    /* decode context parallelism over runs of dcp ranks (all of them, or
     * a communicator of each run) */
    b->dcp_nccl = b->tp_nccl;
    if (b->dcp > 1 && b->dcp < kimi_group_world(g)
        && (rc = kimi_cuda_join(b, g, b->dcp, &b->dcp_own, err)) != 0)
    {
        return rc;
    }
    if (b->dcp_own != NULL) {
        b->dcp_nccl = b->dcp_own;
    }

    if (b->tp_ep) {
        kimi_log(KIMI_LOG_NOTICE, "tensor parallel: rank %u of %u holds "
                 "heads [%u, %u), 1/%u of the dense and shared MLPs and "
                 "routed experts [%u, %u) whole on device %d, NCCL up",
                 kimi_group_rank(g), kimi_group_world(g),
                 b->model->head_first, b->model->head_first + b->H,
                 kimi_group_world(g), b->expert_first,
                 b->expert_first + b->E_local, b->device);
        return 0;
    }

    kimi_log(KIMI_LOG_NOTICE, "tensor parallel: rank %u of %u holds heads"
             " [%u, %u) and 1/%u of every MLP on device %d, NCCL up",
             kimi_group_rank(g), kimi_group_world(g), b->model->head_first,
             b->model->head_first + b->H, kimi_group_world(g), b->device);
    return 0;
}


/* The stages of a pipeline: which layers this one runs (the model must
 * hold them) and the first transfer on every edge of the ring (k to
 * k + 1, the last to 0), outside any graph capture: NCCL connects a pair
 * of ranks at their first send / receive. */
static int
kimi_cuda_pp_join(kimi_cuda_t *b, kimi_group_t *g, kimi_err_t *err)
{
    uint32_t  P = kimi_group_world(g), k = kimi_group_rank(g);
    int       rc;

    b->pp = g;
    if ((rc = kimi_cuda_join(b, g, kimi_group_world(g), &b->pp_nccl, err))
        != 0)
    {
        return rc;
    }

    if ((rc = kimi_nccl_group_start(err)) != 0
        || (rc = kimi_nccl_send(b->pp_nccl, b->y, 256, (k + 1) % P,
                                b->stream, err)) != 0
        || (rc = kimi_nccl_recv(b->pp_nccl, b->h, 256, (k + P - 1) % P,
                                b->stream, err)) != 0
        || (rc = kimi_nccl_group_end(b->pp_nccl, err)) != 0)
    {
        kimi_group_abort(g, err->msg);
        return rc;
    }

    KIMI_CU(cudaEventRecord(b->ev1, b->stream), err);
    if ((rc = kimi_cuda_wait(b, err)) != 0) {
        return rc;
    }

    kimi_log(KIMI_LOG_NOTICE, "pipeline parallel: stage %u of %u runs layers"
             " [%u, %u)%s on device %d, NCCL up", k, P, b->l_first,
             b->l_last, k == 0 ? ", the embedding and lm_head" : "",
             b->device);
    return 0;
}


int
kimi_backend_cuda_followers_ready(kimi_backend_t *base, kimi_err_t *err)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;
    int           any, all;

    if (b->lead == NULL) {
        return 0;
    }

    return kimi_group_vote(b->lead, KIMI_CUDA_TAG_LEAD_READY, 1, 1, &any,
                           &all, err);
}


int
kimi_backend_cuda_follow(kimi_backend_t *base, kimi_err_t *err)
{
    kimi_cuda_t   *b = (kimi_cuda_t *) base;
    kimi_batch_t   batch;
    kimi_err_t     ferr;
    int            stop = 0, rc;

    if (b->lead == NULL || kimi_group_rank(b->lead) == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda: not a tensor- or"
                            " pipeline-parallel follower");
    }

    for ( ;; ) {
        if ((rc = kimi_step_recv(b->lead, KIMI_CUDA_TAG_LEAD_STEP,
                                 &b->lead_buf, &batch, &stop, err)) != 0)
        {
            return rc;
        }

        if (stop) {
            return 0;
        }

        /* the leader hits the same batch error and reports it; only a
         * broken group ends the follower */
        rc = kimi_cuda_forward_local(b, &batch, &ferr);
        if (rc != 0 && kimi_group_failed(b->lead)) {
            *err = ferr;
            return rc;
        }
    }
}


/* The smallest of the members' KV block counts, to every member: the
 * leader's scheduler hands out block ids that every follower's cache must
 * hold (a follower that refused a step would leave the others waiting in
 * NCCL). */
static int
kimi_cuda_lead_blocks(kimi_cuda_t *b, uint32_t *n, kimi_err_t *err)
{
    uint32_t     P = kimi_group_world(b->lead), got;
    size_t       bytes[KIMI_GROUP_MAX_RANKS], len;
    const void  *in;
    int          rc;

    for (uint32_t q = 0; q < P; q++) {
        memcpy(kimi_group_sendbuf(b->lead, q), n, sizeof(*n));
        bytes[q] = sizeof(*n);
    }

    if ((rc = kimi_group_exchange(b->lead, KIMI_CUDA_TAG_LEAD_BLOCKS, bytes,
                                  err)) != 0)
    {
        return rc;
    }

    for (uint32_t q = 0; q < P; q++) {
        in = kimi_group_recvbuf(b->lead, q, &len);

        if (len != sizeof(got)) {
            return kimi_err_set(err, KIMI_EIO, "parallel group: no KV block"
                                " count from member %u", q);
        }

        memcpy(&got, in, sizeof(got));
        *n = got < *n ? got : *n;
    }

    return 0;
}


static int
kimi_cuda_kv_init(kimi_backend_t *base, const kimi_kv_params_t *p,
    uint32_t *n_blocks_out, kimi_err_t *err)
{
    kimi_cuda_t                *b = (kimi_cuda_t *) base;
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    L = b->l_last - b->l_first;
    uint32_t                    W = c->kv_lora_rank + c->qk_rope_head_dim;
    uint32_t                    bs = p->block_size ? p->block_size : 64;
    size_t                      free_b, total_b, per_block, meta, budget;
    double                      util;
    uint64_t                    n;
    cudaError_t                 ce;

    if (b->kv != NULL) {
        return kimi_err_set(err, KIMI_ESTATE, "cuda kv: already initialised");
    }

    switch (p->dtype) {
    case KIMI_KV_DTYPE_AUTO: b->kv_fp8 = 0; break;
    case KIMI_KV_DTYPE_FP8:  b->kv_fp8 = 1; break;
    default:
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "cuda kv: dtype %d (bf16 "
                            "or fp8 only)", (int) p->dtype);
    }

    if (bs == 0 || bs > 4096) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda kv: block_size %u", bs);
    }

    util = p->gpu_memory_utilization > 0 ? p->gpu_memory_utilization : 0.9;

    if (util > 1.0) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda kv: gpu_memory_utilization"
                            " %.3f > 1", util);
    }

    /* decode context parallel: the scheduler's block of bs tokens is a
     * block of bs / dcp rows on each rank */
    if (bs % b->dcp != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda kv: block_size %u does "
                            "not split over %u decode-context-parallel "
                            "ranks", bs, b->dcp);
    }

    b->vbs = bs;
    b->bs = bs / b->dcp;
    b->max_bt = (b->base.max_model_len + bs - 1) / bs;

    /* per-step staging first: it is part of what the cache must leave */
    meta = (5 * (size_t) b->cap + (size_t) b->cap * b->max_bt)
           * sizeof(int32_t);
    b->meta_words = meta / sizeof(int32_t);
    KIMI_CU(cudaMallocHost((void **) &b->meta_h, meta), err);
    KIMI_CU(cudaMalloc((void **) &b->meta_d, meta), err);
    KIMI_CU(cudaMemset(b->meta_d, 0, meta), err);
    memset(b->meta_h, 0, meta);

    KIMI_CU(cudaMemGetInfo(&free_b, &total_b), err);

    /* what may be used in all, minus what is already used */
    budget = (size_t) (util * (double) total_b);
    budget = budget > total_b - free_b ? budget - (total_b - free_b) : 0;

    per_block = (size_t) b->bs * W * (b->kv_fp8 ? 1 : 2)
                + (b->kv_fp8 ? (size_t) b->bs * sizeof(float) : 0);
    n = budget / (per_block * L);

    if (p->max_blocks && n > p->max_blocks) {
        n = p->max_blocks;
    }

    if (n > UINT32_MAX / 2) {
        n = UINT32_MAX / 2;
    }

    /* one scheduler (the leader's) hands out the blocks of every member */
    if (b->lead != NULL) {
        uint32_t  mine = (uint32_t) n;
        int       rc = kimi_cuda_lead_blocks(b, &mine, err);

        if (rc != 0) {
            return rc;
        }

        n = mine;
    }

    if (n == 0) {
        return kimi_err_set(err, KIMI_ENOMEM, "cuda kv: gpu_memory_utilization"
                            " %.2f of %.1f GiB leaves no room for a %u-token "
                            "block in %u layers (%.1f GiB already used)",
                            util, total_b / 1073741824.0, bs, L,
                            (total_b - free_b) / 1073741824.0);
    }

    ce = cudaMalloc(&b->kv, (size_t) n * L * b->bs * W * (b->kv_fp8 ? 1 : 2));

    if (ce == cudaSuccess && b->kv_fp8) {
        ce = cudaMalloc((void **) &b->kv_scale,
                        (size_t) n * L * b->bs * sizeof(float));
    }

    if (ce != cudaSuccess) {
        (void) cudaGetLastError();
        cudaFree(b->kv);
        b->kv = NULL;
        return kimi_err_set(err, KIMI_ENOMEM, "cuda kv: %llu blocks: %s",
                            (unsigned long long) n, cudaGetErrorString(ce));
    }

    b->n_blocks = (uint32_t) n;
    *n_blocks_out = (uint32_t) n;
    return 0;
}


static const float *
kimi_cuda_logits(kimi_backend_t *base, uint32_t *n_rows, uint32_t *vocab)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;
    size_t        n = (size_t) b->n_rows * b->cfg->vocab_size;

    *n_rows = b->n_rows;
    *vocab = b->cfg->vocab_size;

    /* copied on first use: a step that samples on the device never pays
     * for the [rows][vocab] transfer */
    if (!b->logits_on_host && n > 0) {
        if (cudaMemcpy(b->logits_h, b->logits, n * sizeof(float),
                       cudaMemcpyDeviceToHost) != cudaSuccess)
        {
            (void) cudaGetLastError();
            *n_rows = 0;
            return NULL;
        }

        b->logits_on_host = 1;
    }

    return b->logits_h;
}


int
kimi_backend_cuda_greedy(kimi_backend_t *base, int32_t *ids, uint32_t *n_rows,
    kimi_err_t *err)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;
    int           rc;

    *n_rows = b->n_rows;

    if (b->n_rows == 0) {
        return 0;
    }

    if (b->greedy_on_host) {               /* found within the forward */
        memcpy(ids, b->ids_h, b->n_rows * sizeof(int32_t));
        return 0;
    }

    if ((rc = kimi_sample_greedy(b->logits, (int) b->n_rows,
                                 (int) b->cfg->vocab_size,
                                 (int) b->cfg->vocab_size, b->argmax,
                                 b->stream, err)) != 0)
    {
        return rc;
    }

    KIMI_CU(cudaMemcpyAsync(ids, b->argmax, b->n_rows * sizeof(int32_t),
                            cudaMemcpyDeviceToHost, b->stream), err);
    KIMI_CU(cudaStreamSynchronize(b->stream), err);
    return 0;
}


/* A row the device can sample once its logits are edited: logit_bias,
 * penalties or min_tokens suppression, and nothing the edits cannot say
 * (allowed_token_ids, JSON or guided constraints, bad_words, logprobs:
 * those are of the raw logits). */
static int
kimi_cuda_editable(const kimi_sample_req_t *req)
{
    const kimi_shm_sampling_t  *sp = req->sampling;

    return req->prompt_next == 0 && !sp->allowed_only && !sp->json_object
           && req->n_guided == 0 && req->n_bad == 0 && !sp->logprobs
           && sp->top_logprobs == 0
           && (sp->n_logit_bias > 0 || req->n_output < sp->min_tokens
               || sp->repetition_penalty != 1.0f
               || sp->presence_penalty != 0.0f
               || sp->frequency_penalty != 0.0f);
}


/* The edit of token id in row (one a token, found through edit_at). */
static kimi_logit_edit_t *
kimi_cuda_edit_of(kimi_cuda_t *b, uint32_t row, uint32_t id, uint32_t *n)
{
    kimi_logit_edit_t  *e;

    if (b->edit_at[id] >= 0) {
        return &b->edits_h[b->edit_at[id]];
    }

    if (*n == b->edit_cap) {
        return NULL;
    }

    e = &b->edits_h[*n];
    memset(e, 0, sizeof(*e));
    e->at = (int64_t) row * b->cfg->vocab_size + id;
    e->rep = 1.0f;
    b->edit_at[id] = (int32_t) (*n)++;
    return e;
}


/* Row's edits appended at *n, as kimi_sample_process would change its
 * logits; 0, or -1 (nothing appended) when they do not fit or a logit_bias
 * names a token twice (the host then adds twice, in its order). */
static int
kimi_cuda_row_edits(kimi_cuda_t *b, uint32_t row, const kimi_sample_req_t *req,
    uint32_t *n)
{
    const kimi_shm_sampling_t  *sp = req->sampling;
    uint32_t                    V = b->cfg->vocab_size, first = *n, id;
    uint32_t                    n_all = req->n_prompt + req->n_output;
    kimi_logit_edit_t          *e;
    int                         ok = 1;

    for (uint32_t i = 0; ok && i < sp->n_logit_bias; i++) {
        id = (uint32_t) sp->logit_bias[i].token;
        if (id >= V) {
            continue;
        }
        e = kimi_cuda_edit_of(b, row, id, n);
        ok = e != NULL && !(e->flags & KIMI_EDIT_BIAS);
        if (ok) {
            e->flags |= KIMI_EDIT_BIAS;
            e->add = sp->logit_bias[i].bias;
        }
    }

    if (sp->repetition_penalty != 1.0f || sp->presence_penalty != 0.0f
        || sp->frequency_penalty != 0.0f)
    {
        for (uint32_t i = 0; ok && i < n_all; i++) {
            id = (uint32_t) req->tokens[i];
            if (id >= V) {
                continue;
            }
            e = kimi_cuda_edit_of(b, row, id, n);
            ok = e != NULL;
            if (ok) {
                e->flags |= KIMI_EDIT_SEEN;
                e->rep = sp->repetition_penalty;
                if (i >= req->n_prompt) {
                    e->flags |= KIMI_EDIT_COUNTED;
                    b->edit_count[id]++;
                }
            }
        }
    }

    if (req->n_output < sp->min_tokens) {
        for (uint32_t i = 0; ok && i < sp->n_stop_ids; i++) {
            if ((uint32_t) sp->stop_ids[i] >= V) {
                continue;               /* checked at admission; be safe */
            }
            e = kimi_cuda_edit_of(b, row, (uint32_t) sp->stop_ids[i], n);
            ok = e != NULL;
            if (ok) {
                e->flags |= KIMI_EDIT_MASKED;
            }
        }
        for (uint32_t i = 0; ok && !sp->ignore_eos && i < req->n_eos; i++) {
            if ((uint32_t) req->eos_ids[i] < V) {
                e = kimi_cuda_edit_of(b, row, (uint32_t) req->eos_ids[i], n);
                ok = e != NULL;
                if (ok) {
                    e->flags |= KIMI_EDIT_MASKED;
                }
            }
        }
    }

    for (uint32_t k = first; k < *n; k++) {
        e = &b->edits_h[k];
        id = (uint32_t) (e->at - (int64_t) row * V);
        if (e->flags & KIMI_EDIT_COUNTED) {
            e->fc = sp->frequency_penalty * (float) b->edit_count[id];
            e->pres = sp->presence_penalty;
        }
        b->edit_at[id] = -1;
        b->edit_count[id] = 0;
    }

    if (!ok) {
        *n = first;
        return -1;
    }

    return 0;
}


/* The vtable's sample: plain greedy rows (kimi_sample_is_plain_greedy)
 * from one device argmax + logprob over every row, without copying their
 * logits (already on the host when the step saw a greedy_hint); rows of
 * temperature, min_p, top_k and top_p alone (kimi_sample_is_plain_random)
 * drawn on the device with the row's own uniform, taken from its RNG here
 * as the host sampler would; rows with logit_bias, penalties or min_tokens
 * (kimi_cuda_editable) the same way after their logits are edited as the
 * host would process them, and restored after; the others through the
 * host sampler, each row copied alone.  Same tokens as the host path (same
 * tie rule; a draw within ~1e-6 of a boundary, or exact ties cut by top_p,
 * may differ), logprob to ~1e-6. */
static int
kimi_cuda_sample(kimi_backend_t *base, const kimi_sample_req_t *reqs,
    uint32_t n, kimi_sample_out_t *out, kimi_err_t *err)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;
    uint32_t      V = b->cfg->vocab_size, n_dev = 0, n_draw = 0, n_host, i;
    uint32_t      n_edits = 0, n_edited_greedy = 0;
    size_t        row = (size_t) V * sizeof(float);

    if (n != b->n_rows) {
        return kimi_err_set(err, KIMI_ESTATE, "cuda: %u rows to sample, the "
                            "step made %u", n, b->n_rows);
    }

    for (i = 0; i < n; i++) {
        const kimi_shm_sampling_t  *sp = reqs[i].sampling;
        kimi_draw_row_t            *t = &b->draw_h[i];
        int                         edited = 0;

        b->skip[i] = (uint8_t) kimi_sample_is_plain_greedy(&reqs[i]);
        n_dev += b->skip[i];
        t->inv_t = 0.0f;

        if (!b->skip[i] && b->edits_on && kimi_cuda_editable(&reqs[i])) {
            edited = kimi_cuda_row_edits(b, i, &reqs[i], &n_edits) == 0;
        }

        if (edited && kimi_sample_is_greedy(sp)) {
            b->skip[i] = 1;
            n_dev++;
            n_edited_greedy++;

        } else if (!b->skip[i]
                   && (edited || kimi_sample_is_plain_random(&reqs[i])))
        {
            b->rng_save[i] = *reqs[i].rng;
            t->inv_t = 1.0f / sp->temperature;
            t->log_min_p = sp->min_p > 0.0f ? logf(sp->min_p) : -INFINITY;
            t->top_p = sp->top_p;
            t->top_k = sp->top_k;
            t->u = kimi_rng_uniform(reqs[i].rng);
            b->skip[i] = 1;
            n_draw++;
        }
    }

    n_host = n - n_dev - n_draw;

    if (n_edits > 0) {
        KIMI_CU(cudaMemcpyAsync(b->edits_d, b->edits_h, n_edits
                                * sizeof(kimi_logit_edit_t),
                                cudaMemcpyHostToDevice, b->stream), err);
        KIMI_K(kimi_logit_edit(b->logits, b->edits_d, (int) n_edits,
                               b->stream, err));
    }

    if (n_dev > 0 && (!b->greedy_on_host || n_edited_greedy > 0)) {
        KIMI_K(kimi_sample_greedy_logprob(b->logits, (int) n, (int) V,
                                          (int) V, b->argmax, b->lp,
                                          b->stream, err));
        KIMI_CU(cudaMemcpyAsync(b->ids_h, b->argmax, n * sizeof(int32_t),
                                cudaMemcpyDeviceToHost, b->stream), err);
        KIMI_CU(cudaMemcpyAsync(b->lp_h, b->lp, n * sizeof(float),
                                cudaMemcpyDeviceToHost, b->stream), err);
        b->greedy_on_host = 0;
    }

    if (n_draw > 0) {
        KIMI_CU(cudaMemcpyAsync(b->draw, b->draw_h, n * sizeof(kimi_draw_row_t),
                                cudaMemcpyHostToDevice, b->stream), err);
        KIMI_K(kimi_sample_draw(b->logits, (int) n, (int) V, (int) V,
                                       b->draw, b->drawn, b->stream, err));
        KIMI_CU(cudaMemcpyAsync(b->drawn_h, b->drawn, n * sizeof(int32_t),
                                cudaMemcpyDeviceToHost, b->stream), err);
    }

    if (n_edits > 0) {
        /* the raw logits again, for the host rows and logits() */
        KIMI_K(kimi_logit_restore(b->logits, b->edits_d, (int) n_edits,
                                  b->stream, err));
    }

    for (i = 0; i < n && !b->logits_on_host; i++) {
        if (!b->skip[i]) {
            KIMI_CU(cudaMemcpyAsync((char *) b->logits_h + i * row,
                                    (char *) b->logits + i * row, row,
                                    cudaMemcpyDeviceToHost, b->stream), err);
        }
    }

    if (n_host > 0 || n_draw > 0 || !b->greedy_on_host) {
        KIMI_CU(cudaStreamSynchronize(b->stream), err);
    }

    for (i = 0; i < n; i++) {
        if (b->skip[i] && b->draw_h[i].inv_t == 0.0f) {
            /* greedy: plain, or edited (then no logprob was asked) */
            memset(&out[i].tok, 0, sizeof(out[i].tok));
            out[i].tok.token = b->ids_h[i];

            if (reqs[i].sampling->logprobs) {
                out[i].tok.logprob = b->lp_h[i];
            }

        } else if (b->draw_h[i].inv_t > 0.0f) {
            if (b->drawn_h[i] >= 0 && (uint32_t) b->drawn_h[i] < V) {
                memset(&out[i].tok, 0, sizeof(out[i].tok));
                out[i].tok.token = b->drawn_h[i];
                continue;
            }

            /* no finite logit: the host's fallback, from the same state */
            *reqs[i].rng = b->rng_save[i];
            b->skip[i] = 0;
            n_host++;

            if (!b->logits_on_host) {
                KIMI_CU(cudaMemcpy((char *) b->logits_h + i * row,
                                   (char *) b->logits + i * row, row,
                                   cudaMemcpyDeviceToHost), err);
            }
        }
    }

    /* the rest on the host, several rows at once */
    return n_host > 0 ? kimi_sample_pool_run(b->sampler, b->logits_h, V, reqs,
                                             n, b->skip, out, err)
                      : 0;
}


double
kimi_backend_cuda_last_step_us(kimi_backend_t *base)
{
    return ((kimi_cuda_t *) base)->last_ms * 1000.0;
}


void
kimi_backend_cuda_set_profile(kimi_backend_t *base, int on)
{
    ((kimi_cuda_t *) base)->prof = on;
}


void
kimi_backend_cuda_set_cublaslt(kimi_backend_t *base, int on)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;

    if (b->lt_fp8 != on) {
        kimi_cuda_graphs_drop(b);   /* the captured steps hold the other GEMMs */
    }

    b->lt_fp8 = on;
}


void
kimi_backend_cuda_set_mla_expand(kimi_backend_t *base, uint32_t min_tokens,
    uint32_t max_prefix_x)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;

    /* only where init found the form usable (its buffers exist) */
    b->expand_min = b->ex_kv != NULL ? min_tokens : 0;
    b->expand_prefix = max_prefix_x;
}


void
kimi_backend_cuda_set_graphs(kimi_backend_t *base, int on)
{
    ((kimi_cuda_t *) base)->graphs_on = on;
}


void
kimi_backend_cuda_graph_stats(kimi_backend_t *base, uint64_t *captures,
    uint64_t *launches)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;

    *captures = b->graph_captures;
    *launches = b->graph_launches;
}


int
kimi_backend_cuda_profile(kimi_backend_t *base, kimi_cuda_profile_t *p,
    kimi_err_t *err)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;
    uint32_t      L = b->cfg->num_hidden_layers;
    float         ms;

    memset(p, 0, sizeof(*p));

    if (!b->prof || b->n_rows == 0) {
        return kimi_err_set(err, KIMI_ESTATE, "cuda profile: no profiled "
                            "step with logits");
    }

    if (b->pp != NULL) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "cuda profile: a "
                            "pipeline stage times only its own layers");
    }

    KIMI_CU(cudaEventElapsedTime(&ms, b->pev[0], b->pev[1]), err);
    p->embed_us = ms * 1e3;

    for (uint32_t l = 0; l < L; l++) {
        double  *sub[5] = { &p->attn_proj_us, &p->absorb_q_us, &p->mla_us,
                            &p->absorb_o_us, &p->attn_out_us };
        uint32_t prev = l == 0 ? 1 : KIMI_CUDA_MARK(l - 1, 5);

        for (uint32_t k = 0; k < 5; k++) {
            KIMI_CU(cudaEventElapsedTime(&ms, b->pev[prev],
                                         b->pev[KIMI_CUDA_MARK(l, k)]), err);
            *sub[k] += ms * 1e3;
            p->attn_us += ms * 1e3;
            prev = KIMI_CUDA_MARK(l, k);
        }

        KIMI_CU(cudaEventElapsedTime(&ms, b->pev[KIMI_CUDA_MARK(l, 4)],
                                     b->pev[KIMI_CUDA_MARK(l, 5)]), err);

        if (b->layers[l].is_moe) {
            p->ffn_moe_us += ms * 1e3;

        } else {
            p->ffn_dense_us += ms * 1e3;
        }
    }

    KIMI_CU(cudaEventElapsedTime(&ms, b->pev[KIMI_CUDA_MARK(L - 1, 5)],
                                 b->pev[KIMI_CUDA_MARKS(L) - 1]), err);
    p->head_us = ms * 1e3;
    return 0;
}


static void
kimi_cuda_free(kimi_backend_t *base)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;

    if (b == NULL) {
        return;
    }

    if (b->lead != NULL && kimi_group_rank(b->lead) == 0
        && !kimi_group_failed(b->lead))
    {
        kimi_err_t  err;

        /* the followers leave their loop */
        (void) kimi_step_send(b->lead, KIMI_CUDA_TAG_LEAD_STEP,
                              KIMI_STEP_STOP, NULL, &err);
    }

    if (b->stream != NULL) {
        (void) cudaStreamSynchronize(b->stream);
        (void) cudaStreamDestroy(b->stream);
    }

    kimi_cuda_graphs_free(b);

    if (b->ev0 != NULL) {
        (void) cudaEventDestroy(b->ev0);
    }

    if (b->ev1 != NULL) {
        (void) cudaEventDestroy(b->ev1);
    }

    for (uint32_t i = 0; b->pev != NULL
                         && i < KIMI_CUDA_MARKS(b->cfg->num_hidden_layers); i++)
    {
        if (b->pev[i] != NULL) {
            (void) cudaEventDestroy(b->pev[i]);
        }
    }

    free(b->pev);

    /* abort, not destroy: the stream is idle, and a destroy may wait for
     * peers that already exited (or died) */
    kimi_nccl_t  *comms[4] = { b->nccl, b->tp_nccl, b->dcp_own, b->pp_nccl };

    kimi_nccl_abort_all(comms, 4, KIMI_NCCL_ABORT_MS);
    for (int i = 0; i < 4; i++) {
        kimi_nccl_free(comms[i]);
    }
    kimi_step_buf_free(&b->lead_buf);
    cudaFree(b->ep_ws);
    cudaFree(b->ep_moe_ws);

    for (uint32_t q = 0; q < KIMI_GROUP_MAX_RANKS; q++) {
        if (b->p2p_peer[q] != NULL && b->p2p_peer[q] != b->ep_inbox) {
            cudaIpcCloseMemHandle(b->p2p_peer[q]);
        }
    }

    cudaFree(b->ep_inbox);
    cudaFree(b->p2p_peer_d);
    cudaFree(b->p2p_epoch);
    cudaFreeHost(b->p2p_abort_h);
    cudaFree(b->warena);
    cudaFree(b->sarena);
    cudaFree(b->kv);
    cudaFree(b->kv_scale);
    cudaFree(b->meta_d);
    cudaFreeHost(b->meta_h);
    cudaFreeHost(b->logits_h);
    cudaFreeHost(b->ids_h);
    cudaFreeHost(b->lp_h);
    cudaFreeHost(b->draw_h);
    cudaFreeHost(b->drawn_h);
    cudaFreeHost(b->edits_h);
    cudaFree(b->edits_d);
    free(b->edit_at);
    free(b->edit_count);
    free(b->rng_save);
    free(b->skip);
    kimi_cublaslt_destroy(b->lt);
    kimi_sample_pool_free(b->sampler);
    free(b->layers);
    free(b);
}


static const kimi_backend_ops_t  kimi_cuda_ops = {
    .name = "cuda",
    .kv_init = kimi_cuda_kv_init,
    .forward = kimi_cuda_forward,
    .logits = kimi_cuda_logits,
    .sample = kimi_cuda_sample,
    .seq_free = NULL,                     /* no per-sequence state */
    .free = kimi_cuda_free,
};


kimi_backend_cuda_params_t
kimi_backend_cuda_default_params(void)
{
    kimi_backend_cuda_params_t  p = { 0, KIMI_CUDA_DEFAULT_TOKENS, 0,
                                       KIMI_CUDA_DEFAULT_ROWS, NULL, NULL,
                                       0, NULL, NULL };

    return p;
}


int
kimi_backend_cuda_init_params(kimi_backend_t **out, struct kimi_model *model,
    const kimi_backend_cuda_params_t *p, kimi_err_t *err)
{
    const kimi_model_config_t  *c = &model->cfg;
    kimi_cuda_t                *b;
    double                      factor;
    int                         n_dev = 0, rc;

    *out = NULL;

    if ((rc = kimi_cuda_check_model(model, err)) != 0) {
        return rc;
    }

    if (p->max_batched_tokens == 0
        || p->max_batched_tokens > KIMI_CUDA_PLAN_TOKENS)
    {
        return kimi_err_set(err, KIMI_EINVAL, "cuda backend: "
                            "--max-num-batched-tokens %u not in 1..%u",
                            p->max_batched_tokens, KIMI_CUDA_PLAN_TOKENS);
    }

    KIMI_CU(cudaGetDeviceCount(&n_dev), err);

    if (p->device < 0 || p->device >= n_dev) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda backend: device %d of %d",
                            p->device, n_dev);
    }

    KIMI_CU(cudaSetDevice(p->device), err);

    b = calloc(1, sizeof(*b));

    if (b == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "cuda backend: out of memory");
    }

    b->base.ops = &kimi_cuda_ops;
    b->base.vocab_size = c->vocab_size;
    b->base.max_model_len = p->max_model_len ? p->max_model_len
                                             : c->max_position_embeddings;
    b->model = model;
    b->cfg = c;
    b->device = p->device;
    b->cap = p->max_batched_tokens;
    b->max_rows = p->max_logit_rows ? p->max_logit_rows : 1;
    b->max_rows = b->max_rows < b->cap ? b->max_rows : b->cap;
    b->E = c->n_routed_experts;
    b->top_k = c->num_experts_per_tok;
    b->shared = c->n_shared_experts > 0;
    b->shared_in_moe = c->n_shared_experts == 1 && !model->tp_experts_whole;
    {
        uint32_t  tp = model->tp_size > 1 ? model->tp_size : 1;

        b->H = model->n_heads;
        /* zero rows of gate / up and columns of down pad a dense MLP to
         * whole 128-column blocks: silu(0) * 0 adds nothing */
        b->I_dense = tp > 1 ? c->intermediate_size / tp
                            : (c->intermediate_size + 127) / 128 * 128;
        /* tensor + expert parallel: routed experts whole, E / tp of them */
        b->I_moe = c->moe_intermediate_size
                   / (model->tp_experts_whole ? 1 : tp);
        b->I_shared = c->moe_intermediate_size * c->n_shared_experts / tp;
    }
    b->softmax_scale = kimi_model_softmax_scale(c);
    b->layers = calloc(c->num_hidden_layers, sizeof(kimi_cuda_layer_t));

    if (b->layers == NULL) {
        free(b);
        return kimi_err_set(err, KIMI_ENOMEM, "cuda backend: out of memory");
    }

    factor = c->rope_is_yarn ? c->rope_factor : 1.0;

    if ((rc = kimi_rope_yarn_init(&b->rope, (int) c->qk_rope_head_dim,
                                  c->rope_theta, factor,
                                  (int) c->rope_original_max_position_embeddings,
                                  c->rope_beta_fast, c->rope_beta_slow,
                                  c->rope_mscale, c->rope_mscale_all_dim,
                                  err)) != 0)
    {
        goto failed;
    }

#define KIMI_TRY(call)                                                        \
    do {                                                                      \
        cudaError_t  e_ = (call);                                             \
        if (e_ != cudaSuccess) {                                              \
            rc = kimi_err_set(err, KIMI_ECUDA, "cuda: %s: %s", #call,         \
                              cudaGetErrorString(e_));                        \
            goto failed;                                                      \
        }                                                                     \
    } while (0)

    KIMI_TRY(cudaDeviceGetAttribute(&b->n_sm, cudaDevAttrMultiProcessorCount,
                                    p->device));
    KIMI_TRY(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    KIMI_TRY(cudaEventCreate(&b->ev0));
    KIMI_TRY(cudaEventCreate(&b->ev1));

    b->pev = calloc(KIMI_CUDA_MARKS(c->num_hidden_layers),
                    sizeof(cudaEvent_t));
    b->rng_save = calloc(b->max_rows, sizeof(kimi_rng_t));
    b->skip = calloc(b->max_rows, 1);

    if (b->pev == NULL || b->rng_save == NULL || b->skip == NULL) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "cuda backend: out of memory");
        goto failed;
    }

    for (uint32_t i = 0; i < KIMI_CUDA_MARKS(c->num_hidden_layers); i++) {
        KIMI_TRY(cudaEventCreate(&b->pev[i]));
    }
    KIMI_TRY(cudaMallocHost((void **) &b->logits_h, (size_t) b->max_rows
                            * c->vocab_size * sizeof(float)));
    KIMI_TRY(cudaMallocHost((void **) &b->ids_h, (size_t) b->max_rows
                            * sizeof(int32_t)));
    KIMI_TRY(cudaMallocHost((void **) &b->lp_h, (size_t) b->max_rows
                            * sizeof(float)));
    KIMI_TRY(cudaMallocHost((void **) &b->draw_h, (size_t) b->max_rows
                            * sizeof(kimi_draw_row_t)));
    KIMI_TRY(cudaMallocHost((void **) &b->drawn_h, (size_t) b->max_rows
                            * sizeof(int32_t)));
    b->edit_cap = KIMI_CUDA_EDITS;
    KIMI_TRY(cudaMallocHost((void **) &b->edits_h, (size_t) b->edit_cap
                            * sizeof(kimi_logit_edit_t)));
    KIMI_TRY(cudaMalloc((void **) &b->edits_d, (size_t) b->edit_cap
                        * sizeof(kimi_logit_edit_t)));
    b->edit_at = malloc((size_t) c->vocab_size * sizeof(int32_t));
    b->edit_count = calloc(c->vocab_size, sizeof(uint32_t));

    if (b->edit_at == NULL || b->edit_count == NULL) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "cuda backend: out of memory");
        goto failed;
    }

    memset(b->edit_at, 0xff, (size_t) c->vocab_size * sizeof(int32_t));
    {
        const char  *env = getenv("KIMI_DEVICE_EDITS");

        /* KIMI_DEVICE_EDITS=0: such rows on the host sampler (A/B) */
        b->edits_on = !(env != NULL && env[0] == '0');
    }

#undef KIMI_TRY

    if ((rc = kimi_sample_pool_init(&b->sampler, c->vocab_size, 0, err)) != 0) {
        goto failed;
    }

    if (p->ep != NULL && (p->tp != NULL || p->pp != NULL)) {
        rc = kimi_err_set(err, KIMI_EUNSUPPORTED, "cuda backend: expert "
                          "parallelism over data-parallel ranks with tensor"
                          " or pipeline parallelism is not implemented");
        goto failed;
    }

    if ((p->tp != NULL && p->pp != NULL) != (p->lead != NULL)) {
        rc = kimi_err_set(err, KIMI_EINVAL, "cuda backend: tensor with "
                          "pipeline parallelism needs the rank's whole "
                          "group, and only it");
        goto failed;
    }

    b->l_first = 0;
    b->l_last = c->num_hidden_layers;
    if (p->pp != NULL) {
        b->pp_world = kimi_group_world(p->pp);
        b->pp_stage = kimi_group_rank(p->pp);
        kimi_model_pp_layers(c, b->pp_stage, b->pp_world, &b->l_first,
                             &b->l_last);
    }

    if (model->layer_first != b->l_first || model->layer_last != b->l_last) {
        rc = kimi_err_set(err, KIMI_EINVAL, "cuda backend: the model holds"
                          " layers [%u, %u), this pipeline stage runs [%u,"
                          " %u)", model->layer_first, model->layer_last,
                          b->l_first, b->l_last);
        goto failed;
    }

    b->lead = p->lead != NULL ? p->lead : p->tp != NULL ? p->tp : p->pp;
    b->tp = p->tp;                  /* check_ep: the experts' split */

    b->dcp = p->dcp > 1 ? p->dcp : 1;
    if (b->dcp > 1
        && (p->tp == NULL || kimi_group_world(p->tp) % b->dcp != 0
            || b->H > 64 || b->H % 16 != 0))
    {
        rc = kimi_err_set(err, KIMI_EUNSUPPORTED, "cuda backend: decode "
                          "context parallelism %u needs tensor parallelism"
                          " of a multiple of its size (and a multiple of 16"
                          " heads a rank, at most 64; %u here)", b->dcp,
                          b->H);
        goto failed;
    }
    /* runs of dcp consecutive tensor-parallel ranks split the cache */
    b->dcp_rank = b->dcp > 1 ? kimi_group_rank(p->tp) % b->dcp : 0;

    if ((rc = kimi_cuda_check_ep(b, p->ep, err)) != 0
        || (rc = kimi_cuda_weights_upload(b, err)) != 0
        || (rc = kimi_cuda_workspaces(b, err)) != 0
        || (rc = kimi_cuda_graphs_init(b, err)) != 0
        || (p->ep != NULL && (rc = kimi_cuda_ep_join(b, p->ep, err)) != 0)
        || (p->tp != NULL && (rc = kimi_cuda_tp_join(b, p->tp, err)) != 0)
        || (p->pp != NULL && (rc = kimi_cuda_pp_join(b, p->pp, err)) != 0))
    {
        goto failed;
    }

    *out = &b->base;
    return 0;

failed:

    if (p->ep != NULL || p->tp != NULL || p->pp != NULL) {
        /* the peers wait for this rank at the NCCL id or in NCCL init */
        kimi_group_abort(p->ep ? p->ep : p->tp ? p->tp : p->pp, err->msg);
    }
    kimi_cuda_free(&b->base);
    return rc;
}


int
kimi_backend_cuda_init(kimi_backend_t **out, struct kimi_model *model,
    int device, kimi_err_t *err)
{
    kimi_backend_cuda_params_t  p = kimi_backend_cuda_default_params();

    p.device = device;
    return kimi_backend_cuda_init_params(out, model, &p, err);
}
