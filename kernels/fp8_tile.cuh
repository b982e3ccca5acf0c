/*
 * The warp tile shared by the FP8 decode GEMMs (gemm_fp8.cu, moe.cu).
 *
 * One warp computes two 16-row weight tiles (set 0: rows a..a+15 of W_a,
 * set 1: rows b..b+15 of W_b) against up to 8*NG token rows, over all of K:
 *
 *   acc[s][j] (16 rows x 8 tokens) = sum_kb (sum_{k in kb} wq*xq) * ws[s][kb] * xs[tok][kb]
 *
 * with mma.sync m16n8k32 e4m3 (fp32 accumulate) for the inner 128 and the
 * scale multiply on the CUDA cores per 128-block, the DeepSeek "promotion"
 * every 128 of K.  The weights are the A operand (rows = output features)
 * and the tokens the B operand, so a decode batch of 1..8 tokens still fills
 * the tensor core's 16-row side with weight rows ("swap AB").
 *
 * K is walked in a permuted order that lets every lane load 16 contiguous
 * bytes: lane (g, t) holds bytes [16t, 16t+16) of each 64-byte half of a
 * 128-block for weight rows g and g+8 and for token g; the first k32 step
 * takes bytes 0..7 of each lane's 16 (as the fragment's k = 4t..4t+3 and
 * 16+4t..16+4t+3), the second bytes 8..15.  A and B use the same map, so the
 * dot product is unchanged (sum over a permutation of k).
 *
 * Layout:  W rows K bytes apart (row-major [N][K]); token rows K bytes
 *          apart; scales fp32.  K % 128 == 0.
 * Cost:    each weight byte is loaded once (streaming, no L1 allocation);
 *          token bytes come from L1/L2 or shared memory.
 */

#ifndef KIMI_FP8_TILE_CUH
#define KIMI_FP8_TILE_CUH

#include "kimi_cuda.cuh"

/* Non-volatile: the compiler may schedule these loads early (the data is
 * read-only for the kernel's life).  PAIR: the load also brings the row's
 * next 128-block into L2 (L2::256B), so a warp's chain of one-block-ahead
 * loads goes to HBM every other block (the MoE grids of more than one
 * token; see moe.cu's l2_pair). */
template <bool PAIR>
static __device__ __forceinline__ uint4 tile_ldw(const uint8_t *p)
{
    uint4 v;
    if constexpr (PAIR) {
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    } else {
        asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    }
    return v;
}

static __device__ __forceinline__ void tile_mma(float d[4], uint32_t a0,
    uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Weights of one 128-block for this lane: [set][row g / g+8][half]. */
struct TileW {
    uint4 v[2][2][2];
};

template <bool PAIR = false>
static __device__ __forceinline__ void
tile_load_w(TileW &w, const uint8_t *wa, const uint8_t *wb, size_t K, int kb, int t)
{
    const size_t off = (size_t) kb * 128 + t * 16;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        w.v[0][0][h] = tile_ldw<PAIR>(wa + off + h * 64);
        w.v[0][1][h] = tile_ldw<PAIR>(wa + 8 * K + off + h * 64);
        w.v[1][0][h] = tile_ldw<PAIR>(wb + off + h * 64);
        w.v[1][1][h] = tile_ldw<PAIR>(wb + 8 * K + off + h * 64);
    }
}

/* The warp tile's accumulators: zeroed, and moved through shared memory
 * ([2*NG*4][32] floats a warp, lane-major) for the split-K sums */
template <int NG>
static __device__ __forceinline__ void tile_acc_zero(float acc[2][NG][4])
{
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int j = 0; j < NG; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[s][j][e] = 0.f;
}

template <int NG>
static __device__ __forceinline__ void
tile_acc_put(float (*slot)[32], const float acc[2][NG][4], int lane)
{
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int j = 0; j < NG; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) slot[(s * NG + j) * 4 + e][lane] = acc[s][j][e];
}

template <int NG>
static __device__ __forceinline__ void
tile_acc_add(float acc[2][NG][4], const float (*slot)[32], int lane)
{
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int j = 0; j < NG; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[s][j][e] += slot[(s * NG + j) * 4 + e][lane];
}

/* One 128-block of K for the warp tile: the weights already in registers
 * (cur, in tile_load_w's order), the tokens' bytes and scales from xrow/xs
 * (L1/L2), promoted into acc with the block's weight scales wsa/wsb. */
template <int NG>
static __device__ __forceinline__ void
tile_kblock(const TileW &cur, const uint8_t *const xrow[NG], const float *const xs0[NG],
            const float *const xs1[NG], int ngroups, int kb, float wsa, float wsb,
            float acc[2][NG][4])
{
    const int t = threadIdx.x & 3;

#pragma unroll
    for (int j = 0; j < NG; j++) {
        if (j >= ngroups) {
            break;
        }
        const uint8_t *xp = xrow[j] + (size_t) kb * 128 + t * 16;
        uint4 xv[2];
        xv[0] = *(const uint4 *) xp;
        xv[1] = *(const uint4 *) (xp + 64);
        float tmp[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int s = 0; s < 2; s++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint4 r = cur.v[s][0][h], q = cur.v[s][1][h];
                tile_mma(tmp[s], r.x, q.x, r.y, q.y, xv[h].x, xv[h].y);
                tile_mma(tmp[s], r.z, q.z, r.w, q.w, xv[h].z, xv[h].w);
            }
        }
        const float x0 = xs0[j][kb], x1 = xs1[j][kb];
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const float ws = s == 0 ? wsa : wsb;
            acc[s][j][0] += tmp[s][0] * (ws * x0);
            acc[s][j][1] += tmp[s][1] * (ws * x1);
            acc[s][j][2] += tmp[s][2] * (ws * x0);
            acc[s][j][3] += tmp[s][3] * (ws * x1);
        }
    }
}

/*
 * wa, wb: row g of each set (the lane's row; row g+8 is 8*K further).
 * sa, sb: the sets' scale rows ([K/128] fp32, one 128-row block each).
 * xrow[j]: token row for column g of group j (K bytes, global or shared).
 * xs0/xs1[j]: scale rows [K/128] of the tokens in columns 2t and 2t+1.
 * ngroups: groups that hold at least one valid token (warp-uniform).
 * [kb0, kb1): the 128-blocks of K this warp covers (split-K callers).
 * cur: block kb0's weights, loaded by the caller (tile_load_w) as early as
 * it can: fp8_tile_run starts with them in flight.
 */
template <int NG, bool PAIR = false>
static __device__ __forceinline__ void
fp8_tile_run(TileW &cur, const uint8_t *wa, const uint8_t *wb, const float *sa,
             const float *sb, size_t K, const uint8_t *const xrow[NG],
             const float *const xs0[NG], const float *const xs1[NG], int ngroups,
             float acc[2][NG][4], int kb0, int kb1)
{
    const int lane = threadIdx.x & 31, t = lane & 3;

    tile_acc_zero<NG>(acc);
    TileW nxt;
    for (int kb = kb0; kb < kb1; kb++) {
        /* the next block's weights are in flight while this one computes */
        if (kb + 1 < kb1) {
            tile_load_w<PAIR>(nxt, wa, wb, K, kb + 1, t);
        }
        tile_kblock<NG>(cur, xrow, xs0, xs1, ngroups, kb, sa[kb], sb[kb], acc);
        if (kb + 1 < kb1) {
            cur = nxt;
        }
    }
}

template <int NG, bool PAIR = false>
static __device__ __forceinline__ void
fp8_tile(const uint8_t *wa, const uint8_t *wb, const float *sa, const float *sb,
         size_t K, const uint8_t *const xrow[NG], const float *const xs0[NG],
         const float *const xs1[NG], int ngroups, float acc[2][NG][4],
         int kb0, int kb1)
{
    TileW cur;
    if (kb0 < kb1) {
        tile_load_w<PAIR>(cur, wa, wb, K, kb0, threadIdx.x & 3);
    }
    fp8_tile_run<NG, PAIR>(cur, wa, wb, sa, sb, K, xrow, xs0, xs1, ngroups, acc, kb0, kb1);
}

#endif
