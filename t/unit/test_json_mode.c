/*
 * JSON mode: the JSON-object recogniser (engine/sample/json_mode.c) on
 * valid and invalid texts and every prefix, then the sampler's mask with
 * Kimi's real tokenizer (strings hold valid UTF-8 only: a stray or
 * overlong byte is refused): random rows sampled under response_format
 * json_object always extend a valid prefix, and end with an eos id once
 * the object is complete.  Then JSON schemas (engine/text/json_schema.c):
 * what compiles and what is refused (naming the keyword), texts a schema
 * accepts and refuses at every prefix, the engine's check of corrupted
 * programs, sampling under a schema, and a schema that never ends.
 */

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sample/json_mode.h"
#include "sample/sample.h"
#include "text/kimi_text.h"

#include "tap.h"



/* 1 if every prefix of text is accepted (under the schema program prog,
 * or JSON mode when NULL); *done: complete at the end */
static int
accepts(const int32_t *prog, const char *text, int *done)
{
    kimi_json_state_t  s;

    if (prog != NULL) {
        kimi_json_init_schema(&s, prog);
    } else {
        kimi_json_init(&s);
    }
    for (size_t i = 0; text[i] != '\0'; i++) {
        if (kimi_json_feed(&s, text + i, 1) != 0) {
            return 0;
        }
    }
    *done = kimi_json_done(&s);
    return 1;
}


/* code points of a UTF-8 string */
static size_t
kimi_utf8_count(const char *p)
{
    size_t  n = 0;

    for (; *p != '\0'; p++) {
        n += ((unsigned char) *p & 0xc0) != 0x80;
    }
    return n;
}


/* temperature 1, nothing else: the mask alone shapes the draw */
static void
plain_sampling(kimi_shm_sampling_t *sp, uint32_t max_tokens)
{
    memset(sp, 0, sizeof(*sp));
    sp->temperature = 1.0f;
    sp->top_p = 1.0f;
    sp->repetition_penalty = 1.0f;
    sp->max_tokens = max_tokens;
}


/* one draw for a request of n - 1 generated tokens after a 1-token prompt */
static int
draw_next(kimi_sampler_t *smp, const float *row, const int32_t *seq,
    uint32_t n, const kimi_shm_sampling_t *sp, kimi_rng_t *draw,
    const int32_t *eos, const kimi_tokenizer_t *tok, const int32_t *words,
    uint32_t n_words, kimi_sample_out_t *out, double *seconds)
{
    kimi_sample_req_t  req;
    kimi_err_t         err;
    struct timespec    t0, t1;
    int                rc;

    memset(&req, 0, sizeof(req));
    req.sampling = sp;
    req.tokens = seq;
    req.n_prompt = 1;
    req.n_output = n - 1;
    req.rng = draw;
    req.eos_ids = eos;
    req.n_eos = 2;
    req.tokenizer = tok;
    req.guided = words;
    req.n_guided = n_words;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = kimi_sampler_sample(smp, row, &req, out, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (seconds != NULL) {
        *seconds += (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    }
    return rc;
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
        "{\"a\": \"\xe4\xb8\xad\xf0\x9f\x98\x80\xed\x9f\xbf\xf4\x8f\xbf\xbf\"}",
    };
    static const char  *invalid[] = {
        "{\"a\":\"\x80\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}", "{\"a\":\"\xe4\xb8\"}", "{\"\xff\":1}",
        "[]", "1", "\"s\"", "{\"a\"}", "{a:1}", "{\"a\":01}", "{\"a\":1,}",
        "{\"a\":tru }", "{\"a\":\"\x01\"}", "{\"a\":1}x", "{,}", "{\"a\":-}",
        "{\"a\":1.}", "{\"a\":1e}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12g4\"}",
        "{\"a\":[1 2]}", "{\"a\":]", "{}}", "{\"a\":1]",
    };
    char   deep[80];
    int    done;
    size_t i;

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        ok(accepts(NULL, valid[i], &done) && done, "valid and complete: %s",
           valid[i]);
    }
    ok(accepts(NULL, "{\"a\": [1, {\"b\": tr", &done) && !done,
       "a prefix is accepted, not complete");
    ok(accepts(NULL, "{\"a\": 12", &done) && !done,
       "a number may still grow at the end");
    ok(accepts(NULL, "{\"a\": 1                }", &done) && done,
       "16 whitespace bytes in a row");
    ok(!accepts(NULL, "{\"a\": 1                 }", &done),
       "17 are refused (no endless whitespace)");
    ok(accepts(NULL, "{\"a\": \"                                  \"}", &done)
       && done, "inside a string any number of spaces");
    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        ok(!accepts(NULL, invalid[i], &done), "refused: %s", invalid[i]);
    }

    /* KIMI_JSON_MAX_DEPTH containers in all, the top object included */
    memset(deep, 0, sizeof(deep));
    deep[0] = '{';
    strcat(deep, "\"a\":");
    for (i = 1; i < KIMI_JSON_MAX_DEPTH; i++) {
        strcat(deep, "[");
    }
    ok(accepts(NULL, deep, &done), "%d levels of nesting", KIMI_JSON_MAX_DEPTH);
    strcat(deep, "[");
    ok(!accepts(NULL, deep, &done), "one more is refused");
}


static void
test_sampler(void)
{
    kimi_tokenizer_t   *tok;
    kimi_sampler_t     *smp;
    kimi_err_t          err;
    kimi_shm_sampling_t sp;
    kimi_sample_out_t   out;
    kimi_rng_t          rng, draw;
    kimi_json_state_t   st;
    float              *row;
    int32_t             seq[256], eos[2];
    uint32_t            vocab, n = 0, bad = 0, ended = 0, runs = 0, calls = 0;
    double              t_sample = 0;
    const char         *b;
    size_t              len;

    if (kimi_tokenizer_load(&tok, tap_model_dir(), &err) != 0) {
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
        plain_sampling(&sp, 200);
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
            if (draw_next(smp, row, seq, n, &sp, &draw, eos, tok, NULL, 0, &out,
                          &t_sample) != 0)
            {
                bad++;
                break;
            }
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


/* ---- structured output: schema programs ---------------------------------- */

static const char  *person_schema =
    "{\"type\": \"object\", \"title\": \"p\","
    " \"properties\": {"
    "   \"name\": {\"type\": \"string\", \"description\": \"x\", \"maxLength\": 5},"
    "   \"age\": {\"type\": \"integer\"},"
    "   \"score\": {\"type\": [\"number\", \"null\"]},"
    "   \"tags\": {\"type\": \"array\", \"items\": {\"enum\": [\"a\", \"ab\", 7, true, null]},"
    "              \"minItems\": 1, \"maxItems\": 3},"
    "   \"pet\": {\"anyOf\": [{\"$ref\": \"#/$defs/pet\"}, {\"type\": \"null\"}]},"
    "   \"any\": {},"
    "   \"kind\": {\"const\": \"k\\\"q\"}"
    " },"
    " \"required\": [\"name\", \"age\", \"tags\"],"
    " \"additionalProperties\": false,"
    " \"$defs\": {\"pet\": {\"type\": \"object\", \"properties\": {"
    "   \"species\": {\"type\": \"string\"},"
    "   \"friend\": {\"$ref\": \"#/$defs/pet\"}},"
    "   \"required\": [\"species\"]}}}";


static int32_t *
compile(const char *text, size_t *n, char *err, size_t errlen)
{
    json_error_t  je;
    json_t       *j = json_loads(text, JSON_DECODE_ANY, &je);
    int32_t      *prog = NULL;

    if (j == NULL) {
        snprintf(err, errlen, "bad test JSON: %s", je.text);
        return NULL;
    }
    if (kimi_json_schema_compile(j, &prog, n, err, errlen) != 0) {
        prog = NULL;
    }
    json_decref(j);
    return prog;
}


static void
test_schema_compile(void)
{
    static const struct { const char *schema, *err; } bad[] = {
        { "{\"type\": \"string\"}", "top level must be an object or an array" },
        { "{\"anyOf\": [{\"type\": \"object\"}, {\"type\": \"string\"}]}", "top level must be an object" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"array\", \"uniqueItems\": true}}}",
          "\"uniqueItems\" is supported on arrays of enum or const values" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"string\", \"pattern\": \"a(?=b)\"}}",
          "\"pattern\" cannot be enforced: lookaround" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"string\", \"pattern\": \"^a\\\"b$\"}}",
          "\"pattern\" cannot be enforced: the pattern matches nothing" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"string\", \"pattern\": \"^a$\", \"format\": \"date\"}}",
          "\"pattern\" beside \"format\"" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"minimum\": 1}}}", "\"minimum\" is supported beside" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"number\", \"maximum\": 0.0000000001}}}", "more than 9 decimals" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\", \"minimum\": 3, \"exclusiveMaximum\": 3}}}", "no integer" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"object\", \"dependentRequired\": {\"a\": [\"b\"]}}}}", "\"dependentRequired\" is not supported" },
        { "{\"type\": \"object\", \"required\": [\"b\"], \"properties\": {\"a\": {}}}",
          "names no property" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"oneOf\": [{\"type\": \"integer\"}, {\"type\": \"number\"}]}}}",
          "different character" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"anyOf\": [{\"type\": \"string\", \"maxLength\": 3},"
          " {\"type\": \"string\", \"minLength\": 5}]}}}", "different character" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"$ref\": \"#/$defs/none\"}}}", "$ref" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"$ref\": \"http://x/y\"}}}", "$ref" },
        { "{\"type\": \"array\", \"prefixItems\": [{}], \"items\": false, \"minItems\": 2}",
          "above the tuple's 1 items" },
        { "{\"type\": \"array\", \"minItems\": 3, \"maxItems\": 2}", "below" },
        { "{\"type\": \"object\", \"additionalProperties\": \"string\"}", "must be true, false or a schema" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"enum\": [{\"x\": 1}]}}}", "enum" },
        { "{\"$defs\": {\"a\": {\"$ref\": \"#/$defs/b\"}, \"b\": {\"$ref\": \"#/$defs/a\"}}, \"$ref\": \"#/$defs/a\"}",
          "deeper than 64" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"date\"}}}", "unknown \"type\"" },
        { "false", "an object or true" },
    };
    char      err[512];
    size_t    n;
    int32_t  *prog;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        prog = compile(bad[i].schema, &n, err, sizeof(err));
        ok(prog == NULL && strstr(err, bad[i].err) != NULL,
           "schema %zu refused, naming what: %s", i, prog ? "(compiled)" : err);
        free(prog);
    }

    prog = compile(person_schema, &n, err, sizeof(err));
    ok(prog != NULL, "a schema with every supported keyword compiles (%zu words)%s%s",
       n, prog ? "" : ": ", prog ? "" : err);
    ok(prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0,
       "... and passes the engine's check");
    free(prog);
}


static void
test_schema_grammar(void)
{
    static const char  *valid[] = {
        "{\"name\":\"x\",\"age\":3,\"tags\":[\"a\"]}",
        " { \"tags\" : [ \"ab\" , 7, true ] , \"age\" : -12, \"name\": \"\\u00e9\\\"\" } ",
        "{\"name\":\"\",\"age\":0,\"tags\":[null],\"score\":null}",
        "{\"name\":\"n\",\"age\":1,\"tags\":[7],\"score\":-0.5e+3,\"pet\":null}",
        "{\"name\":\"n\",\"age\":1,\"tags\":[\"a\"],\"pet\":{\"species\":\"cat\","
        "\"friend\":{\"friend\":{\"species\":\"x\"},\"species\":\"dog\"}}}",
        "{\"name\":\"n\",\"age\":1,\"tags\":[\"a\"],\"any\":[{\"q\":[1,{}]},\"s\"],\"kind\":\"k\\\"q\"}",
    };
    static const char  *invalid[] = {
        "[]",                                              /* not the root type */
        "{\"name\":\"x\",\"age\":3}",                      /* tags required */
        "{\"name\":\"x\",\"age\":3,\"tags\":[]}",          /* minItems 1 */
        "{\"name\":\"x\",\"age\":3,\"tags\":[7,7,7,7]}",   /* maxItems 3 */
        "{\"name\":\"x\",\"age\":3.5,\"tags\":[7]}",       /* integer */
        "{\"name\":\"x\",\"age\":1e3,\"tags\":[7]}",
        "{\"name\":1,\"age\":3,\"tags\":[7]}",             /* string */
        "{\"name\":\"x\",\"name\":\"y\"}",                 /* twice */
        "{\"nam\":\"x\"}",                                 /* unknown key */
        "{\"names\":\"x\"}",
        "{\"other\":1}",
        "{\"name\":\"x\",\"age\":3,\"tags\":[\"b\"]}",     /* not in the enum */
        "{\"name\":\"x\",\"age\":3,\"tags\":[\"abc\"]}",
        "{\"name\":\"x\",\"age\":3,\"tags\":[70]}",
        "{\"name\":\"x\",\"age\":3,\"tags\":[7],\"score\":\"1\"}",
        "{\"name\":\"x\",\"age\":3,\"tags\":[7],\"pet\":{}}",   /* species */
        "{\"name\":\"x\",\"age\":3,\"tags\":[7],\"pet\":[]}",
        "{\"name\":\"x\",\"age\":3,\"tags\":[7],\"kind\":\"k\"}",
        "{\"name\":\"x\",\"age\":3,\"tags\":[7]}{",
    };
    char      err[512];
    size_t    n;
    int       done, bad = 0;
    int32_t  *prog = compile(person_schema, &n, err, sizeof(err));

    if (prog == NULL) {
        ok(0, "schema compiles: %s", err);
        return;
    }
    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        int  a = accepts(prog, valid[i], &done);

        ok(a && done, "schema accepts valid text %zu and every prefix", i);
    }
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        int  a = accepts(prog, invalid[i], &done);

        ok(!(a && done), "schema refuses invalid text %zu", i);
    }
    /* "pattern": ECMA semantics (found anywhere unless anchored), over
     * the raw text, no escapes; lengths still bind */
    {
        static const struct { int prog; const char *text; int ok; } cases[] = {
            { 3, "[\"AB-123\",null,\"ZZ-0\"]", 1 },   /* ^[A-Z]{2}-[0-9]+$ */
            { 3, "[\"ab-123\"]", 0 },
            { 3, "[\"AB-\"]", 0 },
            { 3, "[\"AB-12x\"]", 0 },
            { 3, "[\"AB\\u002d1\"]", 0 },   /* an escape: never under a pattern */
            { 4, "[\"x9\",\"7\"]", 1 },       /* a digit anywhere: unanchored */
            { 4, "[\"\xc3\xa9t\xc3\xa9 2\"]", 1 },
            { 4, "[\"xyz\"]", 0 },
            { 4, "[\"123456789\"]", 0 },      /* maxLength 8 */
        };
        char      e3[256];
        size_t    n3;
        int32_t  *p3 = compile("{\"type\": \"array\", \"items\": {\"anyOf\": ["
                               "{\"type\": \"string\", \"pattern\": \"^[A-Z]{2}-[0-9]+$\"},"
                               "{\"type\": \"null\"}]}}", &n3, e3, sizeof(e3));
        int32_t  *p4 = compile("{\"type\": \"array\", \"items\": {\"type\": \"string\","
                               " \"pattern\": \"[0-9]\", \"maxLength\": 8}}",
                               &n3, e3, sizeof(e3));
        int       good = p3 != NULL && p4 != NULL;

        for (size_t i = 0; good && i < sizeof(cases) / sizeof(cases[0]); i++) {
            int  a = accepts(cases[i].prog == 3 ? p3 : p4, cases[i].text, &done)
                     && done;

            good &= a == cases[i].ok;
            if (a != cases[i].ok) {
                printf("# pattern case %zu (%s): %d\n", i, cases[i].text, a);
            }
        }
        ok(good, "string patterns: anchored and not, no escapes, with"
           " maxLength, inside anyOf (%s)", p3 == NULL || p4 == NULL ? e3 : "ok");
        free(p3);
        free(p4);
    }
    /* an anyOf whose alternatives overlap where one takes all the other
     * does (integer beside number, any string beside a constrained one or
     * string values, a repeated schema): the same union without it */
    {
        char      e5[256];
        size_t    n5;
        int32_t  *p5 = compile("{\"type\": \"array\", \"items\": {\"anyOf\": ["
                               "{\"type\": \"integer\"}, {\"type\": \"number\"},"
                               " {\"type\": \"string\", \"format\": \"date\"}, {\"enum\":"
                               " [\"a\", \"b\"]}, {\"type\": \"string\"}, {\"const\": null},"
                               " {\"type\": \"null\"}, {\"type\": \"null\"}]}}",
                               &n5, e5, sizeof(e5));

        ok(p5 != NULL && kimi_json_schema_check(p5, n5, e5, sizeof(e5)) == 0
           && accepts(p5, "[1, -2.5e3, \"x y\", \"2024-13-99\", null, 7]", &done)
           && done && !accepts(p5, "[true]", &done),
           "anyOf of overlapping alternatives, the covered ones dropped (%s)",
           p5 == NULL ? e5 : "ok");
        free(p5);
    }
    /* string lengths in code points: an escape and a 2-byte UTF-8
     * character count one each */
    {
        char      e2[128];
        size_t    n2;
        int32_t  *p2 = compile("{\"type\": \"array\", \"items\": {\"type\":"
                               " \"string\", \"minLength\": 2, \"maxLength\": 3}}",
                               &n2, e2, sizeof(e2));
        int       good = p2 != NULL;

        good &= accepts(p2, "[\"ab\",\"abc\",\"\xc3\xa9\\u00e9\",\"\\n\\t\\\"\"]", &done) && done;
        good &= !(accepts(p2, "[\"a\"]", &done) && done);
        good &= !accepts(p2, "[\"abcd", &done);
        good &= !accepts(p2, "[\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", &done);
        good &= !(accepts(p2, "[\"\\u00e9\"]", &done) && done);
        ok(good, "minLength 2 / maxLength 3 counted in code points (escapes and"
           " UTF-8 characters one each)");
        free(p2);
    }

    /* integer bounds: every prefix must still reach a value in range */
    {
        char      e4[256];
        size_t    n4;
        int32_t  *p4 = compile("{\"type\": \"array\", \"items\": {\"anyOf\": ["
                               "{\"type\": \"integer\", \"minimum\": -15, \"exclusiveMaximum\": 120.5},"
                               " {\"type\": \"null\"}]}}", &n4, e4, sizeof(e4));
        int32_t  *p5 = compile("{\"type\": \"array\", \"items\": {\"type\":"
                               " \"integer\", \"minimum\": 1000}}", &n4, e4, sizeof(e4));
        int       good = p4 != NULL && p5 != NULL;

        good &= accepts(p4, "[0,-15,120,7,-1,null,99,100,-9]", &done) && done;
        good &= !(accepts(p4, "[121]", &done) && done);
        good &= !accepts(p4, "[-16", &done);
        good &= !accepts(p4, "[-150", &done);
        good &= !accepts(p4, "[1200", &done);
        good &= !accepts(p4, "[-0.5", &done);
        good &= !accepts(p4, "[00", &done);
        good &= accepts(p5, "[1000,99999999999]", &done) && done;
        good &= !(accepts(p5, "[999]", &done) && done);
        good &= !accepts(p5, "[-", &done) && !accepts(p5, "[0", &done);
        good &= accepts(p5, "[9", &done) && !done;   /* 9000 is still ahead */
        ok(good, "integer bounds: [-15, 120] and >= 1000 held at every digit"
           " (a prefix that can no longer land in range is refused)%s%s",
           good ? "" : ": ", good ? "" : e4);
        free(p4);
        free(p5);
    }

    /* string formats: the shape of RFC 3339 dates and times, uuids */
    {
        char      e3[128];
        size_t    n3;
        int32_t  *p3 = compile("{\"type\": \"object\", \"properties\": {"
                               " \"d\": {\"type\": \"string\", \"format\": \"date\"},"
                               " \"t\": {\"type\": \"string\", \"format\": \"time\"},"
                               " \"dt\": {\"type\": \"string\", \"format\": \"date-time\"},"
                               " \"u\": {\"type\": \"string\", \"format\": \"uuid\"}}}",
                               &n3, e3, sizeof(e3));
        static const char  *fok[] = {
            "{\"d\":\"2024-02-29\",\"t\":\"23:59:59Z\"}",
            "{\"dt\":\"1999-12-31T00:00:00.123456+05:30\"}",
            "{\"dt\":\"2000-01-01T12:30:00-08:00\",\"d\":\"0001-10-31\"}",
            "{\"u\":\"123e4567-e89b-12d3-A456-426614174000\"}",
            "{\"d\":\"2000-02-29\",\"dt\":\"2024-02-29T00:00:00Z\"}",
            "{\"d\":\"0001-12-31\"}",
        };
        static const char  *fbad[] = {
            "{\"d\":\"2024-13-01\"}", "{\"d\":\"2024-00-01\"}",
            "{\"d\":\"2024-01-32\"}", "{\"d\":\"2024-1-01\"}",
            "{\"t\":\"24:00:00Z\"}", "{\"t\":\"12:00:00\"}",
            "{\"t\":\"12:60:00Z\"}", "{\"t\":\"12:00:00.Z\"}",
            "{\"dt\":\"2024-01-01 12:00:00Z\"}", "{\"dt\":\"2024-01-01T12:00:00+5:00\"}",
            "{\"u\":\"123e4567e89b12d3a456426614174000\"}", "{\"u\":\"123e4567-e89b-12d3-a456-42661417400g\"}",
            "{\"d\":\"\\u0032024-01-01\"}",
            "{\"d\":\"2023-02-29\"}", "{\"d\":\"1900-02-29\"}",
            "{\"d\":\"2024-04-31\"}", "{\"d\":\"0000-01-01\"}",
            "{\"dt\":\"2024-02-30T00:00:00Z\"}",
        };
        int  good = p3 != NULL;

        for (size_t i = 0; good && i < sizeof(fok) / sizeof(fok[0]); i++) {
            good &= accepts(p3, fok[i], &done) && done;
        }
        for (size_t i = 0; good && i < sizeof(fbad) / sizeof(fbad[0]); i++) {
            good &= !(accepts(p3, fbad[i], &done) && done);
        }
        ok(good, "format date, time, date-time, uuid: %zu shapes accepted, %zu"
           " refused (calendar days, years 0001-9999, hours 00-23, a zone"
           " for times, no escapes)", sizeof(fok) / sizeof(fok[0]),
           sizeof(fbad) / sizeof(fbad[0]));
        free(p3);
        p3 = compile("{\"type\": \"object\", \"properties\": {\"e\":"
                     " {\"type\": \"string\", \"format\": \"idn-email\"}}}",
                     &n3, e3, sizeof(e3));
        ok(p3 == NULL && strstr(e3, "\"idn-email\" is not supported") != NULL,
           "format idn-email refused, naming it: %s", e3);
        free(p3);
    }

    /* keys, enum values and closers too early are refused at their byte */
    bad += accepts(prog, "{\"x", &done);
    bad += accepts(prog, "{\"name\":\"x\"}", &done);
    bad += accepts(prog, "{\"name\":\"x\",\"age\":3,\"tags\":[\"c", &done);
    bad += accepts(prog, "{\"name\":\"x\",\"age\":3,\"tags\":[]", &done);
    ok(bad == 0, "an unknown key, an early '}', a wrong enum byte, an early"
       " ']' are refused at that byte");

    /* a corrupted program is refused by the engine's check, never run */
    {
        int32_t  *c = malloc(n * sizeof(int32_t));
        uint32_t  refused = 0, fuzz = 0;
        kimi_rng_t  r;

        kimi_rng_seed(&r, 3);
        for (int k = 0; k < 2000; k++) {
            memcpy(c, prog, n * sizeof(int32_t));
            for (int f = 0; f < 3; f++) {
                size_t  at = (size_t) (kimi_rng_uniform(&r) * (double) n);
                c[at < n ? at : n - 1] = (int32_t) (kimi_rng_uniform(&r) * 4e5) - 1000;
            }
            if (kimi_json_schema_check(c, n, err, sizeof(err)) != 0) {
                refused++;
                continue;
            }
            /* passed: it must run on any bytes without faulting */
            kimi_json_state_t  s;

            kimi_json_init_schema(&s, c);
            for (int b = 0; b < 200; b++) {
                unsigned char  ch = "{}[]\",:0123456789-.eEtrufalsn \\abcxyz"
                                    [(int) (kimi_rng_uniform(&r) * 38)];

                if (kimi_json_feed(&s, (const char *) &ch, 1) != 0) {
                    kimi_json_init_schema(&s, c);
                }
            }
            fuzz++;
        }
        /* a fault in the run ends this binary (and the sanitizer builds
         * report any stray read) */
        ok(refused > 0 && fuzz > 0, "2000 corrupted programs: %u refused by"
           " the check, %u passed and ran on random bytes without a fault",
           refused, fuzz);
        free(c);
    }
    free(prog);
}


/* Sampling under the schema with random rows: every token extends a valid
 * prefix, eos only when complete, and a complete output is valid JSON
 * holding the required fields with their types. */
static void
test_schema_sampler(void)
{
    kimi_tokenizer_t   *tok;
    kimi_sampler_t     *smp;
    kimi_err_t          err;
    kimi_shm_sampling_t sp;
    kimi_sample_out_t   out;
    kimi_rng_t          rng, draw;
    kimi_json_state_t   st;
    float              *row;
    int32_t             seq[512], eos[2], *words;
    uint32_t            vocab, n = 0, bad = 0, ended = 0, valid = 0, calls = 0;
    double              t_sample = 0;
    const char         *b;
    size_t              len, nprog;
    char                msg[512], text[4096];
    int32_t            *prog = compile(person_schema, &nprog, msg, sizeof(msg));
    static int32_t      boost[16];
    int                 nboost = 0;

    if (prog == NULL || kimi_tokenizer_load(&tok, tap_model_dir(), &err) != 0) {
        ok(0, "schema and tokenizer load");
        return;
    }
    words = malloc((nprog + 1) * sizeof(int32_t));
    words[0] = KIMI_SCHEMA_TAG;
    memcpy(words + 1, prog, nprog * sizeof(int32_t));
    ok(kimi_sample_guided_check(words, (uint32_t) nprog + 1, 163840, &err) == 0,
       "the tagged program passes the sampler's check");
    {
        /* a forced tool call: 2 ids before, 1 after, 1 never, one call,
         * one function: the program, then its 1-token id */
        int32_t  *tw = malloc((nprog + 13) * sizeof(int32_t));
        uint32_t  nw = (uint32_t) nprog + 13;
        int       good;

        tw[0] = KIMI_TOOL_CALL_TAG;
        tw[1] = 2; tw[2] = 5; tw[3] = 6;
        tw[4] = 1; tw[5] = 7;
        tw[6] = 1; tw[7] = 8;
        tw[8] = 1;                      /* calls */
        tw[9] = 1;                      /* functions */
        tw[10] = (int32_t) nprog;
        memcpy(tw + 11, prog, nprog * sizeof(int32_t));
        tw[11 + nprog] = 1; tw[12 + nprog] = 9;
        good = kimi_sample_guided_check(tw, nw, 163840, &err) == 0;
        tw[5] = 163840;                 /* outside the vocabulary */
        good &= kimi_sample_guided_check(tw, nw, 163840, &err) != 0;
        tw[5] = 7;
        tw[12 + nprog] = -3;
        good &= kimi_sample_guided_check(tw, nw, 163840, &err) != 0;
        tw[12 + nprog] = 9;
        tw[4] = 900000;                 /* a count past the words */
        good &= kimi_sample_guided_check(tw, nw, 163840, &err) != 0;
        tw[4] = 1;
        good &= kimi_sample_guided_check(tw, nw - 1, 163840, &err) != 0;
        tw[8] = KIMI_TOOL_MAX_CALLS + 1;        /* too many calls */
        good &= kimi_sample_guided_check(tw, nw, 163840, &err) != 0;
        tw[8] = 1;
        good &= kimi_sample_guided_check(tw, nw, 163840, &err) == 0;
        ok(good, "forced tool call words: checked (ids in the vocabulary,"
           " counts inside the words, at most KIMI_TOOL_MAX_CALLS calls)");
        free(tw);
    }

    vocab = 163840;
    eos[0] = kimi_tokenizer_special_id(tok, "<|im_end|>");
    eos[1] = kimi_tokenizer_special_id(tok, "[EOS]");
    /* one-byte tokens that move toward the end: closers, short values */
    for (int32_t i = 0; i < 200000 && nboost < 16; i++) {
        const char  *cb = kimi_token_bytes(tok, i, &len);

        if (cb != NULL && len == 1 && strchr("\"}],:0n7", cb[0]) != NULL) {
            boost[nboost++] = i;
        }
    }
    row = malloc(vocab * sizeof(float));
    if (row == NULL || kimi_sampler_init(&smp, vocab, &err) != 0) {
        ok(0, "sampler: %s", err.msg);
        return;
    }
    kimi_rng_seed(&rng, 11);

    for (int run = 0; run < 8; run++) {
        plain_sampling(&sp, 400);
        kimi_rng_seed(&draw, 200 + run);
        seq[0] = 1000;
        n = 1;
        text[0] = '\0';
        kimi_json_init_schema(&st, prog);

        for (int step = 0; step < 400; step++) {
            for (uint32_t i = 0; i < vocab; i++) {
                row[i] = (float) (kimi_rng_uniform(&rng) * 8.0);
            }
            if (step > 10) {
                for (int k = 0; k < nboost; k++) {
                    row[boost[k]] += 12.0f;
                }
                row[eos[0]] += 30.0f;
            }
            if (draw_next(smp, row, seq, n, &sp, &draw, eos, tok, words,
                          (uint32_t) nprog + 1, &out, &t_sample) != 0)
            {
                bad++;
                break;
            }
            calls++;
            if (out.tok.token == eos[0] || out.tok.token == eos[1]) {
                bad += !kimi_json_done(&st);
                if (kimi_json_done(&st)) {
                    json_t  *j = json_loads(text, 0, NULL);

                    ended++;
                    valid += j != NULL
                             && json_is_string(json_object_get(j, "name"))
                             && kimi_utf8_count(json_string_value(json_object_get(j, "name"))) <= 5
                             && json_is_integer(json_object_get(j, "age"))
                             && json_array_size(json_object_get(j, "tags")) >= 1
                             && json_array_size(json_object_get(j, "tags")) <= 3;
                    json_decref(j);
                }
                break;
            }
            b = kimi_tokenizer_is_special(tok, out.tok.token) ? NULL
                : kimi_token_bytes(tok, out.tok.token, &len);
            if (b == NULL || kimi_json_feed(&st, b, len) != 0
                || n + 1 >= 512 || strlen(text) + len >= sizeof(text))
            {
                bad += b == NULL || n + 1 < 512;
                break;
            }
            strncat(text, b, len);
            seq[n++] = out.tok.token;
        }
    }
    ok(bad == 0, "8 runs of random rows under the schema: every token extends"
       " a valid prefix, eos only when complete (%u bad)", bad);
    ok(ended > 0 && valid == ended, "... %u completed, all %u parse as JSON"
       " with a name of at most 5 characters, integer age and 1-3 tags",
       ended, valid);

    printf("# JSON schema: %.0f us a sample (163840-entry rows, %u calls)\n",
           1e6 * t_sample / (calls ? calls : 1), calls);

    kimi_sampler_free(smp);
    kimi_tokenizer_free(tok);
    free(row);
    free(words);
    free(prog);
}


/* tool_choice "required" (module words, Kimi's markers): random rows walk
 * one or more calls, each a function's id for its own index, arguments
 * that fit, the call's end, then another call or the section's end, and
 * eos only after that; the opener nudged up in odd runs (max_calls calls,
 * then the end forced), the section's end in even runs (one call). */
static void
test_tool_calls(void)
{
    static const char  *mk[5] = {
        "<|tool_calls_section_begin|>", "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>", "<|tool_call_end|>",
        "<|tool_calls_section_end|>"
    };
    static const char  *fname[2] = { "f", "get_weather" };
    enum { MAXC = 3 };
    kimi_tokenizer_t   *tok;
    kimi_sampler_t     *smp;
    kimi_err_t          err;
    kimi_shm_sampling_t sp;
    kimi_sample_out_t   out;
    kimi_rng_t          rng, draw;
    kimi_json_state_t   st;
    int32_t             mark[5], eos[2], seq[700], w[4096], *ids[2][MAXC], name[17];
    size_t              nprog, n_ids[2][MAXC], len;
    uint32_t            at = 0, n, vocab = 163840;
    int                 bad = 0, shape_ok = 0, runs = 6, multi = 0;
    char                msg[256], text[64];
    const char         *b;
    int32_t            *prog = compile("{\"type\": \"object\", \"properties\":"
                                       " {\"x\": {\"type\": \"integer\","
                                       " \"minimum\": 0, \"maximum\": 99}},"
                                       " \"required\": [\"x\"],"
                                       " \"additionalProperties\": false}",
                                       &nprog, msg, sizeof(msg));
    float              *row = malloc(vocab * sizeof(float));

    if (prog == NULL || row == NULL
        || kimi_tokenizer_load(&tok, tap_model_dir(), &err) != 0
        || kimi_sampler_init(&smp, vocab, &err) != 0)
    {
        ok(0, "tool calls: setup");
        return;
    }
    for (int i = 0; i < 5; i++) {
        mark[i] = kimi_tokenizer_special_id(tok, mk[i]);
    }
    eos[0] = kimi_tokenizer_special_id(tok, "<|im_end|>");
    eos[1] = kimi_tokenizer_special_id(tok, "[EOS]");

    w[at++] = KIMI_TOOL_CALL_TAG;
    w[at++] = 2; w[at++] = mark[0]; w[at++] = mark[1];
    w[at++] = 2; w[at++] = mark[3]; w[at++] = mark[4];
    w[at++] = 5;
    memcpy(w + at, mark, sizeof(mark));
    at += 5;
    w[at++] = MAXC;
    w[at++] = 2;
    for (int a = 0; a < 2; a++) {
        w[at++] = (int32_t) nprog;
        memcpy(w + at, prog, nprog * sizeof(int32_t));
        at += (uint32_t) nprog;
        for (int c = 0; c < MAXC; c++) {
            int  tl = snprintf(text, sizeof(text), "functions.%s:%d", fname[a], 2 + c);

            if (kimi_tokenize(tok, text, (size_t) tl, 0, &ids[a][c], &n_ids[a][c], &err) != 0) {
                ok(0, "tool calls: tokenize");
                return;
            }
            w[at++] = (int32_t) n_ids[a][c] + 1;
            memcpy(w + at, ids[a][c], n_ids[a][c] * sizeof(int32_t));
            at += (uint32_t) n_ids[a][c];
            w[at++] = mark[2];
        }
    }
    ok(kimi_sample_guided_check(w, at, vocab, &err) == 0,
       "tool calls, 2 functions x %d call indices: the words pass the check", MAXC);

    kimi_rng_seed(&rng, 5);
    for (int run = 0; run < runs; run++) {
        int       calls = 0, state = 0, fn, ended = 0;
        uint32_t  k = 0;

        plain_sampling(&sp, 600);
        kimi_rng_seed(&draw, 300 + run);
        seq[0] = 1000;
        n = 1;
        /* state: 0 pre ids, 1 a function's id, 2 arguments, 3 after the
         * call's end, 4 after the section's end */
        for (int step = 0; step < 600 && !ended; step++) {
            int32_t  t;

            for (uint32_t i = 0; i < vocab; i++) {
                row[i] = (float) (kimi_rng_uniform(&rng) * 8.0);
            }
            for (const char *c = "}07"; *c; c++) {      /* toward the end */
                int32_t  one;
                size_t   no;
                int32_t *p1;

                if (kimi_tokenize(tok, c, 1, 0, &p1, &no, &err) == 0) {
                    one = no == 1 ? p1[0] : -1;
                    free(p1);
                    if (one >= 0) {
                        row[one] += 12.0f;
                    }
                }
            }
            row[run % 2 ? mark[1] : mark[4]] += 30.0f;
            row[eos[0]] += 30.0f;
            if (draw_next(smp, row, seq, n, &sp, &draw, eos, tok, w, at, &out, NULL) != 0) {
                bad++;
                break;
            }
            t = out.tok.token;
            switch (state) {
            case 0:
                bad += t != mark[(int) k];
                if (++k == 2) {
                    state = 1;
                    k = 0;
                }
                break;
            case 1:                     /* the function's id for this index */
                if (t != mark[2]) {
                    name[k++] = t;
                    bad += k > 16;
                    ended |= k > 16;
                    break;
                }
                fn = -1;
                for (int a = 0; a < 2; a++) {
                    if (k == n_ids[a][calls]
                        && memcmp(name, ids[a][calls], k * sizeof(int32_t)) == 0)
                    {
                        fn = a;
                    }
                }
                bad += fn < 0;
                state = 2;
                kimi_json_init_schema(&st, prog);
                break;
            case 2:
                if (kimi_json_done(&st)) {
                    bad += t != mark[3];
                    state = 3;
                    calls++;
                    break;
                }
                b = kimi_tokenizer_is_special(tok, t) ? NULL : kimi_token_bytes(tok, t, &len);
                if (b == NULL || kimi_json_feed(&st, b, len) != 0) {
                    bad++;
                    ended = 1;
                }
                break;
            case 3:                     /* another call, or the end */
                if (t == mark[1] && calls < MAXC) {
                    state = 1;
                    k = 0;
                } else {
                    bad += t != mark[4];
                    state = 4;
                }
                break;
            default:
                bad += t != eos[0] && t != eos[1];
                ended = 1;
                break;
            }
            seq[n++] = t;
            if (n >= 700) {
                break;
            }
        }
        shape_ok += ended && state == 4 && calls == (run % 2 ? MAXC : 1);
        multi += calls > 1;
    }
    ok(bad == 0, "tool calls: %d runs of random rows, every token the frame's:"
       " each call's id for its index, arguments that fit, its end, then"
       " another call or the section's end, eos only after (%d bad)", runs, bad);
    ok(shape_ok == runs && multi == runs / 2, "... %d of %d runs ended whole: the"
       " opener nudged up gives %d calls (then the end is forced), the end"
       " nudged up one call", shape_ok, runs, MAXC);

    for (int a = 0; a < 2; a++) {
        for (int c = 0; c < MAXC; c++) {
            free(ids[a][c]);
        }
    }
    kimi_sampler_free(smp);
    kimi_tokenizer_free(tok);
    free(row);
    free(prog);
}


/* A schema whose objects require themselves forever: at the nesting limit
 * nothing can follow, and the answer ends there (eos allowed), a prefix,
 * never a token outside the schema. */
static void
test_schema_dead_end(void)
{
    kimi_tokenizer_t   *tok;
    kimi_sampler_t     *smp;
    kimi_err_t          err;
    kimi_shm_sampling_t sp;
    kimi_sample_out_t   out;
    kimi_rng_t          rng, draw;
    kimi_json_state_t   st;
    float              *row;
    int32_t             seq[600], eos[2], *words;
    uint32_t            n = 1, vocab = 163840;
    int                 bad = 0, ended = 0;
    const char         *b;
    size_t              len, nprog;
    char                msg[256];
    int32_t            *prog = compile("{\"type\": \"object\", \"properties\":"
                                       " {\"a\": {\"$ref\": \"#\"}},"
                                       " \"required\": [\"a\"]}",
                                       &nprog, msg, sizeof(msg));

    if (prog == NULL || kimi_tokenizer_load(&tok, tap_model_dir(), &err) != 0
        || kimi_sampler_init(&smp, vocab, &err) != 0)
    {
        ok(0, "dead-end schema setup");
        return;
    }
    words = malloc((nprog + 1) * sizeof(int32_t));
    row = malloc(vocab * sizeof(float));
    words[0] = KIMI_SCHEMA_TAG;
    memcpy(words + 1, prog, nprog * sizeof(int32_t));
    eos[0] = kimi_tokenizer_special_id(tok, "<|im_end|>");
    eos[1] = kimi_tokenizer_special_id(tok, "[EOS]");
    memset(&sp, 0, sizeof(sp));
    sp.temperature = 0.0f;
    sp.top_p = 1.0f;
    sp.repetition_penalty = 1.0f;
    sp.max_tokens = 590;
    kimi_rng_seed(&rng, 5);
    kimi_rng_seed(&draw, 5);
    seq[0] = 1000;
    kimi_json_init_schema(&st, prog);

    for (int step = 0; step < 590; step++) {
        for (uint32_t i = 0; i < vocab; i++) {
            row[i] = (float) (kimi_rng_uniform(&rng) * 8.0);
        }
        if (draw_next(smp, row, seq, n, &sp, &draw, eos, tok, words,
                      (uint32_t) nprog + 1, &out, NULL) != 0)
        {
            bad = 1;
            break;
        }
        if (out.tok.token == eos[0] || out.tok.token == eos[1]) {
            ended = 1;
            break;
        }
        b = kimi_tokenizer_is_special(tok, out.tok.token) ? NULL
            : kimi_token_bytes(tok, out.tok.token, &len);
        if (b == NULL || kimi_json_feed(&st, b, len) != 0) {
            bad = 1;
            break;
        }
        seq[n++] = out.tok.token;
    }
    ok(!bad && ended && st.depth == KIMI_SCHEMA_MAX_DEPTH,
       "a schema that nests forever: %u tokens inside the schema, then eos"
       " at %d levels", n - 1, st.depth);

    kimi_sampler_free(smp);
    kimi_tokenizer_free(tok);
    free(row);
    free(words);
    free(prog);
}


/* anyOf / oneOf of objects: merged into one node whose open alternatives
 * narrow with every key and every discriminating value */
static void
test_schema_union_objects(void)
{
    static const char  *cat_or_dog =
        "{\"type\": \"array\", \"items\": {\"%s\": ["
        "{\"type\": \"object\", \"properties\": {\"kind\": {\"const\": \"cat\"},"
        " \"name\": {\"type\": \"string\"}, \"lives\": {\"type\": \"integer\"}},"
        " \"required\": [\"kind\", \"name\"]},"
        "{\"type\": \"object\", \"properties\": {\"kind\": {\"enum\": [\"dog\", \"wolf\"]},"
        " \"name\": {\"type\": \"string\"}, \"good\": {\"type\": \"boolean\"}},"
        " \"required\": [\"kind\", \"name\", \"good\"]}]}}";
    char       text[1024], err[512];
    size_t     n;
    int32_t   *prog;
    int        done, good;

    for (int one = 0; one < 2; one++) {
        snprintf(text, sizeof(text), cat_or_dog, one ? "oneOf" : "anyOf");
        prog = compile(text, &n, err, sizeof(err));
        good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
        good = good && accepts(prog, "[{\"kind\": \"cat\", \"name\": \"Tom\", \"lives\": 9},"
                               " {\"name\": \"Rex\", \"kind\": \"wolf\", \"good\": true},"
                               " {\"good\": false, \"name\": \"x\", \"kind\": \"dog\"}]", &done) && done;
        /* a cat has no "good"; after "good" only a dog's kinds; a dog needs "good" */
        good = good && !accepts(prog, "[{\"kind\": \"cat\", \"g", &done);
        good = good && !accepts(prog, "[{\"good\": true, \"kind\": \"c", &done);
        good = good && !(accepts(prog, "[{\"kind\": \"dog\", \"name\": \"R\"}", &done));
        good = good && accepts(prog, "[{\"kind\": \"dog\", \"name\": \"R\"", &done) && !done;
        good = good && !accepts(prog, "[{\"kind\": \"cat\", \"kind", &done);
        good = good && !(accepts(prog, "[{}", &done));
        ok(good, "%s of two objects told apart by \"kind\": keys and values narrow the"
           " alternatives (%s)", one ? "oneOf" : "anyOf", prog == NULL ? err : "ok");
        free(prog);
    }

    /* no discriminator: an anyOf by its keys, at the top; a oneOf refused */
    {
        static const char  *by_keys =
            "{\"%s\": [{\"type\": \"object\", \"properties\": {\"meow\": {\"type\": \"integer\"},"
            " \"id\": {\"type\": \"integer\"}}, \"required\": [\"meow\"]},"
            " {\"type\": \"object\", \"properties\": {\"bark\": {\"type\": \"string\"},"
            " \"id\": {\"type\": \"integer\"}}, \"required\": [\"bark\"]}]}";

        snprintf(text, sizeof(text), by_keys, "anyOf");
        prog = compile(text, &n, err, sizeof(err));
        good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
        good = good && accepts(prog, "{\"id\": 1, \"meow\": 3}", &done) && done;
        good = good && accepts(prog, "{\"bark\": \"w\", \"id\": 2}", &done) && done;
        good = good && accepts(prog, "{\"id\": 1", &done) && !done;
        good = good && !(accepts(prog, "{\"id\": 1}", &done) && done);
        good = good && !accepts(prog, "{\"meow\": 3, \"b", &done);
        ok(good, "anyOf of objects at the top, told apart by their keys (%s)",
           prog == NULL ? err : "ok");
        free(prog);

        snprintf(text, sizeof(text), by_keys, "oneOf");
        prog = compile(text, &n, err, sizeof(err));
        ok(prog == NULL && strstr(err, "discriminator") != NULL,
           "a oneOf of objects without a discriminator is refused: %s",
           prog ? "(compiled)" : err);
        free(prog);
    }

    /* a shared property of values that start differently: its first byte
     * narrows them too; of values that may start alike: refused */
    prog = compile("{\"type\": \"object\", \"properties\": {\"v\": {\"anyOf\": ["
                   "{\"type\": \"object\", \"properties\": {\"a\": {\"anyOf\": [{\"type\":"
                   " \"string\"}, {\"type\": \"null\"}]}, \"s\": {\"type\": \"string\"}}},"
                   " {\"type\": \"object\", \"properties\": {\"a\": {\"anyOf\": [{\"type\":"
                   " \"integer\"}, {\"type\": \"null\"}]}, \"i\": {\"type\": \"integer\"}}}]}}}",
                   &n, err, sizeof(err));
    good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
    good = good && accepts(prog, "{\"v\": {\"a\": \"x\", \"s\": \"y\"}}", &done) && done;
    good = good && accepts(prog, "{\"v\": {\"a\": 1, \"i\": 2}}", &done) && done;
    good = good && accepts(prog, "{\"v\": {\"a\": null, \"i\": 2}}", &done) && done;
    good = good && accepts(prog, "{\"v\": {\"a\": null, \"s\": \"\"}}", &done) && done;
    good = good && !accepts(prog, "{\"v\": {\"a\": \"x\", \"i", &done);
    good = good && !accepts(prog, "{\"v\": {\"i\": 1, \"a\": \"", &done);
    ok(good, "a shared property whose values start differently (string | null beside"
       " integer | null): its first byte narrows the objects (%s)", prog == NULL ? err : "ok");
    free(prog);
    prog = compile("{\"type\": \"object\", \"properties\": {\"v\": {\"anyOf\": ["
                   "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"string\","
                   " \"maxLength\": 3}}}, {\"type\": \"object\", \"properties\": {\"a\":"
                   " {\"type\": \"string\", \"minLength\": 5}}}]}}}",
                   &n, err, sizeof(err));
    ok(prog == NULL && strstr(err, "property \"a\" different schemas") != NULL,
       "objects giving a shared property schemas that start alike are refused: %s",
       prog ? "(compiled)" : err);
    free(prog);
    prog = compile("{\"type\": \"array\", \"items\": {\"anyOf\": [{\"type\": \"object\","
                   " \"properties\": {\"a\": {\"type\": \"string\"}}}, {\"type\": \"object\"},"
                   " {\"type\": \"null\"}]}}", &n, err, sizeof(err));
    ok(prog != NULL && accepts(prog, "[{\"z\": [1, {}]}, null, {\"a\": 2}]", &done) && done,
       "anyOf beside an object of any keys: any object (%s)", prog == NULL ? err : "ok");
    free(prog);
}


/* additionalProperties as a schema: keys no property names, their values
 * held to it (pydantic's Dict[str, X]) */
static void
test_schema_additional(void)
{
    char      err[512];
    size_t    n;
    int32_t  *prog;
    int       done, good;

    prog = compile("{\"type\": \"object\", \"properties\": {\"id\": {\"type\": \"integer\"}},"
                   " \"required\": [\"id\"], \"additionalProperties\": {\"type\": \"integer\"}}",
                   &n, err, sizeof(err));
    good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
    good = good && accepts(prog, "{\"i\": 5, \"id\": 1, \"idx\": 2, \"\xc3\xa9t\xc3\xa9\": 3, \"\": 4}",
                           &done) && done;
    good = good && !accepts(prog, "{\"id\": 1, \"x\": \"", &done);      /* a free key's value */
    good = good && !accepts(prog, "{\"id\": 1, \"id\"", &done);         /* a property twice */
    good = good && !accepts(prog, "{\"\\u0069d\"", &done);              /* no escapes in a free key */
    good = good && !accepts(prog, "{\"a\xc3\"", &done);                 /* half a UTF-8 character */
    good = good && !(accepts(prog, "{\"x\": 1}", &done) && done);       /* "id" is required */
    ok(good, "additionalProperties {integer} beside a property: free keys, each name"
       " once (%s)", prog == NULL ? err : "ok");
    free(prog);

    prog = compile("{\"type\": \"object\", \"additionalProperties\": {\"type\": \"object\","
                   " \"properties\": {\"n\": {\"type\": \"integer\"}}, \"required\": [\"n\"]}}",
                   &n, err, sizeof(err));
    good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
    good = good && accepts(prog, "{\"a\": {\"n\": 1}, \"b\": {\"n\": 2}}", &done) && done;
    good = good && accepts(prog, "{}", &done) && done;
    good = good && !(accepts(prog, "{\"a\": {}", &done));
    good = good && !accepts(prog, "{\"a\": 1", &done);
    ok(good, "a dict of objects (no properties, additionalProperties a schema) (%s)",
       prog == NULL ? err : "ok");
    free(prog);

    prog = compile("{\"type\": \"array\", \"items\": {\"type\": \"object\", \"properties\":"
                   " {\"k\": {\"const\": 1}}, \"additionalProperties\": {}}}", &n, err, sizeof(err));
    good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
    good = good && accepts(prog, "[{\"z\": [true, {\"q\": null}], \"k\": 1}, {}]", &done) && done;
    good = good && !accepts(prog, "[{\"k\": 2", &done);
    ok(good, "additionalProperties {}: other keys take any value (%s)", prog == NULL ? err : "ok");
    free(prog);
}


/* tuples: prefixItems (pydantic's Tuple[int, str]), draft 7's items list */
static void
test_schema_tuples(void)
{
    char      err[512];
    size_t    n;
    int32_t  *prog;
    int       done, good;

    prog = compile("{\"type\": \"object\", \"properties\": {\"t\": {\"type\": \"array\","
                   " \"prefixItems\": [{\"type\": \"integer\"}, {\"type\": \"string\"}],"
                   " \"minItems\": 2, \"maxItems\": 2}}}", &n, err, sizeof(err));
    good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
    good = good && accepts(prog, "{\"t\": [1, \"a\"]}", &done) && done;
    good = good && !accepts(prog, "{\"t\": [\"", &done);
    good = good && !accepts(prog, "{\"t\": [1, 2", &done);
    good = good && !accepts(prog, "{\"t\": [1, \"a\",", &done);
    good = good && !(accepts(prog, "{\"t\": [1]", &done));
    ok(good, "a tuple (integer, string): each place its schema, two items (%s)",
       prog == NULL ? err : "ok");
    free(prog);

    prog = compile("{\"type\": \"array\", \"prefixItems\": [{\"const\": \"x\"}],"
                   " \"items\": {\"type\": \"boolean\"}}", &n, err, sizeof(err));
    good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
    good = good && accepts(prog, "[\"x\", true, false]", &done) && done;
    good = good && accepts(prog, "[]", &done) && done;
    good = good && !accepts(prog, "[\"x\", 1", &done);
    good = good && !accepts(prog, "[true", &done);
    ok(good, "a tuple's rest held to items (%s)", prog == NULL ? err : "ok");
    free(prog);

    prog = compile("{\"type\": \"array\", \"items\": [{\"type\": \"null\"}, {\"type\": \"integer\"}]}",
                   &n, err, sizeof(err));
    good = prog != NULL && accepts(prog, "[null, 3, {\"any\": []}]", &done) && done
           && !accepts(prog, "[1", &done);
    ok(good, "draft 7's items list: a tuple, anything after it (%s)", prog == NULL ? err : "ok");
    free(prog);

    prog = compile("{\"type\": \"array\", \"prefixItems\": [{\"type\": \"integer\"}], \"items\": false}",
                   &n, err, sizeof(err));
    good = prog != NULL && accepts(prog, "[7]", &done) && done && !accepts(prog, "[7,", &done);
    ok(good, "items false after the prefix: nothing more (%s)", prog == NULL ? err : "ok");
    free(prog);
}


/* formats held to their shape by a pattern (email, hostname, ipv4, ipv6,
 * uri, duration), and the hints that name no syntax (password, binary) */
static void
test_schema_format_shapes(void)
{
    static const struct { const char *format, *good, *bad; } f[] = {
        { "email", "[\"a.b+c@example.co.uk\", \"x@y.io\"]", "[\"a@b\"]" },
        { "hostname", "[\"example.com\", \"a-1.b\", \"x\"]", "[\"-a.com\"]" },
        { "ipv4", "[\"192.168.0.1\", \"0.0.0.0\", \"255.255.255.255\"]", "[\"256.1.1.1\"]" },
        { "uri", "[\"https://example.com/a?b=c#d\", \"urn:isbn:0451450523\"]", "[\"no scheme\"]" },
        { "ipv6", "[\"2001:db8::1\", \"::\", \"::1\", \"fe80::\", \"1:2:3:4:5:6:7:8\"]", "[\"1:2:3:4:5:6:7:8:9\"]" },
        { "ipv6", "[\"1::2:3:4:5:6:7\", \"::ffff:c000:201\"]", "[\"1::2::3\"]" },
        /* the IPv4 tail is valid but left out (hexadecimal forms only) */
        { "ipv6", "[\"a:b:c:d:e:f:0:1\"]", "[\"::ffff:192.0.2.1\"]" },
        { "ipv6", "[\"::1:2:3:4:5:6:7\", \"ABCD:ef01::\"]", "[\"12345::\"]" },
        { "ipv6", "[\"1:2:3:4:5:6::\"]", "[\":1\"]" },
        { "duration", "[\"P1Y2M3DT4H5M6S\", \"PT0S\", \"P2W\", \"P1D\", \"PT36H\"]", "[\"P\"]" },
        { "duration", "[\"P1M\", \"PT1M30S\"]", "[\"P1DT\"]" },
        { "duration", "[\"P3Y\"]", "[\"P1W2D\"]" },
        { "duration", "[\"PT2H\"]", "[\"PT0.5S\"]" },
        { "password", "[\"hunter2\", \"\"]", "[1]" },
        { "binary", "[\"\\u0000x\"]", "[true]" },
    };
    char      text[256], err[512];
    size_t    n;
    int32_t  *prog;
    int       done, good;

    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        snprintf(text, sizeof(text), "{\"type\": \"array\", \"items\": {\"type\": \"string\","
                 " \"format\": \"%s\", \"maxLength\": 40}}", f[i].format);
        prog = compile(text, &n, err, sizeof(err));
        good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
        good = good && accepts(prog, f[i].good, &done) && done;
        good = good && !(accepts(prog, f[i].bad, &done) && done);
        ok(good, "format %s: %s taken, %s refused (%s)", f[i].format, f[i].good, f[i].bad,
           prog == NULL ? err : "ok");
        free(prog);
    }
}


/* schemas with a value each takes whole and one it refuses */
typedef struct { const char *schema, *good, *bad; } schema_case_t;
/* schemas refused, with what the message must say */
typedef struct { const char *schema, *err; } schema_refusal_t;

static void
schema_cases(const char *what, const schema_case_t *t, size_t n_cases)
{
    char      err[512];
    size_t    n;
    int32_t  *prog;
    int       done, good;

    for (size_t i = 0; i < n_cases; i++) {
        prog = compile(t[i].schema, &n, err, sizeof(err));
        good = prog != NULL && kimi_json_schema_check(prog, n, err, sizeof(err)) == 0;
        good = good && accepts(prog, t[i].good, &done) && done;
        good = good && !(accepts(prog, t[i].bad, &done) && done);
        ok(good, "%s %zu: %s taken, %s refused (%s)", what, i, t[i].good, t[i].bad,
           prog == NULL ? err : "ok");
        free(prog);
    }
}

static void
schema_refusals(const char *what, const schema_refusal_t *t, size_t n_cases)
{
    char      err[512];
    size_t    n;
    int32_t  *prog;

    for (size_t i = 0; i < n_cases; i++) {
        prog = compile(t[i].schema, &n, err, sizeof(err));
        ok(prog == NULL && strstr(err, t[i].err) != NULL, "%s refused %zu: %s", what, i,
           prog == NULL ? err : "compiled");
        free(prog);
    }
}


/* A random walk through program prog: at each step one of the bytes of
 * `bytes` that the state takes, chosen by xorshift state *r, into out (up
 * to cap - 1 bytes, terminated).  1: the value is complete; 0: cap came
 * first; -1: stuck, no byte taken (a dead end the sampler could meet). */
static int
random_walk(const int32_t *prog, const char *bytes, uint64_t *r, char *out, size_t cap)
{
    kimi_json_state_t  st, t2;
    size_t             len = 0, nb = strlen(bytes);

    kimi_json_init_schema(&st, prog);
    while (!kimi_json_done(&st) && len + 1 < cap) {
        char  can[32];
        int   nc = 0;

        for (size_t b = 0; b < nb && nc < 32; b++) {
            t2 = st;
            if (kimi_json_feed(&t2, &bytes[b], 1) == 0) {
                can[nc++] = bytes[b];
            }
        }
        if (nc == 0) {
            out[len] = '\0';
            return -1;
        }
        *r ^= *r << 13;
        *r ^= *r >> 7;
        *r ^= *r << 17;
        out[len] = can[*r % (uint64_t) nc];
        kimi_json_feed(&st, &out[len], 1);
        len++;
    }
    out[len] = '\0';
    return kimi_json_done(&st);
}


/* k random walks through schema's program over `bytes`, each complete
 * value parsed (jansson flags) and judged by bad(value, arg): counts the
 * walks that stuck and that completed into *stuck and *done, and returns
 * the values judged bad or not JSON (-1: the schema did not compile) */
static int
walk_values(const char *schema, const char *bytes, uint64_t seed, int k, size_t flags,
            int (*bad)(const json_t *v, const void *arg), const void *arg, int *stuck, int *done)
{
    char      err[512], out[256];
    size_t    n;
    int32_t  *prog = compile(schema, &n, err, sizeof(err));
    uint64_t  r = seed;
    int       nbad = 0;

    *stuck = *done = 0;
    if (prog == NULL) {
        printf("# %s: %s\n", schema, err);
        return -1;
    }
    for (int w = 0; w < k; w++) {
        int  rc = random_walk(prog, bytes, &r, out, 200);

        *stuck += rc < 0;
        if (rc == 1) {
            json_t  *v = json_loads(out, flags | JSON_DECODE_ANY, NULL);

            nbad += v == NULL || bad(v, arg);
            ++*done;
            json_decref(v);
        }
    }
    free(prog);
    return nbad;
}


/* an array holding a value twice, or more items than *arg */
static int
walk_repeats(const json_t *a, const void *arg)
{
    int  dup = (int) json_array_size(a) > *(const int *) arg;

    for (size_t x = 0; x < json_array_size(a); x++) {
        for (size_t y = x + 1; y < json_array_size(a); y++) {
            dup |= json_equal(json_array_get(a, x), json_array_get(a, y));
        }
    }
    return dup;
}



/* multipleOf on integers (and on numbers, which it makes integers): every
 * integer the recogniser takes whole is a multiple within the bounds, and
 * every such one is taken */
static void
test_schema_multiple_of(void)
{
    static const struct { const char *extra; long long lo, hi; int m; } t[] = {
        { "\"type\": \"integer\", \"multipleOf\": 7", LLONG_MIN, LLONG_MAX, 7 },
        { "\"type\": \"integer\", \"multipleOf\": 5, \"minimum\": -23, \"maximum\": 41", -23, 41, 5 },
        { "\"type\": \"integer\", \"multipleOf\": 4, \"exclusiveMinimum\": 3, \"maximum\": 100", 4, 100, 4 },
        { "\"type\": \"integer\", \"multipleOf\": 10, \"maximum\": -15", LLONG_MIN, -15, 10 },
        { "\"type\": \"number\", \"multipleOf\": 3, \"minimum\": 0", 0, LLONG_MAX, 3 },
        { "\"type\": \"integer\", \"multipleOf\": 1000, \"minimum\": 1", 1, LLONG_MAX, 1000 },
    };
    char      text[256], num[64], err[512];
    size_t    n;
    int32_t  *prog;
    int       done, bad = 0, tried = 0;

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        snprintf(text, sizeof(text), "{\"type\": \"array\", \"items\": {%s}}", t[i].extra);
        prog = compile(text, &n, err, sizeof(err));
        if (prog == NULL || kimi_json_schema_check(prog, n, err, sizeof(err)) != 0) {
            ok(0, "multipleOf schema %zu compiles: %s", i, err);
            free(prog);
            continue;
        }
        for (long long v = -1100; v <= 1100; v++) {
            long long  w = t[i].m == 1000 ? v * 97 : v;
            int        want = w >= t[i].lo && w <= t[i].hi && w % t[i].m == 0;
            int        got;

            snprintf(num, sizeof(num), "[%lld]", w);
            got = accepts(prog, num, &done) && done;
            if (got != want && bad < 8) {
                printf("# multipleOf %zu: %s taken %d, wanted %d\n", i, num, got, want);
            }
            bad += got != want;
            tried++;
        }
        free(prog);
    }
    ok(bad == 0, "multipleOf: %d integers against the rule, %d wrong", tried, bad);

    /* random walks over the bytes each state takes: never a dead end, and
     * every array that closes holds multiples within the bounds */
    {
        static const char *const  walk[] = {
            "{\"type\": \"array\", \"maxItems\": 4, \"items\": {\"type\": \"integer\", \"multipleOf\": 7, \"minimum\": -50, \"maximum\": 300}}",
            "{\"type\": \"array\", \"maxItems\": 4, \"items\": {\"type\": \"integer\", \"multipleOf\": 1000, \"minimum\": -123456, \"maximum\": -2500}}",
            "{\"type\": \"array\", \"maxItems\": 4, \"items\": {\"type\": \"number\", \"multipleOf\": 0.25, \"minimum\": -3, \"maximum\": 1000}}",
        };
        /* bounds and multiple in hundredths */
        static const long long  lo[] = { -5000, -12345600, -300 }, hi[] = { 30000, -250000, 100000 };
        static const long long  mul[] = { 700, 100000, 25 };
        uint64_t  r = 0x9e3779b97f4a7c15ull;
        int       stuck = 0, wrong = 0, walks = 0;

        for (int w = 0; w < 3; w++) {
            prog = compile(walk[w], &n, err, sizeof(err));
            for (int k = 0; prog != NULL && k < 300; k++) {
                char  out[256];
                int   rc = random_walk(prog, "[-0123456789.,]", &r, out, 200);

                stuck += rc < 0;
                walks++;
                if (rc == 1) {
                    json_t  *a = json_loads(out, JSON_DECODE_ANY, NULL);
                    size_t   q;
                    json_t  *v;

                    if (!json_is_array(a) && wrong++ < 6) {
                        printf("# multipleOf walk %d: %s is not JSON\n", w, out);
                    }
                    json_array_foreach(a, q, v) {
                        /* in hundredths (every value has at most 2 decimals) */
                        double     f = json_number_value(v) * 100;
                        long long  x = (long long) llround(f);

                        if (!json_is_number(v) || fabs(f - (double) x) > 1e-6 || x < lo[w]
                            || x > hi[w] || x % mul[w] != 0)
                        {
                            if (wrong < 6) {
                                printf("# multipleOf walk %d: %s\n", w, out);
                            }
                            wrong++;
                        }
                    }
                    json_decref(a);
                }
            }
            free(prog);
        }
        ok(walks == 900 && stuck == 0 && wrong == 0, "multipleOf: %d random walks, %d stuck, %d"
           " values outside the rule", walks, stuck, wrong);
    }

    prog = compile("{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"multipleOf\": 5, \"maximum\": -12}}",
                   &n, err, sizeof(err));
    done = 0;
    ok(prog != NULL && accepts(prog, "[-1", &done) && !accepts(prog, "[1", &done)
       && !(accepts(prog, "[-10]", &done) && done) && accepts(prog, "[-15]", &done) && done,
       "multipleOf 5 below -12: \"-1\" goes on (to -15), \"1\" and -10 do not (%s)",
       prog == NULL ? err : "ok");
    free(prog);

    /* a fraction: numbers of at most the scale's decimals (that of the
     * multipleOf and the bounds), multiples within the bounds; exact, on
     * every hundredth of [-12, 12] written with 0-3 decimals */
    {
        static const struct { const char *extra; long lo, hi; int lo_ex, hi_ex, m, S; } d[] = {
            { "\"multipleOf\": 0.25", -100000, 100000, 0, 0, 25, 2 },
            { "\"multipleOf\": 0.01, \"minimum\": -3.5, \"exclusiveMaximum\": 7.25", -350, 725, 0, 1, 1, 2 },
            { "\"multipleOf\": 0.5, \"exclusiveMinimum\": 0, \"maximum\": 10", 0, 1000, 1, 0, 50, 1 },
            { "\"multipleOf\": 0.3, \"minimum\": -1.05", -105, 100000, 0, 0, 30, 2 },
        };
        int  wrongd = 0, triedd = 0;

        for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
            snprintf(text, sizeof(text), "{\"type\": \"array\", \"items\": {\"type\": \"number\", %s}}",
                     d[i].extra);
            prog = compile(text, &n, err, sizeof(err));
            if (prog == NULL || kimi_json_schema_check(prog, n, err, sizeof(err)) != 0) {
                ok(0, "fractional multipleOf schema %zu compiles: %s", i, err);
                free(prog);
                continue;
            }
            for (long v = -1200; v <= 1200; v++) {        /* v / 100 */
                for (int dec = 0; dec <= 3; dec++) {
                    long  av = v < 0 ? -v : v;
                    int   want, got;

                    if (dec < 2 && av % (dec == 0 ? 100 : 10) != 0) {
                        continue;               /* not writable with dec decimals */
                    }
                    if (dec == 0) {
                        snprintf(num, sizeof(num), "[%s%ld]", v < 0 ? "-" : "", av / 100);
                    } else {
                        snprintf(num, sizeof(num), "[%s%ld.%02ld%s]", v < 0 ? "-" : "", av / 100,
                                 av % 100, dec == 3 ? "0" : "");
                        if (dec == 1) {
                            num[strlen(num) - 2] = ']';
                            num[strlen(num) - 1] = '\0';
                        }
                    }
                    want = (dec <= d[i].S || (dec == 3 && d[i].S >= 3))
                           && (d[i].lo_ex ? v > d[i].lo : v >= d[i].lo)
                           && (d[i].hi_ex ? v < d[i].hi : v <= d[i].hi)
                           && v % d[i].m == 0 && (d[i].S >= 2 || av % 10 == 0);
                    got = accepts(prog, num, &done) && done;
                    if (got != want && wrongd < 8) {
                        printf("# fractional multipleOf %zu: %s taken %d, wanted %d\n", i, num, got, want);
                    }
                    wrongd += got != want;
                    triedd++;
                }
            }
            free(prog);
        }
        ok(wrongd == 0, "fractional multipleOf: %d numbers against exact arithmetic, %d wrong",
           triedd, wrongd);
    }

    static const schema_refusal_t  refused[] = {
        { "{\"type\": \"array\", \"items\": {\"type\": \"number\", \"multipleOf\": 0.0000000001}}",
          "has more than 9 decimals" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"number\", \"multipleOf\": 0.5, \"minimum\": 0.1, \"maximum\": 0.4}}",
          "no multiple of \"multipleOf\" lies within the bounds" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"multipleOf\": 7, \"minimum\": 1, \"maximum\": 6}}",
          "no multiple of 7 lies within the bounds" },
    };
    schema_refusals("multipleOf", refused, sizeof(refused) / sizeof(refused[0]));
}


/* uniqueItems over enum values: each at most once (no prefix of a value
 * written before starts again), no more items than values; random walks
 * never stick and never repeat a value */
static void
test_schema_unique_items(void)
{
    static const schema_case_t  t[] = {
        { "{\"type\": \"array\", \"items\": {\"enum\": [\"a\", \"b\", \"c\"]}, \"uniqueItems\": true}",
          "[\"c\", \"a\", \"b\"]", "[\"a\", \"a\"]" },
        { "{\"type\": \"array\", \"items\": {\"enum\": [\"a\", \"b\", \"c\"]}, \"uniqueItems\": true}",
          "[\"b\"]", "[\"a\", \"b\", \"c\", " },
        { "{\"type\": \"array\", \"items\": {\"enum\": [1, 12, 123]}, \"uniqueItems\": true}",
          "[12, 1, 123]", "[12, 12]" },
        { "{\"$defs\": {\"Color\": {\"enum\": [\"red\", \"green\"]}}, \"type\": \"array\","
          " \"items\": {\"$ref\": \"#/$defs/Color\"}, \"uniqueItems\": true, \"minItems\": 2}",
          "[\"green\", \"red\"]", "[\"red\"]" },
        /* sets of strings and of integers (Set[str], Set[int]): remembered
         * by hash, strings written without escapes, -0 the same as 0 */
        { "{\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"uniqueItems\": true}",
          "[\"a\", \"ab\", \"b\", \"\xc3\xa9\"]", "[\"ab\", \"a\", \"ab\"]" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"string\", \"minLength\": 1}, \"uniqueItems\": true}",
          "[\"x\"]", "[\"x\\n\"]" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\"}, \"uniqueItems\": true}",
          "[1, 12, -3, 0]", "[1, 12, 1]" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\"}, \"uniqueItems\": true}",
          "[-1]", "[0, -0]" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"multipleOf\": 3}, \"uniqueItems\": true}",
          "[3, -30, 0]", "[0, 0" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 2},"
          " \"uniqueItems\": true}", "[2, 0, 1]", "[0, 1, 2, " },
        { "{\"type\": \"object\", \"properties\": {\"s\": {\"type\": \"array\", \"items\": {\"type\":"
          " \"string\"}, \"uniqueItems\": true}, \"t\": {\"type\": \"array\", \"items\": {\"type\":"
          " \"string\"}, \"uniqueItems\": true}}}", "{\"s\": [\"a\"], \"t\": [\"a\"]}",
          "{\"s\": [\"a\"], \"t\": [\"b\", \"b\"]}" },
        /* a value used in one set is free in another */
        { "{\"type\": \"array\", \"items\": {\"type\": \"array\", \"items\": {\"enum\": [\"x\", \"y\"]},"
          " \"uniqueItems\": true}}", "[[\"x\"], [\"x\", \"y\"]]", "[[\"y\", \"y\"]]" },
    };
    static const schema_refusal_t  refused[] = {
        { "{\"type\": \"array\", \"items\": {\"type\": \"string\", \"maxLength\": 3}, \"uniqueItems\": true}",
          "supported on arrays of enum or const values" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"number\"}, \"uniqueItems\": true}",
          "and of integers only" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 2},"
          " \"uniqueItems\": true, \"minItems\": 4}", "\"minItems\" above the 3 distinct values" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"multipleOf\": 5, \"minimum\": -7,"
          " \"maximum\": 12}, \"uniqueItems\": true, \"minItems\": 5}", "\"minItems\" above the 4 distinct values" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"minimum\": 0}, \"uniqueItems\": true}",
          "bounded on one side only" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 64},"
          " \"uniqueItems\": true}", "whose bounds hold 65 values" },
        { "{\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"uniqueItems\": true, \"minItems\": 33}",
          "\"minItems\" above the 32 distinct items" },
        { "{\"type\": \"array\", \"items\": {\"enum\": [1, 2]}, \"uniqueItems\": true, \"minItems\": 3}",
          "\"minItems\" above the 2 distinct values" },
    };

    schema_cases("uniqueItems", t, sizeof(t) / sizeof(t[0]));
    schema_refusals("uniqueItems", refused, sizeof(refused) / sizeof(refused[0]));

    /* random walks over the bytes each state takes */
    {
        int  stuck, done, cap = 6;
        int  dup = walk_values("{\"type\": \"array\", \"items\": {\"enum\": [1, 12, 2, \"a\", \"ab\","
                               " null]}, \"uniqueItems\": true}", "[]12ab\",nul ", 0x2545f4914f6cdd1dull,
                               500, 0, walk_repeats, &cap, &stuck, &done);

        ok(dup == 0 && stuck == 0 && done > 300, "uniqueItems: 500 random walks, %d complete,"
           " %d stuck, %d repeated values", done, stuck, dup);
    }
    /* and over sets of strings and of (bounded) integers */
    {
        static const struct { const char *schema, *bytes; } sw[] = {
            { "{\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"uniqueItems\": true}",
              "[]ab\", " },
            { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"minimum\": -1, \"maximum\":"
              " 3}, \"uniqueItems\": true}", "[]0123-, " },
            { "{\"type\": \"array\", \"items\": {\"type\": \"integer\"}, \"uniqueItems\": true}",
              "[]01-, " },
            { "{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"multipleOf\": 2},"
              " \"uniqueItems\": true}", "[]0124-, " },
        };

        for (size_t i = 0; i < sizeof(sw) / sizeof(sw[0]); i++) {
            int  stuck, done, cap = KIMI_SCHEMA_MAX_SET;
            int  dup = walk_values(sw[i].schema, sw[i].bytes, 0x5851f42d4c957f2dull + i, 400, 0,
                                   walk_repeats, &cap, &stuck, &done);

            ok(stuck == 0 && dup == 0 && done > 200,
               "uniqueItems walk %zu: %d complete of 400, %d stuck, %d with a value twice",
               i, done, stuck, dup);
        }
    }
}


/* a walk over an object's keys: their count within [lo, hi], and (keys
 * set) every key of those letters */
typedef struct { const char *schema, *bytes; int lo, hi; const char *keys; } key_walk_t;

static int
walk_keys(const json_t *o, const void *arg)
{
    const key_walk_t  *w = arg;
    const char        *key;
    json_t            *val;
    int                bad = (int) json_object_size(o) < w->lo || (int) json_object_size(o) > w->hi;

    json_object_foreach((json_t *) o, key, val) {
        bad |= w->keys != NULL && (strlen(key) < 1 || strlen(key) > 3
                                   || strspn(key, w->keys) != strlen(key));
    }
    return bad;
}


/* minProperties / maxProperties (pydantic's Dict with min_length /
 * max_length) and propertyNames as an enum or const of names (a dict keyed
 * by Literals or an Enum): keys counted, a counted dict's keys never
 * written twice, the names' own schemas; random walks never stick, never
 * break a count and never repeat a key */
static void
test_schema_property_counts(void)
{
    static const schema_case_t  t[] = {
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"minProperties\": 1, \"maxProperties\": 3}", "{\"a\": 1}", "{}" },
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"minProperties\": 1, \"maxProperties\": 3}", "{\"a\": 1, \"b\": 2, \"c\": 3}",
          "{\"a\": 1, \"b\": 2, \"c\": 3, \"d\": 4}" },
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"minProperties\": 2}", "{\"a\": 1, \"ab\": 2}", "{\"a\": 1, \"a\": 2}" },
        { "{\"type\": \"object\", \"minProperties\": 2}", "{\"a\": [1], \"b\": {}}",
          "{\"a\": 1}" },
        { "{\"type\": \"object\", \"maxProperties\": 0}", "{}", "{\"a\": 1}" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {}, \"b\": {}}, \"minProperties\": 1}",
          "{\"b\": null}", "{}" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\":"
          " \"integer\"}, \"c\": {\"type\": \"integer\"}}, \"maxProperties\": 2}",
          "{\"c\": 1, \"a\": 2}", "{\"a\": 1, \"b\": 2, \"c\": 3}" },
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"propertyNames\": {\"enum\": [\"x\", \"y\"]}}", "{\"y\": 2, \"x\": 1}", "{\"z\": 1}" },
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"propertyNames\": {\"enum\": [\"x\", \"y\"]}}", "{}", "{\"x\": 1, \"x\": 2}" },
        { "{\"$defs\": {\"E\": {\"enum\": [\"a\", \"b\"], \"title\": \"E\", \"type\": \"string\"}},"
          " \"type\": \"object\", \"additionalProperties\": {\"type\": \"string\"},"
          " \"propertyNames\": {\"$ref\": \"#/$defs/E\"}}", "{\"b\": \"s\"}", "{\"a\": 1}" },
        { "{\"type\": \"object\", \"propertyNames\": {\"const\": \"k\"}}", "{\"k\": [true]}",
          "{\"j\": 1}" },
        { "{\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"string\"}},"
          " \"additionalProperties\": {\"type\": \"integer\"}, \"propertyNames\": {\"enum\":"
          " [\"x\", \"y\", 3]}, \"required\": [\"x\"]}", "{\"y\": 1, \"x\": \"s\"}", "{\"y\": 1}" },
        { "{\"type\": \"object\", \"additionalProperties\": false, \"propertyNames\": false}", "{}",
          "{\"a\": 1}" },
        { "{\"type\": \"object\", \"propertyNames\": {\"type\": \"string\"}, \"minProperties\": 1}",
          "{\"q\": 0}", "{}" },
        /* keys held to propertyNames' lengths and pattern (pydantic's
         * Dict[constr(pattern=..., max_length=...), V]: patternProperties
         * of one pattern; Dict[Annotated[str, Field(max_length=5)], V]) */
        { "{\"type\": \"object\", \"patternProperties\": {\"^[a-z]+$\": {\"type\": \"integer\"}},"
          " \"propertyNames\": {\"maxLength\": 8}}", "{\"ab\": 1, \"xyz\": 2}", "{\"aB\": 1}" },
        { "{\"type\": \"object\", \"patternProperties\": {\"^[a-z]+$\": {\"type\": \"integer\"}},"
          " \"propertyNames\": {\"maxLength\": 8}}", "{}", "{\"abcdefghi\": 1}" },
        { "{\"type\": \"object\", \"patternProperties\": {\"^[a-z]+$\": {\"type\": \"integer\"}}}",
          "{\"q\": 3}", "{\"q\": \"3\"}" },
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"propertyNames\": {\"maxLength\": 5}}", "{\"abcde\": 1, \"\xc3\xa9\xc3\xa9\": 2}",
          "{\"abcdef\": 1}" },
        { "{\"type\": \"object\", \"propertyNames\": {\"minLength\": 2}}", "{\"ab\": null}",
          "{\"a\": 1}" },
        { "{\"allOf\": [{\"minProperties\": 1}, {\"type\": \"object\", \"additionalProperties\":"
          " {\"type\": \"integer\"}, \"minProperties\": 2, \"maxProperties\": 5}, {\"maxProperties\": 2}]}",
          "{\"a\": 1, \"b\": 2}", "{\"a\": 1, \"b\": 2, \"c\": 3}" },
    };
    static const schema_refusal_t  refused[] = {
        { "{\"type\": \"object\", \"minProperties\": 3, \"maxProperties\": 2}",
          "\"maxProperties\" is below \"minProperties\"" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {}}, \"additionalProperties\": false,"
          " \"minProperties\": 2}", "\"minProperties\" 2 above the 1 properties" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {}, \"b\": {}, \"c\": {}}, \"required\":"
          " [\"a\"], \"maxProperties\": 2}", "beside \"required\" is not supported" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {}, \"b\": {}}, \"required\": [\"a\", \"b\"],"
          " \"maxProperties\": 1}", "\"maxProperties\" 1 below the 2 required" },
        { "{\"type\": \"object\", \"propertyNames\": {\"format\": \"email\"}}",
          "supported as an \"enum\" or \"const\" of names, or as minLength" },
        { "{\"type\": \"object\", \"patternProperties\": {\"^a\": {}, \"^b\": {}}}",
          "\"patternProperties\" is supported with one pattern" },
        { "{\"type\": \"object\", \"properties\": {\"x\": {}}, \"patternProperties\": {\"^a\": {}}}",
          "beside \"properties\" or \"additionalProperties\" is not supported" },
        { "{\"type\": \"object\", \"additionalProperties\": {}, \"propertyNames\": {\"pattern\": \"^[ab]$\"},"
          " \"minProperties\": 2}", "\"minProperties\" above 1 beside a key pattern" },
        { "{\"type\": \"object\", \"properties\": {\"x\": {}}, \"additionalProperties\": {},"
          " \"propertyNames\": {\"maxLength\": 3}}", "with a length or pattern beside \"properties\"" },
        { "{\"type\": \"object\", \"propertyNames\": {\"enum\": [\"a\"], \"maxLength\": 3}}",
          "beside minLength, maxLength or pattern is not supported" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {}}, \"required\": [\"a\"],"
          " \"propertyNames\": {\"enum\": [\"b\"]}}", "names a key \"propertyNames\" does not allow" },
        { "{\"type\": \"object\", \"minProperties\": -1}", "\"minProperties\" must be a non-negative" },
        { "{\"anyOf\": [{\"type\": \"object\", \"properties\": {\"a\": {\"const\": 1}}, \"required\":"
          " [\"a\"], \"minProperties\": 1}, {\"type\": \"object\", \"properties\": {\"b\": {\"const\": 2}},"
          " \"required\": [\"b\"]}]}", "among several of a union" },
    };
    static const key_walk_t  walks[] = {
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"minProperties\": 2, \"maxProperties\": 4}", "{}\":,ab1 ", 2, 4, NULL },
        { "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\":"
          " \"integer\"}, \"c\": {}}, \"minProperties\": 2, \"maxProperties\": 2}", "{}\":,abc1 ", 2, 2, NULL },
        { "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"},"
          " \"propertyNames\": {\"enum\": [\"a\", \"ab\", \"b\"]}, \"minProperties\": 1}",
          "{}\":,ab1 ", 1, 3, NULL },
        { "{\"type\": \"object\", \"patternProperties\": {\"^[ab]+$\": {\"type\": \"integer\"}},"
          " \"propertyNames\": {\"maxLength\": 3}, \"minProperties\": 1, \"maxProperties\": 3}",
          "{}\":,abx1 ", 1, 3, "ab" },
    };
    char      err[512];
    size_t    n;
    int32_t  *prog;

    /* a dict's key at the length limit: a character that would not fit
     * whole is refused, the closing quote still taken (a lead byte there
     * once left the key no way to end) */
    prog = compile("{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\"}}",
                   &n, err, sizeof(err));
    if (prog != NULL) {
        char               key[KIMI_SCHEMA_MAX_TEXT + 8];
        kimi_json_state_t  st, t2;
        int                good = 1;

        memset(key, 'k', sizeof(key));
        kimi_json_init_schema(&st, prog);
        good &= kimi_json_feed(&st, "{\"", 2) == 0;
        good &= kimi_json_feed(&st, key, KIMI_SCHEMA_MAX_TEXT - 2) == 0;
        t2 = st;
        good &= kimi_json_feed(&t2, "\xe4", 1) != 0;       /* needs 3 bytes, 2 fit */
        t2 = st;
        good &= kimi_json_feed(&t2, "\xc3\xa9\":1}", 6) == 0 && kimi_json_done(&t2);
        good &= kimi_json_feed(&st, "kk", 2) == 0;        /* 1024 bytes: the limit */
        t2 = st;
        good &= kimi_json_feed(&t2, "k", 1) != 0;
        good &= kimi_json_feed(&st, "\":1}", 4) == 0 && kimi_json_done(&st);
        ok(good, "a dict's key at the %d-byte limit: a character that does not fit whole refused,"
           " the key still ends", KIMI_SCHEMA_MAX_TEXT);
        free(prog);
    }

    schema_cases("property counts", t, sizeof(t) / sizeof(t[0]));
    schema_refusals("property counts", refused, sizeof(refused) / sizeof(refused[0]));

    for (size_t i = 0; i < sizeof(walks) / sizeof(walks[0]); i++) {
        int  stuck, done;
        /* a key written twice is refused by the parse (but for walk 3: a
         * minimum of 1 key, which a repeat cannot break, so repeats are
         * not prevented) */
        int  bad = walk_values(walks[i].schema, walks[i].bytes, 0x9e3779b97f4a7c15ull + i, 400,
                               i == 3 ? 0 : JSON_REJECT_DUPLICATES, walk_keys, &walks[i],
                               &stuck, &done);

        ok(stuck == 0 && bad == 0 && done > 300,
           "property counts walk %zu: %d complete of 400, %d stuck, %d outside [%d, %d], with a"
           " key twice or outside its letters", i, done, stuck, bad, walks[i].lo, walks[i].hi);
    }
}


/* allOf: the members' keywords merged into one schema, a $ref with
 * keywords beside it the same; what cannot merge is refused naming it */
static void
test_schema_allof(void)
{
    static const schema_case_t  t[] = {
        /* OpenAPI-style composition: a base model and its extension */
        { "{\"$defs\": {\"Base\": {\"type\": \"object\", \"properties\": {\"id\": {\"type\": \"integer\"}},"
          " \"required\": [\"id\"]}}, \"allOf\": [{\"$ref\": \"#/$defs/Base\"}, {\"type\": \"object\","
          " \"properties\": {\"name\": {\"type\": \"string\", \"maxLength\": 3}}, \"required\": [\"name\"]}]}",
          "{\"id\": 1, \"name\": \"ab\"}", "{\"id\": 1}" },
        /* a property both members constrain: bounds meet */
        { "{\"type\": \"object\", \"allOf\": [{\"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 0}}},"
          " {\"properties\": {\"n\": {\"maximum\": 9}}, \"required\": [\"n\"]}]}",
          "{\"n\": 9}", "{\"n\": 10}" },
        { "{\"type\": \"object\", \"allOf\": [{\"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 0}}},"
          " {\"properties\": {\"n\": {\"maximum\": 9}}, \"required\": [\"n\"]}]}",
          "{\"n\": 0}", "{\"n\": -1}" },
        /* one member closes the object: the other's extra name is left out */
        { "{\"type\": \"object\", \"allOf\": [{\"properties\": {\"a\": {\"type\": \"boolean\"}},"
          " \"additionalProperties\": false}, {\"properties\": {\"b\": {\"type\": \"boolean\"}}}]}",
          "{\"a\": true}", "{\"b\": true}" },
        /* enum values intersect; type keeps only the values of its type */
        { "{\"type\": \"object\", \"properties\": {\"c\": {\"allOf\": [{\"enum\": [\"r\", \"g\", 1]},"
          " {\"enum\": [\"g\", \"b\", 1]}, {\"type\": \"string\"}]}}, \"required\": [\"c\"]}",
          "{\"c\": \"g\"}", "{\"c\": 1}" },
        /* a $ref with keywords beside it (pydantic's field with a constraint) */
        { "{\"$defs\": {\"S\": {\"type\": \"string\", \"minLength\": 2}}, \"type\": \"object\","
          " \"properties\": {\"s\": {\"$ref\": \"#/$defs/S\", \"maxLength\": 2}}, \"required\": [\"s\"]}",
          "{\"s\": \"ab\"}", "{\"s\": \"abc\"}" },
        /* integer within number: integer */
        { "{\"type\": \"array\", \"items\": {\"allOf\": [{\"type\": \"number\"}, {\"type\": [\"integer\", \"string\"]}]}}",
          "[1, 2]", "[1.5]" },
        /* whole multipleOfs meet at their least common multiple */
        { "{\"type\": \"array\", \"items\": {\"allOf\": [{\"type\": \"integer\", \"multipleOf\": 4},"
          " {\"multipleOf\": 6}]}}", "[12, -24, 0]", "[8]" },
        /* items of both members meet */
        { "{\"allOf\": [{\"type\": \"array\", \"items\": {\"type\": \"integer\", \"minimum\": 0}},"
          " {\"items\": {\"maximum\": 5}, \"maxItems\": 2}]}", "[0, 5]", "[6]" },
    };
    static const schema_refusal_t  bad[] = {
        { "{\"type\": \"object\", \"allOf\": [{\"properties\": {\"a\": {\"type\": \"string\"}},"
          " \"additionalProperties\": false}, {\"properties\": {\"b\": {}}, \"required\": [\"b\"]}]}",
          "\"b\" is required by one member and not allowed" },
        { "{\"type\": \"object\", \"properties\": {\"s\": {\"allOf\": [{\"type\": \"string\", \"pattern\": \"^a\"},"
          " {\"pattern\": \"b$\"}]}}}", "give \"pattern\" different values" },
        { "{\"type\": \"object\", \"properties\": {\"s\": {\"allOf\": [{\"type\": \"string\"}, {\"type\": \"integer\"}]}}}",
          "no common \"type\"" },
        { "{\"type\": \"object\", \"properties\": {\"s\": {\"allOf\": [{\"enum\": [1, 2]}, {\"enum\": [3]}]}}}",
          "have none in common" },
        { "{\"type\": \"object\", \"properties\": {\"s\": {\"allOf\": [{\"const\": \"x\"}, {\"type\": \"integer\"}]}}}",
          "\"const\" is not of a \"type\"" },
        { "{\"type\": \"object\", \"allOf\": [{\"$ref\": \"#/$defs/Missing\"}]}", "\"#/$defs/Missing\": only references" },
    };
    schema_cases("allOf", t, sizeof(t) / sizeof(t[0]));
    schema_refusals("allOf", bad, sizeof(bad) / sizeof(bad[0]));
}


/* a decimal text (no exponent) times 10^12, exactly */
static __int128
dec12(const char *t)
{
    __int128  v = 0;
    int       neg = *t == '-', frac = -1;

    for (t += neg; *t != '\0'; t++) {
        if (*t == '.') {
            frac = 0;
            continue;
        }
        v = v * 10 + (*t - '0');
        frac += frac >= 0;
    }
    for (frac = frac < 0 ? 0 : frac; frac < 12; frac++) {
        v *= 10;
    }
    return neg ? -v : v;
}


/* bounds on a number: every number the recogniser takes whole lies
 * within them, and every one within them is taken (so no prefix of it
 * is refused), on random decimals against exact arithmetic */
static void
test_schema_number_bounds(void)
{
    static const struct { const char *lo, *hi; int lo_ex, hi_ex; } b[] = {
        { "0", "1", 0, 0 }, { "0", "100", 1, 0 }, { "-2.5", "3.75", 0, 1 },
        { "0.001", NULL, 0, 0 }, { NULL, "-10", 0, 0 }, { "5", "10", 0, 0 },
        { "0.000000001", "0.000001", 0, 0 }, { "-1", "-0.5", 1, 1 }, { "0", "0", 0, 0 },
    };
    char      text[256], num[64], arr[80], err[512];
    size_t    n;
    int32_t  *prog;
    int       done, bad = 0, tried = 0, inside = 0;
    uint64_t  r = 88172645463325252ull;

    for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++) {
        int  k = snprintf(text, sizeof(text), "{\"type\": \"array\", \"items\": {\"type\": \"number\"");

        if (b[i].lo != NULL) {
            k += snprintf(text + k, sizeof(text) - k, ", \"%s\": %s",
                          b[i].lo_ex ? "exclusiveMinimum" : "minimum", b[i].lo);
        }
        if (b[i].hi != NULL) {
            k += snprintf(text + k, sizeof(text) - k, ", \"%s\": %s",
                          b[i].hi_ex ? "exclusiveMaximum" : "maximum", b[i].hi);
        }
        snprintf(text + k, sizeof(text) - k, "}}");
        prog = compile(text, &n, err, sizeof(err));
        if (prog == NULL || kimi_json_schema_check(prog, n, err, sizeof(err)) != 0) {
            ok(0, "number bounds %zu compile: %s", i, err);
            free(prog);
            continue;
        }
        for (int t = 0; t < 4000; t++) {
            int  m = 0, il, fl;

            r ^= r << 13; r ^= r >> 7; r ^= r << 17;
            if (r % 5 == 0) {
                num[m++] = '-';
            }
            il = (int) (r >> 8) % 5;            /* 0: "0", else 1-4 digits */
            if (il == 0) {
                num[m++] = '0';
            } else {
                num[m++] = (char) ('1' + (r >> 12) % 9);
                for (int d = 1; d < il; d++) {
                    num[m++] = (char) ('0' + (r >> (16 + 3 * d)) % 10);
                }
            }
            fl = (r >> 32) % 2 ? (int) ((r >> 36) % 11) + 1 : 0;
            if (fl > 0) {
                num[m++] = '.';
                for (int d = 0; d < fl; d++) {
                    num[m++] = (char) ('0' + (r >> (40 + 2 * d)) % 10);
                }
            }
            num[m] = '\0';
            {
                __int128  v = dec12(num);
                int       want = 1, got;

                if (b[i].lo != NULL) {
                    want &= b[i].lo_ex ? v > dec12(b[i].lo) : v >= dec12(b[i].lo);
                }
                if (b[i].hi != NULL) {
                    want &= b[i].hi_ex ? v < dec12(b[i].hi) : v <= dec12(b[i].hi);
                }
                snprintf(arr, sizeof(arr), "[%s]", num);
                got = accepts(prog, arr, &done) && done;
                tried++;
                inside += want;
                if (got != want && bad++ < 5) {
                    printf("# bounds %zu: %s %s\n", i, num, want ? "refused" : "taken");
                }
            }
        }
        /* an exponent never; "-" alone where only positives fit */
        if (accepts(prog, "[1e", &done) || (b[i].lo != NULL && dec12(b[i].lo) >= 0
                                             && accepts(prog, "[-1", &done)))
        {
            bad++;
            printf("# bounds %zu: an exponent or a negative taken\n", i);
        }
        free(prog);
    }
    ok(bad == 0, "number bounds: %d random decimals (%d within) against exact"
       " arithmetic over %zu bound pairs, %d wrong", tried, inside,
       sizeof(b) / sizeof(b[0]), bad);
    prog = compile("{\"type\": \"array\", \"items\": {\"anyOf\": [{\"type\": \"number\","
                   " \"minimum\": 0}, {\"type\": \"number\"}]}}", &n, err, sizeof(err));
    ok(prog != NULL && accepts(prog, "[-1e5, 2]", &done) && done,
       "anyOf of a bounded number and any number: any number (%s)", prog ? "ok" : err);
    free(prog);
    prog = compile("{\"type\": \"array\", \"items\": {\"type\": \"number\", \"minimum\": 2,"
                   " \"exclusiveMaximum\": 2}}", &n, err, sizeof(err));
    ok(prog == NULL && strstr(err, "no number lies within") != NULL,
       "bounds with nothing between them refused: %s", prog ? "(compiled)" : err);
    free(prog);
}


int
main(void)
{
    test_grammar();
    test_sampler();
    test_schema_compile();
    test_schema_grammar();
    test_schema_union_objects();
    test_schema_additional();
    test_schema_tuples();
    test_schema_format_shapes();
    test_schema_allof();
    test_schema_multiple_of();
    test_schema_unique_items();
    test_schema_property_counts();
    test_schema_number_bounds();
    test_schema_sampler();
    test_schema_dead_end();
    test_tool_calls();
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
