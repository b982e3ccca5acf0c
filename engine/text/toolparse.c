/*
 * Tool-call parser, streaming and one-shot, for the formats of vLLM's
 * kimi_k2, deepseek_v3 and deepseek_v31 tool parsers:
 *
 *   kimi_k2       [content]<|tool_calls_section_begin|>
 *                   <|tool_call_begin|> functions.NAME:IDX
 *                   <|tool_call_argument_begin|> {JSON args} <|tool_call_end|>
 *                   ...more calls...
 *                 <|tool_calls_section_end|>[content]
 *   deepseek_v3   [content]<｜tool▁calls▁begin｜>
 *                   <｜tool▁call▁begin｜>TYPE<｜tool▁sep｜>NAME\n```json\n
 *                   {JSON args}\n```<｜tool▁call▁end｜> ...
 *                 <｜tool▁calls▁end｜>
 *   deepseek_v31  as deepseek_v3 with <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>
 *                   {JSON args}<｜tool▁call▁end｜>
 *
 * Owns:   one byte-driven state machine; one-shot parsing is feeding the
 *         whole text and finishing, so both paths give identical events
 *         whatever the split points.
 * Never:  validates argument JSON (vLLM passes it through verbatim) and
 *         never lets marker text reach CONTENT.
 * Holds:  a well-formed kimi_k2 call gives exactly what vLLM's regex
 *         extracts: id = the text between call-begin and argument-begin,
 *         whitespace-trimmed, which must match "[^<]+:\d+" (kept verbatim);
 *         name = id.split(":")[0].split(".")[-1]; arguments = the text up
 *         to the first call-end, whitespace-trimmed.  Singular
 *         "<|tool_call_section_begin|>"/"..._end|>" are accepted too.  The
 *         DeepSeek formats carry no id: each call gets vLLM's kind,
 *         "chatcmpl-tool-" and 32 random hex digits; a deepseek_v3 name is
 *         one line and its arguments lose the closing "\n```" (and, as
 *         kimi_k2's, surrounding whitespace; vLLM's regex also needs them
 *         on one line, this parser does not).
 *         Deviations from vLLM's non-streaming parsers, where the model
 *         output is broken: a call whose end marker never comes is closed
 *         at finish (its arguments are what arrived, as vLLM's streaming
 *         path would have sent); a call with a bad id or header is
 *         dropped; markers outside a section are removed; text after a
 *         section end is content again (as vLLM streams it).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#include "kimi_text.h"

typedef enum {
    KIMI_TP_CONTENT = 0,
    KIMI_TP_SECTION,       /* inside a section, between calls */
    KIMI_TP_ID,            /* after call-begin: collecting the id (kimi),
                              type (v3) or name (v31) */
    KIMI_TP_NAME,          /* deepseek_v3, after the separator: the name
                              line and "```json\n" */
    KIMI_TP_ARGS,          /* after argument-begin: streaming arguments */
    KIMI_TP_SKIP,          /* a call with a bad id: wait for the next one */
} kimi_tp_state_e;

/* What a marker does; each format lists its spellings. */
#define KIMI_MK(text, role)  { text, sizeof(text) - 1, role }
typedef enum {
    KIMI_MK_SECTION_BEGIN = 0,
    KIMI_MK_SECTION_END,
    KIMI_MK_CALL_BEGIN,
    KIMI_MK_ARG_BEGIN,     /* kimi: argument-begin; v31: the separator */
    KIMI_MK_SEP,           /* v3: between type and name */
    KIMI_MK_CALL_END,
} kimi_marker_e;

typedef struct {
    const char     *text;
    size_t          len;
    kimi_marker_e   role;
} kimi_marker_t;

static const kimi_marker_t  kimi_markers_k2[] = {
    KIMI_MK("<|tool_calls_section_begin|>", KIMI_MK_SECTION_BEGIN),
    KIMI_MK("<|tool_call_section_begin|>", KIMI_MK_SECTION_BEGIN),
    KIMI_MK("<|tool_calls_section_end|>", KIMI_MK_SECTION_END),
    KIMI_MK("<|tool_call_section_end|>", KIMI_MK_SECTION_END),
    KIMI_MK("<|tool_call_begin|>", KIMI_MK_CALL_BEGIN),
    KIMI_MK("<|tool_call_argument_begin|>", KIMI_MK_ARG_BEGIN),
    KIMI_MK("<|tool_call_end|>", KIMI_MK_CALL_END),
    { NULL, 0, 0 }
};

/* (UTF-8: "｜" is 3 bytes, "▁" 3) */
static const kimi_marker_t  kimi_markers_v3[] = {
    KIMI_MK("<｜tool▁calls▁begin｜>", KIMI_MK_SECTION_BEGIN),
    KIMI_MK("<｜tool▁calls▁end｜>", KIMI_MK_SECTION_END),
    KIMI_MK("<｜tool▁call▁begin｜>", KIMI_MK_CALL_BEGIN),
    KIMI_MK("<｜tool▁sep｜>", KIMI_MK_SEP),
    KIMI_MK("<｜tool▁call▁end｜>", KIMI_MK_CALL_END),
    { NULL, 0, 0 }
};

static const kimi_marker_t  kimi_markers_v31[] = {
    KIMI_MK("<｜tool▁calls▁begin｜>", KIMI_MK_SECTION_BEGIN),
    KIMI_MK("<｜tool▁calls▁end｜>", KIMI_MK_SECTION_END),
    KIMI_MK("<｜tool▁call▁begin｜>", KIMI_MK_CALL_BEGIN),
    KIMI_MK("<｜tool▁sep｜>", KIMI_MK_ARG_BEGIN),
    KIMI_MK("<｜tool▁call▁end｜>", KIMI_MK_CALL_END),
    { NULL, 0, 0 }
};

#define KIMI_TP_MARKER_MAX   32
#define KIMI_TP_ID_MAX       512      /* longer ids are malformed */

struct kimi_toolparse {
    kimi_tool_format_e     format;
    const kimi_marker_t   *markers;
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


int
kimi_tool_format_by_name(const char *name)
{
    return strcmp(name, "kimi_k2") == 0 ? KIMI_TOOL_FORMAT_KIMI_K2
           : strcmp(name, "deepseek_v3") == 0 ? KIMI_TOOL_FORMAT_DEEPSEEK_V3
           : strcmp(name, "deepseek_v31") == 0 ? KIMI_TOOL_FORMAT_DEEPSEEK_V31
           : -1;
}


int
kimi_tool_format_of(const kimi_tokenizer_t *tok)
{
    if (kimi_tokenizer_special_id(tok, "<|tool_calls_section_begin|>") >= 0) {
        return KIMI_TOOL_FORMAT_KIMI_K2;
    }

    if (kimi_tokenizer_special_id(tok, "<｜tool▁calls▁begin｜>") >= 0) {
        return KIMI_TOOL_FORMAT_DEEPSEEK_V3;
    }

    return KIMI_TOOL_FORMAT_KIMI_K2;
}


kimi_toolparse_t *
kimi_toolparse_new_format(kimi_tool_format_e format, kimi_tool_ev_pt cb,
    void *ctx)
{
    kimi_toolparse_t  *p;

    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return NULL;
    }
    p->format = format;
    p->markers = format == KIMI_TOOL_FORMAT_DEEPSEEK_V3 ? kimi_markers_v3
                 : format == KIMI_TOOL_FORMAT_DEEPSEEK_V31 ? kimi_markers_v31
                 : kimi_markers_k2;
    p->cb = cb;
    p->ctx = ctx;
    return p;
}


kimi_toolparse_t *
kimi_toolparse_new(kimi_tool_ev_pt cb, void *ctx)
{
    return kimi_toolparse_new_format(KIMI_TOOL_FORMAT_KIMI_K2, cb, ctx);
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


/* A DeepSeek call's name (s[0..n) trimmed, one line, no '<') into
 * p->name, and an id of vLLM's kind ("chatcmpl-tool-" + 32 random hex
 * digits) into p->id. */
static int
kimi_tp_name_ok(kimi_toolparse_t *p, const char *s, size_t n)
{
    size_t          a = 0, b = n, i;
    unsigned char   r[16];
    static const char  hex[] = "0123456789abcdef";

    while (a < b && kimi_tp_space(s[a])) {
        a++;
    }
    while (b > a && kimi_tp_space(s[b - 1])) {
        b--;
    }

    if (a == b || b - a > KIMI_TP_ID_MAX - 1 || memchr(s + a, '<', b - a)
        || memchr(s + a, '\n', b - a) || memchr(s + a, '\0', b - a))
    {
        return 0;
    }

    memmove(p->name, s + a, b - a);
    p->name[b - a] = '\0';

    if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t) sizeof(r)) {
        /* no entropy yet: unique enough for a response (never a secret) */
        uint64_t  x = (uint64_t) time(NULL) ^ (uintptr_t) p ^ p->n_calls;

        for (i = 0; i < sizeof(r); i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            r[i] = (unsigned char) (x >> 56);
        }
    }

    memcpy(p->id, "chatcmpl-tool-", 14);
    for (i = 0; i < sizeof(r); i++) {
        p->id[14 + 2 * i] = hex[r[i] >> 4];
        p->id[15 + 2 * i] = hex[r[i] & 15];
    }
    p->id_len = 14 + 2 * sizeof(r);
    p->id[p->id_len] = '\0';
    return 1;
}


static void
kimi_tp_begin_args(kimi_toolparse_t *p)
{
    p->state = KIMI_TP_ARGS;
    p->args_started = 0;
    p->ws_len = 0;
    kimi_tp_emit(p, KIMI_TOOL_EV_CALL_BEGIN, NULL, 0);
}


/* Whitespace, or for deepseek_v3 also the backticks of the closing
 * "\n```": held at the end of arguments until more text shows them to
 * be arguments after all. */
static int
kimi_tp_trailing(const kimi_toolparse_t *p, char c)
{
    return kimi_tp_space(c)
           || (c == '`' && p->format == KIMI_TOOL_FORMAT_DEEPSEEK_V3);
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


static int kimi_tp_text(kimi_toolparse_t *p, const char *s, size_t n);


/* deepseek_v3 after the separator: "NAME\n```json\n", then arguments.
 * The header collects in p->id (the type is not kept). */
static int
kimi_tp_name_text(kimi_toolparse_t *p, const char *s, size_t n)
{
    static const char   fence[] = "```json\n";
    const size_t        fl = sizeof(fence) - 1;
    const char         *nl;
    size_t              have, after, take;

    have = p->id_len;
    take = n < KIMI_TP_ID_MAX - have ? n : KIMI_TP_ID_MAX - have;
    memcpy(p->id + have, s, take);
    p->id_len += take;

    nl = memchr(p->id, '\n', p->id_len);
    if (nl == NULL) {
        if (p->id_len == KIMI_TP_ID_MAX) {
            p->state = KIMI_TP_SKIP;         /* no name line: malformed */
        }
        return KIMI_OK;
    }

    after = p->id_len - (size_t) (nl + 1 - p->id);
    if (memcmp(nl + 1, fence, after < fl ? after : fl) != 0) {
        p->state = KIMI_TP_SKIP;             /* not "```json\n" */
        return KIMI_OK;
    }
    if (after < fl) {
        if (take < n) {
            p->state = KIMI_TP_SKIP;
        }
        return KIMI_OK;                      /* the fence is not whole yet */
    }

    if (!kimi_tp_name_ok(p, p->id + 0, (size_t) (nl - p->id))) {
        p->state = KIMI_TP_SKIP;
        return KIMI_OK;
    }

    /* what followed the fence (in id, then the rest of s) is arguments:
     * the fence ends at id offset f, which is s offset f - have */
    {
        size_t  f = (size_t) (nl + 1 - p->id) + fl;

        kimi_tp_begin_args(p);
        return kimi_tp_text(p, s + (f - have), n - (f - have));
    }
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

    case KIMI_TP_NAME:
        return kimi_tp_name_text(p, s, n);

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
        for (k = n; k > 0 && kimi_tp_trailing(p, s[k - 1]); k--) { }
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
kimi_tp_marker(kimi_toolparse_t *p, const kimi_marker_t *mk)
{
    kimi_marker_e  m = mk->role;

    switch (p->state) {

    case KIMI_TP_CONTENT:
        if (m == KIMI_MK_SECTION_BEGIN) {
            p->state = KIMI_TP_SECTION;
        }
        return;                          /* stray markers vanish */

    case KIMI_TP_ARGS:
        if (m == KIMI_MK_ARG_BEGIN || m == KIMI_MK_SEP) {
            /* inside arguments vLLM's regex keeps it as text */
            kimi_tp_text(p, mk->text, mk->len);
            return;
        }
        if (m == KIMI_MK_SECTION_BEGIN) {
            return;
        }
        kimi_tp_end_call(p);
        break;

    default:
        break;
    }

    if (m == KIMI_MK_SECTION_END) {
        p->state = KIMI_TP_CONTENT;

    } else if (m == KIMI_MK_CALL_BEGIN) {
        p->state = KIMI_TP_ID;
        p->id_len = 0;

    } else if (m == KIMI_MK_SEP && p->state == KIMI_TP_ID) {
        p->state = KIMI_TP_NAME;         /* deepseek_v3: the type ends */
        p->id_len = 0;

    } else if (m == KIMI_MK_ARG_BEGIN && p->state == KIMI_TP_ID) {
        if (p->format == KIMI_TOOL_FORMAT_KIMI_K2 ? kimi_tp_id_ok(p)
            : kimi_tp_name_ok(p, p->id, p->id_len))
        {
            kimi_tp_begin_args(p);
        } else {
            p->state = KIMI_TP_SKIP;
        }

    } else if (m == KIMI_MK_CALL_END) {
        p->state = KIMI_TP_SECTION;

    } else if (p->state == KIMI_TP_ID || p->state == KIMI_TP_NAME) {
        p->state = KIMI_TP_SKIP;         /* a marker inside a header */
    }
}


/* Which marker starts s[0..n): full match (returns it), a prefix cut by
 * the end of the input (*cut = 1), or none. */
static const kimi_marker_t *
kimi_tp_match(const kimi_toolparse_t *p, const char *s, size_t n, int *cut)
{
    const kimi_marker_t  *mk;

    *cut = 0;
    for (mk = p->markers; mk->text != NULL; mk++) {
        if (n >= mk->len) {
            if (memcmp(s, mk->text, mk->len) == 0) {
                return mk;
            }
        } else if (memcmp(s, mk->text, n) == 0) {
            *cut = 1;
        }
    }

    return NULL;
}


int
kimi_toolparse_feed(kimi_toolparse_t *p, const char *text, size_t len)
{
    int                   rc, cut;
    char                 *w;
    size_t                n, pos, start, cap;
    const char           *lt;
    const kimi_marker_t  *mk;

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

        mk = kimi_tp_match(p, w + pos, n - pos, &cut);
        if (mk == NULL && !cut) {
            pos++;
            continue;
        }

        rc = kimi_tp_text(p, w + start, pos - start);
        if (rc != KIMI_OK) {
            p->failed = 1;
            return rc;
        }

        if (mk == NULL) {
            /* maybe a marker: decide when more text comes */
            p->n_pending = n - pos;
            memcpy(p->pending, w + pos, p->n_pending);
            return KIMI_OK;
        }

        kimi_tp_marker(p, mk);
        pos += mk->len;
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
