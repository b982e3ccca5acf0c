/*
 * Tool-call parser for the kimi_k2 output format, streaming and one-shot.
 *
 *   [content]<|tool_calls_section_begin|>
 *     <|tool_call_begin|> functions.NAME:IDX <|tool_call_argument_begin|>
 *       {JSON args} <|tool_call_end|>   ...more calls...
 *   <|tool_calls_section_end|>[content]
 *
 * Owns:   one byte-driven state machine; one-shot parsing is feeding the
 *         whole text and finishing, so both paths give identical events
 *         whatever the split points.
 * Never:  validates argument JSON (vLLM passes it through verbatim) and
 *         never lets marker text reach CONTENT.
 * Holds:  a well-formed call gives exactly what vLLM's kimi_k2 regex
 *         extracts: id = the text between call-begin and argument-begin,
 *         whitespace-trimmed, which must match "[^<]+:\d+" (kept verbatim);
 *         name = id.split(":")[0].split(".")[-1]; arguments = the text up
 *         to the first call-end, whitespace-trimmed.  Singular
 *         "<|tool_call_section_begin|>"/"..._end|>" are accepted too.
 *         Deviations from vLLM's non-streaming parser, where the model
 *         output is broken: a call whose end marker never comes is closed
 *         at finish (its arguments are what arrived, as vLLM's streaming
 *         path would have sent); a call with a bad id is dropped; markers
 *         outside a section are removed; text after a section end is
 *         content again (as vLLM streams it).
 */

#include <stdlib.h>
#include <string.h>

#include "kimi_text.h"

typedef enum {
    KIMI_TP_CONTENT = 0,
    KIMI_TP_SECTION,       /* inside a section, between calls */
    KIMI_TP_ID,            /* after call-begin: collecting the id */
    KIMI_TP_ARGS,          /* after argument-begin: streaming arguments */
    KIMI_TP_SKIP,          /* a call with a bad id: wait for the next one */
} kimi_tp_state_e;

typedef enum {
    KIMI_MK_SECTION_BEGIN = 0,
    KIMI_MK_SECTION_BEGIN1,
    KIMI_MK_SECTION_END,
    KIMI_MK_SECTION_END1,
    KIMI_MK_CALL_BEGIN,
    KIMI_MK_ARG_BEGIN,
    KIMI_MK_CALL_END,
    KIMI_MK_N,
} kimi_marker_e;

static const struct {
    const char  *text;
    size_t       len;
} kimi_markers[KIMI_MK_N] = {
    { "<|tool_calls_section_begin|>", 28 },
    { "<|tool_call_section_begin|>", 27 },
    { "<|tool_calls_section_end|>", 26 },
    { "<|tool_call_section_end|>", 25 },
    { "<|tool_call_begin|>", 19 },
    { "<|tool_call_argument_begin|>", 28 },
    { "<|tool_call_end|>", 17 },
};

#define KIMI_TP_MARKER_MAX   28
#define KIMI_TP_ID_MAX       512      /* longer ids are malformed */

struct kimi_toolparse {
    kimi_tool_ev_pt   cb;
    void             *ctx;
    kimi_tp_state_e   state;
    uint32_t          n_calls;
    int               args_started;  /* a non-space argument byte seen */
    int               failed;        /* out of memory: feed refuses */
    char              pending[KIMI_TP_MARKER_MAX];
    size_t            n_pending;     /* a possible marker prefix */
    char              id[KIMI_TP_ID_MAX + 1];
    size_t            id_len;
    char              name[KIMI_TP_ID_MAX + 1];
    char             *ws;            /* argument whitespace held back */
    size_t            ws_len;
    size_t            ws_cap;
    char             *work;          /* pending + fed text */
    size_t            work_cap;
};


kimi_toolparse_t *
kimi_toolparse_new(kimi_tool_ev_pt cb, void *ctx)
{
    kimi_toolparse_t  *p;

    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return NULL;
    }
    p->cb = cb;
    p->ctx = ctx;
    return p;
}


void
kimi_toolparse_free(kimi_toolparse_t *p)
{
    if (p == NULL) {
        return;
    }
    free(p->ws);
    free(p->work);
    free(p);
}


uint32_t
kimi_toolparse_n_calls(const kimi_toolparse_t *p)
{
    return p->n_calls;
}


static int
kimi_tp_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v'
           || c == '\f';
}


static void
kimi_tp_emit(kimi_toolparse_t *p, kimi_tool_ev_e type, const char *s,
    size_t n)
{
    kimi_tool_ev_t  ev;

    if (n == 0 && (type == KIMI_TOOL_EV_CONTENT || type == KIMI_TOOL_EV_ARGS)) {
        return;
    }

    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.index = p->n_calls;
    ev.text = s;
    ev.len = n;

    if (type == KIMI_TOOL_EV_CALL_BEGIN) {
        ev.id = p->id;
        ev.name = p->name;
    }

    p->cb(p->ctx, &ev);
}


/* "[^<]+:\d+" on the trimmed id; fills p->name. */
static int
kimi_tp_id_ok(kimi_toolparse_t *p)
{
    size_t       a = 0, b = p->id_len, k, colon, dot;
    const char  *s = p->id;

    while (a < b && kimi_tp_space(s[a])) {
        a++;
    }
    while (b > a && kimi_tp_space(s[b - 1])) {
        b--;
    }

    k = b;
    while (k > a && s[k - 1] >= '0' && s[k - 1] <= '9') {
        k--;
    }
    /* a NUL could not reach the client intact in a C string: malformed */
    if (k == b || k <= a + 1 || s[k - 1] != ':'
        || memchr(s + a, '<', b - a) != NULL
        || memchr(s + a, '\0', b - a) != NULL)
    {
        return 0;
    }

    memmove(p->id, s + a, b - a);
    p->id_len = b - a;
    p->id[p->id_len] = '\0';

    /* name = id.split(":")[0].split(".")[-1] */
    for (colon = 0; colon < p->id_len && p->id[colon] != ':'; colon++) { }
    for (dot = colon; dot > 0 && p->id[dot - 1] != '.'; dot--) { }
    memcpy(p->name, p->id + dot, colon - dot);
    p->name[colon - dot] = '\0';
    return 1;
}


static int
kimi_tp_hold_ws(kimi_toolparse_t *p, const char *s, size_t n)
{
    char    *w;
    size_t   cap;

    if (p->ws_len + n > p->ws_cap) {
        cap = p->ws_cap ? p->ws_cap : 64;
        while (cap < p->ws_len + n) {
            cap *= 2;
        }
        w = realloc(p->ws, cap);
        if (w == NULL) {
            return KIMI_ENOMEM;
        }
        p->ws = w;
        p->ws_cap = cap;
    }
    if (n > 0) {                        /* s may be NULL when n is 0 */
        memcpy(p->ws + p->ws_len, s, n);
    }
    p->ws_len += n;
    return KIMI_OK;
}


/* Ordinary text (no marker in it) in the current state. */
static int
kimi_tp_text(kimi_toolparse_t *p, const char *s, size_t n)
{
    size_t  k;

    switch (p->state) {

    case KIMI_TP_CONTENT:
        kimi_tp_emit(p, KIMI_TOOL_EV_CONTENT, s, n);
        return KIMI_OK;

    case KIMI_TP_ID:
        if (p->id_len + n > KIMI_TP_ID_MAX) {
            p->state = KIMI_TP_SKIP;
            return KIMI_OK;
        }
        memcpy(p->id + p->id_len, s, n);
        p->id_len += n;
        return KIMI_OK;

    case KIMI_TP_ARGS:
        if (!p->args_started) {
            while (n > 0 && kimi_tp_space(*s)) {
                s++;
                n--;
            }
            if (n == 0) {
                return KIMI_OK;
            }
            p->args_started = 1;
        }

        /* trailing whitespace waits: it is trimmed if the call ends */
        for (k = n; k > 0 && kimi_tp_space(s[k - 1]); k--) { }
        if (k == 0) {
            return kimi_tp_hold_ws(p, s, n);
        }
        kimi_tp_emit(p, KIMI_TOOL_EV_ARGS, p->ws, p->ws_len);
        p->ws_len = 0;
        kimi_tp_emit(p, KIMI_TOOL_EV_ARGS, s, k);
        return kimi_tp_hold_ws(p, s + k, n - k);

    default:
        return KIMI_OK;                   /* between calls: dropped */
    }
}


static void
kimi_tp_end_call(kimi_toolparse_t *p)
{
    p->ws_len = 0;
    kimi_tp_emit(p, KIMI_TOOL_EV_CALL_END, NULL, 0);
    p->n_calls++;
}


static void
kimi_tp_marker(kimi_toolparse_t *p, kimi_marker_e m)
{
    int  begin = m == KIMI_MK_SECTION_BEGIN || m == KIMI_MK_SECTION_BEGIN1;
    int  end = m == KIMI_MK_SECTION_END || m == KIMI_MK_SECTION_END1;

    switch (p->state) {

    case KIMI_TP_CONTENT:
        if (begin) {
            p->state = KIMI_TP_SECTION;
        }
        return;                          /* stray markers vanish */

    case KIMI_TP_ARGS:
        if (m == KIMI_MK_ARG_BEGIN) {
            /* inside arguments vLLM's regex keeps it as text */
            kimi_tp_text(p, kimi_markers[m].text, kimi_markers[m].len);
            return;
        }
        if (begin) {
            return;
        }
        kimi_tp_end_call(p);
        break;

    default:
        break;
    }

    if (end) {
        p->state = KIMI_TP_CONTENT;

    } else if (m == KIMI_MK_CALL_BEGIN) {
        p->state = KIMI_TP_ID;
        p->id_len = 0;

    } else if (m == KIMI_MK_ARG_BEGIN && p->state == KIMI_TP_ID) {
        if (kimi_tp_id_ok(p)) {
            p->state = KIMI_TP_ARGS;
            p->args_started = 0;
            p->ws_len = 0;
            kimi_tp_emit(p, KIMI_TOOL_EV_CALL_BEGIN, NULL, 0);
        } else {
            p->state = KIMI_TP_SKIP;
        }

    } else if (m == KIMI_MK_CALL_END) {
        p->state = KIMI_TP_SECTION;
    }
}


/* Which marker starts s[0..n): full match (returns id, *len), a prefix
 * cut by the end of the input (-2), or none (-1). */
static int
kimi_tp_match(const char *s, size_t n, size_t *len)
{
    int     m, prefix = 0;
    size_t  k;

    for (m = 0; m < KIMI_MK_N; m++) {
        k = kimi_markers[m].len;
        if (n >= k) {
            if (memcmp(s, kimi_markers[m].text, k) == 0) {
                *len = k;
                return m;
            }
        } else if (memcmp(s, kimi_markers[m].text, n) == 0) {
            prefix = 1;
        }
    }

    return prefix ? -2 : -1;
}


int
kimi_toolparse_feed(kimi_toolparse_t *p, const char *text, size_t len)
{
    int          m, rc;
    char        *w;
    size_t       n, pos, start, mlen, cap;
    const char  *lt;

    if (p->failed) {
        return KIMI_ENOMEM;
    }

    /* work = held prefix + new text */
    n = p->n_pending + len;
    if (n > p->work_cap) {
        cap = p->work_cap ? p->work_cap : 256;
        while (cap < n) {
            cap *= 2;
        }
        w = realloc(p->work, cap);
        if (w == NULL) {
            p->failed = 1;
            return KIMI_ENOMEM;
        }
        p->work = w;
        p->work_cap = cap;
    }
    w = p->work;
    if (p->n_pending > 0) {             /* pending is NULL until first used */
        memcpy(w, p->pending, p->n_pending);
    }
    if (len > 0) {
        memcpy(w + p->n_pending, text, len);
    }
    p->n_pending = 0;

    pos = 0;
    start = 0;

    while (pos < n) {
        lt = memchr(w + pos, '<', n - pos);
        if (lt == NULL) {
            pos = n;
            break;
        }
        pos = (size_t) (lt - w);

        m = kimi_tp_match(w + pos, n - pos, &mlen);
        if (m == -1) {
            pos++;
            continue;
        }

        rc = kimi_tp_text(p, w + start, pos - start);
        if (rc != KIMI_OK) {
            p->failed = 1;
            return rc;
        }

        if (m == -2) {
            /* maybe a marker: decide when more text comes */
            p->n_pending = n - pos;
            memcpy(p->pending, w + pos, p->n_pending);
            return KIMI_OK;
        }

        kimi_tp_marker(p, (kimi_marker_e) m);
        pos += mlen;
        start = pos;
    }

    rc = kimi_tp_text(p, w + start, pos - start);
    if (rc != KIMI_OK) {
        p->failed = 1;
    }
    return rc;
}


int
kimi_toolparse_finish(kimi_toolparse_t *p)
{
    char    held[KIMI_TP_MARKER_MAX];
    size_t  n;
    int     rc;

    if (p->failed) {
        return KIMI_ENOMEM;
    }

    /* a held prefix that never became a marker is ordinary text */
    n = p->n_pending;
    memcpy(held, p->pending, n);
    p->n_pending = 0;
    rc = kimi_tp_text(p, held, n);
    if (rc != KIMI_OK) {
        return rc;
    }

    if (p->state == KIMI_TP_ARGS) {
        kimi_tp_end_call(p);             /* cut off: close what we sent */
    }

    p->state = KIMI_TP_CONTENT;
    return KIMI_OK;
}
