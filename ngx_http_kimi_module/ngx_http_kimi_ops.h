/*
 * The operations side of the kimi gateway: API keys, token budgets,
 * Prometheus metrics and log variables.  This header is the seam between
 * the gateway (ngx_http_kimi_module) and ngx_http_kimi_ops_module.
 *
 * Owns:   the hooks the gateway calls at fixed points of a request, and
 *         the per-request record they fill (ngx_http_kimi_ops_req_t).
 * Never:  touches the engine slot, reads the request body, or sends a
 *         response other than a 401/429 refusal and GET /metrics.
 *
 * How it is built.  ngx_http_kimi_ops_module is a second ngx_module_t in
 * the same .so (auto/module takes several names; the first names the .so).
 * It has its own directives, conf structs, variables (preconfiguration)
 * and shared zones, so the gateway's command table and conf never mention
 * them.  `config` compiles every .c file of this folder and, when
 * ngx_http_kimi_ops_module.c exists, sets
 *
 *     ngx_module_name="ngx_http_kimi_module ngx_http_kimi_ops_module"
 *
 * and defines NGX_HTTP_KIMI_OPS, under which the gateway calls the hooks
 * below.  Metrics read the engine's rank records through kimi_shm_rank()
 * (engine/shm/kimi_shm.c, linked into the module anyway).
 *
 * What the gateway calls, in the order a request meets them:
 *
 *   1. content handler, before reading the body and before any engine
 *      work:
 *
 *          rc = ngx_http_kimi_ops_access(r);
 *          if (rc != NGX_DECLINED) {
 *              return rc;          -- 401 or 429 was sent, or an error
 *          }
 *
 *      It creates the request's record (arrival time) and registers a
 *      cleanup, so a request that ends on any path is accounted once.
 *      The Bearer key and budget checks themselves run earlier, in the
 *      access phase (ops registers the handler, as auth_basic does), so
 *      they compose with allow/deny, auth_request and `satisfy`; here
 *      they run only where that phase did not (it never does for a
 *      location without `kimi_api_keys`).
 *
 *   2. as facts become known, write them into the record:
 *
 *          ops = ngx_http_kimi_ops_req(r);      -- NULL: access not called
 *          ops->model = <served model name>;    -- pool memory of r or conf
 *          ops->request_id = <"chatcmpl-...">;
 *          ops->engine_rank = <rank submitted to>;
 *          ops->prompt_tokens = <n prompt ids>;
 *
 *   3. every time new tokens reach the worker (one doorbell may deliver
 *      several): ngx_http_kimi_ops_tokens(r, n).  It stamps first-token
 *      time and keeps inter-token gaps in the record (no shared memory is
 *      touched per token).
 *
 *   4. when the engine says DONE (or the request fails after submission):
 *      set ops->finish, ops->queue_ns (slot.queue_ns), ops->cached_tokens,
 *      and if the engine's count differs, ops->completion_tokens; then
 *      ngx_http_kimi_ops_finalize(r).  It debits the key's budget with
 *      prompt + completion tokens and adds the request to the metrics.
 *      Calling it twice is harmless; not calling it is covered by the
 *      cleanup (finish NONE then counts as ABORT).  A request whose
 *      response status is an error and that got no token (the engine
 *      refused it) is neither billed nor counted, like one that never
 *      reached the engine (engine_rank -1).
 *
 *   5. once per engine the gateway attaches, at configuration time:
 *
 *          ngx_http_kimi_ops_add_engine(cf, &engine->shm);
 *
 *      where the kimi_shm_t lives as long as the cycle and the gateway
 *      keeps it current in each worker (hdr == NULL while detached).
 *      GET /metrics reads running/waiting/KV gauges from its rank records,
 *      after calling ngx_http_kimi_engine_get() (ngx_http_kimi.h) so that
 *      a scrape attaches a worker that has not served a kimi request yet
 *      and notices a restarted engine, as a request would.
 */

#ifndef _NGX_HTTP_KIMI_OPS_H_INCLUDED_
#define _NGX_HTTP_KIMI_OPS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "../engine/shm/kimi_shm.h"


/* vLLM's inter-token latency buckets (seconds); 19 bounds plus +Inf */
#define NGX_HTTP_KIMI_OPS_ITL_BUCKETS  20


/* What ended a request, as the OpenAI response said it. */
typedef enum {
    NGX_HTTP_KIMI_OPS_FINISH_NONE = 0,     /* never reached the engine */
    NGX_HTTP_KIMI_OPS_FINISH_STOP,         /* "stop" */
    NGX_HTTP_KIMI_OPS_FINISH_LENGTH,       /* "length" */
    NGX_HTTP_KIMI_OPS_FINISH_TOOL_CALLS,   /* "tool_calls" (engine: stop) */
    NGX_HTTP_KIMI_OPS_FINISH_ABORT,        /* client gone, cancelled, drain */
    NGX_HTTP_KIMI_OPS_FINISH_ERROR         /* engine or gateway error */
} ngx_http_kimi_ops_finish_e;


typedef struct ngx_http_kimi_key_s  ngx_http_kimi_key_t;


/* One request's operational record; ngx_http_kimi_ops_req() returns it. */
typedef struct {
    /* written by the gateway */
    ngx_str_t                   model;         /* served name, "" unknown */
    ngx_str_t                   request_id;    /* "chatcmpl-..." */
    ngx_int_t                   engine_rank;   /* -1 until submitted */
    ngx_uint_t                  prompt_tokens;
    ngx_uint_t                  cached_tokens; /* prefix-cache hits */
    ngx_uint_t                  completion_tokens; /* ops_tokens() counts */
    ngx_http_kimi_ops_finish_e  finish;
    uint64_t                    queue_ns;      /* engine: submit->schedule */

    /* written by ops only; the gateway may read them */
    ngx_http_request_t         *request;
    void                       *loc_conf;      /* where the key was checked */
    uint64_t                    arrival_ns;    /* CLOCK_MONOTONIC */
    uint64_t                    first_token_ns;
    uint64_t                    last_token_ns;
    uint64_t                    end_ns;
    uint64_t                    itl_sum_ns;
    uint32_t                    itl_count[NGX_HTTP_KIMI_OPS_ITL_BUCKETS];
    ngx_http_kimi_key_t        *key;           /* matched key, NULL if none */
    int64_t                     budget_left;   /* whole tokens, has_budget */
    unsigned                    checked:1;     /* key check ran */
    unsigned                    finalized:1;
    unsigned                    has_budget:1;
} ngx_http_kimi_ops_req_t;


/*
 * Content phase, before the body is read.  NGX_DECLINED: go on.  Anything
 * else is what the content handler returns unchanged: the 401 or 429 was
 * sent (body discarded), or NGX_HTTP_INTERNAL_SERVER_ERROR.
 */
ngx_int_t ngx_http_kimi_ops_access(ngx_http_request_t *r);

/* The record created by ngx_http_kimi_ops_access(), or NULL. */
ngx_http_kimi_ops_req_t *ngx_http_kimi_ops_req(ngx_http_request_t *r);

/* n new tokens reached this worker now (n may be 0: no-op). */
void ngx_http_kimi_ops_tokens(ngx_http_request_t *r, ngx_uint_t n);

/* The request is over: debit the budget, observe the metrics.  Once. */
void ngx_http_kimi_ops_finalize(ngx_http_request_t *r);

/* Configuration time: an engine whose rank records /metrics shows. */
ngx_int_t ngx_http_kimi_ops_add_engine(ngx_conf_t *cf, kimi_shm_t *shm);

/* Lower-case OpenAI finish_reason, or "" for NONE. */
ngx_str_t *ngx_http_kimi_ops_finish_name(ngx_http_kimi_ops_finish_e finish);


extern ngx_module_t  ngx_http_kimi_ops_module;


#endif /* _NGX_HTTP_KIMI_OPS_H_INCLUDED_ */
