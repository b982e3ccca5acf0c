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
    int               enable_prefix_caching;   /* reuse computed blocks of a
                                                  shared prefix (kv.h) */
    kimi_kv_params_t  kv;
    const int32_t    *eos_ids;                 /* borrowed for sched life */
    uint32_t          n_eos;
    const struct kimi_tokenizer *tokenizer;    /* borrowed; token bytes for
                                                  JSON mode, NULL: such
                                                  requests are refused */
    /* added by sched: */
    uint32_t          logprobs_mode;           /* kimi_logprobs_mode_e:
                                                  0 raw (vLLM default) */
    uint64_t          seed;                    /* seeds unseeded requests'
                                                  RNGs; 0 = from the clock */
    int               lockstep;                /* every step calls forward,
                                                  with an empty batch if
                                                  need be: peers (expert
                                                  parallel) step with us */
} kimi_sched_params_t;

kimi_sched_params_t kimi_sched_default_params(void);

/* What the server hands over for one request.  prompt is copied. */
typedef struct {
    uint64_t                    seq_id;
    const int32_t              *prompt;
    uint32_t                    n_prompt;
    kimi_shm_sampling_t         sampling;
    const int32_t              *guided;        /* guided_choice words (see
                                                  kimi_shm_slot_t.n_guided),
                                                  copied; NULL: none */
    uint32_t                    n_guided;
    const int32_t              *bad;           /* bad_words words (see
                                                  kimi_shm_slot_t.n_bad_words),
                                                  copied; NULL: none */
    uint32_t                    n_bad;
    uint64_t                    cache_salt;    /* prefix-cache namespace: the
                                                  hash chain of its blocks
                                                  starts here (0: shared) */
    void                       *user;          /* server's handle */
} kimi_seq_desc_t;

/*
 * Server callbacks (called from inside step/add/cancel).
 *
 * Added by sched, the behaviour the server can rely on:
 *  - a callback may call kimi_sched_add(), _cancel() and _abort_all();
 *    inside kimi_sched_step() a cancel or abort is applied (blocks freed,
 *    finish called) before the step returns, never under the caller;
 *  - emit() comes only in a step where can_emit() said 1 for that
 *    sequence; a stop or eos token is emitted, then finish(STOP) (vLLM
 *    counts it in completion_tokens; the gateway hides special tokens);
 *  - n_output_tokens in finish() counts every token emitted;
 *  - sampling.max_tokens 0 means "up to max_model_len", as OpenAI's API
 *    does when max_tokens is absent; finish is then LENGTH at the limit.
 */
typedef struct {
    void  *ctx;
    /* 1 if the sequence may take one more token now (room in its slot's
     * token ring); 0 pauses it for this step (client backpressure). */
    int   (*can_emit)(void *ctx, void *user);
    void  (*emit)(void *ctx, void *user, const kimi_shm_token_t *tok);
    /* sampling.prompt_logprobs: the entry of prompt token k + 1 (k = 0, 1,
     * ...), before any emit(); the same can_emit() rule; not a generated
     * token (neither counted in n_output_tokens nor the first token) */
    void  (*emit_prompt)(void *ctx, void *user, const kimi_shm_token_t *tok);
    /* first time the sequence is scheduled (queue time ends); n_cached
     * prompt tokens came from the prefix cache */
    void  (*started)(void *ctx, void *user, uint32_t n_cached);
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
    /* added by sched: */
    uint64_t  last_step_forward_us;      /* of which backend forward */
    uint64_t  last_step_sample_us;       /* of which sampling */
    uint32_t  last_step_n_seqs;          /* sequences in the last batch */
    uint32_t  last_step_n_tokens;        /* tokens in the last batch */
    uint32_t  max_model_len;             /* in force (params or backend) */
    uint32_t  block_size;
    uint64_t  last_step_sched_ns;        /* last_step_sched_us, finer */
} kimi_sched_stats_t;

/* backend is borrowed and must outlive the scheduler. */
int  kimi_sched_init(kimi_sched_t **out, const kimi_sched_params_t *params,
    kimi_backend_t *backend, const kimi_sched_sink_t *sink, kimi_err_t *err);
void kimi_sched_free(kimi_sched_t *s);                 /* NULL is a no-op */

/* Admission: KIMI_EINVAL (too long: message has vLLM's "maximum context
 * length is N tokens" wording), KIMI_EFULL (waiting queue full). */
/* Added by sched: KIMI_EINVAL also for an empty prompt, a prompt token
 * outside the vocabulary, sampling parameters outside vLLM's ranges, a
 * duplicate seq_id, a request longer than the whole KV cache, and (with
 * chunked prefill off) a prompt over max_num_batched_tokens.  The queue is
 * full when running + waiting reaches max_num_seqs + max_waiting. */
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
