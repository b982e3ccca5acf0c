
/*
 * The worker's side of the engine contract (engine/shm/kimi_shm.h).
 *
 * Owns:   attaching to the engine's segment, this worker's record, one
 *         doorbell socket per rank registered as an nginx connection, the
 *         slot -> request table, submission with rank choice, draining the
 *         event rings, the slot state machine as a request sees it, and
 *         failing every open request when the engine goes away.
 * Never:  blocks (sockets are non-blocking, the segment is memory), polls
 *         on a timer, or trusts an index read from the segment without
 *         the kimi_shm_* bounds checks.
 * Holds:  an attachment lives while the worker or any request references
 *         it (refs); a replaced or dead engine's mapping stays valid until
 *         the last request that used it is gone.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_kimi.h"


/* an engine whose heartbeat is older than this is not ready */
#define NGX_HTTP_KIMI_HEARTBEAT_NS     3000000000ULL

/* at most one attach attempt per this many ms while the engine is away */
#define NGX_HTTP_KIMI_ATTACH_BACKOFF   100

/* while detached a worker looks for the engine this often on its own, so
 * it attaches and loads its tokenizer before its first request needs it */
#define NGX_HTTP_KIMI_ATTACH_POLL      250


struct ngx_http_kimi_attach_s {
    kimi_shm_t                 shm;
    ngx_uint_t                 refs;
    int32_t                    worker;           /* our record, or -1 */
    uint32_t                   n_ranks;
    ngx_connection_t          *conns[KIMI_SHM_MAX_RANKS];
    ngx_uint_t                 inflight[KIMI_SHM_MAX_RANKS];
    ngx_http_kimi_ctx_t      **by_slot;          /* n_slots entries */
    ngx_queue_t                requests;
    ngx_log_t                 *log;
    unsigned                   dead:1;
};


/*
 * Per-process state: each worker attaches on its own (init_process) and
 * keeps one current attachment; nothing here is shared between workers.
 */
static struct {
    ngx_cycle_t               *cycle;
    ngx_http_kimi_main_conf_t *kmcf;
    ngx_http_kimi_attach_t    *current;
    ngx_uint_t                 pending;          /* parsed, not accepted */
    ngx_msec_t                 last_try;
    ngx_uint_t                 tried;
    ngx_str_t                  why;              /* last attach failure */
    u_char                     why_buf[600];
    ngx_uint_t                 logged_fail;
    uint64_t                   failed_inode;     /* segment last refused */
    ngx_event_t                attach_timer;     /* armed while detached */
} ngx_http_kimi_engine;


static ngx_http_kimi_attach_t *ngx_http_kimi_attach(ngx_log_t *log);
static uint64_t ngx_http_kimi_segment_inode(ngx_http_kimi_main_conf_t *kmcf);
static ngx_int_t ngx_http_kimi_connect_rank(ngx_http_kimi_attach_t *a,
    uint32_t rank, kimi_err_t *err);
static void ngx_http_kimi_doorbell_handler(ngx_event_t *rev);
static void ngx_http_kimi_rank_lost(ngx_http_kimi_attach_t *a,
    ngx_connection_t *c, const char *why);
static void ngx_http_kimi_engine_lost(ngx_http_kimi_attach_t *a,
    const char *why);
static void ngx_http_kimi_ring(ngx_http_kimi_attach_t *a, uint32_t rank);
static void ngx_http_kimi_attach_unref(ngx_http_kimi_attach_t *a);
static void ngx_http_kimi_engine_error(ngx_http_kimi_ctx_t *ctx,
    ngx_uint_t status, const char *msg, size_t len);
static ngx_int_t ngx_http_kimi_rank_ready(ngx_http_kimi_attach_t *a,
    uint32_t r, uint64_t now);
static void ngx_http_kimi_attach_poll(ngx_event_t *ev);


ngx_int_t
ngx_http_kimi_engine_init_process(ngx_cycle_t *cycle)
{
    ngx_event_t  *ev;

    ngx_http_kimi_engine.cycle = cycle;
    ngx_http_kimi_engine.kmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                                       ngx_http_kimi_module);
    ngx_str_set(&ngx_http_kimi_engine.why, "the engine is not attached yet");

    ev = &ngx_http_kimi_engine.attach_timer;
    ev->handler = ngx_http_kimi_attach_poll;
    ev->log = cycle->log;
    ev->data = &ngx_http_kimi_engine;
    /* never holds up a graceful shutdown */
    ev->cancelable = 1;

    ngx_http_kimi_attach_poll(ev);

    return NGX_OK;
}


/*
 * nginx and the engine often start together (`make run`, systemd), and an
 * engine restarts on its own: a worker that waited for a request to look
 * would answer that request 503 while its tokenizer loads.  One stat(2) of
 * the segment path per tick, only while detached; attaching stops it.
 */
static void
ngx_http_kimi_attach_poll(ngx_event_t *ev)
{
    ngx_http_kimi_attach_t  *a;

    if (ngx_exiting || ngx_quit || ngx_terminate
        || ngx_http_kimi_engine.kmcf == NULL
        || ngx_http_kimi_engine.kmcf->engine_dir.len == 0)
    {
        return;
    }

    a = ngx_http_kimi_engine_get(ev->log);

    if ((a == NULL || a->dead) && !ev->timer_set) {
        ngx_add_timer(ev, NGX_HTTP_KIMI_ATTACH_POLL);
    }
}


void
ngx_http_kimi_engine_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_kimi_attach_t  *a;

    a = ngx_http_kimi_engine.current;
    if (a == NULL) {
        return;
    }

    /* requests still open at exit are being torn down with the process;
     * give their slots back so the engine cancels them at once */
    ngx_http_kimi_engine_lost(a, NULL);
}


/*
 * The attachment new requests should use: the current one, or a fresh
 * one when there is none or the engine replaced its segment (restart).
 */
ngx_http_kimi_attach_t *
ngx_http_kimi_engine_get(ngx_log_t *log)
{
    uint64_t                    ino;
    ngx_http_kimi_attach_t     *a;
    ngx_http_kimi_main_conf_t  *kmcf;

    kmcf = ngx_http_kimi_engine.kmcf;
    if (kmcf == NULL) {
        return NULL;
    }

    a = ngx_http_kimi_engine.current;

    if (a != NULL) {
        if (!kimi_shm_replaced(&a->shm, (char *) kmcf->engine_dir.data)) {
            return a;
        }

        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "kimi engine segment in \"%V\" was replaced, "
                      "re-attaching", &kmcf->engine_dir);

        ngx_http_kimi_engine_lost(a, "the engine restarted");
    }

    /* after a failure, retry at most every 100 ms, or at once when a new
     * segment file appeared (an engine that just started) */
    ino = ngx_http_kimi_segment_inode(kmcf);

    if (ngx_http_kimi_engine.tried
        && ngx_current_msec - ngx_http_kimi_engine.last_try
           < NGX_HTTP_KIMI_ATTACH_BACKOFF
        && ino == ngx_http_kimi_engine.failed_inode)
    {
        return NULL;
    }

    ngx_http_kimi_engine.tried = 1;
    ngx_http_kimi_engine.last_try = ngx_current_msec;
    ngx_http_kimi_engine.failed_inode = ino;

    return ngx_http_kimi_attach(log);
}


/* the segment file's inode, 0 when there is none (a stat(2) of a path in
 * the engine's ipc dir: local metadata, never blocks on the network) */
static uint64_t
ngx_http_kimi_segment_inode(ngx_http_kimi_main_conf_t *kmcf)
{
    char         path[NGX_MAX_PATH];
    struct stat  st;

    if (kimi_shm_segment_path(path, sizeof(path),
                              (char *) kmcf->engine_dir.data) != 0
        || stat(path, &st) != 0)
    {
        return 0;
    }

    return (uint64_t) st.st_ino;
}


static ngx_http_kimi_attach_t *
ngx_http_kimi_attach(ngx_log_t *log)
{
    int32_t                     w;
    uint32_t                    r, n_up;
    ngx_uint_t                  level;
    kimi_err_t                  err;
    kimi_shm_header_t          *hdr;
    ngx_http_kimi_attach_t     *a;
    ngx_http_kimi_main_conf_t  *kmcf;

    kmcf = ngx_http_kimi_engine.kmcf;

    a = ngx_calloc(sizeof(ngx_http_kimi_attach_t), log);
    if (a == NULL) {
        return NULL;
    }

    a->worker = -1;
    a->log = ngx_http_kimi_engine.cycle->log;
    ngx_queue_init(&a->requests);

    /* engine_dir is NUL-terminated: ngx_conf_set_str_slot keeps the
     * config token, which the parser terminates */
    if (kimi_shm_attach(&a->shm, (char *) kmcf->engine_dir.data, &err) != 0) {
        goto failed;
    }

    hdr = a->shm.hdr;
    a->n_ranks = a->shm.n_ranks;

    if (a->n_ranks == 0 || a->n_ranks > KIMI_SHM_MAX_RANKS) {
        kimi_err_set(&err, KIMI_ESTATE, "segment has %u ranks",
                     a->n_ranks);
        goto failed;
    }

    if (atomic_load(&hdr->state) == KIMI_SHM_STATE_STOPPED) {
        kimi_err_set(&err, KIMI_ESTATE, "the engine has stopped");
        goto failed;
    }

    w = kimi_shm_worker_claim(&a->shm, (int32_t) ngx_pid);
    if (w < 0) {
        kimi_err_set(&err, KIMI_EFULL, "all %d worker records of the "
                     "segment are taken", KIMI_SHM_MAX_WORKERS);
        goto failed;
    }

    a->worker = w;

    /* a rank that died stays down (its launcher marked it stopped and
     * removed its socket): serve with the others, fail only if none is up */
    n_up = 0;

    for (r = 0; r < a->n_ranks; r++) {
        if (ngx_http_kimi_connect_rank(a, r, &err) == NGX_OK) {
            n_up++;
            continue;
        }

        if (a->n_ranks == 1) {
            goto failed;
        }

        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "kimi engine rank %uD is unavailable: %s", r, err.msg);
    }

    if (n_up == 0) {
        kimi_err_set(&err, KIMI_ESTATE, "no engine rank is up");
        goto failed;
    }

    a->by_slot = ngx_calloc(a->shm.n_slots * sizeof(ngx_http_kimi_ctx_t *),
                            log);
    if (a->by_slot == NULL) {
        kimi_err_set(&err, KIMI_ENOMEM, "no memory for %u slots",
                     a->shm.n_slots);
        goto failed;
    }

    a->refs = 1;                       /* the worker's own reference */
    ngx_http_kimi_engine.current = a;
    ngx_http_kimi_engine.logged_fail = 0;
    kmcf->shm = a->shm;

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "kimi engine attached, ABI %ud, %ud ranks, %ud slots, "
                  "worker record %D, model \"%s\"",
                  hdr->abi_version, a->n_ranks, a->shm.n_slots, w,
                  hdr->served_model_name);

    /* the text stack follows the engine's model unless kimi_model_dir */
    if (kmcf->model_dir.len == 0) {
        hdr->model_dir[sizeof(hdr->model_dir) - 1] = '\0';
        ngx_http_kimi_text_want(ngx_http_kimi_engine.cycle, hdr->model_dir);
    }

    return a;

failed:

    /* one line per outage, not one per request */
    level = ngx_http_kimi_engine.logged_fail ? NGX_LOG_INFO : NGX_LOG_WARN;
    ngx_http_kimi_engine.logged_fail = 1;

    ngx_log_error(level, log, 0, "kimi engine in \"%V\" is unavailable: %s",
                  &kmcf->engine_dir, err.msg);

    ngx_http_kimi_engine.why.data = ngx_http_kimi_engine.why_buf;
    ngx_http_kimi_engine.why.len =
        ngx_snprintf(ngx_http_kimi_engine.why_buf,
                     sizeof(ngx_http_kimi_engine.why_buf),
                     "The engine is unavailable: %s", err.msg)
        - ngx_http_kimi_engine.why_buf;

    for (r = 0; r < KIMI_SHM_MAX_RANKS; r++) {
        if (a->conns[r]) {
            ngx_close_connection(a->conns[r]);
        }
    }

    if (a->worker >= 0) {
        kimi_shm_worker_release(&a->shm, a->worker, (int32_t) ngx_pid);
    }

    if (a->shm.hdr) {
        kimi_shm_detach(&a->shm);
    }

    if (a->by_slot) {
        ngx_free(a->by_slot);
    }

    ngx_free(a);

    return NULL;
}


static ngx_int_t
ngx_http_kimi_connect_rank(ngx_http_kimi_attach_t *a, uint32_t rank,
    kimi_err_t *err)
{
    int                  fd;
    ssize_t              n;
    ngx_event_t         *rev, *wev;
    kimi_shm_worker_t   *w;
    ngx_connection_t    *c;
    kimi_shm_hello_t     hello;
    struct sockaddr_un   sa;

    ngx_memzero(&sa, sizeof(struct sockaddr_un));
    sa.sun_family = AF_UNIX;

    if (kimi_shm_socket_path(sa.sun_path, sizeof(sa.sun_path),
                             (char *) ngx_http_kimi_engine.kmcf
                                                    ->engine_dir.data, rank)
        != 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "socket path is too long");
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return kimi_err_set(err, KIMI_EIO, "socket() failed: %s",
                            strerror(ngx_errno));
    }

    /* a local stream socket connects at once or not at all */
    if (connect(fd, (struct sockaddr *) &sa, sizeof(struct sockaddr_un))
        == -1)
    {
        kimi_err_set(err, KIMI_EIO, "connect(\"%s\") failed: %s",
                     sa.sun_path, strerror(ngx_errno));
        close(fd);
        return NGX_ERROR;
    }

    w = kimi_shm_worker(&a->shm, a->worker);

    hello.magic = KIMI_SHM_MAGIC;
    hello.epoch = a->shm.epoch;
    hello.abi_version = KIMI_SHM_ABI_VERSION;
    hello.worker_index = a->worker;
    hello.pid = (int32_t) ngx_pid;
    hello.incarnation = w->incarnation;

    /* 32 bytes into an empty socket buffer: never short, never EAGAIN */
    n = send(fd, &hello, sizeof(hello), MSG_NOSIGNAL);
    if (n != (ssize_t) sizeof(hello)) {
        kimi_err_set(err, KIMI_EIO, "send(hello) to rank %u failed: %s",
                     rank, strerror(ngx_errno));
        close(fd);
        return NGX_ERROR;
    }

    c = ngx_get_connection(fd, ngx_http_kimi_engine.cycle->log);
    if (c == NULL) {
        close(fd);
        return kimi_err_set(err, KIMI_ENOMEM, "no free nginx connection for "
                            "the rank %u doorbell", rank);
    }

    c->data = a;
    c->log = ngx_http_kimi_engine.cycle->log;

    rev = c->read;
    wev = c->write;
    rev->log = c->log;
    wev->log = c->log;

    /* like nginx's own channel: worker_shutdown_timeout leaves it alone,
     * in-flight streams keep their wakeups until they end */
    rev->channel = 1;
    wev->channel = 1;

    rev->handler = ngx_http_kimi_doorbell_handler;

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_close_connection(c);
        return kimi_err_set(err, KIMI_EIO, "cannot watch the rank %u "
                            "doorbell", rank);
    }

    a->conns[rank] = c;

    return NGX_OK;
}


ngx_int_t
ngx_http_kimi_engine_ready(ngx_http_kimi_attach_t *a, ngx_str_t *why)
{
    uint32_t   r;
    uint64_t   now;

    if (a == NULL || a->dead) {
        *why = ngx_http_kimi_engine.why;
        return NGX_DECLINED;
    }

    switch (atomic_load(&a->shm.hdr->state)) {

    case KIMI_SHM_STATE_READY:
        break;

    case KIMI_SHM_STATE_STARTING:
        ngx_str_set(why, "The engine is starting");
        return NGX_DECLINED;

    case KIMI_SHM_STATE_DRAINING:
        ngx_str_set(why, "The engine is shutting down");
        return NGX_DECLINED;

    default:
        ngx_str_set(why, "The engine has stopped");
        return NGX_DECLINED;
    }

    now = kimi_shm_now_ns();

    for (r = 0; r < a->n_ranks; r++) {
        if (ngx_http_kimi_rank_ready(a, r, now) == NGX_OK) {
            if (ngx_http_kimi_text_get(why) == NULL) {
                return NGX_DECLINED;
            }

            return NGX_OK;
        }
    }

    ngx_str_set(why, "No engine rank is ready (heartbeat stale)");

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_kimi_rank_ready(ngx_http_kimi_attach_t *a, uint32_t r, uint64_t now)
{
    uint64_t          hb;
    kimi_err_t        err;
    kimi_shm_rank_t  *rk;

    rk = kimi_shm_rank(&a->shm, r);

    if (rk == NULL || atomic_load(&rk->state) != KIMI_SHM_STATE_READY) {
        return NGX_DECLINED;
    }

    hb = atomic_load(&rk->heartbeat_ns);

    if (hb + NGX_HTTP_KIMI_HEARTBEAT_NS < now) {
        return NGX_DECLINED;
    }

    if (a->conns[r] == NULL) {
        /* a rank still loading when this worker attached: it published
         * READY since, so its socket answers now (a local, non-blocking
         * connect) */
        if (ngx_http_kimi_connect_rank(a, r, &err) != NGX_OK) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, a->log, 0,
                           "kimi rank %uD not connected: %s", r, err.msg);
            return NGX_DECLINED;
        }

        ngx_log_error(NGX_LOG_NOTICE, a->log, 0,
                      "kimi engine rank %uD attached", r);
    }

    return NGX_OK;
}


kimi_shm_header_t *
ngx_http_kimi_engine_header(ngx_http_kimi_attach_t *a)
{
    return (a && !a->dead) ? a->shm.hdr : NULL;
}


ngx_uint_t
ngx_http_kimi_engine_pending(void)
{
    return ngx_http_kimi_engine.pending;
}


void
ngx_http_kimi_engine_pending_add(ngx_http_kimi_ctx_t *ctx)
{
    if (!ctx->counted) {
        ctx->counted = 1;
        ngx_http_kimi_engine.pending++;
    }
}


void
ngx_http_kimi_engine_pending_done(ngx_http_kimi_ctx_t *ctx)
{
    if (ctx->counted) {
        ctx->counted = 0;
        ngx_http_kimi_engine.pending--;
    }
}


/*
 * kimi_rank_hash: the ready rank whose rendezvous score for the request's
 * key is highest (the same key goes to the same rank while the set of
 * ranks stays; a rank's loss moves only its own keys), or n_ranks when
 * the request has no key (empty value, or a prompt shorter than the
 * prefix).
 */
static uint32_t
ngx_http_kimi_rank_by_key(ngx_http_kimi_ctx_t *ctx,
    ngx_http_kimi_rank_hash_t *h, ngx_http_kimi_attach_t *a, uint64_t now)
{
    u_char      *p, *end;
    uint32_t     r, pick;
    uint64_t     key, x, top;
    ngx_str_t    v;

    if (h->key != NULL) {
        if (ngx_http_complex_value(ctx->request, h->key, &v) != NGX_OK
            || v.len == 0)
        {
            return a->n_ranks;
        }

        p = v.data;
        end = v.data + v.len;

    } else {
        if (ctx->n_prompt < h->prompt_prefix) {
            return a->n_ranks;
        }

        p = (u_char *) ctx->prompt;
        end = p + h->prompt_prefix * sizeof(int32_t);
    }

    /* FNV-1a over the key's bytes */
    key = 0xcbf29ce484222325ULL;
    for ( /* void */ ; p < end; p++) {
        key = (key ^ *p) * 0x100000001b3ULL;
    }

    pick = a->n_ranks;
    top = 0;

    for (r = 0; r < a->n_ranks; r++) {
        if (ngx_http_kimi_rank_ready(a, r, now) != NGX_OK) {
            continue;
        }

        /* splitmix64 of key and rank: every rank's score independent */
        x = key + (r + 1) * 0x9e3779b97f4a7c15ULL;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        x ^= x >> 31;

        if (pick == a->n_ranks || x > top) {
            pick = r;
            top = x;
        }
    }

    return pick;
}


static uint64_t
ngx_http_kimi_rank_load(ngx_http_kimi_attach_t *a, uint32_t r)
{
    kimi_shm_rank_t  *rk = kimi_shm_rank(&a->shm, r);

    /* the rank's published queue plus what this worker submitted since,
     * which the rank may not have counted yet */
    return (uint64_t) atomic_load(&rk->num_running)
           + atomic_load(&rk->num_waiting) + a->inflight[r];
}


/*
 * Slot, prompt, rank, ring, doorbell.  Returns NGX_OK, or an HTTP status
 * with *error set (no slot: 503; a pinned rank that is not up: 400).
 */
ngx_int_t
ngx_http_kimi_engine_submit(ngx_http_kimi_ctx_t *ctx, ngx_str_t *error)
{
    int32_t                    idx, eos;
    uint32_t                   r, best, gen, n_ranks, keyed;
    uint64_t                   now, load, best_load;
    kimi_shm_slot_t           *s;
    kimi_shm_ring_t           *ring;
    kimi_shm_sampling_t       *sp;
    ngx_http_kimi_attach_t    *a;
    const kimi_tokenizer_t    *tok;
    ngx_http_kimi_loc_conf_t  *lcf;

    a = ngx_http_kimi_engine.current;

    if (a == NULL || a->dead) {
        *error = ngx_http_kimi_engine.why;
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    n_ranks = a->n_ranks;
    now = kimi_shm_now_ns();

    if (ctx->pinned_rank >= 0) {
        best = (uint32_t) ctx->pinned_rank;

        if (best >= n_ranks
            || ngx_http_kimi_rank_ready(a, best, now) != NGX_OK)
        {
            ngx_str_set(error, "X-Kimi-Rank names a rank that is not "
                        "running");
            return NGX_HTTP_BAD_REQUEST;
        }

    } else {
        best = n_ranks;
        best_load = UINT64_MAX;

        for (r = 0; r < n_ranks; r++) {
            if (ngx_http_kimi_rank_ready(a, r, now) != NGX_OK) {
                continue;
            }

            load = ngx_http_kimi_rank_load(a, r);

            if (load < best_load) {
                best = r;
                best_load = load;
            }
        }

        if (best == n_ranks) {
            ngx_str_set(error, "No engine rank is ready");
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }

        /* the key's rank, unless it runs more than slack requests over
         * the least loaded one */
        lcf = ngx_http_get_module_loc_conf(ctx->request,
                                           ngx_http_kimi_module);

        if (n_ranks > 1 && lcf->rank_hash != NULL) {
            keyed = ngx_http_kimi_rank_by_key(ctx, lcf->rank_hash, a, now);

            if (keyed < n_ranks
                && ngx_http_kimi_rank_load(a, keyed)
                   <= best_load + lcf->rank_hash->slack)
            {
                best = keyed;
            }

            ngx_log_debug3(NGX_LOG_DEBUG_HTTP,
                           ctx->request->connection->log, 0,
                           "kimi rank by key: %uD, least loaded %uL, sent"
                           " to %uD", keyed, best_load, best);
        }
    }

    if (ctx->n_prompt + ctx->params.n_guided + ctx->params.n_bad
        > a->shm.slot_prompt_capacity)
    {
        error->data = ngx_pnalloc(ctx->request->pool, 160);
        if (error->data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        error->len = ngx_sprintf(error->data, "The prompt has %uz tokens "
                                 "(and %uz words of structured-output "
                                 "constraints or bad_words); the engine "
                                 "accepts at most %uD",
                                 ctx->n_prompt,
                                 ctx->params.n_guided + ctx->params.n_bad,
                                 a->shm.slot_prompt_capacity)
                     - error->data;
        return NGX_HTTP_BAD_REQUEST;
    }

    idx = kimi_shm_slot_acquire(&a->shm, a->worker, (int32_t) ngx_pid);
    if (idx < 0) {
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "kimi engine has no free slot");
        ngx_str_set(error, "The engine is at capacity; retry later");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    s = kimi_shm_slot(&a->shm, idx);

    /* OWNED: only this worker writes the request part now */
    s->rank = best;
    s->kind = KIMI_REQ_GENERATE;
    s->n_prompt_tokens = ctx->n_prompt;
    s->n_guided = (uint32_t) ctx->params.n_guided;
    s->n_bad_words = (uint32_t) ctx->params.n_bad;
    s->submit_ns = now;
    s->cache_salt = ctx->params.cache_salt;
    ngx_cpystrn((u_char *) s->request_id, ctx->id.data,
                ngx_min(ctx->id.len + 1, KIMI_SHM_REQUEST_ID_LEN));

    sp = &s->sampling;
    *sp = ctx->params.sampling;

    /* generation ends at the model's end-of-turn ids as in vLLM (the
     * tokenizer's [EOS] and generation_config's <|im_end|>) */
    if (!sp->ignore_eos && ctx->text) {
        tok = ngx_http_kimi_text_tokenizer(ctx->text);

        eos = kimi_tokenizer_eos(tok);
        if (eos >= 0 && sp->n_stop_ids < KIMI_SHM_MAX_STOP_IDS) {
            sp->stop_ids[sp->n_stop_ids++] = eos;
        }

        eos = kimi_tokenizer_special_id(tok, "<|im_end|>");
        if (eos >= 0 && sp->n_stop_ids < KIMI_SHM_MAX_STOP_IDS) {
            sp->stop_ids[sp->n_stop_ids++] = eos;
        }
    }

    /* the output leaves the text of the token that stops it out */
    ctx->params.sampling.n_stop_ids = sp->n_stop_ids;
    ngx_memcpy(ctx->params.sampling.stop_ids, sp->stop_ids,
               sp->n_stop_ids * sizeof(sp->stop_ids[0]));

    ngx_memcpy(kimi_shm_prompt(&a->shm, idx), ctx->prompt,
               ctx->n_prompt * sizeof(int32_t));
    if (ctx->params.n_guided) {
        ngx_memcpy(kimi_shm_prompt(&a->shm, idx) + ctx->n_prompt,
                   ctx->params.guided, ctx->params.n_guided * sizeof(int32_t));
    }
    if (ctx->params.n_bad) {
        ngx_memcpy(kimi_shm_prompt(&a->shm, idx) + ctx->n_prompt
                   + ctx->params.n_guided,
                   ctx->params.bad, ctx->params.n_bad * sizeof(int32_t));
    }

    gen = s->generation;

    if (!kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED)) {
        (void) kimi_shm_slot_release(&a->shm, idx);
        ngx_str_set(error, "The engine took the slot back");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ring = kimi_shm_ring(&a->shm, a->worker, best, KIMI_SHM_RING_SUBMIT);

    if (ring == NULL
        || kimi_shm_ring_push(&a->shm, ring,
                              KIMI_SHM_ENTRY(idx, gen & KIMI_SHM_GEN_MASK))
           != 0)
    {
        ngx_log_error(NGX_LOG_ALERT, ctx->request->connection->log, 0,
                      "kimi submission ring of rank %uD is full", best);
        (void) kimi_shm_slot_release(&a->shm, idx);
        ngx_str_set(error, "The engine's submission ring is full");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ctx->attach = a;
    ctx->slot = s;
    ctx->slot_index = idx;
    ctx->generation = gen;
    ctx->usage.rank = best;
    a->refs++;
    a->inflight[best]++;
    a->by_slot[idx] = ctx;
    ngx_queue_insert_tail(&a->requests, &ctx->queue);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                   "kimi submitted slot:%D rank:%uD prompt:%uz",
                   idx, best, ctx->n_prompt);

    ngx_http_kimi_ring(a, best);

    return NGX_OK;
}


/* Gives the slot back; rings the rank when it must cancel.  Idempotent. */
void
ngx_http_kimi_engine_release(ngx_http_kimi_ctx_t *ctx)
{
    int                      rc;
    uint32_t                 rank;
    ngx_http_kimi_attach_t  *a;

    ngx_http_kimi_engine_pending_done(ctx);

    a = ctx->attach;
    if (a == NULL) {
        return;
    }

    rank = (uint32_t) ctx->usage.rank;

    if (a->by_slot && a->by_slot[ctx->slot_index] == ctx) {
        a->by_slot[ctx->slot_index] = NULL;
    }

    ngx_queue_remove(&ctx->queue);

    if (rank < KIMI_SHM_MAX_RANKS && a->inflight[rank]) {
        a->inflight[rank]--;
    }

    rc = kimi_shm_slot_release(&a->shm, ctx->slot_index);

    if (rc == 1 && !a->dead) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                       "kimi cancel slot:%D", ctx->slot_index);
        ngx_http_kimi_ring(a, rank);
    }

    ctx->attach = NULL;
    ctx->slot = NULL;

    ngx_http_kimi_attach_unref(a);
}


static void
ngx_http_kimi_ring(ngx_http_kimi_attach_t *a, uint32_t rank)
{
    ssize_t           n;
    kimi_shm_rank_t  *rk;

    rk = kimi_shm_rank(&a->shm, rank);

    if (rk == NULL || a->conns[rank] == NULL
        || !kimi_shm_doorbell_arm(&rk->wake_pending))
    {
        return;
    }

    n = send(a->conns[rank]->fd, "k", 1, MSG_NOSIGNAL | MSG_DONTWAIT);

    if (n == -1 && ngx_socket_errno != NGX_EAGAIN) {
        /* the read side sees the EOF and fails the requests */
        ngx_log_error(NGX_LOG_ERR, a->log, ngx_socket_errno,
                      "kimi doorbell to rank %uD failed", rank);
    }
}


static void
ngx_http_kimi_doorbell_handler(ngx_event_t *rev)
{
    int                      rc;
    u_char                   buf[64];
    ssize_t                  n;
    uint32_t                 r, e, idx;
    ngx_uint_t               eof;
    kimi_shm_slot_t         *s;
    kimi_shm_ring_t         *ring;
    ngx_connection_t        *c, *rc_conn;
    kimi_shm_worker_t       *w;
    ngx_http_kimi_ctx_t     *ctx;
    ngx_http_kimi_attach_t  *a;

    c = rev->data;
    a = c->data;
    eof = 0;

    for ( ;; ) {
        n = recv(c->fd, buf, sizeof(buf), 0);

        if (n > 0) {
            continue;
        }

        if (n == 0) {
            /* an engine that exits after a drain published its last
             * events first: deliver them, then fail what is left */
            eof = 1;
            break;
        }

        if (ngx_socket_errno == NGX_EAGAIN) {
            break;
        }

        if (ngx_socket_errno == NGX_EINTR) {
            continue;
        }

        ngx_log_error(NGX_LOG_ERR, a->log, ngx_socket_errno,
                      "kimi doorbell recv() failed");
        ngx_http_kimi_engine_lost(a, "the engine socket failed");
        return;
    }

    w = kimi_shm_worker(&a->shm, a->worker);
    kimi_shm_doorbell_clear(&w->wake_pending);

    for (r = 0; r < a->n_ranks; r++) {
        ring = kimi_shm_ring(&a->shm, a->worker, r, KIMI_SHM_RING_EVENT);

        for ( ;; ) {
            rc = kimi_shm_ring_pop(&a->shm, ring, &e);

            if (rc == 0) {
                break;
            }

            if (rc < 0) {
                ngx_log_error(NGX_LOG_ERR, a->log, 0,
                              "kimi engine rank %uD event ring is corrupt",
                              r);
                ngx_http_kimi_engine_lost(a, "the engine corrupted its "
                                          "event ring");
                return;
            }

            idx = KIMI_SHM_ENTRY_SLOT(e);
            s = kimi_shm_slot(&a->shm, idx);

            if (s == NULL) {
                ngx_log_error(NGX_LOG_ERR, a->log, 0,
                              "kimi engine sent an event for slot %uD, "
                              "out of range", idx);
                continue;
            }

            ctx = a->by_slot[idx];

            if (ctx == NULL
                || (ctx->generation & KIMI_SHM_GEN_MASK)
                   != KIMI_SHM_ENTRY_GEN(e))
            {
                /* a request that already ended: nothing to do */
                continue;
            }

            atomic_store(&s->notify_pending, 0);

            rc_conn = ctx->request->connection;
            ngx_http_set_log_request(rc_conn->log, ctx->request);

            ngx_http_kimi_engine_process(ctx);

            ngx_http_run_posted_requests(rc_conn);

            if (a->dead) {
                return;
            }
        }
    }

    if (eof) {
        ngx_http_kimi_rank_lost(a, c, "the engine closed its socket");
    }
}


/*
 * One rank's socket closed.  With other ranks still connected only the
 * requests routed to that rank fail; the last rank gone is the engine gone.
 */
static void
ngx_http_kimi_rank_lost(ngx_http_kimi_attach_t *a, ngx_connection_t *c,
    const char *why)
{
    uint32_t                 r, lost, n_up;
    ngx_queue_t             *q, *next, failing;
    ngx_connection_t        *rc;
    ngx_http_kimi_ctx_t     *ctx;

    lost = KIMI_SHM_MAX_RANKS;
    n_up = 0;

    for (r = 0; r < a->n_ranks; r++) {
        if (a->conns[r] == c) {
            lost = r;

        } else if (a->conns[r]) {
            n_up++;
        }
    }

    if (lost == KIMI_SHM_MAX_RANKS || n_up == 0) {
        ngx_http_kimi_engine_lost(a, why);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, a->log, 0,
                  "kimi engine rank %uD lost: %s; %uD ranks still serve",
                  lost, why, n_up);

    ngx_close_connection(c);
    a->conns[lost] = NULL;

    a->refs++;                         /* hold it while requests end */

    /* move the lost rank's requests aside; releasing one unlinks it */
    ngx_queue_init(&failing);

    for (q = ngx_queue_head(&a->requests);
         q != ngx_queue_sentinel(&a->requests);
         q = next)
    {
        next = ngx_queue_next(q);
        ctx = ngx_queue_data(q, ngx_http_kimi_ctx_t, queue);

        if (ctx->usage.rank == (ngx_int_t) lost) {
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&failing, q);
        }
    }

    while (!ngx_queue_empty(&failing)) {
        q = ngx_queue_head(&failing);
        ctx = ngx_queue_data(q, ngx_http_kimi_ctx_t, queue);
        rc = ctx->request->connection;

        ngx_http_kimi_engine_error(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "The engine rank serving this request "
                                   "stopped",
                                   sizeof("The engine rank serving this "
                                          "request stopped") - 1);

        if (!ngx_queue_empty(&failing) && ngx_queue_head(&failing) == q) {
            /* cannot happen: a linked ctx is never finalized */
            ngx_log_error(NGX_LOG_ALERT, a->log, 0,
                          "kimi request not released on rank loss");
            ngx_queue_remove(q);
        }

        ngx_http_run_posted_requests(rc);
    }

    ngx_http_kimi_attach_unref(a);
}


/*
 * The engine said something about this request's slot, or the client
 * drained (resume): move the state machine and pull tokens.
 */
void
ngx_http_kimi_engine_process(ngx_http_kimi_ctx_t *ctx)
{
    int                      avail;
    u_char                  *msg;
    size_t                   len;
    uint32_t                 st, status, i, n, rank;
    ngx_int_t                rc;
    kimi_shm_slot_t         *s;
    const kimi_shm_token_t  *tok;
    ngx_http_kimi_attach_t  *a;

    if (ctx->main->finalized || ctx->slot == NULL) {
        return;
    }

    /* a background response may have been cancelled or deleted, in any
     * worker: its entry in the store says so */
    if (ctx->main->detached
        && ngx_http_kimi_responses_running(ctx->main) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, ctx->request->connection->log, 0,
                      "kimi background response cancelled, cancelling "
                      "slot %D", ctx->slot_index);
        ngx_str_set(&ctx->main->usage.finish_reason, "abort");
        ngx_http_kimi_finalize(ctx, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    s = ctx->slot;
    a = ctx->attach;
    rank = (uint32_t) ctx->usage.rank;

    st = atomic_load_explicit(&s->state, memory_order_acquire);

    if (ctx->phase == NGX_HTTP_KIMI_PHASE_SUBMITTED) {

        if (st == KIMI_SLOT_REJECTED) {
            status = s->reject_status;
            if (status < 400 || status > 599) {
                status = NGX_HTTP_SERVICE_UNAVAILABLE;
            }

            len = ngx_strnlen((u_char *) s->message, KIMI_SHM_MSG_LEN);
            msg = ngx_pnalloc(ctx->request->pool, len);
            if (msg == NULL) {
                ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return;
            }

            ngx_memcpy(msg, s->message, len);

            if (ctx->main->headers_sent) {
                /* another choice already streams */
                ngx_http_kimi_engine_error(ctx, status, (char *) msg, len);
                return;
            }

            ngx_http_kimi_finalize(ctx,
                ngx_http_kimi_send_error(ctx->request, status,
                                         status == NGX_HTTP_TOO_MANY_REQUESTS
                                         ? "rate_limit_error"
                                         : status < 500
                                           ? "invalid_request_error"
                                           : "service_unavailable",
                                         (char *) msg, len, NULL, NULL));
            return;
        }

        if (st != KIMI_SLOT_ACCEPTED && st != KIMI_SLOT_DONE) {
            return;
        }

        ctx->phase = NGX_HTTP_KIMI_PHASE_STREAMING;
        ngx_http_kimi_engine_pending_done(ctx);

        if (rank < KIMI_SHM_MAX_RANKS && a->inflight[rank]) {
            a->inflight[rank]--;
            ctx->usage.rank = rank;
        }

        rc = ngx_http_kimi_output_start(ctx);
        if (rc != NGX_OK) {
            ngx_http_kimi_finalize(ctx, rc);
            return;
        }
    }

    if (ctx->phase != NGX_HTTP_KIMI_PHASE_STREAMING) {
        return;
    }

    /* prompt_logprobs: the engine's first entries score the prompt */
    while (ctx->prompt_lp_left > 0) {
        avail = kimi_shm_tok_available(s);

        if (avail <= 0) {
            break;
        }

        n = ngx_min((uint32_t) avail, ctx->prompt_lp_left);

        for (i = 0; i < n; i++) {
            if (ngx_http_kimi_output_prompt_entry(ctx,
                                                  kimi_shm_tok_peek(s, i))
                != NGX_OK)
            {
                kimi_shm_tok_consume(s, i);
                ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return;
            }
        }

        kimi_shm_tok_consume(s, n);
        ngx_http_kimi_touch(ctx);

        if ((uint32_t) avail == KIMI_SHM_TOKEN_RING) {
            ngx_http_kimi_ring(a, rank);
        }
    }

    if (ctx->prompt_lp_left > 0 && st != KIMI_SLOT_DONE) {
        return;
    }

    if (ctx->echo_pending) {
        ctx->echo_pending = 0;

        rc = ngx_http_kimi_output_echo(ctx);
        if (rc != NGX_OK) {
            ngx_http_kimi_finalize(ctx, rc);
            return;
        }
    }

    avail = kimi_shm_tok_available(s);

    if (avail < 0) {
        ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                      "kimi engine token ring of slot %D is corrupt",
                      ctx->slot_index);
        ngx_http_kimi_engine_error(ctx, NGX_HTTP_BAD_GATEWAY,
                                   "The engine sent a corrupt token stream",
                                   38);
        return;
    }

    /* DONE is stored after the last token: these are all the tokens, so
     * a stream cut by max_tokens carries finish_reason on its last token's
     * chunk, as vLLM's does (a stream ended by eos gets the eos token's own
     * empty chunk, as there too) */
    if (st == KIMI_SLOT_DONE && ctx->params.stream
        && s->finish_reason == KIMI_FINISH_LENGTH)
    {
        ctx->sse_final = 1;
    }

    n = 0;

    for (i = 0; i < (uint32_t) avail; i++) {
        if (ctx->output_busy) {
            break;
        }

        tok = kimi_shm_tok_peek(s, i);

        /* the max_tokens-th token is the last whether or not DONE is
         * stored yet (the engine stores it just after; reading between
         * the two sent an extra empty finish chunk) */
        if (ctx->params.stream
            && ctx->usage.completion_tokens + n + 1
               == (ngx_uint_t) ctx->params.sampling.max_tokens)
        {
            ctx->sse_final = 1;
        }

        rc = ngx_http_kimi_output_token(ctx, tok);
        n++;

        if (rc != NGX_OK || ctx->failed) {
            kimi_shm_tok_consume(s, n);
            ngx_http_kimi_finalize(ctx, ctx->failed ? ctx->final_rc : rc);
            return;
        }

        if (ctx->stopped) {
            break;
        }
    }

    if (n) {
        kimi_shm_tok_consume(s, n);

        ctx->usage.completion_tokens += n;
        ngx_http_kimi_observe_tokens(ctx, n);
        ngx_http_kimi_touch(ctx);

        /* the engine pauses a sequence whose ring is full: tell it there
         * is room again */
        if ((uint32_t) avail == KIMI_SHM_TOKEN_RING) {
            ngx_http_kimi_ring(a, rank);
        }
    }

    if (ctx->stopped) {
        /* a stop string ended it here: cancel the rest in the engine */
        ctx->finish = KIMI_FINISH_STOP;
        ngx_http_kimi_engine_release(ctx);
        ngx_http_kimi_finalize(ctx, ngx_http_kimi_output_finish(ctx));
        return;
    }

    if (st != KIMI_SLOT_DONE || n != (uint32_t) avail) {
        return;
    }

    /* DONE was stored after the last token: all of them are consumed */
    ctx->finish = s->finish_reason;
    ctx->queue_ns = s->queue_ns;
    ctx->usage.cached_tokens = ngx_min(s->n_prompt_cached, ctx->n_prompt);

    switch (ctx->finish) {

    case KIMI_FINISH_STOP:
    case KIMI_FINISH_LENGTH:
        ngx_http_kimi_finalize(ctx, ngx_http_kimi_output_finish(ctx));
        return;

    case KIMI_FINISH_ABORT:
    case KIMI_FINISH_CANCELLED:
        ngx_http_kimi_engine_error(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "The engine aborted the request "
                                   "(shutting down)", 46);
        return;

    default:
        len = ngx_strnlen((u_char *) s->message, KIMI_SHM_MSG_LEN);
        msg = ngx_pnalloc(ctx->request->pool, len + 32);
        if (msg == NULL) {
            ngx_http_kimi_finalize(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        len = ngx_sprintf(msg, "The engine failed: %*s", len, s->message)
              - msg;

        ngx_http_kimi_engine_error(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   (char *) msg, len);
        return;
    }
}


/* the client's output drained: pull the tokens we left in the ring */
void
ngx_http_kimi_engine_resume(ngx_http_kimi_ctx_t *ctx)
{
    ngx_http_kimi_engine_process(ctx);
}


/* ends a request because of the engine: 5xx before headers, else SSE */
static void
ngx_http_kimi_engine_error(ngx_http_kimi_ctx_t *ctx, ngx_uint_t status,
    const char *msg, size_t len)
{
    ngx_str_set(&ctx->main->usage.finish_reason, "error");

    if (!ctx->main->headers_sent) {
        ngx_http_kimi_finalize(ctx,
            ngx_http_kimi_send_error(ctx->request, status,
                                     status == NGX_HTTP_SERVICE_UNAVAILABLE
                                     ? "service_unavailable" : "server_error",
                                     msg, len, NULL, NULL));
        return;
    }

    ngx_http_kimi_finalize(ctx,
        ngx_http_kimi_sse_error(ctx, msg, len, "server_error"));
}


/*
 * The engine died, restarted or the worker exits: close the doorbells,
 * end every open request (503 or an SSE error event), drop the
 * worker's reference.  why == NULL: worker exit, requests are not
 * finalized (the process is going away), slots are just released.
 */
static void
ngx_http_kimi_engine_lost(ngx_http_kimi_attach_t *a, const char *why)
{
    size_t                   len;
    uint32_t                 r;
    ngx_queue_t             *q;
    ngx_connection_t        *c;
    ngx_http_kimi_ctx_t     *ctx;

    if (a->dead) {
        return;
    }

    a->dead = 1;

    if (ngx_http_kimi_engine.current == a) {
        ngx_http_kimi_engine.current = NULL;
        ngx_http_kimi_engine.kmcf->shm.hdr = NULL;
        ngx_http_kimi_engine.tried = 0;

        /* look for its successor without waiting for a request */
        if (why && !ngx_http_kimi_engine.attach_timer.timer_set
            && ngx_http_kimi_engine.attach_timer.handler)
        {
            ngx_add_timer(&ngx_http_kimi_engine.attach_timer,
                          NGX_HTTP_KIMI_ATTACH_POLL);
        }
    }

    if (why) {
        ngx_log_error(NGX_LOG_WARN, a->log, 0,
                      "kimi engine lost: %s; failing %s open requests", why,
                      ngx_queue_empty(&a->requests) ? "no" : "all");

        ngx_http_kimi_engine.why.data = ngx_http_kimi_engine.why_buf;
        ngx_http_kimi_engine.why.len =
            ngx_snprintf(ngx_http_kimi_engine.why_buf,
                         sizeof(ngx_http_kimi_engine.why_buf),
                         "The engine is unavailable: %s", why)
            - ngx_http_kimi_engine.why_buf;
    }

    for (r = 0; r < KIMI_SHM_MAX_RANKS; r++) {
        if (a->conns[r]) {
            ngx_close_connection(a->conns[r]);
            a->conns[r] = NULL;
        }
    }

    a->refs++;                         /* hold it while requests end */

    len = ngx_strlen(why ? why : "nginx worker exiting");

    while (!ngx_queue_empty(&a->requests)) {
        q = ngx_queue_head(&a->requests);
        ctx = ngx_queue_data(q, ngx_http_kimi_ctx_t, queue);

        if (why == NULL) {
            ngx_http_kimi_engine_release(ctx);
            continue;
        }

        c = ctx->request->connection;

        /* finalize releases the slot first (the queue shrinks), then may
         * free the request: ctx is not touched afterwards */
        ngx_http_kimi_engine_error(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   ngx_http_kimi_engine.why.len
                                   ? (char *) ngx_http_kimi_engine.why.data
                                   : why,
                                   ngx_http_kimi_engine.why.len
                                   ? ngx_http_kimi_engine.why.len : len);

        if (!ngx_queue_empty(&a->requests)
            && ngx_queue_head(&a->requests) == q)
        {
            /* cannot happen: a linked ctx is never finalized */
            ngx_log_error(NGX_LOG_ALERT, a->log, 0,
                          "kimi request not released on engine loss");
            ngx_queue_remove(q);
        }

        ngx_http_run_posted_requests(c);
    }

    if (a->worker >= 0) {
        kimi_shm_worker_release(&a->shm, a->worker, (int32_t) ngx_pid);
    }

    a->refs--;
    ngx_http_kimi_attach_unref(a);     /* the worker's reference */
}


static void
ngx_http_kimi_attach_unref(ngx_http_kimi_attach_t *a)
{
    if (--a->refs) {
        return;
    }

    if (!a->dead) {
        /* cannot happen: the worker holds a live attachment */
        ngx_log_error(NGX_LOG_ALERT, a->log, 0,
                      "kimi attachment released while live");
        return;
    }

    kimi_shm_detach(&a->shm);
    ngx_free(a->by_slot);
    ngx_free(a);
}


/* rank loads and engine facts for /health */
void
ngx_http_kimi_engine_json(ngx_http_kimi_attach_t *a, json_t *out)
{
    json_t             *ranks, *o;
    uint32_t            r;
    uint64_t            now, hb;
    kimi_shm_rank_t    *rk;
    kimi_shm_header_t  *hdr;

    if (a == NULL || a->dead) {
        return;
    }

    hdr = a->shm.hdr;
    now = kimi_shm_now_ns();

    json_object_set_new(out, "engine_pid", json_integer(hdr->engine_pid));
    json_object_set_new(out, "max_model_len",
                        json_integer(hdr->max_model_len));
    json_object_set_new(out, "worker_record", json_integer(a->worker));
    json_object_set_new(out, "open_requests",
                        json_integer(a->refs - 1));

    ranks = json_array();
    if (ranks == NULL) {
        return;
    }

    for (r = 0; r < a->n_ranks; r++) {
        rk = kimi_shm_rank(&a->shm, r);
        hb = atomic_load(&rk->heartbeat_ns);

        o = json_pack("{s:i,s:i,s:i,s:i,s:I}",
                      "rank", (int) r,
                      "state", (int) atomic_load(&rk->state),
                      "num_running", (int) atomic_load(&rk->num_running),
                      "num_waiting", (int) atomic_load(&rk->num_waiting),
                      "heartbeat_age_ms",
                      (json_int_t) (hb && now > hb ? (now - hb) / 1000000
                                                   : 0));
        if (o) {
            json_array_append_new(ranks, o);
        }
    }

    json_object_set_new(out, "ranks", ranks);
}
