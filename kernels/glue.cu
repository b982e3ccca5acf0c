/*
 * Small kernels between the big ones of a forward pass: embedding (and row)
 * gather, SiLU(gate)*up, the latent KV write into the paged cache, and the
 * per-head absorption matrices of MLA (W_UK on q, W_UV on the output).
 *
 * Owns:   those four launchers and their preconditions.
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
    gather_rows_kernel<<<T, 256, 0, s>>>(table, ids, D, out);
    KIMI_CUDA_LAUNCHED(s, err);
    return KIMI_OK;
}

/* ---- SiLU(gate) * up ------------------------------------------------------------- */

static __global__ void
silu_mul_kernel(const uint16_t *__restrict__ g, const uint16_t *__restrict__ u,
                uint16_t *__restrict__ out, size_t n)
{
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
    silu_mul_kernel<<<blocks < 8192 ? (unsigned) blocks : 8192u, 256, 0, s>>>(g, u, out, n);
    KIMI_CUDA_LAUNCHED(s, err);
    return KIMI_OK;
}

/* ---- latent KV write --------------------------------------------------------------- */

/* One block per token: c = rmsnorm(ckv[0:512]) * w, k_pe = ckv[512:576] (already
 * rotated); stored at cache row slot[t] (block * bs + row) as bf16, or as e4m3
 * with one multiplier per row (max(amax, 1e-4) / 448, as kimi_kv_write). */
template <bool FP8>
static __global__ void __launch_bounds__(KV_THREADS)
kv_write_kernel(const uint16_t *__restrict__ ckv, const uint16_t *__restrict__ w, float eps,
                const int32_t *__restrict__ slot, void *__restrict__ kv,
                float *__restrict__ kv_scale)
{
    __shared__ float red[KV_THREADS / 32];
    __shared__ float bc;
    const int t = blockIdx.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const uint16_t *row = ckv + (size_t) t * KV_ROW;
    float v[KV_ROW / KV_THREADS + 1];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < KV_LATENT / KV_THREADS; j++) {
        v[j] = kimi_bf2f(row[threadIdx.x + j * KV_THREADS]);
        ss += v[j] * v[j];
    }
    const bool has_pe = threadIdx.x < KV_ROW - KV_LATENT;
    float pe = has_pe ? kimi_bf2f(row[KV_LATENT + threadIdx.x]) : 0.f;
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
    uint8_t *o = (uint8_t *) kv + dst;
#pragma unroll
    for (int j = 0; j < KV_LATENT / KV_THREADS; j++) {
        o[threadIdx.x + j * KV_THREADS] = kimi_f2fp8(v[j] / sc);
    }
    if (has_pe) {
        o[KV_LATENT + threadIdx.x] = kimi_f2fp8(pe / sc);
    }
}

extern "C" int
kimi_mla_kv_write(const kimi_bf16_t *ckv, const kimi_bf16_t *norm_w, float eps,
                  const int32_t *slot, int T, void *kv, float *kv_scale, int kv_fp8,
                  cudaStream_t s, kimi_err_t *err)
{
    if (ckv == NULL || norm_w == NULL || slot == NULL || kv == NULL || T < 0
        || (kv_fp8 && kv_scale == NULL)) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_kv_write: T=%d fp8=%d", T, kv_fp8);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    if (kv_fp8) {
        kv_write_kernel<true><<<T, KV_THREADS, 0, s>>>(ckv, norm_w, eps, slot, kv, kv_scale);
    } else {
        kv_write_kernel<false><<<T, KV_THREADS, 0, s>>>(ckv, norm_w, eps, slot, kv, kv_scale);
    }
    KIMI_CUDA_LAUNCHED(s, err);
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
    head_mv_kernel<<<grid, N < 512 ? N : 512, smem, s>>>(x, x_ld_t, x_ld_h, M, m_ld_h, m_ld_k,
                                                        K, N, y, y_ld_t, y_ld_h, T);
    KIMI_CUDA_LAUNCHED(s, err);
    return KIMI_OK;
}
