/*
 * kimi-bench statistics against numbers computed by hand (and checked
 * with numpy: np.percentile(x, p), np.std(x), the default linear method).
 *
 * bench/ is not part of libkimi.a, so the file under test is compiled in.
 */

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../bench/bench_stats.c"

#include "tap.h"


static int
near(double a, double b)
{
    return fabs(a - b) <= 1e-9 * (fabs(b) > 1.0 ? fabs(b) : 1.0);
}


int
main(void)
{
    double            x4[] = { 4.0, 1.0, 3.0, 2.0 };    /* unsorted */
    double            s4[] = { 1.0, 2.0, 3.0, 4.0 };
    double            one[] = { 0.25 };
    double            pcts[] = { 50.0, 99.0, 25.0, 100.0, 0.0 };
    double            itl_a[] = { 0.1, 0.1, 0.1, 0.1 };
    double            itl_b[] = { 0.3 };
    bench_summary_t   s;
    bench_metrics_t   m;
    bench_req_t       r[3];
    char              word[32];

    /* numpy: np.percentile([1,2,3,4], [50, 99, 25, 100, 0]) */
    ok(near(bench_percentile_sorted(s4, 4, 50.0), 2.5), "p50 of 1..4 is 2.5");
    ok(near(bench_percentile_sorted(s4, 4, 99.0), 3.97),
       "p99 of 1..4 is 3.97 (linear interpolation)");
    ok(near(bench_percentile_sorted(s4, 4, 25.0), 1.75), "p25 is 1.75");
    ok(near(bench_percentile_sorted(s4, 4, 100.0), 4.0), "p100 is the max");
    ok(near(bench_percentile_sorted(s4, 4, 0.0), 1.0), "p0 is the min");
    ok(near(bench_percentile_sorted(one, 1, 99.0), 0.25),
       "a single value is every percentile");
    ok(bench_percentile_sorted(NULL, 0, 99.0) == 0.0,
       "no values give 0, as vLLM's `x or 0`");

    bench_summarize(x4, 4, pcts, 5, &s);
    ok(near(s.mean_ms, 2500.0), "mean in ms");
    ok(near(s.median_ms, 2500.0), "median sorts its input first");
    ok(near(s.std_ms, sqrt(1.25) * 1000.0), "std is numpy's ddof=0");
    ok(near(s.pct_ms[1], 3970.0) && near(s.pct_ms[2], 1750.0),
       "percentiles come back in the order asked");
    ok(x4[0] == 4.0, "summarize leaves its input alone");

    bench_percentile_word(99.0, word, sizeof(word));
    ok(strcmp(word, "99") == 0, "P99 label for 99");
    bench_percentile_word(99.9, word, sizeof(word));
    ok(strcmp(word, "99.9") == 0, "P99.9 label for 99.9");

    /*
     * Three requests.  A: starts at 0, first token at 0.2 s, then four
     * chunks 0.1 s apart (5 tokens), ends at 0.6 s.  B: starts at 1.0,
     * TTFT 0.5, two chunks carrying 9 tokens (the server batched 8 into
     * the second), ends at 1.8.  C: failed.
     */
    memset(r, 0, sizeof(r));
    r[0].success = 1;
    r[0].start_s = 0.0;
    r[0].ttft_s = 0.2;
    r[0].latency_s = 0.6;
    r[0].itl_s = itl_a;
    r[0].n_itl = 4;
    r[0].output_tokens = 5;
    r[0].prompt_len = 100;

    r[1].success = 1;
    r[1].start_s = 1.0;
    r[1].ttft_s = 0.5;
    r[1].latency_s = 0.8;
    r[1].itl_s = itl_b;
    r[1].n_itl = 1;
    r[1].output_tokens = 9;
    r[1].prompt_len = 200;
    r[1].prompt_tokens_server = 210;

    r[2].success = 0;
    r[2].prompt_len = 300;
    r[2].output_tokens = 7;

    ok(near(bench_tpot(&r[0]), 0.1), "TPOT = (E2EL - TTFT) / (tokens - 1)");
    ok(near(bench_tpot(&r[1]), 0.3 / 8.0),
       "TPOT counts tokens, not chunks");
    ok(bench_tpot(&r[2]) < 0.0, "a failed request has no TPOT");

    ok(bench_metrics_compute(r, 3, 2.0, pcts, 5, &m) == 0, "metrics compute");
    ok(m.completed == 2 && m.failed == 1, "completed and failed counted");
    ok(m.total_input == 310, "server prompt_tokens replace the client's");
    ok(m.n_prompt_checked == 1 && m.n_prompt_mismatch == 1,
       "prompt count disagreement noticed");
    ok(m.total_output == 14, "failed requests add no output tokens");
    ok(near(m.request_throughput, 1.0), "request throughput = ok / s");
    ok(near(m.output_throughput, 7.0), "output throughput = tokens / s");
    ok(near(m.total_token_throughput, 162.0), "total token throughput");
    ok(near(m.ttft.mean_ms, 350.0) && near(m.ttft.median_ms, 350.0),
       "TTFT over successful requests only");
    ok(near(m.tpot.mean_ms, (100.0 + 37.5) / 2.0), "mean TPOT");
    ok(near(m.itl.mean_ms, (400.0 + 300.0) / 5.0) && near(m.itl.pct_ms[0],
                                                           100.0),
       "ITL pools every gap of every request");
    ok(near(m.e2el.mean_ms, 700.0), "E2EL mean");

    /* tokens at 0.2 .. 0.6 (5) in bucket 0; 1.5 and 1.8 in bucket 1 */
    ok(m.n_buckets == 3, "ceil(1.8 - 0) + 1 buckets");
    ok(m.max_output_tokens_per_s == 5.0, "peak output tokens per 1-s bucket");
    ok(m.max_concurrent_requests == 1, "no two requests share a second");
    bench_metrics_free(&m);

    /* B starts at 0.5 instead: both active in bucket 0 */
    r[1].start_s = 0.5;
    bench_metrics_compute(r, 3, 2.0, pcts, 5, &m);
    ok(m.max_concurrent_requests == 2, "overlapping requests are concurrent");
    bench_metrics_free(&m);

    r[0].success = r[1].success = 0;
    ok(bench_metrics_compute(r, 3, 2.0, pcts, 5, &m) == 0 && m.completed == 0
       && m.ttft.mean_ms == 0.0 && m.max_output_tokens_per_s == 0.0,
       "all failed: zeros, no crash");
    bench_metrics_free(&m);

    printf("1..%d\n", test_n);

    return test_failed ? 1 : 0;
}
