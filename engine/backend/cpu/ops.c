/*
 * CPU primitive ops: the reference arithmetic of the Kimi-K2 forward pass.
 *
 * Owns:   fp8/bf16 conversions, block dequantisation, the GEMM variants,
 *         norms, RoPE/YaRN, the MoE router, MLA attention (naive prefill
 *         and absorbed decode over the paged latent cache).
 * Never:  allocates, spawns threads, or keeps state beyond the read-only
 *         fp8 decode table (built once, see kimi_fp8_lut_init()).
 * Holds:  every accumulation is fp32 unless a comment says double; the
 *         CUDA kernels are compared against these functions.
 */

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "ops.h"

/* The inner loops are written to vectorise (independent partial sums, no
 * aliasing); -O2 of older GCCs does not try, so ask for it here.  The
 * results do not change: no -ffast-math, every sum keeps its order. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize ("tree-vectorize")
#endif


/* Decoding table for the 256 fp8 codes: read-only after the one-time
 * init, so sharing it between threads is safe. */
static float           kimi_fp8_lut[256];
static pthread_once_t  kimi_fp8_lut_once = PTHREAD_ONCE_INIT;


static float
kimi_fp8_decode(uint8_t v)
{
    uint32_t  s = v >> 7, e = (v >> 3) & 0xf, m = v & 7;
    float     f;

    if (e == 15 && m == 7) {
        return NAN;                       /* only S.1111.111 is NaN */
    }

    if (e == 0) {
        f = ldexpf((float) m, -9);        /* subnormal: m/8 * 2^-6 */

    } else {
        f = ldexpf(1.0f + (float) m / 8.0f, (int) e - 7);
    }

    return s ? -f : f;
}


static void
kimi_fp8_lut_init(void)
{
    for (int i = 0; i < 256; i++) {
        kimi_fp8_lut[i] = kimi_fp8_decode((uint8_t) i);
    }
}


static inline const float *
kimi_fp8_table(void)
{
    pthread_once(&kimi_fp8_lut_once, kimi_fp8_lut_init);
    return kimi_fp8_lut;
}


float
kimi_fp8_to_f32(uint8_t v)
{
    return kimi_fp8_table()[v];
}


uint8_t
kimi_f32_to_fp8(float x)
{
    uint8_t  sign;
    float    a, q, mant;
    int      e, be;

    if (isnan(x)) {
        return 0x7f;
    }

    sign = signbit(x) ? 0x80 : 0x00;
    a = fabsf(x);

    if (!(a < KIMI_FP8_MAX)) {
        return sign | 0x7e;               /* >= 448 or inf: saturate (RNE
                                             would give 448 up to 464) */
    }

    if (a < 0x1p-6f) {
        /* subnormal grid is 2^-9: code = round_half_even(a * 512); 8 is
         * exactly the smallest normal, whose code is also 8 */
        q = rintf(a * 512.0f);
        return sign | (uint8_t) q;
    }

    frexpf(a, &e);                        /* a = f * 2^e, f in [0.5, 1) */
    e -= 1;                               /* a = 1.m * 2^e */
    mant = rintf((ldexpf(a, -e) - 1.0f) * 8.0f);     /* exact, RNE */

    if (mant >= 8.0f) {
        mant = 0.0f;
        e += 1;
    }

    be = e + 7;

    if (be > 15 || (be == 15 && mant >= 7.0f)) {
        return sign | 0x7e;               /* saturate to 448 */
    }

    return sign | (uint8_t) ((be << 3) | (int) mant);
}


float
kimi_bf16_to_f32(uint16_t v)
{
    uint32_t  bits = (uint32_t) v << 16;
    float     f;

    memcpy(&f, &bits, 4);
    return f;
}


uint16_t
kimi_f32_to_bf16(float x)
{
    uint32_t  bits;

    memcpy(&bits, &x, 4);

    if (isnan(x)) {
        return (uint16_t) ((bits >> 16) | 0x40);   /* keep it a NaN */
    }

    bits += 0x7fff + ((bits >> 16) & 1);            /* round half even */
    return (uint16_t) (bits >> 16);
}


void
kimi_fp8_dequant(const uint8_t *w, const float *scale_inv, uint32_t rows,
    uint32_t cols, float *out)
{
    const float  *lut = kimi_fp8_table();
    uint32_t      nbc = (cols + KIMI_ACT_GROUP - 1) / KIMI_ACT_GROUP;

    for (uint32_t r = 0; r < rows; r++) {
        const float  *srow = scale_inv + (size_t) (r / 128) * nbc;

        for (uint32_t c = 0; c < cols; c++) {
            out[(size_t) r * cols + c] = lut[w[(size_t) r * cols + c]]
                                         * srow[c / 128];
        }
    }
}


void
kimi_fp8_quant_blocks(const float *w, uint32_t rows, uint32_t cols,
    uint8_t *q, float *scale_inv)
{
    uint32_t  nbr = (rows + 127) / 128, nbc = (cols + 127) / 128;

    for (uint32_t br = 0; br < nbr; br++) {
        for (uint32_t bc = 0; bc < nbc; bc++) {
            uint32_t  r1 = br * 128 + 128 < rows ? br * 128 + 128 : rows;
            uint32_t  c1 = bc * 128 + 128 < cols ? bc * 128 + 128 : cols;
            float     amax = 0.0f, s;

            for (uint32_t r = br * 128; r < r1; r++) {
                for (uint32_t c = bc * 128; c < c1; c++) {
                    float  a = fabsf(w[(size_t) r * cols + c]);
                    amax = a > amax ? a : amax;
                }
            }

            s = amax > 0.0f ? amax / KIMI_FP8_MAX : 1.0f;
            scale_inv[(size_t) br * nbc + bc] = s;

            for (uint32_t r = br * 128; r < r1; r++) {
                for (uint32_t c = bc * 128; c < c1; c++) {
                    q[(size_t) r * cols + c] =
                        kimi_f32_to_fp8(w[(size_t) r * cols + c] / s);
                }
            }
        }
    }
}


void
kimi_act_quant_fp8(const float *x, uint32_t T, uint32_t K, uint8_t *xq,
    float *xs)
{
    uint32_t  ng = (K + KIMI_ACT_GROUP - 1) / KIMI_ACT_GROUP;

    for (uint32_t t = 0; t < T; t++) {
        const float  *row = x + (size_t) t * K;

        for (uint32_t g = 0; g < ng; g++) {
            uint32_t  k0 = g * KIMI_ACT_GROUP;
            uint32_t  k1 = k0 + KIMI_ACT_GROUP < K ? k0 + KIMI_ACT_GROUP : K;
            float     amax = KIMI_ACT_AMAX_MIN, s;

            for (uint32_t k = k0; k < k1; k++) {
                float  a = fabsf(row[k]);
                amax = a > amax ? a : amax;
            }

            s = amax / KIMI_FP8_MAX;
            xs[(size_t) t * ng + g] = s;

            for (uint32_t k = k0; k < k1; k++) {
                xq[(size_t) t * K + k] = kimi_f32_to_fp8(row[k] / s);
            }
        }
    }
}


static inline float
kimi_dot(const float *a, const float *b, uint32_t n)
{
    /* four partial sums: lets the compiler vectorise without -ffast-math */
    float     s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    uint32_t  i = 0;

    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }

    for (; i < n; i++) {
        s0 += a[i] * b[i];
    }

    return (s0 + s1) + (s2 + s3);
}


void
kimi_gemm_f32_fp8w(const float *X, uint32_t T, uint32_t K, const uint8_t *W,
    const float *scale_inv, uint32_t N, uint32_t n0, uint32_t n1, float *Y)
{
    const float  *lut = kimi_fp8_table();
    uint32_t      nbc = (K + 127) / 128;
    float         wb[128];

    for (uint32_t n = n0; n < n1; n++) {
        const uint8_t  *wrow = W + (size_t) n * K;
        const float    *srow = scale_inv + (size_t) (n / 128) * nbc;

        for (uint32_t t = 0; t < T; t++) {
            Y[(size_t) t * N + n] = 0.0f;
        }

        for (uint32_t g = 0; g < nbc; g++) {
            uint32_t  k0 = g * 128, len = K - k0 < 128 ? K - k0 : 128;
            float     s = srow[g];

            for (uint32_t k = 0; k < len; k++) {
                wb[k] = lut[wrow[k0 + k]] * s;
            }

            for (uint32_t t = 0; t < T; t++) {
                Y[(size_t) t * N + n] += kimi_dot(X + (size_t) t * K + k0,
                                                  wb, len);
            }
        }
    }
}


void
kimi_gemm_fp8a_fp8w(const uint8_t *Xq, const float *xs, uint32_t T,
    uint32_t K, const uint8_t *W, const float *scale_inv, uint32_t N,
    uint32_t n0, uint32_t n1, float *Y)
{
    const float  *lut = kimi_fp8_table();
    uint32_t      nbc = (K + 127) / 128;
    float         wb[128], xb[128];

    for (uint32_t n = n0; n < n1; n++) {
        const uint8_t  *wrow = W + (size_t) n * K;
        const float    *srow = scale_inv + (size_t) (n / 128) * nbc;

        for (uint32_t t = 0; t < T; t++) {
            Y[(size_t) t * N + n] = 0.0f;
        }

        for (uint32_t g = 0; g < nbc; g++) {
            uint32_t  k0 = g * 128, len = K - k0 < 128 ? K - k0 : 128;

            for (uint32_t k = 0; k < len; k++) {
                wb[k] = lut[wrow[k0 + k]];
            }

            for (uint32_t t = 0; t < T; t++) {
                const uint8_t  *xrow = Xq + (size_t) t * K + k0;

                for (uint32_t k = 0; k < len; k++) {
                    xb[k] = lut[xrow[k]];
                }

                Y[(size_t) t * N + n] += kimi_dot(xb, wb, len)
                                         * xs[(size_t) t * nbc + g] * srow[g];
            }
        }
    }
}


/* bf16 widening is a 16-bit shift; doing it inside the dot keeps the
 * weight row streaming (lm_head is the largest read of a decode step). */
static inline float
kimi_dot_bf16(const float *x, const uint16_t *w, uint32_t n)
{
    float     s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    uint32_t  i = 0;

    for (; i + 4 <= n; i += 4) {
        s0 += x[i] * kimi_bf16_to_f32(w[i]);
        s1 += x[i + 1] * kimi_bf16_to_f32(w[i + 1]);
        s2 += x[i + 2] * kimi_bf16_to_f32(w[i + 2]);
        s3 += x[i + 3] * kimi_bf16_to_f32(w[i + 3]);
    }

    for (; i < n; i++) {
        s0 += x[i] * kimi_bf16_to_f32(w[i]);
    }

    return (s0 + s1) + (s2 + s3);
}


void
kimi_gemm_f32_bf16w(const float *X, uint32_t T, uint32_t K,
    const uint16_t *W, uint32_t N, uint32_t n0, uint32_t n1, float *Y)
{
    float  wb[8192];

    /* kimi_dot and kimi_dot_bf16 add in the same order, so widening a row
     * once for many tokens gives bitwise the decode path's result */
    for (uint32_t n = n0; n < n1; n++) {
        const uint16_t  *wrow = W + (size_t) n * K;

        if (T <= 2 || K > 8192) {
            for (uint32_t t = 0; t < T; t++) {
                Y[(size_t) t * N + n] = kimi_dot_bf16(X + (size_t) t * K,
                                                      wrow, K);
            }

            continue;
        }

        for (uint32_t k = 0; k < K; k++) {
            wb[k] = kimi_bf16_to_f32(wrow[k]);
        }

        for (uint32_t t = 0; t < T; t++) {
            Y[(size_t) t * N + n] = kimi_dot(X + (size_t) t * K, wb, K);
        }
    }
}


void
kimi_gemm_f32_f32w(const float *X, uint32_t T, uint32_t K, const float *W,
    uint32_t N, uint32_t n0, uint32_t n1, float *Y)
{
    for (uint32_t n = n0; n < n1; n++) {
        for (uint32_t t = 0; t < T; t++) {
            Y[(size_t) t * N + n] = kimi_dot(X + (size_t) t * K,
                                             W + (size_t) n * K, K);
        }
    }
}


void
kimi_rmsnorm(const float *x, const float *w, uint32_t n, float eps, float *y)
{
    float  ss = 0.0f, r;

    for (uint32_t i = 0; i < n; i++) {
        ss += x[i] * x[i];
    }

    r = 1.0f / sqrtf(ss / (float) n + eps);

    for (uint32_t i = 0; i < n; i++) {
        y[i] = w[i] * (x[i] * r);
    }
}


void
kimi_rmsnorm_residual(float *h, const float *add, const float *w, uint32_t n,
    float eps, float *y)
{
    for (uint32_t i = 0; i < n; i++) {
        h[i] += add[i];
    }

    kimi_rmsnorm(h, w, n, eps, y);
}


void
kimi_silu_mul(const float *gate, const float *up, uint32_t n, float *out)
{
    for (uint32_t i = 0; i < n; i++) {
        float  g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}


void
kimi_softmax(float *x, uint32_t n)
{
    float  mx = -INFINITY, sum = 0.0f;

    for (uint32_t i = 0; i < n; i++) {
        mx = x[i] > mx ? x[i] : mx;
    }

    for (uint32_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }

    for (uint32_t i = 0; i < n; i++) {
        x[i] /= sum;
    }
}


float
kimi_yarn_mscale(float scale, float m)
{
    if (scale <= 1.0f) {
        return 1.0f;
    }

    return (float) (0.1 * m * log((double) scale) + 1.0);
}


static double
kimi_yarn_corr_dim(double n_rot, double dim, double base, double orig)
{
    return dim * log(orig / (n_rot * 2.0 * M_PI)) / (2.0 * log(base));
}


void
kimi_rope_inv_freq(const kimi_rope_params_t *p, float *inv_freq,
    float *attn_factor)
{
    uint32_t  half = p->rope_dim / 2;
    double    dim = p->rope_dim, low = 0, high = 0;

    if (p->yarn) {
        low = floor(kimi_yarn_corr_dim(p->beta_fast, dim, p->theta,
                                       p->original_max_pos));
        high = ceil(kimi_yarn_corr_dim(p->beta_slow, dim, p->theta,
                                       p->original_max_pos));
        low = low < 0 ? 0 : low;
        high = high > dim - 1 ? dim - 1 : high;

        if (low == high) {
            high += 0.001;                /* avoid a zero-width ramp */
        }
    }

    for (uint32_t i = 0; i < half; i++) {
        double  base = pow((double) p->theta, -2.0 * i / dim), f = base;

        if (p->yarn) {
            double  ramp = ((double) i - low) / (high - low);

            ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
            /* ramp 0: extrapolate (keep base), ramp 1: interpolate */
            f = base / p->factor * ramp + base * (1.0 - ramp);
        }

        inv_freq[i] = (float) f;
    }

    *attn_factor = p->yarn ? kimi_yarn_mscale(p->factor, p->mscale)
                             / kimi_yarn_mscale(p->factor, p->mscale_all_dim)
                           : 1.0f;
}


void
kimi_rope_cos_sin(const float *inv_freq, uint32_t n_pairs, uint32_t pos,
    float attn_factor, float *cos_out, float *sin_out)
{
    for (uint32_t i = 0; i < n_pairs; i++) {
        /* the angle is rounded to fp32 as HF, DS-REF and vLLM do
         * (float(pos) * inv_freq); cos/sin of it are then exact */
        float  ang = (float) pos * inv_freq[i];

        cos_out[i] = (float) cos((double) ang) * attn_factor;
        sin_out[i] = (float) sin((double) ang) * attn_factor;
    }
}


void
kimi_rope_apply(float *x, const float *cos_v, const float *sin_v,
    uint32_t n_pairs)
{
    for (uint32_t i = 0; i < n_pairs; i++) {
        float  a = x[2 * i], b = x[2 * i + 1];

        x[2 * i] = a * cos_v[i] - b * sin_v[i];
        x[2 * i + 1] = a * sin_v[i] + b * cos_v[i];
    }
}


/* Index of the largest v[i] among allowed ones; ties -> lower index. */
static int
kimi_argmax_masked(const float *v, const uint8_t *allowed, uint32_t n)
{
    int  best = -1;

    for (uint32_t i = 0; i < n; i++) {
        if (allowed[i] && (best < 0 || v[i] > v[best])) {
            best = (int) i;
        }
    }

    return best;
}


int
kimi_moe_route(int router, const float *logits, const float *bias,
    uint32_t n_experts, uint32_t n_group, uint32_t topk_group,
    uint32_t top_k, int norm_topk_prob, float routed_scaling_factor,
    int32_t *ids, float *weights)
{
    float     s[1024], sel[1024], gscore[1024], sum = 0.0f;
    uint8_t   allowed[1024], gallowed[1024];
    uint32_t  gsize;

    if (n_experts == 0 || n_experts > 1024 || n_group == 0
        || n_experts % n_group != 0 || topk_group == 0
        || topk_group > n_group || top_k == 0)
    {
        return -1;
    }

    if (router == KIMI_ROUTER_GREEDY) {
        n_group = topk_group = 1;           /* every expert, one group */
    }

    gsize = n_experts / n_group;

    if (top_k > topk_group * gsize) {
        return -1;
    }

    if (router == KIMI_ROUTER_NOAUX_TC) {
        for (uint32_t e = 0; e < n_experts; e++) {
            s[e] = 1.0f / (1.0f + expf(-logits[e]));
            sel[e] = s[e] + (bias ? bias[e] : 0.0f);
        }

    } else {
        float  mx = -INFINITY, z = 0.0f;

        for (uint32_t e = 0; e < n_experts; e++) {
            mx = fmaxf(mx, logits[e]);
        }
        for (uint32_t e = 0; e < n_experts; e++) {
            s[e] = expf(logits[e] - mx);
            z += s[e];
        }
        for (uint32_t e = 0; e < n_experts; e++) {
            s[e] /= z;
            sel[e] = s[e];
        }
    }

    /* group score: sum of the two best sel in the group (one if gsize 1);
     * DeepSeek-V2: the best */
    for (uint32_t g = 0; g < n_group; g++) {
        float  b1 = -INFINITY, b2 = -INFINITY;

        for (uint32_t j = 0; j < gsize; j++) {
            float  v = sel[g * gsize + j];

            if (v > b1) {
                b2 = b1;
                b1 = v;

            } else if (v > b2) {
                b2 = v;
            }
        }

        gscore[g] = gsize > 1 && router == KIMI_ROUTER_NOAUX_TC ? b1 + b2
                                                                 : b1;
        gallowed[g] = 1;
    }

    memset(allowed, 0, n_experts);

    for (uint32_t k = 0; k < topk_group; k++) {
        int  g = kimi_argmax_masked(gscore, gallowed, n_group);

        gallowed[g] = 0;
        memset(allowed + (size_t) g * gsize, 1, gsize);
    }

    for (uint32_t k = 0; k < top_k; k++) {
        int  e = kimi_argmax_masked(sel, allowed, n_experts);

        allowed[e] = 0;
        ids[k] = e;
        weights[k] = s[e];
        sum += s[e];
    }

    for (uint32_t k = 0; k < top_k; k++) {
        if (norm_topk_prob) {
            weights[k] /= sum + 1e-20f;
        }

        weights[k] *= routed_scaling_factor;
    }

    return 0;
}


void
kimi_mla_prefill_naive(const float *q, const float *k, const float *v,
    uint32_t T, uint32_t S, uint32_t pos0, uint32_t H, uint32_t dqk,
    uint32_t dv, float scale, uint32_t h0, uint32_t h1, float *scratch,
    float *out)
{
    for (uint32_t t = 0; t < T; t++) {
        uint32_t  n_ctx = pos0 + t + 1;           /* causal */

        for (uint32_t h = h0; h < h1; h++) {
            const float  *qh = q + ((size_t) t * H + h) * dqk;
            float        *oh = out + ((size_t) t * H + h) * dv;

            for (uint32_t s = 0; s < n_ctx && s < S; s++) {
                scratch[s] = kimi_dot(qh, k + ((size_t) s * H + h) * dqk, dqk)
                             * scale;
            }

            kimi_softmax(scratch, n_ctx < S ? n_ctx : S);
            memset(oh, 0, dv * sizeof(float));

            for (uint32_t s = 0; s < n_ctx && s < S; s++) {
                const float  *vs = v + ((size_t) s * H + h) * dv;

                for (uint32_t d = 0; d < dv; d++) {
                    oh[d] += scratch[s] * vs[d];
                }
            }
        }
    }
}


static inline size_t
kimi_kv_row(const kimi_cpu_kv_view_t *kv, const uint32_t *block_table,
    uint32_t pos)
{
    return (size_t) block_table[pos / kv->block_size] * kv->block_size
           + pos % kv->block_size;
}


/*
 * FP8 blocks are planar: [block][width / 16][block_size][16], 16-byte runs
 * of every row per plane - the order of wgmma's unswizzled K-major core
 * matrices, so the GPU copies a 64-row block into shared memory as one
 * contiguous run and multiplies it where it lands.  The run of row `row`
 * that starts at byte p0 (a multiple of 16), and its length (a last plane
 * may be narrower).
 */
static uint8_t *
kimi_kv_fp8_run(const kimi_cpu_kv_view_t *kv, size_t row, uint32_t p0,
    uint32_t *len)
{
    uint32_t  w = kv->kv_lora_rank + kv->rope_dim;
    size_t    blk = row / kv->block_size, r = row % kv->block_size;

    *len = w - p0 < 16 ? w - p0 : 16;

    return (uint8_t *) kv->data + blk * kv->block_size * w
           + (size_t) p0 * kv->block_size + r * *len;
}


void
kimi_kv_write(const kimi_cpu_kv_view_t *kv, const uint32_t *block_table,
    uint32_t pos, const float *c, const float *k_pe)
{
    uint32_t  w = kv->kv_lora_rank + kv->rope_dim;
    size_t    row = kimi_kv_row(kv, block_table, pos);
    float     amax = KIMI_ACT_AMAX_MIN, s;

    switch (kv->dtype) {

    case KIMI_CPU_KV_F32: {
        float  *dst = (float *) kv->data + row * w;

        memcpy(dst, c, kv->kv_lora_rank * sizeof(float));
        memcpy(dst + kv->kv_lora_rank, k_pe, kv->rope_dim * sizeof(float));
        break;
    }

    case KIMI_CPU_KV_BF16: {
        uint16_t  *dst = (uint16_t *) kv->data + row * w;

        for (uint32_t i = 0; i < kv->kv_lora_rank; i++) {
            dst[i] = kimi_f32_to_bf16(c[i]);
        }

        for (uint32_t i = 0; i < kv->rope_dim; i++) {
            dst[kv->kv_lora_rank + i] = kimi_f32_to_bf16(k_pe[i]);
        }

        break;
    }

    case KIMI_CPU_KV_FP8: {
        uint8_t   *run;
        uint32_t   len;

        for (uint32_t i = 0; i < kv->kv_lora_rank; i++) {
            amax = fabsf(c[i]) > amax ? fabsf(c[i]) : amax;
        }

        for (uint32_t i = 0; i < kv->rope_dim; i++) {
            amax = fabsf(k_pe[i]) > amax ? fabsf(k_pe[i]) : amax;
        }

        s = amax / KIMI_FP8_MAX;
        kv->scales[row] = s;

        for (uint32_t p0 = 0; p0 < w; p0 += 16) {
            run = kimi_kv_fp8_run(kv, row, p0, &len);

            for (uint32_t j = 0; j < len; j++) {
                uint32_t  i = p0 + j;
                float     v = i < kv->kv_lora_rank
                              ? c[i] : k_pe[i - kv->kv_lora_rank];

                run[j] = kimi_f32_to_fp8(v / s);
            }
        }

        break;
    }
    }
}


void
kimi_kv_read(const kimi_cpu_kv_view_t *kv, const uint32_t *block_table,
    uint32_t pos, float *out)
{
    uint32_t      w = kv->kv_lora_rank + kv->rope_dim;
    size_t        row = kimi_kv_row(kv, block_table, pos);
    const float  *lut;

    switch (kv->dtype) {

    case KIMI_CPU_KV_F32:
        memcpy(out, (const float *) kv->data + row * w, w * sizeof(float));
        break;

    case KIMI_CPU_KV_BF16: {
        const uint16_t  *src = (const uint16_t *) kv->data + row * w;

        for (uint32_t i = 0; i < w; i++) {
            out[i] = kimi_bf16_to_f32(src[i]);
        }

        break;
    }

    case KIMI_CPU_KV_FP8: {
        const uint8_t  *run;
        uint32_t        len;
        float           s = kv->scales[row];

        lut = kimi_fp8_table();

        for (uint32_t p0 = 0; p0 < w; p0 += 16) {
            run = kimi_kv_fp8_run(kv, row, p0, &len);

            for (uint32_t j = 0; j < len; j++) {
                out[p0 + j] = lut[run[j]] * s;
            }
        }

        break;
    }
    }
}


void
kimi_mla_decode_absorbed(const kimi_cpu_kv_view_t *kv,
    const uint32_t *block_table, uint32_t n_ctx, const float *q_lat,
    const float *q_pe, uint32_t H, float scale, uint32_t h0, uint32_t h1,
    float *scratch, float *o_lat)
{
    uint32_t  R = kv->kv_lora_rank, P = kv->rope_dim, nh = h1 - h0;
    float    *p = scratch;                       /* [nh][n_ctx] */
    float    *tok = scratch + (size_t) nh * n_ctx;   /* [R + P] */

    (void) H;

    /* scores: bshc,btc->bsht over the latent, plus the rope part */
    for (uint32_t s = 0; s < n_ctx; s++) {
        kimi_kv_read(kv, block_table, s, tok);

        for (uint32_t h = h0; h < h1; h++) {
            p[(size_t) (h - h0) * n_ctx + s] =
                (kimi_dot(q_lat + (size_t) h * R, tok, R)
                 + kimi_dot(q_pe + (size_t) h * P, tok + R, P)) * scale;
        }
    }

    for (uint32_t h = h0; h < h1; h++) {
        kimi_softmax(p + (size_t) (h - h0) * n_ctx, n_ctx);
        memset(o_lat + (size_t) h * R, 0, R * sizeof(float));
    }

    /* bsht,btc->bshc: weighted sum of latents */
    for (uint32_t s = 0; s < n_ctx; s++) {
        kimi_kv_read(kv, block_table, s, tok);

        for (uint32_t h = h0; h < h1; h++) {
            float   ps = p[(size_t) (h - h0) * n_ctx + s];
            float  *oh = o_lat + (size_t) h * R;

            for (uint32_t d = 0; d < R; d++) {
                oh[d] += ps * tok[d];
            }
        }
    }
}
