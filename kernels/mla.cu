/*
 * Absorbed MLA decode over the paged 576-wide latent cache (bf16 or fp8).
 *
 *   score[b,h,p] = scale * (q[b,h,:512] . c_p + q[b,h,512:] . kpe_p)
 *   o[b,h,:]     = sum_p softmax_p(score[b,h,:]) * c_p            (512 wide)
 *
 * Layout:  q bf16 [B][H][576]; cache rows of 576 (c[512] | k_pe[64]),
 *          bf16 [blocks][bs][576] or e4m3 [blocks][bs][576] with fp32
 *          kv_scale[blocks][bs]; token p of sequence b is row p % bs of block
 *          block_table[b*bt_ld + p/bs]; o bf16 [B][H][512].
 * Work:    grid (split, b): a block streams its share of the context in
 *          64-token tiles and serves all H (<= 64, padded to the 64-row wgmma
 *          tile) heads from one read of each tile (see the kernel's comment);
 *          partial (O, m, l) per split go to ws and mla_combine_kernel merges
 *          them (the TMA kernel writes o itself when there is one split).
 *          A bf16 cache whose blocks are whole swizzle atoms (8..64
 *          tokens dividing 64, or multiples of 64) takes the TMA kernel;
 *          fp8 and other block sizes the cp.async one.
 * Cost:    bytes = sum_b ctx_b * 1152 (bf16) or 580 (fp8 + scale);
 *          FLOPs = 2 * H * ctx * (576 + 512) per sequence: 121 FLOP/byte at
 *          H = 64 on bf16, under the H100's ridge, so memory bound:
 *          floor = KV bytes / copy bandwidth (+ q, o and the split partials).
 * Twin:    kimi_mla_decode_absorbed() in engine/backend/cpu/ops.h (fp8:
 *          value = e4m3 * per-token scale, the twin's kimi_kv_read).
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"
#include "wgmma.cuh"
#include "tma.cuh"

#include <stdlib.h>
#include <string.h>

#define MLA_D      576
#define MLA_DV     512
#define MLA_TILE   32            /* kimi_mla_n_splits' unit: at least 4 per split */
#define LOG2E      1.4426950408889634f

/* ---- wgmma kernel (sm_90a) ------------------------------------------------
 *
 * One 64-token tile at a time, two warpgroups.  Warpgroup 0 computes
 * S = Q K^T for all 64 heads x 64 tokens (36 k16 steps of m64n64, Q and the
 * tile from shared memory in the 128-byte swizzled layout), the online
 * softmax, and writes P (bf16) and each head's rescale factor to shared
 * memory; then both do O = O * alpha + P V, warpgroup w owning output dims
 * 256w..256w+255 (128 fp32 registers a thread), V read N-major straight from
 * the same tile.  One warpgroup computes all of S so Q is read from shared
 * memory once per tile (split by tokens, both groups re-read all of Q and S
 * was bound by shared-memory bandwidth).  Two tile buffers: the next tile's
 * cp.async (one token row per 4 threads, the block-table entry read a tile
 * ahead) is issued before waiting for this one.  fp8: the tile is staged as e4m3 and
 * widened to bf16 (exact) in shared memory; the per-token scale is folded
 * into S's column and P's column instead of into every element.
 */

#define MW_TILE     64
#define MW_THREADS  256
#define MW_QB       (64 * 128)                /* one 64-col block of Q or of a tile */
#define MW_TILE_B   (9 * MW_QB)               /* 73728: a bf16 tile (or Q) */
#define MW_OFF_KV0  MW_TILE_B
#define MW_OFF_KV1  (2 * MW_TILE_B)
#define MW_OFF_P    (3 * MW_TILE_B)
#define MW_OFF_A    (MW_OFF_P + MW_QB)        /* [64] this tile's O rescale per head */
#define MW_OFF_KS   (MW_OFF_A + 64 * 4)
#define MW_SMEM     (MW_OFF_KS + 2 * 64 * 4 + 1024)   /* + alignment slack */

/* Global row of the cache this thread copies for tile `tile` (thread t
 * copies token t / 4 of the tile, chunks t % 4, t % 4 + 4, ...), or -1 past
 * the sequence.  Read one tile ahead so the block-table lookup's latency is
 * hidden behind a tile of compute. */
static __device__ __forceinline__ long long
mw_row(int tile, int len, int bs, const int32_t *bt)
{
    const int p = tile * MW_TILE + (threadIdx.x >> 2);
    return p < len ? (long long) bt[p / bs] * bs + p % bs : -1;
}

/* 64 rows of 576 bf16 into the swizzled 9 x [64 x 64] layout at dst, by
 * 256 threads: thread tid copies a quarter of row tid / 4, from src + row *
 * 576, or zeros for a row of -1. */
static __device__ __forceinline__ void
mw_copy_rows_bf16(uint8_t *dst, long long row, const uint16_t *src, int tid)
{
    const int r = tid >> 2, q = tid & 3;
    src += row * MLA_D;
#pragma unroll
    for (int i = 0; i < MLA_D / 32; i++) {
        const int k = q + 4 * i;
        uint8_t *d = dst + (k >> 3) * MW_QB + wg_swz128(r, (k & 7) * 8);
        if (row >= 0) {
            kimi_cp_async16(d, src + k * 8);
        } else {
            *(uint4 *) d = make_uint4(0, 0, 0, 0);
        }
    }
}

template <bool FP8>
static __device__ __forceinline__ void
mw_load_tile(uint8_t *sm, int stage, long long row, const void *kv, const float *kv_scale)
{
    if (!FP8) {
        mw_copy_rows_bf16(sm + (stage ? MW_OFF_KV1 : MW_OFF_KV0), row, (const uint16_t *) kv, threadIdx.x);
        return;
    }
    /* fp8: e4m3 rows staged linearly, the per-token scale beside them */
    const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
    uint8_t *dst = sm + MW_OFF_KV1 + stage * (MW_TILE * MLA_D) + r * MLA_D;
    const uint8_t *src = (const uint8_t *) kv + row * MLA_D;
#pragma unroll
    for (int i = 0; i < MLA_D / 64; i++) {
        const int k = q + 4 * i;
        if (row >= 0) {
            kimi_cp_async16(dst + k * 16, src + k * 16);
        } else {
            *(uint4 *) (dst + k * 16) = make_uint4(0, 0, 0, 0);
        }
    }
    if (q == 0) {
        float *ks = (float *) (sm + MW_OFF_KS) + stage * 64 + r;
        if (row >= 0) {
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n"
                         :: "r"(kimi_smem_addr(ks)), "l"(kv_scale + row));
        } else {
            *ks = 0.f;
        }
    }
}

/* e4m3 staging -> bf16 swizzled tile (unscaled: e4m3 values are exact in bf16) */
static __device__ __forceinline__ void
mw_widen_fp8(uint8_t *sm, int stage)
{
    const uint8_t *src = sm + MW_OFF_KV1 + stage * (MW_TILE * MLA_D);
    uint8_t *dst = sm + MW_OFF_KV0;
    for (int c = threadIdx.x; c < MW_TILE * (MLA_D / 16); c += MW_THREADS) {
        const int r = c / (MLA_D / 16), k = c % (MLA_D / 16);   /* dims 16k .. 16k+15 */
        const uint4 v = *(const uint4 *) (src + r * MLA_D + k * 16);
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
        uint32_t o[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            o[2 * i] = (uint32_t) kimi_f2bf(kimi_fp82f(w[i] & 0xff))
                       | (uint32_t) kimi_f2bf(kimi_fp82f((w[i] >> 8) & 0xff)) << 16;
            o[2 * i + 1] = (uint32_t) kimi_f2bf(kimi_fp82f((w[i] >> 16) & 0xff))
                           | (uint32_t) kimi_f2bf(kimi_fp82f(w[i] >> 24)) << 16;
        }
        const int d0 = 16 * k;   /* two 8-dim chunks, same 64-col block */
        uint8_t *blk = dst + (d0 >> 6) * MW_QB;
        *(uint4 *) (blk + wg_swz128(r, d0 & 63)) = make_uint4(o[0], o[1], o[2], o[3]);
        *(uint4 *) (blk + wg_swz128(r, (d0 & 63) + 8)) = make_uint4(o[4], o[5], o[6], o[7]);
    }
}

static __device__ __forceinline__ float mw_ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* P (pw, as mw_softmax packs it) of rows r0, r1 into the swizzled 64 x 64
 * bf16 block at ps and each row's rescale into alpha_s, for the other
 * warpgroup's P V (wgmma reads ps: the proxy fence is the writer's). */
static __device__ __forceinline__ void
mw_store_p(uint8_t *ps, float *alpha_s, const uint32_t (&pw)[16], int r0, int r1, int t,
           float a0, float a1)
{
#pragma unroll
    for (int j = 0; j < 8; j++) {
        *(uint32_t *) (ps + wg_swz128(r0, 8 * j + 2 * t)) = pw[2 * j];
        *(uint32_t *) (ps + wg_swz128(r1, 8 * j + 2 * t)) = pw[2 * j + 1];
    }
    if (t == 0) {
        alpha_s[r0] = a0;
        alpha_s[r1] = a1;
    }
    wg_fence_proxy();
}

/* O's rows r0, r1 (this thread's part of a warpgroup's 64 x 256
 * accumulator) times their softmax rescale, then ready for the next wgmma. */
static __device__ __forceinline__ void
mw_rescale_o(float (&o)[128], float a0, float a1)
{
#pragma unroll
    for (int j = 0; j < 32; j++) {
        o[4 * j] *= a0;
        o[4 * j + 1] *= a0;
        o[4 * j + 2] *= a1;
        o[4 * j + 3] *= a1;
    }
    wg_fence_regs(o);
    wg_arrive();
}

/* One tile's online softmax for the rows r0 = lane / 4 (+ 16 per warp) and
 * r0 + 8 of a warpgroup's S accumulators (64 heads x 64 tokens), in log2
 * units: max of the raw scores (scale2 > 0), p = 2^(s * scale2 - m).  Masks
 * tokens from len on; updates the running max m and sum l (l sums what P V
 * multiplies: the bf16 P before any fp8 scale); returns each row's rescale
 * factor for O and P packed to bf16 pairs, pw[2j] row r0 and pw[2j + 1] row
 * r0 + 8 of columns 8j + 2t, 8j + 2t + 1 - the wgmma A fragment of P's
 * k16 step j / 2.  fp8: the token's scale ks[] multiplies S's column and P's
 * column (not every element of the tile). */
template <bool FP8>
static __device__ __forceinline__ void
mw_softmax(float (&s)[32], int tok0, int len, float scale2, const float *ks, int t,
           float &m0, float &m1, float &l0, float &l1, uint32_t (&pw)[16], float &a0, float &a1)
{
    if (FP8) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float k0 = ks[8 * j + 2 * t], k1 = ks[8 * j + 2 * t + 1];
            s[4 * j] *= k0;
            s[4 * j + 1] *= k1;
            s[4 * j + 2] *= k0;
            s[4 * j + 3] *= k1;
        }
    }
    if (tok0 + MW_TILE > len) {   /* the last tile: mask past the sequence */
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if (tok0 + 8 * j + 2 * t + e >= len) {
                    s[4 * j + e] = -INFINITY;
                    s[4 * j + 2 + e] = -INFINITY;
                }
            }
        }
    }
    float mx0 = s[0], mx1 = s[2];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    /* token 0 of every tile is live, so the max is finite */
    const float n0 = fmaxf(m0, mx0 * scale2), n1 = fmaxf(m1, mx1 * scale2);
    a0 = mw_ex2(m0 - n0);
    a1 = mw_ex2(m1 - n1);
    m0 = n0;
    m1 = n1;
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const __nv_bfloat162 p0 = __floats2bfloat162_rn(mw_ex2(fmaf(s[4 * j], scale2, -n0)),
                                                        mw_ex2(fmaf(s[4 * j + 1], scale2, -n0)));
        const __nv_bfloat162 p1 = __floats2bfloat162_rn(mw_ex2(fmaf(s[4 * j + 2], scale2, -n1)),
                                                        mw_ex2(fmaf(s[4 * j + 3], scale2, -n1)));
        const float2 f0 = __bfloat1622float2(p0), f1 = __bfloat1622float2(p1);
        sum0 += f0.x + f0.y;
        sum1 += f1.x + f1.y;
        if (FP8) {
            const int c = 8 * j + 2 * t;
            const __nv_bfloat162 q0 = __floats2bfloat162_rn(f0.x * ks[c], f0.y * ks[c + 1]);
            const __nv_bfloat162 q1 = __floats2bfloat162_rn(f1.x * ks[c], f1.y * ks[c + 1]);
            pw[2 * j] = *(const uint32_t *) &q0;
            pw[2 * j + 1] = *(const uint32_t *) &q1;
        } else {
            pw[2 * j] = *(const uint32_t *) &p0;
            pw[2 * j + 1] = *(const uint32_t *) &p1;
        }
    }
    l0 = l0 * a0 + sum0;
    l1 = l1 * a1 + sum1;
}

template <bool FP8>
static __global__ void __launch_bounds__(MW_THREADS, 1)
mla_decode_wg_kernel(const uint16_t *__restrict__ q, int H, const void *__restrict__ kv,
                     const float *__restrict__ kv_scale, int bs,
                     const int32_t *__restrict__ block_table, int bt_ld,
                     const int32_t *__restrict__ seq_len, int n_splits, float scale2,
                     float *__restrict__ opart, float *__restrict__ mlpart)
{
    KIMI_GRID_ENTRY();
    extern __shared__ __align__(1024) uint8_t mw_smem_raw[];
    uint8_t *sm = mw_smem_raw + ((1024 - (kimi_smem_addr(mw_smem_raw) & 1023)) & 1023);
    float *alpha_s = (float *) (sm + MW_OFF_A);
    const float *ksc = (const float *) (sm + MW_OFF_KS);
    const uint32_t sq = kimi_smem_addr(sm);

    const int split = blockIdx.x, b = blockIdx.y;
    const int wg = threadIdx.x >> 7, wt = threadIdx.x & 127;
    const int lane = wt & 31, t = lane & 3;
    const int r0 = (wt >> 5) * 16 + (lane >> 2), r1 = r0 + 8;   /* this thread's heads */
    const int len = seq_len[b];
    const int ntiles = (len + MW_TILE - 1) / MW_TILE;
    const int per = (ntiles + n_splits - 1) / n_splits;
    const int t0 = split * per, t1 = min(ntiles, t0 + per);
    const int32_t *bt = block_table + (size_t) b * bt_ld;

    long long row_next = t0 < t1 ? mw_row(t0, len, bs, bt) : -1;
    /* Q -> swizzled 9 x [64 heads x 64 dims] (rows laid out as a tile's);
     * heads >= H are zero */
    mw_copy_rows_bf16(sm, (threadIdx.x >> 2) < H ? (long long) b * H + (threadIdx.x >> 2) : -1, q, threadIdx.x);
    if (t0 < t1) {
        mw_load_tile<FP8>(sm, 0, row_next, kv, kv_scale);
    }
    kimi_cp_async_commit();
    if (t0 + 1 < t1) {
        row_next = mw_row(t0 + 1, len, bs, bt);
    }

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.f;
    /* warpgroup 0 only: running max and sum of rows r0, r1 */
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    for (int tile = t0; tile < t1; tile++) {
        const int stage = (tile - t0) & 1;
        /* the next tile into the other stage (freed by the barrier that ended
         * the last iteration) before waiting for this one: two in flight */
        if (tile + 1 < t1) {
            mw_load_tile<FP8>(sm, stage ^ 1, row_next, kv, kv_scale);
        }
        kimi_cp_async_commit();
        if (tile + 2 < t1) {
            row_next = mw_row(tile + 2, len, bs, bt);
        }
        kimi_cp_async_wait<1>();
        wg_fence_proxy();
        __syncthreads();   /* this tile visible */
        if (FP8) {
            mw_widen_fp8(sm, stage);
            wg_fence_proxy();
            __syncthreads();
        }
        const uint32_t skv = sq + (FP8 || stage == 0 ? MW_OFF_KV0 : MW_OFF_KV1);

        if (wg == 0) {
            /* S (64 heads x 64 tokens) = Q K^T over 576 dims */
            float s[32];
            wg_arrive();
#pragma unroll
            for (int kk = 0; kk < MLA_D / 16; kk++) {
                const uint32_t koff = (kk >> 2) * MW_QB + (kk & 3) * 32;
                wgmma_m64n64k16_bf16<0>(s, wg_desc(sq + koff, 16, 1024),
                                        wg_desc(skv + koff, 16, 1024), kk > 0);
            }
            wg_commit();
            wg_wait<0>();
            wg_fence_regs(s);

            float a0, a1;
            uint32_t pw[16];
            mw_softmax<FP8>(s, tile * MW_TILE, len, scale2, ksc + stage * 64, t, m0, m1, l0, l1, pw, a0, a1);
            mw_store_p(sm + MW_OFF_P, alpha_s, pw, r0, r1, t, a0, a1);
        }
        __syncthreads();   /* P, alpha ready */

        /* O (64 heads x this group's 256 dims) = O * alpha + P V */
        /* (warpgroup 0 wrote these for its own rows r0, r1: the same heads) */
        mw_rescale_o(o, alpha_s[r0], alpha_s[r1]);
#pragma unroll
        for (int ks = 0; ks < MW_TILE / 16; ks++) {
            wgmma_m64n256k16_bf16<1>(o, wg_desc(sq + MW_OFF_P + ks * 32, 16, 1024),
                                     wg_desc(skv + 4 * wg * MW_QB + ks * 2048, MW_QB, 1024), 1);
        }
        wg_commit();
        wg_wait<0>();
        wg_fence_regs(o);
        __syncthreads();   /* every P V done: this stage and P are free */
    }
    kimi_cp_async_wait<0>();

    const size_t base = ((size_t) b * n_splits + split) * H;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const int col = wg * 256 + 8 * j + 2 * t;
        if (r0 < H) {
            *(float2 *) (opart + (base + r0) * MLA_DV + col) = make_float2(o[4 * j], o[4 * j + 1]);
        }
        if (r1 < H) {
            *(float2 *) (opart + (base + r1) * MLA_DV + col) = make_float2(o[4 * j + 2], o[4 * j + 3]);
        }
    }
    if (wg == 0) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        if (t == 0 && r0 < H) {
            mlpart[(base + r0) * 2] = m0;
            mlpart[(base + r0) * 2 + 1] = l0;
        }
        if (t == 0 && r1 < H) {
            mlpart[(base + r1) * 2] = m1;
            mlpart[(base + r1) * 2 + 1] = l1;
        }
    }
}

/* ---- TMA + warp-specialised kernel (bf16 cache, sm_90a) -------------------
 *
 * The same arithmetic as mla_decode_wg_kernel, bf16 cache only, with TMA
 * loads: a tile is 9 chunks (64 dims of every token) x (64 / rows) boxes of
 * the cache's tensor map landing in one of two swizzled buffers, each chunk
 * completing on its own `full` mbarrier so S issues a chunk's k-steps as
 * soon as it has landed (S then ends with the load, not 0.6 us after it).
 * Both warpgroups release a buffer on its `empty` mbarrier when their P V
 * on it has completed, and warp 4 (group 1's first, otherwise idle until
 * the next P) sends the next load at once (v11 waited for a whole-block
 * barrier and spent 18 cp.async per thread a tile; a separate load warp
 * would cap every warp at 168 registers, and the math spills).
 *
 * Group 0 computes S, the softmax and P (kept in registers as its own P V's
 * A operand, stored to shared memory for group 1) and issues P V of a tile
 * before S of the next, so a buffer is held from its S to its P V only; the
 * next tile's softmax runs while both groups' P V of this one are on the
 * tensor cores.  Group 1 does the other half of P V.  Named barriers:
 * MT_BAR_P (P and alpha of a tile stored; group 0 arrives, group 1 waits),
 * MT_BAR_PFREE (group 1's P V done with P; the reverse), MT_BAR_G0 (group 0
 * alone).  Rows of the last tile past the sequence are zeroed before P V
 * reads them (its boxes may hold other rows or, past the last box, stale
 * bytes).
 */

#define MT_THREADS    256
#define MT_OFF_KV(s)  (MW_TILE_B * (1 + (s)))
#define MT_OFF_P      (3 * MW_TILE_B)
#define MT_OFF_A      (MT_OFF_P + MW_QB)
#define MT_CHUNKS     (MLA_D / 64)                  /* 64-dim boxes a token row */
#define MT_OFF_BAR    (MT_OFF_A + 64 * 4)          /* full[2][9], empty[2] */
#define MT_SMEM       (MT_OFF_BAR + (2 * MT_CHUNKS + 2) * 8 + 1024)
#define MT_BAR_Q      1
#define MT_BAR_P      2
#define MT_BAR_PFREE  3
#define MT_BAR_G0     4

/* This lane's cache block for tile `tile` (lane j loads box j: rows_box =
 * min(bs, 64) tokens of one block), 0 where the box is past the sequence. */
static __device__ __forceinline__ int
mt_block_of(int tile, int len, int bs, const int32_t *bt)
{
    const int lane = threadIdx.x & 31, rows_box = bs < MW_TILE ? bs : MW_TILE;
    const int p = tile * MW_TILE + lane * rows_box;
    return lane < MW_TILE / rows_box && p < len ? bt[p / bs] : 0;
}

/* Warp-wide: the live boxes of tile `tile` into buffer st, chunk c (64
 * dims of every token) completing on full[c] (the buffer's MT_CHUNKS
 * barriers) with its byte count, so S can start on the first chunk. */
static __device__ __forceinline__ void
mt_load_tile(uint8_t *sm, int st, int tile, int len, int bs, int blk, const CUtensorMap *map,
             uint64_t *full)
{
    const int lane = threadIdx.x & 31, rows_box = bs < MW_TILE ? bs : MW_TILE;
    const int p = tile * MW_TILE + lane * rows_box;
    const bool live = lane < MW_TILE / rows_box && p < len;
    const int n_live = __popc(__ballot_sync(0xffffffffu, live));
    if (lane == 0) {
        for (int c = 0; c < MT_CHUNKS; c++) {
            kimi_mbar_arrive_tx(&full[c], (uint32_t) (n_live * rows_box * 128));
        }
    }
    __syncwarp();
    if (live) {
        uint8_t *dst = sm + MT_OFF_KV(st) + lane * rows_box * 128;
        const int row = blk * bs + p % bs;
#pragma unroll
        for (int c = 0; c < MT_CHUNKS; c++) {
            kimi_tma_load_2d(dst + c * MW_QB, map, c * 64, row, &full[c]);
        }
    }
}

/* Rows r0, r1 (heads < H) of this group's 256 output dims, times their 1/l,
 * as bf16 into out [B][H][512]. */
static __device__ __forceinline__ void
mt_store_out(uint16_t *out, int b, int H, int g, int r0, int r1, int t, const float (&o)[128],
             float i0, float i1)
{
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const int col = g * 256 + 8 * j + 2 * t;
        if (r0 < H) {
            *(uint32_t *) (out + ((size_t) b * H + r0) * MLA_DV + col) =
                (uint32_t) kimi_f2bf(o[4 * j] * i0) | (uint32_t) kimi_f2bf(o[4 * j + 1] * i0) << 16;
        }
        if (r1 < H) {
            *(uint32_t *) (out + ((size_t) b * H + r1) * MLA_DV + col) =
                (uint32_t) kimi_f2bf(o[4 * j + 2] * i1) | (uint32_t) kimi_f2bf(o[4 * j + 3] * i1) << 16;
        }
    }
}

static __global__ void __launch_bounds__(MT_THREADS, 1)
mla_decode_tma_kernel(const __grid_constant__ CUtensorMap kv_map, const uint16_t *__restrict__ q,
                      int H, int bs, const int32_t *__restrict__ block_table, int bt_ld,
                      const int32_t *__restrict__ seq_len, int n_splits, float scale2,
                      float *__restrict__ opart, float *__restrict__ mlpart,
                      uint16_t *__restrict__ out)
{
    extern __shared__ __align__(1024) uint8_t mt_smem_raw[];
    uint8_t *sm = mt_smem_raw + ((1024 - (kimi_smem_addr(mt_smem_raw) & 1023)) & 1023);
    uint64_t *full = (uint64_t *) (sm + MT_OFF_BAR), *empty = full + 2 * MT_CHUNKS;
    float *alpha_s = (float *) (sm + MT_OFF_A);
    const uint32_t sq = kimi_smem_addr(sm);

    if (threadIdx.x == 0) {
        kimi_tma_prefetch_map(&kv_map);
        for (int i = 0; i < 2 * MT_CHUNKS; i++) {
            kimi_mbar_init(&full[i], 1);
        }
        for (int i = 0; i < 2; i++) {
            kimi_mbar_init(&empty[i], 8);   /* lane 0 of each math warp */
        }
        kimi_mbar_init_fence();
    }
    __syncthreads();
    KIMI_GRID_ENTRY();

    const int split = blockIdx.x, b = blockIdx.y;
    const int len = seq_len[b];
    const int ntiles = (len + MW_TILE - 1) / MW_TILE;
    const int per = (ntiles + n_splits - 1) / n_splits;
    const int t0 = split * per, t1 = min(ntiles, t0 + per);
    const int32_t *bt = block_table + (size_t) b * bt_ld;

    /* warp 4 (group 1's first) loads: the first two tiles now, each later
     * one when both groups have released its buffer */
    const bool loader = threadIdx.x >> 5 == 4;
    int blk_next = 0;
    if (loader && t0 < t1) {
        mt_load_tile(sm, 0, t0, len, bs, mt_block_of(t0, len, bs, bt), &kv_map, full);
        if (t0 + 1 < t1) {
            mt_load_tile(sm, 1, t0 + 1, len, bs, mt_block_of(t0 + 1, len, bs, bt), &kv_map, full + MT_CHUNKS);
        }
        blk_next = t0 + 2 < t1 ? mt_block_of(t0 + 2, len, bs, bt) : 0;
    }

    const int mt = threadIdx.x, g = mt >> 7, wt = mt & 127;
    const int lane = wt & 31, t = lane & 3;
    const int r0 = (wt >> 5) * 16 + (lane >> 2), r1 = r0 + 8;   /* this thread's heads */

    /* Q -> swizzled 9 x [64 heads x 64 dims]; heads >= H are zero */
    mw_copy_rows_bf16(sm, (mt >> 2) < H ? (long long) b * H + (mt >> 2) : -1, q, mt);
    kimi_cp_async_commit();
    kimi_cp_async_wait<0>();
    wg_fence_proxy();
    kimi_bar_sync(MT_BAR_Q, 256);

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;   /* group 0 only */

    if (g == 0 && t0 < t1) {
        float s[32];
        uint32_t pw[16];
        float a0, a1;

        /* S of tile `tile` from buffer st into s, then its softmax into pw */
        /* S of the tile in buffer st (use parity par) into s, each 64-dim
         * chunk's k-steps issued as soon as the chunk has landed */
        auto s_issue = [&](int st, int par) {
            const uint32_t skv = sq + MT_OFF_KV(st);
#pragma unroll
            for (int kk = 0; kk < MLA_D / 16; kk++) {
                if ((kk & 3) == 0) {
                    kimi_mbar_wait(&full[st * MT_CHUNKS + (kk >> 2)], par);
                }
                const uint32_t koff = (kk >> 2) * MW_QB + (kk & 3) * 32;
                wgmma_m64n64k16_bf16<0>(s, wg_desc(sq + koff, 16, 1024),
                                        wg_desc(skv + koff, 16, 1024), kk > 0);
            }
            wg_commit();
        };
        auto softmax = [&](int tile, int st) {
            wg_fence_regs(s);
            mw_softmax<false>(s, tile * MW_TILE, len, scale2, NULL, t, m0, m1, l0, l1, pw, a0, a1);
            const int live = len - tile * MW_TILE;
            if (live < MW_TILE) {   /* zero the V rows past the sequence */
                uint8_t *buf = sm + MT_OFF_KV(st);
                for (int c = wt; c < (MW_TILE - live) * (MLA_DV / 8); c += 128) {
                    const int r = live + c / (MLA_DV / 8), k = c % (MLA_DV / 8);
                    *(uint4 *) (buf + (k >> 3) * MW_QB + wg_swz128(r, (k & 7) * 8)) = make_uint4(0, 0, 0, 0);
                }
                wg_fence_proxy();
                kimi_bar_sync(MT_BAR_G0, 128);
            }
        };

        /* P and alpha of tile i (buffer st) out to group 1, O rescaled, and
         * this group's P V issued from the registers */
        auto pv_issue = [&](int i, int st) {
            if (i > 0) {
                kimi_bar_sync(MT_BAR_PFREE, 256);   /* group 1 is done with P */
            }
            mw_store_p(sm + MT_OFF_P, alpha_s, pw, r0, r1, t, a0, a1);
            kimi_bar_arrive(MT_BAR_P, 256);
            mw_rescale_o(o, a0, a1);
            const uint32_t skv = sq + MT_OFF_KV(st);
#pragma unroll
            for (int ks = 0; ks < MW_TILE / 16; ks++) {
                wgmma_m64n256k16_bf16_rs<1>(o, pw[4 * ks], pw[4 * ks + 1], pw[4 * ks + 2], pw[4 * ks + 3],
                                            wg_desc(skv + ks * 2048, MW_QB, 1024));
            }
            wg_commit();
        };
        auto release = [&](int st) {   /* after this group's P V of the buffer */
            wg_fence_regs(o);
            if (lane == 0) {
                kimi_mbar_arrive(&empty[st]);
            }
        };

        wg_arrive();
        s_issue(0, 0);
        wg_wait<0>();
        softmax(t0, 0);
        int tile = t0;
        for (; tile + 1 < t1; tile++) {
            const int i = tile - t0, st = i & 1;
            pv_issue(i, st);
            s_issue(st ^ 1, ((i + 1) >> 1) & 1);   /* S of the next tile behind it */
            wg_wait<1>();
            release(st);
            wg_wait<0>();
            softmax(tile + 1, st ^ 1);
        }
        pv_issue(tile - t0, (tile - t0) & 1);
        wg_wait<0>();
        release((tile - t0) & 1);
    } else if (g == 1) {
        for (int tile = t0; tile < t1; tile++) {
            const int st = (tile - t0) & 1;
            kimi_bar_sync(MT_BAR_P, 256);   /* P and alpha of this tile stored */
            const float a0 = alpha_s[r0], a1 = alpha_s[r1];
            mw_rescale_o(o, a0, a1);
            const uint32_t skv = sq + MT_OFF_KV(st);
#pragma unroll
            for (int ks = 0; ks < MW_TILE / 16; ks++) {
                wgmma_m64n256k16_bf16<1>(o, wg_desc(sq + MT_OFF_P + ks * 32, 16, 1024),
                                         wg_desc(skv + 4 * MW_QB + ks * 2048, MW_QB, 1024), 1);
            }
            wg_commit();
            wg_wait<0>();
            wg_fence_regs(o);
            if (tile + 1 < t1) {
                kimi_bar_arrive(MT_BAR_PFREE, 256);
            }
            if (lane == 0) {
                kimi_mbar_arrive(&empty[st]);
            }
            if (loader && tile + 2 < t1) {
                kimi_mbar_wait(&empty[st], ((tile - t0) >> 1) & 1);   /* group 0 done too */
                mt_load_tile(sm, st, tile + 2, len, bs, blk_next, &kv_map, full + st * MT_CHUNKS);
                blk_next = tile + 3 < t1 ? mt_block_of(tile + 3, len, bs, bt) : 0;
            }
        }
    }

    if (g == 0) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    }
    if (n_splits == 1) {   /* the whole context: o / l straight out, no merge */
        kimi_bar_sync(MT_BAR_Q, 256);   /* group 1 is past its last alpha */
        if (g == 0 && t == 0) {
            alpha_s[r0] = l0;
            alpha_s[r1] = l1;
        }
        kimi_bar_sync(MT_BAR_Q, 256);
        const float i0 = alpha_s[r0] > 0.f ? 1.f / alpha_s[r0] : 0.f;
        const float i1 = alpha_s[r1] > 0.f ? 1.f / alpha_s[r1] : 0.f;
        mt_store_out(out, b, H, g, r0, r1, t, o, i0, i1);
        return;
    }

    const size_t base = ((size_t) b * n_splits + split) * H;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const int col = g * 256 + 8 * j + 2 * t;
        if (r0 < H) {
            *(float2 *) (opart + (base + r0) * MLA_DV + col) = make_float2(o[4 * j], o[4 * j + 1]);
        }
        if (r1 < H) {
            *(float2 *) (opart + (base + r1) * MLA_DV + col) = make_float2(o[4 * j + 2], o[4 * j + 3]);
        }
    }
    if (g == 0 && t == 0) {
        if (r0 < H) {
            *(float2 *) (mlpart + (base + r0) * 2) = make_float2(m0, l0);
        }
        if (r1 < H) {
            *(float2 *) (mlpart + (base + r1) * 2) = make_float2(m1, l1);
        }
    }
}

/* o[b,h,:] = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s */
static __global__ void
mla_combine_kernel(const float *__restrict__ opart, const float *__restrict__ mlpart,
                   int H, int n_splits, uint16_t *__restrict__ o)
{
    KIMI_GRID_ENTRY();
    const int b = blockIdx.x, h = blockIdx.y;
    float M = -INFINITY;
    for (int s = 0; s < n_splits; s++) {
        const float *ml = mlpart + (((size_t) b * n_splits + s) * H + h) * 2;
        if (ml[1] > 0.f) {
            M = fmaxf(M, ml[0]);
        }
    }
    float L = 0.f;
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int s = 0; s < n_splits; s++) {
        const size_t idx = ((size_t) b * n_splits + s) * H + h;
        const float2 ml = *(const float2 *) (mlpart + idx * 2);
        const float4 v = *(const float4 *) (opart + idx * MLA_DV + threadIdx.x * 4);
        /* empty splits have l = 0 and O = 0: weight 0, never NaN */
        const float f = ml.y > 0.f ? exp2f(ml.x - M) : 0.f;
        L += f * ml.y;
        a.x += f * v.x;
        a.y += f * v.y;
        a.z += f * v.z;
        a.w += f * v.w;
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    uint2 out;
    out.x = (uint32_t) kimi_f2bf(a.x * inv) | (uint32_t) kimi_f2bf(a.y * inv) << 16;
    out.y = (uint32_t) kimi_f2bf(a.z * inv) | (uint32_t) kimi_f2bf(a.w * inv) << 16;
    *(uint2 *) (o + ((size_t) b * H + h) * MLA_DV + threadIdx.x * 4) = out;
}

extern "C" size_t
kimi_mla_ws_bytes(int B, int H, int n_splits)
{
    return (size_t) B * n_splits * H * (MLA_DV + 2) * sizeof(float);
}

/* One wave: at most n_sm blocks in all (the kernel holds one block per SM),
 * and at least 4 tiles (128 tokens) per split so the fp32 partials (128 KB
 * per block) stay small next to the cache bytes a split reads. */
extern "C" int
kimi_mla_n_splits(int B, int max_ctx, int n_sm)
{
    const int tiles = (max_ctx + MLA_TILE - 1) / MLA_TILE;
    int s = n_sm / (B > 0 ? B : 1);
    if (s > tiles / 4) {
        s = tiles / 4;
    }
    return s < 1 ? 1 : s;
}

/* The TMA kernel's boxes are whole 1024-byte swizzle atoms of one cache
 * block: a block of 8..64 tokens dividing the 64-token tile, or a multiple
 * of 64. */
static int
mla_tma_block_ok(int bs)
{
    return bs % MW_TILE == 0 || (MW_TILE % bs == 0 && bs % 8 == 0);
}

/* KIMI_MLA_V11=1: the bf16 cache on the cp.async kernel (A/B measurements). */
static int
mla_v11_forced(void)
{
    static int v = -1;     /* a benign race: every thread computes the same */
    if (v < 0) {
        const char *e = getenv("KIMI_MLA_V11");
        v = e != NULL && strcmp(e, "1") == 0;
    }
    return v;
}

extern "C" int
kimi_mla_decode(const kimi_bf16_t *q, int B, int H, const void *kv,
                const float *kv_scale, int kv_fp8, int bs,
                const int32_t *block_table, int bt_ld, const int32_t *seq_len,
                int n_splits, float scale, void *ws, kimi_bf16_t *o,
                cudaStream_t s, kimi_err_t *err)
{
    if (q == NULL || kv == NULL || block_table == NULL || seq_len == NULL || ws == NULL
        || o == NULL || B <= 0 || H <= 0 || H % 16 != 0 || H > 64 || bs <= 0
        || bt_ld <= 0 || n_splits <= 0 || (kv_fp8 && kv_scale == NULL)) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "mla_decode: B=%d H=%d bs=%d bt_ld=%d splits=%d fp8=%d (H %% 16, H <= 64)",
                            B, H, bs, bt_ld, n_splits, kv_fp8);
    }
    if (((uintptr_t) q | (uintptr_t) kv | (uintptr_t) ws) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_decode: q, kv or ws not 16-byte aligned");
    }
    float *opart = (float *) ws;
    float *mlpart = opart + (size_t) B * n_splits * H * MLA_DV;
    dim3 grid(n_splits, B);
    const float scale2 = scale * LOG2E;
    if (!kv_fp8 && mla_tma_block_ok(bs) && !mla_v11_forced()) {
        CUtensorMap map;
        const int rows_box = bs < MW_TILE ? bs : MW_TILE;
        /* rows: the map's bound, not the cache's (the kernel does not know how
         * many blocks the cache has); the block table is trusted here as in
         * every path of this kernel */
        int rc = kimi_tmap_2d(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, kv, MLA_D, 1ull << 31,
                              MLA_D * 2, 64, (uint32_t) rows_box, err);
        if (rc != KIMI_OK) {
            return rc;
        }
        KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_decode_tma_kernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, MT_SMEM), err);
        KIMI_LAUNCH(err, mla_decode_tma_kernel, grid, MT_THREADS, MT_SMEM, s, map, q, H, bs,
                    block_table, bt_ld, seq_len, n_splits, scale2, opart, mlpart, o);
        if (n_splits == 1) {
            return KIMI_OK;
        }
    } else if (kv_fp8) {
        KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_decode_wg_kernel<true>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, MW_SMEM), err);
        KIMI_LAUNCH(err, mla_decode_wg_kernel<true>, grid, MW_THREADS, MW_SMEM, s, q, H, kv,
                    kv_scale, bs, block_table, bt_ld, seq_len, n_splits, scale2, opart, mlpart);
    } else {
        KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_decode_wg_kernel<false>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, MW_SMEM), err);
        KIMI_LAUNCH(err, mla_decode_wg_kernel<false>, grid, MW_THREADS, MW_SMEM, s, q, H, kv,
                    kv_scale, bs, block_table, bt_ld, seq_len, n_splits, scale2, opart, mlpart);
    }
    KIMI_LAUNCH(err, mla_combine_kernel, dim3(B, H), MLA_DV / 4, 0, s, opart, mlpart, H, n_splits,
                o);
    return KIMI_OK;
}
