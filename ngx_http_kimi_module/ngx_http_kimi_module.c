
/*
 * ngx_http_kimi_module: directives, routing and the life of one request.
 *
 * Owns:   the directive table, conf create/merge, the content handler
 *         (kimi_pass), body handling, submission after the text work (a
 *         context per choice when n > 1 or prompts come in a batch), the
 *         first-token / inter-token timers, finalization and the one
 *         cleanup handler that gives the engine slots back.
 * Never:  blocks the event loop, sends a header before the engine accepted
 *         the request, or finalizes a request twice (ctx->finalized).
 *
 * A request moves: handler -> body handler (parse, validate) -> text
 * (template + tokenize, inline or on the thread pool) -> submit (slot,
 * ring, doorbell) -> engine events (ngx_http_kimi_engine.c) -> output
 * (ngx_http_kimi_sse.c) -> finalize -> cleanup.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"

#if (NGX_HTTP_KIMI_OPS)
#include "ngx_http_kimi_ops.h"
#endif


/* default offload threshold: a 16 KiB body templates+tokenizes in ~1 ms */
#define NGX_HTTP_KIMI_OFFLOAD_DEFAULT   16384


typedef struct {
    ngx_str_t                suffix;
    ngx_http_kimi_route_e    route;
    ngx_uint_t               method;
} ngx_http_kimi_route_t;


static ngx_int_t ngx_http_kimi_handler(ngx_http_request_t *r);
static ngx_http_kimi_route_e ngx_http_kimi_route_find(ngx_str_t *uri,
    ngx_uint_t *method, ngx_str_t *model);
static ngx_http_kimi_route_e ngx_http_kimi_route(ngx_http_request_t *r,
    ngx_uint_t *method, ngx_str_t *model);
static void ngx_http_kimi_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_kimi_request_id(ngx_http_kimi_ctx_t *ctx);
static ngx_int_t ngx_http_kimi_read_body(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_kimi_bad_words(ngx_http_kimi_ctx_t *ctx);
static ngx_uint_t ngx_http_kimi_next_name(ngx_str_t *list, size_t *pos,
    ngx_str_t *name);
static ngx_int_t ngx_http_kimi_name_served(ngx_str_t *list,
    ngx_str_t *model);
static char *ngx_http_kimi_served_names(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_kimi_models(ngx_http_request_t *r,
    ngx_str_t *model);
static ngx_int_t ngx_http_kimi_model_not_found(ngx_http_request_t *r,
    ngx_str_t *model);
static ngx_int_t ngx_http_kimi_health(ngx_http_request_t *r);
static ngx_int_t ngx_http_kimi_version(ngx_http_request_t *r);
static ngx_int_t ngx_http_kimi_served_name(ngx_http_kimi_ctx_t *ctx,
    ngx_http_kimi_attach_t *a, ngx_str_t *name);
static ngx_int_t ngx_http_kimi_pin_rank(ngx_http_kimi_ctx_t *ctx);
static ngx_table_elt_t *ngx_http_kimi_header_in(ngx_http_request_t *r,
    const char *name, size_t len);
static void ngx_http_kimi_timeout_handler(ngx_event_t *ev);
static void ngx_http_kimi_cleanup(void *data);
static ngx_int_t ngx_http_kimi_choices(ngx_http_kimi_ctx_t *ctx);
static void ngx_http_kimi_choice_end(ngx_http_kimi_ctx_t *c);

static void *ngx_http_kimi_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_kimi_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_http_kimi_rank_hash(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_kimi_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_kimi_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_kimi_pass(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_kimi_json_object_check(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_kimi_chat_template_check(ngx_conf_t *cf, void *post,
    void *data);

static ngx_conf_post_t  ngx_http_kimi_json_object_post =
    { ngx_http_kimi_json_object_check };
static ngx_conf_post_t  ngx_http_kimi_chat_template_post =
    { ngx_http_kimi_chat_template_check };
static ngx_int_t ngx_http_kimi_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_kimi_init_process(ngx_cycle_t *cycle);
static void ngx_http_kimi_exit_process(ngx_cycle_t *cycle);


/* vLLM's --chat-template-content-format (ngx_http_kimi_text.c) */
/* vLLM's --generation-config: auto (the model's sampling defaults) or
 * vllm (OpenAI's) */
static ngx_conf_enum_t  ngx_http_kimi_generation_configs[] = {
    { ngx_string("auto"), 0 },
    { ngx_string("vllm"), 1 },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_kimi_content_formats[] = {
    { ngx_string("auto"), 0 },
    { ngx_string("string"), 1 },
    { ngx_string("openai"), 2 },
    { ngx_null_string, 0 }
};


/* vLLM's --reasoning-parser: both split at "</think>" */
static ngx_conf_enum_t  ngx_http_kimi_reasoning_parsers[] = {
    { ngx_string("off"), 0 },
    { ngx_string("deepseek_r1"), 1 },
    { ngx_string("kimi_k2"), 2 },
    { ngx_null_string, 0 }
};


/* vLLM's --tool-call-parser; auto: what the tokenizer spells */
static ngx_conf_enum_t  ngx_http_kimi_tool_formats[] = {
    { ngx_string("auto"), 0 },
    { ngx_string("kimi_k2"), KIMI_TOOL_FORMAT_KIMI_K2 + 1 },
    { ngx_string("deepseek_v3"), KIMI_TOOL_FORMAT_DEEPSEEK_V3 + 1 },
    { ngx_string("deepseek_v31"), KIMI_TOOL_FORMAT_DEEPSEEK_V31 + 1 },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_kimi_commands[] = {

    { ngx_string("kimi_engine"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, engine_dir),
      NULL },

    { ngx_string("kimi_model_dir"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, model_dir),
      NULL },

    { ngx_string("kimi_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, thread_pool_name),
      NULL },

    { ngx_string("kimi_offload_threshold"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, offload_threshold),
      NULL },

    { ngx_string("kimi_chat_template_content_format"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, content_format),
      &ngx_http_kimi_content_formats },

    { ngx_string("kimi_generation_config"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, generation_config),
      &ngx_http_kimi_generation_configs },

    { ngx_string("kimi_chat_template"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, chat_template),
      &ngx_http_kimi_chat_template_post },

    { ngx_string("kimi_override_generation_config"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, generation_override),
      &ngx_http_kimi_json_object_post },

    { ngx_string("kimi_tool_call_parser"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_kimi_main_conf_t, tool_format),
      &ngx_http_kimi_tool_formats },

    { ngx_string("kimi_pass"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_kimi_pass,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kimi_served_model_name"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_kimi_served_names,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, served_model_name),
      NULL },

    { ngx_string("kimi_first_token_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, first_token_timeout),
      NULL },

    { ngx_string("kimi_token_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, token_timeout),
      NULL },

    { ngx_string("kimi_default_max_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, default_max_tokens),
      NULL },

    { ngx_string("kimi_queue_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, queue_limit),
      NULL },

    { ngx_string("kimi_reasoning_parser"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, reasoning_parser),
      &ngx_http_kimi_reasoning_parsers },

    { ngx_string("kimi_special_tokens_in_content"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, special_tokens_in_content),
      NULL },

    { ngx_string("kimi_responses_store"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_kimi_responses_store_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kimi_responses_background"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, responses_background),
      NULL },

    { ngx_string("kimi_responses_stream_events"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kimi_loc_conf_t, responses_events),
      NULL },

    { ngx_string("kimi_rank_hash"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_kimi_rank_hash,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_kimi_module_ctx = {
    ngx_http_kimi_preconfiguration,        /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_kimi_create_main_conf,        /* create main configuration */
    ngx_http_kimi_init_main_conf,          /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_kimi_create_loc_conf,         /* create location configuration */
    ngx_http_kimi_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_kimi_module = {
    NGX_MODULE_V1,
    &ngx_http_kimi_module_ctx,             /* module context */
    ngx_http_kimi_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_kimi_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_kimi_exit_process,            /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_kimi_route_t  ngx_http_kimi_routes[] = {
    { ngx_string("/v1/chat/completions"), NGX_HTTP_KIMI_ROUTE_CHAT,
      NGX_HTTP_POST },
    { ngx_string("/v1/completions"), NGX_HTTP_KIMI_ROUTE_COMPLETIONS,
      NGX_HTTP_POST },
    { ngx_string("/v1/models"), NGX_HTTP_KIMI_ROUTE_MODELS, NGX_HTTP_GET },
    { ngx_string("/health"), NGX_HTTP_KIMI_ROUTE_HEALTH, NGX_HTTP_GET },
    /* vLLM's (SageMaker's) liveness probe: /health by another name */
    { ngx_string("/ping"), NGX_HTTP_KIMI_ROUTE_HEALTH,
      NGX_HTTP_GET|NGX_HTTP_POST },
    { ngx_string("/version"), NGX_HTTP_KIMI_ROUTE_VERSION, NGX_HTTP_GET },
    /* ... and its inference path: a chat or a completion, by the body */
    { ngx_string("/invocations"), NGX_HTTP_KIMI_ROUTE_INVOCATIONS,
      NGX_HTTP_POST },
    { ngx_string("/tokenize"), NGX_HTTP_KIMI_ROUTE_TOKENIZE, NGX_HTTP_POST },
    { ngx_string("/detokenize"), NGX_HTTP_KIMI_ROUTE_DETOKENIZE,
      NGX_HTTP_POST },
    { ngx_string("/v1/responses"), NGX_HTTP_KIMI_ROUTE_RESPONSES,
      NGX_HTTP_POST },
    { ngx_null_string, NGX_HTTP_KIMI_ROUTE_NONE, 0 }
};


static ngx_int_t
ngx_http_kimi_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_str_t                  model;
    ngx_uint_t                 method;
    ngx_table_elt_t           *h;
    ngx_http_kimi_ctx_t       *ctx;
    ngx_http_kimi_route_e      route;

    route = ngx_http_kimi_route(r, &method, &model);

    if (route == NGX_HTTP_KIMI_ROUTE_NONE) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_kimi_send_error(r, NGX_HTTP_NOT_FOUND,
                                        "invalid_request_error",
                                        "Not Found", 9, NULL, NULL);
    }

    /* HEAD wherever GET is: the headers of GET's answer (load balancers
     * and uptime checks probe /health so; vLLM's routes answer it too) */
    if (method & NGX_HTTP_GET) {
        method |= NGX_HTTP_HEAD;
    }

    if (!(r->method & method)) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");

        if (method == (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
            ngx_str_set(&h->value, "GET, HEAD");

        } else if (method == (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_DELETE)) {
            ngx_str_set(&h->value, "GET, HEAD, DELETE");

        } else if (method == (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST)) {
            ngx_str_set(&h->value, "GET, HEAD, POST");

        } else {
            ngx_str_set(&h->value, "POST");
        }

        return ngx_http_kimi_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                        "invalid_request_error",
                                        "Method Not Allowed", 18, NULL, NULL);
    }

    ctx = ngx_http_kimi_ctx_create(r, route);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    route = ctx->route;

#if (NGX_HTTP_KIMI_OPS)
    rc = ngx_http_kimi_ops_access(r);
    if (rc != NGX_DECLINED) {
        return rc;
    }
#endif

    switch (route) {

    case NGX_HTTP_KIMI_ROUTE_MODELS:
    case NGX_HTTP_KIMI_ROUTE_HEALTH:
    case NGX_HTTP_KIMI_ROUTE_VERSION:

        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (route == NGX_HTTP_KIMI_ROUTE_VERSION) {
            return ngx_http_kimi_version(r);
        }

        return (route == NGX_HTTP_KIMI_ROUTE_MODELS)
               ? ngx_http_kimi_models(r, &model) : ngx_http_kimi_health(r);

    case NGX_HTTP_KIMI_ROUTE_RESPONSE:
    case NGX_HTTP_KIMI_ROUTE_RESPONSE_ITEMS:
    case NGX_HTTP_KIMI_ROUTE_RESPONSE_CANCEL:

        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_kimi_responses_route(r, route, &model);

    default:
        break;
    }

    /* the whole body in one buffer: the JSON parser wants it contiguous */
    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_kimi_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * The request's context, in r's pool, with the cleanup handler that gives
 * back whatever it comes to hold (registered before anything is acquired;
 * it copes with a half-built ctx).  A background response's own request
 * (ngx_http_kimi_background.c) is made here too.
 */
ngx_http_kimi_ctx_t *
ngx_http_kimi_ctx_create(ngx_http_request_t *r, ngx_http_kimi_route_e route)
{
    ngx_http_cleanup_t   *cln;
    ngx_http_kimi_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_kimi_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     ctx->text = NULL;
     *     ctx->attach = NULL;
     *     ctx->slot = NULL;
     *     ctx->headers_sent = 0;
     *     ctx->finalized = 0;
     *     ctx->detached = 0;
     */

    if (route == NGX_HTTP_KIMI_ROUTE_RESPONSES) {
        ctx->responses = 1;                /* a chat inside */
        route = NGX_HTTP_KIMI_ROUTE_CHAT;
    }

    ctx->request = r;
    ctx->main = ctx;
    ctx->n_choices = 1;
    ctx->conf = ngx_http_get_module_loc_conf(r, ngx_http_kimi_module);
    ctx->route = route;
    ctx->slot_index = -1;
    ctx->pinned_rank = -1;
    ctx->created = ngx_time();
    ctx->usage.route = route;
    ctx->usage.start = ngx_current_msec;
    ctx->usage.ttft = -1;
    ctx->usage.rank = -1;

    ngx_http_set_ctx(r, ctx, ngx_http_kimi_module);

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_kimi_cleanup;
    cln->data = ctx;

    return ctx;
}


/* The route of r's URI; model: the id of GET /v1/models/{model} (the rest
 * of the URI, slashes and all: "moonshotai/Kimi-K2-Instruct"), else empty */
static ngx_http_kimi_route_e
ngx_http_kimi_route(ngx_http_request_t *r, ngx_uint_t *method,
    ngx_str_t *model)
{
    ngx_str_t                  uri;
    ngx_http_kimi_route_e      route;
    ngx_http_core_loc_conf_t  *clcf;

    uri = r->uri;

    /* the URI as it is first: "location = /health", "location /v1/" and
     * "location /" all serve the API paths under their own names */
    route = ngx_http_kimi_route_find(&uri, method, model);
    if (route != NGX_HTTP_KIMI_ROUTE_NONE) {
        return route;
    }

    /* then relative to a prefix location: "location /kimi/" serves
     * /kimi/v1/models */
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->name.len > 1
        && clcf->name.data[clcf->name.len - 1] == '/'
        && !clcf->exact_match
#if (NGX_PCRE)
        && clcf->regex == NULL
#endif
        && uri.len >= clcf->name.len
        && ngx_strncmp(uri.data, clcf->name.data, clcf->name.len) == 0)
    {
        uri.data += clcf->name.len - 1;
        uri.len -= clcf->name.len - 1;

        return ngx_http_kimi_route_find(&uri, method, model);
    }

    return NGX_HTTP_KIMI_ROUTE_NONE;
}


static ngx_http_kimi_route_e
ngx_http_kimi_route_find(ngx_str_t *uri, ngx_uint_t *method,
    ngx_str_t *model)
{
    ngx_http_kimi_route_t  *rt;
    ngx_http_kimi_route_e   route;
    static ngx_str_t        one = ngx_string("/v1/models/");
    static ngx_str_t        resp = ngx_string("/v1/responses/");
    static ngx_str_t        items = ngx_string("/input_items");
    static ngx_str_t        cancel = ngx_string("/cancel");

    ngx_str_null(model);

    for (rt = ngx_http_kimi_routes; rt->suffix.len; rt++) {
        if (uri->len == rt->suffix.len
            && ngx_strncmp(uri->data, rt->suffix.data, uri->len) == 0)
        {
            *method = rt->method;
            return rt->route;
        }
    }

    if (uri->len > one.len
        && ngx_strncmp(uri->data, one.data, one.len) == 0)
    {
        model->data = uri->data + one.len;
        model->len = uri->len - one.len;
        *method = NGX_HTTP_GET;
        return NGX_HTTP_KIMI_ROUTE_MODELS;
    }

    /* a stored response: model carries its id */
    if (uri->len > resp.len
        && ngx_strncmp(uri->data, resp.data, resp.len) == 0)
    {
        model->data = uri->data + resp.len;
        model->len = uri->len - resp.len;

        if (model->len > items.len
            && ngx_strncmp(model->data + model->len - items.len, items.data,
                           items.len) == 0)
        {
            model->len -= items.len;
            *method = NGX_HTTP_GET;
            route = NGX_HTTP_KIMI_ROUTE_RESPONSE_ITEMS;

        } else if (model->len > cancel.len
                   && ngx_strncmp(model->data + model->len - cancel.len,
                                  cancel.data, cancel.len) == 0)
        {
            model->len -= cancel.len;
            *method = NGX_HTTP_POST;
            route = NGX_HTTP_KIMI_ROUTE_RESPONSE_CANCEL;

        } else {
            *method = NGX_HTTP_GET|NGX_HTTP_DELETE;
            route = NGX_HTTP_KIMI_ROUTE_RESPONSE;
        }

        if (ngx_strlchr(model->data, model->data + model->len, '/') == NULL) {
            return route;
        }

        ngx_str_null(model);
    }

    return NGX_HTTP_KIMI_ROUTE_NONE;
}


static void
ngx_http_kimi_body_handler(ngx_http_request_t *r)
{
    size_t                   pos;
    ngx_int_t                rc;
    ngx_str_t                body, error, param, name, why;
    ngx_connection_t        *c;
    ngx_http_kimi_ctx_t     *ctx;
    ngx_http_kimi_attach_t  *a;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_kimi_module);

    /* from here on a client close is a cancel: nginx leaves
     * ngx_http_block_reading in place after the body was read */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_kimi_write_handler;

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_http_kimi_read_body(r, &body) != NGX_OK) {
        ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_str_null(&param);
    ctx->params.body_len = body.len;

    if (ctx->route == NGX_HTTP_KIMI_ROUTE_TOKENIZE
        || ctx->route == NGX_HTTP_KIMI_ROUTE_DETOKENIZE)
    {
        rc = ngx_http_kimi_parse_request(ctx, body.data, body.len, &error,
                                         &param);
        if (rc != NGX_OK) {
            goto invalid;
        }

        rc = (ctx->route == NGX_HTTP_KIMI_ROUTE_TOKENIZE)
             ? ngx_http_kimi_tokenize_handler(ctx)
             : ngx_http_kimi_detokenize_handler(ctx);

        if (rc != NGX_DONE) {
            ngx_http_kimi_finalize(ctx, rc);
        }

        return;
    }

    rc = ngx_http_kimi_parse_request(ctx, body.data, body.len, &error,
                                     &param);
    if (rc != NGX_OK) {
        goto invalid;
    }

    if (ngx_http_kimi_pin_rank(ctx) != NGX_OK) {
        ngx_str_set(&error, "X-Kimi-Rank must be an engine rank number");
        ngx_str_null(&param);
        goto invalid;
    }

    a = ngx_http_kimi_engine_get(c->log);

    if (ngx_http_kimi_engine_ready(a, &why) != NGX_OK) {
        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "service_unavailable", (char *) why.data,
                                     why.len, NULL, NULL));
        return;
    }

    rc = ngx_http_kimi_served_name(ctx, a, &name);
    if (rc != NGX_OK) {
        ngx_http_kimi_finalize(ctx, rc);
        return;
    }

    if (ctx->params.model.len
        && ngx_http_kimi_name_served(&name, &ctx->params.model) != NGX_OK)
    {
        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_model_not_found(r, &ctx->params.model));
        return;
    }

    /* answers carry the first served name, as vLLM's do */
    pos = 0;
    (void) ngx_http_kimi_next_name(&name, &pos, &ctx->usage.model);
    ctx->usage.stream = ctx->params.stream;

    if (ngx_http_kimi_request_id(ctx) != NGX_OK) {
        ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_http_kimi_engine_pending() >= ctx->conf->queue_limit) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "kimi queue limit %ui reached", ctx->conf->queue_limit);

        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                     "rate_limit_error",
                                     "Too many requests are waiting for "
                                     "the engine; retry later", 57, NULL,
                                     NULL));
        return;
    }

    if (ctx->background) {
        /* answered now; a request of its own runs it */
        ngx_http_kimi_finalize(ctx,
                               ngx_http_kimi_background_start(ctx, &body));
        return;
    }

    ctx->phase = NGX_HTTP_KIMI_PHASE_TEXT;
    ngx_http_kimi_engine_pending_add(ctx);

    /* NGX_DONE: a thread task continues it, or it was answered */
    if (ngx_http_kimi_text_prepare(ctx) == NGX_OK) {
        ngx_http_kimi_submit(ctx);
    }

    return;

invalid:

    ngx_http_kimi_finalize(ctx,
        ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                 "invalid_request_error",
                                 (char *) error.data, error.len,
                                 param.len ? (char *) param.data : NULL,
                                 NULL));
}


/* The client's X-Request-Id into *given when it is one we can take: 1 to
 * 128 characters that need no JSON escaping (the id is written as it is
 * into every chunk) nor any in a header; else given is left empty. */
static void
ngx_http_kimi_request_id_in(ngx_http_request_t *r, ngx_str_t *given)
{
    u_char            c;
    size_t            i;
    ngx_table_elt_t  *h;

    ngx_str_null(given);

    h = ngx_http_kimi_header_in(r, "X-Request-Id", sizeof("X-Request-Id") - 1);

    if (h == NULL || h->value.len == 0 || h->value.len > 128) {
        return;
    }

    for (i = 0; i < h->value.len; i++) {
        c = h->value.data[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
              || (c >= 'A' && c <= 'Z')
              || (c != '\0' && ngx_strchr("-_.:/+=@", c) != NULL)))
        {
            return;
        }
    }

    *given = h->value;
}


/* "chatcmpl-" or "cmpl-" and the client's X-Request-Id, as vLLM names a
 * request after that header, or 96 random bits, as OpenAI's ids look; a
 * Responses id ("resp_") is always random: the store is keyed by it */
static ngx_int_t
ngx_http_kimi_request_id(ngx_http_kimi_ctx_t *ctx)
{
    u_char     *p;
    ngx_str_t   given;

    ngx_str_null(&given);

    if (!ctx->responses) {
        ngx_http_kimi_request_id_in(ctx->request, &given);
    }

    p = ngx_pnalloc(ctx->request->pool,
                    sizeof("chatcmpl-") - 1 + ngx_max(24, given.len));
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->id.data = p;
    p = ngx_sprintf(p, "%s", ctx->responses ? "resp_"
                    : ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT ? "chatcmpl-"
                                                             : "cmpl-");

    if (given.len) {
        p = ngx_cpymem(p, given.data, given.len);

    } else {
        p = ngx_sprintf(p, "%08xD%08xD%08xD", (uint32_t) ngx_random(),
                        (uint32_t) ngx_random(), (uint32_t) ngx_random());
    }

    ctx->id.len = p - ctx->id.data;

    return NGX_OK;
}


/*
 * X-Request-Id on every response of a kimi_pass location, as vLLM's
 * --enable-request-id-headers and OpenAI's API send it (the openai client
 * reads it into _request_id and an APIError's request_id): the client's
 * own when it sent one we can take, else the request's id without its
 * "chatcmpl-"/"cmpl-"/"resp_" prefix, else (an answer before there is an
 * id: a 401, a 404, a bad body) 96 random bits.
 */
ngx_int_t
ngx_http_kimi_request_id_header(ngx_http_request_t *r)
{
    u_char               *p;
    ngx_str_t             id;
    ngx_table_elt_t      *h;
    ngx_http_kimi_ctx_t  *ctx;

    ngx_http_kimi_request_id_in(r, &id);

    ctx = ngx_http_get_module_ctx(r, ngx_http_kimi_module);

    if (id.len == 0 && ctx != NULL && ctx->id.len) {
        id = ctx->id;

        p = ngx_strlchr(id.data, id.data + id.len,
                        ctx->responses ? '_' : '-');
        if (p != NULL) {
            id.len -= p + 1 - id.data;
            id.data = p + 1;
        }
    }

    if (id.len == 0) {
        id.data = ngx_pnalloc(r->pool, 24);
        if (id.data == NULL) {
            return NGX_ERROR;
        }

        id.len = ngx_sprintf(id.data, "%08xD%08xD%08xD",
                             (uint32_t) ngx_random(), (uint32_t) ngx_random(),
                             (uint32_t) ngx_random())
                 - id.data;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Request-Id");
    h->value = id;

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        b = cl->buf;
        body->data = b->pos;
        body->len = b->last - b->pos;
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            /*
             * A body larger than client_body_buffer_size was spooled to a
             * temp file by nginx; reading a local temp file back is what
             * nginx itself does for such bodies.  conf/ sets
             * client_body_buffer_size = client_max_body_size so it stays
             * in memory.
             */
            n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    body->len = p - body->data;

    return NGX_OK;
}


/* OpenAI's 404 for a model this server does not serve */
static ngx_int_t
ngx_http_kimi_model_not_found(ngx_http_request_t *r, ngx_str_t *model)
{
    ngx_str_t  error;

    error.data = ngx_pnalloc(r->pool, model->len + 64);
    if (error.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    error.len = ngx_sprintf(error.data, "The model `%V` does not exist.",
                            model)
                - error.data;

    return ngx_http_kimi_send_error(r, NGX_HTTP_NOT_FOUND,
                                    "invalid_request_error",
                                    (char *) error.data, error.len, "model",
                                    "model_not_found");
}


/* The next name of a space-separated list of served names (vLLM's
 * --served-model-name a b c) from *pos; 0 when none is left. */
static ngx_uint_t
ngx_http_kimi_next_name(ngx_str_t *list, size_t *pos, ngx_str_t *name)
{
    size_t  i = *pos;

    while (i < list->len && list->data[i] == ' ') {
        i++;
    }

    name->data = list->data + i;

    while (i < list->len && list->data[i] != ' ') {
        i++;
    }

    name->len = (size_t) (list->data + i - name->data);
    *pos = i;

    return name->len > 0;
}


/* NGX_OK when model is one of the served names */
static ngx_int_t
ngx_http_kimi_name_served(ngx_str_t *list, ngx_str_t *model)
{
    size_t     pos = 0;
    ngx_str_t  name;

    while (ngx_http_kimi_next_name(list, &pos, &name)) {
        if (name.len == model->len
            && ngx_strncmp(name.data, model->data, name.len) == 0)
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static json_t *
ngx_http_kimi_model_card(ngx_str_t *name, kimi_shm_header_t *hdr)
{
    json_t  *card;

    card = json_pack("{s:s%,s:s,s:I,s:s,s:s%}",
                     "id", name->data, name->len,
                     "object", "model",
                     "created", (json_int_t) (hdr ? hdr->model_created
                                                  : (uint64_t) ngx_time()),
                     "owned_by", "kimi",
                     "root", name->data, name->len);
    if (card == NULL) {
        return NULL;
    }

    if (hdr) {
        json_object_set_new(card, "max_model_len",
                            json_integer(hdr->max_model_len));
    }

    json_object_set_new(card, "parent", json_null());
    return card;
}


/* GET /v1/models: a card per served name, as vLLM lists them; GET
 * /v1/models/{model} (model not empty): its card, or the chat route's 404
 * for another name */
static ngx_int_t
ngx_http_kimi_models(ngx_http_request_t *r, ngx_str_t *model)
{
    json_t                  *root, *data, *card;
    size_t                   pos;
    ngx_int_t                rc;
    ngx_str_t                names, name;
    kimi_shm_header_t       *hdr;
    ngx_http_kimi_ctx_t     *ctx;
    ngx_http_kimi_attach_t  *a;

    ctx = ngx_http_get_module_ctx(r, ngx_http_kimi_module);

    a = ngx_http_kimi_engine_get(r->connection->log);
    hdr = ngx_http_kimi_engine_header(a);

    if (hdr == NULL && ctx->conf->served_model_name.len == 0) {
        return ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "service_unavailable",
                                        "the engine is not running", 25,
                                        NULL, NULL);
    }

    rc = ngx_http_kimi_served_name(ctx, a, &names);
    if (rc != NGX_OK) {
        return rc;
    }

    if (model->len) {
        if (ngx_http_kimi_name_served(&names, model) != NGX_OK) {
            return ngx_http_kimi_model_not_found(r, model);
        }

        card = ngx_http_kimi_model_card(model, hdr);
        if (card == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, card);
        json_decref(card);
        return rc;
    }

    data = json_array();
    root = json_object();

    if (data == NULL || root == NULL
        || json_object_set_new(root, "object", json_string("list")) != 0
        || json_object_set(root, "data", data) != 0)
    {
        json_decref(data);
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_decref(data);              /* root holds it */

    for (pos = 0; ngx_http_kimi_next_name(&names, &pos, &name); /* void */) {
        card = ngx_http_kimi_model_card(&name, hdr);

        if (card == NULL || json_array_append_new(data, card) != 0) {
            json_decref(root);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, root);
    json_decref(root);

    return rc;
}


static ngx_int_t
ngx_http_kimi_health(ngx_http_request_t *r)
{
    json_t                  *root;
    ngx_int_t                rc;
    ngx_str_t                why;
    ngx_uint_t               status;
    ngx_http_kimi_attach_t  *a;

    a = ngx_http_kimi_engine_get(r->connection->log);

    root = json_object();
    if (root == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_kimi_engine_ready(a, &why) == NGX_OK
        && ngx_http_kimi_text_get(&why) != NULL)
    {
        status = NGX_HTTP_OK;
        json_object_set_new(root, "status", json_string("ok"));

    } else {
        status = NGX_HTTP_SERVICE_UNAVAILABLE;
        json_object_set_new(root, "status", json_string("unavailable"));
        json_object_set_new(root, "reason",
                            json_stringn((char *) why.data, why.len));
    }

    ngx_http_kimi_engine_json(a, root);

    rc = ngx_http_kimi_send_json(r, status, root);
    json_decref(root);

    return rc;
}


/* GET /version: what vLLM's answers, {"version": ...}, with this module's */
static ngx_int_t
ngx_http_kimi_version(ngx_http_request_t *r)
{
    json_t     *root;
    ngx_int_t   rc;

    root = json_pack("{s:s}", "version", NGX_HTTP_KIMI_VERSION);
    if (root == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, root);
    json_decref(root);

    return rc;
}


static ngx_int_t
ngx_http_kimi_served_name(ngx_http_kimi_ctx_t *ctx, ngx_http_kimi_attach_t *a,
    ngx_str_t *name)
{
    kimi_shm_header_t  *hdr;

    if (ctx->conf->served_model_name.len) {
        *name = ctx->conf->served_model_name;
        return NGX_OK;
    }

    hdr = ngx_http_kimi_engine_header(a);
    if (hdr == NULL) {
        ngx_str_set(name, "");
        return NGX_OK;
    }

    /* copied: the mapping may go away before the request pool does */
    name->len = ngx_strnlen((u_char *) hdr->served_model_name,
                            KIMI_SHM_NAME_LEN);
    name->data = ngx_pnalloc(ctx->request->pool, name->len);
    if (name->data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(name->data, hdr->served_model_name, name->len);

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_pin_rank(ngx_http_kimi_ctx_t *ctx)
{
    ngx_int_t         n;
    ngx_table_elt_t  *h;

    h = ngx_http_kimi_header_in(ctx->request, "X-Kimi-Rank",
                                sizeof("X-Kimi-Rank") - 1);
    if (h == NULL) {
        return NGX_OK;
    }

    n = ngx_atoi(h->value.data, h->value.len);
    if (n == NGX_ERROR || n >= KIMI_SHM_MAX_RANKS) {
        return NGX_ERROR;
    }

    ctx->pinned_rank = n;

    return NGX_OK;
}


/* the request's first header of this name (any case), or NULL */
static ngx_table_elt_t *
ngx_http_kimi_header_in(ngx_http_request_t *r, const char *name, size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


/*
 * n > 1 or a batch of prompts: choices 1.. as contexts of their own
 * beside the request's (choice 0).  Choice k * n + j is sample j of
 * prompt k, as OpenAI orders them.  They share what is the request's (the
 * parsed request, the prompt ids, the text stack, the id) and own the
 * rest; a seed moves by the sample's number so seeded samples of a prompt
 * differ and repeat.
 */
static ngx_int_t
ngx_http_kimi_choices(ngx_http_kimi_ctx_t *ctx)
{
    ngx_uint_t            i, n, per;
    ngx_http_kimi_ctx_t  *c;

    per = ctx->params.n;
    n = per * (ctx->n_batch ? ctx->n_batch : 1);

    ctx->choices = ngx_palloc(ctx->request->pool,
                              n * sizeof(ngx_http_kimi_ctx_t *));
    if (ctx->choices == NULL) {
        return NGX_ERROR;
    }

    ctx->choices[0] = ctx;

    for (i = 1; i < n; i++) {
        c = ngx_pcalloc(ctx->request->pool, sizeof(ngx_http_kimi_ctx_t));
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->request = ctx->request;
        c->conf = ctx->conf;
        c->route = ctx->route;
        c->phase = ctx->phase;
        c->main = ctx;
        c->n_choices = 1;
        c->index = i;
        c->id = ctx->id;
        c->created = ctx->created;
        c->params = ctx->params;
        c->text = ctx->text;
        c->prompt = ctx->n_batch ? ctx->batch_ids[i / per] : ctx->prompt;
        c->n_prompt = ctx->n_batch ? ctx->batch_n[i / per] : ctx->n_prompt;
        c->pinned_rank = ctx->pinned_rank;
        c->slot_index = -1;
        c->usage.model = ctx->usage.model;
        c->usage.route = ctx->usage.route;
        c->usage.prompt_tokens = c->n_prompt;
        c->usage.start = ctx->usage.start;
        c->usage.stream = ctx->usage.stream;
        c->usage.ttft = -1;
        c->usage.rank = -1;
        c->usage.observed = 1;          /* the request's ctx reports */

        if (c->params.sampling.has_seed) {
            c->params.sampling.seed += i % per;
        }

        ctx->choices[i] = c;
    }

    ctx->n_choices = n;

    return NGX_OK;
}


/* Appends text's tokens (special names as text) to the words. */
static ngx_int_t
ngx_http_kimi_tool_append(const kimi_tokenizer_t *tk, int32_t **w,
    size_t *at, size_t *cap, const u_char *text, size_t len, int32_t tail)
{
    size_t       n_ids;
    int32_t     *ids, *grown;
    kimi_err_t   err;

    if (kimi_tokenize(tk, (const char *) text, len, 0, &ids, &n_ids, &err)
        != 0)
    {
        return NGX_ERROR;
    }

    if (*at + 2 + n_ids > *cap) {
        *cap = (*at + 2 + n_ids) * 2;
        grown = realloc(*w, *cap * sizeof(int32_t));
        if (grown == NULL) {
            free(ids);
            return NGX_ERROR;
        }
        *w = grown;
    }

    ngx_memcpy(*w + *at, ids, n_ids * sizeof(int32_t));
    *at += n_ids;
    if (tail >= 0) {
        (*w)[(*at)++] = tail;
    }
    free(ids);

    return NGX_OK;
}


/* tool_choice naming a function: one call is forced in the model's own
 * format (kimi_tool_call_parser), Kimi's
 * <|tool_calls_section_begin|><|tool_call_begin|>
 * functions.NAME:IDX<|tool_call_argument_begin|>{arguments}
 * <|tool_call_end|><|tool_calls_section_end|>, DeepSeek's
 * <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
 * \n```json\n{arguments}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜> (v3) or
 * <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{arguments}<｜tool▁call▁end｜> (v31),
 * then the end; "required": one call or more (up to KIMI_TOOL_MAX_CALLS,
 * each opened by another call-begin after the one before ends), as
 * OpenAI's "one or more tools", or one with parallel_tool_calls false.
 * NAME is the named function or any of "tools", the arguments held to
 * that function's "parameters" where the schema is in the supported
 * subset, else to any JSON object; Kimi's IDX counts the calls already in
 * the conversation and those before it in this answer (vLLM's id).  A
 * tokenizer without the format's markers cannot be held to it:
 * NGX_DECLINED, the request is refused. */
static ngx_int_t
ngx_http_kimi_tool_words(ngx_http_kimi_ctx_t *ctx)
{
    static const char       *names[2][5] = {
        { "<|tool_calls_section_begin|>", "<|tool_call_begin|>",
          "<|tool_call_argument_begin|>", "<|tool_call_end|>",
          "<|tool_calls_section_end|>" },
        { "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>",
          "<｜tool▁sep｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>" }
    };
    int32_t                  mark[5], *prog, *w, *grown;
    size_t                   i, j, n_prog, at, cap, calls = 0,
                             n_alts = 0, max_calls, alts_at;
    json_t                  *m, *tool, *fn, *params, *name;
    u_char                   text[512], *e;
    char                     msg[256];
    ngx_int_t                rc;
    kimi_tool_format_e       format;
    const kimi_tokenizer_t  *tk;

    tk = ngx_http_kimi_text_tokenizer(ctx->text);
    if (tk == NULL) {
        return NGX_ERROR;
    }

    format = ngx_http_kimi_text_tool_format(ctx->text);

    for (i = 0; i < 5; i++) {
        mark[i] = kimi_tokenizer_special_id(tk,
                      names[format == KIMI_TOOL_FORMAT_KIMI_K2 ? 0 : 1][i]);
        if (mark[i] < 0) {
            return NGX_DECLINED;
        }
    }

    json_array_foreach(ctx->params.messages, i, m) {
        calls += json_array_size(json_object_get(m, "tool_calls"));
    }

    max_calls = ctx->params.tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_NAMED
                || ctx->params.one_call ? 1 : KIMI_TOOL_MAX_CALLS;

    cap = 32 + 1024;
    w = malloc(cap * sizeof(int32_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    at = 0;
    w[at++] = KIMI_TOOL_CALL_TAG;
    w[at++] = 2;
    w[at++] = mark[0];
    w[at++] = mark[1];

    /* the post ids: DeepSeek v3's closing fence, the call's end, the
     * section's end */
    at++;
    rc = NGX_OK;
    if (format == KIMI_TOOL_FORMAT_DEEPSEEK_V3) {
        rc = ngx_http_kimi_tool_append(tk, &w, &at, &cap,
                                       (u_char *) "\n```", 4, -1);
    }
    if (rc != NGX_OK) {
        free(w);
        return NGX_ERROR;
    }
    w[at++] = mark[3];
    w[at++] = mark[4];
    w[4] = (int32_t) (at - 5);          /* n_post: the ids from w[5] on */

    w[at++] = 5;
    ngx_memcpy(w + at, mark, 5 * sizeof(int32_t));
    at += 5;
    w[at++] = (int32_t) max_calls;
    alts_at = at++;                     /* the count of functions */

    json_array_foreach(ctx->params.tools, i, tool) {
        fn = json_object_get(tool, "function");
        name = json_object_get(fn, "name");

        if (ctx->params.tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_NAMED
            && (json_string_length(name) != ctx->params.tool_name.len
                || ngx_strncmp(json_string_value(name),
                               ctx->params.tool_name.data,
                               ctx->params.tool_name.len) != 0))
        {
            continue;
        }
        if (!json_is_string(name) || n_alts == 128
            || json_string_length(name) > 400)
        {
            continue;
        }

        params = json_object_get(fn, "parameters");
        if (params == NULL
            || kimi_json_schema_compile(params, &prog, &n_prog, msg,
                                        sizeof(msg)) != 0)
        {
            if (params != NULL) {
                ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                              "kimi: the parameters of \"%s\" are held to"
                              " any JSON object: %s",
                              json_string_value(name), msg);
            }
            if (kimi_json_schema_compile(json_true(), &prog, &n_prog, msg,
                                         sizeof(msg)) != 0)
            {
                free(w);
                return NGX_ERROR;
            }
        }

        if (at + 1 + n_prog > cap) {
            cap = (at + 1 + n_prog) * 2;
            grown = realloc(w, cap * sizeof(int32_t));
            if (grown == NULL) {
                free(prog);
                free(w);
                return NGX_ERROR;
            }
            w = grown;
        }

        w[at++] = (int32_t) n_prog;
        ngx_memcpy(w + at, prog, n_prog * sizeof(int32_t));
        at += n_prog;
        free(prog);

        for (j = 0; j < max_calls; j++) {
            size_t  count_at = at++;

            switch (format) {

            case KIMI_TOOL_FORMAT_DEEPSEEK_V3:
                rc = ngx_http_kimi_tool_append(tk, &w, &at, &cap,
                                               (u_char *) "function", 8,
                                               mark[2]);
                if (rc == NGX_OK) {
                    e = ngx_snprintf(text, sizeof(text), "%s\n```json\n",
                                     json_string_value(name));
                    rc = ngx_http_kimi_tool_append(tk, &w, &at, &cap, text,
                                                   e - text, -1);
                }
                break;

            case KIMI_TOOL_FORMAT_DEEPSEEK_V31:
                rc = ngx_http_kimi_tool_append(tk, &w, &at, &cap,
                                               (u_char *) json_string_value(name),
                                               json_string_length(name),
                                               mark[2]);
                break;

            default:
                e = ngx_snprintf(text, sizeof(text), "functions.%s:%uz",
                                 json_string_value(name), calls + j);
                rc = ngx_http_kimi_tool_append(tk, &w, &at, &cap, text,
                                               e - text, mark[2]);
                break;
            }

            if (rc != NGX_OK) {
                free(w);
                return NGX_ERROR;
            }

            w[count_at] = (int32_t) (at - count_at - 1);
        }

        n_alts++;
    }

    w[alts_at] = (int32_t) n_alts;

    if (n_alts > 0) {
        ctx->params.guided = ngx_palloc(ctx->request->pool,
                                        at * sizeof(int32_t));
        if (ctx->params.guided == NULL) {
            free(w);
            return NGX_ERROR;
        }
        ngx_memcpy(ctx->params.guided, w, at * sizeof(int32_t));
        ctx->params.n_guided = at;
    }

    free(w);
    return NGX_OK;
}


/* guided_choice: each string's token ids (plain text, as the model would
 * write it), laid out as kimi_shm_slot_t.n_guided words */
static ngx_int_t
ngx_http_kimi_guided_words(ngx_http_kimi_ctx_t *ctx)
{
    size_t                   i, n_ids, at;
    int32_t                 *ids, *w;
    json_t                  *c, *list;
    kimi_err_t               err;
    const kimi_tokenizer_t  *tk;

    list = ctx->params.guided_choice;
    tk = ngx_http_kimi_text_tokenizer(ctx->text);
    if (tk == NULL) {
        return NGX_ERROR;
    }

    /* the ids of a string are at most its bytes */
    at = 1;
    json_array_foreach(list, i, c) {
        at += 1 + json_string_length(c);
    }

    w = ngx_palloc(ctx->request->pool, at * sizeof(int32_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w[0] = (int32_t) json_array_size(list);
    at = 1;

    json_array_foreach(list, i, c) {
        if (kimi_tokenize(tk, json_string_value(c), json_string_length(c), 0,
                          &ids, &n_ids, &err)
            != 0)
        {
            return NGX_ERROR;
        }
        w[at++] = (int32_t) n_ids;
        ngx_memcpy(w + at, ids, n_ids * sizeof(int32_t));
        at += n_ids;
        free(ids);
    }

    ctx->params.guided = w;
    ctx->params.n_guided = at;

    return NGX_OK;
}


/* vLLM's bad_words as token ids, laid out as kimi_shm_slot_t.n_bad_words
 * words.  vLLM's rule: each word without its leading whitespace, and once
 * more after a space when that spelling starts with another token and has
 * as many (a word met mid-sentence); plain text, no special tokens. */
static ngx_int_t
ngx_http_kimi_bad_words(ngx_http_kimi_ctx_t *ctx)
{
    u_char                  *text;
    size_t                   i, len, at, n_ids[2];
    int32_t                 *ids[2], *w;
    json_t                  *list, *word;
    kimi_err_t               err;
    ngx_uint_t               k, n;
    const char              *p;
    const kimi_tokenizer_t  *tk;

    list = ctx->params.bad_words;
    tk = ngx_http_kimi_text_tokenizer(ctx->text);
    if (tk == NULL) {
        return NGX_ERROR;
    }

    /* the ids of a spelling are at most its bytes */
    at = 1;
    json_array_foreach(list, i, word) {
        at += 2 * (2 + json_string_length(word));
    }

    w = ngx_palloc(ctx->request->pool, at * sizeof(int32_t));
    text = ngx_pnalloc(ctx->request->pool,
                       NGX_HTTP_KIMI_MAX_BAD_WORD_LEN + 1);
    if (w == NULL || text == NULL) {
        return NGX_ERROR;
    }

    at = 1;
    n = 0;

    json_array_foreach(list, i, word) {
        p = json_string_value(word);
        len = json_string_length(word);
        while (len && ngx_http_kimi_is_space((u_char) *p)) {
            p++;
            len--;
        }

        text[0] = ' ';
        ngx_memcpy(text + 1, p, len);

        for (k = 0; k < 2; k++) {
            if (kimi_tokenize(tk, (char *) text + 1 - k, len + k, 0, &ids[k],
                              &n_ids[k], &err)
                != 0)
            {
                if (k) {
                    free(ids[0]);
                }
                return NGX_ERROR;
            }
        }

        for (k = 0; k < 2; k++) {
            if (k == 1 && (n_ids[1] != n_ids[0] || ids[1][0] == ids[0][0])) {
                break;
            }
            w[at++] = (int32_t) n_ids[k];
            ngx_memcpy(w + at, ids[k], n_ids[k] * sizeof(int32_t));
            at += n_ids[k];
            n++;
        }

        free(ids[0]);
        free(ids[1]);
    }

    w[0] = (int32_t) n;
    ctx->params.bad = w;
    ctx->params.n_bad = at;

    return NGX_OK;
}


/* A batch: every prompt counts in usage, the longest sets the limits and
 * an empty one refuses the request. */
static void
ngx_http_kimi_prompt_sizes(ngx_http_kimi_ctx_t *ctx, size_t *longest,
    size_t *shortest)
{
    ngx_uint_t  i;

    *longest = ctx->n_prompt;
    *shortest = ctx->n_prompt;
    ctx->usage.prompt_tokens = ctx->n_batch ? 0 : ctx->n_prompt;

    for (i = 0; i < ctx->n_batch; i++) {
        *longest = ngx_max(*longest, ctx->batch_n[i]);
        *shortest = ngx_min(*shortest, ctx->batch_n[i]);
        ctx->usage.prompt_tokens += ctx->batch_n[i];
    }
}


/* truncate_prompt_tokens: the last keep ids move to the front */
static void
ngx_http_kimi_keep_last(int32_t *ids, size_t *n, size_t keep)
{
    if (ids == NULL || *n <= keep) {
        return;
    }

    ngx_memmove(ids, ids + (*n - keep), keep * sizeof(int32_t));
    *n = keep;
}


/*
 * Called once the prompt ids exist (inline or from the thread pool's
 * completion handler): truncates them when asked, checks the context
 * length, then hands the request to the engine.  Headers stay unsent until
 * the engine accepts.
 */
void
ngx_http_kimi_submit(ngx_http_kimi_ctx_t *ctx)
{
    u_char                  *p;
    size_t                   len, n_prompt, shortest, keep;
    ngx_str_t                error;
    ngx_int_t                rc;
    ngx_uint_t               max_len, max_tokens, i;
    ngx_http_kimi_ctx_t     *c;
    kimi_shm_header_t       *hdr;
    ngx_http_request_t      *r;
    ngx_http_kimi_attach_t  *a;

    ngx_str_t                why;

    const ngx_http_kimi_gen_defaults_t  *gen;

    r = ctx->request;

    ngx_http_kimi_prompt_sizes(ctx, &n_prompt, &shortest);

    a = ngx_http_kimi_engine_get(r->connection->log);

    if (ngx_http_kimi_engine_ready(a, &error) != NGX_OK) {
        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "service_unavailable",
                                     (char *) error.data, error.len,
                                     NULL, NULL));
        return;
    }

    hdr = ngx_http_kimi_engine_header(a);
    max_len = hdr->max_model_len;

    if (ctx->params.truncate_prompt != 0) {
        keep = ctx->params.truncate_prompt > 0
               ? (size_t) ctx->params.truncate_prompt : max_len;

        if (keep > max_len) {
            ngx_str_set(&error, "\"truncate_prompt_tokens\" is larger than"
                        " the model's maximum context length");
            ngx_http_kimi_finalize(ctx,
                ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "invalid_request_error",
                                         (char *) error.data, error.len,
                                         "truncate_prompt_tokens", NULL));
            return;
        }

        ngx_http_kimi_keep_last(ctx->prompt, &ctx->n_prompt, keep);

        for (i = 0; i < ctx->n_batch; i++) {
            if (ctx->batch_ids[i] == ctx->prompt) {   /* the same buffer */
                ctx->batch_n[i] = ctx->n_prompt;
                continue;
            }
            ngx_http_kimi_keep_last(ctx->batch_ids[i], &ctx->batch_n[i], keep);
        }

        ngx_http_kimi_prompt_sizes(ctx, &n_prompt, &shortest);
    }

    if (ctx->params.max_tokens >= 0) {
        max_tokens = ctx->params.max_tokens;

    } else if (ctx->conf->default_max_tokens) {
        max_tokens = max_len > n_prompt ? max_len - n_prompt : 1;
        max_tokens = ngx_min(ctx->conf->default_max_tokens, max_tokens);

    } else if (ctx->route == NGX_HTTP_KIMI_ROUTE_COMPLETIONS
               && ctx->params.max_tokens_absent)
    {
        /* OpenAI's completions default, which vLLM keeps: 16 */
        max_tokens = NGX_HTTP_KIMI_COMPLETIONS_MAX_TOKENS;

    } else {
        /* vLLM's default: whatever room the context has left */
        max_tokens = max_len > n_prompt ? max_len - n_prompt : 1;
    }

    if (shortest == 0) {
        ngx_str_set(&error, "The prompt is empty after tokenization");
        goto invalid;
    }

    if (n_prompt + max_tokens > max_len) {
        len = 256;
        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        error.data = p;
        error.len = ngx_snprintf(p, len,
                        "This model's maximum context length is %ui tokens. "
                        "However, you requested %ui tokens (%uz in the "
                        "messages, %ui in the completion). Please reduce the "
                        "length of the messages or completion.",
                        max_len, n_prompt + max_tokens, n_prompt,
                        max_tokens)
                    - p;

        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                     "invalid_request_error",
                                     (char *) error.data, error.len,
                                     ctx->route == NGX_HTTP_KIMI_ROUTE_CHAT
                                     ? "messages" : "prompt",
                                     "context_length_exceeded"));
        return;
    }

    /* generation_config.json's max_new_tokens caps every request, as
     * vLLM's --generation-config auto does (after the length check) */
    gen = ngx_http_kimi_text_gen_defaults(ngx_http_kimi_text_get(&why));
    if (gen != NULL && gen->max_new_tokens) {
        max_tokens = ngx_min(max_tokens, gen->max_new_tokens);
    }

    ctx->params.sampling.max_tokens = max_tokens;

    if (ctx->params.guided_choice != NULL
        && ngx_http_kimi_guided_words(ctx) != NGX_OK)
    {
        ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ctx->params.bad_words != NULL
        && ngx_http_kimi_bad_words(ctx) != NGX_OK)
    {
        ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ctx->params.tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_NAMED
        || ctx->params.tool_choice == NGX_HTTP_KIMI_TOOL_CHOICE_REQUIRED)
    {
        rc = ngx_http_kimi_tool_words(ctx);

        if (rc == NGX_DECLINED) {
            static const char  msg[] = "tool_choice \"required\" or a named "
                "function is enforced only in Kimi's tool-call format; this "
                "model's tokenizer has no Kimi tool-call markers (use "
                "\"auto\")";

            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "kimi: forced tool_choice refused: no Kimi markers");
            ngx_http_kimi_finalize(ctx,
                ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "invalid_request_error", msg,
                                         sizeof(msg) - 1, "tool_choice",
                                         NULL));
            return;
        }

        if (rc != NGX_OK) {
            ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }

    if ((ctx->params.n > 1 || ctx->n_batch > 1)
        && ngx_http_kimi_choices(ctx) != NGX_OK)
    {
        ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    for (i = 0; i < ctx->n_choices; i++) {
        c = ctx->choices ? ctx->choices[i] : ctx;

        /* a refusal of any choice is the request's (the slots of the
         * ones before go back in finalize) */
        rc = ngx_http_kimi_engine_submit(c, &error);

        if (rc != NGX_OK) {
            ngx_http_kimi_finalize(ctx,
                ngx_http_kimi_send_error(r, rc,
                                         rc < NGX_HTTP_INTERNAL_SERVER_ERROR
                                         ? "invalid_request_error"
                                         : "service_unavailable",
                                         (char *) error.data, error.len,
                                         NULL, NULL));
            return;
        }

        c->phase = NGX_HTTP_KIMI_PHASE_SUBMITTED;

        c->timer.handler = ngx_http_kimi_timeout_handler;
        c->timer.data = c;
        c->timer.log = r->connection->log;

        /* non-cancelable on purpose: a graceful reload waits for the
         * stream */
        ngx_add_timer(&c->timer, ctx->conf->first_token_timeout);
    }

    ngx_http_kimi_observe(ctx, 0);

    if (ctx->detached && ngx_http_kimi_background_progress(ctx) != NGX_OK) {
        /* cancelled meanwhile */
        ngx_http_kimi_finalize(ctx, NGX_HTTP_CLIENT_CLOSED_REQUEST);
    }

    return;

invalid:

    ngx_http_kimi_finalize(ctx,
        ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                 "invalid_request_error",
                                 (char *) error.data, error.len, NULL, NULL));
}


/* the engine made progress (or may again): re-arm the token timer */
void
ngx_http_kimi_touch(ngx_http_kimi_ctx_t *ctx)
{
    if (ctx->main->finalized || ctx->phase == NGX_HTTP_KIMI_PHASE_DONE) {
        return;
    }

    /* a drain before the first token keeps the first-token limit */
    ngx_add_timer(&ctx->timer, ctx->usage.ttft < 0
                               ? ctx->conf->first_token_timeout
                               : ctx->conf->token_timeout);
}


static void
ngx_http_kimi_timeout_handler(ngx_event_t *ev)
{
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_kimi_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_log_error(NGX_LOG_ERR, c->log, 0,
                  "kimi engine timed out waiting for %s token",
                  ctx->usage.ttft < 0 ? "the first" : "the next");

    ngx_str_set(&ctx->main->usage.finish_reason, "error");

    if (!ctx->main->headers_sent) {
        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_send_error(r, NGX_HTTP_GATEWAY_TIME_OUT,
                                     "timeout_error",
                                     "The engine did not produce a token in "
                                     "time", 42, NULL, NULL));

    } else {
        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_sse_error(ctx, "The engine did not produce a "
                                    "token in time", 42, "timeout_error"));
    }

    ngx_http_run_posted_requests(c);
}


/*
 * The one way out for a request that reached the body handler.  The
 * request (and ctx) may be freed inside; callers must not touch either
 * afterwards.
 */
void
ngx_http_kimi_finalize(ngx_http_kimi_ctx_t *ctx, ngx_int_t rc)
{
    ngx_uint_t           i, total;
    ngx_http_request_t  *r;

    if (rc == NGX_HTTP_KIMI_CHOICE_DONE) {
        ngx_http_kimi_choice_end(ctx);     /* the others go on */
        return;
    }

    ctx = ctx->main;                       /* any choice ends the request */

    if (ctx->finalized) {
        return;
    }

    ctx->finalized = 1;

    r = ctx->request;

    /* the slots go back as soon as nothing more is wanted from them; the
     * request's token count is every choice's (once: finalized is set) */
    total = 0;
    for (i = 0; i < ctx->n_choices; i++) {
        ngx_http_kimi_choice_end(ctx->choices ? ctx->choices[i] : ctx);
        total += ctx->choices ? ctx->choices[i]->usage.completion_tokens : 0;
    }

    if (ctx->choices) {
        ctx->usage.completion_tokens = total;
    }

    if (ctx->usage.status == 0) {
        ctx->usage.status = (rc >= NGX_HTTP_SPECIAL_RESPONSE) ? (ngx_uint_t) rc
                            : r->headers_out.status;
    }

    if (ctx->usage.finish_reason.len == 0 && ctx->usage.status >= 400) {
        ngx_str_set(&ctx->usage.finish_reason, "error");
    }

    ctx->usage.duration = (ngx_msec_int_t) (ngx_current_msec
                                            - ctx->usage.start);
    ngx_http_kimi_observe(ctx, 1);

    if (ctx->detached) {
        /* no client: the outcome is in the store; its request goes */
        ngx_http_kimi_background_end(ctx);
        return;
    }

    ngx_http_finalize_request(r, rc);
}


/* A choice is over: its timer, its slot (cancelled if still running). */
static void
ngx_http_kimi_choice_end(ngx_http_kimi_ctx_t *c)
{
    c->phase = NGX_HTTP_KIMI_PHASE_DONE;

    if (c->timer.timer_set) {
        ngx_del_timer(&c->timer);
    }

    ngx_http_kimi_engine_release(c);
}


static void
ngx_http_kimi_cleanup(void *data)
{
    ngx_uint_t            i;
    ngx_http_kimi_ctx_t  *ctx = data, *c;

    /* the other choices first: theirs are the request's resources too
     * (and their tokens, when finalize did not count them) */
    for (i = 1; ctx->choices && i < ctx->n_choices; i++) {
        c = ctx->choices[i];

        if (!ctx->finalized) {
            ctx->usage.completion_tokens += c->usage.completion_tokens;
        }

        if (c->timer.timer_set) {
            ngx_del_timer(&c->timer);
        }

        c->phase = NGX_HTTP_KIMI_PHASE_DONE;
        ngx_http_kimi_engine_release(c);

        if (c->detok) {
            kimi_detok_free(c->detok);
            c->detok = NULL;
        }

        if (c->toolparse) {
            kimi_toolparse_free(c->toolparse);
            c->toolparse = NULL;
        }
    }

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    if (ctx->slot != NULL && ctx->phase != NGX_HTTP_KIMI_PHASE_DONE) {
        ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                      "client closed stream, cancelling slot %D",
                      ctx->slot_index);
        ngx_str_set(&ctx->usage.finish_reason, "abort");
    }

    ctx->phase = NGX_HTTP_KIMI_PHASE_DONE;

    ngx_http_kimi_text_cancel(ctx);
    ngx_http_kimi_engine_release(ctx);

    if (ctx->detok) {
        kimi_detok_free(ctx->detok);
        ctx->detok = NULL;
    }

    if (ctx->toolparse) {
        kimi_toolparse_free(ctx->toolparse);
        ctx->toolparse = NULL;
    }

    /* a batch's prompt 0 is ctx->prompt */
    for (i = 1; i < ctx->n_batch; i++) {
        free(ctx->batch_ids[i]);
    }

    if (ctx->n_batch) {
        free(ctx->batch_ids);
        free(ctx->batch_n);
        ctx->batch_ids = NULL;
        ctx->batch_n = NULL;
        ctx->n_batch = 0;
    }

    if (ctx->prompt) {
        ngx_free(ctx->prompt);
        ctx->prompt = NULL;
    }

    if (ctx->text) {
        ngx_http_kimi_text_unref(ctx->text);
        ctx->text = NULL;
    }

    if (ctx->params.root) {
        json_decref(ctx->params.root);
        ctx->params.root = NULL;
    }

    ctx->usage.duration = (ngx_msec_int_t) (ngx_current_msec
                                            - ctx->usage.start);

    if (ctx->usage.status == 0) {
        ctx->usage.status = ctx->request->headers_out.status;
    }

    ngx_http_kimi_observe(ctx, 1);
}


/*
 * Hands the request's facts to the ops module (metrics, budgets, log
 * variables): as they become known, and with final set exactly once at
 * the end.  A no-op when the ops files are not built in.
 */
void
ngx_http_kimi_observe(ngx_http_kimi_ctx_t *ctx, ngx_uint_t final)
{
#if (NGX_HTTP_KIMI_OPS)
    ngx_str_t                 *f;
    ngx_http_kimi_ops_req_t   *ops;

    if (ctx->usage.observed) {
        return;
    }

    ops = ngx_http_kimi_ops_req(ctx->request);
    if (ops == NULL) {
        ctx->usage.observed = 1;
        return;
    }

    /* written as soon as known too (submit), so that the ops cleanup,
     * which runs before ours on an abort, sees them */
    ops->model = ctx->usage.model;
    ops->request_id = ctx->id;
    ops->engine_rank = ctx->usage.rank;
    ops->prompt_tokens = ctx->usage.prompt_tokens;
    ops->cached_tokens = ctx->usage.cached_tokens;
    ops->completion_tokens = ctx->usage.completion_tokens;
    ops->queue_ns = ctx->queue_ns;

    f = &ctx->usage.finish_reason;

    if (f->len == 0) {
        ops->finish = NGX_HTTP_KIMI_OPS_FINISH_NONE;

    } else if (ngx_strncmp(f->data, "stop", f->len) == 0) {
        ops->finish = NGX_HTTP_KIMI_OPS_FINISH_STOP;

    } else if (ngx_strncmp(f->data, "length", f->len) == 0) {
        ops->finish = NGX_HTTP_KIMI_OPS_FINISH_LENGTH;

    } else if (ngx_strncmp(f->data, "tool_calls", f->len) == 0) {
        ops->finish = NGX_HTTP_KIMI_OPS_FINISH_TOOL_CALLS;

    } else if (ngx_strncmp(f->data, "abort", f->len) == 0) {
        ops->finish = NGX_HTTP_KIMI_OPS_FINISH_ABORT;

    } else {
        ops->finish = NGX_HTTP_KIMI_OPS_FINISH_ERROR;
    }

    if (!final) {
        return;
    }

    ctx->usage.observed = 1;
    ngx_http_kimi_ops_finalize(ctx->request);
#else
    ctx->usage.observed = final;
#endif
}


/* n new tokens reached this worker for the request (ops: TTFT, ITL) */
void
ngx_http_kimi_observe_tokens(ngx_http_kimi_ctx_t *ctx, ngx_uint_t n)
{
    if (ctx->usage.ttft < 0 && n) {
        ctx->usage.ttft = (ngx_msec_int_t) (ngx_current_msec
                                            - ctx->usage.start);
    }

    /* the request's first token is any choice's */
    if (ctx->main->usage.ttft < 0 && n) {
        ctx->main->usage.ttft = ctx->usage.ttft;
    }

#if (NGX_HTTP_KIMI_OPS)
    ngx_http_kimi_ops_tokens(ctx->request, n);
#endif
}


static void *
ngx_http_kimi_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_kimi_main_conf_t  *kmcf;

    kmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_main_conf_t));
    if (kmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     kmcf->engine_dir = { 0, NULL };
     *     kmcf->model_dir = { 0, NULL };
     *     kmcf->thread_pool_name = { 0, NULL };
     *     kmcf->generation_override = { 0, NULL };
     *     kmcf->used = 0;
     */

    kmcf->offload_threshold = NGX_CONF_UNSET_SIZE;
    kmcf->content_format = NGX_CONF_UNSET_UINT;
    kmcf->tool_format = NGX_CONF_UNSET_UINT;
    kmcf->generation_config = NGX_CONF_UNSET_UINT;

    return kmcf;
}


static char *
ngx_http_kimi_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_kimi_main_conf_t  *kmcf = conf;

    ngx_conf_init_size_value(kmcf->offload_threshold,
                             NGX_HTTP_KIMI_OFFLOAD_DEFAULT);
    ngx_conf_init_uint_value(kmcf->content_format, 0);
    ngx_conf_init_uint_value(kmcf->tool_format, 0);
    ngx_conf_init_uint_value(kmcf->generation_config, 0);

    if (!kmcf->used) {
        return NGX_CONF_OK;
    }

    if (kmcf->engine_dir.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"kimi_pass\" is used but \"kimi_engine\" "
                           "is not set");
        return NGX_CONF_ERROR;
    }

#if (NGX_THREADS)
    /* NULL names nginx's "default" pool (32 threads), created on demand */
    kmcf->thread_pool = ngx_thread_pool_add(cf, kmcf->thread_pool_name.len
                                                ? &kmcf->thread_pool_name
                                                : NULL);
    if (kmcf->thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }
#endif

#if (NGX_HTTP_KIMI_OPS)
    /* /metrics reads the rank records of the segment this worker holds */
    if (ngx_http_kimi_ops_add_engine(cf, &kmcf->shm) != NGX_OK) {
        return NGX_CONF_ERROR;
    }
#endif

    return NGX_CONF_OK;
}


static void *
ngx_http_kimi_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_kimi_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->served_model_name = { 0, NULL };
     */

    conf->pass = NGX_CONF_UNSET;
    conf->first_token_timeout = NGX_CONF_UNSET_MSEC;
    conf->token_timeout = NGX_CONF_UNSET_MSEC;
    conf->default_max_tokens = NGX_CONF_UNSET_UINT;
    conf->queue_limit = NGX_CONF_UNSET_UINT;
    conf->special_tokens_in_content = NGX_CONF_UNSET;
    conf->reasoning_parser = NGX_CONF_UNSET_UINT;
    conf->responses_zone = NGX_CONF_UNSET_PTR;
    conf->responses_background = NGX_CONF_UNSET_UINT;
    conf->responses_events = NGX_CONF_UNSET_SIZE;
    conf->rank_hash = NGX_CONF_UNSET_PTR;

    return conf;
}


static char *
ngx_http_kimi_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_kimi_loc_conf_t *prev = parent;
    ngx_http_kimi_loc_conf_t *conf = child;

    ngx_conf_merge_value(conf->pass, prev->pass, 0);

    /* empty: the name the engine publishes in its segment */
    ngx_conf_merge_str_value(conf->served_model_name,
                             prev->served_model_name, "");

    /* a long prompt can prefill for minutes before the first token */
    ngx_conf_merge_msec_value(conf->first_token_timeout,
                              prev->first_token_timeout, 600000);
    ngx_conf_merge_msec_value(conf->token_timeout,
                              prev->token_timeout, 60000);

    /* 0: the rest of the context, as vLLM does */
    ngx_conf_merge_uint_value(conf->default_max_tokens,
                              prev->default_max_tokens, 0);

    /* requests per worker between body read and the engine's accept */
    ngx_conf_merge_uint_value(conf->queue_limit, prev->queue_limit, 1024);

    /* vLLM parity: special-token strings in contents are recognised */
    ngx_conf_merge_value(conf->special_tokens_in_content,
                         prev->special_tokens_in_content, 1);
    ngx_conf_merge_uint_value(conf->reasoning_parser, prev->reasoning_parser,
                              0);
    ngx_conf_merge_ptr_value(conf->responses_zone, prev->responses_zone,
                             NULL);

    /* background responses running at once in a worker: each holds an
     * engine slot and a little memory until it ends */
    ngx_conf_merge_uint_value(conf->responses_background,
                              prev->responses_background, 16);

    /* a background stream's events kept for re-attaching: ~2000 tokens
     * of deltas; the oldest go past it */
    ngx_conf_merge_size_value(conf->responses_events,
                              prev->responses_events, 512 * 1024);
    ngx_conf_merge_ptr_value(conf->rank_hash, prev->rank_hash, NULL);

    return NGX_CONF_OK;
}


/* kimi_served_model_name NAME [NAME ...]: kept space-separated, as the
 * engine publishes its --served-model-name list */
static char *
ngx_http_kimi_served_names(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kimi_loc_conf_t  *lcf = conf;

    u_char      *p;
    size_t       len;
    ngx_str_t   *value;
    ngx_uint_t   i;

    if (lcf->served_model_name.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;
    len = 0;

    for (i = 1; i < cf->args->nelts; i++) {
        if (value[i].len == 0
            || ngx_strlchr(value[i].data, value[i].data + value[i].len, ' ')
               != NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid model name "
                               "\"%V\" (empty, or with a space)", &value[i]);
            return NGX_CONF_ERROR;
        }

        len += value[i].len + 1;
    }

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    lcf->served_model_name.data = p;

    for (i = 1; i < cf->args->nelts; i++) {
        if (i > 1) {
            *p++ = ' ';
        }
        p = ngx_cpymem(p, value[i].data, value[i].len);
    }

    lcf->served_model_name.len = p - lcf->served_model_name.data;
    return NGX_CONF_OK;
}


/* kimi_rank_hash KEY | prompt_prefix=N | off [slack=N] */
static char *
ngx_http_kimi_rank_hash(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kimi_loc_conf_t  *lcf = conf;

    ngx_int_t                           n;
    ngx_str_t                          *value;
    ngx_uint_t                          i;
    ngx_http_kimi_rank_hash_t          *h;
    ngx_http_compile_complex_value_t    ccv;

    if (lcf->rank_hash != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts != 2) {
            return "takes no parameters with \"off\"";
        }

        lcf->rank_hash = NULL;
        return NGX_CONF_OK;
    }

    h = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_rank_hash_t));
    if (h == NULL) {
        return NGX_CONF_ERROR;
    }

    /* a keyed rank may run this many more requests than the least loaded
     * before its requests go elsewhere (and lose their cached prefix) */
    h->slack = 16;

    if (ngx_strncmp(value[1].data, "prompt_prefix=", 14) == 0) {
        n = ngx_atoi(value[1].data + 14, value[1].len - 14);
        if (n == NGX_ERROR || n == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid prompt_prefix \"%V\" (a number of"
                               " tokens, at least 1)", &value[1]);
            return NGX_CONF_ERROR;
        }

        h->prompt_prefix = (ngx_uint_t) n;

    } else {
        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &value[1];
        ccv.complex_value = ngx_palloc(cf->pool,
                                       sizeof(ngx_http_complex_value_t));
        if (ccv.complex_value == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        h->key = ccv.complex_value;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_strncmp(value[i].data, "slack=", 6) == 0) {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (n == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid slack \"%V\" (a number of "
                                   "requests)", &value[i]);
                return NGX_CONF_ERROR;
            }

            h->slack = (ngx_uint_t) n;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    lcf->rank_hash = h;
    return NGX_CONF_OK;
}


/* vLLM's --chat-template (ngx_conf_set_str_slot's post handler): a
 * template in one line, or a file (relative to the configuration's prefix,
 * kept as its full name) holding one; compiled here once so nginx -t says
 * what is wrong with it. */
static char *
ngx_http_kimi_chat_template_check(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t        *value = data;
    u_char           *p;
    kimi_err_t        err;
    kimi_template_t  *t;

    if (ngx_strstr(value->data, "{{") == NULL
        && ngx_strstr(value->data, "{%") == NULL)
    {
        /* a file: its full name, NUL-ended */
        if (ngx_conf_full_name(cf->cycle, value, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
        p = ngx_pnalloc(cf->pool, value->len + 1);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }
        ngx_memcpy(p, value->data, value->len);
        p[value->len] = '\0';
        value->data = p;
    }

    /* no model directory: only the template itself is checked */
    if (kimi_template_load(&t, "/nonexistent", (char *) value->data, &err)
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"kimi_chat_template\": %s",
                           err.msg);
        return NGX_CONF_ERROR;
    }

    kimi_template_free(t);
    return NGX_CONF_OK;
}


/* kimi_override_generation_config (ngx_conf_set_str_slot's post handler):
 * the value must be a JSON object. */
static char *
ngx_http_kimi_json_object_check(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t     *value = data;
    json_t        *v;
    json_error_t   jerr;

    v = json_loadb((char *) value->data, value->len, 0, &jerr);
    if (!json_is_object(v)) {
        json_decref(v);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"kimi_override_generation_config\" must be a "
                           "JSON object, as '{\"temperature\": 0.5}'%s%s",
                           v == NULL ? ": " : "", v == NULL ? jerr.text : "");
        return NGX_CONF_ERROR;
    }

    json_decref(v);
    return NGX_CONF_OK;
}


static char *
ngx_http_kimi_pass(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kimi_loc_conf_t *klcf = conf;

    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_kimi_main_conf_t  *kmcf;

    if (klcf->pass != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    klcf->pass = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_kimi_handler;

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_kimi_module);
    kmcf->used = 1;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_kimi_preconfiguration(ngx_conf_t *cf)
{
    /* jansson's hash seed must be set before any thread uses it */
    json_object_seed(0);

    return NGX_OK;
}


static ngx_int_t
ngx_http_kimi_init_process(ngx_cycle_t *cycle)
{
    ngx_http_kimi_main_conf_t  *kmcf;

    kmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_kimi_module);

    if (kmcf == NULL || !kmcf->used) {
        return NGX_OK;
    }

    if (ngx_http_kimi_text_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    /* an absent engine is not an error: requests get 503 until it comes */
    return ngx_http_kimi_engine_init_process(cycle);
}


static void
ngx_http_kimi_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_kimi_main_conf_t  *kmcf;

    kmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_kimi_module);

    if (kmcf == NULL || !kmcf->used) {
        return;
    }

    /* background responses first: they are marked failed while their
     * slots are still theirs */
    ngx_http_kimi_background_exit_process(cycle);
    ngx_http_kimi_engine_exit_process(cycle);
    ngx_http_kimi_text_exit_process(cycle);
}
