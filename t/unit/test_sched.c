/*
 * Scheduler, KV block allocator and host sampler tests.
 *
 * The backend here is a test double: it stores each sequence's token ids
 * in its "KV cache" (one int per token, addressed through the block table
 * exactly as a real cache is) and produces logits as a pure function of
 * the tokens it reads back through the block table.  So a wrong block
 * table, a skipped or repeated position, or a block shared by mistake
 * changes the output, and greedy output must be identical whatever else
 * is batched, chunked or preempted.
 */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sched/sched.h"
#include "kv/kv.h"
#include "sample/sample.h"


#include "tap.h"


/* ---- test backend ------------------------------------------------------ */

#define TB_VOCAB      512
#define TB_EOS        1
#define TB_MAX_SEQS   512
#define TB_MAX_ROWS   512
#define TB_STREAM     4096

typedef struct {
    uint64_t  id;
    uint32_t  next_pos;          /* positions must arrive in order */
    uint32_t  n_stream;
    int32_t   stream[TB_STREAM]; /* tokens in the order forwarded */
    int       used;
} tb_seq_t;

typedef struct {
    kimi_backend_t  base;
    uint32_t        n_blocks;
    uint32_t        bs;
    int32_t        *cache;       /* [n_blocks * bs] */
    float          *logits;      /* [TB_MAX_ROWS][vocab] */
    uint32_t        n_rows;
    tb_seq_t        seqs[TB_MAX_SEQS];
    int             fail_next;   /* next forward fails */
    int             prefix_ok;   /* a new sequence may start at a block
                                    boundary (prefix cache hit) */
    int             bad;         /* a contract violation was seen */
    char            bad_msg[256];
    uint64_t        n_tokens_fwd;
} tb_t;


static uint64_t
tb_mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ULL;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dULL;
    x ^= x >> 33;
    return x;
}


static tb_seq_t *
tb_seq(tb_t *tb, uint64_t id, int create)
{
    tb_seq_t  *free_slot = NULL;

    for (int i = 0; i < TB_MAX_SEQS; i++) {
        if (tb->seqs[i].used && tb->seqs[i].id == id) {
            return &tb->seqs[i];
        }

        if (!tb->seqs[i].used && free_slot == NULL) {
            free_slot = &tb->seqs[i];
        }
    }

    if (!create || free_slot == NULL) {
        return NULL;
    }

    memset(free_slot, 0, sizeof(*free_slot));
    free_slot->used = 1;
    free_slot->id = id;
    return free_slot;
}


static int
tb_kv_init(kimi_backend_t *b, const kimi_kv_params_t *p, uint32_t *n,
    kimi_err_t *err)
{
    tb_t  *tb = (tb_t *) b;

    tb->bs = p->block_size;
    tb->n_blocks = p->max_blocks ? p->max_blocks
                                 : (uint32_t) (p->budget_bytes / (4 * p->block_size));
    tb->cache = calloc((size_t) tb->n_blocks * tb->bs, sizeof(int32_t));
    *n = tb->n_blocks;
    return KIMI_OK;
}


static void
tb_violation(tb_t *tb, const char *msg, uint64_t id, uint32_t a, uint32_t b)
{
    if (!tb->bad) {
        tb->bad = 1;
        snprintf(tb->bad_msg, sizeof(tb->bad_msg), "%s (seq %llu: %u %u)",
                 msg, (unsigned long long) id, a, b);
    }
}


static int
tb_forward(kimi_backend_t *b, const kimi_batch_t *batch, kimi_err_t *err)
{
    tb_t  *tb = (tb_t *) b;

    if (tb->fail_next) {
        tb->fail_next = 0;
        return kimi_err_set(err, KIMI_EIO, "test backend: injected failure");
    }

    tb->n_rows = 0;

    for (uint32_t i = 0; i < batch->n_seqs; i++) {
        const kimi_batch_seq_t  *q = &batch->seqs[i];
        tb_seq_t                *ts = tb_seq(tb, q->seq_id, 1);
        uint32_t                 end = q->pos + q->n_tokens;
        uint64_t                 h = 0x1234;

        if (tb->prefix_ok && ts->n_stream == 0 && q->pos % tb->bs == 0) {
            ts->next_pos = q->pos;          /* earlier blocks came cached */
        }

        if (q->pos != ts->next_pos) {
            tb_violation(tb, "position gap", q->seq_id, q->pos, ts->next_pos);
        }

        if ((uint64_t) q->n_blocks * tb->bs < end) {
            tb_violation(tb, "block table too short", q->seq_id,
                         q->n_blocks, end);
            continue;
        }

        for (uint32_t j = 0; j < q->n_blocks; j++) {
            if (q->block_table[j] >= tb->n_blocks) {
                tb_violation(tb, "block id out of range", q->seq_id,
                             q->block_table[j], tb->n_blocks);
                return kimi_err_set(err, KIMI_EINVAL, "bad block id");
            }
        }

        for (uint32_t j = 0; j < q->n_tokens; j++) {
            uint32_t  p = q->pos + j;

            tb->cache[q->block_table[p / tb->bs] * tb->bs + p % tb->bs]
                = q->tokens[j];
            if (ts->n_stream < TB_STREAM) {
                ts->stream[ts->n_stream++] = q->tokens[j];
            }
        }

        ts->next_pos = end;
        tb->n_tokens_fwd += q->n_tokens;

        if (!q->want_logits) {
            continue;
        }

        /* the row depends on every cached token, read via the table */
        for (uint32_t p = 0; p < end; p++) {
            h = tb_mix(h ^ (uint64_t) (uint32_t)
                       tb->cache[q->block_table[p / tb->bs] * tb->bs
                                 + p % tb->bs]);
        }

        float  *row = tb->logits + (size_t) tb->n_rows++ * TB_VOCAB;

        for (uint32_t v = 0; v < TB_VOCAB; v++) {
            row[v] = (float) (tb_mix(h + v * 0x9e3779b97f4a7c15ULL) >> 40)
                     / (float) (1 << 24) * 8.0f - 4.0f;
        }
    }

    return KIMI_OK;
}


static const float *
tb_logits(kimi_backend_t *b, uint32_t *n_rows, uint32_t *vocab)
{
    tb_t  *tb = (tb_t *) b;

    *n_rows = tb->n_rows;
    *vocab = TB_VOCAB;
    return tb->logits;
}


static void
tb_seq_free(kimi_backend_t *b, uint64_t id)
{
    tb_seq_t  *ts = tb_seq((tb_t *) b, id, 0);

    if (ts != NULL) {
        ts->next_pos = 0;          /* a preempted sequence restarts at 0 */
    }
}


static const kimi_backend_ops_t  tb_ops = {
    .name = "test",
    .kv_init = tb_kv_init,
    .forward = tb_forward,
    .logits = tb_logits,
    .sample = NULL,
    .seq_free = tb_seq_free,
    .free = NULL,
};


static tb_t *
tb_new(void)
{
    tb_t  *tb = calloc(1, sizeof(*tb));

    tb->base.ops = &tb_ops;
    tb->base.vocab_size = TB_VOCAB;
    tb->base.max_model_len = 4096;
    tb->logits = malloc((size_t) TB_MAX_ROWS * TB_VOCAB * sizeof(float));
    return tb;
}


static void
tb_free(tb_t *tb)
{
    free(tb->cache);
    free(tb->logits);
    free(tb);
}


/* ---- test sink --------------------------------------------------------- */

#define REC_MAX  512

typedef struct {
    uint64_t          id;
    int32_t           out[REC_MAX];
    uint32_t          n_out;
    int               blocked;      /* can_emit answers 0 */
    int               started;
    uint32_t          n_cached;     /* reported at the start */
    int               finished;
    kimi_finish_e     reason;
    uint32_t          n_reported;
    char              message[256];
    int               cancel_on_emit;  /* cancel itself from emit() */
    float             out_lp[REC_MAX];
    int32_t           pl_tok[REC_MAX];  /* prompt_logprobs entries */
    float             pl_lp[REC_MAX];
    uint32_t          pl_rank[REC_MAX];
    uint32_t          n_pl;
    int               pl_late;          /* an entry after a token */
} rec_t;

typedef struct {
    kimi_sched_t  *sched;
    int            n_finished;
    int            misuse;          /* a callback for a finished record */
} sink_ctx_t;


static int
sink_can_emit(void *ctx, void *user)
{
    return !((rec_t *) user)->blocked;
}


static void
sink_emit(void *ctx, void *user, const kimi_shm_token_t *tok)
{
    sink_ctx_t  *sc = ctx;
    rec_t       *r = user;

    if (r->finished || r->blocked) {
        sc->misuse = 1;
    }

    if (r->n_out < REC_MAX) {
        r->out_lp[r->n_out] = tok->logprob;
        r->out[r->n_out++] = tok->token;
    }

    if (r->cancel_on_emit && r->n_out == (uint32_t) r->cancel_on_emit) {
        kimi_sched_cancel(sc->sched, r->id);
    }
}


static void
sink_emit_prompt(void *ctx, void *user, const kimi_shm_token_t *tok)
{
    sink_ctx_t  *sc = ctx;
    rec_t       *r = user;

    if (r->finished || r->blocked) {
        sc->misuse = 1;
    }

    r->pl_late |= r->n_out > 0;

    if (r->n_pl < REC_MAX) {
        r->pl_tok[r->n_pl] = tok->token;
        r->pl_lp[r->n_pl] = tok->logprob;
        r->pl_rank[r->n_pl++] = tok->rank;
    }
}


static void
sink_started(void *ctx, void *user, uint32_t n_cached)
{
    ((rec_t *) user)->started++;
    ((rec_t *) user)->n_cached = n_cached;
}


static void
sink_finish(void *ctx, void *user, kimi_finish_e reason, uint32_t n,
    const char *message)
{
    sink_ctx_t  *sc = ctx;
    rec_t       *r = user;

    if (r->finished) {
        sc->misuse = 1;
    }

    r->finished = 1;
    r->reason = reason;
    r->n_reported = n;
    snprintf(r->message, sizeof(r->message), "%s", message ? message : "");
    sc->n_finished++;
}


/* ---- helpers ----------------------------------------------------------- */

typedef struct {
    tb_t          *tb;
    kimi_sched_t  *s;
    sink_ctx_t     sc;
} env_t;


static kimi_sched_params_t
params(uint32_t max_seqs, uint32_t budget, uint32_t n_blocks, uint32_t bs)
{
    static const int32_t  eos[] = { TB_EOS };
    kimi_sched_params_t   p = kimi_sched_default_params();

    p.max_num_seqs = max_seqs;
    p.max_num_batched_tokens = budget;
    p.max_waiting = 1024;
    p.kv.block_size = bs;
    p.kv.max_blocks = n_blocks;
    p.eos_ids = eos;
    p.n_eos = 1;
    p.seed = 42;
    return p;
}


static int
env_init(env_t *e, const kimi_sched_params_t *p)
{
    kimi_sched_sink_t  sink;
    kimi_err_t         err;

    memset(e, 0, sizeof(*e));
    e->tb = tb_new();
    sink.ctx = &e->sc;
    sink.can_emit = sink_can_emit;
    sink.emit = sink_emit;
    sink.emit_prompt = sink_emit_prompt;
    sink.started = sink_started;
    sink.finish = sink_finish;

    if (kimi_sched_init(&e->s, p, &e->tb->base, &sink, &err) != KIMI_OK) {
        printf("# init: %s\n", err.msg);
        return -1;
    }

    e->sc.sched = e->s;
    return 0;
}


static void
env_free(env_t *e)
{
    kimi_sched_free(e->s);
    tb_free(e->tb);
}


static void
make_prompt(int32_t *p, uint32_t n, uint64_t seed)
{
    for (uint32_t i = 0; i < n; i++) {
        p[i] = 2 + (int32_t) (tb_mix(seed * 1000003 + i) % (TB_VOCAB - 2));
    }
}


static kimi_shm_sampling_t
greedy(uint32_t max_tokens)
{
    kimi_shm_sampling_t  sp;

    memset(&sp, 0, sizeof(sp));
    sp.temperature = 0.0f;
    sp.top_p = 1.0f;
    sp.repetition_penalty = 1.0f;
    sp.max_tokens = max_tokens;
    sp.ignore_eos = 1;                 /* fixed lengths unless a test wants eos */
    return sp;
}


static int
add(env_t *e, rec_t *r, uint64_t id, const int32_t *prompt, uint32_t n,
    const kimi_shm_sampling_t *sp, kimi_err_t *err)
{
    kimi_seq_desc_t  d;

    memset(r, 0, sizeof(*r));
    memset(&d, 0, sizeof(d));
    r->id = id;
    d.seq_id = id;
    d.prompt = prompt;
    d.n_prompt = n;
    d.sampling = *sp;
    d.user = r;
    return kimi_sched_add(e->s, &d, err);
}


/* Steps until idle; returns steps taken or -1 on error / no progress. */
static int
run(env_t *e, int max_steps)
{
    kimi_err_t  err;
    int         steps = 0, rc;

    while (kimi_sched_has_work(e->s)) {
        rc = kimi_sched_step(e->s, &err);
        if (rc < 0) {
            printf("# step: %s\n", err.msg);
            return -1;
        }

        if (rc == 0 || ++steps > max_steps) {
            printf("# stalled after %d steps (rc %d)\n", steps, rc);
            return -1;
        }
    }

    return steps;
}


/* Output of one sequence scheduled alone, with a roomy cache. */
static uint32_t
alone(const int32_t *prompt, uint32_t n, const kimi_shm_sampling_t *sp,
    int32_t *out)
{
    kimi_sched_params_t  p = params(8, 8192, 512, 16);
    env_t                e;
    rec_t                r;
    kimi_err_t           err;

    env_init(&e, &p);
    add(&e, &r, 7, prompt, n, sp, &err);
    run(&e, 100000);
    memcpy(out, r.out, r.n_out * sizeof(int32_t));
    env_free(&e);
    return r.n_out;
}


static int
same(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb)
{
    return na == nb && memcmp(a, b, na * sizeof(int32_t)) == 0;
}


/* ---- KV allocator ------------------------------------------------------ */

static void
test_kv(void)
{
    kimi_kv_t        *kv;
    kimi_kv_table_t   t1 = { 0 }, t2 = { 0 };
    kimi_err_t        err;
    uint32_t          id, ids[8];
    int               distinct = 1;
    kimi_kv_params_t  kp = { 64, KIMI_KV_DTYPE_AUTO, 0, 0, 0 };
    uint32_t          nb;

    ok(kimi_kv_init(&kv, 8, 16, &err) == KIMI_OK, "kv: init 8 blocks");

    for (int i = 0; i < 8; i++) {
        kimi_kv_block_alloc(kv, &ids[i]);
        for (int j = 0; j < i; j++) {
            distinct &= ids[i] != ids[j];
        }
    }

    ok(distinct && kimi_kv_n_free(kv) == 0, "kv: 8 allocations are distinct");
    ok(kimi_kv_block_alloc(kv, &id) == KIMI_EFULL, "kv: ninth is EFULL");

    kimi_kv_block_ref(kv, ids[3]);
    kimi_kv_block_unref(kv, ids[3]);
    ok(kimi_kv_n_free(kv) == 0, "kv: shared block stays after one unref");
    kimi_kv_block_unref(kv, ids[3]);
    ok(kimi_kv_n_free(kv) == 1, "kv: freed after last unref");
    for (int i = 0; i < 8; i++) {
        if (i != 3) {
            kimi_kv_block_unref(kv, ids[i]);
        }
    }

    ok(kimi_kv_table_reserve(kv, &t1, 100, &err) == KIMI_OK && t1.n == 7,
       "kv: table for 100 tokens has 7 blocks of 16");
    ok(kimi_kv_table_reserve(kv, &t2, 33, &err) == KIMI_EFULL && t2.n == 0
       && kimi_kv_n_free(kv) == 1, "kv: reserve is all or nothing");
    ok(kimi_kv_table_reserve(kv, &t1, 112, &err) == KIMI_OK && t1.n == 7,
       "kv: 112 tokens still fit 7 blocks");
    kimi_kv_table_release(kv, &t1);
    ok(t1.n == 0 && kimi_kv_n_free(kv) == 8, "kv: release returns all");
    kimi_kv_table_free(&t1);
    kimi_kv_table_free(&t2);
    kimi_kv_free(kv);

    ok(kimi_kv_block_bytes(64, 61, 576, KIMI_KV_DTYPE_AUTO)
       == 64ULL * 61 * 576 * 2, "kv: bf16 block bytes");
    ok(kimi_kv_block_bytes(64, 61, 576, KIMI_KV_DTYPE_FP8)
       == 64ULL * 61 * 580, "kv: fp8 block bytes include the scale");
    ok(kimi_kv_blocks_in_budget(&kp, 10ULL << 20, 2, 576, &nb, &err)
       == KIMI_OK && nb == (10u << 20) / (64 * 2 * 1152),
       "kv: blocks in a 10 MiB budget");
    ok(kimi_kv_blocks_in_budget(&kp, 1000, 2, 576, &nb, &err) == KIMI_EINVAL
       && strstr(err.msg, "holds no block") != NULL,
       "kv: a budget below one block is an error");
}


/* ---- prefix cache ------------------------------------------------------ */

static void
test_prefix_kv(void)
{
    kimi_kv_t               *kv;
    kimi_err_t               err;
    kimi_kv_prefix_stats_t   st;
    uint32_t                 a, b, c, id, got[6], n_hit = 0;
    int                      all = 1;

    kimi_kv_init(&kv, 6, 4, &err);
    ok(kimi_kv_prefix_enable(kv, &err) == KIMI_OK, "prefix: enabled");
    kimi_kv_block_alloc(kv, &a);
    kimi_kv_block_alloc(kv, &b);
    kimi_kv_block_alloc(kv, &c);
    kimi_kv_prefix_register(kv, a, 101);
    kimi_kv_prefix_register(kv, b, 102);
    kimi_kv_prefix_register(kv, c, 101);         /* 101 is cached in a */
    kimi_kv_block_unref(kv, a);
    kimi_kv_block_unref(kv, b);
    kimi_kv_block_unref(kv, c);
    ok(kimi_kv_n_free(kv) == 6, "prefix: cached blocks count as free");
    ok(kimi_kv_prefix_acquire(kv, 101, &id) == 1 && id == a
       && kimi_kv_n_free(kv) == 5, "prefix: a hit returns the block, held");
    ok(kimi_kv_prefix_acquire(kv, 103, &id) == 0, "prefix: a miss is 0");
    kimi_kv_block_unref(kv, a);                  /* LRU: b, then a */

    for (int i = 0; i < 6; i++) {
        all &= kimi_kv_block_alloc(kv, &got[i]) == KIMI_OK;
    }
    ok(all && got[4] == b && got[5] == a,
       "prefix: the free stack first, then cached blocks oldest first");
    ok(kimi_kv_block_alloc(kv, &id) == KIMI_EFULL, "prefix: then EFULL");
    ok(kimi_kv_prefix_acquire(kv, 101, &id) == 0
       && kimi_kv_prefix_acquire(kv, 102, &id) == 0,
       "prefix: evicted blocks no longer answer their hash");
    kimi_kv_prefix_stats(kv, &st);
    ok(st.hits == 1 && st.queries == 4 && st.evictions == 2,
       "prefix: stats count queries %llu, hits %llu, evictions %llu",
       (unsigned long long) st.queries, (unsigned long long) st.hits,
       (unsigned long long) st.evictions);
    kimi_kv_free(kv);

    /* the hash map under churn: 1000 blocks, colliding home slots, half
     * evicted in LRU order; every survivor still found, no evicted one */
    kimi_kv_init(&kv, 1000, 4, &err);
    kimi_kv_prefix_enable(kv, &err);
    for (uint32_t i = 0; i < 1000; i++) {
        kimi_kv_block_alloc(kv, &id);
        /* hashes sharing low bits pile up in the same probe runs */
        kimi_kv_prefix_register(kv, id, ((uint64_t) (i % 37) << 40)
                                        | (i * 4096 + 7));
    }
    for (uint32_t i = 0; i < 1000; i++) {
        kimi_kv_block_unref(kv, i);
    }
    for (uint32_t i = 0; i < 500; i++) {
        kimi_kv_block_alloc(kv, &id);            /* evicts 0..499 */
    }
    all = 1;
    for (uint32_t i = 0; i < 1000; i++) {
        int  hit = kimi_kv_prefix_acquire(kv, ((uint64_t) (i % 37) << 40)
                                              | (i * 4096 + 7), &id);

        all &= hit == (i >= 500) && (!hit || id == i);
        n_hit += hit;
    }
    ok(all && n_hit == 500, "prefix: after 500 evictions the other 500 of"
       " 1000 colliding hashes are found, in their blocks (%u)", n_hit);
    kimi_kv_free(kv);
}


static void
test_prefix_sched(void)
{
    env_t                 e, f;
    kimi_sched_params_t   p = params(8, 64, 32, 16);
    kimi_shm_sampling_t   sp = greedy(8);
    kimi_err_t            err;
    int32_t               pa[40], pc[40];
    rec_t                 ra, rb, rc, rd, ref;
    uint64_t              fwd;

    make_prompt(pa, 40, 77);
    memcpy(pc, pa, 16 * sizeof(int32_t));
    make_prompt(pc + 16, 24, 78);

    /* without the cache: the reference output */
    env_init(&f, &p);
    add(&f, &ref, 1, pa, 40, &sp, &err);
    while (kimi_sched_has_work(f.s)) {
        kimi_sched_step(f.s, &err);
    }
    env_free(&f);

    p.enable_prefix_caching = 1;
    env_init(&e, &p);
    e.tb->prefix_ok = 1;
    add(&e, &ra, 1, pa, 40, &sp, &err);
    while (kimi_sched_has_work(e.s)) {
        kimi_sched_step(e.s, &err);
    }
    ok(ra.n_cached == 0 && ra.n_out == 8
       && memcmp(ra.out, ref.out, 8 * sizeof(int32_t)) == 0,
       "prefix sched: a first prompt is computed whole, same output");

    fwd = e.tb->n_tokens_fwd;
    add(&e, &rb, 2, pa, 40, &sp, &err);
    while (kimi_sched_has_work(e.s)) {
        kimi_sched_step(e.s, &err);
    }
    ok(rb.n_cached == 32 && e.tb->n_tokens_fwd - fwd == 8 + 7,
       "prefix sched: the same prompt again takes 2 cached blocks (%u"
       " tokens) and computes %llu", rb.n_cached,
       (unsigned long long) (e.tb->n_tokens_fwd - fwd));
    ok(memcmp(rb.out, ref.out, 8 * sizeof(int32_t)) == 0 && !e.tb->bad,
       "prefix sched: with the same output, read through shared blocks%s%s",
       e.tb->bad ? ": " : "", e.tb->bad ? e.tb->bad_msg : "");

    add(&e, &rc, 3, pc, 40, &sp, &err);
    while (kimi_sched_has_work(e.s)) {
        kimi_sched_step(e.s, &err);
    }
    ok(rc.n_cached == 16, "prefix sched: a prompt sharing one block takes"
       " just that one (%u)", rc.n_cached);

    /* generated tokens are cached too: a longer answer, then the next
     * turn sends prompt + answer + more, and finds blocks holding output */
    {
        kimi_shm_sampling_t  sp30 = greedy(30);
        int32_t              conv[72];
        rec_t                re;

        add(&e, &re, 4, pa, 40, &sp30, &err);
        while (kimi_sched_has_work(e.s)) {
            kimi_sched_step(e.s, &err);
        }
        memcpy(conv, pa, 40 * sizeof(int32_t));
        memcpy(conv + 40, re.out, 30 * sizeof(int32_t));
        conv[70] = 5;
        conv[71] = 6;
        add(&e, &rd, 5, conv, 72, &sp, &err);
        while (kimi_sched_has_work(e.s)) {
            kimi_sched_step(e.s, &err);
        }
        ok(rd.n_cached == 64 && !e.tb->bad, "prefix sched: prompt + answer"
           " + a new turn reuses 4 blocks, 24 tokens of them generated"
           " (%u)", rd.n_cached);
    }

    env_free(&e);
}


/* ---- scheduler --------------------------------------------------------- */

static void
test_batch_invariance(void)
{
    int32_t              prompt[300], ref[64], others[40][200];
    uint32_t             n_ref;
    kimi_shm_sampling_t  sp = greedy(40);
    kimi_sched_params_t  p = params(16, 64, 512, 16);
    kimi_sched_stats_t   st;
    kimi_err_t           err;
    env_t                e;
    static rec_t         recs[41];
    int                  all_same = 1, steps;

    make_prompt(prompt, 150, 1);
    n_ref = alone(prompt, 150, &sp, ref);
    ok(n_ref == 40, "alone: greedy makes max_tokens tokens");

    env_init(&e, &p);
    for (int i = 0; i < 40; i++) {
        kimi_shm_sampling_t  o = greedy(5 + i % 30);

        make_prompt(others[i], 10 + (i * 37) % 190, 100 + i);
        add(&e, &recs[i], 1000 + i, others[i], 10 + (i * 37) % 190, &o, &err);
        if (i == 20) {
            add(&e, &recs[40], 7, prompt, 150, &sp, &err);
        }
    }

    steps = run(&e, 100000);
    ok(steps > 0 && !e.tb->bad, "busy batch runs to the end%s%s",
       e.tb->bad ? ": " : "", e.tb->bad_msg);
    ok(same(recs[40].out, recs[40].n_out, ref, n_ref),
       "greedy output is the same alone and in a busy batch");

    for (int i = 0; i < 40; i++) {
        int32_t              o_ref[64];
        kimi_shm_sampling_t  o = greedy(5 + i % 30);
        uint32_t             n = alone(others[i], 10 + (i * 37) % 190, &o,
                                       o_ref);

        all_same &= same(recs[i].out, recs[i].n_out, o_ref, n);
    }

    ok(all_same, "every other sequence matches its solo run too");
    kimi_sched_stats(e.s, &st);
    ok(st.kv_blocks_used == 0 && st.num_running == 0 && st.num_waiting == 0,
       "idle scheduler holds no blocks");
    ok(e.sc.n_finished == 41 && !e.sc.misuse,
       "41 finishes, no callback after finish");
    env_free(&e);
}


static void
test_chunked_prefill(void)
{
    int32_t              prompt[700];
    kimi_shm_sampling_t  sp = greedy(20);
    kimi_sched_params_t  p1 = params(4, 4096, 512, 16);
    kimi_sched_params_t  p2 = params(4, 48, 512, 16);
    env_t                e1, e2;
    rec_t                r1, r2;
    kimi_err_t           err;
    tb_seq_t            *s1, *s2;
    int                  steps1, steps2;

    make_prompt(prompt, 700, 9);

    env_init(&e1, &p1);
    add(&e1, &r1, 5, prompt, 700, &sp, &err);
    steps1 = run(&e1, 1000);

    env_init(&e2, &p2);
    add(&e2, &r2, 5, prompt, 700, &sp, &err);
    steps2 = run(&e2, 1000);

    s1 = tb_seq(e1.tb, 5, 0);
    s2 = tb_seq(e2.tb, 5, 0);
    ok(steps2 > steps1 && steps2 >= 700 / 48, "budget 48 chunks the prompt "
       "(%d steps vs %d)", steps2, steps1);
    ok(!e1.tb->bad && !e2.tb->bad, "positions contiguous in both runs");
    ok(same(r1.out, r1.n_out, r2.out, r2.n_out) && r1.n_out == 20,
       "chunked prefill output equals unchunked");
    ok(s1 && s2 && same(s1->stream, s1->n_stream, s2->stream, s2->n_stream)
       && s1->n_stream == 700 + 19,
       "backend saw the same token stream (prompt + output - 1)");

    env_free(&e1);
    env_free(&e2);

    /* without chunked prefill, an over-budget prompt is refused */
    p2.enable_chunked_prefill = 0;
    env_init(&e2, &p2);
    ok(add(&e2, &r2, 5, prompt, 700, &sp, &err) == KIMI_EINVAL
       && strstr(err.msg, "chunked prefill is off") != NULL,
       "unchunked: prompt over the budget is rejected");
    env_free(&e2);
}


static void
test_preemption(void)
{
    int32_t              prompts[12][80], refs[12][64];
    uint32_t             n_refs[12];
    /* 20 blocks x 8 tokens = 160 tokens for 12 sequences of ~110 */
    kimi_sched_params_t  p = params(12, 64, 20, 8);
    kimi_sched_stats_t   st;
    kimi_err_t           err;
    env_t                e;
    static rec_t         recs[12];
    int                  all_same = 1, all_len = 1, steps;

    env_init(&e, &p);
    for (int i = 0; i < 12; i++) {
        kimi_shm_sampling_t  sp = greedy(40);

        make_prompt(prompts[i], 40 + i * 3, 300 + i);
        n_refs[i] = alone(prompts[i], 40 + i * 3, &sp, refs[i]);
        ok(add(&e, &recs[i], 50 + i, prompts[i], 40 + i * 3, &sp, &err)
           == KIMI_OK, "small cache: add %d", i);
    }

    steps = run(&e, 100000);
    ok(steps > 0 && !e.tb->bad, "small cache run completes%s%s",
       e.tb->bad ? ": " : "", e.tb->bad_msg);
    kimi_sched_stats(e.s, &st);
    ok(st.num_preemptions > 0, "blocks ran out: %llu preemptions",
       (unsigned long long) st.num_preemptions);

    for (int i = 0; i < 12; i++) {
        all_same &= same(recs[i].out, recs[i].n_out, refs[i], n_refs[i]);
        all_len &= recs[i].finished && recs[i].reason == KIMI_FINISH_LENGTH
                   && recs[i].n_reported == 40 && recs[i].started == 1;
    }

    ok(all_same, "preempted-then-resumed output equals uninterrupted");
    ok(all_len, "no request failed: all 12 end by length with 40 tokens");
    ok(st.prompt_tokens_total > 12 * 40, "recompute counted in prompt tokens "
       "(%llu)", (unsigned long long) st.prompt_tokens_total);
    ok(st.kv_blocks_used == 0, "all blocks back after the run");

    /* a sequence longer than the whole cache is refused at add */
    kimi_shm_sampling_t  big = greedy(200);
    rec_t                rb;

    ok(add(&e, &rb, 99, prompts[0], 40, &big, &err) == KIMI_EINVAL
       && strstr(err.msg, "whole cache holds 160") != NULL,
       "longer than the whole cache: rejected at add");
    env_free(&e);
}


/* prompt_logprobs: one entry per prompt token after the first, in order,
 * before any generated token; the same output as without; a position a
 * step; nothing from the prefix cache; exact after preemptions; the entry
 * of a token greedy decoding chose carries rank 1 and its logprob. */
static void
test_prompt_logprobs(void)
{
    int32_t              prompts[8][48], refs[8][32], ext[41];
    uint32_t             n_refs[8];
    kimi_shm_sampling_t  sp = greedy(24), lp = greedy(24);
    kimi_sched_params_t  p = params(8, 64, 20, 8);   /* 160 tokens of cache */
    kimi_sched_stats_t   st;
    kimi_err_t           err;
    env_t                e;
    static rec_t         recs[8], rc, rd, re;
    int                  in_order = 1, same_out = 1, rank_ok = 1, steps;

    lp.prompt_logprobs = 1 + 2;
    lp.logprobs = 1;
    sp.logprobs = 1;

    env_init(&e, &p);
    for (int i = 0; i < 8; i++) {
        make_prompt(prompts[i], 30 + i * 2, 700 + i);
        n_refs[i] = alone(prompts[i], 30 + i * 2, &sp, refs[i]);
        ok(add(&e, &recs[i], 10 + i, prompts[i], 30 + i * 2, i % 2 ? &sp : &lp,
               &err) == KIMI_OK, "prompt_logprobs: add %d", i);
    }

    steps = run(&e, 100000);
    kimi_sched_stats(e.s, &st);
    ok(steps > 0 && !e.tb->bad && !e.sc.misuse, "prompt_logprobs run "
       "completes%s%s", e.tb->bad ? ": " : "", e.tb->bad_msg);
    ok(st.num_preemptions > 0, "with preemptions (%llu)",
       (unsigned long long) st.num_preemptions);

    for (int i = 0; i < 8; i++) {
        uint32_t  n = 30 + i * 2, want = i % 2 ? 0 : n - 1;

        same_out &= same(recs[i].out, recs[i].n_out, refs[i], n_refs[i]);
        in_order &= recs[i].n_pl == want && !recs[i].pl_late;
        for (uint32_t k = 0; k < recs[i].n_pl && k + 1 < n; k++) {
            in_order &= recs[i].pl_tok[k] == prompts[i][k + 1];
            rank_ok &= recs[i].pl_rank[k] >= 1
                       && recs[i].pl_rank[k] <= TB_VOCAB
                       && recs[i].pl_lp[k] <= 0.0f;
        }
    }

    ok(in_order, "n - 1 entries each, the prompt's tokens in order, all "
       "before the first generated token (none without the option)");
    ok(rank_ok, "ranks in [1, vocab], logprobs <= 0");
    ok(same_out, "generated tokens unchanged by the option and the "
       "preemptions");
    env_free(&e);

    /* the oracle: greedy output of a prompt, then that prompt + the
     * token as a prompt_logprobs request (after the plain one, so the
     * prefix cache could have served it) */
    p = params(4, 64, 64, 8);
    p.enable_prefix_caching = 1;
    env_init(&e, &p);
    e.tb->prefix_ok = 1;
    make_prompt(ext, 40, 900);
    ok(add(&e, &rc, 1, ext, 40, &sp, &err) == KIMI_OK, "oracle: add");
    run(&e, 10000);
    ext[40] = rc.out[0];
    ok(add(&e, &rd, 2, ext, 40, &sp, &err) == KIMI_OK
       && add(&e, &re, 3, ext, 41, &lp, &err) == KIMI_OK, "again, and with "
       "prompt_logprobs");
    run(&e, 10000);
    ok(rd.n_cached > 0 && re.n_cached == 0, "the plain repeat hit the prefix "
       "cache (%u tokens), the prompt_logprobs one did not (%u)",
       rd.n_cached, re.n_cached);
    ok(re.n_pl == 40 && re.pl_tok[39] == rc.out[0] && re.pl_rank[39] == 1
       && fabsf(re.pl_lp[39] - rc.out_lp[0]) < 1e-6f,
       "the greedy token's entry: rank 1, logprob %.6f as generated %.6f",
       re.pl_lp[39], rc.out_lp[0]);
    ok(e.tb->n_tokens_fwd > 0 && !e.tb->bad, "backend saw no gaps");
    env_free(&e);
}


static void
test_seeds(void)
{
    int32_t              prompt[64], ref[64], others[10][64];
    uint32_t             n_ref;
    kimi_shm_sampling_t  sp = greedy(30);
    kimi_sched_params_t  p = params(16, 64, 512, 16);
    kimi_err_t           err;
    env_t                e;
    static rec_t         recs[11];
    rec_t                a, b;

    sp.temperature = 0.9f;
    sp.top_p = 0.95f;
    sp.top_k = 100;
    sp.has_seed = 1;
    sp.seed = 1234;

    make_prompt(prompt, 64, 77);
    n_ref = alone(prompt, 64, &sp, ref);

    env_init(&e, &p);
    for (int i = 0; i < 10; i++) {
        kimi_shm_sampling_t  o = sp;

        o.has_seed = 0;
        make_prompt(others[i], 20 + i, 500 + i);
        add(&e, &recs[i], 200 + i, others[i], 20 + i, &o, &err);
        if (i == 4) {
            add(&e, &recs[10], 7, prompt, 64, &sp, &err);
        }
    }

    run(&e, 100000);
    ok(n_ref == 30 && same(recs[10].out, recs[10].n_out, ref, n_ref),
       "seeded sampling is the same alone and in a batch");
    env_free(&e);

    /* another seed gives another text (deterministic, so not flaky) */
    sp.seed = 1235;
    int32_t   other[64];
    uint32_t  n_other = alone(prompt, 64, &sp, other);

    ok(!same(other, n_other, ref, n_ref), "a different seed differs");

    /* unseeded requests draw from the scheduler's RNG */
    sp.has_seed = 0;
    p.seed = 1;
    env_init(&e, &p);
    add(&e, &a, 1, prompt, 64, &sp, &err);
    run(&e, 1000);
    env_free(&e);
    p.seed = 2;
    env_init(&e, &p);
    add(&e, &b, 1, prompt, 64, &sp, &err);
    run(&e, 1000);
    env_free(&e);
    ok(!same(a.out, a.n_out, b.out, b.n_out),
       "unseeded requests differ across scheduler seeds");
}


static void
test_cancel(void)
{
    int32_t              prompts[30][100];
    kimi_sched_params_t  p = params(16, 128, 64, 16);
    kimi_sched_stats_t   st;
    kimi_err_t           err;
    env_t                e;
    static rec_t         recs[30];
    int                  all_cancelled = 1;

    env_init(&e, &p);
    for (int i = 0; i < 30; i++) {
        kimi_shm_sampling_t  sp = greedy(200);

        make_prompt(prompts[i], 30 + i * 2, 700 + i);
        add(&e, &recs[i], 900 + i, prompts[i], 30 + i * 2, &sp, &err);
    }

    recs[3].cancel_on_emit = 2;    /* cancels itself from inside emit() */

    for (int i = 0; i < 12; i++) {
        kimi_sched_step(e.s, &err);
    }

    kimi_sched_stats(e.s, &st);
    ok(st.num_running > 0 && st.num_waiting > 0 && st.kv_blocks_used > 0,
       "under load: %u running, %u waiting, %u blocks", st.num_running,
       st.num_waiting, st.kv_blocks_used);
    ok(recs[3].finished && recs[3].reason == KIMI_FINISH_CANCELLED
       && recs[3].n_out == 2, "cancel from inside emit() ends it after the "
       "step");

    kimi_sched_cancel(e.s, 900 + 10);
    ok(recs[10].finished && recs[10].reason == KIMI_FINISH_CANCELLED,
       "cancel finishes at once");

    for (int i = 0; i < 30; i++) {
        kimi_sched_cancel(e.s, 900 + i);
    }

    kimi_sched_cancel(e.s, 123456);   /* unknown: ignored */

    kimi_sched_stats(e.s, &st);
    for (int i = 0; i < 30; i++) {
        all_cancelled &= recs[i].finished
                         && recs[i].reason == KIMI_FINISH_CANCELLED;
    }

    ok(all_cancelled && e.sc.n_finished == 30 && !e.sc.misuse,
       "every sequence finished once, as cancelled");
    ok(st.kv_blocks_used == 0 && st.num_running == 0 && st.num_waiting == 0
       && !kimi_sched_has_work(e.s), "cancel under load frees every block");
    env_free(&e);
}


static void
test_limits(void)
{
    int32_t              prompt[200];
    kimi_sched_params_t  p = params(2, 64, 512, 16);
    kimi_shm_sampling_t  sp = greedy(10);
    kimi_err_t           err;
    env_t                e;
    static rec_t         recs[8];
    int                  rc;

    make_prompt(prompt, 200, 3);
    p.max_model_len = 100;
    p.max_waiting = 3;
    env_init(&e, &p);

    sp.max_tokens = 30;
    rc = add(&e, &recs[0], 1, prompt, 80, &sp, &err);
    ok(rc == KIMI_EINVAL && strcmp(err.msg, "This model's maximum context "
       "length is 100 tokens. However, you requested 110 tokens (80 in the "
       "messages, 30 in the completion). Please reduce the length of the "
       "messages or completion.") == 0, "max_model_len: vLLM's wording");

    sp.max_tokens = 0;
    rc = add(&e, &recs[0], 1, prompt, 120, &sp, &err);
    ok(rc == KIMI_EINVAL && strstr(err.msg, "maximum context length is 100 "
       "tokens") != NULL, "prompt alone over max_model_len is rejected");

    sp.max_tokens = 10;
    for (int i = 0; i < 5; i++) {
        ok(add(&e, &recs[i], 10 + i, prompt, 20, &sp, &err) == KIMI_OK,
           "queue: add %d of 5 (2 running + 3 waiting)", i + 1);
    }

    rc = add(&e, &recs[5], 20, prompt, 20, &sp, &err);
    ok(rc == KIMI_EFULL && strstr(err.msg, "full") != NULL,
       "queue: sixth is EFULL");
    ok(add(&e, &recs[6], 10, prompt, 20, &sp, &err) == KIMI_EINVAL,
       "duplicate sequence id is rejected");

    kimi_shm_sampling_t  bad = sp;
    bad.top_p = 0.0f;
    ok(add(&e, &recs[6], 30, prompt, 20, &bad, &err) == KIMI_EINVAL
       && strstr(err.msg, "top_p") != NULL, "top_p 0 is rejected");
    bad = sp;
    bad.temperature = -1.0f;
    ok(add(&e, &recs[6], 30, prompt, 20, &bad, &err) == KIMI_EINVAL,
       "negative temperature is rejected");
    prompt[5] = TB_VOCAB;
    ok(add(&e, &recs[6], 30, prompt, 20, &sp, &err) == KIMI_EINVAL
       && strstr(err.msg, "outside the vocabulary") != NULL,
       "out-of-vocabulary prompt token is rejected");
    prompt[5] = 3;
    ok(add(&e, &recs[6], 30, prompt, 0, &sp, &err) == KIMI_EINVAL,
       "empty prompt is rejected");

    kimi_sched_step(e.s, &err);
    kimi_sched_stats_t  st;
    kimi_sched_stats(e.s, &st);
    ok(st.num_running == 2 && st.num_waiting == 3,
       "max_num_seqs caps running at 2");
    ok(recs[0].started && recs[1].started && !recs[2].started,
       "started() for admitted sequences only");
    run(&e, 1000);
    ok(recs[2].finished && recs[4].finished && recs[4].n_out == 10,
       "waiting ones run once seats free up (FIFO)");

    /* max_tokens 0 runs to max_model_len */
    sp.max_tokens = 0;
    add(&e, &recs[7], 40, prompt, 90, &sp, &err);
    run(&e, 1000);
    ok(recs[7].reason == KIMI_FINISH_LENGTH && recs[7].n_out == 10,
       "max_tokens 0 stops at max_model_len (10 tokens)");
    env_free(&e);
}


static void
test_stops(void)
{
    int32_t              prompt[32], out[64], ref[300];
    kimi_sched_params_t  p = params(4, 256, 512, 16);
    kimi_shm_sampling_t  sp = greedy(200);
    kimi_err_t           err;
    env_t                e;
    rec_t                r;
    uint32_t             n, stop_at = 0;
    int32_t              stop_tok;

    make_prompt(prompt, 32, 11);
    n = alone(prompt, 32, &sp, ref);

    /* a stop id: the 6th token of the free run, not seen earlier */
    for (uint32_t i = 5; i < n; i++) {
        int  seen = 0;

        for (uint32_t j = 0; j < i; j++) {
            seen |= ref[j] == ref[i];
        }

        if (!seen) {
            stop_at = i;
            break;
        }
    }

    stop_tok = ref[stop_at];
    sp.n_stop_ids = 1;
    sp.stop_ids[0] = stop_tok;
    env_init(&e, &p);
    add(&e, &r, 1, prompt, 32, &sp, &err);
    run(&e, 1000);
    ok(r.reason == KIMI_FINISH_STOP && r.n_out == stop_at + 1
       && r.out[stop_at] == stop_tok && r.n_reported == r.n_out,
       "stop id ends the sequence with the stop token emitted (%u tokens)",
       r.n_out);

    sp.min_tokens = stop_at + 2;
    add(&e, &r, 2, prompt, 32, &sp, &err);
    run(&e, 1000);
    int  none_early = 1;
    for (uint32_t i = 0; i < r.n_out && i + 1 < stop_at + 2; i++) {
        none_early &= r.out[i] != stop_tok;
    }
    ok(none_early && r.n_out >= stop_at + 2,
       "min_tokens keeps the stop id out of the first %u tokens",
       stop_at + 1);

    /* eos: find a prompt whose greedy run emits eos within 200 tokens by
     * using eos as the stop condition and comparing with ignore_eos */
    kimi_shm_sampling_t  g = greedy(3);
    g.ignore_eos = 0;
    env_free(&e);

    /* a backend row where eos wins: search prompts for one */
    uint32_t  found = 0;
    int32_t   pr[4];
    for (uint64_t seed = 0; seed < 4000 && !found; seed++) {
        make_prompt(pr, 4, 5000 + seed);
        g.ignore_eos = 1;
        n = alone(pr, 4, &g, out);
        if (n >= 1 && out[0] == TB_EOS) {
            found = 1;
        }
    }

    ok(found, "found a prompt whose first greedy token is eos");
    g.ignore_eos = 0;
    n = alone(pr, 4, &g, out);
    ok(n == 1 && out[0] == TB_EOS, "eos stops after one token");
    g.ignore_eos = 1;
    n = alone(pr, 4, &g, out);
    ok(n == 3, "ignore_eos runs on to max_tokens");
    g.ignore_eos = 0;
    g.min_tokens = 2;
    n = alone(pr, 4, &g, out);
    ok(n >= 2 && out[0] != TB_EOS, "min_tokens masks eos at first");
}


static void
test_backpressure(void)
{
    int32_t              prompt[50], other[50], ref[64];
    uint32_t             n_ref, held;
    kimi_sched_params_t  p = params(4, 256, 512, 16);
    kimi_shm_sampling_t  sp = greedy(30);
    kimi_sched_stats_t   st;
    kimi_err_t           err;
    env_t                e;
    rec_t                a, b;

    make_prompt(prompt, 50, 21);
    make_prompt(other, 50, 22);
    n_ref = alone(prompt, 50, &sp, ref);

    env_init(&e, &p);
    add(&e, &a, 1, prompt, 50, &sp, &err);
    add(&e, &b, 2, other, 50, &sp, &err);
    kimi_sched_step(e.s, &err);
    kimi_sched_step(e.s, &err);
    a.blocked = 1;
    held = a.n_out;
    kimi_sched_stats(e.s, &st);
    uint32_t  used = st.kv_blocks_used;

    for (int i = 0; i < 5; i++) {
        kimi_sched_step(e.s, &err);
    }

    kimi_sched_stats(e.s, &st);
    ok(a.n_out == held && b.n_out == held + 5 && !e.sc.misuse,
       "a paused sink gets nothing while the other runs on");
    ok(st.num_running == 2 && st.kv_blocks_used >= used,
       "the paused sequence stays running with its blocks");
    a.blocked = 0;
    run(&e, 1000);
    ok(same(a.out, a.n_out, ref, n_ref), "after the pause output is "
       "unchanged");
    env_free(&e);
}


static void
test_errors(void)
{
    int32_t              prompt[50];
    kimi_sched_params_t  p = params(4, 256, 512, 16);
    kimi_shm_sampling_t  sp = greedy(30);
    kimi_sched_stats_t   st;
    kimi_err_t           err;
    env_t                e;
    rec_t                a, b, c;

    make_prompt(prompt, 50, 31);
    env_init(&e, &p);
    add(&e, &a, 1, prompt, 50, &sp, &err);
    add(&e, &b, 2, prompt, 50, &sp, &err);
    kimi_sched_step(e.s, &err);
    e.tb->fail_next = 1;
    ok(kimi_sched_step(e.s, &err) == KIMI_EIO, "backend error is returned");
    kimi_sched_stats(e.s, &st);
    ok(a.reason == KIMI_FINISH_ERROR && b.reason == KIMI_FINISH_ERROR
       && strstr(a.message, "injected") != NULL && st.kv_blocks_used == 0,
       "running sequences end with the error; blocks freed");

    add(&e, &c, 3, prompt, 50, &sp, &err);
    kimi_sched_step(e.s, &err);
    kimi_sched_abort_all(e.s, KIMI_FINISH_ABORT, "shutting down");
    ok(c.reason == KIMI_FINISH_ABORT && strcmp(c.message, "shutting down") == 0
       && !kimi_sched_has_work(e.s), "abort_all ends everything");
    env_free(&e);
}


/* Admission is FIFO, and decodes go first: a long prefill arriving later
 * is chunked around them and never stalls a running sequence. */
static void
test_fifo_decode_first(void)
{
    static int32_t       prompts[10][40], longp[400];
    kimi_sched_params_t  p = params(2, 16, 512, 16);
    kimi_shm_sampling_t  sp = greedy(6);
    kimi_err_t           err;
    env_t                e;
    static rec_t         recs[10];
    rec_t                a, b;
    uint32_t             order[10], n_order = 0, before;
    int                  fifo = 1, steady = 1, chunks = 0;

    env_init(&e, &p);
    for (int i = 0; i < 10; i++) {
        make_prompt(prompts[i], 5 + i, 60 + i);
        add(&e, &recs[i], 300 + i, prompts[i], 5 + i, &sp, &err);
    }

    while (kimi_sched_has_work(e.s)) {
        kimi_sched_step(e.s, &err);
        for (uint32_t i = 0; i < 10; i++) {
            int  seen = 0;

            for (uint32_t j = 0; j < n_order; j++) {
                seen |= order[j] == i;
            }

            if (recs[i].started && !seen) {
                order[n_order++] = i;
            }
        }
    }

    for (uint32_t i = 0; i < n_order; i++) {
        fifo &= order[i] == i;
    }

    ok(n_order == 10 && fifo, "admission follows arrival order");
    env_free(&e);

    /* a decodes; b's 400-token prompt arrives with a 16-token budget */
    sp = greedy(40);
    env_init(&e, &p);
    make_prompt(prompts[0], 8, 1);
    make_prompt(longp, 400, 2);
    add(&e, &a, 1, prompts[0], 8, &sp, &err);
    kimi_sched_step(e.s, &err);
    add(&e, &b, 2, longp, 400, &sp, &err);

    while (b.n_out == 0 && a.n_out < 40) {
        before = a.n_out;
        kimi_sched_step(e.s, &err);
        steady &= a.n_out == before + 1;
        chunks++;
    }

    ok(steady && chunks >= 400 / 15, "a running decode gains a token in "
       "each of the %d steps of a chunked 400-token prefill", chunks);
    run(&e, 1000);
    env_free(&e);
}


/* Random arrivals, cancels and paused sinks on a small cache: every
 * sequence ends exactly once, finished ones match their solo output, and
 * the cache is whole at the end. */
static void
test_random_load(void)
{
    enum { N = 120 };
    static int32_t       prompts[N][120];
    static uint32_t      lens[N], max_toks[N];
    static rec_t         recs[N];
    kimi_sched_params_t  p = params(24, 96, 48, 8);
    kimi_sched_stats_t   st;
    kimi_err_t           err;
    kimi_rng_t           g;
    env_t                e;
    uint32_t             next = 0, n_cancel = 0, n_checked = 0;
    int                  steps = 0, all_same = 1, once = 1, rc;

    kimi_rng_seed(&g, 2024);
    p.max_waiting = 40;
    env_init(&e, &p);

    while ((next < N || kimi_sched_has_work(e.s)) && steps < 20000) {
        /* a few arrivals per step; EFULL ones retry later */
        for (int a = 0; a < 3 && next < N; a++) {
            kimi_shm_sampling_t  sp;

            if (lens[next] == 0) {
                lens[next] = 1 + (uint32_t) (kimi_rng_next(&g) % 110);
                max_toks[next] = 1 + (uint32_t) (kimi_rng_next(&g) % 60);
                make_prompt(prompts[next], lens[next], 4000 + next);
            }

            sp = greedy(max_toks[next]);
            rc = add(&e, &recs[next], 10000 + next, prompts[next],
                     lens[next], &sp, &err);
            if (rc == KIMI_EFULL) {
                break;
            }

            next++;
        }

        for (uint32_t i = 0; i < next; i++) {
            uint64_t  r = kimi_rng_next(&g) % 1000;

            if (recs[i].finished) {
                continue;
            }

            if (r < 1) {
                kimi_sched_cancel(e.s, 10000 + i);
                n_cancel++;

            } else if (r < 60) {
                recs[i].blocked = !recs[i].blocked;
            }
        }

        if (kimi_sched_step(e.s, &err) < 0) {
            break;
        }

        if (++steps % 50 == 0) {
            for (uint32_t i = 0; i < next; i++) {
                recs[i].blocked = 0;       /* let paused ones drain */
            }
        }
    }

    for (uint32_t i = 0; i < N; i++) {
        once &= recs[i].finished == 1;

        if (recs[i].reason == KIMI_FINISH_LENGTH) {
            int32_t              ref[64];
            kimi_shm_sampling_t  sp = greedy(max_toks[i]);
            uint32_t             n = alone(prompts[i], lens[i], &sp, ref);

            if (!same(recs[i].out, recs[i].n_out, ref, n)) {
                printf("# seq %u: %u tokens, solo %u\n", i, recs[i].n_out, n);
                all_same = 0;
            }
            n_checked++;
        }
    }

    kimi_sched_stats(e.s, &st);
    ok(next == N && once && !e.sc.misuse && !e.tb->bad,
       "random load: %u sequences each ended once (%u cancels, %d steps)%s%s",
       N, n_cancel, steps, e.tb->bad ? ": " : "", e.tb->bad_msg);
    ok(all_same && n_checked > N / 3, "random load: %u completed outputs "
       "equal their solo runs (%llu preemptions)", n_checked,
       (unsigned long long) st.num_preemptions);
    ok(st.kv_blocks_used == 0 && st.num_running == 0 && st.num_waiting == 0,
       "random load: the cache is whole at the end");
    env_free(&e);
}


/* ---- sampler ----------------------------------------------------------- */

static kimi_shm_sampling_t
sp_base(float temperature)
{
    kimi_shm_sampling_t  sp = greedy(10);

    sp.temperature = temperature;
    sp.ignore_eos = 0;
    return sp;
}


static int
near(double a, double b, double tol)
{
    return fabs(a - b) <= tol;
}


static void
test_sampler(void)
{
    kimi_sampler_t       *smp;
    kimi_err_t            err;
    kimi_rng_t            rng;
    kimi_sample_req_t     req;
    kimi_sample_out_t     out;
    kimi_shm_sampling_t   sp;
    float                 lg[8];
    int32_t               toks[8];
    const float           pr[4] = { 0.5f, 0.3f, 0.15f, 0.05f };
    static const int32_t  eos[] = { 3 };

    kimi_sampler_init(&smp, 4, &err);
    kimi_rng_seed(&rng, 5);
    memset(&req, 0, sizeof(req));
    req.rng = &rng;
    req.tokens = toks;
    req.eos_ids = eos;
    req.n_eos = 1;

    /* greedy, ties to the lowest id */
    float  tie[4] = { 1.0f, 3.0f, 3.0f, -2.0f };
    sp = sp_base(0.0f);
    req.sampling = &sp;
    kimi_sampler_sample(smp, tie, &req, &out, &err);
    ok(out.tok.token == 1, "greedy: argmax, lowest id on ties");

    /* what a device argmax may answer alone (the cuda backend's sample) */
    {
        kimi_shm_sampling_t  q = sp_base(0.0f);
        kimi_sample_req_t    r = req;
        int                  plain;

        r.sampling = &q;
        q.logprobs = 1;
        plain = kimi_sample_is_plain_greedy(&r);
        q.top_logprobs = 2;
        plain = plain * 2 + kimi_sample_is_plain_greedy(&r);
        q.top_logprobs = 0;
        q.presence_penalty = 0.5f;
        plain = plain * 2 + kimi_sample_is_plain_greedy(&r);
        q.presence_penalty = 0.0f;
        q.n_logit_bias = 1;
        plain = plain * 2 + kimi_sample_is_plain_greedy(&r);
        q.n_logit_bias = 0;
        q.min_tokens = 3;
        r.n_output = 2;
        plain = plain * 2 + kimi_sample_is_plain_greedy(&r);
        r.n_output = 3;
        plain = plain * 2 + kimi_sample_is_plain_greedy(&r);
        q.temperature = 0.7f;
        plain = plain * 2 + kimi_sample_is_plain_greedy(&r);
        ok(plain == 0x42, "plain greedy: greedy with logprobs and with "
           "min_tokens reached; not with top_logprobs, penalties, "
           "logit_bias, min_tokens pending or a temperature (bits %#x)",
           plain);
    }

    /* what a device draw by temperature may answer alone */
    {
        kimi_shm_sampling_t  q = sp_base(0.7f);
        kimi_sample_req_t    r = req;
        int                  plain;

        r.sampling = &q;
        q.top_p = 1.0f;
        q.top_k = 0;
        q.min_p = 0.05f;
        plain = kimi_sample_is_plain_random(&r);
        q.top_p = 0.9f;
        plain = plain * 2 + kimi_sample_is_plain_random(&r);
        q.top_p = 1.0f;
        q.top_k = 40;
        plain = plain * 2 + kimi_sample_is_plain_random(&r);
        q.top_k = -1;
        q.logprobs = 1;
        plain = plain * 2 + kimi_sample_is_plain_random(&r);
        q.logprobs = 0;
        q.frequency_penalty = 0.3f;
        plain = plain * 2 + kimi_sample_is_plain_random(&r);
        q.frequency_penalty = 0.0f;
        q.json_object = 1;
        plain = plain * 2 + kimi_sample_is_plain_random(&r);
        q.json_object = 0;
        q.temperature = 0.0f;
        plain = plain * 2 + kimi_sample_is_plain_random(&r);
        q.temperature = 1.0f;
        plain = plain * 2 + kimi_sample_is_plain_random(&r);
        ok(plain == 0xe1, "plain random: temperature with min_p, top_p, "
           "top_k; not with logprobs, penalties, JSON mode, nor greedy "
           "(bits %#x)", plain);
    }

    /* raw logprobs of a known distribution */
    for (int i = 0; i < 4; i++) {
        lg[i] = logf(pr[i]) + 7.0f;
    }

    sp.logprobs = 1;
    sp.top_logprobs = 3;
    kimi_sampler_sample(smp, lg, &req, &out, &err);
    ok(out.tok.token == 0 && near(out.tok.logprob, log(0.5), 1e-5)
       && out.tok.n_top == 3 && out.tok.top_ids[1] == 1
       && near(out.tok.top_logprobs[2], log(0.15), 1e-5),
       "raw logprobs: log-softmax of the logits, top 3 in order");

    /* repetition penalty over prompt + output */
    float  rp[4] = { 2.0f, -1.0f, 0.5f, 1.5f };
    toks[0] = 0;
    toks[1] = 1;
    req.n_prompt = 1;
    req.n_output = 1;
    sp = sp_base(0.0f);
    sp.repetition_penalty = 2.0f;
    sp.logprobs = 1;
    sp.top_logprobs = 4;
    req.logprobs_mode = KIMI_LOGPROBS_PROCESSED;
    kimi_sampler_sample(smp, rp, &req, &out, &err);
    /* processed row: [1, -2, 0.5, 1.5] -> argmax 3 */
    double  lse = log(exp(1.0) + exp(-2.0) + exp(0.5) + exp(1.5));
    ok(out.tok.token == 3 && near(out.tok.logprob, 1.5 - lse, 1e-5)
       && out.tok.top_ids[1] == 0 && near(out.tok.top_logprobs[3], -2 - lse,
                                          1e-5),
       "repetition penalty: positive divided, negative multiplied");

    /* frequency and presence over the output only */
    float  fp[4] = { 1.0f, 1.0f, 1.0f, 1.0f };
    toks[0] = 2;          /* prompt: not penalised */
    toks[1] = 1;
    toks[2] = 1;
    toks[3] = 0;
    req.n_prompt = 1;
    req.n_output = 3;
    sp = sp_base(0.0f);
    sp.frequency_penalty = 0.5f;
    sp.presence_penalty = 0.25f;
    sp.logprobs = 1;
    sp.top_logprobs = 4;
    kimi_sampler_sample(smp, fp, &req, &out, &err);
    /* processed: [1-0.5-0.25, 1-1-0.25, 1, 1] = [0.25, -0.25, 1, 1] */
    lse = log(exp(0.25) + exp(-0.25) + 2 * exp(1.0));
    ok(out.tok.token == 2 && near(out.tok.top_logprobs[2], 0.25 - lse, 1e-5)
       && near(out.tok.top_logprobs[3], -0.25 - lse, 1e-5),
       "frequency x count and presence once, output tokens only");

    /* logit_bias before the penalties (vLLM's order), greedy included;
     * raw logprobs stay those of the model */
    float  lb[4] = { 1.0f, 2.0f, 0.5f, 1.5f };
    toks[0] = 2;
    req.n_prompt = 1;
    req.n_output = 0;
    sp = sp_base(0.0f);
    sp.n_logit_bias = 2;
    sp.logit_bias[0].token = 1;
    sp.logit_bias[0].bias = -100.0f;
    sp.logit_bias[1].token = 2;
    sp.logit_bias[1].bias = 1.5f;
    sp.repetition_penalty = 2.0f;
    sp.logprobs = 1;
    sp.top_logprobs = 1;
    req.logprobs_mode = KIMI_LOGPROBS_RAW;
    kimi_sampler_sample(smp, lb, &req, &out, &err);
    /* processed: [1, -98, (0.5+1.5)/2 = 1, 1.5] -> 3; biased then
     * penalised: the penalty would have kept id 2 at 0.25 + 1.5 = 1.75 */
    lse = log(exp(1.0) + exp(2.0) + exp(0.5) + exp(1.5));
    ok(out.tok.token == 3 && near(out.tok.logprob, 1.5 - lse, 1e-5),
       "logit_bias: added before the repetition penalty, raw logprobs"
       " unbiased");
    ok(kimi_sample_params_check(&sp, 4, &err) == 0,
       "logit_bias: valid entries pass the check");
    sp.logit_bias[1].token = 4;
    ok(kimi_sample_params_check(&sp, 4, &err) != 0
       && strstr(err.msg, "logit_bias token id 4") != NULL,
       "logit_bias: an id outside the vocabulary is refused: %s", err.msg);
    sp.logit_bias[1].token = 2;
    sp.logit_bias[1].bias = 101.0f;
    ok(kimi_sample_params_check(&sp, 4, &err) != 0,
       "logit_bias: a bias over 100 is refused");

    /* allowed_token_ids: only the listed ids can be drawn (with their
     * bias), raw logprobs stay the model's */
    sp = sp_base(0.0f);
    sp.allowed_only = 1;
    sp.n_logit_bias = 2;
    sp.logit_bias[0].token = 0;
    sp.logit_bias[0].bias = 0.0f;
    sp.logit_bias[1].token = 2;
    sp.logit_bias[1].bias = 0.0f;
    sp.logprobs = 1;
    kimi_sampler_sample(smp, lb, &req, &out, &err);
    lse = log(exp(1.0) + exp(2.0) + exp(0.5) + exp(1.5));
    ok(out.tok.token == 0 && near(out.tok.logprob, 1.0 - lse, 1e-5),
       "allowed_token_ids: greedy picks the best allowed id, raw logprob");
    {
        int  outside = 0;

        sp.temperature = 1.0f;
        for (int i = 0; i < 200; i++) {
            kimi_sampler_sample(smp, lb, &req, &out, &err);
            outside += out.tok.token != 0 && out.tok.token != 2;
        }
        ok(outside == 0, "allowed_token_ids: 200 draws, none outside");
    }
    ok(kimi_sample_params_check(&sp, 4, &err) == 0,
       "allowed_token_ids: a valid list passes the check");
    sp.n_logit_bias = 0;
    ok(kimi_sample_params_check(&sp, 4, &err) != 0
       && strstr(err.msg, "allowed_token_ids") != NULL,
       "allowed_token_ids: an empty list is refused: %s", err.msg);

    /* guided_choice as token ids: choices [1 0] and [2]; eos is id 3 */
    {
        int32_t            gw[] = { 2, 2, 1, 0, 1, 2 }, gt[4] = { 2, 1, 0, 0 };
        kimi_sample_req_t  saved = req;

        sp = sp_base(0.0f);
        memset(&req, 0, sizeof(req));
        req.sampling = &sp;
        req.tokens = gt;
        req.n_prompt = 1;
        req.rng = &rng;
        req.eos_ids = eos;
        req.n_eos = 1;
        req.guided = gw;
        req.n_guided = 6;
        kimi_sampler_sample(smp, lb, &req, &out, &err);
        ok(out.tok.token == 1, "guided_choice: the first token is a choice's "
           "first (1 over 2, eos and 3 masked)");
        req.n_output = 1;
        kimi_sampler_sample(smp, lb, &req, &out, &err);
        ok(out.tok.token == 0, "guided_choice: then that choice's next token");
        req.n_output = 2;
        kimi_sampler_sample(smp, lb, &req, &out, &err);
        ok(out.tok.token == 3, "guided_choice: a complete choice ends with eos");
        ok(kimi_sample_guided_check(gw, 6, 4, &err) == 0,
           "guided_choice words pass the check");
        gw[1] = 3;
        ok(kimi_sample_guided_check(gw, 6, 4, &err) != 0,
           "a malformed choice is refused: %s", err.msg);
        gw[1] = 2;
        gw[2] = 9;
        ok(kimi_sample_guided_check(gw, 6, 4, &err) != 0,
           "an id outside the vocabulary is refused: %s", err.msg);
        req = saved;
    }

    /* min_tokens masks eos (id 3) and stop ids */
    float  me[4] = { 0.0f, 1.0f, 0.5f, 9.0f };
    req.n_prompt = 1;
    req.n_output = 0;
    sp = sp_base(0.0f);
    sp.min_tokens = 1;
    sp.n_stop_ids = 1;
    sp.stop_ids[0] = 1;
    kimi_sampler_sample(smp, me, &req, &out, &err);
    ok(out.tok.token == 2, "min_tokens: eos and stop ids cannot be drawn");
    sp.ignore_eos = 1;
    kimi_sampler_sample(smp, me, &req, &out, &err);
    ok(out.tok.token == 3, "ignore_eos: eos is not masked");
    sp.ignore_eos = 0;
    sp.n_stop_ids = 0;
    sp.allowed_only = 1;                /* only eos allowed, min_tokens on */
    sp.n_logit_bias = 1;
    sp.logit_bias[0].token = 3;
    sp.logit_bias[0].bias = 0.0f;
    kimi_sampler_sample(smp, me, &req, &out, &err);
    ok(out.tok.token == 3, "every allowed id masked: the best allowed id, "
       "never one outside the list");

    /* distribution, top_k, top_p, min_p by drawing */
    req.n_output = 0;
    req.logprobs_mode = KIMI_LOGPROBS_RAW;
    for (int i = 0; i < 4; i++) {
        lg[i] = logf(pr[i]);
    }

    struct {
        const char *name;
        int         top_k;
        float       top_p, min_p, temp;
        double      want[4];
    } cases[] = {
        { "temperature 1", 0, 1.0f, 0.0f, 1.0f, { 0.5, 0.3, 0.15, 0.05 } },
        { "top_k 2", 2, 1.0f, 0.0f, 1.0f, { 0.625, 0.375, 0, 0 } },
        { "top_p 0.75", 0, 0.75f, 0.0f, 1.0f, { 0.625, 0.375, 0, 0 } },
        { "top_p 0.85", 0, 0.85f, 0.0f, 1.0f,
          { 0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0 } },
        { "min_p 0.2", 0, 1.0f, 0.2f, 1.0f,
          { 0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0 } },
        { "min_p 0.5 + top_k 3", 3, 1.0f, 0.5f, 1.0f,
          { 0.625, 0.375, 0, 0 } },
        { "temperature 0.5", 0, 1.0f, 0.0f, 0.5f,
          { 0.25 / 0.365, 0.09 / 0.365, 0.0225 / 0.365,
            0.0025 / 0.365 } },
    };

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int     counts[4] = { 0 }, n = 40000, good = 1;

        sp = sp_base(cases[c].temp);
        sp.top_k = cases[c].top_k;
        sp.top_p = cases[c].top_p;
        sp.min_p = cases[c].min_p;
        for (int i = 0; i < n; i++) {
            kimi_sampler_sample(smp, lg, &req, &out, &err);
            counts[out.tok.token]++;
        }

        for (int t = 0; t < 4; t++) {
            double  f = (double) counts[t] / n;

            good &= cases[c].want[t] == 0 ? counts[t] == 0
                                          : near(f, cases[c].want[t], 0.012);
        }

        ok(good, "%s: frequencies %.3f %.3f %.3f %.3f", cases[c].name,
           (double) counts[0] / n, (double) counts[1] / n,
           (double) counts[2] / n, (double) counts[3] / n);
    }

    /* processed logprobs report the truncated, renormalised distribution */
    sp = sp_base(1.0f);
    sp.top_k = 2;
    sp.logprobs = 1;
    sp.top_logprobs = 4;
    req.logprobs_mode = KIMI_LOGPROBS_PROCESSED;
    kimi_sampler_sample(smp, lg, &req, &out, &err);
    ok(out.tok.n_top == 2 && near(out.tok.top_logprobs[0], log(0.625), 1e-5),
       "processed logprobs: only kept tokens, renormalised");
    req.logprobs_mode = KIMI_LOGPROBS_RAW;
    kimi_sampler_sample(smp, lg, &req, &out, &err);
    ok(out.tok.n_top == 4 && near(out.tok.top_logprobs[0], log(0.5), 1e-5),
       "raw logprobs (vLLM default) ignore top_k");

    kimi_sampler_free(smp);
}


/* top_p and top_k selection against a full sort on random rows */
static int
cmp_desc(const void *a, const void *b)
{
    float  x = *(const float *) a, y = *(const float *) b;

    return (x < y) - (x > y);
}


static void
test_sampler_selection(void)
{
    enum { V = 2000 };
    kimi_sampler_t       *smp;
    kimi_err_t            err;
    kimi_rng_t            rng, g;
    kimi_sample_req_t     req;
    kimi_sample_out_t     out;
    kimi_shm_sampling_t   sp;
    static float          lg[V], sorted[V];
    int                   good_p = 1, good_k = 1;

    kimi_sampler_init(&smp, V, &err);
    kimi_rng_seed(&g, 99);
    memset(&req, 0, sizeof(req));
    req.rng = &rng;
    req.sampling = &sp;
    req.logprobs_mode = KIMI_LOGPROBS_PROCESSED;

    for (int c = 0; c < 60; c++) {
        double  z = 0, acc = 0, top_p = 0.3 + 0.6 * kimi_rng_uniform(&g);
        int     n_keep = 0;

        for (int i = 0; i < V; i++) {
            /* even rows: coarse values, so ties are common; odd rows: a
             * narrow continuous range, so one top_p bucket holds many */
            lg[i] = c % 2 == 0
                    ? (float) ((int) (kimi_rng_uniform(&g) * 40)) * 0.25f
                    : (float) (kimi_rng_uniform(&g) * 0.5);
            sorted[i] = lg[i];
        }

        qsort(sorted, V, sizeof(float), cmp_desc);
        for (int i = 0; i < V; i++) {
            z += exp(sorted[i] - sorted[0]);
        }

        while (n_keep < V && acc < top_p * z) {
            acc += exp(sorted[n_keep++] - sorted[0]);
        }

        sp = sp_base(1.0f);
        sp.top_p = (float) top_p;
        sp.logprobs = 1;
        sp.top_logprobs = 1;
        kimi_rng_seed(&rng, c);
        kimi_sampler_sample(smp, lg, &req, &out, &err);
        /* kept mass = exp(top logprob) relation: lp_top = v0 - log(kept) */
        double  kept = exp(sorted[0] - sorted[0] - out.tok.top_logprobs[0]);
        good_p &= near(kept, acc, 2e-5 * acc);

        int  k = 1 + (int) (kimi_rng_uniform(&g) * 50);
        double  zk = 0;
        int     nk = 0;

        for (int i = 0; i < V; i++) {
            if (sorted[i] >= sorted[k - 1]) {
                zk += exp(sorted[i] - sorted[0]);
                nk++;
            }
        }

        sp = sp_base(1.0f);
        sp.top_k = k;
        sp.logprobs = 1;
        sp.top_logprobs = 1;
        kimi_sampler_sample(smp, lg, &req, &out, &err);
        kept = exp(-out.tok.top_logprobs[0]);
        good_k &= near(kept, zk, 2e-5 * zk)
                  && lg[out.tok.token] >= sorted[k - 1];
    }

    ok(good_p, "top_p keeps exactly the sorted-prefix mass (60 random rows)");
    ok(good_k, "top_k keeps the k largest and their ties (60 random rows)");
    kimi_sampler_free(smp);
}


static void
test_sampler_speed(void)
{
    enum { V = 163840 };
    kimi_sampler_t       *smp;
    kimi_err_t            err;
    kimi_rng_t            rng, g;
    kimi_sample_req_t     req;
    kimi_sample_out_t     out;
    kimi_shm_sampling_t   sp;
    static float          lg[V];
    struct timespec       t0, t1;
    double                us_greedy, us_topp;
    int                   n = 50;

    kimi_sampler_init(&smp, V, &err);
    kimi_rng_seed(&g, 3);
    kimi_rng_seed(&rng, 4);
    for (int i = 0; i < V; i++) {
        lg[i] = (float) (kimi_rng_uniform(&g) * 12.0 - 6.0);
    }

    memset(&req, 0, sizeof(req));
    req.rng = &rng;
    req.sampling = &sp;

    sp = sp_base(0.0f);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        kimi_sampler_sample(smp, lg, &req, &out, &err);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    us_greedy = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec))
                / 1e3 / n;

    sp = sp_base(0.8f);
    sp.top_p = 0.9f;
    sp.top_k = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        kimi_sampler_sample(smp, lg, &req, &out, &err);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    us_topp = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec))
              / 1e3 / n;

    printf("# host sampler, vocab 163840: greedy %.0f us, "
           "temperature+top_p 0.9 %.0f us per row\n", us_greedy, us_topp);
    ok(us_topp < 20000, "top_p over 163840 logits takes %.0f us (< 20 ms)",
       us_topp);
    kimi_sampler_free(smp);
}


int
main(void)
{
    test_kv();
    test_prefix_kv();
    test_batch_invariance();
    test_chunked_prefill();
    test_preemption();
    test_prompt_logprobs();
    test_seeds();
    test_cancel();
    test_limits();
    test_stops();
    test_backpressure();
    test_errors();
    test_fifo_decode_first();
    test_random_load();
    test_sampler();
    test_prefix_sched();
    test_sampler_selection();
    test_sampler_speed();

    printf("1..%d\n", test_n);
    return test_failed != 0;
}
