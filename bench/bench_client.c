/*
 * The streaming client: every request of a run on one epoll thread.
 *
 * Owns:   sockets (non-blocking, HTTP/1.1 keep-alive, one request per
 *         connection at a time, idle connections reused), the arrival
 *         timer, the concurrency cap, timeouts, and the timing of each
 *         SSE message: CLOCK_MONOTONIC read right after the read() that
 *         delivered its last byte.
 * Never:  blocks (connect, write and read are non-blocking; the only wait
 *         is epoll_wait), retries a request that reached the server, or
 *         lets a run outlive cfg->timeout_s.
 *
 * Failure vocabulary (the request's error text): "connection refused",
 * "HTTP <status>: <body>", "error event: <message>", "timeout ...",
 * "connection closed ...", "malformed ...".  A reused keep-alive
 * connection that the server had closed before our request reached it is
 * replaced by a fresh one once; that is a client artifact, not a failure.
 */

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>

#include <jansson.h>

#include "bench.h"
#include "bench_http.h"
#include "bench_json.h"

#define BENCH_READ_BUF      (256 * 1024)
#define BENCH_MAX_EVENTS    512
#define BENCH_TICK_MS       50      /* timeout and progress checks */

enum {
    BENCH_CONN_CONNECTING = 0,
    BENCH_CONN_SENDING,
    BENCH_CONN_READING,
    BENCH_CONN_IDLE,
};

typedef struct bench_conn_s  bench_conn_t;

struct bench_conn_s {
    int             fd;
    int             state;
    int             reused;           /* served a response before */
    int             retried;          /* the request moved here once */
    bench_req_t    *req;
    size_t          sent;
    int             got_choices;
    int             got_done;
    double          last_s;           /* last choices-bearing message */
    double          req_deadline;     /* absolute; 0: none */
    bench_http_t    http;
    bench_conn_t   *next;             /* idle list */
    struct bench_loop_s *loop;
};

typedef struct bench_loop_s {
    const bench_client_cfg_t  *cfg;
    bench_req_t               *reqs;
    size_t                     n;
    const double              *arrival_s;
    int                        epfd;
    int                        tfd;
    double                     t0;            /* absolute, monotonic */
    double                     now;           /* absolute, last read */
    size_t                     released;      /* arrival passed */
    size_t                     started;
    size_t                     finished;
    uint32_t                   active;
    int                        stopping;      /* --timeout reached */
    bench_conn_t              *idle;
    bench_conn_t             **conns;         /* every open connection */
    size_t                     n_conns;
    size_t                     cap_conns;
    char                      *rbuf;
} bench_loop_t;

static int  bench_timer_tag;          /* epoll tag of the arrival timer */


static double
bench_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}


static void
bench_req_fail(bench_req_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
bench_req_fail(bench_req_t *r, const char *fmt, ...)
{
    va_list  ap;
    char     msg[2600];

    if (r->error != NULL) {
        return;                       /* the first cause is the real one */
    }

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    r->success = 0;
    r->error = strdup(msg);
}


/* Room for n more bytes and a NUL in r->text. */
static int
bench_text_reserve(bench_req_t *r, size_t n)
{
    size_t   cap;
    char    *t;

    if (r->text_len + n + 1 > r->text_cap) {
        cap = r->text_cap ? r->text_cap * 2 : 256;
        while (cap < r->text_len + n + 1) {
            cap *= 2;
        }
        t = realloc(r->text, cap);
        if (t == NULL) {
            return -1;
        }
        r->text = t;
        r->text_cap = cap;
    }

    return 0;
}


static int
bench_text_append(bench_req_t *r, const char *s, size_t n)
{
    if (bench_text_reserve(r, n) != 0) {
        return -1;
    }

    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = '\0';

    return 0;
}


static int
bench_itl_push(bench_req_t *r, double gap)
{
    size_t   cap;
    double  *d;

    if (r->n_itl == r->cap_itl) {
        cap = r->cap_itl ? r->cap_itl * 2 : 64;
        d = realloc(r->itl_s, cap * sizeof(double));
        if (d == NULL) {
            return -1;
        }
        r->itl_s = d;
        r->cap_itl = cap;
    }

    r->itl_s[r->n_itl++] = gap;

    return 0;
}


/* A choices-bearing event at time t: TTFT or one more ITL. */
static int
bench_on_token_event(bench_conn_t *c, double t)
{
    bench_req_t  *r = c->req;

    if (!c->got_choices) {
        c->got_choices = 1;
        r->ttft_s = t - r->start_s;

    } else if (bench_itl_push(r, t - c->last_s) != 0) {
        bench_req_fail(r, "out of memory");
        return -1;
    }
    c->last_s = t;

    return 0;
}


/* The scanned fast path of bench_on_sse(): same rules, no tree. */
static int
bench_on_chunk(bench_conn_t *c, const bench_chunk_t *ch, double t)
{
    bench_req_t  *r = c->req;
    size_t        n;

    if (ch->n_choices > 0) {
        if (!c->got_choices && ch->id != NULL) {
            n = ch->id_len < sizeof(r->response_id) - 1
                ? ch->id_len : sizeof(r->response_id) - 1;
            memcpy(r->response_id, ch->id, n);
            r->response_id[n] = '\0';
        }
        if (bench_on_token_event(c, t) != 0) {
            return -1;
        }
        if (ch->has_text && ch->text_len > 0) {
            if (bench_text_reserve(r, ch->text_len) != 0) {
                bench_req_fail(r, "out of memory");
                return -1;
            }
            if (!ch->text_escaped) {
                memcpy(r->text + r->text_len, ch->text, ch->text_len);
                r->text_len += ch->text_len;

            } else if (bench_json_unescape(ch->text, ch->text_len,
                                           r->text + r->text_len, &n) == 0)
            {
                r->text_len += n;

            } else {
                bench_req_fail(r, "malformed JSON string in SSE event");
                return -1;
            }
            r->text[r->text_len] = '\0';
        }

    } else if (ch->has_usage) {
        r->got_usage = 1;
        r->output_tokens = ch->completion_tokens > 0
                           ? (uint32_t) ch->completion_tokens : 0;
        r->prompt_tokens_server = ch->prompt_tokens > 0
                                  ? (uint32_t) ch->prompt_tokens : 0;
    }

    return 0;
}


/*
 * One SSE message.  vLLM's rules: "[DONE]" ends; a message whose JSON has
 * a non-empty "choices" is a token event (TTFT, ITL); "usage" gives the
 * token counts.  Stricter than vLLM: an error event fails the request
 * even after tokens (vLLM would count it successful).
 */
static int
bench_on_sse(void *ctx, const char *event, const char *data, size_t len)
{
    bench_conn_t  *c = ctx;
    bench_req_t   *r = c->req;
    json_error_t   jerr;
    json_t        *js, *choices, *usage, *e, *first, *txt;
    const char    *msg;
    bench_chunk_t  ch;
    double         t = c->loop->now - c->loop->t0;

    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        c->got_done = 1;
        return 0;
    }

    if (event[0] == '\0'
        && bench_chunk_scan(data, len, c->loop->cfg->is_chat, &ch) == 0)
    {
        return bench_on_chunk(c, &ch, t);
    }

    /* errors, and anything the scanner is unsure of: a full parse */
    js = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (js == NULL) {
        bench_req_fail(r, "malformed JSON in SSE event: %s", jerr.text);
        return -1;
    }

    e = json_object_get(js, "error");
    if (e != NULL || strcmp(event, "error") == 0) {
        msg = json_string_value(json_object_get(e, "message"));
        if (msg == NULL) {
            msg = json_string_value(e);
        }
        bench_req_fail(r, "error event: %s", msg ? msg : data);
        json_decref(js);
        return -1;
    }

    choices = json_object_get(js, "choices");
    if (json_is_array(choices) && json_array_size(choices) > 0) {
        txt = json_object_get(js, "id");
        if (!c->got_choices && json_is_string(txt)) {
            snprintf(r->response_id, sizeof(r->response_id), "%s",
                     json_string_value(txt));
        }
        if (bench_on_token_event(c, t) != 0) {
            json_decref(js);
            return -1;
        }

        first = json_array_get(choices, 0);
        txt = c->loop->cfg->is_chat
              ? json_object_get(json_object_get(first, "delta"), "content")
              : json_object_get(first, "text");
        if (json_is_string(txt)
            && bench_text_append(r, json_string_value(txt),
                                 json_string_length(txt)) != 0)
        {
            json_decref(js);
            bench_req_fail(r, "out of memory");
            return -1;
        }

    } else if (json_is_object(usage = json_object_get(js, "usage"))) {
        json_int_t  ct = json_integer_value(
                             json_object_get(usage, "completion_tokens"));
        json_int_t  pt = json_integer_value(
                             json_object_get(usage, "prompt_tokens"));

        r->got_usage = 1;
        r->output_tokens = ct > 0 ? (uint32_t) ct : 0;
        r->prompt_tokens_server = pt > 0 ? (uint32_t) pt : 0;
    }

    json_decref(js);

    return 0;
}


static int
bench_epoll(bench_loop_t *lp, int op, bench_conn_t *c, uint32_t events)
{
    struct epoll_event  ev;

    ev.events = events;
    ev.data.ptr = c;

    return epoll_ctl(lp->epfd, op, c->fd, &ev);
}


static void
bench_conn_close(bench_loop_t *lp, bench_conn_t *c)
{
    bench_conn_t  **pp;
    size_t          i;

    for (pp = &lp->idle; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }

    for (i = 0; i < lp->n_conns; i++) {
        if (lp->conns[i] == c) {
            lp->conns[i] = lp->conns[--lp->n_conns];
            break;
        }
    }

    if (c->fd >= 0) {
        close(c->fd);                 /* also leaves the epoll set */
    }
    bench_http_free(&c->http);
    free(c);
}


static void bench_start_next(bench_loop_t *lp);
static int  bench_conn_send(bench_loop_t *lp, bench_conn_t *c);


static bench_conn_t *
bench_conn_open(bench_loop_t *lp, bench_req_t *r)
{
    bench_conn_t  *c, **grown;
    int            one = 1, fd;

    fd = socket(lp->cfg->addr.ss_family,
                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        bench_req_fail(r, "socket() failed: %s", strerror(errno));
        return NULL;
    }

    /* tokens are tiny writes and reads: never wait for Nagle */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    c = calloc(1, sizeof(*c));
    if (lp->n_conns == lp->cap_conns) {
        size_t  cap = lp->cap_conns ? lp->cap_conns * 2 : 64;

        grown = realloc(lp->conns, cap * sizeof(*grown));
        if (grown != NULL) {
            lp->conns = grown;
            lp->cap_conns = cap;
        }
    }
    if (c == NULL || lp->n_conns == lp->cap_conns) {
        free(c);
        close(fd);
        bench_req_fail(r, "out of memory");
        return NULL;
    }

    c->fd = fd;
    c->loop = lp;
    bench_http_init(&c->http);
    lp->conns[lp->n_conns++] = c;

    if (connect(fd, (struct sockaddr *) &lp->cfg->addr, lp->cfg->addr_len)
        != 0 && errno != EINPROGRESS)
    {
        bench_req_fail(r, errno == ECONNREFUSED ? "connection refused"
                          : "connect() failed: %s", strerror(errno));
        bench_conn_close(lp, c);
        return NULL;
    }

    c->state = BENCH_CONN_CONNECTING;
    if (bench_epoll(lp, EPOLL_CTL_ADD, c, EPOLLOUT | EPOLLIN | EPOLLRDHUP)
        != 0)
    {
        bench_req_fail(r, "epoll_ctl() failed: %s", strerror(errno));
        bench_conn_close(lp, c);
        return NULL;
    }

    return c;
}


/* The request is over (success or not): account, free the connection. */
static void
bench_req_finish(bench_loop_t *lp, bench_conn_t *c, int reusable)
{
    bench_req_t  *r = c->req;

    if (r != NULL) {
        if (r->error == NULL && c->got_choices) {
            r->success = 1;
            r->latency_s = c->last_s - r->start_s;

        } else if (r->error == NULL) {
            bench_req_fail(r, "the stream ended without any choices event");
        }

        c->req = NULL;
        lp->finished++;
        lp->active--;
    }

    if (reusable) {
        c->state = BENCH_CONN_IDLE;
        c->reused = 1;
        c->retried = 0;
        c->got_choices = 0;
        c->got_done = 0;
        c->sent = 0;
        c->req_deadline = 0.0;
        bench_http_reset(&c->http);
        c->next = lp->idle;
        lp->idle = c;
        bench_epoll(lp, EPOLL_CTL_MOD, c, EPOLLIN | EPOLLRDHUP);

    } else {
        bench_conn_close(lp, c);
    }

    bench_start_next(lp);
}


static void
bench_req_start(bench_loop_t *lp, bench_req_t *r, int is_retry)
{
    bench_conn_t  *c;

    if (!is_retry) {
        /* vLLM's st: after the concurrency gate, before the POST */
        r->start_s = bench_now() - lp->t0;
        lp->active++;
    }

    if (lp->idle != NULL && !is_retry) {
        c = lp->idle;
        lp->idle = c->next;
        c->next = NULL;
        c->req = r;
        c->state = BENCH_CONN_SENDING;
        bench_epoll(lp, EPOLL_CTL_MOD, c, EPOLLOUT | EPOLLIN | EPOLLRDHUP);

    } else {
        c = bench_conn_open(lp, r);
        if (c == NULL) {
            lp->finished++;
            lp->active--;
            return;
        }
        c->req = r;
        c->retried = is_retry;
    }

    if (lp->cfg->request_timeout_s > 0.0) {
        c->req_deadline = lp->t0 + r->start_s + lp->cfg->request_timeout_s;
    }

    if (c->state == BENCH_CONN_SENDING) {
        bench_conn_send(lp, c);
    }
}


static void
bench_start_next(bench_loop_t *lp)
{
    while (!lp->stopping && lp->started < lp->released
           && (lp->cfg->max_concurrency == 0
               || lp->active < lp->cfg->max_concurrency))
    {
        bench_req_start(lp, &lp->reqs[lp->started++], 0);
    }
}


/* A failure on this connection: retry a request that a stale keep-alive
 * connection never delivered, else fail it. */
static void
bench_conn_error(bench_loop_t *lp, bench_conn_t *c, const char *why)
{
    bench_req_t  *r = c->req;

    if (r != NULL && c->reused && !c->retried && !c->http.has_bytes
        && c->state != BENCH_CONN_IDLE)
    {
        c->req = NULL;
        bench_conn_close(lp, c);
        bench_req_start(lp, r, 1);
        return;
    }

    if (r != NULL) {
        bench_req_fail(r, "%s", why);
    }
    bench_req_finish(lp, c, 0);
}


static int
bench_conn_send(bench_loop_t *lp, bench_conn_t *c)
{
    bench_req_t  *r = c->req;
    ssize_t       k;
    char          why[256];

    while (c->sent < r->body_len) {
        k = write(c->fd, r->body + c->sent, r->body_len - c->sent);
        if (k < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                return 0;
            }
            snprintf(why, sizeof(why), "write() failed: %s",
                     strerror(errno));
            bench_conn_error(lp, c, why);
            return -1;
        }
        c->sent += k;
    }

    c->state = BENCH_CONN_READING;
    bench_epoll(lp, EPOLL_CTL_MOD, c, EPOLLIN | EPOLLRDHUP);

    return 0;
}


static void
bench_conn_done(bench_loop_t *lp, bench_conn_t *c)
{
    bench_req_t  *r = c->req;

    if (c->http.status != 200) {
        size_t  n = c->http.body.len;

        /* one line per error in the report: no trailing newline */
        while (n > 0 && (c->http.body.data[n - 1] == '\n'
                         || c->http.body.data[n - 1] == '\r'))
        {
            n--;
        }
        bench_req_fail(r, "HTTP %d: %.*s", c->http.status, (int) n,
                       n ? c->http.body.data : "");
    }

    bench_req_finish(lp, c, c->http.keep_alive);
}


static void
bench_conn_read(bench_loop_t *lp, bench_conn_t *c)
{
    ssize_t  k;
    int      rc;
    char     why[256];

    for ( ;; ) {
        k = read(c->fd, lp->rbuf, BENCH_READ_BUF);

        if (k < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                return;
            }
            if (c->state == BENCH_CONN_IDLE) {
                bench_conn_close(lp, c);
                return;
            }
            snprintf(why, sizeof(why), "read() failed: %s%s",
                     strerror(errno), c->http.has_bytes ? " mid-response"
                                                         : "");
            bench_conn_error(lp, c, why);
            return;
        }

        if (c->state == BENCH_CONN_IDLE) {
            /* the server closed an idle keep-alive connection, or sent
             * bytes nobody asked for: either way it is done */
            bench_conn_close(lp, c);
            return;
        }

        /* the time of this read is the arrival time of what it holds */
        lp->now = bench_now();

        if (k == 0) {
            rc = bench_http_eof(&c->http, bench_on_sse, c);
            if (rc == BENCH_HTTP_DONE) {
                c->http.keep_alive = 0;
                bench_conn_done(lp, c);
            } else {
                bench_conn_error(lp, c, c->http.error);
            }
            return;
        }

        rc = bench_http_feed(&c->http, lp->rbuf, k, bench_on_sse, c);
        if (rc == BENCH_HTTP_DONE) {
            bench_conn_done(lp, c);
            return;
        }
        if (rc == BENCH_HTTP_ERROR) {
            if (c->req->error == NULL) {
                snprintf(why, sizeof(why), "malformed response: %s",
                         c->http.error);
                bench_req_fail(c->req, "%s", why);
            }
            bench_req_finish(lp, c, 0);
            return;
        }

        if (k < BENCH_READ_BUF) {
            return;                   /* drained; level-triggered anyway */
        }
    }
}


static void
bench_conn_event(bench_loop_t *lp, bench_conn_t *c, uint32_t events)
{
    int        soerr = 0;
    socklen_t  len = sizeof(soerr);
    char       why[256];

    if (c->state == BENCH_CONN_CONNECTING) {
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) {
            soerr = errno;
        }
        if (soerr != 0) {
            snprintf(why, sizeof(why), soerr == ECONNREFUSED
                     ? "connection refused" : "connect() failed: %s",
                     strerror(soerr));
            bench_conn_error(lp, c, why);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN | EPOLLHUP | EPOLLERR))) {
            return;
        }
        c->state = BENCH_CONN_SENDING;
    }

    if (c->state == BENCH_CONN_SENDING) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            bench_conn_error(lp, c, "connection reset while sending");
            return;
        }
        if (bench_conn_send(lp, c) != 0 || c->state != BENCH_CONN_READING) {
            return;
        }
        /* a server may answer (an error) before reading all we sent */
    }

    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        bench_conn_read(lp, c);
    }
}


static void
bench_arm_timer(bench_loop_t *lp)
{
    struct itimerspec  its;
    double             at;

    memset(&its, 0, sizeof(its));

    if (lp->released < lp->n) {
        at = lp->t0 + lp->arrival_s[lp->released];
        its.it_value.tv_sec = (time_t) at;
        its.it_value.tv_nsec = (long) ((at - floor(at)) * 1e9);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) {
            its.it_value.tv_nsec = 1;       /* zero would disarm it */
        }
    }

    timerfd_settime(lp->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}


static void
bench_release_due(bench_loop_t *lp)
{
    double  t = bench_now() - lp->t0;

    while (lp->released < lp->n && lp->arrival_s[lp->released] <= t) {
        lp->released++;
    }

    bench_start_next(lp);
    bench_arm_timer(lp);
}


/* Fails whatever is past its deadline; returns 1 when the run is over. */
static int
bench_check_timeouts(bench_loop_t *lp)
{
    double   now = bench_now();
    size_t   i;
    int      expired = now >= lp->t0 + lp->cfg->timeout_s;

    lp->stopping = expired;

    for (i = 0; i < lp->n_conns; ) {
        bench_conn_t  *c = lp->conns[i];

        if (c->req != NULL
            && (expired || (c->req_deadline > 0.0 && now >= c->req_deadline)))
        {
            if (expired) {
                bench_req_fail(c->req, "timeout: the run reached --timeout "
                               "%.0f s", lp->cfg->timeout_s);
            } else {
                bench_req_fail(c->req, "timeout: no complete response in "
                               "--request-timeout %.0f s",
                               lp->cfg->request_timeout_s);
            }
            bench_req_finish(lp, c, 0);       /* removes conns[i] */
            continue;
        }
        i++;
    }

    if (!expired) {
        return 0;
    }

    for (i = 0; i < lp->n; i++) {
        bench_req_t  *r = &lp->reqs[i];

        if (i >= lp->started) {
            bench_req_fail(r, "timeout: not sent before --timeout %.0f s",
                           lp->cfg->timeout_s);
            lp->finished++;
        }
    }
    lp->started = lp->released = lp->n;

    return 1;
}


int
bench_client_run(const bench_client_cfg_t *cfg, bench_req_t *reqs, size_t n,
    const double *arrival_s, double *duration_s, double *t0_abs,
    kimi_err_t *err)
{
    struct epoll_event   evs[BENCH_MAX_EVENTS], ev;
    bench_loop_t         lp;
    double               last_progress, last_tick, now;
    uint64_t             ticks;
    int                  k, i, rc = 0;

    memset(&lp, 0, sizeof(lp));
    lp.cfg = cfg;
    lp.reqs = reqs;
    lp.n = n;
    lp.arrival_s = arrival_s;
    lp.tfd = -1;

    lp.rbuf = malloc(BENCH_READ_BUF);
    lp.epfd = epoll_create1(EPOLL_CLOEXEC);
    lp.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (lp.rbuf == NULL || lp.epfd < 0 || lp.tfd < 0) {
        rc = kimi_err_set(err, KIMI_EIO, "client setup (epoll, timerfd): %s",
                          strerror(errno));
        goto failed;
    }

    ev.events = EPOLLIN;
    ev.data.ptr = &bench_timer_tag;
    if (epoll_ctl(lp.epfd, EPOLL_CTL_ADD, lp.tfd, &ev) != 0) {
        rc = kimi_err_set(err, KIMI_EIO, "epoll_ctl(timerfd): %s",
                          strerror(errno));
        goto failed;
    }

    lp.t0 = bench_now();
    if (t0_abs != NULL) {
        *t0_abs = lp.t0;
    }
    last_progress = last_tick = lp.t0;
    bench_release_due(&lp);

    while (lp.finished < n) {
        k = epoll_wait(lp.epfd, evs, BENCH_MAX_EVENTS, BENCH_TICK_MS);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            rc = kimi_err_set(err, KIMI_EIO, "epoll_wait(): %s",
                              strerror(errno));
            goto failed;
        }

        for (i = 0; i < k; i++) {
            if (evs[i].data.ptr == &bench_timer_tag) {
                if (read(lp.tfd, &ticks, sizeof(ticks)) < 0) {
                    /* EAGAIN: a re-arm raced the expiry; harmless */
                }
                bench_release_due(&lp);
                continue;
            }
            bench_conn_event(&lp, evs[i].data.ptr, evs[i].events);
        }

        now = bench_now();
        if (now - last_tick >= (double) BENCH_TICK_MS / 1000.0) {
            last_tick = now;
            if (bench_check_timeouts(&lp)) {
                break;
            }
        }
        if (cfg->progress && now - last_progress >= 1.0) {
            last_progress = now;
            fprintf(stderr, "\r%zu/%zu requests done, %u running   ",
                    lp.finished, n, lp.active);
        }
    }

    *duration_s = bench_now() - lp.t0;

    if (cfg->progress) {
        fprintf(stderr, "\r%zu/%zu requests done%20s\n", lp.finished, n, "");
    }

failed:

    while (lp.n_conns > 0) {
        bench_conn_t  *c = lp.conns[lp.n_conns - 1];

        if (c->req != NULL && c->req->error == NULL && !c->req->success) {
            bench_req_fail(c->req, "client stopped");
        }
        bench_conn_close(&lp, c);
    }
    free(lp.conns);
    free(lp.rbuf);
    if (lp.tfd >= 0) {
        close(lp.tfd);
    }
    if (lp.epfd >= 0) {
        close(lp.epfd);
    }

    return rc;
}
