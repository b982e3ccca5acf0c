/*
 * NCCL communicator and collectives (contract in nccl_comm.h).
 *
 * Owns:   the ncclComm_t, the version check, NCCL's init environment.
 * Never:  synchronizes or allocates device memory; compiled to stubs that
 *         return KIMI_EUNSUPPORTED without KIMI_HAVE_CUDA.
 */

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nccl_comm.h"
#include "../common/kimi_log.h"

#ifdef KIMI_HAVE_CUDA

#include <cuda_runtime_api.h>
#include <nccl.h>

struct kimi_nccl {
    ncclComm_t         comm;         /* NULL once aborted */
    uint32_t           rank;
    uint32_t           world;
    int                version;
    kimi_nccl_stop_fn  stop;
    void              *stop_arg;
};

#define KIMI_NCCL_TRY(call, err)                                              \
    do {                                                                      \
        ncclResult_t  r_ = (call);                                            \
        if (r_ != ncclSuccess) {                                              \
            return kimi_err_set(err, KIMI_ECUDA, "%s:%d: %s: %s", __FILE__,   \
                                __LINE__, #call, ncclGetErrorString(r_));     \
        }                                                                     \
    } while (0)


int
kimi_nccl_version(int *version, kimi_err_t *err)
{
    KIMI_NCCL_TRY(ncclGetVersion(version), err);

    /* the library loaded at run time, not the header we built against */
    if (*version < KIMI_NCCL_MIN_VERSION) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "NCCL %d.%d.%d is too"
                            " old: at least 2.14 is needed",
                            *version / 10000, *version / 100 % 100,
                            *version % 100);
    }

    return 0;
}


int
kimi_nccl_unique_id(uint8_t *buf, size_t cap, uint32_t *len, kimi_err_t *err)
{
    int           rc, version;
    ncclUniqueId  id;

    rc = kimi_nccl_version(&version, err);
    if (rc != 0) {
        return rc;
    }

    if (cap < sizeof(id)) {
        return kimi_err_set(err, KIMI_EINVAL, "ncclUniqueId needs %zu bytes",
                            sizeof(id));
    }

    KIMI_NCCL_TRY(ncclGetUniqueId(&id), err);
    memcpy(buf, &id, sizeof(id));
    *len = (uint32_t) sizeof(id);

    return 0;
}


/*
 * A nonblocking communicator's calls may answer ncclInProgress while NCCL
 * finishes them on its own threads (connection setup, the first
 * collectives): wait for the verdict, asking c->stop between looks, so a
 * peer that died never leaves this rank waiting forever.
 */
static int
kimi_nccl_settle(kimi_nccl_t *c, ncclResult_t r, const char *what,
    kimi_err_t *err)
{
    struct timespec  nap = { 0, 100 * 1000 };

    while (r == ncclInProgress) {
        if (c->stop != NULL && c->stop(c->stop_arg)) {
            (void) ncclCommAbort(c->comm);
            c->comm = NULL;
            return kimi_err_set(err, KIMI_EIO, "nccl: %s abandoned: the"
                                " group failed", what);
        }

        (void) nanosleep(&nap, NULL);

        if (ncclCommGetAsyncError(c->comm, &r) != ncclSuccess) {
            r = ncclInternalError;
        }
    }

    if (r != ncclSuccess) {
        return kimi_err_set(err, KIMI_ECUDA, "nccl: %s: %s", what,
                            ncclGetErrorString(r));
    }

    return 0;
}


int
kimi_nccl_init(kimi_nccl_t **out, const uint8_t *blob, uint32_t blob_len,
    uint32_t rank, uint32_t world, kimi_nccl_stop_fn stop, void *stop_arg,
    kimi_err_t *err)
{
    int                rc, version;
    const char        *nvls;
    kimi_nccl_t       *c;
    ncclUniqueId       id;
    ncclConfig_t       config = NCCL_CONFIG_INITIALIZER;
    ncclResult_t       r;

    *out = NULL;

    if (blob_len != sizeof(id)) {
        return kimi_err_set(err, KIMI_EINVAL, "bootstrap blob is %u bytes,"
                            " an ncclUniqueId %zu (was the head built"
                            " without CUDA?)", blob_len, sizeof(id));
    }

    if (world == 0 || rank >= world) {
        return kimi_err_set(err, KIMI_EINVAL, "rank %u of world %u", rank,
                            world);
    }

    rc = kimi_nccl_version(&version, err);
    if (rc != 0) {
        return rc;
    }

    /* NVLink SHARP multicast (NVLS) stays off: a project rule for the
     * machines we run on (reference/gpu-anchors.md, NCCL config row).
     * Overwrite: an inherited NCCL_NVLS_ENABLE=1 must not win.  setenv()
     * is not thread-safe: a process with one communicator per thread sets
     * it before its threads start, and then we only read it here */
    nvls = getenv("NCCL_NVLS_ENABLE");
    if ((nvls == NULL || strcmp(nvls, "0") != 0)
        && setenv("NCCL_NVLS_ENABLE", "0", 1) != 0)
    {
        return kimi_err_set(err, KIMI_EIO, "setenv(NCCL_NVLS_ENABLE) failed");
    }

    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "nccl: out of memory");
    }

    memcpy(&id, blob, sizeof(id));
    c->rank = rank;
    c->world = world;
    c->version = version;
    c->stop = stop;
    c->stop_arg = stop_arg;

    /* nonblocking only where someone can tell us to give up */
    config.blocking = stop != NULL ? 0 : 1;

    r = ncclCommInitRankConfig(&c->comm, (int) world, id, (int) rank,
                               &config);
    if (r == ncclInProgress || r == ncclSuccess) {
        rc = kimi_nccl_settle(c, r, "ncclCommInitRankConfig", err);

    } else {
        rc = kimi_err_set(err, KIMI_ECUDA, "ncclCommInitRankConfig(rank %u"
                          " of %u) failed: %s", rank, world,
                          ncclGetErrorString(r));
        c->comm = NULL;
    }

    if (rc != 0) {
        kimi_nccl_abort(c);
        free(c);
        return rc;
    }

    *out = c;
    return 0;
}


/* One communicator's abort on its own thread: ncclCommAbort stops the
 * kernels at once (its abort flag) but may then wait, forever, for a peer
 * that died to take part in freeing what they share (NVIDIA/nccl#863): a
 * process whose group failed must not wait with it.  The waiter and the
 * thread both hold the record; the last to let go frees it. */
typedef struct {
    ncclComm_t   comm;
    _Atomic int  done;
    _Atomic int  refs;
} kimi_nccl_aborter_t;


static void
kimi_nccl_aborter_put(kimi_nccl_aborter_t *a)
{
    if (atomic_fetch_sub(&a->refs, 1) == 1) {
        free(a);
    }
}


static void *
kimi_nccl_abort_run(void *arg)
{
    kimi_nccl_aborter_t  *a = arg;

    (void) ncclCommAbort(a->comm);
    atomic_store(&a->done, 1);
    kimi_nccl_aborter_put(a);
    return NULL;
}


void
kimi_nccl_abort_all(kimi_nccl_t *const *cs, uint32_t n, uint32_t ms)
{
    kimi_nccl_aborter_t  *a[KIMI_NCCL_ABORT_MAX];
    pthread_attr_t        attr;
    pthread_t             t;
    struct timespec       nap = { 0, 1000000 };
    uint32_t              m = 0, left = 0;

    (void) pthread_attr_init(&attr);
    (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);

    for (uint32_t i = 0; i < n; i++) {
        kimi_nccl_t  *c = cs[i];

        if (c == NULL || c->comm == NULL) {
            continue;
        }

        kimi_nccl_aborter_t  *r = m < KIMI_NCCL_ABORT_MAX
                                  ? calloc(1, sizeof(*r)) : NULL;

        if (r == NULL) {
            (void) ncclCommAbort(c->comm);      /* no thread: wait here */
            c->comm = NULL;
            continue;
        }

        r->comm = c->comm;
        atomic_store(&r->refs, 2);
        c->comm = NULL;

        if (pthread_create(&t, &attr, kimi_nccl_abort_run, r) != 0) {
            (void) ncclCommAbort(r->comm);
            free(r);
            continue;
        }

        a[m++] = r;
    }

    (void) pthread_attr_destroy(&attr);

    for (uint32_t waited = 0; ; waited++) {
        left = 0;
        for (uint32_t i = 0; i < m; i++) {
            left += !atomic_load(&a[i]->done);
        }

        if (left == 0 || waited >= ms) {
            break;
        }

        (void) nanosleep(&nap, NULL);
    }

    if (left != 0 && ms != 0) {
        kimi_log(KIMI_LOG_WARN, "nccl: %u of %u communicator aborts had not"
                 " returned after %u ms (a peer is gone); going on without"
                 " them", left, m, ms);
    }

    for (uint32_t i = 0; i < m; i++) {
        kimi_nccl_aborter_put(a[i]);
    }
}


void
kimi_nccl_abort(kimi_nccl_t *c)
{
    kimi_nccl_abort_all(&c, 1, KIMI_NCCL_ABORT_MS);
}


int
kimi_nccl_check(kimi_nccl_t *c, kimi_err_t *err)
{
    ncclResult_t  r;

    if (c->comm == NULL) {
        return kimi_err_set(err, KIMI_ESTATE, "nccl: the communicator was"
                            " aborted");
    }

    if (ncclCommGetAsyncError(c->comm, &r) != ncclSuccess) {
        r = ncclInternalError;
    }

    if (r != ncclSuccess && r != ncclInProgress) {
        return kimi_err_set(err, KIMI_ECUDA, "nccl: %s",
                            ncclGetErrorString(r));
    }

    return 0;
}


void
kimi_nccl_free(kimi_nccl_t *c)
{
    if (c == NULL) {
        return;
    }

    if (c->comm != NULL) {
        (void) ncclCommDestroy(c->comm);
    }
    free(c);
}


#define KIMI_NCCL_CALL(c, call, err)                                          \
    do {                                                                      \
        if ((c)->comm == NULL) {                                              \
            return kimi_err_set(err, KIMI_ESTATE, "nccl: %s after an abort", \
                                #call);                                       \
        }                                                                     \
        ncclResult_t  r_ = (call);                                            \
        if (r_ != ncclSuccess) {                                              \
            int  rc_ = kimi_nccl_settle(c, r_, #call, err);                   \
            if (rc_ != 0) return rc_;                                         \
        }                                                                     \
    } while (0)


int
kimi_nccl_all_reduce_bf16(kimi_nccl_t *c, void *buf, size_t n, void *stream,
    kimi_err_t *err)
{
    KIMI_NCCL_CALL(c, ncclAllReduce(buf, buf, n, ncclBfloat16, ncclSum,
                                    c->comm, (cudaStream_t) stream), err);
    return 0;
}


int
kimi_nccl_all_reduce_f32(kimi_nccl_t *c, float *buf, size_t n, void *stream,
    kimi_err_t *err)
{
    KIMI_NCCL_CALL(c, ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum,
                                    c->comm, (cudaStream_t) stream), err);
    return 0;
}


int
kimi_nccl_group_start(kimi_err_t *err)
{
    KIMI_NCCL_TRY(ncclGroupStart(), err);
    return 0;
}


int
kimi_nccl_group_end(kimi_nccl_t *c, kimi_err_t *err)
{
    KIMI_NCCL_CALL(c, ncclGroupEnd(), err);
    return 0;
}


int
kimi_nccl_all_gather(kimi_nccl_t *c, const void *send, void *recv,
    size_t bytes, void *stream, kimi_err_t *err)
{
    KIMI_NCCL_CALL(c, ncclAllGather(send, recv, bytes, ncclUint8, c->comm,
                                    (cudaStream_t) stream), err);
    return 0;
}

int
kimi_nccl_send(kimi_nccl_t *c, const void *buf, size_t bytes, uint32_t peer,
    void *stream, kimi_err_t *err)
{
    KIMI_NCCL_CALL(c, ncclSend(buf, bytes, ncclUint8, (int) peer, c->comm,
                               (cudaStream_t) stream), err);
    return 0;
}


int
kimi_nccl_recv(kimi_nccl_t *c, void *buf, size_t bytes, uint32_t peer,
    void *stream, kimi_err_t *err)
{
    KIMI_NCCL_CALL(c, ncclRecv(buf, bytes, ncclUint8, (int) peer, c->comm,
                               (cudaStream_t) stream), err);
    return 0;
}

int
kimi_nccl_all_to_all(kimi_nccl_t *c, const void *send, void *recv,
    size_t bytes_per_peer, void *stream, kimi_err_t *err)
{
    uint32_t       p;
    cudaStream_t   s = (cudaStream_t) stream;

#if NCCL_VERSION_CODE >= KIMI_NCCL_ALLTOALL_VERSION
    if (c->version >= KIMI_NCCL_ALLTOALL_VERSION) {
        KIMI_NCCL_CALL(c, ncclAlltoAll(send, recv, bytes_per_peer, ncclUint8,
                                       c->comm, s), err);
        return 0;
    }
#endif

    /* inside a caller's group these only queue: errors come at its end */
    KIMI_NCCL_TRY(ncclGroupStart(), err);
    for (p = 0; p < c->world; p++) {
        ncclResult_t  r1, r2;

        r1 = ncclSend((const uint8_t *) send + p * bytes_per_peer,
                      bytes_per_peer, ncclUint8, (int) p, c->comm, s);
        r2 = ncclRecv((uint8_t *) recv + p * bytes_per_peer, bytes_per_peer,
                      ncclUint8, (int) p, c->comm, s);
        if ((r1 != ncclSuccess && r1 != ncclInProgress)
            || (r2 != ncclSuccess && r2 != ncclInProgress))
        {
            (void) ncclGroupEnd();
            return kimi_err_set(err, KIMI_ECUDA, "nccl: send/recv to %u: %s",
                                p, ncclGetErrorString(r1 != ncclSuccess
                                                      ? r1 : r2));
        }
    }
    KIMI_NCCL_CALL(c, ncclGroupEnd(), err);

    return 0;
}

#else  /* !KIMI_HAVE_CUDA */

struct kimi_nccl {
    uint32_t    rank;
    uint32_t    world;
};

static int
kimi_nccl_none(kimi_err_t *err)
{
    return kimi_err_set(err, KIMI_EUNSUPPORTED, "this kimi-engine was built"
                        " without CUDA and NCCL");
}


int
kimi_nccl_version(int *version, kimi_err_t *err)
{
    *version = 0;
    return kimi_nccl_none(err);
}


int
kimi_nccl_unique_id(uint8_t *buf, size_t cap, uint32_t *len, kimi_err_t *err)
{
    *len = 0;
    return kimi_nccl_none(err);
}


int
kimi_nccl_init(kimi_nccl_t **out, const uint8_t *blob, uint32_t blob_len,
    uint32_t rank, uint32_t world, kimi_nccl_stop_fn stop, void *stop_arg,
    kimi_err_t *err)
{
    *out = NULL;
    return kimi_nccl_none(err);
}


void
kimi_nccl_abort_all(kimi_nccl_t *const *cs, uint32_t n, uint32_t ms)
{
}


void
kimi_nccl_abort(kimi_nccl_t *c)
{
}


int
kimi_nccl_check(kimi_nccl_t *c, kimi_err_t *err)
{
    return kimi_nccl_none(err);
}


void
kimi_nccl_free(kimi_nccl_t *c)
{
    free(c);
}


int
kimi_nccl_all_reduce_f32(kimi_nccl_t *c, float *buf, size_t n, void *stream,
    kimi_err_t *err)
{
    return kimi_nccl_none(err);
}


int
kimi_nccl_all_reduce_bf16(kimi_nccl_t *c, void *buf, size_t n, void *stream,
    kimi_err_t *err)
{
    return kimi_nccl_none(err);
}


int
kimi_nccl_group_start(kimi_err_t *err)
{
    return kimi_nccl_none(err);
}


int
kimi_nccl_group_end(kimi_nccl_t *c, kimi_err_t *err)
{
    return kimi_nccl_none(err);
}


int
kimi_nccl_all_gather(kimi_nccl_t *c, const void *send, void *recv,
    size_t bytes, void *stream, kimi_err_t *err)
{
    return kimi_nccl_none(err);
}

int
kimi_nccl_send(kimi_nccl_t *c, const void *buf, size_t bytes, uint32_t peer,
    void *stream, kimi_err_t *err)
{
    return kimi_nccl_none(err);
}


int
kimi_nccl_recv(kimi_nccl_t *c, void *buf, size_t bytes, uint32_t peer,
    void *stream, kimi_err_t *err)
{
    return kimi_nccl_none(err);
}

int
kimi_nccl_all_to_all(kimi_nccl_t *c, const void *send, void *recv,
    size_t bytes_per_peer, void *stream, kimi_err_t *err)
{
    return kimi_nccl_none(err);
}

#endif


uint32_t
kimi_nccl_rank(const kimi_nccl_t *c)
{
    return c->rank;
}


uint32_t
kimi_nccl_world(const kimi_nccl_t *c)
{
    return c->world;
}
