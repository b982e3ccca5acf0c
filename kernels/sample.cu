/*
 * Greedy sampling on the device.
 *
 *   out[r] = argmax_v logits[r, v]      (exact ties: the lower token id)
 *   lp[r]  = logits[r, out[r]] - log sum_v exp(logits[r, v])   (optional:
 *            the greedy token's logprob; -inf entries skipped)
 *
 * Layout:  logits fp32 [rows, ld], vocab <= ld.  One block per row, each
 *          thread scans a strided slice, then a block reduction.
 * Cost:    reads 4*vocab bytes per row (655 KB for Kimi-K2's 163840).
 * Twin:    the host greedy sampler (argmax with the same tie rule) and
 *          kimi_sample_logsumexp (double there: the two agree to ~1e-6).
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

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

template <bool LSE>
static __global__ void __launch_bounds__(512)
argmax_kernel(const float *__restrict__ logits, int vocab, int ld, int32_t *out,
              float *lp_out)
{
    __shared__ float bv[16], bm[16], bz[16];
    __shared__ int   bi[16];
    const float *row = logits + (size_t) blockIdx.x * ld;
    float best = -INFINITY, m = -INFINITY, z = 0.f;
    int   bidx = 0x7fffffff;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float x = row[v];
        /* NaN never wins: a NaN logit is a bug upstream, not a token */
        if (x > best) {
            best = x;
            bidx = v;
        }
        if (LSE && x > -INFINITY) {
            if (x > m) {
                z = z * __expf(m - x) + 1.f;
                m = x;
            } else {
                z += __expf(x - m);
            }
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int   oi = __shfl_xor_sync(0xffffffffu, bidx, o);
        if (ov > best || (ov == best && oi < bidx)) {
            best = ov;
            bidx = oi;
        }
        if (LSE) {
            float om = __shfl_xor_sync(0xffffffffu, m, o);
            float oz = __shfl_xor_sync(0xffffffffu, z, o);
            lse_merge(m, z, om, oz);
        }
    }
    if ((threadIdx.x & 31) == 0) {
        bv[threadIdx.x >> 5] = best;
        bi[threadIdx.x >> 5] = bidx;
        bm[threadIdx.x >> 5] = m;
        bz[threadIdx.x >> 5] = z;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int) (blockDim.x / 32); w++) {
            if (bv[w] > best || (bv[w] == best && bi[w] < bidx)) {
                best = bv[w];
                bidx = bi[w];
            }
            if (LSE) {
                lse_merge(m, z, bm[w], bz[w]);
            }
        }
        out[blockIdx.x] = bidx == 0x7fffffff ? 0 : bidx;
        if (LSE) {
            /* best == m whenever a finite logit exists: lp = -log z */
            lp_out[blockIdx.x] = best - (m == -INFINITY ? -INFINITY : m + logf(z));
        }
    }
}

static int
greedy_launch(const float *logits, int rows, int vocab, int ld, int32_t *out, float *lse,
              cudaStream_t s, kimi_err_t *err)
{
    if (logits == NULL || out == NULL || rows < 0 || vocab <= 0 || ld < vocab) {
        return kimi_err_set(err, KIMI_EINVAL, "sample_greedy: rows=%d vocab=%d ld=%d",
                            rows, vocab, ld);
    }
    if (rows == 0) {
        return KIMI_OK;
    }
    if (lse != NULL) {
        argmax_kernel<true><<<rows, 512, 0, s>>>(logits, vocab, ld, out, lse);
    } else {
        argmax_kernel<false><<<rows, 512, 0, s>>>(logits, vocab, ld, out, NULL);
    }
    KIMI_CUDA_LAUNCHED(s, err);
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
