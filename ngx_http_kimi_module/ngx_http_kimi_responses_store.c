
/*
 * Stored responses for the Responses API (kimi_responses_store).
 *
 * Owns:   the shared-memory zone of finished Response objects: one entry a
 *         response (the Response as it was returned, its input items, and
 *         the conversation so far as chat messages, which a later request
 *         continues through previous_response_id), oldest evicted first
 *         when the zone is full, kept across nginx reloads; and the
 *         endpoints that read it: GET and DELETE /v1/responses/{id}, GET
 *         /v1/responses/{id}/input_items, POST /v1/responses/{id}/cancel.
 *         With API keys an entry belongs to the key that made it: another
 *         key reads a 404.
 * Never:  talks to the engine or renders text; turning requests into chat
 *         requests is ngx_http_kimi_responses.c.
 * Holds:  a background response's entry is RUNNING while the worker whose
 *         pid it names runs it; only that worker rewrites it then (its
 *         state, its end), others may only mark it CANCELLED or delete it,
 *         which that worker reads at its next engine event and stops.  A
 *         RUNNING entry is never evicted.
 *         A background response made with stream true has an event log:
 *         its SSE events in order of sequence_number, appended only by the
 *         worker the log names and only until the log is closed (by its
 *         last event, a cancel, or the end of its worker); the oldest go
 *         when the log passes kimi_responses_stream_events; the log goes
 *         with its entry (it moves to each new state of the entry).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"
#include "ngx_http_kimi_zone.h"
#if (NGX_HTTP_KIMI_OPS)
#include "ngx_http_kimi_ops_common.h"
#endif


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;            /* oldest first */
    ngx_uint_t                   count;
    ngx_uint_t                   evicted;
} ngx_http_kimi_store_sh_t;


typedef struct {
    ngx_http_kimi_store_sh_t    *sh;
    ngx_slab_pool_t             *shpool;
} ngx_http_kimi_store_t;


/* what an entry is (ngx_http_kimi_store_node_t.state) */
#define NGX_HTTP_KIMI_STORE_DONE       0   /* finished: as it was answered */
#define NGX_HTTP_KIMI_STORE_RUNNING    1   /* a background response that
                                              worker pid runs */
#define NGX_HTTP_KIMI_STORE_CANCELLED  2   /* ... cancelled by a request; pid
                                              stops it when it sees this */


/* a full zone trims the event logs of background streams down to this
 * many bytes of their newest events (a stream's last few, its final
 * Response among them) before it evicts finished responses */
#define NGX_HTTP_KIMI_STORE_LOG_KEEP   8192


/* one event of a background stream, in the zone */
typedef struct {
    ngx_queue_t                  queue;            /* in its log, oldest
                                                      first */
    ngx_uint_t                   seq;              /* its sequence_number */
    size_t                       len;
    u_char                       data[1];          /* "event: ...\n\n" */
} ngx_http_kimi_store_event_t;


/* the events of a background stream kept for re-attaching */
typedef struct {
    ngx_queue_t                  events;
    ngx_pid_t                    pid;              /* the worker that
                                                      appends */
    ngx_uint_t                   next;             /* sequence_number of the
                                                      next event */
    size_t                       size;             /* bytes of events held */
    unsigned                     closed:1;         /* nothing more comes */
    unsigned                     broken:1;         /* an event did not fit:
                                                      the rest is lost */
} ngx_http_kimi_store_log_t;


typedef struct {
    ngx_str_node_t               sn;               /* key: crc32 of the id;
                                                      str: the id, in data */
    ngx_queue_t                  queue;
    ngx_http_kimi_store_log_t   *log;              /* NULL: not a background
                                                      stream */
    ngx_uint_t                   state;
    ngx_pid_t                    pid;              /* RUNNING: its worker */
    size_t                       owner_len;
    size_t                       len;              /* of the JSON blob */
    u_char                       data[1];          /* id, owner, blob */
} ngx_http_kimi_store_node_t;


static ngx_int_t ngx_http_kimi_store_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_kimi_store_node_t *ngx_http_kimi_store_find(
    ngx_http_kimi_store_t *st, ngx_str_t *id);
static ngx_http_kimi_store_node_t *ngx_http_kimi_store_lock_find(
    ngx_http_kimi_ctx_t *ctx, ngx_http_kimi_store_t **stp);
static ngx_uint_t ngx_http_kimi_store_runs_here(
    ngx_http_kimi_store_node_t *sn);
static ngx_http_kimi_store_log_t *ngx_http_kimi_store_own_log(
    ngx_http_kimi_store_node_t *sn);
static void ngx_http_kimi_store_delete(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_node_t *sn);
static void *ngx_http_kimi_store_alloc(ngx_http_kimi_store_t *st,
    size_t size, ngx_http_kimi_store_node_t *keep);
static ngx_int_t ngx_http_kimi_store_log_trim(ngx_http_kimi_store_t *st);
static void ngx_http_kimi_store_log_free(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_log_t *log);
static ngx_int_t ngx_http_kimi_store_log_add(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_node_t *sn, ngx_uint_t seq, const u_char *frame,
    size_t len, size_t bound);
static ngx_int_t ngx_http_kimi_store_write(ngx_shm_zone_t *zone,
    ngx_str_t *id, ngx_str_t *owner, const char *blob, ngx_uint_t state,
    ngx_pid_t pid, ngx_uint_t cond, ngx_log_t *log);
static json_t *ngx_http_kimi_store_read(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, ngx_str_t *id, ngx_uint_t *found,
    ngx_uint_t *state, ngx_pid_t *pid);
static void ngx_http_kimi_store_log_failed(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, ngx_str_t *id, json_t *resp);
static ngx_int_t ngx_http_kimi_store_not_found(ngx_http_request_t *r,
    ngx_str_t *id);
static ngx_int_t ngx_http_kimi_store_stream_args(ngx_http_request_t *r,
    ngx_int_t *after, ngx_str_t *error, const char **param);
static ngx_int_t ngx_http_kimi_store_cancel(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, ngx_str_t *id);
static ngx_int_t ngx_http_kimi_store_items(ngx_http_request_t *r,
    json_t *entry);


/* kimi_responses_store NAME:SIZE | off */
char *
ngx_http_kimi_responses_store_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_kimi_loc_conf_t *klcf = conf;

    ssize_t                 size;
    ngx_str_t              *value, name;
    ngx_shm_zone_t         *zone;
    ngx_http_kimi_store_t  *st;

    if (klcf->responses_zone != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        klcf->responses_zone = NULL;
        return NGX_CONF_OK;
    }

    if (ngx_http_kimi_zone_arg(cf, &value[1], &name, &size) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    /* the same NAME:SIZE in several places names one zone */
    zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_kimi_module);
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (zone->data == NULL) {
        st = ngx_pcalloc(cf->pool, sizeof(ngx_http_kimi_store_t));
        if (st == NULL) {
            return NGX_CONF_ERROR;
        }

        zone->init = ngx_http_kimi_store_init_zone;
        zone->data = st;
    }

    klcf->responses_zone = zone;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_kimi_store_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_kimi_store_t  *ost = data;

    size_t                  len;
    ngx_http_kimi_store_t  *st;

    st = shm_zone->data;

    if (ost) {
        /* reload: the stored responses stay */
        st->sh = ost->sh;
        st->shpool = ost->shpool;
        return NGX_OK;
    }

    st->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        st->sh = st->shpool->data;
        return NGX_OK;
    }

    st->sh = ngx_slab_alloc(st->shpool, sizeof(ngx_http_kimi_store_sh_t));
    if (st->sh == NULL) {
        return NGX_ERROR;
    }

    st->shpool->data = st->sh;

    ngx_rbtree_init(&st->sh->rbtree, &st->sh->sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&st->sh->queue);

    len = sizeof(" in kimi_responses_store \"\"") + shm_zone->shm.name.len;

    st->shpool->log_ctx = ngx_slab_alloc(st->shpool, len);
    if (st->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(st->shpool->log_ctx, " in kimi_responses_store \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is the normal case: the oldest entry makes room */
    st->shpool->log_nomem = 0;

    return NGX_OK;
}


/* Zone mutex held. */
static ngx_http_kimi_store_node_t *
ngx_http_kimi_store_find(ngx_http_kimi_store_t *st, ngx_str_t *id)
{
    return (ngx_http_kimi_store_node_t *)
           ngx_str_rbtree_lookup(&st->sh->rbtree, id,
                                 ngx_crc32_short(id->data, id->len));
}


/* Takes the zone's mutex (*stp: its store, to unlock) and finds the entry
 * of ctx's background response (NULL: gone) */
static ngx_http_kimi_store_node_t *
ngx_http_kimi_store_lock_find(ngx_http_kimi_ctx_t *ctx,
    ngx_http_kimi_store_t **stp)
{
    ngx_http_kimi_store_t  *st;

    st = ctx->conf->responses_zone->data;
    *stp = st;

    ngx_shmtx_lock(&st->shpool->mutex);

    return ngx_http_kimi_store_find(st, &ctx->id);
}


/* Zone mutex held: sn (NULL: gone) still runs, in this worker */
static ngx_uint_t
ngx_http_kimi_store_runs_here(ngx_http_kimi_store_node_t *sn)
{
    return sn != NULL && sn->state == NGX_HTTP_KIMI_STORE_RUNNING
           && sn->pid == ngx_pid;
}


/* Zone mutex held: sn's event log while this worker appends to it */
static ngx_http_kimi_store_log_t *
ngx_http_kimi_store_own_log(ngx_http_kimi_store_node_t *sn)
{
    return (sn != NULL && sn->log != NULL && sn->log->pid == ngx_pid)
           ? sn->log : NULL;
}


/* Zone mutex held. */
static void
ngx_http_kimi_store_delete(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_node_t *sn)
{
    ngx_rbtree_delete(&st->sh->rbtree, &sn->sn.node);
    ngx_queue_remove(&sn->queue);

    if (sn->log != NULL) {
        ngx_http_kimi_store_log_free(st, sn->log);
    }

    ngx_slab_free_locked(st->shpool, sn);
    st->sh->count--;
}


/*
 * Zone mutex held.  size bytes of the zone; when it is full the oldest
 * events of the largest event logs make room (a follower that keeps up
 * reads the newest; only a re-attach from that far back is refused),
 * then the oldest finished responses (running ones, and keep, stay).
 * NULL when nothing more can go.
 */
static void *
ngx_http_kimi_store_alloc(ngx_http_kimi_store_t *st, size_t size,
    ngx_http_kimi_store_node_t *keep)
{
    void                        *p;
    ngx_queue_t                 *q;
    ngx_http_kimi_store_node_t  *victim;

    for ( ;; ) {
        p = ngx_slab_alloc_locked(st->shpool, size);
        if (p != NULL) {
            return p;
        }

        victim = NULL;

        for (q = ngx_queue_head(&st->sh->queue);
             q != ngx_queue_sentinel(&st->sh->queue);
             q = ngx_queue_next(q))
        {
            victim = ngx_queue_data(q, ngx_http_kimi_store_node_t, queue);

            if (victim->state != NGX_HTTP_KIMI_STORE_RUNNING
                && victim != keep)
            {
                break;
            }

            victim = NULL;
        }

        /* old events first: a finished response is worth more than a
         * re-attach from far back */
        if (ngx_http_kimi_store_log_trim(st) == NGX_OK) {
            continue;
        }

        if (victim == NULL) {
            return NULL;
        }

        ngx_http_kimi_store_delete(st, victim);
        st->sh->evicted++;
    }
}


/* Zone mutex held: the oldest event of the log holding the most bytes
 * goes, while that log keeps NGX_HTTP_KIMI_STORE_LOG_KEEP bytes of its
 * newest.  NGX_DECLINED: no log holds more. */
static ngx_int_t
ngx_http_kimi_store_log_trim(ngx_http_kimi_store_t *st)
{
    ngx_queue_t                  *q;
    ngx_http_kimi_store_log_t    *log, *most;
    ngx_http_kimi_store_node_t   *sn;
    ngx_http_kimi_store_event_t  *ev;

    most = NULL;

    for (q = ngx_queue_head(&st->sh->queue);
         q != ngx_queue_sentinel(&st->sh->queue);
         q = ngx_queue_next(q))
    {
        sn = ngx_queue_data(q, ngx_http_kimi_store_node_t, queue);
        log = sn->log;

        if (log == NULL || ngx_queue_empty(&log->events)
            || (most != NULL && log->size <= most->size))
        {
            continue;
        }

        ev = ngx_queue_data(ngx_queue_head(&log->events),
                            ngx_http_kimi_store_event_t, queue);

        /* its newest events stay: those its followers have yet to read */
        if (log->size - offsetof(ngx_http_kimi_store_event_t, data) - ev->len
            >= NGX_HTTP_KIMI_STORE_LOG_KEEP)
        {
            most = log;
        }
    }

    if (most == NULL) {
        return NGX_DECLINED;
    }

    q = ngx_queue_head(&most->events);
    ngx_queue_remove(q);
    ev = ngx_queue_data(q, ngx_http_kimi_store_event_t, queue);
    most->size -= offsetof(ngx_http_kimi_store_event_t, data) + ev->len;
    ngx_slab_free_locked(st->shpool, ev);

    return NGX_OK;
}


/* Zone mutex held. */
static void
ngx_http_kimi_store_log_free(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_log_t *log)
{
    ngx_queue_t  *q;

    while (!ngx_queue_empty(&log->events)) {
        q = ngx_queue_head(&log->events);
        ngx_queue_remove(q);
        ngx_slab_free_locked(st->shpool,
            ngx_queue_data(q, ngx_http_kimi_store_event_t, queue));
    }

    ngx_slab_free_locked(st->shpool, log);
}


/* The API key id the request passed ("" without keys): an entry's owner.
 * A background response's own request carries its client's. */
void
ngx_http_kimi_responses_owner(ngx_http_request_t *r, ngx_str_t *owner)
{
    ngx_http_kimi_ctx_t      *ctx;
#if (NGX_HTTP_KIMI_OPS)
    ngx_http_kimi_ops_req_t  *ops;
#endif

    ctx = ngx_http_get_module_ctx(r, ngx_http_kimi_module);

    if (ctx != NULL && ctx->detached) {
        *owner = ctx->owner;
        return;
    }

#if (NGX_HTTP_KIMI_OPS)
    ops = ngx_http_get_module_ctx(r, ngx_http_kimi_ops_module);

    if (ops != NULL && ops->key != NULL) {
        *owner = ops->key->id;
        return;
    }
#endif

    ngx_str_null(owner);
}


ngx_uint_t
ngx_http_kimi_responses_storing(ngx_http_kimi_ctx_t *ctx)
{
    json_t  *req;

    req = json_object_get(ctx->params.root, "__responses");

    return ctx->conf->responses_zone != NULL
           && !json_is_false(json_object_get(req, "store"));
}


/*
 * A finished Response into the zone (when the request did not say store
 * false): the object, the request's input items, and the conversation so
 * far with this answer appended as the assistant's message.  A response
 * over half the zone, or one that does not fit even after evicting, is
 * logged and not kept.  A background response's end is written only while
 * its entry still says this worker runs it.
 */
ngx_int_t
ngx_http_kimi_responses_keep(ngx_http_kimi_ctx_t *ctx, json_t *resp,
    json_t *choice)
{
    json_t     *req, *context, *msg, *v;
    ngx_int_t   rc;

    if (!ngx_http_kimi_responses_storing(ctx)) {
        return NGX_OK;
    }

    req = json_object_get(ctx->params.root, "__responses");

    context = json_copy(json_object_get(req, "__context"));
    if (context == NULL) {
        context = json_array();
    }

    msg = json_object_get(choice, "message");
    v = json_pack("{s:s,s:O}", "role", "assistant", "content",
                  json_object_get(msg, "content")
                  ? json_object_get(msg, "content") : json_null());
    if (json_array_size(json_object_get(msg, "tool_calls")) > 0) {
        json_object_set(v, "tool_calls", json_object_get(msg, "tool_calls"));
    }
    json_array_append_new(context, v);

    rc = ngx_http_kimi_responses_put(ctx, resp, context,
                                     ctx->detached ? NGX_HTTP_KIMI_PUT_FINAL
                                                   : NGX_HTTP_KIMI_PUT_DONE);
    json_decref(context);

    return rc;
}


/*
 * One entry into the zone: the Response, the request's input items and
 * context (the conversation a later turn continues; NULL: none).
 * NGX_DECLINED: a background response's entry no longer says this worker
 * runs it (cancelled or deleted); NGX_ERROR: not kept (logged).
 */
ngx_int_t
ngx_http_kimi_responses_put(ngx_http_kimi_ctx_t *ctx, json_t *resp,
    json_t *context, ngx_http_kimi_put_e how)
{
    char        *blob;
    json_t      *req, *entry;
    ngx_int_t    rc;
    ngx_str_t    owner;
    ngx_uint_t   state, cond;

    req = json_object_get(ctx->params.root, "__responses");

    entry = json_pack("{s:O,s:O,s:O}", "response", resp, "input_items",
                      json_object_get(req, "__input_items")
                      ? json_object_get(req, "__input_items") : json_null(),
                      "context", context ? context : json_null());
    if (entry == NULL) {
        return NGX_ERROR;
    }

    blob = json_dumps(entry, JSON_COMPACT);
    json_decref(entry);
    if (blob == NULL) {
        return NGX_ERROR;
    }

    state = (how == NGX_HTTP_KIMI_PUT_RUNNING
             || how == NGX_HTTP_KIMI_PUT_UPDATE)
            ? NGX_HTTP_KIMI_STORE_RUNNING : NGX_HTTP_KIMI_STORE_DONE;
    cond = (how == NGX_HTTP_KIMI_PUT_UPDATE
            || how == NGX_HTTP_KIMI_PUT_FINAL);

    ngx_http_kimi_responses_owner(ctx->request, &owner);

    rc = ngx_http_kimi_store_write(ctx->conf->responses_zone, &ctx->id,
                                   &owner, blob, state,
                                   state == NGX_HTTP_KIMI_STORE_RUNNING || cond
                                   ? ngx_pid : 0,
                                   cond, ctx->request->connection->log);
    free(blob);

    if (how == NGX_HTTP_KIMI_PUT_FINAL && rc != NGX_ERROR) {
        ctx->stored = 1;
    }

    return rc;
}


/*
 * The write itself.  cond: the entry must be there, RUNNING by pid, and
 * is replaced (cond 0: any entry of the id is).  The new entry is
 * allocated before the old one goes, so a background response's entry
 * survives a zone too full for its new state.
 */
static ngx_int_t
ngx_http_kimi_store_write(ngx_shm_zone_t *zone, ngx_str_t *id,
    ngx_str_t *owner, const char *blob, ngx_uint_t state, ngx_pid_t pid,
    ngx_uint_t cond, ngx_log_t *log)
{
    size_t                       len, size;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_log_t   *events;
    ngx_http_kimi_store_node_t  *sn, *old;

    st = zone->data;
    len = ngx_strlen(blob);
    size = offsetof(ngx_http_kimi_store_node_t, data) + id->len + owner->len
           + len;

    if (size > zone->shm.size / 2) {
        /* it would empty the zone to make room for one response */
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "kimi: response %V (%uz bytes) is over half of "
                      "kimi_responses_store \"%V\": not stored", id, len,
                      &zone->shm.name);
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&st->shpool->mutex);

    old = ngx_http_kimi_store_find(st, id);
    events = NULL;

    if (cond) {
        if (old == NULL || old->state != NGX_HTTP_KIMI_STORE_RUNNING
            || old->pid != pid)
        {
            ngx_shmtx_unlock(&st->shpool->mutex);
            return NGX_DECLINED;
        }

    } else if (old != NULL) {
        ngx_http_kimi_store_delete(st, old);
        old = NULL;
    }

    /* the event log stays on old while room is made: its oldest events
     * may go for the new state */
    sn = ngx_http_kimi_store_alloc(st, size, old);

    if (sn == NULL && old != NULL) {
        /* the last resort: its own earlier state (the log goes on) */
        events = old->log;
        old->log = NULL;
        ngx_http_kimi_store_delete(st, old);
        old = NULL;

        sn = ngx_http_kimi_store_alloc(st, size, NULL);
    }

    if (sn != NULL) {
        if (old != NULL) {
            /* the event log goes on with the new state */
            events = old->log;
            old->log = NULL;
            ngx_http_kimi_store_delete(st, old);
        }

        sn->sn.node.key = ngx_crc32_short(id->data, id->len);
        sn->sn.str.data = sn->data;
        sn->sn.str.len = id->len;
        sn->log = events;
        sn->state = state;
        sn->pid = pid;
        sn->owner_len = owner->len;
        sn->len = len;
        ngx_memcpy(sn->data, id->data, id->len);
        ngx_memcpy(sn->data + id->len, owner->data, owner->len);
        ngx_memcpy(sn->data + id->len + owner->len, blob, len);

        /* a cancel ends the stream: its worker appends nothing more */
        if (events != NULL && state == NGX_HTTP_KIMI_STORE_CANCELLED) {
            events->closed = 1;
        }

        ngx_rbtree_insert(&st->sh->rbtree, &sn->sn.node);
        ngx_queue_insert_tail(&st->sh->queue, &sn->queue);
        st->sh->count++;

    } else if (events != NULL) {
        ngx_http_kimi_store_log_free(st, events);
    }

    ngx_shmtx_unlock(&st->shpool->mutex);

    if (sn == NULL) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "kimi: response %V (%uz bytes) does not fit in "
                      "kimi_responses_store \"%V\": not stored", id, len,
                      &zone->shm.name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* NGX_OK while ctx's background response is still this worker's to run:
 * NGX_DECLINED once it was cancelled or deleted (from any worker) */
ngx_int_t
ngx_http_kimi_responses_running(ngx_http_kimi_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_node_t  *sn;

    sn = ngx_http_kimi_store_lock_find(ctx, &st);
    rc = ngx_http_kimi_store_runs_here(sn) ? NGX_OK : NGX_DECLINED;

    ngx_shmtx_unlock(&st->shpool->mutex);

    return rc;
}


/*
 * A background stream's event log, on the entry this worker runs: created
 * empty, its next event numbered first.
 */
ngx_int_t
ngx_http_kimi_responses_log_open(ngx_http_kimi_ctx_t *ctx, ngx_uint_t first)
{
    ngx_int_t                    rc;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_log_t   *log;
    ngx_http_kimi_store_node_t  *sn;

    rc = NGX_ERROR;
    sn = ngx_http_kimi_store_lock_find(ctx, &st);

    if (ngx_http_kimi_store_runs_here(sn) && sn->log == NULL) {
        log = ngx_http_kimi_store_alloc(st, sizeof(ngx_http_kimi_store_log_t),
                                        sn);
        if (log != NULL) {
            ngx_memzero(log, sizeof(ngx_http_kimi_store_log_t));
            ngx_queue_init(&log->events);
            log->pid = ngx_pid;
            log->next = first;
            sn->log = log;
            rc = NGX_OK;
        }
    }

    ngx_shmtx_unlock(&st->shpool->mutex);

    return rc;
}


/*
 * One event (its whole SSE frame) onto ctx's log, while this worker still
 * appends to it; last closes it.  NGX_DECLINED: the log is closed (a
 * cancel, the end) or gone (deleted).  An event that does not fit even
 * after the log's oldest and other finished responses went breaks the
 * log: it is emptied and closed, and re-attaching to it is refused (the
 * response itself still runs and is stored at its end).
 */
ngx_int_t
ngx_http_kimi_responses_log_append(ngx_http_kimi_ctx_t *ctx, ngx_uint_t seq,
    const u_char *frame, size_t len, ngx_uint_t last)
{
    ngx_int_t                    rc;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_log_t   *log;
    ngx_http_kimi_store_node_t  *sn;

    rc = NGX_DECLINED;
    sn = ngx_http_kimi_store_lock_find(ctx, &st);
    log = ngx_http_kimi_store_own_log(sn);

    if (log != NULL && !log->closed) {
        rc = ngx_http_kimi_store_log_add(st, sn, seq, frame, len,
                                         ctx->conf->responses_events);
        if (last) {
            log->closed = 1;
        }
    }

    ngx_shmtx_unlock(&st->shpool->mutex);

    if (rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "kimi: event %ui of response %V (%uz bytes) does not "
                      "fit in kimi_responses_store \"%V\": its stream can "
                      "no longer be re-attached", seq, &ctx->id, len,
                      &ctx->conf->responses_zone->shm.name);
    }

    return rc;
}


/* Zone mutex held: the append itself (the oldest go past bound). */
static ngx_int_t
ngx_http_kimi_store_log_add(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_node_t *sn, ngx_uint_t seq, const u_char *frame,
    size_t len, size_t bound)
{
    size_t                        size;
    ngx_queue_t                  *q;
    ngx_http_kimi_store_log_t    *log;
    ngx_http_kimi_store_event_t  *ev, *old;

    log = sn->log;
    size = offsetof(ngx_http_kimi_store_event_t, data) + len;

    for ( ;; ) {
        /* within the bound first, then whatever the zone can give */
        if (log->size + size <= bound || ngx_queue_empty(&log->events)) {
            ev = ngx_http_kimi_store_alloc(st, size, sn);
            if (ev != NULL) {
                break;
            }

            if (ngx_queue_empty(&log->events)) {
                log->broken = 1;
                log->closed = 1;
                return NGX_ERROR;
            }
        }

        q = ngx_queue_head(&log->events);
        ngx_queue_remove(q);
        old = ngx_queue_data(q, ngx_http_kimi_store_event_t, queue);
        log->size -= offsetof(ngx_http_kimi_store_event_t, data) + old->len;
        ngx_slab_free_locked(st->shpool, old);
    }

    ev->seq = seq;
    ev->len = len;
    ngx_memcpy(ev->data, frame, len);

    ngx_queue_insert_tail(&log->events, &ev->queue);
    log->size += size;
    log->next = seq + 1;

    return NGX_OK;
}


/* ctx's log takes nothing more (its response ended without a last
 * event: an internal error, the worker exits) */
void
ngx_http_kimi_responses_log_close(ngx_http_kimi_ctx_t *ctx)
{
    ngx_http_kimi_store_t      *st;
    ngx_http_kimi_store_log_t  *log;

    log = ngx_http_kimi_store_own_log(ngx_http_kimi_store_lock_find(ctx, &st));

    if (log != NULL) {
        log->closed = 1;
    }

    ngx_shmtx_unlock(&st->shpool->mutex);
}


/*
 * The events of response id from sequence_number ev->next on, copied into
 * ev->buf as they fit (at least one when the buffer is empty; ev->need
 * says how big a buffer the first one needs when it does not fit), ev->next
 * moved past them.  Also says what the log is: its oldest kept event
 * (ev->first), the next number it gives (ev->last), whether more can come
 * (closed, broken) and which worker runs the response.  The entry must
 * belong to r's API key.
 */
ngx_http_kimi_events_e
ngx_http_kimi_responses_events(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *id, ngx_http_kimi_events_t *ev)
{
    ngx_buf_t                    *b;
    ngx_str_t                     owner;
    ngx_queue_t                  *q;
    ngx_http_kimi_store_t        *st;
    ngx_http_kimi_events_e        rc;
    ngx_http_kimi_store_log_t    *log;
    ngx_http_kimi_store_node_t   *sn;
    ngx_http_kimi_store_event_t  *e;

    st = zone->data;
    b = ev->buf;
    ev->need = 0;
    ev->running_pid = 0;

    ngx_http_kimi_responses_owner(r, &owner);

    ngx_shmtx_lock(&st->shpool->mutex);

    sn = ngx_http_kimi_store_find(st, id);

    if (sn == NULL || sn->owner_len != owner.len
        || ngx_memcmp(sn->data + sn->sn.str.len, owner.data, owner.len) != 0)
    {
        rc = NGX_HTTP_KIMI_EVENTS_GONE;
        goto done;
    }

    log = sn->log;

    if (log == NULL) {
        rc = NGX_HTTP_KIMI_EVENTS_NONE;
        goto done;
    }

    if (sn->state == NGX_HTTP_KIMI_STORE_RUNNING) {
        ev->running_pid = sn->pid;
    }

    ev->last = log->next;
    ev->first = log->next;

    if (!ngx_queue_empty(&log->events)) {
        e = ngx_queue_data(ngx_queue_head(&log->events),
                           ngx_http_kimi_store_event_t, queue);
        ev->first = e->seq;
    }

    if (log->broken) {
        rc = NGX_HTTP_KIMI_EVENTS_BROKEN;
        goto done;
    }

    if (ev->next < ev->first) {
        rc = NGX_HTTP_KIMI_EVENTS_DROPPED;
        goto done;
    }

    /* the newest are wanted most often: look back from the end */
    for (q = ngx_queue_last(&log->events);
         q != ngx_queue_sentinel(&log->events);
         q = ngx_queue_prev(q))
    {
        e = ngx_queue_data(q, ngx_http_kimi_store_event_t, queue);

        if (e->seq < ev->next) {
            break;
        }
    }

    for (q = ngx_queue_next(q);
         b != NULL && q != ngx_queue_sentinel(&log->events);
         q = ngx_queue_next(q))
    {
        e = ngx_queue_data(q, ngx_http_kimi_store_event_t, queue);

        if ((size_t) (b->end - b->last) < e->len) {
            if (b->last == b->pos) {
                ev->need = e->len;
            }
            break;
        }

        b->last = ngx_cpymem(b->last, e->data, e->len);
        ev->next = e->seq + 1;
    }

    rc = (log->closed && ev->next >= log->next) ? NGX_HTTP_KIMI_EVENTS_END
                                                : NGX_HTTP_KIMI_EVENTS_OK;

done:

    ngx_shmtx_unlock(&st->shpool->mutex);

    return rc;
}


/*
 * The stored entry of response id as JSON ({response, input_items,
 * context}), or NULL with *found 0 where there is none (or it belongs to
 * another API key).  NULL with *found 1: out of memory.
 */
json_t *
ngx_http_kimi_responses_lookup(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *id, ngx_uint_t *found)
{
    ngx_pid_t   pid;
    ngx_uint_t  state;

    return ngx_http_kimi_store_read(r, zone, id, found, &state, &pid);
}


/*
 * The lookup, with the entry's state and worker.  A background response
 * whose worker is gone (killed, crashed: one that exits marks its own)
 * reads as failed, and is written so.
 */
static json_t *
ngx_http_kimi_store_read(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *id, ngx_uint_t *found, ngx_uint_t *state, ngx_pid_t *pid)
{
    char                        *blob;
    u_char                      *copy;
    size_t                       len;
    json_t                      *entry, *resp;
    ngx_int_t                    rc;
    ngx_str_t                    owner;
    json_error_t                 jerr;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_node_t  *sn;

    *found = 0;
    *state = NGX_HTTP_KIMI_STORE_DONE;
    *pid = 0;

    if (zone == NULL) {
        return NULL;
    }

    st = zone->data;
    ngx_http_kimi_responses_owner(r, &owner);
    copy = NULL;
    len = 0;

    ngx_shmtx_lock(&st->shpool->mutex);

    sn = ngx_http_kimi_store_find(st, id);

    if (sn != NULL
        && sn->owner_len == owner.len
        && ngx_memcmp(sn->data + sn->sn.str.len, owner.data, owner.len) == 0)
    {
        *found = 1;
        *state = sn->state;
        *pid = sn->pid;
        len = sn->len;
        copy = ngx_pnalloc(r->pool, len);
        if (copy != NULL) {
            ngx_memcpy(copy, sn->data + sn->sn.str.len + sn->owner_len, len);
        }
    }

    ngx_shmtx_unlock(&st->shpool->mutex);

    if (copy == NULL) {
        return NULL;
    }

    entry = json_loadb((char *) copy, len, 0, &jerr);
    if (entry == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "kimi: stored response %V does not parse: %s", id,
                      jerr.text);
        return NULL;
    }

    if (*state != NGX_HTTP_KIMI_STORE_RUNNING || *pid == ngx_pid
        || kill(*pid, 0) == 0 || ngx_errno != NGX_ESRCH)
    {
        return entry;
    }

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "kimi: background response %V: its worker %P is gone, "
                  "marking it failed", id, *pid);

    resp = json_object_get(entry, "response");
    json_object_set_new(resp, "status", json_string("failed"));
    json_object_set_new(resp, "error",
                        json_pack("{s:s,s:s}", "code", "server_error",
                                  "message", "The nginx worker running this "
                                  "response exited before it finished"));

    blob = json_dumps(entry, JSON_COMPACT);
    if (blob != NULL) {
        rc = ngx_http_kimi_store_write(zone, id, &owner, blob,
                                       NGX_HTTP_KIMI_STORE_DONE, *pid, 1,
                                       r->connection->log);
        free(blob);

        if (rc == NGX_OK) {
            *state = NGX_HTTP_KIMI_STORE_DONE;
            ngx_http_kimi_store_log_failed(r, zone, id, resp);

        } else if (rc == NGX_DECLINED) {
            /* its worker wrote the end (then exited) between the read and
             * the look at its pid: that end is the answer, read again */
            json_decref(entry);
            return ngx_http_kimi_store_read(r, zone, id, found, state, pid);
        }
    }

    return entry;
}


/*
 * The worker of a background stream is gone: its log ends with the
 * response.failed event that worker could not write (whoever marked the
 * entry failed writes it, once).
 */
static void
ngx_http_kimi_store_log_failed(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *id, json_t *resp)
{
    char                        *data;
    u_char                      *frame, *p;
    json_t                      *event;
    size_t                       len;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_log_t   *log;
    ngx_http_kimi_store_node_t  *sn;
    ngx_http_kimi_loc_conf_t    *klcf;

    static const char  type[] = "response.failed";

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kimi_module);
    st = zone->data;

    ngx_shmtx_lock(&st->shpool->mutex);

    sn = ngx_http_kimi_store_find(st, id);
    log = (sn != NULL) ? sn->log : NULL;

    if (log == NULL || log->closed) {
        ngx_shmtx_unlock(&st->shpool->mutex);
        return;
    }

    log->closed = 1;

    event = json_pack("{s:O,s:s,s:I}", "response", resp, "type", type,
                      "sequence_number", (json_int_t) log->next);
    data = (event != NULL) ? json_dumps(event, JSON_COMPACT) : NULL;
    json_decref(event);

    len = (data != NULL) ? ngx_strlen(data) : 0;
    frame = (data != NULL) ? ngx_pnalloc(r->pool, len + sizeof(type) + 16)
                           : NULL;

    if (frame != NULL) {
        p = ngx_sprintf(frame, "event: %s\ndata: %s\n\n", type, data);
        (void) ngx_http_kimi_store_log_add(st, sn, log->next, frame,
                                           p - frame, klcf->responses_events);
    }

    ngx_shmtx_unlock(&st->shpool->mutex);

    free(data);
}


static ngx_int_t
ngx_http_kimi_store_not_found(ngx_http_request_t *r, ngx_str_t *id)
{
    u_char     msg[256], *p;
    ngx_str_t  shown;

    shown = *id;
    if (shown.len > 128) {
        shown.len = 128;
    }

    p = ngx_snprintf(msg, sizeof(msg), "Response with id '%V' not found.",
                     &shown);

    return ngx_http_kimi_send_error(r, NGX_HTTP_NOT_FOUND,
                                    "invalid_request_error", (char *) msg,
                                    p - msg, NULL, NULL);
}


/* GET / DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items,
 * POST /v1/responses/{id}/cancel */
ngx_int_t
ngx_http_kimi_responses_route(ngx_http_request_t *r,
    ngx_http_kimi_route_e route, ngx_str_t *id)
{
    json_t                      *entry, *out;
    ngx_int_t                    rc, after;
    ngx_str_t                    owner, error;
    ngx_pid_t                    pid;
    const char                  *param;
    ngx_uint_t                   found, state;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_loc_conf_t    *klcf;
    ngx_http_kimi_store_node_t  *sn;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kimi_module);

    if (klcf->responses_zone == NULL) {
        return ngx_http_kimi_send_error(r, NGX_HTTP_NOT_FOUND,
                                        "invalid_request_error",
                                        "Responses are not stored by this "
                                        "server (kimi_responses_store is "
                                        "off)",
                                        sizeof("Responses are not stored by "
                                               "this server "
                                               "(kimi_responses_store is "
                                               "off)") - 1, NULL, NULL);
    }

    if (route == NGX_HTTP_KIMI_ROUTE_RESPONSE_CANCEL) {
        return ngx_http_kimi_store_cancel(r, klcf->responses_zone, id);
    }

    if (route == NGX_HTTP_KIMI_ROUTE_RESPONSE
        && r->method == NGX_HTTP_DELETE)
    {
        st = klcf->responses_zone->data;
        ngx_http_kimi_responses_owner(r, &owner);
        state = NGX_HTTP_KIMI_STORE_DONE;
        pid = 0;

        ngx_shmtx_lock(&st->shpool->mutex);

        sn = ngx_http_kimi_store_find(st, id);
        found = sn != NULL && sn->owner_len == owner.len
                && ngx_memcmp(sn->data + sn->sn.str.len, owner.data, owner.len)
                   == 0;
        if (found) {
            state = sn->state;
            pid = sn->pid;
            ngx_http_kimi_store_delete(st, sn);
        }

        ngx_shmtx_unlock(&st->shpool->mutex);

        if (!found) {
            return ngx_http_kimi_store_not_found(r, id);
        }

        /* a background response still running stops: here now, in
         * another worker at its next engine event */
        if (state == NGX_HTTP_KIMI_STORE_RUNNING && pid == ngx_pid) {
            ngx_http_kimi_background_abort(id);
        }

        out = json_pack("{s:s%,s:s,s:b}", "id", (char *) id->data, id->len,
                        "object", "response", "deleted", 1);
        if (out == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, out);
        json_decref(out);
        return rc;
    }

    /* ?stream=true[&starting_after=N]: OpenAI's re-attach to a background
     * stream (the events after N, then the new ones) */
    if (route == NGX_HTTP_KIMI_ROUTE_RESPONSE) {
        rc = ngx_http_kimi_store_stream_args(r, &after, &error, &param);

        if (rc == NGX_OK) {
            return ngx_http_kimi_responses_follow(r, klcf->responses_zone,
                                                  id, after);
        }

        if (rc == NGX_ERROR) {
            return ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "invalid_request_error",
                                            (char *) error.data, error.len,
                                            param, NULL);
        }
    }

    entry = ngx_http_kimi_responses_lookup(r, klcf->responses_zone, id,
                                           &found);
    if (entry == NULL) {
        return found ? NGX_HTTP_INTERNAL_SERVER_ERROR
                     : ngx_http_kimi_store_not_found(r, id);
    }

    if (route == NGX_HTTP_KIMI_ROUTE_RESPONSE_ITEMS) {
        rc = ngx_http_kimi_store_items(r, entry);

    } else {
        rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK,
                                     json_object_get(entry, "response"));
    }

    json_decref(entry);

    return rc;
}


/*
 * GET's stream and starting_after arguments: NGX_DECLINED without
 * stream=true (a plain GET; a valid starting_after is then ignored),
 * NGX_OK with *after (-1: from the first event), NGX_ERROR with the 400's
 * message and param.
 */
static ngx_int_t
ngx_http_kimi_store_stream_args(ngx_http_request_t *r, ngx_int_t *after,
    ngx_str_t *error, const char **param)
{
    ngx_str_t   stream, value;
    ngx_uint_t  want;

    static const char  bad_stream[] = "stream must be true or false";
    static const char  bad_after[] = "starting_after must be a sequence "
                                     "number: an integer from 0";

    want = 0;
    *after = -1;

    if (ngx_http_arg(r, (u_char *) "stream", 6, &stream) == NGX_OK) {
        if (stream.len == 4 && ngx_strncmp(stream.data, "true", 4) == 0) {
            want = 1;

        } else if (!(stream.len == 5
                     && ngx_strncmp(stream.data, "false", 5) == 0))
        {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "kimi: invalid stream \"%V\"", &stream);

            error->data = (u_char *) bad_stream;
            error->len = sizeof(bad_stream) - 1;
            *param = "stream";
            return NGX_ERROR;
        }
    }

    if (ngx_http_arg(r, (u_char *) "starting_after", 14, &value) == NGX_OK) {
        /* ngx_atoi(): digits only, NGX_ERROR past NGX_MAX_INT_T_VALUE */
        *after = ngx_atoi(value.data, value.len);

        if (*after == NGX_ERROR) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "kimi: invalid starting_after \"%V\"", &value);

            error->data = (u_char *) bad_after;
            error->len = sizeof(bad_after) - 1;
            *param = "starting_after";
            return NGX_ERROR;
        }
    }

    return want ? NGX_OK : NGX_DECLINED;
}


/*
 * POST /v1/responses/{id}/cancel, as OpenAI's: a background response
 * still queued or in progress becomes "cancelled" (its engine sequence is
 * aborted by the worker that runs it); one that has ended is returned as
 * it is (cancelling twice is idempotent); a response that was not run in
 * the background is a 400, as vLLM's.
 */
static ngx_int_t
ngx_http_kimi_store_cancel(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *id)
{
    char        *blob;
    json_t      *entry, *resp;
    ngx_int_t    rc;
    ngx_str_t    owner;
    ngx_pid_t    pid;
    ngx_uint_t   found, state, tries;

    static const char  sync[] = "Cannot cancel a synchronous response.";

    for (tries = 0; /* void */; tries++) {
        entry = ngx_http_kimi_store_read(r, zone, id, &found, &state, &pid);
        if (entry == NULL) {
            return found ? NGX_HTTP_INTERNAL_SERVER_ERROR
                         : ngx_http_kimi_store_not_found(r, id);
        }

        resp = json_object_get(entry, "response");

        if (!json_is_true(json_object_get(resp, "background"))) {
            json_decref(entry);
            return ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "invalid_request_error", sync,
                                            sizeof(sync) - 1, "response_id",
                                            NULL);
        }

        if (state != NGX_HTTP_KIMI_STORE_RUNNING || tries == 2) {
            break;
        }

        json_object_set_new(resp, "status", json_string("cancelled"));

        blob = json_dumps(entry, JSON_COMPACT);
        if (blob == NULL) {
            json_decref(entry);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_kimi_responses_owner(r, &owner);

        /* only while it still runs: it may have ended meanwhile, then
         * what it ended as is read again and returned */
        rc = ngx_http_kimi_store_write(zone, id, &owner, blob,
                                       NGX_HTTP_KIMI_STORE_CANCELLED, pid, 1,
                                       r->connection->log);
        free(blob);

        if (rc == NGX_OK) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "kimi: background response %V cancelled", id);

            if (pid == ngx_pid) {
                ngx_http_kimi_background_abort(id);
            }

            break;
        }

        json_decref(entry);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, resp);
    json_decref(entry);

    return rc;
}


/* OpenAI's list of input items: ?order=asc|desc (desc), ?limit=1..100
 * (20), ?after=ITEM_ID */
static ngx_int_t
ngx_http_kimi_store_items(ngx_http_request_t *r, json_t *entry)
{
    size_t      i, n, start;
    json_t     *items, *data, *item;
    ngx_int_t   limit, rc;
    ngx_str_t   order, after, slimit;
    ngx_uint_t  desc;

    items = json_object_get(entry, "input_items");
    n = json_array_size(items);

    desc = 1;
    if (ngx_http_arg(r, (u_char *) "order", 5, &order) == NGX_OK) {
        if (order.len == 3 && ngx_strncmp(order.data, "asc", 3) == 0) {
            desc = 0;

        } else if (!(order.len == 4
                     && ngx_strncmp(order.data, "desc", 4) == 0))
        {
            return ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "invalid_request_error",
                                            "order must be asc or desc",
                                            sizeof("order must be asc or "
                                                   "desc") - 1, "order",
                                            NULL);
        }
    }

    limit = 20;
    if (ngx_http_arg(r, (u_char *) "limit", 5, &slimit) == NGX_OK) {
        limit = ngx_atoi(slimit.data, slimit.len);
        if (limit < 1 || limit > 100) {
            return ngx_http_kimi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "invalid_request_error",
                                            "limit must be 1 to 100",
                                            sizeof("limit must be 1 to 100")
                                            - 1, "limit", NULL);
        }
    }

    start = 0;
    if (ngx_http_arg(r, (u_char *) "after", 5, &after) == NGX_OK) {
        start = n;
        for (i = 0; i < n; i++) {
            item = json_array_get(items, desc ? n - 1 - i : i);
            if (json_string_length(json_object_get(item, "id")) == after.len
                && ngx_strncmp(json_string_value(json_object_get(item, "id")),
                               after.data, after.len) == 0)
            {
                start = i + 1;
                break;
            }
        }
    }

    data = json_array();
    if (data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = start; i < n && json_array_size(data) < (size_t) limit; i++) {
        json_array_append(data, json_array_get(items, desc ? n - 1 - i : i));
    }

    item = json_pack("{s:s,s:o,s:O,s:O,s:b}", "object", "list", "data", data,
                     "first_id",
                     json_array_size(data)
                     ? json_object_get(json_array_get(data, 0), "id")
                     : json_null(),
                     "last_id",
                     json_array_size(data)
                     ? json_object_get(json_array_get(data,
                                           json_array_size(data) - 1), "id")
                     : json_null(),
                     "has_more", i < n);
    if (item == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_kimi_send_json(r, NGX_HTTP_OK, item);
    json_decref(item);

    return rc;
}
