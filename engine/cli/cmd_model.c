/*
 * Model commands: gen-tiny-model, score, generate.
 *
 * Owns:   their flags and output formats; a one-sequence driver over the
 *         CPU backend (contiguous block table, prefill then decode).
 * Never:  touches shm or nginx; these run a model directory directly.
 */

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "commands.h"
#include "../common/kimi_err.h"
#include "../model/model.h"
#include "../model/tiny_model.h"
#include "../backend/cpu/backend_cpu.h"
#include "../sample/sample.h"
#include "../text/kimi_text.h"



typedef struct {
    const char  *model_dir;
    const char  *load_format;
    const char  *hf_overrides;
    int          quantize_fp8;            /* --quantization fp8 */
    uint32_t     n_threads;
    int          act_fp32;                /* -1: KIMI_CPU_ACT */
    int          kv_dtype;
    uint32_t     block_size;
} kimi_run_opts_t;

typedef struct {
    kimi_model_t     *model;
    kimi_backend_t   *be;
    uint32_t         *blocks;             /* contiguous table */
    uint32_t          n_blocks;
    uint32_t          block_size;
} kimi_runner_t;


static double
kimi_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}


static int
kimi_runner_init(kimi_runner_t *r, const kimi_run_opts_t *o,
    uint32_t max_tokens, kimi_err_t *err)
{
    kimi_model_params_t        mp = kimi_model_default_params();
    kimi_backend_cpu_params_t  bp = { o->n_threads, o->act_fp32, NULL, NULL,
                                       NULL, NULL };
    kimi_kv_params_t           kp;
    uint32_t                   n;
    int                        rc;

    memset(r, 0, sizeof(*r));
    mp.dir = o->model_dir;
    mp.load_format = o->load_format;
    mp.hf_overrides = o->hf_overrides;
    mp.quantize_fp8 = o->quantize_fp8;

    if ((rc = kimi_model_load(&r->model, &mp, err)) != 0) {
        return rc;
    }

    if ((rc = kimi_backend_cpu_init_params(&r->be, r->model, &bp, err)) != 0)
    {
        return rc;
    }

    memset(&kp, 0, sizeof(kp));
    kp.block_size = o->block_size;
    kp.dtype = o->kv_dtype;
    r->block_size = o->block_size;
    kp.max_blocks = (max_tokens + o->block_size - 1) / o->block_size;
    kp.budget_bytes = (uint64_t) kp.max_blocks * o->block_size
                      * r->model->cfg.num_hidden_layers
                      * (r->model->cfg.kv_lora_rank
                         + r->model->cfg.qk_rope_head_dim) * 4
                      + (1 << 20);

    if ((rc = r->be->ops->kv_init(r->be, &kp, &n, err)) != 0) {
        return rc;
    }

    r->blocks = malloc(n * sizeof(uint32_t));

    if (r->blocks == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "block table");
    }

    for (uint32_t i = 0; i < n; i++) {
        r->blocks[i] = n - 1 - i;         /* reversed: exercises paging */
    }

    r->n_blocks = n;
    return 0;
}


static void
kimi_runner_free(kimi_runner_t *r)
{
    if (r->be != NULL) {
        r->be->ops->free(r->be);
    }

    kimi_model_free(r->model);
    free(r->blocks);
}


/* Runs tokens at pos; logits of the last (or all) tokens. */
static int
kimi_runner_step(kimi_runner_t *r, const int32_t *tokens, uint32_t n,
    uint32_t pos, const float **logits, kimi_err_t *err)
{
    kimi_batch_seq_t  s;
    kimi_batch_t      b = { 1, &s };
    uint32_t          rows, vocab;
    int               rc;

    memset(&s, 0, sizeof(s));
    s.seq_id = 1;
    s.tokens = tokens;
    s.n_tokens = n;
    s.pos = pos;
    s.block_table = r->blocks;
    s.n_blocks = r->n_blocks;
    s.want_logits = 1;

    if ((uint64_t) pos + n > (uint64_t) r->n_blocks * r->block_size) {
        return kimi_err_set(err, KIMI_EINVAL, "sequence longer than the "
                            "cache (%u tokens)", r->n_blocks * r->block_size);
    }

    if ((rc = r->be->ops->forward(r->be, &b, err)) != 0) {
        return rc;
    }

    *logits = r->be->ops->logits(r->be, &rows, &vocab);
    return 0;
}


static int
kimi_parse_kv_dtype(const char *s, int *out)
{
    if (strcmp(s, "bf16") == 0 || strcmp(s, "auto") == 0) {
        *out = KIMI_KV_DTYPE_AUTO;
    } else if (strcmp(s, "fp8") == 0) {
        *out = KIMI_KV_DTYPE_FP8;
    } else if (strcmp(s, "f32") == 0 || strcmp(s, "fp32") == 0) {
        *out = KIMI_KV_DTYPE_F32;
    } else {
        return -1;
    }

    return 0;
}


/* Shared options; returns 1 if handled, 0 if not one of ours, -1 bad. */
static int
kimi_run_opt(kimi_run_opts_t *o, int c, const char *arg)
{
    switch (c) {
    case 'm': o->model_dir = arg; return 1;
    case 'L': o->load_format = arg; return 1;
    case 'O': o->hf_overrides = arg; return 1;
    case 'Q':
        if (strcmp(arg, "fp8") == 0) { o->quantize_fp8 = 1; return 1; }
        fprintf(stderr, "--quantization: fp8 only, not \"%s\"\n", arg);
        return -1;
    case 'j': o->n_threads = (uint32_t) strtoul(arg, NULL, 10); return 1;
    case 'A':
        if (strcmp(arg, "fp32") == 0) { o->act_fp32 = 1; return 1; }
        if (strcmp(arg, "fp8") == 0) { o->act_fp32 = 0; return 1; }
        fprintf(stderr, "--act: fp32 or fp8, not \"%s\"\n", arg);
        return -1;
    case 'K':
        if (kimi_parse_kv_dtype(arg, &o->kv_dtype) == 0) return 1;
        fprintf(stderr, "--kv-dtype: bf16, fp8 or f32, not \"%s\"\n", arg);
        return -1;
    default:
        return 0;
    }
}


/* getopt_long() over argv that consumes the shared options itself: returns
 * the next command-specific option, -1 at the end, or '?' (a usage error,
 * as getopt_long() says for an unknown one) when a shared value is bad. */
static int
kimi_run_getopt(kimi_run_opts_t *o, int argc, char **argv,
    const struct option *opts)
{
    int  c, h;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        h = kimi_run_opt(o, c, optarg);
        if (h < 0) {
            return '?';
        }
        if (h == 0) {
            return c;
        }
    }

    return -1;
}

#define KIMI_RUN_LONGOPTS                                                     \
    { "model", required_argument, NULL, 'm' },                                \
    { "load-format", required_argument, NULL, 'L' },                          \
    { "hf-overrides", required_argument, NULL, 'O' },                         \
    { "quantization", required_argument, NULL, 'Q' },                         \
    { "threads", required_argument, NULL, 'j' },                              \
    { "act", required_argument, NULL, 'A' },                                  \
    { "kv-dtype", required_argument, NULL, 'K' },                             \
    { "help", no_argument, NULL, 'h' }

#define KIMI_RUN_HELP                                                         \
    "  --model DIR           model directory (Hugging Face layout)\n"         \
    "  --load-format F       auto (safetensors) or dummy (random weights)\n"  \
    "  --hf-overrides JSON   override config.json fields\n"                   \
    "  --quantization fp8    BF16 linear weights to FP8 128x128 blocks\n"     \
    "  --threads N           CPU threads (default: all)\n"                    \
    "  --act fp8|fp32        GEMM activations (default fp8, or KIMI_CPU_ACT)\n"\
    "  --kv-dtype D          bf16 (default), fp8 or f32 latent cache\n"


static void
kimi_run_opts_init(kimi_run_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->load_format = "auto";
    o->act_fp32 = -1;
    o->kv_dtype = KIMI_KV_DTYPE_AUTO;
    o->block_size = 16;
}


/* ---- gen-tiny-model ---- */

int
kimi_cmd_gen_tiny_model(int argc, char **argv)
{
    static const struct option  opts[] = {
        { "out", required_argument, NULL, 'o' },
        { "tokenizer-dir", required_argument, NULL, 't' },
        { "no-tokenizer", no_argument, NULL, 'n' },
        { "seed", required_argument, NULL, 's' },
        { "config", required_argument, NULL, 'c' },
        { "hf-overrides", required_argument, NULL, 'O' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    const char  *out = NULL, *tokdir = getenv("KIMI_TOKENIZER_DIR");
    const char  *cfg_path = NULL, *overrides = NULL;
    char        *cfg_text = NULL;
    uint64_t     seed = KIMI_TINY_SEED;
    kimi_err_t   err = { 0 };
    double       t0;
    int          c;

    if (tokdir == NULL) {
        tokdir = "../shared/kimi-k2";
    }

    optind = 1;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 't': tokdir = optarg; break;
        case 'n': tokdir = NULL; break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        case 'c': cfg_path = optarg; break;
        case 'O': overrides = optarg; break;
        case 'h':
            printf("usage: kimi-engine gen-tiny-model --out DIR\n"
                   "  --tokenizer-dir DIR  Kimi tokenizer files to copy "
                   "(default $KIMI_TOKENIZER_DIR\n"
                   "                       or ../shared/kimi-k2)\n"
                   "  --no-tokenizer       weights and config only\n"
                   "  --seed N             weight seed (default %llu)\n"
                   "  --config FILE        another config.json (e.g. "
                   "Kimi-K2's) instead of the tiny one\n"
                   "  --hf-overrides JSON  fields to change in it\n",
                   (unsigned long long) KIMI_TINY_SEED);
            return 0;
        default:
            return 2;
        }
    }

    if (out == NULL) {
        fprintf(stderr, "gen-tiny-model: --out DIR is required\n");
        return 2;
    }

    if (cfg_path != NULL) {
        FILE  *f = fopen(cfg_path, "rb");
        long   n;

        if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0
            || n > (1 << 20) || fseek(f, 0, SEEK_SET) != 0
            || (cfg_text = calloc(1, (size_t) n + 1)) == NULL
            || fread(cfg_text, 1, (size_t) n, f) != (size_t) n)
        {
            fprintf(stderr, "gen-tiny-model: %s: cannot read\n", cfg_path);

            if (f != NULL) {
                fclose(f);
            }

            free(cfg_text);
            return 1;
        }

        fclose(f);
    }

    t0 = kimi_now();

    if (kimi_tiny_model_write_config(out, tokdir, seed, cfg_text, overrides,
                                     &err) != 0)
    {
        fprintf(stderr, "gen-tiny-model: %s\n", err.msg);
        free(cfg_text);
        return 1;
    }

    free(cfg_text);

    printf("wrote tiny Kimi-K2 model to %s in %.2f s (its text is noise)\n",
           out, kimi_now() - t0);
    return 0;
}


/* ---- score ---- */

static int
kimi_parse_tokens(const char *s, int32_t **out, uint32_t *n)
{
    uint32_t  cap = 64;
    int32_t  *v = malloc(cap * sizeof(int32_t));
    char     *end;

    *n = 0;

    while (v != NULL && *s) {
        long  x;

        errno = 0;
        x = strtol(s, &end, 10);

        if (end == s || errno != 0 || x < 0 || x > INT32_MAX
            || (*end != ',' && *end != '\0'))
        {
            free(v);
            return -1;
        }

        if (*n == cap) {
            int32_t  *nv = realloc(v, (cap *= 2) * sizeof(int32_t));

            if (nv == NULL) {
                free(v);
                return -1;
            }

            v = nv;
        }

        v[(*n)++] = (int32_t) x;
        s = *end == ',' ? end + 1 : end;
    }

    *out = v;
    return v == NULL || *n == 0 ? -1 : 0;
}


static void
kimi_top5(const float *row, uint32_t V, int32_t *ids, float *vals)
{
    for (int k = 0; k < 5; k++) {
        ids[k] = -1;
        vals[k] = -INFINITY;
    }

    for (uint32_t v = 0; v < V; v++) {
        if (row[v] > vals[4]) {
            int  k = 4;

            while (k > 0 && row[v] > vals[k - 1]) {
                vals[k] = vals[k - 1];
                ids[k] = ids[k - 1];
                k--;
            }

            vals[k] = row[v];
            ids[k] = (int32_t) v;
        }
    }
}


int
kimi_cmd_score(int argc, char **argv)
{
    static const struct option  opts[] = {
        KIMI_RUN_LONGOPTS,
        { "tokens", required_argument, NULL, 't' },
        { "logits-out", required_argument, NULL, 'o' },
        { NULL, 0, NULL, 0 }
    };

    kimi_run_opts_t   o;
    kimi_runner_t     r;
    kimi_err_t        err = { 0 };
    const char       *tokens_arg = NULL, *out_path = NULL;
    const float      *logits;
    int32_t          *tokens = NULL, ids[5];
    uint32_t          n = 0, V;
    float             vals[5];
    FILE             *f = NULL;
    int               c, rc = 1;

    kimi_run_opts_init(&o);
    optind = 1;

    while ((c = kimi_run_getopt(&o, argc, argv, opts)) != -1) {
        switch (c) {
        case 't': tokens_arg = optarg; break;
        case 'o': out_path = optarg; break;
        case 'h':
            printf("usage: kimi-engine score --model DIR --tokens 1,2,3 "
                   "[--logits-out FILE]\n"
                   "  prints the top-5 next tokens at every position; "
                   "FILE gets float32 LE [T][vocab]\n" KIMI_RUN_HELP);
            return 0;
        default:
            return 2;
        }
    }

    if (o.model_dir == NULL || tokens_arg == NULL) {
        fprintf(stderr, "score: --model DIR and --tokens LIST are required\n");
        return 2;
    }

    if (kimi_parse_tokens(tokens_arg, &tokens, &n) != 0) {
        fprintf(stderr, "score: --tokens: expected comma-separated ids\n");
        return 2;
    }

    if (kimi_runner_init(&r, &o, n, &err) != 0) {
        fprintf(stderr, "score: %s\n", err.msg);
        goto done;
    }

    kimi_backend_cpu_set_all_logits(r.be, 1);

    if (kimi_runner_step(&r, tokens, n, 0, &logits, &err) != 0) {
        fprintf(stderr, "score: %s\n", err.msg);
        goto done;
    }

    V = r.model->cfg.vocab_size;

    if (out_path != NULL) {
        f = fopen(out_path, "wb");

        if (f == NULL
            || fwrite(logits, sizeof(float), (size_t) n * V, f)
               != (size_t) n * V
            || fclose(f) != 0)
        {
            fprintf(stderr, "score: %s: write failed\n", out_path);
            goto done;
        }
    }

    for (uint32_t t = 0; t < n; t++) {
        kimi_top5(logits + (size_t) t * V, V, ids, vals);
        printf("pos %u token %d top5:", t, tokens[t]);

        for (int k = 0; k < 5; k++) {
            printf(" %d:%.4f", ids[k], vals[k]);
        }

        printf("\n");
    }

    rc = 0;

done:

    kimi_runner_free(&r);
    free(tokens);
    return rc;
}


/* ---- generate ---- */

int
kimi_cmd_generate(int argc, char **argv)
{
    static const struct option  opts[] = {
        KIMI_RUN_LONGOPTS,
        { "prompt", required_argument, NULL, 'p' },
        { "raw", no_argument, NULL, 'r' },
        { "max-tokens", required_argument, NULL, 'n' },
        { "temperature", required_argument, NULL, 'T' },
        { "top-p", required_argument, NULL, 'P' },
        { "top-k", required_argument, NULL, 'k' },
        { "seed", required_argument, NULL, 's' },
        { "ignore-eos", no_argument, NULL, 'i' },
        { NULL, 0, NULL, 0 }
    };

    kimi_run_opts_t      o;
    kimi_runner_t        r;
    kimi_err_t           err = { 0 };
    kimi_tokenizer_t    *tok = NULL;
    kimi_template_t     *tpl = NULL;
    kimi_sampler_t      *smp = NULL;
    kimi_detok_t        *dt = NULL;
    kimi_shm_sampling_t  sp;
    kimi_rng_t           rng;
    const char          *prompt = NULL;
    const float         *logits;
    char                *text = NULL;
    int32_t             *ids = NULL, *seq = NULL;
    size_t               n_ids = 0, tlen;
    uint32_t             max_tokens = 32, n_out = 0;
    const int32_t       *eos;
    uint32_t             n_eos;
    int                  raw = 0, c, rc = 1;
    double               t0, t1, t2;

    memset(&sp, 0, sizeof(sp));
    sp.top_p = 1.0f;
    sp.repetition_penalty = 1.0f;
    kimi_run_opts_init(&o);
    memset(&r, 0, sizeof(r));
    optind = 1;

    while ((c = kimi_run_getopt(&o, argc, argv, opts)) != -1) {
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'r': raw = 1; break;
        case 'n': max_tokens = (uint32_t) strtoul(optarg, NULL, 10); break;
        case 'T': sp.temperature = strtof(optarg, NULL); break;
        case 'P': sp.top_p = strtof(optarg, NULL); break;
        case 'k': sp.top_k = (int32_t) strtol(optarg, NULL, 10); break;
        case 's': sp.seed = strtoull(optarg, NULL, 0); sp.has_seed = 1;
                  break;
        case 'i': sp.ignore_eos = 1; break;
        case 'h':
            printf("usage: kimi-engine generate --model DIR --prompt TEXT\n"
                   "  --raw            tokenize TEXT as is (no chat "
                   "template)\n"
                   "  --max-tokens N   (default 32)\n"
                   "  --temperature T  0 = greedy (default)\n"
                   "  --top-p P --top-k K --seed N --ignore-eos\n"
                   KIMI_RUN_HELP);
            return 0;
        default:
            return 2;
        }
    }

    if (o.model_dir == NULL || prompt == NULL || max_tokens == 0) {
        fprintf(stderr, "generate: --model DIR and --prompt TEXT are "
                "required (and --max-tokens >= 1)\n");
        return 2;
    }

    sp.max_tokens = max_tokens;

    if (kimi_tokenizer_load(&tok, o.model_dir, &err) != 0) {
        fprintf(stderr, "generate: %s\n", err.msg);
        goto done;
    }

    if (raw) {
        text = strdup(prompt);
        tlen = strlen(prompt);

    } else {
        json_t  *msgs;

        if (kimi_template_load(&tpl, o.model_dir, NULL, &err) != 0) {
            fprintf(stderr, "generate: %s\n", err.msg);
            goto done;
        }

        msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", prompt);
        rc = kimi_template_render(tpl, msgs, NULL, 1, &text, &tlen, &err);
        json_decref(msgs);

        if (rc != 0) {
            rc = 1;
            fprintf(stderr, "generate: %s\n", err.msg);
            goto done;
        }

        rc = 1;
    }

    if (text == NULL
        || kimi_tokenize(tok, text, tlen, !raw, &ids, &n_ids, &err) != 0
        || n_ids == 0)
    {
        fprintf(stderr, "generate: tokenize: %s\n",
                n_ids == 0 ? "empty prompt" : err.msg);
        goto done;
    }

    t0 = kimi_now();

    if (kimi_runner_init(&r, &o, (uint32_t) n_ids + max_tokens, &err) != 0
        || kimi_sample_params_check(&sp, r.model->cfg.vocab_size, &err) != 0
        || kimi_sampler_init(&smp, r.model->cfg.vocab_size, &err) != 0)
    {
        fprintf(stderr, "generate: %s\n", err.msg);
        goto done;
    }

    n_eos = kimi_model_eos_ids(r.model, &eos);
    seq = malloc((n_ids + max_tokens) * sizeof(int32_t));
    dt = kimi_detok_new(tok, 1);

    if (seq == NULL || dt == NULL) {
        fprintf(stderr, "generate: out of memory\n");
        goto done;
    }

    memcpy(seq, ids, n_ids * sizeof(int32_t));
    kimi_rng_seed(&rng, sp.has_seed ? sp.seed : (uint64_t) time(NULL));
    t1 = kimi_now();

    if (kimi_runner_step(&r, ids, (uint32_t) n_ids, 0, &logits, &err) != 0) {
        fprintf(stderr, "generate: %s\n", err.msg);
        goto done;
    }

    t2 = kimi_now();

    for (;;) {
        kimi_sample_req_t  req = { .sampling = &sp, .tokens = seq,
                                   .n_prompt = (uint32_t) n_ids,
                                   .n_output = n_out, .rng = &rng,
                                   .eos_ids = eos, .n_eos = n_eos,
                                   .logprobs_mode = KIMI_LOGPROBS_RAW };
        kimi_sample_out_t  so;
        const char        *piece;
        size_t             plen;
        int                stop = 0;

        if (kimi_sampler_sample(smp, logits, &req, &so, &err) != 0) {
            fprintf(stderr, "generate: %s\n", err.msg);
            goto done;
        }

        seq[n_ids + n_out++] = so.tok.token;

        for (uint32_t e = 0; e < n_eos && !sp.ignore_eos; e++) {
            stop |= so.tok.token == eos[e];
        }

        if (!stop && kimi_detok_push(dt, so.tok.token, &piece, &plen) == 0) {
            fwrite(piece, 1, plen, stdout);
            fflush(stdout);
        }

        if (stop || n_out == max_tokens) {
            break;
        }

        if (kimi_runner_step(&r, &so.tok.token, 1,
                             (uint32_t) n_ids + n_out - 1, &logits, &err)
            != 0)
        {
            fprintf(stderr, "generate: %s\n", err.msg);
            goto done;
        }
    }

    {
        const char  *piece;
        size_t       plen;

        if (kimi_detok_flush(dt, &piece, &plen) == 0) {
            fwrite(piece, 1, plen, stdout);
        }
    }

    printf("\n");
    fprintf(stderr, "generate: load %.2f s, prompt %zu tokens in %.3f s, "
            "%u tokens in %.3f s (%.1f tok/s decode)\n", t1 - t0, n_ids,
            t2 - t1, n_out, kimi_now() - t2,
            n_out > 1 ? (n_out - 1) / (kimi_now() - t2) : 0.0);
    rc = 0;

done:

    kimi_detok_free(dt);
    kimi_sampler_free(smp);
    kimi_runner_free(&r);

    if (tpl != NULL) {
        kimi_template_free(tpl);
    }

    kimi_tokenizer_free(tok);
    free(text);
    free(ids);
    free(seq);
    return rc;
}


/* ---- model-info ---- */

static size_t
kimi_dtype_size(kimi_dtype_e dt)
{
    return dt == KIMI_DTYPE_F8_E4M3 ? 1 : dt == KIMI_DTYPE_F32 ? 4 : 2;
}


/* Reads one byte per 4 KiB page of a weight (and its scales): the page
 * cache or the disk delivers whole pages, as `cat` reads them. */
static uint64_t
kimi_touch(const kimi_weight_t *w, uint64_t *bytes)
{
    const volatile uint8_t  *p = w->data;
    size_t                   n = (size_t) w->rows * w->cols
                                 * kimi_dtype_size(w->dtype);
    uint64_t                 sum = 0;

    if (p == NULL) {
        return 0;
    }

    for (size_t i = 0; i < n; i += 4096) {
        sum += p[i];
    }

    sum += p[n - 1];
    *bytes += n;

    if (w->scale_inv != NULL) {
        size_t  ns = (size_t) ((w->rows + 127) / 128) * ((w->cols + 127) / 128);

        p = (const volatile uint8_t *) w->scale_inv;

        for (size_t i = 0; i < ns * 4; i += 4096) {
            sum += p[i];
        }

        *bytes += ns * 4;
    }

    return sum;
}


static uint64_t
kimi_touch_mlp(const kimi_mlp_weights_t *m, uint64_t *bytes)
{
    return kimi_touch(&m->gate_proj, bytes) + kimi_touch(&m->up_proj, bytes)
           + kimi_touch(&m->down_proj, bytes);
}


int
kimi_cmd_model_info(int argc, char **argv)
{
    static const struct option  opts[] = {
        KIMI_RUN_LONGOPTS,
        { "touch", no_argument, NULL, 't' },
        { "populate", no_argument, NULL, 'p' },
        { "experts", required_argument, NULL, 'e' },
        { NULL, 0, NULL, 0 }
    };

    kimi_run_opts_t       o;
    kimi_model_params_t   mp = kimi_model_default_params();
    kimi_model_t         *m = NULL;
    kimi_err_t            err = { 0 };
    const kimi_model_config_t  *c;
    uint64_t              sum = 0, bytes = 0;
    int                   touch = 0, ch;
    unsigned              e0 = 0, e1 = 0;
    double                t0, t1, t2;

    kimi_run_opts_init(&o);
    optind = 1;

    while ((ch = kimi_run_getopt(&o, argc, argv, opts)) != -1) {
        switch (ch) {
        case 't': touch = 1; break;
        case 'p': mp.populate = 1; break;
        case 'e':
            if (sscanf(optarg, "%u:%u", &e0, &e1) != 2) {
                fprintf(stderr, "--experts FIRST:LAST\n");
                return 2;
            }
            break;
        case 'h':
            printf("usage: kimi-engine model-info --model DIR [--touch] "
                   "[--populate] [--experts FIRST:LAST]\n"
                   "  loads the model, prints its config and load time; "
                   "--touch reads every weight page\n" KIMI_RUN_HELP);
            return 0;
        default:
            return 2;
        }
    }

    if (o.model_dir == NULL) {
        fprintf(stderr, "model-info: --model DIR is required\n");
        return 2;
    }

    mp.dir = o.model_dir;
    mp.load_format = o.load_format;
    mp.hf_overrides = o.hf_overrides;
    mp.quantize_fp8 = o.quantize_fp8;
    mp.expert_first = e0;
    mp.expert_last = e1;
    t0 = kimi_now();

    if (kimi_model_load(&m, &mp, &err) != 0) {
        fprintf(stderr, "model-info: %s\n", err.msg);
        return 1;
    }

    t1 = kimi_now();
    c = &m->cfg;
    printf("model %s (%s): %u layers (%u dense), hidden %u, heads %u, "
           "experts %u (top %u, groups %u/%u, owned [%u, %u)), vocab %u\n"
           "mla: q_lora %u kv_lora %u nope %u rope %u v %u; softmax scale "
           "%.7f; yarn %s factor %g orig %u\n"
           "weights: %.3f GB viewed, loaded in %.3f s%s\n",
           o.model_dir, c->model_type, c->num_hidden_layers,
           c->first_k_dense_replace, c->hidden_size, c->num_attention_heads,
           c->n_routed_experts, c->num_experts_per_tok, c->n_group,
           c->topk_group, m->expert_first, m->expert_last, c->vocab_size,
           c->q_lora_rank, c->kv_lora_rank, c->qk_nope_head_dim,
           c->qk_rope_head_dim, c->v_head_dim, kimi_model_softmax_scale(c),
           c->rope_is_yarn ? "on" : "off", c->rope_factor,
           c->rope_original_max_position_embeddings,
           m->bytes_mapped / 1e9, t1 - t0,
           m->n_quantized ? " (BF16 linears quantised to FP8 blocks)" : "");

    if (touch) {
        sum += kimi_touch(&m->embed_tokens, &bytes);

        if (m->lm_head.data != m->embed_tokens.data) {
            sum += kimi_touch(&m->lm_head, &bytes);
        }

        for (uint32_t l = 0; l < c->num_hidden_layers; l++) {
            const kimi_layer_weights_t  *L = &m->layers[l];

            sum += kimi_touch(&L->q_a_proj, &bytes)
                   + kimi_touch(&L->q_b_proj, &bytes)
                   + kimi_touch(&L->kv_a_proj_with_mqa, &bytes)
                   + kimi_touch(&L->kv_b_proj, &bytes)
                   + kimi_touch(&L->o_proj, &bytes);

            if (!L->is_moe) {
                sum += kimi_touch_mlp(&L->mlp, &bytes);
                continue;
            }

            sum += kimi_touch(&L->gate, &bytes)
                   + kimi_touch_mlp(&L->shared_experts, &bytes);

            for (uint32_t e = m->expert_first; e < m->expert_last; e++) {
                sum += kimi_touch_mlp(&L->experts[e], &bytes);
            }
        }

        t2 = kimi_now();
        printf("touched %.3f GB in %.3f s (%.2f GB/s; checksum %llu)\n",
               bytes / 1e9, t2 - t1, bytes / 1e9 / (t2 - t1),
               (unsigned long long) (sum & 0xffff));
    }

    kimi_model_free(m);
    return 0;
}
