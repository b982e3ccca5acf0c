/*
 * CUDA kernels for Kimi-K2 (DeepSeek-V3 architecture) on Hopper, C entry points.
 *
 * Owns:   the launchers of every kernel family in kernels/ (.cu files): their
 *         preconditions, grid choice and the layouts they read and write.
 * Never:  allocates device memory, synchronizes, or keeps state between
 *         calls (except kimi_cublaslt_t, created once): callers pass every
 *         buffer and workspace, so a decode step can be captured in a graph.
 *
 * Notation (reference/gpu-anchors.md): Y[T,N] = X[T,K] * W[N,K]^T, T tokens,
 * row-major, last dim contiguous.  bf16 is stored as uint16_t, fp8 e4m3 as
 * uint8_t.  FP8 weights carry one fp32 dequantisation multiplier per 128x128
 * block (checkpoint "weight_scale_inv" [ceil(N/128)][K/128]); FP8 activations
 * one per 1x128 group: s = max(amax, 1e-4) / 448, q = e4m3(x / s).
 *
 * Every entry returns KIMI_OK or a negative kimi_err_t code with the message
 * (KIMI_EINVAL names the bad shape, KIMI_ECUDA the call, file and line).
 */

#ifndef KIMI_KERNELS_H
#define KIMI_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "../engine/common/kimi_err.h"
#include "../engine/model/router.h"          /* KIMI_ROUTER_*, for the router kernels */

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t kimi_bf16_t;

/* ---- norm.cu --------------------------------------------------------- */

/* y[t,:] = bf16(x[t,:] * rsqrt(mean(x^2) + eps) * w); D % 8 == 0. */
int kimi_rmsnorm_bf16(const kimi_bf16_t *x, const kimi_bf16_t *w,
                      kimi_bf16_t *y, int T, int D, float eps,
                      cudaStream_t s, kimi_err_t *err);

/* res[t,:] += x[t,:] (stored back, bf16), then y = rmsnorm(res) as above. */
int kimi_rmsnorm_residual_bf16(const kimi_bf16_t *x, kimi_bf16_t *res,
                               const kimi_bf16_t *w, kimi_bf16_t *y,
                               int T, int D, float eps,
                               cudaStream_t s, kimi_err_t *err);

/* fp32 forms (the engine's residual stream): x, res, y fp32 [T, D], w bf16;
 * y = w * (r * rstd) with rstd = 1 / sqrt(mean(r^2) + eps), the CPU
 * oracle's order; D % 8 == 0, 16-byte aligned. */
int kimi_rmsnorm_f32(const float *x, const kimi_bf16_t *w, float *y, int T,
                     int D, float eps, cudaStream_t s, kimi_err_t *err);
int kimi_rmsnorm_residual_f32(const float *x, float *res, const kimi_bf16_t *w,
                              float *y, int T, int D, float eps,
                              cudaStream_t s, kimi_err_t *err);

/* rmsnorm_f32 (res NULL) or rmsnorm_residual_f32 (res set) that also
 * writes y's FP8 e4m3 codes and 1x128 scales (xq [T][D]; xs [T][D/128],
 * and xs_mn [D/128][ld_mn] for cuBLASLt when not NULL) exactly as
 * kimi_fp8_quant_1x128_f32 would from y: one launch instead of two or
 * three.  D % 128 == 0. */
int kimi_rmsnorm_quant_f32(const float *x, float *res, const kimi_bf16_t *w, float *y,
                           int T, int D, float eps, uint8_t *xq, float *xs,
                           float *xs_mn, int ld_mn, cudaStream_t s, kimi_err_t *err);

/* ---- rope.cu --------------------------------------------------------- */

#define KIMI_ROPE_MAX_PAIRS 64

typedef struct {
    int    rot_dim;                          /* 64 for Kimi-K2 */
    float  mscale;                           /* cos/sin amplitude (1.0 for K2) */
    float  inv_freq[KIMI_ROPE_MAX_PAIRS];    /* rot_dim / 2 used */
} kimi_rope_t;

/* Host: YaRN frequencies (DeepSeek-V3 precompute_freqs_cis); factor <= 1
 * gives plain RoPE.  No device work. */
int kimi_rope_yarn_init(kimi_rope_t *r, int rot_dim, double theta,
                        double factor, int orig_max_pos, double beta_fast,
                        double beta_slow, double mscale,
                        double mscale_all_dim, kimi_err_t *err);

/* In place, interleaved pairs (x[2i], x[2i+1]) rotated by pos[t]*inv_freq[i]:
 * q[t*q_ld + h*q_hd + i] for h < n_heads (q may be NULL), k[t*k_ld + i]
 * (k may be NULL). */
int kimi_rope_bf16(kimi_bf16_t *q, int q_ld, int q_hd, int n_heads,
                   kimi_bf16_t *k, int k_ld, const int32_t *pos, int T,
                   const kimi_rope_t *r, cudaStream_t s, kimi_err_t *err);

/* The same on fp32 q / k. */
int kimi_rope_f32(float *q, int q_ld, int q_hd, int n_heads, float *k,
                  int k_ld, const int32_t *pos, int T, const kimi_rope_t *r,
                  cudaStream_t s, kimi_err_t *err);

/* ---- quant.cu -------------------------------------------------------- */

/* xq[t,k] = e4m3(x[t,k] / s[t,k/128]); K % 128 == 0.  The scales go to
 * xs[t*(K/128) + kb] (token-major) and/or xs_mn[kb*ld_mn + t] (cuBLASLt's
 * VEC128 layout, ld_mn >= T, rows T..ld_mn-1 untouched); either may be
 * NULL, not both. */
int kimi_fp8_quant_1x128(const kimi_bf16_t *x, int ldx, int T, int K,
                         uint8_t *xq, float *xs, float *xs_mn, int ld_mn,
                         cudaStream_t s, kimi_err_t *err);

/* The same from fp32 x (16-byte aligned). */
int kimi_fp8_quant_1x128_f32(const float *x, int ldx, int T, int K,
                             uint8_t *xq, float *xs, float *xs_mn, int ld_mn,
                             cudaStream_t s, kimi_err_t *err);

/* out[r][c] = bf16(w[r][c] * ws[r/128][c/128]): a block-scaled FP8 weight
 * [rows][cols] (scales [ceil(rows/128)][ceil(cols/128)]) in bf16;
 * cols % 16 == 0. */
int kimi_fp8_dequant_bf16(const uint8_t *w, const float *ws, int rows,
                          int cols, kimi_bf16_t *out, cudaStream_t s,
                          kimi_err_t *err);

/* ---- gemm_fp8.cu ----------------------------------------------------- */

/* Decode-size FP8 block-scaled GEMM on the tensor cores (mma.sync), weights
 * streamed once: Y[T,N] = (xq*xs)[T,K] * (w*ws)[N,K]^T, fp32 accumulate,
 * y bf16 (ldy >= N).  xs token-major [T][K/128]; N % 32 == 0, K % 128 == 0.
 * T <= 16: weights through a shared-memory ring, K split over a cluster of
 * blocks for matrices of few rows (fp8_ring.cuh); above, split-K inside
 * the block (8 warps per 32 rows).  Faster than cuBLASLt up to T = 16
 * (measured, bench/RESULTS.md); use cuBLASLt above.  Correct for any T. */
int kimi_fp8_gemm_nt(const uint8_t *xq, const float *xs, int T, int K,
                     const uint8_t *w, const float *ws, int N,
                     kimi_bf16_t *y, int ldy, cudaStream_t s, kimi_err_t *err);

/* The same with fp32 y (the engine's GEMM outputs stay fp32, as on the CPU). */
int kimi_fp8_gemm_nt_f32(const uint8_t *xq, const float *xs, int T, int K,
                         const uint8_t *w, const float *ws, int N, float *y,
                         int ldy, cudaStream_t s, kimi_err_t *err);

/* Two matrices of one input in one launch (q_a_proj and kv_a_proj):
 * y1 [T][N1] and y2 [T][N2], fp32.  T <= 16 only: KIMI_EUNSUPPORTED above
 * (two calls then). */
int kimi_fp8_gemm_nt2_f32(const uint8_t *xq, const float *xs, int T, int K,
                          const uint8_t *w1, const float *ws1, int N1, float *y1,
                          const uint8_t *w2, const float *ws2, int N2, float *y2,
                          cudaStream_t s, kimi_err_t *err);

/* Prefill-size GEMM through cuBLASLt block scaling (A = W BLK128x128,
 * B = X VEC128).  T % 4 == 0 (pad), xs MN-major [K/128][T], y bf16 [T][N]. */
typedef struct kimi_cublaslt kimi_cublaslt_t;

int  kimi_cublaslt_create(kimi_cublaslt_t **out, void *workspace,
                          size_t workspace_bytes, kimi_err_t *err);
void kimi_cublaslt_destroy(kimi_cublaslt_t *h);
int  kimi_fp8_gemm_nt_cublaslt(kimi_cublaslt_t *h, const uint8_t *xq,
                               const float *xs_mn, int T, int K,
                               const uint8_t *w, const float *ws, int N,
                               kimi_bf16_t *y, cudaStream_t s,
                               kimi_err_t *err);
/* The same with fp32 y [T][N] (the engine's GEMM outputs). */
int  kimi_fp8_gemm_nt_f32_cublaslt(kimi_cublaslt_t *h, const uint8_t *xq,
                                   const float *xs_mn, int T, int K,
                                   const uint8_t *w, const float *ws, int N,
                                   float *y, cudaStream_t s, kimi_err_t *err);

/* y[T,N] fp32 = x[T,K] . w[N,K]^T, bf16 inputs, fp32 accumulate, through
 * cuBLASLt's tensor-core kernels (the lm_head at batch: the CUDA-core
 * GEMV re-reads the weight for every 8 rows).  K % 8 == 0, N % 4 == 0. */
int  kimi_bf16_gemm_nt_f32_cublaslt(kimi_cublaslt_t *h, const kimi_bf16_t *x,
                                    int T, int K, const kimi_bf16_t *w, int N,
                                    float *y, cudaStream_t s, kimi_err_t *err);
/* The same with bf16 y (the expanded MLA prefill's kv_b output). */
int  kimi_bf16_gemm_nt_cublaslt(kimi_cublaslt_t *h, const kimi_bf16_t *x,
                                int T, int K, const kimi_bf16_t *w, int N,
                                kimi_bf16_t *y, cudaStream_t s, kimi_err_t *err);

/* ---- router.cu ------------------------------------------------------- */

/* logits[t,e] = sum_d x[t,d] * w[e,d], fp32 accumulate; D % 1024 == 0. */
int kimi_moe_router_logits(const kimi_bf16_t *x, const kimi_bf16_t *w,
                           float *logits, int T, int D, int E,
                           cudaStream_t s, kimi_err_t *err);

/* The same over fp32 x on cuBLASLt's bf16 tensor cores, for batches (from
 * KIMI_ROUTER_LT_ROWS tokens): x split into bf16 hi + lo (fp32-accurate),
 * one GEMM of 2T rows, the halves summed.  ws: kimi_moe_router_lt_ws_bytes,
 * 16-byte aligned.  D % 8 == 0, E % 4 == 0. */
#define KIMI_ROUTER_LT_ROWS 64
size_t kimi_moe_router_lt_ws_bytes(int T, int D, int E);
int kimi_moe_router_logits_f32_lt(kimi_cublaslt_t *lt, const float *x,
                                  const kimi_bf16_t *w, float *logits, int T,
                                  int D, int E, void *ws, cudaStream_t s,
                                  kimi_err_t *err);

/* The same over fp32 x (router and lm_head of the engine). */
int kimi_moe_router_logits_f32(const float *x, const kimi_bf16_t *w,
                               float *logits, int T, int D, int E,
                               cudaStream_t s, kimi_err_t *err);

/* router (engine/model/router.h) KIMI_ROUTER_NOAUX_TC: s = sigmoid(logit),
 * selection by s + bias (bias may be NULL), limited to the topk_group best
 * groups (group score = sum of its 2 best, n_group groups of E/n_group;
 * n_group 1 = no limit); KIMI_ROUTER_GREEDY: s = softmax(logits), selection
 * by s over all experts; KIMI_ROUTER_GROUP_GREEDY: the same, limited to the
 * groups of the topk_group best maxima (bias unused for both).  idx[t,k] in
 * descending selection order, exact ties to the lower index; w[t,k] = s[idx]
 * (normalised to sum 1 when norm != 0) * scale.  E <= 1024, top_k <= 16. */
int kimi_moe_router_select(const float *logits, const float *bias, int router, int T,
                           int E, int top_k, int n_group, int topk_group,
                           int norm, float scale, int32_t *idx, float *w,
                           cudaStream_t s, kimi_err_t *err);

/* ---- moe.cu ---------------------------------------------------------- */

/*
 * Expert-major plan ("permute") of one MoE layer for T tokens (one block, a
 * stable counting sort; any T, E <= 1024):
 * slot = one expert's share of the work.  The shared expert (id E) comes
 * first, in slots of at most KIMI_MOE_SLOT_TOKENS tokens; then the routed
 * experts in ascending id, each with its tokens in ascending order.  Rows of
 * a routed expert are contiguous from slot_row0; token of row r is
 * row_token[r]; pair (t, j) sits at row row_of_pair[t*top_k + j] (-1 if its
 * id was out of range), the shared row of token t is T*top_k + t.
 */
#define KIMI_MOE_SLOT_TOKENS 32

/* Block counters of the kernels whose last block finishes the work
 * (kimi_moe_route_fused, kimi_moe_down_combine): at the workspace's start,
 * so every carve of one buffer finds them in place.  They must be zero when
 * the workspace is allocated (cudaMemset once); each kernel leaves them
 * zero. */
#define KIMI_MOE_TICKETS 256

typedef struct {
    uint32_t *tickets;       /* [KIMI_MOE_TICKETS] */
    int32_t *slot_expert;    /* [max_slots] expert id (E = shared), -1 unused */
    int32_t *slot_row0;      /* [max_slots] first row */
    int32_t *slot_rows;      /* [max_slots] rows (0 = unused slot) */
    int32_t *row_token;      /* [rows] */
    int32_t *row_of_pair;    /* [T*top_k] routed rows; shared row = T*top_k + t */
    float   *h;              /* [rows][I] fp32 silu(gate)*up (masked gate_up; the
                                grouped one writes hq/hs directly) */
    uint8_t *hq;             /* [rows][I] e4m3 h (large batches) */
    float   *hs;             /* [rows][I/128] its scales */
    kimi_bf16_t *y;          /* [rows][D] bf16 expert outputs (unweighted; bf16
                                halves the round trip to the combine, which
                                sums in fp32); before down, scratch of the
                                router (cuBLASLt) and the grouped gate_up */
    int32_t *tiles;          /* grouped GEMMs' tile list: [max_tiles][3] + count */
    int      rows;           /* kimi_moe_rows() of the carve: T*top_k
                                (+ T with the shared expert) */
} kimi_moe_ws_t;

/* Sizes for kimi_moe_ws_t: slots, rows, and the bytes of one workspace
 * laid out by kimi_moe_ws_carve. */
int    kimi_moe_max_slots(int T, int top_k, int E, int shared);
int    kimi_moe_rows(int T, int top_k, int shared);
size_t kimi_moe_ws_bytes(int T, int top_k, int E, int shared, int D, int I);
void   kimi_moe_ws_carve(kimi_moe_ws_t *ws, void *base, int T, int top_k,
                         int E, int shared, int D, int I);

int kimi_moe_plan(const int32_t *topk_idx, int T, int top_k, int E,
                  int shared, const kimi_moe_ws_t *ws, cudaStream_t s,
                  kimi_err_t *err);

/* idx[n] global expert ids -> id - first where in [first, first + count),
 * else -1 (kimi_moe_plan drops it): a rank's share of the experts when
 * tensor-parallel ranks split them whole. */
int kimi_moe_ids_localize(int32_t *idx, int n, int first, int count,
                          cudaStream_t s, kimi_err_t *err);

/* (router.cu) Batches of 1-4 tokens (kimi_moe_route_fused_fits: T * top_k
 * <= 32, no group limit, E <= 1024 and E % 4 == 0): the router logits, the
 * selection (as kimi_moe_router_select: the same ids, order and weights)
 * and the plan (as kimi_moe_plan) in one launch.  logits is scratch [T][E];
 * ws as carved for kimi_moe_plan, its tickets zeroed. */
int kimi_moe_route_fused_fits(int router, int T, int top_k, int E, int n_group, int topk_group);
int kimi_moe_route_fused(const kimi_bf16_t *x, const kimi_bf16_t *w, const float *bias, int router,
                         int T, int D, int E, int top_k, int n_group, int topk_group,
                         int norm, float scale, int shared, float *logits, int32_t *idx,
                         float *tw, const kimi_moe_ws_t *ws, cudaStream_t s,
                         kimi_err_t *err);
int kimi_moe_route_fused_f32(const float *x, const kimi_bf16_t *w, const float *bias, int router,
                             int T, int D, int E, int top_k, int n_group, int topk_group,
                             int norm, float scale, int shared, float *logits,
                             int32_t *idx, float *tw, const kimi_moe_ws_t *ws,
                             cudaStream_t s, kimi_err_t *err);

/* Expert weight tables: device arrays of device pointers, indexed by expert
 * id 0..E-1, then E for the shared expert. */
typedef struct {
    const uint8_t *const *gate;   /* [I][D] e4m3 */
    const float   *const *gate_s; /* [I/128][D/128] */
    const uint8_t *const *up;
    const float   *const *up_s;
    const uint8_t *const *down;   /* [D][I] e4m3 */
    const float   *const *down_s; /* [D/128][I/128] */
    const void    *tmaps;         /* device [3][n_tmaps] CUtensorMap of gate, up,
                                     down (kimi_moe_tmaps_encode); NULL: the
                                     grouped GEMMs are not used */
    int            n_tmaps;       /* entries per table (E + 1) */
} kimi_experts_t;

/* TMA descriptors of every expert's gate/up/down weights for the grouped
 * GEMMs, encoded on the host from host arrays of the n device pointers
 * (NULL entries allowed) into out (kimi_moe_tmaps_bytes(n), then copied to
 * 64-byte aligned device memory: ex->tmaps). */
size_t kimi_moe_tmaps_bytes(int n);
int    kimi_moe_tmaps_encode(void *out, const uint8_t *const *gate,
                             const uint8_t *const *up,
                             const uint8_t *const *down, int n, int D, int I,
                             kimi_err_t *err);

/* h[r,:] = silu(xq[tok]*W_gate^T) * (xq[tok]*W_up^T) for every row of every
 * slot; xq/xs the layer input quantised per token (xs token-major). Masked:
 * grid covers max_slots, unused slots exit.  I % 64 == 0, D % 128 == 0. */
int kimi_moe_gate_up(const uint8_t *xq, const float *xs, int T, int D, int I,
                     int max_slots, const kimi_experts_t *ex,
                     const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err);

/* y[r,:] = e4m3_1x128(h[r,:]) * W_down^T: h is re-quantised to FP8 1x128
 * (T <= 16: in shared memory as each block loads it; larger T: once per row
 * by a small kernel into ws->hq/hs).  D % 128 == 0, I % 128 == 0.  T and
 * top_k as given to kimi_moe_plan. */
int kimi_moe_down(int T, int top_k, int D, int I, int max_slots,
                  const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                  cudaStream_t s, kimi_err_t *err);

/* ---- moe_grouped.cu ---------------------------------------------------- */

/* The same two GEMMs on wgmma for prefill sizes (kimi_moe_gate_up/_down take
 * this path from KIMI_MOE_GROUPED_ROWS rows per slot on average, ~750 tokens
 * at 384 experts top-8, when ex->tmaps is set): tiles of 64 or 128 rows of
 * each expert, weights by TMA, K in 128-blocks with the scale promotion.
 * gate_up copies its token rows into plan order in ws->y's memory first;
 * down reads ws->hq/hs (quantised by kimi_moe_down first).  D and I
 * multiples of 256 and 128, K <= 8192. */
#define KIMI_MOE_GROUPED_ROWS 16
int kimi_moe_grouped_max_tiles(int rows, int max_slots);
int kimi_moe_grouped_gate_up(const uint8_t *xq, const float *xs, int D, int I,
                             int max_slots, const kimi_experts_t *ex,
                             const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err);
int kimi_moe_grouped_down(int D, int I, int max_slots, const kimi_experts_t *ex,
                          const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err);
/* gate_up's GEMM alone, over the tile list and gathered rows that the last
 * kimi_moe_grouped_gate_up on this ws left there (ws->y not written since):
 * what a benchmark times beside the whole call, as down beside its combine. */
int kimi_moe_grouped_gate_up_gemm(int D, int I, int max_slots, const kimi_experts_t *ex,
                                  const kimi_moe_ws_t *ws, cudaStream_t s, kimi_err_t *err);

/* kimi_moe_down then kimi_moe_combine into out: up to 16 tokens in one
 * launch (the last block of each column range sums its columns; the same
 * values as the two launches), above as the two. */
int kimi_moe_down_combine(int T, int top_k, int shared, int D, int I, int max_slots,
                          const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                          const float *topk_w, kimi_bf16_t *out, cudaStream_t s,
                          kimi_err_t *err);
int kimi_moe_down_combine_f32(int T, int top_k, int shared, int D, int I, int max_slots,
                              const kimi_experts_t *ex, const kimi_moe_ws_t *ws,
                              const float *topk_w, float *out, cudaStream_t s,
                              kimi_err_t *err);

/* "Unpermute": out[t,:] = bf16(sum_k w[t,k] * y[row_of_pair[t,k]] +
 * (shared ? y[T*top_k + t] : 0)). */
int kimi_moe_combine(const kimi_moe_ws_t *ws, const float *topk_w, int T,
                     int top_k, int shared, int D, kimi_bf16_t *out,
                     cudaStream_t s, kimi_err_t *err);

/* The same with fp32 out. */
int kimi_moe_combine_f32(const kimi_moe_ws_t *ws, const float *topk_w, int T,
                         int top_k, int shared, int D, float *out,
                         cudaStream_t s, kimi_err_t *err);

/* ---- mla.cu ---------------------------------------------------------- */

/*
 * Absorbed MLA decode, one query token per sequence, H heads, over the paged
 * latent cache: token p of sequence b is row p % bs of block
 * block_table[b*bt_ld + p/bs]; a row is 576 values: c[512] then k_pe[64].
 * bf16 cache: kv[block][bs][576].  fp8 cache: planar blocks, kv8[block][36][bs][16]
 * e4m3 (plane i holds bytes 16i.. of every row: wgmma's unswizzled K-major
 * order, so a 64-row block is copied as it is and multiplied where it
 * lands) with one fp32 multiplier kv_scale[block][bs].
 *   score[b,h,p] = scale * (q[b,h,0:512].c_p + q[b,h,512:576].kpe_p)
 *   o[b,h,:]     = sum_p softmax_p(score) c_p                    (512, bf16)
 * q bf16 [B][H][576] (q_nope already absorbed through W_UK, q_pe rotated).
 * H % 16 == 0, H <= 256: the kernels serve 64 heads from one read of each
 * cache tile, more (DeepSeek-V3's 128 on one rank) run in groups of 64,
 * reading the cache once a group.  Work is split over the context; partial
 * results go to ws (kimi_mla_ws_bytes) and a second kernel merges them.
 */
size_t kimi_mla_ws_bytes(int B, int H, int n_splits);
int    kimi_mla_n_splits(int B, int max_ctx, int n_sm);
int kimi_mla_decode(const kimi_bf16_t *q, int B, int H,
                    const void *kv, const float *kv_scale, int kv_fp8,
                    int bs, const int32_t *block_table, int bt_ld,
                    const int32_t *seq_len, int n_splits, float scale,
                    void *ws, kimi_bf16_t *o, cudaStream_t s, kimi_err_t *err);

/* The same, also writing lse[B][H] = log2 of each softmax's denominator
 * in the kernel's log2 units (scale * log2(e) * score; -inf for an empty
 * context, whose o is 0); H <= 64.  Decode context parallelism: each rank
 * decodes over the tokens it holds, kimi_mla_merge_parts merges. */
int kimi_mla_decode_lse(const kimi_bf16_t *q, int B, int H,
                        const void *kv, const float *kv_scale, int kv_fp8,
                        int bs, const int32_t *block_table, int bt_ld,
                        const int32_t *seq_len, int n_splits, float scale,
                        void *ws, kimi_bf16_t *o, float *lse, cudaStream_t s,
                        kimi_err_t *err);

/* o [T][H][512] bf16 from D parts of part_bytes (16-byte multiple) each:
 * part r = [T][H][512] bf16 o_r, then [T][H] fp32 lse_r, as
 * kimi_mla_decode_lse wrote them on rank r (its tokens of the context);
 * weights 2^(lse_r - max). */
int kimi_mla_merge_parts(const void *parts, size_t part_bytes, int D, int T,
                         int H, kimi_bf16_t *o, cudaStream_t s,
                         kimi_err_t *err);

/* ---- mla_prefill.cu ---------------------------------------------------- */

/* Causal MLA prefill in the expanded form over one sequence: T queries,
 * query t at position pos0 + t (relative to the first key given), sees
 * keys s <= pos0 + t of S (S <= pos0 + T); per head h:
 *   q   fp32 row t at q + t*ld_q + 192h: [q_nope 128 | q_pe 64];
 *   kv  bf16 row s at kv + s*ld_kv + 256h: [k_nope 128 | v 128] (kv_b's output);
 *   kpe bf16 row s at kpe + s*ld_pe: k_pe [64], shared by the heads;
 *   o   fp32 row t at o + t*ld_o + 128h = softmax(scale * q.k) v,
 *   lse fp32 [T][H] (may be NULL without merge): log2 of the softmax's sum.
 * merge != 0: these keys continue a context whose earlier keys a call
 * before gave to o and lse; the two softmaxes are joined.  Strides are
 * multiples of 16 bytes (ld_o: 8), buffers 16-byte aligned. */
int kimi_mla_prefill(const float *q, int ld_q, const kimi_bf16_t *kv, int ld_kv,
                     const kimi_bf16_t *kpe, int ld_pe, int T, int S, int pos0,
                     int H, float scale, float *o, int ld_o, float *lse,
                     int merge, cudaStream_t s, kimi_err_t *err);

/* Gathers rows [k0, k0 + S) of one sequence's latent cache (its block
 * table bt, blocks of bs rows; bf16 or e4m3 with one multiplier a row as
 * kimi_mla_kv_write stores them) in bf16: c [S][512] and k_pe [S][64]. */
int kimi_mla_kv_gather(const void *kv, const float *kv_scale, int kv_fp8,
                       int bs, const int32_t *bt, int k0, int S,
                       kimi_bf16_t *c, kimi_bf16_t *pe, cudaStream_t s,
                       kimi_err_t *err);

/* ---- sample.cu ------------------------------------------------------- */

/* out[r] = argmax_v logits[r*ld + v], ties to the lower id. */
int kimi_sample_greedy(const float *logits, int rows, int vocab, int ld,
                       int32_t *out, cudaStream_t s, kimi_err_t *err);
/* The same, and logprob[r] = logits[r, out[r]] - log sum_v exp(logits[r, v])
 * (fp32 sums; the host's are double: they agree to ~1e-6). */
int kimi_sample_greedy_logprob(const float *logits, int rows, int vocab,
                               int ld, int32_t *out, float *logprob,
                               cudaStream_t s, kimi_err_t *err);

/* One row of kimi_sample_draw: inv_t = 1 / temperature (0: not this row:
 * out[r] is left as it is), log_min_p = log(min_p) (-inf: none), top_p
 * (1: none), top_k (<= 0: none), u the row's uniform draw in [0, 1) (the
 * host sampler's one draw). */
typedef struct {
    float    inv_t;
    float    log_min_p;
    float    top_p;
    int32_t  top_k;
    double   u;
} kimi_draw_row_t;

/* Random sampling as the host sampler draws it (engine/sample/sample.c):
 * v = logits * inv_t, m = max v; candidates v >= max(m - 87, m + log_min_p);
 * with top_k those >= the k-th largest (ties kept); weights exp(v - m);
 * with top_p the fewest largest weights whose mass reaches top_p of the
 * total (ties at the edge in vocabulary order); out[r] the candidate where
 * the running weight in vocabulary order first exceeds u * (the kept
 * mass); -1 when the row has no finite logit (the host's fallback then). */
int kimi_sample_draw(const float *logits, int rows, int vocab, int ld,
                     const kimi_draw_row_t *params, int32_t *out,
                     cudaStream_t s, kimi_err_t *err);

/* One logit of a row processed as the host sampler processes it
 * (engine/sample/sample.c kimi_sample_process, in its order): v = the raw
 * value; KIMI_EDIT_BIAS: v += add (logit_bias); KIMI_EDIT_SEEN (a prompt
 * or output token) and rep != 1: v = v > 0 ? v / rep : v * rep;
 * KIMI_EDIT_COUNTED (an output token): v -= fc (frequency_penalty x its
 * count), then v -= pres; KIMI_EDIT_MASKED (min_tokens): v = -inf.  old
 * receives the raw value, which kimi_logit_restore writes back. */
#define KIMI_EDIT_BIAS     1u
#define KIMI_EDIT_SEEN     2u
#define KIMI_EDIT_COUNTED  4u
#define KIMI_EDIT_MASKED   8u

typedef struct {
    int64_t   at;        /* row * ld + token */
    float     add;
    float     rep;
    float     fc;
    float     pres;
    float     old;
    uint32_t  flags;
} kimi_logit_edit_t;

/* Applies n edits to logits in place, saving each raw value in old. */
int kimi_logit_edit(float *logits, kimi_logit_edit_t *edits, int n,
                    cudaStream_t s, kimi_err_t *err);
/* Writes the saved raw values back (after the draws). */
int kimi_logit_restore(float *logits, const kimi_logit_edit_t *edits, int n,
                       cudaStream_t s, kimi_err_t *err);

/* ---- glue.cu ---------------------------------------------------------- */

/* out[t,:] = table[ids[t],:] (embedding lookup, or picking rows); D % 8 == 0. */
int kimi_gather_rows_bf16(const kimi_bf16_t *table, const int32_t *ids, int T,
                          int D, kimi_bf16_t *out, cudaStream_t s,
                          kimi_err_t *err);

/* out fp32 [T][D] from a bf16 table (embedding) or an fp32 one (rows). */
int kimi_gather_rows_bf16_f32(const kimi_bf16_t *table, const int32_t *ids,
                              int T, int D, float *out, cudaStream_t s,
                              kimi_err_t *err);
int kimi_gather_rows_f32(const float *table, const int32_t *ids, int T, int D,
                         float *out, cudaStream_t s, kimi_err_t *err);
/* The same rounded to bf16 (the tensor-core lm_head's input). */
int kimi_gather_rows_f32_bf16(const float *table, const int32_t *ids, int T,
                              int D, kimi_bf16_t *out, cudaStream_t s,
                              kimi_err_t *err);

/* out[i] = bf16(silu(g[i]) * u[i]) (out may alias g). */
int kimi_silu_mul_bf16(const kimi_bf16_t *g, const kimi_bf16_t *u,
                       kimi_bf16_t *out, size_t n, cudaStream_t s,
                       kimi_err_t *err);

/* out[i] = silu(g[i]) * u[i], fp32 (expf, as the CPU oracle). */
int kimi_silu_mul_f32(const float *g, const float *u, float *out, size_t n,
                      cudaStream_t s, kimi_err_t *err);

/* y[i] += x[i], fp32 (several shared experts: their MLP's rows onto the
 * routed experts' sum). */
int kimi_add_f32(float *y, const float *x, size_t n, cudaStream_t s,
                 kimi_err_t *err);

/* ckv [T][576] = [c 512 | k_pe 64 (rotated)]: cache row slot[t] (block * bs +
 * row, in the kimi_mla_decode layout) = [rmsnorm(c) * norm_w | k_pe], bf16,
 * or e4m3 (planar blocks of bs rows) with kv_scale[slot] = max(amax, 1e-4) / 448;
 * a negative slot writes nothing (decode context parallel: another rank's row). */
int kimi_mla_kv_write(const kimi_bf16_t *ckv, const kimi_bf16_t *norm_w,
                      float eps, const int32_t *slot, int T, void *kv,
                      float *kv_scale, int kv_fp8, int bs, cudaStream_t s,
                      kimi_err_t *err);

/* The same from fp32 ckv. */
int kimi_mla_kv_write_f32(const float *ckv, const kimi_bf16_t *norm_w,
                          float eps, const int32_t *slot, int T, void *kv,
                          float *kv_scale, int kv_fp8, int bs, cudaStream_t s,
                          kimi_err_t *err);

/* Per-head vector x matrix (MLA absorption): y[t*y_ld_t + h*y_ld_h + n] =
 * sum_k x[t*x_ld_t + h*x_ld_h + k] * M[h*m_ld_h + k*m_ld_k + n], fp32
 * accumulate; K <= 1536. */
int kimi_head_mv_bf16(const kimi_bf16_t *x, int x_ld_t, int x_ld_h,
                      const kimi_bf16_t *M, size_t m_ld_h, int m_ld_k, int K,
                      int N, kimi_bf16_t *y, int y_ld_t, int y_ld_h, int T,
                      int H, cudaStream_t s, kimi_err_t *err);

/* MLA absorption straight from the FP8 kv_b_proj [H*(nope+dv)][R] (e4m3,
 * 128x128 multipliers kv_b_s), W(h,j,:) = row h*(nope+dv)+j, dequantised in
 * fp32 as the CPU oracle does.  R == 512, nope <= 256.
 *   absorb_q: qlat[t][h][0:R] = bf16(sum_d q[t][h][d] W(h,d,:)) and
 *             qlat[t][h][R:R+P] = bf16(q[t][h][nope:nope+P]); q fp32
 *             [T][H][nope+P], qlat [T][H][R+P] (kimi_mla_decode's q).
 *   absorb_o: out[t][h][d] = sum_r W(h,nope+d,r) olat[t][h][r]; olat bf16
 *             [T][H][R], out fp32 [T][H][dv]. */
int kimi_mla_absorb_q(const float *q, int T, int H, int nope, int P, int R,
                      int dv, const uint8_t *kv_b, const float *kv_b_s,
                      kimi_bf16_t *qlat, cudaStream_t s, kimi_err_t *err);
int kimi_mla_absorb_o(const kimi_bf16_t *olat, int T, int H, int R, int nope,
                      int dv, const uint8_t *kv_b, const float *kv_b_s,
                      float *out, cudaStream_t s, kimi_err_t *err);

/* ---- util.cu --------------------------------------------------------- */

/* Deterministic pseudo-random fill for tests and dummy weights (never
 * zeros): bf16 / fp32 uniform in [lo, hi), e4m3 from N(0,1)-like values
 * scaled into range, all finite. */
int kimi_fill_bf16(kimi_bf16_t *p, size_t n, uint64_t seed, float lo,
                   float hi, cudaStream_t s, kimi_err_t *err);
int kimi_fill_f32(float *p, size_t n, uint64_t seed, float lo, float hi,
                  cudaStream_t s, kimi_err_t *err);
int kimi_fill_fp8(uint8_t *p, size_t n, uint64_t seed, cudaStream_t s,
                  kimi_err_t *err);

/* dst = src, n % 16 == 0: a 16-byte streaming copy used as a bandwidth
 * floor by the benchmarks. */
int kimi_copy_d2d(void *dst, const void *src, size_t n, cudaStream_t s,
                  kimi_err_t *err);

#ifdef __cplusplus
}
#endif

#endif
