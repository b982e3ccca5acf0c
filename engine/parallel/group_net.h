/*
 * The transport of a process group whose ranks span nodes (group.h): one
 * TCP connection between every two ranks of the world, a sync is one
 * frame each way on each of them.  Only group.c calls this.
 *
 * Owns:   the mesh's sockets and handshake, the frame format, the send
 *         buffers (two banks of seg_bytes per peer) and the receive
 *         buffers (two banks, grown to the largest message seen).
 * Never:  waits without looking at the node's failure flag (stop(), read
 *         every KIMI_GROUP_NET_SLICE_MS), nor outlives a peer that closed
 *         its connection: EOF, a malformed frame, an ABORT or a frame for
 *         another sync fails the group with one message, which it sends
 *         on to every peer it still can.
 */

#ifndef KIMI_GROUP_NET_H
#define KIMI_GROUP_NET_H

#include <stddef.h>
#include <stdint.h>

#include "../common/kimi_err.h"
#include "group.h"

#define KIMI_GROUP_NET_SLICE_MS  20

typedef struct kimi_group_net  kimi_group_net_t;

/* The node failed (why filled): every wait gives up. */
typedef int (*kimi_group_net_stop_pt)(void *arg, char *why, size_t len);

/* Buffers and the wake fd now; the connections in kimi_group_net_form(). */
int   kimi_group_net_open(kimi_group_net_t **out, const kimi_group_mesh_t *m,
    kimi_group_net_stop_pt stop, void *stop_arg, kimi_err_t *err);
int   kimi_group_net_form(kimi_group_net_t *n, kimi_err_t *err);
void  kimi_group_net_free(kimi_group_net_t *n);

/* NULL while the group is whole, else why it failed. */
const char *kimi_group_net_failed(const kimi_group_net_t *n);
void  kimi_group_net_fail(kimi_group_net_t *n, const char *why);

int   kimi_group_net_pending(kimi_group_net_t *n);
int   kimi_group_net_wake_fd(const kimi_group_net_t *n);

void *kimi_group_net_sendbuf(kimi_group_net_t *n, uint32_t peer);

/* Sends bytes[p] of sendbuf(p) to every peer p and receives theirs; the
 * frames carry tag and the vote (any, all: OR and AND over the ranks). */
int   kimi_group_net_sync(kimi_group_net_t *n, uint64_t tag,
    const size_t *bytes, int mine_any, int mine_all, int *any, int *all);
const void *kimi_group_net_recvbuf(const kimi_group_net_t *n, uint32_t peer,
    size_t *bytes);

#endif
