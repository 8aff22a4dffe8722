/* Test graphs of the template primitives (matmul, the convolution family, pooling), shared by the
 * backend tests (test_codegen.c against ref, test_cuda.c in the CUDA emulation). Each result is a
 * graph output, so each primitive gets a kernel of its own. */
#ifndef MAMLC_TEST_GRAPHS_H
#define MAMLC_TEST_GRAPHS_H

#include <stdio.h>

#include "graph.h"

static inline void out_node(Graph *g, const char *name, int node) {
    graph_add_output(g, name, node);
}

/* Every elementwise operation over [2, 3, 4, 5]: inputs x and y, pos (positive: div, log, rsqrt,
 * sqrt), tie_a and tie_b (exact ties for eq when the inputs put small integers in names containing
 * "tie"), and b [2, 1, 4, 1] broadcast. Callers find the inputs again with graph_find_input. */
static inline void add_elementwise_ops(Graph *g) {
    Shape s = SHAPE(2, 3, 4, 5);
    int x = g_input(g, "x", INPUT_DATA, DT_REAL, s), y = g_input(g, "y", INPUT_DATA, DT_REAL, s);
    int pos = g_input(g, "pos", INPUT_DATA, DT_REAL, s);
    int ta = g_input(g, "tie_a", INPUT_DATA, DT_REAL, s),
        tb = g_input(g, "tie_b", INPUT_DATA, DT_REAL, s);
    out_node(g, "add", g_add(g, x, y));
    out_node(g, "sub", g_sub(g, x, y));
    out_node(g, "mul", g_mul(g, x, y));
    out_node(g, "div", g_div(g, x, pos));
    out_node(g, "neg", g_unary(g, OP_NEG, x));
    out_node(g, "exp", g_unary(g, OP_EXP, x));
    out_node(g, "log", g_unary(g, OP_LOG, pos));
    out_node(g, "rsqrt", g_unary(g, OP_RSQRT, pos));
    out_node(g, "sqrt", g_unary(g, OP_SQRT, pos));
    out_node(g, "gt", g_gt(g, x, y));
    out_node(g, "eq", g_eq(g, ta, tb));
    out_node(g, "select", g_select(g, g_gt(g, x, y), x, g_mul(g, x, y)));
    int b = g_input(g, "b", INPUT_DATA, DT_REAL, SHAPE(2, 1, 4, 1));
    out_node(g, "broadcast", g_broadcast(g, b, s));
}

/* The four transpose settings of a batch of `batch` [m, k] x [k, n] products. */
static inline void add_matmul_ops(Graph *g, int64_t batch, int64_t m, int64_t k, int64_t n) {
    int a = g_input(g, "mm_a", INPUT_DATA, DT_REAL, SHAPE(batch, m, k));
    int at = g_input(g, "mm_at", INPUT_DATA, DT_REAL, SHAPE(batch, k, m));
    int b = g_input(g, "mm_b", INPUT_DATA, DT_REAL, SHAPE(batch, k, n));
    int bt = g_input(g, "mm_bt", INPUT_DATA, DT_REAL, SHAPE(batch, n, k));
    out_node(g, "matmul", g_matmul(g, a, b, false, false));
    out_node(g, "matmul_ta", g_matmul(g, at, b, true, false));
    out_node(g, "matmul_tb", g_matmul(g, a, bt, false, true));
    out_node(g, "matmul_tab", g_matmul(g, at, bt, true, true));
}

/* The convolution family at five kernel, stride and padding settings (Winograd's 3x3 stride 1,
 * strided with and without padding, 5x5, 1x1) over 2 tasks of 3 images of c x 9 x 11, with o
 * output channels; names carry `prefix`. */
static inline void add_conv_ops(Graph *g, const char *prefix, int c, int o) {
    static const int cfg[5][3] = {
        {3, 1, 1}, {3, 2, 0}, {3, 2, 1}, {5, 1, 2}, {1, 1, 0}}; /* k, s, p */
    Shape xs = SHAPE(2, 3, c, 9, 11);
    char name[64];
    snprintf(name, sizeof name, "%sconv_x", prefix);
    int x = g_input(g, name, INPUT_DATA, DT_REAL, xs);
    for (int i = 0; i < 5; i++) {
        int k = cfg[i][0], st = cfg[i][1], p = cfg[i][2];
        Shape ws = SHAPE(2, o, c, k, k);
        int64_t ho = (9 + 2 * p - k) / st + 1, wo = (11 + 2 * p - k) / st + 1;
        snprintf(name, sizeof name, "%sconv_w%d", prefix, i);
        int w = g_input(g, name, INPUT_DATA, DT_REAL, ws);
        snprintf(name, sizeof name, "%sconv_dy%d", prefix, i);
        int dy = g_input(g, name, INPUT_DATA, DT_REAL, SHAPE(2, 3, o, ho, wo));
        snprintf(name, sizeof name, "%sconv2d_k%ds%dp%d", prefix, k, st, p);
        out_node(g, name, g_conv2d(g, x, w, st, p));
        snprintf(name, sizeof name, "%sconv2d_grad_input_k%ds%dp%d", prefix, k, st, p);
        out_node(g, name, g_conv2d_grad_input(g, dy, w, xs, st, p));
        snprintf(name, sizeof name, "%sconv2d_grad_weight_k%ds%dp%d", prefix, k, st, p);
        out_node(g, name, g_conv2d_grad_weight(g, x, dy, ws, st, p));
    }
}

/* Max pooling, its scatter (backward) and gather (double backward) at 2x2 stride 2 and at the
 * overlapping 3x3 stride 2; "pool_tie" holds exact ties when the inputs put small integers in
 * names containing "tie". */
static inline void add_pool_ops(Graph *g) {
    static const int cfg[2][2] = {{2, 2}, {3, 2}}; /* kernel, stride */
    int x = g_input(g, "pool_x", INPUT_DATA, DT_REAL, SHAPE(2, 3, 7, 7));
    int t = g_input(g, "pool_tie", INPUT_DATA, DT_REAL, SHAPE(2, 3, 7, 7));
    int dy = g_input(g, "pool_dy", INPUT_DATA, DT_REAL, SHAPE(2, 3, 3, 3));
    for (int i = 0; i < 2; i++) {
        int k = cfg[i][0], s = cfg[i][1];
        char name[64];
        snprintf(name, sizeof name, "max_pool2d_k%d", k);
        out_node(g, name, g_max_pool2d(g, x, k, s));
        snprintf(name, sizeof name, "pool_scatter_k%d", k);
        out_node(g, name, g_pool_scatter(g, x, dy, k, s));
        snprintf(name, sizeof name, "pool_scatter_ties_k%d", k);
        out_node(g, name, g_pool_scatter(g, t, dy, k, s));
        snprintf(name, sizeof name, "pool_gather_k%d", k);
        out_node(g, name, g_pool_gather(g, t, x, k, s));
    }
}

#endif
