
/*
 * Server-sent events in OpenAI's chunk shape, and the client write side.
 *
 * Owns:   the event framing (role chunk, content, tool_calls deltas,
 *         finish chunk, usage chunk with "choices": [], [DONE], error
 *         event), output buffers cycling through free/busy chains tagged
 *         with the module, backpressure (ctx->output_busy stops token
 *         consumption until the client drains) and send_timeout.
 * Never:  holds an event back: each is one flush=1 buffer, so the write
 *         filter's postpone_output cannot delay it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


#define NGX_HTTP_KIMI_SSE_BUF    1024      /* typical event fits, reused */
#define NGX_HTTP_KIMI_USAGE_LEN                                               \
    (sizeof(",\"usage\":{\"prompt_tokens\":,\"completion_tokens\":,"       \
            "\"total_tokens\":}") + 3 * NGX_INT_T_LEN)

#define NGX_HTTP_KIMI_CHUNK_TAIL                                              \
    "},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
#define NGX_HTTP_KIMI_TEXT_TAIL                                               \
    "\",\"logprobs\":null,\"finish_reason\":null}]}\n\n"


static ngx_chain_t *ngx_http_kimi_sse_unhold(ngx_http_kimi_ctx_t *ctx,
    ngx_chain_t *out);
static ngx_int_t ngx_http_kimi_sse_finish_held(ngx_http_kimi_ctx_t *ctx);
static ngx_chain_t *ngx_http_kimi_sse_buf(ngx_http_kimi_ctx_t *ctx,
    size_t size);
static ngx_int_t ngx_http_kimi_sse_send(ngx_http_kimi_ctx_t *ctx,
    ngx_chain_t *out);
static ngx_int_t ngx_http_kimi_sse_done(ngx_http_kimi_ctx_t *ctx,
    ngx_chain_t *cl);
static u_char *ngx_http_kimi_sse_logprobs(ngx_http_kimi_ctx_t *ctx,
    u_char *p, const char *close);
static u_char *ngx_http_kimi_sse_close(ngx_http_kimi_ctx_t *ctx,
    u_char *start, u_char *p);
static u_char *ngx_http_kimi_sse_ids(ngx_http_kimi_ctx_t *ctx, u_char *start,
    u_char *p);
static size_t ngx_http_kimi_sse_finish_len(ngx_http_kimi_ctx_t *ctx);
static u_char *ngx_http_kimi_sse_finish_tail(ngx_http_kimi_ctx_t *ctx,
    u_char *p);


/* The headers and the chunk prefix, once per request: the first choice
 * the engine accepts sends them, the others share the prefix. */
ngx_int_t
ngx_http_kimi_sse_start(ngx_http_kimi_ctx_t *ctx)
{
    u_char              *p;
    size_t               len;
    ngx_int_t            rc;
    ngx_http_request_t  *r;
    ngx_http_kimi_ctx_t *choice;

    choice = ctx;
    ctx = ctx->main;

    if (ctx->headers_sent) {
        choice->prefix = ctx->prefix;
        return NGX_OK;
    }

    if (ctx->detached) {
        /* a background stream has no client: its events go to the
         * store (ngx_http_kimi_resp_event()) */
        return NGX_OK;
    }

    r = ctx->request;

    rc = ngx_http_kimi_sse_headers(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    ctx->headers_sent = 1;
    ctx->usage.status = NGX_HTTP_OK;

    if (ngx_http_kimi_sse_nodelay(r) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the part every chunk of this response shares, escaped once */
    len = sizeof("data: {\"id\":\"\",\"object\":\"chat.completion.chunk\","
                 "\"created\":,\"model\":\"\",\"choices\":[") - 1
          + ctx->id.len + NGX_TIME_T_LEN
          + ngx_http_kimi_json_escape_len(ctx->usage.model.data,
                                          ctx->usage.model.len);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->prefix.data = p;
    p = ngx_sprintf(p, "data: {\"id\":\"%V\",\"object\":\"%s\",\"created\":%T,"
                    "\"model\":\"", &ctx->id,
                    ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT
                    ? "chat.completion.chunk" : "text_completion",
                    ctx->created);
    p = ngx_http_kimi_json_escape(p, ctx->usage.model.data,
                                  ctx->usage.model.len);
    p = ngx_cpymem(p, "\",\"choices\":[", sizeof("\",\"choices\":[") - 1);
    ctx->prefix.len = p - ctx->prefix.data;
    choice->prefix = ctx->prefix;

    return NGX_OK;
}


/* A 200 text/event-stream header, no cache, unbuffered by a fronting
 * proxy, no limit_rate: every stream's (a background stream's follower
 * too, ngx_http_kimi_responses_follow.c).  ngx_http_send_header()'s rc. */
ngx_int_t
ngx_http_kimi_sse_headers(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    /* a fronting nginx proxy relays the stream unbuffered */
    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    r->limit_rate = 0;

    return ngx_http_send_header(r);
}


/* once the header went: each event leaves at once (HTTP/2 has none) */
ngx_int_t
ngx_http_kimi_sse_nodelay(ngx_http_request_t *r)
{
#if (NGX_HTTP_V2)
    if (r->stream != NULL) {
        return NGX_OK;
    }
#endif

    return ngx_tcp_nodelay(r->connection);
}


/*
 * /v1/responses streams events, not chunks: "event: TYPE" and a JSON data
 * line with its type and sequence_number (done: the stream's last, no
 * [DONE] after it).  data is consumed.
 */
static ngx_int_t
ngx_http_kimi_resp_event(ngx_http_kimi_ctx_t *ctx, const char *type,
    json_t *data, ngx_uint_t done)
{
    char         *s;
    size_t        n;
    ngx_int_t     rc;
    ngx_chain_t  *cl;

    if (data == NULL) {
        return NGX_ERROR;
    }

    json_object_set_new(data, "type", json_string(type));
    json_object_set_new(data, "sequence_number",
                        json_integer((json_int_t) ctx->resp_seq++));
    s = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (s == NULL) {
        return NGX_ERROR;
    }

    n = ngx_strlen(s);

    if (ctx->main->detached) {
        rc = ngx_http_kimi_background_event(ctx->main, ctx->resp_seq - 1,
                                            type, s, n, done);
        free(s);
        return rc;
    }

    cl = ngx_http_kimi_sse_buf(ctx, n + ngx_strlen(type) + 32);
    if (cl == NULL) {
        free(s);
        return NGX_ERROR;
    }

    cl->buf->last = ngx_sprintf(cl->buf->last, "event: %s\ndata: ", type);
    cl->buf->last = ngx_cpymem(cl->buf->last, s, n);
    cl->buf->last = ngx_cpymem(cl->buf->last, "\n\n", 2);
    free(s);

    return done ? ngx_http_kimi_sse_done(ctx, cl)
                : ngx_http_kimi_sse_send(ctx, cl);
}


/* response.output_text.done .. output_item.done of the open message */
static ngx_int_t
ngx_http_kimi_resp_close_message(ngx_http_kimi_ctx_t *ctx)
{
    json_t  *text, *part;

    text = json_stringn_nocheck((char *) ctx->content.data + ctx->resp_msg_from,
                                ctx->content.len - ctx->resp_msg_from);
    part = json_pack("{s:s,s:O,s:[]}", "type", "output_text", "text", text,
                     "annotations");

    if (ngx_http_kimi_resp_event(ctx, "response.output_text.done",
            json_pack("{s:s,s:I,s:i,s:O,s:[]}", "item_id",
                      (char *) ctx->resp_msg_id, "output_index",
                      (json_int_t) ctx->resp_msg, "content_index", 0,
                      "text", text, "logprobs"), 0) != NGX_OK
        || ngx_http_kimi_resp_event(ctx, "response.content_part.done",
            json_pack("{s:s,s:I,s:i,s:O}", "item_id",
                      (char *) ctx->resp_msg_id, "output_index",
                      (json_int_t) ctx->resp_msg, "content_index", 0,
                      "part", part), 0) != NGX_OK
        || ngx_http_kimi_resp_event(ctx, "response.output_item.done",
            json_pack("{s:I,s:{s:s,s:s,s:s,s:s,s:[O]}}", "output_index",
                      (json_int_t) ctx->resp_msg, "item", "type", "message",
                      "id", (char *) ctx->resp_msg_id, "status",
                      "completed", "role", "assistant", "content", part),
            0) != NGX_OK)
    {
        json_decref(text);
        json_decref(part);
        return NGX_ERROR;
    }

    json_decref(text);
    json_decref(part);
    return NGX_OK;
}


/* The open reasoning item done: its text is all of ctx->reasoning. */
static ngx_int_t
ngx_http_kimi_resp_close_reasoning(ngx_http_kimi_ctx_t *ctx)
{
    json_t  *text;

    if (ctx->resp_rs_state != 1) {
        return NGX_OK;
    }

    ctx->resp_rs_state = 2;
    text = json_stringn_nocheck((char *) ctx->reasoning.data,
                                ctx->reasoning.len);

    if (ngx_http_kimi_resp_event(ctx, "response.reasoning_text.done",
            json_pack("{s:s,s:I,s:i,s:O}", "item_id", (char *) ctx->resp_rs_id,
                      "output_index", (json_int_t) ctx->resp_rs,
                      "content_index", 0, "text", text), 0) != NGX_OK
        || ngx_http_kimi_resp_event(ctx, "response.output_item.done",
            json_pack("{s:I,s:{s:s,s:s,s:[],s:[{s:s,s:O}]}}", "output_index",
                      (json_int_t) ctx->resp_rs, "item", "type", "reasoning",
                      "id", (char *) ctx->resp_rs_id, "summary", "content",
                      "type", "reasoning_text", "text", text), 0) != NGX_OK)
    {
        json_decref(text);
        return NGX_ERROR;
    }

    json_decref(text);
    return NGX_OK;
}


/* Reasoning text of a Responses stream (kept in ctx->reasoning by the
 * caller): the reasoning item opens with the first, then text deltas. */
ngx_int_t
ngx_http_kimi_sse_resp_reasoning(ngx_http_kimi_ctx_t *ctx, const u_char *text,
    size_t len)
{
    json_t  *id;

    if (ngx_http_kimi_sse_role(ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ctx->resp_rs_state == 0) {
        ctx->resp_rs_state = 1;
        ctx->resp_rs = ctx->resp_items++;
        id = ngx_http_kimi_responses_id("rs_");
        ngx_cpystrn(ctx->resp_rs_id, (u_char *) json_string_value(id),
                    sizeof(ctx->resp_rs_id));
        json_decref(id);

        if (ngx_http_kimi_resp_event(ctx, "response.output_item.added",
                json_pack("{s:I,s:{s:s,s:s,s:[],s:[]}}", "output_index",
                          (json_int_t) ctx->resp_rs, "item", "type",
                          "reasoning", "id", (char *) ctx->resp_rs_id,
                          "summary", "content"), 0) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return ngx_http_kimi_resp_event(ctx, "response.reasoning_text.delta",
               json_pack("{s:s,s:I,s:i,s:s%}", "item_id",
                         (char *) ctx->resp_rs_id, "output_index",
                         (json_int_t) ctx->resp_rs, "content_index", 0,
                         "delta", (char *) text, len), 0);
}


/* The stream's end: every item done, then the whole Response. */
static ngx_int_t
ngx_http_kimi_resp_finish(ngx_http_kimi_ctx_t *ctx)
{
    json_t                     *choice, *resp;
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_http_kimi_tool_call_t  *tc;

    /* (an answer without a token still opens with response.created) */
    if (ngx_http_kimi_sse_role(ctx) != NGX_OK
        || ngx_http_kimi_resp_close_reasoning(ctx) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ctx->resp_msg_open && ngx_http_kimi_resp_close_message(ctx) != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < ctx->n_calls; i++) {
        tc = &ctx->calls[i];

        if (ngx_http_kimi_resp_event(ctx,
                "response.function_call_arguments.done",
                json_pack("{s:s,s:I,s:s%}", "item_id", (char *) tc->item_id,
                          "output_index", (json_int_t) tc->item, "arguments",
                          tc->arguments.len ? (char *) tc->arguments.data
                                            : "", tc->arguments.len), 0)
               != NGX_OK
            || ngx_http_kimi_resp_event(ctx, "response.output_item.done",
                json_pack("{s:I,s:{s:s,s:s,s:s%,s:s%,s:s%,s:s}}",
                          "output_index", (json_int_t) tc->item, "item",
                          "type", "function_call", "id", (char *) tc->item_id,
                          "call_id", (char *) tc->id.data, tc->id.len,
                          "name", (char *) tc->name.data, tc->name.len,
                          "arguments", tc->arguments.len
                                       ? (char *) tc->arguments.data : "",
                          tc->arguments.len, "status", "completed"), 0)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    choice = ngx_http_kimi_choice_json(ctx);
    if (choice == NULL) {
        return NGX_ERROR;
    }

    resp = ngx_http_kimi_responses_object(ctx, choice,
                                          ctx->usage.completion_tokens);
    rc = (resp != NULL) ? ngx_http_kimi_responses_keep(ctx, resp, choice)
                        : NGX_ERROR;
    json_decref(choice);
    if (resp == NULL) {
        return NGX_ERROR;
    }

    if (rc == NGX_DECLINED) {
        /* a background response cancelled or deleted (from any worker)
         * before its end was written: the entry says so, and its stream
         * ends without a final event, as a cancelled stream does */
        json_decref(resp);
        return NGX_OK;
    }

    return ngx_http_kimi_resp_event(ctx,
        ngx_strcmp(json_string_value(json_object_get(resp, "status")),
                   "incomplete") == 0
        ? "response.incomplete" : "response.completed",
        json_pack("{s:o}", "response", resp), 1);
}


/*
 * OpenAI opens every chat stream with the role.  It goes out with the
 * first token, not at accept, as vLLM does: clients (and vllm bench) take
 * the first chunk as the time to first token.
 */
ngx_int_t
ngx_http_kimi_sse_role(ngx_http_kimi_ctx_t *ctx)
{
    u_char       *p;
    ngx_chain_t  *cl;

    if (ctx->role_sent || ctx->route != NGX_HTTP_KIMI_ROUTE_CHAT) {
        return NGX_OK;
    }

    if (ctx->responses) {
        ctx->role_sent = 1;

        /* (a background stream's response.created went out when it was
         * queued) */
        return (ctx->main->detached
                || ngx_http_kimi_resp_event(ctx, "response.created",
                   json_pack("{s:o}", "response",
                             ngx_http_kimi_responses_object(ctx, NULL, 0)), 0)
                   == NGX_OK)
               && ngx_http_kimi_resp_event(ctx, "response.in_progress",
                   json_pack("{s:o}", "response",
                             ngx_http_kimi_responses_object(ctx, NULL, 0)), 0)
                  == NGX_OK
               ? NGX_OK : NGX_ERROR;
    }

    cl = ngx_http_kimi_sse_buf(ctx, ctx->prefix.len + 128);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    p = cl->buf->last;
    p = ngx_cpymem(p, ctx->prefix.data, ctx->prefix.len);
    p = ngx_sprintf(p, "{\"index\":%ui,\"delta\":{\"role\":\"assistant\","
                    "\"content\":\"\"" NGX_HTTP_KIMI_CHUNK_TAIL, ctx->index);
    cl->buf->last = ngx_http_kimi_sse_close(ctx, cl->buf->last, p);

    ctx->role_sent = 1;

    return ngx_http_kimi_sse_send(ctx, cl);
}


ngx_int_t
ngx_http_kimi_sse_content(ngx_http_kimi_ctx_t *ctx, const u_char *text,
    size_t len)
{
    u_char       *p;
    json_t       *id;
    ngx_chain_t  *cl, *out;

    if (ctx->responses) {
        /* (the text is also in ctx->content: output.c keeps it) */
        if (ngx_http_kimi_resp_close_reasoning(ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        if (!ctx->resp_msg_open) {
            ctx->resp_msg_open = 1;
            ctx->resp_msg = ctx->resp_items++;
            ctx->resp_msg_from = ctx->content.len - len;
            id = ngx_http_kimi_responses_id("msg_");
            ngx_cpystrn(ctx->resp_msg_id, (u_char *) json_string_value(id),
                        sizeof(ctx->resp_msg_id));
            json_decref(id);

            if (ngx_http_kimi_resp_event(ctx, "response.output_item.added",
                    json_pack("{s:I,s:{s:s,s:s,s:s,s:s,s:[]}}", "output_index",
                              (json_int_t) ctx->resp_msg, "item", "type",
                              "message", "id", (char *) ctx->resp_msg_id,
                              "status", "in_progress", "role", "assistant",
                              "content"), 0) != NGX_OK
                || ngx_http_kimi_resp_event(ctx, "response.content_part.added",
                    json_pack("{s:s,s:I,s:i,s:{s:s,s:s,s:[]}}", "item_id",
                              (char *) ctx->resp_msg_id, "output_index",
                              (json_int_t) ctx->resp_msg, "content_index", 0,
                              "part", "type", "output_text", "text", "",
                              "annotations"), 0) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        return ngx_http_kimi_resp_event(ctx, "response.output_text.delta",
                   json_pack("{s:s,s:I,s:i,s:s%,s:[]}", "item_id",
                             (char *) ctx->resp_msg_id, "output_index",
                             (json_int_t) ctx->resp_msg, "content_index", 0,
                             "delta", (char *) text, len, "logprobs"), 0);
    }

    /* (in the last drain, with room for the finish patched into the
     * chunk: ngx_http_kimi_sse_finish_held()) */
    cl = ngx_http_kimi_sse_buf(ctx, ctx->prefix.len + 128 + ctx->logprobs.len
                               + ngx_http_kimi_logprobs_legacy_len(ctx)
                               + ngx_http_kimi_json_escape_len(text, len)
                               + (ctx->sse_final
                                  ? ngx_http_kimi_sse_finish_len(ctx) : 0));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(cl->buf->last, ctx->prefix.data, ctx->prefix.len);

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT) {
        p = ngx_sprintf(p, "{\"index\":%ui,\"delta\":{\"content\":\"",
                        ctx->index);
        p = ngx_http_kimi_json_escape(p, text, len);

        if (ctx->params.sampling.logprobs) {
            p = ngx_http_kimi_sse_logprobs(ctx, p, "\"}");

        } else {
            p = ngx_cpymem(p, "\"" NGX_HTTP_KIMI_CHUNK_TAIL,
                           sizeof("\"" NGX_HTTP_KIMI_CHUNK_TAIL) - 1);
        }

    } else if (ctx->params.sampling.logprobs) {
        p = ngx_sprintf(p, "{\"index\":%ui,\"text\":\"", ctx->index);
        p = ngx_http_kimi_json_escape(p, text, len);
        p = ngx_cpymem(p, "\",\"logprobs\":",
                       sizeof("\",\"logprobs\":") - 1);
        p = ngx_http_kimi_logprobs_legacy(ctx, p);
        p = ngx_cpymem(p, ",\"finish_reason\":null}]}\n\n",
                       sizeof(",\"finish_reason\":null}]}\n\n") - 1);

    } else {
        p = ngx_sprintf(p, "{\"index\":%ui,\"text\":\"", ctx->index);
        p = ngx_http_kimi_json_escape(p, text, len);
        p = ngx_cpymem(p, NGX_HTTP_KIMI_TEXT_TAIL,
                       sizeof(NGX_HTTP_KIMI_TEXT_TAIL) - 1);
    }

    cl->buf->last = ngx_http_kimi_sse_close(ctx, cl->buf->last, p);

    if (ctx->sse_final) {
        /* the last drain: keep the newest chunk so the finish_reason rides
         * on the last token's chunk, as vLLM sends it */
        out = ctx->last_chunk;
        ctx->last_chunk = NULL;

        if (out && ngx_http_kimi_sse_send(ctx, out) == NGX_ERROR) {
            return NGX_ERROR;
        }

        ctx->last_chunk = cl;

        return NGX_OK;
    }

    return ngx_http_kimi_sse_send(ctx, cl);
}


/* A reasoning delta (kimi_reasoning_parser), as vLLM's reasoning_content;
 * the logprob entries of its tokens ride on the next content chunk */
ngx_int_t
ngx_http_kimi_sse_reasoning(ngx_http_kimi_ctx_t *ctx, const u_char *text,
    size_t len)
{
    u_char       *p;
    ngx_chain_t  *cl;

    if (ngx_http_kimi_sse_role(ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    cl = ngx_http_kimi_sse_buf(ctx, ctx->prefix.len + 128
                               + ngx_http_kimi_json_escape_len(text, len));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(cl->buf->last, ctx->prefix.data, ctx->prefix.len);
    p = ngx_sprintf(p, "{\"index\":%ui,\"delta\":{\"reasoning_content\":\"",
                    ctx->index);
    p = ngx_http_kimi_json_escape(p, text, len);
    p = ngx_cpymem(p, "\"" NGX_HTTP_KIMI_CHUNK_TAIL,
                   sizeof("\"" NGX_HTTP_KIMI_CHUNK_TAIL) - 1);
    cl->buf->last = ngx_http_kimi_sse_close(ctx, cl->buf->last, p);

    return ngx_http_kimi_sse_send(ctx, cl);
}


ngx_int_t
ngx_http_kimi_sse_tool_begin(ngx_http_kimi_ctx_t *ctx, ngx_uint_t index,
    const char *id, const char *name)
{
    u_char       *p;
    size_t        id_len, name_len;
    ngx_chain_t  *cl;

    id_len = ngx_strlen(id);
    name_len = ngx_strlen(name);

    if (ctx->responses) {
        ngx_http_kimi_tool_call_t  *tc = &ctx->calls[index];
        json_t                     *item_id;

        if (ngx_http_kimi_resp_close_reasoning(ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        tc->item = ctx->resp_items++;
        item_id = ngx_http_kimi_responses_id("fc_");
        ngx_cpystrn(tc->item_id, (u_char *) json_string_value(item_id),
                    sizeof(tc->item_id));
        json_decref(item_id);

        return ngx_http_kimi_resp_event(ctx, "response.output_item.added",
                   json_pack("{s:I,s:{s:s,s:s,s:s,s:s,s:s,s:s}}",
                             "output_index", (json_int_t) tc->item, "item",
                             "type", "function_call", "id",
                             (char *) tc->item_id, "call_id", id, "name",
                             name, "arguments", "", "status", "in_progress"),
                   0);
    }

    cl = ngx_http_kimi_sse_buf(ctx, ctx->prefix.len + 256
                               + ngx_http_kimi_json_escape_len((u_char *) id,
                                                               id_len)
                               + ngx_http_kimi_json_escape_len(
                                                  (u_char *) name, name_len));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(cl->buf->last, ctx->prefix.data, ctx->prefix.len);
    p = ngx_sprintf(p, "{\"index\":%ui,\"delta\":{\"tool_calls\":[{\"index\":%ui,"
                    "\"id\":\"", ctx->index, index);
    p = ngx_http_kimi_json_escape(p, (u_char *) id, id_len);
    p = ngx_cpymem(p, "\",\"type\":\"function\",\"function\":{\"name\":\"",
                   sizeof("\",\"type\":\"function\",\"function\":{\"name\":\"")
                   - 1);
    p = ngx_http_kimi_json_escape(p, (u_char *) name, name_len);
    p = ngx_cpymem(p, "\",\"arguments\":\"\"}}]" NGX_HTTP_KIMI_CHUNK_TAIL,
                   sizeof("\",\"arguments\":\"\"}}]" NGX_HTTP_KIMI_CHUNK_TAIL)
                   - 1);
    cl->buf->last = ngx_http_kimi_sse_close(ctx, cl->buf->last, p);

    return ngx_http_kimi_sse_send(ctx, cl);
}


ngx_int_t
ngx_http_kimi_sse_tool_args(ngx_http_kimi_ctx_t *ctx, ngx_uint_t index,
    const u_char *text, size_t len)
{
    u_char       *p;
    ngx_chain_t  *cl;

    if (len == 0) {
        return NGX_OK;
    }

    if (ctx->responses) {
        return ngx_http_kimi_resp_event(ctx,
                   "response.function_call_arguments.delta",
                   json_pack("{s:s,s:I,s:s%}", "item_id",
                             (char *) ctx->calls[index].item_id,
                             "output_index",
                             (json_int_t) ctx->calls[index].item, "delta",
                             (char *) text, len), 0);
    }

    cl = ngx_http_kimi_sse_buf(ctx, ctx->prefix.len + 160
                               + ngx_http_kimi_json_escape_len(text, len));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(cl->buf->last, ctx->prefix.data, ctx->prefix.len);
    p = ngx_sprintf(p, "{\"index\":%ui,\"delta\":{\"tool_calls\":[{\"index\":%ui,"
                    "\"function\":{\"arguments\":\"", ctx->index, index);
    p = ngx_http_kimi_json_escape(p, text, len);
    p = ngx_cpymem(p, "\"}}]" NGX_HTTP_KIMI_CHUNK_TAIL,
                   sizeof("\"}}]" NGX_HTTP_KIMI_CHUNK_TAIL) - 1);
    cl->buf->last = ngx_http_kimi_sse_close(ctx, cl->buf->last, p);

    return ngx_http_kimi_sse_send(ctx, cl);
}


/* closes a delta with the pending logprobs entries, which it consumes:
 * ...close,"logprobs":{"content":[...]},"finish_reason":null}]}\n\n */
static u_char *
ngx_http_kimi_sse_logprobs(ngx_http_kimi_ctx_t *ctx, u_char *p,
    const char *close)
{
    p = ngx_cpymem(p, close, ngx_strlen(close));
    p = ngx_cpymem(p, ",\"logprobs\":{\"content\":[",
                   sizeof(",\"logprobs\":{\"content\":[") - 1);
    p = ngx_cpymem(p, ctx->logprobs.data, ctx->logprobs.len);
    ctx->logprobs.len = 0;

    return ngx_cpymem(p, "]},\"finish_reason\":null}]}\n\n",
                      sizeof("]},\"finish_reason\":null}]}\n\n") - 1);
}


/* A choice chunk written from start to p: what the request asked every
 * chunk to carry, in place (its buffer has the room: ngx_http_kimi_sse_buf);
 * returns the chunk's end.  vLLM's continuous_usage_stats: the event, ending
 * with its closing "}\n\n", also says this choice's usage so far. */
static u_char *
ngx_http_kimi_sse_close(ngx_http_kimi_ctx_t *ctx, u_char *start, u_char *p)
{
    if (ctx->params.token_ids) {
        p = ngx_http_kimi_sse_ids(ctx, start, p);
    }

    if (!ctx->params.continuous_usage) {
        return p;
    }

    return ngx_sprintf(p - 3, ",\"usage\":{\"prompt_tokens\":%uz,"
                       "\"completion_tokens\":%ui,\"total_tokens\":%uz}}\n\n",
                       ctx->n_prompt, ctx->n_out, ctx->n_prompt + ctx->n_out);
}


/* ids as a JSON member: "name":[1,2,...], */
static u_char *
ngx_http_kimi_sse_id_list(u_char *p, const char *name, const int32_t *ids,
    size_t n)
{
    size_t  i;

    p = ngx_sprintf(p, "\"%s\":[", name);

    for (i = 0; i < n; i++) {
        p = ngx_sprintf(p, i ? ",%D" : "%D", ids[i]);
    }

    return ngx_cpymem(p, "],", 2);
}


/* the most bytes ngx_http_kimi_sse_ids adds to a chunk */
static size_t
ngx_http_kimi_sse_ids_room(ngx_http_kimi_ctx_t *ctx)
{
    size_t  n;

    if (!ctx->params.token_ids) {
        return 0;
    }

    n = ctx->out_ids ? ctx->out_ids->nelts - ctx->ids_sent : 0;

    return (n + (ctx->prompt_ids_sent ? 0 : ctx->n_prompt)) * NGX_INT32_LEN
           + sizeof("\"prompt_token_ids\":[],\"token_ids\":[],");
}


/*
 * vLLM's return_token_ids in a stream: the choice chunk from start to p
 * gets the ids generated since the choice's last chunk ("token_ids", right
 * after its index) and, on the choice's first chunk, its prompt's
 * ("prompt_token_ids": at the top of a chat chunk, in a completion's
 * choice).  The tail stays as written, so the finish_reason can still be
 * patched into a held chunk.
 */
static u_char *
ngx_http_kimi_sse_ids(ngx_http_kimi_ctx_t *ctx, u_char *start, u_char *p)
{
    u_char   *at, *top, *ins, *e;
    size_t    n, len;

    at = start + ctx->prefix.len;

    if (p - at < 10 || ngx_strncmp(at, "{\"index\":", 9) != 0) {
        return p;
    }

    for (at += 9; at < p && *at >= '0' && *at <= '9'; at++) { /* void */ }

    if (at >= p || *at++ != ',') {
        return p;
    }

    ins = ngx_pnalloc(ctx->request->pool, ngx_http_kimi_sse_ids_room(ctx));
    if (ins == NULL) {
        return p;
    }

    n = ctx->out_ids ? ctx->out_ids->nelts : 0;
    e = ins;

    if (!ctx->prompt_ids_sent && ctx->route != NGX_HTTP_KIMI_ROUTE_CHAT) {
        e = ngx_http_kimi_sse_id_list(e, "prompt_token_ids", ctx->prompt,
                                      ctx->n_prompt);
    }

    e = ngx_http_kimi_sse_id_list(e, "token_ids",
                                  n ? (int32_t *) ctx->out_ids->elts
                                      + ctx->ids_sent : NULL,
                                  n - ctx->ids_sent);
    len = e - ins;
    ngx_memmove(at + len, at, p - at);
    ngx_memcpy(at, ins, len);
    p += len;

    if (!ctx->prompt_ids_sent && ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT) {
        /* the prefix ends with "choices":[ */
        top = start + ctx->prefix.len - (sizeof("\"choices\":[") - 1);
        e = ngx_http_kimi_sse_id_list(ins, "prompt_token_ids", ctx->prompt,
                                      ctx->n_prompt);
        len = e - ins;
        ngx_memmove(top + len, top, p - top);
        ngx_memcpy(top, ins, len);
        p += len;
    }

    ctx->prompt_ids_sent = 1;
    ctx->ids_sent = n;

    return p;
}


/* A choice's finish chunk; after the last choice's, the usage chunk when
 * asked for and [DONE]: one flushed chain.  NGX_HTTP_KIMI_CHOICE_DONE
 * when other choices still run. */
ngx_int_t
ngx_http_kimi_sse_finish(ngx_http_kimi_ctx_t *ctx, ngx_uint_t last)
{
    u_char               *p;
    ngx_uint_t            i, tokens;
    ngx_chain_t          *cl;
    ngx_http_kimi_ctx_t  *m;

    if (ctx->responses) {
        return ngx_http_kimi_resp_finish(ctx);     /* one choice: the last */
    }

    cl = ngx_http_kimi_sse_buf(ctx, 2 * ctx->prefix.len + 512
                                    + ctx->logprobs.len
                                    + ngx_http_kimi_logprobs_legacy_len(ctx)
                                    + ngx_http_kimi_sse_finish_len(ctx));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    p = cl->buf->last;

    if (ngx_http_kimi_sse_finish_held(ctx) == NGX_OK) {
        /* the finish_reason went out on the last content chunk */

    } else if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT && ctx->logprobs.len) {
        p = ngx_cpymem(p, ctx->prefix.data, ctx->prefix.len);
        /* entries of tokens whose text was held back or went to tools */
        p = ngx_sprintf(p, "{\"index\":%ui,\"delta\":{", ctx->index);
        p = ngx_http_kimi_sse_logprobs(ctx, p, "}");
        p -= sizeof("\"finish_reason\":null}]}\n\n") - 1;
        p = ngx_http_kimi_sse_finish_tail(ctx, p);

    } else if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT) {
        p = ngx_cpymem(p, ctx->prefix.data, ctx->prefix.len);
        p = ngx_sprintf(p, "{\"index\":%ui,\"delta\":{},\"logprobs\":null,",
                        ctx->index);
        p = ngx_http_kimi_sse_finish_tail(ctx, p);

    } else if (ctx->params.sampling.logprobs) {
        /* lists of tokens whose text was held back or never shown */
        p = ngx_cpymem(p, ctx->prefix.data, ctx->prefix.len);
        p = ngx_sprintf(p, "{\"index\":%ui,\"text\":\"\",\"logprobs\":",
                        ctx->index);
        p = ngx_http_kimi_logprobs_legacy(ctx, p);
        *p++ = ',';
        p = ngx_http_kimi_sse_finish_tail(ctx, p);

    } else {
        p = ngx_cpymem(p, ctx->prefix.data, ctx->prefix.len);
        p = ngx_sprintf(p, "{\"index\":%ui,\"text\":\"\",\"logprobs\":null,",
                        ctx->index);
        p = ngx_http_kimi_sse_finish_tail(ctx, p);
    }

    if (p > cl->buf->last) {
        p = ngx_http_kimi_sse_close(ctx, cl->buf->last, p);   /* the finish chunk */
    }

    if (!last) {
        cl->buf->last = p;

        if (cl->buf->last == cl->buf->pos) {
            /* the finish_reason rode on the held chunk: that goes alone */
            cl = ctx->last_chunk;
            ctx->last_chunk = NULL;

            if (cl == NULL) {
                return NGX_HTTP_KIMI_CHOICE_DONE;
            }
        }

        return ngx_http_kimi_sse_send(ctx, cl) == NGX_ERROR
               ? NGX_ERROR : NGX_HTTP_KIMI_CHOICE_DONE;
    }

    m = ctx->main;
    tokens = ctx->usage.completion_tokens;

    for (i = 0; m->choices && i < m->n_choices; i++) {
        tokens += m->choices[i] == ctx ? 0
                  : m->choices[i]->usage.completion_tokens;
    }

    if (ctx->params.include_usage) {
        p = ngx_cpymem(p, ctx->prefix.data, ctx->prefix.len);
        p = ngx_sprintf(p, "],\"usage\":{\"prompt_tokens\":%ui,"
                        "\"completion_tokens\":%ui,\"total_tokens\":%ui",
                        m->usage.prompt_tokens, tokens,
                        m->usage.prompt_tokens + tokens);

        if (m->usage.cached_tokens) {
            p = ngx_sprintf(p, ",\"prompt_tokens_details\":"
                            "{\"cached_tokens\":%ui}",
                            m->usage.cached_tokens);
        }

        p = ngx_cpymem(p, "}}\n\n", 4);
    }

    cl->buf->last = p;

    return ngx_http_kimi_sse_done(ctx, cl);
}


/* an error after the 200 went out: one error event, then [DONE] */
ngx_int_t
ngx_http_kimi_sse_error(ngx_http_kimi_ctx_t *ctx, const char *message,
    size_t len, const char *type)
{
    u_char       *p;
    ngx_chain_t  *cl;

    if (ctx->responses) {
        return ngx_http_kimi_resp_event(ctx, "error",
                   json_pack("{s:s,s:s%,s:n}", "code", type, "message",
                             message, len, "param"), 1);
    }

    cl = ngx_http_kimi_sse_buf(ctx, 128 + ngx_strlen(type)
                               + ngx_http_kimi_json_escape_len(
                                                  (u_char *) message, len));
    if (cl == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(cl->buf->last, "data: {\"error\":{\"message\":\"",
                   sizeof("data: {\"error\":{\"message\":\"") - 1);
    p = ngx_http_kimi_json_escape(p, (u_char *) message, len);
    p = ngx_sprintf(p, "\",\"type\":\"%s\",\"param\":null,\"code\":null}}\n\n",
                    type);
    cl->buf->last = p;

    return ngx_http_kimi_sse_done(ctx, cl);
}


static ngx_int_t
ngx_http_kimi_sse_done(ngx_http_kimi_ctx_t *ctx, ngx_chain_t *cl)
{
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_http_request_t  *r;

    r = ctx->request;
    b = cl->buf;

    if ((size_t) (b->end - b->last) < sizeof("data: [DONE]\n\n") - 1) {
        return NGX_ERROR;
    }

    if (!ctx->responses) {              /* a Responses stream just ends */
        b->last = ngx_cpymem(b->last, "data: [DONE]\n\n",
                             sizeof("data: [DONE]\n\n") - 1);
    }
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    cl = ngx_http_kimi_sse_unhold(ctx, cl);

    rc = ngx_http_output_filter(r, cl);

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &cl,
                            (ngx_buf_tag_t) &ngx_http_kimi_module);

    return rc;
}


/* a held content chunk leaves before anything sent after it */
static ngx_chain_t *
ngx_http_kimi_sse_unhold(ngx_http_kimi_ctx_t *ctx, ngx_chain_t *out)
{
    ngx_chain_t  *held;

    held = ctx->last_chunk;

    if (held == NULL || held == out) {
        return out;
    }

    ctx->last_chunk = NULL;
    held->next = out;

    return held;
}


/*
 * Puts finish_reason and stop_reason on the held last content chunk (its
 * tail reads "finish_reason":null}]}) unless logprob entries of held-back
 * tokens still need a chunk of their own.  NGX_DECLINED: nothing to patch.
 */
static ngx_int_t
ngx_http_kimi_sse_finish_held(ngx_http_kimi_ctx_t *ctx)
{
    ngx_buf_t  *b;

    static const u_char  tail[] = "\"finish_reason\":null}]}\n\n";

    if (ctx->last_chunk == NULL || ctx->logprobs.len || ctx->lp[0].len
        || (ctx->out_ids && ctx->out_ids->nelts > ctx->ids_sent))
    {
        /* (entries or ids of tokens after that chunk need a chunk) */
        return NGX_DECLINED;
    }

    b = ctx->last_chunk->buf;

    if ((size_t) (b->last - b->pos) < sizeof(tail) - 1
        || ngx_memcmp(b->last - (sizeof(tail) - 1), tail, sizeof(tail) - 1)
           != 0
        || (size_t) (b->end - b->last) < ngx_http_kimi_sse_finish_len(ctx))
    {
        return NGX_DECLINED;
    }

    b->last = ngx_http_kimi_sse_finish_tail(ctx,
                                            b->last - (sizeof(tail) - 1));

    return NGX_OK;
}


/* the most bytes ngx_http_kimi_sse_finish_tail() writes, known before the
 * finish_reason is (the longest name is "tool_calls") */
static size_t
ngx_http_kimi_sse_finish_len(ngx_http_kimi_ctx_t *ctx)
{
    return sizeof("\"finish_reason\":\"tool_calls\","
                  "\"stop_reason\":\"\"}]}\n\n") - 1
           + NGX_INT32_LEN
           + ngx_http_kimi_json_escape_len(ctx->stop_reason.data,
                                           ctx->stop_reason.len);
}


/*
 * A finish chunk's end, as vLLM's: "finish_reason", then "stop_reason":
 * the stop string matched, the stop token id the choice ended on, or null
 * (the tokenizer's eos, a length cut), as the answer not streamed has it
 * (ngx_http_kimi_choice_json()).
 */
static u_char *
ngx_http_kimi_sse_finish_tail(ngx_http_kimi_ctx_t *ctx, u_char *p)
{
    p = ngx_sprintf(p, "\"finish_reason\":\"%V\",\"stop_reason\":",
                    &ctx->usage.finish_reason);

    if (ctx->stop_reason.len) {
        *p++ = '"';
        p = ngx_http_kimi_json_escape(p, ctx->stop_reason.data,
                                      ctx->stop_reason.len);
        *p++ = '"';

    } else if (ctx->stopped_on_id) {
        p = ngx_sprintf(p, "%D", ctx->stop_token_id);

    } else {
        p = ngx_cpymem(p, "null", sizeof("null") - 1);
    }

    return ngx_cpymem(p, "}]}\n\n", sizeof("}]}\n\n") - 1);
}


/* a buffer with room for size bytes, from the free chain when one fits */
static ngx_chain_t *
ngx_http_kimi_sse_buf(ngx_http_kimi_ctx_t *ctx, size_t size)
{
    /* room for the [DONE] a finishing event may append, for the usage
     * every chunk carries with continuous_usage_stats and for the ids of
     * return_token_ids; a new buffer is never smaller than the typical
     * event, so one on the free chain is not either */
    size += sizeof("data: [DONE]\n\n") + NGX_HTTP_KIMI_USAGE_LEN
            + ngx_http_kimi_sse_ids_room(ctx);

    return ngx_http_kimi_sse_get_buf(ctx->request->pool, &ctx->free,
                                     ngx_max(size, NGX_HTTP_KIMI_SSE_BUF));
}


/*
 * An empty flushed buffer of the module, of size bytes at least: from
 * *free when one is that large, else with new memory.  A stream's buffers
 * cycle through its free and busy chains (ngx_chain_update_chains()).
 */
ngx_chain_t *
ngx_http_kimi_sse_get_buf(ngx_pool_t *pool, ngx_chain_t **free, size_t size)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    cl = ngx_chain_get_free_buf(pool, free);
    if (cl == NULL) {
        return NULL;
    }

    b = cl->buf;

    if (b->start == NULL || (size_t) (b->end - b->start) < size) {
        b->start = ngx_palloc(pool, size);
        if (b->start == NULL) {
            return NULL;
        }

        b->end = b->start + size;
    }

    b->pos = b->start;
    b->last = b->start;
    b->temporary = 1;
    b->flush = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_kimi_module;

    return cl;
}


static ngx_int_t
ngx_http_kimi_sse_send(ngx_http_kimi_ctx_t *ctx, ngx_chain_t *out)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = ctx->request;

    out = ngx_http_kimi_sse_unhold(ctx, out);

    rc = ngx_http_output_filter(r, out);

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &out,
                            (ngx_buf_tag_t) &ngx_http_kimi_module);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ctx->output_busy = (ctx->busy != NULL);

    if (!ctx->output_busy) {
        return NGX_OK;
    }

    /* the client is slower than the engine: wait for it to drain, and
     * give up on it after send_timeout (upstream does the same) */
    rc = ngx_http_kimi_sse_wait(r);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_AGAIN) {
        /* the engine is paused by us, not late: send_timeout rules now */
        if (ctx->timer.timer_set) {
            ngx_del_timer(&ctx->timer);
        }

    } else if (r->connection->write->timer_set) {
        ngx_del_timer(r->connection->write);
    }

    return NGX_OK;
}


/*
 * Output is left in the busy chain: r's write event is armed, with
 * send_timeout while the socket is not writable (NGX_AGAIN then).
 */
ngx_int_t
ngx_http_kimi_sse_wait(ngx_http_request_t *r)
{
    ngx_event_t               *wev;
    ngx_http_core_loc_conf_t  *clcf;

    wev = r->connection->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        return NGX_ERROR;
    }

    if (wev->active && !wev->ready) {
        ngx_add_timer(wev, clcf->send_timeout);
        return NGX_AGAIN;
    }

    return NGX_OK;
}


void
ngx_http_kimi_write_handler(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_uint_t            i, busy;
    ngx_chain_t          *none;
    ngx_event_t          *wev;
    ngx_connection_t     *c;
    ngx_http_kimi_ctx_t  *ctx, *c2;

    c = r->connection;
    wev = c->write;
    ctx = ngx_http_get_module_ctx(r, ngx_http_kimi_module);

    if (ctx == NULL) {
        return;
    }

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out reading the stream");
        c->timedout = 1;
        ngx_str_set(&ctx->usage.finish_reason, "abort");
        ngx_http_kimi_finalize(ctx, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (!ctx->headers_sent || ctx->finalized) {
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    /* every choice writes its own buffers to the one connection */
    busy = 0;
    for (i = 0; i < ctx->n_choices; i++) {
        c2 = ctx->choices ? ctx->choices[i] : ctx;

        none = NULL;
        ngx_chain_update_chains(r->pool, &c2->free, &c2->busy, &none,
                                (ngx_buf_tag_t) &ngx_http_kimi_module);

        c2->output_busy = (c2->busy != NULL);
        busy |= c2->output_busy;
    }

    if (rc == NGX_ERROR) {
        ngx_http_kimi_finalize(ctx, NGX_ERROR);
        return;
    }

    if (busy) {
        if (ngx_http_kimi_sse_wait(r) == NGX_ERROR) {
            ngx_http_kimi_finalize(ctx, NGX_ERROR);
        }

        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    /* drained: the engine's clock runs again; take the waiting tokens */
    if (ctx->choices == NULL) {
        ngx_http_kimi_touch(ctx);
        ngx_http_kimi_engine_resume(ctx);
        return;
    }

    /* several choices: one of them may end the request, which must
     * outlive the loop (our reference, dropped by NGX_DONE) */
    r->main->count++;

    for (i = 0; i < ctx->n_choices && !ctx->finalized; i++) {
        c2 = ctx->choices[i];

        ngx_http_kimi_touch(c2);
        ngx_http_kimi_engine_resume(c2);
    }

    ngx_http_finalize_request(r, NGX_DONE);
}
