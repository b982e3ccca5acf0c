/*
 * GPU benchmarks for "kcheck bench" (see kcheck.c).
 *
 * Owns:   the floors measured in the same run (device-to-device copy
 *         bandwidth, cuBLASLt FP8 GEMM rate at M=4096) and the timings of
 *         MoE layer decode, MLA decode and dense decode GEMMs, as CUDA-graph
 *         replays (median), with every figure's ratio to its floor.
 * Never:  checks numerics (kcheck test does); data is random, never zeros.
 */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../../kernels/kimi_kernels.h"

#define CK(call)                                                              \
    do {                                                                      \
        cudaError_t e_ = (call);                                              \
        if (e_ != cudaSuccess) {                                              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,     \
                    cudaGetErrorString(e_));                                  \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

#define KK(call)                                                              \
    do {                                                                      \
        kimi_err_t err_ = {0};                                                \
        int rc_ = (call);                                                     \
        if (rc_ != KIMI_OK) {                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,     \
                    err_.msg);                                                \
            exit(1);                                                          \
        }                                                                     \
    } while (0)
#define ERR &err_

static cudaStream_t st;
static FILE *tab;              /* summary table, printed last */
static double copy_gbs;        /* read + write, GB/s */

static void *
dalloc(size_t n)
{
    void *p;
    CK(cudaMalloc(&p, n));
    return p;
}

static int
cmpd(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

typedef void (*work_fn)(void *ctx, int rep);

/* Median over `iters` replays of a graph of `reps` calls, per call, in us. */
static double
time_graph(work_fn fn, void *ctx, int reps, int iters)
{
    cudaGraph_t g;
    cudaGraphExec_t ge;
    fn(ctx, 0);                       /* warm: attributes, plans */
    CK(cudaStreamSynchronize(st));
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    for (int r = 0; r < reps; r++) {
        fn(ctx, r);
    }
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    double *t = malloc(iters * sizeof(double));
    CK(cudaGraphLaunch(ge, st));
    for (int i = 0; i < iters; i++) {
        float ms;
        CK(cudaEventRecord(a, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&ms, a, b));
        t[i] = ms * 1e3 / reps;
    }
    qsort(t, iters, sizeof(double), cmpd);
    double m = t[iters / 2];
    free(t);
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return m;
}

/* ---- floors ---------------------------------------------------------------- */

typedef struct { void *a, *b; size_t n; } copy_ctx;

static void
copy_fn(void *c, int r)
{
    copy_ctx *x = c;
    CK(cudaMemcpyAsync(x->b, x->a, x->n, cudaMemcpyDeviceToDevice, st));
}

static void
copy_kernel_fn(void *c, int r)
{
    copy_ctx *x = c;
    KK(kimi_copy_d2d(x->b, x->a, x->n, st, ERR));
}

/* The floor is the best of three ways to copy 2 GiB device to device,
 * counting bytes read + written: cudaMemcpyAsync timed with events (how
 * reference/gpu-baseline-h100.md measured 3017 GB/s), the same as a graph
 * node, and our 16-byte copy kernel.  The best keeps every ratio honest. */
static void
bench_copy(void)
{
    copy_ctx c = { dalloc(2ull << 30), dalloc(2ull << 30), 2ull << 30 };
    KK(kimi_fill_f32(c.a, c.n / 4, 7, -1, 1, st, ERR));
    double us_g = time_graph(copy_fn, &c, 2, 9);
    double us_k = time_graph(copy_kernel_fn, &c, 2, 9);
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    double t[9];
    for (int i = 0; i < 9; i++) {
        float ms;
        CK(cudaEventRecord(a, st));
        copy_fn(&c, 0);
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&ms, a, b));
        t[i] = ms * 1e3;
    }
    qsort(t, 9, sizeof(double), cmpd);
    double us = t[4] < us_g ? t[4] : us_g;
    us = us_k < us ? us_k : us;
    copy_gbs = 2.0 * c.n / (us * 1e3);
    printf("copy 2 GiB d2d: memcpy+events %.1f us (%.0f GB/s), memcpy graph %.1f us (%.0f), kernel %.1f us (%.0f) -> floor %.0f GB/s\n",
           t[4], 2.0 * c.n / (t[4] * 1e3), us_g, 2.0 * c.n / (us_g * 1e3), us_k, 2.0 * c.n / (us_k * 1e3), copy_gbs);
    fprintf(tab, "floor  D2D copy bandwidth, best of memcpy/graph/kernel, 2 GiB, read+write  %6.0f GB/s\n", copy_gbs);
    cudaFree(c.a);
    cudaFree(c.b);
}

typedef struct {
    kimi_cublaslt_t *lt;
    uint8_t *x, *w;
    float *xs, *ws;
    uint16_t *y;
    int T, N, K, own, ncopy;
    size_t wbytes;
} gemm_ctx;

static void
gemm_fn(void *c, int r)
{
    gemm_ctx *g = c;
    const uint8_t *w = g->w + (size_t) (r % g->ncopy) * g->wbytes;
    if (g->own) {
        KK(kimi_fp8_gemm_nt(g->x, g->xs, g->T, g->K, w, g->ws, g->N, g->y, g->N, st, ERR));
    } else {
        KK(kimi_fp8_gemm_nt_cublaslt(g->lt, g->x, g->xs, g->T, g->K, w, g->ws, g->N, g->y, st, ERR));
    }
}

static double fp8_peak_tflops;

static void
gemm_setup(gemm_ctx *g, kimi_cublaslt_t *lt, int T, int N, int K)
{
    memset(g, 0, sizeof(*g));
    g->lt = lt;
    g->T = T;
    g->N = N;
    g->K = K;
    g->wbytes = (size_t) N * K;
    /* enough weight copies that the 50 MB L2 cannot serve them */
    g->ncopy = (int) ((320u << 20) / g->wbytes) + 1;
    if (g->ncopy > 24) g->ncopy = 24;
    int Tp = (T + 3) / 4 * 4;
    g->x = dalloc((size_t) Tp * K);
    g->xs = dalloc((size_t) Tp * (K / 128) * 4);
    g->w = dalloc(g->wbytes * g->ncopy);
    g->ws = dalloc((size_t) ((N + 127) / 128) * (K / 128) * 4);
    g->y = dalloc((size_t) Tp * N * 2);
    KK(kimi_fill_fp8(g->x, (size_t) Tp * K, 11, st, ERR));
    KK(kimi_fill_f32(g->xs, (size_t) Tp * (K / 128), 12, 0.5f / 64, 1.5f / 64, st, ERR));
    KK(kimi_fill_fp8(g->w, g->wbytes * g->ncopy, 13, st, ERR));
    KK(kimi_fill_f32(g->ws, (size_t) ((N + 127) / 128) * (K / 128), 14, 0.5f / 64, 1.5f / 64, st, ERR));
    CK(cudaStreamSynchronize(st));    /* weights complete before a kernel reads them early */
}

static void
gemm_free(gemm_ctx *g)
{
    cudaFree(g->x); cudaFree(g->xs); cudaFree(g->w); cudaFree(g->ws); cudaFree(g->y);
}

static void
bench_peak(kimi_cublaslt_t *lt)
{
    gemm_ctx g;
    gemm_setup(&g, lt, 4096, 7168, 7168);
    g.ncopy = 1;
    kimi_err_t err = {0};
    if (kimi_fp8_gemm_nt_cublaslt(lt, g.x, g.xs, g.T, g.K, g.w, g.ws, g.N, g.y, st, &err) != KIMI_OK) {
        fp8_peak_tflops = 1979;
        printf("fp8 peak: cuBLASLt failed (%s): using the datasheet 1979 TFLOP/s\n", err.msg);
        fprintf(tab, "floor  FP8 GEMM rate: cuBLASLt failed, datasheet         1979 TFLOP/s\n");
        gemm_free(&g);
        return;
    }
    double us = time_graph(gemm_fn, &g, 10, 7);
    fp8_peak_tflops = 2.0 * 4096 * 7168 * 7168 / (us * 1e6);
    printf("fp8 peak: cuBLASLt block-scaled 4096x7168x7168 %.1f us -> %.0f TFLOP/s (datasheet 1979)\n",
           us, fp8_peak_tflops);
    fprintf(tab, "floor  FP8 GEMM rate, cuBLASLt block-scaled M=N=K~4-7K %8.0f TFLOP/s\n", fp8_peak_tflops);
    gemm_free(&g);
}

static void
bench_gemm(kimi_cublaslt_t *lt, int N, int K, const char *role)
{
    int Ts[] = {1, 4, 16, 64};
    for (int i = 0; i < 4; i++) {
        gemm_ctx g;
        gemm_setup(&g, lt, Ts[i], N, K);
        double floor_us = (double) g.wbytes / (copy_gbs * 1e3);
        g.own = 1;
        double us_own = time_graph(gemm_fn, &g, 40, 15);
        double us_lt = -1;
        kimi_err_t err = {0};
        if (Ts[i] % 4 == 0
            && kimi_fp8_gemm_nt_cublaslt(lt, g.x, g.xs, g.T, g.K, g.w, g.ws, g.N, g.y, st, &err) == KIMI_OK) {
            g.own = 0;
            us_lt = time_graph(gemm_fn, &g, 40, 15);
        }
        printf("gemm %-14s N=%5d K=%5d T=%3d: own %.1f us (%.0f%% of copy BW), cuBLASLt %s%.1f us, floor %.1f us\n",
               role, N, K, Ts[i], us_own, 100 * floor_us / us_own, us_lt < 0 ? "n/a " : "", us_lt, floor_us);
        fprintf(tab, "gemm   %-12s %5dx%-5d T=%-3d own %7.1f us  %3.0f%% copy | cuBLASLt %7.1f us | x%.2f floor\n",
                role, N, K, Ts[i], us_own, 100 * floor_us / us_own, us_lt, us_own / floor_us);
        gemm_free(&g);
    }
}

/* ---- MoE layer decode at Kimi-K2 widths ---------------------------------- */

typedef struct {
    int T, D, I, E, K;
    uint16_t *x, *out, *wr;
    float *xf;                /* fp32 copy of x for the batch router (as the engine's) */
    void *rws;
    kimi_cublaslt_t *lt;
    uint8_t *xq;
    float *xs, *logits, *bias, *tw;
    int32_t *idx;
    kimi_experts_t ex;
    kimi_moe_ws_t ws;
    int max_slots;
    int part;   /* 0 = whole layer, 1 = gate_up only, 2 = down only */
} moe_ctx;

/* x quantised (the engine's norm does it, a launch of its own), then
 * routed and planned as the engine does: one launch for 1-4 tokens
 * (KIMI_MOE_ROUTE_SPLIT=1: the three launches, for A/B) */
static void
moe_route(moe_ctx *m)
{
    KK(kimi_fp8_quant_1x128(m->x, m->D, m->T, m->D, m->xq, m->xs, NULL, 0, st, ERR));
    if (kimi_moe_route_fused_fits(KIMI_ROUTER_NOAUX_TC, m->T, m->K, m->E, 1, 1) && getenv("KIMI_MOE_ROUTE_SPLIT") == NULL) {
        KK(kimi_moe_route_fused(m->x, m->wr, m->bias, KIMI_ROUTER_NOAUX_TC, m->T, m->D, m->E, m->K, 1, 1, 1, 2.827f, 1, m->logits,
                                m->idx, m->tw, &m->ws, st, ERR));
        return;
    }
    if (m->T >= KIMI_ROUTER_LT_ROWS) {   /* as the engine routes batches */
        KK(kimi_moe_router_logits_f32_lt(m->lt, m->xf, m->wr, m->logits, m->T, m->D, m->E, m->rws, st, ERR));
    } else {
        KK(kimi_moe_router_logits(m->x, m->wr, m->logits, m->T, m->D, m->E, st, ERR));
    }
    KK(kimi_moe_router_select(m->logits, m->bias, KIMI_ROUTER_NOAUX_TC, m->T, m->E, m->K, 1, 1, 1, 2.827f, m->idx, m->tw, st, ERR));
    KK(kimi_moe_plan(m->idx, m->T, m->K, m->E, 1, &m->ws, st, ERR));
}

static void
moe_fn(void *c, int r)
{
    moe_ctx *m = c;
    if (m->part == 1) {
        KK(kimi_moe_gate_up(m->xq, m->xs, m->T, m->D, m->I, m->max_slots, &m->ex, &m->ws, st, ERR));
        return;
    }
    if (m->part == 2) {   /* down with its combine (one launch up to 16 tokens) */
        KK(kimi_moe_down_combine(m->T, m->K, 1, m->D, m->I, m->max_slots, &m->ex, &m->ws, m->tw, m->out, st, ERR));
        return;
    }
    /* the glue alone, one piece each (parts 3..7) */
    switch (m->part) {
    case 3: KK(kimi_fp8_quant_1x128(m->x, m->D, m->T, m->D, m->xq, m->xs, NULL, 0, st, ERR)); return;
    case 4:
        if (m->T >= KIMI_ROUTER_LT_ROWS) {
            KK(kimi_moe_router_logits_f32_lt(m->lt, m->xf, m->wr, m->logits, m->T, m->D, m->E, m->rws, st, ERR));
        } else {
            KK(kimi_moe_router_logits(m->x, m->wr, m->logits, m->T, m->D, m->E, st, ERR));
        }
        return;
    case 5: KK(kimi_moe_router_select(m->logits, m->bias, KIMI_ROUTER_NOAUX_TC, m->T, m->E, m->K, 1, 1, 1, 2.827f, m->idx, m->tw, st, ERR)); return;
    case 6: KK(kimi_moe_plan(m->idx, m->T, m->K, m->E, 1, &m->ws, st, ERR)); return;
    case 7: KK(kimi_moe_combine(&m->ws, m->tw, m->T, m->K, 1, m->D, m->out, st, ERR)); return;
    case 8: moe_route(m); return;
    case 9: KK(kimi_moe_down(m->T, m->K, m->D, m->I, m->max_slots, &m->ex, &m->ws, st, ERR)); return;
    case 10: KK(kimi_moe_grouped_gate_up_gemm(m->D, m->I, m->max_slots, &m->ex, &m->ws, st, ERR)); return;
    default: break;
    }
    moe_route(m);
    KK(kimi_moe_gate_up(m->xq, m->xs, m->T, m->D, m->I, m->max_slots, &m->ex, &m->ws, st, ERR));
    KK(kimi_moe_down_combine(m->T, m->K, 1, m->D, m->I, m->max_slots, &m->ex, &m->ws, m->tw, m->out, st, ERR));
}

static void
bench_moe(kimi_cublaslt_t *lt, int NE, const int *Ts, int nT)
{
    const int D = 7168, I = 2048, K = 8;
    const size_t wsz = (size_t) I * D, ssz = (size_t) (I / 128) * (D / 128);
    const size_t expert_bytes = 3 * wsz + 3 * ssz * 4;
    printf("moe: allocating %d+1 experts, %.2f GB of FP8 weights\n", NE, (NE + 1) * expert_bytes / 1e9);
    uint8_t *w = dalloc((NE + 1) * 3 * wsz);
    float *s = dalloc((NE + 1) * 3 * ssz * 4);
    KK(kimi_fill_fp8(w, (NE + 1) * 3 * wsz, 21, st, ERR));
    KK(kimi_fill_f32(s, (NE + 1) * 3 * ssz, 22, 0.5f / 1024, 1.5f / 1024, st, ERR));
    const void **tp = malloc(6 * (NE + 1) * sizeof(void *));
    for (int e = 0; e <= NE; e++) {
        for (int j = 0; j < 3; j++) {
            tp[j * (NE + 1) + e] = w + ((size_t) e * 3 + j) * wsz;
            tp[(3 + j) * (NE + 1) + e] = s + ((size_t) e * 3 + j) * ssz;
        }
    }
    void **dtp = dalloc(6 * (NE + 1) * sizeof(void *));
    CK(cudaMemcpy(dtp, tp, 6 * (NE + 1) * sizeof(void *), cudaMemcpyHostToDevice));
    kimi_experts_t ex = {
        .gate = (const uint8_t *const *) dtp, .up = (const uint8_t *const *) dtp + (NE + 1),
        .down = (const uint8_t *const *) dtp + 2 * (NE + 1),
        .gate_s = (const float *const *) (dtp + 3 * (NE + 1)),
        .up_s = (const float *const *) (dtp + 4 * (NE + 1)),
        .down_s = (const float *const *) (dtp + 5 * (NE + 1)),
    };
    void *maps = malloc(kimi_moe_tmaps_bytes(NE + 1)), *dmaps = dalloc(kimi_moe_tmaps_bytes(NE + 1));
    KK(kimi_moe_tmaps_encode(maps, (const uint8_t *const *) tp, (const uint8_t *const *) tp + (NE + 1),
                             (const uint8_t *const *) tp + 2 * (NE + 1), NE + 1, D, I, ERR));
    CK(cudaMemcpy(dmaps, maps, kimi_moe_tmaps_bytes(NE + 1), cudaMemcpyHostToDevice));
    ex.tmaps = dmaps;
    ex.n_tmaps = NE + 1;
    uint16_t *wr = dalloc((size_t) NE * D * 2);
    float *bias = dalloc(NE * 4);
    KK(kimi_fill_bf16(wr, (size_t) NE * D, 23, -0.03f, 0.03f, st, ERR));
    KK(kimi_fill_f32(bias, NE, 24, -0.01f, 0.01f, st, ERR));
    CK(cudaStreamSynchronize(st));    /* weights complete before a kernel reads them early */
    for (int i = 0; i < nT; i++) {
        moe_ctx m = { .T = Ts[i], .D = D, .I = I, .E = NE, .K = K, .ex = ex, .wr = wr, .bias = bias };
        m.x = dalloc((size_t) m.T * D * 2);
        m.out = dalloc((size_t) m.T * D * 2);
        m.xq = dalloc((size_t) m.T * D);
        m.xs = dalloc((size_t) m.T * (D / 128) * 4);
        m.logits = dalloc((size_t) m.T * NE * 4);
        m.tw = dalloc((size_t) m.T * K * 4);
        m.idx = dalloc((size_t) m.T * K * 4);
        void *wsb = dalloc(kimi_moe_ws_bytes(m.T, K, NE, 1, D, I));
        CK(cudaMemset(wsb, 0, KIMI_MOE_TICKETS * 4));
        kimi_moe_ws_carve(&m.ws, wsb, m.T, K, NE, 1, D, I);
        m.max_slots = kimi_moe_max_slots(m.T, K, NE, 1);
        KK(kimi_fill_bf16(m.x, (size_t) m.T * D, 100 + i, -2.f, 2.f, st, ERR));
        m.lt = lt;
        m.xf = dalloc((size_t) m.T * D * 4);
        m.rws = dalloc(kimi_moe_router_lt_ws_bytes(m.T, D, NE));
        KK(kimi_fill_f32(m.xf, (size_t) m.T * D, 200 + i, -2.f, 2.f, st, ERR));
        double us = time_graph(moe_fn, &m, 5, 15);
        /* distinct experts actually touched */
        int32_t *hidx = malloc((size_t) m.T * K * 4);
        CK(cudaMemcpy(hidx, m.idx, (size_t) m.T * K * 4, cudaMemcpyDeviceToHost));
        char seen[4096] = {0};
        int distinct = 0;
        for (int j = 0; j < m.T * K; j++) {
            if (!seen[hidx[j]]) { seen[hidx[j]] = 1; distinct++; }
        }
        free(hidx);
        double bytes = (distinct + 1) * (double) expert_bytes + (double) NE * D * 2 + NE * 4;
        double floor_us = bytes / (copy_gbs * 1e3);
        m.part = 1;
        double us_gu = time_graph(moe_fn, &m, 5, 15);
        m.part = 2;
        double us_dn = time_graph(moe_fn, &m, 5, 15);
        double gu_floor = (distinct + 1) * 2.0 * (wsz + ssz * 4) / (copy_gbs * 1e3);
        double dn_floor = (distinct + 1) * 1.0 * (wsz + ssz * 4) / (copy_gbs * 1e3);
        printf("moe layer decode B=%3d: %.1f us; distinct experts %d (+1 shared), %.1f MB, floor %.1f us -> x%.2f "
               "(gate_up %.1f us = x%.2f, down %.1f us = x%.2f, glue %.1f us)\n",
               m.T, us, distinct, bytes / 1e6, floor_us, us / floor_us, us_gu, us_gu / gu_floor,
               us_dn, us_dn / dn_floor, us - us_gu - us_dn);
        const double tflops = 2.0 * (m.T * K + m.T) * 3.0 * I * D / (us * 1e6);
        fprintf(tab, "moe    layer decode B=%-4d  %8.1f us  floor %7.1f us (%3d+1 experts, %6.0f MB)  x%.2f  [%s <= 1.35]  %5.0f TFLOP/s\n",
                m.T, us, floor_us, distinct, bytes / 1e6, us / floor_us, us / floor_us <= 1.35 ? "met" : "MISSED",
                tflops);
        fprintf(tab, "moe      parts B=%-3d gate_up %7.1f us (x%.2f)  down(+combine) %7.1f us (x%.2f)  glue %6.1f us\n",
                m.T, us_gu, us_gu / gu_floor, us_dn, us_dn / dn_floor, us - us_gu - us_dn);
        {
            double g[6];
            for (int p = 3; p <= 8; p++) {
                m.part = p;
                g[p - 3] = time_graph(moe_fn, &m, 3, 10);
            }
            fprintf(tab, "moe      glue B=%-4d E=%-3d quant %6.1f us, router logits %6.1f, select %6.1f, plan %6.1f, combine %6.1f; as run: route %6.1f%s\n",
                    m.T, NE, g[0], g[1], g[2], g[3], g[4], g[5],
                    kimi_moe_route_fused_fits(KIMI_ROUTER_NOAUX_TC, m.T, K, NE, 1, 1) ? " (quant + one launch), combine inside down" : "");
        }
        m.part = 0;
        if (m.T >= 256) {
            /* the GEMMs' own rate: gate_up 2 GEMMs, down 1 (its time includes
             * the re-quantisation of h) */
            const double rows = (double) m.T * K + m.T;
            const double f_gu = 2.0 * rows * 2.0 * I * D, f_dn = 2.0 * rows * I * D;
            /* the GEMMs alone too: down's combine (a memory pass over y)
             * and gate_up's gather of its token rows into plan order (a copy)
             * are not the GEMMs', and the public kernels are timed without
             * them (DeepGEMM's contiguous layout is made before its call) */
            m.part = 9;
            const double us_dg = time_graph(moe_fn, &m, 5, 15);
            /* kimi_moe_gate_up's own rule (moe.cu use_grouped): below it the
             * masked kernels run and there is no grouped GEMM to time alone */
            const int grouped = getenv("KIMI_MOE_MASKED") == NULL && m.ws.rows >= KIMI_MOE_GROUPED_ROWS * m.max_slots;
            double us_gg = us_gu;
            if (grouped) {
                m.part = 1;                 /* the list and the gathered rows again (down wrote y) */
                moe_fn(&m, 0);
                m.part = 10;
                us_gg = time_graph(moe_fn, &m, 5, 15);
            }
            m.part = 0;
            const double gu = f_gu / (us_gg * 1e6), dg = f_dn / (us_dg * 1e6);
            fprintf(tab, "moe      %s E=%-3d B=%-4d (%4.0f rows/expert): gate_up %5.0f TFLOP/s (with its gather %5.0f), "
                    "down %5.0f TFLOP/s (with its combine %5.0f) [%s >= 900 at >= 512 rows/expert]\n",
                    grouped ? "grouped" : "masked ", NE, m.T, rows / (NE + 1),
                    gu, f_gu / (us_gu * 1e6), dg, f_dn / (us_dn * 1e6), gu >= 900 && dg >= 900 ? "met" : "MISSED");
        }
        cudaFree(m.x); cudaFree(m.out); cudaFree(m.xq); cudaFree(m.xs); cudaFree(m.logits);
        cudaFree(m.tw); cudaFree(m.idx); cudaFree(wsb); cudaFree(m.xf); cudaFree(m.rws);
    }
    cudaFree(w); cudaFree(s); cudaFree(dtp); cudaFree(wr); cudaFree(bias);
    free(tp);
}

/* ---- the expert GEMMs as one cuBLASLt call per expert ----------------------
 * What a loop of dense block-scaled calls would give at prefill sizes (rows
 * an expert known on the host), on 1-4 streams so that one expert's tail
 * overlaps the next: the grouped kernel's alternative, timed beside it. */

#define LT_MAX_STREAMS 4

typedef struct {
    kimi_cublaslt_t *lt[LT_MAX_STREAMS];
    cudaStream_t side[LT_MAX_STREAMS];
    cudaEvent_t fork, join[LT_MAX_STREAMS];
    uint8_t *x, *w, *hq;
    float *xs, *ws, *hs;
    uint16_t *y, *h;
    int E, R, N, K, ns, part;     /* part: 0 GEMMs, 1 silu + quant pass */
} lt_ex_ctx;

static void
lt_ex_fn(void *c, int r)
{
    lt_ex_ctx *g = c;
    (void) r;
    if (g->part == 1) {
        const size_t n = (size_t) g->E * g->R * (g->N / 2);
        KK(kimi_silu_mul_bf16(g->y, g->y + n, g->h, n, st, ERR));
        KK(kimi_fp8_quant_1x128(g->h, g->N / 2, g->E * g->R, g->N / 2, g->hq, g->hs, NULL, 0, st, ERR));
        return;
    }
    CK(cudaEventRecord(g->fork, st));
    for (int i = 0; i < g->ns; i++) {
        CK(cudaStreamWaitEvent(g->side[i], g->fork, 0));
    }
    for (int e = 0; e < g->E; e++) {
        const int i = e % g->ns;
        KK(kimi_fp8_gemm_nt_cublaslt(g->lt[i], g->x + (size_t) e * g->R * g->K,
                                     g->xs + (size_t) e * g->R * (g->K / 128), g->R, g->K,
                                     g->w + (size_t) e * g->N * g->K,
                                     g->ws + (size_t) e * (g->N / 128) * (g->K / 128), g->N,
                                     g->y + (size_t) e * g->R * g->N, g->side[i], ERR));
    }
    for (int i = 0; i < g->ns; i++) {
        CK(cudaEventRecord(g->join[i], g->side[i]));
        CK(cudaStreamWaitEvent(st, g->join[i], 0));
    }
}

static void
bench_lt_experts(void)
{
    const int E = 33, D = 7168, I = 2048;
    const int real_rows[2] = {18432, 36864};          /* bench_moe's 32 experts at B 2048 / 4096 */
    lt_ex_ctx g;
    memset(&g, 0, sizeof(g));
    for (int i = 0; i < LT_MAX_STREAMS; i++) {
        KK(kimi_cublaslt_create(&g.lt[i], dalloc(32 << 20), 32 << 20, ERR));
        CK(cudaStreamCreateWithFlags(&g.side[i], cudaStreamNonBlocking));
        CK(cudaEventCreateWithFlags(&g.join[i], cudaEventDisableTiming));
    }
    CK(cudaEventCreateWithFlags(&g.fork, cudaEventDisableTiming));
    g.E = E;
    g.w = dalloc((size_t) E * 2 * I * D);
    g.ws = dalloc((size_t) E * (2 * I / 128) * (D / 128) * 4);
    KK(kimi_fill_fp8(g.w, (size_t) E * 2 * I * D, 61, st, ERR));
    KK(kimi_fill_f32(g.ws, (size_t) E * (2 * I / 128) * (D / 128), 62, 0.5f / 1024, 1.5f / 1024, st, ERR));
    for (int ri = 0; ri < 2; ri++) {
        const int R = (real_rows[ri] / E + 1 + 3) / 4 * 4;
        g.R = R;
        g.x = dalloc((size_t) E * R * D);
        g.xs = dalloc((size_t) E * R * (D / 128) * 4);
        g.y = dalloc((size_t) E * R * D * 2);
        g.h = dalloc((size_t) E * R * I * 2);
        g.hq = dalloc((size_t) E * R * I);
        g.hs = dalloc((size_t) E * R * (I / 128) * 4);
        KK(kimi_fill_fp8(g.x, (size_t) E * R * D, 63, st, ERR));
        KK(kimi_fill_f32(g.xs, (size_t) E * R * (D / 128), 64, 0.5f / 64, 1.5f / 64, st, ERR));
        CK(cudaStreamSynchronize(st));
        for (int pass = 0; pass < 2; pass++) {          /* gate_up, down */
            g.N = pass == 0 ? 2 * I : D;
            g.K = pass == 0 ? D : I;
            const double flop = 2.0 * real_rows[ri] * g.N * g.K;
            for (int ns = 1; ns <= LT_MAX_STREAMS; ns *= 2) {
                g.ns = ns;
                g.part = 0;
                const double us = time_graph(lt_ex_fn, &g, 3, 9);
                printf("moelt %s rows %d (%d an expert, padded %d): %d stream(s) %.1f us = %.0f TFLOP/s\n",
                       pass ? "down" : "gate_up", real_rows[ri], real_rows[ri] / E, R, ns, us, flop / (us * 1e6));
                fprintf(tab, "moelt  cuBLASLt a call an expert, %-7s %4d rows/expert, %d stream(s) %8.1f us  %5.0f TFLOP/s\n",
                        pass ? "down" : "gate_up", real_rows[ri] / E, ns, us, flop / (us * 1e6));
            }
            if (pass == 0) {
                g.part = 1;
                const double us = time_graph(lt_ex_fn, &g, 3, 9);
                fprintf(tab, "moelt  silu*up + 1x128 quant pass over gate_up's bf16 out      %8.1f us\n", us);
            }
        }
        cudaFree(g.x); cudaFree(g.xs); cudaFree(g.y); cudaFree(g.h); cudaFree(g.hq); cudaFree(g.hs);
    }
    cudaFree(g.w); cudaFree(g.ws);
}

/* ---- router logits: GEMV kernel vs tensor cores ---------------------------- */

typedef struct {
    kimi_cublaslt_t *lt;
    float *x, *logits;
    uint16_t *w;
    void *ws;
    int T, D, E, use_lt;
} router_ctx;

static void
router_fn(void *c, int r)
{
    router_ctx *m = c;
    if (m->use_lt) {
        KK(kimi_moe_router_logits_f32_lt(m->lt, m->x, m->w, m->logits, m->T, m->D, m->E, m->ws, st, ERR));
    } else {
        KK(kimi_moe_router_logits_f32(m->x, m->w, m->logits, m->T, m->D, m->E, st, ERR));
    }
}

static void
bench_router(kimi_cublaslt_t *lt)
{
    const int D = 7168, E = 384, Ts[] = {16, 64, 256, 2048};
    for (int i = 0; i < 4; i++) {
        router_ctx m = { .lt = lt, .T = Ts[i], .D = D, .E = E };
        m.x = dalloc((size_t) m.T * D * 4);
        m.logits = dalloc((size_t) m.T * E * 4);
        m.w = dalloc((size_t) E * D * 2);
        m.ws = dalloc(kimi_moe_router_lt_ws_bytes(m.T, D, E));
        KK(kimi_fill_f32(m.x, (size_t) m.T * D, 31, -2, 2, st, ERR));
        KK(kimi_fill_bf16(m.w, (size_t) E * D, 32, -0.03f, 0.03f, st, ERR));
        double us_gemv = time_graph(router_fn, &m, 5, 15);
        m.use_lt = 1;
        double us_lt = time_graph(router_fn, &m, 5, 15);
        fprintf(tab, "router logits T=%-5d E=%d D=%d (fp32 x): GEMV kernel %8.1f us, bf16 hi+lo on cuBLASLt %7.1f us (x%.1f)%s\n",
                m.T, E, D, us_gemv, us_lt, us_gemv / us_lt, m.T >= KIMI_ROUTER_LT_ROWS ? "  [engine: cuBLASLt]" : "");
        cudaFree(m.x); cudaFree(m.logits); cudaFree(m.w); cudaFree(m.ws);
    }
}

/* ---- MLA decode -------------------------------------------------------------- */

typedef struct {
    int B, H, ctx, fp8, splits, ntab;
    void *kv;
    float *kvs;
    int32_t *bt;        /* [ntab][B][ctx/64] */
    int32_t *len;
    uint16_t *q, *o;
    void *ws;
} mla_ctx;

static void
mla_fn(void *c, int r)
{
    mla_ctx *m = c;
    const int nb = m->ctx / 64;
    KK(kimi_mla_decode(m->q, m->B, m->H, m->kv, m->kvs, m->fp8, 64,
                       m->bt + (size_t) (r % m->ntab) * m->B * nb, nb, m->len, m->splits,
                       0.1308608f, m->ws, m->o, st, ERR));
}

static void
bench_mla(int n_sm)
{
    const size_t pool_tok = 1u << 20;        /* 1M tokens: 1.2 GB bf16 */
    const size_t pool_blk = pool_tok / 64;
    void *kv = dalloc(pool_tok * 576 * 2);
    void *kv8 = dalloc(pool_tok * 576);
    float *kvs = dalloc(pool_tok * 4);
    KK(kimi_fill_bf16(kv, pool_tok * 576, 31, -1.5f, 1.5f, st, ERR));
    KK(kimi_fill_fp8(kv8, pool_tok * 576, 32, st, ERR));
    KK(kimi_fill_f32(kvs, pool_tok, 33, 0.01f, 0.02f, st, ERR));
    int Bs[] = {1, 16, 64, 64}, ctxs[] = {1024, 8192};
    for (int fp8 = 0; fp8 < 2; fp8++)
    for (int ci = 0; ci < 2; ci++)
    for (int bi = 0; bi < 4; bi++) {
        /* bi 3: mixed lengths, one sequence of ctx and 63 of ctx / 16 (what
         * splits fixed per sequence by the longest leave idle) */
        const int mixed = bi == 3;
        if (mixed && ci == 0) {
            continue;
        }
        mla_ctx m = { .B = Bs[bi], .H = 64, .ctx = ctxs[ci], .fp8 = fp8 };
        const int nb = m.ctx / 64;
        size_t need = (size_t) m.B * nb;
        m.ntab = (int) (pool_blk / need);
        if (m.ntab > 16) m.ntab = 16;
        int32_t *hbt = malloc((size_t) m.ntab * need * 4);
        /* each table a disjoint random-ish set of blocks: stride permutation */
        const int seq_blocks = getenv("KBENCH_MLA_SEQ") != NULL;   /* A/B: blocks in address order */
        for (size_t i = 0; i < (size_t) m.ntab * need; i++) {
            hbt[i] = (int32_t) (seq_blocks ? i % pool_blk : (i * 2654435761u) % pool_blk);
        }
        m.bt = dalloc((size_t) m.ntab * need * 4);
        CK(cudaMemcpy(m.bt, hbt, (size_t) m.ntab * need * 4, cudaMemcpyHostToDevice));
        free(hbt);
        int32_t *hl = malloc(m.B * 4);
        long long tok = 0;
        for (int b = 0; b < m.B; b++) {
            hl[b] = mixed && b > 0 ? m.ctx / 16 : m.ctx;
            tok += hl[b];
        }
        m.len = dalloc(m.B * 4);
        CK(cudaMemcpy(m.len, hl, m.B * 4, cudaMemcpyHostToDevice));
        free(hl);
        m.q = dalloc((size_t) m.B * 64 * 576 * 2);
        m.o = dalloc((size_t) m.B * 64 * 512 * 2);
        KK(kimi_fill_bf16(m.q, (size_t) m.B * 64 * 576, 34, -1, 1, st, ERR));
        m.splits = kimi_mla_n_splits(m.B, m.ctx, n_sm);
        if (getenv("KBENCH_MLA_SPLITS") != NULL) {   /* A/B of the split policy */
            m.splits = atoi(getenv("KBENCH_MLA_SPLITS"));
        }
        m.ws = dalloc(kimi_mla_ws_bytes(m.B, 64, m.splits));
        m.kv = fp8 ? kv8 : kv;
        m.kvs = kvs;
        double us = time_graph(mla_fn, &m, 20, 15);
        double kvb = (double) tok * (fp8 ? 580 : 1152);
        double bytes = kvb + (double) m.B * 64 * (576 + 512) * 2;
        double gbs = kvb / (us * 1e3);
        printf("mla decode %s B=%2d ctx=%4d%s: %.1f us, KV %.1f MB -> %.0f GB/s = %.0f%% of copy (splits %d)\n",
               fp8 ? "fp8 " : "bf16", m.B, m.ctx, mixed ? " (1 long, 63 x 1/16)" : "", us, kvb / 1e6, gbs,
               100 * gbs / copy_gbs, m.splits);
        fprintf(tab, "mla    %s B=%-2d ctx=%-4d%s %8.1f us  KV %7.1f MB  %5.0f GB/s = %3.0f%% copy  x%.2f floor [%s]\n",
                fp8 ? "fp8 " : "bf16", m.B, m.ctx, mixed ? " mixed" : "      ", us, kvb / 1e6, gbs,
                100 * gbs / copy_gbs, us / (bytes / (copy_gbs * 1e3)),
                mixed ? "mixed lengths, no target" : 100 * gbs / copy_gbs >= 85 ? "met >= 85%" : "MISSED >= 85%");
        cudaFree(m.bt); cudaFree(m.len); cudaFree(m.q); cudaFree(m.o); cudaFree(m.ws);
    }
    cudaFree(kv); cudaFree(kv8); cudaFree(kvs);
}

/* the engine's layout (kimi_mla_prefill): q fp32, kv_b's output, the
 * latent rows' k_pe, o fp32 */
typedef struct { int T, H; float *q, *o; uint16_t *kv, *lat; } pf_ctx;

static void
pf_fn(void *c, int r)
{
    pf_ctx *p = c;
    KK(kimi_mla_prefill(p->q, p->H * 192, p->kv, p->H * 256, p->lat + 512, 576, p->T, p->T, 0,
                        p->H, 0.1308608f, p->o, p->H * 128, NULL, 0, st, ERR));
}

#ifdef KIMI_MLA_TRACE
/* A debug build's item chain of the fp8 bulk-copy kernel (mla.cu,
 * M8_EV_*): block 0's clock stamps, averaged over the items of a steady
 * stretch, relative to group 1 seeing the item land. */
int kimi_mla_trace_read(long long *dst, int n_items);

static void
mla_trace_print(mla_ctx *m)
{
    static const char *const ev[16] = {
        "g0 saw it land", "g0 issued its S", "g0 may write P'", "g0 published P'", "g0 issued its P V",
        "g0 finished its softmax", "g0 released it", "", "g1 saw it land", "g1 saw its P'",
        "g1 P V done, released", "its copy issued", "", "", "", "" };
    long long t[64][16];
    mla_fn(m, 0);   /* again: the first call paid the module load */
    CK(cudaStreamSynchronize(st));
    const int n = kimi_mla_trace_read(&t[0][0], 64);
    if (n < 24) {
        printf("mla trace: %d items read\n", n);
        return;
    }
    const int i0 = 8, i1 = n - 8;
    double period = (double) (t[i1][8] - t[i0][8]) / (i1 - i0);
    printf("mla trace (fp8 bulk-copy kernel, block 0, items %d..%d): an item every %.0f cycles\n", i0, i1 - 1,
           period);
    for (int e = 0; e < 12; e++) {
        if (ev[e][0] == 0) {
            continue;
        }
        double sum = 0;
        for (int i = i0; i < i1; i++) {
            sum += (double) (t[i][e] - t[i][8]);
        }
        printf("  %-26s %+8.0f cycles from g1 seeing the item land\n", ev[e], sum / (i1 - i0));
    }
    /* four items raw, from the first one's landing at g1: the means hide
     * which item an event belongs to when links overlap */
    printf("  raw, items 20..23 (cycles from item 20 landing at g1):\n");
    for (int e = 0; e < 12; e++) {
        if (ev[e][0] == 0) {
            continue;
        }
        printf("  %-26s", ev[e]);
        for (int i = 20; i < 24; i++) {
            printf(" %+8lld", t[i][e] - t[20][8]);
        }
        printf("\n");
    }
}
#endif

static void
bench_mla_prefill(void)
{
    int Ts[] = {1024, 4096};
    for (int i = 0; i < 2; i++) {
        pf_ctx p = { .T = Ts[i], .H = 64 };
        size_t n = (size_t) p.T * p.H;
        p.q = dalloc(n * 192 * 4);
        p.kv = dalloc(n * 256 * 2);
        p.lat = dalloc((size_t) p.T * 576 * 2);
        p.o = dalloc(n * 128 * 4);
        KK(kimi_fill_f32(p.q, n * 192, 41, -1, 1, st, ERR));
        KK(kimi_fill_bf16(p.kv, n * 256, 42, -1, 1, st, ERR));
        KK(kimi_fill_bf16(p.lat, (size_t) p.T * 576, 43, -1, 1, st, ERR));
        double us = time_graph(pf_fn, &p, 3, 7);
        /* causal: query t sees t+1 keys */
        double flops = 2.0 * p.H * (192 + 128) * ((double) p.T * (p.T + 1) / 2);
        double tf = flops / (us * 1e6);
        printf("mla prefill T=%d H=64 causal: %.1f us, %.0f TFLOP/s (bf16 dense peak 989)\n", p.T, us, tf);
        fprintf(tab, "mla    prefill T=%-4d H=64 causal %8.1f us  %5.0f TFLOP/s = %3.0f%% of 989 bf16 peak (wgmma)\n",
                p.T, us, tf, 100 * tf / 989);
        cudaFree(p.q); cudaFree(p.kv); cudaFree(p.lat); cudaFree(p.o);
    }
}

int
run_bench(int argc, char **argv)
{
    const char *tabpath = argc > 1 ? argv[1] : "bench_table.txt";
    const char *what = argc > 2 ? argv[2] : "all";
    tab = fopen(tabpath, "w");
    if (tab == NULL) {
        perror(tabpath);
        return 1;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    fprintf(tab, "device %s, %d SMs, %.0f MB L2\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);
    CK(cudaStreamCreate(&st));
    if (strcmp(what, "mlaone") == 0) {
        /* one plain MLA decode call (B=64, 8K, bf16; KBENCH_FP8=1 the fp8
         * cache) for a profiler */
        const int fp8 = getenv("KBENCH_FP8") != NULL && strcmp(getenv("KBENCH_FP8"), "1") == 0;
        mla_ctx m = { .B = 64, .H = 64, .ctx = 8192, .fp8 = fp8, .ntab = 1 };
        const int nb = m.ctx / 64;
        m.kv = dalloc((size_t) m.B * m.ctx * 576 * (fp8 ? 1 : 2));
        if (fp8) {
            m.kvs = dalloc((size_t) m.B * m.ctx * 4);
            KK(kimi_fill_fp8(m.kv, (size_t) m.B * m.ctx * 576, 32, st, ERR));
            KK(kimi_fill_f32(m.kvs, (size_t) m.B * m.ctx, 33, 0.01f, 0.02f, st, ERR));
        } else {
            KK(kimi_fill_bf16(m.kv, (size_t) m.B * m.ctx * 576, 31, -1.5f, 1.5f, st, ERR));
        }
        int32_t *hbt = malloc((size_t) m.B * nb * 4), *hl = malloc(m.B * 4);
        for (int i = 0; i < m.B * nb; i++) hbt[i] = (int32_t) (((size_t) i * 2654435761u) % (m.B * nb));
        for (int b = 0; b < m.B; b++) hl[b] = m.ctx;
        m.bt = dalloc((size_t) m.B * nb * 4);
        m.len = dalloc(m.B * 4);
        CK(cudaMemcpy(m.bt, hbt, (size_t) m.B * nb * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(m.len, hl, m.B * 4, cudaMemcpyHostToDevice));
        m.q = dalloc((size_t) m.B * 64 * 576 * 2);
        m.o = dalloc((size_t) m.B * 64 * 512 * 2);
        KK(kimi_fill_bf16(m.q, (size_t) m.B * 64 * 576, 34, -1, 1, st, ERR));
        m.splits = kimi_mla_n_splits(m.B, m.ctx, prop.multiProcessorCount);
        m.ws = dalloc(kimi_mla_ws_bytes(m.B, 64, m.splits));
        mla_fn(&m, 0);
        CK(cudaStreamSynchronize(st));
        printf("mlaone done (splits %d)\n", m.splits);
#ifdef KIMI_MLA_TRACE
        mla_trace_print(&m);
#endif
        fclose(tab);
        return 0;
    }
    void *ltws = dalloc(64 << 20);
    kimi_cublaslt_t *lt;
    KK(kimi_cublaslt_create(&lt, ltws, 64 << 20, ERR));
    bench_copy();
    bench_peak(lt);
    if (strstr(what, "all") || strstr(what, "router")) {
        bench_router(lt);
    }
    if (strstr(what, "moed")) {        /* "moed": decode sizes only */
        const int td[] = {1, 2, 4, 8, 16, 64};
        bench_moe(lt, 384, td, 6);
    } else if (strstr(what, "all") || strstr(what, "moe")) {
        /* 2048: a prefill-sized batch (~48 tokens per expert) */
        const int ts[] = {1, 16, 64, 256, 2048}, tg[] = {2048, 4096};
        if (!strstr(what, "moeg")) {   /* "moeg": the grouped GEMM sizes only */
            bench_moe(lt, 384, ts, 5);
        }
        /* 32 experts: 512 and 1024 rows per expert, the grouped GEMM target's size */
        bench_moe(lt, 32, tg, 2);
    }
    if (strstr(what, "moelt")) {        /* "moelt": expert GEMMs as cuBLASLt calls */
        bench_lt_experts();
    }
    if (strstr(what, "prefill")) {      /* "prefill": MLA prefill alone */
        bench_mla_prefill();
    }
    if (strstr(what, "all") || strstr(what, "mla")) {
        bench_mla(prop.multiProcessorCount);
        bench_mla_prefill();
    }
    if (strstr(what, "all") || strstr(what, "gemm")) {
        bench_gemm(lt, 4096, 7168, "expert gate+up");
        bench_gemm(lt, 7168, 2048, "expert down");
        bench_gemm(lt, 2112, 7168, "q_a+kv_a");
        bench_gemm(lt, 7168, 8192, "o_proj");
    }
    kimi_cublaslt_destroy(lt);
    fclose(tab);
    return 0;
}
