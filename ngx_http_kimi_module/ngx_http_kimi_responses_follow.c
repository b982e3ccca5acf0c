
/*
 * Following a background stream: the client side of /v1/responses with
 * background and stream true, and of GET /v1/responses/{id}?stream=true
 * [&starting_after=N].
 *
 * Owns:   a client request that relays a background response's events
 *         from its log in the response store (ngx_http_kimi_responses_
 *         store.c): those after starting_after first, then the new ones
 *         as they are appended, until the log's last event; the refusals
 *         of a re-attach that cannot be served (no log, starting_after past
 *         the end or older than the oldest kept) as 400s before any byte.
 * Never:  touches the response's engine slot or its entry: a client that
 *         goes away stops only its own relay, the response runs on.
 * Holds:  a follower in the worker that runs the response is woken at
 *         each append (ngx_http_kimi_responses_follow_wake()); any other
 *         reads the shared log every NGX_HTTP_KIMI_FOLLOW_POLL_MS.  Its
 *         timer is not cancelable: a graceful shutdown waits for the
 *         stream, worker_shutdown_timeout closes it as any connection.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


/* a follower in another worker than the response's sees a new event at
 * most this late */
#define NGX_HTTP_KIMI_FOLLOW_POLL_MS   25

/* how often a follower checks that another worker running its response
 * is still alive (one that died never closes the log) */
#define NGX_HTTP_KIMI_FOLLOW_ALIVE_MS  1000

/* events are relayed in buffers of this size (larger for a larger event) */
#define NGX_HTTP_KIMI_FOLLOW_BUF       16384


typedef struct {
    ngx_http_request_t          *request;
    ngx_shm_zone_t              *zone;
    ngx_str_t                    id;
    ngx_uint_t                   next;             /* sequence_number of the
                                                      next event to send */
    ngx_event_t                  poll;             /* timer; posted on wake */
    ngx_queue_t                  queue;            /* the worker's followers */
    ngx_chain_t                 *free;
    ngx_chain_t                 *busy;
    ngx_msec_t                   alive_checked;
    unsigned                     linked:1;
    unsigned                     done:1;
} ngx_http_kimi_follow_t;


/* the worker's followers (per process, from nothing: a queue head) */
static ngx_queue_t  ngx_http_kimi_followers;
static ngx_uint_t   ngx_http_kimi_followers_ready;


static ngx_int_t ngx_http_kimi_follow_refuse(ngx_http_request_t *r,
    ngx_http_kimi_events_e rc, ngx_http_kimi_events_t *ev, ngx_str_t *id,
    ngx_int_t starting_after);
static void ngx_http_kimi_follow_handler(ngx_event_t *ev);
static void ngx_http_kimi_follow_pump(ngx_http_kimi_follow_t *f);
static ngx_int_t ngx_http_kimi_follow_send(ngx_http_kimi_follow_t *f,
    ngx_chain_t *cl, ngx_uint_t last);
static void ngx_http_kimi_follow_error(ngx_http_kimi_follow_t *f,
    const char *message, size_t len);
static void ngx_http_kimi_follow_end(ngx_http_kimi_follow_t *f,
    ngx_int_t rc);
static void ngx_http_kimi_follow_write_handler(ngx_http_request_t *r);
static void ngx_http_kimi_follow_cleanup(void *data);


/*
 * r follows the events of response id after starting_after (-1: from the
 * first).  Before any byte a refusal is r's answer (404, 400); otherwise
 * the stream's headers go out, r lives on (NGX_DONE: the caller finalizes
 * with it, our reference stays) and the events follow.
 */
ngx_int_t
ngx_http_kimi_responses_follow(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *id, ngx_int_t starting_after)
{
    ngx_int_t                rc;
    ngx_http_cleanup_t      *cln;
    ngx_http_kimi_events_t   ev;
    ngx_http_kimi_events_e   state;
    ngx_http_kimi_follow_t  *f;

    ngx_memzero(&ev, sizeof(ngx_http_kimi_events_t));
    ev.next = starting_after + 1;

    state = ngx_http_kimi_responses_events(r, zone, id, &ev);

    if (state == NGX_HTTP_KIMI_EVENTS_GONE
        || state == NGX_HTTP_KIMI_EVENTS_NONE
        || state == NGX_HTTP_KIMI_EVENTS_BROKEN
        || state == NGX_HTTP_KIMI_EVENTS_DROPPED
        || ev.next > ev.last)
    {
        return ngx_http_kimi_follow_refuse(r, state, &ev, id, starting_after);
    }

    f = ngx_pcalloc(r->pool, sizeof(ngx_http_kimi_follow_t));
    if (f == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    f->id.data = ngx_pstrdup(r->pool, id);
    if (f->id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    f->id.len = id->len;
    f->request = r;
    f->zone = zone;
    f->next = ev.next;
    f->alive_checked = ngx_current_msec;

    f->poll.handler = ngx_http_kimi_follow_handler;
    f->poll.data = f;
    f->poll.log = r->connection->log;

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_kimi_follow_cleanup;
    cln->data = f;

    rc = ngx_http_kimi_sse_headers(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (ngx_http_kimi_sse_nodelay(r) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!ngx_http_kimi_followers_ready) {
        ngx_queue_init(&ngx_http_kimi_followers);
        ngx_http_kimi_followers_ready = 1;
    }

    ngx_queue_insert_tail(&ngx_http_kimi_followers, &f->queue);
    f->linked = 1;

    /* a client that closes is seen; its writes wait for it to drain */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_kimi_follow_write_handler;

    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "kimi: following response %V from event %ui", id,
                  f->next);

    /* the first events go once the caller is done with r */
    ngx_post_event(&f->poll, &ngx_posted_events);

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_kimi_follow_refuse(ngx_http_request_t *r, ngx_http_kimi_events_e rc,
    ngx_http_kimi_events_t *ev, ngx_str_t *id, ngx_int_t starting_after)
{
    u_char       msg[512], *p;
    ngx_str_t    shown;
    ngx_uint_t   status;
    const char  *param;

    shown = *id;
    if (shown.len > 128) {
        shown.len = 128;
    }

    status = NGX_HTTP_BAD_REQUEST;
    param = "starting_after";

    switch (rc) {

    case NGX_HTTP_KIMI_EVENTS_GONE:
        status = NGX_HTTP_NOT_FOUND;
        param = NULL;
        p = ngx_snprintf(msg, sizeof(msg), "Response with id '%V' not "
                         "found.", &shown);
        break;

    case NGX_HTTP_KIMI_EVENTS_NONE:
        param = "stream";
        p = ngx_snprintf(msg, sizeof(msg), "Response '%V' was not created "
                         "with background and stream true, so it has no "
                         "events to stream; GET it without stream=true",
                         &shown);
        break;

    case NGX_HTTP_KIMI_EVENTS_BROKEN:
        param = "stream";
        p = ngx_snprintf(msg, sizeof(msg), "The events of response '%V' "
                         "no longer fit in kimi_responses_store, so it "
                         "cannot be streamed again; GET it without "
                         "stream=true", &shown);
        break;

    case NGX_HTTP_KIMI_EVENTS_DROPPED:
        p = ngx_snprintf(msg, sizeof(msg), "The events of response '%V' "
                         "before sequence_number %ui are no longer kept "
                         "(only its last kimi_responses_stream_events "
                         "bytes are); re-attach with starting_after %ui or "
                         "later, or GET it without stream=true", &shown,
                         ev->first, ev->first - 1);
        break;

    default:  /* past the end */
        p = ngx_snprintf(msg, sizeof(msg), "starting_after %i is past the "
                         "last event of response '%V' so far "
                         "(sequence_number %i)", starting_after, &shown,
                         (ngx_int_t) ev->last - 1);
        break;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "kimi: re-attach refused: %*s", p - msg, msg);

    return ngx_http_kimi_send_error(r, status, "invalid_request_error",
                                    (char *) msg, p - msg, param, NULL);
}


/* New events of response id were appended in this worker: its followers
 * here read them now (after the event that appended them). */
void
ngx_http_kimi_responses_follow_wake(ngx_str_t *id)
{
    ngx_queue_t             *q;
    ngx_http_kimi_follow_t  *f;

    if (!ngx_http_kimi_followers_ready) {
        return;
    }

    for (q = ngx_queue_head(&ngx_http_kimi_followers);
         q != ngx_queue_sentinel(&ngx_http_kimi_followers);
         q = ngx_queue_next(q))
    {
        f = ngx_queue_data(q, ngx_http_kimi_follow_t, queue);

        if (f->id.len == id->len
            && ngx_strncmp(f->id.data, id->data, id->len) == 0
            && !f->poll.posted)
        {
            ngx_post_event(&f->poll, &ngx_posted_events);
        }
    }
}


static void
ngx_http_kimi_follow_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c;
    ngx_http_request_t      *r;
    ngx_http_kimi_follow_t  *f;

    f = ev->data;
    r = f->request;
    c = r->connection;

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }

    if (ev->posted) {
        ngx_delete_posted_event(ev);
    }

    ev->timedout = 0;

    ngx_http_set_log_request(c->log, r);

    ngx_http_kimi_follow_pump(f);

    ngx_http_run_posted_requests(c);
}


/*
 * Relays what the log holds after f->next while the client keeps up; at
 * the log's end the stream ends; otherwise waits for a wake or the poll
 * timer.
 */
static void
ngx_http_kimi_follow_pump(ngx_http_kimi_follow_t *f)
{
    size_t                   size;
    ngx_uint_t               found;
    ngx_chain_t             *cl;
    ngx_http_request_t      *r;
    ngx_http_kimi_events_t   ev;
    ngx_http_kimi_events_e   state;

    static const char  gone[] = "The response was deleted while it was "
                                "streamed";
    static const char  dropped[] = "The client fell behind the stream: "
                                   "events it had not read were dropped "
                                   "(kimi_responses_stream_events); GET the "
                                   "response without stream=true";
    static const char  broken[] = "The response's events no longer fit in "
                                  "kimi_responses_store; GET the response "
                                  "without stream=true";

    r = f->request;

    while (!f->done && f->busy == NULL) {

        size = NGX_HTTP_KIMI_FOLLOW_BUF;

    again:

        cl = ngx_http_kimi_sse_get_buf(r->pool, &f->free, size);
        if (cl == NULL) {
            ngx_http_kimi_follow_end(f, NGX_ERROR);
            return;
        }

        ngx_memzero(&ev, sizeof(ngx_http_kimi_events_t));
        ev.next = f->next;
        ev.buf = cl->buf;

        state = ngx_http_kimi_responses_events(r, f->zone, &f->id, &ev);

        if (ev.need > size) {
            /* one event larger than the buffer: a buffer of its size */
            cl->next = f->free;
            f->free = cl;
            size = ev.need;
            goto again;
        }

        switch (state) {

        case NGX_HTTP_KIMI_EVENTS_GONE:
        case NGX_HTTP_KIMI_EVENTS_NONE:
            ngx_http_kimi_follow_error(f, gone, sizeof(gone) - 1);
            return;

        case NGX_HTTP_KIMI_EVENTS_DROPPED:
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "kimi: follower of response %V fell behind: "
                          "event %ui is gone", &f->id, f->next);
            ngx_http_kimi_follow_error(f, dropped, sizeof(dropped) - 1);
            return;

        case NGX_HTTP_KIMI_EVENTS_BROKEN:
            ngx_http_kimi_follow_error(f, broken, sizeof(broken) - 1);
            return;

        case NGX_HTTP_KIMI_EVENTS_END:
            f->next = ev.next;
            (void) ngx_http_kimi_follow_send(f, cl, 1);
            return;

        default: /* NGX_HTTP_KIMI_EVENTS_OK */
            break;
        }

        if (cl->buf->last == cl->buf->pos) {
            /* nothing new: the response runs on; a worker that died
             * never closes its log, a read of its entry marks it failed
             * (ngx_http_kimi_responses_lookup()) */
            cl->next = f->free;
            f->free = cl;

            if (ev.running_pid != 0 && ev.running_pid != ngx_pid
                && ngx_current_msec - f->alive_checked
                   >= NGX_HTTP_KIMI_FOLLOW_ALIVE_MS)
            {
                f->alive_checked = ngx_current_msec;

                if (kill(ev.running_pid, 0) == -1 && ngx_errno == NGX_ESRCH)
                {
                    json_decref(ngx_http_kimi_responses_lookup(r, f->zone,
                                                               &f->id,
                                                               &found));
                    continue;
                }
            }

            ngx_add_timer(&f->poll, NGX_HTTP_KIMI_FOLLOW_POLL_MS);
            return;
        }

        f->next = ev.next;

        if (ngx_http_kimi_follow_send(f, cl, 0) != NGX_OK) {
            return;
        }
    }
}


/* cl to the client; last ends the stream.  NGX_OK: go on. */
static ngx_int_t
ngx_http_kimi_follow_send(ngx_http_kimi_follow_t *f, ngx_chain_t *cl,
    ngx_uint_t last)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = f->request;

    if (last) {
        cl->buf->last_buf = (r == r->main) ? 1 : 0;
        cl->buf->last_in_chain = 1;

        if (cl->buf->last == cl->buf->pos) {
            /* nothing but the end: a special buffer, no memory in it */
            cl->buf->temporary = 0;
        }
    }

    if (cl->buf->last == cl->buf->pos && !last) {
        return NGX_OK;
    }

    rc = ngx_http_output_filter(r, cl);

    ngx_chain_update_chains(r->pool, &f->free, &f->busy, &cl,
                            (ngx_buf_tag_t) &ngx_http_kimi_module);

    if (last || rc == NGX_ERROR) {
        /* what is still buffered goes out through ngx_http_writer() */
        ngx_http_kimi_follow_end(f, rc == NGX_ERROR ? NGX_ERROR : NGX_OK);
        return NGX_DONE;
    }

    if (f->busy == NULL) {
        return NGX_OK;
    }

    /* the client is slower than the response: wait for it to drain, and
     * give up on it after send_timeout */
    if (ngx_http_kimi_sse_wait(r) == NGX_ERROR) {
        ngx_http_kimi_follow_end(f, NGX_ERROR);
    }

    return NGX_DONE;
}


/* the stream cannot go on: an error event, as OpenAI's, then the end */
static void
ngx_http_kimi_follow_error(ngx_http_kimi_follow_t *f, const char *message,
    size_t len)
{
    char         *s;
    json_t       *data;
    size_t        n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    data = json_pack("{s:s,s:s,s:s%,s:n,s:I}", "type", "error", "code",
                     "invalid_request_error", "message", message, len,
                     "param", "sequence_number", (json_int_t) f->next);
    s = (data != NULL) ? json_dumps(data, JSON_COMPACT) : NULL;
    json_decref(data);

    if (s == NULL) {
        ngx_http_kimi_follow_end(f, NGX_ERROR);
        return;
    }

    n = ngx_strlen(s);

    cl = ngx_alloc_chain_link(f->request->pool);
    b = ngx_create_temp_buf(f->request->pool, n + sizeof("event: error\n"
                                                          "data: \n\n"));
    if (cl == NULL || b == NULL) {
        free(s);
        ngx_http_kimi_follow_end(f, NGX_ERROR);
        return;
    }

    b->last = ngx_sprintf(b->last, "event: error\ndata: %*s\n\n", n, s);
    b->flush = 1;
    free(s);

    cl->buf = b;
    cl->next = NULL;

    (void) ngx_http_kimi_follow_send(f, cl, 1);
}


/* the relay is over: our reference to r goes */
static void
ngx_http_kimi_follow_end(ngx_http_kimi_follow_t *f, ngx_int_t rc)
{
    ngx_http_request_t  *r;

    r = f->request;

    ngx_http_kimi_follow_cleanup(f);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "kimi follow of %V ended: %i", &f->id, rc);

    ngx_http_finalize_request(r, rc);
}


static void
ngx_http_kimi_follow_write_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_event_t             *wev;
    ngx_chain_t             *none;
    ngx_http_cleanup_t      *cln;
    ngx_http_kimi_follow_t  *f;

    wev = r->connection->write;

    f = NULL;
    for (cln = r->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_kimi_follow_cleanup) {
            f = cln->data;
            break;
        }
    }

    if (f == NULL || f->done) {
        return;
    }

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                      "client timed out reading the stream");
        r->connection->timedout = 1;
        ngx_http_kimi_follow_end(f, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    none = NULL;
    ngx_chain_update_chains(r->pool, &f->free, &f->busy, &none,
                            (ngx_buf_tag_t) &ngx_http_kimi_module);

    if (rc == NGX_ERROR) {
        ngx_http_kimi_follow_end(f, NGX_ERROR);
        return;
    }

    if (f->busy != NULL) {
        if (ngx_http_kimi_sse_wait(r) == NGX_ERROR) {
            ngx_http_kimi_follow_end(f, NGX_ERROR);
        }

        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    /* drained: the events that waited */
    ngx_http_kimi_follow_pump(f);
}


/* the request ends (its end, or the client closed): no timer, no wake */
static void
ngx_http_kimi_follow_cleanup(void *data)
{
    ngx_http_kimi_follow_t  *f = data;

    f->done = 1;

    if (f->poll.timer_set) {
        ngx_del_timer(&f->poll);
    }

    if (f->poll.posted) {
        ngx_delete_posted_event(&f->poll);
    }

    if (f->linked) {
        f->linked = 0;
        ngx_queue_remove(&f->queue);
    }
}
