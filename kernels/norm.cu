/*
 * RMSNorm, alone and fused with the residual add.  bf16 in and out, fp32 math.
 *
 *   r[t,:] = x[t,:] + res[t,:]                       (stored back into res)
 *   y[t,:] = r[t,:] * rsqrt(mean_i(r[t,i]^2) + eps) * w[:]
 *
 * Layout:  x, res, y row-major [T, D], D contiguous, D % 8 == 0; w [D].
 * Cost:    per row reads 4*D bytes (x, res) and writes 4*D (res, y); ~5*D
 *          FLOPs, so memory bound: floor = 8*D*T bytes / copy bandwidth.
 *          (The second pass re-reads r from L1/L2, not HBM.)
 * Twin:    kimi_cpu_rmsnorm / residual add in engine/backend/cpu/ops.h.
 */

#include <cooperative_groups.h>

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

namespace cg = cooperative_groups;

#define NORM_THREADS 256
#define NORM_VEC     8         /* float4 a thread kept in registers: a slice <= 8192 */

/* One block per row; 16-byte vectors of 8 bf16. */
template <bool RESIDUAL>
static __global__ void __launch_bounds__(NORM_THREADS)
rmsnorm_kernel(const uint16_t *__restrict__ x,      // [T, D]
               uint16_t *__restrict__ res,          // [T, D] or unused
               const uint16_t *__restrict__ w,      // [D]
               uint16_t *__restrict__ y,            // [T, D]
               int D, float eps)
{
    KIMI_GRID_ENTRY();
    __shared__ float part[NORM_THREADS / 32];
    const size_t  row = (size_t) blockIdx.x * D;
    const uint4  *xv = (const uint4 *) (x + row);
    uint4        *rv = (uint4 *) ((RESIDUAL ? res : (uint16_t *) x) + row);
    const int     nv = D / 8;
    float         ss = 0.f;

    for (int i = threadIdx.x; i < nv; i += NORM_THREADS) {
        uint4  a = xv[i];
        const uint16_t *pa = (const uint16_t *) &a;
        if (RESIDUAL) {
            uint4  b = rv[i];
            uint16_t *pb = (uint16_t *) &b;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                /* the sum is rounded to bf16 first: that is what is stored */
                pb[j] = kimi_f2bf(kimi_bf2f(pa[j]) + kimi_bf2f(pb[j]));
                float v = kimi_bf2f(pb[j]);
                ss += v * v;
            }
            rv[i] = b;
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float v = kimi_bf2f(pa[j]);
                ss += v * v;
            }
        }
    }
    ss = kimi_warp_sum(ss);
    if ((threadIdx.x & 31) == 0) {
        part[threadIdx.x >> 5] = ss;
    }
    __syncthreads();
    float tot = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_THREADS / 32; i++) {
        tot += part[i];
    }
    const float rstd = rsqrtf(tot / (float) D + eps);

    const uint4 *wv = (const uint4 *) w;
    uint4       *yv = (uint4 *) (y + row);
    for (int i = threadIdx.x; i < nv; i += NORM_THREADS) {
        uint4  a = rv[i], b = wv[i], o;
        const uint16_t *pa = (const uint16_t *) &a, *pb = (const uint16_t *) &b;
        uint16_t *po = (uint16_t *) &o;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            po[j] = kimi_f2bf(kimi_bf2f(pa[j]) * rstd * kimi_bf2f(pb[j]));
        }
        yv[i] = o;
    }
}

static int
norm_check(const void *x, const void *w, const void *y, int T, int D,
           kimi_err_t *err)
{
    if (x == NULL || w == NULL || y == NULL || T < 0 || D <= 0 || D % 8 != 0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "rmsnorm: T=%d D=%d (need D %% 8 == 0, buffers)", T, D);
    }
    if (((uintptr_t) x | (uintptr_t) w | (uintptr_t) y) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "rmsnorm: buffers not 16-byte aligned");
    }
    return KIMI_OK;
}

extern "C" int
kimi_rmsnorm_bf16(const kimi_bf16_t *x, const kimi_bf16_t *w, kimi_bf16_t *y,
                  int T, int D, float eps, cudaStream_t s, kimi_err_t *err)
{
    int rc = norm_check(x, w, y, T, D, err);
    if (rc != KIMI_OK || T == 0) {
        return rc;
    }
    KIMI_LAUNCH(err, rmsnorm_kernel<false>, T, NORM_THREADS, 0, s, x, nullptr, w, y, D, eps);
    return KIMI_OK;
}

extern "C" int
kimi_rmsnorm_residual_bf16(const kimi_bf16_t *x, kimi_bf16_t *res,
                           const kimi_bf16_t *w, kimi_bf16_t *y, int T, int D,
                           float eps, cudaStream_t s, kimi_err_t *err)
{
    int rc = norm_check(x, w, y, T, D, err);
    if (rc != KIMI_OK || T == 0) {
        return rc;
    }
    if (res == NULL || ((uintptr_t) res & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "rmsnorm_residual: res NULL or unaligned");
    }
    KIMI_LAUNCH(err, rmsnorm_kernel<true>, T, NORM_THREADS, 0, s, x, res, w, y, D, eps);
    return KIMI_OK;
}

/* ---- fp32 residual stream ----------------------------------------------- */

/* The engine's form: res and y fp32 (the CPU oracle keeps the residual
 * stream in fp32; rounding it to bf16 every layer moves FP8 codes of the
 * next GEMM inputs).  y = w * (r * rstd) in the oracle's order. */
/* The normed float4 v of group-of-128 member i (a warp holds one whole
 * group: D % 128 == 0) to e4m3 codes with the group's scale, exactly as
 * quant.cu's kernel does from y. */
static __device__ __forceinline__ void
norm_quant4(const float4 v, int i, int t, uint8_t *__restrict__ xq, float *__restrict__ xs,
            float *__restrict__ xs_mn, int ld_mn)
{
    const float f[4] = { v.x, v.y, v.z, v.w };
    float s;
    *(uint32_t *) (xq + 4 * i) = kimi_quant128_warp(f, &s);
    if ((i & 31) == 0 && xs_mn != NULL) {
        xs_mn[(size_t) (i / 32) * ld_mn + t] = s;
    }
    if ((i & 31) == 0) {
        xs[i / 32] = s;
    }
}

/* y[i] = w * (a * rstd) for float4 i of row t (D wide), and its codes */
template <bool QUANT>
static __device__ __forceinline__ void
norm_out4(const float4 a, int i, float rstd, const uint16_t *__restrict__ w,
          float *__restrict__ y, int t, int D, uint8_t *__restrict__ xq,
          float *__restrict__ xs, float *__restrict__ xs_mn, int ld_mn)
{
    float wf[4];
    kimi_ld4(w + 4 * i, wf);
    const float4 o = make_float4(wf[0] * (a.x * rstd), wf[1] * (a.y * rstd),
                                 wf[2] * (a.z * rstd), wf[3] * (a.w * rstd));
    ((float4 *) (y + (size_t) t * D))[i] = o;
    if (QUANT) {
        norm_quant4(o, i, t, xq + (size_t) t * D, xs + (size_t) t * (D / 128), xs_mn, ld_mn);
    }
}

/* A row over a cluster of CS blocks, each a D / CS slice (whole 1x128
 * groups, so the fused quantisation stays in the block): one block a row
 * was a dependent chain of loads, reductions and quantisations of 7
 * float4 a thread, ~5 us above launch at T = 1 for D = 7168.  The sum of
 * squares: warps in order, then the blocks in rank order (DSMEM), so a
 * row's result does not depend on T. */
template <bool RESIDUAL, bool QUANT, int CS>
static __global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(NORM_THREADS)
rmsnorm_f32_kernel(const float *__restrict__ x, float *__restrict__ res,
                   const uint16_t *__restrict__ w, float *__restrict__ y, int D, float eps,
                   uint8_t *__restrict__ xq, float *__restrict__ xs, float *__restrict__ xs_mn,
                   int ld_mn)
{
    KIMI_GRID_ENTRY();
    __shared__ float part[NORM_THREADS / 32];
    __shared__ float slice_ss;
    const int     nv = D / 4 / CS, i0 = blockIdx.x * nv;   /* this slice's float4 */
    const size_t  row = (size_t) blockIdx.y * D;
    const float4 *xv = (const float4 *) (x + row) + i0;
    float4       *rv = (float4 *) ((RESIDUAL ? res : (float *) x) + row) + i0;
    float         ss = 0.f;
    /* up to NORM_VEC float4 a thread stay in registers, their loads
     * issued together */
    float4        keep[NORM_VEC];

#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_THREADS;
        if (i < nv) {
            keep[k] = xv[i];
            if (RESIDUAL) {
                keep[k].x += rv[i].x;
                keep[k].y += rv[i].y;
                keep[k].z += rv[i].z;
                keep[k].w += rv[i].w;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_THREADS;
        if (i < nv) {
            const float4 a = keep[k];
            if (RESIDUAL) {
                rv[i] = a;
            }
            ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
        }
    }
    for (int i = threadIdx.x + NORM_VEC * NORM_THREADS; i < nv; i += NORM_THREADS) {
        float4 a = xv[i];
        if (RESIDUAL) {
            const float4 b = rv[i];
            a.x += b.x;
            a.y += b.y;
            a.z += b.z;
            a.w += b.w;
            rv[i] = a;
        }
        ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
    ss = kimi_warp_sum(ss);
    if ((threadIdx.x & 31) == 0) {
        part[threadIdx.x >> 5] = ss;
    }
    __syncthreads();
    float tot = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_THREADS / 32; i++) {
        tot += part[i];
    }
    if (CS > 1) {
        cg::cluster_group cluster = cg::this_cluster();
        if (threadIdx.x == 0) {
            slice_ss = tot;
        }
        cluster.sync();
        tot = 0.f;
#pragma unroll
        for (int r = 0; r < CS; r++) {
            tot += *cluster.map_shared_rank(&slice_ss, r);
        }
        cluster.sync();                  /* every rank has read every slice */
    }
    const float rstd = 1.f / sqrtf(tot / (float) D + eps);

#pragma unroll
    for (int k = 0; k < NORM_VEC; k++) {
        const int i = threadIdx.x + k * NORM_THREADS;
        if (i < nv) {
            norm_out4<QUANT>(keep[k], i0 + i, rstd, w, y, blockIdx.y, D, xq, xs, xs_mn, ld_mn);
        }
    }
    for (int i = threadIdx.x + NORM_VEC * NORM_THREADS; i < nv; i += NORM_THREADS) {
        norm_out4<QUANT>(rv[i], i0 + i, rstd, w, y, blockIdx.y, D, xq, xs, xs_mn, ld_mn);
    }
}

/* The cluster a row takes: the most blocks (8 at most) whose slices are
 * whole 1x128 groups */
template <bool RESIDUAL, bool QUANT>
static int
rmsnorm_f32_launch(const float *x, float *res, const kimi_bf16_t *w, float *y, int T, int D,
                   float eps, uint8_t *xq, float *xs, float *xs_mn, int ld_mn, cudaStream_t s,
                   kimi_err_t *err)
{
    const uint16_t *wb = (const uint16_t *) w;
    const int cs = D % (8 * 128) == 0 ? 8 : D % (4 * 128) == 0 ? 4 : D % (2 * 128) == 0 ? 2 : 1;
    void (*kern)(const float *, float *, const uint16_t *, float *, int, float, uint8_t *, float *,
                 float *, int) = cs == 8 ? rmsnorm_f32_kernel<RESIDUAL, QUANT, 8>
                                 : cs == 4 ? rmsnorm_f32_kernel<RESIDUAL, QUANT, 4>
                                 : cs == 2 ? rmsnorm_f32_kernel<RESIDUAL, QUANT, 2>
                                           : rmsnorm_f32_kernel<RESIDUAL, QUANT, 1>;
    KIMI_LAUNCH(err, kern, dim3(cs, T), NORM_THREADS, 0, s, x, res, wb, y, D, eps, xq, xs, xs_mn, ld_mn);
    return KIMI_OK;
}

extern "C" int
kimi_rmsnorm_f32(const float *x, const kimi_bf16_t *w, float *y, int T, int D,
                 float eps, cudaStream_t s, kimi_err_t *err)
{
    int rc = norm_check(x, w, y, T, D, err);
    if (rc != KIMI_OK || T == 0) {
        return rc;
    }
    return rmsnorm_f32_launch<false, false>(x, nullptr, w, y, T, D, eps, nullptr, nullptr, nullptr, 0, s,
                                            err);
}

extern "C" int
kimi_rmsnorm_residual_f32(const float *x, float *res, const kimi_bf16_t *w,
                          float *y, int T, int D, float eps, cudaStream_t s,
                          kimi_err_t *err)
{
    int rc = norm_check(x, w, y, T, D, err);
    if (rc != KIMI_OK || T == 0) {
        return rc;
    }
    if (res == NULL || ((uintptr_t) res & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "rmsnorm_residual: res NULL or unaligned");
    }
    return rmsnorm_f32_launch<true, false>(x, res, w, y, T, D, eps, nullptr, nullptr, nullptr, 0, s,
                                           err);
}

extern "C" int
kimi_rmsnorm_quant_f32(const float *x, float *res, const kimi_bf16_t *w, float *y,
                       int T, int D, float eps, uint8_t *xq, float *xs, float *xs_mn,
                       int ld_mn, cudaStream_t s, kimi_err_t *err)
{
    int rc = norm_check(x, w, y, T, D, err);
    if (rc != KIMI_OK || T == 0) {
        return rc;
    }
    if (D % 128 != 0 || xq == NULL || xs == NULL || ((uintptr_t) xq & 3)
        || (res != NULL && ((uintptr_t) res & 15)) || (xs_mn != NULL && ld_mn < T)) {
        return kimi_err_set(err, KIMI_EINVAL, "rmsnorm_quant: D=%d T=%d ld_mn=%d (D %% 128), "
                            "xq/xs/res", D, T, ld_mn);
    }
    return res != NULL
           ? rmsnorm_f32_launch<true, true>(x, res, w, y, T, D, eps, xq, xs, xs_mn, ld_mn, s, err)
           : rmsnorm_f32_launch<false, true>(x, nullptr, w, y, T, D, eps, xq, xs, xs_mn, ld_mn, s, err);
}
