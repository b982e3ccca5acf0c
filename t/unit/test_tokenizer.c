/*
 * Tokenizer, decoder and streaming detokenizer against tiktoken's ids
 * (t/fixtures/text/tokenizer.json, made by t/gen/gen_text_fixtures.py).
 *
 * Model files: $KIMI_MODEL_DIR, else ../shared/kimi-k2 from the repo root.
 */

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "text/kimi_text.h"

#include "tap.h"



static int
ids_equal(const int32_t *ids, size_t n, json_t *want)
{
    size_t  i;

    if (json_array_size(want) != n) {
        return 0;
    }

    for (i = 0; i < n; i++) {
        if (json_integer_value(json_array_get(want, i)) != ids[i]) {
            return 0;
        }
    }

    return 1;
}


static void
test_encode(kimi_tokenizer_t *tok, json_t *cases)
{
    int          rc, allow, round_ok;
    char        *text;
    size_t       i, n, len, n_round = 0, n_cases;
    json_t      *c;
    int32_t     *ids;
    kimi_err_t   err;
    const char  *s;

    n_cases = json_array_size(cases);

    json_array_foreach(cases, i, c) {
        s = json_string_value(json_object_get(c, "text"));
        len = json_string_length(json_object_get(c, "text"));
        allow = json_is_true(json_object_get(c, "allow_special"));

        rc = kimi_tokenize(tok, s, len, allow, &ids, &n, &err);
        ok(rc == 0 && ids_equal(ids, n, json_object_get(c, "ids")),
           "encode %zu (%s, %zu bytes, allow_special=%d) matches tiktoken",
           i, json_string_value(json_object_get(c, "kind")), len, allow);

        if (rc == 0) {
            /* decode(encode(x)) == x for every valid text */
            round_ok = kimi_detokenize(tok, ids, n, 0, &text, &len, &err) == 0
                       && len == json_string_length(json_object_get(c, "text"))
                       && memcmp(text, s, len) == 0;
            n_round += round_ok;
            if (round_ok || text != NULL) {
                free(text);
            }
            free(ids);
        }
    }

    ok(n_round == n_cases, "decode(encode(text)) == text for %zu/%zu cases",
       n_round, n_cases);
}


static void
test_decode(kimi_tokenizer_t *tok, json_t *cases)
{
    int            skip, rc, same_whole, same_stream;
    char          *text, *acc;
    size_t         i, k, n, len, acc_len, out_len;
    json_t        *c, *jids;
    int32_t       *ids;
    kimi_err_t     err;
    const char    *want, *out;
    kimi_detok_t  *d;

    json_array_foreach(cases, i, c) {
        jids = json_object_get(c, "ids");
        skip = json_is_true(json_object_get(c, "skip_special"));
        want = json_string_value(json_object_get(c, "text"));
        n = json_array_size(jids);

        ids = malloc((n + 1) * sizeof(int32_t));
        for (k = 0; k < n; k++) {
            ids[k] = (int32_t) json_integer_value(json_array_get(jids, k));
        }

        rc = kimi_detokenize(tok, ids, n, skip, &text, &len, &err);
        same_whole = rc == 0 && len == strlen(want)
                     && memcmp(text, want, len) == 0;
        ok(same_whole, "decode %zu (skip_special=%d) matches HF's text", i,
           skip);

        /* the streaming detokenizer, one id at a time, then flush */
        d = kimi_detok_new(tok, skip);
        acc = malloc(3 * 300 * (n + 1) + 1);
        acc_len = 0;
        same_stream = d != NULL;

        for (k = 0; same_stream && k < n; k++) {
            same_stream = kimi_detok_push(d, ids[k], &out, &out_len) == 0;
            memcpy(acc + acc_len, out, out_len);
            acc_len += out_len;
        }

        if (same_stream) {
            kimi_detok_flush(d, &out, &out_len);
            memcpy(acc + acc_len, out, out_len);
            acc_len += out_len;
        }

        ok(same_stream && acc_len == strlen(want)
           && memcmp(acc, want, acc_len) == 0,
           "streaming decode %zu (skip_special=%d) equals whole decode", i,
           skip);

        kimi_detok_free(d);
        free(acc);
        if (rc == 0) {
            free(text);
        }
        free(ids);
    }
}


static void
test_api(kimi_tokenizer_t *tok)
{
    int           rc;
    size_t        n, n2, len;
    int32_t      *ids, *ids2;
    kimi_err_t    err;
    kimi_span_t   span;
    const char   *b, *out;
    const char    bad[] = "ok\xff\xfe";
    const char    prompt[] = "<|im_user|>user<|im_middle|>hi<|im_end|>x"
                             "<|im_end|><|im_end|>";
    kimi_detok_t *d;

    ok(kimi_tokenizer_n_vocab(tok) == 163840, "vocabulary is 163840 ids");
    ok(kimi_tokenizer_eos(tok) == 163585, "eos is [EOS] = 163585");
    ok(kimi_tokenizer_bos(tok) == 163584, "bos is [BOS] = 163584");
    ok(kimi_tokenizer_special_id(tok, "<|im_end|>") == 163586,
       "<|im_end|> is 163586");
    ok(kimi_tokenizer_special_id(tok, "<|reserved_token_163589|>") == 163589,
       "unnamed slots are <|reserved_token_ID|> with the absolute id");
    ok(kimi_tokenizer_special_id(tok, "<|nope|>") == -1,
       "an unknown name is -1");
    ok(kimi_tokenizer_is_special(tok, 163586), "<|im_end|> is special");
    ok(!kimi_tokenizer_is_special(tok, 163595)
       && !kimi_tokenizer_is_special(tok, 163599),
       "tool-call markers are not special (they survive skip_special)");
    ok(!kimi_tokenizer_is_special(tok, 163600),
       "reserved tokens are not in the skip set");
    ok(!kimi_tokenizer_is_special(tok, 100), "a BPE rank is not special");

    b = kimi_token_bytes(tok, 19180, &len);
    ok(b != NULL && len == 5 && memcmp(b, "Hello", 5) == 0,
       "token 19180 is \"Hello\"");
    b = kimi_token_bytes(tok, 163597, &len);
    ok(b != NULL && len == 19 && memcmp(b, "<|tool_call_begin|>", 19) == 0,
       "a special id's bytes are its name");
    ok(kimi_token_bytes(tok, 163840, &len) == NULL
       && kimi_token_bytes(tok, -1, &len) == NULL,
       "ids outside the vocabulary have no bytes");

    rc = kimi_tokenize(tok, bad, sizeof(bad) - 1, 1, &ids, &n, &err);
    ok(rc == KIMI_EINVAL && strstr(err.msg, "UTF-8") != NULL,
       "invalid UTF-8 is KIMI_EINVAL: %s", err.msg);

    ids = (int32_t []) { 19180, 163840 };
    rc = kimi_detokenize(tok, ids, 2, 0, (char **) &b, &len, &err);
    ok(rc == KIMI_EINVAL, "decoding an id outside the vocabulary fails: %s",
       err.msg);

    d = kimi_detok_new(tok, 0);
    ok(kimi_detok_push(d, 200000, &out, &len) == KIMI_EINVAL,
       "the streaming decoder refuses an invalid id");
    kimi_detok_free(d);

    /* plain spans: the name inside "x<|im_end|>" (user data) is text */
    rc = kimi_tokenize(tok, prompt, sizeof(prompt) - 1, 1, &ids, &n, &err);
    span.off = 40;
    span.len = 11;          /* "x<|im_end|>" */
    rc |= kimi_tokenize_ex(tok, prompt, sizeof(prompt) - 1, 1, &span, 1,
                           &ids2, &n2, &err);
    ok(rc == 0 && n == 8 && ids[6] == 163586 && ids[7] == 163586,
       "both trailing names are specials without plain spans");
    ok(rc == 0 && n2 > n && ids2[n2 - 1] == 163586 && ids2[n2 - 2] != 163586
       && ids2[4] == 163586,
       "a name inside a plain span is encoded as text, others stay special");
    free(ids);
    free(ids2);
}


typedef struct {
    kimi_tokenizer_t  *tok;
    json_t            *cases;
    size_t             n_ok;
} worker_t;


static void *
worker(void *arg)
{
    worker_t    *w = arg;
    json_t      *c;
    size_t       i, n;
    int32_t     *ids;
    kimi_err_t   err;

    json_array_foreach(w->cases, i, c) {
        if (kimi_tokenize(w->tok, json_string_value(json_object_get(c, "text")),
                          json_string_length(json_object_get(c, "text")),
                          json_is_true(json_object_get(c, "allow_special")),
                          &ids, &n, &err) == 0)
        {
            w->n_ok += ids_equal(ids, n, json_object_get(c, "ids"));
            free(ids);
        }
    }
    return NULL;
}


/* One loaded tokenizer shared by threads, as the gateway's pool does. */
static void
test_threads(kimi_tokenizer_t *tok, json_t *cases)
{
    int        k, all = 1;
    worker_t   w[4];
    pthread_t  th[4];

    for (k = 0; k < 4; k++) {
        w[k].tok = tok;
        w[k].cases = cases;
        w[k].n_ok = 0;
        pthread_create(&th[k], NULL, worker, &w[k]);
    }
    for (k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        all &= w[k].n_ok == json_array_size(cases);
    }
    ok(all, "4 threads sharing one tokenizer all match tiktoken");
}


int
main(void)
{
    int                rc;
    json_t            *root;
    kimi_err_t         err;
    json_error_t       jerr;
    kimi_tokenizer_t  *tok;

    rc = kimi_tokenizer_load(&tok, tap_model_dir(), &err);
    if (rc != 0) {
        printf("1..0 # SKIP no tokenizer in %s: %s\n", tap_model_dir(), err.msg);
        return 0;
    }

    root = json_load_file("t/fixtures/text/tokenizer.json", 0, &jerr);
    if (root == NULL) {
        printf("Bail out! t/fixtures/text/tokenizer.json: %s\n", jerr.text);
        return 1;
    }

    {
        kimi_tokenizer_t  *none;

        rc = kimi_tokenizer_load(&none, "/nonexistent-model-dir", &err);
        ok(rc == KIMI_EIO && none == NULL
           && strstr(err.msg, "/nonexistent-model-dir/tiktoken.model"),
           "a missing model directory is an error naming the file: %s",
           err.msg);
    }

    {
        /* a rank out of order: refused with file and line */
        char               dir[] = "/tmp/kimi-tok-XXXXXX", path[256];
        FILE              *f;
        kimi_tokenizer_t  *bad;

        if (mkdtemp(dir) != NULL) {
            snprintf(path, sizeof(path), "%s/tiktoken.model", dir);
            f = fopen(path, "w");
            fputs("IQ== 0\nIg== 2\n", f);
            for (int k = 2; k < 300; k++) {
                fprintf(f, "IQ== %d\n", k);
            }
            fclose(f);
            rc = kimi_tokenizer_load(&bad, dir, &err);
            ok(rc == KIMI_EFORMAT && strstr(err.msg, ":2: rank must be 1"),
               "a malformed tiktoken.model names file and line: %s",
               err.msg);
            unlink(path);
            rmdir(dir);
        }
    }

    {
        /* a tokenizer.json of a kind not implemented (WordPiece): said so,
         * naming the file and the kind, not "no file" */
        char               dir[] = "/tmp/kimi-tok-XXXXXX", path[256];
        FILE              *f;
        kimi_tokenizer_t  *hf = NULL;

        if (mkdtemp(dir) != NULL) {
            snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
            f = fopen(path, "w");
            fputs("{\"model\": {\"type\": \"WordPiece\"}}\n", f);
            fclose(f);
            rc = kimi_tokenizer_load(&hf, dir, &err);
            ok(rc == KIMI_EUNSUPPORTED && hf == NULL
               && strstr(err.msg, "tokenizer.json") != NULL
               && strstr(err.msg, "WordPiece") != NULL,
               "a WordPiece tokenizer.json is refused as unsupported,"
               " naming it: %s", err.msg);
            unlink(path);
            rmdir(dir);
        }
    }

    ok(kimi_tool_format_of(tok) == KIMI_TOOL_FORMAT_KIMI_K2,
       "Kimi's tokenizer spells the kimi_k2 tool-call format");
    test_api(tok);
    test_encode(tok, json_object_get(root, "encode"));
    test_decode(tok, json_object_get(root, "decode"));
    test_threads(tok, json_object_get(root, "encode"));

    printf("1..%d\n", test_n);
    json_decref(root);
    kimi_tokenizer_free(tok);
    return test_failed != 0;
}
