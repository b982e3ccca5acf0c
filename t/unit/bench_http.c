/*
 * kimi-bench's HTTP response parser and SSE decoder: the same response
 * must give the same events however the bytes are split across reads
 * (every split point of a chunked stream is tried), and malformed input
 * must be an error, never a crash or a silent success.
 *
 * bench/ is not part of libkimi.a, so the file under test is compiled in.
 */

#include <stdio.h>
#include <string.h>

#include "../../bench/bench_http.c"

#include "tap.h"

typedef struct {
    char  log[4096];
    int   n;
} events_t;


static int
on_event(void *ctx, const char *event, const char *data, size_t len)
{
    events_t  *e = ctx;
    size_t     k = strlen(e->log);

    snprintf(e->log + k, sizeof(e->log) - k, "[%s|%.*s]", event, (int) len,
             data);
    e->n++;

    return 0;
}


/* Feeds resp in pieces of at most step bytes, then EOF if close_at_end. */
static int
run(const char *resp, size_t split, events_t *e, bench_http_t *h,
    int close_at_end)
{
    size_t  n = strlen(resp);
    int     rc = BENCH_HTTP_AGAIN;

    memset(e, 0, sizeof(*e));
    bench_http_init(h);

    if (split > 0 && split < n) {
        rc = bench_http_feed(h, resp, split, on_event, e);
        if (rc == BENCH_HTTP_AGAIN) {
            rc = bench_http_feed(h, resp + split, n - split, on_event, e);
        }
    } else {
        rc = bench_http_feed(h, resp, n, on_event, e);
    }

    if (rc == BENCH_HTTP_AGAIN && close_at_end) {
        rc = bench_http_eof(h, on_event, e);
    }

    return rc;
}


static char *
chunked(const char *body, char *out, size_t cap, size_t piece)
{
    size_t  n = strlen(body), i, k, len = 0;

    len += snprintf(out, cap, "HTTP/1.1 200 OK\r\n"
                    "Content-Type: text/event-stream\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n");
    for (i = 0; i < n; i += k) {
        k = n - i < piece ? n - i : piece;
        len += snprintf(out + len, cap - len, "%zx;ext=1\r\n%.*s\r\n", k,
                        (int) k, body + i);
    }
    snprintf(out + len, cap - len, "0\r\nX-Trailer: y\r\n\r\n");

    return out;
}


int
main(void)
{
    static const char  sse[] =
        ": ping\n\n"
        "data: {\"a\":1}\n\n"
        "event: error\r\ndata: line1\r\ndata: line2\r\n\r\n"
        "data:no-space\r\r"
        "id: 7\nretry: 10\ndata: [DONE]\n\n";
    static const char  want[] =
        "[|{\"a\":1}][error|line1\nline2][|no-space][|[DONE]]";

    char          resp[8192], bad[256];
    events_t      e;
    bench_http_t  h;
    size_t        split, n, piece;
    int           rc, all_ok = 1;

    /* every split point, several chunk sizes */
    for (piece = 1; piece <= 64; piece *= 4) {
        chunked(sse, resp, sizeof(resp), piece);
        n = strlen(resp);
        for (split = 0; split <= n; split++) {
            rc = run(resp, split, &e, &h, 0);
            if (rc != BENCH_HTTP_DONE || strcmp(e.log, want) != 0
                || !h.keep_alive)
            {
                all_ok = 0;
                fprintf(stderr, "# piece %zu split %zu: rc %d log %s\n",
                        piece, split, rc, e.log);
            }
            bench_http_free(&h);
        }
    }
    ok(all_ok, "chunked SSE: same events at every split, chunk size 1..64");

    snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s", strlen(sse), sse);
    rc = run(resp, 37, &e, &h, 0);
    ok(rc == BENCH_HTTP_DONE && strcmp(e.log, want) == 0 && !h.keep_alive,
       "Content-Length body, Connection: close noticed");
    bench_http_free(&h);

    {
        /* one read with the headers and 180 KB of events after them */
        static char  big[300 * 1024];
        size_t       len, i;

        len = snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\n"
                       "Content-Length: %d\r\n\r\n", 20000 * 9);
        for (i = 0; i < 20000; i++) {
            memcpy(big + len, "data: x\n\n", 9);
            len += 9;
        }
        big[len] = '\0';
        rc = run(big, 0, &e, &h, 0);
        if (rc != BENCH_HTTP_DONE || e.n != 20000) {
            fprintf(stderr, "# rc %d events %d error %s\n", rc, e.n,
                    h.error ? h.error : "");
        }
        ok(rc == BENCH_HTTP_DONE && e.n == 20000,
           "headers and 180 KB of body in one read");
        bench_http_free(&h);
    }

    snprintf(resp, sizeof(resp), "HTTP/1.0 200 OK\r\n\r\ndata: x\n\n"
             "data: tail-without-blank-line");
    rc = run(resp, 0, &e, &h, 1);
    ok(rc == BENCH_HTTP_DONE && strcmp(e.log, "[|x][|tail-without-blank-line]")
       == 0, "body until close; a last event without a blank line counts");
    bench_http_free(&h);

    snprintf(resp, sizeof(resp), "HTTP/1.1 429 Too Many Requests\r\n"
             "Content-Length: 9\r\n\r\n{\"e\":\"q\"}");
    rc = run(resp, 5, &e, &h, 0);
    ok(rc == BENCH_HTTP_DONE && h.status == 429 && e.n == 0
       && strcmp(h.body.data, "{\"e\":\"q\"}") == 0,
       "error status: body kept for the message, no events");
    bench_http_free(&h);

    snprintf(resp, sizeof(resp), "HTTP/1.1 100 Continue\r\n\r\n"
             "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ndata: y\n\n\n");
    rc = run(resp, 0, &e, &h, 0);
    ok(rc == BENCH_HTTP_DONE && h.status == 200 && strcmp(e.log, "[|y]") == 0,
       "interim 100 response skipped");
    bench_http_free(&h);

    chunked(sse, resp, sizeof(resp), 16);
    resp[strlen(resp) - 30] = '\0';
    rc = run(resp, 0, &e, &h, 1);
    ok(rc == BENCH_HTTP_ERROR && strstr(h.error, "mid-response") != NULL,
       "EOF inside a chunked body is an error");
    bench_http_free(&h);

    rc = run("", 0, &e, &h, 1);
    ok(rc == BENCH_HTTP_ERROR && strstr(h.error, "before any") != NULL,
       "EOF before any byte says so (stale keep-alive)");
    bench_http_free(&h);

    snprintf(bad, sizeof(bad), "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
             "chunked\r\n\r\nzz\r\n");
    rc = run(bad, 0, &e, &h, 0);
    ok(rc == BENCH_HTTP_ERROR, "malformed chunk size rejected");
    bench_http_free(&h);

    snprintf(bad, sizeof(bad), "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
             "chunked\r\n\r\nffffffffffff\r\n");
    rc = run(bad, 0, &e, &h, 0);
    ok(rc == BENCH_HTTP_ERROR, "absurd chunk size rejected");
    bench_http_free(&h);

    rc = run("SSH-2.0-OpenSSH\r\n\r\n", 0, &e, &h, 0);
    ok(rc == BENCH_HTTP_ERROR && strstr(h.error, "status line") != NULL,
       "not HTTP: malformed status line");
    bench_http_free(&h);

    snprintf(bad, sizeof(bad), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
             "extra");
    rc = run(bad, 0, &e, &h, 0);
    ok(rc == BENCH_HTTP_ERROR, "bytes after a complete response rejected");
    bench_http_free(&h);

    printf("1..%d\n", test_n);

    return test_failed ? 1 : 0;
}
