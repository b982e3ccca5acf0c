/*
 * Structural tags: the compiler (engine/text/struct_tag.c) on what it
 * takes and refuses, the engine's check of corrupted words, and the
 * recogniser (engine/sample/stag_mode.c) on texts it must accept at every
 * prefix and texts it must refuse, fed whole and byte by byte: triggers
 * split across feeds, the longest of two triggers ending together, a
 * begin equal to its trigger, an empty end, special tokens in free text
 * and inside a structure, no whitespace between a value and its end.
 * xgrammar's nested formats: sequence, or (decided by the fixed text each
 * element starts with), any_text and patterns ended by the text after
 * them, tags in tags, triggered_tags inside a tag (its free text ended by
 * the tag's end), tags_with_separator that may be empty; and what the
 * recogniser could not follow, refused with the format's path.  An or
 * of texts no fixed text decides, as one pattern.  Grammars
 * with recursion (the pushdown recogniser of gram.h) in a tag, in a
 * sequence and matching the empty text; left recursion refused.
 * Then the sampler with Kimi's real tokenizer on random rows: every drawn
 * token keeps the output a prefix the recogniser accepts, and eos comes
 * only where the output may end (the mask's cost a draw printed).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <time.h>

#include "sample/sample.h"
#include "sample/stag_mode.h"
#include "text/kimi_text.h"
#include "text/struct_tag.h"

#include "tap.h"


static int32_t  *words;
static size_t    n_words;
static kimi_stag_t  tag;
/* grammars with recursion: the stacks of two recognisers fed side by side */
static kimi_gram_arena_t  *arena_a, *arena_b;

/* compiles the JSON text into words and tag; 0, or -1 with err */
static int
compile(const char *text, char *err, size_t errlen)
{
    json_error_t  je;
    json_t       *obj = json_loads(text, 0, &je);
    int           rc;

    free(words);
    words = NULL;
    if (obj == NULL) {
        snprintf(err, errlen, "test JSON: %s", je.text);
        return -1;
    }
    rc = kimi_stag_compile(obj, &words, &n_words, err, errlen);
    json_decref(obj);
    if (rc == 0) {
        rc = kimi_stag_view(words, n_words, &tag, err, errlen);
    }
    return rc;
}

/* 1 if every prefix of text is accepted, fed in one piece and byte by
 * byte with the same verdicts; *free_at_end: free text at the end */
static int
accepts(const char *text, int *free_at_end)
{
    kimi_stag_state_t  a, b;
    size_t             n = strlen(text);

    kimi_stag_init(&a, &tag, 0, arena_a);
    for (size_t i = 0; i < n; i++) {
        if (kimi_stag_feed(&a, text + i, 1) != 0) {
            return 0;
        }
    }
    kimi_stag_init(&b, &tag, 0, arena_b);
    if (kimi_stag_feed(&b, text, n) != 0 || b.mode != a.mode) {
        return 0;
    }
    if (free_at_end != NULL) {
        *free_at_end = kimi_stag_is_free(&a);
    }
    return 1;
}

/* 1 if text is accepted (as accepts does) and the output may end there */
static int
ends(const char *text)
{
    kimi_stag_state_t  a;

    if (!accepts(text, NULL)) {
        return 0;
    }
    kimi_stag_init(&a, &tag, 0, arena_a);
    return kimi_stag_feed(&a, text, strlen(text)) == 0 && kimi_stag_may_end(&a);
}


/* Random 163840-entry rows drawn under the tag in words/tag: every token
 * the sampler gives must keep the recogniser's prefix valid, and an eos
 * may come only where kimi_stag_may_end holds.  eos and the trigger's
 * tokens are pushed up so that runs both open structures and end (push:
 * one more token's text, what closes a grammar's nesting). */
static void
sample_runs(const char *what, int runs, int steps, const char *push)
{
    kimi_tokenizer_t    *tok;
    kimi_sampler_t      *smp;
    kimi_err_t           e;
    kimi_shm_sampling_t  sp;
    kimi_sample_out_t    out;
    kimi_sample_req_t    req;
    kimi_rng_t           rng, draw;
    kimi_stag_state_t    st;
    struct timespec      t0, t1;
    float               *row;
    int32_t             *w, seq[512], eos[2], lt = -1, up = -1;
    uint32_t             vocab = 163840, bad = 0, ended = 0, inside = 0, calls = 0;
    double               secs = 0;
    const char          *b;
    size_t               len;

    if (kimi_tokenizer_load(&tok, tap_model_dir(), &e) != 0) {
        ok(0, "tokenizer loads: %s", e.msg);
        return;
    }
    eos[0] = kimi_tokenizer_special_id(tok, "<|im_end|>");
    eos[1] = kimi_tokenizer_special_id(tok, "[EOS]");
    row = malloc(vocab * sizeof(float));
    w = malloc((n_words + 1) * sizeof(int32_t));
    if (row == NULL || w == NULL || kimi_sampler_init(&smp, vocab, &e) != 0) {
        ok(0, "sampler: %s", e.msg);
        return;
    }
    w[0] = KIMI_STAG_TAG;
    memcpy(w + 1, words, n_words * sizeof(int32_t));
    for (int32_t i = 0; i < (int32_t) vocab; i++) {
        const char  *cb = kimi_token_bytes(tok, i, &len);

        if (cb != NULL && len == 1 && cb[0] == '<') {
            lt = i;
        }
        if (cb != NULL && push != NULL && len == strlen(push)
            && memcmp(cb, push, len) == 0)
        {
            up = i;
        }
    }
    kimi_rng_seed(&rng, 9);

    for (int run = 0; run < runs; run++) {
        uint32_t  n = 1;

        memset(&sp, 0, sizeof(sp));
        sp.temperature = 1.0f;
        sp.top_p = 1.0f;
        sp.repetition_penalty = 1.0f;
        sp.max_tokens = (uint32_t) steps;
        kimi_rng_seed(&draw, 400 + run);
        seq[0] = 1000;
        kimi_stag_init(&st, &tag, 0, arena_a);

        for (int step = 0; step < steps && n < 512; step++) {
            for (uint32_t i = 0; i < vocab; i++) {
                row[i] = (float) (kimi_rng_uniform(&rng) * 8.0);
            }
            row[lt] += 12.0f;                   /* triggers come often */
            if (up >= 0) {
                row[up] += 10.0f;               /* and what closes nesting */
            }
            row[eos[0]] += step > steps / 2 ? 14.0f : 4.0f;
            memset(&req, 0, sizeof(req));
            req.sampling = &sp;
            req.tokens = seq;
            req.n_prompt = 1;
            req.n_output = n - 1;
            req.rng = &draw;
            req.eos_ids = eos;
            req.n_eos = 2;
            req.tokenizer = tok;
            req.guided = w;
            req.n_guided = (uint32_t) n_words + 1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (kimi_sampler_sample(smp, row, &req, &out, &e) != 0) {
                bad++;
                break;
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            secs += (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
            calls++;
            if (out.tok.token == eos[0] || out.tok.token == eos[1]) {
                bad += !kimi_stag_may_end(&st);
                ended++;
                break;
            }
            if (kimi_tokenizer_is_special(tok, out.tok.token)) {
                bad += kimi_stag_special(&st) != 0;
            } else {
                b = kimi_token_bytes(tok, out.tok.token, &len);
                bad += kimi_stag_feed(&st, b, len) != 0;
            }
            inside += st.mode != KIMI_STAG_FREE;
            seq[n++] = out.tok.token;
        }
    }
    ok(bad == 0 && ended > 0 && inside > 0, "%s: %d runs of random rows:"
       " every token keeps a valid prefix, eos only where it may end (%u bad,"
       " %u ended, %u of %u tokens inside a structure)", what, runs, bad,
       ended, inside, calls);
    printf("# %s: %.0f us a draw (163840-entry rows, %u draws)\n", what,
           1e6 * secs / calls, calls);
    kimi_sampler_free(smp);
    kimi_tokenizer_free(tok);
    free(row);
    free(w);
}


int
main(void)
{
    char                err[256];
    int                 fr = -1, rc;
    kimi_stag_state_t   s, c;

    arena_a = kimi_gram_arena_new();
    arena_b = kimi_gram_arena_new();
    if (arena_a == NULL || arena_b == NULL) {
        return 1;
    }

    /* ---- compile: two structures behind one trigger ---- */
    rc = compile("{\"triggers\": [\"<fn=\"], \"structures\": ["
               "{\"begin\": \"<fn=get>\", \"end\": \"</fn>\", \"schema\":"
               " {\"type\": \"object\", \"properties\": {\"city\": {\"type\":"
               " \"string\"}}, \"required\": [\"city\"]}},"
               "{\"begin\": \"<fn=put>\", \"end\": \"</fn>\", \"schema\":"
               " {\"type\": \"object\", \"properties\": {\"n\": {\"type\":"
               " \"integer\"}}, \"required\": [\"n\"]}}]}", err, sizeof(err));
    ok(rc == 0, "two structures behind one trigger compile and check%s%s",
       rc ? ": " : "", rc ? err : "");
    ok(tag.n_node == 5 && tag.node[0].type == KIMI_STAG_N_TRIG
       && tag.node[0].len == 1 && tag.node[0].n_child == 2
       && tag.node[3].type == KIMI_STAG_N_TAG && tag.node[3].len == 8
       && tag.node[1].end_len == 5 && tag.node[4].type == KIMI_STAG_N_JSON,
       "the view: triggered tags, 1 trigger, 2 tags (begins of 8, ends of 5)"
       " of JSON");

    ok(accepts("plain text, no trigger at all <fn", &fr) && fr,
       "free text with a partial trigger at its end: accepted, free");
    ok(accepts("call <fn=get>{\"city\": \"Paris\"}</fn> then <fn=put>{\"n\":"
               " 3}</fn>.", &fr) && fr,
       "two structures in free text: accepted, free again after each");
    ok(accepts("x <fn=get> {\"city\": \"Oslo\"}</fn>", &fr) && fr,
       "whitespace before the value: accepted");
    ok(accepts("<fn=get>{\"city\": \"Ro", &fr) && !fr,
       "inside a structure's value: a prefix, not free");
    ok(!accepts("<fn=get>{\"city\": \"Rome\"} </fn>", NULL),
       "whitespace between the value and the end: refused");
    ok(!accepts("<fn=got>", NULL), "a begin no structure has: refused");
    ok(!accepts("<fn=get>{\"n\": 1}</fn>", NULL),
       "a value its schema refuses (property n under get): refused");
    ok(!accepts("<fn=get>{\"city\": \"Rome\"}</fx>", NULL),
       "a wrong end text: refused");
    ok(!accepts("<fn=get>[1]</fn>", NULL), "an array for an object schema: refused");

    /* specials: in free text they pass and break a trigger being matched */
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(kimi_stag_feed(&s, "a <fn", 5) == 0 && kimi_stag_special(&s) == 0
       && kimi_stag_feed(&s, "=get>", 5) == 0 && kimi_stag_is_free(&s),
       "a special token between \"<fn\" and \"=get>\": no trigger, free text");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(kimi_stag_feed(&s, "<fn=put>{", 9) == 0 && kimi_stag_special(&s) != 0,
       "a special token inside a structure: refused");

    /* the fast path: a token without a trigger's last byte passes unread */
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(!kimi_stag_must_feed(&s, "hello", 5)
       && kimi_stag_must_feed(&s, "a=b", 3),
       "only bytes holding a trigger's last byte ('=') need feeding");

    /* copies are independent */
    kimi_stag_init(&s, &tag, 0, arena_a);
    kimi_stag_feed(&s, "go <fn=get>{\"city\": ", 20);
    kimi_stag_copy(&c, &s);
    ok(kimi_stag_feed(&c, "\"A\"}</fn>", 9) == 0 && kimi_stag_is_free(&c)
       && !kimi_stag_is_free(&s) && kimi_stag_feed(&s, "\"B\"}</fn>", 9) == 0,
       "a copy of the state goes on alone");

    /* no whitespace in the value (disable_any_whitespace) */
    kimi_stag_init(&s, &tag, 1, arena_a);
    ok(kimi_stag_feed(&s, "<fn=put>{\"n\": 2}", 16) != 0,
       "no_ws: a space inside the value is refused");

    /* ---- longest trigger; begin = trigger; empty end ---- */
    rc = compile("{\"triggers\": [\"=\", \"a=\"], \"structures\": ["
               "{\"begin\": \"a=\", \"end\": \"\", \"schema\": {\"type\":"
               " \"array\", \"items\": {\"type\": \"integer\"}}},"
               "{\"begin\": \"=(\", \"end\": \")\", \"schema\": null}]}",
               err, sizeof(err));
    ok(rc == 0, "two triggers, one a suffix of the other, an empty end, a"
       " null schema: compile%s%s", rc ? ": " : "", rc ? err : "");
    ok(accepts("xa=[1,2] y =({\"k\": [true]}) z", &fr) && fr,
       "\"a=\" opens its array (the longer trigger), \"=\" its own");
    ok(!accepts("xa=(", NULL), "after \"a=\" the array structure only");
    ok(accepts("=({}", &fr) && !fr, "a null schema: any object, then the end");

    /* ---- xgrammar's format form, its two options ---- */
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"json_schema\", \"json_schema\": {\"type\":"
                 " \"object\"}}, \"end\": \"</a>\"}], \"stop_after_first\": true,"
                 " \"at_least_one\": true}}", err, sizeof(err));
    ok(rc == 0 && tag.node[0].flags == (KIMI_STAG_AT_LEAST_ONE
                                        | KIMI_STAG_STOP_AFTER)
       && tag.node[0].n_child == 1, "format triggered_tags: one structure,"
       " both flags%s%s", rc ? ": " : "", rc ? err : "");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(!kimi_stag_may_end(&s) && kimi_stag_feed(&s, "<a>{}</a>", 9) == 0
       && kimi_stag_may_end(&s) && s.mode == KIMI_STAG_DONE
       && kimi_stag_feed(&s, " ", 1) != 0,
       "at_least_one: no end before a structure; stop_after_first: nothing"
       " after it");
    ok(!accepts("hi <a>", NULL), "at_least_one: the first tag at once, no"
       " text before it (xgrammar)");
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"json_schema\", \"json_schema\": {\"type\":"
                 " \"object\"}}, \"end\": \"</a>\"}], \"at_least_one\": true}}",
                 err, sizeof(err));
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(rc == 0 && !kimi_stag_may_end(&s)
       && kimi_stag_feed(&s, "<a>{}</a> and <a>{}</a>", 23) == 0
       && kimi_stag_may_end(&s) && kimi_stag_is_free(&s),
       "at_least_one alone: a tag first, then free text and more tags");
    /* any_text up to its end; a constant */
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<think>\", \"content\":"
                 " {\"type\": \"any_text\"}, \"end\": \"</think>\"},"
                 " {\"begin\": \"<ok>\", \"content\": {\"type\":"
                 " \"const_string\", \"value\": \"yes\"}, \"end\": \"\"}]}}",
                 err, sizeof(err));
    ok(rc == 0 && tag.node[2].type == KIMI_STAG_N_TEXT
       && tag.node[4].type == KIMI_STAG_N_CONST && tag.node[4].len == 3,
       "any_text and const_string contents compile%s%s", rc ? ": " : "",
       rc ? err : "");
    ok(accepts("a <think>x < y </thin </think> then <ok>yes and", &fr) && fr,
       "any_text runs to its end text (a '<' or a partial end inside is"
       " text), then free text; the constant, then free text");
    ok(accepts("<think>still thinking </th", &fr) && !fr,
       "inside any text: a prefix, not free");
    ok(!accepts("<ok>yep", NULL), "a constant's other text: refused");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(kimi_stag_feed(&s, "<think>a", 8) == 0 && kimi_stag_special(&s) != 0,
       "a special token inside any text: refused");
    kimi_stag_init(&s, &tag, 0, arena_a);
    kimi_stag_feed(&s, "<think>", 7);
    ok(!kimi_stag_must_feed(&s, "abc", 3) && kimi_stag_must_feed(&s, "x>", 2),
       "inside any text only bytes holding the end's last byte need feeding");
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"any_text\"}, \"end\": \"\"}]}}", err,
                 sizeof(err));
    ok(rc != 0 && strstr(err, "needs an end text") != NULL,
       "any_text without an end: %s", err);
    /* a pattern, closed by the first end text written after a match */
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<n>\", \"content\":"
                 " {\"type\": \"regex\", \"pattern\": \"[0-9]+(;[0-9]+)*\"},"
                 " \"end\": \";;\"}]}}", err, sizeof(err));
    ok(rc == 0 && tag.node[2].type == KIMI_STAG_N_REGEX, "a regex content"
       " compiles%s%s", rc ? ": " : "", rc ? err : "");
    ok(accepts("x <n>12;3;45;; y", &fr) && fr,
       "the match, its ';' going on, then the end \";;\" closes it");
    ok(accepts("<n>12;", &fr) && !fr, "\"12;\": the match or the end begun");
    ok(!accepts("<n>;;", NULL), "the end before any match: refused");
    ok(!accepts("<n>1a", NULL), "text the pattern refuses: refused");
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"regex\", \"pattern\": \"x\"}, \"end\":"
                 " \"\"}]}}", err, sizeof(err));
    ok(rc != 0 && strstr(err, "needs an end text") != NULL,
       "a regex content without an end: %s", err);
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"regex\", \"pattern\": \"(a\"}, \"end\":"
                 " \">\"}]}}", err, sizeof(err));
    ok(rc != 0 && strstr(err, "the pattern of format.tags[0].content")
       != NULL,
       "a pattern that does not compile: %s", err);
    /* a grammar without recursion, as a pattern (ebnf.h) */
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"grammar\", \"grammar\": \"root ::= ans (\\\" \\\""
                 " ans)*\\nans ::= \\\"yes\\\" | \\\"no\\\"\"}, \"end\": \"!\"}]}}",
                 err, sizeof(err));
    ok(rc == 0 && tag.node[2].type == KIMI_STAG_N_REGEX, "a grammar content"
       " compiles as a pattern%s%s", rc ? ": " : "", rc ? err : "");
    ok(accepts("so <a>yes no yes! ok", &fr) && fr && !accepts("<a>maybe!", NULL),
       "the grammar's text, closed by its end; other text refused");
    /* a grammar with recursion: run by the pushdown recogniser (gram.h),
     * ended by the text after it as a pattern is */
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"grammar\", \"grammar\": \"root ::= \\\"(\\\" root"
                 " \\\")\\\" | \\\"x\\\"\"}, \"end\": \"!\"}]}}", err, sizeof(err));
    ok(rc == 0 && tag.node[2].type == KIMI_STAG_N_GRAM && kimi_stag_has_gram(&tag),
       "a recursive grammar content compiles as a grammar%s%s", rc ? ": " : "",
       rc ? err : "");
    ok(accepts("so <a>((x))! then <a>x! ok", &fr) && fr
       && accepts("<a>(((", NULL) && !accepts("<a>((x)!", NULL)
       && !accepts("<a>(x))!", NULL) && !accepts("<a>!", NULL)
       && !accepts("<a>(y)!", NULL),
       "balanced parentheses closed by the end; the end before the match"
       " is whole, an extra ')', an empty match, another byte refused");
    {
        char  deep[200];
        int   k = snprintf(deep, sizeof(deep), "<a>");

        for (int i = 0; i < 60; i++) {
            deep[k++] = '(';
        }
        deep[k++] = 'x';
        for (int i = 0; i < 60; i++) {
            deep[k++] = ')';
        }
        deep[k++] = '!';
        deep[k] = '\0';
        ok(accepts(deep, &fr) && fr, "60 nested parentheses (the depth bound"
           " is %d)", KIMI_GRAM_MAX_DEPTH);
    }
    /* recursion that may match nothing, in a sequence, the output's end
     * after it */
    rc = compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
                 " {\"type\": \"const_string\", \"value\": \"A=\"},"
                 " {\"type\": \"grammar\", \"grammar\": \"root ::= \\\"\\\" |"
                 " \\\"[\\\" root \\\"]\\\" root\"}, {\"type\": \"const_string\","
                 " \"value\": \";\"}]}}", err, sizeof(err));
    ok(rc == 0 && tag.node[2].nullable, "a nullable recursive grammar in a"
       " sequence%s%s", rc ? ": " : "", rc ? err : "");
    ok(ends("A=;") && ends("A=[][[]];") && accepts("A=[[]", NULL)
       && !accepts("A=[;", NULL) && !accepts("A=]", NULL) && !ends("A=[]"),
       "Dyck words between two fixed texts, the empty one too");
    rc = compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<e>\","
                 " \"content\": {\"type\": \"grammar\", \"grammar\": \"root ::="
                 " e\\ne ::= e \\\"+\\\" t | t\\nt ::= \\\"1\\\"\"}, \"end\":"
                 " \"</e>\"}}", err, sizeof(err));
    ok(rc != 0 && strstr(err, "the grammar of format.content") != NULL
       && strstr(err, "left-recursive") != NULL,
       "a left-recursive grammar refused: %s", err);
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"optional\", \"content\": {}}, \"end\":"
                 " \"\"}]}}", err, sizeof(err));
    ok(rc != 0 && strstr(err, "\"optional\" is not supported") != NULL,
       "a content of another type: %s", err);

    /* ---- the forced formats: one tag; tags with a separator ---- */
    rc = compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<f>\","
                 " \"content\": {\"type\": \"json_schema\", \"json_schema\":"
                 " {\"type\": \"object\"}}, \"end\": \"</f>\"}}", err,
                 sizeof(err));
    ok(rc == 0 && tag.node[0].type == KIMI_STAG_N_TAG,
       "format tag: forced, no trigger%s%s", rc ? ": " : "", rc ? err : "");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(!kimi_stag_may_end(&s) && !accepts("x<f>{}</f>", NULL)
       && accepts("<f>{\"a\": 1}</f>", NULL),
       "format tag: the whole output is the tag (no text before it)");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(kimi_stag_feed(&s, "<f>{}</f>", 9) == 0 && kimi_stag_may_end(&s)
       && kimi_stag_feed(&s, "<", 1) != 0, "... and nothing after it");
    rc = compile("{\"format\": {\"type\": \"tags_with_separator\","
                 " \"separator\": \", \", \"at_least_one\": true, \"tags\":"
                 " [{\"begin\": \"<a>\", \"content\": {\"type\":"
                 " \"const_string\", \"value\": \"1\"}, \"end\": \"</a>\"},"
                 " {\"begin\": \"<b>\", \"content\": {\"type\": \"any_text\"},"
                 " \"end\": \"</b>\"}]}}", err, sizeof(err));
    ok(rc == 0 && tag.node[0].type == KIMI_STAG_N_SEPTAGS
       && tag.node[0].len == 2, "format tags_with_separator%s%s",
       rc ? ": " : "", rc ? err : "");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(!kimi_stag_may_end(&s) && kimi_stag_feed(&s, "<a>1</a>", 8) == 0
       && kimi_stag_may_end(&s) && kimi_stag_feed(&s, ", ", 2) == 0
       && !kimi_stag_may_end(&s) && kimi_stag_feed(&s, "<b>hi</b>", 9) == 0
       && kimi_stag_may_end(&s),
       "tags with a separator: at least one, then \", \" + another; no end"
       " after a separator");
    ok(!accepts("<a>1</a><b>x</b>", NULL) && !accepts("hi <a>1</a>", NULL),
       "no tag without its separator, no free text");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(kimi_stag_special(&s) != 0, "forced: no special token anywhere");

    /* ---- sequence: its elements one after another ---- */
    rc = compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
                 "{\"type\": \"const_string\", \"value\": \"Answer: \"},"
                 " {\"type\": \"json_schema\", \"json_schema\": {\"type\":"
                 " \"object\", \"properties\": {\"n\": {\"type\":"
                 " \"integer\"}}, \"required\": [\"n\"]}}]}}", err,
                 sizeof(err));
    ok(rc == 0 && tag.node[0].type == KIMI_STAG_N_SEQ
       && tag.node[0].n_child == 2, "sequence of a const_string and a JSON"
       " value compiles%s%s", rc ? ": " : "", rc ? err : "");
    ok(accepts("Answer: {\"n\": 12}", NULL) && ends("Answer: {\"n\": 12}")
       && !ends("Answer: ") && !ends("Answer: {\"n\": 1"),
       "the constant, then the value: accepted at every prefix, ends after"
       " the value only");
    ok(!accepts("Answer {", NULL) && !accepts("Answer: {\"m\": 1}", NULL)
       && !accepts("Answer: {\"n\": 1} ", NULL),
       "another constant, a value its schema refuses, text after: refused");

    /* ---- or: exactly one of its elements, told by its first text ---- */
    rc = compile("{\"format\": {\"type\": \"or\", \"elements\": ["
                 "{\"type\": \"tag\", \"begin\": \"<a>\", \"content\":"
                 " {\"type\": \"const_string\", \"value\": \"x\"}, \"end\":"
                 " \"</a>\"}, {\"type\": \"tag\", \"begin\": \"<b>\","
                 " \"content\": {\"type\": \"json_schema\", \"json_schema\":"
                 " {\"type\": \"array\"}}, \"end\": \"</b>\"},"
                 " {\"type\": \"const_string\", \"value\": \"none\"}]}}",
                 err, sizeof(err));
    ok(rc == 0, "or of two tags and a constant compiles%s%s", rc ? ": " : "",
       rc ? err : "");
    ok(ends("<a>x</a>") && ends("<b>[1, 2]</b>") && ends("none")
       && accepts("<b>[", NULL) && !ends("<b>[1]"),
       "each element alone: accepted, complete");
    ok(!accepts("<a>[]</a>", NULL) && !accepts("<c>", NULL)
       && !accepts("<a>x</a><b>", NULL) && !accepts("non!", NULL)
       && accepts("no", NULL) && !ends("no"),
       "the wrong content, no element's begin, a second element: refused");
    ok(compile("{\"format\": {\"type\": \"or\", \"elements\": ["
               "{\"type\": \"tag\", \"begin\": \"<a\", \"content\": {\"type\":"
               " \"any_text\"}, \"end\": \">\"}, {\"type\": \"tag\", \"begin\":"
               " \"<ab\", \"content\": {\"type\": \"any_text\"}, \"end\":"
               " \">\"}]}}", err, sizeof(err)) != 0
       && strstr(err, "one a prefix of the other") != NULL,
       "or of begins one a prefix of the other: %s", err);
    /* an or of JSON values: one value, the anyOf of their schemas */
    rc = compile("{\"format\": {\"type\": \"or\", \"elements\": ["
                 "{\"type\": \"json_schema\", \"json_schema\": {\"type\":"
                 " \"object\", \"properties\": {\"op\": {\"const\": \"add\"},"
                 " \"n\": {\"type\": \"integer\"}}, \"required\": [\"op\", \"n\"]}},"
                 " {\"type\": \"json_schema\", \"json_schema\": {\"type\":"
                 " \"object\", \"properties\": {\"op\": {\"const\": \"clear\"}},"
                 " \"required\": [\"op\"]}}, {\"type\": \"json_schema\","
                 " \"json_schema\": {\"type\": \"array\", \"items\": {\"type\":"
                 " \"integer\"}}}]}}", err, sizeof(err));
    ok(rc == 0 && tag.node[0].type == KIMI_STAG_N_JSON, "an or of three JSON"
       " values compiles as one value%s%s", rc ? ": " : "", rc ? err : "");
    ok(ends("{\"op\": \"add\", \"n\": 2}") && ends("{\"op\": \"clear\"}")
       && ends("[1, 2]") && !ends("{\"op\": \"add\"}")
       && !accepts("{\"op\": \"clear\", \"n", NULL) && !accepts("\"x", NULL),
       "... each alternative, told apart by its first byte and its \"op\"");
    ok(compile("{\"format\": {\"type\": \"or\", \"elements\": ["
               "{\"type\": \"json_schema\", \"json_schema\": {\"type\":"
               " \"object\"}}, {\"type\": \"json_schema\", \"json_schema\":"
               " {\"type\": \"string\"}}]}}", err, sizeof(err)) != 0
       && strstr(err, "top level must be an object or an array") != NULL,
       "or of an object and a string: %s", err);
    /* an or of texts no fixed text decides: one pattern, their union */
    rc = compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<v>\","
                 " \"content\": {\"type\": \"or\", \"elements\": [{\"type\":"
                 " \"regex\", \"pattern\": \"^[0-9]+$\"}, {\"type\":"
                 " \"const_string\", \"value\": \"none\"}, {\"type\":"
                 " \"const_string\", \"value\": \"n/a (1.5)\"}, {\"type\":"
                 " \"grammar\", \"grammar\": \"root ::= \\\"x\\\" [a-c]{2}\"}]},"
                 " \"end\": \"</v>\"}}", err, sizeof(err));
    ok(rc == 0 && tag.node[1].type == KIMI_STAG_N_REGEX, "an or of a regex,"
       " constants and a grammar compiles as one pattern%s%s", rc ? ": " : "",
       rc ? err : "");
    ok(ends("<v>42</v>") && ends("<v>none</v>") && ends("<v>n/a (1.5)</v>")
       && ends("<v>xab</v>") && !accepts("<v>n/a (1x5)", NULL)
       && !accepts("<v>4a", NULL) && !accepts("<v>nonx", NULL)
       && !accepts("<v></v>", NULL) && !accepts("<v>xa</v>", NULL),
       "one of the texts, whole, then the end; metacharacters of a constant"
       " taken literally; anchors of a regex dropped");
    rc = compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
                 " {\"type\": \"or\", \"elements\": [{\"type\": \"const_string\","
                 " \"value\": \"ab\"}, {\"type\": \"const_string\", \"value\":"
                 " \"abc\"}, {\"type\": \"regex\", \"pattern\": \"x+\"}]},"
                 " {\"type\": \"const_string\", \"value\": \";\"}]}}", err,
                 sizeof(err));
    ok(rc == 0 && ends("ab;") && ends("abc;") && ends("xxx;") && !accepts("abx", NULL)
       && !accepts("a;", NULL), "constants one a prefix of another beside a"
       " regex: the text after them decides%s%s", rc ? ": " : "", rc ? err : "");
    /* with a grammar whose rules refer back to themselves among them: one
     * grammar program (each grammar's rules renamed apart) */
    rc = compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<v>\","
                 " \"content\": {\"type\": \"or\", \"elements\": [{\"type\":"
                 " \"regex\", \"pattern\": \"^[0-9]+$\"}, {\"type\": \"grammar\","
                 " \"grammar\": \"root ::= \\\"(\\\" root \\\")\\\" | x\\nx ::="
                 " \\\"x\\\"\"}, {\"type\": \"grammar\", \"grammar\": \"root ::="
                 " \\\"[\\\" root? \\\"]\\\"\"}, {\"type\": \"const_string\","
                 " \"value\": \"a|b\"}]}, \"end\": \"</v>\"}}", err, sizeof(err));
    ok(rc == 0 && tag.node[1].type == KIMI_STAG_N_GRAM, "an or of texts with"
       " recursive grammars compiles as one grammar%s%s", rc ? ": " : "",
       rc ? err : "");
    ok(ends("<v>42</v>") && ends("<v>((x))</v>") && ends("<v>[[[]]]</v>")
       && ends("<v>a|b</v>") && !accepts("<v>((x)</v>", NULL)
       && !accepts("<v>([])</v>", NULL) && !accepts("<v>a</v>", NULL)
       && !accepts("<v>4x", NULL),
       "each alternative whole, none mixed with another");
    ok(compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<v>\","
               " \"content\": {\"type\": \"or\", \"elements\": [{\"type\":"
               " \"regex\", \"pattern\": \"[0-9]+\"}, {\"type\": \"grammar\","
               " \"grammar\": \"root ::= root \\\"a\\\" | \\\"(\\\" root \\\")\\\" | \\\"b\\\"\"}]},"
               " \"end\": \"</v>\"}}", err, sizeof(err)) != 0
       && strstr(err, "grammar rule \"root\" is left-recursive") != NULL,
       "a left-recursive grammar among the texts, its rule named: %s", err);
    ok(compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<v>\","
               " \"content\": {\"type\": \"or\", \"elements\": [{\"type\":"
               " \"regex\", \"pattern\": \"[0-9\"}, {\"type\": \"const_string\","
               " \"value\": \"n\"}]}, \"end\": \"</v>\"}}", err, sizeof(err)) != 0
       && strstr(err, "the pattern of format.content.elements[0]") != NULL,
       "a bad pattern among the texts, named: %s", err);
    ok(compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
               " {\"type\": \"or\", \"elements\": [{\"type\": \"regex\","
               " \"pattern\": \"[0-9]+\"}, {\"type\": \"const_string\", \"value\":"
               " \"n\"}]}, {\"type\": \"any_text\"}]}}", err, sizeof(err)) != 0
       && strstr(err, "needs an end text") != NULL,
       "an or of texts needs an end text, as a pattern: %s", err);

    /* ---- xgrammar's recipe: think, then tool calls in free text ---- */
    rc = compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
                 "{\"type\": \"tag\", \"begin\": \"<think>\", \"content\":"
                 " {\"type\": \"any_text\"}, \"end\": \"</think>\"},"
                 " {\"type\": \"triggered_tags\", \"triggers\": [\"<fn=\"],"
                 " \"tags\": [{\"begin\": \"<fn=f>\", \"content\": {\"type\":"
                 " \"json_schema\", \"json_schema\": {\"type\": \"object\"}},"
                 " \"end\": \"</fn>\"}]}]}}", err, sizeof(err));
    ok(rc == 0, "sequence of a think tag and triggered tags compiles%s%s",
       rc ? ": " : "", rc ? err : "");
    ok(accepts("<think>a < b </th</think>so <fn=f>{\"x\": 1}</fn> ok", &fr)
       && fr && ends("<think></think>") && !ends("<think>x"),
       "the think tag (its end ends its text), then free text with a tag");
    ok(!accepts("so", NULL) && !accepts("<think>x</think><fn=g", NULL),
       "free text before the think tag, a begin no tag has: refused");

    /* ---- any_text ends where the text after it is first written ---- */
    rc = compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
                 "{\"type\": \"any_text\"}, {\"type\": \"const_string\","
                 " \"value\": \"END\"}]}}", err, sizeof(err));
    ok(rc == 0 && accepts("abc EN dEND", NULL) && ends("abc EN dEND")
       && !ends("abc EN") && !accepts("xENDy", NULL) && ends("END"),
       "any_text then a constant: the first \"END\" ends the text%s%s",
       rc ? ": " : "", rc ? err : "");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(!kimi_stag_must_feed(&s, "abc", 3) && kimi_stag_must_feed(&s, "xD", 2),
       "... only bytes holding the constant's last byte need feeding");
    rc = compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<t>\","
                 " \"content\": {\"type\": \"sequence\", \"elements\": ["
                 "{\"type\": \"any_text\"}, {\"type\": \"const_string\","
                 " \"value\": \"|\"}, {\"type\": \"regex\", \"pattern\":"
                 " \"[0-9]+\"}]}, \"end\": \"</t>\"}}", err, sizeof(err));
    ok(rc == 0 && ends("<t>a b|12</t>") && accepts("<t>a b|1", NULL)
       && !ends("<t>a b|</t>"), "a tag of any_text, \"|\" and a pattern: the"
       " pattern closed by the tag's end%s%s", rc ? ": " : "", rc ? err : "");
    ok(!accepts("<t>a</t>", NULL) && !accepts("<t>a|b", NULL),
       "the tag's end inside its any_text (xgrammar's excludes), a byte the"
       " pattern refuses: refused");
    ok(compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
               "{\"type\": \"any_text\"}, {\"type\": \"json_schema\","
               " \"json_schema\": {\"type\": \"object\"}}]}}", err,
               sizeof(err)) != 0
       && strstr(err, "format.elements[0]: any_text needs an end text")
          != NULL, "any_text before a JSON value: %s", err);
    ok(compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
               "{\"type\": \"regex\", \"pattern\": \"a+\"}, {\"type\": \"or\","
               " \"elements\": [{\"type\": \"const_string\", \"value\":"
               " \"x\"}, {\"type\": \"const_string\", \"value\": \"y\"}]}]}}",
               err, sizeof(err)) != 0
       && strstr(err, "needs an end text") != NULL,
       "a pattern before a choice of texts: %s", err);

    /* ---- nested: a tag in a tag in triggered tags; triggered tags in a
     * tag, its free text ended by the tag's end ---- */
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<o\"], \"tags\": [{\"begin\": \"<outer>\", \"content\":"
                 " {\"type\": \"tag\", \"begin\": \"<in>\", \"content\":"
                 " {\"type\": \"json_schema\", \"json_schema\": {\"type\":"
                 " \"object\"}}, \"end\": \"</in>\"}, \"end\":"
                 " \"</outer>\"}]}}", err, sizeof(err));
    ok(rc == 0 && accepts("x <outer><in>{}</in></outer> y <", &fr) && fr
       && !accepts("<outer>{}", NULL), "a tag inside a tag in triggered"
       " tags%s%s", rc ? ": " : "", rc ? err : "");
    rc = compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<r>\","
                 " \"content\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<f\"], \"tags\": [{\"begin\": \"<f>\", \"content\":"
                 " {\"type\": \"const_string\", \"value\": \"1\"}, \"end\":"
                 " \"</f>\"}]}, \"end\": \"</r>\"}}", err, sizeof(err));
    ok(rc == 0 && ends("<r>text <f>1</f> more</r>") && accepts("<r>a <f", NULL)
       && !ends("<r>a") && !accepts("<r></r>x", NULL) && !accepts("<r><fx",
                                                                 NULL),
       "triggered tags inside a tag: free text and tags up to the end%s%s",
       rc ? ": " : "", rc ? err : "");
    kimi_stag_init(&s, &tag, 0, arena_a);
    ok(kimi_stag_feed(&s, "<r>a", 4) == 0 && kimi_stag_special(&s) == 0,
       "... a special token in that free text passes");
    ok(compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<r>\","
               " \"content\": {\"type\": \"triggered_tags\", \"triggers\":"
               " [\"<\"], \"tags\": [{\"begin\": \"<f>\", \"content\":"
               " {\"type\": \"any_text\"}, \"end\": \"</f>\"}]}, \"end\":"
               " \"</r>\"}}", err, sizeof(err)) != 0
       && strstr(err, "trigger \"<\" is inside \"</r>\"") != NULL,
       "a trigger inside the end that ends the free text: %s", err);

    /* ---- tags_with_separator that may be empty, then a constant ---- */
    rc = compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
                 "{\"type\": \"tags_with_separator\", \"separator\": \",\","
                 " \"tags\": [{\"begin\": \"<a>\", \"content\": {\"type\":"
                 " \"regex\", \"pattern\": \"[0-9]\"}, \"end\": \"</a>\"}]},"
                 " {\"type\": \"const_string\", \"value\": \".\"}]}}", err,
                 sizeof(err));
    ok(rc == 0 && ends(".") && ends("<a>1</a>,<a>2</a>.")
       && !accepts("<a>1</a>,.", NULL) && !ends("<a>1</a>"),
       "no tag or tags and separators, then \".\"%s%s", rc ? ": " : "",
       rc ? err : "");

    /* ---- the whole output any text; what is not supported ---- */
    rc = compile("{\"format\": {\"type\": \"any_text\"}}", err, sizeof(err));
    ok(rc == 0 && ends("") && ends("anything </at> all"),
       "any_text alone: any output, ending anywhere");
    ok(compile("{\"format\": {\"type\": \"any_text\", \"excludes\": [\"x\"]}}",
               err, sizeof(err)) != 0 && strstr(err, "\"excludes\" is not"
                                                " supported") != NULL,
       "any_text excludes: %s", err);
    ok(compile("{\"format\": {\"type\": \"tag\", \"begin\": \"<a>\","
               " \"content\": {\"type\": \"any_text\"}, \"end\": [\"</a>\","
               " \"</b>\"]}}", err, sizeof(err)) != 0
       && strstr(err, "list of end texts") != NULL, "a list of ends: %s", err);
    ok(compile("{\"format\": {\"type\": \"json_schema\", \"json_schema\": {},"
               " \"style\": \"qwen_xml\"}}", err, sizeof(err)) != 0
       && strstr(err, "\"style\"") != NULL, "a JSON style: %s", err);
    {
        char  deep[2048];
        int   k = 0;

        for (int i = 0; i < 20; i++) {
            k += snprintf(deep + k, sizeof(deep) - k, "{\"type\": \"sequence\","
                          " \"elements\": [");
        }
        k += snprintf(deep + k, sizeof(deep) - k, "{\"type\": \"any_text\"}");
        for (int i = 0; i < 20; i++) {
            k += snprintf(deep + k, sizeof(deep) - k, "]}");
        }
        char  whole[2200];
        snprintf(whole, sizeof(whole), "{\"format\": %s}", deep);
        ok(compile(whole, err, sizeof(err)) != 0
           && strstr(err, "nested more than") != NULL, "20 sequences nested:"
           " %s", err);
    }

    /* ---- the sampler, on random rows ---- */
    rc = compile("{\"triggers\": [\"<\"], \"structures\": [{\"begin\":"
                 " \"<f>\", \"end\": \"</f>\", \"schema\": {\"type\": \"object\","
                 " \"properties\": {\"n\": {\"type\": \"integer\"}}, \"required\":"
                 " [\"n\"]}}]}", err, sizeof(err));
    ok(rc == 0, "a tag for the sampler runs%s%s", rc ? ": " : "", rc ? err : "");
    if (rc == 0) {
        sample_runs("triggered, JSON", 4, 120, NULL);
    }
    rc = compile("{\"format\": {\"type\": \"tags_with_separator\","
                 " \"separator\": \",\", \"at_least_one\": true, \"tags\":"
                 " [{\"begin\": \"<a>\", \"content\": {\"type\": \"regex\","
                 " \"pattern\": \"[0-9]+\"}, \"end\": \"</a>\"}]}}", err,
                 sizeof(err));
    if (rc == 0) {
        sample_runs("forced, regex", 4, 60, NULL);
    }
    rc = compile("{\"format\": {\"type\": \"sequence\", \"elements\": ["
                 "{\"type\": \"or\", \"elements\": [{\"type\": \"tag\","
                 " \"begin\": \"<a>\", \"content\": {\"type\": \"regex\","
                 " \"pattern\": \"[0-9]+\"}, \"end\": \";\"}, {\"type\":"
                 " \"tag\", \"begin\": \"<b>\", \"content\": {\"type\":"
                 " \"json_schema\", \"json_schema\": {\"type\": \"object\"}},"
                 " \"end\": \"</b>\"}]}, {\"type\": \"triggered_tags\","
                 " \"triggers\": [\"<\"], \"tags\": [{\"begin\": \"<f>\","
                 " \"content\": {\"type\": \"json_schema\", \"json_schema\":"
                 " {\"type\": \"object\", \"properties\": {\"n\": {\"type\":"
                 " \"integer\"}}, \"required\": [\"n\"]}}, \"end\":"
                 " \"</f>\"}]}]}}", err, sizeof(err));
    ok(rc == 0, "a nested format for the sampler runs%s%s", rc ? ": " : "",
       rc ? err : "");
    if (rc == 0) {
        sample_runs("nested: or of tags, then triggered", 4, 120, NULL);
    }
    rc = compile("{\"format\": {\"type\": \"triggered_tags\", \"triggers\":"
                 " [\"<\"], \"tags\": [{\"begin\": \"<calc>\", \"content\":"
                 " {\"type\": \"grammar\", \"grammar\": \"root ::= expr\\n"
                 "expr ::= term ([-+*/] term)*\\nterm ::= [0-9]+ | \\\"(\\\" expr"
                 " \\\")\\\"\"}, \"end\": \"</calc>\"}]}}", err, sizeof(err));
    ok(rc == 0 && kimi_stag_has_gram(&tag), "a recursive grammar for the"
       " sampler runs%s%s", rc ? ": " : "", rc ? err : "");
    if (rc == 0) {
        sample_runs("triggered, recursive grammar", 4, 120, ")");
    }

    /* ---- refused at compile ---- */
    ok(compile("{\"triggers\": [\"<\"], \"structures\": [{\"begin\": \"x\","
               " \"end\": \"\", \"schema\": {}}]}", err, sizeof(err)) != 0
       && strstr(err, "starts with no trigger") != NULL,
       "a begin no trigger starts: %s", err);
    ok(compile("{\"triggers\": [\"<\"], \"structures\": [{\"begin\": \"<a\","
               " \"end\": \"\", \"schema\": {}}, {\"begin\": \"<a\", \"end\":"
               " \"\", \"schema\": {}}]}", err, sizeof(err)) != 0
       && strstr(err, "are equal") != NULL, "two equal begins: %s", err);
    ok(compile("{\"triggers\": [\"<\"], \"structures\": [{\"begin\": \"<a\","
               " \"end\": \"\", \"schema\": {\"type\": \"object\", \"oneOf\":"
               " 5}}]}", err, sizeof(err)) != 0
       && strstr(err, "the schema of structure 0") != NULL,
       "a schema outside the subset: %s", err);
    ok(compile("{\"triggers\": \"<\", \"structures\": []}", err,
               sizeof(err)) != 0 && strstr(err, "\"triggers\"") != NULL,
       "triggers not an array: %s", err);
    ok(compile("{\"triggers\": [\"\"], \"structures\": [{\"begin\": \"<a\","
               " \"end\": \"\", \"schema\": {}}]}", err, sizeof(err)) != 0
       && strstr(err, "trigger 0 must be 1 to") != NULL,
       "an empty trigger: %s", err);

    /* ---- the engine's check of the words ---- */
    ok(compile("{\"triggers\": [\"<\"], \"structures\": [{\"begin\": \"<a\","
               " \"end\": \">\", \"schema\": {}}]}", err, sizeof(err)) == 0,
       "a small program for the corruption checks");
    {
        int32_t  *bad = malloc(n_words * sizeof(int32_t));
        int       refused = 0, cases = 0;

        for (size_t i = 0; i < n_words; i++) {
            int32_t  vals[] = { -1, 0, 300, 1 << 20 };

            for (size_t v = 0; v < sizeof(vals) / sizeof(vals[0]); v++) {
                memcpy(bad, words, n_words * sizeof(int32_t));
                if (bad[i] == vals[v]) {
                    continue;
                }
                bad[i] = vals[v];
                cases++;
                /* a changed byte value in range may still be a valid
                 * program; everything else must be refused, never read
                 * out of bounds */
                refused += kimi_stag_view(bad, n_words, &tag, err,
                                          sizeof(err)) != 0;
            }
        }
        ok(refused > cases / 2, "corrupted words: %d of %d refused, none"
           " read out of bounds", refused, cases);
        ok(kimi_stag_view(words, n_words - 1, &tag, err, sizeof(err)) != 0
           && kimi_stag_view(words, 1, &tag, err, sizeof(err)) != 0,
           "truncated words refused: %s", err);
        free(bad);
    }

    free(words);
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
