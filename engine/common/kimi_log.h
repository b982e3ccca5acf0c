/*
 * Engine logging: one line per event, nginx's level names, key=value fields.
 *
 * Owns:   the process-wide log level and sink (set once before threads start).
 * Never:  used inside library functions to report their own errors (they
 *         return a kimi_err_t; the caller that decides logs it, once).
 */

#ifndef KIMI_LOG_H
#define KIMI_LOG_H

typedef enum {
    KIMI_LOG_EMERG = 0,
    KIMI_LOG_ALERT,
    KIMI_LOG_ERR,
    KIMI_LOG_WARN,
    KIMI_LOG_NOTICE,
    KIMI_LOG_INFO,
    KIMI_LOG_DEBUG,
} kimi_log_level_e;

/* Process-wide: set from main() before any thread starts. */
void kimi_log_set_level(kimi_log_level_e level);
void kimi_log_set_json(int on);        /* structured JSON lines instead of text */
void kimi_log_set_rank(int rank);      /* added as rank=N to every line */
int  kimi_log_level_parse(const char *name, kimi_log_level_e *out);

void kimi_log(kimi_log_level_e level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define kimi_log_debug(...)                                                   \
    do {                                                                      \
        if (kimi_log_enabled(KIMI_LOG_DEBUG)) kimi_log(KIMI_LOG_DEBUG,        \
                                                      __VA_ARGS__);           \
    } while (0)

int kimi_log_enabled(kimi_log_level_e level);

#endif
