/*
 * Deterministic device fills for tests, benchmarks and dummy weights.
 *
 *   v[i] = lo + (hi - lo) * u(seed, i),  u from a 64-bit mix (splitmix64)
 *   e4m3: a random finite byte with exponent field <= 14 and not NaN, so
 *         values span about +-2^-9 .. +-240 with random signs (never zero
 *         everywhere, no NaN: S.1111.111 is excluded).
 *
 * Layout:  flat arrays.  Cost: one write per element.
 * Twin:    none (test data, not model math).
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

#include <stdlib.h>
#include <string.h>

int
kimi_pdl_enabled(void)
{
    static int on = -1;     /* a benign race: every thread computes the same */

    if (on < 0) {
        const char *e = getenv("KIMI_PDL");
        on = e == NULL || strcmp(e, "0") != 0;
    }
    return on;
}

static __device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __device__ __forceinline__ float u01(uint64_t seed, size_t i)
{
    return (float) (mix64(seed * 0x100000001b3ull + i) >> 40) * (1.0f / 16777216.0f);
}

static __global__ void fill_bf16_kernel(uint16_t *p, size_t n, uint64_t seed, float lo, float hi)
{
    KIMI_GRID_ENTRY();
    for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n;
         i += (size_t) gridDim.x * blockDim.x) {
        p[i] = kimi_f2bf(lo + (hi - lo) * u01(seed, i));
    }
}

static __global__ void fill_f32_kernel(float *p, size_t n, uint64_t seed, float lo, float hi)
{
    KIMI_GRID_ENTRY();
    for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n;
         i += (size_t) gridDim.x * blockDim.x) {
        p[i] = lo + (hi - lo) * u01(seed, i);
    }
}

static __global__ void fill_fp8_kernel(uint32_t *p, size_t n4, uint64_t seed)
{
    KIMI_GRID_ENTRY();
    for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n4;
         i += (size_t) gridDim.x * blockDim.x) {
        uint64_t r = mix64(seed * 0x100000001b3ull + i);
        uint32_t w = 0;
        for (int j = 0; j < 4; j++) {
            uint32_t b = (uint32_t) (r >> (16 * j)) & 0xff;
            /* exponent field 0..14 keeps |v| <= 240 (one binade under the
             * 448 max) and never NaN; bias toward the middle binades so most
             * values look like quantised N(0,1)*k */
            uint32_t e = ((b >> 3) & 0xf) % 6 + 5;        /* 2^-2 .. 2^3 */
            uint32_t sgn = (uint32_t) (r >> (16 * j + 8)) & 1;
            w |= ((sgn << 7) | (e << 3) | (b & 7)) << (8 * j);
        }
        p[i] = w;
    }
}

/* 16-byte copy, 4 vectors in flight per thread: the bandwidth floor the
 * benchmarks measure against (a kernel's own ceiling, next to cudaMemcpy's). */
static __global__ void copy_kernel(uint4 *__restrict__ d, const uint4 *__restrict__ s, size_t n16)
{
    KIMI_GRID_ENTRY();
    const size_t stride = (size_t) gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 a = s[i], b = s[i + stride], c = s[i + 2 * stride], e = s[i + 3 * stride];
        d[i] = a;
        d[i + stride] = b;
        d[i + 2 * stride] = c;
        d[i + 3 * stride] = e;
    }
    for (; i < n16; i += stride) {
        d[i] = s[i];
    }
}

static int grid_for(size_t n)
{
    size_t g = (n + 255) / 256;
    return (int) (g > 8192 ? 8192 : (g == 0 ? 1 : g));
}

extern "C" int
kimi_fill_bf16(kimi_bf16_t *p, size_t n, uint64_t seed, float lo, float hi,
               cudaStream_t s, kimi_err_t *err)
{
    if (p == NULL && n > 0) {
        return kimi_err_set(err, KIMI_EINVAL, "fill_bf16: NULL");
    }
    KIMI_LAUNCH(err, fill_bf16_kernel, grid_for(n), 256, 0, s, p, n, seed, lo, hi);
    return KIMI_OK;
}

extern "C" int
kimi_fill_f32(float *p, size_t n, uint64_t seed, float lo, float hi,
              cudaStream_t s, kimi_err_t *err)
{
    if (p == NULL && n > 0) {
        return kimi_err_set(err, KIMI_EINVAL, "fill_f32: NULL");
    }
    KIMI_LAUNCH(err, fill_f32_kernel, grid_for(n), 256, 0, s, p, n, seed, lo, hi);
    return KIMI_OK;
}

extern "C" int
kimi_fill_fp8(uint8_t *p, size_t n, uint64_t seed, cudaStream_t s, kimi_err_t *err)
{
    if ((p == NULL && n > 0) || n % 4 != 0 || ((uintptr_t) p & 3)) {
        return kimi_err_set(err, KIMI_EINVAL, "fill_fp8: n=%zu must be a multiple of 4, aligned", n);
    }
    KIMI_LAUNCH(err, fill_fp8_kernel, grid_for(n / 4), 256, 0, s, (uint32_t *) p, n / 4, seed);
    return KIMI_OK;
}

extern "C" int
kimi_copy_d2d(void *dst, const void *src, size_t n, cudaStream_t s, kimi_err_t *err)
{
    if (dst == NULL || src == NULL || n % 16 != 0 || (((uintptr_t) dst | (uintptr_t) src) & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "copy_d2d: n=%zu must be a multiple of 16, aligned", n);
    }
    int dev = 0, sms = 132;
    KIMI_CUDA_TRY(cudaGetDevice(&dev), err);
    KIMI_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), err);
    KIMI_LAUNCH(err, copy_kernel, sms * 8, 256, 0, s, (uint4 *) dst, (const uint4 *) src, n / 16);
    return KIMI_OK;
}
