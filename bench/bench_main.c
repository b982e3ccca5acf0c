/*
 * kimi-bench: `vllm bench serve` for any OpenAI-compatible server.
 *
 * Owns:   the command line (vLLM's flag names and defaults), the order of
 *         a run (tokenizer, dataset, request bodies, initial test request,
 *         the timed run, metrics, report), and the exit code.
 * Never:  measures anything itself: bench_client.c times, bench_stats.c
 *         computes.
 *
 * Exit code: 0 when at least one request succeeded, 1 when every request
 * failed or the run could not start, 2 for a bad command line.
 */

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/resource.h>
#include <sys/stat.h>

#include <jansson.h>

#include "text/kimi_text.h"
#include "bench.h"

enum {
    OPT_BACKEND = 256, OPT_BASE_URL, OPT_HOST, OPT_PORT, OPT_ENDPOINT,
    OPT_MODEL, OPT_SERVED_NAME, OPT_TOKENIZER, OPT_API_KEY, OPT_LABEL,
    OPT_DATASET, OPT_IN_LEN, OPT_OUT_LEN, OPT_RANGE, OPT_PREFIX,
    OPT_NUM_PROMPTS, OPT_SEED, OPT_RATE, OPT_BURST, OPT_MAX_CONC,
    OPT_IGNORE_EOS, OPT_TEMPERATURE, OPT_TOP_P, OPT_TOP_K, OPT_MIN_P,
    OPT_PCT_METRICS, OPT_PCTS,
    OPT_SAVE, OPT_SAVE_DETAILED, OPT_RESULT_DIR, OPT_RESULT_FILE, OPT_PLOT,
    OPT_TIMEOUT, OPT_REQ_TIMEOUT, OPT_READY_TIMEOUT, OPT_NO_PROGRESS,
    OPT_DUMP_PROMPTS, OPT_ENGINE_IPC, OPT_OBS_WIDTH, OPT_OBS_SPIN, OPT_HELP,
    OPT_DATASET_PATH, OPT_SHAREGPT_OUT, OPT_CUSTOM_OUT, OPT_SKIP_TEMPLATE,
    OPT_NO_SHUFFLE, OPT_NO_OVERSAMPLE, OPT_WARMUPS,
    OPT_RAMP, OPT_RAMP_START, OPT_RAMP_END, OPT_INPUT_LEN, OPT_OUTPUT_LEN,
    OPT_APPEND, OPT_TOK_MODE, OPT_REP_PREFIX, OPT_REP_SUFFIX, OPT_REP_NUM,
    OPT_REP_OUT, OPT_REQ_ID_PREFIX, OPT_LOGPROBS, OPT_TRUST_REMOTE,
    OPT_SONNET_IN, OPT_SONNET_OUT, OPT_SONNET_PREFIX, OPT_SPEC_OUT,
    OPT_SPEC_CATEGORY, OPT_TXT_IN, OPT_TXT_OUT,
};

static const struct option  bench_options[] = {
    { "backend",                 required_argument, NULL, OPT_BACKEND },
    { "base-url",                required_argument, NULL, OPT_BASE_URL },
    { "host",                    required_argument, NULL, OPT_HOST },
    { "port",                    required_argument, NULL, OPT_PORT },
    { "endpoint",                required_argument, NULL, OPT_ENDPOINT },
    { "model",                   required_argument, NULL, OPT_MODEL },
    { "served-model-name",       required_argument, NULL, OPT_SERVED_NAME },
    { "tokenizer",               required_argument, NULL, OPT_TOKENIZER },
    { "api-key",                 required_argument, NULL, OPT_API_KEY },
    { "label",                   required_argument, NULL, OPT_LABEL },
    { "dataset-name",            required_argument, NULL, OPT_DATASET },
    { "dataset-path",            required_argument, NULL, OPT_DATASET_PATH },
    { "sharegpt-output-len",     required_argument, NULL, OPT_SHAREGPT_OUT },
    { "custom-output-len",       required_argument, NULL, OPT_CUSTOM_OUT },
    { "custom-skip-chat-template", no_argument,     NULL, OPT_SKIP_TEMPLATE },
    { "disable-shuffle",         no_argument,       NULL, OPT_NO_SHUFFLE },
    { "no-oversample",           no_argument,       NULL, OPT_NO_OVERSAMPLE },
    { "num-warmups",             required_argument, NULL, OPT_WARMUPS },
    { "input-len",               required_argument, NULL, OPT_INPUT_LEN },
    { "output-len",              required_argument, NULL, OPT_OUTPUT_LEN },
    { "append-result",           no_argument,       NULL, OPT_APPEND },
    { "tokenizer-mode",          required_argument, NULL, OPT_TOK_MODE },
    { "trust-remote-code",       no_argument,       NULL, OPT_TRUST_REMOTE },
    { "request-id-prefix",       required_argument, NULL, OPT_REQ_ID_PREFIX },
    { "logprobs",                required_argument, NULL, OPT_LOGPROBS },
    { "ramp-up-strategy",        required_argument, NULL, OPT_RAMP },
    { "ramp-up-start-rps",       required_argument, NULL, OPT_RAMP_START },
    { "ramp-up-end-rps",         required_argument, NULL, OPT_RAMP_END },
    { "random-input-len",        required_argument, NULL, OPT_IN_LEN },
    { "random-output-len",       required_argument, NULL, OPT_OUT_LEN },
    { "random-range-ratio",      required_argument, NULL, OPT_RANGE },
    { "random-prefix-len",       required_argument, NULL, OPT_PREFIX },
    { "prefix-repetition-prefix-len", required_argument, NULL, OPT_REP_PREFIX },
    { "prefix-repetition-suffix-len", required_argument, NULL, OPT_REP_SUFFIX },
    { "prefix-repetition-num-prefixes", required_argument, NULL, OPT_REP_NUM },
    { "prefix-repetition-output-len", required_argument, NULL, OPT_REP_OUT },
    { "sonnet-input-len",        required_argument, NULL, OPT_SONNET_IN },
    { "sonnet-output-len",       required_argument, NULL, OPT_SONNET_OUT },
    { "sonnet-prefix-len",       required_argument, NULL, OPT_SONNET_PREFIX },
    { "spec-bench-output-len",   required_argument, NULL, OPT_SPEC_OUT },
    { "txt-slices-input-len",    required_argument, NULL, OPT_TXT_IN },
    { "txt-slices-output-len",   required_argument, NULL, OPT_TXT_OUT },
    { "spec-bench-category",     required_argument, NULL, OPT_SPEC_CATEGORY },
    { "num-prompts",             required_argument, NULL, OPT_NUM_PROMPTS },
    { "seed",                    required_argument, NULL, OPT_SEED },
    { "request-rate",            required_argument, NULL, OPT_RATE },
    { "burstiness",              required_argument, NULL, OPT_BURST },
    { "max-concurrency",         required_argument, NULL, OPT_MAX_CONC },
    { "ignore-eos",              no_argument,       NULL, OPT_IGNORE_EOS },
    { "temperature",             required_argument, NULL, OPT_TEMPERATURE },
    { "top-p",                   required_argument, NULL, OPT_TOP_P },
    { "top-k",                   required_argument, NULL, OPT_TOP_K },
    { "min-p",                   required_argument, NULL, OPT_MIN_P },
    { "percentile-metrics",      required_argument, NULL, OPT_PCT_METRICS },
    { "metric-percentiles",      required_argument, NULL, OPT_PCTS },
    { "save-result",             no_argument,       NULL, OPT_SAVE },
    { "save-detailed",           no_argument,       NULL, OPT_SAVE_DETAILED },
    { "result-dir",              required_argument, NULL, OPT_RESULT_DIR },
    { "result-filename",         required_argument, NULL, OPT_RESULT_FILE },
    { "plot",                    required_argument, NULL, OPT_PLOT },
    { "timeout",                 required_argument, NULL, OPT_TIMEOUT },
    { "request-timeout",         required_argument, NULL, OPT_REQ_TIMEOUT },
    { "ready-check-timeout-sec", required_argument, NULL, OPT_READY_TIMEOUT },
    { "disable-tqdm",            no_argument,       NULL, OPT_NO_PROGRESS },
    { "dump-prompts",            required_argument, NULL, OPT_DUMP_PROMPTS },
    { "engine-ipc-dir",          required_argument, NULL, OPT_ENGINE_IPC },
    { "observer-max-width-us",   required_argument, NULL, OPT_OBS_WIDTH },
    { "observer-spin",           no_argument,       NULL, OPT_OBS_SPIN },
    { "help",                    no_argument,       NULL, OPT_HELP },
    { NULL, 0, NULL, 0 }
};

/* The options that only set a number in bench_opts_t (as nginx's
 * ngx_conf_set_num_slot does for a directive): parsed in one place. */
typedef struct {
    int          opt;
    const char  *name;
    size_t       offset;
    int          is_u32;                 /* uint32_t, else double */
} bench_num_opt_t;

static const bench_num_opt_t  bench_num_opts[] = {
    { OPT_IN_LEN, "random-input-len", offsetof(bench_opts_t, input_len), 1 },
    { OPT_OUT_LEN, "random-output-len", offsetof(bench_opts_t, output_len), 1 },
    { OPT_PREFIX, "random-prefix-len", offsetof(bench_opts_t, prefix_len), 1 },
    { OPT_REP_PREFIX, "prefix-repetition-prefix-len", offsetof(bench_opts_t, rep_prefix_len), 1 },
    { OPT_REP_SUFFIX, "prefix-repetition-suffix-len", offsetof(bench_opts_t, rep_suffix_len), 1 },
    { OPT_REP_NUM, "prefix-repetition-num-prefixes", offsetof(bench_opts_t, rep_num_prefixes), 1 },
    { OPT_REP_OUT, "prefix-repetition-output-len", offsetof(bench_opts_t, rep_output_len), 1 },
    { OPT_SONNET_IN, "sonnet-input-len", offsetof(bench_opts_t, sonnet_input_len), 1 },
    { OPT_SONNET_OUT, "sonnet-output-len", offsetof(bench_opts_t, sonnet_output_len), 1 },
    { OPT_SONNET_PREFIX, "sonnet-prefix-len", offsetof(bench_opts_t, sonnet_prefix_len), 1 },
    { OPT_SPEC_OUT, "spec-bench-output-len", offsetof(bench_opts_t, spec_bench_output_len), 1 },
    { OPT_TXT_IN, "txt-slices-input-len", offsetof(bench_opts_t, txt_slices_input_len), 1 },
    { OPT_TXT_OUT, "txt-slices-output-len", offsetof(bench_opts_t, txt_slices_output_len), 1 },
    { OPT_NUM_PROMPTS, "num-prompts", offsetof(bench_opts_t, num_prompts), 1 },
    { OPT_SHAREGPT_OUT, "sharegpt-output-len", offsetof(bench_opts_t, sharegpt_output_len), 1 },
    { OPT_CUSTOM_OUT, "custom-output-len", offsetof(bench_opts_t, custom_output_len), 1 },
    { OPT_WARMUPS, "num-warmups", offsetof(bench_opts_t, num_warmups), 1 },
    { OPT_RAMP_START, "ramp-up-start-rps", offsetof(bench_opts_t, ramp_start_rps), 0 },
    { OPT_RAMP_END, "ramp-up-end-rps", offsetof(bench_opts_t, ramp_end_rps), 0 },
    { OPT_MAX_CONC, "max-concurrency", offsetof(bench_opts_t, max_concurrency), 1 },
    { OPT_RANGE, "random-range-ratio", offsetof(bench_opts_t, range_ratio), 0 },
    { OPT_RATE, "request-rate", offsetof(bench_opts_t, request_rate), 0 },
    { OPT_BURST, "burstiness", offsetof(bench_opts_t, burstiness), 0 },
    { OPT_TEMPERATURE, "temperature", offsetof(bench_opts_t, temperature), 0 },
    { OPT_TOP_P, "top-p", offsetof(bench_opts_t, top_p), 0 },
    { OPT_TOP_K, "top-k", offsetof(bench_opts_t, top_k), 0 },
    { OPT_MIN_P, "min-p", offsetof(bench_opts_t, min_p), 0 },
    { OPT_TIMEOUT, "timeout", offsetof(bench_opts_t, timeout_s), 0 },
    { OPT_REQ_TIMEOUT, "request-timeout", offsetof(bench_opts_t, request_timeout_s), 0 },
    { OPT_READY_TIMEOUT, "ready-check-timeout-sec", offsetof(bench_opts_t, ready_timeout_s), 0 },
};


static const char  bench_usage[] =
"usage: kimi-bench --model NAME [options]   (vLLM `bench serve` flags)\n"
"target:\n"
"  --base-url URL            http://HOST:PORT[/prefix] (else --host/--port)\n"
"  --host H --port P         default 127.0.0.1 8000\n"
"  --endpoint PATH           /v1/completions (default) or\n"
"                            /v1/chat/completions\n"
"  --backend NAME            openai (completions) | openai-chat\n"
"  --model NAME              model id; also the tokenizer dir by default\n"
"  --served-model-name NAME  model name sent in requests (default --model)\n"
"  --tokenizer DIR           the model directory's tokenizer (tiktoken.model\n"
"                            or a Hugging Face tokenizer.json)\n"
"  --api-key KEY             Authorization: Bearer KEY (or OPENAI_API_KEY)\n"
"  --header KEY=VALUE ...    more headers on every request\n"
"  --tokenizer-mode auto|hf  accepted (one tokenizer reader)\n"
"  --trust-remote-code       accepted (the tokenizer reader runs no code)\n"
"  --request-id-prefix P     x-request-id P0, P1, ... (default bench-RANDOM-)\n"
"  --logprobs N              completions: logprobs N per token (default null)\n"
"dataset:\n"
"  --dataset-name random|sharegpt|custom|prefix_repetition|burstgpt|sonnet|\n"
"                 spec_bench|txt-slices\n"
"  --num-prompts N (1000)      --seed S (0)\n"
"  --random-input-len N (1024)  --random-output-len N (128)\n"
"  --random-range-ratio R (0)   --random-prefix-len N (0)\n"
"  --prefix-repetition-prefix-len N (256)  --prefix-repetition-suffix-len N\n"
"                            (256)  --prefix-repetition-num-prefixes N (10)\n"
"  --prefix-repetition-output-len N (128): prompts sharing N prefixes\n"
"  --input-len N, --output-len N  vLLM's general lengths (the dataset's)\n"
"  --dataset-path FILE       sharegpt: ShareGPT's JSON; custom: JSON lines of\n"
"                            {\"prompt\": ...} (shuffled by --seed as vLLM);\n"
"                            burstgpt: the BurstGPT trace's CSV; sonnet: poem\n"
"                            lines (vLLM's benchmarks/sonnet.txt); spec_bench:\n"
"                            Spec-Bench's question.jsonl; txt-slices: any text\n"
"  --sharegpt-output-len N   (default: each reply's own length)\n"
"  --custom-output-len N (256)  --custom-skip-chat-template\n"
"  --sonnet-input-len N (550)  --sonnet-output-len N (150)\n"
"  --sonnet-prefix-len N (200): lines shared by every prompt\n"
"  --spec-bench-output-len N (256)  --spec-bench-category NAME\n"
"  --txt-slices-input-len N (1024)  --txt-slices-output-len N (128)\n"
"  --disable-shuffle         --no-oversample\n"
"traffic:\n"
"  --request-rate R          req/s, Poisson (default inf: all at t=0)\n"
"  --burstiness B            gamma shape (1 = Poisson)\n"
"  --ramp-up-strategy linear|exponential  --ramp-up-start-rps R\n"
"  --ramp-up-end-rps R       the rate climbs from start to end over the run\n"
"  --max-concurrency N       at most N requests in flight\n"
"  --ignore-eos              always on for the random dataset (as vLLM)\n"
"  --num-warmups N           N copies of the test request first, not counted\n"
"  --temperature T           default 0.0 (greedy, as vLLM)\n"
"  --top-p P, --top-k K, --min-p P   sent only when given\n"
"output:\n"
"  --percentile-metrics L    default ttft,tpot,itl (e2el on request)\n"
"  --metric-percentiles L    default 99\n"
"  --goodput KEY:MS ...      SLOs (ttft, tpot, e2el): report request goodput\n"
"  --save-result [--result-dir D] [--result-filename F] [--save-detailed]\n"
"  --append-result           add the result to the file as one more line\n"
"  --metadata KEY=VALUE ...  extra keys of the saved result\n"
"  --plot FILE.png           TTFT/ITL histograms, throughput over time\n"
"limits:\n"
"  --timeout S               whole run (3600); what is left fails\n"
"  --request-timeout S       one request (default: none)\n"
"  --ready-check-timeout-sec S  initial test request (600; 0 skips)\n"
"  --disable-tqdm            no progress line on stderr\n"
"  --dump-prompts FILE       write the prompts and their token counts as\n"
"                            JSON (to check them with another tokenizer)\n"
"  --engine-ipc-dir DIR      kimi-engine's --ipc-dir on this host: also\n"
"                            report the gateway's added latency (engine\n"
"                            publish -> client read) of first tokens, from\n"
"                            the engine's own stamp\n"
"  --observer-spin           ... and of every token: a thread spins over the\n"
"                            token rings (needs a free core)\n"
"  --observer-max-width-us W per-token: only tokens whose publish time is\n"
"                            known to W us count (default 10)\n";


static int
bench_parse_double(const char *name, const char *s, double *out)
{
    char  *e;

    errno = 0;
    *out = strtod(s, &e);
    if (errno != 0 || e == s || *e != '\0' || isnan(*out)) {
        fprintf(stderr, "kimi-bench: --%s: \"%s\" is not a number\n", name,
                s);
        return -1;
    }

    return 0;
}


static int
bench_parse_u32(const char *name, const char *s, uint32_t *out)
{
    unsigned long long  v;
    char               *e;

    errno = 0;
    v = strtoull(s, &e, 10);
    if (errno != 0 || e == s || *e != '\0' || v > UINT32_MAX || s[0] == '-') {
        fprintf(stderr, "kimi-bench: --%s: \"%s\" is not a count\n", name, s);
        return -1;
    }
    *out = (uint32_t) v;

    return 0;
}


/* 1 if c is one of bench_num_opts (parsed into o, or -1 if bad), else 0. */
static int
bench_parse_num_opt(int c, const char *arg, bench_opts_t *o)
{
    size_t                  i;
    char                   *field;
    const bench_num_opt_t  *n;

    for (i = 0; i < sizeof(bench_num_opts) / sizeof(bench_num_opts[0]); i++) {
        n = &bench_num_opts[i];
        if (n->opt != c) {
            continue;
        }

        field = (char *) o + n->offset;
        if (n->is_u32 ? bench_parse_u32(n->name, arg, (uint32_t *) field)
                      : bench_parse_double(n->name, arg, (double *) field))
        {
            return -1;
        }
        if (c == OPT_TOP_K && (o->top_k != floor(o->top_k) || o->top_k < -1)) {
            fprintf(stderr, "kimi-bench: --top-k must be an integer >= -1, "
                    "got %s\n", arg);
            return -1;
        }
        return 1;
    }

    return 0;
}


/*
 * vLLM's flags that take several values (--goodput KEY:MS ..., --header
 * KEY=VALUE ..., --metadata KEY=VALUE ...): their values are taken out of
 * argv here, up to the next "--" argument, before getopt sees it.  Returns
 * the new argc (argv is rewritten in place).
 */
static int bench_parse_goodput(const char *arg, bench_opts_t *o);

static int
bench_take_lists(int argc, char **argv, bench_opts_t *o)
{
    int      i, j, out = 1;
    char  ***list;
    size_t  *n;

    o->headers = calloc(argc, sizeof(char *));
    o->metadata = calloc(argc, sizeof(char *));
    if (o->headers == NULL || o->metadata == NULL) {
        return -1;
    }

    for (i = 1; i < argc; i++) {
        const char  *name = argv[i], *eq = strchr(name, '=');
        size_t       len = eq && strncmp(name, "--", 2) == 0
                           ? (size_t) (eq - name) : strlen(name);
        int          goodput = len == 9 && strncmp(name, "--goodput", 9) == 0;

        list = NULL;
        n = NULL;
        if (len == 8 && strncmp(name, "--header", 8) == 0) {
            list = &o->headers;
            n = &o->n_headers;
        } else if (len == 10 && strncmp(name, "--metadata", 10) == 0) {
            list = &o->metadata;
            n = &o->n_metadata;
        }

        if (list == NULL && !goodput) {
            argv[out++] = argv[i];
            continue;
        }

        /* "--flag=VALUE" carries its first value */
        int  inline_value = name[len] == '=';

        if (inline_value) {
            argv[i] = (char *) name + len + 1;
            j = i;
        } else {
            j = i + 1;
        }
        i = j;

        for (; j < argc && ((inline_value && j == i)
                            || strncmp(argv[j], "--", 2) != 0); j++)
        {
            if (goodput) {
                if (bench_parse_goodput(argv[j], o) != 0) {
                    return -1;
                }
                continue;
            }
            if (strchr(argv[j], '=') == NULL || argv[j][0] == '=') {
                fprintf(stderr, "kimi-bench: %.*s \"%s\": expected KEY=VALUE\n",
                        (int) len, name, argv[j]);
                return -1;
            }
            if (list == &o->headers && strpbrk(argv[j], "\r\n") != NULL) {
                fprintf(stderr, "kimi-bench: --header \"%s\": no line breaks\n",
                        argv[j]);
                return -1;
            }
            (*list)[(*n)++] = argv[j];
        }

        if (j == i) {
            fprintf(stderr, "kimi-bench: %.*s needs at least one value\n",
                    (int) len, name);
            return -1;
        }
        i = j - 1;
    }

    argv[out] = NULL;
    return out;
}


/* One --goodput SLO, "ttft:MS", "tpot:MS" or "e2el:MS" */
static int
bench_parse_goodput(const char *arg, bench_opts_t *o)
{
    static const char *const  keys[] = { "ttft", "tpot", "e2el" };
    const char               *colon = strchr(arg, ':');
    double                    ms;
    size_t                    k;

    for (k = 0; colon != NULL && k < 3; k++) {
        if ((size_t) (colon - arg) == strlen(keys[k])
            && strncmp(arg, keys[k], colon - arg) == 0)
        {
            break;
        }
    }

    if (colon == NULL || k == 3) {
        fprintf(stderr, "kimi-bench: --goodput \"%s\": expected KEY:VALUE "
                "with KEY ttft, tpot or e2el\n", arg);
        return -1;
    }
    if (bench_parse_double("goodput", colon + 1, &ms) != 0 || !(ms >= 0.0)) {
        fprintf(stderr, "kimi-bench: --goodput \"%s\": the SLO must be a "
                "number of milliseconds >= 0\n", arg);
        return -1;
    }

    o->goodput_ms[k] = ms;
    o->goodput_set = 1;
    return 0;
}


static int
bench_parse_args(int argc, char **argv, bench_opts_t *o)
{
    const char  *pcts = "99", *endpoint = NULL, *backend = NULL;
    char        *dup, *p, *save;
    double       d;
    uint32_t     u;
    int          c, port_set = 0;

    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 8000;
    o->dataset_name = "random";
    o->input_len = 1024;
    o->output_len = 128;
    o->num_prompts = 1000;
    o->rep_prefix_len = 256;                /* vLLM's defaults */
    o->rep_suffix_len = 256;
    o->rep_num_prefixes = 10;
    o->rep_output_len = 128;
    o->custom_output_len = 256;
    o->sonnet_input_len = 550;
    o->sonnet_output_len = 150;
    o->sonnet_prefix_len = 200;
    o->spec_bench_output_len = 256;
    o->txt_slices_input_len = 1024;
    o->txt_slices_output_len = 128;
    o->goodput_ms[0] = o->goodput_ms[1] = o->goodput_ms[2] = NAN;
    o->ramp_start_rps = o->ramp_end_rps = NAN;

    argc = bench_take_lists(argc, argv, o);
    if (argc < 0) {
        return -1;
    }
    o->request_rate = INFINITY;
    o->burstiness = 1.0;
    o->temperature = 0.0;
    o->logprobs = -1;           /* -1: null */
    o->top_p = NAN;             /* NAN: not sent (the server's default) */
    o->top_k = NAN;
    o->min_p = NAN;
    o->percentile_metrics = "ttft,tpot,itl";
    o->timeout_s = 3600.0;
    o->ready_timeout_s = 600.0;
    o->observer_max_width_us = 10.0;

    while ((c = getopt_long(argc, argv, "h", bench_options, NULL)) != -1) {
        switch (bench_parse_num_opt(c, optarg, o)) {
        case 1:
            continue;
        case -1:
            return -1;
        }

        switch (c) {
        case OPT_BACKEND:      backend = optarg; break;
        case OPT_BASE_URL:     o->base_url = optarg; break;
        case OPT_HOST:         o->host = optarg; break;
        case OPT_ENDPOINT:     endpoint = optarg; break;
        case OPT_MODEL:        o->model = optarg; break;
        case OPT_SERVED_NAME:  o->served_model_name = optarg; break;
        case OPT_TOKENIZER:    o->tokenizer = optarg; break;
        case OPT_API_KEY:      o->api_key = optarg; break;
        case OPT_LABEL:        o->label = optarg; break;
        case OPT_DATASET:      o->dataset_name = optarg; break;
        case OPT_DATASET_PATH: o->dataset_path = optarg; break;
        case OPT_SKIP_TEMPLATE: o->skip_chat_template = 1; break;
        case OPT_SPEC_CATEGORY: o->spec_bench_category = optarg; break;
        case OPT_NO_SHUFFLE:   o->disable_shuffle = 1; break;
        case OPT_NO_OVERSAMPLE: o->no_oversample = 1; break;
        case OPT_RAMP:         o->ramp_up = optarg; break;
        case OPT_APPEND:       o->append_result = 1; o->save_result = 1; break;

        case OPT_TRUST_REMOTE:
            break;              /* vLLM's tokenizer loading flag: no code here */

        case OPT_REQ_ID_PREFIX:
            if (strlen(optarg) > 64 || strpbrk(optarg, "\r\n") != NULL) {
                fprintf(stderr, "kimi-bench: --request-id-prefix: at most 64 "
                        "characters, one line\n");
                return -1;
            }
            o->request_id_prefix = optarg;
            break;

        case OPT_LOGPROBS:
            if (bench_parse_u32("logprobs", optarg, &u) != 0) {
                return -1;
            }
            o->logprobs = (int) u;
            break;

        case OPT_TOK_MODE:
            if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "hf") != 0) {
                fprintf(stderr, "kimi-bench: --tokenizer-mode %s: only auto "
                        "and hf (the tokenizer is read from --tokenizer)\n",
                        optarg);
                return -1;
            }
            break;

        case OPT_INPUT_LEN:    /* vLLM's general lengths: the dataset's own */
        case OPT_OUTPUT_LEN:
            if (bench_parse_u32(c == OPT_INPUT_LEN ? "input-len" : "output-len",
                                optarg, &u) != 0)
            {
                return -1;
            }
            if (c == OPT_INPUT_LEN) {
                o->input_len = u;
                o->sonnet_input_len = u;
            } else {
                o->output_len = u;
                o->sharegpt_output_len = u;
                o->custom_output_len = u;
                o->sonnet_output_len = u;
                o->rep_output_len = u;
                o->spec_bench_output_len = u;
            }
            break;

        case OPT_IGNORE_EOS:   o->ignore_eos = 1; break;
        case OPT_PCT_METRICS:  o->percentile_metrics = optarg; break;
        case OPT_PCTS:         pcts = optarg; break;
        case OPT_SAVE:         o->save_result = 1; break;
        case OPT_SAVE_DETAILED: o->save_detailed = 1; break;
        case OPT_RESULT_DIR:   o->result_dir = optarg; break;
        case OPT_RESULT_FILE:  o->result_filename = optarg; break;
        case OPT_PLOT:         o->plot = optarg; break;
        case OPT_NO_PROGRESS:  o->quiet = 1; break;
        case OPT_DUMP_PROMPTS: o->dump_prompts = optarg; break;
        case OPT_ENGINE_IPC:   o->engine_ipc_dir = optarg; break;
        case OPT_OBS_SPIN:     o->observer_spin = 1; break;

        case OPT_PORT:
            if (bench_parse_u32("port", optarg, &u) != 0 || u == 0
                || u > 65535)
            {
                fprintf(stderr, "kimi-bench: --port must be 1..65535\n");
                return -1;
            }
            o->port = (int) u;
            port_set = 1;
            break;

        case OPT_SEED:
            if (bench_parse_u32("seed", optarg, &u)) {
                return -1;
            }
            o->seed = u;
            break;

        case OPT_OBS_WIDTH:
            if (bench_parse_double("observer-max-width-us", optarg,
                                   &o->observer_max_width_us)
                || !(o->observer_max_width_us > 0.0))
            {
                return -1;
            }
            break;

        case 'h':
        case OPT_HELP:
            fputs(bench_usage, stdout);
            exit(0);

        default:
            fputs(bench_usage, stderr);
            return -1;
        }
    }

    if (optind < argc) {
        fprintf(stderr, "kimi-bench: unexpected argument \"%s\"\n",
                argv[optind]);
        return -1;
    }

    if (o->model == NULL) {
        fprintf(stderr, "kimi-bench: --model is required\n");
        return -1;
    }
    if (strcmp(o->dataset_name, "random") != 0
        && strcmp(o->dataset_name, "sharegpt") != 0
        && strcmp(o->dataset_name, "custom") != 0
        && strcmp(o->dataset_name, "prefix_repetition") != 0
        && strcmp(o->dataset_name, "burstgpt") != 0
        && strcmp(o->dataset_name, "sonnet") != 0
        && strcmp(o->dataset_name, "spec_bench") != 0
        && strcmp(o->dataset_name, "txt-slices") != 0)
    {
        fprintf(stderr, "kimi-bench: --dataset-name \"%s\" is not "
                "supported (random, sharegpt, custom, prefix_repetition, "
                "burstgpt, sonnet, spec_bench, txt-slices)\n",
                o->dataset_name);
        return -1;
    }
    if (strcmp(o->dataset_name, "prefix_repetition") == 0) {
        if (o->rep_num_prefixes == 0 || o->num_prompts < o->rep_num_prefixes) {
            fprintf(stderr, "kimi-bench: --num-prompts (%u) must be at least "
                    "--prefix-repetition-num-prefixes (%u, at least 1)\n",
                    o->num_prompts, o->rep_num_prefixes);
            return -1;
        }
        if (o->seed > UINT32_MAX) {
            fprintf(stderr, "kimi-bench: --seed must be below 2^32 for "
                    "prefix_repetition (numpy's np.random.seed)\n");
            return -1;
        }
    }
    if (strcmp(o->dataset_name, "random") != 0
        && strcmp(o->dataset_name, "prefix_repetition") != 0
        && o->dataset_path == NULL)
    {
        fprintf(stderr, "kimi-bench: --dataset-name %s needs "
                "--dataset-path\n", o->dataset_name);
        return -1;
    }
    if (o->txt_slices_input_len == 0 || o->txt_slices_output_len == 0) {
        fprintf(stderr, "kimi-bench: --txt-slices-input-len and "
                "--txt-slices-output-len must be at least 1\n");
        return -1;
    }
    if (o->spec_bench_output_len == 0) {
        fprintf(stderr, "kimi-bench: --spec-bench-output-len must be at "
                "least 1\n");
        return -1;
    }
    if (o->custom_output_len == 0) {
        fprintf(stderr, "kimi-bench: --custom-output-len must be at least "
                "1\n");
        return -1;
    }
    if (o->num_prompts == 0) {
        fprintf(stderr, "kimi-bench: --num-prompts must be at least 1\n");
        return -1;
    }
    if (!(o->request_rate > 0.0)) {
        fprintf(stderr, "kimi-bench: --request-rate must be > 0 (or inf)\n");
        return -1;
    }
    /* vLLM's ramp-up rules */
    if (o->ramp_up != NULL) {
        if (strcmp(o->ramp_up, "linear") != 0
            && strcmp(o->ramp_up, "exponential") != 0)
        {
            fprintf(stderr, "kimi-bench: --ramp-up-strategy must be linear "
                    "or exponential\n");
            return -1;
        }
        if (!isinf(o->request_rate)) {
            fprintf(stderr, "kimi-bench: with --ramp-up-strategy the ramp "
                    "sets the request rate: leave out --request-rate\n");
            return -1;
        }
        if (isnan(o->ramp_start_rps) || isnan(o->ramp_end_rps)) {
            fprintf(stderr, "kimi-bench: --ramp-up-strategy needs "
                    "--ramp-up-start-rps and --ramp-up-end-rps\n");
            return -1;
        }
        if (!(o->ramp_start_rps > 0.0) || isinf(o->ramp_end_rps)
            || o->ramp_start_rps > o->ramp_end_rps)
        {
            fprintf(stderr, "kimi-bench: the ramp needs 0 < "
                    "--ramp-up-start-rps <= --ramp-up-end-rps\n");
            return -1;
        }

    } else if (!isnan(o->ramp_start_rps) || !isnan(o->ramp_end_rps)) {
        fprintf(stderr, "kimi-bench: --ramp-up-start-rps/--ramp-up-end-rps "
                "need --ramp-up-strategy\n");
        return -1;
    }
    if (!(o->burstiness > 0.0)) {
        fprintf(stderr, "kimi-bench: --burstiness must be > 0\n");
        return -1;
    }
    if (!(o->range_ratio >= 0.0 && o->range_ratio < 1.0)) {
        fprintf(stderr, "kimi-bench: --random-range-ratio must be in "
                "[0, 1)\n");
        return -1;
    }
    if (!(o->timeout_s > 0.0) || o->request_timeout_s < 0.0
        || o->ready_timeout_s < 0.0)
    {
        fprintf(stderr, "kimi-bench: timeouts must be positive\n");
        return -1;
    }

    /* backend and endpoint: either implies the other */
    if (backend == NULL) {
        backend = endpoint != NULL && strstr(endpoint, "chat/completions")
                  ? "openai-chat" : "openai";
    }
    if (strcmp(backend, "openai") == 0 || strcmp(backend, "vllm") == 0) {
        o->backend = BENCH_BACKEND_COMPLETIONS;
        o->endpoint = (char *) (endpoint ? endpoint : "/v1/completions");
    } else if (strcmp(backend, "openai-chat") == 0) {
        o->backend = BENCH_BACKEND_CHAT;
        o->endpoint = (char *) (endpoint ? endpoint
                                         : "/v1/chat/completions");
    } else {
        fprintf(stderr, "kimi-bench: --backend \"%s\": only openai and "
                "openai-chat are supported\n", backend);
        return -1;
    }
    o->backend_name = (char *) backend;

    {
        const char  *want = o->backend == BENCH_BACKEND_CHAT
                            ? "chat/completions" : "completions";
        size_t       n = strlen(o->endpoint), k = strlen(want);

        if (n < k || strcmp(o->endpoint + n - k, want) != 0) {
            fprintf(stderr, "kimi-bench: --endpoint \"%s\" must end with "
                    "\"%s\" for --backend %s\n", o->endpoint, want, backend);
            return -1;
        }
    }

    if (o->base_url != NULL && port_set) {
        fprintf(stderr, "kimi-bench: --port is ignored with --base-url\n");
    }

    if (o->tokenizer == NULL) {
        o->tokenizer = o->model;
    }
    if (o->served_model_name == NULL) {
        o->served_model_name = o->model;
    }
    if (o->api_key == NULL) {
        o->api_key = getenv("OPENAI_API_KEY");
    }

    /* vLLM: a random dataset on an OpenAI backend always ignores EOS */
    if (strcmp(o->dataset_name, "random") == 0) {
        o->ignore_eos = 1;
    }

    dup = strdup(pcts);
    for (p = strtok_r(dup, ",", &save); p != NULL;
         p = strtok_r(NULL, ",", &save))
    {
        if (o->n_percentiles == BENCH_MAX_PERCENTILES
            || bench_parse_double("metric-percentiles", p, &d) != 0
            || d < 0.0 || d > 100.0)
        {
            fprintf(stderr, "kimi-bench: --metric-percentiles: up to %d "
                    "numbers in [0, 100]\n", BENCH_MAX_PERCENTILES);
            free(dup);
            return -1;
        }
        o->percentiles[o->n_percentiles++] = d;
    }
    free(dup);

    dup = strdup(o->percentile_metrics);
    for (p = strtok_r(dup, ",", &save); p != NULL;
         p = strtok_r(NULL, ",", &save))
    {
        if (strcmp(p, "ttft") && strcmp(p, "tpot") && strcmp(p, "itl")
            && strcmp(p, "e2el"))
        {
            fprintf(stderr, "kimi-bench: --percentile-metrics: \"%s\" is "
                    "not one of ttft, tpot, itl, e2el\n", p);
            free(dup);
            return -1;
        }
    }
    free(dup);

    return 0;
}


/* http://host[:port][/prefix] or --host/--port; resolves once, here. */
static int
bench_resolve(const bench_opts_t *o, bench_client_cfg_t *cfg, char *host_hdr,
    size_t host_len, char *prefix, size_t prefix_len, kimi_err_t *err)
{
    struct addrinfo   hints, *res;
    char              host[256], port[16];
    const char       *p, *slash, *colon;
    int               rc;

    prefix[0] = '\0';

    if (o->base_url != NULL) {
        if (strncmp(o->base_url, "https://", 8) == 0) {
            return kimi_err_set(err, KIMI_EUNSUPPORTED, "--base-url \"%s\": "
                                "https is not supported; put the bench "
                                "next to the server", o->base_url);
        }
        if (strncmp(o->base_url, "http://", 7) != 0) {
            return kimi_err_set(err, KIMI_EINVAL, "--base-url \"%s\" must "
                                "start with http://", o->base_url);
        }
        p = o->base_url + 7;
        slash = strchr(p, '/');
        if (slash == NULL) {
            slash = p + strlen(p);
        }
        snprintf(prefix, prefix_len, "%s", slash);
        if (prefix[0] != '\0' && prefix[strlen(prefix) - 1] == '/') {
            prefix[strlen(prefix) - 1] = '\0';
        }

        if (*p == '[') {
            colon = memchr(p, ']', slash - p);
            if (colon == NULL) {
                return kimi_err_set(err, KIMI_EINVAL, "--base-url: bad "
                                    "IPv6 address");
            }
            snprintf(host, sizeof(host), "%.*s", (int) (colon - p - 1),
                     p + 1);
            colon = colon + 1 < slash && colon[1] == ':' ? colon + 1 : NULL;

        } else {
            colon = memchr(p, ':', slash - p);
            snprintf(host, sizeof(host), "%.*s",
                     (int) ((colon ? colon : slash) - p), p);
        }

        if (colon != NULL) {
            snprintf(port, sizeof(port), "%.*s", (int) (slash - colon - 1),
                     colon + 1);
        } else {
            snprintf(port, sizeof(port), "80");
        }
        snprintf(host_hdr, host_len, "%.*s", (int) (slash - p), p);

    } else {
        snprintf(host, sizeof(host), "%s", o->host);
        snprintf(port, sizeof(port), "%d", o->port);
        snprintf(host_hdr, host_len, strchr(host, ':') ? "[%s]:%s" : "%s:%s",
                 host, port);
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;

    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        return kimi_err_set(err, KIMI_EIO, "cannot resolve \"%s\" port %s: "
                            "%s", host, port, gai_strerror(rc));
    }

    memcpy(&cfg->addr, res->ai_addr, res->ai_addrlen);
    cfg->addr_len = res->ai_addrlen;
    freeaddrinfo(res);

    return 0;
}


/* The POST as vLLM's request functions build it (openai, openai-chat). */
static int
bench_build_body(const bench_opts_t *o, bench_req_t *r, size_t index,
    const char *path, const char *host_hdr, const char *id_prefix)
{
    json_t  *js, *msg, *content, *part, *so;
    char    *json, *req;
    size_t   json_len, cap, i;
    int      n;

    js = json_object();
    json_object_set_new(js, "model", json_string(o->served_model_name));

    if (o->backend == BENCH_BACKEND_CHAT) {
        part = json_object();
        json_object_set_new(part, "type", json_string("text"));
        json_object_set_new(part, "text",
                            json_stringn(r->prompt, r->prompt_bytes));
        content = json_array();
        json_array_append_new(content, part);
        msg = json_object();
        json_object_set_new(msg, "role", json_string("user"));
        json_object_set_new(msg, "content", content);
        json_object_set_new(js, "messages", json_array());
        json_array_append_new(json_object_get(js, "messages"), msg);
        json_object_set_new(js, "max_completion_tokens",
                            json_integer(r->output_len));

    } else {
        json_object_set_new(js, "prompt",
                            json_stringn(r->prompt, r->prompt_bytes));
        json_object_set_new(js, "repetition_penalty", json_real(1.0));
        json_object_set_new(js, "max_tokens", json_integer(r->output_len));
        json_object_set_new(js, "logprobs", o->logprobs < 0 ? json_null()
                                            : json_integer(o->logprobs));
    }

    json_object_set_new(js, "stream", json_true());
    so = json_object();
    json_object_set_new(so, "include_usage", json_true());
    json_object_set_new(js, "stream_options", so);
    if (o->ignore_eos) {
        json_object_set_new(js, "ignore_eos", json_true());
    }
    json_object_set_new(js, "temperature", json_real(o->temperature));
    if (!isnan(o->top_p)) {
        json_object_set_new(js, "top_p", json_real(o->top_p));
    }
    if (!isnan(o->top_k)) {
        json_object_set_new(js, "top_k", json_integer((json_int_t) o->top_k));
    }
    if (!isnan(o->min_p)) {
        json_object_set_new(js, "min_p", json_real(o->min_p));
    }

    json = json_dumps(js, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(js);
    if (json == NULL) {
        return -1;
    }
    json_len = strlen(json);

    cap = json_len + 1024 + (o->api_key ? strlen(o->api_key) : 0)
          + strlen(path) + strlen(host_hdr) + strlen(id_prefix);
    for (i = 0; i < o->n_headers; i++) {
        cap += strlen(o->headers[i]) + 4;
    }
    req = malloc(cap);
    if (req == NULL) {
        free(json);
        return -1;
    }

    n = snprintf(req, cap,
                 "POST %s HTTP/1.1\r\n"
                 "Host: %s\r\n"
                 "User-Agent: kimi-bench\r\n"
                 "Accept: */*\r\n"
                 "Content-Type: application/json\r\n"
                 "%s%s%s",
                 path, host_hdr,
                 o->api_key ? "Authorization: Bearer " : "",
                 o->api_key ? o->api_key : "", o->api_key ? "\r\n" : "");
    /* --header KEY=VALUE: after the fixed ones, before the request id
     * (vLLM: they override the backend's, request ids override them) */
    for (i = 0; i < o->n_headers; i++) {
        const char  *eq = strchr(o->headers[i], '=');

        n += snprintf(req + n, cap - n, "%.*s: %s\r\n",
                      (int) (eq - o->headers[i]), o->headers[i], eq + 1);
    }
    n += snprintf(req + n, cap - n,
                  "x-request-id: %s%zu\r\n"
                  "Content-Length: %zu\r\n"
                  "\r\n",
                  id_prefix, index, json_len);
    memcpy(req + n, json, json_len);

    r->body = req;
    r->body_len = n + json_len;
    free(json);

    return 0;
}


static int
bench_dump_prompts(const char *path, const bench_req_t *reqs, size_t n)
{
    json_t  *a = json_array(), *e;
    size_t   i;
    int      rc;

    for (i = 0; i < n; i++) {
        e = json_object();
        json_object_set_new(e, "prompt", json_stringn(reqs[i].prompt,
                                                      reqs[i].prompt_bytes));
        json_object_set_new(e, "prompt_len",
                            json_integer(reqs[i].prompt_len));
        json_object_set_new(e, "output_len",
                            json_integer(reqs[i].output_len));
        json_array_append_new(a, e);
    }

    rc = json_dump_file(a, path, JSON_PRESERVE_ORDER);
    json_decref(a);
    if (rc != 0) {
        fprintf(stderr, "kimi-bench: cannot write \"%s\": %s\n", path,
                strerror(errno));
    }

    return rc;
}


static void
bench_req_clear_output(bench_req_t *r)
{
    free(r->itl_s);
    free(r->text);
    free(r->error);
    r->itl_s = NULL;
    r->n_itl = r->cap_itl = 0;
    r->text = NULL;
    r->text_len = r->text_cap = 0;
    r->error = NULL;
    r->success = 0;
    r->got_usage = 0;
    r->output_tokens = 0;
    r->prompt_tokens_server = 0;
}


static double
bench_cpu_s(int sys)
{
    struct rusage  ru;
    struct timeval tv;

    getrusage(RUSAGE_SELF, &ru);
    tv = sys ? ru.ru_stime : ru.ru_utime;

    return (double) tv.tv_sec + (double) tv.tv_usec * 1e-6;
}


/* vLLM's "Starting initial single prompt test run...": request 0 until it
 * succeeds or the ready timeout passes. */
/* vLLM's --num-warmups: that many copies of the test request, at most
 * --max-concurrency at once, before the measured run (not counted) */
static int
bench_warmup(const bench_opts_t *o, const bench_client_cfg_t *cfg0,
    const bench_req_t *first)
{
    bench_client_cfg_t  cfg = *cfg0;
    bench_req_t        *w;
    double             *zero, dur;
    kimi_err_t          err;
    uint32_t            i;
    int                 rc;

    if (o->num_warmups == 0) {
        return 0;
    }

    printf("Warming up with %u requests...\n", o->num_warmups);
    fflush(stdout);

    w = calloc(o->num_warmups, sizeof(bench_req_t));
    zero = calloc(o->num_warmups, sizeof(double));
    if (w == NULL || zero == NULL) {
        free(w);
        free(zero);
        fprintf(stderr, "kimi-bench: out of memory for the warmup\n");
        return -1;
    }

    for (i = 0; i < o->num_warmups; i++) {
        w[i].prompt_len = first->prompt_len;
        w[i].output_len = first->output_len;
        w[i].body = first->body;            /* shared: never freed here */
        w[i].body_len = first->body_len;
    }

    cfg.progress = 0;
    rc = bench_client_run(&cfg, w, o->num_warmups, zero, &dur, NULL, &err);
    if (rc != 0) {
        fprintf(stderr, "kimi-bench: warmup: %s\n", err.msg);
    }

    for (i = 0; i < o->num_warmups; i++) {
        bench_req_clear_output(&w[i]);
    }
    free(w);
    free(zero);

    if (rc == 0) {
        printf("Warmup run completed.\n");
    }

    return rc;
}


static int
bench_ready_check(const bench_opts_t *o, const bench_client_cfg_t *cfg0,
    const bench_req_t *first)
{
    bench_client_cfg_t  cfg = *cfg0;
    bench_req_t         r;
    double              zero = 0.0, dur, waited = 0.0;
    kimi_err_t          err;
    struct timespec     one_s = { 1, 0 };

    if (o->ready_timeout_s <= 0.0) {
        printf("Skipping endpoint ready check.\n");
        return 0;
    }

    printf("Starting initial single prompt test run...\n");
    fflush(stdout);

    cfg.progress = 0;
    cfg.max_concurrency = 0;

    for ( ;; ) {
        memset(&r, 0, sizeof(r));
        r.prompt_len = first->prompt_len;
        r.output_len = first->output_len;
        r.body = first->body;
        r.body_len = first->body_len;

        cfg.timeout_s = o->ready_timeout_s - waited;
        if (bench_client_run(&cfg, &r, 1, &zero, &dur, NULL, &err) != 0) {
            fprintf(stderr, "kimi-bench: %s\n", err.msg);
            return -1;
        }
        waited += dur;

        if (r.success) {
            bench_req_clear_output(&r);
            printf("Initial test run completed.\n");
            return 0;
        }

        /* retried until the timeout like vLLM's wait_for_endpoint(),
         * except a 4xx: the request itself is wrong, waiting cannot help */
        if (r.error == NULL || strncmp(r.error, "HTTP 4", 6) == 0
            || waited + 1.0 >= o->ready_timeout_s)
        {
            fprintf(stderr, "kimi-bench: Initial test run failed - please "
                    "make sure the benchmark arguments are correct.  Error: "
                    "%s\n", r.error ? r.error : "unknown");
            bench_req_clear_output(&r);
            return -1;
        }

        bench_req_clear_output(&r);
        nanosleep(&one_s, NULL);
        waited += 1.0;
    }
}


static void
bench_result_filename(const bench_opts_t *o, char *buf, size_t len)
{
    const char  *base = strrchr(o->model, '/');
    char         rate[64], date[32], conc[32] = "";
    time_t       now = time(NULL);
    struct tm    tm;

    base = base && base[1] ? base + 1 : o->model;
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y%m%d-%H%M%S", &tm);

    bench_py_float(o->request_rate, rate, sizeof(rate));
    if (o->max_concurrency > 0) {
        snprintf(conc, sizeof(conc), "-concurrency%u", o->max_concurrency);
    }

    if (o->result_filename != NULL) {
        snprintf(buf, len, "%s%s%s", o->result_dir ? o->result_dir : "",
                 o->result_dir ? "/" : "", o->result_filename);
    } else {
        snprintf(buf, len, "%s%s%s-%sqps%s-%s-%s.json",
                 o->result_dir ? o->result_dir : "",
                 o->result_dir ? "/" : "",
                 o->label ? o->label : o->backend_name, rate, conc, base,
                 date);
    }
}


int
main(int argc, char **argv)
{
    bench_opts_t        o;
    bench_client_cfg_t  cfg;
    bench_metrics_t     m;
    bench_req_t        *reqs = NULL;
    kimi_tokenizer_t   *tok = NULL;
    kimi_err_t          err;
    struct rlimit       rl;
    struct stat         st;
    double             *arrivals = NULL, duration, u0, s0, t0_abs = 0.0;
    bench_observer_t   *ob = NULL;
    bench_added_t       added;
    char                host_hdr[300], prefix[512], path[1024], file[2048];
    char                id_prefix[80], num[64];
    int32_t            *ids;
    size_t              i, n_ids, n;
    int                 rc = 1;

    memset(&added, 0, sizeof(added));

    if (bench_parse_args(argc, argv, &o) != 0) {
        return 2;
    }
    n = strcmp(o.dataset_name, "prefix_repetition") == 0
        ? bench_prefix_rep_count(&o) : o.num_prompts;

    /* thousands of streams need thousands of descriptors */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    memset(&cfg, 0, sizeof(cfg));
    cfg.timeout_s = o.timeout_s;
    cfg.request_timeout_s = o.request_timeout_s;
    cfg.max_concurrency = o.max_concurrency;
    cfg.is_chat = o.backend == BENCH_BACKEND_CHAT;
    cfg.progress = !o.quiet && isatty(STDERR_FILENO);

    if (bench_resolve(&o, &cfg, host_hdr, sizeof(host_hdr), prefix,
                      sizeof(prefix), &err) != 0)
    {
        fprintf(stderr, "kimi-bench: %s\n", err.msg);
        return 1;
    }
    snprintf(path, sizeof(path), "%s%s", prefix, o.endpoint);

    if (stat(o.tokenizer, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "kimi-bench: tokenizer \"%s\" is not a directory; "
                "pass --tokenizer DIR (the model directory with "
                "its tokenizer)\n", o.tokenizer);
        return 1;
    }
    if (kimi_tokenizer_load(&tok, o.tokenizer, &err) != 0) {
        fprintf(stderr, "kimi-bench: tokenizer: %s\n", err.msg);
        return 1;
    }

    reqs = calloc(n, sizeof(bench_req_t));
    arrivals = calloc(n, sizeof(double));
    if (reqs == NULL || arrivals == NULL) {
        fprintf(stderr, "kimi-bench: out of memory for %zu requests\n", n);
        goto done;
    }

    if ((strcmp(o.dataset_name, "random") == 0
         ? bench_dataset_random(&o, tok, reqs, &err)
         : strcmp(o.dataset_name, "prefix_repetition") == 0
         ? bench_dataset_prefix_rep(&o, tok, reqs, &err)
         : strcmp(o.dataset_name, "sonnet") == 0
         ? bench_dataset_sonnet(&o, tok, reqs, &err)
         : strcmp(o.dataset_name, "txt-slices") == 0
         ? bench_dataset_txt_slices(&o, tok, reqs, &err)
         : bench_dataset_file(&o, tok, reqs, &err)) != 0)
    {
        fprintf(stderr, "kimi-bench: dataset: %s\n", err.msg);
        goto done;
    }

    if (o.request_id_prefix != NULL) {
        snprintf(id_prefix, sizeof(id_prefix), "%s", o.request_id_prefix);
    } else {
        snprintf(id_prefix, sizeof(id_prefix), "bench-%08x-",
                 (unsigned) (time(NULL) ^ getpid()));
    }
    for (i = 0; i < n; i++) {
        if (bench_build_body(&o, &reqs[i], i, path, host_hdr, id_prefix)
            != 0)
        {
            fprintf(stderr, "kimi-bench: out of memory building request "
                    "%zu\n", i);
            goto done;
        }
    }

    if (o.dump_prompts != NULL
        && bench_dump_prompts(o.dump_prompts, reqs, n) != 0)
    {
        goto done;
    }

    bench_arrivals(&o, arrivals, n);

    if (bench_ready_check(&o, &cfg, &reqs[0]) != 0
        || bench_warmup(&o, &cfg, &reqs[0]) != 0)
    {
        goto done;
    }

    printf("Starting main benchmark run...\n");
    if (o.ramp_up != NULL) {
        char  num2[64];

        bench_py_float(o.ramp_start_rps, num, sizeof(num));
        bench_py_float(o.ramp_end_rps, num2, sizeof(num2));
        printf("Traffic ramp-up strategy: %s. Will increase RPS from %s to "
               "%s RPS over the duration of the benchmark.\n", o.ramp_up,
               num, num2);
    } else {
        bench_py_float(o.request_rate, num, sizeof(num));
        printf("Traffic request rate: %s\n", num);
    }
    bench_py_float(o.burstiness, num, sizeof(num));
    printf("Burstiness factor: %s (%s)\n", num,
           o.burstiness == 1.0 ? "Poisson process" : "Gamma distribution");
    if (o.max_concurrency > 0) {
        printf("Maximum request concurrency: %u\n", o.max_concurrency);
    } else {
        printf("Maximum request concurrency: None\n");
    }
    fflush(stdout);

    if (o.engine_ipc_dir != NULL
        && bench_observer_start(&ob, o.engine_ipc_dir, o.observer_spin,
                                &err) != 0)
    {
        fprintf(stderr, "kimi-bench: %s\n", err.msg);
        goto done;
    }

    /* the client thread's own time: the observer spins on another core */
    u0 = bench_cpu_s(0);
    s0 = bench_cpu_s(1);

    if (bench_client_run(&cfg, reqs, n, arrivals, &duration, &t0_abs, &err)
        != 0)
    {
        fprintf(stderr, "kimi-bench: %s\n", err.msg);
        goto done;
    }

    u0 = bench_cpu_s(0) - u0;                /* before any post-work */
    s0 = bench_cpu_s(1) - s0;
    bench_observer_stop(ob);

    /* no usage chunk: count the text, as vLLM does with its tokenizer */
    for (i = 0; i < n; i++) {
        if (reqs[i].success && reqs[i].output_tokens == 0) {
            if (kimi_tokenize(tok, reqs[i].text ? reqs[i].text : "",
                              reqs[i].text_len, 1, &ids, &n_ids, &err) == 0)
            {
                reqs[i].output_tokens = (uint32_t) n_ids;
                free(ids);
            }
        }
    }

    if (bench_metrics_compute(reqs, n, duration, o.percentiles,
                              o.n_percentiles, &m) != 0)
    {
        fprintf(stderr, "kimi-bench: out of memory computing metrics\n");
        goto done;
    }
    m.cpu_user_s = u0;
    m.cpu_sys_s = s0;
    m.request_goodput = bench_goodput(&o, reqs, n, duration);

    if (ob != NULL) {
        /* the observer thread's CPU is in RUSAGE_SELF: take it out */
        bench_observer_join(ob, reqs, n, t0_abs, o.observer_max_width_us,
                            &added);
        u0 -= added.observer_cpu_s;
        u0 = u0 < 0.0 ? 0.0 : u0;
        m.cpu_user_s = u0;
    }

    bench_report_print(&o, &m, reqs, n);

    if (ob != NULL) {
        bench_report_added(&added, o.percentiles, o.n_percentiles);
    }

    rc = m.completed > 0 ? 0 : 1;

    if (o.save_result || o.result_filename != NULL) {
        bench_result_filename(&o, file, sizeof(file));
        if (o.result_dir != NULL) {
            mkdir(o.result_dir, 0755);
        }
        if (bench_report_json(&o, &m, reqs, n, ob ? &added : NULL, file,
                              &err) != 0)
        {
            fprintf(stderr, "kimi-bench: %s\n", err.msg);
            rc = 1;
        }
    }

    if (o.plot != NULL) {
        if (bench_report_plot(&o, &m, reqs, n, o.plot, &err) != 0) {
            fprintf(stderr, "kimi-bench: plot: %s\n", err.msg);
            rc = 1;
        }
    }

    bench_metrics_free(&m);

done:

    if (reqs != NULL) {
        for (i = 0; i < n; i++) {
            bench_req_clear_output(&reqs[i]);
            free(reqs[i].prompt);
            free(reqs[i].body);
        }
    }
    free(reqs);
    free(arrivals);
    kimi_tokenizer_free(tok);
    bench_observer_free(ob);
    free(added.added_s);
    free(added.first_added_s);

    return rc;
}
