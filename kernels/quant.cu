/*
 * FP8 e4m3 activation quantisation, one fp32 scale per 1x128 group
 * (DeepSeek-V3 "dynamic" activations).
 *
 *   s[t,g]   = max(max_{k in group g} |x[t,k]|, 1e-4) / 448
 *   xq[t,k]  = e4m3_satfinite(x[t,k] / s[t,k/128])
 *
 * Layout:  x bf16 or fp32 (_f32) [T, ldx] (K used), xq [T, K]; scales token-major
 *          [T][K/128] (our GEMV kernels), MN-major [K/128][ld_mn] (cuBLASLt
 *          VEC128), or both from one pass, K % 128 == 0.  One warp per
 *          group, 4 values per lane.
 * Cost:    reads 2*T*K, writes T*K + 4*T*K/128 bytes: memory bound.
 * Twin:    the act-quant of engine/backend/cpu/ops.h.
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

template <typename X>
static __global__ void
quant_kernel(const X *__restrict__ x, int ldx, int T, int K,
             uint8_t *__restrict__ xq, float *__restrict__ sc_tok, float *__restrict__ sc_mn,
             int ld_mn)
{
    KIMI_GRID_ENTRY();
    const int groups = K / 128;
    const int gw = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (gw >= T * groups) {
        return;
    }
    const int t = gw / groups, g = gw % groups;
    float v[4], s;
    kimi_ld4(x + (size_t) t * ldx + g * 128 + lane * 4, v);
    *(uint32_t *) (xq + (size_t) t * K + g * 128 + lane * 4) = kimi_quant128_warp(v, &s);
    if (lane == 0 && sc_tok != NULL) {
        sc_tok[(size_t) t * groups + g] = s;
    }
    if (lane == 0 && sc_mn != NULL) {
        sc_mn[(size_t) g * ld_mn + t] = s;
    }
}

template <typename X>
static int
quant_launch(const X *x, int ldx, int T, int K, uint8_t *xq, float *xs, float *xs_mn,
             int ld_mn, cudaStream_t s, kimi_err_t *err)
{
    if (x == NULL || xq == NULL || (xs == NULL && xs_mn == NULL) || T < 0 || K <= 0
        || K % 128 != 0 || ldx < K || ldx % 4 != 0
        || (xs_mn != NULL && ld_mn < T)) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "fp8_quant_1x128: T=%d K=%d ldx=%d ld_mn=%d (K %% 128, ldx %% 4, a scale "
                            "output)", T, K, ldx, ld_mn);
    }
    if (((uintptr_t) x & (4 * sizeof(X) - 1)) || ((uintptr_t) xq & 3)) {
        return kimi_err_set(err, KIMI_EINVAL, "fp8_quant_1x128: x or xq misaligned");
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const int warps = T * (K / 128);
    KIMI_LAUNCH(err, quant_kernel<X>, (warps + 7) / 8, 256, 0, s, x, ldx, T, K, xq, xs, xs_mn,
                ld_mn);
    return KIMI_OK;
}

extern "C" int
kimi_fp8_quant_1x128(const kimi_bf16_t *x, int ldx, int T, int K, uint8_t *xq,
                     float *xs, float *xs_mn, int ld_mn, cudaStream_t s, kimi_err_t *err)
{
    return quant_launch(x, ldx, T, K, xq, xs, xs_mn, ld_mn, s, err);
}

extern "C" int
kimi_fp8_quant_1x128_f32(const float *x, int ldx, int T, int K, uint8_t *xq,
                         float *xs, float *xs_mn, int ld_mn, cudaStream_t s, kimi_err_t *err)
{
    return quant_launch(x, ldx, T, K, xq, xs, xs_mn, ld_mn, s, err);
}
