/*
 * Expert-parallel pack, all-to-all and unpack, and the same exchange
 * over peer memory (contract and layouts in ep.h).
 *
 *   pack      one warp per peer p scans the T tokens in order, 32 at a
 *             time: a token is sent if any of its top_k experts lives on
 *             p; its row is the number of sent tokens before it (ballot +
 *             popc), so rows are in token order and the result does not
 *             depend on scheduling.  Rows past the count are padding.
 *   copy      grid (T, W): the e4m3 row (D bytes, 16 at a time) and its
 *             D/128 scales of every sent token into block p.
 *   send      one all-to-all of the blocks: a message per peer, not four
 *             (four grouped all-to-alls cost 2.3-2.9x one of the same
 *             bytes on 2 H200s, bench/RESULTS.md).
 *   split     grid W*T_cap: the received blocks into the contiguous
 *             arrays the MoE kernels read (padding rows: ids only).
 *   unpack    grid T: y[t,d] += sum_p y_recv[p][pos[t][p]][d], fp32.
 *
 * Cost:  pack reads T*top_k ids per peer; copy moves W*T*(D + D/32) bytes
 *        at most, split W*T_cap*(D + D/32) (less where rows are padding);
 *        unpack reads W*T*D*2 + T*D*8 bytes.  All memory bound and
 *        tiny next to the expert GEMMs; the all-to-all dominates.
 * Twin:  engine/backend/cpu/moe_ep.c does the same exchange through
 *        shared memory; t/gpu/parallel_check.c holds a host model of the
 *        pack and checks dispatch + combine against it on 2 GPUs.
 */

#include <string.h>
#include <cuda_runtime.h>

#include "../../kernels/kimi_cuda.cuh"
#include "ep.h"

#define KIMI_EP_ALIGN 256            /* every carved array starts here */


/* Where the arrays of peer p's message sit (ep.h: xq, xs, idx, w). */
struct kimi_ep_block {
    size_t  bytes, xs, idx, w;       /* block size and offsets in it */

    __host__ __device__ kimi_ep_block(int t_cap, int D, int top_k)
    {
        xs = (size_t) t_cap * D;
        idx = xs + (size_t) t_cap * (D / 128) * sizeof(float);
        w = idx + (size_t) t_cap * top_k * sizeof(int32_t);
        bytes = w + (size_t) t_cap * top_k * sizeof(float);
    }
};


static __global__ void
kimi_ep_pack_kernel(const int32_t *idx, const float *w, int T, int t_cap,
                    int top_k, int e_local, int world, int D,
                    uint8_t *send, int32_t *pos)
{
    int            p = blockIdx.x;
    int            lane = threadIdx.x;
    int            base, t, k, e, row, count = 0;
    unsigned       mask, sent;
    kimi_ep_block  blk(t_cap, D, top_k);
    int32_t       *send_idx = (int32_t *) (send + p * blk.bytes + blk.idx);
    float         *send_w = (float *) (send + p * blk.bytes + blk.w);

    for (base = 0; base < t_cap; base += 32) {
        t = base + lane;
        sent = 0;

        if (t < T) {
            for (k = 0; k < top_k; k++) {
                e = idx[t * top_k + k];                  /* [T][top_k] */
                sent |= e >= 0 && e / e_local == p;
            }
        }

        mask = __ballot_sync(0xffffffffu, sent);
        row = count + __popc(mask & ((1u << lane) - 1));

        if (t < t_cap) {
            pos[t * world + p] = sent ? row : -1;        /* [T_cap][W] */
        }

        if (sent) {
            for (k = 0; k < top_k; k++) {
                e = idx[t * top_k + k];
                int  mine = e >= 0 && e / e_local == p;
                send_idx[row * top_k + k] = mine ? e % e_local : -1;
                send_w[row * top_k + k] = mine ? w[t * top_k + k] : 0.0f;
            }
        }

        count += __popc(mask);
    }

    /* padding: no valid pair, so kimi_moe_plan gives these rows no slot */
    for (row = count + lane; row < t_cap; row += 32) {
        for (k = 0; k < top_k; k++) {
            send_idx[row * top_k + k] = -1;
            send_w[row * top_k + k] = 0.0f;
        }
    }
}


static __global__ void
kimi_ep_copy_kernel(const uint8_t *xq, const float *xs, const int32_t *pos,
                    int t_cap, int world, int D, int top_k, uint8_t *send)
{
    int            t = blockIdx.x;
    int            p = blockIdx.y;
    int            row = pos[t * world + p];
    int            i, n_groups = D / 128;
    kimi_ep_block  blk(t_cap, D, top_k);
    const uint4   *src;                                  /* [D/16] */
    uint4         *dst;
    float         *dst_s;

    if (row < 0) {
        return;
    }

    src = (const uint4 *) (xq + (size_t) t * D);
    dst = (uint4 *) (send + p * blk.bytes + (size_t) row * D);
    for (i = threadIdx.x; i < D / 16; i += blockDim.x) {
        dst[i] = src[i];
    }

    dst_s = (float *) (send + p * blk.bytes + blk.xs) + (size_t) row
                                                        * n_groups;
    for (i = threadIdx.x; i < n_groups; i += blockDim.x) {
        dst_s[i] = xs[(size_t) t * n_groups + i];
    }
}


/* recv_buf's blocks -> the contiguous [W*T_cap] arrays the MoE takes;
 * grid W*T_cap, one row each (padding rows: ids only, their x is unread) */
static __global__ void
kimi_ep_split_kernel(const uint8_t *recv, int t_cap, int D, int top_k,
                     uint8_t *xq, float *xs, int32_t *idx, float *w)
{
    int            r = blockIdx.x;                       /* p * t_cap + row */
    int            p = r / t_cap, row = r % t_cap, i, any = 0;
    int            n_groups = D / 128;
    kimi_ep_block  blk(t_cap, D, top_k);
    const uint8_t *b = recv + p * blk.bytes;
    const int32_t *bi = (const int32_t *) (b + blk.idx) + row * top_k;
    const float   *bw = (const float *) (b + blk.w) + row * top_k;

    for (i = 0; i < top_k; i++) {
        any |= bi[i] >= 0;
    }

    for (i = threadIdx.x; i < top_k; i += blockDim.x) {
        idx[(size_t) r * top_k + i] = bi[i];
        w[(size_t) r * top_k + i] = bw[i];
    }

    if (!any) {
        return;
    }

    {
        const uint4  *src = (const uint4 *) (b + (size_t) row * D);
        uint4        *dst = (uint4 *) (xq + (size_t) r * D);
        const float  *ss = (const float *) (b + blk.xs) + (size_t) row
                                                          * n_groups;

        for (i = threadIdx.x; i < D / 16; i += blockDim.x) {
            dst[i] = src[i];
        }
        for (i = threadIdx.x; i < n_groups; i += blockDim.x) {
            xs[(size_t) r * n_groups + i] = ss[i];
        }
    }
}


static __global__ void
kimi_ep_unpack_kernel(const uint16_t *y_recv, const int32_t *pos, int t_cap,
                      int world, int D, float *y)
{
    int    t = blockIdx.x;
    int    d, p, row;
    float  acc;

    for (d = threadIdx.x; d < D; d += blockDim.x) {
        acc = y[(size_t) t * D + d];

        /* fixed peer order: the sum is the same on every run */
        for (p = 0; p < world; p++) {
            row = pos[t * world + p];
            if (row >= 0) {
                acc += kimi_bf2f(y_recv[((size_t) p * t_cap + row) * D + d]);
            }
        }

        y[(size_t) t * D + d] = acc;
    }
}


static size_t
kimi_ep_round(size_t n)
{
    return (n + KIMI_EP_ALIGN - 1) / KIMI_EP_ALIGN * KIMI_EP_ALIGN;
}


extern "C" int
kimi_ep_check(const kimi_ep_shape_t *sh, kimi_err_t *err)
{
    if (sh->world < 1 || sh->t_cap < 1 || sh->top_k < 1 || sh->top_k > 32
        || sh->n_experts < sh->world || sh->n_experts % sh->world != 0
        || sh->dim < 128 || sh->dim % 128 != 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "ep: world=%d t_cap=%d"
                            " top_k=%d n_experts=%d dim=%d (need experts %%"
                            " world == 0, dim %% 128 == 0, top_k <= 32)",
                            sh->world, sh->t_cap, sh->top_k, sh->n_experts,
                            sh->dim);
    }

    return 0;
}


extern "C" size_t
kimi_ep_block_bytes(const kimi_ep_shape_t *sh)
{
    return kimi_ep_block(sh->t_cap, sh->dim, sh->top_k).bytes;
}


extern "C" size_t
kimi_ep_ws_bytes(const kimi_ep_shape_t *sh)
{
    size_t  rows = (size_t) sh->world * sh->t_cap;

    return 2 * kimi_ep_round((size_t) sh->world * kimi_ep_block_bytes(sh))
           + kimi_ep_round(rows * sh->top_k * sizeof(int32_t))
           + kimi_ep_round(rows * sh->top_k * sizeof(float))
           + kimi_ep_round(rows * sh->dim)
           + kimi_ep_round(rows * (sh->dim / 128) * sizeof(float))
           + kimi_ep_round((size_t) sh->t_cap * sh->world * sizeof(int32_t))
           + 2 * kimi_ep_round(rows * sh->dim * sizeof(uint16_t));
}


extern "C" void
kimi_ep_ws_carve(kimi_ep_ws_t *ws, void *base, const kimi_ep_shape_t *sh)
{
    char    *p = (char *) base;
    size_t   rows = (size_t) sh->world * sh->t_cap;
    size_t   msg = (size_t) sh->world * kimi_ep_block_bytes(sh);

#define KIMI_EP_TAKE(field, type, n)                                          \
    ws->field = (type *) p;                                                   \
    p += kimi_ep_round((n) * sizeof(type))

    KIMI_EP_TAKE(send_buf, uint8_t, msg);
    KIMI_EP_TAKE(recv_buf, uint8_t, msg);
    KIMI_EP_TAKE(recv_idx, int32_t, rows * sh->top_k);
    KIMI_EP_TAKE(recv_w, float, rows * sh->top_k);
    KIMI_EP_TAKE(recv_xq, uint8_t, rows * sh->dim);
    KIMI_EP_TAKE(recv_xs, float, rows * (sh->dim / 128));
    KIMI_EP_TAKE(pos, int32_t, (size_t) sh->t_cap * sh->world);
    KIMI_EP_TAKE(y_send, uint16_t, rows * sh->dim);
    KIMI_EP_TAKE(y_recv, uint16_t, rows * sh->dim);

#undef KIMI_EP_TAKE
}


extern "C" int
kimi_ep_dispatch(kimi_nccl_t *comm, const kimi_ep_shape_t *sh, int T,
    const uint8_t *xq, const float *xs, const int32_t *idx, const float *w,
    const kimi_ep_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    int  rc;

    rc = kimi_ep_check(sh, err);
    if (rc != 0) {
        return rc;
    }

    if (T < 0 || T > sh->t_cap || (int) kimi_nccl_world(comm) != sh->world
        || ((uintptr_t) xq & 15) != 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "ep dispatch: T=%d t_cap=%d"
                            " world=%d comm world=%u xq %s16-byte aligned",
                            T, sh->t_cap, sh->world, kimi_nccl_world(comm),
                            ((uintptr_t) xq & 15) ? "not " : "");
    }

    kimi_ep_pack_kernel<<<sh->world, 32, 0, s>>>(idx, w, T, sh->t_cap,
        sh->top_k, sh->n_experts / sh->world, sh->world, sh->dim,
        ws->send_buf, ws->pos);
    KIMI_CUDA_LAUNCHED(s, err);

    if (T > 0) {
        kimi_ep_copy_kernel<<<dim3(T, sh->world), 128, 0, s>>>(xq, xs,
            ws->pos, sh->t_cap, sh->world, sh->dim, sh->top_k, ws->send_buf);
        KIMI_CUDA_LAUNCHED(s, err);
    }

    /* one message per peer: ids, weights, rows and scales together */
    rc = kimi_nccl_all_to_all(comm, ws->send_buf, ws->recv_buf,
                              kimi_ep_block_bytes(sh), s, err);
    if (rc != 0) {
        return rc;
    }

    kimi_ep_split_kernel<<<sh->world * sh->t_cap, 128, 0, s>>>(ws->recv_buf,
        sh->t_cap, sh->dim, sh->top_k, ws->recv_xq, ws->recv_xs,
        ws->recv_idx, ws->recv_w);
    KIMI_CUDA_LAUNCHED(s, err);

    return 0;
}


extern "C" int
kimi_ep_combine(kimi_nccl_t *comm, const kimi_ep_shape_t *sh, int T,
    const kimi_ep_ws_t *ws, float *y, cudaStream_t s, kimi_err_t *err)
{
    int  rc;

    if (T < 0 || T > sh->t_cap) {
        return kimi_err_set(err, KIMI_EINVAL, "ep combine: T=%d t_cap=%d",
                            T, sh->t_cap);
    }

    rc = kimi_nccl_all_to_all(comm, ws->y_send, ws->y_recv,
                              (size_t) sh->t_cap * sh->dim * sizeof(uint16_t),
                              s, err);
    if (rc != 0) {
        return rc;
    }

    if (T > 0) {
        kimi_ep_unpack_kernel<<<T, 256, 0, s>>>(ws->y_recv, ws->pos,
            sh->t_cap, sh->world, sh->dim, y);
        KIMI_CUDA_LAUNCHED(s, err);
    }

    return 0;
}



/* ---- over peer memory (ep.h: kimi_ep_p2p_t) ------------------------------ */

#define KIMI_EP_P2P_THREADS 128

static size_t
kimi_ep_flags_bytes(int world)
{
    return kimi_ep_round((size_t) world * sizeof(uint64_t));
}


extern "C" size_t
kimi_ep_inbox_bytes(const kimi_ep_shape_t *sh)
{
    size_t  rows = (size_t) sh->world * sh->t_cap;

    return kimi_ep_flags_bytes(sh->world)
           + kimi_ep_round((size_t) sh->t_cap * sh->world * sizeof(int32_t))
           + kimi_ep_round(rows * sh->top_k * sizeof(int32_t))
           + kimi_ep_round(rows * sh->top_k * sizeof(float))
           + kimi_ep_round(rows * sh->dim)
           + kimi_ep_round(rows * (sh->dim / 128) * sizeof(float))
           + kimi_ep_round(rows * sh->dim * sizeof(uint16_t));
}


extern "C" void
kimi_ep_inbox_carve(kimi_ep_ws_t *ws, void *inbox, const kimi_ep_shape_t *sh)
{
    char    *p = (char *) inbox + kimi_ep_flags_bytes(sh->world);
    size_t   rows = (size_t) sh->world * sh->t_cap;

#define KIMI_EP_TAKE(field, type, n)                                          \
    ws->field = (type *) p;                                                   \
    p += kimi_ep_round((n) * sizeof(type))

    ws->send_buf = NULL;
    ws->recv_buf = NULL;
    ws->y_recv = NULL;
    KIMI_EP_TAKE(pos, int32_t, (size_t) sh->t_cap * sh->world);
    KIMI_EP_TAKE(recv_idx, int32_t, rows * sh->top_k);
    KIMI_EP_TAKE(recv_w, float, rows * sh->top_k);
    KIMI_EP_TAKE(recv_xq, uint8_t, rows * sh->dim);
    KIMI_EP_TAKE(recv_xs, float, rows * (sh->dim / 128));
    KIMI_EP_TAKE(y_send, uint16_t, rows * sh->dim);

#undef KIMI_EP_TAKE
}


/* Offsets of the arrays a peer writes or reads, the same in every inbox
 * (same shape on every rank). */
struct kimi_ep_inbox_off {
    size_t  idx, w, xq, xs, y;
};


static __global__ void __launch_bounds__(KIMI_EP_P2P_THREADS)
kimi_ep_p2p_dispatch_kernel(const uint8_t *__restrict__ xq,
    const float *__restrict__ xs, const int32_t *__restrict__ idx,
    const float *__restrict__ w, int T, int t_cap, int top_k, int e_local,
    int world, int D, int rank, void *const *peer_inbox,
    kimi_ep_inbox_off off, int32_t *pos)
{
    __shared__ int  sent;
    int             t = blockIdx.x, p = blockIdx.y, k = threadIdx.x, i;
    char           *peer = (char *) peer_inbox[p];
    size_t          R = (size_t) rank * t_cap + t;       /* row at p */
    int             G = D / 128;

    if (threadIdx.x == 0) {
        sent = 0;
    }
    __syncthreads();

    if (k < top_k) {
        int  e = t < T ? idx[(size_t) t * top_k + k] : -1;
        int  mine = e >= 0 && e / e_local == p;

        ((int32_t *) (peer + off.idx))[R * top_k + k] = mine ? e % e_local
                                                             : -1;
        ((float *) (peer + off.w))[R * top_k + k] = mine
                                                    ? w[(size_t) t * top_k + k]
                                                    : 0.0f;
        if (mine) {
            sent = 1;                     /* same value from every writer */
        }
    }
    __syncthreads();

    if (threadIdx.x == 0) {
        pos[t * world + p] = sent ? t : -1;
    }

    if (!sent) {
        return;
    }

    {
        const uint4  *src = (const uint4 *) (xq + (size_t) t * D);
        uint4        *dst = (uint4 *) (peer + off.xq + R * D);
        float        *dst_s = (float *) (peer + off.xs) + R * G;

        for (i = threadIdx.x; i < D / 16; i += blockDim.x) {
            dst[i] = src[i];
        }
        for (i = threadIdx.x; i < G; i += blockDim.x) {
            dst_s[i] = xs[(size_t) t * G + i];
        }
    }
}


/* Every rank's earlier kernels on its stream are done and visible: each
 * thread stores the new epoch into one peer's flag for this rank
 * (release, system scope: cumulative over what this GPU wrote before, in
 * stream order), then waits for every peer's flag in the own inbox. */
static __global__ void
kimi_ep_p2p_barrier_kernel(void *const *peer_inbox, int world, int rank,
    uint64_t *epoch, const volatile int *abort)
{
    __shared__ uint64_t  e;
    int                  p;

    if (threadIdx.x == 0) {
        e = ++*epoch;
    }
    __syncthreads();
    __threadfence_system();

    for (p = threadIdx.x; p < world; p += blockDim.x) {
        uint64_t  *f = (uint64_t *) peer_inbox[p] + rank;

        asm volatile("st.release.sys.global.u64 [%0], %1;"
                     :: "l"(f), "l"(e) : "memory");
    }

    for (p = threadIdx.x; p < world; p += blockDim.x) {
        const uint64_t  *f = (const uint64_t *) peer_inbox[rank] + p;
        uint64_t         v;

        /* the abort flag lives in host memory: looked at every 1024th
         * round, not every round (a PCIe read each) */
        for (unsigned spin = 1; ; spin++) {
            asm volatile("ld.acquire.sys.global.u64 %0, [%1];"
                         : "=l"(v) : "l"(f) : "memory");
            if (v >= e || (spin % 1024 == 0 && *abort)) {
                break;
            }
        }
    }
}


/* grid (T, D / 1024): 8 bf16 per thread from every peer that got the
 * token, summed in peer order (the same on every run) */
static __global__ void __launch_bounds__(KIMI_EP_P2P_THREADS)
kimi_ep_p2p_combine_kernel(void *const *peer_inbox, size_t off_y,
    const int32_t *pos, int t_cap, int world, int rank, int D, float *y)
{
    int     t = blockIdx.x, d = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    float   acc[8], v[8];
    int     p, i;

    if (d >= D) {
        return;
    }

    kimi_ld8(y + (size_t) t * D + d, acc);

    for (p = 0; p < world; p++) {
        if (pos[t * world + p] < 0) {
            continue;
        }

        const uint16_t  *src = (const uint16_t *) ((const char *) peer_inbox[p]
                                                   + off_y)
                               + ((size_t) rank * t_cap + t) * D + d;

        kimi_ld8(src, v);
        for (i = 0; i < 8; i++) {
            acc[i] += v[i];
        }
    }

    kimi_st4(y + (size_t) t * D + d, acc);
    kimi_st4(y + (size_t) t * D + d + 4, acc + 4);
}


static int
kimi_ep_p2p_args(const kimi_ep_p2p_t *p2p, const kimi_ep_shape_t *sh, int T,
    const kimi_ep_ws_t *ws, kimi_ep_inbox_off *off, kimi_err_t *err)
{
    int  rc = kimi_ep_check(sh, err);

    memset(off, 0, sizeof(*off));

    if (rc != 0) {
        return rc;
    }

    if (p2p == NULL || p2p->peer_inbox == NULL || p2p->inbox == NULL
        || p2p->epoch == NULL || p2p->abort == NULL || T < 0
        || T > sh->t_cap || p2p->rank < 0 || p2p->rank >= sh->world
        || sh->dim % 1024 != 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "ep p2p: T=%d t_cap=%d rank=%d"
                            " world=%d dim=%d (dim %% 1024, every pointer"
                            " set)", T, sh->t_cap, p2p ? p2p->rank : -1,
                            sh->world, sh->dim);
    }

    off->idx = (size_t) ((const char *) ws->recv_idx - (const char *) p2p->inbox);
    off->w = (size_t) ((const char *) ws->recv_w - (const char *) p2p->inbox);
    off->xq = (size_t) ((const char *) ws->recv_xq - (const char *) p2p->inbox);
    off->xs = (size_t) ((const char *) ws->recv_xs - (const char *) p2p->inbox);
    off->y = (size_t) ((const char *) ws->y_send - (const char *) p2p->inbox);
    return 0;
}


extern "C" int
kimi_ep_p2p_dispatch(const kimi_ep_p2p_t *p2p, const kimi_ep_shape_t *sh,
    int T, const uint8_t *xq, const float *xs, const int32_t *idx,
    const float *w, const kimi_ep_ws_t *ws, cudaStream_t s, kimi_err_t *err)
{
    kimi_ep_inbox_off  off;
    int                rc = kimi_ep_p2p_args(p2p, sh, T, ws, &off, err);

    if (rc != 0) {
        return rc;
    }

    if (sh->top_k > KIMI_EP_P2P_THREADS || ((uintptr_t) xq & 15) != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "ep p2p dispatch: top_k %d,"
                            " xq %s16-byte aligned", sh->top_k,
                            ((uintptr_t) xq & 15) ? "not " : "");
    }

    kimi_ep_p2p_dispatch_kernel<<<dim3(sh->t_cap, sh->world),
                                  KIMI_EP_P2P_THREADS, 0, s>>>(xq, xs, idx, w,
        T, sh->t_cap, sh->top_k, sh->n_experts / sh->world, sh->world,
        sh->dim, p2p->rank, p2p->peer_inbox, off, ws->pos);
    KIMI_CUDA_LAUNCHED(s, err);

    kimi_ep_p2p_barrier_kernel<<<1, 32, 0, s>>>(p2p->peer_inbox, sh->world,
        p2p->rank, p2p->epoch, p2p->abort);
    KIMI_CUDA_LAUNCHED(s, err);
    return 0;
}


extern "C" int
kimi_ep_p2p_combine(const kimi_ep_p2p_t *p2p, const kimi_ep_shape_t *sh,
    int T, const kimi_ep_ws_t *ws, float *y, cudaStream_t s, kimi_err_t *err)
{
    kimi_ep_inbox_off  off;
    int                rc = kimi_ep_p2p_args(p2p, sh, T, ws, &off, err);

    if (rc != 0) {
        return rc;
    }

    kimi_ep_p2p_barrier_kernel<<<1, 32, 0, s>>>(p2p->peer_inbox, sh->world,
        p2p->rank, p2p->epoch, p2p->abort);
    KIMI_CUDA_LAUNCHED(s, err);

    if (T > 0) {
        kimi_ep_p2p_combine_kernel<<<dim3(T, sh->dim / 1024),
                                     KIMI_EP_P2P_THREADS, 0, s>>>(
            p2p->peer_inbox, off.y, ws->pos, sh->t_cap, sh->world, p2p->rank,
            sh->dim, y);
        KIMI_CUDA_LAUNCHED(s, err);
    }

    return 0;
}
