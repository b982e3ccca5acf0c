/*
 * CUDA graphs of the forward step, one per token count.
 *
 * Owns:   the captured steps (kimi_cuda_graph_t by T), their capture,
 *         re-capture when a launch shape changes, and their release.
 * Never:  captures uploads or synchronisation: forward.c copies the step's
 *         metadata before the launch and waits after it.
 * Holds:  a step reads every per-batch value (token ids, positions, slots,
 *         block tables, lengths, logit rows) from device memory, so the
 *         launch sequence depends only on T, the logit row count, the
 *         MLA split count (a grid size) and, under expert parallelism, the
 *         rows per peer of the exchange: those are the key (T = 0 is an
 *         expert-parallel rank serving only its peers' MoE layers).  A key
 *         runs eagerly the first time it is seen and is captured the
 *         second time (also keeps module loading out of captures).  When
 *         the split count changes as contexts grow, the graph is captured
 *         again and the executable updated in place.  A decode step of a
 *         61-layer model is ~1000 launches; replaying them as one graph
 *         takes the CPU launch cost off the step.
 */

#include <stdlib.h>
#include <string.h>

#include "../../common/kimi_log.h"
#include "cuda_impl.h"


int
kimi_cuda_graphs_init(kimi_cuda_t *b, kimi_err_t *err)
{
    const char  *env = getenv("KIMI_CUDA_GRAPHS");

    b->graph_max_t = b->cap < KIMI_CUDA_GRAPH_MAX_T ? b->cap
                                                    : KIMI_CUDA_GRAPH_MAX_T;
    /* KIMI_CUDA_GRAPHS=0 runs every step eagerly (debugging, timing) */
    b->graphs_on = !(env != NULL && env[0] == '0');
    b->graphs = calloc(b->graph_max_t + 1, sizeof(kimi_cuda_graph_t));

    if (b->graphs == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "cuda graphs: out of memory");
    }

    return 0;
}


/* Captures the step's launches into *g.  Returns the step's error, or 1
 * (no error set) when the step launched fine but the capture failed. */
static int
kimi_cuda_capture(kimi_cuda_t *b, uint32_t T, uint32_t rows, uint32_t splits,
    cudaGraph_t *g, kimi_err_t *err)
{
    cudaError_t  ce;
    int          rc;

    *g = NULL;
    KIMI_CU(cudaStreamBeginCapture(b->stream,
                                   cudaStreamCaptureModeThreadLocal), err);

    rc = kimi_cuda_step(b, T, rows, splits, err);
    ce = cudaStreamEndCapture(b->stream, g);

    if (rc != 0 || ce != cudaSuccess) {
        if (*g != NULL) {
            (void) cudaGraphDestroy(*g);
            *g = NULL;
        }

        (void) cudaGetLastError();

        if (rc == 0) {
            kimi_log(KIMI_LOG_WARN, "cuda graphs: capture of a %u-token "
                     "step failed (%s): steps run eagerly from now on", T,
                     cudaGetErrorString(ce));
            rc = 1;
        }
    }

    return rc;
}


int
kimi_cuda_graph_step(kimi_cuda_t *b, uint32_t T, uint32_t rows,
    uint32_t splits, kimi_err_t *err)
{
    kimi_cuda_graph_t               *gr = &b->graphs[T];
    cudaGraph_t                      g;
    cudaGraphExecUpdateResultInfo    info;
    int                              rc;

    if (gr->exec == NULL || gr->rows != rows || gr->splits != splits
        || gr->t_cap != b->t_cap)
    {
        if (!gr->seen || gr->seen_rows != rows || gr->seen_splits != splits
            || gr->seen_t_cap != b->t_cap)
        {
            gr->seen = 1;
            gr->seen_rows = rows;
            gr->seen_splits = splits;
            gr->seen_t_cap = b->t_cap;
            return kimi_cuda_step(b, T, rows, splits, err);
        }

        rc = kimi_cuda_capture(b, T, rows, splits, &g, err);

        if (rc < 0) {
            return rc;
        }

        if (rc > 0) {
            /* a launch that cannot be captured: eager from now on */
            b->graphs_on = 0;
            return kimi_cuda_step(b, T, rows, splits, err);
        }

        if (gr->exec != NULL
            && cudaGraphExecUpdate(gr->exec, g, &info) != cudaSuccess)
        {
            (void) cudaGetLastError();
            (void) cudaGraphExecDestroy(gr->exec);
            gr->exec = NULL;
        }

        if (gr->exec == NULL) {
            cudaError_t  ce = cudaGraphInstantiate(&gr->exec, g, 0);

            if (ce != cudaSuccess) {
                (void) cudaGetLastError();
                (void) cudaGraphDestroy(g);
                gr->exec = NULL;
                return kimi_err_set(err, KIMI_ECUDA, "cuda graphs: "
                                    "instantiate (%u tokens): %s", T,
                                    cudaGetErrorString(ce));
            }
        }

        (void) cudaGraphDestroy(g);
        gr->rows = rows;
        gr->splits = splits;
        gr->t_cap = b->t_cap;
        b->graph_captures++;
    }

    KIMI_CU(cudaGraphLaunch(gr->exec, b->stream), err);
    b->graph_launches++;
    return 0;
}


/* Every captured step destroyed, to be captured again when next seen. */
void
kimi_cuda_graphs_drop(kimi_cuda_t *b)
{
    for (uint32_t t = 0; b->graphs != NULL && t <= b->graph_max_t; t++) {
        if (b->graphs[t].exec != NULL) {
            (void) cudaGraphExecDestroy(b->graphs[t].exec);
        }

        memset(&b->graphs[t], 0, sizeof(b->graphs[t]));
    }
}


void
kimi_cuda_graphs_free(kimi_cuda_t *b)
{
    kimi_cuda_graphs_drop(b);
    free(b->graphs);
    b->graphs = NULL;
}
