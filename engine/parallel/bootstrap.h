/*
 * Multi-node bootstrap: the head node and the headless nodes of one
 * data-parallel group meet over TCP, agree on who holds which global
 * ranks, share the blob the collective library needs (ncclUniqueId in
 * GPU builds), and then watch each other until the group ends.
 *
 * Owns:   the wire protocol (framed messages on one TCP connection per
 *         headless node), rank-range assignment and its validation, the
 *         join deadline and the liveness deadline.
 * Never:  forks, touches the shm segment or the ranks, logs (errors come
 *         back in kimi_err_t), or waits without a deadline: every wait is
 *         a poll() bounded by the join or liveness timeout, and a signal
 *         on the caller's cancel_fd ends it.
 *
 * Protocol (all integers big-endian, one frame = 12-byte header + payload):
 *
 *   header   u32 magic "KIMB", u16 version, u16 type, u32 payload bytes
 *   JOIN     node -> head: u32 data_parallel_size, u32 size_local,
 *            i32 start_rank (-1: head picks), i32 pid, char host[64],
 *            u32 n_ports (0 or size_local), u16 ports[n_ports]: where
 *            the node's ranks listen for the expert-parallel mesh
 *   ASSIGN   head -> node once every rank is covered: u32 world,
 *            u32 start_rank, u32 size_local, u32 n_nodes, u32 node_index,
 *            u32 blob bytes, blob, u32 mesh_n (0 or world), u64 secret,
 *            mesh_n x (char host[48], u16 port): every rank's mesh
 *            address, hosts as the head saw the nodes connect
 *   REFUSE   head -> node, text: why the join was refused; then close
 *   PING     both ways every KIMI_BOOT_PING_MS
 *   ABORT    either way, text: the group is over (a node failed or left)
 *   DRAIN    either way, text: a node was told to stop; every node drains
 *            its ranks (in-flight requests finish) and then exits, so the
 *            group ends cleanly.  The head passes a node's DRAIN on.
 *
 * Group failure: EOF, a malformed frame, an ABORT or no frame within the
 * liveness timeout ends the group.  The head then sends ABORT with the
 * reason to every other node, so each one fails with the same message.
 */

#ifndef KIMI_BOOTSTRAP_H
#define KIMI_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>

#include "../common/kimi_err.h"

#define KIMI_BOOT_BLOB_MAX   256      /* ncclUniqueId is 128 bytes */
#define KIMI_BOOT_MAX_NODES  64
#define KIMI_BOOT_PING_MS    1000
#define KIMI_BOOT_MESH_MAX   64       /* ranks of an expert-parallel mesh */
#define KIMI_BOOT_ADDR_LEN   48       /* a numeric IPv4 or IPv6 address */

/* Where one global rank accepts its mesh connections. */
typedef struct {
    char         host[KIMI_BOOT_ADDR_LEN];
    uint16_t     port;
} kimi_boot_addr_t;

typedef struct kimi_boot  kimi_boot_t;

typedef struct {
    uint32_t     data_parallel_size;  /* global ranks, all nodes */
    uint32_t     size_local;          /* ranks on this node */
    int32_t      start_rank;          /* first global rank here, -1: head
                                         assigns (headless) or 0 (head) */
    const char  *address;             /* head's address (IPv4/IPv6/name) */
    uint16_t     rpc_port;
    int          headless;            /* 1: join the head at address */
    uint32_t     join_timeout_ms;     /* whole group must form in this */
    uint32_t     liveness_timeout_ms; /* silence that ends the group */
    int          cancel_fd;           /* readable = give up (signalfd), -1 */
    const uint16_t *mesh_ports;       /* [size_local]: the ports this
                                         node's ranks listen on for the
                                         expert-parallel mesh; NULL: none.
                                         Every node must agree. */
} kimi_boot_params_t;

typedef struct {
    uint32_t     world;               /* data_parallel_size */
    uint32_t     start_rank;          /* this node's first global rank */
    uint32_t     size_local;
    uint32_t     n_nodes;
    uint32_t     node_index;          /* 0 = head */
    uint32_t     blob_len;
    uint8_t      blob[KIMI_BOOT_BLOB_MAX];
    uint32_t     mesh_n;              /* 0, or world: mesh[] is filled */
    uint64_t     mesh_secret;         /* a mesh connection proves it */
    kimi_boot_addr_t  mesh[KIMI_BOOT_MESH_MAX];
} kimi_boot_assign_t;

/*
 * Forms the group; blocks until every rank is covered, the join timeout
 * passes, cancel_fd turns readable or a peer refuses.  The head uses
 * blob[blob_len] (its own, e.g. ncclGetUniqueId) and sends it to every
 * node; a headless node passes NULL/0 and receives it.  On success *out
 * is the caller's and a->* says which ranks this node holds.
 */
int  kimi_boot_init(kimi_boot_t **out, const kimi_boot_params_t *p,
    const uint8_t *blob, size_t blob_len, kimi_boot_assign_t *a,
    kimi_err_t *err);

/*
 * Liveness: waits up to timeout_ms for traffic on the group's sockets or
 * on extra_fd (-1 for none), answers and sends pings, checks deadlines.
 * Returns 2 when another node asked the group to drain (err->msg says
 * why; once), 1 if extra_fd is readable, 0 on a quiet return, or < 0
 * when the group is over (err says which node and why).
 */
int  kimi_boot_watch(kimi_boot_t *b, int extra_fd, int timeout_ms,
    kimi_err_t *err);

/* Tells every peer the group is over (best effort, never blocks). */
void kimi_boot_abort(kimi_boot_t *b, const char *why);

/* Tells every peer this node is stopping: drain with it (best effort,
 * once). */
void kimi_boot_drain(kimi_boot_t *b, const char *why);

void kimi_boot_free(kimi_boot_t *b);       /* NULL is a no-op */

/* Pure: checks a requested range against the ranges already taken and
 * the world size; start < 0 picks the lowest free range.  Returns 0 with
 * *start set, or KIMI_EINVAL with a message (exposed for the unit test). */
int  kimi_boot_place(uint32_t world, const uint32_t *taken_start,
    const uint32_t *taken_len, uint32_t n_taken, int32_t start,
    uint32_t len, uint32_t *out_start, kimi_err_t *err);

#endif
