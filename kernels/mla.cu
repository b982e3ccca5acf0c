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
 *          them.
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

/* 64 rows of 576 bf16 (row r from src + r's row * 576, or zeros for a row
 * of -1) into the swizzled 9 x [64 x 64] layout at dst. */
static __device__ __forceinline__ void
mw_copy_rows_bf16(uint8_t *dst, long long row, const uint16_t *src)
{
    const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
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
        mw_copy_rows_bf16(sm + (stage ? MW_OFF_KV1 : MW_OFF_KV0), row, (const uint16_t *) kv);
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
    mw_copy_rows_bf16(sm, (threadIdx.x >> 2) < H ? (long long) b * H + (threadIdx.x >> 2) : -1, q);
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

            /* online softmax in log2 units: max of the raw scores (scale2 > 0),
             * p = 2^(s * scale2 - m); fp8: s and P carry the token's scale */
            const int tok0 = tile * MW_TILE;
            const float *ks = ksc + stage * 64;
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
            const float a0 = mw_ex2(m0 - n0), a1 = mw_ex2(m1 - n1);
            m0 = n0;
            m1 = n1;
            float sum0 = 0.f, sum1 = 0.f;
            uint8_t *ps = sm + MW_OFF_P;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const __nv_bfloat162 p0 = __floats2bfloat162_rn(mw_ex2(fmaf(s[4 * j], scale2, -n0)),
                                                                mw_ex2(fmaf(s[4 * j + 1], scale2, -n0)));
                const __nv_bfloat162 p1 = __floats2bfloat162_rn(mw_ex2(fmaf(s[4 * j + 2], scale2, -n1)),
                                                                mw_ex2(fmaf(s[4 * j + 3], scale2, -n1)));
                /* l sums what P V multiplies (the bf16 P, before any fp8 scale) */
                const float2 f0 = __bfloat1622float2(p0), f1 = __bfloat1622float2(p1);
                sum0 += f0.x + f0.y;
                sum1 += f1.x + f1.y;
                const int c = 8 * j + 2 * t;
                uint32_t w0, w1;
                if (FP8) {
                    const __nv_bfloat162 q0 = __floats2bfloat162_rn(f0.x * ks[c], f0.y * ks[c + 1]);
                    const __nv_bfloat162 q1 = __floats2bfloat162_rn(f1.x * ks[c], f1.y * ks[c + 1]);
                    w0 = *(const uint32_t *) &q0;
                    w1 = *(const uint32_t *) &q1;
                } else {
                    w0 = *(const uint32_t *) &p0;
                    w1 = *(const uint32_t *) &p1;
                }
                *(uint32_t *) (ps + wg_swz128(r0, c)) = w0;
                *(uint32_t *) (ps + wg_swz128(r1, c)) = w1;
            }
            l0 = l0 * a0 + sum0;
            l1 = l1 * a1 + sum1;
            if (t == 0) {
                alpha_s[r0] = a0;
                alpha_s[r1] = a1;
            }
            wg_fence_proxy();
        }
        __syncthreads();   /* P, alpha ready */

        /* O (64 heads x this group's 256 dims) = O * alpha + P V */
        {   /* (warpgroup 0 wrote these for its own rows r0, r1: the same heads) */
            const float a0 = alpha_s[r0], a1 = alpha_s[r1];
#pragma unroll
            for (int j = 0; j < 32; j++) {
                o[4 * j] *= a0;
                o[4 * j + 1] *= a0;
                o[4 * j + 2] *= a1;
                o[4 * j + 3] *= a1;
            }
        }
        wg_fence_regs(o);
        wg_arrive();
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
    if (kv_fp8) {
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
