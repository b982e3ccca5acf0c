/*
 * A hostile worker against a live kimi-engine: random submission entries
 * (slot indices out of range, wrong generations, slots of other workers),
 * random bytes in its slots' request fields (lengths, token ids, NaN
 * sampling values, unterminated request ids), state words flipped under
 * the engine, and tokens consumed out of order.  The engine must neither
 * crash nor hang, and a well-behaved worker beside it must still be served
 * exactly, with every one of its slots FREE at the end.
 */

#include <stdarg.h>
#include <fcntl.h>

#include "engine_client.h"


#include "tap.h"


static uint64_t  rng_state = 0x9e3779b97f4a7c15ull;


static uint32_t
rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;

    return (uint32_t) (rng_state >> 16);
}


static void
scribble(void *p, size_t n)
{
    size_t    i;
    uint8_t  *b = p;

    for (i = 0; i < n; i++) {
        b[i] = (uint8_t) rnd();
    }
}


/* One round of mischief by the hostile worker h. */
static void
mischief(kc_t *h, int32_t *held, uint32_t n_held)
{
    uint32_t          k, slot, e;
    kimi_shm_slot_t  *s;
    kimi_shm_ring_t  *ring;

    ring = kimi_shm_ring(&h->shm, (uint32_t) h->worker, 0,
                         KIMI_SHM_RING_SUBMIT);

    for (k = 0; k < 8; k++) {
        switch (rnd() % 8) {

        case 0:     /* an entry for any slot index, any generation */
            e = rnd();
            kimi_shm_ring_push(&h->shm, ring, e);
            break;

        case 1:     /* one of ours, request fields scribbled, submitted */
            slot = (uint32_t) held[rnd() % n_held];
            s = kimi_shm_slot(&h->shm, slot);
            scribble(&s->sampling, sizeof(s->sampling));
            s->n_prompt_tokens = rnd() % 3 ? rnd() % 64 : rnd();
            s->n_guided = rnd() % 3 ? rnd() % 8 : rnd();
            scribble(kimi_shm_prompt(&h->shm, slot), 64 * sizeof(int32_t));
            scribble(s->request_id, sizeof(s->request_id));
            s->rank = rnd() % 4 ? 0 : rnd();
            s->kind = rnd() % 4 ? 0 : rnd();
            atomic_store(&s->state, KIMI_SLOT_SUBMITTED);
            kimi_shm_ring_push(&h->shm, ring,
                KIMI_SHM_ENTRY(slot, s->generation & KIMI_SHM_GEN_MASK));
            break;

        case 2:     /* a plausible request with valid fields */
            slot = (uint32_t) held[rnd() % n_held];
            s = kimi_shm_slot(&h->shm, slot);
            s->sampling = kc_sampling(1 + rnd() % 50);
            s->sampling.ignore_eos = (uint8_t) (rnd() & 1);
            /* now and then JSON mode, or a list of allowed ids */
            s->sampling.json_object = (uint8_t) (rnd() % 5 == 0);
            if (rnd() % 5 == 0) {
                s->sampling.allowed_only = 1;
                s->sampling.n_logit_bias = (uint16_t) (1 + rnd() % 3);
                for (e = 0; e < s->sampling.n_logit_bias; e++) {
                    s->sampling.logit_bias[e].token = (int32_t) (rnd() % 1000);
                    s->sampling.logit_bias[e].bias = 0.0f;
                }
            }
            s->n_prompt_tokens = 1 + rnd() % 16;
            s->n_guided = 0;
            for (e = 0; e < s->n_prompt_tokens; e++) {
                kimi_shm_prompt(&h->shm, slot)[e] = (int32_t) (rnd() % 1000);
            }
            s->rank = 0;
            s->kind = 0;
            atomic_store(&s->state, KIMI_SLOT_SUBMITTED);
            kimi_shm_ring_push(&h->shm, ring,
                KIMI_SHM_ENTRY(slot, s->generation & KIMI_SHM_GEN_MASK));
            break;

        case 3:     /* flip the state word of one of ours */
            slot = (uint32_t) held[rnd() % n_held];
            atomic_store(&kimi_shm_slot(&h->shm, slot)->state, rnd() % 9);
            break;

        case 4:     /* change the generation under the engine */
            slot = (uint32_t) held[rnd() % n_held];
            kimi_shm_slot(&h->shm, slot)->generation = rnd();
            break;

        case 5:     /* consume tokens, sometimes too many */
            slot = (uint32_t) held[rnd() % n_held];
            s = kimi_shm_slot(&h->shm, slot);
            if (rnd() % 4 == 0) {
                atomic_store(&s->tok_tail, rnd());
            } else {
                int  av = kimi_shm_tok_available(s);
                if (av > 0) {
                    kimi_shm_tok_consume(s, (uint32_t) av);
                }
            }
            break;

        case 6:     /* abandon */
            slot = (uint32_t) held[rnd() % n_held];
            kimi_shm_slot_release(&h->shm, slot);
            break;

        default:    /* claim ownership we do not have */
            slot = (uint32_t) held[rnd() % n_held];
            kimi_shm_slot(&h->shm, slot)->owner_worker = rnd() % 200;
            break;
        }
    }

    kc_ring_engine(h);
}


/*
 * The good worker keeps one slot for all its requests: nothing in shared
 * memory stops a peer from writing a slot index it no longer owns, so a
 * good worker that took a slot the hostile one had freed could be stomped
 * on; that is outside what the engine can prevent.  Re-owning the same
 * index (what slot_acquire does, minus the scan) keeps the two apart, as
 * long as the hostile worker acquired all of its slots before: it never
 * acquires again, so it cannot catch ours in its FREE instant.
 */
static int32_t
reown(kc_t *c, int32_t slot)
{
    kimi_shm_slot_t  *s = kimi_shm_slot(&c->shm, (uint32_t) slot);

    if (kimi_shm_slot_release(&c->shm, (uint32_t) slot) != 0
        || !kimi_shm_slot_cas(s, KIMI_SLOT_FREE, KIMI_SLOT_OWNED))
    {
        return -1;
    }

    s->generation++;
    atomic_store(&s->notify_pending, 0);
    s->owner_pid = c->pid;
    s->owner_worker = (uint32_t) c->worker;
    s->reject_status = 0;
    s->finish_reason = 0;
    s->n_output_tokens = 0;
    s->message[0] = '\0';
    atomic_store(&s->tok_head, 0);
    atomic_store(&s->tok_tail, 0);

    return slot;
}


int
main(void)
{
    int                  status, i, n, good = 1, n_good;
    char                 dir[] = "/tmp/kimi-engine-fuzz-XXXXXX";
    char                 script[600], log[600];
    pid_t                engine;
    kc_t                 h, g;
    int32_t              held[8], slot, tok[16], mine;
    kimi_shm_sampling_t  sp;
    const char          *body = "{\"replies\": [{\"tokens\": [10, 11, 12]}]}";
    static const int32_t prompt[] = { 5, 6, 7 };

    if (kc_workdir(dir, body, script, sizeof(script), log, sizeof(log))
        != 0)
    {
        return 1;
    }

    char  *args[] = {
        (char *) "--backend", (char *) "replay",
        (char *) "--replay-script", script,
        (char *) "--replay-delay-ms", (char *) "0",
        (char *) "--max-model-len", (char *) "256",
        (char *) "--max-num-seqs", (char *) "8",
        (char *) "--max-waiting", (char *) "8",
        (char *) "--max-slots", (char *) "32",
        (char *) "--log-level", (char *) "warn",
        NULL
    };

    engine = kc_engine_start(dir, log, args);
    if (engine < 0 || kc_connect(&g, dir) != 0) {
        printf("Bail out! kimi-engine did not start (log %s)\n", log);
        return 1;
    }

    mine = kimi_shm_slot_acquire(&g.shm, (uint32_t) g.worker, g.pid);

    /* the hostile worker is its own process, as an nginx worker is: its
     * death (and only that) lets the engine take back what it scribbled */
    int    go[2], done[2];
    pid_t  hostile;

    if (pipe(go) != 0 || pipe(done) != 0) {
        printf("Bail out! pipe\n");
        return 1;
    }

    hostile = fork();
    if (hostile == 0) {
        char  c;

        close(go[1]);
        close(done[0]);
        if (kc_connect(&h, dir) != 0) {
            _exit(2);
        }
        for (i = 0; i < 8; i++) {
            held[i] = kimi_shm_slot_acquire(&h.shm, (uint32_t) h.worker,
                                            h.pid);
        }
        if (held[7] < 0 || write(done[1], "r", 1) != 1) {
            _exit(3);
        }
        /* until the parent closes the pipe */
        for (i = 0; ; i++) {
            struct pollfd  pfd = { go[0], POLLIN, 0 };

            mischief(&h, held, 8);
            if (i % 10 == 0) {
                usleep(200);
            }
            if (i == 3000 && write(done[1], "d", 1) != 1) {
                _exit(4);
            }
            if (poll(&pfd, 1, 0) == 1 && read(go[0], &c, 1) == 0) {
                _exit(0);
            }
        }
    }
    close(go[0]);
    close(done[1]);

    /* its slots are taken before ours start cycling (see reown()) */
    char  r;
    if (read(done[0], &r, 1) != 1) {
        printf("Bail out! the hostile worker did not start\n");
        return 1;
    }

    /* serve the good worker until the hostile one did 3000 rounds */
    for (n_good = 0; ; n_good++) {
        struct pollfd  pfd = { done[0], POLLIN, 0 };

        if (poll(&pfd, 1, 0) == 1) {
            break;
        }

        sp = kc_sampling(10);
        slot = n_good == 0 ? mine : reown(&g, mine);
        if (slot >= 0) {
            kc_submit_slot(&g, slot, prompt, 3, &sp, "good");
        }
        n = slot >= 0 ? kc_collect(&g, slot, tok, 16, 2000) : 0;
        if (slot < 0 || n != 4 || tok[0] != 10 || tok[2] != 12
            || kc_state(&g, slot) != KIMI_SLOT_DONE)
        {
            printf("# good request %d: slot %d, %d tokens, state %u,"
                   " status %u \"%s\"\n", n_good, slot, n,
                   slot >= 0 ? kc_state(&g, slot) : 99,
                   slot >= 0 ? kimi_shm_slot(&g.shm, (uint32_t) slot)
                                   ->reject_status : 0,
                   slot >= 0 ? kimi_shm_slot(&g.shm, (uint32_t) slot)
                                   ->message : "");
            good = 0;
        }
    }

    kimi_shm_slot_release(&g.shm, (uint32_t) mine);

    close(go[1]);
    waitpid(hostile, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
       "the hostile worker ran its mischief and exited");
    ok(waitpid(engine, &status, WNOHANG) == 0,
       "engine survived a hostile worker");
    ok(good && n_good > 0, "a good worker beside it was served exactly"
       " throughout (%d requests)", n_good);
    ok(kc_log_has(log, "bogus submissions so far: 1)", 10)
       && !kc_log_has(log, "bogus submissions so far: 11)", 10),
       "bogus submissions are logged, but not each one");

    uint64_t  t0 = kimi_shm_now_ns();
    int       n_busy;
    do {
        usleep(20000);
        n_busy = 0;
        for (i = 0; i < (int) g.shm.n_slots; i++) {
            n_busy += atomic_load(&kimi_shm_slot(&g.shm, (uint32_t) i)->state)
                      != KIMI_SLOT_FREE;
        }
    } while (n_busy > 0 && kimi_shm_now_ns() - t0 < 3000000000ull);

    for (i = 0; n_busy && i < (int) g.shm.n_slots; i++) {
        kimi_shm_slot_t  *bs = kimi_shm_slot(&g.shm, (uint32_t) i);
        if (atomic_load(&bs->state) != KIMI_SLOT_FREE) {
            printf("# busy slot %d: state %u owner %u/%d gen %u\n", i,
                   atomic_load(&bs->state), bs->owner_worker,
                   (int) bs->owner_pid, bs->generation);
        }
    }
    ok(n_busy == 0, "after it died every slot is FREE again (%d busy,"
       " %.0f ms)", n_busy, (double) (kimi_shm_now_ns() - t0) / 1e6);

    sp = kc_sampling(10);
    slot = kc_submit(&g, prompt, 3, &sp, "after");
    n = kc_collect(&g, slot, tok, 16, 2000);
    ok(n == 4 && tok[3] == 163586, "and the engine still serves");

    kill(engine, SIGTERM);
    waitpid(engine, &status, 0);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "engine exits 0");

    printf("1..%d\n", test_n);

    kc_workdir_done(dir, log, test_failed);

    return test_failed ? 1 : 0;
}
