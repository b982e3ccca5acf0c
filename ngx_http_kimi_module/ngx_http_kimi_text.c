
/*
 * The text stack inside a worker: loading it, and running the chat
 * template and the tokenizer for requests without blocking the loop.
 *
 * Owns:   the worker's loaded tokenizer + template (reference counted, so
 *         a model change swaps them under running requests), the load
 *         task, the per-request text job (template -> token ids) run
 *         inline when small and on nginx's thread pool when the body is at
 *         least kimi_offload_threshold bytes, and /tokenize, /detokenize.
 * Never:  calls an nginx API from a thread: a job reads only what it owns
 *         (its references to the text stack and the parsed body) and
 *         writes only its result; the completion runs on the loop.
 *
 * Loading: kimi_model_dir, or the model_dir the engine publishes, is
 * loaded by a thread task when the worker starts or first attaches
 * (about 100 ms for Kimi's 163840-entry vocabulary); until it is ready
 * /health says 503 and requests get 503 "the tokenizer is loading".
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


#define NGX_HTTP_KIMI_DIR_LEN   512


struct ngx_http_kimi_text_s {
    kimi_tokenizer_t          *tok;
    kimi_template_t           *tmpl;             /* NULL: see tmpl_err */
    ngx_uint_t                 refs;
    char                       dir[NGX_HTTP_KIMI_DIR_LEN];
    char                       tmpl_err[512];
    kimi_tool_format_e         tool_format;      /* kimi_tool_call_parser */
    ngx_http_kimi_gen_defaults_t  gen;           /* generation_config.json */
    char                       gen_note[256];    /* what it set, for the log */
};


typedef struct {
    ngx_http_kimi_text_t      *text;
    kimi_err_t                 err;
    int                        rc;
    ngx_msec_t                 start;
} ngx_http_kimi_load_job_t;


typedef struct {
    ngx_http_kimi_ctx_t       *ctx;              /* NULL: request is gone */
    ngx_http_kimi_text_t      *text;             /* referenced */
    json_t                    *root;             /* referenced */
    json_t                    *messages;
    json_t                    *tools;
    json_t                    *template_kwargs;
    const char                *prompt;
    size_t                     prompt_len;
    int                        add_generation_prompt;
    int                        continue_final;
    int                        allow_special;
    int                        add_special;     /* the prompt prefix (bos) */
    int                        plain_contents;
    int32_t                   *ids;
    size_t                     n_ids;
    json_t                    *batch;            /* prompts, or NULL */
    int32_t                  **batch_ids;        /* [n_batch], [0] == ids */
    size_t                    *batch_n;
    size_t                     n_batch;
    int                        rc;
    kimi_err_t                 err;
} ngx_http_kimi_text_job_t;


/* per-process: each worker loads and owns its own text stack */
static struct {
    ngx_cycle_t               *cycle;
    ngx_http_kimi_main_conf_t *kmcf;
    ngx_http_kimi_text_t      *current;
    char                       wanted[NGX_HTTP_KIMI_DIR_LEN];
    ngx_uint_t                 loading;
    ngx_str_t                  why;
    u_char                     why_buf[600];
} ngx_http_kimi_text;


static void ngx_http_kimi_text_load(void);
static void ngx_http_kimi_text_load_thread(void *data, ngx_log_t *log);
static void ngx_http_kimi_text_load_done(ngx_event_t *ev);
static void ngx_http_kimi_text_gen_load(ngx_http_kimi_text_t *t);
static void ngx_http_kimi_text_job_run(void *data, ngx_log_t *log);
static void ngx_http_kimi_text_job_done(ngx_event_t *ev);
static void ngx_http_kimi_text_job_free(ngx_http_kimi_text_job_t *job);
static void ngx_http_kimi_text_job_batch(ngx_http_kimi_text_job_t *job);
static int ngx_http_kimi_text_prefix(ngx_http_kimi_text_job_t *job,
    int32_t **ids, size_t *n);
static ngx_int_t ngx_http_kimi_text_start(ngx_http_kimi_ctx_t *ctx);
static ngx_int_t ngx_http_kimi_text_apply(ngx_http_kimi_ctx_t *ctx,
    ngx_http_kimi_text_job_t *job);
static ngx_int_t ngx_http_kimi_text_answered(ngx_http_kimi_ctx_t *ctx,
    ngx_int_t rc);
static ngx_int_t ngx_http_kimi_tokenize_respond(ngx_http_kimi_ctx_t *ctx);
static json_t *ngx_http_kimi_token_strs(const int32_t *ids, size_t n);


ngx_int_t
ngx_http_kimi_text_init_process(ngx_cycle_t *cycle)
{
    ngx_http_kimi_text.cycle = cycle;
    ngx_http_kimi_text.kmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                                       ngx_http_kimi_module);
    ngx_str_set(&ngx_http_kimi_text.why,
                "The tokenizer is not loaded yet (waiting for the engine)");

    if (ngx_http_kimi_text.kmcf->model_dir.len) {
        ngx_http_kimi_text_want(cycle,
                            (char *) ngx_http_kimi_text.kmcf->model_dir.data);
    }

    return NGX_OK;
}


void
ngx_http_kimi_text_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_kimi_text.current) {
        ngx_http_kimi_text_unref(ngx_http_kimi_text.current);
        ngx_http_kimi_text.current = NULL;
    }
}


/* the text stack should come from dir; loads it unless it already has */
void
ngx_http_kimi_text_want(ngx_cycle_t *cycle, const char *dir)
{
    if (ngx_strlen(dir) >= NGX_HTTP_KIMI_DIR_LEN || dir[0] == '\0') {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "kimi model dir \"%s\" is empty or too long", dir);
        return;
    }

    if (ngx_strcmp(ngx_http_kimi_text.wanted, dir) == 0) {
        return;
    }

    ngx_cpystrn((u_char *) ngx_http_kimi_text.wanted, (u_char *) dir,
                NGX_HTTP_KIMI_DIR_LEN);

    if (ngx_http_kimi_text.current
        && ngx_strcmp(ngx_http_kimi_text.current->dir, dir) == 0)
    {
        return;
    }

    if (!ngx_http_kimi_text.loading) {
        ngx_http_kimi_text_load();
    }
}


static void
ngx_http_kimi_text_load(void)
{
    ngx_log_t                 *log;
    ngx_thread_task_t         *task;
    ngx_http_kimi_text_t      *t;
    ngx_http_kimi_load_job_t  *job;

    log = ngx_http_kimi_text.cycle->log;

    t = ngx_calloc(sizeof(ngx_http_kimi_text_t), log);
    task = ngx_calloc(sizeof(ngx_thread_task_t)
                      + sizeof(ngx_http_kimi_load_job_t), log);

    if (t == NULL || task == NULL) {
        ngx_free(t);
        ngx_free(task);
        return;
    }

    ngx_cpystrn((u_char *) t->dir, (u_char *) ngx_http_kimi_text.wanted,
                NGX_HTTP_KIMI_DIR_LEN);
    t->refs = 1;

    job = (ngx_http_kimi_load_job_t *) (task + 1);
    job->text = t;
    job->start = ngx_current_msec;

    task->ctx = job;
    task->handler = ngx_http_kimi_text_load_thread;
    task->event.handler = ngx_http_kimi_text_load_done;
    task->event.data = task;
    task->event.log = log;

    ngx_http_kimi_text.loading = 1;

#if (NGX_THREADS)
    if (ngx_http_kimi_text.kmcf->thread_pool
        && ngx_thread_task_post(ngx_http_kimi_text.kmcf->thread_pool, task)
           == NGX_OK)
    {
        return;
    }
#endif

    /* no thread pool: load inline, once, at the cost of one stall */
    ngx_http_kimi_text_load_thread(job, log);
    ngx_http_kimi_text_load_done(&task->event);
}


static void
ngx_http_kimi_text_load_thread(void *data, ngx_log_t *log)
{
    ngx_http_kimi_load_job_t *job = data;

    kimi_err_t             terr;
    ngx_http_kimi_text_t  *t;

    t = job->text;

    job->rc = kimi_tokenizer_load(&t->tok, t->dir, &job->err);
    if (job->rc != 0) {
        return;
    }

    ngx_http_kimi_text_gen_load(t);

    /* auto: the format the tokenizer's added tokens spell */
    t->tool_format = ngx_http_kimi_text.kmcf->tool_format > 0
                     ? (kimi_tool_format_e)
                       (ngx_http_kimi_text.kmcf->tool_format - 1)
                     : (kimi_tool_format_e) kimi_tool_format_of(t->tok);

    /* /v1/completions works without a template; chat answers 503 with
     * the reason */
    if (kimi_template_load(&t->tmpl, t->dir,
            ngx_http_kimi_text.kmcf->chat_template.len
            ? (char *) ngx_http_kimi_text.kmcf->chat_template.data : NULL,
            &terr) != 0)
    {
        t->tmpl = NULL;
        ngx_cpystrn((u_char *) t->tmpl_err, (u_char *) terr.msg,
                    sizeof(t->tmpl_err));
        return;
    }

    (void) kimi_template_content_format(t->tmpl,
        ngx_http_kimi_text.kmcf->content_format == 1 ? "string"
        : ngx_http_kimi_text.kmcf->content_format == 2 ? "openai" : "auto");
}


/* Sampling keys of a generation config into g, each noted at p: diff
 * (the model's generation_config.json) takes only the values that differ
 * from Hugging Face's GenerationConfig defaults (temperature 1, top_p 1,
 * top_k 50, repetition_penalty 1, min_p and max_new_tokens none), as
 * vLLM's get_diff_sampling_param does; the override takes what it says.  A
 * value out of the range a request could give is left out, and noted. */
static u_char *
ngx_http_kimi_text_gen_parse(ngx_http_kimi_gen_defaults_t *g, json_t *root,
    int diff, u_char *p, u_char *last)
{
    double   d;
    json_t  *v;

#define KIMI_GEN_NUM(key, lo, hi, dflt, field, flag)                          \
    v = json_object_get(root, key);                                           \
    if (json_is_number(v) && (!diff || json_number_value(v) != (dflt))) {     \
        d = json_number_value(v);                                             \
        if (d >= (lo) && d <= (hi)) {                                         \
            g->field = (float) d;                                             \
            g->flag = 1;                                                      \
            p = ngx_slprintf(p, last, " %s %.3f", key, d);                    \
        } else {                                                              \
            p = ngx_slprintf(p, last, " (%s %.3f out of range: ignored)",     \
                             key, d);                                         \
        }                                                                     \
    }

    KIMI_GEN_NUM("temperature", 0, 100, 1.0, temperature, has_temperature);
    KIMI_GEN_NUM("top_p", 1e-9, 1, 1.0, top_p, has_top_p);
    KIMI_GEN_NUM("min_p", 0, 1, -1.0, min_p, has_min_p);
    KIMI_GEN_NUM("repetition_penalty", 1e-9, 100, 1.0, repetition_penalty,
                 has_repetition_penalty);

#undef KIMI_GEN_NUM

    v = json_object_get(root, "top_k");
    if (json_is_integer(v) && (!diff || json_integer_value(v) != 50)) {
        g->top_k = json_integer_value(v) > 0
                   ? (int32_t) ngx_min(json_integer_value(v), INT32_MAX) : -1;
        g->has_top_k = 1;
        p = ngx_slprintf(p, last, " top_k %D", g->top_k);
    }

    v = json_object_get(root, "max_new_tokens");
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        g->max_new_tokens = (ngx_uint_t) json_integer_value(v);
        p = ngx_slprintf(p, last, " max_new_tokens %ui", g->max_new_tokens);
    }

    return p;
}


/* The request defaults, as vLLM's --generation-config and
 * --override-generation-config make them: the model's file (auto), then
 * kimi_override_generation_config over it. */
static void
ngx_http_kimi_text_gen_load(ngx_http_kimi_text_t *t)
{
    u_char                     *p, *last, buf[200];
    json_t                     *root;
    json_error_t                jerr;
    ngx_str_t                  *over;
    ngx_http_kimi_main_conf_t  *kmcf = ngx_http_kimi_text.kmcf;
    char                        path[NGX_HTTP_KIMI_DIR_LEN + 32];

    p = buf;
    last = buf + sizeof(buf);

    if (kmcf->generation_config == 0) {
        ngx_snprintf((u_char *) path, sizeof(path),
                     "%s/generation_config.json%Z", t->dir);
        root = json_load_file(path, 0, &jerr);
        if (root != NULL) {
            p = ngx_http_kimi_text_gen_parse(&t->gen, root, 1, p, last);
            json_decref(root);
        }
    }

    over = &kmcf->generation_override;
    if (over->len) {
        /* checked to be a JSON object at configuration */
        root = json_loadb((char *) over->data, over->len, 0, &jerr);
        if (root != NULL) {
            p = ngx_http_kimi_text_gen_parse(&t->gen, root, 0, p, last);
            json_decref(root);
        }
    }

    if (p != buf) {
        /* the tail of the "text stack loaded" log line */
        ngx_snprintf((u_char *) t->gen_note, sizeof(t->gen_note) - 1,
                     "; %s defaults (as vLLM's --generation-config %s%s):"
                     "%*s%Z",
                     over->len ? "generation" : "generation_config.json",
                     kmcf->generation_config == 0 ? "auto" : "vllm",
                     over->len ? " with --override-generation-config" : "",
                     (size_t) (p - buf), buf);
    }
}


static void
ngx_http_kimi_text_load_done(ngx_event_t *ev)
{
    ngx_log_t                 *log;
    ngx_thread_task_t         *task;
    ngx_http_kimi_text_t      *t;
    ngx_http_kimi_load_job_t  *job;

    task = ev->data;
    job = task->ctx;
    t = job->text;
    log = ngx_http_kimi_text.cycle->log;

    ngx_http_kimi_text.loading = 0;

    if (job->rc != 0) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "kimi tokenizer in \"%s\" failed to load: %s", t->dir,
                      job->err.msg);

        ngx_http_kimi_text.why.data = ngx_http_kimi_text.why_buf;
        ngx_http_kimi_text.why.len =
            ngx_snprintf(ngx_http_kimi_text.why_buf,
                         sizeof(ngx_http_kimi_text.why_buf),
                         "The tokenizer failed to load: %s", job->err.msg)
            - ngx_http_kimi_text.why_buf;

        ngx_http_kimi_text_unref(t);

        /* the next attach (or restart) asks again */
        ngx_http_kimi_text.wanted[0] = '\0';

    } else {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "kimi text stack loaded from \"%s\" in %M ms%s%s%s",
                      t->dir, ngx_current_msec - job->start,
                      t->tmpl ? "" : "; no chat template: ", t->tmpl_err,
                      t->gen_note);

        if (ngx_http_kimi_text.current) {
            ngx_http_kimi_text_unref(ngx_http_kimi_text.current);
        }

        ngx_http_kimi_text.current = t;
    }

    ngx_free(task);

    /* the wanted dir changed while this one loaded */
    if (ngx_http_kimi_text.current && ngx_http_kimi_text.wanted[0]
        && ngx_strcmp(ngx_http_kimi_text.wanted,
                      ngx_http_kimi_text.current->dir) != 0)
    {
        ngx_http_kimi_text_load();
    }
}


ngx_http_kimi_text_t *
ngx_http_kimi_text_get(ngx_str_t *why)
{
    if (ngx_http_kimi_text.current == NULL) {
        *why = ngx_http_kimi_text.why;
        if (ngx_http_kimi_text.loading) {
            ngx_str_set(why, "The tokenizer is loading");
        }
    }

    return ngx_http_kimi_text.current;
}


const kimi_tokenizer_t *
ngx_http_kimi_text_tokenizer(ngx_http_kimi_text_t *t)
{
    return t->tok;
}


const ngx_http_kimi_gen_defaults_t *
ngx_http_kimi_text_gen_defaults(ngx_http_kimi_text_t *t)
{
    return t != NULL ? &t->gen : NULL;
}


kimi_tool_format_e
ngx_http_kimi_text_tool_format(ngx_http_kimi_text_t *t)
{
    return t->tool_format;
}


void
ngx_http_kimi_text_ref(ngx_http_kimi_text_t *t)
{
    t->refs++;
}


void
ngx_http_kimi_text_unref(ngx_http_kimi_text_t *t)
{
    if (--t->refs) {
        return;
    }

    kimi_template_free(t->tmpl);
    kimi_tokenizer_free(t->tok);
    ngx_free(t);
}


/*
 * Template + tokenize for a chat, completions or /tokenize request.
 * NGX_OK: ctx->prompt is set, go on; NGX_DONE: a thread task runs it and
 * continues the request, or the request was answered (error, /tokenize)
 * and finalized.
 */
ngx_int_t
ngx_http_kimi_text_prepare(ngx_http_kimi_ctx_t *ctx)
{
    ngx_int_t  rc;

    rc = ngx_http_kimi_text_start(ctx);

    if (rc == NGX_OK || rc == NGX_DONE) {
        return rc;
    }

    ngx_http_kimi_finalize(ctx, rc);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_kimi_text_start(ngx_http_kimi_ctx_t *ctx)
{
    size_t                     i, n;
    json_t                    *id;
    ngx_str_t                  why;
    uint32_t                   vocab;
    ngx_http_request_t        *r;
    ngx_thread_task_t         *task;
    ngx_http_kimi_text_t      *t;
    ngx_http_kimi_text_job_t  *job, local;

    r = ctx->request;

    t = ngx_http_kimi_text_get(&why);
    if (t == NULL) {
        return ngx_http_kimi_text_answered(ctx,
                   ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "service_unavailable",
                                            (char *) why.data, why.len, NULL,
                                            NULL));
    }

    ctx->text = t;
    ngx_http_kimi_text_ref(t);

    /* completions given token ids: checked here, nothing to tokenize */
    if (ctx->params.prompt_ids) {
        n = json_array_size(ctx->params.prompt_ids);
        vocab = kimi_tokenizer_n_vocab(t->tok);

        ctx->prompt = ngx_alloc(ngx_max(n, 1) * sizeof(int32_t),
                                r->connection->log);
        if (ctx->prompt == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        json_array_foreach(ctx->params.prompt_ids, i, id) {
            if (json_integer_value(id) >= vocab) {
                return ngx_http_kimi_text_answered(ctx,
                           ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                    "invalid_request_error",
                                                    "prompt token id is out "
                                                    "of the vocabulary", 40,
                                                    "prompt", NULL));
            }

            ctx->prompt[i] = (int32_t) json_integer_value(id);
        }

        ctx->n_prompt = n;

        return NGX_OK;
    }

    if (ctx->params.messages && t->tmpl == NULL) {
        return ngx_http_kimi_text_answered(ctx,
                   ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "service_unavailable",
                                            t->tmpl_err,
                                            ngx_strlen(t->tmpl_err),
                                            NULL, NULL));
    }

    job = &local;

#if (NGX_THREADS)
    task = NULL;

    if (ctx->params.body_len >= ngx_http_kimi_text.kmcf->offload_threshold
        && ngx_http_kimi_text.kmcf->thread_pool)
    {
        /* not from r->pool: the request may end before the thread does */
        task = ngx_calloc(sizeof(ngx_thread_task_t)
                          + sizeof(ngx_http_kimi_text_job_t),
                          r->connection->log);
        if (task == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        job = (ngx_http_kimi_text_job_t *) (task + 1);
    }
#else
    task = NULL;
#endif

    ngx_memzero(job, sizeof(ngx_http_kimi_text_job_t));

    job->ctx = ctx;
    job->text = t;
    ngx_http_kimi_text_ref(t);
    job->root = json_incref(ctx->params.root);
    job->messages = ctx->params.messages;
    job->tools = ctx->params.tools;
    job->template_kwargs = ctx->params.template_kwargs;
    job->add_generation_prompt = ctx->params.add_generation_prompt;
    job->continue_final = ctx->params.continue_final;
    job->prompt = (const char *) ctx->params.prompt_text.data;
    job->prompt_len = ctx->params.prompt_text.len;
    job->batch = ctx->params.batch;
    job->allow_special = ctx->conf->special_tokens_in_content;
    job->add_special = ctx->params.add_special;
    job->plain_contents = !ctx->conf->special_tokens_in_content;

#if (NGX_THREADS)
    if (task) {
        task->ctx = job;
        task->handler = ngx_http_kimi_text_job_run;
        task->event.handler = ngx_http_kimi_text_job_done;
        task->event.data = task;
        task->event.log = r->connection->log;

        if (ngx_thread_task_post(ngx_http_kimi_text.kmcf->thread_pool, task)
            == NGX_OK)
        {
            ctx->task = task;
            return NGX_DONE;
        }

        /* the pool's queue is full: do it here rather than fail */
        ngx_http_kimi_text_job_run(job, r->connection->log);
        job->ctx = NULL;
        ctx->task = NULL;

        return ngx_http_kimi_text_apply(ctx, job);
    }
#endif

    ngx_http_kimi_text_job_run(job, r->connection->log);

    return ngx_http_kimi_text_apply(ctx, job);
}


/* the job's result: NGX_OK to go on, NGX_DONE when answered+finalized;
 * frees the job's references either way */
static ngx_int_t
ngx_http_kimi_text_apply(ngx_http_kimi_ctx_t *ctx,
    ngx_http_kimi_text_job_t *job)
{
    ngx_uint_t  status;
    ngx_int_t   rc;

    if (job->rc == 0) {
        ctx->prompt = job->ids;
        ctx->n_prompt = job->n_ids;
        job->ids = NULL;
        ctx->batch_ids = job->batch_ids;
        ctx->batch_n = job->batch_n;
        ctx->n_batch = job->n_batch;
        job->batch_ids = NULL;
        job->batch_n = NULL;
        ngx_http_kimi_text_job_free(job);

        if (ctx->route == NGX_HTTP_KIMI_ROUTE_TOKENIZE) {
            return ngx_http_kimi_text_answered(ctx,
                                       ngx_http_kimi_tokenize_respond(ctx));
        }

        return NGX_OK;
    }

    /* EINVAL: the request's fault (a message the template refuses) */
    status = (job->rc == KIMI_EINVAL) ? NGX_HTTP_BAD_REQUEST
                                      : NGX_HTTP_INTERNAL_SERVER_ERROR;

    if (status == NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, ctx->request->connection->log, 0,
                      "kimi text work failed: %s", job->err.msg);
    }

    rc = ngx_http_kimi_send_error(ctx->request, status,
                                  status == NGX_HTTP_BAD_REQUEST
                                  ? "invalid_request_error" : "server_error",
                                  job->err.msg, ngx_strlen(job->err.msg),
                                  ctx->params.messages ? "messages" : "prompt",
                                  NULL);
    ngx_http_kimi_text_job_free(job);

    return ngx_http_kimi_text_answered(ctx, rc);
}


/* the request was answered: finalize it with what sending returned */
static ngx_int_t
ngx_http_kimi_text_answered(ngx_http_kimi_ctx_t *ctx, ngx_int_t rc)
{
    ngx_http_kimi_finalize(ctx, rc);

    return NGX_DONE;
}


static void
ngx_http_kimi_text_job_free(ngx_http_kimi_text_job_t *job)
{
    size_t  i;

    /* ids may be batch_ids[0]: freed once */
    for (i = 0; job->batch_ids && i < job->n_batch; i++) {
        if (job->batch_ids[i] != job->ids) {
            free(job->batch_ids[i]);
        }
    }

    if (job->ids) {
        free(job->ids);
        job->ids = NULL;
    }

    free(job->batch_ids);
    free(job->batch_n);
    job->batch_ids = NULL;
    job->batch_n = NULL;

    if (job->root) {
        json_decref(job->root);
        job->root = NULL;
    }

    if (job->text) {
        ngx_http_kimi_text_unref(job->text);
        job->text = NULL;
    }
}


/* A batch of completion prompts: each tokenized, or its ids checked. */
static void
ngx_http_kimi_text_job_batch(ngx_http_kimi_text_job_t *job)
{
    size_t     i, k, n;
    json_t    *e;
    uint32_t   vocab = kimi_tokenizer_n_vocab(job->text->tok);

    n = json_array_size(job->batch);

    job->batch_ids = calloc(n, sizeof(int32_t *));
    job->batch_n = calloc(n, sizeof(size_t));
    if (job->batch_ids == NULL || job->batch_n == NULL) {
        job->rc = kimi_err_set(&job->err, KIMI_ENOMEM, "out of memory");
        return;
    }

    job->n_batch = n;

    for (i = 0; i < n; i++) {
        e = json_array_get(job->batch, i);

        if (json_is_string(e)) {
            job->rc = kimi_tokenize(job->text->tok, json_string_value(e),
                                    json_string_length(e), job->allow_special,
                                    &job->batch_ids[i], &job->batch_n[i],
                                    &job->err);
            if (job->rc == 0) {
                job->rc = ngx_http_kimi_text_prefix(job, &job->batch_ids[i],
                                                    &job->batch_n[i]);
            }
            if (job->rc != 0) {
                return;
            }

        } else {
            job->batch_n[i] = json_array_size(e);
            job->batch_ids[i] = malloc(job->batch_n[i] * sizeof(int32_t));
            if (job->batch_ids[i] == NULL) {
                job->rc = kimi_err_set(&job->err, KIMI_ENOMEM,
                                       "out of memory");
                return;
            }

            for (k = 0; k < job->batch_n[i]; k++) {
                json_int_t  id = json_integer_value(json_array_get(e, k));

                if (id < 0 || id >= (json_int_t) vocab) {
                    job->rc = kimi_err_set(&job->err, KIMI_EINVAL, "prompt"
                                           " %zu: token id %lld is out of"
                                           " the vocabulary", i,
                                           (long long) id);
                    return;
                }

                job->batch_ids[i][k] = (int32_t) id;
            }
        }
    }

    /* prompt 0 is the request's own prompt */
    job->ids = job->batch_ids[0];
    job->n_ids = job->batch_n[0];
    job->rc = 0;
}


/* add_special_tokens: the tokenizer's prompt prefix (bos where its
 * tokenizer_config.json has add_bos_token) before the ids of a text. */
static int
ngx_http_kimi_text_prefix(ngx_http_kimi_text_job_t *job, int32_t **ids,
    size_t *n)
{
    int32_t   id, *p;

    id = job->add_special ? kimi_tokenizer_prompt_prefix(job->text->tok) : -1;
    if (id < 0) {
        return 0;
    }

    p = realloc(*ids, (*n + 1) * sizeof(int32_t));
    if (p == NULL) {
        return kimi_err_set(&job->err, KIMI_ENOMEM, "out of memory");
    }

    memmove(p + 1, p, *n * sizeof(int32_t));
    p[0] = id;
    *ids = p;
    (*n)++;
    return 0;
}


/*
 * Runs on a pool thread (or inline): pure work on what the job owns.
 * With plain_contents the renderer reports which bytes came from the
 * request (contents, names, tool JSON) and the tokenizer keeps special-token
 * names inside them as text, so a user cannot forge a turn.
 */
static void
ngx_http_kimi_text_job_run(void *data, ngx_log_t *log)
{
    ngx_http_kimi_text_job_t *job = data;

    char         *text;
    size_t        len, n_plain;
    kimi_span_t  *plain;

    if (job->batch) {
        ngx_http_kimi_text_job_batch(job);
        return;
    }

    if (job->messages == NULL) {
        job->rc = kimi_tokenize(job->text->tok, job->prompt, job->prompt_len,
                                job->allow_special, &job->ids, &job->n_ids,
                                &job->err);
        if (job->rc == 0) {
            job->rc = ngx_http_kimi_text_prefix(job, &job->ids, &job->n_ids);
        }
        return;
    }

    plain = NULL;
    n_plain = 0;

    job->rc = kimi_template_render_kw(job->text->tmpl, job->messages,
                                      job->tools, job->add_generation_prompt,
                                      job->template_kwargs, &text, &len,
                                      job->plain_contents ? &plain : NULL,
                                      &n_plain, &job->err);
    if (job->rc != 0) {
        return;
    }

    if (job->continue_final) {
        job->rc = kimi_template_continue_final(job->messages, text, &len,
                                               plain, &n_plain, &job->err);
    }

    if (job->rc == 0) {
        job->rc = job->plain_contents
                  ? kimi_tokenize_ex(job->text->tok, text, len, 1, plain,
                                     n_plain, &job->ids, &job->n_ids,
                                     &job->err)
                  : kimi_tokenize(job->text->tok, text, len, 1, &job->ids,
                                  &job->n_ids, &job->err);
    }
    if (job->rc == 0) {
        job->rc = ngx_http_kimi_text_prefix(job, &job->ids, &job->n_ids);
    }
    free(plain);
    free(text);
}


static void
ngx_http_kimi_text_job_done(ngx_event_t *ev)
{
    ngx_int_t                  rc;
    ngx_connection_t          *c;
    ngx_thread_task_t         *task;
    ngx_http_kimi_ctx_t       *ctx;
    ngx_http_kimi_text_job_t  *job;

    task = ev->data;
    job = task->ctx;
    ctx = job->ctx;

    if (ctx == NULL) {
        /* the request ended while the thread worked */
        ngx_http_kimi_text_job_free(job);
        ngx_free(task);
        return;
    }

    ctx->task = NULL;
    c = ctx->request->connection;
    ngx_http_set_log_request(c->log, ctx->request);

    rc = ngx_http_kimi_text_apply(ctx, job);
    ngx_free(task);

    if (rc == NGX_OK) {
        ngx_http_kimi_submit(ctx);
    }

    ngx_http_run_posted_requests(c);
}


/* the request is ending: a running job must not touch it afterwards */
void
ngx_http_kimi_text_cancel(ngx_http_kimi_ctx_t *ctx)
{
    ngx_thread_task_t         *task;
    ngx_http_kimi_text_job_t  *job;

    task = ctx->task;
    if (task == NULL) {
        return;
    }

    job = task->ctx;
    job->ctx = NULL;
    ctx->task = NULL;
}


ngx_int_t
ngx_http_kimi_tokenize_handler(ngx_http_kimi_ctx_t *ctx)
{
    /* NGX_OK only for ids given directly: answer with them */
    if (ngx_http_kimi_text_prepare(ctx) == NGX_OK) {
        ngx_http_kimi_finalize(ctx, ngx_http_kimi_tokenize_respond(ctx));
    }

    return NGX_DONE;
}


/* Each token as Hugging Face's convert_ids_to_tokens writes it (vLLM's
 * return_token_strs): kimi_token_str. */
static json_t *
ngx_http_kimi_token_strs(const int32_t *ids, size_t n)
{
    char                  *buf;
    size_t                 i, len;
    json_t                *strs;
    ngx_str_t              why;
    ngx_http_kimi_text_t  *t;

    t = ngx_http_kimi_text_get(&why);
    strs = json_array();

    if (t == NULL || strs == NULL) {
        json_decref(strs);
        return NULL;
    }

    for (i = 0; i < n; i++) {
        if (kimi_token_bytes(t->tok, ids[i], &len) == NULL) {
            json_decref(strs);
            return NULL;
        }

        buf = ngx_alloc(3 * len + 8, ngx_cycle->log);
        if (buf == NULL) {
            json_decref(strs);
            return NULL;
        }

        len = kimi_token_str(t->tok, ids[i], buf);
        json_array_append_new(strs, json_stringn(buf, len));
        ngx_free(buf);
    }

    return strs;
}


static ngx_int_t
ngx_http_kimi_tokenize_respond(ngx_http_kimi_ctx_t *ctx)
{
    size_t                   i;
    json_t                  *root, *ids, *strs;
    ngx_int_t                rc;
    kimi_shm_header_t       *hdr;

    root = json_object();
    ids = json_array();

    if (root == NULL || ids == NULL) {
        json_decref(root);
        json_decref(ids);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < ctx->n_prompt; i++) {
        json_array_append_new(ids, json_integer(ctx->prompt[i]));
    }

    json_object_set_new(root, "count", json_integer(ctx->n_prompt));

    hdr = ngx_http_kimi_engine_header(
                      ngx_http_kimi_engine_get(ctx->request->connection->log));
    if (hdr) {
        json_object_set_new(root, "max_model_len",
                            json_integer(hdr->max_model_len));
    }

    json_object_set_new(root, "tokens", ids);

    strs = ctx->params.token_strs
           ? ngx_http_kimi_token_strs(ctx->prompt, ctx->n_prompt)
           : json_null();
    if (strs == NULL) {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_set_new(root, "token_strs", strs);

    rc = ngx_http_kimi_send_json(ctx->request, NGX_HTTP_OK, root);
    json_decref(root);

    return rc;
}


ngx_int_t
ngx_http_kimi_detokenize_handler(ngx_http_kimi_ctx_t *ctx)
{
    char                  *text;
    size_t                 i, n, len;
    json_t                *root, *id;
    int32_t               *ids;
    uint32_t               vocab;
    ngx_int_t              rc;
    ngx_str_t              why;
    kimi_err_t             err;
    ngx_http_request_t    *r;
    ngx_http_kimi_text_t  *t;

    r = ctx->request;

    t = ngx_http_kimi_text_get(&why);
    if (t == NULL) {
        return ngx_http_kimi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "service_unavailable",
                                        (char *) why.data, why.len, NULL,
                                        NULL);
    }

    n = json_array_size(ctx->params.prompt_ids);
    vocab = kimi_tokenizer_n_vocab(t->tok);

    ids = ngx_palloc(r->pool, ngx_max(n, 1) * sizeof(int32_t));
    if (ids == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_array_foreach(ctx->params.prompt_ids, i, id) {
        if (json_integer_value(id) >= vocab) {
            return ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "invalid_request_error",
                                            "token id is out of the "
                                            "vocabulary", 33, "tokens", NULL);
        }

        ids[i] = (int32_t) json_integer_value(id);
    }

    /* vLLM's /detokenize keeps special tokens */
    if (kimi_detokenize(t->tok, ids, n, 0, &text, &len, &err) != 0) {
        return ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                        "invalid_request_error", err.msg,
                                        ngx_strlen(err.msg), "tokens", NULL);
    }

    root = json_object();
    if (root == NULL) {
        free(text);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_set_new(root, "prompt", json_stringn_nocheck(text, len));
    free(text);

    rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, root);
    json_decref(root);

    return rc;
}
