/*
 * MoE router: logits GEMV (bf16 weight) and the top-k selection, for the
 * routers of engine/model/router.h.
 *
 *   logits[t,e] = sum_d x[t,d] * Wg[e,d]                      (fp32 acc)
 *   noaux_tc (DeepSeek-V3): s = sigmoid(logits); sel = s + bias
 *   greedy / group_limited_greedy (DeepSeek-V2): s = softmax(logits); sel = s
 *   groups (n_group of E/n_group): score = sum of the group's 2 best sel
 *     (noaux_tc) or its best (group_limited_greedy); keep the topk_group best
 *     groups (ties: lower group); greedy: no groups
 *   idx[t,0..k) = the k best sel among kept experts, descending, ties lower id
 *   w[t,j] = s[idx_j] / (sum_j s[idx_j] + 1e-20) (if norm) * scale
 *
 * Layout:  x bf16 [T][D], Wg bf16 [E][D] (5.5 MB for Kimi-K2), logits fp32
 *          [T][E], bias fp32 [E], idx int32 / w fp32 [T][k].
 * Cost:    logits: E*D*2 weight bytes (floor 1.8 us at 3 TB/s) + 2*T*E*D
 *          FLOPs; a block owns one expert row and 8 tokens, so weights are
 *          streamed once per 8 tokens (L2 serves the repeats).  select: one
 *          warp per token, E*k comparisons, negligible.
 *          From KIMI_ROUTER_LT_ROWS tokens the logits run on cuBLASLt's bf16
 *          tensor cores instead, x split in two bf16 halves (fp32-accurate;
 *          the GEMV kernels re-read x per expert: 2 ms at 2048 tokens x 384
 *          experts on an H200).
 *          The router is a template parameter of the selection kernels
 *          (SOFTMAX): a runtime branch cost batch 1's fused route ~2 us.
 * Twin:    kimi_gemm_f32_bf16w() and kimi_moe_route() in engine/backend/cpu/ops.h.
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"
#include "moe_plan.cuh"
#include "tma.cuh"

#define ROUTER_TOK 8
#define ROUTER_WARPS 4

/* The rows a block owns, into L2: weights only, so before the grid wait. */
template <int ROWS>
static __device__ __forceinline__ void
router_prefetch(const uint16_t *__restrict__ w, int D, int e0)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int chunk = D / ROUTER_WARPS;
    if (lane < ROWS) {
        kimi_bulk_prefetch_l2(w + (size_t) (e0 + lane) * D + warp * chunk, chunk * 2);
    }
}

/* Block: ROWS expert rows from e0, ROUTER_TOK tokens from tok0; the 4 warps
 * split D and sum through shared memory, so each warp has all of its loads
 * in flight at once (a warp walking a whole 14 KB row alone is latency
 * bound).  ROWS = 4 for fp32 x: each x vector loaded from L1 feeds 4 weight
 * vectors (one row a block read 2x the weight bytes of fp32 x from L1 on
 * lm_head's 163840 rows and was L1-bound, 2.5x slower than bf16 x). */
template <typename X, int ROWS>
static __device__ __forceinline__ void
router_logits_block(const X *__restrict__ x, const uint16_t *__restrict__ w,
                    float *__restrict__ logits, int T, int D, int E, int e0, int tok0)
{
    __shared__ float part[ROUTER_WARPS][ROWS][ROUTER_TOK];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int chunk = D / ROUTER_WARPS;              /* D % 1024 == 0 */
    const int nt = min(ROUTER_TOK, T - tok0);
    float acc[ROWS][ROUTER_TOK];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int j = 0; j < ROUTER_TOK; j++) acc[r][j] = 0.f;
    const uint16_t *wr = w + (size_t) e0 * D + warp * chunk;
    const X *xr = x + (size_t) tok0 * D + warp * chunk;
#pragma unroll(ROWS == 1 ? 8 : 2)
    for (int d = lane * 8; d < chunk; d += 256) {
        float wf[ROWS][8];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const uint4 wv = kimi_ld_stream(wr + (size_t) r * D + d);
            const uint16_t *pw = (const uint16_t *) &wv;
#pragma unroll
            for (int i = 0; i < 8; i++) wf[r][i] = kimi_bf2f(pw[i]);
        }
#pragma unroll
        for (int j = 0; j < ROUTER_TOK; j++) {
            if (j < nt) {
                float xf[8];
                kimi_ld8(xr + (size_t) j * D + d, xf);
#pragma unroll
                for (int r = 0; r < ROWS; r++)
#pragma unroll
                    for (int i = 0; i < 8; i++) acc[r][j] += xf[i] * wf[r][i];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int j = 0; j < ROUTER_TOK; j++) {
            float v = kimi_warp_sum(acc[r][j]);
            if (lane == 0) {
                part[warp][r][j] = v;
            }
        }
    __syncthreads();
    if (threadIdx.x < ROWS * nt) {
        const int r = threadIdx.x / nt, j = threadIdx.x % nt;
        float v = 0.f;
#pragma unroll
        for (int q = 0; q < ROUTER_WARPS; q++) v += part[q][r][j];
        logits[(size_t) (tok0 + j) * E + e0 + r] = v;
    }
}

template <typename X, int ROWS>
static __global__ void __launch_bounds__(ROUTER_WARPS * 32)
router_logits_kernel(const X *__restrict__ x,          // [T, D]
                     const uint16_t *__restrict__ w,   // [E, D]
                     float *__restrict__ logits,       // [T, E]
                     int T, int D, int E)
{
    const int nrb = E / ROWS;
    const int e0 = (blockIdx.x % nrb) * ROWS, tok0 = (blockIdx.x / nrb) * ROUTER_TOK;
    router_prefetch<ROWS>(w, D, e0);
    KIMI_GRID_ENTRY();
    router_logits_block<X, ROWS>(x, w, logits, T, D, E, e0, tok0);
}

template <typename X>
static int
router_logits_launch(const X *x, const kimi_bf16_t *w, float *logits,
                       int T, int D, int E, cudaStream_t s, kimi_err_t *err)
{
    if (x == NULL || w == NULL || logits == NULL || T < 0 || D <= 0 || D % 1024 != 0 || E <= 0) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: T=%d D=%d E=%d (D %% 1024)", T, D, E);
    }
    if (((uintptr_t) x | (uintptr_t) w) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: x or w not 16-byte aligned");
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const int blocks = E * ((T + ROUTER_TOK - 1) / ROUTER_TOK);
    KIMI_LAUNCH(err, router_logits_kernel<X, 1>, blocks, ROUTER_WARPS * 32, 0, s, x, w, logits, T, D,
                E);
    return KIMI_OK;
}

extern "C" int
kimi_moe_router_logits(const kimi_bf16_t *x, const kimi_bf16_t *w, float *logits,
                       int T, int D, int E, cudaStream_t s, kimi_err_t *err)
{
    return router_logits_launch(x, w, logits, T, D, E, s, err);
}

#define ROUTER_ROWS 4

extern "C" int
kimi_moe_router_logits_f32(const float *x, const kimi_bf16_t *w, float *logits,
                           int T, int D, int E, cudaStream_t s, kimi_err_t *err)
{
    if (E <= 0 || E % ROUTER_ROWS != 0 || T <= 0) {
        return router_logits_launch(x, w, logits, T, D, E, s, err);
    }
    if (x == NULL || w == NULL || logits == NULL || D <= 0 || D % 1024 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: T=%d D=%d E=%d (D %% 1024)", T, D, E);
    }
    if (((uintptr_t) x | (uintptr_t) w) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits: x or w not 16-byte aligned");
    }
    const int blocks = (E / ROUTER_ROWS) * ((T + ROUTER_TOK - 1) / ROUTER_TOK);
    KIMI_LAUNCH(err, router_logits_kernel<float, ROUTER_ROWS>, blocks, ROUTER_WARPS * 32, 0, s, x, w, logits, T, D,
                E);
    return KIMI_OK;
}

/* ---- batches: the same logits on bf16 tensor cores ------------------------- */

/* x = hi + lo + O(2^-16 |x|) with hi = bf16(x), lo = bf16(x - hi): two bf16
 * GEMMs against the bf16 gate give fp32-accurate logits (each product is
 * exact in the fp32 accumulator), where one would round x to 8 bits. */
static __global__ void
router_split_kernel(const float *__restrict__ x, size_t n, uint16_t *__restrict__ hi,
                    uint16_t *__restrict__ lo)
{
    KIMI_GRID_ENTRY();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x) {
        const float v = x[i];
        const uint16_t h = kimi_f2bf(v);
        hi[i] = h;
        lo[i] = kimi_f2bf(v - __bfloat162float(__ushort_as_bfloat16(h)));
    }
}

static __global__ void
router_sum_kernel(const float *__restrict__ part, size_t n, float *__restrict__ logits)
{
    KIMI_GRID_ENTRY();
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x) {
        logits[i] = part[i] + part[n + i];
    }
}

extern "C" size_t
kimi_moe_router_lt_ws_bytes(int T, int D, int E)
{
    return (size_t) 2 * T * D * sizeof(uint16_t) + (size_t) 2 * T * E * sizeof(float);
}

extern "C" int
kimi_moe_router_logits_f32_lt(kimi_cublaslt_t *lt, const float *x, const kimi_bf16_t *w,
                              float *logits, int T, int D, int E, void *ws,
                              cudaStream_t s, kimi_err_t *err)
{
    if (lt == NULL || x == NULL || w == NULL || logits == NULL || ws == NULL || T <= 0 || D % 8 != 0
        || E % 4 != 0 || ((uintptr_t) ws & 15)) {
        return kimi_err_set(err, KIMI_EINVAL, "router_logits_lt: T=%d D=%d E=%d (D %% 8, E %% 4, ws aligned)",
                            T, D, E);
    }
    const size_t n = (size_t) T * D;
    uint16_t *hi = (uint16_t *) ws, *lo = hi + n;
    float *part = (float *) (lo + n);          /* [2T][E]: hi rows, then lo rows */
    const int blocks = (int) min((n + 255) / 256, (size_t) 4096);
    KIMI_LAUNCH(err, router_split_kernel, blocks, 256, 0, s, x, n, hi, lo);
    int rc = kimi_bf16_gemm_nt_f32_cublaslt(lt, hi, 2 * T, D, w, E, part, s, err);
    if (rc != KIMI_OK) {
        return rc;
    }
    const size_t ne = (size_t) T * E;
    KIMI_LAUNCH(err, router_sum_kernel, (int) min((ne + 255) / 256, (size_t) 4096), 256, 0, s, part,
                ne, logits);
    return KIMI_OK;
}

/* Order-preserving key of a selection score (larger score, larger key);
 * masked (-inf) and NaN scores get 0, below every real score, so they are
 * never chosen over a real one. */
static __device__ __forceinline__ uint32_t select_key(float v)
{
    const uint32_t bits = __float_as_uint(v);
    return v > -INFINITY ? bits ^ ((bits >> 31) ? 0xffffffffu : 0x80000000u) : 0u;
}

#define SELECT_NONE 0x7fffffff   /* the id of an empty place */

/* DeepSeek-V2's softmax over one token's E logits, as a warp holds them: PL
 * a lane, expert lane + stride * i in place i (stride 32: one warp holds
 * all; 128: the fused route's 4 warps each hold a quarter, and pass their
 * exps through shared memory so the sum is taken in the same order).
 * ex[i] = exp(logit - max); returns the sum, added lane by lane over the
 * experts e = lane mod 32 in ascending order, then across lanes by a fixed
 * tree: the same bits in both kernels. */
template <int PL, int STRIDE>
static __device__ __forceinline__ float
select_softmax(const float (&lg)[PL], int E, int lane, float (&ex)[PL])
{
    constexpr int stride = STRIDE;
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < PL; i++) {
        mx = lane + stride * i < E ? fmaxf(mx, lg[i]) : mx;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if constexpr (STRIDE > 32) {
        /* a max is the same in any order: the warps' maxima, then the max */
        __shared__ float mx_w[4];
        const int warp = (threadIdx.x >> 5) & 3;
        if (lane % 32 == 0) {
            mx_w[warp] = mx;
        }
        __syncthreads();
        mx = fmaxf(fmaxf(mx_w[0], mx_w[1]), fmaxf(mx_w[2], mx_w[3]));
    }
    float z = 0.f;
#pragma unroll
    for (int i = 0; i < PL; i++) {
        ex[i] = lane + stride * i < E ? expf(lg[i] - mx) : 0.f;
    }
    if constexpr (STRIDE > 32) {
        __shared__ float ex_all[1024];
#pragma unroll
        for (int i = 0; i < PL; i++) {
            if (lane + stride * i < E) {
                ex_all[lane + stride * i] = ex[i];
            }
        }
        __syncthreads();
        const int l = lane & 31;
        for (int e = l; e < E; e += 32) {
            z += ex_all[e];
        }
        __syncthreads();        /* ex_all and mx_w are the next token's */
    } else {
#pragma unroll
        for (int i = 0; i < PL; i++) {
            z += ex[i];
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        z += __shfl_xor_sync(0xffffffffu, z, o);
    }
    return z;
}

/* bk/bx[0] = the best of bk/bx[0 .. 2W): the larger key, on ties the
 * lower id; a tree, so no step waits on more than log2 before it. */
template <int W>
static __device__ __forceinline__ void select_tree(uint32_t *bk, int *bx)
{
#pragma unroll
    for (int i = 0; i < W; i++) {
        const bool hi = bk[i + W] > bk[i] || (bk[i + W] == bk[i] && bx[i + W] < bx[i]);
        bk[i] = hi ? bk[i + W] : bk[i];
        bx[i] = hi ? bx[i + W] : bx[i];
    }
    if constexpr (W > 1) {
        select_tree<W / 2>(bk, bx);
    }
}

/*
 * top_k rounds over the keys a warp holds, PL a lane (distinct ids;
 * SELECT_NONE with key 0 for an empty place; LANE_IS_ID: every id a lane
 * holds is its lane number mod 32, which finds the winner's lane without
 * a ballot).  A round takes the largest
 * key, ties to the lower id, and clears it: the lane's best by a tree (no
 * dependent chain), then two warp reductions.  Lane k ends with round k's
 * key, id and val (what the caller carries along: the sigmoid); a round
 * that finds only keys of 0 gives key 0, SELECT_NONE, 0.
 */
template <int PL, bool LANE_IS_ID>
static __device__ __forceinline__ void
select_rounds(uint32_t (&key)[PL], const int (&id)[PL], const float (&val)[PL], int top_k,
              uint32_t *out_key, int *out_id, float *out_val)
{
    const int lane = threadIdx.x & 31;
    for (int k = 0; k < top_k; k++) {
        uint32_t bk[PL];
        int      bx[PL];
#pragma unroll
        for (int i = 0; i < PL; i++) {
            bk[i] = key[i];
            bx[i] = id[i];
        }
        select_tree<PL / 2>(bk, bx);
        const uint32_t best = __reduce_max_sync(0xffffffffu, bk[0]);
        const int bi = (int) __reduce_min_sync(0xffffffffu, bk[0] == best && best != 0u
                                                            ? (unsigned) bx[0] : (unsigned) SELECT_NONE);
        float own = 0.f;     /* the chosen one's val, from its lane */
#pragma unroll
        for (int i = 0; i < PL; i++) {
            const bool chosen = id[i] == bi && bi != SELECT_NONE;   /* selects: arrays stay in registers */
            own = chosen ? val[i] : own;
            key[i] = chosen ? 0u : key[i];
        }
        int src = bi & 31;                  /* LANE_IS_ID: lane l holds ids = l mod 32 */
        if constexpr (!LANE_IS_ID) {
            const unsigned holder = __ballot_sync(0xffffffffu, bk[0] == best && bx[0] == bi);
            src = holder ? __ffs(holder) - 1 : 0;
        }
        const float vk = __shfl_sync(0xffffffffu, own, src);
        if (lane == k) {
            *out_key = bi != SELECT_NONE ? best : 0u;
            *out_id = bi;
            *out_val = bi != SELECT_NONE ? vk : 0.f;
        }
    }
}

/* Lane k < top_k holds round k's id and sigmoid: the weights, normalised in
 * round order (the CPU twin's order), to idx/w of one token.  An empty
 * round (cannot happen for a valid configuration) writes expert 0, weight 0. */
static __device__ __forceinline__ void
select_store(int id, float sg, int top_k, int norm, float scale, int32_t *__restrict__ idx,
             float *__restrict__ w)
{
    const int lane = threadIdx.x & 31;
    float wsum = 0.f;
    for (int k = 0; k < top_k; k++) {
        wsum += __shfl_sync(0xffffffffu, sg, k);
    }
    if (lane < top_k) {
        idx[lane] = id != SELECT_NONE ? id : 0;
        w[lane] = (norm ? sg / (wsum + 1e-20f) : sg) * scale;
    }
}

/* One warp per token (4 tokens per block); PL experts a lane, E <= 32 * PL
 * (PL just above E / 32: a single warp's instructions are its time at batch
 * 1, ~4 cycles each, so unused places cost as much as used ones). */
template <int PL, bool SOFTMAX>
static __global__ void __launch_bounds__(128)
router_select_kernel(const float *__restrict__ logits, const float *__restrict__ bias,
                     int T, int E, int top_k, int n_group, int topk_group, int norm,
                     float scale, int32_t *__restrict__ idx, float *__restrict__ wout)
{
    KIMI_GRID_ENTRY();
    /* only group-limited routing needs shared memory ([4][E] scores, then
     * [4][64] group marks) */
    extern __shared__ float select_smem[];
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * 4 + wi;
    if (t >= T) {
        return;
    }
    float *sel = select_smem + wi * E, *gsc = select_smem + 4 * E + wi * 64;
    /* The lane's experts (lane + 32 i) in registers, their loads issued
     * before the first is used. */
    float v[PL], b[PL], sg[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        v[i] = e < E ? logits[(size_t) t * E + e] : 0.f;
        b[i] = e < E && bias != NULL ? bias[e] : 0.f;
    }
    if constexpr (!SOFTMAX) {
#pragma unroll
        for (int i = 0; i < PL; i++) {
            sg[i] = 1.f / (1.f + expf(-v[i]));
            v[i] = lane + 32 * i < E ? sg[i] + b[i] : -INFINITY;
        }
    } else {
        const float z = select_softmax<PL, 32>(v, E, lane, sg);
#pragma unroll
        for (int i = 0; i < PL; i++) {
            sg[i] /= z;
            v[i] = lane + 32 * i < E ? sg[i] : -INFINITY;
        }
    }
    if (n_group > 1 && topk_group < n_group) {
        const int gs = E / n_group;
#pragma unroll
        for (int i = 0; i < PL; i++) {
            if (lane + 32 * i < E) {
                sel[lane + 32 * i] = v[i];
            }
        }
        __syncwarp();
        for (int gi = lane; gi < n_group; gi += 32) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int e = gi * gs; e < (gi + 1) * gs; e++) {
                const float x = sel[e];
                if (x > b1) {
                    b2 = b1;
                    b1 = x;
                } else if (x > b2) {
                    b2 = x;
                }
            }
            gsc[gi] = b1 + (gs > 1 && !SOFTMAX ? b2 : 0.f);
        }
        __syncwarp();
        /* keep topk_group groups: lane 0 marks the rest with -inf score */
        if (lane == 0) {
            unsigned long long keep = 0;
            for (int r = 0; r < topk_group; r++) {
                int bi = -1;
                float bv = -INFINITY;
                for (int gi = 0; gi < n_group; gi++) {
                    if (!((keep >> gi) & 1) && (bi < 0 || gsc[gi] > bv)) {
                        bv = gsc[gi];
                        bi = gi;
                    }
                }
                keep |= 1ull << bi;
            }
            for (int gi = 0; gi < n_group; gi++) {
                gsc[gi] = ((keep >> gi) & 1) ? 1.f : 0.f;
            }
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < PL; i++) {
            const int e = lane + 32 * i;
            if (e < E && gsc[e / gs] == 0.f) {
                v[i] = -INFINITY;
            }
        }
    }
    uint32_t key[PL];
    int      id[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        key[i] = select_key(v[i]);
        id[i] = lane + 32 * i < E ? lane + 32 * i : SELECT_NONE;
    }
    uint32_t mk = 0;
    int      mi = SELECT_NONE;
    float    mv = 0.f;
    select_rounds<PL, true>(key, id, sg, top_k, &mk, &mi, &mv);
    select_store(mi, mv, top_k, norm, scale, idx + (size_t) t * top_k, wout + (size_t) t * top_k);
}

extern "C" int
kimi_moe_router_select(const float *logits, const float *bias, int router, int T, int E,
                       int top_k, int n_group, int topk_group, int norm,
                       float scale, int32_t *idx, float *w, cudaStream_t s,
                       kimi_err_t *err)
{
    if (router == KIMI_ROUTER_GREEDY) {
        n_group = topk_group = 1;               /* every expert, one group */
    }
    if (router != KIMI_ROUTER_NOAUX_TC && router != KIMI_ROUTER_GREEDY
        && router != KIMI_ROUTER_GROUP_GREEDY) {
        return kimi_err_set(err, KIMI_EINVAL, "router_select: router %d", router);
    }
    if (logits == NULL || idx == NULL || w == NULL || T < 0 || E <= 0 || E > 1024
        || top_k <= 0 || top_k > 16 || top_k > E || n_group <= 0 || n_group > 64
        || E % n_group != 0 || topk_group <= 0 || topk_group > n_group
        || topk_group * (E / n_group) < top_k) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "router_select: T=%d E=%d top_k=%d n_group=%d topk_group=%d",
                            T, E, top_k, n_group, topk_group);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const size_t smem = n_group > 1 && topk_group < n_group ? (size_t) (4 * E + 4 * 64) * sizeof(float) : 0;
    const int blocks = (T + 3) / 4;
    const bool sm = router != KIMI_ROUTER_NOAUX_TC;     /* DeepSeek-V2's softmax */
    if (E <= 128) {
        KIMI_LAUNCH(err, sm ? router_select_kernel<4, true> : router_select_kernel<4, false>, blocks, 128, smem, s,
                    logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    } else if (E <= 256) {
        KIMI_LAUNCH(err, sm ? router_select_kernel<8, true> : router_select_kernel<8, false>, blocks, 128, smem, s,
                    logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    } else if (E <= 512) {
        KIMI_LAUNCH(err, sm ? router_select_kernel<16, true> : router_select_kernel<16, false>, blocks, 128, smem, s,
                    logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    } else {
        KIMI_LAUNCH(err, sm ? router_select_kernel<32, true> : router_select_kernel<32, false>, blocks, 128, smem, s,
                    logits, bias, T, E, top_k,
                    n_group, topk_group, norm, scale, idx, w);
    }
    return KIMI_OK;
}

/* ---- batch 1-4: the whole route in one launch ------------------------------ */

/*
 * One token's selection by the 4 warps of the fused route's last block:
 * each warp the top_k of its experts (lane + 32 (warp + 4 i)), then warp 0
 * the top_k of those 4 top_k candidates.  Ties go to the lower id at both
 * stages, so the choice, its order and the weights are router_select_kernel's
 * (no group limit), with a quarter of its rounds' work on each warp: one
 * warp's instruction count is what the select costs at batch 1.
 */
template <int PL, bool SOFTMAX>
static __device__ __forceinline__ void
route_select_token(const float *__restrict__ logits, const float *__restrict__ bias, int E,
                   int top_k, int norm, float scale, int32_t *__restrict__ idx,
                   float *__restrict__ w, int32_t *sidx)
{
    __shared__ uint32_t ck[ROUTER_WARPS * 16];
    __shared__ int      ci[ROUTER_WARPS * 16];
    __shared__ float    cv[ROUTER_WARPS * 16];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float    lg[PL], b[PL], sg[PL];
    uint32_t key[PL];
    int      id[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * (warp + ROUTER_WARPS * i);
        lg[i] = e < E ? __ldcg(logits + e) : 0.f;    /* other blocks wrote them: from L2 */
        b[i] = e < E && bias != NULL ? bias[e] : 0.f;
    }
    if constexpr (SOFTMAX) {
        const float z = select_softmax<PL, 32 * ROUTER_WARPS>(lg, E, threadIdx.x, sg);
#pragma unroll
        for (int i = 0; i < PL; i++) {
            sg[i] /= z;
        }
    }
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * (warp + ROUTER_WARPS * i);
        if constexpr (!SOFTMAX) {
            sg[i] = 1.f / (1.f + expf(-lg[i]));
        }
        key[i] = e < E ? select_key(SOFTMAX ? sg[i] : sg[i] + b[i]) : 0u;
        id[i] = e < E ? e : SELECT_NONE;
    }
    uint32_t mk = 0;
    int      mi = SELECT_NONE;
    float    mv = 0.f;
    select_rounds<PL, true>(key, id, sg, top_k, &mk, &mi, &mv);
    if (lane < top_k) {
        ck[warp * top_k + lane] = mk;
        ci[warp * top_k + lane] = mi;
        cv[warp * top_k + lane] = mv;
    }
    __syncthreads();
    if (warp == 0) {
        const int n = ROUTER_WARPS * top_k;
        uint32_t k2[2];
        int      i2[2];
        float    v2[2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int c = lane + 32 * j;
            k2[j] = c < n ? ck[c] : 0u;
            i2[j] = c < n && ck[c] != 0u ? ci[c] : SELECT_NONE;
            v2[j] = c < n ? cv[c] : 0.f;
        }
        select_rounds<2, false>(k2, i2, v2, top_k, &mk, &mi, &mv);
        select_store(mi, mv, top_k, norm, scale, idx, w);
        if (lane < top_k) {
            sidx[lane] = mi != SELECT_NONE ? mi : 0;
        }
    }
    __syncthreads();   /* the candidates are the next token's */
}

/*
 * Router logits (as router_logits_kernel, all T <= ROUTER_TOK tokens a
 * block), and in the last block to finish the selection
 * (route_select_token) and the plan (moe_plan_warp).  At batch 1 the three
 * launches these were cost ~14 us of a ~136 us MoE layer, mostly their
 * launch, ramp and tail.  The last block is found by a ticket
 * (ws.tickets[0], wrapped back to 0 by the last arrival).
 */
template <typename X, int ROWS, int PL, bool SOFTMAX>
static __global__ void __launch_bounds__(ROUTER_WARPS * 32)
moe_route_kernel(const X *__restrict__ x, const uint16_t *__restrict__ w,
                 const float *__restrict__ bias, int T, int D, int E, int top_k, int norm,
                 float scale, int shared, int max_slots, float *__restrict__ logits,
                 int32_t *__restrict__ idx, float *__restrict__ tw, kimi_moe_ws_t ws)
{
    __shared__ bool    last;
    __shared__ int32_t sidx[32];
    const int e0 = blockIdx.x * ROWS;
    router_prefetch<ROWS>(w, D, e0);
    KIMI_GRID_ENTRY();
    router_logits_block<X, ROWS>(x, w, logits, T, D, E, e0, 0);
    __threadfence();   /* this block's logits before its ticket */
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicInc(ws.tickets, gridDim.x - 1) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) {
        return;
    }
    __threadfence();
    for (int t = 0; t < T; t++) {
        route_select_token<PL, SOFTMAX>(logits + (size_t) t * E, bias, E, top_k, norm, scale,
                               idx + (size_t) t * top_k, tw + (size_t) t * top_k, sidx + t * top_k);
    }
    if (threadIdx.x < 32) {
        moe_plan_warp(sidx, T, top_k, E, shared, max_slots, ws);
    }
}

extern "C" int
kimi_moe_route_fused_fits(int router, int T, int top_k, int E, int n_group, int topk_group)
{
    return T >= 1 && T <= ROUTER_TOK && top_k >= 1 && top_k <= 16 && T * top_k <= 32
           && E >= top_k && E <= 1024 && E % ROUTER_ROWS == 0
           && (router == KIMI_ROUTER_NOAUX_TC || router == KIMI_ROUTER_GREEDY
               || router == KIMI_ROUTER_GROUP_GREEDY)
           && (router == KIMI_ROUTER_GREEDY || n_group <= 1 || topk_group >= n_group);
}

template <typename X>
static int
route_launch(const X *x, const kimi_bf16_t *w, const float *bias, int router, int T, int D, int E,
             int top_k, int n_group, int topk_group, int norm, float scale, int shared,
             float *logits, int32_t *idx, float *tw, const kimi_moe_ws_t *ws,
             cudaStream_t s, kimi_err_t *err)
{
    if (!kimi_moe_route_fused_fits(router, T, top_k, E, n_group, topk_group)) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_route: T=%d top_k=%d E=%d groups %d/%d do not fit "
                            "one launch (kimi_moe_route_fused_fits)", T, top_k, E, topk_group, n_group);
    }
    if (x == NULL || w == NULL || logits == NULL || idx == NULL || tw == NULL || ws == NULL
        || ws->tickets == NULL || D <= 0 || D % 1024 != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_route: D=%d (D %% 1024) or a NULL buffer", D);
    }
    if (((uintptr_t) x | (uintptr_t) w) & 15) {
        return kimi_err_set(err, KIMI_EINVAL, "moe_route: x or w not 16-byte aligned");
    }
    constexpr int ROWS = sizeof(X) == 4 ? ROUTER_ROWS : 1;
    const int ms = kimi_moe_max_slots(T, top_k, E, shared);
    const bool sm = router != KIMI_ROUTER_NOAUX_TC;     /* DeepSeek-V2's softmax */
#define ROUTE_LAUNCH(PL)                                                                        \
    KIMI_LAUNCH(err, sm ? moe_route_kernel<X, ROWS, PL, true> : moe_route_kernel<X, ROWS, PL, false>, \
                E / ROWS, ROUTER_WARPS * 32, 0, s, x, (const uint16_t *) w, bias, T, D, E, top_k,    \
                norm, scale, shared, ms, logits, idx, tw, *ws)
    if (E <= 2 * 32 * ROUTER_WARPS) {
        ROUTE_LAUNCH(2);
    } else if (E <= 4 * 32 * ROUTER_WARPS) {
        ROUTE_LAUNCH(4);
    } else {
        ROUTE_LAUNCH(8);
    }
#undef ROUTE_LAUNCH
    return KIMI_OK;
}

extern "C" int
kimi_moe_route_fused(const kimi_bf16_t *x, const kimi_bf16_t *w, const float *bias, int router, int T, int D,
               int E, int top_k, int n_group, int topk_group, int norm, float scale,
               int shared, float *logits, int32_t *idx, float *tw, const kimi_moe_ws_t *ws,
               cudaStream_t s, kimi_err_t *err)
{
    return route_launch((const uint16_t *) x, w, bias, router, T, D, E, top_k, n_group, topk_group, norm,
                        scale, shared, logits, idx, tw, ws, s, err);
}

extern "C" int
kimi_moe_route_fused_f32(const float *x, const kimi_bf16_t *w, const float *bias, int router, int T, int D,
                   int E, int top_k, int n_group, int topk_group, int norm, float scale,
                   int shared, float *logits, int32_t *idx, float *tw,
                   const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    return route_launch(x, w, bias, router, T, D, E, top_k, n_group, topk_group, norm, scale, shared,
                        logits, idx, tw, ws, s, err);
}
