/*
 * Shared device helpers for kernels/ (.cu files) (C++ only, never included by C).
 *
 * Owns:   KIMI_CUDA_TRY, bf16/fp8 conversions, warp reductions, the bf16
 *         tensor-core fragment (mma.sync m16n8k16; the e4m3 one lives in
 *         fp8_tile.cuh) and the cp.async helpers.
 * Never:  allocates, synchronizes, or holds state.
 */

#ifndef KIMI_CUDA_CUH
#define KIMI_CUDA_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdint.h>

extern "C" {
#include "../engine/common/kimi_err.h"
}

#define KIMI_CUDA_TRY(call, err)                                              \
    do {                                                                      \
        cudaError_t  e_ = (call);                                             \
        if (e_ != cudaSuccess) {                                              \
            return kimi_err_set(err, KIMI_ECUDA, "%s:%d: %s: %s", __FILE__,   \
                                __LINE__, #call, cudaGetErrorString(e_));     \
        }                                                                     \
    } while (0)

/* After every launch: the launch error, and in a debug build (-DKIMI_CUDA_SYNC)
 * the kernel's own fault, pinned to this line. */
#ifdef KIMI_CUDA_SYNC
#define KIMI_CUDA_LAUNCHED(stream, err)                                       \
    do {                                                                      \
        KIMI_CUDA_TRY(cudaGetLastError(), err);                               \
        KIMI_CUDA_TRY(cudaStreamSynchronize(stream), err);                    \
    } while (0)
#else
#define KIMI_CUDA_LAUNCHED(stream, err) KIMI_CUDA_TRY(cudaGetLastError(), err)
#endif

/*
 * Programmatic dependent launch (sm_90).  Kernels launched by KIMI_LAUNCH may
 * be scheduled while the kernel before them in the stream still runs, so
 * every kernel begins with KIMI_GRID_ENTRY(): each thread waits until the
 * grid before has finished and its writes are visible, then the block lets
 * the next grid be scheduled.  Before the wait a kernel may touch only what
 * no kernel of the step writes (weights, their scales) - which is what it
 * gains: its blocks' setup and first weight loads overlap the kernel before
 * (at batch 1 most kernels are a few microseconds of launch and ramp).
 * Since each grid releases its dependents only after its own wait, what a
 * kernel two launches back wrote is also complete by then.  The weights
 * read before a wait must be complete before the stream reaches that
 * kernel: the engine uploads them with cudaMemcpy, and code that fills
 * them with a kernel synchronizes before using them.  Launched without
 * the attribute (KIMI_PDL=0, or a plain triple-chevron launch) both
 * instructions are no-ops.
 */
static __device__ __forceinline__ void kimi_grid_wait(void)
{
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

static __device__ __forceinline__ void kimi_grid_release(void)
{
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

#define KIMI_GRID_ENTRY()                                                     \
    do {                                                                      \
        kimi_grid_wait();                                                     \
        kimi_grid_release();                                                  \
    } while (0)

/* 1 unless KIMI_PDL=0 in the environment (util.cu; read once). */
int kimi_pdl_enabled(void);

/* The one way kernels/ launches: programmatic serialization when enabled,
 * the launch error (and under KIMI_CUDA_SYNC the kernel's fault) pinned to
 * the caller's line. */
template <typename... Params, typename... Args>
static int
kimi_launch_at(kimi_err_t *err, const char *file, int line, void (*kernel)(Params...), dim3 grid,
               dim3 block, size_t smem, cudaStream_t s, Args &&...args)
{
    cudaLaunchConfig_t  cfg = {};
    cudaLaunchAttribute attr[1];

    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = kimi_pdl_enabled() ? 1 : 0;
    cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, static_cast<Args &&>(args)...);
    if (e == cudaSuccess) {
        e = cudaGetLastError();
    }
#ifdef KIMI_CUDA_SYNC
    if (e == cudaSuccess) {
        e = cudaStreamSynchronize(s);
    }
#endif
    if (e != cudaSuccess) {
        return kimi_err_set(err, KIMI_ECUDA, "%s:%d: launch: %s", file, line, cudaGetErrorString(e));
    }
    return KIMI_OK;
}

/* KIMI_LAUNCH(err, kernel, grid, block, smem, stream, args...): returns the
 * error from the enclosing function. */
#define KIMI_LAUNCH(err, ...)                                                 \
    do {                                                                      \
        int rc_ = kimi_launch_at(err, __FILE__, __LINE__, __VA_ARGS__);       \
        if (rc_ != KIMI_OK) {                                                 \
            return rc_;                                                       \
        }                                                                     \
    } while (0)

#define KIMI_FP8_MAX 448.0f

static __device__ __forceinline__ float kimi_bf2f(uint16_t v)
{
    return __uint_as_float((uint32_t) v << 16);
}

/* Round to nearest even, NaN kept NaN. */
static __device__ __forceinline__ uint16_t kimi_f2bf(float f)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

static __device__ __forceinline__ float kimi_fp82f(uint8_t v)
{
    __nv_fp8_e4m3 q;
    q.__x = v;
    return (float) q;
}

/* Saturating: |x| > 448 becomes +-448, as torch's e4m3 cast of a scaled
 * group never exceeds 448 anyway. */
static __device__ __forceinline__ uint8_t kimi_f2fp8(float f)
{
    return (uint8_t) __nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
}

/* Element access for kernels instantiated on bf16 (uint16_t) or fp32 storage:
 * the engine keeps its activations in fp32 (as the CPU oracle does), the
 * kernel checks also drive the bf16 forms. */
static __device__ __forceinline__ float kimi_ldf(const uint16_t *p)
{
    return kimi_bf2f(*p);
}

static __device__ __forceinline__ float kimi_ldf(const float *p)
{
    return *p;
}

static __device__ __forceinline__ void kimi_stf(uint16_t *p, float v)
{
    *p = kimi_f2bf(v);
}

static __device__ __forceinline__ void kimi_stf(float *p, float v)
{
    *p = v;
}

/* 4 / 8 consecutive values; p aligned to 4 / 8 elements. */
static __device__ __forceinline__ void kimi_ld4(const uint16_t *p, float v[4])
{
    const uint2 r = *(const uint2 *) p;
    v[0] = __uint_as_float(r.x << 16);
    v[1] = __uint_as_float(r.x & 0xffff0000u);
    v[2] = __uint_as_float(r.y << 16);
    v[3] = __uint_as_float(r.y & 0xffff0000u);
}

static __device__ __forceinline__ void kimi_ld4(const float *p, float v[4])
{
    const float4 r = *(const float4 *) p;
    v[0] = r.x;
    v[1] = r.y;
    v[2] = r.z;
    v[3] = r.w;
}

template <typename E>
static __device__ __forceinline__ void kimi_ld8(const E *p, float v[8])
{
    kimi_ld4(p, v);
    kimi_ld4(p + 4, v + 4);
}

static __device__ __forceinline__ void kimi_st4(uint16_t *p, const float v[4])
{
    uint2 r;
    r.x = (uint32_t) kimi_f2bf(v[0]) | (uint32_t) kimi_f2bf(v[1]) << 16;
    r.y = (uint32_t) kimi_f2bf(v[2]) | (uint32_t) kimi_f2bf(v[3]) << 16;
    *(uint2 *) p = r;
}

static __device__ __forceinline__ void kimi_st4(float *p, const float v[4])
{
    *(float4 *) p = make_float4(v[0], v[1], v[2], v[3]);
}

static __device__ __forceinline__ float kimi_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

static __device__ __forceinline__ float kimi_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

/* One 1x128 group quantised by a warp, lane l holding elements 4l..4l+3:
 * returns the lane's 4 e4m3 codes packed (element 4l in the low byte) and
 * the group's scale, s = max(amax, 1e-4) / 448 (every FP8 activation of the
 * engine: kimi_fp8_quant_1x128, the MoE's h, the fused router). */
static __device__ __forceinline__ uint32_t kimi_quant128_warp(const float v[4], float *scale)
{
    float am = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    am = kimi_warp_max(am);
    const float s = fmaxf(am, 1e-4f) / KIMI_FP8_MAX;
    *scale = s;
    return (uint32_t) kimi_f2fp8(v[0] / s) | (uint32_t) kimi_f2fp8(v[1] / s) << 8
           | (uint32_t) kimi_f2fp8(v[2] / s) << 16 | (uint32_t) kimi_f2fp8(v[3] / s) << 24;
}

/* D[16x8] += A[16x16] * B[16x8], bf16 in, fp32 accumulate (same lane map
 * with 2 elements per register: a0 A[g][2t..], a1 A[g+8][2t..], a2
 * A[g][8+2t..], a3 A[g+8][8+2t..]; b0 B[2t..][g], b1 B[8+2t..][g]). */
static __device__ __forceinline__ void kimi_mma_bf16(float d[4], uint32_t a0,
    uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Streaming 16-byte load that should not stay in L1 (weights are read once). */
static __device__ __forceinline__ uint4 kimi_ld_stream(const void *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

static __device__ __forceinline__ uint32_t kimi_smem_addr(const void *p)
{
    return (uint32_t) __cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void kimi_cp_async16(void *smem, const void *gmem)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
                 :: "r"(kimi_smem_addr(smem)), "l"(gmem));
}

static __device__ __forceinline__ void kimi_cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
static __device__ __forceinline__ void kimi_cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

#endif
