#include "template.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- strings ---- */

void sb_init(StrBuf *sb) {
    memset(sb, 0, sizeof *sb);
}

void sb_free(StrBuf *sb) {
    free(sb->data);
    memset(sb, 0, sizeof *sb);
}

static bool sb_reserve(StrBuf *sb, size_t extra) {
    if (sb->failed) return false;
    if (sb->len + extra + 1 <= sb->cap) return true;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < sb->len + extra + 1) cap *= 2;
    char *d = realloc(sb->data, cap);
    if (!d) {
        sb->failed = true;
        return false;
    }
    sb->data = d;
    sb->cap = cap;
    return true;
}

void sb_append(StrBuf *sb, const char *s, size_t n) {
    if (!sb_reserve(sb, n)) return;
    memcpy(sb->data + sb->len, s, n);
    sb->len += n;
    sb->data[sb->len] = 0;
}

void sb_puts(StrBuf *sb, const char *s) {
    sb_append(sb, s, strlen(s));
}

void sb_printf(StrBuf *sb, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sb->failed = true;
        return;
    }
    if (!sb_reserve(sb, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

/* ---- template files ---- */

void templates_init(Templates *t) {
    memset(t, 0, sizeof *t);
    const char *dir = getenv("MAMLC_TEMPLATES");
    if (dir && *dir) snprintf(t->dir, sizeof t->dir, "%s", dir);
}

void templates_free(Templates *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->path[i]);
        free(t->text[i]);
    }
    t->n = 0;
}

static char *read_text_file(const char *path, MamlError *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        maml_fail(err, "%s: cannot open template: %s", path, strerror(errno));
        return NULL;
    }
    StrBuf sb;
    sb_init(&sb);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) sb_append(&sb, chunk, n);
    bool bad = ferror(f) || sb.failed;
    fclose(f);
    if (bad || !sb.data) {
        sb_free(&sb);
        maml_fail(err, "%s: cannot read template", path);
        return NULL;
    }
    return sb.data;
}

static const char *embedded(const char *file) {
    for (const EmbeddedTemplate *e = mamlc_embedded_templates; e->path; e++)
        if (strcmp(e->path, file) == 0) return e->text;
    return NULL;
}

/* The text of a template file, loaded on first use. */
static const char *template_file(Templates *t, const char *file, MamlError *err) {
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->path[i], file) == 0) return t->text[i];
    if (t->n == TEMPLATE_MAX_FILES) {
        maml_fail(err, "too many template files (at most %d)", TEMPLATE_MAX_FILES);
        return NULL;
    }
    char *text;
    if (t->dir[0]) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", t->dir, file);
        text = read_text_file(path, err);
    } else {
        const char *e = embedded(file);
        if (!e) {
            maml_fail(err, "template file '%s' is not built into this binary", file);
            return NULL;
        }
        text = maml_strdup(e, err);
    }
    char *path = text ? maml_strdup(file, err) : NULL;
    if (!path) {
        free(text);
        return NULL;
    }
    t->path[t->n] = path;
    t->text[t->n++] = text;
    return text;
}

/* Finds "@@ section" at a line start; returns the section's text and its length. */
static const char *find_section(const char *text, const char *section, size_t *len) {
    size_t sl = strlen(section);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, "@@ ", 3) != 0 || strncmp(p + 3, section, sl) != 0) continue;
        const char *q = p + 3 + sl;
        while (*q == ' ' || *q == '\t' || *q == '\r') q++;
        if (*q != '\n' && *q != 0) continue;
        const char *start = *q ? q + 1 : q, *end = start;
        while (*end && strncmp(end, "@@ ", 3) != 0) {
            const char *nl = strchr(end, '\n');
            end = nl ? nl + 1 : end + strlen(end);
        }
        *len = (size_t)(end - start);
        return start;
    }
    return NULL;
}

int template_fill(const char *text, size_t len, const TmplVar *vars, int n_vars, const char *label,
                  StrBuf *out, MamlError *err) {
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *open = NULL;
        for (const char *q = p; q + 1 < end; q++)
            if (q[0] == '{' && q[1] == '{') {
                open = q;
                break;
            }
        if (!open) {
            sb_append(out, p, (size_t)(end - p));
            break;
        }
        sb_append(out, p, (size_t)(open - p));
        const char *close = strstr(open, "}}");
        if (!close || close >= end) return maml_fail(err, "%s: unterminated placeholder", label);
        size_t nl = (size_t)(close - open - 2);
        int found = -1;
        for (int i = 0; i < n_vars && found < 0; i++)
            if (strlen(vars[i].key) == nl && strncmp(vars[i].key, open + 2, nl) == 0) found = i;
        if (found < 0)
            return maml_fail(err, "%s: unknown placeholder {{%.*s}}", label, (int)nl, open + 2);
        sb_puts(out, vars[found].value);
        p = close + 2;
    }
    if (out->failed) return maml_fail(err, "%s: out of memory filling the template", label);
    return 0;
}

int template_render(Templates *t, const char *file, const char *section, const TmplVar *vars,
                    int n_vars, bool trim, StrBuf *out, MamlError *err) {
    const char *text = template_file(t, file, err);
    if (!text) return -1;
    size_t len;
    const char *s = find_section(text, section, &len);
    if (!s) return maml_fail(err, "template %s has no section '%s'", file, section);
    if (trim)
        while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r')) len--;
    char label[256];
    snprintf(label, sizeof label, "template %s, section %s", file, section);
    return template_fill(s, len, vars, n_vars, label, out, err);
}
