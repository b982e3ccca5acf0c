/*
 * A Kimi-K2 (DeepSeek-V3 architecture) model directory: config and weights.
 *
 * Owns:   config.json parsing (+ --hf-overrides), the safetensors shards
 *         (mmap), the per-layer weight views, dummy (random) weights,
 *         and the end-of-sequence ids of the model directory.
 * Never:  computes a forward pass (engine/backend/ does), allocates KV
 *         cache, or reads tokenizer files.
 *
 * Lifetime: every pointer in kimi_model_t points into the model's mmaps or
 * into buffers the model owns; all are valid until kimi_model_free().
 * Shapes follow PyTorch Linear: weight [rows = out][cols = in], row-major.
 */

#ifndef KIMI_MODEL_H
#define KIMI_MODEL_H

#include <stdint.h>
#include <stddef.h>

#include "../common/kimi_err.h"
#include "router.h"

#define KIMI_MODEL_MAX_EOS    8
#define KIMI_FP8_BLOCK        128          /* weight_block_size [128, 128] */

/* Fields keep their config.json names; see kimi-k2-facts.md §1. */
typedef struct {
    char      model_type[32];              /* "kimi_k2", "deepseek_v3" */
    uint32_t  vocab_size;                  /* 163840 */
    uint32_t  hidden_size;                 /* 7168 */
    uint32_t  intermediate_size;           /* dense MLP width (layer < k) */
    uint32_t  moe_intermediate_size;       /* one routed expert's width */
    uint32_t  num_hidden_layers;           /* 61 */
    uint32_t  num_attention_heads;         /* 64 */
    uint32_t  num_key_value_heads;         /* 64 (MLA: informational) */
    uint32_t  n_routed_experts;            /* 384 */
    uint32_t  n_shared_experts;            /* 1: shared width = n * moe_int */
    uint32_t  num_experts_per_tok;         /* 8 */
    uint32_t  n_group;                     /* expert groups for routing */
    uint32_t  topk_group;                  /* groups kept per token */
    uint32_t  first_k_dense_replace;       /* layers [0, k) are dense */
    uint32_t  moe_layer_freq;              /* MoE every n-th layer >= k */
    uint32_t  q_lora_rank;                 /* 1536 (0 = no q LoRA: q_proj) */
    uint32_t  kv_lora_rank;                /* 512: latent width */
    uint32_t  qk_nope_head_dim;            /* 128 */
    uint32_t  qk_rope_head_dim;            /* 64 */
    uint32_t  v_head_dim;                  /* 128 */
    uint32_t  max_position_embeddings;     /* 131072 */
    uint32_t  num_nextn_predict_layers;    /* MTP layers: ignored (not run) */
    float     rms_norm_eps;                /* 1e-6 */
    float     rope_theta;                  /* 50000 */
    float     routed_scaling_factor;       /* 2.827 */
    int       norm_topk_prob;              /* normalise the top-k weights */
    int       tie_word_embeddings;         /* lm_head shares embed_tokens */
    char      scoring_func[16];            /* "sigmoid" (V3), "softmax" (V2) */
    char      topk_method[24];             /* "noaux_tc" (V3), "greedy" or
                                              "group_limited_greedy" (V2) */
    int       router;                      /* KIMI_ROUTER_*, from those two */

    /* rope_scaling: yarn or none (rope_is_yarn == 0 -> plain RoPE) */
    int       rope_is_yarn;
    float     rope_factor;                 /* 32 */
    float     rope_beta_fast;              /* 1 (K2), 32 (DeepSeek-V3) */
    float     rope_beta_slow;              /* 1 */
    float     rope_mscale;                 /* 1 */
    float     rope_mscale_all_dim;         /* 1 */
    uint32_t  rope_original_max_position_embeddings;   /* 4096 */

    /* quantization_config: fp8 e4m3 with block scales, or none (bf16) */
    int       quant_fp8;
    uint32_t  weight_block_size[2];        /* [128, 128]: only value supported */

    int32_t   bos_token_id;                /* -1 if absent */
    int32_t   eos_token_ids[KIMI_MODEL_MAX_EOS];   /* config + generation */
    uint32_t  n_eos;
} kimi_model_config_t;

/* Derived numbers the forward pass needs (kimi-k2-facts.md §4.1, §4.2). */
uint32_t kimi_model_qk_head_dim(const kimi_model_config_t *cfg);   /* 192 */
float    kimi_model_softmax_scale(const kimi_model_config_t *cfg);
/* 1 if layer l is an MoE layer. */
int      kimi_model_layer_is_moe(const kimi_model_config_t *cfg, uint32_t l);

/*
 * Reads dir/config.json, applies hf_overrides_json (a JSON object whose keys
 * replace config.json's, e.g. {"num_hidden_layers": 4}; NULL or "" = none),
 * adds eos ids from dir/generation_config.json if present, validates.
 * No weights are read.  Errors name the file and the field.
 */
int kimi_model_config_load(kimi_model_config_t *cfg, const char *dir,
    const char *hf_overrides_json, kimi_err_t *err);

/* config JSON text with hf_overrides merged in (nested objects merge key
 * by key); *out is malloc'ed. */
int kimi_model_config_merge_json(const char *json_text,
    const char *hf_overrides_json, char **out, kimi_err_t *err);

/* Same, from a JSON text (tests, generators). */
int kimi_model_config_parse(kimi_model_config_t *cfg, const char *json_text,
    const char *hf_overrides_json, const char *what, kimi_err_t *err);


typedef enum {
    KIMI_DTYPE_F8_E4M3 = 0,
    KIMI_DTYPE_BF16,
    KIMI_DTYPE_F32,
    KIMI_DTYPE_F16,
    KIMI_DTYPE_OTHER,                      /* valid safetensors dtype the
                                              model never uses (I64, ...) */
} kimi_dtype_e;

const char *kimi_dtype_name(kimi_dtype_e dt);

/*
 * A 2-D weight [rows][cols].  F8_E4M3 weights carry scale_inv
 * [ceil(rows/128)][ceil(cols/128)] (F32): w = fp8[r][c] * scale_inv[r/128][c/128].
 * data == NULL means "not loaded on this rank" (an expert it does not own).
 */
typedef struct {
    const void   *data;
    const float  *scale_inv;               /* F8 only, else NULL */
    kimi_dtype_e  dtype;                   /* F8_E4M3, BF16 or F32 */
    uint32_t      rows;                    /* out features */
    uint32_t      cols;                    /* in features */
} kimi_weight_t;

typedef struct {
    kimi_weight_t  gate_proj;              /* [inter, hidden] */
    kimi_weight_t  up_proj;                /* [inter, hidden] */
    kimi_weight_t  down_proj;              /* [hidden, inter] */
} kimi_mlp_weights_t;

typedef struct {
    /* 1-D weights are converted to fp32 at load (small; any dtype accepted) */
    const float        *input_layernorm;           /* [hidden] */
    const float        *post_attention_layernorm;  /* [hidden] */

    /* MLA */
    kimi_weight_t       q_a_proj;           /* [q_lora_rank, hidden] */
    const float        *q_a_layernorm;      /* [q_lora_rank] */
    kimi_weight_t       q_b_proj;           /* [heads * (nope + rope), q_lora];
                                               q_lora_rank 0: q_proj, [heads *
                                               (nope + rope), hidden], and no
                                               q_a_proj / q_a_layernorm */
    kimi_weight_t       kv_a_proj_with_mqa; /* [kv_lora + rope, hidden] */
    const float        *kv_a_layernorm;     /* [kv_lora_rank] */
    kimi_weight_t       kv_b_proj;          /* [heads * (nope + v), kv_lora] */
    kimi_weight_t       o_proj;             /* [hidden, heads * v] */

    int                 is_moe;
    kimi_mlp_weights_t  mlp;                /* dense layers only */

    /* MoE layers only */
    kimi_weight_t       gate;               /* router [n_routed, hidden] */
    const float        *e_score_correction_bias;   /* [n_routed] */
    kimi_mlp_weights_t  shared_experts;     /* inter = moe_int * n_shared */
    kimi_mlp_weights_t *experts;            /* [n_routed]; owned ones set */
} kimi_layer_weights_t;

struct kimi_model_store;                    /* model.c: mmaps, buffers */

typedef struct kimi_model {
    kimi_model_config_t    cfg;
    kimi_weight_t          embed_tokens;   /* [vocab, hidden] */
    const float           *norm;           /* [hidden] final norm */
    kimi_weight_t          lm_head;        /* [vocab, hidden] */
    kimi_layer_weights_t  *layers;         /* [num_hidden_layers] */
    uint32_t               expert_first;   /* owned routed experts */
    uint32_t               expert_last;    /* [first, last) */
    uint32_t               layer_first;    /* pipeline stage: layers loaded */
    uint32_t               layer_last;     /* [first, last); others zero */
    uint32_t               tp_rank;        /* tensor parallel shard */
    uint32_t               tp_size;        /* 1: whole weights */
    int                    tp_experts_whole;  /* tensor parallel with
                                              expert parallelism: routed
                                              experts [expert_first,
                                              expert_last) whole, not
                                              split by width */
    uint32_t               head_first;     /* this shard's attention heads */
    uint32_t               n_heads;        /* [head_first, + n_heads) */
    uint64_t               bytes_mapped;   /* weight bytes touched */
    uint32_t               n_quantized;    /* --quantization fp8: weights
                                              made FP8 at load */
    struct kimi_model_store *store;
} kimi_model_t;

typedef struct {
    const char  *dir;                      /* model directory (HF layout) */
    const char  *load_format;              /* "auto" (files) | "dummy" */
    const char  *hf_overrides;             /* JSON object or NULL */
    uint64_t     seed;                     /* dummy weights */
    uint32_t     expert_first;             /* EP: experts owned by this */
    uint32_t     expert_last;              /* rank; 0,0 = all */
    int          populate;                 /* MAP_POPULATE the shards */
    uint32_t     layer_first;              /* pipeline stage: its layers */
    uint32_t     layer_last;               /* [first, last); 0, 0 = all */
    uint32_t     tp_rank;                  /* tensor parallel: this rank's */
    uint32_t     tp_size;                  /* shard of heads and MLP widths;
                                              0 or 1 = whole */
    int          tp_experts_whole;         /* with tp_size > 1: the routed
                                              experts are split over the
                                              ranks by expert_first/last
                                              (whole), not by width */
    int          quantize_fp8;             /* --quantization fp8: BF16 / F32
                                              linear weights become FP8
                                              128x128 blocks at load (the
                                              config then reads as FP8) */
} kimi_model_params_t;

kimi_model_params_t kimi_model_default_params(void);

/*
 * Loads config + weights.  "dummy" needs only config.json (dir) and makes
 * deterministic random weights (real FP8 bytes + scales) from seed.
 * On success *out is the caller's; free with kimi_model_free().
 */
int  kimi_model_load(struct kimi_model **out, const kimi_model_params_t *p,
    kimi_err_t *err);
void kimi_model_free(struct kimi_model *m);         /* NULL is a no-op */

/* Pipeline stage `stage` of `stages`: layers [*first, *last), the layers
 * split as evenly as they go, earlier stages taking the remainder. */
void kimi_model_pp_layers(const kimi_model_config_t *cfg, uint32_t stage,
    uint32_t stages, uint32_t *first, uint32_t *last);

/* eos ids (config.json eos_token_id + generation_config.json's), deduped */
uint32_t kimi_model_eos_ids(const struct kimi_model *m, const int32_t **ids);


/* safetensors access (also used by tests and tools) */
typedef struct kimi_st  kimi_st_t;          /* one shard, mmapped */

typedef struct {
    const char    *name;
    const char    *dtype_name;             /* as in the header: "F8_E4M3" */
    kimi_dtype_e   dtype;
    uint32_t       n_dims;
    uint64_t       shape[4];
    const void    *data;
    uint64_t       n_bytes;
} kimi_st_tensor_t;

/* Opens, mmaps and validates one .safetensors file: header bounds, JSON,
 * dtypes, shapes vs byte sizes, offsets inside the file and disjoint. */
int  kimi_st_open(kimi_st_t **out, const char *path, kimi_err_t *err);
void kimi_st_close(kimi_st_t *st);
uint32_t kimi_st_count(const kimi_st_t *st);
const kimi_st_tensor_t *kimi_st_get(const kimi_st_t *st, uint32_t i);
const kimi_st_tensor_t *kimi_st_find(const kimi_st_t *st, const char *name);
const char *kimi_st_path(const kimi_st_t *st);
/* Asks the kernel to read the whole file ahead (MADV_WILLNEED). */
int  kimi_st_prefault(kimi_st_t *st, kimi_err_t *err);

#endif
