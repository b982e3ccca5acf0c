/*
 * The node-local process group (group.h): barrier, vote and exchange over
 * one shared anonymous mapping.
 *
 * Layout: header | slots [2 banks][world] | outboxes [2][world][world] of
 * seg_bytes (bank, sender, receiver), each 64-byte aligned.  Bank b holds
 * the slots and outboxes of every sync whose count is b mod 2; every rank
 * counts its syncs, and all ranks make the same syncs, so the counts agree.
 */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "group.h"
#include "group_net.h"

#define KIMI_GROUP_MAGIC     0x4b47525055ull      /* "KGRPU" */
#define KIMI_GROUP_SPINS     4000                 /* before sleeping */
#define KIMI_GROUP_NAP_NS    20000000L            /* futex wait slice */

typedef struct {
    uint64_t  tag;
    uint32_t  any, all;
    uint64_t  bytes[KIMI_GROUP_MAX_RANKS];        /* exchange: per peer */
} kimi_group_slot_t;

typedef struct {
    uint64_t          magic;
    uint32_t          world;
    uint32_t          pad0;
    uint64_t          seg_bytes;
    _Atomic uint32_t  arrived;                    /* at the current barrier */
    _Atomic uint32_t  gen;                        /* futex word */
    _Atomic uint32_t  failed;
    uint32_t          pad1;
    int32_t           wake_fd[KIMI_GROUP_MAX_RANKS];  /* eventfds made before
                                                         the fork, -1 none */
    char              why[256];
} kimi_group_hdr_t;

struct kimi_group {
    kimi_group_hdr_t   *hdr;
    int                 watch_fd[KIMI_GROUP_MAX_RANKS];   /* pidfds */
    int                 watch_pid[KIMI_GROUP_MAX_RANKS];
    uint32_t            watch_rank[KIMI_GROUP_MAX_RANKS];
    uint32_t            n_watch;
    kimi_group_slot_t  *slots;                    /* [2][world] */
    uint8_t            *boxes;                    /* [2][world][world] */
    uint32_t            rank;
    uint32_t            world;
    uint64_t            n_sync;                   /* syncs made so far */
    uint32_t            recv_bank;                /* of the last exchange */
    size_t              seg_bytes;
    kimi_group_net_t   *net;                      /* ranks across nodes:
                                                     every sync goes here */
    kimi_group_t       *parent;                   /* kimi_group_link() */
};


static size_t
kimi_group_align(size_t n)
{
    return (n + 63) & ~(size_t) 63;
}


static size_t
kimi_group_slots_off(void)
{
    return kimi_group_align(sizeof(kimi_group_hdr_t));
}


static size_t
kimi_group_boxes_off(uint32_t world)
{
    return kimi_group_slots_off()
           + kimi_group_align(2 * (size_t) world * sizeof(kimi_group_slot_t));
}


size_t
kimi_group_bytes(uint32_t world, size_t seg_bytes)
{
    return kimi_group_boxes_off(world)
           + 2 * (size_t) world * world * kimi_group_align(seg_bytes);
}


void
kimi_group_init(void *mem, uint32_t world, size_t seg_bytes)
{
    kimi_group_hdr_t  *h = mem;

    memset(mem, 0, kimi_group_boxes_off(world));
    h->world = world;

    /* inherited by every rank at the same numbers: a rank arriving at a
     * vote rings its idle peers instead of their polling for it */
    for (uint32_t r = 0; r < KIMI_GROUP_MAX_RANKS; r++) {
        h->wake_fd[r] = r < world ? eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
                                  : -1;
    }

    h->seg_bytes = kimi_group_align(seg_bytes);
    atomic_init(&h->arrived, 0);
    atomic_init(&h->gen, 0);
    atomic_init(&h->failed, 0);
    h->magic = KIMI_GROUP_MAGIC;
}


static void
kimi_group_wake(_Atomic uint32_t *word)
{
    (void) syscall(SYS_futex, (uint32_t *) word, FUTEX_WAKE, INT_MAX, NULL,
                   NULL, 0);
}


void
kimi_group_fail(void *mem, const char *why)
{
    kimi_group_hdr_t  *h = mem;
    uint32_t           was = 0;

    /* the first failure names the cause; the ones it causes do not */
    if (atomic_compare_exchange_strong(&h->failed, &was, 1)) {
        snprintf(h->why, sizeof(h->why), "%s", why);
        atomic_store(&h->failed, 2);
    }

    atomic_fetch_add(&h->gen, 0x10000);       /* wakes, never matches */
    kimi_group_wake(&h->gen);
}


void
kimi_group_abort(kimi_group_t *g, const char *why)
{
    char  msg[256];

    snprintf(msg, sizeof(msg), "rank %u: %s", g->rank, why);
    if (g->parent != NULL) {
        kimi_group_abort(g->parent, why);
    }
    if (g->net != NULL) {
        kimi_group_net_fail(g->net, msg);      /* tells the other nodes */
        return;
    }
    kimi_group_fail(g->hdr, msg);
}


int
kimi_group_failed(const kimi_group_t *g)
{
    return atomic_load(&g->hdr->failed) != 0
           || (g->net != NULL && kimi_group_net_failed(g->net) != NULL)
           || (g->parent != NULL && kimi_group_failed(g->parent));
}


void
kimi_group_link(kimi_group_t *g, kimi_group_t *parent)
{
    g->parent = parent;
}


static void kimi_group_check_watched(kimi_group_t *g);
static int  kimi_group_error(kimi_group_t *g, kimi_err_t *err);


/* A linked group takes its parent's failure (and the parent watches the
 * processes): the first message stays, here as there. */
static void
kimi_group_inherit(kimi_group_t *g)
{
    kimi_err_t  e;

    if (g->parent == NULL) {
        return;
    }

    kimi_group_check_watched(g->parent);
    if (kimi_group_failed(g->parent) && atomic_load(&g->hdr->failed) == 0) {
        (void) kimi_group_error(g->parent, &e);
        kimi_group_fail(g->hdr, e.msg + strlen("parallel group failed: "));
    }
}


static int
kimi_group_error(kimi_group_t *g, kimi_err_t *err)
{
    struct timespec  ts = { 0, 1000000 };

    if (g->net != NULL && kimi_group_net_failed(g->net) != NULL) {
        return kimi_err_set(err, KIMI_ESTATE, "parallel group failed: %s",
                            kimi_group_net_failed(g->net));
    }

    /* the message is written between the two stores of kimi_group_fail */
    for (int i = 0; i < 100 && atomic_load(&g->hdr->failed) == 1; i++) {
        (void) nanosleep(&ts, NULL);
    }

    return kimi_err_set(err, KIMI_ESTATE, "parallel group failed: %s",
                        g->hdr->why[0] ? g->hdr->why : "(no reason given)");
}


int
kimi_group_attach(kimi_group_t **out, void *mem, uint32_t rank,
    kimi_err_t *err)
{
    kimi_group_hdr_t  *h = mem;
    kimi_group_t      *g;

    if (h == NULL || h->magic != KIMI_GROUP_MAGIC) {
        return kimi_err_set(err, KIMI_EINVAL, "group: not initialised");
    }

    if (rank >= h->world) {
        return kimi_err_set(err, KIMI_EINVAL, "group: rank %u of %u", rank,
                            h->world);
    }

    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "group: out of memory");
    }

    g->hdr = h;
    g->slots = (kimi_group_slot_t *) ((uint8_t *) mem
                                      + kimi_group_slots_off());
    g->boxes = (uint8_t *) mem + kimi_group_boxes_off(h->world);
    g->rank = rank;
    g->world = h->world;
    g->seg_bytes = h->seg_bytes;

    *out = g;
    return 0;
}


/* The node's own failure (the launcher lost a rank or another node), as
 * seen by a mesh wait. */
static int
kimi_group_node_failed(void *arg, char *why, size_t len)
{
    kimi_group_t  *g = arg;
    kimi_err_t     e;

    if (atomic_load(&g->hdr->failed) == 0) {
        return 0;
    }

    (void) kimi_group_error(g, &e);
    snprintf(why, len, "%s", e.msg + strlen("parallel group failed: "));
    return 1;
}


int
kimi_group_connect(kimi_group_t **out, void *mem, uint32_t local_rank,
    const kimi_group_mesh_t *m, kimi_err_t *err)
{
    kimi_group_t  *g;
    int            rc;

    if ((rc = kimi_group_attach(&g, mem, local_rank, err)) != 0) {
        return rc;
    }

    g->rank = m->rank;
    g->world = m->world;
    g->seg_bytes = m->seg_bytes;

    rc = kimi_group_net_open(&g->net, m, kimi_group_node_failed, g, err);
    if (rc != 0) {
        free(g);
        return rc;
    }

    *out = g;
    return 0;
}


int
kimi_group_form(kimi_group_t *g, kimi_err_t *err)
{
    if (g->net == NULL) {
        return 0;
    }

    return kimi_group_net_form(g->net, err);
}


int
kimi_group_spans_nodes(const kimi_group_t *g)
{
    return g->net != NULL;
}


void
kimi_group_free(kimi_group_t *g)
{
    if (g == NULL) {
        return;
    }

    for (uint32_t i = 0; i < g->n_watch; i++) {
        close(g->watch_fd[i]);
    }

    kimi_group_net_free(g->net);
    free(g);
}


int
kimi_group_watch(kimi_group_t *g, const int *pids, uint32_t n,
    const uint32_t *ranks, kimi_err_t *err)
{
    for (uint32_t i = 0; i < n && g->n_watch < KIMI_GROUP_MAX_RANKS; i++) {
        int  fd = (int) syscall(SYS_pidfd_open, pids[i], 0);

        if (fd == -1) {
            return kimi_err_set(err, KIMI_EIO, "group: pidfd_open(%d): %s",
                                pids[i], strerror(errno));
        }

        g->watch_fd[g->n_watch] = fd;
        g->watch_pid[g->n_watch] = pids[i];
        g->watch_rank[g->n_watch] = ranks[i];
        g->n_watch++;
    }

    return 0;
}


int
kimi_group_poll(kimi_group_t *g)
{
    kimi_group_check_watched(g);
    kimi_group_inherit(g);
    if (g->parent != NULL) {
        (void) kimi_group_poll(g->parent);
    }
    return kimi_group_failed(g);
}


static _Atomic int  kimi_group_dog_off;

typedef struct {
    kimi_group_t  *g;
    uint32_t       grace_ms;
    void         (*expire)(const char *why);
} kimi_group_dog_t;


static void *
kimi_group_dog_run(void *arg)
{
    kimi_group_dog_t  *d = arg;
    struct timespec    nap = { 0, 100000000 };
    uint32_t           failed_ms = 0;
    kimi_err_t         e;
    char               why[sizeof(e.msg) + 64];

    for ( ;; ) {
        (void) nanosleep(&nap, NULL);

        if (atomic_load(&kimi_group_dog_off)) {
            return NULL;
        }

        if (!kimi_group_poll(d->g)) {
            continue;
        }

        failed_ms += 100;
        if (failed_ms < d->grace_ms) {
            continue;
        }

        (void) kimi_group_error(d->g, &e);
        snprintf(why, sizeof(why), "%s; this process was still here %u ms"
                 " later", e.msg + strlen("parallel group failed: "),
                 d->grace_ms);
        d->expire(why);
        _exit(1);                           /* expire must not return */
    }

    return NULL;
}


void
kimi_group_watchdog_stop(void)
{
    atomic_store(&kimi_group_dog_off, 1);
}


int
kimi_group_watchdog(void *mem, uint32_t rank, const int *pids, uint32_t n,
    const uint32_t *ranks, uint32_t grace_ms,
    void (*expire)(const char *why), kimi_err_t *err)
{
    kimi_group_dog_t  *d;
    pthread_attr_t     attr;
    pthread_t          t;
    int                rc;

    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "group: out of memory");
    }

    if ((rc = kimi_group_attach(&d->g, mem, rank, err)) != 0
        || (rc = kimi_group_watch(d->g, pids, n, ranks, err)) != 0)
    {
        kimi_group_free(d->g);
        free(d);
        return rc;
    }

    d->grace_ms = grace_ms;
    d->expire = expire;

    (void) pthread_attr_init(&attr);
    (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(&t, &attr, kimi_group_dog_run, d);
    (void) pthread_attr_destroy(&attr);

    if (rc != 0) {
        kimi_group_free(d->g);
        free(d);
        return kimi_err_set(err, KIMI_EIO, "group: watchdog thread: %s",
                            strerror(rc));
    }

    return 0;
}


/* A watched process that exited fails the group: it will never arrive. */
static void
kimi_group_check_watched(kimi_group_t *g)
{
    struct pollfd  pfd;
    char           why[128];

    for (uint32_t i = 0; i < g->n_watch; i++) {
        pfd.fd = g->watch_fd[i];
        pfd.events = POLLIN;
        pfd.revents = 0;

        if (poll(&pfd, 1, 0) == 1) {
            snprintf(why, sizeof(why), "rank %u (pid %d) exited",
                     g->watch_rank[i], g->watch_pid[i]);
            kimi_group_fail(g->hdr, why);
            return;
        }
    }
}


uint32_t
kimi_group_rank(const kimi_group_t *g)
{
    return g->rank;
}


uint32_t
kimi_group_world(const kimi_group_t *g)
{
    return g->world;
}


size_t
kimi_group_seg_bytes(const kimi_group_t *g)
{
    return g->seg_bytes;
}


int
kimi_group_wake_fd(const kimi_group_t *g)
{
    if (g->net != NULL) {
        return kimi_group_net_wake_fd(g->net);      /* level-triggered */
    }

    return g->hdr->wake_fd[g->rank];
}


void
kimi_group_wake_drain(const kimi_group_t *g)
{
    uint64_t  n;

    if (g->net == NULL && g->hdr->wake_fd[g->rank] != -1) {
        (void) !read(g->hdr->wake_fd[g->rank], &n, sizeof(n));
    }
}


int
kimi_group_pending(const kimi_group_t *g)
{
    if (g->net != NULL) {
        return kimi_group_net_pending(g->net);
    }

    return atomic_load(&g->hdr->arrived) != 0
           || atomic_load(&g->hdr->failed) != 0;
}


static kimi_group_slot_t *
kimi_group_slot(const kimi_group_t *g, uint32_t bank, uint32_t r)
{
    return &g->slots[(size_t) bank * g->world + r];
}


static uint8_t *
kimi_group_box(const kimi_group_t *g, uint32_t bank, uint32_t from,
    uint32_t to)
{
    return g->boxes + (((size_t) bank * g->world + from) * g->world + to)
                      * g->hdr->seg_bytes;
}


/* The barrier, then the tag check.  The caller filled its slot in bank
 * n_sync & 1. */
static int
kimi_group_sync(kimi_group_t *g, uint64_t tag, int ring, kimi_err_t *err)
{
    kimi_group_hdr_t  *h = g->hdr;
    uint32_t           gen, arrived, bank = (uint32_t) (g->n_sync & 1);
    struct timespec    nap = { 0, KIMI_GROUP_NAP_NS };
    char               why[160];

    /* gen cannot move before our arrival: it needs every rank's */
    gen = atomic_load(&h->gen);

    kimi_group_inherit(g);
    if (atomic_load(&h->failed)) {
        return kimi_group_error(g, err);
    }

    kimi_group_slot(g, bank, g->rank)->tag = tag;

    arrived = atomic_fetch_add(&h->arrived, 1);

    if (arrived + 1 == g->world) {
        atomic_store(&h->arrived, 0);
        atomic_fetch_add(&h->gen, 1);
        kimi_group_wake(&h->gen);

    } else {
        if (ring && arrived == 0) {
            /* the first at a vote wakes the peers that sleep in epoll */
            for (uint32_t r = 0; r < g->world; r++) {
                uint64_t  one = 1;

                if (r != g->rank && h->wake_fd[r] != -1) {
                    (void) !write(h->wake_fd[r], &one, sizeof(one));
                }
            }
        }

        for (int i = 0; i < KIMI_GROUP_SPINS; i++) {
            if (atomic_load_explicit(&h->gen, memory_order_acquire) != gen) {
                break;
            }
#if defined(__x86_64__)
            __builtin_ia32_pause();
#endif
        }

        while (atomic_load(&h->gen) == gen) {
            (void) syscall(SYS_futex, (uint32_t *) &h->gen, FUTEX_WAIT, gen,
                           &nap, NULL, 0);
            kimi_group_check_watched(g);
            kimi_group_inherit(g);
        }
    }

    g->n_sync++;

    if (atomic_load(&h->failed)) {
        return kimi_group_error(g, err);
    }

    for (uint32_t r = 0; r < g->world; r++) {
        uint64_t  t = kimi_group_slot(g, bank, r)->tag;

        if (t != tag) {
            snprintf(why, sizeof(why), "ranks out of step: rank %u synced"
                     " for 0x%llx, rank %u for 0x%llx", g->rank,
                     (unsigned long long) tag, r, (unsigned long long) t);
            kimi_group_fail(h, why);
            if (g->parent != NULL) {
                kimi_group_abort(g->parent, why);
            }
            return kimi_group_error(g, err);
        }
    }

    return 0;
}


int
kimi_group_vote(kimi_group_t *g, uint64_t tag, int mine_any, int mine_all,
    int *any, int *all, kimi_err_t *err)
{
    uint32_t            bank = (uint32_t) (g->n_sync & 1);
    kimi_group_slot_t  *s = kimi_group_slot(g, bank, g->rank);
    size_t              none[KIMI_GROUP_MAX_RANKS];
    int                 rc;

    if (g->net != NULL) {
        memset(none, 0, sizeof(none));
        if (kimi_group_net_sync(g->net, tag, none, mine_any, mine_all, any,
                                all) != 0)
        {
            return kimi_group_error(g, err);
        }
        return 0;
    }

    s->any = mine_any != 0;
    s->all = mine_all != 0;

    if ((rc = kimi_group_sync(g, tag, 1, err)) != 0) {
        return rc;
    }

    *any = 0;
    *all = 1;

    for (uint32_t r = 0; r < g->world; r++) {
        s = kimi_group_slot(g, bank, r);
        *any |= (int) s->any;
        *all &= (int) s->all;
    }

    return 0;
}


int
kimi_group_allreduce_f32(kimi_group_t *g, uint64_t tag, float *x, size_t n,
    kimi_err_t *err)
{
    size_t        bytes[KIMI_GROUP_MAX_RANKS];
    const float  *in;
    int           rc;

    /* every rank publishes its whole x (in shared memory once, in its
     * own box; over the mesh to each peer); all of them then add the same
     * rows in the same order */
    memset(bytes, 0, sizeof(bytes));
    for (uint32_t r = 0; r < g->world; r++) {
        if (r == g->rank || g->net != NULL) {
            bytes[r] = n * sizeof(float);
            if (bytes[r] <= g->seg_bytes) {
                memcpy(kimi_group_sendbuf(g, r), x, bytes[r]);
            }
        }
    }

    if ((rc = kimi_group_exchange(g, tag, bytes, err)) != 0) {
        return rc;
    }

    for (uint32_t r = 0; r < g->world; r++) {
        size_t  got;

        in = g->net != NULL ? kimi_group_net_recvbuf(g->net, r, &got)
                            : (const float *) kimi_group_box(g, g->recv_bank,
                                                             r, r);

        if (r == 0) {
            memcpy(x, in, n * sizeof(float));
            continue;
        }

        for (size_t i = 0; i < n; i++) {
            x[i] += in[i];
        }
    }

    return 0;
}


void *
kimi_group_sendbuf(kimi_group_t *g, uint32_t peer)
{
    if (g->net != NULL) {
        return kimi_group_net_sendbuf(g->net, peer);
    }

    return kimi_group_box(g, (uint32_t) (g->n_sync & 1), g->rank, peer);
}


int
kimi_group_exchange(kimi_group_t *g, uint64_t tag, const size_t *bytes,
    kimi_err_t *err)
{
    uint32_t            bank = (uint32_t) (g->n_sync & 1);
    kimi_group_slot_t  *s = kimi_group_slot(g, bank, g->rank);

    int                 any, all;

    for (uint32_t p = 0; p < g->world; p++) {
        if (bytes[p] > g->seg_bytes) {
            /* a local bug, but the peers wait for us: fail them too */
            char  why[160];

            snprintf(why, sizeof(why), "%zu bytes for rank %u, more than the"
                     " %llu of a segment", bytes[p], p,
                     (unsigned long long) g->seg_bytes);
            kimi_group_abort(g, why);
            return kimi_group_error(g, err);
        }

        if (g->net == NULL) {
            s->bytes[p] = bytes[p];
        }
    }

    if (g->net != NULL) {
        if (kimi_group_net_sync(g->net, tag, bytes, 0, 0, &any, &all) != 0) {
            return kimi_group_error(g, err);
        }
        return 0;
    }

    g->recv_bank = bank;

    return kimi_group_sync(g, tag, 0, err);
}


const void *
kimi_group_recvbuf(const kimi_group_t *g, uint32_t peer, size_t *bytes)
{
    if (g->net != NULL) {
        return kimi_group_net_recvbuf(g->net, peer, bytes);
    }

    *bytes = kimi_group_slot(g, g->recv_bank, peer)->bytes[g->rank];

    return kimi_group_box(g, g->recv_bank, peer, g->rank);
}
