/*
 * Sampling on the device: greedy, and temperature (+ min_p) alone.
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

/* ---- temperature ------------------------------------------------------------ */

/*
 * A cluster of AM_CLUSTER blocks per row again; a thread owns a contiguous
 * run of its block's slice, so the runs in rank-then-thread order tile the
 * row in vocabulary order.  Pass 1: the max.  Pass 2: each run's weight
 * (double) and where it starts (a scan over the block, the block totals
 * over the cluster).  The draw falls in the first run holding weight whose
 * end passes u * total (the last such run if rounding leaves none), and
 * that one thread walks its run again to find the token: exactly one
 * token, whatever the sums' rounding.
 */
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

/* min (want_min) or max of v over the block, in *slot and returned to all */
static __device__ __forceinline__ int block_pick(int v, bool want_min, int *scratch, int *slot)
{
    v = want_min ? (int) __reduce_min_sync(0xffffffffu, (unsigned) v)
                 : __reduce_max_sync(0xffffffffu, v);
    if ((threadIdx.x & 31) == 0) {
        scratch[threadIdx.x >> 5] = v;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < AM_THREADS / 32; w++) {
            v = want_min ? min(v, scratch[w]) : max(v, scratch[w]);
        }
        *slot = v;
    }
    __syncthreads();
    return *slot;
}

static __global__ void __cluster_dims__(AM_CLUSTER, 1, 1) __launch_bounds__(AM_THREADS)
temperature_kernel(const float *__restrict__ logits, int vocab, int ld,
                   const kimi_temp_row_t *__restrict__ params, int32_t *out)
{
    KIMI_GRID_ENTRY();
    __shared__ float  wmax[AM_THREADS / 32];
    __shared__ double wsum[AM_THREADS / 32];
    __shared__ int    wpick[AM_THREADS / 32];
    __shared__ float  slice_max;
    __shared__ double slice_sum;
    __shared__ int    slice_first, slice_last;
    cg::cluster_group cluster = cg::this_cluster();
    const kimi_temp_row_t p = params[blockIdx.y];
    if (p.inv_t <= 0.f) {
        return;                                   /* the whole cluster: same row */
    }
    const int rank = (int) cluster.block_rank(), lane = threadIdx.x & 31;
    const float *row = logits + (size_t) blockIdx.y * ld;
    const int per_rank = (vocab + AM_CLUSTER - 1) / AM_CLUSTER;
    const int run = (per_rank + AM_THREADS - 1) / AM_THREADS;
    const int r0 = min(vocab, rank * per_rank), r1 = min(vocab, r0 + per_rank);
    const int v0 = min(r1, r0 + (int) threadIdx.x * run), v1 = min(r1, v0 + run);

    /* pass 1: the row's max logit */
    float mx = -INFINITY;
    for (int v = v0; v < v1; v++) {
        mx = fmaxf(mx, row[v]);                   /* NaN never wins fmaxf */
    }
    mx = kimi_warp_max(mx);
    if (lane == 0) {
        wmax[threadIdx.x >> 5] = mx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < AM_THREADS / 32; w++) {
            mx = fmaxf(mx, wmax[w]);
        }
        slice_max = mx;
    }
    cluster.sync();
    mx = -INFINITY;
    for (int r = 0; r < AM_CLUSTER; r++) {
        mx = fmaxf(mx, *cluster.map_shared_rank(&slice_max, r));
    }
    if (!(mx > -INFINITY)) {
        if (rank == 0 && threadIdx.x == 0) {
            out[blockIdx.y] = -1;
        }
        cluster.sync();                           /* peers have read slice_max */
        return;
    }
    /* the host's candidates: v = x * inv_t >= cut, weight exp(v - m) */
    const float m = mx * p.inv_t;
    float cut = m - 87.0f;
    if (m + p.log_min_p > cut) {
        cut = m + p.log_min_p;
    }

    /* pass 2: the run's weight and its place in the row */
    double mine = 0.0;
    for (int v = v0; v < v1; v++) {
        const float x = row[v] * p.inv_t;
        mine += x >= cut ? (double) expf(x - m) : 0.0;
    }
    double block_total;
    const double before = block_excl_scan(mine, wsum, &block_total);
    if (threadIdx.x == 0) {
        slice_sum = block_total;
    }
    cluster.sync();
    double rank_start = 0.0, total = 0.0;
    for (int r = 0; r < AM_CLUSTER; r++) {
        const double sr = *cluster.map_shared_rank(&slice_sum, r);
        rank_start += r < rank ? sr : 0.0;
        total += sr;
    }
    const double target = p.u * total, start = rank_start + before;
    block_pick(mine > 0.0 && start + mine > target ? (int) threadIdx.x : AM_THREADS, true, wpick,
               &slice_first);
    block_pick(mine > 0.0 ? (int) threadIdx.x : -1, false, wpick, &slice_last);
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
        for (int v = v0; v < v1; v++) {
            const float x = row[v] * p.inv_t;
            if (x >= cut) {
                tok = v;                          /* rounding: the run's last candidate */
                acc += (double) expf(x - m);
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
kimi_sample_temperature(const float *logits, int rows, int vocab, int ld,
                        const kimi_temp_row_t *params, int32_t *out, cudaStream_t s,
                        kimi_err_t *err)
{
    if (logits == NULL || params == NULL || out == NULL || rows < 0 || rows > 65535 || vocab <= 0
        || ld < vocab) {
        return kimi_err_set(err, KIMI_EINVAL, "sample_temperature: rows=%d vocab=%d ld=%d",
                            rows, vocab, ld);
    }
    if (rows == 0) {
        return KIMI_OK;
    }
    KIMI_LAUNCH(err, temperature_kernel, dim3(AM_CLUSTER, rows), AM_THREADS, 0, s, logits, vocab,
                ld, params, out);
    return KIMI_OK;
}
