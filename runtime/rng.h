/* A small seeded pseudo-random generator shared by parameter initialisation and the task
 * sampler: xoshiro256** (Blackman and Vigna, 2018) with its state filled by splitmix64 from a
 * 64-bit seed, as its authors recommend.
 *
 * Every function uses only integer arithmetic and correctly rounded IEEE double operations
 * (+, -, *, /, sqrt) — no libm transcendental functions — so a seed gives the same sequence,
 * bit for bit, on every platform and compiler (rng.c keeps fused multiply-adds out). */
#ifndef MAMLC_RNG_H
#define MAMLC_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} Rng;

/* Seeds the generator; any seed (including 0) gives a valid, distinct stream. */
void rng_seed(Rng *r, uint64_t seed);

/* The next 64 random bits. */
uint64_t rng_next_u64(Rng *r);

/* A double uniform in [0, 1): the top 53 bits of the next output, scaled by 2^-53. */
double rng_uniform(Rng *r);

/* An integer uniform in [0, n), without modulo bias (rejection sampling); 0 when n is 0. */
uint64_t rng_uniform_int(Rng *r, uint64_t n);

/* A standard normal deviate, by Marsaglia's polar method (the second deviate of each pair is
 * discarded, so the state alone determines the stream). */
double rng_normal(Rng *r);

/* Advances the state by 2^128 outputs: calling it k times on copies of one seeded generator
 * gives k non-overlapping streams (for parallel workers). */
void rng_jump(Rng *r);

#endif
