
/*
 * ngx_http_kimi_module: types shared by the module's files.
 *
 * Owns:   the configuration structs, the per-request context and the
 *         prototypes the module's files call across each other.
 * Never:  defines behaviour; every function lives in one .c file named
 *         after its concern (module, openai, sse, engine, text).
 *
 * Choices ("n" > 1): one ngx_http_kimi_ctx_t per choice, each with its
 * own engine slot, detokenizer, tool parser and output state; the one the
 * request holds (main, choice 0) also owns what is the request's: the
 * headers, the text stack references, the prompt, the final chunk or
 * response and the end (ngx_http_kimi_finalize() ends a choice with
 * NGX_HTTP_KIMI_CHOICE_DONE, anything else ends the request).
 *
 * For the ops files (metrics, variables, keys): the gateway fills their
 * ngx_http_kimi_ops_req_t (ngx_http_kimi_ops.h) at submit and at the end
 * (ngx_http_kimi_observe()); the same facts are in ngx_http_kimi_ctx_t's
 * "usage" block, through ngx_http_get_module_ctx(r, ngx_http_kimi_module),
 * valid until the request pool is destroyed (log phase included).
 */


#ifndef _NGX_HTTP_KIMI_H_INCLUDED_
#define _NGX_HTTP_KIMI_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "../engine/shm/kimi_shm.h"
#include "../engine/text/kimi_text.h"
#include "../engine/text/ebnf.h"
#include "../engine/text/json_schema.h"
#include "../engine/text/regex_dfa.h"
#include "../engine/text/struct_tag.h"


#define NGX_HTTP_KIMI_VERSION           "0.1.0"   /* GET /version; debian/changelog */
#define NGX_HTTP_KIMI_MAX_GUIDED        64     /* guided_choice strings */
#define NGX_HTTP_KIMI_MAX_STOP          16     /* OpenAI allows 4; vLLM more */
#define NGX_HTTP_KIMI_MAX_BAD_WORDS     64     /* vLLM's bad_words, each */
#define NGX_HTTP_KIMI_MAX_BAD_WORD_LEN  256    /* ... of at most these bytes */
#define NGX_HTTP_KIMI_MAX_STOP_LEN      256    /* bytes per stop string */
#define NGX_HTTP_KIMI_MAX_TOOL_CALLS    64     /* per response */
#define NGX_HTTP_KIMI_COMPLETIONS_MAX_TOKENS  16  /* max_tokens absent */
#define NGX_HTTP_KIMI_MAX_CHOICES       128    /* "n", as OpenAI allows */

/* ngx_http_kimi_finalize(): one choice of several ended, the request
 * goes on (never reaches nginx) */
#define NGX_HTTP_KIMI_CHOICE_DONE       -100


/* ASCII whitespace, what Python's str.lstrip() strips from the words of
 * vLLM's bad_words that reach us (the rest of Unicode's is rare there) */
static ngx_inline ngx_uint_t
ngx_http_kimi_is_space(u_char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}


typedef enum {
    NGX_HTTP_KIMI_ROUTE_NONE = 0,
    NGX_HTTP_KIMI_ROUTE_CHAT,
    NGX_HTTP_KIMI_ROUTE_COMPLETIONS,
    NGX_HTTP_KIMI_ROUTE_MODELS,
    NGX_HTTP_KIMI_ROUTE_HEALTH,
    NGX_HTTP_KIMI_ROUTE_TOKENIZE,
    NGX_HTTP_KIMI_ROUTE_DETOKENIZE,
    NGX_HTTP_KIMI_ROUTE_RESPONSES,     /* routing only: a chat request with
                                          ctx->responses set */
    NGX_HTTP_KIMI_ROUTE_RESPONSE,      /* GET, DELETE /v1/responses/{id} */
    NGX_HTTP_KIMI_ROUTE_RESPONSE_ITEMS, /* GET .../{id}/input_items */
    NGX_HTTP_KIMI_ROUTE_RESPONSE_CANCEL, /* POST .../{id}/cancel */
    NGX_HTTP_KIMI_ROUTE_VERSION,
    NGX_HTTP_KIMI_ROUTE_INVOCATIONS,   /* routing only: chat or completions
                                          by the body (SageMaker's) */
} ngx_http_kimi_route_e;


typedef enum {
    NGX_HTTP_KIMI_TOOL_CHOICE_NONE = 0,
    NGX_HTTP_KIMI_TOOL_CHOICE_AUTO,
    NGX_HTTP_KIMI_TOOL_CHOICE_REQUIRED,
    NGX_HTTP_KIMI_TOOL_CHOICE_NAMED,
} ngx_http_kimi_tool_choice_e;


/* where a request is in its life; the cleanup handler reads it */
typedef enum {
    NGX_HTTP_KIMI_PHASE_PARSE = 0,     /* body read, validating */
    NGX_HTTP_KIMI_PHASE_TEXT,          /* template/tokenize (maybe thread) */
    NGX_HTTP_KIMI_PHASE_SUBMITTED,     /* waiting for ACCEPTED */
    NGX_HTTP_KIMI_PHASE_STREAMING,     /* accepted, tokens flowing */
    NGX_HTTP_KIMI_PHASE_DONE,          /* last byte handed to nginx */
} ngx_http_kimi_phase_e;


typedef struct ngx_http_kimi_engine_s  ngx_http_kimi_engine_t;
typedef struct ngx_http_kimi_attach_s  ngx_http_kimi_attach_t;
typedef struct ngx_http_kimi_text_s    ngx_http_kimi_text_t;
typedef struct ngx_http_kimi_ctx_s     ngx_http_kimi_ctx_t;
typedef struct ngx_http_kimi_bg_s      ngx_http_kimi_bg_t;


typedef struct {
    ngx_str_t                    engine_dir;       /* kimi_engine */
    ngx_str_t                    model_dir;        /* kimi_model_dir */
    ngx_str_t                    thread_pool_name; /* kimi_thread_pool */
    size_t                       offload_threshold;
    ngx_uint_t                   content_format;   /* kimi_chat_template_
                                                      content_format: auto,
                                                      string, openai */
    ngx_uint_t                   tool_format;      /* kimi_tool_call_parser:
                                                      0 auto, else the
                                                      format + 1 */
    ngx_uint_t                   generation_config; /* kimi_generation_
                                                      config: 0 auto, 1
                                                      vllm */
    ngx_str_t                    generation_override; /* kimi_override_
                                                      generation_config:
                                                      a JSON object */
    ngx_str_t                    chat_template;    /* kimi_chat_template: a
                                                      file's full name or a
                                                      template (NUL-ended) */
#if (NGX_THREADS)
    ngx_thread_pool_t           *thread_pool;
#endif
    ngx_flag_t                   used;             /* some kimi_pass exists */
    kimi_shm_t                   shm;              /* current segment view
                                                      (hdr NULL: detached),
                                                      kept by _engine.c */
} ngx_http_kimi_main_conf_t;


/* kimi_rank_hash: the data-parallel rank a request goes to, by a key
 * (its KV cache then holds the key's earlier prompts) */
typedef struct {
    ngx_http_complex_value_t    *key;              /* KEY, or NULL: */
    ngx_uint_t                   prompt_prefix;    /* the first N prompt
                                                      tokens */
    ngx_uint_t                   slack;            /* requests the keyed
                                                      rank may carry over
                                                      the least loaded */
} ngx_http_kimi_rank_hash_t;


typedef struct {
    ngx_flag_t                   pass;             /* kimi_pass */
    ngx_str_t                    served_model_name;
    ngx_msec_t                   first_token_timeout;
    ngx_msec_t                   token_timeout;
    ngx_uint_t                   default_max_tokens;
    ngx_uint_t                   queue_limit;
    ngx_flag_t                   special_tokens_in_content;
    ngx_uint_t                   reasoning_parser; /* kimi_reasoning_parser:
                                                      0 off, else on */
    ngx_shm_zone_t              *responses_zone;   /* kimi_responses_store:
                                                      NULL off */
    ngx_uint_t                   responses_background; /* kimi_responses_
                                                      background: running
                                                      at once per worker,
                                                      0 refuses them */
    size_t                       responses_events; /* kimi_responses_stream_
                                                      events: bytes of a
                                                      background stream's
                                                      events kept */
    ngx_http_kimi_rank_hash_t   *rank_hash;        /* kimi_rank_hash: NULL
                                                      off */
} ngx_http_kimi_loc_conf_t;


/* What the client asked for, validated (ngx_http_kimi_openai.c). */
typedef struct {
    json_t                      *root;             /* the parsed body */
    json_t                      *messages;         /* chat: borrowed */
    json_t                      *tools;            /* NULL or non-empty */
    json_t                      *template_kwargs;  /* chat_template_kwargs */
    json_t                      *prompt_ids;       /* completions: ids */
    json_t                      *batch;            /* completions: a list
                                                      of prompts (strings
                                                      or id arrays), > 1 */
    ngx_str_t                    prompt_text;      /* completions: text */
    ngx_str_t                    model;            /* as sent, may be empty */
    ngx_str_t                    tool_name;        /* NAMED choice */
    ngx_str_t                    stop[NGX_HTTP_KIMI_MAX_STOP];
    ngx_uint_t                   n_stop;
    size_t                       max_stop_len;
    kimi_shm_sampling_t          sampling;
    ngx_int_t                    max_tokens;       /* -1: not given */
    json_t                      *guided_choice;    /* vLLM's: the answer is
                                                      one of these strings */
    int32_t                     *guided;           /* their token ids, as
                                                      kimi_shm_slot_t.n_guided
                                                      words (pool) */
    size_t                       n_guided;
    json_t                      *bad_words;        /* vLLM's: strings whose
                                                      last token is masked */
    int32_t                     *bad;              /* their token ids, as
                                                      kimi_shm_slot_t.
                                                      n_bad_words words */
    size_t                       n_bad;
    ngx_int_t                    truncate_prompt;  /* vLLM's
                                                      truncate_prompt_tokens:
                                                      0 off, -1 to
                                                      max_model_len, k: the
                                                      last k tokens */
    ngx_uint_t                   n;                /* choices, 1.. */
    unsigned                     max_tokens_absent:1;  /* no key, not null */
    size_t                       body_len;         /* offload decision */
    ngx_http_kimi_tool_choice_e  tool_choice;
    unsigned                     one_call:1;       /* parallel_tool_calls
                                                      false */
    unsigned                     stream:1;
    unsigned                     include_usage:1;
    unsigned                     tokens_as_ids:1;      /* vLLM's
                                                          return_tokens_as_
                                                          token_ids */
    unsigned                     token_ids:1;          /* vLLM's
                                                          return_token_ids */
    unsigned                     include_stop_str:1;   /* vLLM's
                                                          include_stop_str_
                                                          in_output */
    unsigned                     continuous_usage:1;   /* usage in every
                                                          chunk */
    unsigned                     skip_special:1;
    unsigned                     echo:1;
    unsigned                     echo_lp:1;        /* echo with logprobs: the
                                                      lists open with the
                                                      prompt's tokens */
    unsigned                     prompt_lp:1;      /* vLLM's prompt_logprobs */
    ngx_uint_t                   prompt_lp_top;    /* its alternatives */
    unsigned                     add_generation_prompt:1;
    unsigned                     continue_final:1;     /* vLLM's
                                                          continue_final_
                                                          message */
    unsigned                     token_strs:1;     /* /tokenize's
                                                      return_token_strs */
    unsigned                     add_special:1;    /* vLLM's
                                                      add_special_tokens */
    ngx_str_t                    echo_text;        /* chat's echo: the last
                                                      message's text */
    uint64_t                     cache_salt;       /* vLLM's cache_salt
                                                      hashed, 0: none */
} ngx_http_kimi_params_t;


/* The observable outcome, for logging/metrics (the ops files read it). */
typedef struct {
    ngx_str_t                    model;            /* served model name */
    ngx_http_kimi_route_e        route;
    ngx_uint_t                   prompt_tokens;
    ngx_uint_t                   completion_tokens;
    ngx_uint_t                   cached_tokens;
    ngx_msec_t                   start;            /* ngx_current_msec */
    ngx_msec_int_t               ttft;             /* ms; -1: no token */
    ngx_msec_int_t               duration;         /* ms, at finalize */
    ngx_str_t                    finish_reason;    /* "" until known */
    ngx_int_t                    rank;             /* -1: not routed */
    ngx_uint_t                   status;           /* HTTP status sent */
    unsigned                     stream:1;
    unsigned                     observed:1;       /* ops hook ran */
} ngx_http_kimi_usage_t;


/* One tool call of a non-streaming response, assembled from events. */
typedef struct {
    ngx_str_t                    id;
    ngx_str_t                    name;
    ngx_str_t                    arguments;        /* grows in r->pool */
    size_t                       arguments_cap;
    ngx_uint_t                   item;             /* /v1/responses stream:
                                                      its output_index */
    u_char                       item_id[32];      /* and "fc_..." id */
} ngx_http_kimi_tool_call_t;


struct ngx_http_kimi_ctx_s {
    ngx_http_request_t          *request;
    ngx_http_kimi_loc_conf_t    *conf;
    ngx_http_kimi_route_e        route;
    ngx_http_kimi_phase_e        phase;

    /* choices: main is the request's ctx (choice 0); main->choices holds
     * all n of them when n > 1, NULL otherwise */
    ngx_http_kimi_ctx_t         *main;
    ngx_http_kimi_ctx_t        **choices;
    ngx_uint_t                   n_choices;        /* main: 1 or n */
    ngx_uint_t                   n_finished;       /* main: choices ended */
    ngx_uint_t                   index;            /* this choice's */

    ngx_str_t                    id;               /* chatcmpl-... */
    time_t                       created;
    ngx_http_kimi_params_t       params;
    ngx_http_kimi_usage_t        usage;

    /* text work (ngx_http_kimi_text.c) */
    ngx_http_kimi_text_t        *text;             /* referenced */
    void                        *task;             /* in-flight thread task */
    int32_t                     *prompt;           /* ngx_alloc'ed ids */
    size_t                       n_prompt;
    int32_t                    **batch_ids;        /* main, a batch: each
                                                      prompt's ids ([0] is
                                                      prompt), malloc'ed */
    size_t                      *batch_n;
    size_t                       n_batch;          /* 0: no batch */
    kimi_detok_t                *detok;
    kimi_toolparse_t            *toolparse;

    /* engine slot (ngx_http_kimi_engine.c) */
    ngx_http_kimi_attach_t      *attach;           /* referenced */
    kimi_shm_slot_t             *slot;
    int32_t                      slot_index;       /* -1: none */
    uint32_t                     generation;
    ngx_int_t                    pinned_rank;      /* X-Kimi-Rank, or -1 */
    uint64_t                     queue_ns;         /* engine: submit->run */
    ngx_queue_t                  queue;            /* attach->requests */
    ngx_event_t                  timer;            /* first/next token */

    /* output (ngx_http_kimi_sse.c) */
    ngx_chain_t                 *free;
    ngx_chain_t                 *busy;
    ngx_chain_t                 *last_chunk;       /* held to carry the
                                                      finish_reason */
    ngx_str_t                    held;             /* stop-string hold-back */
    size_t                       held_cap;
    ngx_str_t                    prefix;           /* SSE chunk head */
    ngx_str_t                    logprobs;         /* entries not yet sent,
                                                      JSON, comma-separated */
    size_t                       logprobs_cap;
    ngx_str_t                    lp[4];            /* /v1/completions:
                                                      tokens, token_logprobs,
                                                      top_logprobs,
                                                      text_offset lists */
    size_t                       lp_cap[4];
    size_t                       lp_chars;         /* text_offset so far */
    size_t                       prompt_lp_left;   /* prompt entries owed by
                                                      the engine (they come
                                                      before any token) */
    json_t                      *prompt_lp;        /* vLLM's prompt_logprobs:
                                                      [null, {id: {logprob,
                                                      rank, decoded_token}}] */
    ngx_uint_t                   n_out;            /* tokens output so far */
    ngx_str_t                    content;          /* non-stream text */
    ngx_array_t                 *out_ids;          /* return_token_ids:
                                                      every generated id */
    ngx_uint_t                   ids_sent;         /* ... in chunks so far */
    unsigned                     prompt_ids_sent:1;
    size_t                       content_cap;
    ngx_str_t                    reasoning;        /* its reasoning_content
                                                      (non-stream) */
    size_t                       reasoning_cap;
    u_char                       think_hold[8];    /* a possible tag start */
    size_t                       n_think_hold;
    unsigned                     thinking:1;       /* before "</think>" */
    unsigned                     think_seen:1;     /* some text came */
    ngx_http_kimi_tool_call_t   *calls;            /* non-stream */
    ngx_uint_t                   n_calls;
    ngx_uint_t                   n_calls_streamed;
    ngx_str_t                    stop_reason;      /* matched stop string */
    int32_t                      stop_token_id;    /* the stop id it ended
                                                      on, with stopped_on_id */
    uint32_t                     finish;           /* kimi_finish_e */
    ngx_int_t                    final_rc;         /* when failed is set */

    unsigned                     headers_sent:1;
    unsigned                     role_sent:1;
    unsigned                     stopped_on_id:1;  /* a stop id, not the
                                                      tokenizer's eos */
    unsigned                     echo_pending:1;   /* streamed echo with
                                                      logprobs: the prompt's
                                                      chunk waits for its
                                                      entries */
    unsigned                     stopped:1;        /* stop string matched */
    unsigned                     sse_final:1;      /* last drain: hold the
                                                      last content chunk */
    unsigned                     finalized:1;
    unsigned                     released:1;
    unsigned                     output_busy:1;
    unsigned                     want_tools:1;
    unsigned                     responses:1;      /* /v1/responses: the
                                                      request and answer in
                                                      the Responses API */
    unsigned                     resp_msg_open:1;  /* its stream: a message
                                                      item is open */
    ngx_uint_t                   resp_seq;         /* sequence_number */
    ngx_uint_t                   resp_items;       /* output items so far */
    ngx_uint_t                   resp_msg;         /* the message's index */
    size_t                       resp_msg_from;    /* its text in content */
    u_char                       resp_msg_id[32];
    ngx_uint_t                   resp_rs_state;    /* its reasoning item:
                                                      0 none, 1 open, 2 done */
    ngx_uint_t                   resp_rs;          /* its output_index */
    u_char                       resp_rs_id[32];
    unsigned                     tool_error:1;
    unsigned                     counted:1;        /* in engine pending */
    unsigned                     failed:1;         /* ended by an error */
    unsigned                     background:1;     /* /v1/responses with
                                                      background true */
    unsigned                     detached:1;       /* runs on a request of
                                                      its own, no client
                                                      (ngx_http_kimi_
                                                      background.c) */
    unsigned                     stored:1;         /* detached: its end is
                                                      in the store */
    ngx_http_kimi_bg_t          *bg;               /* detached: its record */
    ngx_str_t                    owner;            /* detached: the API key
                                                      id it runs for */
};


extern ngx_module_t  ngx_http_kimi_module;


/* ngx_http_kimi_module.c */
ngx_http_kimi_ctx_t *ngx_http_kimi_ctx_create(ngx_http_request_t *r,
    ngx_http_kimi_route_e route);
void ngx_http_kimi_finalize(ngx_http_kimi_ctx_t *ctx, ngx_int_t rc);
void ngx_http_kimi_submit(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_touch(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_observe(ngx_http_kimi_ctx_t *ctx, ngx_uint_t final);
void ngx_http_kimi_observe_tokens(ngx_http_kimi_ctx_t *ctx, ngx_uint_t n);
ngx_int_t ngx_http_kimi_request_id_header(ngx_http_request_t *r);

/* ngx_http_kimi_openai.c */
ngx_int_t ngx_http_kimi_parse_request(ngx_http_kimi_ctx_t *ctx, u_char *body,
    size_t len, ngx_str_t *error, ngx_str_t *param);
ngx_int_t ngx_http_kimi_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, const char *message, size_t len, const char *param,
    const char *code);
/* ngx_http_kimi_responses.c */
ngx_int_t ngx_http_kimi_responses_request(ngx_http_kimi_ctx_t *ctx,
    json_t *in, json_t **chat, u_char *err, const char **param);
ngx_int_t ngx_http_kimi_responses_send(ngx_http_kimi_ctx_t *ctx,
    json_t *choice, ngx_uint_t output_tokens);
/* The Response object: choice NULL gives the in-progress one (no output) */
json_t *ngx_http_kimi_responses_object(ngx_http_kimi_ctx_t *ctx,
    json_t *choice, ngx_uint_t output_tokens);
json_t *ngx_http_kimi_responses_id(const char *prefix);
/* ngx_http_kimi_responses_store.c */
char *ngx_http_kimi_responses_store_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_uint_t ngx_http_kimi_responses_storing(ngx_http_kimi_ctx_t *ctx);
ngx_int_t ngx_http_kimi_responses_keep(ngx_http_kimi_ctx_t *ctx,
    json_t *resp, json_t *choice);
void ngx_http_kimi_responses_owner(ngx_http_request_t *r, ngx_str_t *owner);
json_t *ngx_http_kimi_responses_lookup(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, ngx_str_t *id, ngx_uint_t *found);
ngx_int_t ngx_http_kimi_responses_route(ngx_http_request_t *r,
    ngx_http_kimi_route_e route, ngx_str_t *id);

/* how ngx_http_kimi_responses_put() writes an entry */
typedef enum {
    NGX_HTTP_KIMI_PUT_DONE = 0,        /* a finished response, replacing */
    NGX_HTTP_KIMI_PUT_RUNNING,         /* a background one starts here */
    NGX_HTTP_KIMI_PUT_UPDATE,          /* ... its new state, while this
                                          worker still runs it */
    NGX_HTTP_KIMI_PUT_FINAL,           /* ... its end, the same way */
} ngx_http_kimi_put_e;

ngx_int_t ngx_http_kimi_responses_put(ngx_http_kimi_ctx_t *ctx, json_t *resp,
    json_t *context, ngx_http_kimi_put_e how);
ngx_int_t ngx_http_kimi_responses_running(ngx_http_kimi_ctx_t *ctx);

/* a background stream's event log (ngx_http_kimi_responses_events()) */
typedef enum {
    NGX_HTTP_KIMI_EVENTS_OK = 0,       /* copied what fits; more may come */
    NGX_HTTP_KIMI_EVENTS_END,          /* ... and the last one was copied */
    NGX_HTTP_KIMI_EVENTS_GONE,         /* no such response (or another
                                          key's) */
    NGX_HTTP_KIMI_EVENTS_NONE,         /* a response without events: not
                                          made with background and stream */
    NGX_HTTP_KIMI_EVENTS_DROPPED,      /* next is older than the oldest
                                          event kept */
    NGX_HTTP_KIMI_EVENTS_BROKEN,       /* an event did not fit in the zone */
} ngx_http_kimi_events_e;

typedef struct {
    ngx_uint_t                   next;             /* in: the first wanted;
                                                      out: past the copied */
    ngx_buf_t                   *buf;              /* in: where they go
                                                      (NULL: only look) */
    size_t                       need;             /* out: the buffer the
                                                      next one needs */
    ngx_uint_t                   first;            /* out: oldest kept */
    ngx_uint_t                   last;             /* out: the number the
                                                      next event gets */
    ngx_pid_t                    running_pid;      /* out: 0, or the worker
                                                      that runs it */
} ngx_http_kimi_events_t;

ngx_int_t ngx_http_kimi_responses_log_open(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t first);
ngx_int_t ngx_http_kimi_responses_log_append(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t seq, const u_char *frame, size_t len, ngx_uint_t last);
void ngx_http_kimi_responses_log_close(ngx_http_kimi_ctx_t *ctx);
ngx_http_kimi_events_e ngx_http_kimi_responses_events(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, ngx_str_t *id, ngx_http_kimi_events_t *ev);

/* ngx_http_kimi_responses_follow.c */
ngx_int_t ngx_http_kimi_responses_follow(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, ngx_str_t *id, ngx_int_t starting_after);
void ngx_http_kimi_responses_follow_wake(ngx_str_t *id);

/* ngx_http_kimi_background.c */
ngx_int_t ngx_http_kimi_background_start(ngx_http_kimi_ctx_t *ctx,
    ngx_str_t *body);
ngx_int_t ngx_http_kimi_background_answer(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t status, json_t *body);
ngx_int_t ngx_http_kimi_background_progress(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_background_end(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_background_abort(ngx_str_t *id);
ngx_int_t ngx_http_kimi_background_event(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t seq, const char *type, const char *data, size_t len,
    ngx_uint_t last);
void ngx_http_kimi_background_exit_process(ngx_cycle_t *cycle);
json_t *ngx_http_kimi_choice_json(ngx_http_kimi_ctx_t *ctx);

ngx_int_t ngx_http_kimi_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *body);
ngx_int_t ngx_http_kimi_send_response(ngx_http_kimi_ctx_t *ctx);
u_char *ngx_http_kimi_json_escape(u_char *dst, const u_char *src,
    size_t len);
size_t ngx_http_kimi_json_escape_len(const u_char *src, size_t len);
const char *ngx_http_kimi_finish_name(ngx_http_kimi_ctx_t *ctx);

/* ngx_http_kimi_output.c */
ngx_int_t ngx_http_kimi_output_start(ngx_http_kimi_ctx_t *ctx);
ngx_int_t ngx_http_kimi_output_token(ngx_http_kimi_ctx_t *ctx,
    const kimi_shm_token_t *tok);
ngx_int_t ngx_http_kimi_output_finish(ngx_http_kimi_ctx_t *ctx);
u_char *ngx_http_kimi_json_escape_utf8(u_char *dst, const u_char *src,
    size_t len);
ngx_int_t ngx_http_kimi_output_prompt_entry(ngx_http_kimi_ctx_t *ctx,
    const kimi_shm_token_t *tok);
ngx_int_t ngx_http_kimi_output_echo(ngx_http_kimi_ctx_t *ctx);
size_t ngx_http_kimi_logprobs_legacy_len(ngx_http_kimi_ctx_t *ctx);
u_char *ngx_http_kimi_logprobs_legacy(ngx_http_kimi_ctx_t *ctx, u_char *p);

/* ngx_http_kimi_sse.c */
ngx_int_t ngx_http_kimi_sse_start(ngx_http_kimi_ctx_t *ctx);
ngx_int_t ngx_http_kimi_sse_role(ngx_http_kimi_ctx_t *ctx);
ngx_int_t ngx_http_kimi_sse_reasoning(ngx_http_kimi_ctx_t *ctx,
    const u_char *text, size_t len);
ngx_int_t ngx_http_kimi_sse_resp_reasoning(ngx_http_kimi_ctx_t *ctx,
    const u_char *text, size_t len);
ngx_int_t ngx_http_kimi_sse_content(ngx_http_kimi_ctx_t *ctx,
    const u_char *p, size_t len);
ngx_int_t ngx_http_kimi_sse_tool_begin(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t index, const char *id, const char *name);
ngx_int_t ngx_http_kimi_sse_tool_args(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t index, const u_char *p, size_t len);
ngx_int_t ngx_http_kimi_sse_finish(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t last);
ngx_int_t ngx_http_kimi_sse_error(ngx_http_kimi_ctx_t *ctx,
    const char *message, size_t len, const char *type);
void ngx_http_kimi_write_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kimi_sse_headers(ngx_http_request_t *r);
ngx_int_t ngx_http_kimi_sse_nodelay(ngx_http_request_t *r);
ngx_chain_t *ngx_http_kimi_sse_get_buf(ngx_pool_t *pool, ngx_chain_t **free,
    size_t size);
ngx_int_t ngx_http_kimi_sse_wait(ngx_http_request_t *r);

/* ngx_http_kimi_engine.c */
ngx_int_t ngx_http_kimi_engine_init_process(ngx_cycle_t *cycle);
void ngx_http_kimi_engine_exit_process(ngx_cycle_t *cycle);
ngx_http_kimi_attach_t *ngx_http_kimi_engine_get(ngx_log_t *log);
ngx_int_t ngx_http_kimi_engine_ready(ngx_http_kimi_attach_t *a,
    ngx_str_t *why);
kimi_shm_header_t *ngx_http_kimi_engine_header(ngx_http_kimi_attach_t *a);
ngx_uint_t ngx_http_kimi_engine_n_ranks(ngx_http_kimi_attach_t *a);
ngx_uint_t ngx_http_kimi_engine_pending(void);
void ngx_http_kimi_engine_pending_add(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_engine_pending_done(ngx_http_kimi_ctx_t *ctx);
ngx_int_t ngx_http_kimi_engine_submit(ngx_http_kimi_ctx_t *ctx,
    ngx_str_t *error);
void ngx_http_kimi_engine_release(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_engine_process(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_engine_resume(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_engine_json(ngx_http_kimi_attach_t *a, json_t *out);

/* ngx_http_kimi_text.c */
ngx_int_t ngx_http_kimi_text_init_process(ngx_cycle_t *cycle);
void ngx_http_kimi_text_exit_process(ngx_cycle_t *cycle);
void ngx_http_kimi_text_want(ngx_cycle_t *cycle, const char *model_dir);
ngx_http_kimi_text_t *ngx_http_kimi_text_get(ngx_str_t *why);
const kimi_tokenizer_t *ngx_http_kimi_text_tokenizer(ngx_http_kimi_text_t *t);
kimi_tool_format_e ngx_http_kimi_text_tool_format(ngx_http_kimi_text_t *t);

/* The model's generation_config.json sampling defaults, as vLLM's
 * --generation-config auto takes them: the keys that differ from Hugging
 * Face's GenerationConfig defaults (flags say which are set). */
typedef struct {
    unsigned                     has_temperature:1;
    unsigned                     has_top_p:1;
    unsigned                     has_top_k:1;
    unsigned                     has_min_p:1;
    unsigned                     has_repetition_penalty:1;
    float                        temperature;
    float                        top_p;
    float                        min_p;
    float                        repetition_penalty;
    int32_t                      top_k;
    ngx_uint_t                   max_new_tokens;   /* 0: none */
} ngx_http_kimi_gen_defaults_t;

const ngx_http_kimi_gen_defaults_t *ngx_http_kimi_text_gen_defaults(
    ngx_http_kimi_text_t *t);
void ngx_http_kimi_text_ref(ngx_http_kimi_text_t *t);
void ngx_http_kimi_text_unref(ngx_http_kimi_text_t *t);
ngx_int_t ngx_http_kimi_text_prepare(ngx_http_kimi_ctx_t *ctx);
void ngx_http_kimi_text_cancel(ngx_http_kimi_ctx_t *ctx);
ngx_int_t ngx_http_kimi_tokenize_handler(ngx_http_kimi_ctx_t *ctx);
ngx_int_t ngx_http_kimi_detokenize_handler(ngx_http_kimi_ctx_t *ctx);


#endif /* _NGX_HTTP_KIMI_H_INCLUDED_ */
