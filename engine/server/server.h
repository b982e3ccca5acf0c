/*
 * The engine server: one rank's event loop between the shm segment (nginx
 * workers) and the scheduler.
 *
 * Owns:   the segment and the rank socket of this rank, worker
 *         connections, admission of submitted slots, token delivery into
 *         slot rings, cancellation, heartbeat, drain on SIGTERM.
 * Never:  computes (the scheduler and backend do), parses flags (cli does),
 *         installs signal handlers (the caller passes a signalfd).
 *
 * Lifecycle: kimi_server_init() publishes a STARTING segment and listens;
 * the caller loads its backend (minutes, for a real model: workers wait in
 * the listen backlog), kimi_server_start() builds the scheduler and turns
 * READY, kimi_server_run() serves until drained, kimi_server_free().
 */

#ifndef KIMI_SERVER_H
#define KIMI_SERVER_H

#include <stdint.h>

#include "../common/kimi_err.h"
#include "../backend/backend.h"
#include "../sched/sched.h"

typedef struct kimi_server  kimi_server_t;

typedef struct {
    const char           *ipc_dir;             /* segment + sockets */
    uint32_t              ipc_mode;            /* 0600 or 0660 */
    uint32_t              rank;                /* local rank: 0 creates the
                                                  segment, others attach */
    uint32_t              n_ranks;             /* ranks in the segment */
    uint64_t              epoch;               /* rank > 0: the segment
                                                  rank 0 created (0: any) */
    uint32_t              n_slots;             /* shm request slots */
    uint32_t              shutdown_timeout_ms; /* drain before abort */
    int                   signal_fd;           /* signalfd: TERM/INT, or -1 */
    const char           *served_model_name;
    const char           *model_dir;           /* published for the gateway */
    uint32_t              vocab_size;
    kimi_sched_params_t   sched;               /* max_model_len etc. */
    struct kimi_group    *group;               /* expert parallel: step in
                                                  lockstep with the node's
                                                  other ranks (borrowed) */
    struct kimi_group    *followers;           /* tensor/pipeline parallel:
                                                  its failure ends the rank
                                                  (borrowed) */
} kimi_server_params_t;

int  kimi_server_init(kimi_server_t **out, const kimi_server_params_t *p,
    kimi_err_t *err);

/* backend is borrowed and must outlive the server. */
int  kimi_server_start(kimi_server_t *srv, kimi_backend_t *backend,
    kimi_err_t *err);

/* Serves until a drain completes (0) or a fatal error (< 0). */
int  kimi_server_run(kimi_server_t *srv, kimi_err_t *err);

/* The segment's epoch (rank 0 hands it to the ranks it starts). */
uint64_t kimi_server_epoch(const kimi_server_t *srv);

/* Marks the segment STOPPED, removes the socket; NULL is a no-op. */
void kimi_server_free(kimi_server_t *srv);

#endif
