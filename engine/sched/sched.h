/*
 * The scheduler: continuous batching over one backend.
 *
 * Owns:   waiting and running queues, chunked prefill under a token budget,
 *         the KV block tables (through engine/kv), preemption by recompute,
 *         sampling (host sampler, or the backend's own), stop conditions.
 * Never:  touches the shm segment, sockets or text.  Talks to the server
 *         only through the sink callbacks below, from the thread that
 *         calls kimi_sched_step() / _add() / _cancel() (one thread).
 */

#ifndef KIMI_SCHED_H
#define KIMI_SCHED_H

#include <stdint.h>

#include "../common/kimi_err.h"
#include "../backend/backend.h"
#include "../shm/kimi_shm.h"

typedef struct kimi_sched  kimi_sched_t;

typedef struct {
    uint32_t          max_num_seqs;            /* running sequences */
    uint32_t          max_num_batched_tokens;  /* tokens per step */
    uint32_t          max_model_len;           /* prompt + output limit */
    uint32_t          max_waiting;             /* queued beyond running */
    int               enable_chunked_prefill;  /* else a prompt must fit */
    kimi_kv_params_t  kv;
    const int32_t    *eos_ids;                 /* borrowed for sched life */
    uint32_t          n_eos;
} kimi_sched_params_t;

kimi_sched_params_t kimi_sched_default_params(void);

/* What the server hands over for one request.  prompt is copied. */
typedef struct {
    uint64_t                    seq_id;
    const int32_t              *prompt;
    uint32_t                    n_prompt;
    kimi_shm_sampling_t         sampling;
    void                       *user;          /* server's handle */
} kimi_seq_desc_t;

/* Server callbacks (called from inside step/add/cancel). */
typedef struct {
    void  *ctx;
    /* 1 if the sequence may take one more token now (room in its slot's
     * token ring); 0 pauses it for this step (client backpressure). */
    int   (*can_emit)(void *ctx, void *user);
    void  (*emit)(void *ctx, void *user, const kimi_shm_token_t *tok);
    /* first time the sequence is scheduled (queue time ends) */
    void  (*started)(void *ctx, void *user);
    /* last call for this sequence; user is not used again */
    void  (*finish)(void *ctx, void *user, kimi_finish_e reason,
                    uint32_t n_output_tokens, const char *message);
} kimi_sched_sink_t;

typedef struct {
    uint32_t  num_running;
    uint32_t  num_waiting;
    uint32_t  kv_blocks_used;
    uint32_t  kv_blocks_total;
    uint64_t  num_preemptions;
    uint64_t  prompt_tokens_total;       /* prefilled, incl. recompute */
    uint64_t  generation_tokens_total;
    uint64_t  last_step_us;              /* wall time of the last step */
    uint64_t  last_step_sched_us;        /* of which scheduling overhead */
} kimi_sched_stats_t;

/* backend is borrowed and must outlive the scheduler. */
int  kimi_sched_init(kimi_sched_t **out, const kimi_sched_params_t *params,
    kimi_backend_t *backend, const kimi_sched_sink_t *sink, kimi_err_t *err);
void kimi_sched_free(kimi_sched_t *s);                 /* NULL is a no-op */

/* Admission: KIMI_EINVAL (too long: message has vLLM's "maximum context
 * length is N tokens" wording), KIMI_EFULL (waiting queue full). */
int  kimi_sched_add(kimi_sched_t *s, const kimi_seq_desc_t *desc,
    kimi_err_t *err);

/* Drops the sequence now (frees its blocks) and calls finish(CANCELLED).
 * Unknown ids are ignored. */
void kimi_sched_cancel(kimi_sched_t *s, uint64_t seq_id);

/* Ends every sequence with reason (drain timeout, shutdown). */
void kimi_sched_abort_all(kimi_sched_t *s, kimi_finish_e reason,
    const char *message);

/* One step: schedule, forward, sample, emit.  Returns the number of
 * sequences that made progress (0: nothing runnable), or an error, after
 * which every running sequence has been finished with KIMI_FINISH_ERROR. */
int  kimi_sched_step(kimi_sched_t *s, kimi_err_t *err);

int  kimi_sched_has_work(const kimi_sched_t *s);
void kimi_sched_stats(const kimi_sched_t *s, kimi_sched_stats_t *out);

#endif
