/*
 * A minimal nginx-worker stand-in for engine tests: attaches to the
 * segment, claims a worker record, says hello on the rank socket, submits
 * slots and reads events and tokens, following kimi_shm.h's rules.
 *
 * Owns:   nothing beyond the test process; header-only (static functions)
 *         so each t/unit test binary stays one .c file.
 * Never:  used outside tests.
 */

#ifndef KIMI_T_ENGINE_CLIENT_H
#define KIMI_T_ENGINE_CLIENT_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/kimi_shm.h"

typedef struct {
    kimi_shm_t   shm;
    int32_t      worker;
    int          fd;
    int32_t      pid;
} kc_t;


static inline int
kc_connect(kc_t *c, const char *dir)
{
    char                path[100];
    kimi_err_t          err;
    kimi_shm_hello_t    h;
    struct sockaddr_un  sa;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->pid = getpid();

    if (kimi_shm_attach(&c->shm, dir, &err) != 0) {
        fprintf(stderr, "# attach: %s\n", err.msg);
        return -1;
    }

    c->worker = kimi_shm_worker_claim(&c->shm, c->pid);
    if (c->worker < 0) {
        return -1;
    }

    kimi_shm_socket_path(path, sizeof(path), dir, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);

    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        fprintf(stderr, "# connect %s: %s\n", path, strerror(errno));
        return -1;
    }

    memset(&h, 0, sizeof(h));
    h.magic = KIMI_SHM_MAGIC;
    h.epoch = c->shm.epoch;
    h.abi_version = KIMI_SHM_ABI_VERSION;
    h.worker_index = (uint32_t) c->worker;
    h.pid = c->pid;
    h.incarnation = kimi_shm_worker(&c->shm, (uint32_t) c->worker)
                        ->incarnation;

    return write(c->fd, &h, sizeof(h)) == sizeof(h) ? 0 : -1;
}


static inline void
kc_ring_engine(kc_t *c)
{
    if (kimi_shm_doorbell_arm(&kimi_shm_rank(&c->shm, 0)->wake_pending)) {
        if (write(c->fd, "s", 1) != 1) {
            fprintf(stderr, "# doorbell write: %s\n", strerror(errno));
        }
    }
}


static inline kimi_shm_sampling_t
kc_sampling(uint32_t max_tokens)
{
    kimi_shm_sampling_t  sp;

    memset(&sp, 0, sizeof(sp));
    sp.temperature = 0.0f;
    sp.top_p = 1.0f;
    sp.repetition_penalty = 1.0f;
    sp.top_k = -1;
    sp.max_tokens = max_tokens;

    return sp;
}


/* Fills slot idx (OWNED by this worker) and submits it.  Returns idx. */
static inline int32_t
kc_submit_slot(kc_t *c, int32_t idx, const int32_t *prompt, uint32_t n,
    const kimi_shm_sampling_t *sp, const char *request_id)
{
    kimi_shm_slot_t  *s = kimi_shm_slot(&c->shm, (uint32_t) idx);

    memcpy(kimi_shm_prompt(&c->shm, (uint32_t) idx), prompt,
           n * sizeof(int32_t));
    s->n_prompt_tokens = n;
    s->n_guided = 0;
    s->rank = 0;
    s->kind = KIMI_REQ_GENERATE;
    s->sampling = *sp;
    s->submit_ns = kimi_shm_now_ns();
    snprintf(s->request_id, sizeof(s->request_id), "%s", request_id);

    kimi_shm_slot_cas(s, KIMI_SLOT_OWNED, KIMI_SLOT_SUBMITTED);
    kimi_shm_ring_push(&c->shm, kimi_shm_ring(&c->shm, (uint32_t) c->worker,
                       0, KIMI_SHM_RING_SUBMIT),
                       KIMI_SHM_ENTRY((uint32_t) idx,
                                      s->generation & KIMI_SHM_GEN_MASK));
    kc_ring_engine(c);

    return idx;
}


/* Acquires a slot, fills it and submits.  Returns the slot or -1. */
static inline int32_t
kc_submit(kc_t *c, const int32_t *prompt, uint32_t n,
    const kimi_shm_sampling_t *sp, const char *request_id)
{
    int32_t  idx;

    idx = kimi_shm_slot_acquire(&c->shm, (uint32_t) c->worker, c->pid);
    if (idx < 0) {
        return -1;
    }

    return kc_submit_slot(c, idx, prompt, n, sp, request_id);
}


/* Waits for the doorbell (up to ms), then drains the event ring: returns 1
 * if slot `want` was named in it, 0 on timeout. */
static inline int
kc_wait_event(kc_t *c, int32_t want, int ms)
{
    int                 seen = 0;
    char                buf[64];
    uint32_t            e;
    uint64_t            deadline = kimi_shm_now_ns() + (uint64_t) ms * 1000000;
    struct pollfd       pfd;
    kimi_shm_ring_t    *ring;
    kimi_shm_worker_t  *rec;

    ring = kimi_shm_ring(&c->shm, (uint32_t) c->worker, 0,
                         KIMI_SHM_RING_EVENT);
    rec = kimi_shm_worker(&c->shm, (uint32_t) c->worker);

    while (!seen) {
        int64_t  left = (int64_t) (deadline - kimi_shm_now_ns()) / 1000000;

        if ((int64_t) (deadline - kimi_shm_now_ns()) <= 0) {
            return 0;
        }

        pfd.fd = c->fd;
        pfd.events = POLLIN;
        if (poll(&pfd, 1, (int) left + 1) <= 0) {
            continue;
        }
        if (read(c->fd, buf, sizeof(buf)) <= 0) {
            return 0;
        }

        kimi_shm_doorbell_clear(&rec->wake_pending);

        while (kimi_shm_ring_pop(&c->shm, ring, &e) == 1) {
            kimi_shm_slot_t  *s = kimi_shm_slot(&c->shm,
                                                KIMI_SHM_ENTRY_SLOT(e));
            atomic_store(&s->notify_pending, 0);
            if ((int32_t) KIMI_SHM_ENTRY_SLOT(e) == want) {
                seen = 1;
            }
        }
    }

    return 1;
}


static inline uint32_t
kc_state(kc_t *c, int32_t slot)
{
    return atomic_load(&kimi_shm_slot(&c->shm, (uint32_t) slot)->state);
}


/* Reads tokens of slot until DONE/REJECTED or timeout; returns count. */
static inline int
kc_collect(kc_t *c, int32_t slot, int32_t *out, int max, int ms)
{
    int               n = 0, av, i;
    uint32_t          st;
    uint64_t          deadline = kimi_shm_now_ns() + (uint64_t) ms * 1000000;
    kimi_shm_slot_t  *s = kimi_shm_slot(&c->shm, (uint32_t) slot);

    for ( ;; ) {
        st = kc_state(c, slot);
        av = kimi_shm_tok_available(s);
        for (i = 0; i < av; i++) {
            if (n < max) {
                out[n] = kimi_shm_tok_peek(s, (uint32_t) i)->token;
            }
            n++;
        }
        kimi_shm_tok_consume(s, (uint32_t) av);

        if (st == KIMI_SLOT_DONE || st == KIMI_SLOT_REJECTED) {
            if (kimi_shm_tok_available(s) == 0) {
                return n;
            }
            continue;
        }

        if (kimi_shm_now_ns() > deadline) {
            return n;
        }

        kc_wait_event(c, slot, 50);
    }
}


static inline uint32_t
kc_wait_state(kc_t *c, int32_t slot, uint32_t want, int ms)
{
    uint64_t  deadline = kimi_shm_now_ns() + (uint64_t) ms * 1000000;

    while (kc_state(c, slot) != want && kimi_shm_now_ns() < deadline) {
        usleep(500);
    }

    return kc_state(c, slot);
}


/* Engine binary next to the test binaries: BUILD/t/x -> BUILD/kimi-engine */
static inline int
kc_engine_path(char *buf, size_t len)
{
    ssize_t  n = readlink("/proc/self/exe", buf, len - 32);
    char    *slash;

    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';

    slash = strrchr(buf, '/');
    if (slash == NULL) {
        return -1;
    }
    *slash = '\0';
    slash = strrchr(buf, '/');
    if (slash == NULL) {
        return -1;
    }
    strcpy(slash, "/kimi-engine");

    return access(buf, X_OK);
}


/* Starts kimi-engine with args (NULL-terminated), stderr to logpath, and
 * waits until its segment is READY.  Returns the pid or -1. */
static inline pid_t
kc_engine_start(const char *dir, const char *logpath, char **args)
{
    int         i, n;
    char        bin[512], *argv[64];
    pid_t       pid;
    kimi_err_t  err;
    kimi_shm_t  shm;

    if (kc_engine_path(bin, sizeof(bin)) != 0) {
        fprintf(stderr, "# kimi-engine not found next to the test (%s)\n",
                bin);
        return -1;
    }

    n = 0;
    argv[n++] = bin;
    argv[n++] = (char *) "serve";
    argv[n++] = (char *) "--ipc-dir";
    argv[n++] = (char *) dir;
    for (i = 0; args[i] != NULL && n < 62; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;

    pid = fork();
    if (pid == 0) {
        FILE  *f = freopen(logpath, "a", stderr);
        (void) f;
        execv(bin, argv);
        _exit(127);
    }

    /* wait for READY: the segment appears STARTING, then turns READY */
    for (i = 0; i < 1000; i++) {
        int  status;

        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "# kimi-engine exited early (status %d)\n",
                    status);
            return -1;
        }
        if (kimi_shm_attach(&shm, dir, &err) == 0) {
            int  ready = atomic_load(&shm.hdr->state) == KIMI_SHM_STATE_READY
                         && shm.hdr->engine_pid == pid;
            kimi_shm_detach(&shm);
            if (ready) {
                return pid;
            }
        }
        usleep(10000);
    }

    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}


/* 1 if the log file holds a line containing needle (within ms). */
static inline int
kc_log_has(const char *logpath, const char *needle, int ms)
{
    char      line[4096];
    FILE     *f;
    uint64_t  deadline = kimi_shm_now_ns() + (uint64_t) ms * 1000000;

    do {
        f = fopen(logpath, "r");
        if (f != NULL) {
            while (fgets(line, sizeof(line), f) != NULL) {
                if (strstr(line, needle) != NULL) {
                    fclose(f);
                    return 1;
                }
            }
            fclose(f);
        }
        usleep(2000);
    } while (kimi_shm_now_ns() < deadline);

    return 0;
}

/* Writes body to a new file at path (mode 0600).  Returns 0 or -1. */
static inline int
kc_write_file(const char *path, const char *body)
{
    int     fd;
    size_t  len = strlen(body);

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        return -1;
    }
    if (write(fd, body, len) != (ssize_t) len) {
        close(fd);
        return -1;
    }

    return close(fd);
}


/* Makes the test's directory from tmpl (mkdtemp), writes the replay
 * script body to script and names the engine log there.  On failure it
 * prints the TAP bail-out and returns -1. */
static inline int
kc_workdir(char *tmpl, const char *body, char *script, size_t script_len,
    char *log, size_t log_len)
{
    if (mkdtemp(tmpl) == NULL) {
        printf("Bail out! mkdtemp\n");
        return -1;
    }

    snprintf(script, script_len, "%s/script.json", tmpl);
    snprintf(log, log_len, "%s/engine.log", tmpl);
    if (kc_write_file(script, body) != 0) {
        printf("Bail out! script\n");
        return -1;
    }

    return 0;
}


/* Removes the test's directory after a clean run (unless TEST_KIMI_LEAVE
 * is set); otherwise keeps it for a look and says where. */
static inline void
kc_workdir_done(const char *dir, const char *log, int failed)
{
    char  cmd[700];

    if (!failed && getenv("TEST_KIMI_LEAVE") == NULL) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "# could not remove %s\n", dir);
        }
    } else {
        fprintf(stderr, "# left %s (engine log: %s)\n", dir, log);
    }
}

#endif
