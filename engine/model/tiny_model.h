/*
 * The tiny default model: Kimi-K2's exact architecture and tensor names at
 * small widths, with deterministic random weights.  Its text is noise.
 *
 * Owns:   the tiny config, the weight initialisation, and writing the model
 *         directory (config.json, generation_config.json, index + 2 shards,
 *         copies of the tokenizer files).
 * Never:  trains, downloads, or depends on anything but its seed.
 */

#ifndef KIMI_TINY_MODEL_H
#define KIMI_TINY_MODEL_H

#include <stdint.h>

#include "../common/kimi_err.h"

#define KIMI_TINY_SEED  20250711ull

/* The tiny config.json text (static storage). */
const char *kimi_tiny_model_config_json(void);

/* Writes the model into out_dir (created if missing).  tokenizer_dir holds
 * tiktoken.model, tokenizer_config.json and chat_template.jinja (copied);
 * NULL skips them. */
int kimi_tiny_model_write(const char *out_dir, const char *tokenizer_dir,
    uint64_t seed, kimi_err_t *err);

/* Same weight generator for another config (config_json NULL = the tiny
 * one) with hf_overrides merged in, e.g. Kimi-K2's real config.json cut to
 * 2 layers: real widths for oracle checks.  config.json is written merged. */
int kimi_tiny_model_write_config(const char *out_dir,
    const char *tokenizer_dir, uint64_t seed, const char *config_json,
    const char *hf_overrides, kimi_err_t *err);

#endif
