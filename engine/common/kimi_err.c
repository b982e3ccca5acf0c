/*
 * Error values for engine library code (see kimi_err.h).
 *
 * Owns:   formatting of kimi_err_t messages.
 * Never:  logs or exits.
 */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kimi_err.h"


int
kimi_err_set(kimi_err_t *err, int code, const char *fmt, ...)
{
    va_list  ap;

    if (err != NULL) {
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }

    return code;
}


int
kimi_err_wrap(kimi_err_t *err, const char *fmt, ...)
{
    char     prefix[256], old[sizeof(err->msg)];
    size_t   n;
    va_list  ap;

    if (err == NULL) {
        return KIMI_EINVAL;
    }

    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);

    memcpy(old, err->msg, sizeof(old));
    n = strnlen(prefix, sizeof(prefix) - 1);
    if (n > sizeof(err->msg) - 3) {
        n = sizeof(err->msg) - 3;
    }

    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    n += 2;
    memcpy(err->msg + n, old, sizeof(err->msg) - n - 1);
    err->msg[sizeof(err->msg) - 1] = '\0';

    return err->code;
}


const char *
kimi_err_name(int code)
{
    switch (code) {
    case KIMI_OK:           return "ok";
    case KIMI_EINVAL:       return "invalid argument";
    case KIMI_ENOMEM:       return "out of memory";
    case KIMI_EIO:          return "i/o error";
    case KIMI_EFORMAT:      return "malformed input";
    case KIMI_EUNSUPPORTED: return "unsupported";
    case KIMI_EFULL:        return "resource exhausted";
    case KIMI_ESTATE:       return "bad state";
    case KIMI_ECUDA:        return "cuda error";
    default:                return "unknown error";
    }
}
