/*
 * The scheduler driving the real CPU backend on the tiny model.
 *
 * The tiny model (Kimi-K2's architecture at small widths, deterministic
 * weights) is written to a temporary directory, loaded, and run through
 * kimi_sched: greedy output of a request must be the same alone and in a
 * busy, chunked, preempting batch, which checks block tables, positions
 * and the paged latent cache of the real forward pass.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched/sched.h"
#include "model/model.h"
#include "model/tiny_model.h"
#include "backend/cpu/backend_cpu.h"


static int  n_test, n_fail;

#define OK(cond, ...)                                                         \
    do {                                                                      \
        int  c_ = (cond);                                                     \
        n_test++;                                                             \
        n_fail += !c_;                                                        \
        printf("%sok %d - ", c_ ? "" : "not ", n_test);                       \
        printf(__VA_ARGS__);                                                  \
        printf("\n");                                                         \
    } while (0)


#define N_OUT  16

typedef struct {
    int32_t        out[N_OUT];
    uint32_t       n_out;
    kimi_finish_e  reason;
    int            finished;
} rec_t;


static int  can_emit(void *c, void *u) { return 1; }

static void
emit(void *c, void *u, const kimi_shm_token_t *t)
{
    rec_t  *r = u;

    if (r->n_out < N_OUT) {
        r->out[r->n_out++] = t->token;
    }
}


static void
finish(void *c, void *u, kimi_finish_e reason, uint32_t n, const char *m)
{
    rec_t  *r = u;

    r->reason = reason;
    r->finished = 1;
    if (reason == KIMI_FINISH_ERROR) {
        printf("# finish error: %s\n", m ? m : "");
    }
}


static void
make_prompt(int32_t *p, uint32_t n, uint32_t seed)
{
    uint64_t  x = seed * 0x9e3779b97f4a7c15ULL + 1;

    for (uint32_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (int32_t) (x % 160000);
    }
}


/* Runs n requests through one scheduler; returns 0 when all finish. */
static int
run(kimi_backend_t *b, const kimi_sched_params_t *p, int32_t (*prompts)[400],
    const uint32_t *lens, uint32_t n, rec_t *recs, kimi_sched_stats_t *st)
{
    kimi_sched_sink_t  sink = { .can_emit = can_emit, .emit = emit,
                                .finish = finish };
    kimi_seq_desc_t    d;
    kimi_sched_t      *s;
    kimi_err_t         err;
    int                rc, steps = 0;

    if (kimi_sched_init(&s, p, b, &sink, &err) != KIMI_OK) {
        printf("# sched init: %s\n", err.msg);
        return -1;
    }

    for (uint32_t i = 0; i < n; i++) {
        memset(&recs[i], 0, sizeof(recs[i]));
        memset(&d, 0, sizeof(d));
        d.seq_id = 100 + i;
        d.prompt = prompts[i];
        d.n_prompt = lens[i];
        d.sampling.temperature = 0.0f;
        d.sampling.top_p = 1.0f;
        d.sampling.repetition_penalty = 1.0f;
        d.sampling.max_tokens = N_OUT;
        d.sampling.ignore_eos = 1;
        d.user = &recs[i];

        if (kimi_sched_add(s, &d, &err) != KIMI_OK) {
            printf("# add: %s\n", err.msg);
            kimi_sched_free(s);
            return -1;
        }
    }

    while (kimi_sched_has_work(s) && steps++ < 5000) {
        rc = kimi_sched_step(s, &err);
        if (rc <= 0) {
            printf("# step: %d %s\n", rc, rc < 0 ? err.msg : "stalled");
            kimi_sched_free(s);
            return -1;
        }
    }

    kimi_sched_stats(s, st);
    kimi_sched_free(s);
    return 0;
}


int
main(void)
{
    static int32_t       prompts[8][400];
    uint32_t             lens[8] = { 300, 17, 120, 64, 1, 200, 45, 90 };
    char                 dir[] = "/tmp/kimi-sched-tiny-XXXXXX";
    kimi_model_params_t  mp = kimi_model_default_params();
    kimi_sched_params_t  p;
    kimi_sched_stats_t   st;
    kimi_model_t        *model = NULL;
    kimi_backend_t      *b = NULL, *b2 = NULL;
    kimi_err_t           err;
    static rec_t         solo[8], busy[8];
    const int32_t       *eos;
    uint32_t             n_eos;
    int                  all_same = 1, all_done = 1;
    char                 cmd[128];

    if (mkdtemp(dir) == NULL
        || kimi_tiny_model_write(dir, NULL, KIMI_TINY_SEED, &err) != KIMI_OK)
    {
        printf("1..0 # SKIP tiny model not written: %s\n", err.msg);
        return 0;
    }

    mp.dir = dir;
    if (kimi_model_load(&model, &mp, &err) != KIMI_OK) {
        printf("not ok 1 - tiny model loads: %s\n1..1\n", err.msg);
        return 1;
    }

    n_eos = kimi_model_eos_ids(model, &eos);

    for (int i = 0; i < 8; i++) {
        make_prompt(prompts[i], lens[i], 7 + i);
    }

    /* each request alone, one at a time, whole prompt in one step */
    p = kimi_sched_default_params();
    p.max_num_seqs = 1;
    p.max_num_batched_tokens = 4096;
    p.kv.block_size = 64;
    p.kv.budget_bytes = 64ull << 20;
    p.eos_ids = eos;
    p.n_eos = n_eos;
    p.seed = 1;

    if (kimi_backend_cpu_init(&b, model, 2, &err) != KIMI_OK) {
        printf("not ok 1 - cpu backend: %s\n1..1\n", err.msg);
        return 1;
    }

    /* max_num_seqs 1: queued requests run strictly one after another */
    all_done = run(b, &p, prompts, lens, 8, solo, &st) == 0;
    for (int i = 0; i < 8; i++) {
        all_done &= solo[i].n_out == N_OUT;
    }

    OK(all_done && st.num_preemptions == 0, "tiny model: 8 requests alone "
       "each make %d greedy tokens", N_OUT);

    /* all together: 8 running, 32-token chunks, a 22-block cache */
    p.max_num_seqs = 8;
    p.max_num_batched_tokens = 32;
    p.kv.block_size = 16;
    p.kv.max_blocks = 22;        /* 352 tokens; the longest needs 316 */

    if (kimi_backend_cpu_init(&b2, model, 2, &err) != KIMI_OK) {
        printf("not ok 2 - cpu backend: %s\n1..2\n", err.msg);
        return 1;
    }

    all_done = run(b2, &p, prompts, lens, 8, busy, &st) == 0;
    for (int i = 0; i < 8; i++) {
        all_same &= busy[i].n_out == solo[i].n_out
                    && memcmp(busy[i].out, solo[i].out,
                              solo[i].n_out * sizeof(int32_t)) == 0;
        all_done &= busy[i].finished && busy[i].reason == KIMI_FINISH_LENGTH;
    }

    OK(all_done, "tiny model: 8 requests together all finish by length");
    OK(st.num_preemptions > 0, "the small cache forced %llu preemptions",
       (unsigned long long) st.num_preemptions);
    OK(all_same, "greedy output of each request is identical alone and in a "
       "chunked, preempting batch (cpu backend, tiny model)");
    OK(st.kv_blocks_used == 0, "no block leaked");

    b->ops->free(b);
    b2->ops->free(b2);
    kimi_model_free(model);

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        printf("# could not remove %s\n", dir);
    }

    printf("1..%d\n", n_test);
    return n_fail != 0;
}
