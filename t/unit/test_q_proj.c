/*
 * q_lora_rank null (Moonlight's and DeepSeek-V2-Lite's shape: one q_proj
 * instead of q_a_proj -> q_a_layernorm -> q_b_proj) on the cpu backend,
 * checked by an equivalence rather than a fixture:
 *
 *   model A: q LoRA of rank hidden_size, q_a_proj = the identity (exact in
 *            FP8 with scale 1), q_a_layernorm = 1, input_layernorm = 1;
 *   model B: q_lora_rank null, q_proj = A's q_b_proj; every other weight
 *            equal (dummy weights are drawn per tensor name).
 *
 * With input_layernorm = 1 the attention input a = rms(h) has rms 1, so
 * A's rms(q_a(a)) is a up to eps: with fp32 activations the two models'
 * logits must agree to ~1e-5, through prefill and decode; a perturbed
 * q_proj must not.  (Tensor-parallel shards of q_proj: t/parallel-4way-cpu.t.)
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/backend_cpu.h"
#include "model/model.h"
#include "model/tiny_model.h"

#include "cpu_script.h"
#include "tap.h"

#define T_PROMPT  19
#define N_DECODE  4


static int
load(kimi_model_t **m, const char *dir, const char *ov, kimi_err_t *err)
{
    kimi_model_params_t  mp = kimi_model_default_params();

    mp.dir = dir;
    mp.load_format = "dummy";
    mp.hf_overrides = ov;
    mp.seed = 11;
    return kimi_model_load(m, &mp, err);
}


static void
ones(const float *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        ((float *) v)[i] = 1.0f;
    }
}


int
main(void)
{
    char                  dir[] = "/tmp/kimi-qproj-XXXXXX", cmd[128];
    kimi_err_t            err;
    kimi_model_t         *a = NULL, *b = NULL;
    const kimi_model_config_t  *c;
    int32_t               tok[T_PROMPT + N_DECODE];
    float                *la, *lb;
    double                md = 0, mx = 0;
    size_t                V;

    if (mkdtemp(dir) == NULL
        || kimi_tiny_model_write_config(dir, NULL, 7, NULL, NULL, &err) != 0)
    {
        printf("1..0 # SKIP cannot write the tiny config\n");
        return 0;
    }

    ok(load(&a, dir, "{\"q_lora_rank\": 96}", &err) == 0,
       "model A (q LoRA of rank hidden_size) loads: %s", a ? "" : err.msg);
    ok(load(&b, dir, "{\"q_lora_rank\": null}", &err) == 0,
       "model B (q_lora_rank null) loads: %s", b ? "" : err.msg);

    if (a == NULL || b == NULL) {
        printf("1..%d\n", test_n);
        return 1;
    }

    c = &a->cfg;
    ok(b->cfg.q_lora_rank == 0 && b->layers[0].q_a_proj.data == NULL
       && b->layers[0].q_b_proj.cols == c->hidden_size,
       "model B holds q_proj [%u, %u] and no q_a_proj",
       b->layers[0].q_b_proj.rows, b->layers[0].q_b_proj.cols);

    for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
        kimi_layer_weights_t  *A = &a->layers[l], *B = &b->layers[l];
        uint8_t               *qa = (uint8_t *) A->q_a_proj.data;
        size_t                 qb = (size_t) A->q_b_proj.rows
                                    * A->q_b_proj.cols;
        size_t                 sb = (size_t) ((A->q_b_proj.rows + 127) / 128)
                                    * ((A->q_b_proj.cols + 127) / 128);

        /* identity in e4m3: 1.0 is 0x38 */
        for (uint32_t r = 0; r < A->q_a_proj.rows; r++) {
            for (uint32_t k = 0; k < A->q_a_proj.cols; k++) {
                qa[(size_t) r * A->q_a_proj.cols + k] = r == k ? 0x38 : 0;
            }
        }
        ones(A->q_a_proj.scale_inv, 1);
        ones(A->q_a_layernorm, c->q_lora_rank);
        ones(A->input_layernorm, c->hidden_size);
        ones(B->input_layernorm, c->hidden_size);

        memcpy((void *) B->q_b_proj.data, A->q_b_proj.data, qb);
        memcpy((void *) B->q_b_proj.scale_inv, A->q_b_proj.scale_inv,
               sb * sizeof(float));
    }

    srand(3);
    for (uint32_t i = 0; i < T_PROMPT + N_DECODE; i++) {
        tok[i] = 1000 + rand() % 100000;
    }

    V = c->vocab_size;
    la = malloc((N_DECODE + 1) * V * sizeof(float));
    lb = malloc((N_DECODE + 1) * V * sizeof(float));

    ok(cpu_script(a, tok, T_PROMPT, N_DECODE, la, &err) == 0 && cpu_script(b, tok, T_PROMPT, N_DECODE, lb, &err) == 0,
       "both models run a %u-token prefill and %u decode steps", T_PROMPT,
       N_DECODE);

    for (size_t i = 0; i < (N_DECODE + 1) * V; i++) {
        double  d = fabs((double) la[i] - lb[i]);

        md = d > md ? d : md;
        mx = fabs(la[i]) > mx ? fabs(la[i]) : mx;
    }

    ok(md <= 1e-4 * (mx > 1 ? mx : 1), "q_proj logits equal the identity-LoRA"
       " model's: max |diff| %.2e (max |logit| %.2f)", md, mx);

    /* the check can fail: a wrong q_proj (A's q_b_proj scaled) shows */
    for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
        ((float *) b->layers[l].q_b_proj.scale_inv)[0] *= 1.5f;
    }
    cpu_script(b, tok, T_PROMPT, N_DECODE, lb, &err);
    md = 0;
    for (size_t i = 0; i < (N_DECODE + 1) * V; i++) {
        double  d = fabs((double) la[i] - lb[i]);
        md = d > md ? d : md;
    }
    ok(md > 1e-3, "and a perturbed q_proj is seen: max |diff| %.2e", md);

    free(la);
    free(lb);
    kimi_model_free(a);
    kimi_model_free(b);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        printf("# could not remove %s\n", dir);
    }

    printf("1..%d\n", test_n);
    return test_failed != 0;
}
