/*
 * Token sampling: from one row of logits to one token (plus logprobs).
 *
 * Owns:   the per-sequence RNG, the sampling request/result types that
 *         backend.h's optional sample op also takes, and the host sampler
 *         (penalties, min_tokens suppression, greedy, temperature, min_p,
 *         top_k, top_p, logprobs).
 * Never:  decides when a sequence stops (the scheduler does), allocates
 *         per call, or keeps state between calls besides scratch space.
 *
 * Semantics follow vLLM's v1 sampler:
 *   1. min_tokens: while n_output < min_tokens, the stop ids and (unless
 *      ignore_eos) the eos ids get -inf.
 *   2. penalties: repetition over prompt + output (logit > 0: divided by
 *      it, else multiplied), then frequency (x count in output) and
 *      presence (once if in output) subtracted.
 *   3. temperature < 1e-5 is greedy: argmax, lowest id on ties.
 *   4. otherwise logits / temperature, then min_p against the most likely
 *      token, then top_k (ties with the k-th value are kept), then top_p
 *      (the smallest most-likely set whose mass reaches top_p), and one
 *      draw from the sequence's own RNG.
 *   Logprobs: vLLM's default --logprobs-mode is raw_logprobs, i.e. the
 *   log-softmax of the model's logits before penalties, temperature and
 *   truncation; KIMI_LOGPROBS_PROCESSED gives the log-softmax of the
 *   distribution actually sampled from (vLLM's processed_logprobs).
 */

#ifndef KIMI_SAMPLE_H
#define KIMI_SAMPLE_H

#include <stdint.h>

#include "../common/kimi_err.h"
#include "../shm/kimi_shm.h"

/* Below this temperature a request is greedy (vLLM's _SAMPLING_EPS). */
#define KIMI_SAMPLE_GREEDY_EPS  1e-5f

/* xoshiro256**: one per sequence, so a seeded request draws the same
 * numbers whatever else shares its batch. */
typedef struct {
    uint64_t  s[4];
} kimi_rng_t;

void     kimi_rng_seed(kimi_rng_t *rng, uint64_t seed);
uint64_t kimi_rng_next(kimi_rng_t *rng);
double   kimi_rng_uniform(kimi_rng_t *rng);       /* [0, 1) */

typedef enum {
    KIMI_LOGPROBS_RAW = 0,          /* vLLM default */
    KIMI_LOGPROBS_PROCESSED = 1,
} kimi_logprobs_mode_e;

/* One sequence's sampling request.  Pointers are borrowed for the call. */
struct kimi_sample_req {
    const kimi_shm_sampling_t  *sampling;
    const int32_t              *tokens;       /* prompt then output */
    uint32_t                    n_prompt;
    uint32_t                    n_output;
    kimi_rng_t                 *rng;          /* advanced by random draws */
    const int32_t              *eos_ids;      /* model's eos ids */
    uint32_t                    n_eos;
    uint32_t                    logprobs_mode; /* kimi_logprobs_mode_e */
    const struct kimi_tokenizer *tokenizer;   /* token bytes for JSON mode
                                                 (NULL: refused at admission) */
    const int32_t              *guided;       /* guided_choice words, checked
                                                 by kimi_sample_guided_check */
    uint32_t                    n_guided;
    const int32_t              *bad;          /* vLLM's bad_words: n, then
                                                 each word's count and ids
                                                 (kimi_sample_bad_words_check) */
    uint32_t                    n_bad;
    uint32_t                    prompt_next;  /* 1 + t: a prompt position
                                                 of a prompt_logprobs request,
                                                 t the next prompt token: no
                                                 draw, t's entry (raw logprob,
                                                 rank, the top n); 0: a row
                                                 to sample */
};

struct kimi_sample_out {
    kimi_shm_token_t            tok;          /* token, logprob, top-n */
};

typedef struct kimi_sample_req  kimi_sample_req_t;
typedef struct kimi_sample_out  kimi_sample_out_t;

/* Checks a request's parameters against vLLM's ranges; the message names
 * the field and the allowed range. */
int  kimi_sample_params_check(const kimi_shm_sampling_t *sp, uint32_t vocab,
    kimi_err_t *err);

/* The guided words of a slot: vLLM's guided_choice as token ids (words =
 * n, then n times (count, ids); every choice non-empty, ids inside the
 * vocabulary, nothing left over), or KIMI_SCHEMA_TAG and a structured
 * output program (engine/text/json_schema.h; kimi_json_schema_check). */
int  kimi_sample_guided_check(const int32_t *words, uint32_t n_words,
    uint32_t vocab, kimi_err_t *err);

/* vLLM's bad_words as token ids: n, then n times (count >= 1, ids inside
 * the vocabulary), nothing left over. */
int  kimi_sample_bad_words_check(const int32_t *words, uint32_t n_words,
    uint32_t vocab, kimi_err_t *err);

/* 1 if the request needs no random draw (greedy). */
int  kimi_sample_is_greedy(const kimi_shm_sampling_t *sp);

/* 1 if this step's token is the argmax of the raw logits row and at most
 * its own logprob is asked (greedy; no min_tokens suppression, logit_bias,
 * penalties or top_logprobs): what a device argmax can answer alone. */
int  kimi_sample_is_plain_greedy(const kimi_sample_req_t *req);
/* A row drawn from the raw logits by temperature, min_p, top_k and top_p
 * alone (no processing, no logprobs), so a backend may draw it on the
 * device from the row's one uniform (kimi_rng_uniform, as
 * kimi_sampler_sample would take it). */
int  kimi_sample_is_plain_random(const kimi_sample_req_t *req);


typedef struct kimi_sampler  kimi_sampler_t;

/* Scratch for rows of `vocab` logits (about 13 bytes per vocab entry). */
int  kimi_sampler_init(kimi_sampler_t **out, uint32_t vocab,
    kimi_err_t *err);
void kimi_sampler_free(kimi_sampler_t *s);            /* NULL is a no-op */

/* Samples one token from logits[vocab] (the row is not modified). */
int  kimi_sampler_sample(kimi_sampler_t *s, const float *logits,
    const kimi_sample_req_t *req, kimi_sample_out_t *out, kimi_err_t *err);

#endif
