/*
 * A process group across nodes over a TCP mesh (group_net.h).
 *
 * Frame:  u32 magic "KGNF", u32 type (1 data, 2 abort), u64 tag, u32 any,
 *         u32 all, u64 payload bytes, then the payload (abort: its text).
 *         Host byte order: every node runs the same build, and a node
 *         that does not is caught by the magic.
 * Mesh:   rank r connects to every lower rank and accepts every higher
 *         one; both ends of a connection send a hello {u32 magic "KGNH",
 *         u32 rank, u32 world, u32 zero, u64 secret} and check the
 *         other's: the secret comes from the bootstrap, so a stray
 *         connection to a rank's port is dropped, not trusted.
 * Holds:  a sync reads each peer's frame exactly, never beyond it (a fast
 *         peer's next frame waits in the socket); an ABORT is only sent
 *         at a frame boundary, else the connection is shut down.
 */

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "group_net.h"

#define KIMI_NET_FRAME_MAGIC  0x464e474bu          /* "KGNF" */
#define KIMI_NET_HELLO_MAGIC  0x484e474bu          /* "KGNH" */
#define KIMI_NET_DATA         1u
#define KIMI_NET_ABORT        2u
#define KIMI_NET_WHY_MAX      255
#define KIMI_NET_RETRY_MS     100
#define KIMI_NET_HELLO_MS     2000           /* an accepted peer's hello */

#define kimi_net_min(a, b)     ((a) < (b) ? (a) : (b))

typedef struct {
    uint32_t  magic;
    uint32_t  type;
    uint64_t  tag;
    uint32_t  any;
    uint32_t  all;
    uint64_t  bytes;
} kimi_net_hdr_t;

typedef struct {
    uint32_t  magic;
    uint32_t  rank;
    uint32_t  world;
    uint32_t  zero;
    uint64_t  secret;
} kimi_net_hello_t;

typedef struct {
    int              fd;
    kimi_net_hdr_t   tx_hdr;
    const uint8_t   *tx_payload;
    size_t           tx_off, tx_len;      /* over header + payload */
    kimi_net_hdr_t   rx_hdr;
    size_t           rx_off;              /* over header + payload */
    int              rx_done;
    uint8_t         *rbuf[2];
    size_t           rcap[2];
    size_t           rlen[2];
    uint32_t         rany[2], rall[2];
} kimi_net_peer_t;

struct kimi_group_net {
    kimi_group_mesh_t        m;
    int                      formed;
    uint32_t                 rank, world;
    size_t                   seg_bytes;
    int                      epfd;
    uint64_t                 n_sync;
    uint32_t                 recv_bank;
    kimi_group_net_stop_pt   stop;
    void                    *stop_arg;
    int                      failed;
    char                     why[KIMI_NET_WHY_MAX + 1];
    uint8_t                 *sbuf[2][KIMI_GROUP_MAX_RANKS];
    kimi_net_peer_t          peer[KIMI_GROUP_MAX_RANKS];
};


static uint64_t
kimi_net_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}


int
kimi_group_listen(uint16_t *port, kimi_err_t *err)
{
    int                  fd, zero = 0, one = 1;
    struct sockaddr_in6  a6;
    struct sockaddr_in   a4;
    struct sockaddr     *sa;
    socklen_t            len;

    /* every interface, IPv4 and IPv6 where the kernel has both: the
     * other nodes reach this one by whatever address the head saw */
    memset(&a6, 0, sizeof(a6));
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_any;
    a6.sin6_port = htons(*port);
    sa = (struct sockaddr *) &a6;
    len = sizeof(a6);

    fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd != -1) {
        (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));

    } else {
        memset(&a4, 0, sizeof(a4));
        a4.sin_family = AF_INET;
        a4.sin_addr.s_addr = htonl(INADDR_ANY);
        a4.sin_port = htons(*port);
        sa = (struct sockaddr *) &a4;
        len = sizeof(a4);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    }

    /* a fixed port must bind again right after a restart */
    if (fd != -1) {
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }

    if (fd == -1 || bind(fd, sa, len) != 0
        || listen(fd, KIMI_GROUP_MAX_RANKS) != 0
        || getsockname(fd, sa, &len) != 0)
    {
        int  e = errno;

        if (fd != -1) {
            close(fd);
        }
        return kimi_err_set(err, KIMI_EIO, "expert-parallel mesh: a listening"
                            " socket on port %u: %s", *port, strerror(e));
    }

    *port = ntohs(sa->sa_family == AF_INET6 ? a6.sin6_port : a4.sin_port);

    return fd;
}


static void
kimi_net_nodelay(int fd)
{
    int  one = 1;

    (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}


/* Bytes from fd until *off reaches len or the socket runs dry: 1 done,
 * 0 more to come, -1 EOF or error (errno; 0 for EOF). */
static int
kimi_net_read(int fd, void *buf, size_t *off, size_t len)
{
    ssize_t  n;

    while (*off < len) {
        n = recv(fd, (uint8_t *) buf + *off, len - *off, MSG_DONTWAIT);
        if (n > 0) {
            *off += (size_t) n;
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            return 0;
        }
        if (n == 0) {
            errno = 0;
        }
        return -1;
    }

    return 1;
}


/* The hello on a connected socket, bounded by the deadline. */
static int
kimi_net_hello_io(kimi_group_net_t *n, int fd, int sending,
    kimi_net_hello_t *h, uint64_t deadline)
{
    size_t         off = 0;
    ssize_t        k;
    struct pollfd  pfd;
    char           why[KIMI_NET_WHY_MAX + 1];

    while (off < sizeof(*h)) {
        if (sending) {
            k = send(fd, (uint8_t *) h + off, sizeof(*h) - off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k > 0) {
                off += (size_t) k;
                continue;
            }
            if (k == -1 && errno != EAGAIN && errno != EINTR) {
                return -1;
            }

        } else {
            int  rc = kimi_net_read(fd, h, &off, sizeof(*h));

            if (rc == 1) {
                break;
            }
            if (rc < 0) {
                return -1;
            }
        }

        if (kimi_net_now_ms() >= deadline || n->stop(n->stop_arg, why,
                                                     sizeof(why)))
        {
            errno = ETIMEDOUT;
            return -1;
        }

        pfd.fd = fd;
        pfd.events = sending ? POLLOUT : POLLIN;
        (void) poll(&pfd, 1, KIMI_GROUP_NET_SLICE_MS);
    }

    return 0;
}


static int
kimi_net_hello_ok(const kimi_group_net_t *n, const kimi_net_hello_t *h,
    uint64_t secret)
{
    return h->magic == KIMI_NET_HELLO_MAGIC && h->world == n->world
           && h->secret == secret && h->rank < n->world
           && h->rank != n->rank;
}


/* Rank q's address, connected and greeted; retries until the deadline
 * (a node may still be forking its ranks: their sockets listen from
 * before the bootstrap, so this is rare). */
static int
kimi_net_connect(kimi_group_net_t *n, const kimi_group_mesh_t *m,
    uint32_t q, uint64_t deadline, kimi_err_t *err)
{
    int               fd = -1, rc, soerr = 0;
    char              port[8], why[KIMI_NET_WHY_MAX + 1];
    socklen_t         sl;
    struct pollfd     pfd;
    struct addrinfo   hints, *res = NULL;
    kimi_net_hello_t  h;

    snprintf(port, sizeof(port), "%u", m->addrs[q].port);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;

    rc = getaddrinfo(m->addrs[q].host, port, &hints, &res);
    if (rc != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "expert-parallel mesh: rank"
                            " %u's address \"%s\": %s", q, m->addrs[q].host,
                            gai_strerror(rc));
    }

    for ( ;; ) {
        fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK
                    | SOCK_CLOEXEC, 0);
        if (fd == -1) {
            soerr = errno;
            break;
        }

        soerr = connect(fd, res->ai_addr, res->ai_addrlen) == 0 ? 0 : errno;
        if (soerr == EINPROGRESS) {
            pfd.fd = fd;
            pfd.events = POLLOUT;
            do {
                rc = poll(&pfd, 1, KIMI_GROUP_NET_SLICE_MS);
            } while (rc == 0 && kimi_net_now_ms() < deadline);
            sl = sizeof(soerr);
            soerr = ETIMEDOUT;
            if (rc > 0) {
                (void) getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            }
        }

        if (soerr == 0) {
            break;
        }

        close(fd);
        fd = -1;

        if (kimi_net_now_ms() + KIMI_NET_RETRY_MS >= deadline
            || n->stop(n->stop_arg, why, sizeof(why)))
        {
            break;
        }
        (void) poll(NULL, 0, KIMI_NET_RETRY_MS);
    }

    freeaddrinfo(res);

    if (fd == -1) {
        return kimi_err_set(err, KIMI_ESTATE, "expert-parallel mesh: cannot"
                            " reach rank %u at %s port %u: %s", q,
                            m->addrs[q].host, m->addrs[q].port,
                            strerror(soerr));
    }

    kimi_net_nodelay(fd);

    memset(&h, 0, sizeof(h));
    h.magic = KIMI_NET_HELLO_MAGIC;
    h.rank = n->rank;
    h.world = n->world;
    h.secret = m->secret;

    if (kimi_net_hello_io(n, fd, 1, &h, deadline) != 0
        || kimi_net_hello_io(n, fd, 0, &h, deadline) != 0
        || !kimi_net_hello_ok(n, &h, m->secret) || h.rank != q)
    {
        close(fd);
        return kimi_err_set(err, KIMI_ESTATE, "expert-parallel mesh: rank %u"
                            " at %s port %u did not answer as rank %u of this"
                            " group", q, m->addrs[q].host, m->addrs[q].port,
                            q);
    }

    n->peer[q].fd = fd;
    return 0;
}


/* Every higher rank connects to us: accept, check its hello, answer. */
static int
kimi_net_accept_all(kimi_group_net_t *n, const kimi_group_mesh_t *m,
    uint64_t deadline, kimi_err_t *err)
{
    int               fd;
    uint32_t          want = n->world - 1 - n->rank, got = 0, q;
    char              why[KIMI_NET_WHY_MAX + 1];
    struct pollfd     pfd;
    kimi_net_hello_t  h;

    while (got < want) {
        if (kimi_net_now_ms() >= deadline) {
            return kimi_err_set(err, KIMI_ESTATE, "expert-parallel mesh: %u"
                                " of the %u higher ranks connected to rank %u"
                                " within %u ms", got, want, n->rank,
                                m->timeout_ms);
        }
        if (n->stop(n->stop_arg, why, sizeof(why))) {
            return kimi_err_set(err, KIMI_ESTATE, "expert-parallel mesh: %s",
                                why);
        }

        pfd.fd = m->listen_fd;
        pfd.events = POLLIN;
        if (poll(&pfd, 1, KIMI_GROUP_NET_SLICE_MS) <= 0) {
            continue;
        }

        fd = accept4(m->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            continue;
        }
        kimi_net_nodelay(fd);

        /* a stranger or a stale rank is dropped; the group waits on.  A
         * rank sends its hello as it connects: one that says nothing
         * within KIMI_NET_HELLO_MS is not a rank (and cannot stall us) */
        if (kimi_net_hello_io(n, fd, 0, &h,
                              kimi_net_min(deadline, kimi_net_now_ms()
                                                    + KIMI_NET_HELLO_MS)) != 0
            || !kimi_net_hello_ok(n, &h, m->secret) || h.rank < n->rank
            || n->peer[h.rank].fd != -1)
        {
            close(fd);
            continue;
        }

        q = h.rank;
        h.rank = n->rank;
        if (kimi_net_hello_io(n, fd, 1, &h, deadline) != 0) {
            close(fd);
            continue;
        }

        n->peer[q].fd = fd;
        got++;
    }

    return 0;
}


int
kimi_group_net_open(kimi_group_net_t **out, const kimi_group_mesh_t *m,
    kimi_group_net_stop_pt stop, void *stop_arg, kimi_err_t *err)
{
    int                  rc = 0;
    uint32_t             q, b;
    kimi_group_net_t    *n;

    *out = NULL;

    if (m->world < 2 || m->world > KIMI_GROUP_MAX_RANKS || m->rank >= m->world
        || m->seg_bytes == 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "expert-parallel mesh: rank %u"
                            " of %u (at most %d ranks)", m->rank, m->world,
                            KIMI_GROUP_MAX_RANKS);
    }

    n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "group: out of memory");
    }

    n->rank = m->rank;
    n->world = m->world;
    n->seg_bytes = m->seg_bytes;
    n->stop = stop;
    n->stop_arg = stop_arg;
    n->epfd = -1;
    for (q = 0; q < KIMI_GROUP_MAX_RANKS; q++) {
        n->peer[q].fd = -1;
    }

    /* untouched pages cost nothing: a segment is the largest message */
    for (b = 0; b < 2 && rc == 0; b++) {
        for (q = 0; q < n->world && rc == 0; q++) {
            n->sbuf[b][q] = malloc(n->seg_bytes);
            if (n->sbuf[b][q] == NULL) {
                rc = kimi_err_set(err, KIMI_ENOMEM, "group: %zu bytes of send"
                                  " buffers", 2 * n->world * n->seg_bytes);
            }
        }
    }

    n->m = *m;

    if (rc == 0) {
        n->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (n->epfd == -1) {
            rc = kimi_err_set(err, KIMI_EIO, "group: epoll: %s",
                              strerror(errno));
        }
    }

    if (rc != 0) {
        close(m->listen_fd);
        n->m.listen_fd = -1;
        kimi_group_net_free(n);
        return rc;
    }

    *out = n;
    return 0;
}


int
kimi_group_net_form(kimi_group_net_t *n, kimi_err_t *err)
{
    int                  rc = 0;
    uint32_t             q;
    uint64_t             deadline = kimi_net_now_ms() + n->m.timeout_ms;
    struct epoll_event   ev;

    if (n->formed) {
        return 0;
    }

    for (q = 0; q < n->rank && rc == 0; q++) {
        rc = kimi_net_connect(n, &n->m, q, deadline, err);
    }
    if (rc == 0) {
        rc = kimi_net_accept_all(n, &n->m, deadline, err);
    }

    /* the mesh is whole (or never will be): nobody else may join */
    close(n->m.listen_fd);
    n->m.listen_fd = -1;

    for (q = 0; q < n->world && rc == 0; q++) {
        if (q == n->rank) {
            continue;
        }
        ev.events = EPOLLIN;
        ev.data.u32 = q;
        if (epoll_ctl(n->epfd, EPOLL_CTL_ADD, n->peer[q].fd, &ev) != 0) {
            rc = kimi_err_set(err, KIMI_EIO, "group: epoll: %s",
                              strerror(errno));
        }
    }

    if (rc != 0) {
        kimi_group_net_fail(n, err->msg);
        return rc;
    }

    n->formed = 1;
    return 0;
}


void
kimi_group_net_free(kimi_group_net_t *n)
{
    uint32_t  q, b;

    if (n == NULL) {
        return;
    }

    for (q = 0; q < KIMI_GROUP_MAX_RANKS; q++) {
        if (n->peer[q].fd != -1) {
            close(n->peer[q].fd);
        }
        for (b = 0; b < 2; b++) {
            free(n->peer[q].rbuf[b]);
            free(n->sbuf[b][q]);
        }
    }

    if (n->epfd != -1) {
        close(n->epfd);
    }
    if (n->m.listen_fd != -1) {
        close(n->m.listen_fd);
    }

    free(n);
}


const char *
kimi_group_net_failed(const kimi_group_net_t *n)
{
    return n->failed ? n->why : NULL;
}


void
kimi_group_net_fail(kimi_group_net_t *n, const char *why)
{
    kimi_net_peer_t  *pe;
    kimi_net_hdr_t    h;
    struct iovec      iov[2];
    size_t            len;

    if (n->failed) {
        return;                  /* the first cause is the one told */
    }

    n->failed = 1;
    snprintf(n->why, sizeof(n->why), "%s", why);
    len = strlen(n->why);

    memset(&h, 0, sizeof(h));
    h.magic = KIMI_NET_FRAME_MAGIC;
    h.type = KIMI_NET_ABORT;
    h.bytes = len;
    iov[0].iov_base = &h;
    iov[0].iov_len = sizeof(h);
    iov[1].iov_base = n->why;
    iov[1].iov_len = len;

    for (uint32_t q = 0; q < n->world; q++) {
        pe = &n->peer[q];
        if (pe->fd == -1) {
            continue;
        }

        /* mid-frame, a peer would read the abort as payload: it gets an
         * EOF instead, which fails it just as surely */
        struct msghdr  mh = { .msg_iov = iov, .msg_iovlen = 2 };

        if ((pe->tx_off != 0 && pe->tx_off != pe->tx_len)
            || sendmsg(pe->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT)
               != (ssize_t) (sizeof(h) + len))
        {
            (void) shutdown(pe->fd, SHUT_RDWR);
        }
    }
}


int
kimi_group_net_pending(kimi_group_net_t *n)
{
    struct epoll_event  ev;
    char                why[KIMI_NET_WHY_MAX + 1];

    if (n->failed) {
        return 1;
    }

    if (n->stop(n->stop_arg, why, sizeof(why))) {
        kimi_group_net_fail(n, why);
        return 1;
    }

    /* a peer's frame waiting in its socket: that peer is at the vote */
    return epoll_wait(n->epfd, &ev, 1, 0) > 0;
}


int
kimi_group_net_wake_fd(const kimi_group_net_t *n)
{
    return n->epfd;
}


void *
kimi_group_net_sendbuf(kimi_group_net_t *n, uint32_t peer)
{
    return n->sbuf[n->n_sync & 1][peer];
}


const void *
kimi_group_net_recvbuf(const kimi_group_net_t *n, uint32_t peer,
    size_t *bytes)
{
    const kimi_net_peer_t  *pe = &n->peer[peer];
    uint32_t                b = n->recv_bank;

    if (peer == n->rank) {
        *bytes = pe->rlen[b];
        return n->sbuf[b][peer];
    }

    *bytes = pe->rlen[b];
    return pe->rbuf[b];
}


/* Sends what the socket takes of this sync's frame to peer q. */
static int
kimi_net_tx(kimi_group_net_t *n, uint32_t q)
{
    kimi_net_peer_t  *pe = &n->peer[q];
    struct iovec      iov[2];
    int               k = 0;
    ssize_t           w;

    while (pe->tx_off < pe->tx_len) {
        k = 0;
        if (pe->tx_off < sizeof(pe->tx_hdr)) {
            iov[k].iov_base = (uint8_t *) &pe->tx_hdr + pe->tx_off;
            iov[k++].iov_len = sizeof(pe->tx_hdr) - pe->tx_off;
            iov[k].iov_base = (void *) pe->tx_payload;
            iov[k++].iov_len = pe->tx_len - sizeof(pe->tx_hdr);

        } else {
            iov[k].iov_base = (void *) (pe->tx_payload + pe->tx_off
                                        - sizeof(pe->tx_hdr));
            iov[k++].iov_len = pe->tx_len - pe->tx_off;
        }

        struct msghdr  mh = { .msg_iov = iov, .msg_iovlen = (size_t) k };

        w = sendmsg(pe->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            pe->tx_off += (size_t) w;
            continue;
        }
        if (w == -1 && (errno == EAGAIN || errno == EINTR)) {
            return 0;
        }
        return -1;
    }

    return 0;
}


/* Reads what has come of peer q's frame for this sync; 1 when whole. */
static int
kimi_net_rx(kimi_group_net_t *n, uint32_t q, uint32_t bank, uint64_t tag)
{
    kimi_net_peer_t  *pe = &n->peer[q];
    size_t            off, need;
    char              text[KIMI_NET_WHY_MAX + 1], why[KIMI_NET_WHY_MAX + 64];
    int               rc;

    if (pe->rx_off < sizeof(pe->rx_hdr)) {
        rc = kimi_net_read(pe->fd, &pe->rx_hdr, &pe->rx_off,
                           sizeof(pe->rx_hdr));
        if (rc <= 0) {
            goto io;
        }

        if (pe->rx_hdr.magic != KIMI_NET_FRAME_MAGIC
            || (pe->rx_hdr.type != KIMI_NET_DATA
                && pe->rx_hdr.type != KIMI_NET_ABORT)
            || pe->rx_hdr.bytes > (pe->rx_hdr.type == KIMI_NET_ABORT
                                   ? KIMI_NET_WHY_MAX : n->seg_bytes))
        {
            snprintf(why, sizeof(why), "rank %u: a malformed frame from rank"
                     " %u (another kimi-engine build?)", n->rank, q);
            kimi_group_net_fail(n, why);
            return -1;
        }

        if (pe->rx_hdr.type == KIMI_NET_DATA && pe->rx_hdr.tag != tag) {
            snprintf(why, sizeof(why), "ranks out of step: rank %u synced"
                     " for 0x%llx, rank %u for 0x%llx", n->rank,
                     (unsigned long long) tag, q,
                     (unsigned long long) pe->rx_hdr.tag);
            kimi_group_net_fail(n, why);
            return -1;
        }
    }

    if (pe->rx_hdr.type == KIMI_NET_ABORT) {
        /* short: wait for the whole text, it comes in one segment */
        off = 0;
        need = (size_t) pe->rx_hdr.bytes;
        for (int tries = 0; off < need && tries < 1000; tries++) {
            rc = kimi_net_read(pe->fd, text, &off, need);
            if (rc < 0) {
                break;
            }
            if (rc == 0) {
                (void) poll(NULL, 0, 1);
            }
        }
        text[off] = '\0';
        for (size_t i = 0; i < off; i++) {
            if (text[i] < 0x20 || text[i] >= 0x7f) {
                text[i] = '?';
            }
        }
        kimi_group_net_fail(n, text[0] ? text : "a peer ended the group");
        return -1;
    }

    need = (size_t) pe->rx_hdr.bytes;
    if (pe->rcap[bank] < need) {
        uint8_t  *nb = realloc(pe->rbuf[bank], need);

        if (nb == NULL) {
            snprintf(why, sizeof(why), "rank %u: out of memory for %zu bytes"
                     " from rank %u", n->rank, need, q);
            kimi_group_net_fail(n, why);
            return -1;
        }
        pe->rbuf[bank] = nb;
        pe->rcap[bank] = need;
    }

    off = pe->rx_off - sizeof(pe->rx_hdr);
    rc = kimi_net_read(pe->fd, pe->rbuf[bank], &off, need);
    pe->rx_off = sizeof(pe->rx_hdr) + off;
    if (rc < 0) {
        goto io;
    }
    if (rc == 0) {
        return 0;
    }

    pe->rlen[bank] = need;
    pe->rany[bank] = pe->rx_hdr.any;
    pe->rall[bank] = pe->rx_hdr.all;
    return 1;

io:

    if (rc == 0) {
        return 0;
    }

    snprintf(why, sizeof(why), "rank %u lost its connection to rank %u%s%s"
             " (the rank or its node is gone)", n->rank, q,
             errno ? ": " : "", errno ? strerror(errno) : "");
    kimi_group_net_fail(n, why);
    return -1;
}


int
kimi_group_net_sync(kimi_group_net_t *n, uint64_t tag, const size_t *bytes,
    int mine_any, int mine_all, int *any, int *all)
{
    uint32_t          q, bank = (uint32_t) (n->n_sync & 1), np, left;
    uint32_t          idx[KIMI_GROUP_MAX_RANKS];
    kimi_net_peer_t  *pe;
    struct pollfd     pfd[KIMI_GROUP_MAX_RANKS];
    char              why[KIMI_NET_WHY_MAX + 1];

    if (n->failed) {
        return -1;
    }

    if (!n->formed) {
        kimi_group_net_fail(n, "a sync before the mesh formed");
        return -1;
    }

    if (n->stop(n->stop_arg, why, sizeof(why))) {
        kimi_group_net_fail(n, why);
        return -1;
    }

    for (q = 0; q < n->world; q++) {
        pe = &n->peer[q];

        if (q == n->rank) {
            pe->rlen[bank] = bytes[q];
            pe->rany[bank] = mine_any != 0;
            pe->rall[bank] = mine_all != 0;
            continue;
        }

        memset(&pe->tx_hdr, 0, sizeof(pe->tx_hdr));
        pe->tx_hdr.magic = KIMI_NET_FRAME_MAGIC;
        pe->tx_hdr.type = KIMI_NET_DATA;
        pe->tx_hdr.tag = tag;
        pe->tx_hdr.any = mine_any != 0;
        pe->tx_hdr.all = mine_all != 0;
        pe->tx_hdr.bytes = bytes[q];
        pe->tx_payload = n->sbuf[bank][q];
        pe->tx_off = 0;
        pe->tx_len = sizeof(pe->tx_hdr) + bytes[q];
        pe->rx_off = 0;
        pe->rx_done = 0;

        if (kimi_net_tx(n, q) != 0) {
            goto lost;
        }
    }

    for ( ;; ) {
        np = 0;
        left = 0;
        for (q = 0; q < n->world; q++) {
            pe = &n->peer[q];
            if (q == n->rank) {
                continue;
            }
            if (!pe->rx_done) {
                int  rc = kimi_net_rx(n, q, bank, tag);

                if (rc < 0) {
                    return -1;
                }
                pe->rx_done = rc == 1;
            }
            if (pe->rx_done && pe->tx_off == pe->tx_len) {
                continue;
            }
            left++;
            pfd[np].fd = pe->fd;
            pfd[np].events = (pe->rx_done ? 0 : POLLIN)
                             | (pe->tx_off < pe->tx_len ? POLLOUT : 0);
            pfd[np].revents = 0;
            idx[np++] = q;
        }

        if (left == 0) {
            break;
        }

        if (poll(pfd, np, KIMI_GROUP_NET_SLICE_MS) == 0
            && n->stop(n->stop_arg, why, sizeof(why)))
        {
            kimi_group_net_fail(n, why);
            return -1;
        }

        for (uint32_t i = 0; i < np; i++) {
            if ((pfd[i].revents & (POLLOUT | POLLERR | POLLHUP))
                && kimi_net_tx(n, idx[i]) != 0)
            {
                q = idx[i];
                goto lost;
            }
        }
    }

    *any = 0;
    *all = 1;
    for (q = 0; q < n->world; q++) {
        *any |= (int) n->peer[q].rany[bank];
        *all &= (int) n->peer[q].rall[bank];
    }

    n->recv_bank = bank;
    n->n_sync++;

    return 0;

lost:

    snprintf(why, sizeof(why), "rank %u lost its connection to rank %u: %s"
             " (the rank or its node is gone)", n->rank, q, strerror(errno));

    /* a peer that failed first said why before it closed: read that */
    if (!n->peer[q].rx_done) {
        (void) kimi_net_rx(n, q, bank, tag);
    }
    kimi_group_net_fail(n, why);
    return -1;
}
