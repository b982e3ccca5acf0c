
/*
 * The OpenAI surface: request validation and response bodies.
 *
 * Owns:   strict parsing of chat/completions/tokenize/detokenize bodies
 *         into ngx_http_kimi_params_t, OpenAI-shaped error bodies, the
 *         non-streaming response objects and the JSON string escaper the
 *         SSE writer uses.
 * Never:  talks to the engine or the tokenizer; a field is either checked
 *         here with a message naming it, or ignored on purpose (user,
 *         metadata ...).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


#define NGX_HTTP_KIMI_ERR_LEN   512


static ngx_int_t ngx_http_kimi_parse_common(ngx_http_kimi_ctx_t *ctx,
    json_t *root, u_char *err, const char **param);
static ngx_int_t ngx_http_kimi_parse_logit_bias(json_t *v,
    kimi_shm_sampling_t *s, u_char *err);
static ngx_int_t ngx_http_kimi_parse_allowed_ids(json_t *v,
    kimi_shm_sampling_t *s, u_char *err);
static ngx_int_t ngx_http_kimi_structured_outputs(json_t *root, u_char *err,
    const char **param);
static ngx_int_t ngx_http_kimi_check_structured(ngx_http_kimi_ctx_t *ctx,
    json_t *root, u_char *err, const char **param);
static ngx_int_t ngx_http_kimi_check_unimplemented(json_t *root, u_char *err,
    const char **param);
static ngx_int_t ngx_http_kimi_parse_chat(ngx_http_kimi_ctx_t *ctx,
    json_t *root, u_char *err, const char **param);
static ngx_int_t ngx_http_kimi_parse_prompt(ngx_http_kimi_ctx_t *ctx,
    json_t *root, u_char *err, const char **param);
static ngx_int_t ngx_http_kimi_parse_stop(ngx_http_kimi_ctx_t *ctx,
    json_t *v, u_char *err);
static ngx_int_t ngx_http_kimi_token_array(json_t *v);
static json_t *ngx_http_kimi_find_nul(json_t *v, ngx_uint_t top);
static ngx_int_t ngx_http_kimi_get_number(json_t *root, const char *key,
    double lo, double hi, double *out, u_char *err);
static ngx_int_t ngx_http_kimi_get_int(json_t *root, const char *key,
    json_int_t lo, json_int_t hi, json_int_t *out, u_char *err);
static ngx_int_t ngx_http_kimi_chat_echo(ngx_http_kimi_ctx_t *ctx,
    json_t *messages);
static ngx_int_t ngx_http_kimi_get_bool(json_t *root, const char *key,
    ngx_uint_t *out, u_char *err);


ngx_int_t
ngx_http_kimi_parse_request(ngx_http_kimi_ctx_t *ctx, u_char *body, size_t len,
    ngx_str_t *error, ngx_str_t *param)
{
    u_char                *err;
    json_t                *root;
    ngx_int_t              rc;
    ngx_uint_t             flag;
    const char            *p;
    json_error_t           jerr;
    ngx_http_request_t    *r;

    r = ctx->request;

    err = ngx_pnalloc(r->pool, NGX_HTTP_KIMI_ERR_LEN);
    if (err == NULL) {
        return NGX_ERROR;
    }

    error->data = err;
    p = NULL;
    rc = NGX_ERROR;

    if (len == 0) {
        error->len = ngx_sprintf(err, "The request body is empty; expected "
                                 "a JSON object") - err;
        return NGX_ERROR;
    }

    /* jansson refuses invalid UTF-8 (a 400); NUL is let in here and
     * refused below everywhere but a prompt string */
    root = json_loadb((char *) body, len, JSON_ALLOW_NUL, &jerr);
    if (root == NULL) {
        error->len = ngx_snprintf(err, NGX_HTTP_KIMI_ERR_LEN - 1,
                                  "Invalid JSON body: %s (line %d, column %d)",
                                  jerr.text, jerr.line, jerr.column)
                     - err;
        return NGX_ERROR;
    }

    ctx->params.root = root;     /* the cleanup handler decrefs it */

    if (ctx->responses && json_is_object(root)) {
        /* a Responses request becomes the chat request it means; the
         * original rides along (under "__responses") for the answer */
        json_t  *chat;

        ngx_memzero(err, NGX_HTTP_KIMI_ERR_LEN);
        if (ngx_http_kimi_responses_request(ctx, root, &chat, err, &p)
            != NGX_OK)
        {
            error->len = ngx_strlen(err);
            if (p) {
                param->data = (u_char *) p;
                param->len = ngx_strlen(p);
            }
            return NGX_ERROR;
        }
        ctx->params.root = chat;
        json_object_set_new(chat, "__responses", root);
        root = chat;
    }

    if (!json_is_object(root)) {
        error->len = ngx_sprintf(err, "The request body must be a JSON "
                                 "object") - err;
        return NGX_ERROR;
    }

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_INVOCATIONS) {
        /* vLLM's /invocations: "messages" is a chat, "prompt" a completion */
        if (json_object_get(root, "messages") != NULL) {
            ctx->route = NGX_HTTP_KIMI_ROUTE_CHAT;

        } else if (json_object_get(root, "prompt") != NULL) {
            ctx->route = NGX_HTTP_KIMI_ROUTE_COMPLETIONS;

        } else {
            error->len = ngx_sprintf(err, "/invocations takes a chat "
                                     "(\"messages\") or a completion "
                                     "(\"prompt\") request") - err;
            return NGX_ERROR;
        }

        ctx->usage.route = ctx->route;
    }

    ngx_memzero(err, NGX_HTTP_KIMI_ERR_LEN);

    switch (ctx->route) {

    case NGX_HTTP_KIMI_ROUTE_CHAT:
        rc = ngx_http_kimi_parse_common(ctx, root, err, &p);
        if (rc == NGX_OK) {
            rc = ngx_http_kimi_parse_chat(ctx, root, err, &p);
        }
        break;

    case NGX_HTTP_KIMI_ROUTE_COMPLETIONS:
        rc = ngx_http_kimi_parse_common(ctx, root, err, &p);
        if (rc == NGX_OK) {
            rc = ngx_http_kimi_parse_prompt(ctx, root, err, &p);
        }
        break;

    case NGX_HTTP_KIMI_ROUTE_TOKENIZE:
        if (json_object_get(root, "messages") != NULL) {
            rc = ngx_http_kimi_parse_chat(ctx, root, err, &p);

        } else {
            rc = ngx_http_kimi_parse_prompt(ctx, root, err, &p);
        }

        if (rc == NGX_OK) {
            p = "return_token_strs";
            rc = ngx_http_kimi_get_bool(root, "return_token_strs", &flag, err);
            ctx->params.token_strs = flag;
        }
        break;

    case NGX_HTTP_KIMI_ROUTE_DETOKENIZE:
        if (ngx_http_kimi_token_array(json_object_get(root, "tokens"))
            != NGX_OK)
        {
            ngx_sprintf(err, "\"tokens\" must be an array of token ids");
            p = "tokens";
            rc = NGX_ERROR;
            break;
        }

        ctx->params.prompt_ids = json_object_get(root, "tokens");
        rc = NGX_OK;
        break;

    default:
        break;
    }

    /* vLLM's add_special_tokens: what encode() adds around a text prompt
     * (a tokenizer_config's add_bos_token; chat templates write their
     * own), on for prompts and off for messages unless asked */
    if (rc == NGX_OK && ctx->route != NGX_HTTP_KIMI_ROUTE_DETOKENIZE) {
        p = "add_special_tokens";
        ctx->params.add_special = ctx->params.messages == NULL;
        if (json_object_get(root, "add_special_tokens") != NULL
            && !json_is_null(json_object_get(root, "add_special_tokens")))
        {
            rc = ngx_http_kimi_get_bool(root, "add_special_tokens", &flag,
                                        err);
            ctx->params.add_special = flag;
        }
    }

    /*
     * \u0000 is text a prompt or a message may hold (vLLM tokenizes it; a
     * random-token benchmark makes such prompts): those strings are carried
     * with their lengths, through the chat template too, and so are stop
     * strings.  Every other string is read as a C string (names, roles,
     * ids), so a NUL there is refused rather than cut short silently.
     */
    if (rc == NGX_OK && ngx_http_kimi_find_nul(root, 1) != NULL) {
        ngx_sprintf(err, "A string holds a NUL character (\\u0000); it is"
                    " accepted only in a prompt, a message's content or a"
                    " stop string");
        p = NULL;
        rc = NGX_ERROR;
    }

    if (rc != NGX_OK) {
        error->len = ngx_strlen(err);
        if (p) {
            param->data = (u_char *) p;
            param->len = ngx_strlen(p);
        }
    }

    return rc;
}




/* The slot's guided words: tag, then the compiled program (taken over). */
static ngx_int_t
ngx_http_kimi_guided_program(ngx_http_kimi_ctx_t *ctx, int32_t tag,
    int32_t *prog, size_t n, u_char *err)
{
    int32_t  *w;

    w = ngx_palloc(ctx->request->pool, (n + 1) * sizeof(int32_t));
    if (w == NULL) {
        free(prog);
        ngx_sprintf(err, "out of memory");
        return NGX_ERROR;
    }

    w[0] = tag;
    ngx_memcpy(w + 1, prog, n * sizeof(int32_t));
    free(prog);

    ctx->params.guided = w;
    ctx->params.n_guided = n + 1;
    return NGX_OK;
}


/* vLLM's newer spelling, structured_outputs: {"json": ...} | {"regex":
 * ...} | {"choice": [...]} | {"grammar": ...} | {"json_object": true}, is
 * moved onto the guided_* / response_format fields it stands for (so one
 * path checks and enforces both), its disable_any_whitespace onto the
 * sampling parameters, its structural_tag (a JSON text, as vLLM takes it,
 * or the object) onto response_format {"type": "structural_tag", ...};
 * one constraint given both ways is a 400. */
static ngx_int_t
ngx_http_kimi_structured_outputs(json_t *root, u_char *err, const char **param)
{
    json_t             *so, *v;
    const char         *key;
    ngx_uint_t          i, n = 0;
    static const char  *maps[][2] = {
        { "json", "guided_json" }, { "regex", "guided_regex" },
        { "choice", "guided_choice" }, { "grammar", "guided_grammar" },
        { "structural_tag", NULL }, { "json_object", NULL },
        { "disable_fallback", NULL }, { "disable_any_whitespace", NULL },
        { "disable_additional_properties", NULL },
        { "whitespace_pattern", NULL },
    };

    *param = "structured_outputs";
    so = json_object_get(root, "structured_outputs");

    if (so == NULL || json_is_null(so)) {
        return NGX_OK;
    }

    if (!json_is_object(so)) {
        ngx_sprintf(err, "\"structured_outputs\" must be an object");
        return NGX_ERROR;
    }

    json_object_foreach(so, key, v) {
        for (i = 0; i < sizeof(maps) / sizeof(maps[0]); i++) {
            if (ngx_strcmp(key, maps[i][0]) == 0) {
                break;
            }
        }

        if (i == sizeof(maps) / sizeof(maps[0])) {
            ngx_sprintf(err, "\"structured_outputs\" has an unknown field"
                        " \"%*s\"", ngx_min(ngx_strlen(key), (size_t) 64),
                        key);
            return NGX_ERROR;
        }

        if (json_is_null(v) || json_is_false(v)) {
            continue;
        }

        if (ngx_strcmp(key, "disable_additional_properties") == 0
            || ngx_strcmp(key, "whitespace_pattern") == 0)
        {
            ngx_sprintf(err, "\"structured_outputs\": \"%s\" is not"
                        " supported: this server implements json, regex,"
                        " choice, grammar, json_object and structural_tag",
                        key);
            return NGX_ERROR;
        }

        if (ngx_strcmp(key, "disable_any_whitespace") == 0) {
            if (!json_is_true(v)) {
                ngx_sprintf(err, "\"structured_outputs\":"
                            " \"disable_any_whitespace\" must be true or"
                            " false");
                return NGX_ERROR;
            }
            /* read with the sampling parameters: JSON without whitespace
             * outside strings */
            json_object_set_new(root, "disable_any_whitespace", json_true());
            continue;
        }

        if (maps[i][1] == NULL && ngx_strcmp(key, "json_object") != 0
            && ngx_strcmp(key, "structural_tag") != 0)
        {
            continue;                         /* a backend preference */
        }

        n++;
        if (ngx_strcmp(key, "structural_tag") == 0) {
            json_t        *tag;
            json_error_t   je;

            tag = json_is_string(v) ? json_loads(json_string_value(v), 0, &je)
                                    : json_incref(v);
            if (!json_is_object(tag)) {
                json_decref(tag);
                ngx_sprintf(err, "\"structured_outputs\": \"structural_tag\""
                            " must be a JSON object (or its text) with"
                            " \"structures\" and \"triggers\"");
                return NGX_ERROR;
            }
            v = json_object_get(root, "response_format");
            if (v != NULL && !json_is_null(v)) {
                json_decref(tag);
                ngx_sprintf(err, "\"structured_outputs\" and"
                            " \"response_format\" cannot be combined");
                return NGX_ERROR;
            }
            json_object_set_new(tag, "type", json_string("structural_tag"));
            json_object_set_new(root, "response_format", tag);
            continue;
        }

        if (ngx_strcmp(key, "json_object") == 0) {
            if (!json_is_true(v)) {
                ngx_sprintf(err, "\"structured_outputs\": \"json_object\""
                            " must be true or false");
                return NGX_ERROR;
            }
            v = json_object_get(root, "response_format");
            if (v != NULL && !json_is_null(v)) {
                ngx_sprintf(err, "\"structured_outputs\" and"
                            " \"response_format\" cannot be combined");
                return NGX_ERROR;
            }
            json_object_set_new(root, "response_format",
                                json_pack("{s:s}", "type", "json_object"));
            continue;
        }

        if (json_object_get(root, maps[i][1]) != NULL
            && !json_is_null(json_object_get(root, maps[i][1])))
        {
            ngx_sprintf(err, "\"structured_outputs\": \"%s\" and \"%s\""
                        " cannot be combined", key, maps[i][1]);
            return NGX_ERROR;
        }

        json_object_set(root, maps[i][1], v);
    }

    if (n > 1) {
        ngx_sprintf(err, "\"structured_outputs\" takes one of json, regex,"
                    " choice, grammar, json_object and structural_tag");
        return NGX_ERROR;
    }

    json_object_del(root, "structured_outputs");
    return NGX_OK;
}


/* Structured output, done by the engine's sampler over each token's bytes:
 * JSON mode ({"type": "json_object"}) and a JSON schema (response_format
 * {"type": "json_schema", "json_schema": {"schema": ...}} or vLLM's
 * guided_json), the schema compiled here (engine/text/json_schema.c) into
 * the program the slot carries after the prompt; vLLM's guided_regex the
 * same way, compiled into a DFA (engine/text/regex_dfa.c), and its
 * guided_grammar (GBNF) translated into such a pattern first
 * (engine/text/ebnf.c), or, where its rules recurse, into a grammar
 * program the sampler runs as a pushdown automaton (engine/text/gram.c).  A schema, pattern or
 * grammar outside the supported subset gets a 400 naming it, never text
 * that silently ignores the constraint. */
static ngx_int_t
ngx_http_kimi_check_structured(ngx_http_kimi_ctx_t *ctx, json_t *root,
    u_char *err, const char **param)
{
    json_t             *v, *t, *schema = NULL, *loaded = NULL, *stag = NULL;
    int32_t            *prog;
    char               *pattern;
    size_t              n, plen;
    int                 rc;
    json_error_t        je;
    char                msg[NGX_HTTP_KIMI_ERR_LEN - 96];
    const char         *type = NULL;

    if (ngx_http_kimi_structured_outputs(root, err, param) != NGX_OK) {
        return NGX_ERROR;
    }

    *param = "response_format";
    v = json_object_get(root, "response_format");

    if (v != NULL && !json_is_null(v)) {
        t = json_is_object(v) ? json_object_get(v, "type") : NULL;

        if (!json_is_string(t)) {
            ngx_sprintf(err, "\"response_format\" must be an object with a"
                        " string \"type\"");
            return NGX_ERROR;
        }

        type = json_string_value(t);

        if (ngx_strcmp(type, "json_schema") == 0) {
            t = json_object_get(v, "json_schema");
            schema = json_is_object(t) ? json_object_get(t, "schema") : NULL;

            if (schema == NULL) {
                ngx_sprintf(err, "\"response_format\" of type"
                            " \"json_schema\" needs \"json_schema\": {\"name\":"
                            " ..., \"schema\": {...}}");
                return NGX_ERROR;
            }

        } else if (ngx_strcmp(type, "structural_tag") == 0) {
            stag = v;

        } else if (ngx_strcmp(type, "text") != 0
                   && ngx_strcmp(type, "json_object") != 0)
        {
            ngx_sprintf(err, "\"response_format\" of type \"%*s\" is not"
                        " supported: this server implements \"text\","
                        " \"json_object\", \"json_schema\" and"
                        " \"structural_tag\"",
                        (size_t) ngx_min(json_string_length(t), (size_t) 64),
                        type);
            return NGX_ERROR;
        }
    }

    v = json_object_get(root, "guided_json");

    if (v != NULL && !json_is_null(v)) {
        *param = "guided_json";

        if (type != NULL && ngx_strcmp(type, "text") != 0) {
            ngx_sprintf(err, "\"guided_json\" and a \"response_format\" of"
                        " type \"%s\" cannot be combined", type);
            return NGX_ERROR;
        }

        if (json_is_string(v)) {            /* vLLM takes the schema as text */
            loaded = json_loads(json_string_value(v), 0, &je);
            if (loaded == NULL) {
                ngx_sprintf(err, "\"guided_json\" is not a JSON schema: %s",
                            je.text);
                return NGX_ERROR;
            }
            schema = loaded;

        } else {
            schema = v;
        }
    }

    v = json_object_get(root, "guided_grammar");

    if (v != NULL && !json_is_null(v)) {
        *param = "guided_grammar";
        json_decref(loaded);

        if (!json_is_string(v)) {
            ngx_sprintf(err, "\"guided_grammar\" must be a string");
            return NGX_ERROR;
        }

        if (schema != NULL || (type != NULL && ngx_strcmp(type, "text") != 0)
            || (json_object_get(root, "guided_regex") != NULL
                && !json_is_null(json_object_get(root, "guided_regex"))))
        {
            ngx_sprintf(err, "\"guided_grammar\" and a regex, JSON mode or"
                        " JSON schema cannot be combined");
            return NGX_ERROR;
        }

        rc = kimi_ebnf_to_regex(json_string_value(v), json_string_length(v),
                                &pattern, &plen, msg, sizeof(msg));

        if (rc == -2) {
            /* rules that refer back to themselves: a pushdown automaton */
            if (kimi_ebnf_to_grammar(json_string_value(v),
                                     json_string_length(v), &prog, &n, msg,
                                     sizeof(msg))
                != 0)
            {
                ngx_sprintf(err, "\"guided_grammar\" cannot be enforced: %s",
                            msg);
                return NGX_ERROR;
            }

            return ngx_http_kimi_guided_program(ctx, KIMI_GRAMMAR_TAG, prog, n,
                                                err);
        }

        if (rc != 0) {
            ngx_sprintf(err, "\"guided_grammar\" cannot be enforced: %s",
                        msg);
            return NGX_ERROR;
        }

        if (plen > KIMI_REGEX_MAX_PATTERN) {
            ngx_sprintf(err, "\"guided_grammar\" cannot be enforced: its"
                        " rules expand to a %uz-byte pattern (at most %d)",
                        plen, KIMI_REGEX_MAX_PATTERN);
            free(pattern);
            return NGX_ERROR;
        }

        rc = kimi_regex_compile(pattern, plen, &prog, &n, msg, sizeof(msg));
        free(pattern);

        if (rc != 0) {
            ngx_sprintf(err, "\"guided_grammar\" cannot be enforced: %s",
                        msg);
            return NGX_ERROR;
        }

        return ngx_http_kimi_guided_program(ctx, KIMI_REGEX_TAG, prog, n, err);
    }

    v = json_object_get(root, "guided_regex");

    if (v != NULL && !json_is_null(v)) {
        *param = "guided_regex";
        json_decref(loaded);

        if (!json_is_string(v)) {
            ngx_sprintf(err, "\"guided_regex\" must be a string");
            return NGX_ERROR;
        }

        if (schema != NULL || (type != NULL && ngx_strcmp(type, "text") != 0))
        {
            ngx_sprintf(err, "\"guided_regex\" and a JSON mode or JSON schema"
                        " cannot be combined");
            return NGX_ERROR;
        }

        if (kimi_regex_compile(json_string_value(v), json_string_length(v),
                               &prog, &n, msg, sizeof(msg))
            != 0)
        {
            ngx_sprintf(err, "\"guided_regex\" cannot be enforced: %s", msg);
            return NGX_ERROR;
        }

        return ngx_http_kimi_guided_program(ctx, KIMI_REGEX_TAG, prog, n, err);
    }

    if (stag != NULL) {
        if (kimi_stag_compile(stag, &prog, &n, msg, sizeof(msg)) != 0) {
            ngx_sprintf(err, "\"response_format\" of type"
                        " \"structural_tag\" cannot be enforced: %s", msg);
            return NGX_ERROR;
        }

        return ngx_http_kimi_guided_program(ctx, KIMI_STAG_TAG, prog, n, err);
    }

    if (schema == NULL) {
        return NGX_OK;
    }

    if (kimi_json_schema_compile(schema, &prog, &n, msg, sizeof(msg)) != 0) {
        json_decref(loaded);
        ngx_sprintf(err, "the JSON schema cannot be enforced: %s", msg);
        return NGX_ERROR;
    }

    json_decref(loaded);

    return ngx_http_kimi_guided_program(ctx, KIMI_SCHEMA_TAG, prog, n, err);
}

/* vLLM's allowed_token_ids: [id, ...], only these can be drawn.  They join
 * the logit_bias list (bias 0 unless logit_bias gave one), which the engine
 * then treats as the whole vocabulary; ids are checked there too. */
static ngx_int_t
ngx_http_kimi_parse_allowed_ids(json_t *v, kimi_shm_sampling_t *s, u_char *err)
{
    size_t      i, j;
    json_t     *id, *o;
    uint32_t    k, kept;

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_array(v) || json_array_size(v) == 0) {
        ngx_sprintf(err, "\"allowed_token_ids\" must be a non-empty list of"
                    " token ids");
        return NGX_ERROR;
    }

    json_array_foreach(v, i, id) {
        if (!json_is_integer(id) || json_integer_value(id) < 0
            || json_integer_value(id) > INT32_MAX)
        {
            ngx_sprintf(err, "\"allowed_token_ids\"[%uz] must be a token id",
                        i);
            return NGX_ERROR;
        }
    }

    /* a logit_bias id outside the list would become drawable: drop it */
    kept = 0;
    for (k = 0; k < s->n_logit_bias; k++) {
        json_array_foreach(v, j, o) {
            if (json_integer_value(o) == s->logit_bias[k].token) {
                s->logit_bias[kept++] = s->logit_bias[k];
                break;
            }
        }
    }
    s->n_logit_bias = kept;

    /* then every allowed id not there yet, bias 0 */
    json_array_foreach(v, i, id) {
        for (k = 0; k < s->n_logit_bias; k++) {
            if (s->logit_bias[k].token == json_integer_value(id)) {
                break;
            }
        }

        if (k < s->n_logit_bias) {
            continue;                   /* a duplicate or a biased id */
        }

        if (s->n_logit_bias == KIMI_SHM_MAX_LOGIT_BIAS) {
            ngx_sprintf(err, "\"allowed_token_ids\" names more than %d"
                        " distinct ids", KIMI_SHM_MAX_LOGIT_BIAS);
            return NGX_ERROR;
        }

        s->logit_bias[s->n_logit_bias].token = (int32_t) json_integer_value(id);
        s->logit_bias[s->n_logit_bias].bias = 0.0f;
        s->n_logit_bias++;
    }

    s->allowed_only = 1;

    return NGX_OK;
}


/* vLLM request fields this server does not implement: ignoring them would
 * answer something other than what was asked, so each is a 400 naming it
 * (their neutral values pass: false, [], 0). */
static ngx_int_t
ngx_http_kimi_check_unimplemented(json_t *root, u_char *err,
    const char **param)
{
    json_t  *v;

    v = json_object_get(root, "use_beam_search");
    if (json_is_true(v)) {
        *param = "use_beam_search";
        ngx_sprintf(err, "\"use_beam_search\" is not supported: this server"
                    " does not implement beam search");
        return NGX_ERROR;
    }

    v = json_object_get(root, "logits_processors");
    if (v != NULL && !json_is_null(v)
        && !(json_is_array(v) && json_array_size(v) == 0))
    {
        *param = "logits_processors";
        ngx_sprintf(err, "\"logits_processors\" is not supported");
        return NGX_ERROR;
    }

    v = json_object_get(root, "chat_template");
    if (v != NULL && !json_is_null(v)) {
        *param = "chat_template";
        ngx_sprintf(err, "\"chat_template\" in a request is not accepted:"
                    " the model's own chat template is used");
        return NGX_ERROR;
    }

    /* JSON output takes any whitespace, or none (disable_any_whitespace) */
    v = json_object_get(root, "guided_whitespace_pattern");
    if (v != NULL && !json_is_null(v)) {
        *param = "guided_whitespace_pattern";
        ngx_sprintf(err, "\"guided_whitespace_pattern\" is not supported:"
                    " JSON output takes any whitespace, or none with"
                    " \"disable_any_whitespace\"");
        return NGX_ERROR;
    }

    v = json_object_get(root, "priority");
    if (v != NULL && !json_is_null(v)
        && !(json_is_integer(v) && json_integer_value(v) == 0))
    {
        *param = "priority";
        ngx_sprintf(err, "\"priority\" is not supported: requests are"
                    " scheduled first come, first served");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* {"token id": bias, ...}: ids as decimal strings (JSON keys), biases in
 * [-100, 100], at most KIMI_SHM_MAX_LOGIT_BIAS; the engine checks the ids
 * against the vocabulary. */
static ngx_int_t
ngx_http_kimi_parse_logit_bias(json_t *v, kimi_shm_sampling_t *s, u_char *err)
{
    u_char      *p, *end;
    double       bias;
    int64_t      id;
    json_t      *b;
    const char  *key;

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_object(v)) {
        ngx_sprintf(err, "\"logit_bias\" must be an object mapping token ids"
                    " to biases");
        return NGX_ERROR;
    }

    if (json_object_size(v) > KIMI_SHM_MAX_LOGIT_BIAS) {
        ngx_sprintf(err, "\"logit_bias\" has %uz entries; at most %d are"
                    " accepted", json_object_size(v),
                    KIMI_SHM_MAX_LOGIT_BIAS);
        return NGX_ERROR;
    }

    json_object_foreach(v, key, b) {
        p = (u_char *) key;
        end = p + ngx_strlen(key);
        id = 0;

        if (p == end || end - p > 10) {
            goto bad_key;
        }

        for ( /* void */ ; p < end; p++) {
            if (*p < '0' || *p > '9') {
                goto bad_key;
            }
            id = id * 10 + (*p - '0');
        }

        if (id > INT32_MAX) {
            goto bad_key;
        }

        if (!json_is_number(b)) {
            ngx_sprintf(err, "\"logit_bias\" of token %L must be a number",
                        id);
            return NGX_ERROR;
        }

        bias = json_number_value(b);
        if (!(bias >= -100.0 && bias <= 100.0)) {
            ngx_sprintf(err, "\"logit_bias\" of token %L must be in"
                        " [-100, 100]", id);
            return NGX_ERROR;
        }

        s->logit_bias[s->n_logit_bias].token = (int32_t) id;
        s->logit_bias[s->n_logit_bias].bias = (float) bias;
        s->n_logit_bias++;
    }

    return NGX_OK;

bad_key:

    ngx_sprintf(err, "\"logit_bias\" keys must be token ids (decimal"
                " integers as strings)");
    return NGX_ERROR;
}

static ngx_int_t
ngx_http_kimi_parse_common(ngx_http_kimi_ctx_t *ctx, json_t *root, u_char *err,
    const char **param)
{
    json_t                  *v, *so;
    double                   d;
    json_int_t               n;
    ngx_uint_t               flag;
    ngx_str_t                why;
    kimi_shm_sampling_t     *s;
    ngx_http_kimi_params_t  *pr;

    const ngx_http_kimi_gen_defaults_t  *gen;

    pr = &ctx->params;
    s = &pr->sampling;

    /* OpenAI's defaults; 0/1 values switch each sampler off */
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    s->repetition_penalty = 1.0f;
    s->top_k = -1;

    /* the model's generation_config.json over them (vLLM's
     * --generation-config auto); the request's own values win */
    gen = ngx_http_kimi_text_gen_defaults(ngx_http_kimi_text_get(&why));
    if (gen != NULL) {
        s->temperature = gen->has_temperature ? gen->temperature
                                              : s->temperature;
        s->top_p = gen->has_top_p ? gen->top_p : s->top_p;
        s->top_k = gen->has_top_k ? gen->top_k : s->top_k;
        s->min_p = gen->has_min_p ? gen->min_p : s->min_p;
        s->repetition_penalty = gen->has_repetition_penalty
                                ? gen->repetition_penalty
                                : s->repetition_penalty;
    }
    pr->max_tokens = -1;
    pr->skip_special = 1;

    v = json_object_get(root, "model");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v)) {
            *param = "model";
            ngx_sprintf(err, "\"model\" must be a string");
            return NGX_ERROR;
        }

        pr->model.data = (u_char *) json_string_value(v);
        pr->model.len = json_string_length(v);
    }

    *param = "stream";
    if (ngx_http_kimi_get_bool(root, "stream", &flag, err) != NGX_OK) {
        return NGX_ERROR;
    }
    pr->stream = flag;

    so = json_object_get(root, "stream_options");
    if (so != NULL && !json_is_null(so)) {
        *param = "stream_options";

        if (!json_is_object(so)) {
            ngx_sprintf(err, "\"stream_options\" must be an object");
            return NGX_ERROR;
        }

        if (!pr->stream) {
            ngx_sprintf(err, "\"stream_options\" is only allowed when "
                        "\"stream\" is true");
            return NGX_ERROR;
        }

        if (ngx_http_kimi_get_bool(so, "include_usage", &flag, err)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
        pr->include_usage = flag;

        /* vLLM's per-chunk usage, which it gives only with include_usage */
        if (ngx_http_kimi_get_bool(so, "continuous_usage_stats", &flag, err)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
        pr->continuous_usage = flag && pr->include_usage;
    }

    /* vLLM's logprobs of the prompt tokens (the engine runs such a prompt
     * a position a step: each position's logits score the next token) */
    v = json_object_get(root, "prompt_logprobs");
    if (v != NULL && !json_is_null(v)) {
        *param = "prompt_logprobs";

        if (!json_is_integer(v) || json_integer_value(v) < 0
            || json_integer_value(v) > KIMI_SHM_MAX_TOP_LOGPROBS)
        {
            ngx_sprintf(err, "\"prompt_logprobs\" must be an integer in "
                        "[0, %d]", KIMI_SHM_MAX_TOP_LOGPROBS);
            return NGX_ERROR;
        }

        if (pr->stream) {
            ngx_sprintf(err, "\"prompt_logprobs\" is not supported with "
                        "\"stream\"");
            return NGX_ERROR;
        }

        pr->prompt_lp_top = (ngx_uint_t) json_integer_value(v);
        pr->prompt_lp = 1;
        pr->sampling.prompt_logprobs = (uint8_t) (1 + pr->prompt_lp_top);
    }

    *param = "max_tokens";
    if (ngx_http_kimi_get_int(root, "max_tokens", 1, UINT32_MAX, &n, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    if (n >= 0) {
        pr->max_tokens = n;
    }

    /* the newer name wins, as in vLLM */
    *param = "max_completion_tokens";
    if (ngx_http_kimi_get_int(root, "max_completion_tokens", 1, UINT32_MAX,
                              &n, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    if (n >= 0) {
        pr->max_tokens = n;
    }

    /* absent, unlike null, has a default of its own on /v1/completions */
    pr->max_tokens_absent = json_object_get(root, "max_tokens") == NULL
                    && json_object_get(root, "max_completion_tokens") == NULL;

    *param = "temperature";
    if (ngx_http_kimi_get_number(root, "temperature", 0, 100, &d, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    if (d >= 0) {
        s->temperature = d;
    }

    *param = "top_p";
    if (ngx_http_kimi_get_number(root, "top_p", 0, 1, &d, err) != NGX_OK) {
        return NGX_ERROR;
    }
    if (d >= 0) {
        if (d == 0) {
            ngx_sprintf(err, "\"top_p\" must be in (0, 1]");
            return NGX_ERROR;
        }
        s->top_p = d;
    }

    *param = "min_p";
    if (ngx_http_kimi_get_number(root, "min_p", 0, 1, &d, err) != NGX_OK) {
        return NGX_ERROR;
    }
    if (d >= 0) {
        s->min_p = d;
    }

    *param = "top_k";
    if (ngx_http_kimi_get_int(root, "top_k", -1, INT32_MAX, &n, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    if (json_object_get(root, "top_k") && !json_is_null(
                                              json_object_get(root, "top_k")))
    {
        s->top_k = (int32_t) n;
    }

    *param = "presence_penalty";
    d = 0;
    v = json_object_get(root, "presence_penalty");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < -2
            || json_number_value(v) > 2)
        {
            ngx_sprintf(err, "\"presence_penalty\" must be a number in "
                        "[-2, 2]");
            return NGX_ERROR;
        }
        s->presence_penalty = json_number_value(v);
    }

    *param = "frequency_penalty";
    v = json_object_get(root, "frequency_penalty");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < -2
            || json_number_value(v) > 2)
        {
            ngx_sprintf(err, "\"frequency_penalty\" must be a number in "
                        "[-2, 2]");
            return NGX_ERROR;
        }
        s->frequency_penalty = json_number_value(v);
    }

    *param = "repetition_penalty";
    v = json_object_get(root, "repetition_penalty");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) <= 0
            || json_number_value(v) > 100)
        {
            ngx_sprintf(err, "\"repetition_penalty\" must be a number in "
                        "(0, 100]");
            return NGX_ERROR;
        }
        s->repetition_penalty = json_number_value(v);
    }

    *param = "seed";
    v = json_object_get(root, "seed");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            ngx_sprintf(err, "\"seed\" must be an integer");
            return NGX_ERROR;
        }
        s->seed = (uint64_t) json_integer_value(v);
        s->has_seed = 1;
    }

    *param = "stop";
    if (ngx_http_kimi_parse_stop(ctx, json_object_get(root, "stop"), err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    *param = "stop_token_ids";
    v = json_object_get(root, "stop_token_ids");
    if (v != NULL && !json_is_null(v)) {
        size_t   i;
        json_t  *id;

        /* two entries stay free for the model's end-of-turn ids */
        if (ngx_http_kimi_token_array(v) != NGX_OK
            || json_array_size(v) > KIMI_SHM_MAX_STOP_IDS - 2)
        {
            ngx_sprintf(err, "\"stop_token_ids\" must be an array of at most "
                        "%d token ids", KIMI_SHM_MAX_STOP_IDS - 2);
            return NGX_ERROR;
        }

        json_array_foreach(v, i, id) {
            s->stop_ids[s->n_stop_ids++] = (int32_t) json_integer_value(id);
        }
    }

    if (ngx_http_kimi_check_structured(ctx, root, err, param) != NGX_OK
        || ngx_http_kimi_check_unimplemented(root, err, param) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* vLLM's bad_words: up to NGX_HTTP_KIMI_MAX_BAD_WORDS strings, each
     * with something besides leading whitespace (tokenized at submit) */
    *param = "bad_words";
    pr->bad_words = NULL;
    v = json_object_get(root, "bad_words");
    if (v != NULL && !json_is_null(v)) {
        size_t   i, j, len;
        json_t  *w;

        if (!json_is_array(v)
            || json_array_size(v) > NGX_HTTP_KIMI_MAX_BAD_WORDS)
        {
            ngx_sprintf(err, "\"bad_words\" must be a list of at most %d"
                        " strings", NGX_HTTP_KIMI_MAX_BAD_WORDS);
            return NGX_ERROR;
        }

        json_array_foreach(v, i, w) {
            len = json_is_string(w) ? json_string_length(w) : 0;
            for (j = 0; j < len
                        && ngx_http_kimi_is_space(json_string_value(w)[j]);
                 j++)
            { /* void */ }

            if (j == len || len > NGX_HTTP_KIMI_MAX_BAD_WORD_LEN) {
                ngx_sprintf(err, "\"bad_words\"[%uz] must be a string of 1"
                            " to %d bytes, not only whitespace", i,
                            NGX_HTTP_KIMI_MAX_BAD_WORD_LEN);
                return NGX_ERROR;
            }
        }

        if (json_array_size(v) > 0) {
            pr->bad_words = v;
        }
    }

    /* vLLM's cache_salt: the prefix cache serves a request only blocks that
     * requests of the same salt computed (tenants cannot time each other's
     * prompts); FNV-1a of the string, never 0 (0 is "no salt") */
    *param = "cache_salt";
    v = json_object_get(root, "cache_salt");
    pr->cache_salt = 0;
    if (v != NULL && !json_is_null(v)) {
        size_t       i, len;
        uint64_t     h;
        const char  *p;

        if (!json_is_string(v) || json_string_length(v) == 0) {
            ngx_sprintf(err, "\"cache_salt\" must be a non-empty string");
            return NGX_ERROR;
        }

        p = json_string_value(v);
        len = json_string_length(v);
        h = 0xcbf29ce484222325ull;
        for (i = 0; i < len; i++) {
            h = (h ^ (u_char) p[i]) * 0x100000001b3ull;
        }
        pr->cache_salt = h ? h : 1;
    }

    v = json_object_get(json_object_get(root, "response_format"), "type");
    s->json_object = json_is_string(v)
                     && ngx_strcmp(json_string_value(v), "json_object") == 0;
    s->json_no_ws = json_is_true(json_object_get(root,
                                                 "disable_any_whitespace"));

    /* vLLM's guided_choice: the answer is one of these strings (the engine
     * constrains the tokens to their tokenizations) */
    *param = "guided_choice";
    pr->guided_choice = NULL;
    v = json_object_get(root, "guided_choice");
    if (v != NULL && !json_is_null(v)) {
        json_t  *c;
        size_t   i;

        if (!json_is_array(v) || json_array_size(v) == 0
            || json_array_size(v) > NGX_HTTP_KIMI_MAX_GUIDED)
        {
            ngx_sprintf(err, "\"guided_choice\" must be a list of 1 to %d"
                        " strings", NGX_HTTP_KIMI_MAX_GUIDED);
            return NGX_ERROR;
        }
        json_array_foreach(v, i, c) {
            if (!json_is_string(c) || json_string_length(c) == 0
                || json_string_length(c) > 4096)
            {
                ngx_sprintf(err, "\"guided_choice\"[%uz] must be a"
                            " non-empty string of at most 4096 bytes", i);
                return NGX_ERROR;
            }
        }
        if (s->json_object || pr->n_guided > 0) {
            ngx_sprintf(err, "\"guided_choice\" and a JSON mode, JSON"
                        " schema, regex, grammar or structural tag cannot be"
                        " combined");
            return NGX_ERROR;
        }
        pr->guided_choice = v;
    }

    *param = "logit_bias";
    if (ngx_http_kimi_parse_logit_bias(json_object_get(root, "logit_bias"), s,
                                       err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    *param = "allowed_token_ids";
    if (ngx_http_kimi_parse_allowed_ids(json_object_get(root,
                                                        "allowed_token_ids"),
                                        s, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    *param = "ignore_eos";
    if (ngx_http_kimi_get_bool(root, "ignore_eos", &flag, err) != NGX_OK) {
        return NGX_ERROR;
    }
    s->ignore_eos = flag;

    *param = "min_tokens";
    if (ngx_http_kimi_get_int(root, "min_tokens", 0, UINT32_MAX, &n, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    if (n > 0) {
        s->min_tokens = n;
    }

    /* vLLM: keep only the last k prompt tokens (-1: max_model_len) */
    *param = "truncate_prompt_tokens";
    pr->truncate_prompt = 0;
    v = json_object_get(root, "truncate_prompt_tokens");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v)
            || (json_integer_value(v) != -1 && json_integer_value(v) < 1)
            || json_integer_value(v) > INT32_MAX)
        {
            ngx_sprintf(err, "\"truncate_prompt_tokens\" must be -1 (the"
                        " model's context) or a positive integer");
            return NGX_ERROR;
        }
        pr->truncate_prompt = (ngx_int_t) json_integer_value(v);
    }

    /* vLLM: logprob tokens as "token_id:ID" */
    *param = "return_tokens_as_token_ids";
    if (ngx_http_kimi_get_bool(root, "return_tokens_as_token_ids", &flag, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    pr->tokens_as_ids = flag;

    /* vLLM's return_token_ids: the prompt's ids and every generated id
     * (the stop token too) beside the text */
    *param = "return_token_ids";
    if (ngx_http_kimi_get_bool(root, "return_token_ids", &flag, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    pr->token_ids = flag;

    /* vLLM: a matched stop string stays at the end of the text */
    *param = "include_stop_str_in_output";
    if (ngx_http_kimi_get_bool(root, "include_stop_str_in_output", &flag, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    pr->include_stop_str = flag;

    *param = "skip_special_tokens";
    v = json_object_get(root, "skip_special_tokens");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            ngx_sprintf(err, "\"skip_special_tokens\" must be a boolean");
            return NGX_ERROR;
        }
        pr->skip_special = json_is_true(v);
    }

    /* n choices: n sequences of the same prompt, each its own slot */
    *param = "n";
    pr->n = 1;
    v = json_object_get(root, "n");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            ngx_sprintf(err, "\"n\" must be an integer");
            return NGX_ERROR;
        }

        if (json_integer_value(v) < 1
            || json_integer_value(v) > NGX_HTTP_KIMI_MAX_CHOICES)
        {
            ngx_sprintf(err, "\"n\" must be between 1 and %d",
                        NGX_HTTP_KIMI_MAX_CHOICES);
            return NGX_ERROR;
        }

        pr->n = (ngx_uint_t) json_integer_value(v);
    }

    /* logprobs: a boolean (chat), or 0..20 alternatives (completions) */
    *param = "logprobs";
    v = json_object_get(root, "logprobs");
    if (v != NULL && !json_is_null(v)) {
        if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT) {
            if (!json_is_boolean(v)) {
                ngx_sprintf(err, "\"logprobs\" must be a boolean");
                return NGX_ERROR;
            }
            s->logprobs = json_is_true(v);

        } else {
            if (!json_is_integer(v) || json_integer_value(v) < 0
                || json_integer_value(v) > KIMI_SHM_MAX_TOP_LOGPROBS)
            {
                ngx_sprintf(err, "\"logprobs\" must be an integer in "
                            "[0, %d]", KIMI_SHM_MAX_TOP_LOGPROBS);
                return NGX_ERROR;
            }

            s->logprobs = 1;
            s->top_logprobs = json_integer_value(v);
        }
    }

    *param = "top_logprobs";
    v = json_object_get(root, "top_logprobs");
    if (v != NULL && !json_is_null(v)) {
        if (ctx->route != NGX_HTTP_KIMI_ROUTE_CHAT || !json_is_integer(v)
            || json_integer_value(v) < 0
            || json_integer_value(v) > KIMI_SHM_MAX_TOP_LOGPROBS)
        {
            ngx_sprintf(err, "\"top_logprobs\" must be an integer in [0, %d]",
                        KIMI_SHM_MAX_TOP_LOGPROBS);
            return NGX_ERROR;
        }

        if (!s->logprobs) {
            ngx_sprintf(err, "\"top_logprobs\" requires \"logprobs\" to be "
                        "true");
            return NGX_ERROR;
        }

        s->top_logprobs = json_integer_value(v);
    }

    *param = NULL;

    return NGX_OK;
}


/* vLLM's echo for chat: the answer opens with the last message's text
 * when that message has the answer's role (an assistant message continued,
 * or any last message when no generation prompt is added); its text parts
 * are joined by newlines, as vLLM joins them.  Nothing else is echoed. */
static ngx_int_t
ngx_http_kimi_chat_echo(ngx_http_kimi_ctx_t *ctx, json_t *messages)
{
    u_char      *p;
    size_t       i, len;
    json_t      *last, *content, *part, *text;
    const char  *role;

    last = json_array_get(messages, json_array_size(messages) - 1);
    role = json_string_value(json_object_get(last, "role"));
    content = json_object_get(last, "content");

    if (ctx->params.add_generation_prompt
        && ngx_strcmp(role, "assistant") != 0)
    {
        return NGX_OK;
    }

    if (json_is_string(content)) {
        ctx->params.echo_text.data = (u_char *) json_string_value(content);
        ctx->params.echo_text.len = json_string_length(content);

    } else if (json_is_array(content)) {
        len = 0;
        json_array_foreach(content, i, part) {
            text = json_object_get(part, "text");
            if (json_is_string(text)) {
                len += json_string_length(text) + 1;
            }
        }

        p = ngx_pnalloc(ctx->request->pool, len + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ctx->params.echo_text.data = p;
        json_array_foreach(content, i, part) {
            text = json_object_get(part, "text");
            if (json_is_string(text)) {
                if (p != ctx->params.echo_text.data) {
                    *p++ = '\n';
                }
                p = ngx_cpymem(p, json_string_value(text),
                               json_string_length(text));
            }
        }
        ctx->params.echo_text.len = p - ctx->params.echo_text.data;
    }

    ctx->params.echo = ctx->params.echo_text.len > 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_parse_chat(ngx_http_kimi_ctx_t *ctx, json_t *root, u_char *err,
    const char **param)
{
    size_t                   i;
    json_t                  *v, *m, *role, *content, *tool, *fn, *name;
    ngx_uint_t               flag, found;
    const char              *r;
    ngx_http_kimi_params_t  *pr;

    pr = &ctx->params;

    v = json_object_get(root, "messages");

    *param = "messages";

    if (v == NULL || json_is_null(v)) {
        ngx_sprintf(err, "\"messages\" is required");
        return NGX_ERROR;
    }

    if (!json_is_array(v) || json_array_size(v) == 0) {
        ngx_sprintf(err, "\"messages\" must be a non-empty array");
        return NGX_ERROR;
    }

    json_array_foreach(v, i, m) {
        if (!json_is_object(m)) {
            ngx_sprintf(err, "messages[%uz] must be an object", i);
            return NGX_ERROR;
        }

        role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            ngx_sprintf(err, "messages[%uz].role must be a string", i);
            return NGX_ERROR;
        }

        r = json_string_value(role);

        if (ngx_strcmp(r, "system") != 0 && ngx_strcmp(r, "user") != 0
            && ngx_strcmp(r, "assistant") != 0 && ngx_strcmp(r, "tool") != 0
            && ngx_strcmp(r, "developer") != 0)
        {
            ngx_snprintf(err, NGX_HTTP_KIMI_ERR_LEN - 1,
                         "messages[%uz].role \"%s\" is not one of system, "
                         "user, assistant, tool, developer", i, r);
            return NGX_ERROR;
        }

        content = json_object_get(m, "content");
        if (content != NULL && !json_is_string(content)
            && !json_is_array(content) && !json_is_null(content))
        {
            ngx_sprintf(err, "messages[%uz].content must be a string, an "
                        "array of parts or null", i);
            return NGX_ERROR;
        }

        if ((content == NULL || json_is_null(content))
            && ngx_strcmp(r, "assistant") != 0)
        {
            ngx_sprintf(err, "messages[%uz].content is required", i);
            return NGX_ERROR;
        }
    }

    pr->messages = v;

    *param = "add_generation_prompt";
    flag = 1;
    if (json_object_get(root, "add_generation_prompt") != NULL
        && ngx_http_kimi_get_bool(root, "add_generation_prompt", &flag, err)
           != NGX_OK)
    {
        return NGX_ERROR;
    }
    pr->add_generation_prompt = flag;

    /* vLLM: the model continues the final message (a prefilled answer);
     * the generation prompt is then off unless asked for, which is an
     * error as in vLLM */
    *param = "continue_final_message";
    if (ngx_http_kimi_get_bool(root, "continue_final_message", &flag, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }
    pr->continue_final = flag;

    if (flag) {
        if (json_is_true(json_object_get(root, "add_generation_prompt"))) {
            ngx_sprintf(err, "Cannot set both \"continue_final_message\" and"
                        " \"add_generation_prompt\" to true");
            return NGX_ERROR;
        }
        pr->add_generation_prompt = 0;
    }

    *param = "echo";
    if (ngx_http_kimi_get_bool(root, "echo", &flag, err) != NGX_OK) {
        return NGX_ERROR;
    }

    if (flag && ngx_http_kimi_chat_echo(ctx, pr->messages) != NGX_OK) {
        return NGX_ERROR;
    }

    *param = "tools";
    v = json_object_get(root, "tools");

    if (v != NULL && !json_is_null(v)) {
        if (!json_is_array(v) || json_array_size(v) == 0) {
            ngx_sprintf(err, "\"tools\" must be a non-empty array");
            return NGX_ERROR;
        }

        json_array_foreach(v, i, tool) {
            fn = json_object_get(tool, "function");
            name = json_object_get(fn, "name");

            if (!json_is_object(tool)
                || !json_is_string(json_object_get(tool, "type"))
                || ngx_strcmp(json_string_value(json_object_get(tool, "type")),
                              "function") != 0
                || !json_is_object(fn) || !json_is_string(name)
                || json_string_length(name) == 0)
            {
                ngx_sprintf(err, "tools[%uz] must be {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}", i);
                return NGX_ERROR;
            }
        }

        pr->tools = v;
        pr->tool_choice = NGX_HTTP_KIMI_TOOL_CHOICE_AUTO;
    }

    /* vLLM's chat_template_kwargs: variables for the template */
    *param = "chat_template_kwargs";
    v = json_object_get(root, "chat_template_kwargs");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v)) {
            ngx_sprintf(err, "\"chat_template_kwargs\" must be an object");
            return NGX_ERROR;
        }
        pr->template_kwargs = v;
    }

    /* false holds a "required" choice to one call (a named one is one
     * anyway); "auto" answers are returned as the model wrote them */
    *param = "parallel_tool_calls";
    v = json_object_get(root, "parallel_tool_calls");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            ngx_sprintf(err, "\"parallel_tool_calls\" must be a boolean");
            return NGX_ERROR;
        }
        pr->one_call = json_is_false(v);
    }

    *param = "tool_choice";
    v = json_object_get(root, "tool_choice");

    if (v != NULL && !json_is_null(v)) {
        if (json_is_string(v)) {
            r = json_string_value(v);

            if (ngx_strcmp(r, "none") == 0) {
                pr->tool_choice = NGX_HTTP_KIMI_TOOL_CHOICE_NONE;

            } else if (ngx_strcmp(r, "auto") == 0) {
                pr->tool_choice = NGX_HTTP_KIMI_TOOL_CHOICE_AUTO;

            } else if (ngx_strcmp(r, "required") == 0) {
                pr->tool_choice = NGX_HTTP_KIMI_TOOL_CHOICE_REQUIRED;

            } else {
                ngx_sprintf(err, "\"tool_choice\" must be \"none\", "
                            "\"auto\", \"required\" or a named function");
                return NGX_ERROR;
            }

        } else if (json_is_object(v)) {
            fn = json_object_get(v, "function");
            name = json_object_get(fn, "name");

            if (!json_is_string(name)) {
                ngx_sprintf(err, "\"tool_choice\" must name a function: "
                            "{\"type\": \"function\", \"function\": "
                            "{\"name\": ...}}");
                return NGX_ERROR;
            }

            pr->tool_choice = NGX_HTTP_KIMI_TOOL_CHOICE_NAMED;
            pr->tool_name.data = (u_char *) json_string_value(name);
            pr->tool_name.len = json_string_length(name);

        } else {
            ngx_sprintf(err, "\"tool_choice\" must be a string or an "
                        "object");
            return NGX_ERROR;
        }

        if (pr->tool_choice != NGX_HTTP_KIMI_TOOL_CHOICE_NONE
            && pr->tools == NULL)
        {
            ngx_sprintf(err, "\"tool_choice\" requires \"tools\"");
            return NGX_ERROR;
        }

        if (pr->tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_NAMED) {
            found = 0;

            json_array_foreach(pr->tools, i, tool) {
                name = json_object_get(json_object_get(tool, "function"),
                                       "name");
                if (json_string_length(name) == pr->tool_name.len
                    && ngx_strncmp(json_string_value(name),
                                   pr->tool_name.data, pr->tool_name.len)
                       == 0)
                {
                    found = 1;
                    break;
                }
            }

            if (!found) {
                ngx_snprintf(err, NGX_HTTP_KIMI_ERR_LEN - 1,
                             "\"tool_choice\" names function \"%V\", which "
                             "is not in \"tools\"", &pr->tool_name);
                return NGX_ERROR;
            }
        }

        /* a forced call is the whole answer */
        if ((pr->tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_NAMED
             || pr->tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_REQUIRED)
            && (pr->sampling.json_object || pr->n_guided > 0
                || pr->guided_choice != NULL))
        {
            ngx_sprintf(err, "a \"tool_choice\" of \"required\" or naming a"
                        " function and structured output (response_format,"
                        " guided_json, guided_choice, guided_regex) cannot be"
                        " combined");
            return NGX_ERROR;
        }
    }

    *param = NULL;

    return NGX_OK;
}


/*
 * The first string under v holding a NUL byte, other than the text a NUL
 * may be part of: at the top level the "prompt" (a string, or strings in
 * a list) and each message's "content" (a string, or its parts' "text").
 */
static json_t *
ngx_http_kimi_find_nul(json_t *v, ngx_uint_t top)
{
    size_t       i, j;
    json_t      *e, *m, *c, *part, *bad;
    const char  *key, *k2;

    if (json_is_string(v)) {
        return ngx_strlen(json_string_value(v)) != json_string_length(v)
               ? v : NULL;
    }

    if (json_is_array(v)) {
        json_array_foreach(v, i, e) {
            if ((bad = ngx_http_kimi_find_nul(e, 0)) != NULL) {
                return bad;
            }
        }
        return NULL;
    }

    if (!json_is_object(v)) {
        return NULL;
    }

    json_object_foreach(v, key, e) {
        /* stop strings are matched with their lengths */
        if (top && ngx_strcmp(key, "stop") == 0) {
            continue;
        }

        if (top && ngx_strcmp(key, "prompt") == 0) {
            if (json_is_string(e)) {
                continue;
            }
            if (json_is_array(e)) {
                json_array_foreach(e, i, c) {
                    if (!json_is_string(c)
                        && (bad = ngx_http_kimi_find_nul(c, 0)) != NULL)
                    {
                        return bad;
                    }
                }
                continue;
            }
        }

        if (top && ngx_strcmp(key, "messages") == 0 && json_is_array(e)) {
            json_array_foreach(e, i, m) {
                if (!json_is_object(m)) {
                    if ((bad = ngx_http_kimi_find_nul(m, 0)) != NULL) {
                        return bad;
                    }
                    continue;
                }

                json_object_foreach(m, k2, c) {
                    if (ngx_strcmp(k2, "content") != 0) {
                        if ((bad = ngx_http_kimi_find_nul(c, 0)) != NULL) {
                            return bad;
                        }
                        continue;
                    }

                    if (json_is_string(c)) {
                        continue;
                    }

                    /* parts: their "text" may hold one */
                    json_array_foreach(c, j, part) {
                        const char  *k3;
                        json_t      *x;

                        if (!json_is_object(part)) {
                            if ((bad = ngx_http_kimi_find_nul(part, 0))
                                != NULL)
                            {
                                return bad;
                            }
                            continue;
                        }

                        json_object_foreach(part, k3, x) {
                            if (ngx_strcmp(k3, "text") == 0
                                && json_is_string(x))
                            {
                                continue;
                            }
                            if ((bad = ngx_http_kimi_find_nul(x, 0)) != NULL) {
                                return bad;
                            }
                        }
                    }
                }
            }
            continue;
        }

        if ((bad = ngx_http_kimi_find_nul(e, 0)) != NULL) {
            return bad;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_kimi_parse_prompt(ngx_http_kimi_ctx_t *ctx, json_t *root,
    u_char *err, const char **param)
{
    json_t                  *v, *e;
    size_t                   i;
    ngx_uint_t               flag;
    ngx_http_kimi_params_t  *pr;

    pr = &ctx->params;

    *param = "prompt";
    v = json_object_get(root, "prompt");

    if (v == NULL || json_is_null(v)) {
        ngx_sprintf(err, "\"prompt\" is required");
        return NGX_ERROR;
    }

    /* a list of one prompt is the same request as the prompt itself */
    if (json_is_array(v) && json_array_size(v) == 1) {
        e = json_array_get(v, 0);
        if (json_is_string(e) || json_is_array(e)) {
            v = e;
        }
    }

    if (json_is_string(v)) {
        pr->prompt_text.data = (u_char *) json_string_value(v);
        pr->prompt_text.len = json_string_length(v);

    } else if (ngx_http_kimi_token_array(v) == NGX_OK
               && json_array_size(v) > 0)
    {
        pr->prompt_ids = v;

    } else if (json_is_array(v) && json_array_size(v) > 1
               && (json_is_string(json_array_get(v, 0))
                   || json_is_array(json_array_get(v, 0))))
    {
        /* a batch: each prompt is n choices of the response, in order */
        if (ctx->route != NGX_HTTP_KIMI_ROUTE_COMPLETIONS) {
            ngx_sprintf(err, "\"prompt\" must be one prompt here");
            return NGX_ERROR;
        }

        for (i = 0; i < json_array_size(v); i++) {
            e = json_array_get(v, i);

            if (!json_is_string(e)
                && (ngx_http_kimi_token_array(e) != NGX_OK
                    || json_array_size(e) == 0))
            {
                ngx_sprintf(err, "\"prompt\" item %ui must be a string or a"
                            " non-empty array of token ids", i);
                return NGX_ERROR;
            }
        }

        if (json_array_size(v) * pr->n > NGX_HTTP_KIMI_MAX_CHOICES) {
            ngx_sprintf(err, "%uz prompts x \"n\" %ui is more than %d"
                        " completions in one request",
                        json_array_size(v), pr->n,
                        NGX_HTTP_KIMI_MAX_CHOICES);
            return NGX_ERROR;
        }

        pr->batch = v;

    } else {
        ngx_sprintf(err, "\"prompt\" must be a string, a non-empty array of "
                    "token ids, or a list holding one of those");
        return NGX_ERROR;
    }

    *param = "echo";
    if (ngx_http_kimi_get_bool(root, "echo", &flag, err) != NGX_OK) {
        return NGX_ERROR;
    }

    /* echo: the prompt leads each choice's text; with logprobs, the
     * lists start with the prompt's tokens (the first one's logprob null) */
    if (flag && pr->sampling.logprobs) {
        pr->echo_lp = 1;
        pr->sampling.prompt_logprobs = (uint8_t) (1 + ngx_max(
                                           pr->sampling.top_logprobs,
                                           pr->prompt_lp ? pr->prompt_lp_top
                                                         : 0));
    }

    pr->echo = flag;

    v = json_object_get(root, "suffix");
    if (v != NULL && !json_is_null(v)) {
        *param = "suffix";
        ngx_sprintf(err, "\"suffix\" is not supported");
        return NGX_ERROR;
    }

    /* best_of > 1 would be silently one sample */
    v = json_object_get(root, "best_of");
    if (v != NULL && !json_is_null(v)
        && (!json_is_integer(v) || json_integer_value(v) != 1))
    {
        *param = "best_of";
        ngx_sprintf(err, "Only best_of=1 is supported");
        return NGX_ERROR;
    }

    *param = NULL;

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_parse_stop(ngx_http_kimi_ctx_t *ctx, json_t *v, u_char *err)
{
    size_t                   i;
    json_t                  *s;
    ngx_str_t               *st;
    ngx_http_kimi_params_t  *pr;

    pr = &ctx->params;

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (json_is_string(v)) {
        if (json_string_length(v) == 0
            || json_string_length(v) > NGX_HTTP_KIMI_MAX_STOP_LEN)
        {
            goto invalid;
        }

        st = &pr->stop[pr->n_stop++];
        st->data = (u_char *) json_string_value(v);
        st->len = json_string_length(v);
        pr->max_stop_len = st->len;

        return NGX_OK;
    }

    if (!json_is_array(v) || json_array_size(v) > NGX_HTTP_KIMI_MAX_STOP) {
        goto invalid;
    }

    json_array_foreach(v, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0
            || json_string_length(s) > NGX_HTTP_KIMI_MAX_STOP_LEN)
        {
            goto invalid;
        }

        st = &pr->stop[pr->n_stop++];
        st->data = (u_char *) json_string_value(s);
        st->len = json_string_length(s);
        pr->max_stop_len = ngx_max(pr->max_stop_len, st->len);
    }

    return NGX_OK;

invalid:

    ngx_sprintf(err, "\"stop\" must be a non-empty string or an array of at "
                "most %d such strings of at most %d bytes",
                NGX_HTTP_KIMI_MAX_STOP, NGX_HTTP_KIMI_MAX_STOP_LEN);

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_kimi_token_array(json_t *v)
{
    size_t   i;
    json_t  *e;

    if (!json_is_array(v)) {
        return NGX_ERROR;
    }

    json_array_foreach(v, i, e) {
        if (!json_is_integer(e) || json_integer_value(e) < 0
            || json_integer_value(e) > INT32_MAX)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* *out = -1 when absent or null */
static ngx_int_t
ngx_http_kimi_get_number(json_t *root, const char *key, double lo, double hi,
    double *out, u_char *err)
{
    json_t  *v;

    *out = -1;

    v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_number(v) || json_number_value(v) < lo
        || json_number_value(v) > hi)
    {
        ngx_sprintf(err, "\"%s\" must be a number in [%.1f, %.1f]", key, lo,
                    hi);
        return NGX_ERROR;
    }

    *out = json_number_value(v);

    return NGX_OK;
}


/* *out = -1 when absent or null */
static ngx_int_t
ngx_http_kimi_get_int(json_t *root, const char *key, json_int_t lo,
    json_int_t hi, json_int_t *out, u_char *err)
{
    json_t  *v;

    *out = -1;

    v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_integer(v) || json_integer_value(v) < lo
        || json_integer_value(v) > hi)
    {
        ngx_sprintf(err, "\"%s\" must be an integer in [%L, %L]", key,
                    (int64_t) lo, (int64_t) hi);
        return NGX_ERROR;
    }

    *out = json_integer_value(v);

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_get_bool(json_t *root, const char *key, ngx_uint_t *out,
    u_char *err)
{
    json_t  *v;

    *out = 0;

    v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_boolean(v)) {
        ngx_sprintf(err, "\"%s\" must be a boolean", key);
        return NGX_ERROR;
    }

    *out = json_is_true(v);

    return NGX_OK;
}


ngx_int_t
ngx_http_kimi_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, const char *message, size_t len, const char *param,
    const char *code)
{
    json_t     *root, *err;
    ngx_int_t   rc;

    err = json_object();
    root = json_object();

    if (err == NULL || root == NULL) {
        json_decref(err);
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_set_new(err, "message", json_stringn_nocheck(message, len));
    json_object_set_new(err, "type", json_string(type));
    json_object_set_new(err, "param", param ? json_string(param)
                                            : json_null());
    json_object_set_new(err, "code", code ? json_string(code)
                                          : json_integer(status));
    json_object_set_new(root, "error", err);

    rc = ngx_http_kimi_send_json(r, status, root);
    json_decref(root);

    return rc;
}


ngx_int_t
ngx_http_kimi_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *body)
{
    char                 *s;
    size_t                len;
    ngx_int_t             rc;
    ngx_buf_t            *b;
    ngx_chain_t           out;
    ngx_table_elt_t      *h;
    ngx_http_kimi_ctx_t  *ctx;

    /* a background response's request has no client: its answers go to
     * the response store */
    ctx = ngx_http_get_module_ctx(r, ngx_http_kimi_module);

    if (ctx != NULL && ctx->detached) {
        return ngx_http_kimi_background_answer(ctx, status, body);
    }

    if (r->header_sent) {
        return NGX_ERROR;
    }

    /*
     * 9 significant digits: enough for a float32 (the logprobs, read back
     * from the 6 decimals the streams send) and for a client's 0.7, which
     * jansson's default of 17 writes as 0.69999999999999996
     */
    s = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (s == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(s);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        free(s);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, s, len);
    *b->last++ = '\n';
    free(s);

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE
        || status == NGX_HTTP_TOO_MANY_REQUESTS)
    {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Retry-After");
        ngx_str_set(&h->value, "1");
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


const char *
ngx_http_kimi_finish_name(ngx_http_kimi_ctx_t *ctx)
{
    if (ctx->stopped) {
        return "stop";
    }

    switch (ctx->finish) {

    case KIMI_FINISH_LENGTH:
        return "length";

    case KIMI_FINISH_STOP:
        /* a named choice reports "stop", as vLLM does */
        if (ctx->n_calls
            && (ctx->params.tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_AUTO
                || ctx->params.tool_choice
                   == NGX_HTTP_KIMI_TOOL_CHOICE_REQUIRED))
        {
            return "tool_calls";
        }

        return "stop";

    case KIMI_FINISH_CANCELLED:
    case KIMI_FINISH_ABORT:
        return "abort";

    default:
        return "error";
    }
}


/* The body of a non-streaming response, once the engine said DONE. */
/* One element of "choices": the message (or text), logprobs, finish. */
/* ids as a JSON list (an empty one for none) */
static json_t *
ngx_http_kimi_ids_json(const int32_t *ids, size_t n)
{
    size_t   i;
    json_t  *a;

    a = json_array();

    for (i = 0; a != NULL && i < n; i++) {
        json_array_append_new(a, json_integer(ids[i]));
    }

    return a;
}


json_t *
ngx_http_kimi_choice_json(ngx_http_kimi_ctx_t *ctx)
{
    u_char                     *a, *e;
    json_t                     *choice, *msg, *calls, *call, *lp;
    ngx_uint_t                  i;
    const char                 *finish;
    ngx_http_kimi_tool_call_t  *tc;

    finish = ngx_http_kimi_finish_name(ctx);
    ctx->usage.finish_reason.data = (u_char *) finish;
    ctx->usage.finish_reason.len = ngx_strlen(finish);

    choice = json_object();
    if (choice == NULL) {
        return NULL;
    }

    json_object_set_new(choice, "index", json_integer(ctx->index));

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT) {
        msg = json_object();
        if (msg == NULL) {
            goto failed;
        }

        json_object_set_new(msg, "role", json_string("assistant"));
        /* with a reasoning parser an answer all reasoning has no content,
         * as vLLM's (null); an empty answer (a stop token first) is "",
         * not a missing key: jansson makes no string of a NULL pointer */
        json_object_set_new(msg, "content",
                            ctx->content.len
                            || (ctx->n_calls == 0
                                && !(ctx->conf->reasoning_parser
                                     && ctx->reasoning.len))
                            ? json_stringn_nocheck(ctx->content.len
                                                   ? (char *) ctx->content.data
                                                   : "",
                                                   ctx->content.len)
                            : json_null());

        if (ctx->conf->reasoning_parser) {
            json_object_set_new(msg, "reasoning_content",
                                ctx->reasoning.len
                                ? json_stringn_nocheck(
                                      (char *) ctx->reasoning.data,
                                      ctx->reasoning.len)
                                : json_null());
        }

        if (ctx->n_calls) {
            calls = json_array();
            if (calls == NULL) {
                json_decref(msg);
                goto failed;
            }

            for (i = 0; i < ctx->n_calls; i++) {
                tc = &ctx->calls[i];

                call = json_pack("{s:s%,s:s,s:{s:s%,s:s%}}",
                                 "id", tc->id.data, tc->id.len,
                                 "type", "function",
                                 "function",
                                 "name", tc->name.data, tc->name.len,
                                 "arguments",
                                 tc->arguments.len ? (char *) tc->arguments.data
                                                   : "",
                                 tc->arguments.len);
                if (call == NULL) {
                    json_decref(calls);
                    json_decref(msg);
                    goto failed;
                }

                json_array_append_new(calls, call);
            }

            json_object_set_new(msg, "tool_calls", calls);
        }

        json_object_set_new(choice, "message", msg);

    } else {
        json_object_set_new(choice, "text",
                            json_stringn_nocheck(ctx->content.len
                                                 ? (char *) ctx->content.data
                                                 : "",
                                                 ctx->content.len));
    }

    lp = NULL;

    if (ctx->params.sampling.logprobs && ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT)
    {
        /* entries were written as JSON text while tokens arrived */
        a = ngx_pnalloc(ctx->request->pool, ctx->logprobs.len + 2);
        if (a == NULL) {
            goto failed;
        }

        a[0] = '[';
        ngx_memcpy(a + 1, ctx->logprobs.data, ctx->logprobs.len);
        a[ctx->logprobs.len + 1] = ']';

        lp = json_pack("{s:o}", "content",
                       json_loadb((char *) a, ctx->logprobs.len + 2, 0, NULL));
    }

    if (ctx->params.sampling.logprobs
        && ctx->route == NGX_HTTP_KIMI_ROUTE_COMPLETIONS)
    {
        a = ngx_pnalloc(ctx->request->pool,
                        ngx_http_kimi_logprobs_legacy_len(ctx));
        if (a == NULL) {
            goto failed;
        }

        e = ngx_http_kimi_logprobs_legacy(ctx, a);
        lp = json_loadb((char *) a, e - a, 0, NULL);
    }

    json_object_set_new(choice, "logprobs", lp ? lp : json_null());
    json_object_set_new(choice, "finish_reason", json_string(finish));

    /* vLLM: a completion choice carries its prompt's, a chat response
     * one list at the top */
    if (ctx->route == NGX_HTTP_KIMI_ROUTE_COMPLETIONS && ctx->params.prompt_lp)
    {
        json_object_set(choice, "prompt_logprobs",
                        ctx->prompt_lp ? ctx->prompt_lp : json_null());
    }

    /* vLLM's return_token_ids: a completion choice its prompt's ids, a
     * chat response one list at the top; every choice its own */
    if (ctx->params.token_ids) {
        if (ctx->route == NGX_HTTP_KIMI_ROUTE_COMPLETIONS) {
            json_object_set_new(choice, "prompt_token_ids",
                                ngx_http_kimi_ids_json(ctx->prompt,
                                                       ctx->n_prompt));
        }

        json_object_set_new(choice, "token_ids",
                            ngx_http_kimi_ids_json(
                                ctx->out_ids ? ctx->out_ids->elts : NULL,
                                ctx->out_ids ? ctx->out_ids->nelts : 0));
    }

    /* vLLM's stop_reason, on every choice: the stop string matched, the
     * stop token id it ended on, or null (eos, length) */
    json_object_set_new(choice, "stop_reason",
        ctx->stop_reason.len
        ? json_stringn_nocheck((char *) ctx->stop_reason.data,
                               ctx->stop_reason.len)
        : ctx->stopped_on_id ? json_integer(ctx->stop_token_id)
                             : json_null());

    return choice;

failed:

    json_decref(choice);
    return NULL;
}


/* The whole non-streamed response, every choice in it (ctx: the
 * request's). */
ngx_int_t
ngx_http_kimi_send_response(ngx_http_kimi_ctx_t *ctx)
{
    json_t                     *root, *choices, *choice, *usage;
    ngx_int_t                   rc;
    ngx_uint_t                  i, tokens;
    ngx_http_kimi_ctx_t        *c;
    ngx_http_request_t         *r;

    r = ctx->request;

    if (ctx->responses) {
        choice = ngx_http_kimi_choice_json(ctx);
        if (choice == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        rc = ngx_http_kimi_responses_send(ctx, choice,
                                          ctx->usage.completion_tokens);
        json_decref(choice);
        return rc;
    }

    root = json_object();
    choices = json_array();

    if (root == NULL || choices == NULL) {
        goto failed;
    }

    tokens = 0;

    for (i = 0; i < ctx->n_choices; i++) {
        c = ctx->choices ? ctx->choices[i] : ctx;
        tokens += c->usage.completion_tokens;

        choice = ngx_http_kimi_choice_json(c);
        if (choice == NULL) {
            goto failed;
        }

        json_array_append_new(choices, choice);
    }

    /* the request's figures: one prompt, every choice's tokens (the
     * request's own count becomes the sum in finalize) */
    usage = json_pack("{s:I,s:I,s:I}",
                      "prompt_tokens", (json_int_t) ctx->usage.prompt_tokens,
                      "completion_tokens", (json_int_t) tokens,
                      "total_tokens",
                      (json_int_t) (ctx->usage.prompt_tokens + tokens));
    if (usage == NULL) {
        goto failed;
    }

    if (ctx->usage.cached_tokens) {
        json_object_set_new(usage, "prompt_tokens_details",
                            json_pack("{s:I}", "cached_tokens",
                                      (json_int_t) ctx->usage.cached_tokens));
    }

    json_object_set_new(root, "id",
                        json_stringn((char *) ctx->id.data, ctx->id.len));
    json_object_set_new(root, "object",
                        json_string(ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT
                                    ? "chat.completion" : "text_completion"));
    json_object_set_new(root, "created", json_integer(ctx->created));
    json_object_set_new(root, "model",
                        json_stringn_nocheck((char *) ctx->usage.model.data,
                                             ctx->usage.model.len));
    json_object_set_new(root, "choices", choices);
    json_object_set_new(root, "usage", usage);

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT && ctx->params.prompt_lp) {
        json_object_set(root, "prompt_logprobs",
                        ctx->prompt_lp ? ctx->prompt_lp : json_null());
    }

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT && ctx->params.token_ids) {
        json_object_set_new(root, "prompt_token_ids",
                            ngx_http_kimi_ids_json(ctx->prompt,
                                                   ctx->n_prompt));
    }

    rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, root);
    json_decref(root);

    ctx->headers_sent = 1;

    return rc;

failed:

    json_decref(root);
    json_decref(choices);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


size_t
ngx_http_kimi_json_escape_len(const u_char *src, size_t len)
{
    size_t  n;

    n = len;

    while (len--) {
        if (*src < 0x20) {
            n += 5;                     /* \u00XX */

        } else if (*src == '"' || *src == '\\') {
            n++;
        }

        src++;
    }

    return n;
}


/* JSON string body (no quotes); UTF-8 passes through unchanged */
u_char *
ngx_http_kimi_json_escape(u_char *dst, const u_char *src, size_t len)
{
    u_char         ch;
    static u_char  hex[] = "0123456789abcdef";

    while (len--) {
        ch = *src++;

        if (ch == '"' || ch == '\\') {
            *dst++ = '\\';
            *dst++ = ch;

        } else if (ch >= 0x20) {
            *dst++ = ch;

        } else {
            switch (ch) {
            case '\n':
                *dst++ = '\\'; *dst++ = 'n';
                break;
            case '\r':
                *dst++ = '\\'; *dst++ = 'r';
                break;
            case '\t':
                *dst++ = '\\'; *dst++ = 't';
                break;
            default:
                *dst++ = '\\'; *dst++ = 'u'; *dst++ = '0'; *dst++ = '0';
                *dst++ = hex[ch >> 4];
                *dst++ = hex[ch & 0xf];
            }
        }
    }

    return dst;
}


/*
 * As ngx_http_kimi_json_escape(), for bytes that may not be UTF-8 (a
 * single token's bytes): each invalid byte becomes U+FFFD, as Hugging
 * Face's decode shows it.  dst needs 6 bytes per source byte.
 */
u_char *
ngx_http_kimi_json_escape_utf8(u_char *dst, const u_char *src, size_t len)
{
    u_char        *p;
    uint32_t       ch;
    const u_char  *end, *next;

    end = src + len;

    while (src < end) {
        if (*src < 0x80) {
            dst = ngx_http_kimi_json_escape(dst, src, 1);
            src++;
            continue;
        }

        p = (u_char *) src;
        ch = ngx_utf8_decode(&p, end - src);
        next = p;

        if (ch > 0x10ffff) {
            dst = ngx_cpymem(dst, "\\ufffd", 6);
            src++;
            continue;
        }

        dst = ngx_cpymem(dst, src, next - src);
        src = next;
    }

    return dst;
}
