/*
 * CPU primitive ops of the Kimi-K2 forward pass: the "CPU twins" every
 * CUDA kernel is tested against.
 *
 * Owns:   the exact arithmetic of each op (fp32 accumulation, rounding of
 *         fp8 conversions, group sizes, tie-breaks), single-threaded; the
 *         caller splits work with the [n0, n1) ranges.
 * Never:  allocates (except where a scratch size is stated), threads, or
 *         knows about layers, requests or the KV block allocator.
 *
 * Layouts are row-major.  Weights are PyTorch Linear [N = out][K = in];
 * Y[T][N] = X[T][K] * W[N][K]^T.
 */

#ifndef KIMI_CPU_OPS_H
#define KIMI_CPU_OPS_H

#include <stdint.h>
#include <stddef.h>

#include "../../model/router.h"

#define KIMI_FP8_MAX       448.0f        /* largest finite e4m3fn */
#define KIMI_ACT_GROUP     128           /* activation quant group (1x128) */
#define KIMI_ACT_AMAX_MIN  1e-4f         /* DS-REF act_quant floor on amax */

/* ---- fp8 e4m3fn (1-4-3, bias 7, no inf, 0x7f/0xff NaN, max 448) ---- */

float   kimi_fp8_to_f32(uint8_t v);
/* Round to nearest even; |x| > 448 saturates to +-448 (CUDA SATFINITE);
 * NaN -> 0x7f. */
uint8_t kimi_f32_to_fp8(float x);

float    kimi_bf16_to_f32(uint16_t v);
uint16_t kimi_f32_to_bf16(float x);          /* round to nearest even */

/* out[r][c] = fp8[r][c] * scale_inv[r/128][c/128]; partial edge blocks use
 * their block's scale.  out is [rows][cols]. */
void kimi_fp8_dequant(const uint8_t *w, const float *scale_inv,
    uint32_t rows, uint32_t cols, float *out);

/* Quantises a weight into fp8 blocks (scale = amax/448 per 128x128 block;
 * an all-zero block gets scale 1).  Used by the dummy loader and the tiny
 * model generator. scale_inv is [ceil(rows/128)][ceil(cols/128)]. */
void kimi_fp8_quant_blocks(const float *w, uint32_t rows, uint32_t cols,
    uint8_t *q, float *scale_inv);

/* Activation quantisation, per row per 128-column group (DS-REF act_quant):
 * s = max(amax, 1e-4)/448, q = fp8(x/s).  xq [T][K], xs [T][ceil(K/128)]. */
void kimi_act_quant_fp8(const float *x, uint32_t T, uint32_t K,
    uint8_t *xq, float *xs);

/* ---- GEMM: computes Y[t][n] for n in [n0, n1), all t ---- */

/* FP8 weight, fp32 activation: Y = X * dequant(W)^T, fp32 accumulation. */
void kimi_gemm_f32_fp8w(const float *X, uint32_t T, uint32_t K,
    const uint8_t *W, const float *scale_inv, uint32_t N,
    uint32_t n0, uint32_t n1, float *Y);

/* FP8 weight, FP8 activation (1x128 groups): per 128-wide k group g,
 * acc += (sum_k xq*wq) * xs[t][g] * scale_inv[n/128][g], in fp32. */
void kimi_gemm_fp8a_fp8w(const uint8_t *Xq, const float *xs, uint32_t T,
    uint32_t K, const uint8_t *W, const float *scale_inv, uint32_t N,
    uint32_t n0, uint32_t n1, float *Y);

/* BF16 weight (embedding-shaped lm_head, router), fp32 activation. */
void kimi_gemm_f32_bf16w(const float *X, uint32_t T, uint32_t K,
    const uint16_t *W, uint32_t N, uint32_t n0, uint32_t n1, float *Y);

/* F32 weight. */
void kimi_gemm_f32_f32w(const float *X, uint32_t T, uint32_t K,
    const float *W, uint32_t N, uint32_t n0, uint32_t n1, float *Y);

/* ---- norms and elementwise ---- */

/* y = w * x / sqrt(mean(x^2) + eps); y may alias x. */
void kimi_rmsnorm(const float *x, const float *w, uint32_t n, float eps,
    float *y);

/* Fused residual: h += add (in place), then y = rmsnorm(h). */
void kimi_rmsnorm_residual(float *h, const float *add, const float *w,
    uint32_t n, float eps, float *y);

/* out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)). */
void kimi_silu_mul(const float *gate, const float *up, uint32_t n,
    float *out);

/* In-place numerically stable softmax over n values (fp32). */
void kimi_softmax(float *x, uint32_t n);

/* ---- RoPE / YaRN (kimi-k2-facts.md §4.1) ---- */

typedef struct {
    uint32_t  rope_dim;                /* qk_rope_head_dim (even) */
    float     theta;                   /* rope_theta */
    int       yarn;                    /* 0: plain RoPE */
    float     factor;
    float     beta_fast;
    float     beta_slow;
    float     mscale;
    float     mscale_all_dim;
    uint32_t  original_max_pos;
} kimi_rope_params_t;

/* yarn_get_mscale: 1 if s <= 1 else 0.1 * m * ln(s) + 1 */
float kimi_yarn_mscale(float scale, float m);

/* inv_freq[rope_dim/2] and the cos/sin amplitude (attention factor)
 * mscale(factor, mscale) / mscale(factor, mscale_all_dim) (1 if not yarn).
 * Computed in double, stored as float. */
void kimi_rope_inv_freq(const kimi_rope_params_t *p, float *inv_freq,
    float *attn_factor);

/* cos/sin[rope_dim/2] for position pos: cos(ang) * attn_factor with
 * ang = float(pos) * inv_freq_i rounded to fp32 (as HF, DS-REF and vLLM
 * compute it); cos/sin of that angle are evaluated in double. */
void kimi_rope_cos_sin(const float *inv_freq, uint32_t n_pairs,
    uint32_t pos, float attn_factor, float *cos_out, float *sin_out);

/* Interleaved pairs: y[2i] = x[2i]c - x[2i+1]s, y[2i+1] = x[2i]s + x[2i+1]c,
 * in place on x[2 * n_pairs]. */
void kimi_rope_apply(float *x, const float *cos_v, const float *sin_v,
    uint32_t n_pairs);

/* ---- MoE router (kimi-k2-facts.md §4.3) ---- */

/*
 * logits[n_experts] (router GEMM output) -> ids[top_k], weights[top_k].
 * router KIMI_ROUTER_NOAUX_TC (DeepSeek-V3): s = sigmoid(logit); sel = s +
 * bias (bias may be NULL); group score = sum of the top-2 sel in the group
 * (DS-REF / HF noaux_tc).  KIMI_ROUTER_GREEDY / _GROUP_GREEDY (DeepSeek-V2):
 * s = softmax(logits) = sel; one group of all experts / group score = the
 * group's best s.  Keep the topk_group best groups, then the top_k best sel
 * among their experts.  weights = s[id] (unbiased), / (sum + 1e-20) if
 * norm, then * scaling (vLLM's order for both: DeepSeek-V2's files do not
 * normalise).  Tie-break everywhere: the lower index wins (groups and
 * experts).  ids come out sorted by sel descending (ties: lower id first).
 * n_experts <= 1024; n_group divides n_experts.  Returns 0, or -1 on bad
 * arguments.
 */
int kimi_moe_route(int router, const float *logits, const float *bias,
    uint32_t n_experts, uint32_t n_group, uint32_t topk_group,
    uint32_t top_k, int norm_topk_prob, float routed_scaling_factor,
    int32_t *ids, float *weights);

/* ---- MLA attention ---- */

/*
 * Naive (expanded) MLA prefill for one sequence with all keys in memory:
 * q [T][H][dqk], k [S][H][dqk], v [S][H][dv], query t is at position
 * pos0 + t and key s at position s (S = pos0 + T); causal.
 * out [T][H][dv].  scratch: S floats.  Heads [h0, h1).
 */
void kimi_mla_prefill_naive(const float *q, const float *k, const float *v,
    uint32_t T, uint32_t S, uint32_t pos0, uint32_t H, uint32_t dqk,
    uint32_t dv, float scale, uint32_t h0, uint32_t h1, float *scratch,
    float *out);

/* One layer's paged latent cache as the attention reads it. */
typedef enum {
    KIMI_CPU_KV_F32 = 0,
    KIMI_CPU_KV_BF16 = 1,
    KIMI_CPU_KV_FP8 = 2,               /* + one f32 scale per token */
} kimi_cpu_kv_dtype_e;

typedef struct {
    void                *data;         /* [n_blocks][block_size][width];
                                          FP8: [n_blocks][width / 16][block_size][16] */
    float               *scales;       /* FP8: [n_blocks][block_size] */
    kimi_cpu_kv_dtype_e  dtype;
    uint32_t             block_size;
    uint32_t             kv_lora_rank; /* 512 */
    uint32_t             rope_dim;     /* 64; width = kv_lora_rank + rope */
    uint32_t             n_blocks;
} kimi_cpu_kv_view_t;

/* Writes token (c [kv_lora_rank], k_pe [rope_dim]) at position pos.
 * FP8: scale = max(amax, 1e-4) / 448 over the 576 values. */
void kimi_kv_write(const kimi_cpu_kv_view_t *kv, const uint32_t *block_table,
    uint32_t pos, const float *c, const float *k_pe);

/* Reads one token's 576 values as fp32. */
void kimi_kv_read(const kimi_cpu_kv_view_t *kv, const uint32_t *block_table,
    uint32_t pos, float *out);

/*
 * Absorbed MLA over the paged cache for one query token that sees
 * positions [0, n_ctx):  for each head h in [h0, h1):
 *   score_s = (q_lat[h] . c_s + q_pe[h] . k_pe_s) * scale, p = softmax(score)
 *   o_lat[h] = sum_s p_s c_s                      [kv_lora_rank]
 * q_lat [H][kv_lora_rank] is W_UK_h^T q_nope_h; q_pe [H][rope_dim] rotated.
 * The caller applies W_UV.  Each cached token is read once for all heads.
 * scratch: (h1 - h0) * n_ctx + kv_lora_rank + rope_dim floats.
 */
void kimi_mla_decode_absorbed(const kimi_cpu_kv_view_t *kv,
    const uint32_t *block_table, uint32_t n_ctx, const float *q_lat,
    const float *q_pe, uint32_t H, float scale, uint32_t h0, uint32_t h1,
    float *scratch, float *o_lat);

#endif
