/*
 * A process group: ranks stepping together and exchanging rows (expert
 * parallelism, tensor- and pipeline-parallel followers).  On one node the
 * transport is one shared anonymous mapping that the launcher makes
 * before it forks the ranks; a group whose ranks span nodes keeps that
 * mapping for the node's failure state and syncs over a TCP mesh
 * (group_net.c) with the same calls and the same guarantees.
 *
 * Owns:   the mapping's layout (header, per-rank slots, two banks of
 *         outboxes), the barrier (a futex on the generation word), the
 *         group's failure state and its message.
 * Never:  allocates per call, or waits on a dead peer forever: the
 *         launcher fails the group when it reaps a rank or loses a node,
 *         a closed mesh connection fails it, and a peer out of step
 *         (another tag at the same barrier) fails it too, with a message
 *         that every rank returns.
 *
 * Every sync is a barrier all ranks enter in the same order.  An exchange
 * writes into the bank of the sync it precedes and reads peers' rows from
 * it after; the next sync uses the other bank, so a fast rank never
 * overwrites rows a slow one is still reading.
 */

#ifndef KIMI_GROUP_H
#define KIMI_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include "../common/kimi_err.h"
#include "bootstrap.h"

#define KIMI_GROUP_MAX_RANKS  64

/* A rank's place in a group that spans nodes (from the bootstrap). */
typedef struct {
    uint32_t                 rank;        /* global */
    uint32_t                 world;
    size_t                   seg_bytes;
    int                      listen_fd;   /* this rank's, from
                                             kimi_group_listen(); closed
                                             by kimi_group_connect() */
    uint64_t                 secret;
    const kimi_boot_addr_t  *addrs;       /* [world] */
    uint32_t                 timeout_ms;  /* for the mesh to form */
} kimi_group_mesh_t;

typedef struct kimi_group  kimi_group_t;

/* Launcher, before fork: size, then layout of a fresh MAP_SHARED mapping
 * of kimi_group_bytes() bytes.  seg_bytes: the largest message one rank
 * sends one peer in one exchange. */
size_t kimi_group_bytes(uint32_t world, size_t seg_bytes);
void   kimi_group_init(void *mem, uint32_t world, size_t seg_bytes);

/* Anyone (the launcher reaping a rank, a rank that lost its step): every
 * rank's current and next sync fails with why.  The first message stays. */
void   kimi_group_fail(void *mem, const char *why);
int    kimi_group_failed(const kimi_group_t *g);
/* The same from a rank that cannot go on (its peers wait for it). */
void   kimi_group_abort(kimi_group_t *g, const char *why);

/* g runs inside parent (a pipeline stage's tensor-parallel ranks, the
 * stages of one tensor-parallel rank, all in the leader's group): a
 * failure of either is both's, and g's waits watch the parent's processes
 * too.  Node-local groups only. */
void   kimi_group_link(kimi_group_t *g, kimi_group_t *parent);

/* A rank's handle on the mapping (after fork). */
int    kimi_group_attach(kimi_group_t **out, void *mem, uint32_t rank,
    kimi_err_t *err);
void   kimi_group_free(kimi_group_t *g);

/* Launcher, before the bootstrap: a socket on every interface where one
 * rank will accept its mesh peers, on *port (0: a free one); returns the
 * fd (*port set) or < 0. */
int    kimi_group_listen(uint16_t *port, kimi_err_t *err);

/* A rank's handle on a group across nodes: mem is the node's mapping
 * (kimi_group_init with this node's rank count), m the whole world
 * (m->addrs must outlive kimi_group_form). */
int    kimi_group_connect(kimi_group_t **out, void *mem, uint32_t local_rank,
    const kimi_group_mesh_t *m, kimi_err_t *err);

/* Connects to every other rank and returns when the mesh is whole; a
 * no-op for a node-local group.  Call once every local rank can run
 * (after local rank 0 published the segment): peers wait for each other
 * here, within m->timeout_ms. */
int    kimi_group_form(kimi_group_t *g, kimi_err_t *err);

/* 1 when the ranks are on more than one node: no shared device memory. */
int    kimi_group_spans_nodes(const kimi_group_t *g);

uint32_t kimi_group_rank(const kimi_group_t *g);
uint32_t kimi_group_world(const kimi_group_t *g);
size_t   kimi_group_seg_bytes(const kimi_group_t *g);

/* kimi_group_failed() after looking at the processes this rank (or a
 * parent's) watches: for a rank that waits outside the group's syncs
 * (on its GPU), so a dead member fails the group there too. */
int    kimi_group_poll(kimi_group_t *g);

/*
 * Last resort of a member whose own thread may be stuck where it cannot
 * look at the group (a device call waiting on a dead peer): a thread of
 * its own, on its own handle of mem (never freed), looks at the group
 * every 100 ms - and at the processes pids [n] (ranks [n]), as
 * kimi_group_watch - and calls expire(why) once the group has been failed
 * for grace_ms; expire must end the process.  Node-local groups only;
 * start it after the last fork.
 */
int    kimi_group_watchdog(void *mem, uint32_t rank, const int *pids,
    uint32_t n, const uint32_t *ranks, uint32_t grace_ms,
    void (*expire)(const char *why), kimi_err_t *err);
/* An orderly end begins (the stop message sent or received): members
 * exiting now are not a failure, and the watchdog stands down. */
void   kimi_group_watchdog_stop(void);

/* Some peer waits at the barrier: an idle rank must join it. */
int    kimi_group_pending(const kimi_group_t *g);

/* This rank's eventfd (-1: none): readable when a peer arrived first at a
 * vote, so an idle rank can sleep in epoll; drain it after each wake. */
int    kimi_group_wake_fd(const kimi_group_t *g);
void   kimi_group_wake_drain(const kimi_group_t *g);

/* Barrier with a reduction: *any = OR of every rank's mine_any, *all = AND
 * of every rank's mine_all.  tag names what the ranks sync for; ranks at
 * different tags fail the group. */
int    kimi_group_vote(kimi_group_t *g, uint64_t tag, int mine_any,
    int mine_all, int *any, int *all, kimi_err_t *err);

/* Sums x [n] over the ranks, in rank order on every rank (the results
 * are bitwise equal everywhere); n * 4 <= kimi_group_seg_bytes(). */
int    kimi_group_allreduce_f32(kimi_group_t *g, uint64_t tag, float *x,
    size_t n, kimi_err_t *err);

/* The processes this rank forked into the group (tensor-parallel
 * followers): a barrier that waits for one that has exited fails the
 * group instead of waiting forever.  pids are watched through pidfds. */
int    kimi_group_watch(kimi_group_t *g, const int *pids, uint32_t n,
    const uint32_t *ranks, kimi_err_t *err);

/* Where this rank writes its message to peer (itself included) for the
 * next exchange: kimi_group_seg_bytes() bytes. */
void  *kimi_group_sendbuf(kimi_group_t *g, uint32_t peer);

/* Barrier; bytes[p] is what this rank wrote for peer p.  After it,
 * kimi_group_recvbuf() is what each peer wrote for this rank, valid until
 * the sync after next. */
int    kimi_group_exchange(kimi_group_t *g, uint64_t tag,
    const size_t *bytes, kimi_err_t *err);
const void *kimi_group_recvbuf(const kimi_group_t *g, uint32_t peer,
    size_t *bytes);

#endif
