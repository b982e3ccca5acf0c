/*
 * Absorbed MLA decode over the paged 576-wide latent cache (bf16 or fp8).
 *
 *   score[b,h,p] = scale * (q[b,h,:512] . c_p + q[b,h,512:] . kpe_p)
 *   o[b,h,:]     = sum_p softmax_p(score[b,h,:]) * c_p            (512 wide)
 *
 * Layout:  q bf16 [B][H][576]; cache rows of 576 (c[512] | k_pe[64]),
 *          bf16 [blocks][bs][576] or e4m3 planar [blocks][36][bs][16] with
 *          fp32 kv_scale[blocks][bs]; token p of sequence b is row p % bs of block
 *          block_table[b*bt_ld + p/bs]; o bf16 [B][H][512].
 * Work:    a block streams 64-token tiles and serves all H (<= 64, padded
 *          to the 64-row wgmma tile) heads from one read of each tile; the
 *          partial (O, m, l) of each stretch of a sequence goes to ws and
 *          mla_combine_kernel merges them.  A bf16 cache whose blocks are
 *          whole swizzle atoms (8..64 tokens dividing 64, or multiples of
 *          64) takes the TMA kernel; an fp8 one of 64-multiple blocks the
 *          bulk-copy kernel (e4m3 S, V^T from registers) when the runs fill
 *          every SM (enough tiles a run to pay its longer start); the rest
 *          the cp.async one; all on a flat schedule: the batch's (sequence,
 *          tile) pairs cut into equal runs, one a block, a run crossing
 *          sequences where it must (mixed lengths keep every SM busy).
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
#define MLA_GROUP  64            /* heads one kernel call serves (the wgmma tile's rows) */
#define MLA_MAX_HEADS 256        /* more in groups of MLA_GROUP */

/* The split partials' O in bf16: half the bytes the decode kernels write
 * and the combine reads back of fp32 (7 % of a B=64 x 8K bf16 call as
 * fp32; session 17); O is rounded once more before the fp32 merge, as o
 * itself is rounded after it.  m and l stay fp32. */
typedef uint16_t mla_part_t;

static __device__ __forceinline__ void
mla_part_st2(uint16_t *p, float a, float b)
{
    *(uint32_t *) p = (uint32_t) kimi_f2bf(a) | (uint32_t) kimi_f2bf(b) << 16;
}
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
#define MF_MAX_RUNS 256                       /* blocks of the flat schedule, at most */
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
mw_load_tile(uint8_t *sm, int stage, long long row, const void *kv, const float *kv_scale, int bs)
{
    if (!FP8) {
        mw_copy_rows_bf16(sm + (stage ? MW_OFF_KV1 : MW_OFF_KV0), row, (const uint16_t *) kv, threadIdx.x);
        return;
    }
    /* fp8: e4m3 rows staged linearly (gathered from the block's planes),
     * the per-token scale beside them */
    const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
    uint8_t *dst = sm + MW_OFF_KV1 + stage * (MW_TILE * MLA_D) + r * MLA_D;
    const uint8_t *src = (const uint8_t *) kv + (row >= 0 ? (row / bs) * bs * MLA_D + (row % bs) * 16 : 0);
#pragma unroll
    for (int i = 0; i < MLA_D / 64; i++) {
        const int k = q + 4 * i;   /* bytes 16k..: plane k */
        if (row >= 0) {
            kimi_cp_async16(dst + k * 16, src + (size_t) k * bs * 16);
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

/* Two e4m3 (low byte first) -> two bf16, exact: the hardware's e4m3x2 ->
 * f16x2 conversion, then through f32 (three instructions a pair instead of
 * ~6 a value through the scalar conversions: B=64 x 8K 296 -> 261 us). */
static __device__ __forceinline__ uint32_t
mw_e4m3x2_bf16x2(uint32_t pair)
{
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t) pair, __NV_E4M3);
    const float2 f = __half22float2(*(const __half2 *) &h);
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
    return *(const uint32_t *) &b;
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
            o[2 * i] = mw_e4m3x2_bf16x2(w[i] & 0xffff);
            o[2 * i + 1] = mw_e4m3x2_bf16x2(w[i] >> 16);
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

/* A partial (O, m, l) into the rows base .. base + H - 1 of ws: this
 * warpgroup's 256 dims of O, and from warpgroup 0 each row's m and l (l
 * summed over the row's four lanes first). */
static __device__ __forceinline__ void
mw_store_partial(mla_part_t *opart, float *mlpart, size_t base, int H, int wg, int r0, int r1, int t,
                 const float (&o)[128], float m0, float m1, float l0, float l1)
{
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const int col = wg * 256 + 8 * j + 2 * t;
        if (r0 < H) {
            mla_part_st2(opart + (base + r0) * MLA_DV + col, o[4 * j], o[4 * j + 1]);
        }
        if (r1 < H) {
            mla_part_st2(opart + (base + r1) * MLA_DV + col, o[4 * j + 2], o[4 * j + 3]);
        }
    }
    if (wg == 0) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        if (t == 0 && r0 < H) {
            *(float2 *) (mlpart + (base + r0) * 2) = make_float2(m0, l0);
        }
        if (t == 0 && r1 < H) {
            *(float2 *) (mlpart + (base + r1) * 2) = make_float2(m1, l1);
        }
    }
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

/* The flat schedule: the batch's (sequence, 64-token tile) pairs in order,
 * cut into gridDim.x runs of ceil(total / gridDim.x); a run may cross
 * sequences (a segment per sequence, each with its own partial in slot
 * b + k: along the list b + k only grows, so slots never collide). */
typedef struct {
    int b, tile, len, nt;   /* the current item: sequence b's tile, its length and tiles */
    int left;               /* items left in the run, the current one included */
} mf_walk;

static __device__ __forceinline__ int mf_ntiles(int len)
{
    return (len + MW_TILE - 1) / MW_TILE;
}

/* To the run's next item; false (and left 0) at its end. */
static __device__ __forceinline__ bool
mf_next(mf_walk &w, const int32_t *seq_len)
{
    if (w.left <= 1) {
        w.left = 0;
        return false;
    }
    w.left--;
    if (++w.tile >= w.nt) {
        do {
            w.b++;
            w.len = seq_len[w.b];
            w.nt = mf_ntiles(w.len);
        } while (w.nt == 0);
        w.tile = 0;
    }
    return true;
}

static __device__ __forceinline__ const int32_t *
mf_bt(const int32_t *block_table, int bt_ld, const mf_walk &w)
{
    return block_table + (size_t) w.b * bt_ld;
}

/* Block-wide (all 256 threads): run k's first item into w, through a scan of
 * the sequences' tile counts in scr (256 ints); false when the run is empty. */
static __device__ __forceinline__ bool
mf_start(const int32_t *seq_len, int B, int n_runs, int k, int *scr, mf_walk &w)
{
    const int tid = threadIdx.x, chunk = (B + MW_THREADS - 1) / MW_THREADS;
    const int lo = min(B, tid * chunk), hi = min(B, lo + chunk);
    int sum = 0;
    for (int i = lo; i < hi; i++) {
        sum += mf_ntiles(seq_len[i]);
    }
    scr[tid] = sum;
    __syncthreads();
    for (int d = 1; d < MW_THREADS; d <<= 1) {   /* inclusive scan */
        const int v = tid >= d ? scr[tid - d] : 0;
        __syncthreads();
        scr[tid] += v;
        __syncthreads();
    }
    const int total = scr[MW_THREADS - 1];
    const int per = (total + n_runs - 1) / n_runs, start = k * per;
    int acc = scr[tid] - sum;
    __syncthreads();
    if (start < total && start >= acc && start < acc + sum) {   /* the run starts in my chunk */
        for (int i = lo; i < hi; i++) {
            const int nt = mf_ntiles(seq_len[i]);
            if (start < acc + nt) {
                scr[0] = i;
                scr[1] = start - acc;
                break;
            }
            acc += nt;
        }
    }
    __syncthreads();
    if (start >= total) {
        return false;
    }
    w.b = scr[0];
    w.tile = scr[1];
    w.len = seq_len[w.b];
    w.nt = mf_ntiles(w.len);
    w.left = min(per, total - start);
    return true;
}

template <bool FP8>
static __global__ void __launch_bounds__(MW_THREADS, 1)
mla_decode_wg_kernel(const uint16_t *__restrict__ q, int H, int B, const void *__restrict__ kv,
                     const float *__restrict__ kv_scale, int bs,
                     const int32_t *__restrict__ block_table, int bt_ld,
                     const int32_t *__restrict__ seq_len, float scale2,
                     mla_part_t *__restrict__ opart, float *__restrict__ mlpart)
{
    KIMI_GRID_ENTRY();
    extern __shared__ __align__(1024) uint8_t mw_smem_raw[];
    uint8_t *sm = mw_smem_raw + ((1024 - (kimi_smem_addr(mw_smem_raw) & 1023)) & 1023);
    float *alpha_s = (float *) (sm + MW_OFF_A);
    const float *ksc = (const float *) (sm + MW_OFF_KS);
    const uint32_t sq = kimi_smem_addr(sm);

    mf_walk cur;
    const int k = blockIdx.x;
    if (!mf_start(seq_len, B, gridDim.x, k, (int *) (sm + MW_OFF_P), cur)) {
        return;
    }
    const int wg = threadIdx.x >> 7, wt = threadIdx.x & 127;
    const int lane = wt & 31, t = lane & 3;
    const int r0 = (wt >> 5) * 16 + (lane >> 2), r1 = r0 + 8;   /* this thread's heads */

    /* Q -> swizzled 9 x [64 heads x 64 dims] (rows laid out as a tile's);
     * heads >= H are zero; item 0 into stage 0; ld walks one item ahead of
     * the loads, its row read before it is needed */
    mw_copy_rows_bf16(sm, (threadIdx.x >> 2) < H ? (long long) cur.b * H + (threadIdx.x >> 2) : -1, q,
                      threadIdx.x);
    mw_load_tile<FP8>(sm, 0, mw_row(cur.tile, cur.len, bs, mf_bt(block_table, bt_ld, cur)), kv, kv_scale, bs);
    kimi_cp_async_commit();
    mf_walk ld = cur;
    bool has_ld = mf_next(ld, seq_len);
    long long row_next = has_ld ? mw_row(ld.tile, ld.len, bs, mf_bt(block_table, bt_ld, ld)) : -1;

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.f;
    /* warpgroup 0 only: running max and sum of rows r0, r1 */
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    for (int i = 0;; i++) {
        const int stage = i & 1;
        /* the next item into the other stage (freed by the barrier that ended
         * the last iteration) before waiting for this one: two in flight */
        if (has_ld) {
            mw_load_tile<FP8>(sm, stage ^ 1, row_next, kv, kv_scale, bs);
            has_ld = mf_next(ld, seq_len);
            row_next = has_ld ? mw_row(ld.tile, ld.len, bs, mf_bt(block_table, bt_ld, ld)) : -1;
        }
        kimi_cp_async_commit();
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
            mw_softmax<FP8>(s, cur.tile * MW_TILE, cur.len, scale2, ksc + stage * 64, t, m0, m1, l0, l1, pw,
                            a0, a1);
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
        __syncthreads();   /* every P V done: this stage, P and Q are free */

        mf_walk nxt = cur;
        const bool more = mf_next(nxt, seq_len);
        if (!more || nxt.b != cur.b) {   /* the stretch of sequence cur.b ends */
            mw_store_partial(opart, mlpart, ((size_t) cur.b + k) * H, H, wg, r0, r1, t, o, m0, m1, l0, l1);
#pragma unroll
            for (int j = 0; j < 128; j++) o[j] = 0.f;
            m0 = m1 = -INFINITY;
            l0 = l1 = 0.f;
        }
        if (!more) {
            break;
        }
        if (nxt.b != cur.b) {   /* its Q, complete by the next wait (an older group) */
            mw_copy_rows_bf16(sm, (threadIdx.x >> 2) < H ? (long long) nxt.b * H + (threadIdx.x >> 2) : -1,
                              q, threadIdx.x);
            kimi_cp_async_commit();
        }
        cur = nxt;
    }
    kimi_cp_async_wait<0>();
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
 * before S of the next, and gives the buffer back as soon as that P V is
 * done (not after S of the next, whose chunk waits would hold it until the
 * next tile has landed): a buffer is held from its S to its P V only.  Group 1 does the other half of P V.  Named barriers:
 * MT_BAR_P (P and alpha of a tile stored; group 0 arrives, group 1 waits),
 * MT_BAR_PFREE (group 1's P V done with P; the reverse), MT_BAR_G0 (group 0
 * alone).  Rows of the last tile past the sequence are zeroed before P V
 * reads them (its boxes may hold other rows or, past the last box, stale
 * bytes).
 *
 * Items are the block's run of the flat schedule (mf_walk): where the run
 * moves to the next sequence, group 0 loads that sequence's Q once S of the
 * last tile is done (P V does not read Q), and each group writes its half
 * of the finished stretch's partial into slot b + block and starts a fresh
 * accumulator (O zeroed, m = -inf, l = 0).
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

static __global__ void __launch_bounds__(MT_THREADS, 1)
mla_decode_tma_kernel(const __grid_constant__ CUtensorMap kv_map, const uint16_t *__restrict__ q,
                      int H, int B, int bs, const int32_t *__restrict__ block_table, int bt_ld,
                      const int32_t *__restrict__ seq_len, float scale2,
                      mla_part_t *__restrict__ opart, float *__restrict__ mlpart)
{
    extern __shared__ __align__(1024) uint8_t mt_smem_raw[];
    uint8_t *sm = mt_smem_raw + ((1024 - (kimi_smem_addr(mt_smem_raw) & 1023)) & 1023);
    uint64_t *full = (uint64_t *) (sm + MT_OFF_BAR), *empty = full + 2 * MT_CHUNKS;
    float *alpha_s = (float *) (sm + MT_OFF_A);
    const uint32_t sq = kimi_smem_addr(sm);

    if (threadIdx.x == 0) {
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

    /* this block's run of the flat (sequence, tile) list */
    mf_walk w0;
    const int k = blockIdx.x;
    if (!mf_start(seq_len, B, gridDim.x, k, (int *) (sm + MT_OFF_P), w0)) {
        return;
    }

    /* warp 4 (group 1's first) loads: the first two items now, each later
     * one when both groups have released its buffer */
    const bool loader = threadIdx.x >> 5 == 4;
    mf_walk ld = w0;
    int blk_ld = 0;
    if (loader) {
        mt_load_tile(sm, 0, ld.tile, ld.len, bs, mt_block_of(ld.tile, ld.len, bs, mf_bt(block_table, bt_ld, ld)),
                     &kv_map, full);
        if (mf_next(ld, seq_len)) {
            mt_load_tile(sm, 1, ld.tile, ld.len, bs,
                         mt_block_of(ld.tile, ld.len, bs, mf_bt(block_table, bt_ld, ld)), &kv_map,
                         full + MT_CHUNKS);
            if (mf_next(ld, seq_len)) {   /* ld: the next item to load (left 0: none) */
                blk_ld = mt_block_of(ld.tile, ld.len, bs, mf_bt(block_table, bt_ld, ld));
            }
        }
    }

    const int mt = threadIdx.x, g = mt >> 7, wt = mt & 127;
    const int lane = wt & 31, t = lane & 3;
    const int r0 = (wt >> 5) * 16 + (lane >> 2), r1 = r0 + 8;   /* this thread's heads */

    /* Q of the first sequence -> swizzled 9 x [64 heads x 64 dims]; heads >= H are zero */
    mw_copy_rows_bf16(sm, (mt >> 2) < H ? (long long) w0.b * H + (mt >> 2) : -1, q, mt);
    kimi_cp_async_commit();
    kimi_cp_async_wait<0>();
    wg_fence_proxy();
    kimi_bar_sync(MT_BAR_Q, 256);

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;   /* group 0 only */

    /* this group's half of a segment's partial (O, and from group 0 m and l)
     * into slot b + k, then a fresh accumulator for the next segment */
    auto seg_out = [&](int b) {
        mw_store_partial(opart, mlpart, ((size_t) b + k) * H, H, g, r0, r1, t, o, m0, m1, l0, l1);
#pragma unroll
        for (int i = 0; i < 128; i++) o[i] = 0.f;
        m0 = m1 = -INFINITY;
        l0 = l1 = 0.f;
    };

    if (g == 0) {
        float s[32];
        uint32_t pw[16];
        float a0, a1;

        auto release = [&](int st) {   /* after this group's P V of the buffer */
            wg_fence_regs(o);
            if (lane == 0) {
                kimi_mbar_arrive(&empty[st]);
            }
        };
        /* S of the item in buffer st (use parity par) into s, each 64-dim
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
        auto softmax = [&](const mf_walk &w, int st) {
            wg_fence_regs(s);
            mw_softmax<false>(s, w.tile * MW_TILE, w.len, scale2, NULL, t, m0, m1, l0, l1, pw, a0, a1);
            const int live = w.len - w.tile * MW_TILE;
            if (live < MW_TILE) {   /* zero the V rows past the sequence */
                uint8_t *buf = sm + MT_OFF_KV(st);
                for (int c = wt; c < (MW_TILE - live) * (MLA_DV / 8); c += 128) {
                    const int r = live + c / (MLA_DV / 8), kc = c % (MLA_DV / 8);
                    *(uint4 *) (buf + (kc >> 3) * MW_QB + wg_swz128(r, (kc & 7) * 8)) = make_uint4(0, 0, 0, 0);
                }
                wg_fence_proxy();
                kimi_bar_sync(MT_BAR_G0, 128);
            }
        };
        /* P and alpha of item i (buffer st) out to group 1, O rescaled, and
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

        mf_walk cur = w0;
        wg_arrive();
        s_issue(0, 0);
        wg_wait<0>();
        softmax(cur, 0);
        int i = 0;
        for (;;) {
            mf_walk nxt = cur;
            if (!mf_next(nxt, seq_len)) {
                break;
            }
            const int st = i & 1;
            pv_issue(i, st);
            /* the buffer back before S of the next item, which may wait
             * for that item to land (released after S: 1-4 % slower) */
            wg_wait<0>();
            release(st);
            if (nxt.b != cur.b) {   /* a new sequence: its Q (S of cur is done) */
                for (int h2 = 0; h2 < 2; h2++) {
                    const int tid = wt + 128 * h2;
                    mw_copy_rows_bf16(sm, (tid >> 2) < H ? (long long) nxt.b * H + (tid >> 2) : -1, q, tid);
                }
                kimi_cp_async_commit();
                kimi_cp_async_wait<0>();
                wg_fence_proxy();
                kimi_bar_sync(MT_BAR_G0, 128);
            }
            s_issue(st ^ 1, ((i + 1) >> 1) & 1);
            wg_wait<0>();
            if (nxt.b != cur.b) {
                seg_out(cur.b);
            }
            softmax(nxt, st ^ 1);
            cur = nxt;
            i++;
        }
        pv_issue(i, i & 1);
        wg_wait<0>();
        release(i & 1);
        seg_out(cur.b);
    } else {
        mf_walk cur = w0;
        for (int i = 0;; i++) {
            const int st = i & 1;
            kimi_bar_sync(MT_BAR_P, 256);   /* P and alpha of this item stored */
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
            mf_walk nxt = cur;
            const bool more = mf_next(nxt, seq_len);
            if (more) {
                kimi_bar_arrive(MT_BAR_PFREE, 256);
            }
            if (lane == 0) {
                kimi_mbar_arrive(&empty[st]);
            }
            if (!more || nxt.b != cur.b) {
                seg_out(cur.b);
            }
            if (loader && ld.left > 0) {   /* ld is item i + 2: into this buffer */
                kimi_mbar_wait(&empty[st], (i >> 1) & 1);   /* group 0 done too */
                mt_load_tile(sm, st, ld.tile, ld.len, bs, blk_ld, &kv_map, full + st * MT_CHUNKS);
                if (mf_next(ld, seq_len)) {
                    blk_ld = mt_block_of(ld.tile, ld.len, bs, mf_bt(block_table, bt_ld, ld));
                }
            }
            if (!more) {
                break;
            }
            cur = nxt;
        }
    }
}

/* ---- fp8 cache: bulk copies, e4m3 S, V^T from registers (sm_90a) ----------
 *
 * The fp8 cache is half the bf16 bytes, so its kernel must do the bf16
 * one's MMAs in half the time and keep as many bytes in flight.  Widening
 * every tile to bf16 in shared memory before both products
 * (mla_decode_wg_kernel<true>) left it slower than the bf16 cache.  Here:
 *
 *   S      = (Qhi + Qlo) K8^T on e4m3 wgmma straight from the copied tile:
 *            Q split once per sequence into two e4m3 terms with one scale
 *            per head (rows; hi alone rounds Q to 3 mantissa bits, ~3 %
 *            error on the output, hi + lo keeps bf16's precision), the
 *            token's scale on S's columns.
 *   O^T   += V^T P^T on f16 with V^T from registers: fp8 wgmma takes
 *            K-major operands only and V's K is the token, so each warp
 *            reads its 16 dims of 32 tokens with one ldmatrix.trans (b16
 *            pairs of dims), splits each pair's bytes by dim and widens
 *            them to f16 (exact) right before its wgmma; accumulator row g
 *            of a warp is dim 2g of its plane, row g + 8 dim 2g + 1.  P' =
 *            f16(p * token scale * M8_PF) from shared memory as B; l in the
 *            same units.  No widened copy of V: the shared memory goes to
 *            stages (bytes in flight are what a decode kernel lives on).
 *
 * The cache is planar per block (kimi_kernels.h): [36][bs][16], 16 bytes of
 * every row per plane, which is wgmma's unswizzled K-major layout (8-row x
 * 16-byte core matrices, LBO 1 KB along K, SBO 128 B along the rows), so a
 * 64-row block lands with one 36 KB bulk copy and S reads it in place (a
 * row-major cache as TMA boxes - 576-byte rows, 64- or 128-byte boxes - held
 * the loads alone to 54 % of copy); the 64 token scales by a second copy,
 * M8_STAGES deep (warp 4 loads a stage again once both groups' P V on it
 * completed).  Group 0: S, the softmax, P (and each head's rescale) to
 * shared memory, P V of dims 0-127; group 1: P V of dims 128-511 (an even
 * split measured 3 % slower: 211.5 vs 206 us at B=64 x 8K).  Rows of the
 * last tile past the sequence are zeroed before P V reads them.  Same flat
 * schedule, partials and combine as the bf16 kernels.
 */

/* -DKIMI_MLA_TRACE (a debug build, off in every product build): block 0
 * of the bulk-copy kernel stamps clock64() at each link of the first
 * MLA_TRACE_ITEMS items' chain, thread 0 for group 0 and thread 128 (the
 * loader) for group 1, slot [item][event] (M8_EV_*); kbench's mlaone
 * prints them (kimi_mla_trace_read).  What it answers: which link of land
 * -> S -> softmax -> P' -> P V -> release is long. */
enum {
    M8_EV_FULL0,      /* group 0 saw the item land (before its S) */
    M8_EV_S_ISSUED,   /* group 0 issued the item's S */
    M8_EV_PFREE,      /* group 0 may overwrite P' (group 1 done with the item before) */
    M8_EV_P_OUT,      /* group 0 published the item's P' */
    M8_EV_PV0_ISSUED, /* group 0 issued its P V of the item */
    M8_EV_SMX_NEXT,   /* group 0 finished the item's softmax (during the item before's P V) */
    M8_EV_REL0,       /* group 0 released the item's stage */
    M8_EV_FULL1 = 8,  /* group 1 saw the item land */
    M8_EV_P_IN,       /* group 1 saw the item's P' */
    M8_EV_PV1_DONE,   /* group 1's P V of the item completed (stage released) */
    M8_EV_LOAD,       /* the loader issued the item's copy */
    M8_EV_N = 16
};
#ifdef KIMI_MLA_TRACE
#define MLA_TRACE_ITEMS 64
__device__ long long mla_trace_buf[MLA_TRACE_ITEMS][M8_EV_N];
#define M8_STAMP(item, ev)                                                                 \
    do {                                                                                   \
        if (blockIdx.x == 0 && (threadIdx.x & 127) == 0 && (item) < MLA_TRACE_ITEMS) {    \
            mla_trace_buf[item][ev] = clock64();                                           \
        }                                                                                  \
    } while (0)

extern "C" int
kimi_mla_trace_read(long long *dst, int n_items)
{
    if (n_items > MLA_TRACE_ITEMS) {
        n_items = MLA_TRACE_ITEMS;
    }
    if (cudaMemcpyFromSymbol(dst, mla_trace_buf, (size_t) n_items * M8_EV_N * sizeof(long long)) != cudaSuccess) {
        return -1;
    }
    return n_items;
}
#else
#define M8_STAMP(item, ev) do { } while (0)
#endif

#ifndef M8_STAGES
#define M8_STAGES    3                        /* 3 beat 4: 203.8 vs 208.8 us at B=64 x 8K, 62.0 vs 67.3 at B=16 (s15) */
#endif
#define M8_CHUNK_B   (64 * 16)                /* 16 dims of 64 tokens: 8 core matrices */
#define M8_OFF_SC    (36 * M8_CHUNK_B)        /* [64] fp32: token (or Q: head) scales */
#define M8_REGION    (M8_OFF_SC + 64 * 4)     /* Q hi, Q lo or a stage */
#define M8_OFF_P     0                        /* P' f16 [64 heads][64 tokens], 128-byte swizzle */
#define M8_OFF_A     MW_QB                    /* [64] rescale per head */
#define M8_OFF_BAR   (M8_OFF_A + 64 * 4)      /* full[S], empty[S] */
#define M8_OFF_Q     (M8_OFF_BAR + 128)
#define M8_OFF_ST(s) (M8_OFF_Q + M8_REGION * (2 + (s)))
#define M8_SMEM      (M8_OFF_ST(M8_STAGES) + 1024)
#define M8_PF        256.f                    /* keeps P' in f16's normal range */
#ifndef M8_MT0
#define M8_MT0       2                        /* group 0's 64-dim m-tiles of P V (it also does S) */
#endif

/* Q of one sequence (qb: [H][576] bf16) -> hi = e4m3(q / s) in region 0's
 * layout, lo = e4m3(q / s - hi) in region 1's, one scale s per head (amax /
 * 448) into region 0's scale slot; heads >= H zero.  NTHR (128 or 256)
 * threads, NTHR / 64 a head. */
template <int NTHR>
static __device__ __forceinline__ void
m8_load_q(uint8_t *reg, const uint16_t *qb, int H, int tid)
{
    constexpr int per = NTHR / 64, n = (MLA_D / 8) / per;
    const int h = tid / per, part = tid % per;
    const uint16_t *row = qb + (size_t) h * MLA_D;
    float am = 0.f;
    if (h < H) {
        for (int i = 0; i < n; i++) {
            const uint4 v = *(const uint4 *) (row + (part * n + i) * 8);
            const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                am = fmaxf(am, fmaxf(fabsf(kimi_bf2f((uint16_t) w[j])), fabsf(kimi_bf2f((uint16_t) (w[j] >> 16)))));
            }
        }
    }
    for (int o = 1; o < per; o <<= 1) {
        am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
    }
    const float sc = am > 0.f ? am / KIMI_FP8_MAX : 1.f, inv = 1.f / sc;
    for (int i = 0; i < n; i++) {
        const int d = (part * n + i) * 8;
        uint2 q8 = make_uint2(0, 0), r8 = make_uint2(0, 0);
        if (h < H) {
            const uint4 v = *(const uint4 *) (row + d);
            const uint32_t w[4] = {v.x, v.y, v.z, v.w};
            uint32_t b[2] = {0, 0}, c[2] = {0, 0};
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float x = kimi_bf2f((uint16_t) (w[j >> 1] >> (16 * (j & 1)))) * inv;
                const uint8_t e = kimi_f2fp8(x);
                b[j >> 2] |= (uint32_t) e << (8 * (j & 3));
                c[j >> 2] |= (uint32_t) kimi_f2fp8(x - kimi_fp82f(e)) << (8 * (j & 3));
            }
            q8 = make_uint2(b[0], b[1]);
            r8 = make_uint2(c[0], c[1]);
        }
        const uint32_t off = (d >> 4) * M8_CHUNK_B + h * 16 + (d & 15);
        *(uint2 *) (reg + off) = q8;
        *(uint2 *) (reg + M8_REGION + off) = r8;
    }
    if (part == 0) {
        ((float *) (reg + M8_OFF_SC))[h] = sc;
    }
}

/* Warp-wide: tile `tile` (in a block of bs rows, a multiple of 64) into
 * stage region st, completing on full: a 64-row block is one contiguous
 * 36 KB copy (the planar cache is already in the region's order), a
 * longer one 36 runs of 1 KB; the token scales by one more. */
static __device__ __forceinline__ void
m8_load_tile(uint8_t *st, int tile, int bs, int blk, const uint8_t *kv, const float *kv_scale,
             uint64_t *full)
{
    const int lane = threadIdx.x & 31, r0 = (tile * MW_TILE) % bs;
    const uint8_t *b = kv + (size_t) blk * bs * MLA_D;
    if (lane == 0) {
        kimi_mbar_arrive_tx(full, (uint32_t) MW_TILE * (MLA_D + 4));
        kimi_bulk_load(st + M8_OFF_SC, kv_scale + (size_t) blk * bs + r0, MW_TILE * 4, full);
        if (bs == MW_TILE) {
            kimi_bulk_load(st, b, 36 * M8_CHUNK_B, full);
        }
    }
    if (bs != MW_TILE) {
        for (int k = lane; k < 36; k += 32) {
            kimi_bulk_load(st + k * M8_CHUNK_B, b + (size_t) k * bs * 16 + r0 * 16, M8_CHUNK_B, full);
        }
    }
}

/* The f16 A fragments of V^T for this warp's 16 rows (the 16 dims of plane
 * pl: row g is dim 2g, row g + 8 dim 2g + 1) over tokens k0 .. k0 + 31:
 * a[4e .. 4e + 3] is k16 step e.  ldmatrix.trans of 4 x 8 token rows as b16
 * pairs of dims gives a lane (tokens 2c, 2c + 1) x (dims 2g, 2g + 1); the
 * bytes are regrouped by dim and each e4m3 pair widened to f16x2. */
static __device__ __forceinline__ void
m8_vt_frag(const uint8_t *pl, int k0, uint32_t *a)
{
    uint32_t r[4];
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(kimi_smem_addr(pl + (k0 + (threadIdx.x & 31)) * 16)));
#pragma unroll
    for (int m = 0; m < 4; m++) {
        const uint32_t x = __byte_perm(r[m], 0, 0x3120);   /* dim 2g's two tokens, then 2g + 1's */
        const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t) (x & 0xffff), __NV_E4M3);
        const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t) (x >> 16), __NV_E4M3);
        a[2 * m] = *(const uint32_t *) &lo;
        a[2 * m + 1] = *(const uint32_t *) &hi;
    }
}

/* A group's O^T (4 x [64 dims x 64 heads]) times each head's rescale: this
 * thread's columns are heads 8j + 2c and + 1. */
template <int NMT>
static __device__ __forceinline__ void
m8_rescale(float (&o)[NMT * 32], const float *alpha_s, int t)
{
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float2 al = *(const float2 *) (alpha_s + 8 * j + 2 * t);
#pragma unroll
        for (int mt = 0; mt < NMT; mt++) {
            o[32 * mt + 4 * j] *= al.x;
            o[32 * mt + 4 * j + 1] *= al.y;
            o[32 * mt + 4 * j + 2] *= al.x;
            o[32 * mt + 4 * j + 3] *= al.y;
        }
    }
    wg_fence_regs(o);
}

/* A group's P V of the tile in stage st over NMT m-tiles of 64 dims:
 * plane plane0 + 4mt + w (warp w of the group) for m-tile mt, P' from
 * shared memory; a commit group per m-tile and 32 tokens, the A fragments
 * in M8_VT_SETS rotating sets so the next ones widen while the tensor
 * cores run the earlier (-DM8_VT_SETS=3: one more in flight, 8 more
 * registers; not measured yet). */
#ifndef M8_VT_SETS
#define M8_VT_SETS 2
#endif
template <int NMT>
static __device__ __forceinline__ void
m8_pv(float (&o)[NMT * 32], const uint8_t *st, uint32_t p_addr, int plane0, int w)
{
    uint32_t a[M8_VT_SETS][8];
#pragma unroll
    for (int n = 0; n < 2 * NMT; n++) {
        const int kp = n / NMT, mt = n % NMT;
        if (n >= M8_VT_SETS) {
            wg_wait<M8_VT_SETS - 1>();   /* the set n - M8_VT_SETS used is free */
        }
        uint32_t (&f)[8] = a[n % M8_VT_SETS];
        m8_vt_frag(st + (plane0 + 4 * mt + w) * M8_CHUNK_B, 32 * kp, f);
        wg_arrive();
        float (&d)[32] = *reinterpret_cast<float (*)[32]>(&o[32 * mt]);
#pragma unroll
        for (int e = 0; e < 2; e++) {
            wgmma_m64n64k16_f16_rs(d, f[4 * e], f[4 * e + 1], f[4 * e + 2], f[4 * e + 3],
                                   wg_desc(p_addr + (2 * kp + e) * 32, 16, 1024));
        }
        wg_commit();
    }
}

/* Rows live .. 63 of V (planes 0 .. 31) in stage st to zero: past the
 * sequence a block holds other rows, stale bytes or NaN, and 0 * NaN is
 * NaN.  Group 0 (128 threads); the next barrier publishes it. */
static __device__ __forceinline__ void
m8_zero_tail(uint8_t *st, int live, int wt)
{
    for (int c = wt; c < (MW_TILE - live) * 32; c += 128) {
        *(uint4 *) (st + (c & 31) * M8_CHUNK_B + (live + (c >> 5)) * 16) = make_uint4(0, 0, 0, 0);
    }
    wg_fence_proxy();   /* before the next bulk copy into the stage */
}

/* A group's half of a segment's partial: O^T rows (dims) and columns
 * (heads) to opart[base + head][dim], and from group 0 m and l per head (l
 * summed over the row's four lanes first). */
template <int NMT>
static __device__ __forceinline__ void
m8_store_partial(mla_part_t *opart, float *mlpart, size_t base, int H, int plane0, int w, int r0, int r1, int t,
                 const float (&o)[NMT * 32], float m0, float m1, float l0, float l1)
{
    const int d00 = 16 * (plane0 + w) + 2 * ((threadIdx.x & 31) >> 2), h0 = 2 * t;
#pragma unroll
    for (int mt = 0; mt < NMT; mt++) {
        const int d0 = d00 + 64 * mt;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int h = 8 * j + h0;
            const float *v = o + 32 * mt + 4 * j;
            if (h < H) {
                mla_part_st2(opart + (base + h) * MLA_DV + d0, v[0], v[2]);
            }
            if (h + 1 < H) {
                mla_part_st2(opart + (base + h + 1) * MLA_DV + d0, v[1], v[3]);
            }
        }
    }
    if (plane0 == 0) {   /* group 0 */
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        if (t == 0 && r0 < H) {
            *(float2 *) (mlpart + (base + r0) * 2) = make_float2(m0, l0);
        }
        if (t == 0 && r1 < H) {
            *(float2 *) (mlpart + (base + r1) * 2) = make_float2(m1, l1);
        }
    }
}

/* The online softmax of mw_softmax for the e4m3 product: s = Q8 K8^T is
 * scaled by the row's sc (scale2 * the head's q scale) and the column's
 * token scale ks (0 past the sequence, where ks may be garbage); P' =
 * f16(p * ks * M8_PF) packed as the RS A fragment; l in the same units. */
static __device__ __forceinline__ void
m8_softmax(const float (&acc)[32], int live, float sc0, float sc1, const float *ks, int t,
           float &m0, float &m1, float &l0, float &l1, uint32_t (&pw)[16], float &a0, float &a1)
{
    float s[32];   /* a copy: the accumulator is not written outside wgmma (ptxas would serialize) */
#pragma unroll
    for (int i = 0; i < 32; i++) s[i] = acc[i];
#pragma unroll
    for (int j = 0; j < 8; j++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int c = 8 * j + 2 * t + e;
            const bool in = c < live;
            const float kc = in ? ks[c] : 0.f;
            s[4 * j + e] = in ? s[4 * j + e] * kc * sc0 : -INFINITY;
            s[4 * j + 2 + e] = in ? s[4 * j + 2 + e] * kc * sc1 : -INFINITY;
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
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);   /* token 0 is live: finite */
    a0 = mw_ex2(m0 - n0);
    a1 = mw_ex2(m1 - n1);
    m0 = n0;
    m1 = n1;
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float p00 = mw_ex2(s[4 * j] - n0), p01 = mw_ex2(s[4 * j + 1] - n0);
        const float p10 = mw_ex2(s[4 * j + 2] - n1), p11 = mw_ex2(s[4 * j + 3] - n1);
        sum0 += p00 + p01;
        sum1 += p10 + p11;
        const int c = 8 * j + 2 * t;   /* p is 0 past the sequence: ks read only inside */
        const float k0 = c < live ? ks[c] * M8_PF : 0.f, k1 = c + 1 < live ? ks[c + 1] * M8_PF : 0.f;
        const __half2 q0 = __floats2half2_rn(p00 * k0, p01 * k1);
        const __half2 q1 = __floats2half2_rn(p10 * k0, p11 * k1);
        pw[2 * j] = *(const uint32_t *) &q0;
        pw[2 * j + 1] = *(const uint32_t *) &q1;
    }
    l0 = l0 * a0 + sum0 * M8_PF;
    l1 = l1 * a1 + sum1 * M8_PF;
}

static __global__ void __launch_bounds__(MT_THREADS, 1)
mla_decode_fp8_kernel(const uint8_t *__restrict__ kv, const uint16_t *__restrict__ q,
                      const float *__restrict__ kv_scale, int H, int B, int bs,
                      const int32_t *__restrict__ block_table, int bt_ld, const int32_t *__restrict__ seq_len,
                      float scale2, mla_part_t *__restrict__ opart, float *__restrict__ mlpart)
{
    extern __shared__ __align__(1024) uint8_t m8_smem_raw[];
    uint8_t *sm = m8_smem_raw + ((1024 - (kimi_smem_addr(m8_smem_raw) & 1023)) & 1023);
    uint64_t *full = (uint64_t *) (sm + M8_OFF_BAR), *empty = full + M8_STAGES;
    float *alpha_s = (float *) (sm + M8_OFF_A);
    uint8_t *qreg = sm + M8_OFF_Q;
    const float *qsc = (const float *) (qreg + M8_OFF_SC);
    const uint32_t sq = kimi_smem_addr(qreg), sp = kimi_smem_addr(sm + M8_OFF_P);

    if (threadIdx.x == 0) {
        for (int i = 0; i < M8_STAGES; i++) {
            kimi_mbar_init(&full[i], 1);
            kimi_mbar_init(&empty[i], 8);   /* lane 0 of each math warp */
        }
        kimi_mbar_init_fence();
    }
    __syncthreads();
    KIMI_GRID_ENTRY();

    mf_walk w0;
    const int k = blockIdx.x;
    if (!mf_start(seq_len, B, gridDim.x, k, (int *) (sm + M8_OFF_P), w0)) {
        return;
    }

    /* warp 4 loads: the first M8_STAGES items now, each later one into the
     * stage both groups have released (-DM8_LOAD_G0=1: warp 0, right after
     * group 0's release, which is usually the later one; A/B only) */
#ifndef M8_LOAD_G0
#define M8_LOAD_G0 0
#endif
    const bool loader = threadIdx.x >> 5 == (M8_LOAD_G0 ? 0 : 4);
    mf_walk ld = w0;
    int blk_ld = 0;
    if (loader) {
        bool more = true;
        for (int st = 0; st < M8_STAGES && more; st++) {
            m8_load_tile(sm + M8_OFF_ST(st), ld.tile, bs, mf_bt(block_table, bt_ld, ld)[ld.tile * MW_TILE / bs], kv,
                         kv_scale, &full[st]);
            M8_STAMP(st, M8_EV_LOAD);
            more = mf_next(ld, seq_len);
        }
        if (more) {   /* ld: the next item to load (left 0: none) */
            blk_ld = mf_bt(block_table, bt_ld, ld)[ld.tile * MW_TILE / bs];
        }
    }

    const int mt = threadIdx.x, g = mt >> 7, wt = mt & 127, w = wt >> 5;
    const int lane = wt & 31, t = lane & 3;
    const int r0 = w * 16 + (lane >> 2), r1 = r0 + 8;   /* group 0: this thread's heads in S */

    m8_load_q<MT_THREADS>(qreg, q + (size_t) w0.b * H * MLA_D, H, mt);
    wg_fence_proxy();
    __syncthreads();

    auto release = [&](int st) {
        if (lane == 0) {
            kimi_mbar_arrive(&empty[st]);
        }
    };

    if (g == 0) {
        float o[M8_MT0 * 32];   /* O^T of dims 0 .. 64 M8_MT0 - 1 (rows: dims, columns: heads) */
#pragma unroll
        for (int i = 0; i < M8_MT0 * 32; i++) o[i] = 0.f;
        float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
        float s[32];
        uint32_t pw[16];
        float a0, a1;

        /* S of the item in stage st: 18 k32 steps, each hi then lo */
        auto s_issue = [&](int item, int st, int par) {
            const uint32_t skv = kimi_smem_addr(sm + M8_OFF_ST(st));
            kimi_mbar_wait(&full[st], par);
            M8_STAMP(item, M8_EV_FULL0);
            wg_arrive();
#pragma unroll
            for (int kk = 0; kk < MLA_D / 32; kk++) {   /* planes 2kk, 2kk + 1 */
                const uint32_t off = kk * 2 * M8_CHUNK_B;
                wgmma_m64n64k32_e4m3(s, wg_desc_noswz(sq + off, M8_CHUNK_B, 128),
                                     wg_desc_noswz(skv + off, M8_CHUNK_B, 128), kk > 0);
                wgmma_m64n64k32_e4m3(s, wg_desc_noswz(sq + M8_REGION + off, M8_CHUNK_B, 128),
                                     wg_desc_noswz(skv + off, M8_CHUNK_B, 128), 1);
            }
            wg_commit();
            M8_STAMP(item, M8_EV_S_ISSUED);
        };
        auto softmax = [&](const mf_walk &wk, int st) {
            wg_fence_regs(s);
            const int live = wk.len - wk.tile * MW_TILE;
            m8_softmax(s, live, scale2 * qsc[r0], scale2 * qsc[r1],
                       (const float *) (sm + M8_OFF_ST(st) + M8_OFF_SC), t, m0, m1, l0, l1, pw, a0, a1);
            if (live < MW_TILE) {
                m8_zero_tail(sm + M8_OFF_ST(st), live, wt);
            }
        };

        /* per item i: S of i + 1 issued first, P' of i out, P V of i, the
         * softmax of i + 1 while P V's last steps run */
        mf_walk cur = w0;
        s_issue(0, 0, 0);
        wg_wait<0>();
        softmax(cur, 0);
        for (int i = 0;; i++) {
            const int st = i % M8_STAGES;
            mf_walk nxt = cur;
            const bool more = mf_next(nxt, seq_len), seg_end = !more || nxt.b != cur.b;
            if (more) {
                if (nxt.b != cur.b) {   /* a new sequence: its Q (S of cur is done) */
                    m8_load_q<128>(qreg, q + (size_t) nxt.b * H * MLA_D, H, wt);
                    wg_fence_proxy();
                    kimi_bar_sync(MT_BAR_G0, 128);
                }
                s_issue(i + 1, (i + 1) % M8_STAGES, ((i + 1) / M8_STAGES) & 1);
            }
            if (i > 0) {
                kimi_bar_sync(MT_BAR_PFREE, 256);   /* group 1 is done with the last P' */
            }
            M8_STAMP(i, M8_EV_PFREE);
            mw_store_p(sm + M8_OFF_P, alpha_s, pw, r0, r1, t, a0, a1);
            kimi_bar_sync(MT_BAR_G0, 128);
            kimi_bar_arrive(MT_BAR_P, 256);
            M8_STAMP(i, M8_EV_P_OUT);
            m8_rescale<M8_MT0>(o, alpha_s, t);
            m8_pv<M8_MT0>(o, sm + M8_OFF_ST(st), sp, 0, w);   /* its waits complete S of i + 1 too */
            M8_STAMP(i, M8_EV_PV0_ISSUED);
            const float sm0 = m0, sm1 = m1, sl0 = l0, sl1 = l1;   /* the ending segment's */
            if (more) {
                if (seg_end) {
                    m0 = m1 = -INFINITY;
                    l0 = l1 = 0.f;
                }
                softmax(nxt, (i + 1) % M8_STAGES);
                M8_STAMP(i + 1, M8_EV_SMX_NEXT);
            }
            wg_wait<0>();
            wg_fence_regs(o);
            release(st);
            M8_STAMP(i, M8_EV_REL0);
            if (M8_LOAD_G0 && loader && ld.left > 0) {   /* ld is item i + M8_STAGES: into this stage */
                kimi_mbar_wait(&empty[st], (i / M8_STAGES) & 1);
                m8_load_tile(sm + M8_OFF_ST(st), ld.tile, bs, blk_ld, kv, kv_scale, &full[st]);
                M8_STAMP(i + M8_STAGES, M8_EV_LOAD);
                if (mf_next(ld, seq_len)) {
                    blk_ld = mf_bt(block_table, bt_ld, ld)[ld.tile * MW_TILE / bs];
                }
            }
            if (seg_end) {
                m8_store_partial<M8_MT0>(opart, mlpart, ((size_t) cur.b + k) * H, H, 0, w, r0, r1, t, o, sm0, sm1,
                                         sl0, sl1);
#pragma unroll
                for (int j = 0; j < M8_MT0 * 32; j++) o[j] = 0.f;
            }
            if (!more) {
                break;
            }
            cur = nxt;
        }
    } else {
        constexpr int NMT = 8 - M8_MT0;   /* O^T of dims 64 M8_MT0 .. 511 */
        float o[NMT * 32];
#pragma unroll
        for (int i = 0; i < NMT * 32; i++) o[i] = 0.f;
        mf_walk cur = w0;
        for (int i = 0;; i++) {
            const int st = i % M8_STAGES, par = (i / M8_STAGES) & 1;
            kimi_mbar_wait(&full[st], par);
            M8_STAMP(i, M8_EV_FULL1);
            kimi_bar_sync(MT_BAR_P, 256);   /* P' and the rescale of this item stored */
            M8_STAMP(i, M8_EV_P_IN);
            m8_rescale<NMT>(o, alpha_s, t);
            m8_pv<NMT>(o, sm + M8_OFF_ST(st), sp, 4 * M8_MT0, w);
            wg_wait<0>();
            wg_fence_regs(o);
            M8_STAMP(i, M8_EV_PV1_DONE);
            mf_walk nxt = cur;
            const bool more = mf_next(nxt, seq_len);
            if (more) {
                kimi_bar_arrive(MT_BAR_PFREE, 256);
            }
            release(st);
            if (!M8_LOAD_G0 && loader && ld.left > 0) {   /* ld is item i + M8_STAGES: into this stage */
                kimi_mbar_wait(&empty[st], par);
                m8_load_tile(sm + M8_OFF_ST(st), ld.tile, bs, blk_ld, kv, kv_scale, &full[st]);
                M8_STAMP(i + M8_STAGES, M8_EV_LOAD);
                if (mf_next(ld, seq_len)) {
                    blk_ld = mf_bt(block_table, bt_ld, ld)[ld.tile * MW_TILE / bs];
                }
            }
            if (!more || nxt.b != cur.b) {
                m8_store_partial<NMT>(opart, mlpart, ((size_t) cur.b + k) * H, H, 4 * M8_MT0, w, 0, 0, t, o, 0.f,
                                      0.f, 0.f, 0.f);
#pragma unroll
                for (int j = 0; j < NMT * 32; j++) o[j] = 0.f;
            }
            if (!more) {
                break;
            }
            cur = nxt;
        }
    }
}

/* o[b,h,:] = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s over sequence b's
 * partial slots b + k, k the runs of the flat schedule that hold its tiles
 * (found from the tile counts, as mf_start cut them; none: o = 0).  One
 * warp a (sequence, head), lane j holding dims 8j.. and 256 + 8j.. (each
 * load a warp-wide 512 contiguous bytes), the slots' m and l a lane a slot
 * and their O MC_SLOTS slots at a time, all loads of a group issued before
 * their first use: the merge is a chain of a few memory round trips, not
 * bandwidth (the partials are in L2), so the round trips are what counts. */
#define MC_WARPS 4
#define MC_SLOTS 2         /* 58 registers, 8 blocks an SM (4: 80 and 6, no faster) */

static __global__ void __launch_bounds__(MC_WARPS * 32, 8)
mla_combine_kernel(const mla_part_t *__restrict__ opart, const float *__restrict__ mlpart,
                   int H, const int32_t *__restrict__ seq_len, int B, int n_runs,
                   uint16_t *__restrict__ o, float *__restrict__ lse)
{
    KIMI_GRID_ENTRY();
    const int lane = threadIdx.x & 31, b = blockIdx.x, h = blockIdx.y * MC_WARPS + (threadIdx.x >> 5);
    int all = 0, before = 0;
    for (int i = lane; i < B; i += 32) {
        const int nt = mf_ntiles(seq_len[i]);
        all += nt;
        before += i < b ? nt : 0;
    }
    all = __reduce_add_sync(0xffffffffu, all);
    before = __reduce_add_sync(0xffffffffu, before);
    const int nt = mf_ntiles(seq_len[b]), per = (all + n_runs - 1) / n_runs;
    if (h >= H) {
        return;
    }
    const int k0 = nt > 0 ? before / per : 0;
    const int n = nt > 0 ? (before + nt - 1) / per - k0 + 1 : 0;
    const size_t row0 = ((size_t) b + k0) * H + h;   /* slot s: row0 + s H */

    float M = -INFINITY, L = 0.f, a[16];
#pragma unroll
    for (int i = 0; i < 16; i++) a[i] = 0.f;
    for (int c = 0; c < n; c += 32) {
        const int m = n - c < 32 ? n - c : 32;
        float2 ml = make_float2(-INFINITY, 0.f);
        if (lane < m) {
            ml = *(const float2 *) (mlpart + (row0 + (size_t) (c + lane) * H) * 2);
        }
        /* empty splits have l = 0 and O = 0: weight 0, never NaN */
        float mc = ml.y > 0.f ? ml.x : -INFINITY;
        for (int d = 16; d > 0; d >>= 1) {
            mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, d));
        }
        const float Mn = fmaxf(M, mc);
        if (Mn == -INFINITY) {
            continue;   /* no tokens in any slot so far */
        }
        const float keep = M == -INFINITY ? 0.f : exp2f(M - Mn);
        M = Mn;
        L *= keep;
#pragma unroll
        for (int i = 0; i < 16; i++) a[i] *= keep;
        const float f = ml.y > 0.f ? exp2f(ml.x - M) : 0.f;
        float fl = f * ml.y;
        for (int d = 16; d > 0; d >>= 1) {
            fl += __shfl_xor_sync(0xffffffffu, fl, d);
        }
        L += fl;
        for (int s0 = 0; s0 < m; s0 += MC_SLOTS) {
            uint4 v[MC_SLOTS][2];   /* 8 bf16 each */
#pragma unroll
            for (int u = 0; u < MC_SLOTS; u++) {
                if (s0 + u < m) {
                    const mla_part_t *p = opart + (row0 + (size_t) (c + s0 + u) * H) * MLA_DV + 8 * lane;
                    v[u][0] = *(const uint4 *) p;
                    v[u][1] = *(const uint4 *) (p + 256);
                }
            }
#pragma unroll
            for (int u = 0; u < MC_SLOTS; u++) {
                const float fu = __shfl_sync(0xffffffffu, f, (s0 + u) & 31);
                if (s0 + u < m) {
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        const uint32_t w = (&v[u][i >> 2].x)[i & 3];
                        a[2 * i] += fu * __uint_as_float(w << 16);
                        a[2 * i + 1] += fu * __uint_as_float(w & 0xffff0000u);
                    }
                }
            }
        }
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    uint16_t *dst = o + ((size_t) b * H + h) * MLA_DV + 8 * lane;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        uint4 out;
        uint32_t *w = &out.x;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = (uint32_t) kimi_f2bf(a[8 * half + 2 * i] * inv) | (uint32_t) kimi_f2bf(a[8 * half + 2 * i + 1] * inv) << 16;
        }
        *(uint4 *) (dst + 256 * half) = out;
    }
    if (lse != NULL && lane == 0) {
        /* log2 of the softmax denominator (scores in log2 units) */
        lse[(size_t) b * H + h] = L > 0.f ? M + log2f(L) : -INFINITY;
    }
}

/* Decode context parallel: o[t,h,:] = sum_r 2^(lse_r - M) o_r / sum_r
 * 2^(lse_r - M), the D ranks' partials of one query (each over the tokens
 * that rank holds) packed a rank a part: [T][H][512] bf16, then lse [T][H]
 * fp32 (-inf: that rank held none of the context). */
static __global__ void
mla_merge_parts_kernel(const uint8_t *__restrict__ parts, size_t part_bytes, int D, int T, int H,
                       uint16_t *__restrict__ o)
{
    KIMI_GRID_ENTRY();
    const size_t th = (size_t) blockIdx.x * H + blockIdx.y;
    const size_t lse_off = (size_t) T * H * MLA_DV * 2;
    float M = -INFINITY;
    for (int r = 0; r < D; r++) {
        M = fmaxf(M, ((const float *) (parts + r * part_bytes + lse_off))[th]);
    }
    float L = 0.f, a[4] = { 0.f, 0.f, 0.f, 0.f };
    for (int r = 0; r < D; r++) {
        const float l = ((const float *) (parts + r * part_bytes + lse_off))[th];
        const float f = l > -INFINITY ? exp2f(l - M) : 0.f;
        const uint2 v = *(const uint2 *) ((const uint16_t *) (parts + r * part_bytes)
                                          + th * MLA_DV + threadIdx.x * 4);
        L += f;
        a[0] += f * kimi_bf2f((uint16_t) v.x);
        a[1] += f * kimi_bf2f((uint16_t) (v.x >> 16));
        a[2] += f * kimi_bf2f((uint16_t) v.y);
        a[3] += f * kimi_bf2f((uint16_t) (v.y >> 16));
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    uint2 out;
    out.x = (uint32_t) kimi_f2bf(a[0] * inv) | (uint32_t) kimi_f2bf(a[1] * inv) << 16;
    out.y = (uint32_t) kimi_f2bf(a[2] * inv) | (uint32_t) kimi_f2bf(a[3] * inv) << 16;
    *(uint2 *) (o + th * MLA_DV + threadIdx.x * 4) = out;
}

extern "C" int
kimi_mla_merge_parts(const void *parts, size_t part_bytes, int D, int T, int H, kimi_bf16_t *o,
                     cudaStream_t s, kimi_err_t *err)
{
    if (parts == NULL || o == NULL || D <= 0 || T < 0 || H <= 0
        || part_bytes < (size_t) T * H * (MLA_DV * 2 + 4) || (((uintptr_t) parts | part_bytes) & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_merge_parts: D=%d T=%d H=%d part_bytes=%zu", D, T,
                            H, part_bytes);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    KIMI_LAUNCH(err, mla_merge_parts_kernel, dim3(T, H), MLA_DV / 4, 0, s, (const uint8_t *) parts,
                part_bytes, D, T, H, (uint16_t *) o);
    return KIMI_OK;
}

/* The partials of one call of at most MLA_GROUP heads */
static size_t
mla_part_bytes(int B, int H)
{
    /* a partial per run and sequence it crosses: B + runs - 1 <= B +
     * MF_MAX_RUNS (n_splits sets the runs, not this bound) */
    return ((size_t) B + MF_MAX_RUNS) * H * (MLA_DV * sizeof(mla_part_t) + 2 * sizeof(float));
}

extern "C" size_t
kimi_mla_ws_bytes(int B, int H, int n_splits)
{
    (void) n_splits;
    if (H <= MLA_GROUP && H % 16 == 0) {
        return mla_part_bytes(B, H);
    }
    /* more heads, or a count the 16-row MMA steps do not divide: a
     * group's partials, then its q and o gathered */
    return mla_part_bytes(B, MLA_GROUP) + (size_t) B * MLA_GROUP * (MLA_D + MLA_DV) * sizeof(kimi_bf16_t);
}
/* One wave: at most n_sm blocks in all (the kernel holds one block per SM),
 * and at least 4 tiles (128 tokens) per split so the partials (64 KB per
 * block) stay small next to the cache bytes a split reads. */
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

/* KIMI_MLA_V11=1: either cache on the cp.async kernel (A/B measurements). */
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

static int mla_decode_group(const kimi_bf16_t *q, int B, int H, const void *kv, const float *kv_scale,
                            int kv_fp8, int bs, const int32_t *block_table, int bt_ld,
                            const int32_t *seq_len, int n_splits, float scale, void *ws,
                            kimi_bf16_t *o, float *lse, cudaStream_t s, kimi_err_t *err);

extern "C" int
kimi_mla_decode(const kimi_bf16_t *q, int B, int H, const void *kv,
                const float *kv_scale, int kv_fp8, int bs,
                const int32_t *block_table, int bt_ld, const int32_t *seq_len,
                int n_splits, float scale, void *ws, kimi_bf16_t *o,
                cudaStream_t s, kimi_err_t *err)
{
    return kimi_mla_decode_lse(q, B, H, kv, kv_scale, kv_fp8, bs, block_table, bt_ld, seq_len,
                               n_splits, scale, ws, o, NULL, s, err);
}

extern "C" int
kimi_mla_decode_lse(const kimi_bf16_t *q, int B, int H, const void *kv,
                    const float *kv_scale, int kv_fp8, int bs,
                    const int32_t *block_table, int bt_ld, const int32_t *seq_len,
                    int n_splits, float scale, void *ws, kimi_bf16_t *o, float *lse,
                    cudaStream_t s, kimi_err_t *err)
{
    if (q == NULL || kv == NULL || block_table == NULL || seq_len == NULL || ws == NULL
        || o == NULL || B <= 0 || H <= 0 || H > MLA_MAX_HEADS || bs <= 0
        || bt_ld <= 0 || n_splits <= 0 || (kv_fp8 && kv_scale == NULL)
        || (lse != NULL && H % 16 != 0)) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "mla_decode: B=%d H=%d bs=%d bt_ld=%d splits=%d fp8=%d lse=%d (H <= %d;"
                            " with lse H %% 16 == 0)",
                            B, H, bs, bt_ld, n_splits, kv_fp8, lse != NULL, MLA_MAX_HEADS);
    }
    if (((uintptr_t) q | (uintptr_t) kv | (uintptr_t) ws) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_decode: q, kv or ws not 16-byte aligned");
    }
    if (H <= MLA_GROUP && H % 16 == 0) {
        return mla_decode_group(q, B, H, kv, kv_scale, kv_fp8, bs, block_table, bt_ld, seq_len, n_splits,
                                scale, ws, o, lse, s, err);
    }
    if (lse != NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_decode: the lse of more than %d heads", MLA_GROUP);
    }
    /* The kernels serve up to 64 heads from one read of each tile (the
     * 64-row wgmma tile) in steps of 16 rows: more heads (DeepSeek-V3's
     * 128 on one rank) run as groups of 64, and a group of a count that is
     * not a multiple of 16 (Kimi-K2's 64 heads over 8 tensor-parallel
     * ranks: 8) is padded with zero heads; each group is gathered into ws,
     * decoded, and its own heads scattered back.  The cache is read once a
     * group. */
    kimi_bf16_t *qg = (kimi_bf16_t *) ((uint8_t *) ws + mla_part_bytes(B, MLA_GROUP));
    kimi_bf16_t *og = qg + (size_t) B * MLA_GROUP * MLA_D;
    for (int h0 = 0; h0 < H; h0 += MLA_GROUP) {
        const int hn = H - h0 < MLA_GROUP ? H - h0 : MLA_GROUP;
        const int hp = (hn + 15) / 16 * 16;
        if (hp != hn) {
            KIMI_CUDA_TRY(cudaMemsetAsync(qg, 0, (size_t) B * hp * MLA_D * 2, s), err);
        }
        KIMI_CUDA_TRY(cudaMemcpy2DAsync(qg, (size_t) hp * MLA_D * 2, q + (size_t) h0 * MLA_D,
                                        (size_t) H * MLA_D * 2, (size_t) hn * MLA_D * 2, B,
                                        cudaMemcpyDeviceToDevice, s), err);
        int rc = mla_decode_group(qg, B, hp, kv, kv_scale, kv_fp8, bs, block_table, bt_ld, seq_len,
                                  n_splits, scale, ws, og, NULL, s, err);
        if (rc != KIMI_OK) {
            return rc;
        }
        KIMI_CUDA_TRY(cudaMemcpy2DAsync(o + (size_t) h0 * MLA_DV, (size_t) H * MLA_DV * 2, og,
                                        (size_t) hp * MLA_DV * 2, (size_t) hn * MLA_DV * 2, B,
                                        cudaMemcpyDeviceToDevice, s), err);
    }
    return KIMI_OK;
}

/* One call of at most MLA_GROUP heads (checked by kimi_mla_decode). */
static int
mla_decode_group(const kimi_bf16_t *q, int B, int H, const void *kv, const float *kv_scale, int kv_fp8,
                 int bs, const int32_t *block_table, int bt_ld, const int32_t *seq_len, int n_splits,
                 float scale, void *ws, kimi_bf16_t *o, float *lse, cudaStream_t s, kimi_err_t *err)
{
    int dev, n_sm;
    KIMI_CUDA_TRY(cudaGetDevice(&dev), err);
    KIMI_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev), err);
    mla_part_t *opart = (mla_part_t *) ws;
    float *mlpart = (float *) (opart + ((size_t) B + MF_MAX_RUNS) * H * MLA_DV);
    const float scale2 = scale * LOG2E;
    /* the flat schedule: as many runs as the splits asked for, or every SM
     * when the split count was bounded by the SMs, not the context */
    int runs = n_splits >= n_sm / B ? n_sm : B * n_splits;
    runs = runs < 1 ? 1 : runs > MF_MAX_RUNS ? MF_MAX_RUNS : runs;
    if (!kv_fp8 && mla_tma_block_ok(bs) && !mla_v11_forced()) {
        CUtensorMap map;
        const int rows_box = bs < MW_TILE ? bs : MW_TILE;
        /* rows: the map's bound, not the cache's (the kernel does not know how
         * many blocks the cache has); the block table is trusted here as in
         * every path of this kernel */
        int rc = kimi_tmap_2d(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, kv, MLA_D, 1ull << 31,
                              MLA_D * 2, 64, (uint32_t) rows_box, 128, err);
        if (rc != KIMI_OK) {
            return rc;
        }
        KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_decode_tma_kernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, MT_SMEM), err);
        KIMI_LAUNCH(err, mla_decode_tma_kernel, dim3(runs), MT_THREADS, MT_SMEM, s, map, q, H, B, bs,
                    block_table, bt_ld, seq_len, scale2, opart, mlpart);
    } else if (kv_fp8 && bs % MW_TILE == 0 && ((uintptr_t) kv_scale & 15) == 0 && !mla_v11_forced()
               && runs == n_sm) {
        /* (runs == n_sm: the splits were bounded by the SMs, not by a short
         * context; with ~2 tiles a run the cp.async kernel's shorter start
         * wins: B=1 x 1K 17 vs 24 us, B=1 x 8K 28 vs 35) */
        KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_decode_fp8_kernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, M8_SMEM), err);
        KIMI_LAUNCH(err, mla_decode_fp8_kernel, dim3(runs), MT_THREADS, M8_SMEM, s, (const uint8_t *) kv, q,
                    kv_scale, H, B,
                    bs, block_table, bt_ld, seq_len, scale2, opart, mlpart);
    } else if (kv_fp8) {
        KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_decode_wg_kernel<true>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, MW_SMEM), err);
        KIMI_LAUNCH(err, mla_decode_wg_kernel<true>, dim3(runs), MW_THREADS, MW_SMEM, s, q, H, B, kv,
                    kv_scale, bs, block_table, bt_ld, seq_len, scale2, opart, mlpart);
    } else {
        KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_decode_wg_kernel<false>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, MW_SMEM), err);
        KIMI_LAUNCH(err, mla_decode_wg_kernel<false>, dim3(runs), MW_THREADS, MW_SMEM, s, q, H, B, kv,
                    kv_scale, bs, block_table, bt_ld, seq_len, scale2, opart, mlpart);
    }
    KIMI_LAUNCH(err, mla_combine_kernel, dim3(B, (H + MC_WARPS - 1) / MC_WARPS), MC_WARPS * 32, 0, s, opart,
                mlpart, H, seq_len, B, runs, o, lse);
    return KIMI_OK;
}
