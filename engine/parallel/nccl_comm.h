/*
 * The NCCL communicator of one rank and the collectives the parallel
 * layouts use: all-reduce for tensor parallelism (all-gather and the
 * all-to-all for its decode context parallel attention), a padded
 * all-to-all for expert parallelism (dispatch and combine, ep.h), send /
 * receive for the hops between pipeline stages.
 *
 * Owns:   ncclComm_t of this rank, the run-time NCCL version check, the
 *         environment NCCL reads at init (NVLink multicast off).
 * Never:  synchronizes a stream or allocates device memory: callers pass
 *         device buffers and a stream, so every call can be captured in a
 *         CUDA graph; never used by a rank that holds a lock.
 *
 * Built only with CUDA (KIMI_HAVE_CUDA, NCCL from the CUDA toolkit); in a
 * CPU build every entry returns KIMI_EUNSUPPORTED.  Used by the cuda
 * backend's expert parallelism; t/gpu/parallel_check.c checks it.
 */

#ifndef KIMI_NCCL_COMM_H
#define KIMI_NCCL_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "../common/kimi_err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ncclAlltoAll appeared in NCCL 2.28; older runtimes get grouped
 * ncclSend/ncclRecv, which is what ncclAlltoAll does inside */
#define KIMI_NCCL_MIN_VERSION      21400    /* 2.14: ncclCommInitRankConfig */
#define KIMI_NCCL_ALLTOALL_VERSION 22800

typedef struct kimi_nccl  kimi_nccl_t;

/* Asked while a call waits on the other ranks: nonzero = give up (the
 * group failed), and the communicator is aborted. */
typedef int (*kimi_nccl_stop_fn)(void *arg);

/* Head node: a fresh ncclUniqueId as an opaque blob for the bootstrap. */
int  kimi_nccl_unique_id(uint8_t *buf, size_t cap, uint32_t *len,
    kimi_err_t *err);

/* The loaded library's version (e.g. 22809), or KIMI_EUNSUPPORTED below
 * KIMI_NCCL_MIN_VERSION or without CUDA. */
int  kimi_nccl_version(int *version, kimi_err_t *err);

/*
 * Joins the communicator: blob from the bootstrap (every rank the same),
 * rank in [0, world).  Sets NCCL_NVLS_ENABLE=0 first (NVLink multicast
 * stays off: a project rule, reference/gpu-anchors.md).  The calling
 * thread's current CUDA device must be the rank's GPU.  Waits until all
 * ranks joined; with stop (nonblocking communicator) it gives up when
 * stop(stop_arg) says so, and so does every later call that waits.
 */
int  kimi_nccl_init(kimi_nccl_t **out, const uint8_t *blob, uint32_t blob_len,
    uint32_t rank, uint32_t world, kimi_nccl_stop_fn stop, void *stop_arg,
    kimi_err_t *err);

/* Ends the communicator now, from any thread: kernels waiting on a dead
 * peer return; every later call fails.  NULL is a no-op.  NCCL's abort
 * may go on waiting for a dead peer after it stopped the kernels: it runs
 * on a thread of its own and is left there after KIMI_NCCL_ABORT_MS (a
 * warning) - the process is ending. */
#define KIMI_NCCL_ABORT_MS   2000
#define KIMI_NCCL_ABORT_MAX  8

void kimi_nccl_abort(kimi_nccl_t *c);

/* The same for n (<= KIMI_NCCL_ABORT_MAX, NULLs skipped) at once: each on
 * its own thread, waited for together, at most ms (0: not at all, for a
 * caller that waits for its kernels to end instead). */
void kimi_nccl_abort_all(kimi_nccl_t *const *cs, uint32_t n, uint32_t ms);

/* An asynchronous NCCL error (a peer's failure seen by the proxy), or an
 * aborted communicator, as an error; 0 while sound. */
int  kimi_nccl_check(kimi_nccl_t *c, kimi_err_t *err);

void kimi_nccl_free(kimi_nccl_t *c);       /* NULL is a no-op */

uint32_t kimi_nccl_rank(const kimi_nccl_t *c);
uint32_t kimi_nccl_world(const kimi_nccl_t *c);

/* stream is a cudaStream_t (void * keeps this header C-only). */

/* TP: buf[n] bf16 / fp32 summed over ranks, in place. */
int  kimi_nccl_all_reduce_bf16(kimi_nccl_t *c, void *buf, size_t n,
    void *stream, kimi_err_t *err);
int  kimi_nccl_all_reduce_f32(kimi_nccl_t *c, float *buf, size_t n,
    void *stream, kimi_err_t *err);

/* Several collectives as one launch (ncclGroupStart/End): calls between
 * the two are queued and issued together at group end. */
int  kimi_nccl_group_start(kimi_err_t *err);
int  kimi_nccl_group_end(kimi_nccl_t *c, kimi_err_t *err);

/* DCP: recv[world][bytes] = every rank's send[bytes], in rank order. */
int  kimi_nccl_all_gather(kimi_nccl_t *c, const void *send, void *recv,
    size_t bytes, void *stream, kimi_err_t *err);

/* PP: bytes from buf to rank peer / into buf from rank peer (one side
 * each of a transfer; both sides' calls meet in the order issued). */
int  kimi_nccl_send(kimi_nccl_t *c, const void *buf, size_t bytes,
    uint32_t peer, void *stream, kimi_err_t *err);
int  kimi_nccl_recv(kimi_nccl_t *c, void *buf, size_t bytes, uint32_t peer,
    void *stream, kimi_err_t *err);

/* EP: send[world][bytes_per_peer] -> recv[world][bytes_per_peer]; block p
 * of send goes to rank p, block p of recv came from rank p.  Fixed size
 * (padded), so the call is graph-capturable. */
int  kimi_nccl_all_to_all(kimi_nccl_t *c, const void *send, void *recv,
    size_t bytes_per_peer, void *stream, kimi_err_t *err);

#ifdef __cplusplus
}
#endif

#endif
