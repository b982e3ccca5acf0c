/*
 * --quantization fp8: a BF16 checkpoint's linear weights become FP8 e4m3
 * with one scale per 128x128 block at load (kimi_model_params_t
 * quantize_fp8), what the cuda backend takes.  On a tiny Moonlight-shaped
 * BF16 model (no quantization_config, q_lora_rank null, two shared
 * experts; widths 96 / 144 / 192, so partial 128-blocks on both axes):
 *
 *   - without the flag the linears stay BF16 and the config reads BF16;
 *   - with it every linear (q_proj, kv_a, kv_b, o_proj, dense MLP, shared
 *     and routed experts) is F8 with scales, bit for bit what
 *     kimi_fp8_quant_blocks makes of the same BF16 values in one pass
 *     (the load splits the work in 128-row bands over threads), while the
 *     router, embedding and lm_head stay BF16 and the config reads FP8;
 *   - the cpu backend runs both (prefill and decode); the quantised
 *     logits stay close to the BF16 ones (cos >= 0.95 a row) and are not
 *     the same numbers.
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/backend_cpu.h"
#include "backend/cpu/ops.h"
#include "model/model.h"
#include "model/tiny_model.h"

#include "cpu_script.h"
#include "tap.h"

#define N_PROMPT  11
#define N_DECODE  4
#define N_ROWS    (N_DECODE + 1)

#define MOONLIGHT_SHAPE                                                       \
    "{\"quantization_config\": null, \"q_lora_rank\": null,"                  \
    " \"n_shared_experts\": 2}"


static int
load(kimi_model_t **m, const char *dir, int quantize, kimi_err_t *err)
{
    kimi_model_params_t  mp = kimi_model_default_params();

    mp.dir = dir;
    mp.quantize_fp8 = quantize;
    return kimi_model_load(m, &mp, err);
}


/* q (F8) equals a one-pass quantisation of b's BF16 values */
static int
same_codes(const kimi_weight_t *b, const kimi_weight_t *q)
{
    size_t    n = (size_t) b->rows * b->cols;
    size_t    ns = (size_t) ((b->rows + 127) / 128) * ((b->cols + 127) / 128);
    float    *f = calloc(n, sizeof(float)), *s = malloc(ns * sizeof(float));
    uint8_t  *c = malloc(n);
    int       same;

    if (f == NULL || s == NULL || c == NULL || b->dtype != KIMI_DTYPE_BF16
        || q->dtype != KIMI_DTYPE_F8_E4M3 || q->scale_inv == NULL
        || q->rows != b->rows || q->cols != b->cols)
    {
        free(f);
        free(s);
        free(c);
        return 0;
    }

    for (size_t i = 0; i < n; i++) {
        f[i] = kimi_bf16_to_f32(((const uint16_t *) b->data)[i]);
    }

    kimi_fp8_quant_blocks(f, b->rows, b->cols, c, s);
    same = memcmp(c, q->data, n) == 0
           && memcmp(s, q->scale_inv, ns * sizeof(float)) == 0;
    free(f);
    free(s);
    free(c);
    return same;
}


static int
same_mlp(const kimi_mlp_weights_t *b, const kimi_mlp_weights_t *q)
{
    return same_codes(&b->gate_proj, &q->gate_proj)
           && same_codes(&b->up_proj, &q->up_proj)
           && same_codes(&b->down_proj, &q->down_proj);
}


int
main(void)
{
    char                  dir[] = "/tmp/kimi-quant-XXXXXX", cmd[128];
    kimi_err_t            err;
    kimi_model_t         *b = NULL, *q = NULL;
    const kimi_model_config_t  *c;
    int32_t               tok[N_PROMPT + N_DECODE];
    float                *lb, *lq;
    double                worst = 1, md = 0;
    int                   same = 1, f8 = 1;
    size_t                V;

    if (mkdtemp(dir) == NULL
        || kimi_tiny_model_write_config(dir, NULL, 7, NULL, MOONLIGHT_SHAPE,
                                        &err) != 0)
    {
        printf("1..0 # SKIP cannot write the tiny model\n");
        return 0;
    }

    ok(load(&b, dir, 0, &err) == 0, "the BF16 model loads: %s",
       b ? "" : err.msg);
    ok(load(&q, dir, 1, &err) == 0, "and loads with --quantization fp8: %s",
       q ? "" : err.msg);

    if (b == NULL || q == NULL) {
        printf("1..%d\n", test_n);
        return 1;
    }

    c = &b->cfg;
    ok(!c->quant_fp8 && b->layers[0].q_b_proj.dtype == KIMI_DTYPE_BF16
       && b->layers[0].kv_b_proj.dtype == KIMI_DTYPE_BF16,
       "without the flag the linears stay BF16, the config reads BF16");
    ok(q->cfg.quant_fp8 && c->q_lora_rank == 0 && c->n_shared_experts == 2,
       "with it the config reads FP8 (q_lora_rank null, 2 shared experts)");

    for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
        const kimi_layer_weights_t  *B = &b->layers[l], *Q = &q->layers[l];

        same = same && same_codes(&B->q_b_proj, &Q->q_b_proj)
               && same_codes(&B->kv_a_proj_with_mqa, &Q->kv_a_proj_with_mqa)
               && same_codes(&B->kv_b_proj, &Q->kv_b_proj)
               && same_codes(&B->o_proj, &Q->o_proj);

        if (!B->is_moe) {
            same = same && same_mlp(&B->mlp, &Q->mlp);
            continue;
        }

        same = same && same_mlp(&B->shared_experts, &Q->shared_experts);
        for (uint32_t e = 0; e < c->n_routed_experts; e++) {
            same = same && same_mlp(&B->experts[e], &Q->experts[e]);
        }

        f8 = f8 && Q->gate.dtype == KIMI_DTYPE_BF16;
    }

    ok(same, "every linear weight is F8, codes and scales bit for bit a "
       "one-pass kimi_fp8_quant_blocks of its BF16 values");
    ok(f8 && q->embed_tokens.dtype == KIMI_DTYPE_BF16
       && q->lm_head.dtype == KIMI_DTYPE_BF16,
       "the routers, embedding and lm_head stay BF16");

    srand(5);
    for (uint32_t i = 0; i < N_PROMPT + N_DECODE; i++) {
        tok[i] = 1000 + rand() % 100000;
    }

    V = c->vocab_size;
    lb = malloc(N_ROWS * V * sizeof(float));
    lq = malloc(N_ROWS * V * sizeof(float));

    ok(lb && lq && cpu_script(b, tok, N_PROMPT, N_DECODE, lb, &err) == 0 && cpu_script(q, tok, N_PROMPT, N_DECODE, lq, &err) == 0,
       "the cpu backend runs both (%u-token prefill, %u decodes): %s",
       N_PROMPT, N_DECODE,
       lb && lq ? err.msg : "out of memory");

    for (uint32_t t = 0; t < N_ROWS; t++) {
        double  xy = 0, xx = 0, yy = 0;

        for (size_t v = 0; v < V; v++) {
            double  x = lb[t * V + v], y = lq[t * V + v];

            xy += x * y;
            xx += x * x;
            yy += y * y;
            md = fabs(x - y) > md ? fabs(x - y) : md;
        }

        xy /= sqrt(xx * yy);
        worst = xy < worst ? xy : worst;
    }

    ok(worst >= 0.95 && md > 1e-3, "quantised logits near the BF16 ones "
       "(worst row cos %.5f) and not the same numbers (max |diff| %.3f)",
       worst, md);

    kimi_model_free(b);
    kimi_model_free(q);
    free(lb);
    free(lq);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    (void) system(cmd);
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
