/*
 * Unit tests for engine/shm/kimi_shm.c: segment create/attach validation,
 * SPSC rings, the slot state machine, token rings, doorbells, and two
 * processes talking through one segment.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/kimi_shm.h"


#include "tap.h"


static kimi_shm_params_t
params(uint32_t n_slots)
{
    kimi_shm_params_t  p;

    memset(&p, 0, sizeof(p));
    p.n_ranks = 1;
    p.n_slots = n_slots;
    p.slot_prompt_capacity = 256;
    p.max_model_len = 256;
    p.vocab_size = 163840;
    p.max_num_seqs = 8;
    p.max_waiting = 16;
    p.mode = 0600;
    p.served_model_name = "kimi-test";
    p.model_dir = "/nonexistent";

    return p;
}


static void
test_create_attach(const char *dir)
{
    int                 rc;
    char                path[512];
    kimi_err_t          err;
    struct stat         st;
    kimi_shm_t          a, b;
    kimi_shm_params_t   p = params(8);

    rc = kimi_shm_create(&a, dir, &p, &err);
    ok(rc == 0, "create succeeds (%s)", rc ? err.msg : "");

    kimi_shm_segment_path(path, sizeof(path), dir);
    ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600,
       "segment file is 0600");
    strcat(path, ".tmp");
    ok(access(path, F_OK) != 0, "no segment.tmp left behind");

    rc = kimi_shm_attach(&b, dir, &err);
    ok(rc == 0, "attach succeeds (%s)", rc ? err.msg : "");
    ok(rc == 0 && b.epoch == a.epoch && b.epoch != 0,
       "attacher sees the creator's epoch");
    ok(rc == 0 && b.n_slots == 8 && b.n_ranks == 1
       && strcmp(b.hdr->served_model_name, "kimi-test") == 0,
       "attacher sees geometry and model name");
    ok(kimi_shm_slot(&b, 7) != NULL && kimi_shm_slot(&b, 8) == NULL,
       "slot accessor bounds-checks the index");
    ok(kimi_shm_rank(&b, 0) != NULL && kimi_shm_rank(&b, 1) == NULL,
       "rank accessor bounds-checks the index");
    ok(kimi_shm_ring(&b, KIMI_SHM_MAX_WORKERS, 0, 0) == NULL
       && kimi_shm_ring(&b, 0, 0, 2) == NULL
       && kimi_shm_ring(&b, KIMI_SHM_MAX_WORKERS - 1, 0, 1) != NULL,
       "ring accessor bounds-checks worker, rank and direction");

    /* a peer rewriting the header's geometry cannot widen our view */
    b.hdr->n_slots = 1000000;
    ok(kimi_shm_slot(&b, 8) == NULL,
       "accessors use the validated copy, not the live header");
    b.hdr->n_slots = 8;

    ok(kimi_shm_replaced(&b, dir) == 0, "replaced() is 0 for the live file");

    kimi_shm_t  c;
    rc = kimi_shm_create(&c, dir, &p, &err);
    ok(rc == KIMI_ESTATE && strstr(err.msg, "another kimi-engine") != NULL
       && kimi_shm_replaced(&b, dir) == 0,
       "a second creator on a held dir is refused: %s", err.msg);

    kimi_shm_detach(&a);        /* the engine is gone: its lock with it */
    rc = kimi_shm_create(&c, dir, &p, &err);
    ok(rc == 0 && kimi_shm_replaced(&b, dir) == 1,
       "replaced() notices a segment renamed over ours");
    ok(b.hdr->magic == KIMI_SHM_MAGIC,
       "old mapping stays valid memory after the rename");

    kimi_shm_detach(&a);
    kimi_shm_detach(&b);
    kimi_shm_detach(&c);
}


static int
attach_fails_with(const char *dir, const char *needle, char *msg, size_t len)
{
    int          rc;
    kimi_err_t   err;
    kimi_shm_t   s;

    rc = kimi_shm_attach(&s, dir, &err);
    if (rc == 0) {
        kimi_shm_detach(&s);
        snprintf(msg, len, "attach succeeded");
        return 0;
    }

    snprintf(msg, len, "%s", err.msg);

    return rc == KIMI_ESTATE && strstr(err.msg, needle) != NULL;
}


static void
test_attach_refuses(const char *dir)
{
    int                 fd;
    char                path[512], msg[600];
    kimi_err_t          err;
    kimi_shm_t          a;
    kimi_shm_params_t   p = params(8);

    kimi_shm_create(&a, dir, &p, &err);
    kimi_shm_segment_path(path, sizeof(path), dir);

    a.hdr->abi_version = KIMI_SHM_ABI_VERSION + 1;
    ok(attach_fails_with(dir, "ABI", msg, sizeof(msg)),
       "attach refuses a wrong ABI: %s", msg);
    a.hdr->abi_version = KIMI_SHM_ABI_VERSION;

    a.hdr->magic = 0x1234;
    ok(attach_fails_with(dir, "magic", msg, sizeof(msg)),
       "attach refuses a wrong magic: %s", msg);
    a.hdr->magic = KIMI_SHM_MAGIC;

    a.hdr->off_slots += 4096;
    ok(attach_fails_with(dir, "offsets", msg, sizeof(msg)),
       "attach refuses a moved region: %s", msg);
    a.hdr->off_slots -= 4096;

    a.hdr->n_slots = 0;
    ok(attach_fails_with(dir, "geometry", msg, sizeof(msg)),
       "attach refuses zero slots: %s", msg);
    a.hdr->n_slots = 8;

    fd = open(path, O_RDWR);
    ok(fd >= 0 && ftruncate(fd, (off_t) a.size - 4096) == 0
       && attach_fails_with(dir, "truncated", msg, sizeof(msg)),
       "attach refuses a truncated file: %s", msg);
    ok(ftruncate(fd, 100) == 0
       && attach_fails_with(dir, "not a kimi segment", msg, sizeof(msg)),
       "attach refuses a file smaller than the header: %s", msg);
    close(fd);
    kimi_shm_detach(&a);

    unlink(path);
    ok(kimi_shm_attach(&a, dir, &err) == KIMI_EIO
       && strstr(err.msg, "segment") != NULL,
       "attach of a missing segment names the file: %s", err.msg);
}


static void
test_rings(const char *dir)
{
    int                 rc, good;
    uint32_t            i, cap, e, next_push, next_pop;
    kimi_err_t          err;
    kimi_shm_t          a;
    kimi_shm_ring_t    *r;
    kimi_shm_params_t   p = params(4);

    kimi_shm_create(&a, dir, &p, &err);
    r = kimi_shm_ring(&a, 3, 0, KIMI_SHM_RING_SUBMIT);
    cap = a.ring_capacity;
    ok(cap >= p.n_slots && (cap & (cap - 1)) == 0,
       "ring capacity %u is a power of two >= n_slots", cap);

    ok(kimi_shm_ring_pop(&a, r, &e) == 0, "empty ring pops nothing");

    for (i = 0, good = 1; i < cap; i++) {
        good &= kimi_shm_ring_push(&a, r, i) == 0;
    }
    ok(good, "ring takes exactly capacity entries");
    ok(kimi_shm_ring_push(&a, r, 99) == KIMI_EFULL, "full ring says EFULL");

    for (i = 0, good = 1; i < cap; i++) {
        good &= kimi_shm_ring_pop(&a, r, &e) == 1 && e == i;
    }
    ok(good, "entries come out in push order");
    ok(kimi_shm_ring_pop(&a, r, &e) == 0, "drained ring is empty");

    /* many laps with uneven batches, starting near u32 wrap of head */
    atomic_store(&r->head, 0xfffffff0u);
    atomic_store(&r->tail, 0xfffffff0u);
    next_push = next_pop = 0;
    good = 1;
    for (i = 0; i < 1000; i++) {
        uint32_t  k, n = (i * 7) % cap + 1;
        for (k = 0; k < n; k++) {
            if (kimi_shm_ring_push(&a, r, next_push) == 0) {
                next_push++;
            }
        }
        for (k = 0; k < (i * 5) % cap + 1; k++) {
            rc = kimi_shm_ring_pop(&a, r, &e);
            if (rc == 0) {
                break;
            }
            good &= rc == 1 && e == next_pop;
            next_pop++;
        }
    }
    while (kimi_shm_ring_pop(&a, r, &e) == 1) {
        good &= e == next_pop++;
    }
    ok(good && next_pop == next_push && next_push > 10 * cap,
       "ring keeps order across wrap (%u entries, u32 wrap)", next_push);

    atomic_store(&r->head, atomic_load(&r->tail) + cap + 5);
    ok(kimi_shm_ring_pop(&a, r, &e) == KIMI_ESTATE,
       "corrupt head (beyond capacity) is detected");
    atomic_store(&r->head, atomic_load(&r->tail) - 1);
    ok(kimi_shm_ring_pop(&a, r, &e) == KIMI_ESTATE,
       "head behind tail is detected");

    kimi_shm_detach(&a);
}


static void
test_slots(const char *dir)
{
    int32_t             s0, s1, s2, s3, s4;
    kimi_err_t          err;
    kimi_shm_t          a;
    kimi_shm_slot_t    *s;
    kimi_shm_params_t   p = params(4);

    kimi_shm_create(&a, dir, &p, &err);

    s0 = kimi_shm_slot_acquire(&a, 2, 4242);
    s = kimi_shm_slot(&a, (uint32_t) s0);
    ok(s0 >= 0 && atomic_load(&s->state) == KIMI_SLOT_OWNED
       && s->owner_pid == 4242 && s->owner_worker == 2 && s->generation == 1,
       "acquire: FREE -> OWNED, stamps owner and bumps generation");

    ok(kimi_shm_slot_release(&a, (uint32_t) s0) == 0
       && atomic_load(&s->state) == KIMI_SLOT_FREE,
       "release OWNED -> FREE");

    s0 = kimi_shm_slot_acquire(&a, 2, 4242);
    s1 = kimi_shm_slot_acquire(&a, 2, 4242);
    s2 = kimi_shm_slot_acquire(&a, 2, 4242);
    s3 = kimi_shm_slot_acquire(&a, 2, 4242);
    s4 = kimi_shm_slot_acquire(&a, 2, 4242);
    ok(s0 >= 0 && s1 >= 0 && s2 >= 0 && s3 >= 0 && s4 == -1
       && s0 != s1 && s1 != s2 && s2 != s3 && s0 != s3,
       "four distinct slots, then -1 when all are busy");

    s = kimi_shm_slot(&a, (uint32_t) s0);
    ok(kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED)
       && !kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED),
       "cas moves once and refuses a stale from-state");
    ok(kimi_shm_slot_release(&a, (uint32_t) s0) == 1
       && atomic_load(&s->state) == KIMI_SLOT_ABANDONED,
       "release of SUBMITTED -> ABANDONED, engine still holds it");
    ok(kimi_shm_slot_release(&a, (uint32_t) s0) == 1,
       "second release of ABANDONED still says the engine holds it");
    ok(kimi_shm_slot_cas(s, KIMI_SLOT_ABANDONED, KIMI_SLOT_FREE),
       "engine: ABANDONED -> FREE after cancel");

    s = kimi_shm_slot(&a, (uint32_t) s1);
    kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED);
    kimi_shm_slot_cas(s, KIMI_SLOT_SUBMITTED, KIMI_SLOT_ACCEPTED);
    ok(kimi_shm_slot_release(&a, (uint32_t) s1) == 1
       && atomic_load(&s->state) == KIMI_SLOT_ABANDONED,
       "release of ACCEPTED -> ABANDONED");
    ok(!kimi_shm_slot_cas(s, KIMI_SLOT_ACCEPTED, KIMI_SLOT_DONE),
       "engine cannot finish an abandoned slot as DONE");

    s = kimi_shm_slot(&a, (uint32_t) s2);
    kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED);
    kimi_shm_slot_cas(s, KIMI_SLOT_SUBMITTED, KIMI_SLOT_REJECTED);
    ok(kimi_shm_slot_release(&a, (uint32_t) s2) == 0
       && atomic_load(&s->state) == KIMI_SLOT_FREE,
       "release of REJECTED -> FREE");

    s = kimi_shm_slot(&a, (uint32_t) s3);
    kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED);
    kimi_shm_slot_cas(s, KIMI_SLOT_SUBMITTED, KIMI_SLOT_ACCEPTED);
    kimi_shm_slot_cas(s, KIMI_SLOT_ACCEPTED, KIMI_SLOT_DONE);
    ok(kimi_shm_slot_release(&a, (uint32_t) s3) == 0
       && atomic_load(&s->state) == KIMI_SLOT_FREE,
       "release of DONE -> FREE");

    atomic_store(&s->state, 77);
    ok(kimi_shm_slot_release(&a, (uint32_t) s3) == KIMI_ESTATE,
       "release of a corrupt state word is an error, not a loop");
    atomic_store(&s->state, KIMI_SLOT_FREE);
    ok(kimi_shm_slot_release(&a, 99) == KIMI_EINVAL,
       "release of an out-of-range slot is refused");

    s0 = kimi_shm_slot_acquire(&a, 1, 77);
    s = kimi_shm_slot(&a, (uint32_t) s0);
    ok(s0 >= 0 && s->generation >= 2 && s->n_output_tokens == 0
       && atomic_load(&s->tok_head) == 0,
       "re-acquired slot has a new generation and a reset result");

    kimi_shm_detach(&a);
}


static void
test_tokens_doorbells(const char *dir)
{
    int                 good;
    uint32_t            i;
    kimi_err_t          err;
    kimi_shm_t          a;
    kimi_shm_slot_t    *s;
    kimi_shm_token_t    t;
    _Atomic uint32_t    wp = 0;
    kimi_shm_params_t   p = params(2);

    kimi_shm_create(&a, dir, &p, &err);
    s = kimi_shm_slot(&a, 0);
    memset(&t, 0, sizeof(t));

    ok(kimi_shm_tok_space(s) == KIMI_SHM_TOKEN_RING
       && kimi_shm_tok_available(s) == 0, "new token ring is empty");

    for (i = 0; i < KIMI_SHM_TOKEN_RING; i++) {
        t.token = (int32_t) i;
        kimi_shm_tok_push(s, &t);
    }
    ok(kimi_shm_tok_space(s) == 0
       && kimi_shm_tok_available(s) == KIMI_SHM_TOKEN_RING,
       "token ring full after %u pushes", KIMI_SHM_TOKEN_RING);

    for (i = 0, good = 1; i < 10; i++) {
        good &= kimi_shm_tok_peek(s, i)->token == (int32_t) i;
    }
    kimi_shm_tok_consume(s, 10);
    ok(good && kimi_shm_tok_space(s) == 10
       && kimi_shm_tok_peek(s, 0)->token == 10,
       "peek in order, consume frees room");
    ok(kimi_shm_tok_peek(s, KIMI_SHM_TOKEN_RING) == NULL,
       "peek beyond the ring is refused");

    for (i = 0; i < 10; i++) {
        t.token = 1000 + (int32_t) i;
        kimi_shm_tok_push(s, &t);
    }
    kimi_shm_tok_consume(s, KIMI_SHM_TOKEN_RING - 10);
    ok(kimi_shm_tok_available(s) == 10
       && kimi_shm_tok_peek(s, 0)->token == 1000
       && kimi_shm_tok_peek(s, 9)->token == 1009,
       "token ring keeps order across wrap");

    atomic_store(&s->tok_head, atomic_load(&s->tok_tail) + 1000);
    ok(kimi_shm_tok_available(s) == KIMI_ESTATE,
       "corrupt token head is reported");
    atomic_store(&s->tok_tail, atomic_load(&s->tok_head) + 3);
    ok(kimi_shm_tok_space(s) == 0,
       "corrupt token tail gives the engine no room, not an overwrite");

    ok(kimi_shm_doorbell_arm(&wp) == 1, "first arm asks for a byte");
    ok(kimi_shm_doorbell_arm(&wp) == 0, "second arm is coalesced");
    kimi_shm_doorbell_clear(&wp);
    ok(kimi_shm_doorbell_arm(&wp) == 1, "arm after clear asks again");

    int32_t  w0 = kimi_shm_worker_claim(&a, getpid());
    int32_t  w1 = kimi_shm_worker_claim(&a, getpid());
    ok(w0 >= 0 && w1 >= 0 && w0 != w1
       && kimi_shm_worker(&a, (uint32_t) w0)->incarnation == 1,
       "worker records are claimed one each");
    kimi_shm_worker_release(&a, (uint32_t) w0, getpid());
    ok(atomic_load(&kimi_shm_worker(&a, (uint32_t) w0)->pid) == 0,
       "worker record released");

    uint64_t  t0 = kimi_shm_now_ns();
    usleep(2000);
    ok(kimi_shm_now_ns() - t0 >= 2000000, "now_ns is monotonic nanoseconds");

    kimi_shm_detach(&a);
}


/*
 * Child plays the worker: submits N entries on its submit ring (more than
 * the capacity, so it waits for room) and streams tokens through a slot;
 * parent plays the engine.  Wakeups ride a pipe with the doorbell rule.
 */
static void
test_two_processes(const char *dir)
{
    int                 fds[2], status, good;
    char                b;
    pid_t               pid;
    uint32_t            e, got, n = 5000;
    kimi_err_t          err;
    kimi_shm_t          a;
    kimi_shm_ring_t    *r;
    kimi_shm_rank_t    *rk;
    kimi_shm_params_t   p = params(4);

    kimi_shm_create(&a, dir, &p, &err);
    if (pipe(fds) != 0) {
        ok(0, "pipe");
        return;
    }

    pid = fork();
    if (pid == 0) {
        kimi_shm_t  c;
        uint32_t    i = 0, bells = 0;

        close(fds[0]);
        if (kimi_shm_attach(&c, dir, &err) != 0) {
            _exit(2);
        }
        r = kimi_shm_ring(&c, 5, 0, KIMI_SHM_RING_SUBMIT);
        rk = kimi_shm_rank(&c, 0);

        while (i < n) {
            if (kimi_shm_ring_push(&c, r, i) != 0) {
                continue;               /* consumer will make room */
            }
            i++;
            if (kimi_shm_doorbell_arm(&rk->wake_pending)) {
                bells++;
                if (write(fds[1], "x", 1) != 1) {
                    _exit(3);
                }
            }
        }

        /* tokens: 300 through a 64-entry ring */
        kimi_shm_slot_t  *s = kimi_shm_slot(&c, 1);
        kimi_shm_token_t  t;
        memset(&t, 0, sizeof(t));
        for (i = 0; i < 300; ) {
            if (kimi_shm_tok_space(s) == 0) {
                continue;
            }
            t.token = (int32_t) (i * 3);
            kimi_shm_tok_push(s, &t);
            i++;
        }

        _exit(bells < n ? 0 : 4);
    }

    close(fds[1]);
    r = kimi_shm_ring(&a, 5, 0, KIMI_SHM_RING_SUBMIT);
    rk = kimi_shm_rank(&a, 0);
    got = 0;
    good = 1;

    while (got < n) {
        if (read(fds[0], &b, 1) != 1) {
            break;
        }
        kimi_shm_doorbell_clear(&rk->wake_pending);
        while (kimi_shm_ring_pop(&a, r, &e) == 1) {
            good &= e == got;
            got++;
        }
    }
    ok(good && got == n, "parent got %u/%u entries in order from a child",
       got, n);

    kimi_shm_slot_t  *s = kimi_shm_slot(&a, 1);
    uint32_t          k = 0;
    int               av;
    good = 1;
    while (k < 300) {
        av = kimi_shm_tok_available(s);
        if (av < 0) {
            good = 0;
            break;
        }
        for (int j = 0; j < av; j++) {
            good &= kimi_shm_tok_peek(s, (uint32_t) j)->token
                    == (int32_t) ((k + (uint32_t) j) * 3);
        }
        kimi_shm_tok_consume(s, (uint32_t) av);
        k += (uint32_t) av;
    }
    ok(good && k == 300, "300 tokens cross processes in order");

    waitpid(pid, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
       "child exited cleanly with coalesced doorbells (status %d)", status);
    close(fds[0]);

    kimi_shm_detach(&a);
}


int
main(void)
{
    char   dir[] = "/tmp/kimi-shm-test-XXXXXX";
    char   cmd[600];

    if (mkdtemp(dir) == NULL) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }

    test_create_attach(dir);
    test_attach_refuses(dir);
    test_rings(dir);
    test_slots(dir);
    test_tokens_doorbells(dir);
    test_two_processes(dir);

    printf("1..%d\n", test_n);

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "# could not remove %s\n", dir);
    }

    return test_failed ? 1 : 0;
}
