#include "error.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int maml_fail(MamlError *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int maml_fail_at(MamlError *err, SourceLoc loc, const char *fmt, ...) {
    if (!err) return -1;
    int n = 0;
    if (loc.file && loc.line > 0 && loc.column > 0)
        n = snprintf(err->message, sizeof err->message, "%s:%d:%d: ", loc.file, loc.line, loc.column);
    else if (loc.file && loc.line > 0)
        n = snprintf(err->message, sizeof err->message, "%s:%d: ", loc.file, loc.line);
    else if (loc.file)
        n = snprintf(err->message, sizeof err->message, "%s: ", loc.file);
    if (n < 0 || (size_t)n >= sizeof err->message) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message + n, sizeof err->message - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

void *maml_alloc(size_t size, MamlError *err) {
    void *p = malloc(size ? size : 1);
    if (!p) maml_fail(err, "out of memory allocating %zu bytes", size);
    return p;
}

void *maml_calloc(size_t count, size_t size, MamlError *err) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) maml_fail(err, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *maml_realloc(void *ptr, size_t count, size_t size, MamlError *err) {
    if (size && count > SIZE_MAX / size) {
        maml_fail(err, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    size_t bytes = count * size;
    void *p = realloc(ptr, bytes ? bytes : 1);
    if (!p) maml_fail(err, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

char *maml_strdup(const char *s, MamlError *err) {
    size_t n = strlen(s) + 1;
    char *p = maml_alloc(n, err);
    if (p) memcpy(p, s, n);
    return p;
}
