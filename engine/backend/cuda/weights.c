/*
 * Uploading a loaded model's weights to the device.
 *
 * Owns:   the device weight arena (one cudaMalloc, carved 256-byte aligned)
 *         and the conversions made on the way: fp32 norms -> bf16,
 *         routers -> bf16 (kv_b_proj stays FP8: the absorption kernels
 *         dequantise it as the CPU oracle does), the expert
 *         pointer tables of kernels/ (kimi_experts_t).
 * Never:  changes the model, or keeps host copies after init.
 * Holds:  two passes over the same walk: the first only sums sizes, so the
 *         arena is exactly as large as what the second pass copies.
 */

#include <stdlib.h>
#include <string.h>

#include "../cpu/ops.h"
#include "cuda_impl.h"


typedef struct {
    char        *base;                   /* NULL in the sizing pass */
    size_t       off;
    void        *tmp;                    /* host conversion buffer */
    size_t       tmp_cap;
} kimi_cuda_arena_t;


static size_t
kimi_al256(size_t n)
{
    return (n + 255) & ~(size_t) 255;
}


/* Copies n bytes of src (NULL: reserve only) into the arena. */
static int
kimi_cuda_put(kimi_cuda_arena_t *ar, const void *src, size_t n, void **dst,
    kimi_err_t *err)
{
    *dst = ar->base ? ar->base + ar->off : NULL;

    if (ar->base != NULL && src != NULL) {
        KIMI_CU(cudaMemcpy(*dst, src, n, cudaMemcpyHostToDevice), err);
    }

    ar->off += kimi_al256(n);
    return 0;
}


static void *
kimi_cuda_tmp(kimi_cuda_arena_t *ar, size_t n)
{
    if (ar->base == NULL) {
        return NULL;
    }

    if (n > ar->tmp_cap) {
        void  *p = realloc(ar->tmp, n);

        if (p == NULL) {
            return NULL;
        }

        ar->tmp = p;
        ar->tmp_cap = n;
    }

    return ar->tmp;
}


static int
kimi_cuda_put_fp8(kimi_cuda_arena_t *ar, const kimi_weight_t *w,
    const char *what, uint32_t l, kimi_cuda_fp8_t *d, kimi_err_t *err)
{
    size_t  ns = (size_t) ((w->rows + 127) / 128) * ((w->cols + 127) / 128);
    int     rc;

    if (w->data == NULL || w->dtype != KIMI_DTYPE_F8_E4M3
        || w->scale_inv == NULL)
    {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "cuda backend: layer %u "
                            "%s is %s, the kernels take FP8 e4m3 with "
                            "128x128 block scales", l, what,
                            w->data ? kimi_dtype_name(w->dtype) : "not loaded");
    }

    d->rows = w->rows;
    d->cols = w->cols;

    if ((rc = kimi_cuda_put(ar, w->data, (size_t) w->rows * w->cols,
                            (void **) &d->w, err)) != 0)
    {
        return rc;
    }

    return kimi_cuda_put(ar, w->scale_inv, ns * sizeof(float),
                         (void **) &d->s, err);
}


/* The same, zero-padded to rows_to x cols_to (>= the weight's, whole
 * 128-blocks: its scale grid already covers them) */
static int
kimi_cuda_put_fp8_pad(kimi_cuda_arena_t *ar, const kimi_weight_t *w,
    uint32_t rows_to, uint32_t cols_to, const char *what, uint32_t l,
    kimi_cuda_fp8_t *d, kimi_err_t *err)
{
    kimi_weight_t  p;
    uint8_t       *t;

    if (rows_to == w->rows && cols_to == w->cols) {
        return kimi_cuda_put_fp8(ar, w, what, l, d, err);
    }

    if (rows_to < w->rows || cols_to < w->cols
        || (rows_to + 127) / 128 != (w->rows + 127) / 128
        || (cols_to + 127) / 128 != (w->cols + 127) / 128)
    {
        return kimi_err_set(err, KIMI_EINVAL, "cuda backend: layer %u %s: "
                            "%ux%u does not pad to %ux%u", l, what, w->rows,
                            w->cols, rows_to, cols_to);
    }

    p = *w;
    p.rows = rows_to;
    p.cols = cols_to;
    t = kimi_cuda_tmp(ar, (size_t) rows_to * cols_to);

    if (ar->base != NULL && w->data != NULL) {
        if (t == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "cuda weights: padding");
        }

        memset(t, 0, (size_t) rows_to * cols_to);
        for (uint32_t r = 0; r < w->rows; r++) {
            memcpy(t + (size_t) r * cols_to,
                   (const uint8_t *) w->data + (size_t) r * w->cols, w->cols);
        }
        p.data = t;
    }

    return kimi_cuda_put_fp8(ar, &p, what, l, d, err);
}


/* Any 2-D weight as bf16 (transposed: [cols][rows]) */
static int
kimi_cuda_put_bf16(kimi_cuda_arena_t *ar, const kimi_weight_t *w,
    kimi_bf16_t **dst, kimi_err_t *err)
{
    size_t     n = (size_t) w->rows * w->cols;
    uint16_t  *t;
    float     *f;

    if (ar->base == NULL || w->dtype == KIMI_DTYPE_BF16) {
        return kimi_cuda_put(ar, w->data, n * 2, (void **) dst, err);
    }

    f = kimi_cuda_tmp(ar, n * (sizeof(float) + 2));

    if (f == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "cuda weights: host buffer");
    }

    t = (uint16_t *) (f + n);

    if (w->dtype == KIMI_DTYPE_F8_E4M3) {
        kimi_fp8_dequant(w->data, w->scale_inv, w->rows, w->cols, f);

    } else if (w->dtype == KIMI_DTYPE_F32) {
        memcpy(f, w->data, n * sizeof(float));

    } else {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "cuda weights: dtype %s",
                            kimi_dtype_name(w->dtype));
    }

    for (size_t i = 0; i < n; i++) {
        t[i] = kimi_f32_to_bf16(f[i]);
    }

    return kimi_cuda_put(ar, t, n * 2, (void **) dst, err);
}


static int
kimi_cuda_put_vec(kimi_cuda_arena_t *ar, const float *v, uint32_t n,
    kimi_bf16_t **dst, kimi_err_t *err)
{
    uint16_t  *t = kimi_cuda_tmp(ar, (size_t) n * 2);

    if (ar->base != NULL && t == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "cuda weights: host buffer");
    }

    for (uint32_t i = 0; t != NULL && i < n; i++) {
        t[i] = kimi_f32_to_bf16(v[i]);
    }

    return kimi_cuda_put(ar, t, (size_t) n * 2, (void **) dst, err);
}


/* The pointer tables of one MoE layer: 6 arrays of E_local + 1 device
 * pointers, this rank's routed experts then the shared one when the MoE
 * kernels run it (one shared expert: its width is the routed one).  The
 * shared experts are also kept as plain FP8 weights: under EP, or when
 * there are several (one MLP n_shared times as wide), they run as a dense
 * MLP. */
static int
kimi_cuda_put_experts(kimi_cuda_t *b, kimi_cuda_arena_t *ar, uint32_t l,
    const kimi_layer_weights_t *L, kimi_cuda_layer_t *d, kimi_err_t *err)
{
    uint32_t          E = b->E_local, ne = E + (b->shared ? 1 : 0);
    int               n_maps = (int) E + (b->shared_in_moe ? 1 : 0);
    kimi_cuda_fp8_t   g, u, dn;
    void            **tab = NULL;
    void             *dev;
    int               rc;

    if (ar->base != NULL) {
        tab = calloc((size_t) 6 * (E + 1), sizeof(void *));

        if (tab == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "cuda weights: tables");
        }
    }

    for (uint32_t e = 0; e < ne; e++) {
        const kimi_mlp_weights_t  *m = e < E
                                       ? &L->experts[b->expert_first + e]
                                       : &L->shared_experts;

        if ((rc = kimi_cuda_put_fp8(ar, &m->gate_proj, "expert gate_proj", l,
                                    &g, err)) != 0
            || (rc = kimi_cuda_put_fp8(ar, &m->up_proj, "expert up_proj", l,
                                       &u, err)) != 0
            || (rc = kimi_cuda_put_fp8(ar, &m->down_proj, "expert down_proj",
                                       l, &dn, err)) != 0)
        {
            free(tab);
            return rc;
        }

        if (e == E) {
            d->sh_gate = g;
            d->sh_up = u;
            d->sh_down = dn;
        }

        if (tab != NULL && (e < E || b->shared_in_moe)) {
            tab[0 * (E + 1) + e] = g.w;
            tab[1 * (E + 1) + e] = g.s;
            tab[2 * (E + 1) + e] = u.w;
            tab[3 * (E + 1) + e] = u.s;
            tab[4 * (E + 1) + e] = dn.w;
            tab[5 * (E + 1) + e] = dn.s;
        }
    }

    rc = kimi_cuda_put(ar, tab, (size_t) 6 * (E + 1) * sizeof(void *), &dev,
                       err);

    /* the grouped prefill GEMMs load expert weights by TMA descriptor */
    if (rc == 0) {
        void  *maps = NULL;

        if (tab != NULL) {
            maps = calloc(1, kimi_moe_tmaps_bytes(n_maps));

            if (maps == NULL) {
                free(tab);
                return kimi_err_set(err, KIMI_ENOMEM, "cuda weights: maps");
            }

            rc = kimi_moe_tmaps_encode(maps,
                     (const uint8_t *const *) (tab + 0 * (E + 1)),
                     (const uint8_t *const *) (tab + 2 * (E + 1)),
                     (const uint8_t *const *) (tab + 4 * (E + 1)),
                     n_maps, (int) L->experts[b->expert_first].gate_proj.cols,
                     (int) L->experts[b->expert_first].gate_proj.rows, err);
        }

        if (rc == 0) {
            rc = kimi_cuda_put(ar, maps, kimi_moe_tmaps_bytes(n_maps),
                               (void **) &d->ex.tmaps, err);
            d->ex.n_tmaps = n_maps;
        }

        free(maps);
    }

    free(tab);

    if (rc == 0 && dev != NULL) {
        void  **p = dev;

        d->ex.gate = (const uint8_t *const *) (p + 0 * (E + 1));
        d->ex.gate_s = (const float *const *) (p + 1 * (E + 1));
        d->ex.up = (const uint8_t *const *) (p + 2 * (E + 1));
        d->ex.up_s = (const float *const *) (p + 3 * (E + 1));
        d->ex.down = (const uint8_t *const *) (p + 4 * (E + 1));
        d->ex.down_s = (const float *const *) (p + 5 * (E + 1));
    }

    return rc;
}


/* kv_b_proj stays whole in a tensor-parallel shard (model.c): the rows of
 * this rank's heads ([H][nope + v][R], FP8 blocks of 128 rows) go up. */
static int
kimi_cuda_put_kv_b(kimi_cuda_t *b, kimi_cuda_arena_t *ar, uint32_t l,
    const kimi_layer_weights_t *L, kimi_cuda_layer_t *d, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    kimi_weight_t               w = L->kv_b_proj;
    size_t                      per = c->qk_nope_head_dim + c->v_head_dim;
    size_t                      r0 = b->model->head_first * per;

    if (b->H != c->num_attention_heads && w.data != NULL
        && w.scale_inv != NULL)
    {
        w.data = (const uint8_t *) w.data + r0 * w.cols;
        w.scale_inv += (r0 / 128) * ((w.cols + 127) / 128);
        w.rows = (uint32_t) (b->H * per);
    }

    return kimi_cuda_put_fp8(ar, &w, "kv_b_proj", l, &d->kv_b, err);
}


static int
kimi_cuda_walk(kimi_cuda_t *b, kimi_cuda_arena_t *ar, kimi_err_t *err)
{
    const kimi_model_t         *m = b->model;
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    D = c->hidden_size;
    int                         rc;

    /* a pipeline's stage 0 embeds and runs lm_head, its last stage the
     * final norm (what it sends back is normed) */
    if (b->pp_stage == 0) {
        if ((rc = kimi_cuda_put_bf16(ar, &m->embed_tokens, &b->embed, err))
            != 0)
        {
            return rc;
        }

        if (m->lm_head.data == m->embed_tokens.data) {
            b->lm_head = b->embed;

        } else if ((rc = kimi_cuda_put_bf16(ar, &m->lm_head, &b->lm_head,
                                            err)) != 0)
        {
            return rc;
        }
    }

    if (b->l_last == c->num_hidden_layers
        && (rc = kimi_cuda_put_vec(ar, m->norm, D, &b->norm, err)) != 0)
    {
        return rc;
    }

    for (uint32_t l = b->l_first; l < b->l_last; l++) {
        const kimi_layer_weights_t  *L = &m->layers[l];
        kimi_cuda_layer_t           *d = &b->layers[l];

        if ((rc = kimi_cuda_put_vec(ar, L->input_layernorm, D, &d->in_ln,
                                    err)) != 0
            || (rc = kimi_cuda_put_vec(ar, L->post_attention_layernorm, D,
                                       &d->post_ln, err)) != 0
            || (rc = kimi_cuda_put_vec(ar, L->kv_a_layernorm, c->kv_lora_rank,
                                       &d->kv_a_ln, err)) != 0
            || (rc = kimi_cuda_put_fp8(ar, &L->q_b_proj, c->q_lora_rank
                                       ? "q_b_proj" : "q_proj", l, &d->q_b,
                                       err)) != 0
            || (rc = kimi_cuda_put_fp8(ar, &L->kv_a_proj_with_mqa,
                                       "kv_a_proj_with_mqa", l, &d->kv_a,
                                       err)) != 0
            || (rc = kimi_cuda_put_fp8(ar, &L->o_proj, "o_proj", l, &d->o,
                                       err)) != 0
            || (rc = kimi_cuda_put_kv_b(b, ar, l, L, d, err)) != 0)
        {
            return rc;
        }

        /* q_lora_rank null: q_b holds q_proj, no q LoRA */
        if (c->q_lora_rank > 0
            && ((rc = kimi_cuda_put_vec(ar, L->q_a_layernorm, c->q_lora_rank,
                                        &d->q_a_ln, err)) != 0
                || (rc = kimi_cuda_put_fp8(ar, &L->q_a_proj, "q_a_proj", l,
                                           &d->q_a, err)) != 0))
        {
            return rc;
        }

        d->is_moe = L->is_moe;

        if (!L->is_moe) {
            uint32_t  I = b->I_dense;

            if ((rc = kimi_cuda_put_fp8_pad(ar, &L->mlp.gate_proj, I,
                                            L->mlp.gate_proj.cols,
                                            "gate_proj", l, &d->gate, err))
                != 0
                || (rc = kimi_cuda_put_fp8_pad(ar, &L->mlp.up_proj, I,
                                               L->mlp.up_proj.cols,
                                               "up_proj", l, &d->up, err))
                   != 0
                || (rc = kimi_cuda_put_fp8_pad(ar, &L->mlp.down_proj,
                                               L->mlp.down_proj.rows, I,
                                               "down_proj", l, &d->down,
                                               err)) != 0)
            {
                return rc;
            }

            continue;
        }

        if ((rc = kimi_cuda_put_bf16(ar, &L->gate, &d->router, err)) != 0
            || (rc = kimi_cuda_put_experts(b, ar, l, L, d, err)) != 0)
        {
            return rc;
        }

        d->bias = NULL;

        if (L->e_score_correction_bias != NULL
            && (rc = kimi_cuda_put(ar, L->e_score_correction_bias,
                                   (size_t) b->E * sizeof(float),
                                   (void **) &d->bias, err)) != 0)
        {
            return rc;
        }
    }

    return 0;
}


int
kimi_cuda_weights_upload(kimi_cuda_t *b, kimi_err_t *err)
{
    kimi_cuda_arena_t  ar;
    size_t             free_b = 0, total_b = 0;
    cudaError_t        ce;
    int                rc;

    memset(&ar, 0, sizeof(ar));

    if ((rc = kimi_cuda_walk(b, &ar, err)) != 0) {
        return rc;
    }

    b->wbytes = ar.off;
    ce = cudaMalloc(&b->warena, ar.off);

    if (ce != cudaSuccess) {
        (void) cudaGetLastError();
        (void) cudaMemGetInfo(&free_b, &total_b);
        b->warena = NULL;
        return kimi_err_set(err, KIMI_ENOMEM, "cuda backend: the weights "
                            "need %.2f GiB, device %d has %.2f GiB free of "
                            "%.2f (%s)", ar.off / 1073741824.0, b->device,
                            free_b / 1073741824.0, total_b / 1073741824.0,
                            cudaGetErrorString(ce));
    }

    ar.base = b->warena;
    ar.off = 0;
    rc = kimi_cuda_walk(b, &ar, err);
    free(ar.tmp);
    return rc;
}
