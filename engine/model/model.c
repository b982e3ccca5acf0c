/*
 * Loading a model: weight views over the safetensors shards, or dummy
 * random weights of the configured shapes.
 *
 * Owns:   the shard set (opened lazily: a shard holding only experts this
 *         rank does not own is never opened), the name -> shard index, the
 *         fp32 copies of 1-D weights, and the dummy weight buffers.
 * Never:  computes with the weights; copies a 2-D weight out of its mmap.
 * Holds:  every kimi_weight_t handed out has the shape the config implies,
 *         a dtype the backends implement, and (F8) a scale_inv of
 *         [ceil(rows/128)][ceil(cols/128)] F32.
 */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "model.h"
#include "model_rand.h"
#include "../common/pool.h"
#include "../backend/cpu/ops.h"


typedef struct {
    char       *file;
    kimi_st_t  *st;                       /* NULL until first needed */
} kimi_model_shard_t;

struct kimi_model_store {
    const char          *dir;
    json_t              *weight_map;      /* index json "weight_map" */
    kimi_model_shard_t  *shards;
    uint32_t             n_shards;
    void               **bufs;            /* owned allocations */
    uint32_t             n_bufs;
    uint32_t             cap_bufs;
    int                  dummy;
    uint64_t             seed;
    int                  populate;
    kimi_pool_t         *quant_pool;      /* --quantization fp8, loading */
};


static int kimi_model_shard_tp(kimi_model_t *m, uint32_t rank, uint32_t size,
    kimi_err_t *err);


kimi_model_params_t
kimi_model_default_params(void)
{
    kimi_model_params_t  p;

    memset(&p, 0, sizeof(p));
    p.load_format = "auto";
    return p;
}


static void *
kimi_model_alloc(kimi_model_t *m, size_t size)
{
    struct kimi_model_store  *s = m->store;
    void                     *p;

    if (s->n_bufs == s->cap_bufs) {
        uint32_t  cap = s->cap_bufs ? s->cap_bufs * 2 : 64;
        void    **nb = realloc(s->bufs, cap * sizeof(void *));

        if (nb == NULL) {
            return NULL;
        }

        s->bufs = nb;
        s->cap_bufs = cap;
    }

    p = malloc(size ? size : 1);

    if (p != NULL) {
        s->bufs[s->n_bufs++] = p;
    }

    return p;
}


/* Finds a tensor in the shards (index or single file). */
static int
kimi_model_find(kimi_model_t *m, const char *name,
    const kimi_st_tensor_t **out, const char **file, kimi_err_t *err)
{
    struct kimi_model_store  *s = m->store;
    kimi_model_shard_t       *sh = NULL;
    const char               *fname = "model.safetensors";
    char                      path[4096];
    int                       rc;

    if (s->weight_map != NULL) {
        json_t  *v = json_object_get(s->weight_map, name);

        if (!json_is_string(v)) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s/model.safetensors."
                                "index.json: no tensor \"%s\"", s->dir, name);
        }

        fname = json_string_value(v);
    }

    for (uint32_t i = 0; i < s->n_shards; i++) {
        if (strcmp(s->shards[i].file, fname) == 0) {
            sh = &s->shards[i];
            break;
        }
    }

    if (sh == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" maps to "
                            "unknown shard \"%s\"", s->dir, name, fname);
    }

    if (sh->st == NULL) {
        snprintf(path, sizeof(path), "%s/%s", s->dir, sh->file);

        if ((rc = kimi_st_open(&sh->st, path, err)) != 0) {
            return rc;
        }

        if (s->populate && (rc = kimi_st_prefault(sh->st, err)) != 0) {
            return rc;
        }
    }

    *file = kimi_st_path(sh->st);
    *out = kimi_st_find(sh->st, name);

    if (*out == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" is "
                            "missing", *file, name);
    }

    return 0;
}


/* One thread's share of a dummy weight: elements [first, last) of the
 * stream, random number k for element k (bf16) or for bytes 8k..8k+7
 * (fp8), the values one sequential pass would give. */
typedef struct {
    const kimi_rand_t  *r;
    void               *data;
    kimi_dtype_e        dtype;
    float               std;
    size_t              first;
    size_t              last;
} kimi_dummy_range_t;


static void *
kimi_model_dummy_fill(void *arg)
{
    kimi_dummy_range_t  *d = arg;

    if (d->dtype == KIMI_DTYPE_F8_E4M3) {
        uint8_t  *q = d->data;

        for (size_t i = d->first; i < d->last; i += 8) {
            uint64_t  v = kimi_rand_at(d->r, i / 8) & 0xbfbfbfbfbfbfbfbfull;

            /* little-endian: byte j is bits 8j..8j+7, as the format says */
            memcpy(q + i, &v, d->last - i < 8 ? d->last - i : 8);
        }

        return NULL;
    }

    uint16_t  *b = d->data;

    for (size_t i = d->first; i < d->last; i++) {
        double  u = (double) (kimi_rand_at(d->r, i) >> 11) * 0x1p-53;

        b[i] = kimi_f32_to_bf16((float) ((u * 2 - 1) * 1.7320508 * d->std));
    }

    return NULL;
}


/* Fills n elements of a dummy weight, over several threads when it is
 * large (Kimi-K2 widths: tens of GB per rank; one thread made ~0.4 GB/s). */
static void
kimi_model_dummy_values(const kimi_rand_t *r, void *data, kimi_dtype_e dt,
    float std, size_t n)
{
    enum { MAX_THREADS = 16, MIN_PER_THREAD = 1 << 20 };
    kimi_dummy_range_t  d[MAX_THREADS];
    pthread_t           th[MAX_THREADS];
    long                cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t              k, nt, per, started = 0;

    nt = n / MIN_PER_THREAD;
    nt = nt < 1 ? 1 : nt;
    nt = nt > MAX_THREADS ? MAX_THREADS : nt;
    nt = cpus > 0 && nt > (size_t) cpus ? (size_t) cpus : nt;
    per = (n / nt + 7) & ~(size_t) 7;        /* fp8 ranges on 8-byte words */

    for (k = 0; k < nt; k++) {
        d[k] = (kimi_dummy_range_t) { r, data, dt, std,
                                      k * per < n ? k * per : n,
                                      (k + 1) * per < n && k + 1 < nt
                                      ? (k + 1) * per : n };
    }

    for (k = 1; k < nt; k++) {
        if (pthread_create(&th[k], NULL, kimi_model_dummy_fill, &d[k]) != 0) {
            break;
        }

        started = k;
    }

    /* ranges a thread could not be started for are filled here */
    for (k = started + 1; k < nt; k++) {
        kimi_model_dummy_fill(&d[k]);
    }

    kimi_model_dummy_fill(&d[0]);

    for (k = 1; k <= started; k++) {
        pthread_join(th[k], NULL);
    }
}


/* Dummy fp8 weight: random codes with exponent field <= 7 (|q| < 2, never
 * NaN) and per-block scales near std / rms(q); bf16: uniform with the
 * given std.  One stream per name: codes (one random number per 8 bytes)
 * then scales. */
static int
kimi_model_dummy_weight(kimi_model_t *m, const char *name, uint32_t rows,
    uint32_t cols, kimi_dtype_e dt, float std, kimi_weight_t *w,
    kimi_err_t *err)
{
    kimi_rand_t  r;
    size_t       n = (size_t) rows * cols;
    uint32_t     nbr = (rows + 127) / 128, nbc = (cols + 127) / 128;

    kimi_rand_init(&r, m->store->seed, name);
    w->rows = rows;
    w->cols = cols;
    w->dtype = dt;
    w->scale_inv = NULL;

    if (dt == KIMI_DTYPE_F8_E4M3) {
        uint8_t  *q = kimi_model_alloc(m, n);
        float    *s = kimi_model_alloc(m, (size_t) nbr * nbc * sizeof(float));

        if (q == NULL || s == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "dummy \"%s\": out of "
                                "memory (%zu bytes)", name, n);
        }

        kimi_model_dummy_values(&r, q, dt, std, n);
        r.s += ((n + 7) / 8) * 0x9e3779b97f4a7c15ull;   /* past the codes */

        /* rms of the code distribution above is about 0.72 */
        for (size_t i = 0; i < (size_t) nbr * nbc; i++) {
            s[i] = std / 0.72f * (float) (0.75 + 0.5 * kimi_rand_unif(&r));
        }

        w->data = q;
        w->scale_inv = s;
        m->bytes_mapped += n;
        return 0;
    }

    uint16_t  *b = kimi_model_alloc(m, n * sizeof(uint16_t));

    if (b == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "dummy \"%s\": out of memory",
                            name);
    }

    kimi_model_dummy_values(&r, b, KIMI_DTYPE_BF16, std, n);
    w->data = b;
    w->dtype = KIMI_DTYPE_BF16;
    m->bytes_mapped += n * 2;
    return 0;
}


/* safetensors offsets are byte offsets: a BF16/F32 tensor after an odd-
 * sized one may sit misaligned in the mapping.  Such a tensor is copied to
 * an aligned buffer (rare: writers lay tensors out back to back, and the
 * FP8 sizes of real checkpoints are multiples of 4). */
static const void *
kimi_model_aligned(kimi_model_t *m, const kimi_st_tensor_t *t, size_t align)
{
    void  *copy;

    if ((uintptr_t) t->data % align == 0) {
        return t->data;
    }

    copy = kimi_model_alloc(m, t->n_bytes);

    if (copy != NULL) {
        memcpy(copy, t->data, t->n_bytes);
    }

    return copy;
}


/* A BF16 / F32 weight being quantised to FP8 blocks, 128-row bands a
 * work item (each band's blocks are independent). */
typedef struct {
    const kimi_weight_t  *src;
    uint8_t              *q;
    float                *s;
    int                   failed;
} kimi_quant_job_t;


static void
kimi_model_quant_bands(void *ctx, uint32_t worker, uint32_t b0, uint32_t b1)
{
    kimi_quant_job_t     *j = ctx;
    const kimi_weight_t  *w = j->src;
    uint32_t              nbc = (w->cols + 127) / 128;
    float                *f = malloc((size_t) 128 * w->cols * sizeof(float));

    if (f == NULL) {
        j->failed = 1;
        return;
    }

    for (uint32_t b = b0; b < b1; b++) {
        uint32_t  r0 = b * 128;
        uint32_t  nr = w->rows - r0 < 128 ? w->rows - r0 : 128;
        size_t    n = (size_t) nr * w->cols, off = (size_t) r0 * w->cols;

        if (w->dtype == KIMI_DTYPE_BF16) {
            const uint16_t  *x = (const uint16_t *) w->data + off;

            for (size_t i = 0; i < n; i++) {
                f[i] = kimi_bf16_to_f32(x[i]);
            }

        } else {
            memcpy(f, (const float *) w->data + off, n * sizeof(float));
        }

        kimi_fp8_quant_blocks(f, nr, w->cols, j->q + off, j->s + b * nbc);
    }

    free(f);
}


/* --quantization fp8: w (BF16 or F32) replaced by FP8 e4m3 codes with one
 * scale per 128x128 block (amax / 448), the layout of FP8 checkpoints. */
static int
kimi_model_quantize(kimi_model_t *m, const char *name, kimi_weight_t *w,
    kimi_err_t *err)
{
    uint32_t          nbr = (w->rows + 127) / 128, nbc = (w->cols + 127) / 128;
    kimi_quant_job_t  j = { w, NULL, NULL, 0 };

    j.q = kimi_model_alloc(m, (size_t) w->rows * w->cols);
    j.s = kimi_model_alloc(m, (size_t) nbr * nbc * sizeof(float));

    if (j.q == NULL || j.s == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "\"%s\": out of memory for "
                            "its FP8 copy", name);
    }

    kimi_pool_run(m->store->quant_pool, nbr, kimi_model_quant_bands, &j);

    if (j.failed) {
        return kimi_err_set(err, KIMI_ENOMEM, "\"%s\": out of memory "
                            "quantising it", name);
    }

    w->data = j.q;
    w->scale_inv = j.s;
    w->dtype = KIMI_DTYPE_F8_E4M3;
    m->n_quantized++;
    return 0;
}


/* A 2-D weight [rows][cols]; F8 also needs NAME_scale_inv.  dummy_dt F8
 * marks the linear layers FP8 checkpoints store in FP8: with
 * --quantization fp8 a BF16 / F32 one is quantised here. */
static int
kimi_model_weight(kimi_model_t *m, const char *name, uint32_t rows,
    uint32_t cols, kimi_dtype_e dummy_dt, float dummy_std, kimi_weight_t *w,
    kimi_err_t *err)
{
    const kimi_st_tensor_t  *t, *s;
    const char              *file, *sfile;
    char                     sname[512];
    int                      rc;

    if (m->store->dummy) {
        return kimi_model_dummy_weight(m, name, rows, cols, dummy_dt,
                                       dummy_std, w, err);
    }

    if ((rc = kimi_model_find(m, name, &t, &file, err)) != 0) {
        return rc;
    }

    if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" has shape "
                            "[%llu, %llu] (%u dims), expected [%u, %u]", file,
                            name, (unsigned long long) t->shape[0],
                            (unsigned long long) t->shape[1], t->n_dims,
                            rows, cols);
    }

    w->data = t->data;
    w->dtype = t->dtype;
    w->rows = rows;
    w->cols = cols;
    w->scale_inv = NULL;

    switch (t->dtype) {

    case KIMI_DTYPE_BF16:
    case KIMI_DTYPE_F32:
        w->data = kimi_model_aligned(m, t, t->dtype == KIMI_DTYPE_F32 ? 4 : 2);
        m->bytes_mapped += t->n_bytes;

        if (w->data == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "\"%s\": out of memory",
                                name);
        }

        if (m->store->quant_pool != NULL && dummy_dt == KIMI_DTYPE_F8_E4M3) {
            return kimi_model_quantize(m, name, w, err);
        }

        return 0;

    case KIMI_DTYPE_F8_E4M3:
        break;

    default:
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" is %s, "
                            "expected F8_E4M3, BF16 or F32", file, name,
                            t->dtype_name);
    }

    if (snprintf(sname, sizeof(sname), "%s_scale_inv", name)
        >= (int) sizeof(sname))
    {
        return kimi_err_set(err, KIMI_EINVAL, "tensor name too long");
    }

    if ((rc = kimi_model_find(m, sname, &s, &sfile, err)) != 0) {
        return rc;
    }

    if (s->dtype != KIMI_DTYPE_F32 || s->n_dims != 2
        || s->shape[0] != (rows + 127) / 128
        || s->shape[1] != (cols + 127) / 128)
    {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" is %s "
                            "[%llu, %llu], expected F32 [%u, %u]", sfile,
                            sname, s->dtype_name,
                            (unsigned long long) s->shape[0],
                            (unsigned long long) s->shape[1],
                            (rows + 127) / 128, (cols + 127) / 128);
    }

    w->scale_inv = kimi_model_aligned(m, s, 4);
    m->bytes_mapped += t->n_bytes + s->n_bytes;
    return w->scale_inv ? 0 : kimi_err_set(err, KIMI_ENOMEM, "\"%s\": out "
                                           "of memory", sname);
}


/* A 1-D weight of n values, converted to fp32 (any float dtype). */
static int
kimi_model_vec(kimi_model_t *m, const char *name, uint32_t n,
    float dummy_mean, float dummy_spread, const float **out, kimi_err_t *err)
{
    const kimi_st_tensor_t  *t;
    const char              *file;
    float                   *v;
    int                      rc;

    v = kimi_model_alloc(m, (size_t) n * sizeof(float));

    if (v == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "\"%s\": out of memory", name);
    }

    *out = v;

    if (m->store->dummy) {
        kimi_rand_t  r;

        kimi_rand_init(&r, m->store->seed, name);

        for (uint32_t i = 0; i < n; i++) {
            v[i] = dummy_mean + dummy_spread
                                * (float) (kimi_rand_unif(&r) * 2 - 1);
        }

        return 0;
    }

    if ((rc = kimi_model_find(m, name, &t, &file, err)) != 0) {
        return rc;
    }

    if (t->n_dims != 1 || t->shape[0] != n) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" has %u "
                            "dims [%llu], expected [%u]", file, name,
                            t->n_dims, (unsigned long long) t->shape[0], n);
    }

    for (uint32_t i = 0; i < n; i++) {
        switch (t->dtype) {

        case KIMI_DTYPE_F32:
            memcpy(&v[i], (const uint8_t *) t->data + 4 * (size_t) i, 4);
            break;

        case KIMI_DTYPE_BF16: {
            uint16_t  b;

            memcpy(&b, (const uint8_t *) t->data + 2 * (size_t) i, 2);
            v[i] = kimi_bf16_to_f32(b);
            break;
        }

        default:
            return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" is %s, "
                                "expected F32 or BF16", file, name,
                                t->dtype_name);
        }
    }

    m->bytes_mapped += t->n_bytes;
    return 0;
}


static int
kimi_model_mlp(kimi_model_t *m, const char *prefix, uint32_t inter,
    kimi_mlp_weights_t *mlp, kimi_err_t *err)
{
    const kimi_model_config_t  *c = &m->cfg;
    char                        name[512];
    float                       sh = 1.0f / sqrtf((float) c->hidden_size);
    float                       si = 1.0f / sqrtf((float) inter);
    int                         rc;

    snprintf(name, sizeof(name), "%s.gate_proj.weight", prefix);
    if ((rc = kimi_model_weight(m, name, inter, c->hidden_size,
                                KIMI_DTYPE_F8_E4M3, sh, &mlp->gate_proj,
                                err)) != 0)
    {
        return rc;
    }

    snprintf(name, sizeof(name), "%s.up_proj.weight", prefix);
    if ((rc = kimi_model_weight(m, name, inter, c->hidden_size,
                                KIMI_DTYPE_F8_E4M3, sh, &mlp->up_proj,
                                err)) != 0)
    {
        return rc;
    }

    snprintf(name, sizeof(name), "%s.down_proj.weight", prefix);
    return kimi_model_weight(m, name, c->hidden_size, inter,
                             KIMI_DTYPE_F8_E4M3, si, &mlp->down_proj, err);
}


static int
kimi_model_layer(kimi_model_t *m, uint32_t l, kimi_err_t *err)
{
    const kimi_model_config_t  *c = &m->cfg;
    kimi_layer_weights_t       *L = &m->layers[l];
    uint32_t                    H = c->num_attention_heads;
    uint32_t                    qk = kimi_model_qk_head_dim(c);
    uint32_t                    R = c->kv_lora_rank, P = c->qk_rope_head_dim;
    char                        p[256], n[512];
    int                         rc;

    snprintf(p, sizeof(p), "model.layers.%u", l);

#define KIMI_W(field, suffix, rows, cols, std)                                \
    snprintf(n, sizeof(n), "%s.%s", p, suffix);                               \
    if ((rc = kimi_model_weight(m, n, rows, cols, KIMI_DTYPE_F8_E4M3, std,    \
                                &L->field, err)) != 0) return rc

#define KIMI_V(field, suffix, len)                                            \
    snprintf(n, sizeof(n), "%s.%s", p, suffix);                               \
    if ((rc = kimi_model_vec(m, n, len, 1.0f, 0.1f, &L->field, err)) != 0)    \
        return rc

    KIMI_V(input_layernorm, "input_layernorm.weight", c->hidden_size);
    KIMI_V(post_attention_layernorm, "post_attention_layernorm.weight",
           c->hidden_size);
    if (c->q_lora_rank > 0) {
        KIMI_W(q_a_proj, "self_attn.q_a_proj.weight", c->q_lora_rank,
               c->hidden_size, 1.0f / sqrtf((float) c->hidden_size));
        KIMI_V(q_a_layernorm, "self_attn.q_a_layernorm.weight",
               c->q_lora_rank);
        KIMI_W(q_b_proj, "self_attn.q_b_proj.weight", H * qk, c->q_lora_rank,
               1.0f / sqrtf((float) c->q_lora_rank));

    } else {
        /* q_lora_rank null (Moonlight, DeepSeek-V2-Lite shapes): one q_proj,
         * kept in q_b_proj's place with hidden_size columns */
        KIMI_W(q_b_proj, "self_attn.q_proj.weight", H * qk, c->hidden_size,
               1.0f / sqrtf((float) c->hidden_size));
    }
    KIMI_W(kv_a_proj_with_mqa, "self_attn.kv_a_proj_with_mqa.weight", R + P,
           c->hidden_size, 1.0f / sqrtf((float) c->hidden_size));
    KIMI_V(kv_a_layernorm, "self_attn.kv_a_layernorm.weight", R);
    KIMI_W(kv_b_proj, "self_attn.kv_b_proj.weight",
           H * (c->qk_nope_head_dim + c->v_head_dim), R,
           1.0f / sqrtf((float) R));
    KIMI_W(o_proj, "self_attn.o_proj.weight", c->hidden_size,
           H * c->v_head_dim, 1.0f / sqrtf((float) (H * c->v_head_dim)));

#undef KIMI_W
#undef KIMI_V

    L->is_moe = kimi_model_layer_is_moe(c, l);

    if (!L->is_moe) {
        snprintf(n, sizeof(n), "%s.mlp", p);
        return kimi_model_mlp(m, n, c->intermediate_size, &L->mlp, err);
    }

    snprintf(n, sizeof(n), "%s.mlp.gate.weight", p);
    if ((rc = kimi_model_weight(m, n, c->n_routed_experts, c->hidden_size,
                                KIMI_DTYPE_BF16,
                                1.0f / sqrtf((float) c->hidden_size),
                                &L->gate, err)) != 0)
    {
        return rc;
    }

    if (L->gate.dtype == KIMI_DTYPE_F8_E4M3) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: router is F8_E4M3, "
                            "expected BF16 or F32", n);
    }

    /* DeepSeek-V2's routers have no correction bias */
    snprintf(n, sizeof(n), "%s.mlp.gate.e_score_correction_bias", p);
    if (c->router == KIMI_ROUTER_NOAUX_TC
        && (rc = kimi_model_vec(m, n, c->n_routed_experts, 0.05f, 0.05f,
                                &L->e_score_correction_bias, err)) != 0)
    {
        return rc;
    }

    if (c->n_shared_experts > 0) {
        snprintf(n, sizeof(n), "%s.mlp.shared_experts", p);
        if ((rc = kimi_model_mlp(m, n,
                                 c->moe_intermediate_size * c->n_shared_experts,
                                 &L->shared_experts, err)) != 0)
        {
            return rc;
        }
    }

    L->experts = kimi_model_alloc(m, c->n_routed_experts
                                     * sizeof(kimi_mlp_weights_t));

    if (L->experts == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "experts: out of memory");
    }

    memset(L->experts, 0, c->n_routed_experts * sizeof(kimi_mlp_weights_t));

    /* only the owned experts are looked up: others stay data == NULL and
     * their shards need not exist on this rank's disk */
    for (uint32_t e = m->expert_first; e < m->expert_last; e++) {
        snprintf(n, sizeof(n), "%s.mlp.experts.%u", p, e);
        if ((rc = kimi_model_mlp(m, n, c->moe_intermediate_size,
                                 &L->experts[e], err)) != 0)
        {
            return rc;
        }
    }

    return 0;
}


static int
kimi_model_open_index(kimi_model_t *m, kimi_err_t *err)
{
    struct kimi_model_store  *s = m->store;
    json_error_t              je;
    json_t                   *root, *v;
    const char               *key;
    char                      path[4096];
    FILE                     *f;

    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", s->dir);
    f = fopen(path, "rb");

    if (f == NULL) {
        snprintf(path, sizeof(path), "%s/model.safetensors", s->dir);
        f = fopen(path, "rb");

        if (f == NULL) {
            return kimi_err_set(err, KIMI_EIO, "%s: neither "
                                "model.safetensors.index.json nor "
                                "model.safetensors (%s)", s->dir,
                                strerror(errno));
        }

        fclose(f);
        s->shards = calloc(1, sizeof(*s->shards));

        if (s->shards == NULL
            || (s->shards[0].file = strdup("model.safetensors")) == NULL)
        {
            return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
        }

        s->n_shards = 1;
        return 0;
    }

    fclose(f);
    root = json_load_file(path, 0, &je);

    if (root == NULL || !json_is_object(json_object_get(root, "weight_map"))) {
        json_decref(root);
        return kimi_err_set(err, KIMI_EFORMAT, "%s: no \"weight_map\" object "
                            "(line %d: %s)", path, je.line, je.text);
    }

    s->weight_map = json_incref(json_object_get(root, "weight_map"));
    json_decref(root);

    /* distinct shard names; each must be a plain file name in dir */
    s->shards = calloc(json_object_size(s->weight_map) + 1,
                       sizeof(*s->shards));

    if (s->shards == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
    }

    json_object_foreach(s->weight_map, key, v) {
        const char  *fn = json_string_value(v);
        uint32_t     i;

        if (fn == NULL || fn[0] == '\0' || strchr(fn, '/') != NULL
            || strcmp(fn, "..") == 0 || strcmp(fn, ".") == 0)
        {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\" maps "
                                "to an invalid shard name", path, key);
        }

        for (i = 0; i < s->n_shards; i++) {
            if (strcmp(s->shards[i].file, fn) == 0) {
                break;
            }
        }

        if (i == s->n_shards) {
            if ((s->shards[i].file = strdup(fn)) == NULL) {
                return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
            }

            s->n_shards++;
        }
    }

    return 0;
}


int
kimi_model_load(struct kimi_model **out, const kimi_model_params_t *p,
    kimi_err_t *err)
{
    kimi_model_t         *m;
    kimi_model_config_t  *c;
    const char           *fmt = p->load_format ? p->load_format : "auto";
    int                   rc;

    if (p->dir == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "model: no directory given");
    }

    if (strcmp(fmt, "auto") != 0 && strcmp(fmt, "dummy") != 0
        && strcmp(fmt, "safetensors") != 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "--load-format \"%s\": expected "
                            "auto, safetensors or dummy", fmt);
    }

    m = calloc(1, sizeof(*m));

    if (m == NULL || (m->store = calloc(1, sizeof(*m->store))) == NULL) {
        free(m);
        return kimi_err_set(err, KIMI_ENOMEM, "model: out of memory");
    }

    m->store->dir = p->dir;
    m->store->dummy = strcmp(fmt, "dummy") == 0;
    m->store->seed = p->seed;
    m->store->populate = p->populate;
    c = &m->cfg;

    if ((rc = kimi_model_config_load(c, p->dir, p->hf_overrides, err)) != 0) {
        goto failed;
    }

    if (p->quantize_fp8 && !c->quant_fp8) {
        long  cpus = sysconf(_SC_NPROCESSORS_ONLN);

        if ((rc = kimi_pool_init(&m->store->quant_pool,
                                 cpus < 1 ? 1 : cpus > 32 ? 32
                                 : (uint32_t) cpus, err)) != 0)
        {
            goto failed;
        }

        c->quant_fp8 = 1;
    }

    m->expert_first = p->expert_first;
    m->expert_last = p->expert_last;

    if (m->expert_first == 0 && m->expert_last == 0) {
        m->expert_last = c->n_routed_experts;
    }

    if (m->expert_first > m->expert_last
        || m->expert_last > c->n_routed_experts)
    {
        rc = kimi_err_set(err, KIMI_EINVAL, "model: expert range [%u, %u) "
                          "outside [0, %u)", m->expert_first, m->expert_last,
                          c->n_routed_experts);
        goto failed;
    }

    m->layer_first = p->layer_first;
    m->layer_last = p->layer_last ? p->layer_last : c->num_hidden_layers;

    if (m->layer_first >= m->layer_last
        || m->layer_last > c->num_hidden_layers)
    {
        rc = kimi_err_set(err, KIMI_EINVAL, "model: layer range [%u, %u) "
                          "outside [0, %u)", m->layer_first, m->layer_last,
                          c->num_hidden_layers);
        goto failed;
    }

    if (!m->store->dummy && (rc = kimi_model_open_index(m, err)) != 0) {
        goto failed;
    }

    if ((rc = kimi_model_weight(m, "model.embed_tokens.weight", c->vocab_size,
                                c->hidden_size, KIMI_DTYPE_BF16, 1.0f,
                                &m->embed_tokens, err)) != 0
        || (rc = kimi_model_vec(m, "model.norm.weight", c->hidden_size, 1.0f,
                                0.1f, &m->norm, err)) != 0)
    {
        goto failed;
    }

    if (c->tie_word_embeddings) {
        m->lm_head = m->embed_tokens;

    } else if ((rc = kimi_model_weight(m, "lm_head.weight", c->vocab_size,
                                       c->hidden_size, KIMI_DTYPE_BF16,
                                       3.0f / sqrtf((float) c->hidden_size),
                                       &m->lm_head, err)) != 0)
    {
        goto failed;
    }

    if (m->embed_tokens.dtype == KIMI_DTYPE_F8_E4M3) {
        rc = kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: embed_tokens in "
                          "F8_E4M3 is not supported", p->dir);
        goto failed;
    }

    m->layers = kimi_model_alloc(m, c->num_hidden_layers
                                    * sizeof(kimi_layer_weights_t));

    if (m->layers == NULL) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "model: out of memory");
        goto failed;
    }

    memset(m->layers, 0, c->num_hidden_layers * sizeof(kimi_layer_weights_t));

    for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
        if (l < m->layer_first || l >= m->layer_last) {
            continue;                      /* another pipeline stage's */
        }

        if ((rc = kimi_model_layer(m, l, err)) != 0) {
            goto failed;
        }
    }

    m->tp_size = 1;
    m->tp_experts_whole = p->tp_size > 1 && p->tp_experts_whole;
    m->n_heads = c->num_attention_heads;

    if (p->tp_size > 1
        && (rc = kimi_model_shard_tp(m, p->tp_rank, p->tp_size, err)) != 0)
    {
        goto failed;
    }

    m->store->dir = NULL;                 /* borrowed only while loading */
    kimi_pool_free(m->store->quant_pool);
    m->store->quant_pool = NULL;
    *out = m;
    return 0;

failed:

    kimi_model_free(m);
    return rc;
}


/* ---- tensor parallel shards ---- */

static size_t
kimi_model_elt(kimi_dtype_e dt)
{
    return dt == KIMI_DTYPE_F8_E4M3 ? 1 : dt == KIMI_DTYPE_F32 ? 4 : 2;
}


/* An FP8 slice must start on a 128 block and be whole blocks (or run to
 * the end): its scales are then the blocks it covers, as the GEMMs index
 * them. */
static int
kimi_model_slice_ok(const kimi_weight_t *w, uint32_t first, uint32_t n,
    uint32_t total)
{
    return w->dtype != KIMI_DTYPE_F8_E4M3
           || (first % KIMI_FP8_BLOCK == 0
               && (n % KIMI_FP8_BLOCK == 0 || first + n == total));
}


/* rows [r0, r0 + n) of w: a view */
static int
kimi_model_rows(kimi_weight_t *w, uint32_t r0, uint32_t n, const char *what,
    kimi_err_t *err)
{
    size_t  sc = (w->cols + KIMI_FP8_BLOCK - 1) / KIMI_FP8_BLOCK;

    if (w->data == NULL) {
        return 0;                          /* an expert this rank skips */
    }

    if (!kimi_model_slice_ok(w, r0, n, w->rows)) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "tensor parallel: %s rows"
                            " [%u, %u) do not fall on 128-row FP8 blocks",
                            what, r0, r0 + n);
    }

    w->data = (const uint8_t *) w->data
              + (size_t) r0 * w->cols * kimi_model_elt(w->dtype);
    if (w->scale_inv != NULL) {
        w->scale_inv += (size_t) (r0 / KIMI_FP8_BLOCK) * sc;
    }
    w->rows = n;
    return 0;
}


/* columns [c0, c0 + n) of w: a copy (rows stay whole) */
static int
kimi_model_cols(kimi_model_t *m, kimi_weight_t *w, uint32_t c0, uint32_t n,
    const char *what, kimi_err_t *err)
{
    size_t    e = kimi_model_elt(w->dtype);
    size_t    sc = (w->cols + KIMI_FP8_BLOCK - 1) / KIMI_FP8_BLOCK;
    size_t    nsc = (n + KIMI_FP8_BLOCK - 1) / KIMI_FP8_BLOCK;
    size_t    sr = (w->rows + KIMI_FP8_BLOCK - 1) / KIMI_FP8_BLOCK;
    uint8_t  *d;
    float    *s = NULL;

    if (w->data == NULL) {
        return 0;
    }

    if (!kimi_model_slice_ok(w, c0, n, w->cols)) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "tensor parallel: %s"
                            " columns [%u, %u) do not fall on 128-column FP8"
                            " blocks", what, c0, c0 + n);
    }

    d = kimi_model_alloc(m, (size_t) w->rows * n * e);
    if (d == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "tensor parallel: %s", what);
    }

    for (uint32_t r = 0; r < w->rows; r++) {
        memcpy(d + (size_t) r * n * e,
               (const uint8_t *) w->data + ((size_t) r * w->cols + c0) * e,
               (size_t) n * e);
    }

    if (w->scale_inv != NULL) {
        s = kimi_model_alloc(m, sr * nsc * sizeof(float));
        if (s == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "tensor parallel: %s",
                                what);
        }

        for (size_t br = 0; br < sr; br++) {
            memcpy(s + br * nsc, w->scale_inv + br * sc + c0 / KIMI_FP8_BLOCK,
                   nsc * sizeof(float));
        }
    }

    w->data = d;
    w->scale_inv = s;
    w->cols = n;
    return 0;
}


/* gate/up rows and down columns [rank * I / W, ...) of an MLP */
static int
kimi_model_shard_mlp(kimi_model_t *m, kimi_mlp_weights_t *w, uint32_t rank,
    uint32_t size, const char *what, kimi_err_t *err)
{
    uint32_t  I = w->gate_proj.rows, n = I / size;
    int       rc;

    if (w->gate_proj.data == NULL) {
        return 0;
    }

    if (I % size != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "tensor parallel: %s width %u"
                            " does not split over %u ranks", what, I, size);
    }

    if ((rc = kimi_model_rows(&w->gate_proj, rank * n, n, what, err)) != 0
        || (rc = kimi_model_rows(&w->up_proj, rank * n, n, what, err)) != 0
        || (rc = kimi_model_cols(m, &w->down_proj, rank * n, n, what, err))
           != 0)
    {
        return rc;
    }

    return 0;
}


/*
 * Megatron-style shards for rank of size: attention heads [h0, h0 + H/W)
 * (q_b_proj rows, o_proj columns; kv_b_proj stays whole, the backend
 * keeps its heads' rows), every MLP's intermediate width (dense, shared,
 * each routed expert).  Replicated: embeddings, norms, q_a, kv_a, the
 * router, lm_head.  Each rank's o_proj and down_proj give partial sums.
 */
static int
kimi_model_shard_tp(kimi_model_t *m, uint32_t rank, uint32_t size,
    kimi_err_t *err)
{
    const kimi_model_config_t  *c = &m->cfg;
    uint32_t                    H = c->num_attention_heads, Hl;
    uint32_t                    qk = kimi_model_qk_head_dim(c);
    char                        what[96];
    int                         rc;

    if (H % size != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "tensor parallel: %u attention"
                            " heads do not split over %u ranks", H, size);
    }

    Hl = H / size;
    m->tp_rank = rank;
    m->tp_size = size;
    m->head_first = rank * Hl;
    m->n_heads = Hl;

    for (uint32_t l = m->layer_first; l < m->layer_last; l++) {
        kimi_layer_weights_t  *L = &m->layers[l];

        snprintf(what, sizeof(what), "layer %u q_b_proj", l);
        if ((rc = kimi_model_rows(&L->q_b_proj, rank * Hl * qk, Hl * qk,
                                  what, err)) != 0)
        {
            return rc;
        }

        snprintf(what, sizeof(what), "layer %u o_proj", l);
        if ((rc = kimi_model_cols(m, &L->o_proj, rank * Hl * c->v_head_dim,
                                  Hl * c->v_head_dim, what, err)) != 0)
        {
            return rc;
        }

        if (!L->is_moe) {
            snprintf(what, sizeof(what), "layer %u mlp", l);
            if ((rc = kimi_model_shard_mlp(m, &L->mlp, rank, size, what,
                                           err)) != 0)
            {
                return rc;
            }
            continue;
        }

        snprintf(what, sizeof(what), "layer %u shared_experts", l);
        if (c->n_shared_experts > 0
            && (rc = kimi_model_shard_mlp(m, &L->shared_experts, rank, size,
                                          what, err)) != 0)
        {
            return rc;
        }

        for (uint32_t e = m->expert_first;
             !m->tp_experts_whole && e < m->expert_last; e++)
        {
            snprintf(what, sizeof(what), "layer %u expert %u", l, e);
            if ((rc = kimi_model_shard_mlp(m, &L->experts[e], rank, size,
                                           what, err)) != 0)
            {
                return rc;
            }
        }
    }

    return 0;
}


void
kimi_model_free(struct kimi_model *m)
{
    struct kimi_model_store  *s;

    if (m == NULL) {
        return;
    }

    s = m->store;

    if (s != NULL) {
        for (uint32_t i = 0; i < s->n_shards; i++) {
            kimi_st_close(s->shards[i].st);
            free(s->shards[i].file);
        }

        for (uint32_t i = 0; i < s->n_bufs; i++) {
            free(s->bufs[i]);
        }

        free(s->shards);
        free(s->bufs);
        json_decref(s->weight_map);
        kimi_pool_free(s->quant_pool);
        free(s);
    }

    free(m);
}


void
kimi_model_pp_layers(const kimi_model_config_t *cfg, uint32_t stage,
    uint32_t stages, uint32_t *first, uint32_t *last)
{
    uint32_t  L = cfg->num_hidden_layers, per = L / stages, extra = L % stages;

    *first = stage * per + (stage < extra ? stage : extra);
    *last = *first + per + (stage < extra ? 1 : 0);
}


uint32_t
kimi_model_eos_ids(const struct kimi_model *m, const int32_t **ids)
{
    *ids = m->cfg.eos_token_ids;
    return m->cfg.n_eos;
}
