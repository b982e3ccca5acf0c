/*
 * Tool-call parser.  kimi_k2: one-shot results against vLLM's regex
 * (t/fixtures/text/toolcalls.json from t/gen/), and for every case the
 * stream split at every byte position equals the one-shot parse.
 * deepseek_v3 / deepseek_v31: what vLLM's parsers of those names extract
 * from DeepSeek's markers, written out below, split the same way.
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
parse_format(kimi_tool_format_e format, const char *text, size_t len,
    const size_t *cuts, size_t n_cuts, result_t *r)
{
    size_t             i, at = 0;
    kimi_toolparse_t  *p;

    memset(r, 0, sizeof(*r));
    r->order_ok = 1;
    p = kimi_toolparse_new_format(format, collect, r);
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
parse(const char *text, size_t len, const size_t *cuts, size_t n_cuts,
    result_t *r)
{
    return parse_format(KIMI_TOOL_FORMAT_KIMI_K2, text, len, cuts, n_cuts, r);
}


/* Equal results; ds: DeepSeek's random ids only need to be of vLLM's kind */
static int
same_ids(const result_t *a, const result_t *b, int ds)
{
    uint32_t  i;

    if (a->content_len != b->content_len
        || memcmp(a->content, b->content, a->content_len) != 0
        || a->n_calls != b->n_calls)
    {
        return 0;
    }
    for (i = 0; i < a->n_calls; i++) {
        if ((ds ? strncmp(a->id[i], "chatcmpl-tool-", 14) != 0
                  || strlen(a->id[i]) != 46
                : strcmp(a->id[i], b->id[i]) != 0)
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
same(const result_t *a, const result_t *b)
{
    return same_ids(a, b, 0);
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


/* One-shot against the expected content / names / arguments, then every
 * two-piece split equal to it. */
static void
check_ds(kimi_tool_format_e f, const char *t, const char *content,
    uint32_t n_calls, const char *const *names, const char *const *args,
    const char *what)
{
    int        good;
    size_t     cut, len = strlen(t), n_split = 0;
    uint32_t   i;
    result_t  *r = malloc(sizeof(*r)), *q = malloc(sizeof(*q));

    good = parse_format(f, t, len, NULL, 0, r) == 0 && r->n_calls == n_calls
           && r->content_len == strlen(content)
           && memcmp(r->content, content, r->content_len) == 0;
    for (i = 0; good && i < n_calls; i++) {
        good = strcmp(r->name[i], names[i]) == 0
               && r->args_len[i] == strlen(args[i])
               && memcmp(r->args[i], args[i], r->args_len[i]) == 0
               && strncmp(r->id[i], "chatcmpl-tool-", 14) == 0
               && strlen(r->id[i]) == 46
               && (i == 0 || strcmp(r->id[i], r->id[i - 1]) != 0);
    }
    ok(good, "%s: content, names and arguments as vLLM's parser", what);

    for (cut = 1; cut < len; cut++) {
        n_split += parse_format(f, t, len, &cut, 1, q) == 0
                   && same_ids(q, r, 1);
    }
    ok(n_split == len - 1, "%s: split at each of %zu bytes, the same (%zu)",
       what, len - 1, n_split);

    free(r);
    free(q);
}


static void
test_deepseek(void)
{
    const char  *t;
    static const char *const  n1[] = { "get_weather" };
    static const char *const  a1[] = { "{\"city\": \"Paris\"}" };
    static const char *const  n2[] = { "get_weather", "get_time" };
    static const char *const  a2[] = { "{\"city\": \"Paris\"}",
                                       "{\"tz\": \"CET\"}" };
    static const char *const  n3[] = { "run" };
    static const char *const  a3[] = { "{\n  \"code\": \"`ls` | wc\",\n"
                                       "  \"n\": 2\n}" };

    ok(kimi_tool_format_by_name("deepseek_v3") == KIMI_TOOL_FORMAT_DEEPSEEK_V3
       && kimi_tool_format_by_name("deepseek_v31")
          == KIMI_TOOL_FORMAT_DEEPSEEK_V31
       && kimi_tool_format_by_name("kimi_k2") == KIMI_TOOL_FORMAT_KIMI_K2
       && kimi_tool_format_by_name("hermes") == -1,
       "vLLM's parser names map to formats; others are refused");

    t = "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
        "<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```"
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    check_ds(KIMI_TOOL_FORMAT_DEEPSEEK_V3, t, "Let me check.", 1, n1, a1,
             "deepseek_v3, one call");

    t = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        "get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>"
        "\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n"
        "{\"tz\": \"CET\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    check_ds(KIMI_TOOL_FORMAT_DEEPSEEK_V3, t, "", 2, n2, a2,
             "deepseek_v3, two calls");

    t = "x<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        "run\n```json\n{\n  \"code\": \"`ls` | wc\",\n  \"n\": 2\n}\n```"
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜> y";
    check_ds(KIMI_TOOL_FORMAT_DEEPSEEK_V3, t, "x y", 1, n3, a3,
             "deepseek_v3, arguments over lines with backticks inside");

    t = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        "broken {}<｜tool▁call▁end｜><｜tool▁call▁begin｜>function"
        "<｜tool▁sep｜>get_time\n```json\n{\"tz\": \"CET\"}\n```"
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    check_ds(KIMI_TOOL_FORMAT_DEEPSEEK_V3, t, "", 1, n2 + 1, a2 + 1,
             "deepseek_v3, a call without its json fence is dropped");

    t = "ok<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        "{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>"
        "get_time<｜tool▁sep｜>{\"tz\": \"CET\"}<｜tool▁call▁end｜>"
        "<｜tool▁calls▁end｜>";
    check_ds(KIMI_TOOL_FORMAT_DEEPSEEK_V31, t, "ok", 2, n2, a2,
             "deepseek_v31, two calls");

    t = "plain <｜tool▁call▁end｜>text with <|tool_call_begin|> in it";
    check_ds(KIMI_TOOL_FORMAT_DEEPSEEK_V3, t,
             "plain text with <|tool_call_begin|> in it", 0, NULL, NULL,
             "deepseek_v3, a stray marker vanishes, Kimi's are text");
}


int
main(void)
{
    test_fixtures();
    test_semantics();
    test_deepseek();
    printf("1..%d\n", test_n);
    return test_failed != 0;
}
