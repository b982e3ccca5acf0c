/*
 * Unit tests for engine/parallel/bootstrap.c: rank-range placement (the
 * head's validation of --data-parallel-start-rank and -size-local) and a
 * head + headless pair forming a group over loopback TCP in one process
 * tree, including a refused join.  t/parallel-bootstrap.t covers the
 * same through kimi-engine with failures and timeouts.
 */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parallel/bootstrap.h"


#include "tap.h"


static void
test_place(void)
{
    int         rc;
    uint32_t    start = 99;
    uint32_t    ts[3] = { 0, 4 }, tl[3] = { 2, 2 };
    kimi_err_t  err;

    rc = kimi_boot_place(8, ts, tl, 2, -1, 2, &start, &err);
    ok(rc == 0 && start == 2, "head picks the lowest free range (2, got %u)",
       start);

    rc = kimi_boot_place(9, ts, tl, 2, -1, 3, &start, &err);
    ok(rc == 0 && start == 6, "a range of 3 skips the gap of 2 (start %u)",
       start);

    rc = kimi_boot_place(8, ts, tl, 2, -1, 3, &start, &err);
    ok(rc == KIMI_EINVAL, "with 8 ranks no 3 are consecutive and free");

    rc = kimi_boot_place(8, ts, tl, 2, 1, 2, &start, &err);
    ok(rc == KIMI_EINVAL && strstr(err.msg, "overlap ranks 0..1") != NULL,
       "an overlapping start rank is refused: %s", err.msg);

    rc = kimi_boot_place(8, ts, tl, 2, 7, 2, &start, &err);
    ok(rc == KIMI_EINVAL && strstr(err.msg, "do not fit") != NULL,
       "a range past the world is refused: %s", err.msg);

    rc = kimi_boot_place(8, ts, tl, 2, 2, 2, &start, &err);
    ok(rc == 0 && start == 2, "an explicit free start rank is taken");

    ts[2] = 2;
    tl[2] = 2;
    rc = kimi_boot_place(8, ts, tl, 3, -1, 3, &start, &err);
    ok(rc == KIMI_EINVAL && strstr(err.msg, "no 3 free") != NULL,
       "no room for 3 of 8 with 6 taken and 2 free: %s", err.msg);

    rc = kimi_boot_place(8, ts, tl, 3, -1, 2, &start, &err);
    ok(rc == 0 && start == 6, "the last 2 ranks fit (start %u)", start);

    rc = kimi_boot_place(4, NULL, NULL, 0, -1, 0, &start, &err);
    ok(rc == KIMI_EINVAL, "a node of 0 ranks is refused");
}


static uint16_t
free_port(void)
{
    int                 fd;
    socklen_t           len;
    struct sockaddr_in  sa;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof(sa);
    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0
        || getsockname(fd, (struct sockaddr *) &sa, &len) != 0)
    {
        close(fd);
        return 0;
    }
    close(fd);

    return ntohs(sa.sin_port);
}


/* Child: a headless node; exit code 0 if assigned [want, want+len) with the
 * head's blob, 10 + (refused) otherwise. */
static int
node(uint16_t port, uint32_t world, uint32_t len, int32_t start,
    uint32_t want)
{
    int                  rc;
    kimi_boot_t         *b;
    kimi_err_t           err;
    kimi_boot_params_t   p;
    kimi_boot_assign_t   a;

    memset(&p, 0, sizeof(p));
    p.data_parallel_size = world;
    p.size_local = len;
    p.start_rank = start;
    p.address = "127.0.0.1";
    p.rpc_port = port;
    p.headless = 1;
    p.join_timeout_ms = 5000;
    p.liveness_timeout_ms = 2000;
    p.cancel_fd = -1;

    rc = kimi_boot_init(&b, &p, NULL, 0, &a, &err);
    if (rc != 0) {
        return strstr(err.msg, "refused") ? 10 : 11;
    }

    rc = a.start_rank == want && a.blob_len == 4
         && memcmp(a.blob, "blob", 4) == 0 ? 0 : 12;

    /* stay until the head is done with us: its EOF ends the group */
    while (kimi_boot_watch(b, -1, 100, &err) >= 0) {
    }

    kimi_boot_free(b);
    return rc;
}


static void
test_group(void)
{
    int                  rc, st1, st2, st3;
    pid_t                c1, c2, c3;
    uint16_t             port = free_port();
    kimi_boot_t         *b;
    kimi_err_t           err;
    kimi_boot_params_t   p;
    kimi_boot_assign_t   a;

    /* ranks 0..1 head, 2..3 node c1 (picked), 4 node c2 (asked for);
     * c3 comes late, asking for rank 2, and must be refused */
    c1 = fork();
    if (c1 == 0) {
        _exit(node(port, 5, 2, -1, 2));
    }
    c2 = fork();
    if (c2 == 0) {
        usleep(300000);         /* after c1, so c1 is placed first */
        _exit(node(port, 5, 1, 4, 4));
    }
    c3 = fork();
    if (c3 == 0) {
        usleep(1000000);        /* the group is complete by then */
        _exit(node(port, 5, 1, 2, 0));
    }

    memset(&p, 0, sizeof(p));
    p.data_parallel_size = 5;
    p.size_local = 2;
    p.start_rank = -1;
    p.address = "127.0.0.1";
    p.rpc_port = port;
    p.join_timeout_ms = 5000;
    p.liveness_timeout_ms = 2000;
    p.cancel_fd = -1;

    rc = kimi_boot_init(&b, &p, (const uint8_t *) "blob", 4, &a, &err);
    ok(rc == 0, "head forms a group of 5 ranks (%s)", rc ? err.msg : "ok");
    ok(rc == 0 && a.n_nodes == 3 && a.start_rank == 0 && a.node_index == 0,
       "head: 3 nodes, ranks 0..1");

    kimi_boot_free(b);          /* the nodes see EOF and return */

    waitpid(c1, &st1, 0);
    waitpid(c2, &st2, 0);
    waitpid(c3, &st3, 0);

    ok(WIFEXITED(st1) && WEXITSTATUS(st1) == 0,
       "node without a start rank got ranks 2..3 and the blob (%d)",
       WEXITSTATUS(st1));
    ok(WIFEXITED(st2) && WEXITSTATUS(st2) == 0,
       "node with start rank 4 got it (%d)", WEXITSTATUS(st2));
    ok(WIFEXITED(st3) && WEXITSTATUS(st3) == 10,
       "node asking for a taken rank is refused (%d)", WEXITSTATUS(st3));
}


/* Child: a headless node of an expert-parallel mesh; writes its secret to
 * fd and exits 0 if every rank's address is the one the head must have
 * sent (ports 1000 + rank, host 127.0.0.1), 10 if refused. */
static int
mesh_node(uint16_t port, const uint16_t *ports, int fd)
{
    int                  rc = 0;
    kimi_boot_t         *b;
    kimi_err_t           err;
    kimi_boot_params_t   p;
    kimi_boot_assign_t   a;

    memset(&p, 0, sizeof(p));
    p.data_parallel_size = 3;
    p.size_local = 2;
    p.start_rank = -1;
    p.address = "127.0.0.1";
    p.rpc_port = port;
    p.headless = 1;
    p.join_timeout_ms = 5000;
    p.liveness_timeout_ms = 2000;
    p.cancel_fd = -1;
    p.mesh_ports = ports;

    if (kimi_boot_init(&b, &p, NULL, 0, &a, &err) != 0) {
        return strstr(err.msg, "refused") && strstr(err.msg,
                                                    "expert-parallel")
               ? 10 : 11;
    }

    if (a.mesh_n != 3 || a.start_rank != 1) {
        rc = 12;
    }
    for (uint32_t r = 0; r < a.mesh_n && rc == 0; r++) {
        if (a.mesh[r].port != 1000 + r
            || strcmp(a.mesh[r].host, "127.0.0.1") != 0)
        {
            rc = 13;
        }
    }
    if (write(fd, &a.mesh_secret, sizeof(a.mesh_secret)) != 8) {
        rc = 14;
    }

    while (kimi_boot_watch(b, -1, 100, &err) >= 0) {
    }

    kimi_boot_free(b);
    return rc;
}


static void
test_mesh(void)
{
    int                  rc, st, pfd[2];
    pid_t                c;
    uint16_t             port = free_port();
    uint16_t             head_ports[1] = { 1000 }, node_ports[2] = { 1001,
                                                                     1002 };
    uint64_t             secret = 0;
    kimi_boot_t         *b;
    kimi_err_t           err;
    kimi_boot_params_t   p;
    kimi_boot_assign_t   a;

    if (pipe(pfd) != 0) {
        return;
    }

    c = fork();
    if (c == 0) {
        _exit(mesh_node(port, node_ports, pfd[1]));
    }

    memset(&p, 0, sizeof(p));
    p.data_parallel_size = 3;
    p.size_local = 1;
    p.start_rank = -1;
    p.address = "127.0.0.1";
    p.rpc_port = port;
    p.join_timeout_ms = 5000;
    p.liveness_timeout_ms = 2000;
    p.cancel_fd = -1;
    p.mesh_ports = head_ports;

    rc = kimi_boot_init(&b, &p, NULL, 0, &a, &err);
    ok(rc == 0 && a.mesh_n == 3 && a.mesh[0].port == 1000
       && a.mesh[2].port == 1002 && strcmp(a.mesh[1].host, "127.0.0.1") == 0,
       "mesh: the head's table has every rank's port and host (%s)",
       rc ? err.msg : "ok");
    if (rc == 0) {
        kimi_boot_free(b);
    }
    waitpid(c, &st, 0);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0,
       "mesh: the node got the same table (%d)", WEXITSTATUS(st));
    ok(read(pfd[0], &secret, 8) == 8 && secret == a.mesh_secret
       && secret != 0, "mesh: both hold the same non-zero secret");
    close(pfd[0]);
    close(pfd[1]);

    /* a node that does not run expert parallel cannot join such a head */
    port = free_port();
    p.rpc_port = port;
    p.join_timeout_ms = 1500;
    c = fork();
    if (c == 0) {
        _exit(node(port, 3, 2, -1, 1));
    }
    rc = kimi_boot_init(&b, &p, NULL, 0, &a, &err);
    ok(rc != 0, "mesh: the head does not form a group with that node");
    waitpid(c, &st, 0);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 10,
       "mesh: the node without --enable-expert-parallel is refused (%d)",
       WEXITSTATUS(st));
}


int
main(void)
{
    test_place();
    test_group();
    test_mesh();

    printf("1..%d\n", test_n);

    return test_failed ? 1 : 0;
}
