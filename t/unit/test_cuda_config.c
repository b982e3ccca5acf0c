/*
 * Which models the cuda kernels take, decided from config.json alone (no
 * GPU needed): `--backend auto` serves a model the cuda backend would
 * refuse on the cpu instead of failing at start.
 *
 *   - Kimi-K2's own config (t/gpu/kimi-k2) passes;
 *   - the tiny model's width (64) is refused, naming the dimension;
 *   - Moonlight's shape passes: no q LoRA, two shared experts (run as one
 *     MLP twice as wide beside the routed ones);
 *   - a BF16 checkpoint (no quantization_config) is refused with a message
 *     naming --quantization fp8, and passes once that flag set the config
 *     to FP8 (kimi_model_load does so when quantising).
 */

#include <stdio.h>
#include <string.h>

#include "model/model.h"
#ifdef KIMI_HAVE_CUDA_BACKEND
#include "backend/cuda/cuda_backend.h"
#endif

#include "tap.h"


int
main(void)
{
#ifdef KIMI_HAVE_CUDA_BACKEND
    kimi_model_config_t  cfg;
    kimi_err_t           err;

    ok(kimi_model_config_load(&cfg, "t/gpu/kimi-k2", NULL, &err) == 0,
       "Kimi-K2's config loads: %s", err.msg);
    ok(kimi_backend_cuda_check_config(&cfg, &err) == 0,
       "the cuda kernels take Kimi-K2's shapes");

    cfg.hidden_size = 64;
    ok(kimi_backend_cuda_check_config(&cfg, &err) == KIMI_EUNSUPPORTED
       && strstr(err.msg, "hidden_size 64") != NULL,
       "a 64-wide model is refused, naming it: %s", err.msg);

    ok(kimi_model_config_load(&cfg, "t/gpu/kimi-k2",
                              "{\"q_lora_rank\": null, "
                              "\"n_shared_experts\": 2}", &err) == 0
       && kimi_backend_cuda_check_config(&cfg, &err) == 0,
       "no q LoRA and two shared experts (Moonlight's shape) pass");

    ok(kimi_model_config_load(&cfg, "t/gpu/kimi-k2",
                              "{\"quantization_config\": null}", &err) == 0
       && kimi_backend_cuda_check_config(&cfg, &err) == KIMI_EUNSUPPORTED
       && strstr(err.msg, "--quantization fp8") != NULL,
       "a BF16 checkpoint is refused, naming --quantization fp8: %s",
       err.msg);

    cfg.quant_fp8 = 1;
    ok(kimi_backend_cuda_check_config(&cfg, &err) == 0,
       "and taken once quantised to FP8 at load");

    printf("1..%d\n", test_n);
    return test_failed != 0;
#else
    printf("1..0 # SKIP built without the cuda backend\n");
    return 0;
#endif
}
