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
 *          And back: a block-scaled FP8 weight to bf16 (the expanded MLA
 *          prefill's kv_b, for a bf16 GEMM on its bf16 latent rows).
 * Twin:    the act-quant and kimi_fp8_dequant of engine/backend/cpu/ops.h.
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

/* 16 codes a thread: out = bf16(code * ws[r/128][c/128]) */
static __global__ void
dequant_kernel(const uint8_t *__restrict__ w, const float *__restrict__ ws, int rows, int cols,
               uint16_t *__restrict__ out)
{
    KIMI_GRID_ENTRY();
    const size_t i = ((size_t) blockIdx.x * blockDim.x + threadIdx.x) * 16;
    if (i >= (size_t) rows * cols) {
        return;
    }
    const int r = (int) (i / cols), c = (int) (i % cols);
    const float sc = ws[(size_t) (r / 128) * ((cols + 127) / 128) + c / 128];
    const uint4 q = *(const uint4 *) (w + i);
    const uint32_t qw[4] = { q.x, q.y, q.z, q.w };
    uint32_t o[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const uint32_t b = qw[j / 2] >> (16 * (j & 1));
        o[j] = (uint32_t) kimi_f2bf(kimi_fp82f(b & 0xff) * sc)
               | (uint32_t) kimi_f2bf(kimi_fp82f((b >> 8) & 0xff) * sc) << 16;
    }
    uint4 *dst = (uint4 *) (out + i);
    dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
    dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
}

extern "C" int
kimi_fp8_dequant_bf16(const uint8_t *w, const float *ws, int rows, int cols, kimi_bf16_t *out,
                      cudaStream_t s, kimi_err_t *err)
{
    if (w == NULL || ws == NULL || out == NULL || rows <= 0 || cols <= 0 || cols % 16 != 0
        || (((uintptr_t) w | (uintptr_t) out) & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "fp8_dequant_bf16: rows=%d cols=%d (cols %% 16, "
                            "16-byte aligned)", rows, cols);
    }
    const size_t threads = (size_t) rows * cols / 16;
    KIMI_LAUNCH(err, dequant_kernel, (unsigned) ((threads + 255) / 256), 256, 0, s, w, ws, rows,
                cols, out);
    return KIMI_OK;
}
