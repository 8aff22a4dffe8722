/* The optimizing passes: each rule on a tiny hand-made graph (the rewritten structure, and the
 * values against the reference interpreter), the verifier, and every shipped graph's training
 * step and evaluation graphs run before and after optimization in float64 on random weights and
 * tasks: every output must agree to 1e-12 of its largest magnitude. */
#include <criterion/criterion.h>
#include <math.h>
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
 * max |a - b| / max |a| (absolute where a is all zeros). */
static double run_and_compare(const Graph *a, const Graph *b, const TensorSet *inputs,
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
        double scale = max_abs(x), e = 0;
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
    run_and_compare(g, out, &in, "tiny graph");
    tensorset_free(&in);
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
    cr_assert_eq(maml_build(&spec, kind, 2, &g, NULL, &err), 0, "%s", err.message);
    PassReport r;
    optimize(&g, &o, &r);
    TensorSet in;
    tensorset_init(&in);
    cr_assert_eq(params_init(&spec, 11, &in, &err), 0, "%s", err.message);
    fill_inputs(&g, spec.maml.n_way, spec.loss == LOSS_MSE, 13, &in);
    char label[256];
    snprintf(label, sizeof label, "%s %s", file, kind_name(kind));
    double worst = run_and_compare(&g, &o, &in, label);
    printf("%-28s %-10s %5d -> %5d nodes, worst relative difference %.2g\n", file,
           kind_name(kind), r.nodes_before, r.nodes_after, worst);
    tensorset_free(&in);
    graph_free(&o);
    graph_free(&g);
    spec_free(&spec);
}

Test(shipped, seed_train_step) { check_shipped("graphs/omniglot_seed.yaml", MAML_TRAIN_STEP, NULL, 0); }
Test(shipped, seed_eval) { check_shipped("graphs/omniglot_seed.yaml", MAML_EVAL, NULL, 0); }
Test(shipped, w5_train_step) { check_shipped("graphs/omniglot_5w1s.yaml", MAML_TRAIN_STEP, NULL, 0); }
Test(shipped, w5_eval) { check_shipped("graphs/omniglot_5w1s.yaml", MAML_EVAL, NULL, 0); }
Test(shipped, w20_train_step) { check_shipped("graphs/omniglot_20w1s.yaml", MAML_TRAIN_STEP, NULL, 0); }
Test(shipped, w20_eval) { check_shipped("graphs/omniglot_20w1s.yaml", MAML_EVAL, NULL, 0); }
Test(shipped, sin_train_step) { check_shipped("graphs/sinusoid.yaml", MAML_TRAIN_STEP, NULL, 0); }
Test(shipped, sin_eval) { check_shipped("graphs/sinusoid.yaml", MAML_EVAL, NULL, 0); }
