/*
 * The engine side of the worker connections: the rank socket, the hello
 * check, doorbells in both directions, and reclaiming what a dead worker
 * held.
 *
 * Owns:   srv->conns, srv->worker_conn, the owed-doorbell list, the
 *         event-ring push with notify_pending coalescing.
 * Never:  blocks (every socket is non-blocking), trusts a worker index or
 *         pid the peer wrote without checking it against the kernel's
 *         SO_PEERCRED and the worker record, or touches the scheduler
 *         except through admit.c.
 * Holds:  a worker is "connected" (worker_conn[w] >= 0) only after its hello
 *         matched magic, ABI, epoch, its record's pid and incarnation and
 *         its socket's peer pid.
 */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "server_impl.h"
#include "../common/kimi_log.h"


int
kimi_srv_listen(kimi_server_t *srv, kimi_err_t *err)
{
    int                 fd;
    struct sockaddr_un  sa;

    if (kimi_shm_socket_path(srv->sock_path, sizeof(srv->sock_path),
                             srv->ipc_dir, srv->p.rank) != 0
        || strlen(srv->sock_path) >= sizeof(sa.sun_path))
    {
        return kimi_err_set(err, KIMI_EINVAL, "socket path for \"%s\" is"
                            " longer than %zu bytes", srv->ipc_dir,
                            sizeof(sa.sun_path) - 1);
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return kimi_err_set(err, KIMI_EIO, "socket() failed: %s",
                            strerror(errno));
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, srv->sock_path, strlen(srv->sock_path) + 1);

    /* a previous engine's socket: it is ours to replace, as the segment */
    (void) unlink(srv->sock_path);

    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0
        || chmod(srv->sock_path, srv->p.ipc_mode) != 0
        || listen(fd, 512) != 0)
    {
        int  e = errno;
        close(fd);
        return kimi_err_set(err, KIMI_EIO, "listening on \"%s\" failed: %s",
                            srv->sock_path, strerror(e));
    }

    srv->lfd = fd;

    return 0;
}


void
kimi_srv_accept(kimi_server_t *srv)
{
    int                 fd;
    uint32_t            i;
    socklen_t           len;
    struct ucred        cred;
    struct epoll_event  ev;

    for ( ;; ) {
        fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                kimi_log(KIMI_LOG_ALERT, "accept4() on \"%s\" failed: %s",
                         srv->sock_path, strerror(errno));
            }
            return;
        }

        len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
            kimi_log(KIMI_LOG_ALERT, "getsockopt(SO_PEERCRED) failed: %s",
                     strerror(errno));
            close(fd);
            continue;
        }

        for (i = 0; i < KIMI_SRV_MAX_CONNS; i++) {
            if (srv->conns[i].fd == -1) {
                break;
            }
        }

        if (i == KIMI_SRV_MAX_CONNS) {
            kimi_log(KIMI_LOG_WARN, "worker connection from pid=%d refused:"
                     " %u connections open", (int) cred.pid,
                     KIMI_SRV_MAX_CONNS);
            close(fd);
            continue;
        }

        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = KIMI_SRV_EV(KIMI_SRV_EV_CONN, i);
        if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            kimi_log(KIMI_LOG_ALERT, "epoll_ctl(ADD) failed: %s",
                     strerror(errno));
            close(fd);
            continue;
        }

        memset(&srv->conns[i], 0, sizeof(srv->conns[i]));
        srv->conns[i].fd = fd;
        srv->conns[i].pid = (int32_t) cred.pid;
        srv->conns[i].worker = -1;
        srv->conns[i].accept_ns = kimi_shm_now_ns();

        kimi_log_debug("worker connection accepted conn=%u pid=%d", i,
                       (int) cred.pid);
    }
}


/* Every slot the dead worker (w, pid) held goes back to FREE; its rings are
 * emptied and its record freed, unless a new worker already claimed it. */
static void
kimi_srv_reclaim_worker(kimi_server_t *srv, uint32_t w, int32_t pid)
{
    int32_t             cur;
    uint32_t            i, n_reclaimed = 0, n_active_before;
    kimi_srv_seq_t     *q;
    kimi_shm_slot_t    *s;
    kimi_shm_ring_t    *ring;
    kimi_shm_worker_t  *rec;

    n_active_before = srv->n_active;

    for (i = 0; i < srv->shm.n_slots; i++) {
        s = kimi_shm_slot(&srv->shm, i);
        q = &srv->seqs[i];

        /* the owner fields say so, or we admitted this generation from it
         * (fields it may have scribbled since do not hide it) */
        if ((s->owner_pid != pid || s->owner_worker != w)
            && (q->seq_id == 0 || q->worker != w || q->owner_pid != pid
                || q->generation != s->generation))
        {
            continue;
        }

        if (atomic_load_explicit(&s->state, memory_order_acquire)
            == KIMI_SLOT_FREE)
        {
            continue;
        }

        kimi_srv_release_slot(srv, i);
        n_reclaimed++;
    }

    rec = kimi_shm_worker(&srv->shm, w);
    cur = atomic_load_explicit(&rec->pid, memory_order_acquire);

    if (cur == pid) {
        ring = kimi_shm_ring(&srv->shm, w, srv->p.rank, KIMI_SHM_RING_SUBMIT);
        atomic_store_explicit(&ring->tail,
            atomic_load_explicit(&ring->head, memory_order_acquire),
            memory_order_release);
        ring = kimi_shm_ring(&srv->shm, w, srv->p.rank, KIMI_SHM_RING_EVENT);
        atomic_store_explicit(&ring->tail,
            atomic_load_explicit(&ring->head, memory_order_acquire),
            memory_order_release);
        atomic_store_explicit(&rec->wake_pending, 0, memory_order_release);
        (void) atomic_compare_exchange_strong_explicit(&rec->pid, &cur, 0,
                   memory_order_acq_rel, memory_order_relaxed);
    }

    /* a worker that died between arming the rank doorbell and writing the
     * byte would leave it armed forever: clear it and look at every ring */
    kimi_shm_doorbell_clear(&srv->rank->wake_pending);
    srv->wake = 1;

    kimi_log(KIMI_LOG_NOTICE, "worker gone worker=%u pid=%d"
             " slots_reclaimed=%u sequences_cancelled=%u", w, (int) pid,
             n_reclaimed, n_active_before - srv->n_active);
}


static int
kimi_srv_pid_dead(int32_t pid)
{
    return pid <= 0 || (kill(pid, 0) == -1 && errno == ESRCH);
}


/*
 * Leaks EOF cannot see, looked for about once a second (heartbeat):
 * a slot left ABANDONED that never reached our rings (the worker failed to
 * push it), slots whose owner fields name a dead process but not the
 * worker record it used (a peer that scribbled them, or one that died
 * without ever completing a hello), and such processes' worker records.
 * Slots of live connected workers are left to their EOF.
 */
void
kimi_srv_sweep(kimi_server_t *srv)
{
    int32_t             ci, pid;
    uint32_t            i, st, w, n_freed = 0;
    kimi_shm_slot_t    *s;
    kimi_shm_worker_t  *rec;

    for (i = 0; i < srv->shm.n_slots; i++) {
        s = kimi_shm_slot(&srv->shm, i);
        st = atomic_load_explicit(&s->state, memory_order_acquire);

        if (st == KIMI_SLOT_FREE || srv->seqs[i].active) {
            continue;
        }

        if (st == KIMI_SLOT_ABANDONED) {
            /* a stale ring entry for it later fails the generation or
             * state check, so freeing it here is safe */
            n_freed += kimi_shm_slot_cas(s, st, KIMI_SLOT_FREE);
            continue;
        }

        /* whatever its state says (a dead peer may have written any),
         * a slot we do not run whose owner is gone is nobody's: a ring
         * entry still naming it fails the owner or generation check */
        w = s->owner_worker;
        pid = s->owner_pid;
        ci = w < KIMI_SHM_MAX_WORKERS ? srv->worker_conn[w] : -1;

        if ((ci < 0 || srv->conns[ci].pid != pid) && kimi_srv_pid_dead(pid)) {
            n_freed += kimi_shm_slot_cas(s, st, KIMI_SLOT_FREE);
        }
    }

    for (w = 0; w < KIMI_SHM_MAX_WORKERS; w++) {
        rec = kimi_shm_worker(&srv->shm, w);
        pid = atomic_load_explicit(&rec->pid, memory_order_acquire);

        if (pid != 0 && srv->worker_conn[w] < 0 && kimi_srv_pid_dead(pid)) {
            kimi_srv_reclaim_worker(srv, w, pid);
        }
    }

    if (n_freed > 0) {
        kimi_log(KIMI_LOG_NOTICE, "sweep freed %u orphaned slots", n_freed);
    }
}


void
kimi_srv_conn_drop(kimi_server_t *srv, uint32_t ci, const char *why)
{
    kimi_srv_conn_t  *c = &srv->conns[ci];
    int32_t           w = c->worker;

    if (c->fd == -1) {
        return;
    }

    (void) epoll_ctl(srv->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;

    if (w >= 0) {
        kimi_log(KIMI_LOG_INFO, "worker connection closed worker=%d pid=%d"
                 " reason=\"%s\"", (int) w, (int) c->pid, why);
        srv->worker_conn[w] = -1;
        srv->bell_owed[w] = 0;
        kimi_srv_reclaim_worker(srv, (uint32_t) w, c->pid);

    } else {
        kimi_log(KIMI_LOG_INFO, "worker connection closed before hello"
                 " pid=%d reason=\"%s\"", (int) c->pid, why);
    }

    c->worker = -1;
}


static int
kimi_srv_hello_check(kimi_server_t *srv, kimi_srv_conn_t *c, char *why,
    size_t len)
{
    const kimi_shm_hello_t  *h = &c->hello;
    kimi_shm_worker_t       *rec;

    if (h->magic != KIMI_SHM_MAGIC) {
        snprintf(why, len, "bad magic 0x%llx", (unsigned long long) h->magic);
        return -1;
    }

    if (h->abi_version != KIMI_SHM_ABI_VERSION) {
        snprintf(why, len, "worker speaks ABI %u, engine ABI %u",
                 h->abi_version, KIMI_SHM_ABI_VERSION);
        return -1;
    }

    if (h->epoch != srv->shm.epoch) {
        snprintf(why, len, "worker attached to an older segment (epoch"
                 " %llx, current %llx)", (unsigned long long) h->epoch,
                 (unsigned long long) srv->shm.epoch);
        return -1;
    }

    rec = kimi_shm_worker(&srv->shm, h->worker_index);
    if (rec == NULL) {
        snprintf(why, len, "worker index %u out of range", h->worker_index);
        return -1;
    }

    if (h->pid != c->pid
        || atomic_load_explicit(&rec->pid, memory_order_acquire) != c->pid)
    {
        snprintf(why, len, "pid mismatch: socket peer %d, hello %d, record"
                 " %u holds %d", (int) c->pid, (int) h->pid,
                 h->worker_index, (int) atomic_load(&rec->pid));
        return -1;
    }

    if (h->incarnation != rec->incarnation) {
        snprintf(why, len, "stale incarnation %u, record has %u",
                 h->incarnation, rec->incarnation);
        return -1;
    }

    return 0;
}


static void
kimi_srv_hello_done(kimi_server_t *srv, uint32_t ci)
{
    char              why[256];
    int32_t           old;
    kimi_srv_conn_t  *c = &srv->conns[ci];
    uint32_t          w = c->hello.worker_index;

    if (kimi_srv_hello_check(srv, c, why, sizeof(why)) != 0) {
        kimi_log(KIMI_LOG_WARN, "worker hello refused pid=%d: %s",
                 (int) c->pid, why);
        kimi_srv_conn_drop(srv, ci, "hello refused");
        return;
    }

    /* the record changed hands before we saw the old owner's EOF */
    old = srv->worker_conn[w];
    if (old >= 0) {
        kimi_srv_conn_drop(srv, (uint32_t) old, "record taken over");
    }

    c->worker = (int32_t) w;
    srv->worker_conn[w] = (int32_t) ci;
    srv->wake = 1;      /* it may have submitted before we listened */

    kimi_log(KIMI_LOG_INFO, "worker attached worker=%u pid=%d", w,
             (int) c->pid);
}


void
kimi_srv_conn_event(kimi_server_t *srv, uint32_t ci, uint32_t events)
{
    char              buf[256];
    ssize_t           n;
    size_t            need;
    kimi_srv_conn_t  *c;

    if (ci >= KIMI_SRV_MAX_CONNS || srv->conns[ci].fd == -1) {
        return;
    }

    c = &srv->conns[ci];

    for ( ;; ) {
        if (c->worker < 0) {
            need = sizeof(c->hello) - c->hello_len;
            n = read(c->fd, (char *) &c->hello + c->hello_len, need);
            if (n > 0) {
                c->hello_len += (uint32_t) n;
                if (c->hello_len == sizeof(c->hello)) {
                    kimi_srv_hello_done(srv, ci);
                    if (c->fd == -1) {
                        return;
                    }
                }
                continue;
            }

        } else {
            n = read(c->fd, buf, sizeof(buf));
            if (n > 0) {
                /* doorbell bytes carry no data: one or many mean "look" */
                kimi_shm_doorbell_clear(&srv->rank->wake_pending);
                srv->wake = 1;
                continue;
            }
        }

        if (n == 0) {
            kimi_srv_conn_drop(srv, ci, "eof");
            return;
        }

        if (errno == EINTR) {
            continue;
        }

        if (errno == EAGAIN) {
            break;
        }

        kimi_srv_conn_drop(srv, ci, strerror(errno));
        return;
    }

    if (events & (EPOLLHUP | EPOLLERR)) {
        kimi_srv_conn_drop(srv, ci, "hangup");
    }
}


/*
 * "Look at slot S" for its owner: at most one entry per slot on the event
 * ring (notify_pending), at most one byte per worker wakeup (wake_pending);
 * the byte itself is written by kimi_srv_flush_bells() at the end of the
 * loop turn, so a step that touches 1000 slots of one worker costs one
 * write(2).
 */
void
kimi_srv_notify(kimi_server_t *srv, uint32_t worker, uint32_t slot,
    uint32_t generation)
{
    kimi_shm_slot_t    *s;
    kimi_shm_ring_t    *ring;
    kimi_shm_worker_t  *rec;

    if (worker >= KIMI_SHM_MAX_WORKERS || srv->worker_conn[worker] < 0) {
        return;         /* gone: its slots are reclaimed on EOF */
    }

    s = kimi_shm_slot(&srv->shm, slot);

    if (atomic_exchange_explicit(&s->notify_pending, 1, memory_order_acq_rel)
        == 0)
    {
        ring = kimi_shm_ring(&srv->shm, worker, srv->p.rank,
                             KIMI_SHM_RING_EVENT);
        if (kimi_shm_ring_push(&srv->shm, ring,
                KIMI_SHM_ENTRY(slot, generation & KIMI_SHM_GEN_MASK)) != 0)
        {
            /* only a worker that stopped draining gets here */
            atomic_store_explicit(&s->notify_pending, 0,
                                  memory_order_release);
            kimi_log(KIMI_LOG_ERR, "event ring of worker=%u is full,"
                     " slot=%u not notified", worker, slot);
        }
    }

    rec = kimi_shm_worker(&srv->shm, worker);

    if (kimi_shm_doorbell_arm(&rec->wake_pending) && !srv->bell_owed[worker])
    {
        srv->bell_owed[worker] = 1;
        srv->bell_list[srv->n_bells++] = worker;
    }
}


void
kimi_srv_flush_bells(kimi_server_t *srv)
{
    int32_t   ci;
    uint32_t  i, w;
    ssize_t   n;

    for (i = 0; i < srv->n_bells; i++) {
        w = srv->bell_list[i];
        if (!srv->bell_owed[w]) {
            continue;
        }
        srv->bell_owed[w] = 0;

        ci = srv->worker_conn[w];
        if (ci < 0) {
            continue;
        }

        n = send(srv->conns[ci].fd, "!", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n != 1 && errno != EAGAIN && errno != EINTR) {
            /* EAGAIN: bytes are already queued, the worker will wake */
            kimi_log(KIMI_LOG_INFO, "doorbell to worker=%u failed: %s", w,
                     strerror(errno));
        }
    }

    srv->n_bells = 0;
}
