/* Autodiff against finite differences in float64, first and second order, for every primitive
 * and for the composites MAML is made of (softmax cross-entropy, batch norm, ReLU).
 *
 * Method: a case builds y = op(inputs) from random inputs, the harness forms the scalar
 * L = sum(y * R) with a random input R, and takes g = grad(L, all real inputs including R). The
 * second-order loss is L2 = sum_i sum(g_i * S_i) with random inputs S_i; its gradient
 * grad(L2, same inputs) differentiates the gradient graph, i.e. exercises every rule's rule.
 * Including R makes the second order non-trivial even for linear ops (d L2 / dR is the op
 * applied to S). Both gradients are compared with central differences of L and L2 (five-point
 * stencil, so truncation stays far below the tolerance with a step large enough to keep
 * rounding small). Error measure per tensor: max |analytic - fd| / max |fd| (the denominator
 * floored at 1e-3 of the largest derivative over all tensors, so a tensor whose exact gradient is
 * zero is judged against the scale of the check rather than its own FD noise). */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autodiff.h"
#include "ref.h"
#include "tensor.h"

#define MAX_WRT 8
#define FD_STEP 1e-3
#define FD_TOL 1e-6

typedef enum {
    GEN_NORMAL,   /* uniform in [-1, 1] */
    GEN_POSITIVE, /* uniform in [0.5, 2]: log, sqrt, rsqrt, divisors */
    GEN_DISTINCT, /* a shuffled grid with spacing 0.02: no ties, no argmax change under FD */
    GEN_AWAY0,    /* magnitude in [0.2, 1], random sign: masks stay put under FD */
} Gen;

typedef struct {
    Graph g;
    TensorSet inputs;
    uint64_t rng;
    int wrt[MAX_WRT];
    int n_wrt;
} Case;

/* ---- random inputs ---- */

static double uniform01(Case *c) {
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return (double)((c->rng * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

static void fill_distinct(Case *c, double *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) v[i] = (double)(i - n / 2) * 0.02;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(uniform01(c) * (double)(i + 1));
        double t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static void fill(Case *c, double *v, int64_t n, Gen gen) {
    if (gen == GEN_DISTINCT) {
        fill_distinct(c, v, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        double u = uniform01(c);
        if (gen == GEN_NORMAL)
            v[i] = 2 * u - 1;
        else if (gen == GEN_POSITIVE)
            v[i] = 0.5 + 1.5 * u;
        else
            v[i] = (0.2 + 0.8 * u) * (uniform01(c) < 0.5 ? -1 : 1);
    }
}

static void case_init(Case *c, uint64_t seed) {
    memset(c, 0, sizeof *c);
    graph_init(&c->g);
    tensorset_init(&c->inputs);
    c->rng = seed * 0x9E3779B97F4A7C15ULL + 1;
}

static void case_free(Case *c) {
    graph_free(&c->g);
    tensorset_free(&c->inputs);
}

static Shape shape_of(Case *c, int id) {
    cr_assert(id >= 0 && id < c->g.n_nodes, "graph building failed: %s", c->g.err.message);
    return c->g.nodes[id].shape;
}

/* A real input with random data that is not differentiated (the S_i of the harness). */
static int add_data(Case *c, const char *name, Shape s, Gen gen) {
    MamlError err;
    Tensor *t = tensorset_add(&c->inputs, name, TENSOR_F64, s, NULL, &err);
    cr_assert(t, "%s", err.message);
    fill(c, t->data, shape_numel(s), gen);
    return g_input(&c->g, name, INPUT_DATA, DT_REAL, s);
}

/* A real input with random data that the checks differentiate with respect to. */
static int add_input(Case *c, const char *name, Shape s, Gen gen) {
    cr_assert(c->n_wrt < MAX_WRT);
    int id = add_data(c, name, s, gen);
    c->wrt[c->n_wrt++] = id;
    return id;
}

/* Integer labels in [0, depth). */
static int add_labels(Case *c, const char *name, Shape s, int depth) {
    MamlError err;
    Tensor *t = tensorset_add(&c->inputs, name, TENSOR_I32, s, NULL, &err);
    cr_assert(t, "%s", err.message);
    for (int64_t i = 0; i < shape_numel(s); i++)
        ((int32_t *)t->data)[i] = (int32_t)(uniform01(c) * depth);
    return g_input(&c->g, name, INPUT_DATA, DT_INT, s);
}

/* ---- graph helpers ---- */

static int sum_all(Graph *g, int x) {
    if (x < 0) return -1;
    int rank = g->nodes[x].shape.rank;
    return g_reshape(g, g_reduce(g, OP_REDUCE_SUM, x, (1u << rank) - 1), shape_scalar());
}

static int run(Case *c, TensorSet *out) {
    MamlError err;
    tensorset_init(out);
    int rc = ref_run(&c->g, PREC_F64, &c->inputs, out, &err);
    cr_assert_eq(rc, 0, "ref_run: %s", err.message);
    return rc;
}

static double output_scalar(const TensorSet *out, const char *name) {
    Tensor *t = tensorset_find(out, name);
    cr_assert(t, "missing output %s", name);
    return tensor_get(t, 0);
}

static Tensor *input_tensor(Case *c, int id) {
    Tensor *t = tensorset_find(&c->inputs, c->g.nodes[id].name);
    cr_assert(t && t->dtype == TENSOR_F64);
    return t;
}

/* ---- finite differences ---- */

/* Central five-point differences of the outputs "L" and "L2" with respect to every coordinate of
 * every wrt input: fd1[i], fd2[i] get one array per input (caller frees). */
static void finite_differences(Case *c, double **fd1, double **fd2) {
    static const double offs[4] = {-2, -1, 1, 2}, coef[4] = {1, -8, 8, -1};
    for (int i = 0; i < c->n_wrt; i++) {
        Tensor *t = input_tensor(c, c->wrt[i]);
        double *x = t->data;
        int64_t n = shape_numel(t->shape);
        fd1[i] = calloc((size_t)n, sizeof(double));
        fd2[i] = calloc((size_t)n, sizeof(double));
        for (int64_t k = 0; k < n; k++) {
            double x0 = x[k];
            for (int s = 0; s < 4; s++) {
                x[k] = x0 + offs[s] * FD_STEP;
                TensorSet out;
                run(c, &out);
                fd1[i][k] += coef[s] * output_scalar(&out, "L") / (12 * FD_STEP);
                fd2[i][k] += coef[s] * output_scalar(&out, "L2") / (12 * FD_STEP);
                tensorset_free(&out);
            }
            x[k] = x0;
        }
    }
}

/* The error measure described at the top of the file, over outputs prefix0..prefixN. */
static double rel_error(Case *c, const TensorSet *out, const char *prefix, double **fd) {
    double global = 0, worst = 0;
    for (int i = 0; i < c->n_wrt; i++)
        for (int64_t k = 0; k < shape_numel(shape_of(c, c->wrt[i])); k++)
            global = fmax(global, fabs(fd[i][k]));
    for (int i = 0; i < c->n_wrt; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s%d", prefix, i);
        Tensor *t = tensorset_find(out, name);
        cr_assert(t, "missing output %s", name);
        double diff = 0, scale = 1e-3 * global;
        for (int64_t k = 0; k < shape_numel(t->shape); k++) {
            diff = fmax(diff, fabs(tensor_get(t, k) - fd[i][k]));
            scale = fmax(scale, fabs(fd[i][k]));
        }
        worst = fmax(worst, scale > 0 ? diff / scale : diff);
    }
    return worst;
}

static void add_outputs(Case *c, const char *prefix, const int *nodes) {
    for (int i = 0; i < c->n_wrt; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s%d", prefix, i);
        cr_assert_eq(graph_add_output(&c->g, name, nodes[i]), 0, "%s", c->g.err.message);
    }
}

/* Builds L and L2 around y (see the top of the file), runs the FD, then appends the second-order
 * gradient and checks both orders against the FD. Frees the case. */
static void check_case(Case *c, int y, const char *label) {
    Graph *g = &c->g;
    MamlError err;
    int R = add_input(c, "R", shape_of(c, y), GEN_NORMAL);
    int L = sum_all(g, g_mul(g, y, R));
    int g1[MAX_WRT], g2[MAX_WRT], L2 = -1;
    cr_assert_eq(autodiff_grad(g, L, c->wrt, c->n_wrt, g1, &err), 0, "%s: %s", label, err.message);
    for (int i = 0; i < c->n_wrt; i++) {
        char name[16];
        snprintf(name, sizeof name, "S%d", i);
        int term =
            sum_all(g, g_mul(g, g1[i], add_data(c, name, shape_of(c, c->wrt[i]), GEN_NORMAL)));
        L2 = L2 < 0 ? term : g_add(g, L2, term);
    }
    graph_add_output(g, "L", L);
    graph_add_output(g, "L2", L2);
    cr_assert_eq(graph_status(g, &err), 0, "%s: %s", label, err.message);

    double *fd1[MAX_WRT], *fd2[MAX_WRT];
    finite_differences(c, fd1, fd2);

    cr_assert_eq(autodiff_grad(g, L2, c->wrt, c->n_wrt, g2, &err), 0, "%s: %s", label, err.message);
    add_outputs(c, "g", g1);
    add_outputs(c, "h", g2);
    TensorSet out;
    run(c, &out);
    double e1 = rel_error(c, &out, "g", fd1), e2 = rel_error(c, &out, "h", fd2);
    cr_log_info("%-40s first order %.2e, second order %.2e", label, e1, e2);
    tensorset_free(&out);
    for (int i = 0; i < c->n_wrt; i++) {
        free(fd1[i]);
        free(fd2[i]);
    }
    case_free(c);
    cr_expect_lt(e1, FD_TOL, "%s: first-order relative error %g", label, e1);
    cr_expect_lt(e2, FD_TOL, "%s: second-order relative error %g", label, e2);
}

/* ---- elementwise ---- */

static void check_binary(OpKind op, Gen gen_b, const char *label) {
    Case c;
    case_init(&c, (uint64_t)op + 1);
    int a = add_input(&c, "a", SHAPE(2, 3), GEN_NORMAL);
    int b = add_input(&c, "b", SHAPE(2, 3), gen_b);
    check_case(&c, g_binary(&c.g, op, a, b), label);
}

static void check_unary(OpKind op, Gen gen, const char *label) {
    Case c;
    case_init(&c, (uint64_t)op + 100);
    int x = add_input(&c, "x", SHAPE(2, 3), gen);
    check_case(&c, g_unary(&c.g, op, x), label);
}

Test(fd_elementwise, add) {
    check_binary(OP_ADD, GEN_NORMAL, "add");
}
Test(fd_elementwise, sub) {
    check_binary(OP_SUB, GEN_NORMAL, "sub");
}
Test(fd_elementwise, mul) {
    check_binary(OP_MUL, GEN_NORMAL, "mul");
}
Test(fd_elementwise, div_away_from_zero) {
    check_binary(OP_DIV, GEN_AWAY0, "div");
}
Test(fd_elementwise, neg) {
    check_unary(OP_NEG, GEN_NORMAL, "neg");
}
Test(fd_elementwise, exp) {
    check_unary(OP_EXP, GEN_NORMAL, "exp");
}
Test(fd_elementwise, log_positive) {
    check_unary(OP_LOG, GEN_POSITIVE, "log");
}
Test(fd_elementwise, rsqrt_positive) {
    check_unary(OP_RSQRT, GEN_POSITIVE, "rsqrt");
}
Test(fd_elementwise, sqrt_positive) {
    check_unary(OP_SQRT, GEN_POSITIVE, "sqrt");
}

Test(fd_elementwise, same_input_fans_out_and_cotangents_sum) {
    Case c;
    case_init(&c, 7);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(3, 2), GEN_NORMAL);
    check_case(&c, g_add(g, g_mul(g, x, x), g_mul(g, g_unary(g, OP_EXP, x), x)), "x*x + exp(x)*x");
}

Test(fd_elementwise, select_on_gt_mask) {
    Case c;
    case_init(&c, 8);
    Graph *g = &c.g;
    int m = add_input(&c, "m", SHAPE(2, 4), GEN_AWAY0);
    int a = add_input(&c, "a", SHAPE(2, 4), GEN_NORMAL);
    int b = add_input(&c, "b", SHAPE(2, 4), GEN_NORMAL);
    int y =
        g_select(g, g_gt(g, m, g_const(g, 0, SHAPE(2, 4))), g_mul(g, a, b), g_unary(g, OP_EXP, b));
    check_case(&c, y, "select(gt(m, 0), a*b, exp(b))");
}

Test(fd_elementwise, select_on_eq_mask) {
    Case c;
    case_init(&c, 9);
    Graph *g = &c.g;
    int m = add_input(&c, "m", SHAPE(2, 4), GEN_DISTINCT);
    int a = add_input(&c, "a", SHAPE(2, 4), GEN_NORMAL);
    int at_max = g_eq(g, m, g_broadcast(g, g_reduce(g, OP_REDUCE_MAX, m, 2), SHAPE(2, 4)));
    check_case(&c, g_select(g, at_max, g_mul(g, a, m), a), "select(eq(m, max m), a*m, a)");
}

Test(fd_elementwise, relu_away_from_zero) {
    Case c;
    case_init(&c, 10);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(3, 4), GEN_AWAY0);
    int zero = g_const(g, 0, SHAPE(3, 4));
    int relu = g_select(g, g_gt(g, x, zero), x, zero);
    check_case(&c, g_mul(g, relu, relu), "relu(x)^2");
}

/* ---- reductions and shape ops ---- */

static void check_reduce(OpKind op, uint32_t axes, const char *label) {
    Case c;
    case_init(&c, axes + 20);
    int x = add_input(&c, "x", SHAPE(2, 3, 4), op == OP_REDUCE_MAX ? GEN_DISTINCT : GEN_NORMAL);
    check_case(&c, g_reduce(&c.g, op, x, axes), label);
}

Test(fd_reduce, sum_axis_0) {
    check_reduce(OP_REDUCE_SUM, 1, "reduce_sum {0}");
}
Test(fd_reduce, sum_axes_1_2) {
    check_reduce(OP_REDUCE_SUM, 6, "reduce_sum {1,2}");
}
Test(fd_reduce, sum_axes_0_2) {
    check_reduce(OP_REDUCE_SUM, 5, "reduce_sum {0,2}");
}
Test(fd_reduce, sum_all_axes) {
    check_reduce(OP_REDUCE_SUM, 7, "reduce_sum {0,1,2}");
}
Test(fd_reduce, max_axis_2_no_ties) {
    check_reduce(OP_REDUCE_MAX, 4, "reduce_max {2}");
}
Test(fd_reduce, max_axes_0_2_no_ties) {
    check_reduce(OP_REDUCE_MAX, 5, "reduce_max {0,2}");
}
Test(fd_reduce, max_axis_1_no_ties) {
    check_reduce(OP_REDUCE_MAX, 2, "reduce_max {1}");
}
Test(fd_reduce, max_all_axes_no_ties) {
    check_reduce(OP_REDUCE_MAX, 7, "reduce_max {0,1,2}");
}

Test(fd_reduce, max_of_nonlinear_input) {
    Case c;
    case_init(&c, 30);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 3, 4), GEN_DISTINCT);
    int y = g_reduce(g, OP_REDUCE_MAX, g_mul(g, x, g_unary(g, OP_EXP, x)), 6);
    check_case(&c, y, "reduce_max {1,2} of x*exp(x)");
}

Test(fd_shape, broadcast_one_axis) {
    Case c;
    case_init(&c, 31);
    int x = add_input(&c, "x", SHAPE(2, 1, 3), GEN_NORMAL);
    check_case(&c, g_broadcast(&c.g, x, SHAPE(2, 4, 3)), "broadcast [2,1,3]->[2,4,3]");
}

Test(fd_shape, broadcast_two_axes_of_squared_input) {
    Case c;
    case_init(&c, 32);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(1, 1, 3), GEN_NORMAL);
    check_case(&c, g_broadcast(g, g_mul(g, x, x), SHAPE(2, 4, 3)),
               "broadcast [1,1,3]->[2,4,3] of x^2");
}

Test(fd_shape, reshape) {
    Case c;
    case_init(&c, 33);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 3, 4), GEN_NORMAL);
    check_case(&c, g_reshape(g, g_mul(g, x, x), SHAPE(4, 6)), "reshape [2,3,4]->[4,6] of x^2");
}

Test(fd_shape, reshape_to_vector) {
    Case c;
    case_init(&c, 34);
    int x = add_input(&c, "x", SHAPE(2, 3, 4), GEN_NORMAL);
    check_case(&c, g_reshape(&c.g, x, SHAPE(24)), "reshape [2,3,4]->[24]");
}

Test(fd_shape, permute_rank3) {
    Case c;
    case_init(&c, 35);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 3, 4), GEN_NORMAL);
    check_case(&c, g_permute(g, g_mul(g, x, x), (int[]){2, 0, 1}), "permute {2,0,1} of x^2");
}

Test(fd_shape, permute_rank4) {
    Case c;
    case_init(&c, 36);
    int x = add_input(&c, "x", SHAPE(2, 3, 1, 4), GEN_NORMAL);
    check_case(&c, g_permute(&c.g, x, (int[]){1, 3, 0, 2}), "permute {1,3,0,2}");
}

/* ---- matmul ---- */

/* C = op(A) op(B) with M=3, K=4, N=2 and a batch dimension of 2. */
static void check_matmul(bool ta, bool tb, const char *label) {
    Case c;
    case_init(&c, 40 + 2 * ta + tb);
    Shape sa = ta ? SHAPE(2, 4, 3) : SHAPE(2, 3, 4);
    Shape sb = tb ? SHAPE(2, 2, 4) : SHAPE(2, 4, 2);
    int a = add_input(&c, "a", sa, GEN_NORMAL);
    int b = add_input(&c, "b", sb, GEN_NORMAL);
    check_case(&c, g_matmul(&c.g, a, b, ta, tb), label);
}

Test(fd_matmul, plain_batched) {
    check_matmul(false, false, "matmul A B");
}
Test(fd_matmul, trans_a_batched) {
    check_matmul(true, false, "matmul A^T B");
}
Test(fd_matmul, trans_b_batched) {
    check_matmul(false, true, "matmul A B^T");
}
Test(fd_matmul, trans_both_batched) {
    check_matmul(true, true, "matmul A^T B^T");
}

Test(fd_matmul, same_operand_twice) {
    Case c;
    case_init(&c, 45);
    int a = add_input(&c, "a", SHAPE(3, 4), GEN_NORMAL);
    check_case(&c, g_matmul(&c.g, a, a, false, true), "matmul A A^T (rank 2)");
}

/* ---- convolution ---- */

static void check_conv(Shape xs, Shape ws, int stride, int pad, const char *label) {
    Case c;
    case_init(&c, 50 + (uint64_t)(stride * 10 + pad));
    int x = add_input(&c, "x", xs, GEN_NORMAL);
    int w = add_input(&c, "w", ws, GEN_NORMAL);
    check_case(&c, g_conv2d(&c.g, x, w, stride, pad), label);
}

Test(fd_conv, conv2d_k3_s1_p1) {
    check_conv(SHAPE(2, 2, 2, 5, 4), SHAPE(2, 3, 2, 3, 3), 1, 1, "conv2d k3 s1 p1 5x4");
}
Test(fd_conv, conv2d_k3_s2_p1) {
    check_conv(SHAPE(2, 2, 2, 7, 6), SHAPE(2, 3, 2, 3, 3), 2, 1, "conv2d k3 s2 p1 7x6");
}
Test(fd_conv, conv2d_k2_s2_p0_floor) {
    check_conv(SHAPE(2, 1, 3, 6, 5), SHAPE(2, 2, 3, 2, 2), 2, 0, "conv2d k2 s2 p0 6x5");
}
Test(fd_conv, conv2d_nonsquare_kernel) {
    check_conv(SHAPE(2, 2, 1, 4, 5), SHAPE(2, 2, 1, 3, 2), 1, 1, "conv2d k3x2 s1 p1 4x5");
}

/* conv2d_grad_input(u, w) for x of shape xs; u has conv2d's output shape. */
static void check_conv_grad_input(Shape xs, Shape ws, Shape us, int stride, int pad,
                                  const char *label) {
    Case c;
    case_init(&c, 60 + (uint64_t)(stride * 10 + pad));
    int u = add_input(&c, "u", us, GEN_NORMAL);
    int w = add_input(&c, "w", ws, GEN_NORMAL);
    check_case(&c, g_conv2d_grad_input(&c.g, u, w, xs, stride, pad), label);
}

static void check_conv_grad_weight(Shape xs, Shape ws, Shape us, int stride, int pad,
                                   const char *label) {
    Case c;
    case_init(&c, 70 + (uint64_t)(stride * 10 + pad));
    int x = add_input(&c, "x", xs, GEN_NORMAL);
    int u = add_input(&c, "u", us, GEN_NORMAL);
    check_case(&c, g_conv2d_grad_weight(&c.g, x, u, ws, stride, pad), label);
}

Test(fd_conv, conv2d_grad_input_k3_s1_p1) {
    check_conv_grad_input(SHAPE(2, 2, 2, 5, 4), SHAPE(2, 3, 2, 3, 3), SHAPE(2, 2, 3, 5, 4), 1, 1,
                          "conv2d_grad_input k3 s1 p1");
}
Test(fd_conv, conv2d_grad_input_k3_s2_p1) {
    check_conv_grad_input(SHAPE(2, 1, 2, 7, 6), SHAPE(2, 3, 2, 3, 3), SHAPE(2, 1, 3, 4, 3), 2, 1,
                          "conv2d_grad_input k3 s2 p1");
}
Test(fd_conv, conv2d_grad_input_k2_s2_p0) {
    check_conv_grad_input(SHAPE(2, 1, 3, 6, 5), SHAPE(2, 2, 3, 2, 2), SHAPE(2, 1, 2, 3, 2), 2, 0,
                          "conv2d_grad_input k2 s2 p0");
}
Test(fd_conv, conv2d_grad_weight_k3_s1_p1) {
    check_conv_grad_weight(SHAPE(2, 2, 2, 5, 4), SHAPE(2, 3, 2, 3, 3), SHAPE(2, 2, 3, 5, 4), 1, 1,
                           "conv2d_grad_weight k3 s1 p1");
}
Test(fd_conv, conv2d_grad_weight_k3_s2_p1) {
    check_conv_grad_weight(SHAPE(2, 1, 2, 7, 6), SHAPE(2, 3, 2, 3, 3), SHAPE(2, 1, 3, 4, 3), 2, 1,
                           "conv2d_grad_weight k3 s2 p1");
}
Test(fd_conv, conv2d_grad_weight_k2_s2_p0) {
    check_conv_grad_weight(SHAPE(2, 1, 3, 6, 5), SHAPE(2, 2, 3, 2, 2), SHAPE(2, 1, 2, 3, 2), 2, 0,
                           "conv2d_grad_weight k2 s2 p0");
}

Test(fd_conv, conv2d_of_squared_input_and_weight) {
    Case c;
    case_init(&c, 80);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 1, 2, 4, 4), GEN_NORMAL);
    int w = add_input(&c, "w", SHAPE(2, 2, 2, 3, 3), GEN_NORMAL);
    check_case(&c, g_conv2d(g, g_mul(g, x, x), g_mul(g, w, w), 1, 1), "conv2d(x^2, w^2) k3 s1 p1");
}

/* ---- pooling ---- */

Test(fd_pool, max_pool2d_k2_s2_odd_size_no_ties) {
    Case c;
    case_init(&c, 90);
    int x = add_input(&c, "x", SHAPE(2, 1, 2, 7, 7), GEN_DISTINCT);
    check_case(&c, g_max_pool2d(&c.g, x, 2, 2), "max_pool2d k2 s2 7x7->3x3");
}

Test(fd_pool, max_pool2d_overlapping_windows) {
    Case c;
    case_init(&c, 91);
    int x = add_input(&c, "x", SHAPE(2, 2, 7, 6), GEN_DISTINCT);
    check_case(&c, g_max_pool2d(&c.g, x, 3, 2), "max_pool2d k3 s2 7x6->3x2");
}

Test(fd_pool, max_pool2d_of_nonlinear_input) {
    Case c;
    case_init(&c, 92);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 1, 7, 5), GEN_DISTINCT);
    check_case(&c, g_max_pool2d(g, g_mul(g, x, g_unary(g, OP_EXP, x)), 2, 2),
               "max_pool2d of x*exp(x)");
}

Test(fd_pool, pool_scatter) {
    Case c;
    case_init(&c, 93);
    int x = add_input(&c, "x", SHAPE(2, 2, 7, 7), GEN_DISTINCT);
    int d = add_input(&c, "d", SHAPE(2, 2, 3, 3), GEN_NORMAL);
    check_case(&c, g_pool_scatter(&c.g, x, d, 2, 2), "pool_scatter k2 s2");
}

Test(fd_pool, pool_gather) {
    Case c;
    case_init(&c, 94);
    int x = add_input(&c, "x", SHAPE(2, 2, 7, 7), GEN_DISTINCT);
    int z = add_input(&c, "z", SHAPE(2, 2, 7, 7), GEN_NORMAL);
    check_case(&c, g_pool_gather(&c.g, x, z, 2, 2), "pool_gather k2 s2");
}

/* ---- composites ---- */

/* Per-example softmax cross-entropy of logits [T, N, K]: [T, N, 1]. The max shift goes through
 * stop_grad, as the loss is invariant to it. */
static int softmax_xent(Graph *g, int z, int labels, int depth) {
    if (z < 0) return -1;
    Shape s = g->nodes[z].shape;
    uint32_t last = 1u << (s.rank - 1);
    int m = g_stop_grad(g, g_reduce(g, OP_REDUCE_MAX, z, last));
    int shifted = g_sub(g, z, g_broadcast(g, m, s));
    int lse = g_unary(g, OP_LOG, g_reduce(g, OP_REDUCE_SUM, g_unary(g, OP_EXP, shifted), last));
    int logp = g_sub(g, shifted, g_broadcast(g, lse, s));
    int picked = g_reduce(g, OP_REDUCE_SUM, g_mul(g, g_one_hot(g, labels, depth), logp), last);
    return g_unary(g, OP_NEG, picked);
}

/* Training-mode batch norm of x [T,N,C,H,W] over {N, H, W} with per-task scale and shift
 * [T,1,C,1,1]. */
static int batch_norm(Graph *g, int x, int scale, int shift) {
    if (x < 0) return -1;
    Shape s = g->nodes[x].shape;
    uint32_t axes = (1u << 1) | (1u << 3) | (1u << 4);
    double count = (double)(s.dims[1] * s.dims[3] * s.dims[4]);
    int mean = g_scale(g, g_reduce(g, OP_REDUCE_SUM, x, axes), 1 / count);
    int xc = g_sub(g, x, g_broadcast(g, mean, s));
    int var = g_scale(g, g_reduce(g, OP_REDUCE_SUM, g_mul(g, xc, xc), axes), 1 / count);
    int inv = g_unary(g, OP_RSQRT, g_add_scalar(g, var, 1e-5));
    int xhat = g_mul(g, xc, g_broadcast(g, inv, s));
    return g_add(g, g_mul(g, xhat, g_broadcast(g, scale, s)), g_broadcast(g, shift, s));
}

Test(fd_composite, softmax_cross_entropy) {
    Case c;
    case_init(&c, 100);
    int z = add_input(&c, "z", SHAPE(2, 3, 4), GEN_NORMAL);
    int labels = add_labels(&c, "labels", SHAPE(2, 3), 4);
    check_case(&c, softmax_xent(&c.g, z, labels, 4), "softmax cross-entropy [2,3,4]");
}

static void check_batch_norm(Shape xs, const char *label) {
    Case c;
    case_init(&c, 110 + (uint64_t)xs.dims[1]);
    Shape ps = SHAPE(xs.dims[0], 1, xs.dims[2], 1, 1);
    int x = add_input(&c, "x", xs, GEN_NORMAL);
    int scale = add_input(&c, "scale", ps, GEN_NORMAL);
    int shift = add_input(&c, "shift", ps, GEN_NORMAL);
    check_case(&c, batch_norm(&c.g, x, scale, shift), label);
}

Test(fd_composite, batch_norm_N1_H2_W2) {
    check_batch_norm(SHAPE(2, 1, 2, 2, 2), "batch norm N=1 H=W=2");
}
Test(fd_composite, batch_norm_N2_H1_W1) {
    check_batch_norm(SHAPE(2, 2, 3, 1, 1), "batch norm N=2 H=W=1");
}
Test(fd_composite, batch_norm_N2_H2_W3) {
    check_batch_norm(SHAPE(2, 2, 2, 2, 3), "batch norm N=2 H=2 W=3");
}

/* conv -> batch norm -> max pool -> linear -> cross-entropy: the seed model's chain in small. */
Test(fd_composite, tiny_conv_net_loss) {
    Case c;
    case_init(&c, 120);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 2, 1, 4, 4), GEN_NORMAL);
    int w = add_input(&c, "w", SHAPE(2, 2, 1, 3, 3), GEN_NORMAL);
    int scale = add_input(&c, "scale", SHAPE(2, 1, 2, 1, 1), GEN_POSITIVE);
    int shift = add_input(&c, "shift", SHAPE(2, 1, 2, 1, 1), GEN_NORMAL);
    int fc = add_input(&c, "fc", SHAPE(2, 8, 3), GEN_NORMAL);
    int labels = add_labels(&c, "labels", SHAPE(2, 2), 3);
    int h = g_max_pool2d(g, batch_norm(g, g_conv2d(g, x, w, 1, 1), scale, shift), 2, 2);
    int logits = g_matmul(g, g_reshape(g, h, SHAPE(2, 2, 8)), fc, false, false);
    check_case(&c, softmax_xent(g, logits, labels, 3), "conv-bn-pool-linear-xent");
}

/* ---- structure ---- */

static bool is_zero_const(const Graph *g, int id, Shape s) {
    return id >= 0 && g->nodes[id].op == OP_CONST && g->nodes[id].attr.value == 0 &&
           shape_equal(g->nodes[id].shape, s);
}

Test(autodiff, gradient_graph_is_plain_primitives_and_differentiable_again) {
    Case c;
    case_init(&c, 130);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 1, 1, 4, 4), GEN_NORMAL);
    int w = add_input(&c, "w", SHAPE(2, 2, 1, 3, 3), GEN_NORMAL);
    int y = g_max_pool2d(g, g_unary(g, OP_EXP, g_conv2d(g, x, w, 1, 1)), 2, 2);
    int loss = sum_all(g, g_unary(g, OP_RSQRT, g_add_scalar(g, g_mul(g, y, y), 1)));
    g->origin = "model";
    int first = g->n_nodes, g1[2], g2[2];
    MamlError err;
    cr_assert_eq(autodiff_grad(g, loss, c.wrt, 2, g1, &err), 0, "%s", err.message);
    int second = g->n_nodes;
    int loss2 = g_add(g, sum_all(g, g1[0]), sum_all(g, g1[1]));
    int third = g->n_nodes;
    cr_assert_eq(autodiff_grad(g, loss2, c.wrt, 2, g2, &err), 0, "%s", err.message);
    cr_assert_str_eq(g->origin, "model", "origin must be restored");
    for (int i = first; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (i >= second && i < third) continue; /* loss2, built by the test */
        cr_assert(n->op > OP_INPUT && n->op < OP_COUNT, "node %d: op %d", i, n->op);
        cr_assert_eq(n->n_in, op_info[n->op].n_in, "node %d (%s)", i, op_info[n->op].name);
        for (int k = 0; k < n->n_in; k++) cr_assert(n->in[k] >= 0 && n->in[k] < i);
        cr_assert_str_eq(n->origin, "grad", "node %d (%s)", i, op_info[n->op].name);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert(shape_equal(g->nodes[g1[i]].shape, g->nodes[c.wrt[i]].shape));
        cr_assert(shape_equal(g->nodes[g2[i]].shape, g->nodes[c.wrt[i]].shape));
    }
    case_free(&c);
}

Test(autodiff, independent_or_blocked_paths_give_zero_constants) {
    Case c;
    case_init(&c, 131);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(2, 3), GEN_NORMAL);
    int a = add_input(&c, "a", SHAPE(2, 3), GEN_NORMAL);
    int m = add_input(&c, "m", SHAPE(2, 3), GEN_NORMAL);
    int later = add_input(&c, "later", SHAPE(3, 2), GEN_NORMAL);
    /* y depends on x only through stop_grad, on m only through a mask, not on later at all */
    int y = g_select(g, g_gt(g, m, a), g_mul(g, a, g_stop_grad(g, x)), a);
    int loss = sum_all(g, y);
    g_mul(g, later, later);
    int wrt[4] = {x, m, later, a}, out[4];
    MamlError err;
    cr_assert_eq(autodiff_grad(g, loss, wrt, 4, out, &err), 0, "%s", err.message);
    for (int i = 0; i < 3; i++)
        cr_assert(is_zero_const(g, out[i], g->nodes[wrt[i]].shape), "wrt %d not a zero constant",
                  i);
    cr_assert(!is_zero_const(g, out[3], SHAPE(2, 3)));
    case_free(&c);
}

Test(autodiff, gradient_wrt_y_itself_is_the_cotangent) {
    Graph g;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(2));
    int y = g_unary(&g, OP_EXP, x);
    int dy = g_input(&g, "dy", INPUT_DATA, DT_REAL, SHAPE(2));
    int out;
    MamlError err;
    cr_assert_eq(autodiff_vjp(&g, y, dy, &y, 1, &out, &err), 0, "%s", err.message);
    cr_assert_eq(out, dy);
    graph_free(&g);
}

/* With wrt = {x, h} where h = x*x and y = h*x: dy/dh = x, and dy/dx is the total 3x^2. */
Test(autodiff, nested_wrt_nodes_get_total_derivatives) {
    Case c;
    case_init(&c, 132);
    Graph *g = &c.g;
    int x = add_input(&c, "x", SHAPE(4), GEN_NORMAL);
    int h = g_mul(g, x, x);
    int y = sum_all(g, g_mul(g, h, x));
    int wrt[2] = {x, h}, out[2];
    MamlError err;
    cr_assert_eq(autodiff_grad(g, y, wrt, 2, out, &err), 0, "%s", err.message);
    graph_add_output(g, "dx", out[0]);
    graph_add_output(g, "dh", out[1]);
    TensorSet res;
    run(&c, &res);
    Tensor *xt = input_tensor(&c, x), *dx = tensorset_find(&res, "dx"),
           *dh = tensorset_find(&res, "dh");
    for (int i = 0; i < 4; i++) {
        double v = tensor_get(xt, i);
        cr_assert_float_eq(tensor_get(dx, i), 3 * v * v, 1e-14);
        cr_assert_float_eq(tensor_get(dh, i), v, 1e-14);
    }
    tensorset_free(&res);
    case_free(&c);
}

Test(autodiff, bad_arguments_are_reported) {
    Graph g;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(2, 3));
    int labels = g_input(&g, "labels", INPUT_DATA, DT_INT, SHAPE(2));
    int y = g_unary(&g, OP_EXP, x);
    int dy = g_const(&g, 1, SHAPE(3, 2));
    int out;
    MamlError err;
    cr_assert_eq(autodiff_vjp(&g, y, dy, &x, 1, &out, &err), -1);
    cr_assert(strstr(err.message, "[3, 2]") && strstr(err.message, "[2, 3]"), "%s", err.message);
    cr_assert_eq(autodiff_grad(&g, y, &x, 1, &out, &err), -1);
    cr_assert(strstr(err.message, "one element"), "%s", err.message);
    int loss = sum_all(&g, y);
    cr_assert_eq(autodiff_grad(&g, loss, &labels, 1, &out, &err), -1);
    cr_assert(strstr(err.message, "not real"), "%s", err.message);
    cr_assert_eq(graph_status(&g, &err), 0, "argument errors must not poison the graph");
    graph_free(&g);
}
