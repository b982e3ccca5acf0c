/*
 * guided_regex in the host sampler with Kimi's real tokenizer: random rows
 * drawn at temperature 1 under a DFA program (KIMI_REGEX_TAG guided words).
 * Every drawn token keeps the DFA alive, eos comes only in an accepting
 * state, every run that ends has a text the DFA accepts whole, and bounded
 * patterns always end.  Prints the host cost of a token under a pattern.
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tap.h"
#include "../../engine/sample/sample.h"
#include "../../engine/text/kimi_text.h"
#include "../../engine/text/regex_dfa.h"



/* one draw for a 1-token prompt and n_out tokens of output in seq[1..] */
static int
draw_one(kimi_sampler_t *smp, const float *row, const int32_t *seq,
    uint32_t n_out, const kimi_shm_sampling_t *sp, kimi_rng_t *draw,
    const int32_t *eos, const kimi_tokenizer_t *tok, const int32_t *words,
    uint32_t n_words, kimi_sample_out_t *out)
{
    kimi_sample_req_t  req;
    kimi_err_t         err;

    memset(&req, 0, sizeof(req));
    req.sampling = sp;
    req.tokens = seq;
    req.n_prompt = 1;
    req.n_output = n_out;
    req.rng = draw;
    req.eos_ids = eos;
    req.n_eos = 2;
    req.tokenizer = tok;
    req.guided = words;
    req.n_guided = n_words;
    return kimi_sampler_sample(smp, row, &req, out, &err);
}


int
main(void)
{
    static const struct {
        const char  *pattern;
        int          bounded;      /* must end within max_tokens */
    } cases[] = {
        { "[0-9]{3}-[0-9]{4}", 1 },
        { "(yes|no|maybe)( indeed)?", 1 },
        { "[A-Z][a-z]{1,8}, [A-Z][a-z]{1,8}\\.", 1 },
        { "\\{\"id\": [0-9]{1,6}, \"ok\": (true|false)\\}", 1 },
        { "[^\\n]{0,60}", 1 },
        { ".{0,40}\\n", 1 },
        { "(\\w+ ?){1,12}", 0 },
        { "[a-z ]*", 0 },
    };
    kimi_tokenizer_t   *tok = NULL;
    kimi_sampler_t     *smp = NULL;
    kimi_err_t          err;
    kimi_rng_t          rng, draw;
    kimi_shm_sampling_t sp;
    kimi_sample_out_t   out;
    int32_t            *prog, *words, seq[200], eos[2], state;
    size_t              n_prog, len;
    uint32_t            vocab = 163840, calls = 0;
    float              *row;
    double              secs = 0;
    struct timespec     t0, t1;
    char                msg[200];
    const char         *b;

    if (kimi_tokenizer_load(&tok, tap_model_dir(), &err) != 0) {
        ok(0, "tokenizer loads: %s", err.msg);
        printf("1..%d\n", test_n);
        return 1;
    }
    eos[0] = kimi_tokenizer_special_id(tok, "<|im_end|>");
    eos[1] = kimi_tokenizer_special_id(tok, "[EOS]");
    row = malloc(vocab * sizeof(float));
    if (row == NULL || kimi_sampler_init(&smp, vocab, &err) != 0) {
        ok(0, "sampler: %s", err.msg);
        printf("1..%d\n", test_n);
        return 1;
    }
    kimi_rng_seed(&rng, 11);

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int  alive = 1, eos_ok = 1, whole = 1, ended = 0, runs = 4;
        double    secs0 = secs;
        uint32_t  calls0 = calls;

        if (kimi_regex_compile(cases[c].pattern, strlen(cases[c].pattern),
                               &prog, &n_prog, msg, sizeof(msg)) != 0)
        {
            ok(0, "%s compiles: %s", cases[c].pattern, msg);
            continue;
        }
        words = malloc((n_prog + 1) * sizeof(int32_t));
        words[0] = KIMI_REGEX_TAG;
        memcpy(words + 1, prog, n_prog * sizeof(int32_t));
        ok(kimi_sample_guided_check(words, (uint32_t) n_prog + 1, vocab, &err)
           == 0, "%s: the engine's check takes the program", cases[c].pattern);

        for (int r = 0; r < runs; r++) {
            uint32_t  n = 1;

            memset(&sp, 0, sizeof(sp));
            sp.temperature = 1.0f;
            sp.top_p = 1.0f;
            sp.repetition_penalty = 1.0f;
            sp.max_tokens = 120;
            kimi_rng_seed(&draw, 1000 + 10 * c + r);
            seq[0] = 1000;
            state = 0;

            while (n < 121) {
                for (uint32_t i = 0; i < vocab; i++) {
                    row[i] = (float) ((kimi_rng_uniform(&rng) - 0.5) * 12.0);
                }
                clock_gettime(CLOCK_MONOTONIC, &t0);
                if (draw_one(smp, row, seq, n - 1, &sp, &draw, eos, tok, words,
                             (uint32_t) n_prog + 1, &out) != 0)
                {
                    alive = 0;
                    break;
                }
                clock_gettime(CLOCK_MONOTONIC, &t1);
                secs += (double) (t1.tv_sec - t0.tv_sec)
                        + (double) (t1.tv_nsec - t0.tv_nsec) * 1e-9;
                calls++;
                if (out.tok.token == eos[0] || out.tok.token == eos[1]) {
                    eos_ok &= kimi_regex_accepts(prog, state);
                    ended++;
                    break;
                }
                b = kimi_token_bytes(tok, out.tok.token, &len);
                state = b != NULL ? kimi_regex_step(prog, state, b, len) : -1;
                if (state < 0) {
                    alive = 0;
                    break;
                }
                seq[n++] = out.tok.token;
            }
            whole &= !ended || kimi_regex_accepts(prog, state);
        }
        ok(alive && eos_ok && whole
           && (!cases[c].bounded || ended == runs),
           "%s: %d random-model runs, every token keeps the DFA alive,"
           " eos only where it accepts, %d ended with the text whole",
           cases[c].pattern, runs, ended);
        printf("# %s: %.0f us a token\n", cases[c].pattern,
               calls > calls0 ? (secs - secs0) * 1e6 / (calls - calls0) : 0.0);
        free(words);
        free(prog);
    }

    printf("# host: %.0f us a token under a regex (mask + draw, %u draws,"
           " vocab %u)\n", calls ? secs * 1e6 / calls : 0.0, calls, vocab);

    /* the mask against a brute-force walk of single tokens: greedy over a
     * flat row with one token lifted draws that token exactly when its
     * bytes keep the DFA alive (after a prefix of output) */
    {
        static const char  *pats[] = { "[a-z ]{0,30}", "(cat|dog|bird)s?",
                                       "[^\\n]{0,80}x", "[0-9]+(\\.[0-9]+)?" };
        static const char  *prefix[] = { "the", "", "abc", "12" };
        int                 agree = 1, tried = 0, allowed = 0;

        /* twice: the second pass finds every state's mask kept by the first
         * (the sampler caches them by program and state), the four
         * programs' masks side by side */
        for (size_t c = 0; c < 8; c++) {
            int32_t  pre[8];
            uint32_t n_pre = 0;

            if (kimi_regex_compile(pats[c % 4], strlen(pats[c % 4]), &prog, &n_prog,
                                   msg, sizeof(msg)) != 0)
            {
                agree = 0;
                continue;
            }
            words = malloc((n_prog + 1) * sizeof(int32_t));
            words[0] = KIMI_REGEX_TAG;
            memcpy(words + 1, prog, n_prog * sizeof(int32_t));
            state = 0;
            if (prefix[c % 4][0] != '\0') {
                int32_t  *ids = NULL;
                size_t    n_ids = 0;

                if (kimi_tokenize(tok, prefix[c % 4], strlen(prefix[c % 4]), 0, &ids,
                                  &n_ids, &err) != 0)
                {
                    n_ids = 0;
                }
                for (size_t j = 0; j < n_ids && j < 7; j++) {
                    b = kimi_token_bytes(tok, ids[j], &len);
                    state = kimi_regex_step(prog, state, b, len);
                    pre[n_pre++] = ids[j];
                }
                free(ids);
            }
            for (int k = 0; k < 60 && state >= 0; k++) {
                uint32_t  t = kimi_rng_next(&rng) % vocab;
                int       want;

                if (kimi_tokenizer_is_special(tok, (int32_t) t)) {
                    continue;
                }
                b = kimi_token_bytes(tok, (int32_t) t, &len);
                want = b != NULL && kimi_regex_step(prog, state, b, len) >= 0;
                for (uint32_t i = 0; i < vocab; i++) {
                    row[i] = 0.0f;
                }
                row[t] = 50.0f;
                memset(&sp, 0, sizeof(sp));
                sp.temperature = 0.0f;
                sp.top_p = 1.0f;
                sp.repetition_penalty = 1.0f;
                sp.max_tokens = 10;
                seq[0] = 1000;
                memcpy(seq + 1, pre, n_pre * sizeof(int32_t));
                if (draw_one(smp, row, seq, n_pre, &sp, &draw, eos, tok, words,
                             (uint32_t) n_prog + 1, &out) != 0)
                {
                    agree = 0;
                    break;
                }
                tried++;
                allowed += want;
                agree &= (out.tok.token == (int32_t) t) == want;
            }
            free(words);
            free(prog);
        }
        ok(agree && tried > 200, "the mask allows a lifted token exactly when"
           " a brute-force walk of its bytes stays alive, walked or kept"
           " (%d tokens, %d allowed)", tried, allowed);
    }

    kimi_sampler_free(smp);
    kimi_tokenizer_free(tok);
    free(row);
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
