/*
 * The sample pool (engine/sample/sample_pool.c): a batch of rows sampled
 * on 4 threads gives, row for row, the same token, logprob and top entries
 * as one sampler taking the rows in order (greedy, seeded temperature +
 * top_p / top_k / min_p with logprobs, penalties, JSON mode and a JSON
 * schema), over repeated batches; rows the caller took as plain greedy are
 * left alone; one thread and two rows run inline.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sample/sample.h"
#include "sample/sample_pool.h"
#include "text/json_schema.h"
#include "text/kimi_text.h"

#include "tap.h"

#define VOCAB  163840
#define ROWS   24



int
main(void)
{
    kimi_tokenizer_t     *tok = NULL;
    kimi_sampler_t       *one;
    kimi_sample_pool_t   *pool, *inl;
    kimi_err_t            err;
    kimi_shm_sampling_t   sp[ROWS];
    kimi_sample_req_t     req[ROWS];
    kimi_sample_out_t     ref[ROWS], got[ROWS];
    uint8_t               skip[ROWS];
    kimi_rng_t            rng, ra[ROWS], rb[ROWS];
    int32_t               seq[ROWS][40], eos[1] = { 163586 }, *words = NULL;
    float                *rows = malloc((size_t) ROWS * VOCAB * sizeof(float));
    size_t                n_prog = 0;
    int32_t              *prog = NULL;
    char                  msg[256];
    int                   same = 1, untouched = 1;
    json_t               *schema;

    if (kimi_tokenizer_load(&tok, tap_model_dir(), &err) != 0) {
        tok = NULL;                     /* JSON rows need it: left out */
    }
    schema = json_loads("{\"type\": \"object\", \"properties\": {\"a\":"
                        " {\"enum\": [1, 2, 3]}}, \"required\": [\"a\"]}", 0, NULL);
    if (schema == NULL || kimi_json_schema_compile(schema, &prog, &n_prog, msg,
                                                   sizeof(msg)) != 0)
    {
        ok(0, "schema compiles");
        return 1;
    }
    json_decref(schema);
    words = malloc((n_prog + 1) * sizeof(int32_t));
    words[0] = KIMI_SCHEMA_TAG;
    memcpy(words + 1, prog, n_prog * sizeof(int32_t));

    if (rows == NULL || kimi_sampler_init(&one, VOCAB, &err) != 0
        || kimi_sample_pool_init(&pool, VOCAB, 4, &err) != 0
        || kimi_sample_pool_init(&inl, VOCAB, 1, &err) != 0)
    {
        ok(0, "setup: %s", err.msg);
        return 1;
    }
    ok(kimi_sample_pool_threads(pool) == 4, "a pool of 4 samplers");

    kimi_rng_seed(&rng, 9);
    for (int batch = 0; batch < 6; batch++) {
        memset(ref, 0, sizeof(ref));
        memset(got, 0, sizeof(got));
        for (size_t i = 0; i < (size_t) ROWS * VOCAB; i++) {
            rows[i] = (float) (kimi_rng_uniform(&rng) * 10.0 - 5.0);
        }
        for (int r = 0; r < ROWS; r++) {
            memset(&sp[r], 0, sizeof(sp[r]));
            sp[r].temperature = r % 6 == 0 ? 0.0f : 0.3f + 0.1f * (r % 7);
            sp[r].top_p = r % 3 == 1 ? 0.9f : 1.0f;
            sp[r].top_k = r % 4 == 2 ? 40 : 0;
            sp[r].min_p = r % 5 == 3 ? 0.05f : 0.0f;
            sp[r].repetition_penalty = r % 7 == 4 ? 1.2f : 1.0f;
            sp[r].presence_penalty = r % 8 == 5 ? 0.5f : 0.0f;
            sp[r].max_tokens = 64;
            sp[r].logprobs = 1;
            sp[r].top_logprobs = (uint8_t) (r % 6);
            sp[r].json_object = tok != NULL && r == 7;
            for (int k = 0; k < 40; k++) {
                seq[r][k] = 1000 + (r * 37 + k * 11 + batch) % 5000;
            }
            memset(&req[r], 0, sizeof(req[r]));
            req[r].sampling = &sp[r];
            req[r].tokens = seq[r];
            req[r].n_prompt = 30;
            req[r].n_output = (uint32_t) (r == 7 || r == 11 ? 0 : 10);
            req[r].eos_ids = eos;
            req[r].n_eos = 1;
            req[r].tokenizer = tok;
            if (tok != NULL && r == 11) {
                req[r].guided = words;
                req[r].n_guided = (uint32_t) n_prog + 1;
            }
            kimi_rng_seed(&ra[r], 1000 + (uint64_t) r * 7 + (uint64_t) batch);
            rb[r] = ra[r];
        }

        /* one sampler, rows in order */
        for (int r = 0; r < ROWS; r++) {
            req[r].rng = &ra[r];
            if (kimi_sampler_sample(one, rows + (size_t) r * VOCAB, &req[r],
                                    &ref[r], &err) != 0)
            {
                ok(0, "reference sample: %s", err.msg);
                return 1;
            }
        }
        /* the pool, the same rows */
        for (int r = 0; r < ROWS; r++) {
            req[r].rng = &rb[r];
            got[r].tok.token = -7;
        }
        if (kimi_sample_pool_run(batch % 2 ? inl : pool, rows, VOCAB, req,
                                 ROWS, NULL, got, &err) != 0)
        {
            ok(0, "pool sample: %s", err.msg);
            return 1;
        }
        same &= memcmp(ref, got, sizeof(ref)) == 0
                && memcmp(ra, rb, sizeof(ra)) == 0;

        /* rows taken as plain greedy by the caller stay as they were */
        for (int r = 0; r < ROWS; r++) {
            got[r].tok.token = -7;
            rb[r] = ra[r];
            sp[r].logprobs = 0;
            sp[r].top_logprobs = 0;
        }
        for (int r = 0; r < ROWS; r++) {
            skip[r] = (uint8_t) kimi_sample_is_plain_greedy(&req[r]);
        }
        if (kimi_sample_pool_run(pool, rows, VOCAB, req, ROWS, skip, got,
                                 &err) != 0)
        {
            ok(0, "pool sample (greedy skipped): %s", err.msg);
            return 1;
        }
        for (int r = 0; r < ROWS; r++) {
            untouched &= kimi_sample_is_plain_greedy(&req[r])
                         ? got[r].tok.token == -7 : got[r].tok.token >= 0;
        }
    }
    ok(same, "6 batches of %d rows (greedy, seeded temperature/top_p/top_k/"
       "min_p, penalties, logprobs%s): 4 threads and one inline sampler give"
       " the rows one sampler gives in order, bit for bit, and leave the same"
       " rng states", ROWS, tok != NULL ? ", JSON mode, a JSON schema" : "");
    ok(untouched, "rows the caller marks (its plain greedy ones) are not sampled");

    kimi_sample_pool_free(pool);
    kimi_sample_pool_free(inl);
    kimi_sampler_free(one);
    kimi_tokenizer_free(tok);
    free(rows);
    free(words);
    free(prog);
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
