/*
 * Expert-parallel dispatch and combine of one MoE layer over a padded
 * all-to-all (NCCL), written around kernels/kimi_kernels.h's MoE plan.
 *
 * W ranks each hold T <= T_cap tokens of their own batch (DP attention)
 * and E_local = E / W routed experts: global expert e lives on rank
 * e / E_local as local expert e % E_local.  A token travels at most once
 * to each rank owning any of its top_k experts.
 *
 *   dispatch  pack: for every peer p, in token order, padded to T_cap rows,
 *             one message (block p of send_buf, struct of arrays):
 *               xq  [T_cap][D]        e4m3 token
 *               xs  [T_cap][D/128]    f32 scales
 *               idx [T_cap][top_k]    local expert id, -1 if not on p / pad
 *               w   [T_cap][top_k]    router weight (0 for -1 entries)
 *             pos[t][p] = row of token t in block p, -1 if unsent; then
 *             one all-to-all of the blocks, and a split of recv_buf into
 *             recv_xq / recv_xs / recv_idx / recv_w, each [W*T_cap] rows
 *             in peer order, ready for the MoE kernels
 *   experts   (caller) kimi_moe_plan(recv_idx, W*T_cap, top_k, E_local,
 *             shared=0), kimi_moe_gate_up(recv_xq, recv_xs, ...),
 *             kimi_moe_down_combine(topk_w = recv_w) -> y_send
 *             [W*T_cap][D] bf16; padded rows have no valid pair, so the
 *             plan skips them and their y rows are 0
 *   combine   all-to-all y_send -> y_recv (block p returns to peer p),
 *             y[t] += sum_p y_recv[p][pos[t][p]] (fp32; y holds the
 *             shared expert's output of the caller's own tokens)
 *
 * Shapes are fixed by (W, T_cap, top_k, D), so a decode step containing
 * dispatch + experts + combine can be captured in a CUDA graph.  FP8 goes
 * out, bf16 comes back.  Cost per layer and rank: 2 * W * T_cap rows on
 * the wire, most of them padding at small batch (the price of padding;
 * a count-exchange version would send only real rows).
 *
 * Used by the cuda backend's MoE layers under --enable-expert-parallel
 * (engine/backend/cuda/forward.c); t/gpu/parallel_check.c checks the
 * routing against a host model and times it against raw ncclAlltoAll.
 */

#ifndef KIMI_EP_H
#define KIMI_EP_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "../common/kimi_err.h"
#include "nccl_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int       world;       /* W */
    int       t_cap;       /* token rows per rank and per peer block */
    int       top_k;
    int       n_experts;   /* E (global routed experts), E % W == 0 */
    int       dim;         /* D, % 128 == 0 */
} kimi_ep_shape_t;

/* Device views into one workspace (kimi_ep_ws_carve). */
typedef struct {
    uint8_t   *send_buf, *recv_buf;   /* [W][kimi_ep_block_bytes] */
    int32_t   *recv_idx;              /* [W][T_cap][top_k] */
    float     *recv_w;                /* [W][T_cap][top_k] */
    uint8_t   *recv_xq;               /* [W][T_cap][D] e4m3 */
    float     *recv_xs;               /* [W][T_cap][D/128] */
    int32_t   *pos;                   /* [T_cap][W] */
    uint16_t  *y_send, *y_recv;       /* [W][T_cap][D] bf16 */
} kimi_ep_ws_t;

int    kimi_ep_check(const kimi_ep_shape_t *sh, kimi_err_t *err);
/* One peer's dispatch message: T_cap * (D + D/32 + 8 top_k) bytes. */
size_t kimi_ep_block_bytes(const kimi_ep_shape_t *sh);
size_t kimi_ep_ws_bytes(const kimi_ep_shape_t *sh);
void   kimi_ep_ws_carve(kimi_ep_ws_t *ws, void *base,
    const kimi_ep_shape_t *sh);

/* T real tokens (<= T_cap): xq [T][D], xs [T][D/128] (token-major),
 * idx/w [T][top_k] from kimi_moe_router_select.  Fills send_buf and pos,
 * and after the all-to-all recv_buf and the recv_* arrays. */
int kimi_ep_dispatch(kimi_nccl_t *comm, const kimi_ep_shape_t *sh, int T,
    const uint8_t *xq, const float *xs, const int32_t *idx, const float *w,
    const kimi_ep_ws_t *ws, cudaStream_t s, kimi_err_t *err);

/* After the caller wrote ws->y_send: returns the rows and adds them, in
 * peer order, to y [T][D] fp32 (the caller's shared-expert output, or
 * zeros). */
int kimi_ep_combine(kimi_nccl_t *comm, const kimi_ep_shape_t *sh, int T,
    const kimi_ep_ws_t *ws, float *y, cudaStream_t s, kimi_err_t *err);

/*
 * The same exchange over peer memory (NVLink P2P, every rank of one node):
 * each rank owns an inbox, mapped by every peer (CUDA IPC between the
 * engine's processes, plain pointers between threads), laid out as
 *   flags [W] u64 | pos [T_cap][W] | recv_idx | recv_w | recv_xq |
 *   recv_xs | y_send
 * (the recv_* and y_send arrays as above, for this step's T_cap).
 *   dispatch  grid (T_cap, W): block (t, p) writes token t's ids, weights
 *             (-1 / 0 where p owns none of its experts, or t >= T) and,
 *             if sent, its FP8 row and scales straight into row
 *             rank * T_cap + t of peer p's inbox; then a barrier
 *   combine   a barrier (every peer's y_send is complete), then y[t] +=
 *             sum_p peer p's y_send row rank * T_cap + t, read over NVLink
 * No pack, no all-to-all, no split: 4 small kernels a layer.  The barrier
 * is a flag per peer pair in the inboxes: a device-side epoch, stored to
 * each peer's flag with release semantics at system scope, awaited with
 * acquire loads; every rank runs the same barriers in the same order, so
 * epochs agree (graph replays included).  A waiting kernel also returns
 * when *abort (host memory mapped into the device) turns nonzero, so a
 * dead peer cannot hang the GPU.
 */
typedef struct {
    int                   rank;
    void *const          *peer_inbox;  /* device array [W], own included */
    void                 *inbox;       /* this rank's, = peer_inbox[rank] */
    uint64_t             *epoch;       /* device: barriers run */
    const volatile int   *abort;       /* device view of a host flag */
} kimi_ep_p2p_t;

/* Inbox bytes for sh->t_cap (allocate for the largest T_cap). */
size_t kimi_ep_inbox_bytes(const kimi_ep_shape_t *sh);
/* Views of an inbox for this step's sh->t_cap (send_buf, recv_buf and
 * y_recv are NULL: nothing is packed or received whole). */
void   kimi_ep_inbox_carve(kimi_ep_ws_t *ws, void *inbox,
    const kimi_ep_shape_t *sh);

int kimi_ep_p2p_dispatch(const kimi_ep_p2p_t *p2p, const kimi_ep_shape_t *sh,
    int T, const uint8_t *xq, const float *xs, const int32_t *idx,
    const float *w, const kimi_ep_ws_t *ws, cudaStream_t s, kimi_err_t *err);
int kimi_ep_p2p_combine(const kimi_ep_p2p_t *p2p, const kimi_ep_shape_t *sh,
    int T, const kimi_ep_ws_t *ws, float *y, cudaStream_t s,
    kimi_err_t *err);

#ifdef __cplusplus
}
#endif

#endif
