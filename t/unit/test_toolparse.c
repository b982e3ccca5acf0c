/*
 * kimi_k2 tool-call parser: one-shot results against vLLM's regex
 * (t/fixtures/text/toolcalls.json from t/gen/), and for every case the
 * stream split at every byte position equals the one-shot parse.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "text/kimi_text.h"

#define MAX_CALLS  16

typedef struct {
    char      content[65536];
    size_t    content_len;
    char      id[MAX_CALLS][600];
    char      name[MAX_CALLS][600];
    char      args[MAX_CALLS][8192];
    size_t    args_len[MAX_CALLS];
    uint32_t  n_calls;
    int       open;
    int       order_ok;          /* events arrived in a legal order */
} result_t;

#include "tap.h"


static void
collect(void *ctx, const kimi_tool_ev_t *ev)
{
    result_t  *r = ctx;

    switch (ev->type) {
    case KIMI_TOOL_EV_CONTENT:
        if (r->open) {
            r->order_ok = 0;
        }
        memcpy(r->content + r->content_len, ev->text, ev->len);
        r->content_len += ev->len;
        break;
    case KIMI_TOOL_EV_CALL_BEGIN:
        if (r->open || ev->index != r->n_calls || r->n_calls == MAX_CALLS) {
            r->order_ok = 0;
            break;
        }
        snprintf(r->id[r->n_calls], sizeof(r->id[0]), "%s", ev->id);
        snprintf(r->name[r->n_calls], sizeof(r->name[0]), "%s", ev->name);
        r->args_len[r->n_calls] = 0;
        r->open = 1;
        break;
    case KIMI_TOOL_EV_ARGS:
        if (!r->open || ev->index != r->n_calls) {
            r->order_ok = 0;
            break;
        }
        memcpy(r->args[r->n_calls] + r->args_len[r->n_calls], ev->text,
               ev->len);
        r->args_len[r->n_calls] += ev->len;
        break;
    case KIMI_TOOL_EV_CALL_END:
        if (!r->open || ev->index != r->n_calls) {
            r->order_ok = 0;
        }
        r->open = 0;
        r->n_calls++;
        break;
    }
}


/* Feeds text in the given cut points, then finishes. */
static int
parse(const char *text, size_t len, const size_t *cuts, size_t n_cuts,
    result_t *r)
{
    size_t             i, at = 0;
    kimi_toolparse_t  *p;

    memset(r, 0, sizeof(*r));
    r->order_ok = 1;
    p = kimi_toolparse_new(collect, r);
    if (p == NULL) {
        return -1;
    }
    for (i = 0; i <= n_cuts; i++) {
        size_t  to = i < n_cuts ? cuts[i] : len;

        if (kimi_toolparse_feed(p, text + at, to - at) != 0) {
            kimi_toolparse_free(p);
            return -1;
        }
        at = to;
    }
    if (kimi_toolparse_finish(p) != 0 || kimi_toolparse_n_calls(p)
        != r->n_calls)
    {
        kimi_toolparse_free(p);
        return -1;
    }
    kimi_toolparse_free(p);
    return r->order_ok && !r->open ? 0 : -1;
}


static int
same(const result_t *a, const result_t *b)
{
    uint32_t  i;

    if (a->content_len != b->content_len
        || memcmp(a->content, b->content, a->content_len) != 0
        || a->n_calls != b->n_calls)
    {
        return 0;
    }
    for (i = 0; i < a->n_calls; i++) {
        if (strcmp(a->id[i], b->id[i]) != 0
            || strcmp(a->name[i], b->name[i]) != 0
            || a->args_len[i] != b->args_len[i]
            || memcmp(a->args[i], b->args[i], a->args_len[i]) != 0)
        {
            return 0;
        }
    }
    return 1;
}


static int
leaks_marker(const result_t *r)
{
    uint32_t  i;

    if (memmem(r->content, r->content_len, "<|tool_call", 11) != NULL) {
        return 1;
    }
    for (i = 0; i < r->n_calls; i++) {
        if (memmem(r->args[i], r->args_len[i], "<|tool_call", 11) != NULL) {
            return 1;
        }
    }
    return 0;
}


static int
matches_vllm(const result_t *r, json_t *expect)
{
    json_t      *content = json_object_get(expect, "content"), *calls, *c;
    size_t       i;
    const char  *s;

    s = json_is_string(content) ? json_string_value(content) : "";
    if (strlen(s) != r->content_len || memcmp(s, r->content, r->content_len)) {
        return 0;
    }
    calls = json_object_get(expect, "tool_calls");
    if (json_array_size(calls) != r->n_calls) {
        return 0;
    }
    json_array_foreach(calls, i, c) {
        s = json_string_value(json_object_get(c, "arguments"));
        if (strcmp(json_string_value(json_object_get(c, "id")), r->id[i])
            || strcmp(json_string_value(json_object_get(c, "name")),
                      r->name[i])
            || strlen(s) != r->args_len[i]
            || memcmp(s, r->args[i], r->args_len[i]) != 0)
        {
            return 0;
        }
    }
    return 1;
}


static void
test_fixtures(void)
{
    int           wellformed, split_ok, bytes_ok;
    size_t        i, k, len, *cuts;
    json_t       *root, *c;
    result_t     *one, *two;
    const char   *text;
    json_error_t  jerr;

    root = json_load_file("t/fixtures/text/toolcalls.json", 0, &jerr);
    ok(root != NULL, "tool-call fixtures load");
    if (root == NULL) {
        return;
    }

    one = malloc(sizeof(*one));
    two = malloc(sizeof(*two));

    json_array_foreach(json_object_get(root, "cases"), i, c) {
        text = json_string_value(json_object_get(c, "text"));
        len = strlen(text);
        wellformed = json_is_true(json_object_get(c, "wellformed"));

        if (parse(text, len, NULL, 0, one) != 0) {
            ok(0, "case %zu parses", i);
            continue;
        }

        if (wellformed) {
            ok(matches_vllm(one, json_object_get(c, "expect")),
               "case %zu: content and %u calls equal vLLM's kimi_k2 parser",
               i, one->n_calls);
        }
        ok(!leaks_marker(one), "case %zu: no marker text in content or "
           "arguments", i);

        /* every single split point, then byte by byte */
        split_ok = 1;
        for (k = 0; k <= len && split_ok; k++) {
            split_ok = parse(text, len, &k, 1, two) == 0 && same(one, two);
        }
        ok(split_ok, "case %zu: streaming split at each of %zu points "
           "equals one-shot", i, len + 1);

        cuts = malloc((len + 1) * sizeof(size_t));
        for (k = 0; k < len; k++) {
            cuts[k] = k;
        }
        bytes_ok = parse(text, len, cuts, len, two) == 0 && same(one, two);
        free(cuts);
        ok(bytes_ok, "case %zu: byte-by-byte streaming equals one-shot", i);
    }

    free(one);
    free(two);
    json_decref(root);
}


static void
test_semantics(void)
{
    result_t   *r = malloc(sizeof(*r));
    const char *t;

    t = "A<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        "<|tool_call_argument_begin|>{}<|tool_call_end|>"
        "<|tool_calls_section_end|> and after";
    ok(parse(t, strlen(t), NULL, 0, r) == 0 && r->n_calls == 1
       && r->content_len == 11 && memcmp(r->content, "A and after", 11) == 0,
       "text after the section end is content again");

    t = "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        "<|tool_call_argument_begin|>{\"a\": 1";
    ok(parse(t, strlen(t), NULL, 0, r) == 0 && r->n_calls == 1
       && r->args_len[0] == 7,
       "a call cut off by the end of output is closed at finish");

    t = "x<|tool_calls_section_begin|><|tool_call_begin|>functions.bad"
        "<|tool_call_argument_begin|>{}<|tool_call_end|>"
        "<|tool_call_begin|>functions.good:1<|tool_call_argument_begin|>[]"
        "<|tool_call_end|><|tool_calls_section_end|>";
    ok(parse(t, strlen(t), NULL, 0, r) == 0 && r->n_calls == 1
       && strcmp(r->id[0], "functions.good:1") == 0
       && strcmp(r->name[0], "good") == 0,
       "a call with a malformed id is dropped, the next one kept");

    t = "use <|tool_call_end|> and <|im_end|> and <|tool_calls";
    ok(parse(t, strlen(t), NULL, 0, r) == 0 && r->n_calls == 0
       && strcmp(r->content, "use  and <|im_end|> and <|tool_calls") == 0,
       "stray markers vanish, other text (and unfinished prefixes) stays");

    t = "<|tool_call_section_begin|><|tool_call_begin|> functions.a.b:12 "
        "<|tool_call_argument_begin|>\n {\"k\": \"v\"} \n<|tool_call_end|>"
        "<|tool_call_section_end|>";
    ok(parse(t, strlen(t), NULL, 0, r) == 0 && r->n_calls == 1
       && strcmp(r->name[0], "b") == 0
       && strcmp(r->id[0], "functions.a.b:12") == 0
       && r->args_len[0] == 10,
       "singular section markers; id and arguments trimmed");

    free(r);
}


int
main(void)
{
    test_fixtures();
    test_semantics();
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
