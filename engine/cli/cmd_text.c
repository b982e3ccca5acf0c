/*
 * kimi-engine tokenize | detokenize | render | parse-tools --model DIR
 *
 * Owns:   the shell form of the text stack: one request on stdin, one JSON
 *         answer on stdout, shaped like vLLM's /tokenize and /detokenize.
 *           tokenize     {"prompt": s} or {"messages": [...], "tools": [...],
 *                        "add_generation_prompt": b}, or raw text
 *                        -> {"count": n, "tokens": [...]}
 *           detokenize   {"tokens": [...]} or [...] -> {"prompt": s}
 *           render       {"messages", "tools", "add_generation_prompt"}
 *                        -> {"prompt": s}
 *           parse-tools  model output as raw text or {"text": s}
 *                        -> {"content": s|null, "tool_calls": [...]}
 * Never:  holds text logic: everything is engine/text's API.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "commands.h"
#include "../text/kimi_text.h"

typedef struct {
    const char  *model;
    int          no_special;      /* tokenize: special names are text */
    int          skip_special;    /* detokenize: drop special ids */
    int          plain_user_text; /* tokenize: names in user data are text */
    const char  *tool_parser;     /* parse-tools: vLLM's parser name */
    const char  *chat_template;   /* tokenize, render: vLLM's
                                     --chat-template (file or template) */
} kimi_text_opts_t;


static int
kimi_text_usage(const char *cmd, int rc)
{
    fprintf(rc ? stderr : stdout,
            "usage: kimi-engine %s --model DIR [options] < request\n"
            "  tokenize     [--no-special] [--plain-user-text] "
            "[--chat-template FILE|TEMPLATE]\n"
            "  detokenize   [--skip-special]\n"
            "  render       [--chat-template FILE|TEMPLATE]\n"
            "  parse-tools  [--tool-call-parser kimi_k2|deepseek_v3|deepseek_v31]\n"
            "               (default: what the model's tokenizer spells)\n"
            "Reads one request from stdin (JSON, or raw text for tokenize "
            "and parse-tools)\nand prints one JSON object.\n", cmd);
    return rc;
}


static int
kimi_text_args(int argc, char **argv, kimi_text_opts_t *o)
{
    int  i;

    memset(o, 0, sizeof(*o));

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            o->model = argv[++i];
        } else if (strcmp(argv[i], "--no-special") == 0) {
            o->no_special = 1;
        } else if (strcmp(argv[i], "--skip-special") == 0) {
            o->skip_special = 1;
        } else if (strcmp(argv[i], "--plain-user-text") == 0) {
            o->plain_user_text = 1;
        } else if (strcmp(argv[i], "--tool-call-parser") == 0
                   && i + 1 < argc)
        {
            o->tool_parser = argv[++i];
        } else if (strcmp(argv[i], "--chat-template") == 0 && i + 1 < argc) {
            o->chat_template = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0
                   || strcmp(argv[i], "--help") == 0)
        {
            return 1;
        } else {
            fprintf(stderr, "kimi-engine %s: unknown option \"%s\"\n",
                    argv[0], argv[i]);
            return 2;
        }
    }

    if (o->model == NULL) {
        fprintf(stderr, "kimi-engine %s: --model DIR is required\n", argv[0]);
        return 2;
    }

    return 0;
}


static char *
kimi_text_stdin(size_t *len)
{
    char    *buf = NULL, *nb;
    size_t   cap = 0, n = 0, k;

    for ( ;; ) {
        if (n + 65536 > cap) {
            cap = cap ? 2 * cap : 65536;
            nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
        k = fread(buf + n, 1, cap - n, stdin);
        n += k;
        if (k == 0) {
            break;
        }
    }

    buf[n] = '\0';
    *len = n;
    return buf;
}


/* Prints obj and a newline; takes the reference. */
static int
kimi_text_print(json_t *obj)
{
    char  *s;

    s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (s == NULL) {
        fprintf(stderr, "kimi-engine: out of memory\n");
        return 1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}


static int
kimi_text_fail(const char *cmd, const kimi_err_t *err)
{
    json_t  *o = json_object();

    json_object_set_new(o, "error", json_string(err->msg));
    json_object_set_new(o, "code", json_string(kimi_err_name(err->code)));
    kimi_text_print(o);
    fprintf(stderr, "kimi-engine %s: %s\n", cmd, err->msg);
    return 1;
}


static json_t *
kimi_text_request(const char *buf, size_t len, int raw_ok, kimi_err_t *err)
{
    json_t        *req;
    json_error_t   jerr;

    req = json_loadb(buf, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (req != NULL && (json_is_object(req) || json_is_array(req))) {
        return req;
    }
    json_decref(req);

    if (raw_ok) {
        return json_stringn(buf, len);          /* NULL if not UTF-8 */
    }

    kimi_err_set(err, KIMI_EINVAL, "stdin is not a JSON request: %s",
                 jerr.text);
    return NULL;
}


/* Reads stdin and parses it as a request; NULL with err set on failure.
 * With raw_ok, stdin that is not JSON becomes a string, and NULL then means
 * it was not UTF-8. */
static json_t *
kimi_text_read_request(int raw_ok, kimi_err_t *err)
{
    char    *buf;
    size_t   len;
    json_t  *req;

    buf = kimi_text_stdin(&len);
    if (buf == NULL) {
        kimi_err_set(err, KIMI_ENOMEM, "out of memory reading stdin");
        return NULL;
    }

    err->msg[0] = '\0';
    req = kimi_text_request(buf, len, raw_ok, err);
    free(buf);
    if (req == NULL && err->msg[0] == '\0') {
        kimi_err_set(err, KIMI_EINVAL, "stdin is not valid UTF-8");
    }

    return req;
}


/* Prints {"prompt": text}; frees text. */
static int
kimi_text_print_prompt(char *text, size_t len)
{
    json_t  *out = json_object();

    json_object_set_new(out, "prompt", json_stringn(text, len));
    free(text);
    return kimi_text_print(out);
}


static int
kimi_text_render(const kimi_template_t *t, json_t *req, char **text,
    size_t *len, kimi_span_t **plain, size_t *n_plain, kimi_err_t *err)
{
    json_t  *agp = json_object_get(req, "add_generation_prompt");

    /* vLLM's default for /tokenize and chat requests is true */
    return kimi_template_render_ex(t, json_object_get(req, "messages"),
                                   json_object_get(req, "tools"),
                                   agp == NULL || json_is_true(agp), text,
                                   len, plain, n_plain, err);
}


int
kimi_cmd_tokenize(int argc, char **argv)
{
    int                rc;
    char              *text = NULL;
    size_t             len, n_ids, i, n_plain = 0;
    json_t            *req, *tokens, *out;
    int32_t           *ids;
    kimi_err_t         err;
    kimi_span_t       *plain = NULL;
    kimi_template_t   *t = NULL;
    kimi_text_opts_t   o;
    kimi_tokenizer_t  *tok;

    rc = kimi_text_args(argc, argv, &o);
    if (rc != 0) {
        return kimi_text_usage(argv[0], rc == 1 ? 0 : 2);
    }

    if (kimi_tokenizer_load(&tok, o.model, &err) != 0) {
        return kimi_text_fail(argv[0], &err);
    }

    req = kimi_text_read_request(1, &err);
    if (req == NULL) {
        kimi_tokenizer_free(tok);
        return kimi_text_fail(argv[0], &err);
    }

    rc = 0;
    if (json_is_object(req) && json_object_get(req, "messages") != NULL) {
        rc = kimi_template_load(&t, o.model, o.chat_template, &err);
        if (rc == 0) {
            rc = kimi_text_render(t, req, &text, &len,
                                  o.plain_user_text ? &plain : NULL,
                                  o.plain_user_text ? &n_plain : NULL, &err);
        }

    } else {
        json_t  *p = json_is_string(req) ? req : json_object_get(req,
                                                                 "prompt");

        if (!json_is_string(p)) {
            rc = kimi_err_set(&err, KIMI_EINVAL, "the request needs "
                              "\"prompt\" (a string) or \"messages\"");
        } else {
            len = json_string_length(p);
            text = malloc(len + 1);
            if (text != NULL) {
                memcpy(text, json_string_value(p), len + 1);
            }
        }
    }

    if (rc == 0 && text != NULL) {
        rc = kimi_tokenize_ex(tok, text, len, !o.no_special, plain, n_plain,
                              &ids, &n_ids, &err);
    }

    free(text);
    free(plain);
    kimi_template_free(t);
    json_decref(req);

    if (rc != 0) {
        kimi_tokenizer_free(tok);
        return kimi_text_fail(argv[0], &err);
    }

    tokens = json_array();
    for (i = 0; i < n_ids; i++) {
        json_array_append_new(tokens, json_integer(ids[i]));
    }
    free(ids);
    kimi_tokenizer_free(tok);

    out = json_object();
    json_object_set_new(out, "count", json_integer((json_int_t) n_ids));
    json_object_set_new(out, "tokens", tokens);
    return kimi_text_print(out);
}


int
kimi_cmd_detokenize(int argc, char **argv)
{
    int                rc;
    char              *text;
    size_t             len, i, n;
    json_t            *req, *list, *v;
    int32_t           *ids;
    kimi_err_t         err;
    kimi_text_opts_t   o;
    kimi_tokenizer_t  *tok;

    rc = kimi_text_args(argc, argv, &o);
    if (rc != 0) {
        return kimi_text_usage(argv[0], rc == 1 ? 0 : 2);
    }

    if (kimi_tokenizer_load(&tok, o.model, &err) != 0) {
        return kimi_text_fail(argv[0], &err);
    }

    req = kimi_text_read_request(0, &err);
    if (req == NULL) {
        kimi_tokenizer_free(tok);
        return kimi_text_fail(argv[0], &err);
    }

    list = json_is_array(req) ? req : json_object_get(req, "tokens");
    if (!json_is_array(list)) {
        json_decref(req);
        kimi_tokenizer_free(tok);
        kimi_err_set(&err, KIMI_EINVAL, "the request needs \"tokens\" (a "
                     "list of ids)");
        return kimi_text_fail(argv[0], &err);
    }

    n = json_array_size(list);
    ids = malloc((n + 1) * sizeof(int32_t));
    rc = ids == NULL ? kimi_err_set(&err, KIMI_ENOMEM, "out of memory") : 0;
    json_array_foreach(list, i, v) {
        if (rc != 0) {
            break;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0
            || json_integer_value(v) > INT32_MAX)
        {
            rc = kimi_err_set(&err, KIMI_EINVAL, "tokens[%zu] is not a "
                              "token id", i);
            break;
        }
        ids[i] = (int32_t) json_integer_value(v);
    }

    if (rc == 0) {
        rc = kimi_detokenize(tok, ids, n, o.skip_special, &text, &len, &err);
    }
    free(ids);
    json_decref(req);
    kimi_tokenizer_free(tok);

    if (rc != 0) {
        return kimi_text_fail(argv[0], &err);
    }

    return kimi_text_print_prompt(text, len);
}


int
kimi_cmd_render(int argc, char **argv)
{
    int                rc;
    char              *text;
    size_t             len;
    json_t            *req;
    kimi_err_t         err;
    kimi_template_t   *t;
    kimi_text_opts_t   o;

    rc = kimi_text_args(argc, argv, &o);
    if (rc != 0) {
        return kimi_text_usage(argv[0], rc == 1 ? 0 : 2);
    }

    if (kimi_template_load(&t, o.model, o.chat_template, &err) != 0) {
        return kimi_text_fail(argv[0], &err);
    }

    req = kimi_text_read_request(0, &err);
    if (req == NULL || !json_is_object(req)) {
        if (req != NULL) {
            kimi_err_set(&err, KIMI_EINVAL, "the request must be an object "
                         "with \"messages\"");
        }
        json_decref(req);
        kimi_template_free(t);
        return kimi_text_fail(argv[0], &err);
    }

    rc = kimi_text_render(t, req, &text, &len, NULL, NULL, &err);
    json_decref(req);
    kimi_template_free(t);
    if (rc != 0) {
        return kimi_text_fail(argv[0], &err);
    }

    return kimi_text_print_prompt(text, len);
}


typedef struct {
    char            *content;
    size_t           content_len;
    json_t          *calls;
    char            *args;
    size_t           args_len;
    int              failed;
} kimi_tp_collect_t;


static int
kimi_tp_append(char **buf, size_t *len, const char *s, size_t n)
{
    char  *nb = realloc(*buf, *len + n + 1);

    if (nb == NULL) {
        return -1;
    }
    memcpy(nb + *len, s, n);
    *len += n;
    nb[*len] = '\0';
    *buf = nb;
    return 0;
}


static void
kimi_tp_collect(void *ctx, const kimi_tool_ev_t *ev)
{
    kimi_tp_collect_t  *c = ctx;
    json_t             *call, *fn;

    switch (ev->type) {
    case KIMI_TOOL_EV_CONTENT:
        c->failed |= kimi_tp_append(&c->content, &c->content_len, ev->text,
                                    ev->len);
        break;
    case KIMI_TOOL_EV_CALL_BEGIN:
        call = json_object();
        fn = json_object();
        json_object_set_new(call, "id", json_string(ev->id));
        json_object_set_new(call, "type", json_string("function"));
        json_object_set_new(fn, "name", json_string(ev->name));
        json_object_set_new(call, "function", fn);
        json_array_append_new(c->calls, call);
        c->args_len = 0;
        c->failed |= kimi_tp_append(&c->args, &c->args_len, "", 0);
        break;
    case KIMI_TOOL_EV_ARGS:
        c->failed |= kimi_tp_append(&c->args, &c->args_len, ev->text,
                                    ev->len);
        break;
    case KIMI_TOOL_EV_CALL_END:
        call = json_array_get(c->calls, json_array_size(c->calls) - 1);
        json_object_set_new(json_object_get(call, "function"), "arguments",
                            json_stringn(c->args, c->args_len));
        break;
    }
}


int
kimi_cmd_parse_tools(int argc, char **argv)
{
    int                 rc;
    json_t             *req, *text, *out;
    kimi_err_t          err;
    kimi_text_opts_t    o;
    int                 format;
    kimi_tp_collect_t   c;
    kimi_toolparse_t   *p;
    kimi_tokenizer_t   *tok;

    rc = kimi_text_args(argc, argv, &o);
    if (rc != 0) {
        return kimi_text_usage(argv[0], rc == 1 ? 0 : 2);
    }

    req = kimi_text_read_request(1, &err);
    text = json_is_string(req) ? req : json_object_get(req, "text");
    if (!json_is_string(text)) {
        json_decref(req);
        kimi_err_set(&err, KIMI_EINVAL, "stdin must be UTF-8 text or "
                     "{\"text\": s}");
        return kimi_text_fail(argv[0], &err);
    }

    if (o.tool_parser != NULL) {
        format = kimi_tool_format_by_name(o.tool_parser);
        if (format < 0) {
            json_decref(req);
            kimi_err_set(&err, KIMI_EINVAL, "--tool-call-parser \"%s\" is "
                         "not kimi_k2, deepseek_v3 or deepseek_v31",
                         o.tool_parser);
            return kimi_text_fail(argv[0], &err);
        }

    } else {
        rc = kimi_tokenizer_load(&tok, o.model, &err);
        if (rc != 0) {
            json_decref(req);
            return kimi_text_fail(argv[0], &err);
        }
        format = kimi_tool_format_of(tok);
        kimi_tokenizer_free(tok);
    }

    memset(&c, 0, sizeof(c));
    c.calls = json_array();
    p = kimi_toolparse_new_format((kimi_tool_format_e) format,
                                  kimi_tp_collect, &c);
    rc = p == NULL ? KIMI_ENOMEM
         : kimi_toolparse_feed(p, json_string_value(text),
                               json_string_length(text));
    if (rc == 0) {
        rc = kimi_toolparse_finish(p);
    }
    kimi_toolparse_free(p);
    json_decref(req);

    if (rc != 0 || c.failed) {
        free(c.content);
        free(c.args);
        json_decref(c.calls);
        kimi_err_set(&err, KIMI_ENOMEM, "out of memory");
        return kimi_text_fail(argv[0], &err);
    }

    out = json_object();
    json_object_set_new(out, "content", c.content_len > 0
                        ? json_stringn(c.content, c.content_len)
                        : json_null());
    json_object_set_new(out, "tool_calls", c.calls);
    free(c.content);
    free(c.args);
    return kimi_text_print(out);
}
