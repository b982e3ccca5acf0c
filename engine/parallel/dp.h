/*
 * Data-parallel ranks of one node: the launcher forks one process per
 * local rank (one per GPU in a real deployment), each with its own
 * scheduler, KV cache and socket DIR/rank<R>.sock, all serving the one
 * shm segment local rank 0 creates.  With a multi-node group the
 * launcher first forms the group (bootstrap.h) and then keeps it alive.
 *
 * Owns:   the rank processes of this node, their start order (local rank
 *         0 creates the segment before the others attach), reaping them,
 *         reporting a dead rank in the segment (state STOPPED, pid 0) and
 *         the log, forwarding SIGTERM/SIGINT, the group's liveness.
 * Never:  serves requests or loads a model (the rank processes do, in
 *         cmd_serve.c), or leaves a rank behind: ranks get SIGTERM from
 *         the kernel if the launcher dies (PR_SET_PDEATHSIG), and the
 *         launcher SIGKILLs a rank that outlives its drain deadline.
 *
 * Policy on a dead rank: on one node the other ranks keep serving (DP
 * ranks share nothing but the segment; the gateway must skip the dead
 * one); in a multi-node group the whole group ends, because the other
 * nodes' collectives would wait for it forever.
 */

#ifndef KIMI_DP_H
#define KIMI_DP_H

#include <stddef.h>
#include <stdint.h>

#include "../common/kimi_err.h"
#include "bootstrap.h"

#define KIMI_DP_DEFAULT_RPC_PORT  29550   /* vLLM's default */

typedef struct {
    uint32_t     data_parallel_size;      /* global ranks */
    uint32_t     size_local;              /* 0: data_parallel_size */
    int32_t      start_rank;              /* -1: unset */
    const char  *address;                 /* NULL: 127.0.0.1 */
    uint32_t     rpc_port;                /* 0: default */
    int          headless;
    uint32_t     join_timeout_ms;
    uint32_t     liveness_timeout_ms;
    uint32_t     shutdown_timeout_ms;     /* the ranks' drain time */
    const char  *ipc_dir;
    int          want_nccl_id;            /* head: blob = ncclUniqueId */
    uint32_t     mesh_port;               /* EP across nodes: local rank R
                                             listens on mesh_port + R; 0:
                                             a free port */
    size_t       group_seg_bytes;         /* > 0: make the node's expert-
                                             parallel group (group.h) with
                                             this segment size, before the
                                             forks */
    uint32_t     group_members;           /* > 1: also a group of every
                                             rank's M processes (its
                                             tensor-parallel ones: local
                                             rank R's are R M .. R M + M -
                                             1) for the MoE exchanges */
} kimi_dp_params_t;

typedef struct {
    int          is_rank;        /* 1: caller serves a rank; 0: launcher
                                    done, exit with exit_code */
    int          exit_code;
    uint32_t     local_rank;     /* index in this node's segment */
    uint32_t     n_local;
    uint32_t     global_rank;    /* in the data-parallel group */
    uint32_t     world;
    uint32_t     node_index;
    uint32_t     n_nodes;
    uint64_t     epoch;          /* local_rank > 0: rank 0's segment */
    int          published_fd;   /* local rank 0: kimi_dp_published() */
    uint32_t     blob_len;       /* collective bootstrap blob (opaque) */
    uint8_t      blob[KIMI_BOOT_BLOB_MAX];
    void        *group_mem;      /* group_seg_bytes asked: its mapping */
    void        *members_mem;    /* group_members > 1: that group's */
    /* expert parallel across nodes: every rank's mesh address and this
     * rank's listening socket (mesh_n 0: the group is this node's) */
    int          mesh_fd;
    uint64_t     mesh_secret;
    uint32_t     mesh_n;
    kimi_boot_addr_t  mesh[KIMI_BOOT_MESH_MAX];
} kimi_dp_t;

/*
 * One rank and no group (data_parallel_size 1, no multi-node flag):
 * returns at once with is_rank = 1, no process forked.  Otherwise returns
 * twice over: in every rank process (is_rank = 1, fields set) and, once
 * every rank is gone, in the launcher (is_rank = 0, exit_code).  < 0
 * means bad flags or a group that did not form (err set, nothing forked
 * or left running).  Call before any thread or signalfd exists.
 */
int  kimi_dp_launch(kimi_dp_t *dp, const kimi_dp_params_t *p,
    kimi_err_t *err);

/* Local rank 0, right after it created the segment: tells the launcher
 * to start the other ranks.  A no-op elsewhere. */
void kimi_dp_published(kimi_dp_t *dp, uint64_t epoch);

#endif
