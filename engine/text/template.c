/*
 * The chat template of a model directory: load once, render per request.
 *
 * Owns:   finding the template (DIR/chat_template.jinja, else the
 *         "chat_template" of DIR/tokenizer_config.json), compiling it, and
 *         kimi_template_render[_ex](): vLLM's preprocessing (chat.c), then
 *         the evaluator with the variables transformers passes.
 * Never:  tokenizes.
 * Holds:  a loaded template is immutable and may be rendered by many
 *         threads at once.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template_internal.h"

struct kimi_template {
    kimi_node_t  **body;
    size_t         n_body;
    char          *source;       /* "DIR/chat_template.jinja" etc. */
    char          *tokens[4];    /* bos, eos, unk, pad from the config */
    int            string_content;  /* vLLM's content format "string" */
    int            detected;        /* what load found it to be */
};


/* X['content'] or X.content */
static int
kimi_template_is_content(const kimi_node_t *n)
{
    return n != NULL
           && ((n->type == KIMI_N_GETATTR && n->str != NULL
                && strcmp(n->str, "content") == 0)
               || (n->type == KIMI_N_GETITEM && n->b != NULL
                   && n->b->type == KIMI_N_CONST
                   && json_is_string(n->b->value)
                   && strcmp(json_string_value(n->b->value), "content") == 0));
}


/* Whether the statements loop over a message's content (directly, or over
 * a name set from it): vLLM's content-format detection, which then hands
 * such templates content as a list of parts ("openai") and every other
 * template one string ("string": the text parts joined with newlines). */
static int
kimi_template_loops_content(kimi_node_t **v, size_t n, char **names,
    size_t *n_names)
{
    size_t              i, k;
    const kimi_node_t  *it;

    for (i = 0; i < n; i++) {
        if (v[i]->type == KIMI_N_SET && kimi_template_is_content(v[i]->a)
            && *n_names < 8)
        {
            names[(*n_names)++] = v[i]->str;
        }

        if (v[i]->type == KIMI_N_FOR) {
            it = v[i]->a;
            /* "for part in message['content'] if ..." parses the same */
            if (kimi_template_is_content(it)) {
                return 1;
            }
            for (k = 0; it != NULL && it->type == KIMI_N_NAME && k < *n_names;
                 k++)
            {
                if (strcmp(it->str, names[k]) == 0) {
                    return 1;
                }
            }
        }

        if (kimi_template_loops_content(v[i]->body, v[i]->n_body, names,
                                        n_names)
            || kimi_template_loops_content(v[i]->orelse, v[i]->n_orelse,
                                           names, n_names))
        {
            return 1;
        }
    }

    return 0;
}


static char *
kimi_read_text(const char *path, size_t *len)
{
    FILE  *f;
    long   n;
    char  *s;

    f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) != 0)
    {
        fclose(f);
        return NULL;
    }
    s = malloc((size_t) n + 1);
    if (s == NULL || fread(s, 1, (size_t) n, f) != (size_t) n) {
        free(s);
        fclose(f);
        return NULL;
    }
    fclose(f);
    s[n] = '\0';
    *len = (size_t) n;
    return s;
}


static char *
kimi_token_name(json_t *v)
{
    if (json_is_object(v)) {
        v = json_object_get(v, "content");
    }
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}


int
kimi_template_load_string(kimi_template_t **out, const char *src, size_t len,
    const char *name, kimi_err_t *err)
{
    int               rc;
    kimi_ttoks_t      toks;
    kimi_template_t  *t;

    *out = NULL;

    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "chat template: out of memory");
    }

    t->source = strdup(name != NULL ? name : "chat template");
    if (t->source == NULL) {
        free(t);
        return kimi_err_set(err, KIMI_ENOMEM, "chat template: out of memory");
    }

    rc = kimi_tmpl_lex(src, len, &toks, err);
    if (rc == KIMI_OK) {
        rc = kimi_tmpl_parse(&toks, &t->body, &t->n_body, err);
        kimi_tmpl_toks_free(&toks);
    }

    if (rc != KIMI_OK) {
        kimi_err_wrap(err, "%s", t->source);
        kimi_template_free(t);
        return rc;
    }

    {
        char    *names[8];
        size_t   n_names = 0;

        t->string_content = !kimi_template_loops_content(t->body, t->n_body,
                                                         names, &n_names);
        t->detected = t->string_content;
    }

    *out = t;
    return KIMI_OK;
}


int
kimi_template_load(kimi_template_t **out, const char *model_dir,
    const char *chat_template, kimi_err_t *err)
{
    int               rc;
    char              path[4096], cfg_path[4096];
    char             *src = NULL;
    size_t            len = 0, i;
    json_t           *cfg, *ct, *x;
    json_error_t      jerr;
    kimi_template_t  *t;
    static const char *fields[4] = {
        "bos_token", "eos_token", "unk_token", "pad_token"
    };

    *out = NULL;

    snprintf(cfg_path, sizeof(cfg_path), "%s/tokenizer_config.json",
             model_dir);
    cfg = json_load_file(cfg_path, JSON_DECODE_INT_AS_REAL, &jerr);

    if (chat_template != NULL
        && (strstr(chat_template, "{{") || strstr(chat_template, "{%")))
    {
        len = strlen(chat_template);
        src = strdup(chat_template);
        snprintf(path, sizeof(path), "the chat template given inline");
        if (src == NULL) {
            json_decref(cfg);
            return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
        }

    } else if (chat_template != NULL) {
        snprintf(path, sizeof(path), "%s", chat_template);
        src = kimi_read_text(path, &len);
        if (src == NULL) {
            json_decref(cfg);
            return kimi_err_set(err, KIMI_EIO, "chat template %s: %s", path,
                                strerror(errno));
        }

    } else {
        snprintf(path, sizeof(path), "%s/chat_template.jinja", model_dir);
        src = kimi_read_text(path, &len);
    }

    if (src == NULL) {
        if (errno != ENOENT) {
            json_decref(cfg);
            return kimi_err_set(err, KIMI_EIO, "%s: %s", path,
                                strerror(errno));
        }

        if (cfg == NULL) {
            return kimi_err_set(err, KIMI_EFORMAT, "no chat template: %s is "
                                "missing and %s: %s", path, cfg_path,
                                jerr.text);
        }

        ct = json_object_get(cfg, "chat_template");
        if (json_is_array(ct)) {
            /* a list of named templates: HF uses "default" */
            json_array_foreach(ct, i, x) {
                if (json_is_string(json_object_get(x, "name"))
                    && strcmp(json_string_value(json_object_get(x, "name")),
                              "default") == 0)
                {
                    ct = json_object_get(x, "template");
                    break;
                }
            }
        }

        if (!json_is_string(ct)) {
            json_decref(cfg);
            return kimi_err_set(err, KIMI_EFORMAT, "no chat template: %s is "
                                "missing and %s has no \"chat_template\" "
                                "string", path, cfg_path);
        }

        len = json_string_length(ct);
        src = malloc(len + 1);
        if (src == NULL) {
            json_decref(cfg);
            return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
        }
        memcpy(src, json_string_value(ct), len + 1);
        snprintf(path, sizeof(path), "%.4000s (chat_template)", cfg_path);
    }

    rc = kimi_template_load_string(&t, src, len, path, err);
    free(src);
    if (rc != KIMI_OK) {
        json_decref(cfg);
        return rc;
    }

    for (i = 0; i < 4 && cfg != NULL; i++) {
        t->tokens[i] = kimi_token_name(json_object_get(cfg, fields[i]));
    }
    json_decref(cfg);

    *out = t;
    return KIMI_OK;
}


void
kimi_template_free(kimi_template_t *t)
{
    size_t  i;

    if (t == NULL) {
        return;
    }
    kimi_tmpl_nodes_free(t->body, t->n_body);
    for (i = 0; i < 4; i++) {
        free(t->tokens[i]);
    }
    free(t->source);
    free(t);
}


int
kimi_template_content_format(kimi_template_t *t, const char *format)
{
    if (strcmp(format, "auto") == 0) {
        t->string_content = t->detected;
    } else if (strcmp(format, "string") == 0) {
        t->string_content = 1;
    } else if (strcmp(format, "openai") == 0) {
        t->string_content = 0;
    } else {
        return KIMI_EINVAL;
    }

    return KIMI_OK;
}


int
kimi_template_render_ex(const kimi_template_t *t, json_t *messages,
    json_t *tools, int add_generation_prompt, char **text, size_t *len,
    kimi_span_t **plain, size_t *n_plain, kimi_err_t *err)
{
    return kimi_template_render_kw(t, messages, tools, add_generation_prompt,
                                   NULL, text, len, plain, n_plain, err);
}


int
kimi_template_render_kw(const kimi_template_t *t, json_t *messages,
    json_t *tools, int add_generation_prompt, json_t *kwargs, char **text,
    size_t *len, kimi_span_t **plain, size_t *n_plain, kimi_err_t *err)
{
    int               rc;
    json_t           *conv = NULL, *tool_dicts = NULL;
    kimi_buf_t        out;
    kimi_tmpl_vars_t  vars;

    *text = NULL;
    *len = 0;
    if (plain != NULL) {
        *plain = NULL;
        *n_plain = 0;
    }

    rc = kimi_chat_messages(messages, t->string_content, &conv, err);
    if (rc == KIMI_OK) {
        rc = kimi_chat_tools(tools, &tool_dicts, err);
    }
    if (rc != KIMI_OK) {
        json_decref(conv);
        return rc;
    }

    memset(&out, 0, sizeof(out));
    memset(&vars, 0, sizeof(vars));
    vars.messages = conv;
    vars.tools = tool_dicts;
    vars.add_generation_prompt = add_generation_prompt;
    vars.kwargs = kwargs;
    vars.bos_token = t->tokens[0];
    vars.eos_token = t->tokens[1];
    vars.unk_token = t->tokens[2];
    vars.pad_token = t->tokens[3];

    rc = kimi_tmpl_eval(t->body, t->n_body, &vars, &out, err);

    json_decref(conv);
    json_decref(tool_dicts);

    if (rc == KIMI_OK && out.failed) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "chat template: out of memory");
    }
    if (rc != KIMI_OK) {
        kimi_buf_free(&out);
        return rc;
    }

    if (out.p == NULL) {
        out.p = strdup("");
        if (out.p == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "out of memory");
        }
    }

    *text = out.p;
    *len = out.len;
    if (plain != NULL) {
        *plain = out.spans;
        *n_plain = out.n_spans;
    } else {
        free(out.spans);
    }
    return KIMI_OK;
}


int
kimi_template_render(const kimi_template_t *t, json_t *messages,
    json_t *tools, int add_generation_prompt, char **text, size_t *len,
    kimi_err_t *err)
{
    return kimi_template_render_ex(t, messages, tools, add_generation_prompt,
                                   text, len, NULL, NULL, err);
}


/* The last occurrence of needle in hay, or NULL. */
static const char *
kimi_memrmem(const char *hay, size_t n, const char *needle, size_t m)
{
    size_t  i;

    if (m > n) {
        return NULL;
    }
    for (i = n - m + 1; i-- > 0; ) {
        if (memcmp(hay + i, needle, m) == 0) {
            return hay + i;
        }
    }
    return NULL;
}


static int
kimi_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v'
           || c == '\f';
}


/*
 * continue_final_message, as transformers' apply_chat_template does it:
 * the final message's text (a string, or the last part with "text" of a
 * list) must appear in the rendering; the rendering ends right after its
 * last occurrence (after the stripped text where the template trimmed
 * trailing whitespace), so the model continues that message.
 */
int
kimi_template_continue_final(json_t *messages, char *text, size_t *len,
    kimi_span_t *plain, size_t *n_plain, kimi_err_t *err)
{
    json_t      *last, *content, *part;
    const char  *c, *at;
    size_t       cl, lead, trail, i, cut;

    last = json_is_array(messages) && json_array_size(messages) > 0
           ? json_array_get(messages, json_array_size(messages) - 1) : NULL;
    content = json_is_object(last) ? json_object_get(last, "content") : NULL;

    if (json_is_array(content)) {
        part = NULL;
        for (i = json_array_size(content); i-- > 0; ) {
            part = json_object_get(json_array_get(content, i), "text");
            if (json_is_string(part)) {
                break;
            }
            part = NULL;
        }
        content = part;
    }

    if (!json_is_string(content)) {
        return kimi_err_set(err, KIMI_EINVAL, "continue_final_message is set"
                            " but the final message has no text to continue");
    }

    c = json_string_value(content);
    cl = json_string_length(content);
    for (lead = 0; lead < cl && kimi_is_space(c[lead]); lead++) { }
    for (trail = 0; trail < cl - lead && kimi_is_space(c[cl - 1 - trail]);
         trail++) { }

    at = kimi_memrmem(text, *len, c + lead, cl - lead - trail);
    if (at == NULL || cl - lead - trail == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "continue_final_message is set"
                            " but the final message does not appear in the"
                            " chat after applying the chat template");
    }

    cut = (size_t) (at - text);
    if (cut + (cl - lead) <= *len && memcmp(at, c, cl) == 0
        && cl - lead == cl)
    {
        cut += cl;                      /* the template kept it verbatim */
    } else {
        cut += cl - lead - trail;       /* trailing whitespace was trimmed */
    }

    *len = cut;
    text[cut] = '\0';

    for (i = 0; plain != NULL && i < *n_plain; i++) {
        if (plain[i].off >= cut) {
            *n_plain = i;
            break;
        }
        if (plain[i].off + plain[i].len > cut) {
            plain[i].len = cut - plain[i].off;
        }
    }

    return KIMI_OK;
}
