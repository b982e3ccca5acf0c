/*
 * The replay backend: answers from a script instead of a model, for
 * transport, stop, cancel and tool-call tests and the gateway benchmark.
 *
 * Owns:   the script (parsed once at init), the per-sequence choice of
 *         reply, and the per-step delay.
 * Never:  computes logits (it implements backend.h's sample op, so there
 *         is no vocab-wide row per token), or keeps KV (kv_init only
 *         reports how many blocks the scheduler may hand out).
 *
 * Script (JSON):
 *   {"delay_ms": D,
 *    "replies": [{"match": "substring of the decoded prompt",
 *                 "text": "..."} | {"match": "...", "tokens": [ids]}, ...],
 *    "default": {"text": "..."} | {"tokens": [ids]}}
 * The first reply whose "match" occurs in the decoded prompt (a reply
 * without "match" matches everything) is emitted token by token, then the
 * first eos id; with ignore_eos the reply repeats.  No match and no
 * "default": the eos id at once (an empty answer).  "text" and "match"
 * need a tokenizer (--model DIR); "tokens" works without one.
 */

#ifndef KIMI_BACKEND_REPLAY_H
#define KIMI_BACKEND_REPLAY_H

#include <stdint.h>

#include "../backend.h"

struct kimi_tokenizer;

typedef struct {
    const char                   *script_path;
    int32_t                       delay_ms;     /* < 0: the script's */
    const struct kimi_tokenizer  *tokenizer;    /* borrowed; NULL-able */
    uint32_t                      vocab_size;
    uint32_t                      max_model_len;
    const int32_t                *eos_ids;      /* first one is emitted */
    uint32_t                      n_eos;
} kimi_replay_params_t;

/* On success *out is the caller's (ops->free); the tokenizer must outlive
 * it.  Errors name the script file and the offending entry. */
int kimi_backend_replay_init(kimi_backend_t **out,
    const kimi_replay_params_t *p, kimi_err_t *err);

#endif
