/* Error reporting shared by every stage.
 *
 * Functions that can fail return an int status (0 on success, -1 on failure) and fill a
 * caller-owned MamlError with a one-line message. Messages that concern an input carry its
 * location as "file:line:column: " so the CLI can print them unchanged. */
#ifndef MAMLC_ERROR_H
#define MAMLC_ERROR_H

#include <stddef.h>

#define MAML_ERROR_MAX 1024

typedef struct {
    char message[MAML_ERROR_MAX];
} MamlError;

/* A position in an input file; line and column are 1-based, 0 when unknown. */
typedef struct {
    const char *file;
    int line;
    int column;
} SourceLoc;

/* Formats the message into err (printf-style) and returns -1, so callers can write
 * `return maml_fail(err, "...")`. A NULL err is allowed and ignored. Control characters in the
 * result are escaped (maml_error_escape), so the message is one line whatever it quotes.
 *
 * maml_fail and maml_fail_at are macros over maml_error_set and maml_error_set_at so that the -1
 * is in sight where they are used: clang's static analyser (make lint) does not look into variadic
 * functions, and took every `return maml_fail(...)` for one that might return 0, with the
 * out-parameters of a success unset. */
#define maml_fail(...) (maml_error_set(__VA_ARGS__), maml_failure())

/* Like maml_fail, prefixed with "file:line:column: " (parts that are unknown are left out). */
#define maml_fail_at(...) (maml_error_set_at(__VA_ARGS__), maml_failure())

void maml_error_set(MamlError *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void maml_error_set_at(MamlError *err, SourceLoc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The failure status, -1 (a call, so that a maml_fail statement has no unused value). */
static inline int maml_failure(void) {
    return -1;
}

/* Copies src into dst (size bytes, always terminated) with newline, tab and every other control
 * character (below 0x20, and 0x7f) written as the escape \n, \t or \xNN. Text that does not fit
 * is cut before the first character or escape that would not fit whole. */
void maml_error_escape(char *dst, size_t size, const char *src);

/* Allocation helpers that report failure through err instead of aborting. */
void *maml_alloc(size_t size, MamlError *err);
void *maml_calloc(size_t count, size_t size, MamlError *err);
void *maml_realloc(void *ptr, size_t count, size_t size, MamlError *err);
char *maml_strdup(const char *s, MamlError *err);

#endif
