/*
 * vLLM's bad_words in the host sampler, on synthetic rows: a word's last
 * token is masked exactly when the output so far ends with the rest of the
 * word (a one-token word always); the prompt does not count; a masked
 * favourite leaves the next best, greedy or drawn; the layout check
 * refuses malformed words; rows with bad words are not "plain" (a device
 * backend must hand them to this sampler).
 */

#include <math.h>
#include <string.h>

#include "tap.h"
#include "../../engine/sample/sample.h"

#define VOCAB  64


/* the row: token `best` first, then 7, then the rest decreasing */
static void
make_row(float *row, int32_t best)
{
    for (int i = 0; i < VOCAB; i++) {
        row[i] = -0.01f * (float) i;
    }
    row[7] = 5.0f;
    row[best] = 9.0f;
}


static int32_t
draw(kimi_sampler_t *smp, const float *row, const int32_t *seq,
    uint32_t n_prompt, uint32_t n_out, const kimi_shm_sampling_t *sp,
    const int32_t *bad, uint32_t n_bad)
{
    kimi_sample_req_t  req;
    kimi_sample_out_t  out;
    kimi_rng_t         rng;
    kimi_err_t         err;

    kimi_rng_seed(&rng, 11);
    memset(&req, 0, sizeof(req));
    req.sampling = sp;
    req.tokens = seq;
    req.n_prompt = n_prompt;
    req.n_output = n_out;
    req.rng = &rng;
    req.bad = bad;
    req.n_bad = n_bad;
    if (kimi_sampler_sample(smp, row, &req, &out, &err) != 0) {
        return -1;
    }
    return out.tok.token;
}


int
main(void)
{
    kimi_sampler_t       *smp;
    kimi_shm_sampling_t   sp;
    kimi_sample_req_t     req;
    kimi_err_t            err;
    float                 row[VOCAB];
    /* two words: [5] and [3, 9, 5] */
    const int32_t         words[] = { 2, 1, 5, 3, 3, 9, 5 };
    const int32_t         pair[] = { 1, 2, 3, 5 };          /* [3, 5] */
    /* prompt 3 3, output 1 3 9 */
    const int32_t         seq[] = { 3, 3, 1, 3, 9 };

    if (kimi_sampler_init(&smp, VOCAB, &err) != 0) {
        printf("Bail out! %s\n", err.msg);
        return 1;
    }

    memset(&sp, 0, sizeof(sp));
    sp.top_p = 1.0f;
    sp.repetition_penalty = 1.0f;
    sp.max_tokens = 16;

    make_row(row, 5);
    ok(draw(smp, row, seq, 2, 0, &sp, NULL, 0) == 5,
       "without bad words the favourite (5) is drawn");
    ok(draw(smp, row, seq, 2, 0, &sp, words, 7) == 7,
       "a one-token bad word is masked from the first token on: 7 instead");

    ok(draw(smp, row, seq, 2, 0, &sp, pair, 4) == 5,
       "[3, 5]: no output yet, 5 allowed (the prompt's 3 does not count)");
    ok(draw(smp, row, seq, 2, 2, &sp, pair, 4) == 7,
       "[3, 5]: the output ends with 3, so 5 is masked");
    ok(draw(smp, row, seq, 2, 3, &sp, pair, 4) == 5,
       "[3, 5]: the output ends with 9, 5 allowed again");

    const int32_t  three[] = { 1, 3, 3, 9, 5 };
    ok(draw(smp, row, seq, 2, 3, &sp, three, 5) == 7,
       "[3, 9, 5]: the output ends with 3 9, so 5 is masked");
    ok(draw(smp, row, seq, 2, 2, &sp, three, 5) == 5,
       "[3, 9, 5]: the output ends with 1 3, 5 allowed");
    ok(draw(smp, row, seq, 4, 1, &sp, three, 5) == 5,
       "[3, 9, 5] after an output of 9 alone: allowed (the prompt's 3 is"
       " not output)");

    sp.temperature = 1.0f;
    int  hit = 0;
    for (uint64_t s = 0; s < 200; s++) {
        kimi_rng_t         rng;
        kimi_sample_out_t  out;

        kimi_rng_seed(&rng, s);
        memset(&req, 0, sizeof(req));
        req.sampling = &sp;
        req.tokens = seq;
        req.n_prompt = 2;
        req.n_output = 3;
        req.rng = &rng;
        req.bad = words;
        req.n_bad = 7;
        if (kimi_sampler_sample(smp, row, &req, &out, &err) != 0
            || out.tok.token == 5)
        {
            hit++;
        }
    }
    ok(hit == 0, "random draws never produce a masked token (%d of 200)",
       hit);

    memset(&req, 0, sizeof(req));
    req.sampling = &sp;
    req.bad = words;
    req.n_bad = 7;
    ok(!kimi_sample_is_plain_random(&req),
       "a drawn row with bad words is not plain (the host samples it)");
    sp.temperature = 0.0f;
    ok(!kimi_sample_is_plain_greedy(&req),
       "nor a greedy one");

    const int32_t  bad1[] = { 2, 1, 5 };              /* one word missing */
    const int32_t  bad2[] = { 1, 0 };                 /* empty word */
    const int32_t  bad3[] = { 1, 1, VOCAB };          /* outside */
    const int32_t  bad4[] = { 1, 1, 5, 6 };           /* left over */
    ok(kimi_sample_bad_words_check(words, 7, VOCAB, &err) == 0,
       "the check takes well-formed words");
    ok(kimi_sample_bad_words_check(bad1, 3, VOCAB, &err) != 0
       && kimi_sample_bad_words_check(bad2, 2, VOCAB, &err) != 0
       && kimi_sample_bad_words_check(bad3, 3, VOCAB, &err) != 0
       && kimi_sample_bad_words_check(bad4, 4, VOCAB, &err) != 0,
       "and refuses a missing word, an empty one, an id outside the"
       " vocabulary, words left over (%s)", err.msg);

    kimi_sampler_free(smp);
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
