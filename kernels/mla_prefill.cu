/*
 * MLA prefill attention in the expanded (MHA) form, causal.
 *
 *   One sequence's T queries against S keys of its context, per head h:
 *   q[t,h] = [q_nope 128 | q_pe 64] (fp32, the engine's q_b output after
 *   rope), k[s,h] = [k_nope 128 | k_pe 64] and v[s,h] (128) from kv_b's
 *   bf16 output [k_nope | v] per head and the latent row's k_pe, one for
 *   all heads.  Query t sees keys s <= pos0 + t:
 *   o[t,h,:] = sum_s softmax_s(scale * q[t,h,:].k[s,h,:]) v[s,h,:]
 *   The keys may come in chunks (a context longer than the caller's
 *   expansion buffer): each launch after the first merges its partial
 *   softmax into o through lse (log2 units), so o is the same softmax over
 *   every chunk's keys.
 *
 * Layout:  row strides ld_q / ld_kv / ld_pe / ld_o (elements); heads 192
 *          (q), 256 (kv), 128 (o) apart; lse [T][H] fp32.
 * Work:    grid (query tiles of 64 PW_WG, heads), query tiles longest-first
 *          (the causal diagonal makes late tiles the long ones: they start
 *          first, short ones fill the tail).  Each warpgroup owns 64
 *          queries; the block's groups share 64-key tiles of K and V, two
 *          stages deep by cp.async (the next tile lands while this one is
 *          multiplied).  Q (rounded to bf16 on its way in), K and V sit in
 *          shared memory in the 128-byte swizzled layout (wgmma.cuh), Q and
 *          K as K-major operands, V as the N-major B of P V.  S[64 q x 64
 *          keys] = Q K^T is 12 m64n64k16 wgmma steps from shared memory;
 *          the online softmax runs on the accumulators, and P, packed to
 *          bf16 in registers, is the A operand of the 4 m64n128k16 steps of
 *          O += P V; S of the next tile is issued with P V of this one, so
 *          the softmax runs under P V (three stages).  Masks only on the
 *          tiles that cross the diagonal or the end of the keys.
 * Cost:    FLOPs ~ H * T * S_avg * (192 + 128) * 2 with causal halving;
 *          compute bound for prompts over a few hundred tokens: the floor is
 *          FLOPs / bf16 tensor peak (989 TFLOP/s dense).  No ping-pong
 *          between groups and no producer warp yet: ~190-210 TFLOP/s at 4K
 *          on an H200 (kernels/NOTES.md).
 * Twin:    kimi_mla_prefill_naive() in engine/backend/cpu/ops.h.
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"
#include "wgmma.cuh"

#define PF_DQK     192
#define PF_DV      128
#define PF_KT      64                         /* keys a tile */
#define LOG2E      1.4426950408889634f

/* 16 bytes to shared memory, or zeros where !valid (src must still be a
 * mapped address: cp.async reads src_size = 0 bytes of it). */
static __device__ __forceinline__ void pf_cp_async16(void *smem, const void *gmem, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(kimi_smem_addr(smem)), "l"(gmem), "r"(valid ? 16 : 0));
}

static __device__ __forceinline__ uint32_t pack_bf16(float a, float b)
{
    return (uint32_t) kimi_f2bf(a) | (uint32_t) kimi_f2bf(b) << 16;
}

#ifndef PW_WG
#define PW_WG      3                          /* warpgroups (64 queries each) a block: 3 beat 2 by 10 % at 4K */
#endif
#define PW_QT      (64 * PW_WG)
#define PW_THREADS (128 * PW_WG)
#define PW_BLK     8192                       /* one swizzled [64 rows][64 bf16] block */
#define PW_Q_B     (3 * PW_BLK)               /* a warpgroup's Q: 192 dims */
#define PW_OFF_ST  (PW_WG * PW_Q_B)
#define PW_STAGE_B (5 * PW_BLK)               /* K [64][192] then V [64][128] */
#define PW_STAGES  3                          /* two tiles a group holds + one loading */
#define PW_SMEM    (PW_OFF_ST + PW_STAGES * PW_STAGE_B + 1024)

/* rows of 8-bf16 chunks from global into swizzled 64-column blocks */
static __device__ __forceinline__ void
pw_load_rows(uint8_t *dst, const uint16_t *src, size_t ld, int row0, int n_rows, int row_lim, int width)
{
    const int cpr = width / 8;   /* chunks a row */
    for (int c = threadIdx.x; c < n_rows * cpr; c += PW_THREADS) {
        const int r = c / cpr, cc = c % cpr, row = min(row0 + r, row_lim - 1);
        pf_cp_async16(dst + (cc >> 3) * PW_BLK + wg_swz128(r, (cc & 7) * 8),
                      src + (size_t) row * ld + cc * 8, row0 + r < row_lim);
    }
}

/* 64 query rows of one head from fp32, rounded to bf16, into the same
 * layout (plain stores: the fence before the first wgmma covers them) */
static __device__ __forceinline__ void
pw_load_q(uint8_t *dst, const float *src, size_t ld, int row0, int row_lim)
{
    const int cpr = PF_DQK / 8;
    for (int c = threadIdx.x; c < 64 * cpr; c += PW_THREADS) {
        const int r = c / cpr, cc = c % cpr;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row0 + r < row_lim) {
            const float4 *p = (const float4 *) (src + (size_t) (row0 + r) * ld + cc * 8);
            const float4 a = p[0], b = p[1];
            v = make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(b.x, b.y),
                           pack_bf16(b.z, b.w));
        }
        *(uint4 *) (dst + (cc >> 3) * PW_BLK + wg_swz128(r, (cc & 7) * 8)) = v;
    }
}

/* One stage's key tile: K = [k_nope | k_pe] (blocks 0-2), V (blocks 3-4) */
static __device__ __forceinline__ void
pw_load_kv(uint8_t *dst, const uint16_t *kvh, size_t ld_kv, const uint16_t *kpe, size_t ld_pe,
           int row0, int S)
{
    pw_load_rows(dst, kvh, ld_kv, row0, PF_KT, S, 128);
    pw_load_rows(dst + 2 * PW_BLK, kpe, ld_pe, row0, PF_KT, S, PF_DQK - 128);
    pw_load_rows(dst + 3 * PW_BLK, kvh + 128, ld_kv, row0, PF_KT, S, PF_DV);
}


/* One key tile's online softmax on a group's S accumulators (rows r0 =
 * 16 w4 + g and r0 + 8 of its 64 queries; columns keys kt + 8 n + 2 t, + 1):
 * masked where the tile crosses the diagonal (lim0/lim1: the last key each
 * row sees) or the end of the keys, in log2 units; updates m and l, returns
 * the rescale of O in al and P, rounded to bf16, as the A fragments of the
 * four k16 steps of P V. */
static __device__ __forceinline__ float
pw_masked(const float (&s)[32], int n, int e, int kt, int S, bool edge, int lim0, int lim1, int t,
          float scale2)
{
    const int key = kt + n * 8 + 2 * t + (e & 1);
    const int lim = e < 2 ? lim0 : lim1;

    return !edge || (key <= lim && key < S) ? s[4 * n + e] * scale2 : -INFINITY;
}

/* (s is only read: in the pipelined kernel it is a wgmma accumulator whose
 * stage is still open, and writing it would serialize the wgmmas) */
static __device__ __forceinline__ void
pw_softmax(const float (&s)[32], int kt, int S, int first_lim, int lim0, int lim1, int t, float scale2,
           float (&m)[2], float (&l)[2], float (&al)[2], uint32_t (&pa)[PF_KT / 16][4])
{
    const bool edge = kt + PF_KT - 1 > first_lim || kt + PF_KT > S;
    float mx[2] = {m[0], m[1]}, mu[2], rs[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < PF_KT / 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            mx[e >> 1] = fmaxf(mx[e >> 1], pw_masked(s, n, e, kt, S, edge, lim0, lim1, t, scale2));
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        mu[r] = mx[r] == -INFINITY ? 0.f : mx[r];   /* nothing visible yet: exp2(-inf) = 0, not NaN */
        al[r] = exp2f(m[r] - mu[r]);
        m[r] = mx[r];
    }
#pragma unroll
    for (int n = 0; n < PF_KT / 8; n++) {
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            p[e] = kimi_bf2f(kimi_f2bf(exp2f(pw_masked(s, n, e, kt, S, edge, lim0, lim1, t, scale2)
                                             - mu[e >> 1])));
            rs[e >> 1] += p[e];
        }
        pa[n >> 1][(n & 1) * 2 + 0] = pack_bf16(p[0], p[1]);
        pa[n >> 1][(n & 1) * 2 + 1] = pack_bf16(p[2], p[3]);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
        rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
        l[r] = l[r] * al[r] + rs[r];
    }
}


/* O rows r0, r0 + 8 times their rescale, then ready for the next wgmma */
static __device__ __forceinline__ void
pw_rescale(float (&oacc)[64], const float (&al)[2])
{
#pragma unroll
    for (int j = 0; j < PF_DV / 8; j++) {
        oacc[4 * j] *= al[0];
        oacc[4 * j + 1] *= al[0];
        oacc[4 * j + 2] *= al[1];
        oacc[4 * j + 3] *= al[1];
    }
    wg_fence_regs(oacc);
}


/* S = Q K^T of one tile: 12 m64n64k16 steps from shared memory (committed) */
static __device__ __forceinline__ void
pw_s_issue(float (&s)[32], uint32_t sq, uint32_t sk)
{
    wg_arrive();
#pragma unroll
    for (int kk = 0; kk < PF_DQK / 16; kk++) {
        const uint32_t koff = (kk >> 2) * PW_BLK + (kk & 3) * 32;
        wgmma_m64n64k16_bf16<0>(s, wg_desc(sq + koff, 16, 1024), wg_desc(sk + koff, 16, 1024), kk > 0);
    }
    wg_commit();
}


/* O += P V of one tile: 4 m64n128k16 steps, P from registers (committed) */
static __device__ __forceinline__ void
pw_pv_issue(float (&oacc)[64], const uint32_t (&pa)[PF_KT / 16][4], uint32_t sv)
{
    wg_arrive();
#pragma unroll
    for (int ks = 0; ks < PF_KT / 16; ks++) {
        wgmma_m64n128k16_bf16_rs<1>(oacc, pa[ks][0], pa[ks][1], pa[ks][2], pa[ks][3],
                                    wg_desc(sv + ks * 2048, PW_BLK, 1024));
    }
    wg_commit();
}


/* O / l of rows r0, r0 + 8 to o (fp32) with their lse (log2 units); with
 * merge, the softmax of the keys before (o and lse as stored) joins in */
static __device__ __forceinline__ void
pw_store(float *o, size_t ld_o, float *lse, bool merge, const float (&oacc)[64],
         const float (&m)[2], const float (&l)[2], int qr0, int T, int H, int h, int t)
{
    float lse_old[2] = {-INFINITY, -INFINITY};
    /* both rows' old lse are read before the quad's lane 0 writes either */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (merge && qr0 + 8 * r < T) {
            lse_old[r] = lse[(size_t) (qr0 + 8 * r) * H + h];
        }
    }
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int qr = qr0 + 8 * r;
        if (qr >= T) {
            continue;
        }
        float *orow = o + (size_t) qr * ld_o + (size_t) h * PF_DV;
        const float lse_new = l[r] > 0.f ? m[r] + log2f(l[r]) : -INFINITY;
        float w_new = l[r] > 0.f ? 1.f / l[r] : 0.f, w_old = 0.f, lse_out = lse_new;
        if (merge) {
            const float mx = fmaxf(lse_old[r], lse_new);
            if (mx > -INFINITY) {
                const float a = exp2f(lse_old[r] - mx), b = exp2f(lse_new - mx);
                w_old = a / (a + b);
                w_new *= b / (a + b);
                lse_out = mx + log2f(a + b);
            }
        }
#pragma unroll
        for (int j = 0; j < PF_DV / 8; j++) {
            float2 *p = (float2 *) (orow + j * 8 + 2 * t);
            float2 v = make_float2(oacc[4 * j + 2 * r] * w_new, oacc[4 * j + 2 * r + 1] * w_new);
            if (merge) {
                const float2 old = *p;
                v.x += old.x * w_old;
                v.y += old.y * w_old;
            }
            *p = v;
        }
        if (lse != NULL && t == 0) {
            lse[(size_t) qr * H + h] = lse_out;
        }
    }
}


/*
 * Each group's tensor work overlaps its softmax: S of tile i + 1 and P V of
 * tile i are issued together and the softmax of i + 1 runs while P V of i is
 * on the tensor cores (FlashAttention-3's intra-warpgroup overlap), so a
 * group holds two tiles: three stages, the third loading.  P is
 * double-buffered in registers (P V reads its A operand until it
 * completes).  Block barriers: A (everyone done with tile i - 1, its stage
 * may reload) and B (tile i + 1 landed for every thread).
 */
static __global__ void __launch_bounds__(PW_THREADS, 1)
mla_prefill_wg_kernel(const float *__restrict__ q, int ld_q, const uint16_t *__restrict__ kv,
                      int ld_kv, const uint16_t *__restrict__ kpe, int ld_pe, int T, int S,
                      int pos0, int H, float scale2, float *__restrict__ o, int ld_o,
                      float *__restrict__ lse, int merge)
{
    KIMI_GRID_ENTRY();
    extern __shared__ __align__(1024) uint8_t pw_smem_raw[];
    uint8_t *sm = pw_smem_raw + ((1024 - (kimi_smem_addr(pw_smem_raw) & 1023)) & 1023);
    const int h = blockIdx.y;
    const int wg = threadIdx.x >> 7, w4 = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int qb = (gridDim.x - 1 - blockIdx.x) * PW_QT, q0 = qb + wg * 64;
    const int kend = min(S, pos0 + min(qb + PW_QT, T));   /* keys this block needs */
    const int nkt = (kend + PF_KT - 1) / PF_KT;
    /* tiles this group needs: up to its last query's last key */
    const int ntw = q0 < T ? min(nkt, (pos0 + q0 + 63) / PF_KT + 1) : 0;
    const uint16_t *kvh = kv + (size_t) h * (128 + PF_DV);

    /* tile 0 (one cp.async group), tile 1 (another), Q of every group */
    pw_load_kv(sm + PW_OFF_ST, kvh, ld_kv, kpe, ld_pe, 0, S);
    kimi_cp_async_commit();
    if (nkt > 1) {
        pw_load_kv(sm + PW_OFF_ST + PW_STAGE_B, kvh, ld_kv, kpe, ld_pe, PF_KT, S);
    }
    kimi_cp_async_commit();
    for (int w = 0; w < PW_WG; w++) {
        pw_load_q(sm + w * PW_Q_B, q + (size_t) h * PF_DQK, ld_q, qb + 64 * w, T);
    }
    kimi_cp_async_wait<1>();
    wg_fence_proxy();
    __syncthreads();   /* Q and tile 0 landed */

    float oacc[64], s[32], al[2];
    uint32_t pa[PF_KT / 16][4], pn[PF_KT / 16][4];
#pragma unroll
    for (int i = 0; i < 64; i++) oacc[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const int r0 = 16 * w4 + g;                            /* this thread's rows: r0, r0 + 8 */
    const int lim0 = pos0 + q0 + r0, lim1 = lim0 + 8;      /* last key each row sees */
    const uint32_t sq = kimi_smem_addr(sm + wg * PW_Q_B);
    const uint32_t st0 = kimi_smem_addr(sm + PW_OFF_ST);

    if (ntw > 0) {   /* S and P of tile 0 */
        pw_s_issue(s, sq, st0);
        wg_wait<0>();
        wg_fence_regs(s);
        pw_softmax(s, 0, S, pos0 + q0, lim0, lim1, t, scale2, m, l, al, pa);
    }

    /* tile it: P V of it with pcur, S and P of it + 1 into pnext; the loop
     * runs two tiles a pass so the P buffers swap roles without a copy (a
     * copy into the buffer P V reads serializes the wgmmas) */
    auto step = [&](int it, uint32_t (&pcur)[PF_KT / 16][4], uint32_t (&pnext)[PF_KT / 16][4]) {
        __syncthreads();   /* A: every group is done with tile it - 1 */
        if (it + 2 < nkt) {
            uint8_t *nx = sm + PW_OFF_ST + ((it + 2) % 3) * PW_STAGE_B;
            pw_load_kv(nx, kvh, ld_kv, kpe, ld_pe, (it + 2) * PF_KT, S);
        }
        kimi_cp_async_commit();
        kimi_cp_async_wait<1>();
        wg_fence_proxy();
        __syncthreads();   /* B: tile it + 1 landed for every thread */
        if (it < ntw) {
            const uint32_t sv = st0 + (it % 3) * PW_STAGE_B + 3 * PW_BLK;
            if (it + 1 < ntw) {
                pw_s_issue(s, sq, st0 + ((it + 1) % 3) * PW_STAGE_B);   /* S(it + 1) first: it completes first */
                pw_pv_issue(oacc, pcur, sv);
                wg_wait<1>();
                wg_fence_regs(s);
                pw_softmax(s, (it + 1) * PF_KT, S, pos0 + q0, lim0, lim1, t, scale2, m, l, al, pnext);
                wg_wait<0>();
                wg_fence_regs(oacc);
                wg_fence_regs(pcur);
                pw_rescale(oacc, al);
            } else {
                pw_pv_issue(oacc, pcur, sv);
                wg_wait<0>();
                wg_fence_regs(oacc);
                wg_fence_regs(pcur);
            }
        }
    };

    for (int it = 0; it < nkt; it += 2) {
        step(it, pa, pn);
        if (it + 1 < nkt) {
            step(it + 1, pn, pa);
        }
    }
    if (q0 < T) {
        pw_store(o, (size_t) ld_o, lse, merge != 0, oacc, m, l, q0 + r0, T, H, h, t);
    }
}


extern "C" int
kimi_mla_prefill(const float *q, int ld_q, const kimi_bf16_t *kv, int ld_kv,
                 const kimi_bf16_t *kpe, int ld_pe, int T, int S, int pos0, int H,
                 float scale, float *o, int ld_o, float *lse, int merge, cudaStream_t s,
                 kimi_err_t *err)
{
    if (q == NULL || kv == NULL || kpe == NULL || o == NULL || T < 0 || S <= 0 || pos0 < 0
        || H <= 0 || S > pos0 + T || (merge && lse == NULL)) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_prefill: T=%d S=%d pos0=%d H=%d merge=%d "
                            "(S <= pos0+T; merging needs lse)", T, S, pos0, H, merge);
    }
    if (ld_q < H * PF_DQK || ld_kv < H * (128 + PF_DV) || ld_pe < PF_DQK - 128
        || ld_o < H * PF_DV) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_prefill: row strides q %d kv %d pe %d o %d "
                            "under H=%d heads' widths", ld_q, ld_kv, ld_pe, ld_o, H);
    }
    if (((uintptr_t) q | (uintptr_t) kv | (uintptr_t) kpe | (uintptr_t) o) & 15
        || ld_q % 4 != 0 || ld_kv % 8 != 0 || ld_pe % 8 != 0 || ld_o % 2 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "mla_prefill: buffers not 16-byte aligned or "
                            "row strides not multiples of 16 bytes (o: 8)");
    }
    if (T == 0) {
        return KIMI_OK;
    }
    KIMI_CUDA_TRY(cudaFuncSetAttribute(mla_prefill_wg_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       PW_SMEM), err);
    dim3 grid((T + PW_QT - 1) / PW_QT, H);
    KIMI_LAUNCH(err, mla_prefill_wg_kernel, grid, PW_THREADS, PW_SMEM, s, q, ld_q, kv, ld_kv,
                kpe, ld_pe, T, S, pos0, H, scale * LOG2E, o, ld_o, lse, merge);
    return KIMI_OK;
}
