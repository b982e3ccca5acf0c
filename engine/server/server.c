/*
 * The engine server's event loop for one rank.
 *
 * Owns:   the epoll set (rank socket, worker connections, heartbeat
 *         timerfd, the caller's signalfd), the loop's order of work, the
 *         heartbeat and load counters in the rank record, and the
 *         READY -> DRAINING -> STOPPED life of the segment.
 * Never:  spins: with nothing to run it blocks in epoll_wait() with no
 *         timeout (the 100 ms timerfd is the only periodic wakeup, for the
 *         heartbeat); while sequences run it steps and only peeks at
 *         events.  Never exits the process: kimi_server_run() returns.
 *
 * One loop turn:  events (accept, hello, doorbells, EOF, timer, signal)
 *   -> drain submission rings (on a doorbell, and every turn while busy)
 *   -> cancel ABANDONED slots -> one scheduler step -> cancel again
 *   -> write the doorbell bytes owed to workers -> drain bookkeeping.
 */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "server_impl.h"
#include "../parallel/group.h"
#include "../common/kimi_log.h"

#define KIMI_SRV_HEARTBEAT_MS   100
#define KIMI_SRV_GROUP_POLL_MS  1       /* idle rank of an EP group */
#define KIMI_SRV_HELLO_MS       5000  /* a connection must say hello */


/* Rank > 0: the segment rank 0 created, with room for this rank. */
static int
kimi_srv_attach_rank(kimi_server_t *srv, kimi_err_t *err)
{
    int               rc;
    int32_t           pid;
    kimi_shm_rank_t  *rk;

    rc = kimi_shm_attach(&srv->shm, srv->ipc_dir, err);
    if (rc != 0) {
        return rc;
    }

    if (srv->p.epoch != 0 && srv->shm.epoch != srv->p.epoch) {
        return kimi_err_set(err, KIMI_ESTATE, "the segment in \"%s\" is not"
                            " the one rank 0 created (epoch %016llx, expected"
                            " %016llx)", srv->ipc_dir,
                            (unsigned long long) srv->shm.epoch,
                            (unsigned long long) srv->p.epoch);
    }

    if (srv->shm.n_ranks != srv->p.n_ranks
        || srv->shm.n_slots != srv->p.n_slots)
    {
        return kimi_err_set(err, KIMI_ESTATE, "the segment in \"%s\" has %u"
                            " ranks and %u slots, this rank expects %u and"
                            " %u", srv->ipc_dir, srv->shm.n_ranks,
                            srv->shm.n_slots, srv->p.n_ranks,
                            srv->p.n_slots);
    }

    rk = kimi_shm_rank(&srv->shm, srv->p.rank);
    pid = atomic_load(&rk->pid);
    if (pid != 0 && pid != getpid() && kill(pid, 0) == 0) {
        return kimi_err_set(err, KIMI_ESTATE, "rank %u of \"%s\" is already"
                            " served by pid %d", srv->p.rank, srv->ipc_dir,
                            (int) pid);
    }

    return 0;
}


int
kimi_server_init(kimi_server_t **out, const kimi_server_params_t *p,
    kimi_err_t *err)
{
    int                  rc;
    uint32_t             i;
    kimi_server_t       *srv;
    kimi_shm_params_t    sp;
    struct epoll_event   ev;
    struct itimerspec    its;

    *out = NULL;

    if (p->n_ranks == 0 || p->rank >= p->n_ranks) {
        return kimi_err_set(err, KIMI_EINVAL, "rank %u of %u ranks",
                            p->rank, p->n_ranks);
    }

    srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "server: out of memory");
    }

    srv->p = *p;
    srv->epfd = srv->lfd = srv->tfd = -1;
    for (i = 0; i < KIMI_SRV_MAX_CONNS; i++) {
        srv->conns[i].fd = -1;
    }
    for (i = 0; i < KIMI_SHM_MAX_WORKERS; i++) {
        srv->worker_conn[i] = -1;
    }

    if ((size_t) snprintf(srv->ipc_dir, sizeof(srv->ipc_dir), "%s",
                          p->ipc_dir) >= sizeof(srv->ipc_dir))
    {
        rc = kimi_err_set(err, KIMI_EINVAL, "ipc dir is too long");
        goto failed;
    }

    memset(&sp, 0, sizeof(sp));
    sp.n_ranks = p->n_ranks;
    sp.n_slots = p->n_slots;
    sp.slot_prompt_capacity = p->sched.max_model_len;
    sp.max_model_len = p->sched.max_model_len;
    sp.vocab_size = p->vocab_size;
    sp.max_num_seqs = p->sched.max_num_seqs;
    sp.max_waiting = p->sched.max_waiting;
    sp.mode = p->ipc_mode;
    sp.served_model_name = p->served_model_name;
    sp.model_dir = p->model_dir;

    /* data parallel: rank 0 creates, the others join its segment (the
     * launcher starts them only after rank 0 published it) */
    rc = p->rank == 0 ? kimi_shm_create(&srv->shm, srv->ipc_dir, &sp, err)
                      : kimi_srv_attach_rank(srv, err);
    if (rc != 0) {
        goto failed;
    }
    srv->rank = kimi_shm_rank(&srv->shm, p->rank);

    srv->seqs = calloc(p->n_slots, sizeof(kimi_srv_seq_t));
    srv->active = calloc(p->n_slots, sizeof(uint32_t));
    srv->prompt_scratch = calloc(srv->shm.slot_prompt_capacity,
                                 sizeof(int32_t));
    if (srv->seqs == NULL || srv->active == NULL
        || srv->prompt_scratch == NULL)
    {
        rc = kimi_err_set(err, KIMI_ENOMEM, "server: out of memory for %u"
                          " slots", p->n_slots);
        goto failed;
    }

    rc = kimi_srv_listen(srv, err);
    if (rc != 0) {
        goto failed;
    }

    srv->epfd = epoll_create1(EPOLL_CLOEXEC);
    srv->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (srv->epfd == -1 || srv->tfd == -1) {
        rc = kimi_err_set(err, KIMI_EIO, "epoll/timerfd: %s",
                          strerror(errno));
        goto failed;
    }

    memset(&its, 0, sizeof(its));
    its.it_interval.tv_nsec = KIMI_SRV_HEARTBEAT_MS * 1000000L;
    its.it_value = its.it_interval;

    ev.events = EPOLLIN;
    ev.data.u64 = KIMI_SRV_EV(KIMI_SRV_EV_LISTEN, 0);
    rc = epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->lfd, &ev);
    ev.data.u64 = KIMI_SRV_EV(KIMI_SRV_EV_TIMER, 0);
    rc |= epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->tfd, &ev);
    if (p->signal_fd >= 0) {
        ev.data.u64 = KIMI_SRV_EV(KIMI_SRV_EV_SIGNAL, 0);
        rc |= epoll_ctl(srv->epfd, EPOLL_CTL_ADD, p->signal_fd, &ev);
    }

    if (p->group != NULL && kimi_group_wake_fd(p->group) != -1) {
        ev.data.u64 = KIMI_SRV_EV(KIMI_SRV_EV_GROUP, 0);
        rc |= epoll_ctl(srv->epfd, EPOLL_CTL_ADD, kimi_group_wake_fd(p->group),
                        &ev);
    }

    if (rc != 0 || timerfd_settime(srv->tfd, 0, &its, NULL) != 0) {
        rc = kimi_err_set(err, KIMI_EIO, "epoll_ctl/timerfd_settime: %s",
                          strerror(errno));
        goto failed;
    }

    atomic_store(&srv->rank->heartbeat_ns, kimi_shm_now_ns());
    atomic_store(&srv->rank->pid, (int32_t) getpid());

    kimi_log(KIMI_LOG_NOTICE, "segment %s dir=%s slots=%u"
             " prompt_capacity=%u bytes=%zu epoch=%016llx socket=%s",
             p->rank == 0 ? "created" : "attached", srv->ipc_dir,
             srv->shm.n_slots, srv->shm.slot_prompt_capacity,
             srv->shm.size, (unsigned long long) srv->shm.epoch,
             srv->sock_path);

    *out = srv;
    return 0;

failed:

    kimi_server_free(srv);
    return rc;
}


int
kimi_server_start(kimi_server_t *srv, kimi_backend_t *backend,
    kimi_err_t *err)
{
    int                 rc;
    kimi_sched_sink_t   sink;
    kimi_sched_stats_t  st;

    if (backend->vocab_size != 0 && backend->vocab_size != srv->p.vocab_size)
    {
        return kimi_err_set(err, KIMI_EINVAL, "backend vocab %u differs from"
                            " the published vocab %u", backend->vocab_size,
                            srv->p.vocab_size);
    }

    srv->backend = backend;
    sink = kimi_srv_sink(srv);

    srv->p.sched.lockstep = srv->p.group != NULL;
    rc = kimi_sched_init(&srv->sched, &srv->p.sched, backend, &sink, err);
    if (rc != 0) {
        return rc;
    }

    kimi_sched_stats(srv->sched, &st);
    srv->rank->kv_blocks_total = st.kv_blocks_total;

    atomic_store(&srv->rank->state, KIMI_SHM_STATE_READY);
    atomic_store(&srv->shm.hdr->state, KIMI_SHM_STATE_READY);

    kimi_log(KIMI_LOG_NOTICE, "engine ready backend=%s model=\"%s\""
             " max_model_len=%u max_num_seqs=%u kv_blocks=%u",
             backend->ops->name, srv->p.served_model_name,
             srv->p.sched.max_model_len, srv->p.sched.max_num_seqs,
             st.kv_blocks_total);

    return 0;
}


static void
kimi_srv_heartbeat(kimi_server_t *srv)
{
    kimi_shm_rank_t     *r = srv->rank;
    kimi_sched_stats_t   st;

    kimi_sched_stats(srv->sched, &st);

    /* relaxed: independent gauges; the gateway reads each on its own */
    atomic_store_explicit(&r->num_running, st.num_running,
                          memory_order_relaxed);
    atomic_store_explicit(&r->num_waiting, st.num_waiting,
                          memory_order_relaxed);
    atomic_store_explicit(&r->kv_blocks_used, st.kv_blocks_used,
                          memory_order_relaxed);
    atomic_store_explicit(&r->num_preemptions, (uint32_t) st.num_preemptions,
                          memory_order_relaxed);
    atomic_store_explicit(&r->prompt_tokens_total, st.prompt_tokens_total,
                          memory_order_relaxed);
    atomic_store_explicit(&r->generation_tokens_total,
                          st.generation_tokens_total, memory_order_relaxed);
    atomic_store_explicit(&r->heartbeat_ns, kimi_shm_now_ns(),
                          memory_order_release);
}


static void
kimi_srv_abort_all(kimi_server_t *srv, const char *why)
{
    if (srv->aborted) {
        return;
    }

    srv->aborted = 1;

    if (srv->n_active > 0) {
        kimi_log(KIMI_LOG_WARN, "aborting %u sequences: %s", srv->n_active,
                 why);
    }

    kimi_sched_abort_all(srv->sched, KIMI_FINISH_ABORT, why);
}


static void
kimi_srv_begin_drain(kimi_server_t *srv, const char *why)
{
    if (srv->draining) {
        return;
    }

    srv->draining = 1;
    srv->drain_deadline_ns = kimi_shm_now_ns()
                             + (uint64_t) srv->p.shutdown_timeout_ms * 1000000;

    atomic_store(&srv->rank->state, KIMI_SHM_STATE_DRAINING);
    atomic_store(&srv->shm.hdr->state, KIMI_SHM_STATE_DRAINING);

    kimi_log(KIMI_LOG_NOTICE, "draining reason=%s running=%u"
             " shutdown_timeout_ms=%u", why, srv->n_active,
             srv->p.shutdown_timeout_ms);

    if (srv->p.shutdown_timeout_ms == 0) {
        kimi_srv_abort_all(srv, "the engine shut down before the request"
                           " finished (drain timeout)");
    }
}


static void
kimi_srv_signal(kimi_server_t *srv)
{
    ssize_t                    n;
    struct signalfd_siginfo    si;

    for ( ;; ) {
        n = read(srv->p.signal_fd, &si, sizeof(si));
        if (n != (ssize_t) sizeof(si)) {
            return;
        }

        if (srv->draining) {
            /* a second signal: stop waiting for in-flight sequences */
            kimi_srv_abort_all(srv, "the engine was stopped before the"
                               " request finished");
            continue;
        }

        kimi_srv_begin_drain(srv, si.ssi_signo == 2 ? "SIGINT" : "SIGTERM");
    }
}


/* A connection that never completes its hello holds a conns[] entry:
 * give it KIMI_SRV_HELLO_MS. */
static void
kimi_srv_drop_silent(kimi_server_t *srv)
{
    uint32_t  i;
    uint64_t  now = kimi_shm_now_ns();

    for (i = 0; i < KIMI_SRV_MAX_CONNS; i++) {
        if (srv->conns[i].fd != -1 && srv->conns[i].worker < 0
            && now - srv->conns[i].accept_ns
               > (uint64_t) KIMI_SRV_HELLO_MS * 1000000)
        {
            kimi_srv_conn_drop(srv, i, "no hello within 5 s");
        }
    }
}


static void
kimi_srv_timer(kimi_server_t *srv)
{
    uint64_t  expirations;

    while (read(srv->tfd, &expirations, sizeof(expirations)) > 0) {
        /* drained: level-triggered epoll would report it again */
    }

    kimi_srv_heartbeat(srv);

    if (++srv->n_ticks % 10 == 0) {
        kimi_srv_drop_silent(srv);
        kimi_srv_sweep(srv);
    }

    if (srv->draining && !srv->aborted
        && kimi_shm_now_ns() >= srv->drain_deadline_ns)
    {
        kimi_srv_abort_all(srv, "the engine shut down before the request"
                           " finished (drain timeout)");
    }
}


/*
 * The heartbeat while a step runs.  A step blocks the loop (and its timer)
 * for as long as the backend computes: an 8k-token prefill of the tiny
 * model on the cpu backend is minutes.  Busy is not dead, so a small
 * thread keeps heartbeat_ns fresh while the loop is inside a step; a loop
 * stuck anywhere else still goes stale.  It touches nothing but these
 * fields and the rank's heartbeat_ns.
 */
typedef struct {
    kimi_shm_rank_t      *rank;
    _Atomic uint64_t      step_since_ns;   /* 0: not in a step */
    _Atomic int           stop;
} kimi_srv_pulse_t;


static void *
kimi_srv_pulse(void *arg)
{
    kimi_srv_pulse_t  *p = arg;
    struct timespec    ts = { 0, KIMI_SRV_HEARTBEAT_MS * 1000000L };

    while (!atomic_load(&p->stop)) {
        (void) nanosleep(&ts, NULL);

        if (atomic_load(&p->step_since_ns) != 0) {
            atomic_store_explicit(&p->rank->heartbeat_ns, kimi_shm_now_ns(),
                                  memory_order_release);
        }
    }

    return NULL;
}


/*
 * One turn of a rank in an expert-parallel group: the ranks vote, and if
 * any has work all of them step (those with none run an empty batch, so
 * their experts serve the others).  A rank leaves only when every rank
 * is draining with nothing left: a peer's sequences need our experts to
 * the end.  A broken group (a rank died, ranks out of step) ends this
 * rank with an error: its experts are gone for everyone.
 */
static int
kimi_srv_group_step(kimi_server_t *srv, kimi_srv_pulse_t *pulse, int woken,
    int *stalled, kimi_err_t *err)
{
    int          has, want_exit, any, all, rc;
    kimi_err_t   serr;

    has = kimi_sched_has_work(srv->sched) && (!*stalled || woken
                                              || srv->wake);
    want_exit = srv->draining && srv->n_active == 0
                && !kimi_sched_has_work(srv->sched);

    if (!has && !want_exit && !kimi_group_pending(srv->p.group)) {
        return 0;
    }

    atomic_store(&pulse->step_since_ns, kimi_shm_now_ns());

    rc = kimi_group_vote(srv->p.group, (uint64_t) 1 << 56, has, want_exit,
                         &any, &all, &serr);
    if (rc == 0 && any) {
        rc = kimi_sched_step(srv->sched, &serr);
        *stalled = rc == 0 && kimi_sched_has_work(srv->sched);
        if (rc > 0) {
            rc = 0;
        }
    }

    atomic_store(&pulse->step_since_ns, 0);

    if (rc < 0 && !kimi_group_failed(srv->p.group)) {
        /* this rank's sequences ended with ERROR; the group goes on */
        kimi_log(KIMI_LOG_ERR, "step failed: %s", serr.msg);
        rc = 0;
    }

    if (rc < 0) {
        kimi_srv_abort_all(srv, "the expert-parallel group failed");
        kimi_srv_flush_bells(srv);
        return kimi_err_set(err, KIMI_ESTATE, "%s", serr.msg);
    }

    if (all) {
        kimi_srv_drain_submissions(srv);
        kimi_srv_flush_bells(srv);
        srv->stop = 1;
    }

    return 0;
}


int
kimi_server_run(kimi_server_t *srv, kimi_err_t *err)
{
    int                 i, n, rc, timeout, busy, stalled = 0, pulsing;
    pthread_t           pulse_tid;
    kimi_srv_pulse_t    pulse;
    uint32_t            kind, idx;
    kimi_err_t          serr;
    struct epoll_event  evs[64];

    if (srv->sched == NULL) {
        return kimi_err_set(err, KIMI_ESTATE, "server run before start");
    }

    pulse.rank = srv->rank;
    atomic_init(&pulse.step_since_ns, 0);
    atomic_init(&pulse.stop, 0);
    pulsing = pthread_create(&pulse_tid, NULL, kimi_srv_pulse, &pulse) == 0;
    if (!pulsing) {
        kimi_log(KIMI_LOG_WARN, "no heartbeat thread: a step longer than"
                 " 3 s will look like a hung engine to the gateway");
    }

    while (!srv->stop) {
        busy = kimi_sched_has_work(srv->sched);

        /* idle: block until an event; running: peek only.  A step that made
         * no progress (every sequence paused on a full token ring) blocks
         * too: the worker rings our doorbell when it drains a full ring,
         * and the heartbeat tick re-looks within 100 ms should a bell be
         * lost with a dying worker */
        timeout = (busy && !stalled) ? 0 : -1;
        if (srv->p.group != NULL && timeout == -1
            && kimi_group_wake_fd(srv->p.group) == -1)
        {
            /* no eventfd: an idle rank looks for peers at the barrier */
            timeout = KIMI_SRV_GROUP_POLL_MS;
        }
        if (srv->wake) {
            timeout = 0;
        }

        n = epoll_wait(srv->epfd, evs, 64, timeout);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            rc = kimi_err_set(err, KIMI_EIO, "epoll_wait() failed: %s",
                              strerror(errno));
            goto done;
        }

        for (i = 0; i < n; i++) {
            kind = (uint32_t) (evs[i].data.u64 >> 32);
            idx = (uint32_t) evs[i].data.u64;

            switch (kind) {
            case KIMI_SRV_EV_LISTEN:
                kimi_srv_accept(srv);
                break;
            case KIMI_SRV_EV_CONN:
                kimi_srv_conn_event(srv, idx, evs[i].events);
                break;
            case KIMI_SRV_EV_TIMER:
                kimi_srv_timer(srv);
                break;
            case KIMI_SRV_EV_SIGNAL:
                kimi_srv_signal(srv);
                break;
            case KIMI_SRV_EV_GROUP:
                kimi_group_wake_drain(srv->p.group);
                break;
            }
        }

        if (srv->wake || busy) {
            kimi_srv_drain_submissions(srv);
        }

        kimi_srv_check_abandoned(srv);

        if (srv->p.group != NULL) {
            rc = kimi_srv_group_step(srv, &pulse, n > 0, &stalled, err);
            if (rc != 0) {
                goto done;
            }

        } else if (kimi_sched_has_work(srv->sched)) {
            atomic_store(&pulse.step_since_ns, kimi_shm_now_ns());
            rc = kimi_sched_step(srv->sched, &serr);
            atomic_store(&pulse.step_since_ns, 0);
            if (rc < 0 && srv->p.followers != NULL
                && kimi_group_failed(srv->p.followers))
            {
                /* a tensor or pipeline peer is gone: every later step
                 * would fail too, so this rank ends and the gateway
                 * routes around it */
                kimi_srv_abort_all(srv, "a tensor- or pipeline-parallel"
                                   " peer of this rank failed");
                kimi_srv_flush_bells(srv);
                rc = kimi_err_set(err, KIMI_ESTATE, "%s", serr.msg);
                goto done;
            }
            if (rc < 0) {
                /* the scheduler ended every running sequence with ERROR;
                 * the engine keeps serving new requests */
                kimi_log(KIMI_LOG_ERR, "step failed: %s", serr.msg);
                rc = 0;
            }
            stalled = rc == 0;
            kimi_srv_check_abandoned(srv);

        } else {
            stalled = 0;
        }

        kimi_srv_flush_bells(srv);

        /* load counters as fresh as the gateway's next admission decision
         * can use them; and a long prefill step must not look like a dead
         * engine.  About ten stores: cheap next to the step. */
        if (n > 0 || busy) {
            kimi_srv_heartbeat(srv);
        }

        if (srv->draining && srv->n_active == 0
            && !kimi_sched_has_work(srv->sched) && srv->p.group == NULL)
        {
            /* answer what was queued behind the drain with 503, then go */
            kimi_srv_drain_submissions(srv);
            kimi_srv_flush_bells(srv);
            srv->stop = 1;
        }
    }

    kimi_srv_heartbeat(srv);
    kimi_log(KIMI_LOG_NOTICE, "drained, stopping");
    rc = 0;

done:

    if (pulsing) {
        atomic_store(&pulse.stop, 1);
        (void) pthread_join(pulse_tid, NULL);
    }

    return rc;
}


uint64_t
kimi_server_epoch(const kimi_server_t *srv)
{
    return srv->shm.epoch;
}


void
kimi_server_free(kimi_server_t *srv)
{
    uint32_t  i;

    if (srv == NULL) {
        return;
    }

    if (srv->shm.hdr != NULL && srv->rank != NULL) {
        atomic_store(&srv->rank->state, KIMI_SHM_STATE_STOPPED);
        atomic_store(&srv->rank->pid, 0);
    }

    /* the segment is rank 0's: other ranks stop only themselves.  With
     * several ranks the launcher marks it stopped once all are gone: rank
     * 0 failing alone must not take its live peers off the gateway */
    if (srv->shm.hdr != NULL && srv->p.rank == 0 && srv->p.n_ranks <= 1) {
        atomic_store(&srv->shm.hdr->state, KIMI_SHM_STATE_STOPPED);
    }

    for (i = 0; i < KIMI_SRV_MAX_CONNS; i++) {
        if (srv->conns[i].fd != -1) {
            close(srv->conns[i].fd);
        }
    }

    if (srv->lfd != -1) {
        close(srv->lfd);
        /* only if it is still ours: a newer engine may have replaced it */
        if (!kimi_shm_replaced(&srv->shm, srv->ipc_dir)) {
            (void) unlink(srv->sock_path);
        }
    }

    if (srv->tfd != -1) {
        close(srv->tfd);
    }
    if (srv->epfd != -1) {
        close(srv->epfd);
    }

    kimi_sched_free(srv->sched);
    kimi_shm_detach(&srv->shm);
    free(srv->seqs);
    free(srv->active);
    free(srv->prompt_scratch);
    free(srv);
}
