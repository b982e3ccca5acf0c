/*
 * HTTP/1.1 response parser with an SSE decoder on top, for the client.
 *
 * Owns:   status line, headers, Content-Length / chunked / until-close
 *         bodies, SSE lines (data:, event:, comments) into messages.
 * Never:  does I/O or reads the clock: bytes in, messages out, so the
 *         caller stamps them with the time it read the bytes.
 */

#ifndef KIMI_BENCH_HTTP_H
#define KIMI_BENCH_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_HTTP_AGAIN   0     /* need more bytes */
#define BENCH_HTTP_DONE    1     /* response complete */
#define BENCH_HTTP_ERROR  -1     /* malformed; h->error says why */

#define BENCH_HTTP_MAX_HEAD   (64 * 1024)
#define BENCH_HTTP_MAX_ERROR  2048          /* kept of a non-200 body */
#define BENCH_HTTP_MAX_EVENT  (16 * 1024 * 1024)

typedef struct {
    char    *data;
    size_t   len;
    size_t   cap;
} bench_buf_t;

/* One SSE message: event is "" unless an event: line named it.  Return
 * non-zero to stop parsing (the feed returns BENCH_HTTP_ERROR). */
typedef int (*bench_sse_pt)(void *ctx, const char *event, const char *data,
    size_t len);

typedef struct {
    int           state;
    int           status;          /* 0 until the status line is read */
    int           chunked;
    int           keep_alive;
    int64_t       content_length;  /* -1: none given */
    uint64_t      remaining;       /* of this chunk or of the body */
    int           has_bytes;       /* any byte of a response seen */

    bench_buf_t   head;            /* headers, then chunk-size lines */
    bench_buf_t   line;            /* partial SSE line */
    int           pending_cr;      /* a read ended on CR */
    bench_buf_t   data;            /* data of the SSE message so far */
    char          event[32];
    int           has_data;
    bench_buf_t   body;            /* non-200: start of the body */

    const char   *error;
} bench_http_t;

void bench_http_init(bench_http_t *h);
void bench_http_reset(bench_http_t *h);    /* next response, keeps memory */
void bench_http_free(bench_http_t *h);

int  bench_http_feed(bench_http_t *h, const char *p, size_t n,
    bench_sse_pt cb, void *ctx);
/* The peer closed: DONE if the response was complete by close. */
int  bench_http_eof(bench_http_t *h, bench_sse_pt cb, void *ctx);

int  bench_buf_append(bench_buf_t *b, const char *p, size_t n);

#endif
