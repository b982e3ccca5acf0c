/*
 * MLA prefill attention in the expanded (MHA) form, causal, bf16 in and out.
 *
 *   q [T][H][192], k [S][H][192], v [S][H][128] (k_nope|k_pe and v from kv_b,
 *   k_pe broadcast over heads by the caller); query t sits at position
 *   pos0 + t and sees keys s <= pos0 + t:
 *   o[t,h,:] = sum_s softmax_s(scale * q[t,h,:].k[s,h,:]) v[s,h,:]
 *
 * Layout:  row-major as above (ld = H*192 / H*128 per token); o [T][H][128].
 * Work:    grid (query tiles of 64, heads), query tiles longest-first (the
 *          causal diagonal makes late tiles the long ones: they start
 *          first, short ones fill the tail); 4 warps x 16 queries share
 *          64-key tiles of K and V in shared memory, two stages deep by
 *          cp.async (the next tile lands while this one is multiplied);
 *          two blocks an SM (86 KB of shared memory, 222 registers each).
 *          S = Q K^T and O += P V on mma.sync bf16 (fp32 accumulate), Q in
 *          registers, online softmax in registers (the S fragment is
 *          re-packed as the A fragment of P V, no smem trip); masks only on
 *          the tiles that cross the diagonal or the end of the keys.
 * Cost:    FLOPs ~ H * T * S_avg * (192 + 128) * 2 with causal halving;
 *          compute bound for prompts over a few hundred tokens: the floor is
 *          FLOPs / bf16 tensor peak (989 TFLOP/s dense).  mma.sync, not
 *          wgmma: expect FlashAttention-2's fraction of that peak at best.
 * Twin:    kimi_mla_prefill_naive() in engine/backend/cpu/ops.h.
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

#define PF_DQK     192
#define PF_DV      128
#ifndef PF_QT
#define PF_QT      64            /* queries a block, a warp per 16: two blocks an SM (128: one; 4-7 % slower) */
#endif
#define PF_KT      64            /* keys a tile */
#define PF_THREADS (PF_QT * 2)
#define PF_KLD     (PF_DQK + 8)  /* 400 B rows = 25 x 16 B: odd, conflict-free ldmatrix */
#define PF_VLD     (PF_DV + 8)   /* 272 B rows = 17 x 16 B */
#define PF_STAGE   (PF_KT * (PF_KLD + PF_VLD))   /* bf16 elements: K then V */
#define PF_SMEM    (2 * PF_STAGE * 2)
#define LOG2E      1.4426950408889634f

/* 16 bytes to shared memory, or zeros where !valid (src must still be a
 * mapped address: cp.async reads src_size = 0 bytes of it). */
static __device__ __forceinline__ void pf_cp_async16(void *smem, const void *gmem, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(kimi_smem_addr(smem)), "l"(gmem), "r"(valid ? 16 : 0));
}

/* Keys kt .. kt + 63 of head h into a stage (rows past S zero). */
static __device__ __forceinline__ void
pf_load_tile(uint16_t *st, const uint16_t *k, const uint16_t *v, int kt, int S, int h, size_t qld,
             size_t vld)
{
    uint16_t *ks = st, *vs = st + PF_KT * PF_KLD;
    for (int c = threadIdx.x; c < PF_KT * (PF_DQK / 8); c += PF_THREADS) {
        const int r = c / (PF_DQK / 8), cc = (c % (PF_DQK / 8)) * 8, row = min(kt + r, S - 1);
        pf_cp_async16(&ks[r * PF_KLD + cc], k + (size_t) row * qld + (size_t) h * PF_DQK + cc, kt + r < S);
    }
    for (int c = threadIdx.x; c < PF_KT * (PF_DV / 8); c += PF_THREADS) {
        const int r = c / (PF_DV / 8), cc = (c % (PF_DV / 8)) * 8, row = min(kt + r, S - 1);
        pf_cp_async16(&vs[r * PF_VLD + cc], v + (size_t) row * vld + (size_t) h * PF_DV + cc, kt + r < S);
    }
}

static __device__ __forceinline__ void pf_ldsm_x4(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(kimi_smem_addr(p)));
}

static __device__ __forceinline__ void pf_ldsm_x4_t(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(kimi_smem_addr(p)));
}

static __device__ __forceinline__ uint32_t pack_bf16(float a, float b)
{
    return (uint32_t) kimi_f2bf(a) | (uint32_t) kimi_f2bf(b) << 16;
}

static __global__ void __launch_bounds__(PF_THREADS, 1)
mla_prefill_kernel(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
                   const uint16_t *__restrict__ v, int T, int S, int pos0, int H,
                   float scale2, uint16_t *__restrict__ o)
{
    KIMI_GRID_ENTRY();
    extern __shared__ __align__(16) uint16_t pf_smem[];   /* 2 stages of [64 keys][192] K, [64][128] V */
    const int h = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int qb = (gridDim.x - 1 - blockIdx.x) * PF_QT, q0 = qb + warp * 16;
    const size_t qld = (size_t) H * PF_DQK, vld = (size_t) H * PF_DV;
    const int kend = min(S, pos0 + min(qb + PF_QT, T));   /* keys this block needs */

    pf_load_tile(pf_smem, k, v, 0, S, h, qld, vld);
    kimi_cp_async_commit();

    /* Q fragments for rows q0+g, q0+g+8 (clamped; never stored if >= T) */
    uint32_t qa[PF_DQK / 16][4];
    {
        const uint16_t *r0 = q + (size_t) min(q0 + g, T - 1) * qld + (size_t) h * PF_DQK;
        const uint16_t *r1 = q + (size_t) min(q0 + g + 8, T - 1) * qld + (size_t) h * PF_DQK;
#pragma unroll
        for (int kk = 0; kk < PF_DQK / 16; kk++) {
            qa[kk][0] = *(const uint32_t *) (r0 + kk * 16 + 2 * t);
            qa[kk][1] = *(const uint32_t *) (r1 + kk * 16 + 2 * t);
            qa[kk][2] = *(const uint32_t *) (r0 + kk * 16 + 8 + 2 * t);
            qa[kk][3] = *(const uint32_t *) (r1 + kk * 16 + 8 + 2 * t);
        }
    }
    float oacc[PF_DV / 8][4];
#pragma unroll
    for (int j = 0; j < PF_DV / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) oacc[j][e] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const int lim0 = pos0 + q0 + g, lim1 = lim0 + 8;      /* last key each row sees */
    const int mi = lane >> 3, mr = lane & 7;

    for (int kt = 0, it = 0; kt < kend; kt += PF_KT, it++) {
        if (kt + PF_KT < kend) {   /* the next tile into the other stage (freed at the end of the last) */
            pf_load_tile(pf_smem + ((it + 1) & 1) * PF_STAGE, k, v, kt + PF_KT, S, h, qld, vld);
            kimi_cp_async_commit();
            kimi_cp_async_wait<1>();
        } else {
            kimi_cp_async_wait<0>();
        }
        __syncthreads();   /* this tile landed for every thread */
        const uint16_t *ks = pf_smem + (it & 1) * PF_STAGE, *vs = ks + PF_KT * PF_KLD;
        if (q0 < T && kt <= pos0 + q0 + 15) {   /* else this warp's queries are done or all masked here */
            float sc[PF_KT / 8][4];   /* S[16 q][64 keys]: 8 n-tiles */
#pragma unroll
            for (int n = 0; n < PF_KT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[n][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < PF_DQK / 16; kk++) {
#pragma unroll
                for (int np = 0; np < PF_KT / 16; np++) {
                    uint32_t bb[4];
                    pf_ldsm_x4(bb, &ks[(np * 16 + (mi >> 1) * 8 + mr) * PF_KLD + kk * 16 + (mi & 1) * 8]);
                    kimi_mma_bf16(sc[2 * np], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], bb[0], bb[1]);
                    kimi_mma_bf16(sc[2 * np + 1], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], bb[2], bb[3]);
                }
            }
            /* scale (log2 units), masked where the tile crosses the diagonal
             * or the end of the keys; row max over the 4 lanes of a row */
            const bool edge = kt + PF_KT - 1 > pos0 + q0 || kt + PF_KT > S;
            float mx[2] = {m[0], m[1]};
#pragma unroll
            for (int n = 0; n < PF_KT / 8; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kt + n * 8 + 2 * t + (e & 1);
                    const int lim = e < 2 ? lim0 : lim1;
                    const float val = !edge || (key <= lim && key < S) ? sc[n][e] * scale2 : -INFINITY;
                    sc[n][e] = val;
                    mx[e >> 1] = fmaxf(mx[e >> 1], val);
                }
            }
            float al[2], mu[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                /* a row with nothing visible yet keeps m = -inf: use 0 so that
                 * exp2(-inf - 0) = 0 instead of NaN */
                mu[r] = mx[r] == -INFINITY ? 0.f : mx[r];
                al[r] = exp2f(m[r] - mu[r]);
                m[r] = mx[r];
            }
            uint32_t pa[PF_KT / 16][4];   /* P as A fragments of the four k16 steps */
            float rs[2] = {0.f, 0.f};
#pragma unroll
            for (int n = 0; n < PF_KT / 8; n++) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    p[e] = kimi_bf2f(kimi_f2bf(exp2f(sc[n][e] - mu[e >> 1])));
                    rs[e >> 1] += p[e];
                }
                /* n-tile n covers keys 8n..8n+7: k-step n/2, low (even n) or high half */
                pa[n >> 1][(n & 1) * 2 + 0] = pack_bf16(p[0], p[1]);
                pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(p[2], p[3]);
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
                rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
                l[r] = l[r] * al[r] + rs[r];
            }
#pragma unroll
            for (int j = 0; j < PF_DV / 8; j++) {
                oacc[j][0] *= al[0];
                oacc[j][1] *= al[0];
                oacc[j][2] *= al[1];
                oacc[j][3] *= al[1];
            }
#pragma unroll
            for (int ks2 = 0; ks2 < PF_KT / 16; ks2++) {
#pragma unroll
                for (int jj = 0; jj < PF_DV / 16; jj++) {
                    uint32_t bv[4];
                    pf_ldsm_x4_t(bv, &vs[(ks2 * 16 + (mi & 1) * 8 + mr) * PF_VLD + jj * 16 + (mi >> 1) * 8]);
                    /* A: a0 rows g k 0-7, a1 rows g+8 k 0-7, a2 rows g k 8-15, a3 rows g+8 k 8-15 */
                    kimi_mma_bf16(oacc[2 * jj], pa[ks2][0], pa[ks2][1], pa[ks2][2], pa[ks2][3], bv[0], bv[1]);
                    kimi_mma_bf16(oacc[2 * jj + 1], pa[ks2][0], pa[ks2][1], pa[ks2][2], pa[ks2][3], bv[2], bv[3]);
                }
            }
        }
        __syncthreads();   /* every warp is done with this stage: the next load may overwrite it */
    }
    if (q0 >= T) {
        return;
    }
    const float inv0 = l[0] > 0.f ? 1.f / l[0] : 0.f, inv1 = l[1] > 0.f ? 1.f / l[1] : 0.f;
#pragma unroll
    for (int j = 0; j < PF_DV / 8; j++) {
        const int col = j * 8 + 2 * t;
        if (q0 + g < T) {
            *(uint32_t *) (o + ((size_t) (q0 + g) * H + h) * PF_DV + col) =
                pack_bf16(oacc[j][0] * inv0, oacc[j][1] * inv0);
        }
        if (q0 + g + 8 < T) {
            *(uint32_t *) (o + ((size_t) (q0 + g + 8) * H + h) * PF_DV + col) =
                pack_bf16(oacc[j][2] * inv1, oacc[j][3] * inv1);
        }
    }
}

extern "C" int
kimi_mla_prefill(const kimi_bf16_t *q, const kimi_bf16_t *k, const kimi_bf16_t *v,
                 int T, int S, int pos0, int H, float scale, kimi_bf16_t *o,
                 cudaStream_t s, kimi_err_t *err)
{
    if (q == NULL || k == NULL || v == NULL || o == NULL || T < 0 || S <= 0 || pos0 < 0
        || H <= 0 || S > pos0 + T) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_prefill: T=%d S=%d pos0=%d H=%d (S <= pos0+T)",
                            T, S, pos0, H);
    }
    if (((uintptr_t) q | (uintptr_t) k | (uintptr_t) v | (uintptr_t) o) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_prefill: buffers not 16-byte aligned");
    }
    if (T == 0) {
        return KIMI_OK;
    }
    KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_prefill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, PF_SMEM),
                  err);
    dim3 grid((T + PF_QT - 1) / PF_QT, H);
    KIMI_LAUNCH(err, mla_prefill_kernel, grid, PF_THREADS, PF_SMEM, s, q, k, v, T, S, pos0, H, scale * LOG2E, o);
    return KIMI_OK;
}
