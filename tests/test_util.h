/* Helpers shared by the Criterion tests. Tests run from the repository root. */
#ifndef MAMLC_TEST_UTIL_H
#define MAMLC_TEST_UTIL_H

#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* Every directory temp_dir made in this process, with the process that made it: removed with all
 * it holds when that process exits (Criterion runs each test in a process of its own), so a test
 * run leaves nothing in /tmp, also when an assertion ends the test early. A forked child that
 * exits does not remove its parent's. */
static char temp_dirs_made[64][64];
static int n_temp_dirs_made;
static pid_t temp_dirs_owner;

static inline int temp_dir_remove_entry(const char *path, const struct stat *st, int flag,
                                        struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    chmod(path, 0700); /* a directory a test made read-only */
    remove(path);
    return 0;
}

__attribute__((destructor)) static void temp_dirs_remove(void) {
    if (getpid() != temp_dirs_owner) return;
    for (int i = 0; i < n_temp_dirs_made; i++)
        nftw(temp_dirs_made[i], temp_dir_remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Creates a fresh temporary directory and returns its path (static buffer, one per slot); it is
 * removed when the test's process exits. */
static inline const char *temp_dir(int slot) {
    static char bufs[4][64];
    snprintf(bufs[slot & 3], sizeof bufs[0], "/tmp/mamlc-test-XXXXXX");
    const char *d = mkdtemp(bufs[slot & 3]);
    if (d && n_temp_dirs_made < 64) {
        if (getpid() != temp_dirs_owner) n_temp_dirs_made = 0, temp_dirs_owner = getpid();
        snprintf(temp_dirs_made[n_temp_dirs_made++], sizeof temp_dirs_made[0], "%s", d);
    }
    return d;
}

/* Whether the suite runs under AddressSanitizer and UBSan (`make test-asan` sets
 * MAMLC_SANITIZED=1), where the interpreter runs several times slower: the heaviest checks then
 * shrink or are left to the plain run, which makes them in full. */
static inline bool sanitized_run(void) {
    const char *s = getenv("MAMLC_SANITIZED");
    return s && *s && strcmp(s, "0") != 0;
}

/* Reads the file at path into buf (at most size - 1 bytes), NUL-terminated; returns the bytes
 * read, or -1 when it cannot be opened. */
static inline long read_text_file(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
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
