/*
 * engine/parallel/ on real GPUs: one thread per GPU, one NCCL communicator
 * from a bootstrap blob, then
 *   - TP: kimi_nccl_all_reduce_bf16 gives the exact sum of small values
 *   - EP: kimi_ep_dispatch delivers exactly the rows a host model of the
 *     pack says (ids, weights, e4m3 bytes, scales, padding), and
 *     kimi_ep_combine returns sum_k w * f(expert) for every token when
 *     each rank's "experts" write f into y_send (routing checked end to
 *     end, no GEMM involved)
 *   - EP over peer memory (kimi_ep_p2p_*): the same checks (rows where
 *     the host model says, combine sums) and the same bench
 *   - bench: dispatch + combine captured in a CUDA graph at 1, 16, 128
 *     tokens per GPU, against graph-captured ncclAlltoAll calls moving the
 *     same bytes, measured in the same run (issue 7: target <= 1.5x)
 *   - bench: one routed MoE layer at Kimi-K2's widths (384 experts of
 *     7168 x 2048, top-8, FP8) at the same batch per GPU: on one GPU with
 *     every expert, and expert-parallel over every GPU (router select,
 *     dispatch, this rank's experts, combine), both graph-captured; the
 *     scaling efficiency is one GPU's time over the EP time (target >= 0.8
 *     at >= 64 tokens per GPU), each next to its HBM floor (bytes of the
 *     distinct experts touched at the copy bandwidth measured here)
 * TAP on stdout.  Skips with fewer than 2 GPUs.  t/gpu/parallel-run
 * builds and runs it.
 */

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>
#include <cuda_runtime_api.h>

#include "parallel/ep.h"
#include "parallel/nccl_comm.h"
#include "kernels/kimi_kernels.h"

#define D        7168            /* Kimi-K2 hidden size */
#define TOP_K    8
#define E_LOCAL  16              /* routed experts per rank in this check */
#define ITERS    200

static int                 world;
static uint8_t             blob[256];
static uint32_t            blob_len;
static pthread_barrier_t   barrier;
static pthread_mutex_t     tap_lock = PTHREAD_MUTEX_INITIALIZER;
static int                 test_n, test_failed;


static void
ok(int cond, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
ok(int cond, const char *fmt, ...)
{
    va_list  ap;

    pthread_mutex_lock(&tap_lock);
    printf("%sok %d - ", cond ? "" : "not ", ++test_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    test_failed += !cond;
    pthread_mutex_unlock(&tap_lock);
}


static uint16_t
f2bf(float f)
{
    uint32_t  u;

    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);          /* round to nearest even */
    return (uint16_t) (u >> 16);
}


static float
bf2f(uint16_t b)
{
    uint32_t  u = (uint32_t) b << 16;
    float     f;

    memcpy(&f, &u, 4);
    return f;
}


/* The deterministic inputs of rank r, token t (every thread can compute
 * every rank's, which is how the host model knows what arrives). */
static int
expert_of(int r, int t, int k, int E)
{
    return ((r * 131 + t * 17) % E + k * (E / TOP_K)) % E;   /* distinct */
}


static float
weight_of(int k)
{
    return (float) (k + 1) / 36.0f;                          /* sum 1 */
}


static uint8_t
byte_of(int r, int t, int d)
{
    return (uint8_t) ((r * 31 + t * 7 + d) & 0x3f);          /* no NaN */
}


static float
scale_of(int r, int t, int g)
{
    return (float) r * 1000.0f + (float) t + (float) g * 0.5f;
}


#define CK(call)                                                              \
    do {                                                                      \
        cudaError_t  e_ = (call);                                             \
        if (e_ != cudaSuccess) {                                              \
            ok(0, "rank %d: %s: %s", rank, #call, cudaGetErrorString(e_));   \
            return;                                                           \
        }                                                                     \
    } while (0)


static void
check_tp(int rank, kimi_nccl_t *c, cudaStream_t s)
{
    size_t      i, n = (size_t) D * 4, bad = 0;
    uint16_t   *h = malloc(n * 2), *dbuf;
    kimi_err_t  err;

    for (i = 0; i < n; i++) {
        h[i] = f2bf((float) (rank + 1) * (float) (i % 7 + 1) * 0.125f);
    }
    CK(cudaMalloc((void **) &dbuf, n * 2));
    CK(cudaMemcpy(dbuf, h, n * 2, cudaMemcpyHostToDevice));

    if (kimi_nccl_all_reduce_bf16(c, dbuf, n, s, &err) != 0) {
        ok(0, "rank %d: all-reduce: %s", rank, err.msg);
        return;
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(h, dbuf, n * 2, cudaMemcpyDeviceToHost));

    for (i = 0; i < n; i++) {
        /* small multiples of 1/8: exact in bf16 whatever the order */
        bad += bf2f(h[i]) != (float) (world * (world + 1) / 2)
                             * (float) (i % 7 + 1) * 0.125f;
    }
    ok(bad == 0, "rank %d: TP all-reduce of %zu bf16 is exact (%zu wrong)",
       rank, n, bad);

    cudaFree(dbuf);
    free(h);
}


/* The check's "experts": received row R's output is the sum over its
 * valid pairs of w * (global expert + 1) / 64, the same in every column. */
static void
expert_sums(int rank, const int32_t *r_idx, const float *r_w, size_t rows,
    uint16_t *y)
{
    for (size_t d = 0; d < rows; d++) {
        float  v = 0;

        for (int k = 0; k < TOP_K; k++) {
            int  e = r_idx[d * TOP_K + k];

            if (e >= 0) {
                v += r_w[d * TOP_K + k]
                     * (float) (rank * E_LOCAL + e + 1) / 64.0f;
            }
        }
        for (int g = 0; g < D; g++) {
            y[d * D + g] = f2bf(v);
        }
    }
}


/* Values of the combined out [T][D] off the model's sum_k w * f(expert)
 * by more than 2 bf16 ulps (bf16 per peer, summed in fp32). */
static size_t
combine_errors(int rank, int T, const float *out)
{
    size_t  bad = 0;

    for (int t = 0; t < T; t++) {
        float  v = 0;

        for (int k = 0; k < TOP_K; k++) {
            v += weight_of(k) * (float) (expert_of(rank, t, k,
                                                   E_LOCAL * world) + 1)
                 / 64.0f;
        }
        for (int d = 0; d < D; d++) {
            bad += fabsf(out[(size_t) t * D + d] - v)
                   > fabsf(v) * (2.0f / 128.0f);
        }
    }

    return bad;
}


/* The floor of an exchange: the same bytes per peer in two graph-captured
 * ncclAlltoAll calls, in the y arrays (2*D bytes a row hold a dispatched
 * row's D + 4*D/128 + 8*top_k). */
static int
capture_raw(int rank, kimi_nccl_t *c, cudaStream_t s, const kimi_ep_ws_t *ws,
    size_t bytes_out, size_t bytes_back, cudaGraph_t *g)
{
    kimi_err_t  err = { 0 };

    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal)
        != cudaSuccess
        || kimi_nccl_all_to_all(c, ws->y_send, ws->y_recv, bytes_out, s,
                                &err) != 0
        || kimi_nccl_all_to_all(c, ws->y_send, ws->y_recv, bytes_back, s,
                                &err) != 0
        || cudaStreamEndCapture(s, g) != cudaSuccess)
    {
        ok(0, "rank %d: capture of the raw all-to-alls: %s", rank, err.msg);
        return -1;
    }

    return 0;
}


/* ITERS replays of x1, then of x2, every rank at once (after 20 warm-up
 * rounds of both): the milliseconds of each.  0, or -1 after a not ok. */
static int
time_two(int rank, cudaStream_t s, cudaGraphExec_t x1, cudaGraphExec_t x2,
    float *ms1, float *ms2)
{
    cudaEvent_t  a, b;
    int          i;

#define CKR(call)                                                             \
    do {                                                                      \
        cudaError_t  e_ = (call);                                             \
        if (e_ != cudaSuccess) {                                              \
            ok(0, "rank %d: %s: %s", rank, #call, cudaGetErrorString(e_));   \
            return -1;                                                        \
        }                                                                     \
    } while (0)

    CKR(cudaEventCreate(&a));
    CKR(cudaEventCreate(&b));
    for (i = 0; i < 20; i++) {
        CKR(cudaGraphLaunch(x1, s));
        CKR(cudaGraphLaunch(x2, s));
    }
    CKR(cudaStreamSynchronize(s));
    pthread_barrier_wait(&barrier);

    CKR(cudaEventRecord(a, s));
    for (i = 0; i < ITERS; i++) {
        CKR(cudaGraphLaunch(x1, s));
    }
    CKR(cudaEventRecord(b, s));
    CKR(cudaEventSynchronize(b));
    CKR(cudaEventElapsedTime(ms1, a, b));
    pthread_barrier_wait(&barrier);

    CKR(cudaEventRecord(a, s));
    for (i = 0; i < ITERS; i++) {
        CKR(cudaGraphLaunch(x2, s));
    }
    CKR(cudaEventRecord(b, s));
    CKR(cudaEventSynchronize(b));
    CKR(cudaEventElapsedTime(ms2, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 0;

#undef CKR
}



static void
check_ep(int rank, kimi_nccl_t *c, cudaStream_t s, int T)
{
    int               p, t, k, e, row, g, G = D / 128;
    int               E = E_LOCAL * world;
    size_t            rows = (size_t) world * T, bad = 0, bad_pad = 0, d;
    kimi_err_t        err;
    kimi_ep_ws_t      ws;
    kimi_ep_shape_t   sh = { world, T, TOP_K, E, D };
    void             *wsbuf;
    uint8_t          *xq, *d_xq, *r_xq;
    float            *xs, *w, *d_xs, *d_w, *r_w, *r_xs;
    int32_t          *idx, *d_idx, *r_idx;
    uint16_t         *y;
    float            *out, *d_out;

    xq = malloc((size_t) T * D);
    xs = malloc((size_t) T * G * 4);
    idx = malloc((size_t) T * TOP_K * 4);
    w = malloc((size_t) T * TOP_K * 4);
    r_idx = malloc(rows * TOP_K * 4);
    r_w = malloc(rows * TOP_K * 4);
    r_xq = malloc(rows * D);
    r_xs = malloc(rows * G * 4);
    y = malloc(rows * D * 2);
    out = malloc((size_t) T * D * 4);

    for (t = 0; t < T; t++) {
        for (d = 0; d < D; d++) {
            xq[(size_t) t * D + d] = byte_of(rank, t, (int) d);
        }
        for (g = 0; g < G; g++) {
            xs[t * G + g] = scale_of(rank, t, g);
        }
        for (k = 0; k < TOP_K; k++) {
            idx[t * TOP_K + k] = expert_of(rank, t, k, E);
            w[t * TOP_K + k] = weight_of(k);
        }
    }

    CK(cudaMalloc(&wsbuf, kimi_ep_ws_bytes(&sh)));
    kimi_ep_ws_carve(&ws, wsbuf, &sh);
    CK(cudaMalloc((void **) &d_xq, (size_t) T * D));
    CK(cudaMalloc((void **) &d_xs, (size_t) T * G * 4));
    CK(cudaMalloc((void **) &d_idx, (size_t) T * TOP_K * 4));
    CK(cudaMalloc((void **) &d_w, (size_t) T * TOP_K * 4));
    CK(cudaMalloc((void **) &d_out, (size_t) T * D * 4));
    CK(cudaMemset(d_out, 0, (size_t) T * D * 4));
    CK(cudaMemcpy(d_xq, xq, (size_t) T * D, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_xs, xs, (size_t) T * G * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_idx, idx, (size_t) T * TOP_K * 4,
                  cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_w, w, (size_t) T * TOP_K * 4, cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize());      /* legacy-stream uploads vs s */

    if (kimi_ep_dispatch(c, &sh, T, d_xq, d_xs, d_idx, d_w, &ws, s, &err)
        != 0)
    {
        ok(0, "rank %d T=%d: dispatch: %s", rank, T, err.msg);
        return;
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(r_idx, ws.recv_idx, rows * TOP_K * 4,
                  cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r_w, ws.recv_w, rows * TOP_K * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r_xq, ws.recv_xq, rows * D, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r_xs, ws.recv_xs, rows * G * 4, cudaMemcpyDeviceToHost));

    /* host model of what peer p packed for us, in p's token order */
    for (p = 0; p < world; p++) {
        row = 0;
        for (t = 0; t < T; t++) {
            int  mine = 0;
            for (k = 0; k < TOP_K; k++) {
                mine |= expert_of(p, t, k, E) / E_LOCAL == rank;
            }
            if (!mine) {
                continue;
            }
            size_t  R = (size_t) p * T + row;
            for (k = 0; k < TOP_K; k++) {
                e = expert_of(p, t, k, E);
                int  want = e / E_LOCAL == rank ? e % E_LOCAL : -1;
                bad += r_idx[R * TOP_K + k] != want;
                bad += r_w[R * TOP_K + k] != (want >= 0 ? weight_of(k) : 0);
            }
            for (d = 0; d < D; d++) {
                bad += r_xq[R * D + d] != byte_of(p, t, (int) d);
            }
            for (g = 0; g < G; g++) {
                bad += r_xs[R * G + g] != scale_of(p, t, g);
            }
            row++;
        }
        for (; row < T; row++) {
            for (k = 0; k < TOP_K; k++) {
                bad_pad += r_idx[((size_t) p * T + row) * TOP_K + k] != -1;
            }
        }
    }
    ok(bad == 0 && bad_pad == 0, "rank %d T=%d: dispatch delivers the rows"
       " the host model packs (%zu wrong, %zu bad padding ids)", rank, T,
       bad, bad_pad);

    expert_sums(rank, r_idx, r_w, rows, y);
    CK(cudaMemcpy(ws.y_send, y, rows * D * 2, cudaMemcpyHostToDevice));

    if (kimi_ep_combine(c, &sh, T, &ws, d_out, s, &err) != 0) {
        ok(0, "rank %d T=%d: combine: %s", rank, T, err.msg);
        return;
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(out, d_out, (size_t) T * D * 4, cudaMemcpyDeviceToHost));

    bad = combine_errors(rank, T, out);
    ok(bad == 0, "rank %d T=%d: combine returns sum_k w*f(expert) for every"
       " token (%zu values off by > 2 bf16 ulps)", rank, T, bad);

    /* ---- bench: graph of dispatch + combine vs the same bytes raw ---- */
    {
        cudaGraph_t       g1, g2;
        cudaGraphExec_t   x1, x2;
        float             ms1 = 0, ms2 = 0;
        size_t            bytes_out = (size_t) T * (TOP_K * 8 + D + G * 4);
        size_t            bytes_back = (size_t) T * D * 2;

        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        if (kimi_ep_dispatch(c, &sh, T, d_xq, d_xs, d_idx, d_w, &ws, s,
                             &err) != 0
            || kimi_ep_combine(c, &sh, T, &ws, d_out, s, &err) != 0)
        {
            ok(0, "rank %d T=%d: capture: %s", rank, T, err.msg);
            return;
        }
        CK(cudaStreamEndCapture(s, &g1));

        if (capture_raw(rank, c, s, &ws, bytes_out, bytes_back, &g2) != 0) {
            return;
        }

        CK(cudaGraphInstantiate(&x1, g1, 0));
        CK(cudaGraphInstantiate(&x2, g2, 0));
        if (time_two(rank, s, x1, x2, &ms1, &ms2) != 0) {
            return;
        }

        if (rank == 0) {
            printf("# ep W=%d T=%d/GPU D=%d top_k=%d: dispatch+combine %.1f"
                   " us, ncclAlltoAll same bytes %.1f us, ratio %.2f"
                   " (target <= 1.5)\n", world, T, D, TOP_K,
                   ms1 * 1000 / ITERS, ms2 * 1000 / ITERS, ms1 / ms2);
            fflush(stdout);
        }

        cudaGraphExecDestroy(x1);
        cudaGraphExecDestroy(x2);
        cudaGraphDestroy(g1);
        cudaGraphDestroy(g2);
    }

    cudaFree(wsbuf);
    cudaFree(d_xq);
    cudaFree(d_xs);
    cudaFree(d_idx);
    cudaFree(d_w);
    cudaFree(d_out);
    free(xq); free(xs); free(idx); free(w); free(r_idx); free(r_w);
    free(r_xq); free(r_xs); free(y); free(out);
}




/* ---- the same exchange over peer memory (ep.h, kimi_ep_p2p_t) ----------- */

static void  *p2p_inbox[16];            /* every rank's, by rank */

typedef struct {
    kimi_ep_p2p_t   p2p;
    void           *peers_d;
    uint64_t       *epoch;
    int            *abort_h;
} p2p_t;


/* Collective over the threads: every rank's inbox for sh, poisoned
 * (flags zero), mapped into every GPU (peer access is on). */
static int
p2p_open(int rank, const kimi_ep_shape_t *sh, p2p_t *x)
{
    void  *abort_d;

    memset(x, 0, sizeof(*x));
    if (cudaMalloc(&p2p_inbox[rank], kimi_ep_inbox_bytes(sh)) != cudaSuccess
        || cudaMemset(p2p_inbox[rank], 0xff, kimi_ep_inbox_bytes(sh))
           != cudaSuccess
        || cudaMemset(p2p_inbox[rank], 0, (size_t) world * 8) != cudaSuccess
        || cudaDeviceSynchronize() != cudaSuccess)
    {
        return -1;
    }
    pthread_barrier_wait(&barrier);
    if (cudaMalloc(&x->peers_d, (size_t) world * sizeof(void *)) != cudaSuccess
        || cudaMemcpy(x->peers_d, p2p_inbox, (size_t) world * sizeof(void *),
                      cudaMemcpyHostToDevice) != cudaSuccess
        || cudaMalloc((void **) &x->epoch, 8) != cudaSuccess
        || cudaMemset(x->epoch, 0, 8) != cudaSuccess
        || cudaHostAlloc((void **) &x->abort_h, sizeof(int),
                         cudaHostAllocMapped) != cudaSuccess
        || cudaHostGetDevicePointer(&abort_d, x->abort_h, 0) != cudaSuccess
        || cudaDeviceSynchronize() != cudaSuccess)
    {
        return -1;
    }
    *x->abort_h = 0;
    x->p2p.rank = rank;
    x->p2p.peer_inbox = (void *const *) x->peers_d;
    x->p2p.inbox = p2p_inbox[rank];
    x->p2p.epoch = x->epoch;
    x->p2p.abort = (const volatile int *) abort_d;
    return 0;
}


/* Collective: every rank done with every inbox before any is freed. */
static void
p2p_close(int rank, cudaStream_t s, p2p_t *x)
{
    cudaStreamSynchronize(s);
    pthread_barrier_wait(&barrier);
    cudaFree(p2p_inbox[rank]);
    cudaFree(x->peers_d);
    cudaFree(x->epoch);
    cudaFreeHost(x->abort_h);
}


static void
check_ep_p2p(int rank, kimi_nccl_t *c, cudaStream_t s, int T)
{
    int               p, t, k, e, g, G = D / 128;
    int               E = E_LOCAL * world;
    size_t            rows = (size_t) world * T, bad = 0, d;
    kimi_err_t        err;
    kimi_ep_ws_t      ws, aws;
    kimi_ep_shape_t   sh = { world, T, TOP_K, E, D };
    kimi_ep_p2p_t     p2p;
    p2p_t             px;
    void             *awsbuf;
    uint8_t          *xq, *d_xq, *r_xq;
    float            *xs, *w, *d_xs, *d_w, *r_w, *r_xs, *out, *d_out;
    int32_t          *idx, *d_idx, *r_idx;
    uint16_t         *y;

    xq = malloc((size_t) T * D);
    xs = malloc((size_t) T * G * 4);
    idx = malloc((size_t) T * TOP_K * 4);
    w = malloc((size_t) T * TOP_K * 4);
    r_idx = malloc(rows * TOP_K * 4);
    r_w = malloc(rows * TOP_K * 4);
    r_xq = malloc(rows * D);
    r_xs = malloc(rows * G * 4);
    y = malloc(rows * D * 2);
    out = malloc((size_t) T * D * 4);

    for (t = 0; t < T; t++) {
        for (d = 0; d < D; d++) {
            xq[(size_t) t * D + d] = byte_of(rank, t, (int) d);
        }
        for (g = 0; g < G; g++) {
            xs[t * G + g] = scale_of(rank, t, g);
        }
        for (k = 0; k < TOP_K; k++) {
            idx[t * TOP_K + k] = expert_of(rank, t, k, E);
            w[t * TOP_K + k] = weight_of(k);
        }
    }

    /* the inboxes, poisoned: a row the dispatch should write and did not
     * shows */
    if (p2p_open(rank, &sh, &px) != 0) {
        ok(0, "rank %d T=%d: p2p inboxes: %s", rank, T,
           cudaGetErrorString(cudaGetLastError()));
        return;
    }
    p2p = px.p2p;
    kimi_ep_inbox_carve(&ws, p2p_inbox[rank], &sh);

    CK(cudaMalloc((void **) &d_xq, (size_t) T * D));
    CK(cudaMalloc((void **) &d_xs, (size_t) T * G * 4));
    CK(cudaMalloc((void **) &d_idx, (size_t) T * TOP_K * 4));
    CK(cudaMalloc((void **) &d_w, (size_t) T * TOP_K * 4));
    CK(cudaMalloc((void **) &d_out, (size_t) T * D * 4));
    CK(cudaMemset(d_out, 0, (size_t) T * D * 4));
    CK(cudaMemcpy(d_xq, xq, (size_t) T * D, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_xs, xs, (size_t) T * G * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_idx, idx, (size_t) T * TOP_K * 4,
                  cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_w, w, (size_t) T * TOP_K * 4, cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize());      /* legacy-stream uploads vs s */

    if (kimi_ep_p2p_dispatch(&p2p, &sh, T, d_xq, d_xs, d_idx, d_w, &ws, s,
                             &err) != 0)
    {
        ok(0, "rank %d T=%d: p2p dispatch: %s", rank, T, err.msg);
        return;
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(r_idx, ws.recv_idx, rows * TOP_K * 4,
                  cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r_w, ws.recv_w, rows * TOP_K * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r_xq, ws.recv_xq, rows * D, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(r_xs, ws.recv_xs, rows * G * 4, cudaMemcpyDeviceToHost));

    /* host model: peer p's token t is row p * T + t, ids -1 where none of
     * its experts is ours; rows and scales only where one is */
    for (p = 0; p < world; p++) {
        for (t = 0; t < T; t++) {
            size_t  R = (size_t) p * T + t;
            int     mine = 0;

            for (k = 0; k < TOP_K; k++) {
                e = expert_of(p, t, k, E);
                int  want = e / E_LOCAL == rank ? e % E_LOCAL : -1;
                mine |= want >= 0;
                bad += r_idx[R * TOP_K + k] != want;
                bad += r_w[R * TOP_K + k] != (want >= 0 ? weight_of(k) : 0);
            }
            if (!mine) {
                continue;
            }
            for (d = 0; d < D; d++) {
                bad += r_xq[R * D + d] != byte_of(p, t, (int) d);
            }
            for (g = 0; g < G; g++) {
                bad += r_xs[R * G + g] != scale_of(p, t, g);
            }
        }
    }
    ok(bad == 0, "rank %d T=%d: p2p dispatch writes every peer's rows where"
       " the host model says (%zu wrong)", rank, T, bad);

    expert_sums(rank, r_idx, r_w, rows, y);
    CK(cudaMemcpy(ws.y_send, y, rows * D * 2, cudaMemcpyHostToDevice));

    if (kimi_ep_p2p_combine(&p2p, &sh, T, &ws, d_out, s, &err) != 0) {
        ok(0, "rank %d T=%d: p2p combine: %s", rank, T, err.msg);
        return;
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(out, d_out, (size_t) T * D * 4, cudaMemcpyDeviceToHost));

    bad = combine_errors(rank, T, out);
    ok(bad == 0, "rank %d T=%d: p2p combine returns sum_k w*f(expert) for"
       " every token (%zu values off by > 2 bf16 ulps)", rank, T, bad);

    /* ---- bench: graph of p2p dispatch + combine vs raw all-to-all ---- */
    {
        cudaGraph_t       g1, g2;
        cudaGraphExec_t   x1, x2;
        float             ms1 = 0, ms2 = 0;
        size_t            bytes_out = (size_t) T * (TOP_K * 8 + D + G * 4);
        size_t            bytes_back = (size_t) T * D * 2;

        CK(cudaMalloc(&awsbuf, kimi_ep_ws_bytes(&sh)));
        kimi_ep_ws_carve(&aws, awsbuf, &sh);

        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        if (kimi_ep_p2p_dispatch(&p2p, &sh, T, d_xq, d_xs, d_idx, d_w, &ws,
                                 s, &err) != 0
            || kimi_ep_p2p_combine(&p2p, &sh, T, &ws, d_out, s, &err) != 0)
        {
            ok(0, "rank %d T=%d: capture: %s", rank, T, err.msg);
            return;
        }
        CK(cudaStreamEndCapture(s, &g1));
        if (capture_raw(rank, c, s, &aws, bytes_out, bytes_back, &g2) != 0) {
            return;
        }
        CK(cudaGraphInstantiate(&x1, g1, 0));
        CK(cudaGraphInstantiate(&x2, g2, 0));
        if (time_two(rank, s, x1, x2, &ms1, &ms2) != 0) {
            return;
        }

        if (rank == 0) {
            printf("# ep-p2p W=%d T=%d/GPU D=%d top_k=%d: dispatch+combine"
                   " over peer memory %.1f us, ncclAlltoAll same bytes %.1f"
                   " us, ratio %.2f (target <= 1.5; <= 25 us at T=1)\n",
                   world, T, D, TOP_K, ms1 * 1000 / ITERS,
                   ms2 * 1000 / ITERS, ms1 / ms2);
            fflush(stdout);
        }

        cudaGraphExecDestroy(x1);
        cudaGraphExecDestroy(x2);
        cudaGraphDestroy(g1);
        cudaGraphDestroy(g2);
        cudaFree(awsbuf);
    }

    p2p_close(rank, s, &px);
    cudaFree(d_xq);
    cudaFree(d_xs);
    cudaFree(d_idx);
    cudaFree(d_w);
    cudaFree(d_out);
    free(xq); free(xs); free(idx); free(w); free(r_idx); free(r_w);
    free(r_xq); free(r_xs); free(y); free(out);
}


#define MOE_E    384             /* Kimi-K2's routed experts */
#define MOE_I    2048
#define MOE_K    8
#define MOE_ITER 50

/* random FP8 codes without NaN (exponent field <= 7) */
static void
fill_fp8(uint8_t *h, size_t n, uint64_t seed)
{
    uint64_t  x = seed * 0x9e3779b97f4a7c15ull + 1;

    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        h[i] = (uint8_t) (x >> 24) & 0xbf;
    }
}


/* Times one captured graph: microseconds per launch. */
static double
time_graph(cudaGraphExec_t x, cudaStream_t s, int iters)
{
    cudaEvent_t  a, b;
    float        ms = 0;

    cudaGraphLaunch(x, s);
    cudaGraphLaunch(x, s);
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaEventRecord(a, s);
    for (int i = 0; i < iters; i++) {
        cudaGraphLaunch(x, s);
    }
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1000.0 / iters;
}


static void
bench_moe(int rank, kimi_nccl_t *c, cudaStream_t s)
{
    int              E_local = MOE_E / world, n_exp = rank == 0 ? MOE_E
                                                                : E_local;
    int              Tn[] = { 1, 16, 64, 128, 256 }, G = D / 128;
    size_t           mat = (size_t) MOE_I * D, n_sc = (size_t) (MOE_I / 128)
                                                      * G;
    size_t           chunk = (size_t) 64 << 20, pool_b, i;
    uint8_t         *pool, *hbuf;
    float           *scales, *hs;
    void           **tab_h;
    void            *tab_d;
    kimi_experts_t   ex = { 0 };
    kimi_err_t       err;
    double           bw = 0;

    pool_b = (size_t) n_exp * 3 * mat;
    hbuf = malloc(chunk);
    hs = malloc((size_t) n_exp * 3 * n_sc * sizeof(float));
    tab_h = calloc((size_t) 6 * (n_exp + 1), sizeof(void *));
    CK(cudaMalloc((void **) &pool, pool_b));
    CK(cudaMalloc((void **) &scales, (size_t) n_exp * 3 * n_sc * 4));
    fill_fp8(hbuf, chunk, (uint64_t) rank + 1);
    CK(cudaMemcpy(pool, hbuf, chunk, cudaMemcpyHostToDevice));
    for (i = chunk; i < pool_b; i += chunk) {        /* tile the chunk */
        CK(cudaMemcpy(pool + i, pool, i + chunk <= pool_b ? chunk
                                                          : pool_b - i,
                      cudaMemcpyDeviceToDevice));
    }
    for (i = 0; i < (size_t) n_exp * 3 * n_sc; i++) {
        hs[i] = 0.01f + 0.001f * (float) (i % 7);
    }
    CK(cudaMemcpy(scales, hs, (size_t) n_exp * 3 * n_sc * 4,
                  cudaMemcpyHostToDevice));

    for (int e = 0; e < n_exp; e++) {
        for (int m = 0; m < 3; m++) {
            tab_h[(2 * m) * (n_exp + 1) + e] = pool + ((size_t) e * 3 + m)
                                                      * mat;
            tab_h[(2 * m + 1) * (n_exp + 1) + e] = scales
                                                   + ((size_t) e * 3 + m)
                                                     * n_sc;
        }
    }
    CK(cudaMalloc(&tab_d, (size_t) 6 * (n_exp + 1) * sizeof(void *)));
    CK(cudaMemcpy(tab_d, tab_h, (size_t) 6 * (n_exp + 1) * sizeof(void *),
                  cudaMemcpyHostToDevice));

    /* the EP side uses the first E_local entries of the same tables */
    ex.gate = (const uint8_t *const *) ((void **) tab_d + 0 * (n_exp + 1));
    ex.gate_s = (const float *const *) ((void **) tab_d + 1 * (n_exp + 1));
    ex.up = (const uint8_t *const *) ((void **) tab_d + 2 * (n_exp + 1));
    ex.up_s = (const float *const *) ((void **) tab_d + 3 * (n_exp + 1));
    ex.down = (const uint8_t *const *) ((void **) tab_d + 4 * (n_exp + 1));
    ex.down_s = (const float *const *) ((void **) tab_d + 5 * (n_exp + 1));

    /* copy bandwidth of this GPU: the floor's unit */
    {
        cudaEvent_t  a, b;
        float        ms;
        size_t       nb = pool_b / 2 < ((size_t) 4 << 30) ? pool_b / 2
                                                           : (size_t) 4 << 30;

        cudaEventCreate(&a);
        cudaEventCreate(&b);
        CK(cudaMemcpyAsync(pool + nb, pool, nb, cudaMemcpyDeviceToDevice, s));
        cudaEventRecord(a, s);
        for (int k = 0; k < 5; k++) {
            cudaMemcpyAsync(pool + nb, pool, nb, cudaMemcpyDeviceToDevice, s);
        }
        cudaEventRecord(b, s);
        CK(cudaEventSynchronize(b));
        cudaEventElapsedTime(&ms, a, b);
        bw = 2.0 * nb * 5 / (ms * 1e-3);
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }

    for (unsigned ti = 0; ti < sizeof(Tn) / sizeof(Tn[0]); ti++) {
        int               T = Tn[ti], rows = world * T;
        kimi_ep_shape_t   sh = { world, T, MOE_K, MOE_E, D };
        kimi_ep_ws_t      ews;
        kimi_moe_ws_t     ws1, ws2;
        void             *ews_b, *ws1_b = NULL, *ws2_b;
        uint8_t          *xq;
        float            *xs, *logits, *w, *y, *hl;
        int32_t          *idx, *hidx;
        cudaGraph_t       g;
        cudaGraphExec_t   x1 = NULL, x2, x3;
        double            us1 = 0, us2, us3 = 0, touched1 = 0, touched2 = 0;
        int               seen[MOE_E];

        fprintf(stderr, "rank %d: moe bench T=%d\n", rank, T);
        hl = malloc((size_t) T * MOE_E * 4);
        for (i = 0; i < (size_t) T * MOE_E; i++) {
            hl[i] = (float) ((i * 2654435761u + (size_t) rank * 97
                              + (size_t) T) % 1000) / 250.0f - 2.0f;
        }
        CK(cudaMalloc((void **) &xq, (size_t) T * D));
        CK(cudaMalloc((void **) &xs, (size_t) T * G * 4));
        CK(cudaMalloc((void **) &logits, (size_t) T * MOE_E * 4));
        CK(cudaMalloc((void **) &w, (size_t) T * MOE_K * 4));
        CK(cudaMalloc((void **) &idx, (size_t) T * MOE_K * 4));
        CK(cudaMalloc((void **) &y, (size_t) T * D * 4));
        CK(cudaMemcpy(xq, pool, (size_t) T * D, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(xs, scales, (size_t) T * G * 4,
                      cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(logits, hl, (size_t) T * MOE_E * 4,
                      cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());      /* the D2D copies above too */
        CK(cudaMalloc(&ews_b, kimi_ep_ws_bytes(&sh)));
        CK(cudaMemset(ews_b, 0, kimi_ep_ws_bytes(&sh)));
        kimi_ep_ws_carve(&ews, ews_b, &sh);
        CK(cudaMalloc(&ws2_b, kimi_moe_ws_bytes(rows, MOE_K, E_local, 0, D,
                                                MOE_I)));
        kimi_moe_ws_carve(&ws2, ws2_b, rows, MOE_K, E_local, 0, D, MOE_I);

        /* distinct experts this rank's tokens touch (for the floors) */
        if (kimi_moe_router_select(logits, NULL, KIMI_ROUTER_NOAUX_TC, T, MOE_E, MOE_K, 1, 1, 1,
                                   2.827f, idx, w, s, &err) != 0)
        {
            ok(0, "rank %d: router: %s", rank, err.msg);
            return;
        }
        /* s is a non-blocking stream: a plain cudaMemcpy does not wait
         * for it (reading idx before the router wrote it indexed seen[]
         * with garbage and crashed at random sizes) */
        CK(cudaStreamSynchronize(s));
        hidx = malloc((size_t) T * MOE_K * 4);
        CK(cudaMemcpy(hidx, idx, (size_t) T * MOE_K * 4,
                      cudaMemcpyDeviceToHost));
        memset(seen, 0, sizeof(seen));
        for (i = 0; i < (size_t) T * MOE_K; i++) {
            if (hidx[i] < 0 || hidx[i] >= MOE_E) {
                ok(0, "rank %d T=%d: router chose expert %d", rank, T,
                   hidx[i]);
                return;
            }
            touched1 += !seen[hidx[i]]++;
        }

        if (rank == 0) {
            int  slots = kimi_moe_max_slots(T, MOE_K, MOE_E, 0);

            CK(cudaMalloc(&ws1_b, kimi_moe_ws_bytes(T, MOE_K, MOE_E, 0, D,
                                                    MOE_I)));
            kimi_moe_ws_carve(&ws1, ws1_b, T, MOE_K, MOE_E, 0, D, MOE_I);
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            if (kimi_moe_router_select(logits, NULL, KIMI_ROUTER_NOAUX_TC, T, MOE_E, MOE_K, 1, 1,
                                       1, 2.827f, idx, w, s, &err) != 0
                || kimi_moe_plan(idx, T, MOE_K, MOE_E, 0, &ws1, s, &err) != 0
                || kimi_moe_gate_up(xq, xs, T, D, MOE_I, slots, &ex, &ws1, s,
                                    &err) != 0
                || kimi_moe_down(T, MOE_K, D, MOE_I, slots, &ex, &ws1, s,
                                 &err) != 0
                || kimi_moe_combine_f32(&ws1, w, T, MOE_K, 0, D, y, s, &err)
                   != 0)
            {
                ok(0, "rank 0: one-GPU MoE capture: %s", err.msg);
                return;
            }
            CK(cudaStreamEndCapture(s, &g));
            CK(cudaGraphInstantiate(&x1, g, 0));
            cudaGraphDestroy(g);
            us1 = time_graph(x1, s, MOE_ITER);
            fprintf(stderr, "rank 0: one-GPU MoE T=%d: %.1f us (%s)\n", T,
                    us1, cudaGetErrorString(cudaGetLastError()));
        }
        pthread_barrier_wait(&barrier);

        {
            int  slots = kimi_moe_max_slots(rows, MOE_K, E_local, 0);

            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            if (kimi_moe_router_select(logits, NULL, KIMI_ROUTER_NOAUX_TC, T, MOE_E, MOE_K, 1, 1,
                                       1, 2.827f, idx, w, s, &err) != 0
                || kimi_ep_dispatch(c, &sh, T, xq, xs, idx, w, &ews, s, &err)
                   != 0
                || cudaMemsetAsync(y, 0, (size_t) T * D * 4, s)
                   != cudaSuccess
                || kimi_moe_plan(ews.recv_idx, rows, MOE_K, E_local, 0, &ws2,
                                 s, &err) != 0
                || kimi_moe_gate_up(ews.recv_xq, ews.recv_xs, rows, D, MOE_I,
                                    slots, &ex, &ws2, s, &err) != 0
                || kimi_moe_down(rows, MOE_K, D, MOE_I, slots, &ex, &ws2, s,
                                 &err) != 0
                || kimi_moe_combine(&ws2, ews.recv_w, rows, MOE_K, 0, D,
                                    (kimi_bf16_t *) ews.y_send, s, &err) != 0
                || kimi_ep_combine(c, &sh, T, &ews, y, s, &err) != 0)
            {
                ok(0, "rank %d: EP MoE capture: %s", rank, err.msg);
                return;
            }
            CK(cudaStreamEndCapture(s, &g));
            CK(cudaGraphInstantiate(&x2, g, 0));
            cudaGraphDestroy(g);
            pthread_barrier_wait(&barrier);
            us2 = time_graph(x2, s, MOE_ITER);
            fprintf(stderr, "rank %d: EP MoE T=%d: %.1f us (%s)\n", rank, T,
                    us2, cudaGetErrorString(cudaGetLastError()));
        }

        /* the same layer with the exchange over peer memory */
        {
            int            slots = kimi_moe_max_slots(rows, MOE_K, E_local, 0);
            p2p_t          px;
            kimi_ep_ws_t   pws;

            if (p2p_open(rank, &sh, &px) != 0) {
                ok(0, "rank %d: p2p inboxes: %s", rank,
                   cudaGetErrorString(cudaGetLastError()));
                return;
            }
            kimi_ep_inbox_carve(&pws, p2p_inbox[rank], &sh);
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            if (kimi_moe_router_select(logits, NULL, KIMI_ROUTER_NOAUX_TC, T, MOE_E, MOE_K, 1, 1,
                                       1, 2.827f, idx, w, s, &err) != 0
                || kimi_ep_p2p_dispatch(&px.p2p, &sh, T, xq, xs, idx, w, &pws,
                                        s, &err) != 0
                || cudaMemsetAsync(y, 0, (size_t) T * D * 4, s)
                   != cudaSuccess
                || kimi_moe_plan(pws.recv_idx, rows, MOE_K, E_local, 0, &ws2,
                                 s, &err) != 0
                || kimi_moe_gate_up(pws.recv_xq, pws.recv_xs, rows, D, MOE_I,
                                    slots, &ex, &ws2, s, &err) != 0
                || kimi_moe_down(rows, MOE_K, D, MOE_I, slots, &ex, &ws2, s,
                                 &err) != 0
                || kimi_moe_combine(&ws2, pws.recv_w, rows, MOE_K, 0, D,
                                    (kimi_bf16_t *) pws.y_send, s, &err) != 0
                || kimi_ep_p2p_combine(&px.p2p, &sh, T, &pws, y, s, &err) != 0)
            {
                ok(0, "rank %d: EP p2p MoE capture: %s", rank, err.msg);
                return;
            }
            CK(cudaStreamEndCapture(s, &g));
            CK(cudaGraphInstantiate(&x3, g, 0));
            cudaGraphDestroy(g);
            pthread_barrier_wait(&barrier);
            us3 = time_graph(x3, s, MOE_ITER);
            fprintf(stderr, "rank %d: EP p2p MoE T=%d: %.1f us (%s)\n", rank,
                    T, us3, cudaGetErrorString(cudaGetLastError()));
            cudaGraphExecDestroy(x3);
            p2p_close(rank, s, &px);
        }

        /* experts this rank ran under EP: those of its share that any
         * rank's tokens chose (every rank's logits are the same recipe) */
        {
            int32_t  *ridx = malloc((size_t) rows * MOE_K * 4);

            CK(cudaStreamSynchronize(s));
            CK(cudaMemcpy(ridx, ews.recv_idx, (size_t) rows * MOE_K * 4,
                          cudaMemcpyDeviceToHost));
            memset(seen, 0, sizeof(seen));
            for (i = 0; i < (size_t) rows * MOE_K; i++) {
                if (ridx[i] >= 0 && ridx[i] < MOE_E) {
                    touched2 += !seen[ridx[i]]++;
                }
            }
            free(ridx);
        }

        if (rank == 0) {
            double  eb = 3.0 * mat + 3.0 * n_sc * 4;     /* one expert */
            double  f1 = touched1 * eb / bw * 1e6, f2 = touched2 * eb / bw * 1e6;

            printf("# moe W=%d T=%d/GPU: one GPU %.1f us (%.0f experts, floor"
                   " %.1f us, x%.2f) | EP all-to-all %.1f us, EP peer memory"
                   " %.1f us (%.0f local experts, floor %.1f us, x%.2f) |"
                   " scaling efficiency %.2f / %.2f (target >= 0.8 at T >="
                   " 64) | copy bw %.0f GB/s\n", world, T, us1, touched1, f1,
                   us1 / f1, us2, us3, touched2, f2, us3 / f2, us1 / us2,
                   us1 / us3, bw / 1e9);
            fflush(stdout);
        }
        pthread_barrier_wait(&barrier);

        if (x1 != NULL) {
            cudaGraphExecDestroy(x1);
        }
        cudaGraphExecDestroy(x2);
        cudaFree(ews_b);
        cudaFree(ws1_b);
        cudaFree(ws2_b);
        cudaFree(xq); cudaFree(xs); cudaFree(logits); cudaFree(w);
        cudaFree(idx); cudaFree(y);
        free(hl); free(hidx);
    }

    ok(1, "rank %d: MoE layer bench ran", rank);
    cudaFree(pool);
    cudaFree(scales);
    cudaFree(tab_d);
    free(hbuf); free(hs); free(tab_h);
}


static void *
rank_main(void *arg)
{
    int            rank = (int) (intptr_t) arg;
    int            T[] = { 1, 16, 128 };
    unsigned       i;
    kimi_err_t     err;
    kimi_nccl_t   *c;
    cudaStream_t   s;

    if (cudaSetDevice(rank) != cudaSuccess
        || cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)
           != cudaSuccess)
    {
        ok(0, "rank %d: no device", rank);
        return NULL;
    }

    if (kimi_nccl_init(&c, blob, blob_len, (uint32_t) rank,
                       (uint32_t) world, NULL, NULL, &err) != 0)
    {
        ok(0, "rank %d: %s", rank, err.msg);
        return NULL;
    }
    ok(1, "rank %d: communicator of %d ranks (NVLS off: %s)", rank, world,
       getenv("NCCL_NVLS_ENABLE"));

    check_tp(rank, c, s);
    for (i = 0; i < sizeof(T) / sizeof(T[0]); i++) {
        pthread_barrier_wait(&barrier);
        check_ep(rank, c, s, T[i]);
    }

    /* peer access between every pair (the engine's processes get it from
     * CUDA IPC instead) */
    for (int q = 0; q < world; q++) {
        if (q != rank) {
            cudaError_t  pe = cudaDeviceEnablePeerAccess(q, 0);

            if (pe != cudaSuccess && pe != cudaErrorPeerAccessAlreadyEnabled) {
                ok(0, "rank %d: peer access to %d: %s", rank, q,
                   cudaGetErrorString(pe));
            }
            (void) cudaGetLastError();
        }
    }
    for (i = 0; i < sizeof(T) / sizeof(T[0]); i++) {
        pthread_barrier_wait(&barrier);
        check_ep_p2p(rank, c, s, T[i]);
    }
    pthread_barrier_wait(&barrier);
    bench_moe(rank, c, s);

    kimi_nccl_free(c);
    cudaStreamDestroy(s);

    return NULL;
}


int
main(void)
{
    int          i, version;
    pthread_t    th[16];
    kimi_err_t   err;

    /* a failed check leaves peers at a barrier or in a collective: the
     * whole run is bounded instead of hanging */
    alarm(400);

    /* before any thread: kimi_nccl_init then only reads it */
    setenv("NCCL_NVLS_ENABLE", "0", 1);

    if (cudaGetDeviceCount(&world) != cudaSuccess || world < 2) {
        printf("1..0 # SKIP fewer than 2 GPUs\n");
        return 0;
    }
    if (world > 16) {
        world = 16;
    }

    if (kimi_nccl_version(&version, &err) != 0
        || kimi_nccl_unique_id(blob, sizeof(blob), &blob_len, &err) != 0)
    {
        printf("not ok 1 - %s\n1..1\n", err.msg);
        return 1;
    }
    printf("# NCCL %d, %d GPUs\n", version, world);

    pthread_barrier_init(&barrier, NULL, (unsigned) world);
    for (i = 0; i < world; i++) {
        pthread_create(&th[i], NULL, rank_main, (void *) (intptr_t) i);
    }
    for (i = 0; i < world; i++) {
        pthread_join(th[i], NULL);
    }

    printf("1..%d\n", test_n);

    return test_failed ? 1 : 0;
}
