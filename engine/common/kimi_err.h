/*
 * Errors returned by engine library code.
 *
 * Owns:   the error codes and the one-line message a caller gets back.
 * Never:  logs, exits, or allocates: the caller decides what to do.
 */

#ifndef KIMI_ERR_H
#define KIMI_ERR_H

#include <stddef.h>

enum {
    KIMI_OK = 0,
    KIMI_EINVAL = -1,      /* bad argument or input value */
    KIMI_ENOMEM = -2,      /* allocation failed */
    KIMI_EIO = -3,         /* open/read/mmap/socket failed (errno in msg) */
    KIMI_EFORMAT = -4,     /* malformed file: names file and field */
    KIMI_EUNSUPPORTED = -5,/* valid input we do not implement */
    KIMI_EFULL = -6,       /* a bounded resource is exhausted */
    KIMI_ESTATE = -7,      /* wrong state, peer gone, ABI mismatch */
    KIMI_ECUDA = -8,       /* CUDA, cuBLAS or NCCL call failed */
};

typedef struct {
    int   code;
    char  msg[512];
} kimi_err_t;

/* Formats msg into err (if not NULL) and returns code, so a caller can
 * write "return kimi_err_set(err, KIMI_EINVAL, ...)". */
int kimi_err_set(kimi_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (context added by callers). */
int kimi_err_wrap(kimi_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

const char *kimi_err_name(int code);

#endif
