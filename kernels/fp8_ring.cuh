/*
 * The shared-memory weight ring of the FP8 GEMMs at batch 1..16
 * (gemm_fp8.cu).
 *
 * A block owns 32 weight rows (two 16-row sets, as fp8_tile.cuh) of one
 * matrix against up to 8*NG token rows.  A producer warp streams the rows
 * into RING_STAGES shared-memory stages with cp.async.bulk (lane r copies
 * row r, RING_CWARPS 128-blocks of K a stage) and RING_CWARPS consumer
 * warps take one 128-block each per stage (tile_kblock), so a block keeps
 * two stages (32 KB) in flight without spending registers on them: the
 * register-resident tile (fp8_tile) reached 37-64 % of copy bandwidth on an
 * H200 at T = 1.  A cluster of blocks may split K; their partial sums meet
 * in rank 0 through distributed shared memory, added in rank order, so the
 * result is the same every run.
 *
 * Layout:  stage rows RING_PITCH bytes apart (+64: the quarter-warps'
 *          16-byte reads of 8 rows land in distinct banks); the mbarriers
 *          after the stages.  RING_SMEM bytes of dynamic shared memory.
 * Cost:    each weight byte crosses HBM once; tokens from L1/L2.
 */

#ifndef KIMI_FP8_RING_CUH
#define KIMI_FP8_RING_CUH

#include <stdlib.h>

#include <cooperative_groups.h>

#include "fp8_tile.cuh"
#include "tma.cuh"

#define RING_ROWS     32
#define RING_CWARPS   4
#define RING_STAGES   2
#define RING_PITCH    (RING_CWARPS * 128 + 64)
#define RING_STAGE    (RING_ROWS * RING_PITCH)
#define RING_THREADS  ((RING_CWARPS + 1) * 32)
#define RING_SMEM     (RING_STAGES * RING_STAGE + 2 * RING_STAGES * 8)

/*
 * Every thread of the block (and of its cluster) calls this once, without
 * a grid wait before: the consumer warps wait here.
 *   src:  the producer lane's weight row (row r of the block for lane r of
 *         the last warp; ignored elsewhere), KB 128-blocks long;
 *   sa/sb: the two sets' scale rows [KB];
 *   xrow/xs0/xs1/ngroups: the consumers' tokens, as for fp8_tile.
 * Returns 1 in warp 0 of cluster rank 0, whose acc then holds the sums over
 * all of K (fp8_tile's fragment layout); 0 elsewhere.
 */
template <int NG>
static __device__ __forceinline__ int
ring_tile(uint8_t *smem, const uint8_t *src, const float *sa, const float *sb, int KB,
          const uint8_t *const xrow[NG], const float *const xs0[NG],
          const float *const xs1[NG], int ngroups, float acc[2][NG][4])
{
    namespace cg = cooperative_groups;
    uint64_t *full = (uint64_t *) (smem + RING_STAGES * RING_STAGE);
    uint64_t *empty = full + RING_STAGES;
    /* after the ring drains: stage 0 holds the warps' partials, stage 1 the
     * block's (what cluster peers read) */
    float (*red)[2 * NG * 4][32] = (float (*)[2 * NG * 4][32]) smem;
    float (*part)[32] = (float (*)[32]) (smem + RING_STAGE);
    cg::cluster_group cluster = cg::this_cluster();
    const int cs = (int) cluster.num_blocks(), rank = (int) cluster.block_rank();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int kb0 = rank * KB / cs, kb1 = (rank + 1) * KB / cs;
    const int nst = (kb1 - kb0 + RING_CWARPS - 1) / RING_CWARPS;

    tile_acc_zero<NG>(acc);
    if (threadIdx.x == 0) {
        for (int s = 0; s < RING_STAGES; s++) {
            kimi_mbar_init(&full[s], 1);
            kimi_mbar_init(&empty[s], RING_CWARPS);
        }
        kimi_mbar_init_fence();
    }
    __syncthreads();

    if (warp == RING_CWARPS) {
        for (int st = 0; st < nst; st++) {
            const int s = st % RING_STAGES, kb = kb0 + st * RING_CWARPS;
            const int cnt = min(RING_CWARPS, kb1 - kb);
            if (st >= RING_STAGES) {
                kimi_mbar_wait(&empty[s], (st / RING_STAGES - 1) & 1);
            }
            if (lane == 0) {
                kimi_mbar_arrive_tx(&full[s], RING_ROWS * cnt * 128);
            }
            __syncwarp();
            kimi_bulk_load(smem + s * RING_STAGE + lane * RING_PITCH, src + (size_t) kb * 128,
                           cnt * 128, &full[s]);
        }
    } else {
        /* The producer loads weights only, so it fills the first stages
         * while the kernel before still runs; the tokens are that kernel's
         * output (kimi_cuda.cuh). */
        KIMI_GRID_ENTRY();
        for (int st = 0; st < nst; st++) {
            const int s = st % RING_STAGES, kb = kb0 + st * RING_CWARPS + warp;
            kimi_mbar_wait(&full[s], (st / RING_STAGES) & 1);
            if (kb < kb1) {
                const uint8_t *base = smem + s * RING_STAGE + warp * 128 + t * 16;
                TileW cur;
#pragma unroll
                for (int set = 0; set < 2; set++)
#pragma unroll
                    for (int rr = 0; rr < 2; rr++)
#pragma unroll
                        for (int h = 0; h < 2; h++)
                            cur.v[set][rr][h] = *(const uint4 *)
                                (base + (set * 16 + rr * 8 + g) * RING_PITCH + h * 64);
                tile_kblock<NG>(cur, xrow, xs0, xs1, ngroups, kb, sa[kb], sb[kb], acc);
            }
            __syncwarp();
            if (lane == 0) {
                kimi_mbar_arrive(&empty[s]);
            }
        }
    }

    __syncthreads();                               /* the ring is drained */
    if (warp > 0 && warp < RING_CWARPS) {
        tile_acc_put<NG>(red[warp - 1], acc, lane);
    }
    __syncthreads();
    if (warp == 0) {
        for (int q = 0; q < RING_CWARPS - 1; q++) {
            tile_acc_add<NG>(acc, red[q], lane);
        }
        tile_acc_put<NG>(part, acc, lane);
    }
    if (cs > 1) {
        cluster.sync();                            /* every rank's part is written */
        if (rank == 0 && warp == 0) {
            for (int r = 1; r < cs; r++) {
                tile_acc_add<NG>(acc, cluster.map_shared_rank(part, r), lane);
            }
        }
        cluster.sync();                            /* rank 0 has read every part */
    }
    return rank == 0 && warp == 0;
}

/*
 * Launches a ring kernel over tiles x grid_y blocks of 32 rows, K split over
 * a cluster: the most splits (1..8) that keep the grid to one wave of
 * resident blocks and a full stage of K per block (bytes in flight grow with
 * the blocks; a second, partial wave would cost a whole block's time).
 * *slots caches the kernel's resident blocks over all SMs (0 at first).
 * KIMI_RING_CS forces the split (benchmarks).
 */
template <typename... Params, typename... Args>
static int
ring_launch(void (*kernel)(Params...), int *slots, int tiles, int KB, int grid_y,
            cudaStream_t s, kimi_err_t *err, Args... args)
{
    static int          forced = -1;
    cudaLaunchConfig_t  cfg = {};
    cudaLaunchAttribute attr[2];
    int                 cs = 1;

    if (*slots == 0) {
        int dev = 0, sms = 0, per_sm = 0;
        KIMI_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           RING_SMEM), err);
        /* all of L1 as shared memory: the default split fits fewer blocks */
        KIMI_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           cudaSharedmemCarveoutMaxShared), err);
        KIMI_CUDA_TRY(cudaGetDevice(&dev), err);
        KIMI_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), err);
        KIMI_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, RING_THREADS,
                                                                    RING_SMEM), err);
        *slots = (per_sm > 0 ? per_sm : 1) * sms;
    }
    if (forced < 0) {
        const char *e = getenv("KIMI_RING_CS");
        forced = e != NULL ? atoi(e) : 0;
    }
    if (forced == 1 || forced == 2 || forced == 4 || forced == 8) {
        cs = KB >= forced ? forced : 1;
    } else {
        while (cs < 8 && (long) tiles * grid_y * cs * 2 <= *slots && KB / (2 * cs) >= RING_CWARPS) {
            cs *= 2;
        }
    }
    cfg.gridDim = dim3(tiles * cs, grid_y);
    cfg.blockDim = dim3(RING_THREADS);
    cfg.dynamicSmemBytes = RING_SMEM;
    cfg.stream = s;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cs;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;   /* kimi_cuda.cuh */
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = kimi_pdl_enabled() ? 2 : 1;
    KIMI_CUDA_TRY(cudaLaunchKernelEx(&cfg, kernel, args...), err);
    KIMI_CUDA_LAUNCHED(s, err);
    return KIMI_OK;
}

#endif
