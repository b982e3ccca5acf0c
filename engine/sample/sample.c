/*
 * Host sampler (see sample.h for the semantics, which follow vLLM v1).
 *
 * Owns:   the scratch rows and the selection algorithms.
 * Never:  sorts the whole vocabulary: min_p is a threshold, top_k a
 *         min-heap of k (quickselect beyond 4096), top_p a mass histogram
 *         plus a weighted quickselect inside one bucket, so a 163840-entry
 *         row costs a few linear passes, not a sort.
 * Holds:  count[] and seen[] are all zero between calls (only the ids
 *         listed in touched[] are ever set, and they are cleared again).
 */

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sample.h"
#include "json_mode.h"
#include "stag_mode.h"
#include "../text/gram.h"
#include "../text/regex_dfa.h"
#include "../text/kimi_text.h"


/* top_k up to this uses a min-heap (one predictable compare per entry);
 * larger k a quickselect */
#define KIMI_SAMPLE_HEAP_K   4096

/* top_p first sorts candidates into this many equal-width buckets of
 * (max - logit), so the exact selection only runs inside one bucket */
#define KIMI_SAMPLE_BUCKETS  2048

typedef struct {
    float     v;              /* logit after temperature */
    float     w;              /* exp(v - max v): unnormalised probability */
    uint32_t  id;
} kimi_cand_t;

/* JSON mode's view of the vocabulary, built on first use for a tokenizer:
 * each token's class, and the other ids ordered by their first byte, so a
 * state that refuses a first byte masks its tokens without reading them */
/* Forced tool calls around the JSON (guided words KIMI_TOOL_CALL_TAG):
 * fixed ids, then one of n_alts functions (its id tokens for this call's
 * index, then its arguments' program), then fixed ids; up to max_calls
 * calls, each after the first opened by the last pre id after the first
 * post id (json_schema.h) */
#define KIMI_SAMPLE_MAX_ALTS  128

typedef struct {
    const int32_t  *pre, *post, *never;
    uint32_t        n_pre, n_post, n_never, n_alts, max_calls;
    const int32_t  *prog[KIMI_SAMPLE_MAX_ALTS];
    uint32_t        n_prog[KIMI_SAMPLE_MAX_ALTS];
    const int32_t  *name[KIMI_SAMPLE_MAX_ALTS][KIMI_TOOL_MAX_CALLS];
    uint32_t        n_name[KIMI_SAMPLE_MAX_ALTS][KIMI_TOOL_MAX_CALLS];
} kimi_sample_frame_t;

static int kimi_sample_frame(const int32_t *w, uint32_t n,
    kimi_sample_frame_t *f);


enum {
    KIMI_JV_OTHER = 0,
    KIMI_JV_SPECIAL,          /* special or empty: never part of the JSON */
    KIMI_JV_PLAIN,            /* complete UTF-8, no control byte, '"' nor
                                 '\\': as is inside a string */
};

typedef struct {
    const kimi_tokenizer_t  *tok;
    uint8_t                 *cls;        /* [vocab] KIMI_JV_* */
    uint32_t                *by_first;   /* [vocab] non-special ids */
    uint32_t                 first[257]; /* by_first offsets per byte */
    uint32_t                *special;    /* [vocab] special ids */
    uint32_t                 n_special;
    /* guided_regex: the non-special ids in byte order and each one's
     * common prefix with the one before (built on first use) */
    const kimi_tokenizer_t  *sorted_for;
    uint32_t                *by_bytes;
    uint16_t                *lcp;
} kimi_json_vocab_t;

/* guided_regex: the tokens a DFA state allows depend on the program, the
 * state and the vocabulary alone, and a request's loops, or the requests
 * of one pattern, meet the same states again: each walk's result is kept
 * as a bitset of the vocabulary, a few dozen states a sampler, the least
 * recently used replaced (a hit costs a pass over vocab / 64 words
 * instead of the vocabulary's trie). */
#define KIMI_REGEX_CACHE      64
#define KIMI_REGEX_HASH_MAX   (1u << 20)  /* larger programs: not cached */

typedef struct {
    uint64_t                 key;        /* program hash; 0: empty */
    const kimi_tokenizer_t  *tok;
    int32_t                  state;
    uint64_t                 used;       /* the sampler's clock at its last use */
    uint64_t                *bits;       /* [(vocab + 63) / 64] allowed ids */
} kimi_regex_mask_t;

struct kimi_sampler {
    kimi_json_vocab_t  jv;
    kimi_regex_mask_t  rmask[KIMI_REGEX_CACHE];
    uint64_t           rclock;
    kimi_gram_arena_t *garena;    /* guided grammars' stacks (on first use) */
    uint32_t      vocab;
    float        *x;          /* [vocab] row after suppression/penalties */
    uint32_t     *count;      /* [vocab] occurrences in the output */
    uint8_t      *seen;       /* [vocab] in prompt or output */
    uint32_t     *touched;    /* [vocab] ids with seen set */
    float        *cv;         /* [vocab] candidates: logit / temperature */
    float        *cw;         /* [vocab]   exp(cv - max): weight */
    uint32_t     *cid;        /* [vocab]   token id */
    kimi_cand_t  *cand;       /* [vocab] quickselect space, top_k > heap */
    uint16_t     *cb;         /* [vocab]   top_p bucket of each candidate */
    kimi_cand_t  *edge;       /* [vocab] top_p: the boundary bucket */
    float        *heap;       /* [KIMI_SAMPLE_HEAP_K] top_k min-heap */
    double       *mass;       /* [KIMI_SAMPLE_BUCKETS] top_p histogram */
};


/* ---- RNG ----------------------------------------------------------------- */

static uint64_t
kimi_splitmix64(uint64_t *x)
{
    uint64_t  z;

    z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}


void
kimi_rng_seed(kimi_rng_t *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        rng->s[i] = kimi_splitmix64(&seed);
    }
}


static inline uint64_t
kimi_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}


uint64_t
kimi_rng_next(kimi_rng_t *rng)
{
    uint64_t  *s = rng->s, r, t;

    r = kimi_rotl(s[1] * 5, 7) * 9;
    t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = kimi_rotl(s[3], 45);

    return r;
}


double
kimi_rng_uniform(kimi_rng_t *rng)
{
    return (double) (kimi_rng_next(rng) >> 11) * 0x1.0p-53;
}


/* ---- parameters ---------------------------------------------------------- */

int
kimi_sample_params_check(const kimi_shm_sampling_t *sp, uint32_t vocab,
    kimi_err_t *err)
{
    if (!(sp->temperature >= 0.0f) || isinf(sp->temperature)) {
        return kimi_err_set(err, KIMI_EINVAL, "temperature must be "
                            "non-negative, got %g", sp->temperature);
    }

    if (!(sp->top_p > 0.0f && sp->top_p <= 1.0f)) {
        return kimi_err_set(err, KIMI_EINVAL, "top_p must be in (0, 1], "
                            "got %g", sp->top_p);
    }

    if (!(sp->min_p >= 0.0f && sp->min_p <= 1.0f)) {
        return kimi_err_set(err, KIMI_EINVAL, "min_p must be in [0, 1], "
                            "got %g", sp->min_p);
    }

    if (sp->top_k < -1) {
        return kimi_err_set(err, KIMI_EINVAL, "top_k must be 0 or -1 "
                            "(disable), or at least 1, got %d", sp->top_k);
    }

    if (!(sp->presence_penalty >= -2.0f && sp->presence_penalty <= 2.0f)) {
        return kimi_err_set(err, KIMI_EINVAL, "presence_penalty must be in "
                            "[-2, 2], got %g", sp->presence_penalty);
    }

    if (!(sp->frequency_penalty >= -2.0f && sp->frequency_penalty <= 2.0f)) {
        return kimi_err_set(err, KIMI_EINVAL, "frequency_penalty must be in "
                            "[-2, 2], got %g", sp->frequency_penalty);
    }

    if (!(sp->repetition_penalty > 0.0f && sp->repetition_penalty <= 2.0f)) {
        return kimi_err_set(err, KIMI_EINVAL, "repetition_penalty must be "
                            "in (0, 2], got %g", sp->repetition_penalty);
    }

    if (sp->n_stop_ids > KIMI_SHM_MAX_STOP_IDS) {
        return kimi_err_set(err, KIMI_EINVAL, "at most %d stop token ids, "
                            "got %u", KIMI_SHM_MAX_STOP_IDS, sp->n_stop_ids);
    }

    for (uint32_t i = 0; i < sp->n_stop_ids; i++) {
        if (sp->stop_ids[i] < 0 || (uint32_t) sp->stop_ids[i] >= vocab) {
            return kimi_err_set(err, KIMI_EINVAL, "stop token id %d is out "
                                "of range [0, %u)", sp->stop_ids[i], vocab);
        }
    }

    if (sp->allowed_only && sp->n_logit_bias == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "allowed_token_ids is empty");
    }

    if (sp->n_logit_bias > KIMI_SHM_MAX_LOGIT_BIAS) {
        return kimi_err_set(err, KIMI_EINVAL, "at most %d logit_bias entries,"
                            " got %u", KIMI_SHM_MAX_LOGIT_BIAS,
                            sp->n_logit_bias);
    }

    for (uint32_t i = 0; i < sp->n_logit_bias; i++) {
        const kimi_shm_logit_bias_t  *lb = &sp->logit_bias[i];

        if (lb->token < 0 || (uint32_t) lb->token >= vocab) {
            return kimi_err_set(err, KIMI_EINVAL, "logit_bias token id %d is"
                                " out of range [0, %u)", lb->token, vocab);
        }

        if (!(lb->bias >= -100.0f && lb->bias <= 100.0f)) {
            return kimi_err_set(err, KIMI_EINVAL, "logit_bias of token %d"
                                " must be in [-100, 100], got %g", lb->token,
                                lb->bias);
        }
    }

    if (sp->prompt_logprobs > KIMI_SHM_MAX_TOP_LOGPROBS + 1) {
        return kimi_err_set(err, KIMI_EINVAL, "prompt_logprobs must be at "
                            "most %d, got %d", KIMI_SHM_MAX_TOP_LOGPROBS,
                            sp->prompt_logprobs - 1);
    }

    if (sp->top_logprobs > KIMI_SHM_MAX_TOP_LOGPROBS) {
        return kimi_err_set(err, KIMI_EINVAL, "top_logprobs must be at most "
                            "%d, got %u", KIMI_SHM_MAX_TOP_LOGPROBS,
                            sp->top_logprobs);
    }

    if (sp->max_tokens != 0 && sp->min_tokens > sp->max_tokens) {
        return kimi_err_set(err, KIMI_EINVAL, "min_tokens must be less than "
                            "or equal to max_tokens=%u, got %u",
                            sp->max_tokens, sp->min_tokens);
    }

    return KIMI_OK;
}


int
kimi_sample_is_greedy(const kimi_shm_sampling_t *sp)
{
    return sp->temperature < KIMI_SAMPLE_GREEDY_EPS;
}


/* ---- sampler ------------------------------------------------------------- */

int
kimi_sampler_init(kimi_sampler_t **out, uint32_t vocab, kimi_err_t *err)
{
    kimi_sampler_t  *s;

    if (vocab == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "sampler: vocab size is 0");
    }

    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        goto failed;
    }

    s->vocab = vocab;
    s->x = malloc((size_t) vocab * sizeof(float));
    s->count = calloc(vocab, sizeof(uint32_t));
    s->seen = calloc(vocab, 1);
    s->touched = malloc((size_t) vocab * sizeof(uint32_t));
    s->cv = malloc((size_t) vocab * sizeof(float));
    s->cw = malloc((size_t) vocab * sizeof(float));
    s->cid = malloc((size_t) vocab * sizeof(uint32_t));
    s->cand = malloc((size_t) vocab * sizeof(kimi_cand_t));
    s->cb = malloc((size_t) vocab * sizeof(uint16_t));
    s->edge = malloc((size_t) vocab * sizeof(kimi_cand_t));
    s->heap = malloc(KIMI_SAMPLE_HEAP_K * sizeof(float));
    s->mass = malloc(KIMI_SAMPLE_BUCKETS * sizeof(double));

    if (s->x == NULL || s->count == NULL || s->seen == NULL
        || s->touched == NULL || s->cand == NULL || s->cb == NULL
        || s->cv == NULL || s->cw == NULL || s->cid == NULL
        || s->edge == NULL || s->heap == NULL || s->mass == NULL)
    {
        goto failed;
    }

    *out = s;
    return KIMI_OK;

failed:

    kimi_sampler_free(s);
    return kimi_err_set(err, KIMI_ENOMEM, "sampler: out of memory for a "
                        "vocab of %u", vocab);
}


void
kimi_sampler_free(kimi_sampler_t *s)
{
    if (s == NULL) {
        return;
    }

    free(s->jv.cls);
    free(s->jv.by_first);
    free(s->jv.special);
    free(s->jv.by_bytes);
    free(s->jv.lcp);
    for (int i = 0; i < KIMI_REGEX_CACHE; i++) {
        free(s->rmask[i].bits);
    }
    kimi_gram_arena_free(s->garena);

    free(s->x);
    free(s->count);
    free(s->seen);
    free(s->touched);
    free(s->cv);
    free(s->cw);
    free(s->cid);
    free(s->cand);
    free(s->cb);
    free(s->edge);
    free(s->heap);
    free(s->mass);
    free(s);
}


static int
kimi_sample_has_penalties(const kimi_shm_sampling_t *sp)
{
    return sp->repetition_penalty != 1.0f || sp->presence_penalty != 0.0f
           || sp->frequency_penalty != 0.0f;
}


static int kimi_sample_lists_check(const int32_t *words, uint32_t n_words,
    uint32_t vocab, const char *what, kimi_err_t *err);


int
kimi_sample_guided_check(const int32_t *words, uint32_t n_words,
    uint32_t vocab, kimi_err_t *err)
{
    char      msg[160];

    if (n_words > 0 && words[0] == KIMI_TOOL_CALL_TAG) {
        kimi_sample_frame_t  f;

        if (kimi_sample_frame(words, n_words, &f) != 0) {
            return kimi_err_set(err, KIMI_EINVAL, "tool call words: bad"
                                " layout");
        }
        for (uint32_t i = 0; i < f.n_pre + f.n_post + f.n_never; i++) {
            int32_t  id = i < f.n_pre ? f.pre[i]
                          : i < f.n_pre + f.n_post ? f.post[i - f.n_pre]
                          : f.never[i - f.n_pre - f.n_post];

            if (id < 0 || (uint32_t) id >= vocab) {
                return kimi_err_set(err, KIMI_EINVAL, "tool call words: id"
                                    " %d outside the vocabulary", id);
            }
        }
        for (uint32_t a = 0; a < f.n_alts; a++) {
            for (uint32_t c = 0; c < f.max_calls; c++) {
                for (uint32_t i = 0; i < f.n_name[a][c]; i++) {
                    if (f.name[a][c][i] < 0
                        || (uint32_t) f.name[a][c][i] >= vocab)
                    {
                        return kimi_err_set(err, KIMI_EINVAL, "tool call"
                                            " words: id %d outside the"
                                            " vocabulary", f.name[a][c][i]);
                    }
                }
            }
            if (kimi_json_schema_check(f.prog[a], f.n_prog[a], msg,
                                       sizeof(msg)) != 0)
            {
                return kimi_err_set(err, KIMI_EINVAL, "%s", msg);
            }
        }
        return KIMI_OK;
    }

    if (n_words > 0 && words[0] == KIMI_STAG_TAG) {
        kimi_stag_t  t;

        if (kimi_stag_view(words + 1, n_words - 1, &t, msg, sizeof(msg)) != 0)
        {
            return kimi_err_set(err, KIMI_EINVAL, "%s", msg);
        }
        return KIMI_OK;
    }

    if (n_words > 0 && words[0] == KIMI_REGEX_TAG) {
        if (kimi_regex_check(words + 1, n_words - 1, msg, sizeof(msg)) != 0) {
            return kimi_err_set(err, KIMI_EINVAL, "%s", msg);
        }
        return KIMI_OK;
    }

    if (n_words > 0 && words[0] == KIMI_GRAMMAR_TAG) {
        if (kimi_gram_check(words + 1, n_words - 1, msg, sizeof(msg)) != 0) {
            return kimi_err_set(err, KIMI_EINVAL, "%s", msg);
        }
        return KIMI_OK;
    }

    if (n_words > 1 && words[0] == KIMI_SCHEMA_TAG) {
        if (kimi_json_schema_check(words + 1, n_words - 1, msg, sizeof(msg))
            != 0)
        {
            return kimi_err_set(err, KIMI_EINVAL, "%s", msg);
        }
        return KIMI_OK;
    }

    return kimi_sample_lists_check(words, n_words, vocab, "guided_choice",
                                   err);
}


int
kimi_sample_bad_words_check(const int32_t *words, uint32_t n_words,
    uint32_t vocab, kimi_err_t *err)
{
    return kimi_sample_lists_check(words, n_words, vocab, "bad_words", err);
}


/* n, then n times (count >= 1, count ids inside the vocabulary), nothing
 * left over: guided_choice's and bad_words' layout */
static int
kimi_sample_lists_check(const int32_t *words, uint32_t n_words,
    uint32_t vocab, const char *what, kimi_err_t *err)
{
    uint32_t  at = 1, n;

    if (n_words < 3 || words[0] < 1) {
        return kimi_err_set(err, KIMI_EINVAL, "%s: no entry", what);
    }

    for (int32_t c = 0; c < words[0]; c++) {
        if (at >= n_words || words[at] < 1
            || (uint32_t) words[at] > n_words - at - 1)
        {
            return kimi_err_set(err, KIMI_EINVAL, "%s: entry %d is"
                                " malformed", what, c);
        }
        n = (uint32_t) words[at++];
        for (uint32_t i = 0; i < n; i++, at++) {
            if (words[at] < 0 || (uint32_t) words[at] >= vocab) {
                return kimi_err_set(err, KIMI_EINVAL, "%s: token id %d is"
                                    " outside the vocabulary", what,
                                    words[at]);
            }
        }
    }

    if (at != n_words) {
        return kimi_err_set(err, KIMI_EINVAL, "%s: %u words left over", what,
                            n_words - at);
    }
    return KIMI_OK;
}


int
kimi_sample_is_plain_greedy(const kimi_sample_req_t *req)
{
    const kimi_shm_sampling_t  *sp = req->sampling;

    return req->prompt_next == 0
           && kimi_sample_is_greedy(sp) && req->n_output >= sp->min_tokens
           && sp->n_logit_bias == 0 && !sp->json_object
           && req->n_guided == 0 && req->n_bad == 0
           && !kimi_sample_has_penalties(sp) && sp->top_logprobs == 0;
}


int
kimi_sample_is_plain_random(const kimi_sample_req_t *req)
{
    const kimi_shm_sampling_t  *sp = req->sampling;

    return req->prompt_next == 0
           && !kimi_sample_is_greedy(sp) && req->n_output >= sp->min_tokens
           && sp->n_logit_bias == 0 && !sp->json_object
           && req->n_guided == 0 && req->n_bad == 0
           && !kimi_sample_has_penalties(sp)
           && !sp->logprobs && sp->top_logprobs == 0;
}


static uint32_t kimi_sample_argmax(const float *x, uint32_t n);
static void kimi_sample_stag_mask(kimi_sampler_t *s,
    const kimi_sample_req_t *req);
static void kimi_sample_gram_mask(kimi_sampler_t *s,
    const kimi_sample_req_t *req);
static void kimi_sample_only_eos(kimi_sampler_t *s,
    const kimi_sample_req_t *req);
static void kimi_sample_specials_off(kimi_sampler_t *s,
    const kimi_sample_req_t *req, float *eos_x);
static void kimi_sample_eos_restore(kimi_sampler_t *s,
    const kimi_sample_req_t *req, const float *eos_x);
static void kimi_sample_json_mask(kimi_sampler_t *s,
    const kimi_sample_req_t *req, const int32_t *prog,
    const kimi_sample_frame_t *frame);
static int kimi_sample_json_vocab(kimi_sampler_t *s,
    const kimi_tokenizer_t *tk);
static void kimi_sample_regex_mask(kimi_sampler_t *s,
    const kimi_sample_req_t *req, const int32_t *prog);
static void kimi_sample_guided_mask(kimi_sampler_t *s,
    const kimi_sample_req_t *req);
static void kimi_sample_bad_words_mask(kimi_sampler_t *s,
    const kimi_sample_req_t *req);
static int kimi_sample_is_eos(const kimi_sample_req_t *req, uint32_t id);


/* Every token masked (min_tokens over a set that holds only stop ids, or
 * logit_bias -100 everywhere): the model's own best, among the allowed
 * ids when allowed_token_ids is set. */
static uint32_t
kimi_sample_fallback(const float *logits, uint32_t vocab,
    const kimi_shm_sampling_t *sp)
{
    uint32_t  best, id;

    if (!sp->allowed_only || sp->n_logit_bias == 0) {
        return kimi_sample_argmax(logits, vocab);
    }

    best = (uint32_t) sp->logit_bias[0].token;
    for (uint32_t i = 1; i < sp->n_logit_bias; i++) {
        id = (uint32_t) sp->logit_bias[i].token;
        if (id < vocab && logits[id] > logits[best]) {
            best = id;
        }
    }
    return best;
}


/* Copies the row into s->x and applies, in vLLM's order, min_tokens
 * suppression, logit_bias, then the penalties.  Only called when at least
 * one of them applies. */
static void
kimi_sample_process(kimi_sampler_t *s, const float *logits,
    const kimi_sample_req_t *req, int suppress)
{
    const kimi_shm_sampling_t  *sp = req->sampling;
    uint32_t                    n_touched = 0, n_all, id;
    float                       v;

    if (sp->allowed_only) {
        /* allowed_token_ids: every other token is masked */
        for (uint32_t i = 0; i < s->vocab; i++) {
            s->x[i] = -INFINITY;
        }
        for (uint32_t i = 0; i < sp->n_logit_bias; i++) {
            id = (uint32_t) sp->logit_bias[i].token;
            if (id < s->vocab) {
                s->x[id] = logits[id];
            }
        }

    } else {
        memcpy(s->x, logits, (size_t) s->vocab * sizeof(float));
    }

    for (uint32_t i = 0; i < sp->n_logit_bias; i++) {
        id = (uint32_t) sp->logit_bias[i].token;
        if (id < s->vocab) {
            s->x[id] += sp->logit_bias[i].bias;
        }
    }

    if (kimi_sample_has_penalties(sp)) {
        n_all = req->n_prompt + req->n_output;

        for (uint32_t i = 0; i < n_all; i++) {
            id = (uint32_t) req->tokens[i];
            if (id >= s->vocab) {
                continue;               /* checked at admission; be safe */
            }

            if (!s->seen[id]) {
                s->seen[id] = 1;
                s->touched[n_touched++] = id;
            }

            if (i >= req->n_prompt) {
                s->count[id]++;
            }
        }

        for (uint32_t i = 0; i < n_touched; i++) {
            id = s->touched[i];
            v = s->x[id];

            if (sp->repetition_penalty != 1.0f) {
                v = v > 0.0f ? v / sp->repetition_penalty
                             : v * sp->repetition_penalty;
            }

            if (s->count[id] > 0) {
                v -= sp->frequency_penalty * (float) s->count[id];
                v -= sp->presence_penalty;
            }

            s->x[id] = v;
            s->seen[id] = 0;
            s->count[id] = 0;
        }
    }

    if (suppress) {
        for (uint32_t i = 0; i < sp->n_stop_ids; i++) {
            s->x[sp->stop_ids[i]] = -INFINITY;
        }

        for (uint32_t i = 0; !sp->ignore_eos && i < req->n_eos; i++) {
            if ((uint32_t) req->eos_ids[i] < s->vocab) {
                s->x[req->eos_ids[i]] = -INFINITY;
            }
        }
    }

    if (sp->json_object && req->tokenizer != NULL) {
        kimi_sample_json_mask(s, req, NULL, NULL);
    }

    if (req->n_guided > 0 && req->guided[0] == KIMI_SCHEMA_TAG) {
        if (req->tokenizer != NULL) {
            kimi_sample_json_mask(s, req, req->guided + 1, NULL);
        }

    } else if (req->n_guided > 0 && req->guided[0] == KIMI_REGEX_TAG) {
        if (req->tokenizer != NULL) {
            kimi_sample_regex_mask(s, req, req->guided + 1);
        }

    } else if (req->n_guided > 0 && req->guided[0] == KIMI_GRAMMAR_TAG) {
        if (req->tokenizer != NULL) {
            kimi_sample_gram_mask(s, req);
        }

    } else if (req->n_guided > 0 && req->guided[0] == KIMI_STAG_TAG) {
        if (req->tokenizer != NULL) {
            kimi_sample_stag_mask(s, req);
        }

    } else if (req->n_guided > 0 && req->guided[0] == KIMI_TOOL_CALL_TAG) {
        kimi_sample_frame_t  f;

        if (req->tokenizer != NULL
            && kimi_sample_frame(req->guided, req->n_guided, &f) == 0)
        {
            kimi_sample_json_mask(s, req, f.prog[0], &f);
        }

    } else if (req->n_guided > 0) {
        kimi_sample_guided_mask(s, req);
    }

    if (req->n_bad > 0) {
        kimi_sample_bad_words_mask(s, req);
    }
}


/* vLLM's bad_words: a word's last token is masked when the output so far
 * ends with the rest of the word (a one-token word: always).  Only output
 * tokens count, as in vLLM; words are n, then (count, ids) each. */
static void
kimi_sample_bad_words_mask(kimi_sampler_t *s, const kimi_sample_req_t *req)
{
    const int32_t  *w = req->bad, *out = req->tokens + req->n_prompt;
    uint32_t        at = 1, len, k;

    for (int32_t b = 0; b < w[0]; b++) {
        len = (uint32_t) w[at];
        if (len - 1 <= req->n_output) {
            for (k = 0; k + 1 < len; k++) {
                if (out[req->n_output - (len - 1) + k] != w[at + 1 + k]) {
                    break;
                }
            }
            if (k + 1 == len) {
                s->x[w[at + len]] = -INFINITY;
            }
        }
        at += 1 + len;
    }
}


static int
kimi_sample_bytes_cmp(const void *a, const void *b, void *tk)
{
    const char  *x, *y;
    size_t       lx, ly;
    int          c;

    x = kimi_token_bytes(tk, (int32_t) *(const uint32_t *) a, &lx);
    y = kimi_token_bytes(tk, (int32_t) *(const uint32_t *) b, &ly);
    c = memcmp(x, y, lx < ly ? lx : ly);
    return c != 0 ? c : (lx > ly) - (lx < ly);
}


/* jv->by_bytes and jv->lcp for the tokenizer of jv (built by
 * kimi_sample_json_vocab first) */
static int
kimi_sample_regex_vocab(kimi_sampler_t *s)
{
    kimi_json_vocab_t  *jv = &s->jv;
    uint32_t            n = s->vocab - jv->n_special;
    const char         *x, *y;
    size_t              lx, ly, k;

    if (jv->sorted_for == jv->tok) {
        return 0;
    }
    if (jv->by_bytes == NULL) {
        jv->by_bytes = malloc((size_t) s->vocab * sizeof(uint32_t));
        jv->lcp = malloc((size_t) s->vocab * sizeof(uint16_t));
        if (jv->by_bytes == NULL || jv->lcp == NULL) {
            return -1;
        }
    }
    memcpy(jv->by_bytes, jv->by_first, (size_t) n * sizeof(uint32_t));
    qsort_r(jv->by_bytes, n, sizeof(uint32_t), kimi_sample_bytes_cmp,
            (void *) jv->tok);
    for (uint32_t i = 0; i < n; i++) {
        k = 0;
        if (i > 0) {
            x = kimi_token_bytes(jv->tok, (int32_t) jv->by_bytes[i - 1], &lx);
            y = kimi_token_bytes(jv->tok, (int32_t) jv->by_bytes[i], &ly);
            while (k < lx && k < ly && k < UINT16_MAX && x[k] == y[k]) {
                k++;
            }
        }
        jv->lcp[i] = (uint16_t) k;
    }
    jv->sorted_for = jv->tok;
    return 0;
}


/* FNV-1a over the program's words (p[0] of them), never 0; 0 for a
 * program too large to hash at every step */
static uint64_t
kimi_regex_prog_key(const int32_t *prog)
{
    uint64_t  h = 0xcbf29ce484222325ULL;
    uint32_t  n = (uint32_t) prog[0];

    if (n > KIMI_REGEX_HASH_MAX) {
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ (uint32_t) prog[i]) * 0x100000001b3ULL;
    }
    return h != 0 ? h : 1;
}


/* The cached mask of (key, tok, state), or NULL */
static const uint64_t *
kimi_regex_mask_find(kimi_sampler_t *s, uint64_t key,
    const kimi_tokenizer_t *tk, int32_t state)
{
    for (int i = 0; key != 0 && i < KIMI_REGEX_CACHE; i++) {
        kimi_regex_mask_t  *m = &s->rmask[i];

        if (m->key == key && m->tok == tk && m->state == state) {
            m->used = ++s->rclock;
            return m->bits;
        }
    }
    return NULL;
}


/* Moves s->seen's allowed ids (s->seen cleared) into the mask of (key,
 * tok, state), the least recently used entry; NULL (s->seen left as it
 * is) for a program not cached or out of memory */
static const uint64_t *
kimi_regex_mask_keep(kimi_sampler_t *s, uint64_t key,
    const kimi_tokenizer_t *tk, int32_t state)
{
    kimi_regex_mask_t  *m = &s->rmask[0];
    uint32_t            words = (s->vocab + 63) / 64;

    if (key == 0) {
        return NULL;
    }
    for (int i = 1; i < KIMI_REGEX_CACHE; i++) {
        if (s->rmask[i].used < m->used) {
            m = &s->rmask[i];
        }
    }
    if (m->bits == NULL) {
        m->bits = malloc((size_t) words * sizeof(uint64_t));
        if (m->bits == NULL) {
            return NULL;
        }
    }
    memset(m->bits, 0, (size_t) words * sizeof(uint64_t));
    for (uint32_t id = 0; id < s->vocab; id++) {
        m->bits[id / 64] |= (uint64_t) (s->seen[id] != 0) << (id % 64);
        s->seen[id] = 0;
    }
    m->key = key;
    m->tok = tk;
    m->state = state;
    m->used = ++s->rclock;
    return m->bits;
}


/* guided_regex: the DFA's state after the output so far; a token is
 * allowed when its bytes keep the DFA alive (every live state can still
 * reach a match), eos only in an accepting state.  Tokens are walked in
 * byte order, each from the state its common prefix with the one before
 * already reached, and a prefix that died kills every token sharing it
 * unread: the cost is about the vocabulary's trie, not its bytes; the
 * result is kept by state (kimi_regex_mask_t). */
static void
kimi_sample_regex_mask(kimi_sampler_t *s, const kimi_sample_req_t *req,
    const int32_t *prog)
{
    const kimi_tokenizer_t  *tk = req->tokenizer;
    const int32_t           *out = req->tokens + req->n_prompt;
    kimi_json_vocab_t       *jv = &s->jv;
    const char              *b;
    const uint64_t          *kept = NULL;
    size_t                   len, have = 0, dead = SIZE_MAX, k;
    int32_t                  state = 0, st[1025];
    uint32_t                 id, n;
    uint64_t                 key = 0;

    for (uint32_t i = 0; i < req->n_output && state >= 0; i++) {
        b = kimi_tokenizer_is_special(tk, out[i]) ? NULL
            : kimi_token_bytes(tk, out[i], &len);
        state = b != NULL ? kimi_regex_step(prog, state, b, len) : -1;
    }

    if (state >= 0) {
        key = kimi_regex_prog_key(prog);
        kept = kimi_regex_mask_find(s, key, tk, state);
    }

    if (state >= 0 && kept == NULL && kimi_sample_json_vocab(s, tk) == 0
        && kimi_sample_regex_vocab(s) == 0)
    {
        /* the program's tables, unpacked once (kimi_regex_step's layout) */
        const int32_t  *trans = prog + 3 + 64 + (prog[1] + 31) / 32;
        int32_t         nc = prog[2];
        uint8_t         cls[256];

        for (unsigned c = 0; c < 256; c++) {
            cls[c] = (uint8_t) ((uint32_t) prog[3 + c / 4] >> (8 * (c % 4)));
        }
        n = s->vocab - jv->n_special;
        st[0] = state;
        for (uint32_t i = 0; i < n; i++) {
            id = jv->by_bytes[i];
            k = jv->lcp[i];
            if (dead != SIZE_MAX && k > dead) {
                continue;                     /* shares the prefix that died */
            }
            b = kimi_token_bytes(tk, (int32_t) id, &len);
            k = k < have ? k : have;
            dead = SIZE_MAX;
            for ( /* void */ ; k < len; k++) {
                int32_t  nx = trans[(k < 1024 ? st[k] : st[1024]) * nc
                                    + cls[(unsigned char) b[k]]];

                if (nx < 0) {
                    dead = k;
                    break;
                }
                if (k + 1 <= 1024) {
                    st[k + 1] = nx;
                } else {
                    st[1024] = nx;            /* past the stack: walk on alone */
                }
            }
            have = dead != SIZE_MAX ? dead : (len < 1024 ? len : 1024);
            if (dead == SIZE_MAX) {
                s->seen[id] = 1;
            }
        }
        kept = kimi_regex_mask_keep(s, key, tk, state);
    }

    if (kept != NULL && req->n_eos <= 8) {
        /* eos stays where the state accepts (it is special: never in the
         * mask), everything the mask does not hold goes */
        float  eos_x[8];
        int    eos_on = state >= 0 && kimi_regex_accepts(prog, state);

        for (uint32_t i = 0; i < req->n_eos; i++) {
            eos_x[i] = (uint32_t) req->eos_ids[i] < s->vocab ? s->x[req->eos_ids[i]] : 0.f;
        }
        for (uint32_t w = 0; w < (s->vocab + 63) / 64; w++) {
            uint64_t  gone = ~kept[w];

            while (gone != 0) {
                id = w * 64 + (uint32_t) __builtin_ctzll(gone);
                gone &= gone - 1;
                if (id < s->vocab) {
                    s->x[id] = -INFINITY;
                }
            }
        }
        for (uint32_t i = 0; eos_on && i < req->n_eos; i++) {
            if ((uint32_t) req->eos_ids[i] < s->vocab) {
                s->x[req->eos_ids[i]] = eos_x[i];
            }
        }
        return;
    }

    /* s->seen marks the allowed ids (cleared again here) */
    for (id = 0; id < s->vocab; id++) {
        if (s->seen[id] || (kept != NULL && (kept[id / 64] >> (id % 64)) & 1)) {
            s->seen[id] = 0;
        } else if (!(kimi_sample_is_eos(req, id)
                     && (state < 0 || kimi_regex_accepts(prog, state))))
        {
            s->x[id] = -INFINITY;
        }
    }
}


/* guided_choice: the output so far must be the start of one of the
 * choices' token sequences; the next token is that choice's next one, and
 * eos once a choice is complete.  Everything else is masked (a token the
 * mask allows keeps its processed logit). */
static void
kimi_sample_guided_mask(kimi_sampler_t *s, const kimi_sample_req_t *req)
{
    const int32_t  *w = req->guided, *out = req->tokens + req->n_prompt;
    uint32_t        at = 1, n, id;
    int             complete = 0;

    /* s->seen marks the allowed ids (clear again before return) */
    for (int32_t c = 0; c < w[0]; c++) {
        n = (uint32_t) w[at++];
        if (n >= req->n_output
            && memcmp(w + at, out, (size_t) req->n_output * sizeof(int32_t))
               == 0)
        {
            if (n == req->n_output) {
                complete = 1;
            } else if ((uint32_t) w[at + req->n_output] < s->vocab) {
                s->seen[w[at + req->n_output]] = 1;
            }
        }
        at += n;
    }

    for (id = 0; id < s->vocab; id++) {
        if (s->seen[id]) {
            s->seen[id] = 0;
        } else if (!(complete && kimi_sample_is_eos(req, id))) {
            s->x[id] = -INFINITY;
        }
    }
}


static int
kimi_sample_is_eos(const kimi_sample_req_t *req, uint32_t id)
{
    for (uint32_t i = 0; i < req->n_eos; i++) {
        if ((uint32_t) req->eos_ids[i] == id) {
            return 1;
        }
    }
    return 0;
}


/* Builds s->jv for tk (once; again if the tokenizer changes). */
static int
kimi_sample_json_vocab(kimi_sampler_t *s, const kimi_tokenizer_t *tk)
{
    kimi_json_vocab_t  *jv = &s->jv;
    const char         *b;
    size_t              len;
    uint32_t            id, k, fill[256];
    int                 plain;

    if (jv->tok == tk) {
        return 0;
    }

    if (jv->cls == NULL) {
        jv->cls = malloc(s->vocab);
        jv->by_first = malloc((size_t) s->vocab * sizeof(uint32_t));
        jv->special = malloc((size_t) s->vocab * sizeof(uint32_t));
        if (jv->cls == NULL || jv->by_first == NULL || jv->special == NULL) {
            return -1;
        }
    }

    memset(jv->first, 0, sizeof(jv->first));
    jv->n_special = 0;

    for (id = 0; id < s->vocab; id++) {
        b = kimi_tokenizer_is_special(tk, (int32_t) id) ? NULL
            : kimi_token_bytes(tk, (int32_t) id, &len);
        if (b == NULL || len == 0) {
            jv->cls[id] = KIMI_JV_SPECIAL;
            jv->special[jv->n_special++] = id;
            continue;
        }
        plain = kimi_json_plain_text(b, len);
        jv->cls[id] = plain ? KIMI_JV_PLAIN : KIMI_JV_OTHER;
        jv->first[(unsigned char) b[0] + 1]++;
    }

    for (k = 0; k < 256; k++) {
        jv->first[k + 1] += jv->first[k];
        fill[k] = jv->first[k];
    }
    for (id = 0; id < s->vocab; id++) {
        if (jv->cls[id] != KIMI_JV_SPECIAL) {
            b = kimi_token_bytes(tk, (int32_t) id, &len);
            jv->by_first[fill[(unsigned char) b[0]]++] = id;
        }
    }

    jv->tok = tk;
    return 0;
}


/* A byte-level recogniser as the token walk drives it: st (the state
 * after the output so far) copied into scratch, then p fed to the copy;
 * 0 while it accepts */
typedef int (*kimi_sample_try_t)(void *scratch, const void *st, const char *p,
    size_t n);

static int
kimi_sample_json_try(void *scratch, const void *st, const char *p, size_t n)
{
    kimi_json_copy(scratch, st);
    return kimi_json_feed(scratch, p, n);
}

/* a grammar's stack nodes a trial feed made are dropped after it */
static int
kimi_sample_stag_try(void *scratch, const void *st, const char *p, size_t n)
{
    const kimi_stag_state_t  *g = st;
    uint32_t                  mark;
    int                       rc;

    mark = g->arena != NULL ? kimi_gram_mark(g->arena) : 0;

    kimi_stag_copy(scratch, g);
    rc = kimi_stag_feed(scratch, p, n);
    if (g->arena != NULL) {
        kimi_gram_rewind(g->arena, mark);
    }
    return rc;
}

/* the stack nodes a trial feed made are dropped after it */
static int
kimi_sample_gram_try(void *scratch, const void *st, const char *p, size_t n)
{
    const kimi_gram_state_t  *g = st;
    uint32_t                  mark = kimi_gram_mark(g->arena);
    int                       rc;

    kimi_gram_copy(scratch, g);
    rc = kimi_gram_feed(scratch, p, n);
    kimi_gram_rewind(g->arena, mark);
    return rc;
}


/* Masks every token the recogniser refuses.  in_string: inside a JSON
 * string, where the plain tokens pass unread; elsewhere a refused first
 * byte masks its whole bucket and the rest are fed whole.  Where no byte
 * can follow (nesting at its limit under a schema that keeps asking for
 * more) the answer ends here, a prefix, as at max_tokens. */
static void
kimi_sample_bytes_mask(kimi_sampler_t *s, const kimi_sample_req_t *req,
    kimi_sample_try_t try_feed, const void *st, void *scratch, int in_string)
{
    const kimi_tokenizer_t  *tk = req->tokenizer;
    kimi_json_vocab_t       *jv = &s->jv;
    const char              *b;
    size_t                   len;
    uint32_t                 i, id;
    unsigned char            c;
    int                      allowed = 0;

    if (in_string) {
        for (id = 0; id < s->vocab; id++) {
            if (jv->cls[id] == KIMI_JV_OTHER && s->x[id] > -INFINITY) {
                b = kimi_token_bytes(tk, (int32_t) id, &len);
                if (b == NULL || try_feed(scratch, st, b, len) != 0) {
                    s->x[id] = -INFINITY;
                }
            }
        }
        return;
    }

    for (unsigned k = 0; k < 256; k++) {
        c = (unsigned char) k;
        if (try_feed(scratch, st, (const char *) &c, 1) != 0) {
            for (i = jv->first[k]; i < jv->first[k + 1]; i++) {
                s->x[jv->by_first[i]] = -INFINITY;
            }
            continue;
        }
        for (i = jv->first[k]; i < jv->first[k + 1]; i++) {
            id = jv->by_first[i];
            if (s->x[id] > -INFINITY) {
                b = kimi_token_bytes(tk, (int32_t) id, &len);
                if (b == NULL || try_feed(scratch, st, b, len) != 0) {
                    s->x[id] = -INFINITY;
                }
            }
            allowed |= s->x[id] > -INFINITY;
        }
    }

    if (!allowed) {
        for (i = 0; i < req->n_eos; i++) {
            if ((uint32_t) req->eos_ids[i] < s->vocab) {
                s->x[req->eos_ids[i]] = 0.0f;
            }
        }
    }
}


/* JSON mode: the output so far through the recogniser, then every token
 * whose bytes it would refuse is masked; once the object is complete only
 * an eos id may follow (and before, none).  Inside a string the plain
 * tokens pass unread; elsewhere a refused first byte masks its whole
 * bucket; the rest is fed byte by byte. */
/* The words of a forced tool call into f; -1 if they do not add up. */
static int
kimi_sample_frame(const int32_t *w, uint32_t n, kimi_sample_frame_t *f)
{
    uint32_t  at = 1;

#define KIMI_FRAME_PART(ids, cnt)                                             \
    if (at >= n || w[at] < 0 || (uint32_t) w[at] > n - at - 1) {              \
        return -1;                                                            \
    }                                                                         \
    cnt = (uint32_t) w[at];                                                   \
    ids = w + at + 1;                                                         \
    at += 1 + cnt

    KIMI_FRAME_PART(f->pre, f->n_pre);
    KIMI_FRAME_PART(f->post, f->n_post);
    KIMI_FRAME_PART(f->never, f->n_never);
    if (at + 1 >= n || w[at] < 1 || w[at] > KIMI_TOOL_MAX_CALLS
        || w[at + 1] < 1 || w[at + 1] > KIMI_SAMPLE_MAX_ALTS)
    {
        return -1;
    }
    f->max_calls = (uint32_t) w[at++];
    f->n_alts = (uint32_t) w[at++];
    for (uint32_t a = 0; a < f->n_alts; a++) {
        KIMI_FRAME_PART(f->prog[a], f->n_prog[a]);
        if (f->n_prog[a] == 0) {
            return -1;
        }
        for (uint32_t c = 0; c < f->max_calls; c++) {
            KIMI_FRAME_PART(f->name[a][c], f->n_name[a][c]);
            if (f->n_name[a][c] == 0) {
                return -1;
            }
        }
    }
#undef KIMI_FRAME_PART

    /* more than one call needs the opener and the closer to tell apart:
     * the last post id ends the calls, the one before it ends a call */
    if (f->max_calls > 1 && (f->n_pre < 1 || f->n_post < 2)) {
        return -1;
    }
    return f->n_pre > 0 && at == n ? 0 : -1;
}


/* Which function call number `call` names from out[*at]: its index (*at
 * moved to where its arguments begin), or -1 with the ids that may come
 * next allowed in s->x (-2 when none fits) */
static int
kimi_sample_frame_name(kimi_sampler_t *s, const kimi_sample_frame_t *f,
    uint32_t call, const int32_t *out, uint32_t n_out, uint32_t *at)
{
    uint32_t  m = n_out - *at, a, k;
    int       any = 0;

    for (a = 0; a < f->n_alts; a++) {
        const int32_t  *name = f->name[a][call];
        uint32_t        n_name = f->n_name[a][call];

        for (k = 0; k < n_name && k < m; k++) {
            if (out[*at + k] != name[k]) {
                break;
            }
        }
        if (k == n_name) {
            *at += k;
            return (int) a;
        }
        if (k == m) {
            s->seen[name[m]] = 1;            /* this function may go on */
            any = 1;
        }
    }

    for (uint32_t id = 0; id < s->vocab; id++) {
        if (s->seen[id]) {
            s->seen[id] = 0;
            s->x[id] = s->x[id] > -INFINITY ? s->x[id] : 0.0f;
        } else {
            s->x[id] = -INFINITY;
        }
    }
    return any ? -1 : -2;
}


/* only ids[0..n) may come next (the forced ids of a tool call; n <= 2);
 * one that suppression took away comes back when none is left */
static void
kimi_sample_only(kimi_sampler_t *s, const int32_t *ids, uint32_t n)
{
    float     keep[2];
    int       any = 0;
    uint32_t  k;

    for (k = 0; k < n; k++) {
        keep[k] = s->x[ids[k]];
        any |= keep[k] > -INFINITY;
    }
    for (uint32_t id = 0; id < s->vocab; id++) {
        s->x[id] = -INFINITY;
    }
    for (k = 0; k < n; k++) {
        s->x[ids[k]] = any ? keep[k] : 0.0f;
    }
}


static void
kimi_sample_json_mask(kimi_sampler_t *s, const kimi_sample_req_t *req,
    const int32_t *prog, const kimi_sample_frame_t *frame)
{
    const kimi_tokenizer_t  *tk = req->tokenizer;
    const int32_t           *out = req->tokens + req->n_prompt;
    kimi_json_vocab_t       *jv = &s->jv;
    kimi_json_state_t        st, t;
    const char              *b;
    size_t                   len;
    uint32_t                 i, id, k;
    int                      done, broken = 0;

    if (kimi_sample_json_vocab(s, tk) != 0) {
        return;                         /* out of memory: unconstrained */
    }

    if (prog != NULL) {
        kimi_json_init_schema(&st, prog);
    } else {
        kimi_json_init(&st);
    }
    if (req->sampling->json_no_ws) {
        kimi_json_no_ws(&st);
    }

    i = 0;
    if (frame != NULL) {                /* the ids before the arguments */
        for (; i < req->n_output && i < frame->n_pre && !broken; i++) {
            broken = out[i] != frame->pre[i];
        }
        if (!broken && req->n_output < frame->n_pre) {
            kimi_sample_only(s, &frame->pre[req->n_output], 1);
            return;
        }
        /* calls: a function's id, its arguments, the post ids; before the
         * last post id another call may open (the last pre id) while
         * max_calls allows, in place of it */
        for (uint32_t call = 0; !broken; call++) {
            int  a = kimi_sample_frame_name(s, frame, call, out,
                                            req->n_output, &i);

            if (a == -1) {
                return;
            }
            broken = a < 0;
            if (broken) {
                break;
            }
            kimi_json_init_schema(&st, frame->prog[a]);
            if (req->sampling->json_no_ws) {
                kimi_json_no_ws(&st);
            }
            for (; i < req->n_output && !broken && !kimi_json_done(&st); i++) {
                id = (uint32_t) out[i];
                b = id < s->vocab && jv->cls[id] != KIMI_JV_SPECIAL
                    ? kimi_token_bytes(tk, (int32_t) id, &len) : NULL;
                broken = b == NULL || kimi_json_feed(&st, b, len) != 0;
            }
            if (broken || !kimi_json_done(&st)) {
                break;                  /* the arguments go on: masked below */
            }
            for (k = 0; k < frame->n_post && i < req->n_output; k++, i++) {
                if (k == frame->n_post - 1 && call + 1 < frame->max_calls
                    && out[i] == frame->pre[frame->n_pre - 1])
                {
                    break;              /* another call */
                }
                broken = out[i] != frame->post[k];
                if (broken) {
                    break;
                }
            }
            if (broken) {
                break;
            }
            if (k == frame->n_post - 1 && i < req->n_output) {
                i++;                    /* past the next call's opener */
                continue;
            }
            if (k < frame->n_post) {    /* the output ends inside the post ids */
                int32_t  next[2] = { frame->post[k],
                                     frame->pre[frame->n_pre - 1] };

                kimi_sample_only(s, next, k == frame->n_post - 1 && call + 1
                                          < frame->max_calls ? 2 : 1);
                return;
            }
            break;                      /* all calls made: the end */
        }
    } else {
        for (; i < req->n_output && !broken; i++) {
            id = (uint32_t) out[i];
            b = id < s->vocab && jv->cls[id] != KIMI_JV_SPECIAL
                ? kimi_token_bytes(tk, (int32_t) id, &len) : NULL;
            broken = b == NULL || kimi_json_feed(&st, b, len) != 0;
        }
    }

    /* an output the grammar refuses (it cannot come from this mask) can
     * only end */
    done = broken || kimi_json_done(&st);

    if (done) {
        kimi_sample_only_eos(s, req);
        return;
    }

    for (i = 0; i < jv->n_special; i++) {       /* eos too: not done yet */
        s->x[jv->special[i]] = -INFINITY;
    }
    for (i = 0; frame != NULL && i < frame->n_never; i++) {
        s->x[frame->never[i]] = -INFINITY;      /* markers: never inside */
    }

    kimi_sample_bytes_mask(s, req, kimi_sample_json_try, &st, &t,
                           kimi_json_in_string(&st));
}


#define KIMI_STAG_EOS_KEPT  8      /* eos ids a forced format may restore */


/* Only an eos id may follow (its logit as the model gave it). */
static void
kimi_sample_only_eos(kimi_sampler_t *s, const kimi_sample_req_t *req)
{
    for (uint32_t id = 0; id < s->vocab; id++) {
        if (s->x[id] > -INFINITY && !kimi_sample_is_eos(req, id)) {
            s->x[id] = -INFINITY;
        }
    }
}


/* No special token may come, eos included; the eos ids' logits are kept
 * in eos_x [KIMI_STAG_EOS_KEPT] for kimi_sample_eos_restore. */
static void
kimi_sample_specials_off(kimi_sampler_t *s, const kimi_sample_req_t *req,
    float *eos_x)
{
    for (uint32_t i = 0; i < req->n_eos && i < KIMI_STAG_EOS_KEPT; i++) {
        eos_x[i] = (uint32_t) req->eos_ids[i] < s->vocab
                   ? s->x[req->eos_ids[i]] : -INFINITY;
    }
    for (uint32_t i = 0; i < s->jv.n_special; i++) {
        s->x[s->jv.special[i]] = -INFINITY;
    }
}


/* The output may end here after all: eos as the model gave it. */
static void
kimi_sample_eos_restore(kimi_sampler_t *s, const kimi_sample_req_t *req,
    const float *eos_x)
{
    for (uint32_t i = 0; i < req->n_eos && i < KIMI_STAG_EOS_KEPT; i++) {
        if ((uint32_t) req->eos_ids[i] < s->vocab) {
            s->x[req->eos_ids[i]] = eos_x[i];
        }
    }
}


/* guided_grammar with recursion (gram.h): the output so far through the
 * pushdown recogniser (no special token may come), then every token it
 * would refuse is masked; eos only where the grammar's root may end, and
 * alone once no byte may follow (or where the output left the grammar,
 * which this mask never allows). */
static void
kimi_sample_gram_mask(kimi_sampler_t *s, const kimi_sample_req_t *req)
{
    const kimi_tokenizer_t  *tk = req->tokenizer;
    const int32_t           *out = req->tokens + req->n_prompt;
    kimi_json_vocab_t       *jv = &s->jv;
    kimi_gram_state_t        st, t;
    const char              *b;
    size_t                   len;
    uint32_t                 i, id;
    int                      broken;
    float                    eos_x[KIMI_STAG_EOS_KEPT];

    if (kimi_sample_json_vocab(s, tk) != 0
        || (s->garena == NULL && (s->garena = kimi_gram_arena_new()) == NULL))
    {
        return;                         /* out of memory: unconstrained */
    }

    broken = kimi_gram_init(&st, req->guided + 1, s->garena) != 0;
    for (i = 0; i < req->n_output && !broken; i++) {
        id = (uint32_t) out[i];
        b = id < s->vocab && jv->cls[id] != KIMI_JV_SPECIAL
            ? kimi_token_bytes(tk, (int32_t) id, &len) : NULL;
        broken = b == NULL || kimi_gram_feed(&st, b, len) != 0;
    }

    if (broken || !kimi_gram_more(&st)) {
        kimi_sample_only_eos(s, req);
        return;
    }

    kimi_sample_specials_off(s, req, eos_x);
    kimi_sample_bytes_mask(s, req, kimi_sample_gram_try, &st, &t, 0);
    if (kimi_gram_accepts(&st)) {               /* a whole sentence: may end */
        kimi_sample_eos_restore(s, req, eos_x);
    }
}



/* Structural tags: the output so far through the recogniser (a special
 * token only in triggered_tags' free text), then every token it would
 * refuse is masked.  eos only where kimi_stag_may_end says (free text
 * that may end the output, a choice that may be empty, the whole format
 * complete: then eos alone).  In free text special tokens pass; there and
 * in any text a token none of whose bytes ends a text that ends it (a
 * trigger, the next fixed text) passes unread.  Elsewhere no special
 * token may come; inside JSON strings the plain tokens pass unread; a
 * refused first byte masks its bucket. */
static void
kimi_sample_stag_mask(kimi_sampler_t *s, const kimi_sample_req_t *req)
{
    const kimi_tokenizer_t  *tk = req->tokenizer;
    const int32_t           *out = req->tokens + req->n_prompt;
    kimi_json_vocab_t       *jv = &s->jv;
    kimi_stag_t              t;
    kimi_stag_state_t        st, c1;
    const char              *b;
    size_t                   len;
    uint32_t                 i, id;
    int                      broken = 0;
    float                    eos_x[KIMI_STAG_EOS_KEPT];
    char                     msg[160];

    if (kimi_sample_json_vocab(s, tk) != 0
        || kimi_stag_view(req->guided + 1, req->n_guided - 1, &t, msg,
                          sizeof(msg)) != 0
        || (kimi_stag_has_gram(&t) && s->garena == NULL
            && (s->garena = kimi_gram_arena_new()) == NULL))
    {
        return;                 /* out of memory (the words were checked) */
    }

    kimi_stag_init(&st, &t, req->sampling->json_no_ws,
                   kimi_stag_has_gram(&t) ? s->garena : NULL);

    for (i = 0; i < req->n_output && !broken; i++) {
        id = (uint32_t) out[i];
        if (id >= s->vocab) {
            broken = 1;
        } else if (jv->cls[id] == KIMI_JV_SPECIAL) {
            broken = kimi_stag_special(&st) != 0;
        } else {
            b = kimi_token_bytes(tk, (int32_t) id, &len);
            broken = kimi_stag_feed(&st, b, len) != 0;
        }
    }

    /* an output the grammar refuses (it cannot come from this mask) can
     * only end, as can one whose format is complete */
    if (broken || st.mode == KIMI_STAG_DONE) {
        kimi_sample_only_eos(s, req);
        return;
    }

    /* text: free, or a structure's any text (no special token there) */
    if (st.mode == KIMI_STAG_FREE || st.mode == KIMI_STAG_TEXT) {
        for (i = 0; !kimi_stag_may_end(&st) && i < req->n_eos; i++) {
            if ((uint32_t) req->eos_ids[i] < s->vocab) {
                s->x[req->eos_ids[i]] = -INFINITY;  /* at_least_one */
            }
        }
        for (id = 0; id < s->vocab; id++) {
            if (s->x[id] == -INFINITY) {
                continue;
            }
            if (jv->cls[id] == KIMI_JV_SPECIAL) {
                if (st.mode == KIMI_STAG_TEXT) {
                    s->x[id] = -INFINITY;
                }
                continue;
            }
            b = kimi_token_bytes(tk, (int32_t) id, &len);
            if (kimi_stag_must_feed(&st, b, len)
                && kimi_sample_stag_try(&c1, &st, b, len) != 0)
            {
                s->x[id] = -INFINITY;
            }
        }
        return;
    }

    /* no special token outside free text; eos only where the output may
     * end (kept as the model gave it) */
    kimi_sample_specials_off(s, req, eos_x);

    kimi_sample_bytes_mask(s, req, kimi_sample_stag_try, &st, &c1,
                           st.mode == KIMI_STAG_JSON
                           && kimi_json_in_string(&st.json));

    if (kimi_stag_may_end(&st)) {
        kimi_sample_eos_restore(s, req, eos_x);
    }
}


/* Four lanes of e^x for x in [-87, 0]: 2^n from the exponent bits times a
 * degree-6 polynomial of the remainder |r| <= ln2/2; within 3e-7 relative
 * of exp().  GCC/clang vector types, because -O2's cost model will not
 * vectorise a loop of unknown length by itself. */
typedef float    kimi_v4f_t __attribute__((vector_size(16)));
typedef int32_t  kimi_v4i_t __attribute__((vector_size(16)));

static kimi_v4f_t
kimi_sample_exp4(kimi_v4f_t x)
{
    kimi_v4f_t  t, fn, r, p;
    kimi_v4i_t  bits;

    t = x * 1.44269504088896341f;                        /* log2(e) */
    fn = __builtin_convertvector(
             __builtin_convertvector(t - 0.5f, kimi_v4i_t), kimi_v4f_t);
    r = x - fn * 0.693145751953125f                      /* ln2, hi + lo */
        - fn * 1.42860682030941723212e-6f;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6.0f + r * (1.0f / 24.0f
        + r * (1.0f / 120.0f + r * (1.0f / 720.0f))))));
    bits = (__builtin_convertvector(fn, kimi_v4i_t) + 127) << 23;

    return p * (kimi_v4f_t) bits;                        /* times 2^fn */
}


/* w[i] = e^(v[i] - m) for v[i] - m in [-87, 0]; returns their sum.  About
 * 4x faster than expf() per element on this box. */
static double
kimi_sample_exp_row(const float *v, float m, float *w, uint32_t n)
{
    kimi_v4f_t  x, y;
    double      a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    float       tail[4];
    uint32_t    i, k;

    for (i = 0; i + 4 <= n; i += 4) {
        memcpy(&x, v + i, sizeof(x));
        y = kimi_sample_exp4(x - m);
        memcpy(w + i, &y, sizeof(y));

        /* four chains, so the adds are not one long dependency */
        a0 += y[0];
        a1 += y[1];
        a2 += y[2];
        a3 += y[3];
    }

    if (i < n) {
        for (k = 0; k < 4; k++) {
            tail[k] = i + k < n ? v[i + k] - m : -87.0f;
        }

        memcpy(&x, tail, sizeof(x));
        y = kimi_sample_exp4(x);
        for (k = 0; i + k < n; k++) {
            w[i + k] = y[k];
            a0 += y[k];
        }
    }

    return (a0 + a1) + (a2 + a3);
}


/* Lowest id of the largest entry (NaN never wins).  Four independent
 * lanes, so the compares do not wait on each other. */
static uint32_t
kimi_sample_argmax(const float *x, uint32_t n)
{
    uint32_t  bi[4] = { 0, 0, 0, 0 }, i, k, best;
    float     bv[4] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY }, v;

    for (i = 0; i + 4 <= n; i += 4) {
        for (k = 0; k < 4; k++) {
            if (x[i + k] > bv[k]) {     /* strict: the earlier one stays */
                bv[k] = x[i + k];
                bi[k] = i + k;
            }
        }
    }

    for ( /* void */ ; i < n; i++) {
        if (x[i] > bv[0]) {
            bv[0] = x[i];
            bi[0] = i;
        }
    }

    /* combine lanes: larger value wins, the lower id on a tie */
    best = bi[0];
    v = bv[0];
    for (k = 1; k < 4; k++) {
        if (bv[k] > v || (bv[k] == v && bi[k] < best)) {
            v = bv[k];
            best = bi[k];
        }
    }

    return best;
}


/* The largest entry, four independent lanes (NaN is skipped). */
static float
kimi_sample_max(const float *x, uint32_t n)
{
    float     m[4] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY };
    uint32_t  i, k;

    for (i = 0; i + 4 <= n; i += 4) {
        for (k = 0; k < 4; k++) {
            m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
        }
    }

    for ( /* void */ ; i < n; i++) {
        m[0] = x[i] > m[0] ? x[i] : m[0];
    }

    m[0] = m[1] > m[0] ? m[1] : m[0];
    m[2] = m[3] > m[2] ? m[3] : m[2];
    return m[2] > m[0] ? m[2] : m[0];
}


/* Keeps the n_top largest entries of x (id ascending on ties) in
 * descending order. */
static uint32_t
kimi_sample_top_n(const float *x, uint32_t vocab, uint32_t n_top,
    int32_t *ids, float *vals)
{
    uint32_t  n = 0, j;

    for (uint32_t i = 0; i < vocab && n_top > 0; i++) {
        float  v = x[i];

        if (!(v > -INFINITY)) {
            continue;
        }

        if (n == n_top && !(v > vals[n - 1])) {
            continue;
        }

        j = n < n_top ? n++ : n - 1;
        while (j > 0 && v > vals[j - 1]) {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }

        vals[j] = v;
        ids[j] = (int32_t) i;
    }

    return n;
}


static double
kimi_sample_logsumexp(const float *x, uint32_t n)
{
    double  sum = 0.0;
    float   m = kimi_sample_max(x, n);

    if (!(m > -INFINITY)) {
        return -INFINITY;
    }

    for (uint32_t i = 0; i < n; i++) {
        sum += expf(x[i] - m);
    }

    return (double) m + log(sum);
}


static void
kimi_cand_swap(kimi_cand_t *a, kimi_cand_t *b)
{
    kimi_cand_t  t = *a;

    *a = *b;
    *b = t;
}


/* Three-way partition of c[0..n) around pivot: [> pivot][== pivot][<]. */
static void
kimi_cand_partition(kimi_cand_t *c, uint32_t n, float pivot, uint32_t *n_gt,
    uint32_t *n_eq)
{
    uint32_t  lt = 0, i = 0, gt = n;

    /* Dijkstra's flag, descending: [0,lt) > p, [lt,i) == p, [gt,n) < p */
    while (i < gt) {
        if (c[i].v > pivot) {
            kimi_cand_swap(&c[i++], &c[lt++]);

        } else if (c[i].v < pivot) {
            kimi_cand_swap(&c[i], &c[--gt]);

        } else {
            i++;
        }
    }

    *n_gt = lt;
    *n_eq = gt - lt;
}


static float
kimi_cand_pivot(const kimi_cand_t *c, uint32_t n)
{
    float  a = c[0].v, b = c[n / 2].v, d = c[n - 1].v;

    /* median of three keeps sorted and reversed inputs linear */
    if ((a <= b && b <= d) || (d <= b && b <= a)) {
        return b;
    }

    if ((b <= a && a <= d) || (d <= a && a <= b)) {
        return a;
    }

    return d;
}


/* The k-th largest value of c[0..n), 1 <= k <= n (reorders c). */
static float
kimi_cand_kth(kimi_cand_t *c, uint32_t n, uint32_t k)
{
    uint32_t  n_gt, n_eq;
    float     pivot;

    for ( ;; ) {
        pivot = kimi_cand_pivot(c, n);
        kimi_cand_partition(c, n, pivot, &n_gt, &n_eq);

        if (k <= n_gt) {
            n = n_gt;

        } else if (k <= n_gt + n_eq) {
            return pivot;

        } else {
            k -= n_gt + n_eq;
            c += n_gt + n_eq;
            n -= n_gt + n_eq;
        }
    }
}


/* top_p: reorders c so that its first *n_keep entries are the smallest
 * most-likely set whose probability mass reaches target (entry i is kept
 * iff the mass of the entries ranked above it is below target, as vLLM's
 * cumulative-sum mask has it).  Weights are exp(v - m). */
static uint32_t
kimi_cand_top_p(kimi_cand_t *c, uint32_t n, double target)
{
    uint32_t  lo = 0, hi = n, n_gt, n_eq, j;
    double    acc = 0.0, mass_gt, w;
    float     pivot;

    while (lo < hi) {
        pivot = kimi_cand_pivot(c + lo, hi - lo);
        kimi_cand_partition(c + lo, hi - lo, pivot, &n_gt, &n_eq);

        mass_gt = 0.0;
        for (j = lo; j < lo + n_gt; j++) {
            mass_gt += c[j].w;
        }

        if (n_gt > 0 && acc + mass_gt >= target) {
            hi = lo + n_gt;             /* the boundary lies above pivot */
            continue;
        }

        acc += mass_gt;
        lo += n_gt;

        w = c[lo].w;                   /* every entry of E has it */
        for (j = 0; j < n_eq && acc < target; j++) {
            acc += w;
        }

        lo += j;
        if (j < n_eq || acc >= target) {
            return lo;
        }
    }

    return lo > 0 ? lo : 1;
}


/* The k-th largest of c[0..n), k <= KIMI_SAMPLE_HEAP_K, through a min-heap
 * of the k largest seen so far. */
static float
kimi_sample_kth_heap(const float *c, uint32_t n, uint32_t k, float *h)
{
    uint32_t  i, j, child;
    float     v;

    for (i = 0; i < k; i++) {
        /* sift up */
        v = c[i];
        for (j = i; j > 0 && h[(j - 1) / 2] > v; j = (j - 1) / 2) {
            h[j] = h[(j - 1) / 2];
        }
        h[j] = v;
    }

    for (i = k; i < n; i++) {
        v = c[i];
        if (!(v > h[0])) {
            continue;
        }

        /* replace the minimum, sift down */
        for (j = 0; (child = 2 * j + 1) < k; j = child) {
            if (child + 1 < k && h[child + 1] < h[child]) {
                child++;
            }

            if (!(h[child] < v)) {
                break;
            }

            h[j] = h[child];
        }
        h[j] = v;
    }

    return h[0];
}


/* top_p over the candidates s->cv/cw[0..n) (max m, all >= m - range):
 * a mass histogram over equal-width buckets of (m - v) finds the bucket
 * where the mass crosses target in one pass; only that bucket needs the
 * exact selection.  Dropped candidates get weight 0, so the draw and the
 * logprobs can walk all n unchanged.  Returns the kept mass. */
static double
kimi_sample_top_p(kimi_sampler_t *s, uint32_t n, float m, float range,
    double target)
{
    uint32_t  b, nb = KIMI_SAMPLE_BUCKETS, n_edge = 0, n_keep, i;
    float    *cw = s->cw;
    uint16_t *cb = s->cb;
    double    acc = 0.0, z0 = 0.0, z1 = 0.0, z2 = 0.0, z3 = 0.0;
    float     scale;

    scale = range > 0.0f ? (float) (nb - 1) / range : 0.0f;
    memset(s->mass, 0, nb * sizeof(double));

    for (uint32_t i = 0; i < n; i++) {
        b = (uint32_t) ((m - s->cv[i]) * scale);
        b = b < nb ? b : nb - 1;
        s->cb[i] = (uint16_t) b;
        s->mass[b] += s->cw[i];
    }

    for (b = 0; b < nb - 1 && acc + s->mass[b] < target; b++) {
        acc += s->mass[b];
    }

    /* the boundary bucket; id holds the candidate index here */
    for (uint32_t i = 0; i < n; i++) {
        if (s->cb[i] == b) {
            s->edge[n_edge].v = s->cv[i];
            s->edge[n_edge].w = s->cw[i];
            s->edge[n_edge].id = i;
            n_edge++;
        }
    }

    /* rounding can leave the last bucket empty: then all above is kept */
    n_keep = n_edge > 0 ? kimi_cand_top_p(s->edge, n_edge, target - acc) : 0;

    /* weights below the boundary to 0 without a branch (the buckets come
     * in random order), summing the rest on four chains */
    for (i = 0; i + 4 <= n; i += 4) {
        cw[i] *= (float) (cb[i] < b);
        cw[i + 1] *= (float) (cb[i + 1] < b);
        cw[i + 2] *= (float) (cb[i + 2] < b);
        cw[i + 3] *= (float) (cb[i + 3] < b);
        z0 += cw[i];
        z1 += cw[i + 1];
        z2 += cw[i + 2];
        z3 += cw[i + 3];
    }

    for ( /* void */ ; i < n; i++) {
        cw[i] *= (float) (cb[i] < b);
        z0 += cw[i];
    }

    for (uint32_t j = 0; j < n_keep; j++) {
        cw[s->edge[j].id] = s->edge[j].w;
        z0 += s->edge[j].w;
    }

    return (z0 + z1) + (z2 + z3);
}


/* A prompt_logprobs position: the next prompt token's raw logprob and
 * rank (1 + the tokens with a larger logit) and the n most likely tokens,
 * from the model's logits as vLLM reports prompt logprobs (no penalties,
 * temperature or masks). */
static int
kimi_sample_prompt_entry(kimi_sampler_t *s, const float *logits,
    const kimi_sample_req_t *req, kimi_shm_token_t *tok, kimi_err_t *err)
{
    uint32_t  t = req->prompt_next - 1, vocab = s->vocab, above = 0;
    uint32_t  n_top = req->sampling->prompt_logprobs - 1;
    double    lse;

    if (t >= vocab || req->sampling->prompt_logprobs == 0
        || n_top > KIMI_SHM_MAX_TOP_LOGPROBS)
    {
        return kimi_err_set(err, KIMI_EINVAL, "prompt logprobs: token %u, "
                            "n %u", t, n_top);
    }

    lse = kimi_sample_logsumexp(logits, vocab);

    for (uint32_t i = 0; i < vocab; i++) {
        above += logits[i] > logits[t];
    }

    tok->token = (int32_t) t;
    tok->logprob = (float) ((double) logits[t] - lse);
    tok->rank = above + 1;
    tok->n_top = kimi_sample_top_n(logits, vocab, n_top, tok->top_ids,
                                   tok->top_logprobs);

    for (uint32_t i = 0; i < tok->n_top; i++) {
        tok->top_logprobs[i] = (float) (tok->top_logprobs[i] - lse);
    }

    return KIMI_OK;
}


int
kimi_sampler_sample(kimi_sampler_t *s, const float *logits,
    const kimi_sample_req_t *req, kimi_sample_out_t *out, kimi_err_t *err)
{
    const kimi_shm_sampling_t  *sp = req->sampling;
    const float                *x;
    kimi_shm_token_t           *tok = &out->tok;
    uint32_t                    vocab = s->vocab, n, token, n_keep = 0, i;
    float                       m, inv_t, cut;
    double                      z, u, acc, lse;
    int                         suppress, processed;

    memset(tok, 0, sizeof(*tok));

    if (req->prompt_next > 0) {
        return kimi_sample_prompt_entry(s, logits, req, tok, err);
    }

    suppress = req->n_output < sp->min_tokens;
    processed = suppress || sp->n_logit_bias > 0 || sp->allowed_only
                || sp->json_object || req->n_guided > 0 || req->n_bad > 0
                || kimi_sample_has_penalties(sp);

    if (processed) {
        kimi_sample_process(s, logits, req, suppress);
        x = s->x;

    } else {
        x = logits;
    }

    if (kimi_sample_is_greedy(sp)) {
        token = kimi_sample_argmax(x, vocab);
        if (!(x[token] > -INFINITY)) {
            token = kimi_sample_fallback(logits, vocab, sp);  /* all masked */
        }

        goto logprobs;
    }

    /* candidates after temperature and min_p */
    inv_t = 1.0f / sp->temperature;
    m = kimi_sample_max(x, vocab);

    if (!(m > -INFINITY)) {
        token = kimi_sample_fallback(logits, vocab, sp);
        goto logprobs;
    }

    m *= inv_t;

    /* expf underflows to 0 below -87: such entries can never be drawn */
    cut = m - 87.0f;
    if (sp->min_p > 0.0f && m + logf(sp->min_p) > cut) {
        cut = m + logf(sp->min_p);
    }

    /* candidates, structure of arrays so the passes below vectorise */
    n = 0;
    for (uint32_t i = 0; i < vocab; i++) {
        float  v = x[i] * inv_t;

        if (v >= cut) {
            s->cv[n] = v;
            s->cid[n] = i;
            n++;
        }
    }

    if (sp->top_k > 0 && (uint32_t) sp->top_k < n) {
        float     kth;
        uint32_t  k = 0;

        if (sp->top_k <= KIMI_SAMPLE_HEAP_K) {
            kth = kimi_sample_kth_heap(s->cv, n, (uint32_t) sp->top_k,
                                       s->heap);

        } else {
            for (uint32_t i = 0; i < n; i++) {
                s->cand[i].v = s->cv[i];
            }

            kth = kimi_cand_kth(s->cand, n, (uint32_t) sp->top_k);
        }

        for (uint32_t i = 0; i < n; i++) {
            if (s->cv[i] >= kth) {
                s->cv[k] = s->cv[i];
                s->cid[k] = s->cid[i];
                k++;
            }
        }

        n = k;
    }

    z = kimi_sample_exp_row(s->cv, m, s->cw, n);

    n_keep = n;
    if (sp->top_p < 1.0f) {
        float  range = m - cut;

        z = kimi_sample_top_p(s, n, m, range, (double) sp->top_p * z);
    }

    /* inverse CDF, skipping four weights at a time */
    u = kimi_rng_uniform(req->rng) * z;
    acc = 0.0;
    token = s->cid[n_keep - 1];
    i = 0;
    for ( /* void */ ; i + 4 <= n_keep; i += 4) {
        double  blk = (double) s->cw[i] + s->cw[i + 1] + s->cw[i + 2]
                      + s->cw[i + 3];

        if (u < acc + blk) {
            break;
        }

        acc += blk;
    }

    for ( /* void */ ; i < n_keep; i++) {
        acc += s->cw[i];
        if (u < acc) {
            token = s->cid[i];
            break;
        }
    }

    if ((sp->logprobs || sp->top_logprobs)
        && req->logprobs_mode == KIMI_LOGPROBS_PROCESSED)
    {
        /* the distribution drawn from: kept candidates, renormalised */
        for (uint32_t i = 0; i < vocab; i++) {
            s->x[i] = -INFINITY;
        }

        for (i = 0; i < n_keep; i++) {
            if (s->cw[i] > 0.0f) {          /* top_p left it in */
                s->x[s->cid[i]] = s->cv[i];
            }
        }

        x = s->x;
        lse = (double) m + log(z);
        goto top;
    }

logprobs:

    if (!sp->logprobs && !sp->top_logprobs) {
        tok->token = (int32_t) token;
        return KIMI_OK;
    }

    if (req->logprobs_mode == KIMI_LOGPROBS_PROCESSED) {
        /* greedy or fully masked: the processed row at temperature 1 */
        lse = kimi_sample_logsumexp(x, vocab);

    } else {
        x = logits;
        lse = kimi_sample_logsumexp(logits, vocab);
    }

top:

    tok->token = (int32_t) token;
    tok->logprob = (float) ((double) x[token] - lse);
    tok->n_top = kimi_sample_top_n(x, vocab, sp->top_logprobs, tok->top_ids,
                                   tok->top_logprobs);

    for (uint32_t i = 0; i < tok->n_top; i++) {
        tok->top_logprobs[i] = (float) (tok->top_logprobs[i] - lse);
    }

    (void) err;
    return KIMI_OK;
}
