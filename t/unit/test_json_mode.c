/*
 * JSON mode: the JSON-object recogniser (engine/sample/json_mode.c) on
 * valid and invalid texts and every prefix, then the sampler's mask with
 * Kimi's real tokenizer: random rows sampled under response_format
 * json_object always extend a valid prefix, and end with an eos id once
 * the object is complete.
 */

#include <math.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "sample/json_mode.h"
#include "sample/sample.h"
#include "text/kimi_text.h"

#include "tap.h"


static const char *
model_dir(void)
{
    const char  *d = getenv("KIMI_MODEL_DIR");

    return d != NULL ? d : "../shared/kimi-k2";
}


/* 1 if every prefix is accepted; *done: complete at the end */
static int
accepts(const char *text, int *done)
{
    kimi_json_state_t  s;

    kimi_json_init(&s);
    for (size_t i = 0; text[i] != '\0'; i++) {
        if (kimi_json_feed(&s, text + i, 1) != 0) {
            return 0;
        }
    }
    *done = kimi_json_done(&s);
    return 1;
}


static void
test_grammar(void)
{
    static const char  *valid[] = {
        "{}",
        "  {\"a\": 1}\n",
        "{\"a\":[1,-2.5e+3,0.25,0,1E9,true,false,null,{\"b\":\"x\\u00e9\\n\\\"\"}],"
        "\"c\":{}, \"d\":[], \"e\":[[[]]]}",
        "{\"\xc3\xa9t\xc3\xa9\": \"caf\xc3\xa9\"}",
    };
    static const char  *invalid[] = {
        "[]", "1", "\"s\"", "{\"a\"}", "{a:1}", "{\"a\":01}", "{\"a\":1,}",
        "{\"a\":tru }", "{\"a\":\"\x01\"}", "{\"a\":1}x", "{,}", "{\"a\":-}",
        "{\"a\":1.}", "{\"a\":1e}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12g4\"}",
        "{\"a\":[1 2]}", "{\"a\":]", "{}}", "{\"a\":1]",
    };
    char   deep[80];
    int    done;
    size_t i;

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        ok(accepts(valid[i], &done) && done, "valid and complete: %s",
           valid[i]);
    }
    ok(accepts("{\"a\": [1, {\"b\": tr", &done) && !done,
       "a prefix is accepted, not complete");
    ok(accepts("{\"a\": 12", &done) && !done,
       "a number may still grow at the end");
    ok(accepts("{\"a\": 1                }", &done) && done,
       "16 whitespace bytes in a row");
    ok(!accepts("{\"a\": 1                 }", &done),
       "17 are refused (no endless whitespace)");
    ok(accepts("{\"a\": \"                                  \"}", &done)
       && done, "inside a string any number of spaces");
    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        ok(!accepts(invalid[i], &done), "refused: %s", invalid[i]);
    }

    /* KIMI_JSON_MAX_DEPTH containers in all, the top object included */
    memset(deep, 0, sizeof(deep));
    deep[0] = '{';
    strcat(deep, "\"a\":");
    for (i = 1; i < KIMI_JSON_MAX_DEPTH; i++) {
        strcat(deep, "[");
    }
    ok(accepts(deep, &done), "%d levels of nesting", KIMI_JSON_MAX_DEPTH);
    strcat(deep, "[");
    ok(!accepts(deep, &done), "one more is refused");
}


static void
test_sampler(void)
{
    kimi_tokenizer_t   *tok;
    kimi_sampler_t     *smp;
    kimi_err_t          err;
    kimi_shm_sampling_t sp;
    kimi_sample_req_t   req;
    kimi_sample_out_t   out;
    kimi_rng_t          rng, draw;
    kimi_json_state_t   st;
    float              *row;
    int32_t             seq[256], eos[2];
    uint32_t            vocab, n = 0, bad = 0, ended = 0, runs = 0, calls = 0;
    double              t_sample = 0;
    struct timespec     t0, t1;
    const char         *b;
    size_t              len;

    if (kimi_tokenizer_load(&tok, model_dir(), &err) != 0) {
        ok(0, "tokenizer loads: %s", err.msg);
        return;
    }
    vocab = 163840;
    eos[0] = kimi_tokenizer_special_id(tok, "<|im_end|>");
    eos[1] = kimi_tokenizer_special_id(tok, "[EOS]");
    row = malloc(vocab * sizeof(float));
    if (row == NULL || kimi_sampler_init(&smp, vocab, &err) != 0) {
        ok(0, "sampler: %s", err.msg);
        return;
    }
    kimi_rng_seed(&rng, 7);

    for (runs = 0; runs < 6; runs++) {
        memset(&sp, 0, sizeof(sp));
        sp.temperature = 1.0f;
        sp.top_p = 1.0f;
        sp.repetition_penalty = 1.0f;
        sp.max_tokens = 200;
        sp.json_object = 1;
        kimi_rng_seed(&draw, 100 + runs);
        seq[0] = 1000;                  /* a one-token prompt */
        n = 1;
        kimi_json_init(&st);

        for (int step = 0; step < 120; step++) {
            /* random logits, with the closing brace and eos made likely
             * after a while so some runs complete */
            for (uint32_t i = 0; i < vocab; i++) {
                row[i] = (float) (kimi_rng_uniform(&rng) * 8.0);
            }
            if (step > 40) {
                int32_t  close = 0;
                size_t   cl;
                for (int32_t i = 0; i < 200000 && close == 0; i++) {
                    const char  *cb = kimi_token_bytes(tok, i, &cl);
                    close = (cb && cl == 1 && cb[0] == '}') ? i : 0;
                }
                row[close] += 30.0f;
                row[eos[0]] += 30.0f;
            }
            memset(&req, 0, sizeof(req));
            req.sampling = &sp;
            req.tokens = seq;
            req.n_prompt = 1;
            req.n_output = n - 1;
            req.rng = &draw;
            req.eos_ids = eos;
            req.n_eos = 2;
            req.tokenizer = tok;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (kimi_sampler_sample(smp, row, &req, &out, &err) != 0) {
                bad++;
                break;
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            t_sample += (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
            calls++;
            if (out.tok.token == eos[0] || out.tok.token == eos[1]) {
                bad += !kimi_json_done(&st);
                ended += kimi_json_done(&st);
                break;
            }
            b = kimi_tokenizer_is_special(tok, out.tok.token) ? NULL
                : kimi_token_bytes(tok, out.tok.token, &len);
            if (b == NULL || kimi_json_feed(&st, b, len) != 0) {
                bad++;
                break;
            }
            seq[n++] = out.tok.token;
        }
    }
    ok(bad == 0, "6 runs of up to 120 random rows under JSON mode: every "
       "token extends a valid prefix, eos only after the object (%u bad)",
       bad);
    ok(ended > 0, "... and %u of them completed the object, then eos", ended);
    printf("# JSON mode: %.0f us a sample (163840-entry rows, %u calls, the "
           "first builds the vocabulary index)\n", 1e6 * t_sample / calls,
           calls);

    kimi_sampler_free(smp);
    kimi_tokenizer_free(tok);
    free(row);
}


int
main(void)
{
    test_grammar();
    test_sampler();
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
