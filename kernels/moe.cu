/*
 * MoE experts for decode: plan (permute), fused gate/up + SiLU, down with
 * FP8 re-quantisation, and the weighted combine (unpermute).
 *
 *   plan:     rows grouped by expert ("slots", masked layout: the grid covers
 *             the most slots T tokens can touch; empty slots exit at once)
 *   gate_up:  h[r,i]  = silu(G[r,i]) * U[r,i],  G/U[r,:] = fp8gemm(xq[tok r], W_gate/up[e])
 *   down:     hq     = e4m3_1x128(h[r,:])  (T <= 16: in shared memory, in each block's
 *                                           prologue; above: once per row, own kernel)
 *             y[r,:] = fp8gemm(hq, W_down[e])
 *   combine:  out[t,:] = sum_k w[t,k] * y[row(t,k),:] + y[shared row(t),:]
 *
 * Layout:  xq e4m3 [T][D] + xs [T][D/128] token-major (kimi_fp8_quant_1x128);
 *          expert weights through kimi_experts_t pointer tables (gate/up
 *          [I][D], down [D][I], checkpoint 128x128 scales); h fp32 [rows][I],
 *          y bf16 [rows][D]; rows = T*top_k routed + T shared.
 * Cost:    bytes = distinct experts touched * 3*I*D (+ shared) + scales; each
 *          weight byte is streamed once per 32 tokens of its slot
 *          (fp8_tile.cuh), so decode is bound by HBM: floor = those bytes /
 *          copy bandwidth.  h and y stay in L2-sized buffers (T*9*(4I+2D) B).
 *          FLOPs 2*rows*3*I*D on mma.sync e4m3.
 * Twin:    kimi_act_quant_fp8, kimi_gemm_fp8a_fp8w, kimi_silu_mul and the
 *          MoE sum of engine/backend/cpu/ops.h.
 */

#include "fp8_tile.cuh"
#include "kimi_kernels.h"
#include "moe_plan.cuh"
#include <stdlib.h>
#include <type_traits>

#define MOE_WARPS 4
#define MOE_PLAN_THREADS 1024

/* ---- sizes ---------------------------------------------------------------- */

extern "C" int
kimi_moe_max_slots(int T, int top_k, int E, int shared)
{
    const int routed = T * top_k < E ? T * top_k : E;
    return routed + (shared ? (T + KIMI_MOE_SLOT_TOKENS - 1) / KIMI_MOE_SLOT_TOKENS : 0);
}

extern "C" int
kimi_moe_rows(int T, int top_k, int shared)
{
    return T * top_k + (shared ? T : 0);
}

static size_t al256(size_t n)
{
    return (n + 255) & ~(size_t) 255;
}

extern "C" size_t
kimi_moe_ws_bytes(int T, int top_k, int E, int shared, int D, int I)
{
    const size_t ms = (size_t) kimi_moe_max_slots(T, top_k, E, shared);
    const size_t rows = (size_t) kimi_moe_rows(T, top_k, shared);
    return al256(KIMI_MOE_TICKETS * 4) + 3 * al256(ms * 4) + al256(rows * 4) + al256((size_t) T * top_k * 4)
           + al256(rows * I * 4) + al256(rows * I) + al256(rows * (I / 128) * 4)
           + al256(rows * D * 2)
           + al256(((size_t) kimi_moe_grouped_max_tiles((int) rows, (int) ms) * 3 + 1) * 4);
}

extern "C" void
kimi_moe_ws_carve(kimi_moe_ws_t *ws, void *base, int T, int top_k, int E,
                  int shared, int D, int I)
{
    const size_t ms = (size_t) kimi_moe_max_slots(T, top_k, E, shared);
    const size_t rows = (size_t) kimi_moe_rows(T, top_k, shared);
    char *p = (char *) base;
    ws->tickets = (uint32_t *) p;     p += al256(KIMI_MOE_TICKETS * 4);
    ws->slot_expert = (int32_t *) p;  p += al256(ms * 4);
    ws->slot_row0 = (int32_t *) p;    p += al256(ms * 4);
    ws->slot_rows = (int32_t *) p;    p += al256(ms * 4);
    ws->row_token = (int32_t *) p;    p += al256(rows * 4);
    ws->row_of_pair = (int32_t *) p;  p += al256((size_t) T * top_k * 4);
    ws->h = (float *) p;              p += al256(rows * I * 4);
    ws->hq = (uint8_t *) p;           p += al256(rows * I);
    ws->hs = (float *) p;             p += al256(rows * (I / 128) * 4);
    ws->tiles = (int32_t *) p;        p += al256(((size_t) kimi_moe_grouped_max_tiles((int) rows, (int) ms) * 3 + 1) * 4);
    ws->y = (kimi_bf16_t *) p;    /* [rows][D]: the last region, sized by kimi_moe_ws_bytes */
    ws->rows = (int) rows;
    (void) D;
}

/* ---- plan ------------------------------------------------------------------- */

/*
 * One block, a stable counting sort of the T*top_k pairs by expert.  Warp w
 * owns the w-th contiguous segment of pairs: it counts its segment per
 * expert (hist[w][e]; lanes of one expert found with __match_any_sync),
 * a scan over warps and experts turns the counts into each warp's first
 * row per expert, and the warp walks its segment again in order, placing
 * each pair at that row plus its rank among same-expert lanes before it.
 * Rows of an expert therefore come in pair (= token) order, the same
 * every run.  O(T*top_k/1024) steps a thread; shared memory 32*E ints.
 */
#define MOE_PLAN_WARPS (MOE_PLAN_THREADS / 32)

static __global__ void __launch_bounds__(MOE_PLAN_THREADS)
moe_plan_kernel(const int32_t *__restrict__ topk_idx, int T, int top_k, int E,
                int shared, int max_slots, kimi_moe_ws_t ws)
{
    KIMI_GRID_ENTRY();
    extern __shared__ int sm[];
    int *hist = sm;                          /* [MOE_PLAN_WARPS][E]: count, then first row */
    int *act = sm + MOE_PLAN_WARPS * E;      /* [E]: active-slot scan */
    int *tot = act + E;                      /* [E]: pairs of expert e */
    __shared__ int tot_act;
    const int P = T * top_k;
    const int nsh = shared ? (T + KIMI_MOE_SLOT_TOKENS - 1) / KIMI_MOE_SLOT_TOKENS : 0;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int seg = (P + MOE_PLAN_WARPS - 1) / MOE_PLAN_WARPS;
    const int p0 = wid * seg, p1 = min(P, p0 + seg);
    const unsigned lt = (1u << lane) - 1;

    for (int i = threadIdx.x; i < MOE_PLAN_WARPS * E; i += blockDim.x) {
        hist[i] = 0;
    }
    __syncthreads();
    for (int b = p0; b < p1; b += 32) {
        const int p = b + lane;
        const int e = p < p1 ? plan_id(topk_idx, p, E) : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, e);
        if (e >= 0 && (peers & lt) == 0) {
            hist[wid * E + e] += __popc(peers);
        }
        __syncwarp();
    }
    __syncthreads();
    /* per expert: pairs in all segments, and each segment's offset inside
     * the expert's rows */
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int c = 0;
        for (int w = 0; w < MOE_PLAN_WARPS; w++) {
            const int n = hist[w * E + e];
            hist[w * E + e] = c;
            c += n;
        }
        tot[e] = c;
        act[e] = c > 0;
    }
    __syncthreads();
    /* exclusive scans of counts and of "active" over the experts, one pass
     * of MOE_PLAN_THREADS-wide chunks (warp shuffles, then warp totals) */
    {
        __shared__ int wsum_r[32], wsum_a[32], carry_r, carry_a;
        if (threadIdx.x == 0) {
            carry_r = 0;
            carry_a = 0;
        }
        __syncthreads();
        for (int base = 0; base < E; base += MOE_PLAN_THREADS) {
            const int e = base + threadIdx.x;
            const int c = e < E ? tot[e] : 0, f = e < E ? act[e] : 0;
            int ir = c, ia = f;
            for (int o = 1; o < 32; o <<= 1) {
                int vr = __shfl_up_sync(0xffffffffu, ir, o), va = __shfl_up_sync(0xffffffffu, ia, o);
                if (lane >= o) {
                    ir += vr;
                    ia += va;
                }
            }
            if (lane == 31) {
                wsum_r[wid] = ir;
                wsum_a[wid] = ia;
            }
            __syncthreads();
            if (wid == 0) {
                int r = wsum_r[lane], a = wsum_a[lane];
                for (int o = 1; o < 32; o <<= 1) {
                    int vr = __shfl_up_sync(0xffffffffu, r, o), va = __shfl_up_sync(0xffffffffu, a, o);
                    if (lane >= o) {
                        r += vr;
                        a += va;
                    }
                }
                wsum_r[lane] = r;   /* inclusive over warps */
                wsum_a[lane] = a;
            }
            __syncthreads();
            const int pr = carry_r + (wid > 0 ? wsum_r[wid - 1] : 0) + ir - c;
            const int pa = carry_a + (wid > 0 ? wsum_a[wid - 1] : 0) + ia - f;
            __syncthreads();
            if (e < E) {
                /* first row of expert e: into every segment's offset */
                for (int w = 0; w < MOE_PLAN_WARPS; w++) {
                    hist[w * E + e] += pr;
                }
                if (c > 0) {
                    const int sl = nsh + pa;
                    ws.slot_expert[sl] = e;
                    ws.slot_row0[sl] = pr;
                    ws.slot_rows[sl] = c;
                }
            }
            if (threadIdx.x == MOE_PLAN_THREADS - 1) {
                carry_r = pr + c;
                carry_a = pa + f;
                tot_act = pa + f;
            }
            __syncthreads();
        }
    }
    /* place the pairs, each warp its segment in order */
    for (int b = p0; b < p1; b += 32) {
        const int p = b + lane;
        const int e = p < p1 ? plan_id(topk_idx, p, E) : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, e);
        if (e >= 0) {
            const int r = hist[wid * E + e] + __popc(peers & lt);
            ws.row_token[r] = p / top_k;
            ws.row_of_pair[p] = r;
        } else if (p < p1) {
            ws.row_of_pair[p] = -1;
        }
        __syncwarp();
        if (e >= 0 && (peers & lt) == 0) {
            hist[wid * E + e] += __popc(peers);
        }
        __syncwarp();
    }
    /* shared expert slots first, so their (fuller) blocks start first */
    for (int c = threadIdx.x; c < nsh; c += blockDim.x) {
        ws.slot_expert[c] = E;
        ws.slot_row0[c] = P + c * KIMI_MOE_SLOT_TOKENS;
        ws.slot_rows[c] = min(KIMI_MOE_SLOT_TOKENS, T - c * KIMI_MOE_SLOT_TOKENS);
    }
    if (shared) {
        for (int t = threadIdx.x; t < T; t += blockDim.x) {
            ws.row_token[P + t] = t;
        }
    }
    __syncthreads();
    for (int s = nsh + tot_act + threadIdx.x; s < max_slots; s += blockDim.x) {
        ws.slot_expert[s] = -1;
        ws.slot_row0[s] = 0;
        ws.slot_rows[s] = 0;
    }
}

/* The plan of at most 32 pairs: one warp (moe_plan.cuh). */
static __global__ void __launch_bounds__(32)
moe_plan_warp_kernel(const int32_t *__restrict__ topk_idx, int T, int top_k, int E,
                     int shared, int max_slots, kimi_moe_ws_t ws)
{
    KIMI_GRID_ENTRY();
    moe_plan_warp(topk_idx, T, top_k, E, shared, max_slots, ws);
}

extern "C" int
kimi_moe_plan(const int32_t *topk_idx, int T, int top_k, int E, int shared,
              const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    if (topk_idx == NULL || ws == NULL || T <= 0 || top_k <= 0 || E <= 0 || E > 1024) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_plan: T=%d top_k=%d E=%d (E <= 1024)", T, top_k, E);
    }
    if ((long) T * top_k <= 32) {
        KIMI_LAUNCH(err, moe_plan_warp_kernel, 1, 32, 0, s, topk_idx, T, top_k, E, shared,
                    kimi_moe_max_slots(T, top_k, E, shared), *ws);
        return KIMI_OK;
    }
    const size_t smem = ((size_t) MOE_PLAN_WARPS + 2) * (size_t) E * sizeof(int);
    KIMI_CUDA_TRY(cudaFuncSetAttribute(moe_plan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int) smem), err);
    KIMI_LAUNCH(err, moe_plan_kernel, 1, MOE_PLAN_THREADS, smem, s, topk_idx, T, top_k, E, shared,
                kimi_moe_max_slots(T, top_k, E, shared), *ws);
    return KIMI_OK;
}

/* Tensor parallel with expert parallelism: global expert ids to this
 * rank's [first, first + count), others -1 (the plan drops them). */
static __global__ void
moe_ids_localize_kernel(int32_t *__restrict__ idx, int n, int first, int count)
{
    KIMI_GRID_ENTRY();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const int e = idx[i] - first;
        idx[i] = e >= 0 && e < count ? e : -1;
    }
}

extern "C" int
kimi_moe_ids_localize(int32_t *idx, int n, int first, int count, cudaStream_t s, kimi_err_t *err)
{
    if (idx == NULL || n < 0 || first < 0 || count <= 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_ids_localize: n=%d first=%d count=%d", n, first,
                            count);
    }
    if (n == 0) {
        return KIMI_OK;
    }
    KIMI_LAUNCH(err, moe_ids_localize_kernel, (n + 255) / 256, 256, 0, s, idx, n, first, count);
    return KIMI_OK;
}

/* ---- gate/up + SiLU ------------------------------------------------------- */

/*
 * Block: 4 warps, 64 intermediate columns of one slot.  A warp's two tile
 * sets are the SAME 16 columns of W_gate and W_up, so silu(gate)*up is formed
 * in registers: lane (g,t) holds G and U of columns c0+g, c0+g+8 for tokens
 * 2t, 2t+1 of each group.
 */
template <int NG, bool PAIR>
static __global__ void __launch_bounds__(MOE_WARPS * 32)
moe_gate_up_kernel(const uint8_t *__restrict__ xq,   // [T, D]
                   const float *__restrict__ xs,     // [T, D/128]
                   int D, int I, kimi_experts_t ex, kimi_moe_ws_t ws)
{
    KIMI_GRID_ENTRY();
    const int slot = blockIdx.y;
    const int rows = ws.slot_rows[slot];
    if (rows == 0) {
        return;
    }
    const int e = ws.slot_expert[slot], row0 = ws.slot_row0[slot];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int c0 = blockIdx.x * 64 + warp * 16;
    const int KB = D / 128;
    const uint8_t *wg = ex.gate[e] + (size_t) (c0 + g) * D;
    const uint8_t *wu = ex.up[e] + (size_t) (c0 + g) * D;
    const float *sg = ex.gate_s[e] + (size_t) (c0 / 128) * KB;
    const float *su = ex.up_s[e] + (size_t) (c0 / 128) * KB;
    const int32_t *tok = ws.row_token + row0;

    for (int ch = 0; ch < rows; ch += 8 * NG) {
        const uint8_t *xrow[NG];
        const float *xs0[NG], *xs1[NG];
#pragma unroll
        for (int j = 0; j < NG; j++) {
            xrow[j] = xq + (size_t) tok[min(ch + j * 8 + g, rows - 1)] * D;
            xs0[j] = xs + (size_t) tok[min(ch + j * 8 + 2 * t, rows - 1)] * KB;
            xs1[j] = xs + (size_t) tok[min(ch + j * 8 + 2 * t + 1, rows - 1)] * KB;
        }
        float acc[2][NG][4];
        fp8_tile<NG, PAIR>(wg, wu, sg, su, (size_t) D, xrow, xs0, xs1,
                           min(NG, (rows - ch + 7) / 8), acc, 0, KB);
#pragma unroll
        for (int j = 0; j < NG; j++) {
            const int r = ch + j * 8 + 2 * t;
#pragma unroll
            for (int q = 0; q < 2; q++) {
                if (r + q < rows) {
                    float *hr = ws.h + (size_t) (row0 + r + q) * I + c0 + g;
                    const float g0 = acc[0][j][q], g1 = acc[0][j][2 + q];
                    hr[0] = g0 / (1.f + expf(-g0)) * acc[1][j][q];
                    hr[8] = g1 / (1.f + expf(-g1)) * acc[1][j][2 + q];
                }
            }
        }
    }
}

/* ---- down with FP8 re-quantisation ------------------------------------------ */

/* Shared-memory row stride: +64 bytes so the 8 token rows a quarter-warp reads
 * land in different banks. */
#define HQ_PAD 64

/* Large batches: h is quantised once into ws.hq/hs (one warp per 128-group);
 * re-quantising it in every down block's prologue (56 blocks per slot) costs
 * more than the weights at T = 256. */
static __global__ void
moe_hquant_kernel(int n_rows, int I, kimi_moe_ws_t ws)
{
    KIMI_GRID_ENTRY();
    const int IB = I / 128;
    const int q = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (q >= n_rows * IB) {
        return;
    }
    const int r = q / IB, gi = q % IB;
    float v[4], sc;
    kimi_ld4(ws.h + (size_t) r * I + gi * 128 + lane * 4, v);
    *(uint32_t *) (ws.hq + (size_t) r * I + gi * 128 + lane * 4) = kimi_quant128_warp(v, &sc);
    if (lane == 0) {
        ws.hs[(size_t) r * IB + gi] = sc;
    }
}

/* NG = 1 (T <= 8): at most 128 registers, so 4 blocks (16 warps) fit an SM
 * and the ~2000 warps of a batch-1 layer run in one wave instead of 1.3. */
template <int NG, bool HQG, bool PAIR>
static __device__ __forceinline__ void
moe_down_slot(int D, int I, const kimi_experts_t &ex, const kimi_moe_ws_t &ws, uint8_t *smem)
{
    const int slot = blockIdx.y;
    const int rows = ws.slot_rows[slot];
    if (rows == 0) {
        return;
    }
    const int e = ws.slot_expert[slot], row0 = ws.slot_row0[slot];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = (blockIdx.x * MOE_WARPS + warp) * 32;
    const int IB = I / 128, ld = I + HQ_PAD;
    uint8_t *hq = smem;                                        // [8*NG, I+pad] e4m3
    float   *hs = (float *) (smem + (size_t) 8 * NG * ld);     // [8*NG, I/128]
    const uint8_t *wa = ex.down[e] + (size_t) (n0 + g) * I;
    const uint8_t *wb = ex.down[e] + (size_t) (n0 + 16 + g) * I;
    const float *sa = ex.down_s[e] + (size_t) (n0 / 128) * IB;
    const float *sb = ex.down_s[e] + (size_t) ((n0 + 16) / 128) * IB;

    for (int ch = 0; ch < rows; ch += 8 * NG) {
        const int nr = min(8 * NG, rows - ch);
        if (HQG) {
            const uint8_t *xrow[NG];
            const float *xs0[NG], *xs1[NG];
            const size_t r0 = (size_t) row0 + ch;
#pragma unroll
            for (int j = 0; j < NG; j++) {
                xrow[j] = ws.hq + (r0 + min(j * 8 + g, nr - 1)) * I;
                xs0[j] = ws.hs + (r0 + min(j * 8 + 2 * t, nr - 1)) * IB;
                xs1[j] = ws.hs + (r0 + min(j * 8 + 2 * t + 1, nr - 1)) * IB;
            }
            float acc[2][NG][4];
            fp8_tile<NG, PAIR>(wa, wb, sa, sb, (size_t) I, xrow, xs0, xs1,
                               min(NG, (nr + 7) / 8), acc, 0, IB);
#pragma unroll
            for (int s = 0; s < 2; s++) {
#pragma unroll
                for (int j = 0; j < NG; j++) {
                    const int r = j * 8 + 2 * t;
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        if (r + q < nr) {
                            kimi_bf16_t *yr = ws.y + (r0 + r + q) * D + n0 + s * 16 + g;
                            yr[0] = kimi_f2bf(acc[s][j][q]);
                            yr[8] = kimi_f2bf(acc[s][j][2 + q]);
                        }
                    }
                }
            }
            continue;
        }
        /* the chunk's first weights do not wait for h: in flight while
         * the block quantises it */
        TileW cur;
        if (n0 < D) {
            tile_load_w<PAIR>(cur, wa, wb, (size_t) I, 0, t);
        }
        __syncthreads();   /* the previous chunk's readers are done */
        /* quantise h rows [ch, ch+nr): one warp per (row, 128-group), a
         * warp's next 2 groups loaded together (one L2 round trip, not 2;
         * 4 spill registers at 128) */
        for (int q0 = warp; q0 < nr * IB; q0 += 2 * MOE_WARPS) {
            float v[2][4];
#pragma unroll
            for (int u = 0; u < 2; u++) {
                const int q = q0 + u * MOE_WARPS;
                if (q < nr * IB) {
                    kimi_ld4(ws.h + (size_t) (row0 + ch + q / IB) * I + (q % IB) * 128 + lane * 4, v[u]);
                }
            }
#pragma unroll
            for (int u = 0; u < 2; u++) {
                const int q = q0 + u * MOE_WARPS, r = q / IB, gi = q % IB;
                if (q < nr * IB) {
                    float sc;
                    *(uint32_t *) (hq + (size_t) r * ld + gi * 128 + lane * 4) = kimi_quant128_warp(v[u], &sc);
                    if (lane == 0) {
                        hs[r * IB + gi] = sc;
                    }
                }
            }
        }
        __syncthreads();
        if (n0 < D) {
            const uint8_t *xrow[NG];
            const float *xs0[NG], *xs1[NG];
#pragma unroll
            for (int j = 0; j < NG; j++) {
                xrow[j] = hq + (size_t) min(j * 8 + g, nr - 1) * ld;
                xs0[j] = hs + min(j * 8 + 2 * t, nr - 1) * IB;
                xs1[j] = hs + min(j * 8 + 2 * t + 1, nr - 1) * IB;
            }
            float acc[2][NG][4];
            fp8_tile_run<NG, PAIR>(cur, wa, wb, sa, sb, (size_t) I, xrow, xs0, xs1,
                                   min(NG, (nr + 7) / 8), acc, 0, IB);
#pragma unroll
            for (int s = 0; s < 2; s++) {
#pragma unroll
                for (int j = 0; j < NG; j++) {
                    const int r = j * 8 + 2 * t;
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        if (r + q < nr) {
                            kimi_bf16_t *yr = ws.y + (size_t) (row0 + ch + r + q) * D + n0 + s * 16 + g;
                            yr[0] = kimi_f2bf(acc[s][j][q]);
                            yr[8] = kimi_f2bf(acc[s][j][2 + q]);
                        }
                    }
                }
            }
        }
    }
}

/* The down GEMM of blockIdx.y's slot over 128 output columns; with O set
 * (batches of <= 16 tokens) also the combine of those columns: the last of
 * the column's slot blocks to finish (a ticket a column range,
 * ws.tickets[1 + blockIdx.x], wrapped back to 0 by the last arrival) sums
 * every token's rows with moe_combine_kernel's arithmetic, one column a
 * thread, so the layer needs no combine launch (~3 us at batch 1). */
template <int NG, bool HQG, bool PAIR, typename O>
static __global__ void __launch_bounds__(MOE_WARPS * 32, NG == 1 ? 4 : 1)
moe_down_kernel(int D, int I, kimi_experts_t ex, kimi_moe_ws_t ws,
                const float *__restrict__ topk_w, int T, int top_k, int shared,
                O *__restrict__ out)
{
    KIMI_GRID_ENTRY();
    extern __shared__ __align__(16) uint8_t smem[];
    moe_down_slot<NG, HQG, PAIR>(D, I, ex, ws, smem);
    if constexpr (!std::is_void<O>::value) {
        __shared__ bool last;
        __threadfence();   /* this block's y rows before its ticket */
        __syncthreads();
        if (threadIdx.x == 0) {
            last = atomicInc(ws.tickets + 1 + blockIdx.x, gridDim.y - 1) == gridDim.y - 1;
        }
        __syncthreads();
        if (!last) {
            return;
        }
        __threadfence();
        const int d = blockIdx.x * MOE_WARPS * 32 + threadIdx.x;
        if (d >= D) {
            return;
        }
        for (int t = 0; t < T; t++) {
            float a = 0.f;
            for (int k = 0; k < top_k; k++) {
                const int r = ws.row_of_pair[t * top_k + k];
                if (r < 0) {
                    continue;
                }
                a += topk_w[t * top_k + k] * kimi_bf2f(__ldcg(ws.y + (size_t) r * D + d));
            }
            if (shared) {
                a += kimi_bf2f(__ldcg(ws.y + (size_t) (T * top_k + t) * D + d));
            }
            kimi_stf(out + (size_t) t * D + d, a);
        }
    }
}

static int
moe_check(int D, int I, int max_slots, const kimi_experts_t *ex,
          const kimi_moe_ws_t *ws, kimi_err_t *err)
{
    if (ex == NULL || ws == NULL || ex->gate == NULL || ex->up == NULL || ex->down == NULL
        || ex->gate_s == NULL || ex->up_s == NULL || ex->down_s == NULL
        || D <= 0 || D % 128 != 0 || I <= 0 || I % 128 != 0 || max_slots <= 0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "moe: D=%d I=%d slots=%d (D %% 128, I %% 128, tables set)",
                            D, I, max_slots);
    }
    return KIMI_OK;
}

/* The grouped wgmma GEMMs (moe_grouped.cu) from KIMI_MOE_GROUPED_ROWS rows
 * per slot on average (H200, K2 widths: 6 rows/slot 28 vs 40 TFLOP/s for the
 * masked kernels, 41 rows/slot 181 vs 88).  KIMI_MOE_MASKED=1 keeps every
 * size on the masked kernels (A/B measurements). */
static int use_grouped(const kimi_experts_t *ex, const kimi_moe_ws_t *ws, int max_slots)
{
    static int off = -1;
    if (off < 0) {
        off = getenv("KIMI_MOE_MASKED") != NULL;
    }
    return !off && ex->tmaps != NULL && ws->rows >= KIMI_MOE_GROUPED_ROWS * max_slots;
}

/* The grouped gate_up writes h already quantised (hq/hs), not ws->h. */
static int grouped_gate_up(const kimi_experts_t *ex, const kimi_moe_ws_t *ws, int max_slots, int D, int I)
{
    return use_grouped(ex, ws, max_slots) && I % 128 == 0 && D <= 8192;
}

/* Tokens per slot never exceed T (routed) or 32 (shared chunks): fewer
 * register groups for small batches. */
static int ng_for(int T)
{
    return T <= 8 ? 1 : (T <= 16 ? 2 : 4);
}

/* L2::256B weight loads (fp8_tile.cuh) from 2 tokens up.  H200, K2 widths:
 * B=16 gate_up 870 -> 766 us, down 496 -> 444; B=64 2391 -> 2081 / 1109 ->
 * 1025; but B=1 gate_up 71.3 -> 77.0 (its 288 blocks are one partial wave,
 * every warp streaming at once).  KIMI_MOE_L2PAIR=0|1 forces (A/B). */
static bool l2_pair(int T)
{
    static int forced = -2;
    if (forced == -2) {
        const char *v = getenv("KIMI_MOE_L2PAIR");
        forced = v != NULL && (v[0] == '0' || v[0] == '1') ? v[0] - '0' : -1;
    }
    return forced >= 0 ? forced == 1 : T >= 2;
}

template <int NG>
static int
launch_gate_up(const uint8_t *xq, const float *xs, int D, int I, int max_slots, bool pair,
               const kimi_experts_t *ex, const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    dim3 grid(I / 64, max_slots);
    if (pair) {
        KIMI_LAUNCH(err, moe_gate_up_kernel<NG, true>, grid, MOE_WARPS * 32, 0, s, xq, xs, D, I, *ex, *ws);
    } else {
        KIMI_LAUNCH(err, moe_gate_up_kernel<NG, false>, grid, MOE_WARPS * 32, 0, s, xq, xs, D, I, *ex, *ws);
    }
    return KIMI_OK;
}

extern "C" int
kimi_moe_gate_up(const uint8_t *xq, const float *xs, int T, int D, int I,
                 int max_slots, const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                 cudaStream_t s, kimi_err_t *err)
{
    int rc = moe_check(D, I, max_slots, ex, ws, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    if (xq == NULL || xs == NULL || T <= 0 || ((uintptr_t) xq & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_gate_up: xq/xs NULL or unaligned, T=%d", T);
    }
    if (grouped_gate_up(ex, ws, max_slots, D, I)) {
        return kimi_moe_grouped_gate_up(xq, xs, D, I, max_slots, ex, ws, s, err);
    }
    switch (ng_for(T)) {
    case 1:
        return launch_gate_up<1>(xq, xs, D, I, max_slots, l2_pair(T), ex, ws, s, err);
    case 2:
        return launch_gate_up<2>(xq, xs, D, I, max_slots, l2_pair(T), ex, ws, s, err);
    default:
        return launch_gate_up<4>(xq, xs, D, I, max_slots, l2_pair(T), ex, ws, s, err);
    }
}

/* O void: y only; else also the combine into out (moe_down_kernel). */
template <int NG, bool HQG, bool PAIR, typename O>
static int
launch_down_as(int D, int I, int max_slots, const kimi_experts_t *ex,
               const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err,
               const float *topk_w, int T, int top_k, int shared, O *out)
{
    const size_t smem = HQG ? 0 : (size_t) 8 * NG * (I + HQ_PAD) + (size_t) 8 * NG * (I / 128) * 4;
    if (smem > 227 * 1024) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_down: I=%d too wide for shared memory", I);
    }
    if (!HQG) {
        KIMI_CUDA_TRY(cudaFuncSetAttribute(moe_down_kernel<NG, HQG, PAIR, O>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem), err);
    }
    dim3 grid((D / 32 + MOE_WARPS - 1) / MOE_WARPS, max_slots);
    KIMI_LAUNCH(err, moe_down_kernel<NG, HQG, PAIR, O>, grid, MOE_WARPS * 32, smem, s, D, I, *ex, *ws,
                topk_w, T, top_k, shared, out);
    return KIMI_OK;
}

/* T: the batch (chooses the weight loads, l2_pair); topk_w .. out: the
 * combine, for O not void. */
template <int NG, bool HQG, typename O = void>
static int
launch_down(int D, int I, int max_slots, const kimi_experts_t *ex,
            const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err, int T,
            const float *topk_w = NULL, int top_k = 0, int shared = 0, O *out = NULL)
{
    return l2_pair(T) ? launch_down_as<NG, HQG, true, O>(D, I, max_slots, ex, ws, s, err, topk_w, T, top_k, shared, out)
                      : launch_down_as<NG, HQG, false, O>(D, I, max_slots, ex, ws, s, err, topk_w, T, top_k, shared, out);
}

/* Up to 16 tokens the re-quantisation rides in each block's prologue
 * (one launch fewer on the latency-bound small batches); above, once per
 * row in moe_hquant_kernel; after the grouped gate_up, which wrote hq/hs
 * itself, not at all. */
extern "C" int
kimi_moe_down(int T, int top_k, int D, int I, int max_slots, const kimi_experts_t *ex,
              const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    int rc = moe_check(D, I, max_slots, ex, ws, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    if (T <= 0 || top_k <= 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_down: T=%d top_k=%d", T, top_k);
    }
    if (!grouped_gate_up(ex, ws, max_slots, D, I)) {
        switch (ng_for(T)) {
        case 1:
            return launch_down<1, false>(D, I, max_slots, ex, ws, s, err, T);
        case 2:
            return launch_down<2, false>(D, I, max_slots, ex, ws, s, err, T);
        default:
            break;
        }
        /* the carve's rows: a plan without the shared expert has no T shared
         * rows, and quantising them would write past hq into hs */
        const int n_rows = ws->rows;
        const int warps = n_rows * (I / 128);
        KIMI_LAUNCH(err, moe_hquant_kernel, (warps + 7) / 8, 256, 0, s, n_rows, I, *ws);
    }
    if (use_grouped(ex, ws, max_slots) && D % 256 == 0 && I <= 8192) {
        return kimi_moe_grouped_down(D, I, max_slots, ex, ws, s, err);
    }
    return launch_down<4, true>(D, I, max_slots, ex, ws, s, err, T);
}

/* ---- combine (unpermute) ---------------------------------------------------- */

template <typename O>
static __global__ void
moe_combine_kernel(const kimi_bf16_t *__restrict__ y, const int32_t *__restrict__ row_of_pair,
                   const float *__restrict__ w, int T, int top_k, int shared, int D,
                   O *__restrict__ out)
{
    KIMI_GRID_ENTRY();
    const int t = blockIdx.x;
    for (int d = (blockIdx.y * blockDim.x + threadIdx.x) * 4; d < D; d += gridDim.y * blockDim.x * 4) {
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int k = 0; k < top_k; k++) {
            const int r = row_of_pair[t * top_k + k];
            if (r < 0) {
                continue;
            }
            const float wk = w[t * top_k + k];
            float v[4];
            kimi_ld4(y + (size_t) r * D + d, v);
            a.x += wk * v[0];
            a.y += wk * v[1];
            a.z += wk * v[2];
            a.w += wk * v[3];
        }
        if (shared) {
            float v[4];
            kimi_ld4(y + (size_t) (T * top_k + t) * D + d, v);
            a.x += v[0];
            a.y += v[1];
            a.z += v[2];
            a.w += v[3];
        }
        const float o[4] = { a.x, a.y, a.z, a.w };
        kimi_st4(out + (size_t) t * D + d, o);
    }
}

template <typename O>
static int
moe_combine_launch(const kimi_moe_ws_t *ws, const float *topk_w, int T, int top_k,
                 int shared, int D, O *out, cudaStream_t s, kimi_err_t *err)
{
    if (ws == NULL || topk_w == NULL || out == NULL || T <= 0 || top_k <= 0 || D % 4 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_combine: T=%d top_k=%d D=%d", T, top_k, D);
    }
    /* ~4 blocks per token: a single block per token is latency bound at T = 1 */
    KIMI_LAUNCH(err, moe_combine_kernel<O>,
                dim3(T, (D / 4 + 255) / 256 < 8 ? (D / 4 + 255) / 256 : 8), 256, 0, s, ws->y,
                ws->row_of_pair, topk_w, T, top_k, shared, D, out);
    return KIMI_OK;
}

extern "C" int
kimi_moe_combine(const kimi_moe_ws_t *ws, const float *topk_w, int T, int top_k,
                 int shared, int D, kimi_bf16_t *out, cudaStream_t s, kimi_err_t *err)
{
    return moe_combine_launch(ws, topk_w, T, top_k, shared, D, out, s, err);
}

extern "C" int
kimi_moe_combine_f32(const kimi_moe_ws_t *ws, const float *topk_w, int T, int top_k,
                     int shared, int D, float *out, cudaStream_t s, kimi_err_t *err)
{
    return moe_combine_launch(ws, topk_w, T, top_k, shared, D, out, s, err);
}

/* ---- down + combine -------------------------------------------------------- */

template <typename O>
static int
down_combine(int T, int top_k, int shared, int D, int I, int max_slots,
             const kimi_experts_t *ex, const kimi_moe_ws_t *ws, const float *topk_w,
             O *out, cudaStream_t s, kimi_err_t *err)
{
    int rc = moe_check(D, I, max_slots, ex, ws, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    if (T <= 0 || top_k <= 0 || topk_w == NULL || out == NULL || D % 4 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_down_combine: T=%d top_k=%d D=%d, or a NULL buffer",
                            T, top_k, D);
    }
    if (T <= 16 && ws->tickets != NULL && D / 128 < KIMI_MOE_TICKETS
        && !grouped_gate_up(ex, ws, max_slots, D, I)) {
        if (ng_for(T) == 1) {
            return launch_down<1, false, O>(D, I, max_slots, ex, ws, s, err, T, topk_w, top_k, shared, out);
        }
        return launch_down<2, false, O>(D, I, max_slots, ex, ws, s, err, T, topk_w, top_k, shared, out);
    }
    rc = kimi_moe_down(T, top_k, D, I, max_slots, ex, ws, s, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    return moe_combine_launch(ws, topk_w, T, top_k, shared, D, out, s, err);
}

extern "C" int
kimi_moe_down_combine(int T, int top_k, int shared, int D, int I, int max_slots,
                      const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                      const float *topk_w, kimi_bf16_t *out, cudaStream_t s, kimi_err_t *err)
{
    return down_combine(T, top_k, shared, D, I, max_slots, ex, ws, topk_w, (uint16_t *) out, s, err);
}

extern "C" int
kimi_moe_down_combine_f32(int T, int top_k, int shared, int D, int I, int max_slots,
                          const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                          const float *topk_w, float *out, cudaStream_t s, kimi_err_t *err)
{
    return down_combine(T, top_k, shared, D, I, max_slots, ex, ws, topk_w, out, s, err);
}
