#include "error.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Control characters become C escapes (\n, \t, \xNN) so a message stays on one line:
 * messages quote the user's text (YAML keys and values may hold line breaks) and the CLI prints
 * each as one line. An escape that does not fit is left out whole; backslashes are kept as they
 * are, so escaping a message again (one quoted inside another) changes nothing. */
void maml_error_escape(char *dst, size_t size, const char *src) {
    if (size == 0) return;
    size_t n = 0;
    for (; *src; src++) {
        unsigned char ch = (unsigned char)*src;
        char esc[8] = {(char)ch, 0};
        if (ch == '\n')
            memcpy(esc, "\\n", 3);
        else if (ch == '\t')
            memcpy(esc, "\\t", 3);
        else if (ch < 0x20 || ch == 0x7f)
            snprintf(esc, sizeof esc, "\\x%02x", ch);
        size_t len = strlen(esc);
        if (n + len >= size) break;
        memcpy(dst + n, esc, len);
        n += len;
    }
    dst[n] = '\0';
}

/* Formats into a scratch buffer first: arguments may point into err->message itself. */
static void set_message(MamlError *err, const char *prefix, const char *fmt, va_list ap) {
    char raw[MAML_ERROR_MAX];
    int n = snprintf(raw, sizeof raw, "%s", prefix);
    if (n < 0 || (size_t)n >= sizeof raw) n = 0;
    vsnprintf(raw + n, sizeof raw - (size_t)n, fmt, ap);
    maml_error_escape(err->message, sizeof err->message, raw);
}

void maml_error_set(MamlError *err, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    set_message(err, "", fmt, ap);
    va_end(ap);
}

void maml_error_set_at(MamlError *err, SourceLoc loc, const char *fmt, ...) {
    if (!err) return;
    char prefix[MAML_ERROR_MAX] = "";
    if (loc.file && loc.line > 0 && loc.column > 0)
        snprintf(prefix, sizeof prefix, "%s:%d:%d: ", loc.file, loc.line, loc.column);
    else if (loc.file && loc.line > 0)
        snprintf(prefix, sizeof prefix, "%s:%d: ", loc.file, loc.line);
    else if (loc.file)
        snprintf(prefix, sizeof prefix, "%s: ", loc.file);
    va_list ap;
    va_start(ap, fmt);
    set_message(err, prefix, fmt, ap);
    va_end(ap);
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
