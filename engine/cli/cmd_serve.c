/*
 * `kimi-engine serve`: flags -> model, backend, scheduler and server.
 *
 * Owns:   the serve flags (vLLM's names where vLLM has the flag), their
 *         defaults and ranges, the order of startup, and the exit code:
 *         0 after a drain, 1 when startup or serving failed, 2 for a bad
 *         command line.
 * Never:  serves anything itself (engine/server/ does) or keeps going after
 *         a flag it does not understand.
 */

#include <ctype.h>
#include <errno.h>
#include <execinfo.h>
#include <float.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "commands.h"
#include "../common/kimi_log.h"
#include "../backend/backend.h"
#include "../backend/replay/replay.h"
#include "../model/model.h"
#include "../backend/cpu/backend_cpu.h"
#include "../backend/cuda/cuda_backend.h"   /* KIMI_CUDA_PLAN_TOKENS; no CUDA types */
#include "../sched/sched.h"
#include "../parallel/dp.h"
#include "../parallel/group.h"
#include "../server/server.h"
#include "../text/kimi_text.h"

/* Kimi-K2's own numbers, used only when no --model directory says
 * otherwise (the replay backend with a "tokens" script). */
#define KIMI_K2_VOCAB           163840
#define KIMI_K2_EOS             163585      /* [EOS] */
#define KIMI_K2_IM_END          163586      /* <|im_end|>: end of a turn */
#define KIMI_SERVE_DEFAULT_LEN  8192
#define KIMI_SERVE_CPU_BATCHED_TOKENS  512  /* --max-num-batched-tokens */
#define KIMI_SERVE_CUDA_BATCHED_TOKENS 2048 /* its workspaces: at most
                                               KIMI_CUDA_PLAN_TOKENS */

typedef enum {
    OPT_STR,
    OPT_U32,
    OPT_I32,
    OPT_U64,
    OPT_FLOAT,
    OPT_ON,
    OPT_OFF,
    OPT_MODE,
} kimi_opt_kind_e;

typedef struct {
    const char  *model;
    const char  *served_model_name;
    const char  *backend;
    const char  *replay_script;
    const char  *ipc_dir;
    const char  *kv_cache_dtype;
    const char  *load_format;
    const char  *hf_overrides;
    const char  *quantization;
    const char  *log_level;
    const char  *log_format;
    uint32_t     max_model_len;           /* 0 = the model's */
    uint32_t     max_num_seqs;
    uint32_t     max_num_batched_tokens;
    uint32_t     block_size;
    uint32_t     shutdown_timeout;        /* seconds */
    uint32_t     data_parallel_size;
    uint32_t     data_parallel_size_local;  /* 0 = data_parallel_size */
    int32_t      data_parallel_start_rank;  /* -1 = unset */
    const char  *data_parallel_address;
    uint32_t     data_parallel_rpc_port;
    uint32_t     data_parallel_bootstrap_timeout;   /* seconds */
    uint32_t     data_parallel_liveness_timeout;    /* seconds */
    uint32_t     expert_parallel_mesh_port;         /* 0: ephemeral */
    int          headless;
    int          enable_expert_parallel;
    uint32_t     tensor_parallel_size;
    uint32_t     decode_context_parallel_size;
    uint32_t     pipeline_parallel_size;
    uint32_t     max_slots;               /* 0 = seqs + waiting */
    uint32_t     max_waiting;
    uint32_t     threads;
    uint32_t     device;
    uint32_t     ipc_mode;
    int32_t      replay_delay_ms;         /* -1 = the script's */
    uint64_t     seed;
    uint64_t     cpu_kv_cache_bytes;
    float        gpu_memory_utilization;
    int          enable_chunked_prefill;
    int          enable_prefix_caching;
    int          enforce_eager;
    int          help;
} kimi_serve_opts_t;

typedef struct {
    const char       *name;
    kimi_opt_kind_e   kind;
    size_t            off;
    double            min;
    double            max;
    const char       *choices;            /* "a|b|c" for OPT_STR */
    const char       *help;
} kimi_opt_t;

#define O(f)  offsetof(kimi_serve_opts_t, f)

static const kimi_opt_t  kimi_serve_opts[] = {
    { "--model", OPT_STR, O(model), 0, 0, NULL,
      "model directory (Hugging Face layout: config.json, shards, tokenizer)" },
    { "--served-model-name", OPT_STR, O(served_model_name), 0, 0, NULL,
      "names clients use in \"model\", one or more (answers carry the"
      " first; default: --model as given)" },
    { "--backend", OPT_STR, O(backend), 0, 0, "auto|cpu|cuda|replay",
      "compute backend (auto: cuda when built with it, an NVIDIA GPU is"
      " present and the kernels take the model's shapes, else cpu)" },
    { "--max-model-len", OPT_U32, O(max_model_len), 1, 1 << 24, NULL,
      "prompt + output token limit (default: the model's, 8192 without one)" },
    { "--max-num-seqs", OPT_U32, O(max_num_seqs), 1, 1 << 16, NULL,
      "sequences running at once (256)" },
    { "--max-num-batched-tokens", OPT_U32, O(max_num_batched_tokens), 1,
      1 << 24, NULL,
      "tokens per step, prefill and decode (8192; cpu backend: 512; cuda"
      " backend: 2048, and more is capped at 16384, 16384 / ranks with"
      " --enable-expert-parallel)" },
    { "--enable-chunked-prefill", OPT_ON, O(enable_chunked_prefill), 0, 0,
      NULL, "split long prompts over steps (default)" },
    { "--no-enable-chunked-prefill", OPT_OFF, O(enable_chunked_prefill), 0, 0,
      NULL, "a prompt must fit one step's token budget" },
    { "--enable-prefix-caching", OPT_ON, O(enable_prefix_caching), 0, 0,
      NULL, "reuse the KV blocks of prompt prefixes seen before (default)" },
    { "--no-enable-prefix-caching", OPT_OFF, O(enable_prefix_caching), 0, 0,
      NULL, "compute every prompt from its first token" },
    { "--gpu-memory-utilization", OPT_FLOAT, O(gpu_memory_utilization), 0.01,
      1.0, NULL, "cuda: fraction of GPU memory for weights + KV (0.9)" },
    { "--kv-cache-dtype", OPT_STR, O(kv_cache_dtype), 0, 0,
      "auto|fp8|fp8_e4m3", "KV cache element type (auto = bf16)" },
    { "--block-size", OPT_U32, O(block_size), 1, 1024, NULL,
      "tokens per KV block (64)" },
    { "--cpu-kv-cache-bytes", OPT_U64, O(cpu_kv_cache_bytes), 1, 1e15, NULL,
      "cpu/replay: KV cache budget, suffix K, M or G allowed (1G)" },
    { "--shutdown-timeout", OPT_U32, O(shutdown_timeout), 0, 86400, NULL,
      "seconds a SIGTERM drain waits before aborting in-flight requests (30)"},
    { "--seed", OPT_U64, O(seed), 0, 1.8e19, NULL,
      "seed for dummy weights (0)" },
    { "--load-format", OPT_STR, O(load_format), 0, 0,
      "auto|safetensors|dummy", "weights from files, or random (dummy)" },
    { "--hf-overrides", OPT_STR, O(hf_overrides), 0, 0, NULL,
      "JSON object replacing config.json keys" },
    { "--quantization", OPT_STR, O(quantization), 0, 0, "fp8",
      "fp8: a BF16 checkpoint's linear weights quantised to FP8 128x128"
      " blocks at load (what the cuda backend takes); FP8 ones unchanged" },
    { "-q", OPT_STR, O(quantization), 0, 0, "fp8",
      "same as --quantization" },
    { "--data-parallel-size", OPT_U32, O(data_parallel_size), 1, 64, NULL,
      "engine ranks in all, one process each (1)" },
    { "--data-parallel-size-local", OPT_U32, O(data_parallel_size_local), 1,
      64, NULL, "ranks on this node (default: all; fewer = multi-node)" },
    { "--data-parallel-start-rank", OPT_I32, O(data_parallel_start_rank), 0,
      63, NULL, "headless: first global rank here (default: head assigns)" },
    { "--data-parallel-address", OPT_STR, O(data_parallel_address), 0, 0,
      NULL, "multi-node: the head node's bootstrap address (127.0.0.1)" },
    { "--data-parallel-rpc-port", OPT_U32, O(data_parallel_rpc_port), 1,
      65535, NULL, "multi-node: the head node's bootstrap port (29550)" },
    { "--tensor-parallel-size", OPT_U32, O(tensor_parallel_size), 1, 64,
      NULL, "processes per rank splitting heads and MLP widths, all-reduced"
      " (1)" },
    { "-tp", OPT_U32, O(tensor_parallel_size), 1, 64, NULL,
      "same as --tensor-parallel-size" },
    { "--decode-context-parallel-size", OPT_U32,
      O(decode_context_parallel_size), 1, 64, NULL, "the tensor-parallel"
      " ranks split each sequence's latent KV cache by position (cuda, equal"
      " to --tensor-parallel-size; 1)" },
    { "-dcp", OPT_U32, O(decode_context_parallel_size), 1, 64, NULL,
      "same as --decode-context-parallel-size" },
    { "--pipeline-parallel-size", OPT_U32, O(pipeline_parallel_size), 1, 64,
      NULL, "processes per rank each running a slice of the layers in turn"
      " (1)" },
    { "-pp", OPT_U32, O(pipeline_parallel_size), 1, 64, NULL,
      "same as --pipeline-parallel-size" },
    { "--enable-expert-parallel", OPT_ON, O(enable_expert_parallel), 0, 0,
      NULL, "the data-parallel ranks split the routed experts and step"
      " together (cpu and cuda backends; across nodes too)" },
    { "--headless", OPT_ON, O(headless), 0, 0, NULL,
      "multi-node: join the head node instead of being it" },
    { "--data-parallel-bootstrap-timeout", OPT_U32,
      O(data_parallel_bootstrap_timeout), 1, 86400, NULL,
      "multi-node: seconds for every node to join (300)" },
    { "--data-parallel-liveness-timeout", OPT_U32,
      O(data_parallel_liveness_timeout), 1, 3600, NULL,
      "multi-node: seconds of silence that end the group (10)" },
    { "--expert-parallel-mesh-port", OPT_U32, O(expert_parallel_mesh_port),
      0, 65535, NULL,
      "multi-node EP: local rank R listens on port N + R (0: any free)" },
    { "--device", OPT_U32, O(device), 0, 63, NULL,
      "cuda: device ordinal (0); local rank R uses N + R" },
    { "--threads", OPT_U32, O(threads), 0, 1024, NULL,
      "cpu: worker threads (0 = online CPUs)" },
    { "--replay-script", OPT_STR, O(replay_script), 0, 0, NULL,
      "replay: JSON script of replies" },
    { "--replay-delay-ms", OPT_I32, O(replay_delay_ms), 0, 10000, NULL,
      "replay: per-token delay, overrides the script's delay_ms" },
    { "--ipc-dir", OPT_STR, O(ipc_dir), 0, 0, NULL,
      "directory of the shm segment and rank sockets (/run/kimi)" },
    { "--ipc-mode", OPT_MODE, O(ipc_mode), 0, 0, NULL,
      "file mode of segment and sockets: 0600 or 0660 (0600)" },
    { "--max-slots", OPT_U32, O(max_slots), 1, 1 << 20, NULL,
      "request slots in shm (default: max-num-seqs + max-waiting)" },
    { "--max-waiting", OPT_U32, O(max_waiting), 0, 1 << 20, NULL,
      "queued requests beyond the running ones; more get 429 (1024)" },
    { "--log-level", OPT_STR, O(log_level), 0, 0,
      "emerg|alert|error|err|warn|notice|info|debug", "log level (notice)" },
    { "--log-format", OPT_STR, O(log_format), 0, 0, "text|json",
      "log line format (text)" },
    { "--enforce-eager", OPT_ON, O(enforce_eager), 0, 0, NULL,
      "cuda: no CUDA graphs, every step launched eagerly (as"
      " KIMI_CUDA_GRAPHS=0)" },
    { "--help", OPT_ON, O(help), 0, 0, NULL, "this list" },
    { NULL, 0, 0, 0, 0, NULL, NULL }
};


/*
 * vLLM's flags that have no engine meaning here: taken and noted (the
 * recipe's command line works as it is), refused naming the nginx
 * setting that does the job, where ignoring them would change what the
 * user asked for, or refused as not implemented, saying what happens
 * instead.
 */
typedef enum {
    KIMI_VLLM_NOTE = 0,
    KIMI_VLLM_GATEWAY,
    KIMI_VLLM_MISSING
} kimi_vllm_kind_e;

typedef struct {
    const char        *name;
    int                takes_value;
    const char        *ok_values;         /* "a|b" the engine goes along
                                             with; NULL: any */
    kimi_vllm_kind_e   refuse;
    const char        *why;
} kimi_vllm_flag_t;

static const kimi_vllm_flag_t  kimi_vllm_flags[] = {
    { "--trust-remote-code", 0, NULL, 0, "the tokenizers and chat templates"
      " are built in and run no model code" },
    { "--tokenizer-mode", 1, "auto|hf|slow", 0, "one tokenizer reader"
      " (tiktoken.model or tokenizer.json)" },
    { "--dtype", 1, "auto|bfloat16|bf16", 0, "the model's FP8 and bf16"
      " weights are used as they are (fp32 between kernels)" },
    { "--enable-auto-tool-choice", 0, NULL, 0, "the gateway always parses"
      " tool calls" },
    { "--disable-log-requests", 0, NULL, 0, "requests are logged by nginx"
      " (access_log)" },
    { "--enable-log-requests", 0, NULL, 0, "requests are logged by nginx"
      " (access_log)" },
    { "--disable-uvicorn-access-log", 0, NULL, 0, "nginx's access_log" },
    { "--disable-log-stats", 0, NULL, 0, "the engine logs no periodic"
      " stats; /metrics has them" },
    { "--enable-prompt-tokens-details", 0, NULL, 0, "usage always has"
      " prompt_tokens_details.cached_tokens" },
    { "--async-scheduling", 0, NULL, 0, "the host's share of a decode step"
      " is under 3 % (bench/RESULTS.md)" },
    { "--max-logprobs", 1, "20", 0, "requests may ask for up to 20"
      " logprobs" },
    { "--distributed-executor-backend", 1, "mp|uni", 0, "the ranks are"
      " processes kimi-engine starts (other nodes: --headless)" },
    { "--cuda-graph-sizes", 1, NULL, 0, "CUDA graphs are captured per"
      " batch size as steps need them (--enforce-eager: none)" },
    { "--max-cudagraph-capture-size", 1, NULL, 0, "CUDA graphs are captured"
      " per batch size as steps need them (--enforce-eager: none)" },
    { "--max-seq-len-to-capture", 1, NULL, 0, "CUDA graphs cover every"
      " context length" },
    { "--compilation-config", 1, NULL, 0, "the kernels are compiled ahead;"
      " CUDA graphs per batch size (--enforce-eager: none)" },
    { "--all2all-backend", 1, NULL, 0, "expert-parallel dispatch goes over"
      " NVLink peer memory on one node, NCCL across nodes" },
    { "--calculate-kv-scales", 0, NULL, 0, "the fp8 cache keeps a scale"
      " per row, computed as it is written" },
    { "--scheduling-policy", 1, "fcfs", 0, "waiting requests start in"
      " arrival order (preempted ones first)" },
    { "--long-prefill-token-threshold", 1, NULL, 0, "chunked prefill"
      " splits prompts by --max-num-batched-tokens only" },
    { "--enable-eplb", 0, NULL, 2, "experts are placed statically, E / N"
      " to a rank (no redundant experts, no rebalancing)" },
    { "--eplb-config", 1, NULL, 2, "experts are placed statically, E / N"
      " to a rank" },
    { "--speculative-config", 1, NULL, 2, "no speculative decoding"
      " (Kimi-K2 ships no MTP layers)" },
    { "--swap-space", 1, NULL, 2, "preempted sequences are recomputed, not"
      " swapped to host memory" },
    { "--cpu-offload-gb", 1, NULL, 2, "weights stay on the GPUs (spread"
      " them with -tp, -pp or expert parallelism)" },
    { "--kv-transfer-config", 1, NULL, 2, "no disaggregated prefill or KV"
      " transfer between engines" },
    { "--enable-dbo", 0, NULL, 2, "no dual-batch overlap of expert-parallel"
      " communication" },
    { "--enable-sleep-mode", 0, NULL, 2, "no sleep mode: stop the engine"
      " (nginx answers 503 meanwhile)" },
    { "--revision", 1, NULL, 2, "--model is a local directory; nothing is"
      " downloaded" },
    { "--download-dir", 1, NULL, 2, "--model is a local directory; nothing"
      " is downloaded" },
    { "--tokenizer", 1, NULL, 1, "the gateway tokenizes: kimi_model_dir in"
      " nginx.conf names the tokenizer's directory" },
    { "--tool-call-parser", 1, NULL, 1, "the gateway parses tool calls in"
      " the tokenizer's format: kimi_tool_call_parser in nginx.conf" },
    { "--reasoning-parser", 1, NULL, 1, "kimi_reasoning_parser in"
      " nginx.conf" },
    { "--chat-template", 1, NULL, 1, "kimi_chat_template in nginx.conf" },
    { "--chat-template-content-format", 1, NULL, 1,
      "kimi_chat_template_content_format in nginx.conf" },
    { "--generation-config", 1, NULL, 1, "kimi_generation_config in"
      " nginx.conf" },
    { "--override-generation-config", 1, NULL, 1,
      "kimi_override_generation_config in nginx.conf" },
    { "--host", 1, NULL, 1, "nginx listens: listen in nginx.conf" },
    { "--port", 1, NULL, 1, "nginx listens: listen in nginx.conf" },
    { "--api-key", 1, NULL, 1, "kimi_api_keys in nginx.conf" },
    { "--api-server-count", 1, NULL, 1, "nginx's worker_processes" },
    { "--uvicorn-log-level", 1, NULL, 1, "nginx's error_log" },
    { NULL, 0, NULL, 0, NULL }
};


static void
kimi_serve_usage(FILE *f)
{
    const kimi_opt_t        *o;
    const kimi_vllm_flag_t  *v;

    fprintf(f, "usage: kimi-engine serve [OPTIONS]\n\noptions:\n");

    for (o = kimi_serve_opts; o->name != NULL; o++) {
        fprintf(f, "  %-28s %s\n", o->name, o->help);
    }

    fprintf(f, "\nvLLM flags taken without effect here, refused for the"
            " nginx setting that does their job, or not implemented:\n");

    for (v = kimi_vllm_flags; v->name != NULL; v++) {
        fprintf(f, "  %-28s %s%s\n", v->name,
                v->refuse == KIMI_VLLM_GATEWAY ? "refused: "
                : v->refuse == KIMI_VLLM_MISSING ? "not implemented: " : "",
                v->why);
    }
}


static int
kimi_serve_bad(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "kimi-engine: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (see `kimi-engine serve --help`)\n");

    return 2;
}


static int
kimi_choice_ok(const char *choices, const char *v)
{
    size_t       n = strlen(v);
    const char  *p = choices, *bar;

    for ( ;; ) {
        bar = strchr(p, '|');
        if ((bar ? (size_t) (bar - p) : strlen(p)) == n
            && strncmp(p, v, n) == 0)
        {
            return 1;
        }
        if (bar == NULL) {
            return 0;
        }
        p = bar + 1;
    }
}


static int
kimi_opt_set(const kimi_opt_t *o, kimi_serve_opts_t *opts, const char *v)
{
    char                *end;
    double               d;
    uint64_t             mult = 1;
    unsigned long long   u;
    void                *dst = (char *) opts + o->off;

    switch (o->kind) {

    case OPT_STR:
        if (o->choices != NULL && !kimi_choice_ok(o->choices, v)) {
            fprintf(stderr, "kimi-engine: %s: invalid value \"%s\" (expected"
                    " one of %s)\n", o->name, v, o->choices);
            return 2;
        }
        *(const char **) dst = v;
        return 0;

    case OPT_MODE:
        if (strcmp(v, "0600") != 0 && strcmp(v, "600") != 0
            && strcmp(v, "0660") != 0 && strcmp(v, "660") != 0)
        {
            return kimi_serve_bad("%s: invalid mode \"%s\" (expected 0600 or"
                                  " 0660)", o->name, v);
        }
        *(uint32_t *) dst = strstr(v, "66") ? 0660 : 0600;
        return 0;

    case OPT_FLOAT:
        errno = 0;
        d = strtod(v, &end);
        if (errno != 0 || end == v || *end != '\0' || !(d >= o->min)
            || !(d <= o->max))
        {
            fprintf(stderr, "kimi-engine: %s: invalid value \"%s\" (expected"
                    " a number in [%g, %g])\n", o->name, v, o->min, o->max);
            return 2;
        }
        *(float *) dst = (float) d;
        return 0;

    default:
        break;
    }

    /* integers: decimal only, no sign; K/M/G suffix for byte sizes */
    if (!isdigit((unsigned char) v[0])) {
        goto bad_int;
    }

    errno = 0;
    u = strtoull(v, &end, 10);
    if (o->kind == OPT_U64 && *end != '\0' && end[1] == '\0') {
        switch (*end) {
        case 'K': case 'k': mult = 1ull << 10; end++; break;
        case 'M': case 'm': mult = 1ull << 20; end++; break;
        case 'G': case 'g': mult = 1ull << 30; end++; break;
        }
    }

    if (errno != 0 || *end != '\0' || (mult > 1 && u > UINT64_MAX / mult)) {
        goto bad_int;
    }

    u *= mult;
    if ((double) u < o->min || (double) u > o->max) {
        goto bad_int;
    }

    switch (o->kind) {
    case OPT_U32:
        *(uint32_t *) dst = (uint32_t) u;
        break;
    case OPT_I32:
        *(int32_t *) dst = (int32_t) u;
        break;
    default:
        *(uint64_t *) dst = (uint64_t) u;
        break;
    }

    return 0;

bad_int:

    fprintf(stderr, "kimi-engine: %s: invalid value \"%s\" (expected an"
            " integer in [%.0f, %.0f])\n", o->name, v, o->min, o->max);
    return 2;
}


/* The names after --served-model-name's first, up to the next flag. */
static int
kimi_serve_more_names(int argc, char **argv, int *i, kimi_serve_opts_t *opts)
{
    static char  names[KIMI_SHM_NAME_LEN];
    size_t       len = strlen(opts->served_model_name), n;

    if (len >= sizeof(names)) {
        return kimi_serve_bad("--served-model-name: \"%s\" is longer than"
                              " the segment's name field%s",
                              opts->served_model_name, "");
    }

    memcpy(names, opts->served_model_name, len + 1);

    while (*i + 1 < argc && argv[*i + 1][0] != '-') {
        n = strlen(argv[*i + 1]);

        if (n == 0 || strchr(argv[*i + 1], ' ') != NULL
            || len + 1 + n >= sizeof(names))
        {
            return kimi_serve_bad("--served-model-name: \"%s\" (names have"
                                  " no spaces and fit %s bytes in all)",
                                  argv[*i + 1], "127");
        }

        names[len++] = ' ';
        memcpy(names + len, argv[*i + 1], n + 1);
        len += n;
        ++*i;
    }

    opts->served_model_name = names;
    return 0;
}


/* One of kimi_vllm_flags: 0 taken (a note on stderr), 2 refused, -1 not
 * one of them.  *i moves past a value given as the next argument. */
static int
kimi_serve_vllm_flag(const char *name, const char *eq, int argc, char **argv,
    int *i)
{
    const kimi_vllm_flag_t  *v;
    const char              *val = NULL;

    for (v = kimi_vllm_flags; v->name != NULL; v++) {
        if (strcmp(v->name, name) == 0) {
            break;
        }
    }

    if (v->name == NULL) {
        return -1;
    }

    if (v->takes_value) {
        if (eq != NULL) {
            val = eq + 1;

        } else if (*i + 1 < argc) {
            val = argv[++*i];

        } else {
            return kimi_serve_bad("%s needs a value%s", name, "");
        }

    } else if (eq != NULL) {
        return kimi_serve_bad("%s takes no value%s", name, "");
    }

    if (v->refuse == KIMI_VLLM_GATEWAY) {
        fprintf(stderr, "kimi-engine: %s is not an engine setting here: %s"
                " (see README, \"From vLLM's Kimi-K2 recipe\")\n", name,
                v->why);
        return 2;
    }

    if (v->refuse == KIMI_VLLM_MISSING) {
        fprintf(stderr, "kimi-engine: vLLM's %s is not implemented here: "
                "%s\n", name, v->why);
        return 2;
    }

    if (val != NULL && v->ok_values != NULL
        && !kimi_choice_ok(v->ok_values, val))
    {
        fprintf(stderr, "kimi-engine: %s %s is not supported (%s: %s)\n",
                name, val, v->ok_values, v->why);
        return 2;
    }

    fprintf(stderr, "kimi-engine: note: %s%s%s has no effect here: %s\n",
            name, val ? " " : "", val ? val : "", v->why);
    return 0;
}


static int
kimi_serve_parse(int argc, char **argv, kimi_serve_opts_t *opts)
{
    int                rc, i;
    char               name[64];
    size_t             n;
    const char        *arg, *eq, *val;
    const kimi_opt_t  *o;

    for (i = 1; i < argc; i++) {
        arg = argv[i];

        /* long options, and vLLM's short ones (-tp, -pp, -dcp) */
        if (arg[0] != '-' || arg[1] == '\0') {
            return kimi_serve_bad("unexpected argument \"%s\"%s", arg, "");
        }

        eq = strchr(arg, '=');
        n = eq ? (size_t) (eq - arg) : strlen(arg);
        if (n >= sizeof(name)) {
            return kimi_serve_bad("unknown option \"%s\"%s", arg, "");
        }
        memcpy(name, arg, n);
        name[n] = '\0';

        for (o = kimi_serve_opts; o->name != NULL; o++) {
            if (strcmp(o->name, name) == 0) {
                break;
            }
        }

        if (o->name == NULL) {
            rc = kimi_serve_vllm_flag(name, eq, argc, argv, &i);
            if (rc < 0) {
                return kimi_serve_bad("unknown option \"%s\"%s", name, "");
            }
            if (rc > 0) {
                return rc;
            }
            continue;
        }

        if (o->kind == OPT_ON || o->kind == OPT_OFF) {
            if (eq != NULL) {
                return kimi_serve_bad("%s takes no value%s", name, "");
            }
            *(int *) ((char *) opts + o->off) = o->kind == OPT_ON;
            continue;
        }

        if (eq != NULL) {
            val = eq + 1;

        } else if (i + 1 < argc) {
            val = argv[++i];

        } else {
            return kimi_serve_bad("%s needs a value%s", name, "");
        }

        rc = kimi_opt_set(o, opts, val);
        if (rc != 0) {
            return rc;
        }

        /* vLLM's --served-model-name a b c: every name is served, the
         * first is the one answers carry; kept space-separated */
        if (o->off == O(served_model_name) && eq == NULL) {
            rc = kimi_serve_more_names(argc, argv, &i, opts);
            if (rc != 0) {
                return rc;
            }
        }
    }

    return 0;
}


/*
 * cuda when this build has the cuda backend, the machine an NVIDIA GPU and
 * the model shapes the kernels take, else cpu.  Looks at the driver's
 * files rather than asking the CUDA runtime: initialising CUDA here would
 * poison the rank processes that the data-parallel launcher forks
 * afterwards.
 */
static const char *
kimi_serve_auto_backend(const char *model, const char *overrides,
    int quantize_fp8)
{
#ifdef KIMI_HAVE_CUDA_BACKEND
    kimi_model_config_t  cfg;
    kimi_err_t           err;

    if (access("/dev/nvidia0", F_OK) == 0
        || access("/proc/driver/nvidia/gpus", F_OK) == 0)
    {
        /* a model the kernels cannot take (the tiny one: 64 wide) runs on
         * the cpu instead of failing at start */
        if (model != NULL
            && kimi_model_config_load(&cfg, model, overrides, &err) == 0
            && (cfg.quant_fp8 |= quantize_fp8,
                kimi_backend_cuda_check_config(&cfg, &err) != 0))
        {
            kimi_log(KIMI_LOG_NOTICE, "backend auto: cpu (a GPU is here,"
                     " but %s)", err.msg);
            return "cpu";
        }

        kimi_log(KIMI_LOG_NOTICE, "backend auto: cuda");
        return "cuda";
    }
#endif

    kimi_log(KIMI_LOG_NOTICE, "backend auto: cpu");
    return "cpu";
}


static void
kimi_serve_defaults(kimi_serve_opts_t *o)
{
    kimi_sched_params_t  sp = kimi_sched_default_params();

    memset(o, 0, sizeof(*o));
    o->backend = "auto";
    o->ipc_dir = "/run/kimi";
    o->ipc_mode = 0600;
    o->kv_cache_dtype = "auto";
    o->load_format = "auto";
    o->log_level = "notice";
    o->log_format = "text";
    o->max_num_seqs = sp.max_num_seqs;
    o->max_num_batched_tokens = 0;              /* per backend, below */
    o->enable_chunked_prefill = sp.enable_chunked_prefill;
    o->enable_prefix_caching = 1;              /* vLLM's default */
    o->gpu_memory_utilization = sp.kv.gpu_memory_utilization;
    o->block_size = sp.kv.block_size;
    o->cpu_kv_cache_bytes = sp.kv.budget_bytes;
    o->max_waiting = sp.max_waiting;
    o->shutdown_timeout = 30;
    o->data_parallel_size = 1;
    o->tensor_parallel_size = 1;
    o->decode_context_parallel_size = 1;
    o->pipeline_parallel_size = 1;
    o->data_parallel_start_rank = -1;
    o->data_parallel_bootstrap_timeout = 300;
    o->data_parallel_liveness_timeout = 10;
    o->replay_delay_ms = -1;
}


static int
kimi_serve_signals(void)
{
    sigset_t  set;

    /* SIGPIPE: a worker that died under us is noticed by EOF instead */
    signal(SIGPIPE, SIG_IGN);

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);

    /* blocked before any thread exists, so every thread inherits it and
     * only the signalfd in the server loop sees these */
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
        return -1;
    }

    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}




static kimi_kv_params_t
kimi_serve_kv_params(const kimi_serve_opts_t *o)
{
    kimi_kv_params_t  kv;

    memset(&kv, 0, sizeof(kv));
    /* decode context parallel: a block of the scheduler's is block_size
     * rows on each of the ranks (vLLM's virtual block) */
    kv.block_size = o->block_size * o->decode_context_parallel_size;
    kv.dtype = strcmp(o->kv_cache_dtype, "auto") == 0 ? KIMI_KV_DTYPE_AUTO
                                                      : KIMI_KV_DTYPE_FP8;
    kv.budget_bytes = o->cpu_kv_cache_bytes;
    kv.gpu_memory_utilization = o->gpu_memory_utilization;
    return kv;
}


/*
 * --tensor-parallel-size T and/or --pipeline-parallel-size P: what this
 * build can do (cpu and cuda backends, at most 64 members a rank) and
 * the largest message of the rank's group: an all-reduce or hop of one
 * step's hidden rows (cpu; the cuda backend's sums and hops go over
 * NCCL), the leader's step (sequence headers, tokens, block tables), and
 * for a cpu pipeline at least one row of logits.
 */
static int
kimi_serve_group_check(const kimi_serve_opts_t *o,
    const kimi_model_config_t *cfg, size_t *seg_bytes)
{
    uint32_t     tp = o->tensor_parallel_size, pp = o->pipeline_parallel_size;
    const char  *flag = tp > 1 ? "--tensor-parallel-size"
                               : "--pipeline-parallel-size";
    size_t       sum, step, blocks, logits;

    if (strcmp(o->backend, "cpu") != 0 && strcmp(o->backend, "cuda") != 0) {
        fprintf(stderr, "kimi-engine: %s is implemented on the cpu and cuda"
                " backends only (use --data-parallel-size)\n", flag);
        return 2;
    }

    /* expert parallelism over the data-parallel ranks' tensor-parallel
     * processes (vLLM's -dp N -tp T --enable-expert-parallel): the cpu
     * backend, on one node, without pipeline stages */
    if (o->enable_expert_parallel && o->data_parallel_size > 1
        && (pp > 1 || strcmp(o->backend, "cpu") != 0 || o->headless
            || (o->data_parallel_size_local != 0
                && o->data_parallel_size_local != o->data_parallel_size)))
    {
        fprintf(stderr, "kimi-engine: %s with --enable-expert-parallel and"
                " --data-parallel-size > 1 is implemented on the cpu backend"
                " on one node, without --pipeline-parallel-size (expert"
                " parallelism over the data-parallel ranks alone, or over"
                " the tensor-parallel ranks of one, runs everywhere)\n",
                flag);
        return 2;
    }

    if ((size_t) tp * pp > KIMI_GROUP_MAX_RANKS) {
        fprintf(stderr, "kimi-engine: --tensor-parallel-size %u x "
                "--pipeline-parallel-size %u: at most %d processes a rank\n",
                tp, pp, KIMI_GROUP_MAX_RANKS);
        return 2;
    }

    if (tp > 1 && o->enable_expert_parallel
        && cfg->n_routed_experts % tp != 0)
    {
        fprintf(stderr, "kimi-engine: --enable-expert-parallel: the model's"
                " %u routed experts do not split over %u tensor-parallel"
                " ranks\n", cfg->n_routed_experts, tp);
        return 2;
    }

    if (tp > 1 && cfg->num_attention_heads % tp != 0) {
        fprintf(stderr, "kimi-engine: --tensor-parallel-size %u does not"
                " divide the model's %u attention heads\n", tp,
                cfg->num_attention_heads);
        return 2;
    }

    if (pp > cfg->num_hidden_layers) {
        fprintf(stderr, "kimi-engine: --pipeline-parallel-size %u exceeds"
                " the model's %u layers\n", pp, cfg->num_hidden_layers);
        return 2;
    }

    blocks = ((size_t) o->max_model_len + o->block_size - 1) / o->block_size;
    sum = (size_t) o->max_num_batched_tokens * cfg->hidden_size * 4;
    step = 8 + (size_t) o->max_num_seqs * (24 + blocks * 4)
           + (size_t) o->max_num_batched_tokens * 4;
    logits = pp > 1 ? (size_t) cfg->vocab_size * 4 * 8 : 0;
    if (strcmp(o->backend, "cuda") == 0) {
        sum = 4096;               /* sums, hops and logits go over NCCL;
                                     the NCCL id */
        logits = 0;
    }
    *seg_bytes = sum > step ? sum : step;
    *seg_bytes = logits > *seg_bytes ? logits : *seg_bytes;
    return 0;
}


/* Processes per rank: T heads/widths times P stages; member k is tensor-
 * parallel rank k % T of stage k / T. */
static uint32_t
kimi_serve_group_size(const kimi_serve_opts_t *o)
{
    return o->tensor_parallel_size * o->pipeline_parallel_size;
}


static const char *
kimi_serve_group_kind(const kimi_serve_opts_t *o)
{
    return o->pipeline_parallel_size == 1 ? "tensor-parallel"
           : o->tensor_parallel_size == 1 ? "pipeline-parallel"
           : "tensor- and pipeline-parallel";
}


/*
 * The shared mappings of a rank's members, made before the fork: one for
 * all of them (the leader's steps, the ready vote, KV blocks); with both
 * T > 1 and P > 1 also one per stage (its T tensor-parallel ranks' sums)
 * and one per tensor-parallel rank (its P stages' hops).
 */
typedef struct {
    void      *all;
    void      *stage[KIMI_GROUP_MAX_RANKS];        /* [P] */
    void      *column[KIMI_GROUP_MAX_RANKS];       /* [T] */
    void      *ep;            /* expert parallel over DP x TP: the node's
                                 group (the launcher's), member k at
                                 ep_base + k */
    uint32_t   ep_base;
} kimi_serve_maps_t;

/* One member's handles; stage and column are linked to all. */
typedef struct {
    kimi_group_t  *all;
    kimi_group_t  *stage;
    kimi_group_t  *column;
    kimi_group_t  *ep;
} kimi_serve_member_t;


static void *
kimi_serve_map_group(uint32_t world, size_t seg_bytes)
{
    size_t   bytes = kimi_group_bytes(world, seg_bytes);
    void    *mem;

    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
               -1, 0);
    if (mem == MAP_FAILED) {
        kimi_log(KIMI_LOG_EMERG, "parallel group: mmap of %zu bytes: %s",
                 bytes, strerror(errno));
        return NULL;
    }

    kimi_group_init(mem, world, seg_bytes);
    return mem;
}


static int
kimi_serve_maps_make(const kimi_serve_opts_t *o, size_t seg_bytes,
    kimi_serve_maps_t *maps)
{
    uint32_t  T = o->tensor_parallel_size, P = o->pipeline_parallel_size;

    memset(maps, 0, sizeof(*maps));
    if ((maps->all = kimi_serve_map_group(T * P, seg_bytes)) == NULL) {
        return 1;
    }

    for (uint32_t s = 0; T > 1 && P > 1 && s < P; s++) {
        if ((maps->stage[s] = kimi_serve_map_group(T, seg_bytes)) == NULL) {
            return 1;
        }
    }

    for (uint32_t t = 0; T > 1 && P > 1 && t < T; t++) {
        if ((maps->column[t] = kimi_serve_map_group(P, seg_bytes)) == NULL) {
            return 1;
        }
    }

    return 0;
}


static int
kimi_serve_member_attach(const kimi_serve_opts_t *o,
    const kimi_serve_maps_t *maps, uint32_t k, kimi_serve_member_t *m,
    kimi_err_t *err)
{
    uint32_t  T = o->tensor_parallel_size, s = k / T, t = k % T;
    int       rc;

    memset(m, 0, sizeof(*m));
    if ((rc = kimi_group_attach(&m->all, maps->all, k, err)) != 0) {
        return rc;
    }

    if (maps->stage[0] == NULL) {
        return 0;
    }

    if ((rc = kimi_group_attach(&m->stage, maps->stage[s], t, err)) != 0
        || (rc = kimi_group_attach(&m->column, maps->column[t], s, err)) != 0)
    {
        return rc;
    }

    kimi_group_link(m->stage, m->all);
    kimi_group_link(m->column, m->all);
    return 0;
}


static void
kimi_serve_member_free(kimi_serve_member_t *m)
{
    kimi_group_free(m->ep);
    kimi_group_free(m->stage);
    kimi_group_free(m->column);
    kimi_group_free(m->all);
    memset(m, 0, sizeof(*m));
}


/* Member k's share of the weights and its groups in the backend. */
static void
kimi_serve_group_shard(const kimi_serve_opts_t *o,
    const kimi_model_config_t *cfg, uint32_t k, const kimi_serve_member_t *g,
    kimi_model_params_t *mp, kimi_backend_params_t *bp)
{
    uint32_t  T = o->tensor_parallel_size, P = o->pipeline_parallel_size;
    int       both = T > 1 && P > 1;

    if (T > 1) {
        k %= T;
        mp->tp_rank = k;
        mp->tp_size = o->tensor_parallel_size;
        /* vLLM's -tp T --enable-expert-parallel: expert parallel over the
         * T ranks (each holds E / T whole experts), attention and the
         * dense and shared MLPs split by width */
        if (o->enable_expert_parallel) {
            uint32_t  per = cfg->n_routed_experts / o->tensor_parallel_size;

            mp->tp_experts_whole = 1;
            mp->expert_first = k * per;
            mp->expert_last = mp->expert_first + per;
        }
        bp->tp = both ? g->stage : g->all;
        bp->dcp = o->decode_context_parallel_size;
    }

    if (P > 1) {
        kimi_model_pp_layers(cfg, both ? kimi_group_rank(g->column)
                                       : kimi_group_rank(g->all),
                             P, &mp->layer_first, &mp->layer_last);
        bp->pp = both ? g->column : g->all;
    }

    bp->lead = both ? g->all : NULL;
}


/* A member still running KIMI_SERVE_GROUP_GRACE_MS after its group failed
 * is stuck (in a device call waiting on a dead peer): it ends, so a
 * failed group never leaves a process behind (the others' waits have
 * given up by then; the leader's end takes the followers with it). */
#define KIMI_SERVE_GROUP_GRACE_MS  10000
#define KIMI_SERVE_STUCK_SIGNAL    (SIGRTMIN + 3)
#define KIMI_SERVE_STUCK_FRAMES    48

static pthread_t  kimi_serve_main_thread;


/* Runs on the stuck main thread: where it is, into the log (the operator's
 * only clue to a call that never returned).  write() and backtrace only:
 * backtrace was called once at arming, so it allocates nothing here. */
static void
kimi_serve_stuck_trace(int sig)
{
    void        *frames[KIMI_SERVE_STUCK_FRAMES];
    int          n;
    static const char  head[] = "kimi-engine: the main thread is stuck in:\n";

    (void) sig;
    n = backtrace(frames, KIMI_SERVE_STUCK_FRAMES);
    (void) !write(STDERR_FILENO, head, sizeof(head) - 1);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
}


static void
kimi_serve_group_expire(const char *why)
{
    struct timespec  nap = { 0, 300000000 };

    kimi_log(KIMI_LOG_EMERG, "parallel group failed: %s: exiting", why);
    if (pthread_kill(kimi_serve_main_thread, KIMI_SERVE_STUCK_SIGNAL) == 0) {
        (void) nanosleep(&nap, NULL);
    }
    _exit(1);
}


/* The watchdog of this process's group: called on the main thread, whose
 * stack it prints if it expires. */
static int
kimi_serve_watchdog(void *mem, uint32_t rank, const int *pids, uint32_t n,
    const uint32_t *ranks, kimi_err_t *err)
{
    struct sigaction  sa;
    void             *frame;

    kimi_serve_main_thread = pthread_self();
    (void) backtrace(&frame, 1);            /* loads the unwinder now */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kimi_serve_stuck_trace;
    (void) sigemptyset(&sa.sa_mask);
    (void) sigaction(KIMI_SERVE_STUCK_SIGNAL, &sa, NULL);

    return kimi_group_watchdog(mem, rank, pids, n, ranks,
                               KIMI_SERVE_GROUP_GRACE_MS,
                               kimi_serve_group_expire, err);
}


/* A follower of a tensor- or pipeline-parallel rank: loads its share,
 * runs the leader's steps, ends with the leader (stop message or its
 * death). */
static int
kimi_serve_follower(const kimi_serve_opts_t *o,
    const kimi_model_config_t *cfg, const kimi_serve_maps_t *maps,
    uint32_t k, pid_t leader, uint32_t n_threads, int device)
{
    kimi_serve_member_t    g;
    kimi_model_t          *model = NULL;
    kimi_backend_t        *backend = NULL;
    kimi_model_params_t    mp;
    kimi_backend_params_t  bp;
    kimi_kv_params_t       kv = kimi_serve_kv_params(o);
    kimi_err_t             err;
    uint32_t               n_blocks;
    int                    rc;

    (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != leader) {
        return 1;
    }

    if ((rc = kimi_serve_member_attach(o, maps, k, &g, &err)) != 0
        || (rc = kimi_serve_watchdog(maps->all, k, NULL, 0, NULL, &err))
           != 0)
    {
        goto failed;
    }

    mp = kimi_model_default_params();
    mp.dir = o->model;
    mp.load_format = strcmp(o->load_format, "dummy") == 0 ? "dummy" : "auto";
    mp.hf_overrides = o->hf_overrides;
    mp.seed = o->seed;
    mp.quantize_fp8 = o->quantization != NULL;
    memset(&bp, 0, sizeof(bp));
    kimi_serve_group_shard(o, cfg, k, &g, &mp, &bp);

    if (maps->ep != NULL) {
        uint32_t  per;

        if ((rc = kimi_group_attach(&g.ep, maps->ep, maps->ep_base + k,
                                    &err)) != 0)
        {
            goto failed;
        }

        /* this process's share of the routed experts, whole */
        kimi_group_link(g.ep, g.all);
        per = cfg->n_routed_experts / kimi_group_world(g.ep);
        mp.expert_first = kimi_group_rank(g.ep) * per;
        mp.expert_last = mp.expert_first + per;
        bp.ep = g.ep;
    }

    if ((rc = kimi_model_load(&model, &mp, &err)) != 0) {
        goto failed;
    }

    bp.name = o->backend;
    bp.model = model;
    bp.n_threads = n_threads;
    bp.device = device;
    bp.max_batched_tokens = o->max_num_batched_tokens;
    bp.max_model_len = o->max_model_len;
    bp.max_num_seqs = o->max_num_seqs;

    /* the leader's order: its backend, the ready barrier, then the KV
     * cache (its scheduler's start), where a pipeline's stages agree on
     * the block count */
    if ((rc = kimi_backend_create(&backend, &bp, &err)) != 0
        || (rc = kimi_backend_followers_ready(backend, &err)) != 0
        || (rc = backend->ops->kv_init(backend, &kv, &n_blocks, &err)) != 0)
    {
        goto failed;
    }

    {
        char  what[160] = "", experts[64] = "";

        if (model->tp_experts_whole) {
            snprintf(experts, sizeof(experts), ", routed experts [%u, %u)"
                     " whole", model->expert_first, model->expert_last);
        }

        if (o->tensor_parallel_size > 1) {
            snprintf(what, sizeof(what), "heads [%u, %u)%s, ",
                     model->head_first, model->head_first + model->n_heads,
                     experts);
        }

        if (o->pipeline_parallel_size > 1) {
            snprintf(what + strlen(what), sizeof(what) - strlen(what),
                     "layers [%u, %u), ", model->layer_first,
                     model->layer_last);
        }

        kimi_log(KIMI_LOG_NOTICE, "%s follower %u of %u ready (%s%u KV "
                 "blocks)", kimi_serve_group_kind(o), k,
                 kimi_serve_group_size(o), what, n_blocks);
    }

    rc = kimi_backend_follow(backend, &err);
    if (rc == 0) {
        kimi_group_watchdog_stop();         /* the leader's stop message */
        kimi_log(KIMI_LOG_NOTICE, "%s follower %u done",
                 kimi_serve_group_kind(o), k);
    }

failed:

    if (rc != 0) {
        kimi_log(KIMI_LOG_EMERG, "%s follower %u: %s",
                 kimi_serve_group_kind(o), k, err.msg);
        if (g.all != NULL) {
            kimi_group_abort(g.all, err.msg);
        }
    }

    if (backend != NULL) {
        backend->ops->free(backend);
    }
    kimi_model_free(model);
    kimi_serve_member_free(&g);

    return rc == 0 ? 0 : 1;
}


/* The leader forks its T x P - 1 followers into fresh groups and watches
 * them.  Returns 0 in the leader (*group set), or the exit code of a
 * follower in the follower (*is_follower set). */
static int
kimi_serve_followers_start(const kimi_serve_opts_t *o,
    const kimi_model_config_t *cfg, size_t seg_bytes, uint32_t n_threads,
    int device, void *ep_mem, uint32_t ep_base, kimi_serve_member_t *group,
    pid_t *pids, int *is_follower, int sfd)
{
    uint32_t           T = kimi_serve_group_size(o);
    uint32_t           ranks[KIMI_GROUP_MAX_RANKS];
    pid_t              leader = getpid();
    int                ipids[KIMI_GROUP_MAX_RANKS];
    kimi_serve_maps_t  maps;
    kimi_err_t         err;

    if (kimi_serve_maps_make(o, seg_bytes, &maps) != 0) {
        return 1;
    }
    maps.ep = ep_mem;
    maps.ep_base = ep_base;

    for (uint32_t k = 1; k < T; k++) {
        pids[k] = fork();

        if (pids[k] == 0) {
            close(sfd);
            *is_follower = 1;
            /* cuda: member k of local rank R on --device + R * T + k */
            return kimi_serve_follower(o, cfg, &maps, k, leader, n_threads,
                                       device + (int) k);
        }

        if (pids[k] == -1) {
            kimi_log(KIMI_LOG_EMERG, "%s: fork: %s",
                     kimi_serve_group_kind(o), strerror(errno));
            kimi_group_fail(maps.all, "the leader could not fork its "
                            "followers");
            return 1;
        }

        ipids[k - 1] = (int) pids[k];
        ranks[k - 1] = k;
    }

    if (kimi_serve_member_attach(o, &maps, 0, group, &err) != 0
        || kimi_group_watch(group->all, ipids, T - 1, ranks, &err) != 0
        || kimi_serve_watchdog(maps.all, 0, ipids, T - 1, ranks, &err) != 0)
    {
        kimi_log(KIMI_LOG_EMERG, "%s: %s", kimi_serve_group_kind(o), err.msg);
        kimi_group_fail(maps.all, err.msg);
        return 1;
    }

    kimi_log(KIMI_LOG_NOTICE, "%s: %u followers started",
             kimi_serve_group_kind(o), T - 1);
    return 0;
}


/* The leader's end: followers leave on the stop message (sent when the
 * backend is freed) or are killed after a grace period. */
static void
kimi_serve_followers_reap(const pid_t *pids, uint32_t T)
{
    struct timespec  nap = { 0, 10000000 };
    int              status;

    for (uint32_t k = 1; k < T; k++) {
        for (int i = 0; pids[k] > 0 && i < 500; i++) {
            if (waitpid(pids[k], &status, WNOHANG) != 0) {
                break;
            }
            if (i == 499) {
                (void) kill(pids[k], SIGKILL);
                (void) waitpid(pids[k], &status, 0);
            }
            (void) nanosleep(&nap, NULL);
        }
    }
}


/*
 * --enable-expert-parallel with N > 1 ranks: what this build can do
 * (cpu or cuda backend, experts split evenly, at most 64 ranks) and the
 * largest message of the group's exchange: on the cpu, one step's tokens,
 * each a hidden row plus top-k ids and weights; on the cuda backend the
 * rows go over NCCL (or peer memory on one node) and the group only
 * carries the step's token counts and the NCCL id.  Ranks on several
 * nodes sync over a TCP mesh the bootstrap sets up (group.h).
 */
static int
kimi_serve_ep_check(const kimi_serve_opts_t *o,
    const kimi_model_config_t *cfg, size_t *seg_bytes)
{
    uint32_t  W = o->data_parallel_size * o->tensor_parallel_size;
    size_t    row;

    if (strcmp(o->backend, "cpu") != 0 && strcmp(o->backend, "cuda") != 0) {
        fprintf(stderr, "kimi-engine: --enable-expert-parallel is implemented"
                " on the cpu and cuda backends; the %s backend serves data"
                " parallel without it (drop the flag)\n", o->backend);
        return 2;
    }

    if (W > KIMI_GROUP_MAX_RANKS) {
        fprintf(stderr, "kimi-engine: --enable-expert-parallel over %u ranks:"
                " at most %d\n", W, KIMI_GROUP_MAX_RANKS);
        return 2;
    }

    if (cfg->n_routed_experts == 0 || cfg->n_routed_experts % W != 0) {
        fprintf(stderr, "kimi-engine: --enable-expert-parallel: %u routed"
                " experts do not split evenly over --data-parallel-size"
                " %u%s\n", cfg->n_routed_experts, o->data_parallel_size,
                o->tensor_parallel_size > 1 ? " x --tensor-parallel-size"
                                            : "");
        return 2;
    }

    if (strcmp(o->backend, "cuda") == 0) {
        *seg_bytes = 4096;
        return 0;
    }

    row = (size_t) cfg->hidden_size * 4 + (size_t) cfg->num_experts_per_tok
          * 8;
    *seg_bytes = row * o->max_num_batched_tokens;
    return 0;
}


int
kimi_cmd_serve(int argc, char **argv)
{
    int                    rc, sfd = -1, exit_code = 1;
    uint32_t               i, n_eos = 0, vocab = KIMI_K2_VOCAB, model_len;
    int32_t                eos_ids[KIMI_MODEL_MAX_EOS + 2];
    kimi_err_t             err;
    kimi_log_level_e       level;
    kimi_serve_opts_t      o;
    kimi_model_config_t    cfg;
    kimi_model_params_t    mp;
    kimi_replay_params_t   rp;
    kimi_backend_params_t  bp;
    kimi_dp_params_t       dpp;
    kimi_dp_t              dp;
    kimi_server_params_t   sp;
    struct kimi_model     *model = NULL;
    kimi_tokenizer_t      *tok = NULL;
    kimi_backend_t        *backend = NULL;
    kimi_server_t         *srv = NULL;
    kimi_group_t          *group = NULL;
    kimi_group_t          *ep_members = NULL;   /* EP over DP x TP */
    kimi_group_t          *followers = NULL;
    kimi_serve_member_t    members;
    pid_t                  follower_pids[KIMI_GROUP_MAX_RANKS];
    size_t                 followers_seg_bytes = 0;
    int                    is_follower = 0;
    int                    is_replay, given_batched;
    char                   model_abs[PATH_MAX];

    kimi_serve_defaults(&o);

    rc = kimi_serve_parse(argc, argv, &o);
    if (rc != 0) {
        return rc;
    }

    if (o.help) {
        kimi_serve_usage(stdout);
        return 0;
    }

    if (kimi_log_level_parse(o.log_level, &level) != 0) {
        return kimi_serve_bad("--log-level: invalid value \"%s\"%s",
                              o.log_level, "");
    }
    kimi_log_set_level(level);
    kimi_log_set_json(strcmp(o.log_format, "json") == 0);

    if (o.hf_overrides != NULL && o.hf_overrides[0] != '\0') {
        json_t        *j;
        json_error_t   jerr;

        j = json_loads(o.hf_overrides, 0, &jerr);
        if (!json_is_object(j)) {
            fprintf(stderr, "kimi-engine: --hf-overrides: expected a JSON"
                    " object, %s\n", j ? "got another JSON value" : jerr.text);
            json_decref(j);
            return 2;
        }
        json_decref(j);
    }

    if (o.data_parallel_size_local > o.data_parallel_size) {
        fprintf(stderr, "kimi-engine: --data-parallel-size-local %u exceeds"
                " --data-parallel-size %u\n", o.data_parallel_size_local,
                o.data_parallel_size);
        return 2;
    }

    if (o.data_parallel_start_rank >= 0
        && (uint32_t) o.data_parallel_start_rank >= o.data_parallel_size)
    {
        fprintf(stderr, "kimi-engine: --data-parallel-start-rank %d is not"
                " below --data-parallel-size %u\n",
                (int) o.data_parallel_start_rank, o.data_parallel_size);
        return 2;
    }

    if (strcmp(o.backend, "auto") == 0) {
        o.backend = kimi_serve_auto_backend(o.model, o.hf_overrides,
                                            o.quantization != NULL);
    }

    is_replay = strcmp(o.backend, "replay") == 0;

    if (!is_replay && o.model == NULL) {
        return kimi_serve_bad("--backend %s needs --model DIR%s", o.backend,
                              "");
    }

    if (is_replay && o.replay_script == NULL) {
        return kimi_serve_bad("--backend replay needs --replay-script FILE%s",
                              "", "");
    }

    if (o.max_slots == 0) {
        uint64_t  n = (uint64_t) o.max_num_seqs + o.max_waiting;
        o.max_slots = n > (1u << 20) ? (1u << 20) : (uint32_t) n;
    }

    if (o.max_slots < o.max_num_seqs) {
        fprintf(stderr, "kimi-engine: --max-slots %u is smaller than"
                " --max-num-seqs %u: the extra sequences could never"
                " arrive\n", o.max_slots, o.max_num_seqs);
        return 2;
    }

    /* before any rank or backend exists: they all read it at init */
    if (o.enforce_eager && setenv("KIMI_CUDA_GRAPHS", "0", 1) != 0) {
        fprintf(stderr, "kimi-engine: --enforce-eager: %s\n",
                strerror(errno));
        return 1;
    }

    if (o.served_model_name == NULL) {
        o.served_model_name = o.model ? o.model : "replay";
    }

    /* model facts: vocabulary, context length, eos ids */
    model_len = 0;
    if (o.model != NULL) {
        rc = kimi_model_config_load(&cfg, o.model, o.hf_overrides, &err);
        if (rc != 0) {
            kimi_log(KIMI_LOG_EMERG, "model config: %s", err.msg);
            return 1;
        }
        vocab = cfg.vocab_size;
        model_len = cfg.max_position_embeddings;
        for (i = 0; i < cfg.n_eos && i < KIMI_MODEL_MAX_EOS; i++) {
            eos_ids[n_eos++] = cfg.eos_token_ids[i];
        }
    }

    if (n_eos == 0) {
        eos_ids[n_eos++] = KIMI_K2_IM_END;
        eos_ids[n_eos++] = KIMI_K2_EOS;
    }

    if (o.max_model_len == 0) {
        o.max_model_len = model_len ? model_len : KIMI_SERVE_DEFAULT_LEN;

    } else if (model_len != 0 && o.max_model_len > model_len) {
        fprintf(stderr, "kimi-engine: --max-model-len %u exceeds the model's"
                " max_position_embeddings %u\n", o.max_model_len, model_len);
        return 2;
    }

    /* not given: the scheduler's default, except on the cpu backend with
     * chunked prefill, where a step over a long context takes seconds per
     * 512 tokens: a bigger step stalls every running stream for minutes
     * (past the gateway's 60 s token timeout) while one prompt prefills */
    given_batched = o.max_num_batched_tokens != 0;

    if (o.max_num_batched_tokens == 0) {
        o.max_num_batched_tokens = (strcmp(o.backend, "cpu") == 0
                                    && o.enable_chunked_prefill)
                                   ? KIMI_SERVE_CPU_BATCHED_TOKENS
                                   : strcmp(o.backend, "cuda") == 0
                                   ? KIMI_SERVE_CUDA_BATCHED_TOKENS
                                   : kimi_sched_default_params()
                                     .max_num_batched_tokens;
    }

    /* the cuda backend runs one MoE plan per step, its workspace sized for
     * KIMI_CUDA_PLAN_TOKENS rows shared by the ranks under expert
     * parallelism.  A larger budget is capped, saying so, rather than
     * refused */
    if (strcmp(o.backend, "cuda") == 0) {
        uint32_t  ranks = o.enable_expert_parallel ? o.data_parallel_size : 1;
        uint32_t  limit = KIMI_CUDA_PLAN_TOKENS / (ranks ? ranks : 1);

        if (o.max_num_batched_tokens > limit) {
            if (given_batched) {
                kimi_log(KIMI_LOG_WARN, "--max-num-batched-tokens %u: the"
                         " cuda backend takes at most %u tokens per step%s;"
                         " using %u", o.max_num_batched_tokens, limit,
                         ranks > 1 ? " and rank under expert parallelism"
                                   : "", limit);
            }
            o.max_num_batched_tokens = limit;
        }
    }

    memset(&dpp, 0, sizeof(dpp));

    if (o.enable_expert_parallel && o.data_parallel_size == 1
        && o.tensor_parallel_size == 1)
    {
        kimi_log(KIMI_LOG_NOTICE, "--enable-expert-parallel with one rank:"
                 " every expert is local (use --data-parallel-size N)");
    }

    if (o.enable_expert_parallel && o.data_parallel_size > 1) {
        rc = kimi_serve_ep_check(&o, &cfg, &dpp.group_seg_bytes);
        if (rc != 0) {
            return rc;
        }
        dpp.group_members = o.tensor_parallel_size;
    }

    if (o.decode_context_parallel_size > 1
        && (strcmp(o.backend, "cuda") != 0
            || o.tensor_parallel_size % o.decode_context_parallel_size != 0))
    {
        fprintf(stderr, "kimi-engine: --decode-context-parallel-size is "
                "implemented on the cuda backend with --tensor-parallel-size"
                " a multiple of it\n");
        return 2;
    }

    if (o.tensor_parallel_size > 1 || o.pipeline_parallel_size > 1) {
        rc = kimi_serve_group_check(&o, &cfg, &followers_seg_bytes);
        if (rc != 0) {
            return rc;
        }
    }

    /* data parallel: fork one process per local rank (and form the
     * multi-node group first); this process either becomes a rank or
     * supervises them and returns their verdict */
    dpp.data_parallel_size = o.data_parallel_size;
    dpp.size_local = o.data_parallel_size_local;
    dpp.start_rank = o.data_parallel_start_rank;
    dpp.address = o.data_parallel_address;
    dpp.rpc_port = o.data_parallel_rpc_port;
    dpp.headless = o.headless;
    dpp.join_timeout_ms = o.data_parallel_bootstrap_timeout * 1000;
    dpp.liveness_timeout_ms = o.data_parallel_liveness_timeout * 1000;
    dpp.mesh_port = o.expert_parallel_mesh_port;
    dpp.shutdown_timeout_ms = o.shutdown_timeout * 1000;
    dpp.ipc_dir = o.ipc_dir;
    dpp.want_nccl_id = strcmp(o.backend, "cuda") == 0;

    rc = kimi_dp_launch(&dp, &dpp, &err);
    if (rc != 0) {
        kimi_log(KIMI_LOG_EMERG, "data parallel: %s", err.msg);
        return err.code == KIMI_EINVAL ? 2 : 1;
    }
    if (!dp.is_rank) {
        kimi_log(KIMI_LOG_NOTICE, "launcher exit code=%d", dp.exit_code);
        return dp.exit_code;
    }
    kimi_log_set_rank((int) dp.global_rank);

    sfd = kimi_serve_signals();
    if (sfd == -1) {
        kimi_log(KIMI_LOG_EMERG, "signalfd() failed: %s", strerror(errno));
        return 1;
    }

    if (o.threads == 0 && dp.n_local * kimi_serve_group_size(&o) > 1) {
        /* cpu: the ranks and their shards share the machine's cores
         * instead of each taking all of them */
        long  n = sysconf(_SC_NPROCESSORS_ONLN)
                  / (long) (dp.n_local * kimi_serve_group_size(&o));
        o.threads = n > 1 ? (uint32_t) n : 1;
    }

    if (kimi_serve_group_size(&o) > 1) {
        /* expert parallelism over DP x TP: the followers are members of
         * the node's group too */
        rc = kimi_serve_followers_start(&o, &cfg, followers_seg_bytes, o.threads,
                                 (int) (o.device + dp.local_rank
                                        * kimi_serve_group_size(&o)),
                                 dp.members_mem,
                                 dp.local_rank * dpp.group_members,
                                 &members,
                                 follower_pids, &is_follower, sfd);
        if (is_follower || rc != 0) {
            return rc;
        }
        followers = members.all;
    }

    if (dp.group_mem != NULL && dp.mesh_n > 0) {
        kimi_group_mesh_t  mesh = {
            .rank = dp.global_rank, .world = dp.world,
            .seg_bytes = dpp.group_seg_bytes, .listen_fd = dp.mesh_fd,
            .secret = dp.mesh_secret, .addrs = dp.mesh,
            .timeout_ms = dpp.join_timeout_ms
        };

        rc = kimi_group_connect(&group, dp.group_mem, dp.local_rank, &mesh,
                                &err);
        if (rc != 0) {
            kimi_log(KIMI_LOG_EMERG, "expert parallel: %s", err.msg);
            return 1;
        }

    } else if (dp.group_mem != NULL
               && kimi_group_attach(&group, dp.group_mem, dp.local_rank,
                                    &err) != 0)
    {
        kimi_log(KIMI_LOG_EMERG, "expert parallel: %s", err.msg);
        return 1;
    }

    /* expert parallelism over DP x TP: the ranks vote in group, and all
     * their processes trade MoE rows in the members' group */
    if (dp.members_mem != NULL) {
        if (kimi_group_attach(&ep_members, dp.members_mem, dp.local_rank
                              * dpp.group_members, &err) != 0)
        {
            kimi_log(KIMI_LOG_EMERG, "expert parallel: %s", err.msg);
            return 1;
        }
        /* a follower's death (its pid watched there) fails the exchanges
         * too; the launcher fails both groups when a rank dies */
        kimi_group_link(ep_members, followers != NULL ? followers : group);
    }

    memset(&sp, 0, sizeof(sp));
    sp.group = group;
    sp.followers = followers;
    sp.ipc_dir = o.ipc_dir;
    sp.ipc_mode = o.ipc_mode;
    sp.rank = dp.local_rank;
    sp.n_ranks = dp.n_local;
    sp.epoch = dp.epoch;
    sp.n_slots = o.max_slots;
    sp.shutdown_timeout_ms = o.shutdown_timeout * 1000;
    sp.signal_fd = sfd;
    sp.served_model_name = o.served_model_name;
    /* absolute: nginx workers read the tokenizer from another cwd */
    if (o.model != NULL && realpath(o.model, model_abs) != NULL) {
        sp.model_dir = model_abs;

    } else {
        sp.model_dir = o.model ? o.model : "";
    }
    sp.vocab_size = vocab;
    sp.sched = kimi_sched_default_params();
    sp.sched.max_num_seqs = o.max_num_seqs;
    sp.sched.max_num_batched_tokens = o.max_num_batched_tokens;
    sp.sched.max_model_len = o.max_model_len;
    sp.sched.max_waiting = o.max_waiting;
    sp.sched.enable_chunked_prefill = o.enable_chunked_prefill;
    sp.sched.enable_prefix_caching = o.enable_prefix_caching;
    sp.sched.kv = kimi_serve_kv_params(&o);
    sp.sched.eos_ids = eos_ids;
    sp.sched.n_eos = n_eos;

    /* the tokenizer: the replay backend's text scripts, and JSON mode,
     * which masks tokens by their bytes (without it such requests are
     * refused; a replay "tokens" script needs none) */
    if (o.model != NULL && kimi_tokenizer_load(&tok, o.model, &err) != 0) {
        kimi_log(is_replay ? KIMI_LOG_WARN : KIMI_LOG_NOTICE, "no tokenizer"
                 " in the model directory (%s): response_format json_object"
                 " is refused", err.msg);
        tok = NULL;
    }
    sp.sched.tokenizer = tok;

    kimi_log(KIMI_LOG_NOTICE, "starting backend=%s model=\"%s\" served_as="
             "\"%s\" max_model_len=%u max_num_seqs=%u max_slots=%u"
             " max_num_batched_tokens=%u prefix_caching=%s ipc_dir=%s",
             o.backend, o.model ? o.model : "", o.served_model_name,
             o.max_model_len, o.max_num_seqs, o.max_slots,
             o.max_num_batched_tokens, o.enable_prefix_caching ? "on" : "off",
             o.ipc_dir);

    /* publish a STARTING segment first: the gateway can answer 503
     * "loading" instead of "no engine" while weights load */
    rc = kimi_server_init(&srv, &sp, &err);
    if (rc != 0) {
        kimi_log(KIMI_LOG_EMERG, "server: %s", err.msg);
        goto done;
    }

    /* local rank 0: the launcher may start the other ranks now */
    kimi_dp_published(&dp, kimi_server_epoch(srv));

    if (group != NULL && kimi_group_spans_nodes(group)) {
        /* every local rank runs from here on: the mesh can form */
        rc = kimi_group_form(group, &err);
        if (rc != 0) {
            kimi_log(KIMI_LOG_EMERG, "expert parallel: %s", err.msg);
            goto done;
        }
        kimi_log(KIMI_LOG_NOTICE, "expert parallel: mesh of %u ranks over %u"
                 " nodes up", dp.world, dp.n_nodes);
    }

    memset(&bp, 0, sizeof(bp));
    bp.name = o.backend;
    bp.n_threads = o.threads;
    /* a GPU per rank; under cuda tensor parallelism T per rank */
    bp.device = (int) (o.device + dp.local_rank
                       * (followers != NULL ? kimi_serve_group_size(&o) : 1));
    bp.max_batched_tokens = o.max_num_batched_tokens;
    bp.max_model_len = o.max_model_len;
    bp.max_num_seqs = o.max_num_seqs;

    if (is_replay) {
        memset(&rp, 0, sizeof(rp));
        rp.script_path = o.replay_script;
        rp.delay_ms = o.replay_delay_ms;
        rp.tokenizer = tok;
        rp.vocab_size = vocab;
        rp.max_model_len = o.max_model_len;
        rp.eos_ids = eos_ids;
        rp.n_eos = n_eos;
        bp.replay = &rp;

    } else {
        mp = kimi_model_default_params();
        mp.dir = o.model;
        mp.load_format = strcmp(o.load_format, "dummy") == 0 ? "dummy"
                                                              : "auto";
        mp.hf_overrides = o.hf_overrides;
        mp.seed = o.seed;
        mp.quantize_fp8 = o.quantization != NULL;

        if (followers != NULL) {
            kimi_serve_group_shard(&o, &cfg, 0, &members, &mp, &bp);
        }

        if (group != NULL) {
            kimi_group_t  *ep = ep_members != NULL ? ep_members : group;
            uint32_t       per = cfg.n_routed_experts / kimi_group_world(ep);

            mp.expert_first = kimi_group_rank(ep) * per;
            mp.expert_last = mp.expert_first + per;
            bp.ep = ep;
            kimi_log(KIMI_LOG_NOTICE, "expert parallel: %s %u of %u holds"
                     " experts [%u, %u)", ep_members ? "process" : "rank",
                     kimi_group_rank(ep), kimi_group_world(ep),
                     mp.expert_first, mp.expert_last);
        }

        rc = kimi_model_load(&model, &mp, &err);
        if (rc != 0) {
            kimi_log(KIMI_LOG_EMERG, "model: %s", err.msg);
            goto done;
        }
        if (model->n_quantized > 0) {
            kimi_log(KIMI_LOG_NOTICE, "model: %u linear weights quantised"
                     " to FP8 with 128x128 block scales at load"
                     " (--quantization fp8)", model->n_quantized);
        }
        bp.model = model;
    }

    rc = kimi_backend_create(&backend, &bp, &err);
    if (rc != 0) {
        kimi_log(KIMI_LOG_EMERG, "backend %s: %s", o.backend, err.msg);
        goto done;
    }

    if (followers != NULL && kimi_backend_followers_ready(backend, &err) != 0) {
        kimi_log(KIMI_LOG_EMERG, "%s: %s", kimi_serve_group_kind(&o),
                 err.msg);
        goto done;
    }

    rc = kimi_server_start(srv, backend, &err);
    if (rc != 0) {
        kimi_log(KIMI_LOG_EMERG, "scheduler: %s", err.msg);
        goto done;
    }

    rc = kimi_server_run(srv, &err);
    if (rc != 0) {
        kimi_log(KIMI_LOG_EMERG, "server: %s", err.msg);
        goto done;
    }

    exit_code = 0;

done:

    /* the server (and its scheduler) goes before the backend it borrows;
     * freeing the backend sends the followers the stop message, and their
     * exits are then no failure */
    kimi_server_free(srv);
    if (followers != NULL && exit_code == 0) {
        kimi_group_watchdog_stop();
    }
    if (backend != NULL) {
        backend->ops->free(backend);
    }
    if (followers != NULL) {
        if (exit_code != 0) {
            kimi_group_abort(followers, "the leader is exiting");
        }
        kimi_serve_followers_reap(follower_pids, kimi_serve_group_size(&o));
    }
    kimi_model_free(model);
    kimi_group_free(ep_members);
    kimi_group_free(group);
    if (followers != NULL) {
        kimi_serve_member_free(&members);
    }
    kimi_tokenizer_free(tok);
    if (sfd != -1) {
        close(sfd);
    }

    kimi_log(KIMI_LOG_NOTICE, "exit code=%d", exit_code);

    return exit_code;
}
