/*
 * Paged KV block allocator and block tables (see kv.h).
 *
 * Owns:   the free stack, refcounts, table growth, and the prefix cache:
 *         a map from content hash to the block holding it, and the LRU
 *         list of cached blocks nobody holds (evicted when the free stack
 *         is empty).
 * Never:  touches cache memory; scheduler thread only.
 */

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"


#define KIMI_KV_NONE  UINT32_MAX

struct kimi_kv {
    uint32_t   n_total;
    uint32_t   block_size;
    uint32_t   n_free;         /* entries on free_stack */
    uint32_t  *free_stack;     /* [n_total]; top is free_stack[n_free - 1] */
    uint16_t  *refcount;       /* [n_total]; 0 = free or cached */

    /* prefix cache (NULL arrays when off) */
    uint64_t  *hash;           /* [n_total]; 0 = holds no registered prefix */
    uint32_t  *lru_prev;       /* [n_total]; cached blocks with refcount 0, */
    uint32_t  *lru_next;       /*   oldest at lru_head */
    uint32_t   lru_head;
    uint32_t   lru_tail;
    uint32_t   n_lru;
    uint32_t  *map;            /* [map_cap] block ids, KIMI_KV_NONE = empty */
    uint32_t   map_cap;        /* power of two >= 2 n_total */
    kimi_kv_prefix_stats_t  stats;
};


int
kimi_kv_init(kimi_kv_t **out, uint32_t n_blocks, uint32_t block_size,
    kimi_err_t *err)
{
    kimi_kv_t  *kv;

    if (n_blocks == 0 || block_size == 0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "kv cache: %u blocks of %u tokens is empty",
                            n_blocks, block_size);
    }

    kv = calloc(1, sizeof(*kv));
    if (kv == NULL) {
        goto failed;
    }

    kv->free_stack = malloc((size_t) n_blocks * sizeof(uint32_t));
    kv->refcount = calloc(n_blocks, sizeof(uint16_t));
    if (kv->free_stack == NULL || kv->refcount == NULL) {
        goto failed;
    }

    kv->n_total = n_blocks;
    kv->block_size = block_size;
    kv->n_free = n_blocks;

    /* low ids on top, so a fresh cache hands out 0, 1, 2, ... */
    for (uint32_t i = 0; i < n_blocks; i++) {
        kv->free_stack[i] = n_blocks - 1 - i;
    }

    *out = kv;
    return KIMI_OK;

failed:

    kimi_kv_free(kv);
    return kimi_err_set(err, KIMI_ENOMEM, "kv cache: out of memory for %u "
                        "block ids", n_blocks);
}


void
kimi_kv_free(kimi_kv_t *kv)
{
    if (kv == NULL) {
        return;
    }

    free(kv->free_stack);
    free(kv->refcount);
    free(kv->hash);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv->map);
    free(kv);
}


/* ---- prefix cache ---------------------------------------------------------- */

int
kimi_kv_prefix_enable(kimi_kv_t *kv, kimi_err_t *err)
{
    uint32_t  cap = 16;

    while (cap < 2 * (uint64_t) kv->n_total) {
        cap *= 2;
    }

    kv->hash = calloc(kv->n_total, sizeof(uint64_t));
    kv->lru_prev = malloc((size_t) kv->n_total * sizeof(uint32_t));
    kv->lru_next = malloc((size_t) kv->n_total * sizeof(uint32_t));
    kv->map = malloc((size_t) cap * sizeof(uint32_t));

    if (kv->hash == NULL || kv->lru_prev == NULL || kv->lru_next == NULL
        || kv->map == NULL)
    {
        free(kv->hash);
        free(kv->lru_prev);
        free(kv->lru_next);
        free(kv->map);
        kv->hash = NULL;
        kv->lru_prev = kv->lru_next = kv->map = NULL;
        return kimi_err_set(err, KIMI_ENOMEM, "kv cache: out of memory for"
                            " the prefix cache of %u blocks", kv->n_total);
    }

    memset(kv->map, 0xff, (size_t) cap * sizeof(uint32_t));
    kv->map_cap = cap;
    kv->lru_head = kv->lru_tail = KIMI_KV_NONE;
    kv->n_lru = 0;
    return KIMI_OK;
}


int
kimi_kv_prefix_on(const kimi_kv_t *kv)
{
    return kv->map != NULL;
}


uint64_t
kimi_kv_prefix_hash(uint64_t parent, const int32_t *tokens, uint32_t n)
{
    /* 64-bit multiply-xorshift over (parent, tokens): a collision needs
     * two different prefixes to meet in 64 bits */
    uint64_t  h = parent ^ 0x9e3779b97f4a7c15ull;

    for (uint32_t i = 0; i < n; i++) {
        h ^= (uint64_t) (uint32_t) tokens[i] + 0x632be59bd9b4e019ull
             + (h << 6) + (h >> 2);
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
    }

    return h ? h : 1;                      /* 0 means "no hash" */
}


static uint32_t
kimi_kv_map_slot(const kimi_kv_t *kv, uint64_t h)
{
    return (uint32_t) (h ^ (h >> 29)) & (kv->map_cap - 1);
}


static uint32_t
kimi_kv_map_find(const kimi_kv_t *kv, uint64_t h)
{
    uint32_t  i = kimi_kv_map_slot(kv, h), b;

    while ((b = kv->map[i]) != KIMI_KV_NONE) {
        if (kv->hash[b] == h) {
            return b;
        }
        i = (i + 1) & (kv->map_cap - 1);
    }

    return KIMI_KV_NONE;
}


/* Linear probing with backward-shift deletion: no tombstones. */
static void
kimi_kv_map_remove(kimi_kv_t *kv, uint32_t block)
{
    uint32_t  i = kimi_kv_map_slot(kv, kv->hash[block]), j, k, b;
    uint32_t  mask = kv->map_cap - 1;

    while (kv->map[i] != block) {
        i = (i + 1) & mask;
    }

    kv->map[i] = KIMI_KV_NONE;
    j = i;

    for ( ;; ) {
        j = (j + 1) & mask;
        b = kv->map[j];
        if (b == KIMI_KV_NONE) {
            break;
        }

        k = kimi_kv_map_slot(kv, kv->hash[b]);

        /* b may move to the hole at i unless its home k lies in (i, j] */
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            kv->map[i] = b;
            kv->map[j] = KIMI_KV_NONE;
            i = j;
        }
    }

    kv->hash[block] = 0;
}


static void
kimi_kv_lru_unlink(kimi_kv_t *kv, uint32_t b)
{
    uint32_t  p = kv->lru_prev[b], n = kv->lru_next[b];

    if (p != KIMI_KV_NONE) {
        kv->lru_next[p] = n;
    } else {
        kv->lru_head = n;
    }

    if (n != KIMI_KV_NONE) {
        kv->lru_prev[n] = p;
    } else {
        kv->lru_tail = p;
    }

    kv->n_lru--;
}


static void
kimi_kv_lru_push(kimi_kv_t *kv, uint32_t b)
{
    kv->lru_prev[b] = kv->lru_tail;
    kv->lru_next[b] = KIMI_KV_NONE;

    if (kv->lru_tail != KIMI_KV_NONE) {
        kv->lru_next[kv->lru_tail] = b;
    } else {
        kv->lru_head = b;
    }

    kv->lru_tail = b;
    kv->n_lru++;
}


int
kimi_kv_prefix_acquire(kimi_kv_t *kv, uint64_t h, uint32_t *id)
{
    uint32_t  b;

    if (kv->map == NULL) {
        return 0;
    }

    kv->stats.queries++;
    b = kimi_kv_map_find(kv, h);
    if (b == KIMI_KV_NONE) {
        return 0;
    }

    if (kv->refcount[b] == 0) {
        kimi_kv_lru_unlink(kv, b);
    }

    assert(kv->refcount[b] < UINT16_MAX);
    kv->refcount[b]++;
    kv->stats.hits++;
    *id = b;
    return 1;
}


void
kimi_kv_prefix_register(kimi_kv_t *kv, uint32_t id, uint64_t h)
{
    uint32_t  i;

    if (kv->map == NULL || kv->hash[id] != 0
        || kimi_kv_map_find(kv, h) != KIMI_KV_NONE)
    {
        return;                 /* already cached here, or in another block */
    }

    kv->hash[id] = h;
    i = kimi_kv_map_slot(kv, h);
    while (kv->map[i] != KIMI_KV_NONE) {
        i = (i + 1) & (kv->map_cap - 1);
    }
    kv->map[i] = id;
}


void
kimi_kv_prefix_stats(const kimi_kv_t *kv, kimi_kv_prefix_stats_t *out)
{
    *out = kv->stats;
    out->cached_blocks = kv->n_lru;
}


int
kimi_kv_block_alloc(kimi_kv_t *kv, uint32_t *id)
{
    uint32_t  b;

    if (kv->n_free > 0) {
        b = kv->free_stack[--kv->n_free];

    } else if (kv->n_lru > 0) {
        /* the least recently used cached prefix makes room */
        b = kv->lru_head;
        kimi_kv_lru_unlink(kv, b);
        kimi_kv_map_remove(kv, b);
        kv->stats.evictions++;

    } else {
        return KIMI_EFULL;
    }

    assert(kv->refcount[b] == 0);
    kv->refcount[b] = 1;
    *id = b;

    return KIMI_OK;
}


void
kimi_kv_block_ref(kimi_kv_t *kv, uint32_t id)
{
    assert(id < kv->n_total && kv->refcount[id] > 0
           && kv->refcount[id] < UINT16_MAX);
    kv->refcount[id]++;
}


void
kimi_kv_block_unref(kimi_kv_t *kv, uint32_t id)
{
    assert(id < kv->n_total && kv->refcount[id] > 0);

    if (--kv->refcount[id] == 0) {
        if (kv->hash != NULL && kv->hash[id] != 0) {
            kimi_kv_lru_push(kv, id);          /* stays cached until needed */
        } else {
            kv->free_stack[kv->n_free++] = id;
        }
    }
}


uint32_t
kimi_kv_n_free(const kimi_kv_t *kv)
{
    return kv->n_free + kv->n_lru;
}


uint32_t
kimi_kv_n_total(const kimi_kv_t *kv)
{
    return kv->n_total;
}


uint32_t
kimi_kv_block_size(const kimi_kv_t *kv)
{
    return kv->block_size;
}


uint32_t
kimi_kv_blocks_for(const kimi_kv_t *kv, uint32_t n_tokens)
{
    return (uint32_t) (((uint64_t) n_tokens + kv->block_size - 1)
                       / kv->block_size);
}


int
kimi_kv_table_reserve(kimi_kv_t *kv, kimi_kv_table_t *t, uint32_t n_tokens,
    kimi_err_t *err)
{
    uint32_t   need, *ids, cap;

    need = kimi_kv_blocks_for(kv, n_tokens);
    if (need <= t->n) {
        return KIMI_OK;
    }

    if (need - t->n > kimi_kv_n_free(kv)) {
        return KIMI_EFULL;      /* the caller preempts; not an error text */
    }

    if (need > t->cap) {
        cap = t->cap ? t->cap : 4;
        while (cap < need) {
            cap *= 2;
        }

        ids = realloc(t->ids, (size_t) cap * sizeof(uint32_t));
        if (ids == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM,
                                "kv cache: out of memory for a block table "
                                "of %u entries", cap);
        }

        t->ids = ids;
        t->cap = cap;
    }

    while (t->n < need) {
        (void) kimi_kv_block_alloc(kv, &t->ids[t->n]);
        t->n++;
    }

    return KIMI_OK;
}


int
kimi_kv_table_push(kimi_kv_table_t *t, uint32_t id, kimi_err_t *err)
{
    uint32_t  *ids, cap;

    if (t->n == t->cap) {
        cap = t->cap ? t->cap * 2 : 4;
        ids = realloc(t->ids, (size_t) cap * sizeof(uint32_t));
        if (ids == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "kv cache: out of memory for"
                                " a block table of %u entries", cap);
        }
        t->ids = ids;
        t->cap = cap;
    }

    t->ids[t->n++] = id;
    return KIMI_OK;
}


void
kimi_kv_table_release(kimi_kv_t *kv, kimi_kv_table_t *t)
{
    /* newest first, so the next sequence reuses the same ids in order */
    while (t->n > 0) {
        kimi_kv_block_unref(kv, t->ids[--t->n]);
    }
}


void
kimi_kv_table_free(kimi_kv_table_t *t)
{
    free(t->ids);
    t->ids = NULL;
    t->n = 0;
    t->cap = 0;
}


uint64_t
kimi_kv_block_bytes(uint32_t block_size, uint32_t n_layers, uint32_t width,
    kimi_kv_dtype_e dtype)
{
    uint64_t  per_token;

    if (dtype == KIMI_KV_DTYPE_FP8) {
        per_token = (uint64_t) width + sizeof(float);
    } else if (dtype == KIMI_KV_DTYPE_F32) {
        per_token = (uint64_t) width * sizeof(float);
    } else {
        per_token = (uint64_t) width * 2;
    }

    return per_token * n_layers * block_size;
}


int
kimi_kv_blocks_in_budget(const kimi_kv_params_t *p, uint64_t budget,
    uint32_t n_layers, uint32_t width, uint32_t *n_blocks, kimi_err_t *err)
{
    uint64_t  block_bytes, n;

    block_bytes = kimi_kv_block_bytes(p->block_size, n_layers, width,
                                      p->dtype);
    if (p->block_size == 0 || block_bytes == 0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "kv cache: block size %u, %u layers, width %u "
                            "gives empty blocks", p->block_size, n_layers,
                            width);
    }

    n = budget / block_bytes;
    if (n > UINT32_MAX) {
        n = UINT32_MAX;
    }

    if (p->max_blocks != 0 && n > p->max_blocks) {
        n = p->max_blocks;
    }

    if (n == 0) {
        return kimi_err_set(err, KIMI_EINVAL,
                            "kv cache: budget of %llu bytes holds no block "
                            "(one %s block of %u tokens x %u layers is %llu "
                            "bytes)", (unsigned long long) budget,
                            kimi_kv_dtype_name(p->dtype), p->block_size,
                            n_layers, (unsigned long long) block_bytes);
    }

    *n_blocks = (uint32_t) n;
    return KIMI_OK;
}


const char *
kimi_kv_dtype_name(kimi_kv_dtype_e dtype)
{
    return dtype == KIMI_KV_DTYPE_FP8 ? "fp8_e4m3"
           : dtype == KIMI_KV_DTYPE_F32 ? "f32" : "bf16";
}


int
kimi_kv_dtype_parse(const char *name, kimi_kv_dtype_e *out, kimi_err_t *err)
{
    if (strcmp(name, "auto") == 0 || strcmp(name, "bf16") == 0) {
        *out = KIMI_KV_DTYPE_AUTO;
        return KIMI_OK;
    }

    if (strcmp(name, "fp8") == 0 || strcmp(name, "fp8_e4m3") == 0) {
        *out = KIMI_KV_DTYPE_FP8;
        return KIMI_OK;
    }

    if (strcmp(name, "f32") == 0 || strcmp(name, "float32") == 0) {
        *out = KIMI_KV_DTYPE_F32;              /* cpu backend only */
        return KIMI_OK;
    }

    return kimi_err_set(err, KIMI_EINVAL, "invalid kv cache dtype \"%s\" "
                        "(expected auto, bf16, fp8, fp8_e4m3 or f32)", name);
}
