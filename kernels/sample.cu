/*
 * Sampling on the device: greedy, and temperature (+ min_p) alone; and
 * the sparse logit edits (logit_bias, penalties, min_tokens) that let rows
 * using those be drawn here too, undone after the draw.
 *
 *   out[r] = argmax_v logits[r, v]      (exact ties: the lower token id)
 *   lp[r]  = logits[r, out[r]] - log sum_v exp(logits[r, v])   (optional:
 *            the greedy token's logprob; -inf entries skipped)
 *
 * Layout:  logits fp32 [rows, ld], vocab <= ld.  A cluster of 8 blocks per
 *          row, each a slice, reduced in the block, then across the cluster.
 * Cost:    reads 4*vocab bytes per row (655 KB for Kimi-K2's 163840).
 *          Temperature: two passes over the row (max, then weights),
 *          reread from L2.
 * Twin:    the host greedy sampler (argmax with the same tie rule) and
 *          kimi_sample_logsumexp (double there: the two agree to ~1e-6);
 *          the host sampler's temperature path (engine/sample/sample.c:
 *          the same candidates, weights and inverse CDF; its exp is its
 *          own, so a draw within ~1e-6 of a boundary may land one token
 *          over).
 */

#include <cooperative_groups.h>

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

namespace cg = cooperative_groups;

/* Online log-sum-exp state: sum of exp(x - m) over the values seen. */
static __device__ __forceinline__ void lse_merge(float &m, float &z, float om, float oz)
{
    const float n = fmaxf(m, om);
    if (n == -INFINITY) {
        return;                                  /* both empty */
    }
    z = z * __expf(m - n) + oz * __expf(om - n);
    m = n;
}

/* A row is read by a cluster of AM_CLUSTER blocks, each a slice of the
 * vocabulary with 16-byte loads four deep: one block per row kept one SM
 * busy with a dependent load per element (95 us for 163840 logits at batch
 * 1).  The slices' results meet in rank 0 through distributed shared
 * memory, merged in rank order (the same sums every run). */
#define AM_CLUSTER 8
#define AM_THREADS 512

struct am_state {
    float best, m, z;
    int   idx;
};

template <bool LSE>
static __device__ __forceinline__ void am_take(am_state &st, float x, int v)
{
    /* NaN never wins: a NaN logit is a bug upstream, not a token */
    if (x > st.best || (x == st.best && v < st.idx)) {
        st.best = x;
        st.idx = v;
    }
    if (LSE && x > -INFINITY) {
        if (x > st.m) {
            st.z = st.z * __expf(st.m - x) + 1.f;
            st.m = x;
        } else {
            st.z += __expf(x - st.m);
        }
    }
}

template <bool LSE>
static __device__ __forceinline__ void am_merge(am_state &st, float ov, int oi, float om, float oz)
{
    if (ov > st.best || (ov == st.best && oi < st.idx)) {
        st.best = ov;
        st.idx = oi;
    }
    if (LSE) {
        lse_merge(st.m, st.z, om, oz);
    }
}

template <bool LSE>
static __global__ void __cluster_dims__(AM_CLUSTER, 1, 1) __launch_bounds__(AM_THREADS)
argmax_kernel(const float *__restrict__ logits, int vocab, int ld, int32_t *out,
              float *lp_out)
{
    KIMI_GRID_ENTRY();
    __shared__ float bv[AM_THREADS / 32], bm[AM_THREADS / 32], bz[AM_THREADS / 32];
    __shared__ int   bi[AM_THREADS / 32];
    __shared__ am_state mine;                     /* this slice's result */
    cg::cluster_group cluster = cg::this_cluster();
    const int rank = (int) cluster.block_rank();
    const float *row = logits + (size_t) blockIdx.y * ld;
    const int chunk = (vocab + AM_CLUSTER * 4 - 1) / (AM_CLUSTER * 4) * 4;
    const int v0 = min(vocab, rank * chunk), v1 = min(vocab, v0 + chunk);
    am_state st = { -INFINITY, -INFINITY, 0.f, 0x7fffffff };
    int v = v0;

    if ((((uintptr_t) row) & 15) == 0) {          /* v0 is a multiple of 4 */
        const float4 *r4 = (const float4 *) (row + v0);
        const int n4 = (v1 - v0) / 4;
        for (int i = threadIdx.x; i < n4; i += 4 * AM_THREADS) {
            float4 x[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int k = i + u * AM_THREADS;
                x[u] = k < n4 ? __ldg(&r4[k])
                              : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int b = v0 + 4 * (i + u * AM_THREADS);
                am_take<LSE>(st, x[u].x, b);
                am_take<LSE>(st, x[u].y, b + 1);
                am_take<LSE>(st, x[u].z, b + 2);
                am_take<LSE>(st, x[u].w, b + 3);
            }
        }
        v = v0 + 4 * n4;
    }
    for (v += threadIdx.x; v < v1; v += AM_THREADS) {
        am_take<LSE>(st, row[v], v);
    }

    for (int o = 16; o > 0; o >>= 1) {
        am_merge<LSE>(st, __shfl_xor_sync(0xffffffffu, st.best, o),
                      __shfl_xor_sync(0xffffffffu, st.idx, o),
                      __shfl_xor_sync(0xffffffffu, st.m, o),
                      __shfl_xor_sync(0xffffffffu, st.z, o));
    }
    if ((threadIdx.x & 31) == 0) {
        bv[threadIdx.x >> 5] = st.best;
        bi[threadIdx.x >> 5] = st.idx;
        bm[threadIdx.x >> 5] = st.m;
        bz[threadIdx.x >> 5] = st.z;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < AM_THREADS / 32; w++) {
            am_merge<LSE>(st, bv[w], bi[w], bm[w], bz[w]);
        }
        mine = st;
    }
    cluster.sync();
    if (rank == 0 && threadIdx.x == 0) {
        for (int r = 1; r < AM_CLUSTER; r++) {
            const am_state o = *cluster.map_shared_rank(&mine, r);
            am_merge<LSE>(st, o.best, o.idx, o.m, o.z);
        }
        out[blockIdx.y] = st.idx == 0x7fffffff ? 0 : st.idx;
        if (LSE) {
            /* best == m whenever a finite logit exists: lp = -log z */
            lp_out[blockIdx.y] = st.best - (st.m == -INFINITY ? -INFINITY : st.m + logf(st.z));
        }
    }
    cluster.sync();                               /* rank 0 has read every slice */
}

static int
greedy_launch(const float *logits, int rows, int vocab, int ld, int32_t *out, float *lse,
              cudaStream_t s, kimi_err_t *err)
{
    if (logits == NULL || out == NULL || rows < 0 || rows > 65535 || vocab <= 0 || ld < vocab) {
        return kimi_err_set(err, KIMI_EINVAL, "sample_greedy: rows=%d vocab=%d ld=%d",
                            rows, vocab, ld);
    }
    if (rows == 0) {
        return KIMI_OK;
    }
    if (lse != NULL) {
        KIMI_LAUNCH(err, argmax_kernel<true>, dim3(AM_CLUSTER, rows), AM_THREADS, 0, s, logits,
                    vocab, ld, out, lse);
    } else {
        KIMI_LAUNCH(err, argmax_kernel<false>, dim3(AM_CLUSTER, rows), AM_THREADS, 0, s, logits,
                    vocab, ld, out, nullptr);
    }
    return KIMI_OK;
}

extern "C" int
kimi_sample_greedy(const float *logits, int rows, int vocab, int ld,
                   int32_t *out, cudaStream_t s, kimi_err_t *err)
{
    return greedy_launch(logits, rows, vocab, ld, out, NULL, s, err);
}

extern "C" int
kimi_sample_greedy_logprob(const float *logits, int rows, int vocab, int ld,
                           int32_t *out, float *logprob, cudaStream_t s, kimi_err_t *err)
{
    if (logprob == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "sample_greedy_logprob: logprob is NULL");
    }
    return greedy_launch(logits, rows, vocab, ld, out, logprob, s, err);
}

/* ---- random draws ------------------------------------------------------------ */

/*
 * A cluster of AM_CLUSTER blocks per row again; a thread owns a contiguous
 * run of its block's slice, so the runs in rank-then-thread order tile the
 * row in vocabulary order.  Each pass reads the row again (from L2):
 *   max          the row's max logit;
 *   top_k        the k-th largest candidate by a radix select on its
 *                order-preserving bits (levels of 11, 11, 10 bits: a
 *                count histogram a level, merged over the cluster);
 *   top_p        the edge weight w* the same way, on mass histograms of the
 *                weights' bits: the largest w* whose mass at and above it
 *                reaches top_p of the total; ties at w* kept in vocabulary
 *                order until the mass is reached (one more pass, rarely);
 *   draw         each run's kept weight (double) and where it starts; the
 *                draw falls in the first run holding weight whose end passes
 *                u * total (the last such run if rounding leaves none), and
 *                that one thread walks its run to find the token: exactly
 *                one token, whatever the sums' rounding.
 * Every rank computes the merged histograms and the edges from the same
 * sums in the same order, so all agree without another exchange.
 */
#define DR_BINS 2048

struct draw_row {
    const float *row;
    int          v0, v1;          /* this thread's run */
    float        inv_t, m, cut;
    bool         top_k;           /* keep key(v) >= kth */
    uint32_t     kth;
    bool         top_p;           /* keep w > w*, and ties at w* below n_ties */
    uint32_t     wstar;
    double       n_ties;          /* ties at w* kept (vocabulary order) */
};

/* Order-preserving bits of a float (larger float, larger key). */
static __device__ __forceinline__ uint32_t dr_key(float v)
{
    const uint32_t b = __float_as_uint(v);
    return b ^ ((b >> 31) ? 0xffffffffu : 0x80000000u);
}

/* A candidate after min_p and top_k: its weight, else 0. */
static __device__ __forceinline__ float dr_weight(const draw_row &d, float x)
{
    const float v = x * d.inv_t;
    if (!(v >= d.cut) || (d.top_k && dr_key(v) < d.kth)) {
        return 0.f;
    }
    return expf(v - d.m);
}

static __device__ __forceinline__ double block_excl_scan(double v, double *warp_sums, double *total)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    double incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) {
            incl += y;
        }
    }
    double excl = __shfl_up_sync(0xffffffffu, incl, 1);
    excl = lane > 0 ? excl : 0.0;
    __syncthreads();                              /* warp_sums free again */
    if (lane == 31) {
        warp_sums[wid] = incl;
    }
    __syncthreads();
    if (threadIdx.x == 0) {                       /* 16 warps: in order, one thread */
        for (int w = 1; w < AM_THREADS / 32; w++) {
            warp_sums[w] += warp_sums[w - 1];
        }
    }
    __syncthreads();
    *total = warp_sums[AM_THREADS / 32 - 1];
    return (wid > 0 ? warp_sums[wid - 1] : 0.0) + excl;
}

/* min (want_min) or max of v over the block, returned to all */
static __device__ __forceinline__ int block_pick(int v, bool want_min, int *scratch)
{
    v = want_min ? (int) __reduce_min_sync(0xffffffffu, (unsigned) v)
                 : __reduce_max_sync(0xffffffffu, v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        scratch[threadIdx.x >> 5] = v;
    }
    __syncthreads();
    for (int w = 0; w < AM_THREADS / 32; w++) {
        v = want_min ? min(v, scratch[w]) : max(v, scratch[w]);
    }
    return v;
}

/* A double summed over the block (fixed order: a scan's total). */
static __device__ __forceinline__ double block_sum(double v, double *scratch)
{
    double total;
    block_excl_scan(v, scratch, &total);
    return total;
}

/* A block's double summed over the cluster in rank order (every rank the
 * same); v must be the same on every thread of the block. */
static __device__ __forceinline__ double cluster_sum(cg::cluster_group &cluster, double v, double *slot)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        *slot = v;
    }
    cluster.sync();
    double s = 0.0;
    for (int r = 0; r < AM_CLUSTER; r++) {
        s += *cluster.map_shared_rank(slot, r);
    }
    cluster.sync();                               /* slot may be written again */
    return s;
}

/*
 * One radix level: over the elements whose bits above `shift + width` equal
 * `prefix` (the higher levels' answer), hist[digit] += their count (mass
 * false) or weight.  Merged over the cluster, then searched from the top
 * digit down for the first where (above + the mass of digits down to it)
 * reaches need.  Returns the digit; *above gains the digits above it.
 */
template <bool MASS>
static __device__ uint32_t
dr_level(cg::cluster_group &cluster, const draw_row &d, int shift, int width, uint32_t prefix,
         double need, double *above, double *hist, double *merged, double *scratch)
{
    const uint32_t hi_mask = shift + width >= 32 ? 0u : ~0u << (shift + width);
    const int nb = 1 << width;
    for (int b = threadIdx.x; b < DR_BINS; b += AM_THREADS) {
        hist[b] = 0.0;
    }
    __syncthreads();
    for (int v = d.v0; v < d.v1; v++) {
        const float x = d.row[v];
        uint32_t key;
        double val;
        if (MASS) {
            const float w = dr_weight(d, x);
            key = __float_as_uint(w);
            val = w;
            if (!(w > 0.f)) {
                continue;
            }
        } else {
            const float y = x * d.inv_t;
            if (!(y >= d.cut)) {
                continue;
            }
            key = dr_key(y);
            val = 1.0;
        }
        if ((key & hi_mask) == (prefix & hi_mask)) {
            atomicAdd(&hist[(key >> shift) & (nb - 1)], val);
        }
    }
    cluster.sync();                               /* every rank's hist is final */
    for (int b = threadIdx.x; b < nb; b += AM_THREADS) {
        double sum = 0.0;
        for (int r = 0; r < AM_CLUSTER; r++) {
            sum += cluster.map_shared_rank(hist, r)[b];
        }
        merged[b] = sum;
    }
    cluster.sync();                               /* peers done reading hist */
    /* from the top digit down: thread t takes digits nb-1-4t .. nb-4-4t */
    double part = 0.0;
    const int top = nb - 1 - 4 * (int) threadIdx.x;
    for (int i = 0; i < 4; i++) {
        part += top - i >= 0 ? merged[top - i] : 0.0;
    }
    double total;
    const double before = block_excl_scan(part, scratch, &total);
    int first = nb;                               /* in top-down order */
    double acc = *above + before;
    for (int i = 0; i < 4 && top - i >= 0; i++) {
        const double h = merged[top - i];
        if (h > 0.0 && acc + h >= need) {
            first = 4 * (int) threadIdx.x + i;
            break;
        }
        acc += h;
    }
    first = block_pick(first, true, (int *) (merged + nb));
    if (first >= nb) {
        first = nb - 1;                           /* rounding: the lowest digit holding any */
        while (first > 0 && merged[nb - 1 - first] == 0.0) {
            first--;
        }
    }
    double a = *above;                            /* the same sum on every thread */
    for (int i = 0; i < first; i++) {
        a += merged[nb - 1 - i];
    }
    __syncthreads();
    *above = a;
    return (uint32_t) (nb - 1 - first);
}

/* The edge of a radix select: the key whose count / mass at and above it
 * first reaches need, and the mass strictly above it. */
template <bool MASS>
static __device__ uint32_t
dr_select(cg::cluster_group &cluster, const draw_row &d, double need, double *above,
          double *hist, double *merged, double *scratch)
{
    uint32_t key = 0;
    *above = 0.0;
    key |= dr_level<MASS>(cluster, d, 21, 11, key, need, above, hist, merged, scratch) << 21;
    key |= dr_level<MASS>(cluster, d, 10, 11, key, need, above, hist, merged, scratch) << 10;
    key |= dr_level<MASS>(cluster, d, 0, 10, key, need, above, hist, merged, scratch);
    return key;
}

static __global__ void __cluster_dims__(AM_CLUSTER, 1, 1) __launch_bounds__(AM_THREADS)
draw_kernel(const float *__restrict__ logits, int vocab, int ld,
            const kimi_draw_row_t *__restrict__ params, int32_t *out)
{
    KIMI_GRID_ENTRY();
    __shared__ double hist[DR_BINS], merged[DR_BINS + 8];
    __shared__ double wsum[AM_THREADS / 32];
    __shared__ int    wpick[AM_THREADS / 32];
    __shared__ double slot;
    __shared__ int    slice_first, slice_last;
    cg::cluster_group cluster = cg::this_cluster();
    const kimi_draw_row_t p = params[blockIdx.y];
    if (p.inv_t <= 0.f) {
        return;                                   /* the whole cluster: same row */
    }
    const int rank = (int) cluster.block_rank(), lane = threadIdx.x & 31;
    const int per_rank = (vocab + AM_CLUSTER - 1) / AM_CLUSTER;
    const int run = (per_rank + AM_THREADS - 1) / AM_THREADS;
    const int r0 = min(vocab, rank * per_rank), r1 = min(vocab, r0 + per_rank);
    draw_row d;
    d.row = logits + (size_t) blockIdx.y * ld;
    d.v0 = min(r1, r0 + (int) threadIdx.x * run);
    d.v1 = min(r1, d.v0 + run);
    d.inv_t = p.inv_t;
    d.top_k = false;
    d.top_p = false;

    /* the row's max logit */
    float mx = -INFINITY;
    for (int v = d.v0; v < d.v1; v++) {
        mx = fmaxf(mx, d.row[v]);                 /* NaN never wins fmaxf */
    }
    mx = kimi_warp_max(mx);
    if (lane == 0) {
        wsum[threadIdx.x >> 5] = mx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < AM_THREADS / 32; w++) {
            mx = fmaxf(mx, (float) wsum[w]);
        }
        slot = mx;
    }
    cluster.sync();
    mx = -INFINITY;
    for (int r = 0; r < AM_CLUSTER; r++) {
        mx = fmaxf(mx, (float) *cluster.map_shared_rank(&slot, r));
    }
    cluster.sync();                               /* slot free again */
    if (!(mx > -INFINITY)) {
        if (rank == 0 && threadIdx.x == 0) {
            out[blockIdx.y] = -1;
        }
        return;
    }
    /* the host's candidates: v = x * inv_t >= cut, weight exp(v - m) */
    d.m = mx * p.inv_t;
    d.cut = d.m - 87.0f;
    if (d.m + p.log_min_p > d.cut) {
        d.cut = d.m + p.log_min_p;
    }

    double above;
    if (p.top_k > 0) {
        double n = 0.0;
        for (int v = d.v0; v < d.v1; v++) {
            n += d.row[v] * d.inv_t >= d.cut ? 1.0 : 0.0;
        }
        n = cluster_sum(cluster, block_sum(n, wsum), &slot);
        if ((double) p.top_k < n) {
            d.kth = dr_select<false>(cluster, d, (double) p.top_k, &above, hist, merged, wsum);
            d.top_k = true;
        }
    }
    if (p.top_p < 1.f) {
        double z = 0.0;
        for (int v = d.v0; v < d.v1; v++) {
            z += dr_weight(d, d.row[v]);
        }
        const double target = (double) p.top_p * cluster_sum(cluster, block_sum(z, wsum), &slot);
        d.wstar = dr_select<true>(cluster, d, target, &above, hist, merged, wsum);
        /* ties at w*: as many as the host's running sum takes */
        const double w = __uint_as_float(d.wstar);
        double acc = above, ties = 0.0, n_eq = 0.0;
        for (int v = d.v0; v < d.v1; v++) {
            n_eq += __float_as_uint(dr_weight(d, d.row[v])) == d.wstar ? 1.0 : 0.0;
        }
        n_eq = cluster_sum(cluster, block_sum(n_eq, wsum), &slot);
        while (ties < n_eq && acc < target) {
            acc += w;
            ties += 1.0;
        }
        d.n_ties = ties;
        d.top_p = true;
    }

    /* ties kept in vocabulary order: where this run's ties start */
    double tie0 = 0.0;
    if (d.top_p) {
        double mine = 0.0;
        for (int v = d.v0; v < d.v1; v++) {
            mine += __float_as_uint(dr_weight(d, d.row[v])) == d.wstar ? 1.0 : 0.0;
        }
        double block_total;
        const double before = block_excl_scan(mine, wsum, &block_total);
        if (threadIdx.x == 0) {
            slot = block_total;
        }
        cluster.sync();
        for (int r = 0; r < rank; r++) {
            tie0 += *cluster.map_shared_rank(&slot, r);
        }
        cluster.sync();
        tie0 += before;
    }
    /* the kept weight of a logit, tie counter advanced in vocabulary order */
    auto kept = [&](float x, double &tie) -> float {
        const float w = dr_weight(d, x);
        if (!d.top_p || w > __uint_as_float(d.wstar)) {
            return w;
        }
        if (__float_as_uint(w) != d.wstar) {
            return 0.f;                           /* below the edge (or not a candidate) */
        }
        const bool keep = tie < d.n_ties;
        tie += 1.0;
        return keep ? w : 0.f;
    };

    /* the draw: the run's kept weight and its place in the row */
    double mine = 0.0, tie = tie0;
    for (int v = d.v0; v < d.v1; v++) {
        mine += kept(d.row[v], tie);
    }
    double block_total;
    const double before = block_excl_scan(mine, wsum, &block_total);
    if (threadIdx.x == 0) {
        slot = block_total;
    }
    cluster.sync();
    double rank_start = 0.0, total = 0.0;
    for (int r = 0; r < AM_CLUSTER; r++) {
        const double sr = *cluster.map_shared_rank(&slot, r);
        rank_start += r < rank ? sr : 0.0;
        total += sr;
    }
    const double target = p.u * total, start = rank_start + before;
    const int first = block_pick(mine > 0.0 && start + mine > target ? (int) threadIdx.x : AM_THREADS,
                                 true, wpick);
    const int last = block_pick(mine > 0.0 ? (int) threadIdx.x : -1, false, wpick);
    if (threadIdx.x == 0) {
        slice_first = first;
        slice_last = last;
    }
    cluster.sync();
    int win_rank = -1, win_thread = -1;
    for (int r = 0; r < AM_CLUSTER && win_rank < 0; r++) {
        const int f = *cluster.map_shared_rank(&slice_first, r);
        if (f < AM_THREADS) {
            win_rank = r;
            win_thread = f;
        }
    }
    for (int r = AM_CLUSTER - 1; r >= 0 && win_rank < 0; r--) {
        const int l = *cluster.map_shared_rank(&slice_last, r);
        if (l >= 0) {
            win_rank = r;
            win_thread = l;
        }
    }
    if (rank == win_rank && (int) threadIdx.x == win_thread) {
        double acc = start;
        int tok = -1;
        tie = tie0;
        for (int v = d.v0; v < d.v1; v++) {
            const float w = kept(d.row[v], tie);
            if (w > 0.f) {
                tok = v;                          /* rounding: the run's last kept */
                acc += w;
                if (target < acc) {
                    break;
                }
            }
        }
        out[blockIdx.y] = tok;
    }
    cluster.sync();                               /* peers have read every slice_* */
}

extern "C" int
kimi_sample_draw(const float *logits, int rows, int vocab, int ld, const kimi_draw_row_t *params,
                 int32_t *out, cudaStream_t s, kimi_err_t *err)
{
    if (logits == NULL || params == NULL || out == NULL || rows < 0 || rows > 65535 || vocab <= 0
        || ld < vocab) {
        return kimi_err_set(err, KIMI_EINVAL, "sample_draw: rows=%d vocab=%d ld=%d", rows, vocab, ld);
    }
    if (rows == 0) {
        return KIMI_OK;
    }
    KIMI_LAUNCH(err, draw_kernel, dim3(AM_CLUSTER, rows), AM_THREADS, 0, s, logits, vocab, ld,
                params, out);
    return KIMI_OK;
}

/* ---- logit edits ------------------------------------------------------------ */

static __global__ void
logit_edit_kernel(float *__restrict__ logits, kimi_logit_edit_t *__restrict__ e, int n)
{
    KIMI_GRID_ENTRY();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const kimi_logit_edit_t ed = e[i];
    float v = logits[ed.at];
    e[i].old = v;
    /* separate operations, __f*_rn so nothing is fused: the host's bits */
    if (ed.flags & KIMI_EDIT_BIAS) {
        v = __fadd_rn(v, ed.add);
    }
    if ((ed.flags & KIMI_EDIT_SEEN) && ed.rep != 1.0f) {
        v = v > 0.0f ? __fdiv_rn(v, ed.rep) : __fmul_rn(v, ed.rep);
    }
    if (ed.flags & KIMI_EDIT_COUNTED) {
        v = __fsub_rn(v, ed.fc);
        v = __fsub_rn(v, ed.pres);
    }
    if (ed.flags & KIMI_EDIT_MASKED) {
        v = -INFINITY;
    }
    logits[ed.at] = v;
}

static __global__ void
logit_restore_kernel(float *__restrict__ logits, const kimi_logit_edit_t *__restrict__ e, int n)
{
    KIMI_GRID_ENTRY();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        logits[e[i].at] = e[i].old;
    }
}

extern "C" int
kimi_logit_edit(float *logits, kimi_logit_edit_t *edits, int n, cudaStream_t s, kimi_err_t *err)
{
    if (logits == NULL || edits == NULL || n < 0) {
        return kimi_err_set(err, KIMI_EINVAL, "logit_edit: n=%d", n);
    }
    if (n > 0) {
        KIMI_LAUNCH(err, logit_edit_kernel, (n + 255) / 256, 256, 0, s, logits, edits, n);
    }
    return KIMI_OK;
}

extern "C" int
kimi_logit_restore(float *logits, const kimi_logit_edit_t *edits, int n, cudaStream_t s,
                   kimi_err_t *err)
{
    if (logits == NULL || edits == NULL || n < 0) {
        return kimi_err_set(err, KIMI_EINVAL, "logit_restore: n=%d", n);
    }
    if (n > 0) {
        KIMI_LAUNCH(err, logit_restore_kernel, (n + 255) / 256, 256, 0, s, logits, edits, n);
    }
    return KIMI_OK;
}
