/*
 * What a run reports: vLLM's result block, its JSON result file, and a
 * gnuplot picture.
 *
 * Owns:   the printed names and formats (Python's "{:<40} {:<10.2f}" and
 *         "{s:{c}^{n}}" written as printf), the JSON keys of vLLM's result
 *         file, and the gnuplot script.
 * Never:  computes a metric (bench_stats.c does).
 */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/wait.h>

#include <jansson.h>

#include "bench.h"

#define BENCH_LINE_WIDTH  50

static const struct {
    const char  *key;           /* --percentile-metrics name */
    const char  *name;          /* in the printed labels */
    const char  *header;
} bench_metric_names[] = {
    { "ttft", "TTFT", "Time to First Token" },
    { "tpot", "TPOT", "Time per Output Token (excl. 1st token)" },
    { "itl",  "ITL",  "Inter-token Latency" },
    { "e2el", "E2EL", "End-to-end Latency" },
};


/* Python's "{s:{c}^{n}}": the extra fill character goes on the right. */
static void
bench_print_centered(const char *s, char fill)
{
    int  n = (int) strlen(s), pad = BENCH_LINE_WIDTH - n, i;

    for (i = 0; i < pad / 2; i++) {
        putchar(fill);
    }
    fputs(s, stdout);
    for (i = 0; i < pad - pad / 2; i++) {
        putchar(fill);
    }
    putchar('\n');
}


static void
bench_print_f(const char *label, double v)
{
    printf("%-40s %-10.2f\n", label, v);
}


static void
bench_print_u(const char *label, unsigned long long v)
{
    printf("%-40s %-10llu\n", label, v);
}


int
bench_metric_selected(const bench_opts_t *o, const char *name)
{
    const char  *p = o->percentile_metrics;
    size_t       k = strlen(name);

    while (p != NULL && *p != '\0') {
        if (strncmp(p, name, k) == 0 && (p[k] == ',' || p[k] == '\0')) {
            return 1;
        }
        p = strchr(p, ',');
        p = p ? p + 1 : NULL;
    }

    return 0;
}


static const bench_summary_t *
bench_metric_summary(const bench_metrics_t *m, size_t i)
{
    const bench_summary_t  *s[] = { &m->ttft, &m->tpot, &m->itl, &m->e2el };

    return s[i];
}


void
bench_report_print(const bench_opts_t *o, const bench_metrics_t *m,
    const bench_req_t *reqs, size_t n)
{
    const bench_summary_t  *s;
    size_t                  i, j, shown = 0;
    char                    label[96], word[32];

    if (m->failed > 0) {
        printf("Failed requests during benchmark run detected "
               "(capping to 10):\n");
        for (i = 0; i < n && shown < 10; i++) {
            if (!reqs[i].success) {
                printf("Error %zu: %s\n", shown++,
                       reqs[i].error ? reqs[i].error : "unknown");
            }
        }
    }

    bench_print_centered(" Serving Benchmark Result ", '=');
    bench_print_u("Successful requests:", m->completed);
    bench_print_u("Failed requests:", m->failed);
    if (o->max_concurrency > 0) {
        bench_print_u("Maximum request concurrency:", o->max_concurrency);
    }
    if (!isinf(o->request_rate)) {
        bench_print_f("Request rate configured (RPS):", o->request_rate);
    }
    bench_print_f("Benchmark duration (s):", m->duration_s);
    bench_print_u("Total input tokens:", m->total_input);
    bench_print_u("Total generated tokens:", m->total_output);
    bench_print_f("Request throughput (req/s):", m->request_throughput);
    if (!isnan(m->request_goodput)) {
        bench_print_f("Request goodput (req/s):", m->request_goodput);
    }
    bench_print_f("Output token throughput (tok/s):", m->output_throughput);
    bench_print_f("Peak output token throughput (tok/s):",
                  m->max_output_tokens_per_s);
    bench_print_f("Peak concurrent requests:", m->max_concurrent_requests);
    bench_print_f("Total Token throughput (tok/s):",
                  m->total_token_throughput);

    for (i = 0; i < 4; i++) {
        if (!bench_metric_selected(o, bench_metric_names[i].key)) {
            continue;
        }
        s = bench_metric_summary(m, i);

        bench_print_centered(bench_metric_names[i].header, '-');
        snprintf(label, sizeof(label), "Mean %s (ms):",
                 bench_metric_names[i].name);
        bench_print_f(label, s->mean_ms);
        snprintf(label, sizeof(label), "Median %s (ms):",
                 bench_metric_names[i].name);
        bench_print_f(label, s->median_ms);

        for (j = 0; j < o->n_percentiles; j++) {
            bench_percentile_word(o->percentiles[j], word, sizeof(word));
            snprintf(label, sizeof(label), "P%s %s (ms):", word,
                     bench_metric_names[i].name);
            bench_print_f(label, s->pct_ms[j]);
        }
    }

    for (i = 0; i < BENCH_LINE_WIDTH; i++) {
        putchar('=');
    }
    putchar('\n');

    /* ours, after vLLM's block: is the client trustworthy? */
    printf("Client CPU (kimi-bench, one thread): %.2f s user + %.2f s sys "
           "= %.1f%% of one core over the run\n", m->cpu_user_s,
           m->cpu_sys_s, m->duration_s > 0.0
           ? 100.0 * (m->cpu_user_s + m->cpu_sys_s) / m->duration_s : 0.0);
    if (m->n_prompt_checked > 0) {
        printf("Prompt tokens: the server counted %u of %u prompts as the "
               "client did%s\n",
               m->n_prompt_checked - m->n_prompt_mismatch,
               m->n_prompt_checked, m->n_prompt_mismatch
               ? " (chat templates add tokens; see input_lens)" : "");
    }
    fflush(stdout);
}


static void
bench_report_added_stats(const char *what, const double *v, size_t n,
    const double *pcts, size_t n_pcts)
{
    bench_summary_t  s;
    size_t           j;
    char             word[32], label[64];

    bench_summarize(v, n, pcts, n_pcts, &s);

    snprintf(label, sizeof(label), "%s, samples:", what);
    printf("%-40s %-10zu\n", label, n);
    if (n == 0) {
        return;
    }
    snprintf(label, sizeof(label), "%s, mean (us):", what);
    bench_print_f(label, s.mean_ms * 1000.0);
    snprintf(label, sizeof(label), "%s, median (us):", what);
    bench_print_f(label, s.median_ms * 1000.0);
    for (j = 0; j < n_pcts; j++) {
        bench_percentile_word(pcts[j], word, sizeof(word));
        snprintf(label, sizeof(label), "%s, P%s (us):", what, word);
        bench_print_f(label, s.pct_ms[j] * 1000.0);
    }
}


/* Not vLLM's: the gateway benchmark's figure (bench/gateway.sh). */
void
bench_report_added(const bench_added_t *a, const double *pcts, size_t n_pcts)
{
    size_t  j;

    bench_print_centered("Gateway added latency", '-');
    printf("%-40s %-10u\n", "Requests matched:", a->n_requests);
    if (a->n_unmatched_requests || a->n_count_mismatch) {
        printf("%-40s %-10u\n", "Requests not found in the engine:",
               a->n_unmatched_requests);
        printf("%-40s %-10u\n", "Requests with events != tokens:",
               a->n_count_mismatch);
    }
    if (a->n_engine_itl > 0) {
        bench_print_f("Engine inter-token time (ms):",
                      a->engine_itl_s * 1000.0);
    }
    bench_report_added_stats("First token", a->first_added_s, a->n_first,
                             pcts, n_pcts);

    if (a->n_tokens > 0) {
        printf("%-40s %-10zu\n", "Tokens seen by the spinning observer:",
               a->n_tokens);
        bench_print_f("Observer pass, mean (us):", a->pass_us);
        bench_print_f("Observer pass, worst (us):", a->max_pass_us);
        bench_report_added_stats("Every token", a->added_s, a->n, pcts,
                                 n_pcts);
    }

    for (j = 0; j < BENCH_LINE_WIDTH; j++) {
        putchar('=');
    }
    putchar('\n');
    fflush(stdout);
}


/* "<what>_samples", "<what>_mean_us", "_median_us", "_p99_us", ... */
static void
bench_json_added(json_t *a, const char *what, const double *v, size_t n,
    const bench_opts_t *o)
{
    bench_summary_t  s;
    size_t           j;
    char             key[96], word[32];

    bench_summarize(v, n, o->percentiles, o->n_percentiles, &s);

    snprintf(key, sizeof(key), "%s_samples", what);
    json_object_set_new(a, key, json_integer(n));
    if (n == 0) {
        return;                       /* no sample: no number, not 0 */
    }
    snprintf(key, sizeof(key), "%s_mean_us", what);
    json_object_set_new(a, key, json_real(s.mean_ms * 1000.0));
    snprintf(key, sizeof(key), "%s_median_us", what);
    json_object_set_new(a, key, json_real(s.median_ms * 1000.0));
    for (j = 0; j < o->n_percentiles; j++) {
        bench_percentile_word(o->percentiles[j], word, sizeof(word));
        snprintf(key, sizeof(key), "%s_p%s_us", what, word);
        json_object_set_new(a, key, json_real(s.pct_ms[j] * 1000.0));
    }
}


static json_t *
bench_json_real_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}


int
bench_report_json(const bench_opts_t *o, const bench_metrics_t *m,
    const bench_req_t *reqs, size_t n, const bench_added_t *added,
    const char *path, kimi_err_t *err)
{
    json_t                 *js, *a, *b;
    const bench_summary_t  *s;
    size_t                  i, j;
    char                    key[64], word[32], date[32];
    time_t                  now = time(NULL);
    struct tm               tm;
    int                     rc = 0;

    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y%m%d-%H%M%S", &tm);

    js = json_object();
    json_object_set_new(js, "date", json_string(date));
    json_object_set_new(js, "endpoint_type", json_string(o->backend_name));
    json_object_set_new(js, "backend", json_string(o->backend_name));
    json_object_set_new(js, "label", o->label ? json_string(o->label)
                                              : json_null());
    json_object_set_new(js, "model_id", json_string(o->model));
    json_object_set_new(js, "tokenizer_id", json_string(o->tokenizer));
    json_object_set_new(js, "num_prompts", json_integer(o->num_prompts));
    json_object_set_new(js, "request_rate", isinf(o->request_rate)
                        ? json_string("inf") : json_real(o->request_rate));
    json_object_set_new(js, "burstiness",
                        bench_json_real_or_null(o->burstiness));
    if (o->ramp_up != NULL) {
        json_object_set_new(js, "ramp_up_strategy", json_string(o->ramp_up));
        json_object_set_new(js, "ramp_up_start_rps",
                            json_real(o->ramp_start_rps));
        json_object_set_new(js, "ramp_up_end_rps",
                            json_real(o->ramp_end_rps));
    }
    json_object_set_new(js, "max_concurrency", o->max_concurrency
                        ? json_integer(o->max_concurrency) : json_null());

    json_object_set_new(js, "duration", json_real(m->duration_s));
    json_object_set_new(js, "completed", json_integer(m->completed));
    json_object_set_new(js, "failed", json_integer(m->failed));
    json_object_set_new(js, "total_input_tokens",
                        json_integer(m->total_input));
    json_object_set_new(js, "total_output_tokens",
                        json_integer(m->total_output));
    json_object_set_new(js, "request_throughput",
                        json_real(m->request_throughput));
    json_object_set_new(js, "request_goodput",
                        isnan(m->request_goodput)
                        ? json_null() : json_real(m->request_goodput));
    json_object_set_new(js, "output_throughput",
                        json_real(m->output_throughput));
    json_object_set_new(js, "total_token_throughput",
                        json_real(m->total_token_throughput));

    if (o->save_detailed) {
        json_t  *in = json_array(), *out = json_array(), *tt = json_array();
        json_t  *it = json_array(), *gt = json_array(), *er = json_array();

        for (i = 0; i < n; i++) {
            const bench_req_t  *r = &reqs[i];

            json_array_append_new(in, json_integer(r->prompt_tokens_server
                                  ? r->prompt_tokens_server : r->prompt_len));
            json_array_append_new(out, json_integer(r->success
                                                    ? r->output_tokens : 0));
            json_array_append_new(tt, json_real(r->ttft_s));
            b = json_array();
            for (j = 0; j < r->n_itl; j++) {
                json_array_append_new(b, json_real(r->itl_s[j]));
            }
            json_array_append_new(it, b);
            json_array_append_new(gt, json_stringn(r->text ? r->text : "",
                                                   r->text_len));
            json_array_append_new(er, json_string(r->error ? r->error : ""));
        }
        json_object_set_new(js, "input_lens", in);
        json_object_set_new(js, "output_lens", out);
        json_object_set_new(js, "ttfts", tt);
        json_object_set_new(js, "itls", it);
        json_object_set_new(js, "generated_texts", gt);
        json_object_set_new(js, "errors", er);
    }

    json_object_set_new(js, "max_output_tokens_per_s",
                        json_real(m->max_output_tokens_per_s));
    json_object_set_new(js, "max_concurrent_requests",
                        json_integer(m->max_concurrent_requests));

    for (i = 0; i < 4; i++) {
        const char  *k = bench_metric_names[i].key;

        if (!bench_metric_selected(o, k)) {
            continue;
        }
        s = bench_metric_summary(m, i);

        snprintf(key, sizeof(key), "mean_%s_ms", k);
        json_object_set_new(js, key, json_real(s->mean_ms));
        snprintf(key, sizeof(key), "median_%s_ms", k);
        json_object_set_new(js, key, json_real(s->median_ms));
        snprintf(key, sizeof(key), "std_%s_ms", k);
        json_object_set_new(js, key, json_real(s->std_ms));
        for (j = 0; j < o->n_percentiles; j++) {
            bench_percentile_word(o->percentiles[j], word, sizeof(word));
            snprintf(key, sizeof(key), "p%s_%s_ms", word, k);
            json_object_set_new(js, key, json_real(s->pct_ms[j]));
        }
    }

    /* kimi-bench's own keys, after vLLM's */
    a = json_object();
    json_object_set_new(a, "cpu_user_s", json_real(m->cpu_user_s));
    json_object_set_new(a, "cpu_sys_s", json_real(m->cpu_sys_s));
    json_object_set_new(a, "prompt_tokens_checked",
                        json_integer(m->n_prompt_checked));
    json_object_set_new(a, "prompt_tokens_mismatched",
                        json_integer(m->n_prompt_mismatch));
    json_object_set_new(js, "kimi_bench_client", a);

    if (added != NULL) {
        a = json_object();
        json_object_set_new(a, "requests_matched",
                            json_integer(added->n_requests));
        json_object_set_new(a, "requests_unmatched",
                            json_integer(added->n_unmatched_requests));
        json_object_set_new(a, "requests_count_mismatch",
                            json_integer(added->n_count_mismatch));
        if (added->n_engine_itl > 0) {
            json_object_set_new(a, "engine_itl_ms",
                                json_real(added->engine_itl_s * 1000.0));
        }
        bench_json_added(a, "first_token", added->first_added_s,
                         added->n_first, o);
        json_object_set_new(a, "tokens_matched",
                            json_integer(added->n_tokens));
        json_object_set_new(a, "max_width_us",
                            json_real(added->max_width_us));
        json_object_set_new(a, "observer_resolution_us",
                            json_real(added->pass_us));
        json_object_set_new(a, "observer_worst_pass_us",
                            json_real(added->max_pass_us));
        bench_json_added(a, "every_token", added->added_s, added->n, o);
        json_object_set_new(js, "gateway_added_latency", a);
    }

    /* --metadata KEY=VALUE: keys of the result, as vLLM adds them */
    for (size_t i = 0; i < o->n_metadata; i++) {
        const char  *eq = strchr(o->metadata[i], '=');
        char         key[256];

        snprintf(key, sizeof(key), "%.*s", (int) (eq - o->metadata[i]),
                 o->metadata[i]);
        json_object_set_new(js, key, json_string(eq + 1));
    }

    if (o->append_result) {
        /* vLLM's --append-result: one more JSON document, a line apart */
        char  *text = json_dumps(js, JSON_PRESERVE_ORDER);
        FILE  *f = text ? fopen(path, "a") : NULL;

        if (f == NULL || (ftell(f) > 0 && fputc('\n', f) == EOF)
            || fputs(text, f) == EOF || fclose(f) != 0)
        {
            rc = kimi_err_set(err, KIMI_EIO, "cannot append to \"%s\": %s",
                              path, strerror(errno));
        }
        free(text);

    } else if (json_dump_file(js, path, JSON_PRESERVE_ORDER) != 0) {
        rc = kimi_err_set(err, KIMI_EIO, "cannot write \"%s\": %s", path,
                          strerror(errno));
    }

    json_decref(js);

    return rc;
}


static int
bench_write_values(const char *path, const double *v, size_t n, double mul)
{
    FILE    *f = fopen(path, "w");
    size_t   i;

    if (f == NULL) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        fprintf(f, "%.6f\n", v[i] * mul);
    }
    if (n == 0) {
        fprintf(f, "0\n");            /* gnuplot refuses an empty file */
    }

    return fclose(f);
}


/*
 * Three panels: TTFT histogram, ITL histogram, output tokens per second
 * and concurrent requests over time (vLLM's 1-s buckets).
 */
int
bench_report_plot(const bench_opts_t *o, const bench_metrics_t *m,
    const bench_req_t *reqs, size_t n, const char *path, kimi_err_t *err)
{
    char     dir[] = "/tmp/kimi-bench-plot-XXXXXX";
    char     f_ttft[64], f_itl[64], f_tput[64], f_gp[64], model[128];
    double  *ttft, *itl;
    size_t   i, n_ttft = 0, n_itl = 0, total = 0;
    FILE    *f;
    pid_t    pid;
    int      status, rc = 0;

    if (mkdtemp(dir) == NULL) {
        return kimi_err_set(err, KIMI_EIO, "mkdtemp(): %s", strerror(errno));
    }
    snprintf(f_ttft, sizeof(f_ttft), "%s/ttft.dat", dir);
    snprintf(f_itl, sizeof(f_itl), "%s/itl.dat", dir);
    snprintf(f_tput, sizeof(f_tput), "%s/tput.dat", dir);
    snprintf(f_gp, sizeof(f_gp), "%s/plot.gp", dir);

    for (i = 0; i < n; i++) {
        total += reqs[i].success ? reqs[i].n_itl : 0;
    }
    ttft = malloc((n + 1) * sizeof(double));
    itl = malloc((total + 1) * sizeof(double));
    if (ttft == NULL || itl == NULL) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "plot data");
        goto done;
    }
    for (i = 0; i < n; i++) {
        if (reqs[i].success) {
            ttft[n_ttft++] = reqs[i].ttft_s;
            memcpy(itl + n_itl, reqs[i].itl_s,
                   reqs[i].n_itl * sizeof(double));
            n_itl += reqs[i].n_itl;
        }
    }

    f = fopen(f_tput, "w");
    if (bench_write_values(f_ttft, ttft, n_ttft, 1000.0) != 0
        || bench_write_values(f_itl, itl, n_itl, 1000.0) != 0
        || f == NULL)
    {
        if (f != NULL) {
            fclose(f);
        }
        rc = kimi_err_set(err, KIMI_EIO, "writing plot data in %s", dir);
        goto done;
    }
    for (i = 0; i < m->n_buckets; i++) {
        fprintf(f, "%zu %.0f %.0f\n", i, m->tokens_per_s[i],
                m->concurrent_per_s[i]);
    }
    if (m->n_buckets == 0) {
        fprintf(f, "0 0 0\n");
    }
    fclose(f);

    /* names go inside gnuplot's single quotes: no quote may end them */
    snprintf(model, sizeof(model), "%s", o->model);
    for (i = 0; model[i] != '\0'; i++) {
        if (model[i] == '\'' || model[i] == '\\' || model[i] == '\n') {
            model[i] = '_';
        }
    }
    if (strchr(path, '\'') != NULL) {
        rc = kimi_err_set(err, KIMI_EINVAL, "--plot \"%s\": no quotes in the "
                          "file name, please", path);
        goto done;
    }

    f = fopen(f_gp, "w");
    if (f == NULL) {
        rc = kimi_err_set(err, KIMI_EIO, "%s: %s", f_gp, strerror(errno));
        goto done;
    }
    fprintf(f,
        "set terminal pngcairo size 1200,1200 font ',10'\n"
        "set output '%s'\n"
        "set multiplot layout 3,1 title 'kimi-bench: %s, %u prompts, "
        "input %u, output %u, rate %g req/s'\n"
        "set style fill solid 0.6\n"
        "set grid\n"
        "bin(x, w) = w * floor(x / w) + w / 2.0\n"
        "do for [k = 1:2] {\n"
        "  file = k == 1 ? '%s' : '%s'\n"
        "  name = k == 1 ? 'TTFT' : 'ITL'\n"
        "  stats file using 1 nooutput\n"
        "  w = (STATS_max - STATS_min) / 50.0\n"
        "  if (w <= 0) { w = 0.001 }\n"
        "  set boxwidth w absolute\n"
        "  set title sprintf('%%s distribution (%%d values, median %%.3f ms)'"
        ", name, STATS_records, STATS_median)\n"
        "  set xlabel name.' (ms)'\n"
        "  set ylabel 'count'\n"
        "  plot file using (bin($1, w)):(1.0) smooth frequency with boxes "
        "notitle\n"
        "}\n"
        "set title 'throughput over time (1-s buckets)'\n"
        "set xlabel 'time since the first request (s)'\n"
        "set ylabel 'output tokens/s'\n"
        "set y2label 'concurrent requests'\n"
        "set y2tics\n"
        "set ytics nomirror\n"
        "plot '%s' using 1:2 with linespoints title 'output tokens/s', "
        "'' using 1:3 axes x1y2 with steps title 'concurrent requests'\n"
        "unset multiplot\n",
        path, model, o->num_prompts, o->input_len, o->output_len,
        o->request_rate, f_ttft, f_itl, f_tput);
    fclose(f);

    pid = fork();
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", f_gp, (char *) NULL);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status)
        || WEXITSTATUS(status) != 0)
    {
        rc = kimi_err_set(err, KIMI_EIO, "gnuplot failed (exit %d); is "
                          "gnuplot-nox installed?  script: %s",
                          pid > 0 && WIFEXITED(status)
                          ? WEXITSTATUS(status) : -1, f_gp);
        free(ttft);
        free(itl);
        return rc;                    /* keep the files to debug */
    }

done:

    free(ttft);
    free(itl);
    unlink(f_ttft);
    unlink(f_itl);
    unlink(f_tput);
    unlink(f_gp);
    rmdir(dir);

    return rc;
}
