/*
 * kimi-engine under load, without nginx: 1, 64 and 1000 concurrent
 * streams from one worker through the replay backend at zero delay.
 * Every stream must get exactly its tokens in order with finish_reason
 * length; the rate is printed (and must clear a floor far below what the
 * engine does, so only a pathological regression, such as a syscall per
 * token, fails it on a loaded 2-core CI box).
 */

#include <stdarg.h>
#include <fcntl.h>

#include "engine_client.h"

#define RATE_FLOOR_TOK_S  50000.0


#include "tap.h"


/* Drives n_streams streams of n_tokens each the way a worker does: one
 * read per doorbell, drain the event ring, consume every named slot's
 * tokens, ring the engine after emptying a full ring. */
static void
streams(kc_t *c, uint32_t n_streams, uint32_t n_tokens)
{
    int                  av, i, rang;
    char                 buf[256];
    int32_t             *slot_of;
    uint32_t            *got, *bad, e, si, done = 0, k;
    uint64_t             t0, total = 0, wakes = 0;
    double               secs;
    kimi_shm_slot_t     *s;
    kimi_shm_ring_t     *ring;
    kimi_shm_worker_t   *rec;
    kimi_shm_sampling_t  sp;
    static const int32_t prompt[] = { 1, 2, 3 };

    sp = kc_sampling(n_tokens);
    sp.ignore_eos = 1;
    slot_of = calloc(n_streams, sizeof(int32_t));
    got = calloc(c->shm.n_slots, sizeof(uint32_t));
    bad = calloc(c->shm.n_slots, sizeof(uint32_t));
    ring = kimi_shm_ring(&c->shm, (uint32_t) c->worker, 0,
                         KIMI_SHM_RING_EVENT);
    rec = kimi_shm_worker(&c->shm, (uint32_t) c->worker);

    t0 = kimi_shm_now_ns();
    for (k = 0; k < n_streams; k++) {
        slot_of[k] = kc_submit(c, prompt, 3, &sp, "rate");
    }

    while (done < n_streams) {
        struct pollfd  pfd = { c->fd, POLLIN, 0 };

        if (poll(&pfd, 1, 5000) != 1 || read(c->fd, buf, sizeof(buf)) <= 0) {
            break;
        }
        wakes++;
        kimi_shm_doorbell_clear(&rec->wake_pending);

        rang = 0;
        while (kimi_shm_ring_pop(&c->shm, ring, &e) == 1) {
            si = KIMI_SHM_ENTRY_SLOT(e);
            s = kimi_shm_slot(&c->shm, si);
            atomic_store(&s->notify_pending, 0);
            uint32_t  st = atomic_load(&s->state);

            av = kimi_shm_tok_available(s);
            for (i = 0; i < av; i++) {
                /* the reply is [10, 11, 12, 13], cycled by ignore_eos */
                bad[si] += kimi_shm_tok_peek(s, (uint32_t) i)->token
                           != (int32_t) (10 + (got[si] + (uint32_t) i) % 4);
            }
            kimi_shm_tok_consume(s, (uint32_t) av);
            got[si] += (uint32_t) av;
            total += (uint64_t) av;
            rang |= av == KIMI_SHM_TOKEN_RING;

            if (st == KIMI_SLOT_DONE && kimi_shm_tok_available(s) == 0
                && got[si] == s->n_output_tokens)
            {
                done++;
            }
        }

        if (rang) {
            kc_ring_engine(c);
        }
    }

    secs = (double) (kimi_shm_now_ns() - t0) / 1e9;

    int  exact = 1;
    for (k = 0; k < n_streams; k++) {
        s = kimi_shm_slot(&c->shm, (uint32_t) slot_of[k]);
        exact &= slot_of[k] >= 0 && got[slot_of[k]] == n_tokens
                 && bad[slot_of[k]] == 0
                 && s->finish_reason == KIMI_FINISH_LENGTH;
        kimi_shm_slot_release(&c->shm, (uint32_t) slot_of[k]);
    }

    ok(done == n_streams && exact,
       "%u streams x %u tokens: every stream complete and in order",
       n_streams, n_tokens);
    ok(total / secs > RATE_FLOOR_TOK_S,
       "%u streams: %.0f tokens/s, %.2f doorbell wakes per 1000 tokens"
       " (floor %.0f)", n_streams, total / secs,
       1000.0 * (double) wakes / (double) total, RATE_FLOOR_TOK_S);

    free(slot_of);
    free(got);
    free(bad);
}


int
main(void)
{
    int     status;
    char    dir[] = "/tmp/kimi-engine-rate-XXXXXX";
    char    script[600], log[600];
    pid_t   engine;
    kc_t    c;
    const char  *body = "{\"replies\": [{\"tokens\": [10, 11, 12, 13]}]}";

    if (kc_workdir(dir, body, script, sizeof(script), log, sizeof(log))
        != 0)
    {
        return 1;
    }

    char  *args[] = {
        (char *) "--backend", (char *) "replay",
        (char *) "--replay-script", script,
        (char *) "--replay-delay-ms", (char *) "0",
        (char *) "--max-model-len", (char *) "4096",
        (char *) "--max-num-seqs", (char *) "1024",
        (char *) "--max-slots", (char *) "1100",
        NULL
    };

    engine = kc_engine_start(dir, log, args);
    if (engine < 0 || kc_connect(&c, dir) != 0) {
        printf("Bail out! kimi-engine did not start (log %s)\n", log);
        return 1;
    }

    streams(&c, 1, 4000);
    streams(&c, 64, 1000);
    streams(&c, 1000, 500);

    kill(engine, SIGTERM);
    waitpid(engine, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "engine exits 0");

    printf("1..%d\n", test_n);

    kc_workdir_done(dir, log, test_failed);

    return test_failed ? 1 : 0;
}
