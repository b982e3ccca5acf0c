/*
 * HTTP/1.1 response parsing and SSE decoding (see bench_http.h).
 *
 * Owns:   the response state machine; the SSE line rules of the
 *         WHATWG event-stream format (CR, LF or CRLF line ends; a blank
 *         line ends a message; ':' lines are comments; "data:" values
 *         joined by LF).
 * Never:  allocates per event once the buffers have grown, or trusts a
 *         length from the peer without a bound.
 */

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench_http.h"

enum {
    BENCH_HTTP_HEAD = 0,
    BENCH_HTTP_BODY_LEN,           /* Content-Length bytes */
    BENCH_HTTP_BODY_CLOSE,         /* until the peer closes */
    BENCH_HTTP_CHUNK_SIZE,
    BENCH_HTTP_CHUNK_DATA,
    BENCH_HTTP_CHUNK_CRLF,
    BENCH_HTTP_TRAILER,
    BENCH_HTTP_END,
};


int
bench_buf_append(bench_buf_t *b, const char *p, size_t n)
{
    size_t   cap;
    char    *d;

    if (b->len + n + 1 > b->cap) {
        cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        d = realloc(b->data, cap);
        if (d == NULL) {
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }

    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';

    return 0;
}


void
bench_http_init(bench_http_t *h)
{
    memset(h, 0, sizeof(*h));
    h->content_length = -1;
}


void
bench_http_reset(bench_http_t *h)
{
    bench_buf_t  head = h->head, line = h->line, data = h->data;
    bench_buf_t  body = h->body;

    memset(h, 0, sizeof(*h));
    h->content_length = -1;
    h->head = head; h->head.len = 0;
    h->line = line; h->line.len = 0;
    h->data = data; h->data.len = 0;
    h->body = body; h->body.len = 0;
}


void
bench_http_free(bench_http_t *h)
{
    free(h->head.data);
    free(h->line.data);
    free(h->data.data);
    free(h->body.data);
    bench_http_init(h);
}


static int
bench_http_fail(bench_http_t *h, const char *why)
{
    h->error = why;
    return BENCH_HTTP_ERROR;
}


/* One complete SSE line (without its end). */
static int
bench_sse_line(bench_http_t *h, const char *p, size_t n, bench_sse_pt cb,
    void *ctx)
{
    const char  *v;
    size_t       vn, fn;
    int          rc;

    if (n == 0) {
        /* a blank line dispatches the message, if it had data */
        if (h->has_data) {
            rc = cb(ctx, h->event, h->data.data ? h->data.data : "",
                    h->data.len);
            h->data.len = 0;
            h->has_data = 0;
            h->event[0] = '\0';
            if (rc != 0) {
                return bench_http_fail(h, "stopped by the event handler");
            }
        }
        h->event[0] = '\0';
        return 0;
    }

    if (p[0] == ':') {
        return 0;                                   /* comment, a ping */
    }

    v = memchr(p, ':', n);
    fn = v ? (size_t) (v - p) : n;
    if (v != NULL) {
        v++;
        vn = n - fn - 1;
        if (vn > 0 && *v == ' ') {
            v++;
            vn--;
        }

    } else {
        v = "";
        vn = 0;
    }

    if (fn == 4 && memcmp(p, "data", 4) == 0) {
        if (h->data.len + vn > BENCH_HTTP_MAX_EVENT) {
            return bench_http_fail(h, "SSE event over 16 MB");
        }
        if ((h->has_data && bench_buf_append(&h->data, "\n", 1) != 0)
            || bench_buf_append(&h->data, v, vn) != 0)
        {
            return bench_http_fail(h, "out of memory");
        }
        h->has_data = 1;

    } else if (fn == 5 && memcmp(p, "event", 5) == 0) {
        vn = vn < sizeof(h->event) - 1 ? vn : sizeof(h->event) - 1;
        memcpy(h->event, v, vn);
        h->event[vn] = '\0';
    }

    /* id:, retry: and unknown fields are ignored, as the format says */
    return 0;
}


/* Body bytes of a 200 response: split into SSE lines. */
static int
bench_sse_feed(bench_http_t *h, const char *p, size_t n, bench_sse_pt cb,
    void *ctx)
{
    const char  *end = p + n, *nl;
    size_t       k;
    int          rc;

    while (p < end) {
        if (h->pending_cr) {
            /* the CR ending the previous read may pair with this LF */
            h->pending_cr = 0;
            if (*p == '\n') {
                p++;
                continue;
            }
        }

        for (nl = p; nl < end && *nl != '\n' && *nl != '\r'; nl++) {
            /* find the line end */
        }

        if (nl == end) {
            if (h->line.len + (size_t) (end - p) > BENCH_HTTP_MAX_EVENT) {
                return bench_http_fail(h, "SSE line over 16 MB");
            }
            if (bench_buf_append(&h->line, p, end - p) != 0) {
                return bench_http_fail(h, "out of memory");
            }
            return 0;
        }

        if (h->line.len > 0) {
            if (bench_buf_append(&h->line, p, nl - p) != 0) {
                return bench_http_fail(h, "out of memory");
            }
            k = h->line.len;
            h->line.len = 0;
            rc = bench_sse_line(h, h->line.data, k, cb, ctx);

        } else {
            rc = bench_sse_line(h, p, nl - p, cb, ctx);
        }
        if (rc != 0) {
            return rc;
        }

        if (*nl == '\r') {
            if (nl + 1 < end) {
                p = nl + (nl[1] == '\n' ? 2 : 1);

            } else {
                h->pending_cr = 1;
                p = end;
            }

        } else {
            p = nl + 1;
        }
    }

    return 0;
}


static int
bench_http_body(bench_http_t *h, const char *p, size_t n, bench_sse_pt cb,
    void *ctx)
{
    size_t  keep;

    if (h->status == 200) {
        return bench_sse_feed(h, p, n, cb, ctx);
    }

    keep = BENCH_HTTP_MAX_ERROR - h->body.len;
    keep = n < keep ? n : keep;
    if (keep > 0 && bench_buf_append(&h->body, p, keep) != 0) {
        return bench_http_fail(h, "out of memory");
    }

    return 0;
}


static int
bench_http_header_is(const char *line, size_t n, const char *name,
    const char **value)
{
    size_t  k = strlen(name);

    if (n <= k || line[k] != ':' || strncasecmp(line, name, k) != 0) {
        return 0;
    }

    line += k + 1;
    while (*line == ' ' || *line == '\t') {
        line++;
    }
    *value = line;

    return 1;
}


static int
bench_http_parse_head(bench_http_t *h)
{
    char        *p = h->head.data, *eol, *v;
    const char  *value;
    int          minor;
    size_t       n;

    eol = strchr(p, '\n');
    if (eol == NULL || strncmp(p, "HTTP/1.", 7) != 0
        || !isdigit((unsigned char) p[7]) || p[8] != ' '
        || !isdigit((unsigned char) p[9]) || !isdigit((unsigned char) p[10])
        || !isdigit((unsigned char) p[11]))
    {
        return bench_http_fail(h, "malformed status line");
    }

    minor = p[7] - '0';
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    h->keep_alive = minor >= 1;

    for (p = eol + 1; *p != '\0'; p = eol + 1) {
        eol = strchr(p, '\n');
        if (eol == NULL) {
            break;
        }
        n = eol - p;
        if (n > 0 && p[n - 1] == '\r') {
            n--;
        }
        if (n == 0) {
            break;
        }
        p[n] = '\0';

        if (bench_http_header_is(p, n, "content-length", &value)) {
            h->content_length = strtoll(value, &v, 10);
            if (v == value || h->content_length < 0) {
                return bench_http_fail(h, "malformed Content-Length");
            }

        } else if (bench_http_header_is(p, n, "transfer-encoding", &value)) {
            if (strcasestr(value, "chunked") != NULL) {
                h->chunked = 1;
            }

        } else if (bench_http_header_is(p, n, "connection", &value)) {
            if (strcasestr(value, "close") != NULL) {
                h->keep_alive = 0;
            } else if (strcasestr(value, "keep-alive") != NULL) {
                h->keep_alive = 1;
            }
        }
    }

    if (h->status == 204 || h->status == 304) {
        h->state = BENCH_HTTP_END;

    } else if (h->chunked) {
        h->state = BENCH_HTTP_CHUNK_SIZE;

    } else if (h->content_length >= 0) {
        h->remaining = (uint64_t) h->content_length;
        h->state = h->remaining ? BENCH_HTTP_BODY_LEN : BENCH_HTTP_END;

    } else {
        h->state = BENCH_HTTP_BODY_CLOSE;
        h->keep_alive = 0;
    }

    h->head.len = 0;

    return 0;
}


/* Appends bytes to h->head up to one LF; *used how many were taken. */
static int
bench_http_take_line(bench_http_t *h, const char *p, size_t n, size_t *used,
    int *complete)
{
    const char  *nl = memchr(p, '\n', n);
    size_t       k = nl ? (size_t) (nl - p) + 1 : n;

    if (h->head.len + k > 256) {
        return bench_http_fail(h, "chunk size line too long");
    }
    if (bench_buf_append(&h->head, p, k) != 0) {
        return bench_http_fail(h, "out of memory");
    }

    *used = k;
    *complete = nl != NULL;

    return 0;
}


int
bench_http_feed(bench_http_t *h, const char *p, size_t n, bench_sse_pt cb,
    void *ctx)
{
    const char  *end = p + n, *hdr_end;
    size_t       k, used, start, take;
    char        *e;
    int          rc, complete;

    if (n > 0) {
        h->has_bytes = 1;
    }

    while (p < end) {
        switch (h->state) {

        case BENCH_HTTP_HEAD:
            /* take at most what the head may still grow by: a first read
             * often holds the headers and many body bytes after them */
            start = h->head.len > 3 ? h->head.len - 3 : 0;
            take = end - p;
            if (take > BENCH_HTTP_MAX_HEAD - h->head.len) {
                take = BENCH_HTTP_MAX_HEAD - h->head.len;
            }
            if (bench_buf_append(&h->head, p, take) != 0) {
                return bench_http_fail(h, "out of memory");
            }

            hdr_end = strstr(h->head.data + start, "\r\n\r\n");
            if (hdr_end != NULL) {
                k = hdr_end + 4 - h->head.data;
            } else {
                hdr_end = strstr(h->head.data + start, "\n\n");
                if (hdr_end == NULL) {
                    if (h->head.len >= BENCH_HTTP_MAX_HEAD) {
                        return bench_http_fail(h,
                                               "response headers over 64 KB");
                    }
                    p += take;
                    break;
                }
                k = hdr_end + 2 - h->head.data;
            }

            /* the bytes of this input after the head go to the body */
            p += take - (h->head.len - k);
            h->head.len = k;
            h->head.data[k] = '\0';

            if (bench_http_parse_head(h) != 0) {
                return BENCH_HTTP_ERROR;
            }

            if (h->status >= 100 && h->status < 200) {
                /* interim response (100 Continue): the real one follows */
                h->status = 0;
                h->state = BENCH_HTTP_HEAD;
                h->chunked = 0;
                h->content_length = -1;
            }
            break;

        case BENCH_HTTP_BODY_LEN:
        case BENCH_HTTP_CHUNK_DATA:
            k = end - p;
            k = k < h->remaining ? k : (size_t) h->remaining;
            rc = bench_http_body(h, p, k, cb, ctx);
            if (rc != 0) {
                return rc;
            }
            p += k;
            h->remaining -= k;
            if (h->remaining == 0) {
                /* a chunk's data ends in CRLF; a Content-Length body ends */
                h->state = h->state == BENCH_HTTP_CHUNK_DATA
                           ? BENCH_HTTP_CHUNK_CRLF : BENCH_HTTP_END;
            }
            break;

        case BENCH_HTTP_BODY_CLOSE:
            rc = bench_http_body(h, p, end - p, cb, ctx);
            if (rc != 0) {
                return rc;
            }
            p = end;
            break;

        case BENCH_HTTP_CHUNK_SIZE:
        case BENCH_HTTP_TRAILER:
            if (bench_http_take_line(h, p, end - p, &used, &complete) != 0) {
                return BENCH_HTTP_ERROR;
            }
            p += used;
            if (!complete) {
                break;
            }

            if (h->state == BENCH_HTTP_TRAILER) {
                /* trailer fields end at an empty line */
                if (h->head.len <= 2) {
                    h->state = BENCH_HTTP_END;
                }
                h->head.len = 0;
                break;
            }

            h->remaining = strtoull(h->head.data, &e, 16);
            if (e == h->head.data || (*e != '\r' && *e != '\n' && *e != ';'
                                      && *e != ' ' && *e != '\t'))
            {
                return bench_http_fail(h, "malformed chunk size");
            }
            if (h->remaining > BENCH_HTTP_MAX_EVENT) {
                return bench_http_fail(h, "chunk over 16 MB");
            }
            h->head.len = 0;
            h->state = h->remaining ? BENCH_HTTP_CHUNK_DATA
                                    : BENCH_HTTP_TRAILER;
            break;

        case BENCH_HTTP_CHUNK_CRLF:
            if (*p == '\r') {
                p++;
            } else if (*p == '\n') {
                p++;
                h->state = BENCH_HTTP_CHUNK_SIZE;
            } else {
                return bench_http_fail(h, "missing CRLF after chunk");
            }
            break;

        case BENCH_HTTP_END:
            /* we never pipeline, so nothing may follow a response */
            return bench_http_fail(h, "bytes after the end of the response");
        }
    }

    if (h->state == BENCH_HTTP_END) {
        /* an SSE body may end without a blank line: dispatch the rest */
        if (h->status == 200) {
            rc = bench_http_eof(h, cb, ctx);
            return rc == BENCH_HTTP_ERROR ? rc : BENCH_HTTP_DONE;
        }
        return BENCH_HTTP_DONE;
    }

    return BENCH_HTTP_AGAIN;
}


int
bench_http_eof(bench_http_t *h, bench_sse_pt cb, void *ctx)
{
    size_t  k;
    int     rc;

    if (h->state != BENCH_HTTP_END && h->state != BENCH_HTTP_BODY_CLOSE) {
        return bench_http_fail(h, h->has_bytes
                               ? "connection closed mid-response"
                               : "connection closed before any response");
    }

    h->state = BENCH_HTTP_END;

    if (h->status == 200) {
        if (h->line.len > 0) {
            k = h->line.len;
            h->line.len = 0;
            rc = bench_sse_line(h, h->line.data, k, cb, ctx);
            if (rc != 0) {
                return rc;
            }
        }
        rc = bench_sse_line(h, "", 0, cb, ctx);
        if (rc != 0) {
            return rc;
        }
    }

    return BENCH_HTTP_DONE;
}
