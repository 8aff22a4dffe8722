/* Helpers shared by the Criterion tests. Tests run from the repository root. */
#ifndef MAMLC_TEST_UTIL_H
#define MAMLC_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ../shared, or $MAMLC_SHARED when set. */
static inline const char *shared_dir(void) {
    const char *d = getenv("MAMLC_SHARED");
    return d && *d ? d : "../shared";
}

/* Joins shared_dir() and a relative path into a static buffer (one result live at a time per
 * slot; slot 0..3). */
static inline const char *shared_path(int slot, const char *rel) {
    static char bufs[4][1024];
    snprintf(bufs[slot & 3], sizeof bufs[0], "%s/%s", shared_dir(), rel);
    return bufs[slot & 3];
}

/* Creates a fresh temporary directory and returns its path (static buffer, one per slot). */
static inline const char *temp_dir(int slot) {
    static char bufs[4][64];
    snprintf(bufs[slot & 3], sizeof bufs[0], "/tmp/mamlc-test-XXXXXX");
    return mkdtemp(bufs[slot & 3]);
}

/* Writes text to path; returns 0 on success. */
static inline int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* Sets MAMLC_LIBCUDA to the fake CUDA driver beside the test binary (tests/fake_cuda.c, built by
 * the Makefile with the tests); returns 0, or -1 when it is missing. */
static inline int use_fake_cuda_library(void) {
    char exe[1024], lib[1100];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return -1;
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    snprintf(lib, sizeof lib, "%s/libcuda-fake.so", exe);
    if (access(lib, R_OK) != 0) return -1;
    return setenv("MAMLC_LIBCUDA", lib, 1);
}

#endif
