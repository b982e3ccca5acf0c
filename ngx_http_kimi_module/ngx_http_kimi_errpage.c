/*
 * OpenAI-style JSON for the errors nginx itself answers in a kimi_pass
 * location: a body over client_max_body_size (413), a body that timed out
 * (408), a method or URI nginx refuses, a handler that returned a bare
 * status.  nginx sends its HTML page for those; an OpenAI client expects
 * {"error": {...}} like every other error of the API.
 *
 * Owns:   a header filter that, for a special response (r->err_status)
 *         in a kimi_pass location, swaps the HTML page for JSON, and the
 *         body filter that drops the page's buffers in its favour.  The
 *         same header filter names every response of such a location with
 *         X-Request-Id (ngx_http_kimi_request_id_header()): filters see
 *         all of them, the module's own, the keys' 401 and nginx's.
 * Never:  touches responses the module built (they are JSON already and
 *         carry no err_status), an operator's error_page (an error page
 *         is a redirect: it runs with err_status reset by nginx), or
 *         locations without kimi_pass.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


typedef struct {
    ngx_uint_t  sent;                      /* our body went out */
    ngx_buf_t  *body;
} ngx_http_kimi_errpage_ctx_t;


extern ngx_module_t  ngx_http_kimi_errpage_module;

static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;

static ngx_http_kimi_errpage_ctx_t *
ngx_http_kimi_errpage_ctx(ngx_http_request_t *r, ngx_uint_t create);


static const char *
ngx_http_kimi_errpage_message(ngx_http_request_t *r, ngx_uint_t status,
    u_char *buf, size_t size)
{
    ngx_http_core_loc_conf_t  *clcf;

    switch (status) {

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
        ngx_snprintf(buf, size, "the request body is larger than this"
                     " server accepts (client_max_body_size %O bytes)%Z",
                     clcf->client_max_body_size);
        return (const char *) buf;

    case NGX_HTTP_REQUEST_TIME_OUT:
        return "the request body did not arrive in time";
    case NGX_HTTP_NOT_ALLOWED:
        return "method not allowed";
    case NGX_HTTP_REQUEST_URI_TOO_LARGE:
        return "the request URI is too long";
    case NGX_HTTP_REQUEST_HEADER_TOO_LARGE:
        return "a request header is too large";
    case NGX_HTTP_LENGTH_REQUIRED:
        return "a request body needs Content-Length or chunked encoding";
    case NGX_HTTP_NOT_FOUND:
        return "not found";
    case NGX_HTTP_FORBIDDEN:
        return "forbidden";
    case NGX_HTTP_UNAUTHORIZED:
        return "unauthorized";
    case NGX_HTTP_TOO_MANY_REQUESTS:
        return "too many requests";
    case NGX_HTTP_SERVICE_UNAVAILABLE:
        return "the service is unavailable";
    case NGX_HTTP_BAD_GATEWAY:
        return "bad gateway";
    case NGX_HTTP_GATEWAY_TIME_OUT:
        return "gateway timeout";
    }

    return status >= 500 ? "internal server error" : "bad request";
}


static ngx_int_t
ngx_http_kimi_errpage_header_filter(ngx_http_request_t *r)
{
    u_char                       msg[160], *p;
    size_t                       len, mlen;
    const char                  *m, *type;
    ngx_uint_t                   status;
    ngx_http_kimi_loc_conf_t    *klcf;
    ngx_http_kimi_errpage_ctx_t *ctx;

    status = r->err_status;
    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kimi_module);

    if (klcf == NULL || klcf->pass != 1 || r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    if (ngx_http_kimi_request_id_header(r) != NGX_OK) {
        return NGX_ERROR;
    }

    if (status < NGX_HTTP_BAD_REQUEST
        || r->headers_out.content_type.len != 9
        || ngx_strncmp(r->headers_out.content_type.data, "text/html", 9)
           != 0)
    {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_kimi_errpage_ctx(r, 1);
    if (ctx == NULL) {
        return ngx_http_next_header_filter(r);
    }

    m = ngx_http_kimi_errpage_message(r, status, msg, sizeof(msg));
    mlen = ngx_strlen(m);
    type = status >= 500 ? "server_error" : "invalid_request_error";

    len = sizeof("{\"error\":{\"message\":\"\",\"type\":\"\",\"param\":null,"
                 "\"code\":}}\n") - 1
          + ngx_http_kimi_json_escape_len((const u_char *) m, mlen)
          + ngx_strlen(type) + NGX_INT_T_LEN;

    ctx->body = ngx_create_temp_buf(r->pool, len);
    if (ctx->body == NULL) {
        return NGX_ERROR;
    }

    p = ctx->body->last;
    p = ngx_cpymem(p, "{\"error\":{\"message\":\"", 21);
    p = ngx_http_kimi_json_escape(p, (const u_char *) m, mlen);
    p = ngx_sprintf(p, "\",\"type\":\"%s\",\"param\":null,\"code\":%ui}}\n",
                    type, status);
    ctx->body->last = p;
    ctx->body->last_buf = 1;
    ctx->body->last_in_chain = 1;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = p - ctx->body->pos;
    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "kimi: %ui answered by nginx: %s", status, m);

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_kimi_errpage_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_chain_t                   out;
    ngx_http_kimi_errpage_ctx_t  *ctx;

    ctx = ngx_http_kimi_errpage_ctx(r, 0);

    if (ctx == NULL || ctx->body == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /* nginx's HTML page: dropped, our JSON goes once in its place */
    if (ctx->sent || in == NULL) {
        return ctx->sent ? NGX_OK : ngx_http_next_body_filter(r, in);
    }

    ctx->sent = 1;
    out.buf = ctx->body;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


static ngx_http_kimi_errpage_ctx_t *
ngx_http_kimi_errpage_ctx(ngx_http_request_t *r, ngx_uint_t create)
{
    ngx_http_kimi_errpage_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_kimi_errpage_module);
    if (ctx != NULL || !create) {
        return ctx;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_kimi_errpage_ctx_t));
    if (ctx != NULL) {
        ngx_http_set_ctx(r, ctx, ngx_http_kimi_errpage_module);
    }

    return ctx;
}


static ngx_int_t
ngx_http_kimi_errpage_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_kimi_errpage_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_kimi_errpage_body_filter;

    return NGX_OK;
}


static ngx_http_module_t  ngx_http_kimi_errpage_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_kimi_errpage_init,            /* postconfiguration */
    NULL, NULL, NULL, NULL, NULL, NULL
};


ngx_module_t  ngx_http_kimi_errpage_module = {
    NGX_MODULE_V1,
    &ngx_http_kimi_errpage_module_ctx,     /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NGX_MODULE_V1_PADDING
};
