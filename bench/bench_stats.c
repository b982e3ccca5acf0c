/*
 * Statistics and the serving metrics of `vllm bench serve`.
 *
 * Owns:   percentiles (numpy's default linear interpolation), mean,
 *         median, population std, and the metric definitions: TTFT, TPOT,
 *         ITL, E2EL, throughputs, peak output tokens per second and peak
 *         concurrent requests in 1-s buckets.
 * Never:  does I/O or reads a clock: every input is in bench_req_t, so
 *         t/unit/bench_stats.c checks it with hand-computed numbers.
 *
 * Definitions (kimi-k2-facts.md section 8; vLLM's calculate_metrics):
 *   TTFT, E2EL: per successful request;
 *   TPOT = (E2EL - TTFT) / (output_tokens - 1), requests with > 1 token;
 *   ITL: every gap of every successful request, pooled;
 *   an empty list reports 0 everywhere, as numpy does for `x or 0`.
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"


static int
bench_cmp_double(const void *a, const void *b)
{
    double  x = *(const double *) a, y = *(const double *) b;

    return (x > y) - (x < y);
}


/* numpy.percentile(a, p), method "linear": rank p/100 * (n - 1). */
double
bench_percentile_sorted(const double *sorted, size_t n, double p)
{
    double  rank, frac;
    size_t  lo;

    if (n == 0) {
        return 0.0;
    }

    rank = p / 100.0 * (double) (n - 1);
    if (rank <= 0.0) {
        return sorted[0];
    }
    if (rank >= (double) (n - 1)) {
        return sorted[n - 1];
    }

    lo = (size_t) floor(rank);
    frac = rank - (double) lo;

    return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * frac;
}


/* values in seconds; the summary in milliseconds, as vLLM prints it. */
void
bench_summarize(const double *values, size_t n, const double *pcts,
    size_t n_pcts, bench_summary_t *out)
{
    double  *s, sum = 0.0, var = 0.0, mean;
    size_t   i;

    memset(out, 0, sizeof(*out));
    if (n == 0) {
        return;
    }

    s = malloc(n * sizeof(double));
    if (s == NULL) {
        return;
    }
    memcpy(s, values, n * sizeof(double));
    qsort(s, n, sizeof(double), bench_cmp_double);

    for (i = 0; i < n; i++) {
        sum += s[i];
    }
    mean = sum / (double) n;

    for (i = 0; i < n; i++) {
        var += (s[i] - mean) * (s[i] - mean);
    }

    out->mean_ms = mean * 1000.0;
    out->std_ms = sqrt(var / (double) n) * 1000.0;     /* numpy ddof=0 */
    out->median_ms = bench_percentile_sorted(s, n, 50.0) * 1000.0;

    for (i = 0; i < n_pcts && i < BENCH_MAX_PERCENTILES; i++) {
        out->pct_ms[i] = bench_percentile_sorted(s, n, pcts[i]) * 1000.0;
    }

    free(s);
}


double
bench_tpot(const bench_req_t *r)
{
    if (!r->success || r->output_tokens <= 1) {
        return -1.0;
    }

    return (r->latency_s - r->ttft_s) / (double) (r->output_tokens - 1);
}


int
bench_metrics_compute(const bench_req_t *reqs, size_t n, double duration_s,
    const double *pcts, size_t n_pcts, bench_metrics_t *m)
{
    double   *ttft, *tpot, *e2el, *itl, t_min, t_max, t;
    size_t    i, j, n_ok = 0, n_tpot = 0, n_itl = 0, total_itl = 0, b;
    ssize_t   b0, b1, k;

    memset(m, 0, sizeof(*m));
    m->duration_s = duration_s;

    for (i = 0; i < n; i++) {
        if (reqs[i].success) {
            total_itl += reqs[i].n_itl;
        }
    }

    ttft = malloc((n + 1) * sizeof(double));
    tpot = malloc((n + 1) * sizeof(double));
    e2el = malloc((n + 1) * sizeof(double));
    itl = malloc((total_itl + 1) * sizeof(double));
    if (ttft == NULL || tpot == NULL || e2el == NULL || itl == NULL) {
        free(ttft); free(tpot); free(e2el); free(itl);
        return KIMI_ENOMEM;
    }

    t_min = INFINITY;
    t_max = -INFINITY;

    for (i = 0; i < n; i++) {
        const bench_req_t  *r = &reqs[i];

        if (!r->success) {
            m->failed++;
            continue;
        }

        m->completed++;
        /* the server's usage.prompt_tokens wins, as in vLLM */
        if (r->prompt_tokens_server > 0) {
            m->total_input += r->prompt_tokens_server;
            m->n_prompt_checked++;
            m->n_prompt_mismatch += r->prompt_tokens_server != r->prompt_len;

        } else {
            m->total_input += r->prompt_len;
        }
        m->total_output += r->output_tokens;

        ttft[n_ok] = r->ttft_s;
        e2el[n_ok] = r->latency_s;
        n_ok++;

        if (r->output_tokens > 1) {
            tpot[n_tpot++] = bench_tpot(r);
        }

        memcpy(itl + n_itl, r->itl_s, r->n_itl * sizeof(double));
        n_itl += r->n_itl;

        if (r->start_s < t_min) {
            t_min = r->start_s;
        }
        if (r->start_s + r->latency_s > t_max) {
            t_max = r->start_s + r->latency_s;
        }
    }

    bench_summarize(ttft, n_ok, pcts, n_pcts, &m->ttft);
    bench_summarize(tpot, n_tpot, pcts, n_pcts, &m->tpot);
    bench_summarize(itl, n_itl, pcts, n_pcts, &m->itl);
    bench_summarize(e2el, n_ok, pcts, n_pcts, &m->e2el);

    free(ttft); free(tpot); free(e2el); free(itl);

    if (duration_s > 0.0) {
        m->request_throughput = m->completed / duration_s;
        m->output_throughput = m->total_output / duration_s;
        m->total_token_throughput =
            (double) (m->total_input + m->total_output) / duration_s;
    }

    if (n_ok == 0) {
        return 0;
    }

    /*
     * vLLM's peak figures: 1-s buckets from the earliest start; one
     * "token" per choices-bearing event at start + TTFT + the ITLs, and a
     * request counts as concurrent in every bucket it touches.  Same
     * definitions, so the numbers compare.
     */
    m->n_buckets = (size_t) ceil(t_max - t_min) + 1;
    m->tokens_per_s = calloc(m->n_buckets, sizeof(double));
    m->concurrent_per_s = calloc(m->n_buckets, sizeof(double));
    if (m->tokens_per_s == NULL || m->concurrent_per_s == NULL) {
        bench_metrics_free(m);
        return KIMI_ENOMEM;
    }

    for (i = 0; i < n; i++) {
        const bench_req_t  *r = &reqs[i];

        if (!r->success) {
            continue;
        }

        t = r->start_s + r->ttft_s;
        for (j = 0; j <= r->n_itl; j++) {
            if (j > 0) {
                t += r->itl_s[j - 1];
            }
            k = (ssize_t) (t - t_min);          /* int() truncates */
            if (k >= 0 && (size_t) k < m->n_buckets) {
                m->tokens_per_s[k] += 1.0;
            }
        }

        b0 = (ssize_t) (r->start_s - t_min);
        b1 = (ssize_t) (r->start_s + r->latency_s - t_min);
        for (k = b0; k <= b1; k++) {
            if (k >= 0 && (size_t) k < m->n_buckets) {
                m->concurrent_per_s[k] += 1.0;
            }
        }
    }

    for (b = 0; b < m->n_buckets; b++) {
        if (m->tokens_per_s[b] > m->max_output_tokens_per_s) {
            m->max_output_tokens_per_s = m->tokens_per_s[b];
        }
        if (m->concurrent_per_s[b] > m->max_concurrent_requests) {
            m->max_concurrent_requests = (uint32_t) m->concurrent_per_s[b];
        }
    }

    return 0;
}


void
bench_metrics_free(bench_metrics_t *m)
{
    free(m->tokens_per_s);
    free(m->concurrent_per_s);
    m->tokens_per_s = NULL;
    m->concurrent_per_s = NULL;
    m->n_buckets = 0;
}


/* Python's str(float): shortest text that reads back the same. */
void
bench_py_float(double v, char *buf, size_t len)
{
    int  prec;

    if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "inf" : "-inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e16) {
        snprintf(buf, len, "%.1f", v);
        return;
    }
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) {
            return;
        }
    }
}


/* vLLM: str(int(p)) if p is whole, else str(p) ("99", "99.9") */
void
bench_percentile_word(double p, char *buf, size_t len)
{
    if (p == floor(p)) {
        snprintf(buf, len, "%.0f", p);
    } else {
        bench_py_float(p, buf, len);
    }
}


double
bench_goodput(const bench_opts_t *o, const bench_req_t *reqs, size_t n,
    double duration_s)
{
    size_t  i, good = 0;
    double  v[3];

    if (!o->goodput_set || duration_s <= 0.0) {
        return NAN;
    }

    for (i = 0; i < n; i++) {
        if (!reqs[i].success) {
            continue;
        }

        v[0] = reqs[i].ttft_s * 1e3;
        v[1] = reqs[i].output_tokens > 1 ? bench_tpot(&reqs[i]) * 1e3 : 0.0;
        v[2] = reqs[i].latency_s * 1e3;

        if ((isnan(o->goodput_ms[0]) || v[0] <= o->goodput_ms[0])
            && (isnan(o->goodput_ms[1]) || v[1] <= o->goodput_ms[1])
            && (isnan(o->goodput_ms[2]) || v[2] <= o->goodput_ms[2]))
        {
            good++;
        }
    }

    return good / duration_s;
}
