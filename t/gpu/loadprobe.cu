/*
 * How fast can one persistent block per SM stream 36 KB chunks (one fp8
 * MLA cache block of 64 rows) through shared memory, with nothing else to
 * do?  The fp8 decode kernel's loads alone (bulk copies, 4 stages of 36 KB,
 * released the moment they land) reached 62 % of the D2D copy bandwidth;
 * this probe says whether that is the bulk-copy path or the amount in
 * flight, by the same chunks through three load paths:
 *
 *   bulk     one lane issues cp.async.bulk of the whole chunk (the kernel's way)
 *   cpasync  128 producer threads issue 16-byte cp.async.cg, arriving on the
 *            stage's mbarrier (.noinc) when theirs land
 *   ldg      every thread loads its 16-byte pieces into registers (no
 *            shared memory; the copy kernel's way), UNROLL pieces in flight
 *   tma2d    the bf16 decode kernel's way: a 64-row tile of a row-major
 *            [tokens][576] bf16 cache as 9 boxes of 64 columns x 64 rows
 *            (128-byte swizzle), one lane issuing them
 *
 * Chunks are visited in a random order (the paged cache's blocks are
 * scattered), each block a contiguous run of the list (the decode kernels'
 * flat schedule).  GB/s counts bytes read; the copy floor counts read +
 * written, as kbench does.
 *
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a t/gpu/loadprobe.cu -o build/loadprobe
 */

#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

static __device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t) __cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void mbar_init(uint64_t *b, uint32_t n)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(b)), "r"(n) : "memory");
}

static __device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t par)
{
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_addr(b)), "r"(par)
                     : "memory");
    } while (!done);
}

static __device__ __forceinline__ void mbar_arrive(uint64_t *b)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(b)) : "memory");
}

/* consumers: 4 warps; each thread folds 16 bytes of the stage into acc */
#define CONSUMERS 128

template <int MODE>
__global__ void __launch_bounds__(256, 1)
probe_smem(const uint8_t *__restrict__ src, const int *__restrict__ order, int n_chunks, int chunk, int stages,
           uint32_t *__restrict__ sink, const __grid_constant__ CUtensorMap map)
{
    extern __shared__ __align__(128) uint8_t sm[];
    uint64_t *full = (uint64_t *) sm, *empty = full + 8;
    uint8_t *stage0 = sm + 1024;   /* 1024-aligned for the swizzled boxes */
    const int per = (n_chunks + gridDim.x - 1) / gridDim.x, c0 = blockIdx.x * per;
    const int c1 = min(n_chunks, c0 + per);
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; s++) {
            mbar_init(&full[s], MODE == 1 ? 128 : 1);
            mbar_init(&empty[s], CONSUMERS / 32);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x >= CONSUMERS) {   /* producers: warps 4-7 */
        const int pt = threadIdx.x - CONSUMERS;
        if (MODE != 1 && pt >= 32) {   /* one warp issues the bulk copies */
            return;
        }
        for (int c = c0, i = 0; c < c1; c++, i++) {
            const int s = i % stages;
            if (i >= stages) {
                mbar_wait(&empty[s], (i / stages - 1) & 1);
            }
            uint8_t *dst = stage0 + (size_t) s * chunk;
            const uint8_t *g = src + (size_t) order[c] * chunk;
            if (MODE == 0) {
                if (pt == 0) {
                    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                                     smem_addr(&full[s])),
                                 "r"(chunk)
                                 : "memory");
                    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
                                 "[%3];\n" ::"r"(smem_addr(dst)),
                                 "l"(g), "r"(chunk), "r"(smem_addr(&full[s]))
                                 : "memory");
                }
            } else if (MODE == 2) {
                if (pt == 0) {
                    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                                     smem_addr(&full[s])),
                                 "r"(chunk)
                                 : "memory");
                    for (int j = 0; j < chunk / 8192; j++) {
                        asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                                     " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_addr(dst + j * 8192)),
                                     "l"(&map), "r"(64 * j), "r"(order[c] * 64), "r"(smem_addr(&full[s]))
                                     : "memory");
                    }
                }
            } else {
                for (int o = pt * 16; o < chunk; o += 128 * 16) {
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst + o)), "l"(g + o)
                                 : "memory");
                }
                asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(&full[s]))
                             : "memory");
            }
        }
        return;
    }
    uint32_t acc = 0;
    for (int c = c0, i = 0; c < c1; c++, i++) {
        const int s = i % stages;
        mbar_wait(&full[s], (i / stages) & 1);
        acc ^= *(const uint32_t *) (stage0 + (size_t) s * chunk + threadIdx.x * 16);
        __syncwarp();
        if ((threadIdx.x & 31) == 0) {
            mbar_arrive(&empty[s]);
        }
    }
    if (acc == 0x9e3779b9u) {   /* practically never: keeps the reads */
        sink[blockIdx.x] = acc;
    }
}

template <int UNROLL>
__global__ void __launch_bounds__(256)
probe_ldg(const uint8_t *__restrict__ src, const int *__restrict__ order, int n_chunks, int chunk,
          uint32_t *__restrict__ sink)
{
    const int per = (n_chunks + gridDim.x - 1) / gridDim.x, c0 = blockIdx.x * per;
    const int c1 = min(n_chunks, c0 + per);
    const int pieces = chunk / 16, total = (c1 - c0) * pieces;
    uint32_t acc = 0;
    for (int base = threadIdx.x; base < total; base += blockDim.x * UNROLL) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int p = base + u * blockDim.x;
            if (p < total) {
                const uint8_t *g = src + (size_t) order[c0 + p / pieces] * chunk + (p % pieces) * 16;
                asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w)
                             : "l"(g));
            } else {
                v[u] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
        }
    }
    if (acc == 0x9e3779b9u) {
        sink[blockIdx.x * blockDim.x + threadIdx.x] = acc;
    }
}

__global__ void fill(uint32_t *p, size_t n)
{
    for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t) i * 2654435761u + 12345u;
        x ^= x >> 13;
        p[i] = x | 0x01010101u;   /* never zero */
    }
}

struct run_args {
    const char *name;
    int mode;   /* 0 bulk, 1 cpasync, 2 ldg, 3 tma2d */
    int stages, chunk, blocks_per_sm, unroll;
    int ws_mb;  /* > 0: chunks drawn from the first ws_mb MB (L2-resident), not a permutation */
};

static CUtensorMap map;   /* the bf16 cache as [rows][576], 64 x 64 boxes */

static void
make_map(const void *base, uint64_t rows)
{
    typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
    void *p = NULL;
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    const cuuint64_t dim[2] = {576, rows}, stride[1] = {576 * 2};
    const cuuint32_t box[2] = {64, 64}, es[2] = {1, 1};
    if (((encode_fn) p)(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *) base, dim, stride, box, es,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled failed\n");
        exit(1);
    }
}

static float
time_it(const run_args &a, const uint8_t *src, const int *order, int n_chunks, uint32_t *sink, int sms)
{
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int grid = sms * a.blocks_per_sm;
    const size_t smem = 2048 + (size_t) a.stages * a.chunk;
    auto launch = [&]() {
        if (a.mode == 0) {
            probe_smem<0><<<grid, 256, smem>>>(src, order, n_chunks, a.chunk, a.stages, sink, map);
        } else if (a.mode == 1) {
            probe_smem<1><<<grid, 256, smem>>>(src, order, n_chunks, a.chunk, a.stages, sink, map);
        } else if (a.mode == 3) {
            probe_smem<2><<<grid, 256, smem>>>(src, order, n_chunks, a.chunk, a.stages, sink, map);
        } else if (a.unroll == 4) {
            probe_ldg<4><<<grid, 256>>>(src, order, n_chunks, a.chunk, sink);
        } else if (a.unroll == 8) {
            probe_ldg<8><<<grid, 256>>>(src, order, n_chunks, a.chunk, sink);
        } else {
            probe_ldg<16><<<grid, 256>>>(src, order, n_chunks, a.chunk, sink);
        }
    };
    launch();
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    float best = 1e30f;
    for (int r = 0; r < 5; r++) {
        CK(cudaEventRecord(e0));
        for (int i = 0; i < 10; i++) launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        best = ms / 10 < best ? ms / 10 : best;
    }
    CK(cudaGetLastError());
    return best;
}

int
main(void)
{
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const size_t copy_n = (size_t) 2 << 30;
    uint8_t *ca, *cb;
    CK(cudaMalloc(&ca, copy_n));
    CK(cudaMalloc(&cb, copy_n));
    fill<<<1024, 256>>>((uint32_t *) ca, copy_n / 4);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float copy_ms = 1e30f;
    for (int r = 0; r < 4; r++) {
        CK(cudaEventRecord(e0));
        CK(cudaMemcpyAsync(cb, ca, copy_n, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        copy_ms = ms < copy_ms ? ms : copy_ms;
    }
    const double copy_gbs = 2.0 * copy_n / (copy_ms * 1e6);
    CK(cudaFree(cb));
    int clk_khz;
    CK(cudaDeviceGetAttribute(&clk_khz, cudaDevAttrClockRate, 0));
    printf("floor  D2D copy, read+write, 2 GiB: %.0f GB/s; %d SMs\n", copy_gbs, sms);

    /* B=64 x 8K of the fp8 cache: 8192 blocks of 64 rows */
    const int chunk_big = 36864, n_big = 8192;
    const int n_order = 4 * n_big;   /* room for the 9 KB chunks */
    int *order, *horder = (int *) malloc(sizeof(int) * n_order);
    CK(cudaMalloc(&order, sizeof(int) * n_order));
    uint32_t *sink;
    CK(cudaMalloc(&sink, sizeof(uint32_t) * 1 << 20));
    CK(cudaFuncSetAttribute(probe_smem<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    CK(cudaFuncSetAttribute(probe_smem<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    CK(cudaFuncSetAttribute(probe_smem<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    make_map(ca, copy_n / (576 * 2));

    const run_args runs[] = {
        {"bulk", 0, 2, 36864, 1, 0},   {"bulk", 0, 3, 36864, 1, 0},   {"bulk", 0, 4, 36864, 1, 0},
        {"bulk", 0, 5, 36864, 1, 0},   {"bulk", 0, 6, 36864, 1, 0},   {"bulk", 0, 2, 36864, 2, 0},
        {"bulk", 0, 3, 18432, 2, 0},   {"bulk", 0, 8, 18432, 1, 0},   {"bulk", 0, 8, 9216, 1, 0},
        {"cpasync", 1, 2, 36864, 1, 0}, {"cpasync", 1, 3, 36864, 1, 0}, {"cpasync", 1, 4, 36864, 1, 0},
        {"cpasync", 1, 5, 36864, 1, 0}, {"cpasync", 1, 2, 36864, 2, 0}, {"cpasync", 1, 8, 18432, 1, 0},
        {"bulk", 0, 2, 73728, 1, 0},   {"bulk", 0, 3, 73728, 1, 0},
        {"tma2d", 3, 2, 73728, 1, 0},  {"tma2d", 3, 3, 73728, 1, 0},
        {"ldg", 2, 0, 36864, 1, 4},    {"ldg", 2, 0, 36864, 1, 8},    {"ldg", 2, 0, 36864, 1, 16},
        {"ldg", 2, 0, 36864, 2, 8},    {"ldg", 2, 0, 36864, 4, 8},
        /* L2 to SM: the grouped GEMM's stage (48 KB: 4 weight boxes + the
         * activation rows) re-read from a working set that L2 holds */
        {"bulk", 0, 4, 49152, 1, 0, 8}, {"bulk", 0, 4, 49152, 1, 0, 16}, {"bulk", 0, 4, 49152, 1, 0, 32},
        {"bulk", 0, 2, 49152, 2, 0, 16}, {"bulk", 0, 8, 24576, 1, 0, 16},
        {"tma2d", 3, 3, 73728, 1, 0, 16}, {"ldg", 2, 0, 36864, 2, 8, 16},
    };
    printf("%-8s %6s %7s %6s %6s %9s %8s %8s\n", "path", "stages", "chunk", "blk/SM", "unroll", "in-flight", "GB/s",
           "of copy");
    for (const run_args &a : runs) {
        const int n_chunks = (int) ((size_t) n_big * chunk_big / a.chunk);
        srand(7);   /* a permutation of this run's chunks: every byte read once */
        for (int i = 0; i < n_chunks; i++) horder[i] = i;
        for (int i = n_chunks - 1; i > 0; i--) {
            const int j = rand() % (i + 1), t = horder[i];
            horder[i] = horder[j];
            horder[j] = t;
        }
        if (a.ws_mb > 0) {   /* the same count of reads over a set L2 holds */
            const int n_set = (int) (((size_t) a.ws_mb << 20) / a.chunk);
            for (int i = 0; i < n_chunks; i++) horder[i] %= n_set;
        }
        CK(cudaMemcpy(order, horder, sizeof(int) * n_chunks, cudaMemcpyHostToDevice));
        const float ms = time_it(a, ca, order, n_chunks, sink, sms);
        const double gbs = (double) n_chunks * a.chunk / (ms * 1e6);
        const int inflight_kb = a.mode == 2 ? 16 * a.unroll * 256 / 1024 * a.blocks_per_sm
                                            : a.stages * a.chunk / 1024 * a.blocks_per_sm;
        printf("%-8s %6d %7d %6d %6d %6d KB %8.0f %7.1f%%", a.name, a.stages, a.chunk, a.blocks_per_sm, a.unroll,
               inflight_kb, gbs, 100.0 * gbs / copy_gbs);
        if (a.ws_mb > 0) {   /* bytes per SM per cycle at the clock the card reports */
            printf("  L2 set %d MB: %.1f B/clk/SM at %.2f GHz", a.ws_mb, gbs * 1e9 / (sms * clk_khz * 1e3),
                   clk_khz / 1e6);
        }
        printf("\n");
    }
    return 0;
}
