/*
 * The TAP line every t/unit test prints: ok() counts, says "ok N - claim"
 * or "not ok N - claim", and flushes so that forked children never repeat
 * a buffered line.
 *
 * Owns:   test_n, test_failed, ok() and where the model's text files are
 *         (tap_model_dir); header-only (static) so each test binary stays
 *         one .c file.
 * Never:  used outside tests; decides a plan or an exit status (each test's
 *         main() prints "1..test_n" and returns test_failed != 0).
 */

#ifndef KIMI_T_TAP_H
#define KIMI_T_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int  test_n;
static int  test_failed;


/* Kimi-K2's tokenizer and config files: $KIMI_MODEL_DIR, else
 * ../shared/kimi-k2 from the repository root. */
static inline const char *
tap_model_dir(void)
{
    const char  *d = getenv("KIMI_MODEL_DIR");

    return d != NULL ? d : "../shared/kimi-k2";
}


static void
ok(int cond, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
ok(int cond, const char *fmt, ...)
{
    va_list  ap;

    printf("%sok %d - ", cond ? "" : "not ", ++test_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);

    if (!cond) {
        test_failed++;
    }
}

#endif
