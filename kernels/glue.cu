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

/* kv_b_proj W [H*(nope+dv)][R] e4m3 with 128x128 block multipliers, dequantised
 * on the fly as the CPU oracle dequantises it (fp32 product of code and
 * multiplier), so both apply the same fp32 matrix; 1 byte per weight read.
 * A warp reads one whole 512-wide row per instruction (32 lanes x 16 bytes),
 * AB_U rows in flight per warp; a block serves one head and AB_TOK tokens. */
#define AB_WARPS 8
#define AB_TOK 4
#define AB_U 8
#define AB_R 512
#define AB_MAX_NOPE 256

static __device__ __forceinline__ void
ab_dequant(uint4 raw, float sc, float wf[16])
{
    const uint8_t *p = (const uint8_t *) &raw;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        wf[i] = kimi_fp82f(p[i]) * sc;
    }
}

/* AB_U rows d0.. of a head (rows past n read as zero weights) */
static __device__ __forceinline__ void
ab_load(const uint8_t *__restrict__ w, const float *__restrict__ ws, int row0, int d0, int n,
        int lane, uint4 raw[AB_U], float sc[AB_U])
{
#pragma unroll
    for (int u = 0; u < AB_U; u++) {
        const int d = d0 + u;
        if (d < n) {
            raw[u] = kimi_ld_stream(w + (size_t) (row0 + d) * AB_R + lane * 16);
            sc[u] = ws[(size_t) ((row0 + d) / 128) * (AB_R / 128) + lane / 8];
        } else {
            raw[u] = make_uint4(0, 0, 0, 0);
            sc[u] = 0.f;
        }
    }
}

/* qlat[t,h,0:R] = bf16(sum_d q[t,h,d] W(h,d,:)), qlat[t,h,R:R+P] = bf16(q_pe).
 * A block serves one head, AB_TOK tokens and AB_QC of the R columns
 * (grid.z = R / AB_QC): 4x the blocks of a head-per-block grid, and every
 * weight row of the block in flight at once (a warp: AB_QROWS rows, 4 a
 * load: lane = 8 * row + 16-byte chunk). */
#define AB_QC    128
#define AB_QROWS 16
static __global__ void __launch_bounds__(AB_WARPS * 32)
absorb_q_kernel(const float *__restrict__ q, int T, int H, int nope, int P,
                const uint8_t *__restrict__ w, const float *__restrict__ ws, int rows_h,
                uint16_t *__restrict__ qlat)
{
    KIMI_GRID_ENTRY();
    __shared__ float qs[AB_TOK][AB_MAX_NOPE];
    __shared__ __align__(16) float red[AB_WARPS][AB_TOK][AB_QC];
    const int h = blockIdx.x, t0 = blockIdx.y * AB_TOK, nt = min(AB_TOK, T - t0);
    const int c0 = blockIdx.z * AB_QC;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rg = lane >> 3, cc = lane & 7;    /* row of 4, 16-byte chunk */
    const int qk = nope + P;
    const size_t ldo = (size_t) H * (AB_R + P);

    for (int i = threadIdx.x; i < AB_TOK * nope; i += blockDim.x) {
        const int j = i / nope, d = i % nope;
        qs[j][d] = j < nt ? q[((size_t) (t0 + j) * H + h) * qk + d] : 0.f;
    }
    for (int i = threadIdx.x; blockIdx.z == 0 && i < nt * P; i += blockDim.x) {
        const int j = i / P, d = i % P;
        qlat[(size_t) (t0 + j) * ldo + (size_t) h * (AB_R + P) + AB_R + d] =
            kimi_f2bf(q[((size_t) (t0 + j) * H + h) * qk + nope + d]);
    }
    __syncthreads();

    float acc[AB_TOK][16];
#pragma unroll
    for (int j = 0; j < AB_TOK; j++)
#pragma unroll
        for (int i = 0; i < 16; i++) acc[j][i] = 0.f;

    const int row0 = h * rows_h;
    for (int d0 = warp * AB_QROWS; d0 < nope; d0 += AB_WARPS * AB_QROWS) {
        uint4 raw[AB_QROWS / 4];
        float sc[AB_QROWS / 4];
#pragma unroll
        for (int u = 0; u < AB_QROWS / 4; u++) {
            const int d = d0 + 4 * u + rg;
            if (d < nope) {
                raw[u] = kimi_ld_stream(w + (size_t) (row0 + d) * AB_R + c0 + cc * 16);
                sc[u] = ws[(size_t) ((row0 + d) / 128) * (AB_R / 128) + c0 / 128];
            } else {
                raw[u] = make_uint4(0, 0, 0, 0);
                sc[u] = 0.f;
            }
        }
#pragma unroll
        for (int u = 0; u < AB_QROWS / 4; u++) {
            const int d = d0 + 4 * u + rg;
            float wf[16];
            ab_dequant(raw[u], sc[u], wf);
#pragma unroll
            for (int j = 0; j < AB_TOK; j++) {
                const float x = d < nope ? qs[j][d] : 0.f;
#pragma unroll
                for (int i = 0; i < 16; i++) acc[j][i] += x * wf[i];
            }
        }
    }

    /* the 4 row lanes of a chunk, then the warps */
#pragma unroll
    for (int j = 0; j < AB_TOK; j++)
#pragma unroll
        for (int i = 0; i < 16; i++) {
            acc[j][i] += __shfl_xor_sync(0xffffffffu, acc[j][i], 8);
            acc[j][i] += __shfl_xor_sync(0xffffffffu, acc[j][i], 16);
        }
    if (rg == 0) {
#pragma unroll
        for (int j = 0; j < AB_TOK; j++)
#pragma unroll
            for (int i = 0; i < 16; i += 4) {
                *(float4 *) &red[warp][j][cc * 16 + i] =
                    make_float4(acc[j][i], acc[j][i + 1], acc[j][i + 2], acc[j][i + 3]);
            }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nt * AB_QC; i += blockDim.x) {
        const int j = i / AB_QC, r = i % AB_QC;
        float v = 0.f;
#pragma unroll
        for (int k = 0; k < AB_WARPS; k++) v += red[k][j][r];
        qlat[(size_t) (t0 + j) * ldo + (size_t) h * (AB_R + P) + c0 + r] = kimi_f2bf(v);
    }
}

/* out[t,h,d] = sum_r W(h,nope+d,r) olat[t,h,r], fp32; grid.z splits the rows */
static __global__ void __launch_bounds__(AB_WARPS * 32)
absorb_o_kernel(const uint16_t *__restrict__ olat, int T, int H, int nope, int dv,
                const uint8_t *__restrict__ w, const float *__restrict__ ws, int rows_h,
                float *__restrict__ out)
{
    KIMI_GRID_ENTRY();
    const int h = blockIdx.x, t0 = blockIdx.y * AB_TOK, nt = min(AB_TOK, T - t0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nw = AB_WARPS * gridDim.z, wg = blockIdx.z * AB_WARPS + warp;
    float ol[AB_TOK][16];

#pragma unroll
    for (int j = 0; j < AB_TOK; j++) {
        if (j < nt) {
            const uint16_t *p = olat + ((size_t) (t0 + j) * H + h) * AB_R + lane * 16;
            kimi_ld8(p, ol[j]);
            kimi_ld8(p + 8, ol[j] + 8);
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++) ol[j][i] = 0.f;
        }
    }

    const int row0 = h * rows_h + nope;
    for (int d0 = wg * AB_U; d0 < dv; d0 += nw * AB_U) {
        uint4 raw[AB_U];
        float sc[AB_U];
        ab_load(w, ws, row0, d0, dv, lane, raw, sc);
#pragma unroll
        for (int u = 0; u < AB_U; u++) {
            if (d0 + u < dv) {
                float wf[16];
                ab_dequant(raw[u], sc[u], wf);
#pragma unroll
                for (int j = 0; j < AB_TOK; j++) {
                    if (j < nt) {
                        float p = 0.f;
#pragma unroll
                        for (int i = 0; i < 16; i++) p += wf[i] * ol[j][i];
                        p = kimi_warp_sum(p);
                        if (lane == 0) {
                            out[((size_t) (t0 + j) * H + h) * dv + d0 + u] = p;
                        }
                    }
                }
            }
        }
    }
}

static int
absorb_check(const void *x, const void *y, int T, int H, int R, int nope, int dv,
             const uint8_t *w, const float *ws, kimi_err_t *err)
{
    if (x == NULL || y == NULL || w == NULL || ws == NULL || T < 0 || H <= 0 || R != AB_R
        || nope <= 0 || nope > AB_MAX_NOPE || dv <= 0) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_absorb: T=%d H=%d R=%d nope=%d dv=%d "
                            "(R == %d, nope <= %d)", T, H, R, nope, dv, AB_R, AB_MAX_NOPE);
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
    dim3 grid(H, (T + AB_TOK - 1) / AB_TOK, AB_R / AB_QC);
    KIMI_LAUNCH(err, absorb_q_kernel, grid, AB_WARPS * 32, 0, s, q, T, H, nope, P, kv_b, kv_b_s,
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
    /* a head's rows over z blocks, so that the grid has ~66 blocks or more
     * (64 heads: 2 a head; 16 heads, Moonlight's or a TP=4 rank's: 5) */
    int z = (66 + H - 1) / H;
    z = z < (dv + AB_U - 1) / AB_U ? z : (dv + AB_U - 1) / AB_U;
    dim3 grid(H, (T + AB_TOK - 1) / AB_TOK, z);
    KIMI_LAUNCH(err, absorb_o_kernel, grid, AB_WARPS * 32, 0, s, olat, T, H, nope, dv, kv_b, kv_b_s,
                nope + dv, out);
    return KIMI_OK;
}
