/*
 * Admission and delivery: submitted slots in, tokens and results out.
 *
 * Owns:   validation of every slot field the engine reads, the move
 *         SUBMITTED -> ACCEPTED | REJECTED, the scheduler sink (tokens into
 *         the slot's token ring, DONE with finish reason and usage),
 *         cancellation of ABANDONED slots, srv->seqs and srv->active.
 * Never:  reads a slot field twice and trusts both reads (the prompt and
 *         sampling are copied once, then checked), writes the worker's
 *         "request" fields, or frees a slot the worker still holds.
 * Holds:  seqs[i].active == 1 exactly while slot i's sequence is in the
 *         scheduler; the scheduler's finish() is its only way out.
 */

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "server_impl.h"
#include "../common/kimi_log.h"
#include "../sample/sample.h"


static void
kimi_srv_active_add(kimi_server_t *srv, kimi_srv_seq_t *q)
{
    q->active = 1;
    q->active_pos = srv->n_active;
    srv->active[srv->n_active++] = q->slot;
}


static void
kimi_srv_active_remove(kimi_server_t *srv, kimi_srv_seq_t *q)
{
    uint32_t  last;

    if (!q->active) {
        return;
    }

    last = srv->active[--srv->n_active];
    srv->active[q->active_pos] = last;
    srv->seqs[last].active_pos = q->active_pos;
    q->active = 0;
}


static void
kimi_srv_reject(kimi_server_t *srv, uint32_t worker, uint32_t slot,
    uint32_t generation, uint32_t status, const char *request_id,
    const char *msg)
{
    kimi_shm_slot_t  *s = kimi_shm_slot(&srv->shm, slot);

    s->reject_status = status;
    snprintf(s->message, sizeof(s->message), "%s", msg);

    kimi_log(KIMI_LOG_INFO, "request rejected slot=%u request_id=%s"
             " status=%u message=\"%s\"", slot, request_id, status, msg);

    if (kimi_shm_slot_cas(s, KIMI_SLOT_SUBMITTED, KIMI_SLOT_REJECTED)) {
        kimi_srv_notify(srv, worker, slot, generation);
        return;
    }

    /* released while we looked at it: nobody wants the answer */
    (void) kimi_shm_slot_cas(s, KIMI_SLOT_ABANDONED, KIMI_SLOT_FREE);
}


/* Checks the copied request; 0 or an HTTP status with msg filled. */
static uint32_t
kimi_srv_validate(kimi_server_t *srv, uint32_t rank, uint32_t kind,
    const kimi_shm_sampling_t *sp, const int32_t *prompt, uint32_t n_prompt,
    char *msg, size_t len)
{
    uint32_t    i, vocab = srv->p.vocab_size;
    kimi_err_t  err;

    if (rank != srv->p.rank) {
        snprintf(msg, len, "request for rank %u reached rank %u", rank,
                 srv->p.rank);
        return 400;
    }

    if (kind != KIMI_REQ_GENERATE) {
        snprintf(msg, len, "unknown request kind %u", kind);
        return 400;
    }

    if (n_prompt == 0) {
        snprintf(msg, len, "the prompt is empty");
        return 400;
    }

    for (i = 0; i < n_prompt; i++) {
        if (prompt[i] < 0 || (uint32_t) prompt[i] >= vocab) {
            snprintf(msg, len, "prompt token %u has id %d, outside the"
                     " vocabulary [0, %u)", i, prompt[i], vocab);
            return 400;
        }
    }

    if (kimi_sample_params_check(sp, vocab, &err) != 0) {
        /* sampling messages are short; cut, never overrun */
        i = (uint32_t) strnlen(err.msg, len - 1);
        memcpy(msg, err.msg, i);
        msg[i] = '\0';
        return 400;
    }

    return 0;
}


/* A bogus submission is the peer's bug: say so, but not 10^6 times. */
static int
kimi_srv_bad_worth_logging(kimi_server_t *srv, uint32_t w)
{
    int32_t  ci = srv->worker_conn[w];
    uint64_t n;

    if (ci < 0) {
        return 0;
    }

    n = ++srv->conns[ci].n_bad;

    return n <= 10 || n % 10000 == 0;
}


static void
kimi_srv_admit(kimi_server_t *srv, uint32_t w, int32_t pid, uint32_t entry)
{
    char                 msg[KIMI_SHM_MSG_LEN], rid[KIMI_SHM_REQUEST_ID_LEN];
    uint32_t             idx, gen, st, status, rank, kind, n_prompt, n_guided,
                         n_bad;
    kimi_err_t           err;
    kimi_srv_seq_t      *q;
    kimi_seq_desc_t      desc;
    kimi_shm_slot_t     *s;
    uint64_t             salt;
    kimi_shm_sampling_t  sp;

    idx = KIMI_SHM_ENTRY_SLOT(entry);
    s = kimi_shm_slot(&srv->shm, idx);
    if (s == NULL) {
        if (kimi_srv_bad_worth_logging(srv, w)) {
            kimi_log(KIMI_LOG_WARN, "worker=%u submitted slot %u, segment has"
                     " %u slots (bogus submissions so far: %llu)", w, idx,
                     srv->shm.n_slots, (unsigned long long)
                     srv->conns[srv->worker_conn[w]].n_bad);
        }
        return;
    }

    st = atomic_load_explicit(&s->state, memory_order_acquire);
    gen = s->generation;

    if ((gen & KIMI_SHM_GEN_MASK) != KIMI_SHM_ENTRY_GEN(entry)) {
        kimi_log_debug("stale submission slot=%u gen=%u entry_gen=%u", idx,
                       gen, KIMI_SHM_ENTRY_GEN(entry));
        return;
    }

    if (s->owner_worker != w || s->owner_pid != pid) {
        if (kimi_srv_bad_worth_logging(srv, w)) {
            kimi_log(KIMI_LOG_WARN, "worker=%u pid=%d submitted slot=%u owned"
                     " by worker=%u pid=%d: ignored (bogus submissions so"
                     " far: %llu)", w, (int) pid, idx, s->owner_worker,
                     (int) s->owner_pid, (unsigned long long)
                     srv->conns[srv->worker_conn[w]].n_bad);
        }
        return;
    }

    q = &srv->seqs[idx];

    if (st == KIMI_SLOT_ABANDONED) {
        if (q->active) {
            kimi_sched_cancel(srv->sched, q->seq_id);
        } else {
            (void) kimi_shm_slot_cas(s, KIMI_SLOT_ABANDONED, KIMI_SLOT_FREE);
        }
        return;
    }

    if (st != KIMI_SLOT_SUBMITTED || q->active) {
        kimi_log_debug("submission slot=%u in state %u ignored", idx, st);
        return;
    }

    /* one copy of everything, then checks on the copy: the peer may keep
     * writing the slot, we never read it again */
    rank = s->rank;
    kind = s->kind;
    n_prompt = s->n_prompt_tokens;
    n_guided = s->n_guided;
    n_bad = s->n_bad_words;
    sp = s->sampling;
    salt = s->cache_salt;
    memcpy(rid, s->request_id, sizeof(rid));
    rid[sizeof(rid) - 1] = '\0';

    if (n_prompt > srv->shm.slot_prompt_capacity
        || n_guided > srv->shm.slot_prompt_capacity - n_prompt
        || n_bad > srv->shm.slot_prompt_capacity - n_prompt - n_guided)
    {
        snprintf(msg, sizeof(msg), "prompt of %u tokens (and %u words of"
                 " guided_choice or JSON schema, %u of bad_words) exceeds the"
                 " slot capacity of %u tokens",
                 n_prompt, n_guided, n_bad, srv->shm.slot_prompt_capacity);
        kimi_srv_reject(srv, w, idx, gen, 400, rid, msg);
        return;
    }

    memcpy(srv->prompt_scratch, kimi_shm_prompt(&srv->shm, idx),
           (size_t) (n_prompt + n_guided + n_bad) * sizeof(int32_t));

    status = kimi_srv_validate(srv, rank, kind, &sp, srv->prompt_scratch,
                               n_prompt, msg, sizeof(msg));
    if (status != 0) {
        kimi_srv_reject(srv, w, idx, gen, status, rid, msg);
        return;
    }

    if (srv->draining) {
        kimi_srv_reject(srv, w, idx, gen, 503, rid,
                        "the engine is shutting down");
        return;
    }

    q->seq_id = ++srv->next_seq_id;
    q->accept_ns = kimi_shm_now_ns();
    q->slot = idx;
    q->generation = gen;
    q->worker = w;
    q->owner_pid = pid;
    q->n_output = 0;
    memcpy(q->request_id, rid, sizeof(rid));

    desc.seq_id = q->seq_id;
    desc.prompt = srv->prompt_scratch;
    desc.n_prompt = n_prompt;
    desc.sampling = sp;
    desc.guided = n_guided ? srv->prompt_scratch + n_prompt : NULL;
    desc.n_guided = n_guided;
    desc.bad = n_bad ? srv->prompt_scratch + n_prompt + n_guided : NULL;
    desc.n_bad = n_bad;
    desc.cache_salt = salt;
    desc.user = q;

    /* active before add: the sink may be called from inside it */
    kimi_srv_active_add(srv, q);

    if (kimi_sched_add(srv->sched, &desc, &err) != 0) {
        kimi_srv_active_remove(srv, q);
        status = err.code == KIMI_EINVAL ? 400
                 : err.code == KIMI_EFULL ? 429 : 503;
        kimi_srv_reject(srv, w, idx, gen, status, rid, err.msg);
        return;
    }

    s->queue_ns = 0;
    s->first_token_ns = 0;

    if (!kimi_shm_slot_cas(s, KIMI_SLOT_SUBMITTED, KIMI_SLOT_ACCEPTED)) {
        /* abandoned between our look and now */
        kimi_sched_cancel(srv->sched, q->seq_id);
        return;
    }

    kimi_log_debug("sequence accepted seq=%llu slot=%u request_id=%s"
                   " n_prompt=%u max_tokens=%u",
                   (unsigned long long) q->seq_id, idx, rid, n_prompt,
                   sp.max_tokens);

    kimi_srv_notify(srv, w, idx, gen);
}


void
kimi_srv_drain_submissions(kimi_server_t *srv)
{
    int               rc;
    int32_t           ci;
    uint32_t          w, entry, n;
    kimi_shm_ring_t  *ring;

    srv->wake = 0;

    for (w = 0; w < KIMI_SHM_MAX_WORKERS; w++) {
        ci = srv->worker_conn[w];
        if (ci < 0) {
            continue;
        }

        ring = kimi_shm_ring(&srv->shm, w, srv->p.rank, KIMI_SHM_RING_SUBMIT);

        /* bounded, so a peer pushing without end cannot starve the loop */
        for (n = 0; n < srv->shm.ring_capacity; n++) {
            rc = kimi_shm_ring_pop(&srv->shm, ring, &entry);
            if (rc == 0) {
                break;
            }

            if (rc < 0) {
                kimi_log(KIMI_LOG_ERR, "submission ring of worker=%u pid=%d"
                         " is corrupt (head %u, tail %u): dropping the"
                         " worker", w, (int) srv->conns[ci].pid,
                         atomic_load(&ring->head), atomic_load(&ring->tail));
                kimi_srv_conn_drop(srv, (uint32_t) ci, "corrupt ring");
                break;
            }

            kimi_srv_admit(srv, w, srv->conns[ci].pid, entry);

            if (srv->worker_conn[w] != ci) {
                break;
            }
        }

        if (n == srv->shm.ring_capacity) {
            srv->wake = 1;      /* more left: come back next turn */
        }
    }
}


void
kimi_srv_check_abandoned(kimi_server_t *srv)
{
    uint32_t          i;
    kimi_srv_seq_t   *q;
    kimi_shm_slot_t  *s;

    /* backwards: cancel() swaps the last entry into position i */
    for (i = srv->n_active; i-- > 0; ) {
        q = &srv->seqs[srv->active[i]];
        s = kimi_shm_slot(&srv->shm, q->slot);

        /* ABANDONED is the normal way; any other state or generation
         * means the worker rewrote a slot we hold: stop writing into it */
        if (atomic_load_explicit(&s->state, memory_order_acquire)
            != KIMI_SLOT_ACCEPTED || s->generation != q->generation)
        {
            kimi_sched_cancel(srv->sched, q->seq_id);

            if (q->active) {
                /* the scheduler did not know it: finish it ourselves */
                kimi_log(KIMI_LOG_ERR, "scheduler lost seq=%llu slot=%u",
                         (unsigned long long) q->seq_id, q->slot);
                kimi_srv_active_remove(srv, q);
                (void) kimi_shm_slot_cas(s, KIMI_SLOT_ABANDONED,
                                         KIMI_SLOT_FREE);
            }
        }
    }
}


/* A dead worker's slot: whatever its state, it ends FREE. */
void
kimi_srv_release_slot(kimi_server_t *srv, uint32_t slot)
{
    uint32_t          st;
    kimi_srv_seq_t   *q = &srv->seqs[slot];
    kimi_shm_slot_t  *s = kimi_shm_slot(&srv->shm, slot);

    for ( ;; ) {
        st = atomic_load_explicit(&s->state, memory_order_acquire);

        if (q->active) {
            /* the sequence finishes into FREE through the sink */
            if (st == KIMI_SLOT_ACCEPTED
                && !kimi_shm_slot_cas(s, st, KIMI_SLOT_ABANDONED))
            {
                continue;
            }
            kimi_sched_cancel(srv->sched, q->seq_id);
            if (q->active) {
                kimi_srv_active_remove(srv, q);
                (void) kimi_shm_slot_cas(s, KIMI_SLOT_ABANDONED,
                                         KIMI_SLOT_FREE);
            }
            return;
        }

        if (st == KIMI_SLOT_FREE || kimi_shm_slot_cas(s, st, KIMI_SLOT_FREE)) {
            return;
        }
    }
}


/* ---- scheduler sink ------------------------------------------------------ */

static int
kimi_srv_can_emit(void *ctx, void *user)
{
    kimi_server_t    *srv = ctx;
    kimi_srv_seq_t   *q = user;
    kimi_shm_slot_t  *s = kimi_shm_slot(&srv->shm, q->slot);

    /* a slot no longer ACCEPTED for our generation gets no more tokens;
     * check_abandoned() cancels its sequence after the step */
    return atomic_load_explicit(&s->state, memory_order_acquire)
               == KIMI_SLOT_ACCEPTED
           && s->generation == q->generation
           && kimi_shm_tok_space(s) > 0;
}


static void
kimi_srv_emit(void *ctx, void *user, const kimi_shm_token_t *tok)
{
    kimi_server_t    *srv = ctx;
    kimi_srv_seq_t   *q = user;
    kimi_shm_slot_t  *s = kimi_shm_slot(&srv->shm, q->slot);

    if (kimi_shm_tok_space(s) == 0) {
        /* the scheduler asked can_emit first; a full ring here is a bug */
        kimi_log(KIMI_LOG_ERR, "token ring of slot=%u full, token dropped",
                 q->slot);
        return;
    }

    if (q->n_output == 0) {
        s->first_token_ns = kimi_shm_now_ns();
    }

    kimi_shm_tok_push(s, tok);
    s->n_output_tokens = ++q->n_output;

    kimi_srv_notify(srv, q->worker, q->slot, q->generation);
}


static void
kimi_srv_emit_prompt(void *ctx, void *user, const kimi_shm_token_t *tok)
{
    kimi_server_t    *srv = ctx;
    kimi_srv_seq_t   *q = user;
    kimi_shm_slot_t  *s = kimi_shm_slot(&srv->shm, q->slot);

    if (kimi_shm_tok_space(s) == 0) {
        kimi_log(KIMI_LOG_ERR, "token ring of slot=%u full, prompt entry "
                 "dropped", q->slot);
        return;
    }

    kimi_shm_tok_push(s, tok);
    kimi_srv_notify(srv, q->worker, q->slot, q->generation);
}


static void
kimi_srv_started(void *ctx, void *user, uint32_t n_cached)
{
    uint64_t          now, from;
    kimi_server_t    *srv = ctx;
    kimi_srv_seq_t   *q = user;
    kimi_shm_slot_t  *s = kimi_shm_slot(&srv->shm, q->slot);

    now = kimi_shm_now_ns();
    from = s->submit_ns;

    /* the worker's stamp, if it is plausible; else our accept time */
    if (from == 0 || from > now || q->accept_ns - from > 60000000000ull) {
        from = q->accept_ns;
    }

    s->queue_ns = now - from;
    s->n_prompt_cached = n_cached;
}


static const char *
kimi_srv_finish_name(kimi_finish_e reason)
{
    static const char *names[] = {
        "none", "stop", "length", "cancelled", "error", "abort"
    };

    return (unsigned) reason < sizeof(names) / sizeof(names[0])
           ? names[reason] : "unknown";
}


static void
kimi_srv_finish(void *ctx, void *user, kimi_finish_e reason,
    uint32_t n_output_tokens, const char *message)
{
    double            ms;
    kimi_server_t    *srv = ctx;
    kimi_srv_seq_t   *q = user;
    kimi_shm_slot_t  *s = kimi_shm_slot(&srv->shm, q->slot);

    kimi_srv_active_remove(srv, q);

    s->finish_reason = reason;
    s->n_output_tokens = n_output_tokens;
    if (message != NULL && message[0] != '\0') {
        snprintf(s->message, sizeof(s->message), "%s", message);
    }

    ms = (double) (kimi_shm_now_ns() - q->accept_ns) / 1e6;

    if (reason == KIMI_FINISH_CANCELLED) {
        kimi_log(KIMI_LOG_NOTICE, "sequence cancelled seq=%llu slot=%u"
                 " request_id=%s after_ms=%.1f n_output=%u",
                 (unsigned long long) q->seq_id, q->slot, q->request_id, ms,
                 n_output_tokens);

    } else {
        kimi_log(reason == KIMI_FINISH_ERROR || reason == KIMI_FINISH_ABORT
                 ? KIMI_LOG_WARN : KIMI_LOG_INFO,
                 "sequence finished seq=%llu slot=%u request_id=%s"
                 " reason=%s n_output=%u ms=%.1f%s%s%s",
                 (unsigned long long) q->seq_id, q->slot, q->request_id,
                 kimi_srv_finish_name(reason), n_output_tokens, ms,
                 message ? " message=\"" : "", message ? message : "",
                 message ? "\"" : "");
    }

    if (s->generation != q->generation) {
        return;         /* rewritten under us: not ours to move any more */
    }

    if (kimi_shm_slot_cas(s, KIMI_SLOT_ACCEPTED, KIMI_SLOT_DONE)) {
        kimi_srv_notify(srv, q->worker, q->slot, q->generation);
        return;
    }

    /* ABANDONED: the worker is gone from this slot; it is free again */
    (void) kimi_shm_slot_cas(s, KIMI_SLOT_ABANDONED, KIMI_SLOT_FREE);
}


kimi_sched_sink_t
kimi_srv_sink(kimi_server_t *srv)
{
    kimi_sched_sink_t  sink;

    sink.ctx = srv;
    sink.can_emit = kimi_srv_can_emit;
    sink.emit = kimi_srv_emit;
    sink.emit_prompt = kimi_srv_emit_prompt;
    sink.started = kimi_srv_started;
    sink.finish = kimi_srv_finish;

    return sink;
}
