/*
 * MoE experts at prefill sizes: grouped FP8 GEMMs on wgmma over the rows the
 * plan (moe.cu) grouped by expert.  Same inputs, outputs and arithmetic as
 * the masked decode kernels of moe.cu, which stream each expert's weights
 * once per 32 tokens on mma.sync: fine for decode, 73 TFLOP/s at prefill.
 *
 *   gate_up:  hq[r, c] = e4m3_1x128(silu(G) * U),  G/U = xq[tok r] . W_gate/up[e][c]
 *   down:     y[r, c]  = hq[r] . W_down[e][c]
 *
 * Work:    a work item = one tile of BM (64 or 128) rows of one expert x 256
 *          weight rows: gate_up 128 gate + the same 128 up rows (one
 *          128-block of h), down 256 columns of y.  K is walked in
 *          128-blocks.  Persistent: one block per SM walks the items, the
 *          stage ring running on across them (the next item's loads overlap
 *          this one's epilogue).
 * Roles:   warpgroup 0 produces (registers cut to 40; its first warp
 *          alone works, the other three exit): one thread issues
 *          the weights by TMA (128-byte swizzle; gate_up as four boxes of
 *          64 rows x 128 bytes, interleaving gate and up by 64 rows so each
 *          128-row half holds both for the same 64 columns of h; down as
 *          one box of 256 rows, the same layout); the activation rows
 *          (down's h, gate_up's tokens, both contiguous per tile) come in the
 *          same thread's fifth box; the warp's 32 lanes fetch the row and
 *          weight-block scales; a stage is full on its mbarrier when all
 *          landed.  The ring's stage and phase are counters, its barriers
 *          and wgmma descriptors warp-uniform adds.  Warpgroups 1
 *          and 2 consume: each 128-block is 4 wgmma m64n128k32 e4m3 per
 *          half into a temporary, promoted into the fp32 accumulator times
 *          the row's and the weight block's scales (DeepSeek's promotion
 *          every 128 of K); while one group promotes, the other's MMAs run.
 *          BM 128: group g takes rows 64g.. of both halves (weights read
 *          once per 128 rows; a tile of <= 64 rows leaves group 1 idle); BM
 *          64: both take the 64 rows, group g half g.
 * Epilogue: gate_up quantises h to e4m3 per 128 columns on the spot (the
 *          row's 128 columns live in one quad of threads, or two groups at
 *          BM 64) and writes hq/hs: no fp32 h round trip; down writes bf16 y
 *          (evict_first in L2: only the combine reads it).  Both stage each
 *          group's 64 rows in shared memory and copy whole rows out with
 *          bulk stores, one thread a row; down stages its whole 64 x 512
 *          bytes at once (one stage less), so the tile ends with one
 *          barrier round and the next starts while its rows go out.
 * Tiles:   a pre-pass (one block) lists the tiles: each expert's rows cut
 *          in BM (the shared expert's 32-token slots merged back into one
 *          run), so no block scans the plan.  gate_up's token rows are then
 *          copied into the plan's row order (TMA cannot gather; the copy
 *          lives in y's memory, free until down): 3-5 % faster than
 *          gathering them with cp.async in the GEMM's producer.
 * Cost:    FLOPs 2 * rows * 3 * I * D; a stage is BM x 128 + 256 x 128
 *          bytes for BM x 256 x 128 MACs.
 * Twin:    kimi_gemm_fp8a_fp8w + kimi_silu_mul + kimi_act_quant_fp8 of
 *          engine/backend/cpu/ops.h (checked by t/gpu/kcheck.c through
 *          kimi_moe_gate_up/_down).
 */

#include <stdlib.h>
#include <string.h>

#include "wgmma.cuh"
#include "tma.cuh"
#include "kimi_kernels.h"

#define KG_THREADS 384
#define KG_Q_B     (64 * 128)                   /* one TMA box: 64 weight rows */
#define KG_MAX_KB  64                           /* K <= 8192 */
/* KG_ABL (measurement builds only, results wrong): 1 loads half of the
 * weight boxes, 2 skips the MMAs and the promotion (the loads alone), 4
 * skips the loads (the MMAs alone, on whatever the stages hold) */
#ifndef KG_ABL
#define KG_ABL 0
#endif

/* Shared memory of one BM: stages of A + 4 boxes of B, then the scales of
 * every stage, the amax exchange, the barriers,
 * the epilogue's staged rows: a group's 64 rows of its tile, 16 bytes of
 * padding a row (two wavefronts a 16-row store, the minimum).  gate_up's
 * rows are 128 bytes of h (at BM 64 the group's 64 in the first half);
 * down's 256 * NH of bf16 y, which costs a stage. */
template <int BM, bool GATE_UP>
struct kg_layout {
    static constexpr int out_pitch = (GATE_UP ? 128 : 256 * (BM / 64)) + 16;
    static constexpr int out_b = 64 * out_pitch;              /* a consumer group's 64 rows */
    static constexpr int stages = (BM == 128 ? 4 : 5) - (GATE_UP ? 0 : 1);
    static constexpr int a_b = BM * 128;
    static constexpr int stage_b = a_b + 4 * KG_Q_B;
    static constexpr int off_as = stages * stage_b;          /* [stage][128] */
    static constexpr int off_bs = off_as + stages * 128 * 4;  /* [stage][4] */
    static constexpr int off_amax = off_bs + stages * 4 * 4;  /* [2][2][64] */
    static constexpr int off_bar = off_amax + 2 * 2 * 64 * 4; /* full[S], empty[S] */
    static constexpr int off_out = off_bar + 2 * stages * 8;  /* [2][out_b], 16-aligned */
    static constexpr int smem = off_out + 2 * out_b + 1024;
};

/* ---- tile list -------------------------------------------------------- */

/* Tiles of BM rows over the plan: tiles[i] = {expert, first row, rows},
 * tiles[3 * max_tiles] = count.  One block.  The plan keeps an expert's
 * slots adjacent and its rows contiguous, so an expert's rows (summed per
 * expert id first) are cut into tiles at its first slot. */
#define KG_LIST_THREADS 1024
#define KG_MAX_EXPERT   1024

static __global__ void __launch_bounds__(KG_LIST_THREADS)
moe_tile_list_kernel(kimi_moe_ws_t ws, int max_slots, int bm, int max_tiles)
{
    KIMI_GRID_ENTRY();
    __shared__ int expert_rows[KG_MAX_EXPERT + 1], scan[KG_LIST_THREADS];
    __shared__ int base;
    for (int i = threadIdx.x; i <= KG_MAX_EXPERT; i += KG_LIST_THREADS) {
        expert_rows[i] = 0;
    }
    if (threadIdx.x == 0) {
        base = 0;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < max_slots; s += KG_LIST_THREADS) {
        const int e = ws.slot_expert[s], n = ws.slot_rows[s];
        if (e >= 0 && e <= KG_MAX_EXPERT && n > 0) {
            atomicAdd(&expert_rows[e], n);
        }
    }
    __syncthreads();
    for (int s0 = 0; s0 < max_slots; s0 += KG_LIST_THREADS) {
        const int s = s0 + threadIdx.x;
        int e = -1, head = 0;
        if (s < max_slots) {
            e = ws.slot_expert[s];
            head = e >= 0 && e <= KG_MAX_EXPERT && ws.slot_rows[s] > 0
                   && (s == 0 || ws.slot_expert[s - 1] != e);
        }
        const int run = head ? expert_rows[e] : 0;
        const int nt = (run + bm - 1) / bm;
        scan[threadIdx.x] = nt;
        __syncthreads();
        for (int o = 1; o < KG_LIST_THREADS; o <<= 1) {   /* inclusive scan */
            const int v = threadIdx.x >= o ? scan[threadIdx.x - o] : 0;
            __syncthreads();
            scan[threadIdx.x] += v;
            __syncthreads();
        }
        const int first = base + scan[threadIdx.x] - nt;
        const int row0 = head ? ws.slot_row0[s] : 0;
        for (int i = 0; i < nt && first + i < max_tiles; i++) {
            ws.tiles[3 * (first + i)] = e;
            ws.tiles[3 * (first + i) + 1] = row0 + i * bm;
            ws.tiles[3 * (first + i) + 2] = min(bm, run - i * bm);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            base += scan[KG_LIST_THREADS - 1];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        ws.tiles[3 * max_tiles] = min(base, max_tiles);
    }
}

/* ---- the GEMM ----------------------------------------------------------- */

/* Quantises the 32 values of h this thread holds for one row (its quad
 * holds the rest of the row's 64 or 128 columns) to e4m3 with one scale per
 * 128 columns, as moe_hquant_kernel and kimi_act_quant_fp8 do; amax_other
 * (BM 64): the other group's amax of the row, or 0. */
static __device__ __forceinline__ float
kg_quad_amax(const float *v, int n)
{
    float am = 0.f;
    for (int i = 0; i < n; i++) {
        am = fmaxf(am, fabsf(v[i]));
    }
    am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, 1));
    return fmaxf(am, __shfl_xor_sync(0xffffffffu, am, 2));
}

template <bool GATE_UP, int BM>
static __global__ void __launch_bounds__(KG_THREADS, 1)
moe_grouped_kernel(const __grid_constant__ CUtensorMap a_map, const float *__restrict__ xs, int K, int N,
                   int max_tiles, kimi_experts_t ex, kimi_moe_ws_t ws)
{
    KIMI_GRID_ENTRY();
    typedef kg_layout<BM, GATE_UP> L;
    constexpr int S = L::stages, NH = BM / 64;     /* halves a consumer group computes */
    extern __shared__ __align__(1024) uint8_t kg_smem_raw[];
    uint8_t *sm = kg_smem_raw + ((1024 - (kimi_smem_addr(kg_smem_raw) & 1023)) & 1023);
    float *a_sc = (float *) (sm + L::off_as);
    float *b_sc = (float *) (sm + L::off_bs);
    float *amax_x = (float *) (sm + L::off_amax);
    uint64_t *full = (uint64_t *) (sm + L::off_bar), *empty = full + S;
    static_assert(L::off_out % 16 == 0 && L::smem <= 227 * 1024, "grouped GEMM shared memory");

    const int KB = K / 128;
    const int nN = N / (GATE_UP ? 128 : 256);
    const int n_work = ws.tiles[3 * max_tiles] * nN;
    const int n_tab = ex.n_tmaps;
    const int wg = __shfl_sync(0xffffffffu, threadIdx.x >> 7, 0), wt = threadIdx.x & 127;
    /* warp-uniform shared addresses: the k-loop's descriptors and barrier
     * addresses then live in uniform registers, as plain adds */
    const uint32_t sm_addr = __shfl_sync(0xffffffffu, kimi_smem_addr(sm), 0);
    const uint32_t full_addr = sm_addr + L::off_bar, empty_addr = full_addr + 8 * S;

    if (threadIdx.x == 0) {
        for (int i = 0; i < S; i++) {
            kimi_mbar_init(&full[i], 32 + 1);     /* the producer warp's cp.async + its TMA lane */
            kimi_mbar_init(&empty[i], 8);           /* one lane per consumer warp */
        }
        kimi_mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {
        kimi_setmaxnreg_dec<40>();
        if (wt >= 32) {
            return;                     /* one warp produces: lane 0 the boxes, all 32 the scales */
        }
        const float *s_base = GATE_UP ? xs : ws.hs;
        uint32_t pst = 0, pph = 0;          /* the ring's stage and phase */
        for (int w = blockIdx.x; w < n_work; w += gridDim.x) {
            const int tile = w / nN, n0 = (w % nN) * (GATE_UP ? 128 : 256);
            const int e = ws.tiles[3 * tile], row0 = ws.tiles[3 * tile + 1], rows = ws.tiles[3 * tile + 2];
            const CUtensorMap *mg = (const CUtensorMap *) ex.tmaps + (GATE_UP ? 0 : 2 * n_tab) + e;
            const CUtensorMap *mu = GATE_UP ? mg + n_tab : mg;
            /* weight scales of box q: gate_up gate/up of block n0/128; down block (n0 + 64q)/128 */
            const float *bs = NULL;
            if (wt < 4) {
                bs = GATE_UP ? ((wt & 1) ? ex.up_s[e] : ex.gate_s[e]) + (size_t) (n0 / 128) * KB
                             : ex.down_s[e] + (size_t) ((n0 + 64 * wt) / 128) * KB;
            }
            if (wt == 0) {
                kimi_tma_prefetch_map(mg);
                kimi_tma_prefetch_map(mu);
                kimi_tma_prefetch_map(&a_map);
            }
            for (int kb = 0; kb < KB; kb++) {
                const int st = pst;
                kimi_mbar_wait(empty_addr + 8 * pst, pph ^ 1);
                if (++pst == S) {
                    pst = 0;
                    pph ^= 1;
                }
                uint8_t *stg = sm + st * L::stage_b;
                if (wt == 0 && KG_ABL == 4) {
                    kimi_mbar_arrive(&full[st]);    /* no loads: the MMAs run on what the stage holds */
                } else if (wt == 0) {
                    kimi_mbar_arrive_tx(&full[st], (KG_ABL == 1 ? 2 : 4) * KG_Q_B + BM * 128);
                    if (GATE_UP || KG_ABL == 1) {
#pragma unroll
                        for (int q = 0; q < (KG_ABL == 1 ? 2 : 4); q++) {
                            /* gate_up: gate, up, gate, up of rows n0, n0, n0 + 64, n0 + 64 */
                            const int r = GATE_UP ? n0 + 64 * (q >> 1) : n0 + 64 * q;
                            kimi_tma_load_2d(stg + L::a_b + q * KG_Q_B, (GATE_UP && (q & 1)) ? mu : mg,
                                             kb * 128, r, &full[st]);
                        }
                    } else {
                        /* down: its 256 rows as one box (the 128-byte swizzle
                         * repeats every 8 rows: the same layout as four of 64,
                         * and 3-13 % faster) */
                        kimi_tma_load_2d(stg + L::a_b, mg, kb * 128, n0, &full[st]);
                    }
                    /* the activation rows are the tile's own, contiguous: one
                     * box (rows past the tile are another's, or past the map
                     * and zero: never stored) */
                    kimi_tma_load_2d(stg, &a_map, kb * 128, row0, &full[st]);
                }
#pragma unroll
                for (int r = wt; r < BM; r += 32) {
                    kimi_cp_async4(a_sc + st * 128 + r, s_base + (size_t) (row0 + min(r, rows - 1)) * KB + kb);
                }
                if (wt < 4) {
                    kimi_cp_async4(b_sc + st * 4 + wt, bs + kb);
                }
                kimi_mbar_cp_async_arrive(&full[st]);
            }
        }
        kimi_cp_async_wait<0>();
        return;
    }

    kimi_setmaxnreg_inc<232>();
    const int cg = wg - 1;                          /* consumer group 0/1 */
    const int lane = wt & 31, t = lane & 3;
    const int r0 = (wt >> 5) * 16 + (lane >> 2), r1 = r0 + 8;
    const int m_off = BM == 128 ? cg * 64 : 0;      /* this group's first row of the tile */
    /* the epilogue stages 64 rows x 128 bytes at a time here, then copies
     * whole rows out (bulk stores): from registers a row's bytes would go
     * out 2-8 bytes a lane, a 32-byte sector half filled per store */
    uint8_t *out = sm + L::off_out + cg * L::out_b;
    const int h0 = BM == 128 ? 0 : cg;              /* this group's first half */
    int parity = 0;
    uint32_t cst = 0, cph = 0;                      /* the ring's stage and phase */
    const uint64_t desc0 = wg_desc(sm_addr, 16, 1024);   /* + (byte offset >> 4): any operand of a stage */

    for (int w = blockIdx.x; w < n_work; w += gridDim.x, parity ^= 1) {
        const int tile = w / nN, n0 = (w % nN) * (GATE_UP ? 128 : 256);
        const int row0 = ws.tiles[3 * tile + 1], rows = ws.tiles[3 * tile + 2];

        float acc[NH * 64], tmp[64];
#pragma unroll
        for (int i = 0; i < NH * 64; i++) acc[i] = 0.f;
        /* BM 128: a tile of <= 64 rows (an expert's last) leaves group 1
         * nothing to compute; it still keeps the ring's count */
        const bool live = m_off < rows;

        for (int kb = 0; kb < KB; kb++) {
            const int st = cst;
            const uint32_t full_st = full_addr + 8 * cst, empty_st = empty_addr + 8 * cst;
            kimi_mbar_wait(full_st, cph);
            if (++cst == S) {
                cst = 0;
                cph ^= 1;
            }
            if (!live || KG_ABL == 2) {
                if (lane == 0) {
                    kimi_mbar_arrive(empty_st);
                }
                continue;
            }
            const float x0 = a_sc[st * 128 + m_off + r0], x1 = a_sc[st * 128 + m_off + r1];
            const uint32_t so = st * L::stage_b;
#pragma unroll
            for (int hh = 0; hh < NH; hh++) {
                const int h = h0 + hh;
                const float wlo = b_sc[st * 4 + 2 * h], whi = b_sc[st * 4 + 2 * h + 1];
                wg_arrive();
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    wgmma_m64n128k32_e4m3(tmp, desc0 + ((so + m_off * 128 + kk * 32) >> 4),
                                          desc0 + ((so + L::a_b + h * 2 * KG_Q_B + kk * 32) >> 4), kk > 0);
                }
                wg_commit();
                wg_wait<0>();
                wg_fence_regs(tmp);
                if (hh == NH - 1 && lane == 0) {
                    kimi_mbar_arrive(empty_st);     /* this warp is done with the stage */
                }
#pragma unroll
                for (int j = 0; j < 16; j++) {
                    const float wj = j < 8 ? wlo : whi;
                    acc[hh * 64 + 4 * j] += tmp[4 * j] * (wj * x0);
                    acc[hh * 64 + 4 * j + 1] += tmp[4 * j + 1] * (wj * x0);
                    acc[hh * 64 + 4 * j + 2] += tmp[4 * j + 2] * (wj * x1);
                    acc[hh * 64 + 4 * j + 3] += tmp[4 * j + 3] * (wj * x1);
                }
            }
        }

        if (!live) {
            continue;
        }
        if (GATE_UP) {
            /* half hh: columns 0..63 of the accumulator are gate, 64..127 up
             * of h columns n0 + 64 h + 0..63 */
            const int IB = N / 128, blk = n0 / 128;
            kimi_bulk_wait_read();              /* the last tile's rows have left */
            kimi_bar_sync(3 + cg, 128);
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                const int rl = hr ? r1 : r0, r = m_off + rl;
                float hv[NH * 16];
#pragma unroll
                for (int hh = 0; hh < NH; hh++) {
#pragma unroll
                    for (int j = 0; j < 8; j++) {
#pragma unroll
                        for (int c = 0; c < 2; c++) {
                            const float g = acc[hh * 64 + 4 * j + 2 * hr + c];
                            const float u = acc[hh * 64 + 4 * (j + 8) + 2 * hr + c];
                            hv[hh * 16 + 2 * j + c] = __fdividef(g, 1.f + __expf(-g)) * u;
                        }
                    }
                }
                float am = kg_quad_amax(hv, NH * 16);
                if (BM == 64) {
                    /* the row's other 64 columns are the other group's */
                    float *x = amax_x + parity * 128;
                    if (t == 0) {
                        x[cg * 64 + rl] = am;
                    }
                    kimi_bar_sync(1, 256);
                    am = fmaxf(am, x[(cg ^ 1) * 64 + rl]);
                }
                const float sc = fmaxf(am, 1e-4f) / KIMI_FP8_MAX, inv = 1.f / sc;
                /* staged: the group's own 64 * NH columns of the row from byte 0 */
                uint8_t *q = out + rl * L::out_pitch;
#pragma unroll
                for (int hh = 0; hh < NH; hh++) {
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int c = 64 * hh + 8 * j + 2 * t;
                        *(uint16_t *) (q + c) = (uint16_t) (kimi_f2fp8(hv[hh * 16 + 2 * j] * inv)
                                                            | kimi_f2fp8(hv[hh * 16 + 2 * j + 1] * inv) << 8);
                    }
                }
                if (r < rows && t == 0 && h0 == 0) {
                    ws.hs[(size_t) (row0 + r) * IB + blk] = sc;
                }
            }
            kimi_fence_proxy_async();           /* the rows, to the bulk copies */
            kimi_bar_sync(3 + cg, 128);
            if (wt < 64 && m_off + wt < rows) {
                kimi_bulk_store(ws.hq + (size_t) (row0 + m_off + wt) * N + n0 + 64 * h0,
                                out + wt * L::out_pitch, 64 * NH);
                kimi_bulk_commit();
            }
        } else {
            /* lanes t and t^1 of a quad trade halves so each holds 4
             * consecutive columns of one row: one 16-byte store instead of
             * two 8-byte ones (even t: row r0, odd t: row r1) */
            const int rl = (t & 1) ? r1 : r0;
            const uint64_t evict_first = kimi_l2_evict_first();   /* y is read once, by the combine */
            const int cq = 4 * (t >> 1);
            kimi_bulk_wait_read();              /* the last tile's rows have left */
            kimi_bar_sync(3 + cg, 128);
#pragma unroll
            for (int hh = 0; hh < NH; hh++) {
#pragma unroll
                for (int j = 0; j < 16; j++) {
                    const float *a = acc + hh * 64 + 4 * j;
                    /* even t sends its r1 pair, odd t its r0 pair */
                    const float s0 = (t & 1) ? a[0] : a[2], s1 = (t & 1) ? a[1] : a[3];
                    const float o0 = __shfl_xor_sync(0xffffffffu, s0, 1), o1 = __shfl_xor_sync(0xffffffffu, s1, 1);
                    /* row r1: partner's (t-1) cols first; row r0: own cols, then partner's */
                    const float v[4] = {(t & 1) ? o0 : a[0], (t & 1) ? o1 : a[1],
                                        (t & 1) ? a[2] : o0, (t & 1) ? a[3] : o1};
                    kimi_st4((uint16_t *) (out + rl * L::out_pitch) + hh * 128 + 8 * j + cq, v);
                }
            }
            kimi_fence_proxy_async();           /* the rows, to the bulk copies */
            kimi_bar_sync(3 + cg, 128);
            if (wt < 64 && m_off + wt < rows) {
                kimi_bulk_store_hint(ws.y + (size_t) (row0 + m_off + wt) * N + n0 + h0 * 128,
                                     out + wt * L::out_pitch, NH * 256, evict_first);
                kimi_bulk_commit();
            }
        }
    }
    kimi_bulk_wait();           /* shared memory lives until the last rows are out */
}

/* ---- launchers ---------------------------------------------------------- */

/* gate_up's token rows (and their scales) copied into the plan's row order,
 * tile by tile of the list, so the GEMM loads a tile's rows as one TMA box
 * (TMA cannot gather).  Only listed rows are copied: a dropped pair's row
 * has no token. */
#define KG_GATHER_THREADS 256

static __global__ void __launch_bounds__(KG_GATHER_THREADS)
moe_gather_rows_kernel(const uint8_t *__restrict__ xq, const float *__restrict__ xs, int K, int max_tiles,
                       kimi_moe_ws_t ws, uint8_t *__restrict__ xq_rows, float *__restrict__ xs_rows)
{
    KIMI_GRID_ENTRY();
    const int n = ws.tiles[3 * max_tiles], C = K / 16, KB = K / 128;
    for (int tile = blockIdx.x; tile < n; tile += gridDim.x) {
        const int row0 = ws.tiles[3 * tile + 1], rows = ws.tiles[3 * tile + 2];
        for (int i = threadIdx.x; i < rows * C; i += KG_GATHER_THREADS) {
            const int r = i / C, c = i - r * C;
            const size_t tok = (size_t) ws.row_token[row0 + r];
            ((uint4 *) (xq_rows + (size_t) (row0 + r) * K))[c] = __ldg((const uint4 *) (xq + tok * K) + c);
        }
        for (int i = threadIdx.x; i < rows * KB; i += KG_GATHER_THREADS) {
            const int r = i / KB, c = i - r * KB;
            xs_rows[(size_t) (row0 + r) * KB + c] = xs[(size_t) ws.row_token[row0 + r] * KB + c];
        }
    }
}

/* 128-row tiles once experts average 192 rows (fewer weight re-reads beat
 * the padding of the last tile); 64 below.  KIMI_MOE_BM=64|128 forces one
 * (A/B measurements). */
static int kg_bm(const kimi_moe_ws_t *ws, int max_slots)
{
    static int forced = -1;
    if (forced < 0) {
        const char *v = getenv("KIMI_MOE_BM");
        forced = v != NULL && (atoi(v) == 64 || atoi(v) == 128) ? atoi(v) : 0;
    }
    if (forced) {
        return forced;
    }
    return ws->rows >= 192 * max_slots ? 128 : 64;
}

extern "C" int
kimi_moe_grouped_max_tiles(int rows, int max_slots)
{
    return rows / 64 + max_slots;
}

static int
kg_check(int K, int N, int n_half, const kimi_experts_t *ex, const kimi_moe_ws_t *ws, kimi_err_t *err)
{
    if (K % 128 != 0 || K / 128 > KG_MAX_KB || N % n_half != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe grouped: K=%d (multiple of 128, <= %d), N=%d (multiple of %d)",
                            K, KG_MAX_KB * 128, N, n_half);
    }
    if (ex->tmaps == NULL || ex->n_tmaps <= 0 || ws->tiles == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "moe grouped: no tensor maps or tile list");
    }
    return KIMI_OK;
}

static int kg_n_sm(void)
{
    static int n;
    if (n == 0) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) == cudaSuccess
            && cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && v > 0) {
            n = v;
        } else {
            n = 132;
        }
    }
    return n;
}

template <bool GATE_UP, int BM>
static int
kg_launch_bm(const uint8_t *xq, const float *xs, int K, int N, int max_tiles, const kimi_experts_t *ex,
             const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    KIMI_CUDA_TRY(cudaFuncSetAttribute(moe_grouped_kernel<GATE_UP, BM>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, kg_layout<BM, GATE_UP>::smem), err);
    /* one block per SM; a block past the work exits at once */
    const int n_work_max = max_tiles * (N / (GATE_UP ? 128 : 256));
    /* the activation rows by TMA (down's h, gate_up's tokens in plan order):
     * [rows][K] in boxes of BM rows x 128 bytes */
    CUtensorMap a_map;
    int rc = kimi_tmap_2d(&a_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, GATE_UP ? xq : ws->hq, K,
                          ws->rows, K, 128, BM, 256, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    KIMI_LAUNCH(err, moe_grouped_kernel<GATE_UP, BM>, min(kg_n_sm(), n_work_max), KG_THREADS,
                kg_layout<BM, GATE_UP>::smem, s, a_map, xs, K, N, max_tiles, *ex, *ws);
    return KIMI_OK;
}

/* gemm_only: the tile list and gate_up's gathered rows are those the last
 * full call left in ws (kimi_moe_grouped_gate_up_gemm) */
template <bool GATE_UP>
static int
kg_launch(const uint8_t *xq, const float *xs, int K, int N, int max_slots, const kimi_experts_t *ex,
          const kimi_moe_ws_t *ws, bool gemm_only, cudaStream_t s, kimi_err_t *err)
{
    const int bm = kg_bm(ws, max_slots);
    const int max_tiles = kimi_moe_grouped_max_tiles(ws->rows, max_slots);
    if (!gemm_only) {
        KIMI_LAUNCH(err, moe_tile_list_kernel, 1, KG_LIST_THREADS, 0, s, *ws, max_slots, bm, max_tiles);
    }
    if (GATE_UP) {
        /* into y's memory: down writes y only after this GEMM has read it */
        uint8_t *xq_rows = (uint8_t *) ws->y;
        float *xs_rows = (float *) (xq_rows + (((size_t) ws->rows * K + 255) & ~(size_t) 255));
        if (!gemm_only) {
            KIMI_LAUNCH(err, moe_gather_rows_kernel, 4 * kg_n_sm(), KG_GATHER_THREADS, 0, s, xq, xs, K,
                        max_tiles, *ws, xq_rows, xs_rows);
        }
        xq = xq_rows;
        xs = xs_rows;
    }
    return bm == 128 ? kg_launch_bm<GATE_UP, 128>(xq, xs, K, N, max_tiles, ex, ws, s, err)
                     : kg_launch_bm<GATE_UP, 64>(xq, xs, K, N, max_tiles, ex, ws, s, err);
}

extern "C" int
kimi_moe_grouped_gate_up(const uint8_t *xq, const float *xs, int D, int I, int max_slots, const kimi_experts_t *ex,
                         const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    int rc = kg_check(D, I, 128, ex, ws, err);
    return rc != KIMI_OK ? rc : kg_launch<true>(xq, xs, D, I, max_slots, ex, ws, false, s, err);
}

extern "C" int
kimi_moe_grouped_gate_up_gemm(int D, int I, int max_slots, const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                              cudaStream_t s, kimi_err_t *err)
{
    int rc = kg_check(D, I, 128, ex, ws, err);
    return rc != KIMI_OK ? rc : kg_launch<true>(NULL, NULL, D, I, max_slots, ex, ws, true, s, err);
}

extern "C" int
kimi_moe_grouped_down(int D, int I, int max_slots, const kimi_experts_t *ex,
                      const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    int rc = kg_check(I, D, 256, ex, ws, err);
    return rc != KIMI_OK ? rc : kg_launch<false>(NULL, NULL, I, D, max_slots, ex, ws, false, s, err);
}

/* ---- tensor maps ---------------------------------------------------------- */

extern "C" size_t
kimi_moe_tmaps_bytes(int n)
{
    return (size_t) 3 * n * sizeof(CUtensorMap);
}

extern "C" int
kimi_moe_tmaps_encode(void *out, const uint8_t *const *gate, const uint8_t *const *up,
                      const uint8_t *const *down, int n, int D, int I, kimi_err_t *err)
{
    CUtensorMap *m = (CUtensorMap *) out;
    for (int e = 0; e < n; e++) {
        int rc;
        /* [rows][cols] e4m3; gate/up: boxes of 64 rows x 128 bytes
         * (KG_Q_B); down: 256 rows (KG_ABL 1, half the boxes, keeps 64) */
        if ((rc = kimi_tmap_2d(&m[e], CU_TENSOR_MAP_DATA_TYPE_UINT8, gate[e], D, I, D, 128, 64, 256, err)) != KIMI_OK
            || (rc = kimi_tmap_2d(&m[n + e], CU_TENSOR_MAP_DATA_TYPE_UINT8, up[e], D, I, D, 128, 64, 256,
                                  err)) != KIMI_OK
            || (rc = kimi_tmap_2d(&m[2 * n + e], CU_TENSOR_MAP_DATA_TYPE_UINT8, down[e], I, D, I, 128,
                                  KG_ABL == 1 ? 64 : 256, 256, err)) != KIMI_OK) {
            return rc;
        }
    }
    return KIMI_OK;
}
