/*
 * Tokenizer speed: single-thread encode throughput on a corpus and the
 * cost of the streaming detokenizer per token.  Run by bench/text_speed.sh
 * next to tiktoken on the same corpus; not part of kimi-bench.
 *
 *   text_speed MODEL_DIR CORPUS [REFERENCE_IDS]
 *
 * REFERENCE_IDS (int32 little-endian, from bench/text/tiktoken_speed.py)
 * makes the run also check that the ids are identical.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/kimi_text.h"


static double
now_s(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}


static char *
read_file(const char *path, size_t *len)
{
    FILE  *f = fopen(path, "rb");
    char  *buf;
    long   n;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0) {
        return NULL;
    }
    rewind(f);
    buf = malloc((size_t) n + 1);
    if (buf == NULL || fread(buf, 1, (size_t) n, f) != (size_t) n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    *len = (size_t) n;
    return buf;
}


int
main(int argc, char **argv)
{
    int                run;
    char              *text, *ref;
    size_t             len, ref_len, n_ids = 0, i, out_len, total_out;
    double             t0, best, dt, best_dec;
    int32_t           *ids = NULL;
    kimi_err_t         err;
    const char        *out;
    kimi_detok_t      *d;
    kimi_tokenizer_t  *tok;

    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR CORPUS [REFERENCE_IDS]\n",
                argv[0]);
        return 2;
    }

    if (kimi_tokenizer_load(&tok, argv[1], &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    text = read_file(argv[2], &len);
    if (text == NULL) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }

    best = 1e30;
    for (run = 0; run < 3; run++) {
        free(ids);
        t0 = now_s();
        if (kimi_tokenize(tok, text, len, 0, &ids, &n_ids, &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        dt = now_s() - t0;
        best = dt < best ? dt : best;
    }

    printf("kimi encode: %zu bytes -> %zu tokens, %.3f s, %.2f MB/s "
           "(single thread, best of 3)\n", len, n_ids, best,
           (double) len / 1e6 / best);

    if (argc > 3) {
        ref = read_file(argv[3], &ref_len);
        printf("ids identical to the reference: %s\n",
               ref != NULL && ref_len == n_ids * sizeof(int32_t)
               && memcmp(ref, ids, ref_len) == 0 ? "yes" : "NO");
        free(ref);
    }

    best_dec = 1e30;
    total_out = 0;
    for (run = 0; run < 3; run++) {
        d = kimi_detok_new(tok, 1);
        total_out = 0;
        t0 = now_s();
        for (i = 0; i < n_ids; i++) {
            kimi_detok_push(d, ids[i], &out, &out_len);
            total_out += out_len;
        }
        kimi_detok_flush(d, &out, &out_len);
        dt = now_s() - t0;
        total_out += out_len;
        kimi_detok_free(d);
        best_dec = dt < best_dec ? dt : best_dec;
    }

    printf("kimi streaming decode: %.1f ns/token over %zu tokens "
           "(%zu bytes out, best of 3)\n", best_dec * 1e9 / (double) n_ids,
           n_ids, total_out);

    free(ids);
    free(text);
    kimi_tokenizer_free(tok);
    return 0;
}
