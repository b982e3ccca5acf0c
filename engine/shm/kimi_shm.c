/*
 * The shared-memory contract between nginx workers and kimi-engine ranks
 * (layout and rules in kimi_shm.h).
 *
 * Owns:   building the segment (DIR/segment.tmp, then rename), validating
 *         it on attach, the SPSC rings, the slot state machine transitions
 *         a worker makes, the per-slot token ring and doorbell coalescing.
 * Never:  trusts a value the peer can write: every index is checked against
 *         the geometry copied into kimi_shm_t when it was validated; never
 *         blocks, sleeps or allocates after create/attach.
 * Holds:  ring head/tail only grow (u32 wrapping); the producer writes the
 *         entry, then release-stores head; the consumer acquire-loads head,
 *         reads the entry, then release-stores tail, so the producer never
 *         overwrites an entry still being read.
 */

/* also built by nginx's module build, whose flags may not ask for these */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kimi_shm.h"


#define KIMI_SHM_ALIGN       4096
#define KIMI_SHM_MAX_SLOTS   (1u << 20)    /* ring entries carry 20 bits */
#define KIMI_SHM_MAX_PROMPT  (1u << 24)    /* tokens per slot, sanity cap */

typedef struct {
    uint32_t  ring_capacity;
    uint64_t  off_ranks;
    uint64_t  off_workers;
    uint64_t  off_rings;
    uint64_t  ring_stride;
    uint64_t  off_slots;
    uint64_t  off_prompts;
    uint64_t  size;
} kimi_shm_layout_t;


static uint64_t
kimi_shm_align(uint64_t n, uint64_t a)
{
    return (n + a - 1) & ~(a - 1);
}


static uint32_t
kimi_shm_pow2(uint32_t n)
{
    uint32_t  p = 1;

    while (p < n) {
        p <<= 1;
    }

    return p;
}


/*
 * The one place the layout is computed: create uses it to place regions,
 * attach recomputes it from the geometry and demands the stored offsets
 * match exactly, so a peer cannot point a region anywhere else.
 */
static int
kimi_shm_layout(uint32_t n_ranks, uint32_t n_slots, uint32_t prompt_cap,
    kimi_shm_layout_t *l, kimi_err_t *err)
{
    uint64_t  off;

    if (n_ranks == 0 || n_ranks > KIMI_SHM_MAX_RANKS) {
        return kimi_err_set(err, KIMI_EINVAL, "n_ranks %u not in 1..%u",
                            n_ranks, KIMI_SHM_MAX_RANKS);
    }

    if (n_slots == 0 || n_slots > KIMI_SHM_MAX_SLOTS) {
        return kimi_err_set(err, KIMI_EINVAL, "n_slots %u not in 1..%u",
                            n_slots, KIMI_SHM_MAX_SLOTS);
    }

    if (prompt_cap == 0 || prompt_cap > KIMI_SHM_MAX_PROMPT) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "slot_prompt_capacity %u not in 1..%u",
                            prompt_cap, KIMI_SHM_MAX_PROMPT);
    }

    /* twice n_slots: a slot can sit on a ring once for its live
     * generation plus once as a stale entry of an earlier one */
    l->ring_capacity = kimi_shm_pow2(n_slots * 2);
    l->ring_stride = kimi_shm_align(sizeof(kimi_shm_ring_t)
                         + (uint64_t) l->ring_capacity * sizeof(uint32_t),
                         KIMI_SHM_CACHE_LINE);

    off = kimi_shm_align(sizeof(kimi_shm_header_t), KIMI_SHM_ALIGN);
    l->off_ranks = off;
    off = kimi_shm_align(off + (uint64_t) n_ranks * sizeof(kimi_shm_rank_t),
                         KIMI_SHM_ALIGN);
    l->off_workers = off;
    off = kimi_shm_align(off + (uint64_t) KIMI_SHM_MAX_WORKERS
                             * sizeof(kimi_shm_worker_t), KIMI_SHM_ALIGN);
    l->off_rings = off;
    off = kimi_shm_align(off + (uint64_t) KIMI_SHM_MAX_WORKERS * n_ranks * 2
                             * l->ring_stride, KIMI_SHM_ALIGN);
    l->off_slots = off;
    off = kimi_shm_align(off + (uint64_t) n_slots * sizeof(kimi_shm_slot_t),
                         KIMI_SHM_ALIGN);
    l->off_prompts = off;
    off = kimi_shm_align(off + (uint64_t) n_slots * prompt_cap
                             * sizeof(int32_t), KIMI_SHM_ALIGN);
    l->size = off;

    return 0;
}


static void
kimi_shm_adopt_layout(kimi_shm_t *shm, uint32_t n_ranks, uint32_t n_slots,
    uint32_t prompt_cap, const kimi_shm_layout_t *l)
{
    shm->n_ranks = n_ranks;
    shm->n_slots = n_slots;
    shm->slot_prompt_capacity = prompt_cap;
    shm->ring_capacity = l->ring_capacity;
    shm->off_ranks = l->off_ranks;
    shm->off_workers = l->off_workers;
    shm->off_rings = l->off_rings;
    shm->ring_stride = l->ring_stride;
    shm->off_slots = l->off_slots;
    shm->off_prompts = l->off_prompts;
}


int
kimi_shm_segment_path(char *buf, size_t len, const char *dir)
{
    int  n = snprintf(buf, len, "%s/segment", dir);

    return (n < 0 || (size_t) n >= len) ? -1 : 0;
}


int
kimi_shm_socket_path(char *buf, size_t len, const char *dir, uint32_t rank)
{
    int  n = snprintf(buf, len, "%s/rank%u.sock", dir, rank);

    return (n < 0 || (size_t) n >= len) ? -1 : 0;
}


static int
kimi_shm_mkdir(const char *dir, uint32_t mode, kimi_err_t *err)
{
    struct stat  st;
    mode_t       dmode = (mode & 0070) ? 0770 : 0700;

    if (mkdir(dir, dmode) == 0) {
        /* umask may have narrowed it; group access must be what we said */
        if (chmod(dir, dmode) != 0) {
            return kimi_err_set(err, KIMI_EIO, "chmod(\"%s\") failed: %s",
                                dir, strerror(errno));
        }
        return 0;
    }

    if (errno != EEXIST) {
        return kimi_err_set(err, KIMI_EIO, "mkdir(\"%s\") failed: %s", dir,
                            strerror(errno));
    }

    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        return kimi_err_set(err, KIMI_EIO, "ipc dir \"%s\" is not a directory",
                            dir);
    }

    return 0;
}


static int
kimi_shm_lock(kimi_shm_t *shm, const char *dir, uint32_t mode,
    kimi_err_t *err)
{
    int   fd, n;
    char  path[PATH_MAX], pid[32];

    n = snprintf(path, sizeof(path), "%s/engine.lock", dir);
    if (n < 0 || (size_t) n >= sizeof(path)) {
        return kimi_err_set(err, KIMI_EINVAL, "ipc dir \"%s\" is too long",
                            dir);
    }

    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode);
    if (fd == -1) {
        return kimi_err_set(err, KIMI_EIO, "open(\"%s\") failed: %s", path,
                            strerror(errno));
    }

    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        n = (int) read(fd, pid, sizeof(pid) - 1);
        pid[n > 0 ? n : 0] = '\0';
        close(fd);
        return kimi_err_set(err, KIMI_ESTATE, "another kimi-engine (pid %s)"
                            " serves \"%s\": stop it or use another"
                            " --ipc-dir", n > 0 ? pid : "?", dir);
    }

    /* the holder's pid, for the message above; advisory only */
    n = snprintf(pid, sizeof(pid), "%d", (int) getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t) n, 0) != n) {
        /* the lock is what matters; a missing pid only blurs the message */
    }

    shm->lock_fd = fd;
    shm->has_lock = 1;

    return 0;
}


int
kimi_shm_create(kimi_shm_t *shm, const char *dir,
    const kimi_shm_params_t *params, kimi_err_t *err)
{
    int                 fd, rc;
    char                path[PATH_MAX], tmp[PATH_MAX];
    void               *p;
    uint32_t            mode, i;
    uint64_t            epoch;
    struct stat         st;
    struct timespec     ts;
    kimi_shm_layout_t   l;
    kimi_shm_header_t  *h;

    memset(shm, 0, sizeof(*shm));

    mode = params->mode ? params->mode : 0600;
    if (mode != 0600 && mode != 0660) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "ipc mode %04o: only 0600 and 0660 are allowed",
                            mode);
    }

    rc = kimi_shm_layout(params->n_ranks, params->n_slots,
                         params->slot_prompt_capacity, &l, err);
    if (rc != 0) {
        return rc;
    }

    if (kimi_shm_segment_path(path, sizeof(path), dir) != 0
        || snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int) sizeof(tmp))
    {
        return kimi_err_set(err, KIMI_EINVAL, "ipc dir \"%s\" is too long",
                            dir);
    }

    rc = kimi_shm_mkdir(dir, mode, err);
    if (rc != 0) {
        return rc;
    }

    rc = kimi_shm_lock(shm, dir, mode, err);
    if (rc != 0) {
        return rc;
    }

    if (getrandom(&epoch, sizeof(epoch), 0) != (ssize_t) sizeof(epoch)) {
        clock_gettime(CLOCK_REALTIME, &ts);
        epoch = (uint64_t) ts.tv_sec * 1000000007ull ^ (uint64_t) ts.tv_nsec
                ^ ((uint64_t) getpid() << 32);
    }
    if (epoch == 0) {
        epoch = 1;
    }

    (void) unlink(tmp);

    fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd == -1) {
        rc = kimi_err_set(err, KIMI_EIO, "open(\"%s\") failed: %s", tmp,
                          strerror(errno));
        kimi_shm_detach(shm);
        return rc;
    }

    if (fchmod(fd, mode) != 0 || ftruncate(fd, (off_t) l.size) != 0
        || fstat(fd, &st) != 0)
    {
        rc = kimi_err_set(err, KIMI_EIO, "sizing \"%s\" to %llu bytes failed:"
                          " %s", tmp, (unsigned long long) l.size,
                          strerror(errno));
        goto failed;
    }

    p = mmap(NULL, l.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = kimi_err_set(err, KIMI_EIO, "mmap(%llu) of \"%s\" failed: %s",
                          (unsigned long long) l.size, tmp, strerror(errno));
        goto failed;
    }

    close(fd);
    fd = -1;

    /* ftruncate() gave zeroes: every ring is empty, every slot FREE with
     * generation 0, every worker and rank record unclaimed */
    h = p;
    h->abi_version = KIMI_SHM_ABI_VERSION;
    h->header_size = sizeof(kimi_shm_header_t);
    h->segment_size = l.size;
    h->epoch = epoch;
    atomic_store_explicit(&h->state, KIMI_SHM_STATE_STARTING,
                          memory_order_relaxed);
    h->engine_pid = getpid();
    clock_gettime(CLOCK_REALTIME, &ts);
    h->created_ns = (uint64_t) ts.tv_sec * 1000000000ull
                    + (uint64_t) ts.tv_nsec;
    h->n_ranks = params->n_ranks;
    h->n_slots = params->n_slots;
    h->slot_prompt_capacity = params->slot_prompt_capacity;
    h->ring_capacity = l.ring_capacity;
    h->off_ranks = l.off_ranks;
    h->off_workers = l.off_workers;
    h->off_rings = l.off_rings;
    h->ring_stride = l.ring_stride;
    h->off_slots = l.off_slots;
    h->off_prompts = l.off_prompts;
    if (params->served_model_name != NULL) {
        snprintf(h->served_model_name, sizeof(h->served_model_name), "%s",
                 params->served_model_name);
    }
    if (params->model_dir != NULL) {
        snprintf(h->model_dir, sizeof(h->model_dir), "%s", params->model_dir);
    }
    h->max_model_len = params->max_model_len;
    h->vocab_size = params->vocab_size;
    h->max_num_seqs = params->max_num_seqs;
    h->max_waiting = params->max_waiting;
    h->model_created = (uint64_t) ts.tv_sec;

    shm->hdr = h;
    shm->size = l.size;
    shm->epoch = epoch;
    shm->inode = st.st_ino;
    shm->dev = st.st_dev;
    kimi_shm_adopt_layout(shm, params->n_ranks, params->n_slots,
                          params->slot_prompt_capacity, &l);

    for (i = 0; i < params->n_ranks; i++) {
        atomic_store_explicit(&kimi_shm_rank(shm, i)->state,
                              KIMI_SHM_STATE_STARTING, memory_order_relaxed);
    }

    /* the magic last: a reader that sees it sees everything before it */
    atomic_thread_fence(memory_order_release);
    h->magic = KIMI_SHM_MAGIC;

    if (rename(tmp, path) != 0) {
        rc = kimi_err_set(err, KIMI_EIO, "rename(\"%s\", \"%s\") failed: %s",
                          tmp, path, strerror(errno));
        (void) unlink(tmp);
        kimi_shm_detach(shm);
        return rc;
    }

    return 0;

failed:

    close(fd);
    (void) unlink(tmp);
    kimi_shm_detach(shm);
    return rc;
}


int
kimi_shm_attach(kimi_shm_t *shm, const char *dir, kimi_err_t *err)
{
    int                 fd, rc;
    char                path[PATH_MAX];
    void               *p;
    struct stat         st;
    kimi_err_t          lerr;
    kimi_shm_layout_t   l;
    kimi_shm_header_t   h;

    memset(shm, 0, sizeof(*shm));

    if (kimi_shm_segment_path(path, sizeof(path), dir) != 0) {
        return kimi_err_set(err, KIMI_EINVAL, "ipc dir \"%s\" is too long",
                            dir);
    }

    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        return kimi_err_set(err, KIMI_EIO, "open(\"%s\") failed: %s", path,
                            strerror(errno));
    }

    if (fstat(fd, &st) != 0) {
        rc = kimi_err_set(err, KIMI_EIO, "fstat(\"%s\") failed: %s", path,
                          strerror(errno));
        close(fd);
        return rc;
    }

    if ((uint64_t) st.st_size < sizeof(kimi_shm_header_t)) {
        close(fd);
        return kimi_err_set(err, KIMI_ESTATE, "\"%s\" is %lld bytes, smaller"
                            " than the %zu-byte header: not a kimi segment",
                            path, (long long) st.st_size,
                            sizeof(kimi_shm_header_t));
    }

    p = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED,
             fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        return kimi_err_set(err, KIMI_EIO, "mmap(%lld) of \"%s\" failed: %s",
                            (long long) st.st_size, path, strerror(errno));
    }

    /* validate a private copy: the peer cannot change what we checked */
    memcpy(&h, p, sizeof(h));
    atomic_thread_fence(memory_order_acquire);

    if (h.magic != KIMI_SHM_MAGIC) {
        rc = kimi_err_set(err, KIMI_ESTATE, "\"%s\" has magic 0x%016llx,"
                          " expected 0x%016llx: not a kimi segment", path,
                          (unsigned long long) h.magic,
                          (unsigned long long) KIMI_SHM_MAGIC);
        goto failed;
    }

    if (h.abi_version != KIMI_SHM_ABI_VERSION
        || h.header_size != sizeof(kimi_shm_header_t))
    {
        rc = kimi_err_set(err, KIMI_ESTATE, "\"%s\" has ABI %u (header %u"
                          " bytes), this build speaks ABI %u (header %zu"
                          " bytes): rebuild nginx module and engine from the"
                          " same tree", path, h.abi_version, h.header_size,
                          KIMI_SHM_ABI_VERSION, sizeof(kimi_shm_header_t));
        goto failed;
    }

    if (h.segment_size != (uint64_t) st.st_size) {
        rc = kimi_err_set(err, KIMI_ESTATE, "\"%s\" is %lld bytes, header"
                          " says %llu: truncated or corrupt", path,
                          (long long) st.st_size,
                          (unsigned long long) h.segment_size);
        goto failed;
    }

    if (kimi_shm_layout(h.n_ranks, h.n_slots, h.slot_prompt_capacity, &l,
                        &lerr) != 0)
    {
        rc = kimi_err_set(err, KIMI_ESTATE, "\"%s\": bad geometry: %s", path,
                          lerr.msg);
        goto failed;
    }

    if (h.ring_capacity != l.ring_capacity || h.ring_stride != l.ring_stride
        || h.off_ranks != l.off_ranks || h.off_workers != l.off_workers
        || h.off_rings != l.off_rings || h.off_slots != l.off_slots
        || h.off_prompts != l.off_prompts || l.size != h.segment_size)
    {
        rc = kimi_err_set(err, KIMI_ESTATE, "\"%s\": region offsets or sizes"
                          " differ from what n_ranks=%u n_slots=%u"
                          " prompt_capacity=%u imply (layout %llu bytes,"
                          " file %llu)", path, h.n_ranks, h.n_slots,
                          h.slot_prompt_capacity,
                          (unsigned long long) l.size,
                          (unsigned long long) h.segment_size);
        goto failed;
    }

    shm->hdr = p;
    shm->size = (size_t) st.st_size;
    shm->epoch = h.epoch;
    shm->inode = st.st_ino;
    shm->dev = st.st_dev;
    kimi_shm_adopt_layout(shm, h.n_ranks, h.n_slots, h.slot_prompt_capacity,
                          &l);

    return 0;

failed:

    munmap(p, (size_t) st.st_size);
    return rc;
}


int
kimi_shm_replaced(const kimi_shm_t *shm, const char *dir)
{
    char         path[PATH_MAX];
    struct stat  st;

    if (kimi_shm_segment_path(path, sizeof(path), dir) != 0
        || stat(path, &st) != 0)
    {
        /* nothing there to switch to: keep what we have */
        return 0;
    }

    return (uint64_t) st.st_ino != shm->inode
           || (uint64_t) st.st_dev != shm->dev;
}


void
kimi_shm_detach(kimi_shm_t *shm)
{
    if (shm->hdr != NULL) {
        munmap(shm->hdr, shm->size);
    }

    if (shm->has_lock) {
        close(shm->lock_fd);        /* drops the flock */
    }

    memset(shm, 0, sizeof(*shm));
}


/* ---- accessors ----------------------------------------------------------- */

kimi_shm_rank_t *
kimi_shm_rank(const kimi_shm_t *shm, uint32_t rank)
{
    if (shm->hdr == NULL || rank >= shm->n_ranks) {
        return NULL;
    }

    return (kimi_shm_rank_t *) ((char *) shm->hdr + shm->off_ranks) + rank;
}


kimi_shm_worker_t *
kimi_shm_worker(const kimi_shm_t *shm, uint32_t worker)
{
    if (shm->hdr == NULL || worker >= KIMI_SHM_MAX_WORKERS) {
        return NULL;
    }

    return (kimi_shm_worker_t *) ((char *) shm->hdr + shm->off_workers)
           + worker;
}


kimi_shm_slot_t *
kimi_shm_slot(const kimi_shm_t *shm, uint32_t slot)
{
    if (shm->hdr == NULL || slot >= shm->n_slots) {
        return NULL;
    }

    return (kimi_shm_slot_t *) ((char *) shm->hdr + shm->off_slots) + slot;
}


int32_t *
kimi_shm_prompt(const kimi_shm_t *shm, uint32_t slot)
{
    if (shm->hdr == NULL || slot >= shm->n_slots) {
        return NULL;
    }

    return (int32_t *) ((char *) shm->hdr + shm->off_prompts)
           + (uint64_t) slot * shm->slot_prompt_capacity;
}


kimi_shm_ring_t *
kimi_shm_ring(const kimi_shm_t *shm, uint32_t worker, uint32_t rank, int dir)
{
    uint64_t  i;

    if (shm->hdr == NULL || worker >= KIMI_SHM_MAX_WORKERS
        || rank >= shm->n_ranks
        || (dir != KIMI_SHM_RING_SUBMIT && dir != KIMI_SHM_RING_EVENT))
    {
        return NULL;
    }

    i = ((uint64_t) worker * shm->n_ranks + rank) * 2 + (uint64_t) dir;

    return (kimi_shm_ring_t *) ((char *) shm->hdr + shm->off_rings
                                + i * shm->ring_stride);
}


/* ---- rings --------------------------------------------------------------- */

static uint32_t *
kimi_shm_ring_entries(kimi_shm_ring_t *ring)
{
    return (uint32_t *) (ring + 1);
}


int
kimi_shm_ring_push(const kimi_shm_t *shm, kimi_shm_ring_t *ring,
    uint32_t entry)
{
    uint32_t  head, tail;

    /* head is ours: relaxed; tail is the consumer's: acquire, so its reads
     * of the entries it released are done before we overwrite them */
    head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    tail = atomic_load_explicit(&ring->tail, memory_order_acquire);

    if (head - tail >= shm->ring_capacity) {
        return KIMI_EFULL;
    }

    kimi_shm_ring_entries(ring)[head & (shm->ring_capacity - 1)] = entry;
    atomic_store_explicit(&ring->head, head + 1, memory_order_release);

    return 0;
}


int
kimi_shm_ring_pop(const kimi_shm_t *shm, kimi_shm_ring_t *ring,
    uint32_t *entry)
{
    uint32_t  head, tail;

    tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    head = atomic_load_explicit(&ring->head, memory_order_acquire);

    if (head == tail) {
        return 0;
    }

    if (head - tail > shm->ring_capacity) {
        return KIMI_ESTATE;
    }

    *entry = kimi_shm_ring_entries(ring)[tail & (shm->ring_capacity - 1)];
    atomic_store_explicit(&ring->tail, tail + 1, memory_order_release);

    return 1;
}


/* ---- slots --------------------------------------------------------------- */

int
kimi_shm_slot_cas(kimi_shm_slot_t *s, uint32_t from, uint32_t to)
{
    /* acq_rel: the mover publishes what it wrote in its state and sees
     * what the previous mover published */
    return atomic_compare_exchange_strong_explicit(&s->state, &from, to,
               memory_order_acq_rel, memory_order_acquire);
}


int32_t
kimi_shm_slot_acquire(const kimi_shm_t *shm, uint32_t worker, int32_t pid)
{
    uint32_t          n, start, i, idx;
    kimi_shm_slot_t  *s;

    n = shm->n_slots;
    if (shm->hdr == NULL || n == 0 || worker >= KIMI_SHM_MAX_WORKERS) {
        return -1;
    }

    /* a shared rotating start spreads workers over the slots, so their
     * CAS attempts rarely collide and slots wear evenly */
    start = atomic_fetch_add_explicit(&shm->hdr->slot_cursor, 1,
                                      memory_order_relaxed) % n;

    for (i = 0; i < n; i++) {
        idx = start + i;
        if (idx >= n) {
            idx -= n;
        }

        s = kimi_shm_slot(shm, idx);

        if (atomic_load_explicit(&s->state, memory_order_relaxed)
            != KIMI_SLOT_FREE
            || !kimi_shm_slot_cas(s, KIMI_SLOT_FREE, KIMI_SLOT_OWNED))
        {
            continue;
        }

        /* OWNED: only we write the slot until we submit it */
        s->generation++;
        atomic_store_explicit(&s->notify_pending, 0, memory_order_relaxed);
        s->owner_pid = pid;
        s->owner_worker = worker;
        s->rank = 0;
        s->kind = KIMI_REQ_GENERATE;
        s->n_prompt_tokens = 0;
        s->submit_ns = 0;
        s->request_id[0] = '\0';
        s->reject_status = 0;
        s->finish_reason = KIMI_FINISH_NONE;
        s->n_prompt_cached = 0;
        s->n_output_tokens = 0;
        s->queue_ns = 0;
        s->first_token_ns = 0;
        s->message[0] = '\0';
        atomic_store_explicit(&s->tok_head, 0, memory_order_relaxed);
        atomic_store_explicit(&s->tok_tail, 0, memory_order_relaxed);

        return (int32_t) idx;
    }

    return -1;
}


int
kimi_shm_slot_release(const kimi_shm_t *shm, uint32_t slot)
{
    uint32_t          st;
    kimi_shm_slot_t  *s;

    s = kimi_shm_slot(shm, slot);
    if (s == NULL) {
        return KIMI_EINVAL;
    }

    for ( ;; ) {
        st = atomic_load_explicit(&s->state, memory_order_acquire);

        switch (st) {

        case KIMI_SLOT_OWNED:
        case KIMI_SLOT_DONE:
        case KIMI_SLOT_REJECTED:
            if (kimi_shm_slot_cas(s, st, KIMI_SLOT_FREE)) {
                return 0;
            }
            break;      /* the engine moved it meanwhile: look again */

        case KIMI_SLOT_SUBMITTED:
        case KIMI_SLOT_ACCEPTED:
            if (kimi_shm_slot_cas(s, st, KIMI_SLOT_ABANDONED)) {
                return 1;
            }
            break;

        case KIMI_SLOT_ABANDONED:
            return 1;   /* released twice: the engine still holds it */

        case KIMI_SLOT_FREE:
            return 0;

        default:
            return KIMI_ESTATE;
        }
    }
}


static int
kimi_shm_pid_dead(int32_t pid)
{
    return pid > 0 && kill(pid, 0) == -1 && errno == ESRCH;
}


int32_t
kimi_shm_worker_claim(const kimi_shm_t *shm, int32_t pid)
{
    int32_t             cur;
    uint32_t            i, r;
    kimi_shm_rank_t    *rk;
    kimi_shm_ring_t    *ring;
    kimi_shm_worker_t  *w;
    int                 engine_up = 0;

    if (shm->hdr == NULL || pid <= 0) {
        return -1;
    }

    for (r = 0; r < shm->n_ranks; r++) {
        rk = kimi_shm_rank(shm, r);
        cur = atomic_load_explicit(&rk->pid, memory_order_acquire);
        if (cur > 0 && !kimi_shm_pid_dead(cur)) {
            engine_up = 1;
        }
    }

    for (i = 0; i < KIMI_SHM_MAX_WORKERS; i++) {
        w = kimi_shm_worker(shm, i);
        cur = 0;

        if (atomic_compare_exchange_strong_explicit(&w->pid, &cur, pid,
                memory_order_acq_rel, memory_order_acquire))
        {
            goto claimed;
        }

        /* a live engine frees a dead worker's record itself (socket EOF)
         * and must not race with us over its rings */
        if (!engine_up && kimi_shm_pid_dead(cur)
            && atomic_compare_exchange_strong_explicit(&w->pid, &cur, pid,
                   memory_order_acq_rel, memory_order_acquire))
        {
            for (r = 0; r < shm->n_ranks; r++) {
                ring = kimi_shm_ring(shm, i, r, KIMI_SHM_RING_SUBMIT);
                atomic_store_explicit(&ring->tail,
                    atomic_load_explicit(&ring->head, memory_order_relaxed),
                    memory_order_relaxed);
                ring = kimi_shm_ring(shm, i, r, KIMI_SHM_RING_EVENT);
                atomic_store_explicit(&ring->tail,
                    atomic_load_explicit(&ring->head, memory_order_relaxed),
                    memory_order_relaxed);
            }
            goto claimed;
        }
    }

    return -1;

claimed:

    w->incarnation++;
    atomic_store_explicit(&w->wake_pending, 0, memory_order_release);

    return (int32_t) i;
}


void
kimi_shm_worker_release(const kimi_shm_t *shm, uint32_t worker, int32_t pid)
{
    int32_t             cur = pid;
    kimi_shm_worker_t  *w;

    w = kimi_shm_worker(shm, worker);
    if (w == NULL) {
        return;
    }

    (void) atomic_compare_exchange_strong_explicit(&w->pid, &cur, 0,
               memory_order_acq_rel, memory_order_relaxed);
}


/* ---- token ring ---------------------------------------------------------- */

uint32_t
kimi_shm_tok_space(const kimi_shm_slot_t *s)
{
    uint32_t  head, tail, used;

    head = atomic_load_explicit(&((kimi_shm_slot_t *) s)->tok_head,
                                memory_order_relaxed);
    tail = atomic_load_explicit(&((kimi_shm_slot_t *) s)->tok_tail,
                                memory_order_acquire);
    used = head - tail;

    /* a tail ahead of head or too far behind is a corrupt peer: report
     * no room, the sequence pauses instead of overwriting */
    if (used > KIMI_SHM_TOKEN_RING) {
        return 0;
    }

    return KIMI_SHM_TOKEN_RING - used;
}


void
kimi_shm_tok_push(kimi_shm_slot_t *s, const kimi_shm_token_t *tok)
{
    uint32_t  head;

    head = atomic_load_explicit(&s->tok_head, memory_order_relaxed);
    s->tokens[head & (KIMI_SHM_TOKEN_RING - 1)] = *tok;
    atomic_store_explicit(&s->tok_head, head + 1, memory_order_release);
}


int
kimi_shm_tok_available(const kimi_shm_slot_t *s)
{
    uint32_t  head, tail;

    head = atomic_load_explicit(&((kimi_shm_slot_t *) s)->tok_head,
                                memory_order_acquire);
    tail = atomic_load_explicit(&((kimi_shm_slot_t *) s)->tok_tail,
                                memory_order_relaxed);

    if (head - tail > KIMI_SHM_TOKEN_RING) {
        return KIMI_ESTATE;
    }

    return (int) (head - tail);
}


const kimi_shm_token_t *
kimi_shm_tok_peek(const kimi_shm_slot_t *s, uint32_t i)
{
    uint32_t  tail;

    if (i >= KIMI_SHM_TOKEN_RING) {
        return NULL;
    }

    tail = atomic_load_explicit(&((kimi_shm_slot_t *) s)->tok_tail,
                                memory_order_relaxed);

    return &s->tokens[(tail + i) & (KIMI_SHM_TOKEN_RING - 1)];
}


void
kimi_shm_tok_consume(kimi_shm_slot_t *s, uint32_t n)
{
    uint32_t  tail;

    if (n > KIMI_SHM_TOKEN_RING) {
        n = KIMI_SHM_TOKEN_RING;
    }

    tail = atomic_load_explicit(&s->tok_tail, memory_order_relaxed);
    atomic_store_explicit(&s->tok_tail, tail + n, memory_order_release);
}


/* ---- doorbells ----------------------------------------------------------- */

int
kimi_shm_doorbell_arm(_Atomic uint32_t *wake_pending)
{
    /* seq_cst pairs with the consumer's clear + fence: either the consumer
     * sees our ring push after its clear, or we see its 0 and ring */
    return atomic_exchange_explicit(wake_pending, 1, memory_order_seq_cst)
           == 0;
}


void
kimi_shm_doorbell_clear(_Atomic uint32_t *wake_pending)
{
    atomic_store_explicit(wake_pending, 0, memory_order_seq_cst);
    /* the drain's loads of ring heads must not move above the clear */
    atomic_thread_fence(memory_order_seq_cst);
}


/* ---- time ---------------------------------------------------------------- */

uint64_t
kimi_shm_now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}
