/* Helpers shared by the Criterion tests. Tests run from the repository root. */
#ifndef MAMLC_TEST_UTIL_H
#define MAMLC_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#endif
