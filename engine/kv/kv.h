/*
 * The paged KV block allocator and per-sequence block tables.
 *
 * Owns:   which cache blocks are free, each block's reference count, and
 *         the block table of every sequence (logical block i -> physical
 *         block id).  The storage the ids index belongs to the backend
 *         (kv_init in backend.h); this file only hands out ids.
 * Never:  touches cache memory, talks to a backend, or knows what a
 *         sequence is beyond its table.
 * Holds:  alloc and free are O(1) (a LIFO stack of free ids); a block with
 *         refcount 0 is on the free stack, or, with the prefix cache on and
 *         a registered hash, on the LRU list of cached blocks, which alloc
 *         evicts (oldest first) once the free stack is empty; n_free counts
 *         both; n_free + used == total.  Scheduler thread only.
 */

#ifndef KIMI_KV_H
#define KIMI_KV_H

#include <stdint.h>

#include "../common/kimi_err.h"
#include "../backend/backend.h"

#define KIMI_KV_DEFAULT_BLOCK_SIZE  64

typedef struct kimi_kv  kimi_kv_t;

/* One sequence's block table.  Zero-initialised = empty. */
typedef struct {
    uint32_t  *ids;         /* [n] physical block ids, in logical order */
    uint32_t   n;           /* blocks held */
    uint32_t   cap;         /* allocated entries of ids */
} kimi_kv_table_t;

/* n_blocks blocks of block_size tokens each. */
int  kimi_kv_init(kimi_kv_t **out, uint32_t n_blocks, uint32_t block_size,
    kimi_err_t *err);
void kimi_kv_free(kimi_kv_t *kv);                      /* NULL is a no-op */

/* One free block with refcount 1; KIMI_EFULL when none is left. */
int  kimi_kv_block_alloc(kimi_kv_t *kv, uint32_t *id);

/* Another owner of a block (prefix sharing); the block must be in use. */
void kimi_kv_block_ref(kimi_kv_t *kv, uint32_t id);

/* Drops one reference; at 0 the block is free again. */
void kimi_kv_block_unref(kimi_kv_t *kv, uint32_t id);

uint32_t kimi_kv_n_free(const kimi_kv_t *kv);
uint32_t kimi_kv_n_total(const kimi_kv_t *kv);
uint32_t kimi_kv_block_size(const kimi_kv_t *kv);

/* Blocks needed to hold n_tokens tokens. */
uint32_t kimi_kv_blocks_for(const kimi_kv_t *kv, uint32_t n_tokens);

/* Grows the table so it covers n_tokens tokens.  All or nothing: on
 * KIMI_EFULL (not enough free blocks) the table is unchanged. */
int  kimi_kv_table_reserve(kimi_kv_t *kv, kimi_kv_table_t *t,
    uint32_t n_tokens, kimi_err_t *err);

/* Appends a block the caller already holds (a prefix-cache hit). */
int  kimi_kv_table_push(kimi_kv_table_t *t, uint32_t id, kimi_err_t *err);

/* Returns every block of the table to the allocator and empties it (the
 * ids array is kept for reuse). */
void kimi_kv_table_release(kimi_kv_t *kv, kimi_kv_table_t *t);

/* Frees the ids array too (after release). */
void kimi_kv_table_free(kimi_kv_table_t *t);


/* ---- prefix cache ---------------------------------------------------------
 *
 * A full block's content is named by a hash chained over every token from
 * the start of the sequence (the KV of a token depends on all before it).
 * Registered blocks outlive their sequences while no one needs the space,
 * so a later sequence with the same prefix takes them instead of
 * recomputing.  Off until enabled: every call below is then a miss/no-op.
 */

typedef struct {
    uint64_t  queries;         /* blocks looked up */
    uint64_t  hits;            /* of them found */
    uint64_t  evictions;       /* cached blocks reused for new content */
    uint32_t  cached_blocks;   /* held by no sequence, still cached */
} kimi_kv_prefix_stats_t;

int      kimi_kv_prefix_enable(kimi_kv_t *kv, kimi_err_t *err);
int      kimi_kv_prefix_on(const kimi_kv_t *kv);
uint64_t kimi_kv_prefix_hash(uint64_t parent, const int32_t *tokens,
    uint32_t n);
/* 1 and *id held (one more reference) if a block holds hash h; else 0. */
int      kimi_kv_prefix_acquire(kimi_kv_t *kv, uint64_t h, uint32_t *id);
/* Block id (held, fully written) now holds hash h; a no-op if h is cached
 * already, here or in another block. */
void     kimi_kv_prefix_register(kimi_kv_t *kv, uint32_t id, uint64_t h);
void     kimi_kv_prefix_stats(const kimi_kv_t *kv,
    kimi_kv_prefix_stats_t *out);


/* ---- sizing, for backends' kv_init ------------------------------------- */

/* Bytes one block takes across all layers: per token per layer `width`
 * values (kv_lora_rank + qk_rope_head_dim = 576 for Kimi-K2) in bf16, in
 * fp8 e4m3 plus one fp32 scale, or in f32 (cpu oracle runs). */
uint64_t kimi_kv_block_bytes(uint32_t block_size, uint32_t n_layers,
    uint32_t width, kimi_kv_dtype_e dtype);

/* How many blocks a byte budget holds, capped by p->max_blocks when set.
 * KIMI_EINVAL if not even one block fits (message gives both sizes). */
int  kimi_kv_blocks_in_budget(const kimi_kv_params_t *p, uint64_t budget,
    uint32_t n_layers, uint32_t width, uint32_t *n_blocks, kimi_err_t *err);

const char *kimi_kv_dtype_name(kimi_kv_dtype_e dtype);

/* "auto" | "bf16" | "fp8" | "fp8_e4m3" | "f32" (cpu) -> dtype;
 * KIMI_EINVAL otherwise. */
int  kimi_kv_dtype_parse(const char *name, kimi_kv_dtype_e *out,
    kimi_err_t *err);

#endif
