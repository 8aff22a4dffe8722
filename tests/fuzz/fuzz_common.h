/* Harness pieces shared by the libFuzzer targets (tests/fuzz/fuzz_*.c) and the regression tests
 * (tests/test_fuzz_regressions.c), so a regression test feeds an input through exactly the steps
 * the fuzzer took: the bytes become a file, a zip wrapped around a PNG, or a list of overrides.
 *
 * Harness failures (cannot create a scratch file) abort: they are not findings, but a fuzzer that
 * silently stopped exercising the code would be worse. */
#ifndef MAMLC_FUZZ_COMMON_H
#define MAMLC_FUZZ_COMMON_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"

/* The CLI accepts at most this many --set options (cli/cli.h, Overrides.items). */
#define FUZZ_MAX_OVERRIDES 64
/* Drawings per Omniglot character folder: a wrapped PNG is stored this many times. */
#define FUZZ_DRAWINGS 20

static char fuzz_dir[64];

static inline int fuzz_remove_entry(const char *path, const struct stat *st, int flag,
                                    struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline void fuzz_remove_scratch(void) {
    if (fuzz_dir[0]) nftw(fuzz_dir, fuzz_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A private scratch directory, on tmpfs when there is one: the targets write a file per input,
 * and tens of thousands of writes a minute should not touch a disk. Removed at exit. */
static inline const char *fuzz_scratch_dir(void) {
    if (fuzz_dir[0]) return fuzz_dir;
    snprintf(fuzz_dir, sizeof fuzz_dir, "/dev/shm/mamlc-fuzz-XXXXXX");
    if (!mkdtemp(fuzz_dir)) {
        snprintf(fuzz_dir, sizeof fuzz_dir, "/tmp/mamlc-fuzz-XXXXXX");
        if (!mkdtemp(fuzz_dir)) abort();
    }
    atexit(fuzz_remove_scratch);
    return fuzz_dir;
}

/* DIR/name in a static buffer (one per slot, 0..3). */
static inline const char *fuzz_path(int slot, const char *name) {
    static char bufs[4][128];
    snprintf(bufs[slot & 3], sizeof bufs[0], "%s/%s", fuzz_scratch_dir(), name);
    return bufs[slot & 3];
}

static inline void fuzz_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) abort();
}

/* With MAMLC_FUZZ_VERBOSE set, prints each input's outcome: how one reads what a reproducer or a
 * seed does (`MAMLC_FUZZ_VERBOSE=1 build-fuzz/fuzz_yaml FILE`). */
static inline void fuzz_report(int rc, const MamlError *err) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("MAMLC_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "fuzz: %s\n", rc ? err->message : "accepted");
}

/* ------------------------------------------------------------------ tiny zip writer -------- */

static inline void fuzz_put16(FILE *f, unsigned v) {
    fputc((int)(v & 0xff), f), fputc((int)(v >> 8 & 0xff), f);
}

static inline void fuzz_put32(FILE *f, uint32_t v) {
    fuzz_put16(f, v & 0xffff), fuzz_put16(f, v >> 16);
}

/* The fields a local header and a central-directory entry share, from "version needed" on. */
static inline void fuzz_zip_common(FILE *f, uint32_t crc, uint32_t n, size_t name_len) {
    fuzz_put16(f, 20);   /* version needed: 2.0 */
    fuzz_put16(f, 0);    /* flags */
    fuzz_put16(f, 0);    /* method: stored, so the PNG bytes reach libpng unchanged */
    fuzz_put16(f, 0);    /* time */
    fuzz_put16(f, 0x21); /* date: 1980-01-01 */
    fuzz_put32(f, crc);
    fuzz_put32(f, n); /* compressed size */
    fuzz_put32(f, n); /* uncompressed size */
    fuzz_put16(f, (unsigned)name_len);
    fuzz_put16(f, 0); /* extra field length */
}

/* Writes a zip of FUZZ_DRAWINGS stored entries DIR/0001_DD.png (DD = 01..20), each holding the
 * same bytes: with DIR = ROOT/Alphabet/characterNN, a valid Omniglot archive of one character
 * whenever the PNG is valid. */
static inline void fuzz_write_png_zip(const char *path, const char *dir, const uint8_t *png,
                                      size_t n) {
    if (n > 0xffffffffu) abort();
    FILE *f = fopen(path, "wb");
    size_t name_size = strlen(dir) + 16;
    char *name = malloc(name_size);
    if (!f || !name) abort();
    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    if (n) crc = (uint32_t)crc32(crc, png, (uInt)n);
    uint32_t offsets[FUZZ_DRAWINGS];
    for (int d = 0; d < FUZZ_DRAWINGS; d++) {
        int len = snprintf(name, name_size, "%s/0001_%02d.png", dir, d + 1);
        offsets[d] = (uint32_t)ftell(f);
        fuzz_put32(f, 0x04034b50);
        fuzz_zip_common(f, crc, (uint32_t)n, (size_t)len);
        fwrite(name, 1, (size_t)len, f);
        if (n) fwrite(png, 1, n, f);
    }
    uint32_t dir_start = (uint32_t)ftell(f);
    for (int d = 0; d < FUZZ_DRAWINGS; d++) {
        int len = snprintf(name, name_size, "%s/0001_%02d.png", dir, d + 1);
        fuzz_put32(f, 0x02014b50);
        fuzz_put16(f, 20); /* version made by */
        fuzz_zip_common(f, crc, (uint32_t)n, (size_t)len);
        fuzz_put16(f, 0); /* comment length */
        fuzz_put16(f, 0); /* disk number */
        fuzz_put16(f, 0); /* internal attributes */
        fuzz_put32(f, 0); /* external attributes */
        fuzz_put32(f, offsets[d]);
        fwrite(name, 1, (size_t)len, f);
    }
    uint32_t dir_size = (uint32_t)ftell(f) - dir_start;
    fuzz_put32(f, 0x06054b50);
    fuzz_put16(f, 0), fuzz_put16(f, 0); /* this disk, directory's disk */
    fuzz_put16(f, FUZZ_DRAWINGS), fuzz_put16(f, FUZZ_DRAWINGS);
    fuzz_put32(f, dir_size);
    fuzz_put32(f, dir_start);
    fuzz_put16(f, 0); /* comment length */
    free(name);
    if (ferror(f) || fclose(f) != 0) abort();
}

/* Recomputes the CRC of every PNG chunk that lies wholly inside p[0..n), so mutated inputs reach
 * libpng's chunk handling and our colour conversions instead of all failing the CRC check. */
static inline void fuzz_fix_png_crcs(uint8_t *p, size_t n) {
    for (size_t at = 8; at + 12 <= n;) {
        uint32_t len = (uint32_t)p[at] << 24 | (uint32_t)p[at + 1] << 16 |
                       (uint32_t)p[at + 2] << 8 | p[at + 3];
        if (len > n - at - 12) break;
        uint32_t crc = (uint32_t)crc32(0L, p + at + 4, len + 4);
        for (int i = 0; i < 4; i++) p[at + 8 + len + (size_t)i] = (uint8_t)(crc >> (24 - 8 * i));
        at += 12 + (size_t)len;
    }
}

/* What fuzz_png_zip does with a PNG input: chunk CRCs fixed, then one character
 * root/Alpha/character01 of 20 copies. */
static inline void fuzz_wrap_png_zip(const char *path, const uint8_t *png, size_t n) {
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy) abort();
    memcpy(copy, png, n);
    fuzz_fix_png_crcs(copy, n);
    fuzz_write_png_zip(path, "root/Alpha/character01", copy, n);
    free(copy);
}

/* Inputs that start with the PNG signature are wrapped into a zip; anything else is the zip. */
static inline int fuzz_is_png(const uint8_t *data, size_t n) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    return n >= 8 && memcmp(data, sig, 8) == 0;
}

/* ------------------------------------------------------------------ --set overrides -------- */

/* The input split at newlines into at most FUZZ_MAX_OVERRIDES strings (like argv, a NUL ends a
 * string early); an empty input is no override at all. *buf owns the text; free it and the
 * returned array. */
static inline const char **fuzz_split_overrides(const uint8_t *data, size_t n, int *count,
                                                char **buf) {
    const char **items = calloc(FUZZ_MAX_OVERRIDES, sizeof *items);
    char *text = malloc(n + 1);
    if (!items || !text) abort();
    if (n) memcpy(text, data, n);
    text[n] = '\0';
    int k = 0;
    for (char *p = text; n && k < FUZZ_MAX_OVERRIDES;) {
        items[k++] = p;
        char *nl = memchr(p, '\n', (size_t)(text + n - p));
        if (!nl) break;
        *nl = '\0';
        p = nl + 1;
    }
    *count = k;
    *buf = text;
    return items;
}

#endif
