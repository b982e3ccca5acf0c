/*
 * The fields kimi-bench reads from one OpenAI stream chunk, found by a
 * single pass over its JSON (bench_json.c); jansson is the fallback.
 *
 * Owns:   bench_chunk_t and the scanner's contract: 0 means every field
 *         below is exactly what a full JSON parser would give (the text's
 *         escapes are checked by bench_json_unescape()); -1 means "parse
 *         it properly" (including every chunk with an "error" key).
 */

#ifndef KIMI_BENCH_JSON_H
#define KIMI_BENCH_JSON_H

#include <stddef.h>

typedef struct {
    const char  *id;               /* raw, unescaped by contract; NULL */
    size_t       id_len;
    int          n_choices;        /* -1: no "choices" key */
    int          has_text;         /* choices[0] text / delta.content */
    const char  *text;             /* raw bytes between the quotes */
    size_t       text_len;
    int          text_escaped;     /* needs bench_json_unescape() */
    int          has_usage;
    long         completion_tokens;
    long         prompt_tokens;
} bench_chunk_t;

/* Pointers in *out point into p. */
int bench_chunk_scan(const char *p, size_t n, int is_chat,
    bench_chunk_t *out);

/* JSON string body -> UTF-8; dst needs n bytes (escapes only shrink).
 * -1 on a malformed escape or a lone surrogate. */
int bench_json_unescape(const char *s, size_t n, char *dst,
    size_t *dst_len);

#endif
