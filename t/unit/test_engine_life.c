/*
 * kimi-engine lifecycle corner cases, with this process as the nginx
 * worker (engine_client.h): backpressure pauses a sequence without losing
 * a token, a corrupt submission ring drops only that worker, a second
 * SIGTERM aborts a drain at once, SIGKILL + restart on the same --ipc-dir
 * gives a new segment the old workers notice, JSON logs are JSON.
 */

#include <stdarg.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "engine_client.h"


#include "tap.h"


static const int32_t  prompt[] = { 100, 200, 300 };
static char           script[600];
static char           kc_socket_path_tmp[600];


static pid_t
start(const char *dir, const char *log, const char *timeout, int json)
{
    char  *args[] = {
        (char *) "--backend", (char *) "replay",
        (char *) "--replay-script", script,
        (char *) "--replay-delay-ms", (char *) "0",
        (char *) "--max-model-len", (char *) "4096",
        (char *) "--max-slots", (char *) "16",
        (char *) "--max-num-seqs", (char *) "8",
        (char *) "--shutdown-timeout", (char *) timeout,
        (char *) "--log-level", (char *) "info",
        (char *) "--log-format", (char *) (json ? "json" : "text"),
        NULL
    };

    return kc_engine_start(dir, log, args);
}


/* The client stops reading: the engine fills the 64-entry ring and pauses
 * that sequence; reading again (and ringing on a full ring, as the
 * gateway does) resumes it until every token arrived, in order. */
static void
test_backpressure(kc_t *c)
{
    int                  i, n = 0, good = 1, av, bells = 0;
    int32_t              slot;
    uint32_t             st;
    kimi_shm_slot_t     *s;
    kimi_shm_sampling_t  sp;

    sp = kc_sampling(1000);
    sp.ignore_eos = 1;
    slot = kc_submit(c, prompt, 3, &sp, "bp");
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);

    usleep(100000);
    ok(kimi_shm_tok_available(s) == KIMI_SHM_TOKEN_RING
       && s->n_output_tokens == KIMI_SHM_TOKEN_RING
       && kc_state(c, slot) == KIMI_SLOT_ACCEPTED,
       "an unread sequence pauses with its ring full (%u pushed)",
       s->n_output_tokens);

    for ( ;; ) {
        st = kc_state(c, slot);
        av = kimi_shm_tok_available(s);
        for (i = 0; i < av; i++) {
            good &= kimi_shm_tok_peek(s, (uint32_t) i)->token
                    == 10 + (n + i) % 4;
        }
        kimi_shm_tok_consume(s, (uint32_t) av);
        n += av;
        if (av == KIMI_SHM_TOKEN_RING) {
            kc_ring_engine(c);
            bells++;
        }
        if (st == KIMI_SLOT_DONE && kimi_shm_tok_available(s) == 0) {
            break;
        }
        if (!kc_wait_event(c, slot, 2000) && av == 0) {
            break;
        }
    }

    ok(n == 1000 && good && s->finish_reason == KIMI_FINISH_LENGTH,
       "after resuming, all 1000 tokens arrive in order (%d, %d bells)", n,
       bells);
    kimi_shm_slot_release(&c->shm, (uint32_t) slot);
}


static void
test_corrupt_ring(const char *dir, const char *log)
{
    kc_t              bad;
    char              b;
    kimi_shm_ring_t  *ring;
    struct pollfd     pfd;

    if (kc_connect(&bad, dir) != 0) {
        ok(0, "second worker connects");
        return;
    }
    usleep(20000);

    ring = kimi_shm_ring(&bad.shm, (uint32_t) bad.worker, 0,
                         KIMI_SHM_RING_SUBMIT);
    atomic_store(&ring->head, atomic_load(&ring->tail) + 1000000);
    kc_ring_engine(&bad);

    pfd.fd = bad.fd;
    pfd.events = POLLIN;
    ok(poll(&pfd, 1, 2000) == 1 && read(bad.fd, &b, 1) == 0,
       "a worker with a corrupt submission ring is disconnected");
    ok(kc_log_has(log, "is corrupt", 1000), "and the engine says why");

    close(bad.fd);
    kimi_shm_detach(&bad.shm);
}


/* Leaks no socket EOF reports: an ABANDONED slot that never reached a
 * ring, and a process that claimed a record and a slot, then died before
 * its hello.  The engine's once-a-second sweep frees both. */
static void
test_sweep(kc_t *c, const char *dir, const char *log)
{
    int               status;
    int32_t           slot, info[2];
    pid_t             pid;
    uint64_t          t0;
    kimi_shm_slot_t  *s;

    slot = kimi_shm_slot_acquire(&c->shm, (uint32_t) c->worker, c->pid);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED);
    ok(kimi_shm_slot_release(&c->shm, (uint32_t) slot) == 1,
       "a submitted-but-never-pushed slot is released to ABANDONED");

    int  fds[2];
    if (pipe(fds) != 0) {
        ok(0, "pipe");
        return;
    }
    pid = fork();
    if (pid == 0) {
        kimi_err_t  err;
        kimi_shm_t  shm;

        if (kimi_shm_attach(&shm, dir, &err) != 0) {
            _exit(2);
        }
        info[0] = kimi_shm_worker_claim(&shm, getpid());
        info[1] = kimi_shm_slot_acquire(&shm, (uint32_t) info[0], getpid());
        if (write(fds[1], info, sizeof(info)) != sizeof(info)) {
            _exit(3);
        }
        _exit(0);
    }
    close(fds[1]);
    if (read(fds[0], info, sizeof(info)) != sizeof(info)) {
        ok(0, "child reported");
        return;
    }
    close(fds[0]);
    waitpid(pid, &status, 0);

    kimi_shm_slot_t    *orphan = kimi_shm_slot(&c->shm, (uint32_t) info[1]);
    kimi_shm_worker_t  *rec = kimi_shm_worker(&c->shm, (uint32_t) info[0]);

    ok(atomic_load(&orphan->state) == KIMI_SLOT_OWNED
       && atomic_load(&rec->pid) == pid,
       "a dead never-connected process left an OWNED slot and a record");

    t0 = kimi_shm_now_ns();
    while ((atomic_load(&s->state) != KIMI_SLOT_FREE
            || atomic_load(&orphan->state) != KIMI_SLOT_FREE
            || atomic_load(&rec->pid) != 0)
           && kimi_shm_now_ns() - t0 < 2500000000ull)
    {
        usleep(5000);
    }

    ok(atomic_load(&s->state) == KIMI_SLOT_FREE,
       "the sweep frees the orphaned ABANDONED slot");
    ok(atomic_load(&orphan->state) == KIMI_SLOT_FREE
       && atomic_load(&rec->pid) == 0,
       "and the dead process's slot and record (%.0f ms)",
       (double) (kimi_shm_now_ns() - t0) / 1e6);
    ok(kc_log_has(log, "sweep freed", 100), "the sweep is logged");
}


static void
test_double_sigterm(kc_t *c, pid_t engine)
{
    int                  status;
    int32_t              slot, tok[4];
    uint64_t             t0;
    kimi_shm_slot_t     *s;
    kimi_shm_sampling_t  sp;

    sp = kc_sampling(4000);
    sp.ignore_eos = 1;
    slot = kc_submit(c, prompt, 3, &sp, "dbl");
    kc_collect(c, slot, tok, 4, 50);

    t0 = kimi_shm_now_ns();
    kill(engine, SIGTERM);
    usleep(50000);
    ok(kc_state(c, slot) == KIMI_SLOT_ACCEPTED,
       "first SIGTERM lets the running sequence go on");
    kill(engine, SIGTERM);

    /* drain what is left so backpressure cannot hold it */
    kc_collect(c, slot, tok, 4, 2000);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    ok(kc_state(c, slot) == KIMI_SLOT_DONE
       && s->finish_reason == KIMI_FINISH_ABORT
       && kimi_shm_now_ns() - t0 < 1000000000ull,
       "second SIGTERM aborts it at once, not after --shutdown-timeout 30"
       " (\"%s\")", s->message);

    waitpid(engine, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "engine exits 0");
    ok(access(kc_socket_path_tmp, F_OK) != 0, "rank socket removed on exit");
}


int
main(void)
{
    int     status;
    char    dir[] = "/tmp/kimi-engine-life-XXXXXX";
    char    log[600];
    pid_t   engine;
    kc_t    c, c2;
    const char  *body = "{\"replies\": [{\"tokens\": [10, 11, 12, 13]}]}";

    if (kc_workdir(dir, body, script, sizeof(script), log, sizeof(log))
        != 0)
    {
        return 1;
    }
    kimi_shm_socket_path(kc_socket_path_tmp, sizeof(kc_socket_path_tmp), dir,
                         0);

    /* engine 1: text logs, killed with SIGKILL */
    engine = start(dir, log, "30", 0);
    if (engine < 0 || kc_connect(&c, dir) != 0) {
        printf("Bail out! kimi-engine did not start (log %s)\n", log);
        return 1;
    }

    test_backpressure(&c);
    test_corrupt_ring(dir, log);
    test_sweep(&c, dir, log);

    uint64_t  epoch1 = c.shm.epoch;
    char      b;

    kill(engine, SIGKILL);
    waitpid(engine, &status, 0);
    ok(read(c.fd, &b, 1) == 0, "SIGKILLed engine: the worker sees EOF");

    /* engine 2 on the same dir, JSON logs */
    snprintf(log, sizeof(log), "%s/engine2.log", dir);
    engine = start(dir, log, "30", 1);
    ok(engine > 0, "a new engine starts on the same --ipc-dir");
    ok(kimi_shm_replaced(&c.shm, dir) == 1,
       "the old worker's mapping reports the segment replaced");

    if (engine < 0 || kc_connect(&c2, dir) != 0) {
        printf("Bail out! restart failed\n");
        return 1;
    }
    ok(c2.shm.epoch != epoch1, "the new segment has a new epoch");

    int32_t              slot, tok[8];
    kimi_shm_sampling_t  sp = kc_sampling(100);
    slot = kc_submit(&c2, prompt, 3, &sp, "after-restart");
    ok(kc_collect(&c2, slot, tok, 8, 2000) == 5 && tok[0] == 10,
       "the restarted engine serves");
    kimi_shm_slot_release(&c2.shm, (uint32_t) slot);

    ok(kc_log_has(log, "{\"ts\":\"", 100)
       && kc_log_has(log, "\"level\":\"notice\",\"pid\":", 100)
       && kc_log_has(log, "\"msg\":\"engine ready backend=replay", 100),
       "--log-format json writes JSON lines");

    test_double_sigterm(&c2, engine);

    printf("1..%d\n", test_n);

    kc_workdir_done(dir, log, test_failed);

    return test_failed ? 1 : 0;
}
