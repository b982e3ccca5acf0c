/*
 * config.json of a DeepSeek-V3 / Kimi-K2 model directory.
 *
 * Owns:   parsing every field the forward pass uses, --hf-overrides (a JSON
 *         object merged over config.json, nested objects merged too), the
 *         eos ids of config.json + generation_config.json, validation.
 * Never:  reads weights; guesses a value the file lacks when the forward
 *         pass depends on it (missing required fields are errors).
 */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model.h"


#define KIMI_CFG_MAX_DIM   (1u << 20)     /* any width beyond is absurd */


typedef struct {
    const char  *what;                    /* file name for messages */
    kimi_err_t  *err;
} kimi_cfg_ctx_t;


/* The value of key, or NULL when it is absent or null; *rc is 0 then unless
 * the field is required (the error is set and returned in *rc). */
static json_t *
kimi_cfg_get(kimi_cfg_ctx_t *cx, json_t *o, const char *key, int required,
    int *rc)
{
    json_t  *v = json_object_get(o, key);

    *rc = 0;
    if (v != NULL && !json_is_null(v)) {
        return v;
    }

    if (required) {
        *rc = kimi_err_set(cx->err, KIMI_EFORMAT,
                           "%s: missing required field \"%s\"",
                           cx->what, key);
    }

    return NULL;
}


static int
kimi_cfg_u32(kimi_cfg_ctx_t *cx, json_t *o, const char *key, int required,
    uint32_t def, uint32_t max, uint32_t *out)
{
    int         rc;
    json_t     *v = kimi_cfg_get(cx, o, key, required, &rc);
    json_int_t  i;

    if (v == NULL) {
        if (rc == 0) {
            *out = def;
        }
        return rc;
    }

    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v))) {
        i = (json_int_t) json_real_value(v);

    } else if (json_is_integer(v)) {
        i = json_integer_value(v);

    } else {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: field \"%s\" must be an integer",
                            cx->what, key);
    }

    if (i < 0 || (uint64_t) i > max) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: field \"%s\" = %lld is out of range [0, %u]",
                            cx->what, key, (long long) i, max);
    }

    *out = (uint32_t) i;
    return 0;
}


static int
kimi_cfg_f32(kimi_cfg_ctx_t *cx, json_t *o, const char *key, int required,
    float def, float *out)
{
    int      rc;
    json_t  *v = kimi_cfg_get(cx, o, key, required, &rc);

    if (v == NULL) {
        if (rc == 0) {
            *out = def;
        }
        return rc;
    }

    if (!json_is_number(v)) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: field \"%s\" must be a number",
                            cx->what, key);
    }

    *out = (float) json_number_value(v);

    if (!isfinite(*out)) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: field \"%s\" is not finite", cx->what, key);
    }

    return 0;
}


static int
kimi_cfg_bool(kimi_cfg_ctx_t *cx, json_t *o, const char *key, int def,
    int *out)
{
    json_t  *v = json_object_get(o, key);

    if (v == NULL || json_is_null(v)) {
        *out = def;
        return 0;
    }

    if (!json_is_boolean(v)) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: field \"%s\" must be true or false",
                            cx->what, key);
    }

    *out = json_is_true(v);
    return 0;
}


static int
kimi_cfg_str(kimi_cfg_ctx_t *cx, json_t *o, const char *key, const char *def,
    char *out, size_t size)
{
    json_t      *v = json_object_get(o, key);
    const char  *s = def;

    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v)) {
            return kimi_err_set(cx->err, KIMI_EFORMAT,
                                "%s: field \"%s\" must be a string",
                                cx->what, key);
        }

        s = json_string_value(v);
    }

    if (strlen(s) >= size) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: field \"%s\" is too long", cx->what, key);
    }

    strcpy(out, s);
    return 0;
}


/* eos_token_id may be an integer or a list of integers. */
static int
kimi_cfg_eos(kimi_cfg_ctx_t *cx, json_t *o, kimi_model_config_t *cfg)
{
    json_t  *v = json_object_get(o, "eos_token_id"), *it;
    size_t   i;

    if (v == NULL || json_is_null(v)) {
        return 0;
    }

    if (json_is_integer(v)) {
        json_t  *one = v;

        v = json_array();
        json_array_append(v, one);

    } else if (json_is_array(v)) {
        json_incref(v);

    } else {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: eos_token_id must be an integer or a list",
                            cx->what);
    }

    json_array_foreach(v, i, it) {
        json_int_t  id;
        uint32_t    j;

        if (!json_is_integer(it) || json_integer_value(it) < 0
            || json_integer_value(it) > INT32_MAX)
        {
            json_decref(v);
            return kimi_err_set(cx->err, KIMI_EFORMAT,
                                "%s: eos_token_id[%zu] is not a token id",
                                cx->what, i);
        }

        id = json_integer_value(it);

        for (j = 0; j < cfg->n_eos; j++) {
            if (cfg->eos_token_ids[j] == id) {
                break;
            }
        }

        if (j == cfg->n_eos && cfg->n_eos < KIMI_MODEL_MAX_EOS) {
            cfg->eos_token_ids[cfg->n_eos++] = (int32_t) id;
        }
    }

    json_decref(v);
    return 0;
}


/* Recursive merge: objects merge key by key, anything else replaces. */
static int
kimi_cfg_merge(json_t *dst, json_t *src)
{
    const char  *key;
    json_t      *v, *d;

    json_object_foreach(src, key, v) {
        d = json_object_get(dst, key);

        if (json_is_object(v) && json_is_object(d)) {
            if (kimi_cfg_merge(d, v) != 0) {
                return -1;
            }

            continue;
        }

        if (json_object_set(dst, key, v) != 0) {
            return -1;
        }
    }

    return 0;
}


static int
kimi_cfg_rope(kimi_cfg_ctx_t *cx, json_t *root, kimi_model_config_t *cfg)
{
    json_t  *rs = json_object_get(root, "rope_scaling");
    char     type[32];
    int      rc;

    if (rs == NULL || json_is_null(rs)) {
        rs = json_object_get(root, "rope_parameters");   /* transformers 5 */
    }

    cfg->rope_is_yarn = 0;
    cfg->rope_factor = 1.0f;

    if (rs == NULL || json_is_null(rs)) {
        return 0;
    }

    if (!json_is_object(rs)) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: rope_scaling must be an object", cx->what);
    }

    if (json_object_get(rs, "rope_type") != NULL) {
        rc = kimi_cfg_str(cx, rs, "rope_type", "", type, sizeof(type));

    } else {
        rc = kimi_cfg_str(cx, rs, "type", "", type, sizeof(type));
    }

    if (rc != 0) {
        return rc;
    }

    if (strcmp(type, "default") == 0 || type[0] == '\0') {
        return 0;
    }

    if (strcmp(type, "yarn") != 0) {
        return kimi_err_set(cx->err, KIMI_EUNSUPPORTED,
                            "%s: rope_scaling type \"%s\" is not supported "
                            "(yarn only)", cx->what, type);
    }

    cfg->rope_is_yarn = 1;

    if ((rc = kimi_cfg_f32(cx, rs, "factor", 1, 0, &cfg->rope_factor)) != 0
        || (rc = kimi_cfg_f32(cx, rs, "beta_fast", 0, 32.0f,
                              &cfg->rope_beta_fast)) != 0
        || (rc = kimi_cfg_f32(cx, rs, "beta_slow", 0, 1.0f,
                              &cfg->rope_beta_slow)) != 0
        || (rc = kimi_cfg_f32(cx, rs, "mscale", 0, 1.0f,
                              &cfg->rope_mscale)) != 0
        || (rc = kimi_cfg_f32(cx, rs, "mscale_all_dim", 0, 0.0f,
                              &cfg->rope_mscale_all_dim)) != 0
        || (rc = kimi_cfg_u32(cx, rs, "original_max_position_embeddings", 1,
                              0, UINT32_MAX,
                              &cfg->rope_original_max_position_embeddings))
           != 0)
    {
        return rc;
    }

    if (cfg->rope_factor < 1.0f || cfg->rope_beta_fast <= 0
        || cfg->rope_beta_slow <= 0
        || cfg->rope_original_max_position_embeddings == 0)
    {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: rope_scaling needs factor >= 1, beta_fast "
                            "and beta_slow > 0 and "
                            "original_max_position_embeddings > 0", cx->what);
    }

    return 0;
}


static int
kimi_cfg_quant(kimi_cfg_ctx_t *cx, json_t *root, kimi_model_config_t *cfg)
{
    json_t  *q = json_object_get(root, "quantization_config"), *bs;
    char     method[32], fmt[16];
    int      rc;

    cfg->quant_fp8 = 0;
    cfg->weight_block_size[0] = cfg->weight_block_size[1] = KIMI_FP8_BLOCK;

    if (q == NULL || json_is_null(q)) {
        return 0;
    }

    if (!json_is_object(q)) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: quantization_config must be an object",
                            cx->what);
    }

    if ((rc = kimi_cfg_str(cx, q, "quant_method", "", method,
                           sizeof(method))) != 0
        || (rc = kimi_cfg_str(cx, q, "fmt", "e4m3", fmt, sizeof(fmt))) != 0)
    {
        return rc;
    }

    if (strcmp(method, "fp8") != 0 || strcmp(fmt, "e4m3") != 0) {
        return kimi_err_set(cx->err, KIMI_EUNSUPPORTED,
                            "%s: quantization_config %s/%s is not supported "
                            "(fp8/e4m3 only)", cx->what, method, fmt);
    }

    bs = json_object_get(q, "weight_block_size");

    if (bs != NULL && (!json_is_array(bs) || json_array_size(bs) != 2
        || json_integer_value(json_array_get(bs, 0)) != KIMI_FP8_BLOCK
        || json_integer_value(json_array_get(bs, 1)) != KIMI_FP8_BLOCK))
    {
        return kimi_err_set(cx->err, KIMI_EUNSUPPORTED,
                            "%s: weight_block_size must be [128, 128]",
                            cx->what);
    }

    cfg->quant_fp8 = 1;
    return 0;
}


static int
kimi_cfg_validate(kimi_cfg_ctx_t *cx, kimi_model_config_t *c)
{
    /* DeepSeek-V3's router, or DeepSeek-V2's two (as their modeling code
     * pairs them: each takes only its own scoring) */
    if (strcmp(c->scoring_func, "sigmoid") == 0
        && strcmp(c->topk_method, "noaux_tc") == 0)
    {
        c->router = KIMI_ROUTER_NOAUX_TC;

    } else if (strcmp(c->scoring_func, "softmax") == 0
               && strcmp(c->topk_method, "greedy") == 0)
    {
        c->router = KIMI_ROUTER_GREEDY;

    } else if (strcmp(c->scoring_func, "softmax") == 0
               && strcmp(c->topk_method, "group_limited_greedy") == 0)
    {
        c->router = KIMI_ROUTER_GROUP_GREEDY;

    } else {
        return kimi_err_set(cx->err, KIMI_EUNSUPPORTED,
                            "%s: scoring_func \"%s\" with topk_method \"%s\""
                            " is not supported (sigmoid with noaux_tc, as "
                            "DeepSeek-V3; softmax with greedy or "
                            "group_limited_greedy, as DeepSeek-V2)", cx->what,
                            c->scoring_func, c->topk_method);
    }

#define KIMI_CFG_NONZERO(f)                                                   \
    if (c->f == 0) {                                                          \
        return kimi_err_set(cx->err, KIMI_EFORMAT, "%s: " #f " must be > 0", \
                            cx->what);                                        \
    }

    KIMI_CFG_NONZERO(vocab_size);
    KIMI_CFG_NONZERO(hidden_size);
    KIMI_CFG_NONZERO(num_hidden_layers);
    KIMI_CFG_NONZERO(num_attention_heads);
    KIMI_CFG_NONZERO(kv_lora_rank);
    KIMI_CFG_NONZERO(qk_nope_head_dim);
    KIMI_CFG_NONZERO(qk_rope_head_dim);
    KIMI_CFG_NONZERO(v_head_dim);
    KIMI_CFG_NONZERO(max_position_embeddings);
    KIMI_CFG_NONZERO(moe_layer_freq);
#undef KIMI_CFG_NONZERO

    if (c->qk_rope_head_dim % 2 != 0) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: qk_rope_head_dim %u must be even",
                            cx->what, c->qk_rope_head_dim);
    }

    if (c->first_k_dense_replace > 0 && c->intermediate_size == 0) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: intermediate_size must be > 0 for the dense "
                            "layers", cx->what);
    }

    if (c->first_k_dense_replace < c->num_hidden_layers) {
        if (c->n_routed_experts == 0 || c->moe_intermediate_size == 0
            || c->num_experts_per_tok == 0 || c->n_group == 0
            || c->topk_group == 0)
        {
            return kimi_err_set(cx->err, KIMI_EFORMAT,
                                "%s: MoE layers need n_routed_experts, "
                                "moe_intermediate_size, num_experts_per_tok, "
                                "n_group and topk_group > 0", cx->what);
        }

        if (c->n_routed_experts > 1024) {
            return kimi_err_set(cx->err, KIMI_EUNSUPPORTED,
                                "%s: n_routed_experts %u > 1024",
                                cx->what, c->n_routed_experts);
        }

        if (c->n_routed_experts % c->n_group != 0
            || c->topk_group > c->n_group
            || c->num_experts_per_tok
               > c->topk_group * (c->n_routed_experts / c->n_group))
        {
            return kimi_err_set(cx->err, KIMI_EFORMAT,
                                "%s: routing needs n_group | n_routed_experts "
                                "(%u, %u), topk_group <= n_group (%u) and "
                                "num_experts_per_tok (%u) <= experts in the "
                                "kept groups", cx->what, c->n_group,
                                c->n_routed_experts, c->topk_group,
                                c->num_experts_per_tok);
        }
    }

    if (!(c->rms_norm_eps > 0) || !(c->rope_theta > 1.0f)) {
        return kimi_err_set(cx->err, KIMI_EFORMAT,
                            "%s: rms_norm_eps must be > 0 and rope_theta > 1",
                            cx->what);
    }

    return 0;
}


static int
kimi_cfg_from_json(kimi_model_config_t *cfg, json_t *root, kimi_cfg_ctx_t *cx)
{
    uint32_t  bos;
    int       rc;

    memset(cfg, 0, sizeof(*cfg));
    cfg->bos_token_id = -1;

    if ((rc = kimi_cfg_str(cx, root, "model_type", "deepseek_v3",
                           cfg->model_type, sizeof(cfg->model_type))) != 0
        || (rc = kimi_cfg_u32(cx, root, "vocab_size", 1, 0, 1u << 24,
                              &cfg->vocab_size)) != 0
        || (rc = kimi_cfg_u32(cx, root, "hidden_size", 1, 0, KIMI_CFG_MAX_DIM,
                              &cfg->hidden_size)) != 0
        || (rc = kimi_cfg_u32(cx, root, "intermediate_size", 1, 0,
                              KIMI_CFG_MAX_DIM, &cfg->intermediate_size)) != 0
        || (rc = kimi_cfg_u32(cx, root, "moe_intermediate_size", 0, 0,
                              KIMI_CFG_MAX_DIM,
                              &cfg->moe_intermediate_size)) != 0
        || (rc = kimi_cfg_u32(cx, root, "num_hidden_layers", 1, 0, 4096,
                              &cfg->num_hidden_layers)) != 0
        || (rc = kimi_cfg_u32(cx, root, "num_attention_heads", 1, 0, 4096,
                              &cfg->num_attention_heads)) != 0
        || (rc = kimi_cfg_u32(cx, root, "num_key_value_heads", 0, 0, 4096,
                              &cfg->num_key_value_heads)) != 0
        || (rc = kimi_cfg_u32(cx, root, "n_routed_experts", 0, 0, 65536,
                              &cfg->n_routed_experts)) != 0
        || (rc = kimi_cfg_u32(cx, root, "n_shared_experts", 0, 0, 64,
                              &cfg->n_shared_experts)) != 0
        || (rc = kimi_cfg_u32(cx, root, "num_experts_per_tok", 0, 0, 1024,
                              &cfg->num_experts_per_tok)) != 0
        || (rc = kimi_cfg_u32(cx, root, "n_group", 0, 1, 1024,
                              &cfg->n_group)) != 0
        || (rc = kimi_cfg_u32(cx, root, "topk_group", 0, 1, 1024,
                              &cfg->topk_group)) != 0
        || (rc = kimi_cfg_u32(cx, root, "first_k_dense_replace", 0, 0, 4096,
                              &cfg->first_k_dense_replace)) != 0
        || (rc = kimi_cfg_u32(cx, root, "moe_layer_freq", 0, 1, 4096,
                              &cfg->moe_layer_freq)) != 0
        || (rc = kimi_cfg_u32(cx, root, "q_lora_rank", 0, 0, KIMI_CFG_MAX_DIM,
                              &cfg->q_lora_rank)) != 0
        || (rc = kimi_cfg_u32(cx, root, "kv_lora_rank", 1, 0, KIMI_CFG_MAX_DIM,
                              &cfg->kv_lora_rank)) != 0
        || (rc = kimi_cfg_u32(cx, root, "qk_nope_head_dim", 1, 0, 4096,
                              &cfg->qk_nope_head_dim)) != 0
        || (rc = kimi_cfg_u32(cx, root, "qk_rope_head_dim", 1, 0, 4096,
                              &cfg->qk_rope_head_dim)) != 0
        || (rc = kimi_cfg_u32(cx, root, "v_head_dim", 1, 0, 4096,
                              &cfg->v_head_dim)) != 0
        || (rc = kimi_cfg_u32(cx, root, "max_position_embeddings", 1, 0,
                              1u << 30, &cfg->max_position_embeddings)) != 0
        || (rc = kimi_cfg_u32(cx, root, "num_nextn_predict_layers", 0, 0, 64,
                              &cfg->num_nextn_predict_layers)) != 0
        || (rc = kimi_cfg_f32(cx, root, "rms_norm_eps", 0, 1e-6f,
                              &cfg->rms_norm_eps)) != 0
        || (rc = kimi_cfg_f32(cx, root, "rope_theta", 0, 10000.0f,
                              &cfg->rope_theta)) != 0
        || (rc = kimi_cfg_f32(cx, root, "routed_scaling_factor", 0, 1.0f,
                              &cfg->routed_scaling_factor)) != 0
        || (rc = kimi_cfg_bool(cx, root, "norm_topk_prob", 0,
                               &cfg->norm_topk_prob)) != 0
        || (rc = kimi_cfg_bool(cx, root, "tie_word_embeddings", 0,
                               &cfg->tie_word_embeddings)) != 0
        || (rc = kimi_cfg_str(cx, root, "scoring_func", "sigmoid",
                              cfg->scoring_func,
                              sizeof(cfg->scoring_func))) != 0
        || (rc = kimi_cfg_str(cx, root, "topk_method", "noaux_tc",
                              cfg->topk_method,
                              sizeof(cfg->topk_method))) != 0
        || (rc = kimi_cfg_rope(cx, root, cfg)) != 0
        || (rc = kimi_cfg_quant(cx, root, cfg)) != 0
        || (rc = kimi_cfg_eos(cx, root, cfg)) != 0)
    {
        return rc;
    }

    if (json_object_get(root, "bos_token_id") != NULL
        && !json_is_null(json_object_get(root, "bos_token_id")))
    {
        if ((rc = kimi_cfg_u32(cx, root, "bos_token_id", 1, 0, INT32_MAX,
                               &bos)) != 0)
        {
            return rc;
        }

        cfg->bos_token_id = (int32_t) bos;
    }

    if (cfg->num_key_value_heads == 0) {
        cfg->num_key_value_heads = cfg->num_attention_heads;
    }

    return kimi_cfg_validate(cx, cfg);
}


int
kimi_model_config_merge_json(const char *json_text,
    const char *hf_overrides_json, char **out, kimi_err_t *err)
{
    json_error_t  je;
    json_t       *root, *ov = NULL;

    root = json_loads(json_text, 0, &je);

    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return kimi_err_set(err, KIMI_EFORMAT, "config: not a JSON object "
                            "(line %d: %s)", je.line, je.text);
    }

    if (hf_overrides_json != NULL && hf_overrides_json[0] != '\0') {
        ov = json_loads(hf_overrides_json, 0, &je);

        if (ov == NULL || !json_is_object(ov) || kimi_cfg_merge(root, ov)) {
            json_decref(ov);
            json_decref(root);
            return kimi_err_set(err, KIMI_EINVAL, "--hf-overrides: not a "
                                "JSON object (%s)", je.text);
        }

        json_decref(ov);
    }

    *out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return *out ? 0 : kimi_err_set(err, KIMI_ENOMEM, "config: out of memory");
}


int
kimi_model_config_parse(kimi_model_config_t *cfg, const char *json_text,
    const char *hf_overrides_json, const char *what, kimi_err_t *err)
{
    kimi_cfg_ctx_t  cx = { what ? what : "config.json", err };
    json_error_t    je;
    json_t         *root, *ov;
    int             rc;

    root = json_loads(json_text, 0, &je);

    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return kimi_err_set(err, KIMI_EFORMAT, "%s: not a JSON object "
                            "(line %d: %s)", cx.what, je.line, je.text);
    }

    if (hf_overrides_json != NULL && hf_overrides_json[0] != '\0') {
        ov = json_loads(hf_overrides_json, 0, &je);

        if (ov == NULL || !json_is_object(ov)) {
            json_decref(ov);
            json_decref(root);
            return kimi_err_set(err, KIMI_EINVAL, "--hf-overrides: not a "
                                "JSON object (%s)", je.text);
        }

        rc = kimi_cfg_merge(root, ov);
        json_decref(ov);

        if (rc != 0) {
            json_decref(root);
            return kimi_err_set(err, KIMI_ENOMEM, "--hf-overrides: merge "
                                "failed");
        }
    }

    rc = kimi_cfg_from_json(cfg, root, &cx);
    json_decref(root);
    return rc;
}


/* Reads a whole small file into a NUL-terminated buffer. */
static int
kimi_cfg_read_file(const char *path, char **out, kimi_err_t *err)
{
    FILE   *f = fopen(path, "rb");
    char   *buf = NULL;
    long    n;

    if (f == NULL) {
        return kimi_err_set(err, KIMI_EIO, "%s: %s", path, strerror(errno));
    }

    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0
        || n > (64 << 20) || fseek(f, 0, SEEK_SET) != 0)
    {
        fclose(f);
        return kimi_err_set(err, KIMI_EFORMAT, "%s: unreadable or larger "
                            "than 64 MiB", path);
    }

    buf = malloc((size_t) n + 1);

    if (buf == NULL) {
        fclose(f);
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    if (fread(buf, 1, (size_t) n, f) != (size_t) n) {
        free(buf);
        fclose(f);
        return kimi_err_set(err, KIMI_EIO, "%s: short read", path);
    }

    buf[n] = '\0';
    fclose(f);
    *out = buf;
    return 0;
}


int
kimi_model_config_load(kimi_model_config_t *cfg, const char *dir,
    const char *hf_overrides_json, kimi_err_t *err)
{
    kimi_cfg_ctx_t  cx;
    json_error_t    je;
    json_t         *gen;
    char            path[4096], *text = NULL;
    int             rc;

    snprintf(path, sizeof(path), "%s/config.json", dir);

    if ((rc = kimi_cfg_read_file(path, &text, err)) != 0) {
        return rc;
    }

    rc = kimi_model_config_parse(cfg, text, hf_overrides_json, path, err);
    free(text);

    if (rc != 0) {
        return rc;
    }

    /* generation_config.json is optional; its eos ids add to config's */
    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    gen = json_load_file(path, 0, &je);

    if (gen == NULL) {
        FILE  *f = fopen(path, "rb");

        if (f == NULL) {
            return 0;                     /* absent: fine */
        }

        fclose(f);
        return kimi_err_set(err, KIMI_EFORMAT, "%s: line %d: %s", path,
                            je.line, je.text);
    }

    cx.what = path;
    cx.err = err;
    rc = json_is_object(gen) ? kimi_cfg_eos(&cx, gen, cfg)
                             : kimi_err_set(err, KIMI_EFORMAT,
                                            "%s: not a JSON object", path);
    json_decref(gen);
    return rc;
}


uint32_t
kimi_model_qk_head_dim(const kimi_model_config_t *cfg)
{
    return cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
}


float
kimi_model_softmax_scale(const kimi_model_config_t *cfg)
{
    double  s = 1.0 / sqrt((double) kimi_model_qk_head_dim(cfg));

    if (cfg->rope_is_yarn && cfg->rope_mscale_all_dim != 0.0f
        && cfg->rope_factor > 1.0f)
    {
        double  m = 0.1 * cfg->rope_mscale_all_dim * log(cfg->rope_factor)
                    + 1.0;
        s *= m * m;
    }

    return (float) s;
}


int
kimi_model_layer_is_moe(const kimi_model_config_t *cfg, uint32_t l)
{
    return cfg->n_routed_experts > 0 && l >= cfg->first_k_dense_replace
           && l % cfg->moe_layer_freq == 0;
}
