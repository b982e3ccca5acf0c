
/*
 * Stored responses for the Responses API (kimi_responses_store).
 *
 * Owns:   the shared-memory zone of finished Response objects: one entry a
 *         response (the Response as it was returned, its input items, and
 *         the conversation so far as chat messages, which a later request
 *         continues through previous_response_id), oldest evicted first
 *         when the zone is full, kept across nginx reloads; and the
 *         endpoints that read it: GET and DELETE /v1/responses/{id}, GET
 *         /v1/responses/{id}/input_items.  With API keys an entry belongs
 *         to the key that made it: another key reads a 404.
 * Never:  talks to the engine or renders text; turning requests into chat
 *         requests is ngx_http_kimi_responses.c.
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


typedef struct {
    ngx_str_node_t               sn;               /* key: crc32 of the id;
                                                      str: the id, in data */
    ngx_queue_t                  queue;
    size_t                       owner_len;
    size_t                       len;              /* of the JSON blob */
    u_char                       data[1];          /* id, owner, blob */
} ngx_http_kimi_store_node_t;


static ngx_int_t ngx_http_kimi_store_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_kimi_store_node_t *ngx_http_kimi_store_find(
    ngx_http_kimi_store_t *st, ngx_str_t *id);
static void ngx_http_kimi_store_delete(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_node_t *sn);
static void ngx_http_kimi_store_owner(ngx_http_request_t *r,
    ngx_str_t *owner);
static ngx_int_t ngx_http_kimi_store_not_found(ngx_http_request_t *r,
    ngx_str_t *id);
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


/* Zone mutex held. */
static void
ngx_http_kimi_store_delete(ngx_http_kimi_store_t *st,
    ngx_http_kimi_store_node_t *sn)
{
    ngx_rbtree_delete(&st->sh->rbtree, &sn->sn.node);
    ngx_queue_remove(&sn->queue);
    ngx_slab_free_locked(st->shpool, sn);
    st->sh->count--;
}


/* The API key id the request passed ("" without keys): an entry's owner. */
static void
ngx_http_kimi_store_owner(ngx_http_request_t *r, ngx_str_t *owner)
{
#if (NGX_HTTP_KIMI_OPS)
    ngx_http_kimi_ops_req_t  *ops;

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
 * logged and not kept.
 */
void
ngx_http_kimi_responses_keep(ngx_http_kimi_ctx_t *ctx, json_t *resp,
    json_t *choice)
{
    char                        *blob;
    size_t                       len, size;
    json_t                      *req, *entry, *context, *msg, *v;
    ngx_str_t                    id, owner;
    ngx_queue_t                 *q;
    ngx_shm_zone_t              *zone;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_node_t  *sn, *old;

    if (!ngx_http_kimi_responses_storing(ctx)) {
        return;
    }

    zone = ctx->conf->responses_zone;
    st = zone->data;
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

    entry = json_pack("{s:O,s:O,s:o}", "response", resp, "input_items",
                      json_object_get(req, "__input_items")
                      ? json_object_get(req, "__input_items") : json_null(),
                      "context", context);
    if (entry == NULL) {
        return;
    }

    blob = json_dumps(entry, JSON_COMPACT);
    json_decref(entry);
    if (blob == NULL) {
        return;
    }

    len = ngx_strlen(blob);
    id = ctx->id;
    ngx_http_kimi_store_owner(ctx->request, &owner);
    size = offsetof(ngx_http_kimi_store_node_t, data) + id.len + owner.len
           + len;

    if (size > zone->shm.size / 2) {
        /* it would empty the zone to make room for one response */
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "kimi: response %V (%uz bytes) is over half of "
                      "kimi_responses_store \"%V\": not stored", &id, len,
                      &zone->shm.name);
        free(blob);
        return;
    }

    ngx_shmtx_lock(&st->shpool->mutex);

    old = ngx_http_kimi_store_find(st, &id);
    if (old != NULL) {
        ngx_http_kimi_store_delete(st, old);
    }

    for ( ;; ) {
        sn = ngx_slab_alloc_locked(st->shpool, size);
        if (sn != NULL || ngx_queue_empty(&st->sh->queue)) {
            break;
        }

        /* the oldest response makes room */
        q = ngx_queue_head(&st->sh->queue);
        ngx_http_kimi_store_delete(st,
            ngx_queue_data(q, ngx_http_kimi_store_node_t, queue));
        st->sh->evicted++;
    }

    if (sn != NULL) {
        sn->sn.node.key = ngx_crc32_short(id.data, id.len);
        sn->sn.str.data = sn->data;
        sn->sn.str.len = id.len;
        sn->owner_len = owner.len;
        sn->len = len;
        ngx_memcpy(sn->data, id.data, id.len);
        ngx_memcpy(sn->data + id.len, owner.data, owner.len);
        ngx_memcpy(sn->data + id.len + owner.len, blob, len);

        ngx_rbtree_insert(&st->sh->rbtree, &sn->sn.node);
        ngx_queue_insert_tail(&st->sh->queue, &sn->queue);
        st->sh->count++;
    }

    ngx_shmtx_unlock(&st->shpool->mutex);

    if (sn == NULL) {
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "kimi: response %V (%uz bytes) does not fit in "
                      "kimi_responses_store \"%V\": not stored", &id, len,
                      &zone->shm.name);
    }

    free(blob);
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
    u_char                      *copy;
    size_t                       len;
    json_t                      *entry;
    ngx_str_t                    owner;
    json_error_t                 jerr;
    ngx_http_kimi_store_t       *st;
    ngx_http_kimi_store_node_t  *sn;

    *found = 0;

    if (zone == NULL) {
        return NULL;
    }

    st = zone->data;
    ngx_http_kimi_store_owner(r, &owner);
    copy = NULL;
    len = 0;

    ngx_shmtx_lock(&st->shpool->mutex);

    sn = ngx_http_kimi_store_find(st, id);

    if (sn != NULL
        && sn->owner_len == owner.len
        && ngx_memcmp(sn->data + sn->sn.str.len, owner.data, owner.len) == 0)
    {
        *found = 1;
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
    }

    return entry;
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


/* GET / DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items */
ngx_int_t
ngx_http_kimi_responses_route(ngx_http_request_t *r,
    ngx_http_kimi_route_e route, ngx_str_t *id)
{
    json_t                    *entry, *out;
    ngx_int_t                  rc;
    ngx_str_t                  owner;
    ngx_uint_t                 found;
    ngx_http_kimi_store_t     *st;
    ngx_http_kimi_loc_conf_t  *klcf;
    ngx_http_kimi_store_node_t *sn;

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

    if (route == NGX_HTTP_KIMI_ROUTE_RESPONSE
        && r->method == NGX_HTTP_DELETE)
    {
        st = klcf->responses_zone->data;
        ngx_http_kimi_store_owner(r, &owner);

        ngx_shmtx_lock(&st->shpool->mutex);

        sn = ngx_http_kimi_store_find(st, id);
        found = sn != NULL && sn->owner_len == owner.len
                && ngx_memcmp(sn->data + sn->sn.str.len, owner.data, owner.len)
                   == 0;
        if (found) {
            ngx_http_kimi_store_delete(st, sn);
        }

        ngx_shmtx_unlock(&st->shpool->mutex);

        if (!found) {
            return ngx_http_kimi_store_not_found(r, id);
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
