
/*
 * Background responses: /v1/responses with "background": true.
 *
 * Owns:   the worker's background responses, each run by a request of its
 *         own that no client holds (a connection without a socket, as the
 *         fake requests of nginx's timer-driven modules have), through the
 *         same path as any chat request (text, engine slot, output, the
 *         Response object); the client's POST answered at once with the
 *         "queued" Response; each state written into the response store
 *         (queued, in_progress, then completed, incomplete or failed with
 *         an error object; "cancelled" is written by the cancel request);
 *         stopping one that was cancelled or deleted; holding an exiting
 *         worker until they end (or worker_shutdown_timeout cuts them);
 *         marking those still running failed when the worker exits.
 * Never:  writes to its request's connection (ngx_http_kimi_send_json()
 *         hands such answers here), runs more than kimi_responses_background
 *         at once in a worker, or rewrites an entry that no longer says
 *         this worker runs it (a cancel from any worker wins).
 * Holds:  a record and its connection outlive the request: at the end the
 *         request's pool is destroyed, the connection is marked destroyed
 *         and the record goes to the free list, so the callers that read
 *         c->destroyed after finalizing (ngx_http_run_posted_requests())
 *         read valid memory.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"

#if (NGX_HTTP_KIMI_OPS)
#include "ngx_http_kimi_ops.h"
#endif


/* longest id: "resp_" and 24 hex digits, with room */
#define NGX_HTTP_KIMI_BG_ID_LEN  64

/* while background responses run, a worker looks this often whether it
 * is exiting (nginx has no hook for that): worker_shutdown_timeout cuts
 * them at most this much later than it cuts connections */
#define NGX_HTTP_KIMI_BG_WATCH_MS  100


struct ngx_http_kimi_bg_s {
    ngx_connection_t             conn;             /* fd -1, never in epoll */
    ngx_log_t                    log;              /* conn's */
    ngx_http_log_ctx_t           log_ctx;          /* log.data, as nginx's
                                                      requests have it */
    ngx_queue_t                  queue;            /* running or free */
    ngx_http_kimi_ctx_t         *ctx;
    ngx_str_t                    id;
    u_char                       id_buf[NGX_HTTP_KIMI_BG_ID_LEN];
    u_char                      *frame;            /* a stream's event, made
                                                      here (its pool) */
    size_t                       frame_cap;
    unsigned                     running:1;        /* counted, linked */
};


/*
 * Per-process state: the background responses this worker runs and the
 * records it keeps for the next ones (from the cycle's pool; nothing here
 * is shared between workers).
 */
static struct {
    ngx_queue_t                  running;
    ngx_queue_t                  free;
    ngx_uint_t                   n_running;
    ngx_event_t                  watch;            /* while any runs: is the
                                                      worker exiting? */
    ngx_event_t                  cut;              /* worker_shutdown_timeout
                                                      of an exiting worker */
    unsigned                     ready:1;
} ngx_http_kimi_background;


static ngx_http_kimi_bg_t *ngx_http_kimi_background_get(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_kimi_background_open(ngx_http_kimi_ctx_t *ctx,
    json_t *resp);
static void ngx_http_kimi_background_watch(void);
static void ngx_http_kimi_background_watch_handler(ngx_event_t *ev);
static void ngx_http_kimi_background_cut_handler(ngx_event_t *ev);
static void ngx_http_kimi_background_stop_all(const char *why,
    const char *message, size_t len, ngx_uint_t abort);
static ngx_int_t ngx_http_kimi_background_ops(ngx_http_request_t *r,
    ngx_http_request_t *br);
static void ngx_http_kimi_background_close(ngx_http_kimi_bg_t *bg);
static void ngx_http_kimi_background_fail(ngx_http_kimi_ctx_t *ctx,
    const char *code, const char *message, size_t len);
static u_char *ngx_http_kimi_background_log(ngx_log_t *log, u_char *buf,
    size_t len);


/*
 * ctx: the client's request, validated (ngx_http_kimi_responses_request()
 * set ctx->background), its id made.  Starts the background request, stores
 * the queued Response and answers with it; the rest goes on without the
 * client.  Returns what sending returned.
 */
ngx_int_t
ngx_http_kimi_background_start(ngx_http_kimi_ctx_t *ctx, ngx_str_t *body)
{
    u_char                *p;
    json_t                *resp, *req;
    ngx_int_t              rc;
    ngx_str_t              error, param, owner;
    ngx_http_request_t    *r, *br;
    ngx_http_kimi_bg_t    *bg;
    ngx_http_kimi_ctx_t   *bctx;

    static const char  busy[] = "Too many background responses are running; "
                                "retry later";
    static const char  full[] = "The response store has no room for a "
                                "background response; retry later";

    r = ctx->request;

    if (ngx_http_kimi_background.n_running >= ctx->conf->responses_background)
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "kimi background responses limit %ui reached",
                      ctx->conf->responses_background);

        return ngx_http_kimi_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                        "rate_limit_error", busy,
                                        sizeof(busy) - 1, "background",
                                        NULL);
    }

    if (ctx->id.len > NGX_HTTP_KIMI_BG_ID_LEN) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    bg = ngx_http_kimi_background_get(r);
    if (bg == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    bg->id.data = bg->id_buf;
    bg->id.len = ngx_cpymem(bg->id_buf, ctx->id.data, ctx->id.len)
                 - bg->id_buf;

    br = bg->conn.data;

    bctx = ngx_http_kimi_ctx_create(br, NGX_HTTP_KIMI_ROUTE_RESPONSES);
    if (bctx == NULL) {
        goto failed;
    }

    if (ngx_http_kimi_background_ops(r, br) != NGX_OK) {
        goto failed;
    }

    bg->ctx = bctx;
    bctx->detached = 1;
    bctx->bg = bg;
    bctx->id = bg->id;
    bctx->pinned_rank = ctx->pinned_rank;
    bctx->created = ctx->created;

    /* the client's key owns it, as it owns a response made in the
     * foreground; the served model name may live in the engine's segment */
    ngx_http_kimi_responses_owner(r, &owner);

    p = ngx_pnalloc(br->pool, owner.len + ctx->usage.model.len + body->len
                              + 1);
    if (p == NULL) {
        goto failed;
    }

    bctx->owner.data = p;
    bctx->owner.len = owner.len;
    p = ngx_cpymem(p, owner.data, owner.len);

    bctx->usage.model.data = p;
    bctx->usage.model.len = ctx->usage.model.len;
    p = ngx_cpymem(p, ctx->usage.model.data, ctx->usage.model.len);

    /* its own parse of the body: everything it holds is in its pool (the
     * client's request parsed the same body without an error just now) */
    ngx_memcpy(p, body->data, body->len);
    ngx_str_null(&param);
    bctx->params.body_len = body->len;

    if (ngx_http_kimi_parse_request(bctx, p, body->len, &error, &param)
        != NGX_OK)
    {
        ngx_http_kimi_background_close(bg);

        return ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                        "invalid_request_error",
                                        (char *) error.data, error.len,
                                        param.len ? (char *) param.data
                                                  : NULL,
                                        NULL);
    }

    bctx->usage.stream = 0;

    resp = ngx_http_kimi_responses_object(bctx, NULL, 0);
    if (resp == NULL) {
        goto failed;
    }

    json_object_set_new(resp, "status", json_string("queued"));

    req = json_object_get(bctx->params.root, "__responses");

    rc = ngx_http_kimi_responses_put(bctx, resp,
                                     json_object_get(req, "__context"),
                                     NGX_HTTP_KIMI_PUT_RUNNING);
    if (rc != NGX_OK) {
        json_decref(resp);
        ngx_http_kimi_background_close(bg);

        return ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "service_unavailable", full,
                                        sizeof(full) - 1, NULL, NULL);
    }

    bg->running = 1;
    ngx_http_kimi_background.n_running++;
    ngx_queue_insert_tail(&ngx_http_kimi_background.running, &bg->queue);
    ngx_http_kimi_background_watch();

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "kimi background response %V queued", &bg->id);

    if (bctx->params.stream) {
        /* its events go to a log in the store, which this client (and
         * any that re-attaches) follows; the first says it is queued */
        rc = ngx_http_kimi_background_open(bctx, resp);
        json_decref(resp);

        if (rc != NGX_OK) {
            ngx_http_kimi_background_fail(bctx, "server_error", full,
                                          sizeof(full) - 1);
            ngx_http_kimi_background_close(bg);

            return ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "service_unavailable", full,
                                            sizeof(full) - 1, NULL, NULL);
        }

        rc = ngx_http_kimi_responses_follow(r, ctx->conf->responses_zone,
                                            &bg->id, -1);

    } else {
        rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, resp);
        json_decref(resp);
    }

    /* from here it runs on its own: an error before the engine accepts it
     * is its failed state, no longer the client's answer */
    bctx->phase = NGX_HTTP_KIMI_PHASE_TEXT;
    ngx_http_kimi_engine_pending_add(bctx);

    if (ngx_http_kimi_text_prepare(bctx) == NGX_OK) {
        ngx_http_kimi_submit(bctx);
    }

    return rc;

failed:

    ngx_http_kimi_background_close(bg);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/*
 * A record (from the free list or the cycle's pool) with a fresh pool, a
 * connection without a socket and a request on it that carries r's
 * configuration.
 */
static ngx_http_kimi_bg_t *
ngx_http_kimi_background_get(ngx_http_request_t *r)
{
    ngx_pool_t          *pool;
    ngx_queue_t         *q;
    ngx_connection_t    *c;
    ngx_http_request_t  *br;
    ngx_http_kimi_bg_t  *bg;

    if (!ngx_http_kimi_background.ready) {
        ngx_queue_init(&ngx_http_kimi_background.running);
        ngx_queue_init(&ngx_http_kimi_background.free);
        ngx_http_kimi_background.ready = 1;
    }

    pool = ngx_create_pool(NGX_DEFAULT_POOL_SIZE, ngx_cycle->log);
    if (pool == NULL) {
        return NULL;
    }

    if (!ngx_queue_empty(&ngx_http_kimi_background.free)) {
        q = ngx_queue_head(&ngx_http_kimi_background.free);
        ngx_queue_remove(q);
        bg = ngx_queue_data(q, ngx_http_kimi_bg_t, queue);
        ngx_memzero(bg, sizeof(ngx_http_kimi_bg_t));

    } else {
        bg = ngx_pcalloc(ngx_cycle->pool, sizeof(ngx_http_kimi_bg_t));
        if (bg == NULL) {
            ngx_destroy_pool(pool);
            return NULL;
        }
    }

    ngx_queue_init(&bg->queue);

    br = ngx_pcalloc(pool, sizeof(ngx_http_request_t));
    if (br == NULL) {
        goto failed;
    }

    br->ctx = ngx_pcalloc(pool, sizeof(void *) * ngx_http_max_module);
    if (br->ctx == NULL) {
        goto failed;
    }

    if (ngx_list_init(&br->headers_in.headers, pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK
        || ngx_list_init(&br->headers_out.headers, pool, 2,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        goto failed;
    }

    c = &bg->conn;
    c->fd = (ngx_socket_t) -1;
    c->pool = pool;
    c->data = br;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
    c->log = &bg->log;
    c->log_error = NGX_ERROR_INFO;

    /* the location's error_log, and a line that names the response */
    bg->log = *r->connection->log;
    bg->log.connection = c->number;
    bg->log.action = NULL;
    bg->log.handler = ngx_http_kimi_background_log;
    bg->log.data = &bg->log_ctx;

    bg->log_ctx.connection = c;
    bg->log_ctx.request = br;
    bg->log_ctx.current_request = br;

    br->signature = NGX_HTTP_MODULE;
    br->connection = c;
    br->pool = pool;
    br->main = br;
    br->count = 1;
    br->method = NGX_HTTP_POST;
    br->main_conf = r->main_conf;
    br->srv_conf = r->srv_conf;
    br->loc_conf = r->loc_conf;
    br->headers_in.content_length_n = -1;
    br->headers_out.content_length_n = -1;

    return bg;

failed:

    ngx_destroy_pool(pool);
    ngx_queue_insert_tail(&ngx_http_kimi_background.free, &bg->queue);

    return NULL;
}


/*
 * The client's key goes with the work: the background request gets an ops
 * record of its own (the key, where it was checked, the arrival time), so
 * its tokens are debited from the key's budget and counted in the metrics
 * when it ends, as a foreground request's are.  The client's own request
 * never reaches the engine and is billed nothing.
 */
static ngx_int_t
ngx_http_kimi_background_ops(ngx_http_request_t *r, ngx_http_request_t *br)
{
#if (NGX_HTTP_KIMI_OPS)
    ngx_http_kimi_ops_req_t  *ops, *bops;

    ops = ngx_http_kimi_ops_req(r);
    if (ops == NULL) {
        return NGX_OK;
    }

    bops = ngx_pcalloc(br->pool, sizeof(ngx_http_kimi_ops_req_t));
    if (bops == NULL) {
        return NGX_ERROR;
    }

    bops->request = br;
    bops->engine_rank = -1;
    bops->loc_conf = ops->loc_conf;
    bops->arrival_ns = ops->arrival_ns;
    bops->key = ops->key;
    bops->budget_left = ops->budget_left;
    bops->has_budget = ops->has_budget;
    bops->checked = ops->checked;

    ngx_http_set_ctx(br, bops, ngx_http_kimi_ops_module);
#endif

    return NGX_OK;
}


/* A streamed one's event log, opened with response.created: the queued
 * Response, sequence_number 0 (the stream's own in_progress follows). */
static ngx_int_t
ngx_http_kimi_background_open(ngx_http_kimi_ctx_t *ctx, json_t *resp)
{
    char       *s;
    json_t     *data;
    ngx_int_t   rc;

    if (ngx_http_kimi_responses_log_open(ctx, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    data = json_pack("{s:O,s:s,s:i}", "response", resp, "type",
                     "response.created", "sequence_number", 0);
    s = (data != NULL) ? json_dumps(data, JSON_COMPACT) : NULL;
    json_decref(data);

    if (s == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_kimi_background_event(ctx, 0, "response.created", s,
                                        ngx_strlen(s), 0);
    free(s);

    ctx->resp_seq = 1;

    return rc;
}


/*
 * One event of a streamed background response (its JSON data, numbered
 * seq) into its log, and the followers in this worker woken; last: the
 * stream's end.  An event the log no longer takes (cancelled, deleted,
 * full) changes nothing for the response, which runs on.
 */
ngx_int_t
ngx_http_kimi_background_event(ngx_http_kimi_ctx_t *ctx, ngx_uint_t seq,
    const char *type, const char *data, size_t len, ngx_uint_t last)
{
    u_char              *p;
    size_t               size;
    ngx_http_kimi_bg_t  *bg;

    bg = ctx->bg;
    size = sizeof("event: \ndata: \n\n") + ngx_strlen(type) + len;

    if (size > bg->frame_cap) {
        size = ngx_max(size, 2 * bg->frame_cap);

        bg->frame = ngx_pnalloc(ctx->request->pool, size);
        if (bg->frame == NULL) {
            bg->frame_cap = 0;
            return NGX_ERROR;
        }

        bg->frame_cap = size;
    }

    p = ngx_sprintf(bg->frame, "event: %s\ndata: ", type);
    p = ngx_cpymem(p, data, len);
    p = ngx_cpymem(p, "\n\n", 2);

    if (ngx_http_kimi_responses_log_append(ctx, seq, bg->frame,
                                           p - bg->frame, last)
        == NGX_OK)
    {
        ngx_http_kimi_responses_follow_wake(&ctx->id);
    }

    return NGX_OK;
}


/*
 * ngx_http_kimi_send_json() on a background request: a Response (200) was
 * stored by ngx_http_kimi_responses_keep() already; an error becomes the
 * failed Response's error object.  The caller finalizes next.
 */
ngx_int_t
ngx_http_kimi_background_answer(ngx_http_kimi_ctx_t *ctx, ngx_uint_t status,
    json_t *body)
{
    json_t      *message;
    const char  *code;

    ctx->request->headers_out.status = status;

    if (status < NGX_HTTP_SPECIAL_RESPONSE) {
        return NGX_OK;
    }

    message = json_object_get(json_object_get(body, "error"), "message");

    /* OpenAI's Response error codes */
    code = (status == NGX_HTTP_TOO_MANY_REQUESTS) ? "rate_limit_exceeded"
           : (status == NGX_HTTP_BAD_REQUEST) ? "invalid_prompt"
           : "server_error";

    ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                  "kimi background response failed (%ui): %s", status,
                  json_is_string(message) ? json_string_value(message) : "");

    ngx_http_kimi_background_fail(ctx, code,
                                  json_is_string(message)
                                  ? json_string_value(message) : "",
                                  json_string_length(message));

    return NGX_OK;
}


/* The engine has it (ngx_http_kimi_submit()): "in_progress".  NGX_DECLINED:
 * cancelled or deleted meanwhile; the caller ends it. */
ngx_int_t
ngx_http_kimi_background_progress(ngx_http_kimi_ctx_t *ctx)
{
    json_t     *resp, *req;
    ngx_int_t   rc;

    resp = ngx_http_kimi_responses_object(ctx, NULL, 0);
    if (resp == NULL) {
        return NGX_OK;               /* it still runs; the end is written */
    }

    req = json_object_get(ctx->params.root, "__responses");

    rc = ngx_http_kimi_responses_put(ctx, resp,
                                     json_object_get(req, "__context"),
                                     NGX_HTTP_KIMI_PUT_UPDATE);
    json_decref(resp);

    return (rc == NGX_DECLINED) ? NGX_DECLINED : NGX_OK;
}


/* The failed Response, with OpenAI's error object; what was asked is kept
 * as the conversation, as for any stored response. */
static void
ngx_http_kimi_background_fail(ngx_http_kimi_ctx_t *ctx, const char *code,
    const char *message, size_t len)
{
    char    *s;
    size_t   i;
    json_t  *resp, *req, *output, *event;

    resp = ngx_http_kimi_responses_object(ctx, NULL, 0);
    if (resp == NULL) {
        return;
    }

    json_object_set_new(resp, "status", json_string("failed"));
    json_object_set_new(resp, "error",
                        json_pack("{s:s,s:s%}", "code", code, "message",
                                  message, len));

    /* a stream's object keeps places for the items its events opened;
     * those that never got one (a call cut short) are left out */
    output = json_object_get(resp, "output");
    for (i = json_array_size(output); i > 0; i--) {
        if (json_is_null(json_array_get(output, i - 1))) {
            json_array_remove(output, i - 1);
        }
    }

    req = json_object_get(ctx->params.root, "__responses");

    if (ngx_http_kimi_responses_put(ctx, resp,
                                    json_object_get(req, "__context"),
                                    NGX_HTTP_KIMI_PUT_FINAL)
        == NGX_OK
        && ctx->params.stream)
    {
        /* and the stream ends with it, as OpenAI's response.failed */
        event = json_pack("{s:O,s:s,s:I}", "response", resp, "type",
                          "response.failed", "sequence_number",
                          (json_int_t) ctx->resp_seq);
        s = (event != NULL) ? json_dumps(event, JSON_COMPACT) : NULL;
        json_decref(event);

        if (s != NULL) {
            (void) ngx_http_kimi_background_event(ctx, ctx->resp_seq++,
                                                  "response.failed", s,
                                                  ngx_strlen(s), 1);
            free(s);
        }
    }

    json_decref(resp);
}


/*
 * From ngx_http_kimi_finalize(): the engine slot is back already.  An end
 * that stored nothing (an internal error) is stored as failed, unless the
 * entry was cancelled or deleted; then the request goes.
 */
void
ngx_http_kimi_background_end(ngx_http_kimi_ctx_t *ctx)
{
    ngx_http_kimi_bg_t  *bg;

    static const char  msg[] = "The server could not finish the response";

    bg = ctx->bg;

    if (!ctx->stored && ctx->params.root != NULL) {
        ngx_http_kimi_background_fail(ctx, "server_error", msg,
                                      sizeof(msg) - 1);
    }

    if (ctx->params.stream) {
        /* whatever ended it, its followers end too */
        ngx_http_kimi_responses_log_close(ctx);
        ngx_http_kimi_responses_follow_wake(&ctx->id);
    }

    ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                  "kimi background response ended, %ui tokens",
                  ctx->usage.completion_tokens);

    ngx_http_kimi_background_close(bg);
}


/* Its request's cleanups (the ctx's: slot, text task, jansson), its pool;
 * the record goes back to the free list. */
static void
ngx_http_kimi_background_close(ngx_http_kimi_bg_t *bg)
{
    ngx_http_cleanup_t  *cln;
    ngx_http_request_t  *br;

    br = bg->conn.data;

    /* as ngx_http_free_request() runs them */
    cln = br->cleanup;
    br->cleanup = NULL;

    while (cln) {
        if (cln->handler) {
            cln->handler(cln->data);
        }

        cln = cln->next;
    }

    if (bg->running) {
        bg->running = 0;
        ngx_http_kimi_background.n_running--;
        ngx_queue_remove(&bg->queue);

        if (ngx_http_kimi_background.n_running == 0) {
            /* nothing left to hold an exiting worker for */
            if (ngx_http_kimi_background.watch.timer_set) {
                ngx_del_timer(&ngx_http_kimi_background.watch);
            }

            if (ngx_http_kimi_background.cut.timer_set) {
                ngx_del_timer(&ngx_http_kimi_background.cut);
            }
        }
    }

    bg->ctx = NULL;
    bg->conn.destroyed = 1;
    bg->conn.data = NULL;

    ngx_destroy_pool(br->pool);

    ngx_queue_insert_tail(&ngx_http_kimi_background.free, &bg->queue);
}


/* A cancel or a DELETE in this worker: the response with that id stops now
 * (its entry says so already). */
void
ngx_http_kimi_background_abort(ngx_str_t *id)
{
    ngx_queue_t          *q;
    ngx_http_kimi_bg_t   *bg;
    ngx_http_kimi_ctx_t  *ctx;

    if (!ngx_http_kimi_background.ready) {
        return;
    }

    for (q = ngx_queue_head(&ngx_http_kimi_background.running);
         q != ngx_queue_sentinel(&ngx_http_kimi_background.running);
         q = ngx_queue_next(q))
    {
        bg = ngx_queue_data(q, ngx_http_kimi_bg_t, queue);

        if (bg->id.len != id->len
            || ngx_strncmp(bg->id.data, id->data, id->len) != 0)
        {
            continue;
        }

        ctx = bg->ctx;

        if (ctx->finalized) {
            return;
        }

        ngx_log_error(NGX_LOG_INFO, &bg->log, 0,
                      "kimi background response cancelled%s",
                      ctx->slot ? ", cancelling its slot" : "");

        ngx_str_set(&ctx->usage.finish_reason, "abort");
        ngx_http_kimi_finalize(ctx, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }
}


/*
 * Armed while background responses run, and not cancelable: it holds an
 * exiting worker until they end, whatever phase they are in (one whose
 * input is still tokenized on the thread pool has no other timer that
 * would), so a graceful stop or reload lets them finish.  With
 * worker_shutdown_timeout set, that long after the worker began to exit
 * they are cut as its connections are (the cancelable cut timer, which
 * fires because the watch still holds the worker).  It goes with the last
 * response (ngx_http_kimi_background_close()).
 */
static void
ngx_http_kimi_background_watch(void)
{
    ngx_event_t  *ev;

    ev = &ngx_http_kimi_background.watch;

    if (ev->timer_set) {
        return;
    }

    ev->handler = ngx_http_kimi_background_watch_handler;
    ev->log = ngx_cycle->log;

    ngx_add_timer(ev, NGX_HTTP_KIMI_BG_WATCH_MS);
}


static void
ngx_http_kimi_background_watch_handler(ngx_event_t *ev)
{
    ngx_event_t      *cut;
    ngx_core_conf_t  *ccf;

    if (ngx_http_kimi_background.n_running == 0) {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_KIMI_BG_WATCH_MS);

    cut = &ngx_http_kimi_background.cut;

    if (!ngx_exiting || cut->timer_set) {
        return;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);

    if (ccf->shutdown_timeout == 0) {
        /* they finish, however long it takes */
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                  "kimi: %ui background responses still running are cut "
                  "in %M ms (worker_shutdown_timeout)",
                  ngx_http_kimi_background.n_running,
                  ccf->shutdown_timeout);

    cut->handler = ngx_http_kimi_background_cut_handler;
    cut->log = ngx_cycle->log;
    cut->cancelable = 1;

    ngx_add_timer(cut, ccf->shutdown_timeout);
}


/* worker_shutdown_timeout expired in an exiting worker: what still runs
 * is failed, saying so, and its slot given back */
static void
ngx_http_kimi_background_cut_handler(ngx_event_t *ev)
{
    static const char  msg[] = "The nginx worker running this response "
                               "shut down (worker_shutdown_timeout) before "
                               "it finished; run it again";

    ngx_http_kimi_background_stop_all("cancelled: worker_shutdown_timeout "
                                      "expired", msg, sizeof(msg) - 1, 1);
}


/*
 * The worker exits (nginx stop, or a reload whose old worker had nothing
 * else to wait for): whatever still runs is marked failed and its slot
 * given back, before the engine connection goes.
 */
void
ngx_http_kimi_background_exit_process(ngx_cycle_t *cycle)
{
    static const char  msg[] = "The server stopped before the response "
                               "finished; run it again";

    if (!ngx_http_kimi_background.ready) {
        return;
    }

    ngx_http_kimi_background_stop_all("stopped: the worker exits", msg,
                                      sizeof(msg) - 1, 0);
}


/* Every response this worker still runs ends now, failed with message in
 * its entry (unless stored already), its slot given back; why goes to its
 * log; abort: its access log says finish_reason abort. */
static void
ngx_http_kimi_background_stop_all(const char *why, const char *message,
    size_t len, ngx_uint_t abort)
{
    ngx_queue_t          *q;
    ngx_http_kimi_bg_t   *bg;
    ngx_http_kimi_ctx_t  *ctx;

    while (!ngx_queue_empty(&ngx_http_kimi_background.running)) {
        q = ngx_queue_head(&ngx_http_kimi_background.running);
        bg = ngx_queue_data(q, ngx_http_kimi_bg_t, queue);
        ctx = bg->ctx;

        ngx_log_error(NGX_LOG_NOTICE, &bg->log, 0,
                      "kimi background response %s", why);

        if (!ctx->stored && ctx->params.root != NULL) {
            ngx_http_kimi_background_fail(ctx, "server_error", message,
                                          len);
        }

        if (ctx->finalized) {
            /* cannot happen: a finalized one is closed at once */
            ngx_http_kimi_background_close(bg);
            continue;
        }

        if (abort) {
            ngx_str_set(&ctx->usage.finish_reason, "abort");
        }

        ngx_http_kimi_finalize(ctx, NGX_HTTP_SERVICE_UNAVAILABLE);
    }
}


static u_char *
ngx_http_kimi_background_log(ngx_log_t *log, u_char *buf, size_t len)
{
    ngx_http_kimi_bg_t  *bg;

    bg = (ngx_http_kimi_bg_t *) ((u_char *) log
                                 - offsetof(ngx_http_kimi_bg_t, log));

    return ngx_snprintf(buf, len, ", background response: %V", &bg->id);
}
