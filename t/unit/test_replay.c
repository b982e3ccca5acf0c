/*
 * Unit tests for the replay backend (engine/backend/replay/): script
 * validation with clear messages, token order, eos, ignore_eos cycling,
 * prompt matching and "text" replies through Kimi's tokenizer, and the
 * factory's errors for unknown or missing backends.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/replay/replay.h"
#include "sample/sample.h"
#include "text/kimi_text.h"


static int  test_n;
static int  test_failed;
static char tmpdir[] = "/tmp/kimi-replay-test-XXXXXX";


static void
ok(int cond, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
ok(int cond, const char *fmt, ...)
{
    va_list  ap;

    printf("%sok %d - ", cond ? "" : "not ", ++test_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");

    if (!cond) {
        test_failed++;
    }
}


static const int32_t  eos[] = { 163586, 163585 };


static const char *
script(const char *name, const char *text)
{
    static char  path[512];
    FILE        *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    fputs(text, f);
    fclose(f);

    return path;
}


static int
load(kimi_backend_t **b, const char *text, const kimi_tokenizer_t *tok,
    kimi_err_t *err)
{
    kimi_replay_params_t  p;

    memset(&p, 0, sizeof(p));
    p.script_path = script("s.json", text);
    p.delay_ms = -1;
    p.tokenizer = tok;
    p.vocab_size = 163840;
    p.max_model_len = 4096;
    p.eos_ids = eos;
    p.n_eos = 2;

    return kimi_backend_replay_init(b, &p, err);
}


/* Runs n_steps decode steps for one sequence; returns tokens produced. */
static int
run(kimi_backend_t *b, uint64_t seq_id, const int32_t *prompt, uint32_t n,
    kimi_shm_sampling_t *sp, int32_t *out, int n_steps)
{
    int                 k;
    int32_t             toks[4096];
    kimi_err_t          err;
    kimi_batch_t        batch;
    kimi_batch_seq_t    bs;
    kimi_sample_req_t   req;
    kimi_sample_out_t   so;

    memcpy(toks, prompt, n * sizeof(int32_t));

    for (k = 0; k < n_steps; k++) {
        memset(&bs, 0, sizeof(bs));
        bs.seq_id = seq_id;
        bs.want_logits = 1;
        bs.tokens = toks;
        bs.n_tokens = 1;
        batch.n_seqs = 1;
        batch.seqs = &bs;

        if (b->ops->forward(b, &batch, &err) != 0) {
            return -1;
        }

        memset(&req, 0, sizeof(req));
        req.sampling = sp;
        req.tokens = toks;
        req.n_prompt = n;
        req.n_output = (uint32_t) k;

        if (b->ops->sample(b, &req, 1, &so, &err) != 0) {
            return -1;
        }

        out[k] = so.tok.token;
        toks[n + (uint32_t) k] = so.tok.token;
    }

    return k;
}


static void
test_script_errors(void)
{
    kimi_err_t       err;
    kimi_backend_t  *b;

    ok(load(&b, "{\"replies\": [", NULL, &err) == KIMI_EFORMAT
       && strstr(err.msg, "line") != NULL,
       "invalid JSON names the line: %s", err.msg);
    ok(load(&b, "{\"replys\": []}", NULL, &err) == KIMI_EFORMAT
       && strstr(err.msg, "unknown key \"replys\"") != NULL,
       "unknown top-level key: %s", err.msg);
    ok(load(&b, "{\"delay_ms\": -3}", NULL, &err) == KIMI_EFORMAT
       && strstr(err.msg, "delay_ms") != NULL,
       "negative delay_ms: %s", err.msg);
    ok(load(&b, "{\"delay_ms\": 10001}", NULL, &err) == KIMI_EFORMAT
       && strstr(err.msg, "[0, 10000]") != NULL,
       "delay_ms beyond 10 s: %s", err.msg);
    ok(load(&b, "{\"replies\": [{\"tokens\": [1], \"text\": \"a\"}]}", NULL,
            &err) == KIMI_EFORMAT && strstr(err.msg, "exactly one") != NULL,
       "both text and tokens: %s", err.msg);
    ok(load(&b, "{\"replies\": [{\"tokens\": [1, 163840]}]}", NULL, &err)
       == KIMI_EFORMAT && strstr(err.msg, "replies[0].tokens[1]") != NULL,
       "token id outside the vocabulary names its place: %s", err.msg);
    ok(load(&b, "{\"default\": {\"text\": \"hi\"}}", NULL, &err) == KIMI_EINVAL
       && strstr(err.msg, "--model") != NULL,
       "text without a tokenizer says to pass --model: %s", err.msg);
    ok(load(&b, "{\"default\": {\"match\": \"x\", \"tokens\": [1]}}", NULL,
            &err) == KIMI_EFORMAT && strstr(err.msg, "\"match\"") != NULL,
       "match in default is refused: %s", err.msg);

    kimi_replay_params_t  p;
    memset(&p, 0, sizeof(p));
    p.vocab_size = 163840;
    p.eos_ids = eos;
    p.n_eos = 1;
    ok(kimi_backend_replay_init(&b, &p, &err) == KIMI_EINVAL
       && strstr(err.msg, "--replay-script") != NULL,
       "no script: %s", err.msg);
}


static void
test_tokens(void)
{
    int                  n;
    int32_t              out[16];
    uint32_t             blocks;
    kimi_err_t           err;
    kimi_backend_t      *b;
    kimi_kv_params_t     kv;
    kimi_shm_sampling_t  sp;
    const int32_t        prompt[] = { 1, 2 };

    ok(load(&b, "{\"delay_ms\": 0, \"replies\": [{\"tokens\": [7, 8, 9]}]}",
            NULL, &err) == 0, "tokens script loads without a tokenizer");

    memset(&sp, 0, sizeof(sp));
    sp.max_tokens = 10;
    n = run(b, 1, prompt, 2, &sp, out, 5);
    ok(n == 5 && out[0] == 7 && out[1] == 8 && out[2] == 9
       && out[3] == 163586, "reply tokens, then the first eos id");

    sp.ignore_eos = 1;
    n = run(b, 2, prompt, 2, &sp, out, 7);
    ok(n == 7 && out[3] == 7 && out[6] == 7, "ignore_eos cycles the reply");

    sp.ignore_eos = 0;
    sp.min_tokens = 5;
    n = run(b, 3, prompt, 2, &sp, out, 6);
    ok(out[3] == 7 && out[4] == 8 && out[5] == 163586,
       "min_tokens defers the eos");

    b->ops->seq_free(b, 1);
    b->ops->seq_free(b, 2);
    b->ops->seq_free(b, 99);       /* unknown: no-op */

    /* thousands of sequences through the map, then freed */
    sp.min_tokens = 0;
    int  good = 1;
    for (uint64_t id = 10; id < 5010; id++) {
        good &= run(b, id, prompt, 2, &sp, out, 1) == 1 && out[0] == 7;
        if (id % 3 != 0) {
            b->ops->seq_free(b, id);
        }
    }
    for (uint64_t id = 10; id < 5010; id += 3) {
        b->ops->seq_free(b, id);
    }
    ok(good, "5000 sequences come and go through the seq map");

    memset(&kv, 0, sizeof(kv));
    kv.block_size = 64;
    kv.budget_bytes = 64 * 1152 * 10;
    blocks = 0;
    int  rc = b->ops->kv_init(b, &kv, &blocks, &err);
    ok(rc == 0 && blocks == 10,
       "kv budget maps to blocks at 1152 bytes per token (%u)", blocks);

    b->ops->free(b);
}


static void
test_text(void)
{
    int                  n, m;
    size_t               n_ids, n_hi;
    int32_t              out[64], *ids, *hi;
    const char          *dir = getenv("KIMI_MODEL_DIR");
    kimi_err_t           err;
    kimi_backend_t      *b;
    kimi_tokenizer_t    *tok;
    kimi_shm_sampling_t  sp;

    if (dir == NULL) {
        dir = "../shared/kimi-k2";
    }

    if (kimi_tokenizer_load(&tok, dir, &err) != 0) {
        printf("ok %d # SKIP no tokenizer at %s (set KIMI_MODEL_DIR)\n",
               ++test_n, dir);
        return;
    }

    err.msg[0] = '\0';
    n = load(&b, "{\"replies\": [{\"match\": \"weather\", \"text\": \"Sunny."
             "\"}, {\"match\": \"tool\", \"text\": \"<|tool_calls_section_"
             "begin|>x\"}], \"default\": {\"text\": \"Hello there!\"}}", tok,
             &err);
    ok(n == 0, "text script with matches loads (%s)", err.msg);

    memset(&sp, 0, sizeof(sp));
    sp.max_tokens = 64;

    kimi_tokenize(tok, "What is the weather like?", 25, 0, &ids, &n_ids,
                  &err);
    kimi_tokenize(tok, "Sunny.", 6, 1, &hi, &n_hi, &err);
    n = run(b, 1, ids, (uint32_t) n_ids, &sp, out, (int) n_hi + 1);
    ok(n == (int) n_hi + 1 && memcmp(out, hi, n_hi * sizeof(int32_t)) == 0
       && out[n_hi] == 163586,
       "a prompt containing \"weather\" gets the matching reply");
    free(ids);
    free(hi);

    kimi_tokenize(tok, "use a tool", 10, 0, &ids, &n_ids, &err);
    n = run(b, 2, ids, (uint32_t) n_ids, &sp, out, 2);
    ok(n == 2 && out[0] == kimi_tokenizer_special_id(tok,
                               "<|tool_calls_section_begin|>"),
       "special-token text in a reply becomes its id");
    free(ids);

    kimi_tokenize(tok, "good morning", 12, 0, &ids, &n_ids, &err);
    kimi_tokenize(tok, "Hello there!", 12, 1, &hi, &n_hi, &err);
    m = run(b, 3, ids, (uint32_t) n_ids, &sp, out, (int) n_hi);
    ok(m == (int) n_hi && memcmp(out, hi, n_hi * sizeof(int32_t)) == 0,
       "no match: the default reply");
    free(ids);
    free(hi);

    b->ops->free(b);
    kimi_tokenizer_free(tok);
}


static void
test_factory(void)
{
    kimi_err_t             err;
    kimi_backend_t        *b;
    kimi_backend_params_t  p;

    memset(&p, 0, sizeof(p));
    p.name = "tpu";
    ok(kimi_backend_create(&b, &p, &err) == KIMI_EINVAL
       && strstr(err.msg, "unknown backend \"tpu\"") != NULL,
       "factory: unknown backend: %s", err.msg);

    p.name = "cuda";
    int rc = kimi_backend_create(&b, &p, &err);
#if defined(KIMI_HAVE_CUDA) && defined(KIMI_HAVE_CUDA_BACKEND)
    ok(rc == KIMI_EINVAL && strstr(err.msg, "model") != NULL,
       "factory: cuda without a model: %s", err.msg);
#elif defined(KIMI_HAVE_CUDA)
    ok(rc == KIMI_EUNSUPPORTED && strstr(err.msg, "cuda backend") != NULL,
       "factory: nvcc build without cuda backend sources: %s", err.msg);
#else
    ok(rc == KIMI_EUNSUPPORTED && strstr(err.msg, "without CUDA") != NULL,
       "factory: cuda in a build without CUDA: %s", err.msg);
#endif

    p.name = "cpu";
    ok(kimi_backend_create(&b, &p, &err) == KIMI_EINVAL,
       "factory: cpu without a model: %s", err.msg);
}


int
main(void)
{
    char  cmd[128];

    if (mkdtemp(tmpdir) == NULL) {
        printf("Bail out! mkdtemp\n");
        return 1;
    }

    test_script_errors();
    test_tokens();
    test_text();
    test_factory();

    printf("1..%d\n", test_n);

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "# could not remove %s\n", tmpdir);
    }

    return test_failed ? 1 : 0;
}
