/*
 * Dense FP8 block-scaled GEMM: our decode-size kernel and cuBLASLt for
 * prefill sizes.
 *
 *   Y[T,N] = sum_kb (Xq[T,kb] . Wq[N,kb]) * xs[T,kb] * ws[N/128,kb]     (fp32 acc)
 *
 * Layout:  Xq e4m3 [T][K], xs fp32 token-major [T][K/128] (own kernel) or
 *          MN-major [K/128][T] (cuBLASLt VEC128); W e4m3 [N][K] with the
 *          checkpoint's weight_scale_inv [N/128][K/128] (BLK128x128: usable
 *          as stored since every Kimi-K2 K/128 is a multiple of 4); Y bf16.
 * Cost:    2*T*N*K FLOPs; N*K weight bytes.  Decode (T <= 32) is bound by the
 *          weight stream: floor = N*K / copy bandwidth.  The own kernel gives
 *          each warp 32 weight rows x all K (fp8_tile.cuh), so a matrix costs
 *          one pass over its bytes and no per-call 10 us floor like cuBLASLt's
 *          (reference/gpu-anchors.md 1.5).  Prefill goes to cuBLASLt
 *          (1.0-1.2 PFLOP/s measured), which needs T % 4 == 0 and never T = 1
 *          with X as cuBLAS A (silently wrong): we always pass W as A.
 * Twin:    kimi_gemm_fp8a_fp8w() in engine/backend/cpu/ops.h.
 */

#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "fp8_ring.cuh"
#include "kimi_kernels.h"

/* A block is GEMM_KS warps on the same 32 weight rows, each over 1/GEMM_KS
 * of K (split-K inside the block, summed through shared memory): one 32-row
 * tile per warp would leave a 4096x7168 matrix with 128 warps, far too few
 * to keep HBM busy. */
#define GEMM_KS 8

template <int NG, typename Y>
static __global__ void __launch_bounds__(GEMM_KS * 32)
gemm_nt_kernel(const uint8_t *__restrict__ xq,   // [T, K]
               const float *__restrict__ xs,     // [T, K/128]
               int T, int K,
               const uint8_t *__restrict__ w,    // [N, K]
               const float *__restrict__ ws,     // [N/128, K/128]
               int N, Y *__restrict__ y, int ldy)   // [T, ldy]
{
    KIMI_GRID_ENTRY();
    __shared__ float red[GEMM_KS - 1][2 * NG * 4][32];   // partials of warps 1..KS-1
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * 32;
    const int tok0 = blockIdx.y * 8 * NG;
    const int KB = K / 128;
    const int kb0 = warp * KB / GEMM_KS, kb1 = (warp + 1) * KB / GEMM_KS;
    const uint8_t *wa = w + (size_t) (n0 + g) * K, *wb = w + (size_t) (n0 + 16 + g) * K;
    const uint8_t *xrow[NG];
    const float   *xs0[NG], *xs1[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) {
        /* columns past T read a valid row and are never stored */
        xrow[j] = xq + (size_t) min(tok0 + j * 8 + g, T - 1) * K;
        xs0[j] = xs + (size_t) min(tok0 + j * 8 + 2 * t, T - 1) * KB;
        xs1[j] = xs + (size_t) min(tok0 + j * 8 + 2 * t + 1, T - 1) * KB;
    }
    const int ngroups = min(NG, (T - tok0 + 7) / 8);
    float acc[2][NG][4];
    fp8_tile<NG>(wa, wb, ws + (size_t) (n0 / 128) * KB, ws + (size_t) ((n0 + 16) / 128) * KB,
                 (size_t) K, xrow, xs0, xs1, ngroups, acc, kb0, kb1);
    if (warp > 0) {
        tile_acc_put<NG>(red[warp - 1], acc, lane);
    }
    __syncthreads();
    if (warp != 0) {
        return;
    }
    for (int q = 0; q < GEMM_KS - 1; q++) {
        tile_acc_add<NG>(acc, red[q], lane);
    }
#pragma unroll
    for (int s = 0; s < 2; s++) {
#pragma unroll
        for (int j = 0; j < NG; j++) {
            const int r = n0 + s * 16 + g, c = tok0 + j * 8 + 2 * t;
            if (c < T) {
                kimi_stf(&y[(size_t) c * ldy + r], acc[s][j][0]);
                kimi_stf(&y[(size_t) c * ldy + r + 8], acc[s][j][2]);
            }
            if (c + 1 < T) {
                kimi_stf(&y[(size_t) (c + 1) * ldy + r], acc[s][j][1]);
                kimi_stf(&y[(size_t) (c + 1) * ldy + r + 8], acc[s][j][3]);
            }
        }
    }
}

/* ---- batch 1..16: weights through the shared-memory ring (fp8_ring.cuh) -- */

#define GV_MAX_T 16

/* Two matrices of the same input may share a launch (q_a and kv_a): row
 * tiles below N1/32 are W1's, the rest W2's, each written to its own Y. */
struct gv_mat {
    const uint8_t *w;      /* [N, K] */
    const float   *ws;     /* [N/128, K/128] */
    int            n;      /* rows, a multiple of 32 */
    void          *y;      /* [T, ldy] */
    int            ldy;
};

template <int NG, typename Y>
static __global__ void __launch_bounds__(RING_THREADS)
gemv_kernel(const uint8_t *__restrict__ xq,   // [T, K]
            const float *__restrict__ xs,     // [T, K/128]
            int T, int K, gv_mat m1, gv_mat m2)
{
    /* the grid wait is in ring_tile: its consumers wait, its producer need not */
    extern __shared__ __align__(128) uint8_t ring_smem[];
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int n0 = (blockIdx.x / (int) cooperative_groups::this_cluster().num_blocks()) * RING_ROWS;
    const gv_mat m = n0 < m1.n ? m1 : m2;
    n0 = n0 < m1.n ? n0 : n0 - m1.n;
    Y *y = (Y *) m.y;
    const int KB = K / 128;
    const uint8_t *xrow[NG];
    const float   *xs0[NG], *xs1[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) {
        /* columns past T read a valid row and are never stored */
        xrow[j] = xq + (size_t) min(j * 8 + g, T - 1) * K;
        xs0[j] = xs + (size_t) min(j * 8 + 2 * t, T - 1) * KB;
        xs1[j] = xs + (size_t) min(j * 8 + 2 * t + 1, T - 1) * KB;
    }
    const float *wsrow = m.ws + (size_t) (n0 / 128) * KB;   /* both 16-row sets */
    float acc[2][NG][4];

    if (!ring_tile<NG>(ring_smem, m.w + (size_t) (n0 + lane) * K, wsrow, wsrow, KB,
                       xrow, xs0, xs1, min(NG, (T + 7) / 8), acc)) {
        return;
    }
#pragma unroll
    for (int s = 0; s < 2; s++) {
#pragma unroll
        for (int j = 0; j < NG; j++) {
            const int r = n0 + s * 16 + g, c = j * 8 + 2 * t;
            if (c < T) {
                kimi_stf(&y[(size_t) c * m.ldy + r], acc[s][j][0]);
                kimi_stf(&y[(size_t) c * m.ldy + r + 8], acc[s][j][2]);
            }
            if (c + 1 < T) {
                kimi_stf(&y[(size_t) (c + 1) * m.ldy + r], acc[s][j][1]);
                kimi_stf(&y[(size_t) (c + 1) * m.ldy + r + 8], acc[s][j][3]);
            }
        }
    }
}

template <int NG, typename Y>
static int
gv_launch(const uint8_t *xq, const float *xs, int T, int K, gv_mat m1, gv_mat m2,
          cudaStream_t s, kimi_err_t *err)
{
    static int slots;
    return ring_launch(gemv_kernel<NG, Y>, &slots, (m1.n + m2.n) / RING_ROWS, K / 128, 1, s,
                       err, xq, xs, T, K, m1, m2);
}

/* KIMI_GEMM_V2=1: batch 1..16 on gemm_nt_kernel too (benchmarks, A/B) */
static int
gv_disabled(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("KIMI_GEMM_V2");
        v = e != NULL && e[0] == '1';
    }
    return v;
}

template <typename Y>
static int
gemm_nt_launch(const uint8_t *xq, const float *xs, int T, int K,
                 const uint8_t *w, const float *ws, int N, Y *y,
                 int ldy, cudaStream_t s, kimi_err_t *err)
{
    if (xq == NULL || xs == NULL || w == NULL || ws == NULL || y == NULL
        || T < 0 || K <= 0 || K % 128 != 0 || N <= 0 || N % 32 != 0 || ldy < N) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "fp8_gemm_nt: T=%d N=%d K=%d ldy=%d (need K %% 128, N %% 32)",
                            T, N, K, ldy);
    }
    if (((uintptr_t) xq | (uintptr_t) w) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "fp8_gemm_nt: xq or w not 16-byte aligned");
    }
    if (T == 0) {
        return KIMI_OK;
    }
    if (T <= GV_MAX_T && !gv_disabled()) {
        const gv_mat m1 = { w, ws, N, y, ldy }, none = { NULL, NULL, 0, NULL, 0 };
        return T <= 8 ? gv_launch<1, Y>(xq, xs, T, K, m1, none, s, err)
                      : gv_launch<2, Y>(xq, xs, T, K, m1, none, s, err);
    }
    dim3 grid(N / 32, 1);
    if (T <= 8) {
        KIMI_LAUNCH(err, gemm_nt_kernel<1, Y>, grid, GEMM_KS * 32, 0, s,
                    xq, xs, T, K, w, ws, N, y, ldy);
    } else if (T <= 16) {
        KIMI_LAUNCH(err, gemm_nt_kernel<2, Y>, grid, GEMM_KS * 32, 0, s,
                    xq, xs, T, K, w, ws, N, y, ldy);
    } else {
        grid.y = (T + 31) / 32;
        KIMI_LAUNCH(err, gemm_nt_kernel<4, Y>, grid, GEMM_KS * 32, 0, s,
                    xq, xs, T, K, w, ws, N, y, ldy);
    }
    return KIMI_OK;
}

extern "C" int
kimi_fp8_gemm_nt(const uint8_t *xq, const float *xs, int T, int K,
                 const uint8_t *w, const float *ws, int N, kimi_bf16_t *y,
                 int ldy, cudaStream_t s, kimi_err_t *err)
{
    return gemm_nt_launch(xq, xs, T, K, w, ws, N, y, ldy, s, err);
}

extern "C" int
kimi_fp8_gemm_nt_f32(const uint8_t *xq, const float *xs, int T, int K,
                     const uint8_t *w, const float *ws, int N, float *y,
                     int ldy, cudaStream_t s, kimi_err_t *err)
{
    return gemm_nt_launch(xq, xs, T, K, w, ws, N, y, ldy, s, err);
}

extern "C" int
kimi_fp8_gemm_nt2_f32(const uint8_t *xq, const float *xs, int T, int K,
                      const uint8_t *w1, const float *ws1, int N1, float *y1,
                      const uint8_t *w2, const float *ws2, int N2, float *y2,
                      cudaStream_t s, kimi_err_t *err)
{
    if (T > GV_MAX_T || gv_disabled()) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "fp8_gemm_nt2: T=%d above %d", T, GV_MAX_T);
    }
    if (xq == NULL || xs == NULL || w1 == NULL || ws1 == NULL || y1 == NULL || w2 == NULL
        || ws2 == NULL || y2 == NULL || T < 0 || K <= 0 || K % 128 != 0
        || N1 <= 0 || N1 % 32 != 0 || N2 <= 0 || N2 % 32 != 0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "fp8_gemm_nt2: T=%d N1=%d N2=%d K=%d (need K %% 128, N %% 32)",
                            T, N1, N2, K);
    }
    if (((uintptr_t) xq | (uintptr_t) w1 | (uintptr_t) w2) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "fp8_gemm_nt2: xq or w not 16-byte aligned");
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const gv_mat m1 = { w1, ws1, N1, y1, N1 }, m2 = { w2, ws2, N2, y2, N2 };
    return T <= 8 ? gv_launch<1, float>(xq, xs, T, K, m1, m2, s, err)
                  : gv_launch<2, float>(xq, xs, T, K, m1, m2, s, err);
}

/* ---- cuBLASLt ----------------------------------------------------------- */

#define LT_CACHE 32
#define LT_FP8      0                /* e4m3 x e4m3 -> bf16 */
#define LT_BF16     1                /* bf16 x bf16 -> fp32 */
#define LT_FP8_F32  2                /* e4m3 x e4m3 -> fp32 */
#define LT_BF16_BF16 3               /* bf16 x bf16 -> bf16 */

typedef struct {
    int                      kind;             /* LT_* */
    int                      T, K, N;
    cublasLtMatmulDesc_t     op;
    cublasLtMatrixLayout_t   a, b, d;
    cublasLtMatmulAlgo_t     algo;
} lt_plan_t;

struct kimi_cublaslt {
    cublasLtHandle_t  lt;
    void             *ws;
    size_t            ws_bytes;
    lt_plan_t         plan[LT_CACHE];
    int               n_plan;
    int               evict;              /* next slot reused when full */
};

#define KIMI_LT_TRY(call, err)                                                \
    do {                                                                      \
        cublasStatus_t st_ = (call);                                          \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                   \
            return kimi_err_set(err, KIMI_ECUDA, "%s:%d: %s: cublas status %d", \
                                __FILE__, __LINE__, #call, (int) st_);        \
        }                                                                     \
    } while (0)

static void
lt_plan_destroy(lt_plan_t *p)
{
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->d);
    cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof(*p));
}

extern "C" int
kimi_cublaslt_create(kimi_cublaslt_t **out, void *workspace,
                     size_t workspace_bytes, kimi_err_t *err)
{
    kimi_cublaslt_t *h = (kimi_cublaslt_t *) calloc(1, sizeof(*h));
    if (h == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "cublaslt: calloc");
    }
    cublasStatus_t st = cublasLtCreate(&h->lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        free(h);
        return kimi_err_set(err, KIMI_ECUDA, "cublasLtCreate: status %d", (int) st);
    }
    h->ws = workspace;
    h->ws_bytes = workspace_bytes;
    *out = h;
    return KIMI_OK;
}

extern "C" void
kimi_cublaslt_destroy(kimi_cublaslt_t *h)
{
    if (h == NULL) {
        return;
    }
    for (int i = 0; i < h->n_plan; i++) {
        lt_plan_destroy(&h->plan[i]);
    }
    cublasLtDestroy(h->lt);
    free(h);
}

/* A slot for a new shape: the next free one, else the oldest plan's (row
 * counts vary step to step; a captured graph keeps its kernels' arguments,
 * not the plan). */
static lt_plan_t *
lt_plan_slot(kimi_cublaslt_t *h)
{
    if (h->n_plan < LT_CACHE) {
        lt_plan_t *p = &h->plan[h->n_plan];
        memset(p, 0, sizeof(*p));
        return p;
    }
    lt_plan_t *p = &h->plan[h->evict];
    h->evict = (h->evict + 1) % LT_CACHE;
    lt_plan_destroy(p);
    h->n_plan--;
    /* keep plan[0, n_plan) dense: the freed slot takes the last one */
    if (p != &h->plan[h->n_plan]) {
        *p = h->plan[h->n_plan];
        memset(&h->plan[h->n_plan], 0, sizeof(*p));
    }
    return &h->plan[h->n_plan];
}

/* One plan per (kind, T, K, N).  FP8 kinds: the block-scale pointers must
 * be set before the heuristic is asked (without them it answers
 * CUBLAS_STATUS_INVALID_VALUE, seen on cuBLASLt 13.1).  A = W [N][K]
 * (transposed), B = X [T][K], D = Y [T][N]: column-major views of the
 * row-major arrays. */
static int
lt_plan_get(kimi_cublaslt_t *h, int kind, int T, int K, int N, const void *ws,
            const void *xs, lt_plan_t **out, kimi_err_t *err)
{
    for (int i = 0; i < h->n_plan; i++) {
        if (h->plan[i].kind == kind && h->plan[i].T == T && h->plan[i].K == K
            && h->plan[i].N == N) {
            *out = &h->plan[i];
            return KIMI_OK;
        }
    }
    const int fp8 = kind == LT_FP8 || kind == LT_FP8_F32;
    const cudaDataType_t ab = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    const cudaDataType_t dt = kind == LT_FP8 || kind == LT_BF16_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    lt_plan_t *p = lt_plan_slot(h);
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    KIMI_LT_TRY(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), err);
    KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), err);
    KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), err);
    if (fp8) {
        int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
        int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)), err);
        KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)), err);
        KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof(ws)), err);
        KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof(xs)), err);
    }
    KIMI_LT_TRY(cublasLtMatrixLayoutCreate(&p->a, ab, K, N, K), err);
    KIMI_LT_TRY(cublasLtMatrixLayoutCreate(&p->b, ab, K, T, K), err);
    KIMI_LT_TRY(cublasLtMatrixLayoutCreate(&p->d, dt, N, T, N), err);

    cublasLtMatmulPreference_t pref;
    KIMI_LT_TRY(cublasLtMatmulPreferenceCreate(&pref), err);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                         &h->ws_bytes, sizeof(h->ws_bytes));
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h->lt, p->op, p->a, p->b, p->d, p->d,
                                                       pref, 1, &res, &n);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || n == 0) {
        lt_plan_destroy(p);
        return kimi_err_set(err, KIMI_EUNSUPPORTED,
                            "cublaslt: no %s algorithm for T=%d N=%d K=%d (status %d)",
                            !fp8 ? "bf16" : kind == LT_FP8_F32
                            ? "block-scaled FP8 (fp32 out)" : "block-scaled FP8",
                            T, N, K, (int) st);
    }
    p->algo = res.algo;
    p->kind = kind;
    p->T = T;
    p->K = K;
    p->N = N;
    h->n_plan++;
    *out = p;
    return KIMI_OK;
}

static int
fp8_lt_launch(kimi_cublaslt_t *h, int kind, const uint8_t *xq, const float *xs_mn, int T,
              int K, const uint8_t *w, const float *ws, int N, void *y, cudaStream_t s,
              kimi_err_t *err)
{
    if (h == NULL || xq == NULL || xs_mn == NULL || w == NULL || ws == NULL || y == NULL
        || T <= 0 || T % 4 != 0 || K % 128 != 0 || (K / 128) % 4 != 0 || N % 4 != 0 || N <= 0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "fp8_gemm_nt_cublaslt: T=%d N=%d K=%d (T %% 4, K %% 512, N %% 4)",
                            T, N, K);
    }
    lt_plan_t *p = NULL;
    int rc = lt_plan_get(h, kind, T, K, N, ws, xs_mn, &p, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof(ws)), err);
    KIMI_LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs_mn, sizeof(xs_mn)), err);
    const float alpha = 1.f, beta = 0.f;
    KIMI_LT_TRY(cublasLtMatmul(h->lt, p->op, &alpha, w, p->a, xq, p->b, &beta, y, p->d, y, p->d,
                               &p->algo, h->ws, h->ws_bytes, s), err);
    return KIMI_OK;
}

extern "C" int
kimi_fp8_gemm_nt_cublaslt(kimi_cublaslt_t *h, const uint8_t *xq,
                          const float *xs_mn, int T, int K, const uint8_t *w,
                          const float *ws, int N, kimi_bf16_t *y,
                          cudaStream_t s, kimi_err_t *err)
{
    return fp8_lt_launch(h, LT_FP8, xq, xs_mn, T, K, w, ws, N, y, s, err);
}

extern "C" int
kimi_fp8_gemm_nt_f32_cublaslt(kimi_cublaslt_t *h, const uint8_t *xq,
                              const float *xs_mn, int T, int K, const uint8_t *w,
                              const float *ws, int N, float *y, cudaStream_t s,
                              kimi_err_t *err)
{
    return fp8_lt_launch(h, LT_FP8_F32, xq, xs_mn, T, K, w, ws, N, y, s, err);
}

static int
bf16_lt_launch(kimi_cublaslt_t *h, int kind, const kimi_bf16_t *x, int T, int K,
               const kimi_bf16_t *w, int N, void *y, cudaStream_t s, kimi_err_t *err)
{
    if (h == NULL || x == NULL || w == NULL || y == NULL || T <= 0 || K <= 0 || K % 8 != 0
        || N <= 0 || N % 4 != 0 || (((uintptr_t) x | (uintptr_t) w | (uintptr_t) y) & 15)) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "bf16_gemm_nt_cublaslt: T=%d N=%d K=%d (K %% 8, N %% 4, 16-byte aligned)",
                            T, N, K);
    }
    lt_plan_t *p = NULL;
    int rc = lt_plan_get(h, kind, T, K, N, NULL, NULL, &p, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    const float alpha = 1.f, beta = 0.f;
    KIMI_LT_TRY(cublasLtMatmul(h->lt, p->op, &alpha, w, p->a, x, p->b, &beta, y, p->d, y, p->d,
                               &p->algo, h->ws, h->ws_bytes, s), err);
    return KIMI_OK;
}

extern "C" int
kimi_bf16_gemm_nt_f32_cublaslt(kimi_cublaslt_t *h, const kimi_bf16_t *x, int T, int K,
                               const kimi_bf16_t *w, int N, float *y, cudaStream_t s,
                               kimi_err_t *err)
{
    return bf16_lt_launch(h, LT_BF16, x, T, K, w, N, y, s, err);
}

extern "C" int
kimi_bf16_gemm_nt_cublaslt(kimi_cublaslt_t *h, const kimi_bf16_t *x, int T, int K,
                           const kimi_bf16_t *w, int N, kimi_bf16_t *y, cudaStream_t s,
                           kimi_err_t *err)
{
    return bf16_lt_launch(h, LT_BF16_BF16, x, T, K, w, N, y, s, err);
}
