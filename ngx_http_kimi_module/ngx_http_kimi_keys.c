/*
 * API keys and per-key token budgets.
 *
 * Owns:   the kimi_api_keys file format and parser, Bearer matching, the
 *         token buckets in kimi_token_budget_zone zones, and the
 *         OpenAI-shaped 401/429 answers.
 * Never:  keeps or logs a secret: a key is known by its SHA-1 digest and
 *         shown by its id; never locks a zone more than once per arrival
 *         and once per finalize.
 *
 * File: one key per line, `ID SECRET [TOKENS/PERIOD]`, `#` starts a
 * comment.  ID is what logs ($kimi_api_key_id) and metrics show; SECRET is
 * what clients send as `Authorization: Bearer SECRET`; TOKENS/PERIOD
 * (e.g. 200000/1h, 5000000/1d) is the key's budget.  The file is read when
 * the configuration is, so `nginx -s reload` picks up changes; budgets
 * already spent survive the reload because they are kept by key id in the
 * shared zone.
 *
 * Budget semantics (a token bucket): a key starts with TOKENS and refills
 * continuously at TOKENS per PERIOD, never above TOKENS.  A request is
 * admitted while at least one whole token is left; its real usage (prompt
 * + completion tokens) is debited when it ends, so concurrent requests
 * may overdraw.  The debt is capped at one full bucket, which bounds a
 * key's lock-out to one PERIOD.  A refused request gets 429 and a
 * Retry-After of the seconds until one token has refilled.  Requests on
 * a stored response (/v1/responses/{id}: GET, DELETE, .../input_items,
 * .../cancel) make no tokens and are not refused: a key that spent its
 * budget on background responses still reads, cancels and deletes them.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>

#include "ngx_http_kimi_ops_common.h"


#define NGX_HTTP_KIMI_KEYS_FILE_MAX  (16 * 1024 * 1024)
#define NGX_HTTP_KIMI_BUDGET_MAX     1000000000000LL   /* tokens per period */


typedef struct {
    u_char                      color;
    u_char                      len;         /* of id */
    u_short                     padding;
    ngx_msec_t                  last;        /* ngx_current_msec of refill */
    ngx_msec_t                  period;      /* from the key, last seen */
    int64_t                     capacity;    /* tokens, from the key */
    int64_t                     balance;     /* milli-tokens */
    u_char                      id[1];
} ngx_http_kimi_budget_node_t;


static ngx_int_t ngx_http_kimi_keys_parse_line(ngx_conf_t *cf,
    ngx_str_t *file, ngx_uint_t line, u_char *p, u_char *last,
    ngx_array_t *keys);
static int ngx_libc_cdecl ngx_http_kimi_keys_cmp_digest(const void *one,
    const void *two);
static int ngx_libc_cdecl ngx_http_kimi_keys_cmp_id(const void *one,
    const void *two);
static ngx_http_kimi_key_t *ngx_http_kimi_keys_find(ngx_http_kimi_keys_t *keys,
    ngx_str_t *secret);
static ngx_int_t ngx_http_kimi_keys_bearer(ngx_http_request_t *r,
    ngx_str_t *secret);
static ngx_uint_t ngx_http_kimi_keys_stored_response(ngx_http_request_t *r);
static ngx_http_kimi_budget_node_t *ngx_http_kimi_budget_lookup(
    ngx_http_kimi_budget_zone_t *ctx, ngx_http_kimi_key_t *key);
static void ngx_http_kimi_budget_refill(ngx_http_kimi_budget_node_t *bn,
    ngx_http_kimi_key_t *key, ngx_msec_t now);
static int64_t ngx_http_kimi_budget_peek(ngx_http_kimi_budget_node_t *bn,
    ngx_msec_t now);
static void ngx_http_kimi_budget_evict_full(ngx_http_kimi_budget_zone_t *ctx,
    ngx_msec_t now);
static void ngx_http_kimi_budget_rbtree_insert_value(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_kimi_budget_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_kimi_keys_ratelimit_headers(ngx_http_request_t *r,
    ngx_http_kimi_key_t *key, int64_t left);
static ngx_int_t ngx_http_kimi_keys_respond(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *json, time_t retry_after);


ngx_int_t
ngx_http_kimi_keys_check(ngx_http_request_t *r,
    ngx_http_kimi_ops_loc_conf_t *klcf, ngx_http_kimi_ops_req_t *ops,
    ngx_uint_t respond)
{
    u_char                       *p;
    time_t                        retry;
    int64_t                       need, per_period;
    ngx_str_t                     secret, json;
    ngx_msec_t                    now;
    ngx_http_kimi_key_t          *key;
    ngx_http_kimi_budget_node_t  *bn;
    ngx_http_kimi_budget_zone_t  *ctx;

    static ngx_str_t  missing = ngx_string(
        "{\"error\":{\"message\":\"No API key was sent: send it in the "
        "Authorization header as 'Bearer YOUR_KEY'.\","
        "\"type\":\"invalid_request_error\",\"param\":null,"
        "\"code\":\"invalid_api_key\"}}\n");

    static ngx_str_t  invalid = ngx_string(
        "{\"error\":{\"message\":\"Incorrect API key provided.\","
        "\"type\":\"invalid_request_error\",\"param\":null,"
        "\"code\":\"invalid_api_key\"}}\n");

    if (ngx_http_kimi_keys_bearer(r, &secret) != NGX_OK) {
        ngx_http_kimi_metrics_reject(r, NGX_HTTP_KIMI_REJECT_MISSING);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "kimi: no Bearer API key sent");

        return respond ? ngx_http_kimi_keys_respond(r, NGX_HTTP_UNAUTHORIZED,
                                                    &missing, 0)
                       : NGX_HTTP_UNAUTHORIZED;
    }

    key = ngx_http_kimi_keys_find(klcf->keys, &secret);

    if (key == NULL) {
        ngx_http_kimi_metrics_reject(r, NGX_HTTP_KIMI_REJECT_INVALID);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "kimi: unknown API key");

        return respond ? ngx_http_kimi_keys_respond(r, NGX_HTTP_UNAUTHORIZED,
                                                    &invalid, 0)
                       : NGX_HTTP_UNAUTHORIZED;
    }

    ops->key = key;
    ops->loc_conf = klcf;

    if (key->budget == 0 || klcf->budget_zone == NULL
        || ngx_http_kimi_keys_stored_response(r))
    {
        return NGX_DECLINED;
    }

    ctx = klcf->budget_zone->data;
    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    bn = ngx_http_kimi_budget_lookup(ctx, key);

    if (bn == NULL) {
        ngx_http_kimi_budget_evict_full(ctx, now);
        bn = ngx_http_kimi_budget_lookup(ctx, key);
    }

    if (bn == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);

        ngx_log_error(NGX_LOG_CRIT, r->connection->log, 0,
                      "kimi_token_budget_zone \"%V\" is full: "
                      "make it larger", &ctx->name);

        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_kimi_budget_refill(bn, key, now);

    need = NGX_HTTP_KIMI_MILLI - bn->balance;
    ops->budget_left = bn->balance / NGX_HTTP_KIMI_MILLI;
    ops->has_budget = 1;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (need <= 0) {
        ngx_http_kimi_keys_ratelimit_headers(r, key, ops->budget_left);
        return NGX_DECLINED;
    }

    /* seconds until one whole token has refilled, rounded up */

    per_period = key->budget * NGX_HTTP_KIMI_MILLI;    /* milli-tokens */
    retry = (time_t) (((double) need * key->period / per_period + 999)
                      / 1000);
    if (retry < 1) {
        retry = 1;
    }

    ngx_http_kimi_metrics_reject(r, NGX_HTTP_KIMI_REJECT_BUDGET);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "kimi: token budget of key \"%V\" is spent, "
                  "retry in %T s", &key->id, retry);

    if (!respond) {
        return NGX_HTTP_TOO_MANY_REQUESTS;
    }

    json.data = ngx_pnalloc(r->pool, 512 + key->id.len);
    if (json.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* ids are [A-Za-z0-9._:@-], nothing to escape in JSON */

    p = ngx_sprintf(json.data,
                    "{\"error\":{\"message\":\"Token budget of API key '%V' "
                    "is spent (%L tokens per %M s); retry in %T s.\","
                    "\"type\":\"tokens\",\"param\":null,"
                    "\"code\":\"rate_limit_exceeded\"}}\n",
                    &key->id, key->budget, key->period / 1000, retry);
    json.len = p - json.data;

    ngx_http_kimi_keys_ratelimit_headers(r, key, ops->budget_left);

    return ngx_http_kimi_keys_respond(r, NGX_HTTP_TOO_MANY_REQUESTS, &json,
                                      retry);
}


/*
 * r names a stored response (/v1/responses/{id} and what is under it, at
 * the end of any location's prefix): reading, cancelling or deleting it
 * makes no tokens, so a spent budget does not refuse it.  POST
 * /v1/responses itself (a new response) is not one.
 */
static ngx_uint_t
ngx_http_kimi_keys_stored_response(ngx_http_request_t *r)
{
    u_char  *p, *last;

    static const char  prefix[] = "/v1/responses/";

    last = r->uri.data + r->uri.len;
    p = ngx_strlcasestrn(r->uri.data, last, (u_char *) prefix,
                         sizeof(prefix) - 2);

    return p != NULL && last - p > (ssize_t) sizeof(prefix) - 1;
}


void
ngx_http_kimi_keys_debit(ngx_http_request_t *r,
    ngx_http_kimi_ops_loc_conf_t *klcf, ngx_http_kimi_ops_req_t *ops,
    int64_t tokens)
{
    ngx_msec_t                    now;
    ngx_http_kimi_key_t          *key;
    ngx_http_kimi_budget_node_t  *bn;
    ngx_http_kimi_budget_zone_t  *ctx;

    key = ops->key;

    if (klcf == NULL || key == NULL || key->budget == 0
        || klcf->budget_zone == NULL || tokens <= 0)
    {
        return;
    }

    ctx = klcf->budget_zone->data;
    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    bn = ngx_http_kimi_budget_lookup(ctx, key);

    if (bn != NULL) {
        ngx_http_kimi_budget_refill(bn, key, now);

        bn->balance -= tokens * NGX_HTTP_KIMI_MILLI;

        /* debt is capped at one bucket: a lock-out lasts one period */
        if (bn->balance < -bn->capacity * NGX_HTTP_KIMI_MILLI) {
            bn->balance = -bn->capacity * NGX_HTTP_KIMI_MILLI;
        }

        ops->budget_left = bn->balance / NGX_HTTP_KIMI_MILLI;
        ops->has_budget = 1;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (bn == NULL) {
        ngx_log_error(NGX_LOG_CRIT, r->connection->log, 0,
                      "kimi_token_budget_zone \"%V\" is full: %L tokens of "
                      "key \"%V\" not debited", &ctx->name, tokens, &key->id);
    }
}


/* Bearer credentials (RFC 6750 2.1): scheme is case-insensitive. */

static ngx_int_t
ngx_http_kimi_keys_bearer(ngx_http_request_t *r, ngx_str_t *secret)
{
    u_char     *p, *last;
    ngx_str_t  *v;

    if (r->headers_in.authorization == NULL) {
        return NGX_DECLINED;
    }

    v = &r->headers_in.authorization->value;

    if (v->len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(v->data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1)
           != 0)
    {
        return NGX_DECLINED;
    }

    p = v->data + sizeof("Bearer ") - 1;
    last = v->data + v->len;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    if (p == last) {
        return NGX_DECLINED;
    }

    secret->data = p;
    secret->len = last - p;

    return NGX_OK;
}


/*
 * Keys are found by the SHA-1 of the secret, so the lookup's timing says
 * nothing about the secrets' bytes.
 */

static ngx_http_kimi_key_t *
ngx_http_kimi_keys_find(ngx_http_kimi_keys_t *keys, ngx_str_t *secret)
{
    u_char       digest[NGX_HTTP_KIMI_DIGEST_LEN];
    ngx_int_t    rc;
    ngx_uint_t   lo, hi, mid;
    ngx_sha1_t   sha1;

    if (secret->len > NGX_HTTP_KIMI_KEY_MAX_LEN) {
        return NULL;
    }

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, secret->data, secret->len);
    ngx_sha1_final(digest, &sha1);

    lo = 0;
    hi = keys->nkeys;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        rc = ngx_memcmp(digest, keys->keys[mid].digest,
                        NGX_HTTP_KIMI_DIGEST_LEN);

        if (rc == 0) {
            return &keys->keys[mid];
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return NULL;
}


static void
ngx_http_kimi_keys_ratelimit_headers(ngx_http_request_t *r,
    ngx_http_kimi_key_t *key, int64_t left)
{
    ngx_table_elt_t  *h;

    /* the names OpenAI's API uses, so client libraries can read them */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "x-ratelimit-limit-tokens");
    h->value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (h->value.data == NULL) {
        h->hash = 0;
        return;
    }
    h->value.len = ngx_sprintf(h->value.data, "%L", key->budget)
                   - h->value.data;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "x-ratelimit-remaining-tokens");
    h->value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (h->value.data == NULL) {
        h->hash = 0;
        return;
    }
    h->value.len = ngx_sprintf(h->value.data, "%L", left > 0 ? left : 0)
                   - h->value.data;
}


static ngx_int_t
ngx_http_kimi_keys_respond(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *json, time_t retry_after)
{
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = json->len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;

    if (status == NGX_HTTP_UNAUTHORIZED) {
        ngx_str_set(&h->key, "WWW-Authenticate");
        ngx_str_set(&h->value, "Bearer realm=\"kimi\"");

    } else {
        ngx_str_set(&h->key, "Retry-After");
        h->value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
        if (h->value.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        h->value.len = ngx_sprintf(h->value.data, "%T", retry_after)
                       - h->value.data;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = json->data;
    b->last = json->data + json->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, &out);
}


/* ---- the file --------------------------------------------------------- */

char *
ngx_http_kimi_keys_load(ngx_conf_t *cf, ngx_str_t *name,
    ngx_http_kimi_keys_t **keysp)
{
    u_char                 *buf, *p, *eol, *last;
    off_t                   size;
    ssize_t                 n;
    ngx_fd_t                fd;
    ngx_str_t               file;
    ngx_uint_t              line, i;
    ngx_array_t             keys;
    ngx_file_info_t         fi;
    ngx_http_kimi_key_t    *k, **byid;
    ngx_http_kimi_keys_t   *kk;

    file = *name;

    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &file);
        return NGX_CONF_ERROR;
    }

    buf = NULL;
    size = 0;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%V\" failed", &file);
        goto failed;
    }

    size = ngx_file_size(&fi);

    if (size > NGX_HTTP_KIMI_KEYS_FILE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is larger than %d bytes", &file,
                           NGX_HTTP_KIMI_KEYS_FILE_MAX);
        goto failed;
    }

    if (fi.st_mode & S_IROTH) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"%V\" holds API keys and is world-readable",
                           &file);
    }

    buf = ngx_pnalloc(cf->temp_pool, (size_t) size + 1);
    if (buf == NULL) {
        goto failed;
    }

    n = ngx_read_fd(fd, buf, (size_t) size);

    if (n != (ssize_t) size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, n == -1 ? ngx_errno : 0,
                           ngx_read_fd_n " \"%V\" returned %z of %O bytes",
                           &file, n, size);
        goto failed;
    }

    ngx_close_file(fd);
    fd = NGX_INVALID_FILE;

    if (ngx_array_init(&keys, cf->pool, 16, sizeof(ngx_http_kimi_key_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    last = buf + size;
    line = 0;

    for (p = buf; p < last; p = eol + 1) {
        line++;

        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            eol = last;
        }

        if (ngx_http_kimi_keys_parse_line(cf, &file, line, p, eol, &keys)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    kk = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_keys_t));
    if (kk == NULL) {
        return NGX_CONF_ERROR;
    }

    kk->file = file;
    kk->keys = keys.elts;
    kk->nkeys = keys.nelts;

    if (kk->nkeys == 0) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"%V\" holds no keys: every request will get 401",
                           &file);
    }

    ngx_qsort(kk->keys, kk->nkeys, sizeof(ngx_http_kimi_key_t),
              ngx_http_kimi_keys_cmp_digest);

    for (i = 0; i < kk->nkeys; i++) {
        if (kk->keys[i].budget) {
            kk->has_budgets = 1;
        }

        if (i > 0
            && ngx_memcmp(kk->keys[i].digest, kk->keys[i - 1].digest,
                          NGX_HTTP_KIMI_DIGEST_LEN)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": keys \"%V\" and \"%V\" have the same "
                               "secret", &file, &kk->keys[i - 1].id,
                               &kk->keys[i].id);
            return NGX_CONF_ERROR;
        }
    }

    /* ids name budgets and log lines: they must be unique too */

    if (kk->nkeys > 1) {
        byid = ngx_palloc(cf->temp_pool,
                          kk->nkeys * sizeof(ngx_http_kimi_key_t *));
        if (byid == NULL) {
            return NGX_CONF_ERROR;
        }

        for (i = 0; i < kk->nkeys; i++) {
            byid[i] = &kk->keys[i];
        }

        ngx_qsort(byid, kk->nkeys, sizeof(ngx_http_kimi_key_t *),
                  ngx_http_kimi_keys_cmp_id);

        for (i = 1; i < kk->nkeys; i++) {
            k = byid[i];

            if (k->id.len == byid[i - 1]->id.len
                && ngx_strncmp(k->id.data, byid[i - 1]->id.data, k->id.len)
                   == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": key id \"%V\" appears twice",
                                   &file, &k->id);
                return NGX_CONF_ERROR;
            }
        }
    }

    *keysp = kk;

    return NGX_CONF_OK;

failed:

    if (fd != NGX_INVALID_FILE) {
        ngx_close_file(fd);
    }

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_kimi_keys_parse_line(ngx_conf_t *cf, ngx_str_t *file,
    ngx_uint_t line, u_char *p, u_char *last, ngx_array_t *keys)
{
    u_char               *s, *slash;
    ngx_int_t             tokens;
    ngx_str_t             field[4], period;
    ngx_uint_t            n, i;
    ngx_sha1_t            sha1;
    ngx_http_kimi_key_t  *key;

    n = 0;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == '\r')) {
            p++;
        }

        if (p == last || *p == '#') {
            break;
        }

        if (n == 4) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" line %ui: too many fields, expected "
                               "ID SECRET [TOKENS/PERIOD]", file, line);
            return NGX_ERROR;
        }

        s = p;

        while (p < last && *p != ' ' && *p != '\t' && *p != '\r') {
            p++;
        }

        field[n].data = s;
        field[n].len = p - s;
        n++;
    }

    if (n == 0) {
        return NGX_OK;
    }

    if (n < 2 || n > 3) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" line %ui: expected ID SECRET "
                           "[TOKENS/PERIOD]", file, line);
        return NGX_ERROR;
    }

    if (field[0].len > NGX_HTTP_KIMI_KEY_ID_LEN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" line %ui: key id longer than %d",
                           file, line, NGX_HTTP_KIMI_KEY_ID_LEN);
        return NGX_ERROR;
    }

    for (i = 0; i < field[0].len; i++) {
        if (!(isalnum(field[0].data[i]) || field[0].data[i] == '.'
              || field[0].data[i] == '_' || field[0].data[i] == '-'
              || field[0].data[i] == ':' || field[0].data[i] == '@'))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" line %ui: key id \"%V\" may hold only "
                               "letters, digits and . _ - : @",
                               file, line, &field[0]);
            return NGX_ERROR;
        }
    }

    if (field[1].len < NGX_HTTP_KIMI_KEY_MIN_LEN
        || field[1].len > NGX_HTTP_KIMI_KEY_MAX_LEN)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" line %ui: the secret of key \"%V\" must "
                           "be %d to %d characters", file, line, &field[0],
                           NGX_HTTP_KIMI_KEY_MIN_LEN,
                           NGX_HTTP_KIMI_KEY_MAX_LEN);
        return NGX_ERROR;
    }

    for (i = 0; i < field[1].len; i++) {
        if (field[1].data[i] < 0x21 || field[1].data[i] > 0x7e) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" line %ui: the secret of key \"%V\" "
                               "holds a character that is not printable "
                               "ASCII", file, line, &field[0]);
            return NGX_ERROR;
        }
    }

    key = ngx_array_push(keys);
    if (key == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(key, sizeof(ngx_http_kimi_key_t));

    key->id.len = field[0].len;
    key->id.data = ngx_pstrdup(cf->pool, &field[0]);
    if (key->id.data == NULL) {
        return NGX_ERROR;
    }

    key->id_hash = ngx_crc32_short(key->id.data, key->id.len);

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, field[1].data, field[1].len);
    ngx_sha1_final(key->digest, &sha1);

    if (n == 2) {
        return NGX_OK;
    }

    slash = ngx_strlchr(field[2].data, field[2].data + field[2].len, '/');

    if (slash == NULL) {
        goto invalid;
    }

    tokens = ngx_atoi(field[2].data, slash - field[2].data);

    period.data = slash + 1;
    period.len = field[2].data + field[2].len - period.data;

    key->period = ngx_parse_time(&period, 0);

    /* the bound keeps tokens in milli-tokens far from int64 overflow */
    if (tokens == NGX_ERROR || tokens == 0
        || tokens > NGX_HTTP_KIMI_BUDGET_MAX
        || key->period == (ngx_msec_t) NGX_ERROR || key->period == 0)
    {
        goto invalid;
    }

    key->budget = tokens;

    return NGX_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\" line %ui: invalid budget \"%V\", expected "
                       "TOKENS/PERIOD such as 100000/1h (TOKENS from 1 to "
                       "10^12)", file, line, &field[2]);
    return NGX_ERROR;
}


static int ngx_libc_cdecl
ngx_http_kimi_keys_cmp_digest(const void *one, const void *two)
{
    const ngx_http_kimi_key_t  *a = one;
    const ngx_http_kimi_key_t  *b = two;

    return ngx_memcmp(a->digest, b->digest, NGX_HTTP_KIMI_DIGEST_LEN);
}


static int ngx_libc_cdecl
ngx_http_kimi_keys_cmp_id(const void *one, const void *two)
{
    ngx_http_kimi_key_t *const  *a = one;
    ngx_http_kimi_key_t *const  *b = two;

    ngx_int_t  rc;

    rc = ngx_memn2cmp((*a)->id.data, (*b)->id.data, (*a)->id.len,
                      (*b)->id.len);

    return (int) rc;
}


/* ---- the budget zone ---------------------------------------------------- */

char *
ngx_http_kimi_budget_zone_add(ngx_conf_t *cf, ngx_str_t *name, ssize_t size,
    ngx_shm_zone_t **zonep)
{
    ngx_shm_zone_t               *shm_zone;
    ngx_http_kimi_budget_zone_t  *ctx;

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_budget_zone_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    ctx->name = *name;

    shm_zone = ngx_shared_memory_add(cf, name, size,
                                     &ngx_http_kimi_ops_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "kimi_token_budget_zone \"%V\" is already defined",
                           name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_kimi_budget_init_zone;
    shm_zone->data = ctx;

    *zonep = shm_zone;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_kimi_budget_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_kimi_budget_zone_t  *octx = data;

    size_t                        len;
    ngx_http_kimi_budget_zone_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        /* reload: keep the balances, they are keyed by key id */
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_alloc(ctx->shpool, sizeof(ngx_http_kimi_budget_sh_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    ngx_http_kimi_budget_rbtree_insert_value);

    len = sizeof(" in kimi_token_budget_zone \"\"") + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in kimi_token_budget_zone \"%V\"%Z",
                &shm_zone->shm.name);

    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


/* Finds or creates the key's bucket.  Zone mutex held. */

static ngx_http_kimi_budget_node_t *
ngx_http_kimi_budget_lookup(ngx_http_kimi_budget_zone_t *ctx,
    ngx_http_kimi_key_t *key)
{
    size_t                        size;
    ngx_int_t                     rc;
    ngx_rbtree_node_t            *node, *sentinel;
    ngx_http_kimi_budget_node_t  *bn;

    node = ctx->sh->rbtree.root;
    sentinel = ctx->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (key->id_hash < node->key) {
            node = node->left;
            continue;
        }

        if (key->id_hash > node->key) {
            node = node->right;
            continue;
        }

        bn = (ngx_http_kimi_budget_node_t *) &node->color;

        rc = ngx_memn2cmp(key->id.data, bn->id, key->id.len,
                          (size_t) bn->len);

        if (rc == 0) {
            return bn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_kimi_budget_node_t, id)
           + key->id.len;

    node = ngx_slab_alloc_locked(ctx->shpool, size);
    if (node == NULL) {
        return NULL;
    }

    node->key = key->id_hash;

    bn = (ngx_http_kimi_budget_node_t *) &node->color;

    bn->len = (u_char) key->id.len;
    ngx_memcpy(bn->id, key->id.data, key->id.len);

    /* a new key starts with a full bucket */
    bn->capacity = key->budget;
    bn->period = key->period;
    bn->balance = key->budget * NGX_HTTP_KIMI_MILLI;
    bn->last = ngx_current_msec;

    ngx_rbtree_insert(&ctx->sh->rbtree, node);

    return bn;
}


static void
ngx_http_kimi_budget_refill(ngx_http_kimi_budget_node_t *bn,
    ngx_http_kimi_key_t *key, ngx_msec_t now)
{
    /* a reload may have changed the key's budget: the new one applies */
    bn->capacity = key->budget;
    bn->period = key->period;

    bn->balance = ngx_http_kimi_budget_peek(bn, now);
    bn->last = now;
}


/* The balance at `now`, refilled but not stored. */

static int64_t
ngx_http_kimi_budget_peek(ngx_http_kimi_budget_node_t *bn, ngx_msec_t now)
{
    double          add, full;
    ngx_msec_int_t  elapsed;

    full = (double) bn->capacity * NGX_HTTP_KIMI_MILLI;
    elapsed = (ngx_msec_int_t) (now - bn->last);

    if (elapsed <= 0 || bn->period == 0) {
        return bn->balance < (int64_t) full ? bn->balance : (int64_t) full;
    }

    /* double: capacity * 1000 * elapsed overflows int64 for big budgets */
    add = full * (double) elapsed / (double) bn->period;

    if ((double) bn->balance + add >= full) {
        return (int64_t) full;
    }

    return bn->balance + (int64_t) add;
}


/* A full bucket says no more than a missing one: those can go.  Locked. */

static void
ngx_http_kimi_budget_evict_full(ngx_http_kimi_budget_zone_t *ctx,
    ngx_msec_t now)
{
    ngx_rbtree_node_t            *node, *next, *root, *sentinel;
    ngx_http_kimi_budget_node_t  *bn;

    sentinel = ctx->sh->rbtree.sentinel;
    root = ctx->sh->rbtree.root;

    if (root == sentinel) {
        return;
    }

    for (node = ngx_rbtree_min(root, sentinel); node != NULL; node = next) {

        next = ngx_rbtree_next(&ctx->sh->rbtree, node);

        bn = (ngx_http_kimi_budget_node_t *) &node->color;

        if (ngx_http_kimi_budget_peek(bn, now)
            >= bn->capacity * NGX_HTTP_KIMI_MILLI)
        {
            ngx_rbtree_delete(&ctx->sh->rbtree, node);
            ngx_slab_free_locked(ctx->shpool, node);
        }
    }
}


static void
ngx_http_kimi_budget_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t            **p;
    ngx_http_kimi_budget_node_t   *bn, *bnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            bn = (ngx_http_kimi_budget_node_t *) &node->color;
            bnt = (ngx_http_kimi_budget_node_t *) &temp->color;

            p = (ngx_memn2cmp(bn->id, bnt->id, bn->len, bnt->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/*
 * /metrics: the samples of one family (remaining, or limit when `limit`)
 * for every bucket in the zone; Prometheus wants a family's lines
 * together, so the caller asks for each family in turn.  The zone is
 * locked while the lines are formatted into request memory: nothing in
 * between can block, and no other process can free a node under us.
 */

ngx_int_t
ngx_http_kimi_budget_render(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_uint_t limit, ngx_http_kimi_metrics_out_t *out)
{
    int64_t                       v;
    ngx_int_t                     rc;
    ngx_msec_t                    now;
    ngx_rbtree_node_t            *node, *root, *sentinel;
    ngx_http_kimi_budget_node_t  *bn;
    ngx_http_kimi_budget_zone_t  *ctx;

    ctx = zone->data;

    if (ctx == NULL || ctx->sh == NULL) {
        return NGX_OK;
    }

    now = ngx_current_msec;
    rc = NGX_OK;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    sentinel = ctx->sh->rbtree.sentinel;
    root = ctx->sh->rbtree.root;

    node = (root == sentinel) ? NULL : ngx_rbtree_min(root, sentinel);

    for ( /* void */ ; node != NULL && rc == NGX_OK;
         node = ngx_rbtree_next(&ctx->sh->rbtree, node))
    {
        bn = (ngx_http_kimi_budget_node_t *) &node->color;

        v = limit ? bn->capacity
                  : ngx_http_kimi_budget_peek(bn, now) / NGX_HTTP_KIMI_MILLI;

        rc = ngx_http_kimi_metrics_append(r, out,
                 "kimi:token_budget_%s_tokens{zone=\"%V\",key_id=\"%*s\"} "
                 "%L\n",
                 limit ? "limit" : "remaining", &ctx->name,
                 (size_t) bn->len, bn->id, v);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return rc;
}
