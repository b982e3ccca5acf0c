/*
 * One sequence through the cpu backend (fp32 activations, fp32 cache):
 * a prefill of n_prompt tokens, then n_decode tokens fed one a step; the
 * logits of the prefill's last token and of each fed token, n_decode + 1
 * rows of the model's vocabulary in out.
 *
 * Owns:   the script tests that compare two models' logits share
 *         (test_q_proj, test_quantize_load); header-only, as tap.h.
 * Never:  judges the logits.
 */

#ifndef KIMI_T_CPU_SCRIPT_H
#define KIMI_T_CPU_SCRIPT_H

#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/backend_cpu.h"
#include "model/model.h"

#define CPU_SCRIPT_BLOCKS  8              /* of 16 tokens: 128 in all */


static int
cpu_script(kimi_model_t *m, const int32_t *tok, uint32_t n_prompt,
    uint32_t n_decode, float *out, kimi_err_t *err)
{
    kimi_backend_cpu_params_t  bp = { 1, 1, NULL, NULL, NULL, NULL };
    kimi_backend_t            *be;
    kimi_kv_params_t           kp;
    kimi_batch_seq_t           s;
    kimi_batch_t               b = { 1, &s };
    uint32_t                   n_blocks, blocks[CPU_SCRIPT_BLOCKS];
    uint32_t                   rows, vocab;
    const float               *lg;

    memset(&kp, 0, sizeof(kp));
    kp.block_size = 16;
    kp.dtype = KIMI_KV_DTYPE_F32;
    kp.max_blocks = CPU_SCRIPT_BLOCKS;
    kp.budget_bytes = 1ull << 28;

    if (n_prompt + n_decode > 16 * CPU_SCRIPT_BLOCKS
        || kimi_backend_cpu_init_params(&be, m, &bp, err) != 0
        || be->ops->kv_init(be, &kp, &n_blocks, err) != 0)
    {
        return -1;
    }

    for (uint32_t i = 0; i < CPU_SCRIPT_BLOCKS; i++) {
        blocks[i] = i;
    }

    for (uint32_t k = 0; k <= n_decode; k++) {
        memset(&s, 0, sizeof(s));
        s.seq_id = 1;
        s.tokens = tok + (k == 0 ? 0 : n_prompt + k - 1);
        s.n_tokens = k == 0 ? n_prompt : 1;
        s.pos = k == 0 ? 0 : n_prompt + k - 1;
        s.block_table = blocks;
        s.n_blocks = CPU_SCRIPT_BLOCKS;
        s.want_logits = 1;

        if (be->ops->forward(be, &b, err) != 0) {
            be->ops->free(be);
            return -1;
        }

        lg = be->ops->logits(be, &rows, &vocab);
        memcpy(out + (size_t) k * vocab, lg, (size_t) vocab * sizeof(float));
    }

    be->ops->free(be);
    return 0;
}

#endif
