/* Pillow 9.4 resizing, transcribed from the behaviour of libImaging's Resample.c (Lanczos) and
 * Geometry.c's ImagingScaleAffine (nearest), down to the order of floating-point operations,
 * because the goal is bit-identical output, not just a good-looking resize. */
#include "resize.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Pillow: PRECISION_BITS = 32 - 8 - 2, leaving headroom for 8-bit pixels times weights > 1. */
#define PRECISION_BITS 22
#define LANCZOS_SUPPORT 3.0

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double lanczos3(double x) {
    if (-LANCZOS_SUPPORT <= x && x < LANCZOS_SUPPORT) return sinc(x) * sinc(x / LANCZOS_SUPPORT);
    return 0.0;
}

/* Pillow stores the box as floats and takes the scale in double: keep both conversions. */
static double axis_scale(int in_size, int out_size) {
    float in0 = 0.0f, in1 = (float)in_size;
    return (double)(in1 - in0) / out_size;
}

/* ImagingScaleAffine: the source position is accumulated (not multiplied) per output pixel. */
static void nearest_table(ResizeAxis *ax) {
    double scale = axis_scale(ax->in_size, ax->out_size);
    double pos = 0.0 + scale * 0.5;
    for (int x = 0; x < ax->out_size; x++) {
        int src = pos < 0.0 ? -1 : (int)pos;
        ax->nearest[x] = src >= 0 && src < ax->in_size ? src : -1; /* -1: Pillow's fill (0) */
        pos += scale;
    }
}

/* precompute_coeffs + normalize_coeffs_8bpc for one output pixel. */
static void lanczos_pixel(ResizeAxis *ax, int xx, double scale, double filterscale, double support,
                          double *w) {
    double center = 0.0 + (xx + 0.5) * scale, ss = 1.0 / filterscale, ww = 0.0;
    int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
    if (xmin < 0) xmin = 0;
    if (xmax > ax->in_size) xmax = ax->in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; x++) {
        w[x] = lanczos3((x + xmin - center + 0.5) * ss);
        ww += w[x];
    }
    int32_t *k = ax->coeffs + (size_t)xx * ax->ksize;
    for (int x = 0; x < ax->ksize; x++) {
        double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
        k[x] =
            (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    ax->bounds[2 * xx] = xmin;
    ax->bounds[2 * xx + 1] = xmax;
}

/* The passes accumulate in int32 as Pillow does; that is safe when 255 times the positive
 * weights of any output pixel (plus the rounding term) stays below 2^31, which holds for Lanczos
 * (about 1.3 * 255 * 2^22 at most) but is checked rather than assumed. */
static bool sums_fit_int32(const ResizeAxis *ax) {
    for (int xx = 0; xx < ax->out_size; xx++) {
        int64_t pos = 1 << (PRECISION_BITS - 1);
        for (int x = 0; x < ax->ksize; x++) {
            int32_t k = ax->coeffs[(size_t)xx * ax->ksize + x];
            if (k > 0) pos += 255 * (int64_t)k;
        }
        if (pos > INT32_MAX) return false;
    }
    return true;
}

static int axis_init(ResizeAxis *ax, int in_size, int out_size, MamlError *err) {
    ax->in_size = in_size;
    ax->out_size = out_size;
    double scale = axis_scale(in_size, out_size);
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = LANCZOS_SUPPORT * filterscale;
    ax->ksize = (int)ceil(support) * 2 + 1;
    ax->bounds = maml_calloc((size_t)out_size * 2, sizeof(int), err);
    ax->coeffs = maml_calloc((size_t)out_size * ax->ksize, sizeof(int32_t), err);
    ax->nearest = maml_calloc((size_t)out_size, sizeof(int), err);
    double *w = maml_calloc((size_t)ax->ksize, sizeof(double), err);
    if (!ax->bounds || !ax->coeffs || !ax->nearest || !w) {
        free(w);
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) lanczos_pixel(ax, xx, scale, filterscale, support, w);
    free(w);
    if (!sums_fit_int32(ax))
        return maml_fail(err, "resize: %d -> %d overflows 32-bit accumulation", in_size, out_size);
    nearest_table(ax);
    return 0;
}

int resize_plan_init(ResizePlan *plan, ResizeFilter filter, int in_w, int in_h, int out_w,
                     int out_h, MamlError *err) {
    memset(plan, 0, sizeof *plan);
    if (in_w <= 0 || in_h <= 0 || out_w <= 0 || out_h <= 0)
        return maml_fail(err, "resize: invalid sizes %dx%d -> %dx%d", in_w, in_h, out_w, out_h);
    if (filter != RESIZE_NEAREST && filter != RESIZE_LANCZOS)
        return maml_fail(err, "resize: unknown filter %d", (int)filter);
    plan->filter = filter;
    plan->in_w = in_w;
    plan->in_h = in_h;
    plan->out_w = out_w;
    plan->out_h = out_h;
    if (axis_init(&plan->horiz, in_w, out_w, err) || axis_init(&plan->vert, in_h, out_h, err)) {
        resize_plan_free(plan);
        return -1;
    }
    return 0;
}

int resize_scratch_size(const ResizePlan *plan) {
    return plan->in_h * plan->out_w;
}

static uint8_t clip8(int32_t v) {
    if (v >= (1 << PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PRECISION_BITS);
}

/* ImagingResampleHorizontal_8bpc over rows of width in_w -> out_w. */
static void pass_horizontal(const ResizeAxis *ax, const uint8_t *in, int rows, uint8_t *out) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = in + (size_t)y * ax->in_size;
        for (int xx = 0; xx < ax->out_size; xx++) {
            const int32_t *k = ax->coeffs + (size_t)xx * ax->ksize;
            int xmin = ax->bounds[2 * xx], n = ax->bounds[2 * xx + 1];
            int32_t ss = 1 << (PRECISION_BITS - 1);
            for (int x = 0; x < n; x++) ss += row[xmin + x] * k[x];
            out[(size_t)y * ax->out_size + xx] = clip8(ss);
        }
    }
}

/* ImagingResampleVertical_8bpc over columns of height in_h -> out_h. */
static void pass_vertical(const ResizeAxis *ax, const uint8_t *in, int cols, uint8_t *out) {
    for (int yy = 0; yy < ax->out_size; yy++) {
        const int32_t *k = ax->coeffs + (size_t)yy * ax->ksize;
        int ymin = ax->bounds[2 * yy], n = ax->bounds[2 * yy + 1];
        for (int x = 0; x < cols; x++) {
            int32_t ss = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < n; y++) ss += in[(size_t)(ymin + y) * cols + x] * k[y];
            out[(size_t)yy * cols + x] = clip8(ss);
        }
    }
}

static void apply_nearest(const ResizePlan *p, const uint8_t *in, uint8_t *out) {
    for (int y = 0; y < p->out_h; y++) {
        int sy = p->vert.nearest[y];
        for (int x = 0; x < p->out_w; x++) {
            int sx = p->horiz.nearest[x];
            out[(size_t)y * p->out_w + x] = sy < 0 || sx < 0 ? 0 : in[(size_t)sy * p->in_w + sx];
        }
    }
}

/* Pillow skips a pass whose axis keeps its size (the box always covers the whole image here). */
static void apply_lanczos(const ResizePlan *p, const uint8_t *in, uint8_t *out, uint8_t *scratch) {
    int need_h = p->out_w != p->in_w, need_v = p->out_h != p->in_h;
    if (need_h && need_v) {
        pass_horizontal(&p->horiz, in, p->in_h, scratch);
        pass_vertical(&p->vert, scratch, p->out_w, out);
    } else if (need_h) {
        pass_horizontal(&p->horiz, in, p->in_h, out);
    } else if (need_v) {
        pass_vertical(&p->vert, in, p->in_w, out);
    } else {
        memcpy(out, in, (size_t)p->in_w * p->in_h);
    }
}

void resize_apply(const ResizePlan *plan, const uint8_t *in, uint8_t *out, uint8_t *scratch) {
    if (plan->filter == RESIZE_NEAREST)
        apply_nearest(plan, in, out);
    else
        apply_lanczos(plan, in, out, scratch);
}

static void axis_free(ResizeAxis *ax) {
    free(ax->bounds);
    free(ax->coeffs);
    free(ax->nearest);
}

void resize_plan_free(ResizePlan *plan) {
    if (!plan) return;
    axis_free(&plan->horiz);
    axis_free(&plan->vert);
    memset(plan, 0, sizeof *plan);
}

const char *resize_filter_name(ResizeFilter filter) {
    return filter == RESIZE_NEAREST ? "nearest" : filter == RESIZE_LANCZOS ? "lanczos" : "unknown";
}
