/*
 * YaRN rotary embedding, interleaved pairs (DeepSeek-V3 / Kimi-K2 layout).
 *
 *   for pair i < rot_dim/2:  a = pos[t] * inv_freq[i] (fp32, as HF computes)
 *   y[2i]   = m * (x[2i] * cos a - x[2i+1] * sin a)
 *   y[2i+1] = m * (x[2i] * sin a + x[2i+1] * cos a)      m = mscale (1 for K2)
 *
 * inv_freq (host, kimi_rope_yarn_init): base_i = theta^(-2i/d); with
 *   corr(n) = d*ln(orig/(n*2pi)) / (2 ln theta), low = max(floor(corr(beta_fast)),0),
 *   high = min(ceil(corr(beta_slow)), d-1) (+0.001 if equal),
 *   ramp_i = clamp((i-low)/(high-low), 0, 1):
 *   inv_freq_i = base_i/factor * ramp_i + base_i * (1 - ramp_i).
 *
 * Layout:  q[t*q_ld + h*q_hd + 0..rot_dim) and k[t*k_ld + 0..rot_dim), bf16,
 *          in place.  One thread per pair.
 * Cost:    T*(H+1)*rot_dim*4 bytes moved; negligible next to the GEMMs.
 * Twin:    the rope of engine/backend/cpu/ops.h.
 */

#include <math.h>

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

#define ROPE_THREADS 128

template <typename E>
static __global__ void
rope_kernel(E *q, int q_ld, int q_hd, int n_heads, E *k,
            int k_ld, const int32_t *__restrict__ pos, kimi_rope_t r)
{
    KIMI_GRID_ENTRY();
    const int t = blockIdx.x;
    const int half = r.rot_dim / 2;
    const int nh = (q != NULL ? n_heads : 0) + (k != NULL ? 1 : 0);
    const float p = (float) pos[t];

    /* one pair per thread: a token's ~2000 pairs over several blocks, so a
     * decode step's rope is one load + sincos deep, not a strided loop */
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j < nh * half) {
        const int h = j / half, i = j % half;
        E *x;
        if (q != NULL && h < n_heads) {
            x = q + (size_t) t * q_ld + (size_t) h * q_hd;
        } else {
            x = k + (size_t) t * k_ld;
        }
        float sn, cs;
        sincosf(p * r.inv_freq[i], &sn, &cs);
        const float x0 = kimi_ldf(&x[2 * i]), x1 = kimi_ldf(&x[2 * i + 1]);
        kimi_stf(&x[2 * i], (x0 * cs - x1 * sn) * r.mscale);
        kimi_stf(&x[2 * i + 1], (x0 * sn + x1 * cs) * r.mscale);
    }
}

static double
yarn_mscale(double s, double m)
{
    return s <= 1.0 ? 1.0 : 0.1 * m * log(s) + 1.0;
}

extern "C" int
kimi_rope_yarn_init(kimi_rope_t *r, int rot_dim, double theta, double factor,
                    int orig_max_pos, double beta_fast, double beta_slow,
                    double mscale, double mscale_all_dim, kimi_err_t *err)
{
    if (r == NULL || rot_dim <= 0 || rot_dim % 2 != 0
        || rot_dim / 2 > KIMI_ROPE_MAX_PAIRS || theta <= 1.0) {
        return kimi_err_set(err, KIMI_EINVAL, "rope: rot_dim=%d theta=%g", rot_dim, theta);
    }
    const int half = rot_dim / 2;
    r->rot_dim = rot_dim;
    r->mscale = 1.0f;
    double low = 0, high = 0;
    if (factor > 1.0) {
        if (orig_max_pos <= 0) {
            return kimi_err_set(err, KIMI_EINVAL, "rope: yarn needs original_max_position_embeddings");
        }
        double cf = rot_dim * log(orig_max_pos / (beta_fast * 2 * M_PI)) / (2 * log(theta));
        double cs = rot_dim * log(orig_max_pos / (beta_slow * 2 * M_PI)) / (2 * log(theta));
        low = floor(cf) > 0 ? floor(cf) : 0;
        high = ceil(cs) < rot_dim - 1 ? ceil(cs) : rot_dim - 1;
        if (low == high) {
            high += 0.001;
        }
        r->mscale = (float) (yarn_mscale(factor, mscale)
                             / yarn_mscale(factor, mscale_all_dim));
    }
    for (int i = 0; i < half; i++) {
        /* fp32 as the references compute it */
        float base = (float) (1.0 / pow(theta, (double) (2 * i) / rot_dim));
        if (factor > 1.0) {
            double ramp = (i - low) / (high - low);
            ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
            r->inv_freq[i] = (float) (base / factor * ramp + base * (1 - ramp));
        } else {
            r->inv_freq[i] = base;
        }
    }
    for (int i = half; i < KIMI_ROPE_MAX_PAIRS; i++) {
        r->inv_freq[i] = 0.f;
    }
    return KIMI_OK;
}

template <typename E>
static int
rope_launch(E *q, int q_ld, int q_hd, int n_heads, E *k,
               int k_ld, const int32_t *pos, int T, const kimi_rope_t *r,
               cudaStream_t s, kimi_err_t *err)
{
    if (r == NULL || pos == NULL || T < 0 || (q == NULL && k == NULL)
        || (q != NULL && (n_heads <= 0 || q_hd < r->rot_dim || q_ld < n_heads * q_hd))
        || (k != NULL && k_ld < r->rot_dim)) {
        return kimi_err_set(err, KIMI_EINVAL, "rope: T=%d heads=%d q_ld=%d q_hd=%d k_ld=%d",
                            T, n_heads, q_ld, q_hd, k_ld);
    }
    if (T == 0) {
        return KIMI_OK;
    }
    const int pairs = ((q != NULL ? n_heads : 0) + (k != NULL ? 1 : 0)) * (r->rot_dim / 2);
    KIMI_LAUNCH(err, rope_kernel<E>, dim3(T, (pairs + ROPE_THREADS - 1) / ROPE_THREADS),
                ROPE_THREADS, 0, s, q, q_ld, q_hd, n_heads, k, k_ld, pos, *r);
    return KIMI_OK;
}

extern "C" int
kimi_rope_bf16(kimi_bf16_t *q, int q_ld, int q_hd, int n_heads, kimi_bf16_t *k,
               int k_ld, const int32_t *pos, int T, const kimi_rope_t *r,
               cudaStream_t s, kimi_err_t *err)
{
    return rope_launch(q, q_ld, q_hd, n_heads, k, k_ld, pos, T, r, s, err);
}

extern "C" int
kimi_rope_f32(float *q, int q_ld, int q_hd, int n_heads, float *k, int k_ld,
              const int32_t *pos, int T, const kimi_rope_t *r, cudaStream_t s,
              kimi_err_t *err)
{
    return rope_launch(q, q_ld, q_hd, n_heads, k, k_ld, pos, T, r, s, err);
}
