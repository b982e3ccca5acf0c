/*
 * Prometheus metrics with vLLM's names, buckets and labels.
 *
 * Owns:   the metrics zone (counters and histograms per model name, engine
 *         rank and worker shard), the per-request observation at finalize,
 *         and the GET /metrics text (Prometheus exposition format 0.0.4).
 * Never:  locks anything per token or per request: a request's numbers
 *         are added with atomic fetch-adds into its worker's own shard
 *         (cache-line aligned, so workers never share a line); the zone
 *         mutex is taken only the first time a worker sees a model name.
 *
 * Gauges (running, waiting, KV use, preemptions) are not ours to count:
 * they are read at scrape time from the rank records the engine publishes
 * in its segment (engine/shm/kimi_shm.h), for every engine the gateway
 * registered with ngx_http_kimi_ops_add_engine().
 *
 * Names and buckets follow vLLM's v1 Prometheus logger: every series has
 * the labels model_name and engine (the DP rank); histograms use vLLM's
 * bucket bounds, so dashboards and the Gateway API Inference Extension
 * read us as they read vLLM.  Token counters here count per finished
 * request (vLLM counts per engine step): a long stream shows up when it
 * ends.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"
#include "ngx_http_kimi_ops_common.h"


#define NGX_HTTP_KIMI_METRICS_ZONE      "kimi_ops_metrics"
#define NGX_HTTP_KIMI_METRICS_VERSION   1
#define NGX_HTTP_KIMI_METRICS_MODELS    8
#define NGX_HTTP_KIMI_METRICS_RANKS     KIMI_SHM_MAX_RANKS
#define NGX_HTTP_KIMI_METRICS_SHARDS    16     /* worker index modulo */
#define NGX_HTTP_KIMI_METRICS_LINE      128    /* nginx's atomics padding */
#define NGX_HTTP_KIMI_METRICS_BUF       4096

/* the most bounds any histogram has (TTFT: 22), then +Inf and the sum */
#define NGX_HTTP_KIMI_HIST_BOUNDS_MAX   22
#define NGX_HTTP_KIMI_HIST_SLOTS        (NGX_HTTP_KIMI_HIST_BOUNDS_MAX + 2)
#define NGX_HTTP_KIMI_HIST_SUM          (NGX_HTTP_KIMI_HIST_SLOTS - 1)


typedef enum {
    NGX_HTTP_KIMI_HIST_TTFT = 0,
    NGX_HTTP_KIMI_HIST_ITL,
    NGX_HTTP_KIMI_HIST_TPOT,
    NGX_HTTP_KIMI_HIST_E2E,
    NGX_HTTP_KIMI_HIST_QUEUE,
    NGX_HTTP_KIMI_HIST_DECODE,
    NGX_HTTP_KIMI_HIST_N
} ngx_http_kimi_hist_e;


/* request_success_total{finished_reason}: vLLM's engine-level reasons */
typedef enum {
    NGX_HTTP_KIMI_DONE_STOP = 0,
    NGX_HTTP_KIMI_DONE_LENGTH,
    NGX_HTTP_KIMI_DONE_ABORT,
    NGX_HTTP_KIMI_DONE_ERROR,
    NGX_HTTP_KIMI_DONE_N
} ngx_http_kimi_done_e;


typedef struct {
    const char                 *name;
    const char                 *help;
    ngx_uint_t                  n;          /* bounds, +Inf not counted */
    const char *const          *le;
    const uint64_t             *bound_ns;
} ngx_http_kimi_hist_def_t;


/* what a shard holds; the snapshot at scrape time has the same shape */
#define NGX_HTTP_KIMI_SHARD_FIELDS(type)                                      \
    type        done[NGX_HTTP_KIMI_DONE_N];                                   \
    type        prompt_tokens;                                                \
    type        generation_tokens;                                            \
    type        cached_tokens;                                                \
    type        hist[NGX_HTTP_KIMI_HIST_N][NGX_HTTP_KIMI_HIST_SLOTS];

typedef struct {
    NGX_HTTP_KIMI_SHARD_FIELDS(ngx_atomic_t)
} ngx_http_kimi_shard_body_t;

/* one worker's counters for one (model, rank), on lines of its own */
typedef union {
    ngx_http_kimi_shard_body_t  s;
    u_char                      pad[(sizeof(ngx_http_kimi_shard_body_t)
                                     + NGX_HTTP_KIMI_METRICS_LINE - 1)
                                    & ~(NGX_HTTP_KIMI_METRICS_LINE - 1)];
} ngx_http_kimi_shard_t;

typedef struct {
    NGX_HTTP_KIMI_SHARD_FIELDS(uint64_t)
    ngx_uint_t                  model;
    ngx_uint_t                  rank;
} ngx_http_kimi_snapshot_t;


typedef struct {
    ngx_atomic_t                ready;      /* name below is published */
    size_t                      len;
    u_char                      name[KIMI_SHM_NAME_LEN];
} ngx_http_kimi_metrics_name_t;

typedef union {
    ngx_atomic_t                n[NGX_HTTP_KIMI_REJECT_N];
    u_char                      pad[NGX_HTTP_KIMI_METRICS_LINE];
} ngx_http_kimi_rejects_t;

struct ngx_http_kimi_metrics_sh_s {
    ngx_uint_t                  version;
    ngx_http_kimi_metrics_name_t models[NGX_HTTP_KIMI_METRICS_MODELS];
    ngx_http_kimi_rejects_t     rejects[NGX_HTTP_KIMI_METRICS_SHARDS];
    ngx_http_kimi_shard_t       shards[NGX_HTTP_KIMI_METRICS_MODELS]
                                      [NGX_HTTP_KIMI_METRICS_RANKS]
                                      [NGX_HTTP_KIMI_METRICS_SHARDS];
};


/* One engine rank's record, copied at scrape time. */
typedef struct {
    ngx_str_t                   model;      /* label-escaped */
    ngx_uint_t                  rank;
    ngx_uint_t                  running;
    ngx_uint_t                  waiting;
    ngx_uint_t                  kv_used;
    ngx_uint_t                  kv_total;
    ngx_uint_t                  preemptions;
    ngx_uint_t                  ready;
    uint64_t                    heartbeat_age_ns;
} ngx_http_kimi_rank_view_t;


static ngx_int_t ngx_http_kimi_metrics_model(ngx_http_request_t *r,
    ngx_http_kimi_metrics_zone_t *zctx, ngx_str_t *name);
static void ngx_http_kimi_metrics_hist_add(ngx_atomic_t *h,
    ngx_http_kimi_hist_e which, uint64_t ns);
static ngx_int_t ngx_http_kimi_metrics_render(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out);
static void ngx_http_kimi_metrics_refresh(ngx_http_request_t *r);
static ngx_int_t ngx_http_kimi_metrics_render_engines(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out);
static ngx_int_t ngx_http_kimi_metrics_render_requests(ngx_http_request_t *r,
    ngx_http_kimi_metrics_zone_t *zctx, ngx_http_kimi_metrics_out_t *out);
static ngx_int_t ngx_http_kimi_metrics_render_hist(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out, ngx_http_kimi_hist_e which,
    ngx_http_kimi_snapshot_t *snap, ngx_uint_t nsnap, ngx_str_t *names);
static ngx_str_t *ngx_http_kimi_metrics_label(ngx_http_request_t *r,
    u_char *src, size_t len);
static ngx_int_t ngx_http_kimi_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);


/* vLLM: vllm/v1/metrics/loggers.py, PrometheusStatLogger */

static const char *const  ngx_http_kimi_ttft_le[] = {
    "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1",
    "0.25", "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0", "20.0",
    "40.0", "80.0", "160.0", "640.0", "2560.0"
};

static const uint64_t  ngx_http_kimi_ttft_ns[] = {
    1000000, 5000000, 10000000, 20000000, 40000000, 60000000, 80000000,
    100000000, 250000000, 500000000, 750000000, 1000000000, 2500000000,
    5000000000, 7500000000, 10000000000, 20000000000, 40000000000,
    80000000000, 160000000000, 640000000000, 2560000000000
};

static const char *const  ngx_http_kimi_itl_le[] = {
    "0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4",
    "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0",
    "80.0"
};

static const uint64_t  ngx_http_kimi_itl_ns[] = {
    10000000, 25000000, 50000000, 75000000, 100000000, 150000000,
    200000000, 300000000, 400000000, 500000000, 750000000, 1000000000,
    2500000000, 5000000000, 7500000000, 10000000000, 20000000000,
    40000000000, 80000000000
};

static const char *const  ngx_http_kimi_req_le[] = {
    "0.3", "0.5", "0.8", "1.0", "1.5", "2.0", "2.5", "5.0", "10.0", "15.0",
    "20.0", "30.0", "40.0", "50.0", "60.0", "120.0", "240.0", "480.0",
    "960.0", "1920.0", "7680.0"
};

static const uint64_t  ngx_http_kimi_req_ns[] = {
    300000000, 500000000, 800000000, 1000000000, 1500000000, 2000000000,
    2500000000, 5000000000, 10000000000, 15000000000, 20000000000,
    30000000000, 40000000000, 50000000000, 60000000000, 120000000000,
    240000000000, 480000000000, 960000000000, 1920000000000, 7680000000000
};

#define ngx_http_kimi_nelts(a)  (sizeof(a) / sizeof((a)[0]))

static const ngx_http_kimi_hist_def_t  ngx_http_kimi_hists[] = {

    { "vllm:time_to_first_token_seconds",
      "Histogram of time to first token in seconds.",
      ngx_http_kimi_nelts(ngx_http_kimi_ttft_le),
      ngx_http_kimi_ttft_le, ngx_http_kimi_ttft_ns },

    { "vllm:inter_token_latency_seconds",
      "Histogram of inter-token latency in seconds.",
      ngx_http_kimi_nelts(ngx_http_kimi_itl_le),
      ngx_http_kimi_itl_le, ngx_http_kimi_itl_ns },

    { "vllm:request_time_per_output_token_seconds",
      "Histogram of time_per_output_token_seconds per request.",
      ngx_http_kimi_nelts(ngx_http_kimi_itl_le),
      ngx_http_kimi_itl_le, ngx_http_kimi_itl_ns },

    { "vllm:e2e_request_latency_seconds",
      "Histogram of e2e request latency in seconds.",
      ngx_http_kimi_nelts(ngx_http_kimi_req_le),
      ngx_http_kimi_req_le, ngx_http_kimi_req_ns },

    { "vllm:request_queue_time_seconds",
      "Histogram of time spent in WAITING phase for request.",
      ngx_http_kimi_nelts(ngx_http_kimi_req_le),
      ngx_http_kimi_req_le, ngx_http_kimi_req_ns },

    { "vllm:request_decode_time_seconds",
      "Histogram of time spent in DECODE phase for request.",
      ngx_http_kimi_nelts(ngx_http_kimi_req_le),
      ngx_http_kimi_req_le, ngx_http_kimi_req_ns }
};

static const char *const  ngx_http_kimi_done_names[] = {
    "stop", "length", "abort", "error"
};

static const char *const  ngx_http_kimi_reject_names[] = {
    "missing", "invalid", "budget"
};


/* request counters, from the shards */

typedef struct {
    const char  *name;
    const char  *help;
    size_t       offset;
} ngx_http_kimi_counter_def_t;

static const ngx_http_kimi_counter_def_t  ngx_http_kimi_counters[] = {
    { "vllm:prompt_tokens_total", "Number of prefill tokens processed.",
      offsetof(ngx_http_kimi_snapshot_t, prompt_tokens) },
    { "vllm:generation_tokens_total",
      "Number of generation tokens processed.",
      offsetof(ngx_http_kimi_snapshot_t, generation_tokens) },
    { "vllm:prefix_cache_queries_total",
      "Prefix cache queries, in terms of number of queried tokens.",
      offsetof(ngx_http_kimi_snapshot_t, prompt_tokens) },
    { "vllm:prefix_cache_hits_total",
      "Prefix cache hits, in terms of number of cached tokens.",
      offsetof(ngx_http_kimi_snapshot_t, cached_tokens) }
};


/* the gauges read from the engines' rank records, in output order */

typedef struct {
    const char  *name;
    const char  *help;
    const char  *type;
} ngx_http_kimi_family_def_t;

static const ngx_http_kimi_family_def_t  ngx_http_kimi_rank_families[] = {
    { "vllm:num_requests_running",
      "Number of requests in model execution batches.", "gauge" },
    { "vllm:num_requests_waiting",
      "Number of requests waiting to be processed.", "gauge" },
    { "vllm:kv_cache_usage_perc",
      "KV-cache usage. 1 means 100 percent usage.", "gauge" },
    { "vllm:num_preemptions_total",
      "Cumulative number of preemption from the engine.", "counter" },
    { "kimi:engine_ready",
      "1 while the engine rank is up and admitting requests.", "gauge" },
    { "kimi:engine_heartbeat_age_seconds",
      "Seconds since the engine rank last published its heartbeat.",
      "gauge" }
};


/* ---- observation (request side) ---------------------------------------- */

ngx_uint_t
ngx_http_kimi_metrics_itl_bucket(uint64_t ns)
{
    ngx_uint_t  i;

    /* Prometheus buckets are "less than or equal" */
    for (i = 0; i < ngx_http_kimi_nelts(ngx_http_kimi_itl_ns); i++) {
        if (ns <= ngx_http_kimi_itl_ns[i]) {
            return i;
        }
    }

    return i;
}


void
ngx_http_kimi_metrics_observe(ngx_http_request_t *r,
    ngx_http_kimi_ops_req_t *ops, uint64_t now_ns)
{
    uint64_t                        span;
    ngx_int_t                       m;
    ngx_str_t                       name;
    ngx_uint_t                      i, done;
    ngx_http_kimi_shard_body_t     *st;
    ngx_http_kimi_metrics_zone_t   *zctx;
    ngx_http_kimi_ops_main_conf_t  *kmcf;

    static ngx_str_t  unknown = ngx_string("unknown");

    kmcf = ngx_http_get_module_main_conf(r, ngx_http_kimi_ops_module);

    if (kmcf->metrics_zone == NULL) {
        return;
    }

    zctx = kmcf->metrics_zone->data;

    if (zctx->sh == NULL
        || ops->engine_rank < 0
        || ops->engine_rank >= NGX_HTTP_KIMI_METRICS_RANKS)
    {
        return;
    }

    name = ops->model.len ? ops->model : unknown;

    m = ngx_http_kimi_metrics_model(r, zctx, &name);
    if (m == NGX_ERROR) {
        return;
    }

    st = &zctx->sh->shards[m][ops->engine_rank]
                 [ngx_worker % NGX_HTTP_KIMI_METRICS_SHARDS].s;

    switch (ops->finish) {

    case NGX_HTTP_KIMI_OPS_FINISH_LENGTH:
        done = NGX_HTTP_KIMI_DONE_LENGTH;
        break;

    case NGX_HTTP_KIMI_OPS_FINISH_ABORT:
        done = NGX_HTTP_KIMI_DONE_ABORT;
        break;

    case NGX_HTTP_KIMI_OPS_FINISH_ERROR:
        done = NGX_HTTP_KIMI_DONE_ERROR;
        break;

    default:
        /* tool_calls is an API-level name for an engine-level stop */
        done = NGX_HTTP_KIMI_DONE_STOP;
        break;
    }

    /*
     * Relaxed fetch-adds: a scrape may see one request half added (its
     * count before its sum), which Prometheus tolerates as it does for
     * any client library; two generations of workers with the same index
     * may add into one shard during a reload, hence atomics at all.
     */

    (void) ngx_atomic_fetch_add(&st->done[done], 1);
    (void) ngx_atomic_fetch_add(&st->prompt_tokens, ops->prompt_tokens);
    (void) ngx_atomic_fetch_add(&st->generation_tokens,
                                ops->completion_tokens);
    (void) ngx_atomic_fetch_add(&st->cached_tokens, ops->cached_tokens);

    if (ops->first_token_ns) {
        span = ops->first_token_ns > ops->arrival_ns
               ? ops->first_token_ns - ops->arrival_ns : 0;
        ngx_http_kimi_metrics_hist_add(st->hist[NGX_HTTP_KIMI_HIST_TTFT],
                                       NGX_HTTP_KIMI_HIST_TTFT, span);

        for (i = 0; i < NGX_HTTP_KIMI_OPS_ITL_BUCKETS; i++) {
            if (ops->itl_count[i]) {
                (void) ngx_atomic_fetch_add(
                           &st->hist[NGX_HTTP_KIMI_HIST_ITL][i],
                           ops->itl_count[i]);
            }
        }

        (void) ngx_atomic_fetch_add(
                   &st->hist[NGX_HTTP_KIMI_HIST_ITL][NGX_HTTP_KIMI_HIST_SUM],
                   ops->itl_sum_ns);

        span = ops->last_token_ns - ops->first_token_ns;

        ngx_http_kimi_metrics_hist_add(st->hist[NGX_HTTP_KIMI_HIST_DECODE],
                                       NGX_HTTP_KIMI_HIST_DECODE, span);

        if (ops->completion_tokens > 1) {
            ngx_http_kimi_metrics_hist_add(
                st->hist[NGX_HTTP_KIMI_HIST_TPOT], NGX_HTTP_KIMI_HIST_TPOT,
                span / (ops->completion_tokens - 1));
        }
    }

    span = now_ns > ops->arrival_ns ? now_ns - ops->arrival_ns : 0;
    ngx_http_kimi_metrics_hist_add(st->hist[NGX_HTTP_KIMI_HIST_E2E],
                                   NGX_HTTP_KIMI_HIST_E2E, span);

    ngx_http_kimi_metrics_hist_add(st->hist[NGX_HTTP_KIMI_HIST_QUEUE],
                                   NGX_HTTP_KIMI_HIST_QUEUE, ops->queue_ns);
}


static void
ngx_http_kimi_metrics_hist_add(ngx_atomic_t *h, ngx_http_kimi_hist_e which,
    uint64_t ns)
{
    ngx_uint_t                       i;
    const ngx_http_kimi_hist_def_t  *def;

    def = &ngx_http_kimi_hists[which];

    for (i = 0; i < def->n; i++) {
        if (ns <= def->bound_ns[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&h[i], 1);
    (void) ngx_atomic_fetch_add(&h[NGX_HTTP_KIMI_HIST_SUM], ns);
}


void
ngx_http_kimi_metrics_reject(ngx_http_request_t *r,
    ngx_http_kimi_reject_e reason)
{
    ngx_http_kimi_metrics_zone_t   *zctx;
    ngx_http_kimi_ops_main_conf_t  *kmcf;

    kmcf = ngx_http_get_module_main_conf(r, ngx_http_kimi_ops_module);

    if (kmcf->metrics_zone == NULL) {
        return;
    }

    zctx = kmcf->metrics_zone->data;

    if (zctx->sh == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(
        &zctx->sh->rejects[ngx_worker % NGX_HTTP_KIMI_METRICS_SHARDS]
             .n[reason], 1);
}


/*
 * The zone index of a model name.  Each worker remembers the names it
 * resolved; a new name takes the zone mutex once to find or claim a slot.
 */

static ngx_int_t
ngx_http_kimi_metrics_model(ngx_http_request_t *r,
    ngx_http_kimi_metrics_zone_t *zctx, ngx_str_t *name)
{
    ngx_int_t                        found;
    ngx_uint_t                       i;
    ngx_http_kimi_metrics_sh_t      *sh;
    ngx_http_kimi_metrics_name_t    *mn;
    ngx_http_kimi_metrics_model_t   *cached;
    ngx_http_kimi_ops_main_conf_t   *kmcf;

    kmcf = ngx_http_get_module_main_conf(r, ngx_http_kimi_ops_module);

    cached = kmcf->models.elts;

    for (i = 0; i < kmcf->models.nelts; i++) {
        if (cached[i].name.len == name->len
            && ngx_strncmp(cached[i].name.data, name->data, name->len) == 0)
        {
            return cached[i].index < NGX_HTTP_KIMI_METRICS_MODELS
                   ? (ngx_int_t) cached[i].index : NGX_ERROR;
        }
    }

    if (name->len > KIMI_SHM_NAME_LEN) {
        return NGX_ERROR;
    }

    sh = zctx->sh;
    found = NGX_ERROR;

    ngx_shmtx_lock(&zctx->shpool->mutex);

    for (i = 0; i < NGX_HTTP_KIMI_METRICS_MODELS; i++) {
        mn = &sh->models[i];

        if (!mn->ready) {
            ngx_memcpy(mn->name, name->data, name->len);
            mn->len = name->len;

            /* scrapes read names without the lock: name before flag */
            ngx_memory_barrier();
            mn->ready = 1;

            found = i;
            break;
        }

        if (mn->len == name->len
            && ngx_strncmp(mn->name, name->data, name->len) == 0)
        {
            found = i;
            break;
        }
    }

    ngx_shmtx_unlock(&zctx->shpool->mutex);

    if (found == NGX_ERROR) {
        /* remembered below as "not counted", so this is logged once */
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "kimi metrics: more than %d model names, \"%V\" is "
                      "not counted", NGX_HTTP_KIMI_METRICS_MODELS, name);
    }

    /*
     * The cache lives in the cycle's conf pool, like the worker itself;
     * names come from the engine's served name, so it stays small.
     */

    cached = ngx_array_push(&kmcf->models);
    if (cached != NULL) {
        cached->name.data = ngx_pnalloc(kmcf->models.pool, name->len);
        if (cached->name.data == NULL) {
            kmcf->models.nelts--;

        } else {
            ngx_memcpy(cached->name.data, name->data, name->len);
            cached->name.len = name->len;
            cached->index = (found == NGX_ERROR)
                            ? NGX_HTTP_KIMI_METRICS_MODELS : (ngx_uint_t) found;
        }
    }

    return found;
}


/* ---- GET /metrics ---------------------------------------------------- */

ngx_int_t
ngx_http_kimi_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_http_kimi_metrics_out_t  out;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    /* kimi_api_keys applies to /metrics too where it is configured */
    rc = ngx_http_kimi_ops_access(r);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_memzero(&out, sizeof(ngx_http_kimi_metrics_out_t));

    if (ngx_http_kimi_metrics_render(r, &out) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = out.size;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    if (out.last == NULL) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.last->buf->last_buf = (r == r->main) ? 1 : 0;
    out.last->buf->last_in_chain = 1;

    return ngx_http_output_filter(r, out.first);
}


static ngx_int_t
ngx_http_kimi_metrics_render(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out)
{
    ngx_uint_t                      i, n;
    ngx_atomic_uint_t               sum;
    ngx_shm_zone_t                **bz;
    ngx_http_kimi_metrics_zone_t   *zctx;
    ngx_http_kimi_ops_main_conf_t  *kmcf;

    kmcf = ngx_http_get_module_main_conf(r, ngx_http_kimi_ops_module);

    if (ngx_http_kimi_metrics_render_engines(r, out) != NGX_OK) {
        return NGX_ERROR;
    }

    zctx = kmcf->metrics_zone ? kmcf->metrics_zone->data : NULL;

    if (zctx != NULL && zctx->sh != NULL) {

        if (ngx_http_kimi_metrics_render_requests(r, zctx, out) != NGX_OK) {
            return NGX_ERROR;
        }

        if (ngx_http_kimi_metrics_append(r, out,
                "# HELP kimi:api_key_rejections_total Requests refused by "
                "kimi_api_keys, by reason.\n"
                "# TYPE kimi:api_key_rejections_total counter\n")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (n = 0; n < NGX_HTTP_KIMI_REJECT_N; n++) {
            sum = 0;

            for (i = 0; i < NGX_HTTP_KIMI_METRICS_SHARDS; i++) {
                sum += zctx->sh->rejects[i].n[n];
            }

            if (ngx_http_kimi_metrics_append(r, out,
                    "kimi:api_key_rejections_total{reason=\"%s\"} %uA\n",
                    ngx_http_kimi_reject_names[n], sum)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    bz = kmcf->budget_zones.elts;

    if (kmcf->budget_zones.nelts == 0) {
        return NGX_OK;
    }

    for (n = 0; n < 2; n++) {

        if (ngx_http_kimi_metrics_append(r, out, "%s",
                n == 0 ? "# HELP kimi:token_budget_remaining_tokens Tokens "
                         "left in an API key's budget now.\n"
                         "# TYPE kimi:token_budget_remaining_tokens gauge\n"
                       : "# HELP kimi:token_budget_limit_tokens An API key's "
                         "budget per period.\n"
                         "# TYPE kimi:token_budget_limit_tokens gauge\n")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (i = 0; i < kmcf->budget_zones.nelts; i++) {
            if (ngx_http_kimi_budget_render(r, bz[i], n, out) != NGX_OK) {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_metrics_render_engines(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out)
{
    u_char                            *p;
    size_t                             len;
    uint64_t                           now, hb, micro;
    uint32_t                           n_ranks, i;
    ngx_uint_t                         e, k, f;
    ngx_array_t                        views;
    kimi_shm_t                       **engines, *shm;
    kimi_shm_rank_t                   *rk;
    ngx_http_kimi_rank_view_t         *v;
    ngx_http_kimi_ops_main_conf_t     *kmcf;
    const ngx_http_kimi_family_def_t  *fam;

    kmcf = ngx_http_get_module_main_conf(r, ngx_http_kimi_ops_module);

    ngx_http_kimi_metrics_refresh(r);

    if (ngx_array_init(&views, r->pool, 8, sizeof(ngx_http_kimi_rank_view_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    now = ngx_http_kimi_ops_now_ns();
    engines = kmcf->engines.elts;

    for (e = 0; e < kmcf->engines.nelts; e++) {
        shm = engines[e];

        if (shm == NULL || shm->hdr == NULL) {
            continue;
        }

        /* geometry from our validated copy, never the peer's header */
        n_ranks = shm->n_ranks;
        len = ngx_strnlen((u_char *) shm->hdr->served_model_name,
                          KIMI_SHM_NAME_LEN);
        /* of several served names, the first (the one answers carry) */
        p = ngx_strlchr((u_char *) shm->hdr->served_model_name,
                        (u_char *) shm->hdr->served_model_name + len, ' ');
        if (p != NULL) {
            len = (size_t) (p - (u_char *) shm->hdr->served_model_name);
        }

        for (i = 0; i < n_ranks && i < KIMI_SHM_MAX_RANKS; i++) {
            rk = kimi_shm_rank(shm, i);
            if (rk == NULL) {
                break;
            }

            v = ngx_array_push(&views);
            if (v == NULL) {
                return NGX_ERROR;
            }

            v->model = *ngx_http_kimi_metrics_label(r,
                           (u_char *) shm->hdr->served_model_name, len);
            if (v->model.data == NULL) {
                return NGX_ERROR;
            }

            v->rank = i;
            v->running = atomic_load_explicit(&rk->num_running,
                                              memory_order_relaxed);
            v->waiting = atomic_load_explicit(&rk->num_waiting,
                                              memory_order_relaxed);
            v->kv_used = atomic_load_explicit(&rk->kv_blocks_used,
                                              memory_order_relaxed);
            v->kv_total = rk->kv_blocks_total;
            v->preemptions = atomic_load_explicit(&rk->num_preemptions,
                                                  memory_order_relaxed);
            v->ready = atomic_load_explicit(&rk->pid, memory_order_relaxed)
                           != 0
                       && atomic_load_explicit(&rk->state,
                                               memory_order_relaxed)
                          == KIMI_SHM_STATE_READY;
            hb = atomic_load_explicit(&rk->heartbeat_ns,
                                      memory_order_relaxed);
            v->heartbeat_age_ns = (hb && now > hb) ? now - hb : 0;
        }
    }

    if (views.nelts == 0) {
        return NGX_OK;
    }

    for (f = 0; f < ngx_http_kimi_nelts(ngx_http_kimi_rank_families); f++) {
        fam = &ngx_http_kimi_rank_families[f];

        if (ngx_http_kimi_metrics_append(r, out,
                                         "# HELP %s %s\n# TYPE %s %s\n",
                                         fam->name, fam->help,
                                         fam->name, fam->type)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        v = views.elts;

        for (k = 0; k < views.nelts; k++, v++) {

            switch (f) {

            case 0:
                micro = v->running * 1000000;
                break;

            case 1:
                micro = v->waiting * 1000000;
                break;

            case 2:
                micro = v->kv_total
                        ? (uint64_t) ngx_min(v->kv_used, v->kv_total)
                          * 1000000 / v->kv_total
                        : 0;
                break;

            case 3:
                micro = v->preemptions * 1000000;
                break;

            case 4:
                micro = v->ready * 1000000;
                break;

            default:
                micro = v->heartbeat_age_ns / 1000;
                break;
            }

            if (ngx_http_kimi_metrics_append(r, out,
                    "%s{model_name=\"%V\",engine=\"%ui\"} %uL.%06uL\n",
                    fam->name, &v->model, v->rank,
                    micro / 1000000, micro % 1000000)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/*
 * A worker attaches to the engine on its first kimi request, or notices a
 * restarted engine then; a scrape may be this worker's first request, so
 * it asks the gateway for the current attachment the same way (at most
 * one attempt per 100 ms while the engine is away).
 */

static void
ngx_http_kimi_metrics_refresh(ngx_http_request_t *r)
{
    ngx_http_kimi_main_conf_t  *gmcf;

    gmcf = ngx_http_get_module_main_conf(r, ngx_http_kimi_module);

    if (gmcf == NULL || !gmcf->used) {
        return;
    }

    (void) ngx_http_kimi_engine_get(r->connection->log);
}


static ngx_int_t
ngx_http_kimi_metrics_render_requests(ngx_http_request_t *r,
    ngx_http_kimi_metrics_zone_t *zctx, ngx_http_kimi_metrics_out_t *out)
{
    ngx_uint_t                          m, k, w, i, j, nsnap, used;
    ngx_str_t                           names[NGX_HTTP_KIMI_METRICS_MODELS];
    ngx_http_kimi_snapshot_t           *snap, *s;
    ngx_http_kimi_shard_body_t         *st;
    ngx_http_kimi_metrics_sh_t         *sh;
    const ngx_http_kimi_counter_def_t  *ctr;

    sh = zctx->sh;

    snap = ngx_palloc(r->pool, NGX_HTTP_KIMI_METRICS_MODELS
                               * NGX_HTTP_KIMI_METRICS_RANKS
                               * sizeof(ngx_http_kimi_snapshot_t));
    if (snap == NULL) {
        return NGX_ERROR;
    }

    nsnap = 0;

    for (m = 0; m < NGX_HTTP_KIMI_METRICS_MODELS; m++) {

        if (!sh->models[m].ready) {
            break;      /* slots are claimed in order */
        }

        ngx_memory_barrier();

        names[m] = *ngx_http_kimi_metrics_label(r, sh->models[m].name,
                                                ngx_min(sh->models[m].len,
                                                        KIMI_SHM_NAME_LEN));
        if (names[m].data == NULL) {
            return NGX_ERROR;
        }

        for (k = 0; k < NGX_HTTP_KIMI_METRICS_RANKS; k++) {
            s = &snap[nsnap];
            ngx_memzero(s, sizeof(ngx_http_kimi_snapshot_t));
            s->model = m;
            s->rank = k;
            used = 0;

            for (w = 0; w < NGX_HTTP_KIMI_METRICS_SHARDS; w++) {
                st = &sh->shards[m][k][w].s;

                for (i = 0; i < NGX_HTTP_KIMI_DONE_N; i++) {
                    s->done[i] += st->done[i];
                    used |= (st->done[i] != 0);
                }

                s->prompt_tokens += st->prompt_tokens;
                s->generation_tokens += st->generation_tokens;
                s->cached_tokens += st->cached_tokens;

                for (i = 0; i < NGX_HTTP_KIMI_HIST_N; i++) {
                    for (j = 0; j < NGX_HTTP_KIMI_HIST_SLOTS; j++) {
                        s->hist[i][j] += st->hist[i][j];
                    }
                }
            }

            if (used) {
                nsnap++;
            }
        }
    }

    if (nsnap == 0) {
        return NGX_OK;
    }

    if (ngx_http_kimi_metrics_append(r, out,
            "# HELP vllm:request_success_total Count of successfully "
            "processed requests.\n"
            "# TYPE vllm:request_success_total counter\n")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (k = 0; k < nsnap; k++) {
        for (i = 0; i < NGX_HTTP_KIMI_DONE_N; i++) {
            if (ngx_http_kimi_metrics_append(r, out,
                    "vllm:request_success_total{model_name=\"%V\","
                    "engine=\"%ui\",finished_reason=\"%s\"} %uL\n",
                    &names[snap[k].model], snap[k].rank,
                    ngx_http_kimi_done_names[i], snap[k].done[i])
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    for (i = 0; i < ngx_http_kimi_nelts(ngx_http_kimi_counters); i++) {
        ctr = &ngx_http_kimi_counters[i];

        if (ngx_http_kimi_metrics_append(r, out,
                "# HELP %s %s\n# TYPE %s counter\n",
                ctr->name, ctr->help, ctr->name)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (k = 0; k < nsnap; k++) {
            if (ngx_http_kimi_metrics_append(r, out,
                    "%s{model_name=\"%V\",engine=\"%ui\"} %uL\n",
                    ctr->name, &names[snap[k].model], snap[k].rank,
                    *(uint64_t *) ((u_char *) &snap[k] + ctr->offset))
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    for (i = 0; i < NGX_HTTP_KIMI_HIST_N; i++) {
        if (ngx_http_kimi_metrics_render_hist(r, out, i, snap, nsnap, names)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_metrics_render_hist(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out, ngx_http_kimi_hist_e which,
    ngx_http_kimi_snapshot_t *snap, ngx_uint_t nsnap, ngx_str_t *names)
{
    uint64_t                         cum, sum;
    ngx_uint_t                       k, i;
    const ngx_http_kimi_hist_def_t  *def;

    def = &ngx_http_kimi_hists[which];

    if (ngx_http_kimi_metrics_append(r, out,
            "# HELP %s %s\n# TYPE %s histogram\n",
            def->name, def->help, def->name)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (k = 0; k < nsnap; k++) {
        cum = 0;

        for (i = 0; i <= def->n; i++) {
            cum += snap[k].hist[which][i];

            if (ngx_http_kimi_metrics_append(r, out,
                    "%s_bucket{model_name=\"%V\",engine=\"%ui\",le=\"%s\"} "
                    "%uL\n",
                    def->name, &names[snap[k].model], snap[k].rank,
                    i < def->n ? def->le[i] : "+Inf", cum)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        sum = snap[k].hist[which][NGX_HTTP_KIMI_HIST_SUM];

        if (ngx_http_kimi_metrics_append(r, out,
                "%s_count{model_name=\"%V\",engine=\"%ui\"} %uL\n"
                "%s_sum{model_name=\"%V\",engine=\"%ui\"} %uL.%09uL\n",
                def->name, &names[snap[k].model], snap[k].rank, cum,
                def->name, &names[snap[k].model], snap[k].rank,
                sum / 1000000000, sum % 1000000000)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_kimi_metrics_append(ngx_http_request_t *r,
    ngx_http_kimi_metrics_out_t *out, const char *fmt, ...)
{
    u_char       *p, line[NGX_HTTP_KIMI_METRICS_BUF];
    size_t        n;
    va_list       args;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    va_start(args, fmt);
    p = ngx_vslprintf(line, line + sizeof(line), fmt, args);
    va_end(args);

    n = p - line;

    b = out->last ? out->last->buf : NULL;

    if (b == NULL || (size_t) (b->end - b->last) < n) {
        b = ngx_create_temp_buf(r->pool,
                                ngx_max(n, NGX_HTTP_KIMI_METRICS_BUF * 4));
        if (b == NULL) {
            return NGX_ERROR;
        }

        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = b;
        cl->next = NULL;

        if (out->last) {
            out->last->next = cl;

        } else {
            out->first = cl;
        }

        out->last = cl;
    }

    b->last = ngx_cpymem(b->last, line, n);
    out->size += n;

    return NGX_OK;
}


/* A label value: backslash, double quote and newline are escaped. */

static ngx_str_t *
ngx_http_kimi_metrics_label(ngx_http_request_t *r, u_char *src, size_t len)
{
    u_char     *p;
    size_t      i;
    ngx_str_t  *s;

    s = ngx_palloc(r->pool, sizeof(ngx_str_t) + 2 * len + 1);
    if (s == NULL) {
        return NULL;
    }

    p = (u_char *) (s + 1);
    s->data = p;

    for (i = 0; i < len; i++) {
        switch (src[i]) {

        case '\\':
        case '"':
            *p++ = '\\';
            *p++ = src[i];
            break;

        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;

        default:
            *p++ = src[i];
        }
    }

    s->len = p - s->data;

    return s;
}


/* ---- the zone ------------------------------------------------------- */

ngx_int_t
ngx_http_kimi_metrics_zone_add(ngx_conf_t *cf,
    ngx_http_kimi_ops_main_conf_t *kmcf)
{
    size_t                         size;
    ngx_str_t                      name;
    ngx_shm_zone_t                *shm_zone;
    ngx_http_kimi_metrics_zone_t  *ctx;

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_metrics_zone_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&name, NGX_HTTP_KIMI_METRICS_ZONE);

    /* the slab allocator needs a page descriptor per page, and headroom */
    size = sizeof(ngx_http_kimi_metrics_sh_t);
    size += size / 32 + 64 * ngx_pagesize;

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_kimi_ops_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_kimi_metrics_init_zone;
    shm_zone->data = ctx;

    kmcf->metrics_zone = shm_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_kimi_metrics_zone_t  *octx = data;

    ngx_http_kimi_metrics_zone_t  *ctx;

    ctx = shm_zone->data;

    if (octx != NULL) {
        /* reload: same name and size, so the same layout; keep counting */
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_calloc(ctx->shpool, sizeof(ngx_http_kimi_metrics_sh_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->sh->version = NGX_HTTP_KIMI_METRICS_VERSION;
    ctx->shpool->data = ctx->sh;

    return NGX_OK;
}
