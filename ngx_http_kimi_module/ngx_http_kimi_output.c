
/*
 * From generated token ids to what the client sees.
 *
 * Owns:   the per-request text pipeline: incremental detokenizer -> stop
 *         strings (with hold-back of a partial match) -> kimi_k2 tool-call
 *         parser -> sink (an SSE event, or the non-streaming body being
 *         assembled in r->pool).
 * Never:  emits a byte that could still turn out to be part of a stop
 *         string, or a tool-call marker; never touches the engine slot.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


static ngx_int_t ngx_http_kimi_output_text(ngx_http_kimi_ctx_t *ctx,
    const u_char *p, size_t len);
static ngx_int_t ngx_http_kimi_output_visible(ngx_http_kimi_ctx_t *ctx,
    const u_char *p, size_t len);
static ngx_int_t ngx_http_kimi_output_content(ngx_http_kimi_ctx_t *ctx,
    const u_char *p, size_t len);
static void ngx_http_kimi_output_tool_event(void *data,
    const kimi_tool_ev_t *ev);
static ngx_int_t ngx_http_kimi_output_logprob(ngx_http_kimi_ctx_t *ctx,
    const kimi_shm_token_t *tok);
static ngx_int_t ngx_http_kimi_output_logprob_legacy(
    ngx_http_kimi_ctx_t *ctx, const kimi_tokenizer_t *tk, int32_t id,
    const kimi_shm_token_t *tok, uint32_t n_top);
static ngx_int_t ngx_http_kimi_output_prompt_start(ngx_http_kimi_ctx_t *ctx);
static void ngx_http_kimi_json_cleanup(void *data);
static u_char *ngx_http_kimi_logprob_value(u_char *p, float logprob);
static u_char *ngx_http_kimi_logprob_entry(u_char *p,
    const kimi_tokenizer_t *tk, int32_t id, float logprob, ngx_uint_t as_id);
static const char *ngx_http_kimi_token_name(const kimi_tokenizer_t *tk,
    int32_t id, ngx_uint_t as_id, u_char *buf, size_t *len);
static ngx_int_t ngx_http_kimi_append(ngx_pool_t *pool, ngx_str_t *s,
    size_t *cap, const u_char *p, size_t len);


ngx_int_t
ngx_http_kimi_output_start(ngx_http_kimi_ctx_t *ctx)
{
    ngx_int_t                rc;
    kimi_tool_format_e       format;
    const kimi_tokenizer_t  *tok;

    tok = ngx_http_kimi_text_tokenizer(ctx->text);
    format = ngx_http_kimi_text_tool_format(ctx->text);

    ctx->thinking = ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT
                    && ctx->conf->reasoning_parser != 0;

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT && ctx->params.tools
        && ctx->params.tool_choice != NGX_HTTP_KIMI_TOOL_CHOICE_NONE)
    {
        ctx->want_tools = 1;

        ctx->toolparse = kimi_toolparse_new_format(format,
                                            ngx_http_kimi_output_tool_event,
                                            ctx);
        if (ctx->toolparse == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (!ctx->params.stream || ctx->responses) {
            ctx->calls = ngx_pcalloc(ctx->request->pool,
                                     NGX_HTTP_KIMI_MAX_TOOL_CALLS
                                     * sizeof(ngx_http_kimi_tool_call_t));
            if (ctx->calls == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }
    }

    /* DeepSeek's markers may be special tokens (Kimi's are not): with
     * tools they are decoded, so the parser sees them and they never
     * reach the content */
    ctx->detok = kimi_detok_new(tok, ctx->params.skip_special
                                     && !(ctx->want_tools
                                          && format != KIMI_TOOL_FORMAT_KIMI_K2));
    if (ctx->detok == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->params.stream) {
        rc = ngx_http_kimi_sse_start(ctx);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    if (ctx->params.sampling.prompt_logprobs
        && ngx_http_kimi_output_prompt_start(ctx) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->params.echo && ctx->params.stream && ctx->params.echo_lp
        && ctx->prompt_lp_left > 0)
    {
        /* the prompt's chunk carries its logprobs: sent once they came */
        ctx->echo_pending = 1;
        return NGX_OK;
    }

    return ctx->params.echo ? ngx_http_kimi_output_echo(ctx) : NGX_OK;
}


/* Prompt logprobs: the engine owes one entry per prompt token after the
 * first; the lists open with that first token, which nothing scores. */
static ngx_int_t
ngx_http_kimi_output_prompt_start(ngx_http_kimi_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    ctx->prompt_lp_left = ctx->n_prompt ? ctx->n_prompt - 1 : 0;

    if (ctx->params.prompt_lp) {
        ctx->prompt_lp = json_array();
        cln = ngx_pool_cleanup_add(ctx->request->pool, 0);

        if (ctx->prompt_lp == NULL || cln == NULL) {
            json_decref(ctx->prompt_lp);
            ctx->prompt_lp = NULL;
            return NGX_ERROR;
        }

        cln->handler = ngx_http_kimi_json_cleanup;
        cln->data = ctx->prompt_lp;

        if (json_array_append_new(ctx->prompt_lp, json_null()) != 0) {
            return NGX_ERROR;
        }
    }

    if (ctx->params.echo_lp && ctx->n_prompt) {
        return ngx_http_kimi_output_logprob_legacy(ctx,
                   ngx_http_kimi_text_tokenizer(ctx->text), ctx->prompt[0],
                   NULL, 0);
    }

    return NGX_OK;
}


static void
ngx_http_kimi_json_cleanup(void *data)
{
    json_decref(data);
}


/*
 * One prompt entry (prompt token k + 1 given the tokens before it): into
 * the echo's legacy lists, and as vLLM's {"ID": {"logprob", "rank",
 * "decoded_token"}, ...} with the alternatives (their rank: their place).
 */
ngx_int_t
ngx_http_kimi_output_prompt_entry(ngx_http_kimi_ctx_t *ctx,
    const kimi_shm_token_t *tok)
{
    u_char                  *p, *start, name[32];
    size_t                   len;
    uint32_t                 i, n_top;
    json_t                  *d;
    const char              *b;
    const kimi_tokenizer_t  *tk;

    tk = ngx_http_kimi_text_tokenizer(ctx->text);

    if (ctx->prompt_lp_left) {
        ctx->prompt_lp_left--;
    }

    if (ctx->params.echo_lp
        && ngx_http_kimi_output_logprob_legacy(ctx, tk, tok->token, tok,
               ngx_min(tok->n_top, ctx->params.sampling.top_logprobs))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!ctx->params.prompt_lp || ctx->prompt_lp == NULL) {
        return NGX_OK;
    }

    n_top = ngx_min(tok->n_top, ctx->params.prompt_lp_top);

    /* a token is at most 512 bytes, escaped x6 */
    start = ngx_pnalloc(ctx->request->pool, (n_top + 1) * 3400 + 16);
    if (start == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(start, "{", 1);

    for (i = 0; i <= n_top; i++) {
        int32_t   id = i == 0 ? tok->token : tok->top_ids[i - 1];
        float     lp = i == 0 ? tok->logprob : tok->top_logprobs[i - 1];
        uint32_t  rank = i == 0 ? tok->rank : i;

        if (i > 0 && id == tok->token) {
            continue;                     /* already there, with its rank */
        }

        b = ngx_http_kimi_token_name(tk, id, 0, name, &len);

        p = ngx_sprintf(p, "%s\"%D\":{\"logprob\":", i ? "," : "", id);
        p = ngx_http_kimi_logprob_value(p, lp);
        p = ngx_sprintf(p, ",\"rank\":%uD,\"decoded_token\":\"", rank);
        p = ngx_http_kimi_json_escape_utf8(p, (const u_char *) b, len);
        p = ngx_cpymem(p, "\"}", 2);
    }

    *p++ = '}';

    d = json_loadb((char *) start, p - start, 0, NULL);
    if (d == NULL || json_array_append_new(ctx->prompt_lp, d) != 0) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* echo: the choice's prompt, decoded from its ids as the model saw them
 * (special tokens kept), goes first: the first chunk of a stream, the
 * start of the text otherwise; a chat's echo is the last message's text
 * (ngx_http_kimi_chat_echo).  Stop strings look only at what follows. */
ngx_int_t
ngx_http_kimi_output_echo(ngx_http_kimi_ctx_t *ctx)
{
    int            rc;
    size_t         i, n, cap;
    ngx_str_t      text;
    const char    *out;
    kimi_detok_t  *d;

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT) {
        return ngx_http_kimi_output_content(ctx, ctx->params.echo_text.data,
                                            ctx->params.echo_text.len);
    }

    d = kimi_detok_new(ngx_http_kimi_text_tokenizer(ctx->text), 0);
    if (d == NULL) {
        return NGX_ERROR;
    }

    ngx_str_null(&text);
    cap = 0;
    rc = 0;

    for (i = 0; i <= ctx->n_prompt && rc == 0; i++) {
        n = 0;
        rc = (i < ctx->n_prompt) ? kimi_detok_push(d, ctx->prompt[i], &out, &n)
                                 : kimi_detok_flush(d, &out, &n);

        if (rc == 0 && n
            && ngx_http_kimi_append(ctx->request->pool, &text, &cap,
                                    (const u_char *) out, n) != NGX_OK)
        {
            rc = -1;
        }
    }

    kimi_detok_free(d);

    if (rc != 0) {
        return NGX_ERROR;
    }

    return ngx_http_kimi_output_content(ctx, text.data, text.len);
}


/* token lies in the engine's vocab_size but past the tokenizer's ids */
static ngx_uint_t
ngx_http_kimi_output_model_only(ngx_http_kimi_ctx_t *ctx, int32_t token)
{
    kimi_shm_header_t  *hdr;

    if (token < 0 || ctx->attach == NULL
        || (uint32_t) token < kimi_tokenizer_n_vocab(
                                  ngx_http_kimi_text_tokenizer(ctx->text)))
    {
        return 0;
    }

    hdr = ngx_http_kimi_engine_header(ctx->attach);

    return hdr != NULL && (uint32_t) token < hdr->vocab_size;
}


ngx_int_t
ngx_http_kimi_output_token(ngx_http_kimi_ctx_t *ctx,
    const kimi_shm_token_t *tok)
{
    size_t       len;
    int32_t     *id;
    uint32_t     i;
    const char  *out;

    if (ctx->stopped) {
        return NGX_OK;
    }

    if (ctx->params.stream && ngx_http_kimi_sse_role(ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->n_out++;

    if (ctx->params.token_ids) {      /* every id, the stop token's too */
        if (ctx->out_ids == NULL) {
            ctx->out_ids = ngx_array_create(ctx->request->pool, 64,
                                            sizeof(int32_t));
            if (ctx->out_ids == NULL) {
                return NGX_ERROR;
            }
        }

        id = ngx_array_push(ctx->out_ids);
        if (id == NULL) {
            return NGX_ERROR;
        }

        *id = tok->token;
    }

    if (ctx->params.sampling.logprobs
        && ngx_http_kimi_output_logprob(ctx, tok) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* a stop token (eos, <|im_end|>, stop_token_ids) ends the output and
     * adds no text, whatever skip_special_tokens says: vLLM's detokenizer
     * drops the token a request stopped on (stop ids are masked before
     * min_tokens, so one that comes is the last) */
    for (i = 0; i < ctx->params.sampling.n_stop_ids; i++) {
        if (ctx->params.sampling.stop_ids[i] == tok->token) {
            /* vLLM's stop_reason names the stop id, generation_config's
             * <|im_end|> too, but not the tokenizer's own eos: vLLM stops
             * on that one apart from its stop_token_ids */
            if (ctx->text == NULL
                || tok->token != kimi_tokenizer_eos(
                                    ngx_http_kimi_text_tokenizer(ctx->text)))
            {
                ctx->stop_token_id = tok->token;
                ctx->stopped_on_id = 1;
            }

            return NGX_OK;
        }
    }

    if (ngx_http_kimi_output_model_only(ctx, tok->token)) {
        /* an id of the model's vocabulary past the tokenizer's (a padded
         * embedding): no text, as Hugging Face's decode gives none */
        return NGX_OK;
    }

    if (kimi_detok_push(ctx->detok, tok->token, &out, &len) != 0) {
        ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                      "kimi engine sent token id %D, not in the vocabulary",
                      tok->token);

        if (!ctx->main->headers_sent) {
            return NGX_HTTP_BAD_GATEWAY;
        }

        /* the stream ends here; the caller finalizes with final_rc */
        ctx->failed = 1;
        ctx->final_rc = ngx_http_kimi_sse_error(ctx, "The engine sent an "
                                                "invalid token", 32,
                                                "server_error");
        return NGX_OK;
    }

    if (len == 0) {
        return NGX_OK;
    }

    return ngx_http_kimi_output_text(ctx, (const u_char *) out, len);
}


/*
 * Stop strings.  held is text that may still be the start of a stop
 * string; everything before the longest such suffix goes out now.
 */
static ngx_int_t
ngx_http_kimi_output_text(ngx_http_kimi_ctx_t *ctx, const u_char *p,
    size_t len)
{
    size_t                   from, pos, best, keep, l, old;
    ngx_str_t               *st, *hit;
    ngx_uint_t               i;
    ngx_http_kimi_params_t  *pr;

    pr = &ctx->params;

    if (pr->n_stop == 0) {
        return ngx_http_kimi_output_visible(ctx, p, len);
    }

    old = ctx->held.len;

    if (ngx_http_kimi_append(ctx->request->pool, &ctx->held, &ctx->held_cap,
                             p, len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* a match not found before must end inside the new text */
    from = (old + 1 > pr->max_stop_len) ? old + 1 - pr->max_stop_len : 0;
    best = ctx->held.len;
    hit = NULL;

    for (i = 0; i < pr->n_stop; i++) {
        st = &pr->stop[i];

        for (pos = from; pos + st->len <= ctx->held.len && pos < best; pos++) {
            if (ngx_memcmp(ctx->held.data + pos, st->data, st->len) == 0) {
                best = pos;
                hit = st;
                break;
            }
        }
    }

    if (hit != NULL) {
        ctx->stopped = 1;
        ctx->stop_reason = *hit;
        ctx->held.len = 0;

        return ngx_http_kimi_output_visible(ctx, ctx->held.data,
                                            best + (pr->include_stop_str
                                                    ? hit->len : 0));
    }

    keep = 0;

    for (i = 0; i < pr->n_stop; i++) {
        st = &pr->stop[i];

        for (l = ngx_min(st->len - 1, ctx->held.len); l > keep; l--) {
            if (ngx_memcmp(ctx->held.data + ctx->held.len - l, st->data, l)
                == 0)
            {
                keep = l;
                break;
            }
        }
    }

    l = ctx->held.len - keep;

    if (l == 0) {
        return NGX_OK;
    }

    if (ngx_http_kimi_output_visible(ctx, ctx->held.data, l) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memmove(ctx->held.data, ctx->held.data + l, keep);
    ctx->held.len = keep;

    return NGX_OK;
}


/* Reasoning text: a delta of its own when streaming a chat, else kept
 * for the answer's reasoning_content (a Responses stream both keeps it and
 * sends its reasoning item's events). */
static ngx_int_t
ngx_http_kimi_output_reasoning(ngx_http_kimi_ctx_t *ctx, const u_char *p,
    size_t len)
{
    if (len == 0) {
        return NGX_OK;
    }

    if (ctx->params.stream && !ctx->responses) {
        return ngx_http_kimi_sse_reasoning(ctx, p, len);
    }

    if (ngx_http_kimi_append(ctx->request->pool, &ctx->reasoning,
                             &ctx->reasoning_cap, p, len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ctx->params.stream ? ngx_http_kimi_sse_resp_reasoning(ctx, p, len)
                              : NGX_OK;
}


/*
 * kimi_reasoning_parser (vLLM's deepseek_r1 / kimi_k2): the text up to
 * "</think>" is reasoning, a "<think>" opening it dropped, the rest is the
 * answer; an answer that never closes the tag is all reasoning.  A tag
 * split over tokens waits in think_hold.  Returns the bytes of p that are
 * past the tag (the answer's), or len when all was reasoning.
 */
static ngx_int_t
ngx_http_kimi_output_think(ngx_http_kimi_ctx_t *ctx, const u_char **p,
    size_t *len)
{
    u_char        buf[8 + 512];
    size_t        n, take, i, keep, l;
    const u_char  *s;

    static const u_char  open[] = "<think>", close[] = "</think>";

    while (*len > 0 && ctx->thinking) {
        /* held bytes + as much new text as fits */
        take = ngx_min(*len, sizeof(buf) - ctx->n_think_hold);
        ngx_memcpy(buf, ctx->think_hold, ctx->n_think_hold);
        ngx_memcpy(buf + ctx->n_think_hold, *p, take);
        n = ctx->n_think_hold + take;
        ctx->n_think_hold = 0;
        *p += take;
        *len -= take;
        s = buf;

        if (!ctx->think_seen) {
            /* an opening tag (or what may become one) at the very start */
            l = ngx_min(n, sizeof(open) - 1);
            if (ngx_memcmp(s, open, l) == 0) {
                if (l < sizeof(open) - 1) {
                    ngx_memcpy(ctx->think_hold, s, n);
                    ctx->n_think_hold = n;
                    continue;
                }
                s += l;
                n -= l;
            }
            ctx->think_seen = 1;
        }

        for (i = 0; i + sizeof(close) - 1 <= n; i++) {
            if (ngx_memcmp(s + i, close, sizeof(close) - 1) == 0) {
                break;
            }
        }

        if (i + sizeof(close) - 1 <= n) {
            /* the tag: before it reasoning, after it the answer */
            ctx->thinking = 0;
            if (ngx_http_kimi_output_reasoning(ctx, s, i) != NGX_OK) {
                return NGX_ERROR;
            }
            i += sizeof(close) - 1;
            /* the rest of buf goes back in front of p: hand it on */
            if (i < n) {
                return ngx_http_kimi_output_visible(ctx, s + i, n - i) == NGX_OK
                       ? NGX_DONE : NGX_ERROR;
            }
            return NGX_OK;
        }

        /* keep a suffix that may start the tag */
        for (keep = ngx_min(n, sizeof(close) - 2); keep > 0; keep--) {
            if (ngx_memcmp(s + n - keep, close, keep) == 0) {
                break;
            }
        }

        if (ngx_http_kimi_output_reasoning(ctx, s, n - keep) != NGX_OK) {
            return NGX_ERROR;
        }
        ngx_memcpy(ctx->think_hold, s + n - keep, keep);
        ctx->n_think_hold = keep;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_output_visible(ngx_http_kimi_ctx_t *ctx, const u_char *p,
    size_t len)
{
    ngx_int_t  rc;

    if (len == 0) {
        return NGX_OK;
    }

    if (ctx->thinking) {
        rc = ngx_http_kimi_output_think(ctx, &p, &len);
        if (rc == NGX_DONE) {
            /* the answer after the tag went on from inside; the rest of
             * p follows it */
            return len ? ngx_http_kimi_output_visible(ctx, p, len) : NGX_OK;
        }
        if (rc != NGX_OK || len == 0) {
            return rc;
        }
    }

    if (ctx->toolparse) {
        if (kimi_toolparse_feed(ctx->toolparse, (const char *) p, len) != 0
            || ctx->tool_error)
        {
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    return ngx_http_kimi_output_content(ctx, p, len);
}


static ngx_int_t
ngx_http_kimi_output_content(ngx_http_kimi_ctx_t *ctx, const u_char *p,
    size_t len)
{
    if (len == 0) {
        return NGX_OK;
    }

    if (ctx->params.stream && !ctx->responses) {
        return ngx_http_kimi_sse_content(ctx, p, len);
    }

    /* a Responses stream also keeps the text: its last event is the
     * whole Response */
    if (ngx_http_kimi_append(ctx->request->pool, &ctx->content,
                             &ctx->content_cap, p, len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ctx->params.stream ? ngx_http_kimi_sse_content(ctx, p, len)
                              : NGX_OK;
}


static void
ngx_http_kimi_output_tool_event(void *data, const kimi_tool_ev_t *ev)
{
    ngx_http_kimi_ctx_t *ctx = data;

    size_t                      len;
    ngx_http_kimi_tool_call_t  *tc;

    if (ctx->tool_error) {
        return;
    }

    /* parallel_tool_calls false: the answer carries the model's first call
     * only (under "required" or a named choice the engine already stops
     * after one; under "auto" the model may write more) */
    if (ctx->params.one_call && ev->index >= 1
        && (ev->type == KIMI_TOOL_EV_CALL_BEGIN
            || ev->type == KIMI_TOOL_EV_ARGS))
    {
        return;
    }

    switch (ev->type) {

    case KIMI_TOOL_EV_CONTENT:
        if (ngx_http_kimi_output_content(ctx, (const u_char *) ev->text,
                                         ev->len)
            != NGX_OK)
        {
            ctx->tool_error = 1;
        }
        return;

    case KIMI_TOOL_EV_CALL_BEGIN:
        if (ev->index >= NGX_HTTP_KIMI_MAX_TOOL_CALLS) {
            ctx->tool_error = 1;
            return;
        }

        ctx->n_calls = ngx_max(ctx->n_calls, (ngx_uint_t) ev->index + 1);

        if (ctx->params.stream && !ctx->responses) {
            if (ngx_http_kimi_sse_tool_begin(ctx, ev->index, ev->id,
                                             ev->name)
                != NGX_OK)
            {
                ctx->tool_error = 1;
            }
            return;
        }

        tc = &ctx->calls[ev->index];

        len = ngx_strlen(ev->id);
        tc->id.data = ngx_pnalloc(ctx->request->pool, len);
        if (tc->id.data == NULL) {
            ctx->tool_error = 1;
            return;
        }
        tc->id.len = len;
        ngx_memcpy(tc->id.data, ev->id, len);

        len = ngx_strlen(ev->name);
        tc->name.data = ngx_pnalloc(ctx->request->pool, len);
        if (tc->name.data == NULL) {
            ctx->tool_error = 1;
            return;
        }
        tc->name.len = len;
        ngx_memcpy(tc->name.data, ev->name, len);

        if (ctx->params.stream
            && ngx_http_kimi_sse_tool_begin(ctx, ev->index, ev->id, ev->name)
               != NGX_OK)
        {
            ctx->tool_error = 1;
        }
        return;

    case KIMI_TOOL_EV_ARGS:
        if (ev->index >= ctx->n_calls) {
            ctx->tool_error = 1;
            return;
        }

        if (ctx->params.stream && !ctx->responses) {
            if (ngx_http_kimi_sse_tool_args(ctx, ev->index,
                                            (const u_char *) ev->text, ev->len)
                != NGX_OK)
            {
                ctx->tool_error = 1;
            }
            return;
        }

        tc = &ctx->calls[ev->index];

        if (ngx_http_kimi_append(ctx->request->pool, &tc->arguments,
                                 &tc->arguments_cap,
                                 (const u_char *) ev->text, ev->len)
            != NGX_OK
            || (ctx->params.stream
                && ngx_http_kimi_sse_tool_args(ctx, ev->index,
                                               (const u_char *) ev->text,
                                               ev->len)
                   != NGX_OK))
        {
            ctx->tool_error = 1;
        }
        return;

    default:
        return;
    }
}


/* The engine finished (or a stop string did): flush, then the ending. */
ngx_int_t
ngx_http_kimi_output_finish(ngx_http_kimi_ctx_t *ctx)
{
    size_t       len;
    ngx_uint_t   last;
    const char  *out, *finish;

    if (!ctx->stopped && ctx->detok) {
        if (kimi_detok_flush(ctx->detok, &out, &len) == 0 && len) {
            if (ngx_http_kimi_output_text(ctx, (const u_char *) out, len)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    /* what was held for a stop string that never completed is text */
    if (!ctx->stopped && ctx->held.len) {
        len = ctx->held.len;
        ctx->held.len = 0;

        if (ngx_http_kimi_output_visible(ctx, ctx->held.data, len) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    /* a tag start that never completed is reasoning text */
    if (ctx->thinking && ctx->n_think_hold) {
        len = ctx->n_think_hold;
        ctx->n_think_hold = 0;

        if (ngx_http_kimi_output_reasoning(ctx, ctx->think_hold, len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ctx->toolparse) {
        if (kimi_toolparse_finish(ctx->toolparse) != 0 || ctx->tool_error) {
            return NGX_ERROR;
        }
    }

    finish = ngx_http_kimi_finish_name(ctx);
    ctx->usage.finish_reason.data = (u_char *) finish;
    ctx->usage.finish_reason.len = ngx_strlen(finish);

    /* the last choice to end ends the request */
    last = ++ctx->main->n_finished == ctx->main->n_choices;

    if (ctx->params.stream) {
        if (ngx_http_kimi_sse_role(ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_kimi_sse_finish(ctx, last);
    }

    return last ? ngx_http_kimi_send_response(ctx->main)
                : NGX_HTTP_KIMI_CHOICE_DONE;
}


/*
 * One OpenAI chat logprobs entry for a generated token, appended to the
 * pending list that the next content chunk (or the response) carries:
 * {"token","logprob","bytes","top_logprobs":[{"token","logprob","bytes"}]}
 */
static ngx_int_t
ngx_http_kimi_output_logprob(ngx_http_kimi_ctx_t *ctx,
    const kimi_shm_token_t *tok)
{
    u_char                  *p, *start;
    size_t                   size;
    uint32_t                 i, n_top;
    const kimi_tokenizer_t  *tk;

    tk = ngx_http_kimi_text_tokenizer(ctx->text);
    n_top = ngx_min(tok->n_top, ctx->params.sampling.top_logprobs);

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_COMPLETIONS) {
        return ngx_http_kimi_output_logprob_legacy(ctx, tk, tok->token, tok,
                                                   n_top);
    }

    /* a token is at most a few hundred bytes; escaped x6, bytes x4 */
    size = (n_top + 1) * 4096 + 32;

    start = ngx_pnalloc(ctx->request->pool, size);
    if (start == NULL) {
        return NGX_ERROR;
    }

    p = start;

    if (ctx->logprobs.len) {
        *p++ = ',';
    }

    p = ngx_http_kimi_logprob_entry(p, tk, tok->token, tok->logprob,
                                    ctx->params.tokens_as_ids);
    p--;                                   /* reopen the entry's '}' */
    p = ngx_cpymem(p, ",\"top_logprobs\":[", sizeof(",\"top_logprobs\":[") - 1);

    for (i = 0; i < n_top; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_http_kimi_logprob_entry(p, tk, tok->top_ids[i],
                                        tok->top_logprobs[i],
                                        ctx->params.tokens_as_ids);
    }

    p = ngx_cpymem(p, "]}", 2);

    return ngx_http_kimi_append(ctx->request->pool, &ctx->logprobs,
                                &ctx->logprobs_cap, start, p - start);
}


/*
 * /v1/completions keeps OpenAI's older shape: four parallel lists, kept
 * here as JSON text until the chunk (or response) that carries them:
 * {"tokens":[..],"token_logprobs":[..],"top_logprobs":[{tok: lp}],
 *  "text_offset":[..]} (offsets in characters of the completion text).
 */
static ngx_int_t
ngx_http_kimi_output_logprob_legacy(ngx_http_kimi_ctx_t *ctx,
    const kimi_tokenizer_t *tk, int32_t id, const kimi_shm_token_t *tok,
    uint32_t n_top)
{
    u_char       *p, *start;
    u_char        name[32];
    size_t        len, i;
    uint32_t      k;
    ngx_str_t    *lp;
    ngx_pool_t   *pool;
    const char   *b;

    pool = ctx->request->pool;
    lp = ctx->lp;

    start = ngx_pnalloc(pool, (n_top + 1) * 3200 + 64);
    if (start == NULL) {
        return NGX_ERROR;
    }

    /* tok NULL: the prompt's first token (echo), nothing scores it */
    b = ngx_http_kimi_token_name(tk, id, ctx->params.tokens_as_ids,
                                 name, &len);

    /* tokens */
    p = start;
    if (lp[0].len) {
        *p++ = ',';
    }
    *p++ = '"';
    p = ngx_http_kimi_json_escape_utf8(p, (const u_char *) b, len);
    *p++ = '"';

    if (ngx_http_kimi_append(pool, &lp[0], &ctx->lp_cap[0], start, p - start)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* token_logprobs */
    p = start;
    if (lp[1].len) {
        *p++ = ',';
    }
    p = tok ? ngx_http_kimi_logprob_value(p, tok->logprob)
            : ngx_cpymem(p, "null", 4);

    if (ngx_http_kimi_append(pool, &lp[1], &ctx->lp_cap[1], start, p - start)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* top_logprobs: {token text: logprob} */
    p = start;
    if (lp[2].len) {
        *p++ = ',';
    }

    if (tok == NULL) {
        p = ngx_cpymem(p, "null", 4);
        n_top = 0;

    } else {
        /* the chosen token first, then the n most likely: as OpenAI's
         * legacy API and vLLM, "up to logprobs + 1 elements" */
        *p++ = '{';
        *p++ = '"';
        p = ngx_http_kimi_json_escape_utf8(p, (const u_char *) b, len);
        *p++ = '"';
        *p++ = ':';
        p = ngx_http_kimi_logprob_value(p, tok->logprob);
    }

    for (k = 0; k < n_top; k++) {
        const char  *tb;
        size_t       tl;
        u_char       tname[32];

        if (tok->top_ids[k] == tok->token) {
            continue;
        }

        tb = ngx_http_kimi_token_name(tk, tok->top_ids[k],
                                      ctx->params.tokens_as_ids, tname, &tl);

        *p++ = ',';
        *p++ = '"';
        p = ngx_http_kimi_json_escape_utf8(p, (const u_char *) tb, tl);
        *p++ = '"';
        *p++ = ':';
        p = ngx_http_kimi_logprob_value(p, tok->top_logprobs[k]);
    }

    if (tok != NULL) {
        *p++ = '}';
    }

    if (ngx_http_kimi_append(pool, &lp[2], &ctx->lp_cap[2], start, p - start)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* text_offset: characters before this token */
    p = ngx_sprintf(start, lp[3].len ? ",%uz" : "%uz", ctx->lp_chars);

    for (i = 0; i < len; i++) {
        if (((u_char) b[i] & 0xc0) != 0x80) {
            ctx->lp_chars++;
        }
    }

    return ngx_http_kimi_append(pool, &lp[3], &ctx->lp_cap[3], start,
                                p - start);
}


size_t
ngx_http_kimi_logprobs_legacy_len(ngx_http_kimi_ctx_t *ctx)
{
    return ctx->lp[0].len + ctx->lp[1].len + ctx->lp[2].len + ctx->lp[3].len
           + sizeof("{\"tokens\":[],\"token_logprobs\":[],"
                    "\"top_logprobs\":[],\"text_offset\":[]}");
}


/* writes the pending lists as one object and empties them */
u_char *
ngx_http_kimi_logprobs_legacy(ngx_http_kimi_ctx_t *ctx, u_char *p)
{
    static const char  *names[] = {
        "{\"tokens\":[", "],\"token_logprobs\":[", "],\"top_logprobs\":[",
        "],\"text_offset\":["
    };
    ngx_uint_t          i;

    for (i = 0; i < 4; i++) {
        p = ngx_cpymem(p, names[i], ngx_strlen(names[i]));
        p = ngx_cpymem(p, ctx->lp[i].data, ctx->lp[i].len);
        ctx->lp[i].len = 0;
    }

    return ngx_cpymem(p, "]}", 2);
}


static u_char *
ngx_http_kimi_logprob_value(u_char *p, float logprob)
{
    /* -inf (a token the filters removed) has no JSON spelling */
    if (logprob < -9999.0f || logprob != logprob) {
        logprob = -9999.0f;
    }

    return ngx_sprintf(p, "%s%.6f", logprob < 0 ? "-" : "",
                       (double) (logprob < 0 ? -logprob : logprob));
}


/* A logprob entry's token: its bytes (at most 512), or with vLLM's
 * return_tokens_as_token_ids "token_id:ID" (in buf, 32 bytes). */
static const char *
ngx_http_kimi_token_name(const kimi_tokenizer_t *tk, int32_t id,
    ngx_uint_t as_id, u_char *buf, size_t *len)
{
    const char  *b;

    if (as_id) {
        *len = ngx_sprintf(buf, "token_id:%D", id) - buf;
        return (const char *) buf;
    }

    b = kimi_token_bytes(tk, id, len);
    if (b == NULL) {
        *len = 0;
        return "";
    }

    *len = ngx_min(*len, 512);
    return b;
}


static u_char *
ngx_http_kimi_logprob_entry(u_char *p, const kimi_tokenizer_t *tk,
    int32_t id, float logprob, ngx_uint_t as_id)
{
    u_char       name[32];
    size_t       len, i;
    const char  *b;

    /* "bytes" are those of the token as given, as vLLM does */
    b = ngx_http_kimi_token_name(tk, id, as_id, name, &len);

    p = ngx_cpymem(p, "{\"token\":\"", sizeof("{\"token\":\"") - 1);
    p = ngx_http_kimi_json_escape_utf8(p, (const u_char *) b, len);
    p = ngx_cpymem(p, "\",\"logprob\":", sizeof("\",\"logprob\":") - 1);
    p = ngx_http_kimi_logprob_value(p, logprob);
    p = ngx_cpymem(p, ",\"bytes\":[", sizeof(",\"bytes\":[") - 1);

    for (i = 0; i < len; i++) {
        p = ngx_sprintf(p, i ? ",%d" : "%d", (int) (u_char) b[i]);
    }

    return ngx_cpymem(p, "]}", 2);
}


/* grows a pool string by doubling; the old block stays with the pool */
static ngx_int_t
ngx_http_kimi_append(ngx_pool_t *pool, ngx_str_t *s, size_t *cap,
    const u_char *p, size_t len)
{
    u_char  *n;
    size_t   size;

    if (s->len + len > *cap) {
        size = ngx_max(*cap * 2, s->len + len);
        size = ngx_max(size, 256);

        n = ngx_pnalloc(pool, size);
        if (n == NULL) {
            return NGX_ERROR;
        }

        if (s->len) {
            ngx_memcpy(n, s->data, s->len);
        }

        s->data = n;
        *cap = size;
    }

    ngx_memcpy(s->data + s->len, p, len);
    s->len += len;

    return NGX_OK;
}
