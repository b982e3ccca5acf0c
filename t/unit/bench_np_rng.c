/*
 * kimi-bench's numpy-compatible generator (bench/bench_dataset.c) against
 * draws recorded from numpy 2.4.6:
 *
 *   r = np.random.default_rng(seed)
 *   r.integers(low, high, size=n), call after call on the same r
 *
 * The cases cover a one-word and a two-word seed, spans that take the
 * 32-bit path (numpy hands out both halves of each 64-bit output), a span
 * of one value (no draw), a span of exactly 2^32 and spans over 2^32 (the
 * 64-bit path).  vLLM's random dataset draws this way, so the same --seed
 * gives the same prompts.
 *
 * bench/ is not part of libkimi.a, so the file under test is compiled in.
 */

#include <stdio.h>
#include <string.h>

#include "../../bench/bench_dataset.c"
#include "../../bench/bench_dataset_file.c"   /* Python's random, which bench_dataset.c calls */

#include "tap.h"


typedef struct {
    uint64_t  low, high;
    int       n;
} call_t;


static void
check(uint64_t seed, const call_t *calls, int n_calls, const uint64_t *want,
    int n_want, const char *what)
{
    bench_np_rng_t  r;
    int             k = 0, bad = 0;

    bench_np_rng_seed(&r, seed);

    for (int c = 0; c < n_calls; c++) {
        for (int i = 0; i < calls[c].n; i++, k++) {
            uint64_t  v = bench_np_rng_integers(&r, calls[c].low,
                                                calls[c].high);

            bad += k >= n_want || v != want[k];
        }
    }

    ok(bad == 0 && k == n_want, "seed %llu: %s (%d of %d draws differ)",
       (unsigned long long) seed, what, bad, n_want);
}


int
main(void)
{
    static const call_t    c0[] = { { 0, 163840, 6 } };
    static const uint64_t  w0[] = { 139366, 104359, 83744, 44201, 50434,
                                    6713 };
    static const call_t    c7[] = { { 150, 451, 4 }, { 1, 2, 3 },
                                    { 0, 163840, 4 }, { 0, 163586, 3 } };
    static const uint64_t  w7[] = { 434, 338, 355, 420, 1, 1, 1, 94747,
                                    127088, 136585, 36897, 9084, 49103,
                                    46632 };
    static const call_t    c42[] = { { 0, 20000000000ULL, 3 }, { 5, 6, 2 },
                                     { 0, 4294967296ULL, 2 }, { 0, 100, 4 } };
    static const uint64_t  w42[] = { 15479120971ULL, 8777568795ULL,
                                     17171958398ULL, 5, 5, 369133709,
                                     2995172878ULL, 20, 9, 52, 97 };
    static const call_t    cbig[] = { { 0, 163840, 5 } };
    static const uint64_t  wbig[] = { 142583, 126179, 143500, 18338, 42417 };

    check(0, c0, 1, w0, 6, "the offsets of vLLM's default seed");
    check(7, c7, 4, w7, 14, "lengths, a one-value span, offsets, prefix");
    check(42, c42, 4, w42, 11, "64-bit spans, a 2^32 span, then 32-bit");
    check(4294967303ULL, cbig, 1, wbig, 5, "a seed of two 32-bit words");

    printf("1..%d\n", test_n);
    return test_failed != 0;
}
