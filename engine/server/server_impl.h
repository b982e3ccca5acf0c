/*
 * Internal state of the engine server, shared by its files:
 * server.c (loop, heartbeat, drain), ipc.c (sockets, hello, doorbells,
 * dead-worker reclaim), admit.c (slot validation, scheduler sink).
 *
 * Owns:   the struct below; the loop thread is the only thread touching it.
 * Never:  included outside engine/server/.
 */

#ifndef KIMI_SERVER_IMPL_H
#define KIMI_SERVER_IMPL_H

#include <limits.h>
#include <stdint.h>

#include "server.h"
#include "../shm/kimi_shm.h"

#define KIMI_SRV_MAX_CONNS  (KIMI_SHM_MAX_WORKERS * 2)   /* incl. pre-hello */

/* epoll data: kind in the high word, index in the low */
#define KIMI_SRV_EV_LISTEN  1ull
#define KIMI_SRV_EV_CONN    2ull
#define KIMI_SRV_EV_TIMER   3ull
#define KIMI_SRV_EV_SIGNAL  4ull
#define KIMI_SRV_EV_GROUP   5ull          /* a peer rank arrived at a vote */
#define KIMI_SRV_EV(kind, i)  (((kind) << 32) | (uint64_t) (i))

typedef struct {
    int                fd;              /* -1: free entry */
    int32_t            pid;             /* SO_PEERCRED at accept */
    int32_t            worker;          /* -1 until the hello checked out */
    uint64_t           accept_ns;
    uint64_t           n_bad;           /* submissions refused as bogus */
    uint32_t           hello_len;
    kimi_shm_hello_t   hello;
} kimi_srv_conn_t;

/* One slot as this rank holds it (index = slot index). */
typedef struct {
    uint64_t           seq_id;
    uint64_t           accept_ns;
    uint64_t           n_bad;           /* submissions refused as bogus */
    uint32_t           slot;
    uint32_t           generation;      /* full generation when accepted */
    uint32_t           worker;          /* owner, validated at accept */
    int32_t            owner_pid;
    uint32_t           active_pos;      /* index in srv->active */
    uint32_t           n_output;
    uint8_t            active;          /* in the scheduler */
    char               request_id[KIMI_SHM_REQUEST_ID_LEN];
} kimi_srv_seq_t;

struct kimi_server {
    kimi_server_params_t   p;
    char                   ipc_dir[PATH_MAX];
    char                   sock_path[PATH_MAX];

    kimi_shm_t             shm;
    kimi_shm_rank_t       *rank;

    int                    epfd;
    int                    lfd;             /* rank socket */
    int                    tfd;             /* heartbeat timerfd */

    kimi_srv_conn_t        conns[KIMI_SRV_MAX_CONNS];
    int32_t                worker_conn[KIMI_SHM_MAX_WORKERS];  /* or -1 */

    /* doorbell bytes owed to workers, written once per loop turn */
    uint8_t                bell_owed[KIMI_SHM_MAX_WORKERS];
    uint32_t               bell_list[KIMI_SHM_MAX_WORKERS];
    uint32_t               n_bells;

    kimi_srv_seq_t        *seqs;            /* [n_slots] */
    uint32_t              *active;          /* slot indices in the sched */
    uint32_t               n_active;
    int32_t               *prompt_scratch;  /* [slot_prompt_capacity] */
    uint64_t               next_seq_id;

    kimi_backend_t        *backend;
    kimi_sched_t          *sched;

    unsigned               wake:1;          /* doorbell rang: drain rings */
    unsigned               draining:1;
    unsigned               aborted:1;       /* drain timeout fired */
    unsigned               stop:1;
    uint32_t               n_ticks;         /* heartbeats since start */
    uint64_t               drain_deadline_ns;
};

/* ipc.c */
int  kimi_srv_listen(kimi_server_t *srv, kimi_err_t *err);
void kimi_srv_accept(kimi_server_t *srv);
void kimi_srv_conn_event(kimi_server_t *srv, uint32_t ci, uint32_t events);
void kimi_srv_conn_drop(kimi_server_t *srv, uint32_t ci, const char *why);
void kimi_srv_notify(kimi_server_t *srv, uint32_t worker, uint32_t slot,
    uint32_t generation);
void kimi_srv_flush_bells(kimi_server_t *srv);
void kimi_srv_sweep(kimi_server_t *srv);

/* admit.c */
void kimi_srv_drain_submissions(kimi_server_t *srv);
void kimi_srv_check_abandoned(kimi_server_t *srv);
void kimi_srv_release_slot(kimi_server_t *srv, uint32_t slot);
kimi_sched_sink_t kimi_srv_sink(kimi_server_t *srv);

#endif
