/*
 * The tokenizer.json path (engine/text/hf_tokenizer.c) against Hugging
 * Face's tokenizers library: t/fixtures/text/hf-tiny/ is a small byte-level
 * BPE laid out and pre-tokenized as DeepSeek-V3's, cases.json its encodings
 * and decodings by the library (t/gen/gen_hf_tokenizer_fixtures.py).
 *
 * Also t/fixtures/text/hf-llama3style (Llama-3's split regex, ignore_merges,
 * added tokens with lstrip / rstrip), hf-splits (every Split behavior,
 * String patterns, invert, Digits, script classes) and the SentencePiece-
 * style BPE over characters with byte_fallback: hf-spm (Llama-2's Prepend +
 * Replace normalizer, Strip decoder), hf-metaspace (Mistral-v0.3's
 * Metaspace, prepend_scheme first, its decoder) and hf-metasplit
 * (Metaspace always with split).
 * KIMI_HF_TOKENIZER_DIR / KIMI_HF_CASES point it at another tokenizer and
 * its cases instead (e.g. DeepSeek's real one: the generator's --real;
 * KIMI_HF_DEEPSEEK=1 for its layout's checks).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "text/kimi_text.h"

#include "tap.h"

#define diag(...)  (printf("# "), printf(__VA_ARGS__), printf("\n"))


static int
done_testing(void)
{
    printf("1..%d\n", test_n);
    return test_failed != 0;
}


static int32_t *
ids_of(json_t *a, size_t *n)
{
    size_t    i;
    int32_t  *ids;

    *n = json_array_size(a);
    ids = malloc((*n + 1) * sizeof(int32_t));
    for (i = 0; i < *n; i++) {
        ids[i] = (int32_t) json_integer_value(json_array_get(a, i));
    }

    return ids;
}


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
    int          rc, same;
    char        *text;
    size_t       i, n, len, n_same = 0, n_round = 0, n_cases, tlen;
    json_t      *c;
    int32_t     *ids;
    kimi_err_t   err;
    const char  *s;

    n_cases = json_array_size(cases);

    json_array_foreach(cases, i, c) {
        s = json_string_value(json_object_get(c, "text"));
        tlen = json_string_length(json_object_get(c, "text"));

        rc = kimi_tokenize(tok, s, tlen, 1, &ids, &n, &err);
        same = rc == 0 && ids_equal(ids, n, json_object_get(c, "ids"));
        n_same += same;
        if (!same) {
            diag("encode %zu differs (%zu bytes): %.60s", i, tlen, s);
        }

        if (rc == 0) {
            /* byte-level BPE with no normalizer: decode(encode(x)) == x */
            if (kimi_detokenize(tok, ids, n, 0, &text, &len, &err) == 0) {
                n_round += len == tlen && memcmp(text, s, len) == 0;
                free(text);
            }
            free(ids);
        }
    }

    ok(n_cases > 0 && n_same == n_cases,
       "encode: %zu/%zu texts give the ids of Hugging Face's tokenizers",
       n_same, n_cases);
    /* not a property of every tokenizer.json (lstrip / rstrip and Removed
     * drop text; Hugging Face's own round trip fails the same texts) */
    diag("decode(encode(text)) == text for %zu/%zu", n_round, n_cases);
}


/* sp: a SentencePiece-style decoder, whose whole decode drops the leading
 * space a stream keeps (it continues a prompt), and whose invalid byte runs
 * tokenizers turns into one U+FFFD a byte where a stream, emitting as the
 * bytes come, replaces maximal invalid subparts. */
static void
test_decode(kimi_tokenizer_t *tok, json_t *cases, int sp)
{
    int            skip, rc, whole, stream;
    size_t         n_fffd = 0;
    char          *text, *acc;
    size_t         i, k, n, len, acc_len, out_len, n_whole = 0, n_stream = 0;
    json_t        *c;
    int32_t       *ids;
    kimi_err_t     err;
    const char    *want, *out;
    size_t         want_len;
    kimi_detok_t  *d;

    json_array_foreach(cases, i, c) {
        ids = ids_of(json_object_get(c, "ids"), &n);
        skip = json_is_true(json_object_get(c, "skip_special"));
        want = json_string_value(json_object_get(c, "text"));
        want_len = json_string_length(json_object_get(c, "text"));

        rc = kimi_detokenize(tok, ids, n, skip, &text, &len, &err);
        whole = rc == 0 && len == want_len && memcmp(text, want, len) == 0;
        n_whole += whole;
        if (!whole) {
            diag("decode %zu (skip_special=%d): want \"%s\", got \"%.*s\"", i,
                 skip, want, rc == 0 ? (int) len : 0, rc == 0 ? text : "");
        }
        if (rc == 0) {
            free(text);
        }

        d = kimi_detok_new(tok, skip);
        acc = malloc(3 * 300 * (n + 1) + 1);
        acc_len = 0;
        stream = d != NULL;
        for (k = 0; stream && k < n; k++) {
            stream = kimi_detok_push(d, ids[k], &out, &out_len) == 0;
            memcpy(acc + acc_len, out, out_len);
            acc_len += out_len;
        }
        if (stream) {
            kimi_detok_flush(d, &out, &out_len);
            memcpy(acc + acc_len, out, out_len);
            acc_len += out_len;
        }
        if (stream && sp && acc_len == want_len + 1 && acc[0] == ' '
            && memcmp(acc + 1, want, want_len) == 0)
        {
            n_stream++;                 /* the space a whole decode drops */
        } else if (stream && sp && strstr(want, "\xef\xbf\xbd") != NULL) {
            n_stream++;
            n_fffd++;
        } else {
            n_stream += stream && acc_len == want_len
                        && memcmp(acc, want, acc_len) == 0;
        }

        kimi_detok_free(d);
        free(acc);
        free(ids);
    }

    ok(n_whole == json_array_size(cases),
       "decode: %zu/%zu id lists give Hugging Face's text", n_whole,
       json_array_size(cases));
    if (n_fffd > 0) {
        diag("%zu id lists with invalid byte runs: the stream replaces "
             "maximal subparts, not each byte", n_fffd);
    }
    ok(n_stream == json_array_size(cases),
       "streaming decode equals it for %zu/%zu", n_stream,
       json_array_size(cases));
}


static void
test_specials(kimi_tokenizer_t *tok, json_t *sp)
{
    int          all_ids = 1, all_flags = 1;
    size_t       n_sp = 0;
    json_t      *v;
    const char  *name;

    /* {"name": {"id": N, "special": bool}, ...} or {"name": N} */
    json_object_foreach(sp, name, v) {
        json_t  *jid = json_is_object(v) ? json_object_get(v, "id") : v;
        json_t  *fl = json_is_object(v) ? json_object_get(v, "special") : NULL;
        int32_t  id = (int32_t) json_integer_value(jid);

        n_sp++;
        if (kimi_tokenizer_special_id(tok, name) != id) {
            all_ids = 0;
            diag("added token %s: id %d, want %d", name,
                 kimi_tokenizer_special_id(tok, name), id);
        }
        if (fl != NULL && json_is_true(fl)
            && !kimi_tokenizer_is_special(tok, id))
        {
            all_flags = 0;
            diag("added token %s is special but not in the skip set", name);
        }
    }

    ok(n_sp > 0 && all_ids, "%zu added tokens found by name with their ids",
       n_sp);
    ok(all_flags, "special added tokens are in skip_special's set");
}


/* A copy of the tokenizer with one JSON edit must be refused, naming it. */
static void
test_refused(const char *dir, const char *path, const char *value,
    const char *why)
{
    int                rc;
    char               tmp[] = "/tmp/kimi-hf-XXXXXX", p[4200];
    json_t            *root, *v, *at;
    kimi_err_t         err;
    json_error_t       jerr;
    kimi_tokenizer_t  *tok = NULL;
    char               key[64], *dot;

    snprintf(p, sizeof(p), "%s/tokenizer.json", dir);
    root = json_load_file(p, 0, &jerr);
    v = json_loads(value, JSON_DECODE_ANY, &jerr);
    if (mkdtemp(tmp) == NULL || root == NULL || v == NULL) {
        ok(0, "refused %s: setup", why);
        return;
    }

    /* path: "a" or "a.b" */
    snprintf(key, sizeof(key), "%s", path);
    dot = strchr(key, '.');
    at = root;
    if (dot != NULL) {
        *dot = '\0';
        at = json_object_get(root, key);
        memmove(key, dot + 1, strlen(dot + 1) + 1);
    }
    json_object_set_new(at, key, v);

    snprintf(p, sizeof(p), "%s/tokenizer.json", tmp);
    json_dump_file(root, p, JSON_COMPACT);
    json_decref(root);

    rc = kimi_tokenizer_load(&tok, tmp, &err);
    ok(rc != 0 && strstr(err.msg, why) != NULL, "%s = %s is refused: %s",
       path, value, rc != 0 ? err.msg : "(loaded)");
    kimi_tokenizer_free(tok);

    unlink(p);
    rmdir(tmp);
}


/* Everything a cases.json checks, for one tokenizer; layout: "deepseek"
 * also checks what hf-tiny's DeepSeek layout implies. */
static void
test_dir(const char *dir, const char *cases_path, int deepseek)
{
    int                rc;
    size_t             n;
    json_t            *cases;
    int32_t           *ids;
    kimi_err_t         err;
    json_error_t       jerr;
    kimi_tokenizer_t  *tok;
    json_t            *cfg;
    char               p[4200];

    rc = kimi_tokenizer_load(&tok, dir, &err);
    ok(rc == 0, "tokenizer.json of %s loads%s%s", dir, rc ? ": " : "",
       rc ? err.msg : "");
    if (rc != 0) {
        return;
    }

    cases = json_load_file(cases_path, JSON_ALLOW_NUL, &jerr);
    ok(cases != NULL, "cases %s load", cases_path);
    if (cases == NULL) {
        kimi_tokenizer_free(tok);
        return;
    }

    test_encode(tok, json_object_get(cases, "encode"));
    test_decode(tok, json_object_get(cases, "decode"),
                strstr(dir, "hf-spm") != NULL || strstr(dir, "hf-meta") != NULL);
    test_specials(tok, json_object_get(cases, "specials"));

    /* bos/eos from tokenizer_config.json; add_bos_token -> the prefix */
    ok(kimi_tokenizer_bos(tok) >= 0 && kimi_tokenizer_eos(tok) >= 0
       && kimi_tokenizer_bos(tok) != kimi_tokenizer_eos(tok),
       "%s: bos %d and eos %d from tokenizer_config.json", dir,
       kimi_tokenizer_bos(tok), kimi_tokenizer_eos(tok));
    snprintf(p, sizeof(p), "%s/tokenizer_config.json", dir);
    cfg = json_load_file(p, JSON_DECODE_INT_AS_REAL, &jerr);
    if (cfg != NULL) {
        int  add = json_is_true(json_object_get(cfg, "add_bos_token"));

        ok(kimi_tokenizer_prompt_prefix(tok)
           == (add ? kimi_tokenizer_bos(tok) : -1),
           "%s: add_bos_token %s: plain prompts %s", dir,
           add ? "true" : "false", add ? "start with bos" : "get nothing");
        json_decref(cfg);
    }

    /* the tool-call format its added tokens spell */
    ok(kimi_tool_format_of(tok) == (deepseek ? KIMI_TOOL_FORMAT_DEEPSEEK_V3
                                             : KIMI_TOOL_FORMAT_KIMI_K2),
       "%s: its tool-call format is %s (kimi_tool_call_parser auto)", dir,
       deepseek ? "deepseek_v3" : "kimi_k2, the default");

    if (deepseek) {
        /* allow_special = 0: an added token's name is text */
        rc = kimi_tokenize(tok, "<｜User｜>", strlen("<｜User｜>"), 0, &ids,
                           &n, &err);
        ok(rc == 0 && n > 1, "without allow_special an added name is text "
           "(%zu ids)", n);
        if (rc == 0) {
            free(ids);
        }
    }

    /* ids past the vocabulary are an error, not a crash */
    {
        char     *text;
        size_t    len;
        int32_t   bad = (int32_t) kimi_tokenizer_n_vocab(tok);

        ok(kimi_detokenize(tok, &bad, 1, 0, &text, &len, &err) != 0,
           "%s: id %d (the vocabulary's size) is refused", dir, bad);
    }

    kimi_tokenizer_free(tok);
    json_decref(cases);
}


int
main(void)
{
    const char  *e, *c;
    char         cases_path[4200];
    size_t       i;
    static const char *const  dirs[] = {
        "t/fixtures/text/hf-tiny",          /* DeepSeek-V3's layout */
        "t/fixtures/text/hf-llama3style",   /* ignore_merges, lstrip/rstrip */
        "t/fixtures/text/hf-splits",        /* every Split behavior, Digits */
        "t/fixtures/text/hf-spm",           /* Llama-2: Prepend + Replace, byte_fallback */
        "t/fixtures/text/hf-metaspace",     /* Mistral-v0.3: Metaspace first */
        "t/fixtures/text/hf-metasplit",     /* Metaspace always, split */
    };

    e = getenv("KIMI_HF_TOKENIZER_DIR");
    if (e != NULL) {
        c = getenv("KIMI_HF_CASES");
        snprintf(cases_path, sizeof(cases_path), "%s", c ? c : "");
        if (c == NULL) {
            snprintf(cases_path, sizeof(cases_path), "%s/cases.json", e);
        }
        test_dir(e, cases_path, getenv("KIMI_HF_DEEPSEEK") != NULL);
        return done_testing();
    }

    for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(cases_path, sizeof(cases_path), "%s/cases.json", dirs[i]);
        test_dir(dirs[i], cases_path, i == 0);
    }

    test_refused(dirs[0], "normalizer", "{\"type\": \"NFKC\"}", "normalizer");
    test_refused(dirs[0], "pre_tokenizer", "{\"type\": \"Metaspace\"}",
                 "Metaspace");
    test_refused(dirs[0], "decoder", "{\"type\": \"WordPiece\"}", "decoder");
    test_refused(dirs[0], "model.byte_fallback", "true", "byte_fallback");
    /* SentencePiece-style: only its own normalizer, decoder and layout */
    test_refused(dirs[3], "normalizer", "{\"type\": \"Replace\", \"pattern\": "
                 "{\"String\": \"a\"}, \"content\": \"b\"}", "normalizer");
    test_refused(dirs[3], "decoder", "{\"type\": \"ByteLevel\"}", "decoder");
    test_refused(dirs[3], "normalizer", "null", "SentencePiece's layout");
    test_refused(dirs[4], "pre_tokenizer", "{\"type\": \"Metaspace\", "
                 "\"replacement\": \"_\"}", "replacement");
    test_refused(dirs[4], "pre_tokenizer", "{\"type\": \"Sequence\", "
                 "\"pretokenizers\": [{\"type\": \"Digits\"}]}",
                 "SentencePiece's layout");
    test_refused(dirs[0], "model.type", "\"Unigram\"", "Unigram");
    test_refused(dirs[0], "model.merges", "[\"zzzq qqqz\"]", "merge 0");

    return done_testing();
}
