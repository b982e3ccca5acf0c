/*
 * Hopper warpgroup matrix multiply (wgmma, sm_90a) for the kernels that can
 * feed it from shared memory: a warpgroup (4 consecutive warps, the first a
 * multiple of 4) issues D[64 x N] (+)= A[64 x 16] * B[16 x N] asynchronously.
 *
 * Operands live in shared memory in the 128-byte swizzled layout: rows of 64
 * bf16 (128 bytes), the 16-byte chunk c of row r stored at chunk c ^ (r % 8),
 * 8-row groups of 1024 bytes, every tile 1024-byte aligned (the hardware
 * applies the XOR on absolute address bits).  wg_swz128() gives the byte
 * offset of element (r, k) in such a 64-column block.
 *
 *   K-major operand (rows of the 64-col block are M or N, K contiguous):
 *     SBO = 1024 (next 8 rows); LBO unused; k16 step = +32 bytes.
 *   N-major B (rows are K, N contiguous in 64-col blocks of R rows):
 *     LBO = 128 * R (next 64 columns of N), SBO = 1024 (next 8 rows of K);
 *     k16 step = +2048 bytes.
 *
 * Accumulators: thread (warp w of the group, lane l) holds rows 16w + l/4 and
 * 16w + l/4 + 8, columns 8j + 2(l%4) and +1, as d[4j..4j+3] = (r, c), (r, c+1),
 * (r+8, c), (r+8, c+1): the mma.sync m16n8 fragment, repeated per 8 columns.
 *
 * Ordering: shared-memory operands written by ordinary stores or cp.async
 * need wg_fence_proxy() (each writer) and a barrier before the wgmma reads
 * them; registers touched outside wgmma need wg_arrive() before the first
 * wgmma; results are valid after wg_commit() + wg_wait<0>().
 */

#ifndef KIMI_WGMMA_CUH
#define KIMI_WGMMA_CUH

#include "kimi_cuda.cuh"

static __device__ __forceinline__ uint32_t wg_swz128(int r, int k)
{
    return (uint32_t) (r * 128 + ((((k >> 3) ^ r) & 7) << 4) + (k & 7) * 2);
}

static __device__ __forceinline__ uint64_t
wg_desc(uint32_t smem_addr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t) ((smem_addr & 0x3ffff) >> 4)
           | (uint64_t) ((lbo >> 4) & 0x3fff) << 16
           | (uint64_t) ((sbo >> 4) & 0x3fff) << 32
           | (uint64_t) 1 << 62;                  /* 128-byte swizzle */
}

/* No swizzle: 8-row x 16-byte core matrices, each 128 contiguous bytes;
 * K-major: LBO = the next core matrix along K, SBO = the next 8 rows. */
static __device__ __forceinline__ uint64_t
wg_desc_noswz(uint32_t smem_addr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t) ((smem_addr & 0x3ffff) >> 4)
           | (uint64_t) ((lbo >> 4) & 0x3fff) << 16
           | (uint64_t) ((sbo >> 4) & 0x3fff) << 32;
}

static __device__ __forceinline__ void wg_arrive(void)
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wg_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
static __device__ __forceinline__ void wg_wait(void)
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}

static __device__ __forceinline__ void wg_fence_proxy(void)
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* Keeps the compiler from moving accumulator reads/writes across the
 * asynchronous wgmma (it cannot see that the instruction is still running). */
template <int N>
static __device__ __forceinline__ void wg_fence_regs(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) {
        asm volatile("" : "+f"(d[i]) :: "memory");
    }
}

/* The same for an A operand held in registers (the RS forms read it until
 * the wgmma completes): fence after the wait, before it is written again. */
template <int M, int N>
static __device__ __forceinline__ void wg_fence_regs(uint32_t (&a)[M][N])
{
#pragma unroll
    for (int i = 0; i < M; i++) {
#pragma unroll
        for (int j = 0; j < N; j++) {
            asm volatile("" : "+r"(a[i][j]) :: "memory");
        }
    }
}

/* D[64 x N] (+)= A[64 x 16] B[16 x N] on bf16, fp32 accumulators; A K-major,
 * B K-major (TRANS_B 0) or N-major (1); accumulate 0 overwrites D. */
template <int TRANS_B>
static __device__ __forceinline__ void
wgmma_m64n64k16_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, %35;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_B));
}

/* The 128 fp32 accumulators of an m64n256 wgmma: the operand list of the
 * instruction string and the matching asm outputs. */
#define WG_D128_OPERANDS \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31," \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63," \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79," \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95," \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111," \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define WG_D128_OUTPUTS(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

template <int TRANS_B>
static __device__ __forceinline__ void
wgmma_m64n256k16_bf16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int accumulate)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        WG_D128_OPERANDS
        "}, %128, %129, p, 1, 1, 0, %131;\n"
        "}\n"
        : WG_D128_OUTPUTS(d)
        : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_B));
}

/* The same with A from registers (a0..a3: the m16n8k16 A fragment of this
 * warp's 16 rows: (r, 2c..2c+1), (r+8, ..), (r, 2c+8..), (r+8, 2c+8..), r =
 * lane / 4, c = lane % 4, two bf16 a register): the layout of a D of N = 16
 * packed to bf16 pairs, so a softmax's P feeds P V without shared memory.
 * The registers must not change until the wgmma has completed. */
template <int TRANS_B>
static __device__ __forceinline__ void
wgmma_m64n256k16_bf16_rs(float (&d)[128], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                         uint64_t desc_b)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.eq.u32 p, 1, 1;\n"                 /* accumulate */
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        WG_D128_OPERANDS
        "}, {%128, %129, %130, %131}, %132, p, 1, 1, %133;\n"
        "}\n"
        : WG_D128_OUTPUTS(d)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b), "n"(TRANS_B));
}

/* The 64 fp32 accumulators of an m64n128 wgmma. */
#define WG_D64_OPERANDS \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31," \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_D64_OUTPUTS(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

/* D[64 x 128] += A[64 x 16] B[16 x 128] on bf16, A from registers (the
 * fragment of wgmma_m64n256k16_bf16_rs), B K-major (TRANS_B 0) or N-major (1). */
template <int TRANS_B>
static __device__ __forceinline__ void
wgmma_m64n128k16_bf16_rs(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                         uint64_t desc_b)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.eq.u32 p, 1, 1;\n"                 /* accumulate */
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        WG_D64_OPERANDS
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, %69;\n"
        "}\n"
        : WG_D64_OUTPUTS(d)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b), "n"(TRANS_B));
}

/* D[64 x 64] += A[64 x 16] B[16 x 64] on f16 (an e4m3 value widens to f16
 * exactly, one instruction a pair), A from registers (the fragment of
 * wgmma_m64n256k16_bf16_rs), B K-major in shared memory. */
static __device__ __forceinline__ void
wgmma_m64n64k16_f16_rs(float (&d)[32], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint64_t desc_b)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.eq.u32 p, 1, 1;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b));
}

/* D[64 x 64] (+)= A[64 x 32] B[32 x 64] on e4m3 (both K-major). */
static __device__ __forceinline__ void
wgmma_m64n64k32_e4m3(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

/* D[64 x N] (+)= A[64 x 32] B[32 x N] on e4m3, fp32 accumulators; A and B
 * K-major (the only layout fp8 wgmma takes): a k32 step is +32 bytes. */
static __device__ __forceinline__ void
wgmma_m64n128k32_e4m3(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

#endif
