/*
 * Greedy sampling on the device.
 *
 *   out[r] = argmax_v logits[r, v]      (exact ties: the lower token id)
 *
 * Layout:  logits fp32 [rows, ld], vocab <= ld.  One block per row, each
 *          thread scans a strided slice, then a block reduction.
 * Cost:    reads 4*vocab bytes per row (655 KB for Kimi-K2's 163840).
 * Twin:    the host greedy sampler (argmax with the same tie rule).
 */

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

static __global__ void __launch_bounds__(512)
argmax_kernel(const float *__restrict__ logits, int vocab, int ld, int32_t *out)
{
    __shared__ float bv[16];
    __shared__ int   bi[16];
    const float *row = logits + (size_t) blockIdx.x * ld;
    float best = -INFINITY;
    int   bidx = 0x7fffffff;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float x = row[v];
        /* NaN never wins: a NaN logit is a bug upstream, not a token */
        if (x > best) {
            best = x;
            bidx = v;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int   oi = __shfl_xor_sync(0xffffffffu, bidx, o);
        if (ov > best || (ov == best && oi < bidx)) {
            best = ov;
            bidx = oi;
        }
    }
    if ((threadIdx.x & 31) == 0) {
        bv[threadIdx.x >> 5] = best;
        bi[threadIdx.x >> 5] = bidx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int) (blockDim.x / 32); w++) {
            if (bv[w] > best || (bv[w] == best && bi[w] < bidx)) {
                best = bv[w];
                bidx = bi[w];
            }
        }
        out[blockIdx.x] = bidx == 0x7fffffff ? 0 : bidx;
    }
}

extern "C" int
kimi_sample_greedy(const float *logits, int rows, int vocab, int ld,
                   int32_t *out, cudaStream_t s, kimi_err_t *err)
{
    if (logits == NULL || out == NULL || rows < 0 || vocab <= 0 || ld < vocab) {
        return kimi_err_set(err, KIMI_EINVAL, "sample_greedy: rows=%d vocab=%d ld=%d",
                            rows, vocab, ld);
    }
    if (rows == 0) {
        return KIMI_OK;
    }
    argmax_kernel<<<rows, 512, 0, s>>>(logits, vocab, ld, out);
    KIMI_CUDA_LAUNCHED(s, err);
    return KIMI_OK;
}
