/*
 * Paged KV block allocator and block tables (see kv.h).
 *
 * Owns:   the free stack, refcounts and table growth.
 * Never:  touches cache memory; scheduler thread only.
 */

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"


struct kimi_kv {
    uint32_t   n_total;
    uint32_t   block_size;
    uint32_t   n_free;         /* entries on free_stack */
    uint32_t  *free_stack;     /* [n_total]; top is free_stack[n_free - 1] */
    uint16_t  *refcount;       /* [n_total]; 0 = free */
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
    free(kv);
}


int
kimi_kv_block_alloc(kimi_kv_t *kv, uint32_t *id)
{
    uint32_t  b;

    if (kv->n_free == 0) {
        return KIMI_EFULL;
    }

    b = kv->free_stack[--kv->n_free];
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
        kv->free_stack[kv->n_free++] = id;
    }
}


uint32_t
kimi_kv_n_free(const kimi_kv_t *kv)
{
    return kv->n_free;
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

    if (need - t->n > kv->n_free) {
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
