/* The monotonic clock, for measuring how long something took (never for dates). */
#ifndef MAMLC_CLOCK_H
#define MAMLC_CLOCK_H

#include <time.h>

/* Milliseconds since an arbitrary fixed point. */
static inline double maml_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/* The same in seconds. */
static inline double maml_now_s(void) {
    return maml_now_ms() * 1e-3;
}

#endif
