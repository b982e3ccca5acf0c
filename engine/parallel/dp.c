/*
 * The data-parallel launcher (contract in dp.h).
 *
 * Owns:   the launcher process: its signalfd (TERM, INT, CHLD), the pid
 *         of every local rank, the launcher's read-only view of the
 *         segment (to mark a dead rank), the bootstrap handle.
 * Never:  runs in a rank process after kimi_dp_launch() returned there,
 *         waits without a deadline, or exits the process (it returns).
 * Holds:  local rank 0 publishes the segment before any other rank is
 *         forked, so a rank > 0 always attaches to the segment of this
 *         start (its epoch is checked), never to a stale one.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dp.h"
#include "group.h"
#include "nccl_comm.h"
#include "../common/kimi_log.h"
#include "../shm/kimi_shm.h"

#define KIMI_DP_TICK_MS          200
#define KIMI_DP_PUBLISH_MS       60000   /* rank 0: segment, before weights */
#define KIMI_DP_GROUP_KILL_MS    5000    /* group failed: abort, then kill */
#define KIMI_DP_KILL_GRACE_MS    5000    /* past the ranks' drain timeout */
#define KIMI_DP_STALL_NS         10000000000ull  /* heartbeat warning */

typedef struct {
    pid_t     pid;                       /* 0: gone */
    unsigned  stall_warned:1;
    unsigned  was_ready:1;               /* seen READY in the segment */
} kimi_dp_proc_t;

typedef struct {
    kimi_dp_params_t   p;
    kimi_dp_t         *dp;
    int                sfd;
    int                pub_fd;           /* read end, rank 0's epoch */
    kimi_boot_t       *boot;
    kimi_shm_t         shm;
    uint32_t           n_live;
    uint32_t           n_failed;         /* ranks that died on their own */
    int                stopping;
    int                group_failed;
    uint64_t           kill_at_ms;       /* 0: none */
    kimi_dp_proc_t     procs[KIMI_SHM_MAX_RANKS];
    int                mesh_lfd[KIMI_SHM_MAX_RANKS];  /* -1: none */
} kimi_dp_launcher_t;


static void
kimi_dp_close_mesh(kimi_dp_launcher_t *l, int keep)
{
    for (uint32_t r = 0; r < KIMI_SHM_MAX_RANKS; r++) {
        if (l->mesh_lfd[r] != -1 && (int) r != keep) {
            close(l->mesh_lfd[r]);
            l->mesh_lfd[r] = -1;
        }
    }
}


static uint64_t
kimi_dp_now_ms(void)
{
    return kimi_shm_now_ns() / 1000000;
}


static void
kimi_dp_describe(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status)) {
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));

    } else {
        snprintf(buf, len, "exit code %d", WEXITSTATUS(status));
    }
}


/* Fork local rank r.  Returns 1 in the child, 0 in the launcher, < 0. */
static int
kimi_dp_fork(kimi_dp_launcher_t *l, uint32_t r, int pub_wr, kimi_err_t *err)
{
    pid_t     pid, parent = getpid();
    sigset_t  set;

    fflush(stdout);
    fflush(stderr);

    pid = fork();
    if (pid == -1) {
        return kimi_err_set(err, KIMI_EIO, "fork() for rank %u failed: %s",
                            r, strerror(errno));
    }

    if (pid > 0) {
        l->procs[r].pid = pid;
        l->procs[r].stall_warned = 0;
        l->procs[r].was_ready = 0;
        l->n_live++;
        return 0;
    }

    /* the rank: dies with the launcher, whatever killed it */
    (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) {
        _exit(1);
    }

    /* TERM and INT stay blocked for the rank's own signalfd */
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    (void) sigprocmask(SIG_UNBLOCK, &set, NULL);
    close(l->sfd);
    if (l->pub_fd != -1) {
        close(l->pub_fd);
    }
    /* the child's copies only: closing them sends nothing to the peers */
    kimi_boot_free(l->boot);
    if (l->shm.hdr != NULL) {
        kimi_shm_detach(&l->shm);
    }

    kimi_dp_close_mesh(l, (int) r);
    l->dp->mesh_fd = l->mesh_lfd[r];

    l->dp->is_rank = 1;
    l->dp->local_rank = r;
    l->dp->global_rank = l->dp->global_rank + r;   /* start + r */
    l->dp->published_fd = pub_wr;

    return 1;
}


static void
kimi_dp_signal_all(kimi_dp_launcher_t *l, int sig)
{
    uint32_t  r;

    for (r = 0; r < l->dp->n_local; r++) {
        if (l->procs[r].pid > 0) {
            (void) kill(l->procs[r].pid, sig);
        }
    }
}


/* The group is over or a rank failed: every rank aborts now. */
static void
kimi_dp_fail(kimi_dp_launcher_t *l, const char *why)
{
    if (!l->group_failed) {
        kimi_log(KIMI_LOG_ERR, "%s; stopping the %u local ranks", why,
                 l->n_live);
    }

    l->group_failed = 1;
    l->stopping = 1;
    kimi_boot_abort(l->boot, why);

    /* a rank waiting in an expert-parallel sync hears it there */
    if (l->dp->group_mem != NULL) {
        kimi_group_fail(l->dp->group_mem, why);
    }
    if (l->dp->members_mem != NULL) {
        kimi_group_fail(l->dp->members_mem, why);
    }

    /* INT starts the drain and TERM, a second signal, aborts in-flight
     * requests: two different signals cannot merge while pending */
    kimi_dp_signal_all(l, SIGINT);
    kimi_dp_signal_all(l, SIGTERM);

    if (l->kill_at_ms == 0 || l->kill_at_ms > kimi_dp_now_ms()
                                              + KIMI_DP_GROUP_KILL_MS)
    {
        l->kill_at_ms = kimi_dp_now_ms() + KIMI_DP_GROUP_KILL_MS;
    }
}


static void
kimi_dp_reap(kimi_dp_launcher_t *l)
{
    int               status;
    pid_t             pid;
    int32_t           cur;
    uint32_t          r;
    char              how[96], why[256], path[PATH_MAX];
    kimi_shm_rank_t  *rk;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (r = 0; r < l->dp->n_local; r++) {
            if (l->procs[r].pid == pid) {
                break;
            }
        }
        if (r == l->dp->n_local) {
            continue;
        }

        l->procs[r].pid = 0;
        l->n_live--;
        kimi_dp_describe(status, how, sizeof(how));

        /* the rank cannot say so itself any more: the gateway must see it
         * as down at once, not after a stale heartbeat */
        rk = l->shm.hdr ? kimi_shm_rank(&l->shm, r) : NULL;
        if (rk != NULL) {
            cur = (int32_t) pid;
            atomic_store(&rk->state, KIMI_SHM_STATE_STOPPED);
            (void) atomic_compare_exchange_strong(&rk->pid, &cur, 0);

            /* a killed rank leaves its socket file: connecting to it
             * would say "refused" where "no such rank" is the truth */
            if (!kimi_shm_replaced(&l->shm, l->p.ipc_dir)
                && kimi_shm_socket_path(path, sizeof(path), l->p.ipc_dir, r)
                   == 0)
            {
                (void) unlink(path);
            }
        }

        if (l->stopping && (WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            kimi_log(KIMI_LOG_NOTICE, "rank %u (local %u) pid=%d exited",
                     l->dp->global_rank + r, r, (int) pid);
            continue;
        }

        l->n_failed++;
        snprintf(why, sizeof(why), "rank %u (local %u) pid=%d died: %s",
                 l->dp->global_rank + r, r, (int) pid, how);

        /* its peers in an expert-parallel step would wait for it, even
         * while the group drains */
        if (l->dp->group_mem != NULL) {
            kimi_group_fail(l->dp->group_mem, why);
        }
        if (l->dp->members_mem != NULL) {
            kimi_group_fail(l->dp->members_mem, why);
        }

        if (l->stopping) {
            kimi_log(KIMI_LOG_WARN, "%s", why);

        } else if (!l->procs[r].was_ready) {
            /* a rank that cannot start (a bad flag for its GPU, no
             * memory) is a deployment error, not an outage to ride out */
            snprintf(why, sizeof(why), "rank %u (local %u) pid=%d failed to"
                     " start: %s (its log says why)", l->dp->global_rank + r,
                     r, (int) pid, how);
            kimi_dp_fail(l, why);

        } else if (l->dp->n_nodes > 1 || l->dp->group_mem != NULL) {
            /* other nodes' collectives, or the other ranks' MoE layers,
             * would wait for it forever */
            kimi_dp_fail(l, why);

        } else {
            kimi_log(KIMI_LOG_ERR, "%s; %u of %u ranks still serving (marked"
                     " stopped in the segment)", why, l->n_live,
                     l->dp->n_local);
        }
    }
}


static void
kimi_dp_signals(kimi_dp_launcher_t *l)
{
    char                     msg[128];
    struct signalfd_siginfo  si;

    while (read(l->sfd, &si, sizeof(si)) == (ssize_t) sizeof(si)) {
        if (si.ssi_signo == SIGCHLD) {
            continue;                    /* kimi_dp_reap() runs each turn */
        }

        if (!l->stopping) {
            kimi_log(KIMI_LOG_NOTICE, "%s: stopping %u local ranks",
                     si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM",
                     l->n_live);
            l->stopping = 1;
            l->kill_at_ms = kimi_dp_now_ms() + l->p.shutdown_timeout_ms
                            + KIMI_DP_KILL_GRACE_MS;
            snprintf(msg, sizeof(msg), "node %u (ranks %u..%u) was stopped"
                     " by %s", l->dp->node_index, l->dp->global_rank,
                     l->dp->global_rank + l->dp->n_local - 1,
                     si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
            kimi_boot_drain(l->boot, msg);
        }

        /* a second signal aborts in-flight requests, as for one rank.
         * Ctrl-C on a terminal (SI_KERNEL) already reached every rank in
         * our process group: forwarding it would count twice */
        if (si.ssi_code != SI_KERNEL) {
            kimi_dp_signal_all(l, (int) si.ssi_signo);
        }
    }
}


/* Another node is stopping: this one drains with it, so the group ends
 * together with every in-flight request answered (expert-parallel ranks
 * need each other to the last step). */
static void
kimi_dp_drain(kimi_dp_launcher_t *l, const char *why)
{
    if (l->stopping) {
        return;
    }

    kimi_log(KIMI_LOG_NOTICE, "%s: draining the %u local ranks", why,
             l->n_live);
    l->stopping = 1;
    l->kill_at_ms = kimi_dp_now_ms() + l->p.shutdown_timeout_ms
                    + KIMI_DP_KILL_GRACE_MS;
    kimi_dp_signal_all(l, SIGTERM);
}


/* A rank whose process lives but whose heartbeat stopped: say so once. */
static void
kimi_dp_check_stalls(kimi_dp_launcher_t *l)
{
    uint32_t          r;
    uint64_t          hb, now = kimi_shm_now_ns();
    kimi_shm_rank_t  *rk;

    for (r = 0; r < l->dp->n_local && l->shm.hdr != NULL; r++) {
        rk = kimi_shm_rank(&l->shm, r);
        if (l->procs[r].pid == 0 || rk == NULL
            || atomic_load(&rk->state) != KIMI_SHM_STATE_READY)
        {
            continue;
        }

        l->procs[r].was_ready = 1;

        hb = atomic_load(&rk->heartbeat_ns);
        if (now > hb + KIMI_DP_STALL_NS) {
            if (!l->procs[r].stall_warned) {
                kimi_log(KIMI_LOG_WARN, "rank %u (local %u) pid=%d"
                         " heartbeat is %.1fs old", l->dp->global_rank + r,
                         r, (int) l->procs[r].pid, (now - hb) / 1e9);
            }
            l->procs[r].stall_warned = 1;

        } else {
            l->procs[r].stall_warned = 0;
        }
    }
}


/*
 * One turn: wait up to a tick for a signal or group traffic.  Returns
 * 1 if the signalfd is readable, 0 otherwise.
 */
static int
kimi_dp_wait(kimi_dp_launcher_t *l, int extra_fd)
{
    int            rc;
    kimi_err_t     err;
    struct pollfd  pfd[2];

    if (l->boot != NULL && !l->group_failed && extra_fd == -1) {
        rc = kimi_boot_watch(l->boot, l->sfd, KIMI_DP_TICK_MS, &err);
        if (rc == 2) {
            kimi_dp_drain(l, err.msg);
            return 0;
        }
        if (rc < 0) {
            if (l->stopping) {
                kimi_boot_free(l->boot);
                l->boot = NULL;
                return 0;
            }
            kimi_dp_fail(l, err.msg);
            return 0;
        }
        return rc;
    }

    if (l->boot != NULL && !l->group_failed) {
        /* the group's sockets still need their pings while we wait */
        rc = kimi_boot_watch(l->boot, -1, 0, &err);
        if (rc == 2) {
            kimi_dp_drain(l, err.msg);

        } else if (rc < 0 && l->stopping) {
            kimi_boot_free(l->boot);       /* a peer done draining left */
            l->boot = NULL;

        } else if (rc < 0) {
            kimi_dp_fail(l, err.msg);
        }
    }

    pfd[0].fd = l->sfd;
    pfd[0].events = POLLIN;
    pfd[1].fd = extra_fd;
    pfd[1].events = POLLIN;

    rc = poll(pfd, 2, KIMI_DP_TICK_MS);

    return rc > 0 && (pfd[0].revents & POLLIN);
}


/* Launcher: rank 0 first, its segment, then the rest, then supervise. */
static int
kimi_dp_supervise(kimi_dp_launcher_t *l, kimi_err_t *err)
{
    int        rc, pipefd[2];
    uint32_t   r;
    uint64_t   epoch = 0, deadline;
    ssize_t    n;

    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        return kimi_err_set(err, KIMI_EIO, "pipe2() failed: %s",
                            strerror(errno));
    }

    l->pub_fd = pipefd[0];
    (void) fcntl(pipefd[0], F_SETFL, O_NONBLOCK);

    rc = kimi_dp_fork(l, 0, pipefd[1], err);
    if (rc == 1) {
        return 1;                /* the rank 0 process; read end closed */
    }
    close(pipefd[1]);
    if (rc < 0) {
        close(pipefd[0]);
        l->pub_fd = -1;
        return rc;
    }

    /* the segment exists before the model loads: this is quick */
    deadline = kimi_dp_now_ms() + KIMI_DP_PUBLISH_MS;

    for ( ;; ) {
        if (kimi_dp_wait(l, l->pub_fd)) {
            kimi_dp_signals(l);
        }
        kimi_dp_reap(l);

        n = read(l->pub_fd, &epoch, sizeof(epoch));
        if (n == (ssize_t) sizeof(epoch)) {
            break;
        }

        if (n == 0 || l->procs[0].pid == 0) {
            kimi_dp_fail(l, "local rank 0 exited before it created the"
                         " segment (its log says why)");
            break;
        }

        if (l->stopping) {
            break;
        }

        if (kimi_dp_now_ms() > deadline) {
            kimi_dp_fail(l, "local rank 0 did not create the segment within"
                         " 60 s");
            break;
        }
    }

    close(l->pub_fd);
    l->pub_fd = -1;

    if (!l->stopping) {
        rc = kimi_shm_attach(&l->shm, l->p.ipc_dir, err);
        if (rc == 0 && l->shm.epoch != epoch) {
            rc = kimi_err_set(err, KIMI_ESTATE, "the segment in \"%s\" is"
                              " not the one local rank 0 created",
                              l->p.ipc_dir);
        }
        if (rc == 0 && l->shm.n_ranks != l->dp->n_local) {
            rc = kimi_err_set(err, KIMI_ESTATE, "the segment has %u ranks,"
                              " expected %u", l->shm.n_ranks,
                              l->dp->n_local);
        }
        if (rc != 0) {
            kimi_dp_fail(l, err->msg);
        }
    }

    l->dp->epoch = epoch;

    for (r = 1; r < l->dp->n_local && !l->stopping; r++) {
        rc = kimi_dp_fork(l, r, -1, err);
        if (rc == 1) {
            return 1;
        }
        if (rc < 0) {
            kimi_dp_fail(l, err->msg);
        }
    }

    kimi_dp_close_mesh(l, -1);           /* each rank holds its own */

    if (!l->stopping) {
        kimi_log(KIMI_LOG_NOTICE, "data-parallel ranks started local=%u"
                 " ranks=%u..%u world=%u node=%u/%u", l->dp->n_local,
                 l->dp->global_rank, l->dp->global_rank + l->dp->n_local - 1,
                 l->dp->world, l->dp->node_index, l->dp->n_nodes);
    }

    while (l->n_live > 0) {
        if (kimi_dp_wait(l, -1)) {
            kimi_dp_signals(l);
        }
        /* stalls first: it notes READY ranks, which reap needs to tell a
         * failed start from a crash */
        kimi_dp_check_stalls(l);
        kimi_dp_reap(l);

        if (l->kill_at_ms != 0 && kimi_dp_now_ms() >= l->kill_at_ms
            && l->n_live > 0)
        {
            kimi_log(KIMI_LOG_ERR, "%u ranks did not stop in time:"
                     " SIGKILL", l->n_live);
            kimi_dp_signal_all(l, SIGKILL);
            l->kill_at_ms = 0;
        }

        if (!l->stopping && l->n_live == 0) {
            kimi_log(KIMI_LOG_ERR, "every local rank died");
        }
    }

    return 0;
}


static int
kimi_dp_blob(kimi_dp_t *dp, const kimi_dp_params_t *p, kimi_err_t *err)
{
    if (p->want_nccl_id) {
        return kimi_nccl_unique_id(dp->blob, sizeof(dp->blob), &dp->blob_len,
                                   err);
    }

    /* no collective library consumes it on this build: random bytes that
     * still let every node check it got the head's blob */
    dp->blob_len = 128;
    if (getrandom(dp->blob, dp->blob_len, 0) != (ssize_t) dp->blob_len) {
        return kimi_err_set(err, KIMI_EIO, "getrandom() failed: %s",
                            strerror(errno));
    }

    return 0;
}


static uint32_t
kimi_dp_blob_hash(const kimi_dp_t *dp)
{
    uint32_t  i, h = 2166136261u;      /* FNV-1a, for the log only */

    for (i = 0; i < dp->blob_len; i++) {
        h = (h ^ dp->blob[i]) * 16777619u;
    }

    return h;
}


int
kimi_dp_launch(kimi_dp_t *dp, const kimi_dp_params_t *p, kimi_err_t *err)
{
    int                  rc, multi;
    sigset_t             set;
    kimi_boot_params_t   bp;
    kimi_boot_assign_t   a;
    uint16_t             mesh_ports[KIMI_SHM_MAX_RANKS];
    kimi_dp_launcher_t  *l;

    memset(dp, 0, sizeof(*dp));
    dp->published_fd = -1;
    dp->mesh_fd = -1;
    dp->is_rank = 1;
    dp->n_local = p->size_local ? p->size_local : p->data_parallel_size;
    dp->world = p->data_parallel_size;
    dp->n_nodes = 1;

    multi = p->headless || dp->n_local != p->data_parallel_size;

    if (p->data_parallel_size == 0 || dp->n_local == 0
        || dp->n_local > p->data_parallel_size)
    {
        return kimi_err_set(err, KIMI_EINVAL, "--data-parallel-size-local %u"
                            " is not in 1..%u (--data-parallel-size)",
                            dp->n_local, p->data_parallel_size);
    }

    if (dp->n_local > KIMI_SHM_MAX_RANKS) {
        return kimi_err_set(err, KIMI_EINVAL, "%u ranks on one node: at most"
                            " %d (one per GPU)", dp->n_local,
                            KIMI_SHM_MAX_RANKS);
    }

    if (p->headless && p->size_local == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "--headless needs"
                            " --data-parallel-size-local");
    }

    if (!multi && p->start_rank > 0) {
        return kimi_err_set(err, KIMI_EINVAL, "--data-parallel-start-rank"
                            " %d with all %u ranks on this node",
                            (int) p->start_rank, p->data_parallel_size);
    }

    if (!multi && dp->n_local == 1) {
        return 0;                          /* one rank, this process */
    }

    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "launcher: out of memory");
    }

    l->p = *p;
    l->dp = dp;
    l->pub_fd = -1;
    dp->is_rank = 0;
    for (uint32_t r = 0; r < KIMI_SHM_MAX_RANKS; r++) {
        l->mesh_lfd[r] = -1;
    }

    if (p->group_seg_bytes > 0) {
        /* made before the forks: every rank inherits the same pages; with
         * members, the ranks vote in the first and their processes trade
         * rows in the second */
        for (int i = 0; i < (p->group_members > 1 ? 2 : 1); i++) {
            uint32_t  world = dp->n_local * (i == 1 ? p->group_members : 1);
            size_t    bytes = kimi_group_bytes(world, p->group_seg_bytes);
            void     *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);

            if (mem == MAP_FAILED) {
                rc = kimi_err_set(err, KIMI_ENOMEM, "expert-parallel "
                                  "exchange: mmap of %zu bytes failed: %s",
                                  bytes, strerror(errno));
                dp->is_rank = 1;
                free(l);
                return rc;
            }

            kimi_group_init(mem, world, p->group_seg_bytes);
            *(i == 1 ? &dp->members_mem : &dp->group_mem) = mem;
        }
    }

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    signal(SIGPIPE, SIG_IGN);

    l->sfd = -1;
    if (sigprocmask(SIG_BLOCK, &set, NULL) == 0) {
        l->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    }
    if (l->sfd == -1) {
        rc = kimi_err_set(err, KIMI_EIO, "signalfd() failed: %s",
                          strerror(errno));
        goto done;
    }

    if (multi) {
        memset(&bp, 0, sizeof(bp));
        bp.data_parallel_size = p->data_parallel_size;
        bp.size_local = dp->n_local;
        bp.start_rank = p->start_rank;
        bp.address = p->address ? p->address : "127.0.0.1";
        bp.rpc_port = (uint16_t) (p->rpc_port ? p->rpc_port
                                              : KIMI_DP_DEFAULT_RPC_PORT);
        bp.headless = p->headless;
        bp.join_timeout_ms = p->join_timeout_ms;
        bp.liveness_timeout_ms = p->liveness_timeout_ms;
        bp.cancel_fd = l->sfd;

        if (p->group_seg_bytes > 0) {
            /* expert parallel across nodes: the ranks will sync over a
             * TCP mesh; their sockets listen before anyone can look */
            for (uint32_t r = 0; r < dp->n_local; r++) {
                if (p->mesh_port + r > 65535) {
                    rc = kimi_err_set(err, KIMI_EINVAL,
                                      "--expert-parallel-mesh-port %u + %u"
                                      " local ranks passes 65535",
                                      p->mesh_port, dp->n_local);
                    goto done;
                }
                mesh_ports[r] = p->mesh_port ? (uint16_t) (p->mesh_port + r)
                                             : 0;
                rc = kimi_group_listen(&mesh_ports[r], err);
                if (rc < 0) {
                    goto done;
                }
                l->mesh_lfd[r] = rc;
                kimi_log(KIMI_LOG_NOTICE, "expert-parallel mesh: local rank"
                         " %u listens on port %u", r, mesh_ports[r]);
            }
            bp.mesh_ports = mesh_ports;
        }

        if (!p->headless) {
            rc = kimi_dp_blob(dp, p, err);
            if (rc != 0) {
                goto done;
            }
        }

        kimi_log(KIMI_LOG_NOTICE, "%s data-parallel group size=%u local=%u"
                 " address=%s rpc_port=%u", p->headless ? "joining"
                 : "forming", p->data_parallel_size, dp->n_local, bp.address,
                 bp.rpc_port);

        rc = kimi_boot_init(&l->boot, &bp, dp->blob, dp->blob_len, &a, err);
        if (rc != 0) {
            goto done;
        }

        dp->global_rank = a.start_rank;
        dp->node_index = a.node_index;
        dp->n_nodes = a.n_nodes;
        dp->blob_len = a.blob_len;
        memcpy(dp->blob, a.blob, a.blob_len);
        dp->mesh_n = a.mesh_n;
        dp->mesh_secret = a.mesh_secret;
        memcpy(dp->mesh, a.mesh, sizeof(dp->mesh));

        kimi_log(KIMI_LOG_NOTICE, "data-parallel group formed node=%u/%u"
                 " ranks=%u..%u world=%u blob_fnv=%08x", a.node_index,
                 a.n_nodes, a.start_rank, a.start_rank + a.size_local - 1,
                 a.world, kimi_dp_blob_hash(dp));
    }

    rc = kimi_dp_supervise(l, err);
    if (rc == 1) {
        free(l);                 /* the rank's copy; fds already closed */
        return 0;
    }

    kimi_dp_close_mesh(l, -1);

    if (rc == 0) {
        dp->exit_code = (l->group_failed || l->n_failed > 0) ? 1 : 0;
    }

done:

    kimi_dp_close_mesh(l, -1);
    if (l->shm.hdr != NULL) {
        atomic_store(&l->shm.hdr->state, KIMI_SHM_STATE_STOPPED);
        kimi_shm_detach(&l->shm);
    }
    kimi_boot_free(l->boot);
    if (l->sfd != -1) {
        close(l->sfd);
    }
    if (l->pub_fd != -1) {
        close(l->pub_fd);
    }
    free(l);

    return rc;
}


void
kimi_dp_published(kimi_dp_t *dp, uint64_t epoch)
{
    if (dp->published_fd == -1) {
        return;
    }

    /* 8 bytes into an empty pipe cannot be short */
    if (write(dp->published_fd, &epoch, sizeof(epoch)) != sizeof(epoch)) {
        kimi_log(KIMI_LOG_ALERT, "telling the launcher the segment is up"
                 " failed: %s", strerror(errno));
    }
    close(dp->published_fd);
    dp->published_fd = -1;
}
