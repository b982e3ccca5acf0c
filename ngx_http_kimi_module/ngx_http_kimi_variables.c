/*
 * $kimi_* variables for log_format, add_header and map.
 *
 * Owns:   the variable table and its getters over ngx_http_kimi_ops_req_t.
 * Never:  caches a value (a request's numbers change until it ends) or
 *         exposes a secret ($kimi_api_key_id is the id from the keys file).
 *
 * A variable is "not found" (logged as "-") when the fact does not exist:
 * no record (the location is not a kimi one), the request never reached
 * the engine (token counts and times), no first token yet, no key.
 * Times are milliseconds with three decimals (to the microsecond), as
 * $request_time is seconds with three.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi_ops_common.h"


typedef enum {
    NGX_HTTP_KIMI_VAR_PROMPT_TOKENS = 0,
    NGX_HTTP_KIMI_VAR_COMPLETION_TOKENS,
    NGX_HTTP_KIMI_VAR_TOTAL_TOKENS,
    NGX_HTTP_KIMI_VAR_CACHED_TOKENS,
    NGX_HTTP_KIMI_VAR_TTFT,
    NGX_HTTP_KIMI_VAR_TPOT,
    NGX_HTTP_KIMI_VAR_QUEUE_TIME,
    NGX_HTTP_KIMI_VAR_DURATION,
    NGX_HTTP_KIMI_VAR_FINISH_REASON,
    NGX_HTTP_KIMI_VAR_ENGINE_RANK,
    NGX_HTTP_KIMI_VAR_MODEL,
    NGX_HTTP_KIMI_VAR_REQUEST_ID,
    NGX_HTTP_KIMI_VAR_API_KEY_ID,
    NGX_HTTP_KIMI_VAR_BUDGET_REMAINING
} ngx_http_kimi_var_e;


static ngx_int_t ngx_http_kimi_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static u_char *ngx_http_kimi_variable_ms(u_char *p, uint64_t ns);


static ngx_http_variable_t  ngx_http_kimi_vars[] = {

    { ngx_string("kimi_prompt_tokens"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_PROMPT_TOKENS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_completion_tokens"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_COMPLETION_TOKENS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_total_tokens"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_TOTAL_TOKENS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_cached_tokens"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_CACHED_TOKENS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_ttft"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_TTFT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_tpot"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_TPOT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_queue_time"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_QUEUE_TIME, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_duration"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_DURATION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_finish_reason"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_FINISH_REASON, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_engine_rank"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_ENGINE_RANK, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_model"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_MODEL, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_request_id"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_REQUEST_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_api_key_id"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_API_KEY_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("kimi_budget_remaining"), NULL, ngx_http_kimi_variable,
      NGX_HTTP_KIMI_VAR_BUDGET_REMAINING, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_kimi_ops_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_kimi_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char                   *p;
    uint64_t                  end, ns;
    ngx_str_t                *s;
    ngx_http_kimi_ops_req_t  *ops;

    ops = ngx_http_get_module_ctx(r, ngx_http_kimi_ops_module);

    if (ops == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    /* the longest value: an int64, or a time with its fraction */
    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + sizeof(".000000"));
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;
    s = NULL;

    if (ops->engine_rank < 0 && data <= NGX_HTTP_KIMI_VAR_DURATION) {
        /* counts and times exist only for what reached the engine */
        goto not_found;
    }

    switch ((ngx_http_kimi_var_e) data) {

    case NGX_HTTP_KIMI_VAR_PROMPT_TOKENS:
        p = ngx_sprintf(p, "%ui", ops->prompt_tokens);
        break;

    case NGX_HTTP_KIMI_VAR_COMPLETION_TOKENS:
        p = ngx_sprintf(p, "%ui", ops->completion_tokens);
        break;

    case NGX_HTTP_KIMI_VAR_TOTAL_TOKENS:
        p = ngx_sprintf(p, "%ui",
                        ops->prompt_tokens + ops->completion_tokens);
        break;

    case NGX_HTTP_KIMI_VAR_CACHED_TOKENS:
        p = ngx_sprintf(p, "%ui", ops->cached_tokens);
        break;

    case NGX_HTTP_KIMI_VAR_TTFT:
        if (ops->first_token_ns == 0) {
            goto not_found;
        }

        ns = ops->first_token_ns > ops->arrival_ns
             ? ops->first_token_ns - ops->arrival_ns : 0;
        p = ngx_http_kimi_variable_ms(p, ns);
        break;

    case NGX_HTTP_KIMI_VAR_TPOT:
        /* mean time per output token after the first, as vLLM defines it */
        if (ops->first_token_ns == 0 || ops->completion_tokens < 2) {
            goto not_found;
        }

        ns = (ops->last_token_ns - ops->first_token_ns)
             / (ops->completion_tokens - 1);
        p = ngx_http_kimi_variable_ms(p, ns);
        break;

    case NGX_HTTP_KIMI_VAR_QUEUE_TIME:
        if (ops->engine_rank < 0) {
            goto not_found;
        }

        p = ngx_http_kimi_variable_ms(p, ops->queue_ns);
        break;

    case NGX_HTTP_KIMI_VAR_DURATION:
        /* arrival to the last token (or now, while still running) */
        end = ops->end_ns ? ops->end_ns : ngx_http_kimi_ops_now_ns();
        p = ngx_http_kimi_variable_ms(p, end > ops->arrival_ns
                                         ? end - ops->arrival_ns : 0);
        break;

    case NGX_HTTP_KIMI_VAR_FINISH_REASON:
        if (ops->finish == NGX_HTTP_KIMI_OPS_FINISH_NONE) {
            goto not_found;
        }

        s = ngx_http_kimi_ops_finish_name(ops->finish);
        break;

    case NGX_HTTP_KIMI_VAR_ENGINE_RANK:
        if (ops->engine_rank < 0) {
            goto not_found;
        }

        p = ngx_sprintf(p, "%i", ops->engine_rank);
        break;

    case NGX_HTTP_KIMI_VAR_MODEL:
        s = &ops->model;
        break;

    case NGX_HTTP_KIMI_VAR_REQUEST_ID:
        s = &ops->request_id;
        break;

    case NGX_HTTP_KIMI_VAR_API_KEY_ID:
        if (ops->key == NULL) {
            goto not_found;
        }

        s = &ops->key->id;
        break;

    case NGX_HTTP_KIMI_VAR_BUDGET_REMAINING:
        if (!ops->has_budget) {
            goto not_found;
        }

        p = ngx_sprintf(p, "%L", ops->budget_left > 0 ? ops->budget_left
                                                      : (int64_t) 0);
        break;

    default:
        goto not_found;
    }

    if (s != NULL) {
        if (s->len == 0) {
            goto not_found;
        }

        v->data = s->data;
        v->len = s->len;

    } else {
        v->len = p - v->data;
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;

not_found:

    v->not_found = 1;

    return NGX_OK;
}


static u_char *
ngx_http_kimi_variable_ms(u_char *p, uint64_t ns)
{
    return ngx_sprintf(p, "%uL.%03uL", ns / 1000000, ns % 1000000 / 1000);
}
