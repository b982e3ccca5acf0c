/*
 * The CUDA forward pass: DeepSeek-V3's Block -> MLA -> MoE on kernels/,
 * step for step the CPU backend's (engine/backend/cpu/backend_cpu.c).
 *
 * Owns:   the step workspaces (sized once for cap tokens), the per-step
 *         metadata upload (token ids, positions, cache slots, per-token
 *         block tables), the launch sequence of one step, and where the
 *         parallel layouts meet in it: the expert-parallel MoE layer (the
 *         ranks' token-count vote, dispatch, combine), the tensor-
 *         parallel all-reduces, the pipeline's hops between stages, and
 *         the leader's step hand-over.
 * Never:  allocates in a step, picks blocks, or samples.
 * Holds:  the KV of every new token is written before any attention runs,
 *         so a prefill chunk sees itself causally and earlier chunks
 *         through the cache, as on the CPU.  Attention is the absorbed MLA
 *         decode with one query per token (its own block table row and
 *         length pos + 1), except for a sequence's prefill chunk of
 *         expand_min tokens or more after a prefix of at most
 *         expand_prefix times that: its context's latent rows are
 *         expanded by kv_b and it attends in the MHA form (cheaper per
 *         query-key pair; the CPU oracle stays absorbed).  Activations stay fp32 between kernels as on the CPU
 *         oracle (residual stream, GEMM outputs, norms, the absorptions
 *         from the FP8 kv_b_proj), except q_lat / o_lat, which the MLA
 *         kernel takes in bf16; every FP8 GEMM input is quantised per
 *         1x128 group first, from fp32.
 */

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/kimi_log.h"
#include "cuda_impl.h"


/* metadata words: [tok][pos][slot][seq_len][row][block tables cap x max_bt] */
enum { KIMI_M_TOK, KIMI_M_POS, KIMI_M_SLOT, KIMI_M_LEN, KIMI_M_ROW, KIMI_M_N };


static size_t
kimi_al256(size_t n)
{
    return (n + 255) & ~(size_t) 255;
}


/* A rank's partial attention of T queries x H heads for one peer under
 * decode context parallelism: o [T][H][512] bf16, then lse [T][H] fp32
 * (kimi_mla_merge_parts' layout; a 16-byte multiple as H % 16 == 0). */
static size_t
kimi_cuda_dcp_part(size_t T, size_t H)
{
    return T * H * (512 * 2 + sizeof(float));
}


int
kimi_cuda_workspaces(kimi_cuda_t *b, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    size_t                      T = b->cap, off = 0, moe = 0, mla;
    uint32_t                    H = b->H;       /* this rank's heads */
    uint32_t                    D = c->hidden_size, R = c->kv_lora_rank;
    uint32_t                    qk = kimi_model_qk_head_dim(c);
    uint32_t                    maxk, I = b->I_dense > b->I_moe ? b->I_dense
                                                                : b->I_moe;
    uint32_t                    I_mlp = b->I_dense > b->I_shared
                                        ? b->I_dense : b->I_shared;
    size_t                      bmax = T > (size_t) b->n_sm ? T
                                                            : (size_t) b->n_sm;
    size_t                      ex_rows = 0;
    char                       *p;
    const char                 *e;

    maxk = D;
    maxk = c->q_lora_rank > maxk ? c->q_lora_rank : maxk;
    maxk = H * c->v_head_dim > maxk ? H * c->v_head_dim : maxk;
    maxk = I > maxk ? I : maxk;
    maxk = I_mlp > maxk ? I_mlp : maxk;

    if (b->E > 0 && b->ep_world <= 1) {
        moe = kimi_moe_ws_bytes((int) T, (int) b->top_k, (int) b->E,
                                b->shared_in_moe, (int) D, (int) b->I_moe);
    }

    if (b->E > 0 && b->ep_world > 1) {
        /* EP: the padded exchange of cap tokens per peer, and the MoE plan
         * over every row received (W * cap, this rank's experts only) */
        kimi_ep_shape_t  sh = { (int) b->ep_world, (int) T, (int) b->top_k,
                                (int) b->E, (int) D };
        size_t           ep_bytes = kimi_ep_ws_bytes(&sh);
        size_t           ep_moe = kimi_moe_ws_bytes((int) (b->ep_world * T),
                                      (int) b->top_k, (int) b->E_local, 0,
                                      (int) D, (int) b->I_moe);
        cudaError_t      ce = cudaMalloc(&b->ep_ws, ep_bytes);

        if (ce == cudaSuccess) {
            ce = cudaMalloc(&b->ep_moe_ws, ep_moe);
        }

        if (ce != cudaSuccess) {
            (void) cudaGetLastError();
            return kimi_err_set(err, KIMI_ENOMEM, "cuda backend: expert-"
                                "parallel workspaces for %zu tokens per "
                                "rank need %.2f GiB (%s): lower "
                                "max_batched_tokens", T,
                                (ep_bytes + ep_moe) / 1073741824.0,
                                cudaGetErrorString(ce));
        }

        KIMI_CU(cudaMemset(b->ep_ws, 0, ep_bytes), err);
        KIMI_CU(cudaMemset(b->ep_moe_ws, 0, ep_moe), err);
    }

    /* B * n_splits <= max(B, n_sm) (kimi_mla_n_splits) */
    mla = kimi_mla_ws_bytes((int) bmax, (int) H, 1);

    /* expanded prefill attention: the kernel's head widths (Kimi-K2's) and
     * the whole latent cache on this rank; the context is expanded in
     * chunks of ex_rows keys (a multiple of 64) */
    if (c->qk_nope_head_dim == 128 && c->qk_rope_head_dim == 64
        && c->v_head_dim == 128 && R == 512 && b->dcp <= 1)
    {
        size_t  ml = ((size_t) b->base.max_model_len + 63) / 64 * 64;

        ex_rows = KIMI_CUDA_EXPAND_BYTES / ((size_t) H * 256 * 2) / 64 * 64;
        ex_rows = ex_rows < 64 ? 64 : ex_rows;
        ex_rows = ex_rows < ml ? ex_rows : ml;

        /* smaller chunks (tests of the merge across chunks) */
        e = getenv("KIMI_MLA_EXPAND_ROWS");
        if (e != NULL && atoi(e) >= 64 && (size_t) atoi(e) / 64 * 64 < ex_rows) {
            ex_rows = (size_t) atoi(e) / 64 * 64;
        }
    }

#define KIMI_WS(ptr, bytes)                                                  \
    do {                                                                     \
        ptr = (void *) (p ? p + off : NULL);                                 \
        off += kimi_al256(bytes);                                            \
    } while (0)

    for (int pass = 0; pass < 2; pass++) {
        p = pass ? b->sarena : NULL;
        off = 0;
        KIMI_WS(b->h, T * D * 4);
        KIMI_WS(b->a, T * D * 4);
        KIMI_WS(b->qa, T * c->q_lora_rank * 4);
        KIMI_WS(b->qn, T * c->q_lora_rank * 4);
        KIMI_WS(b->q, T * H * qk * 4);
        KIMI_WS(b->ckv, T * (R + c->qk_rope_head_dim) * 4);
        KIMI_WS(b->qlat, T * H * (R + c->qk_rope_head_dim) * 2);
        KIMI_WS(b->olat, T * H * R * 2);
        KIMI_WS(b->attn, T * H * c->v_head_dim * 4);
        KIMI_WS(b->o, T * D * 4);
        KIMI_WS(b->g, T * I_mlp * 4);
        KIMI_WS(b->u, T * I_mlp * 4);
        KIMI_WS(b->y, T * D * 4);
        KIMI_WS(b->fin, (size_t) b->max_rows * D * 4);
        KIMI_WS(b->xq, T * maxk);
        KIMI_WS(b->xs, T * (maxk / 128) * sizeof(float));
        KIMI_WS(b->rl, T * (b->E ? b->E : 1) * sizeof(float));
        KIMI_WS(b->tw, T * (b->top_k ? b->top_k : 1) * sizeof(float));
        KIMI_WS(b->tidx, T * (b->top_k ? b->top_k : 1) * sizeof(int32_t));
        KIMI_WS(b->logits, (size_t) b->max_rows * c->vocab_size * sizeof(float));
        KIMI_WS(b->argmax, (size_t) b->max_rows * sizeof(int32_t));
        KIMI_WS(b->lp, (size_t) b->max_rows * sizeof(float));
        KIMI_WS(b->draw, (size_t) b->max_rows * sizeof(kimi_draw_row_t));
        KIMI_WS(b->drawn, (size_t) b->max_rows * sizeof(int32_t));
        KIMI_WS(b->fin_bf, (size_t) b->max_rows * D * 2);
        KIMI_WS(b->lt_ws, KIMI_CUDA_LT_WS);
        KIMI_WS(b->xs_mn, ((T + 3) & ~(size_t) 3) * (maxk / 128)
                          * sizeof(float));
        KIMI_WS(b->moe_ws, moe ? moe : 256);    /* tickets: zeroed below */
        KIMI_WS(b->mla_ws, mla);
        if (ex_rows > 0) {
            KIMI_WS(b->ex_c, ex_rows * R * 2);
            KIMI_WS(b->ex_pe, ex_rows * c->qk_rope_head_dim * 2);
            KIMI_WS(b->ex_w, (size_t) H * 256 * R * 2);
            KIMI_WS(b->ex_kv, ex_rows * H * 256 * 2);
            KIMI_WS(b->ex_lse, T * H * sizeof(float));
        }
        if (b->dcp > 1) {
            KIMI_WS(b->dcp_q, b->dcp * T * H * (R + c->qk_rope_head_dim) * 2);
            KIMI_WS(b->dcp_send, b->dcp * kimi_cuda_dcp_part(T, H));
            KIMI_WS(b->dcp_recv, b->dcp * kimi_cuda_dcp_part(T, H));
        }

        if (pass == 0) {
            cudaError_t  ce = cudaMalloc(&b->sarena, off);

            if (ce != cudaSuccess) {
                (void) cudaGetLastError();
                b->sarena = NULL;
                return kimi_err_set(err, KIMI_ENOMEM, "cuda backend: step "
                                    "workspaces for %zu tokens need %.2f GiB "
                                    "(%s): lower max_batched_tokens", T,
                                    off / 1073741824.0,
                                    cudaGetErrorString(ce));
            }

            /* padding rows and scales stay finite */
            KIMI_CU(cudaMemset(b->sarena, 0, off), err);
        }
    }

#undef KIMI_WS

    b->expand_rows = (uint32_t) ex_rows;
    b->expand_min = 0;
    b->expand_prefix = KIMI_CUDA_EXPAND_PREFIX_X;
    if (ex_rows > 0) {
        e = getenv("KIMI_MLA_EXPAND_MIN");
        b->expand_min = e != NULL ? (uint32_t) atoi(e) : KIMI_CUDA_EXPAND_MIN_T;
        e = getenv("KIMI_MLA_EXPAND_PREFIX");
        b->expand_prefix = e != NULL ? (uint32_t) atoi(e)
                                     : KIMI_CUDA_EXPAND_PREFIX_X;
    }

    b->lt_fp8 = 1;
    return kimi_cublaslt_create(&b->lt, b->lt_ws, KIMI_CUDA_LT_WS, err);
}


/* Checks the batch as the CPU backend does and fills the host staging. */
static int
kimi_cuda_stage(kimi_cuda_t *b, const kimi_batch_t *batch, uint32_t *T_out,
    uint32_t *rows_out, uint32_t *max_ctx, uint32_t *rest_T,
    uint32_t *rest_ctx, kimi_err_t *err)
{
    int32_t   *m = b->meta_h, *bt;
    uint32_t   T = 0, rows = 0, cap = b->cap;

    *max_ctx = 0;
    *rest_T = 0;
    *rest_ctx = 0;
    b->n_runs = 0;

    for (uint32_t i = 0; i < batch->n_seqs; i++) {
        const kimi_batch_seq_t  *s = &batch->seqs[i];
        uint64_t                 end = (uint64_t) s->pos + s->n_tokens;
        uint32_t                 nb;

        if (s->n_tokens == 0 || s->tokens == NULL || s->block_table == NULL) {
            return kimi_err_set(err, KIMI_EINVAL, "cuda: seq %llu: empty",
                                (unsigned long long) s->seq_id);
        }

        if (end > b->base.max_model_len) {
            return kimi_err_set(err, KIMI_EINVAL, "cuda: seq %llu: position "
                                "%llu beyond max_model_len %u",
                                (unsigned long long) s->seq_id,
                                (unsigned long long) end,
                                b->base.max_model_len);
        }

        if (T + (uint64_t) s->n_tokens > cap) {
            return kimi_err_set(err, KIMI_EINVAL, "cuda: step of more than "
                                "%u tokens (max_batched_tokens)", cap);
        }

        nb = (uint32_t) ((end + b->vbs - 1) / b->vbs);

        if (s->n_blocks < nb) {
            return kimi_err_set(err, KIMI_EINVAL, "cuda: seq %llu: %u blocks "
                                "do not cover %llu tokens",
                                (unsigned long long) s->seq_id, s->n_blocks,
                                (unsigned long long) end);
        }

        for (uint32_t k = 0; k < nb; k++) {
            if (s->block_table[k] >= b->n_blocks) {
                return kimi_err_set(err, KIMI_EINVAL, "cuda: seq %llu: block "
                                    "%u out of range (%u blocks)",
                                    (unsigned long long) s->seq_id,
                                    s->block_table[k], b->n_blocks);
            }
        }

        if (b->expand_min > 0 && s->n_tokens >= b->expand_min
            && (b->expand_prefix == 0
                || s->pos <= (uint64_t) b->expand_prefix * s->n_tokens)
            && b->n_runs < KIMI_CUDA_MAX_RUNS)
        {
            b->runs[b->n_runs++] = (kimi_cuda_run_t) { T, s->n_tokens,
                                                       s->pos };

        } else {
            *rest_T += s->n_tokens;
            *rest_ctx = end > *rest_ctx ? (uint32_t) end : *rest_ctx;
        }

        for (uint32_t k = 0; k < s->n_tokens; k++, T++) {
            uint32_t  pos = s->pos + k;

            if (s->tokens[k] < 0
                || (uint32_t) s->tokens[k] >= b->cfg->vocab_size)
            {
                return kimi_err_set(err, KIMI_EINVAL, "cuda: seq %llu: token "
                                    "%d outside the vocabulary",
                                    (unsigned long long) s->seq_id,
                                    s->tokens[k]);
            }

            m[KIMI_M_TOK * cap + T] = s->tokens[k];
            m[KIMI_M_POS * cap + T] = (int32_t) pos;
            bt = m + KIMI_M_N * cap + (size_t) T * b->max_bt;
            memcpy(bt, s->block_table, (size_t) ((pos / b->vbs) + 1)
                                       * sizeof(int32_t));

            if (b->dcp > 1) {
                /* this rank's rows: positions r, r + dcp, ...; the i-th is
                 * row i % bs of block table[i / bs], where i = p / dcp */
                m[KIMI_M_SLOT * cap + T] = pos % b->dcp != b->dcp_rank ? -1
                    : (int32_t) (s->block_table[pos / b->vbs] * b->bs
                                 + pos % b->vbs / b->dcp);
                m[KIMI_M_LEN * cap + T] = pos < b->dcp_rank ? 0
                    : (int32_t) ((pos - b->dcp_rank) / b->dcp + 1);
                continue;
            }

            m[KIMI_M_SLOT * cap + T] = (int32_t) (s->block_table[pos / b->bs]
                                                  * b->bs + pos % b->bs);
            m[KIMI_M_LEN * cap + T] = (int32_t) (pos + 1);
        }

        if (s->want_logits) {
            if (rows == b->max_rows) {
                return kimi_err_set(err, KIMI_EINVAL, "cuda: more than %u "
                                    "sequences want logits in one step",
                                    b->max_rows);
            }

            m[KIMI_M_ROW * cap + rows++] = (int32_t) (T - 1);
        }

        *max_ctx = end > *max_ctx ? (uint32_t) end : *max_ctx;
    }

    if (T == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "cuda: empty batch");
    }

    *T_out = T;
    *rows_out = rows;
    return 0;
}


/* cuBLASLt for this many tokens: prefill sizes, while it has an
 * algorithm, and T padded to 4 rows still inside the workspaces (the
 * padding rows hold an earlier step's finite values; their outputs land
 * in rows nobody reads) */
static int
kimi_cuda_use_lt(const kimi_cuda_t *b, uint32_t T)
{
    return b->lt_fp8 && T >= KIMI_CUDA_LT_MIN_T && ((T + 3) & ~3u) <= b->cap;
}


/* y[T][w.rows] = x[T][w.cols] * W^T with x already quantised in xq/xs
 * (and xs_mn at prefill sizes) */
static int
kimi_cuda_gemm(kimi_cuda_t *b, uint32_t T, const kimi_cuda_fp8_t *w,
    float *y, kimi_err_t *err)
{
    int  rc;

    if (kimi_cuda_use_lt(b, T) && (w->cols / 128) % 4 == 0) {
        rc = kimi_fp8_gemm_nt_f32_cublaslt(b->lt, b->xq, b->xs_mn,
                                           (int) ((T + 3) & ~3u),
                                           (int) w->cols, w->w, w->s,
                                           (int) w->rows, y, b->stream, err);
        if (rc != KIMI_EUNSUPPORTED) {
            return rc;
        }

        /* no algorithm in this cuBLASLt: the own kernel from now on */
        kimi_log(KIMI_LOG_WARN, "cuda: %s; dense GEMMs stay on the own "
                 "kernel", err->msg);
        b->lt_fp8 = 0;
    }

    return kimi_fp8_gemm_nt_f32(b->xq, b->xs, (int) T, (int) w->cols, w->w,
                                w->s, (int) w->rows, y, (int) w->rows,
                                b->stream, err);
}


/* Two projections of the same quantised input: one launch at decode
 * sizes (a batch-1 step has 18 + 48 row tiles in these two: too few blocks
 * apart), two GEMMs otherwise. */
static int
kimi_cuda_gemm2(kimi_cuda_t *b, uint32_t T, const kimi_cuda_fp8_t *w1,
    float *y1, const kimi_cuda_fp8_t *w2, float *y2, kimi_err_t *err)
{
    int  rc;

    if (!kimi_cuda_use_lt(b, T) && w1->cols == w2->cols) {
        rc = kimi_fp8_gemm_nt2_f32(b->xq, b->xs, (int) T, (int) w1->cols,
                                   w1->w, w1->s, (int) w1->rows, y1,
                                   w2->w, w2->s, (int) w2->rows, y2,
                                   b->stream, err);
        if (rc != KIMI_EUNSUPPORTED) {
            return rc;
        }
    }

    KIMI_K(kimi_cuda_gemm(b, T, w1, y1, err));
    return kimi_cuda_gemm(b, T, w2, y2, err);
}


/* x's FP8 codes in xq with token-major scales in xs, and at cuBLASLt
 * sizes MN-major ones in xs_mn too (one pass) */
static int
kimi_cuda_quant(kimi_cuda_t *b, const float *x, uint32_t T, uint32_t K,
    kimi_err_t *err)
{
    return kimi_fp8_quant_1x128_f32(x, (int) K, (int) T, (int) K, b->xq,
                                    b->xs,
                                    kimi_cuda_use_lt(b, T) ? b->xs_mn : NULL,
                                    (int) ((T + 3) & ~3u), b->stream, err);
}


/* y = rms(x) (res NULL) or rms(res += x), then y's FP8 codes in xq/xs (and
 * xs_mn at cuBLASLt sizes) for the next GEMM: one launch */
static int
kimi_cuda_norm_quant(kimi_cuda_t *b, const float *x, float *res,
    const kimi_bf16_t *w, float *y, uint32_t T, uint32_t D, kimi_err_t *err)
{
    float  eps = b->cfg->rms_norm_eps;

    if (D % 128 == 0) {
        return kimi_rmsnorm_quant_f32(x, res, w, y, (int) T, (int) D, eps,
                                      b->xq, b->xs,
                                      kimi_cuda_use_lt(b, T) ? b->xs_mn : NULL,
                                      (int) ((T + 3) & ~3u), b->stream, err);
    }

    if (res == NULL) {
        KIMI_K(kimi_rmsnorm_f32(x, w, y, (int) T, (int) D, eps, b->stream,
                                err));

    } else {
        KIMI_K(kimi_rmsnorm_residual_f32(x, res, w, y, (int) T, (int) D, eps,
                                         b->stream, err));
    }

    return kimi_cuda_quant(b, y, T, D, err);
}


static int
kimi_cuda_mark(kimi_cuda_t *b, uint32_t i, kimi_err_t *err)
{
    if (b->prof) {
        KIMI_CU(cudaEventRecord(b->pev[i], b->stream), err);
    }

    return 0;
}


/*
 * Decode context parallel attention of T queries (this rank's H heads in
 * qlat): every rank's q gathered, each rank's heads decoded over the
 * latent rows held here (a partial o and its lse), the partials sent to
 * the ranks owning those heads, and this rank's D partials merged into
 * olat.  Exact up to the bf16 rounding of each partial o.
 */
static int
kimi_cuda_mla_dcp(kimi_cuda_t *b, uint32_t T, void *kv, float *ks,
    uint32_t splits, kimi_err_t *err)
{
    const int32_t  *md = b->meta_d;
    size_t          qn = (size_t) T * b->H * (b->cfg->kv_lora_rank
                                              + b->cfg->qk_rope_head_dim);
    size_t          part = kimi_cuda_dcp_part(T, b->H);

    KIMI_K(kimi_nccl_all_gather(b->dcp_nccl, b->qlat, b->dcp_q,
                                qn * sizeof(kimi_bf16_t), b->stream, err));

    for (uint32_t r = 0; r < b->dcp; r++) {
        uint8_t  *out = b->dcp_send + r * part;

        KIMI_K(kimi_mla_decode_lse(b->dcp_q + r * qn, (int) T, (int) b->H,
                                   kv, ks, b->kv_fp8, (int) b->bs,
                                   md + KIMI_M_N * b->cap, (int) b->max_bt,
                                   md + KIMI_M_LEN * b->cap, (int) splits,
                                   b->softmax_scale, b->mla_ws,
                                   (kimi_bf16_t *) out,
                                   (float *) (out + (size_t) T * b->H * 1024),
                                   b->stream, err));
    }

    KIMI_K(kimi_nccl_all_to_all(b->dcp_nccl, b->dcp_send, b->dcp_recv, part,
                                b->stream, err));
    return kimi_mla_merge_parts(b->dcp_recv, part, (int) b->dcp, (int) T,
                                (int) b->H, b->olat, b->stream, err);
}


/* attention of tokens [t0, t0 + n) in the absorbed form: q_lat of each
 * (W_UK), the MLA decode over the latent cache with its own block table
 * and length, o (W_UV) to b->attn */
static int
kimi_cuda_mla_absorbed(kimi_cuda_t *b, const kimi_cuda_layer_t *L,
    uint32_t l, void *kv, float *ks, uint32_t t0, uint32_t n,
    uint32_t splits, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    const int32_t              *md = b->meta_d;
    int                         H = (int) b->H;
    int                         R = (int) c->kv_lora_rank;
    int                         P = (int) c->qk_rope_head_dim;
    int                         nope = (int) c->qk_nope_head_dim;
    int                         dv = (int) c->v_head_dim, qk = nope + P;
    kimi_bf16_t                *qlat = b->qlat + (size_t) t0 * H * (R + P);
    kimi_bf16_t                *olat = b->olat + (size_t) t0 * H * R;

    /* q_lat[h] = W_UK_h^T q_nope_h, q_pe alongside: [n][H][R + P] */
    KIMI_K(kimi_mla_absorb_q(b->q + (size_t) t0 * H * qk, (int) n, H, nope,
                             P, R, dv, L->kv_b.w, L->kv_b.s, qlat, b->stream,
                             err));
    KIMI_K(kimi_cuda_mark(b, KIMI_CUDA_MARK(l, 1), err));

    if (b->dcp > 1) {
        /* no expanded runs under DCP (workspaces): t0 = 0, n = T */
        KIMI_K(kimi_cuda_mla_dcp(b, n, kv, ks, splits, err));

    } else {
        KIMI_K(kimi_mla_decode(qlat, (int) n, H, kv, ks, b->kv_fp8,
                               (int) b->bs,
                               md + KIMI_M_N * b->cap + (size_t) t0 * b->max_bt,
                               (int) b->max_bt, md + KIMI_M_LEN * b->cap + t0,
                               (int) splits, b->softmax_scale, b->mla_ws,
                               olat, b->stream, err));
    }
    KIMI_K(kimi_cuda_mark(b, KIMI_CUDA_MARK(l, 2), err));

    /* o_h = W_UV_h o_lat_h */
    KIMI_K(kimi_mla_absorb_o(olat, (int) n, H, R, nope, dv, L->kv_b.w,
                             L->kv_b.s, b->attn + (size_t) t0 * H * dv,
                             b->stream, err));
    return kimi_cuda_mark(b, KIMI_CUDA_MARK(l, 3), err);
}


/*
 * A run's attention in the expanded form: its context's latent rows,
 * ex_rows keys at a time, gathered from the cache (written for this step's
 * tokens already), kv_b applied (bf16, ex_w holds the layer's), then
 * kimi_mla_prefill of the run's queries that see those keys, each chunk
 * after the first merged into b->attn through the lse rows.
 */
static int
kimi_cuda_mla_expanded(kimi_cuda_t *b, void *kv, float *ks,
    const kimi_cuda_run_t *run, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    int                         H = (int) b->H;
    int                         R = (int) c->kv_lora_rank;
    int                         P = (int) c->qk_rope_head_dim;
    int                         qk = (int) c->qk_nope_head_dim + P;
    int                         dv = (int) c->v_head_dim;
    int                         N = H * 256;
    uint32_t                    S = run->pos0 + run->n;
    const int32_t              *bt;

    /* the run's last token's block table covers its whole context */
    bt = b->meta_d + KIMI_M_N * b->cap
         + (size_t) (run->tok0 + run->n - 1) * b->max_bt;

    for (uint32_t k0 = 0; k0 < S; k0 += b->expand_rows) {
        uint32_t  Sk = S - k0 < b->expand_rows ? S - k0 : b->expand_rows;
        uint32_t  t1 = k0 > run->pos0 ? k0 - run->pos0 : 0;  /* first
                                                  query to see these keys */
        uint32_t  t = run->tok0 + t1;

        KIMI_K(kimi_mla_kv_gather(kv, ks, b->kv_fp8, (int) b->bs, bt,
                                  (int) k0, (int) Sk, b->ex_c, b->ex_pe,
                                  b->stream, err));
        KIMI_K(kimi_bf16_gemm_nt_cublaslt(b->lt, b->ex_c, (int) Sk, R,
                                          b->ex_w, N, b->ex_kv, b->stream,
                                          err));
        KIMI_K(kimi_mla_prefill(b->q + (size_t) t * H * qk, H * qk, b->ex_kv,
                                N, b->ex_pe, P, (int) (run->n - t1),
                                (int) Sk, (int) (run->pos0 + t1 - k0), H,
                                b->softmax_scale,
                                b->attn + (size_t) t * H * dv, H * dv,
                                b->ex_lse + (size_t) t1 * H, k0 > 0,
                                b->stream, err));
    }

    return 0;
}


/* attention of layer l over b->a, already quantised in xq/xs */
static int
kimi_cuda_mla(kimi_cuda_t *b, uint32_t l, uint32_t T, uint32_t splits,
    kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    const kimi_cuda_layer_t    *L = &b->layers[l];
    const int32_t              *md = b->meta_d;
    int                         H = (int) b->H;
    int                         R = (int) c->kv_lora_rank;
    int                         P = (int) c->qk_rope_head_dim;
    int                         nope = (int) c->qk_nope_head_dim;
    int                         dv = (int) c->v_head_dim, qk = nope + P;
    size_t                      kv_per = (size_t) b->n_blocks * b->bs;
    uint32_t                    t0 = 0;
    void                       *kv;
    float                      *ks = NULL;

    /* a pipeline stage holds the cache of its own layers only */
    kv = (uint8_t *) b->kv + (l - b->l_first) * kv_per * (R + P)
                             * (b->kv_fp8 ? 1 : 2);

    if (b->kv_fp8) {
        ks = b->kv_scale + (l - b->l_first) * kv_per;
    }

    /* q = q_b(rms(q_a(a))), or q_proj(a) without a q LoRA; ckv = kv_a(a) */
    if (c->q_lora_rank > 0) {
        KIMI_K(kimi_cuda_gemm2(b, T, &L->q_a, b->qa, &L->kv_a, b->ckv, err));
        KIMI_K(kimi_cuda_norm_quant(b, b->qa, NULL, L->q_a_ln, b->qn, T,
                                    c->q_lora_rank, err));
        KIMI_K(kimi_cuda_gemm(b, T, &L->q_b, b->q, err));

    } else {
        KIMI_K(kimi_cuda_gemm2(b, T, &L->q_b, b->q, &L->kv_a, b->ckv, err));
    }

    /* rotate q_pe of every head and k_pe, then write the latent rows */
    KIMI_K(kimi_rope_f32(b->q + nope, H * qk, qk, H, b->ckv + R, R + P,
                         md + KIMI_M_POS * b->cap, (int) T, &b->rope,
                         b->stream, err));
    KIMI_K(kimi_mla_kv_write_f32(b->ckv, L->kv_a_ln, c->rms_norm_eps,
                                 md + KIMI_M_SLOT * b->cap, (int) T, kv, ks,
                                 b->kv_fp8, (int) b->bs, b->stream, err));
    KIMI_K(kimi_cuda_mark(b, KIMI_CUDA_MARK(l, 0), err));

    /* the runs in the expanded form, the tokens between them absorbed */
    if (b->n_runs > 0) {
        KIMI_K(kimi_fp8_dequant_bf16(L->kv_b.w, L->kv_b.s, (int) L->kv_b.rows,
                                     R, b->ex_w, b->stream, err));
    }

    for (uint32_t r = 0; r < b->n_runs; r++) {
        const kimi_cuda_run_t  *run = &b->runs[r];

        if (run->tok0 > t0) {
            KIMI_K(kimi_cuda_mla_absorbed(b, L, l, kv, ks, t0,
                                          run->tok0 - t0, splits, err));
        }
        KIMI_K(kimi_cuda_mla_expanded(b, kv, ks, run, err));
        t0 = run->tok0 + run->n;
    }

    if (t0 < T) {
        KIMI_K(kimi_cuda_mla_absorbed(b, L, l, kv, ks, t0, T - t0, splits,
                                      err));
    }

    if (b->n_runs > 0) {
        /* a profiled step's phases: the runs count as the MLA's */
        KIMI_K(kimi_cuda_mark(b, KIMI_CUDA_MARK(l, 1), err));
        KIMI_K(kimi_cuda_mark(b, KIMI_CUDA_MARK(l, 2), err));
        KIMI_K(kimi_cuda_mark(b, KIMI_CUDA_MARK(l, 3), err));
    }

    /* o_proj */
    KIMI_K(kimi_cuda_quant(b, b->attn, T, (uint32_t) (H * dv), err));
    KIMI_K(kimi_cuda_gemm(b, T, &L->o, b->o, err));

    /* tensor parallel: o_proj of this rank's heads is a partial sum */
    if (b->tp_nccl != NULL) {
        KIMI_K(kimi_nccl_all_reduce_f32(b->tp_nccl, b->o,
                                        (size_t) T * c->hidden_size,
                                        b->stream, err));
    }

    return 0;
}


/* y = down(silu(gate(x)) * up(x)) over T rows quantised in xq/xs (which it
 * overwrites) */
static int
kimi_cuda_dense_mlp(kimi_cuda_t *b, uint32_t T, const kimi_cuda_fp8_t *gate,
    const kimi_cuda_fp8_t *up, const kimi_cuda_fp8_t *down, float *y,
    kimi_err_t *err)
{
    KIMI_K(kimi_cuda_gemm2(b, T, gate, b->g, up, b->u, err));
    KIMI_K(kimi_silu_mul_f32(b->g, b->u, b->g, (size_t) T * gate->rows,
                             b->stream, err));
    KIMI_K(kimi_cuda_quant(b, b->g, T, gate->rows, err));
    return kimi_cuda_gemm(b, T, down, y, err);
}


/*
 * One MoE layer under expert parallelism (the cpu twin is
 * engine/backend/cpu/moe_ep.c): route this rank's T tokens over all E
 * experts, send each token once to every rank owning one of its top-k
 * (ep.h: FP8 rows, t_cap rows per peer, padded), run this rank's experts
 * over the W * t_cap rows received, send the weighted sums back in bf16
 * and add them to the shared expert's output of the rank's own tokens.
 * T = 0 (an idle rank, or one whose batch was refused) still takes part:
 * it sends padding and computes for its peers.
 */
static int
kimi_cuda_moe_ep(kimi_cuda_t *b, uint32_t l, uint32_t T, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    const kimi_cuda_layer_t    *L = &b->layers[l];
    int                         D = (int) c->hidden_size;
    int                         K = (int) b->top_k, I = (int) b->I_moe;
    int                         rows = (int) (b->ep_world * b->t_cap), slots;
    kimi_ep_shape_t             sh = { (int) b->ep_world, (int) b->t_cap, K,
                                       (int) b->E, D };
    kimi_ep_ws_t                ews;
    kimi_moe_ws_t               ws;

    if (b->p2p_on) {
        kimi_ep_inbox_carve(&ews, b->ep_inbox, &sh);

    } else {
        kimi_ep_ws_carve(&ews, b->ep_ws, &sh);
    }

    if (T > 0) {
        KIMI_K(kimi_moe_router_logits_f32(b->a, L->router, b->rl, (int) T, D,
                                          (int) b->E, b->stream, err));
        KIMI_K(kimi_moe_router_select(b->rl, L->bias, c->router, (int) T, (int) b->E, K,
                                      (int) c->n_group, (int) c->topk_group,
                                      c->norm_topk_prob,
                                      c->routed_scaling_factor, b->tidx,
                                      b->tw, b->stream, err));
    }

    if (b->p2p_on) {
        KIMI_K(kimi_ep_p2p_dispatch(&b->p2p, &sh, (int) T, b->xq, b->xs,
                                    b->tidx, b->tw, &ews, b->stream, err));

    } else {
        KIMI_K(kimi_ep_dispatch(b->nccl, &sh, (int) T, b->xq, b->xs, b->tidx,
                                b->tw, &ews, b->stream, err));
    }

    /* the shared expert of the own tokens, while the rows travel (it
     * re-quantises xq: the dispatch copied it first, in stream order) */
    if (T > 0 && b->shared) {
        KIMI_K(kimi_cuda_dense_mlp(b, T, &L->sh_gate, &L->sh_up, &L->sh_down,
                                   b->y, err));

    } else if (T > 0) {
        KIMI_CU(cudaMemsetAsync(b->y, 0, (size_t) T * D * sizeof(float),
                                b->stream), err);
    }

    kimi_moe_ws_carve(&ws, b->ep_moe_ws, rows, K, (int) b->E_local, 0, D, I);
    slots = kimi_moe_max_slots(rows, K, (int) b->E_local, 0);

    KIMI_K(kimi_moe_plan(ews.recv_idx, rows, K, (int) b->E_local, 0, &ws,
                         b->stream, err));
    KIMI_K(kimi_moe_gate_up(ews.recv_xq, ews.recv_xs, rows, D, I, slots,
                            &L->ex, &ws, b->stream, err));
    KIMI_K(kimi_moe_down_combine(rows, K, 0, D, I, slots, &L->ex, &ws,
                                 ews.recv_w, (kimi_bf16_t *) ews.y_send,
                                 b->stream, err));

    if (b->p2p_on) {
        return kimi_ep_p2p_combine(&b->p2p, &sh, (int) T, &ews, b->y,
                                   b->stream, err);
    }

    return kimi_ep_combine(b->nccl, &sh, (int) T, &ews, b->y, b->stream, err);
}


static int kimi_cuda_ffn_shard(kimi_cuda_t *b, uint32_t l, uint32_t T,
    kimi_err_t *err);
static int kimi_cuda_route(kimi_cuda_t *b, const kimi_cuda_layer_t *L,
    uint32_t T, const kimi_moe_ws_t *ws, kimi_err_t *err);


/* The FFN; under tensor parallelism every width is 1/tp: a partial sum */
static int
kimi_cuda_ffn(kimi_cuda_t *b, uint32_t l, uint32_t T, kimi_err_t *err)
{
    KIMI_K(kimi_cuda_ffn_shard(b, l, T, err));

    if (b->tp_nccl != NULL) {
        return kimi_nccl_all_reduce_f32(b->tp_nccl, b->y,
                                        (size_t) T * b->cfg->hidden_size,
                                        b->stream, err);
    }

    return 0;
}


/* the FFN of layer l over b->a, already quantised in xq/xs */
static int
kimi_cuda_ffn_shard(kimi_cuda_t *b, uint32_t l, uint32_t T, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    const kimi_cuda_layer_t    *L = &b->layers[l];
    int                         D = (int) c->hidden_size;
    int                         K = (int) b->top_k, E = (int) b->E_local;
    int                         I = (int) b->I_moe, slots;
    kimi_moe_ws_t               ws;

    if (!L->is_moe) {
        return kimi_cuda_dense_mlp(b, T, &L->gate, &L->up, &L->down, b->y,
                                   err);
    }

    if (b->nccl != NULL) {
        return kimi_cuda_moe_ep(b, l, T, err);
    }

    kimi_moe_ws_carve(&ws, b->moe_ws, (int) T, K, E, b->shared_in_moe, D,
                      I);
    slots = kimi_moe_max_slots((int) T, K, E, b->shared_in_moe);

    /* batches of 1-4 tokens: router, selection and plan in one launch
     * (over every expert: not when the ranks split them) */
    if (!b->tp_ep
        && kimi_moe_route_fused_fits(c->router, (int) T, K, E,
                                     (int) c->n_group, (int) c->topk_group))
    {
        KIMI_K(kimi_moe_route_fused_f32(b->a, L->router, L->bias, c->router,
                                        (int) T, D,
                                        E, K, (int) c->n_group,
                                        (int) c->topk_group,
                                        c->norm_topk_prob,
                                        c->routed_scaling_factor,
                                        b->shared_in_moe, b->rl, b->tidx,
                                        b->tw, &ws,
                                        b->stream, err));

    } else {
        KIMI_K(kimi_cuda_route(b, L, T, &ws, err));
    }

    KIMI_K(kimi_moe_gate_up(b->xq, b->xs, (int) T, D, I, slots, &L->ex, &ws,
                            b->stream, err));
    KIMI_K(kimi_moe_down_combine_f32((int) T, K, b->shared_in_moe, D, I,
                                     slots, &L->ex, &ws, b->tw, b->y,
                                     b->stream, err));

    /* several shared experts: one MLP n_shared times as wide, into o (free
     * once the post-attention norm has read it), then onto y */
    if (b->shared && !b->shared_in_moe) {
        KIMI_K(kimi_cuda_dense_mlp(b, T, &L->sh_gate, &L->sh_up, &L->sh_down,
                                   b->o, err));
        KIMI_K(kimi_add_f32(b->y, b->o, (size_t) T * D, b->stream, err));
    }

    return 0;
}


/* Router logits in fp32 over the bf16 gate (batches: on tensor cores, in
 * the expert outputs' buffer, free until the down GEMM), the selection,
 * then the plan. */
static int
kimi_cuda_route(kimi_cuda_t *b, const kimi_cuda_layer_t *L, uint32_t T,
    const kimi_moe_ws_t *ws, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    int                         D = (int) c->hidden_size;
    int                         K = (int) b->top_k, E = (int) b->E;

    if (T >= KIMI_ROUTER_LT_ROWS
        && kimi_moe_router_lt_ws_bytes((int) T, D, E)
           <= (size_t) ws->rows * D * sizeof(kimi_bf16_t))
    {
        KIMI_K(kimi_moe_router_logits_f32_lt(b->lt, b->a, L->router, b->rl,
                                             (int) T, D, E, ws->y, b->stream,
                                             err));

    } else {
        KIMI_K(kimi_moe_router_logits_f32(b->a, L->router, b->rl, (int) T, D,
                                          E, b->stream, err));
    }

    KIMI_K(kimi_moe_router_select(b->rl, L->bias, c->router, (int) T, E, K,
                                  (int) c->n_group, (int) c->topk_group,
                                  c->norm_topk_prob,
                                  c->routed_scaling_factor, b->tidx, b->tw,
                                  b->stream, err));

    /* tensor + expert parallel: only this rank's experts are planned; the
     * others' pairs are dropped (their sums come in the all-reduce) */
    if (b->tp_ep) {
        KIMI_K(kimi_moe_ids_localize(b->tidx, (int) (T * K),
                                     (int) b->expert_first, (int) b->E_local,
                                     b->stream, err));
    }

    return kimi_moe_plan(b->tidx, (int) T, K, (int) b->E_local,
                         b->shared_in_moe, ws, b->stream, err);
}


/* A pipeline's hop between stages: the residual stream h and the last
 * layer's FFN output y (the next layer adds it in its first norm, as one
 * GPU does), sent to or received from stage peer. */
static int
kimi_cuda_pp_hop(kimi_cuda_t *b, uint32_t T, uint32_t peer, int send,
    kimi_err_t *err)
{
    size_t  n = (size_t) T * b->cfg->hidden_size * sizeof(float);

    KIMI_K(kimi_nccl_group_start(err));

    if (send) {
        KIMI_K(kimi_nccl_send(b->pp_nccl, b->h, n, peer, b->stream, err));
        KIMI_K(kimi_nccl_send(b->pp_nccl, b->y, n, peer, b->stream, err));

    } else {
        KIMI_K(kimi_nccl_recv(b->pp_nccl, b->h, n, peer, b->stream, err));
        KIMI_K(kimi_nccl_recv(b->pp_nccl, b->y, n, peer, b->stream, err));
    }

    return kimi_nccl_group_end(b->pp_nccl, err);
}


/* The launches of one step (captured by graphs.c, or run eagerly). */
int
kimi_cuda_step(kimi_cuda_t *b, uint32_t T, uint32_t rows, uint32_t splits,
    kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    int                         D = (int) c->hidden_size, gemv;
    float                       eps = c->rms_norm_eps;
    size_t                      fin_bytes;

#define KIMI_MARK(i)                                                          \
    if (b->prof) KIMI_CU(cudaEventRecord(b->pev[i], b->stream), err)

    if (T == 0) {
        /* no tokens of this rank's own: serve the peers' MoE layers */
        for (uint32_t l = 0; b->nccl != NULL && l < c->num_hidden_layers;
             l++)
        {
            if (b->layers[l].is_moe) {
                KIMI_K(kimi_cuda_moe_ep(b, l, 0, err));
            }
        }

        return 0;
    }

    KIMI_MARK(0);
    if (b->pp_stage == 0) {
        KIMI_K(kimi_gather_rows_bf16_f32(b->embed,
                                         b->meta_d + KIMI_M_TOK * b->cap,
                                         (int) T, D, b->h, b->stream, err));

    } else {
        KIMI_K(kimi_cuda_pp_hop(b, T, b->pp_stage - 1, 0, err));
    }
    KIMI_MARK(1);

    for (uint32_t l = b->l_first; l < b->l_last; l++) {
        const kimi_cuda_layer_t  *L = &b->layers[l];

        /* h += ffn of the layer before (none for layer 0); a = rms(h),
         * quantised for the attention's first GEMMs */
        if (l == 0) {
            KIMI_K(kimi_cuda_norm_quant(b, b->h, NULL, L->in_ln, b->a, T,
                                        (uint32_t) D, err));

        } else {
            KIMI_K(kimi_cuda_norm_quant(b, b->y, b->h, L->in_ln, b->a, T,
                                        (uint32_t) D, err));
        }

        KIMI_K(kimi_cuda_mla(b, l, T, splits, err));
        KIMI_K(kimi_cuda_norm_quant(b, b->o, b->h, L->post_ln, b->a, T,
                                    (uint32_t) D, err));
        KIMI_MARK(KIMI_CUDA_MARK(l, 4));
        KIMI_K(kimi_cuda_ffn(b, l, T, err));
        KIMI_MARK(KIMI_CUDA_MARK(l, 5));
    }

    if (b->pp != NULL && b->l_last < c->num_hidden_layers) {
        /* the residual stream on to the next stage */
        KIMI_K(kimi_cuda_pp_hop(b, T, b->pp_stage + 1, 1, err));
    }

    if (rows == 0 || (b->pp_stage > 0 && b->l_last < c->num_hidden_layers)) {
        return 0;
    }

    /* logits of the wanted rows: lm_head(rms(h + ffn)), fp32; the normed
     * hidden rows of more than a GEMV's worth rounded to bf16 (the head is
     * bf16 anyway): 2^-9 per element, ~1e-6 on 1 - cos (tolerance ~1e-3) */
    gemv = rows <= KIMI_CUDA_LM_HEAD_GEMV_ROWS;
    fin_bytes = (size_t) rows * D * (gemv ? sizeof(float)
                                          : sizeof(kimi_bf16_t));

    if (b->l_last == c->num_hidden_layers) {
        KIMI_K(kimi_rmsnorm_residual_f32(b->y, b->h, b->norm, b->a, (int) T,
                                         D, eps, b->stream, err));
        if (gemv) {
            KIMI_K(kimi_gather_rows_f32(b->a, b->meta_d + KIMI_M_ROW * b->cap,
                                        (int) rows, D, b->fin, b->stream,
                                        err));
        } else {
            KIMI_K(kimi_gather_rows_f32_bf16(b->a,
                                             b->meta_d + KIMI_M_ROW * b->cap,
                                             (int) rows, D, b->fin_bf,
                                             b->stream, err));
        }
    }

    if (b->pp != NULL) {
        /* the last stage's rows to stage 0, which holds lm_head */
        if (b->pp_stage != 0) {
            return kimi_nccl_send(b->pp_nccl, gemv ? (void *) b->fin
                                                   : (void *) b->fin_bf,
                                  fin_bytes, 0, b->stream, err);
        }

        KIMI_K(kimi_nccl_recv(b->pp_nccl, gemv ? (void *) b->fin
                                               : (void *) b->fin_bf,
                              fin_bytes, b->pp_world - 1, b->stream, err));
    }

    if (gemv) {
        KIMI_K(kimi_moe_router_logits_f32(b->fin, b->lm_head, b->logits,
                                          (int) rows, D, (int) c->vocab_size,
                                          b->stream, err));

    } else {
        KIMI_K(kimi_bf16_gemm_nt_f32_cublaslt(b->lt, b->fin_bf, (int) rows, D,
                                              b->lm_head,
                                              (int) c->vocab_size, b->logits,
                                              b->stream, err));
    }
    KIMI_MARK(KIMI_CUDA_MARKS(c->num_hidden_layers) - 1);
    return 0;

#undef KIMI_MARK
}


/* The group whose failure ends this rank's steps (with tensor and
 * pipeline parallelism together, the rank's whole group: both sub-groups
 * are linked to it). */
static kimi_group_t *
kimi_cuda_group(const kimi_cuda_t *b)
{
    return b->nccl != NULL ? b->ep : b->lead;
}


/* Every communicator of this rank ended: a peer's kernels that wait on
 * this rank return.  Not waited for: NCCL's abort stops the kernels at
 * once, then may wait for the dead peer for good (the drain that follows
 * waits for the kernels). */
static void
kimi_cuda_comms_abort(kimi_cuda_t *b)
{
    kimi_nccl_t  *comms[4] = { b->nccl, b->tp_nccl, b->dcp_own, b->pp_nccl };

    kimi_nccl_abort_all(comms, 4, 0);
    kimi_cuda_p2p_abort(b);
}


/* After the communicators were aborted: the stream's kernels should end;
 * wait for them at most ms (a kernel still waiting on a dead peer must
 * not hold the process: it exits on the group's failure anyway). */
static void
kimi_cuda_drain(kimi_cuda_t *b, uint32_t ms)
{
    struct timespec  nap = { 0, 1000000 };

    for (uint32_t i = 0; i < ms; i++) {
        if (cudaStreamQuery(b->stream) != cudaErrorNotReady) {
            (void) cudaGetLastError();
            return;
        }
        (void) nanosleep(&nap, NULL);
    }

    kimi_log(KIMI_LOG_WARN, "cuda: the stream did not drain %u ms after the"
             " communicators were aborted; leaving it", ms);
}


/* An asynchronous error on any of this rank's communicators. */
static int
kimi_cuda_comms_check(kimi_cuda_t *b, kimi_err_t *err)
{
    kimi_nccl_t  *comms[4] = { b->nccl, b->tp_nccl, b->dcp_own, b->pp_nccl };

    for (int i = 0; i < 4; i++) {
        if (comms[i] != NULL && kimi_nccl_check(comms[i], err) != 0) {
            return 1;
        }
    }

    return 0;
}


int
kimi_cuda_wait(kimi_cuda_t *b, kimi_err_t *err)
{
    cudaError_t    ce;
    kimi_err_t     lerr;
    kimi_group_t  *g = kimi_cuda_group(b);
    uint32_t       spins = 0;
    int            failed;

    if (b->nccl == NULL && b->tp_nccl == NULL && b->pp_nccl == NULL) {
        KIMI_CU(cudaEventSynchronize(b->ev1), err);
        return 0;
    }

    /* a dead peer would leave the NCCL kernels waiting forever: look at
     * the group (and, now and then, the processes it watches) between
     * polls, and abort the communicators if it failed */
    for ( ;; ) {
        ce = cudaEventQuery(b->ev1);
        failed = (++spins & 1023) == 0 ? kimi_group_poll(g)
                                       : kimi_group_failed(g);

        /* a step that completed while the group failed ran on a peer's
         * aborted sums or hops: not to be trusted */
        if (ce == cudaSuccess && !failed) {
            return 0;
        }

        if (ce != cudaSuccess && ce != cudaErrorNotReady) {
            KIMI_CU(ce, err);
        }

        if (failed || kimi_cuda_comms_check(b, &lerr) != 0) {
            /* the group first: a peer that still gets rows from this
             * rank's aborted kernels must not take them for a step */
            if (!failed) {
                kimi_group_abort(g, lerr.msg);
            }
            kimi_log(KIMI_LOG_NOTICE, "cuda: the parallel group failed "
                     "while a step ran: aborting its communicators");
            kimi_cuda_comms_abort(b);
            kimi_cuda_drain(b, 5000);
            return kimi_err_set(err, KIMI_EIO, "%s parallel: %s",
                                b->nccl ? "expert"
                                : b->tp && b->pp ? "tensor and pipeline"
                                : b->tp ? "tensor" : "pipeline",
                                kimi_group_failed(g)
                                ? "the group failed (a rank ended)"
                                : lerr.msg);
        }
    }
}


/* EP: every rank's token count of this step; the largest sets the rows
 * per peer (a power of two, so graphs are reused across steps) */
static int
kimi_cuda_ep_vote(kimi_cuda_t *b, uint32_t T, uint32_t *max_T,
    kimi_err_t *err)
{
    float     n[KIMI_GROUP_MAX_RANKS];
    uint32_t  cap = 1;

    memset(n, 0, sizeof(n));
    n[b->ep_rank] = (float) T;

    KIMI_K(kimi_group_allreduce_f32(b->ep, KIMI_CUDA_TAG_EP_TOKENS, n,
                                    b->ep_world, err));

    *max_T = 0;
    for (uint32_t r = 0; r < b->ep_world; r++) {
        *max_T = (uint32_t) n[r] > *max_T ? (uint32_t) n[r] : *max_T;
    }

    while (cap < *max_T) {
        cap *= 2;
    }

    b->t_cap = cap < b->cap ? cap : b->cap;
    return 0;
}


/* The vtable's forward: a tensor- or pipeline-parallel leader first hands
 * the step to its followers (they run the same batch; the all-reduces or
 * the hops between stages meet). */
int
kimi_cuda_forward(kimi_backend_t *base, const kimi_batch_t *batch,
    kimi_err_t *err)
{
    kimi_cuda_t  *b = (kimi_cuda_t *) base;
    int           rc;

    if (b->lead != NULL) {
        if (kimi_group_rank(b->lead) != 0) {
            return kimi_err_set(err, KIMI_ESTATE, "cuda: a follower takes "
                                "its steps from the leader");
        }

        rc = kimi_step_send(b->lead, KIMI_CUDA_TAG_LEAD_STEP, KIMI_STEP_RUN,
                            batch, err);
        if (rc != 0) {
            return rc;
        }
    }

    return kimi_cuda_forward_local(b, batch, err);
}


static int
kimi_cuda_any_greedy_hint(const kimi_batch_t *batch)
{
    for (uint32_t i = 0; i < batch->n_seqs; i++) {
        if (batch->seqs[i].want_logits && batch->seqs[i].greedy_hint) {
            return 1;
        }
    }

    return 0;
}


int
kimi_cuda_forward_local(kimi_cuda_t *b, const kimi_batch_t *batch,
    kimi_err_t *err)
{
    uint32_t      T = 0, rows = 0, max_ctx = 0, splits = 0, max_T;
    uint32_t      rest_T = 0, rest_ctx = 0;
    size_t        words;
    int           rc, batch_rc = 0;
    kimi_err_t    batch_err;

    if (b->kv == NULL) {
        return kimi_err_set(err, KIMI_ESTATE, "cuda: forward before kv_init");
    }

    b->n_rows = 0;
    b->n_tokens = 0;
    b->logits_on_host = 0;
    b->greedy_on_host = 0;

    if (batch->n_seqs > 0 || b->nccl == NULL) {
        batch_rc = kimi_cuda_stage(b, batch, &T, &rows, &max_ctx, &rest_T,
                                   &rest_ctx, &batch_err);

        if (batch_rc != 0 && b->nccl == NULL) {
            *err = batch_err;
            return batch_rc;
        }
    }

    if (batch_rc != 0) {
        /* a refused batch still serves the peers' experts, with no tokens */
        T = 0;
        rows = 0;
        b->n_runs = 0;
    }

    if (b->nccl != NULL) {
        if ((rc = kimi_cuda_ep_vote(b, T, &max_T, err)) != 0) {
            return rc;
        }

        if (max_T == 0) {
            goto done;
        }
    }

    KIMI_CU(cudaEventRecord(b->ev0, b->stream), err);

    if (T > 0) {
        /* only what the step wrote: T entries of each field, and of each
         * token's block table the blocks its context covers (a table row
         * is max_model_len / block_size wide: 8 KB a token at 128K) */
        words = (max_ctx + b->vbs - 1) / b->vbs;
        words = words < b->max_bt ? words : b->max_bt;
        KIMI_CU(cudaMemcpy2DAsync(b->meta_d, b->cap * sizeof(int32_t),
                                  b->meta_h, b->cap * sizeof(int32_t),
                                  T * sizeof(int32_t), KIMI_M_N,
                                  cudaMemcpyHostToDevice, b->stream), err);
        KIMI_CU(cudaMemcpy2DAsync(b->meta_d + KIMI_M_N * (size_t) b->cap,
                                  b->max_bt * sizeof(int32_t),
                                  b->meta_h + KIMI_M_N * (size_t) b->cap,
                                  b->max_bt * sizeof(int32_t),
                                  words * sizeof(int32_t), T,
                                  cudaMemcpyHostToDevice, b->stream), err);

        /* the MLA split count is a launch shape: part of a graph's key
         * (decode context parallel: over the rows held here); for the
         * tokens the absorbed decode takes (not the expanded runs) */
        splits = rest_T == 0 ? 1
                 : (uint32_t) kimi_mla_n_splits((int) rest_T,
                                                (int) ((rest_ctx + b->dcp - 1)
                                                       / b->dcp), b->n_sm);
    }

    /* a step with expanded runs is never captured: its launches depend on
     * the runs, not only on T */
    if (b->graphs_on && !b->prof && T <= b->graph_max_t && b->n_runs == 0) {
        rc = kimi_cuda_graph_step(b, T, rows, splits, err);

    } else {
        rc = kimi_cuda_step(b, T, rows, splits, err);
    }

    if (rc != 0) {
        /* drain what was queued so the next step starts clean; under EP
         * the peers wait for this rank's rows: the group ends */
        if (b->nccl != NULL || b->tp_nccl != NULL || b->pp_nccl != NULL) {
            kimi_group_abort(kimi_cuda_group(b), err->msg);
            kimi_cuda_comms_abort(b);
        }
        kimi_cuda_drain(b, 5000);
        return rc;
    }

    /* greedy rows: their argmax and logprob come back with the step's
     * own wait, not a second round trip in sample() */
    if (rows > 0 && kimi_cuda_any_greedy_hint(batch)
        && (b->lead == NULL || kimi_group_rank(b->lead) == 0))
    {
        KIMI_K(kimi_sample_greedy_logprob(b->logits, (int) rows,
                                          (int) b->cfg->vocab_size,
                                          (int) b->cfg->vocab_size, b->argmax,
                                          b->lp, b->stream, err));
        KIMI_CU(cudaMemcpyAsync(b->ids_h, b->argmax, rows * sizeof(int32_t),
                                cudaMemcpyDeviceToHost, b->stream), err);
        KIMI_CU(cudaMemcpyAsync(b->lp_h, b->lp, rows * sizeof(float),
                                cudaMemcpyDeviceToHost, b->stream), err);
        b->greedy_on_host = 1;
    }

    KIMI_CU(cudaEventRecord(b->ev1, b->stream), err);

    if ((rc = kimi_cuda_wait(b, err)) != 0) {
        b->greedy_on_host = 0;
        return rc;
    }

    KIMI_CU(cudaEventElapsedTime(&b->last_ms, b->ev0, b->ev1), err);

done:

    if (batch_rc != 0) {
        *err = batch_err;
        return batch_rc;
    }

    b->n_rows = rows;
    b->n_tokens = T;
    return 0;
}
