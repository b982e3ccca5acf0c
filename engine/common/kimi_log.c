/*
 * Engine log sink: stderr, one line per event, written with one write(2)
 * so lines from threads never interleave.
 *
 * Owns:   the log level, format and rank tag (process-wide: set by main()
 *         before threads start, read-only afterwards).
 * Never:  allocates or blocks on anything but stderr.
 */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kimi_log.h"

/* process-wide by design: configured once by main() before threads start */
static kimi_log_level_e  log_level = KIMI_LOG_NOTICE;
static int               log_json;
static int               log_rank = -1;

static const char *level_names[] = {
    "emerg", "alert", "error", "warn", "notice", "info", "debug"
};


void
kimi_log_set_level(kimi_log_level_e level)
{
    log_level = level;
}


void
kimi_log_set_json(int on)
{
    log_json = on;
}


void
kimi_log_set_rank(int rank)
{
    log_rank = rank;
}


int
kimi_log_enabled(kimi_log_level_e level)
{
    return level <= log_level;
}


int
kimi_log_level_parse(const char *name, kimi_log_level_e *out)
{
    int  i;

    for (i = 0; i <= KIMI_LOG_DEBUG; i++) {
        if (strcmp(name, level_names[i]) == 0
            || (i == KIMI_LOG_ERR && strcmp(name, "err") == 0))
        {
            *out = (kimi_log_level_e) i;
            return 0;
        }
    }

    return -1;
}


void
kimi_log(kimi_log_level_e level, const char *fmt, ...)
{
    char             line[2048], msg[1536], *p;
    size_t           n, i;
    va_list          ap;
    struct tm        tm;
    struct timespec  ts;

    if (level > log_level) {
        return;
    }

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);

    if (log_json) {
        n = (size_t) snprintf(line, sizeof(line),
                "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\","
                "\"level\":\"%s\",\"pid\":%d,\"rank\":%d,\"msg\":\"",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                level_names[level], (int) getpid(), log_rank);
        p = line + n;
        for (i = 0; msg[i] != '\0' && p < line + sizeof(line) - 8; i++) {
            unsigned char  ch = (unsigned char) msg[i];
            if (ch == '"' || ch == '\\') {
                *p++ = '\\';
                *p++ = (char) ch;
            } else if (ch < 0x20) {
                p += sprintf(p, "\\u%04x", ch);
            } else {
                *p++ = (char) ch;
            }
        }
        memcpy(p, "\"}\n", 3);
        n = (size_t) (p + 3 - line);

    } else {
        char  rank_tag[32] = "";

        if (log_rank >= 0) {
            snprintf(rank_tag, sizeof(rank_tag), " rank=%d", log_rank);
        }

        n = (size_t) snprintf(line, sizeof(line),
                "%04d/%02d/%02d %02d:%02d:%02d.%03ld [%s] kimi-engine[%d]%s"
                " %s\n",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                level_names[level], (int) getpid(), rank_tag, msg);
        if (n >= sizeof(line)) {
            n = sizeof(line) - 1;
            line[n - 1] = '\n';
        }
    }

    (void) !write(STDERR_FILENO, line, n);
}
