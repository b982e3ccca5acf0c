/*
 * ngx_http_kimi_ops_module: the operator's side of the kimi gateway.
 *
 * Owns:   the ops directives and conf structs, the per-request record
 *         (created at access, accounted once at finalize or cleanup), and
 *         the hooks declared in ngx_http_kimi_ops.h.
 * Never:  talks to the engine or parses the request body; API keys live
 *         in ngx_http_kimi_keys.c, metrics in ngx_http_kimi_metrics.c,
 *         log variables in ngx_http_kimi_variables.c.
 *
 * Where the checks run.  `kimi_api_keys` installs an access-phase handler,
 * the way auth_basic does, so it protects any location it applies to and
 * composes with allow/deny, auth_request and `satisfy`.  Under `satisfy
 * all` (the default) a refusal is answered here with an OpenAI-shaped 401
 * or 429; under `satisfy any` only the status is returned so another
 * access module may still let the request in.  The gateway's content
 * handler calls ngx_http_kimi_ops_access() as well: it creates the record
 * where no key applies and is a no-op where the access phase already ran.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi_zone.h"
#include "ngx_http_kimi_ops_common.h"


static ngx_http_kimi_ops_req_t *ngx_http_kimi_ops_create(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_kimi_ops_access_handler(ngx_http_request_t *r);
static void ngx_http_kimi_ops_account(ngx_http_kimi_ops_req_t *ops);
static void ngx_http_kimi_ops_cleanup(void *data);

static ngx_int_t ngx_http_kimi_ops_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_kimi_ops_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_kimi_ops_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_kimi_ops_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_kimi_ops_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_kimi_api_keys(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_kimi_token_budget_zone(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_kimi_token_budget(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_kimi_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_command_t  ngx_http_kimi_ops_commands[] = {

    { ngx_string("kimi_api_keys"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_kimi_api_keys,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kimi_token_budget_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_kimi_token_budget_zone,
      0,
      0,
      NULL },

    { ngx_string("kimi_token_budget"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_kimi_token_budget,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kimi_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_kimi_metrics,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_kimi_ops_module_ctx = {
    ngx_http_kimi_ops_preconfiguration,    /* preconfiguration */
    ngx_http_kimi_ops_postconfiguration,   /* postconfiguration */

    ngx_http_kimi_ops_create_main_conf,    /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_kimi_ops_create_loc_conf,     /* create location configuration */
    ngx_http_kimi_ops_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_kimi_ops_module = {
    NGX_MODULE_V1,
    &ngx_http_kimi_ops_module_ctx,         /* module context */
    ngx_http_kimi_ops_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_kimi_ops_finish_names[] = {
    ngx_string(""),
    ngx_string("stop"),
    ngx_string("length"),
    ngx_string("tool_calls"),
    ngx_string("abort"),
    ngx_string("error")
};


ngx_int_t
ngx_http_kimi_ops_access(ngx_http_request_t *r)
{
    ngx_http_kimi_ops_req_t       *ops;
    ngx_http_kimi_ops_loc_conf_t  *klcf;

    ops = ngx_http_get_module_ctx(r, ngx_http_kimi_ops_module);

    if (ops == NULL) {
        ops = ngx_http_kimi_ops_create(r);
        if (ops == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kimi_ops_module);

    if (klcf->keys == NULL || ops->checked) {
        return NGX_DECLINED;
    }

    /* the access phase did not run for this location (or request) */

    ops->checked = 1;

    return ngx_http_kimi_keys_check(r, klcf, ops, 1);
}


ngx_http_kimi_ops_req_t *
ngx_http_kimi_ops_req(ngx_http_request_t *r)
{
    return ngx_http_get_module_ctx(r, ngx_http_kimi_ops_module);
}


static ngx_http_kimi_ops_req_t *
ngx_http_kimi_ops_create(ngx_http_request_t *r)
{
    uint64_t                  now, elapsed_ms;
    ngx_time_t               *tp;
    ngx_msec_int_t            ms;
    ngx_http_cleanup_t       *cln;
    ngx_http_kimi_ops_req_t  *ops;

    ops = ngx_pcalloc(r->pool, sizeof(ngx_http_kimi_ops_req_t));
    if (ops == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     ops->model = { 0, NULL };
     *     ops->request_id = { 0, NULL };
     *     ops->prompt_tokens = 0;
     *     ops->finish = NGX_HTTP_KIMI_OPS_FINISH_NONE;
     *     ops->first_token_ns = 0;
     *     ops->key = NULL;
     *     ops->checked = 0;
     *     ops->finalized = 0;
     */

    ops->request = r;
    ops->engine_rank = -1;

    /*
     * TTFT and e2e latency count from the request's arrival, as vLLM's do
     * from its frontend; r->start_* has millisecond resolution, so the
     * time already spent (reading headers) is taken off a monotonic stamp.
     */

    now = ngx_http_kimi_ops_now_ns();
    tp = ngx_timeofday();
    ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                           + (tp->msec - r->start_msec));
    elapsed_ms = ms > 0 ? (uint64_t) ms : 0;
    ops->arrival_ns = now > elapsed_ms * 1000000 ? now - elapsed_ms * 1000000
                                                 : now;

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_kimi_ops_cleanup;
    cln->data = ops;

    ops->loc_conf = ngx_http_get_module_loc_conf(r, ngx_http_kimi_ops_module);

    ngx_http_set_ctx(r, ops, ngx_http_kimi_ops_module);

    return ops;
}


static ngx_int_t
ngx_http_kimi_ops_access_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_http_kimi_ops_req_t       *ops;
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_kimi_ops_loc_conf_t  *klcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kimi_ops_module);

    if (klcf->keys == NULL) {
        return NGX_DECLINED;
    }

    ops = ngx_http_get_module_ctx(r, ngx_http_kimi_ops_module);

    if (ops == NULL) {
        ops = ngx_http_kimi_ops_create(r);
        if (ops == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ops->checked = 1;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->satisfy != NGX_HTTP_SATISFY_ALL) {
        /* only the verdict: another access module may still allow */
        rc = ngx_http_kimi_keys_check(r, klcf, ops, 0);
        return (rc == NGX_DECLINED) ? NGX_OK : rc;
    }

    rc = ngx_http_kimi_keys_check(r, klcf, ops, 1);

    if (rc == NGX_DECLINED) {
        return NGX_OK;
    }

    /*
     * The 401/429 went out here, so the phase engine must stop: the
     * request is finalized as a content handler's would be, and NGX_DONE
     * tells ngx_http_core_access_phase() that somebody else owns it now.
     */

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


void
ngx_http_kimi_ops_tokens(ngx_http_request_t *r, ngx_uint_t n)
{
    uint64_t                  now, gap, each;
    ngx_uint_t                i, b;
    ngx_http_kimi_ops_req_t  *ops;

    ops = ngx_http_get_module_ctx(r, ngx_http_kimi_ops_module);

    if (ops == NULL || n == 0) {
        return;
    }

    now = ngx_http_kimi_ops_now_ns();

    ops->completion_tokens += n;

    if (ops->first_token_ns == 0) {
        /* tokens that came with the first one have no gap of their own */
        ops->first_token_ns = now;
        ops->last_token_ns = now;
        return;
    }

    /*
     * n tokens after a gap: the engine made them one step apart, the
     * doorbell coalesced them, so each is counted with an equal share.
     */

    gap = now > ops->last_token_ns ? now - ops->last_token_ns : 0;
    each = gap / n;

    b = ngx_http_kimi_metrics_itl_bucket(each);

    for (i = 0; i < n; i++) {
        ops->itl_count[b]++;
    }

    ops->itl_sum_ns += gap;
    ops->last_token_ns = now;
}


void
ngx_http_kimi_ops_finalize(ngx_http_request_t *r)
{
    ngx_http_kimi_ops_req_t  *ops;

    ops = ngx_http_get_module_ctx(r, ngx_http_kimi_ops_module);

    if (ops != NULL) {
        ngx_http_kimi_ops_account(ops);
    }
}


static void
ngx_http_kimi_ops_cleanup(void *data)
{
    ngx_http_kimi_ops_req_t  *ops = data;

    ngx_http_kimi_ops_account(ops);
}


static void
ngx_http_kimi_ops_account(ngx_http_kimi_ops_req_t *ops)
{
    uint64_t    now;
    ngx_uint_t  status;

    /*
     * A request that never reached the engine ran nothing and is billed
     * nothing; it is not marked final either, because cleanup handlers run
     * last-registered first and the gateway may still report the outcome
     * from its own cleanup, after this one.
     */

    if (ops->finalized || ops->engine_rank < 0) {
        return;
    }

    ops->finalized = 1;

    status = ops->request->headers_out.status;

    if (ops->first_token_ns == 0
        && status >= NGX_HTTP_BAD_REQUEST
        && status != NGX_HTTP_CLIENT_CLOSED_REQUEST)
    {
        /*
         * The engine refused it (queue full, too long) or failed before
         * the first token, and the client got the error status: nothing
         * was served, so nothing is billed or counted, as for a request
         * refused before submission.
         */
        ops->engine_rank = -1;
        return;
    }

    if (ops->finish == NGX_HTTP_KIMI_OPS_FINISH_NONE) {
        /* cleanup without a finalize: the client or a timeout ended it */
        ops->finish = NGX_HTTP_KIMI_OPS_FINISH_ABORT;
    }

    now = ngx_http_kimi_ops_now_ns();
    ops->end_ns = now;

    if (ops->key != NULL) {
        ngx_http_kimi_keys_debit(ops->request, ops->loc_conf, ops,
                                 (int64_t) (ops->prompt_tokens
                                            + ops->completion_tokens));
    }

    ngx_http_kimi_metrics_observe(ops->request, ops, now);
}


ngx_int_t
ngx_http_kimi_ops_add_engine(ngx_conf_t *cf, kimi_shm_t *shm)
{
    kimi_shm_t                     **p;
    ngx_http_kimi_ops_main_conf_t   *kmcf;

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_kimi_ops_module);

    p = ngx_array_push(&kmcf->engines);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *p = shm;

    return NGX_OK;
}


ngx_str_t *
ngx_http_kimi_ops_finish_name(ngx_http_kimi_ops_finish_e finish)
{
    if ((ngx_uint_t) finish
        >= sizeof(ngx_http_kimi_ops_finish_names) / sizeof(ngx_str_t))
    {
        return &ngx_http_kimi_ops_finish_names[0];
    }

    return &ngx_http_kimi_ops_finish_names[finish];
}


uint64_t
ngx_http_kimi_ops_now_ns(void)
{
    struct timespec  ts;

    /* the engine stamps slots with CLOCK_MONOTONIC too */
    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}


static ngx_int_t
ngx_http_kimi_ops_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_kimi_ops_add_variables(cf);
}


static ngx_int_t
ngx_http_kimi_ops_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt            *h;
    ngx_http_core_main_conf_t      *cmcf;
    ngx_http_kimi_ops_main_conf_t  *kmcf;

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_kimi_ops_module);

    if (ngx_http_kimi_metrics_zone_add(cf, kmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_kimi_ops_access_handler;

    return NGX_OK;
}


static void *
ngx_http_kimi_ops_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_kimi_ops_main_conf_t  *kmcf;

    kmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_ops_main_conf_t));
    if (kmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     kmcf->metrics_zone = NULL;
     */

    if (ngx_array_init(&kmcf->engines, cf->pool, 2, sizeof(kimi_shm_t *))
        != NGX_OK
        || ngx_array_init(&kmcf->budget_zones, cf->pool, 2,
                          sizeof(ngx_shm_zone_t *))
           != NGX_OK
        || ngx_array_init(&kmcf->models, cf->pool, 4,
                          sizeof(ngx_http_kimi_metrics_model_t))
           != NGX_OK)
    {
        return NULL;
    }

    return kmcf;
}


static void *
ngx_http_kimi_ops_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_kimi_ops_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_ops_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->keys = NGX_CONF_UNSET_PTR;
    conf->budget_zone = NGX_CONF_UNSET_PTR;

    return conf;
}


static char *
ngx_http_kimi_ops_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_kimi_ops_loc_conf_t *prev = parent;
    ngx_http_kimi_ops_loc_conf_t *conf = child;

    /* no keys file: the location is open, as without auth_basic */
    ngx_conf_merge_ptr_value(conf->keys, prev->keys, NULL);
    ngx_conf_merge_ptr_value(conf->budget_zone, prev->budget_zone, NULL);

    /* budgets that nobody enforces would be a silent lie */
    if (conf->keys != NULL && conf->keys->has_budgets
        && conf->budget_zone == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "kimi_api_keys \"%V\" gives keys token budgets "
                           "but no \"kimi_token_budget\" zone applies here",
                           &conf->keys->file);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_kimi_api_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kimi_ops_loc_conf_t *klcf = conf;

    ngx_str_t  *value;

    if (klcf->keys != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        klcf->keys = NULL;
        return NGX_CONF_OK;
    }

    return ngx_http_kimi_keys_load(cf, &value[1], &klcf->keys);
}


static char *
ngx_http_kimi_token_budget_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ssize_t                         size;
    ngx_str_t                      *value, name;
    ngx_shm_zone_t                 *zone, **zp;
    ngx_http_kimi_ops_main_conf_t  *kmcf;

    value = cf->args->elts;

    if (ngx_http_kimi_zone_arg(cf, &value[1], &name, &size) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_kimi_budget_zone_add(cf, &name, size, &zone)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_kimi_ops_module);

    zp = ngx_array_push(&kmcf->budget_zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = zone;

    return NGX_CONF_OK;
}


static char *
ngx_http_kimi_token_budget(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kimi_ops_loc_conf_t *klcf = conf;

    ngx_str_t  *value;

    if (klcf->budget_zone != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        klcf->budget_zone = NULL;
        return NGX_CONF_OK;
    }

    /* size 0: refer to a zone kimi_token_budget_zone defines (or will) */
    klcf->budget_zone = ngx_shared_memory_add(cf, &value[1], 0,
                                              &ngx_http_kimi_ops_module);
    if (klcf->budget_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_kimi_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler != NULL) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_kimi_metrics_handler;

    return NGX_CONF_OK;
}
