/*
 * The NCCL communicator of one rank and the collectives the parallel
 * layouts use: all-reduce for tensor parallelism, a padded all-to-all for
 * expert parallelism (dispatch and combine, ep.h).
 *
 * Owns:   ncclComm_t of this rank, the run-time NCCL version check, the
 *         environment NCCL reads at init (NVLink multicast off).
 * Never:  synchronizes a stream or allocates device memory: callers pass
 *         device buffers and a stream, so every call can be captured in a
 *         CUDA graph; never used by a rank that holds a lock.
 *
 * Built only with CUDA (KIMI_HAVE_CUDA, NCCL from the CUDA toolkit); in a
 * CPU build every entry returns KIMI_EUNSUPPORTED.  Not yet run on GPUs:
 * see README "Parallelism".
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

/* Head node: a fresh ncclUniqueId as an opaque blob for the bootstrap. */
int  kimi_nccl_unique_id(uint8_t *buf, size_t cap, uint32_t *len,
    kimi_err_t *err);

/* The loaded library's version (e.g. 22809), or KIMI_EUNSUPPORTED below
 * KIMI_NCCL_MIN_VERSION or without CUDA. */
int  kimi_nccl_version(int *version, kimi_err_t *err);

/*
 * Joins the communicator: blob from the bootstrap (every rank the same),
 * rank in [0, world).  Sets NCCL_NVLS_ENABLE=0 first (NVLink multicast
 * stays off: a project rule, reference/gpu-anchors.md).  The calling thread's current
 * CUDA device must be the rank's GPU.  Blocks until all ranks joined.
 */
int  kimi_nccl_init(kimi_nccl_t **out, const uint8_t *blob, uint32_t blob_len,
    uint32_t rank, uint32_t world, kimi_err_t *err);

void kimi_nccl_free(kimi_nccl_t *c);       /* NULL is a no-op */

uint32_t kimi_nccl_rank(const kimi_nccl_t *c);
uint32_t kimi_nccl_world(const kimi_nccl_t *c);

/* stream is a cudaStream_t (void * keeps this header C-only). */

/* TP: buf[n] bf16 summed over ranks, in place. */
int  kimi_nccl_all_reduce_bf16(kimi_nccl_t *c, void *buf, size_t n,
    void *stream, kimi_err_t *err);

/* Several collectives as one launch (ncclGroupStart/End): calls between
 * the two are queued and issued together at group end. */
int  kimi_nccl_group_start(kimi_err_t *err);
int  kimi_nccl_group_end(kimi_err_t *err);

/* EP: send[world][bytes_per_peer] -> recv[world][bytes_per_peer]; block p
 * of send goes to rank p, block p of recv came from rank p.  Fixed size
 * (padded), so the call is graph-capturable. */
int  kimi_nccl_all_to_all(kimi_nccl_t *c, const void *send, void *recv,
    size_t bytes_per_peer, void *stream, kimi_err_t *err);

#ifdef __cplusplus
}
#endif

#endif
