/*
 * Hopper's asynchronous copies and the barriers they complete on, for the
 * warp-specialised kernels (a producer warpgroup fills shared-memory stages,
 * consumer warpgroups run wgmma on them):
 *
 *   mbarrier   a 64-bit shared-memory barrier with an arrival count and a
 *              transaction (byte) count; a phase completes when both reach
 *              zero.  Waiters name the phase by its parity.
 *   TMA        cp.async.bulk.tensor: a 2-D box of a tensor described by a
 *              CUtensorMap (built on the host, kept in global memory or a
 *              __grid_constant__ parameter) lands in shared memory in the
 *              map's swizzle and adds its bytes to an mbarrier's count.
 *   bulk       cp.async.bulk: contiguous bytes (a weight row's run of K)
 *              into shared memory, completing on an mbarrier like TMA.
 *   cp.async   per-thread 16-byte copies (rows TMA cannot gather); with
 *              kimi_mbar_cp_async_arrive() the barrier counts the thread's
 *              arrival when its earlier cp.async land.
 *
 * Ordering: cp.async writes are generic-proxy writes; a consumer that reads
 * the stage with wgmma runs kimi_fence_proxy_async() after its wait.
 * Registers: kimi_setmaxnreg_{dec,inc} need a kernel compiled with a
 * register cap (__launch_bounds__(threads, 1)), one role per warpgroup.
 */

#ifndef KIMI_TMA_CUH
#define KIMI_TMA_CUH

#include <cuda.h>
#include "kimi_cuda.cuh"

static __device__ __forceinline__ void kimi_mbar_init(uint64_t *bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n"
                 :: "r"(kimi_smem_addr(bar)), "r"(count) : "memory");
}

/* Makes barrier inits visible to the async proxy (TMA) before any use. */
static __device__ __forceinline__ void kimi_mbar_init_fence(void)
{
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

static __device__ __forceinline__ void kimi_mbar_arrive(uint32_t a)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(a) : "memory");
}

static __device__ __forceinline__ void kimi_mbar_arrive(uint64_t *bar)
{
    kimi_mbar_arrive(kimi_smem_addr(bar));
}

static __device__ __forceinline__ void kimi_mbar_arrive_tx(uint64_t *bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
                 :: "r"(kimi_smem_addr(bar)), "r"(bytes) : "memory");
}

/* One arrival when every cp.async this thread issued before has landed
 * (.noinc: the arrival is one of the count given to kimi_mbar_init). */
static __device__ __forceinline__ void kimi_mbar_cp_async_arrive(uint64_t *bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n"
                 :: "r"(kimi_smem_addr(bar)) : "memory");
}

/* Waits until the phase of the given parity has completed.  A fresh barrier
 * counts as having completed the phase of parity 1.  Also by shared-memory
 * address: a loop that keeps its barriers' addresses in (uniform) registers
 * spares the generic-to-shared conversion, an S2R on the critical path of
 * every k-block. */
static __device__ __forceinline__ void kimi_mbar_wait(uint32_t a, uint32_t parity)
{
    uint32_t done;
    do {
        asm volatile("{\n"
                     ".reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n"
                     "}\n"
                     : "=r"(done) : "r"(a), "r"(parity) : "memory");
    } while (!done);
}

static __device__ __forceinline__ void kimi_mbar_wait(uint64_t *bar, uint32_t parity)
{
    kimi_mbar_wait(kimi_smem_addr(bar), parity);
}

static __device__ __forceinline__ void kimi_fence_proxy_async(void)
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* Box (c0 = innermost coordinate, c1) of the 2-D tensor map into shared
 * memory (1024-byte aligned for the 128-byte swizzle), completing on bar. */
static __device__ __forceinline__ void
kimi_tma_load_2d(void *dst, const CUtensorMap *map, int c0, int c1, uint64_t *bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n"
                 :: "r"(kimi_smem_addr(dst)), "l"(map), "r"(c0), "r"(c1), "r"(kimi_smem_addr(bar))
                 : "memory");
}

/* Contiguous bytes (16-byte aligned, a multiple of 16) into shared memory,
 * completing on bar: rows TMA needs no tensor map for. */
static __device__ __forceinline__ void
kimi_bulk_load(void *dst, const void *src, uint32_t bytes, uint64_t *bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1], %2, [%3];\n"
                 :: "r"(kimi_smem_addr(dst)), "l"(src), "r"(bytes), "r"(kimi_smem_addr(bar))
                 : "memory");
}

/* Contiguous bytes (16-byte aligned, a multiple of 16) into L2 only: weights
 * a kernel will read, requested before its grid wait (kimi_cuda.cuh). */
static __device__ __forceinline__ void
kimi_bulk_prefetch_l2(const void *src, uint32_t bytes)
{
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" :: "l"(src), "r"(bytes) : "memory");
}

/* Contiguous bytes of shared memory (16-byte aligned, a multiple of 16) to
 * global memory, in this thread's bulk group (kimi_bulk_commit). */
static __device__ __forceinline__ void
kimi_bulk_store(void *dst, const void *src, uint32_t bytes)
{
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n"
                 :: "l"(dst), "r"(kimi_smem_addr(src)), "r"(bytes) : "memory");
}

/* An L2 policy for the cache_hint forms: bytes written once and not read
 * again soon, which should not push out what other blocks re-read. */
static __device__ __forceinline__ uint64_t kimi_l2_evict_first(void)
{
    uint64_t p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
    return p;
}

static __device__ __forceinline__ void
kimi_bulk_store_hint(void *dst, const void *src, uint32_t bytes, uint64_t policy)
{
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group.L2::cache_hint [%0], [%1], %2, %3;\n"
                 :: "l"(dst), "r"(kimi_smem_addr(src)), "r"(bytes), "l"(policy) : "memory");
}

static __device__ __forceinline__ void kimi_bulk_commit(void)
{
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

/* This thread's bulk stores have read their shared memory (it may be
 * written again); kimi_bulk_wait: they are done. */
static __device__ __forceinline__ void kimi_bulk_wait_read(void)
{
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

static __device__ __forceinline__ void kimi_bulk_wait(void)
{
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

static __device__ __forceinline__ void kimi_tma_prefetch_map(const CUtensorMap *map)
{
    asm volatile("prefetch.tensormap [%0];\n" :: "l"(map) : "memory");
}

/* Small 4-byte cp.async (scales) */
static __device__ __forceinline__ void kimi_cp_async4(void *smem, const void *gmem)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n"
                 :: "r"(kimi_smem_addr(smem)), "l"(gmem) : "memory");
}

template <int N>
static __device__ __forceinline__ void kimi_setmaxnreg_dec(void)
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(N));
}

template <int N>
static __device__ __forceinline__ void kimi_setmaxnreg_inc(void)
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(N));
}

/* Named barrier among a subset of the block's warps (id 1..15). */
static __device__ __forceinline__ void kimi_bar_sync(int id, int threads)
{
    asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(threads) : "memory");
}

/* Counts this warp's arrival at named barrier id without waiting (the
 * producer side of a bar.sync the other threads wait on). */
static __device__ __forceinline__ void kimi_bar_arrive(int id, int threads)
{
    asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(threads) : "memory");
}

/* Host (tma.cu): *m = the [rows][cols] tensor at base (row_bytes apart) in
 * boxes of box_rows x box_cols elements, 128-byte swizzle (box_cols of the
 * type make 128 bytes); base NULL gives a zeroed map.  l2_promotion: the
 * bytes L2 fetches a miss as (0, 64, 128, 256): 256 for the GEMMs' weights
 * and rows; 128 where a box's rows are one chunk of longer rows whose next
 * chunk another box loads (the MLA cache: 2-3 % faster than 256). */
int kimi_tmap_2d(CUtensorMap *m, CUtensorMapDataType type, const void *base, uint64_t cols,
                 uint64_t rows, uint64_t row_bytes, uint32_t box_cols, uint32_t box_rows,
                 uint32_t l2_promotion, kimi_err_t *err);

#endif
