/*
 * Engine-side token times for the gateway benchmark: a read-only watcher
 * of the shared-memory contract (kimi_shm.h).
 *
 * Owns:   one thread that watches the slots, keyed by the slot's
 *         request_id (the response "id" the client sees in every chunk):
 *         the engine's first-token stamp of each request, and (spin) the
 *         time interval in which each token's tok_head moved.
 * Never:  writes to the segment (kimi_shm_attach() maps it read-write; we
 *         only load), takes a slot, or rings a doorbell: the
 *         engine and nginx cannot tell it is there, except for the CPU
 *         core it spins on (kimi-bench prints that core's share).
 *
 * Two figures.  First-token latency, always: the engine stamps
 * slot.first_token_ns (CLOCK_MONOTONIC) just before it publishes token 0,
 * so client read - that stamp is exact; the thread only polls (every
 * 100 us) to copy it before the slot is reused, and costs next to no CPU.
 * Per-token latency, with spin: the thread spins over the token rings.
 *
 * Accuracy (spin): each look at a slot reads the clock before and after loading
 * tok_head, so a new token's publish time lies between the previous
 * look's "before" and this look's "after", even if the thread was
 * preempted in between (on a busy machine it often is).  join() keeps the
 * tokens whose interval is narrow (--observer-max-width-us, 10 us) and
 * reports how many qualified; a stamp taken at "now" without the interval
 * would be late by the preemption and could even make the latency look
 * negative.  Active slots are polled every pass, the whole table is
 * rescanned every 1 ms to find new ones.
 */

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shm/kimi_shm.h"
#include "bench.h"

#define BENCH_OBS_RESCAN_NS  1000000ULL

/* token k of a request was published in (lo_ns[k], hi_ns[k]] */
typedef struct {
    char       id[KIMI_SHM_REQUEST_ID_LEN];
    uint32_t   first_k;          /* index of lo_ns[0] in the request */
    uint64_t   first_ns;         /* the engine's slot.first_token_ns */
    uint64_t  *lo_ns;
    uint64_t  *hi_ns;
    uint32_t   n;
    uint32_t   cap;
} bench_obs_req_t;

typedef struct {
    uint32_t   generation;
    uint32_t   head;             /* tokens seen */
    int32_t    req;              /* index into reqs, -1: none */
    int        active;
    uint64_t   last_look_ns;     /* clock read before the last head load */
} bench_obs_slot_t;

struct bench_observer {
    kimi_shm_t          shm;
    pthread_t           thread;
    int                 running;
    int                 spin;             /* per-token intervals */
    atomic_int          stop;
    bench_obs_slot_t   *slots;
    uint32_t           *active;
    uint32_t            n_active;
    bench_obs_req_t    *reqs;
    size_t              n_reqs;
    size_t              cap_reqs;
    uint64_t            passes;           /* with live slots */
    uint64_t            busy_ns;          /* in those passes */
    uint64_t            max_pass_ns;
    uint64_t            cpu_ns;           /* thread CPU time */
    int                 oom;
};


static uint64_t
bench_obs_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}


static int32_t
bench_obs_new_req(bench_observer_t *ob, const kimi_shm_slot_t *s,
    uint32_t first_k)
{
    bench_obs_req_t  *grown, *r;
    size_t            cap;

    if (ob->n_reqs == ob->cap_reqs) {
        cap = ob->cap_reqs ? ob->cap_reqs * 2 : 1024;
        grown = realloc(ob->reqs, cap * sizeof(*grown));
        if (grown == NULL) {
            ob->oom = 1;
            return -1;
        }
        ob->reqs = grown;
        ob->cap_reqs = cap;
    }

    r = &ob->reqs[ob->n_reqs];
    memset(r, 0, sizeof(*r));
    memcpy(r->id, s->request_id, sizeof(r->id));
    r->id[sizeof(r->id) - 1] = '\0';
    r->first_k = first_k;

    return (int32_t) ob->n_reqs++;
}


/*
 * One look at slot i.  The clock is read before and after the load of
 * tok_head, so a token first seen now was published after the previous
 * look's "before" and before this look's "after": the interval is exact
 * whatever preempted us in between, and join() keeps only narrow ones.
 */
static void
bench_obs_stamp(bench_observer_t *ob, uint32_t i)
{
    kimi_shm_slot_t   *s = kimi_shm_slot(&ob->shm, i);
    bench_obs_slot_t  *o = &ob->slots[i];
    bench_obs_req_t   *r;
    uint32_t           head, gen, k, cap;
    uint64_t          *lo, *hi, before, after, prev;

    before = bench_obs_now();
    head = atomic_load_explicit(&s->tok_head, memory_order_acquire);
    after = bench_obs_now();
    gen = s->generation;

    prev = o->last_look_ns;
    o->last_look_ns = before;

    if (gen != o->generation || head < o->head) {
        o->generation = gen;
        o->head = 0;
        o->req = -1;
        prev = 0;                     /* unknown: the slot was just reused */
    }
    if (head == o->head || head > o->head + (1u << 24)) {
        return;
    }

    if (o->req < 0) {
        o->req = bench_obs_new_req(ob, s, o->head);
        if (o->req < 0) {
            o->head = head;
            return;
        }
    }

    r = &ob->reqs[o->req];
    if (r->first_ns == 0) {
        /* stamped by the engine just before it pushed token 0; it stays
         * until the slot is acquired again, long after we look */
        r->first_ns = s->first_token_ns;
    }
    if (!ob->spin) {
        o->head = head;
        return;
    }

    for (k = o->head; k < head; k++) {
        if (r->n == r->cap) {
            cap = r->cap ? r->cap * 2 : 256;
            lo = realloc(r->lo_ns, cap * sizeof(uint64_t));
            if (lo != NULL) {
                r->lo_ns = lo;
            }
            hi = realloc(r->hi_ns, cap * sizeof(uint64_t));
            if (hi != NULL) {
                r->hi_ns = hi;
            }
            if (lo == NULL || hi == NULL) {
                ob->oom = 1;
                break;
            }
            r->cap = cap;
        }
        r->lo_ns[r->n] = prev;
        r->hi_ns[r->n] = after;
        r->n++;
    }
    o->head = head;
}


static void *
bench_obs_thread(void *arg)
{
    bench_observer_t  *ob = arg;
    kimi_shm_slot_t   *s;
    uint64_t           now, end, last_scan = 0;
    uint32_t           i, j, st;
    struct timespec    idle = { 0, 100000 }, cpu;

    while (!atomic_load_explicit(&ob->stop, memory_order_relaxed)) {
        now = bench_obs_now();

        if (now - last_scan >= BENCH_OBS_RESCAN_NS) {
            last_scan = now;
            ob->n_active = 0;
            for (i = 0; i < ob->shm.n_slots; i++) {
                s = kimi_shm_slot(&ob->shm, i);
                st = atomic_load_explicit(&s->state, memory_order_relaxed);
                ob->slots[i].active = st != KIMI_SLOT_FREE;
                if (ob->slots[i].active
                    || atomic_load_explicit(&s->tok_head,
                                            memory_order_relaxed)
                       != ob->slots[i].head)
                {
                    ob->active[ob->n_active++] = i;
                }
            }
        }

        for (j = 0; j < ob->n_active; j++) {
            bench_obs_stamp(ob, ob->active[j]);
        }

        /* resolution: how long a pass over live slots takes */
        if (ob->n_active > 0) {
            end = bench_obs_now();
            ob->busy_ns += end - now;
            ob->max_pass_ns = end - now > ob->max_pass_ns ? end - now
                                                          : ob->max_pass_ns;
            ob->passes++;
        }

        /* Without live slots, or when only the engine's first-token
         * stamps are wanted, leave the core to the others.  With live
         * slots in spin mode it spins: a yield would hand the core to any
         * runnable thread for a whole time slice and no interval would
         * stay narrow on a busy machine. */
        if (ob->n_active == 0 || !ob->spin) {
            nanosleep(&idle, NULL);
        }
    }

    /* its own CPU time, which kimi-bench takes out of the client's */
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) == 0) {
        ob->cpu_ns = (uint64_t) cpu.tv_sec * 1000000000ULL
                     + (uint64_t) cpu.tv_nsec;
    }

    return NULL;
}


int
bench_observer_start(bench_observer_t **out, const char *ipc_dir, int spin,
    kimi_err_t *err)
{
    bench_observer_t  *ob;
    int                rc;

    ob = calloc(1, sizeof(*ob));
    if (ob == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "observer");
    }

    ob->spin = spin;

    rc = kimi_shm_attach(&ob->shm, ipc_dir, err);
    if (rc != 0) {
        free(ob);
        return kimi_err_wrap(err, "--engine-ipc-dir \"%s\"", ipc_dir);
    }

    ob->slots = calloc(ob->shm.n_slots, sizeof(*ob->slots));
    ob->active = calloc(ob->shm.n_slots, sizeof(uint32_t));
    if (ob->slots == NULL || ob->active == NULL) {
        bench_observer_free(ob);
        return kimi_err_set(err, KIMI_ENOMEM, "observer of %u slots",
                            ob->shm.n_slots);
    }

    /* tokens already in flight belong to someone else's requests */
    for (uint32_t i = 0; i < ob->shm.n_slots; i++) {
        kimi_shm_slot_t  *s = kimi_shm_slot(&ob->shm, i);

        ob->slots[i].generation = s->generation;
        ob->slots[i].head = atomic_load(&s->tok_head);
        ob->slots[i].req = -1;
        ob->slots[i].last_look_ns = 0;
    }

    if (pthread_create(&ob->thread, NULL, bench_obs_thread, ob) != 0) {
        bench_observer_free(ob);
        return kimi_err_set(err, KIMI_EIO, "observer thread");
    }

    ob->running = 1;
    *out = ob;

    return 0;
}


void
bench_observer_stop(bench_observer_t *ob)
{
    if (ob != NULL && ob->running) {
        atomic_store(&ob->stop, 1);
        pthread_join(ob->thread, NULL);
        ob->running = 0;
    }
}


static int
bench_obs_cmp(const void *a, const void *b)
{
    return strcmp(((const bench_obs_req_t *) a)->id,
                  ((const bench_obs_req_t *) b)->id);
}


/*
 * Joins the client's events with the engine's publish intervals: the k-th
 * choices event of the request whose chunks carry "id" X is token k of
 * the slot whose request_id is X.  A token counts only when its publish
 * interval is at most max_width_us wide (the observer looked just before
 * and just after); its added latency is client read - interval midpoint,
 * exact to +- max_width_us / 2.
 */
int
bench_observer_join(bench_observer_t *ob, const bench_req_t *reqs, size_t n,
    double t0_abs, double max_width_us, bench_added_t *out)
{
    bench_obs_req_t   key, *hit;
    const bench_req_t *r;
    double            *added = NULL, t, *grown, lo, hi;
    size_t             i, j, n_added = 0, cap = 0;
    uint32_t           k;

    memset(out, 0, sizeof(*out));
    bench_observer_stop(ob);

    qsort(ob->reqs, ob->n_reqs, sizeof(*ob->reqs), bench_obs_cmp);

    for (i = 0; i < n; i++) {
        r = &reqs[i];
        if (!r->success || r->response_id[0] == '\0') {
            continue;
        }
        memcpy(key.id, r->response_id, sizeof(key.id));
        hit = bsearch(&key, ob->reqs, ob->n_reqs, sizeof(*ob->reqs),
                      bench_obs_cmp);
        if (hit == NULL) {
            out->n_unmatched_requests++;
            continue;
        }
        out->n_requests++;

        /* event j happened at start + ttft + itl[0..j-1] */
        t = t0_abs + r->start_s + r->ttft_s;

        if (hit->first_ns != 0 && out->n_first < n) {
            if (out->first_added_s == NULL) {
                out->first_added_s = malloc(n * sizeof(double));
                if (out->first_added_s == NULL) {
                    free(added);
                    return KIMI_ENOMEM;
                }
            }
            out->first_added_s[out->n_first++] =
                t - (double) hit->first_ns * 1e-9;
        }
        for (j = 0; j <= r->n_itl; j++) {
            if (j > 0) {
                t += r->itl_s[j - 1];
            }
            if (j < hit->first_k) {
                continue;
            }
            k = (uint32_t) j - hit->first_k;
            if (k >= hit->n) {
                break;
            }
            out->n_tokens++;

            if (hit->lo_ns[k] == 0
                || (double) (hit->hi_ns[k] - hit->lo_ns[k]) / 1000.0
                   > max_width_us)
            {
                continue;
            }
            lo = (double) hit->lo_ns[k] * 1e-9;
            hi = (double) hit->hi_ns[k] * 1e-9;

            if (n_added == cap) {
                cap = cap ? cap * 2 : 4096;
                grown = realloc(added, cap * sizeof(double));
                if (grown == NULL) {
                    free(added);
                    return KIMI_ENOMEM;
                }
                added = grown;
            }
            added[n_added++] = t - (lo + hi) / 2.0;
        }
        if (ob->spin && r->n_itl + 1 != hit->first_k + hit->n) {
            out->n_count_mismatch++;
        }

        /* the engine's own pace: first to last publish of this request */
        if (hit->n > 1) {
            out->engine_itl_s += (double) (hit->hi_ns[hit->n - 1]
                                           - hit->hi_ns[0]) * 1e-9
                                 / (hit->n - 1);
            out->n_engine_itl++;
        }
    }

    if (out->n_engine_itl > 0) {
        out->engine_itl_s /= out->n_engine_itl;
    }
    out->added_s = added;
    out->n = n_added;
    out->max_width_us = max_width_us;
    out->pass_us = ob->passes ? (double) ob->busy_ns / ob->passes / 1000.0
                              : 0.0;
    out->max_pass_us = (double) ob->max_pass_ns / 1000.0;
    out->observer_cpu_s = (double) ob->cpu_ns * 1e-9;

    return ob->oom ? KIMI_ENOMEM : 0;
}


void
bench_observer_free(bench_observer_t *ob)
{
    size_t  i;

    if (ob == NULL) {
        return;
    }

    bench_observer_stop(ob);
    for (i = 0; i < ob->n_reqs; i++) {
        free(ob->reqs[i].lo_ns);
        free(ob->reqs[i].hi_ns);
    }
    free(ob->reqs);
    free(ob->slots);
    free(ob->active);
    if (ob->shm.hdr != NULL) {
        kimi_shm_detach(&ob->shm);
    }
    free(ob);
}
