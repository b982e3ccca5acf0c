/*
 * The CPU backend: Kimi-K2's forward pass, written to be read next to
 * DeepSeek-V3's inference/model.py (Block -> MLA -> MoE).
 *
 * Owns:   the paged latent KV cache in host memory (per layer [n_blocks]
 *         [block_size][kv_lora_rank + qk_rope_head_dim]), fp32 copies of
 *         kv_b_proj for the absorbed attention, RoPE tables, scratch, the
 *         thread pool, and the last step's logits.
 * Never:  picks blocks (block tables come with the batch) or samples.
 *         The parallel layouts live beside it: expert-parallel MoE layers
 *         in moe_ep.c, a tensor/pipeline leader and its followers in
 *         lead.c, the shared struct in cpu_impl.h.
 * Holds:  all tokens of a step go through the GEMMs together; attention is
 *         per (token, head) over that token's sequence in the cache, after
 *         every new token of the step has been written, so a prefill chunk
 *         sees itself causally and earlier chunks through the cache.
 *
 * Activations entering FP8 GEMMs are quantised to FP8 1x128 groups
 * (DS-REF act_quant) unless act_fp32; kv_b_proj is applied in fp32 in the
 * absorbed form (as the GPU's bf16 absorbed kernels do not requantise).
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"


/* ---- parallel GEMM ---- */

typedef struct {
    const float          *X;
    const uint8_t        *xq;
    const float          *xs;
    uint32_t              T;
    const kimi_weight_t  *w;
    float                *Y;
    int                   fp8_act;
} kimi_cpu_gemm_job_t;


static void
kimi_cpu_gemm_chunk(void *ctx, uint32_t worker, uint32_t i0, uint32_t i1)
{
    kimi_cpu_gemm_job_t  *j = ctx;
    const kimi_weight_t  *w = j->w;

    (void) worker;

    switch (w->dtype) {

    case KIMI_DTYPE_F8_E4M3:
        if (j->fp8_act) {
            kimi_gemm_fp8a_fp8w(j->xq, j->xs, j->T, w->cols, w->data,
                                w->scale_inv, w->rows, i0, i1, j->Y);

        } else {
            kimi_gemm_f32_fp8w(j->X, j->T, w->cols, w->data, w->scale_inv,
                               w->rows, i0, i1, j->Y);
        }

        break;

    case KIMI_DTYPE_BF16:
        kimi_gemm_f32_bf16w(j->X, j->T, w->cols, w->data, w->rows, i0, i1,
                            j->Y);
        break;

    default:
        kimi_gemm_f32_f32w(j->X, j->T, w->cols, w->data, w->rows, i0, i1,
                           j->Y);
        break;
    }
}


/* Y[T][w.rows] = X[T][w.cols] * W^T */
void
kimi_cpu_linear(kimi_cpu_t *b, const float *X, uint32_t T,
    const kimi_weight_t *w, float *Y)
{
    kimi_cpu_gemm_job_t  j = { X, b->xq, b->xs, T, w, Y, 0 };

    if (w->dtype == KIMI_DTYPE_F8_E4M3 && !b->act_fp32) {
        kimi_act_quant_fp8(X, T, w->cols, b->xq, b->xs);
        j.fp8_act = 1;
    }

    kimi_pool_run(b->pool, w->rows, kimi_cpu_gemm_chunk, &j);
}


/* ---- MLA ---- */

typedef struct {
    kimi_cpu_t             *b;
    uint32_t                layer;
    const kimi_batch_t     *batch;
} kimi_cpu_attn_job_t;


static void
kimi_cpu_attn_chunk(void *ctx, uint32_t worker, uint32_t i0, uint32_t i1)
{
    kimi_cpu_attn_job_t        *j = ctx;
    kimi_cpu_t                 *b = j->b;
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    H = b->model->n_heads;
    uint32_t                    R = c->kv_lora_rank, P = c->qk_rope_head_dim;
    uint32_t                    nope = c->qk_nope_head_dim, dv = c->v_head_dim;
    uint32_t                    qk = nope + P, rows_h = nope + dv;
    const float                *wkvb = b->kv_b[j->layer]
                                       + (size_t) b->model->head_first
                                         * rows_h * R;
    float                      *scratch = b->wscratch
                                          + (size_t) worker * b->wscratch_per;

    for (uint32_t i = i0; i < i1; i++) {
        uint32_t                 t = i / H, h = i % H;
        const kimi_batch_seq_t  *s = &j->batch->seqs[b->tok_seq[t]];
        const float             *qn = b->q + ((size_t) t * H + h) * qk;
        float                   *ql = b->qlat + (size_t) t * H * R;
        float                   *ol = b->olat + (size_t) t * H * R;
        float                   *out = b->attn + ((size_t) t * H + h) * dv;

        /* q_lat[h] = W_UK_h^T q_nope_h: bshd,hdc->bshc */
        memset(ql + (size_t) h * R, 0, R * sizeof(float));

        for (uint32_t d = 0; d < nope; d++) {
            const float  *wr = wkvb + ((size_t) h * rows_h + d) * R;
            float         qd = qn[d];

            for (uint32_t r = 0; r < R; r++) {
                ql[(size_t) h * R + r] += qd * wr[r];
            }
        }

        kimi_mla_decode_absorbed(&b->kv[j->layer], s->block_table,
                                 b->tok_pos[t] + 1, ql,
                                 b->qpe + (size_t) t * H * P, H,
                                 b->softmax_scale, h, h + 1, scratch, ol);

        /* o_h = W_UV_h o_lat[h]: bshc,hdc->bshd */
        for (uint32_t d = 0; d < dv; d++) {
            const float  *wr = wkvb + ((size_t) h * rows_h + nope + d) * R;
            float         acc = 0.0f;

            for (uint32_t r = 0; r < R; r++) {
                acc += wr[r] * ol[(size_t) h * R + r];
            }

            out[d] = acc;
        }
    }
}


static void
kimi_cpu_mla(kimi_cpu_t *b, uint32_t l, const kimi_batch_t *batch,
    uint32_t T)
{
    const kimi_model_config_t   *c = b->cfg;
    const kimi_layer_weights_t  *L = &b->model->layers[l];
    uint32_t                     H = b->model->n_heads;
    uint32_t                     R = c->kv_lora_rank;
    uint32_t                     P = c->qk_rope_head_dim, half = P / 2;
    uint32_t                     nope = c->qk_nope_head_dim, qk = nope + P;
    float                        cs[512], sn[512];
    kimi_cpu_attn_job_t          j = { b, l, batch };

    /* q = q_b(rms(q_a(a))), or q_proj(a) without q LoRA  [T][H][nope + rope] */
    if (c->q_lora_rank > 0) {
        kimi_cpu_linear(b, b->a, T, &L->q_a_proj, b->qa);

        for (uint32_t t = 0; t < T; t++) {
            float  *row = b->qa + (size_t) t * c->q_lora_rank;
            kimi_rmsnorm(row, L->q_a_layernorm, c->q_lora_rank,
                         c->rms_norm_eps, row);
        }

        kimi_cpu_linear(b, b->qa, T, &L->q_b_proj, b->q);

    } else {
        kimi_cpu_linear(b, b->a, T, &L->q_b_proj, b->q);
    }

    /* ckv = kv_a(a) = [c (R) ; k_pe (rope)]      [T][R + P] */
    kimi_cpu_linear(b, b->a, T, &L->kv_a_proj_with_mqa, b->ckv);

    for (uint32_t t = 0; t < T; t++) {
        const kimi_batch_seq_t  *s = &batch->seqs[b->tok_seq[t]];
        float                   *row = b->ckv + (size_t) t * (R + P);

        kimi_rope_cos_sin(b->inv_freq, half, b->tok_pos[t], b->attn_factor,
                          cs, sn);
        kimi_rmsnorm(row, L->kv_a_layernorm, R, c->rms_norm_eps, row);
        kimi_rope_apply(row + R, cs, sn, half);

        for (uint32_t h = 0; h < H; h++) {
            float  *qp = b->qpe + ((size_t) t * H + h) * P;

            memcpy(qp, b->q + ((size_t) t * H + h) * qk + nope,
                   P * sizeof(float));
            kimi_rope_apply(qp, cs, sn, half);
        }

        kimi_kv_write(&b->kv[l], s->block_table, b->tok_pos[t], row,
                      row + R);
    }

    kimi_pool_run(b->pool, T * H, kimi_cpu_attn_chunk, &j);

    /* out = o_proj(concat_h o_h) */
    kimi_cpu_linear(b, b->attn, T, &L->o_proj, b->o);
}


/* ---- FFN ---- */

/* y[T][D] = down(silu(gate(x)) * up(x)) */
void
kimi_cpu_mlp(kimi_cpu_t *b, const kimi_mlp_weights_t *w, const float *x,
    uint32_t T, float *y)
{
    uint32_t  I = w->gate_proj.rows;

    kimi_cpu_linear(b, x, T, &w->gate_proj, b->g);
    kimi_cpu_linear(b, x, T, &w->up_proj, b->u);
    kimi_silu_mul(b->g, b->u, T * I, b->g);
    kimi_cpu_linear(b, b->g, T, &w->down_proj, y);
}


/* Routes the step's T tokens (route_ids, route_w) and runs the shared
 * expert into y: the part of an MoE layer every rank does for its own
 * tokens. */
int
kimi_cpu_route_shared(kimi_cpu_t *b, const kimi_layer_weights_t *L,
    uint32_t T, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    D = c->hidden_size, E = c->n_routed_experts;
    uint32_t                    K = c->num_experts_per_tok;

    if (T == 0) {
        return 0;
    }

    /* router in fp32 over the bf16 gate (HF and DS-REF do the same) */
    kimi_cpu_linear(b, b->a, T, &L->gate, b->rl);

    for (uint32_t t = 0; t < T; t++) {
        if (kimi_moe_route(c->router, b->rl + (size_t) t * E,
                           L->e_score_correction_bias,
                           E, c->n_group, c->topk_group, K,
                           c->norm_topk_prob, c->routed_scaling_factor,
                           b->route_ids + (size_t) t * K,
                           b->route_w + (size_t) t * K) != 0)
        {
            return kimi_err_set(err, KIMI_EINVAL, "moe routing: bad config");
        }
    }

    /* shared expert on every token: not weighted, not scaled */
    if (c->n_shared_experts > 0) {
        kimi_cpu_mlp(b, &L->shared_experts, b->a, T, b->y);

    } else {
        memset(b->y, 0, (size_t) T * D * sizeof(float));
    }

    return 0;
}


static int
kimi_cpu_moe(kimi_cpu_t *b, const kimi_layer_weights_t *L, uint32_t T,
    kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    D = c->hidden_size, E = c->n_routed_experts;
    uint32_t                    K = c->num_experts_per_tok;

    if (kimi_cpu_route_shared(b, L, T, err) != 0) {
        return KIMI_EINVAL;
    }

    /* routed experts: gather each expert's tokens, run, scatter-add (the
     * experts this process holds: all, or its share under tensor + expert
     * parallelism) */
    for (uint32_t e = b->model->expert_first; e < b->model->expert_last
                                              && e < E; e++)
    {
        uint32_t  n = 0;

        for (uint32_t t = 0; t < T; t++) {
            for (uint32_t k = 0; k < K; k++) {
                if (b->route_ids[(size_t) t * K + k] == (int32_t) e) {
                    b->gather[n] = t * K + k;
                    memcpy(b->xe + (size_t) n * D, b->a + (size_t) t * D,
                           D * sizeof(float));
                    n++;
                }
            }
        }

        if (n == 0) {
            continue;
        }

        kimi_cpu_mlp(b, &L->experts[e], b->xe, n, b->ye);

        for (uint32_t i = 0; i < n; i++) {
            uint32_t  t = b->gather[i] / K;
            float     wt = b->route_w[b->gather[i]];

            for (uint32_t d = 0; d < D; d++) {
                b->y[(size_t) t * D + d] += wt * b->ye[(size_t) i * D + d];
            }
        }
    }

    return 0;
}


/* ---- scratch ---- */

#define KIMI_RE(ptr, n)                                                      \
    do {                                                                     \
        void  *np = realloc(ptr, ((size_t) (n) + 1) * sizeof(*(ptr)));       \
        if (np == NULL) goto nomem;                                          \
        ptr = np;                                                            \
    } while (0)

/* Scratch of the expert MLPs, in rows: a step's T * (top_k + 1) (every
 * routed pair and the shared expert), or under expert parallelism every
 * row the peers sent. */
int
kimi_cpu_reserve_rows(kimi_cpu_t *b, uint32_t rows, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    D = c->hidden_size;

    if (rows <= b->cap_rows) {
        return 0;
    }

    KIMI_RE(b->g, (size_t) rows * b->max_inter);
    KIMI_RE(b->u, (size_t) rows * b->max_inter);
    KIMI_RE(b->xe, (size_t) rows * D);
    KIMI_RE(b->ye, (size_t) rows * D);
    KIMI_RE(b->xq, (size_t) rows * b->max_k);
    KIMI_RE(b->xs, (size_t) rows * ((b->max_k + 127) / 128));
    KIMI_RE(b->gather, rows);
    KIMI_RE(b->gather_w, rows);

    b->cap_rows = rows;
    return 0;

nomem:

    return kimi_err_set(err, KIMI_ENOMEM, "cpu: scratch for %u rows", rows);
}


static int
kimi_cpu_reserve(kimi_cpu_t *b, uint32_t T, uint32_t max_ctx,
    kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    H = b->model->n_heads;
    uint32_t                    R = c->kv_lora_rank, P = c->qk_rope_head_dim;
    uint32_t                    qk = kimi_model_qk_head_dim(c);
    uint32_t                    D = c->hidden_size, nw;
    size_t                      per;

    nw = kimi_pool_size(b->pool);
    per = (size_t) max_ctx + R + P;

    if (per > b->wscratch_per) {
        free(b->wscratch);
        b->wscratch = malloc(per * nw * sizeof(float));
        b->wscratch_per = b->wscratch ? per : 0;

        if (b->wscratch == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "cpu: attention scratch");
        }
    }

    if (kimi_cpu_reserve_rows(b, T * (c->num_experts_per_tok + 1), err)
        != 0)
    {
        return KIMI_ENOMEM;
    }

    if (T <= b->cap_tokens) {
        return 0;
    }

    KIMI_RE(b->h, (size_t) T * D);
    KIMI_RE(b->a, (size_t) T * D);
    KIMI_RE(b->qa, (size_t) T * c->q_lora_rank);
    KIMI_RE(b->q, (size_t) T * H * qk);
    KIMI_RE(b->ckv, (size_t) T * (R + P));
    KIMI_RE(b->qpe, (size_t) T * H * P);
    KIMI_RE(b->qlat, (size_t) T * H * R);
    KIMI_RE(b->olat, (size_t) T * H * R);
    KIMI_RE(b->attn, (size_t) T * H * c->v_head_dim);
    KIMI_RE(b->o, (size_t) T * D);
    KIMI_RE(b->y, (size_t) T * D);
    KIMI_RE(b->rl, (size_t) T * (c->n_routed_experts + 1));
    KIMI_RE(b->tok_id, T);
    KIMI_RE(b->tok_pos, T);
    KIMI_RE(b->tok_seq, T);
    KIMI_RE(b->route_ids, (size_t) T * (c->num_experts_per_tok + 1));
    KIMI_RE(b->route_w, (size_t) T * (c->num_experts_per_tok + 1));
    if (b->ep != NULL) {
        KIMI_RE(b->ep_pos, (size_t) T * kimi_group_world(b->ep));
    }

    b->cap_tokens = T;
    return 0;

nomem:

    return kimi_err_set(err, KIMI_ENOMEM, "cpu: scratch for %u tokens", T);
}


/* ---- vtable ---- */

static int
kimi_cpu_kv_init(kimi_backend_t *base, const kimi_kv_params_t *p,
    uint32_t *n_blocks_out, kimi_err_t *err)
{
    kimi_cpu_t                 *b = (kimi_cpu_t *) base;
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    L = c->num_hidden_layers;
    uint32_t                    W = c->kv_lora_rank + c->qk_rope_head_dim;
    uint32_t                    bs = p->block_size ? p->block_size : 64;
    kimi_cpu_kv_dtype_e         dt;
    size_t                      esize, per_block;
    uint64_t                    budget, n;

    switch (p->dtype) {
    case KIMI_KV_DTYPE_AUTO: dt = KIMI_CPU_KV_BF16; esize = 2; break;
    case KIMI_KV_DTYPE_FP8:  dt = KIMI_CPU_KV_FP8;  esize = 1; break;
    case KIMI_KV_DTYPE_F32:  dt = KIMI_CPU_KV_F32;  esize = 4; break;
    default:
        return kimi_err_set(err, KIMI_EINVAL, "cpu kv: unknown dtype %d",
                            (int) p->dtype);
    }

    if (b->kv_mem != NULL) {
        return kimi_err_set(err, KIMI_ESTATE, "cpu kv: already initialised");
    }

    if (bs > 4096) {
        return kimi_err_set(err, KIMI_EINVAL, "cpu kv: block_size %u > 4096",
                            bs);
    }

    per_block = (size_t) bs * W * esize + (dt == KIMI_CPU_KV_FP8 ? bs * 4 : 0);
    budget = p->budget_bytes ? p->budget_bytes : (1ull << 30);
    n = budget / ((uint64_t) per_block * L);

    if (p->max_blocks && n > p->max_blocks) {
        n = p->max_blocks;
    }

    if (n > UINT32_MAX / 2) {
        n = UINT32_MAX / 2;
    }

    if (n == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "cpu kv: budget %llu bytes "
                            "holds no %u-token block for %u layers",
                            (unsigned long long) budget, bs, L);
    }

    /* calloc: untouched pages of a large cache cost nothing */
    b->kv_mem = calloc((size_t) n * L, (size_t) bs * W * esize);
    b->kv = calloc(L, sizeof(kimi_cpu_kv_view_t));

    if (dt == KIMI_CPU_KV_FP8) {
        b->kv_scales = calloc((size_t) n * L * bs, sizeof(float));
    }

    if (b->kv_mem == NULL || b->kv == NULL
        || (dt == KIMI_CPU_KV_FP8 && b->kv_scales == NULL))
    {
        free(b->kv_mem);
        free(b->kv);
        free(b->kv_scales);
        b->kv_mem = NULL;
        b->kv = NULL;
        b->kv_scales = NULL;
        return kimi_err_set(err, KIMI_ENOMEM, "cpu kv: %llu blocks do not "
                            "fit in memory", (unsigned long long) n);
    }

    for (uint32_t l = 0; l < L; l++) {
        b->kv[l].data = (uint8_t *) b->kv_mem
                        + (size_t) l * n * bs * W * esize;
        b->kv[l].scales = b->kv_scales ? b->kv_scales + (size_t) l * n * bs
                                       : NULL;
        b->kv[l].dtype = dt;
        b->kv[l].block_size = bs;
        b->kv[l].kv_lora_rank = c->kv_lora_rank;
        b->kv[l].rope_dim = c->qk_rope_head_dim;
        b->kv[l].n_blocks = (uint32_t) n;
    }

    b->n_blocks = (uint32_t) n;
    *n_blocks_out = (uint32_t) n;
    return 0;
}


static int
kimi_cpu_check_batch(kimi_cpu_t *b, const kimi_batch_t *batch, uint32_t *T,
    uint32_t *max_ctx, uint32_t *n_rows, kimi_err_t *err)
{
    uint32_t  bs;

    if (b->kv == NULL) {
        return kimi_err_set(err, KIMI_ESTATE, "cpu: forward before kv_init");
    }

    bs = b->kv[0].block_size;
    *T = *max_ctx = *n_rows = 0;

    for (uint32_t i = 0; i < batch->n_seqs; i++) {
        const kimi_batch_seq_t  *s = &batch->seqs[i];
        uint64_t                 end = (uint64_t) s->pos + s->n_tokens;

        if (s->n_tokens == 0 || s->tokens == NULL || s->block_table == NULL) {
            return kimi_err_set(err, KIMI_EINVAL, "cpu: seq %llu: empty",
                                (unsigned long long) s->seq_id);
        }

        if (end > b->base.max_model_len) {
            return kimi_err_set(err, KIMI_EINVAL, "cpu: seq %llu: position "
                                "%llu beyond max_model_len %u",
                                (unsigned long long) s->seq_id,
                                (unsigned long long) end,
                                b->base.max_model_len);
        }

        if ((uint64_t) s->n_blocks * bs < end) {
            return kimi_err_set(err, KIMI_EINVAL, "cpu: seq %llu: %u blocks "
                                "do not cover %llu tokens",
                                (unsigned long long) s->seq_id, s->n_blocks,
                                (unsigned long long) end);
        }

        for (uint32_t k = 0; k < (end + bs - 1) / bs; k++) {
            if (s->block_table[k] >= b->n_blocks) {
                return kimi_err_set(err, KIMI_EINVAL, "cpu: seq %llu: block "
                                    "%u out of range (%u blocks)",
                                    (unsigned long long) s->seq_id,
                                    s->block_table[k], b->n_blocks);
            }
        }

        for (uint32_t k = 0; k < s->n_tokens; k++) {
            if (s->tokens[k] < 0
                || (uint32_t) s->tokens[k] >= b->cfg->vocab_size)
            {
                return kimi_err_set(err, KIMI_EINVAL, "cpu: seq %llu: token "
                                    "%d outside the vocabulary",
                                    (unsigned long long) s->seq_id,
                                    s->tokens[k]);
            }
        }

        if (*T + (uint64_t) s->n_tokens > (1u << 24)) {
            return kimi_err_set(err, KIMI_EINVAL, "cpu: batch too large");
        }

        *T += s->n_tokens;
        *max_ctx = end > *max_ctx ? (uint32_t) end : *max_ctx;

        if (s->want_logits) {
            *n_rows += b->all_logits ? s->n_tokens : 1;
        }
    }

    return 0;
}



/* Layers [l0, l1) over the step's T tokens in b->h. */
int
kimi_cpu_layers(kimi_cpu_t *b, const kimi_batch_t *batch, uint32_t T,
    uint32_t l0, uint32_t l1, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    D = c->hidden_size;
    int                         rc;

    for (uint32_t l = l0; l < l1; l++) {
        const kimi_layer_weights_t  *L = &b->model->layers[l];

        /* h = h + attn(rms(h)) */
        for (uint32_t t = 0; t < T; t++) {
            kimi_rmsnorm(b->h + (size_t) t * D, L->input_layernorm, D,
                         c->rms_norm_eps, b->a + (size_t) t * D);
        }

        kimi_cpu_mla(b, l, batch, T);

        /* each tensor-parallel rank's o_proj saw only its heads */
        if (b->tp != NULL
            && (rc = kimi_group_allreduce_f32(b->tp, KIMI_CPU_TAG_TP_SUM
                                              | ((uint64_t) l << 8), b->o,
                                              (size_t) T * D, err)) != 0)
        {
            return rc;
        }

        /* h = h + ffn(rms(h)) */
        for (uint32_t t = 0; t < T; t++) {
            kimi_rmsnorm_residual(b->h + (size_t) t * D, b->o + (size_t) t * D,
                                  L->post_attention_layernorm, D,
                                  c->rms_norm_eps, b->a + (size_t) t * D);
        }

        if (L->is_moe) {
            rc = b->ep != NULL ? kimi_cpu_moe_ep(b, l, L, T, err)
                               : kimi_cpu_moe(b, L, T, err);
            if (rc != 0) {
                return rc;
            }

        } else {
            kimi_cpu_mlp(b, &L->mlp, b->a, T, b->y);
        }

        /* ... and its down_projs only its slice of every MLP width */
        if (b->tp != NULL
            && (rc = kimi_group_allreduce_f32(b->tp, KIMI_CPU_TAG_TP_SUM
                                              | ((uint64_t) l << 8) | 1,
                                              b->y, (size_t) T * D, err))
               != 0)
        {
            return rc;
        }

        for (size_t i = 0; i < (size_t) T * D; i++) {
            b->h[i] += b->y[i];
        }
    }

    return 0;
}


int
kimi_cpu_forward_local(kimi_cpu_t *b, const kimi_batch_t *batch,
    kimi_err_t *err)
{
    const kimi_model_t         *m = b->model;
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    D = c->hidden_size, V = c->vocab_size;
    uint32_t                    T = 0, max_ctx = 0, n_rows = 0, t = 0;
    uint32_t                    row = 0, stage = 0, last = 0;
    int                         rc;

    if (b->pp != NULL) {
        stage = kimi_group_rank(b->pp);
        last = kimi_group_world(b->pp) - 1;
    }

    rc = kimi_cpu_check_batch(b, batch, &T, &max_ctx, &n_rows, err);

    if (rc == 0 && b->ep != NULL && T > b->ep_cap) {
        rc = kimi_err_set(err, KIMI_EINVAL, "cpu: %u tokens in a step, more"
                          " than the %u an expert-parallel exchange holds",
                          T, b->ep_cap);
    }

    if (rc == 0 && b->lead != NULL
        && (size_t) T * D * sizeof(float) > kimi_group_seg_bytes(b->lead))
    {
        rc = kimi_err_set(err, KIMI_EINVAL, "cpu: %u tokens in a step, more"
                          " than the group's exchange holds", T);
    }

    if (rc == 0) {
        rc = kimi_cpu_reserve(b, T, max_ctx, err);
    }

    if (rc != 0 || (T == 0 && b->ep != NULL)) {
        /* the peers' MoE layers need this rank's experts all the same */
        b->n_logits = 0;
        return kimi_cpu_ep_idle(b, rc, err);
    }

    /* flatten: token t of the step -> (seq, position, id); embed */
    for (uint32_t i = 0; i < batch->n_seqs; i++) {
        const kimi_batch_seq_t  *s = &batch->seqs[i];

        for (uint32_t k = 0; k < s->n_tokens; k++, t++) {
            const kimi_weight_t  *e = &m->embed_tokens;
            float                *h = b->h + (size_t) t * D;

            b->tok_id[t] = s->tokens[k];
            b->tok_pos[t] = s->pos + k;
            b->tok_seq[t] = i;

            for (uint32_t d = 0; stage == 0 && d < D; d++) {
                size_t  idx = (size_t) s->tokens[k] * D + d;

                h[d] = e->dtype == KIMI_DTYPE_BF16
                       ? kimi_bf16_to_f32(((const uint16_t *) e->data)[idx])
                       : ((const float *) e->data)[idx];
            }
        }
    }

    rc = b->pp != NULL ? kimi_cpu_pipeline(b, batch, T, err)
                       : kimi_cpu_layers(b, batch, T, 0, c->num_hidden_layers,
                                         err);
    if (rc != 0) {
        return rc;
    }

    if (b->tp != NULL && kimi_group_rank(b->tp) != 0) {
        b->n_logits = 0;                  /* the leader samples */
        return 0;
    }

    /* logits of the wanted tokens: lm_head(rms(h)) */
    if ((size_t) n_rows * V > b->cap_logits) {
        float  *nl = realloc(b->logits, (size_t) n_rows * V * sizeof(float));

        if (nl == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "cpu: logits");
        }

        b->logits = nl;
        b->cap_logits = (size_t) n_rows * V;
    }

    t = 0;

    for (uint32_t i = 0; stage == last && i < batch->n_seqs; i++) {
        const kimi_batch_seq_t  *s = &batch->seqs[i];

        for (uint32_t k = 0; k < s->n_tokens; k++, t++) {
            if (!s->want_logits || (!b->all_logits && k + 1 < s->n_tokens)) {
                continue;
            }

            kimi_rmsnorm(b->h + (size_t) t * D, m->norm, D, c->rms_norm_eps,
                         b->a + (size_t) row * D);
            row++;
        }
    }

    if (n_rows > 0 && stage == last) {
        kimi_cpu_linear(b, b->a, n_rows, &m->lm_head, b->logits);
    }

    if (b->pp != NULL
        && (rc = kimi_cpu_pipeline_logits(b, n_rows, err)) != 0)
    {
        return rc;
    }

    b->n_logits = stage == 0 ? n_rows : 0;
    return 0;
}

static int
kimi_cpu_forward(kimi_backend_t *base, const kimi_batch_t *batch,
    kimi_err_t *err)
{
    kimi_cpu_t  *b = (kimi_cpu_t *) base;
    int          rc;

    if (b->lead != NULL
        && (rc = kimi_cpu_lead_send(b, KIMI_CPU_LEAD_STEP, batch, err)) != 0)
    {
        return rc;
    }

    return kimi_cpu_forward_local(b, batch, err);
}


static const float *
kimi_cpu_logits(kimi_backend_t *base, uint32_t *n_rows, uint32_t *vocab)
{
    kimi_cpu_t  *b = (kimi_cpu_t *) base;

    *n_rows = b->n_logits;
    *vocab = b->cfg->vocab_size;
    return b->logits;
}


static void
kimi_cpu_free(kimi_backend_t *base)
{
    kimi_cpu_t  *b = (kimi_cpu_t *) base;
    kimi_err_t   err;

    if (b == NULL) {
        return;
    }

    /* the leader lets its followers go */
    if (b->lead != NULL && kimi_group_rank(b->lead) == 0
        && !kimi_group_failed(b->lead))
    {
        (void) kimi_cpu_lead_send(b, KIMI_CPU_LEAD_STOP, NULL, &err);
    }

    kimi_pool_free(b->pool);

    if (b->kv_b != NULL) {
        for (uint32_t l = 0; l < b->cfg->num_hidden_layers; l++) {
            free(b->kv_b[l]);
        }
    }

    free(b->kv_b);
    free(b->inv_freq);
    free(b->kv_mem);
    free(b->kv_scales);
    free(b->kv);
    free(b->logits);
    free(b->wscratch);
    free(b->h); free(b->a); free(b->qa); free(b->q); free(b->ckv);
    free(b->qpe); free(b->qlat); free(b->olat); free(b->attn); free(b->o);
    free(b->g); free(b->u); free(b->y); free(b->rl); free(b->xe);
    free(b->ye); free(b->xq); free(b->xs); free(b->tok_id); free(b->tok_pos);
    free(b->tok_seq); free(b->route_ids); free(b->route_w); free(b->gather);
    free(b->gather_w); free(b->ep_pos); kimi_step_buf_free(&b->lead_buf);
    free(b);
}


static const kimi_backend_ops_t  kimi_cpu_ops = {
    .name = "cpu",
    .kv_init = kimi_cpu_kv_init,
    .forward = kimi_cpu_forward,
    .logits = kimi_cpu_logits,
    .sample = NULL,
    .seq_free = NULL,                     /* no per-sequence state */
    .free = kimi_cpu_free,
};


void
kimi_backend_cpu_set_all_logits(kimi_backend_t *base, int on)
{
    ((kimi_cpu_t *) base)->all_logits = on;
}


/* Dequantises any weight kind to fp32 [rows][cols]. */
static float *
kimi_cpu_dequant(const kimi_weight_t *w)
{
    float  *f = malloc((size_t) w->rows * w->cols * sizeof(float));

    if (f == NULL) {
        return NULL;
    }

    if (w->dtype == KIMI_DTYPE_F8_E4M3) {
        kimi_fp8_dequant(w->data, w->scale_inv, w->rows, w->cols, f);

    } else if (w->dtype == KIMI_DTYPE_BF16) {
        for (size_t i = 0; i < (size_t) w->rows * w->cols; i++) {
            f[i] = kimi_bf16_to_f32(((const uint16_t *) w->data)[i]);
        }

    } else {
        memcpy(f, w->data, (size_t) w->rows * w->cols * sizeof(float));
    }

    return f;
}


int
kimi_backend_cpu_init_params(kimi_backend_t **out, struct kimi_model *model,
    const kimi_backend_cpu_params_t *p, kimi_err_t *err)
{
    const kimi_model_config_t  *c = &model->cfg;
    kimi_rope_params_t          rp;
    kimi_cpu_t                 *b;
    const char                 *env;
    uint32_t                    e_first, e_last, l_first, l_last;
    int                         rc;

    e_first = 0;
    e_last = c->n_routed_experts;

    if (p->ep != NULL) {
        uint32_t  W = kimi_group_world(p->ep), r = kimi_group_rank(p->ep);

        if (c->n_routed_experts % W != 0 || W > KIMI_GROUP_MAX_RANKS) {
            return kimi_err_set(err, KIMI_EINVAL, "cpu backend: %u routed "
                                "experts do not split over %u expert-parallel"
                                " ranks", c->n_routed_experts, W);
        }

        e_first = r * (c->n_routed_experts / W);
        e_last = e_first + c->n_routed_experts / W;
    }

    /* tensor parallel with expert parallelism: the ranks split the routed
     * experts whole; every rank routes all tokens, runs its own experts
     * and the sums meet in the FFN's all-reduce */
    if (model->tp_experts_whole && p->tp != NULL && p->ep == NULL) {
        uint32_t  W = kimi_group_world(p->tp), r = kimi_group_rank(p->tp);

        if (c->n_routed_experts % W != 0) {
            return kimi_err_set(err, KIMI_EINVAL, "cpu backend: %u routed "
                                "experts do not split over %u tensor-parallel"
                                " ranks", c->n_routed_experts, W);
        }

        e_first = r * (c->n_routed_experts / W);
        e_last = e_first + c->n_routed_experts / W;
    }

    if (model->tp_size > 1
        && (p->tp == NULL || kimi_group_world(p->tp) != model->tp_size
            || kimi_group_rank(p->tp) != model->tp_rank))
    {
        return kimi_err_set(err, KIMI_EINVAL, "cpu backend: the model is"
                            " tensor-parallel shard %u of %u, the group does"
                            " not match", model->tp_rank, model->tp_size);
    }

    if (p->ep != NULL && p->pp != NULL) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "cpu backend: expert "
                            "parallelism over data-parallel ranks with "
                            "pipeline parallelism is not implemented");
    }

    if ((p->tp != NULL && p->pp != NULL) != (p->lead != NULL)) {
        return kimi_err_set(err, KIMI_EINVAL, "cpu backend: tensor with "
                            "pipeline parallelism needs the rank's whole "
                            "group, and only it");
    }

    l_first = 0;
    l_last = c->num_hidden_layers;
    if (p->pp != NULL) {
        kimi_model_pp_layers(c, kimi_group_rank(p->pp),
                             kimi_group_world(p->pp), &l_first, &l_last);
    }

    if (model->layer_first != l_first || model->layer_last != l_last) {
        return kimi_err_set(err, KIMI_EINVAL, "cpu backend: the model holds"
                            " layers [%u, %u), not this pipeline stage's",
                            model->layer_first, model->layer_last);
    }

    if (c->n_routed_experts > 0
        && (model->expert_first != e_first || model->expert_last != e_last))
    {
        return kimi_err_set(err, KIMI_EINVAL, "cpu backend: the model holds "
                            "experts [%u, %u), this rank needs [%u, %u)",
                            model->expert_first, model->expert_last, e_first,
                            e_last);
    }

    if (c->qk_rope_head_dim > 1024) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "cpu backend: "
                            "qk_rope_head_dim %u > 1024", c->qk_rope_head_dim);
    }

    b = calloc(1, sizeof(*b));

    if (b == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "cpu backend: out of memory");
    }

    b->base.ops = &kimi_cpu_ops;
    b->base.vocab_size = c->vocab_size;
    b->base.max_model_len = c->max_position_embeddings;
    b->model = model;
    b->cfg = c;
    b->act_fp32 = p->act_fp32;
    b->tp = p->tp;
    b->pp = p->pp;
    b->lead = p->lead ? p->lead : p->tp ? p->tp : p->pp;
    b->ep = p->ep;
    if (b->ep != NULL) {
        b->ep_cap = (uint32_t) (kimi_group_seg_bytes(b->ep)
                                / ((size_t) c->hidden_size * 4
                                   + (size_t) c->num_experts_per_tok * 8));
    }

    if (b->act_fp32 < 0) {
        env = getenv("KIMI_CPU_ACT");
        b->act_fp32 = env != NULL && strcmp(env, "fp32") == 0;
    }

    if ((rc = kimi_pool_init(&b->pool, p->n_threads, err)) != 0) {
        free(b);
        return rc;
    }

    rp.rope_dim = c->qk_rope_head_dim;
    rp.theta = c->rope_theta;
    rp.yarn = c->rope_is_yarn;
    rp.factor = c->rope_factor;
    rp.beta_fast = c->rope_beta_fast;
    rp.beta_slow = c->rope_beta_slow;
    rp.mscale = c->rope_mscale;
    rp.mscale_all_dim = c->rope_mscale_all_dim;
    rp.original_max_pos = c->rope_original_max_position_embeddings;
    b->inv_freq = malloc(c->qk_rope_head_dim / 2 * sizeof(float) + 1);
    b->kv_b = calloc(c->num_hidden_layers, sizeof(float *));

    if (b->inv_freq == NULL || b->kv_b == NULL) {
        kimi_cpu_free(&b->base);
        return kimi_err_set(err, KIMI_ENOMEM, "cpu backend: out of memory");
    }

    kimi_rope_inv_freq(&rp, b->inv_freq, &b->attn_factor);
    b->softmax_scale = kimi_model_softmax_scale(c);

    for (uint32_t l = model->layer_first; l < model->layer_last; l++) {
        b->kv_b[l] = kimi_cpu_dequant(&model->layers[l].kv_b_proj);

        if (b->kv_b[l] == NULL) {
            kimi_cpu_free(&b->base);
            return kimi_err_set(err, KIMI_ENOMEM, "cpu backend: kv_b_proj");
        }
    }

    b->max_inter = c->intermediate_size;
    b->max_inter = c->moe_intermediate_size * c->n_shared_experts
                   > b->max_inter
                   ? c->moe_intermediate_size * c->n_shared_experts
                   : b->max_inter;
    b->max_inter = c->moe_intermediate_size > b->max_inter
                   ? c->moe_intermediate_size : b->max_inter;
    b->max_k = c->hidden_size;
    b->max_k = b->max_inter > b->max_k ? b->max_inter : b->max_k;
    b->max_k = c->q_lora_rank > b->max_k ? c->q_lora_rank : b->max_k;
    b->max_k = c->num_attention_heads * c->v_head_dim > b->max_k
               ? c->num_attention_heads * c->v_head_dim : b->max_k;

    *out = &b->base;
    return 0;
}


int
kimi_backend_cpu_init(kimi_backend_t **out, struct kimi_model *model,
    uint32_t n_threads, kimi_err_t *err)
{
    kimi_backend_cpu_params_t  p = { n_threads, -1, NULL, NULL, NULL, NULL };

    return kimi_backend_cpu_init_params(out, model, &p, err);
}
