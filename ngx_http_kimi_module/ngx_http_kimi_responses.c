
/*
 * OpenAI's Responses API (/v1/responses) over the chat path.
 *
 * Owns:   turning a Responses request into the chat request it means
 *         (instructions and input items into messages, function tools and
 *         tool_choice into chat's shapes, text.format into response_format,
 *         max_output_tokens into max_tokens) and a finished chat choice
 *         into a Response object (a message item with its output_text, a
 *         function_call item per call, status, usage).
 *         Its stream's events are written by ngx_http_kimi_sse.c.
 *         previous_response_id continues a stored conversation
 *         (ngx_http_kimi_responses_store.c keeps them).  background true
 *         is checked here and run by ngx_http_kimi_background.c (with
 *         stream true, followed by ngx_http_kimi_responses_follow.c).
 * Never:  keeps a stream's events or runs background work itself.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


/* A Responses content list -> chat parts (text kinds only). */
static json_t *
ngx_http_kimi_responses_parts(json_t *content, size_t i, u_char *err)
{
    size_t       k;
    json_t      *parts, *part, *text;
    const char  *type;

    if (json_is_string(content)) {
        return json_incref(content);
    }

    if (!json_is_array(content)) {
        ngx_sprintf(err, "input[%uz].content must be a string or a list of "
                    "content parts", i);
        return NULL;
    }

    parts = json_array();
    if (parts == NULL) {
        return NULL;
    }

    json_array_foreach(content, k, part) {
        type = json_string_value(json_object_get(part, "type"));
        text = json_object_get(part, "text");

        if (type == NULL
            || (ngx_strcmp(type, "input_text") != 0
                && ngx_strcmp(type, "output_text") != 0
                && ngx_strcmp(type, "text") != 0)
            || !json_is_string(text))
        {
            ngx_sprintf(err, "input[%uz].content[%uz]: only input_text and "
                        "output_text parts are supported (type \"%s\")", i,
                        k, type ? type : "(none)");
            json_decref(parts);
            return NULL;
        }

        json_array_append_new(parts, json_pack("{s:s,s:O}", "type", "text",
                                               "text", text));
    }

    return parts;
}


/* input (a string or a list of items) -> chat messages */
static ngx_int_t
ngx_http_kimi_responses_input(json_t *input, json_t *messages, u_char *err,
    const char **param)
{
    size_t       i;
    json_t      *item, *content, *calls, *last, *call, *msg;
    const char  *type, *role;

    *param = "input";

    if (json_is_string(input)) {
        json_array_append_new(messages, json_pack("{s:s,s:O}", "role", "user",
                                                  "content", input));
        return NGX_OK;
    }

    if (!json_is_array(input) || json_array_size(input) == 0) {
        ngx_sprintf(err, "\"input\" must be a string or a non-empty list of "
                    "items");
        return NGX_ERROR;
    }

    json_array_foreach(input, i, item) {
        if (!json_is_object(item)) {
            ngx_sprintf(err, "input[%uz] must be an object", i);
            return NGX_ERROR;
        }

        type = json_string_value(json_object_get(item, "type"));
        role = json_string_value(json_object_get(item, "role"));

        if (role != NULL && (type == NULL || ngx_strcmp(type, "message") == 0))
        {
            if (ngx_strcmp(role, "developer") == 0) {
                role = "system";
            }
            if (ngx_strcmp(role, "user") != 0
                && ngx_strcmp(role, "system") != 0
                && ngx_strcmp(role, "assistant") != 0)
            {
                ngx_sprintf(err, "input[%uz].role \"%s\" is not user, "
                            "system, developer or assistant", i, role);
                return NGX_ERROR;
            }

            content = ngx_http_kimi_responses_parts(
                          json_object_get(item, "content"), i, err);
            if (content == NULL) {
                return NGX_ERROR;
            }

            json_array_append_new(messages, json_pack("{s:s,s:o}", "role",
                                                      role, "content",
                                                      content));
            continue;
        }

        if (type != NULL && ngx_strcmp(type, "function_call") == 0) {
            if (!json_is_string(json_object_get(item, "call_id"))
                || !json_is_string(json_object_get(item, "name"))
                || !json_is_string(json_object_get(item, "arguments")))
            {
                ngx_sprintf(err, "input[%uz]: a function_call needs call_id, "
                            "name and arguments strings", i);
                return NGX_ERROR;
            }

            call = json_pack("{s:O,s:s,s:{s:O,s:O}}",
                             "id", json_object_get(item, "call_id"),
                             "type", "function",
                             "function",
                             "name", json_object_get(item, "name"),
                             "arguments", json_object_get(item, "arguments"));

            /* calls in a row are one assistant turn */
            last = json_array_get(messages, json_array_size(messages) - 1);
            calls = json_object_get(last, "tool_calls");
            if (json_is_array(calls)) {
                json_array_append_new(calls, call);
            } else {
                msg = json_pack("{s:s,s:n,s:[o]}", "role", "assistant",
                                "content", "tool_calls", call);
                json_array_append_new(messages, msg);
            }
            continue;
        }

        if (type != NULL && ngx_strcmp(type, "function_call_output") == 0) {
            if (!json_is_string(json_object_get(item, "call_id"))
                || !json_is_string(json_object_get(item, "output")))
            {
                ngx_sprintf(err, "input[%uz]: a function_call_output needs "
                            "call_id and output strings", i);
                return NGX_ERROR;
            }

            json_array_append_new(messages,
                json_pack("{s:s,s:O,s:O}", "role", "tool", "tool_call_id",
                          json_object_get(item, "call_id"), "content",
                          json_object_get(item, "output")));
            continue;
        }

        if (type != NULL && ngx_strcmp(type, "reasoning") == 0) {
            continue;                    /* a model without reasoning */
        }

        ngx_sprintf(err, "input[%uz]: item type \"%s\" is not supported "
                    "(messages, function_call, function_call_output)", i,
                    type ? type : "(none)");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* The request's input as OpenAI lists it back (input_items): every item
 * an object with an id, a string input one user message. */
static json_t *
ngx_http_kimi_responses_items(json_t *input)
{
    size_t   i;
    json_t  *items, *item, *copy, *content;

    items = json_array();
    if (items == NULL) {
        return NULL;
    }

    if (json_is_string(input)) {
        json_array_append_new(items,
            json_pack("{s:o,s:s,s:s,s:[{s:s,s:O}]}", "id",
                      ngx_http_kimi_responses_id("msg_"), "type", "message",
                      "role", "user", "content", "type", "input_text",
                      "text", input));
        return items;
    }

    json_array_foreach(input, i, item) {
        copy = json_deep_copy(item);
        if (copy == NULL) {
            continue;
        }

        if (json_object_get(copy, "role") != NULL) {
            if (json_object_get(copy, "type") == NULL) {
                json_object_set_new(copy, "type", json_string("message"));
            }

            content = json_object_get(copy, "content");
            if (json_is_string(content)) {
                json_object_set_new(copy, "content",
                    json_pack("[{s:s,s:O}]", "type",
                              ngx_strcmp(json_string_value(
                                  json_object_get(copy, "role")),
                                  "assistant") == 0
                              ? "output_text" : "input_text",
                              "text", content));
            }
        }

        if (!json_is_string(json_object_get(copy, "id"))) {
            json_object_set_new(copy, "id",
                                ngx_http_kimi_responses_id("msg_"));
        }

        json_array_append_new(items, copy);
    }

    return items;
}


ngx_int_t
ngx_http_kimi_responses_request(ngx_http_kimi_ctx_t *ctx, json_t *in,
    json_t **out, u_char *err, const char **param)
{
    size_t       i;
    json_t      *chat, *v, *tools, *tool, *fmt, *fn, *prev, *convo;
    ngx_str_t    id;
    ngx_uint_t   found;
    const char  *key, *type, *status;

    static const char  *copied[] = {
        "model", "stream", "temperature", "top_p", "parallel_tool_calls",
        "user",
        "seed", "top_k", "min_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", NULL
    };

    *out = NULL;
    prev = NULL;

    *param = "store";
    v = json_object_get(in, "store");
    if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
        ngx_sprintf(err, "\"store\" must be a boolean");
        return NGX_ERROR;
    }

    /* background: the answer is stored and read back later (vLLM's and
     * OpenAI's rules: it needs the store); with stream its events are
     * kept too, for the client and any that re-attaches */
    *param = "background";
    v = json_object_get(in, "background");
    if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
        ngx_sprintf(err, "\"background\" must be a boolean");
        return NGX_ERROR;
    }

    if (json_is_true(v)) {
        if (ctx->conf->responses_zone == NULL) {
            ngx_sprintf(err, "\"background\" needs stored responses, which "
                        "this server does not keep (kimi_responses_store is "
                        "off)");
            return NGX_ERROR;
        }

        if (json_is_false(json_object_get(in, "store"))) {
            ngx_sprintf(err, "background can only be used when `store` is "
                        "true");
            return NGX_ERROR;
        }

        if (ctx->conf->responses_background == 0) {
            ngx_sprintf(err, "background responses are off on this server "
                        "(kimi_responses_background 0)");
            return NGX_ERROR;
        }

        ctx->background = 1;
    }

    *param = "previous_response_id";
    v = json_object_get(in, "previous_response_id");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v)) {
            ngx_sprintf(err, "\"previous_response_id\" must be a string");
            return NGX_ERROR;
        }

        if (ctx->conf->responses_zone == NULL) {
            ngx_sprintf(err, "\"previous_response_id\" needs stored "
                        "responses, which this server does not keep "
                        "(kimi_responses_store is off): send the whole "
                        "conversation as input");
            return NGX_ERROR;
        }

        id.data = (u_char *) json_string_value(v);
        id.len = json_string_length(v);

        prev = ngx_http_kimi_responses_lookup(ctx->request,
                                              ctx->conf->responses_zone,
                                              &id, &found);
        if (prev == NULL) {
            if (found) {
                ngx_sprintf(err, "the stored response '%*s' could not be "
                            "read", ngx_min(id.len, (size_t) 128), id.data);
                return NGX_ERROR;
            }

            ngx_sprintf(err, "Previous response with id '%*s' not found.",
                        ngx_min(id.len, (size_t) 128), id.data);
            return NGX_ERROR;
        }

        /* a background response still running has no answer to go on
         * from yet */
        status = json_string_value(json_object_get(
                     json_object_get(prev, "response"), "status"));

        if (status != NULL
            && (ngx_strcmp(status, "queued") == 0
                || ngx_strcmp(status, "in_progress") == 0))
        {
            ngx_sprintf(err, "Previous response with id '%*s' is still %s; "
                        "continue it once it has finished",
                        ngx_min(id.len, (size_t) 128), id.data, status);
            json_decref(prev);
            return NGX_ERROR;
        }
    }

    chat = json_object();
    if (chat == NULL) {
        json_decref(prev);
        return NGX_ERROR;
    }

    for (i = 0; copied[i]; i++) {
        v = json_object_get(in, copied[i]);
        if (v != NULL) {
            json_object_set(chat, copied[i], v);
        }
    }

    v = json_object_get(in, "max_output_tokens");
    if (v != NULL) {
        json_object_set(chat, "max_tokens", v);
    }

    /* messages: instructions first, as a system message */
    v = json_array();
    json_object_set_new(chat, "messages", v);

    *param = "instructions";
    if (json_is_string(json_object_get(in, "instructions"))) {
        json_array_append_new(v, json_pack("{s:s,s:O}", "role", "system",
                              "content", json_object_get(in, "instructions")));

    } else if (json_object_get(in, "instructions") != NULL
               && !json_is_null(json_object_get(in, "instructions")))
    {
        ngx_sprintf(err, "\"instructions\" must be a string");
        goto failed;
    }

    /* the stored conversation (its instructions are not carried over, as
     * OpenAI's), then this input; both kept for the next turn */
    convo = json_array();
    json_object_set_new(in, "__context", convo);
    if (prev != NULL) {
        json_array_extend(convo, json_object_get(prev, "context"));
    }

    if (ngx_http_kimi_responses_input(json_object_get(in, "input"), convo,
                                      err, param)
        != NGX_OK)
    {
        goto failed;
    }

    json_array_extend(v, convo);
    json_object_set_new(in, "__context", json_deep_copy(convo));
    json_object_set_new(in, "__input_items",
                        ngx_http_kimi_responses_items(
                            json_object_get(in, "input")));

    /* tools: {type: function, name, description, parameters} flat */
    *param = "tools";
    tools = json_object_get(in, "tools");
    if (json_is_array(tools) && json_array_size(tools) > 0) {
        v = json_array();
        json_object_set_new(chat, "tools", v);

        json_array_foreach(tools, i, tool) {
            type = json_string_value(json_object_get(tool, "type"));
            if (type == NULL || ngx_strcmp(type, "function") != 0
                || !json_is_string(json_object_get(tool, "name")))
            {
                ngx_sprintf(err, "tools[%uz]: only function tools with a "
                            "name are supported (type \"%s\")", i,
                            type ? type : "(none)");
                goto failed;
            }

            fn = json_pack("{s:O}", "name", json_object_get(tool, "name"));
            json_object_foreach(tool, key, fmt) {
                if (ngx_strcmp(key, "description") == 0
                    || ngx_strcmp(key, "parameters") == 0
                    || ngx_strcmp(key, "strict") == 0)
                {
                    json_object_set(fn, key, fmt);
                }
            }
            json_array_append_new(v, json_pack("{s:s,s:o}", "type",
                                               "function", "function", fn));
        }

    } else if (tools != NULL && !json_is_null(tools) && !json_is_array(tools))
    {
        ngx_sprintf(err, "\"tools\" must be a list");
        goto failed;
    }

    /* tool_choice: a string as in chat, or {type: function, name} */
    *param = "tool_choice";
    v = json_object_get(in, "tool_choice");
    if (json_is_string(v)) {
        json_object_set(chat, "tool_choice", v);

    } else if (json_is_object(v)) {
        type = json_string_value(json_object_get(v, "type"));
        if (type == NULL || ngx_strcmp(type, "function") != 0
            || !json_is_string(json_object_get(v, "name")))
        {
            ngx_sprintf(err, "\"tool_choice\" must be \"none\", \"auto\", "
                        "\"required\" or {\"type\": \"function\", \"name\": "
                        "...}");
            goto failed;
        }
        json_object_set_new(chat, "tool_choice",
                            json_pack("{s:s,s:{s:O}}", "type", "function",
                                      "function", "name",
                                      json_object_get(v, "name")));

    } else if (v != NULL && !json_is_null(v)) {
        ngx_sprintf(err, "\"tool_choice\" must be a string or an object");
        goto failed;
    }

    /* text.format -> response_format */
    *param = "text";
    fmt = json_object_get(json_object_get(in, "text"), "format");
    type = json_string_value(json_object_get(fmt, "type"));
    if (type != NULL && ngx_strcmp(type, "json_object") == 0) {
        json_object_set_new(chat, "response_format",
                            json_pack("{s:s}", "type", "json_object"));

    } else if (type != NULL && ngx_strcmp(type, "json_schema") == 0) {
        v = json_pack("{s:s,s:{}}", "type", "json_schema", "json_schema");
        json_object_foreach(fmt, key, tool) {
            if (ngx_strcmp(key, "type") != 0) {
                json_object_set(json_object_get(v, "json_schema"), key, tool);
            }
        }
        json_object_set_new(chat, "response_format", v);

    } else if (type != NULL && ngx_strcmp(type, "text") != 0) {
        ngx_sprintf(err, "text.format type \"%s\" is not text, json_object "
                    "or json_schema", type);
        goto failed;
    }

    *out = chat;
    json_decref(prev);
    return NGX_OK;

failed:

    json_decref(chat);
    json_decref(prev);
    return NGX_ERROR;
}


/* "<prefix>" and 96 random bits, as OpenAI's item ids look */
json_t *
ngx_http_kimi_responses_id(const char *prefix)
{
    u_char  buf[64], *p;

    p = ngx_sprintf(buf, "%s%08xD%08xD%08xD", prefix, (uint32_t) ngx_random(),
                    (uint32_t) ngx_random(), (uint32_t) ngx_random());

    return json_stringn((char *) buf, p - buf);
}


/* A finished message item holding the answer's text. */
static json_t *
ngx_http_kimi_responses_message(json_t *text, const char *finish, json_t *id)
{
    return json_pack("{s:s,s:o,s:s,s:s,s:[{s:s,s:o,s:[],s:[]}]}",
                     "type", "message", "id", id,
                     "status", finish && ngx_strcmp(finish, "length") == 0
                               ? "incomplete" : "completed",
                     "role", "assistant",
                     "content", "type", "output_text",
                     "text", json_is_string(text) ? json_incref(text)
                                                  : json_string(""),
                     "annotations", "logprobs");
}


/* A reasoning item: the text before "</think>" (kimi_reasoning_parser). */
static json_t *
ngx_http_kimi_responses_reasoning(json_t *text, json_t *id)
{
    return json_pack("{s:s,s:o,s:[],s:[{s:s,s:o}]}", "type", "reasoning",
                     "id", id, "summary", "content", "type", "reasoning_text",
                     "text", json_is_string(text) ? json_incref(text)
                                                  : json_string(""));
}


/* A finished function_call item of a chat tool call. */
static json_t *
ngx_http_kimi_responses_call(json_t *call, json_t *id)
{
    json_t  *fn = json_object_get(call, "function");

    return json_pack("{s:s,s:o,s:O,s:O,s:O,s:s}", "type", "function_call",
                     "id", id, "call_id", json_object_get(call, "id"),
                     "name", json_object_get(fn, "name"),
                     "arguments", json_object_get(fn, "arguments"),
                     "status", "completed");
}


/* root[key] = the request's value, or dflt (a new reference) */
static void
ngx_http_kimi_responses_echo(json_t *root, json_t *req, const char *key,
    json_t *dflt)
{
    json_t  *v = json_object_get(req, key);

    if (v != NULL && !json_is_null(v)) {
        json_object_set(root, key, v);
        json_decref(dflt);
    } else {
        json_object_set_new(root, key, dflt);
    }
}


ngx_int_t
ngx_http_kimi_responses_send(ngx_http_kimi_ctx_t *ctx, json_t *choice,
    ngx_uint_t output_tokens)
{
    json_t     *root;
    ngx_int_t   rc;

    root = ngx_http_kimi_responses_object(ctx, choice, output_tokens);
    if (root == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_kimi_responses_keep(ctx, root, choice);

    rc = ngx_http_kimi_send_json(ctx->request, NGX_HTTP_OK, root);
    json_decref(root);

    ctx->headers_sent = 1;

    return rc;
}


json_t *
ngx_http_kimi_responses_object(ngx_http_kimi_ctx_t *ctx, json_t *choice,
    ngx_uint_t output_tokens)
{
    size_t       i, k;
    json_t      *req, *root, *output, *msg, *content, *calls, *call, *usage,
                *v;
    const char  *finish;

    req = json_object_get(ctx->params.root, "__responses");
    msg = json_object_get(choice, "message");
    finish = json_string_value(json_object_get(choice, "finish_reason"));

    root = json_object();
    output = json_array();
    if (root == NULL || output == NULL) {
        json_decref(root);
        json_decref(output);
        return NULL;
    }

    content = json_object_get(msg, "content");
    calls = json_object_get(msg, "tool_calls");
    v = json_object_get(msg, "reasoning_content");

    if (ctx->params.stream) {
        /* a stream's items keep the ids and places its events gave them */
        for (k = 0; k < ctx->resp_items; k++) {
            json_array_append_new(output, json_null());
        }
        if (ctx->resp_rs_state) {
            json_array_set_new(output, ctx->resp_rs,
                ngx_http_kimi_responses_reasoning(v,
                    json_string((char *) ctx->resp_rs_id)));
        }
        if (ctx->resp_msg_open) {
            json_array_set_new(output, ctx->resp_msg,
                ngx_http_kimi_responses_message(content, finish,
                    json_string((char *) ctx->resp_msg_id)));
        }
        for (i = 0; i < ctx->n_calls && i < json_array_size(calls); i++) {
            json_array_set_new(output, ctx->calls[i].item,
                ngx_http_kimi_responses_call(json_array_get(calls, i),
                    json_string((char *) ctx->calls[i].item_id)));
        }

    } else {
        /* reasoning (kimi_reasoning_parser), the message, the calls */
        if (json_is_string(v) && json_string_length(v) > 0) {
            json_array_append_new(output,
                ngx_http_kimi_responses_reasoning(v,
                    ngx_http_kimi_responses_id("rs_")));
        }
        if (json_is_string(content) && json_string_length(content) > 0) {
            json_array_append_new(output,
                ngx_http_kimi_responses_message(content, finish,
                    ngx_http_kimi_responses_id("msg_")));
        }
        json_array_foreach(calls, i, call) {
            json_array_append_new(output,
                ngx_http_kimi_responses_call(call,
                    ngx_http_kimi_responses_id("fc_")));
        }
    }

    usage = json_pack("{s:I,s:{s:I},s:I,s:{s:I},s:I}",
                      "input_tokens", (json_int_t) ctx->usage.prompt_tokens,
                      "input_tokens_details", "cached_tokens",
                      (json_int_t) ctx->usage.cached_tokens,
                      "output_tokens", (json_int_t) output_tokens,
                      "output_tokens_details", "reasoning_tokens",
                      (json_int_t) 0,
                      "total_tokens",
                      (json_int_t) (ctx->usage.prompt_tokens + output_tokens));

    json_object_set_new(root, "id",
                        json_stringn((char *) ctx->id.data, ctx->id.len));
    json_object_set_new(root, "object", json_string("response"));
    json_object_set_new(root, "created_at", json_integer(ctx->created));
    json_object_set_new(root, "model",
                        json_stringn_nocheck((char *) ctx->usage.model.data,
                                             ctx->usage.model.len));

    if (choice == NULL) {
        json_object_set_new(root, "status", json_string("in_progress"));
        json_object_set_new(root, "incomplete_details", json_null());

    } else if (finish != NULL && ngx_strcmp(finish, "length") == 0) {
        json_object_set_new(root, "status", json_string("incomplete"));
        json_object_set_new(root, "incomplete_details",
                            json_pack("{s:s}", "reason", "max_output_tokens"));
    } else {
        json_object_set_new(root, "status", json_string("completed"));
        json_object_set_new(root, "incomplete_details", json_null());
    }

    json_object_set_new(root, "error", json_null());
    json_object_set_new(root, "output", output);
    json_object_set_new(root, "usage",
                        usage && choice ? usage : json_null());
    if (choice == NULL) {
        json_decref(usage);
    }

    /* the request's settings, as OpenAI echoes them */
    ngx_http_kimi_responses_echo(root, req, "instructions", json_null());
    ngx_http_kimi_responses_echo(root, req, "max_output_tokens", json_null());
    ngx_http_kimi_responses_echo(root, req, "metadata", json_object());
    ngx_http_kimi_responses_echo(root, req, "parallel_tool_calls",
                                 json_true());
    ngx_http_kimi_responses_echo(root, req, "previous_response_id",
                                 json_null());
    json_object_set_new(root, "store",
                        json_boolean(ngx_http_kimi_responses_storing(ctx)));
    json_object_set_new(root, "background",
                        json_boolean(json_is_true(
                            json_object_get(req, "background"))));
    ngx_http_kimi_responses_echo(root, req, "temperature", json_real(1.0));
    ngx_http_kimi_responses_echo(root, req, "top_p", json_real(1.0));
    v = json_object_get(json_object_get(req, "text"), "format");
    json_object_set_new(root, "text",
                        v ? json_pack("{s:O}", "format", v)
                          : json_pack("{s:{s:s}}", "format", "type", "text"));
    ngx_http_kimi_responses_echo(root, req, "tool_choice",
                                 json_string("auto"));
    ngx_http_kimi_responses_echo(root, req, "tools", json_array());
    json_object_set_new(root, "truncation", json_string("disabled"));
    ngx_http_kimi_responses_echo(root, req, "user", json_null());

    return root;
}
