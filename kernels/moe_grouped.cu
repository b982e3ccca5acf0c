/*
 * MoE experts at prefill sizes: grouped FP8 GEMMs on wgmma over the rows the
 * plan (moe.cu) grouped by expert.  Same inputs, outputs and arithmetic as
 * the masked decode kernels of moe.cu, which stream each expert's weights
 * once per 32 tokens on mma.sync: fine for decode, 73 TFLOP/s at prefill.
 *
 *   gate_up:  h[r, c]  = silu(G) * U,   G/U = xq[tok r] . W_gate/up[e][c]
 *   down:     y[r, c]  = hq[r] . W_down[e][c]
 *
 * Work:    a block = 64 rows of one expert's slot x (gate_up) 128 columns of h
 *          (warpgroup w: 64 gate + the same 64 up columns) or (down) 256
 *          columns of y (128 a warpgroup).  K is walked in 128-blocks: each
 *          is 4 wgmma m64n128k32 (A = the rows, B = the weight rows, both
 *          from shared memory, 128-byte swizzled: one K-block per row) into a
 *          temporary, then promoted into the fp32 accumulator times the row's
 *          activation scale and the weight block's scale (DeepSeek's
 *          promotion every 128 of K, as fp8_tile.cuh does).  Tiles stream in
 *          with cp.async, KG_STAGES deep.
 * Tiles:   the slots of the plan are cut into 64-row tiles; block (x, y)
 *          takes tile y (found by a warp scan over the slots; blocks past
 *          the last tile exit) and column block x.
 * Cost:    FLOPs 2 * rows * 3 * I * D; weight bytes read once per 64-row tile
 *          of each expert (the rest from L2).
 * Twin:    kimi_gemm_fp8a_fp8w + kimi_silu_mul of engine/backend/cpu/ops.h
 *          (checked by t/gpu/kcheck.c through kimi_moe_gate_up/_down).
 */

#include "wgmma.cuh"
#include "kimi_kernels.h"

#define KG_BM      64
#define KG_THREADS 256
#define KG_STAGES  4
#define KG_A_B     (KG_BM * 128)            /* A tile of one stage: 8 KB */
#define KG_B_B     (2 * 128 * 128)          /* B tiles of both groups: 32 KB */
#define KG_STAGE_B (KG_A_B + KG_B_B)
#define KG_OFF_AS  (KG_STAGES * KG_STAGE_B)  /* [stage][64] row scales */
#define KG_OFF_BS  (KG_OFF_AS + KG_STAGES * KG_BM * 4)   /* [stage][2 groups][2] */
#define KG_SMEM    (KG_OFF_BS + KG_STAGES * 4 * 4 + 1024)

/* This block's tile: slot, first row and rows (0: no tile). */
static __device__ __forceinline__ void
kg_find_tile(const kimi_moe_ws_t &ws, int max_slots, int tile, int *slot, int *m0, int *rows)
{
    const int lane = threadIdx.x & 31;
    int base = 0;
    *rows = 0;
    for (int s0 = 0; s0 < max_slots; s0 += 32) {
        const int s = s0 + lane;
        const int n = s < max_slots ? ws.slot_rows[s] : 0;
        const int nt = (n + KG_BM - 1) / KG_BM;
        int incl = nt;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) {
                incl += v;
            }
        }
        const int excl = base + incl - nt;
        const unsigned hit = __ballot_sync(0xffffffffu, tile >= excl && tile < excl + nt);
        if (hit) {
            const int src = __ffs(hit) - 1;
            const int e0 = __shfl_sync(0xffffffffu, excl, src), n0 = __shfl_sync(0xffffffffu, n, src);
            *slot = s0 + src;
            *m0 = (tile - e0) * KG_BM;
            *rows = min(KG_BM, n0 - *m0);
            return;
        }
        base += __shfl_sync(0xffffffffu, incl, 31);
    }
}

template <bool GATE_UP>
static __global__ void __launch_bounds__(KG_THREADS, 1)
moe_grouped_kernel(const uint8_t *__restrict__ xq, const float *__restrict__ xs,
                   int K, int N, int max_slots, kimi_experts_t ex, kimi_moe_ws_t ws)
{
    extern __shared__ __align__(1024) uint8_t kg_smem_raw[];
    uint8_t *sm = kg_smem_raw + ((1024 - (kimi_smem_addr(kg_smem_raw) & 1023)) & 1023);
    const uint32_t sbase = kimi_smem_addr(sm);
    float *a_sc = (float *) (sm + KG_OFF_AS);
    float *b_sc = (float *) (sm + KG_OFF_BS);

    __shared__ int tile_info[3];
    if (threadIdx.x < 32) {
        int slot = 0, m0 = 0, rows = 0;
        kg_find_tile(ws, max_slots, blockIdx.y, &slot, &m0, &rows);
        if (threadIdx.x == 0) {
            tile_info[0] = slot;
            tile_info[1] = m0;
            tile_info[2] = rows;
        }
    }
    __syncthreads();
    const int rows = tile_info[2];
    if (rows == 0) {
        return;
    }
    const int slot = tile_info[0];
    const int e = ws.slot_expert[slot], row0 = ws.slot_row0[slot] + tile_info[1];
    const int KB = K / 128;
    const int wg = threadIdx.x >> 7, wt = threadIdx.x & 127;
    const int lane = wt & 31, t = lane & 3;
    const int r0 = (wt >> 5) * 16 + (lane >> 2), r1 = r0 + 8;
    /* columns of this warpgroup: gate_up 64 of h (its B rows: gate then up),
     * down 128 of y */
    const int n0 = GATE_UP ? blockIdx.x * 128 + wg * 64 : blockIdx.x * 256 + wg * 128;

    /* loader roles: A row ar (4 threads a row, 2 chunks each), B row tid */
    const int ar = threadIdx.x >> 2, aq = threadIdx.x & 3;
    const bool a_live = ar < rows;
    const uint8_t *a_src = GATE_UP ? xq + (size_t) ws.row_token[row0 + min(ar, rows - 1)] * K
                                   : ws.hq + (size_t) (row0 + min(ar, rows - 1)) * K;
    const float *a_scale = GATE_UP ? xs + (size_t) ws.row_token[row0 + min(ar, rows - 1)] * KB
                                   : ws.hs + (size_t) (row0 + min(ar, rows - 1)) * KB;
    const int bw = threadIdx.x >> 7, bj = threadIdx.x & 127;   /* group, row of its 128 */
    const uint8_t *b_src;
    if (GATE_UP) {
        const int c = blockIdx.x * 128 + bw * 64 + (bj & 63);
        b_src = (bj < 64 ? ex.gate[e] : ex.up[e]) + (size_t) c * K;
    } else {
        b_src = ex.down[e] + (size_t) (blockIdx.x * 256 + bw * 128 + bj) * K;
    }
    /* weight scale rows of this group's 128-row block(s) */
    const float *bs_g = GATE_UP ? ex.gate_s[e] + (size_t) ((blockIdx.x * 128 + (threadIdx.x & 1) * 64) / 128) * KB
                                : ex.down_s[e] + (size_t) ((blockIdx.x * 256 + (threadIdx.x & 1) * 128) / 128) * KB;
    const float *bs_u = GATE_UP ? ex.up_s[e] + (size_t) ((blockIdx.x * 128 + (threadIdx.x & 1) * 64) / 128) * KB
                                : bs_g;

    auto load = [&](int kb, int st) {
        uint8_t *stg = sm + st * KG_STAGE_B;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = aq * 2 + i;
            uint8_t *d = stg + wg_swz128(ar, c * 8);
            if (a_live) {
                kimi_cp_async16(d, a_src + (size_t) kb * 128 + c * 16);
            } else {
                *(uint4 *) d = make_uint4(0, 0, 0, 0);
            }
        }
        if (aq == 0) {
            float *d = a_sc + st * KG_BM + ar;
            if (a_live) {
                asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n"
                             :: "r"(kimi_smem_addr(d)), "l"(a_scale + kb));
            } else {
                *d = 0.f;
            }
        }
        uint8_t *bt = stg + KG_A_B + bw * (128 * 128);
#pragma unroll
        for (int c = 0; c < 8; c++) {
            kimi_cp_async16(bt + wg_swz128(bj, c * 8), b_src + (size_t) kb * 128 + c * 16);
        }
        /* scales: [group][gate, up] of this stage (down: both the same) */
        if (threadIdx.x < 4) {
            const float *src = (threadIdx.x & 2) ? bs_u : bs_g;
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n"
                         :: "r"(kimi_smem_addr(b_sc + st * 4 + (threadIdx.x & 1) * 2 + (threadIdx.x >> 1))),
                            "l"(src + kb));
        }
    };

    float acc[64], tmp[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.f;

#pragma unroll
    for (int st = 0; st < KG_STAGES - 1; st++) {
        if (st < KB) {
            load(st, st);
        }
        kimi_cp_async_commit();
    }
    for (int kb = 0; kb < KB; kb++) {
        const int st = kb % KG_STAGES;
        kimi_cp_async_wait<KG_STAGES - 2>();
        wg_fence_proxy();
        __syncthreads();   /* stage st landed; every group is done with stage kb - 1 */
        if (kb + KG_STAGES - 1 < KB) {
            load(kb + KG_STAGES - 1, (kb + KG_STAGES - 1) % KG_STAGES);
        }
        kimi_cp_async_commit();

        const uint32_t sa = sbase + st * KG_STAGE_B, sb = sa + KG_A_B + wg * (128 * 128);
        wg_arrive();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            wgmma_m64n128k32_e4m3(tmp, wg_desc(sa + kk * 32, 16, 1024), wg_desc(sb + kk * 32, 16, 1024), kk > 0);
        }
        wg_commit();
        wg_wait<0>();
        wg_fence_regs(tmp);
        const float x0 = a_sc[st * KG_BM + r0], x1 = a_sc[st * KG_BM + r1];
        const float wg_s = b_sc[st * 4 + wg * 2], wu_s = b_sc[st * 4 + wg * 2 + 1];
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const float w = (GATE_UP && j >= 8) ? wu_s : wg_s;
            acc[4 * j] += tmp[4 * j] * (w * x0);
            acc[4 * j + 1] += tmp[4 * j + 1] * (w * x0);
            acc[4 * j + 2] += tmp[4 * j + 2] * (w * x1);
            acc[4 * j + 3] += tmp[4 * j + 3] * (w * x1);
        }
    }
    kimi_cp_async_wait<0>();

    if (GATE_UP) {
        /* columns 0..63 of the accumulator are gate, 64..127 the same h columns' up */
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int c = n0 + 8 * j + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = h ? r1 : r0;
                if (r < rows) {
                    const float g0 = acc[4 * j + 2 * h], g1 = acc[4 * j + 2 * h + 1];
                    const float u0 = acc[4 * (j + 8) + 2 * h], u1 = acc[4 * (j + 8) + 2 * h + 1];
                    *(float2 *) (ws.h + (size_t) (row0 + r) * N + c) =
                        make_float2(g0 / (1.f + expf(-g0)) * u0, g1 / (1.f + expf(-g1)) * u1);
                }
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int c = n0 + 8 * j + 2 * t;
            if (r0 < rows) {
                *(float2 *) (ws.y + (size_t) (row0 + r0) * N + c) = make_float2(acc[4 * j], acc[4 * j + 1]);
            }
            if (r1 < rows) {
                *(float2 *) (ws.y + (size_t) (row0 + r1) * N + c) = make_float2(acc[4 * j + 2], acc[4 * j + 3]);
            }
        }
    }
}

/* Upper bound of 64-row tiles over the plan's slots: each slot's rows rounded up. */
static int
kg_max_tiles(const kimi_moe_ws_t *ws, int max_slots)
{
    return ws->rows / KG_BM + max_slots;
}

extern "C" int
kimi_moe_grouped_gate_up(const uint8_t *xq, const float *xs, int D, int I, int max_slots, const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                         cudaStream_t s, kimi_err_t *err)
{
    if (I % 128 != 0 || D % 128 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe grouped gate_up: D=%d I=%d (multiples of 128)", D, I);
    }
    KIMI_CUDA_TRY(cudaFuncSetAttribute(moe_grouped_kernel<true>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, KG_SMEM), err);
    dim3 grid(I / 128, kg_max_tiles(ws, max_slots));
    moe_grouped_kernel<true><<<grid, KG_THREADS, KG_SMEM, s>>>(xq, xs, D, I, max_slots, *ex, *ws);
    KIMI_CUDA_LAUNCHED(s, err);
    return KIMI_OK;
}

extern "C" int
kimi_moe_grouped_down(int D, int I, int max_slots, const kimi_experts_t *ex,
                      const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    if (I % 128 != 0 || D % 256 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe grouped down: D=%d (multiple of 256) I=%d", D, I);
    }
    KIMI_CUDA_TRY(cudaFuncSetAttribute(moe_grouped_kernel<false>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, KG_SMEM), err);
    dim3 grid(D / 256, kg_max_tiles(ws, max_slots));
    moe_grouped_kernel<false><<<grid, KG_THREADS, KG_SMEM, s>>>(NULL, NULL, I, D, max_slots, *ex, *ws);
    KIMI_CUDA_LAUNCHED(s, err);
    return KIMI_OK;
}
