/*
 * `kimi-engine status`: what a running engine's segment says, read from
 * the outside (for operators, and for tests that check no slot leaked).
 *
 * Owns:   the status report: segment state, per-rank heartbeat age and load
 *         counters, slots counted by state, live worker records.
 * Never:  writes to the segment (it attaches read-write because the
 *         contract's attach does, but only loads), or rings a doorbell.
 * Exit:   0 when the engine is READY with a heartbeat younger than 3 s,
 *         1 otherwise (no segment, STARTING, DRAINING, STOPPED, stale),
 *         2 for a bad command line: usable as a health probe.
 */

#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "../shm/kimi_shm.h"

#define KIMI_STATUS_STALE_NS  3000000000ull


static const char *
kimi_status_state_name(uint32_t st)
{
    static const char *names[] = { "starting", "ready", "draining",
                                   "stopped" };

    return st < 4 ? names[st] : "unknown";
}


/* A string from the segment: bounded (the peer may have dropped the NUL)
 * and escaped for JSON or a quoted key=value. */
static void
kimi_status_str(const char *s, size_t max)
{
    size_t  i;

    for (i = 0; i < max && s[i] != '\0'; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            putchar('\\');
            putchar(s[i]);

        } else if ((unsigned char) s[i] < 0x20) {
            printf("\\u%04x", (unsigned char) s[i]);

        } else {
            putchar(s[i]);
        }
    }
}


int
kimi_cmd_status(int argc, char **argv)
{
    int                 i, json = 0, healthy;
    uint32_t            r, n, st, counts[8] = { 0 }, n_workers = 0;
    uint64_t            now, age, hb;
    const char         *dir = "/run/kimi";
    kimi_err_t          err;
    kimi_shm_t          shm;
    kimi_shm_rank_t    *rk;
    kimi_shm_header_t  *h;
    static const char  *slot_names[] = { "free", "owned", "submitted",
                                         "accepted", "rejected", "done",
                                         "abandoned", "corrupt" };

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ipc-dir") == 0 && i + 1 < argc) {
            dir = argv[++i];

        } else if (strncmp(argv[i], "--ipc-dir=", 10) == 0) {
            dir = argv[i] + 10;

        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;

        } else if (strcmp(argv[i], "--help") == 0) {
            printf("usage: kimi-engine status [--ipc-dir DIR] [--json]\n"
                   "exit 0 if the engine is ready and its heartbeat fresh\n");
            return 0;

        } else {
            fprintf(stderr, "kimi-engine status: unknown option \"%s\""
                    " (see `kimi-engine status --help`)\n", argv[i]);
            return 2;
        }
    }

    if (kimi_shm_attach(&shm, dir, &err) != 0) {
        printf(json ? "{\"state\":\"absent\",\"error\":\""
                    : "state=absent error=\"");
        kimi_status_str(err.msg, sizeof(err.msg));
        printf(json ? "\",\"healthy\":false}\n" : "\"\n");
        return 1;
    }

    h = shm.hdr;
    now = kimi_shm_now_ns();

    for (n = 0; n < shm.n_slots; n++) {
        st = atomic_load(&kimi_shm_slot(&shm, n)->state);
        counts[st < 7 ? st : 7]++;
    }

    for (n = 0; n < KIMI_SHM_MAX_WORKERS; n++) {
        n_workers += atomic_load(&kimi_shm_worker(&shm, n)->pid) != 0;
    }

    st = atomic_load(&h->state);
    healthy = st == KIMI_SHM_STATE_READY;

    if (json) {
        printf("{\"state\":\"%s\",\"engine_pid\":%d,\"epoch\":\"%016llx\","
               "\"model\":\"", kimi_status_state_name(st), (int) h->engine_pid,
               (unsigned long long) shm.epoch);
        kimi_status_str(h->served_model_name, sizeof(h->served_model_name));
        printf("\",\"max_model_len\":%u,\"slots\":{", h->max_model_len);
        for (n = 0; n < 8; n++) {
            printf("%s\"%s\":%u", n ? "," : "", slot_names[n], counts[n]);
        }
        printf("},\"workers\":%u,\"ranks\":[", n_workers);

    } else {
        printf("state=%s engine_pid=%d epoch=%016llx model=\"",
               kimi_status_state_name(st), (int) h->engine_pid,
               (unsigned long long) shm.epoch);
        kimi_status_str(h->served_model_name, sizeof(h->served_model_name));
        printf("\" max_model_len=%u workers=%u\nslots", h->max_model_len,
               n_workers);
        for (n = 0; n < 8; n++) {
            printf(" %s=%u", slot_names[n], counts[n]);
        }
        printf("\n");
    }

    for (r = 0; r < shm.n_ranks; r++) {
        rk = kimi_shm_rank(&shm, r);
        hb = atomic_load(&rk->heartbeat_ns);
        /* a beat written after `now` was read is fresh, not 584 years old */
        age = hb < now ? now - hb : 0;
        healthy &= atomic_load(&rk->state) == KIMI_SHM_STATE_READY
                   && age < KIMI_STATUS_STALE_NS;

        printf(json ? "%s{\"rank\":%u,\"pid\":%d,\"state\":\"%s\","
                      "\"heartbeat_age_ms\":%.1f,\"running\":%u,"
                      "\"waiting\":%u,\"kv_blocks_used\":%u,"
                      "\"kv_blocks_total\":%u,\"preemptions\":%u}"
                    : "%srank=%u pid=%d state=%s heartbeat_age_ms=%.1f"
                      " running=%u waiting=%u kv_blocks_used=%u"
                      " kv_blocks_total=%u preemptions=%u\n",
               json && r ? "," : "", r, (int) atomic_load(&rk->pid),
               kimi_status_state_name(atomic_load(&rk->state)),
               (double) age / 1e6, atomic_load(&rk->num_running),
               atomic_load(&rk->num_waiting), atomic_load(&rk->kv_blocks_used),
               rk->kv_blocks_total, atomic_load(&rk->num_preemptions));
    }

    if (json) {
        printf("],\"healthy\":%s}\n", healthy ? "true" : "false");
    }

    kimi_shm_detach(&shm);

    return healthy ? 0 : 1;
}
