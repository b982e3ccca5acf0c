/*
 * Types shared by the files of ngx_http_kimi_ops_module only (the gateway
 * includes ngx_http_kimi_ops.h, never this).
 *
 * Owns:   conf structs, the API key table, the budget and metrics zone
 *         contexts, and the functions one ops file calls in another.
 * Never:  holds per-request state (that is ngx_http_kimi_ops_req_t).
 */

#ifndef _NGX_HTTP_KIMI_OPS_COMMON_H_INCLUDED_
#define _NGX_HTTP_KIMI_OPS_COMMON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi_ops.h"


#define NGX_HTTP_KIMI_KEY_ID_LEN     64     /* longest key id in the file */
#define NGX_HTTP_KIMI_KEY_MIN_LEN    8      /* shorter secrets are refused */
#define NGX_HTTP_KIMI_KEY_MAX_LEN    256
#define NGX_HTTP_KIMI_DIGEST_LEN     20     /* SHA-1 of the secret */

/* one whole token, in the milli-tokens budgets are kept in */
#define NGX_HTTP_KIMI_MILLI          1000


/* One line of a kimi_api_keys file. */
struct ngx_http_kimi_key_s {
    u_char            digest[NGX_HTTP_KIMI_DIGEST_LEN]; /* of the secret */
    ngx_str_t         id;          /* shown in logs and metrics */
    uint32_t          id_hash;     /* ngx_crc32_short(id): budget node key */
    int64_t           budget;      /* tokens per period; 0 = unlimited */
    ngx_msec_t        period;      /* refill period */
};


/* A parsed kimi_api_keys file: keys sorted by digest. */
typedef struct {
    ngx_str_t             file;
    ngx_http_kimi_key_t  *keys;
    ngx_uint_t            nkeys;
    unsigned              has_budgets:1;
} ngx_http_kimi_keys_t;


/* A kimi_token_budget_zone: token buckets by key id. */
typedef struct {
    ngx_rbtree_t          rbtree;
    ngx_rbtree_node_t     sentinel;
} ngx_http_kimi_budget_sh_t;

typedef struct {
    ngx_http_kimi_budget_sh_t  *sh;
    ngx_slab_pool_t            *shpool;
    ngx_str_t                   name;
} ngx_http_kimi_budget_zone_t;


typedef struct ngx_http_kimi_metrics_sh_s  ngx_http_kimi_metrics_sh_t;

typedef struct {
    ngx_http_kimi_metrics_sh_t  *sh;
    ngx_slab_pool_t             *shpool;
} ngx_http_kimi_metrics_zone_t;


/* A model name this worker already resolved to a metrics zone index. */
typedef struct {
    ngx_str_t             name;
    ngx_uint_t            index;
} ngx_http_kimi_metrics_model_t;


typedef struct {
    ngx_shm_zone_t       *metrics_zone;
    ngx_array_t           engines;          /* kimi_shm_t * */
    ngx_array_t           budget_zones;     /* ngx_shm_zone_t * */
    ngx_array_t           models;           /* per-worker cache, see above */
} ngx_http_kimi_ops_main_conf_t;


typedef struct {
    ngx_http_kimi_keys_t *keys;             /* NULL: no Bearer check */
    ngx_shm_zone_t       *budget_zone;      /* NULL: budgets not enforced */
} ngx_http_kimi_ops_loc_conf_t;


/* The /metrics body being built: a chain of pool buffers. */
typedef struct {
    ngx_chain_t          *first;
    ngx_chain_t          *last;
    off_t                 size;
} ngx_http_kimi_metrics_out_t;


/* rejections counted in the metrics zone */
typedef enum {
    NGX_HTTP_KIMI_REJECT_MISSING = 0,       /* no Bearer credentials */
    NGX_HTTP_KIMI_REJECT_INVALID,           /* unknown key */
    NGX_HTTP_KIMI_REJECT_BUDGET,            /* budget spent: 429 */
    NGX_HTTP_KIMI_REJECT_N
} ngx_http_kimi_reject_e;


/*
 * ngx_http_kimi_keys.c
 *
 * ngx_http_kimi_keys_check(): NGX_DECLINED when the key is good and its
 * budget not spent; otherwise, with respond, the result of sending the
 * 401/429, and without it the bare status (for `satisfy any`).
 */
char *ngx_http_kimi_keys_load(ngx_conf_t *cf, ngx_str_t *file,
    ngx_http_kimi_keys_t **keysp);
ngx_int_t ngx_http_kimi_keys_check(ngx_http_request_t *r,
    ngx_http_kimi_ops_loc_conf_t *klcf, ngx_http_kimi_ops_req_t *ops,
    ngx_uint_t respond);
void ngx_http_kimi_keys_debit(ngx_http_request_t *r,
    ngx_http_kimi_ops_loc_conf_t *klcf, ngx_http_kimi_ops_req_t *ops,
    int64_t tokens);
char *ngx_http_kimi_budget_zone_add(ngx_conf_t *cf, ngx_str_t *name,
    ssize_t size, ngx_shm_zone_t **zonep);
ngx_int_t ngx_http_kimi_budget_render(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, ngx_uint_t limit, ngx_http_kimi_metrics_out_t *out);

/* ngx_http_kimi_metrics.c */
ngx_int_t ngx_http_kimi_metrics_zone_add(ngx_conf_t *cf,
    ngx_http_kimi_ops_main_conf_t *kmcf);
ngx_uint_t ngx_http_kimi_metrics_itl_bucket(uint64_t ns);
void ngx_http_kimi_metrics_observe(ngx_http_request_t *r,
    ngx_http_kimi_ops_req_t *ops, uint64_t now_ns);
void ngx_http_kimi_metrics_reject(ngx_http_request_t *r,
    ngx_http_kimi_reject_e reason);
ngx_int_t ngx_http_kimi_metrics_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kimi_metrics_append(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out, const char *fmt, ...);

/* ngx_http_kimi_variables.c */
ngx_int_t ngx_http_kimi_ops_add_variables(ngx_conf_t *cf);

/* ngx_http_kimi_ops_module.c */
uint64_t ngx_http_kimi_ops_now_ns(void);


#endif /* _NGX_HTTP_KIMI_OPS_COMMON_H_INCLUDED_ */
