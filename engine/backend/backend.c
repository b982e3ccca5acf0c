/*
 * Backend factory: a name from the command line to a backend instance.
 *
 * Owns:   the list of backends this binary knows and the message for one it
 *         was built without.
 * Never:  loads models or parses flags (the caller hands a loaded model or
 *         replay parameters).
 */

#include <string.h>

#include "backend.h"
#include "cpu/backend_cpu.h"
#include "replay/replay.h"

/* engine/backend/cuda/ is compiled only with nvcc; the Makefile defines
 * KIMI_HAVE_CUDA_BACKEND once that folder has sources */
#if defined(KIMI_HAVE_CUDA) && defined(KIMI_HAVE_CUDA_BACKEND)
#include "cuda/cuda_backend.h"
#endif


int
kimi_backend_create(kimi_backend_t **out, const kimi_backend_params_t *p,
    kimi_err_t *err)
{
    *out = NULL;

    if (p->name == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "no backend named");
    }

    if ((p->ep != NULL || p->tp != NULL || p->pp != NULL)
        && strcmp(p->name, "cpu") != 0 && strcmp(p->name, "cuda") != 0)
    {
        /* say so rather than run every expert or layer on every rank */
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s parallelism is"
                            " implemented on the cpu and cuda backends only;"
                            " the %s backend runs data parallel without it",
                            p->ep ? "expert" : p->tp ? "tensor" : "pipeline",
                            p->name);
    }

    if (p->dcp > 1 && strcmp(p->name, "cuda") != 0) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "decode context "
                            "parallelism is implemented on the cuda backend"
                            " only");
    }

    if (strcmp(p->name, "replay") == 0) {
        if (p->replay == NULL) {
            return kimi_err_set(err, KIMI_EINVAL, "replay backend without"
                                " parameters");
        }
        return kimi_backend_replay_init(out, p->replay, err);
    }

    if (strcmp(p->name, "cpu") == 0) {
        if (p->model == NULL) {
            return kimi_err_set(err, KIMI_EINVAL, "cpu backend needs a model");
        }
        kimi_backend_cpu_params_t  cp = { p->n_threads, -1, p->ep, p->tp,
                                         p->pp, p->lead };

        return kimi_backend_cpu_init_params(out, p->model, &cp, err);
    }

    if (strcmp(p->name, "cuda") == 0) {
#if defined(KIMI_HAVE_CUDA) && defined(KIMI_HAVE_CUDA_BACKEND)
        if (p->model == NULL) {
            return kimi_err_set(err, KIMI_EINVAL, "cuda backend needs a"
                                " model");
        }
        kimi_backend_cuda_params_t  gp = kimi_backend_cuda_default_params();

        gp.device = p->device;
        gp.ep = p->ep;
        gp.tp = p->tp;
        gp.pp = p->pp;
        gp.lead = p->lead;
        gp.dcp = p->dcp;
        gp.max_batched_tokens = p->max_batched_tokens
                                ? p->max_batched_tokens
                                : gp.max_batched_tokens;
        gp.max_model_len = p->max_model_len;
        gp.max_logit_rows = p->max_num_seqs ? p->max_num_seqs
                                            : gp.max_logit_rows;
        return kimi_backend_cuda_init_params(out, p->model, &gp, err);
#elif defined(KIMI_HAVE_CUDA)
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "this kimi-engine was"
                            " built with nvcc but without the cuda backend"
                            " (engine/backend/cuda/ has no sources yet)");
#else
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "this kimi-engine was"
                            " built without CUDA (no nvcc at build time):"
                            " use --backend cpu");
#endif
    }

    return kimi_err_set(err, KIMI_EINVAL, "unknown backend \"%s\" (expected"
                        " cpu, cuda or replay)", p->name);
}


int
kimi_backend_followers_ready(kimi_backend_t *b, kimi_err_t *err)
{
    if (strcmp(b->ops->name, "cpu") == 0) {
        return kimi_backend_cpu_followers_ready(b, err);
    }
#if defined(KIMI_HAVE_CUDA) && defined(KIMI_HAVE_CUDA_BACKEND)
    if (strcmp(b->ops->name, "cuda") == 0) {
        return kimi_backend_cuda_followers_ready(b, err);
    }
#endif
    return 0;
}


int
kimi_backend_follow(kimi_backend_t *b, kimi_err_t *err)
{
    if (strcmp(b->ops->name, "cpu") == 0) {
        return kimi_backend_cpu_follow(b, err);
    }
#if defined(KIMI_HAVE_CUDA) && defined(KIMI_HAVE_CUDA_BACKEND)
    if (strcmp(b->ops->name, "cuda") == 0) {
        return kimi_backend_cuda_follow(b, err);
    }
#endif
    return kimi_err_set(err, KIMI_EUNSUPPORTED, "the %s backend has no"
                        " followers", b->ops->name);
}
