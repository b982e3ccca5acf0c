/*
 * Expert parallelism of the CUDA backend against one GPU and the fp32
 * CPU oracle, on the same dummy weights (needs >= 2 GPUs).
 *
 * Owns:   the engine-level EP check of t/gpu/ep-run (step "engine"): W
 *         processes, one per GPU, each a cuda backend in one expert-
 *         parallel group (the serve path's: group.h for the step's token
 *         counts and the NCCL id, NCCL for the rows), rank r holding
 *         routed experts [r E/W, (r+1) E/W) only.
 * Never:  passes without comparing: every claim is a number against a
 *         stated tolerance.
 *
 *   ep_check --model DIR [--hf-overrides JSON] [--prefill 40]
 *            [--decode 8] [--kv bf16|fp8] [--ranks 2]
 *            [--tp [--dcp] [--tp-ep] | --pp]
 *
 * Build (where libjansson-dev is; the GPU machine may lack it), after
 * `make engine` with nvcc:
 *   cc -std=c11 -D_GNU_SOURCE -O2 -DKIMI_HAVE_CUDA -I$CUDA_HOME/include \
 *      t/gpu/ep_check.c build/libkimi.a -Wl,-Bstatic -ljansson -lpcre2-8 \
 *      -Wl,-Bdynamic -L$CUDA_HOME/lib64 -lcublasLt -lcublas \
 *      -lcudart_static -lnccl -lstdc++ -lm -lpthread -ldl -lrt \
 *      -o build/ep_check
 *
 * --tp checks tensor parallelism the same way instead: rank r holds heads
 * [r H/W, (r+1) H/W) and 1/W of every MLP width, the followers take rank
 * 0's steps through the step channel (kimi_backend_cuda_follow), as the
 * serve path's followers do; no "at once" phase (one batch per group).
 *
 * --tp --tp-ep: the tensor-parallel ranks split the routed experts whole
 * (vLLM's -tp N --enable-expert-parallel): rank r holds experts
 * [r E/W, (r+1) E/W) at full width, attention and the dense and shared
 * MLPs by width; every rank routes every token and the all-reduce sums.
 *
 * --tp --dcp adds decode context parallelism of the same size: rank r
 * holds the latent rows of positions p % W == r (blocks of 64 rows a rank,
 * 64 W tokens a table entry) and the attention partials are merged across
 * ranks; compared with one GPU and the oracle as TP alone.  --dcp=D (D
 * dividing W): runs of D consecutive ranks split the cache, each run with
 * a communicator of its own.
 *
 * --pp checks pipeline parallelism: rank r is stage r, holding layers
 * kimi_model_pp_layers(r, W) (rank 0 also the embedding and lm_head), the
 * followers take rank 0's steps as under --tp; the hops carry fp32 rows
 * and nothing is re-rounded, so the logits must equal one GPU's bit for
 * bit, besides meeting the tolerance below.
 *
 * Rank 0 first runs the script (a prefill, then greedy decode steps fed
 * the oracle's choice) on the fp32-activation cpu (the oracle), the cpu
 * with FP8 activations (the yardstick of what FP8 costs) and one GPU
 * holding every expert; then on its EP backend, twice: alone (the other
 * ranks step with no tokens of their own and serve their experts), and
 * with every rank running the same script at once (each rank sends its
 * logits to rank 0 through the group).
 *
 * Tolerance (as t/gpu/engine_check.c, whose comment says why): the median
 * over rows of (1 - cos) against the oracle is at most 1.5x the cpu FP8
 * path's, and no row falls below cos 0.95.  EP differs from one GPU by
 * the bf16 return of each rank's expert sums and the shared expert run as
 * a dense MLP: a rounding difference, which FP8 re-quantisation then
 * spreads like any other.  Ranks running the same tokens at once must
 * agree bit for bit (same routing, same peer order of the sums).
 */

#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cuda_runtime_api.h>

#include "../../engine/backend/backend.h"
#include "../../engine/backend/cpu/backend_cpu.h"
#include "../../engine/backend/cuda/cuda_backend.h"
#include "../../engine/common/kimi_log.h"
#include "../../engine/model/model.h"
#include "../../engine/parallel/group.h"

#define TOL_MEDIAN_X 1.5
#define TOL_COS_ROW  0.95
#define MAX_STEPS    16

static int  n_test, n_fail;


static void
ok(int cond, const char *fmt, ...)
{
    va_list  ap;

    printf("%s %d - ", cond ? "ok" : "not ok", ++n_test);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    n_fail += !cond;
}


static double
now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}


/* progress on stderr, unbuffered: a stuck rank shows where */
static void
note(const char *fmt, ...)
{
    va_list  ap;

    fprintf(stderr, "[%.3f pid %d] ", now(), (int) getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}


static double
cosine(const float *a, const float *b, uint32_t V)
{
    double  dot = 0, na = 0, nb = 0;

    for (uint32_t i = 0; i < V; i++) {
        dot += (double) a[i] * b[i];
        na += (double) a[i] * a[i];
        nb += (double) b[i] * b[i];
    }

    return dot / sqrt(na * nb + 1e-30);
}


static int
argmax(const float *v, uint32_t n)
{
    int  best = 0;

    for (uint32_t i = 1; i < n; i++) {
        if (v[i] > v[best]) {
            best = (int) i;
        }
    }

    return best;
}


static double
median(double *v, int n)
{
    for (int i = 1; i < n; i++) {
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double  t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    }

    return n == 0 ? 0 : (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}


/* the script's step k: the prefill (k = 0) or a decode step */
static void
script_seq(kimi_batch_seq_t *s, uint64_t id, const int32_t *toks, uint32_t P,
    uint32_t k, const uint32_t *bt)
{
    uint32_t  pos = k == 0 ? 0 : P + k - 1;

    memset(s, 0, sizeof(*s));
    s->seq_id = id;
    s->tokens = toks + pos;
    s->n_tokens = k == 0 ? P : 1;
    s->pos = pos;
    s->block_table = bt;
    s->n_blocks = 8;
    s->want_logits = 1;
}


static const float *
forward(kimi_backend_t *be, const kimi_batch_seq_t *s, uint32_t n,
    const char *what)
{
    kimi_batch_t  batch = { n, s };
    kimi_err_t    err;
    uint32_t      rows, V;

    if (be->ops->forward(be, &batch, &err) != 0) {
        fprintf(stderr, "%s forward: %s\n", what, err.msg);
        exit(1);
    }

    return n ? be->ops->logits(be, &rows, &V) : NULL;
}


static int  tp_mode, pp_mode, dcp_mode, tp_ep_mode;


static kimi_backend_t *
cuda_backend(kimi_model_t *m, int device, kimi_group_t *g, int kv_fp8)
{
    kimi_backend_cuda_params_t  p = kimi_backend_cuda_default_params();
    kimi_kv_params_t            kp;
    kimi_backend_t             *be;
    kimi_err_t                  err;
    uint32_t                    nb;

    p.device = device;
    p.ep = tp_mode || pp_mode ? NULL : g;
    p.tp = tp_mode ? g : NULL;
    p.pp = pp_mode ? g : NULL;
    p.dcp = !dcp_mode || g == NULL ? 1
            : dcp_mode > 0 ? (uint32_t) dcp_mode : kimi_group_world(g);
    p.max_batched_tokens = 512;
    p.max_model_len = 1024;

    memset(&kp, 0, sizeof(kp));
    kp.block_size = 64 * p.dcp;
    kp.max_blocks = 32;
    kp.dtype = kv_fp8 ? KIMI_KV_DTYPE_FP8 : KIMI_KV_DTYPE_AUTO;
    kp.gpu_memory_utilization = 0.9f;

    if (kimi_backend_cuda_init_params(&be, m, &p, &err) != 0
        || be->ops->kv_init(be, &kp, &nb, &err) != 0)
    {
        fprintf(stderr, "cuda backend (device %d%s): %s\n", device,
                g ? (tp_mode ? ", tensor parallel" : pp_mode
                     ? ", pipeline parallel" : ", expert parallel") : "",
                err.msg);
        if (g != NULL) {
            kimi_group_abort(g, err.msg);
        }
        exit(1);
    }

    return be;
}


/* a follower rank: the script's steps, alone (idle) then at once */
static int
follower(kimi_group_t *g, kimi_model_params_t *mp, uint32_t P, uint32_t ND,
    int kv_fp8)
{
    uint32_t           r = kimi_group_rank(g), W = kimi_group_world(g);
    kimi_model_t      *m;
    kimi_backend_t    *be;
    kimi_err_t         err;
    kimi_batch_seq_t   s;
    int32_t           *toks;
    uint32_t           bt[8], V;
    size_t             bytes[KIMI_GROUP_MAX_RANKS];
    const float       *l;

    note("rank %u: loading experts [%u, %u), layers [%u, %u)", r,
         mp->expert_first, mp->expert_last, mp->layer_first, mp->layer_last);
    if (kimi_model_load(&m, mp, &err) != 0) {
        kimi_group_abort(g, err.msg);
        fprintf(stderr, "rank %u model: %s\n", r, err.msg);
        return 1;
    }

    V = m->cfg.vocab_size;
    note("rank %u: cuda backend on device %u", r, r);
    be = cuda_backend(m, (int) r, g, kv_fp8);
    note("rank %u: up, serving rank 0's steps", r);

    if (tp_mode || pp_mode) {
        if (kimi_backend_cuda_followers_ready(be, &err) != 0
            || kimi_backend_cuda_follow(be, &err) != 0)
        {
            fprintf(stderr, "rank %u: %s\n", r, err.msg);
            return 1;
        }
        note("rank %u: the leader stopped", r);
        be->ops->free(be);
        kimi_model_free(m);
        return 0;
    }

    /* alone: rank 0 runs the script, this rank serves its experts */
    for (uint32_t k = 0; k <= ND; k++) {
        forward(be, NULL, 0, "idle");
    }

    note("rank %u: idle steps done", r);

    /* at once: the same script; the tokens come from rank 0 */
    toks = calloc(P + ND + 1, sizeof(int32_t));
    for (uint32_t i = 0; i < 8; i++) {
        bt[i] = 16 + i;
    }

    for (uint32_t k = 0; k <= ND; k++) {
        const void  *in;
        size_t       n;

        memset(bytes, 0, sizeof(bytes));
        if (kimi_group_exchange(g, 0x51, bytes, &err) != 0) {
            fprintf(stderr, "rank %u: %s\n", r, err.msg);
            return 1;
        }
        in = kimi_group_recvbuf(g, 0, &n);
        memcpy(toks, in, n);

        script_seq(&s, 100 + r, toks, P, k, bt);
        l = forward(be, &s, 1, "ep (at once)");

        for (uint32_t p = 0; p < W; p++) {
            bytes[p] = p == 0 ? (size_t) V * sizeof(float) : 0;
        }
        memcpy(kimi_group_sendbuf(g, 0), l, (size_t) V * sizeof(float));
        if (kimi_group_exchange(g, 0x52, bytes, &err) != 0) {
            fprintf(stderr, "rank %u: %s\n", r, err.msg);
            return 1;
        }
    }

    note("rank %u: done", r);
    be->ops->free(be);
    kimi_model_free(m);
    return 0;
}


int
main(int argc, char **argv)
{
    static const struct option  opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "hf-overrides", required_argument, NULL, 'o' },
        { "prefill", required_argument, NULL, 'p' },
        { "decode", required_argument, NULL, 'd' },
        { "kv", required_argument, NULL, 'k' },
        { "ranks", required_argument, NULL, 'r' },
        { "tp", no_argument, NULL, 't' },
        { "pp", no_argument, NULL, 'P' },
        { "dcp", optional_argument, NULL, 'D' },
        { "tp-ep", no_argument, NULL, 'X' },
        { NULL, 0, NULL, 0 }
    };

    kimi_model_params_t         mp = kimi_model_default_params();
    kimi_backend_cpu_params_t   cp8 = { 0, -1, NULL, NULL, NULL, NULL };
    kimi_backend_cpu_params_t   cp32 = { 0, 1, NULL, NULL, NULL, NULL };
    kimi_kv_params_t            kp;
    kimi_model_t               *m = NULL;
    kimi_backend_t             *cpu8 = NULL, *cpu32 = NULL, *one, *ep;
    kimi_group_t               *g;
    kimi_err_t                  err;
    kimi_batch_seq_t            s;
    uint32_t                    P = 40, ND = 8, W = 2, V, E, nb, bt[8];
    uint32_t                    bt0[8];
    int                         kv_fp8 = 0, c, n_dev = 0;
    int32_t                    *toks;
    float                      *oracle, *single;
    double                      e8[MAX_STEPS], e1[MAX_STEPS];
    double                      ea[MAX_STEPS], eb[MAX_STEPS];
    double                      worst_a = 1, worst_b = 1, worst_1 = 1;
    double                      min_ep_one = 1, max_diff_one = 0;
    int                         agree = 0, bitwise = 1, same_as_one = 1;
    size_t                      seg, bytes[KIMI_GROUP_MAX_RANKS];
    void                       *mem;
    pid_t                       kids[KIMI_GROUP_MAX_RANKS];
    int                         status, rc = 0;
    double                      t0;

    mp.load_format = "dummy";
    mp.seed = 7;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': mp.dir = optarg; break;
        case 'o': mp.hf_overrides = optarg; break;
        case 'p': P = (uint32_t) atoi(optarg); break;
        case 'd': ND = (uint32_t) atoi(optarg); break;
        case 'k': kv_fp8 = strcmp(optarg, "fp8") == 0; break;
        case 'r': W = (uint32_t) atoi(optarg); break;
        case 't': tp_mode = 1; break;
        case 'P': pp_mode = 1; break;
        case 'D': dcp_mode = optarg != NULL ? atoi(optarg) : -1; break;
        case 'X': tp_ep_mode = 1; break;
        default:
            return 2;
        }
    }

    if (mp.dir == NULL || P == 0 || P > 256 || ND + 1 > MAX_STEPS || W < 2
        || W > 8 || (tp_mode && pp_mode) || ((dcp_mode || tp_ep_mode)
                                             && !tp_mode))
    {
        fprintf(stderr, "usage: ep_check --model DIR [--hf-overrides JSON]"
                " [--prefill N<=256] [--decode N<16] [--kv bf16|fp8]"
                " [--ranks 2..8]\n");
        return 2;
    }

    /* a failed rank leaves the others at a barrier or in NCCL: bounded */
    alarm(480);
    kimi_log_set_level(KIMI_LOG_INFO);

    /* the group is made before any CUDA call, as kimi-engine's launcher
     * does, and the ranks fork from here */
    seg = (size_t) 1 << 20;          /* a logits row of 163840 floats */
    mem = mmap(NULL, kimi_group_bytes(W, seg), PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    kimi_group_init(mem, W, seg);

    for (uint32_t r = 1; r < W; r++) {
        kids[r] = fork();

        if (kids[r] == 0) {
            kimi_model_config_t  cfg;

            if (kimi_group_attach(&g, mem, r, &err) != 0
                || kimi_model_config_load(&cfg, mp.dir, mp.hf_overrides,
                                          &err) != 0)
            {
                kimi_group_fail(mem, err.msg);
                _exit(1);
            }
            if (tp_mode) {
                mp.tp_rank = r;
                mp.tp_size = W;
                if (tp_ep_mode) {
                    mp.tp_experts_whole = 1;
                    mp.expert_first = r * (cfg.n_routed_experts / W);
                    mp.expert_last = mp.expert_first
                                     + cfg.n_routed_experts / W;
                }
            } else if (pp_mode) {
                kimi_model_pp_layers(&cfg, r, W, &mp.layer_first,
                                     &mp.layer_last);
            } else {
                mp.expert_first = r * (cfg.n_routed_experts / W);
                mp.expert_last = mp.expert_first + cfg.n_routed_experts / W;
            }
            _exit(follower(g, &mp, P, ND, kv_fp8));
        }
    }

    setvbuf(stdout, NULL, _IOLBF, 0);

    if (kimi_group_attach(&g, mem, 0, &err) != 0) {
        fprintf(stderr, "group: %s\n", err.msg);
        return 1;
    }

    /* a follower that dies fails the group instead of leaving rank 0 at a
     * barrier (kimi-engine's launcher does this for its ranks) */
    {
        int       pids[KIMI_GROUP_MAX_RANKS];
        uint32_t  ranks[KIMI_GROUP_MAX_RANKS];

        for (uint32_t r = 1; r < W; r++) {
            pids[r - 1] = kids[r];
            ranks[r - 1] = r;
        }
        if (kimi_group_watch(g, pids, W - 1, ranks, &err) != 0) {
            fprintf(stderr, "group: %s\n", err.msg);
            return 1;
        }
    }

    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < (int) W) {
        printf("1..0 # SKIP %d GPUs, %u needed\n", n_dev, W);
        kimi_group_fail(mem, "rank 0: not enough GPUs");
        return 0;
    }

    t0 = now();

    if (kimi_model_load(&m, &mp, &err) != 0) {
        kimi_group_fail(mem, err.msg);
        fprintf(stderr, "model: %s\n", err.msg);
        return 1;
    }

    V = m->cfg.vocab_size;
    E = m->cfg.n_routed_experts;
    printf("# model: %u layers, hidden %u, %u experts top-%u, vocab %u, "
           "dummy weights in %.1f s; %u %s ranks (%u %s each), kv %s\n",
           m->cfg.num_hidden_layers, m->cfg.hidden_size, E,
           m->cfg.num_experts_per_tok, V, now() - t0, W,
           tp_mode ? "tensor-parallel" : pp_mode ? "pipeline-parallel"
                                               : "expert-parallel",
           tp_mode ? m->cfg.num_attention_heads / W : pp_mode
           ? (m->cfg.num_hidden_layers + W - 1) / W : E / W,
           tp_mode ? "heads" : pp_mode ? "layers at most" : "experts",
           kv_fp8 ? "fp8" : "bf16");

    if (kimi_backend_cpu_init_params(&cpu8, m, &cp8, &err) != 0
        || kimi_backend_cpu_init_params(&cpu32, m, &cp32, &err) != 0)
    {
        kimi_group_fail(mem, err.msg);
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }

    memset(&kp, 0, sizeof(kp));
    kp.block_size = 64;
    kp.max_blocks = 32;
    kp.budget_bytes = 256ull << 20;

    if (cpu8->ops->kv_init(cpu8, &kp, &nb, &err) != 0
        || cpu32->ops->kv_init(cpu32, &kp, &nb, &err) != 0)
    {
        kimi_group_fail(mem, err.msg);
        fprintf(stderr, "cpu kv: %s\n", err.msg);
        return 1;
    }

    toks = calloc(P + ND + 1, sizeof(int32_t));
    oracle = malloc((size_t) (ND + 1) * V * sizeof(float));
    single = malloc((size_t) (ND + 1) * V * sizeof(float));

    for (uint32_t i = 0; i < P; i++) {
        toks[i] = (int32_t) ((i * 2654435761u + 12345u) % V);
    }
    for (uint32_t i = 0; i < 8; i++) {
        bt0[i] = 7 - i;                   /* not in order: tables matter */
        bt[i] = 8 + i;
    }

    /* the oracle's script (its greedy choices feed every backend) */
    note("rank 0: model loaded; one-GPU backend");
    one = cuda_backend(m, 0, NULL, kv_fp8);
    note("rank 0: oracle, cpu fp8 and one GPU over the script");

    for (uint32_t k = 0; k <= ND; k++) {
        const float  *l;

        script_seq(&s, 1, toks, P, k, bt0);
        l = forward(cpu32, &s, 1, "cpu fp32");
        memcpy(oracle + (size_t) k * V, l, (size_t) V * sizeof(float));
        toks[P + k] = argmax(l, V);
        l = forward(cpu8, &s, 1, "cpu fp8");
        e8[k] = 1 - cosine(oracle + (size_t) k * V, l, V);
        l = forward(one, &s, 1, "one gpu");
        memcpy(single + (size_t) k * V, l, (size_t) V * sizeof(float));
        e1[k] = 1 - cosine(oracle + (size_t) k * V, l, V);
        worst_1 = 1 - e1[k] < worst_1 ? 1 - e1[k] : worst_1;
    }

    one->ops->free(one);
    cpu8->ops->free(cpu8);
    cpu32->ops->free(cpu32);

    /* the EP backend: rank 0 holds its share of the experts (every expert
     * is loaded; it uploads its own); the TP one: rank 0's shard */
    if (tp_mode || pp_mode) {
        kimi_model_params_t  sp = mp;

        if (tp_mode) {
            sp.tp_rank = 0;
            sp.tp_size = W;
            if (tp_ep_mode) {
                sp.tp_experts_whole = 1;
                sp.expert_first = 0;
                sp.expert_last = m->cfg.n_routed_experts / W;
            }
        } else {
            kimi_model_pp_layers(&m->cfg, 0, W, &sp.layer_first,
                                 &sp.layer_last);
        }
        kimi_model_free(m);
        if (kimi_model_load(&m, &sp, &err) != 0) {
            kimi_group_fail(mem, err.msg);
            fprintf(stderr, "model shard: %s\n", err.msg);
            return 1;
        }
    }
    note("rank 0: %s backend", tp_mode ? "TP" : pp_mode ? "PP" : "EP");
    ep = cuda_backend(m, 0, g, kv_fp8);
    if ((tp_mode || pp_mode)
        && kimi_backend_cuda_followers_ready(ep, &err) != 0)
    {
        fprintf(stderr, "followers: %s\n", err.msg);
        return 1;
    }
    note("rank 0: EP up; steps alone");
    printf("# backends up in %.1f s\n", now() - t0);

    /* alone */
    for (uint32_t k = 0; k <= ND; k++) {
        const float  *l;
        double        c1;

        script_seq(&s, 1, toks, P, k, bt0);
        note("rank 0: alone step %u", k);
        l = forward(ep, &s, 1, "ep (alone)");
        ea[k] = 1 - cosine(oracle + (size_t) k * V, l, V);
        c1 = cosine(single + (size_t) k * V, l, V);
        same_as_one &= memcmp(single + (size_t) k * V, l,
                              (size_t) V * sizeof(float)) == 0;
        for (uint32_t i = 0; i < V; i++) {
            double  d = fabs((double) l[i] - single[(size_t) k * V + i]);

            max_diff_one = d > max_diff_one ? d : max_diff_one;
        }
        min_ep_one = c1 < min_ep_one ? c1 : min_ep_one;
        worst_a = 1 - ea[k] < worst_a ? 1 - ea[k] : worst_a;
        agree += argmax(l, V) == toks[P + k];
        printf("# %s pos %u: parallel vs oracle cos %.6f, one GPU vs oracle"
               " %.6f, cpu fp8 vs oracle %.6f; parallel vs one GPU cos"
               " %.6f\n",
               k ? "decode" : "prefill", s.pos, 1 - ea[k], 1 - e1[k],
               1 - e8[k], c1);
    }

    note("rank 0: steps at once");

    /* at once: every rank runs the script; rank 0 hands out the tokens */
    for (uint32_t k = 0; !tp_mode && !pp_mode && k <= ND; k++) {
        const float  *l;
        float        *mine = malloc((size_t) V * sizeof(float));

        for (uint32_t p = 0; p < W; p++) {
            bytes[p] = (size_t) (P + ND + 1) * sizeof(int32_t);
            memcpy(kimi_group_sendbuf(g, p), toks, bytes[p]);
        }
        if (kimi_group_exchange(g, 0x51, bytes, &err) != 0) {
            fprintf(stderr, "group: %s\n", err.msg);
            return 1;
        }

        script_seq(&s, 100, toks, P, k, bt);
        l = forward(ep, &s, 1, "ep (at once)");
        memcpy(mine, l, (size_t) V * sizeof(float));
        eb[k] = 1 - cosine(oracle + (size_t) k * V, mine, V);
        worst_b = 1 - eb[k] < worst_b ? 1 - eb[k] : worst_b;

        memset(bytes, 0, sizeof(bytes));
        if (kimi_group_exchange(g, 0x52, bytes, &err) != 0) {
            fprintf(stderr, "group: %s\n", err.msg);
            return 1;
        }
        for (uint32_t p = 1; p < W; p++) {
            size_t       n;
            const float *peer = kimi_group_recvbuf(g, p, &n);

            bitwise &= n == (size_t) V * sizeof(float)
                       && memcmp(peer, mine, n) == 0;
        }
        free(mine);
    }

    {
        double  m8 = median(e8, (int) ND + 1), m1 = median(e1, (int) ND + 1);
        double  ma = median(ea, (int) ND + 1), mb = median(eb, (int) ND + 1);
        /* DCP inside TP: "TP+DCP2=4" */
        char        dcp_kind[32];
        snprintf(dcp_kind, sizeof(dcp_kind), dcp_mode > 0 ? "TP+DCP%d" : "TP+DCP",
                 dcp_mode);
        const char *kind = dcp_mode ? dcp_kind : tp_ep_mode ? "TP+EP"
                           : tp_mode ? "TP" : pp_mode ? "PP" : "EP";

        printf("# median (1 - cos) vs the fp32-activation cpu: cpu fp8 %.2e,"
               " one GPU %.2e, %s=%u %.2e, every rank at once %.2e; worst"
               " row %s vs one GPU cos %.6f\n", m8, m1, kind, W, ma,
               tp_mode || pp_mode ? 0.0 : mb, kind, min_ep_one);
        printf("# %s=%u vs one GPU: max |logit diff| %.3g, bit for bit %s\n",
               kind, W, max_diff_one, same_as_one ? "yes" : "no");
        ok(m1 <= TOL_MEDIAN_X * m8, "one GPU: median (1 - cos) %.2e <= %.1f"
           " x cpu fp8's %.2e (worst row cos %.6f)", m1, TOL_MEDIAN_X, m8,
           worst_1);
        ok(ma <= TOL_MEDIAN_X * m8 && worst_a >= TOL_COS_ROW, "%s=%u, rank"
           " 0's batch: median (1 - cos) %.2e <= %.1f x cpu fp8's %.2e,"
           " every row cos >= %.2f (worst %.6f)", kind, W, ma, TOL_MEDIAN_X,
           m8, TOL_COS_ROW, worst_a);
        if (pp_mode) {
            ok(same_as_one, "PP=%u: logits equal one GPU's bit for bit at"
               " every step (max |diff| %.3g)", W, max_diff_one);
        }
        if (!tp_mode && !pp_mode) {
            ok(mb <= TOL_MEDIAN_X * m8 && worst_b >= TOL_COS_ROW, "EP=%u,"
               " every rank at once: median (1 - cos) %.2e <= %.1f x cpu"
               " fp8's %.2e, every row cos >= %.2f (worst %.6f)", W, mb,
               TOL_MEDIAN_X, m8, TOL_COS_ROW, worst_b);
            ok(bitwise, "EP=%u: every rank's logits of the same tokens"
               " equal rank 0's bit for bit", W);
        }
        printf("# greedy: %s's argmax = the oracle's at %d of %u steps\n",
               kind, agree, ND + 1);
    }

    ep->ops->free(ep);
    kimi_model_free(m);

    for (uint32_t r = 1; r < W; r++) {
        if (waitpid(kids[r], &status, 0) != kids[r] || !WIFEXITED(status)
            || WEXITSTATUS(status) != 0)
        {
            rc = 1;
        }
    }
    ok(rc == 0, "every follower rank ran its steps and exited 0");

    printf("1..%d\n", n_test);
    return n_fail ? 1 : 0;
}
