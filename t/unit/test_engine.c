/*
 * kimi-engine end to end without nginx: the real binary with the replay
 * backend, and this process playing an nginx worker through the shm
 * contract (engine_client.h).  Covers admission (accept, 400, 429),
 * token streaming and finish reasons, cancellation of an abandoned slot,
 * reclaim of a dead worker's slots, SIGTERM drain with abort on timeout,
 * and a bad hello being refused.
 */

#include <stdarg.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "engine_client.h"


#include "tap.h"


static const int32_t  prompt[] = { 100, 200, 300 };


static void
test_streams(kc_t *c)
{
    int                  n;
    int32_t              slot, toks[64];
    kimi_shm_slot_t     *s;
    kimi_shm_sampling_t  sp;

    sp = kc_sampling(100);
    slot = kc_submit(c, prompt, 3, &sp, "req-stop");
    ok(slot >= 0, "slot acquired and submitted");

    n = kc_collect(c, slot, toks, 64, 3000);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    ok(kc_state(c, slot) == KIMI_SLOT_DONE, "sequence reaches DONE");
    ok(n == 5 && toks[0] == 10 && toks[1] == 11 && toks[2] == 12
       && toks[3] == 13 && toks[4] == 163586,
       "reply tokens in order, then eos (%d tokens)", n);
    ok(s->finish_reason == KIMI_FINISH_STOP && s->n_output_tokens == 5,
       "finish_reason stop, n_output_tokens 5 (%u, %u)", s->finish_reason,
       s->n_output_tokens);
    ok(s->first_token_ns >= s->submit_ns && s->first_token_ns != 0,
       "first_token_ns stamped after submit");
    ok(kimi_shm_slot_release(&c->shm, (uint32_t) slot) == 0
       && kc_state(c, slot) == KIMI_SLOT_FREE, "DONE slot released to FREE");

    sp = kc_sampling(2);
    slot = kc_submit(c, prompt, 3, &sp, "req-length");
    n = kc_collect(c, slot, toks, 64, 3000);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    ok(n == 2 && s->finish_reason == KIMI_FINISH_LENGTH,
       "max_tokens 2 ends with finish_reason length after 2 tokens");
    kimi_shm_slot_release(&c->shm, (uint32_t) slot);

    sp = kc_sampling(10);
    sp.ignore_eos = 1;
    slot = kc_submit(c, prompt, 3, &sp, "req-ignore-eos");
    n = kc_collect(c, slot, toks, 64, 3000);
    ok(n == 10 && toks[4] == 10 && toks[9] == 11
       && kimi_shm_slot(&c->shm, (uint32_t) slot)->finish_reason
          == KIMI_FINISH_LENGTH,
       "ignore_eos cycles the reply up to max_tokens");
    kimi_shm_slot_release(&c->shm, (uint32_t) slot);
}


static void
test_rejects(kc_t *c)
{
    int32_t              slot, bad[2] = { 5, 163840 };
    kimi_shm_slot_t     *s;
    kimi_shm_sampling_t  sp;

    sp = kc_sampling(5000);
    slot = kc_submit(c, prompt, 3, &sp, "req-too-long");
    kc_wait_state(c, slot, KIMI_SLOT_REJECTED, 2000);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    ok(kc_state(c, slot) == KIMI_SLOT_REJECTED && s->reject_status == 400
       && strstr(s->message, "maximum context length is 4096 tokens") != NULL,
       "prompt + max_tokens over max_model_len: 400 \"%s\"", s->message);
    kimi_shm_slot_release(&c->shm, (uint32_t) slot);

    sp = kc_sampling(5);
    slot = kc_submit(c, bad, 2, &sp, "req-bad-token");
    kc_wait_state(c, slot, KIMI_SLOT_REJECTED, 2000);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    ok(kc_state(c, slot) == KIMI_SLOT_REJECTED && s->reject_status == 400
       && strstr(s->message, "vocabulary") != NULL,
       "token id outside the vocabulary: 400 \"%s\"", s->message);
    kimi_shm_slot_release(&c->shm, (uint32_t) slot);

    sp = kc_sampling(5);
    sp.top_p = 0.0f;
    slot = kc_submit(c, prompt, 3, &sp, "req-bad-top-p");
    kc_wait_state(c, slot, KIMI_SLOT_REJECTED, 2000);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    ok(kc_state(c, slot) == KIMI_SLOT_REJECTED && s->reject_status == 400
       && strstr(s->message, "top_p") != NULL,
       "top_p 0: 400 \"%s\"", s->message);
    kimi_shm_slot_release(&c->shm, (uint32_t) slot);

    /* a prompt longer than the slot: the engine must not read past it */
    slot = kimi_shm_slot_acquire(&c->shm, (uint32_t) c->worker, c->pid);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    s->n_prompt_tokens = 0x7fffffff;
    s->sampling = kc_sampling(5);
    kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED);
    kimi_shm_ring_push(&c->shm, kimi_shm_ring(&c->shm, (uint32_t) c->worker,
                       0, KIMI_SHM_RING_SUBMIT),
                       KIMI_SHM_ENTRY((uint32_t) slot, s->generation));
    kc_ring_engine(c);
    kc_wait_state(c, slot, KIMI_SLOT_REJECTED, 2000);
    ok(kc_state(c, slot) == KIMI_SLOT_REJECTED && s->reject_status == 400,
       "n_prompt_tokens beyond slot capacity: 400 \"%s\"", s->message);
    kimi_shm_slot_release(&c->shm, (uint32_t) slot);
}


static void
test_cancel(kc_t *c, const char *log)
{
    int                  n;
    int32_t              slot, toks[8];
    uint64_t             t0;
    kimi_shm_sampling_t  sp;

    sp = kc_sampling(4000);
    sp.ignore_eos = 1;
    slot = kc_submit(c, prompt, 3, &sp, "req-cancel-me");
    n = kc_collect(c, slot, toks, 8, 300);
    ok(n > 0 && kc_state(c, slot) == KIMI_SLOT_ACCEPTED,
       "long sequence streams (%d tokens so far)", n);

    t0 = kimi_shm_now_ns();
    ok(kimi_shm_slot_release(&c->shm, (uint32_t) slot) == 1,
       "release of a running slot leaves it ABANDONED");
    kc_ring_engine(c);
    kc_wait_state(c, slot, KIMI_SLOT_FREE, 1000);
    ok(kc_state(c, slot) == KIMI_SLOT_FREE
       && kimi_shm_now_ns() - t0 < 100000000ull,
       "engine frees the abandoned slot within 100 ms (%.1f ms)",
       (double) (kimi_shm_now_ns() - t0) / 1e6);
    ok(kc_log_has(log, "sequence cancelled seq=", 1000)
       && kc_log_has(log, "request_id=req-cancel-me after_ms=", 10),
       "engine logs the cancellation with the request id");
}


static void
test_queue_full(kc_t *c)
{
    int32_t              a, b, tok[4];
    kimi_shm_slot_t     *s;
    kimi_shm_sampling_t  sp;

    /* --max-num-seqs 2 --max-waiting 1: two run, one waits, one is 429 */
    sp = kc_sampling(3000);
    sp.ignore_eos = 1;
    a = kc_submit(c, prompt, 3, &sp, "q1");
    kc_collect(c, a, tok, 4, 100);
    b = kc_submit(c, prompt, 3, &sp, "q2");
    kc_collect(c, b, tok, 4, 100);
    int32_t  w = kc_submit(c, prompt, 3, &sp, "q3");
    usleep(50000);
    int32_t  x = kc_submit(c, prompt, 3, &sp, "q4");
    kc_wait_state(c, x, KIMI_SLOT_REJECTED, 2000);
    s = kimi_shm_slot(&c->shm, (uint32_t) x);
    ok(kc_state(c, x) == KIMI_SLOT_REJECTED && s->reject_status == 429,
       "beyond max-num-seqs + max-waiting: 429 \"%s\"", s->message);
    ok(kc_state(c, w) == KIMI_SLOT_ACCEPTED,
       "the one within max-waiting is accepted and queued");

    kimi_shm_rank_t  *r = kimi_shm_rank(&c->shm, 0);
    usleep(250000);     /* two heartbeats: the counters are per 100 ms */
    ok(atomic_load(&r->num_running) == 2 && atomic_load(&r->num_waiting) == 1,
       "rank record shows running=2 waiting=1 (%u, %u)",
       atomic_load(&r->num_running), atomic_load(&r->num_waiting));
    ok(kimi_shm_now_ns() - atomic_load(&r->heartbeat_ns) < 300000000ull,
       "heartbeat is fresh");

    kimi_shm_slot_release(&c->shm, (uint32_t) x);
    kimi_shm_slot_release(&c->shm, (uint32_t) a);
    kimi_shm_slot_release(&c->shm, (uint32_t) b);
    kimi_shm_slot_release(&c->shm, (uint32_t) w);
    kc_ring_engine(c);
    /* the engine frees them in its own order: wait for each one */
    kc_wait_state(c, a, KIMI_SLOT_FREE, 2000);
    kc_wait_state(c, b, KIMI_SLOT_FREE, 2000);
    kc_wait_state(c, w, KIMI_SLOT_FREE, 2000);
    ok(kc_state(c, a) == KIMI_SLOT_FREE && kc_state(c, b) == KIMI_SLOT_FREE
       && kc_state(c, w) == KIMI_SLOT_FREE,
       "released running and waiting slots all come back FREE");
}


/* A child worker submits, then dies without releasing anything. */
static void
test_dead_worker(const char *dir, const char *log)
{
    int                  status, pfd[2];
    int32_t              slots[3] = { -1, -1, -1 }, w = -1;
    pid_t                pid;
    kc_t                 c;
    kimi_err_t           err;
    kimi_shm_t           shm;
    kimi_shm_sampling_t  sp;

    if (pipe(pfd) != 0) {
        ok(0, "pipe");
        return;
    }

    pid = fork();
    if (pid == 0) {
        int32_t  tok[4], info[4];

        if (kc_connect(&c, dir) != 0) {
            _exit(2);
        }
        sp = kc_sampling(3000);
        sp.ignore_eos = 1;
        info[0] = c.worker;
        info[1] = kc_submit(&c, prompt, 3, &sp, "dead-1");
        kc_collect(&c, info[1], tok, 4, 200);
        info[2] = kimi_shm_slot_acquire(&c.shm, (uint32_t) c.worker, c.pid);
        sp = kc_sampling(3);
        info[3] = kc_submit(&c, prompt, 3, &sp, "dead-done");
        kc_collect(&c, info[3], tok, 4, 1000);
        if (write(pfd[1], info, sizeof(info)) != sizeof(info)) {
            _exit(3);
        }
        pause();
        _exit(0);
    }

    close(pfd[1]);
    int32_t  info[4];
    if (read(pfd[0], info, sizeof(info)) != sizeof(info)) {
        ok(0, "child worker reported its slots");
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return;
    }
    close(pfd[0]);
    w = info[0];
    slots[0] = info[1];
    slots[1] = info[2];
    slots[2] = info[3];

    kimi_shm_attach(&shm, dir, &err);
    ok(atomic_load(&kimi_shm_slot(&shm, (uint32_t) slots[0])->state)
       == KIMI_SLOT_ACCEPTED
       && atomic_load(&kimi_shm_slot(&shm, (uint32_t) slots[1])->state)
          == KIMI_SLOT_OWNED
       && atomic_load(&kimi_shm_slot(&shm, (uint32_t) slots[2])->state)
          == KIMI_SLOT_DONE,
       "child worker holds an ACCEPTED, an OWNED and a DONE slot");

    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);

    uint64_t  t0 = kimi_shm_now_ns();
    int       all_free = 0;
    while (!all_free && kimi_shm_now_ns() - t0 < 1000000000ull) {
        all_free = 1;
        for (int i = 0; i < 3; i++) {
            all_free &= atomic_load(&kimi_shm_slot(&shm,
                            (uint32_t) slots[i])->state) == KIMI_SLOT_FREE;
        }
        usleep(1000);
    }
    ok(all_free, "SIGKILLed worker's slots are all FREE again (%.1f ms)",
       (double) (kimi_shm_now_ns() - t0) / 1e6);
    ok(atomic_load(&kimi_shm_worker(&shm, (uint32_t) w)->pid) == 0,
       "its worker record is freed");
    ok(kc_log_has(log, "worker gone worker=", 1000)
       && kc_log_has(log, "slots_reclaimed=3 sequences_cancelled=1", 10),
       "engine logs the reclaim: 3 slots, 1 sequence cancelled");

    kimi_shm_detach(&shm);
}


static void
test_bad_hello(const char *dir, const char *log)
{
    kc_t  c;
    char  b;

    /* claim a record, then lie about the pid in the hello */
    if (kc_connect(&c, dir) != 0) {
        ok(0, "connect");
        return;
    }
    close(c.fd);
    kimi_shm_worker_release(&c.shm, (uint32_t) c.worker, c.pid);

    c.worker = kimi_shm_worker_claim(&c.shm, c.pid);
    {
        char                path[100];
        struct sockaddr_un  sa;
        kimi_shm_hello_t    h;

        kimi_shm_socket_path(path, sizeof(path), dir, 0);
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        c.fd = socket(AF_UNIX, SOCK_STREAM, 0);
        connect(c.fd, (struct sockaddr *) &sa, sizeof(sa));

        memset(&h, 0, sizeof(h));
        h.magic = KIMI_SHM_MAGIC;
        h.epoch = c.shm.epoch;
        h.abi_version = KIMI_SHM_ABI_VERSION;
        h.worker_index = (uint32_t) c.worker;
        h.pid = c.pid + 1;
        h.incarnation = kimi_shm_worker(&c.shm, (uint32_t) c.worker)
                            ->incarnation;
        if (write(c.fd, &h, sizeof(h)) != sizeof(h)) {
            ok(0, "hello write");
        }
    }

    struct pollfd  pfd = { c.fd, POLLIN, 0 };
    ok(poll(&pfd, 1, 2000) == 1 && read(c.fd, &b, 1) == 0,
       "a hello with a pid that is not the peer's is refused (EOF)");
    ok(kc_log_has(log, "worker hello refused", 1000),
       "the refusal is logged");

    close(c.fd);
    kimi_shm_worker_release(&c.shm, (uint32_t) c.worker, c.pid);
    kimi_shm_detach(&c.shm);
}


static void
test_drain(kc_t *c, pid_t engine, const char *dir, const char *log)
{
    int                  status, n_before, n_after;
    int32_t              slot, late, tok[4];
    uint64_t             t0;
    kimi_shm_slot_t     *s;
    kimi_shm_sampling_t  sp;

    sp = kc_sampling(3000);
    sp.ignore_eos = 1;
    slot = kc_submit(c, prompt, 3, &sp, "req-drain");
    n_before = kc_collect(c, slot, tok, 4, 100);

    t0 = kimi_shm_now_ns();
    kill(engine, SIGTERM);

    while (atomic_load(&c->shm.hdr->state) != KIMI_SHM_STATE_DRAINING
           && kimi_shm_now_ns() - t0 < 1000000000ull)
    {
        usleep(1000);
    }
    ok(atomic_load(&c->shm.hdr->state) == KIMI_SHM_STATE_DRAINING,
       "SIGTERM: segment state DRAINING");

    sp = kc_sampling(5);
    late = kc_submit(c, prompt, 3, &sp, "req-late");
    kc_wait_state(c, late, KIMI_SLOT_REJECTED, 1000);
    s = kimi_shm_slot(&c->shm, (uint32_t) late);
    ok(kc_state(c, late) == KIMI_SLOT_REJECTED && s->reject_status == 503,
       "a submission while draining gets 503 \"%s\"", s->message);

    /* keep consuming so the in-flight one is not paused by backpressure */
    n_after = kc_collect(c, slot, tok, 4, 3000);
    s = kimi_shm_slot(&c->shm, (uint32_t) slot);
    ok(n_before > 0 && n_after > 100,
       "the in-flight sequence kept streaming while draining (%d tokens)",
       n_after);
    ok(kc_state(c, slot) == KIMI_SLOT_DONE
       && s->finish_reason == KIMI_FINISH_ABORT
       && strstr(s->message, "drain timeout") != NULL,
       "after --shutdown-timeout the in-flight one ends ABORT \"%s\"",
       s->message);
    ok(kimi_shm_now_ns() - t0 >= 900000000ull,
       "the abort came after the 1 s timeout (%.0f ms)",
       (double) (kimi_shm_now_ns() - t0) / 1e6);

    waitpid(engine, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
       "engine exits 0 after the drain (status %d)", status);
    ok(atomic_load(&c->shm.hdr->state) == KIMI_SHM_STATE_STOPPED,
       "segment state STOPPED");
    ok(kc_log_has(log, "draining reason=SIGTERM", 10), "drain is logged");
    (void) dir;
}


int
main(void)
{
    char    dir[] = "/tmp/kimi-engine-test-XXXXXX";
    char    script[600], log[600];
    pid_t   engine;
    kc_t    c;

    if (kc_workdir(dir, "{\"replies\": [{\"tokens\": [10, 11, 12, 13]}]}",
                   script, sizeof(script), log, sizeof(log)) != 0)
    {
        return 1;
    }

    char  *args[] = {
        (char *) "--backend", (char *) "replay",
        (char *) "--replay-script", script,
        (char *) "--replay-delay-ms", (char *) "2",
        (char *) "--max-model-len", (char *) "4096",
        (char *) "--max-num-seqs", (char *) "2",
        (char *) "--max-waiting", (char *) "1",
        (char *) "--max-slots", (char *) "32",
        (char *) "--shutdown-timeout", (char *) "1",
        (char *) "--log-level", (char *) "info",
        NULL
    };

    engine = kc_engine_start(dir, log, args);
    if (engine < 0) {
        printf("Bail out! kimi-engine did not become READY (log %s)\n", log);
        return 1;
    }
    ok(1, "kimi-engine started and published a READY segment");

    ok(kc_connect(&c, dir) == 0, "worker attached, claimed a record, hello");
    ok(c.shm.hdr->vocab_size == 163840 && c.shm.hdr->max_model_len == 4096
       && c.shm.n_slots == 32, "segment publishes vocab, max_model_len,"
       " slots");

    struct stat  st;
    char         sock[600];
    kimi_shm_socket_path(sock, sizeof(sock), dir, 0);
    ok(stat(sock, &st) == 0 && (st.st_mode & 0777) == 0600,
       "rank socket is 0600");

    test_streams(&c);
    test_rejects(&c);
    test_cancel(&c, log);
    test_queue_full(&c);
    test_dead_worker(dir, log);
    test_bad_hello(dir, log);
    test_drain(&c, engine, dir, log);

    printf("1..%d\n", test_n);

    kc_workdir_done(dir, log, test_failed);

    return test_failed ? 1 : 0;
}
