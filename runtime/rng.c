/* xoshiro256** seeded by splitmix64 (see rng.h). The reference implementations are public
 * domain: https://prng.di.unimi.it/ */
#include "rng.h"

#include <math.h>

/* Fused multiply-adds round differently from a multiply then an add; keep them out so every
 * platform computes the same doubles. GCC contracts nothing in ISO C mode (-std=c11) and does
 * not know this pragma; clang contracts within expressions unless told not to. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

void rng_seed(Rng *r, uint64_t seed) {
    /* splitmix64 never yields four zero words in a row, the one state xoshiro must avoid */
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

uint64_t rng_next_u64(Rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_uniform(Rng *r) {
    return (double)(rng_next_u64(r) >> 11) * 0x1.0p-53;
}

uint64_t rng_uniform_int(Rng *r, uint64_t n) {
    if (n == 0) return 0;
    /* Accept only draws below the largest multiple of n, so every residue is equally likely;
     * (2^64 - n) % n == 2^64 % n is the number of draws to reject. */
    uint64_t reject_below = (0 - n) % n;
    for (;;) {
        uint64_t x = rng_next_u64(r);
        if (x >= reject_below) return x % n;
    }
}

/* Natural logarithm for x in (0, 1) from + - * / only, so rng_normal does not depend on the
 * platform's libm: x = m * 2^e with m in [sqrt(1/2), sqrt(2)), and
 * log(m) = 2 atanh(t) = 2 (t + t^3/3 + t^5/5 + ...), t = (m-1)/(m+1), |t| < 0.172. Twenty terms
 * bring the truncation error below 1e-30, far under double rounding. */
static double portable_log(double x) {
    int e = 0;
    double m = frexp(x, &e); /* exact: only splits the exponent */
    if (m < 0.70710678118654752440) m *= 2.0, e -= 1;
    double t = (m - 1.0) / (m + 1.0), t2 = t * t, sum = 0.0;
    for (int k = 39; k >= 1; k -= 2) sum = sum * t2 + 1.0 / k;
    return 2.0 * t * sum + e * 0.69314718055994530942;
}

double rng_normal(Rng *r) {
    for (;;) {
        double u = 2.0 * rng_uniform(r) - 1.0, v = 2.0 * rng_uniform(r) - 1.0;
        double s = u * u + v * v;
        if (s > 0.0 && s < 1.0) return u * sqrt(-2.0 * portable_log(s) / s);
    }
}

void rng_jump(Rng *r) {
    static const uint64_t jump[] = {0x180ec6d33cfd0abaull, 0xd5a61266f0c9392cull,
                                    0xa9582618e03fc9aaull, 0x39abdc4529b1661cull};
    uint64_t t[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 64; b++) {
            if (jump[i] & (1ull << b))
                for (int k = 0; k < 4; k++) t[k] ^= r->s[k];
            rng_next_u64(r);
        }
    for (int k = 0; k < 4; k++) r->s[k] = t[k];
}
