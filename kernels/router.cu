/*
 * MoE router: logits GEMV (bf16 weight) and the sigmoid/bias top-k selection.
 *
 *   logits[t,e] = sum_d x[t,d] * Wg[e,d]                      (fp32 acc)
 *   s = sigmoid(logits); sel = s + bias
 *   groups (n_group of E/n_group): score = sum of the group's 2 best sel;
 *     keep the topk_group best groups (ties: lower group)
 *   idx[t,0..k) = the k best sel among kept experts, descending, ties lower id
 *   w[t,j] = s[idx_j] / (sum_j s[idx_j] + 1e-20) (if norm) * scale
 *
 * Layout:  x bf16 [T][D], Wg bf16 [E][D] (5.5 MB for Kimi-K2), logits fp32
 *          [T][E], bias fp32 [E], idx int32 / w fp32 [T][k].
 * Cost:    logits: E*D*2 weight bytes (floor 1.8 us at 3 TB/s) + 2*T*E*D
 *          FLOPs; a block owns one expert row and 8 tokens, so weights are
 *          streamed once per 8 tokens (L2 serves the repeats).  select: one
 *          warp per token, E*k comparisons, negligible.
 *          From KIMI_ROUTER_LT_ROWS tokens the logits run on cuBLASLt's bf16
 *          tensor cores instead, x split in two bf16 halves (fp32-accurate;
 *          the GEMV kernels re-read x per expert: 2 ms at 2048 tokens x 384
 *          experts on an H200).
 * Twin:    kimi_gemm_f32_bf16w() and kimi_moe_route() in engine/backend/cpu/ops.h.
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"
#include "tma.cuh"

#define ROUTER_TOK 8
#define ROUTER_WARPS 4

/* Block: one expert row, ROUTER_TOK tokens; the 4 warps split D and sum
 * through shared memory, so each warp has all of its loads in flight at once
 * (a warp walking a whole 14 KB row alone is latency bound). */
template <typename X>
static __global__ void __launch_bounds__(ROUTER_WARPS * 32)
router_logits_kernel(const X *__restrict__ x,          // [T, D]
                     const uint16_t *__restrict__ w,   // [E, D]
                     float *__restrict__ logits,       // [T, E]
                     int T, int D, int E)
{
    __shared__ float part[ROUTER_WARPS][ROUTER_TOK];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int e = blockIdx.x % E, tok0 = (blockIdx.x / E) * ROUTER_TOK;
    const int chunk = D / ROUTER_WARPS;              /* D % 1024 == 0 */
    if (lane == 0) {                                 /* the gate row, before the wait */
        kimi_bulk_prefetch_l2(w + (size_t) e * D + warp * chunk, chunk * 2);
    }
    KIMI_GRID_ENTRY();
    const int nt = min(ROUTER_TOK, T - tok0);
    float acc[ROUTER_TOK];
#pragma unroll
    for (int j = 0; j < ROUTER_TOK; j++) acc[j] = 0.f;
    const uint16_t *wr = w + (size_t) e * D + warp * chunk;
    const X *xr = x + (size_t) tok0 * D + warp * chunk;
#pragma unroll 8
    for (int d = lane * 8; d < chunk; d += 256) {
        const uint4 wv = kimi_ld_stream(wr + d);
        const uint16_t *pw = (const uint16_t *) &wv;
        float wf[8];
#pragma unroll
        for (int i = 0; i < 8; i++) wf[i] = kimi_bf2f(pw[i]);
#pragma unroll
        for (int j = 0; j < ROUTER_TOK; j++) {
            if (j < nt) {
                float xf[8];
                kimi_ld8(xr + (size_t) j * D + d, xf);
#pragma unroll
                for (int i = 0; i < 8; i++) acc[j] += xf[i] * wf[i];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < ROUTER_TOK; j++) {
        float v = kimi_warp_sum(acc[j]);
        if (lane == 0) {
            part[warp][j] = v;
        }
    }
    __syncthreads();
    if (threadIdx.x < nt) {
        float v = 0.f;
#pragma unroll
        for (int q = 0; q < ROUTER_WARPS; q++) v += part[q][threadIdx.x];
        logits[(size_t) (tok0 + threadIdx.x) * E + e] = v;
    }
}

/* fp32 x (the engine's router and lm_head): a block owns ROUTER_ROWS rows,
 * so each x vector loaded from L1 feeds ROUTER_ROWS weight vectors (one row
 * per block read 2x the weight bytes of fp32 x from L1 on lm_head's
 * 163840 rows and was L1-bound, 2.5x slower than the bf16 form). */
#define ROUTER_ROWS 4

static __global__ void __launch_bounds__(ROUTER_WARPS * 32)
router_logits_rows_kernel(const float *__restrict__ x,      // [T, D]
                          const uint16_t *__restrict__ w,   // [E, D]
                          float *__restrict__ logits,       // [T, E]
                          int T, int D, int E)
{
    __shared__ float part[ROUTER_WARPS][ROUTER_ROWS][ROUTER_TOK];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nrb = E / ROUTER_ROWS;
    const int e0 = (blockIdx.x % nrb) * ROUTER_ROWS, tok0 = (blockIdx.x / nrb) * ROUTER_TOK;
    const int chunk = D / ROUTER_WARPS;              /* D % 1024 == 0 */
    if (lane < ROUTER_ROWS) {                        /* the rows, before the wait */
        kimi_bulk_prefetch_l2(w + (size_t) (e0 + lane) * D + warp * chunk, chunk * 2);
    }
    KIMI_GRID_ENTRY();
    const int nt = min(ROUTER_TOK, T - tok0);
    float acc[ROUTER_ROWS][ROUTER_TOK];
#pragma unroll
    for (int r = 0; r < ROUTER_ROWS; r++)
#pragma unroll
        for (int j = 0; j < ROUTER_TOK; j++) acc[r][j] = 0.f;
    const uint16_t *wr = w + (size_t) e0 * D + warp * chunk;
    const float *xr = x + (size_t) tok0 * D + warp * chunk;
#pragma unroll 2
    for (int d = lane * 8; d < chunk; d += 256) {
        float wf[ROUTER_ROWS][8];
#pragma unroll
        for (int r = 0; r < ROUTER_ROWS; r++) {
            const uint4 wv = kimi_ld_stream(wr + (size_t) r * D + d);
            const uint16_t *pw = (const uint16_t *) &wv;
#pragma unroll
            for (int i = 0; i < 8; i++) wf[r][i] = kimi_bf2f(pw[i]);
        }
#pragma unroll
        for (int j = 0; j < ROUTER_TOK; j++) {
            if (j < nt) {
                float xf[8];
                kimi_ld8(xr + (size_t) j * D + d, xf);
#pragma unroll
                for (int r = 0; r < ROUTER_ROWS; r++)
#pragma unroll
                    for (int i = 0; i < 8; i++) acc[r][j] += xf[i] * wf[r][i];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROUTER_ROWS; r++)
#pragma unroll
        for (int j = 0; j < ROUTER_TOK; j++) {
            float v = kimi_warp_sum(acc[r][j]);
            if (lane == 0) {
                part[warp][r][j] = v;
            }
        }
    __syncthreads();
    if (threadIdx.x < ROUTER_ROWS * nt) {
        const int r = threadIdx.x / nt, j = threadIdx.x % nt;
        float v = 0.f;
#pragma unroll
        for (int q = 0; q < ROUTER_WARPS; q++) v += part[q][r][j];
        logits[(size_t) (tok0 + j) * E + e0 + r] = v;
    }
}

template <typename X>
static int
router_logits_launch(const X *x, const kimi_bf16_t *w, float *logits,
                       int T, int D, int E, cudaStream_t s, kimi_err_t *err)
{
    if (x == NULL || w == NULL || logits == NULL || T < 0 || D <= 0 || D % 1024 != 0 || E <= 0) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: T=%d D=%d E=%d (D %% 1024)", T, D, E);
    }
    if (((uintptr_t) x | (uintptr_t) w) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: x or w not 16-byte aligned");
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const int blocks = E * ((T + ROUTER_TOK - 1) / ROUTER_TOK);
    KIMI_LAUNCH(err, router_logits_kernel<X>, blocks, ROUTER_WARPS * 32, 0, s, x, w, logits, T, D,
                E);
    return KIMI_OK;
}

extern "C" int
kimi_moe_router_logits(const kimi_bf16_t *x, const kimi_bf16_t *w, float *logits,
                       int T, int D, int E, cudaStream_t s, kimi_err_t *err)
{
    return router_logits_launch(x, w, logits, T, D, E, s, err);
}

extern "C" int
kimi_moe_router_logits_f32(const float *x, const kimi_bf16_t *w, float *logits,
                           int T, int D, int E, cudaStream_t s, kimi_err_t *err)
{
    if (E <= 0 || E % ROUTER_ROWS != 0 || T <= 0) {
        return router_logits_launch(x, w, logits, T, D, E, s, err);
    }
    if (x == NULL || w == NULL || logits == NULL || D <= 0 || D % 1024 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: T=%d D=%d E=%d (D %% 1024)", T, D, E);
    }
    if (((uintptr_t) x | (uintptr_t) w) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: x or w not 16-byte aligned");
    }
    const int blocks = (E / ROUTER_ROWS) * ((T + ROUTER_TOK - 1) / ROUTER_TOK);
    KIMI_LAUNCH(err, router_logits_rows_kernel, blocks, ROUTER_WARPS * 32, 0, s, x, w, logits, T, D,
                E);
    return KIMI_OK;
}

/* ---- batches: the same logits on bf16 tensor cores ------------------------- */

/* x = hi + lo + O(2^-16 |x|) with hi = bf16(x), lo = bf16(x - hi): two bf16
 * GEMMs against the bf16 gate give fp32-accurate logits (each product is
 * exact in the fp32 accumulator), where one would round x to 8 bits. */
static __global__ void
router_split_kernel(const float *__restrict__ x, size_t n, uint16_t *__restrict__ hi,
                    uint16_t *__restrict__ lo)
{
    KIMI_GRID_ENTRY();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x) {
        const float v = x[i];
        const uint16_t h = kimi_f2bf(v);
        hi[i] = h;
        lo[i] = kimi_f2bf(v - __bfloat162float(__ushort_as_bfloat16(h)));
    }
}

static __global__ void
router_sum_kernel(const float *__restrict__ part, size_t n, float *__restrict__ logits)
{
    KIMI_GRID_ENTRY();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x) {
        logits[i] = part[i] + part[n + i];
    }
}

extern "C" size_t
kimi_moe_router_lt_ws_bytes(int T, int D, int E)
{
    return (size_t) 2 * T * D * sizeof(uint16_t) + (size_t) 2 * T * E * sizeof(float);
}

extern "C" int
kimi_moe_router_logits_f32_lt(kimi_cublaslt_t *lt, const float *x, const kimi_bf16_t *w,
                              float *logits, int T, int D, int E, void *ws,
                              cudaStream_t s, kimi_err_t *err)
{
    if (lt == NULL || x == NULL || w == NULL || logits == NULL || ws == NULL || T <= 0 || D % 8 != 0
        || E % 4 != 0 || ((uintptr_t) ws & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits_lt: T=%d D=%d E=%d (D %% 8, E %% 4, ws aligned)",
                            T, D, E);
    }
    const size_t n = (size_t) T * D;
    uint16_t *hi = (uint16_t *) ws, *lo = hi + n;
    float *part = (float *) (lo + n);          /* [2T][E]: hi rows, then lo rows */
    const int blocks = (int) min((n + 255) / 256, (size_t) 4096);
    KIMI_LAUNCH(err, router_split_kernel, blocks, 256, 0, s, x, n, hi, lo);
    int rc = kimi_bf16_gemm_nt_f32_cublaslt(lt, hi, 2 * T, D, w, E, part, s, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    const size_t ne = (size_t) T * E;
    KIMI_LAUNCH(err, router_sum_kernel, (int) min((ne + 255) / 256, (size_t) 4096), 256, 0, s, part,
                ne, logits);
    return KIMI_OK;
}

/* bk/bx[0] = the best of bk/bx[0 .. 2W): the larger key, on ties the
 * lower index; a tree, so no step waits on more than log2 before it. */
template <int W>
static __device__ __forceinline__ void select_tree(uint32_t *bk, int *bx)
{
#pragma unroll
    for (int i = 0; i < W; i++) {
        const bool hi = bk[i + W] > bk[i] || (bk[i + W] == bk[i] && bx[i + W] < bx[i]);
        bk[i] = hi ? bk[i + W] : bk[i];
        bx[i] = hi ? bx[i + W] : bx[i];
    }
    if constexpr (W > 1) {
        select_tree<W / 2>(bk, bx);
    }
}

/* One warp per token (4 tokens per block); PL experts a lane, E <= 32 * PL
 * (PL just above E / 32: a single warp's instructions are its time at batch
 * 1, ~4 cycles each, so unused slots cost as much as used ones). */

template <int PL>
static __global__ void __launch_bounds__(128)
router_select_kernel(const float *__restrict__ logits, const float *__restrict__ bias,
                     int T, int E, int top_k, int n_group, int topk_group, int norm,
                     float scale, int32_t *__restrict__ idx, float *__restrict__ wout)
{
    KIMI_GRID_ENTRY();
    /* only group-limited routing needs shared memory ([4][E] scores, then
     * [4][64] group marks) */
    extern __shared__ float select_smem[];
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * 4 + wi;
    if (t >= T) {
        return;
    }
    float *sel = select_smem + wi * E, *gsc = select_smem + 4 * E + wi * 64;
    /* The lane's experts (lane + 32 i) in registers, their loads issued
     * before the first is used. */
    float v[PL], b[PL], sg[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        v[i] = e < E ? logits[(size_t) t * E + e] : 0.f;
        b[i] = e < E && bias != NULL ? bias[e] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < PL; i++) {
        sg[i] = 1.f / (1.f + expf(-v[i]));
        v[i] = lane + 32 * i < E ? sg[i] + b[i] : -INFINITY;
    }
    if (n_group > 1 && topk_group < n_group) {
        const int gs = E / n_group;
#pragma unroll
        for (int i = 0; i < PL; i++) {
            if (lane + 32 * i < E) {
                sel[lane + 32 * i] = v[i];
            }
        }
        __syncwarp();
        for (int gi = lane; gi < n_group; gi += 32) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int e = gi * gs; e < (gi + 1) * gs; e++) {
                const float x = sel[e];
                if (x > b1) {
                    b2 = b1;
                    b1 = x;
                } else if (x > b2) {
                    b2 = x;
                }
            }
            gsc[gi] = b1 + (gs > 1 ? b2 : 0.f);
        }
        __syncwarp();
        /* keep topk_group groups: lane 0 marks the rest with -inf score */
        if (lane == 0) {
            unsigned long long keep = 0;
            for (int r = 0; r < topk_group; r++) {
                int bi = -1;
                float bv = -INFINITY;
                for (int gi = 0; gi < n_group; gi++) {
                    if (!((keep >> gi) & 1) && (bi < 0 || gsc[gi] > bv)) {
                        bv = gsc[gi];
                        bi = gi;
                    }
                }
                keep |= 1ull << bi;
            }
            for (int gi = 0; gi < n_group; gi++) {
                gsc[gi] = ((keep >> gi) & 1) ? 1.f : 0.f;
            }
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < PL; i++) {
            const int e = lane + 32 * i;
            if (e < E && gsc[e / gs] == 0.f) {
                v[i] = -INFINITY;
            }
        }
    }
    /* Order-preserving keys (larger score, larger key); masked (-inf) and
     * NaN experts get 0, below every real score, so they are never chosen
     * over a real one.  A round: the lane's best by a tree (no dependent
     * chain), then two warp reductions (the best key, the lowest expert
     * holding it: ties to the lower id). */
    uint32_t key[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const uint32_t bits = __float_as_uint(v[i]);
        key[i] = v[i] > -INFINITY ? bits ^ ((bits >> 31) ? 0xffffffffu : 0x80000000u) : 0u;
    }
    float wsum = 0.f, myw = 0.f;
    int myi = 0;
    for (int k = 0; k < top_k; k++) {
        uint32_t bk[PL / 2];
        int      bx[PL / 2];
#pragma unroll
        for (int i = 0; i < PL / 2; i++) {   /* i beats i + half on ties */
            const int j = i + PL / 2;
            const bool hi = key[j] > key[i];
            bk[i] = hi ? key[j] : key[i];
            bx[i] = hi ? j : i;
        }
        select_tree<PL / 4>(bk, bx);
        const uint32_t best = __reduce_max_sync(0xffffffffu, bk[0]);
        int bi = (int) __reduce_min_sync(0xffffffffu, bk[0] == best && best != 0u
                                                      ? (unsigned) (lane + 32 * bx[0]) : 0x7fffffffu);
        if (bi == 0x7fffffff) {
            bi = 0;   /* fewer than top_k eligible experts: cannot happen for valid configs */
        }
        float own = 0.f;     /* the chosen expert's sigmoid, from its lane */
#pragma unroll
        for (int i = 0; i < PL; i++) {
            const bool chosen = lane + 32 * i == bi;     /* selects: arrays stay in registers */
            own = chosen ? sg[i] : own;
            key[i] = chosen ? 0u : key[i];
        }
        const float wk = __shfl_sync(0xffffffffu, own, bi & 31);
        wsum += wk;
        if (lane == k) {
            myw = wk;
            myi = bi;
        }
    }
    if (lane < top_k) {
        const float wk = norm ? myw / (wsum + 1e-20f) : myw;
        idx[(size_t) t * top_k + lane] = myi;
        wout[(size_t) t * top_k + lane] = wk * scale;
    }
}

extern "C" int
kimi_moe_router_select(const float *logits, const float *bias, int T, int E,
                       int top_k, int n_group, int topk_group, int norm,
                       float scale, int32_t *idx, float *w, cudaStream_t s,
                       kimi_err_t *err)
{
    if (logits == NULL || idx == NULL || w == NULL || T < 0 || E <= 0 || E > 1024
        || top_k <= 0 || top_k > 16 || top_k > E || n_group <= 0 || n_group > 64
        || E % n_group != 0 || topk_group <= 0 || topk_group > n_group
        || topk_group * (E / n_group) < top_k) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "router_select: T=%d E=%d top_k=%d n_group=%d topk_group=%d",
                            T, E, top_k, n_group, topk_group);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const size_t smem = n_group > 1 && topk_group < n_group ? (size_t) (4 * E + 4 * 64) * sizeof(float) : 0;
    const int blocks = (T + 3) / 4;
    if (E <= 128) {
        KIMI_LAUNCH(err, router_select_kernel<4>, blocks, 128, smem, s, logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    } else if (E <= 256) {
        KIMI_LAUNCH(err, router_select_kernel<8>, blocks, 128, smem, s, logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    } else if (E <= 512) {
        KIMI_LAUNCH(err, router_select_kernel<16>, blocks, 128, smem, s, logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    } else {
        KIMI_LAUNCH(err, router_select_kernel<32>, blocks, 128, smem, s, logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    }
    return KIMI_OK;
}
