/*
 * Deterministic random numbers for dummy weights and the tiny model.
 *
 * Owns:   splitmix64 streams keyed by (seed, tensor name), so a tensor's
 *         values do not depend on which other tensors a rank loads.
 * Never:  used for anything that needs unpredictability.
 */

#ifndef KIMI_MODEL_RAND_H
#define KIMI_MODEL_RAND_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t  s;
} kimi_rand_t;


static inline uint64_t
kimi_rand_next(kimi_rand_t *r)
{
    uint64_t  z = (r->s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}


static inline void
kimi_rand_init(kimi_rand_t *r, uint64_t seed, const char *name)
{
    uint64_t  h = 1469598103934665603ull;   /* FNV-1a 64 of the name */

    while (*name) {
        h = (h ^ (uint8_t) *name++) * 1099511628211ull;
    }

    r->s = seed ^ h;
    (void) kimi_rand_next(r);
}


/* The value the (k+1)-th kimi_rand_next(r) would return, r unchanged:
 * splitmix64 is a counter, so a stream splits into ranges that threads
 * fill independently and still give the same values. */
static inline uint64_t
kimi_rand_at(const kimi_rand_t *r, uint64_t k)
{
    uint64_t  z = r->s + (k + 1) * 0x9e3779b97f4a7c15ull;

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}


/* uniform in [0, 1) with 53 bits */
static inline double
kimi_rand_unif(kimi_rand_t *r)
{
    return (double) (kimi_rand_next(r) >> 11) * 0x1p-53;
}


/* standard normal (Box-Muller, one value per call: simple, deterministic) */
static inline double
kimi_rand_normal(kimi_rand_t *r)
{
    double  u1 = kimi_rand_unif(r), u2 = kimi_rand_unif(r);

    if (u1 < 1e-300) {
        u1 = 1e-300;
    }

    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

#endif
