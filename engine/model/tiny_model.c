/*
 * Writes the tiny Kimi-K2 model directory (see tiny_model.h).
 *
 * Owns:   the tiny hyper-parameters (chosen so that no width is a multiple
 *         of 128: every FP8 GEMM has partial 128x128 blocks; YaRN's
 *         original_max_position_embeddings is 256 so a 300-token prompt
 *         runs past it; n_group 4 / topk_group 2 make group-limited routing
 *         matter) and the safetensors writer.
 * Never:  writes outside out_dir.
 * Holds:  the bytes depend only on the seed (same seed -> same files):
 *         each tensor draws from its own stream, seeded by its name, so
 *         the tensors are filled in parallel (a K2-width model is 1.4 GB
 *         of draws) with the same values in any order.
 */

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "model.h"
#include "model_rand.h"
#include "tiny_model.h"
#include "../backend/cpu/ops.h"


static const char  kimi_tiny_config[] =
    "{\n"
    "  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n"
    "  \"model_type\": \"kimi_k2\",\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 163584,\n"
    "  \"eos_token_id\": 163585,\n"
    "  \"first_k_dense_replace\": 1,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 96,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 320,\n"
    "  \"kv_lora_rank\": 160,\n"
    "  \"max_position_embeddings\": 8192,\n"
    "  \"moe_intermediate_size\": 144,\n"
    "  \"moe_layer_freq\": 1,\n"
    "  \"n_group\": 4,\n"
    "  \"n_routed_experts\": 16,\n"
    "  \"n_shared_experts\": 1,\n"
    "  \"norm_topk_prob\": true,\n"
    "  \"num_attention_heads\": 3,\n"
    "  \"num_experts_per_tok\": 4,\n"
    "  \"num_hidden_layers\": 4,\n"
    "  \"num_key_value_heads\": 3,\n"
    "  \"num_nextn_predict_layers\": 0,\n"
    "  \"q_lora_rank\": 136,\n"
    "  \"qk_nope_head_dim\": 40,\n"
    "  \"qk_rope_head_dim\": 16,\n"
    "  \"quantization_config\": {\n"
    "    \"activation_scheme\": \"dynamic\",\n"
    "    \"fmt\": \"e4m3\",\n"
    "    \"quant_method\": \"fp8\",\n"
    "    \"weight_block_size\": [128, 128]\n"
    "  },\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": {\n"
    "    \"beta_fast\": 32.0,\n"
    "    \"beta_slow\": 1.0,\n"
    "    \"factor\": 32.0,\n"
    "    \"mscale\": 1.0,\n"
    "    \"mscale_all_dim\": 1.0,\n"
    "    \"original_max_position_embeddings\": 256,\n"
    "    \"type\": \"yarn\"\n"
    "  },\n"
    "  \"rope_theta\": 50000.0,\n"
    "  \"routed_scaling_factor\": 2.827,\n"
    "  \"scoring_func\": \"sigmoid\",\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"topk_group\": 2,\n"
    "  \"topk_method\": \"noaux_tc\",\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"use_cache\": true,\n"
    "  \"v_head_dim\": 48,\n"
    "  \"vocab_size\": 163840\n"
    "}\n";

static const char  kimi_tiny_generation_config[] =
    "{\n"
    "  \"bos_token_id\": 163584,\n"
    "  \"eos_token_id\": 163586,\n"
    "  \"max_length\": 8192\n"
    "}\n";


typedef struct {
    char         name[128];
    const char  *dtype;                   /* safetensors dtype string */
    uint32_t     n_dims;
    uint64_t     shape[2];
    void        *data;
    uint64_t     n_bytes;
    uint32_t     shard;                   /* 0 or 1 */
} kimi_tiny_tensor_t;

/* What a tensor is filled with, once every tensor is laid out */
enum {
    KIMI_TINY_FILL_FP8,          /* N(0, std) quantised to FP8 blocks (t,
                                    and its scales at scale) */
    KIMI_TINY_FILL_BF16,         /* N(mean, std) as BF16 */
    KIMI_TINY_FILL_BIAS,         /* F32 0.1 * U[0, 1): the router's bias */
};

typedef struct {
    uint32_t     t, scale;       /* tensor indices */
    int          kind;
    size_t       n;              /* values */
    uint32_t     rows, cols;
    float        mean, std;
} kimi_tiny_fill_t;

typedef struct {
    kimi_tiny_tensor_t  *t;
    uint32_t             n;
    uint32_t             cap;
    kimi_tiny_fill_t    *fill;
    uint32_t             n_fill;
    uint32_t             cap_fill;
    uint64_t             seed;
    uint32_t             shard;           /* shard new tensors go to */
    int                  bf16;            /* no quantization_config: the
                                             linear weights in BF16 */
} kimi_tiny_t;


static kimi_tiny_tensor_t *
kimi_tiny_add(kimi_tiny_t *tm, const char *name, const char *dtype,
    uint32_t n_dims, uint64_t d0, uint64_t d1, size_t esize)
{
    kimi_tiny_tensor_t  *t;

    if (tm->n == tm->cap) {
        uint32_t             cap = tm->cap ? tm->cap * 2 : 256;
        kimi_tiny_tensor_t  *nt = realloc(tm->t, cap * sizeof(*nt));

        if (nt == NULL) {
            return NULL;
        }

        tm->t = nt;
        tm->cap = cap;
    }

    t = &tm->t[tm->n];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->dtype = dtype;
    t->n_dims = n_dims;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->n_bytes = d0 * (n_dims > 1 ? d1 : 1) * esize;
    t->data = malloc(t->n_bytes);
    t->shard = tm->shard;

    if (t->data == NULL) {
        return NULL;
    }

    tm->n++;
    return t;
}


/* Tensor t (the last added, or the last two for FP8 and its scales) is to
 * be filled as f says. */
static int
kimi_tiny_plan(kimi_tiny_t *tm, kimi_tiny_fill_t f)
{
    if (tm->n_fill == tm->cap_fill) {
        uint32_t           cap = tm->cap_fill ? tm->cap_fill * 2 : 256;
        kimi_tiny_fill_t  *nf = realloc(tm->fill, cap * sizeof(*nf));

        if (nf == NULL) {
            return -1;
        }

        tm->fill = nf;
        tm->cap_fill = cap;
    }

    tm->fill[tm->n_fill++] = f;
    return 0;
}


/* FP8 linear weight, N(0, std^2) quantised into 128x128 blocks. */
static int kimi_tiny_bf16(kimi_tiny_t *tm, const char *name,
    uint32_t n_dims, uint32_t d0, uint32_t d1, float mean, float std);


/* A linear weight, N(0, std): FP8 blocks, or BF16 in a model without a
 * quantization_config (the same draws either way) */
static int
kimi_tiny_fp8(kimi_tiny_t *tm, const char *name, uint32_t rows,
    uint32_t cols, float std)
{
    kimi_tiny_fill_t  f = { 0 };
    char              sname[160];

    if (tm->bf16) {
        return kimi_tiny_bf16(tm, name, 2, rows, cols, 0.0f, std);
    }

    snprintf(sname, sizeof(sname), "%s_scale_inv", name);

    if (kimi_tiny_add(tm, name, "F8_E4M3", 2, rows, cols, 1) == NULL
        || kimi_tiny_add(tm, sname, "F32", 2, (rows + 127) / 128,
                         (cols + 127) / 128, 4) == NULL)
    {
        return -1;
    }

    f.t = tm->n - 2;
    f.scale = tm->n - 1;
    f.kind = KIMI_TINY_FILL_FP8;
    f.n = (size_t) rows * cols;
    f.rows = rows;
    f.cols = cols;
    f.std = std;
    return kimi_tiny_plan(tm, f);
}


static int
kimi_tiny_bf16(kimi_tiny_t *tm, const char *name, uint32_t n_dims,
    uint32_t d0, uint32_t d1, float mean, float std)
{
    kimi_tiny_fill_t  f = { 0 };

    if (kimi_tiny_add(tm, name, "BF16", n_dims, d0, d1, 2) == NULL) {
        return -1;
    }

    f.t = tm->n - 1;
    f.kind = KIMI_TINY_FILL_BF16;
    f.n = (size_t) d0 * (n_dims > 1 ? d1 : 1);
    f.mean = mean;
    f.std = std;
    return kimi_tiny_plan(tm, f);
}


static int
kimi_tiny_mlp(kimi_tiny_t *tm, const char *prefix, uint32_t hidden,
    uint32_t inter)
{
    char  n[128];

    snprintf(n, sizeof(n), "%s.gate_proj.weight", prefix);
    if (kimi_tiny_fp8(tm, n, inter, hidden, 1.0f / sqrtf(hidden)) != 0) {
        return -1;
    }

    snprintf(n, sizeof(n), "%s.up_proj.weight", prefix);
    if (kimi_tiny_fp8(tm, n, inter, hidden, 1.0f / sqrtf(hidden)) != 0) {
        return -1;
    }

    snprintf(n, sizeof(n), "%s.down_proj.weight", prefix);
    return kimi_tiny_fp8(tm, n, hidden, inter, 1.0f / sqrtf(inter));
}


/* One planned tensor's values, from the stream its name seeds. */
static int
kimi_tiny_fill_one(const kimi_tiny_t *tm, const kimi_tiny_fill_t *f)
{
    kimi_tiny_tensor_t  *t = &tm->t[f->t];
    kimi_rand_t          r;
    float               *v;

    kimi_rand_init(&r, tm->seed, t->name);

    switch (f->kind) {

    case KIMI_TINY_FILL_FP8:
        v = malloc(f->n * sizeof(float));
        if (v == NULL) {
            return -1;
        }
        for (size_t i = 0; i < f->n; i++) {
            v[i] = (float) (kimi_rand_normal(&r) * f->std);
        }
        kimi_fp8_quant_blocks(v, f->rows, f->cols, t->data,
                              tm->t[f->scale].data);
        free(v);
        return 0;

    case KIMI_TINY_FILL_BF16:
        for (size_t i = 0; i < f->n; i++) {
            ((uint16_t *) t->data)[i] = kimi_f32_to_bf16(
                (float) (f->mean + kimi_rand_normal(&r) * f->std));
        }
        return 0;

    default:
        for (size_t i = 0; i < f->n; i++) {
            ((float *) t->data)[i] = (float) (0.1 * kimi_rand_unif(&r));
        }
        return 0;
    }
}


typedef struct {
    const kimi_tiny_t  *tm;
    const uint32_t     *order;           /* plans, largest first */
    uint32_t            next;            /* the next plan to take */
    int                 failed;
} kimi_tiny_fillers_t;


static void *
kimi_tiny_filler(void *arg)
{
    kimi_tiny_fillers_t  *fs = arg;
    uint32_t              i;

    while ((i = __atomic_fetch_add(&fs->next, 1, __ATOMIC_RELAXED))
           < fs->tm->n_fill)
    {
        if (kimi_tiny_fill_one(fs->tm, &fs->tm->fill[fs->order[i]]) != 0) {
            __atomic_store_n(&fs->failed, 1, __ATOMIC_RELAXED);
        }
    }

    return NULL;
}


static int
kimi_tiny_larger(const void *a, const void *b, void *fill)
{
    size_t  x = ((const kimi_tiny_fill_t *) fill)[*(const uint32_t *) a].n;
    size_t  y = ((const kimi_tiny_fill_t *) fill)[*(const uint32_t *) b].n;

    return (x < y) - (x > y);
}


/* Every planned tensor, on one thread per core (at most 32), the largest
 * first so the threads finish together. */
static int
kimi_tiny_fill_all(kimi_tiny_t *tm)
{
    kimi_tiny_fillers_t  fs = { tm, NULL, 0, 0 };
    pthread_t            th[32];
    long                 nc = sysconf(_SC_NPROCESSORS_ONLN);
    int                  n = nc < 1 ? 1 : nc > 32 ? 32 : (int) nc, started;
    uint32_t            *order = malloc((tm->n_fill + 1) * sizeof(uint32_t));

    if (order == NULL) {
        return -1;
    }

    for (uint32_t i = 0; i < tm->n_fill; i++) {
        order[i] = i;
    }

    qsort_r(order, tm->n_fill, sizeof(uint32_t), kimi_tiny_larger, tm->fill);
    fs.order = order;

    for (started = 0; started < n; started++) {
        if (pthread_create(&th[started], NULL, kimi_tiny_filler, &fs) != 0) {
            break;
        }
    }

    if (started == 0) {
        kimi_tiny_filler(&fs);
    }

    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
    }

    free(order);
    return fs.failed ? -1 : 0;
}


static int
kimi_tiny_build(kimi_tiny_t *tm, const kimi_model_config_t *c)
{
    uint32_t  D = c->hidden_size, H = c->num_attention_heads;
    uint32_t  qk = kimi_model_qk_head_dim(c), R = c->kv_lora_rank;
    char      p[96], n[160];

    if (kimi_tiny_bf16(tm, "model.embed_tokens.weight", 2, c->vocab_size, D,
                       0.0f, 1.0f) != 0)
    {
        return -1;
    }

    for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
        tm->shard = l < c->num_hidden_layers / 2 ? 0 : 1;
        snprintf(p, sizeof(p), "model.layers.%u", l);

#define KIMI_T(call) if ((call) != 0) return -1
        snprintf(n, sizeof(n), "%s.input_layernorm.weight", p);
        KIMI_T(kimi_tiny_bf16(tm, n, 1, D, 0, 1.0f, 0.1f));
        snprintf(n, sizeof(n), "%s.post_attention_layernorm.weight", p);
        KIMI_T(kimi_tiny_bf16(tm, n, 1, D, 0, 1.0f, 0.1f));
        if (c->q_lora_rank > 0) {
            snprintf(n, sizeof(n), "%s.self_attn.q_a_proj.weight", p);
            KIMI_T(kimi_tiny_fp8(tm, n, c->q_lora_rank, D, 1.0f / sqrtf(D)));
            snprintf(n, sizeof(n), "%s.self_attn.q_a_layernorm.weight", p);
            KIMI_T(kimi_tiny_bf16(tm, n, 1, c->q_lora_rank, 0, 1.0f, 0.1f));
            snprintf(n, sizeof(n), "%s.self_attn.q_b_proj.weight", p);
            KIMI_T(kimi_tiny_fp8(tm, n, H * qk, c->q_lora_rank,
                                 1.0f / sqrtf(c->q_lora_rank)));

        } else {
            /* q_lora_rank null (Moonlight's shape): one q_proj */
            snprintf(n, sizeof(n), "%s.self_attn.q_proj.weight", p);
            KIMI_T(kimi_tiny_fp8(tm, n, H * qk, D, 1.0f / sqrtf(D)));
        }
        snprintf(n, sizeof(n), "%s.self_attn.kv_a_proj_with_mqa.weight", p);
        KIMI_T(kimi_tiny_fp8(tm, n, R + c->qk_rope_head_dim, D,
                             1.0f / sqrtf(D)));
        snprintf(n, sizeof(n), "%s.self_attn.kv_a_layernorm.weight", p);
        KIMI_T(kimi_tiny_bf16(tm, n, 1, R, 0, 1.0f, 0.1f));
        snprintf(n, sizeof(n), "%s.self_attn.kv_b_proj.weight", p);
        KIMI_T(kimi_tiny_fp8(tm, n, H * (c->qk_nope_head_dim + c->v_head_dim),
                             R, 1.0f / sqrtf(R)));
        snprintf(n, sizeof(n), "%s.self_attn.o_proj.weight", p);
        KIMI_T(kimi_tiny_fp8(tm, n, D, H * c->v_head_dim,
                             1.0f / sqrtf(H * c->v_head_dim)));

        if (!kimi_model_layer_is_moe(c, l)) {
            snprintf(n, sizeof(n), "%s.mlp", p);
            KIMI_T(kimi_tiny_mlp(tm, n, D, c->intermediate_size));
            continue;
        }

        /* router logits ~ N(0, 4): sigmoid scores spread over (0, 1) */
        snprintf(n, sizeof(n), "%s.mlp.gate.weight", p);
        KIMI_T(kimi_tiny_bf16(tm, n, 2, c->n_routed_experts, D, 0,
                              2.0f / sqrtf(D)));

        /* bias >= 0 so every kept expert's selection score is > 0: HF masks
         * dropped groups with 0.0 (DS-REF with -inf); with positive scores
         * both choose the same experts */
        snprintf(n, sizeof(n), "%s.mlp.gate.e_score_correction_bias", p);
        if (c->router == KIMI_ROUTER_NOAUX_TC) {    /* DeepSeek-V2: none */
            kimi_tiny_fill_t  f = { 0 };

            KIMI_T(kimi_tiny_add(tm, n, "F32", 1, c->n_routed_experts, 0, 4)
                   == NULL);
            f.t = tm->n - 1;
            f.kind = KIMI_TINY_FILL_BIAS;
            f.n = c->n_routed_experts;
            KIMI_T(kimi_tiny_plan(tm, f));
        }

        if (c->n_shared_experts > 0) {
            snprintf(n, sizeof(n), "%s.mlp.shared_experts", p);
            KIMI_T(kimi_tiny_mlp(tm, n, D, c->moe_intermediate_size
                                           * c->n_shared_experts));
        }

        for (uint32_t e = 0; e < c->n_routed_experts; e++) {
            snprintf(n, sizeof(n), "%s.mlp.experts.%u", p, e);
            KIMI_T(kimi_tiny_mlp(tm, n, D, c->moe_intermediate_size));
        }
#undef KIMI_T
    }

    tm->shard = 1;

    if (kimi_tiny_bf16(tm, "model.norm.weight", 1, D, 0, 1.0f, 0.1f) != 0
        || kimi_tiny_bf16(tm, "lm_head.weight", 2, c->vocab_size, D, 0,
                          3.0f / sqrtf(D)) != 0)
    {
        return -1;
    }

    return 0;
}


static int
kimi_tiny_write_file(const char *path, const void *data, size_t len,
    kimi_err_t *err)
{
    FILE  *f = fopen(path, "wb");

    if (f == NULL) {
        return kimi_err_set(err, KIMI_EIO, "%s: %s", path, strerror(errno));
    }

    if (fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        return kimi_err_set(err, KIMI_EIO, "%s: write failed", path);
    }

    return 0;
}


/* One shard: 8-byte header length, JSON header padded to 8, then data. */
static int
kimi_tiny_write_shard(kimi_tiny_t *tm, uint32_t shard, const char *path,
    kimi_err_t *err)
{
    json_t    *hdr = json_object(), *meta = json_object();
    uint64_t   off = 0, hlen;
    char      *text;
    FILE      *f;
    uint8_t    len8[8];
    int        rc = 0;

    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(hdr, "__metadata__", meta);

    for (uint32_t i = 0; i < tm->n; i++) {
        kimi_tiny_tensor_t  *t = &tm->t[i];
        json_t              *e, *shape;

        if (t->shard != shard) {
            continue;
        }

        shape = json_array();

        for (uint32_t d = 0; d < t->n_dims; d++) {
            json_array_append_new(shape, json_integer((json_int_t) t->shape[d]));
        }

        e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", t->dtype,
                      "shape", shape, "data_offsets", (json_int_t) off,
                      (json_int_t) (off + t->n_bytes));
        json_object_set_new(hdr, t->name, e);
        off += t->n_bytes;
    }

    text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);

    if (text == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "tiny model: header");
    }

    hlen = (strlen(text) + 7) & ~(uint64_t) 7;

    for (int i = 0; i < 8; i++) {
        len8[i] = (uint8_t) (hlen >> (8 * i));
    }

    f = fopen(path, "wb");

    if (f == NULL) {
        free(text);
        return kimi_err_set(err, KIMI_EIO, "%s: %s", path, strerror(errno));
    }

    fwrite(len8, 1, 8, f);
    fwrite(text, 1, strlen(text), f);

    for (size_t i = strlen(text); i < hlen; i++) {
        fputc(' ', f);
    }

    free(text);

    for (uint32_t i = 0; i < tm->n; i++) {
        if (tm->t[i].shard == shard
            && fwrite(tm->t[i].data, 1, tm->t[i].n_bytes, f)
               != tm->t[i].n_bytes)
        {
            rc = -1;
        }
    }

    if (fclose(f) != 0 || rc != 0) {
        return kimi_err_set(err, KIMI_EIO, "%s: write failed", path);
    }

    return 0;
}


static int
kimi_tiny_copy(const char *src_dir, const char *name, const char *dst_dir,
    kimi_err_t *err)
{
    char    src[4096], dst[4096], buf[65536];
    FILE   *in, *out;
    size_t  n;

    snprintf(src, sizeof(src), "%s/%s", src_dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", dst_dir, name);

    if ((in = fopen(src, "rb")) == NULL) {
        return kimi_err_set(err, KIMI_EIO, "%s: %s", src, strerror(errno));
    }

    if ((out = fopen(dst, "wb")) == NULL) {
        fclose(in);
        return kimi_err_set(err, KIMI_EIO, "%s: %s", dst, strerror(errno));
    }

    while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
        if (fwrite(buf, 1, n, out) != n) {
            break;
        }
    }

    fclose(in);

    if (fclose(out) != 0) {
        return kimi_err_set(err, KIMI_EIO, "%s: write failed", dst);
    }

    return 0;
}


const char *
kimi_tiny_model_config_json(void)
{
    return kimi_tiny_config;
}


int
kimi_tiny_model_write(const char *out_dir, const char *tokenizer_dir,
    uint64_t seed, kimi_err_t *err)
{
    return kimi_tiny_model_write_config(out_dir, tokenizer_dir, seed, NULL,
                                        NULL, err);
}


int
kimi_tiny_model_write_config(const char *out_dir, const char *tokenizer_dir,
    uint64_t seed, const char *config_json, const char *hf_overrides,
    kimi_err_t *err)
{
    static const char  *shard_names[2] = {
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    };
    static const char  *tok_files[3] = {
        "tiktoken.model", "tokenizer_config.json", "chat_template.jinja"
    };

    kimi_model_config_t  cfg;
    kimi_tiny_t          tm;
    json_t              *index, *wm;
    uint64_t             total = 0;
    char                 path[4096], *text = NULL;
    int                  rc;

    memset(&tm, 0, sizeof(tm));

    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        return kimi_err_set(err, KIMI_EIO, "%s: mkdir: %s", out_dir,
                            strerror(errno));
    }

    if (config_json == NULL && hf_overrides == NULL) {
        text = strdup(kimi_tiny_config);  /* byte-identical default */

        if (text == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "tiny model: config");
        }

    } else if ((rc = kimi_model_config_merge_json(
                    config_json ? config_json : kimi_tiny_config,
                    hf_overrides, &text, err)) != 0)
    {
        return rc;
    }

    if ((rc = kimi_model_config_parse(&cfg, text, NULL, "generator config",
                                      err)) != 0)
    {
        goto done;
    }

    tm.seed = seed;
    tm.bf16 = !cfg.quant_fp8;

    if (kimi_tiny_build(&tm, &cfg) != 0 || kimi_tiny_fill_all(&tm) != 0) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "tiny model: out of memory");
        goto done;
    }

    for (uint32_t s = 0; s < 2; s++) {
        snprintf(path, sizeof(path), "%s/%s", out_dir, shard_names[s]);

        if ((rc = kimi_tiny_write_shard(&tm, s, path, err)) != 0) {
            goto done;
        }
    }

    index = json_object();
    wm = json_object();

    for (uint32_t i = 0; i < tm.n; i++) {
        json_object_set_new(wm, tm.t[i].name,
                            json_string(shard_names[tm.t[i].shard]));
        total += tm.t[i].n_bytes;
    }

    json_object_set_new(index, "metadata",
                        json_pack("{s:I}", "total_size", (json_int_t) total));
    json_object_set_new(index, "weight_map", wm);
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", out_dir);
    rc = json_dump_file(index, path, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(index);

    if (rc != 0) {
        rc = kimi_err_set(err, KIMI_EIO, "%s: write failed", path);
        goto done;
    }

    snprintf(path, sizeof(path), "%s/generation_config.json", out_dir);

    if ((rc = kimi_tiny_write_file(path, kimi_tiny_generation_config,
                                   strlen(kimi_tiny_generation_config),
                                   err)) != 0)
    {
        goto done;
    }

    for (int i = 0; tokenizer_dir != NULL && i < 3; i++) {
        if ((rc = kimi_tiny_copy(tokenizer_dir, tok_files[i], out_dir,
                                 err)) != 0)
        {
            goto done;
        }
    }

    /* config.json last: its presence means the directory is complete
     * (the Makefile's tiny-model target depends on it) */
    snprintf(path, sizeof(path), "%s/config.json", out_dir);
    rc = kimi_tiny_write_file(path, text, strlen(text), err);

done:

    free(text);

    for (uint32_t i = 0; i < tm.n; i++) {
        free(tm.t[i].data);
    }

    free(tm.t);
    free(tm.fill);
    return rc;
}
