/* Training curves as hand-written SVG (see plot.h). */
#include "plot.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { COL_STEP, COL_LOSS, COL_ACC, COL_VAL_ACC, COL_VAL_LOSS, N_COLS };
static const char *const col_names[N_COLS] = {"step", "meta_loss", "meta_acc", "val_acc",
                                              "val_loss"};

#define MAX_FIELDS 32
#define MAX_POINTS 2000 /* per drawn line: longer series are thinned, the file stays small */

typedef struct {
    int n, cap;
    double *v[N_COLS];
} Log;

static void log_free(Log *l) {
    for (int c = 0; c < N_COLS; c++) free(l->v[c]);
    memset(l, 0, sizeof *l);
}

static int log_grow(Log *l, MamlError *err) {
    if (l->n < l->cap) return 0;
    int cap = l->cap ? 2 * l->cap : 256;
    for (int c = 0; c < N_COLS; c++) {
        double *p = maml_realloc(l->v[c], (size_t)cap, sizeof *p, err);
        if (!p) return -1;
        l->v[c] = p;
    }
    l->cap = cap;
    return 0;
}

/* Splits a line in place at commas (the log has no quoted fields); returns the field count. */
static int split(char *line, char **fields) {
    line[strcspn(line, "\r\n")] = 0;
    int n = 0;
    for (char *p = line; n < MAX_FIELDS;) {
        fields[n++] = p;
        char *c = strchr(p, ',');
        if (!c) break;
        *c = 0;
        p = c + 1;
    }
    return n;
}

/* map[i] = our column of field i, or -1. step and meta_loss must be there. */
static int parse_header(char *line, int *map, const char *path, MamlError *err) {
    char *f[MAX_FIELDS];
    int n = split(line, f);
    bool seen[N_COLS] = {0};
    for (int i = 0; i < MAX_FIELDS; i++) map[i] = -1;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < N_COLS; c++)
            if (strcmp(f[i], col_names[c]) == 0) map[i] = c, seen[c] = true;
    if (!seen[COL_STEP] || !seen[COL_LOSS])
        return maml_fail(err, "%s:1: the header must name the columns 'step' and 'meta_loss'",
                         path);
    return 0;
}

static int parse_row(char *line, const int *map, Log *l, const char *path, int lineno,
                     MamlError *err) {
    char *f[MAX_FIELDS];
    int n = split(line, f);
    if (log_grow(l, err)) return -1;
    for (int c = 0; c < N_COLS; c++) l->v[c][l->n] = NAN;
    for (int i = 0; i < n; i++) {
        if (map[i] < 0 || !*f[i]) continue;
        char *end;
        double v = strtod(f[i], &end);
        if (end == f[i] || *end)
            return maml_fail(err, "%s:%d: column '%s': '%.32s' is not a number", path, lineno,
                             col_names[map[i]], f[i]);
        l->v[map[i]][l->n] = v;
    }
    if (isnan(l->v[COL_STEP][l->n]))
        return maml_fail(err, "%s:%d: the row has no step", path, lineno);
    l->n++;
    return 0;
}

static int read_log(const char *path, Log *l, MamlError *err) {
    FILE *f = fopen(path, "r");
    if (!f) return maml_fail(err, "%s: cannot open: %s", path, strerror(errno));
    char line[4096];
    int map[MAX_FIELDS], lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f))
            rc = maml_fail(err, "%s:%d: line too long", path, lineno);
        else if (lineno == 1)
            rc = parse_header(line, map, path, err);
        else if (line[strspn(line, " \r\n")])
            rc = parse_row(line, map, l, path, lineno, err);
    }
    if (rc == 0 && lineno == 0) rc = maml_fail(err, "%s: empty file", path);
    if (rc == 0 && l->n == 0) rc = maml_fail(err, "%s: no rows to plot yet", path);
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Series                                                                                      */

typedef struct {
    double *x, *y;
    int n;
} Series;

static void series_free(Series *s) {
    free(s->x);
    free(s->y);
    memset(s, 0, sizeof *s);
}

/* The finite (step, value) pairs of a column. */
static int series_of(const Log *l, int col, Series *s, MamlError *err) {
    memset(s, 0, sizeof *s);
    s->x = maml_calloc((size_t)l->n + 1, sizeof *s->x, err);
    s->y = maml_calloc((size_t)l->n + 1, sizeof *s->y, err);
    if (!s->x || !s->y) {
        series_free(s);
        return -1;
    }
    for (int i = 0; i < l->n; i++)
        if (isfinite(l->v[col][i]) && isfinite(l->v[COL_STEP][i]))
            s->x[s->n] = l->v[COL_STEP][i], s->y[s->n++] = l->v[col][i];
    return 0;
}

/* Trailing moving average over a window of about a fortieth of the series (5 points or more). */
static int smooth(const Series *in, Series *out, MamlError *err) {
    memset(out, 0, sizeof *out);
    out->x = maml_calloc((size_t)in->n + 1, sizeof *out->x, err);
    out->y = maml_calloc((size_t)in->n + 1, sizeof *out->y, err);
    if (!out->x || !out->y) {
        series_free(out);
        return -1;
    }
    int w = in->n / 40 > 5 ? in->n / 40 : 5; /* at least 5 points, at most a fifth of them */
    if (w > in->n / 5) w = in->n / 5 > 1 ? in->n / 5 : 1;
    double sum = 0;
    for (int i = 0; i < in->n; i++) {
        sum += in->y[i];
        if (i >= w) sum -= in->y[i - w];
        out->x[i] = in->x[i];
        out->y[i] = sum / (double)(i >= w ? w : i + 1);
    }
    out->n = in->n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Drawing                                                                                     */

#define WIDTH 960
#define PANEL_H 330
#define LEFT 72
#define RIGHT 24
#define TOP 44
#define BOTTOM 48

typedef struct {
    FILE *f;
    double x0, x1, y0, y1; /* data ranges */
    double top;            /* panel's top edge in the SVG */
} Panel;

/* A coordinate far outside the canvas (a value far outside a fixed [0, 1] accuracy axis can
 * overflow to infinity) is held at a finite one: the SVG needs numbers. */
static double on_canvas(double c) {
    return fmin(fmax(c, -1e6), 1e6);
}

static double px(const Panel *p, double x) {
    return on_canvas(LEFT + (x - p->x0) / (p->x1 - p->x0) * (WIDTH - LEFT - RIGHT));
}

static double py(const Panel *p, double y) {
    double h = PANEL_H - TOP - BOTTOM;
    return on_canvas(p->top + TOP + h - (y - p->y0) / (p->y1 - p->y0) * h);
}

/* A round tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks. */
static double nice_step(double range, int target) {
    double raw = range / target, mag = pow(10.0, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

static void axis_ticks(const Panel *p, bool vertical) {
    double lo = vertical ? p->y0 : p->x0, hi = vertical ? p->y1 : p->x1;
    double step = nice_step(hi - lo, vertical ? 5 : 8);
    double bottom = py(p, p->y0), right = px(p, p->x1), first = ceil(lo / step - 1e-9) * step;
    /* an integer counter: v += step leaves v as it is where step is below v's precision (a log
     * with steps near 1e16 drew ticks forever) */
    for (int i = 0; first + i * step <= hi + step * 1e-9; i++) {
        double v = first + i * step, c = vertical ? py(p, v) : px(p, v);
        if (vertical)
            fprintf(p->f,
                    "<line x1='%d' y1='%.1f' x2='%.1f' y2='%.1f' class='grid'/>"
                    "<text x='%d' y='%.1f' class='yt'>%g</text>\n",
                    LEFT, c, right, c, LEFT - 6, c + 4, fabs(v) < step * 1e-6 ? 0.0 : v);
        else
            fprintf(p->f,
                    "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' class='grid'/>"
                    "<text x='%.1f' y='%.1f' class='xt'>%g</text>\n",
                    c, p->top + TOP, c, bottom, c, bottom + 18, v);
    }
}

static void frame(const Panel *p, const char *ylabel) {
    double bottom = py(p, p->y0), right = px(p, p->x1);
    axis_ticks(p, true);
    axis_ticks(p, false);
    fprintf(p->f,
            "<rect x='%d' y='%.1f' width='%.1f' height='%.1f' class='frame'/>\n"
            "<text x='%.1f' y='%.1f' class='xl'>step</text>\n"
            "<text x='18' y='%.1f' class='yl' transform='rotate(-90 18 %.1f)'>%s</text>\n",
            LEFT, p->top + TOP, right - LEFT, bottom - p->top - TOP, (LEFT + right) / 2,
            bottom + 38, (p->top + TOP + bottom) / 2, (p->top + TOP + bottom) / 2, ylabel);
}

/* Draws a series as a polyline, thinned to MAX_POINTS; markers at every point when asked. */
static void draw(const Panel *p, const Series *s, const char *color, double width, double opacity,
                 bool markers) {
    if (s->n == 0) return;
    int stride = s->n > MAX_POINTS ? (s->n + MAX_POINTS - 1) / MAX_POINTS : 1;
    fprintf(p->f, "<polyline fill='none' stroke='%s' stroke-width='%.1f' opacity='%.2f' points='",
            color, width, opacity);
    for (int i = 0; i < s->n; i += stride)
        fprintf(p->f, "%.1f,%.1f ", px(p, s->x[i]), py(p, s->y[i]));
    if ((s->n - 1) % stride)
        fprintf(p->f, "%.1f,%.1f", px(p, s->x[s->n - 1]), py(p, s->y[s->n - 1]));
    fputs("'/>\n", p->f);
    for (int i = 0; markers && i < s->n; i += stride)
        fprintf(p->f, "<circle cx='%.1f' cy='%.1f' r='3' fill='%s'/>\n", px(p, s->x[i]),
                py(p, s->y[i]), color);
}

static void legend(const Panel *p, int slot, const char *color, const char *label) {
    double x = WIDTH - RIGHT - 170, y = p->top + TOP + 16 + 18 * slot;
    fprintf(p->f,
            "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='2.5'/>"
            "<text x='%.1f' y='%.1f' class='lg'>%s</text>\n",
            x, y, x + 22, y, color, x + 28, y + 4, label);
}

/* Makes [lo, hi] a range the axes can divide: [0, 1] when empty (lo > hi: no finite values),
 * within +-1e300 so that its width is a finite double, and widened around a single value by
 * enough to show at that magnitude (near 1e16, +-0.5 would round away). */
static void drawable_range(double *lo, double *hi) {
    if (!(*lo <= *hi)) *lo = 0, *hi = 1;
    *lo = fmax(*lo, -1e300), *hi = fmin(*hi, 1e300);
    if (*hi > *lo) return;
    double d = fmax(0.5, fabs(*lo) * 1e-3);
    *lo -= d, *hi += d;
}

/* The y range of the finite values of up to three series, padded a little. */
static void y_range(const Series *const *s, int n, double *lo, double *hi) {
    *lo = INFINITY, *hi = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int i = 0; i < s[k]->n; i++) {
            if (s[k]->y[i] < *lo) *lo = s[k]->y[i];
            if (s[k]->y[i] > *hi) *hi = s[k]->y[i];
        }
    drawable_range(lo, hi);
    double pad = 0.04 * (*hi - *lo);
    *lo -= pad, *hi += pad;
}

/* One panel: the raw training series, its moving average, and the validation series. */
static int panel(Panel *p, const Log *l, int train_col, int val_col, const char *name,
                 MamlError *err) {
    Series raw, avg, val;
    if (series_of(l, train_col, &raw, err)) return -1;
    if (smooth(&raw, &avg, err) || series_of(l, val_col, &val, err)) {
        series_free(&raw), series_free(&avg);
        return -1;
    }
    const Series *all[] = {&raw, &val};
    y_range(all, 2, &p->y0, &p->y1);
    if (train_col == COL_ACC) p->y0 = 0, p->y1 = 1;
    frame(p, name);
    draw(p, &raw, "#4c78a8", 1.0, 0.35, false);
    draw(p, &avg, "#1f4e8c", 2.2, 1.0, false);
    draw(p, &val, "#e45756", 2.0, 1.0, true);
    char label[64];
    snprintf(label, sizeof label, "meta-train %s", name);
    legend(p, 0, "#1f4e8c", label);
    if (val.n) snprintf(label, sizeof label, "validation %s", name), legend(p, 1, "#e45756", label);
    series_free(&raw), series_free(&avg), series_free(&val);
    return 0;
}

static bool has_values(const Log *l, int col) {
    for (int i = 0; i < l->n; i++)
        if (isfinite(l->v[col][i])) return true;
    return false;
}

static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

static int write_svg(FILE *f, const Log *l, const char *title, MamlError *err) {
    bool acc = has_values(l, COL_ACC);
    int panels = acc ? 2 : 1;
    fprintf(f,
            "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
            "font-family='sans-serif' font-size='12'>\n<style>.grid{stroke:#ddd}"
            ".frame{fill:none;stroke:#333}.yt{text-anchor:end}.xt,.xl,.yl{text-anchor:middle}"
            ".t{font-size:15px;font-weight:bold;text-anchor:middle}</style>\n"
            "<rect width='100%%' height='100%%' fill='white'/>\n<text x='%d' y='24' class='t'>",
            WIDTH, PANEL_H * panels + 10, WIDTH / 2);
    xml_text(f, title);
    fputs("</text>\n", f);
    Panel p = {.f = f, .x0 = INFINITY, .x1 = -INFINITY, .top = 0};
    for (int i = 0; i < l->n; i++)
        if (isfinite(l->v[COL_STEP][i]))
            p.x0 = fmin(p.x0, l->v[COL_STEP][i]), p.x1 = fmax(p.x1, l->v[COL_STEP][i]);
    drawable_range(&p.x0, &p.x1);
    if (panel(&p, l, COL_LOSS, COL_VAL_LOSS, "loss", err)) return -1;
    p.top = PANEL_H;
    if (acc && panel(&p, l, COL_ACC, COL_VAL_ACC, "accuracy", err)) return -1;
    fputs("</svg>\n", f);
    return 0;
}

int plot_log(const char *log_csv, const char *svg_path, const char *title, MamlError *err) {
    Log l = {0};
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", svg_path);
    int rc = read_log(log_csv, &l, err);
    FILE *f = NULL;
    if (rc == 0 && !(f = fopen(tmp, "w")))
        rc = maml_fail(err, "%s: cannot write: %s", svg_path, strerror(errno));
    if (rc == 0) rc = write_svg(f, &l, title, err);
    if (f && (fclose(f) != 0 || (rc == 0 && rename(tmp, svg_path) != 0)) && rc == 0)
        rc = maml_fail(err, "%s: cannot write: %s", svg_path, strerror(errno));
    if (rc && f) remove(tmp);
    log_free(&l);
    return rc;
}
