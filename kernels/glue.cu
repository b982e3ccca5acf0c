/*
 * Small kernels between the big ones of a forward pass: embedding (and row)
 * gather, SiLU(gate)*up, a sum of two row sets, the latent KV write into the paged cache, and the
 * per-head absorption matrices of MLA (W_UK on q, W_UV on the output):
 * the bf16 forms the kernel checks drive, and the fp32 forms the engine
 * uses (fp32 activations, absorption straight from the FP8 kv_b_proj).
 *
 * Owns:   those launchers and their preconditions.
 * Never:  allocates, synchronizes, or holds state.
 * Twin:   engine/backend/cpu/ backend_cpu.c (embedding, kimi_silu_mul,
 *         kimi_rmsnorm + kimi_kv_write, the absorbed q/o loops of
 *         kimi_cpu_attn_chunk).
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

#define KV_LATENT 512
#define KV_ROW 576
#define KV_THREADS 128
#define HMV_TOK 16

/* ---- gather ------------------------------------------------------------------ */

static __global__ void
gather_rows_kernel(const uint16_t *__restrict__ table, const int32_t *__restrict__ ids,
                   int D, uint16_t *__restrict__ out)
{
    KIMI_GRID_ENTRY();
    const int t = blockIdx.x;
    const uint4 *src = (const uint4 *) (table + (size_t) ids[t] * D);
    uint4 *dst = (uint4 *) (out + (size_t) t * D);
    for (int i = threadIdx.x; i < D / 8; i += blockDim.x) {
        dst[i] = src[i];
    }
}

extern "C" int
kimi_gather_rows_bf16(const kimi_bf16_t *table, const int32_t *ids, int T, int D,
                      kimi_bf16_t *out, cudaStream_t s, kimi_err_t *err)
{
    if (table == NULL || ids == NULL || out == NULL || T < 0 || D <= 0 || D % 8 != 0
        || (((uintptr_t) table | (uintptr_t) out) & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "gather_rows: T=%d D=%d (D %% 8, 16-byte aligned)",
                            T, D);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    KIMI_LAUNCH(err, gather_rows_kernel, T, 256, 0, s, table, ids, D, out);
    return KIMI_OK;
}

/* ---- SiLU(gate) * up ------------------------------------------------------------- */

static __global__ void
silu_mul_kernel(const uint16_t *__restrict__ g, const uint16_t *__restrict__ u,
                uint16_t *__restrict__ out, size_t n)
{
    KIMI_GRID_ENTRY();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t) gridDim.x * blockDim.x) {
        const float a = kimi_bf2f(g[i]);
        out[i] = kimi_f2bf(a / (1.f + __expf(-a)) * kimi_bf2f(u[i]));
    }
}

extern "C" int
kimi_silu_mul_bf16(const kimi_bf16_t *g, const kimi_bf16_t *u, kimi_bf16_t *out, size_t n,
                   cudaStream_t s, kimi_err_t *err)
{
    if (g == NULL || u == NULL || out == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "silu_mul: NULL buffer");
    }
    if (n == 0) {
        return KIMI_OK;
    }
    size_t blocks = (n + 255) / 256;
    KIMI_LAUNCH(err, silu_mul_kernel, blocks < 8192 ? (unsigned) blocks : 8192u, 256, 0, s, g, u,
                out, n);
    return KIMI_OK;
}

/* ---- fp32 forms of the engine (residual stream and GEMM outputs in fp32) ---- */

template <typename S, typename O>
static __global__ void
gather_rows_f32_kernel(const S *__restrict__ table, const int32_t *__restrict__ ids, int D,
                       O *__restrict__ out)
{
    KIMI_GRID_ENTRY();
    const int t = blockIdx.x;
    const S *src = table + (size_t) ids[t] * D;
    O *dst = out + (size_t) t * D;
    /* a row over gridDim.y blocks: one block walking 7168 values is latency
     * bound (6 us at batch 1) */
    for (int i = (blockIdx.y * blockDim.x + threadIdx.x) * 4; i < D; i += gridDim.y * blockDim.x * 4) {
        float v[4];
        kimi_ld4(src + i, v);
        kimi_st4(dst + i, v);
    }
}

template <typename S, typename O>
static int
gather_f32_launch(const S *table, const int32_t *ids, int T, int D, O *out,
                  cudaStream_t s, kimi_err_t *err)
{
    if (table == NULL || ids == NULL || out == NULL || T < 0 || D <= 0 || D % 8 != 0
        || (((uintptr_t) table | (uintptr_t) out) & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "gather_rows: T=%d D=%d (D %% 8, 16-byte aligned)",
                            T, D);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const int per_row = (D / 4 + 255) / 256;
    KIMI_LAUNCH(err, gather_rows_f32_kernel<S, O>, dim3(T, per_row < 8 ? per_row : 8), 256, 0, s,
                table, ids, D, out);
    return KIMI_OK;
}

extern "C" int
kimi_gather_rows_bf16_f32(const kimi_bf16_t *table, const int32_t *ids, int T, int D,
                          float *out, cudaStream_t s, kimi_err_t *err)
{
    return gather_f32_launch(table, ids, T, D, out, s, err);
}

extern "C" int
kimi_gather_rows_f32(const float *table, const int32_t *ids, int T, int D, float *out,
                     cudaStream_t s, kimi_err_t *err)
{
    return gather_f32_launch(table, ids, T, D, out, s, err);
}

extern "C" int
kimi_gather_rows_f32_bf16(const float *table, const int32_t *ids, int T, int D,
                          kimi_bf16_t *out, cudaStream_t s, kimi_err_t *err)
{
    return gather_f32_launch(table, ids, T, D, (uint16_t *) out, s, err);
}

/* expf, not __expf: the CPU oracle's kimi_silu_mul uses the accurate one */
static __global__ void
silu_mul_f32_kernel(const float *__restrict__ g, const float *__restrict__ u,
                    float *__restrict__ out, size_t n)
{
    KIMI_GRID_ENTRY();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t) gridDim.x * blockDim.x) {
        const float a = g[i];
        out[i] = a / (1.f + expf(-a)) * u[i];
    }
}

extern "C" int
kimi_silu_mul_f32(const float *g, const float *u, float *out, size_t n, cudaStream_t s,
                  kimi_err_t *err)
{
    if (g == NULL || u == NULL || out == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "silu_mul: NULL buffer");
    }
    if (n == 0) {
        return KIMI_OK;
    }
    size_t blocks = (n + 255) / 256;
    KIMI_LAUNCH(err, silu_mul_f32_kernel, blocks < 8192 ? (unsigned) blocks : 8192u, 256, 0, s, g,
                u, out, n);
    return KIMI_OK;
}

static __global__ void
add_f32_kernel(float *__restrict__ y, const float *__restrict__ x, size_t n)
{
    KIMI_GRID_ENTRY();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t) gridDim.x * blockDim.x) {
        y[i] += x[i];
    }
}

extern "C" int
kimi_add_f32(float *y, const float *x, size_t n, cudaStream_t s, kimi_err_t *err)
{
    if (y == NULL || x == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "add: NULL buffer");
    }
    if (n == 0) {
        return KIMI_OK;
    }
    size_t blocks = (n + 255) / 256;
    KIMI_LAUNCH(err, add_f32_kernel, blocks < 8192 ? (unsigned) blocks : 8192u, 256, 0, s, y, x, n);
    return KIMI_OK;
}

/* ---- latent KV write --------------------------------------------------------------- */

/* One block per token: c = rmsnorm(ckv[0:512]) * w, k_pe = ckv[512:576] (already
 * rotated); stored at cache row slot[t] (block * bs + row) as bf16, or as e4m3
 * with one multiplier per row (max(amax, 1e-4) / 448, as kimi_kv_write); none
 * where slot[t] < 0. */
template <bool FP8, typename X>
static __global__ void __launch_bounds__(KV_THREADS)
kv_write_kernel(const X *__restrict__ ckv, const uint16_t *__restrict__ w, float eps,
                const int32_t *__restrict__ slot, void *__restrict__ kv,
                float *__restrict__ kv_scale, int bs)
{
    KIMI_GRID_ENTRY();
    __shared__ float red[KV_THREADS / 32];
    __shared__ float bc;
    const int t = blockIdx.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (slot[t] < 0) {
        return;                 /* a row another decode-context-parallel rank holds */
    }
    const X *row = ckv + (size_t) t * KV_ROW;
    float v[KV_ROW / KV_THREADS + 1];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < KV_LATENT / KV_THREADS; j++) {
        v[j] = kimi_ldf(&row[threadIdx.x + j * KV_THREADS]);
        ss += v[j] * v[j];
    }
    const bool has_pe = threadIdx.x < KV_ROW - KV_LATENT;
    float pe = has_pe ? kimi_ldf(&row[KV_LATENT + threadIdx.x]) : 0.f;
    ss = kimi_warp_sum(ss);
    if (lane == 0) {
        red[wid] = ss;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 0.f;
        for (int i = 0; i < KV_THREADS / 32; i++) a += red[i];
        bc = rsqrtf(a / KV_LATENT + eps);
    }
    __syncthreads();
    const float r = bc;
    float amax = fabsf(pe);
#pragma unroll
    for (int j = 0; j < KV_LATENT / KV_THREADS; j++) {
        /* the cache holds bf16 c on the bf16 path: round before the fp8 amax too,
         * so both paths quantise the same values */
        v[j] = kimi_bf2f(kimi_f2bf(v[j] * r * kimi_bf2f(w[threadIdx.x + j * KV_THREADS])));
        amax = fmaxf(amax, fabsf(v[j]));
    }
    const size_t dst = (size_t) slot[t] * KV_ROW;
    if (!FP8) {
        uint16_t *o = (uint16_t *) kv + dst;
#pragma unroll
        for (int j = 0; j < KV_LATENT / KV_THREADS; j++) {
            o[threadIdx.x + j * KV_THREADS] = kimi_f2bf(v[j]);
        }
        if (has_pe) {
            o[KV_LATENT + threadIdx.x] = kimi_f2bf(pe);
        }
        return;
    }
    amax = kimi_warp_max(amax);
    __syncthreads();
    if (lane == 0) {
        red[wid] = amax;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 1e-4f;
        for (int i = 0; i < KV_THREADS / 32; i++) a = fmaxf(a, red[i]);
        bc = a / KIMI_FP8_MAX;
        kv_scale[slot[t]] = bc;
    }
    __syncthreads();
    const float sc = bc;
    /* planar block (kimi_mla_decode): byte i of the row in plane i / 16 */
    uint8_t *o = (uint8_t *) kv + (size_t) (slot[t] / bs) * bs * KV_ROW + (slot[t] % bs) * 16;
#pragma unroll
    for (int j = 0; j < KV_LATENT / KV_THREADS; j++) {
        const int i = threadIdx.x + j * KV_THREADS;
        o[(i >> 4) * bs * 16 + (i & 15)] = kimi_f2fp8(v[j] / sc);
    }
    if (has_pe) {
        const int i = KV_LATENT + threadIdx.x;
        o[(i >> 4) * bs * 16 + (i & 15)] = kimi_f2fp8(pe / sc);
    }
}

template <typename X>
static int
kv_write_launch(const X *ckv, const kimi_bf16_t *norm_w, float eps,
                  const int32_t *slot, int T, void *kv, float *kv_scale, int kv_fp8, int bs,
                  cudaStream_t s, kimi_err_t *err)
{
    if (ckv == NULL || norm_w == NULL || slot == NULL || kv == NULL || T < 0
        || (kv_fp8 && kv_scale == NULL) || bs <= 0) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_kv_write: T=%d fp8=%d", T, kv_fp8);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    if (kv_fp8) {
        KIMI_LAUNCH(err, kv_write_kernel<true, X>, T, KV_THREADS, 0, s, ckv, norm_w, eps, slot, kv,
                    kv_scale, bs);
    } else {
        KIMI_LAUNCH(err, kv_write_kernel<false, X>, T, KV_THREADS, 0, s, ckv, norm_w, eps, slot, kv,
                    kv_scale, bs);
    }
    return KIMI_OK;
}

extern "C" int
kimi_mla_kv_write(const kimi_bf16_t *ckv, const kimi_bf16_t *norm_w, float eps,
                  const int32_t *slot, int T, void *kv, float *kv_scale, int kv_fp8,
                  int bs, cudaStream_t s, kimi_err_t *err)
{
    return kv_write_launch(ckv, norm_w, eps, slot, T, kv, kv_scale, kv_fp8, bs, s, err);
}

extern "C" int
kimi_mla_kv_write_f32(const float *ckv, const kimi_bf16_t *norm_w, float eps,
                      const int32_t *slot, int T, void *kv, float *kv_scale, int kv_fp8,
                      int bs, cudaStream_t s, kimi_err_t *err)
{
    return kv_write_launch(ckv, norm_w, eps, slot, T, kv, kv_scale, kv_fp8, bs, s, err);
}

/* Rows [k0, k0 + S) of one sequence's latent cache in bf16, c [S][512] and
 * k_pe [S][64]: a thread per 8 elements (16 bytes out), GATHER_ROWS rows a
 * block; fp8 rows are dequantised with their multiplier (byte i of a row in
 * plane i / 16 of its block, as kv_write_kernel stores them). */
#define GATHER_ROWS 8

template <bool FP8>
static __global__ void __launch_bounds__(GATHER_ROWS * KV_ROW / 8)
kv_gather_kernel(const uint8_t *__restrict__ kv, const float *__restrict__ kv_scale, int bs,
                 const int32_t *__restrict__ bt, int k0, int S, uint16_t *__restrict__ c_out,
                 uint16_t *__restrict__ pe_out)
{
    KIMI_GRID_ENTRY();
    const int r = blockIdx.x * GATHER_ROWS + threadIdx.x / (KV_ROW / 8);
    const int c = threadIdx.x % (KV_ROW / 8) * 8;   /* first element */
    if (r >= S) {
        return;
    }
    const int pos = k0 + r;
    const size_t blk = (size_t) bt[pos / bs], row = (size_t) (pos % bs);
    uint4 v;
    if (!FP8) {
        v = *(const uint4 *) (kv + ((blk * bs + row) * KV_ROW + c) * 2);
    } else {
        const float sc = kv_scale[blk * bs + row];
        const uint2 q = *(const uint2 *) (kv + blk * bs * KV_ROW + (size_t) (c >> 4) * bs * 16
                                          + row * 16 + (c & 15));
        float f[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[i] = kimi_fp82f((q.x >> (8 * i)) & 0xff) * sc;
            f[4 + i] = kimi_fp82f((q.y >> (8 * i)) & 0xff) * sc;
        }
        v.x = (uint32_t) kimi_f2bf(f[0]) | (uint32_t) kimi_f2bf(f[1]) << 16;
        v.y = (uint32_t) kimi_f2bf(f[2]) | (uint32_t) kimi_f2bf(f[3]) << 16;
        v.z = (uint32_t) kimi_f2bf(f[4]) | (uint32_t) kimi_f2bf(f[5]) << 16;
        v.w = (uint32_t) kimi_f2bf(f[6]) | (uint32_t) kimi_f2bf(f[7]) << 16;
    }
    if (c < KV_LATENT) {
        *(uint4 *) (c_out + (size_t) r * KV_LATENT + c) = v;
    } else {
        *(uint4 *) (pe_out + (size_t) r * (KV_ROW - KV_LATENT) + c - KV_LATENT) = v;
    }
}

extern "C" int
kimi_mla_kv_gather(const void *kv, const float *kv_scale, int kv_fp8, int bs, const int32_t *bt,
                   int k0, int S, kimi_bf16_t *c, kimi_bf16_t *pe, cudaStream_t s,
                   kimi_err_t *err)
{
    if (kv == NULL || bt == NULL || c == NULL || pe == NULL || (kv_fp8 && kv_scale == NULL)
        || bs <= 0 || k0 < 0 || S < 0) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_kv_gather: k0=%d S=%d bs=%d fp8=%d", k0, S,
                            bs, kv_fp8);
    }
    if (S == 0) {
        return KIMI_OK;
    }
    const unsigned blocks = (unsigned) ((S + GATHER_ROWS - 1) / GATHER_ROWS);
    if (kv_fp8) {
        KIMI_LAUNCH(err, kv_gather_kernel<true>, blocks, GATHER_ROWS * KV_ROW / 8, 0, s,
                    (const uint8_t *) kv, kv_scale, bs, bt, k0, S, c, pe);
    } else {
        KIMI_LAUNCH(err, kv_gather_kernel<false>, blocks, GATHER_ROWS * KV_ROW / 8, 0, s,
                    (const uint8_t *) kv, kv_scale, bs, bt, k0, S, c, pe);
    }
    return KIMI_OK;
}

/* ---- per-head vector x matrix --------------------------------------------------------- */

/* y[t,h,n] = sum_k x[t,h,k] * M[h][k][n]: thread n of block (h, token tile)
 * walks k with the tile's x in shared memory (fp32), so each head's matrix
 * is read once per HMV_TOK tokens, coalesced along n. */
static __global__ void
head_mv_kernel(const uint16_t *__restrict__ x, int x_ld_t, int x_ld_h,
               const uint16_t *__restrict__ M, size_t m_ld_h, int m_ld_k, int K, int N,
               uint16_t *__restrict__ y, int y_ld_t, int y_ld_h, int T)
{
    KIMI_GRID_ENTRY();
    extern __shared__ float xs[];              /* [HMV_TOK][K] */
    const int h = blockIdx.x, t0 = blockIdx.y * HMV_TOK;
    const int nt = min(HMV_TOK, T - t0);
    for (int i = threadIdx.x; i < nt * K; i += blockDim.x) {
        const int j = i / K, k = i % K;
        xs[i] = kimi_bf2f(x[(size_t) (t0 + j) * x_ld_t + (size_t) h * x_ld_h + k]);
    }
    __syncthreads();
    const uint16_t *m = M + (size_t) h * m_ld_h;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        float acc[HMV_TOK];
#pragma unroll
        for (int j = 0; j < HMV_TOK; j++) acc[j] = 0.f;
#pragma unroll 4
        for (int k = 0; k < K; k++) {
            const float wv = kimi_bf2f(m[(size_t) k * m_ld_k + n]);
#pragma unroll
            for (int j = 0; j < HMV_TOK; j++) {
                acc[j] += xs[j * K + k] * wv;
            }
        }
        for (int j = 0; j < nt; j++) {
            y[(size_t) (t0 + j) * y_ld_t + (size_t) h * y_ld_h + n] = kimi_f2bf(acc[j]);
        }
    }
}

extern "C" int
kimi_head_mv_bf16(const kimi_bf16_t *x, int x_ld_t, int x_ld_h, const kimi_bf16_t *M,
                  size_t m_ld_h, int m_ld_k, int K, int N, kimi_bf16_t *y, int y_ld_t,
                  int y_ld_h, int T, int H, cudaStream_t s, kimi_err_t *err)
{
    const size_t smem = (size_t) HMV_TOK * K * sizeof(float);
    if (x == NULL || M == NULL || y == NULL || T < 0 || H <= 0 || K <= 0 || N <= 0
        || m_ld_k < N || smem > 96 * 1024) {
        return kimi_err_set(err, KIMI_EINVAL, "head_mv: T=%d H=%d K=%d N=%d m_ld_k=%d", T, H, K,
                            N, m_ld_k);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    if (smem > 48 * 1024) {
        KIMI_CUDA_TRY(cudaFuncSetAttribute(head_mv_kernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int) smem), err);
    }
    dim3 grid(H, (T + HMV_TOK - 1) / HMV_TOK);
    KIMI_LAUNCH(err, head_mv_kernel, grid, N < 512 ? N : 512, smem, s, x, x_ld_t, x_ld_h, M, m_ld_h,
                m_ld_k, K, N, y, y_ld_t, y_ld_h, T);
    return KIMI_OK;
}

/* ---- MLA absorption on the FP8 kv_b_proj -------------------------------------------- */

/* kv_b_proj W [H*(nope+dv)][R] e4m3 with 128x128 block multipliers, applied
 * as the CPU oracle applies its dequantised fp32 matrix.  Per head both are
 * small GEMMs: q_lat = q_nope W_UK (K = nope, N = R) and o = o_lat W_UV^T
 * (K = R, N = dv), on mma.sync m16n8k16 bf16 with fp32 sums.  The codes are
 * exact in bf16; the block multipliers go where they stay exact in fp32:
 * absorb_q folds them into q (within a 128-column block a multiplier
 * depends on the row d only) before q is split into bf16 hi + lo (16 of
 * its 24 bits, two MMAs), absorb_o scales each 128-wide K block's partial
 * sum (o_lat is bf16 already).  So the sums are the fp32 loops' up to
 * order, at a fraction of their cost once a step has more than a few
 * tokens (B=64: 69 + 77 us a layer on the CUDA cores).
 *
 * A block: one head, AT_TOK tokens (the MMA's M) at a time, striding over
 * the token tiles along grid.y with its weights staged once; a warp stages
 * its own AT_N columns x AT_KC of K as bf16 [n][k] rows (AT_LD: 16 bytes of
 * padding put a fragment's 32 reads on 32 banks).  absorb_q's warps split
 * the 128 columns of grid.z's block, absorb_o's the 512 of K. */
#define AB_R 512
#define AB_MAX_NOPE 256
#define AT_WARPS 4
#define AT_TOK 16
#define AT_N 32                          /* a warp's columns: 4 n8 tiles */
#define AT_KC 128                        /* K a staged chunk: one multiplier block */
#define AT_LD (AT_KC + 8)
#define AT_TILES_Y 16                    /* grid.y at most (blocks stride the tiles) */
static_assert(AB_R == AT_WARPS * AT_KC, "absorb_o: a K chunk a warp");

typedef uint16_t at_stage_t[AT_N][AT_LD];

static __device__ __forceinline__ uint32_t at_fp8x2_bf16(uint32_t lo, uint32_t hi)
{
    return (__float_as_uint(kimi_fp82f((uint8_t) lo)) >> 16)
           | (__float_as_uint(kimi_fp82f((uint8_t) hi)) & 0xffff0000u);
}

/* bf16 hi + lo of (x0, x1): packed pairs for the A fragment */
static __device__ __forceinline__ void at_split2(float x0, float x1, uint32_t *hi, uint32_t *lo)
{
    const uint16_t h0 = kimi_f2bf(x0), h1 = kimi_f2bf(x1);
    *hi = (uint32_t) h0 | (uint32_t) h1 << 16;
    *lo = (uint32_t) kimi_f2bf(x0 - kimi_bf2f(h0)) | (uint32_t) kimi_f2bf(x1 - kimi_bf2f(h1)) << 16;
}

/* W_UK^T of a warp: st[n][k] = W(row0 + k, c0 + n), k < kn (zero past kn):
 * a lane loads two rows' halves (16 codes each) four times, every load
 * issued before the first conversion */
static __device__ __forceinline__ void
at_stage_uk(at_stage_t &st, const uint8_t *__restrict__ w, int row0, int kn, int c0, int lane)
{
    uint4 r0[AT_KC / 32], r1[AT_KC / 32];
#pragma unroll
    for (int it = 0; it < AT_KC / 32; it++) {   /* AT_KC / 2 row pairs x 2 halves */
        const int item = lane + 32 * it, k = 2 * (item >> 1), half = item & 1;
        r0[it] = r1[it] = make_uint4(0, 0, 0, 0);
        if (k < kn) {
            r0[it] = kimi_ld_stream(w + (size_t) (row0 + k) * AB_R + c0 + half * 16);
            r1[it] = kimi_ld_stream(w + (size_t) (row0 + k + 1) * AB_R + c0 + half * 16);
        }
    }
#pragma unroll
    for (int it = 0; it < AT_KC / 32; it++) {
        const int item = lane + 32 * it, k = 2 * (item >> 1), half = item & 1;
        const uint32_t a[4] = { r0[it].x, r0[it].y, r0[it].z, r0[it].w };
        const uint32_t b[4] = { r1[it].x, r1[it].y, r1[it].z, r1[it].w };
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int sh = 8 * (j & 3);
            *(uint32_t *) &st[half * 16 + j][k] = at_fp8x2_bf16(a[j >> 2] >> sh, b[j >> 2] >> sh);
        }
    }
}

/* qlat[t,h,0:R] = bf16(sum_d q[t,h,d] W(h,d,:)), qlat[t,h,R:R+P] = bf16(q_pe);
 * grid.z: the 128-column block of R.  A tile's q values and multipliers
 * of a K chunk are loaded before the weights are staged, so a block waits
 * on memory once a chunk, not once a k step. */
static __global__ void __launch_bounds__(AT_WARPS * 32)
absorb_q_kernel(const float *__restrict__ q, int T, int H, int nope, int P,
                const uint8_t *__restrict__ w, const float *__restrict__ ws, int rows_h,
                uint16_t *__restrict__ qlat)
{
    __shared__ __align__(16) at_stage_t stage[AT_WARPS];
    KIMI_GRID_ENTRY();
    const int h = blockIdx.x, cb = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int c0 = cb * AT_KC + warp * AT_N, row0 = h * rows_h, qk = nope + P;
    const int n_tiles = (T + AT_TOK - 1) / AT_TOK;
    const size_t ldo = (size_t) H * (AB_R + P);
    at_stage_t &st = stage[warp];

    for (int tile = blockIdx.y; tile < n_tiles; tile += gridDim.y) {
        const int t0 = tile * AT_TOK, nt = min(AT_TOK, T - t0);
        if (cb == 0) {                   /* q_pe rides along, rounded as the cache is */
            for (int i = threadIdx.x; i < nt * P; i += blockDim.x) {
                const int j = i / P, d = i % P;
                qlat[(size_t) (t0 + j) * ldo + (size_t) h * (AB_R + P) + AB_R + d] =
                    kimi_f2bf(q[((size_t) (t0 + j) * H + h) * qk + nope + d]);
            }
        }
        const float *qa = q + ((size_t) (t0 + g) * H + h) * qk;
        const float *qb = qa + (size_t) 8 * H * qk;
        const bool va = g < nt, vb = g + 8 < nt;
        float acc[4][4] = {};
        for (int kc = 0; kc < nope; kc += AT_KC) {
            const int kn = min(AT_KC, nope - kc);
            float2 x[AT_KC / 16][4];
            float m[AT_KC / 16];
#pragma unroll
            for (int ks = 0; ks < AT_KC / 16; ks++) {
                const int d = kc + ks * 16 + 2 * tq;
                const float2 z = make_float2(0.f, 0.f);
                const bool live = ks * 16 < kn;
                x[ks][0] = live && va ? *(const float2 *) (qa + d) : z;
                x[ks][1] = live && vb ? *(const float2 *) (qb + d) : z;
                x[ks][2] = live && va ? *(const float2 *) (qa + d + 8) : z;
                x[ks][3] = live && vb ? *(const float2 *) (qb + d + 8) : z;
                /* rows_h % 16 == 0: a 16-row step lies in one multiplier block */
                m[ks] = live ? ws[(size_t) ((row0 + kc + ks * 16) / 128) * (AB_R / 128) + cb] : 0.f;
            }
            if (nope > AT_KC || tile == blockIdx.y) {
                __syncwarp();
                at_stage_uk(st, w, row0 + kc, kn, c0, lane);
                __syncwarp();
            }
#pragma unroll
            for (int ks = 0; ks < AT_KC / 16; ks++) {
                if (ks * 16 >= kn) {
                    break;
                }
                uint32_t ah[4], al[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    at_split2(x[ks][i].x * m[ks], x[ks][i].y * m[ks], &ah[i], &al[i]);
                }
#pragma unroll
                for (int n8 = 0; n8 < 4; n8++) {
                    const uint32_t b0 = *(const uint32_t *) &st[n8 * 8 + g][ks * 16 + 2 * tq];
                    const uint32_t b1 = *(const uint32_t *) &st[n8 * 8 + g][ks * 16 + 2 * tq + 8];
                    kimi_mma_bf16(acc[n8], ah[0], ah[1], ah[2], ah[3], b0, b1);
                    kimi_mma_bf16(acc[n8], al[0], al[1], al[2], al[3], b0, b1);
                }
            }
        }
        uint16_t *oa = qlat + (size_t) (t0 + g) * ldo + (size_t) h * (AB_R + P) + c0 + 2 * tq;
#pragma unroll
        for (int n8 = 0; n8 < 4; n8++) {
            if (va) {
                *(uint32_t *) (oa + n8 * 8) = (uint32_t) kimi_f2bf(acc[n8][0])
                                              | (uint32_t) kimi_f2bf(acc[n8][1]) << 16;
            }
            if (vb) {
                *(uint32_t *) (oa + 8 * ldo + n8 * 8) = (uint32_t) kimi_f2bf(acc[n8][2])
                                                        | (uint32_t) kimi_f2bf(acc[n8][3]) << 16;
            }
        }
    }
}

/* out[t,h,v] = sum_r W(h,nope+v,r) olat[t,h,r], fp32; grid.z: groups of
 * AT_N rows v.  Warp w takes the K chunk r in [128 w, 128 w + 128) (one
 * multiplier block, AB_R / AT_KC = AT_WARPS of them): its weights staged
 * once, its o_lat fragments loaded before them, its partial sum scaled by
 * its multipliers; the four partials are added in shared memory in warp
 * order. */
static __global__ void __launch_bounds__(AT_WARPS * 32)
absorb_o_kernel(const uint16_t *__restrict__ olat, int T, int H, int nope, int dv,
                const uint8_t *__restrict__ w, const float *__restrict__ ws, int rows_h,
                float *__restrict__ out)
{
    __shared__ __align__(16) at_stage_t stage[AT_WARPS];
    __shared__ float red[AT_WARPS][4][4][32];
    KIMI_GRID_ENTRY();
    const int h = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const int v0 = blockIdx.z * AT_N, kc = warp * AT_KC;
    const int row0 = h * rows_h + nope + v0;
    const int n_tiles = (T + AT_TOK - 1) / AT_TOK;
    at_stage_t &st = stage[warp];
    float m[4];

#pragma unroll
    for (int n8 = 0; n8 < 4; n8++) {   /* rows (v, v + 1): an even pair never straddles a block */
        const int v = n8 * 8 + 2 * tq;
        m[n8] = v0 + v < dv ? ws[(size_t) ((row0 + v) / 128) * (AB_R / 128) + warp] : 0.f;
    }

    for (int tile = blockIdx.y; tile < n_tiles; tile += gridDim.y) {
        const int t0 = tile * AT_TOK, nt = min(AT_TOK, T - t0);
        const bool va = g < nt, vb = g + 8 < nt;
        const uint16_t *oa = olat + ((size_t) (t0 + g) * H + h) * AB_R + kc;
        const uint16_t *ob = oa + (size_t) 8 * H * AB_R;
        uint32_t a[AT_KC / 16][4];
#pragma unroll
        for (int ks = 0; ks < AT_KC / 16; ks++) {
            const int k = ks * 16 + 2 * tq;
            a[ks][0] = va ? *(const uint32_t *) (oa + k) : 0u;
            a[ks][1] = vb ? *(const uint32_t *) (ob + k) : 0u;
            a[ks][2] = va ? *(const uint32_t *) (oa + k + 8) : 0u;
            a[ks][3] = vb ? *(const uint32_t *) (ob + k + 8) : 0u;
        }
        if (tile == blockIdx.y) {
            uint4 raw[8];
            /* lane: row n = (lane >> 3) + 4 i, 16-byte chunk lane & 7 of the K chunk */
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int n = (lane >> 3) + 4 * i;
                raw[i] = v0 + n < dv ? kimi_ld_stream(w + (size_t) (row0 + n) * AB_R + kc + (lane & 7) * 16)
                                     : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int n = (lane >> 3) + 4 * i;
                const uint32_t r[4] = { raw[i].x, raw[i].y, raw[i].z, raw[i].w };
                uint32_t o[8];
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const uint32_t x = r[j >> 1] >> (16 * (j & 1));
                    o[j] = at_fp8x2_bf16(x, x >> 8);
                }
                *(uint4 *) &st[n][(lane & 7) * 16] = make_uint4(o[0], o[1], o[2], o[3]);
                *(uint4 *) &st[n][(lane & 7) * 16 + 8] = make_uint4(o[4], o[5], o[6], o[7]);
            }
            __syncwarp();
        }
        float part[4][4] = {};
#pragma unroll
        for (int ks = 0; ks < AT_KC / 16; ks++) {
#pragma unroll
            for (int n8 = 0; n8 < 4; n8++) {
                kimi_mma_bf16(part[n8], a[ks][0], a[ks][1], a[ks][2], a[ks][3],
                              *(const uint32_t *) &st[n8 * 8 + g][ks * 16 + 2 * tq],
                              *(const uint32_t *) &st[n8 * 8 + g][ks * 16 + 2 * tq + 8]);
            }
        }
#pragma unroll
        for (int n8 = 0; n8 < 4; n8++)
#pragma unroll
            for (int i = 0; i < 4; i++) red[warp][n8][i][lane] = m[n8] * part[n8][i];
        __syncthreads();
        if (warp == 0) {
#pragma unroll
            for (int n8 = 0; n8 < 4; n8++) {
                float r[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    r[i] = red[0][n8][i][lane];
#pragma unroll
                    for (int k = 1; k < AT_WARPS; k++) r[i] += red[k][n8][i][lane];
                }
                const int v = v0 + n8 * 8 + 2 * tq;
                if (v >= dv) {
                    continue;
                }
                if (va) {
                    *(float2 *) (out + ((size_t) (t0 + g) * H + h) * dv + v) = make_float2(r[0], r[1]);
                }
                if (vb) {
                    *(float2 *) (out + ((size_t) (t0 + g + 8) * H + h) * dv + v) = make_float2(r[2], r[3]);
                }
            }
        }
        __syncthreads();
    }
}

static int
absorb_check(const void *x, const void *y, int T, int H, int R, int nope, int dv,
             const uint8_t *w, const float *ws, kimi_err_t *err)
{
    if (x == NULL || y == NULL || w == NULL || ws == NULL || T < 0 || H <= 0 || R != AB_R
        || nope <= 0 || nope > AB_MAX_NOPE || nope % 16 || dv <= 0 || dv % 8) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_absorb: T=%d H=%d R=%d nope=%d dv=%d "
                            "(R == %d, nope a multiple of 16 <= %d, dv of 8)", T, H, R, nope, dv,
                            AB_R, AB_MAX_NOPE);
    }
    if (((uintptr_t) w | (uintptr_t) x) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_absorb: kv_b or input not 16-byte aligned");
    }
    return KIMI_OK;
}

extern "C" int
kimi_mla_absorb_q(const float *q, int T, int H, int nope, int P, int R, int dv,
                  const uint8_t *kv_b, const float *kv_b_s, kimi_bf16_t *qlat,
                  cudaStream_t s, kimi_err_t *err)
{
    int rc = absorb_check(q, qlat, T, H, R, nope, dv, kv_b, kv_b_s, err);
    if (rc != KIMI_OK || T == 0) {
        return rc;
    }
    if (P < 0) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_absorb_q: P=%d", P);
    }
    const int tiles = (T + AT_TOK - 1) / AT_TOK;
    dim3 grid(H, tiles < AT_TILES_Y ? tiles : AT_TILES_Y, AB_R / AT_KC);
    KIMI_LAUNCH(err, absorb_q_kernel, grid, AT_WARPS * 32, 0, s, q, T, H, nope, P, kv_b, kv_b_s,
                nope + dv, qlat);
    return KIMI_OK;
}

extern "C" int
kimi_mla_absorb_o(const kimi_bf16_t *olat, int T, int H, int R, int nope, int dv,
                  const uint8_t *kv_b, const float *kv_b_s, float *out, cudaStream_t s,
                  kimi_err_t *err)
{
    int rc = absorb_check(olat, out, T, H, R, nope, dv, kv_b, kv_b_s, err);
    if (rc != KIMI_OK || T == 0) {
        return rc;
    }
    const int tiles = (T + AT_TOK - 1) / AT_TOK;
    dim3 grid(H, tiles < AT_TILES_Y ? tiles : AT_TILES_Y, (dv + AT_N - 1) / AT_N);
    KIMI_LAUNCH(err, absorb_o_kernel, grid, AT_WARPS * 32, 0, s, olat, T, H, nope, dv, kv_b, kv_b_s,
                nope + dv, out);
    return KIMI_OK;
}
