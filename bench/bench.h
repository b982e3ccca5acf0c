/*
 * kimi-bench: the `vllm bench serve` measurement, in C.
 *
 * Owns:   the types shared by the bench/ files: options, one benchmark
 *         request (its input and what the client measured), metrics.
 * Never:  holds state of its own; each bench_*.c file owns one job:
 *           bench_main.c     options, the run in order, exit code
 *           bench_dataset.c  the random dataset and arrival times
 *           bench_client.c   the epoll streaming client
 *           bench_http.c     HTTP/1.1 response + SSE parsing (no I/O)
 *           bench_stats.c    statistics and vLLM's metrics (no I/O)
 *           bench_report.c   result block, JSON file, gnuplot picture
 *
 * Times are seconds as double from CLOCK_MONOTONIC, relative to the
 * benchmark start unless a name says otherwise.
 */

#ifndef KIMI_BENCH_H
#define KIMI_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include "common/kimi_err.h"

#define BENCH_MAX_PERCENTILES  16

typedef enum {
    BENCH_BACKEND_COMPLETIONS = 0,     /* "openai": /v1/completions */
    BENCH_BACKEND_CHAT,                /* "openai-chat" */
} bench_backend_e;

typedef struct {
    /* target */
    char             *base_url;        /* NULL: http://host:port */
    char             *host;
    int               port;
    char             *endpoint;        /* path, "/v1/completions" */
    bench_backend_e   backend;
    char             *backend_name;
    char             *model;           /* model id (--model) */
    char             *served_model_name; /* name sent in requests */
    char             *tokenizer;       /* directory with tiktoken.model */
    char             *api_key;         /* Bearer; --api-key or env */
    char             *label;

    /* dataset */
    char             *dataset_name;    /* random, sharegpt, custom,
                                          prefix_repetition, burstgpt,
                                          sonnet, spec_bench, txt-slices */
    char             *dataset_path;    /* sharegpt, custom, burstgpt,
                                          sonnet */
    uint32_t          sharegpt_output_len; /* 0: the reply's length */
    uint32_t          custom_output_len;
    int               skip_chat_template;  /* custom */
    int               disable_shuffle;
    int               no_oversample;
    uint32_t          input_len;
    uint32_t          output_len;
    double            range_ratio;
    uint32_t          prefix_len;
    uint32_t          rep_prefix_len;  /* prefix_repetition */
    uint32_t          rep_suffix_len;
    uint32_t          rep_num_prefixes;
    uint32_t          rep_output_len;
    uint32_t          spec_bench_output_len;
    char             *spec_bench_category;  /* NULL: every row */
    uint32_t          sonnet_input_len;  /* sonnet */
    uint32_t          sonnet_output_len;
    uint32_t          sonnet_prefix_len;
    uint32_t          txt_slices_input_len;   /* txt-slices */
    uint32_t          txt_slices_output_len;
    uint32_t          num_prompts;
    uint64_t          seed;

    uint32_t          num_warmups;     /* copies of the test request first */
    char            **headers;         /* --header KEY=VALUE ... */
    size_t            n_headers;
    char            **metadata;        /* --metadata KEY=VALUE ... (result) */
    size_t            n_metadata;
    int               append_result;
    double            goodput_ms[3];   /* SLOs: ttft, tpot, e2el; NAN: none */
    int               goodput_set;

    /* traffic */
    double            request_rate;    /* INFINITY: all at t = 0 */
    char             *ramp_up;         /* NULL, "linear" or "exponential" */
    double            ramp_start_rps, ramp_end_rps;
    double            burstiness;
    uint32_t          max_concurrency; /* 0: unlimited */
    int               ignore_eos;
    double            temperature;
    double            top_p, top_k, min_p;   /* NAN: not sent */
    int               logprobs;        /* completions' logprobs; -1: null */
    char             *request_id_prefix; /* NULL: bench-RANDOM- */

    /* limits */
    double            timeout_s;        /* whole run, never exceeded */
    double            request_timeout_s;/* one request; 0: none */
    double            ready_timeout_s;  /* initial test request */

    /* output */
    char             *percentile_metrics;  /* "ttft,tpot,itl" */
    double            percentiles[BENCH_MAX_PERCENTILES];
    size_t            n_percentiles;
    int               save_result;
    int               save_detailed;
    char             *result_dir;
    char             *result_filename;
    char             *plot;
    int               quiet;            /* no progress lines */
    char             *dump_prompts;     /* ours: prompts as JSON */
    char             *engine_ipc_dir;   /* ours: watch kimi-engine's shm */
    double            observer_max_width_us;
    int               observer_spin;    /* per-token: spins a core */
} bench_opts_t;

/* One request: input from the dataset, output from the client. */
typedef struct {
    /* input */
    char             *prompt;          /* text, NUL-terminated */
    size_t            prompt_bytes;
    uint32_t          prompt_len;      /* tokens; usage.prompt_tokens
                                          replaces it when sent */
    uint32_t          output_len;      /* max_tokens asked for */
    char             *body;            /* the whole HTTP request */
    size_t            body_len;

    /* output */
    int               success;
    int               got_usage;
    double            start_s;         /* just before the first byte out */
    double            ttft_s;          /* first choices-bearing event */
    double            latency_s;       /* last choices-bearing event */
    double           *itl_s;           /* gaps between choices events */
    size_t            n_itl;
    size_t            cap_itl;
    uint32_t          output_tokens;   /* usage.completion_tokens or
                                          the re-tokenized text */
    uint32_t          prompt_tokens_server;  /* 0: not reported */
    char             *text;            /* generated text */
    size_t            text_len;
    size_t            text_cap;
    char             *error;           /* malloc'ed, NULL on success */
    char              response_id[64]; /* "id" of the first chunk */
} bench_req_t;

/* Gateway added latency: client read time - engine publish time. */
typedef struct {
    double           *added_s;              /* qualified tokens only */
    size_t            n;
    size_t            n_tokens;             /* matched, qualified or not */
    double            max_width_us;         /* qualification bound */
    uint32_t          n_requests;           /* matched by response id */
    uint32_t          n_unmatched_requests;
    uint32_t          n_count_mismatch;     /* events != tokens */
    double            pass_us;              /* observer resolution */
    double            max_pass_us;          /* its worst pass */
    double            observer_cpu_s;
    double           *first_added_s;        /* first token - engine stamp */
    size_t            n_first;
    double            engine_itl_s;         /* mean publish interval */
    uint32_t          n_engine_itl;         /* requests in that mean */
} bench_added_t;

typedef struct {
    double            mean_ms;
    double            median_ms;
    double            std_ms;
    double            pct_ms[BENCH_MAX_PERCENTILES];
} bench_summary_t;

typedef struct {
    uint32_t          completed;
    uint32_t          failed;
    uint64_t          total_input;
    uint64_t          total_output;
    double            duration_s;
    double            request_throughput;
    double            request_goodput;  /* NAN: no --goodput */
    double            output_throughput;
    double            total_token_throughput;
    double            max_output_tokens_per_s;
    uint32_t          max_concurrent_requests;
    bench_summary_t   ttft, tpot, itl, e2el;

    /* the client's own cost over the run (getrusage), not vLLM's */
    double            cpu_user_s;
    double            cpu_sys_s;
    uint32_t          n_prompt_checked;   /* usage.prompt_tokens seen */
    uint32_t          n_prompt_mismatch;  /* ... and differing */

    /* per 1-s bucket from the first start, for the picture */
    double           *tokens_per_s;
    double           *concurrent_per_s;
    size_t            n_buckets;
} bench_metrics_t;


/* bench_dataset.c */
typedef struct kimi_tokenizer  kimi_tokenizer_t;

/* Python's random (MT19937), as vLLM shuffles and oversamples file
 * datasets (bench_dataset_file.c) */
typedef struct {
    uint32_t  mt[624];
    int       i;
} bench_py_random_t;

void     bench_py_seed(bench_py_random_t *r, uint64_t seed);
uint32_t bench_py_getrandbits(bench_py_random_t *r, int k);
uint32_t bench_py_randbelow(bench_py_random_t *r, uint32_t n);
double   bench_py_random(bench_py_random_t *r);       /* random.random() */
void     bench_py_shuffle(bench_py_random_t *r, void *base, size_t n,
    size_t size);
/* numpy's legacy global generator (np.random.seed(seed) with seed <
 * 2^32, then np.random.randint(0, high)): the same MT19937, seeded as
 * init_genrand, bounded draws by masked rejection on 32-bit outputs */
void     bench_np_legacy_seed(bench_py_random_t *r, uint32_t seed);
uint32_t bench_np_legacy_randint(bench_py_random_t *r, uint32_t high);
/* --dataset-name sharegpt, custom, burstgpt or spec_bench
 * (bench_dataset_file), sonnet and txt-slices
 * (bench_dataset_text.c): o->num_prompts requests from o->dataset_path,
 * chosen as vLLM chooses them */
int bench_dataset_file(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err);
int bench_dataset_sonnet(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err);
int bench_dataset_txt_slices(const bench_opts_t *o,
    const kimi_tokenizer_t *tok, bench_req_t *reqs, kimi_err_t *err);
/* tokens of text as HF's tokenizer(text).input_ids counts them */
int bench_count_tokens(const kimi_tokenizer_t *tok, const char *text,
    size_t len, uint32_t *n, kimi_err_t *err);

int  bench_dataset_random(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err);
/* --dataset-name prefix_repetition: bench_prefix_rep_count(o) requests */
size_t bench_prefix_rep_count(const bench_opts_t *o);
int  bench_dataset_prefix_rep(const bench_opts_t *o,
    const kimi_tokenizer_t *tok, bench_req_t *reqs, kimi_err_t *err);
double bench_rate_at(const bench_opts_t *o, size_t i, size_t n);
void bench_arrivals(const bench_opts_t *o, double *arrival_s, size_t n);
uint64_t bench_rng_next(uint64_t *state);
double   bench_rng_uniform(uint64_t *state);           /* [0, 1) */
double   bench_rng_gamma(uint64_t *state, double shape, double scale);

/* numpy's np.random.default_rng(seed) (SeedSequence -> PCG64) and its
 * Generator.integers(low, high): the prompts' draws, value for value */
__extension__ typedef unsigned __int128  bench_u128_t;

typedef struct {
    bench_u128_t  state, inc;
    int           has_u32;
    uint32_t      u32;
} bench_np_rng_t;

void     bench_np_rng_seed(bench_np_rng_t *r, uint64_t seed);
uint64_t bench_np_rng_integers(bench_np_rng_t *r, uint64_t low,
    uint64_t high);                                    /* [low, high) */

/* bench_client.c */
typedef struct {
    struct sockaddr_storage  addr;
    socklen_t                addr_len;
    double                   timeout_s;        /* from run start */
    double                   request_timeout_s;
    uint32_t                 max_concurrency;  /* 0: unlimited */
    int                      is_chat;
    int                      progress;         /* print progress */
} bench_client_cfg_t;

/* Sends reqs[i] at arrival_s[i] after the start and fills their outputs.
 * Fails only when the client itself cannot run (epoll, timerfd); failed
 * requests are reported in the requests.  *duration_s: first dispatch to
 * the last request finished. */
int bench_client_run(const bench_client_cfg_t *cfg, bench_req_t *reqs,
    size_t n, const double *arrival_s, double *duration_s,
    double *t0_abs, kimi_err_t *err);

/* bench_stats.c: pure functions */
double bench_percentile_sorted(const double *sorted, size_t n, double p);
void   bench_summarize(const double *values, size_t n, const double *pcts,
    size_t n_pcts, bench_summary_t *out);
int    bench_metrics_compute(const bench_req_t *reqs, size_t n,
    double duration_s, const double *pcts, size_t n_pcts,
    bench_metrics_t *m);
void   bench_metrics_free(bench_metrics_t *m);
/* vLLM's request goodput: completed requests within every --goodput SLO
 * (a request of one token has TPOT 0), per second; NAN without SLOs */
double bench_goodput(const bench_opts_t *o, const bench_req_t *reqs,
    size_t n, double duration_s);
/* TPOT of one request: (E2EL - TTFT) / (tokens - 1); < 0 when undefined */
double bench_tpot(const bench_req_t *r);
void   bench_py_float(double v, char *buf, size_t len);   /* str(float) */
void   bench_percentile_word(double p, char *buf, size_t len);

/* bench_observe.c: kimi-engine's shm, read only (gateway benchmark) */
typedef struct bench_observer  bench_observer_t;

int  bench_observer_start(bench_observer_t **out, const char *ipc_dir,
    int spin, kimi_err_t *err);
void bench_observer_stop(bench_observer_t *ob);
int  bench_observer_join(bench_observer_t *ob, const bench_req_t *reqs,
    size_t n, double t0_abs, double max_width_us, bench_added_t *out);
void bench_observer_free(bench_observer_t *ob);

/* bench_report.c */
void bench_report_print(const bench_opts_t *o, const bench_metrics_t *m,
    const bench_req_t *reqs, size_t n);
int  bench_report_json(const bench_opts_t *o, const bench_metrics_t *m,
    const bench_req_t *reqs, size_t n, const bench_added_t *added,
    const char *path, kimi_err_t *err);
int  bench_report_plot(const bench_opts_t *o, const bench_metrics_t *m,
    const bench_req_t *reqs, size_t n, const char *path, kimi_err_t *err);
int  bench_metric_selected(const bench_opts_t *o, const char *name);
void bench_report_added(const bench_added_t *a, const double *pcts,
    size_t n_pcts);

#endif
