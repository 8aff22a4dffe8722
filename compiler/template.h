/* Kernel templates and the tiny filler that instantiates them.
 *
 * Template files live in templates/ (templates/c/ holds the C renderer's). A file holds named
 * sections, each starting with a line "@@ NAME"; a section's text runs to the next such line.
 * Placeholders are written {{name}} and must all be given when a section is filled. The files are
 * embedded into the binary at build time (build/templates_embedded.c, made by templates/embed.sh);
 * when $MAMLC_TEMPLATES names a directory, files are read from there instead, so templates can be
 * edited without rebuilding. */
#ifndef MAMLC_TEMPLATE_H
#define MAMLC_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* A growable string. Appends that fail set `failed` and leave the content as it was, so callers
 * can append many pieces and check once. */
typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} StrBuf;

void sb_init(StrBuf *sb);
void sb_free(StrBuf *sb);
void sb_append(StrBuf *sb, const char *s, size_t n);
void sb_puts(StrBuf *sb, const char *s);
void sb_printf(StrBuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One embedded template file (generated table, terminated by a NULL path). */
typedef struct {
    const char *path; /* relative to templates/, e.g. "c/loop.c.tmpl" */
    const char *text;
} EmbeddedTemplate;

extern const EmbeddedTemplate mamlc_embedded_templates[];

typedef struct {
    const char *key;
    const char *value;
} TmplVar;

#define TEMPLATE_MAX_FILES 32

/* The template files a renderer uses, loaded once. */
typedef struct {
    char *path[TEMPLATE_MAX_FILES];
    char *text[TEMPLATE_MAX_FILES];
    int n;
    char dir[1024]; /* $MAMLC_TEMPLATES, or "" for the embedded copies */
} Templates;

/* Prepares t (reads nothing yet). */
void templates_init(Templates *t);
void templates_free(Templates *t);

/* Appends section `section` of template file `file`, with its placeholders filled from vars, to
 * out. trim drops the section's trailing newline (for expression templates). */
int template_render(Templates *t, const char *file, const char *section, const TmplVar *vars,
                    int n_vars, bool trim, StrBuf *out, MamlError *err);

/* Fills the placeholders of text[0..len) from vars into out; label names the text in errors. */
int template_fill(const char *text, size_t len, const TmplVar *vars, int n_vars, const char *label,
                  StrBuf *out, MamlError *err);

#endif
