/*
 * kimi-bench's copy of Python's random (bench/bench_dataset_file.c), which
 * shuffles and oversamples the file datasets as vLLM does, against values
 * recorded from CPython 3.11.7:
 *
 *   random.seed(s); x = list(range(20)); random.shuffle(x)
 *   random.seed(s); [random.choice(range(7)) for _ in range(10)]
 *   random.seed(s); [random.getrandbits(k) for k in (1, 5, 17, 32)]
 *
 * for s = 0 (vLLM's default), 42 and 2^40 + 7 (a seed of two words);
 * and the same generator as numpy's legacy global one (prefix_repetition),
 * against numpy 2.4.6:
 *
 *   np.random.seed(s); np.random.randint(0, high, size=n).tolist()
 *
 * bench/ is not part of libkimi.a, so the file under test is compiled in.
 */

#include <stdio.h>
#include <string.h>

#include "../../bench/bench_dataset_file.c"

#include "tap.h"


typedef struct {
    uint64_t  seed;
    int       shuffled[20];
    uint32_t  choice[10];
    uint32_t  bits[4];
} case_t;


static void
check(const case_t *c)
{
    static const int   k_bits[4] = { 1, 5, 17, 32 };
    bench_py_random_t  r;
    json_t            *x[20];
    int                bad = 0;

    for (int i = 0; i < 20; i++) {
        x[i] = json_integer(i);
    }
    bench_py_seed(&r, c->seed);
    bench_py_shuffle(&r, x, 20, sizeof(x[0]));
    for (int i = 0; i < 20; i++) {
        bad += json_integer_value(x[i]) != c->shuffled[i];
        json_decref(x[i]);
    }
    ok(bad == 0, "seed %llu: random.shuffle of 20 (%d places differ)",
       (unsigned long long) c->seed, bad);

    bad = 0;
    bench_py_seed(&r, c->seed);
    for (int i = 0; i < 10; i++) {
        bad += bench_py_randbelow(&r, 7) != c->choice[i];
    }
    ok(bad == 0, "seed %llu: random.choice of 7, ten times (%d differ)",
       (unsigned long long) c->seed, bad);

    bad = 0;
    bench_py_seed(&r, c->seed);
    for (int i = 0; i < 4; i++) {
        bad += bench_py_getrandbits(&r, k_bits[i]) != c->bits[i];
    }
    ok(bad == 0, "seed %llu: getrandbits 1, 5, 17, 32 (%d differ)",
       (unsigned long long) c->seed, bad);
}


int
main(void)
{
    static const case_t  cases[] = {
        { 0, { 10, 18, 16, 14, 0, 17, 11, 2, 3, 9, 5, 7, 4, 19, 6, 15, 8, 1,
               13, 12 },
          { 6, 3, 6, 3, 0, 2, 4, 3, 3, 6 }, { 1, 12, 99346, 3823568514u } },
        { 42, { 19, 5, 14, 4, 9, 13, 15, 18, 6, 12, 17, 10, 1, 11, 2, 16, 7,
                8, 0, 3 },
          { 5, 0, 0, 5, 2, 1, 1, 1, 5, 0 }, { 1, 3, 3278, 3184935163u } },
        { 1099511627783ULL, { 17, 0, 10, 3, 1, 2, 9, 12, 7, 13, 5, 11, 14, 6,
                              16, 4, 8, 15, 18, 19 },
          { 4, 5, 6, 5, 4, 5, 3, 2, 4, 1 }, { 1, 23, 106812, 4028389051u } },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        check(&cases[i]);
    }

    {
        static const struct {
            uint32_t  seed, high, n, want[8];
        } np_cases[] = {
            { 5, 163840, 6, { 35683, 18638, 20463, 124605, 121974, 136592 } },
            { 4000000000u, 1000, 6, { 492, 746, 955, 508, 460, 414 } },
            { 0, 2, 8, { 0, 1, 1, 0, 1, 1, 1, 1 } },
        };
        bench_py_random_t  r;

        for (size_t i = 0; i < sizeof(np_cases) / sizeof(np_cases[0]); i++) {
            int  bad = 0;

            bench_np_legacy_seed(&r, np_cases[i].seed);
            for (uint32_t k = 0; k < np_cases[i].n; k++) {
                bad += bench_np_legacy_randint(&r, np_cases[i].high)
                       != np_cases[i].want[k];
            }
            ok(bad == 0, "np.random.seed(%u); randint(0, %u) x %u (%d differ)",
               np_cases[i].seed, np_cases[i].high, np_cases[i].n, bad);
        }
    }

    {
        /* random.random(), as random.choices draws (the sonnet dataset) */
        static const struct {
            uint64_t  seed;
            double    want[3];
        } rnd[] = {
            { 0, { 0.8444218515250481, 0.7579544029403025, 0.420571580830845 } },
            { 12345, { 0.41661987254534116 } },
            { 1099511627779ULL, { 0.21978710637116716 } },
        };
        bench_py_random_t  r;

        for (size_t i = 0; i < sizeof(rnd) / sizeof(rnd[0]); i++) {
            int  bad = 0;

            bench_py_seed(&r, rnd[i].seed);
            for (int k = 0; k < 3 && rnd[i].want[k] != 0.0; k++) {
                bad += bench_py_random(&r) != rnd[i].want[k];
            }
            ok(bad == 0, "seed %llu: random.random() bit for bit (%d differ)",
               (unsigned long long) rnd[i].seed, bad);
        }
    }

    printf("1..%d\n", test_n);
    return test_failed != 0;
}
