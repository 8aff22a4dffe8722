/* The optimizing passes: each rule on a tiny hand-made graph (the rewritten structure, and the
 * values against the reference interpreter), the verifier, and every shipped graph's training
 * step and evaluation graphs run before and after optimization in float64 on random weights and
 * tasks: every output must agree to 1e-12 of its largest magnitude. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "maml.h"
#include "params.h"
#include "passes.h"
#include "ref.h"
#include "rng.h"
#include "spec.h"
#include "tensor.h"

#define REL_TOL 1e-12

/* ---- helpers ---- */

static int count_op(const Graph *g, OpKind op) {
    int c = 0;
    for (int i = 0; i < g->n_nodes; i++) c += g->nodes[i].op == op;
    return c;
}

static const Node *output_node(const Graph *g, const char *name) {
    int o = graph_find_output(g, name);
    cr_assert(o >= 0, "output '%s' missing", name);
    return &g->nodes[g->outputs[o].node];
}

static void optimize_with(const Graph *g, Graph *out, const PassOptions *opt, PassReport *r) {
    MamlError err;
    cr_assert_eq(passes_optimize_with(g, out, opt, r, &err), 0, "%s", err.message);
    cr_assert_eq(graph_check(out, &err), 0, "optimized graph fails the check: %s", err.message);
}

static void optimize(const Graph *g, Graph *out, PassReport *r) {
    PassOptions o = passes_default_options();
    optimize_with(g, out, &o, r);
}

static double uniform(Rng *r, double lo, double hi) {
    return lo + (hi - lo) * rng_uniform(r);
}

/* Labels of one task: i % n_way for each example, shuffled. */
static void fill_labels(Rng *r, Tensor *t, int n_way) {
    int64_t tasks = t->shape.dims[0], per = t->shape.dims[1];
    for (int64_t k = 0; k < tasks; k++) {
        int64_t *v = malloc((size_t)per * sizeof *v);
        cr_assert(v);
        for (int64_t i = 0; i < per; i++) v[i] = i % n_way;
        for (int64_t i = per - 1; i > 0; i--) {
            int64_t j = (int64_t)rng_uniform_int(r, (uint64_t)(i + 1)), s = v[i];
            v[i] = v[j], v[j] = s;
        }
        for (int64_t i = 0; i < per; i++) tensor_set(t, k * per + i, (double)v[i]);
        free(v);
    }
}

/* A value range per input, by what the input is. */
static void value_range(const Node *n, bool regression, double *lo, double *hi) {
    *lo = -1, *hi = 1;
    if (n->input_kind == INPUT_DATA && strstr(n->name, "_x")) *lo = regression ? -5 : 0;
    if (n->input_kind == INPUT_DATA && strstr(n->name, "_x")) *hi = regression ? 5 : 1;
    if (n->input_kind == INPUT_DATA && strstr(n->name, "_y")) *lo = -3, *hi = 3;
    if (!strncmp(n->name, "adam/m/", 7)) *lo = -1e-3, *hi = 1e-3;
    if (!strncmp(n->name, "adam/v/", 7)) *lo = 1e-8, *hi = 1e-6;
    if (!strcmp(n->name, "adam/step")) *lo = *hi = 3;
    if (!strncmp(n->name, "inner_lr.", 9)) *lo = *hi = 0.1;
}

/* Adds a tensor for every INPUT of g that inputs lacks: integer labels as a shuffled i % n_way
 * per task, everything else uniform in its range. */
static void fill_inputs(const Graph *g, int n_way, bool regression, uint64_t seed,
                        TensorSet *inputs) {
    Rng r;
    rng_seed(&r, seed);
    MamlError err;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = &g->nodes[i];
        if (n->op != OP_INPUT || tensorset_find(inputs, n->name)) continue;
        TensorDType dt = n->dtype == DT_INT ? TENSOR_I64 : TENSOR_F64;
        Tensor *t = tensorset_add(inputs, n->name, dt, n->shape, NULL, &err);
        cr_assert(t, "%s", err.message);
        if (n->dtype == DT_INT) {
            fill_labels(&r, t, n_way);
            continue;
        }
        double lo, hi;
        value_range(n, regression, &lo, &hi);
        for (int64_t k = 0, c = shape_numel(n->shape); k < c; k++)
            tensor_set(t, k, uniform(&r, lo, hi));
    }
}

static double max_abs(const Tensor *t) {
    double m = 0;
    for (int64_t k = 0, c = shape_numel(t->shape); k < c; k++) m = fmax(m, fabs(tensor_get(t, k)));
    return m;
}

/* Runs a and b on the same inputs in float64; returns the worst over outputs of
 * max |a - b| / max(max |a|, floor) (absolute where that is 0). */
static double run_and_compare(const Graph *a, const Graph *b, const TensorSet *inputs, double floor,
                              const char *label) {
    TensorSet ra, rb;
    tensorset_init(&ra);
    tensorset_init(&rb);
    MamlError err;
    cr_assert_eq(ref_run(a, PREC_F64, inputs, &ra, &err), 0, "%s: %s", label, err.message);
    cr_assert_eq(ref_run(b, PREC_F64, inputs, &rb, &err), 0, "%s (optimized): %s", label,
                 err.message);
    cr_assert_eq(ra.n, rb.n, "%s: %d outputs before, %d after", label, ra.n, rb.n);
    double worst = 0;
    for (int i = 0; i < ra.n; i++) {
        const Tensor *x = &ra.items[i], *y = tensorset_find(&rb, x->name);
        cr_assert(y, "%s: output '%s' missing after optimization", label, x->name);
        cr_assert(shape_equal(x->shape, y->shape), "%s: '%s' changed shape", label, x->name);
        double scale = fmax(max_abs(x), floor), e = 0;
        for (int64_t k = 0, c = shape_numel(x->shape); k < c; k++) {
            double d = fabs(tensor_get(x, k) - tensor_get(y, k));
            e = isnan(d) ? INFINITY : fmax(e, d);
        }
        double rel = scale > 0 ? e / scale : e;
        cr_assert(rel <= REL_TOL, "%s: output '%s' differs by %.3g relative", label, x->name, rel);
        worst = fmax(worst, rel);
    }
    tensorset_free(&ra);
    tensorset_free(&rb);
    return worst;
}

/* Optimizes g and checks values on random inputs; returns the optimized graph in out. */
static void optimize_and_compare(const Graph *g, Graph *out, PassReport *r) {
    optimize(g, out, r);
    TensorSet in;
    tensorset_init(&in);
    fill_inputs(g, 3, false, 7, &in);
    run_and_compare(g, out, &in, 0, "tiny graph");
    tensorset_free(&in);
}

/* ---- tiny graphs, one rule at a time ---- */

/* A graph with real inputs x and y of shape s. */
static void tiny(Graph *g, Shape s, int *x, int *y) {
    graph_init(g);
    *x = g_input(g, "x", INPUT_DATA, DT_REAL, s);
    *y = g_input(g, "y", INPUT_DATA, DT_REAL, s);
}

static void out(Graph *g, const char *name, int node) {
    MamlError err;
    cr_assert_eq(graph_add_output(g, name, node), 0);
    cr_assert_eq(graph_status(g, &err), 0, "%s", err.message);
}

/* The optimized graph's output `name` is the input called `input`. */
static void assert_is_input(const Graph *o, const char *name, const char *input) {
    const Node *n = output_node(o, name);
    cr_assert(n->op == OP_INPUT && !strcmp(n->name, input), "output '%s' is a %s, not input '%s'",
              name, op_info[n->op].name, input);
}

static void assert_fill(const Graph *o, const char *name, double value) {
    const Node *n = output_node(o, name);
    cr_assert_eq(n->op, OP_CONST, "output '%s' is a %s, not a constant", name, op_info[n->op].name);
    cr_assert_float_eq(n->attr.value, value, 1e-15, "output '%s' is %g, expected %g", name,
                       n->attr.value, value);
}

Test(dce, drops_dead_nodes_and_keeps_unused_inputs) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    g_unary(&g, OP_EXP, x); /* dead */
    out(&g, "z", g_unary(&g, OP_NEG, x));
    optimize_and_compare(&g, &o, NULL);
    cr_assert_eq(o.n_nodes, 3, "x, y and neg remain, found %d nodes", o.n_nodes);
    cr_assert_eq(count_op(&o, OP_EXP), 0);
    cr_assert(graph_find_input(&o, "y") >= 0, "the unused input y was dropped");
    cr_assert_eq(o.nodes[graph_find_input(&o, "y")].input_kind, INPUT_DATA);
    graph_free(&o);
    graph_free(&g);
}

Test(cse, merges_equal_computations_and_commuted_operands) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    int a = g_unary(&g, OP_EXP, x), b = g_unary(&g, OP_EXP, x);
    int p = g_mul(&g, x, y), q = g_mul(&g, y, x), d = g_sub(&g, x, y), e = g_sub(&g, y, x);
    out(&g, "z", g_add(&g, g_add(&g, a, b), g_add(&g, g_add(&g, p, q), g_add(&g, d, e))));
    optimize_and_compare(&g, &o, NULL);
    cr_assert_eq(count_op(&o, OP_EXP), 1);
    cr_assert_eq(count_op(&o, OP_MUL), 1, "x*y and y*x are one node");
    cr_assert_eq(count_op(&o, OP_SUB), 2, "x-y and y-x differ");
    graph_free(&o);
    graph_free(&g);
}

Test(cse, merges_constants_by_value_and_shape_only) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    PassOptions opt = passes_default_options();
    opt.fold = opt.simplify = false;
    int sum = g_add(&g, g_mul(&g, x, g_const(&g, 2.0, SHAPE(2, 3))),
                    g_mul(&g, y, g_const(&g, 2.0, SHAPE(2, 3))));
    out(&g, "z", sum);
    out(&g, "c", g_const(&g, 2.0, SHAPE(3, 2)));
    out(&g, "p", g_mul(&g, x, g_const(&g, 0.0, SHAPE(2, 3))));
    out(&g, "n", g_mul(&g, x, g_const(&g, -0.0, SHAPE(2, 3))));
    optimize_with(&g, &o, &opt, NULL);
    cr_assert_eq(count_op(&o, OP_CONST), 4, "2 [2,3], 2 [3,2], 0 and -0 stay apart");
    graph_free(&o);
    graph_free(&g);
}

Test(cse, never_merges_inputs) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    out(&g, "z", g_add(&g, x, y));
    optimize_and_compare(&g, &o, NULL);
    cr_assert_eq(count_op(&o, OP_INPUT), 2);
    cr_assert_eq(count_op(&o, OP_ADD), 1);
    graph_free(&o);
    graph_free(&g);
}

Test(fold, elementwise_shape_and_reductions_of_fills) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    Shape s = SHAPE(2, 3);
    out(&g, "sum", g_add(&g, g_const(&g, 2, s), g_const(&g, 3, s)));
    out(&g, "exp", g_unary(&g, OP_EXP, g_const(&g, 0, s)));
    out(&g, "rsqrt", g_unary(&g, OP_RSQRT, g_const(&g, 4, s)));
    int scalar = g_const(&g, 1.5, shape_scalar());
    out(&g, "bcast", g_broadcast(&g, g_reshape(&g, scalar, SHAPE(1, 1)), s));
    int pm[2] = {1, 0};
    out(&g, "perm", g_permute(&g, g_const(&g, 7, s), pm));
    out(&g, "rsum", g_reduce(&g, OP_REDUCE_SUM, g_const(&g, 0.5, s), 1u << 1));
    out(&g, "rmax", g_reduce(&g, OP_REDUCE_MAX, g_const(&g, -2, s), 3u));
    out(&g, "mm", g_matmul(&g, g_const(&g, 2, s), g_const(&g, 3, SHAPE(3, 4)), false, false));
    out(&g, "user", g_mul(&g, x, g_add(&g, g_const(&g, 1, s), g_const(&g, 1, s))));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    assert_fill(&o, "sum", 5);
    assert_fill(&o, "exp", 1);
    assert_fill(&o, "rsqrt", 0.5);
    assert_fill(&o, "bcast", 1.5);
    assert_fill(&o, "perm", 7);
    assert_fill(&o, "rsum", 1.5);
    assert_fill(&o, "rmax", -2);
    assert_fill(&o, "mm", 18);
    cr_assert_eq(output_node(&o, "perm")->shape.dims[0], 3);
    cr_assert_eq(count_op(&o, OP_ADD), 0);
    cr_assert(r.rule_hits[RULE_FOLD_ELEMENTWISE] >= 4 && r.rule_hits[RULE_FOLD_SHAPE] >= 3 &&
              r.rule_hits[RULE_FOLD_REDUCE] == 2 && r.rule_hits[RULE_FOLD_MATMUL] == 1);
    graph_free(&o);
    graph_free(&g);
}

Test(fold, select_on_constant_masks_and_pooling_of_fills) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 4, 4), &x, &y);
    Shape s = SHAPE(2, 4, 4);
    int m = g_gt(&g, g_const(&g, 1, s), g_const(&g, 0, s));
    out(&g, "sel", g_select(&g, m, x, y));
    out(&g, "same", g_select(&g, g_gt(&g, x, y), g_const(&g, 3, s), g_const(&g, 3, s)));
    out(&g, "pool", g_max_pool2d(&g, g_const(&g, 4, s), 2, 2));
    out(&g, "gather", g_pool_gather(&g, x, g_const(&g, 5, s), 2, 2));
    out(&g, "scatter", g_pool_scatter(&g, x, g_const(&g, 0, SHAPE(2, 2, 2)), 2, 2));
    out(&g, "kept", g_pool_scatter(&g, x, g_const(&g, 1, SHAPE(2, 2, 2)), 2, 2));
    optimize_and_compare(&g, &o, NULL);
    assert_is_input(&o, "sel", "x");
    assert_fill(&o, "same", 3);
    assert_fill(&o, "pool", 4);
    assert_fill(&o, "gather", 5);
    assert_fill(&o, "scatter", 0);
    cr_assert_eq(output_node(&o, "kept")->op, OP_POOL_SCATTER, "scatter of ones is no fill");
    cr_assert_eq(count_op(&o, OP_SELECT), 0);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, identities_of_one_and_zero) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    Shape s = SHAPE(2, 3);
    int one = g_const(&g, 1, s), zero = g_const(&g, 0, s);
    out(&g, "x1", g_mul(&g, x, one));
    out(&g, "1y", g_mul(&g, one, y)); /* not 1 * x: cse would merge it with x * 1 */
    out(&g, "xd1", g_div(&g, x, one));
    out(&g, "x+0", g_add(&g, x, zero));
    out(&g, "0+x", g_add(&g, zero, x));
    out(&g, "x-0", g_sub(&g, x, zero));
    out(&g, "0-x", g_sub(&g, zero, x));
    out(&g, "-1x", g_mul(&g, g_const(&g, -1, s), y));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    const char *same[] = {"x1", "xd1", "x+0", "0+x", "x-0"};
    for (int i = 0; i < 5; i++) assert_is_input(&o, same[i], "x");
    assert_is_input(&o, "1y", "y");
    cr_assert_eq(output_node(&o, "0-x")->op, OP_NEG);
    cr_assert_eq(output_node(&o, "-1x")->op, OP_NEG);
    cr_assert_eq(o.n_nodes, 4, "x, y and two negs; found %d nodes", o.n_nodes);
    cr_assert_eq(r.rule_hits[RULE_MUL_ONE], 2);
    cr_assert_eq(r.rule_hits[RULE_ADD_ZERO], 2, "x + 0 and 0 + x are one node after cse");
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, mul_zero_only_when_assuming_finite_values) {
    Graph g, o, p;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    out(&g, "z", g_mul(&g, x, g_const(&g, 0, SHAPE(2, 3))));
    optimize_and_compare(&g, &o, NULL);
    assert_fill(&o, "z", 0);
    PassOptions opt = passes_default_options();
    opt.assume_finite = false;
    optimize_with(&g, &p, &opt, NULL);
    cr_assert_eq(output_node(&p, "z")->op, OP_MUL, "x*0 is NaN for infinite x");
    graph_free(&p);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, negations) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    int nx = g_unary(&g, OP_NEG, x), ny = g_unary(&g, OP_NEG, y);
    out(&g, "nn", g_unary(&g, OP_NEG, nx));
    out(&g, "add", g_add(&g, x, ny));
    out(&g, "add2", g_add(&g, nx, y));
    out(&g, "sub", g_sub(&g, x, ny));
    out(&g, "mul", g_mul(&g, nx, ny));
    out(&g, "scale", g_mul(&g, nx, g_const(&g, 3, SHAPE(2, 3))));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    assert_is_input(&o, "nn", "x");
    cr_assert_eq(output_node(&o, "add")->op, OP_SUB);
    cr_assert_eq(output_node(&o, "add2")->op, OP_SUB);
    cr_assert_eq(output_node(&o, "sub")->op, OP_ADD);
    cr_assert_eq(output_node(&o, "mul")->op, OP_MUL);
    cr_assert_eq(count_op(&o, OP_NEG), 0, "every negation was absorbed");
    cr_assert_eq(r.rule_hits[RULE_NEG_NEG], 1);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, negation_sinks_into_a_reduction_only_when_it_dies) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    int nx = g_unary(&g, OP_NEG, x), ny = g_unary(&g, OP_NEG, y);
    out(&g, "sx", g_scale(&g, g_reduce(&g, OP_REDUCE_SUM, nx, 2u), 0.5));
    out(&g, "sy", g_reduce(&g, OP_REDUCE_SUM, ny, 2u));
    out(&g, "ny", ny);
    optimize_and_compare(&g, &o, NULL);
    cr_assert_eq(output_node(&o, "sx")->op, OP_MUL);
    cr_assert_float_eq(o.nodes[output_node(&o, "sx")->in[1]].attr.value, -0.5, 0);
    cr_assert_eq(output_node(&o, "sy")->op, OP_REDUCE_SUM, "neg y has another user: stays");
    cr_assert_eq(count_op(&o, OP_NEG), 1);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, scale_of_scale_and_stop_grad) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    out(&g, "z", g_scale(&g, g_scale(&g, g_stop_grad(&g, x), 2.0), 3.0));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    const Node *z = output_node(&o, "z");
    cr_assert_eq(z->op, OP_MUL);
    cr_assert_eq(o.nodes[z->in[0]].op, OP_INPUT);
    cr_assert_float_eq(o.nodes[z->in[1]].attr.value, 6.0, 0);
    cr_assert_eq(count_op(&o, OP_STOP_GRAD), 0);
    cr_assert_eq(r.rule_hits[RULE_SCALE_SCALE], 1);
    cr_assert_eq(r.rule_hits[RULE_STOP_GRAD], 1);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, selects) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    int m = g_gt(&g, x, y), e = g_unary(&g, OP_EXP, y), z = g_const(&g, 0, SHAPE(2, 3));
    out(&g, "same", g_select(&g, m, e, e));
    out(&g, "zeros", g_select(&g, m, z, g_const(&g, 0, SHAPE(2, 3))));
    out(&g, "left", g_select(&g, m, g_select(&g, m, x, y), e));
    out(&g, "right", g_select(&g, m, e, g_select(&g, m, x, y)));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    cr_assert_eq(output_node(&o, "same")->op, OP_EXP);
    assert_fill(&o, "zeros", 0);
    const Node *l = output_node(&o, "left"), *rt = output_node(&o, "right");
    cr_assert(l->op == OP_SELECT && o.nodes[l->in[1]].op == OP_INPUT &&
              o.nodes[l->in[2]].op == OP_EXP);
    cr_assert(rt->op == OP_SELECT && o.nodes[rt->in[1]].op == OP_EXP &&
              o.nodes[rt->in[2]].op == OP_INPUT);
    cr_assert_eq(count_op(&o, OP_SELECT), 2);
    cr_assert_eq(r.rule_hits[RULE_SELECT_NESTED], 2);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, broadcast_and_reshape_chains) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 1, 1), &x, &y);
    out(&g, "bb", g_broadcast(&g, g_broadcast(&g, x, SHAPE(2, 3, 1)), SHAPE(2, 3, 4)));
    out(&g, "b=", g_broadcast(&g, y, SHAPE(2, 1, 1)));
    out(&g, "rr", g_reshape(&g, g_reshape(&g, x, SHAPE(2)), SHAPE(1, 2)));
    out(&g, "rback", g_reshape(&g, g_reshape(&g, y, SHAPE(2)), SHAPE(2, 1, 1)));
    optimize_and_compare(&g, &o, NULL);
    const Node *bb = output_node(&o, "bb"), *rr = output_node(&o, "rr");
    cr_assert(bb->op == OP_BROADCAST && o.nodes[bb->in[0]].op == OP_INPUT);
    cr_assert(rr->op == OP_RESHAPE && o.nodes[rr->in[0]].op == OP_INPUT);
    assert_is_input(&o, "b=", "y");
    assert_is_input(&o, "rback", "y");
    cr_assert_eq(o.n_nodes, 4);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, permutations_compose) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3, 4), &x, &y);
    int p[3] = {1, 2, 0}, q[3] = {2, 0, 1}, id[3] = {0, 1, 2}, sw[3] = {1, 0, 2};
    out(&g, "back", g_permute(&g, g_permute(&g, x, p), q));
    out(&g, "id", g_permute(&g, y, id));
    out(&g, "two", g_permute(&g, g_permute(&g, x, p), sw));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    assert_is_input(&o, "back", "x");
    assert_is_input(&o, "id", "y");
    const Node *two = output_node(&o, "two");
    cr_assert(two->op == OP_PERMUTE && o.nodes[two->in[0]].op == OP_INPUT);
    cr_assert(two->attr.perm[0] == 2 && two->attr.perm[1] == 1 && two->attr.perm[2] == 0);
    cr_assert_eq(count_op(&o, OP_PERMUTE), 1);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, reductions_of_broadcasts) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 1, 4), &x, &y);
    Shape big = SHAPE(2, 3, 4);
    int bx = g_broadcast(&g, x, big), by = g_broadcast(&g, y, big);
    out(&g, "sum", g_reduce(&g, OP_REDUCE_SUM, bx, 1u << 1));
    out(&g, "max", g_reduce(&g, OP_REDUCE_MAX, by, 1u << 1));
    out(&g, "wider", g_reduce(&g, OP_REDUCE_SUM, bx, 3u));
    out(&g, "other", g_reduce(&g, OP_REDUCE_SUM, by, 1u << 0));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    const Node *sum = output_node(&o, "sum"), *wider = output_node(&o, "wider");
    cr_assert(sum->op == OP_MUL && o.nodes[sum->in[0]].op == OP_INPUT);
    cr_assert_float_eq(o.nodes[sum->in[1]].attr.value, 3.0, 0);
    assert_is_input(&o, "max", "y");
    cr_assert(wider->op == OP_MUL && o.nodes[wider->in[0]].op == OP_REDUCE_SUM &&
              o.nodes[wider->in[0]].attr.axes == 1u);
    cr_assert_eq(output_node(&o, "other")->op, OP_REDUCE_SUM, "axis 0 was not broadcast");
    cr_assert_eq(r.rule_hits[RULE_REDUCE_BROADCAST], 3);
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, nested_and_trivial_reductions) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3, 1), &x, &y);
    out(&g, "rr", g_reduce(&g, OP_REDUCE_SUM, g_reduce(&g, OP_REDUCE_SUM, x, 1u), 2u));
    out(&g, "mm", g_reduce(&g, OP_REDUCE_MAX, g_reduce(&g, OP_REDUCE_MAX, x, 1u), 2u));
    out(&g, "triv", g_reduce(&g, OP_REDUCE_SUM, y, 4u));
    out(&g, "canon", g_reduce(&g, OP_REDUCE_MAX, y, 6u));
    optimize_and_compare(&g, &o, NULL);
    const Node *rr = output_node(&o, "rr"), *mm = output_node(&o, "mm");
    cr_assert(rr->op == OP_REDUCE_SUM && rr->attr.axes == 3u && o.nodes[rr->in[0]].op == OP_INPUT);
    cr_assert(mm->op == OP_REDUCE_MAX && mm->attr.axes == 3u && o.nodes[mm->in[0]].op == OP_INPUT);
    assert_is_input(&o, "triv", "y");
    cr_assert_eq(output_node(&o, "canon")->attr.axes, 2u, "the size-1 axis 2 is dropped");
    graph_free(&o);
    graph_free(&g);
}

Test(simplify, products_with_a_zero_operand) {
    Graph g, o, p;
    graph_init(&g);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, SHAPE(1, 2, 3, 5, 5));
    int a = g_input(&g, "a", INPUT_DATA, DT_REAL, SHAPE(2, 3, 4));
    int w0 = g_const(&g, 0, SHAPE(1, 4, 3, 3, 3));
    out(&g, "conv", g_conv2d(&g, x, w0, 1, 1));
    out(&g, "mm", g_matmul(&g, a, g_const(&g, 0, SHAPE(2, 4, 5)), false, false));
    optimize_and_compare(&g, &o, NULL);
    assert_fill(&o, "conv", 0);
    assert_fill(&o, "mm", 0);
    PassOptions opt = passes_default_options();
    opt.assume_finite = false;
    optimize_with(&g, &p, &opt, NULL);
    cr_assert_eq(output_node(&p, "conv")->op, OP_CONV2D);
    cr_assert_eq(output_node(&p, "mm")->op, OP_MATMUL);
    graph_free(&p);
    graph_free(&o);
    graph_free(&g);
}

/* A ReLU's mask moves through max-pooling's scatter (the gradient) and gather (its derivative)
 * to the pooled shape: values unchanged, also where whole windows are negative (their maximum is
 * a tie of zeros), and no select of the full shape is left. */
Test(simplify, relu_mask_moves_to_the_pooled_shape) {
    Graph g, o;
    graph_init(&g);
    Shape full = SHAPE(2, 3, 6, 6), pooled = SHAPE(2, 3, 3, 3);
    int x = g_input(&g, "x", INPUT_DATA, DT_REAL, full);
    int z = g_input(&g, "z", INPUT_DATA, DT_REAL, full);
    int dy = g_input(&g, "dy", INPUT_DATA, DT_REAL, pooled);
    int zero = g_const(&g, 0, full), mask = g_gt(&g, x, zero);
    int relu = g_select(&g, mask, x, zero);
    out(&g, "pooled", g_max_pool2d(&g, relu, 2, 2));
    out(&g, "dx", g_select(&g, mask, g_pool_scatter(&g, relu, dy, 2, 2), zero));
    out(&g, "gz", g_pool_gather(&g, relu, g_select(&g, mask, z, zero), 2, 2));
    PassReport r;
    optimize_and_compare(&g, &o, &r);
    cr_assert_eq(r.rule_hits[RULE_POOL_RELU_MASK], 2);
    cr_assert_eq(output_node(&o, "dx")->op, OP_POOL_SCATTER);
    const Node *gz = output_node(&o, "gz");
    cr_assert(gz->op == OP_SELECT && shape_equal(gz->shape, pooled), "gz is a %s",
              op_info[gz->op].name);
    int full_selects = 0;
    for (int i = 0; i < o.n_nodes; i++)
        full_selects += o.nodes[i].op == OP_SELECT && shape_equal(o.nodes[i].shape, full);
    cr_assert_eq(full_selects, 1, "%d selects of the full shape left (the ReLU alone expected)",
                 full_selects);
    cr_assert_eq(count_op(&o, OP_MAX_POOL2D), 1, "the pooled maxima are shared");
    graph_free(&o);
    graph_free(&g);
}

/* ---- random graphs: every rule in combination with the others ---- */

/* The mean over 4 broadcast copies of a: reduce_broadcast's pattern with other axes around. */
static int mean_of_copies(Graph *g, int a) {
    int wide = g_broadcast(g, g_reshape(g, a, SHAPE(2, 1, 3)), SHAPE(2, 4, 3));
    return g_reshape(g, g_scale(g, g_reduce(g, OP_REDUCE_SUM, wide, 2u), 0.25), SHAPE(2, 3));
}

/* One random [2, 3] node built from the pool: arithmetic, constants the rules look for, shape
 * round trips, reductions broadcast back, selects on masks of inputs. Masks compare inputs only,
 * since a rewrite may move a derived value by one rounding step and flip a comparison of two
 * nearly equal values. */
static int random_node(Graph *g, Rng *r, const int *pool, int n, int mask) {
    static const double consts[] = {0, 1, -1, 2, 0.5, -0.0};
    Shape s = SHAPE(2, 3);
    int a = pool[rng_uniform_int(r, (uint64_t)n)], b = pool[rng_uniform_int(r, (uint64_t)n)];
    int c = g_const(g, consts[rng_uniform_int(r, 6)], s), t[2] = {1, 0};
    switch (rng_uniform_int(r, 15)) {
    case 0:
        return g_add(g, a, b);
    case 1:
        return g_sub(g, a, b);
    case 2:
        return g_mul(g, a, b);
    case 3:
        return g_unary(g, OP_NEG, a);
    case 4:
        return g_mul(g, a, c);
    case 5:
        return g_add(g, c, a);
    case 6:
        return g_sub(g, c, a);
    case 7:
        return g_select(g, mask, a, rng_uniform(r) < 0.3 ? a : b);
    case 8:
        return g_stop_grad(g, a);
    case 9:
        return g_broadcast(g, g_reduce(g, OP_REDUCE_SUM, a, 1u + rng_uniform_int(r, 3)), s);
    case 10:
        return g_broadcast(g, g_reduce(g, OP_REDUCE_MAX, a, 2u), s);
    case 11:
        return g_reshape(g, g_reshape(g, a, SHAPE(3, 2)), s);
    case 12:
        return g_permute(g, g_permute(g, a, t), t);
    case 13:
        return g_permute(g, g_reshape(g, a, SHAPE(3, 2)), t);
    default:
        return mean_of_copies(g, a);
    }
}

#define FUZZ_TRIALS 300

Test(fuzz, random_graphs_keep_their_values) {
    Rng r;
    rng_seed(&r, 2024);
    int total_before = 0, total_after = 0;
    for (int trial = 0; trial < FUZZ_TRIALS; trial++) {
        Graph g, o;
        int pool[64], n = 0, x, y;
        tiny(&g, SHAPE(2, 3), &x, &y);
        pool[n++] = x, pool[n++] = y;
        pool[n++] = g_input(&g, "z", INPUT_DATA, DT_REAL, SHAPE(2, 3));
        int mask = g_gt(&g, x, y);
        while (n < 24) {
            int id = random_node(&g, &r, pool, n, mask);
            pool[n++] = id;
        }
        for (int k = 0; k < 4; k++) {
            char name[16];
            snprintf(name, sizeof name, "out%d", k);
            out(&g, name, pool[n - 1 - (int)rng_uniform_int(&r, 8)]);
        }
        optimize(&g, &o, NULL);
        TensorSet in;
        tensorset_init(&in);
        fill_inputs(&g, 3, false, 100 + (uint64_t)trial, &in);
        char label[32];
        snprintf(label, sizeof label, "random graph %d", trial);
        run_and_compare(&g, &o, &in, 1.0, label);
        total_before += g.n_nodes, total_after += o.n_nodes;
        tensorset_free(&in);
        graph_free(&o);
        graph_free(&g);
    }
    printf("%d random graphs: %d -> %d nodes\n", FUZZ_TRIALS, total_before, total_after);
}

/* ---- the driver, the report and the verifier ---- */

Test(driver, all_passes_off_copies_the_graph) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    out(&g, "z", g_mul(&g, x, g_const(&g, 1, SHAPE(2, 3))));
    PassOptions opt = passes_default_options();
    opt.dce = opt.cse = opt.fold = opt.simplify = false;
    PassReport r;
    optimize_with(&g, &o, &opt, &r);
    cr_assert_eq(o.n_nodes, g.n_nodes);
    cr_assert_eq(r.nodes_after, g.n_nodes);
    graph_free(&o);
    graph_free(&g);
}

Test(driver, a_failed_graph_is_refused) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    g_add(&g, x, g_const(&g, 1, SHAPE(3, 2)));
    MamlError err;
    cr_assert_eq(passes_optimize(&g, &o, NULL, &err), -1);
    cr_assert(strstr(err.message, "operand shapes differ"), "%s", err.message);
    cr_assert_eq(o.n_nodes, 0);
    graph_free(&g);
}

static char *capture(const PassReport *r, bool json) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert(f);
    if (json)
        pass_report_json(r, f);
    else
        pass_report_print(r, f);
    fclose(f);
    return buf;
}

Test(driver, report_as_text_and_json) {
    Graph g, o;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    out(&g, "z", g_mul(&g, g_unary(&g, OP_EXP, x), g_const(&g, 1, SHAPE(2, 3))));
    g_unary(&g, OP_EXP, y);
    PassReport r;
    optimize(&g, &o, &r);
    cr_assert_eq(r.nodes_before, 6);
    cr_assert_eq(r.nodes_after, 3);
    cr_assert(r.fixed_point);
    cr_assert_str_eq(r.steps[0].pass, "dce");
    cr_assert_eq(r.steps[0].rewrites, 1);
    char *text = capture(&r, false), *json = capture(&r, true);
    cr_assert(strstr(text, "passes: 6 -> 3 nodes") && strstr(text, "simplify") &&
                  strstr(text, "mul_one 1"),
              "%s", text);
    cr_assert(strstr(json, "\"nodes_before\": 6") && strstr(json, "\"pass\": \"cse\"") &&
                  strstr(json, "\"mul_one\": 1") && json[strlen(json) - 1] == '}',
              "%s", json);
    free(text);
    free(json);
    graph_free(&o);
    graph_free(&g);
}

Test(check, accepts_a_valid_graph_and_names_what_is_wrong) {
    Graph g;
    int x, y;
    tiny(&g, SHAPE(2, 3), &x, &y);
    int e = g_unary(&g, OP_EXP, x);
    int s = g_add(&g, e, y);
    out(&g, "z", s);
    MamlError err;
    cr_assert_eq(graph_check(&g, &err), 0, "%s", err.message);
    g.nodes[e].in[0] = s; /* an operand after its user */
    cr_assert_eq(graph_check(&g, &err), -1);
    cr_assert(strstr(err.message, "does not precede"), "%s", err.message);
    g.nodes[e].in[0] = x;
    g.nodes[s].shape = SHAPE(3, 2); /* a shape the operands do not give */
    cr_assert_eq(graph_check(&g, &err), -1);
    cr_assert(strstr(err.message, "node 3 (add") && strstr(err.message, "[3, 2]"), "%s",
              err.message);
    g.nodes[s].shape = SHAPE(2, 3);
    g.nodes[s].n_in = 1;
    cr_assert_eq(graph_check(&g, &err), -1);
    cr_assert(strstr(err.message, "operands, expected 2"), "%s", err.message);
    g.nodes[s].n_in = 2;
    g.outputs[0].node = 99;
    cr_assert_eq(graph_check(&g, &err), -1);
    cr_assert(strstr(err.message, "output 'z'"), "%s", err.message);
    g.outputs[0].node = s;
    graph_free(&g);
}

/* ---- the shipped graphs, before and after ---- */

static void load_spec(const char *file, const char *const *sets, int n_sets, GraphSpec *spec) {
    MamlError err;
    memset(spec, 0, sizeof *spec);
    cr_assert_eq(spec_load(file, sets, n_sets, spec, &err), 0, "%s", err.message);
}

static const char *kind_name(MamlGraphKind kind) {
    return kind == MAML_TRAIN_STEP ? "train_step" : kind == MAML_EVAL ? "eval" : "meta_grad";
}

/* Builds the graph of `kind` for 2 tasks, optimizes it, and compares every output on random
 * weights, optimizer state and tasks. */
static void check_shipped(const char *file, MamlGraphKind kind, const char *const *sets,
                          int n_sets) {
    GraphSpec spec;
    load_spec(file, sets, n_sets, &spec);
    Graph g, o;
    graph_init(&g);
    MamlError err;
    /* the reference runs a convolution's tasks in parallel; with two tasks on a shared machine
     * the thread hand-offs cost more than they save */
    omp_set_num_threads(1);
    cr_assert_eq(maml_build(&spec, kind, 2, &g, NULL, &err), 0, "%s", err.message);
    PassReport r;
    optimize(&g, &o, &r);
    TensorSet in;
    tensorset_init(&in);
    cr_assert_eq(params_init(&spec, 11, &in, &err), 0, "%s", err.message);
    fill_inputs(&g, spec.maml.n_way, spec.loss == LOSS_MSE, 13, &in);
    char label[256];
    snprintf(label, sizeof label, "%s %s", file, kind_name(kind));
    double worst = run_and_compare(&g, &o, &in, 0, label);
    printf("%-28s %-10s %5d -> %5d nodes, worst relative difference %.2g\n", file, kind_name(kind),
           r.nodes_before, r.nodes_after, worst);
    tensorset_free(&in);
    graph_free(&o);
    graph_free(&g);
    spec_free(&spec);
}

/* Narrow convolutions keep the reference interpreter fast; the graphs' structure, which is what
 * the passes see, does not depend on the channel count. */
static const char *const narrow[] = {"model.blocks.conv_block.args.channels=8"};

Test(shipped, seed_train_step) {
    check_shipped("graphs/omniglot_seed.yaml", MAML_TRAIN_STEP, narrow, 1);
}
Test(shipped, seed_eval) {
    check_shipped("graphs/omniglot_seed.yaml", MAML_EVAL, narrow, 1);
}
Test(shipped, w5_train_step) {
    check_shipped("graphs/omniglot_5w1s.yaml", MAML_TRAIN_STEP, narrow, 1);
}
Test(shipped, w5_eval) {
    check_shipped("graphs/omniglot_5w1s.yaml", MAML_EVAL, narrow, 1);
}
Test(shipped, w20_train_step) {
    check_shipped("graphs/omniglot_20w1s.yaml", MAML_TRAIN_STEP, narrow, 1);
}
Test(shipped, w20_eval) {
    check_shipped("graphs/omniglot_20w1s.yaml", MAML_EVAL, narrow, 1);
}
Test(shipped, sin_train_step) {
    check_shipped("graphs/sinusoid.yaml", MAML_TRAIN_STEP, NULL, 0);
}
Test(shipped, sin_eval) {
    check_shipped("graphs/sinusoid.yaml", MAML_EVAL, NULL, 0);
}

/* First order (stop_grad), two inner steps with learnable rates, plain SGD outside. */
Test(shipped, seed_variants) {
    const char *const sets[] = {"model.blocks.conv_block.args.channels=8",
                                "maml.inner.first_order=true",
                                "maml.inner.steps=2",
                                "maml.inner.lr=learnable",
                                "maml.inner.lr_init=0.1",
                                "maml.outer.optimizer=sgd"};
    check_shipped("graphs/omniglot_seed.yaml", MAML_TRAIN_STEP, sets, 6);
    check_shipped("graphs/omniglot_seed.yaml", MAML_META_GRAD, sets, 2);
}

/* ---- the seed's training step at full size: counts, time, interface ---- */

#if defined(__SANITIZE_ADDRESS__)
#define PASS_MS_LIMIT 2000.0 /* instrumented builds: only catch a blow-up */
#else
#define PASS_MS_LIMIT 100.0
#endif

static void build_step(const char *file, int64_t tasks, Graph *g, GraphSpec *spec) {
    load_spec(file, NULL, 0, spec);
    graph_init(g);
    MamlError err;
    cr_assert_eq(
        maml_build(spec, MAML_TRAIN_STEP, tasks > 0 ? tasks : spec->maml.meta_batch, g, NULL, &err),
        0, "%s", err.message);
}

Test(seed, node_counts_drop_and_the_passes_are_fast) {
    GraphSpec spec;
    Graph g, o;
    build_step("graphs/omniglot_seed.yaml", 0, &g, &spec);
    PassReport r;
    optimize(&g, &o, &r);
    double best = r.total_ms;
    for (int k = 0; k < 4; k++) {
        Graph again;
        optimize(&g, &again, &r);
        best = fmin(best, r.total_ms);
        graph_free(&again);
    }
    printf("omniglot_seed.yaml training step, meta_batch %d:\n", spec.maml.meta_batch);
    pass_report_print(&r, stdout);
    printf("best of 5: %.2f ms\n", best);
    cr_assert(r.nodes_after <= 0.8 * r.nodes_before, "only %d -> %d nodes", r.nodes_before,
              r.nodes_after);
    cr_assert(r.fixed_point);
    cr_assert(best < PASS_MS_LIMIT, "passes took %.1f ms", best);
    graph_free(&o);
    graph_free(&g);
    spec_free(&spec);
}

static void assert_same_interface(const Graph *g, const Graph *o) {
    cr_assert_eq(o->n_outputs, g->n_outputs);
    for (int i = 0; i < g->n_outputs; i++) {
        cr_assert_str_eq(o->outputs[i].name, g->outputs[i].name);
        const Node *a = &g->nodes[g->outputs[i].node], *b = &o->nodes[o->outputs[i].node];
        cr_assert(shape_equal(a->shape, b->shape) && a->dtype == b->dtype);
    }
    int j = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *a = &g->nodes[i];
        if (a->op != OP_INPUT) continue;
        while (j < o->n_nodes && o->nodes[j].op != OP_INPUT) j++;
        cr_assert(j < o->n_nodes, "input '%s' is missing", a->name);
        const Node *b = &o->nodes[j++];
        cr_assert_str_eq(b->name, a->name, "inputs out of order");
        cr_assert(shape_equal(a->shape, b->shape) && a->dtype == b->dtype &&
                  a->input_kind == b->input_kind && a->origin == b->origin);
    }
    cr_assert_eq(j == o->n_nodes || o->nodes[j].op != OP_INPUT, true);
}

Test(seed, interface_is_kept_and_the_result_is_a_fixed_point) {
    GraphSpec spec;
    Graph g, o, o2;
    build_step("graphs/omniglot_seed.yaml", 4, &g, &spec);
    optimize(&g, &o, NULL);
    assert_same_interface(&g, &o);
    PassReport r;
    optimize(&o, &o2, &r);
    cr_assert_eq(o2.n_nodes, o.n_nodes);
    cr_assert_eq(r.rounds, 1);
    for (int i = 0; i < r.n_steps; i++)
        cr_assert_eq(r.steps[i].rewrites, 0, "%s rewrote %d nodes of an optimized graph",
                     r.steps[i].pass, r.steps[i].rewrites);
    graph_free(&o2);
    graph_free(&o);
    graph_free(&g);
    spec_free(&spec);
}

/* Node counts of every shipped training step at its own meta-batch, for the record. */
Test(shipped, training_step_node_counts) {
    const char *files[] = {"graphs/omniglot_seed.yaml", "graphs/omniglot_5w1s.yaml",
                           "graphs/omniglot_20w1s.yaml", "graphs/sinusoid.yaml"};
    for (int f = 0; f < 4; f++) {
        GraphSpec spec;
        Graph g, o;
        build_step(files[f], 0, &g, &spec);
        PassReport r;
        optimize(&g, &o, &r);
        printf("%s", files[f]);
        for (int i = 0; i < r.n_steps && r.steps[i].round == 1; i++)
            printf(" | %s %d", r.steps[i].pass, r.steps[i].nodes);
        printf(" | final %d -> %d (%d rounds, %.2f ms)\n", r.nodes_before, r.nodes_after, r.rounds,
               r.total_ms);
        cr_assert(r.nodes_after < r.nodes_before);
        graph_free(&o);
        graph_free(&g);
        spec_free(&spec);
    }
}
