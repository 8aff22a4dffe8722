/* The C convolution templates (conv2d, conv2d_grad_input, conv2d_grad_weight) against the ref
 * interpreter on shapes chosen to reach every path and edge of templates/c/conv2d*.c.tmpl and
 * winograd.c.tmpl (full and short blocks of tiles, lanes in register blocks of 4 and 1): the
 * register-blocked product (lane counts that are not whole vectors or span several register
 * blocks, position counts that leave a short last block, grad_weight's reduction in chunks and its
 * taps in groups), the row paths for few taps (rows shorter than a vector, rows ending in a partial
 * vector, rows wider than one span), grad_input's stride phases (with and without taps), strides
 * 1 to 3, padding 0, 1 and more than KH-1, kernels 1x1 to 3x3 and non-square, spatial 1x1 to
 * 37x35, one to seven images, one to three tasks.
 *
 * f64 must match ref within 1e-12 relative per tensor; f32 within 1e-5, or 3x the float32
 * reference's own error (ref f32 against ref f64) where that is larger: test_codegen's bar. A
 * tensor's error is max|got - want| / max|want|.
 *
 * Compiled kernels are cached in $MAMLC_CACHE, default build/test-cache, like test_codegen. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "graph.h"
#include "ref.h"
#include "tensor.h"

typedef struct {
    int T, N, C, H, W, O, KH, KW, S, P;
} ConvCase;

/* What each case reaches is noted above it (fwd: conv2d, gi: grad_input, gw: grad_weight; "rows"
 * are the few-tap paths, "product" the register-blocked one). Lanes: fwd and gw run along O, gi
 * along C, 8 doubles to a vector and up to 4 vectors to a register block with AVX-512. */
static const ConvCase cases[] = {
    /* everything 1: fwd and gw rows, rows shorter than a vector */
    {1, 1, 1, 1, 1, 1, 1, 1, 1, 0},
    /* the seed's first layer with O = 5: gw rows end in a partial vector */
    {2, 3, 1, 28, 28, 5, 3, 3, 1, 1},
    /* C = 1 with stride 2: the product for all three, O = 17 lanes */
    {1, 2, 1, 29, 29, 17, 3, 3, 2, 1},
    /* 2x2, padding 0: 12 taps, both row paths at their limits */
    {3, 2, 3, 7, 7, 20, 2, 2, 1, 0},
    /* stride 2, padding 0, non-square input, 33 lanes */
    {2, 5, 7, 9, 11, 33, 3, 3, 2, 0},
    /* 1x1 kernel with padding 1 (more than KH-1), 70 lanes: register blocks of 4, 4 and 1 vectors
     */
    {1, 7, 13, 6, 6, 70, 1, 1, 1, 1},
    /* the product at stride 1, 180 steps */
    {2, 4, 20, 14, 14, 24, 3, 3, 1, 1},
    /* 3x3 images, 9 positions per image: blocks across images, a short last block */
    {3, 1, 40, 3, 3, 9, 3, 3, 1, 1},
    /* non-square kernel and input, stride 2 */
    {1, 6, 5, 2, 5, 3, 2, 3, 2, 1},
    /* fwd rows wider than one 32-lane span */
    {1, 2, 2, 37, 35, 6, 3, 3, 1, 1},
    /* gi with 70 lanes (input channels); gw with 630 taps: 4 groups of tap blocks */
    {2, 3, 70, 5, 5, 4, 3, 3, 1, 1},
    /* gw's reduction in two chunks of pixels */
    {1, 3, 2, 16, 16, 70, 3, 3, 1, 1},
    /* Winograd F(2x2, 3x3) for fwd and gi (3x3, stride 1, padding 1, even sizes, >= 32
     * channels): one short block of 36 tiles, non-square, 40 lanes (register blocks of 4 and 1
     * vectors) */
    {2, 3, 32, 8, 6, 40, 3, 3, 1, 1},
    /* Winograd at the seed's 14x14 layer: 245 tiles per task, a short last block */
    {1, 5, 64, 14, 14, 64, 3, 3, 1, 1},
    /* the 5w1s layers' shape: stride 2, padding 1, 64 x 64 */
    {1, 1, 64, 4, 4, 64, 3, 3, 2, 1},
    /* stride above the kernel: gi phases without taps (zeros) */
    {2, 3, 4, 7, 8, 6, 1, 1, 2, 0},
    /* stride 3 */
    {1, 2, 3, 10, 9, 5, 2, 2, 3, 1},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static const char *test_cache(void) {
    const char *env = getenv("MAMLC_CACHE");
    return env && *env ? env : "build/test-cache";
}

static uint64_t lcg_state = 99991;

static double rnd(void) { /* uniform in [-1, 1) */
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static int64_t conv_out(int64_t size, int k, int s, int p) {
    return (size + 2 * p - k) / s + 1;
}

/* One graph with the three kernels of every case as outputs, and random inputs for it. */
static void build_cases(Graph *g, TensorSet *in) {
    MamlError err;
    graph_init(g);
    tensorset_init(in);
    for (int i = 0; i < N_CASES; i++) {
        const ConvCase *c = &cases[i];
        Shape xs = SHAPE(c->T, c->N, c->C, c->H, c->W), ws = SHAPE(c->T, c->O, c->C, c->KH, c->KW);
        Shape ys = SHAPE(c->T, c->N, c->O, conv_out(c->H, c->KH, c->S, c->P),
                         conv_out(c->W, c->KW, c->S, c->P));
        char name[3][32];
        const Shape shapes[3] = {xs, ws, ys};
        int ids[3];
        for (int k = 0; k < 3; k++) {
            snprintf(name[k], sizeof name[k], "case%d_%s", i, (const char *[]){"x", "w", "dy"}[k]);
            ids[k] = g_input(g, name[k], INPUT_DATA, DT_REAL, shapes[k]);
            Tensor *t = tensorset_add(in, name[k], TENSOR_F64, shapes[k], NULL, &err);
            cr_assert(t, "%s", err.message);
            for (int64_t e = 0, n = shape_numel(shapes[k]); e < n; e++) tensor_set(t, e, rnd());
        }
        char out[64];
        snprintf(out, sizeof out, "case%d/conv2d", i);
        graph_add_output(g, out, g_conv2d(g, ids[0], ids[1], c->S, c->P));
        snprintf(out, sizeof out, "case%d/conv2d_grad_input", i);
        graph_add_output(g, out, g_conv2d_grad_input(g, ids[2], ids[1], xs, c->S, c->P));
        snprintf(out, sizeof out, "case%d/conv2d_grad_weight", i);
        graph_add_output(g, out, g_conv2d_grad_weight(g, ids[0], ids[2], ws, c->S, c->P));
    }
    cr_assert_eq(graph_status(g, &err), 0, "%s", err.message);
}

static double max_abs(const Tensor *t) {
    double m = 0;
    for (int64_t k = 0, n = shape_numel(t->shape); k < n; k++) m = fmax(m, fabs(tensor_get(t, k)));
    return m;
}

static double rel_err(const Tensor *got, const Tensor *want) {
    double d = 0, scale = max_abs(want);
    for (int64_t k = 0, n = shape_numel(want->shape); k < n; k++) {
        double a = tensor_get(got, k), b = tensor_get(want, k);
        d = fmax(d, isnan(a) || isnan(b) ? INFINITY : fabs(a - b));
    }
    return d / (scale > 0 ? scale : 1);
}

static void run_cpu(const Graph *g, Precision prec, const TensorSet *in, TensorSet *out) {
    CpuOptions opt = {.cache_dir = test_cache()};
    Backend *b = NULL;
    MamlError err;
    cr_assert_eq(cpu_backend_open(g, prec, &opt, &b, &err), 0, "%s", err.message);
    tensorset_init(out);
    cr_assert_eq(backend_run(b, in, out, &err), 0, "%s", err.message);
    backend_close(b);
}

static void check(Precision prec) {
    Graph g;
    TensorSet in, r64, r32, got;
    MamlError err;
    build_cases(&g, &in);
    tensorset_init(&r64);
    tensorset_init(&r32);
    cr_assert_eq(ref_run(&g, PREC_F64, &in, &r64, &err), 0, "%s", err.message);
    if (prec == PREC_F32)
        cr_assert_eq(ref_run(&g, PREC_F32, &in, &r32, &err), 0, "%s", err.message);
    run_cpu(&g, prec, &in, &got);
    double worst = 0;
    for (int i = 0; i < r64.n; i++) {
        const Tensor *want = &r64.items[i], *t = tensorset_find(&got, want->name);
        cr_assert(t, "output %s missing", want->name);
        double e = rel_err(t, want), bound = 1e-12;
        if (prec == PREC_F32)
            bound = fmax(1e-5, 3 * rel_err(tensorset_find(&r32, want->name), want));
        cr_expect(e <= bound, "%s (%s): relative error %.3g > bound %.3g", want->name,
                  prec == PREC_F32 ? "f32" : "f64", e, bound);
        worst = fmax(worst, e / bound);
    }
    cr_log_info("%d conv kernels in %s: worst error/bound %.3g", r64.n,
                prec == PREC_F32 ? "f32" : "f64", worst);
    tensorset_free(&got);
    tensorset_free(&r32);
    tensorset_free(&r64);
    tensorset_free(&in);
    graph_free(&g);
}

Test(conv_kernels, match_ref_f64) {
    check(PREC_F64);
}

Test(conv_kernels, match_ref_f32) {
    check(PREC_F32);
}

/* Positions whose receptive fields hold equal values get bitwise equal results, so exact ties
 * stay ties (a max-pool over a blank region of an Omniglot image must pick the window's first
 * element as the reference does). A constant input through conv2d and a constant dy through
 * grad_input: all interior pixels of each plane must be identical. With O = 20 the direct kernels
 * run: every position goes through the same operations in the same order, as in the reference.
 * With O = 32 Winograd runs: a tile's four outputs are combined differently, equal up to a few
 * double ulps, which the rounding to float removes (unless a value lies that close to a float
 * rounding boundary: about one in ten million). */
static void check_ties(int64_t O) {
    const int64_t T = 2, N = 3, C = 64, H = 10, W = 10;
    MamlError err;
    Graph g;
    graph_init(&g);
    Shape xs = SHAPE(T, N, C, H, W), ws = SHAPE(T, O, C, 3, 3), ys = SHAPE(T, N, O, H, W);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, xs),
        w = g_input(&g, "w", INPUT_DATA, DT_REAL, ws);
    int dy = g_input(&g, "dy", INPUT_DATA, DT_REAL, ys);
    graph_add_output(&g, "y", g_conv2d(&g, x, w, 1, 1));
    graph_add_output(&g, "dx", g_conv2d_grad_input(&g, dy, w, xs, 1, 1));
    graph_add_output(
        &g, "dx_of_x",
        g_conv2d_grad_input(&g, x, g_input(&g, "w2", INPUT_DATA, DT_REAL, SHAPE(T, C, O, 3, 3)), ys,
                            1, 1));
    cr_assert_eq(graph_status(&g, &err), 0, "%s", err.message);
    TensorSet in, got;
    tensorset_init(&in);
    const char *names[4] = {"x", "w", "dy", "w2"};
    const Shape shapes[4] = {xs, ws, ys, SHAPE(T, C, O, 3, 3)};
    for (int k = 0; k < 4; k++) {
        Tensor *t = tensorset_add(&in, names[k], TENSOR_F64, shapes[k], NULL, &err);
        cr_assert(t, "%s", err.message);
        for (int64_t e = 0, n = shape_numel(shapes[k]); e < n; e++)
            tensor_set(t, e, k == 0 || k == 2 ? 0.75 : rnd());
    }
    run_cpu(&g, PREC_F32, &in, &got);
    const char *outs[3] = {"y", "dx", "dx_of_x"};
    for (int k = 0; k < 3; k++) {
        const Tensor *t = tensorset_find(&got, outs[k]);
        cr_assert(t, "output %s missing", outs[k]);
        int64_t planes = shape_numel(t->shape) / (H * W);
        for (int64_t p = 0; p < planes; p++) {
            double first = tensor_get(t, p * H * W + W + 1);
            for (int64_t i = 1; i < H - 1; i++)
                for (int64_t j = 1; j < W - 1; j++) {
                    double v = tensor_get(t, p * H * W + i * W + j);
                    cr_assert(v == first, "%s plane %lld: pixel (%lld, %lld) = %.9g, (1, 1) = %.9g",
                              outs[k], (long long)p, (long long)i, (long long)j, v, first);
                }
        }
    }
    tensorset_free(&got);
    tensorset_free(&in);
    graph_free(&g);
}

Test(conv_kernels, equal_receptive_fields_give_equal_results_direct) {
    check_ties(20);
}

Test(conv_kernels, equal_receptive_fields_give_equal_results_winograd) {
    check_ties(32);
}

/* The pool templates on planes large enough for pool_scatter's one-pass path (28x28, 17x17 with a
 * row and a column outside every window) and small ones, with ties everywhere (values from
 * {0, 1, 2}): the first maximum of each window in row-major order, as ref picks it. Selections
 * are exact, so results must equal ref's exactly, except where overlapping windows (3x3, stride
 * 2) add two dy into one element: float adds it in float, ref rounds the sum once. */
Test(conv_kernels, pools_match_ref_exactly) {
    static const int planes[3][2] = {{28, 28}, {17, 17}, {7, 6}}; /* H, W */
    static const int windows[2][2] = {{2, 2}, {3, 2}};            /* kernel, stride */
    MamlError err;
    Graph g;
    graph_init(&g);
    TensorSet in;
    tensorset_init(&in);
    for (int p = 0; p < 3; p++)
        for (int w = 0; w < 2; w++) {
            const int H = planes[p][0], W = planes[p][1], K = windows[w][0], S = windows[w][1];
            Shape xs = SHAPE(2, 3, 5, H, W), ys = SHAPE(2, 3, 5, (H - K) / S + 1, (W - K) / S + 1);
            char name[4][48];
            snprintf(name[0], sizeof name[0], "pool%d%d_x", p, w);
            snprintf(name[1], sizeof name[1], "pool%d%d_dy", p, w);
            snprintf(name[2], sizeof name[2], "pool%d%d_z", p, w);
            const Shape shapes[3] = {xs, ys, xs};
            int ids[3];
            for (int k = 0; k < 3; k++) {
                ids[k] = g_input(&g, name[k], INPUT_DATA, DT_REAL, shapes[k]);
                Tensor *t = tensorset_add(&in, name[k], TENSOR_F64, shapes[k], NULL, &err);
                cr_assert(t, "%s", err.message);
                for (int64_t e = 0, n = shape_numel(shapes[k]); e < n; e++)
                    tensor_set(t, e, k == 0 ? floor(1.5 * (rnd() + 1)) : rnd());
            }
            snprintf(name[3], sizeof name[3], "pool%d%d/max_pool2d", p, w);
            graph_add_output(&g, name[3], g_max_pool2d(&g, ids[0], K, S));
            snprintf(name[3], sizeof name[3], "pool%d%d/pool_scatter", p, w);
            graph_add_output(&g, name[3], g_pool_scatter(&g, ids[0], ids[1], K, S));
            snprintf(name[3], sizeof name[3], "pool%d%d/pool_gather", p, w);
            graph_add_output(&g, name[3], g_pool_gather(&g, ids[0], ids[2], K, S));
        }
    cr_assert_eq(graph_status(&g, &err), 0, "%s", err.message);
    for (int f64 = 0; f64 < 2; f64++) {
        Precision prec = f64 ? PREC_F64 : PREC_F32;
        TensorSet want, got;
        tensorset_init(&want);
        cr_assert_eq(ref_run(&g, prec, &in, &want, &err), 0, "%s", err.message);
        run_cpu(&g, prec, &in, &got);
        for (int i = 0; i < want.n; i++) {
            const Tensor *t = tensorset_find(&got, want.items[i].name);
            cr_assert(t, "output %s missing", want.items[i].name);
            const char *name = want.items[i].name;
            double e = rel_err(t, &want.items[i]);
            double bound = !f64 && strstr(name, "1/pool_scatter") ? 1e-7 : 0;
            cr_expect(e <= bound, "%s (%s): relative error %.3g > %.3g", name, f64 ? "f64" : "f32",
                      e, bound);
        }
        tensorset_free(&got);
        tensorset_free(&want);
    }
    tensorset_free(&in);
    graph_free(&g);
}
