/*
 * The paged KV block allocator and per-sequence block tables.
 *
 * Owns:   which cache blocks are free, each block's reference count, and
 *         the block table of every sequence (logical block i -> physical
 *         block id).  The storage the ids index belongs to the backend
 *         (kv_init in backend.h); this file only hands out ids.
 * Never:  touches cache memory, talks to a backend, or knows what a
 *         sequence is beyond its table.
 * Holds:  alloc and free are O(1) (a LIFO stack of free ids); a block is
 *         on the free stack iff its refcount is 0; n_free + used == total.
 *         Scheduler thread only.
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

/* Returns every block of the table to the allocator and empties it (the
 * ids array is kept for reuse). */
void kimi_kv_table_release(kimi_kv_t *kv, kimi_kv_table_t *t);

/* Frees the ids array too (after release). */
void kimi_kv_table_free(kimi_kv_table_t *t);


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
