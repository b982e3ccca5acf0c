/*
 * Unit tests for engine/parallel/group.c, the node-local process group of
 * expert parallelism on the cpu backend: real forked processes over one
 * shared anonymous mapping, as the launcher makes it.
 *
 *   - 300 rounds of exchanges with random sizes and contents, all three
 *     ranks checking every byte they receive, interleaved with votes;
 *   - all-reduces equal the rank-order sum, bit for bit on every rank;
 *   - ranks out of step (one votes, the other exchanges) fail the group;
 *   - a rank that dies, reported by the parent as the launcher does,
 *     releases the others' barrier with its message, no hang;
 *   - a message larger than a segment fails the group;
 *   - the watchdog ends a member whose own thread is stuck once the
 *     group has been failed for its grace;
 *   - groups linked inside a group (tensor x pipeline parallelism): sums
 *     in a stage, hops in a column and votes of all agree, and a failure
 *     of either kind reaches the members waiting in the other;
 *   - the step channel (parallel/step.c): a leader's batches reach two
 *     followers field for field, a step too big for the segment fails the
 *     group with why, the stop message ends the followers.
 *
 * The same checks run again over the TCP mesh of a group that spans
 * nodes (group_net.c, on 127.0.0.1), plus: messages far larger than a
 * socket buffer both ways at once (no deadlock), a stranger on a rank's
 * port (bad hello) is dropped while the mesh forms, a killed rank fails
 * its peers through the closed connection, and the node's failure flag
 * (the launcher's) ends a mesh wait with its message.
 *
 * Each child exits 0 when every check of its own passed; alarm() turns a
 * hang into a failure.
 */

#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "parallel/group.h"
#include "parallel/step.h"

#include "tap.h"

#define SEG      4096
#define BIG_SEG  (6u << 20)        /* far over a loopback socket buffer */

typedef int (*rank_fn)(kimi_group_t *g, void *mem);

static int     use_net;            /* 1: the ranks sync over a TCP mesh */
static int     silent_stranger;    /* also one that connects, says nothing */
static size_t  seg_bytes = SEG;


static int
cmp_u64(const void *a, const void *b)
{
    uint64_t  x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


static uint32_t
mix(uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
    uint32_t  h = a * 0x9e3779b1u ^ b * 0x85ebca77u ^ c * 0xc2b2ae3du
                  ^ d * 0x27d4eb2fu;

    h ^= h >> 15;
    h *= 0x2c1b3c6du;
    h ^= h >> 12;
    return h;
}


/* A connection to port that says something other than a mesh hello
 * (quiet: nothing at all). */
static int
stranger(uint16_t port, int quiet)
{
    int                 fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in  a;
    char                junk[24];

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(junk, 'x', sizeof(junk));

    if (fd == -1 || connect(fd, (struct sockaddr *) &a, sizeof(a)) != 0
        || (!quiet && write(fd, junk, sizeof(junk)) != (ssize_t) sizeof(junk)))
    {
        return -1;
    }

    return fd;
}


/* Forks world ranks running fn; returns how many exited 0.  kill_rank:
 * the rank whose death the parent reports with why, -2: the parent fails
 * the group with why while the ranks run, -1: neither. */
static int
run_group(uint32_t world, rank_fn fn, int kill_rank, const char *why)
{
    size_t              bytes = kimi_group_bytes(world, seg_bytes);
    void               *mem;
    pid_t               pid[8];
    int                 good = 0, status, lfd[8], odd = -1, quiet = -1;
    kimi_boot_addr_t    addrs[8];
    kimi_err_t          err;

    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
               -1, 0);
    if (mem == MAP_FAILED) {
        return -1;
    }

    kimi_group_init(mem, world, seg_bytes);

    for (uint32_t r = 0; use_net && r < world; r++) {
        addrs[r].port = 0;
        lfd[r] = kimi_group_listen(&addrs[r].port, &err);
        if (lfd[r] < 0) {
            fprintf(stderr, "# listen: %s\n", err.msg);
            return -1;
        }
        snprintf(addrs[r].host, sizeof(addrs[r].host), "127.0.0.1");
    }
    if (use_net && silent_stranger) {
        quiet = stranger(addrs[0].port, 1);   /* first in rank 0's backlog */
    }
    if (use_net) {
        odd = stranger(addrs[0].port, 0);
    }

    for (uint32_t r = 0; r < world; r++) {
        pid[r] = fork();
        if (pid[r] == 0) {
            kimi_group_t       *g;
            kimi_group_mesh_t   m = {
                .rank = r, .world = world, .seg_bytes = seg_bytes,
                .secret = 0x5eed5eed12345678ull, .addrs = addrs,
                .timeout_ms = 10000
            };

            alarm(20);
            if (use_net) {
                for (uint32_t q = 0; q < world; q++) {
                    if (q != r) {
                        close(lfd[q]);
                    }
                }
                m.listen_fd = lfd[r];
                if (kimi_group_connect(&g, mem, r, &m, &err) != 0
                    || kimi_group_form(g, &err) != 0)
                {
                    fprintf(stderr, "mesh: %s\n", err.msg);
                    _exit(3);
                }

            } else if (kimi_group_attach(&g, mem, r, &err) != 0) {
                fprintf(stderr, "attach: %s\n", err.msg);
                _exit(3);
            }
            _exit(fn(g, mem));
        }
    }

    for (uint32_t r = 0; use_net && r < world; r++) {
        close(lfd[r]);
    }

    if (kill_rank == -2) {
        /* the launcher's part when it loses another node */
        usleep(300000);
        kimi_group_fail(mem, why);
    }

    if (kill_rank >= 0) {
        /* the launcher's part: reap the dead rank, fail the group */
        (void) waitpid(pid[kill_rank], &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            good++;
        }
        kimi_group_fail(mem, why);
    }

    for (uint32_t r = 0; r < world; r++) {
        if ((int) r == kill_rank) {
            continue;
        }
        (void) waitpid(pid[r], &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            good++;
        } else {
            fprintf(stderr, "# rank %u: status 0x%x\n", r, status);
        }
    }

    if (odd != -1) {
        close(odd);
    }
    if (quiet != -1) {
        close(quiet);
    }
    munmap(mem, bytes);
    return good;
}


static int
rank_rounds(kimi_group_t *g, void *mem)
{
    uint32_t    me = kimi_group_rank(g), W = kimi_group_world(g);
    size_t      bytes[KIMI_GROUP_MAX_RANKS], got;
    kimi_err_t  err;
    int         any, all;

    for (uint32_t round = 0; round < 300; round++) {
        for (uint32_t p = 0; p < W; p++) {
            uint32_t  *out = kimi_group_sendbuf(g, p);
            uint32_t   n = mix(round, me, p, 0) % (SEG / 4 + 1);

            for (uint32_t i = 0; i < n; i++) {
                out[i] = mix(round, me, p, i + 1);
            }
            bytes[p] = (size_t) n * 4;
        }

        if (kimi_group_exchange(g, 0x200 + round, bytes, &err) != 0) {
            fprintf(stderr, "exchange: %s\n", err.msg);
            return 1;
        }

        for (uint32_t p = 0; p < W; p++) {
            const uint32_t  *in = kimi_group_recvbuf(g, p, &got);
            uint32_t         n = mix(round, p, me, 0) % (SEG / 4 + 1);

            if (got != (size_t) n * 4) {
                fprintf(stderr, "round %u: %zu bytes from %u, want %u\n",
                        round, got, p, n * 4);
                return 1;
            }
            for (uint32_t i = 0; i < n; i++) {
                if (in[i] != mix(round, p, me, i + 1)) {
                    fprintf(stderr, "round %u: word %u from %u differs\n",
                            round, i, p);
                    return 1;
                }
            }
        }

        if (round % 3 == 0) {
            if (kimi_group_vote(g, 1, round % 5 == me, round % 7 != me,
                                &any, &all, &err) != 0)
            {
                fprintf(stderr, "vote: %s\n", err.msg);
                return 1;
            }
            if (any != (round % 5 < W) || all != (round % 7 >= W)) {
                fprintf(stderr, "round %u: vote any=%d all=%d\n", round, any,
                        all);
                return 1;
            }
        }
    }

    return kimi_group_failed(g) ? 1 : 0;
}


/* all-reduce: every rank ends with the same bits, the sum in rank order */
static int
rank_allreduce(kimi_group_t *g, void *mem)
{
    uint32_t    me = kimi_group_rank(g), W = kimi_group_world(g);
    float       x[700], want[700];
    kimi_err_t  err;

    for (uint32_t round = 0; round < 50; round++) {
        for (uint32_t i = 0; i < 700; i++) {
            x[i] = (float) (int32_t) mix(round, me, i, 9) / 1e6f;
        }

        if (kimi_group_allreduce_f32(g, 0x300 + round, x, 700, &err) != 0) {
            fprintf(stderr, "allreduce: %s\n", err.msg);
            return 1;
        }

        for (uint32_t i = 0; i < 700; i++) {
            want[i] = 0.0f;
            for (uint32_t r = 0; r < W; r++) {
                float  v = (float) (int32_t) mix(round, r, i, 9) / 1e6f;

                want[i] = r == 0 ? v : want[i] + v;
            }
            if (memcmp(&want[i], &x[i], sizeof(float)) != 0) {
                fprintf(stderr, "round %u: element %u is %g, want %g\n",
                        round, i, x[i], want[i]);
                return 1;
            }
        }
    }

    return 0;
}


static int
rank_out_of_step(kimi_group_t *g, void *mem)
{
    size_t      bytes[KIMI_GROUP_MAX_RANKS] = { 0 };
    kimi_err_t  err;
    int         any, all, rc;

    if (kimi_group_rank(g) == 0) {
        rc = kimi_group_vote(g, 1, 1, 0, &any, &all, &err);
    } else {
        rc = kimi_group_exchange(g, 2, bytes, &err);
    }

    return rc != 0 && strstr(err.msg, "out of step") != NULL ? 0 : 1;
}


static int
rank_one_dies(kimi_group_t *g, void *mem)
{
    kimi_err_t  err;
    int         any, all;

    if (kimi_group_rank(g) == 2) {
        return 0;                           /* gone before the barrier */
    }

    if (kimi_group_vote(g, 1, 1, 0, &any, &all, &err) == 0) {
        return 1;
    }

    /* over the mesh the closed connection may tell first */
    return strstr(err.msg, "rank 2 pid 42 died") != NULL
           || (use_net && strstr(err.msg, "connection to rank 2") != NULL)
           ? 0 : 1;
}


/* Megabytes each way between every two ranks at once, checked. */
static int
rank_big(kimi_group_t *g, void *mem)
{
    uint32_t    me = kimi_group_rank(g), W = kimi_group_world(g);
    size_t      bytes[KIMI_GROUP_MAX_RANKS], got;
    kimi_err_t  err;

    for (uint32_t round = 0; round < 4; round++) {
        for (uint32_t p = 0; p < W; p++) {
            uint32_t  *out = kimi_group_sendbuf(g, p);
            uint32_t   n = (uint32_t) (BIG_SEG / 4) - mix(round, me, p, 0)
                                                      % 1000;

            for (uint32_t i = 0; i < n; i++) {
                out[i] = mix(round, me, p, i) ^ i;
            }
            bytes[p] = (size_t) n * 4;
        }

        if (kimi_group_exchange(g, 0x400 + round, bytes, &err) != 0) {
            fprintf(stderr, "exchange: %s\n", err.msg);
            return 1;
        }

        for (uint32_t p = 0; p < W; p++) {
            const uint32_t  *in = kimi_group_recvbuf(g, p, &got);
            uint32_t         n = (uint32_t) (BIG_SEG / 4)
                                 - mix(round, p, me, 0) % 1000;

            if (got != (size_t) n * 4) {
                return 1;
            }
            for (uint32_t i = 0; i < n; i += 997) {
                if (in[i] != (mix(round, p, me, i) ^ i)) {
                    return 1;
                }
            }
        }
    }

    return 0;
}


static uint64_t
now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}


/* What a sync costs: rank 0 prints the median of 1000 votes and of 20
 * exchanges of 1 MB to every peer (the cpu backend's MoE rows of 36
 * tokens at K2's width). */
static int
rank_timing(kimi_group_t *g, void *mem)
{
    uint32_t    W = kimi_group_world(g);
    size_t      bytes[KIMI_GROUP_MAX_RANKS];
    uint64_t    t[1000], t0;
    kimi_err_t  err;
    int         any, all;

    for (uint32_t i = 0; i < 1000; i++) {
        t0 = now_ns();
        if (kimi_group_vote(g, 5, 1, 1, &any, &all, &err) != 0) {
            return 1;
        }
        t[i] = now_ns() - t0;
    }
    qsort(t, 1000, sizeof(t[0]), cmp_u64);
    if (kimi_group_rank(g) == 0) {
        printf("# %s, %u ranks: vote %.1f us (median of 1000)", use_net
               ? "mesh (loopback TCP)" : "shared memory", W, t[500] / 1e3);
    }

    for (uint32_t i = 0; i < 20; i++) {
        for (uint32_t p = 0; p < W; p++) {
            bytes[p] = 1u << 20;
            memset(kimi_group_sendbuf(g, p), (int) (i + p), bytes[p]);
        }
        t0 = now_ns();
        if (kimi_group_exchange(g, 6, bytes, &err) != 0) {
            return 1;
        }
        t[i] = now_ns() - t0;
    }
    qsort(t, 20, sizeof(t[0]), cmp_u64);
    if (kimi_group_rank(g) == 0) {
        printf(", exchange of 1 MB per peer %.2f ms (median of 20)\n",
               t[10] / 1e6);
        fflush(stdout);
    }

    return 0;
}


/* The launcher fails the node while ranks 0 and 1 wait for rank 2. */
static int
rank_node_fails(kimi_group_t *g, void *mem)
{
    kimi_err_t  err;
    int         any, all;

    if (kimi_group_rank(g) == 2) {
        sleep(1);
    }

    if (kimi_group_vote(g, 1, 1, 0, &any, &all, &err) == 0) {
        return 1;
    }

    return strstr(err.msg, "node 7 went away") != NULL ? 0 : 1;
}


static int
rank_oversized(kimi_group_t *g, void *mem)
{
    size_t      bytes[KIMI_GROUP_MAX_RANKS] = { 0 };
    kimi_err_t  err;

    if (kimi_group_rank(g) == 1) {
        bytes[0] = SEG + 1;
    }

    return kimi_group_exchange(g, 2, bytes, &err) != 0
           && strstr(err.msg, "more than") != NULL ? 0 : 1;
}


/* the leader's step k: k + 1 sequences of k + 2 tokens */
static void
make_step(uint32_t k, kimi_batch_seq_t *seqs, int32_t *toks, uint32_t *bt)
{
    for (uint32_t i = 0; i <= k; i++) {
        memset(&seqs[i], 0, sizeof(seqs[i]));
        seqs[i].seq_id = ((uint64_t) k << 40) | (i * 7 + 1);
        seqs[i].tokens = toks + i * 16;
        seqs[i].n_tokens = k + 2;
        seqs[i].pos = 100 * k + i;
        seqs[i].block_table = bt + i * 4;
        seqs[i].n_blocks = 1 + (k + i) % 4;
        seqs[i].want_logits = (uint8_t) ((k + i) & 1);

        for (uint32_t t = 0; t < 16; t++) {
            toks[i * 16 + t] = (int32_t) mix(k, i, t, 1);
        }
        for (uint32_t b = 0; b < 4; b++) {
            bt[i * 4 + b] = mix(k, i, b, 2) % 1000;
        }
    }
}


static int
rank_step_channel(kimi_group_t *g, void *mem)
{
    kimi_batch_seq_t   want[8];
    int32_t            toks[8 * 16];
    uint32_t           bt[8 * 4];
    kimi_batch_t       batch;
    kimi_step_buf_t    buf = { NULL, 0 };
    kimi_err_t         err;
    int                stop, bad = 0;

    (void) mem;

    for (uint32_t k = 0; k < 6; k++) {
        make_step(k, want, toks, bt);
        batch.n_seqs = k + 1;
        batch.seqs = want;

        if (kimi_group_rank(g) == 0) {
            if (kimi_step_send(g, 9, KIMI_STEP_RUN, &batch, &err) != 0) {
                return 1;
            }
            continue;
        }

        if (kimi_step_recv(g, 9, &buf, &batch, &stop, &err) != 0 || stop
            || batch.n_seqs != k + 1)
        {
            return 1;
        }

        for (uint32_t i = 0; i <= k; i++) {
            const kimi_batch_seq_t  *s = &batch.seqs[i];

            bad += s->seq_id != want[i].seq_id
                   || s->n_tokens != want[i].n_tokens
                   || s->pos != want[i].pos
                   || s->n_blocks != want[i].n_blocks
                   || s->want_logits != want[i].want_logits
                   || memcmp(s->tokens, want[i].tokens,
                             s->n_tokens * sizeof(int32_t)) != 0
                   || memcmp(s->block_table, want[i].block_table,
                             s->n_blocks * sizeof(uint32_t)) != 0;
        }
    }

    /* the stop message */
    if (kimi_group_rank(g) == 0) {
        if (kimi_step_send(g, 9, KIMI_STEP_STOP, NULL, &err) != 0) {
            return 1;
        }

    } else if (kimi_step_recv(g, 9, &buf, &batch, &stop, &err) != 0
               || !stop)
    {
        return 1;
    }

    kimi_step_buf_free(&buf);
    return bad != 0;
}


/* a step bigger than the segment: the group fails with why */
static int
rank_step_too_big(kimi_group_t *g, void *mem)
{
    static int32_t     toks[SEG];
    kimi_batch_seq_t   s;
    kimi_batch_t       batch = { 1, &s };
    kimi_step_buf_t    buf = { NULL, 0 };
    uint32_t           bt[1] = { 0 };
    kimi_err_t         err;
    int                stop;

    (void) mem;
    memset(&s, 0, sizeof(s));
    s.tokens = toks;
    s.n_tokens = SEG;                 /* 4 SEG bytes of tokens */
    s.block_table = bt;
    s.n_blocks = 1;

    if (kimi_group_rank(g) == 0) {
        return kimi_step_send(g, 9, KIMI_STEP_RUN, &batch, &err) != 0
               && strstr(err.msg, "more than") != NULL ? 0 : 1;
    }

    return kimi_step_recv(g, 9, &buf, &batch, &stop, &err) != 0
           && strstr(err.msg, "more than") != NULL ? 0 : 1;
}


/*
 * Groups inside a group (tensor x pipeline parallelism): 4 members of one
 * "all" group, two stage groups {0, 1} {2, 3} and two column groups
 * {0, 2} {1, 3}, the sub-groups linked to all.  mode 0: 40 rounds of a
 * stage all-reduce, a column exchange and a vote of all, every value
 * checked; mode 1: member 3 is gone and the launcher fails all: the
 * members waiting in a stage or column sync end with its message; mode 2:
 * member 3 aborts its stage group: the members waiting in a vote of all
 * end with member 3's message.
 */
static int
linked_member(void *all_mem, void **stage_mem, void **column_mem, uint32_t k,
    int mode)
{
    kimi_group_t  *all, *stage, *column;
    uint32_t       s = k / 2, t = k % 2;
    size_t         bytes[KIMI_GROUP_MAX_RANKS], got;
    kimi_err_t     err;
    int            any, every;

    if (kimi_group_attach(&all, all_mem, k, &err) != 0
        || kimi_group_attach(&stage, stage_mem[s], t, &err) != 0
        || kimi_group_attach(&column, column_mem[t], s, &err) != 0)
    {
        return 3;
    }

    kimi_group_link(stage, all);
    kimi_group_link(column, all);

    if (mode == 1) {
        if (k == 3) {
            return 0;                       /* gone before its syncs */
        }

        /* 2 waits for 3 in their stage, 1 in their column, 0 in a vote
         * of all */
        float  x[4] = { 1, 2, 3, 4 };

        if (k == 1) {
            bytes[0] = bytes[1] = 0;
            return kimi_group_exchange(column, 7, bytes, &err) != 0
                   && strstr(err.msg, "member 3 died") != NULL ? 0 : 1;
        }

        if (k == 0) {
            return kimi_group_vote(all, 9, 1, 1, &any, &every, &err) != 0
                   && strstr(err.msg, "member 3 died") != NULL ? 0 : 1;
        }

        return kimi_group_allreduce_f32(stage, 5, x, 4, &err) != 0
               && strstr(err.msg, "member 3 died") != NULL ? 0 : 1;
    }

    if (mode == 2) {
        if (k == 3) {
            usleep(200000);
            kimi_group_abort(stage, "member 3 could not go on");
            return 0;
        }

        return kimi_group_vote(all, 9, 1, 1, &any, &every, &err) != 0
               && strstr(err.msg, "member 3 could not go on") != NULL
               ? 0 : 1;
    }

    for (uint32_t round = 0; round < 40; round++) {
        float  x[64];

        for (uint32_t i = 0; i < 64; i++) {
            x[i] = (float) (mix(round, k, i, 1) % 1000);
        }

        if (kimi_group_allreduce_f32(stage, 0x100 + round, x, 64, &err)
            != 0)
        {
            return 1;
        }

        for (uint32_t i = 0; i < 64; i++) {
            float  want = (float) (mix(round, 2 * s, i, 1) % 1000)
                          + (float) (mix(round, 2 * s + 1, i, 1) % 1000);

            if (x[i] != want) {
                return 1;
            }
        }

        /* the stage's rows on to the other stage, rank by rank */
        *(uint32_t *) kimi_group_sendbuf(column, 1 - s) = mix(round, k, 2, 0);
        bytes[0] = bytes[1] = 0;
        bytes[1 - s] = 4;
        if (kimi_group_exchange(column, 0x200 + round, bytes, &err) != 0) {
            return 1;
        }

        const uint32_t  *in = kimi_group_recvbuf(column, 1 - s, &got);

        if (got != 4 || *in != mix(round, 2 * (1 - s) + t, 2, 0)) {
            return 1;
        }

        if (kimi_group_vote(all, 0x300 + round, k == round % 4, 1, &any,
                            &every, &err) != 0
            || any != 1 || every != 1)
        {
            return 1;
        }
    }

    kimi_group_free(stage);
    kimi_group_free(column);
    kimi_group_free(all);
    return 0;
}


static int
run_linked(int mode)
{
    void   *all, *stage[2], *column[2];
    pid_t   pid[4];
    int     good = 0, status;

    all = mmap(NULL, kimi_group_bytes(4, SEG), PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    kimi_group_init(all, 4, SEG);
    for (int i = 0; i < 2; i++) {
        stage[i] = mmap(NULL, kimi_group_bytes(2, SEG), PROT_READ
                        | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        column[i] = mmap(NULL, kimi_group_bytes(2, SEG), PROT_READ
                         | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        kimi_group_init(stage[i], 2, SEG);
        kimi_group_init(column[i], 2, SEG);
    }

    for (uint32_t k = 0; k < 4; k++) {
        pid[k] = fork();
        if (pid[k] == 0) {
            alarm(20);
            _exit(linked_member(all, stage, column, k, mode));
        }
    }

    if (mode == 1) {
        /* the launcher's part: reap the dead member, fail the group */
        (void) waitpid(pid[3], &status, 0);
        good += WIFEXITED(status) && WEXITSTATUS(status) == 0;
        kimi_group_fail(all, "member 3 died");
    }

    for (uint32_t k = 0; k < 4; k++) {
        if (mode == 1 && k == 3) {
            continue;
        }
        (void) waitpid(pid[k], &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            good++;
        } else {
            fprintf(stderr, "# member %u: status 0x%x\n", k, status);
        }
    }

    return good;
}


/* The watchdog's end: tells the test why through the pipe, then exits 7. */
static int  dog_fd = -1;

static void
dog_expire(const char *why)
{
    (void) !write(dog_fd, why, strlen(why));
    _exit(7);
}


/*
 * A member whose main thread is stuck (pause(), as a thread blocked in a
 * device call): its watchdog must end it grace_ms after the group failed.
 * mode 0: the watched process (rank 1) exits, which fails the group;
 * mode 1: the launcher fails the group and the member watches nobody.
 * Returns 1 when the member exited 7 in time with the expected message.
 */
static int
run_watchdog(int mode)
{
    void           *mem;
    int             fds[2], status, rc = 0;
    pid_t           dying, stuck;
    char            msg[600];
    ssize_t         n;
    struct timespec t0, t1;
    kimi_err_t      err;

    mem = mmap(NULL, kimi_group_bytes(2, SEG), PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || pipe(fds) != 0) {
        return 0;
    }
    kimi_group_init(mem, 2, SEG);

    dying = fork();
    if (dying == 0) {
        usleep(mode == 0 ? 300000 : 5000000);
        _exit(0);
    }

    clock_gettime(CLOCK_MONOTONIC, &t0);
    stuck = fork();
    if (stuck == 0) {
        int       pid = (int) dying;
        uint32_t  rank = 1;

        alarm(20);
        close(fds[0]);
        dog_fd = fds[1];
        if (kimi_group_watchdog(mem, 0, mode == 0 ? &pid : NULL,
                                mode == 0 ? 1 : 0, &rank, 1000, dog_expire,
                                &err) != 0)
        {
            _exit(3);
        }
        for ( ;; ) {
            pause();
        }
    }
    close(fds[1]);

    if (mode == 1) {
        usleep(300000);
        kimi_group_fail(mem, "the launcher lost a node");
    }

    (void) waitpid(stuck, &status, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    n = read(fds[0], msg, sizeof(msg) - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    kill(dying, SIGKILL);
    (void) waitpid(dying, NULL, 0);

    double  s = (double) (t1.tv_sec - t0.tv_sec)
                + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;

    rc = WIFEXITED(status) && WEXITSTATUS(status) == 7 && s > 1.2 && s < 3.0
         && strstr(msg, mode == 0 ? "rank 1 (pid" : "the launcher lost a"
                                                    " node") != NULL
         && strstr(msg, "still here 1000 ms later") != NULL;
    if (!rc) {
        fprintf(stderr, "# watchdog mode %d: status 0x%x after %.2f s: %s\n",
                mode, status, s, msg);
    }
    munmap(mem, kimi_group_bytes(2, SEG));
    return rc;
}


int
main(void)
{
    ok(run_group(3, rank_rounds, -1, NULL) == 3,
       "3 ranks: 300 exchanges of random sizes arrive intact, votes agree");
    ok(run_group(3, rank_allreduce, -1, NULL) == 3,
       "3 ranks: 50 all-reduces of 700 floats give every rank the rank-order"
       " sum, bit for bit");
    ok(run_group(2, rank_out_of_step, -1, NULL) == 2,
       "a vote meeting an exchange fails the group as out of step");
    ok(run_group(3, rank_one_dies, 2, "rank 2 pid 42 died") == 3,
       "a dead rank reported by the launcher releases the barrier with its"
       " message");
    ok(run_group(2, rank_oversized, -1, NULL) == 2,
       "a message over the segment size fails the group on every rank");
    ok(run_group(3, rank_step_channel, -1, NULL) == 3,
       "step channel: 6 batches reach 2 followers field for field, then"
       " the stop message");
    ok(run_group(2, rank_step_too_big, -1, NULL) == 2,
       "step channel: a step over the segment fails the group on both"
       " sides, saying why");
    ok(run_group(3, rank_node_fails, -2, "node 7 went away") == 3,
       "the launcher failing the group ends the ranks' wait with its"
       " message");
    ok(run_linked(0) == 4,
       "2 x 2 linked groups: 40 rounds of stage all-reduces, column"
       " exchanges and votes of all, every value right");
    ok(run_linked(1) == 4,
       "linked groups: the launcher failing all ends waits in a stage and"
       " in a column with its message");
    ok(run_watchdog(0),
       "watchdog: a member stuck in a call is ended 1 s after a watched"
       " process exited, saying which");
    ok(run_watchdog(1),
       "watchdog: a member stuck in a call is ended 1 s after the launcher"
       " failed the group, with its message");
    ok(run_linked(2) == 4,
       "linked groups: a member aborting its stage ends a vote of all with"
       " its message");

    use_net = 1;
    silent_stranger = 1;
    ok(run_group(3, rank_rounds, -1, NULL) == 3,
       "mesh, 3 ranks: 300 exchanges of random sizes arrive intact, votes"
       " agree (a stranger saying junk and one saying nothing were dropped"
       " while it formed)");
    silent_stranger = 0;
    ok(run_group(3, rank_allreduce, -1, NULL) == 3,
       "mesh: all-reduces give every rank the rank-order sum, bit for bit");
    ok(run_group(2, rank_out_of_step, -1, NULL) == 2,
       "mesh: a vote meeting an exchange fails the group as out of step");
    ok(run_group(3, rank_one_dies, 2, "rank 2 pid 42 died") == 3,
       "mesh: a rank gone before the vote fails its peers, no hang");
    ok(run_group(2, rank_oversized, -1, NULL) == 2,
       "mesh: a message over the segment size fails the group on every"
       " rank");
    ok(run_group(3, rank_step_channel, -1, NULL) == 3,
       "mesh: the step channel's batches and stop message arrive");
    ok(run_group(3, rank_node_fails, -2, "node 7 went away") == 3,
       "mesh: the launcher failing the node ends the ranks' wait with its"
       " message, on the ranks waiting and on the late one");
    seg_bytes = BIG_SEG;
    ok(run_group(4, rank_big, -1, NULL) == 4,
       "mesh, 4 ranks: 6 MB messages between every two ranks at once, 4"
       " rounds, intact");

    /* the cost of a sync, both transports, for bench/RESULTS.md */
    for (uint32_t W = 2; W <= 4; W += 2) {
        for (use_net = 0; use_net <= 1; use_net++) {
            ok(run_group(W, rank_timing, -1, NULL) == (int) W,
               "%s, %u ranks: timed votes and exchanges", use_net ? "mesh"
               : "shared memory", W);
        }
    }
    seg_bytes = SEG;

    printf("1..%d\n", test_n);
    return test_failed != 0;
}
