/*
 * Multi-node bootstrap over TCP (protocol in bootstrap.h).
 *
 * Owns:   the listening socket (head), one connection per peer, their
 *         receive buffers and deadlines, the table of rank ranges.
 * Never:  blocks without a deadline: sockets are non-blocking and every
 *         wait is poll() bounded by the nearest deadline; a send that
 *         would block means the peer stopped reading, which is a failure
 *         (frames are tens of bytes, far below any socket buffer).
 * Holds:  a peer's range is in the table only after its JOIN was
 *         validated; ranges never overlap and lie inside [0, world).
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"

#define KIMI_BOOT_MAGIC        0x4b494d42u     /* "KIMB" */
#define KIMI_BOOT_VERSION      2
#define KIMI_BOOT_HDR          12
#define KIMI_BOOT_PAYLOAD_MAX  4096            /* an ASSIGN of 64 mesh ranks */
#define KIMI_BOOT_JOIN_FIXED   (16 + KIMI_BOOT_HOST_LEN + 4)
#define KIMI_BOOT_MESH_ENTRY   (KIMI_BOOT_ADDR_LEN + 2)
#define KIMI_BOOT_HOST_LEN     64
#define KIMI_BOOT_RETRY_MS     200             /* connect retry while the
                                                  head is not up yet */

enum {
    KIMI_BOOT_JOIN = 1,
    KIMI_BOOT_ASSIGN = 2,
    KIMI_BOOT_REFUSE = 3,
    KIMI_BOOT_PING = 4,
    KIMI_BOOT_ABORT = 5,
    KIMI_BOOT_DRAIN = 6,
};

typedef struct {
    int        fd;                   /* -1: closed */
    uint32_t   rx_len;
    uint64_t   last_rx_ms;
    int32_t    pid;
    uint32_t   start;
    uint32_t   len;
    unsigned   joined:1;
    uint32_t   n_ports;
    uint16_t   ports[KIMI_BOOT_MESH_MAX];
    char       host[KIMI_BOOT_HOST_LEN];
    uint8_t    rx[KIMI_BOOT_HDR + KIMI_BOOT_PAYLOAD_MAX];
} kimi_boot_peer_t;

struct kimi_boot {
    kimi_boot_params_t   p;
    int                  is_head;
    int                  lfd;
    uint32_t             n_peers;
    uint64_t             last_ping_ms;
    int                  draining;           /* DRAIN sent or received */
    kimi_boot_assign_t   a;
    kimi_boot_peer_t     peers[KIMI_BOOT_MAX_NODES + 2];  /* node: [0] = head;
                                                 head: the last two are
                                                 scratch for late joiners */
};

typedef struct {
    uint32_t   type;
    uint32_t   len;
    uint8_t   *payload;
} kimi_boot_frame_t;


static uint64_t
kimi_boot_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}


static void
kimi_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t) (v >> 24);
    p[1] = (uint8_t) (v >> 16);
    p[2] = (uint8_t) (v >> 8);
    p[3] = (uint8_t) v;
}


static uint32_t
kimi_get32(const uint8_t *p)
{
    return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16
           | (uint32_t) p[2] << 8 | p[3];
}


static const char *
kimi_boot_peer_name(const kimi_boot_t *b, const kimi_boot_peer_t *pe,
    char *buf, size_t len)
{
    if (!b->is_head) {
        snprintf(buf, len, "the head node %s:%u", b->p.address,
                 b->p.rpc_port);

    } else if (pe->joined) {
        snprintf(buf, len, "node \"%s\" pid %d (ranks %u..%u)", pe->host,
                 (int) pe->pid, pe->start, pe->start + pe->len - 1);

    } else {
        snprintf(buf, len, "a node that had not joined");
    }

    return buf;
}


/* One frame, all or nothing; a short or blocked send is a dead peer. */
static int
kimi_boot_send(kimi_boot_peer_t *pe, uint32_t type, const void *payload,
    uint32_t len)
{
    uint8_t  buf[KIMI_BOOT_HDR + KIMI_BOOT_PAYLOAD_MAX];
    ssize_t  n;

    if (pe->fd == -1 || len > KIMI_BOOT_PAYLOAD_MAX) {
        return -1;
    }

    kimi_put32(buf, KIMI_BOOT_MAGIC);
    buf[4] = 0;
    buf[5] = KIMI_BOOT_VERSION;
    buf[6] = 0;
    buf[7] = (uint8_t) type;
    kimi_put32(buf + 8, len);
    if (len > 0) {
        memcpy(buf + KIMI_BOOT_HDR, payload, len);
    }

    n = send(pe->fd, buf, KIMI_BOOT_HDR + len, MSG_NOSIGNAL | MSG_DONTWAIT);

    return n == (ssize_t) (KIMI_BOOT_HDR + len) ? 0 : -1;
}


static int
kimi_boot_send_text(kimi_boot_peer_t *pe, uint32_t type, const char *text)
{
    size_t  n = strlen(text);

    return kimi_boot_send(pe, type, text,
        n > KIMI_BOOT_PAYLOAD_MAX ? KIMI_BOOT_PAYLOAD_MAX : (uint32_t) n);
}


static void
kimi_boot_close(kimi_boot_peer_t *pe)
{
    if (pe->fd != -1) {
        close(pe->fd);
        pe->fd = -1;
    }
    pe->joined = 0;
    pe->rx_len = 0;
}


/*
 * Reads what the socket has.  Returns 1 if a whole frame is in pe->rx
 * (f filled; call kimi_boot_consume after handling it), 0 if more bytes
 * are needed, < 0 on EOF, error or a malformed header (err set).
 */
static int
kimi_boot_recv(kimi_boot_t *b, kimi_boot_peer_t *pe, kimi_boot_frame_t *f,
    kimi_err_t *err)
{
    ssize_t   n;
    uint32_t  len;
    char      name[160];

    for ( ;; ) {
        if (pe->rx_len >= KIMI_BOOT_HDR) {
            if (kimi_get32(pe->rx) != KIMI_BOOT_MAGIC
                || pe->rx[5] != KIMI_BOOT_VERSION)
            {
                return kimi_err_set(err, KIMI_ESTATE, "%s sent a frame that"
                                    " is not kimi bootstrap version %d (a"
                                    " different kimi-engine version, or not"
                                    " kimi-engine at all)",
                                    kimi_boot_peer_name(b, pe, name,
                                                        sizeof(name)),
                                    KIMI_BOOT_VERSION);
            }

            len = kimi_get32(pe->rx + 8);
            if (len > KIMI_BOOT_PAYLOAD_MAX) {
                return kimi_err_set(err, KIMI_ESTATE, "%s sent a %u-byte"
                                    " frame (at most %d)",
                                    kimi_boot_peer_name(b, pe, name,
                                                        sizeof(name)),
                                    len, KIMI_BOOT_PAYLOAD_MAX);
            }

            if (pe->rx_len >= KIMI_BOOT_HDR + len) {
                f->type = pe->rx[7];
                f->len = len;
                f->payload = pe->rx + KIMI_BOOT_HDR;
                pe->last_rx_ms = kimi_boot_now_ms();
                return 1;
            }
        }

        n = recv(pe->fd, pe->rx + pe->rx_len, sizeof(pe->rx) - pe->rx_len,
                 MSG_DONTWAIT);

        if (n > 0) {
            pe->rx_len += (uint32_t) n;
            continue;
        }

        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            return 0;
        }

        return kimi_err_set(err, KIMI_ESTATE, "%s closed the connection%s%s",
                            kimi_boot_peer_name(b, pe, name, sizeof(name)),
                            n == 0 ? "" : ": ",
                            n == 0 ? "" : strerror(errno));
    }
}


static void
kimi_boot_consume(kimi_boot_peer_t *pe, const kimi_boot_frame_t *f)
{
    uint32_t  used = KIMI_BOOT_HDR + f->len;

    memmove(pe->rx, pe->rx + used, pe->rx_len - used);
    pe->rx_len -= used;
}


static void
kimi_boot_text(const kimi_boot_frame_t *f, char *buf, size_t len)
{
    size_t  i, n = f->len < len - 1 ? f->len : len - 1;

    for (i = 0; i < n; i++) {
        /* the peer's text goes into our logs: printable bytes only */
        buf[i] = (f->payload[i] >= 0x20 && f->payload[i] < 0x7f)
                 ? (char) f->payload[i] : '?';
    }
    buf[n] = '\0';
}


int
kimi_boot_place(uint32_t world, const uint32_t *taken_start,
    const uint32_t *taken_len, uint32_t n_taken, int32_t start, uint32_t len,
    uint32_t *out_start, kimi_err_t *err)
{
    uint32_t  i, s, e;
    int       clash;

    if (len == 0 || len > world) {
        return kimi_err_set(err, KIMI_EINVAL, "--data-parallel-size-local %u"
                            " is not in 1..%u (--data-parallel-size)", len,
                            world);
    }

    if (start >= 0) {
        if ((uint64_t) start + len > world) {
            return kimi_err_set(err, KIMI_EINVAL, "ranks %d..%u do not fit"
                                " --data-parallel-size %u", (int) start,
                                (uint32_t) start + len - 1, world);
        }

        for (i = 0; i < n_taken; i++) {
            s = taken_start[i];
            e = s + taken_len[i];
            if ((uint32_t) start < e && s < (uint32_t) start + len) {
                return kimi_err_set(err, KIMI_EINVAL, "ranks %d..%u overlap"
                                    " ranks %u..%u, already held by another"
                                    " node (duplicate"
                                    " --data-parallel-start-rank?)",
                                    (int) start, (uint32_t) start + len - 1,
                                    s, e - 1);
            }
        }

        *out_start = (uint32_t) start;
        return 0;
    }

    /* the lowest free range: candidates are 0 and the end of each range */
    for (s = 0; s + len <= world; s = e) {
        clash = 0;
        e = s + 1;
        for (i = 0; i < n_taken; i++) {
            if (s < taken_start[i] + taken_len[i]
                && taken_start[i] < s + len)
            {
                clash = 1;
                e = taken_start[i] + taken_len[i];
                break;
            }
        }
        if (!clash) {
            *out_start = s;
            return 0;
        }
    }

    return kimi_err_set(err, KIMI_EINVAL, "no %u free consecutive ranks left"
                        " of --data-parallel-size %u", len, world);
}


static uint32_t
kimi_boot_covered(const kimi_boot_t *b)
{
    uint32_t  i, n = b->p.size_local;

    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        if (b->peers[i].fd != -1 && b->peers[i].joined) {
            n += b->peers[i].len;
        }
    }

    return n;
}


/* Head: validates a JOIN and records the node's range, or refuses it. */
static void
kimi_boot_join(kimi_boot_t *b, kimi_boot_peer_t *pe, const kimi_boot_frame_t *f)
{
    uint32_t    i, n = 0, size, len, start;
    uint32_t    ts[KIMI_BOOT_MAX_NODES + 1], tl[KIMI_BOOT_MAX_NODES + 1];
    int32_t     want;
    kimi_err_t  e;
    char        msg[600];

    if (pe->joined || f->len < KIMI_BOOT_JOIN_FIXED
        || kimi_get32(f->payload + KIMI_BOOT_JOIN_FIXED - 4) > KIMI_BOOT_MESH_MAX
        || f->len != KIMI_BOOT_JOIN_FIXED
                     + 2 * kimi_get32(f->payload + KIMI_BOOT_JOIN_FIXED - 4))
    {
        kimi_boot_send_text(pe, KIMI_BOOT_REFUSE, "malformed JOIN");
        kimi_boot_close(pe);
        return;
    }

    size = kimi_get32(f->payload);
    len = kimi_get32(f->payload + 4);
    want = (int32_t) kimi_get32(f->payload + 8);
    pe->pid = (int32_t) kimi_get32(f->payload + 12);
    memcpy(pe->host, f->payload + 16, KIMI_BOOT_HOST_LEN);
    pe->host[KIMI_BOOT_HOST_LEN - 1] = '\0';
    for (i = 0; pe->host[i] != '\0'; i++) {
        if (pe->host[i] < 0x20 || pe->host[i] >= 0x7f) {
            pe->host[i] = '?';
        }
    }

    if (size != b->p.data_parallel_size) {
        snprintf(msg, sizeof(msg), "the node has --data-parallel-size %u,"
                 " the head %u: every node must give the same size", size,
                 b->p.data_parallel_size);
        goto refuse;
    }

    pe->n_ports = kimi_get32(f->payload + KIMI_BOOT_JOIN_FIXED - 4);
    for (i = 0; i < pe->n_ports; i++) {
        pe->ports[i] = (uint16_t) (f->payload[KIMI_BOOT_JOIN_FIXED + 2 * i]
                                   << 8
                                   | f->payload[KIMI_BOOT_JOIN_FIXED + 2 * i
                                                + 1]);
    }

    if ((b->p.mesh_ports != NULL) != (pe->n_ports > 0)) {
        snprintf(msg, sizeof(msg), "the head %s --enable-expert-parallel and"
                 " the node %s: start every node with the same flags",
                 b->p.mesh_ports ? "has" : "does not have",
                 pe->n_ports ? "has" : "does not");
        goto refuse;
    }

    if (pe->n_ports > 0 && pe->n_ports != len) {
        snprintf(msg, sizeof(msg), "malformed JOIN: %u mesh ports for %u"
                 " ranks", pe->n_ports, len);
        goto refuse;
    }

    if (kimi_boot_covered(b) == b->p.data_parallel_size) {
        snprintf(msg, sizeof(msg), "the group is already complete: all %u"
                 " ranks are held", size);
        goto refuse;
    }

    ts[n] = b->a.start_rank;
    tl[n++] = b->p.size_local;
    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        if (b->peers[i].fd != -1 && b->peers[i].joined) {
            ts[n] = b->peers[i].start;
            tl[n++] = b->peers[i].len;
        }
    }

    if (kimi_boot_place(size, ts, tl, n, want, len, &start, &e) != 0) {
        snprintf(msg, sizeof(msg), "%s", e.msg);
        goto refuse;
    }

    pe->start = start;
    pe->len = len;
    pe->joined = 1;

    return;

refuse:

    kimi_boot_send_text(pe, KIMI_BOOT_REFUSE, msg);
    kimi_boot_close(pe);
}


static int
kimi_boot_listen(kimi_boot_t *b, kimi_err_t *err)
{
    int               fd = -1, one = 1, rc;
    char              port[8];
    struct addrinfo   hints, *res = NULL, *ai;

    snprintf(port, sizeof(port), "%u", b->p.rpc_port);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;

    rc = getaddrinfo(b->p.address, port, &hints, &res);
    if (rc != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "--data-parallel-address"
                            " \"%s\": %s", b->p.address, gai_strerror(rc));
    }

    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK
                    | SOCK_CLOEXEC, 0);
        if (fd == -1) {
            continue;
        }
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0
            && listen(fd, KIMI_BOOT_MAX_NODES) == 0)
        {
            break;
        }
        rc = errno;
        close(fd);
        fd = -1;
        errno = rc;
    }

    freeaddrinfo(res);

    if (fd == -1) {
        return kimi_err_set(err, KIMI_EIO, "listening on %s:%u for headless"
                            " nodes failed: %s", b->p.address, b->p.rpc_port,
                            strerror(errno));
    }

    b->lfd = fd;

    return 0;
}


static int
kimi_boot_poll(struct pollfd *pfd, nfds_t n, uint64_t deadline_ms)
{
    uint64_t  now = kimi_boot_now_ms();
    int       t = deadline_ms > now ? (int) (deadline_ms - now) : 0;

    return poll(pfd, n, t);
}


static int
kimi_boot_cancelled(kimi_err_t *err)
{
    return kimi_err_set(err, KIMI_ESTATE, "interrupted by a signal while"
                        " the data-parallel group was forming");
}


/* Head: accept and validate nodes until every rank is held. */
static int
kimi_boot_head_form(kimi_boot_t *b, uint64_t deadline, kimi_err_t *err)
{
    int                 fd, rc;
    uint32_t            i, n, idx[KIMI_BOOT_MAX_NODES];
    kimi_err_t          e;
    kimi_boot_frame_t   f;
    kimi_boot_peer_t   *pe;
    struct pollfd       pfd[KIMI_BOOT_MAX_NODES + 2];

    while (kimi_boot_covered(b) < b->p.data_parallel_size) {
        n = 0;
        pfd[n].fd = b->lfd;
        pfd[n++].events = POLLIN;
        pfd[n].fd = b->p.cancel_fd;
        pfd[n++].events = POLLIN;
        for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
            if (b->peers[i].fd != -1) {
                idx[n - 2] = i;
                pfd[n].fd = b->peers[i].fd;
                pfd[n++].events = POLLIN;
            }
        }

        if (kimi_boot_now_ms() >= deadline) {
            return kimi_err_set(err, KIMI_ESTATE, "the data-parallel group"
                                " did not form within %u ms: %u of %u ranks"
                                " joined (start the headless nodes with the"
                                " same --data-parallel-size and"
                                " --data-parallel-address %s"
                                " --data-parallel-rpc-port %u)",
                                b->p.join_timeout_ms, kimi_boot_covered(b),
                                b->p.data_parallel_size, b->p.address,
                                b->p.rpc_port);
        }

        rc = kimi_boot_poll(pfd, n, deadline);
        if (rc < 0 && errno != EINTR) {
            return kimi_err_set(err, KIMI_EIO, "poll() failed: %s",
                                strerror(errno));
        }
        if (rc <= 0) {
            continue;
        }

        if (pfd[1].revents) {
            return kimi_boot_cancelled(err);
        }

        if (pfd[0].revents & POLLIN) {
            for ( ;; ) {
                fd = accept4(b->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd == -1) {
                    break;
                }
                for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
                    if (b->peers[i].fd == -1) {
                        break;
                    }
                }
                if (i == KIMI_BOOT_MAX_NODES) {
                    close(fd);
                    continue;
                }
                pe = &b->peers[i];
                memset(pe, 0, sizeof(*pe));
                pe->fd = fd;
                pe->last_rx_ms = kimi_boot_now_ms();
            }
        }

        for (i = 2; i < n; i++) {
            if (pfd[i].revents == 0) {
                continue;
            }
            pe = &b->peers[idx[i - 2]];

            /* a node that leaves before the group formed just frees its
             * ranks: the group has not started, nobody depends on it */
            while ((rc = kimi_boot_recv(b, pe, &f, &e)) == 1) {
                if (f.type == KIMI_BOOT_JOIN) {
                    kimi_boot_join(b, pe, &f);
                    if (pe->fd == -1) {
                        break;
                    }
                }
                kimi_boot_consume(pe, &f);
            }
            if (rc < 0) {
                kimi_boot_close(pe);
            }
        }
    }

    return 0;
}


/* The numeric address of one end of a connected socket, without the
 * "::ffff:" of an IPv4 peer on a dual-stack socket. */
static void
kimi_boot_sock_host(int fd, int peer, char *host, size_t len)
{
    struct sockaddr_storage  ss;
    socklen_t                sl = sizeof(ss);
    char                     buf[NI_MAXHOST];
    int                      rc;

    rc = peer ? getpeername(fd, (struct sockaddr *) &ss, &sl)
              : getsockname(fd, (struct sockaddr *) &ss, &sl);
    if (rc != 0 || getnameinfo((struct sockaddr *) &ss, sl, buf, sizeof(buf),
                               NULL, 0, NI_NUMERICHOST) != 0)
    {
        snprintf(host, len, "?");
        return;
    }

    snprintf(host, len, "%.*s", (int) len - 1,
             strncmp(buf, "::ffff:", 7) == 0 && strchr(buf + 7, '.')
             ? buf + 7 : buf);
}


/* Head: every rank's mesh address, as the nodes reached each other. */
static void
kimi_boot_mesh_table(kimi_boot_t *b)
{
    uint32_t           i, k;
    char               head_host[KIMI_BOOT_ADDR_LEN] = "";
    kimi_boot_peer_t  *pe;

    b->a.mesh_n = b->a.world;

    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        pe = &b->peers[i];
        if (pe->fd == -1 || !pe->joined) {
            continue;
        }
        if (head_host[0] == '\0') {
            /* the address this node used to reach us reaches our ranks */
            kimi_boot_sock_host(pe->fd, 0, head_host, sizeof(head_host));
        }
        for (k = 0; k < pe->len; k++) {
            kimi_boot_sock_host(pe->fd, 1, b->a.mesh[pe->start + k].host,
                                KIMI_BOOT_ADDR_LEN);
            b->a.mesh[pe->start + k].port = pe->ports[k];
        }
    }

    for (k = 0; k < b->p.size_local; k++) {
        snprintf(b->a.mesh[b->a.start_rank + k].host, KIMI_BOOT_ADDR_LEN,
                 "%s", head_host[0] ? head_host : b->p.address);
        b->a.mesh[b->a.start_rank + k].port = b->p.mesh_ports[k];
    }
}


/* Head: the group is complete; tell every node its ranks, the blob and
 * the mesh. */
static int
kimi_boot_head_assign(kimi_boot_t *b, kimi_err_t *err)
{
    uint8_t            buf[KIMI_BOOT_PAYLOAD_MAX];
    uint32_t           i, k, n_nodes = 1, node = 1, len;
    char               name[160];
    kimi_boot_peer_t  *pe;

    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        n_nodes += b->peers[i].fd != -1 && b->peers[i].joined;
    }

    b->a.n_nodes = n_nodes;
    b->a.node_index = 0;

    if (b->p.mesh_ports != NULL) {
        kimi_boot_mesh_table(b);
    }

    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        pe = &b->peers[i];
        if (pe->fd == -1) {
            continue;
        }
        if (!pe->joined) {
            /* connected but silent: it cannot be part of a full group */
            kimi_boot_close(pe);
            continue;
        }

        kimi_put32(buf, b->a.world);
        kimi_put32(buf + 4, pe->start);
        kimi_put32(buf + 8, pe->len);
        kimi_put32(buf + 12, n_nodes);
        kimi_put32(buf + 16, node++);
        kimi_put32(buf + 20, b->a.blob_len);
        memcpy(buf + 24, b->a.blob, b->a.blob_len);
        len = 24 + b->a.blob_len;
        kimi_put32(buf + len, b->a.mesh_n);
        kimi_put32(buf + len + 4, (uint32_t) (b->a.mesh_secret >> 32));
        kimi_put32(buf + len + 8, (uint32_t) b->a.mesh_secret);
        len += 12;
        for (k = 0; k < b->a.mesh_n; k++) {
            memcpy(buf + len, b->a.mesh[k].host, KIMI_BOOT_ADDR_LEN);
            buf[len + KIMI_BOOT_ADDR_LEN] = (uint8_t) (b->a.mesh[k].port >> 8);
            buf[len + KIMI_BOOT_ADDR_LEN + 1] = (uint8_t) b->a.mesh[k].port;
            len += KIMI_BOOT_MESH_ENTRY;
        }

        if (kimi_boot_send(pe, KIMI_BOOT_ASSIGN, buf, len) != 0) {
            kimi_err_set(err, KIMI_ESTATE, "sending the rank assignment to"
                         " %s failed", kimi_boot_peer_name(b, pe, name,
                                                           sizeof(name)));
            kimi_boot_abort(b, err->msg);
            return err->code;
        }
        pe->last_rx_ms = kimi_boot_now_ms();
    }

    b->n_peers = n_nodes - 1;
    b->last_ping_ms = kimi_boot_now_ms();

    return 0;
}


static int
kimi_boot_connect(kimi_boot_t *b, uint64_t deadline, kimi_err_t *err)
{
    int               fd, rc, soerr, one = 1;
    char              port[8];
    socklen_t         len;
    struct pollfd     pfd[2];
    struct addrinfo   hints, *res = NULL;

    snprintf(port, sizeof(port), "%u", b->p.rpc_port);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;

    rc = getaddrinfo(b->p.address, port, &hints, &res);
    if (rc != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "--data-parallel-address"
                            " \"%s\": %s", b->p.address, gai_strerror(rc));
    }

    /* the head may start after us: retry until the join deadline */
    for ( ;; ) {
        fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK
                    | SOCK_CLOEXEC, 0);
        if (fd == -1) {
            rc = kimi_err_set(err, KIMI_EIO, "socket() failed: %s",
                              strerror(errno));
            break;
        }

        soerr = 0;
        if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
            soerr = errno;
        }

        if (soerr == EINPROGRESS) {
            pfd[0].fd = fd;
            pfd[0].events = POLLOUT;
            pfd[1].fd = b->p.cancel_fd;
            pfd[1].events = POLLIN;
            rc = kimi_boot_poll(pfd, 2, deadline);
            if (rc > 0 && pfd[1].revents) {
                close(fd);
                rc = kimi_boot_cancelled(err);
                break;
            }
            len = sizeof(soerr);
            soerr = ETIMEDOUT;
            if (rc > 0) {
                (void) getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
            }
        }

        if (soerr == 0) {
            (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
                              sizeof(one));
            b->peers[0].fd = fd;
            b->peers[0].last_rx_ms = kimi_boot_now_ms();
            rc = 0;
            break;
        }

        close(fd);

        if (kimi_boot_now_ms() + KIMI_BOOT_RETRY_MS >= deadline) {
            rc = kimi_err_set(err, KIMI_ESTATE, "cannot reach the head node"
                              " at %s:%u within %u ms: %s", b->p.address,
                              b->p.rpc_port, b->p.join_timeout_ms,
                              strerror(soerr));
            break;
        }

        pfd[0].fd = b->p.cancel_fd;
        pfd[0].events = POLLIN;
        if (poll(pfd, 1, KIMI_BOOT_RETRY_MS) > 0) {
            rc = kimi_boot_cancelled(err);
            break;
        }
    }

    freeaddrinfo(res);

    return rc;
}


/* Headless: join the head and wait for the assignment. */
static int
kimi_boot_node_form(kimi_boot_t *b, uint64_t deadline, kimi_err_t *err)
{
    int                 rc;
    uint8_t             join[KIMI_BOOT_JOIN_FIXED + 2 * KIMI_BOOT_MESH_MAX];
    uint32_t            i, n_ports, off;
    char                text[KIMI_BOOT_PAYLOAD_MAX + 1];
    kimi_boot_frame_t   f;
    kimi_boot_peer_t   *head = &b->peers[0];
    struct pollfd       pfd[2];

    rc = kimi_boot_connect(b, deadline, err);
    if (rc != 0) {
        return rc;
    }

    memset(join, 0, sizeof(join));
    kimi_put32(join, b->p.data_parallel_size);
    kimi_put32(join + 4, b->p.size_local);
    kimi_put32(join + 8, (uint32_t) b->p.start_rank);
    kimi_put32(join + 12, (uint32_t) getpid());
    (void) gethostname((char *) join + 16, KIMI_BOOT_HOST_LEN - 1);
    n_ports = b->p.mesh_ports != NULL ? b->p.size_local : 0;
    kimi_put32(join + KIMI_BOOT_JOIN_FIXED - 4, n_ports);
    for (i = 0; i < n_ports; i++) {
        join[KIMI_BOOT_JOIN_FIXED + 2 * i] = (uint8_t) (b->p.mesh_ports[i] >> 8);
        join[KIMI_BOOT_JOIN_FIXED + 2 * i + 1] = (uint8_t) b->p.mesh_ports[i];
    }

    if (kimi_boot_send(head, KIMI_BOOT_JOIN, join,
                       KIMI_BOOT_JOIN_FIXED + 2 * n_ports) != 0)
    {
        return kimi_err_set(err, KIMI_ESTATE, "sending JOIN to the head node"
                            " %s:%u failed", b->p.address, b->p.rpc_port);
    }

    for ( ;; ) {
        while ((rc = kimi_boot_recv(b, head, &f, err)) == 1) {
            switch (f.type) {

            case KIMI_BOOT_ASSIGN:
                if (f.len < 24 || kimi_get32(f.payload + 20) > f.len - 24
                    || kimi_get32(f.payload + 20) > KIMI_BOOT_BLOB_MAX)
                {
                    return kimi_err_set(err, KIMI_ESTATE, "the head node"
                                        " sent a malformed ASSIGN");
                }
                b->a.world = kimi_get32(f.payload);
                b->a.start_rank = kimi_get32(f.payload + 4);
                b->a.size_local = kimi_get32(f.payload + 8);
                b->a.n_nodes = kimi_get32(f.payload + 12);
                b->a.node_index = kimi_get32(f.payload + 16);
                b->a.blob_len = kimi_get32(f.payload + 20);
                memcpy(b->a.blob, f.payload + 24, b->a.blob_len);
                off = 24 + b->a.blob_len;
                b->a.mesh_n = f.len >= off + 12 ? kimi_get32(f.payload + off)
                                                : 0;
                if (f.len < off + 12 || b->a.mesh_n > KIMI_BOOT_MESH_MAX
                    || f.len != off + 12 + b->a.mesh_n * KIMI_BOOT_MESH_ENTRY
                    || (b->a.mesh_n != 0 && b->a.mesh_n != b->a.world)
                    || (b->a.mesh_n != 0) != (n_ports != 0))
                {
                    return kimi_err_set(err, KIMI_ESTATE, "the head node"
                                        " sent a malformed ASSIGN (mesh)");
                }
                b->a.mesh_secret = (uint64_t) kimi_get32(f.payload + off + 4)
                                   << 32 | kimi_get32(f.payload + off + 8);
                off += 12;
                for (i = 0; i < b->a.mesh_n; i++) {
                    memcpy(b->a.mesh[i].host, f.payload + off,
                           KIMI_BOOT_ADDR_LEN);
                    b->a.mesh[i].host[KIMI_BOOT_ADDR_LEN - 1] = '\0';
                    b->a.mesh[i].port = (uint16_t) (f.payload[off
                                            + KIMI_BOOT_ADDR_LEN] << 8
                                        | f.payload[off + KIMI_BOOT_ADDR_LEN
                                                    + 1]);
                    off += KIMI_BOOT_MESH_ENTRY;
                }
                kimi_boot_consume(head, &f);

                if (b->a.world != b->p.data_parallel_size
                    || b->a.size_local != b->p.size_local
                    || (uint64_t) b->a.start_rank + b->a.size_local
                       > b->a.world)
                {
                    return kimi_err_set(err, KIMI_ESTATE, "the head node"
                                        " assigned ranks %u..%u of %u, which"
                                        " do not match this node's flags",
                                        b->a.start_rank, b->a.start_rank
                                        + b->a.size_local - 1, b->a.world);
                }

                b->n_peers = 1;
                b->last_ping_ms = kimi_boot_now_ms();
                return 0;

            case KIMI_BOOT_REFUSE:
                kimi_boot_text(&f, text, sizeof(text));
                return kimi_err_set(err, KIMI_EINVAL, "the head node %s:%u"
                                    " refused this node: %s", b->p.address,
                                    b->p.rpc_port, text);

            case KIMI_BOOT_ABORT:
                kimi_boot_text(&f, text, sizeof(text));
                return kimi_err_set(err, KIMI_ESTATE, "the head node ended"
                                    " the group: %s", text);

            default:
                kimi_boot_consume(head, &f);
                break;
            }
        }

        if (rc < 0) {
            return kimi_err_wrap(err, "before the group formed");
        }

        if (kimi_boot_now_ms() >= deadline) {
            return kimi_err_set(err, KIMI_ESTATE, "joined the head node"
                                " %s:%u but the group did not form within"
                                " %u ms (are all nodes started?)",
                                b->p.address, b->p.rpc_port,
                                b->p.join_timeout_ms);
        }

        pfd[0].fd = head->fd;
        pfd[0].events = POLLIN;
        pfd[1].fd = b->p.cancel_fd;
        pfd[1].events = POLLIN;
        rc = kimi_boot_poll(pfd, 2, deadline);
        if (rc > 0 && pfd[1].revents) {
            return kimi_boot_cancelled(err);
        }
    }
}


int
kimi_boot_init(kimi_boot_t **out, const kimi_boot_params_t *p,
    const uint8_t *blob, size_t blob_len, kimi_boot_assign_t *a,
    kimi_err_t *err)
{
    int           rc;
    uint32_t      i;
    uint64_t      deadline;
    kimi_boot_t  *b;

    *out = NULL;

    if (p->address == NULL || p->address[0] == '\0' || p->rpc_port == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "the bootstrap needs"
                            " --data-parallel-address and"
                            " --data-parallel-rpc-port");
    }

    if (p->size_local == 0 || p->size_local > p->data_parallel_size) {
        return kimi_err_set(err, KIMI_EINVAL, "--data-parallel-size-local %u"
                            " is not in 1..%u (--data-parallel-size)",
                            p->size_local, p->data_parallel_size);
    }

    if (blob_len > KIMI_BOOT_BLOB_MAX) {
        return kimi_err_set(err, KIMI_EINVAL, "bootstrap blob of %zu bytes"
                            " (at most %d)", blob_len, KIMI_BOOT_BLOB_MAX);
    }

    b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "bootstrap: out of memory");
    }

    b->p = *p;
    b->is_head = !p->headless;
    b->lfd = -1;
    for (i = 0; i < KIMI_BOOT_MAX_NODES + 2; i++) {
        b->peers[i].fd = -1;
    }

    deadline = kimi_boot_now_ms() + p->join_timeout_ms;

    if (b->is_head) {
        b->a.world = p->data_parallel_size;
        b->a.start_rank = p->start_rank < 0 ? 0 : (uint32_t) p->start_rank;
        b->a.size_local = p->size_local;
        b->a.blob_len = (uint32_t) blob_len;
        if (blob_len > 0) {
            memcpy(b->a.blob, blob, blob_len);
        }

        if ((uint64_t) b->a.start_rank + p->size_local
            > p->data_parallel_size)
        {
            rc = kimi_err_set(err, KIMI_EINVAL, "the head's ranks %u..%u do"
                              " not fit --data-parallel-size %u",
                              b->a.start_rank,
                              b->a.start_rank + p->size_local - 1,
                              p->data_parallel_size);
            goto failed;
        }

        if (p->mesh_ports != NULL
            && p->data_parallel_size > KIMI_BOOT_MESH_MAX)
        {
            rc = kimi_err_set(err, KIMI_EINVAL, "an expert-parallel mesh of"
                              " %u ranks (at most %d)",
                              p->data_parallel_size, KIMI_BOOT_MESH_MAX);
            goto failed;
        }

        if (p->mesh_ports != NULL
            && getrandom(&b->a.mesh_secret, sizeof(b->a.mesh_secret), 0)
               != (ssize_t) sizeof(b->a.mesh_secret))
        {
            rc = kimi_err_set(err, KIMI_EIO, "getrandom() failed: %s",
                              strerror(errno));
            goto failed;
        }

        rc = kimi_boot_listen(b, err);
        if (rc == 0) {
            rc = kimi_boot_head_form(b, deadline, err);
        }
        if (rc == 0) {
            rc = kimi_boot_head_assign(b, err);
        }

        /* the listener stays: a late joiner is told why it is refused */

    } else {
        rc = kimi_boot_node_form(b, deadline, err);
    }

    if (rc != 0) {
        goto failed;
    }

    *a = b->a;
    *out = b;

    return 0;

failed:

    kimi_boot_abort(b, err->msg);
    kimi_boot_free(b);
    return rc;
}


/* Head, group formed: whoever connects now is refused with the reason
 * (one short frame; a peer that does not read it just sees the close). */
static void
kimi_boot_refuse_late(kimi_boot_t *b)
{
    int                fd;
    char               msg[160];
    kimi_boot_peer_t  *pe = &b->peers[KIMI_BOOT_MAX_NODES];

    snprintf(msg, sizeof(msg), "the group is already complete: all %u"
             " ranks are held by %u nodes", b->a.world, b->a.n_nodes);

    while ((fd = accept4(b->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC))
           != -1)
    {
        memset(pe, 0, sizeof(*pe));
        pe->fd = fd;
        (void) kimi_boot_send_text(pe, KIMI_BOOT_REFUSE, msg);
        kimi_boot_close(pe);
    }
}


int
kimi_boot_watch(kimi_boot_t *b, int extra_fd, int timeout_ms,
    kimi_err_t *err)
{
    int                 rc, drain = 0;
    uint32_t            i, k, n = 0, idx[KIMI_BOOT_MAX_NODES];
    uint64_t            now, next;
    char                text[KIMI_BOOT_PAYLOAD_MAX + 1], name[160];
    char                drain_why[KIMI_BOOT_PAYLOAD_MAX + 1];
    kimi_boot_frame_t   f;
    kimi_boot_peer_t   *pe;
    struct pollfd       pfd[KIMI_BOOT_MAX_NODES + 2];

    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        if (b->peers[i].fd != -1) {
            idx[n] = i;
            pfd[n].fd = b->peers[i].fd;
            pfd[n++].events = POLLIN;
        }
    }

    if (n != b->n_peers) {
        return kimi_err_set(err, KIMI_ESTATE, "the data-parallel group is"
                            " over");
    }

    pfd[n].fd = extra_fd;
    pfd[n].events = POLLIN;
    pfd[n + 1].fd = b->lfd;
    pfd[n + 1].events = POLLIN;

    /* wake for the next ping even if the caller asked for longer */
    now = kimi_boot_now_ms();
    next = b->last_ping_ms + KIMI_BOOT_PING_MS;
    if (timeout_ms < 0 || now + (uint64_t) timeout_ms > next) {
        timeout_ms = next > now ? (int) (next - now) : 0;
    }

    rc = poll(pfd, n + 2, timeout_ms);
    if (rc < 0 && errno != EINTR) {
        return kimi_err_set(err, KIMI_EIO, "poll() failed: %s",
                            strerror(errno));
    }

    if (rc > 0 && (pfd[n + 1].revents & POLLIN)) {
        kimi_boot_refuse_late(b);
    }

    rc = 0;

    for (i = 0; i < n && rc == 0; i++) {
        if (pfd[i].revents == 0) {
            continue;
        }
        pe = &b->peers[idx[i]];

        while ((rc = kimi_boot_recv(b, pe, &f, err)) == 1) {
            if (f.type == KIMI_BOOT_ABORT) {
                kimi_boot_text(&f, text, sizeof(text));
                rc = kimi_err_set(err, KIMI_ESTATE, "%s ended the group: %s",
                                  kimi_boot_peer_name(b, pe, name,
                                                      sizeof(name)), text);
                kimi_boot_close(pe);
                break;
            }
            if (f.type == KIMI_BOOT_DRAIN && !b->draining) {
                kimi_boot_text(&f, drain_why, sizeof(drain_why));
                b->draining = 1;
                drain = 1;
                /* the head is the hub: the other nodes hear it from us */
                for (k = 0; b->is_head && k < KIMI_BOOT_MAX_NODES; k++) {
                    if (&b->peers[k] != pe && b->peers[k].fd != -1) {
                        (void) kimi_boot_send_text(&b->peers[k],
                                                   KIMI_BOOT_DRAIN,
                                                   drain_why);
                    }
                }
            }
            kimi_boot_consume(pe, &f);    /* PING or unknown: liveness */
        }

        if (rc < 0 && pe->fd != -1) {
            kimi_boot_close(pe);
        }
    }

    now = kimi_boot_now_ms();

    for (i = 0; i < n && rc == 0; i++) {
        pe = &b->peers[idx[i]];
        if (pe->fd != -1
            && now - pe->last_rx_ms > b->p.liveness_timeout_ms)
        {
            rc = kimi_err_set(err, KIMI_ESTATE, "no word from %s for %llu ms"
                              " (liveness timeout %u ms)",
                              kimi_boot_peer_name(b, pe, name, sizeof(name)),
                              (unsigned long long) (now - pe->last_rx_ms),
                              b->p.liveness_timeout_ms);
            kimi_boot_close(pe);
        }
    }

    if (rc < 0) {
        /* everyone else learns why from us, not from a timeout */
        kimi_boot_abort(b, err->msg);
        return rc;
    }

    if (now - b->last_ping_ms >= KIMI_BOOT_PING_MS) {
        b->last_ping_ms = now;
        for (i = 0; i < n; i++) {
            pe = &b->peers[idx[i]];
            if (kimi_boot_send(pe, KIMI_BOOT_PING, NULL, 0) != 0) {
                rc = kimi_err_set(err, KIMI_ESTATE, "sending to %s failed",
                                  kimi_boot_peer_name(b, pe, name,
                                                      sizeof(name)));
                kimi_boot_close(pe);
                kimi_boot_abort(b, err->msg);
                return rc;
            }
        }
    }

    if (drain) {
        kimi_err_set(err, 0, "%s", drain_why);
        return 2;
    }

    return (extra_fd >= 0 && (pfd[n].revents & POLLIN)) ? 1 : 0;
}


void
kimi_boot_drain(kimi_boot_t *b, const char *why)
{
    uint32_t  i;

    if (b == NULL || b->draining) {
        return;
    }

    b->draining = 1;
    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        if (b->peers[i].fd != -1) {
            (void) kimi_boot_send_text(&b->peers[i], KIMI_BOOT_DRAIN, why);
        }
    }
}


void
kimi_boot_abort(kimi_boot_t *b, const char *why)
{
    uint32_t  i;

    if (b == NULL) {
        return;
    }

    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        if (b->peers[i].fd != -1) {
            (void) kimi_boot_send_text(&b->peers[i], KIMI_BOOT_ABORT, why);
            kimi_boot_close(&b->peers[i]);
        }
    }

    b->n_peers = 0;
}


void
kimi_boot_free(kimi_boot_t *b)
{
    uint32_t  i;

    if (b == NULL) {
        return;
    }

    for (i = 0; i < KIMI_BOOT_MAX_NODES; i++) {
        kimi_boot_close(&b->peers[i]);
    }

    if (b->lfd != -1) {
        close(b->lfd);
    }

    free(b);
}
