/*
 * The random dataset and request arrival times of `vllm bench serve`.
 *
 * Owns:   the seeded generator, per-request input/output lengths, prompt
 *         text whose token count is exact for Kimi's tokenizer, and the
 *         Poisson / gamma arrival schedule.
 * Never:  touches the network.
 *
 * Method (kimi-k2-facts.md section 8, vLLM's RandomDataset): lengths are
 * uniform integers in [floor(L(1-r)), ceil(L(1+r))]; the prompt is a run of
 * consecutive allowed ids (every id below the vocabulary size except the
 * tokenizer's special ids) starting at a random offset, after an optional
 * shared random prefix (allowed ids, drawn after the lengths and offsets);
 * prefix + run are decoded to text and re-encoded (special names
 * recognised, as the server does), then cut or padded with random ids below
 * the vocabulary size until the re-encoded length is the target (10 tries,
 * then whatever length the text has).  prompt_len is always the token count
 * of the text sent.
 *
 * The draws are numpy's: vLLM seeds np.random.default_rng(seed) and calls
 * Generator.integers, so the same --seed gives the same lengths, offsets,
 * prefix and padding ids, draw for draw (bench_np_rng_*: SeedSequence's
 * hashing, PCG64 XSL-RR 128/64, Lemire's bounded draws on 32- or 64-bit
 * outputs as numpy picks them), and with Kimi's tokenizer the same prompt
 * text.  Arrival times use their own splitmix64 stream.
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/kimi_text.h"
#include "bench.h"

#define BENCH_DECODE_RETRIES  10    /* vLLM's max_retry */


uint64_t
bench_rng_next(uint64_t *state)
{
    uint64_t  z;

    /* splitmix64: full period, passes BigCrush, one word of state */
    z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;

    return z ^ (z >> 31);
}


double
bench_rng_uniform(uint64_t *state)
{
    return (double) (bench_rng_next(state) >> 11) * 0x1.0p-53;
}


/* ---- numpy's default_rng ------------------------------------------------ */

#define BENCH_PCG_MULT  (((bench_u128_t) 0x2360ed051fc65da4ULL << 64)       \
                         | 0x4385df649fccf645ULL)

/* SeedSequence's hash of one word, with its running constant */
static uint32_t
bench_np_hashmix(uint32_t v, uint32_t *h)
{
    v ^= *h;
    *h *= 0x931e8875u;
    v *= *h;
    return v ^ (v >> 16);
}


static uint32_t
bench_np_mix(uint32_t x, uint32_t y)
{
    uint32_t  r = 0xca01f9ddu * x - 0x4973f715u * y;

    return r ^ (r >> 16);
}


/* one PCG64 step, then the XSL-RR output of the new state */
static uint64_t
bench_np_next64(bench_np_rng_t *r)
{
    uint64_t  x;
    unsigned  rot;

    r->state = r->state * BENCH_PCG_MULT + r->inc;
    x = (uint64_t) (r->state >> 64) ^ (uint64_t) r->state;
    rot = (unsigned) (r->state >> 122);

    return (x >> rot) | (x << ((0u - rot) & 63));
}


/* numpy hands out the two halves of a 64-bit output, low half first */
static uint32_t
bench_np_next32(bench_np_rng_t *r)
{
    uint64_t  n;

    if (r->has_u32) {
        r->has_u32 = 0;
        return r->u32;
    }

    n = bench_np_next64(r);
    r->has_u32 = 1;
    r->u32 = (uint32_t) (n >> 32);
    return (uint32_t) n;
}


void
bench_np_rng_seed(bench_np_rng_t *r, uint64_t seed)
{
    uint32_t      ent[2], pool[4], h = 0x43b0d7e5u, hb = 0x8b51f9ddu, v;
    uint32_t      st[8];
    uint64_t      w[4];
    int           n = 0, i, a, b;
    bench_u128_t  s, inc;

    /* the seed as 32-bit words, low first (0 is one word) */
    do {
        ent[n++] = (uint32_t) seed;
        seed >>= 32;
    } while (seed != 0);

    /* SeedSequence: a pool of 4 words mixed from the entropy ... */
    for (i = 0; i < 4; i++) {
        pool[i] = bench_np_hashmix(i < n ? ent[i] : 0, &h);
    }
    for (a = 0; a < 4; a++) {
        for (b = 0; b < 4; b++) {
            if (a != b) {
                pool[b] = bench_np_mix(pool[b], bench_np_hashmix(pool[a], &h));
            }
        }
    }

    /* ... and generate_state(4, uint64) from it */
    for (i = 0; i < 8; i++) {
        v = pool[i % 4] ^ hb;
        hb *= 0x58f38dedu;
        v *= hb;
        st[i] = v ^ (v >> 16);
    }
    for (i = 0; i < 4; i++) {
        w[i] = (uint64_t) st[2 * i] | ((uint64_t) st[2 * i + 1] << 32);
    }

    /* PCG64: state from words 0-1, stream (increment) from words 2-3 */
    s = ((bench_u128_t) w[0] << 64) | w[1];
    inc = ((bench_u128_t) w[2] << 64) | w[3];
    r->state = 0;
    r->inc = (inc << 1) | 1;
    r->has_u32 = 0;
    r->u32 = 0;
    (void) bench_np_next64(r);
    r->state += s;
    (void) bench_np_next64(r);
}


/* Generator.integers(low, high): Lemire's multiply-shift with rejection,
 * on 32-bit outputs when the span fits 32 bits (numpy's choice), else on
 * 64-bit ones; a span of one value draws nothing */
uint64_t
bench_np_rng_integers(bench_np_rng_t *r, uint64_t low, uint64_t high)
{
    uint64_t      rng = high - low - 1, m, left64, ex64;
    uint32_t      ex, left;
    bench_u128_t  m128;

    if (high <= low + 1) {
        return low;
    }

    if (rng <= 0xffffffffULL) {
        if (rng == 0xffffffffULL) {
            return low + bench_np_next32(r);
        }

        ex = (uint32_t) rng + 1;
        m = (uint64_t) bench_np_next32(r) * ex;
        left = (uint32_t) m;
        if (left < ex) {
            uint32_t  threshold = (0u - ex) % ex;

            while (left < threshold) {
                m = (uint64_t) bench_np_next32(r) * ex;
                left = (uint32_t) m;
            }
        }
        return low + (m >> 32);
    }

    ex64 = rng + 1;
    m128 = (bench_u128_t) bench_np_next64(r) * ex64;
    left64 = (uint64_t) m128;
    if (left64 < ex64) {
        uint64_t  threshold = (0 - ex64) % ex64;

        while (left64 < threshold) {
            m128 = (bench_u128_t) bench_np_next64(r) * ex64;
            left64 = (uint64_t) m128;
        }
    }
    return low + (uint64_t) (m128 >> 64);
}


static double
bench_rng_normal(uint64_t *state)
{
    double  u1, u2;

    do {
        u1 = bench_rng_uniform(state);
    } while (u1 <= 0.0);
    u2 = bench_rng_uniform(state);

    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}


/* Marsaglia and Tsang (2000); shape < 1 by the U^(1/shape) boost. */
double
bench_rng_gamma(uint64_t *state, double shape, double scale)
{
    double  d, c, x, v, u;

    if (shape < 1.0) {
        do {
            u = bench_rng_uniform(state);
        } while (u <= 0.0);
        return bench_rng_gamma(state, shape + 1.0, scale)
               * pow(u, 1.0 / shape);
    }

    d = shape - 1.0 / 3.0;
    c = 1.0 / sqrt(9.0 * d);

    for ( ;; ) {
        do {
            x = bench_rng_normal(state);
            v = 1.0 + c * x;
        } while (v <= 0.0);

        v = v * v * v;
        u = bench_rng_uniform(state);

        if (u < 1.0 - 0.0331 * x * x * x * x
            || log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
        {
            return d * v * scale;
        }
    }
}


/* Request i's rate: --request-rate, or the ramp-up's at progress
 * i / (n - 1) (vLLM's _get_current_request_rate) */
double
bench_rate_at(const bench_opts_t *o, size_t i, size_t n)
{
    double  progress = (double) i / (double) (n > 1 ? n - 1 : 1);

    if (o->ramp_up == NULL) {
        return o->request_rate;
    }
    if (strcmp(o->ramp_up, "linear") == 0) {
        return o->ramp_start_rps
               + (o->ramp_end_rps - o->ramp_start_rps) * progress;
    }

    return o->ramp_start_rps * pow(o->ramp_end_rps / o->ramp_start_rps,
                                   progress);
}


/*
 * vLLM's get_request(): gamma(burstiness, 1/(rate*burstiness)) gaps at each
 * request's rate, accumulated; without a ramp-up then scaled so the last
 * request leaves at n/rate.
 */
void
bench_arrivals(const bench_opts_t *o, double *arrival_s, size_t n)
{
    uint64_t  st = o->seed ^ 0x61727269766c7331ULL;   /* own stream */
    double    theta, scale, rate;
    size_t    i;

    for (i = 0; i < n; i++) {
        rate = bench_rate_at(o, i, n);
        if (isinf(rate)) {
            arrival_s[i] = 0.0;
        } else if (isinf(o->burstiness)) {
            arrival_s[i] = 1.0 / rate;
        } else {
            theta = 1.0 / (rate * o->burstiness);
            arrival_s[i] = bench_rng_gamma(&st, o->burstiness, theta);
        }
        if (i > 0) {
            arrival_s[i] += arrival_s[i - 1];
        }
    }

    if (o->ramp_up == NULL && n > 0 && arrival_s[n - 1] > 0.0) {
        scale = ((double) n / o->request_rate) / arrival_s[n - 1];
        for (i = 0; i < n; i++) {
            arrival_s[i] *= scale;
        }
    }
}


/* Where padding ids come from: the dataset's numpy default_rng, or (no
 * rng given to vLLM's helper) numpy's legacy global generator */
typedef struct {
    bench_np_rng_t     *np;
    bench_py_random_t  *legacy;
} bench_pad_rng_t;


/*
 * decode -> encode until the encoding has target ids (vLLM's
 * gen_prompt_decode_to_target_len).  *ids is consumed and replaced.
 */
static int
bench_decode_to_target(const kimi_tokenizer_t *tok, const bench_pad_rng_t *rng,
    int32_t **ids, size_t *n_ids, size_t target, char **text,
    size_t *text_len, long *mismatch, kimi_err_t *err)
{
    int32_t  *enc, *grown;
    size_t    n_enc, i, vocab = kimi_tokenizer_n_vocab(tok);
    int       tries, rc;

    *mismatch = 0;
    *text = NULL;

    for (tries = BENCH_DECODE_RETRIES; ; tries--) {
        free(*text);
        *text = NULL;

        rc = kimi_detokenize(tok, *ids, *n_ids, 0, text, text_len, err);
        if (rc != 0) {
            return rc;
        }

        rc = kimi_tokenize(tok, *text, *text_len, 1, &enc, &n_enc, err);
        if (rc != 0) {
            return rc;
        }

        free(*ids);
        *ids = enc;
        *n_ids = n_enc;

        if (n_enc == target) {
            return 0;
        }

        if (tries <= 0) {
            *mismatch = (long) n_enc - (long) target;
            return 0;
        }

        if (n_enc > target) {
            *n_ids = target;
            continue;
        }

        grown = realloc(*ids, target * sizeof(int32_t));
        if (grown == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "prompt of %zu tokens",
                                target);
        }
        *ids = grown;
        for (i = n_enc; i < target; i++) {
            grown[i] = rng->np != NULL
                       ? (int32_t) bench_np_rng_integers(rng->np, 0, vocab)
                       : (int32_t) bench_np_legacy_randint(rng->legacy,
                                                           (uint32_t) vocab);
        }
        *n_ids = target;
    }
}


static int
bench_is_special(const kimi_tokenizer_t *tok, int32_t id,
    const int32_t *special, size_t n_special)
{
    size_t  i;

    (void) tok;
    for (i = 0; i < n_special; i++) {
        if (special[i] == id) {
            return 1;
        }
    }

    return 0;
}


int
bench_dataset_random(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err)
{
    /* HF all_special_ids: bos, eos, unk, pad + additional_special_tokens */
    static const char *const  names[] = {
        "[UNK]", "[PAD]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>",
        "<|start_header_id|>", "<|end_header_id|>", "[EOT]",
        "<|im_system|>", "<|im_middle|>",
    };

    int32_t    special[2 + sizeof(names) / sizeof(names[0])], *allowed;
    int32_t   *prefix = NULL, *ids;
    uint32_t  *in_lens, *out_lens, *offsets;
    bench_np_rng_t  rng;
    bench_pad_rng_t pad = { &rng, NULL };
    size_t     vocab, n_allowed = 0, n_special = 0, i, j, n_ids, n_prefix = 0;
    size_t     target, text_len;
    uint32_t   in_lo, in_hi, out_lo, out_hi;
    long       mismatch, mismatch_total = 0;
    char      *text;
    int        rc = 0;

    vocab = kimi_tokenizer_n_vocab(tok);

    special[n_special++] = kimi_tokenizer_bos(tok);
    special[n_special++] = kimi_tokenizer_eos(tok);
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int32_t  id = kimi_tokenizer_special_id(tok, names[i]);

        if (id >= 0) {
            special[n_special++] = id;
        }
    }

    if (o->range_ratio < 0.0 || o->range_ratio >= 1.0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "--random-range-ratio must be in [0, 1)");
    }

    /* Kimi's num_special_tokens_to_add() is 0: no BOS is added */
    in_lo = (uint32_t) floor(o->input_len * (1.0 - o->range_ratio));
    in_hi = (uint32_t) ceil(o->input_len * (1.0 + o->range_ratio));
    out_lo = (uint32_t) floor(o->output_len * (1.0 - o->range_ratio));
    out_hi = (uint32_t) ceil(o->output_len * (1.0 + o->range_ratio));
    out_lo = out_lo < 1 ? 1 : out_lo;
    out_hi = out_hi < 1 ? 1 : out_hi;

    if (o->prefix_len + in_lo < 1) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "--random-input-len is too small: the shortest "
                            "prompt (prefix %u + %u sampled) has no token",
                            o->prefix_len, in_lo);
    }

    allowed = malloc(vocab * sizeof(int32_t));
    in_lens = malloc(o->num_prompts * sizeof(uint32_t));
    out_lens = malloc(o->num_prompts * sizeof(uint32_t));
    offsets = malloc(o->num_prompts * sizeof(uint32_t));
    if (allowed == NULL || in_lens == NULL || out_lens == NULL
        || offsets == NULL)
    {
        rc = kimi_err_set(err, KIMI_ENOMEM, "dataset of %u prompts",
                          o->num_prompts);
        goto failed;
    }

    for (i = 0; i < vocab; i++) {
        if (!bench_is_special(tok, (int32_t) i, special, n_special)) {
            allowed[n_allowed++] = (int32_t) i;
        }
    }

    /* the same draws in the same order as vLLM: all input lengths, all
     * output lengths, all offsets, the prefix, then each prompt's padding */
    bench_np_rng_seed(&rng, o->seed);
    for (i = 0; i < o->num_prompts; i++) {
        in_lens[i] = (uint32_t) bench_np_rng_integers(&rng, in_lo,
                                                      (uint64_t) in_hi + 1);
    }
    for (i = 0; i < o->num_prompts; i++) {
        out_lens[i] = (uint32_t) bench_np_rng_integers(&rng, out_lo,
                                                       (uint64_t) out_hi + 1);
    }
    for (i = 0; i < o->num_prompts; i++) {
        offsets[i] = (uint32_t) bench_np_rng_integers(&rng, 0, vocab);
    }

    if (o->prefix_len > 0) {
        n_prefix = o->prefix_len;
        prefix = malloc(n_prefix * sizeof(int32_t));
        if (prefix == NULL) {
            rc = kimi_err_set(err, KIMI_ENOMEM, "prefix");
            goto failed;
        }
        for (i = 0; i < n_prefix; i++) {
            prefix[i] = allowed[bench_np_rng_integers(&rng, 0, n_allowed)];
        }
    }

    for (i = 0; i < o->num_prompts; i++) {
        target = n_prefix + in_lens[i];
        n_ids = target;
        ids = malloc((target + 1) * sizeof(int32_t));
        if (ids == NULL) {
            rc = kimi_err_set(err, KIMI_ENOMEM, "prompt %zu", i);
            goto failed;
        }

        if (n_prefix > 0) {
            memcpy(ids, prefix, n_prefix * sizeof(int32_t));
        }
        for (j = 0; j < in_lens[i]; j++) {
            ids[n_prefix + j] =
                allowed[((size_t) offsets[i] + i + j) % n_allowed];
        }

        rc = bench_decode_to_target(tok, &pad, &ids, &n_ids,
                                    o->prefix_len + in_lens[i], &text,
                                    &text_len, &mismatch, err);
        free(ids);
        if (rc != 0) {
            kimi_err_wrap(err, "prompt %zu", i);
            goto failed;
        }

        mismatch_total += mismatch;
        reqs[i].prompt = text;
        reqs[i].prompt_bytes = text_len;
        reqs[i].prompt_len = (uint32_t) n_ids;
        reqs[i].output_len = out_lens[i];
    }

    if (mismatch_total != 0) {
        fprintf(stderr, "WARNING: across all prompts the text re-encodes to "
                "%ld %s tokens than asked (decode/encode is not 1:1 for "
                "every id run); prompt_len counts the text as sent\n",
                labs(mismatch_total), mismatch_total > 0 ? "more" : "fewer");
    }

failed:

    free(prefix);
    free(allowed);
    free(in_lens);
    free(out_lens);
    free(offsets);

    return rc;
}


/*
 * vLLM's PrefixRepetitionRandomDataset: num_prefixes random prefixes, each
 * followed by (num_prompts / num_prefixes) random suffixes, then shuffled
 * (unless --disable-shuffle).  vLLM seeds Python's random and numpy's
 * legacy global generator with --seed; every prefix and suffix is
 * np.random.randint(0, vocab) ids decoded and re-encoded to its length
 * (padding from the same generator), and a prompt is the text of prefix +
 * suffix ids, its prompt_len their count, as vLLM reports it.
 */
size_t
bench_prefix_rep_count(const bench_opts_t *o)
{
    return o->rep_num_prefixes == 0
           ? 0 : (size_t) (o->num_prompts / o->rep_num_prefixes)
                 * o->rep_num_prefixes;
}


/* len random ids, decoded and re-encoded to len (vLLM's
 * _generate_exact_length_tokens) */
static int
bench_prefix_rep_ids(const kimi_tokenizer_t *tok, bench_py_random_t *np,
    uint32_t len, int32_t **ids, size_t *n_ids, long *mismatch,
    kimi_err_t *err)
{
    bench_pad_rng_t  pad = { NULL, np };
    size_t           vocab = kimi_tokenizer_n_vocab(tok), text_len, i;
    char            *text = NULL;
    int              rc;

    *ids = malloc(((size_t) len + 1) * sizeof(int32_t));
    if (*ids == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%u ids", len);
    }
    for (i = 0; i < len; i++) {
        (*ids)[i] = (int32_t) bench_np_legacy_randint(np, (uint32_t) vocab);
    }
    *n_ids = len;

    rc = bench_decode_to_target(tok, &pad, ids, n_ids, len, &text, &text_len,
                                mismatch, err);
    free(text);
    return rc;
}


int
bench_dataset_prefix_rep(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err)
{
    bench_py_random_t  py, np;
    int32_t           *prefix = NULL, *suffix = NULL, *both = NULL;
    size_t             n_prefix, n_suffix, n_req = 0, text_len;
    uint32_t           per, p, k;
    long               mismatch, mismatch_total = 0;
    char              *text;
    int                rc = 0;

    if (o->rep_num_prefixes == 0 || o->num_prompts < o->rep_num_prefixes) {
        return kimi_err_set(err, KIMI_EINVAL, "num_requests (%u) must be "
                            "greater than or equal to num_prefixes (%u)",
                            o->num_prompts, o->rep_num_prefixes);
    }
    if (o->rep_prefix_len + o->rep_suffix_len == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "--prefix-repetition-prefix-len"
                            " and --prefix-repetition-suffix-len are both 0: "
                            "no prompt");
    }

    per = o->num_prompts / o->rep_num_prefixes;
    bench_py_seed(&py, o->seed);
    bench_np_legacy_seed(&np, (uint32_t) o->seed);

    for (p = 0; p < o->rep_num_prefixes; p++) {
        free(prefix);
        prefix = NULL;
        rc = bench_prefix_rep_ids(tok, &np, o->rep_prefix_len, &prefix,
                                  &n_prefix, &mismatch, err);
        if (rc != 0) {
            goto done;
        }
        mismatch_total += mismatch;

        for (k = 0; k < per; k++) {
            rc = bench_prefix_rep_ids(tok, &np, o->rep_suffix_len, &suffix,
                                      &n_suffix, &mismatch, err);
            if (rc != 0) {
                goto done;
            }
            mismatch_total += mismatch;

            both = malloc((n_prefix + n_suffix + 1) * sizeof(int32_t));
            if (both == NULL) {
                rc = kimi_err_set(err, KIMI_ENOMEM, "prompt %zu", n_req);
                goto done;
            }
            memcpy(both, prefix, n_prefix * sizeof(int32_t));
            memcpy(both + n_prefix, suffix, n_suffix * sizeof(int32_t));
            free(suffix);
            suffix = NULL;

            rc = kimi_detokenize(tok, both, n_prefix + n_suffix, 0, &text,
                                 &text_len, err);
            free(both);
            both = NULL;
            if (rc != 0) {
                goto done;
            }

            reqs[n_req].prompt = text;
            reqs[n_req].prompt_bytes = text_len;
            reqs[n_req].prompt_len = (uint32_t) (n_prefix + n_suffix);
            reqs[n_req].output_len = o->rep_output_len;
            n_req++;
        }
    }

    if (mismatch_total != 0) {
        fprintf(stderr, "WARNING: across all prompts the random ids "
                "re-encode to %ld %s tokens than asked (decode/encode is not "
                "1:1 for every id run)\n", labs(mismatch_total),
                mismatch_total > 0 ? "more" : "fewer");
    }

    if (!o->disable_shuffle) {
        bench_py_shuffle(&py, reqs, n_req, sizeof(bench_req_t));
    }

done:

    free(prefix);
    free(suffix);
    free(both);
    return rc;
}
