/*
 * The scheduler: continuous batching over one backend (see sched.h).
 *
 * Owns:   the sequences (prompt + output tokens, block table, RNG), the
 *         waiting and running queues, the id -> sequence map, the KV block
 *         allocator and the host sampler.
 * Never:  touches shm, sockets or text; blocks; fails a request because
 *         blocks ran out (it preempts instead).
 * Holds:  a live sequence always has n_computed < n_tokens: the tokens
 *         [n_computed, n_tokens) still need a forward pass, and the last
 *         one's logits give the next token.  A running sequence's block
 *         table covers at least n_computed tokens; a waiting one holds no
 *         blocks.  waiting is FIFO by arrival, preempted sequences go back
 *         to its front; running is ordered by admission, oldest first.
 *
 * One step: (1) decodes of running sequences, oldest first; (2) the next
 * prefill chunks of running sequences; (3) admission of waiting ones,
 * strictly FIFO, while the token budget, max_num_seqs and free blocks
 * allow.  When a running sequence needs a block and none is free, the
 * newest running sequence not yet in this step's batch is preempted by
 * recompute: its blocks are freed and it re-prefills prompt + output
 * later.  Scheduler thread only.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sched.h"
#include "../common/kimi_log.h"
#include "../kv/kv.h"
#include "../sample/sample.h"
#include "../sample/sample_pool.h"


typedef enum {
    KIMI_SEQ_WAITING = 0,
    KIMI_SEQ_RUNNING = 1,
} kimi_seq_state_e;

typedef struct kimi_seq  kimi_seq_t;

struct kimi_seq {
    uint64_t             id;
    void                *user;
    kimi_shm_sampling_t  sampling;
    int32_t             *tokens;       /* [cap]: prompt, then output */
    uint32_t             n_prompt;
    uint32_t             n_tokens;
    uint32_t             cap;          /* n_prompt + max_tokens */
    uint32_t             max_tokens;   /* in force (0 in the request: to
                                          max_model_len) */
    uint32_t             n_computed;   /* tokens whose KV is cached */
    uint32_t             n_hashed;     /* leading full blocks hashed (prefix
                                          cache); chain = the last's hash,
                                          salt before the first */
    uint64_t             chain;
    uint64_t             salt;         /* desc.cache_salt */
    uint32_t             n_cached;     /* prompt tokens the prefix cache
                                          served at the first start */
    uint32_t             n_sched;      /* tokens in this step's batch */
    uint64_t             step;         /* last step it was batched in */
    kimi_kv_table_t      table;
    kimi_rng_t           rng;
    kimi_seq_t          *prev;
    kimi_seq_t          *next;
    uint8_t              state;        /* kimi_seq_state_e */
    uint8_t              is_started;
    uint8_t              is_cancelled; /* cancel() during a step */
    uint8_t              is_bad_token; /* the sampler returned garbage */
    uint8_t              is_decode;    /* this step: 1 token after output */
    int32_t             *guided;       /* guided_choice words, or NULL */
    uint32_t             n_guided;
    int32_t             *bad;          /* bad_words words, or NULL */
    uint32_t             n_bad;
    uint32_t             n_lp_sent;    /* prompt_logprobs entries published:
                                          position n_lp_sent scores prompt
                                          token n_lp_sent + 1 next */
};

typedef struct {
    kimi_seq_t  *head;
    kimi_seq_t  *tail;
    uint32_t     n;
} kimi_seq_list_t;

struct kimi_sched {
    kimi_sched_params_t   params;
    kimi_backend_t       *backend;
    kimi_sched_sink_t     sink;
    kimi_kv_t            *kv;
    kimi_sample_pool_t   *sampler;       /* host sampling, rows in parallel */
    uint32_t              vocab;
    uint32_t              max_model_len;
    int32_t              *eos_ids;     /* copy of params.eos_ids */

    kimi_seq_list_t       waiting;
    kimi_seq_list_t       running;

    kimi_seq_t          **map;         /* open addressing by id */
    uint32_t              map_mask;

    /* per-step scratch, max_num_seqs entries each */
    kimi_seq_t          **snapshot;    /* running at step start */
    kimi_seq_t          **batched;     /* in this step's batch, in order */
    kimi_batch_seq_t     *bseqs;
    kimi_sample_req_t    *reqs;
    kimi_sample_out_t    *outs;
    uint32_t              n_batched;

    kimi_rng_t            rng;         /* seeds unseeded sequences */
    uint64_t              step;

    /* Inside a step, sink callbacks may call cancel()/abort_all(); the
     * step holds pointers to sequences, so those only mark them here and
     * the step ends them before it returns. */
    int                   in_step;
    uint32_t              n_cancel_pending;
    kimi_finish_e         abort_reason;   /* NONE: no abort pending */
    char                  abort_message[KIMI_SHM_MSG_LEN];

    kimi_sched_stats_t    stats;
};


static uint64_t
kimi_now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}


/* ---- lists and map --------------------------------------------------- */

static void
kimi_list_remove(kimi_seq_list_t *l, kimi_seq_t *q)
{
    if (q->prev != NULL) {
        q->prev->next = q->next;
    } else {
        l->head = q->next;
    }

    if (q->next != NULL) {
        q->next->prev = q->prev;
    } else {
        l->tail = q->prev;
    }

    q->prev = q->next = NULL;
    l->n--;
}


static void
kimi_list_push_back(kimi_seq_list_t *l, kimi_seq_t *q)
{
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail != NULL) {
        l->tail->next = q;
    } else {
        l->head = q;
    }

    l->tail = q;
    l->n++;
}


static void
kimi_list_push_front(kimi_seq_list_t *l, kimi_seq_t *q)
{
    q->prev = NULL;
    q->next = l->head;
    if (l->head != NULL) {
        l->head->prev = q;
    } else {
        l->tail = q;
    }

    l->head = q;
    l->n++;
}


static uint32_t
kimi_map_hash(uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (uint32_t) id;
}


static kimi_seq_t **
kimi_map_find(const kimi_sched_t *s, uint64_t id)
{
    uint32_t  i = kimi_map_hash(id) & s->map_mask;

    while (s->map[i] != NULL && s->map[i]->id != id) {
        i = (i + 1) & s->map_mask;
    }

    return &s->map[i];
}


static void
kimi_map_remove(kimi_sched_t *s, uint64_t id)
{
    uint32_t  i, j, home;

    i = (uint32_t) (kimi_map_find(s, id) - s->map);
    if (s->map[i] == NULL) {
        return;
    }

    /* backward-shift deletion keeps probe chains unbroken */
    s->map[i] = NULL;
    for (j = (i + 1) & s->map_mask; s->map[j] != NULL;
         j = (j + 1) & s->map_mask)
    {
        home = kimi_map_hash(s->map[j]->id) & s->map_mask;
        if (((j - home) & s->map_mask) >= ((j - i) & s->map_mask)) {
            s->map[i] = s->map[j];
            s->map[j] = NULL;
            i = j;
        }
    }
}


/* ---- init ------------------------------------------------------------- */

kimi_sched_params_t
kimi_sched_default_params(void)
{
    kimi_sched_params_t  p;

    memset(&p, 0, sizeof(p));
    p.max_num_seqs = 256;
    p.max_num_batched_tokens = 8192;
    p.max_model_len = 0;                 /* the backend's */
    p.max_waiting = 1024;
    p.enable_chunked_prefill = 1;
    p.kv.block_size = KIMI_KV_DEFAULT_BLOCK_SIZE;
    p.kv.dtype = KIMI_KV_DTYPE_AUTO;
    p.kv.budget_bytes = 1ULL << 30;
    p.kv.gpu_memory_utilization = 0.9f;
    p.kv.max_blocks = 0;
    p.logprobs_mode = KIMI_LOGPROBS_RAW;

    return p;
}


int
kimi_sched_init(kimi_sched_t **out, const kimi_sched_params_t *params,
    kimi_backend_t *backend, const kimi_sched_sink_t *sink, kimi_err_t *err)
{
    kimi_sched_t  *s;
    uint32_t       n_blocks, n, cap;
    int            rc;

    if (params->max_num_seqs == 0 || params->max_num_batched_tokens == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "max_num_seqs (%u) and "
                            "max_num_batched_tokens (%u) must be at least 1",
                            params->max_num_seqs,
                            params->max_num_batched_tokens);
    }

    if (params->kv.block_size == 0 || params->kv.block_size > 4096) {
        return kimi_err_set(err, KIMI_EINVAL, "kv block size must be in "
                            "[1, 4096], got %u", params->kv.block_size);
    }

    if (params->logprobs_mode > KIMI_LOGPROBS_PROCESSED) {
        return kimi_err_set(err, KIMI_EINVAL, "unknown logprobs mode %u",
                            params->logprobs_mode);
    }

    if (backend == NULL || backend->ops == NULL
        || backend->ops->forward == NULL || backend->ops->kv_init == NULL
        || (backend->ops->logits == NULL && backend->ops->sample == NULL)
        || backend->vocab_size == 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "scheduler: backend lacks "
                            "forward, kv_init, logits/sample or a vocab");
    }

    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "scheduler: out of memory");
    }

    s->params = *params;
    s->backend = backend;
    s->sink = *sink;
    s->vocab = backend->vocab_size;

    s->max_model_len = params->max_model_len;
    if (s->max_model_len == 0) {
        s->max_model_len = backend->max_model_len;

    } else if (backend->max_model_len != 0
               && s->max_model_len > backend->max_model_len)
    {
        rc = kimi_err_set(err, KIMI_EINVAL, "max_model_len %u is larger than "
                          "the model's maximum context length %u",
                          s->max_model_len, backend->max_model_len);
        goto failed;
    }

    if (s->max_model_len == 0) {
        rc = kimi_err_set(err, KIMI_EINVAL, "max_model_len is unknown: "
                          "neither the parameters nor the backend set it");
        goto failed;
    }

    if (params->n_eos > 0) {
        s->eos_ids = malloc(params->n_eos * sizeof(int32_t));
        if (s->eos_ids == NULL) {
            goto nomem;
        }

        memcpy(s->eos_ids, params->eos_ids, params->n_eos * sizeof(int32_t));
    }

    s->params.eos_ids = s->eos_ids;

    rc = backend->ops->kv_init(backend, &params->kv, &n_blocks, err);
    if (rc != KIMI_OK) {
        goto failed;
    }

    rc = kimi_kv_init(&s->kv, n_blocks, params->kv.block_size, err);
    if (rc != KIMI_OK) {
        goto failed;
    }

    if (params->enable_prefix_caching
        && (rc = kimi_kv_prefix_enable(s->kv, err)) != KIMI_OK)
    {
        goto failed;
    }

    if (backend->ops->logits != NULL) {
        rc = kimi_sample_pool_init(&s->sampler, s->vocab, 0, err);
        if (rc != KIMI_OK) {
            goto failed;
        }
    }

    /* the map holds running + waiting, at most half full */
    n = params->max_num_seqs + params->max_waiting;
    for (cap = 16; cap < 2 * (uint64_t) n && cap < (1u << 30); cap *= 2) {
        /* void */
    }

    s->map = calloc(cap, sizeof(kimi_seq_t *));
    s->map_mask = cap - 1;

    n = params->max_num_seqs;
    s->snapshot = calloc(n, sizeof(kimi_seq_t *));
    s->batched = calloc(n, sizeof(kimi_seq_t *));
    s->bseqs = calloc(n, sizeof(kimi_batch_seq_t));
    s->reqs = calloc(n, sizeof(kimi_sample_req_t));
    s->outs = calloc(n, sizeof(kimi_sample_out_t));

    if (s->map == NULL || s->snapshot == NULL || s->batched == NULL
        || s->bseqs == NULL || s->reqs == NULL || s->outs == NULL)
    {
        goto nomem;
    }

    kimi_rng_seed(&s->rng, params->seed != 0 ? params->seed
                  : kimi_now_ns() ^ ((uint64_t) (uintptr_t) s << 16));

    s->stats.kv_blocks_total = n_blocks;
    s->stats.max_model_len = s->max_model_len;
    s->stats.block_size = params->kv.block_size;

    *out = s;
    return KIMI_OK;

nomem:

    rc = kimi_err_set(err, KIMI_ENOMEM, "scheduler: out of memory");

failed:

    kimi_sched_free(s);
    return rc;
}


static void
kimi_seq_destroy(kimi_seq_t *q)
{
    kimi_kv_table_free(&q->table);
    free(q->tokens);
    free(q->guided);
    free(q->bad);
    free(q);
}


void
kimi_sched_free(kimi_sched_t *s)
{
    kimi_seq_t  *q, *next;

    if (s == NULL) {
        return;
    }

    /* sequences still queued are dropped silently: the server that frees
     * the scheduler has ended them (abort_all) or is exiting */
    for (int l = 0; l < 2; l++) {
        for (q = l ? s->running.head : s->waiting.head; q != NULL; q = next) {
            next = q->next;
            if (s->kv != NULL) {
                kimi_kv_table_release(s->kv, &q->table);
            }
            kimi_seq_destroy(q);
        }
    }

    kimi_sample_pool_free(s->sampler);
    kimi_kv_free(s->kv);
    free(s->eos_ids);
    free(s->map);
    free(s->snapshot);
    free(s->batched);
    free(s->bseqs);
    free(s->reqs);
    free(s->outs);
    free(s);
}


/* ---- admission -------------------------------------------------------- */

int
kimi_sched_add(kimi_sched_t *s, const kimi_seq_desc_t *desc,
    kimi_err_t *err)
{
    kimi_seq_t          *q, **slot;
    uint32_t             max_tokens, n_prompt = desc->n_prompt;
    uint64_t             capacity;
    int                  rc;

    if (n_prompt == 0 || desc->prompt == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "the prompt is empty");
    }

    for (uint32_t i = 0; i < n_prompt; i++) {
        if (desc->prompt[i] < 0 || (uint32_t) desc->prompt[i] >= s->vocab) {
            return kimi_err_set(err, KIMI_EINVAL, "prompt token %u is %d, "
                                "outside the vocabulary [0, %u)", i,
                                desc->prompt[i], s->vocab);
        }
    }

    rc = kimi_sample_params_check(&desc->sampling, s->vocab, err);
    if (rc == KIMI_OK && desc->n_guided > 0) {
        rc = kimi_sample_guided_check(desc->guided, desc->n_guided, s->vocab,
                                      err);
    }
    if (rc == KIMI_OK && desc->n_bad > 0) {
        rc = kimi_sample_bad_words_check(desc->bad, desc->n_bad, s->vocab,
                                         err);
    }
    if (rc != KIMI_OK) {
        return rc;
    }

    /* JSON mode, a schema, a forced tool call and a regex mask tokens by
     * their bytes: without the tokenizer they could not be enforced */
    if ((desc->sampling.json_object
         || (desc->n_guided > 0 && desc->guided[0] < 0))
        && s->params.tokenizer == NULL)
    {
        return kimi_err_set(err, KIMI_EINVAL, "structured output (JSON mode, "
                            "a JSON schema, a forced tool call or a regex) "
                            "needs the model's tokenizer, which this engine "
                            "did not load (see its log)");
    }

    max_tokens = desc->sampling.max_tokens;

    if (max_tokens == 0 && n_prompt >= s->max_model_len) {
        return kimi_err_set(err, KIMI_EINVAL, "This model's maximum context "
                            "length is %u tokens. However, your request has "
                            "%u input tokens. Please reduce the length of "
                            "the input messages.", s->max_model_len,
                            n_prompt);
    }

    if ((uint64_t) n_prompt + max_tokens > s->max_model_len) {
        return kimi_err_set(err, KIMI_EINVAL, "This model's maximum context "
                            "length is %u tokens. However, you requested "
                            "%llu tokens (%u in the messages, %u in the "
                            "completion). Please reduce the length of the "
                            "messages or completion.", s->max_model_len,
                            (unsigned long long) n_prompt + max_tokens,
                            n_prompt, max_tokens);
    }

    if (max_tokens == 0) {
        max_tokens = s->max_model_len - n_prompt;   /* OpenAI: up to limit */
    }

    if (desc->sampling.min_tokens > max_tokens) {
        return kimi_err_set(err, KIMI_EINVAL, "min_tokens must be less than "
                            "or equal to max_tokens=%u, got %u", max_tokens,
                            desc->sampling.min_tokens);
    }

    /* the last sampled token is never forwarded */
    capacity = (uint64_t) kimi_kv_n_total(s->kv) * kimi_kv_block_size(s->kv);
    if ((uint64_t) n_prompt + max_tokens - 1 > capacity) {
        return kimi_err_set(err, KIMI_EINVAL, "the request needs %llu tokens "
                            "of KV cache (%u in the messages, %u in the "
                            "completion) but the whole cache holds %llu",
                            (unsigned long long) n_prompt + max_tokens - 1,
                            n_prompt, max_tokens,
                            (unsigned long long) capacity);
    }

    if (!s->params.enable_chunked_prefill
        && n_prompt > s->params.max_num_batched_tokens)
    {
        return kimi_err_set(err, KIMI_EINVAL, "the prompt has %u tokens, more "
                            "than max_num_batched_tokens=%u, and chunked "
                            "prefill is off", n_prompt,
                            s->params.max_num_batched_tokens);
    }

    slot = kimi_map_find(s, desc->seq_id);
    if (*slot != NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "sequence id %llu is already "
                            "in use", (unsigned long long) desc->seq_id);
    }

    if (s->waiting.n + s->running.n
        >= s->params.max_num_seqs + s->params.max_waiting)
    {
        return kimi_err_set(err, KIMI_EFULL, "the waiting queue is full "
                            "(%u waiting, %u running)", s->waiting.n,
                            s->running.n);
    }

    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "scheduler: out of memory");
    }

    q->cap = n_prompt + max_tokens;
    q->tokens = malloc((size_t) q->cap * sizeof(int32_t));
    if (q->tokens == NULL) {
        free(q);
        return kimi_err_set(err, KIMI_ENOMEM, "scheduler: out of memory for "
                            "%u tokens", n_prompt + max_tokens);
    }

    memcpy(q->tokens, desc->prompt, (size_t) n_prompt * sizeof(int32_t));
    if (desc->n_guided > 0) {
        q->guided = malloc((size_t) desc->n_guided * sizeof(int32_t));
        if (q->guided == NULL) {
            free(q->tokens);
            free(q);
            return kimi_err_set(err, KIMI_ENOMEM, "scheduler: out of memory");
        }
        memcpy(q->guided, desc->guided, (size_t) desc->n_guided * sizeof(int32_t));
        q->n_guided = desc->n_guided;
    }
    if (desc->n_bad > 0) {
        q->bad = malloc((size_t) desc->n_bad * sizeof(int32_t));
        if (q->bad == NULL) {
            free(q->guided);
            free(q->tokens);
            free(q);
            return kimi_err_set(err, KIMI_ENOMEM, "scheduler: out of memory");
        }
        memcpy(q->bad, desc->bad, (size_t) desc->n_bad * sizeof(int32_t));
        q->n_bad = desc->n_bad;
    }
    q->id = desc->seq_id;
    q->user = desc->user;
    q->salt = desc->cache_salt;
    q->chain = q->salt;
    q->sampling = desc->sampling;
    q->n_prompt = n_prompt;
    q->n_tokens = n_prompt;
    q->max_tokens = max_tokens;
    q->state = KIMI_SEQ_WAITING;

    kimi_rng_seed(&q->rng, desc->sampling.has_seed ? desc->sampling.seed
                                                   : kimi_rng_next(&s->rng));

    *slot = q;
    kimi_list_push_back(&s->waiting, q);

    return KIMI_OK;
}


/* ---- ending sequences ------------------------------------------------- */

/* Frees the sequence's blocks and forgets it; the sink hears of it once. */
static void
kimi_sched_end(kimi_sched_t *s, kimi_seq_t *q, kimi_finish_e reason,
    const char *message)
{
    kimi_kv_table_release(s->kv, &q->table);

    /* a waiting sequence was never started or already freed (preempt) */
    if (q->state == KIMI_SEQ_RUNNING && s->backend->ops->seq_free != NULL) {
        s->backend->ops->seq_free(s->backend, q->id);
    }

    kimi_list_remove(q->state == KIMI_SEQ_RUNNING ? &s->running
                                                  : &s->waiting, q);
    kimi_map_remove(s, q->id);

    if (s->sink.finish != NULL) {
        s->sink.finish(s->sink.ctx, q->user, reason,
                       q->n_tokens - q->n_prompt, message);
    }

    kimi_seq_destroy(q);
}


void
kimi_sched_cancel(kimi_sched_t *s, uint64_t seq_id)
{
    kimi_seq_t  *q = *kimi_map_find(s, seq_id);

    if (q == NULL || q->is_cancelled) {
        return;
    }

    if (s->in_step) {
        q->is_cancelled = 1;
        s->n_cancel_pending++;
        return;
    }

    kimi_sched_end(s, q, KIMI_FINISH_CANCELLED, NULL);
}


void
kimi_sched_abort_all(kimi_sched_t *s, kimi_finish_e reason,
    const char *message)
{
    if (s->in_step) {
        s->abort_reason = reason;
        snprintf(s->abort_message, sizeof(s->abort_message), "%s",
                 message != NULL ? message : "");
        return;
    }

    while (s->running.head != NULL) {
        kimi_sched_end(s, s->running.head, reason, message);
    }

    while (s->waiting.head != NULL) {
        kimi_sched_end(s, s->waiting.head, reason, message);
    }
}


/* Preemption by recompute: back to the front of the waiting queue with no
 * blocks; its prompt and output so far are prefilled again later. */
static void
kimi_sched_preempt(kimi_sched_t *s, kimi_seq_t *q)
{
    kimi_kv_table_release(s->kv, &q->table);

    if (s->backend->ops->seq_free != NULL) {
        s->backend->ops->seq_free(s->backend, q->id);
    }

    kimi_list_remove(&s->running, q);
    q->n_computed = 0;
    q->n_hashed = 0;
    q->chain = q->salt;
    q->n_sched = 0;
    q->state = KIMI_SEQ_WAITING;
    kimi_list_push_front(&s->waiting, q);

    s->stats.num_preemptions++;

    kimi_log_debug("preempted seq=%llu n_tokens=%u blocks_free=%u",
                   (unsigned long long) q->id, q->n_tokens,
                   kimi_kv_n_free(s->kv));
}


/* ---- one step --------------------------------------------------------- */

static int
kimi_sched_can_emit(kimi_sched_t *s, kimi_seq_t *q)
{
    return s->sink.can_emit == NULL || s->sink.can_emit(s->sink.ctx, q->user);
}


static void
kimi_sched_batch_add(kimi_sched_t *s, kimi_seq_t *q, uint32_t n_tokens)
{
    q->n_sched = n_tokens;
    q->step = s->step;
    q->is_decode = q->n_computed > 0 && n_tokens == 1
                   && q->n_computed + 1 == q->n_tokens
                   && q->n_tokens > q->n_prompt;
    s->batched[s->n_batched++] = q;
}


/* Makes q's table cover n_computed + n_tokens tokens, preempting the
 * newest running sequences not yet batched this step.  KIMI_EFULL if q
 * itself had to go. */
static int
kimi_sched_reserve(kimi_sched_t *s, kimi_seq_t *q, uint32_t n_tokens,
    kimi_err_t *err)
{
    kimi_seq_t  *victim;
    int          rc;

    for ( ;; ) {
        rc = kimi_kv_table_reserve(s->kv, &q->table,
                                   q->n_computed + n_tokens, err);
        if (rc != KIMI_EFULL) {
            return rc;
        }

        victim = s->running.tail;
        while (victim != NULL && victim->step == s->step) {
            victim = victim->prev;
        }

        if (victim == NULL) {
            return KIMI_EFULL;      /* every other sequence is batched */
        }

        kimi_sched_preempt(s, victim);

        if (victim == q) {
            return KIMI_EFULL;
        }
    }
}


/* ---- prefix cache ------------------------------------------------------- */

/* A sequence about to start (no blocks yet) takes the cached blocks of its
 * leading full blocks, in order, up to the first miss; at least its last
 * token is always computed (its logits are needed). */
static int
kimi_sched_prefix_match(kimi_sched_t *s, kimi_seq_t *q, kimi_err_t *err)
{
    uint32_t  bs = kimi_kv_block_size(s->kv), id, n_full;
    uint64_t  h = 0;
    int       rc;

    /* a prompt_logprobs request needs the logits of every prompt
     * position: nothing of it comes from the cache */
    if (!kimi_kv_prefix_on(s->kv) || q->table.n != 0 || q->n_computed != 0
        || q->sampling.prompt_logprobs > 0)
    {
        return KIMI_OK;
    }

    n_full = (q->n_tokens - 1) / bs;

    for (uint32_t i = 0; i < n_full; i++) {
        h = kimi_kv_prefix_hash(q->chain, q->tokens + (size_t) i * bs, bs);

        if (!kimi_kv_prefix_acquire(s->kv, h, &id)) {
            break;
        }

        if ((rc = kimi_kv_table_push(&q->table, id, err)) != KIMI_OK) {
            kimi_kv_block_unref(s->kv, id);
            return rc;
        }

        q->chain = h;
        q->n_hashed++;
        q->n_computed += bs;
    }

    return KIMI_OK;
}


/* Not admitted after all: the matched blocks go back (still cached). */
static void
kimi_sched_prefix_unmatch(kimi_sched_t *s, kimi_seq_t *q)
{
    kimi_kv_table_release(s->kv, &q->table);
    q->n_computed = 0;
    q->n_hashed = 0;
    q->chain = q->salt;
}


/* After a step: every block the sequence filled is named for later ones. */
static void
kimi_sched_prefix_register(kimi_sched_t *s, kimi_seq_t *q)
{
    uint32_t  bs = kimi_kv_block_size(s->kv);

    if (!kimi_kv_prefix_on(s->kv)) {
        return;
    }

    while ((uint64_t) (q->n_hashed + 1) * bs <= q->n_computed
           && q->n_hashed < q->table.n)
    {
        q->chain = kimi_kv_prefix_hash(q->chain, q->tokens
                                       + (size_t) q->n_hashed * bs, bs);
        kimi_kv_prefix_register(s->kv, q->table.ids[q->n_hashed], q->chain);
        q->n_hashed++;
    }
}


/* prompt_logprobs: the position whose logits score the next prompt token
 * still owed, or -1 when none is owed. */
static int64_t
kimi_sched_lp_due(const kimi_seq_t *q)
{
    if (q->sampling.prompt_logprobs == 0 || q->n_lp_sent + 1 >= q->n_prompt) {
        return -1;
    }

    return q->n_lp_sent;
}


/* Tokens of a prefill chunk of q, at most n: a prompt_logprobs request
 * takes each owed position in a step of its own (a backend returns one row
 * of logits per sequence a step), and the positions before it (again after
 * a preemption) in chunks that stop short of it. */
static uint32_t
kimi_sched_chunk(const kimi_seq_t *q, uint32_t n)
{
    int64_t  due = kimi_sched_lp_due(q);

    if (due < 0) {
        return n;
    }

    if (q->n_computed < (uint64_t) due) {
        return (uint32_t) ((uint64_t) due - q->n_computed) < n
               ? (uint32_t) ((uint64_t) due - q->n_computed) : n;
    }

    return n > 0 ? 1 : 0;
}


/* This step's batch ends q's chunk at the owed position: its row is a
 * prompt entry, not a draw. */
static int
kimi_sched_lp_row(const kimi_seq_t *q)
{
    int64_t  due = kimi_sched_lp_due(q);

    return due >= 0 && q->n_sched > 0
           && (uint64_t) q->n_computed + q->n_sched - 1 == (uint64_t) due;
}


/* The row of q this step will be sampled plain greedy (the sampler's own
 * test, on the request as the step will build it). */
static int
kimi_sched_plain_greedy(const kimi_seq_t *q)
{
    kimi_sample_req_t  r;

    memset(&r, 0, sizeof(r));
    r.sampling = &q->sampling;
    r.n_prompt = q->n_prompt;
    r.n_output = q->n_tokens - q->n_prompt;
    r.n_guided = q->n_guided;
    r.n_bad = q->n_bad;

    return kimi_sample_is_plain_greedy(&r);
}


static int
kimi_sched_schedule(kimi_sched_t *s, kimi_err_t *err)
{
    kimi_seq_t  *q;
    uint32_t     budget = s->params.max_num_batched_tokens, n, remaining;
    uint32_t     n_snap = 0;
    uint64_t     n_pre = s->stats.num_preemptions;
    int          rc;

    s->n_batched = 0;

    for (q = s->running.head; q != NULL; q = q->next) {
        s->snapshot[n_snap++] = q;
    }

    /* 1. decodes, oldest first */
    for (uint32_t i = 0; i < n_snap && budget > 0; i++) {
        q = s->snapshot[i];
        if (q->state != KIMI_SEQ_RUNNING || q->n_tokens - q->n_computed != 1
            || q->is_cancelled || !kimi_sched_can_emit(s, q))
        {
            continue;
        }

        rc = kimi_sched_reserve(s, q, 1, err);
        if (rc == KIMI_EFULL) {
            continue;
        }

        if (rc != KIMI_OK) {
            return rc;
        }

        kimi_sched_batch_add(s, q, 1);
        budget--;
    }

    /* 2. next chunks of running prefills */
    for (uint32_t i = 0; i < n_snap && budget > 0; i++) {
        q = s->snapshot[i];
        remaining = q->n_tokens - q->n_computed;
        if (q->state != KIMI_SEQ_RUNNING || q->step == s->step
            || remaining == 1 || q->is_cancelled)
        {
            continue;
        }

        n = kimi_sched_chunk(q, remaining < budget ? remaining : budget);
        if ((n == remaining || kimi_sched_lp_due(q) == q->n_computed)
            && !kimi_sched_can_emit(s, q))
        {
            continue;
        }

        rc = kimi_sched_reserve(s, q, n, err);
        if (rc == KIMI_EFULL) {
            continue;
        }

        if (rc != KIMI_OK) {
            return rc;
        }

        kimi_sched_batch_add(s, q, n);
        budget -= n;
    }

    /* 3. admission, strictly FIFO: a head that does not fit waits, and
     *    nothing overtakes it (no preemption for admission).  Not in a
     *    step that preempted: blocks are short, and admitting would only
     *    hand the victim's blocks to a sequence preempted again next step
     *    (vLLM's v1 scheduler skips the waiting queue then, too). */
    while (budget > 0 && s->running.n < s->params.max_num_seqs
           && s->waiting.head != NULL && s->stats.num_preemptions == n_pre)
    {
        q = s->waiting.head;
        if (q->is_cancelled) {
            break;
        }

        /* blocks of its prefix some sequence already computed */
        if ((rc = kimi_sched_prefix_match(s, q, err)) != KIMI_OK) {
            return rc;
        }

        remaining = q->n_tokens - q->n_computed;
        n = kimi_sched_chunk(q, remaining < budget ? remaining : budget);

        /* without chunked prefill a prompt goes in whole (prompt_logprobs
         * requests excepted: a step per position);  a sequence that
         * was preempted may be longer than the budget and is chunked.
         * start a prefill only if all of it fits now: a half-prefilled
         * sequence would be the first victim when decodes need blocks */
        if ((n < remaining && !s->params.enable_chunked_prefill
             && q->n_tokens == q->n_prompt && kimi_sched_lp_due(q) < 0)
            || ((n == remaining || kimi_sched_lp_due(q) == q->n_computed)
                && !kimi_sched_can_emit(s, q))
            || kimi_kv_blocks_for(s->kv, q->n_tokens) - q->table.n
               > kimi_kv_n_free(s->kv))
        {
            kimi_sched_prefix_unmatch(s, q);
            break;
        }

        rc = kimi_kv_table_reserve(s->kv, &q->table, q->n_computed + n, err);
        if (rc == KIMI_EFULL) {
            kimi_sched_prefix_unmatch(s, q);
            break;
        }

        if (rc != KIMI_OK) {
            return rc;
        }

        kimi_list_remove(&s->waiting, q);
        q->state = KIMI_SEQ_RUNNING;
        kimi_list_push_back(&s->running, q);

        if (!q->is_started) {
            q->is_started = 1;
            q->n_cached = q->n_computed < q->n_prompt ? q->n_computed
                                                      : q->n_prompt;
            if (s->sink.started != NULL) {
                s->sink.started(s->sink.ctx, q->user, q->n_cached);
            }
        }

        kimi_sched_batch_add(s, q, n);
        budget -= n;
    }

    return KIMI_OK;
}


static void
kimi_sched_fail_running(kimi_sched_t *s, const kimi_err_t *err)
{
    while (s->running.head != NULL) {
        kimi_sched_end(s, s->running.head, KIMI_FINISH_ERROR,
                       err != NULL ? err->msg : "engine error");
    }
}


/* Why q stops after its newest token, in vLLM's order: length first. */
static kimi_finish_e
kimi_sched_check_stop(const kimi_sched_t *s, const kimi_seq_t *q)
{
    const kimi_shm_sampling_t  *sp = &q->sampling;
    uint32_t                    n_output = q->n_tokens - q->n_prompt;
    int32_t                     last = q->tokens[q->n_tokens - 1];

    if (n_output >= q->max_tokens || q->n_tokens >= s->max_model_len) {
        return KIMI_FINISH_LENGTH;
    }

    if (n_output < sp->min_tokens) {
        return KIMI_FINISH_NONE;
    }

    for (uint32_t i = 0; !sp->ignore_eos && i < s->params.n_eos; i++) {
        if (last == s->eos_ids[i]) {
            return KIMI_FINISH_STOP;
        }
    }

    for (uint32_t i = 0; i < sp->n_stop_ids; i++) {
        if (last == sp->stop_ids[i]) {
            return KIMI_FINISH_STOP;
        }
    }

    return KIMI_FINISH_NONE;
}


/* Ends what callbacks cancelled or aborted during the step.  Still runs
 * with in_step set, so finish callbacks can only mark more, never free a
 * sequence under the iteration; the outer loop picks those up. */
static void
kimi_sched_sweep(kimi_sched_t *s)
{
    kimi_seq_t     *q, *next;
    kimi_finish_e   reason;

    while (s->abort_reason != KIMI_FINISH_NONE) {
        reason = s->abort_reason;
        s->abort_reason = KIMI_FINISH_NONE;

        while (s->running.head != NULL) {
            kimi_sched_end(s, s->running.head, reason, s->abort_message);
        }

        while (s->waiting.head != NULL) {
            kimi_sched_end(s, s->waiting.head, reason, s->abort_message);
        }
    }

    while (s->n_cancel_pending > 0) {
        s->n_cancel_pending = 0;

        for (int l = 0; l < 2; l++) {
            for (q = l ? s->running.head : s->waiting.head; q != NULL;
                 q = next)
            {
                next = q->next;
                if (q->is_cancelled) {
                    kimi_sched_end(s, q, KIMI_FINISH_CANCELLED, NULL);
                }
            }
        }
    }
}


/* A step without sequences of ours: in lockstep the peers' step still
 * needs our forward (the experts this rank holds). */
static void
kimi_sched_forward_empty(kimi_sched_t *s)
{
    kimi_batch_t  none = { 0, NULL };
    kimi_err_t    err;

    if (s->params.lockstep
        && s->backend->ops->forward(s->backend, &none, &err) != KIMI_OK)
    {
        kimi_log(KIMI_LOG_ERR, "empty lockstep step failed: %s", err.msg);
    }
}


int
kimi_sched_step(kimi_sched_t *s, kimi_err_t *err)
{
    kimi_batch_t   batch;
    kimi_seq_t    *q;
    const float   *logits;
    uint32_t       n_want = 0, n_rows = 0, vocab = 0, n_tokens = 0, w;
    uint64_t       t0, t_fwd0, t_fwd1, t_smp1, t_end;
    kimi_finish_e  reason;
    int            rc;

    t0 = kimi_now_ns();
    s->step++;
    s->in_step = 1;

    rc = kimi_sched_schedule(s, err);
    if (rc != KIMI_OK) {
        kimi_sched_forward_empty(s);
        goto failed;
    }

    if (s->n_batched == 0) {
        kimi_sched_forward_empty(s);
        kimi_sched_sweep(s);
        s->in_step = 0;
        s->stats.last_step_n_seqs = 0;
        s->stats.last_step_n_tokens = 0;
        return 0;
    }

    for (uint32_t i = 0; i < s->n_batched; i++) {
        kimi_batch_seq_t  *b = &s->bseqs[i];

        q = s->batched[i];
        b->seq_id = q->id;
        b->tokens = q->tokens + q->n_computed;
        b->n_tokens = q->n_sched;
        b->pos = q->n_computed;
        b->block_table = q->table.ids;
        b->n_blocks = q->table.n;
        b->want_logits = q->n_computed + q->n_sched == q->n_tokens
                         || kimi_sched_lp_row(q);
        b->greedy_hint = b->want_logits && !kimi_sched_lp_row(q)
                         && kimi_sched_plain_greedy(q);
        n_want += b->want_logits;
        n_tokens += q->n_sched;
    }

    batch.n_seqs = s->n_batched;
    batch.seqs = s->bseqs;

    t_fwd0 = kimi_now_ns();
    rc = s->backend->ops->forward(s->backend, &batch, err);
    t_fwd1 = kimi_now_ns();

    if (rc != KIMI_OK) {
        goto failed;
    }

    /* sampling, in want_logits order */
    w = 0;
    for (uint32_t i = 0; i < s->n_batched; i++) {
        kimi_sample_req_t  *r;

        if (!s->bseqs[i].want_logits) {
            continue;
        }

        q = s->batched[i];
        r = &s->reqs[w++];
        r->sampling = &q->sampling;
        r->tokens = q->tokens;
        r->n_prompt = q->n_prompt;
        r->n_output = q->n_tokens - q->n_prompt;
        r->rng = &q->rng;
        r->eos_ids = s->eos_ids;
        r->n_eos = s->params.n_eos;
        r->logprobs_mode = s->params.logprobs_mode;
        r->tokenizer = s->params.tokenizer;
        r->guided = q->guided;
        r->n_guided = q->n_guided;
        r->bad = q->bad;
        r->n_bad = q->n_bad;
        r->prompt_next = kimi_sched_lp_row(q)
                         ? (uint32_t) q->tokens[q->n_lp_sent + 1] + 1 : 0;
    }

    if (n_want > 0 && s->backend->ops->sample != NULL) {
        rc = s->backend->ops->sample(s->backend, s->reqs, n_want, s->outs,
                                     err);

    } else if (n_want > 0) {
        logits = s->backend->ops->logits(s->backend, &n_rows, &vocab);
        if (logits == NULL || n_rows != n_want || vocab != s->vocab) {
            rc = kimi_err_set(err, KIMI_ESTATE, "backend %s returned %u "
                              "logit rows of %u, expected %u of %u",
                              s->backend->ops->name, n_rows, vocab, n_want,
                              s->vocab);
        }

        if (rc == KIMI_OK) {
            rc = kimi_sample_pool_run(s->sampler, logits, s->vocab, s->reqs,
                                      n_want, NULL, s->outs, err);
        }
    }

    t_smp1 = kimi_now_ns();

    if (rc != KIMI_OK) {
        goto failed;
    }

    /* commit: KV written, new tokens appended and emitted */
    w = 0;
    for (uint32_t i = 0; i < s->n_batched; i++) {
        kimi_shm_token_t  *tok;
        int                lp_row;

        q = s->batched[i];
        if (!q->is_decode) {
            s->stats.prompt_tokens_total += q->n_sched;
        }

        lp_row = kimi_sched_lp_row(q);
        q->n_computed += q->n_sched;
        q->n_sched = 0;
        kimi_sched_prefix_register(s, q);

        if (!s->bseqs[i].want_logits) {
            continue;
        }

        tok = &s->outs[w++].tok;

        if (lp_row) {
            /* a prompt position: its entry, then the next position */
            q->n_lp_sent++;
            s->bseqs[i].want_logits = 0;    /* no stop check below */
            if (!q->is_cancelled && s->sink.emit_prompt != NULL) {
                s->sink.emit_prompt(s->sink.ctx, q->user, tok);
            }
            continue;
        }

        if (tok->token < 0 || (uint32_t) tok->token >= s->vocab) {
            /* a device sampler gone wrong must not reach the client */
            q->is_bad_token = 1;
            continue;
        }

        q->tokens[q->n_tokens++] = tok->token;
        s->stats.generation_tokens_total++;

        if (!q->is_cancelled && s->sink.emit != NULL) {
            s->sink.emit(s->sink.ctx, q->user, tok);
        }
    }

    /* finishes after all emissions, so callbacks never see a freed seq */
    for (uint32_t i = 0; i < s->n_batched; i++) {
        q = s->batched[i];

        if (q->is_bad_token) {
            kimi_sched_end(s, q, KIMI_FINISH_ERROR, "the sampler returned "
                           "a token id outside the vocabulary");
            continue;
        }

        if (q->is_cancelled) {
            continue;                     /* ended in the sweep below */
        }

        if (s->bseqs[i].want_logits) {
            reason = kimi_sched_check_stop(s, q);
            if (reason != KIMI_FINISH_NONE) {
                kimi_sched_end(s, q, reason, NULL);
            }
        }
    }

    kimi_sched_sweep(s);
    s->in_step = 0;

    t_end = kimi_now_ns();
    s->stats.last_step_us = (t_end - t0) / 1000;
    s->stats.last_step_forward_us = (t_fwd1 - t_fwd0) / 1000;
    s->stats.last_step_sample_us = (t_smp1 - t_fwd1) / 1000;
    s->stats.last_step_sched_ns = (t_end - t0) - (t_smp1 - t_fwd0);
    s->stats.last_step_sched_us = s->stats.last_step_sched_ns / 1000;
    s->stats.last_step_n_seqs = s->n_batched;
    s->stats.last_step_n_tokens = n_tokens;

    return (int) s->n_batched;

failed:

    kimi_sched_fail_running(s, err);
    kimi_sched_sweep(s);
    s->in_step = 0;

    return rc;
}


int
kimi_sched_has_work(const kimi_sched_t *s)
{
    return s->running.n > 0 || s->waiting.n > 0;
}


void
kimi_sched_stats(const kimi_sched_t *s, kimi_sched_stats_t *out)
{
    *out = s->stats;
    out->num_running = s->running.n;
    out->num_waiting = s->waiting.n;
    out->kv_blocks_total = kimi_kv_n_total(s->kv);
    out->kv_blocks_used = kimi_kv_n_total(s->kv) - kimi_kv_n_free(s->kv);
}
